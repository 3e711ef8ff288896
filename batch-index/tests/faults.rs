//! Failure behaviour: a map job that crashes mid-way leaves nothing a reducer
//! accepts and a rerun gives the same final index; a corrupted partial file
//! fails reduce with a message naming it; bad configuration fails clearly.

mod process;

use std::path::Path;

use process::{TESTNET, assert_ok, assert_same_index, batch_index, final_index_files, fixture};

const MAP_JOBS: u32 = 3;

fn map_env(dir: &Path, job: u32) -> Vec<(&'static str, String)> {
    vec![
        ("JOB_INDEX_ENV", "JOB_COMPLETION_INDEX".to_string()),
        ("JOB_COMPLETION_INDEX", job.to_string()),
        ("FIRST_CHECKPOINT", "1410048".to_string()),
        ("BATCH_SIZE", "128".to_string()),
        // The index ends with the fixture, so job 2 (1410304-1410431) is
        // asked for 1410304-1410367 only.
        ("LAST_LEDGER", "1410367".to_string()),
        ("WORKER_COUNT", "2".to_string()),
        ("REDUCE_JOB_COUNT", "2".to_string()),
        (
            "TXMETA_SOURCE",
            fixture("stellar/testnet-lighthorizon")
                .to_str()
                .unwrap()
                .to_string(),
        ),
        ("INDEX_TARGET", dir.to_str().unwrap().to_string()),
        ("NETWORK_PASSPHRASE", TESTNET.to_string()),
    ]
}

fn reduce_env(dir: &Path, job: u32) -> Vec<(&'static str, String)> {
    vec![
        ("JOB_INDEX_ENV", "AWS_BATCH_JOB_ARRAY_INDEX".to_string()),
        ("AWS_BATCH_JOB_ARRAY_INDEX", job.to_string()),
        ("MAP_JOB_COUNT", MAP_JOBS.to_string()),
        ("REDUCE_JOB_COUNT", "2".to_string()),
        ("WORKER_COUNT", "2".to_string()),
        ("INDEX_SOURCE_ROOT", dir.to_str().unwrap().to_string()),
        ("INDEX_TARGET", dir.to_str().unwrap().to_string()),
    ]
}

fn full_run(dir: &Path) {
    for job in 0..MAP_JOBS {
        assert_ok(&batch_index(&["map"], &map_env(dir, job)), "map");
    }
    for job in 0..2 {
        assert_ok(&batch_index(&["reduce"], &reduce_env(dir, job)), "reduce");
    }
}

#[test]
fn map_killed_mid_way_then_rerun_gives_the_same_index() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    full_run(&clean);

    let dir = tmp.path().join("crashy");
    assert_ok(&batch_index(&["map"], &map_env(&dir, 0)), "map 0");
    // Job 1 dies (abort) right after its third output object.
    let mut env = map_env(&dir, 1);
    env.push(("BATCH_INDEX_CRASH_AFTER_OBJECTS", "3".to_string()));
    let out = batch_index(&["map"], &env);
    assert!(!out.status.success(), "the crash hook must kill the job");
    assert!(
        dir.join("job_1/accounts/part-0.bin").exists(),
        "it crashed after writing some outputs"
    );
    assert!(
        !dir.join("job_1/_SUCCESS").exists(),
        "a crashed job must not look complete"
    );
    assert_ok(&batch_index(&["map"], &map_env(&dir, 2)), "map 2");

    // Reduce refuses the incomplete job, naming it.
    let out = batch_index(&["reduce"], &reduce_env(&dir, 0));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("map job 1 has not finished") && err.contains("job_1/_SUCCESS"),
        "{err}"
    );
    assert!(!process::reduce_success_exists(&dir, 0));

    // Rerun the crashed job, then reduce: same bytes as the clean run.
    assert_ok(&batch_index(&["map"], &map_env(&dir, 1)), "map 1 rerun");
    for job in 0..2 {
        assert_ok(&batch_index(&["reduce"], &reduce_env(&dir, job)), "reduce");
    }
    assert_same_index(
        &final_index_files(&clean),
        &final_index_files(&dir),
        "after crash + rerun",
    );
    // A second reduce is a no-op.
    let out = batch_index(&["reduce"], &reduce_env(&dir, 0));
    assert_ok(&out, "reduce rerun");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already done"));
}

