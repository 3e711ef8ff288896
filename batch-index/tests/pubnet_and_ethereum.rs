//! Other real inputs: pubnet ledgers of protocols 2 to 21 (base64 lines and
//! the zstd data-lake batch) decode and index; the Ethereum fixture blocks
//! index and every account's checkpoints match a brute-force scan.

mod process;

use std::collections::{BTreeMap, BTreeSet};

use batch_index::checkpoint::CheckpointPart;
use batch_index::extract::{CheckpointFacts, Modules};
use batch_index::local_build::build_single_process;
use batch_index::source::{ChainKind, SourceConfig, open_source};
use batch_index::stellar::{PUBNET_PASSPHRASE, add_ledger_facts, ledger_protocol, ledger_seq};
use batch_index::store::StoreRoot;
use batch_index::{INDEX_ALL, INDEX_PAYMENTS, IndexReader};
use process::{assert_ok, assert_same_index, batch_index, final_index_files, fixture};
use serde_json::Value;
use sha2::{Digest, Sha256};
use stellar_xdr::{LedgerCloseMeta, Limits, ReadXdr};

#[test]
fn pubnet_base64_ledgers_of_protocols_2_to_19_decode_and_index() {
    let text = std::fs::read_to_string(fixture("stellar/pubnet/ledgers-base64.txt")).unwrap();
    let network_id: [u8; 32] = Sha256::digest(PUBNET_PASSPHRASE.as_bytes()).into();
    let mut seen = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let meta = LedgerCloseMeta::from_xdr_base64(line.trim(), Limits::none())
            .unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let mut facts = CheckpointFacts::new(1 + ledger_seq(&meta) / 64);
        add_ledger_facts(
            &format!("line {}", i + 1),
            &meta,
            network_id,
            Modules::ALL,
            &mut facts,
        )
        .unwrap();
        assert_eq!(facts.ledgers, 1);
        assert_eq!(
            facts.accounts.is_empty(),
            facts.transactions.is_empty(),
            "participants iff transactions"
        );
        seen.push((
            ledger_seq(&meta),
            ledger_protocol(&meta),
            facts.transactions.len(),
        ));
    }
    seen.sort();
    let seqs: Vec<u32> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, vec![6154623, 16154623, 26154623, 36154623, 46154623]);
    let protocols: Vec<u32> = seen.iter().map(|s| s.1).collect();
    assert_eq!(protocols.first(), Some(&2), "{seen:?}");
    assert_eq!(protocols.last(), Some(&19), "{seen:?}");
    assert!(seen.iter().map(|s| s.2).sum::<usize>() > 0, "{seen:?}");
}

#[tokio::test]
async fn pubnet_data_lake_batch_protocol_21_indexes() {
    let src = StoreRoot::open(fixture("stellar/pubnet").to_str().unwrap()).unwrap();
    let cfg = SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: PUBNET_PASSPHRASE.into(),
        ethereum_span: 64,
    };
    let source = open_source(src, &cfg).await.unwrap();
    assert_eq!(source.available().await.unwrap(), (53312000, 53312000));
    let part = CheckpointPart::new(source.span(), 53312000, 53312000).unwrap();
    assert_eq!(part.checkpoint(), 1 + 53312000 / 64);
    let facts = source.checkpoint_facts(part, Modules::ALL).await.unwrap();
    assert_eq!(facts.ledgers, 1);
    assert_eq!(
        facts.transactions.len(),
        163,
        "the fixture README says 163 transactions"
    );
    assert!(facts.accounts.len() > 10);

    let tmp = tempfile::tempdir().unwrap();
    let target = StoreRoot::open(tmp.path().to_str().unwrap()).unwrap();
    build_single_process(source.clone(), &target, 2, 2, Modules::ALL)
        .await
        .unwrap();
    let reader = IndexReader::open(target).await.unwrap();
    for (h, p) in facts.transactions.iter().take(20) {
        let got = reader.transaction(&hex::encode(h)).await.unwrap().unwrap();
        assert_eq!(got.0, *p);
        assert_eq!(got.ledger(), 53312000);
    }
    for a in facts.accounts.keys().take(20) {
        assert!(
            reader
                .checkpoints(&a.to_string(), INDEX_ALL)
                .await
                .unwrap()
                .contains(1 + 53312000 / 64)
        );
    }
}

