//! [`RunQueue`]: the broker that fans runs out to workers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::run::RunId;

/// A queue failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A queue name the broker refuses.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueue {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Bytes that are not a run message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// The broker did not confirm a publish; the caller SHOULD retry (publishes may duplicate).
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    /// The broker is unreachable; retry later.
    #[error("queue unavailable ({adapter}): {message}")]
    Unavailable {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
    /// The queue was closed (shutdown).
    #[error("queue closed")]
    Closed,
    /// Any other backend failure.
    #[error("queue backend {adapter}: {source}")]
    Backend {
        /// Adapter.
        adapter: &'static str,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl QueueError {
    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            QueueError::NotConfirmed(_) | QueueError::Unavailable { .. }
        )
    }
}

/// What travels on a queue: which run, on which attempt. The run itself stays in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunMessage {
    /// The run.
    pub run_id: RunId,
    /// The attempt this message is for; stale attempts are dropped by the worker.
    pub attempt: u32,
}

impl RunMessage {
    /// The wire form: compact JSON `{"run_id":"…","attempt":N}`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a RunMessage always serialises")
    }

    /// Parses the wire form.
    pub fn decode(bytes: &[u8]) -> Result<Self, QueueError> {
        serde_json::from_slice(bytes).map_err(|e| {
            QueueError::Decode(format!(
                "{e} (first bytes: {:?})",
                String::from_utf8_lossy(&bytes[..bytes.len().min(32)])
            ))
        })
    }
}

/// Settles one delivery. Exactly one of the three is called, or none (then the message comes
/// back once the delivery or its consumer is gone).
#[async_trait]
pub trait DeliveryHandle: fmt::Debug + Send + Sync {
    /// Done with it: the broker forgets it.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Put it back for another consumer.
    async fn nack_requeue(self: Box<Self>) -> Result<(), QueueError>;
    /// Move it to the dead-letter queue `<queue>.dead`.
    async fn reject(self: Box<Self>) -> Result<(), QueueError>;
}

/// One received message and the means to settle it.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: RunMessage,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    handle: Box<dyn DeliveryHandle>,
}

impl Delivery {
    /// Wraps an adapter's handle.
    pub fn new(message: RunMessage, redelivered: bool, handle: Box<dyn DeliveryHandle>) -> Self {
        Self {
            message,
            redelivered,
            handle,
        }
    }

    /// See [`DeliveryHandle::ack`].
    pub async fn ack(self) -> Result<(), QueueError> {
        self.handle.ack().await
    }

    /// See [`DeliveryHandle::nack_requeue`].
    pub async fn nack_requeue(self) -> Result<(), QueueError> {
        self.handle.nack_requeue().await
    }

    /// See [`DeliveryHandle::reject`].
    pub async fn reject(self) -> Result<(), QueueError> {
        self.handle.reject().await
    }
}

/// A subscription to one queue.
///
/// A consumer is a subscription *and* the channel its deliveries are settled on, as in AMQP:
/// dropping it closes that channel, so every delivery it handed out and that is not settled yet
/// goes back to the queue at once (to another consumer), and settling such a delivery
/// afterwards fails. A worker that wants to stop receiving but still settle what it holds (a
/// graceful shutdown) calls [`Consumer::cancel`] first and drops the consumer only once every
/// delivery is settled.
#[async_trait]
pub trait Consumer: fmt::Debug + Send {
    /// The next delivery, waiting for one. MUST be cancel-safe (a cancelled call loses no
    /// message), so a worker can `select!` it against shutdown. `Ok(None)` when closed or
    /// cancelled.
    async fn next(&mut self) -> Result<Option<Delivery>, QueueError>;

    /// Stops deliveries (AMQP `basic.cancel`) and keeps the channel open: deliveries already
    /// returned by [`next`](Consumer::next) MUST stay settleable until the consumer is dropped;
    /// messages the adapter received but did not return MUST go back to the queue; later calls
    /// of `next` MUST return `Ok(None)`. Idempotent. An error means the broker may still send
    /// deliveries to this consumer until it is dropped; they come back then.
    async fn cancel(&mut self) -> Result<(), QueueError>;
}

/// A message broker with named queues.
///
/// # Contract
///
/// - `publish` MUST return only once the broker holds every message of the batch (durably, for
///   durable adapters); an error means some may not be held and the caller MUST publish again
///   (duplicates are allowed: delivery is at-least-once).
/// - Queues MUST be isolated: a message published to `a` is never delivered from `b`.
/// - Messages of one queue SHOULD be delivered in publish order when nothing is redelivered.
/// - A delivery MUST be settled explicitly: `ack` removes it; `nack_requeue` makes it
///   deliverable again; `reject` moves it to `<queue>.dead` (see
///   [`dead_letter_queue_name`](crate::routing::dead_letter_queue_name)), which is consumable
///   like any queue.
/// - A delivery neither acked nor rejected MUST come back (with `redelivered = true`) once its
///   consumer goes away, at once: delivery is at-least-once. Settling it after its consumer was
///   dropped MUST fail (the message is back in the queue already). A consumer that was
///   [cancelled](Consumer::cancel) receives nothing new, while what it holds stays settleable
///   until it is dropped.
/// - Every message MUST be delivered to one consumer at a time.
/// - `is_durable` tells whether messages survive a process restart; when it is `false` the
///   enqueuer republishes `queued` runs on start.
///
/// ## Readiness
///
/// `ping` is the readiness probe behind `GET /readyz`.
///
/// - `ping` MUST return `Ok` only when the broker answered a request made by this call (a
///   remembered connection state is not enough), and MUST fail (with
///   [`QueueError::Unavailable`] when the broker cannot be reached) otherwise. It MAY
///   reconnect, doing what any reconnect does (such as declaring the topology again), as the
///   next `publish` would.
/// - `ping` MUST NOT have effects a consumer can see: no message published, consumed or
///   settled.
/// - `ping` SHOULD bound its own wait to a couple of seconds; callers MUST still bound it with
///   a timeout of their own.
/// - Its error MUST NOT contain secrets (passwords of URLs, credentials).
/// - An adapter with nothing remote to check (in-memory) MAY keep the default, which is `Ok`.
#[async_trait]
pub trait RunQueue: fmt::Debug + Send + Sync + 'static {
    /// Publishes a batch to `queue` and waits for the broker's confirmation.
    async fn publish(&self, queue: &str, messages: &[RunMessage]) -> Result<(), QueueError>;

    /// Subscribes to `queue` with at most `prefetch` unsettled deliveries.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError>;

    /// Whether messages survive a restart of this process.
    fn is_durable(&self) -> bool;

    /// Readiness probe: whether the broker answers now (see the contract). The default, for
    /// adapters with nothing remote to check, is `Ok`.
    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// `Arc<Q>` and `Box<Q>` are queues too, so wrappers compose.
macro_rules! forward_run_queue {
    ($($pointer:ident),*) => {$(
        #[async_trait]
        impl<T: RunQueue + ?Sized> RunQueue for $pointer<T> {
            async fn publish(&self, queue: &str, messages: &[RunMessage]) -> Result<(), QueueError> {
                (**self).publish(queue, messages).await
            }
            async fn consume(
                &self,
                queue: &str,
                prefetch: u16,
            ) -> Result<Box<dyn Consumer>, QueueError> {
                (**self).consume(queue, prefetch).await
            }
            fn is_durable(&self) -> bool {
                (**self).is_durable()
            }
            async fn ping(&self) -> Result<(), QueueError> {
                (**self).ping().await
            }
        }
    )*};
}
forward_run_queue!(Arc, Box);
