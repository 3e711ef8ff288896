//! The deploy definitions run for real: the map and reduce jobs of
//! `deploy/batch-index/kubernetes/{map,reduce}-job.yaml` (Indexed Jobs) and
//! of `deploy/batch-index/aws-batch/*-job-definition.json` (array jobs, sized
//! by `submit.sh`) are run with the built `batch-index` binary exactly as the
//! platforms would: the image's `ENTRYPOINT` (`deploy/batch-index/Dockerfile`)
//! followed by the Job's `args` / the definition's `command`, the
//! definition's environment and nothing else, and one process per array
//! index with `JOB_COMPLETION_INDEX` / `AWS_BATCH_JOB_ARRAY_INDEX` set to
//! `0..n-1`. The only change is the storage: every `s3://bucket/key` value
//! becomes `file://<tmp>/s3/bucket/key`, and the ledgers the definitions
//! index (pubnet 41426048..41948543) are put where `TXMETA_SOURCE` points,
//! as a data lake built from the real pubnet fixture ledgers (renumbered;
//! the other ledgers carry no transactions). The final index must then
//! cover exactly `FIRST_CHECKPOINT..LAST_LEDGER` and answer every account
//! and transaction of those ledgers as extracted from them directly.

mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use batch_index::extract::{CheckpointFacts, MASK_ALL, Modules};
use batch_index::manifest::LedgerRange;
use batch_index::stellar::{PUBNET_PASSPHRASE, add_ledger_facts, decode_lake_file};
use batch_index::store::StoreRoot;
use batch_index::{INDEX_ALL, INDEX_PAYMENTS, IndexReader};
use process::fixture;
use sha2::{Digest, Sha256};
use stellar_xdr::{LedgerCloseMeta, LedgerCloseMetaBatch, Limits, ReadXdr, VecM, WriteXdr};

/// Child processes running at once (the machine has 2 cores).
const PARALLEL: u32 = 3;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/batch-index")
        .join(rel)
}

/// One phase of a definition: how each of its `count` processes starts.
#[derive(Debug)]
struct PhaseJob {
    what: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    /// The variable the platform sets to the array index.
    index_var: &'static str,
    count: u32,
}

impl PhaseJob {
    fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `ENTRYPOINT` and `CMD` of the image (exec form).
fn image_entrypoint_and_cmd() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let exec_form = |keyword: &str| -> Vec<String> {
        let line = text
            .lines()
            .rfind(|l| l.starts_with(keyword))
            .unwrap_or_else(|| panic!("the Dockerfile has no {keyword}"));
        serde_json::from_str(line[keyword.len()..].trim())
            .unwrap_or_else(|e| panic!("{keyword} is not in exec form: {e}"))
    };
    (exec_form("ENTRYPOINT"), exec_form("CMD"))
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// A Kubernetes Indexed Job: the container's command replaces the image's
/// ENTRYPOINT, its args the CMD; the pods get `JOB_COMPLETION_INDEX`
/// `0..completions-1`.
fn kubernetes_job(file: &str) -> PhaseJob {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy(file)).unwrap()).unwrap();
    assert_eq!(doc["kind"].as_str(), Some("Job"), "{file}");
    let spec = &doc["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"), "{file}");
    let count = spec["completions"].as_u64().expect("completions") as u32;
    let containers = spec["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert_eq!(containers.len(), 1, "{file}: one container");
    let c = &containers[0];
    let (entrypoint, cmd) = image_entrypoint_and_cmd();
    let mut argv = match c.get("command") {
        Some(command) => strings(command),
        None => entrypoint,
    };
    argv.extend(c.get("args").map_or(cmd, strings));
    let env = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e
                .get("value")
                .unwrap_or_else(|| panic!("{file}: {e:?} has no plain value"));
            let value = match value {
                serde_yaml::Value::String(s) => s.clone(),
                other => panic!("{file}: env values must be strings, found {other:?}"),
            };
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect();
    PhaseJob {
        what: file.to_string(),
        argv,
        env,
        index_var: "JOB_COMPLETION_INDEX",
        count,
    }
}

/// The array sizes `submit.sh` gives the map and reduce jobs (its
/// defaults), by job definition name.
fn submit_sizes() -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(deploy("aws-batch/submit.sh")).unwrap();
    let defaults: BTreeMap<&str, u32> = text
        .lines()
        .filter_map(|l| {
            // NAME=${NAME:-value}
            let (name, rest) = l.split_once('=')?;
            let default = rest
                .strip_prefix(&format!("${{{name}:-"))?
                .strip_suffix('}')?;
            Some((name, default.parse().ok()?))
        })
        .collect();
    let joined = text.replace("\\\n", " ");
    let mut sizes = BTreeMap::new();
    for line in joined
        .lines()
        .filter(|l| l.contains("aws batch submit-job"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .map(|i| words[i + 1])
                .unwrap_or_else(|| panic!("submit.sh: no {flag} in `{line}`"))
        };
        let definition = after("--job-definition");
        let var = after("--array-properties")
            .strip_prefix("size=\"$")
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("submit.sh: array size of {definition}"));
        sizes.insert(definition.to_string(), defaults[var]);
    }
    sizes
}

