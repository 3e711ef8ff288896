//! The [`ProgressBoard`] conformance suite: what was published is read back whole, the last
//! publish wins, one publish carries many runs, reads answer in order, runs are independent, entries vanish after their TTL,
//! a zero TTL is refused. Run ids are fresh (UUID v7), so the suite runs in parallel against a
//! shared server.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ports::{ProgressBoard, ProgressError, RunProgress};
use crate::run::RunId;

/// The TTL of entries that must outlive the suite.
const LONG: Duration = Duration::from_secs(600);

/// Runs every case against `board`. The expiry case waits (real time) for a one-second TTL to
/// pass, polling up to ten seconds.
pub async fn run_all(board: &impl ProgressBoard) {
    empty_read_is_empty(board).await;
    unknown_run_is_none(board).await;
    publish_then_read(board).await;
    last_publish_wins(board).await;
    one_publish_carries_many_runs(board).await;
    reads_answer_in_order(board).await;
    runs_are_independent(board).await;
    zero_ttl_is_refused(board).await;
    entries_vanish_after_their_ttl(board).await;
}

/// A progress with a sub-second timestamp, so a backend that drops precision is caught.
pub fn progress(attempt: u32, blocks_done: u64, blocks_total: u64) -> RunProgress {
    let updated_at: DateTime<Utc> = "2026-03-01T12:34:56.789123456Z"
        .parse()
        .expect("a valid time");
    RunProgress {
        attempt,
        blocks_done,
        blocks_total,
        updated_at,
    }
}

async fn publish(board: &impl ProgressBoard, run: RunId, p: &RunProgress, ttl: Duration) {
    board
        .publish(&[(run, *p)], ttl)
        .await
        .unwrap_or_else(|e| panic!("publish {run}: {e:?}"));
}

async fn read(board: &impl ProgressBoard, runs: &[RunId]) -> Vec<Option<RunProgress>> {
    let read = board
        .read(runs)
        .await
        .unwrap_or_else(|e| panic!("read {runs:?}: {e:?}"));
    assert_eq!(read.len(), runs.len(), "read MUST answer one entry per id");
    read
}

/// `read(&[])` MUST give an empty list.
pub async fn empty_read_is_empty(board: &impl ProgressBoard) {
    assert!(read(board, &[]).await.is_empty(), "read(&[]) MUST be empty");
}

/// A run never published MUST read `None`.
pub async fn unknown_run_is_none(board: &impl ProgressBoard) {
    assert_eq!(
        read(board, &[RunId::new()]).await,
        vec![None],
        "a run never published MUST read None"
    );
}

/// `read` MUST give every field as published.
pub async fn publish_then_read(board: &impl ProgressBoard) {
    let run = RunId::new();
    let p = progress(2, 1_500, 10_000);
    publish(board, run, &p, LONG).await;
    assert_eq!(
        read(board, &[run]).await,
        vec![Some(p)],
        "read MUST give the progress published, every field"
    );
}

/// A later publish MUST replace the earlier one, whatever its attempt.
pub async fn last_publish_wins(board: &impl ProgressBoard) {
    let run = RunId::new();
    publish(board, run, &progress(1, 10, 100), LONG).await;
    let later = progress(1, 60, 100);
    publish(board, run, &later, LONG).await;
    assert_eq!(
        read(board, &[run]).await,
        vec![Some(later)],
        "last publish wins"
    );
    // A stale worker of an earlier attempt still overwrites: readers check the attempt.
    let stale = progress(0, 5, 100);
    publish(board, run, &stale, LONG).await;
    assert_eq!(
        read(board, &[run]).await,
        vec![Some(stale)],
        "the last publish MUST win whatever its attempt"
    );
}

/// One publish MUST store every entry it carries, the later of two entries for one run
/// winning; an empty publish MUST succeed and change nothing.
pub async fn one_publish_carries_many_runs(board: &impl ProgressBoard) {
    let (a, b) = (RunId::new(), RunId::new());
    let (pa, pb) = (progress(1, 3, 30), progress(2, 8, 80));
    board
        .publish(&[(a, progress(1, 1, 30)), (b, pb), (a, pa)], LONG)
        .await
        .expect("publish of three entries");
    board.publish(&[], LONG).await.expect("publish of none");
    assert_eq!(
        read(board, &[a, b]).await,
        vec![Some(pa), Some(pb)],
        "one publish MUST store each run's last entry"
    );
}

/// `read` MUST answer in the order of the ids, duplicates included, `None` where nothing lives.
pub async fn reads_answer_in_order(board: &impl ProgressBoard) {
    let runs: Vec<RunId> = (0..5).map(|_| RunId::new()).collect();
    for (i, run) in runs.iter().enumerate() {
        if i != 2 {
            publish(board, *run, &progress(1, i as u64, 10), LONG).await;
        }
    }
    let asked = [runs[4], runs[0], runs[2], runs[4], runs[3], runs[1]];
    let got: Vec<Option<u64>> = read(board, &asked)
        .await
        .into_iter()
        .map(|p| p.map(|p| p.blocks_done))
        .collect();
    assert_eq!(
        got,
        vec![Some(4), Some(0), None, Some(4), Some(3), Some(1)],
        "read MUST answer in the order asked, duplicates included"
    );
}

/// Publishing one run MUST NOT change another's entry.
pub async fn runs_are_independent(board: &impl ProgressBoard) {
    let (a, b) = (RunId::new(), RunId::new());
    let pa = progress(1, 7, 70);
    publish(board, a, &pa, LONG).await;
    publish(board, b, &progress(3, 9, 90), LONG).await;
    assert_eq!(
        read(board, &[a]).await,
        vec![Some(pa)],
        "publishing one run MUST NOT change another"
    );
}

/// A zero TTL MUST be `InvalidInput`, and publish nothing.
pub async fn zero_ttl_is_refused(board: &impl ProgressBoard) {
    let run = RunId::new();
    let err = board
        .publish(&[(run, progress(1, 1, 2))], Duration::ZERO)
        .await
        .expect_err("a zero ttl MUST be refused");
    assert!(
        matches!(err, ProgressError::InvalidInput(_)),
        "a zero ttl MUST be InvalidInput: {err:?}"
    );
    assert_eq!(read(board, &[run]).await, vec![None], "nothing published");
}

/// An entry MUST vanish once its TTL has passed; one with a longer TTL stays.
pub async fn entries_vanish_after_their_ttl(board: &impl ProgressBoard) {
    let (short, long) = (RunId::new(), RunId::new());
    publish(board, short, &progress(1, 1, 10), Duration::from_secs(1)).await;
    publish(board, long, &progress(1, 2, 10), LONG).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = read(board, &[short, long]).await;
        assert!(got[1].is_some(), "an entry MUST live until its ttl passes");
        if got[0].is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an entry with a 1 s ttl MUST vanish (still there after 10 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
