//! `s3://bucket[/prefix]` and `parquet+file:///dir`: a [`ResultSink`] writing Parquet files to
//! object storage ([`object_store`]), laid out for a warehouse external stage.
//!
//! # Layout
//!
//! `send(topic, records)` groups the records by (model, chain, run id) and writes one file per
//! group at
//!
//! ```text
//! <prefix>/<env>/<chain>/<model>/block_range=<start>-<end>/<run id>.parquet
//! ```
//!
//! where `env` is the topic without its `-<chain>-sink` suffix (`prod-ethereum-sink` → `prod`; a
//! topic without that suffix is used whole, so topics stay isolated) and `start`/`end` are the
//! run's block range. The worker sends all records of a run attempt with
//! [`ResultSink::send_run`], so one run gives one file, named by the range the run covered, and
//! a run that produced no records still writes a file of zero rows (so a rerun that produces
//! none replaces an earlier attempt's file, and a reader can tell the run is done). A plain
//! `send`, which knows no run, groups records by (model, chain, run id) and names each file by
//! the lowest and highest block of its records. Rows keep the order of the batch.
//!
//! # Atomicity and the delivery guarantee: effectively-once per run
//!
//! A file is encoded in memory and stored with a single `put`, which is atomic on every
//! `object_store` backend used here: an S3 `PutObject` becomes visible whole or not at all, and
//! `LocalFileSystem` writes a staging file and renames it into place (with `fsync` of the file
//! and directory, so a confirmed `send` survives a power cut). A reader never sees half a file.
//! A retried run has the same run id and block range, so it writes the same path and *replaces*
//! the earlier file instead of adding a second copy: per run, the data lake holds each record
//! exactly once, with no deduplication needed. Across runs, two different runs over overlapping
//! blocks (a re-backfill) are separate files; a consumer that wants one row per record keeps, per
//! `record_key`, the row of the latest `run_id` (run ids are UUIDv7, so they sort by time).
//! Because a run's file is built in memory, a single run's output should stay well below the
//! worker's memory (hundreds of MB is fine).
//!
//! # Schema
//!
//! Every file starts with the envelope columns (the same fields as the Kafka sink's JSON, version
//! [`ENVELOPE_VERSION`], also stored in the file's key-value metadata under
//! `model_runner.envelope_version`):
//!
//! | column | type | |
//! |---|---|---|
//! | `record_key` | Utf8 | `model:chain:block:position`, the deduplication key |
//! | `model`, `chain` | Utf8 | |
//! | `block_number`, `position` | UInt64 | |
//! | `model_version` | Utf8 | |
//! | `block_hash` | Utf8 | `0x`-hex, as in the JSON envelope |
//! | `run_id` | Utf8 | UUID |
//! | `payload` | Utf8 | the payload as JSON text, exact (the read side parses this) |
//!
//! followed by typed `payload_<field>` columns, so a warehouse can load the rows without
//! parsing JSON.
//!
//! ## Declared models: columns fixed by the record schema
//!
//! For a `(model, model_version)` whose [`RecordSchema`] was declared
//! ([`ResultSink::declare_schema`]; the worker declares every registered model's schema when it
//! starts), the typed columns are exactly one `payload_<field>` per declared field, in declared
//! order, nullable as declared, present even when every value of a run is null: every file of
//! the model version has the same columns, so one warehouse table loads them all. The schema
//! itself is stored as JSON in the file's key-value metadata under [`RECORD_SCHEMA_KEY`].
//!
//! | [`FieldType`] | Arrow type | |
//! |---|---|---|
//! | `bool` | Boolean | |
//! | `int64` | Int64 | |
//! | `uint64` | UInt64 | |
//! | `float64` | Float64 | |
//! | `string` | Utf8 | |
//! | `bigint` | Utf8 | decimal digits, exactly as emitted |
//! | `hex` | Utf8 | `0x`-hex, exactly as emitted |
//! | `json` | Utf8 | JSON text |
//!
//! `bigint` stays a decimal string because no warehouse decimal holds a `uint256`: its maximum
//! has 78 digits, Arrow's Decimal256 and BigQuery's BIGNUMERIC hold 76, Snowflake's NUMBER 38.
//! A string loads everywhere without loss (ethereum-etl's public BigQuery tables keep `value` as
//! STRING too); cast it in the warehouse where the values are known to fit.
//!
//! A record of a declared version that does not conform (a missing non-nullable field, a wrong
//! type, an undeclared field) fails the whole `send` with [`SinkError::SchemaMismatch`] naming
//! the record and field, before anything of the batch is written; nothing is dropped or coerced.
//! Declaring a different schema for an already declared `(model, version)` is refused with
//! [`SinkError::InvalidSchema`].
//!
//! ## Undeclared models: columns inferred per file
//!
//! When every payload of a file is a JSON object and a top-level field holds the same scalar type
//! in all of them (nulls allowed), it gets a typed, nullable `payload_<field>` column (Boolean,
//! Int64, Float64 or Utf8). These columns are inferred per file: a field that is null in every
//! record of a run is missing from that run's file, so declare a schema for stable columns.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use arrow_array::builder::{StringBuilder, UInt64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use model_runner_core::ports::{ResultSink, RunOutput, SinkError};
use model_runner_core::{Chain, FieldType, ModelVersion, Record, RecordKey, RecordSchema, RunId};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use async_trait::async_trait;

