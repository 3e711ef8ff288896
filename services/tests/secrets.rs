//! Every command, given secret-bearing URLs for every port, prints no secret: not in its
//! errors, not in its logs (at `debug`), whatever features the binary was built with (an
//! adapter that is not built says so, naming the URL redacted; one that is built fails to reach
//! a closed port and says so, redacted). CI runs it on the default build (`cargo test
//! --workspace`) and on the server build (`--features postgres,rabbitmq`).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_model-runner");

/// Distinct secrets, so a failure names which one leaked.
const SECRETS: [&str; 8] = [
    "pgquerysecret1",
    "pguserinfosecret2",
    "amqpsecret3",
    "infurakey4deadbeef0123456789",
    "rpcapikey5",
    "kafkasecret6",
    "s3secret7",
    "s3accesskey8",
];

fn run(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("MODEL_RUNNER_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env("RUST_LOG", "debug")
        .output()
        .expect("running model-runner");
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn no_command_prints_a_secret_of_any_url() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/runs.db", dir.path().display());
    let pg_query = "postgres://runner@127.0.0.1:1/db?password=pgquerysecret1&connect_timeout=1";
    let pg_userinfo = "postgres://runner:pguserinfosecret2@127.0.0.1:1/db?connect_timeout=1";
    let amqp = "amqp://guest:amqpsecret3@127.0.0.1:1/%2f?connect_timeout_ms=300";
    let infura = "ethereum=https://mainnet.infura.io/v3/infurakey4deadbeef0123456789";
    let rpc = "ethereum=http://127.0.0.1:1/rpc?apikey=rpcapikey5";
    let kafka = "kafka://127.0.0.1:1?sasl.password=kafkasecret6";
    let s3 = "s3://s3accesskey8:s3secret7@bucket/prefix?aws_secret_access_key=s3secret7";
    let runs: Vec<Vec<&str>> = vec![
        vec!["--store", pg_query, "migrate"],
        vec!["--store", pg_userinfo, "runs", "list"],
        vec!["--store", pg_query, "--queue", amqp, "worker"],
        vec!["--store", &sqlite, "--queue", amqp, "enqueuer"],
        vec!["--store", &sqlite, "--queue", amqp, "scheduler"],
        vec![
            "--store",
            &sqlite,
            "--chain",
            infura,
            "backfill",
            "ethereum:block_stats:0-9",
        ],
        vec![
            "--store",
            &sqlite,
            "--chain",
            rpc,
            "all",
            "--backfill",
            "ethereum:block_stats:0-9",
        ],
        vec![
            "--store",
            &sqlite,
            "--sink",
            kafka,
            "all",
            "--backfill",
            "ethereum:block_stats:0-9",
        ],
        vec![
            "--store",
            &sqlite,
            "--sink",
            s3,
            "all",
            "--backfill",
            "ethereum:block_stats:0-9",
        ],
        vec![
            "--store",
            "postgres://runner:pguserinfosecret2@/db",
            "migrate",
        ],
    ];
    for args in runs {
        let printed = run(dir.path(), &args);
        for secret in SECRETS {
            assert!(
                !printed.contains(secret),
                "model-runner {args:?} printed the secret {secret}:\n{printed}"
            );
        }
        // It did say something about what failed (the redacted URL or its host).
        assert!(
            printed.contains("127.0.0.1")
                || printed.contains("mainnet.infura.io")
                || printed.contains("bucket")
                || printed.contains("postgres://")
                || printed.contains("created"),
            "model-runner {args:?} said nothing useful:\n{printed}"
        );
    }
    // Nothing stored holds a secret either: the SQLite store's file and the sink directory.
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in SECRETS {
            assert!(!text.contains(secret), "{} holds {secret}", entry.display());
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
