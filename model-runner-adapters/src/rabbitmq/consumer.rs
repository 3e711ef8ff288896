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
//! Acks go out as multiple-acks: a delivery's ack is sent once every older delivery of its
//! channel is settled, and one `basic.ack` with `multiple` then settles the whole run of them
//! (the broker does one update instead of one per message). An ack held behind an older delivery
//! still executing is sent on its own after [`ACK_HOLD`], so a long run does not hold back the
//! acks of the short ones after it. Nacks and rejects go out at once, on their own, and every
//! settlement of a channel is sent under one lock, in order, so a multiple-ack can never cover
//! a delivery that is being handed back. A held ack lost with its channel or process is harmless:
//! the broker redelivers the message, and the worker finds its run done and drops it.
//!
//! [`Consumer::cancel`] sends `basic.cancel` and nacks (requeue) what the broker had sent but
//! `next` not returned, and keeps the channel open, so a worker shutting down can still settle
//! (or hand back) the deliveries it holds. Dropping the [`AmqpConsumer`] drops its channel; lapin closes a channel whose last handle is
//! gone, and the broker requeues its unacked deliveries (marked redelivered). Dropping a
//! [`Delivery`] unsettled sends a `basic.nack` with requeue from a spawned task. Deliveries
//! still buffered from a channel that has died are skipped: the broker delivers them again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::BackoffBuilder;

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

