//! The `/v1/index/...` endpoints over a real index, served on 127.0.0.1:0
//! and called with plain HTTP/1.1.

use batch_index::IndexReader;
use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::source::{Chain, SourceConfig, open_source};
use batch_index::store::StoreRoot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}")),
    )
}

#[tokio::test]
async fn account_and_transaction_endpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stellar/testnet-lighthorizon"
    );
    let cfg = SourceConfig {
        chain: Chain::Stellar,
        network_passphrase: "Test SDF Network ; September 2015".into(),
        ethereum_span: 64,
    };
    let source = open_source(StoreRoot::open(fixture).unwrap(), &cfg)
        .await
        .unwrap();
    let root = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
    build_single_process(source, &root, 2, 2, Modules::ALL)
        .await
        .unwrap();
    let reader = IndexReader::open(root).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, batch_index::http::router(reader)).await });

    let acc = "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE";
    let (status, body) = get(
        addr,
        &format!("/v1/index/accounts/{acc}?index=all/payments"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["checkpoints"]
            .as_array()
            .unwrap()
            .contains(&22033.into()),
        "{body}"
    );
    // The answer says which ledgers the index holds, so "no checkpoints"
    // can be told from "not indexed yet".
    let covered = serde_json::json!({ "first": 1410048, "last": 1410367 });
    assert_eq!(body["covered"], covered, "{body}");
    let (status, body) = get(addr, &format!("/v1/index/accounts/{acc}?from=22033")).await;
    assert_eq!(
        (status, body["next"].clone()),
        (200, 22033.into()),
        "{body}"
    );
    assert_eq!(body["covered"], covered, "{body}");

    let (status, body) = get(
        addr,
        "/v1/index/transactions/a62686f6700911321724330a05240cdf0c2347fd1b0792df423095a01e5e5b32",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["ledger"].clone(), body["tx_index"].clone()),
        (1410048.into(), 3.into())
    );
    assert_eq!(body["covered"], covered, "{body}");

    let (status, body) = get(addr, &format!("/v1/index/transactions/{}", "00".repeat(32))).await;
    assert_eq!((status, body["code"].clone()), (404, "not_found".into()));
    let (status, body) = get(addr, "/v1/index/accounts/not-an-account").await;
    assert_eq!(
        (status, body["code"].clone()),
        (400, "invalid_input".into())
    );
}
