//! Map/reduce over the real testnet ledgers (lighthorizon fixture, 320
//! ledgers, checkpoints 22033..22037): distributed runs as separate processes
//! versus the single-process build, hand-checked participants of real
//! transactions, and the rerun / force contract.

mod process;

use std::collections::BTreeSet;

use batch_index::extract::Modules;
use batch_index::local_build::build_single_process;
use batch_index::source::{ChainKind, SourceConfig, open_source};
use batch_index::store::StoreRoot;
use batch_index::{INDEX_ALL, INDEX_PAYMENTS, IndexReader};
use process::{
    TESTNET, assert_ok, assert_same_index, batch_index, final_index_files, fixture,
    generation_objects,
};

fn testnet_source_cfg() -> SourceConfig {
    SourceConfig {
        chain: ChainKind::Stellar,
        network_passphrase: TESTNET.into(),
        ethereum_span: 64,
    }
}

async fn single_process(dir: &std::path::Path, r: u32, w: u32) {
    let src = StoreRoot::open(fixture("stellar/testnet-lighthorizon").to_str().unwrap()).unwrap();
    let source = open_source(src, &testnet_source_cfg()).await.unwrap();
    build_single_process(
        source,
        &StoreRoot::open(dir.to_str().unwrap()).unwrap(),
        r,
        w,
        Modules::ALL,
    )
    .await
    .unwrap();
}

fn run_distributed(dir: &std::path::Path, m: u32, r: u32, w: u32) {
    let out = batch_index(
        &[
            "run",
            "--source",
            fixture("stellar/testnet-lighthorizon").to_str().unwrap(),
            "--target",
            dir.to_str().unwrap(),
            "--map-jobs",
            &m.to_string(),
            "--reduce-jobs",
            &r.to_string(),
            "--workers",
            &w.to_string(),
        ],
        &[("NETWORK_PASSPHRASE", TESTNET.to_string())],
    );
    assert_ok(&out, &format!("run M={m} R={r} W={w}"));
}