/// An AWS Batch array job: `command` replaces the image's CMD (the
/// ENTRYPOINT stays); the children get `AWS_BATCH_JOB_ARRAY_INDEX`
/// `0..size-1`, the size being what `submit.sh` submits.
fn aws_batch_job(file: &str, sizes: &BTreeMap<String, u32>) -> PhaseJob {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(deploy(file)).unwrap()).unwrap();
    let name = doc["jobDefinitionName"].as_str().unwrap();
    let props = &doc["containerProperties"];
    let (mut argv, cmd) = image_entrypoint_and_cmd();
    match props.get("command") {
        Some(command) => argv.extend(
            command
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string()),
        ),
        None => argv.extend(cmd),
    }
    let env = props["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    PhaseJob {
        what: file.to_string(),
        argv,
        env,
        index_var: "AWS_BATCH_JOB_ARRAY_INDEX",
        count: *sizes
            .get(name)
            .unwrap_or_else(|| panic!("submit.sh submits no {name}")),
    }
}

/// `s3://bucket/key` → the same object under `<s3>/bucket/key`, as a
/// `file://` URL; other values unchanged.
fn localize(value: &str, s3: &Path) -> String {
    match value.strip_prefix("s3://") {
        Some(rest) => format!("file://{}", s3.join(rest).display()),
        None => value.to_string(),
    }
}

/// The environment variables `batch-index <phase>` reads (its `--help`
/// lists `[env: NAME=...]` for each flag).
fn variables_read_by(phase: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_batch-index"))
        .args([phase, "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{phase} --help");
    String::from_utf8(out.stdout)
        .unwrap()
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split('=').next().unwrap().to_string())
        .collect()
}

