//! The [`RunQueue`] conformance suite. Every case uses its own queue names, so a shared broker
//! can run cases of many test processes at once.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use super::unique;
use crate::ports::{Consumer, Delivery, QueueError, RunMessage, RunQueue};
use crate::routing::dead_letter_queue_name;
use crate::run::RunId;

/// How long a case waits for a message that should arrive (a deadline, not a sleep).
const ARRIVES: Duration = Duration::from_secs(20);
/// How long a case watches for a message that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// Runs every case on queues from `make`.
pub async fn run_all<F, Fut, Q>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Q>,
    Q: RunQueue,
{
    publish_consume_in_order(make().await).await;
    queues_are_isolated(make().await).await;
    unacked_comes_back_after_consumer_drop(make().await).await;
    held_delivery_comes_back_at_once_when_its_consumer_drops(make().await).await;
    cancel_stops_deliveries_and_keeps_held_ones_settleable(make().await).await;
    nack_requeues(make().await).await;
    reject_dead_letters(make().await).await;
    competing_consumers_share_without_duplicates(make().await).await;
    invalid_queue_name(make().await).await;
    ping_answers_without_visible_effects(make().await).await;
}

fn messages(n: u32) -> Vec<RunMessage> {
    (0..n)
        .map(|attempt| RunMessage {
            run_id: RunId::new(),
            attempt: attempt + 1,
        })
        .collect()
}

/// Waits for the next delivery, failing the test after `ARRIVES`.
pub async fn expect_next(consumer: &mut Box<dyn Consumer>) -> Delivery {
    tokio::time::timeout(ARRIVES, consumer.next())
        .await
        .expect("a message MUST arrive")
        .expect("consume failed")
        .expect("queue closed")
}

async fn expect_quiet(consumer: &mut Box<dyn Consumer>) {
    if let Ok(Ok(Some(d))) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!("no message expected, got {:?}", d.message);
    }
}

/// Published messages are delivered in order, and acked ones are gone.
pub async fn publish_consume_in_order(queue: impl RunQueue) {
    let name = unique("conf_order");
    let sent = messages(20);
    queue.publish(&name, &sent).await.expect("publish");
    let mut c = queue.consume(&name, 50).await.expect("consume");
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let d = expect_next(&mut c).await;
        assert!(!d.redelivered);
        got.push(d.message);
        d.ack().await.expect("ack");
    }
    assert_eq!(got, sent, "messages SHOULD arrive in publish order");
    drop(c);
    let mut again = queue.consume(&name, 10).await.unwrap();
    expect_quiet(&mut again).await;
}

/// A message published to `a` never comes from `b`.
pub async fn queues_are_isolated(queue: impl RunQueue) {
    let (a, b) = (unique("conf_iso_a"), unique("conf_iso_b"));
    let sent = messages(1);
    queue.publish(&a, &sent).await.unwrap();
    let mut cb = queue.consume(&b, 10).await.unwrap();
    expect_quiet(&mut cb).await;
    let mut ca = queue.consume(&a, 10).await.unwrap();
    let d = expect_next(&mut ca).await;
    assert_eq!(d.message, sent[0]);
    d.ack().await.unwrap();
}

/// A delivery neither acked nor rejected comes back, marked redelivered, once its consumer is
/// gone.
pub async fn unacked_comes_back_after_consumer_drop(queue: impl RunQueue) {
    let name = unique("conf_redeliver");
    let sent = messages(1);
    queue.publish(&name, &sent).await.unwrap();
    {
        let mut c = queue.consume(&name, 10).await.unwrap();
        let d = expect_next(&mut c).await;
        assert_eq!(d.message, sent[0]);
        drop(d);
        drop(c);
    }
    let mut c2 = queue.consume(&name, 10).await.unwrap();
    let d = expect_next(&mut c2).await;
    assert_eq!(d.message, sent[0], "the unacked message MUST come back");
    assert!(d.redelivered, "it MUST be marked redelivered");
    d.ack().await.unwrap();
    expect_quiet(&mut c2).await;
}

/// A consumer dropped while a delivery of its is still held (not dropped, not settled): the
/// message MUST come back to another consumer at once, and settling the held delivery
/// afterwards MUST fail, as on a closed AMQP channel. (The in-memory queue once kept such a
/// delivery settleable after its consumer was gone, which hid a worker shutdown bug that
/// RabbitMQ shows.)
pub async fn held_delivery_comes_back_at_once_when_its_consumer_drops(queue: impl RunQueue) {
    let name = unique("conf_drop_held");
    let sent = messages(1);
    queue.publish(&name, &sent).await.unwrap();
    let mut first = queue.consume(&name, 10).await.unwrap();
    let held = expect_next(&mut first).await;
    let mut second = queue.consume(&name, 10).await.unwrap();
    expect_quiet(&mut second).await;
    drop(first);
    let again = expect_next(&mut second).await;
    assert_eq!(again.message, sent[0]);
    assert!(again.redelivered);
    assert!(
        held.nack_requeue().await.is_err(),
        "settling a delivery of a dropped consumer MUST fail"
    );
    again.ack().await.unwrap();
    expect_quiet(&mut second).await;
}

