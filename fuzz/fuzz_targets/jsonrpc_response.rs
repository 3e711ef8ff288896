//! Ethereum JSON-RPC response documents (`eth_getBlockByNumber` with full transactions,
//! `eth_getTransactionReceipt`, `eth_getBlockReceipts`, `eth_getFilterLogs`, batch answers),
//! through both decoders that read them:
//!
//! - `model_runner_adapters::file_source::parse_bytes`: the `Loader` that the JSON-RPC source
//!   (`jsonrpc/range.rs`) also joins its responses with, then the joined blocks through
//!   `batch_index::ethereum::block_facts`;
//! - `batch_index::ethereum::parse_file`: the account index's reader of the same documents.
//!
//! Property: no panic; bad input is an error.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(blocks) = model_runner_adapters::file_source::parse_bytes(data) {
        for block in &blocks {
            let _ = batch_index::ethereum::block_facts(block);
        }
    }
    let mut facts = BTreeMap::new();
    let _ = batch_index::ethereum::parse_file("fuzz.json", data, &mut facts);
});