/// Runs every process of `job` (at most [`PARALLEL`] at once) and fails
/// the test on the first that exits non-zero.
fn run_phase(job: &PhaseJob, s3: &Path) {
    assert_eq!(
        job.argv.first().map(String::as_str),
        Some("batch-index"),
        "{}: the image runs `batch-index`",
        job.what
    );
    let next = AtomicU32::new(0);
    let failures: Mutex<Vec<String>> = Mutex::default();
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= job.count || !failures.lock().unwrap().is_empty() {
                        return;
                    }
                    let mut cmd = Command::new(env!("CARGO_BIN_EXE_batch-index"));
                    // A container gets the definition's environment, no other.
                    cmd.env_clear().args(&job.argv[1..]);
                    for (k, v) in &job.env {
                        cmd.env(k, localize(v, s3));
                    }
                    cmd.env(job.index_var, i.to_string());
                    let out: Output = cmd.output().expect("spawn batch-index");
                    if !out.status.success() {
                        failures.lock().unwrap().push(format!(
                            "{} index {i} ({:?}) exited with {}:\n{}",
                            job.what,
                            job.argv,
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The real pubnet ledgers: the protocol 21 data-lake ledger and the
/// base64 ledgers of protocols 2 to 19.
fn pubnet_ledgers() -> (LedgerCloseMeta, Vec<LedgerCloseMeta>) {
    let name = "FCD285FF--53312000.xdr.zstd";
    let lake = std::fs::read(fixture("stellar/pubnet").join(name)).unwrap();
    let p21 = decode_lake_file(name, &lake).unwrap().ledger_close_metas[0].clone();
    let text = std::fs::read_to_string(fixture("stellar/pubnet/ledgers-base64.txt")).unwrap();
    let older = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| LedgerCloseMeta::from_xdr_base64(l.trim(), Limits::none()).unwrap())
        .collect();
    (p21, older)
}

fn set_seq(meta: &mut LedgerCloseMeta, seq: u32) {
    match meta {
        LedgerCloseMeta::V0(m) => m.ledger_header.header.ledger_seq = seq,
        LedgerCloseMeta::V1(m) => m.ledger_header.header.ledger_seq = seq,
        LedgerCloseMeta::V2(m) => m.ledger_header.header.ledger_seq = seq,
    }
}

/// Writes ledgers `first..=last` as a Galexie-style data lake of 64-ledger
/// zstd batches under `dir`: `real[seq]` where given, elsewhere `filler`
/// (a ledger with no transactions) renumbered.
fn write_lake(
    dir: &Path,
    first: u32,
    last: u32,
    real: &BTreeMap<u32, LedgerCloseMeta>,
    filler: &LedgerCloseMeta,
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut start = first;
    while start <= last {
        let end = (start | 63).min(last);
        let metas: Vec<LedgerCloseMeta> = (start..=end)
            .map(|seq| {
                let mut m = real.get(&seq).unwrap_or(filler).clone();
                set_seq(&mut m, seq);
                m
            })
            .collect();
        let batch = LedgerCloseMetaBatch {
            start_sequence: start,
            end_sequence: end,
            ledger_close_metas: VecM::try_from(metas).unwrap(),
        };
        let xdr = batch.to_xdr(Limits::none()).unwrap();
        let name = format!("{:08X}--{start}-{end}.xdr.zstd", u32::MAX - start);
        std::fs::write(dir.join(name), zstd::encode_all(&xdr[..], 1).unwrap()).unwrap();
        start = end + 1;
    }
}

/// What the index must answer: per account its checkpoints in each index,
/// per transaction its first position, extracted from the real ledgers.
type Expected = (
    BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>)>,
    BTreeMap<[u8; 32], u64>,
);

fn expected(real: &BTreeMap<u32, LedgerCloseMeta>) -> Expected {
    let network_id: [u8; 32] = Sha256::digest(PUBNET_PASSPHRASE.as_bytes()).into();
    let (mut accounts, mut txs) = (BTreeMap::new(), BTreeMap::new());
    for (seq, meta) in real {
        let mut meta = meta.clone();
        set_seq(&mut meta, *seq);
        let checkpoint = 1 + seq / 64;
        let mut facts = CheckpointFacts::new(checkpoint);
        add_ledger_facts(
            &seq.to_string(),
            &meta,
            network_id,
            Modules::ALL,
            &mut facts,
        )
        .unwrap();
        for (account, mask) in facts.accounts {
            let e: &mut (BTreeSet<u32>, BTreeSet<u32>) =
                accounts.entry(account.to_string()).or_default();
            if mask & MASK_ALL != 0 {
                e.0.insert(checkpoint);
            }
            if mask & 2 != 0 {
                e.1.insert(checkpoint);
            }
        }
        for (h, p) in facts.transactions {
            let e = txs.entry(h).or_insert(p);
            *e = (*e).min(p);
        }
    }
    (accounts, txs)
}

/// Checks the index at `url` covers `first..=last`, is sharded as the
/// reduce definition says, and answers every expected account and
/// transaction.
async fn check_index(url: &str, reduce: &PhaseJob, covered: LedgerRange, want: &Expected) {
    let reader = IndexReader::open(StoreRoot::open(url).unwrap())
        .await
        .unwrap();
    let what = &reduce.what;
    assert_eq!(reader.covered(), Some(covered), "{what}");
    let layout = reader.layout();
    assert_eq!(
        (
            layout.reduce_job_count.to_string(),
            layout.worker_count.to_string()
        ),
        (
            reduce.env("REDUCE_JOB_COUNT").unwrap().to_string(),
            reduce.env("WORKER_COUNT").unwrap().to_string()
        ),
        "{what}"
    );
    let snap = reader.snapshot().await.unwrap();
    for (account, (all, payments)) in &want.0 {
        let got = snap.checkpoints(account, INDEX_ALL).await.unwrap();
        assert_eq!(
            &got.iter().collect::<BTreeSet<u32>>(),
            all,
            "{what}: {account}"
        );
        let got = snap.checkpoints(account, INDEX_PAYMENTS).await.unwrap();
        assert_eq!(
            &got.iter().collect::<BTreeSet<u32>>(),
            payments,
            "{what}: {account} payments"
        );
    }
    for (h, p) in &want.1 {
        let got = snap.transaction(&hex::encode(h)).await.unwrap();
        assert_eq!(got.map(|t| t.0), Some(*p), "{what}: {}", hex::encode(h));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_and_aws_batch_definitions_build_the_index_they_describe() {
    let sizes = submit_sizes();
    let platforms = [
        (
            kubernetes_job("kubernetes/map-job.yaml"),
            kubernetes_job("kubernetes/reduce-job.yaml"),
        ),
        (
            aws_batch_job("aws-batch/map-job-definition.json", &sizes),
            aws_batch_job("aws-batch/reduce-job-definition.json", &sizes),
        ),
    ];
    let (map0, _) = &platforms[0];
    let num = |job: &PhaseJob, k: &str| -> u32 {
        job.env(k)
            .unwrap_or_else(|| panic!("{}: no {k}", job.what))
            .parse()
            .unwrap()
    };
    let covered = LedgerRange {
        first: num(map0, "FIRST_CHECKPOINT"),
        last: num(map0, "LAST_LEDGER"),
    };
    let source = map0.env("TXMETA_SOURCE").unwrap();
    for (map, reduce) in &platforms {
        // Every variable a definition sets is one the binary reads (a
        // misspelt one would silently fall back to a default), except the
        // AWS SDK's own and the platform's index variable.
        for job in [map, reduce] {
            let known = variables_read_by(&job.argv[1]);
            for (name, _) in &job.env {
                assert!(
                    known.contains(name) || name.starts_with("AWS_"),
                    "{}: `batch-index {}` reads no {name} (it reads {known:?})",
                    job.what,
                    job.argv[1]
                );
            }
        }
        assert_eq!(map.env("TXMETA_SOURCE"), Some(source), "{}", map.what);
        assert_eq!(num(map, "FIRST_CHECKPOINT"), covered.first, "{}", map.what);
        assert_eq!(num(map, "LAST_LEDGER"), covered.last, "{}", map.what);
        assert_eq!(map.count, num(reduce, "MAP_JOB_COUNT"), "{}", reduce.what);
        assert_eq!(
            reduce.count,
            num(reduce, "REDUCE_JOB_COUNT"),
            "{}",
            reduce.what
        );
        assert_eq!(map.argv[1..], ["map".to_string()], "{}", map.what);
        assert_eq!(reduce.argv[1..], ["reduce".to_string()], "{}", reduce.what);
    }

    // The ledgers the definitions index, where TXMETA_SOURCE points: real
    // pubnet transactions in the first ledger, the last ledger and the
    // middle, nothing elsewhere.
    let tmp = tempfile::tempdir().unwrap();
    let (p21, older) = pubnet_ledgers();
    let mut filler = older
        .iter()
        .find(|m| matches!(m, LedgerCloseMeta::V0(_)))
        .expect("a protocol < 20 ledger")
        .clone();
    if let LedgerCloseMeta::V0(m) = &mut filler {
        m.tx_set.txs = VecM::default();
        m.tx_processing = VecM::default();
        m.upgrades_processing = VecM::default();
        m.scp_info = VecM::default();
    }
    let middle = covered.first + (covered.last - covered.first) / 2;
    let mut real = BTreeMap::new();
    real.insert(covered.first, p21.clone());
    real.insert(covered.last, p21);
    for (i, m) in older.into_iter().enumerate() {
        real.insert(middle + i as u32, m);
    }
    let want = expected(&real);
    assert!(
        want.0.len() > 100 && want.1.len() > 163,
        "{} accounts, {} transactions",
        want.0.len(),
        want.1.len()
    );
    let s3 = tmp.path().join("s3");
    let lake_url = localize(source, &s3);
    let lake = PathBuf::from(lake_url.strip_prefix("file://").unwrap());
    let started = std::time::Instant::now();
    write_lake(&lake, covered.first, covered.last, &real, &filler);
    eprintln!(
        "data lake of ledgers {covered} written in {:.1?}",
        started.elapsed()
    );
    let listed = StoreRoot::open(&lake_url).unwrap().list("").await.unwrap();
    assert_eq!(
        listed.len() as u32,
        (covered.last - covered.first + 1).div_ceil(64),
        "64-ledger batches of the whole range"
    );

    for (map, reduce) in &platforms {
        let started = std::time::Instant::now();
        run_phase(map, &s3);
        eprintln!(
            "{}: {} map jobs in {:.1?}",
            map.what,
            map.count,
            started.elapsed()
        );
        // Every map job covered its whole range.
        let index_url = localize(reduce.env("INDEX_TARGET").unwrap(), &s3);
        let index_dir = PathBuf::from(index_url.strip_prefix("file://").unwrap());
        for job in 0..map.count {
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(index_dir.join(format!("job_{job}/_SUCCESS"))).unwrap(),
            )
            .unwrap();
            assert_eq!(
                m["requested"]["first"], m["ledgers"][0],
                "{}: {m}",
                map.what
            );
            assert_eq!(m["requested"]["last"], m["ledgers"][1], "{}: {m}", map.what);
        }
        let started = std::time::Instant::now();
        run_phase(reduce, &s3);
        eprintln!(
            "{}: {} reduce jobs in {:.1?}",
            reduce.what,
            reduce.count,
            started.elapsed()
        );
        check_index(&index_url, reduce, covered, &want).await;
        // The next platform starts from an empty index bucket.
        let mut done = index_dir.clone().into_os_string();
        done.push(format!(".{}", map.index_var));
        std::fs::rename(&index_dir, done).unwrap();
    }
}
