//! The local Ethereum node the JSON-RPC tests use (ganache in CI), shared by `tests/jsonrpc.rs`
//! and `tests/erc20_e2e.rs`.

use serde_json::{Value, json};

/// `ETH_RPC_URL`, or `None` (with a note) when the node tests are not configured.
pub fn node_url() -> Option<String> {
    match std::env::var("ETH_RPC_URL") {
        Ok(u) => Some(u),
        Err(_) => {
            eprintln!(
                "ETH_RPC_URL is not set: the Ethereum node tests are not configured (CI sets it)"
            );
            None
        }
    }
}

/// One JSON-RPC call's `result`; panics on an error answer or an unreachable node (the
/// variable is set, so the node must answer).
pub async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let resp: Value = reqwest::Client::new()
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("ETH_RPC_URL is set but the node is unreachable: {e}"))
        .json()
        .await
        .unwrap();
    assert!(resp.get("error").is_none(), "{method}: {resp}");
    resp["result"].clone()
}
