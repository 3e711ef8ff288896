//! The RabbitMQ run queue against a real broker found at `AMQP_URL`
//! (`amqp://guest:guest@127.0.0.1:5672/%2f`). Unset: each test says it is not configured and
//! passes. Set but unreachable: the tests fail. Every test uses its own queue names, so the tests
//! run in parallel, also beside other processes on the same broker.
#![cfg(feature = "rabbitmq")]

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use model_runner_adapters::connect::queue_from_url;
use model_runner_adapters::rabbitmq::{AmqpOptions, AmqpRunQueue, QueueType};
use model_runner_core::conformance::queue::{expect_next, run_all};
use model_runner_core::ports::{QueueError, RunMessage, RunQueue};
use model_runner_core::routing::dead_letter_queue_name;
use model_runner_core::run::RunId;

/// The broker URL, or `None` (with a notice) when `AMQP_URL` is not set.
fn amqp_url() -> Option<String> {
    match std::env::var("AMQP_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("AMQP_URL is not set: RabbitMQ test not configured, skipped");
            None
        }
    }
}

async fn connect(url: &str, options: AmqpOptions) -> AmqpRunQueue {
    AmqpRunQueue::connect(url, options)
        .await
        .expect("AMQP_URL is set, so RabbitMQ MUST be reachable")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Deletes test queues (and their dead-letter queues) so repeated runs leave the broker clean.
async fn delete_queues(url: &str, queues: &[String]) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in queues {
        for name in [q.clone(), dead_letter_queue_name(q)] {
            let _ = ch
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_classic() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    assert!(queue.is_durable());
    run_all(move || {
        let q = queue.clone();
        async move { q }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_quorum_with_delivery_limit() {
    let Some(url) = amqp_url() else { return };
    let options = AmqpOptions {
        queue_type: QueueType::Quorum {
            delivery_limit: Some(20),
        },
        consumer_timeout: Some(Duration::from_secs(6 * 3600)),
        ..AmqpOptions::default()
    };
    let queue = connect(&url, options).await;
    run_all(move || {
        let q = queue.clone();
        async move { q }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_the_consumer_keeps_going() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("poison");
    queue
        .declare_topology(std::slice::from_ref(&name))
        .await
        .unwrap();

    // Garbage straight through lapin, then a valid message through the adapter.
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let raw = conn.create_channel().await.unwrap();
    let garbage = b"\xff\x00not a run message";
    raw.basic_publish(
        "".into(),
        name.as_str().into(),
        BasicPublishOptions::default(),
        garbage,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap();
    let good = RunMessage {
        run_id: RunId::new(),
        attempt: 1,
    };
    queue.publish(&name, &[good]).await.unwrap();

    let mut consumer = queue.consume(&name, 10).await.unwrap();
    let d = expect_next(&mut consumer).await;
    assert_eq!(d.message, good, "the consumer MUST skip the poison message");
    d.ack().await.unwrap();
    assert_eq!(queue.poison_count(), 1);

    // The garbage is in the dead-letter queue, byte for byte.
    let dead = dead_letter_queue_name(&name);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        if let Some(m) = raw
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison message MUST reach {dead}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.delivery.data, garbage);
    drop(consumer);
    let _ = conn.close(200, "done".into()).await;
    delete_queues(&url, &[name]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_declared_idempotently() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let names = vec![unique("topo_a"), unique("topo_b")];
    queue.declare_topology(&names).await.unwrap();
    // Again, and from a second client: the same arguments, so RabbitMQ accepts it.
    queue.declare_topology(&names).await.unwrap();
    let other = connect(&url, AmqpOptions::default()).await;
    other.declare_topology(&names).await.unwrap();
    // The dead-letter queues exist: a passive declaration succeeds.
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for n in &names {
        for q in [n.clone(), dead_letter_queue_name(n)] {
            ch.queue_declare(
                q.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{q} MUST exist: {e}"));
        }
    }
    let _ = conn.close(200, "done".into()).await;
    delete_queues(&url, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_declaration_is_a_clear_backend_error() {
    let Some(url) = amqp_url() else { return };
    let name = unique("conflict");
    let classic = connect(&url, AmqpOptions::default()).await;
    classic
        .declare_topology(std::slice::from_ref(&name))
        .await
        .unwrap();
    let quorum = connect(
        &url,
        AmqpOptions {
            queue_type: QueueType::Quorum {
                delivery_limit: None,
            },
            ..AmqpOptions::default()
        },
    )
    .await;
    let err = quorum
        .publish(
            &name,
            &[RunMessage {
                run_id: RunId::new(),
                attempt: 1,
            }],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    // The refusal did not break the adapter.
    classic
        .publish(
            &name,
            &[RunMessage {
                run_id: RunId::new(),
                attempt: 1,
            }],
        )
        .await
        .unwrap();
    delete_queues(&url, &[name]).await;
}

/// `url` with `query` appended to whatever query it already has.
fn with_query(url: &str, query: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

/// Declares `queue` (durable) with `args` on a fresh connection: `Err` with the broker's reply
/// when the queue exists with other arguments.
async fn declare_with(url: &str, queue: &str, args: FieldTable) -> Result<(), String> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let result = ch
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = conn.close(200, "done".into()).await;
    result
}

/// The arguments the adapter gives the quorum work queue `queue`, with `delivery_limit`.
fn quorum_work_queue_args(queue: &str, delivery_limit: Option<u32>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(dead_letter_queue_name(queue))),
    );
    if let Some(limit) = delivery_limit {
        args.insert("x-delivery-limit".into(), AMQPValue::LongUInt(limit));
    }
    args
}

/// `queue_type=quorum&delivery_limit=N` in the `--queue` URL declares quorum queues with that
/// delivery limit, as the broker sees them: a redeclaration with the same arguments is
/// accepted, one with another limit or type refused, and a message requeued more than N times
/// lands in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_parameters_declare_quorum_queues_with_the_delivery_limit() {
    let Some(url) = amqp_url() else { return };
    let name = unique("url_quorum");
    let queue = queue_from_url(
        &with_query(
            &url,
            "queue_type=quorum&delivery_limit=2&consumer_timeout_ms=3600000",
        ),
        std::slice::from_ref(&name),
    )
    .await
    .unwrap();

    // The broker's view of the declared queues.
    declare_with(&url, &name, quorum_work_queue_args(&name, Some(2)))
        .await
        .expect("same arguments: accepted");
    let err = declare_with(&url, &name, quorum_work_queue_args(&name, Some(3)))
        .await
        .unwrap_err();
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");
    assert!(err.contains("x-delivery-limit"), "{err}");
    let err = declare_with(&url, &name, FieldTable::default())
        .await
        .unwrap_err();
    assert!(err.contains("PRECONDITION_FAILED"), "{err}");
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    declare_with(&url, &dead_letter_queue_name(&name), quorum)
        .await
        .expect("the dead-letter queue is a quorum queue too");

    // The limit at work: the third return dead-letters the message.
    let sent = messages(1);
    queue.publish(&name, &sent).await.unwrap();
    let mut consumer = queue.consume(&name, 100).await.unwrap();
    for _ in 0..3 {
        let d = expect_next(&mut consumer).await;
        assert_eq!(d.message, sent[0]);
        d.nack_requeue().await.unwrap();
    }
    let mut dead = queue
        .consume(&dead_letter_queue_name(&name), 1)
        .await
        .unwrap();
    let d = expect_next(&mut dead).await;
    assert_eq!(d.message, sent[0], "dead-lettered after 2 redeliveries");
    d.ack().await.unwrap();
    drop(dead);

    drop(consumer);
    drop(queue);
    delete_queues(&url, &[name]).await;
}

/// `prefetch` in the `--queue` URL overrides the prefetch a consumer asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_prefetch_overrides_the_consumers() {
    let Some(url) = amqp_url() else { return };
    let name = unique("url_prefetch");
    let queue = queue_from_url(&with_query(&url, "prefetch=3"), &[])
        .await
        .unwrap();
    queue.publish(&name, &messages(5)).await.unwrap();
    let mut consumer = queue.consume(&name, 100).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(expect_next(&mut consumer).await);
    }
    let more = tokio::time::timeout(Duration::from_millis(700), consumer.next()).await;
    assert!(
        more.is_err(),
        "a 4th delivery despite prefetch=3: {:?}",
        more.map(|r| r.map(|d| d.map(|d| d.message)))
    );
    for d in held {
        d.ack().await.unwrap();
    }
    // Acking frees the window: the rest arrive.
    for _ in 0..2 {
        expect_next(&mut consumer).await.ack().await.unwrap();
    }
    drop(consumer);
    drop(queue);
    delete_queues(&url, &[name]).await;
}

/// A bad parameter in the `--queue` URL fails before connecting, naming it, without the password.
#[tokio::test]
async fn bad_url_parameters_are_named_without_the_password() {
    for (query, named) in [
        ("queue_type=stream", "queue_type=stream"),
        ("delivery_limit=5", "needs `queue_type=quorum`"),
        ("prefetch=0", "prefetch=0"),
        ("consumer_timeout=60", "unknown field `consumer_timeout`"),
    ] {
        let err = queue_from_url(
            &format!("amqp://guest:hunter2@127.0.0.1:1/%2f?{query}"),
            &[],
        )
        .await
        .unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(named), "{query}: {shown}");
        assert!(!shown.contains("hunter2"), "{query}: {shown}");
    }
}

fn messages(n: usize) -> Vec<RunMessage> {
    (0..n)
        .map(|i| RunMessage {
            run_id: RunId::new(),
            attempt: i as u32 + 1,
        })
        .collect()
}

/// A worker `select!`s `next` against other work: cancelling it at any point loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("cancel");
    let sent = messages(200);
    let mut consumer = queue.consume(&name, 20).await.unwrap();
    let publisher = {
        let (queue, name, sent) = (queue.clone(), name.clone(), sent.clone());
        tokio::spawn(async move {
            for chunk in sent.chunks(10) {
                queue.publish(&name, chunk).await.unwrap();
            }
        })
    };
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut cancelled = 0u32;
    while got.len() < sent.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {} of {}",
            got.len(),
            sent.len()
        );
        // A tiny budget, so many calls are cancelled while waiting.
        tokio::select! {
            next = consumer.next() => {
                let d = next.unwrap().unwrap();
                got.push(d.message);
                d.ack().await.unwrap();
            }
            _ = tokio::time::sleep(Duration::from_micros(200)) => cancelled += 1,
        }
    }
    publisher.await.unwrap();
    assert_eq!(got, sent, "every message, once, in order");
    eprintln!("{cancelled} calls to next were cancelled");
    delete_queues(&url, &[name]).await;
}

/// A delivery dropped without being settled comes back while its consumer lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_delivery_is_requeued() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("dropped");
    let sent = messages(1);
    queue.publish(&name, &sent).await.unwrap();
    let mut consumer = queue.consume(&name, 5).await.unwrap();
    let first = expect_next(&mut consumer).await;
    assert!(!first.redelivered);
    drop(first);
    let again = expect_next(&mut consumer).await;
    assert_eq!(again.message, sent[0]);
    assert!(again.redelivered, "it MUST be marked redelivered");
    again.ack().await.unwrap();
    delete_queues(&url, &[name]).await;
}

/// Acks are gathered into multiple-acks, yet a delivery handed back while newer ones are acked
/// (held behind it) is the only one that comes back: no multiple-ack covers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_among_held_acks_brings_back_only_its_message() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("held");
    let sent = messages(4);
    queue.publish(&name, &sent).await.unwrap();
    let mut consumer = queue.consume(&name, 10).await.unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..4 {
        deliveries.push(expect_next(&mut consumer).await);
    }
    let mut deliveries = deliveries.into_iter();
    let (first, second, third, fourth) = (
        deliveries.next().unwrap(),
        deliveries.next().unwrap(),
        deliveries.next().unwrap(),
        deliveries.next().unwrap(),
    );
    // Newer deliveries acked first: held behind the first, still unsettled.
    third.ack().await.unwrap();
    second.ack().await.unwrap();
    first.nack_requeue().await.unwrap();
    let again = expect_next(&mut consumer).await;
    assert_eq!(again.message, sent[0], "the handed-back message comes back");
    assert!(again.redelivered);
    fourth.ack().await.unwrap();
    again.ack().await.unwrap();
    // Nothing else comes back, now or after the consumer's channel closes.
    drop(consumer);
    let mut consumer = queue.consume(&name, 10).await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(
        nothing.is_err(),
        "every other message was acked, got {:?}",
        nothing.map(|d| d.map(|d| d.map(|d| d.message)))
    );
    delete_queues(&url, &[name]).await;
}

/// An ack held behind an older delivery that is still being worked on is sent on its own
/// after a short while: closing the channel then brings back the older one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_held_behind_a_long_run_is_sent_on_its_own() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("hold");
    let sent = messages(2);
    queue.publish(&name, &sent).await.unwrap();
    let mut consumer = queue.consume(&name, 10).await.unwrap();
    let long = expect_next(&mut consumer).await;
    let short = expect_next(&mut consumer).await;
    short.ack().await.unwrap();
    // The broker shows one unacked message (the long run's) once the held ack went out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let unacked = rabbitmq_unacked(&name);
        if unacked == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held ack was not sent: unacked {unacked:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The long run's message is handed back with the channel; the short one's is not.
    std::mem::forget(long);
    drop(consumer);
    let mut consumer = queue.consume(&name, 10).await.unwrap();
    let back = expect_next(&mut consumer).await;
    assert_eq!(back.message, sent[0]);
    back.ack().await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(nothing.is_err(), "the short run's message was acked");
    delete_queues(&url, &[name]).await;
}

/// `messages_unacknowledged` of `queue` as `rabbitmqctl` reports it (the broker runs here).
fn rabbitmq_unacked(queue: &str) -> Option<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages_unacknowledged"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(queue))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
}

