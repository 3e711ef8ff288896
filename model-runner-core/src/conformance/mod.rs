//! Conformance suites: one per port, each a `run_all` that checks every MUST of the port's
//! contract against an adapter. Adapter crates call them from their tests with a factory that
//! gives each case a fresh, isolated instance (own schema, own queue names, ...).
//!
//! Failures panic with a message naming the broken rule, like any assertion.

pub mod call_cache;
pub mod progress;
pub mod queue;
pub mod sink;
pub mod source;
pub mod store;

use crate::chain::{BlockRange, Chain, ModelKind, RunMode};
use crate::run::NewRun;

/// A real ERC-20 JSON ABI (OpenZeppelin's: functions, `Transfer`, `Approval`, an error), as
/// solc emits it.
pub const ERC20_ABI: &str = include_str!("../../testdata/erc20.abi.json");

/// A backfill run spec for tests.
pub fn new_run(model: &str, chain: &str, start: u64, end: u64) -> NewRun {
    let chain = Chain::new(chain).expect("valid test chain");
    NewRun {
        model: model.to_owned(),
        model_version: "1".to_owned(),
        queue: crate::routing::queue_name(&chain, RunMode::Backfill, ModelKind::Nonreads),
        chain,
        range: BlockRange::new(start, end).expect("valid test range"),
        mode: RunMode::Backfill,
        kind: ModelKind::Nonreads,
        max_attempts: 3,
    }
}

/// A name no other test uses, for queues and topics on shared servers.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
