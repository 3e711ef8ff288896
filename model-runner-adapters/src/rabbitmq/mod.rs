//! [`AmqpRunQueue`]: the [`RunQueue`] port on RabbitMQ (AMQP 0-9-1, through lapin).
//!
//! # Topology
//!
//! Every queue is durable, and every work queue `q` dead-letters to `q.dead` (through the
//! default exchange). [`AmqpRunQueue::declare_topology`] declares the queues
//! routing produces (`Routing::all_queues`) up front; any other queue is declared the first time
//! it is published to or consumed from, and remembered. After a reconnect the remembered set is
//! forgotten and the declared topology declared again. [`QueueType::Quorum`] makes every queue a
//! quorum queue, optionally with a delivery limit (`x-delivery-limit`) after which a message that
//! keeps coming back is dead-lettered.
//!
//! # Publishing
//!
//! A batch is published on a channel in confirm mode taken from a small pool: every message is
//! written (persistent, `message_id` = run id, header `attempt`, `mandatory`; all writes driven
//! at once, in order) before any confirmation is awaited, so a batch costs about one round trip,
//! not one per message. `publish`
//! returns `Ok` only when the broker has acked every message; a nack, a returned (unroutable)
//! message, a lost channel or no confirmation within [`AmqpOptions::confirm_timeout`] is
//! [`QueueError::NotConfirmed`], which the enqueuer retries (duplicates are fine: delivery is
//! at-least-once and the run-state claim drops repeats).
//!
//! # Consuming
//!
//! Manual acks, one channel per consumer with its own prefetch (`basic.qos`), and a cancel-safe
//! `next` that polls lapin's consumer stream directly. A message that is not a [`RunMessage`] is
//! rejected to the dead-letter queue, logged and counted ([`AmqpRunQueue::poison_count`]); the
//! consumer keeps going. (The workspace has no metrics facility to export the count to: it is an
//! in-process counter, and the `error` log line, target `model_runner_adapters::rabbitmq`, is
//! what to alert on; `<queue>.dead` holds the messages themselves.) (A dead-letter queue has no dead-letter queue of its own: garbage found
//! while consuming one is dropped by the broker, after the same log line.) Dropping a consumer
//! closes its channel, so the broker requeues what it held; dropping an unsettled delivery
//! sends `basic.nack` with requeue.
//!
//! # Connection loss
//!
//! One connection is shared. When it is found closed, the next caller reconnects, retrying with
//! backon's exponential backoff and jitter ([`AmqpOptions::min_backoff`] ..
//! [`AmqpOptions::max_backoff`], each delay plus up to as much again)
//! for at most [`AmqpOptions::connect_timeout`] per call, and declares the topology again. A
//! consumer whose subscription ended resubscribes inside its next `next` call, retrying with the
//! same backoff until the broker is back, so a worker waiting in `next` simply waits longer.
//! Deliveries that were unacked when the connection died are requeued by the broker and
//! delivered again (with `redelivered = true`): those still buffered are skipped, and acking one
//! already handed to a worker fails with [`QueueError::Unavailable`]; the run-state claim makes
//! its second processing harmless. Nothing needs a process restart.
//!
//! # `consumer_timeout` and long runs
//!
//! RabbitMQ closes a consumer's channel with `PRECONDITION_FAILED` when one of its deliveries
//! stays unacked longer than the broker's `consumer_timeout` (1800000 ms, 30 minutes, by
//! default in current releases). A worker acks when its run ends, so a run longer than the timeout loses its
//! channel: the broker requeues the message, the consumer resubscribes, the message is delivered
//! again (possibly to another worker, which finds the run claimed and leaves it), and the ack of
//! the long run fails harmlessly with [`QueueError::Unavailable`]. Nothing is lost, but the
//! channel churn is wasteful, so keep the timeout above the longest expected run: either on the
//! broker (`consumer_timeout = 21600000` in `rabbitmq.conf`, milliseconds, six hours here) or, on
//! RabbitMQ 3.11.15 and later, per consumer with [`AmqpOptions::consumer_timeout`] (URL
//! parameter `consumer_timeout_ms`), which this adapter sends as the `x-consumer-timeout`
//! consumer argument (older brokers ignore it), or per queue with a `consumer-timeout` policy
//! (`rabbitmqctl set_policy long-runs '^ethereum_' '{"consumer-timeout":21600000}' --apply-to
//! queues`), which needs no change to the declared queue arguments.
//!
//! # URL parameters
//!
//! [`AmqpOptions::from_url`] (used by `connect::queue_from_url`) reads the options from the
//! URL's query, e.g.
//! `amqp://runner:secret@mq/%2f?queue_type=quorum&delivery_limit=5&consumer_timeout_ms=21600000&prefetch=32`:
//!
//! | parameter | value | sets |
//! |---|---|---|
//! | `queue_type` | `classic` (default) or `quorum` | [`AmqpOptions::queue_type`] |
//! | `delivery_limit` | integer ≥ 1; needs `queue_type=quorum` | the quorum queues' `x-delivery-limit` |
//! | `consumer_timeout_ms` | integer ≥ 1 | [`AmqpOptions::consumer_timeout`] (`x-consumer-timeout`) |
//! | `prefetch` | 1 ..= 65535 | [`AmqpOptions::prefetch`], overriding the caller's prefetch |
//! | `connect_timeout_ms` | integer ≥ 1 | [`AmqpOptions::connect_timeout`] |
//! | `confirm_timeout_ms` | integer ≥ 1 | [`AmqpOptions::confirm_timeout`] |
//! | `publisher_channels` | integer | [`AmqpOptions::publisher_channels`] |
//! | `connection_name` | text | [`AmqpOptions::connection_name`] |
//!
//! lapin's own parameters (`heartbeat`, `connection_timeout`, `frame_max`, `channel_max`,
//! `auth_mechanism`) stay in the URL given to lapin. Anything else, a repeated parameter or a
//! malformed value is an error naming the parameter. Every process sharing a broker must use the
//! same `queue_type` and `delivery_limit`, or RabbitMQ refuses the later declarations
//! (`PRECONDITION_FAILED`).
//!
//! # Readiness
//!
//! [`RunQueue::ping`] takes the live connection (reconnecting when it is found closed, as a
//! publish would), opens a channel and closes it again: two round trips the broker must answer,
//! with no effect on any queue. It gives up after [`PING_TIMEOUT`] (or
//! [`AmqpOptions::connect_timeout`] if shorter) with [`QueueError::Unavailable`].
//!
//! # Secrets
//!
//! The URL's password never appears in logs or errors: they show `amqp://user:***@host/vhost`.

