//! The runs dashboard (`/ui`) and the API reference (`/docs`) in a real browser: headless
//! chromium driven through chromedriver (WebDriver), against the API served in-process on
//! `127.0.0.1:0` over an in-memory store holding runs in every state but `expired`, with a
//! write token configured and reads closed.
//!
//! It checks that the dashboard asks for a token, then with the token shows the right count per
//! state, a failed run's error as text (never as HTML) and a realtime cursor; that cancelling a
//! queued run from its detail panel cancels it in the store; that `/docs` renders every
//! operation of `/openapi.json` with its parameters, body and responses; and that neither page
//! requests anything but `127.0.0.1` (chromium runs with a dead proxy for every other host, and
//! the page's resource timing list is checked). Screenshots of both pages are written to
//! `$MODEL_RUNNER_SCREENSHOT_DIR` (default: the system temp directory).
//!
//! `CHROMEDRIVER` (default `chromedriver`) and `CHROMIUM` (default `chromium`) name the
//! programs. Without them the test prints a notice and passes, unless `CI=true`: then it fails.
//! It is `#[ignore]`d so that `cargo test --workspace` does not need a browser: `.ci/run`
//! installs chromium and runs it in its own step with
//! `cargo test -p model-runner --test browser -- --ignored`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fantoccini::{Client, ClientBuilder, Locator};
use model_runner::api::{ApiAuth, ApiConfig, ApiState, openapi, serve_on};
use model_runner_adapters::devnet::{DevnetConfig, DevnetSource};
use model_runner_core::engine::{BackfillRequest, CancellationToken, EngineDeps, submit_backfill};
use model_runner_core::memory::{MemoryRunQueue, MemoryRunStore, MemorySink};
use model_runner_core::ports::{BlockSource, RunStore, RunStoreExt};
use model_runner_core::ports::{CursorAdvance, CursorKey};
use model_runner_core::{BlockRange, Chain, Routing, RunEvent, RunId, RunMode, RunState};
use serde_json::{Value, json};

const WRITE: &str = "browser-write-token";
const FAILURE: &str = "node said: <b>boom</b> at block 712";
/// How long any one thing may take to appear in the page.
const DEADLINE: Duration = Duration::from_secs(30);

