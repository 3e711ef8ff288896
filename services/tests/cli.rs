//! The `model-runner` binary's command line, run as a user would: every command's help works
//! (in a debug build clap checks the whole command definition there, e.g. for two flags with one
//! name), every flag reads an environment variable, and the runs filters and `--no-migrate` do
//! what their help says.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_model-runner");

/// The binary with `args`, run in `dir`, with none of the caller's `MODEL_RUNNER_*` variables.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("MODEL_RUNNER_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running model-runner")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Succeeds and returns stdout, or fails the test with the command's stderr.
fn ok(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_in(dir, args, env);
    assert!(
        out.status.success(),
        "model-runner {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The subcommands listed under `Commands:` in a help text, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The options of a short (`-h`) help text as (long name, its text including any wrapped lines).
fn options(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_option = false;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        let t = t
            .strip_prefix('-')
            .and_then(|r| r.get(1..))
            .and_then(|r| r.strip_prefix(", "))
            .unwrap_or(t);
        if (1..=6).contains(&indent)
            && let Some(rest) = t.strip_prefix("--")
        {
            let name = rest
                .split(|c: char| c.is_whitespace() || c == '=')
                .next()
                .unwrap_or_default();
            out.push((name.to_owned(), line.to_owned()));
            in_option = true;
        } else if in_option && indent > 6 {
            let last = out.last_mut().expect("an option");
            last.1.push(' ');
            last.1.push_str(line.trim());
        } else {
            in_option = false;
        }
    }
    out
}

#[test]
fn every_command_has_help_and_every_flag_an_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = Vec::new();
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        // The long help builds the command like any parse; the short one is one line per flag.
        args.push("--help");
        let out = run_in(dir.path(), &args, &[]);
        assert!(
            out.status.success(),
            "`model-runner {}` failed ({}): {}",
            args.join(" "),
            out.status,
            text(&out.stderr)
        );
        *args.last_mut().unwrap() = "-h";
        let short = ok(dir.path(), &args, &[]);
        let flags = options(&short);
        assert!(
            flags.iter().any(|(n, _)| n == "help"),
            "no options parsed from:\n{short}"
        );
        for (name, line) in &flags {
            if name == "help" || name == "version" {
                continue;
            }
            assert!(
                line.contains("[env: MODEL_RUNNER_"),
                "`model-runner {}`: --{name} reads no environment variable: {line}",
                path.join(" ")
            );
        }
        for sub in subcommands(&text(&out.stdout)) {
            let mut p = path.clone();
            p.push(sub);
            pending.push(p);
        }
        seen.push(path.join(" "));
    }
    for expected in [
        "",
        "all",
        "api",
        "scheduler",
        "enqueuer",
        "worker",
        "backfill",
        "runs",
        "runs list",
        "runs show",
        "abi",
        "abi put",
        "abi list",
        "abi get",
        "abi rm",
        "migrate",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "`{expected}` not reached; saw {seen:?}"
        );
    }
}

#[test]
fn adapter_help_names_every_scheme_and_its_feature() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(dir.path(), &["--help"], &[]);
    for s in [
        "file://DIR",
        "kafka://",
        "feature `kafka`",
        "s3://BUCKET/PREFIX",
        "parquet+file:///DIR",
        "feature `parquet`",
        "http(s)://NODE",
        "feature `jsonrpc`",
        "devnet://",
        "postgres://",
        "amqp",
        "Examples:",
    ] {
        assert!(help.contains(s), "--help does not mention {s}:\n{help}");
    }
}

/// `versions` shows what each version of a model covers; `rerun` refuses, naming why, to rerun
/// the registered version or a version that never ran (the rerun itself is tested in
/// model-runner-core's engine::versions, on the engine).
#[test]
fn versions_and_rerun_name_what_they_find() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    let sink = format!("file://{}/sink", dir.path().display());
    let env = [
        ("MODEL_RUNNER_STORE", store.as_str()),
        ("MODEL_RUNNER_SINK", sink.as_str()),
    ];
    ok(
        dir.path(),
        &[
            "all",
            "--backfill",
            "ethereum:block_stats:0-249",
            "--chunk-size",
            "100",
        ],
        &env,
    );
    let out = ok(dir.path(), &["versions", "--model", "block_stats"], &env);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["chain"], "ethereum");
    assert_eq!(line["blocks"], 250);
    assert_eq!(
        line["ranges"],
        serde_json::json!([{"start": 0, "end": 249}])
    );
    let version = line["version"].as_str().unwrap().to_owned();
    for (from, want) in [
        (version.as_str(), "already"),
        (
            "0.0.1",
            "no succeeded runs of model block_stats version 0.0.1",
        ),
    ] {
        let out = run_in(
            dir.path(),
            &["rerun", "--model", "block_stats", "--from-version", from],
            &env,
        );
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
    }
}

