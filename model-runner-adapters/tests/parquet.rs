//! The Parquet sink on a local directory and on S3 (moto, from `S3_ENDPOINT`): the conformance
//! suite, the file layout, replacement on rerun, the inferred and the declared schema (also
//! through the engine), and URL errors.
#![cfg(feature = "parquet")]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use model_runner_adapters::devnet::{DevnetConfig, DevnetSource};
use model_runner_adapters::parquet::{
    ENVELOPE_VERSION_KEY, ParquetSink, RECORD_SCHEMA_KEY, read_records,
};
use model_runner_core::conformance::{sink, unique};
use model_runner_core::engine::{
    BackfillRequest, CancellationToken, EngineDeps, Enqueuer, EnqueuerConfig, Worker, WorkerConfig,
    submit_backfill,
};
use model_runner_core::memory::{MemoryRunQueue, MemoryRunStore};
use model_runner_core::ports::{ResultSink, RunOutput, RunStore, SinkError};
use model_runner_core::{
    BlockRange, Chain, FieldType, Model, ModelVersion, PayloadError, Record, RecordSchema, Routing,
    RunId, RunMode, RunState,
};
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;
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

/// The model version the token tests declare.
const TOKENS_V3: ModelVersion<'static> = ModelVersion {
    name: "tokens",
    version: "3",
};

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
        r.payload.edit(|p| p["rerun"] = true.into());
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
    recs[0].payload = serde_json::json!({"i": "not a number", "n": null, "f": 1}).into();
    recs[1].payload = serde_json::json!({"i": 1, "n": null, "f": 2.5}).into();
    recs[2].payload = serde_json::json!([1, 2]).into();
    recs[3].payload = serde_json::json!({"i": 3, "n": null, "f": 3}).into();
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

/// A column as `(name, type, nullable)`.
type Column = (String, DataType, bool);

/// The one Parquet file under `dir`: its columns, its key-value metadata, and its rows as one
/// batch.
fn read_only_file(dir: &std::path::Path) -> (Vec<Column>, HashMap<String, String>, RecordBatch) {
    let all = files(dir);
    assert_eq!(all.len(), 1, "{all:?}");
    let file = std::fs::File::open(dir.join(&all[0])).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let columns = builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|kv| (kv.key, kv.value.unwrap_or_default()))
        .collect();
    let mut batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    assert_eq!(batches.len(), 1, "small test files hold one batch");
    (columns, metadata, batches.pop().unwrap())
}

/// The envelope columns every file starts with.
fn envelope() -> Vec<Column> {
    [
        ("record_key", DataType::Utf8),
        ("model", DataType::Utf8),
        ("chain", DataType::Utf8),
        ("block_number", DataType::UInt64),
        ("position", DataType::UInt64),
        ("model_version", DataType::Utf8),
        ("block_hash", DataType::Utf8),
        ("run_id", DataType::Utf8),
        ("payload", DataType::Utf8),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t, false))
    .collect()
}

/// Every field type, a nullable column some records fill, and one no record fills.
fn token_schema() -> RecordSchema {
    RecordSchema::new()
        .required("token", FieldType::Hex, "contract")
        .required("value", FieldType::BigInt, "amount, uint256")
        .required("log_index", FieldType::UInt64, "")
        .required("delta", FieldType::Int64, "")
        .required("price", FieldType::Float64, "")
        .required("ok", FieldType::Bool, "")
        .required("symbol", FieldType::String, "")
        .nullable("extra", FieldType::Json, "nested data")
        .nullable("memo", FieldType::String, "never set in these tests")
}

/// `n` records of `token_schema` for model `tokens`, version `3`; `extra` is set on even
/// records only, `memo` is missing or null everywhere.
fn token_records(n: u64) -> Vec<Record> {
    let mut records = sink::records("tokens", n, 0);
    for (i, r) in records.iter_mut().enumerate() {
        r.model_version = "3".into();
        r.payload = json!({
            "token": format!("0x{:040x}", i + 1),
            "value": format!("1157920892373161954235709850086879078532699846656405640394575840079131296399{i:02}"),
            "log_index": u64::MAX - i as u64,
            "delta": -(i as i64),
            "price": i as f64 + 0.5,
            "ok": i % 2 == 0,
            "symbol": "TKN",
        })
        .into();
        if i % 2 == 0 {
            r.payload.edit(|p| p["extra"] = json!({"path": [i, "x"]}));
        }
        if i % 3 == 0 {
            r.payload.edit(|p| p["memo"] = serde_json::Value::Null);
        }
    }
    records
}

