//! Models, the records they produce, and the registry that names them.
//!
//! A [`Model`] is user code: given the blocks of a run it returns [`Record`]s. The worker calls
//! it once per run with every block of the run's range, in order, and sends what it returns to
//! the chain's sink topic. Record keys are deterministic (model, chain, block, position), so a
//! rerun of the same blocks produces the same keys and a consumer can deduplicate.
//!
//! A model may declare the shape of its payloads as a [`RecordSchema`]; the worker then checks
//! every payload before sending it, and typed sinks derive their columns from it.

mod payload;
mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use alloy_primitives::B256;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::chain::{BlockRange, Chain, ModelKind};
use crate::data::Block;
use crate::ports::{BlockSource, SourceError};
use crate::run::RunId;

pub use payload::{Payload, PayloadWriter};
pub use schema::{
    FieldSpec, FieldType, MAX_FIELD_NAME_LEN, PayloadError, RecordSchema, SchemaError,
};

/// A model at one version, e.g. `erc20_transfers` at `1.0.0`: what a record schema is declared
/// for ([`crate::ports::ResultSink::declare_schema`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelVersion<'a> {
    /// The model's name ([`ModelSpec::name`]).
    pub name: &'a str,
    /// Its version ([`ModelSpec::version`]).
    pub version: &'a str,
}

/// The deterministic identity of a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordKey {
    /// Model name.
    pub model: String,
    /// Chain.
    pub chain: Chain,
    /// Block the record is about.
    pub block_number: u64,
    /// Position inside the block (e.g. log index); unique per model and block.
    pub position: u64,
}

impl fmt::Display for RecordKey {
    /// `model:chain:block:position`, the message key in sinks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.model, self.chain, self.block_number, self.position
        )
    }
}

/// One output row of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Deterministic unique key.
    pub key: RecordKey,
    /// Model version that produced it.
    pub model_version: String,
    /// Hash of the block, so consumers can drop records of reorged blocks.
    pub block_hash: B256,
    /// The run that produced it.
    pub run_id: RunId,
    /// The row itself, as JSON text ([`Payload`]).
    pub payload: Payload,
}

impl Record {
    /// Appends the record as compact JSON, byte for byte what `serde_json` writes for it (the
    /// JSON-lines sink's line, the Kafka envelope's body), copying the payload's text.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        self.write_json_fields(out);
        out.push('}');
    }

    /// Appends the members of the record's JSON object, without its braces, for an envelope
    /// that adds members of its own (Kafka's `envelope_version`).
    pub fn write_json_fields(&self, out: &mut String) {
        use payload::{write_str, write_u64};
        out.push_str("\"key\":{\"model\":");
        write_str(out, &self.key.model);
        out.push_str(",\"chain\":");
        write_str(out, self.key.chain.as_str());
        out.push_str(",\"block_number\":");
        write_u64(out, self.key.block_number);
        out.push_str(",\"position\":");
        write_u64(out, self.key.position);
        out.push_str("},\"model_version\":");
        write_str(out, &self.model_version);
        out.push_str(",\"block_hash\":\"0x");
        let mut hash = [0u8; 64];
        // 32 bytes always fit 64 digits.
        let _ = alloy_primitives::hex::encode_to_slice(self.block_hash, &mut hash);
        out.push_str(std::str::from_utf8(&hash).expect("hex digits are ASCII"));
        out.push_str("\",\"run_id\":\"");
        out.push_str(
            self.run_id
                .0
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        out.push_str("\",\"payload\":");
        out.push_str(self.payload.as_json());
    }
}

/// What a model may use besides its blocks.
#[derive(Debug, Clone)]
pub struct ModelContext {
    /// The run being executed.
    pub run_id: RunId,
    /// Model name (for record keys).
    pub model: String,
    /// Model version (for records).
    pub model_version: String,
    /// Chain.
    pub chain: Chain,
    /// The run's blocks.
    pub range: BlockRange,
    /// The chain's source, for `reads` models' contract calls.
    pub source: Arc<dyn BlockSource>,
    /// What the model counts about the run ([`ModelContext::count`]); the worker reports it on
    /// the run when the attempt succeeds ([`ModelRun::notes`](crate::run::ModelRun::notes)).
    /// Give a new context `Notes::default()`.
    pub notes: Notes,
}

