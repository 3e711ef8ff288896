//! Hostile inputs fail cleanly: a length field far beyond the input, XDR
//! nested far too deep (which used to overflow the decoding thread's stack
//! and abort the process), and a zstd bomb (a data-lake object that
//! decompresses without end).

mod process;

use std::io::Write;

use batch_index::stellar::{XDR_DEPTH_LIMIT, decode_lake_file_limited, decode_meta_archive_ledger};
use process::{TESTNET, batch_index, fixture};
use stellar_xdr::{
    AccountId, Asset, ClaimPredicate, Claimant, ClaimantV0, CreateClaimableBalanceOp, HostFunction,
    InvokeHostFunctionOp, LedgerCloseMeta, LedgerCloseMetaBatch, Limits, Memo, MuxedAccount,
    Operation, OperationBody, Preconditions, PublicKey, ReadXdr, ScpHistoryEntry,
    ScpHistoryEntryV0, SequenceNumber, Transaction, TransactionEnvelope, TransactionExt,
    TransactionV1Envelope, Uint256, WriteXdr,
};

const SEQ: u32 = 1410048;

/// The real testnet ledger `SEQ` (a `LedgerCloseMeta::V0`).
fn real_ledger() -> LedgerCloseMeta {
    let bytes = std::fs::read(fixture(&format!(
        "stellar/testnet-lighthorizon/ledgers/{SEQ}"
    )))
    .unwrap();
    LedgerCloseMeta::from_xdr(&bytes[4..], Limits::none()).unwrap()
}

/// `meta` with one more transaction, of one operation `body`, as a
/// meta-archive object (4-byte version prefix + XDR).
fn with_operation(meta: &LedgerCloseMeta, body: OperationBody) -> Vec<u8> {
    let envelope = TransactionEnvelope::Tx(TransactionV1Envelope {
        tx: Transaction {
            source_account: MuxedAccount::Ed25519(Uint256([7; 32])),
            fee: 100,
            seq_num: SequenceNumber(1),
            cond: Preconditions::None,
            memo: Memo::None,
            operations: vec![Operation {
                source_account: None,
                body,
            }]
            .try_into()
            .unwrap(),
            ext: TransactionExt::V0,
        },
        signatures: Default::default(),
    });
    let mut meta = meta.clone();
    let LedgerCloseMeta::V0(v0) = &mut meta else {
        panic!("the testnet fixture holds V0 metas")
    };
    let mut txs = v0.tx_set.txs.to_vec();
    txs.push(envelope);
    v0.tx_set.txs = txs.try_into().unwrap();
    let mut out = vec![0, 0, 0, 0];
    out.extend(meta.to_xdr(Limits::none()).unwrap());
    out
}

fn claimable_balance(predicate: ClaimPredicate) -> OperationBody {
    OperationBody::CreateClaimableBalance(CreateClaimableBalanceOp {
        asset: Asset::Native,
        amount: 1,
        claimants: vec![Claimant::ClaimantTypeV0(ClaimantV0 {
            destination: AccountId(PublicKey::PublicKeyTypeEd25519(Uint256([9; 32]))),
            predicate,
        })]
        .try_into()
        .unwrap(),
    })
}

/// A meta-archive object whose claim predicate is `Not(Not(...(Unconditional)))`
/// nested `levels` times, built by splicing bytes (building the value would
/// itself recurse that deep).
fn nested_predicate_ledger(levels: usize) -> Vec<u8> {
    let meta = real_ledger();
    let plain = with_operation(&meta, claimable_balance(ClaimPredicate::Unconditional));
    let once = with_operation(
        &meta,
        claimable_balance(ClaimPredicate::Not(Some(Box::new(
            ClaimPredicate::Unconditional,
        )))),
    );
    // The predicates' discriminants are the first difference: 0 vs 3.
    let diff = plain.iter().zip(&once).position(|(a, b)| a != b).unwrap();
    assert_eq!((plain[diff], once[diff]), (0, 3));
    let at = diff - 3;
    let mut out = plain[..at].to_vec();
    for _ in 0..levels {
        out.extend([0, 0, 0, 3, 0, 0, 0, 1]); // Not, Some(
    }
    out.extend(&plain[at..]); // Unconditional, then the rest of the ledger
    out
}