/// Independent brute-force scan of the Ethereum fixture JSON: account →
/// (blocks in all/all, blocks in all/payments), with the documented rules.
fn brute_force(dir: &std::path::Path) -> BTreeMap<String, (BTreeSet<u64>, BTreeSet<u64>)> {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    fn num(v: &Value) -> u64 {
        match v {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap(),
            _ => panic!("not a number: {v}"),
        }
    }
    fn nonzero(v: &Value) -> bool {
        match v {
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s
                .trim_start_matches("0x")
                .trim_start_matches('0')
                .is_empty(),
            _ => false,
        }
    }
    let transfer = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
    let mut out: BTreeMap<String, (BTreeSet<u64>, BTreeSet<u64>)> = BTreeMap::new();
    let mut add = |a: &Value, block: u64, payment: bool| {
        if let Some(s) = a.as_str() {
            let e = out.entry(s.to_lowercase()).or_default();
            e.0.insert(block);
            if payment {
                e.1.insert(block);
            }
        }
    };
    let mut paths = Vec::new();
    files(dir, &mut paths);
    for p in paths {
        let bytes = std::fs::read(&p).unwrap();
        for v in serde_json::Deserializer::from_slice(&bytes).into_iter::<Value>() {
            let v = v.unwrap();
            let v = v.get("result").cloned().unwrap_or(v);
            let logs: Vec<Value> =
                if let Some(txs) = v.get("transactions").and_then(Value::as_array) {
                    let block = num(&v["number"]);
                    for tx in txs {
                        let pay = nonzero(&tx["value"]);
                        add(&tx["from"], block, pay);
                        add(&tx["to"], block, pay);
                    }
                    vec![]
                } else if v.get("from_address").is_some() {
                    let block = num(&v["block_number"]);
                    let pay = nonzero(&v["value"]);
                    add(&v["from_address"], block, pay);
                    add(&v["to_address"], block, pay);
                    vec![]
                } else if let Some(logs) = v.get("logs").and_then(Value::as_array) {
                    add(&v["contractAddress"], num(&v["blockNumber"]), false);
                    logs.clone()
                } else if v.get("topics").is_some() {
                    vec![v.clone()]
                } else {
                    add(&v["contract_address"], num(&v["block_number"]), false);
                    vec![]
                };
            for log in logs {
                let block = num(log.get("blockNumber").unwrap_or(&log["block_number"]));
                add(&log["address"], block, false);
                let topics = log["topics"].as_array().unwrap();
                if topics.len() >= 3 && topics[0] == transfer {
                    for t in &topics[1..3] {
                        let s = t.as_str().unwrap();
                        add(&Value::String(format!("0x{}", &s[26..])), block, true);
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethereum_checkpoints_match_brute_force_scan() {
    let span = 1000u64;
    let dir = fixture("ethereum");
    let expected = brute_force(&dir);
    assert!(
        expected.len() > 50,
        "fixture should hold many accounts, got {}",
        expected.len()
    );

    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let cfg = SourceConfig {
        chain: ChainKind::Ethereum,
        network_passphrase: String::new(),
        ethereum_span: span as u32,
    };
    let source = open_source(StoreRoot::open(dir.to_str().unwrap()).unwrap(), &cfg)
        .await
        .unwrap();
    build_single_process(
        source,
        &StoreRoot::open(single.to_str().unwrap()).unwrap(),
        2,
        2,
        Modules::ALL,
    )
    .await
    .unwrap();
    let reader = IndexReader::open(StoreRoot::open(single.to_str().unwrap()).unwrap())
        .await
        .unwrap();
    for (account, (all, pay)) in &expected {
        let cp = |blocks: &BTreeSet<u64>| {
            blocks
                .iter()
                .map(|b| (1 + b / span) as u32)
                .collect::<BTreeSet<u32>>()
        };
        let got_all: BTreeSet<u32> = reader
            .checkpoints(account, INDEX_ALL)
            .await
            .unwrap()
            .iter()
            .collect();
        let got_pay: BTreeSet<u32> = reader
            .checkpoints(account, INDEX_PAYMENTS)
            .await
            .unwrap()
            .iter()
            .collect();
        assert_eq!(got_all, cp(all), "{account} all/all");
        assert_eq!(got_pay, cp(pay), "{account} all/payments");
    }
    // A known transaction: block 0x76250 (483920), index 0.
    let p = reader
        .transaction("0x04cbcb236043d8fb7839e07bbc7f5eed692fb2ca55d897f1101eac3e3ad4fab8")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.ledger(), p.tx_index()), (483920, 0));

    // The distributed run over the same files gives the same bytes.
    let run = tmp.path().join("run");
    let out = batch_index(
        &[
            "run",
            "--source",
            dir.to_str().unwrap(),
            "--target",
            run.to_str().unwrap(),
            "--map-jobs",
            "4",
            "--reduce-jobs",
            "2",
            "--workers",
            "2",
            "--chain",
            "ethereum",
            "--checkpoint-span",
            &span.to_string(),
        ],
        &[],
    );
    assert_ok(&out, "ethereum run");
    assert_same_index(
        &final_index_files(&single),
        &final_index_files(&run),
        "ethereum M=4 R=2 W=2",
    );
}