const ADAPTER: &str = "parquet";

/// Version of the envelope the columns follow (the Kafka sink's JSON envelope version).
pub const ENVELOPE_VERSION: u32 = 1;

/// Key of the envelope version in each file's key-value metadata.
pub const ENVELOPE_VERSION_KEY: &str = "model_runner.envelope_version";

/// How long [`ResultSink::ping`] waits for the object store to list the prefix.
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Key of the declared record schema (JSON) in the key-value metadata of a declared model's
/// files.
pub const RECORD_SCHEMA_KEY: &str = "model_runner.record_schema";

/// At most this many inferred payload columns per file.
const MAX_TYPED_COLUMNS: usize = 64;

/// The envelope columns, in file order.
const ENVELOPE_COLUMNS: [&str; 9] = [
    "record_key",
    "model",
    "chain",
    "block_number",
    "position",
    "model_version",
    "block_hash",
    "run_id",
    "payload",
];

fn backend(context: impl fmt::Display, e: impl fmt::Display) -> SinkError {
    SinkError::Backend {
        adapter: ADAPTER,
        source: format!("{context}: {e}").into(),
    }
}

fn storage(context: impl fmt::Display, e: object_store::Error) -> SinkError {
    match e {
        // Network and server trouble: the attempt is retried.
        object_store::Error::Generic { .. } => SinkError::Unavailable {
            adapter: ADAPTER,
            message: format!("{context}: {e}"),
        },
        e => backend(context, e),
    }
}

/// Checks a topic can be a path segment.
fn check_topic(topic: &str) -> Result<(), SinkError> {
    model_runner_core::ports::check_topic(topic, "Parquet", 200)
}

/// The `env` directory of `topic` for records of `chain`: the topic without `-<chain>-sink`.
pub fn env_of<'t>(topic: &'t str, chain: &Chain) -> &'t str {
    topic
        .strip_suffix("-sink")
        .and_then(|t| t.strip_suffix(chain.as_str()))
        .and_then(|t| t.strip_suffix('-'))
        .filter(|env| !env.is_empty())
        .unwrap_or(topic)
}

use model_runner_core::redact::redact_url;

/// A declared record schema and its JSON text (the file metadata).
#[derive(Debug)]
struct Declared {
    schema: RecordSchema,
    json: String,
}

/// Declared schemas by (model, model version).
type Declarations = HashMap<(String, String), Arc<Declared>>;

/// The Parquet sink. See the module docs for the layout, schema and guarantees. Clones share
/// their declared schemas.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    declared: Arc<RwLock<Declarations>>,
}