/// `migrate`, `runs list`, `runs show`, `versions` and `abi list` connect only the run store:
/// with the broker, the sink and the block source all unreachable they still work (before,
/// `runs list` needed the broker).
#[test]
fn store_commands_need_only_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    let env = [
        ("MODEL_RUNNER_STORE", store.as_str()),
        (
            "MODEL_RUNNER_QUEUE",
            "amqp://guest:guest@127.0.0.1:1/nowhere",
        ),
        ("MODEL_RUNNER_SINK", "kafka://127.0.0.1:1"),
        ("MODEL_RUNNER_CHAINS", "ethereum=file:///nonexistent/blocks"),
    ];
    ok(dir.path(), &["migrate"], &env);
    assert_eq!(ok(dir.path(), &["runs", "list"], &env), "");
    assert_eq!(
        ok(
            dir.path(),
            &["versions", "--model", "erc20_transfers"],
            &env
        ),
        ""
    );
    assert_eq!(ok(dir.path(), &["abi", "list"], &env), "");
    let out = run_in(
        dir.path(),
        &["runs", "show", "01a22a85-4a7c-731e-9716-8bfdeb49e4f0"],
        &env,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("01a22a85-4a7c-731e-9716-8bfdeb49e4f0"),
        "{err}"
    );
    assert!(!err.contains("amqp") && !err.contains("kafka"), "{err}");
    // A command that does use the broker still says it cannot reach it.
    let out = run_in(dir.path(), &["enqueuer"], &env);
    assert!(!out.status.success());
}

/// `abi put / list / get / rm` against a SQLite store only (the broker and sink flags point at
/// servers that do not exist: they are not connected), with errors that name the bad input.
#[test]
fn abi_commands_register_list_show_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    let env = [
        ("MODEL_RUNNER_STORE", store.as_str()),
        ("MODEL_RUNNER_QUEUE", "amqp://127.0.0.1:1/nowhere"),
        ("MODEL_RUNNER_SINK", "kafka://127.0.0.1:1/nowhere"),
    ];
    let abi = dir.path().join("erc20.json");
    std::fs::write(
        &abi,
        include_str!("../../model-runner-core/testdata/erc20.abi.json"),
    )
    .unwrap();
    let abi = abi.to_str().unwrap();
    let token = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
    let lower = token.to_lowercase();
    let contract = ["--of-chain", "ethereum", "--address", token];

    let put = ok(
        dir.path(),
        &[&["abi", "put"][..], &contract, &["--file", abi]].concat(),
        &env,
    );
    assert_eq!(
        put.lines().collect::<Vec<_>>(),
        [
            "Approval(address,address,uint256)",
            "Transfer(address,address,uint256)"
        ]
    );
    let listed = ok(dir.path(), &["abi", "list"], &env);
    let line: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(line["chain"], "ethereum");
    assert_eq!(line["address"], lower.as_str());
    assert_eq!(
        ok(dir.path(), &["abi", "list", "--of-chain", "matic"], &env),
        ""
    );
    let got = ok(dir.path(), &[&["abi", "get"][..], &contract].concat(), &env);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(
        got,
        serde_json::from_str::<serde_json::Value>(include_str!(
            "../../model-runner-core/testdata/erc20.abi.json"
        ))
        .unwrap()
    );
    ok(dir.path(), &[&["abi", "rm"][..], &contract].concat(), &env);

    // Every failure names what was wrong, and nothing is stored.
    let fails = |args: &[&str], words: &str| {
        let out = run_in(dir.path(), args, &env);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out.stderr);
        assert!(err.contains(words), "{args:?}: {err:?} lacks {words:?}");
    };
    fails(
        &[&["abi", "get"][..], &contract].concat(),
        &format!("no ABI is registered for {lower} on ethereum"),
    );
    fails(
        &[&["abi", "rm"][..], &contract].concat(),
        "no ABI is registered",
    );
    fails(
        &["abi", "get", "--of-chain", "ethereum", "--address", "0x12"],
        "invalid contract address \"0x12\"",
    );
    fails(
        &[&["abi", "put"][..], &contract, &["--file", "missing.json"]].concat(),
        "missing.json",
    );
    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "[{").unwrap();
    fails(
        &[
            &["abi", "put"][..],
            &contract,
            &["--file", not_json.to_str().unwrap()],
        ]
        .concat(),
        "is not JSON",
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"type": "event", "name": "X", "anonymous": false, "inputs": [{"name": "v", "type": "uint257", "indexed": false}]}]"#,
    )
    .unwrap();
    fails(
        &[
            &["abi", "put"][..],
            &contract,
            &["--file", bad.to_str().unwrap()],
        ]
        .concat(),
        "uint257",
    );
    assert_eq!(ok(dir.path(), &["abi", "list"], &env), "");
}

