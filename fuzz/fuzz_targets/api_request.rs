//! API request bodies, paths and query strings, through the real router (`model_runner::api::app`)
//! in-process with `tower::ServiceExt::oneshot`, over the in-memory store and queue and a devnet
//! source for chain `ethereum`.
//!
//! Input: byte 0 picks the method (bits 0-1: GET, POST, PUT, DELETE), the token (bits 2-3: the
//! write token, the read token, none, a wrong one) and whether the body is sent as JSON (bit 4);
//! then the path and query up to the first newline (a `/` is put in front when missing); the
//! rest is the body.
//!
//! Properties: no panic; no answer is a 5xx (bad input is a 4xx; the in-memory store never
//! fails, and the timeout is far away); every 4xx but axum's own 405 is the JSON error
//! envelope `{"error": {"code", ...}}`.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, header};
use libfuzzer_sys::fuzz_target;
use model_runner::api::{ApiAuth, ApiConfig, ApiLimits, ApiState, app};
use model_runner_adapters::devnet::{DevnetConfig, DevnetSource};
use model_runner_core::engine::{EngineDeps, Limits};
use model_runner_core::memory::{MemoryRunQueue, MemoryRunStore, MemorySink};
use model_runner_core::ports::BlockSource;
use model_runner_core::{Chain, Routing};
use tower::ServiceExt;

const WRITE: &str = "fuzz-write-token";
const READ: &str = "fuzz-read-token";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A fresh API (empty store and queue) per input, so every input is answered the same way
/// whatever ran before it, and the store does not grow over millions of inputs.
fn api() -> axum::Router {
    let chain = Chain::new("ethereum").expect("chain name");
    let deps = EngineDeps {
        store: Arc::new(MemoryRunStore::new()),
        queue: Arc::new(MemoryRunQueue::new()),
        sink: Arc::new(MemorySink::new()),
        sources: HashMap::from([(
            chain.clone(),
            Arc::new(DevnetSource::new(chain, DevnetConfig::default())) as Arc<dyn BlockSource>,
        )]),
        models: Arc::new(model_runner_core::models::builtin()),
        routing: Routing::default(),
        limits: Limits {
            // Small enough that a submission costs microseconds, not a hundred thousand runs.
            max_runs_per_backfill: 16,
            ..Limits::default()
        },
        clock: model_runner_core::clock::SystemClock::shared(),
    };
    let config = ApiConfig {
        auth: ApiAuth::new(WRITE, READ, false),
        limits: ApiLimits::default(),
    };
    app(ApiState::new(deps, config))
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let (target, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let uri = if target.starts_with('/') {
        target.to_owned()
    } else {
        format!("/{target}")
    };
    let method = ["GET", "POST", "PUT", "DELETE"][usize::from(control & 3)];
    let mut request = Request::builder().method(method).uri(uri.as_str());
    match (control >> 2) & 3 {
        0 => request = request.header(header::AUTHORIZATION, format!("Bearer {WRITE}")),
        1 => request = request.header(header::AUTHORIZATION, format!("Bearer {READ}")),
        2 => {}
        _ => request = request.header(header::AUTHORIZATION, "Bearer nope"),
    }
    if control & 16 == 0 {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    // An URI that `http` refuses never reaches the router: hyper answers 400 before it.
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    runtime().block_on(async {
        let response = api()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("an in-memory body");
        assert!(
            !status.is_server_error(),
            "{method} {uri} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        // axum answers 405 (a known path, another method) itself, with an empty body.
        if status.is_client_error() && status.as_u16() != 405 {
            let envelope: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {uri} answered {status} with a body that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(
                envelope
                    .pointer("/error/code")
                    .is_some_and(serde_json::Value::is_string),
                "{method} {uri} answered {status} without the error envelope: {envelope}"
            );
        }
    });
});
