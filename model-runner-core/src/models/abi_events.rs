//! `abi_events`: every event of the contracts in the run store's ABI registry, decoded into
//! named, typed fields. A new contract needs an ABI ([`RunStore::put_abi`], `model-runner abi
//! put`, `PUT /v1/abis/{chain}/{address}`), not code.
//!
//! # How data flows
//!
//! For a batch of blocks, the model takes the chain's registered ABIs (read from the store at
//! most once per [`ABI_CACHE_TTL`] per process, so a newly registered ABI is used within that
//! time) as [`ContractDecoders`]: per contract address, its non-anonymous events by `topic0`.
//! Each log of a registered contract is matched by `topic0` and decoded with `alloy-dyn-abi`
//! (topic count, indexed topics and data all checked); logs of other contracts are skipped.
//! One record per decoded log, at position = log index:
//!
//! ```json
//! {"contract": "0x…", "event": "Transfer", "signature": "Transfer(address,address,uint256)",
//!  "args": {"from": "0x…", "to": "0x…", "value": "1000"},
//!  "transaction_hash": "0x…", "log_index": 3, "block_number": 19000000}
//! ```
//!
//! Values in `args` (see [`json_value`]): addresses in lowercase `0x`-hex, integers of any
//! width as decimal strings, bytes and fixed bytes as `0x`-hex, bools and strings as
//! themselves, arrays and tuples as arrays. An indexed parameter of a dynamic type (string,
//! bytes, array, tuple) is only its keccak-256 hash in the log, so it is that hash, as `0x`-hex.
//! An unnamed parameter is `argN` (N its position among the event's inputs).
//!
//! # Logs that do not match their ABI
//!
//! A log of a registered contract whose `topic0` is none of the ABI's events (or that has no
//! topics), or whose topics or data do not decode as that event, is not a record and never
//! fails the run: it is counted. Each model call that met such logs emits one `warn` event
//! (target `model_runner_core::models::abi_events`) with the run id, the chain, the count and
//! the first few logs with their reason, and adds the count to the counter
//! `model_runner_abi_mismatched_logs_total{chain, reason}` (`reason` is `unknown_event` or
//! `undecodable`), and counts them on the run ([`ModelContext::count`]): a run that
//! succeeded shows `{"abi_mismatched_logs.unknown_event": n, "abi_mismatched_logs.undecodable":
//! m}` in its `notes` (API, `model-runner runs get`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy_dyn_abi::{DynSolEvent, DynSolValue, Specifier};
use alloy_json_abi::Event;
use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::chain::{Chain, ModelKind};
use crate::data::{Block, Log};
use crate::engine::instruments;
use crate::model::{FieldType, Model, ModelContext, ModelError, ModelSpec, Record, RecordSchema};
use crate::ports::{ContractAbi, RunStore};

/// How long a process reuses a chain's ABIs before reading the registry again.
pub const ABI_CACHE_TTL: Duration = Duration::from_secs(10);

/// How many mismatching logs a warning describes (the count covers them all).
const DESCRIBED_MISMATCHES: usize = 5;

/// The `abi_events` model: decodes the events of every contract with a registered ABI.
pub struct AbiEvents {
    abis: Arc<dyn RunStore>,
    cache: Mutex<HashMap<Chain, (Instant, Arc<ContractDecoders>)>>,
}

impl fmt::Debug for AbiEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbiEvents").finish_non_exhaustive()
    }
}

impl AbiEvents {
    /// The model, reading ABIs from `abis`' registry.
    pub fn new(abis: Arc<dyn RunStore>) -> Self {
        Self {
            abis,
            cache: Mutex::default(),
        }
    }