mod consumer;
mod params;
mod topology;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::AMQPErrorKind;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind};
use model_runner_core::ports::{Consumer, QueueError, RunMessage, RunQueue};
use model_runner_core::redact::{UrlSecrets, redact_url};

use self::consumer::AmqpConsumer;

/// The adapter name in [`QueueError`]s.
const ADAPTER: &str = "rabbitmq";

/// The longest [`RunQueue::ping`] waits for the broker (capped by
/// [`AmqpOptions::connect_timeout`]).
pub const PING_TIMEOUT: Duration = Duration::from_millis(1500);

/// The kind of queue declared for every queue name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Classic durable queues: fast, single-node.
    #[default]
    Classic,
    /// Quorum queues: replicated; a message delivered more than `delivery_limit` times (when
    /// set) is dead-lettered instead of requeued.
    Quorum {
        /// The broker's `x-delivery-limit`.
        delivery_limit: Option<u32>,
    },
}

/// How an [`AmqpRunQueue`] connects, declares and retries.
///
/// All queues of one broker MUST be declared with the same [`QueueType`] by every process, or
/// RabbitMQ refuses the second declaration.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// The kind of queue declared.
    pub queue_type: QueueType,
    /// How long one call (connect, publish, consume) waits for an unreachable broker before
    /// failing with [`QueueError::Unavailable`]. Consumers already running keep retrying.
    pub connect_timeout: Duration,
    /// How long `publish` waits for the broker's confirmations.
    pub confirm_timeout: Duration,
    /// First delay between reconnect attempts; it doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// Longest delay between reconnect attempts.
    pub max_backoff: Duration,
    /// Idle confirm-mode channels kept for publishing; concurrent publishes beyond this open
    /// extra channels, closed after use.
    pub publisher_channels: usize,
    /// The connection name shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// How long a delivery may stay unacked before the broker closes the consumer's channel
    /// (`x-consumer-timeout`, RabbitMQ 3.11.15+); `None` keeps the broker's `consumer_timeout`.
    /// Set it above the longest run.
    pub consumer_timeout: Option<Duration>,
    /// When set, every consumer takes this prefetch instead of the one passed to
    /// [`RunQueue::consume`] (URL parameter `prefetch`).
    pub prefetch: Option<u16>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            queue_type: QueueType::Classic,
            connect_timeout: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            publisher_channels: 8,
            connection_name: "model-runner".to_owned(),
            consumer_timeout: None,
            prefetch: None,
        }
    }
}

