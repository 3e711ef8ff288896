//! Built-in models: [`Erc20Transfers`] and [`BlockStats`], both `nonreads`.

mod block_stats;
mod erc20_transfers;

use std::sync::Arc;

pub use block_stats::BlockStats;
pub use erc20_transfers::{Erc20Transfers, TRANSFER_TOPIC, decode_transfer};

use crate::model::ModelRegistry;

/// A registry holding every built-in model.
pub fn builtin() -> ModelRegistry {
    let mut r = ModelRegistry::new();
    r.register(Arc::new(Erc20Transfers)).expect("unique name");
    r.register(Arc::new(BlockStats)).expect("unique name");
    r
}

#[cfg(test)]
mod tests {
    use crate::chain::Chain;
    use crate::model::RegistryError;

    #[test]
    fn unknown_model_is_a_typed_error() {
        let r = super::builtin();
        assert_eq!(r.names(), ["block_stats", "erc20_transfers"]);
        let err = r.get("erc721_transfers").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown model \"erc721_transfers\": registered models are block_stats, erc20_transfers"
        );
        assert!(
            r.get_for("block_stats", &Chain::new("matic").unwrap())
                .is_ok()
        );
        let dup = r
            .clone()
            .with(std::sync::Arc::new(super::BlockStats))
            .unwrap_err();
        assert_eq!(
            dup,
            RegistryError::Duplicate {
                name: "block_stats".into()
            }
        );
    }
}
