//! ethereum-etl export rows (`blocks`, `transactions`, `receipts`, `logs`, `token_transfers`
//! JSON lines) through `model_runner_adapters::file_source::parse_bytes` and
//! `batch_index::ethereum::parse_file`, the two readers of such files. Same entry points as
//! `jsonrpc_response`, with a corpus of etl rows: line-oriented, snake_case fields.
//!
//! Property: no panic; bad input is an error. Also: a file's lines parsed one by one never
//! panic either (a JSON-lines file cut at any line is still just input).
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
    let _ = batch_index::ethereum::parse_file("fuzz.jsonl", data, &mut facts);
    if let Some(first_line) = data.split(|b| *b == b'\n').next()
        && first_line.len() < data.len()
    {
        let _ = model_runner_adapters::file_source::parse_bytes(first_line);
    }
});
