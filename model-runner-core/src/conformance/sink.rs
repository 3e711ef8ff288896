//! The [`ResultSink`] conformance suite. A sink has no read side, so the caller passes a
//! `read(topic)` that returns what reached the topic (a Kafka consumer, the files, ...).

use std::collections::BTreeMap;
use std::future::Future;

use alloy_primitives::B256;

use super::unique;
use crate::chain::Chain;
use crate::model::{FieldType, ModelVersion, Record, RecordKey, RecordSchema};
use crate::ports::ResultSink;
use crate::run::RunId;

/// `n` distinct records of roughly `payload_bytes` each.
pub fn records(model: &str, n: u64, payload_bytes: usize) -> Vec<Record> {
    let run_id = RunId::new();
    (0..n)
        .map(|i| Record {
            key: RecordKey {
                model: model.to_owned(),
                chain: Chain::new("ethereum").unwrap(),
                block_number: 1000 + i / 10,
                position: i % 10,
            },
            model_version: "1".into(),
            block_hash: B256::with_last_byte((i % 251) as u8),
            run_id,
            payload: serde_json::json!({
                "i": i,
                "value": i.to_string(),
                "pad": "x".repeat(payload_bytes),
            })
            .into(),
        })
        .collect()
}

/// The schema [`records`] payloads follow, plus a nullable `note` (JSON) they leave out.
pub fn records_schema() -> RecordSchema {
    RecordSchema::new()
        .required("i", FieldType::UInt64, "record number")
        .required(
            "value",
            FieldType::BigInt,
            "the number again, as a decimal string",
        )
        .required("pad", FieldType::String, "padding")
        .nullable("note", FieldType::Json, "never set by `records`")
}

/// Runs every case against `sink`, reading topics back with `read`.
pub async fn run_all<S, R, Fut>(sink: S, read: R)
where
    S: ResultSink,
    R: Fn(String) -> Fut,
    Fut: Future<Output = Vec<Record>>,
{
    let by_key = |rs: Vec<Record>| -> BTreeMap<String, Record> {
        rs.into_iter().map(|r| (r.key.to_string(), r)).collect()
    };

    // `ping` succeeds on a healthy destination.
    sink.ping()
        .await
        .expect("ping MUST succeed on a healthy destination");

    // Every record of a confirmed send is readable, equal key by key.
    let topic = unique("conf-sink");
    let sent = records("conf", 250, 64);
    sink.send(&topic, &sent).await.expect("send");
    sink.flush().await.expect("flush");
    let got = by_key(read(topic.clone()).await);
    assert_eq!(
        got,
        by_key(sent.clone()),
        "every sent record MUST be readable, unchanged"
    );

    // Topics are isolated.
    let other = unique("conf-sink-other");
    let more = records("other", 3, 8);
    sink.send(&other, &more).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(by_key(read(other).await), by_key(more));
    assert_eq!(
        read(topic.clone()).await.len(),
        sent.len(),
        "topics MUST be isolated"
    );

    // An empty batch succeeds and writes nothing.
    let empty = unique("conf-sink-empty");
    sink.send(&empty, &[])
        .await
        .expect("an empty batch MUST succeed");
    sink.flush().await.unwrap();
    assert!(read(empty).await.is_empty());

    // Flush is idempotent.
    sink.flush().await.expect("flush twice");

    // `ping` changes nothing a reader of a topic sees.
    for _ in 0..3 {
        sink.ping().await.expect("ping MUST succeed again");
    }
    sink.flush().await.unwrap();
    assert_eq!(
        by_key(read(topic.clone()).await),
        by_key(sent.clone()),
        "ping MUST NOT write records or change what a reader sees"
    );

    // A declared schema: declaring it again succeeds, and conforming records (a nullable field
    // missing, null or set) are accepted and read back unchanged.
    let schema = records_schema();
    let model = ModelVersion {
        name: "conf-declared",
        version: "1",
    };
    sink.declare_schema(model, &schema)
        .await
        .expect("declare_schema");
    sink.declare_schema(model, &schema)
        .await
        .expect("declaring the same schema again MUST succeed");
    let declared_topic = unique("conf-sink-declared");
    let mut declared = records("conf-declared", 30, 16);
    declared[1]
        .payload
        .edit(|p| p["note"] = serde_json::Value::Null);
    declared[2]
        .payload
        .edit(|p| p["note"] = serde_json::json!({"nested": [1, "two"]}));
    sink.send(&declared_topic, &declared)
        .await
        .expect("conforming records of a declared model MUST be accepted");
    sink.flush().await.unwrap();
    assert_eq!(
        by_key(read(declared_topic).await),
        by_key(declared),
        "records of a declared model MUST be readable, unchanged"
    );

    // A large batch arrives whole.
    let big_topic = unique("conf-sink-big");
    let big = records("big", 5000, 200);
    sink.send(&big_topic, &big).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(by_key(read(big_topic).await).len(), 5000);
}