impl ParquetSink {
    /// A sink writing under `prefix` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        Self {
            store,
            prefix,
            declared: Arc::default(),
        }
    }

    /// The schema declared for `model` at `version`, if any.
    pub fn declared_schema(&self, model: &str, version: &str) -> Option<RecordSchema> {
        self.declaration(model, version).map(|d| d.schema.clone())
    }

    fn declaration(&self, model: &str, version: &str) -> Option<Arc<Declared>> {
        self.declared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(model.to_owned(), version.to_owned()))
            .cloned()
    }

    /// A sink writing into the local directory `dir` (created if missing), with fsync.
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Self, SinkError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("creating {}", dir.display()), e))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| backend(format!("opening {}", dir.display()), e))?
            .with_fsync(true);
        Ok(Self::new(Arc::new(store), Path::default()))
    }

    /// From `parquet+file:///dir` or `s3://bucket[/prefix][?option=value&...]`.
    ///
    /// S3 options are `object_store`'s `AmazonS3ConfigKey`s (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, `aws_access_key_id`, ...); the process's `AWS_*` variables are read
    /// first and the query overrides them. Errors never show a secret.
    pub fn from_url(url: &str) -> Result<Self, SinkError> {
        let shown = redact_url(url);
        let invalid = |reason: String| SinkError::InvalidTopic {
            topic: shown.clone(),
            reason,
        };
        if let Some(dir) = url.strip_prefix("parquet+file://") {
            if dir.is_empty() || dir.contains('?') {
                return Err(invalid(
                    "expected parquet+file:///DIR (a directory, no query)".into(),
                ));
            }
            return Self::local(dir);
        }
        let rest = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("parquet+s3://"))
            .ok_or_else(|| {
                invalid("expected s3://bucket[/prefix] or parquet+file:///DIR".into())
            })?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = location.split('/').next().unwrap_or_default();
        if bucket.is_empty() {
            return Err(invalid("no bucket: expected s3://bucket[/prefix]".into()));
        }
        let parsed = url::Url::parse(&format!("s3://{location}"))
            .map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        let mut options: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        // The option names are object_store's (an open set): parsed by serde_urlencoded as
        // pairs, each name checked against `AmazonS3ConfigKey`.
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| invalid(format!("bad query: {e}")))?;
        for (k, v) in pairs {
            if v.is_empty() {
                return Err(invalid(format!(
                    "query part {:?} is not option=value",
                    k.chars().take(64).collect::<String>()
                )));
            }
            if object_store::aws::AmazonS3ConfigKey::from_str(&k.to_ascii_lowercase()).is_err() {
                return Err(invalid(format!("unknown S3 option {k:?}")));
            }
            options.push((k, v));
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| invalid(format!("configuring S3: {e}")))?;
        Ok(Self::new(Arc::from(store), prefix))
    }

    /// The store written to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where the files of `topic` for `chain` go: `<prefix>/<env>/<chain>`.
    pub fn topic_dir(&self, topic: &str, chain: &Chain) -> Path {
        self.prefix
            .clone()
            .join(env_of(topic, chain))
            .join(chain.as_str())
    }

    /// The file of one run's records.
    pub fn file_path(
        &self,
        topic: &str,
        chain: &Chain,
        model: &str,
        blocks: (u64, u64),
        run_id: RunId,
    ) -> Path {
        self.topic_dir(topic, chain)
            .join(model)
            .join(format!("block_range={}-{}", blocks.0, blocks.1).as_str())
            .join(format!("{run_id}.parquet").as_str())
    }

    /// Encodes one run's records, checking them against the declared schema of
    /// `(model, version)` if there is one.
    fn encode_run(
        &self,
        model: &str,
        version: &str,
        group: &[&Record],
    ) -> Result<Vec<u8>, SinkError> {
        let declared = self.declaration(model, version);
        if let Some(d) = &declared {
            check_declared(group, version, d)?;
        }
        encode(group, declared.as_deref())
    }

    /// Stores encoded files, each with one atomic `put`.
    async fn put_all(&self, files: Vec<(Path, Vec<u8>)>) -> Result<(), SinkError> {
        for (path, bytes) in files {
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|e| storage(format!("writing {path}"), e))?;
        }
        Ok(())
    }

    /// Every record in the files of `topic` for `chain`.
    pub async fn read_topic(&self, topic: &str, chain: &Chain) -> Result<Vec<Record>, SinkError> {
        read_records(self.store.as_ref(), &self.topic_dir(topic, chain)).await
    }
}