/// Counts a model keeps about its run by name, shared by the clones of its [`ModelContext`].
#[derive(Debug, Clone, Default)]
pub struct Notes(Arc<std::sync::Mutex<crate::run::RunNotes>>);

impl Notes {
    /// Adds `n` to the count called `name`.
    pub fn add(&self, name: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut notes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = notes.entry(name.to_owned()).or_default();
        *count = count.saturating_add(n);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> crate::run::RunNotes {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ModelContext {
    /// Counts `n` more of `name` for this run: input the model skipped rather than fail on,
    /// e.g. `abi_mismatched_logs`. Shown on the run once it succeeds
    /// ([`ModelRun::notes`](crate::run::ModelRun::notes)); never fails the run.
    pub fn count(&self, name: &str, n: u64) {
        self.notes.add(name, n);
    }

    /// A record of this run about `block` at `position`.
    pub fn record(&self, block: &Block, position: u64, payload: impl Into<Payload>) -> Record {
        Record {
            key: RecordKey {
                model: self.model.clone(),
                chain: self.chain.clone(),
                block_number: block.number,
                position,
            },
            model_version: self.model_version.clone(),
            block_hash: block.hash,
            run_id: self.run_id,
            payload: payload.into(),
        }
    }
}

/// A model failure; the run's attempt fails with its message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model's own failure.
    #[error("{0}")]
    Failed(String),
    /// A contract read or block load failed.
    #[error("chain source: {0}")]
    Source(#[from] SourceError),
}

/// User code that turns blocks into records.
///
/// A run's blocks MAY reach `run` in several calls, in order, of at most
/// [`WorkerConfig::batch_blocks`](crate::engine::WorkerConfig::batch_blocks) blocks each, so a
/// model MUST NOT rely on seeing all of a run's blocks in one call.
///
/// Implementations MUST be deterministic for the same blocks (same records, same keys), MUST
/// produce unique `(block, position)` pairs, and SHOULD NOT keep state between runs: runs of one
/// model execute concurrently on many workers.
#[async_trait]
pub trait Model: fmt::Debug + Send + Sync + 'static {
    /// What the model is: name, version, kind, supported chains and record schema.
    ///
    /// Read once, when the model is registered ([`ModelRegistry::register`]); the engine uses
    /// that copy from then on. It MUST be the same for the same version: change the version
    /// when the output (or the schema) changes.
    ///
    /// ```
    /// use model_runner_core::model::{FieldType, ModelSpec, RecordSchema};
    /// use model_runner_core::ModelKind;
    ///
    /// let spec = ModelSpec::new("token_moves", "1.0.0", ModelKind::Nonreads).with_schema(
    ///     RecordSchema::new()
    ///         .required("token", FieldType::Hex, "ERC-20 contract")
    ///         .required("value", FieldType::BigInt, "amount in base units")
    ///         .nullable("note", FieldType::String, ""),
    /// );
    /// assert_eq!((spec.name(), spec.version()), ("token_moves", "1.0.0"));
    /// ```
    fn spec(&self) -> ModelSpec;
    /// Runs over `blocks` (the whole run range, ascending).
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError>;
}

/// What a [`Model`] is: its name, version and kind, the chains it supports and the shape of
/// its payloads. Built with [`ModelSpec::new`] and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    name: String,
    version: String,
    kind: ModelKind,
    chains: Vec<Chain>,
    schema: Option<RecordSchema>,
}

impl ModelSpec {
    /// A model called `name` (unique in a registry, e.g. `erc20_transfers`) at `version`, of
    /// `kind` (reads or nonreads: decides the queue), for every chain, with schemaless payloads.
    pub fn new(name: impl Into<String>, version: impl Into<String>, kind: ModelKind) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            kind,
            chains: Vec::new(),
            schema: None,
        }
    }

    /// Supports only `chains` (none given: every chain).
    pub fn with_chains(mut self, chains: impl IntoIterator<Item = Chain>) -> Self {
        self.chains = chains.into_iter().collect();
        self
    }

    /// Declares the shape of every payload the model emits.
    ///
    /// A declared schema is a promise checked at run time: the worker checks every payload
    /// with [`RecordSchema::check`] before sending, and a mismatch fails the run's attempt (a
    /// model bug, retried like a model error) with a message naming the model, record key and
    /// field. Sinks with typed columns (Parquet) derive them from it.
    pub fn with_schema(mut self, schema: RecordSchema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Reads or nonreads.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The chains it supports; empty means every chain.
    pub fn chains(&self) -> &[Chain] {
        &self.chains
    }

    /// The shape of its payloads, or `None` for schemaless payloads.
    pub fn record_schema(&self) -> Option<&RecordSchema> {
        self.schema.as_ref()
    }

    /// The name at the version, what a record schema is declared for.
    pub fn model_version(&self) -> ModelVersion<'_> {
        ModelVersion {
            name: &self.name,
            version: &self.version,
        }
    }
}

