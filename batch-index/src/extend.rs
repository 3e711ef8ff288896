//! Incremental indexing: extending a published index to new ledgers
//! without rebuilding it from the start.
//!
//! ```text
//! INDEX_TARGET/layout.json ──> gen-G/  covers A..B   (the base: the generation served now)
//! source B+1..C ──map jobs (FIRST_CHECKPOINT = B+1, LAST_LEDGER = C)──> MAP_ROOT/job_<i>/
//! gen-G/{accounts,transactions}/<j>-*.shard  ─┐
//! MAP_ROOT/job_*/…/part-<j>.bin              ─┴─reduce job j, extend──> gen-E/  covers A..C
//! the last reduce job of gen-E ──> INDEX_TARGET/layout.json names gen-E (one atomic put)
//! ```
//!
//! Reduce job `j` of an extension reads the base's shards `<j>-<w>` (each
//! checked against the base's `_SUCCESS/reduce-<j>.json`), routes their
//! records to the same workers (an extension keeps the base's
//! `REDUCE_JOB_COUNT` × `WORKER_COUNT`, so an account's shard does not
//! move), and merges them with partition `j` of the new map jobs exactly as
//! a full reduce merges map jobs. Checkpoint sets are unions and a
//! transaction keeps its first position, so merging the base (ledgers
//! `A..B`) with the new map jobs (`B+1..C`) gives the same sets as merging
//! map jobs over `A..C`; shard encoding is a pure function of those sets
//! and reduce manifests state only what the generation holds, so every
//! object of the new generation has the bytes a full rebuild over `A..C`
//! writes. Only the generation's name differs: it is a hash of the base's
//! reduce manifests (its content: shard sizes, SHA-256 and range) and the
//! new map manifests ([`crate::reduce::extension_generation`]), so every
//! reduce job of the extension agrees on it even if the pointer is replaced
//! by a rebuild of the same content meanwhile.
//!
//! Whether a reduce job extends, has nothing to do, or refuses is decided by
//! one pure function of the base's range and the new map jobs' range,
//! [`plan_extension`]:
//!
//! | new map jobs cover `X..Y`, base covers `A..B`  | step |
//! | --- | --- |
//! | `X = B + 1` | [`ExtensionStep::Extend`] to `A..Y` |
//! | `A <= X` and `Y <= B` (already in the index: a rerun after publishing) | [`ExtensionStep::AlreadyCovered`] |
//! | `X > B + 1` | refused ([`Error::Incomplete`]): ledgers `B+1..X-1` are missing |
//! | any other overlap, or `X < A` | refused ([`Error::InvalidInput`]): map again from `B + 1` |
//! | base range unknown or empty, or no new ledgers | refused ([`Error::InvalidInput`]) |

use crate::account::Owner;
use crate::error::{Error, Result};
use crate::manifest::LedgerRange;
use crate::partial::AccountRecord;
use crate::reader::Generation;
use crate::reduce::{
    account_shard, decode_account_shard, decode_transaction_shard, reduce_success,
    transaction_shard,
};
use crate::store::StoreRoot;

/// What an extension's reduce job does, decided by [`plan_extension`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionStep {
    /// Merge the base with the new map jobs into a generation covering this
    /// range (the base's first ledger to the new map jobs' last).
    Extend {
        /// The range the extended index covers.
        covered: LedgerRange,
    },
    /// The index the pointer names already holds every ledger the new map
    /// jobs cover (this extension, or a rebuild, was published): nothing to do.
    AlreadyCovered,
}

/// Decides what extending an index covering `base` with map jobs covering
/// `new` does (the table in the module docs). `base` is `None` when the
/// index states no range (empty, or built before ranges were recorded),
/// `new` when the map jobs were asked for no ledger.
pub fn plan_extension(
    base: Option<LedgerRange>,
    new: Option<LedgerRange>,
) -> Result<ExtensionStep> {
    let Some(base) = base else {
        return Err(Error::invalid(
            "the index states no covered range (it is empty, or was built before ranges were \
             recorded): it cannot be extended; build it in full",
        ));
    };
    let Some(new) = new else {
        return Err(Error::invalid(format!(
            "the new map jobs cover no ledgers: nothing to extend the index ({base}) with"
        )));
    };
    let next = u64::from(base.last) + 1;
    let first = u64::from(new.first);
    if first == next {
        return Ok(ExtensionStep::Extend {
            covered: LedgerRange {
                first: base.first,
                last: new.last,
            },
        });
    }
    if first > next {
        return Err(Error::Incomplete(format!(
            "the index covers ledgers {base} and the new map jobs cover {new}: ledgers {next}-{} \
             are missing; run the map jobs with FIRST_CHECKPOINT={next}",
            new.first - 1
        )));
    }
    if base.first <= new.first && new.last <= base.last {
        return Ok(ExtensionStep::AlreadyCovered);
    }
    Err(Error::invalid(format!(
        "the new map jobs cover {new}, which overlaps or precedes the index's {base}: an \
         extension starts right after the index, run the map jobs with FIRST_CHECKPOINT={next}"
    )))
}

/// Opens the generation the pointer at `target` publishes as the base of an
/// extension sharded `reduce_jobs` × `workers`; refuses another layout.
pub async fn open_base(target: &StoreRoot, reduce_jobs: u32, workers: u32) -> Result<Generation> {
    let base = Generation::published(target).await?;
    let (r, w) = (base.layout.reduce_job_count, base.layout.worker_count);
    if (r, w) != (reduce_jobs, workers) {
        return Err(Error::invalid(format!(
            "the index at {} is sharded for REDUCE_JOB_COUNT={r} WORKER_COUNT={w}, but this \
             extension runs with REDUCE_JOB_COUNT={reduce_jobs} WORKER_COUNT={workers}: an \
             extension keeps the index's layout (rebuild in full to change it)",
            target.describe("")
        )));
    }
    Ok(base)
}

