//! [`AmqpConsumer`]: one channel per consumer, resubscribing after the connection is lost.
//!
//! `consume` subscribes once (so a refused queue fails the call). [`Consumer::next`] then polls
//! the lapin consumer stream directly, without a task in between; that poll is cancel-safe (a
//! delivery is taken from the stream only by the poll that returns it), so a worker can
//! `select!` `next` against shutdown. When the stream fails (connection lost, channel closed by
//! the broker, consumer cancelled) the next call to `next` resubscribes on a fresh channel,
//! retrying with backoff and jitter until the broker is back; cancelling it there only drops a
//! half-made channel.
//!
//! [`Consumer::cancel`] sends `basic.cancel` and nacks (requeue) what the broker had sent but
//! `next` not returned, and keeps the channel open, so a worker shutting down can still settle
//! (or hand back) the deliveries it holds. Dropping the [`AmqpConsumer`] drops its channel; lapin closes a channel whose last handle is
//! gone, and the broker requeues its unacked deliveries (marked redelivered). Dropping a
//! [`Delivery`] unsettled sends a `basic.nack` with requeue from a spawned task. Deliveries
//! still buffered from a channel that has died are skipped: the broker delivers them again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel};
use model_runner_core::ports::{Consumer, Delivery, DeliveryHandle, QueueError, RunMessage};

use super::{ADAPTER, Shared, amqp_error};

/// A subscription to one queue on its own channel. See the module docs.
#[derive(Debug)]
pub(super) struct AmqpConsumer {
    shared: Arc<Shared>,
    queue: String,
    prefetch: u16,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Consuming. The channel is kept so that it closes exactly when the consumer is dropped.
    Subscribed {
        _channel: Box<Channel>,
        stream: lapin::Consumer,
    },
    /// The subscription ended; `attempt` resubscriptions have failed since.
    Lost { attempt: u32 },
    /// Deliveries stopped by [`Consumer::cancel`]; the channel stays open so that what was
    /// handed out can still be settled, and closes when the consumer is dropped.
    Cancelled { _channel: Option<Box<Channel>> },
}

impl AmqpConsumer {
    /// Subscribes to `queue` with at most `prefetch` (at least 1; [`AmqpOptions::prefetch`]
    /// overrides it) unacked deliveries.
    ///
    /// [`AmqpOptions::prefetch`]: super::AmqpOptions::prefetch
    pub(super) async fn start(
        shared: Arc<Shared>,
        queue: &str,
        prefetch: u16,
    ) -> Result<Self, QueueError> {
        let prefetch = shared.options.prefetch.unwrap_or(prefetch).max(1);
        let (channel, stream) = subscribe(&shared, queue, prefetch).await?;
        Ok(Self {
            shared,
            queue: queue.to_owned(),
            prefetch,
            state: State::Subscribed {
                _channel: Box::new(channel),
                stream,
            },
        })
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn cancel(&mut self) -> Result<(), QueueError> {
        self.cancel_subscription().await
    }

    async fn next(&mut self) -> Result<Option<Delivery>, QueueError> {
        loop {
            match &mut self.state {
                State::Subscribed { stream, .. } => match stream.next().await {
                    // Buffered before its channel died: the broker has requeued it and will
                    // deliver it again, and an ack could not reach it anyway.
                    Some(Ok(delivery)) if !delivery.acker.usable() => {
                        tracing::debug!(queue = %self.queue, "skipping a delivery of a closed channel");
                    }
                    Some(Ok(delivery)) => match RunMessage::decode(&delivery.data) {
                        Ok(message) => {
                            let handle = AmqpDeliveryHandle {
                                acker: delivery.acker,
                                settled: false,
                            };
                            return Ok(Some(Delivery::new(
                                message,
                                delivery.redelivered,
                                Box::new(handle),
                            )));
                        }
                        Err(e) => {
                            dead_letter_poison(&self.shared, &self.queue, delivery.acker, e).await;
                        }
                    },
                    Some(Err(e)) => {
                        tracing::warn!(queue = %self.queue, error = %e, "consumer lost its channel; resubscribing");
                        self.state = State::Lost { attempt: 0 };
                    }
                    None => {
                        tracing::warn!(queue = %self.queue, "consumer cancelled by the broker; resubscribing");
                        self.state = State::Lost { attempt: 0 };
                    }
                },
                State::Cancelled { .. } => return Ok(None),
                State::Lost { attempt } => {
                    let attempt = *attempt;
                    if attempt > 0 {
                        tokio::time::sleep(self.shared.options.backoff(attempt - 1)).await;
                    }
                    match subscribe(&self.shared, &self.queue, self.prefetch).await {
                        Ok((channel, stream)) => {
                            tracing::info!(queue = %self.queue, "consumer resubscribed");
                            self.state = State::Subscribed {
                                _channel: Box::new(channel),
                                stream,
                            };
                        }
                        Err(e) => {
                            tracing::warn!(queue = %self.queue, error = %e, attempt, "resubscribing failed");
                            self.state = State::Lost {
                                attempt: attempt.saturating_add(1),
                            };
                            if !e.is_retryable() {
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl AmqpConsumer {
    /// `basic.cancel`, then hands back (nack, requeue) what the broker had already sent and
    /// [`Consumer::next`] not returned, until the stream ends.
    async fn cancel_subscription(&mut self) -> Result<(), QueueError> {
        match self.state {
            State::Subscribed { .. } => {}
            // Cancelled already: keep its channel open.
            State::Cancelled { .. } => return Ok(()),
            // Nothing is subscribed (a dead channel's deliveries are back in the queue).
            State::Lost { .. } => {
                self.state = State::Cancelled { _channel: None };
                return Ok(());
            }
        }
        let State::Subscribed {
            _channel: channel,
            mut stream,
        } = std::mem::replace(&mut self.state, State::Cancelled { _channel: None })
        else {
            unreachable!("matched as subscribed above");
        };
        let cancelled = channel
            .basic_cancel(stream.tag(), BasicCancelOptions::default())
            .await
            .map_err(|e| amqp_error(&format!("cancelling the consumer of {}", self.queue), e));
        if cancelled.is_ok() {
            // After cancel-ok the stream ends once its buffer is drained; bounded in case the
            // channel dies meanwhile (then the broker requeues everything anyway).
            let drain = async {
                while let Some(Ok(delivery)) = stream.next().await {
                    if delivery.acker.usable() {
                        let _ = delivery
                            .acker
                            .nack(BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            })
                            .await;
                    }
                }
            };
            let bound = std::time::Duration::from_secs(5).min(self.shared.options.confirm_timeout);
            let _ = tokio::time::timeout(bound, drain).await;
        }
        self.state = State::Cancelled {
            _channel: Some(channel),
        };
        cancelled
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
    let mut arguments = FieldTable::default();
    if let Some(timeout) = shared.options.consumer_timeout {
        let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        arguments.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(millis));
    }
    let stream = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .map_err(|e| amqp_error(&format!("consuming queue {queue}"), e))?;
    Ok((channel, stream))
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
