//! `erc20_transfers`: ERC-20 `Transfer` events as rows with exactly ethereum-etl's
//! `token_transfers` fields and values.

use alloy_primitives::{Address, B256, U256, b256, hex};
use async_trait::async_trait;
use serde_json::json;

use crate::chain::ModelKind;
use crate::data::{Block, Log};
use crate::model::{FieldType, Model, ModelContext, ModelError, Record, RecordSchema};

/// `keccak256("Transfer(address,address,uint256)")`, shared by ERC-20 and ERC-721.
pub const TRANSFER_TOPIC: B256 =
    b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");

/// A decoded ERC-20 transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Token contract.
    pub token: Address,
    /// Sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Amount in the token's base unit.
    pub value: U256,
}

/// Decodes an ERC-20 `Transfer` log: topic0 is the transfer signature, exactly three topics
/// (an ERC-721 transfer has four: its token id is indexed) and 32 bytes of data. Anything else,
/// including malformed logs, is `None`.
pub fn decode_transfer(log: &Log) -> Option<Transfer> {
    if log.topics.len() != 3 || log.topics[0] != TRANSFER_TOPIC || log.data.len() != 32 {
        return None;
    }
    let word_address = |t: &B256| Address::from_slice(&t[12..]);
    Some(Transfer {
        token: log.address,
        from: word_address(&log.topics[1]),
        to: word_address(&log.topics[2]),
        value: U256::from_be_slice(&log.data),
    })
}

/// The `erc20_transfers` model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Erc20Transfers;

impl Erc20Transfers {
    /// Rows of one block, keyed by log index.
    pub fn block_records(ctx: &ModelContext, block: &Block) -> Vec<Record> {
        block
            .logs
            .iter()
            .filter_map(|log| decode_transfer(log).map(|t| (log, t)))
            .map(|(log, t)| {
                ctx.record(
                    block,
                    log.log_index,
                    json!({
                        "token_address": lower(&t.token),
                        "from_address": lower(&t.from),
                        "to_address": lower(&t.to),
                        "value": t.value.to_string(),
                        "transaction_hash": hex::encode_prefixed(log.transaction_hash),
                        "log_index": log.log_index,
                        "block_number": block.number,
                    }),
                )
            })
            .collect()
    }
}

/// ethereum-etl writes addresses in lowercase hex.
fn lower(a: &Address) -> String {
    hex::encode_prefixed(a)
}

#[async_trait]
impl Model for Erc20Transfers {
    fn name(&self) -> &str {
        "erc20_transfers"
    }
    fn version(&self) -> &str {
        "1.0.0"
    }
    fn kind(&self) -> ModelKind {
        ModelKind::Nonreads
    }
    /// ethereum-etl's `token_transfers` columns, in its order.
    fn record_schema(&self) -> Option<RecordSchema> {
        use FieldType::{BigInt, Hex};
        Some(
            RecordSchema::new()
                .required("token_address", Hex, "token contract, lowercase 0x-hex")
                .required("from_address", Hex, "sender, lowercase 0x-hex")
                .required("to_address", Hex, "recipient, lowercase 0x-hex")
                .required("value", BigInt, "amount in the token's base unit (uint256)")
                .log_position(),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        Ok(blocks
            .iter()
            .flat_map(|b| Self::block_records(ctx, b))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Bytes, address};

    fn log(topics: Vec<B256>, data: Vec<u8>) -> Log {
        Log {
            address: address!("f4eced2f682ce333f96f2d8966c613ded8fc95dd"),
            topics,
            data: Bytes::from(data),
            log_index: 0,
            transaction_hash: B256::ZERO,
            transaction_index: 0,
            block_number: 1,
        }
    }

    fn word(a: Address) -> B256 {
        a.into_word()
    }

    #[test]
    fn decodes_erc20_and_skips_others() {
        let from = address!("1b63142628311395ceafeea5667e7c9026c862ca");
        let to = address!("ac4df82fe37ea2187bc8c011a23d743b4f39019a");
        let mut value = vec![0u8; 32];
        value[29..].copy_from_slice(&[0x01, 0x86, 0xa0]);
        let ok = decode_transfer(&log(
            vec![TRANSFER_TOPIC, word(from), word(to)],
            value.clone(),
        ))
        .unwrap();
        assert_eq!(
            (ok.from, ok.to, ok.value),
            (from, to, U256::from(100_000u64))
        );
        assert_eq!(
            lower(&ok.from),
            "0x1b63142628311395ceafeea5667e7c9026c862ca"
        );
        assert_eq!(lower(&ok.from), format!("{:#x}", ok.from));
        // ERC-721: the token id is a fourth topic and data is empty.
        assert!(
            decode_transfer(&log(
                vec![TRANSFER_TOPIC, word(from), word(to), B256::ZERO],
                vec![]
            ))
            .is_none()
        );
        // Malformed: short data, missing topic, other event.
        assert!(
            decode_transfer(&log(
                vec![TRANSFER_TOPIC, word(from), word(to)],
                vec![1; 31]
            ))
            .is_none()
        );
        assert!(decode_transfer(&log(vec![TRANSFER_TOPIC, word(from)], value.clone())).is_none());
        assert!(decode_transfer(&log(vec![B256::ZERO, word(from), word(to)], value)).is_none());
    }
}
