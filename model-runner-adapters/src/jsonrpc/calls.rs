//! `eth_call`s in JSON-RPC batches: one chunk of distinct requests, sent in batches of the
//! endpoint's size and retried call by call ("Batched calls" in the module docs).
//!
//! ```text
//! chunk ──attempt──▶ the calls without an answer, batches of `batch`, `concurrency` at a time
//!                     ├─ answer / revert / permanent error ──▶ that call's answer, kept
//!                     └─ retryable (429 on the batch, a rate-limit error on one call)
//!                            ──▶ left without an answer; the attempt fails retryably
//!        ──retrying (backoff, failover)──▶ next attempt with the calls left
//!        ──retries spent──▶ the calls left: Unavailable
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use alloy_primitives::{B256, Bytes};
use futures::future::{BoxFuture, FutureExt};
use model_runner_core::CallRequest;
use model_runner_core::ports::SourceError;
use serde_json::{Value, json};

use super::endpoint::{Endpoint, block_object_refused};
use super::{
    Failure, JsonRpcSource, buffered_in_order, call_answer, classify, classify_call, copy_error,
    hex,
};

/// Answers of `requests` (distinct), one per request in order, each retried on its own.
pub(super) async fn chunk(
    source: &JsonRpcSource,
    requests: &[&CallRequest],
) -> Vec<Result<Bytes, SourceError>> {
    let answers: Mutex<Vec<Option<Result<Bytes, SourceError>>>> =
        Mutex::new((0..requests.len()).map(|_| None).collect());
    let answers_ref = &answers;
    let what = format!("{} eth_calls", requests.len());
    let given_up = source
        .retrying(&what, |ep| attempt(ep, requests, answers_ref))
        .await
        .err();
    answers
        .into_inner()
        .expect("answers lock")
        .into_iter()
        .map(|a| match (a, &given_up) {
            (Some(answer), _) => answer,
            (None, Some(e)) => Err(copy_error(e)),
            (None, None) => unreachable!("an attempt succeeds only once every call has an answer"),
        })
        .collect()
}

/// Sends the calls without an answer from `ep`. Fails retryably when some are still without
/// one (their failure, with the longest `Retry-After` asked).
async fn attempt(
    ep: &Endpoint,
    requests: &[&CallRequest],
    answers: &Mutex<Vec<Option<Result<Bytes, SourceError>>>>,
) -> Result<(), Failure> {
    let pending: Vec<usize> = {
        let done = answers.lock().expect("answers lock");
        (0..requests.len()).filter(|&i| done[i].is_none()).collect()
    };
    // Boxed futures, collected first: the async-trait future must be `Send` for every
    // lifetime, which a stream mapping a closure cannot show the compiler.
    type Outcomes = Vec<(usize, Result<Bytes, Failure>)>;
    let batches: Vec<BoxFuture<'_, Outcomes>> = pending
        .chunks(ep.batch)
        .map(|batch| send(ep, requests, batch).boxed())
        .collect();
    let outcomes = buffered_in_order(batches, ep.concurrency).await;
    let mut retry: Option<Failure> = None;
    let mut done = answers.lock().expect("answers lock");
    for (i, outcome) in outcomes {
        match outcome {
            Ok(answer) => done[i] = Some(Ok(answer)),
            Err(Failure::Final(e)) => done[i] = Some(Err(e)),
            Err(Failure::Retry { message, after }) => {
                let longest = match &retry {
                    Some(Failure::Retry { after: a, .. }) => (*a).max(after),
                    _ => after,
                };
                retry = Some(Failure::Retry {
                    message,
                    after: longest,
                });
            }
        }
    }
    if retry.is_none() && done.iter().any(Option::is_none) {
        return Err(Failure::retry(format!(
            "{}: a batch came back without some of its calls' answers",
            ep.shown
        )));
    }
    retry.map_or(Ok(()), Err)
}

/// The `eth_call` parameters of `request`, by block hash or by number.
fn params(request: &CallRequest, by_hash: bool) -> Value {
    let tx = json!({"to": request.to, "data": request.data});
    if by_hash {
        json!([tx, {"blockHash": request.block_hash}])
    } else {
        json!([tx, hex(request.block)])
    }
}

