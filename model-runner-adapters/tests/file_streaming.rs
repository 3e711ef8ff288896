//! The file source streams JSON-lines exports: a range reads only the chunks that can hold it,
//! and gives exactly what parsing the whole export gives, whatever the row order, across chunk
//! boundaries, with JSON-RPC documents mixed in; a hole is `BlockNotFound`, a bad row names its
//! file and line.

use std::fmt::Write as _;
use std::path::Path;

use model_runner_adapters::file_source::{FileBlockSource, parse_bytes};
use model_runner_core::ports::{BlockSource, SourceError};
use model_runner_core::{Block, BlockRange, Chain};

const FIRST: u64 = 18_000_000;
const BLOCKS: u64 = 240;
const LOGS_PER_BLOCK: u64 = 40;

fn eth() -> Chain {
    Chain::new("ethereum").unwrap()
}

fn hash(tag: u64, n: u64) -> String {
    format!("0x{tag:016x}{n:048x}")
}

fn block_row(n: u64) -> String {
    format!(
        r#"{{"number": {n}, "hash": "{}", "parent_hash": "{}", "nonce": "0x0000000000000000", "miner": "0x{n:040x}", "gas_limit": 30000000, "gas_used": {}, "timestamp": {}, "base_fee_per_gas": 12000000000, "transaction_count": 2, "type": "block"}}"#,
        hash(1, n),
        hash(1, n - 1),
        n % 1000,
        1_700_000_000 + n * 12,
    )
}

fn log_row(n: u64, i: u64) -> String {
    // An ERC-20 transfer, an ERC-721 transfer (four topics) or another event, by index.
    let transfer = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
    let word = |x: u64| format!("0x{x:064x}");
    let (topics, data) = match i % 3 {
        0 => (
            format!(r#""{transfer}", "{}", "{}""#, word(n), word(i)),
            word(n * 1000 + i),
        ),
        1 => (
            format!(
                r#""{transfer}", "{}", "{}", "{}""#,
                word(n),
                word(i),
                word(7)
            ),
            "0x".into(),
        ),
        _ => (format!(r#""{}""#, word(99)), word(i)),
    };
    // `ethereumetl stream` writes a type; `export_receipts_and_logs` does not.
    let kind = if n.is_multiple_of(2) {
        r#", "type": "log""#
    } else {
        ""
    };
    format!(
        r#"{{"log_index": {i}, "transaction_hash": "{}", "transaction_index": {}, "block_hash": "{}", "block_number": {n}, "address": "0x{:040x}", "data": "{data}", "topics": [{topics}]{kind}}}"#,
        hash(2, n * 100 + i / 20),
        i / 20,
        hash(1, n),
        i % 5 + 1,
    )
}

/// An export whose logs come in an order ethereum-etl with several workers can write: batches
/// of blocks out of order. `skip_block`'s header row is left out (its logs are not). Returns
/// the whole content of each file.
fn write_export(dir: &Path, skip_block: Option<u64>) -> (String, String) {
    let mut blocks = String::new();
    let mut logs = String::new();
    let numbers: Vec<u64> = (FIRST..FIRST + BLOCKS).collect();
    for n in numbers.iter().filter(|n| Some(**n) != skip_block) {
        writeln!(blocks, "{}", block_row(*n)).unwrap();
    }
    let mut batches: Vec<&[u64]> = numbers.chunks(30).collect();
    batches.reverse();
    batches.swap(1, 4);
    for batch in batches {
        for n in batch {
            for i in 0..LOGS_PER_BLOCK {
                writeln!(logs, "{}", log_row(*n, i)).unwrap();
            }
        }
    }
    std::fs::write(dir.join("blocks.json"), &blocks).unwrap();
    std::fs::write(dir.join("logs.json"), &logs).unwrap();
    (blocks, logs)
}

fn whole(blocks: &str, logs: &str) -> Vec<Block> {
    parse_bytes(format!("{blocks}{logs}").as_bytes()).unwrap()
}

#[tokio::test]
async fn ranges_read_from_chunks_equal_the_whole_export() {
    let dir = tempfile::tempdir().unwrap();
    let (blocks, logs) = write_export(dir.path(), None);
    assert!(
        logs.len() > 3 << 20,
        "the export spans several 1 MiB chunks"
    );
    let expected = whole(&blocks, &logs);
    assert_eq!(expected.len() as u64, BLOCKS);
    let source = FileBlockSource::open(eth(), dir.path()).unwrap();
    let head = source.head().await.unwrap();
    assert_eq!(head.number, FIRST + BLOCKS - 1);
    assert_eq!(head.hash, expected.last().unwrap().hash);
    assert_eq!(
        source.numbers().collect::<Vec<_>>(),
        (FIRST..FIRST + BLOCKS).collect::<Vec<_>>()
    );
    for (lo, hi) in [(0, 0), (0, 99), (29, 31), (100, 239), (57, 57), (0, 239)] {
        let got = source
            .blocks(BlockRange::new(FIRST + lo, FIRST + hi).unwrap())
            .await
            .unwrap();
        assert_eq!(
            got,
            expected[lo as usize..=hi as usize],
            "blocks {lo}..={hi}"
        );
        assert!(got.iter().all(|b| b.logs.len() as u64 == LOGS_PER_BLOCK));
    }
}

#[tokio::test]
async fn documents_and_lines_join() {
    // A JSON-RPC block document (pretty-printed, so not JSON lines) for a block whose logs are in
    // the export: the block comes from the document, its logs from the lines.
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path(), Some(FIRST + 5));
    let n = FIRST + 5;
    let doc = format!(
        "{{\n  \"jsonrpc\": \"2.0\",\n  \"result\": {{\"number\": \"{n:#x}\", \"hash\": \"{}\", \"parentHash\": \"{}\", \"timestamp\": \"0x1\", \"gasUsed\": \"0x0\", \"gasLimit\": \"0x1\", \"transactions\": []}}\n}}\n",
        hash(1, n),
        hash(1, n - 1)
    );
    std::fs::write(dir.path().join("block_rpc.json"), doc).unwrap();
    let source = FileBlockSource::open(eth(), dir.path()).unwrap();
    let got = source
        .blocks(BlockRange::new(n - 1, n + 1).unwrap())
        .await
        .unwrap();
    assert_eq!(got[1].number, n);
    assert_eq!(got[1].hash.to_string(), hash(1, n));
    assert_eq!(got[1].logs.len() as u64, LOGS_PER_BLOCK);
}

#[tokio::test]
async fn a_hole_is_block_not_found_and_a_bad_row_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path(), Some(FIRST + 77));
    let source = FileBlockSource::open(eth(), dir.path()).unwrap();
    let err = source
        .blocks(BlockRange::new(FIRST + 70, FIRST + 80).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::BlockNotFound { number, .. } if number == FIRST + 77),
        "{err}"
    );
    // A malformed log row in the middle of the file: the range that covers it fails, naming
    // the file and the line; ranges that do not cover it still read.
    let path = dir.path().join("logs.json");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let victim = lines
        .iter()
        .position(|l| l.contains(&format!("\"block_number\": {}", FIRST + 150)))
        .unwrap();
    lines[victim] = lines[victim].replace("\"address\": \"0x", "\"address\": \"0xzz");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let source = FileBlockSource::open(eth(), dir.path()).unwrap();
    let err = source
        .blocks(BlockRange::new(FIRST + 150, FIRST + 150).unwrap())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("logs.json") && message.contains(&format!("line {}", victim + 1)),
        "{message}"
    );
    assert!(message.contains("address"), "{message}");
    source
        .blocks(BlockRange::new(FIRST, FIRST + 20).unwrap())
        .await
        .unwrap();
}

