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

/// The directory of the generation an index's root `layout.json` publishes
/// (the root itself for an index without generations).
pub fn generation_dir(dir: &Path) -> PathBuf {
    let pointer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("layout.json")).expect("layout.json"))
            .expect("layout.json is JSON");
    match pointer["generation"].as_str() {
        Some(g) => dir.join(g),
        None => dir.to_path_buf(),
    }
}

/// Whether reduce job `job` wrote its `_SUCCESS` in any generation of `dir`.
pub fn reduce_success_exists(dir: &Path, job: u32) -> bool {
    let rel = format!("_SUCCESS/reduce-{job}.json");
    dir.join(&rel).exists()
        || std::fs::read_dir(dir).into_iter().flatten().any(|e| {
            let e = e.expect("dir entry");
            e.file_name().to_string_lossy().starts_with("gen-") && e.path().join(&rel).exists()
        })
}

/// The final-index files (`layout.json`, `accounts/`, `transactions/`) of
/// the generation an index directory publishes, path → bytes. Generation
/// names differ between builds of the same content by different paths
/// (reduce names them by their inputs, a single-process build by its
/// shards), so the files are keyed relative to the generation.
pub fn final_index_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = &generation_dir(dir);
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

/// A copy of the testnet meta-archive whose `latest` says `latest`: the
/// ledgers after it are present but, as in a growing archive, not yet
/// published.
pub fn growing_source(dir: &Path, latest: u32) {
    let ledgers = dir.join("ledgers");
    if !ledgers.exists() {
        std::fs::create_dir_all(&ledgers).unwrap();
        let from = fixture("stellar/testnet-lighthorizon/ledgers");
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), ledgers.join(e.file_name())).unwrap();
        }
    }
    std::fs::write(dir.join("latest"), latest.to_string()).unwrap();
}

/// Every object of the generation an index directory publishes (shards,
/// `layout.json` and `_SUCCESS/` manifests), path relative to the
/// generation → bytes.
pub fn generation_objects(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).expect("generation dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).expect("under the generation");
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&p).expect("object"),
                );
            }
        }
    }
    let generation = generation_dir(dir);
    assert_ne!(generation, dir, "{} publishes no generation", dir.display());
    let mut out = BTreeMap::new();
    walk(&generation, &generation, &mut out);
    out
}

/// The root `layout.json` pointer of an index directory, parsed.
pub fn pointer(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("layout.json")).expect("layout.json"))
        .expect("layout.json is JSON")
}

/// Moves the generation the pointer names to the root and makes its
/// `layout.json` the root one: the layout indexes had before generations.
pub fn make_legacy(dir: &Path) {
    let generation = generation_dir(dir);
    for sub in ["accounts", "transactions", "_SUCCESS"] {
        std::fs::rename(generation.join(sub), dir.join(sub)).unwrap();
    }
    std::fs::rename(generation.join("layout.json"), dir.join("layout.json")).unwrap();
    std::fs::remove_dir(&generation).unwrap();
}
