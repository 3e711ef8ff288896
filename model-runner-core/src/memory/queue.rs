//! [`MemoryRunQueue`]: named FIFO queues in memory with acks, redelivery and dead letters.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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

#[derive(Debug, Default)]
struct Queue {
    ready: Mutex<VecDeque<(RunMessage, bool)>>,
    notify: Notify,
}

impl Queue {
    fn push(&self, message: RunMessage, redelivered: bool) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if redelivered {
            ready.push_front((message, true));
        } else {
            ready.push_back((message, false));
        }
        drop(ready);
        self.notify.notify_one();
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
        self.shared
            .queue(queue)
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
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
            shared: self.shared.clone(),
            queue_name: queue.to_owned(),
            queue: self.shared.queue(queue),
            permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
        }))
    }

    fn is_durable(&self) -> bool {
        false
    }
}

#[derive(Debug)]
struct MemoryConsumer {
    shared: Arc<Shared>,
    queue_name: String,
    queue: Arc<Queue>,
    permits: Arc<Semaphore>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, QueueError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueError::Closed)?;
        loop {
            let notified = self.queue.notify.notified();
            let popped = self
                .queue
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            if let Some((message, redelivered)) = popped {
                // Another waiter may be able to take the next message.
                self.queue.notify.notify_one();
                let handle = MemoryHandle {
                    shared: self.shared.clone(),
                    queue_name: self.queue_name.clone(),
                    message,
                    settled: false,
                    _permit: permit,
                };
                return Ok(Some(Delivery::new(message, redelivered, Box::new(handle))));
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct MemoryHandle {
    shared: Arc<Shared>,
    queue_name: String,
    message: RunMessage,
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for MemoryHandle {
    /// An unsettled delivery goes back to the front of its queue, marked redelivered.
    fn drop(&mut self) {
        if !self.settled {
            self.shared.queue(&self.queue_name).push(self.message, true);
        }
    }
}

#[async_trait]
impl DeliveryHandle for MemoryHandle {
    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.settled = true;
        Ok(())
    }

    async fn nack_requeue(self: Box<Self>) -> Result<(), QueueError> {
        // Dropping unsettled requeues.
        Ok(())
    }

    async fn reject(mut self: Box<Self>) -> Result<(), QueueError> {
        self.settled = true;
        self.shared
            .queue(&dead_letter_queue_name(&self.queue_name))
            .push(self.message, false);
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
