//! `/openapi.json` describes the batch-index lookups when (and only when) an index is served,
//! and what they answer matches that description.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use model_runner::api::{ApiAuth, ApiConfig, ApiState, app};
use serde_json::Value;
use tower::ServiceExt;

const ACCOUNT: &str = "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE";
const ACCOUNT_PATH: &str = "/v1/index/accounts/{account}";
const TX_PATH: &str = "/v1/index/transactions/{hash}";

async fn fixture_source() -> std::sync::Arc<dyn batch_index::source::LedgerSource> {
    use batch_index::source::{ChainKind, SourceConfig, open_source};
    use batch_index::store::StoreRoot;

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../batch-index/tests/fixtures/stellar/testnet-lighthorizon"
    );
    let cfg = SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: "Test SDF Network ; September 2015".into(),
        ethereum_span: 64,
    };
    open_source(StoreRoot::open(fixture).unwrap(), &cfg)
        .await
        .unwrap()
}

async fn index_reader(dir: &std::path::Path) -> batch_index::IndexReader {
    use batch_index::extract::Modules;
    use batch_index::local_build::build_single_process;
    use batch_index::store::StoreRoot;

    let root = StoreRoot::open(dir.to_str().unwrap()).unwrap();
    build_single_process(fixture_source().await, &root, 1, 1, Modules::ALL)
        .await
        .unwrap();
    batch_index::IndexReader::open(root).await.unwrap()
}

/// The API over a SQLite store in `dir`, serving the fixture's index built in `dir/index`,
/// with read and write tokens.
async fn indexed_app(dir: &std::path::Path) -> axum::Router {
    let reader = index_reader(&dir.join("index")).await;
    app(state(dir, false).await.with_index(reader))
}

async fn state(dir: &std::path::Path, open_reads: bool) -> ApiState {
    state_with(
        dir,
        ApiConfig {
            auth: ApiAuth::new("writer", "reader", open_reads),
            ..Default::default()
        },
    )
    .await
}