/// The records of one worker's shards of the base.
pub type BaseShard = (Vec<AccountRecord>, Vec<([u8; 32], u64)>);

/// Reads reduce job `job`'s shards of `base`, one [`BaseShard`] per worker
/// in worker order, each checked against the base's manifest (size and
/// SHA-256) and every record against its owner.
pub async fn read_base_shards(base: &Generation, job: u32) -> Result<Vec<BaseShard>> {
    let (reduce_jobs, workers) = (base.layout.reduce_job_count, base.layout.worker_count);
    let manifest = base
        .manifests
        .get(job as usize)
        .ok_or_else(|| Error::NotFound(base.root.describe(&reduce_success(job))))?;
    let mut out = Vec::with_capacity(workers as usize);
    for worker in 0..workers {
        let owner = Owner { job, worker };
        let mut bytes = Vec::with_capacity(2);
        for rel in [account_shard(owner), transaction_shard(owner)] {
            let described = base.root.describe(&rel);
            let entry = manifest
                .files
                .iter()
                .find(|f| f.path == rel)
                .ok_or_else(|| {
                    Error::corrupt(
                        base.root.describe(&reduce_success(job)),
                        format!("lists no {rel}"),
                    )
                })?;
            let b = base.root.get(&rel).await?;
            entry.verify(&described, &b)?;
            bytes.push((described, b));
        }
        let (tx_name, tx_bytes) = bytes.pop().expect("two shards");
        let (acc_name, acc_bytes) = bytes.pop().expect("two shards");
        let decoded = tokio::task::spawn_blocking(move || {
            let accounts =
                decode_account_shard(&acc_bytes).map_err(|e| Error::corrupt(&acc_name, e))?;
            for (text, _) in &accounts {
                if Owner::of_account(text, reduce_jobs, workers) != owner {
                    return Err(Error::corrupt(
                        &acc_name,
                        format!("account `{text}` does not belong to this shard"),
                    ));
                }
            }
            let txs =
                decode_transaction_shard(&tx_bytes).map_err(|e| Error::corrupt(&tx_name, e))?;
            for (h, _) in &txs {
                if Owner::of_transaction(h, reduce_jobs, workers) != owner {
                    return Err(Error::corrupt(
                        &tx_name,
                        format!(
                            "transaction {} does not belong to this shard",
                            hex::encode(h)
                        ),
                    ));
                }
            }
            Ok::<_, Error>((accounts, txs))
        })
        .await
        .map_err(|e| {
            Error::JobFailed(format!("reduce job {job}: base decode task failed: {e}"))
        })??;
        out.push(decoded);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base range, new map jobs' range, the step (or a piece of the error).
    type Case = (
        Option<LedgerRange>,
        Option<LedgerRange>,
        Result<ExtensionStep, String>,
    );

    fn r(first: u32, last: u32) -> Option<LedgerRange> {
        Some(LedgerRange { first, last })
    }

    /// Every case of the decision table, each with its outcome.
    #[test]
    fn every_case_of_the_decision_table() {
        let base = r(100, 199);
        let extend = |last| {
            Ok::<_, String>(ExtensionStep::Extend {
                covered: LedgerRange { first: 100, last },
            })
        };
        let cases: Vec<Case> =
            vec![
            // Contiguous: extend, whatever the new range's length.
            (base, r(200, 263), extend(263)),
            (base, r(200, 200), extend(200)),
            // Already in the index (a rerun after the extension was published).
            (base, r(150, 199), Ok(ExtensionStep::AlreadyCovered)),
            (base, r(100, 199), Ok(ExtensionStep::AlreadyCovered)),
            // A gap is refused, naming it.
            (
                base,
                r(264, 327),
                Err("incomplete coverage: the index covers ledgers 100-199 and the new map jobs \
                     cover 264-327: ledgers 200-263 are missing; run the map jobs with \
                     FIRST_CHECKPOINT=200"
                    .into()),
            ),
            (base, r(201, 201), Err("ledgers 200-200 are missing".into())),
            // Overlaps and ranges before the index are refused.
            (base, r(150, 263), Err("overlaps or precedes".into())),
            (base, r(50, 99), Err("overlaps or precedes".into())),
            (base, r(50, 150), Err("overlaps or precedes".into())),
            // Nothing to extend, or nothing to extend with.
            (None, r(200, 263), Err("states no covered range".into())),
            (base, None, Err("cover no ledgers".into())),
        ];
        for (base, new, want) in cases {
            let got = plan_extension(base, new).map_err(|e| e.to_string());
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{base:?} + {new:?}"),
                (Err(g), Err(w)) => assert!(g.contains(w.as_str()), "{base:?} + {new:?}: {g}"),
                _ => panic!("{base:?} + {new:?}: got {got:?}, want {want:?}"),
            }
        }
        // The gap is an incompleteness (rerun the map jobs), overlaps are
        // bad input.
        assert!(matches!(
            plan_extension(base, r(264, 327)),
            Err(Error::Incomplete(_))
        ));
        assert!(matches!(
            plan_extension(base, r(150, 263)),
            Err(Error::InvalidInput(_))
        ));
        // The last ledger a u32 holds cannot be extended past, and is no overflow.
        assert_eq!(
            plan_extension(r(0, u32::MAX), r(5, 6)).unwrap(),
            ExtensionStep::AlreadyCovered
        );
    }
}