#[test]
fn corrupted_partial_fails_reduce_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for job in 0..MAP_JOBS {
        assert_ok(&batch_index(&["map"], &map_env(dir, job)), "map");
    }
    let victim = dir.join("job_2/accounts/part-1.bin");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();

    let out = batch_index(&["reduce"], &reduce_env(dir, 1));
    assert!(
        !out.status.success(),
        "reduce must fail on a corrupted partial"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("job_2/accounts/part-1.bin") && err.contains("SHA-256"),
        "{err}"
    );
    assert!(!process::reduce_success_exists(dir, 1));
    // The other reduce job does not read that file and succeeds.
    assert_ok(&batch_index(&["reduce"], &reduce_env(dir, 0)), "reduce 0");

    // Truncation is caught too.
    std::fs::write(&victim, &bytes[..10]).unwrap();
    let err =
        String::from_utf8_lossy(&batch_index(&["reduce"], &reduce_env(dir, 1)).stderr).into_owned();
    assert!(
        err.contains("job_2/accounts/part-1.bin") && err.contains("size"),
        "{err}"
    );
}

#[test]
fn bad_configuration_is_reported_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let check = |env: Vec<(&'static str, String)>, needle: &str| {
        let out = batch_index(&["map"], &env);
        assert!(
            !out.status.success(),
            "expected failure mentioning {needle}"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    };
    let mut env = map_env(dir, 0);
    env.retain(|(k, _)| *k != "JOB_COMPLETION_INDEX");
    check(env, "JOB_COMPLETION_INDEX");

    let mut env = map_env(dir, 0);
    env.push(("BATCH_SIZE", "100".to_string()));
    check(env, "BATCH_SIZE=100");

    let mut env = map_env(dir, 0);
    env.push((
        "NETWORK_PASSPHRASE",
        "Public Global Stellar Network ; September 2015".to_string(),
    ));
    check(env, "NETWORK_PASSPHRASE");

    let mut env = map_env(dir, 0);
    env.push((
        "TXMETA_SOURCE",
        dir.join("nothing-here").to_str().unwrap().to_string(),
    ));
    check(env, "neither a meta-archive");

    let mut env = map_env(dir, 0);
    env.push(("MODULES", "accounts,bogus".to_string()));
    check(env, "bogus");

    let mut env = map_env(dir, 0);
    env.push(("TXMETA_SOURCE", "s3://user:hunter2@bucket/x".to_string()));
    env.push(("AWS_ENDPOINT", "http://127.0.0.1:9".to_string()));
    env.push(("AWS_ALLOW_HTTP", "true".to_string()));
    env.push(("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".to_string()));
    env.push(("AWS_SECRET_ACCESS_KEY", "topsecretvalue".to_string()));
    env.push(("AWS_REGION", "us-east-1".to_string()));
    let out = batch_index(&["map"], &env);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("hunter2") && !err.contains("topsecretvalue"),
        "secret leaked: {err}"
    );

    let out = batch_index(&["reduce"], &reduce_env(dir, 5));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDUCE_JOB_COUNT=2"));
}

/// A fake S3 endpoint: answers each request (one per connection) with the
/// status chosen by `policy(request_number)` and records the request lines.
fn fake_s3(policy: fn(usize) -> u16) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n")
                && conn.read(&mut byte).map(|k| k == 1).unwrap_or(false)
            {
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            log.lock().unwrap().push(line);
            let status = policy(n);
            let body = format!("<Error><Code>{status}</Code></Error>");
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (endpoint, seen)
}

fn s3_map_env(dir: &Path, endpoint: &str) -> Vec<(&'static str, String)> {
    let mut env = map_env(dir, 0);
    env.push(("TXMETA_SOURCE", "s3://bucket/ledgers".to_string()));
    env.push(("AWS_ENDPOINT", endpoint.to_string()));
    env.push(("AWS_ALLOW_HTTP", "true".to_string()));
    env.push(("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".to_string()));
    env.push(("AWS_SECRET_ACCESS_KEY", "topsecretvalue".to_string()));
    env.push(("AWS_REGION", "us-east-1".to_string()));
    env
}

#[test]
fn transient_s3_errors_are_retried_a_bounded_number_of_times() {
    let tmp = tempfile::tempdir().unwrap();
    // Always 503: the first read is tried 1 + 6 times, then the job fails.
    let (endpoint, seen) = fake_s3(|_| 503);
    let out = batch_index(&["map"], &s3_map_env(tmp.path(), &endpoint));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("s3://bucket/ledgers/latest") && err.contains("after 6 retries"),
        "{err}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(
        seen.iter()
            .all(|l| l.starts_with("GET /bucket/ledgers/latest")),
        "{seen:?}"
    );

    // Two 503s then 404: the read is retried, then the real answer is used
    // (no `latest`, so the source is listed as a data lake, which 404s too).
    let (endpoint, seen) = fake_s3(|n| if n < 2 { 503 } else { 404 });
    let out = batch_index(&["map"], &s3_map_env(tmp.path(), &endpoint));
    assert!(!out.status.success());
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen[..3]
            .iter()
            .all(|l| l.starts_with("GET /bucket/ledgers/latest")),
        "{seen:?}"
    );
    assert!(
        seen[3].contains("list-type=2"),
        "after the retried GET comes the listing: {seen:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("topsecretvalue"), "{err}");
}