#[tokio::test]
async fn a_declared_model_gets_exactly_its_columns_even_all_null_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::local(dir.path()).unwrap();
    // Declared through `Arc<dyn ResultSink>`, as the engine does; clones share declarations.
    let port: Arc<dyn ResultSink> = Arc::new(sink.clone());
    port.declare_schema(TOKENS_V3, &token_schema())
        .await
        .unwrap();
    assert_eq!(sink.declared_schema("tokens", "3"), Some(token_schema()));
    assert_eq!(sink.declared_schema("tokens", "4"), None);

    let recs = token_records(6);
    sink.send("prod-ethereum-sink", &recs).await.unwrap();
    let (columns, metadata, batch) = read_only_file(dir.path());

    let mut expected = envelope();
    expected.extend(
        [
            ("payload_token", DataType::Utf8, false),
            ("payload_value", DataType::Utf8, false),
            ("payload_log_index", DataType::UInt64, false),
            ("payload_delta", DataType::Int64, false),
            ("payload_price", DataType::Float64, false),
            ("payload_ok", DataType::Boolean, false),
            ("payload_symbol", DataType::Utf8, false),
            ("payload_extra", DataType::Utf8, true),
            ("payload_memo", DataType::Utf8, true),
        ]
        .map(|(n, t, null)| (n.to_owned(), t, null)),
    );
    assert_eq!(columns, expected, "declared order, types and nullability");

    assert_eq!(metadata[ENVELOPE_VERSION_KEY], "1");
    let stored: RecordSchema = serde_json::from_str(&metadata[RECORD_SCHEMA_KEY]).unwrap();
    assert_eq!(stored, token_schema());

    // The typed values are the payload's.
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    assert_eq!(col("payload_memo").null_count(), 6, "all null, still there");
    let extra = col("payload_extra");
    let extra = extra.as_string::<i32>();
    assert_eq!(extra.value(0), r#"{"path":[0,"x"]}"#);
    assert!(extra.is_null(1));
    assert_eq!(
        col("payload_value").as_string::<i32>().value(5),
        "115792089237316195423570985008687907853269984665640564039457584007913129639905"
    );
    assert_eq!(
        col("payload_token").as_string::<i32>().value(1),
        "0x0000000000000000000000000000000000000002"
    );
    assert_eq!(
        col("payload_log_index")
            .as_primitive::<UInt64Type>()
            .value(0),
        u64::MAX
    );
    assert_eq!(
        col("payload_delta").as_primitive::<Int64Type>().value(4),
        -4
    );
    assert_eq!(
        col("payload_price").as_primitive::<Float64Type>().value(2),
        2.5
    );
    assert!(!col("payload_ok").as_boolean().value(1));
    assert_eq!(
        sink.read_topic("prod-ethereum-sink", &ethereum())
            .await
            .unwrap(),
        recs,
        "records read back unchanged"
    );

    // Another, undeclared version of the same model keeps the inferred columns: no all-null
    // `memo`, no `extra` (not a scalar).
    let dir2 = tempfile::tempdir().unwrap();
    let sink2 = ParquetSink::local(dir2.path()).unwrap();
    sink2
        .declare_schema(TOKENS_V3, &token_schema())
        .await
        .unwrap();
    let mut v4 = token_records(6);
    for r in &mut v4 {
        r.model_version = "4".into();
    }
    sink2.send("prod-ethereum-sink", &v4).await.unwrap();
    let (columns, metadata, _) = read_only_file(dir2.path());
    let names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    assert!(names.contains(&"payload_value"), "{names:?}");
    assert!(!names.contains(&"payload_memo"), "{names:?}");
    assert!(!names.contains(&"payload_extra"), "{names:?}");
    assert!(
        columns.iter().skip(9).all(|c| c.2),
        "inferred columns are nullable"
    );
    assert!(!metadata.contains_key(RECORD_SCHEMA_KEY));
}

