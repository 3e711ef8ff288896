//! `_SUCCESS` manifests: written last by a job, they are the only signal that
//! its outputs are complete. Each lists its files with size and SHA-256 so a
//! reader detects truncated or corrupted objects and names them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::store::StoreRoot;

/// Format tag of map manifests.
pub const MAP_FORMAT: &str = "batch-index/map/1";
/// Format tag of reduce manifests.
pub const REDUCE_FORMAT: &str = "batch-index/reduce/1";

/// One output object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the job directory (map) or index root (reduce).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Records (accounts or transactions) in the file.
    pub records: u64,
}

impl FileEntry {
    /// Describes `content` stored at `path`.
    pub fn of(path: &str, content: &[u8], records: u64) -> Self {
        FileEntry {
            path: path.to_string(),
            bytes: content.len() as u64,
            sha256: hex::encode(Sha256::digest(content)),
            records,
        }
    }

    /// Fails with [`Error::Corrupt`] naming `described` if `content` differs.
    pub fn verify(&self, described: &str, content: &[u8]) -> Result<()> {
        if content.len() as u64 != self.bytes {
            return Err(Error::corrupt(
                described,
                format!(
                    "size {} differs from the manifest's {} bytes",
                    content.len(),
                    self.bytes
                ),
            ));
        }
        let got = hex::encode(Sha256::digest(content));
        if got != self.sha256 {
            return Err(Error::corrupt(
                described,
                format!("SHA-256 {got} differs from the manifest's {}", self.sha256),
            ));
        }
        Ok(())
    }
}

/// An inclusive range of ledgers (or blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRange {
    /// First ledger.
    pub first: u32,
    /// Last ledger (inclusive).
    pub last: u32,
}

impl LedgerRange {
    /// `first..=last` from a pair.
    pub fn from_pair((first, last): (u32, u32)) -> Self {
        LedgerRange { first, last }
    }
}

impl std::fmt::Display for LedgerRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Manifest of map job `job`, at `job_<i>/_SUCCESS`.
///
/// `_SUCCESS` says that the files listed are whole; whether the job covered
/// what it was asked for is [`MapManifest::is_complete`]: a job whose range
/// reaches past the source's latest ledger covers only a prefix of it
/// (`ledgers` short of `requested`), and reduce refuses it until a rerun
/// after the source grew covers the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapManifest {
    /// [`MAP_FORMAT`].
    pub format: String,
    /// Map job index.
    pub job: u32,
    /// Chain name.
    pub chain: String,
    /// Ledger range covered, `None` when the job started past the latest ledger.
    pub ledgers: Option<(u32, u32)>,
    /// Ledger range the job was asked for (`FIRST_CHECKPOINT + i·BATCH_SIZE`,
    /// `BATCH_SIZE` ledgers, capped at `LAST_LEDGER`); `None` when it starts
    /// past `LAST_LEDGER`. Absent from manifests written before it existed:
    /// those are read as asked for what they covered
    /// ([`MapManifest::requested_range`]).
    #[serde(default)]
    pub requested: Option<LedgerRange>,
    /// Ledgers (or blocks) read.
    pub ledgers_read: u64,
    /// Reduce job count the partitions were cut for.
    pub reduce_job_count: u32,
    /// Index names present.
    pub index_names: Vec<String>,
    /// Distinct accounts seen.
    pub accounts: u64,
    /// Transactions seen.
    pub transactions: u64,
    /// Output files.
    pub files: Vec<FileEntry>,
}

impl MapManifest {
    /// The range asked for; for a manifest written before `requested`
    /// existed, the range covered.
    pub fn requested_range(&self) -> Option<LedgerRange> {
        self.requested
            .or_else(|| self.ledgers.map(LedgerRange::from_pair))
    }

    /// The range covered.
    pub fn covered_range(&self) -> Option<LedgerRange> {
        self.ledgers.map(LedgerRange::from_pair)
    }

    /// Whether the job covered every ledger it was asked for.
    pub fn is_complete(&self) -> bool {
        self.covered_range() == self.requested_range()
    }
}

/// Manifest of reduce job `job`, at `_SUCCESS/reduce-<job>.json`.
///
/// It states what the generation holds, never how it was built (how many
/// map jobs, single process or an extension of another generation): every
/// object of a generation is a function of the ledgers covered and the shard
/// layout alone, so a full build, a single-process build and an extension
/// over the same ledgers write the same bytes. Manifests written while they
/// still recorded `map_job_count` read as before (the field is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceManifest {
    /// [`REDUCE_FORMAT`].
    pub format: String,
    /// Reduce job index.
    pub job: u32,
    /// Workers (shards) of this job.
    pub worker_count: u32,
    /// Shard files written.
    pub files: Vec<FileEntry>,
    /// Every ledger of this range was read into the index (checked against
    /// the map manifests); `None` for an index with no ledgers, and in
    /// manifests written before the field existed.
    #[serde(default)]
    pub covered: Option<LedgerRange>,
}

/// Reads and parses a JSON manifest; `Ok(None)` when absent.
pub async fn read_json<T: for<'de> Deserialize<'de>>(
    root: &StoreRoot,
    rel: &str,
) -> Result<Option<T>> {
    match root.get_opt(rel).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::corrupt(root.describe(rel), format!("invalid manifest JSON: {e}"))),
    }
}

/// Serializes a manifest (pretty, stable field order).
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(value).expect("manifests serialize");
    v.push(b'\n');
    v
}
