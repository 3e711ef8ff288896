//! One node URL of a chain: its options, its credentials, its HTTP leg and its alloy RPC client.
//!
//! Calls go through alloy's [`RpcClient`] (JSON-RPC framing, ids, batching, matching answers to
//! calls), its [`ThrottleLayer`] (requests per second) and [`HttpLeg`], the `tower::Service`
//! that posts a request packet with reqwest under the endpoint's concurrency limit.
//!
//! `HttpLeg` stands in for `alloy-transport-http` because that transport opens a tracing span
//! holding the whole URL (`url = https://node/v3/<key>`) for every request, and it leaves
//! reqwest errors carrying the URL: either would put the node's key in logs or errors. Here the
//! user info is sent as HTTP basic authentication and taken out of the URL, reqwest errors lose
//! their URL (`without_url`), and every text that leaves this module goes through
//! [`Endpoint::scrub`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use alloy_json_rpc::{RequestPacket, ResponsePacket, RpcError};
use alloy_rpc_client::RpcClient;
use alloy_transport::layers::ThrottleLayer;
use alloy_transport::{TransportError, TransportErrorKind, TransportFut, TransportResult};
use model_runner_core::Chain;
use model_runner_core::ports::SourceError;
use model_runner_core::redact::{UrlSecrets, redact_url};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Semaphore;

/// Requests per second to one endpoint unless its URL says `rps=`.
pub const DEFAULT_RPS: u32 = 25;
/// Requests in flight to one endpoint unless its URL says `concurrency=`.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Calls per JSON-RPC batch (and blocks per batch) unless its URL says `batch=`.
pub const DEFAULT_BATCH: usize = 25;
/// Time for one HTTP request, connection included, unless its URL says `timeout_ms=`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of an error body an error message quotes.
const BODY_SHOWN: usize = 300;

/// The options of one endpoint, from its URL's fragment (`#rps=10&concurrency=2`). The fragment
/// is never sent to the node, so it cannot clash with the provider's own query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointParams {
    rps: Option<u32>,
    concurrency: Option<usize>,
    batch: Option<usize>,
    timeout_ms: Option<u64>,
}

/// Whether the endpoint answers `eth_getBlockReceipts`, learnt from its first answer.
const RECEIPTS_UNKNOWN: u8 = 0;
const RECEIPTS_BY_BLOCK: u8 = 1;
const RECEIPTS_BY_TRANSACTION: u8 = 2;

/// Whether the endpoint takes EIP-1898 block parameters (`{"blockHash": ...}`) in `eth_call`,
/// learnt from its first answer.
const PINNED_UNKNOWN: u8 = 0;
const PINNED_BY_HASH: u8 = 1;
const PINNED_BY_NUMBER: u8 = 2;

/// One node URL of a chain. See the module docs.
pub(super) struct Endpoint {
    /// The URL as errors and logs show it (secrets as `***`, no fragment).
    pub(super) shown: String,
    /// Calls per batch request, and blocks per block batch.
    pub(super) batch: usize,
    /// Requests in flight at most (also how many batches a range fetch keeps going).
    pub(super) concurrency: usize,
    client: RpcClient,
    receipts: AtomicU8,
    pinned_calls: AtomicU8,
    secrets: Arc<UrlSecrets>,
}