impl AmqpOptions {
    /// Reads the options from the query parameters of `url` (the `--queue` URL of the services)
    /// and returns the URL to connect to, without them, beside the options. The parameters are
    /// listed in the [`params`](self#url-parameters) section of the module docs; an unknown,
    /// repeated or malformed parameter is [`QueueError::Backend`] naming it, without the password.
    pub fn from_url(url: &str) -> Result<(String, Self), QueueError> {
        params::parse(url)
    }

    /// The delays between reconnect attempts (backon): from `min_backoff`, doubling up to
    /// `max_backoff`, each with a random jitter of up to as much again, so many clients do not
    /// reconnect in step; without end (callers bound them by time).
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .without_max_times()
            .with_jitter()
    }
}

/// How one connection attempt failed.
enum ConnectFailure {
    /// Worth another attempt (the broker is unreachable or went away).
    Retry(String),
    /// Not worth one (e.g. the broker refused the topology).
    Final(QueueError),
}

/// A [`RunQueue`] on RabbitMQ. Cheap to clone: clones share the connection. See the module docs.
#[derive(Debug, Clone)]
pub struct AmqpRunQueue {
    shared: Arc<Shared>,
}

struct Shared {
    /// The URL with its password, only ever given to lapin.
    url: String,
    /// The URL with `***` for the password, for logs and errors.
    redacted_url: String,
    options: AmqpOptions,
    /// The live connection, replaced when found closed. The async mutex makes concurrent callers
    /// wait for one reconnect instead of each opening a connection.
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Queues declared on the current connection.
    declared: Mutex<HashSet<String>>,
    /// Queues given to `declare_topology`, declared again after each reconnect.
    topology: Mutex<Vec<String>>,
    /// Idle confirm-mode channels.
    publishers: Mutex<Vec<Channel>>,
    /// Undecodable messages dead-lettered by consumers.
    poison: AtomicU64,
    /// Connections opened, the first included.
    connects: AtomicU64,
}

impl std::fmt::Debug for Shared {
    /// Shows the redacted URL only: the password must not reach logs through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.redacted_url)
            .field("options", &self.options)
            .field("poison", &self.poison)
            .field("connects", &self.connects)
            .finish_non_exhaustive()
    }
}

/// A failure of the broker or of lapin, kept as the source of [`QueueError::Backend`].
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
struct AmqpFailure {
    context: String,
    source: lapin::Error,
}

/// A URL this adapter cannot use.
#[derive(Debug, thiserror::Error)]
#[error("invalid AMQP URL {url}: {reason}")]
struct InvalidUrl {
    url: String,
    reason: String,
}

