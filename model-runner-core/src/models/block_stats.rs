//! `block_stats`: one row per block with its counts.

use async_trait::async_trait;
use serde_json::json;

use super::erc20_transfers::decode_transfer;
use crate::chain::ModelKind;
use crate::data::Block;
use crate::model::{FieldType, Model, ModelContext, ModelError, ModelSpec, Record, RecordSchema};

/// The `block_stats` model: transactions, logs, ERC-20 transfers, gas and contract creations
/// per block.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockStats;

#[async_trait]
impl Model for BlockStats {
    fn spec(&self) -> ModelSpec {
        use FieldType::{Hex, UInt64};
        ModelSpec::new("block_stats", "1.0.0", ModelKind::Nonreads).with_schema(
            RecordSchema::new()
                .required("block_number", UInt64, "block number")
                .required("block_hash", Hex, "block hash, lowercase 0x-hex")
                .required("timestamp", UInt64, "block time, Unix seconds")
                .required("transaction_count", UInt64, "transactions in the block")
                .required("log_count", UInt64, "logs in the block")
                .required(
                    "erc20_transfer_count",
                    UInt64,
                    "ERC-20 Transfer logs (three topics, 32-byte data)",
                )
                .required(
                    "contract_creation_count",
                    UInt64,
                    "transactions without a recipient",
                )
                .required("gas_used", UInt64, "gas used by all transactions"),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        Ok(blocks
            .iter()
            .map(|b| {
                let transfers = b
                    .logs
                    .iter()
                    .filter(|l| decode_transfer(l).is_some())
                    .count();
                let creations = b.transactions.iter().filter(|t| t.to.is_none()).count();
                ctx.record(
                    b,
                    0,
                    json!({
                        "block_number": b.number,
                        "block_hash": b.hash.to_string(),
                        "timestamp": b.timestamp,
                        "transaction_count": b.transactions.len(),
                        "log_count": b.logs.len(),
                        "erc20_transfer_count": transfers,
                        "contract_creation_count": creations,
                        "gas_used": b.gas_used,
                    }),
                )
            })
            .collect())
    }
}