/// One large batch goes out pipelined and still arrives in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batch_keeps_publish_order() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("large_batch");
    let sent = messages(2_000);
    queue.publish(&name, &sent).await.unwrap();
    let mut consumer = queue.consume(&name, 100).await.unwrap();
    let mut got = Vec::with_capacity(sent.len());
    for _ in 0..sent.len() {
        let d = expect_next(&mut consumer).await;
        got.push(d.message);
        d.ack().await.unwrap();
    }
    assert!(got == sent, "messages MUST arrive in publish order");
    delete_queues(&url, &[name]).await;
}

/// Concurrent publishers share the pool of confirm channels; every message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("concurrent");
    let batches: Vec<Vec<RunMessage>> = (0..16).map(|_| messages(50)).collect();
    let tasks: Vec<_> = batches
        .iter()
        .cloned()
        .map(|batch| {
            let (queue, name) = (queue.clone(), name.clone());
            tokio::spawn(async move { queue.publish(&name, &batch).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every publish is confirmed");
    }
    let mut consumer = queue.consume(&name, 100).await.unwrap();
    let mut got = std::collections::HashSet::new();
    for _ in 0..16 * 50 {
        let d = expect_next(&mut consumer).await;
        assert!(got.insert(d.message), "duplicate {:?}", d.message);
        d.ack().await.unwrap();
    }
    let sent: std::collections::HashSet<_> = batches.into_iter().flatten().collect();
    assert_eq!(got, sent);
    delete_queues(&url, &[name]).await;
}

/// Properties a consumer outside this adapter can rely on: persistent, the run id as message
/// id, the attempt in a header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_persistent_with_id_and_attempt() {
    let Some(url) = amqp_url() else { return };
    let queue = connect(&url, AmqpOptions::default()).await;
    let name = unique("props");
    let m = RunMessage {
        run_id: RunId::new(),
        attempt: 7,
    };
    queue.publish(&name, &[m]).await.unwrap();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a confirmed message is in the queue");
    let props = &got.delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(
        props.message_id().as_ref().map(|s| s.to_string()),
        Some(m.run_id.to_string())
    );
    let attempt = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("attempt").cloned());
    assert_eq!(attempt, Some(lapin::types::AMQPValue::LongUInt(7)));
    assert_eq!(RunMessage::decode(&got.delivery.data).unwrap(), m);
    let _ = conn.close(200, "done".into()).await;
    delete_queues(&url, &[name]).await;
}

