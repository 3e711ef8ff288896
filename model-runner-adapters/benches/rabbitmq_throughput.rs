//! Run with: `AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo bench -p model-runner-adapters
//! --no-default-features --features rabbitmq --bench rabbitmq_throughput`
//!
//! Confirmed publishes per second and consume-and-ack per second through [`AmqpRunQueue`], beside
//! a floor measured in the same run with raw lapin calls: batches of pipelined publishes (every
//! message written, then every confirm awaited), persistent messages, and a consumer with
//! prefetch 100 acking each delivery. The adapter uses the same batch size and prefetch.
//!
//! Both sides move the same messages: the floor publishes the adapter's own wire form of the
//! batch (the JSON `RunMessage` bodies, byte for byte) with the same properties (persistent,
//! `message_id`, content type, `attempt` header), so neither side carries more bytes. The
//! body sizes of both are printed. (The floor used 200-byte bodies; a run message is
//! smaller, and a floor with bigger messages than the adapter's would flatter the adapter.)
//! The floor awaits each `basic_publish` in turn, as plain lapin code does; the adapter drives
//! a batch's writes all at once, which is why its publish rate can exceed the floor's.
//!
//! Raw and adapter work alternate batch by batch (the order swapped every batch), so load from
//! elsewhere on the machine falls on both sides alike; rates are reported from the median batch
//! time, with the all-batches rate beside it.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use model_runner_adapters::rabbitmq::{AmqpOptions, AmqpRunQueue};
use model_runner_core::ports::{Consumer, RunMessage, RunQueue};
use model_runner_core::routing::dead_letter_queue_name;
use model_runner_core::run::RunId;

/// Messages per measurement.
const MESSAGES: usize = 20_000;
/// Messages per publish batch (one `publish` call; one confirm wait in the raw floor).
const BATCH: usize = 500;
/// Unacked deliveries per consumer.
const PREFETCH: u16 = 100;

/// Messages per second over all batches, and from the median batch (robust to bursts of other
/// load on a shared machine).
fn rates(batches: &mut [Duration]) -> (f64, f64) {
    let total: Duration = batches.iter().sum();
    batches.sort();
    let median = batches[batches.len() / 2];
    (
        (batches.len() * BATCH) as f64 / total.as_secs_f64(),
        BATCH as f64 / median.as_secs_f64(),
    )
}

/// The properties the adapter gives a message.
fn properties(message: &RunMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("attempt".into(), AMQPValue::LongUInt(message.attempt));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.run_id.to_string().into())
        .with_headers(headers)
}

/// Publishes `BATCH` messages (`(body, properties)`), then awaits all their confirms.
async fn raw_publish_batch(channel: &Channel, queue: &str, batch: &[(Vec<u8>, BasicProperties)]) {
    let mut confirms = Vec::with_capacity(BATCH);
    for (body, properties) in batch {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    properties.clone(),
                )
                .await
                .expect("publish"),
        );
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
}