/// Maps a lapin error: what the broker refused on a channel (a precondition, a missing or
/// forbidden queue) is [`QueueError::Backend`]; anything about the connection is
/// [`QueueError::Unavailable`], which callers retry.
fn amqp_error(context: &str, source: lapin::Error) -> QueueError {
    let refused = matches!(
        source.kind(),
        ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(_))
    );
    if refused {
        QueueError::Backend {
            adapter: ADAPTER,
            source: Box::new(AmqpFailure {
                context: context.to_owned(),
                source,
            }),
        }
    } else {
        QueueError::Unavailable {
            adapter: ADAPTER,
            message: format!("{context}: {source}"),
        }
    }
}

/// Checks an `amqp://` / `amqps://` URL and returns it as the one redactor
/// ([`model_runner_core::redact`]) shows it; errors show it that way too.
fn checked_url(url: &str) -> Result<String, QueueError> {
    let invalid = |shown: &str, reason: String| QueueError::Backend {
        adapter: ADAPTER,
        source: Box::new(InvalidUrl {
            url: shown.to_owned(),
            reason,
        }),
    };
    let parsed = url::Url::parse(url).map_err(|e| {
        invalid(
            "(unparsable)",
            format!("{e}; expected amqp://user:password@host:5672/vhost"),
        )
    })?;
    let redacted = redact_url(url);
    if !matches!(parsed.scheme(), "amqp" | "amqps") {
        return Err(invalid(
            &redacted,
            format!("scheme {:?} is not amqp or amqps", parsed.scheme()),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(&redacted, "no host".to_owned()));
    }
    if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
        // lapin's message may quote the URL or its parts: never show a secret.
        let reason = UrlSecrets::of(url).scrub(&e.replace(url, &redacted));
        return Err(invalid(&redacted, reason));
    }
    Ok(redacted)
}

impl AmqpRunQueue {
    /// Connects to the broker at `url` (`amqp://user:password@host:5672/%2f`; `%2f` is the
    /// default vhost `/`).
    ///
    /// A malformed URL is [`QueueError::Backend`] naming the problem; a broker unreachable for
    /// [`AmqpOptions::connect_timeout`] is [`QueueError::Unavailable`]. Neither shows the
    /// password.
    pub async fn connect(url: &str, options: AmqpOptions) -> Result<Self, QueueError> {
        let shared = Arc::new(Shared::new(url, options)?);
        shared.connection().await?;
        Ok(Self { shared })
    }

    /// Declares `queues` (durable, each with its `.dead` queue) now, and again after every
    /// reconnect. Idempotent. Pass `Routing::all_queues(chains)`.
    pub async fn declare_topology(&self, queues: &[String]) -> Result<(), QueueError> {
        for q in queues {
            topology::check_name(q)?;
        }
        for q in queues {
            self.shared.ensure_declared(q).await?;
            // Only what the broker accepted is declared again on reconnect: a refused queue
            // must not make every later reconnect fail.
            let mut topology = lock(&self.shared.topology);
            if !topology.contains(q) {
                topology.push(q.clone());
            }
        }
        Ok(())
    }

    /// Undecodable messages the consumers of this queue have dead-lettered.
    pub fn poison_count(&self) -> u64 {
        self.shared.poison.load(Ordering::Relaxed)
    }

    /// How many times the connection was re-established after the first connect.
    pub fn reconnect_count(&self) -> u64 {
        self.shared
            .connects
            .load(Ordering::Relaxed)
            .saturating_sub(1)
    }

    /// The broker URL with its password redacted, for logs.
    pub fn redacted_url(&self) -> &str {
        &self.shared.redacted_url
    }

