//! Stellar ledgers, data-lake batches and participant extraction (batch-index `stellar.rs`).
//!
//! The first byte chooses the input's kind, the rest is the object as the source reads it:
//!
//! - `0`: a meta-archive `ledgers/<seq>` object, preceded by `<seq>` as 4 big-endian bytes:
//!   `decode_meta_archive_ledger` (testnet network id);
//! - `1`: a Galexie data-lake object (zstd of a `LedgerCloseMetaBatch`): `decode_lake_file_limited`
//!   with a 16 MiB bound (pubnet network id);
//! - `2`: a data-lake object name: `parse_lake_name`.
//!
//! Every decoded ledger goes through `add_ledger_facts` (hash check, participants, transaction
//! positions) and, so that extraction is reached even where the mutated ledger's hashes no
//! longer match, `add_envelope_participants` on each envelope.
//!
//! Property: no panic; bad input is an error.
#![no_main]

use batch_index::extract::{CheckpointFacts, Modules};
use batch_index::stellar;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const TESTNET: &str = "Test SDF Network ; September 2015";
const PUBNET: &str = "Public Global Stellar Network ; September 2015";

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind {
        0 => {
            if rest.len() < 4 {
                return;
            }
            let seq = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            if let Ok(meta) = stellar::decode_meta_archive_ledger("ledgers/fuzz", seq, &rest[4..]) {
                facts_of(&meta, TESTNET);
            }
        }
        1 => {
            let name = "FCD285FF--53312000.xdr.zstd";
            if let Ok(batch) = stellar::decode_lake_file_limited(name, rest, 16 << 20) {
                for meta in batch.ledger_close_metas.iter() {
                    facts_of(meta, PUBNET);
                }
            }
        }
        2 => {
            if let Ok(name) = std::str::from_utf8(rest)
                && let Some((start, end)) = stellar::parse_lake_name(name)
            {
                assert!(!name.is_empty(), "{start}-{end} from an empty name");
            }
        }
        _ => {}
    }
});

fn facts_of(meta: &stellar_xdr::LedgerCloseMeta, passphrase: &str) {
    let network_id: [u8; 32] = Sha256::digest(passphrase.as_bytes()).into();
    let seq = stellar::ledger_seq(meta);
    let _ = stellar::ledger_protocol(meta);
    let mut facts = CheckpointFacts::new(1 + seq / 64);
    let _ = stellar::add_ledger_facts("fuzz", meta, network_id, Modules::ALL, &mut facts);
    let mut direct = CheckpointFacts::new(1 + seq / 64);
    for env in stellar::envelopes(meta) {
        stellar::add_envelope_participants(env, &mut direct);
    }
    let _ = stellar::applied_hashes(meta);
}
