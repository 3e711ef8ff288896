//! The Redis progress board against a real server found at `REDIS_URL`
//! (`redis://127.0.0.1:6379`). Unset: each test says it is not configured and passes. Set but
//! unreachable: the tests fail. Every test uses its own key prefix, so the tests run in
//! parallel, also beside other processes on the same server.
#![cfg(feature = "redis")]

use std::time::Duration;

use model_runner_adapters::connect::progress_board_from_url;
use model_runner_adapters::redis_progress::{MGET_KEYS, RedisProgressBoard};
use model_runner_core::RunId;
use model_runner_core::conformance::progress::progress;
use model_runner_core::ports::{ProgressBoard, ProgressError};

/// `REDIS_URL`, or `None` (with a notice) when unset.
fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(u) => Some(u),
        Err(_) => {
            eprintln!(
                "REDIS_URL is not set: the Redis progress board test is not configured (CI sets it)"
            );
            None
        }
    }
}

/// `base` with a key prefix no other test uses.
fn isolated(base: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}prefix=model-runner-test:progress:{}",
        uuid::Uuid::new_v4()
    )
}

async fn connect(url: &str) -> RedisProgressBoard {
    RedisProgressBoard::connect(url)
        .await
        .unwrap_or_else(|e| panic!("REDIS_URL is set but the server does not answer: {e}"))
}

#[tokio::test]
async fn redis_progress_board_conformance() {
    let Some(url) = redis_url() else { return };
    let board = connect(&isolated(&url)).await;
    model_runner_core::conformance::progress::run_all(&board).await;
}

/// What a worker publishes on its connection, an API reads on another (each built from the URL,
/// as two processes do); the key is namespaced under the prefix; a read of more runs than one
/// MGET takes answers every one, in order.
#[tokio::test]
async fn progress_published_by_one_connection_is_read_by_another() {
    let Some(url) = redis_url() else { return };
    let url = isolated(&url);
    let worker = progress_board_from_url(&url).await.unwrap();
    let api = progress_board_from_url(&url).await.unwrap();

    let run = RunId::new();
    assert_eq!(api.read(&[run]).await.unwrap(), vec![None]);
    let p = progress(1, 250, 1000);
    worker
        .publish(&[(run, p)], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(api.read(&[run]).await.unwrap(), vec![Some(p)]);
    let later = progress(1, 1000, 1000);
    worker
        .publish(&[(run, later)], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(api.read(&[run]).await.unwrap(), vec![Some(later)]);

    // The key is `<prefix>:<run id>`, and Redis holds it with the TTL given.
    let raw = connect(&url).await;
    let key = raw.redis_key(run);
    assert!(
        key.starts_with("model-runner-test:progress:") && key.ends_with(&format!(":{run}")),
        "{key}"
    );
    let client = redis::Client::open(url.split('?').next().unwrap()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=60).contains(&ttl), "TTL of {key}: {ttl}");

    // Not a progress under the prefix (another program's key): reads as none.
    let junk = RunId::new();
    let _: () = redis::cmd("SET")
        .arg(raw.redis_key(junk))
        .arg("not json")
        .arg("EX")
        .arg(60)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        api.read(&[junk, run]).await.unwrap(),
        vec![None, Some(later)]
    );

    // More runs than one MGET: several MGETs in one pipeline, answered in order.
    let many: Vec<RunId> = (0..MGET_KEYS + 7).map(|_| RunId::new()).collect();
    for (i, r) in many.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        worker
            .publish(
                &[(*r, progress(2, i as u64, 10_000))],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    let read = api.read(&many).await.unwrap();
    assert_eq!(read.len(), many.len());
    for (i, got) in read.iter().enumerate() {
        let expected = (i % 3 == 0).then_some(i as u64);
        assert_eq!(got.map(|p| p.blocks_done), expected, "run #{i}");
    }
}

#[tokio::test]
async fn passwords_never_appear_in_errors() {
    // Port 1 on the loopback: nothing listens, the refusal is immediate.
    let err = RedisProgressBoard::connect("redis://runner:s3cret@127.0.0.1:1/0")
        .await
        .unwrap_err();
    assert!(matches!(err, ProgressError::Unavailable { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");

    let err = RedisProgressBoard::connect("redis://runner:s3cret@127.0.0.1:1/0?ttl_s=5")
        .await
        .unwrap_err();
    assert!(matches!(err, ProgressError::InvalidInput(_)), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("ttl_s"),
        "names the unknown parameter: {text}"
    );
    assert!(!text.contains("s3cret"), "{text}");

    let err = progress_board_from_url("memcached://u:s3cret@h")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}
