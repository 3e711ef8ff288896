//! Run with: `cargo run -p model-runner-examples --example swap_adapters`
//!
//! On servers: `cargo run -p model-runner-examples --features postgres,rabbitmq --example
//! swap_adapters -- postgres://USER@HOST/DB amqp://USER:PASS@HOST/VHOST file:///tmp/sink`
//! (a Kafka sink is `kafka://HOST:PORT` with the feature `kafka`).
//!
//! One pipeline, two sets of adapters: first the in-memory store, queue and sink a test uses,
//! then the store, queue and sink named by URL (default: a SQLite file, the in-process queue
//! and a JSON-lines file sink in a temporary directory). The same 200 devnet blocks are modeled
//! both ways and the records compared: the model and the pipeline code do not change, only the
//! URLs. Passwords in the URLs never reach the output.

use std::collections::BTreeMap;
use std::sync::Arc;

use model_runner_adapters::connect::{queue_from_url, sink_from_url, store_from_url};
use model_runner_adapters::devnet::DevnetSource;
use model_runner_adapters::file_sink::read_topic;
use model_runner_core::Routing;
use model_runner_core::engine::WorkerConfig;
use model_runner_core::memory::MemorySink;
use model_runner_core::prelude::*;
use model_runner_core::redact::redact_url;

/// The pipeline under test: whatever adapters `builder` carries.
async fn model_blocks(builder: RunnerBuilder, chain: &Chain) -> anyhow::Result<()> {
    let runner = builder
        .source(DevnetSource::from_url(chain.clone(), "devnet://?seed=11")?)
        .worker_config(WorkerConfig {
            env: "example".into(),
            ..Default::default()
        })
        .build()?;
    let runs = runner
        .backfill("erc20_transfers", chain, BlockRange::new(0, 199)?, 50)
        .await?;
    for run in runner.run_until_done(&runs).await? {
        anyhow::ensure!(
            run.state == RunState::Succeeded,
            "run {} ended {}",
            run.id,
            run.state
        );
    }
    Ok(())
}

/// Record payloads by key (sinks are at-least-once: the last copy of a key wins).
fn by_key(records: Vec<Record>) -> BTreeMap<String, serde_json::Value> {
    records
        .into_iter()
        .map(|r| (r.key.to_string(), r.payload.into_value()))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chain = Chain::new("ethereum")?;
    let topic = topic_name("example", &chain);

    // 1. In memory, as in a unit test.
    let memory_sink = Arc::new(MemorySink::new());
    model_blocks(Runner::builder().sink_arc(memory_sink.clone()), &chain).await?;
    let in_memory = by_key(memory_sink.records(&topic));

    // 2. By URL.
    let dir = std::env::temp_dir().join(format!("swap-adapters-{}", std::process::id()));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store_url = args
        .first()
        .cloned()
        .unwrap_or_else(|| format!("sqlite://{}/runs.db", dir.display()));
    let queue_url = args.get(1).cloned().unwrap_or_else(|| "memory://".into());
    let sink_url = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| format!("file://{}/sink", dir.display()));
    std::fs::create_dir_all(&dir)?;
    let topology = Routing::default().all_queues([&chain]);
    let builder = Runner::builder()
        .store_arc(store_from_url(&store_url, true).await?)
        .queue_arc(queue_from_url(&queue_url, &topology).await?)
        .sink_arc(sink_from_url(&sink_url).await?);
    model_blocks(builder, &chain).await?;
    let Some(sink_dir) = sink_url.strip_prefix("file://") else {
        println!(
            "records sent to {}; compare them there",
            redact_url(&sink_url)
        );
        return Ok(());
    };
    let by_url = by_key(read_topic(
        &std::path::Path::new(sink_dir).join(format!("{topic}.jsonl")),
    )?);
    anyhow::ensure!(!in_memory.is_empty(), "no records in memory");
    anyhow::ensure!(
        in_memory == by_url,
        "{} records in memory, {} by URL, and they differ",
        in_memory.len(),
        by_url.len()
    );
    println!(
        "{} records, identical in memory and on store {} / queue {} / sink {}",
        in_memory.len(),
        redact_url(&store_url),
        redact_url(&queue_url),
        redact_url(&sink_url)
    );
    if args.is_empty() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
