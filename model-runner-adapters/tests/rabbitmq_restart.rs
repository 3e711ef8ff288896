//! RabbitMQ is stopped and started (`rabbitmqctl stop_app` / `start_app`) while a producer and a
//! consumer, each with its own connection, move 5,000 messages. Afterwards every message was
//! consumed and acked at least once and both sides recovered in this process.
//!
//! Needs `AMQP_URL` (unset: not configured, passes with a notice) and a `rabbitmqctl` that
//! controls that broker (override the command with `RABBITMQCTL`, e.g.
//! `RABBITMQCTL="docker exec rabbitmq rabbitmqctl"`). It stops the broker, so it is `#[ignore]`d
//! and CI runs it in a step of its own, after every other test:
//! `cargo test -p model-runner-adapters --no-default-features --features rabbitmq --test
//! rabbitmq_restart -- --ignored`.
#![cfg(feature = "rabbitmq")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use model_runner_adapters::rabbitmq::{AmqpOptions, AmqpRunQueue};
use model_runner_core::ports::{RunMessage, RunQueue};
use model_runner_core::routing::dead_letter_queue_name;
use model_runner_core::run::RunId;
use tokio::sync::watch;
use tokio::time::Instant;

const MESSAGES: usize = 5_000;
const BATCH: usize = 25;
/// The producer publishes this many, then waits until the broker is stopped before going on.
const BEFORE_STOP: usize = MESSAGES / 2;
/// The consumer acks this many, then holds the next delivery unacked until the broker is
/// stopped, so a delivery is in flight across the restart.
const HOLD_AT: usize = MESSAGES / 4;

/// Runs `rabbitmqctl <arg>` (or `$RABBITMQCTL <arg>`), failing the test when it fails.
fn rabbitmqctl(arg: &str) {
    let command = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    let mut words = command.split_whitespace();
    let program = words.next().expect("RABBITMQCTL is empty");
    let output = std::process::Command::new(program)
        .args(words)
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command} {arg}: {e}"));
    assert!(
        output.status.success(),
        "{command} {arg} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts the broker again if the test stops midway with it stopped.
struct StartAppOnDrop(Arc<AtomicBool>);

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        if self.0.swap(false, Ordering::SeqCst) {
            rabbitmqctl("start_app");
        }
    }
}