#[async_trait]
impl ResultSink for ParquetSink {
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
        check_topic(topic)?;
        // One group per (model, chain, run), in order of first appearance.
        let mut index: HashMap<(&str, &Chain, RunId), usize> = HashMap::new();
        let mut groups: Vec<Vec<&Record>> = Vec::new();
        for r in records {
            let slot = *index
                .entry((r.key.model.as_str(), &r.key.chain, r.run_id))
                .or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
            groups[slot].push(r);
        }
        // Encode every file before writing any, so a nonconforming record fails the batch
        // before anything of it is stored.
        let mut files = Vec::with_capacity(groups.len());
        for group in groups {
            let first = group[0];
            let start = group.iter().map(|r| r.key.block_number).min().unwrap_or(0);
            let end = group.iter().map(|r| r.key.block_number).max().unwrap_or(0);
            let path = self.file_path(
                topic,
                &first.key.chain,
                &first.key.model,
                (start, end),
                first.run_id,
            );
            files.push((
                path,
                self.encode_run(&first.key.model, &first.model_version, &group)?,
            ));
        }
        self.put_all(files).await
    }

    /// One file for the run, named by the run's own block range, written even when the run
    /// produced no records (a file of zero rows says the run is done and replaces an earlier
    /// attempt's file).
    async fn send_run(&self, run: &RunOutput, records: &[Record]) -> Result<(), SinkError> {
        check_topic(&run.topic)?;
        if let Some(stray) = records.iter().find(|r| {
            r.run_id != run.run_id || r.key.model != run.model || r.key.chain != run.chain
        }) {
            return Err(SinkError::Backend {
                adapter: ADAPTER,
                source: format!(
                    "record {} of run {} was sent as part of run {} ({} on {})",
                    stray.key, stray.run_id, run.run_id, run.model, run.chain
                )
                .into(),
            });
        }
        let group: Vec<&Record> = records.iter().collect();
        let path = self.file_path(
            &run.topic,
            &run.chain,
            &run.model,
            (run.range.start(), run.range.end()),
            run.run_id,
        );
        let bytes = self.encode_run(&run.model, &run.model_version, &group)?;
        self.put_all(vec![(path, bytes)]).await
    }

    /// Every `send` is durable when it returns; nothing is buffered.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Lists under the prefix (the first page only: one request on S3) within
    /// [`PING_TIMEOUT`]: the object store answered, with the credentials given.
    async fn ping(&self) -> Result<(), SinkError> {
        let mut listing = self.store.list(Some(&self.prefix));
        let first = listing.try_next();
        let unavailable = |why: String| SinkError::Unavailable {
            adapter: ADAPTER,
            message: format!(
                "ping: listing {} under {:?}: {why}",
                self.store,
                self.prefix.as_ref()
            ),
        };
        match tokio::time::timeout(PING_TIMEOUT, first).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!("no answer within {PING_TIMEOUT:?}"))),
        }
    }

    /// Fixes the typed columns of `model` at `version` (see the module docs); refuses an
    /// invalid schema, or one different from the schema already declared for that version.
    async fn declare_schema(
        &self,
        model: ModelVersion<'_>,
        schema: &RecordSchema,
    ) -> Result<(), SinkError> {
        let ModelVersion { name, version } = model;
        let refuse = |reason: String| SinkError::InvalidSchema {
            model: name.to_owned(),
            version: version.to_owned(),
            reason,
        };
        schema.validate().map_err(|e| refuse(e.to_string()))?;
        let mut declared = self.declared.write().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_owned(), version.to_owned());
        match declared.get(&key) {
            Some(d) if d.schema == *schema => Ok(()),
            Some(_) => Err(refuse(
                "a different schema is already declared for this version; change the model \
                 version when its schema changes"
                    .into(),
            )),
            None => {
                let json = serde_json::to_string(schema)
                    .map_err(|e| refuse(format!("encoding it as JSON: {e}")))?;
                declared.insert(
                    key,
                    Arc::new(Declared {
                        schema: schema.clone(),
                        json,
                    }),
                );
                Ok(())
            }
        }
    }
}

