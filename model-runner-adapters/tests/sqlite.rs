//! The store conformance suite against the embedded SQLite store, on fresh files.

#![cfg(feature = "sqlite")]

use model_runner_adapters::sqlite::SqliteRunStore;
use model_runner_core::ports::StoreError;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    model_runner_core::conformance::store::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!("sqlite://{}/runs-{n}.db", dir.path().display());
        async move { SqliteRunStore::connect(&url).await.expect("open sqlite") }
    })
    .await;
}

#[tokio::test]
async fn sqlite_in_memory_conformance() {
    model_runner_core::conformance::store::run_all(|| async {
        SqliteRunStore::connect("sqlite::memory:").await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    let err = SqliteRunStore::connect("sqlite://x.db?synchronous=sometimes")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)));
    assert!(err.to_string().contains("\"sometimes\""), "{err}");
    let err = SqliteRunStore::connect("sqlite:///nonexistent-dir/x/y/runs.db")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot open"), "{err}");
}