impl std::fmt::Debug for Endpoint {
    /// The redacted URL only: the key must not reach logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.shown)
            .field("batch", &self.batch)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Parses one endpoint URL, `http(s)://...[#option=value&...]`.
    pub(super) fn parse(chain: &Chain, url: &str) -> Result<Self, SourceError> {
        let url = url.trim();
        let (address, fragment) = url.split_once('#').unwrap_or((url, ""));
        let shown = redact_url(address);
        let invalid =
            |why: String| SourceError::InvalidData(format!("invalid JSON-RPC URL {shown}: {why}"));
        let mut parsed = url::Url::parse(address).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("expected http:// or https://".into()));
        }
        if parsed.host().is_none() {
            return Err(invalid("no host".into()));
        }
        let params: EndpointParams = serde_urlencoded::from_str(fragment).map_err(|e| {
            invalid(format!(
                "option after '#': {e} (options: rps, concurrency, batch, timeout_ms)"
            ))
        })?;
        let positive = |name: &str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(invalid(format!("option {name} must be at least 1"))),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let rps = positive("rps", params.rps.map(u64::from), DEFAULT_RPS.into())?;
        let concurrency = positive(
            "concurrency",
            params.concurrency.map(|c| c as u64),
            DEFAULT_CONCURRENCY as u64,
        )?;
        let batch = positive(
            "batch",
            params.batch.map(|b| b as u64),
            DEFAULT_BATCH as u64,
        )?;
        let timeout = Duration::from_millis(positive(
            "timeout_ms",
            params.timeout_ms,
            DEFAULT_TIMEOUT.as_millis() as u64,
        )?);

        // User info travels as basic authentication, never as part of the URL reqwest holds.
        let auth = (!parsed.username().is_empty() || parsed.password().is_some()).then(|| {
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (decode(parsed.username()), parsed.password().map(decode))
        });
        let mut secrets = UrlSecrets::of(address);
        if let Some((user, password)) = &auth {
            // The header's token, should a node echo the request's headers.
            use base64::Engine as _;
            secrets.add(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.as_deref().unwrap_or(""))),
            );
        }
        let secrets = Arc::new(secrets);
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| invalid(secrets.scrub(&error_chain(&e.without_url()))))?;
        let leg = HttpLeg {
            http,
            url: Arc::new(parsed),
            auth: auth.map(Arc::new),
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            chain: Arc::from(chain.as_str()),
            secrets: secrets.clone(),
        };
        let rps = u32::try_from(rps).unwrap_or(u32::MAX);
        let is_local = leg.url.host_str().is_some_and(|h| {
            h == "localhost" || h.starts_with("127.") || h == "[::1]" || h == "::1"
        });
        let client = RpcClient::builder()
            .layer(ThrottleLayer::new(rps))
            .transport(leg, is_local);
        Ok(Self {
            shown,
            batch: batch as usize,
            concurrency: concurrency as usize,
            client,
            receipts: AtomicU8::new(RECEIPTS_UNKNOWN),
            pinned_calls: AtomicU8::new(PINNED_UNKNOWN),
            secrets,
        })
    }

    /// `text` with this endpoint's secrets and any URL in it redacted.
    pub(super) fn scrub(&self, text: &str) -> String {
        self.secrets.scrub(text)
    }

    /// Whether receipts are read with `eth_getBlockReceipts` (true until the node said it lacks
    /// the method).
    pub(super) fn receipts_by_block(&self) -> bool {
        self.receipts.load(Ordering::Relaxed) != RECEIPTS_BY_TRANSACTION
    }

    /// Records whether the node answers `eth_getBlockReceipts`.
    pub(super) fn set_receipts_by_block(&self, supported: bool) {
        self.receipts.store(
            if supported {
                RECEIPTS_BY_BLOCK
            } else {
                RECEIPTS_BY_TRANSACTION
            },
            Ordering::Relaxed,
        );
    }

    /// Whether `eth_call` takes `{"blockHash": ...}` here (true until the node refused it).
    pub(super) fn calls_by_hash(&self) -> bool {
        self.pinned_calls.load(Ordering::Relaxed) != PINNED_BY_NUMBER
    }

    /// Records whether the node takes EIP-1898 block parameters.
    pub(super) fn set_calls_by_hash(&self, supported: bool) {
        let state = if supported {
            PINNED_BY_HASH
        } else {
            PINNED_BY_NUMBER
        };
        // Once refused, always by number: a later success by number proves nothing.
        let _ = self.pinned_calls.compare_exchange(
            PINNED_UNKNOWN,
            state,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// One call.
    pub(super) async fn call(&self, method: &'static str, params: Value) -> TransportResult<Value> {
        self.client.request::<Value, Value>(method, params).await
    }

    /// `calls` in one batch request: the request's own failure, or each call's answer in order.
    /// One call goes as a plain request (so `batch=1` sends no batches, for nodes that refuse
    /// them). A batch the node refuses as too large ([`batch_too_large`]) is sent again as two
    /// halves, down to single calls, so a provider's batch limit below the URL's `batch` costs
    /// requests, not the run.
    pub(super) async fn batch(
        &self,
        method: &'static str,
        params: impl IntoIterator<Item = Value>,
    ) -> TransportResult<Vec<TransportResult<Value>>> {
        self.batch_of(method, params.into_iter().collect()).await
    }

    fn batch_of<'a>(
        &'a self,
        method: &'static str,
        params: Vec<Value>,
    ) -> futures::future::BoxFuture<'a, TransportResult<Vec<TransportResult<Value>>>> {
        Box::pin(async move {
            let answer = self.one_batch(method, &params).await;
            // A refusal of the whole batch comes as the request's error, or (a JSON-RPC error
            // object for a batch) as every call's.
            let refused = match &answer {
                Err(e) => Some(e),
                Ok(answers) => match answers.first() {
                    Some(Err(e))
                        if answers
                            .iter()
                            .all(|a| a.as_ref().is_err_and(batch_too_large)) =>
                    {
                        Some(e)
                    }
                    _ => None,
                },
            };
            match refused {
                Some(e) if params.len() > 1 && batch_too_large(e) => {
                    tracing::debug!(url = %self.shown, calls = params.len(), error = %self.scrub(&e.to_string()), "batch refused as too large; sending it in halves");
                    let (first, second) = params.split_at(params.len() / 2);
                    let mut answers = self.batch_of(method, first.to_vec()).await?;
                    answers.extend(self.batch_of(method, second.to_vec()).await?);
                    Ok(answers)
                }
                _ => answer,
            }
        })
    }

    async fn one_batch(
        &self,
        method: &'static str,
        params: &[Value],
    ) -> TransportResult<Vec<TransportResult<Value>>> {
        let mut params: Vec<Value> = params.to_vec();
        if params.len() == 1 {
            let answer = self.call(method, params.pop().expect("one")).await;
            // The request's own failure, as for a batch; a JSON-RPC error is the call's.
            return match answer {
                Err(e @ RpcError::Transport(_)) => Err(e),
                answer => Ok(vec![answer]),
            };
        }
        let mut batch = self.client.new_batch();
        let mut waiters = Vec::new();
        for p in params {
            waiters.push(batch.add_call::<Value, Value>(method, &p)?);
        }
        if waiters.is_empty() {
            return Ok(Vec::new());
        }
        batch.send().await?;
        let mut out = Vec::with_capacity(waiters.len());
        for w in waiters {
            out.push(w.await);
        }
        Ok(out)
    }
}

