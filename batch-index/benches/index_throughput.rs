//! Map/reduce throughput and index size on a large input.
//!
//! Run with: `cargo bench -p batch-index --bench index_throughput`
//! (`BENCH_LEDGERS` overrides the 100,000 ledgers, `BENCH_WORKERS` the 2 workers).
//!
//! The 320 real testnet ledgers are replayed with shifted sequence numbers
//! (re-encoded with `stellar-xdr`) into an in-memory object store. In the
//! same run it measures:
//! - the decode-only floor: the same fetch + XDR decode path with no
//!   extraction, ledgers/s per worker;
//! - map: the real map job over the same ledgers, ledgers/s per worker, and
//!   its ratio to the floor (target >= 70%);
//! - reduce: accounts and (account, index) pairs merged per second;
//! - index bytes per (account, index), beside lighthorizon's format (gzip of
//!   its XDR `{firstBit, lastBit, bitmap}` per account and index), both on the
//!   replayed input and on the real 320-ledger index (target <= 50%).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use batch_index::extract::Modules;
use batch_index::map::{MapConfig, MapOutcome, run_map};
use batch_index::reader::Generation;
use batch_index::reduce::{ReduceConfig, ReduceOutcome, run_reduce};
use batch_index::source::{LedgerSource, SourceConfig, open_source};
use batch_index::stellar::{StellarSource, decode_meta_archive_ledger};
use batch_index::store::StoreRoot;
use batch_index::table::{Footer, block_records};
use batch_index::varint::Cursor;
use batch_index::{ACCOUNT_INDEXES, bitmap_encoding};
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;
use stellar_xdr::{LedgerCloseMeta, Limits, WriteXdr};

const TESTNET: &str = "Test SDF Network ; September 2015";
const FIRST: u32 = 1410048;

fn set_seq(meta: &mut LedgerCloseMeta, seq: u32) {
    match meta {
        LedgerCloseMeta::V0(m) => m.ledger_header.header.ledger_seq = seq,
        LedgerCloseMeta::V1(m) => m.ledger_header.header.ledger_seq = seq,
        LedgerCloseMeta::V2(m) => m.ledger_header.header.ledger_seq = seq,
    }
}

/// lighthorizon's stored size of one checkpoint set: gzip of the XDR
/// `{uint32 firstBit; uint32 lastBit; opaque bitmap<>}` where the bitmap
/// spans bytes `firstBit/8 ..= lastBit/8`, most significant bit first.
fn lighthorizon_size(set: &RoaringBitmap) -> usize {
    let first = set.min().unwrap_or(0);
    let last = set.max().unwrap_or(0);
    let mut bitmap = vec![0u8; (last / 8 - first / 8 + 1) as usize];
    for c in set {
        bitmap[(c / 8 - first / 8) as usize] |= 1 << (7 - c % 8);
    }
    let mut xdr = Vec::new();
    xdr.extend_from_slice(&first.to_be_bytes());
    xdr.extend_from_slice(&last.to_be_bytes());
    xdr.extend_from_slice(&(bitmap.len() as u32).to_be_bytes());
    xdr.extend_from_slice(&bitmap);
    xdr.resize(xdr.len().div_ceil(4) * 4, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&xdr).unwrap();
    gz.finish().unwrap().len()
}

struct SizeReport {
    pairs: u64,
    shard_bytes: u64,
    bitmap_bytes: u64,
    value_bytes: u64,
    lighthorizon_bytes: u64,
}

/// Walks every account shard of the generation a finished index publishes.
async fn size_report(index: &StoreRoot) -> SizeReport {
    let mut r = SizeReport {
        pairs: 0,
        shard_bytes: 0,
        bitmap_bytes: 0,
        value_bytes: 0,
        lighthorizon_bytes: 0,
    };
    // The shards live in the generation directory the root pointer names.
    let root = Generation::published(index).await.unwrap().root;
    let shards = root.list("accounts").await.unwrap();
    assert!(
        !shards.is_empty(),
        "no account shards under {}",
        root.describe("")
    );
    for (rel, size) in shards {
        r.shard_bytes += size;
        let bytes = root.get(&rel).await.unwrap();
        let footer = Footer::parse(&bytes).unwrap();
        for range in footer.block_ranges() {
            for (_, value) in
                block_records(&bytes[range.start as usize..range.end as usize]).unwrap()
            {
                r.value_bytes += value.len() as u64;
                let mut c = Cursor::new(value);
                let n = c.varint().unwrap();
                for _ in 0..n {
                    c.varint().unwrap();
                    let before = c.position();
                    let set = bitmap_encoding::decode(&mut c).unwrap();
                    r.bitmap_bytes += (c.position() - before) as u64;
                    r.lighthorizon_bytes += lighthorizon_size(&set) as u64;
                    r.pairs += 1;
                }
            }
        }
    }
    r
}

