//! Checkpoint arithmetic shared by map, reduce and queries.
//!
//! Following lighthorizon, ledger (or block) `l` belongs to checkpoint
//! `1 + l / span`, where `span` is 64 for Stellar and configurable for
//! Ethereum. A map job covers `batch_size` ledgers starting at
//! `first + job * batch_size`.

use crate::error::{Error, Result};

/// Stellar's checkpoint frequency.
pub const STELLAR_SPAN: u32 = 64;

/// Checkpoint numbering for one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSpan(u32);

impl CheckpointSpan {
    /// A span of `ledgers` ledgers per checkpoint (must be positive).
    pub fn new(ledgers: u32) -> Result<Self> {
        if ledgers == 0 {
            return Err(Error::invalid(
                "checkpoint span must be at least 1 ledger/block",
            ));
        }
        Ok(CheckpointSpan(ledgers))
    }

    /// Ledgers per checkpoint.
    pub fn ledgers(self) -> u32 {
        self.0
    }

    /// Checkpoint of ledger `l`: `1 + l / span`.
    pub fn checkpoint_of(self, ledger: u32) -> u32 {
        1 + ledger / self.0
    }

    /// First and last ledger of checkpoint `c` (`c >= 1`).
    pub fn ledgers_of(self, checkpoint: u32) -> (u32, u32) {
        let first = (checkpoint.saturating_sub(1)) as u64 * self.0 as u64;
        let last = first + self.0 as u64 - 1;
        (
            first.min(u32::MAX as u64) as u32,
            last.min(u32::MAX as u64) as u32,
        )
    }
}

/// The ledger range of map job `job`, clamped to `latest`; `None` when the
/// job starts past the latest available ledger (it then has nothing to do).
pub fn job_range(first: u32, batch_size: u32, job: u32, latest: u32) -> Result<Option<(u32, u32)>> {
    if batch_size == 0 {
        return Err(Error::invalid("BATCH_SIZE must be at least 1"));
    }
    let start = first as u64 + job as u64 * batch_size as u64;
    if start > latest as u64 {
        return Ok(None);
    }
    let end = (start + batch_size as u64 - 1).min(latest as u64);
    Ok(Some((start as u32, end as u32)))
}

/// Splits `[first, last]` into per-checkpoint sub-ranges `(checkpoint, a, b)`.
pub fn split_by_checkpoint(span: CheckpointSpan, first: u32, last: u32) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    let mut l = first as u64;
    while l <= last as u64 {
        let cp = span.checkpoint_of(l as u32);
        let (_, cp_last) = span.ledgers_of(cp);
        let b = (cp_last as u64).min(last as u64);
        out.push((cp, l as u32, b as u32));
        l = b + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testnet_fixture_checkpoints() {
        let s = CheckpointSpan::new(STELLAR_SPAN).unwrap();
        assert_eq!(s.checkpoint_of(1410048), 22033);
        assert_eq!(s.checkpoint_of(1410367), 22037);
        assert_eq!(s.ledgers_of(22033), (1410048, 1410111));
    }

    #[test]
    fn job_ranges_clamp_and_end() {
        assert_eq!(job_range(100, 64, 0, 1000).unwrap(), Some((100, 163)));
        assert_eq!(job_range(100, 64, 1, 180).unwrap(), Some((164, 180)));
        assert_eq!(job_range(100, 64, 2, 180).unwrap(), None);
        assert!(job_range(0, 0, 0, 10).is_err());
    }

    #[test]
    fn split_covers_range_exactly() {
        let s = CheckpointSpan::new(64).unwrap();
        let parts = split_by_checkpoint(s, 60, 200);
        assert_eq!(
            parts,
            vec![(1, 60, 63), (2, 64, 127), (3, 128, 191), (4, 192, 200)]
        );
    }
}