/// An error and its sources, `a: b: c`.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// A failure of the HTTP leg worth another attempt (connection refused or reset, timeout, a body
/// cut short). Its text has no URL and no secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct NetworkError(pub(super) String);

/// The HTTP leg of an endpoint: posts a JSON-RPC request packet, at most `permits` at a time.
#[derive(Clone)]
struct HttpLeg {
    http: reqwest::Client,
    /// The URL without its user info.
    url: Arc<url::Url>,
    /// User name and password, sent as basic authentication.
    auth: Option<Arc<(String, Option<String>)>>,
    permits: Arc<Semaphore>,
    /// For the source request metrics.
    chain: Arc<str>,
    secrets: Arc<UrlSecrets>,
}

impl HttpLeg {
    async fn send(self, request: RequestPacket) -> TransportResult<ResponsePacket> {
        let method = request.method_names().next().unwrap_or("batch").to_owned();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| TransportErrorKind::backend_gone())?;
        let started = Instant::now();
        let result = self.post(&request).await;
        let ok = result.as_ref().is_ok_and(|r| !r.is_error());
        model_runner_core::engine::instruments::source_method(
            &self.chain,
            &method,
            started.elapsed(),
            ok,
        );
        result
    }

    async fn post(&self, request: &RequestPacket) -> TransportResult<ResponsePacket> {
        let body = serde_json::to_vec(request).map_err(TransportError::ser_err)?;
        let mut post = self
            .http
            .post(self.url.as_ref().clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.auth {
            post = post.basic_auth(&auth.0, auth.1.as_ref());
        }
        let response = post.send().await.map_err(|e| self.network(e))?;
        let status = response.status();
        // `Retry-After` in seconds (the form rate limiters use).
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) if status.is_success() => return Err(self.network(e)),
            Err(_) => Default::default(),
        };
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            return Err(TransportErrorKind::http_error_with_retry_after(
                status.as_u16(),
                self.quote(&body),
                retry_after,
            ));
        }
        if !status.is_success() {
            // A node may answer an unknown method with a 4xx and a JSON-RPC error: the call
            // fails, not the request.
            if let Ok(packet) = serde_json::from_slice::<ResponsePacket>(&body)
                && packet.is_error()
            {
                return Ok(packet);
            }
            return Err(TransportErrorKind::http_error(
                status.as_u16(),
                self.quote(&body),
            ));
        }
        let packet: ResponsePacket = serde_json::from_slice(&body)
            .map_err(|e| TransportError::deser_err(e, self.quote(&body)))?;
        // A batch answered with one error object (a node refusing the batch as a whole, e.g.
        // for its size) answers none of its calls: that is the request's failure, with the
        // node's words, not a missing answer per call.
        if let (RequestPacket::Batch(_), ResponsePacket::Single(single)) = (request, &packet)
            && let alloy_json_rpc::ResponsePayload::Failure(e) = &single.payload
        {
            return Err(TransportErrorKind::custom_str(&self.secrets.scrub(
                &format!("the batch was refused: error {}: {}", e.code, e.message),
            )));
        }
        Ok(packet)
    }

    /// The start of a body, scrubbed, for an error message.
    fn quote(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let mut end = text.len().min(BODY_SHOWN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = if end < text.len() { "…" } else { "" };
        self.secrets.scrub(&format!("{}{cut}", &text[..end]))
    }

    fn network(&self, e: reqwest::Error) -> TransportError {
        let permanent = e.is_builder() || e.is_redirect();
        let text = self.secrets.scrub(&error_chain(&e.without_url()));
        if permanent {
            TransportErrorKind::non_retryable(NetworkError(text))
        } else {
            TransportErrorKind::custom(NetworkError(text))
        }
    }
}

