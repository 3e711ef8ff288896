//! `--progress` on the command line: `runs list` / `runs show` add a running run's live
//! progress from the board (published here by another process, this test, through Redis at
//! `REDIS_URL`, feature `redis`); a board that cannot be reached leaves the listing working,
//! with a warning that never shows the password; a bad board URL stops the API naming it.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_model-runner");

/// The binary with `args`, run in `dir`, with none of the caller's `MODEL_RUNNER_*` variables.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("MODEL_RUNNER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("MODEL_RUNNER_SINK", "memory://");
    cmd.output().expect("running model-runner")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Succeeds and returns (stdout, stderr), or fails the test with the command's output.
fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = run_in(dir, args);
    assert!(
        out.status.success(),
        "model-runner {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

#[test]
fn an_unreachable_board_leaves_runs_listed_and_a_bad_one_stops_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    let (created, _) = ok(
        dir.path(),
        &["--store", &store, "backfill", "ethereum:block_stats:0-199"],
    );
    assert_eq!(created.lines().count(), 2, "{created}");
    // Port 1 on the loopback: nothing listens (and without the `redis` feature: not built in).
    let unreachable = "redis://runner:s3cret@127.0.0.1:1/0";
    let (listed, warned) = ok(
        dir.path(),
        &["--store", &store, "runs", "list", "--progress", unreachable],
    );
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        warned.contains("warning") && warned.contains("progress"),
        "{warned}"
    );
    assert!(!warned.contains("s3cret"), "{warned}");

    // The API's error when started with `--progress board`.
    let api_refuses = |board: &str| {
        let args = [
            "--store",
            &store,
            "api",
            "--api-addr",
            "127.0.0.1:0",
            "--progress",
            board,
        ];
        let out = run_in(dir.path(), &args);
        assert!(
            !out.status.success(),
            "the API started with --progress {board}"
        );
        text(&out.stderr)
    };
    let err = api_refuses("gopher://u:s3cret@h");
    assert!(err.contains("unsupported progress board URL"), "{err}");
    assert!(err.contains("--progress"), "names the flag: {err}");
    assert!(!err.contains("s3cret"), "{err}");
    // An in-process board shares nothing between a lone API and the workers.
    let err = api_refuses("memory://");
    assert!(
        err.contains("--progress memory://") && err.contains("redis://"),
        "{err}"
    );
}

/// What a worker publishes to Redis, `runs list` and `runs show` of another process show on
/// the running run of the current attempt; not on a run that is not running.
#[cfg(feature = "redis")]
#[tokio::test]
async fn runs_list_and_show_carry_the_live_progress_of_running_runs() {
    use std::time::Duration;

    use model_runner_adapters::redis_progress::RedisProgressBoard;
    use model_runner_adapters::sqlite::SqliteRunStore;
    use model_runner_core::ports::{ProgressBoard, RunProgress, RunStoreExt};
    use model_runner_core::{RunEvent, RunId, RunState};

    let Ok(redis) = std::env::var("REDIS_URL") else {
        eprintln!(
            "REDIS_URL is not set: the live progress CLI test is not configured (CI sets it)"
        );
        return;
    };
    let sep = if redis.contains('?') { '&' } else { '?' };
    let url = format!(
        "{redis}{sep}prefix=model-runner-test:cli-progress:{}",
        uuid::Uuid::new_v4()
    );
    let board = RedisProgressBoard::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("REDIS_URL is set but the server does not answer: {e}"));

    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/runs.db", dir.path().display());
    let (created, _) = ok(
        dir.path(),
        &[
            "--store",
            &store_url,
            "backfill",
            "ethereum:block_stats:0-199",
        ],
    );
    let ids: Vec<RunId> = created
        .lines()
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    let (running, queued) = (ids[0], ids[1]);
    let store = SqliteRunStore::connect(&store_url).await.unwrap();
    for id in [running, queued] {
        store
            .transition(id, RunState::Pending, 1, RunEvent::Enqueue)
            .await
            .unwrap();
    }
    let lease_until = chrono::Utc::now() + chrono::Duration::minutes(5);
    store
        .transition(
            running,
            RunState::Queued,
            1,
            RunEvent::Start {
                owner: "w".into(),
                lease_until,
            },
        )
        .await
        .unwrap();
    let published = RunProgress {
        attempt: 1,
        blocks_done: 37,
        blocks_total: 100,
        updated_at: chrono::Utc::now(),
    };
    for id in [running, queued] {
        board
            .publish(&[(id, published)], Duration::from_secs(60))
            .await
            .unwrap();
    }

    let (shown, _) = ok(
        dir.path(),
        &[
            "--store",
            &store_url,
            "--progress",
            &url,
            "runs",
            "show",
            &running.to_string(),
        ],
    );
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["progress"]["blocks_done"], 37, "{shown:#}");
    assert_eq!(shown["progress"]["blocks_total"], 100, "{shown:#}");
    assert_eq!(shown["blocks_done"], 0, "the store's own field: {shown:#}");

    let (listed, _) = ok(
        dir.path(),
        &["--store", &store_url, "--progress", &url, "runs", "list"],
    );
    let listed: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: RunId| {
        listed
            .iter()
            .find(|r| r["id"] == id.to_string())
            .unwrap_or_else(|| panic!("{id} listed: {listed:#?}"))
    };
    assert_eq!(of(running)["progress"]["blocks_done"], 37);
    assert!(
        of(queued).get("progress").is_none(),
        "a queued run shows no live progress: {:#}",
        of(queued)
    );
    // Without --progress: the store's fields only.
    let (plain, _) = ok(
        dir.path(),
        &["--store", &store_url, "runs", "show", &running.to_string()],
    );
    assert!(!plain.contains("\"progress\""), "{plain}");
}
