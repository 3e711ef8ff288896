//! The Kafka sink against librdkafka's in-process mock cluster: the conformance suite, read-back
//! of keys, headers and partitions, and produce errors injected into the cluster.
#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use model_runner_adapters::kafka::{ENVELOPE_VERSION, KafkaConfig, KafkaSink};
use model_runner_core::Record;
use model_runner_core::conformance::{sink, unique};
use model_runner_core::ports::{ResultSink, SinkError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const DEADLINE: Duration = Duration::from_secs(60);

/// One consumed message.
#[derive(Debug)]
struct Consumed {
    key: String,
    partition: i32,
    headers: BTreeMap<String, String>,
    record: Record,
}

/// Reads every message of `topic` from the beginning to the high watermarks found at the start.
fn consume(bootstrap: &str, topic: &str) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout).unwrap();
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
            remaining.insert(p.id(), high);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while !remaining.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{topic}: partitions not read to their end in time: {remaining:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Consumed {
            key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            partition: m.partition(),
            headers,
            record: serde_json::from_slice(m.payload().unwrap()).unwrap(),
        });
        if remaining
            .get(&m.partition())
            .is_some_and(|high| m.offset() + 1 >= *high)
        {
            remaining.remove(&m.partition());
        }
    }
    out
}

async fn consume_async(bootstrap: String, topic: String) -> Vec<Consumed> {
    tokio::task::spawn_blocking(move || consume(&bootstrap, &topic))
        .await
        .unwrap()
}

fn mock() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let cluster = MockCluster::new(3).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    (cluster, bootstrap)
}

#[tokio::test]
async fn conformance_on_the_mock_cluster() {
    let (_cluster, bootstrap) = mock();
    let sink = KafkaSink::from_url(&format!("kafka://{bootstrap}")).unwrap();
    let reader = bootstrap.clone();
    sink::run_all(sink, move |topic: String| {
        let bootstrap = reader.clone();
        async move {
            consume_async(bootstrap, topic)
                .await
                .into_iter()
                .map(|c| c.record)
                .collect()
        }
    })
    .await;
}

#[tokio::test]
async fn keys_headers_and_partitions() {
    let (cluster, bootstrap) = mock();
    let topic = unique("prod-ethereum-sink");
    cluster.create_topic(&topic, 8, 3).unwrap();
    let sink = KafkaSink::new(KafkaConfig::new([bootstrap.clone()])).unwrap();
    let sent = sink::records("erc20_transfers", 400, 32);
    sink.send(&topic, &sent).await.unwrap();
    // A rerun of the same records: same keys, so the same partitions.
    sink.send(&topic, &sent).await.unwrap();
    sink.flush().await.unwrap();

    let got = consume_async(bootstrap, topic).await;
    assert_eq!(got.len(), 2 * sent.len(), "at-least-once: both copies");
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    let mut partitions_used = std::collections::HashSet::new();
    for c in &got {
        assert_eq!(
            c.key,
            c.record.key.to_string(),
            "message key is the record key"
        );
        let first = *partition_of.entry(&c.key).or_insert(c.partition);
        assert_eq!(
            first, c.partition,
            "{}: a key MUST stay on one partition",
            c.key
        );
        partitions_used.insert(c.partition);
        let r = &c.record;
        let expected: BTreeMap<String, String> = [
            ("envelope_version", ENVELOPE_VERSION.to_string()),
            ("model", r.key.model.clone()),
            ("model_version", r.model_version.clone()),
            ("run_id", r.run_id.to_string()),
            (
                "block_hash",
                serde_json::to_value(r.block_hash)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(c.headers, expected);
    }
    assert!(partitions_used.len() > 1, "keys spread over partitions");
    // Key by key, what was read is what was sent.
    let by_key = |rs: Vec<Record>| -> BTreeMap<String, Record> {
        rs.into_iter().map(|r| (r.key.to_string(), r)).collect()
    };
    assert_eq!(
        by_key(got.into_iter().map(|c| c.record).collect()),
        by_key(sent)
    );
}

/// Produce requests fail for a while: librdkafka retries what it can; what it cannot deliver in
/// `delivery.timeout.ms` makes `send` fail, and sending the batch again (as the engine's retry
/// of the run does) leaves no record missing.
#[tokio::test]
async fn produce_errors_are_retried_or_reported_and_nothing_is_lost() {
    let (cluster, bootstrap) = mock();
    let topic = unique("prod-ethereum-sink");
    cluster.create_topic(&topic, 4, 3).unwrap();
    let sink = KafkaSink::new(
        KafkaConfig::new([bootstrap.clone()])
            .set("delivery.timeout.ms", "2000")
            .set("retry.backoff.ms", "10")
            .set("retry.backoff.max.ms", "50"),
    )
    .unwrap();
    let retriable = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;

    // A short outage: librdkafka's idempotent retries ride it out, send succeeds.
    let first = sink::records("fault_a", 300, 64);
    cluster.request_errors(RDKafkaApiKey::Produce, &[retriable; 5]);
    sink.send(&topic, &first)
        .await
        .expect("a short outage is retried");

    // A long outage: every produce request fails until the delivery timeout; send MUST fail.
    let second = sink::records("fault_b", 300, 64);
    cluster.request_errors(RDKafkaApiKey::Produce, &vec![retriable; 100_000]);
    let err = sink.send(&topic, &second).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Delivery { failed, total: 300, .. } if failed > 0),
        "{err}"
    );

    // The cluster recovers and the batch is sent again, as a retried run would.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let mut attempts = 0;
    while let Err(e) = sink.send(&topic, &second).await {
        attempts += 1;
        assert!(attempts < 5, "resend after recovery keeps failing: {e}");
    }
    sink.flush().await.unwrap();

    let got: BTreeMap<String, Record> = consume_async(bootstrap, topic)
        .await
        .into_iter()
        .map(|c| (c.key, c.record))
        .collect();
    for r in first.iter().chain(&second) {
        assert_eq!(got.get(&r.key.to_string()), Some(r), "{} missing", r.key);
    }
    assert_eq!(got.len(), first.len() + second.len());
}

/// The readiness probe asks the cluster for its metadata: OK on the mock cluster, an error
/// (within a few seconds) when no broker answers, although `flush` succeeds there.
#[tokio::test]
async fn ping_reaches_the_cluster_or_fails() {
    let (_cluster, bootstrap) = mock();
    let sink = KafkaSink::from_url(&format!("kafka://{bootstrap}")).unwrap();
    sink.ping().await.expect("the mock cluster answers");

    let down = KafkaSink::from_url("kafka://127.0.0.1:1?sasl.password=hunter2").unwrap();
    down.flush()
        .await
        .expect("an idle producer flushes without a broker");
    let started = Instant::now();
    let err = down.ping().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, SinkError::Unavailable { .. }), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