impl tower::Service<RequestPacket> for HttpLeg {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The concurrency limit waits inside the call, after the throttle let it through.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RequestPacket) -> Self::Future {
        Box::pin(self.clone().send(request))
    }
}

/// Whether `err` is a node refusing a batch request for its size: HTTP 413, or an error whose
/// message says the batch (or request, or response) is too large or holds too many calls, as
/// providers answer above their batch limit. Rate limits are not this (they are retried).
pub(super) fn batch_too_large(err: &TransportError) -> bool {
    let message = match err {
        RpcError::Transport(kind) => {
            if kind.as_http_error().is_some_and(|h| h.status == 413) {
                return true;
            }
            kind.to_string()
        }
        RpcError::ErrorResp(payload) if !payload.is_retry_err() => payload.message.to_string(),
        _ => return false,
    };
    let m = message.to_ascii_lowercase();
    m.contains("too large")
        || (m.contains("batch") && (m.contains("too many") || m.contains("exceed")))
}

/// Whether `err` is a node refusing an EIP-1898 block parameter as malformed (a parse or
/// invalid-params error: ganache says `Cannot wrap a "object" as a json-rpc type`), rather than
/// executing the call.
pub(super) fn block_object_refused(err: &TransportError) -> bool {
    let RpcError::ErrorResp(payload) = err else {
        return false;
    };
    let m = payload.message.to_ascii_lowercase();
    matches!(payload.code, -32700 | -32602) && !m.contains("revert") && !m.contains("not found")
}

/// Whether `err` says the node has no `eth_getBlockReceipts` (method not found, or a message
/// saying the method is unknown or unsupported).
pub(super) fn method_missing(err: &TransportError) -> bool {
    let RpcError::ErrorResp(payload) = err else {
        return false;
    };
    if payload.code == -32601 {
        return true;
    }
    let m = payload.message.to_ascii_lowercase();
    (m.contains("method") || m.contains("eth_getblockreceipts"))
        && [
            "not found",
            "does not exist",
            "not supported",
            "unsupported",
            "not available",
            "unknown",
            "not implemented",
        ]
        .iter()
        .any(|s| m.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_come_from_the_fragment_and_unknown_ones_are_refused() {
        let chain = Chain::new("ethereum").unwrap();
        let e = Endpoint::parse(
            &chain,
            "http://127.0.0.1:8545/?apikey=x#rps=5&concurrency=2&batch=10&timeout_ms=100",
        )
        .unwrap();
        assert_eq!((e.batch, e.concurrency), (10, 2));
        assert_eq!(e.shown, "http://127.0.0.1:8545/?apikey=***");
        let err = Endpoint::parse(&chain, "http://u:pw@h/#rsp=5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rsp"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
        let err = Endpoint::parse(&chain, "http://h/#batch=0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch must be at least 1"), "{err}");
        let err = Endpoint::parse(&chain, "ws://h/").unwrap_err().to_string();
        assert!(err.contains("expected http:// or https://"), "{err}");
    }
}
