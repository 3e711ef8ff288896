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

/// Ledgers `first..=last` of one checkpoint: the whole checkpoint or a part
/// of it (a job range need not start or end on a checkpoint boundary). What a
/// [`crate::source::LedgerSource`] reads in one
/// [`checkpoint_facts`](crate::source::LedgerSource::checkpoint_facts) call.
///
/// Contract, checked by [`CheckpointPart::new`]: `first <= last`, and both
/// ledgers lie in [`CheckpointPart::checkpoint`] under the chain's
/// [`CheckpointSpan`], so every ledger between them does too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPart {
    checkpoint: u32,
    first: u32,
    last: u32,
}

impl CheckpointPart {
    /// Ledgers `first..=last` under `span`'s numbering, their checkpoint
    /// derived from them ([`CheckpointSpan::checkpoint_of`]). Fails when
    /// `first > last` or when the range crosses a checkpoint boundary (use
    /// [`split_by_checkpoint`] for a range of several checkpoints).
    pub fn new(span: CheckpointSpan, first: u32, last: u32) -> Result<Self> {
        if first > last {
            return Err(Error::invalid(format!(
                "ledger range {first}..={last} is empty (first > last)"
            )));
        }
        let checkpoint = span.checkpoint_of(first);
        if span.checkpoint_of(last) != checkpoint {
            return Err(Error::invalid(format!(
                "ledgers {first}..={last} are not all in one checkpoint of {} ledgers: \
                 {first} is in checkpoint {checkpoint}, {last} in {}",
                span.ledgers(),
                span.checkpoint_of(last)
            )));
        }
        Ok(CheckpointPart {
            checkpoint,
            first,
            last,
        })
    }

    /// The checkpoint holding every ledger of the part.
    pub fn checkpoint(self) -> u32 {
        self.checkpoint
    }

    /// First ledger (at most [`CheckpointPart::last`]).
    pub fn first(self) -> u32 {
        self.first
    }

    /// Last ledger (inclusive).
    pub fn last(self) -> u32 {
        self.last
    }
}

/// Splits `[first, last]` into its per-checkpoint parts, in order; empty
/// when `first > last`.
pub fn split_by_checkpoint(span: CheckpointSpan, first: u32, last: u32) -> Vec<CheckpointPart> {
    let mut out = Vec::new();
    let mut l = first as u64;
    while l <= last as u64 {
        let checkpoint = span.checkpoint_of(l as u32);
        let (_, cp_last) = span.ledgers_of(checkpoint);
        let b = (cp_last as u64).min(last as u64);
        // `l <= b`, both in `checkpoint`: the part's contract holds.
        out.push(CheckpointPart {
            checkpoint,
            first: l as u32,
            last: b as u32,
        });
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
            parts
                .iter()
                .map(|p| (p.checkpoint(), p.first(), p.last()))
                .collect::<Vec<_>>(),
            vec![(1, 60, 63), (2, 64, 127), (3, 128, 191), (4, 192, 200)]
        );
        for p in parts {
            assert_eq!(CheckpointPart::new(s, p.first(), p.last()).unwrap(), p);
        }
        assert!(split_by_checkpoint(s, 201, 200).is_empty());
    }

    #[test]
    fn checkpoint_parts_lie_in_one_checkpoint() {
        let s = CheckpointSpan::new(STELLAR_SPAN).unwrap();
        let whole = CheckpointPart::new(s, 1410048, 1410111).unwrap();
        assert_eq!(
            (whole.checkpoint(), whole.first(), whole.last()),
            (22033, 1410048, 1410111)
        );
        let one = CheckpointPart::new(s, 53312000, 53312000).unwrap();
        assert_eq!(one.checkpoint(), 1 + 53312000 / 64);

        let e = CheckpointPart::new(s, 100, 99).unwrap_err().to_string();
        assert!(e.contains("first > last"), "{e}");
        // 63 is the last ledger of checkpoint 1, 64 the first of checkpoint 2.
        let e = CheckpointPart::new(s, 63, 64).unwrap_err().to_string();
        assert!(e.contains("checkpoint 1") && e.contains("in 2"), "{e}");
        assert!(CheckpointPart::new(s, 0, 63).is_ok());
    }
}