#[test]
fn runs_list_filters_by_chain_from_flag_or_env() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    let env = [
        ("MODEL_RUNNER_STORE", store.as_str()),
        ("MODEL_RUNNER_SINK", "memory://"),
    ];
    let created = ok(
        dir.path(),
        &[
            "backfill",
            "ethereum:block_stats:0-199",
            "--chunk-size",
            "100",
        ],
        &env,
    );
    assert_eq!(created.lines().count(), 2, "{created}");
    // The chunk size from the environment.
    let created = ok(
        dir.path(),
        &["backfill", "ethereum:erc20_transfers:0-199"],
        &[env[0], env[1], ("MODEL_RUNNER_CHUNK_SIZE", "50")],
    );
    assert_eq!(created.lines().count(), 4, "{created}");

    let listed = ok(
        dir.path(),
        &["runs", "list", "--of-chain", "ethereum"],
        &env,
    );
    assert_eq!(listed.lines().count(), 6, "{listed}");
    let listed = ok(
        dir.path(),
        &[
            "runs",
            "list",
            "--of-chain",
            "ethereum",
            "--model",
            "block_stats",
        ],
        &env,
    );
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let listed = ok(
        dir.path(),
        &["runs", "list"],
        &[env[0], env[1], ("MODEL_RUNNER_RUNS_CHAIN", "matic")],
    );
    assert_eq!(listed.lines().count(), 0, "{listed}");
    // The flag wins over the variable.
    let listed = ok(
        dir.path(),
        &["runs", "list", "--of-chain", "ethereum"],
        &[env[0], env[1], ("MODEL_RUNNER_RUNS_CHAIN", "matic")],
    );
    assert_eq!(listed.lines().count(), 6, "{listed}");
    // The global --chain (block sources) still works next to the filter.
    let listed = ok(
        dir.path(),
        &[
            "runs",
            "list",
            "--chain",
            "ethereum=devnet://",
            "--of-chain",
            "ethereum",
            "--limit",
            "1",
        ],
        &env,
    );
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

#[test]
fn no_migrate_refuses_an_unmigrated_sqlite_store_until_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let store = format!("sqlite://{}", db.display());
    let env = [
        ("MODEL_RUNNER_STORE", store.as_str()),
        ("MODEL_RUNNER_SINK", "memory://"),
    ];

    let out = run_in(dir.path(), &["runs", "list", "--no-migrate"], &env);
    assert!(!out.status.success(), "an unmigrated store was used");
    let err = text(&out.stderr);
    assert!(err.contains("store not migrated"), "{err}");
    assert!(err.contains("model-runner migrate"), "{err}");
    assert!(!db.exists(), "--no-migrate created the store");

    // `migrate` migrates even when the variable says not to.
    let out = run_in(
        dir.path(),
        &["migrate"],
        &[env[0], env[1], ("MODEL_RUNNER_NO_MIGRATE", "true")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("store migrated"));

    let listed = ok(
        dir.path(),
        &["runs", "list"],
        &[env[0], env[1], ("MODEL_RUNNER_NO_MIGRATE", "true")],
    );
    assert_eq!(listed, "");
}

