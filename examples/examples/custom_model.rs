//! Run with: `cargo run -p model-runner-examples --example custom_model`
//!
//! A user model (`large_transfers`: ERC-20 transfers above a threshold) registered next to the
//! built-ins and run embedded with a `Runner` over 500 devnet blocks: in-memory store and queue,
//! records in a memory sink. The model decodes its event with alloy's `sol!`, as any Solidity
//! event can be (a Uniswap V2 `Swap` is the same three lines with its own signature). Swap the adapters (`.store(SqliteRunStore...)`, `.sink(FileSink...)`)
//! without touching the model.
//!
//! The model declares its record schema: the worker checks every payload against it, and the
//! Parquet sink (`parquet+file:///DIR`, `s3://...`) makes one typed column per field.

use std::sync::Arc;

use alloy_sol_types::SolEvent;

use model_runner_adapters::devnet::DevnetSource;
use model_runner_core::engine::WorkerConfig;
use model_runner_core::memory::MemorySink;
use model_runner_core::prelude::*;

alloy_sol_types::sol! {
    /// ERC-20's `Transfer`: `from` and `to` are topics, `value` is the data.
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// ERC-20 transfers of more than `min` base units.
#[derive(Debug)]
struct LargeTransfers {
    min: U256,
}

#[async_trait]
impl Model for LargeTransfers {
    /// Exactly the payload below; change the version when this changes.
    fn spec(&self) -> ModelSpec {
        ModelSpec::new("large_transfers", "0.1.0", ModelKind::Nonreads).with_schema(
            RecordSchema::new()
                .required(
                    "token",
                    FieldType::Hex,
                    "ERC-20 contract, checksummed 0x-hex",
                )
                .required("from", FieldType::Hex, "sender, checksummed 0x-hex")
                .required("to", FieldType::Hex, "recipient, checksummed 0x-hex")
                .required("value", FieldType::BigInt, "amount in base units (uint256)"),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        let mut out = Vec::new();
        for block in blocks {
            for log in &block.logs {
                if log.topics.first() != Some(&Transfer::SIGNATURE_HASH) {
                    continue;
                }
                // An ERC-721 `Transfer` has the same signature with the token id as a fourth
                // topic and no data: it does not decode as this event, and is not ours.
                let Ok(t) = Transfer::decode_raw_log(log.topics.iter().copied(), &log.data) else {
                    continue;
                };
                if t.value > self.min {
                    out.push(ctx.record(
                        block,
                        log.log_index,
                        serde_json::json!({
                            "token": log.address.to_string(),
                            "from": t.from.to_string(),
                            "to": t.to.to_string(),
                            "value": t.value.to_string(),
                        }),
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chain = Chain::new("ethereum")?;
    let sink = Arc::new(MemorySink::new());
    // Every part not given is in memory; the built-in models are registered beside ours.
    let runner = Runner::builder()
        .source(DevnetSource::from_url(chain.clone(), "devnet://")?)
        .model(LargeTransfers {
            min: U256::from(10u64).pow(U256::from(25u64)),
        })
        .sink_arc(sink.clone())
        .worker_config(WorkerConfig {
            env: "example".into(),
            ..Default::default()
        })
        .build()?;
    let runs = runner
        .backfill("large_transfers", &chain, BlockRange::new(0, 499)?, 50)
        .await?;
    let settled = runner.run_until_done(&runs).await?;
    anyhow::ensure!(
        settled.iter().all(|r| r.state == RunState::Succeeded),
        "a run did not succeed: {settled:?}"
    );
    let records = sink.records(&topic_name("example", &chain));
    if let Some(schema) = sink.declared_schema("large_transfers", "0.1.0") {
        println!("declared schema: {}", serde_json::to_string(&schema)?);
    }
    anyhow::ensure!(
        !records.is_empty(),
        "no large transfers in 500 devnet blocks"
    );
    println!(
        "{} runs succeeded, {} large transfers; first: {}",
        runs.len(),
        records.len(),
        records[0].payload
    );
    Ok(())
}
