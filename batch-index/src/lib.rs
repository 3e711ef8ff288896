//! Map/reduce account indexer over Stellar ledgers and Ethereum blocks.
//!
//! The index answers "in which checkpoints did this account take part?" so a
//! history query reads only those checkpoints instead of scanning the chain.
//! It reproduces the Stellar lighthorizon batch indexer (same job environment
//! contract, same participant rules, same TOID layout) with a smaller on-disk
//! format and a bounded-read lookup.
//!
//! Data flow:
//!
//! 1. A [`source`] ([`stellar`] meta-archive or data-lake layout, or
//!    [`ethereum`] JSON-RPC / ethereum-etl files, or Ethereum blocks from the
//!    model runner's block sources through [`runner_source`]) yields, per checkpoint, the
//!    participants of every transaction ([`extract::CheckpointFacts`]).
//! 2. [`map`] job `i` covers its checkpoint range and writes under `job_<i>/`
//!    the accounts seen and partial indexes partitioned by reduce job
//!    ([`partial`] files), then a `_SUCCESS` [`manifest`] last.
//! 3. [`reduce`] job `j` with worker `w` owns the accounts whose FNV-1a hash
//!    ([`account::Owner`]) maps to `(j, w)`; it merges its partition of every
//!    map job and writes one sorted [`table`] shard per worker, in a new
//!    generation directory that one atomic put of the root `layout.json`
//!    publishes.
//! 4. [`reader::IndexReader`] answers lookups with at most two range reads of
//!    one shard object.
//! 5. When the chain has grown, [`extend`] adds the new ledgers: map jobs over
//!    only those, and reduce jobs that merge them into the published shards,
//!    giving a new generation byte-identical to a full rebuild over the whole
//!    range ([`runner::extend_local`] runs both phases locally).
//!
//! Blob storage is `Arc<dyn object_store::ObjectStore>` throughout
//! ([`store::StoreRoot`] only pairs it with a key prefix).

pub mod account;
pub mod bitmap_encoding;
pub mod checkpoint;
pub mod error;
pub mod ethereum;
pub mod extend;
pub mod extract;
pub mod local_build;
pub mod manifest;
pub mod map;
pub mod partial;
pub mod reader;
pub mod reduce;
pub mod runner;
pub mod runner_source;
pub mod source;
pub mod stellar;
pub mod store;
pub mod table;
pub mod varint;

pub use error::{Error, Result};
pub use reader::IndexReader;

/// Name of the index of every participant of every transaction.
pub const INDEX_ALL: &str = "all/all";
/// Name of the index of payment participants only.
pub const INDEX_PAYMENTS: &str = "all/payments";
/// The account index names, in the order of [`extract::IndexMask`] bits.
pub const ACCOUNT_INDEXES: [&str; 2] = [INDEX_ALL, INDEX_PAYMENTS];