/// A component that runs as one process of several refuses an in-process queue or store,
/// naming the flag, before it touches anything: an `enqueuer` on the default `memory://` queue
/// used to mark runs `queued` in a queue no worker could read.
#[test]
fn standalone_components_refuse_in_process_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    for command in ["scheduler", "enqueuer", "worker"] {
        let out = run_in(dir.path(), &["--store", &store, command], &[]);
        assert!(!out.status.success(), "{command} accepted memory://");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("`model-runner {command}`"))
                && err.contains("--queue memory://")
                && err.contains("MODEL_RUNNER_QUEUE")
                && err.contains("model-runner all"),
            "{command}: {err}"
        );
        for memory_store in ["memory://", "sqlite::memory:"] {
            let out = run_in(
                dir.path(),
                &[
                    "--store",
                    memory_store,
                    "--queue",
                    "amqp://127.0.0.1:1/%2f",
                    command,
                ],
                &[],
            );
            assert!(!out.status.success());
            let err = text(&out.stderr);
            assert!(
                err.contains(&format!("--store {memory_store}")),
                "{command} {memory_store}: {err}"
            );
        }
    }
    // `backfill` only writes runs to the store: any queue will do, not an in-process store.
    let out = run_in(
        dir.path(),
        &[
            "--store",
            "memory://",
            "backfill",
            "ethereum:block_stats:0-99",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--store memory://"));
    ok(
        dir.path(),
        &["--store", &store, "backfill", "ethereum:block_stats:0-99"],
        &[("MODEL_RUNNER_SINK", "memory://")],
    );
    assert!(
        !dir.path().join("sink").exists(),
        "refused commands created nothing"
    );
}

/// The blocks-per-run limit is enforced where runs are made, with a clear message, and is
/// configurable by flag or environment.
#[test]
fn runs_larger_than_the_blocks_per_run_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    let out = run_in(
        dir.path(),
        &[
            "--store",
            &store,
            "backfill",
            "ethereum:block_stats:0-999",
            "--chunk-size",
            "500",
        ],
        &[("MODEL_RUNNER_MAX_BLOCKS_PER_RUN", "100")],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("chunk_size 500 makes runs of more than 100 blocks, the limit per run"),
        "{err}"
    );
    let created = ok(
        dir.path(),
        &[
            "--store",
            &store,
            "--max-blocks-per-run",
            "500",
            "backfill",
            "ethereum:block_stats:0-999",
            "--chunk-size",
            "500",
        ],
        &[],
    );
    assert_eq!(created.lines().count(), 2, "{created}");
}

/// Logs written to a pipe carry no terminal colour codes; with `--log-format json` each line is
/// a JSON object, and a line logged while a run executes carries the run's span (run id, model,
/// version, chain, range, attempt).
#[test]
fn logs_are_plain_in_a_pipe_and_json_lines_carry_the_run_span() {
    let dir = tempfile::tempdir().unwrap();
    let text = run_in(
        dir.path(),
        &[
            "--store",
            &format!("sqlite://{}/a.db", dir.path().display()),
            "all",
            "--backfill",
            "ethereum:block_stats:0-99",
        ],
        &[("RUST_LOG", "debug")],
    );
    assert!(text.status.success(), "{}", self::text(&text.stderr));
    let stderr = self::text(&text.stderr);
    assert!(stderr.contains("DEBUG"), "debug logs expected:\n{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe:\n{stderr}"
    );

    let json = run_in(
        dir.path(),
        &[
            "--log-format",
            "json",
            "--store",
            &format!("sqlite://{}/b.db", dir.path().display()),
            "all",
            "--backfill",
            "ethereum:block_stats:0-99",
        ],
        &[("RUST_LOG", "model_runner_core=debug")],
    );
    assert!(json.status.success(), "{}", self::text(&json.stderr));
    let lines: Vec<serde_json::Value> = self::text(&json.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "run succeeded")
        .unwrap_or_else(|| panic!("no 'run succeeded' line in {lines:#?}"));
    let span = &done["span"];
    assert_eq!(span["name"], "run", "{done}");
    assert_eq!(span["model"], "block_stats", "{done}");
    assert_eq!(span["chain"], "ethereum", "{done}");
    assert_eq!(span["range"], "0-99", "{done}");
    assert_eq!(span["attempt"], 1, "{done}");
    assert!(
        span["run"].as_str().is_some_and(|id| id.len() == 36),
        "{done}"
    );
}