/// One batch: the outcome of each call of `batch` (indices into `requests`). A failure of the
/// whole request is each call's.
async fn send(
    ep: &Endpoint,
    requests: &[&CallRequest],
    batch: &[usize],
) -> Vec<(usize, Result<Bytes, Failure>)> {
    let method = "eth_call";
    let mut out = Vec::with_capacity(batch.len());
    let mut by_number: Vec<usize> = Vec::new();
    if ep.calls_by_hash() {
        match ep
            .batch(method, batch.iter().map(|&i| params(requests[i], true)))
            .await
        {
            Err(e) => return each(batch, classify(ep, method, e)),
            Ok(answers) => {
                for (&i, answer) in batch.iter().zip(answers) {
                    match answer {
                        Err(e) if block_object_refused(&e) => {
                            if ep.calls_by_hash() {
                                tracing::info!(
                                    url = %ep.shown,
                                    "node refuses EIP-1898 block parameters; eth_call by number, checking the block hash"
                                );
                            }
                            ep.set_calls_by_hash(false);
                            by_number.push(i);
                        }
                        Err(e) => out.push((i, Err(classify_call(ep, e)))),
                        Ok(answer) => {
                            ep.set_calls_by_hash(true);
                            out.push((i, call_answer(ep, answer)));
                        }
                    }
                }
            }
        }
    } else {
        by_number.extend_from_slice(batch);
    }
    if !by_number.is_empty() {
        out.extend(by_number_checked(ep, requests, &by_number).await);
    }
    out
}

/// Calls by block number, then one batch of those blocks' headers: an answer is kept only if
/// its block still has the requested hash after the call (else the chain moved: retryable).
async fn by_number_checked(
    ep: &Endpoint,
    requests: &[&CallRequest],
    batch: &[usize],
) -> Vec<(usize, Result<Bytes, Failure>)> {
    let method = "eth_call";
    let answers = match ep
        .batch(method, batch.iter().map(|&i| params(requests[i], false)))
        .await
    {
        Err(e) => return each(batch, classify(ep, method, e)),
        Ok(answers) => answers,
    };
    let answers: Vec<(usize, Result<Bytes, Failure>)> = batch
        .iter()
        .zip(answers)
        .map(|(&i, a)| {
            (
                i,
                a.map_err(|e| classify_call(ep, e))
                    .and_then(|a| call_answer(ep, a)),
            )
        })
        .collect();
    let numbers: Vec<u64> = answers
        .iter()
        .filter(|(_, a)| a.is_ok())
        .map(|(i, _)| requests[*i].block)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if numbers.is_empty() {
        return answers;
    }
    let method = "eth_getBlockByNumber";
    let headers = match ep
        .batch(method, numbers.iter().map(|&n| json!([hex(n), false])))
        .await
    {
        Err(e) => {
            let failure = classify(ep, method, e);
            return answers
                .into_iter()
                .map(|(i, a)| (i, a.and(Err(failure.copy()))))
                .collect();
        }
        Ok(headers) => headers,
    };
    let hashes: HashMap<u64, Result<Option<B256>, Failure>> = numbers
        .iter()
        .zip(headers)
        .map(|(&n, h)| {
            let hash = h.map_err(|e| classify(ep, method, e)).map(|b| {
                b.get("hash")
                    .and_then(Value::as_str)
                    .and_then(|h| h.parse().ok())
            });
            (n, hash)
        })
        .collect();
    answers
        .into_iter()
        .map(|(i, a)| {
            let request = requests[i];
            let checked = a.and_then(|answer| match &hashes[&request.block] {
                Err(f) => Err(f.copy()),
                Ok(hash) if *hash == Some(request.block_hash) => Ok(answer),
                Ok(hash) => Err(Failure::retry(format!(
                    "{}: eth_call by number: block {} is now {} (not {}): the chain moved",
                    ep.shown,
                    request.block,
                    hash.map_or_else(|| "missing".to_owned(), |h| h.to_string()),
                    request.block_hash
                ))),
            });
            (i, checked)
        })
        .collect()
}

/// `failure` as the outcome of every call of `batch`.
fn each(batch: &[usize], failure: Failure) -> Vec<(usize, Result<Bytes, Failure>)> {
    batch.iter().map(|&i| (i, Err(failure.copy()))).collect()
}