/// Checks one group (one run) of a declared model version: one version, conforming payloads.
fn check_declared(
    records: &[&Record],
    version: &str,
    declared: &Declared,
) -> Result<(), SinkError> {
    for r in records {
        if r.model_version != *version {
            return Err(backend(
                format!("records of run {}", r.run_id),
                format!(
                    "model versions {version} and {} in one run",
                    r.model_version
                ),
            ));
        }
        declared
            .schema
            .check_payload(&r.payload)
            .map_err(|mismatch| SinkError::SchemaMismatch {
                model: r.key.model.clone(),
                version: r.model_version.clone(),
                key: r.key.to_string(),
                mismatch: Box::new(mismatch),
            })?;
    }
    Ok(())
}

/// The Arrow type of a declared field (see the module docs' table).
fn declared_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::Bool => DataType::Boolean,
        FieldType::Int64 => DataType::Int64,
        FieldType::UInt64 => DataType::UInt64,
        FieldType::Float64 => DataType::Float64,
        FieldType::String | FieldType::BigInt | FieldType::Hex | FieldType::Json => DataType::Utf8,
    }
}

/// The column of a declared field; the payloads were checked, so a value is of its type or
/// null (and null only where the field is nullable).
fn declared_column(records: &[&Record], name: &str, ty: FieldType) -> Result<ArrayRef, SinkError> {
    let values = records
        .iter()
        .map(|r| r.payload.get(name).filter(|v| !v.is_null()));
    Ok(match ty {
        FieldType::Bool => Arc::new(
            values
                .map(|v| v.and_then(Value::as_bool))
                .collect::<arrow_array::BooleanArray>(),
        ),
        FieldType::Int64 => Arc::new(
            values
                .map(|v| v.and_then(Value::as_i64))
                .collect::<arrow_array::Int64Array>(),
        ),
        FieldType::UInt64 => Arc::new(
            values
                .map(|v| v.and_then(Value::as_u64))
                .collect::<arrow_array::UInt64Array>(),
        ),
        FieldType::Float64 => Arc::new(
            values
                .map(|v| v.and_then(Value::as_f64))
                .collect::<arrow_array::Float64Array>(),
        ),
        FieldType::String | FieldType::BigInt | FieldType::Hex => Arc::new(
            values
                .map(|v| v.and_then(Value::as_str))
                .collect::<arrow_array::StringArray>(),
        ),
        FieldType::Json => {
            let mut column = StringBuilder::with_capacity(records.len(), records.len() * 32);
            for v in values {
                match v {
                    Some(v) => column.append_value(
                        serde_json::to_string(v)
                            .map_err(|e| backend(format!("encoding field {name}"), e))?,
                    ),
                    None => column.append_null(),
                }
            }
            Arc::new(column.finish())
        }
    })
}

/// A scalar JSON type that gets a typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Bool,
    Int,
    Float,
    Str,
}

impl Scalar {
    fn of(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(_) => Some(Self::Bool),
            Value::Number(n) if n.is_i64() => Some(Self::Int),
            Value::Number(_) => Some(Self::Float),
            Value::String(_) => Some(Self::Str),
            _ => None,
        }
    }

    /// The type both fit in, if any (integers widen to floats).
    fn unify(self, other: Self) -> Option<Self> {
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Self::Int, Self::Float) | (Self::Float, Self::Int) => Some(Self::Float),
            _ => None,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int => DataType::Int64,
            Self::Float => DataType::Float64,
            Self::Str => DataType::Utf8,
        }
    }
}

/// Top-level payload fields with one scalar type in every record (nulls allowed, never all null).
fn typed_fields(records: &[&Record]) -> Vec<(String, Scalar)> {
    let Some(Value::Object(first)) = records.first().map(|r| r.payload.value()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    'field: for name in first.keys().take(MAX_TYPED_COLUMNS) {
        if ENVELOPE_COLUMNS.contains(&format!("payload_{name}").as_str()) {
            continue;
        }
        let mut ty: Option<Scalar> = None;
        for r in records {
            let Value::Object(obj) = r.payload.value() else {
                return Vec::new();
            };
            match obj.get(name) {
                None => continue 'field,
                Some(Value::Null) => {}
                Some(v) => {
                    let Some(t) = Scalar::of(v) else {
                        continue 'field;
                    };
                    ty = match ty {
                        None => Some(t),
                        Some(prev) => match prev.unify(t) {
                            Some(u) => Some(u),
                            None => continue 'field,
                        },
                    };
                }
            }
        }
        if let Some(t) = ty {
            out.push((name.clone(), t));
        }
    }
    out
}