    /// The decoders of `chain`, from the cache while fresh.
    async fn decoders(&self, chain: &Chain) -> Result<Arc<ContractDecoders>, ModelError> {
        let now = Instant::now();
        if let Some((at, decoders)) = self.lock().get(chain)
            && now.duration_since(*at) < ABI_CACHE_TTL
        {
            return Ok(decoders.clone());
        }
        let abis = self.abis.abis(Some(chain)).await.map_err(|e| {
            ModelError::Failed(format!(
                "abi_events: cannot read the ABI registry of {chain}: {e}"
            ))
        })?;
        let decoders = Arc::new(ContractDecoders::new(&abis)?);
        self.lock().insert(chain.clone(), (now, decoders.clone()));
        Ok(decoders)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Chain, (Instant, Arc<ContractDecoders>)>> {
        // Only whole entries are ever inserted: a poisoned map is still consistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One event of an ABI, resolved for decoding.
#[derive(Debug)]
struct EventDecoder {
    event: Event,
    signature: String,
    resolved: DynSolEvent,
}

/// The registered contracts of one chain, ready to decode their logs: per address, the
/// non-anonymous events of its ABI by `topic0`. Anonymous events have no `topic0` to match
/// by, so they are not decoded.
#[derive(Debug, Default)]
pub struct ContractDecoders {
    contracts: HashMap<Address, HashMap<B256, EventDecoder>>,
}

/// Why a log of a registered contract is not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mismatch {
    /// No topics, or a `topic0` that is none of the ABI's events.
    UnknownEvent,
    /// The event is known but the topics or data do not decode as it.
    Undecodable,
}

impl Mismatch {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::UnknownEvent => "unknown_event",
            Mismatch::Undecodable => "undecodable",
        }
    }
}

/// A log that matched no event of its contract's ABI, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MismatchedLog {
    /// Block number.
    pub block_number: u64,
    /// Log index.
    pub log_index: u64,
    /// Emitting contract.
    pub contract: Address,
    /// The kind of mismatch.
    pub reason: Mismatch,
    /// What did not match, for people.
    pub detail: String,
}

impl fmt::Display for MismatchedLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {} log {} of {:#x}: {}",
            self.block_number, self.log_index, self.contract, self.detail
        )
    }
}

impl ContractDecoders {
    /// Decoders for `abis`. An ABI that does not resolve (only a corrupt store can hold one:
    /// ABIs are validated when registered) is an error naming the contract.
    pub fn new(abis: &[ContractAbi]) -> Result<Self, ModelError> {
        let mut contracts = HashMap::new();
        for abi in abis {
            let parsed = abi.parsed().map_err(|e| {
                ModelError::Failed(format!(
                    "abi_events: the registered ABI of {:#x} on {} is unusable: {e}",
                    abi.address, abi.chain
                ))
            })?;
            let mut events = HashMap::new();
            for event in parsed.events().filter(|e| !e.anonymous) {
                let resolved = event.resolve().map_err(|e| {
                    ModelError::Failed(format!(
                        "abi_events: event {} of {:#x} on {} does not resolve: {e}",
                        event.name, abi.address, abi.chain
                    ))
                })?;
                events.insert(
                    event.selector(),
                    EventDecoder {
                        signature: event.signature(),
                        event: event.clone(),
                        resolved,
                    },
                );
            }
            contracts.insert(abi.address, events);
        }
        Ok(Self { contracts })
    }

    /// Whether `address` has an ABI.
    pub fn knows(&self, address: &Address) -> bool {
        self.contracts.contains_key(address)
    }