/// `config check` accepts the documented example and rejects a broken file naming the line,
/// column and reason; a file's settings apply, flags override them, and `config show` prints
/// the effective configuration with every secret redacted.
#[test]
fn config_files_are_checked_applied_and_shown_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/model-runner.example.toml"
    );
    let env = [
        ("PG_PASSWORD", "pgsecret1"),
        ("AMQP_PASSWORD", "amqpsecret2"),
        ("INFURA_KEY", "infurakey3abcdef0123456789"),
        ("MODEL_RUNNER_WRITE_TOKEN", "tokensecret4"),
    ];
    let checked = ok(dir.path(), &["config", "check", example], &env);
    assert!(
        checked.contains("is valid: 2 chains, 2 realtime subscriptions"),
        "{checked}"
    );

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "env = \"prod\"\n[worker]\nconcurency = 8\n").unwrap();
    let out = run_in(
        dir.path(),
        &["config", "check", broken.to_str().unwrap()],
        &[],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("broken.toml")
            && err.contains("line 3, column 1")
            && err.contains("unknown field `concurency`"),
        "{err}"
    );
    let unset = run_in(dir.path(), &["config", "check", example], &env[..1]);
    assert!(!unset.status.success());
    assert!(
        text(&unset.stderr).contains("AMQP_PASSWORD, which is not set"),
        "{}",
        text(&unset.stderr)
    );

    let shown = ok(
        dir.path(),
        &[
            "--config",
            example,
            "--sink",
            "file://elsewhere",
            "config",
            "show",
        ],
        &env,
    );
    for (_, secret) in env {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(
        shown.contains("postgres://runner:***@db:5432/runs"),
        "{shown}"
    );
    assert!(
        shown.contains("https://mainnet.infura.io/v3/***"),
        "{shown}"
    );
    assert!(
        shown.contains("sink = \"file://elsewhere\""),
        "the flag wins:\n{shown}"
    );
    assert!(shown.contains("confirmations = 12"), "{shown}");
    assert!(shown.contains("max_reorg_depth = 64"), "{shown}");

    // The file's store is the one used.
    let config = dir.path().join("local.toml");
    std::fs::write(
        &config,
        format!(
            "store = \"sqlite://{}/from-config.db\"\n[chains.ethereum]\nurl = \"devnet://\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    ok(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "backfill",
            "ethereum:block_stats:0-9",
        ],
        &[],
    );
    assert!(dir.path().join("from-config.db").exists());
}

/// Each API request gets a span (method and path, never the query) that its log lines carry.
#[test]
fn api_requests_are_logged_in_their_own_span() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "--store",
            &format!("sqlite://{}/runs.db", dir.path().display()),
            "api",
            "--api-addr",
            &addr,
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "model_runner=info,tower_http=debug")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut stream = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the API did not listen: {e}"
                );
                std::thread::yield_now();
            }
        }
    };
    stream
        .write_all(
            b"GET /healthz?token=querysecret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("querysecret"), "{stderr}");
    let line = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["span"]["name"] == "request")
        .unwrap_or_else(|| panic!("no line in a request span:\n{stderr}"));
    assert_eq!(line["span"]["method"], "GET", "{line}");
    assert_eq!(line["span"]["path"], "/healthz", "{line}");
}

/// `--chunk-size` and `--max-attempts` follow the API's rules (`model_runner::submission`): the
/// same defaults, at least one block, 1 to 100 attempts; anything else is refused before any
/// store is opened, naming the flag.
#[test]
fn submissions_have_the_apis_defaults_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/runs.db", dir.path().display());
    for (flag, value) in [
        ("--max-attempts", "0"),
        ("--max-attempts", "101"),
        ("--chunk-size", "0"),
    ] {
        let out = run_in(
            dir.path(),
            &[
                "--store",
                &store,
                "backfill",
                "ethereum:block_stats:0-9",
                flag,
                value,
            ],
            &[],
        );
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = text(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
        assert!(!dir.path().join("runs.db").exists(), "{flag} {value}");
    }
    let help = ok(dir.path(), &["backfill", "--help"], &[]);
    assert!(help.contains("[default: 100]"), "{help}");
    assert!(help.contains("[default: 3]"), "{help}");
    let created = ok(
        dir.path(),
        &[
            "--store",
            &store,
            "backfill",
            "ethereum:block_stats:0-9",
            "--max-attempts",
            "100",
        ],
        &[],
    );
    assert_eq!(created.lines().count(), 1, "{created}");
}