fn typed_column(records: &[&Record], name: &str, ty: Scalar) -> ArrayRef {
    let values = records.iter().map(|r| r.payload.get(name));
    match ty {
        Scalar::Bool => Arc::new(
            values
                .map(|v| v.and_then(Value::as_bool))
                .collect::<arrow_array::BooleanArray>(),
        ),
        Scalar::Int => Arc::new(
            values
                .map(|v| v.and_then(Value::as_i64))
                .collect::<arrow_array::Int64Array>(),
        ),
        Scalar::Float => Arc::new(
            values
                .map(|v| v.and_then(Value::as_f64))
                .collect::<arrow_array::Float64Array>(),
        ),
        Scalar::Str => Arc::new(
            values
                .map(|v| v.and_then(Value::as_str))
                .collect::<arrow_array::StringArray>(),
        ),
    }
}

/// The Parquet bytes of one group of records (one run): typed columns from the declared schema
/// (`declared`, whose payloads were checked) or inferred from the payloads.
fn encode(records: &[&Record], declared: Option<&Declared>) -> Result<Vec<u8>, SinkError> {
    let n = records.len();
    let mut record_key = StringBuilder::with_capacity(n, n * 48);
    let mut model = StringBuilder::with_capacity(n, n * 16);
    let mut chain = StringBuilder::with_capacity(n, n * 8);
    let mut block_number = UInt64Builder::with_capacity(n);
    let mut position = UInt64Builder::with_capacity(n);
    let mut model_version = StringBuilder::with_capacity(n, n * 4);
    let mut block_hash = StringBuilder::with_capacity(n, n * 66);
    let mut run_id = StringBuilder::with_capacity(n, n * 36);
    let mut payload = StringBuilder::with_capacity(n, n * 128);
    for r in records {
        record_key.append_value(r.key.to_string());
        model.append_value(&r.key.model);
        chain.append_value(r.key.chain.as_str());
        block_number.append_value(r.key.block_number);
        position.append_value(r.key.position);
        model_version.append_value(&r.model_version);
        block_hash.append_value(r.block_hash.to_string());
        run_id.append_value(r.run_id.to_string());
        payload.append_value(r.payload.as_json());
    }
    let mut fields = vec![
        Field::new("record_key", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
        Field::new("chain", DataType::Utf8, false),
        Field::new("block_number", DataType::UInt64, false),
        Field::new("position", DataType::UInt64, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("block_hash", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(record_key.finish()),
        Arc::new(model.finish()),
        Arc::new(chain.finish()),
        Arc::new(block_number.finish()),
        Arc::new(position.finish()),
        Arc::new(model_version.finish()),
        Arc::new(block_hash.finish()),
        Arc::new(run_id.finish()),
        Arc::new(payload.finish()),
    ];
    let mut metadata = vec![KeyValue::new(
        ENVELOPE_VERSION_KEY.to_owned(),
        ENVELOPE_VERSION.to_string(),
    )];
    match declared {
        Some(d) => {
            for f in d.schema.fields() {
                fields.push(Field::new(
                    format!("payload_{}", f.name),
                    declared_type(f.ty),
                    f.nullable,
                ));
                columns.push(declared_column(records, &f.name, f.ty)?);
            }
            metadata.push(KeyValue::new(RECORD_SCHEMA_KEY.to_owned(), d.json.clone()));
        }
        None => {
            for (name, ty) in typed_fields(records) {
                fields.push(Field::new(format!("payload_{name}"), ty.data_type(), true));
                columns.push(typed_column(records, &name, ty));
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| backend("building the record batch", e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(metadata))
        .build();
    let mut out = Vec::with_capacity(n * 128);
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| backend("starting the Parquet file", e))?;
    writer
        .write(&batch)
        .map_err(|e| backend("writing the Parquet file", e))?;
    writer
        .close()
        .map_err(|e| backend("closing the Parquet file", e))?;
    Ok(out)
}

/// Decodes the records of one Parquet file written by [`ParquetSink`].
pub fn decode(bytes: bytes::Bytes) -> Result<Vec<Record>, SinkError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| backend("opening a Parquet file", e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| backend("reading a Parquet file", e))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| backend("reading a Parquet file", format!("no column {name}")))
        };
        let string = |name: &str| -> Result<arrow_array::StringArray, SinkError> {
            Ok(column(name)?
                .as_string_opt::<i32>()
                .ok_or_else(|| backend("reading a Parquet file", format!("{name} is not Utf8")))?
                .clone())
        };
        let number = |name: &str| -> Result<arrow_array::UInt64Array, SinkError> {
            Ok(column(name)?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| backend("reading a Parquet file", format!("{name} is not UInt64")))?
                .clone())
        };
        let (model, chain, block_number, position) = (
            string("model")?,
            string("chain")?,
            number("block_number")?,
            number("position")?,
        );
        let (model_version, block_hash, run_id, payload) = (
            string("model_version")?,
            string("block_hash")?,
            string("run_id")?,
            string("payload")?,
        );
        let bad =
            |what: &str, e: &dyn fmt::Display| backend("decoding a row", format!("{what}: {e}"));
        for i in 0..batch.num_rows() {
            if payload.is_null(i) {
                return Err(bad("payload", &"null"));
            }
            out.push(Record {
                key: RecordKey {
                    model: model.value(i).to_owned(),
                    chain: Chain::new(chain.value(i)).map_err(|e| bad("chain", &e))?,
                    block_number: block_number.value(i),
                    position: position.value(i),
                },
                model_version: model_version.value(i).to_owned(),
                block_hash: block_hash
                    .value(i)
                    .parse()
                    .map_err(|e| bad("block_hash", &e))?,
                run_id: run_id.value(i).parse().map_err(|e| bad("run_id", &e))?,
                payload: serde_json::from_str(payload.value(i)).map_err(|e| bad("payload", &e))?,
            });
        }
    }
    Ok(out)
}

