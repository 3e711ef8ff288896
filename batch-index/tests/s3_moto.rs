//! The same map/reduce run against S3 (moto in CI). The endpoint comes from
//! `S3_ENDPOINT` (e.g. `http://127.0.0.1:5000`): unset, the test prints that
//! it is not configured and checks nothing; set but unreachable, it FAILS.

mod process;

use std::io::{Read, Write};
use std::sync::Arc;

use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::source::{ChainKind, SourceConfig, open_source};
use batch_index::store::StoreRoot;
use batch_index::{INDEX_ALL, IndexReader};
use process::{TESTNET, assert_ok, assert_same_index, batch_index, final_index_files, fixture};

/// Creates a bucket with a plain path-style `PUT /<bucket>` (moto accepts
/// unsigned requests).
fn create_bucket(endpoint: &str, bucket: &str) {
    let url =
        url::Url::parse(endpoint).expect("S3_ENDPOINT must be a URL like http://127.0.0.1:5000");
    let host = url.host_str().expect("S3_ENDPOINT has no host");
    let port = url
        .port_or_known_default()
        .expect("S3_ENDPOINT has no port");
    let mut s = std::net::TcpStream::connect((host, port))
        .unwrap_or_else(|e| panic!("S3_ENDPOINT={endpoint} is set but unreachable: {e}"));
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "bucket creation failed: {resp}"
    );
}

fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("NETWORK_PASSPHRASE", TESTNET.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_moto_roundtrip() {
    let Ok(endpoint) = std::env::var("S3_ENDPOINT") else {
        println!(
            "s3_moto_roundtrip: S3_ENDPOINT is not set; S3 is NOT configured and nothing was tested"
        );
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bucket = format!("batch-index-{}-{nanos}", std::process::id());
    create_bucket(&endpoint, &bucket);

    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_region("us-east-1")
        .build()
        .unwrap();
    let s3: Arc<dyn object_store::ObjectStore> = Arc::new(s3);

    // Upload the testnet meta-archive under src/.
    let src = StoreRoot::new(s3.clone(), "src", &format!("s3://{bucket}/src"));
    let local = fixture("stellar/testnet-lighthorizon");
    src.put("latest", std::fs::read(local.join("latest")).unwrap())
        .await
        .unwrap();
    for e in std::fs::read_dir(local.join("ledgers")).unwrap() {
        let e = e.unwrap();
        let rel = format!("ledgers/{}", e.file_name().to_string_lossy());
        src.put(&rel, std::fs::read(e.path()).unwrap())
            .await
            .unwrap();
    }

    let out = batch_index(
        &[
            "run",
            "--source",
            &format!("s3://{bucket}/src"),
            "--target",
            &format!("s3://{bucket}/idx"),
            "--map-jobs",
            "3",
            "--reduce-jobs",
            "2",
            "--workers",
            "2",
        ],
        &s3_env(&endpoint),
    );
    assert_ok(&out, "run on S3");

    // Download the final index and compare with a local single-process build.
    let tmp = tempfile::tempdir().unwrap();
    let idx = StoreRoot::new(s3.clone(), "idx", &format!("s3://{bucket}/idx"));
    let downloaded = tmp.path().join("from-s3");
    // The root layout.json (the pointer) and the generation it names.
    let pointer: serde_json::Value =
        serde_json::from_slice(&idx.get("layout.json").await.unwrap()).unwrap();
    let generation = format!("{}/", pointer["generation"].as_str().unwrap());
    for (rel, _) in idx.list("").await.unwrap() {
        let in_gen = rel.strip_prefix(&generation).unwrap_or("");
        if rel == "layout.json"
            || in_gen == "layout.json"
            || in_gen.starts_with("accounts/")
            || in_gen.starts_with("transactions/")
        {
            let p = downloaded.join(&rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, idx.get(&rel).await.unwrap()).unwrap();
        }
    }
    let single = tmp.path().join("single");
    let cfg = SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: TESTNET.into(),
        ethereum_span: 64,
    };
    let source = open_source(StoreRoot::open(local.to_str().unwrap()).unwrap(), &cfg)
        .await
        .unwrap();
    build_single_process(
        source,
        &StoreRoot::open(single.to_str().unwrap()).unwrap(),
        2,
        2,
        Modules::ALL,
    )
    .await
    .unwrap();
    assert_same_index(
        &final_index_files(&single),
        &final_index_files(&downloaded),
        "S3 run",
    );

    // Queries straight from S3.
    let reader = IndexReader::open(idx).await.unwrap();
    let set = reader
        .checkpoints(
            "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE",
            INDEX_ALL,
        )
        .await
        .unwrap();
    assert!(set.contains(22033));
    assert_eq!(reader.range_reads(), 2);

    // A rerun is a no-op for every job (all _SUCCESS manifests exist).
    let out = batch_index(
        &[
            "run",
            "--source",
            &format!("s3://{bucket}/src"),
            "--target",
            &format!("s3://{bucket}/idx"),
            "--map-jobs",
            "3",
            "--reduce-jobs",
            "2",
            "--workers",
            "2",
        ],
        &s3_env(&endpoint),
    );
    assert_ok(&out, "rerun on S3");
}
