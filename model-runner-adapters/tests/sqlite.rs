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

/// `migrate: false` opens a migrated store as is and refuses anything else, saying what to run,
/// without creating or changing the file; `migrate()` then fixes it.
#[tokio::test]
async fn without_migrate_the_schema_must_be_up_to_date() {
    use model_runner_adapters::sqlite::SqliteOptions;
    use model_runner_core::ports::{RunFilter, RunStore};

    let no_migrate = SqliteOptions { migrate: false };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let url = format!("sqlite://{}", path.display());
    let hint = "run `model-runner migrate`";

    // Missing file: refused, and not created.
    let err = SqliteRunStore::connect_with(&url, no_migrate.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("store not migrated"), "{err}");
    assert!(err.to_string().contains(hint), "{err}");
    assert!(
        !path.exists(),
        "a store opened without migrations created its file"
    );

    // An empty database (no schema at all): refused, left without the schema.
    {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE unrelated (x INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let err = SqliteRunStore::connect_with(&url, no_migrate.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("store not migrated"), "{err}");
    assert!(err.to_string().contains("no model-runner schema"), "{err}");
    assert!(!err.is_retryable());
    let err = SqliteRunStore::connect_with(&url, no_migrate.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no model-runner schema"),
        "checking created the schema: {err}"
    );

    // Migrated (the default): opens and works without migrating again.
    SqliteRunStore::connect(&url).await.unwrap();
    let store = SqliteRunStore::connect_with(&url, no_migrate.clone())
        .await
        .unwrap();
    assert!(
        store
            .list(&RunFilter::default())
            .await
            .unwrap()
            .runs
            .is_empty()
    );
    drop(store);

    // A migration this build does not know (migrated by a newer build): refused.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = SqliteRunStore::connect_with(&url, no_migrate.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer model-runner"), "{err}");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 99990101000000")
        .execute(&pool)
        .await
        .unwrap();

    // A migration of this build missing from the store (an older store): refused.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = SqliteRunStore::connect_with(&url, no_migrate.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lacks migration"), "{err}");
    assert!(err.to_string().contains(hint), "{err}");

    // The in-memory store cannot have been migrated by anyone else.
    let err = SqliteRunStore::connect_with("sqlite::memory:", no_migrate)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("store not migrated"), "{err}");
}
