//! [`MemoryRunQueue`]: named FIFO queues in memory with acks, redelivery and dead letters.
//!
//! It behaves like RabbitMQ where the engine depends on it: each consumer is a channel, and
//! dropping the consumer puts every delivery it handed out and that is still unsettled back
//! in the queue at once, after which settling those deliveries fails, as on a closed AMQP
//! channel. [`Consumer::cancel`] stops deliveries while what was handed out stays settleable.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::ports::{Consumer, Delivery, DeliveryHandle, QueueError, RunMessage, RunQueue};
use crate::routing::dead_letter_queue_name;

/// A [`RunQueue`] in memory. Not durable: messages are lost with the process, which
/// [`RunQueue::is_durable`] reports so the enqueuer republishes `queued` runs on start.
#[derive(Debug, Clone, Default)]
pub struct MemoryRunQueue {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

/// One queue: messages waiting for a consumer, and consumers waiting for a message. At most
/// one of the two is non-empty: a message published while consumers wait goes straight to the
/// one that has waited longest, so deliveries go round the consumers as RabbitMQ's do, and a
/// consumer coming back for more does not take every message from those already waiting.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<(RunMessage, bool)>,
    waiters: VecDeque<oneshot::Sender<(RunMessage, bool)>>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a message to the consumer that has waited longest, or queues it: at the back, or
    /// at the front when it was delivered before (as RabbitMQ requeues).
    fn push(&self, message: RunMessage, redelivered: bool) {
        self.hand_over((message, redelivered), redelivered);
    }

    fn hand_over(&self, mut item: (RunMessage, bool), front: bool) {
        let mut state = self.lock();
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(item) {
                Ok(()) => return,
                // That consumer stopped waiting.
                Err(back) => item = back,
            }
        }
        if front {
            state.ready.push_front(item);
        } else {
            state.ready.push_back(item);
        }
    }
}

/// A consumer's wait for a message; dropped before the message is taken (the `next` call was
/// cancelled), it puts a message handed to it back at the front of the queue.
struct Waiting {
    queue: Arc<Queue>,
    receiver: oneshot::Receiver<(RunMessage, bool)>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.receiver.close();
        if let Ok(item) = self.receiver.try_recv() {
            // It was first in line: it goes back first.
            self.queue.hand_over(item, true);
        }
    }
}