fn eth() -> Chain {
    Chain::new("ethereum").unwrap()
}

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts chromedriver on a free port and waits for it; `None` (after the notice) when the
/// programs are missing outside CI.
async fn start_driver() -> Option<(Driver, String)> {
    let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let found = |program: &str| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    for program in [&chromedriver, &chromium] {
        if !found(program) {
            let notice = format!(
                "{program} not found: install chromium and chromium-driver (Debian: `apt-get install chromium chromium-driver`) or set CHROMIUM and CHROMEDRIVER"
            );
            assert!(!in_ci, "CI=true and the browser test cannot run: {notice}");
            eprintln!("{notice}; the browser test checks nothing");
            return None;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {chromedriver}: {e}"));
    let driver = Driver(child);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some((driver, format!("http://127.0.0.1:{port}")))
}

async fn connect(webdriver: &str) -> Client {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let binary = which(&chromium).unwrap_or(chromium);
    let caps = json!({
        "goog:chromeOptions": {
            "binary": binary,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,1100",
                // No network but loopback: every other host goes to a closed port.
                "--proxy-server=http://127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(webdriver)
        .await
        .unwrap_or_else(|e| panic!("starting a chromium session through chromedriver: {e}"))
}

/// The absolute path of `program` on `PATH` (chromedriver wants one for `binary`).
fn which(program: &str) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    })
}

/// Runs `script` (a function body that returns a value) until it returns something truthy.
async fn wait_for(client: &Client, script: &str, what: &str) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let v = client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("running `{script}`: {e}"));
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            let body = client
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap_or_default();
            panic!("waited {DEADLINE:?} for {what}; the page shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `css` selects.
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

/// The visible text of the element `css` selects.
async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn screenshot(client: &Client, name: &str) {
    let dir = std::env::var_os("MODEL_RUNNER_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    let path = dir.join(format!("model-runner-{name}-{}.png", std::process::id()));
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot of {name}: {}", path.display());
}

/// Every URL the page loaded (the document and its resources) is on the API's origin.
async fn assert_only_local(client: &Client, origin: &str) {
    let urls = client
        .execute(
            "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]",
            vec![],
        )
        .await
        .unwrap();
    let urls: Vec<String> = serde_json::from_value(urls).unwrap();
    assert!(
        urls.len() > 1,
        "the page loads its script and data: {urls:?}"
    );
    for url in &urls {
        assert!(
            url.starts_with(&format!("{origin}/")),
            "the page requested {url}, which is not on {origin}: {urls:?}"
        );
    }
}

/// The in-memory store with runs in several states, and the ids of interest.
struct Fixture {
    store: Arc<dyn RunStore>,
    deps: EngineDeps,
    queued: RunId,
    failed: RunId,
}

async fn fixture() -> Fixture {
    let store: Arc<dyn RunStore> = Arc::new(MemoryRunStore::new());
    let deps = EngineDeps {
        store: store.clone(),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::from([(
            eth(),
            Arc::new(DevnetSource::new(eth(), DevnetConfig::default())) as Arc<dyn BlockSource>,
        )]),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let created = submit_backfill(
        &deps,
        BackfillRequest {
            model: "erc20_transfers".into(),
            chain: eth(),
            range: BlockRange::new(0, 899).unwrap(),
            chunk_size: 100,
            mode: RunMode::Backfill,
            adhoc_queue: None,
            max_attempts: 1,
            idempotency_key: None,
        },
    )
    .await
    .unwrap();
    let ids: Vec<RunId> = created.runs.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 9);
    let lease = Utc::now() + chrono::Duration::seconds(600);
    // 0, 1 pending; 2, 3 queued; 4 running; 5, 6 succeeded; 7 failed; 8 cancelled.
    for &id in &ids[2..8] {
        store
            .transition(id, RunState::Pending, 1, RunEvent::Enqueue)
            .await
            .unwrap();
    }
    for &id in &ids[4..8] {
        store.claim(id, 1, "worker-1", lease).await.unwrap();
    }
    for &id in &ids[5..7] {
        store
            .transition(
                id,
                RunState::Running,
                1,
                RunEvent::Succeed {
                    owner: "worker-1".into(),
                    blocks_done: 100,
                    records_written: 42,
                    notes: Default::default(),
                },
            )
            .await
            .unwrap();
    }
    store
        .transition(
            ids[7],
            RunState::Running,
            1,
            RunEvent::Fail {
                owner: "worker-1".into(),
                error: FAILURE.into(),
                retry_at: None,
            },
        )
        .await
        .unwrap();
    store
        .transition(
            ids[8],
            RunState::Pending,
            1,
            RunEvent::Cancel {
                reason: Some("test".into()),
            },
        )
        .await
        .unwrap();
    store
        .advance_cursor(CursorAdvance {
            key: CursorKey::new("block_stats", &eth()),
            expected: None,
            to: 12_345,
            runs: vec![],
        })
        .await
        .unwrap();
    Fixture {
        store,
        deps,
        queued: ids[2],
        failed: ids[7],
    }
}

async fn counts(client: &Client) -> BTreeMap<String, String> {
    let v = client
        .execute(
            "return Object.fromEntries([...document.querySelectorAll('#counts .count')]\
             .map(b => [b.dataset.state, b.querySelector('.n').textContent]))",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

fn expected_counts(pairs: &[(&str, u32)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(s, n)| (s.to_string(), n.to_string()))
        .collect()
}

async fn dashboard(client: &Client, origin: &str, fx: &Fixture) {
    client.goto(&format!("{origin}/ui")).await.unwrap();
    // Reads are closed: the page loads, then says it needs a token.
    wait_for(
        client,
        "return document.body.dataset.error === 'unauthorized'",
        "the dashboard to ask for a token",
    )
    .await;
    let status = text_of(client, "#status").await;
    assert!(
        status.contains("token"),
        "the status line asks for a token: {status}"
    );

    let input = client.find(Locator::Id("token")).await.unwrap();
    input.send_keys(WRITE).await.unwrap();
    click(client, "#save-token").await;
    wait_for(
        client,
        "return Number(document.body.dataset.loaded || 0) >= 1",
        "the dashboard to load with the token",
    )
    .await;
    let stored = client
        .execute(
            "return sessionStorage.getItem('model-runner.api-token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!(WRITE), "the token is kept in sessionStorage");

    assert_eq!(
        counts(client).await,
        expected_counts(&[
            ("pending", 2),
            ("queued", 2),
            ("running", 1),
            ("succeeded", 2),
            ("failed", 1),
            ("expired", 0),
            ("cancelled", 1),
            ("superseded", 0),
        ])
    );
    // Throughput: the two runs that succeeded just now, 100 blocks and 42 records each.
    let throughput = text_of(client, "#throughput-total").await;
    assert!(
        throughput.starts_with("200 blocks in the last 15 minutes"),
        "{throughput}"
    );
    let blocks = client
        .execute(
            "return [...document.querySelectorAll('#throughput td.blocks')]\
             .reduce((sum, td) => sum + Number(td.textContent), 0)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(blocks, serde_json::json!(200), "blocks per minute add up");
    let text = text_of(client, "#failures tbody").await;
    assert!(text.contains(FAILURE), "the failed run's error: {text}");
    let injected = client
        .execute(
            "return document.querySelectorAll('#failures b').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0), "the error is shown as text, not HTML");
    let failed_row = client
        .find(Locator::Css(&format!(
            "#failures tr[data-run-id='{}']",
            fx.failed
        )))
        .await;
    assert!(failed_row.is_ok(), "the failure row names its run");
    let cursors = text_of(client, "#cursors tbody").await;
    assert!(
        cursors.contains("block_stats") && cursors.contains("12345"),
        "progress per chain and model: {cursors}"
    );
    screenshot(client, "dashboard").await;
    assert_only_local(client, origin).await;

    // Cancel the queued run from its detail panel.
    click(client, &format!("#runs tr[data-run-id='{}']", fx.queued)).await;
    wait_for(
        client,
        &format!(
            "const d = document.getElementById('detail'); \
             return !d.hidden && d.dataset.runId === '{}' && d.dataset.state === 'queued' \
             && !document.getElementById('run-cancel').disabled",
            fx.queued
        ),
        "the queued run's detail",
    )
    .await;
    let detail = text_of(client, "#detail-body").await;
    assert!(
        detail.contains("1 of 1") && detail.contains("200\u{2013}299"),
        "the detail shows attempts and blocks: {detail}"
    );
    click(client, "#run-cancel").await;
    click(client, "#run-cancel-confirm").await;
    wait_for(
        client,
        "return document.getElementById('action-result').textContent.includes('Cancelled')",
        "the cancel to be confirmed",
    )
    .await;
    let run = fx.store.get(fx.queued).await.unwrap();
    assert_eq!(
        run.state,
        RunState::Cancelled,
        "the click cancelled the run in the store"
    );
    wait_for(
        client,
        "const n = s => document.querySelector(`#counts [data-state=${s}] .n`).textContent; \
         return n('cancelled') === '2' && n('queued') === '1'",
        "the counts to follow the cancel",
    )
    .await;

    // Pages of 4: 4 + 4 + 1 runs, each once.
    let limit = client
        .find(Locator::Css("#filters [name=limit]"))
        .await
        .unwrap();
    limit.clear().await.unwrap();
    limit.send_keys("4").await.unwrap();
    click(client, "#filters button[type=submit]").await;
    let mut seen = BTreeSet::new();
    for (page, want) in [(1, "4 runs"), (2, "4 runs"), (3, "1 runs (last page)")] {
        wait_for(
            client,
            &format!(
                "return document.getElementById('page-info').textContent === 'page {page}, {want}'"
            ),
            &format!("page {page}"),
        )
        .await;
        let ids = client
            .execute(
                "return [...document.querySelectorAll('#runs tr[data-run-id]')].map(r => r.dataset.runId)",
                vec![],
            )
            .await
            .unwrap();
        let ids: Vec<String> = serde_json::from_value(ids).unwrap();
        seen.extend(ids);
        if page < 3 {
            click(client, "#next-page").await;
        }
    }
    assert_eq!(seen.len(), 9, "the pages hold every run once");

    // Clicking a state's count lists that state's runs.
    click(client, "#counts [data-state=failed]").await;
    wait_for(
        client,
        &format!(
            "const rows = [...document.querySelectorAll('#runs tr[data-run-id]')]; \
             return rows.length === 1 && rows[0].dataset.runId === '{}'",
            fx.failed
        ),
        "the runs list filtered to the failed run",
    )
    .await;
}

async fn docs(client: &Client, origin: &str) {
    client.goto(&format!("{origin}/docs")).await.unwrap();
    wait_for(
        client,
        "return document.getElementById('reference').dataset.operations",
        "the reference to render",
    )
    .await;
    let shown = client
        .execute(
            "return [...document.querySelectorAll('article.operation')].map(a => \
             [a.querySelector('h3').textContent, a.textContent])",
            vec![],
        )
        .await
        .unwrap();
    let shown: Vec<(String, String)> = serde_json::from_value(shown).unwrap();
    let shown: BTreeMap<String, String> = shown.into_iter().collect();

    let doc = serde_json::to_value(openapi::document(false, false)).unwrap();
    let mut expected = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let title = format!("{} {path}", method.to_uppercase());
            let text = shown
                .get(&title)
                .unwrap_or_else(|| panic!("/docs does not show {title}: {:?}", shown.keys()));
            if let Some(summary) = op["summary"].as_str() {
                // The page shows `code` spans as code elements, without the backticks.
                let summary = summary.replace('`', "");
                assert!(text.contains(&summary), "{title} shows its summary");
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                assert!(text.contains(name), "{title} shows its parameter {name}");
            }
            for status in op["responses"].as_object().unwrap().keys() {
                assert!(text.contains(status.as_str()), "{title} shows {status}");
            }
            expected.insert(title);
        }
    }
    assert_eq!(
        shown.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every operation of /openapi.json, once"
    );
    let list = &shown["GET /v1/runs"];
    assert!(
        list.contains("limit") && list.contains("integer") && list.contains("RunPageView"),
        "parameters with their types and the response schema: {list}"
    );
    let submit = &shown["POST /v1/runs"];
    assert!(
        submit.contains("Request body") && submit.contains("chunk_size"),
        "the request body's fields: {submit}"
    );
    screenshot(client, "docs").await;
    assert_only_local(client, origin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; run with -- --ignored (.ci/run has its own step)"]
async fn dashboard_and_docs_in_headless_chromium() {
    let Some((driver, webdriver)) = start_driver().await else {
        return;
    };
    let fx = fixture().await;
    let state = ApiState::new(
        fx.deps.clone(),
        ApiConfig {
            auth: ApiAuth::new(WRITE, "", false),
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_on(listener, state, shutdown.clone()));

    let client = connect(&webdriver).await;
    // Checks run in their own task so the browser session is closed even when one fails.
    let checks = {
        let client = client.clone();
        tokio::spawn(async move {
            dashboard(&client, &origin, &fx).await;
            docs(&client, &origin).await;
        })
    };
    let outcome = checks.await;
    let _ = client.close().await;
    drop(driver);
    shutdown.cancel();
    server.await.unwrap().unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