/// Waits for `done`, failing the test with `what` after `within`.
async fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops the broker: CI runs it alone, after every other test, with `-- --ignored`"]
async fn survives_broker_restart_without_losing_messages() {
    let Ok(url) = std::env::var("AMQP_URL") else {
        eprintln!("AMQP_URL is not set: RabbitMQ restart test not configured, skipped");
        return;
    };
    let options = AmqpOptions {
        // Short, so a publish during the outage fails and the producer's own retry is exercised.
        connect_timeout: Duration::from_secs(3),
        confirm_timeout: Duration::from_secs(10),
        ..AmqpOptions::default()
    };
    let producer_side = AmqpRunQueue::connect(&url, options.clone())
        .await
        .expect("AMQP_URL is set, so RabbitMQ MUST be reachable");
    let consumer_side = AmqpRunQueue::connect(&url, options).await.unwrap();
    let name = format!("restart_{}", uuid::Uuid::now_v7().simple());
    producer_side
        .declare_topology(std::slice::from_ref(&name))
        .await
        .unwrap();

    let sent: Vec<RunMessage> = (0..MESSAGES)
        .map(|_| RunMessage {
            run_id: RunId::new(),
            attempt: 1,
        })
        .collect();
    let published = Arc::new(AtomicUsize::new(0));
    let failed_publishes = Arc::new(AtomicUsize::new(0));
    // Whether the broker has been stopped (it stays `true` after the restart).
    let (stopped_tx, stopped) = watch::channel(false);
    let holding = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashMap<RunId, u32>>> = Arc::default();
    let failed_acks = Arc::new(AtomicUsize::new(0));

    let consumer = {
        let (queue, name) = (consumer_side.clone(), name.clone());
        let (acked, failed_acks) = (acked.clone(), failed_acks.clone());
        let (mut stopped, holding) = (stopped.clone(), holding.clone());
        tokio::spawn(async move {
            let mut c = queue.consume(&name, 50).await.unwrap();
            for received in 0.. {
                let d = c
                    .next()
                    .await
                    .expect("the consumer keeps going through the outage")
                    .expect("the consumer is not closed");
                let id = d.message.run_id;
                if received == HOLD_AT {
                    holding.store(true, Ordering::SeqCst);
                    stopped.wait_for(|s| *s).await.unwrap();
                }
                match d.ack().await {
                    Ok(()) => *acked.lock().unwrap().entry(id).or_default() += 1,
                    // The channel died under it: the broker redelivers the message.
                    Err(e) => {
                        assert!(e.is_retryable(), "{e}");
                        failed_acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let producer = {
        let (queue, name, sent) = (producer_side.clone(), name.clone(), sent.clone());
        let (published, failed, mut stopped) =
            (published.clone(), failed_publishes.clone(), stopped.clone());
        tokio::spawn(async move {
            for (i, batch) in sent.chunks(BATCH).enumerate() {
                if i * BATCH == BEFORE_STOP {
                    stopped.wait_for(|s| *s).await.unwrap();
                }
                let mut attempt = 0u32;
                loop {
                    match queue.publish(&name, batch).await {
                        Ok(()) => break,
                        Err(e) => {
                            assert!(e.is_retryable(), "publish failed for good: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            // The enqueuer's retry: back off, then publish the batch again.
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(
                                50 * u64::from(attempt.min(20)),
                            ))
                            .await;
                        }
                    }
                }
                published.fetch_add(batch.len(), Ordering::Relaxed);
            }
        })
    };

    let acked_count = || acked.lock().unwrap().len();
    wait_until(
        "half is published and the consumer holds a delivery",
        Duration::from_secs(60),
        || published.load(Ordering::Relaxed) >= BEFORE_STOP && holding.load(Ordering::SeqCst),
    )
    .await;

    let broker_stopped = Arc::new(AtomicBool::new(true));
    let _restart_guard = StartAppOnDrop(broker_stopped.clone());
    tokio::task::spawn_blocking(|| rabbitmqctl("stop_app"))
        .await
        .unwrap();
    stopped_tx.send_replace(true);
    // The producer is now publishing into the outage.
    wait_until(
        "a publish fails while the broker is down",
        Duration::from_secs(60),
        || failed_publishes.load(Ordering::Relaxed) >= 1,
    )
    .await;
    tokio::task::spawn_blocking(|| rabbitmqctl("start_app"))
        .await
        .unwrap();
    broker_stopped.store(false, Ordering::SeqCst);

    wait_until(
        "every message is published and acked",
        Duration::from_secs(180),
        || published.load(Ordering::Relaxed) == MESSAGES && acked_count() == MESSAGES,
    )
    .await;
    producer.await.unwrap();
    consumer.abort();

    let acked = acked.lock().unwrap().clone();
    for m in &sent {
        assert!(acked.contains_key(&m.run_id), "{:?} was lost", m.run_id);
    }
    assert_eq!(acked.len(), MESSAGES, "only sent messages arrive");
    assert!(
        producer_side.reconnect_count() >= 1,
        "the producer reconnected"
    );
    assert!(
        consumer_side.reconnect_count() >= 1,
        "the consumer reconnected"
    );
    let duplicates: u32 = acked.values().map(|n| n - 1).sum();
    // The delivery held across the stop was acked on a dead channel: either the ack failed, or
    // it went nowhere and the message came back and was acked again.
    assert!(
        failed_acks.load(Ordering::Relaxed) + duplicates as usize >= 1,
        "the delivery unacked at the stop MUST come back"
    );
    eprintln!(
        "restart: {MESSAGES} acked; {} publish attempts failed and were retried; {} acks failed \
         and were redelivered; {duplicates} messages acked twice or more; reconnects: producer {}, consumer {}",
        failed_publishes.load(Ordering::Relaxed),
        failed_acks.load(Ordering::Relaxed),
        producer_side.reconnect_count(),
        consumer_side.reconnect_count(),
    );

    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in [name.clone(), dead_letter_queue_name(&name)] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}
