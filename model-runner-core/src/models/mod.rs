//! Built-in models: [`Erc20Transfers`] and [`BlockStats`] (`nonreads`), and
//! [`Erc20Balances`] (`reads`: it calls contracts); [`AbiEvents`] (`nonreads`) decodes the
//! events of every contract in the run store's ABI registry, so it needs the store:
//! [`builtin_with_store`] registers it beside the others.

pub mod abi_events;
mod block_stats;
mod erc20_balances;
mod erc20_transfers;

use std::sync::Arc;

pub use abi_events::AbiEvents;
pub use block_stats::BlockStats;
pub use erc20_balances::{CALL_CONCURRENCY, Erc20Balances};
pub use erc20_transfers::{Erc20Transfers, TRANSFER_TOPIC, decode_transfer};

use crate::model::ModelRegistry;
use crate::ports::RunStore;

/// A registry holding every built-in model.
pub fn builtin() -> ModelRegistry {
    let mut r = ModelRegistry::new();
    r.register(Arc::new(Erc20Transfers)).expect("unique name");
    r.register(Arc::new(BlockStats)).expect("unique name");
    r.register(Arc::new(Erc20Balances)).expect("unique name");
    r
}

/// Every built-in model, [`AbiEvents`] included, reading ABIs from `store`'s registry.
pub fn builtin_with_store(store: Arc<dyn RunStore>) -> ModelRegistry {
    let mut r = builtin();
    r.register(Arc::new(AbiEvents::new(store)))
        .expect("unique name");
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use alloy_primitives::{Address, B256, Bytes, U256};

    use futures::future::BoxFuture;

    use super::TRANSFER_TOPIC;
    use crate::chain::{BlockRange, Chain, ModelKind};
    use crate::data::{Block, Log, Transaction};
    use crate::memory::MemoryBlockSource;
    use crate::model::{
        Model, ModelContext, ModelError, ModelSpec, Record, RecordSchema, RegistryError,
    };
    use crate::run::RunId;

    /// Blocks `start..=end` with, per block, a contract creation, a call, an ERC-20 transfer of
    /// a value wider than 64 bits, an ERC-721 transfer and an unrelated log.
    pub(crate) fn blocks(start: u64, end: u64) -> Vec<Block> {
        (start..=end)
            .map(|number| {
                let tx = |index: u64, to: Option<Address>| Transaction {
                    hash: B256::with_last_byte(index as u8),
                    index,
                    from: Address::with_last_byte(1),
                    to,
                    value: U256::ZERO,
                    gas: 21_000,
                    gas_price: Some(1),
                    nonce: index,
                    input: Bytes::new(),
                    receipt: None,
                };
                let log = |log_index: u64, topics: Vec<B256>, data: Vec<u8>| Log {
                    address: Address::with_last_byte(0xAB),
                    topics,
                    data: Bytes::from(data),
                    log_index,
                    transaction_hash: B256::with_last_byte(1),
                    transaction_index: 1,
                    block_number: number,
                };
                let word = |b: u8| Address::with_last_byte(b).into_word();
                let value = (U256::from(u64::MAX) * U256::from(1000u64) + U256::from(number))
                    .to_be_bytes::<32>()
                    .to_vec();
                let hash = B256::with_last_byte(number as u8);
                Block {
                    gas_used: 42_000,
                    base_fee_per_gas: Some(7),
                    transactions: vec![tx(0, None), tx(1, Some(Address::with_last_byte(2)))],
                    logs: vec![
                        log(0, vec![TRANSFER_TOPIC, word(3), word(4)], value),
                        log(
                            1,
                            vec![TRANSFER_TOPIC, word(3), word(4), B256::ZERO],
                            vec![],
                        ),
                        log(2, vec![B256::ZERO], vec![1, 2, 3]),
                    ],
                    ..Block::empty(number, hash, B256::ZERO, 1_700_000_000 + number * 12)
                }
            })
            .collect()
    }

    /// A memory source whose `call` answers `balanceOf(holder)` with a made-up balance
    /// (block number * 1000 + the holder's last byte), reverts for tokens in `reverting`,
    /// answers 3 bytes for tokens in `malformed`, and counts calls and the most in flight.
    #[derive(Debug)]
    pub(crate) struct FakeCalls {
        pub inner: MemoryBlockSource,
        pub reverting: Vec<Address>,
        pub malformed: Vec<Address>,
        pub calls: std::sync::Mutex<Vec<crate::data::CallRequest>>,
        in_flight: std::sync::atomic::AtomicUsize,
        pub max_in_flight: std::sync::atomic::AtomicUsize,
    }

    impl FakeCalls {
        pub(crate) fn new(inner: MemoryBlockSource) -> Self {
            Self {
                inner,
                reverting: vec![],
                malformed: vec![],
                calls: Default::default(),
                in_flight: Default::default(),
                max_in_flight: Default::default(),
            }
        }

        /// The balance `call` answers for `holder` at block `number`.
        pub(crate) fn balance(number: u64, holder: Address) -> U256 {
            U256::from(number * 1000 + u64::from(holder[19]))
        }
    }

    #[async_trait::async_trait]
    impl crate::ports::BlockSource for FakeCalls {
        fn chain(&self) -> &Chain {
            self.inner.chain()
        }
        async fn head(&self) -> Result<crate::data::BlockHead, crate::ports::SourceError> {
            self.inner.head().await
        }
        async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, crate::ports::SourceError> {
            self.inner.blocks(range).await
        }
        async fn call(
            &self,
            request: &crate::data::CallRequest,
        ) -> Result<Bytes, crate::ports::SourceError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.lock().unwrap().push(request.clone());
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.max_in_flight.fetch_max(now, SeqCst);
            // Hand the thread to the other calls before answering, as a network call would:
            // every call the model has in flight gets to start.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            self.in_flight.fetch_sub(1, SeqCst);
            let block = self.inner.blocks(BlockRange::single(request.block)).await?;
            assert_eq!(
                block[0].hash, request.block_hash,
                "calls are pinned to the block's hash"
            );
            assert_eq!(&request.data[..4], &[0x70, 0xa0, 0x82, 0x31], "balanceOf");
            let holder = Address::from_slice(&request.data[16..36]);
            if self.reverting.contains(&request.to) {
                return Err(crate::ports::SourceError::Reverted(
                    "execution reverted".into(),
                ));
            }
            if self.malformed.contains(&request.to) {
                return Ok(Bytes::from_static(&[1, 2, 3]));
            }
            Ok(Bytes::from(
                Self::balance(request.block, holder)
                    .to_be_bytes::<32>()
                    .to_vec(),
            ))
        }
    }

    /// What a [`TestModel`] does with each batch before it makes its records: it may wait,
    /// count, look at the run, or fail the batch.
    pub(crate) type BatchHook = Box<
        dyn Fn(&ModelContext, &[Block]) -> BoxFuture<'static, Result<(), ModelError>> + Send + Sync,
    >;

    /// A model for tests of the engine: a name, a version, a kind (`nonreads`), an optional
    /// record schema, one record per block (`{"n": number}` unless [`TestModel::payload`]
    /// says otherwise) and an optional [`BatchHook`] that runs before each batch's records.
    pub(crate) struct TestModel {
        spec: ModelSpec,
        payload: Box<dyn Fn(&Block) -> serde_json::Value + Send + Sync>,
        hook: Option<BatchHook>,
    }

    impl TestModel {
        /// A `nonreads` model `name` at `version`, with no schema, recording `{"n": number}`.
        pub(crate) fn new(name: &'static str, version: &str) -> Self {
            Self {
                spec: ModelSpec::new(name, version, ModelKind::Nonreads),
                payload: Box::new(|b| serde_json::json!({ "n": b.number })),
                hook: None,
            }
        }

        /// Declares `schema` as the record schema.
        pub(crate) fn schema(self, schema: RecordSchema) -> Self {
            Self {
                spec: self.spec.with_schema(schema),
                ..self
            }
        }

        /// Records `payload(block)` for each block.
        pub(crate) fn payload(
            self,
            payload: impl Fn(&Block) -> serde_json::Value + Send + Sync + 'static,
        ) -> Self {
            Self {
                payload: Box::new(payload),
                ..self
            }
        }

        /// Runs `hook` at the start of each batch; an error fails the batch.
        pub(crate) fn hook(
            self,
            hook: impl Fn(&ModelContext, &[Block]) -> BoxFuture<'static, Result<(), ModelError>>
            + Send
            + Sync
            + 'static,
        ) -> Self {
            Self {
                hook: Some(Box::new(hook)),
                ..self
            }
        }
    }

    impl std::fmt::Debug for TestModel {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestModel")
                .field("spec", &self.spec)
                .field("hook", &self.hook.is_some())
                .finish_non_exhaustive()
        }
    }

    #[async_trait::async_trait]
    impl Model for TestModel {
        fn spec(&self) -> ModelSpec {
            self.spec.clone()
        }
        async fn run(
            &self,
            ctx: &ModelContext,
            blocks: &[Block],
        ) -> Result<Vec<Record>, ModelError> {
            if let Some(hook) = &self.hook {
                hook(ctx, blocks).await?;
            }
            Ok(blocks
                .iter()
                .map(|b| ctx.record(b, 0, (self.payload)(b)))
                .collect())
        }
    }

    #[tokio::test]
    async fn builtin_models_emit_exactly_their_declared_schemas() {
        let chain = Chain::new("ethereum").unwrap();
        let blocks = blocks(10, 14);
        let source = Arc::new(FakeCalls::new(MemoryBlockSource::new(
            chain.clone(),
            blocks.clone(),
        )));
        for model in super::builtin().iter() {
            let spec = model.spec();
            let schema = spec
                .record_schema()
                .expect("built-in models declare a schema");
            schema.validate().unwrap();
            // Only a read that fails has absent values (null balance, with its reason).
            let nullable: Vec<&str> = schema
                .fields()
                .iter()
                .filter(|f| f.nullable)
                .map(|f| f.name.as_str())
                .collect();
            let allowed: &[&str] = match spec.name() {
                "erc20_balances" => &["balance", "balance_error"],
                _ => &[],
            };
            assert_eq!(nullable, allowed, "{}: nullable fields", spec.name());
            let ctx = ModelContext {
                run_id: RunId::new(),
                model: spec.name().to_owned(),
                model_version: spec.version().to_owned(),
                chain: chain.clone(),
                range: BlockRange::new(10, 14).unwrap(),
                source: source.clone(),
                notes: Default::default(),
            };
            let records = model.run(&ctx, &blocks).await.unwrap();
            // Each block has one ERC-20 transfer, between two holders.
            let per_block = if spec.kind() == crate::chain::ModelKind::Reads {
                2
            } else {
                1
            };
            assert_eq!(
                records.len(),
                5 * per_block,
                "{}: records per block",
                spec.name()
            );
            for r in &records {
                schema
                    .check(&r.payload)
                    .unwrap_or_else(|e| panic!("{}: {e}: {}", spec.name(), r.payload));
                // Exactly the declared fields.
                let mut keys: Vec<&str> = r
                    .payload
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect();
                keys.sort_unstable();
                let mut declared: Vec<&str> =
                    schema.fields().iter().map(|f| f.name.as_str()).collect();
                declared.sort_unstable();
                assert_eq!(keys, declared, "{}", spec.name());
            }
        }
    }

    #[test]
    fn builtin_with_store_adds_abi_events() {
        let store = Arc::new(crate::memory::MemoryRunStore::new());
        let r = super::builtin_with_store(store);
        assert_eq!(
            r.names(),
            [
                "abi_events",
                "block_stats",
                "erc20_balances",
                "erc20_transfers"
            ]
        );
    }

    #[test]
    fn unknown_model_is_a_typed_error() {
        let r = super::builtin();
        assert_eq!(
            r.names(),
            ["block_stats", "erc20_balances", "erc20_transfers"]
        );
        let err = r.get("erc721_transfers").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown model \"erc721_transfers\": registered models are block_stats, erc20_balances, erc20_transfers"
        );
        assert!(
            r.get_for("block_stats", &Chain::new("matic").unwrap())
                .is_ok()
        );
        let dup = r
            .clone()
            .with(std::sync::Arc::new(super::BlockStats))
            .unwrap_err();
        assert_eq!(
            dup,
            RegistryError::Duplicate {
                name: "block_stats".into()
            }
        );
    }

    /// A model whose spec counts how often it is asked for.
    #[derive(Debug, Default)]
    struct Counted(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl Model for Counted {
        fn spec(&self) -> ModelSpec {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ModelSpec::new("counted", "2", ModelKind::Reads)
                .with_chains([Chain::new("polygon").unwrap()])
                .with_schema(RecordSchema::new().required("n", crate::FieldType::UInt64, ""))
        }
        async fn run(&self, _: &ModelContext, _: &[Block]) -> Result<Vec<Record>, ModelError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn the_registry_reads_a_spec_once_and_answers_from_it() {
        let model = Arc::new(Counted::default());
        let r = crate::model::ModelRegistry::new()
            .with(model.clone())
            .unwrap();
        for _ in 0..3 {
            let got = r
                .get_for("counted", &Chain::new("polygon").unwrap())
                .unwrap();
            let spec = got.spec();
            assert_eq!(
                (spec.name(), spec.version(), spec.kind()),
                ("counted", "2", ModelKind::Reads)
            );
            assert_eq!(spec.model_version().version, "2");
            assert_eq!(spec.record_schema().map(|s| s.fields().len()), Some(1));
        }
        assert_eq!(
            r.get_for("counted", &Chain::new("ethereum").unwrap())
                .unwrap_err()
                .to_string(),
            "model \"counted\" does not support chain \"ethereum\" (it supports polygon)"
        );
        assert_eq!(r.iter().count(), 1);
        assert_eq!(model.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
