//! Inputs found by the fuzz targets (`fuzz/`, see the README's "Fuzzing") that once panicked,
//! each kept as a test that it now fails with a clear error.

use std::collections::BTreeMap;

use batch_index::ethereum::parse_file;
use batch_index::partial::decode_accounts;
use batch_index::table::Footer;

/// `fuzz/fuzz_targets/jsonrpc_response.rs`: a log topic of 64 bytes with a two-byte character
/// across byte 24 panicked slicing it ("byte index 24 is not a char boundary").
#[test]
fn a_topic_with_a_non_ascii_character_is_a_decode_error() {
    let log = r#"{
        "blockNumber": "0x76052",
        "topics": [
            "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
            "0000000000000000000000001b63142628311395ceafeea5667e7c9026c862ca",
            "0x00000000000000000000000؞c4df82?e37eX2187gc8c011a23d743b4f39019a"
        ],
        "type": "mined"
    }"#;
    let mut blocks = BTreeMap::new();
    let err = parse_file("logs.json", log.as_bytes(), &mut blocks).unwrap_err();
    assert!(err.to_string().contains("is not 32 bytes of hex"), "{err}");
}

/// `fuzz/fuzz_targets/index_file.rs`: an accounts partial of 70 bytes whose one periodic set
/// (tag 3) claims about a billion checkpoints with gaps that fit the range; decoding looped
/// for longer than the fuzzer's 20 s timeout, filling a bitmap of hundreds of MiB.
#[test]
fn a_periodic_set_of_a_billion_checkpoints_is_refused() {
    let partial: &[u8] = b"BIXPART1\x12\x07all/a\x02 \x01\x01\x01\x01\x01\x01\x00\x00\x00\x00\x00\x00\x01J\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x08\x03\xff\xfc\xfc\xfc\x03\xfe\xfc\x03\x03\x03\x03\x03\x03\x08\x01\x01\x01\x07";
    let started = std::time::Instant::now();
    let err = decode_accounts(partial).unwrap_err();
    assert!(err.contains("exceeds the"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

/// An input written for `fuzz/fuzz_targets/index_file.rs`'s lookup mode (the fuzzer had not
/// reached it): a shard footer whose one block starts at `u64::MAX` panicked with an overflow
/// in `Footer::block_for` (the reader's lookup) instead of being refused as corrupt.
#[test]
fn a_footer_block_ending_past_u64_max_is_corrupt() {
    let mut footer = vec![0, 0, 1, 0];
    footer.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    footer.push(1);
    let mut table = footer.clone();
    table.extend_from_slice(&(footer.len() as u32).to_le_bytes());
    table.extend_from_slice(batch_index::table::MAGIC);
    let err = Footer::parse(&table).unwrap_err();
    assert!(err.contains("ends past u64::MAX"), "{err}");
}
