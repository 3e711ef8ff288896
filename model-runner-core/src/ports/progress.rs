//! [`ProgressBoard`]: the live progress of running runs, shared between processes.
//!
//! ```text
//! worker ──after each batch (throttled), on each heartbeat, at the end──▶ publish([(run, progress)], ttl)
//!                                                                                   │
//! API / CLI ──read([run ids])──▶ one progress (or none) per id ◀───────────────────┘
//! ```
//!
//! The run store stays the source of truth: its `blocks_done` is written with the heartbeats
//! (every few seconds) and is what the engine decides by. The board only shows what is
//! happening between two heartbeats, for people watching a run; nothing reads it to decide.
//! That is why an entry lives for a TTL and then vanishes by itself: a worker that dies leaves
//! no stale progress behind once the TTL (the worker uses its lease) has passed, and a reader
//! checks an entry's `attempt` against the store's run before showing it, so an entry left by
//! an earlier attempt is never shown as the current one's.
//!
//! The in-process adapter is [`MemoryProgressBoard`](crate::memory::MemoryProgressBoard)
//! (workers and API of one process); Redis (shared by every process) is in
//! `model-runner-adapters` (feature `redis`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::run::{ModelRun, RunId, RunState};

/// How far one attempt of a run has got, as its worker last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The attempt that made this progress; compare it with the store's run before showing it.
    pub attempt: u32,
    /// Blocks loaded and handed to the model so far by this attempt.
    pub blocks_done: u64,
    /// Blocks of the run.
    pub blocks_total: u64,
    /// When the worker published it (by the worker's clock).
    pub updated_at: DateTime<Utc>,
}

/// What a [`ProgressBoard`] answers: a value or a [`ProgressError`].
pub type ProgressResult<T> = Result<T, ProgressError>;

/// A progress board failure. Publishing is best effort: the worker logs a failure and goes
/// on; a reader shows the runs without live progress.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// The board's server is unreachable or busy (retryable).
    #[error("progress board unavailable ({adapter}): {message}")]
    Unavailable {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
    /// Bad configuration: an unknown URL scheme or parameter, a feature not compiled in.
    #[error("progress board: {0}")]
    InvalidInput(String),
    /// Any other backend failure.
    #[error("progress board {adapter}: {message}")]
    Backend {
        /// Adapter.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
}

/// Live progress of runs by [`RunId`], kept for a time to live.
///
/// # Contract
///
/// - After `publish(&[(run, p)], ttl)`, `read` of `run` MUST give `p` (every field as published)
///   until `ttl` has passed or the run's entry is published again, to every instance of the
///   adapter connected to the same backend (another process's included).
/// - A later `publish` of the same run MUST replace the earlier entry, whatever its attempt
///   (the last writer wins; readers compare `attempt` with the store's run).
/// - An entry MUST vanish once its `ttl` has passed (a backend MAY round `ttl` up to its
///   resolution, e.g. whole seconds); `read` then gives `None` for it.
/// - `read(ids)` MUST answer one entry per id, in the order of `ids` (duplicates included),
///   `None` for a run with no live entry; `read(&[])` MUST give an empty list.
/// - Entries of different runs MUST be independent: publishing one never changes another.
/// - A zero `ttl` MUST be an [`ProgressError::InvalidInput`]: an entry that vanishes at once
///   is a caller's mistake.
#[async_trait]
pub trait ProgressBoard: fmt::Debug + Send + Sync + 'static {
    /// Publishes each `(run, progress)` of `entries` as the live progress of `run`, kept for
    /// `ttl` (a later entry for the same run wins); `publish(&[], ttl)` does nothing.
    async fn publish(&self, entries: &[(RunId, RunProgress)], ttl: Duration) -> ProgressResult<()>;

    /// The live progress of each of `runs`, in order (`None` where there is none).
    async fn read(&self, runs: &[RunId]) -> ProgressResult<Vec<Option<RunProgress>>>;
}

/// `Arc<B>` and `Box<B>` are progress boards too, so wrappers compose.
macro_rules! forward_progress_board {
    ($($pointer:ident),*) => {$(
        #[async_trait]
        impl<T: ProgressBoard + ?Sized> ProgressBoard for $pointer<T> {
            async fn publish(
                &self,
                entries: &[(RunId, RunProgress)],
                ttl: Duration,
            ) -> ProgressResult<()> {
                (**self).publish(entries, ttl).await
            }
            async fn read(&self, runs: &[RunId]) -> ProgressResult<Vec<Option<RunProgress>>> {
                (**self).read(runs).await
            }
        }
    )*};
}
forward_progress_board!(Arc, Box);

/// Conveniences over any [`ProgressBoard`] (blanket-implemented).
#[async_trait]
pub trait ProgressBoardExt: ProgressBoard {
    /// The live progress of each of `runs`, in order: `Some` only for a run that is
    /// `running` in the store and whose entry was published by its current attempt, so a
    /// finished run or an entry left by an earlier attempt is never shown. Reads the entries of
    /// the running runs only, in one read.
    async fn live(&self, runs: &[ModelRun]) -> ProgressResult<Vec<Option<RunProgress>>> {
        let running: Vec<&ModelRun> = runs
            .iter()
            .filter(|r| r.state == RunState::Running)
            .collect();
        let mut out = vec![None; runs.len()];
        if running.is_empty() {
            return Ok(out);
        }
        let ids: Vec<RunId> = running.iter().map(|r| r.id).collect();
        let read = self.read(&ids).await?;
        let mut read = running.into_iter().zip(read);
        for (slot, run) in out.iter_mut().zip(runs) {
            if run.state != RunState::Running {
                continue;
            }
            if let Some((_, entry)) = read.next() {
                *slot = entry.filter(|p| p.attempt == run.attempt);
            }
        }
        Ok(out)
    }
}

impl<T: ProgressBoard + ?Sized> ProgressBoardExt for T {}

/// The [`ProgressError::InvalidInput`] of a zero `ttl`, the same text from every adapter.
pub fn check_ttl(ttl: Duration) -> ProgressResult<()> {
    if ttl.is_zero() {
        return Err(ProgressError::InvalidInput(
            "a progress entry's ttl must be more than zero".into(),
        ));
    }
    Ok(())
}