fn print_sizes(label: &str, r: &SizeReport) {
    let per = |b: u64| b as f64 / r.pairs.max(1) as f64;
    let ratio = |b: u64| b as f64 / r.lighthorizon_bytes.max(1) as f64;
    assert!(r.pairs > 0, "{label}: no (account, index) pairs");
    println!("{label}: {} (account, index) pairs", r.pairs);
    println!(
        "  lighthorizon gzip(XDR bitmap):     {:6.1} B/pair",
        per(r.lighthorizon_bytes)
    );
    println!(
        "  batch-index payload (id + bitmap): {:6.1} B/pair = {:.2} x lighthorizon (target <= 0.50)",
        per(r.value_bytes),
        ratio(r.value_bytes)
    );
    println!(
        "  batch-index bitmap only:           {:6.1} B/pair = {:.2} x lighthorizon",
        per(r.bitmap_bytes),
        ratio(r.bitmap_bytes)
    );
    println!(
        "  batch-index whole shard files:     {:6.1} B/pair = {:.2} x lighthorizon (includes the account keys, which lighthorizon keeps in object names)",
        per(r.shard_bytes),
        ratio(r.shard_bytes)
    );
}

/// splitmix64, for reproducible synthetic data without a dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Reduce at scale: 8 map jobs' partials holding 400,000 distinct random
/// accounts (each in 1 to 8 random checkpoints of 2,000, in one or both
/// indexes, some accounts seen by several jobs), merged by one reduce job
/// with `workers` shards.
async fn synthetic_reduce(store: Arc<dyn object_store::ObjectStore>, workers: u32) {
    use batch_index::account::Account;
    use batch_index::manifest::{FileEntry, MAP_FORMAT, MapManifest, to_json};
    use batch_index::partial::{AccountSets, encode_accounts, encode_transactions};
    let root = StoreRoot::new(store, "synthetic", "memory:///synthetic");
    let map_jobs = 8u32;
    let accounts_per_job = 60_000u32;
    let mut rng = 42u64;
    let pool: Vec<String> = (0..400_000)
        .map(|_| {
            let mut k = [0u8; 32];
            for chunk in k.chunks_mut(8) {
                chunk.copy_from_slice(&next(&mut rng).to_le_bytes());
            }
            Account::Stellar(k).to_string()
        })
        .collect();
    let mut input_bytes = 0u64;
    let mut records = 0u64;
    for job in 0..map_jobs {
        let mut sets = AccountSets::new();
        for _ in 0..accounts_per_job {
            let a = &pool[(next(&mut rng) % pool.len() as u64) as usize];
            let entry = sets.entry(a.clone()).or_default();
            for name in ACCOUNT_INDEXES {
                if name == ACCOUNT_INDEXES[0] || next(&mut rng).is_multiple_of(3) {
                    let set: &mut RoaringBitmap = entry.entry(name.to_string()).or_default();
                    for _ in 0..1 + next(&mut rng) % 8 {
                        set.insert(20_000 + (next(&mut rng) % 2_000) as u32);
                    }
                }
            }
        }
        records += sets.len() as u64;
        let part = encode_accounts(&sets);
        let txs = encode_transactions(&Default::default());
        input_bytes += part.len() as u64;
        let job_root = root.child(&format!("job_{job}"));
        let files = vec![
            FileEntry::of("accounts/part-0.bin", &part, sets.len() as u64),
            FileEntry::of("transactions/part-0.bin", &txs, 0),
        ];
        job_root.put("accounts/part-0.bin", part).await.unwrap();
        job_root.put("transactions/part-0.bin", txs).await.unwrap();
        let manifest = MapManifest {
            format: MAP_FORMAT.into(),
            job,
            chain: "stellar".into(),
            ledgers: None,
            requested: None,
            ledgers_read: 0,
            reduce_job_count: 1,
            index_names: ACCOUNT_INDEXES.iter().map(|s| s.to_string()).collect(),
            accounts: sets.len() as u64,
            transactions: 0,
            files,
        };
        job_root.put("_SUCCESS", to_json(&manifest)).await.unwrap();
    }
    let t = Instant::now();
    let out = run_reduce(
        &root,
        &root,
        &ReduceConfig {
            job: 0,
            map_jobs,
            reduce_jobs: 1,
            workers,
            force: false,
            first_ledger: None,
            last_ledger: None,
            extend: false,
        },
    )
    .await
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let ReduceOutcome::Done(m) = out else {
        panic!("fresh reduce")
    };
    let merged: u64 = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("accounts/"))
        .map(|f| f.records)
        .sum();
    println!(
        "reduce (synthetic): {map_jobs} map jobs x {accounts_per_job} records ({records} account records, {:.1} MB of partials) -> {merged} accounts in {secs:.2}s = {:.0} records/s, {:.1} MB/s",
        input_bytes as f64 / 1e6,
        records as f64 / secs,
        input_bytes as f64 / 1e6 / secs
    );
}