#[tokio::test]
async fn bad_urls_name_the_problem_without_the_password() {
    for (url, expected) in [
        ("http://guest:hunter2@localhost/", "scheme"),
        ("amqp://guest:hunter2@localhost:99999/", "invalid AMQP URL"),
        ("amqp://guest:hunter2@/", "invalid AMQP URL"),
    ] {
        let err = AmqpRunQueue::connect(url, AmqpOptions::default())
            .await
            .unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(expected), "{url}: {shown}");
        assert!(!shown.contains("hunter2"), "{url}: {shown}");
    }
}

/// A TCP forwarder to the broker that can be cut and set up again: a broker outage for the
/// clients that go through it, without stopping the broker other tests share.
struct Forwarder {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `127.0.0.1:port` (`0`: any free port) and forwards to `upstream`.
    fn start(upstream: String, port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, streams) = (stop.clone(), streams.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                                continue;
                            };
                            let mut held = streams.lock().unwrap();
                            held.push(client.try_clone().unwrap());
                            held.push(server.try_clone().unwrap());
                            drop(held);
                            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                            pipe(server, client);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Self {
            port,
            stop,
            streams,
            acceptor: Some(acceptor),
        }
    }

    /// Stops listening and closes every forwarded connection.
    fn cut(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
    }
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