/// How long an ack waits for the older deliveries of its channel to be settled (so one
/// multiple-ack covers them all) before it is sent on its own.
pub(super) const ACK_HOLD: Duration = Duration::from_millis(20);

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
        settler: Arc<Settler>,
    },
    /// The subscription ended; `attempt` resubscriptions have failed since, and `delays` gives
    /// the wait before each next one (backon, `AmqpOptions::backoff`).
    Lost {
        attempt: u32,
        delays: backon::ExponentialBackoff,
    },
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
                settler: Arc::default(),
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
                State::Subscribed {
                    stream, settler, ..
                } => match stream.next().await {
                    // Buffered before its channel died: the broker has requeued it and will
                    // deliver it again, and an ack could not reach it anyway.
                    Some(Ok(delivery)) if !delivery.acker.usable() => {
                        tracing::debug!(queue = %self.queue, "skipping a delivery of a closed channel");
                    }
                    Some(Ok(delivery)) => match RunMessage::decode(&delivery.data) {
                        Ok(message) => {
                            settler
                                .settling
                                .lock()
                                .await
                                .outstanding
                                .insert(delivery.delivery_tag);
                            let handle = AmqpDeliveryHandle {
                                acker: delivery.acker,
                                tag: delivery.delivery_tag,
                                settler: settler.clone(),
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
                        self.state = self.lost();
                    }
                    None => {
                        tracing::warn!(queue = %self.queue, "consumer cancelled by the broker; resubscribing");
                        self.state = self.lost();
                    }
                },
                State::Cancelled { .. } => return Ok(None),
                State::Lost { attempt, delays } => {
                    if *attempt > 0 {
                        let delay = delays.next().unwrap_or(self.shared.options.max_backoff);
                        tokio::time::sleep(delay).await;
                    }
                    let attempt = *attempt;
                    match subscribe(&self.shared, &self.queue, self.prefetch).await {
                        Ok((channel, stream)) => {
                            tracing::info!(queue = %self.queue, "consumer resubscribed");
                            self.state = State::Subscribed {
                                settler: Arc::default(),
                                _channel: Box::new(channel),
                                stream,
                            };
                        }
                        Err(e) => {
                            tracing::warn!(queue = %self.queue, error = %e, attempt, "resubscribing failed");
                            if let State::Lost { attempt, .. } = &mut self.state {
                                *attempt = attempt.saturating_add(1);
                            }
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
    /// The state of a consumer whose subscription just ended.
    fn lost(&self) -> State {
        State::Lost {
            attempt: 0,
            delays: self.shared.options.backoff().build(),
        }
    }

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
            ..
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

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    Ack,
    Requeue,
    Reject,
}

/// The settlements of one channel: acks gathered into multiple-acks, sent in order (see the
/// module docs). It holds no channel handle (only the deliveries' ackers), so dropping the
/// consumer still closes the channel at once.
#[derive(Debug, Default)]
struct Settler {
    settling: tokio::sync::Mutex<Settling>,
}

#[derive(Debug, Default)]
struct Settling {
    /// Tags handed out and not yet settled on the wire, ascending.
    outstanding: BTreeSet<u64>,
    /// Of `outstanding`, those acked and not yet sent, with their ackers: each waits for the
    /// older ones.
    acked: BTreeMap<u64, Acker>,
    /// A task sends the held acks after [`ACK_HOLD`].
    flush_scheduled: bool,
}

impl Settler {
    /// Settles delivery `tag`. An ack may be held (see the module docs); a nack or reject is
    /// sent before this returns.
    async fn settle(
        self: &Arc<Self>,
        tag: u64,
        acker: Acker,
        how: Settlement,
    ) -> lapin::Result<bool> {
        let mut settling = self.settling.lock().await;
        let mut sent = true;
        match how {
            Settlement::Ack => {
                settling.acked.insert(tag, acker);
            }
            Settlement::Requeue | Settlement::Reject => {
                settling.outstanding.remove(&tag);
                settling.acked.remove(&tag);
                sent = if how == Settlement::Requeue {
                    acker
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        })
                        .await?
                } else {
                    acker.reject(BasicRejectOptions { requeue: false }).await?
                };
            }
        }
        self.send_settled_prefix(&mut settling).await?;
        if !settling.acked.is_empty() && !settling.flush_scheduled {
            settling.flush_scheduled = true;
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ACK_HOLD).await;
                let mut settling = this.settling.lock().await;
                settling.flush_scheduled = false;
                // The channel may be gone; the broker then redelivers, and the worker drops
                // the messages of finished runs.
                if let Err(e) = this.send_held(&mut settling).await {
                    tracing::debug!(error = %e, "held acks not sent");
                }
            });
        }
        Ok(sent)
    }

    /// One ack (`multiple` when it covers several) for the oldest outstanding deliveries that
    /// are all acked.
    async fn send_settled_prefix(&self, settling: &mut Settling) -> lapin::Result<()> {
        let prefix: Vec<u64> = settling
            .outstanding
            .iter()
            .take_while(|tag| settling.acked.contains_key(tag))
            .copied()
            .collect();
        let Some(&last) = prefix.last() else {
            return Ok(());
        };
        let mut ackers: Vec<Acker> = Vec::with_capacity(prefix.len());
        for tag in &prefix {
            settling.outstanding.remove(tag);
            ackers.extend(settling.acked.remove(tag));
        }
        let newest = ackers.pop().expect("the prefix's last tag was acked");
        debug_assert_eq!(prefix.last(), Some(&last));
        newest
            .ack(BasicAckOptions {
                multiple: prefix.len() > 1,
            })
            .await
            .map(drop)
    }

    /// Sends every held ack: the settled prefix together, the others one by one.
    async fn send_held(&self, settling: &mut Settling) -> lapin::Result<()> {
        self.send_settled_prefix(settling).await?;
        for (tag, acker) in std::mem::take(&mut settling.acked) {
            settling.outstanding.remove(&tag);
            acker.ack(BasicAckOptions { multiple: false }).await?;
        }
        Ok(())
    }
}

/// Settles one delivery through its channel's [`Settler`].
#[derive(Debug)]
struct AmqpDeliveryHandle {
    acker: Acker,
    tag: u64,
    settler: Arc<Settler>,
    settled: bool,
}

impl AmqpDeliveryHandle {
    async fn settle(mut self: Box<Self>, what: &str, how: Settlement) -> Result<(), QueueError> {
        self.settled = true;
        if !self.acker.usable() {
            return Err(QueueError::Unavailable {
                adapter: ADAPTER,
                message: format!(
                    "{what} not sent: the delivery's channel is closed, so the broker redelivers the message"
                ),
            });
        }
        match self.settler.settle(self.tag, self.acker.clone(), how).await {
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
            let (settler, tag, acker) = (self.settler.clone(), self.tag, self.acker.clone());
            runtime.spawn(async move {
                let _ = settler.settle(tag, acker, Settlement::Requeue).await;
            });
        }
    }
}

#[async_trait]
impl DeliveryHandle for AmqpDeliveryHandle {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.settle("ack", Settlement::Ack).await
    }

    async fn nack_requeue(self: Box<Self>) -> Result<(), QueueError> {
        self.settle("nack", Settlement::Requeue).await
    }

    async fn reject(self: Box<Self>) -> Result<(), QueueError> {
        self.settle("reject", Settlement::Reject).await
    }
}
