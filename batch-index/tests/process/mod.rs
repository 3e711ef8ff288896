//! Shared pieces of the integration tests: fixture paths, spawning the real
//! `batch-index` binary with an explicit environment, and comparing index trees.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Testnet passphrase (the fixture ledgers are testnet ledgers).
pub const TESTNET: &str = "Test SDF Network ; September 2015";

/// Absolute path of a fixture.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Runs the binary with `args` and `envs` (job-contract variables that could
/// leak from the caller's environment are removed first).
pub fn batch_index(args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-index"));
    for var in [
        "JOB_INDEX_ENV",
        "AWS_BATCH_JOB_ARRAY_INDEX",
        "JOB_COMPLETION_INDEX",
        "FIRST_CHECKPOINT",
        "BATCH_SIZE",
        "LAST_LEDGER",
        "WORKER_COUNT",
        "MODULES",
        "INDEX_TARGET",
        "INDEX_SOURCE_ROOT",
        "TXMETA_SOURCE",
        "NETWORK_PASSPHRASE",
        "MAP_JOB_COUNT",
        "REDUCE_JOB_COUNT",
        "CHAIN",
        "CHECKPOINT_SPAN",
        "BATCH_INDEX_CRASH_AFTER_OBJECTS",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn batch-index")
}

/// Panics with the process output unless it succeeded.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The final-index files (`layout.json`, `accounts/`, `transactions/`) of
/// an index directory, path → bytes.
pub fn final_index_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let layout = dir.join("layout.json");
    out.insert(
        "layout.json".to_string(),
        std::fs::read(&layout).expect("layout.json"),
    );
    for sub in ["accounts", "transactions"] {
        for e in std::fs::read_dir(dir.join(sub)).expect("shard dir") {
            let e = e.expect("dir entry");
            let name = format!("{sub}/{}", e.file_name().to_string_lossy());
            out.insert(name, std::fs::read(e.path()).expect("shard"));
        }
    }
    out
}

/// Asserts two final indexes are byte-identical, naming the first difference.
pub fn assert_same_index(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>, what: &str) {
    let names_a: Vec<&String> = a.keys().collect();
    let names_b: Vec<&String> = b.keys().collect();
    assert_eq!(names_a, names_b, "{what}: different shard files");
    for (k, v) in a {
        assert!(
            v == &b[k],
            "{what}: {k} differs ({} vs {} bytes)",
            v.len(),
            b[k].len()
        );
    }
}