/// After `cancel`, the consumer gets nothing new (`next` is `Ok(None)`), other consumers get
/// the rest, and what it held stays settleable until it is dropped.
pub async fn cancel_stops_deliveries_and_keeps_held_ones_settleable(queue: impl RunQueue) {
    let name = unique("conf_cancel");
    let sent = messages(3);
    queue.publish(&name, &sent[..1]).await.unwrap();
    let mut c = queue.consume(&name, 1).await.unwrap();
    let held = expect_next(&mut c).await;
    assert_eq!(held.message, sent[0]);
    c.cancel().await.expect("cancel");
    c.cancel().await.expect("cancel is idempotent");
    queue.publish(&name, &sent[1..]).await.unwrap();
    assert!(
        tokio::time::timeout(ARRIVES, c.next())
            .await
            .expect("next after cancel MUST return")
            .expect("next after cancel")
            .is_none(),
        "a cancelled consumer MUST get nothing new"
    );
    let mut other = queue.consume(&name, 10).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = expect_next(&mut other).await;
        got.push(d.message);
        d.ack().await.unwrap();
    }
    got.sort_by_key(|m| m.attempt);
    assert_eq!(got, sent[1..]);
    // Still settleable: the hand-back of a shutting-down worker.
    held.nack_requeue()
        .await
        .expect("a held delivery stays settleable after cancel");
    let back = expect_next(&mut other).await;
    assert_eq!(back.message, sent[0]);
    back.ack().await.unwrap();
    drop(c);
    expect_quiet(&mut other).await;
}

/// `nack_requeue` makes a message deliverable again.
pub async fn nack_requeues(queue: impl RunQueue) {
    let name = unique("conf_nack");
    let sent = messages(1);
    queue.publish(&name, &sent).await.unwrap();
    let mut c = queue.consume(&name, 10).await.unwrap();
    expect_next(&mut c).await.nack_requeue().await.unwrap();
    let d = expect_next(&mut c).await;
    assert_eq!(d.message, sent[0]);
    assert!(d.redelivered);
    d.ack().await.unwrap();
}

/// `reject` moves a message to `<queue>.dead`, consumable like any queue.
pub async fn reject_dead_letters(queue: impl RunQueue) {
    let name = unique("conf_dead");
    let sent = messages(2);
    queue.publish(&name, &sent).await.unwrap();
    let mut c = queue.consume(&name, 10).await.unwrap();
    expect_next(&mut c).await.reject().await.unwrap();
    let second = expect_next(&mut c).await;
    assert_eq!(
        second.message, sent[1],
        "the queue keeps going after a reject"
    );
    second.ack().await.unwrap();
    expect_quiet(&mut c).await;
    let mut dead = queue
        .consume(&dead_letter_queue_name(&name), 10)
        .await
        .unwrap();
    let d = expect_next(&mut dead).await;
    assert_eq!(
        d.message, sent[0],
        "the rejected message MUST be dead-lettered"
    );
    d.ack().await.unwrap();
}

/// Four consumers of one queue receive 200 messages between them, each once.
pub async fn competing_consumers_share_without_duplicates(queue: impl RunQueue) {
    let name = unique("conf_compete");
    let sent = messages(200);
    let mut consumers = Vec::new();
    for _ in 0..4 {
        consumers.push(queue.consume(&name, 5).await.unwrap());
    }
    queue.publish(&name, &sent).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for mut c in consumers {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_secs(2), c.next()).await
            {
                let m = d.message;
                d.ack().await.expect("ack");
                if tx.send(m).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut got = HashSet::new();
    while got.len() < sent.len() {
        let m = tokio::time::timeout(ARRIVES, rx.recv())
            .await
            .expect("all messages MUST arrive")
            .expect("consumers ended early");
        assert!(
            got.insert(m),
            "message {m:?} delivered twice without a failure"
        );
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(got, sent.into_iter().collect());
}

/// An empty queue name is refused with a clear error.
pub async fn invalid_queue_name(queue: impl RunQueue) {
    let err = queue.publish("", &messages(1)).await.unwrap_err();
    assert!(matches!(err, QueueError::InvalidQueue { .. }), "{err:?}");
}

/// `ping` succeeds on a healthy broker, and a consumer sees nothing of it: no message
/// published, consumed or settled.
pub async fn ping_answers_without_visible_effects(queue: impl RunQueue) {
    queue
        .ping()
        .await
        .expect("ping MUST succeed on a healthy broker");
    let name = unique("conf_ping");
    let sent = messages(2);
    queue.publish(&name, &sent).await.unwrap();
    for _ in 0..3 {
        queue.ping().await.expect("ping MUST succeed again");
    }
    let mut c = queue.consume(&name, 10).await.unwrap();
    let first = expect_next(&mut c).await;
    assert_eq!(
        first.message, sent[0],
        "ping MUST NOT consume or settle messages"
    );
    assert!(!first.redelivered, "ping MUST NOT settle messages");
    // Pinging while a delivery is unsettled leaves it to its consumer.
    queue.ping().await.expect("ping with a consumer attached");
    first.ack().await.unwrap();
    let second = expect_next(&mut c).await;
    assert_eq!(second.message, sent[1]);
    assert!(!second.redelivered);
    second.ack().await.unwrap();
    queue.ping().await.unwrap();
    expect_quiet(&mut c).await;
}
