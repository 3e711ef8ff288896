//! `erc20_transfers`: ERC-20 `Transfer` events as rows with exactly ethereum-etl's
//! `token_transfers` fields and values.

use alloy_primitives::{Address, B256, U256, b256};
use async_trait::async_trait;

use crate::chain::ModelKind;
use crate::data::{Block, Log};
use crate::model::{
    FieldType, Model, ModelContext, ModelError, ModelSpec, Payload, Record, RecordSchema,
};

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
        let mut out = Vec::new();
        Self::push_block_records(ctx, block, &mut out);
        out
    }

    /// Appends the rows of one block to `out`. Each payload is written as JSON text in one
    /// buffer, its keys in sorted order: the same text `json!` and serde_json give these fields.
    fn push_block_records(ctx: &ModelContext, block: &Block, out: &mut Vec<Record>) {
        for log in &block.logs {
            let Some(t) = decode_transfer(log) else {
                continue;
            };
            let payload = Payload::object_with_capacity(400)
                .u64("block_number", block.number)
                .hex("from_address", t.from.as_slice())
                .u64("log_index", log.log_index)
                .hex("to_address", t.to.as_slice())
                .hex("token_address", t.token.as_slice())
                .hex("transaction_hash", log.transaction_hash.as_slice())
                .display("value", &t.value)
                .finish();
            out.push(ctx.record(block, log.log_index, payload));
        }
    }
}

#[async_trait]
impl Model for Erc20Transfers {
    /// ethereum-etl's `token_transfers` columns, in its order.
    fn spec(&self) -> ModelSpec {
        use FieldType::{BigInt, Hex};
        ModelSpec::new("erc20_transfers", "1.0.0", ModelKind::Nonreads).with_schema(
            RecordSchema::new()
                .required("token_address", Hex, "token contract, lowercase 0x-hex")
                .required("from_address", Hex, "sender, lowercase 0x-hex")
                .required("to_address", Hex, "recipient, lowercase 0x-hex")
                .required("value", BigInt, "amount in the token's base unit (uint256)")
                .log_position(),
        )
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        // At most one record a log: reserved once, not grown through doublings.
        let mut out = Vec::with_capacity(blocks.iter().map(|b| b.logs.len()).sum());
        for b in blocks {
            Self::push_block_records(ctx, b, &mut out);
        }
        Ok(out)
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

    /// The payload written field by field is, byte for byte, the text of the `json!` object
    /// the model built before: lowercase 0x-hex, decimal value, sorted keys.
    #[tokio::test]
    async fn a_record_is_the_json_object_of_ethereum_etl_fields() {
        use crate::chain::{BlockRange, Chain};
        use crate::memory::MemoryBlockSource;
        use crate::ports::BlockSource;
        use crate::run::RunId;
        let from = address!("1B63142628311395ceafeea5667e7c9026c862ca");
        let to = address!("ac4df82fe37ea2187bc8c011a23d743b4f39019a");
        let mut transfer = log(
            vec![TRANSFER_TOPIC, word(from), word(to)],
            U256::MAX.to_be_bytes::<32>().to_vec(),
        );
        transfer.log_index = 7;
        transfer.transaction_hash = B256::repeat_byte(0xAB);
        let other = log(vec![B256::ZERO], vec![]);
        let chain = Chain::new("ethereum").unwrap();
        let range = BlockRange::new(18_000_000, 18_000_000).unwrap();
        let source = MemoryBlockSource::with_empty_blocks(chain.clone(), 18_000_000..=18_000_000);
        let mut block = source.blocks(range).await.unwrap().remove(0);
        block.logs = vec![other, transfer.clone()];
        let ctx = ModelContext {
            run_id: RunId::new(),
            model: "erc20_transfers".into(),
            model_version: "1.0.0".into(),
            chain,
            range,
            source: std::sync::Arc::new(source),
            notes: Default::default(),
        };
        let records = Erc20Transfers::block_records(&ctx, &block);
        assert_eq!(records.len(), 1);
        let expected = serde_json::json!({
            "token_address": alloy_primitives::hex::encode_prefixed(transfer.address),
            "from_address": "0x1b63142628311395ceafeea5667e7c9026c862ca",
            "to_address": "0xac4df82fe37ea2187bc8c011a23d743b4f39019a",
            "value": U256::MAX.to_string(),
            "transaction_hash": format!("0x{}", "ab".repeat(32)),
            "log_index": 7,
            "block_number": 18_000_000,
        });
        assert_eq!(
            records[0].payload.as_json(),
            serde_json::to_string(&expected).unwrap()
        );
        assert_eq!(records[0].key.position, 7);
        Erc20Transfers
            .spec()
            .record_schema()
            .unwrap()
            .check_payload(&records[0].payload)
            .unwrap();
    }
}
