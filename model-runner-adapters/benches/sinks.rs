//! Result sink throughput: records/s and MB/s into librdkafka's in-process mock cluster for
//! 1 KB JSON records in batches of 1,000, and Parquet rows/s into a local directory.
//!
//! Run with: `cargo bench -p model-runner-adapters --no-default-features --features kafka,parquet --bench sinks`
//!
//! Each measurement is bounded in records and in time (a few seconds), so the whole run stays
//! well under a minute on a 2-core machine.

use std::time::{Duration, Instant};

use model_runner_adapters::kafka::{KafkaConfig, KafkaSink, envelope};
use model_runner_adapters::parquet::ParquetSink;
use model_runner_core::Record;
use model_runner_core::conformance::sink::records;
use model_runner_core::ports::ResultSink;
use rdkafka::mocking::MockCluster;

const BATCH: u64 = 1_000;
/// `pad` bytes that make one envelope about 1 KB.
const PAD: usize = 800;
const TIME_BUDGET: Duration = Duration::from_secs(8);

/// Sends the prepared `batches` (stopping early if the time budget runs out); returns records,
/// JSON bytes and time. Records are generated and measured before the clock starts.
async fn drive(
    sink: &dyn ResultSink,
    topic: &str,
    batches: Vec<Vec<Record>>,
    size: impl Fn(&Record) -> usize,
) -> (u64, usize, Duration) {
    let sized: Vec<(usize, Vec<Record>)> = batches
        .into_iter()
        .map(|b| (b.iter().map(&size).sum(), b))
        .collect();
    let (mut n, mut bytes) = (0u64, 0usize);
    let start = Instant::now();
    for (batch_bytes, recs) in &sized {
        sink.send(topic, recs).await.expect("send");
        n += recs.len() as u64;
        bytes += batch_bytes;
        if start.elapsed() > TIME_BUDGET {
            break;
        }
    }
    sink.flush().await.expect("flush");
    (n, bytes, start.elapsed())
}

/// `count` batches of `size` records of about 1 KB, each batch its own run.
fn batches(count: usize, size: u64) -> Vec<Vec<Record>> {
    (0..count).map(|_| records("bench", size, PAD)).collect()
}

fn report(what: &str, (n, bytes, took): (u64, usize, Duration)) {
    let secs = took.as_secs_f64();
    println!(
        "{what}: {n} records, {:.1} MB of JSON in {secs:.2} s -> {:.0} records/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        n as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
}

#[tokio::main]
async fn main() {
    let sample = &records("bench", 1, PAD)[0];
    let record_bytes = envelope(sample).len();
    println!("record: {record_bytes} B JSON envelope, batches of {BATCH}");

    // Kafka: 3 mock brokers, 8 partitions replicated 3 times, acks=all, default sink settings.
    let cluster = MockCluster::new(3).unwrap();
    let topic = "bench-ethereum-sink";
    cluster.create_topic(topic, 8, 3).unwrap();
    let sink = KafkaSink::new(KafkaConfig::new([cluster.bootstrap_servers()])).unwrap();
    let kafka_size = |r: &Record| envelope(r).len();
    // Warm-up: connections, metadata, producer id.
    drive(&sink, topic, batches(2, BATCH), kafka_size).await;
    report(
        "kafka mock cluster (3 brokers, 8 partitions, acks=all, lz4)",
        drive(&sink, topic, batches(200, BATCH), kafka_size).await,
    );
    drop(sink);

    // Parquet to a local directory (fsync on): one file per send. MB/s counts the records' JSON.
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::local(dir.path()).unwrap();
    let json_size = |r: &Record| serde_json::to_vec(r).unwrap().len();
    drive(&sink, topic, batches(2, BATCH), json_size).await;
    report(
        "parquet local dir, runs of 1,000 rows (one file each, fsync)",
        drive(&sink, topic, batches(200, BATCH), json_size).await,
    );
    report(
        "parquet local dir, runs of 100,000 rows (one file each, fsync)",
        drive(&sink, topic, batches(3, 100 * BATCH), json_size).await,
    );
}