/// A block's logs given out of order, in several runs with other blocks' logs between them,
/// and a log index given twice: the block holds each index once (the first given), in order,
/// and the other blocks' logs are untouched.
#[test]
fn a_blocks_logs_in_pieces_and_out_of_order_are_joined_sorted_and_once() {
    let (a, b) = (FIRST, FIRST + 1);
    let mut text = format!("{}\n{}\n", block_row(a), block_row(b));
    for (n, i) in [(a, 3), (a, 1), (b, 0), (a, 2), (b, 1), (a, 0), (a, 1)] {
        writeln!(text, "{}", log_row(n, i)).unwrap();
    }
    // The repeated index 1 of block `a` differs from the first: it must not win.
    let repeated = log_row(a, 1).replace(&format!("0x{:040x}", 2), &format!("0x{:040x}", 9));
    writeln!(text, "{repeated}").unwrap();
    let blocks = parse_bytes(text.as_bytes()).unwrap();
    let indexes = |blk: &Block| blk.logs.iter().map(|l| l.log_index).collect::<Vec<_>>();
    assert_eq!(indexes(&blocks[0]), [0, 1, 2, 3]);
    assert_eq!(indexes(&blocks[1]), [0, 1]);
    assert_eq!(
        blocks[0].logs[1].address,
        format!("0x{:040x}", 2)
            .parse::<model_runner_core::alloy_primitives::Address>()
            .unwrap()
    );
    for blk in &blocks {
        assert!(blk.logs.iter().all(|l| l.block_number == blk.number));
    }
}