async fn state_with(dir: &std::path::Path, config: ApiConfig) -> ApiState {
    let store = model_runner_adapters::sqlite::SqliteRunStore::connect(&format!(
        "sqlite://{}/runs.db",
        dir.display()
    ))
    .await
    .unwrap();
    let deps = model_runner_core::engine::EngineDeps {
        store: Arc::new(store),
        queue: Arc::new(model_runner_core::memory::MemoryRunQueue::new()),
        sink: Arc::new(model_runner_core::memory::MemorySink::new()),
        sources: Default::default(),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Default::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    ApiState::new(deps, config)
}

async fn get(app: &axum::Router, path: &str) -> (u16, Value) {
    get_as(app, path, Some("reader")).await
}

/// `GET path` with `token` (none: no `Authorization` header).
async fn get_as(app: &axum::Router, path: &str, token: Option<&str>) -> (u16, Value) {
    call_as(app, "GET", path, token).await
}

/// `method path` with no body and `token` (none: no `Authorization` header).
async fn call_as(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = axum::body::to_bytes(res.into_body(), 1 << 22)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(text(&body))),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The schema `r` refers to (or `r` itself), resolved in `doc`.
fn resolve<'a>(doc: &'a Value, r: &'a Value) -> &'a Value {
    match r["$ref"].as_str() {
        Some(path) => {
            let name = path.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => r,
    }
}

/// The property names a response schema allows (the union over a `oneOf`).
fn properties(doc: &Value, schema: &Value) -> Vec<String> {
    let s = resolve(doc, schema);
    if let Some(alts) = s["oneOf"].as_array() {
        return alts.iter().flat_map(|a| properties(doc, a)).collect();
    }
    s["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every field of `body` is a documented property of the `status` response of `GET path`.
fn assert_documented(doc: &Value, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path]["get"];
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "GET {path} answered {status}, which is not documented: {op}"
    );
    let allowed = properties(doc, schema);
    let body = body.as_object().expect("a JSON object");
    for field in body.keys() {
        assert!(
            allowed.contains(field),
            "GET {path} {status}: field `{field}` is not in the documented {allowed:?}"
        );
    }
    for field in resolve(doc, schema)["required"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let field = field.as_str().unwrap();
        assert!(
            body.contains_key(field),
            "GET {path} {status}: required field `{field}` is missing from {body:?}"
        );
    }
}

#[tokio::test]
async fn openapi_lists_the_index_lookups_when_an_index_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let reader = index_reader(&tmp.path().join("index")).await;

    // Without an index: not listed (they would answer 404).
    let plain = app(state(tmp.path(), false).await);
    let (status, doc) = get(&plain, "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"][ACCOUNT_PATH].is_null(), "listed without index");
    assert!(doc["paths"][TX_PATH].is_null(), "listed without index");
    let (status, _) = get(&plain, &format!("/v1/index/accounts/{ACCOUNT}")).await;
    assert_eq!(status, 404);

    // With an index: listed as read-scoped GETs with their parameters.
    let served = app(state(tmp.path(), false).await.with_index(reader.clone()));
    let (status, doc) = get(&served, "/openapi.json").await;
    assert_eq!(status, 200);
    for path in [ACCOUNT_PATH, TX_PATH] {
        let op = &doc["paths"][path]["get"];
        assert!(op.is_object(), "{path} missing from {}", doc["paths"]);
        assert_eq!(op["tags"][0], "index", "{op}");
        assert_eq!(op["security"], serde_json::json!([{"bearer": ["read"]}]));
        for status in ["200", "400", "401", "404"] {
            assert!(op["responses"][status].is_object(), "{path} {status}: {op}");
        }
    }
    let params: Vec<&str> = doc["paths"][ACCOUNT_PATH]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["account", "index", "from", "limit"]);
    assert!(
        doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "index")
    );
    // The other operations are all still there.
    assert!(doc["paths"]["/v1/runs"]["post"].is_object());

    // What the lookups answer is what the document says.
    let (status, v) = get(
        &served,
        &format!("/v1/index/accounts/{ACCOUNT}?index=all/payments"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["checkpoints"].as_array().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    assert_documented(&doc, ACCOUNT_PATH, status, &v);
    let (status, v) = get(&served, &format!("/v1/index/accounts/{ACCOUNT}?from=0")).await;
    assert_eq!(status, 200, "{v}");
    assert!(v.get("next").is_some(), "{v}");
    assert_documented(&doc, ACCOUNT_PATH, status, &v);
    let (status, v) = get(&served, "/v1/index/accounts/not-an-account").await;
    assert_eq!(status, 400, "{v}");
    assert_documented(&doc, ACCOUNT_PATH, status, &v);
    let (status, v) = get(
        &served,
        &format!("/v1/index/transactions/{}", "ab".repeat(32)),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert_documented(&doc, TX_PATH, status, &v);
    let (status, v) = get(&served, "/v1/index/transactions/xyz").await;
    assert_eq!(status, 400, "{v}");
    assert_documented(&doc, TX_PATH, status, &v);

    // With open reads the lookups, like every GET, also accept no credentials.
    let open = app(state(tmp.path(), true).await.with_index(reader));
    let (_, doc) = get(&open, "/openapi.json").await;
    let security = doc["paths"][TX_PATH]["get"]["security"].as_array().unwrap();
    assert!(
        security.iter().any(|s| s == &serde_json::json!({})),
        "{security:?}"
    );
}

/// The JSON error envelope of a 400: `(code, field)`.
fn envelope(status: u16, v: &Value) -> (u16, &str, &str) {
    (
        status,
        v["error"]["code"].as_str().unwrap_or("<no JSON envelope>"),
        v["error"]["field"].as_str().unwrap_or("<no field>"),
    )
}

#[tokio::test]
async fn bad_index_queries_get_the_json_error_envelope() {
    let tmp = tempfile::tempdir().unwrap();
    let app = indexed_app(tmp.path()).await;
    let (_, doc) = get(&app, "/openapi.json").await;
    let account = format!("/v1/index/accounts/{ACCOUNT}");
    for (query, field) in [
        ("from=abc", "from"),
        ("from=-1", "from"),
        ("from=4294967296", "from"),
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("index=nope", "index"),
        ("colour=red", "colour"),
        ("from=1&from=2", "from"),
    ] {
        let (status, v) = get(&app, &format!("{account}?{query}")).await;
        assert_eq!(
            envelope(status, &v),
            (400, "invalid_query", field),
            "?{query}: {v}"
        );
        assert!(v["error"]["message"].is_string(), "?{query}: {v}");
        assert_documented(&doc, ACCOUNT_PATH, status, &v);
    }
    let (status, v) = get(&app, "/v1/index/accounts/not-an-account").await;
    assert_eq!(
        envelope(status, &v),
        (400, "invalid_account", "account"),
        "{v}"
    );
    let (status, v) = get(&app, "/v1/index/transactions/xyz").await;
    assert_eq!(envelope(status, &v), (400, "invalid_hash", "hash"), "{v}");
    assert_documented(&doc, TX_PATH, status, &v);
    let (status, v) = get(&app, &format!("/v1/index/transactions/{}", "ab".repeat(32))).await;
    assert_eq!(envelope(status, &v), (404, "not_found", "hash"), "{v}");
}

#[tokio::test]
async fn account_checkpoints_come_in_pages_that_add_up_to_the_whole_set() {
    let tmp = tempfile::tempdir().unwrap();
    let reader = index_reader(&tmp.path().join("index")).await;
    // The hottest account of the fixture.
    let source = fixture_source().await;
    let (first, last) = source.available().await.unwrap();
    let collected = batch_index::map::collect(
        &source,
        first,
        last,
        2,
        batch_index::extract::Modules::ALL,
        |_| {},
    )
    .await
    .unwrap();
    let mut hottest = (String::new(), Vec::new());
    for (account, _) in collected.into_account_sets().0 {
        let set = reader
            .checkpoints(&account, batch_index::INDEX_ALL)
            .await
            .unwrap();
        if set.len() as usize > hottest.1.len() {
            hottest = (account, set.iter().collect::<Vec<u32>>());
        }
    }
    let (account, full) = hottest;
    assert!(
        full.len() >= 3,
        "the fixture's accounts are too quiet: {full:?}"
    );
    let covered = serde_json::json!({ "first": 1410048, "last": 1410367 });
    let app = app(state(tmp.path(), false).await.with_index(reader));
    let (_, doc) = get(&app, "/openapi.json").await;

    // No parameters: the first page of the default size, here the whole set.
    let (status, v) = get(&app, &format!("/v1/index/accounts/{account}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["checkpoints"], serde_json::json!(full), "{v}");
    assert_eq!(
        (&v["next"], &v["from"], &v["limit"]),
        (&Value::Null, &0.into(), &1000.into())
    );
    assert_eq!(v["covered"], covered, "{v}");
    assert_documented(&doc, ACCOUNT_PATH, status, &v);

    for limit in [1, 2, full.len() - 1, full.len(), 10_000] {
        let mut seen = Vec::new();
        let mut from = Some(0u64);
        let mut pages = 0;
        while let Some(f) = from {
            let (status, v) = get(
                &app,
                &format!("/v1/index/accounts/{account}?from={f}&limit={limit}"),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            assert_documented(&doc, ACCOUNT_PATH, status, &v);
            assert_eq!(v["covered"], covered, "{v}");
            let page: Vec<u32> = serde_json::from_value(v["checkpoints"].clone()).unwrap();
            assert!(
                !page.is_empty() && page.len() <= limit,
                "limit {limit}: {v}"
            );
            assert!(page[0] as u64 >= f, "{v}");
            seen.extend(page);
            from = v["next"].as_u64();
            pages += 1;
            assert!(pages <= full.len(), "limit {limit}: the walk does not end");
        }
        assert_eq!(
            seen, full,
            "limit {limit}: the pages are not the set, once each"
        );
        assert_eq!(pages, full.len().div_ceil(limit), "limit {limit}");
    }

    // A page may start between checkpoints, and past the last one it is empty.
    let (_, v) = get(
        &app,
        &format!("/v1/index/accounts/{account}?from={}&limit=1", full[0] + 1),
    )
    .await;
    assert_eq!(v["checkpoints"], serde_json::json!([full[1]]), "{v}");
    let after = full.last().unwrap() + 1;
    let (status, v) = get(&app, &format!("/v1/index/accounts/{account}?from={after}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["checkpoints"], &v["next"]),
        (&serde_json::json!([]), &Value::Null),
        "{v}"
    );
    assert_documented(&doc, ACCOUNT_PATH, status, &v);
}

#[tokio::test]
async fn a_page_larger_than_the_maximum_is_refused_naming_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let app = indexed_app(tmp.path()).await;
    let (_, doc) = get(&app, "/openapi.json").await;
    let (status, v) = get(&app, &format!("/v1/index/accounts/{ACCOUNT}?limit=10001")).await;
    assert_eq!(envelope(status, &v), (400, "invalid_query", "limit"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("10000"),
        "{v}"
    );
    let (status, v) = get(&app, &format!("/v1/index/accounts/{ACCOUNT}?limit=10000")).await;
    assert_eq!(status, 200, "{v}");
    // The document states the same bounds.
    let limit = doc["paths"][ACCOUNT_PATH]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&1.into(), &10000.into()),
        "{limit}"
    );
}

#[tokio::test]
async fn index_lookups_need_the_read_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let app = indexed_app(tmp.path()).await;
    let tx = format!("/v1/index/transactions/{}", "ab".repeat(32));
    for path in [format!("/v1/index/accounts/{ACCOUNT}"), tx.clone()] {
        for token in [None, Some("wrong")] {
            let (status, v) = get_as(&app, &path, token).await;
            assert_eq!(
                (status, v["error"]["code"].as_str()),
                (401, Some("unauthorized")),
                "{path} {token:?}: {v}"
            );
        }
    }
    for token in ["reader", "writer"] {
        let (status, v) = get_as(&app, &format!("/v1/index/accounts/{ACCOUNT}"), Some(token)).await;
        assert_eq!(status, 200, "{token}: {v}");
        let (status, v) = get_as(&app, &tx, Some(token)).await;
        assert_eq!(status, 404, "{token}: {v}");
    }
    // Same as the other reads.
    let (status, _) = get_as(&app, "/v1/runs", None).await;
    assert_eq!(status, 401);
}

/// The scope `/openapi.json` states for each operation is the one its handler's auth extractor
/// enforces: no token is refused where a token is required (and only there), a read token is
/// refused where a write token is required (and only there).
#[tokio::test]
async fn every_operation_needs_the_scope_the_document_states() {
    let tmp = tempfile::tempdir().unwrap();
    let app = indexed_app(tmp.path()).await;
    let (_, doc) = get(&app, "/openapi.json").await;
    let mut checked = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        // Auth runs before the path is read, so any segment does.
        let path: String = template
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            let scope = match op["security"].as_array().map(Vec::as_slice) {
                None | Some([]) => None,
                Some([one]) => Some(one["bearer"][0].as_str().unwrap()),
                Some(more) => panic!("{method} {template}: {more:?}"),
            };
            let refused = |status| status == 401 || status == 403;
            let (none, _) = call_as(&app, &method, &path, None).await;
            let (read, _) = call_as(&app, &method, &path, Some("reader")).await;
            let (write, _) = call_as(&app, &method, &path, Some("writer")).await;
            let expected = match scope {
                None => (false, false),
                Some("read") => (true, false),
                Some("write") => (true, true),
                Some(other) => panic!("{method} {template}: scope {other}"),
            };
            assert_eq!(
                (none == 401, read == 403),
                expected,
                "{method} {template}: no token {none}, read token {read}"
            );
            assert!(!refused(write), "{method} {template}: write token {write}");
            assert!(
                scope.is_some() || !refused(read),
                "{method} {template}: read token {read}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 17, "{checked} operations");
}

/// A lookup whose index read never finishes is cut by the API's request timeout, like any other
/// request. The shard is replaced by a FIFO with no writer, so opening it blocks.
#[cfg(unix)]
#[tokio::test]
async fn a_blocked_index_lookup_is_cut_by_the_request_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("index");
    let reader = index_reader(&index).await;
    let mut fifos = Vec::new();
    // The shards of the generation the root layout.json publishes.
    let pointer: Value =
        serde_json::from_slice(&std::fs::read(index.join("layout.json")).unwrap()).unwrap();
    let generation = index.join(pointer["generation"].as_str().unwrap());
    for entry in std::fs::read_dir(generation.join("accounts")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        fifos.push(path);
    }
    assert!(!fifos.is_empty());
    let config = ApiConfig {
        auth: ApiAuth::new("writer", "reader", false),
        limits: model_runner::api::ApiLimits {
            request_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        },
    };
    let app = app(state_with(tmp.path(), config).await.with_index(reader));
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        get(&app, &format!("/v1/index/accounts/{ACCOUNT}")),
    )
    .await;
    // Let the blocked open go (a writer opens the FIFO and closes it at once).
    let unblock = tokio::task::spawn_blocking(move || {
        for fifo in fifos {
            drop(std::fs::OpenOptions::new().write(true).open(fifo));
        }
    });
    let (status, v) = answer.expect("the lookup was not cut by the 200 ms request timeout");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("timeout")),
        "{v}"
    );
    unblock.await.unwrap();
}
