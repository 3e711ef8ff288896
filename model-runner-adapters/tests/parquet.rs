//! The Parquet sink on a local directory and on S3 (moto, from `S3_ENDPOINT`): the conformance
//! suite, the file layout, replacement on rerun, the schema, and URL errors.
#![cfg(feature = "parquet")]

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::DataType;
use model_runner_adapters::parquet::{ENVELOPE_VERSION_KEY, ParquetSink, read_records};
use model_runner_core::conformance::{sink, unique};
use model_runner_core::ports::{ResultSink, SinkError};
use model_runner_core::{Chain, RunId};
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ethereum() -> Chain {
    Chain::new("ethereum").unwrap()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

#[tokio::test]
async fn conformance_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(ParquetSink::local(dir.path()).unwrap());
    let reader = sink.clone();
    sink::run_all(sink, move |topic: String| {
        let reader = reader.clone();
        async move { reader.read_topic(&topic, &ethereum()).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn one_file_per_run_replaced_on_rerun_with_a_typed_schema() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::from_url(&format!("parquet+file://{}", dir.path().display())).unwrap();
    let topic = "prod-ethereum-sink";
    let run = sink::records("erc20_transfers", 30, 16);
    let run_id = run[0].run_id;
    sink.send(topic, &run).await.unwrap();

    let expected = format!("prod/ethereum/erc20_transfers/block_range=1000-1002/{run_id}.parquet");
    assert_eq!(files(dir.path()), std::slice::from_ref(&expected));

    // Read the file with the parquet crate: every record, key by key, and the schema.
    let file = std::fs::File::open(dir.path().join(&expected)).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    assert!(
        kv.iter()
            .any(|e| e.key == ENVELOPE_VERSION_KEY && e.value.as_deref() == Some("1")),
        "{kv:?}"
    );
    let schema = builder.schema().clone();
    let types: BTreeMap<&str, &DataType> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(types["record_key"], &DataType::Utf8);
    assert_eq!(types["block_number"], &DataType::UInt64);
    assert_eq!(types["payload"], &DataType::Utf8);
    assert_eq!(types["payload_i"], &DataType::Int64);
    assert_eq!(types["payload_value"], &DataType::Utf8);
    let rows: usize = builder
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, run.len());
    let got = sink.read_topic(topic, &ethereum()).await.unwrap();
    assert_eq!(got, run, "rows keep the batch order, records unchanged");

    // A rerun of the same run (same id and blocks) replaces the file: no duplicates.
    let mut rerun = run.clone();
    for r in &mut rerun {
        r.payload["rerun"] = true.into();
    }
    sink.send(topic, &rerun).await.unwrap();
    assert_eq!(files(dir.path()), [expected]);
    assert_eq!(sink.read_topic(topic, &ethereum()).await.unwrap(), rerun);

    // A batch mixing two runs and two models gives one file per (model, run).
    let other_run = RunId::new();
    let mut mixed = sink::records("erc20_transfers", 5, 4);
    let mut second = sink::records("balances", 12, 4);
    for r in &mut second {
        r.run_id = other_run;
    }
    mixed.extend(second.clone());
    sink.send("prod-ethereum-sink", &mixed).await.unwrap();
    let all = files(dir.path());
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(
        all.contains(&format!(
            "prod/ethereum/balances/block_range=1000-1001/{other_run}.parquet"
        )),
        "{all:?}"
    );
    // Runs are separate files: the overlapping erc20 keys of the second run are a second copy.
    assert_eq!(
        sink.read_topic(topic, &ethereum()).await.unwrap().len(),
        rerun.len() + mixed.len()
    );
}

#[tokio::test]
async fn payloads_without_a_common_shape_keep_only_the_json_column() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::local(dir.path()).unwrap();
    let mut recs = sink::records("m", 4, 1);
    recs[0].payload = serde_json::json!({"i": "not a number", "n": null, "f": 1});
    recs[1].payload = serde_json::json!({"i": 1, "n": null, "f": 2.5});
    recs[2].payload = serde_json::json!([1, 2]);
    recs[3].payload = serde_json::json!({"i": 3, "n": null, "f": 3});
    sink.send("t", &recs).await.unwrap();
    assert_eq!(sink.read_topic("t", &ethereum()).await.unwrap(), recs);

    // Without the array payload, `f` unifies to Float64, `i` (mixed) and `n` (all null) stay JSON.
    let mut typed = recs.clone();
    typed.remove(2);
    let sink2 = ParquetSink::local(dir.path().join("typed")).unwrap();
    sink2.send("t", &typed).await.unwrap();
    let path = files(&dir.path().join("typed")).pop().unwrap();
    let file = std::fs::File::open(dir.path().join("typed").join(path)).unwrap();
    let schema = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert!(names.contains(&"payload_f"), "{names:?}");
    assert!(!names.contains(&"payload_i"), "{names:?}");
    assert!(!names.contains(&"payload_n"), "{names:?}");
    assert_eq!(
        schema.field_with_name("payload_f").unwrap().data_type(),
        &DataType::Float64
    );
    assert_eq!(sink2.read_topic("t", &ethereum()).await.unwrap(), typed);
}

#[tokio::test]
async fn bad_topics_and_urls_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::local(dir.path()).unwrap();
    let recs = sink::records("m", 1, 1);
    for bad in ["", "../etc", ".hidden", "a/b", "sp ace"] {
        let err = sink.send(bad, &recs).await.unwrap_err();
        assert!(
            matches!(err, SinkError::InvalidTopic { .. }),
            "{bad}: {err}"
        );
    }
    sink.send("t", &[]).await.unwrap();
    assert!(files(dir.path()).is_empty());

    for (url, needle) in [
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
        ("s3://b?aws_region", "not option=value"),
        (
            "s3://b?colour=blue&aws_secret_access_key=hunter2",
            "unknown S3 option",
        ),
        ("parquet+file://", "expected parquet+file:///DIR"),
        ("gs://b", "expected s3://bucket"),
    ] {
        let err = ParquetSink::from_url(url).unwrap_err().to_string();
        assert!(err.contains(needle), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

/// Creates `bucket` on the S3 endpoint with a plain HTTP PUT (`object_store` cannot).
async fn create_bucket(endpoint: &str, bucket: &str) {
    let url = url::Url::parse(endpoint).expect("S3_ENDPOINT is a URL");
    let host = url.host_str().expect("S3_ENDPOINT has a host");
    let port = url.port_or_known_default().unwrap();
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .unwrap_or_else(|e| panic!("S3_ENDPOINT={endpoint} is set but unreachable: {e}"));
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "creating bucket {bucket}: {}",
        response.lines().next().unwrap_or_default()
    );
}

#[tokio::test]
async fn conformance_on_s3() {
    let Ok(endpoint) = std::env::var("S3_ENDPOINT") else {
        eprintln!("S3_ENDPOINT is not configured: skipping the S3 Parquet test");
        return;
    };
    let bucket = unique("parquet-sink").replace('_', "-");
    create_bucket(&endpoint, &bucket).await;
    let url = format!(
        "s3://{bucket}/lake?aws_endpoint={endpoint}&aws_allow_http=true&aws_region=us-east-1\
         &aws_access_key_id=test&aws_secret_access_key=test"
    );
    let sink = Arc::new(ParquetSink::from_url(&url).unwrap());
    let reader = sink.clone();
    sink::run_all(sink.clone(), move |topic: String| {
        let reader = reader.clone();
        async move { reader.read_topic(&topic, &ethereum()).await.unwrap() }
    })
    .await;

    // Layout and replacement on S3 too.
    let run = sink::records("erc20_transfers", 20, 8);
    sink.send("prod-ethereum-sink", &run).await.unwrap();
    sink.send("prod-ethereum-sink", &run).await.unwrap();
    let dir = Path::from("lake/prod/ethereum");
    assert_eq!(
        read_records(sink.store().as_ref(), &dir).await.unwrap(),
        run
    );
    let listed: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(sink.store().list(Some(&dir)))
            .await
            .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].location.as_ref(),
        format!(
            "lake/prod/ethereum/erc20_transfers/block_range=1000-1001/{}.parquet",
            run[0].run_id
        )
    );
}
