//! The ABI registry over HTTP (`/v1/abis`) on a SQLite store, through the router as a client
//! sees it: status codes, the error envelope, auth scopes, the OpenAPI document; and a
//! registered ABI decoded by `abi_events` run by the engine's worker.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use model_runner::api::{ApiAuth, ApiConfig, ApiLimits, ApiState, app};
use model_runner_adapters::sqlite::SqliteRunStore;
use model_runner_core::Routing;
use model_runner_core::engine::EngineDeps;
use model_runner_core::memory::{MemoryRunQueue, MemorySink};
use model_runner_core::ports::RunStore;
use serde_json::{Value, json};
use tower::ServiceExt;

const WRITE: &str = "write-token-1";
const READ: &str = "read-token-1";
const TOKEN: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
const ERC20_ABI: &str = include_str!("../../model-runner-core/testdata/erc20.abi.json");

struct Api {
    app: Router,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteRunStore::connect(&format!("sqlite://{}/runs.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let deps = EngineDeps {
        store: store.clone(),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::new(),
        models: Arc::new(model_runner_core::models::builtin_with_store(store)),
        routing: Routing::default(),
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let config = ApiConfig {
        auth: ApiAuth::new(WRITE, READ, false),
        limits: ApiLimits::default(),
    };
    Api {
        app: app(ApiState::new(deps, config)),
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, value)
    }
}

fn erc20() -> Value {
    serde_json::from_str(ERC20_ABI).unwrap()
}

/// `{"error": {"code", "message", ...}}` with this code and a message containing `words`.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, words: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains(words), "{message:?} lacks {words:?}");
}

#[tokio::test]
async fn register_get_list_and_remove_an_abi() {
    let api = api().await;
    let path = format!("/v1/abis/ethereum/{TOKEN}");
    let (status, v) = api.call("GET", &path, Some(READ), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "abi_not_found");

    // A mixed-case address names the same contract.
    let upper = format!(
        "/v1/abis/ethereum/{}",
        TOKEN.to_uppercase().replace("0X", "0x")
    );
    let (status, put) = api.call("PUT", &upper, Some(WRITE), Some(erc20())).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["chain"], "ethereum");
    assert_eq!(put["address"], TOKEN);
    assert_eq!(put["abi"], erc20());

    let (status, got) = api.call("GET", &path, Some(READ), None).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got, put);

    let (status, list) = api.call("GET", "/v1/abis", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["abis"].as_array().unwrap().len(), 1);
    assert_eq!(list["abis"][0]["address"], TOKEN);
    assert_eq!(
        list["abis"][0]["events"],
        json!([
            "Approval(address,address,uint256)",
            "Transfer(address,address,uint256)"
        ])
    );
    let (_, other) = api
        .call("GET", "/v1/abis?chain=matic", Some(READ), None)
        .await;
    assert_eq!(other, json!({"abis": []}));

    let (status, v) = api.call("DELETE", &path, Some(WRITE), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let got = api.call("DELETE", &path, Some(WRITE), None).await;
    assert_error(&got, StatusCode::NOT_FOUND, "abi_not_found", TOKEN);
    let (status, _) = api.call("GET", &path, Some(READ), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_input_is_named_and_stores_nothing() {
    let api = api().await;
    let path = format!("/v1/abis/ethereum/{TOKEN}");
    let got = api
        .call("PUT", &path, Some(WRITE), Some(json!({"abi": []})))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_abi",
        "expected a JSON array",
    );
    let bad_type = json!([{"type": "event", "name": "X", "anonymous": false,
        "inputs": [{"name": "v", "type": "uint257", "indexed": false}]}]);
    let got = api.call("PUT", &path, Some(WRITE), Some(bad_type)).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_abi", "uint257");
    let (status, _) = api.call("GET", &path, Some(READ), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a refused ABI is not stored");

    let got = api
        .call(
            "PUT",
            "/v1/abis/ethereum/0x1234",
            Some(WRITE),
            Some(erc20()),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_address", "0x1234");
    assert_eq!(got.1["error"]["field"], "address");
    let got = api
        .call(
            "GET",
            &format!("/v1/abis/Ethereum/{TOKEN}"),
            Some(READ),
            None,
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_chain", "Ethereum");
    let got = api
        .call("GET", "/v1/abis?chain=ETH", Some(READ), None)
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_chain", "ETH");
    let got = api
        .call("GET", "/v1/abis?contract=1", Some(READ), None)
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_query", "contract");

    // Scopes: writes need a write token, reads any token.
    let (status, _) = api.call("PUT", &path, Some(READ), Some(erc20())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call("DELETE", &path, Some(READ), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.call("GET", "/v1/abis", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_routes_are_in_the_openapi_document() {
    let api = api().await;
    let (status, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let item = &doc["paths"]["/v1/abis/{chain}/{address}"];
    for method in ["put", "get", "delete"] {
        assert!(item[method].is_object(), "{method} is documented");
    }
    assert!(doc["paths"]["/v1/abis"]["get"].is_object());
    assert!(doc["components"]["schemas"]["AbiView"].is_object());
    assert!(doc["components"]["schemas"]["AbiList"].is_object());
    assert!(
        doc["components"]["schemas"]["SubmitRuns"]["properties"]["model"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("abi_events"))
    );
}