impl Shared {
    fn queue(&self, name: &str) -> Arc<Queue> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

impl MemoryRunQueue {
    /// Empty queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages waiting in `queue` (not counting unsettled deliveries).
    pub fn ready_len(&self, queue: &str) -> usize {
        self.shared.queue(queue).lock().ready.len()
    }
}

fn check_name(queue: &str) -> Result<(), QueueError> {
    if queue.is_empty() || queue.len() > 255 {
        return Err(QueueError::InvalidQueue {
            name: queue.chars().take(64).collect(),
            reason: "a queue name has 1 to 255 characters".into(),
        });
    }
    Ok(())
}

#[async_trait]
impl RunQueue for MemoryRunQueue {
    async fn publish(&self, queue: &str, messages: &[RunMessage]) -> Result<(), QueueError> {
        check_name(queue)?;
        let q = self.shared.queue(queue);
        for m in messages {
            q.push(*m, false);
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Consumer>, QueueError> {
        check_name(queue)?;
        Ok(Box::new(MemoryConsumer {
            channel: Arc::new(Channel {
                shared: self.shared.clone(),
                queue_name: queue.to_owned(),
                state: Mutex::default(),
            }),
            queue: self.shared.queue(queue),
            permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
            cancelled: false,
        }))
    }

    fn is_durable(&self) -> bool {
        false
    }
}

/// The channel of one consumer, as in AMQP: it tracks the deliveries handed out and not yet
/// settled, and when it closes (the consumer is dropped) they all go back to the queue at
/// once, and settling any of them fails from then on.
#[derive(Debug)]
struct Channel {
    shared: Arc<Shared>,
    queue_name: String,
    state: Mutex<ChannelState>,
}

#[derive(Debug, Default)]
struct ChannelState {
    closed: bool,
    next_tag: u64,
    unsettled: HashMap<u64, RunMessage>,
}

impl Channel {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes delivery `tag` off the channel for settling; an error once the channel closed
    /// (the broker has requeued the message already).
    fn take(&self, tag: u64, what: &str) -> Result<RunMessage, QueueError> {
        let mut state = self.lock();
        if state.closed {
            return Err(QueueError::Unavailable {
                adapter: "memory",
                message: format!(
                    "{what} not sent: the delivery's consumer was dropped, so the message is back in the queue"
                ),
            });
        }
        state
            .unsettled
            .remove(&tag)
            .ok_or_else(|| QueueError::Backend {
                adapter: "memory",
                source: format!("{what}: delivery {tag} was settled already").into(),
            })
    }

    fn close(&self) {
        let unsettled = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.unsettled)
        };
        let queue = self.shared.queue(&self.queue_name);
        let mut by_tag: Vec<_> = unsettled.into_iter().collect();
        by_tag.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        for (_, message) in by_tag {
            queue.push(message, true);
        }
    }
}

#[derive(Debug)]
struct MemoryConsumer {
    channel: Arc<Channel>,
    queue: Arc<Queue>,
    permits: Arc<Semaphore>,
    cancelled: bool,
}

impl Drop for MemoryConsumer {
    /// Closes the channel: every unsettled delivery goes back to the queue now.
    fn drop(&mut self) {
        self.channel.close();
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, QueueError> {
        if self.cancelled {
            return Ok(None);
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueError::Closed)?;
        let popped = {
            let mut state = self.queue.lock();
            match state.ready.pop_front() {
                Some(item) => Ok(item),
                None => {
                    let (sender, receiver) = oneshot::channel();
                    state.waiters.push_back(sender);
                    Err(Waiting {
                        queue: self.queue.clone(),
                        receiver,
                    })
                }
            }
        };
        let (message, redelivered) = match popped {
            Ok(item) => item,
            Err(mut waiting) => match (&mut waiting.receiver).await {
                Ok(item) => item,
                // The queue is gone; cannot happen while this consumer holds it.
                Err(_) => return Err(QueueError::Closed),
            },
        };
        let tag = {
            let mut state = self.channel.lock();
            state.next_tag += 1;
            let tag = state.next_tag;
            state.unsettled.insert(tag, message);
            tag
        };
        let handle = MemoryHandle {
            channel: self.channel.clone(),
            tag,
            settled: false,
            _permit: permit,
        };
        Ok(Some(Delivery::new(message, redelivered, Box::new(handle))))
    }

    async fn cancel(&mut self) -> Result<(), QueueError> {
        // Nothing is buffered beyond the deliveries handed out, which stay settleable.
        self.cancelled = true;
        Ok(())
    }
}

#[derive(Debug)]
struct MemoryHandle {
    channel: Arc<Channel>,
    tag: u64,
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

impl MemoryHandle {
    /// Marks the delivery settled and takes its message off the channel.
    fn settle(&mut self, what: &str) -> Result<RunMessage, QueueError> {
        self.settled = true;
        self.channel.take(self.tag, what)
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        self.channel.shared.queue(name)
    }
}

impl Drop for MemoryHandle {
    /// An unsettled delivery goes back to the front of its queue, marked redelivered (as the
    /// AMQP adapter nacks a dropped delivery); after its channel closed it is back already.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(message) = self.channel.take(self.tag, "requeue") {
            self.queue(&self.channel.queue_name).push(message, true);
        }
    }
}

#[async_trait]
impl DeliveryHandle for MemoryHandle {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.settle("ack").map(drop)
    }

    async fn nack_requeue(mut self: Box<Self>) -> Result<(), QueueError> {
        let message = self.settle("nack")?;
        self.queue(&self.channel.queue_name).push(message, true);
        Ok(())
    }

    async fn reject(mut self: Box<Self>) -> Result<(), QueueError> {
        let message = self.settle("reject")?;
        self.queue(&dead_letter_queue_name(&self.channel.queue_name))
            .push(message, false);
        Ok(())
    }
}

#[cfg(all(test, feature = "conformance"))]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        let q = super::MemoryRunQueue::new();
        crate::conformance::queue::run_all(move || {
            let q = q.clone();
            async move { q }
        })
        .await;
    }
}