    /// Closes the connection; consumers still running see their subscription end and reconnect.
    pub async fn close(&self) {
        lock(&self.shared.publishers).clear();
        if let Some(c) = self.shared.connection.lock().await.take() {
            let _ = c.close(200, "closed by model-runner".into()).await;
        }
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded sets stay valid after a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// State for `url`, not yet connected.
    fn new(url: &str, options: AmqpOptions) -> Result<Self, QueueError> {
        Ok(Self {
            url: url.to_owned(),
            redacted_url: checked_url(url)?,
            options,
            connection: tokio::sync::Mutex::new(None),
            declared: Mutex::new(HashSet::new()),
            topology: Mutex::new(Vec::new()),
            publishers: Mutex::new(Vec::new()),
            poison: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        })
    }

    /// The live connection, reconnecting (with backoff, for at most `connect_timeout`) when the
    /// current one is closed.
    async fn connection(&self) -> Result<Arc<Connection>, QueueError> {
        let mut current = self.connection.lock().await;
        if let Some(c) = current.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        let deadline = tokio::time::Instant::now() + self.options.connect_timeout;
        let attempts = AtomicU32::new(0);
        let result = (|| async {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed);
            let properties = ConnectionProperties::default()
                .with_connection_name(self.options.connection_name.clone().into());
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(
                remaining.max(Duration::from_millis(100)),
                Connection::connect(&self.url, properties),
            )
            .await
            {
                Ok(Ok(c)) => {
                    let c = Arc::new(c);
                    match self.redeclare_topology(&c).await {
                        Ok(()) => {
                            if self.connects.fetch_add(1, Ordering::Relaxed) > 0 {
                                tracing::info!(url = %self.redacted_url, attempt, "reconnected to RabbitMQ");
                            }
                            Ok(c)
                        }
                        Err(e) if e.is_retryable() => Err(ConnectFailure::Retry(e.to_string())),
                        Err(e) => Err(ConnectFailure::Final(e)),
                    }
                }
                Ok(Err(e)) => Err(ConnectFailure::Retry(e.to_string())),
                Err(_) => Err(ConnectFailure::Retry("connect timed out".to_owned())),
            }
        })
        .retry(self.options.backoff())
        .when(|f| matches!(f, ConnectFailure::Retry(_)))
        // No attempt starts past the deadline.
        .adjust(|_, delay| delay.filter(|d| tokio::time::Instant::now() + *d < deadline))
        .notify(|f, delay| {
            if let ConnectFailure::Retry(error) = f {
                let attempt = attempts.load(Ordering::Relaxed).saturating_sub(1);
                tracing::warn!(url = %self.redacted_url, attempt, %error, ?delay, "RabbitMQ connection failed; retrying");
            }
        })
        .await;
        match result {
            Ok(c) => {
                *current = Some(c.clone());
                Ok(c)
            }
            Err(ConnectFailure::Final(e)) => Err(e),
            Err(ConnectFailure::Retry(error)) => Err(QueueError::Unavailable {
                adapter: ADAPTER,
                message: format!(
                    "cannot connect to {} within {:?}: {error}",
                    self.redacted_url, self.options.connect_timeout
                ),
            }),
        }
    }

    /// On a new connection: forgets what was declared on the old one and declares the topology.
    async fn redeclare_topology(&self, connection: &Connection) -> Result<(), QueueError> {
        lock(&self.declared).clear();
        lock(&self.publishers).clear();
        let queues = lock(&self.topology).clone();
        if queues.is_empty() {
            return Ok(());
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| amqp_error("opening a channel", e))?;
        for q in &queues {
            topology::declare(&channel, q, self.options.queue_type).await?;
        }
        let _ = channel.close(200, "declared".into()).await;
        lock(&self.declared).extend(queues);
        Ok(())
    }