#[tokio::test]
async fn a_nonconforming_record_is_refused_naming_the_field_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::local(dir.path()).unwrap();
    sink.declare_schema(TOKENS_V3, &token_schema())
        .await
        .unwrap();
    // A valid group of an undeclared model first: the batch fails as a whole.
    let mut batch = sink::records("other", 3, 1);
    let good = token_records(4);
    batch.extend(good.iter().cloned());

    /// The field to break, how, and the start of the message.
    type Case = (&'static str, fn(&mut serde_json::Value), &'static str);
    let cases: [Case; 5] = [
        (
            "value",
            |p| p["value"] = json!(1000),
            r#"field "value": expected a string of decimal digits (bigint), e.g. "1000", found number 1000"#,
        ),
        (
            "log_index",
            |p| p["log_index"] = json!(-1),
            r#"field "log_index": expected an integer in u64 range, found number -1"#,
        ),
        (
            "symbol",
            |p| {
                p.as_object_mut().unwrap().remove("symbol");
            },
            r#"field "symbol" is missing: expected a string, and the field is not nullable"#,
        ),
        (
            "ok",
            |p| p["ok"] = serde_json::Value::Null,
            r#"field "ok" is null: expected a bool, and the field is not nullable"#,
        ),
        (
            "surprise",
            |p| p["surprise"] = json!("x"),
            r#"field "surprise" is not declared in the record schema"#,
        ),
    ];
    for (field, break_it, message) in cases {
        let mut recs = batch.clone();
        recs[5].payload.edit(break_it);
        let key = recs[5].key.to_string();
        let err = sink.send("prod-ethereum-sink", &recs).await.unwrap_err();
        match &err {
            SinkError::SchemaMismatch {
                model,
                version,
                key: k,
                mismatch,
            } => {
                assert_eq!((model.as_str(), version.as_str()), ("tokens", "3"));
                assert_eq!(k, &key);
                assert_eq!(mismatch.field(), Some(field));
            }
            other => panic!("{field}: expected SchemaMismatch, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "record {key} does not match the declared schema of tokens 3: {message}"
            )),
            "{text}"
        );
        assert!(files(dir.path()).is_empty(), "{field}: nothing written");
    }
    // A payload that is not an object.
    let mut recs = good.clone();
    recs[0].payload = json!([1]).into();
    let err = sink.send("t", &recs).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::SchemaMismatch { mismatch, .. }
            if matches!(**mismatch, PayloadError::NotAnObject { .. })),
        "{err:?}"
    );
    assert!(files(dir.path()).is_empty());

    // The same schema again is fine; a different one for the same version, or an invalid one,
    // is refused with the reason.
    sink.declare_schema(TOKENS_V3, &token_schema())
        .await
        .unwrap();
    let changed = token_schema().nullable("fee", FieldType::UInt64, "");
    let err = sink.declare_schema(TOKENS_V3, &changed).await.unwrap_err();
    assert!(matches!(err, SinkError::InvalidSchema { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "record schema of tokens 3 refused: a different schema is already declared for this version; change the model version when its schema changes"
    );
    let invalid = RecordSchema::new().required("Token", FieldType::Hex, "");
    let err = sink
        .declare_schema(
            ModelVersion {
                name: "tokens",
                version: "5",
            },
            &invalid,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            r#"record schema of tokens 5 refused: invalid record schema: field "Token""#
        ),
        "{err}"
    );
    assert_eq!(sink.declared_schema("tokens", "5"), None);

    // The conforming batch goes through.
    sink.send("prod-ethereum-sink", &batch).await.unwrap();
    assert_eq!(files(dir.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_declares_builtin_schemas_so_files_have_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::local(dir.path()).unwrap();
    let models = model_runner_core::models::builtin();
    let deps = EngineDeps {
        store: Arc::new(MemoryRunStore::new()),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(sink.clone()),
        sources: HashMap::from([(
            ethereum(),
            Arc::new(DevnetSource::new(
                ethereum(),
                DevnetConfig {
                    txs: 5,
                    logs: 10,
                    ..Default::default()
                },
            )) as _,
        )]),
        models: Arc::new(models),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let created = submit_backfill(
        &deps,
        BackfillRequest {
            model: "block_stats".into(),
            chain: ethereum(),
            range: BlockRange::new(0, 9).unwrap(),
            chunk_size: 10,
            mode: RunMode::Backfill,
            adhoc_queue: None,
            max_attempts: 1,
            idempotency_key: None,
        },
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let enqueuer =
        tokio::spawn(Enqueuer::new(deps.clone(), EnqueuerConfig::default()).run(stop.clone()));
    let worker = Worker::new(
        deps.clone(),
        WorkerConfig {
            queues: deps.routing.all_queues([&ethereum()]),
            env: "test".into(),
            ..Default::default()
        },
    );
    let worker = tokio::spawn(worker.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = deps.store.get(created.runs[0].id).await.unwrap();
        if run.state == RunState::Succeeded {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && run.state != RunState::Failed,
            "{run:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    enqueuer.await.unwrap();
    worker.await.unwrap().unwrap();

    let schema = model_runner_core::models::BlockStats
        .spec()
        .record_schema()
        .cloned()
        .unwrap();
    for model in ["block_stats", "erc20_transfers"] {
        let declared = deps.models.get(model).unwrap();
        let declared = declared.spec();
        assert_eq!(
            sink.declared_schema(model, declared.version()),
            declared.record_schema().cloned(),
            "the worker declared {model}'s schema at start"
        );
    }
    let (columns, metadata, batch) = read_only_file(dir.path());
    assert_eq!(batch.num_rows(), 10);
    let typed: Vec<Column> = columns.into_iter().skip(9).collect();
    let want: Vec<Column> = schema
        .fields()
        .iter()
        .map(|f| {
            let ty = if f.ty == FieldType::UInt64 {
                DataType::UInt64
            } else {
                DataType::Utf8
            };
            (format!("payload_{}", f.name), ty, false)
        })
        .collect();
    assert_eq!(typed, want);
    assert_eq!(
        serde_json::from_str::<RecordSchema>(&metadata[RECORD_SCHEMA_KEY]).unwrap(),
        schema
    );
}

/// What the worker sends: a run's file is named by the run's own block range (not by the blocks
/// that happened to produce records), a run that produced nothing still leaves a file of zero
/// rows (which also replaces an earlier attempt's file), and a record of another run is refused.
#[tokio::test]
async fn send_run_names_the_file_by_the_run_range_and_records_empty_runs() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ParquetSink::local(dir.path()).unwrap();
    // Records of blocks 1000-1001 from a run over 990-1009.
    let records = sink::records("m", 20, 0);
    let run = RunOutput {
        topic: "prod-ethereum-sink".into(),
        run_id: records[0].run_id,
        model: "m".into(),
        model_version: "1".into(),
        chain: ethereum(),
        range: BlockRange::new(990, 1009).unwrap(),
    };
    sink.send_run(&run, &records).await.unwrap();
    let want = format!(
        "prod/ethereum/m/block_range=990-1009/{}.parquet",
        run.run_id
    );
    assert_eq!(files(dir.path()), vec![want.clone()]);
    let back = sink
        .read_topic("prod-ethereum-sink", &ethereum())
        .await
        .unwrap();
    assert_eq!(back, records);

    // A rerun of the same run that produced nothing replaces the file with an empty one.
    sink.send_run(&run, &[]).await.unwrap();
    assert_eq!(files(dir.path()), vec![want]);
    let file = std::fs::File::open(dir.path().join(&files(dir.path())[0])).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    assert_eq!(builder.metadata().file_metadata().num_rows(), 0);
    let columns: Vec<Column> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    assert_eq!(columns, envelope());

    // A record of another run is refused, and nothing is written for it.
    let other = sink::records("m", 1, 0);
    let err = sink.send_run(&run, &other).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("was sent as part of run {}", run.run_id)),
        "{err}"
    );
    assert_eq!(files(dir.path()).len(), 1);
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