fn main() {
    let ledgers: u32 = std::env::var("BENCH_LEDGERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let workers: u32 = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let ledgers = ledgers.div_ceil(64) * 64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stellar/testnet-lighthorizon");
        let originals: Vec<LedgerCloseMeta> = (0..320u32)
            .map(|i| {
                let seq = FIRST + i;
                let b = std::fs::read(fixture.join(format!("ledgers/{seq}"))).unwrap();
                decode_meta_archive_ledger("fixture", seq, &b).unwrap()
            })
            .collect();

        // Replay into memory.
        let t = Instant::now();
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let src = StoreRoot::new(store.clone(), "src", "memory:///src");
        let mut total_bytes = 0u64;
        for k in 0..ledgers {
            let seq = FIRST + k;
            let mut meta = originals[(k % 320) as usize].clone();
            set_seq(&mut meta, seq);
            let mut bytes = vec![0u8; 4];
            bytes.extend(meta.to_xdr(Limits::none()).unwrap());
            total_bytes += bytes.len() as u64;
            src.put(&format!("ledgers/{seq}"), bytes).await.unwrap();
        }
        src.put("latest", (FIRST + ledgers - 1).to_string()).await.unwrap();
        println!(
            "input: {ledgers} ledgers ({:.0} MB of XDR) replayed from 320 real testnet ledgers in {:.1}s; {workers} workers",
            total_bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );

        let cfg = SourceConfig {
            chain: batch_index::source::ChainKind::Stellar,
            network_passphrase: TESTNET.into(),
            ethereum_span: 64,
        };
        let source: Arc<dyn LedgerSource> = open_source(src.clone(), &cfg).await.unwrap();
        let stellar = Arc::new(StellarSource::open(src.clone(), TESTNET).await.unwrap());

        // Decode-only floor (same fetch + decode path, no extraction) and
        // map, alternated twice; the best of each is reported so a busy
        // machine penalises both alike.
        let checkpoints: Vec<(u32, u32)> = (0..ledgers / 64).map(|c| (FIRST + c * 64, FIRST + c * 64 + 63)).collect();
        let target = StoreRoot::new(store.clone(), "idx", "memory:///idx");
        let mut floor_secs = f64::MAX;
        let mut map_secs = f64::MAX;
        let mut manifest = None;
        for round in 0..2 {
            let t = Instant::now();
            let decoded: usize = futures::stream::iter(checkpoints.clone())
                .map(|(a, b)| {
                    let s = stellar.clone();
                    async move { s.decode_range(a, b).await.map(|v| v.len()) }
                })
                .buffer_unordered(workers as usize)
                .try_fold(0usize, |acc, n| async move { Ok(acc + n) })
                .await
                .unwrap();
            floor_secs = floor_secs.min(t.elapsed().as_secs_f64());
            assert_eq!(decoded as u32, ledgers);

            // Map: one job over everything, partitioned for 2 reduce jobs.
            let t = Instant::now();
            let out = run_map(
                source.clone(),
                &target,
                &MapConfig {
                    job: 0,
                    first_ledger: FIRST,
                    batch_size: ledgers,
                    last_ledger: None,
                    workers,
                    reduce_jobs: 2,
                    modules: Modules::ALL,
                    force: round > 0,
                    chain: "stellar".into(),
                },
            )
            .await
            .unwrap();
            map_secs = map_secs.min(t.elapsed().as_secs_f64());
            let MapOutcome::Done(m) = out else { panic!("map must run") };
            assert_eq!(m.ledgers_read, ledgers as u64);
            manifest = Some(m);
        }
        let manifest = manifest.expect("two rounds ran");
        let floor = ledgers as f64 / floor_secs / workers as f64;
        let map_rate = ledgers as f64 / map_secs / workers as f64;
        println!("decode-only floor: {floor:.0} ledgers/s per worker ({floor_secs:.2}s, best of 2)");
        println!(
            "map:               {map_rate:.0} ledgers/s per worker ({map_secs:.2}s, best of 2) = {:.0}% of the decode floor (target >= 70%)",
            100.0 * map_rate / floor
        );

        // Reduce both partitions.
        let t = Instant::now();
        for job in 0..2 {
            let r = run_reduce(&target, &target, &ReduceConfig { job, map_jobs: 1, reduce_jobs: 2, workers, force: false, first_ledger: None, last_ledger: None, extend: false })
                .await
                .unwrap();
            assert!(matches!(r, ReduceOutcome::Done(_)));
        }
        let reduce_secs = t.elapsed().as_secs_f64();
        let big = size_report(&target).await;
        println!(
            "reduce:            {} accounts, {} (account, index) pairs, {} transactions in {reduce_secs:.3}s = {:.0} pairs/s",
            manifest.accounts,
            big.pairs,
            manifest.transactions,
            big.pairs as f64 / reduce_secs
        );
        print_sizes("index size (replayed input)", &big);

        synthetic_reduce(store.clone(), workers).await;

        // The real 320-ledger index (sparse histories, 5 checkpoints).
        let real_src = StoreRoot::open(fixture.to_str().unwrap()).unwrap();
        let real = open_source(real_src, &cfg).await.unwrap();
        let real_target = StoreRoot::new(store.clone(), "real", "memory:///real");
        batch_index::local_build::build_single_process(real, &real_target, 1, 1, Modules::ALL).await.unwrap();
        print_sizes("index size (real 320 ledgers)", &size_report(&real_target).await);
        let _ = ACCOUNT_INDEXES;
    });
}