    /// Declares `queue` (and its dead-letter queue) unless already declared on this connection.
    async fn ensure_declared(&self, queue: &str) -> Result<(), QueueError> {
        if lock(&self.declared).contains(queue) {
            return Ok(());
        }
        let connection = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| amqp_error("opening a channel", e))?;
        let declared = topology::declare(&channel, queue, self.options.queue_type).await;
        if declared.is_ok() {
            let _ = channel.close(200, "declared".into()).await;
            lock(&self.declared).insert(queue.to_owned());
        }
        declared
    }

    /// An idle confirm-mode channel, or a new one.
    async fn publisher(&self) -> Result<Channel, QueueError> {
        loop {
            let Some(channel) = lock(&self.publishers).pop() else {
                break;
            };
            if channel.status().connected() {
                return Ok(channel);
            }
        }
        let connection = self.connection().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| amqp_error("opening a publisher channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| amqp_error("enabling publisher confirms", e))?;
        Ok(channel)
    }

    /// Returns a healthy publisher channel to the pool (or drops it, closing it).
    fn release(&self, channel: Channel) {
        let mut pool = lock(&self.publishers);
        if pool.len() < self.options.publisher_channels {
            pool.push(channel);
        }
    }

    /// Writes every message, then awaits every confirmation.
    async fn publish_on(
        &self,
        channel: &Channel,
        queue: &str,
        messages: &[RunMessage],
    ) -> Result<(), QueueError> {
        let not_confirmed =
            |e: lapin::Error| QueueError::NotConfirmed(format!("publishing to {queue}: {e}"));
        let payloads: Vec<Vec<u8>> = messages.iter().map(RunMessage::encode).collect();
        let writes = messages.iter().zip(&payloads).map(|(m, payload)| {
            let mut headers = FieldTable::default();
            headers.insert("attempt".into(), AMQPValue::LongUInt(m.attempt));
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(m.run_id.to_string().into())
                .with_headers(headers);
            channel.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                payload,
                properties,
            )
        });
        let confirms = write_in_order(writes).await.map_err(not_confirmed)?;
        for confirm in confirms {
            let confirmation = confirm.await.map_err(not_confirmed)?;
            if confirmation.is_nack() {
                return Err(QueueError::NotConfirmed(format!(
                    "the broker nacked a message for {queue}"
                )));
            }
            if let Some(returned) = confirmation.take_message() {
                // The queue vanished since it was declared: declare it again on the retry.
                lock(&self.declared).remove(queue);
                return Err(QueueError::NotConfirmed(format!(
                    "the broker returned a message for {queue}: {} {}",
                    returned.reply_code, returned.reply_text
                )));
            }
        }
        Ok(())
    }
}

