//! [`AmqpConsumer`]: one channel per consumer, driven by a task that survives reconnects.
//!
//! `consume` subscribes once (so a refused queue fails the call) and hands the lapin consumer
//! stream to a spawned task. The task decodes each delivery and sends it into an mpsc channel
//! bounded by the prefetch; [`Consumer::next`] receives from that channel, which makes it
//! cancel-safe: a cancelled `recv` loses nothing. When the stream fails (connection lost, channel
//! closed by the broker, consumer cancelled) the task resubscribes on a fresh channel, with
//! backoff and jitter, until it succeeds or the consumer is dropped.
//!
//! Dropping the [`AmqpConsumer`] stops the task, which drops the channel; lapin closes a channel
//! whose last handle is gone, and the broker requeues its unacked deliveries (marked
//! redelivered). Dropping a [`Delivery`] unsettled sends a `basic.nack` with requeue from a
//! spawned task. A delivery received on a channel that has since died is skipped by `next`: the
//! broker has already requeued it and will deliver it again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use model_runner_core::ports::{Consumer, Delivery, DeliveryHandle, QueueError, RunMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ADAPTER, Shared, amqp_error};

/// A received, decoded message on its way to [`Consumer::next`].
#[derive(Debug)]
struct Received {
    message: RunMessage,
    redelivered: bool,
    acker: Acker,
}

/// What the driving task sends: a message, or a failure the worker should see (one that retrying
/// alone will not cure, such as a refused queue declaration).
type Item = Result<Received, QueueError>;

/// A subscription to one queue on its own channel. See the module docs.
#[derive(Debug)]
pub(super) struct AmqpConsumer {
    queue: Arc<str>,
    received: mpsc::Receiver<Item>,
    task: JoinHandle<()>,
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        // Dropping the task drops the channel, which closes it: the broker requeues whatever
        // this consumer holds unacked.
        self.task.abort();
    }
}

impl AmqpConsumer {
    /// Subscribes to `queue` and starts the task that keeps the subscription alive.
    pub(super) async fn start(
        shared: Arc<Shared>,
        queue: &str,
        prefetch: u16,
    ) -> Result<Self, QueueError> {
        let prefetch = prefetch.max(1);
        let (channel, stream) = subscribe(&shared, queue, prefetch).await?;
        let queue: Arc<str> = queue.into();
        let (sender, received) = mpsc::channel(usize::from(prefetch));
        let task = tokio::spawn(drive(
            shared,
            queue.clone(),
            prefetch,
            channel,
            stream,
            sender,
        ));
        Ok(Self {
            queue,
            received,
            task,
        })
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, QueueError> {
        loop {
            match self.received.recv().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(r)) if !r.acker.usable() => {
                    tracing::debug!(queue = %self.queue, "skipping a delivery of a closed channel; the broker redelivers it");
                }
                Some(Ok(r)) => {
                    let handle = AmqpDeliveryHandle {
                        acker: r.acker,
                        settled: false,
                    };
                    return Ok(Some(Delivery::new(
                        r.message,
                        r.redelivered,
                        Box::new(handle),
                    )));
                }
            }
        }
    }
}

/// Opens a channel with `prefetch` and starts consuming `queue` with manual acks.
async fn subscribe(
    shared: &Shared,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer), QueueError> {
    shared.ensure_declared(queue).await?;
    let connection = shared.connection().await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| amqp_error("opening a consumer channel", e))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| amqp_error("setting the prefetch", e))?;
    let tag = format!("model-runner-{:016x}", rand::random::<u64>());
    let stream = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| amqp_error(&format!("consuming queue {queue}"), e))?;
    Ok((channel, stream))
}

/// Forwards deliveries to the consumer and resubscribes whenever the subscription ends; returns
/// once the consumer is gone.
async fn drive(
    shared: Arc<Shared>,
    queue: Arc<str>,
    prefetch: u16,
    mut channel: Channel,
    mut stream: lapin::Consumer,
    sender: mpsc::Sender<Item>,
) {
    loop {
        let next = tokio::select! {
            _ = sender.closed() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(delivery)) => match RunMessage::decode(&delivery.data) {
                Ok(message) => {
                    let received = Received {
                        message,
                        redelivered: delivery.redelivered,
                        acker: delivery.acker,
                    };
                    if sender.send(Ok(received)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    dead_letter_poison(&shared, &queue, delivery.acker, e).await;
                    continue;
                }
            },
            Some(Err(e)) => {
                tracing::warn!(queue = %queue, error = %e, "consumer lost its channel; resubscribing");
            }
            None => {
                tracing::warn!(queue = %queue, "consumer cancelled by the broker; resubscribing");
            }
        }
        drop(stream);
        drop(channel);
        let mut attempt = 0u32;
        loop {
            match subscribe(&shared, &queue, prefetch).await {
                Ok((c, s)) => {
                    tracing::info!(queue = %queue, "consumer resubscribed");
                    (channel, stream) = (c, s);
                    break;
                }
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, attempt, "resubscribing failed");
                    if !e.is_retryable() && sender.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = sender.closed() => return,
                        _ = tokio::time::sleep(shared.options.backoff(attempt)) => {}
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}

/// Rejects an undecodable delivery without requeue, so it lands in the dead-letter queue (a
/// dead-letter queue has none: there the broker drops it), logs it and counts it.
async fn dead_letter_poison(shared: &Shared, queue: &str, acker: Acker, error: QueueError) {
    shared.poison.fetch_add(1, Ordering::Relaxed);
    tracing::error!(queue, %error, "undecodable message rejected to the dead-letter queue");
    let rejected = acker.reject(BasicRejectOptions { requeue: false }).await;
    if !matches!(rejected, Ok(true)) {
        // The channel died first: the broker requeued the message and will deliver it again,
        // and it will be rejected then.
        tracing::warn!(queue, ?rejected, "rejecting an undecodable message failed");
    }
}

/// Settles one delivery through its channel's acker.
#[derive(Debug)]
struct AmqpDeliveryHandle {
    acker: Acker,
    settled: bool,
}

impl AmqpDeliveryHandle {
    async fn settle(
        mut self: Box<Self>,
        what: &str,
        result: impl AsyncFnOnce(&Acker) -> lapin::Result<bool>,
    ) -> Result<(), QueueError> {
        self.settled = true;
        match result(&self.acker).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(QueueError::Unavailable {
                adapter: ADAPTER,
                message: format!(
                    "{what} not sent: the delivery's channel is closed, so the broker redelivers the message"
                ),
            }),
            Err(e) => Err(amqp_error(what, e)),
        }
    }
}

impl Drop for AmqpDeliveryHandle {
    /// An unsettled delivery is handed back with `basic.nack` (requeue). Without a runtime to
    /// send it from, the message comes back when the consumer's channel closes.
    fn drop(&mut self) {
        if self.settled || !self.acker.usable() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let acker = self.acker.clone();
            runtime.spawn(async move {
                let _ = acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await;
            });
        }
    }
}

#[async_trait]
impl DeliveryHandle for AmqpDeliveryHandle {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.settle("ack", async |a: &Acker| {
            a.ack(BasicAckOptions::default()).await
        })
        .await
    }

    async fn nack_requeue(self: Box<Self>) -> Result<(), QueueError> {
        self.settle("nack", async |a: &Acker| {
            a.nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await
        })
        .await
    }

    async fn reject(self: Box<Self>) -> Result<(), QueueError> {
        self.settle("reject", async |a: &Acker| {
            a.reject(BasicRejectOptions { requeue: false }).await
        })
        .await
    }
}