/// A registered model: the [`ModelSpec`] read from it at registration, and the model.
#[derive(Debug, Clone)]
pub struct RegisteredModel {
    spec: ModelSpec,
    model: Arc<dyn Model>,
}

impl RegisteredModel {
    /// Reads `model`'s spec, once.
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self {
            spec: model.spec(),
            model,
        }
    }

    /// What the model is.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Runs the model over `blocks` ([`Model::run`]).
    pub async fn run(
        &self,
        ctx: &ModelContext,
        blocks: &[Block],
    ) -> Result<Vec<Record>, ModelError> {
        self.model.run(ctx, blocks).await
    }
}

/// Asked for a model that is not registered, or registered twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No model by that name.
    #[error("unknown model {name:?}: registered models are {known}")]
    UnknownModel {
        /// The requested name.
        name: String,
        /// Comma-separated registered names.
        known: String,
    },
    /// A second model with the same name.
    #[error("model {name:?} is already registered")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// A model that does not support the chain.
    #[error("model {model:?} does not support chain {chain:?} (it supports {supported})")]
    UnsupportedChain {
        /// Model name.
        model: String,
        /// Requested chain.
        chain: String,
        /// Supported chains.
        supported: String,
    },
}

/// The models a process can run, by name.
#[derive(Debug, Clone, Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, Arc<RegisteredModel>>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a model, reading its [`Model::spec`] once; refuses a second model with the same
    /// name.
    pub fn register(&mut self, model: Arc<dyn Model>) -> Result<(), RegistryError> {
        let model = RegisteredModel::new(model);
        let name = model.spec().name().to_owned();
        if self.models.contains_key(&name) {
            return Err(RegistryError::Duplicate { name });
        }
        self.models.insert(name, Arc::new(model));
        Ok(())
    }

    /// Adds a model, builder style.
    pub fn with(mut self, model: Arc<dyn Model>) -> Result<Self, RegistryError> {
        self.register(model)?;
        Ok(self)
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<RegisteredModel>, RegistryError> {
        self.models
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::UnknownModel {
                name: name.chars().take(64).collect(),
                known: self.names().join(", "),
            })
    }

    /// The model called `name`, checked to support `chain`.
    pub fn get_for(
        &self,
        name: &str,
        chain: &Chain,
    ) -> Result<Arc<RegisteredModel>, RegistryError> {
        let model = self.get(name)?;
        let chains = model.spec().chains();
        if !chains.is_empty() && !chains.contains(chain) {
            return Err(RegistryError::UnsupportedChain {
                model: name.to_owned(),
                chain: chain.to_string(),
                supported: chains
                    .iter()
                    .map(Chain::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(model)
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }

    /// Registered models, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<RegisteredModel>> {
        self.models.values()
    }
}