/// Decodes on a thread with tokio's blocking-thread stack (2 MiB), where the
/// map job decodes.
fn decode_on_small_stack(bytes: Vec<u8>) -> Result<(), String> {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            decode_meta_archive_ledger("hostile", SEQ, &bytes)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn length_field_far_beyond_the_input_is_refused_before_allocating() {
    let marker = [0xDE, 0xAD, 0xBE, 0xEF, 0xFE, 0xED, 0xFA, 0xCE];
    let mut bytes = with_operation(
        &real_ledger(),
        OperationBody::InvokeHostFunction(InvokeHostFunctionOp {
            host_function: HostFunction::UploadContractWasm(marker.to_vec().try_into().unwrap()),
            auth: Default::default(),
        }),
    );
    let at = bytes.windows(8).position(|w| w == marker).unwrap() - 4;
    assert_eq!(bytes[at..at + 4], [0, 0, 0, 8]);
    // Claim 4 GiB of wasm in a ledger of a few KiB: without a length limit
    // the decoder allocated the 4 GiB before finding the input too short.
    bytes[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
    let err = decode_meta_archive_ledger("hostile", SEQ, &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hostile") && err.contains("length limit exceeded"),
        "{err}"
    );
}

#[test]
fn nesting_up_to_the_depth_limit_decodes_on_a_small_stack_and_beyond_fails() {
    decode_on_small_stack(nested_predicate_ledger(3)).unwrap();
    // Each level of predicate costs a few units of depth; find where the
    // limit cuts and check the deepest accepted nesting fit on the stack.
    let mut deepest_ok = None;
    for levels in (0..=XDR_DEPTH_LIMIT as usize).step_by(10) {
        match decode_on_small_stack(nested_predicate_ledger(levels)) {
            Ok(()) => deepest_ok = Some(levels),
            Err(e) => {
                assert!(e.contains("depth limit exceeded"), "{e}");
                break;
            }
        }
    }
    let deepest_ok = deepest_ok.unwrap();
    assert!(
        (50..XDR_DEPTH_LIMIT as usize).contains(&deepest_ok),
        "{deepest_ok}"
    );
}

#[test]
fn a_ledger_nested_a_hundred_thousand_deep_fails_the_map_job_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("source");
    std::fs::create_dir_all(src.join("ledgers")).unwrap();
    std::fs::write(src.join("latest"), SEQ.to_string()).unwrap();
    std::fs::write(
        src.join(format!("ledgers/{SEQ}")),
        nested_predicate_ledger(100_000),
    )
    .unwrap();
    let out = batch_index(
        &["map", "--job-index", "0"],
        &[
            ("TXMETA_SOURCE", src.to_str().unwrap().to_string()),
            (
                "INDEX_TARGET",
                tmp.path().join("idx").to_str().unwrap().to_string(),
            ),
            ("FIRST_CHECKPOINT", SEQ.to_string()),
            ("BATCH_SIZE", "64".to_string()),
            ("LAST_LEDGER", SEQ.to_string()),
            ("NETWORK_PASSPHRASE", TESTNET.to_string()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Before the limit: the decoder overflowed its stack and the process
    // aborted (killed by a signal, no exit code).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("ledgers/{SEQ}")) && stderr.contains("depth limit exceeded"),
        "{stderr}"
    );
}

#[test]
fn zstd_bomb_is_refused_at_the_size_bound() {
    // A valid batch whose last vector claims 2^31 entries of 16 zero bytes
    // each, followed by 32 MiB of zeros: it decompresses and decodes
    // "successfully" for as long as the zeros last.
    let mut meta = real_ledger();
    let LedgerCloseMeta::V0(v0) = &mut meta else {
        panic!("V0 fixture")
    };
    v0.scp_info = vec![ScpHistoryEntry::V0(ScpHistoryEntryV0 {
        quorum_sets: Default::default(),
        ledger_messages: stellar_xdr::LedgerScpMessages {
            ledger_seq: 0,
            messages: Default::default(),
        },
    })]
    .try_into()
    .unwrap();
    let batch = LedgerCloseMetaBatch {
        start_sequence: SEQ,
        end_sequence: SEQ,
        ledger_close_metas: vec![meta].try_into().unwrap(),
    };
    let xdr = batch.to_xdr(Limits::none()).unwrap();
    let (head, tail) = xdr.split_at(xdr.len() - 20);
    assert_eq!(tail, [&[0, 0, 0, 1][..], &[0; 16]].concat());
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(head).unwrap();
    enc.write_all(&0x7FFF_FFFFu32.to_be_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..32 {
        enc.write_all(&zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());

    let bound = 4 << 20;
    let err = decode_lake_file_limited("bomb.xdr.zstd", &bomb, bound)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bomb.xdr.zstd") && err.contains(&format!("more than {bound} bytes")),
        "{err}"
    );

    // The bound is exact: the honest batch decodes with a bound of its own
    // size and is refused one byte below it.
    let mut honest = xdr.clone();
    honest.truncate(xdr.len() - 20);
    honest.extend([0, 0, 0, 0]); // an empty scp_info
    let honest_zst = zstd::bulk::compress(&honest, 3).unwrap();
    let decoded = decode_lake_file_limited("honest", &honest_zst, honest.len()).unwrap();
    assert_eq!(decoded.ledger_close_metas.len(), 1);
    assert!(decode_lake_file_limited("honest", &honest_zst, honest.len() - 1).is_err());
    // The depth bound applies too: the batch is read with XDR_DEPTH_LIMIT.
    assert!(LedgerCloseMetaBatch::from_xdr(&honest, Limits::depth(XDR_DEPTH_LIMIT)).is_ok());
}
