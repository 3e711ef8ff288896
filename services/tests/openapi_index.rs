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

async fn index_reader(dir: &std::path::Path) -> batch_index::IndexReader {
    use batch_index::extract::Modules;
    use batch_index::local_build::build_single_process;
    use batch_index::source::{Chain as IndexChain, SourceConfig, open_source};
    use batch_index::store::StoreRoot;

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../batch-index/tests/fixtures/stellar/testnet-lighthorizon"
    );
    let cfg = SourceConfig {
        chain: IndexChain::Stellar,
        network_passphrase: "Test SDF Network ; September 2015".into(),
        ethereum_span: 64,
    };
    let source = open_source(StoreRoot::open(fixture).unwrap(), &cfg)
        .await
        .unwrap();
    let root = StoreRoot::open(dir.to_str().unwrap()).unwrap();
    build_single_process(source, &root, 1, 1, Modules::ALL)
        .await
        .unwrap();
    batch_index::IndexReader::open(root).await.unwrap()
}

async fn state(dir: &std::path::Path, open_reads: bool) -> ApiState {
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
    };
    ApiState::new(
        deps,
        ApiConfig {
            auth: ApiAuth::new("writer", "reader", open_reads),
            ..Default::default()
        },
    )
}

async fn get(app: &axum::Router, path: &str) -> (u16, Value) {
    let res = app
        .clone()
        .oneshot(
            Request::get(path)
                .header("authorization", "Bearer reader")
                .body(Body::empty())
                .unwrap(),
        )
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
    for field in body.as_object().expect("a JSON object").keys() {
        assert!(
            allowed.contains(field),
            "GET {path} {status}: field `{field}` is not in the documented {allowed:?}"
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
    assert_eq!(params, ["account", "index", "from"]);
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
