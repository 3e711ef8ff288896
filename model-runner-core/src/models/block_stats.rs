//! `block_stats`: one row per block with its counts.

use async_trait::async_trait;
use serde_json::json;

use super::erc20_transfers::decode_transfer;
use crate::chain::ModelKind;
use crate::data::Block;
use crate::model::{Model, ModelContext, ModelError, Record};

/// The `block_stats` model: transactions, logs, ERC-20 transfers, gas and contract creations
/// per block.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockStats;

#[async_trait]
impl Model for BlockStats {
    fn name(&self) -> &str {
        "block_stats"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn kind(&self) -> ModelKind {
        ModelKind::Nonreads
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