fn all_accounts(dir: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("job_") {
            let text = std::fs::read_to_string(p.join("accounts.txt")).unwrap();
            out.extend(text.lines().map(str::to_string));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_runs_are_byte_identical_to_single_process_build() {
    let tmp = tempfile::tempdir().unwrap();
    let mut reference_sets = None;
    for (m, r, w) in [(1u32, 1u32, 1u32), (3, 2, 2), (5, 3, 4)] {
        let run_dir = tmp.path().join(format!("run-{m}-{r}-{w}"));
        let single_dir = tmp.path().join(format!("single-{r}-{w}"));
        run_distributed(&run_dir, m, r, w);
        single_process(&single_dir, r, w).await;
        let ran = final_index_files(&run_dir);
        assert_eq!(
            ran.len(),
            1 + 2 * (r * w) as usize,
            "one account and one tx shard per worker"
        );
        assert_same_index(
            &ran,
            &final_index_files(&single_dir),
            &format!("M={m} R={r} W={w}"),
        );
        // Manifests included: they state what the generation holds, not how
        // it was built.
        assert_same_index(
            &generation_objects(&run_dir),
            &generation_objects(&single_dir),
            &format!("M={m} R={r} W={w}, every object"),
        );

        // Every layout answers the same for every account seen by any map job.
        let accounts = all_accounts(&run_dir);
        assert!(
            accounts.len() > 400,
            "expected the fixture's ~480 accounts, got {}",
            accounts.len()
        );
        let reader = IndexReader::open(StoreRoot::open(run_dir.to_str().unwrap()).unwrap())
            .await
            .unwrap();
        let mut sets = Vec::new();
        for a in &accounts {
            let all = reader.checkpoints(a, INDEX_ALL).await.unwrap();
            assert!(
                !all.is_empty(),
                "{a} was seen by a map job but has no all/all checkpoints"
            );
            assert!(
                all.iter().all(|c| (22033..=22037).contains(&c)),
                "{a}: {all:?}"
            );
            let pay = reader.checkpoints(a, INDEX_PAYMENTS).await.unwrap();
            assert!(
                pay.is_subset(&all),
                "{a}: payments {pay:?} not within all {all:?}"
            );
            sets.push((a.clone(), all, pay));
        }
        match &reference_sets {
            None => reference_sets = Some(sets),
            Some(reference) => assert!(
                reference == &sets,
                "M={m} R={r} W={w} disagrees with M=1 R=1 W=1"
            ),
        }
    }
}

#[tokio::test]
async fn hand_checked_participants_of_real_transactions() {
    let tmp = tempfile::tempdir().unwrap();
    single_process(tmp.path(), 2, 2).await;
    let reader = IndexReader::open(StoreRoot::open(tmp.path().to_str().unwrap()).unwrap())
        .await
        .unwrap();
    let has = |set: &roaring::RoaringBitmap, c: u32| set.contains(c);

    // Ledger 1410048 (checkpoint 22033), tx a62686f6..., apply index 3:
    // tx source GAG5RK3L..., one create_account with op source GAIH3ULL...
    // creating GC4HPUZ3....
    let tx_source = "GAG5RK3LXGM22HAQD6THBFCL7P7OYBN2AWQNG6I3NVNGKJN5BUMKNKXA";
    let op_source = "GAIH3ULLFQ4DGSECF2AR555KZ4KNDGEKN4AFI4SU2M7B43MGK3QJZNSR";
    let created = "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE";
    assert!(has(
        &reader.checkpoints(tx_source, INDEX_ALL).await.unwrap(),
        22033
    ));
    assert!(!has(
        &reader.checkpoints(tx_source, INDEX_PAYMENTS).await.unwrap(),
        22033
    ));
    for a in [op_source, created] {
        assert!(
            has(&reader.checkpoints(a, INDEX_ALL).await.unwrap(), 22033),
            "{a}"
        );
        assert!(
            has(&reader.checkpoints(a, INDEX_PAYMENTS).await.unwrap(), 22033),
            "{a}"
        );
    }
    let pos = reader
        .transaction("a62686f6700911321724330a05240cdf0c2347fd1b0792df423095a01e5e5b32")
        .await
        .unwrap()
        .expect("indexed transaction");
    assert_eq!(
        (pos.ledger(), pos.tx_index(), pos.op_index()),
        (1410048, 3, 0)
    );
    assert_eq!(pos.0, (1410048u64 << 32) | (3 << 12));

    // Ledger 1410096 (checkpoint 22033), tx d893efa6...: source GBCKMB22...
    // claws back from GCUAF247..., allow_trust GAN27PCH..., pays GAN27PCH....
    let issuer = "GBCKMB22U56BFQMAAWSZY2CLPTX6OJN7EDSQMHGG4JCPH5TKAZG5DWUN";
    let clawed = "GCUAF247NYY5CEYZBD2MCFNDETFLTLI4WSEJL23SWOWY667FN626C3AY";
    let trustor = "GAN27PCHRH3BXLBDVVAZSDYPSWBXSHK7LNXRNRQCX5ABQGLW5EJYCUYW";
    assert!(has(
        &reader.checkpoints(clawed, INDEX_ALL).await.unwrap(),
        22033
    ));
    assert!(has(
        &reader.checkpoints(trustor, INDEX_PAYMENTS).await.unwrap(),
        22033
    ));
    assert!(has(
        &reader.checkpoints(issuer, INDEX_PAYMENTS).await.unwrap(),
        22033
    ));
    let pos = reader
        .transaction("0xd893efa609aba7d5a7d1cac27931d2d4310ba37d6263a355e98b2b0138f1a17c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((pos.ledger(), pos.tx_index()), (1410096, 5));

    // Ledger 1410144 (checkpoint 22034), tx 48046deb...: GBKTMBXO... merges
    // into GBFAIH5W...; both are payment participants there.
    for a in [
        "GBKTMBXOXPYYONL6HWVLEGEPMWVRSREQ4AY2MD3HEBHHFMCVZPMKIWPQ",
        "GBFAIH5WKAJQ77NG6BZG7TGVGXHPX4SQLIJ7BENJMCVCZSUZPSISCLU5",
    ] {
        assert!(
            has(&reader.checkpoints(a, INDEX_PAYMENTS).await.unwrap(), 22034),
            "{a}"
        );
    }

    // Ledger 1410096, tx fb6cfa8b...: GC4JKHUY... only changes a trustline.
    let change_trust = "GC4JKHUYN2UU5MFNVQNB5JXVQJ6AXQZN2S3QSEFJGZYGJWP2OY2W7U3V";
    assert!(has(
        &reader.checkpoints(change_trust, INDEX_ALL).await.unwrap(),
        22033
    ));

    // Unknown account and transaction: empty, not an error.
    let nobody = "GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJVSGZ";
    assert!(
        reader
            .checkpoints(nobody, INDEX_ALL)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(reader.transaction(&"00".repeat(32)).await.unwrap(), None);
    assert_eq!(
        reader.next_active(created, INDEX_ALL, 22034).await.unwrap(),
        {
            let s = reader.checkpoints(created, INDEX_ALL).await.unwrap();
            s.iter().find(|c| *c >= 22034)
        }
    );
    assert_eq!(
        reader.next_active(created, INDEX_ALL, 0).await.unwrap(),
        Some(22033)
    );
    // Bad input is named.
    let e = reader
        .checkpoints("not-an-account", INDEX_ALL)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not-an-account"), "{e}");
}

#[tokio::test]
async fn lookups_take_at_most_two_range_reads() {
    let tmp = tempfile::tempdir().unwrap();
    single_process(tmp.path(), 1, 1).await;
    let reader = IndexReader::open(StoreRoot::open(tmp.path().to_str().unwrap()).unwrap())
        .await
        .unwrap();
    let a = "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE";
    reader.checkpoints(a, INDEX_ALL).await.unwrap();
    assert_eq!(reader.range_reads(), 2, "footer + one block");
    reader.checkpoints(a, INDEX_PAYMENTS).await.unwrap();
    assert_eq!(reader.range_reads(), 3, "footer cached: one block");
}

#[tokio::test]
async fn reader_refuses_an_index_whose_reduce_did_not_finish() {
    let tmp = tempfile::tempdir().unwrap();
    single_process(tmp.path(), 3, 1).await;
    std::fs::remove_file(process::generation_dir(tmp.path()).join("_SUCCESS/reduce-1.json"))
        .unwrap();
    let e = IndexReader::open(StoreRoot::open(tmp.path().to_str().unwrap()).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("incomplete") && e.contains("[1]"), "{e}");
}

#[test]
fn query_command_and_rerun_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_string();
    let src = fixture("stellar/testnet-lighthorizon")
        .to_str()
        .unwrap()
        .to_string();
    let map_env = |job: u32| {
        vec![
            ("JOB_INDEX_ENV", "AWS_BATCH_JOB_ARRAY_INDEX".to_string()),
            ("AWS_BATCH_JOB_ARRAY_INDEX", job.to_string()),
            ("FIRST_CHECKPOINT", "1410048".to_string()),
            ("BATCH_SIZE", "192".to_string()),
            ("LAST_LEDGER", "1410367".to_string()),
            ("WORKER_COUNT", "2".to_string()),
            ("REDUCE_JOB_COUNT", "1".to_string()),
            ("TXMETA_SOURCE", src.clone()),
            ("INDEX_TARGET", dir.clone()),
            ("NETWORK_PASSPHRASE", TESTNET.to_string()),
        ]
    };
    for job in 0..2 {
        assert_ok(&batch_index(&["map"], &map_env(job)), "map");
    }
    // Job 1 is capped at LAST_LEDGER: 1410240..1410367.
    let m1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("job_1/_SUCCESS")).unwrap()).unwrap();
    assert_eq!(m1["ledgers"], serde_json::json!([1410240, 1410367]));
    assert_eq!(
        m1["requested"],
        serde_json::json!({"first": 1410240, "last": 1410367})
    );
    // A job wholly past LAST_LEDGER succeeds with nothing to do.
    assert_ok(&batch_index(&["map"], &map_env(7)), "map past latest");
    let m7: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("job_7/_SUCCESS")).unwrap()).unwrap();
    assert_eq!(m7["ledgers"], serde_json::Value::Null);
    assert_eq!(m7["accounts"], 0);

    // Rerun of a finished job is a no-op...
    let part = tmp.path().join("job_0/accounts/part-0.bin");
    let original = std::fs::read(&part).unwrap();
    std::fs::remove_file(&part).unwrap();
    let out = batch_index(&["map"], &map_env(0));
    assert_ok(&out, "map rerun");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already done"));
    assert!(!part.exists(), "a no-op rerun must not rewrite outputs");
    // ...unless --force.
    assert_ok(
        &batch_index(&["map", "--force"], &map_env(0)),
        "map --force",
    );
    assert_eq!(
        std::fs::read(&part).unwrap(),
        original,
        "map output is deterministic"
    );

    let reduce_env = vec![
        ("JOB_INDEX_ENV", "JOB_COMPLETION_INDEX".to_string()),
        ("JOB_COMPLETION_INDEX", "0".to_string()),
        ("MAP_JOB_COUNT", "2".to_string()),
        ("REDUCE_JOB_COUNT", "1".to_string()),
        ("WORKER_COUNT", "1".to_string()),
        ("INDEX_SOURCE_ROOT", dir.clone()),
        ("INDEX_TARGET", dir.clone()),
    ];
    assert_ok(&batch_index(&["reduce"], &reduce_env), "reduce");
    let out = batch_index(
        &[
            "query",
            "--target",
            &dir,
            "--account",
            "GC4HPUZ3EEGOHMCS46DEMJ6UEGAJ7VF4FI5WSGJOFIAVT64YY64YSNEE",
            "--index",
            "all/payments",
        ],
        &[],
    );
    assert_ok(&out, "query account");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|c| c == "22033")
    );
    let out = batch_index(
        &[
            "query",
            "--target",
            &dir,
            "--transaction",
            "a62686f6700911321724330a05240cdf0c2347fd1b0792df423095a01e5e5b32",
        ],
        &[],
    );
    assert_ok(&out, "query transaction");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "toid={} ledger=1410048 tx_index=3 op_index=0",
            (1410048u64 << 32) | (3 << 12)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_lake_layout_indexes_like_the_meta_archive() {
    use stellar_xdr::{LedgerCloseMetaBatch, Limits, WriteXdr};
    // Re-pack the real ledgers as a Galexie data lake: zstd batches of 100
    // ledgers (not aligned to checkpoints), in partition folders.
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let ledgers = fixture("stellar/testnet-lighthorizon/ledgers");
    let mut start = 1410048u32;
    while start <= 1410367 {
        let end = (start + 99).min(1410367);
        let metas: Vec<_> = (start..=end)
            .map(|seq| {
                let b = std::fs::read(ledgers.join(seq.to_string())).unwrap();
                batch_index::stellar::decode_meta_archive_ledger("fixture", seq, &b).unwrap()
            })
            .collect();
        let batch = LedgerCloseMetaBatch {
            start_sequence: start,
            end_sequence: end,
            ledger_close_metas: metas.try_into().unwrap(),
        };
        let xdr = batch.to_xdr(Limits::none()).unwrap();
        let dir = lake.join(format!(
            "{:08X}--{}-{}",
            u32::MAX - start / 200 * 200,
            start / 200 * 200,
            start / 200 * 200 + 199
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!("{:08X}--{start}-{end}.xdr.zstd", u32::MAX - start);
        std::fs::write(dir.join(name), zstd::encode_all(xdr.as_slice(), 3).unwrap()).unwrap();
        start = end + 1;
    }
    let from_lake = tmp.path().join("from-lake");
    let out = batch_index(
        &[
            "run",
            "--source",
            lake.to_str().unwrap(),
            "--target",
            from_lake.to_str().unwrap(),
            "--map-jobs",
            "3",
            "--reduce-jobs",
            "2",
            "--workers",
            "2",
        ],
        &[("NETWORK_PASSPHRASE", TESTNET.to_string())],
    );
    assert_ok(&out, "run over the data lake");
    let reference = tmp.path().join("reference");
    single_process(&reference, 2, 2).await;
    assert_same_index(
        &final_index_files(&reference),
        &final_index_files(&from_lake),
        "data lake vs meta-archive",
    );
}