/// `ping` answers `Ok` while the broker is reachable, fails within a few seconds (without the
/// password) once it is not, and recovers by itself when the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_follows_the_broker() {
    let Some(url) = amqp_url() else { return };
    let direct = connect(&url, AmqpOptions::default()).await;
    direct.ping().await.expect("the broker at AMQP_URL answers");

    let parsed = url::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5672)
    );
    let mut forwarder = Forwarder::start(upstream.clone(), 0);
    let port = forwarder.port;
    let mut via = parsed.clone();
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(port)).unwrap();
    let options = AmqpOptions {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        ..AmqpOptions::default()
    };
    let queue = connect(via.as_str(), options).await;
    queue
        .ping()
        .await
        .expect("the broker answers through the forwarder");

    forwarder.cut();
    let started = std::time::Instant::now();
    let err = queue.ping().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ping MUST be bounded: {:?}",
        started.elapsed()
    );
    assert!(matches!(err, QueueError::Unavailable { .. }), "{err:?}");
    if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
        let shown = err.to_string();
        assert!(!shown.contains(&format!(":{password}@")), "{shown}");
    }
    // Pings keep failing while the broker is away.
    assert!(queue.ping().await.is_err());

    let _back = Forwarder::start(upstream, port);
    let mut attempts = 0;
    while let Err(e) = queue.ping().await {
        attempts += 1;
        assert!(attempts < 10, "ping does not recover: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
