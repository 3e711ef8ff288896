//! What a chain extractor hands to the map phase: per checkpoint, the set of
//! participating accounts (with the indexes each belongs to) and the
//! transaction positions.

use fnv::FnvHashMap;

use crate::account::Account;
use crate::error::{Error, Result};

/// Bit set over [`crate::ACCOUNT_INDEXES`]: bit 0 `all/all`, bit 1 `all/payments`.
pub type IndexMask = u8;
/// Mask of `all/all`.
pub const MASK_ALL: IndexMask = 1;
/// Mask of `all/all` plus `all/payments`.
pub const MASK_PAYMENT: IndexMask = 1 | 2;

/// Which outputs a map job builds (lighthorizon's `MODULES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modules {
    /// `accounts`: the `all/all` and `all/payments` account indexes.
    pub accounts: bool,
    /// `transactions`: the transaction hash to position index.
    pub transactions: bool,
}

impl Modules {
    /// Both modules.
    pub const ALL: Modules = Modules {
        accounts: true,
        transactions: true,
    };

    /// Parses a comma-separated list such as `accounts,transactions`.
    pub fn parse(list: &str) -> Result<Self> {
        let mut m = Modules {
            accounts: false,
            transactions: false,
        };
        for part in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part {
                "accounts" => m.accounts = true,
                "transactions" => m.transactions = true,
                other => {
                    return Err(Error::invalid(format!(
                        "unknown module `{other}` in MODULES=`{list}`: expected `accounts` and/or `transactions`"
                    )));
                }
            }
        }
        if !m.accounts && !m.transactions {
            return Err(Error::invalid(
                "MODULES is empty: expected `accounts` and/or `transactions`",
            ));
        }
        Ok(m)
    }
}

/// Everything one checkpoint (or a part of one) contributes to the index.
#[derive(Debug, Default)]
pub struct CheckpointFacts {
    /// The checkpoint number (`1 + ledger / span`).
    pub checkpoint: u32,
    /// Ledgers or blocks actually read.
    pub ledgers: u32,
    /// Participants and the indexes they belong to.
    pub accounts: FnvHashMap<Account, IndexMask>,
    /// `(transaction hash, position)` pairs, position as in [`toid`].
    pub transactions: Vec<([u8; 32], u64)>,
}

impl CheckpointFacts {
    /// Empty facts for `checkpoint`.
    pub fn new(checkpoint: u32) -> Self {
        CheckpointFacts {
            checkpoint,
            ..Default::default()
        }
    }

    /// Records that `account` took part, in the indexes of `mask`.
    pub fn add(&mut self, account: Account, mask: IndexMask) {
        *self.accounts.entry(account).or_insert(0) |= mask;
    }
}

/// Total order id: `ledger << 32 | tx_index << 12 | op_index` (lighthorizon;
/// Stellar `tx_index` is 1-based in apply order, Ethereum uses the block
/// number and the 0-based `transactionIndex`).
pub fn toid(ledger: u32, tx_index: u32, op_index: u32) -> u64 {
    (u64::from(ledger) << 32) | (u64::from(tx_index & 0xF_FFFF) << 12) | u64::from(op_index & 0xFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toid_layout() {
        assert_eq!(toid(1410048, 1, 0), (1410048u64 << 32) | (1 << 12));
        assert_eq!(toid(0, 0, 5), 5);
    }

    #[test]
    fn modules_parse_and_reject() {
        assert_eq!(
            Modules::parse("accounts,transactions").unwrap(),
            Modules::ALL
        );
        assert!(!Modules::parse("accounts").unwrap().transactions);
        let e = Modules::parse("accounts,bogus").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(Modules::parse("").is_err());
    }
}