/// Receives and acks `BATCH` deliveries.
async fn raw_consume_batch(consumer: &mut lapin::Consumer) {
    for _ in 0..BATCH {
        let d = consumer.next().await.expect("stream").expect("delivery");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// Receives and acks `BATCH` deliveries through the adapter.
async fn adapter_consume_batch(consumer: &mut Box<dyn Consumer>) {
    for _ in 0..BATCH {
        let d = consumer.next().await.expect("next").expect("delivery");
        d.ack().await.unwrap();
    }
}

/// Runs `a` and `b` and records the time each took in `ta` and `tb`; `b_first` swaps the order.
async fn timed_pair(
    b_first: bool,
    a: impl Future<Output = ()>,
    b: impl Future<Output = ()>,
    ta: &mut Vec<Duration>,
    tb: &mut Vec<Duration>,
) {
    let time = async |f: std::pin::Pin<&mut dyn Future<Output = ()>>| {
        let start = Instant::now();
        f.await;
        start.elapsed()
    };
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    if b_first {
        tb.push(time(b.as_mut()).await);
        ta.push(time(a.as_mut()).await);
    } else {
        ta.push(time(a.as_mut()).await);
        tb.push(time(b.as_mut()).await);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(url) = std::env::var("AMQP_URL") else {
        eprintln!("AMQP_URL is not set: RabbitMQ benchmark not configured, nothing measured");
        return;
    };
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let queue = AmqpRunQueue::connect(&url, AmqpOptions::default())
        .await
        .expect("RabbitMQ at AMQP_URL");
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let raw_queue = format!("bench_raw_{suffix}");
    let adapter_queue = format!("bench_adapter_{suffix}");
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publisher
        .queue_declare(
            raw_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
        .declare_topology(std::slice::from_ref(&adapter_queue))
        .await
        .unwrap();

    let batch: Vec<RunMessage> = (0..BATCH)
        .map(|i| RunMessage {
            run_id: RunId::new(),
            attempt: i as u32,
        })
        .collect();
    // The floor's messages: the adapter's wire form of the same batch.
    let raw_batch: Vec<(Vec<u8>, BasicProperties)> =
        batch.iter().map(|m| (m.encode(), properties(m))).collect();
    let adapter_bytes: usize = batch.iter().map(|m| m.encode().len()).sum();
    let raw_bytes: usize = raw_batch.iter().map(|(body, _)| body.len()).sum();
    let (mut raw_pub, mut adapter_pub) = (Vec::new(), Vec::new());
    for i in 0..MESSAGES / BATCH {
        timed_pair(
            i % 2 == 1,
            raw_publish_batch(&publisher, &raw_queue, &raw_batch),
            async {
                queue
                    .publish(&adapter_queue, &batch)
                    .await
                    .expect("publish")
            },
            &mut raw_pub,
            &mut adapter_pub,
        )
        .await;
    }

    let consumer_channel = conn.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut raw_consumer = consumer_channel
        .basic_consume(
            raw_queue.as_str().into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut adapter_consumer = queue.consume(&adapter_queue, PREFETCH).await.unwrap();
    let (mut raw_con, mut adapter_con) = (Vec::new(), Vec::new());
    for i in 0..MESSAGES / BATCH {
        timed_pair(
            i % 2 == 1,
            raw_consume_batch(&mut raw_consumer),
            adapter_consume_batch(&mut adapter_consumer),
            &mut raw_con,
            &mut adapter_con,
        )
        .await;
    }

    let ((rp_all, rp), (ap_all, ap)) = (rates(&mut raw_pub), rates(&mut adapter_pub));
    let ((rc_all, rc), (ac_all, ac)) = (rates(&mut raw_con), rates(&mut adapter_con));
    println!(
        "{MESSAGES} messages each, in alternating batches of {BATCH}; prefetch {PREFETCH}; persistent"
    );
    println!(
        "message bodies: adapter {:.1} bytes on average, raw floor {:.1} bytes (same JSON run messages, same properties)",
        adapter_bytes as f64 / BATCH as f64,
        raw_bytes as f64 / BATCH as f64
    );
    println!("rates from the median batch (over all batches in brackets):");
    println!(
        "publish (confirmed)  raw lapin floor: {rp:>7.0} msg/s ({rp_all:.0})   adapter: {ap:>7.0} msg/s ({ap_all:.0})   adapter/raw: {:>5.1}% ({:.1}%)",
        100.0 * ap / rp,
        100.0 * ap_all / rp_all
    );
    println!(
        "consume + ack        raw lapin floor: {rc:>7.0} msg/s ({rc_all:.0})   adapter: {ac:>7.0} msg/s ({ac_all:.0})   adapter/raw: {:>5.1}% ({:.1}%)",
        100.0 * ac / rc,
        100.0 * ac_all / rc_all
    );

    drop(raw_consumer);
    drop(adapter_consumer);
    drop(consumer_channel);
    for q in [
        raw_queue.clone(),
        adapter_queue.clone(),
        dead_letter_queue_name(&adapter_queue),
    ] {
        let _ = publisher
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    queue.close().await;
    let _ = conn.close(200, "done".into()).await;
}