/// Every record of every `.parquet` file under `dir`, files in path order.
pub async fn read_records(store: &dyn ObjectStore, dir: &Path) -> Result<Vec<Record>, SinkError> {
    let mut files: Vec<Path> = store
        .list(Some(dir))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| storage(format!("listing {dir}"), e))?;
    files.retain(|p| p.extension() == Some("parquet"));
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let bytes = store
            .get(&path)
            .await
            .map_err(|e| storage(format!("reading {path}"), e))?
            .bytes()
            .await
            .map_err(|e| storage(format!("reading {path}"), e))?;
        out.extend(decode(bytes)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ping_lists_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::local(dir.path().join("lake")).unwrap();
        sink.ping().await.unwrap();
        // An S3 endpoint nobody listens on: unavailable, and no credential in the error.
        let sink = ParquetSink::from_url(
            "s3://bucket/prefix?aws_endpoint=http://127.0.0.1:1&aws_allow_http=true\
             &aws_region=us-east-1&aws_access_key_id=AKIA&aws_secret_access_key=hunter2",
        )
        .unwrap();
        let err = sink.ping().await.unwrap_err();
        assert!(matches!(err, SinkError::Unavailable { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn env_is_the_topic_without_its_chain_suffix() {
        let eth = Chain::new("ethereum").unwrap();
        let sepolia = Chain::new("base-sepolia").unwrap();
        assert_eq!(env_of("prod-ethereum-sink", &eth), "prod");
        assert_eq!(env_of("staging-eu-ethereum-sink", &eth), "staging-eu");
        assert_eq!(env_of("prod-base-sepolia-sink", &sepolia), "prod");
        // Not of the form <env>-<chain>-sink for this chain: the whole topic.
        assert_eq!(env_of("prod-matic-sink", &eth), "prod-matic-sink");
        assert_eq!(env_of("ethereum-sink", &eth), "ethereum-sink");
        assert_eq!(env_of("-ethereum-sink", &eth), "-ethereum-sink");
        assert_eq!(env_of("results", &eth), "results");
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("s3://b/p?aws_region=x&aws_secret_access_key=hunter2&aws_session_token=t"),
            "s3://b/p?aws_region=x&aws_secret_access_key=***&aws_session_token=***"
        );
        assert_eq!(redact_url("parquet+file:///d"), "parquet+file:///d");
    }
}
