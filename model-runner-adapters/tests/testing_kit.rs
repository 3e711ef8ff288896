//! The testing kit itself: batches from devnet and fixture files, a model run directly and
//! through the in-memory pipeline giving the same records, and clear errors.

use async_trait::async_trait;
use model_runner_adapters::testing::{BlockBatch, TestingError};
use model_runner_core::models::{BlockStats, Erc20Transfers};
use model_runner_core::{
    Block, FieldType, Model, ModelContext, ModelError, ModelKind, ModelSpec, Record, RecordSchema,
};

fn fixtures(sub: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ethereum-etl")
        .join(sub)
}

#[tokio::test]
async fn direct_and_pipeline_runs_give_the_same_records() {
    let batch = BlockBatch::devnet("ethereum", 1000..=1034).await.unwrap();
    assert_eq!(batch.blocks().len(), 35);
    let direct = batch.run(&Erc20Transfers).await.unwrap();
    assert!(direct.len() > 100, "devnet blocks carry transfers");
    direct.assert_unique_keys();
    let piped = batch.pipeline(Erc20Transfers).await.unwrap();
    assert_eq!(direct.payloads(), piped.payloads());
    let stats = batch.pipeline(BlockStats).await.unwrap();
    assert_eq!(stats.len(), 35);
    assert_eq!(
        stats.field("block_number")[0],
        serde_json::json!(1000),
        "{:?}",
        stats.0[0]
    );
}

#[tokio::test]
async fn fixture_files_make_a_batch() {
    let batch = BlockBatch::from_files("ethereum", fixtures("etl_receipts_483920"))
        .await
        .unwrap();
    assert_eq!(batch.range().start(), 483920);
    let transfers = batch.run(&Erc20Transfers).await.unwrap();
    assert_eq!(transfers.len(), 2);
    assert_eq!(
        transfers.field("value"),
        vec![serde_json::json!("100000"), serde_json::json!("200000")]
    );
    assert!(transfers.at(483920, 1).is_some());
}

/// Emits a record that does not match its own schema.
#[derive(Debug)]
struct Liar;

#[async_trait]
impl Model for Liar {
    fn spec(&self) -> ModelSpec {
        ModelSpec::new("liar", "1", ModelKind::Nonreads).with_schema(RecordSchema::new().required(
            "n",
            FieldType::UInt64,
            "a number",
        ))
    }
    async fn run(&self, ctx: &ModelContext, blocks: &[Block]) -> Result<Vec<Record>, ModelError> {
        Ok(vec![ctx.record(
            &blocks[0],
            0,
            serde_json::json!({"n": "seven"}),
        )])
    }
}

#[tokio::test]
async fn errors_name_what_is_wrong() {
    let err = BlockBatch::new("ethereum", Vec::new()).unwrap_err();
    assert!(err.to_string().contains("no blocks"), "{err}");
    let batch = BlockBatch::devnet("ethereum", 0..=3).await.unwrap();
    let mut gap = batch.blocks().to_vec();
    gap.remove(1);
    let err = BlockBatch::new("ethereum", gap).unwrap_err();
    assert!(
        err.to_string()
            .contains("consecutive and ascending: blocks 0-3: the source answered 3 blocks"),
        "{err}"
    );
    let err = BlockBatch::new("Not A Chain!", batch.blocks().to_vec()).unwrap_err();
    assert!(matches!(err, TestingError::Invalid(_)), "{err}");
    let err = batch.run(&Liar).await.unwrap_err();
    assert!(
        matches!(&err, TestingError::Schema { key, .. } if key.starts_with("liar:ethereum:0:0")),
        "{err}"
    );
    // Through the pipeline the worker refuses the record and the run fails, with its error.
    let err = batch.pipeline(Liar).await.unwrap_err();
    assert!(err.to_string().contains("record schema"), "{err}");
}