/// Drives every write at once, so the I/O loop sends them together instead of one wake-up per
/// message, and returns their results in order. Each write's first poll queues its frames (and
/// takes its confirm sequence number), and the first poll happens in slice order: the messages
/// go out in publish order.
async fn write_in_order<F, T>(writes: impl IntoIterator<Item = F>) -> lapin::Result<Vec<T>>
where
    F: Future<Output = lapin::Result<T>>,
{
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        writes.into_iter().map(|w| Some(Box::pin(w))).collect();
    let mut done: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    // Writes finish roughly in order: skip the finished prefix instead of polling it again.
    let mut first = 0;
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (slot, out) in pending[first..].iter_mut().zip(done[first..].iter_mut()) {
            if let Some(write) = slot {
                match write.as_mut().poll(cx) {
                    Poll::Ready(Ok(value)) => {
                        *out = Some(value);
                        *slot = None;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => all_done = false,
                }
            }
        }
        while pending.get(first).is_some_and(Option::is_none) {
            first += 1;
        }
        if all_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    Ok(done.into_iter().flatten().collect())
}

#[async_trait]
impl RunQueue for AmqpRunQueue {
    async fn publish(&self, queue: &str, messages: &[RunMessage]) -> Result<(), QueueError> {
        topology::check_name(queue)?;
        if messages.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        shared.ensure_declared(queue).await?;
        let channel = shared.publisher().await?;
        match tokio::time::timeout(
            shared.options.confirm_timeout,
            shared.publish_on(&channel, queue, messages),
        )
        .await
        {
            Ok(Ok(())) => {
                shared.release(channel);
                Ok(())
            }
            // The channel may hold unconfirmed messages: drop (close) it rather than reuse it.
            Ok(Err(e)) => Err(e),
            Err(_) => Err(QueueError::NotConfirmed(format!(
                "no confirmation for {queue} within {:?}",
                shared.options.confirm_timeout
            ))),
        }
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        topology::check_name(queue)?;
        let consumer = AmqpConsumer::start(self.shared.clone(), queue, prefetch).await?;
        Ok(Box::new(consumer))
    }

    /// Queues and messages are durable and persistent: they survive restarts of this process
    /// and of the broker.
    fn is_durable(&self) -> bool {
        true
    }

    /// Opens and closes a channel on the live connection (reconnecting if it is closed), within
    /// [`PING_TIMEOUT`]; see the module docs.
    async fn ping(&self) -> Result<(), QueueError> {
        let shared = &self.shared;
        let limit = shared.options.connect_timeout.min(PING_TIMEOUT);
        let probe = async {
            let connection = shared.connection().await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| amqp_error("ping: opening a channel", e))?;
            channel
                .close(200, "ping".into())
                .await
                .map_err(|e| amqp_error("ping: closing a channel", e))
        };
        match tokio::time::timeout(limit, probe).await {
            Ok(result) => result,
            Err(_) => Err(QueueError::Unavailable {
                adapter: ADAPTER,
                message: format!(
                    "ping: {} did not answer within {limit:?}",
                    shared.redacted_url
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn urls_are_checked_and_redacted() {
        let cases = [
            (
                "amqp://guest:secret@127.0.0.1:5672/%2f",
                Ok("amqp://guest:***@127.0.0.1:5672/%2f"),
            ),
            ("amqp://127.0.0.1", Ok("amqp://127.0.0.1")),
            ("http://guest:secret@host/", Err("is not amqp")),
            ("not a url", Err("expected amqp://")),
            (
                "amqp://guest:secret@host:notaport/",
                Err("invalid AMQP URL"),
            ),
            ("amqp://guest:secret@/vhost", Err("invalid AMQP URL")),
        ];
        for (url, want) in cases {
            match (checked_url(url), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{url}"),
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("invalid AMQP URL") && e.contains(want),
                        "{url}: {e}"
                    );
                    assert!(!e.contains("secret"), "{url}: {e}");
                }
                (got, _) => panic!("{url}: {got:?}"),
            }
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let shared =
            Shared::new("amqp://user:hunter2@localhost/%2f", AmqpOptions::default()).unwrap();
        let queue = AmqpRunQueue {
            shared: Arc::new(shared),
        };
        let shown = format!("{queue:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("user:***@localhost"), "{shown}");
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let o = AmqpOptions::default();
        let delays: Vec<Duration> = o.backoff().build().take(40).collect();
        assert_eq!(delays.len(), 40, "the delays never run out");
        for (attempt, d) in delays.into_iter().enumerate() {
            let base = o
                .min_backoff
                .saturating_mul(1 << attempt.min(16))
                .min(o.max_backoff);
            assert!(d >= base && d <= base * 2, "{attempt}: {d:?}");
        }
    }

    #[tokio::test]
    async fn ping_fails_fast_without_a_broker_and_hides_the_password() {
        let shared = Shared::new(
            "amqp://guest:hunter2@127.0.0.1:1/%2f",
            AmqpOptions {
                min_backoff: Duration::from_millis(10),
                ..AmqpOptions::default()
            },
        )
        .unwrap();
        let queue = AmqpRunQueue {
            shared: Arc::new(shared),
        };
        let started = std::time::Instant::now();
        let err = queue.ping().await.unwrap_err();
        assert!(
            started.elapsed() < PING_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, QueueError::Unavailable { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("guest:***@127.0.0.1:1"), "{shown}");
    }

    #[tokio::test]
    async fn unreachable_broker_is_unavailable_without_password() {
        let options = AmqpOptions {
            connect_timeout: Duration::from_millis(300),
            min_backoff: Duration::from_millis(10),
            ..AmqpOptions::default()
        };
        // Port 1 on localhost refuses connections.
        let err = AmqpRunQueue::connect("amqp://guest:secret@127.0.0.1:1/%2f", options)
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::Unavailable { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("guest:***@127.0.0.1:1"), "{shown}");
    }
}
