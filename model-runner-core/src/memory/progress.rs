//! [`MemoryProgressBoard`]: the in-process [`ProgressBoard`], for the workers and the API of
//! one process (`model-runner all`, embedders, tests). Processes share Redis instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::ports::{ProgressBoard, ProgressResult, RunProgress, check_ttl};
use crate::run::RunId;

/// A [`ProgressBoard`] in this process's memory. Entries expire by its [`Clock`] (give a
/// [`TokioClock`](crate::clock::TokioClock) to expire them on paused time); expired entries are
/// dropped on the next publish, so it holds about as many entries as runs are running.
#[derive(Debug, Clone)]
pub struct MemoryProgressBoard {
    entries: Arc<Mutex<HashMap<RunId, Entry>>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    progress: RunProgress,
    expires_at: DateTime<Utc>,
}

impl MemoryProgressBoard {
    /// An empty board on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::shared())
    }

    /// An empty board whose entries expire by `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            entries: Arc::default(),
            clock,
        }
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Entry>> {
        // A panic while holding the lock leaves the map whole (every update is one insert or
        // retain), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemoryProgressBoard {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ProgressBoard for MemoryProgressBoard {
    async fn publish(&self, entries: &[(RunId, RunProgress)], ttl: Duration) -> ProgressResult<()> {
        check_ttl(ttl)?;
        let now = self.clock.now();
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let mut board = self.lock();
        board.retain(|_, e| e.expires_at > now);
        for &(run, progress) in entries {
            board.insert(
                run,
                Entry {
                    progress,
                    expires_at,
                },
            );
        }
        Ok(())
    }

    async fn read(&self, runs: &[RunId]) -> ProgressResult<Vec<Option<RunProgress>>> {
        let now = self.clock.now();
        let entries = self.lock();
        Ok(runs
            .iter()
            .map(|id| {
                entries
                    .get(id)
                    .filter(|e| e.expires_at > now)
                    .map(|e| e.progress)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;

    fn progress(attempt: u32, done: u64) -> RunProgress {
        RunProgress {
            attempt,
            blocks_done: done,
            blocks_total: 100,
            updated_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn memory_progress_board_conformance() {
        crate::conformance::progress::run_all(&MemoryProgressBoard::new()).await;
    }

    /// An entry lives exactly its TTL on the board's clock: there at TTL - 1 ms, gone at TTL;
    /// expired entries are dropped by the next publish, so a dead worker's runs do not pile up.
    #[tokio::test(start_paused = true)]
    async fn entries_expire_by_the_boards_clock() {
        let board = MemoryProgressBoard::with_clock(TokioClock::shared());
        let (dead, alive) = (RunId::new(), RunId::new());
        let p = progress(1, 10);
        board
            .publish(&[(dead, p)], Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert_eq!(board.read(&[dead]).await.unwrap(), vec![Some(p)]);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(board.read(&[dead]).await.unwrap(), vec![None]);
        assert_eq!(board.len(), 1, "dropped lazily");
        board
            .publish(&[(alive, progress(1, 5))], Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(board.len(), 1, "the publish dropped the expired entry");
        let read = board.read(&[alive, dead]).await.unwrap();
        assert_eq!(read[0].map(|p| p.blocks_done), Some(5));
        assert_eq!(read[1], None);
    }

    /// `live` shows an entry only for a running run whose current attempt published it: not
    /// for a queued or finished run, nor an entry of an earlier attempt.
    #[tokio::test]
    async fn live_shows_only_the_current_attempt_of_running_runs() {
        use crate::ports::ProgressBoardExt;
        use crate::run::{ModelRun, RunState};
        let board = MemoryProgressBoard::new();
        let spec = crate::conformance::new_run("m", "ethereum", 0, 99);
        let run = |state: RunState, attempt: u32| {
            let mut r = ModelRun::new(spec.clone(), None, Utc::now());
            r.state = state;
            r.attempt = attempt;
            r
        };
        let runs = [
            run(RunState::Running, 2),
            run(RunState::Running, 3),
            run(RunState::Succeeded, 1),
            run(RunState::Queued, 1),
            run(RunState::Running, 1),
        ];
        let ttl = Duration::from_secs(60);
        board
            .publish(&[(runs[0].id, progress(2, 40))], ttl)
            .await
            .unwrap();
        // An earlier attempt's worker published last for this one.
        board
            .publish(&[(runs[1].id, progress(2, 70))], ttl)
            .await
            .unwrap();
        board
            .publish(&[(runs[2].id, progress(1, 100))], ttl)
            .await
            .unwrap();
        board
            .publish(&[(runs[3].id, progress(1, 5))], ttl)
            .await
            .unwrap();
        let live: Vec<Option<u64>> = board
            .live(&runs)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.map(|p| p.blocks_done))
            .collect();
        assert_eq!(live, vec![Some(40), None, None, None, None]);
        assert!(board.live(&[]).await.unwrap().is_empty());
    }

    /// Clones share their entries: the worker's copy and the API's copy are one board.
    #[tokio::test]
    async fn clones_share_entries() {
        let board = MemoryProgressBoard::new();
        let other = board.clone();
        let run = RunId::new();
        let p = progress(2, 42);
        board
            .publish(&[(run, p)], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(other.read(&[run]).await.unwrap(), vec![Some(p)]);
    }
}