    /// Decodes `log`: `None` for a contract without an ABI, else the payload of its record or
    /// why it does not match.
    pub fn decode(&self, log: &Log) -> Option<Result<Value, MismatchedLog>> {
        let events = self.contracts.get(&log.address)?;
        let mismatch = |reason, detail: String| MismatchedLog {
            block_number: log.block_number,
            log_index: log.log_index,
            contract: log.address,
            reason,
            detail,
        };
        let Some(topic0) = log.topics.first() else {
            return Some(Err(mismatch(
                Mismatch::UnknownEvent,
                "no topics (an anonymous event?)".into(),
            )));
        };
        let Some(decoder) = events.get(topic0) else {
            return Some(Err(mismatch(
                Mismatch::UnknownEvent,
                format!("topic0 {topic0} is no event of its ABI"),
            )));
        };
        let decoded = match decoder
            .resolved
            .decode_log_parts(log.topics.iter().copied(), &log.data)
        {
            Ok(decoded) => decoded,
            Err(e) => {
                return Some(Err(mismatch(
                    Mismatch::Undecodable,
                    format!("does not decode as {}: {e}", decoder.signature),
                )));
            }
        };
        let mut indexed = decoded.indexed.iter();
        let mut body = decoded.body.iter();
        let mut args = Map::new();
        for (i, input) in decoder.event.inputs.iter().enumerate() {
            let value = if input.indexed {
                indexed.next()
            } else {
                body.next()
            };
            // decode_log_parts returns exactly one value per input, split as the inputs are.
            let Some(value) = value else {
                return Some(Err(mismatch(
                    Mismatch::Undecodable,
                    format!("{} decoded to fewer values than inputs", decoder.signature),
                )));
            };
            let name = if input.name.is_empty() {
                format!("arg{i}")
            } else {
                input.name.clone()
            };
            args.insert(name, json_value(value));
        }
        Some(Ok(json!({
            "contract": format!("{:#x}", log.address),
            "event": decoder.event.name,
            "signature": decoder.signature,
            "args": args,
            "transaction_hash": log.transaction_hash.to_string(),
            "log_index": log.log_index,
            "block_number": log.block_number,
        })))
    }
}

