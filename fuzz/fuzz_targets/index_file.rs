//! batch-index index files: shard tables and their footers (`table.rs`), the values the reader
//! decodes from them (`reduce.rs`, `bitmap_encoding.rs`), map partials (`partial.rs`), the
//! manifests and `layout.json` (`manifest.rs`, `reduce.rs`), and the account and transaction
//! strings a lookup starts from (`account.rs`, `reader.rs`).
//!
//! The first byte chooses what the rest is:
//!
//! - `0`: one lookup as `IndexSnapshot` does it (reader.rs): byte 1 is the key's length, then
//!   the key, then a whole shard object; the footer is parsed from its last `FOOTER_BUDGET`
//!   bytes, the block that may hold the key is cut out as a range read would (a range outside
//!   the object is an error there), searched, and a found value decoded as an account value
//!   with the footer's name table (and as a transaction position);
//! - `1`: `decode_account_shard` (an extension reads whole shards);
//! - `2`: `decode_transaction_shard`;
//! - `3`: `partial::decode_accounts`;
//! - `4`: `partial::decode_transactions`;
//! - `5`: JSON of `layout.json`, a map manifest or a reduce manifest;
//! - `6`: an account (`G...`, `M...`, `0x...`) and a transaction hash as the API passes them.
//!
//! Property: no panic; corrupt input is an error.
#![no_main]

use std::str::FromStr;

use batch_index::account::{Account, Owner};
use batch_index::manifest::{MapManifest, ReduceManifest};
use batch_index::reduce::{self, Layout};
use batch_index::table::{self, FOOTER_BUDGET, Footer};
use batch_index::{partial, reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind {
        0 => lookup(rest),
        1 => {
            let _ = reduce::decode_account_shard(rest);
        }
        2 => {
            let _ = reduce::decode_transaction_shard(rest);
        }
        3 => {
            let _ = partial::decode_accounts(rest);
        }
        4 => {
            let _ = partial::decode_transactions(rest);
        }
        5 => {
            if let Ok(layout) = serde_json::from_slice::<Layout>(rest) {
                let _ = serde_json::to_vec(&layout);
            }
            if let Ok(m) = serde_json::from_slice::<MapManifest>(rest) {
                let _ = m.requested_range();
                let _ = m.covered_range();
                let _ = m.is_complete();
                let _ = reduce::check_coverage(std::slice::from_ref(&m));
            }
            let _ = serde_json::from_slice::<ReduceManifest>(rest);
        }
        6 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(account) = Account::from_str(text) {
                    let _ = account.to_string();
                }
                let _ = Owner::of_account(text, 4, 2);
                let _ = reader::parse_tx_hash(text);
            }
        }
        _ => {}
    }
});

fn lookup(rest: &[u8]) {
    let Some((&key_len, rest)) = rest.split_first() else {
        return;
    };
    let Some((key, object)) = rest.split_at_checked(usize::from(key_len)) else {
        return;
    };
    let tail = &object[object.len().saturating_sub(FOOTER_BUDGET)..];
    let Ok(footer) = Footer::parse(tail) else {
        return;
    };
    let names = reduce::decode_index_names(&footer.meta);
    let Some(range) = footer.block_for(key) else {
        return;
    };
    let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end)) else {
        return;
    };
    let Some(block) = object.get(start..end) else {
        return;
    };
    if let Ok(Some(value)) = table::find_in_block(block, key) {
        if let Ok(names) = &names {
            let _ = reduce::decode_account_value(names, value);
        }
        let _ = <[u8; 8]>::try_from(value).map(u64::from_be_bytes);
    }
    for range in footer.block_ranges() {
        let _ = range.end.checked_sub(range.start);
    }
}