/// A decoded ABI value as JSON: addresses lowercase `0x`-hex, integers decimal strings (they
/// can be 256 bits wide), bytes `0x`-hex, arrays and tuples arrays.
pub fn json_value(v: &DynSolValue) -> Value {
    match v {
        DynSolValue::Bool(b) => Value::Bool(*b),
        DynSolValue::Int(i, _) => Value::String(i.to_string()),
        DynSolValue::Uint(u, _) => Value::String(u.to_string()),
        DynSolValue::FixedBytes(word, size) => {
            Value::String(format!("0x{}", hex_lower(&word[..(*size).min(32)])))
        }
        DynSolValue::Address(a) => Value::String(format!("{a:#x}")),
        DynSolValue::Function(f) => Value::String(format!("0x{}", hex_lower(f.as_slice()))),
        DynSolValue::Bytes(b) => Value::String(format!("0x{}", hex_lower(b))),
        DynSolValue::String(s) => Value::String(s.clone()),
        DynSolValue::Array(items) | DynSolValue::FixedArray(items) | DynSolValue::Tuple(items) => {
            Value::Array(items.iter().map(json_value).collect())
        }
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    alloy_primitives::hex::encode(bytes)
}

/// Records of `blocks` and the logs of registered contracts that did not match their ABI.
pub fn decode_blocks(
    ctx: &ModelContext,
    decoders: &ContractDecoders,
    blocks: &[Block],
) -> (Vec<Record>, Vec<MismatchedLog>) {
    let mut records = Vec::new();
    let mut mismatched = Vec::new();
    for block in blocks {
        for log in &block.logs {
            match decoders.decode(log) {
                None => {}
                Some(Ok(payload)) => records.push(ctx.record(block, log.log_index, payload)),
                Some(Err(m)) => mismatched.push(m),
            }
        }
    }
    (records, mismatched)
}

/// Counts and logs mismatching logs (see the module docs).
fn report(ctx: &ModelContext, mismatched: &[MismatchedLog]) {
    if mismatched.is_empty() {
        return;
    }
    for reason in [Mismatch::UnknownEvent, Mismatch::Undecodable] {
        let n = mismatched.iter().filter(|m| m.reason == reason).count();
        instruments::abi_mismatched_logs(&ctx.chain, reason.as_str(), n as u64);
        ctx.count(
            &format!("abi_mismatched_logs.{}", reason.as_str()),
            n as u64,
        );
    }
    let described: Vec<String> = mismatched
        .iter()
        .take(DESCRIBED_MISMATCHES)
        .map(ToString::to_string)
        .collect();
    tracing::warn!(
        run_id = %ctx.run_id,
        chain = %ctx.chain,
        mismatched_logs = mismatched.len(),
        first = ?described,
        "abi_events: logs of registered contracts do not match their ABI; they are skipped"
    );
}

#[async_trait]
impl Model for AbiEvents {
    fn spec(&self) -> ModelSpec {
        use FieldType::{Hex, Json, String};
        ModelSpec::new("abi_events", "1.0.0", ModelKind::Nonreads).with_schema(
            RecordSchema::new()
                .required("contract", Hex, "emitting contract, lowercase 0x-hex")
                .required("event", String, "event name, from the contract's ABI")
                .required(
                    "signature",
                    String,
                    "canonical signature, e.g. Transfer(address,address,uint256)",
                )
                .required(
                    "args",
                    Json,
                    "parameters by name: addresses lowercase 0x-hex, integers decimal strings, \
                     bytes 0x-hex, arrays and tuples arrays",
                )
                .log_position(),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        let decoders = self.decoders(&ctx.chain).await?;
        let (records, mismatched) = decode_blocks(ctx, &decoders, blocks);
        report(ctx, &mismatched);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use alloy_dyn_abi::DynSolType;
    use alloy_primitives::{Bytes, I256, U256, address, keccak256};

    use super::*;
    use crate::chain::BlockRange;
    use crate::memory::{MemoryBlockSource, MemoryRunStore};
    use crate::ports::{ContractRef, CursorAdvance, CursorKey, LockLease, OutboxQuery};
    use crate::run::RunId;

    const ERC20_ABI: &str = include_str!("../../testdata/erc20.abi.json");

    fn chain() -> Chain {
        Chain::new("ethereum").unwrap()
    }

    const TOKEN: Address = address!("a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48");
    const OTHER: Address = address!("dac17f958d2ee523a2206206994597c13d831ec7");
    const ALICE: Address = address!("1b63142628311395ceafeea5667e7c9026c862ca");
    const BOB: Address = address!("ac4df82fe37ea2187bc8c011a23d743b4f39019a");

    fn log(address: Address, log_index: u64, topics: Vec<B256>, data: Vec<u8>) -> Log {
        Log {
            address,
            topics,
            data: Bytes::from(data),
            log_index,
            transaction_hash: B256::with_last_byte(0x77),
            transaction_index: 0,
            block_number: 100,
        }
    }

    fn word(v: u64) -> Vec<u8> {
        U256::from(v).to_be_bytes::<32>().to_vec()
    }

    fn block(logs: Vec<Log>) -> Block {
        Block {
            logs,
            ..Block::empty(100, B256::with_last_byte(100), B256::ZERO, 1_700_000_000)
        }
    }

    fn ctx() -> ModelContext {
        ModelContext {
            run_id: RunId::new(),
            model: "abi_events".into(),
            model_version: "1.0.0".into(),
            chain: chain(),
            range: BlockRange::new(100, 100).unwrap(),
            source: Arc::new(MemoryBlockSource::new(chain(), vec![])),
            notes: Default::default(),
        }
    }

    async fn store_with_erc20() -> Arc<MemoryRunStore> {
        let store = Arc::new(MemoryRunStore::new());
        register_erc20(&store, TOKEN).await;
        store
    }

    /// Registers the ERC-20 ABI for `contract` on Ethereum.
    async fn register_erc20(store: &MemoryRunStore, contract: Address) {
        let (abi, chain) = (serde_json::from_str(ERC20_ABI).unwrap(), chain());
        let contract = ContractRef::new(&chain, contract);
        store.put_abi(contract, abi).await.unwrap();
    }

    fn transfer_topic() -> B256 {
        keccak256("Transfer(address,address,uint256)")
    }

    #[tokio::test]
    async fn decodes_transfer_and_approval_and_counts_mismatches() {
        let store = store_with_erc20().await;
        let model = AbiEvents::new(store);
        let approval = keccak256("Approval(address,address,uint256)");
        let logs = vec![
            log(
                TOKEN,
                0,
                vec![transfer_topic(), ALICE.into_word(), BOB.into_word()],
                (U256::from(u64::MAX) * U256::from(1000u64))
                    .to_be_bytes::<32>()
                    .to_vec(),
            ),
            log(
                TOKEN,
                1,
                vec![approval, ALICE.into_word(), BOB.into_word()],
                word(5),
            ),
            // Not registered: skipped, not counted.
            log(
                OTHER,
                2,
                vec![transfer_topic(), ALICE.into_word(), BOB.into_word()],
                word(1),
            ),
            // Registered, but an event its ABI does not have.
            log(
                TOKEN,
                3,
                vec![keccak256("Paused(address)"), ALICE.into_word()],
                vec![],
            ),
            // An ERC-721-shaped Transfer: one topic too many.
            log(
                TOKEN,
                4,
                vec![
                    transfer_topic(),
                    ALICE.into_word(),
                    BOB.into_word(),
                    B256::with_last_byte(9),
                ],
                vec![],
            ),
            // Data too short for the uint256.
            log(
                TOKEN,
                5,
                vec![transfer_topic(), ALICE.into_word(), BOB.into_word()],
                vec![1, 2],
            ),
            // No topics at all.
            log(TOKEN, 6, vec![], word(1)),
        ];
        let blocks = [block(logs)];
        let ctx = ctx();
        let records = model
            .run(&ctx, &blocks)
            .await
            .expect("mismatches never fail the run");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key.position, 0);
        assert_eq!(records[0].key.model, "abi_events");
        assert_eq!(
            records[0].payload,
            json!({
                "contract": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
                "event": "Transfer",
                "signature": "Transfer(address,address,uint256)",
                "args": {
                    "from": "0x1b63142628311395ceafeea5667e7c9026c862ca",
                    "to": "0xac4df82fe37ea2187bc8c011a23d743b4f39019a",
                    "value": "18446744073709551615000",
                },
                "transaction_hash": format!("{}", B256::with_last_byte(0x77)),
                "log_index": 0,
                "block_number": 100,
            })
        );
        assert_eq!(records[1].key.position, 1);
        assert_eq!(records[1].payload["event"], "Approval");
        assert_eq!(
            records[1].payload["args"],
            json!({
                "owner": "0x1b63142628311395ceafeea5667e7c9026c862ca",
                "spender": "0xac4df82fe37ea2187bc8c011a23d743b4f39019a",
                "value": "5",
            })
        );
        let spec = model.spec();
        let schema = spec.record_schema().unwrap();
        for r in &records {
            schema.check(&r.payload).unwrap();
        }
        // Counted on the run, by reason.
        assert_eq!(
            ctx.notes.snapshot(),
            [
                ("abi_mismatched_logs.undecodable".to_owned(), 2),
                ("abi_mismatched_logs.unknown_event".to_owned(), 2),
            ]
            .into()
        );

        let decoders = model.decoders(&chain()).await.unwrap();
        let (_, mismatched) = decode_blocks(&ctx, &decoders, &blocks);
        let got: Vec<(u64, Mismatch)> =
            mismatched.iter().map(|m| (m.log_index, m.reason)).collect();
        assert_eq!(
            got,
            [
                (3, Mismatch::UnknownEvent),
                (4, Mismatch::Undecodable),
                (5, Mismatch::Undecodable),
                (6, Mismatch::UnknownEvent),
            ]
        );
        assert!(
            mismatched[0].to_string().contains("is no event of its ABI"),
            "{}",
            mismatched[0]
        );
        assert!(
            mismatched[1]
                .to_string()
                .contains("Transfer(address,address,uint256)"),
            "{}",
            mismatched[1]
        );
    }

    #[tokio::test]
    async fn no_abis_no_records_and_an_unreadable_registry_fails_the_attempt() {
        let model = AbiEvents::new(Arc::new(MemoryRunStore::new()));
        let logs = vec![log(
            TOKEN,
            0,
            vec![transfer_topic(), ALICE.into_word(), BOB.into_word()],
            word(1),
        )];
        assert!(model.run(&ctx(), &[block(logs)]).await.unwrap().is_empty());

        #[derive(Debug)]
        struct NoRegistry;
        #[async_trait]
        impl RunStore for NoRegistry {
            async fn create_runs(
                &self,
                _: crate::ports::CreateRuns,
            ) -> Result<crate::ports::CreatedRuns, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn get(&self, id: RunId) -> Result<crate::ModelRun, crate::ports::StoreError> {
                Err(crate::ports::StoreError::NotFound { id })
            }
            async fn list(
                &self,
                _: &crate::ports::RunFilter,
            ) -> Result<crate::ports::RunPage, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn count_by_state(
                &self,
                _: &crate::ports::RunFilter,
            ) -> Result<std::collections::BTreeMap<crate::RunState, u64>, crate::ports::StoreError>
            {
                unimplemented!()
            }
            async fn apply(
                &self,
                _: crate::ports::Transition,
            ) -> Result<crate::ModelRun, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn expired_leases(
                &self,
                _: chrono::DateTime<chrono::Utc>,
                _: usize,
            ) -> Result<Vec<crate::ModelRun>, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn outbox(
                &self,
                _: OutboxQuery<'_>,
            ) -> Result<Vec<crate::ModelRun>, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn cursor(
                &self,
                _: CursorKey<'_>,
            ) -> Result<Option<u64>, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn cursors(
                &self,
                _: Option<&Chain>,
            ) -> Result<Vec<crate::ports::RealtimeCursor>, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn advance_cursor(
                &self,
                _: CursorAdvance<'_>,
            ) -> Result<Vec<crate::ModelRun>, crate::ports::StoreError> {
                unimplemented!()
            }
            async fn try_lock(&self, _: LockLease<'_>) -> Result<bool, crate::ports::StoreError> {
                unimplemented!()
            }
        }
        let err = AbiEvents::new(Arc::new(NoRegistry))
            .run(&ctx(), &[])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot read the ABI registry of ethereum"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn registry_changes_are_seen_after_the_cache_ttl() {
        let store = Arc::new(MemoryRunStore::new());
        let model = AbiEvents::new(store.clone());
        let logs = vec![log(
            TOKEN,
            0,
            vec![transfer_topic(), ALICE.into_word(), BOB.into_word()],
            word(1),
        )];
        let blocks = [block(logs)];
        assert!(model.run(&ctx(), &blocks).await.unwrap().is_empty());
        register_erc20(&store, TOKEN).await;
        assert!(
            model.run(&ctx(), &blocks).await.unwrap().is_empty(),
            "cached for ABI_CACHE_TTL"
        );
        tokio::time::advance(ABI_CACHE_TTL).await;
        assert_eq!(model.run(&ctx(), &blocks).await.unwrap().len(), 1);
    }

    /// Through the engine: a backfill of `abi_events` succeeds, with one record per block
    /// (the ERC-20 transfer) and the ERC-721-shaped transfer and the unknown log of the same
    /// contract skipped.
    #[tokio::test]
    async fn a_backfill_decodes_the_registered_contract_and_succeeds_despite_mismatches() {
        use crate::engine::Runner;
        use crate::memory::MemorySink;
        let store = Arc::new(MemoryRunStore::new());
        let contract = Address::with_last_byte(0xAB);
        register_erc20(&store, contract).await;
        let sink = Arc::new(MemorySink::new());
        let runner = Runner::builder()
            .store_arc(store.clone())
            .model(AbiEvents::new(store))
            .source(MemoryBlockSource::new(
                chain(),
                crate::models::tests::blocks(0, 9),
            ))
            .sink_arc(sink.clone())
            .build()
            .unwrap();
        let runs = runner
            .backfill("abi_events", &chain(), BlockRange::new(0, 9).unwrap(), 5)
            .await
            .unwrap();
        let done = runner.run_until_done(&runs).await.unwrap();
        assert!(
            done.iter().all(|r| r.state == crate::RunState::Succeeded),
            "{done:?}"
        );
        // Each test block also has a log of the contract that is no event of its ABI and one
        // its ABI cannot decode: counted on the run that met them, five blocks a run.
        for run in &done {
            assert_eq!(
                run.notes,
                [
                    ("abi_mismatched_logs.undecodable".to_owned(), 5),
                    ("abi_mismatched_logs.unknown_event".to_owned(), 5),
                ]
                .into(),
                "{}",
                run.range
            );
        }
        let records = sink.records(&crate::topic_name("dev", &chain()));
        assert_eq!(records.len(), 10);
        assert!(records.iter().all(|r| r.payload["event"] == "Transfer"
            && r.payload["args"]["from"] == format!("{:#x}", Address::with_last_byte(3))));
    }

    #[test]
    fn every_kind_of_value_has_its_json_form() {
        let abi = json!([{
            "type": "event", "name": "Everything", "anonymous": false,
            "inputs": [
                {"name": "who", "type": "address", "indexed": true},
                {"name": "tag", "type": "string", "indexed": true},
                {"name": "", "type": "int32", "indexed": false},
                {"name": "ok", "type": "bool", "indexed": false},
                {"name": "id", "type": "bytes4", "indexed": false},
                {"name": "blob", "type": "bytes", "indexed": false},
                {"name": "label", "type": "string", "indexed": false},
                {"name": "amounts", "type": "uint256[]", "indexed": false},
                {"name": "pair", "type": "tuple", "indexed": false, "components": [
                    {"name": "a", "type": "address"}, {"name": "n", "type": "uint8[2]"}
                ]}
            ]
        }]);
        let registered = ContractAbi {
            chain: chain(),
            address: TOKEN,
            abi,
            updated_at: chrono::Utc::now(),
        };
        let decoders = ContractDecoders::new(&[registered]).unwrap();
        let selector = keccak256(
            "Everything(address,string,int32,bool,bytes4,bytes,string,uint256[],(address,uint8[2]))",
        );
        let body = DynSolValue::Tuple(vec![
            DynSolValue::Int("-7".parse::<I256>().unwrap(), 32),
            DynSolValue::Bool(true),
            DynSolValue::FixedBytes(B256::right_padding_from(&[0xde, 0xad, 0xbe, 0xef]), 4),
            DynSolValue::Bytes(vec![0xAB, 0xCD]),
            DynSolValue::String("hi".into()),
            DynSolValue::Array(vec![
                DynSolValue::Uint(U256::from(1u8), 256),
                DynSolValue::Uint(U256::MAX, 256),
            ]),
            DynSolValue::Tuple(vec![
                DynSolValue::Address(BOB),
                DynSolValue::FixedArray(vec![
                    DynSolValue::Uint(U256::from(3u8), 8),
                    DynSolValue::Uint(U256::from(4u8), 8),
                ]),
            ]),
        ]);
        // The body type, checked against the ABI's so the test data is right.
        let ty: DynSolType = "(int32,bool,bytes4,bytes,string,uint256[],(address,uint8[2]))"
            .parse()
            .unwrap();
        assert!(ty.matches(&body));
        let data = body.abi_encode_params();
        let tag_hash = keccak256("indexed-tag");
        let decoded = decoders
            .decode(&log(
                TOKEN,
                0,
                vec![selector, ALICE.into_word(), tag_hash],
                data,
            ))
            .unwrap()
            .unwrap();
        assert_eq!(
            decoded["signature"],
            "Everything(address,string,int32,bool,bytes4,bytes,string,uint256[],(address,uint8[2]))"
        );
        assert_eq!(
            decoded["args"],
            json!({
                "who": "0x1b63142628311395ceafeea5667e7c9026c862ca",
                "tag": format!("{tag_hash}"),
                "arg2": "-7",
                "ok": true,
                "id": "0xdeadbeef",
                "blob": "0xabcd",
                "label": "hi",
                "amounts": ["1", U256::MAX.to_string()],
                "pair": ["0xac4df82fe37ea2187bc8c011a23d743b4f39019a", ["3", "4"]],
            })
        );
    }
}
