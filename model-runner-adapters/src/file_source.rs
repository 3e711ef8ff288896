//! `file://DIR`: a [`BlockSource`] over Ethereum data saved as files.
//!
//! Two formats are read, in any mix, from every `*.json` / `*.jsonl` file of `DIR` (or one file):
//!
//! - **JSON-RPC responses**, as saved from a node: `eth_getBlockByNumber` with full transactions
//!   (`{"jsonrpc":"2.0","result":{...}}` or the bare result), `eth_getTransactionReceipt`
//!   (receipt status, gas and logs), and `eth_getLogs`/`eth_getFilterLogs` arrays.
//! - **ethereum-etl JSON-lines exports**: `blocks.json`, `transactions.json`, `receipts.json`,
//!   `logs.json` (one object a line; the kind is taken from its `type` field or its columns).
//!
//! Both are decoded by [`crate::ethereum_json`], the workspace's one Ethereum JSON decoder.
//!
//! A file holding one JSON document (a saved response, possibly pretty-printed) is parsed at open.
//! A JSON-lines file is **streamed**: at open it is scanned once, without parsing, into an index of
//! ~1 MiB chunks, each with the lowest and highest block number its lines name (and the
//! block headers' numbers are noted); a request for a range reads and parses only the chunks that
//! can hold it. Memory stays bounded whatever the file size (a 50 GB export costs a few MB of
//! index), and ranges are parsed on the blocking pool, several at once. A line whose block number
//! the scan cannot read is read for every range, so nothing is skipped that could belong.
//!
//! Rows are joined per request: transactions onto blocks, receipts onto transactions by hash,
//! logs onto blocks by number (deduplicated by log index). The head is the highest block header.
//! A range with a missing block is `BlockNotFound`, never a partial answer; a malformed row is
//! `InvalidData` naming its file and line.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use crate::ethereum_json::{self, Row, parse_u64};
use alloy_primitives::B256;
use async_trait::async_trait;
use model_runner_core::ports::{BlockSource, SourceError};
use model_runner_core::{Block, BlockHead, BlockRange, Chain, Log, Receipt, Transaction};

/// The query a `file://` source URL may carry: none, so a misspelt option is an error naming it
/// rather than part of the path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileParams {}

/// Blocks read from files.
pub struct FileBlockSource {
    chain: Chain,
    origin: String,
    files: Arc<Files>,
    head: BlockHead,
}

impl std::fmt::Debug for FileBlockSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBlockSource")
            .field("chain", &self.chain)
            .field("origin", &self.origin)
            .field("head", &self.head)
            .field(
                "blocks",
                &self
                    .files
                    .numbers
                    .iter()
                    .map(|(a, b)| b - a + 1)
                    .sum::<u64>(),
            )
            .finish()
    }
}

/// What a source reads from: parsed documents and indexed JSON-lines files.
struct Files {
    /// Rows of the whole-document files, not yet joined (a document's receipt may belong to a
    /// transaction of a JSON-lines file).
    documents: Loader,
    lines: Vec<LinesFile>,
    /// Numbers of the block headers held, as sorted, disjoint, inclusive runs.
    numbers: Vec<(u64, u64)>,
}

/// A JSON-lines file and its chunk index.
struct LinesFile {
    path: PathBuf,
    file: std::fs::File,
    chunks: Vec<Chunk>,
}

/// A run of whole lines of a JSON-lines file.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    offset: u64,
    len: usize,
    /// 1-based number of its first line, for errors.
    first_line: u64,
    /// How many lines it holds.
    lines: u64,
    /// Lowest and highest block number its lines name (`0..=u64::MAX` if a line names none
    /// the scan can read).
    min: u64,
    max: u64,
}

/// Chunks of a JSON-lines file are cut at the first line end past this many bytes.
const CHUNK_BYTES: usize = 1 << 20;

fn bad(file: &Path, what: impl std::fmt::Display) -> SourceError {
    SourceError::InvalidData(format!("{}: {what}", file.display()))
}

/// Joins the records of [`crate::ethereum_json`] into blocks; shared with the JSON-RPC source,
/// which receives the very same response shapes over HTTP.
#[derive(Default, Clone)]
pub(crate) struct Loader {
    blocks: BTreeMap<u64, Block>,
    txs: Vec<(u64, Transaction)>,
    receipts: HashMap<B256, Receipt>,
    /// Logs in runs of one block each, in arrival order: an export's logs arrive grouped by
    /// block, so each run becomes its block's log vector as it is, never copied.
    logs: Vec<(u64, Vec<Log>)>,
    /// Room a new run reserves: the expected logs of a block.
    logs_per_block: usize,
}

impl Loader {
    /// One JSON value: a JSON-RPC response, a bare result, or an etl row.
    #[cfg(feature = "jsonrpc")]
    pub(crate) fn value(&mut self, v: &serde_json::Value) -> Result<(), String> {
        ethereum_json::value_rows(v, &mut |row| self.push(row)).map_err(|e| e.to_string())
    }

    /// One file's content: one JSON document, or JSON lines.
    fn bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        ethereum_json::bytes_rows(bytes, &mut |row| self.push(row)).map_err(|e| e.to_string())
    }

    /// One line of a JSON-lines file (blank lines are skipped).
    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        ethereum_json::line_rows(line, &mut |row| self.push(row)).map_err(|e| e.to_string())
    }

    /// Files one decoded record for joining.
    fn push(&mut self, row: Row) {
        match row {
            Row::Block(mut block) => {
                let number = block.number;
                self.txs
                    .extend(block.transactions.drain(..).map(|tx| (number, tx)));
                self.blocks.insert(number, block);
            }
            Row::Transaction {
                block_number,
                transaction,
            } => self.txs.push((block_number, transaction)),
            Row::Receipt {
                transaction_hash,
                receipt,
                ..
            } => {
                self.receipts.insert(transaction_hash, receipt);
            }
            Row::Log(log) => match self.logs.last_mut() {
                Some((number, run)) if *number == log.block_number => run.push(log),
                _ => {
                    let mut run = Vec::with_capacity(self.logs_per_block);
                    let number = log.block_number;
                    run.push(log);
                    self.logs.push((number, run));
                }
            },
            // Token transfers are also `Transfer` logs; the rest carries no chain data.
            _ => {}
        }
    }

    /// Takes in another loader's rows (a later block of the same number replaces the earlier).
    fn extend(&mut self, other: Loader) {
        self.blocks.extend(other.blocks);
        self.txs.extend(other.txs);
        self.receipts.extend(other.receipts);
        self.logs.extend(other.logs);
    }

    /// A loader holding this one's blocks, transactions and logs of blocks `lo..=hi` (receipts
    /// are looked up with [`Loader::finish_with`]).
    fn slice(&self, lo: u64, hi: u64) -> Loader {
        Loader {
            blocks: self
                .blocks
                .range(lo..=hi)
                .map(|(n, b)| (*n, b.clone()))
                .collect(),
            txs: self
                .txs
                .iter()
                .filter(|(n, _)| (lo..=hi).contains(n))
                .cloned()
                .collect(),
            receipts: HashMap::new(),
            logs: self
                .logs
                .iter()
                .filter(|(n, _)| (lo..=hi).contains(n))
                .cloned()
                .collect(),
            logs_per_block: 0,
        }
    }

    pub(crate) fn finish(self) -> BTreeMap<u64, Block> {
        self.finish_with(None)
    }

    /// Joins, looking receipts up in `more` too when this loader has none for a transaction.
    fn finish_with(mut self, more: Option<&HashMap<B256, Receipt>>) -> BTreeMap<u64, Block> {
        self.txs.sort_by_key(|(b, t)| (*b, t.index));
        self.txs.dedup_by_key(|(b, t)| (*b, t.index));
        for (number, mut tx) in self.txs {
            if let Some(block) = self.blocks.get_mut(&number) {
                tx.receipt = self
                    .receipts
                    .get(&tx.hash)
                    .or_else(|| more.and_then(|m| m.get(&tx.hash)))
                    .cloned();
                block.transactions.push(tx);
            }
        }
        // Runs of one block, in block order (stable: a block's runs keep their order), each
        // moved into its block; a block given in several runs, or out of order, is merged and
        // sorted, and a log index given twice keeps its first.
        self.logs.sort_by_key(|(number, _)| *number);
        for (number, mut run) in self.logs {
            let Some(block) = self.blocks.get_mut(&number) else {
                continue;
            };
            if block.logs.is_empty() {
                block.logs = run;
            } else {
                block.logs.append(&mut run);
            }
        }
        for block in self.blocks.values_mut() {
            if !block.logs.is_sorted_by_key(|l| l.log_index) {
                block.logs.sort_by_key(|l| l.log_index);
            }
            block.logs.dedup_by_key(|l| l.log_index);
        }
        self.blocks
    }
}

/// Parses one file's bytes, as [`FileBlockSource`] reads each file (one JSON document or JSON
/// lines, JSON-RPC responses or ethereum-etl rows), into the blocks it holds, joined. Bad input
/// is an error naming the line and field, never a panic.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<Block>, SourceError> {
    let mut loader = Loader::default();
    loader.bytes(bytes).map_err(SourceError::InvalidData)?;
    Ok(loader.finish().into_values().collect())
}

/// The block numbers a JSON line names, found without parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LineBlocks {
    /// Lowest and highest value of its `number`, `block_number` and `blockNumber` keys.
    min: u64,
    max: u64,
    /// Whether a `number` key is among them (the line may be a block header).
    header: bool,
}

/// Scans `line` for block-number keys; `None` when it has none, or one whose value is not a
/// plain quantity (the line must then be read for any range).
fn scan_line(line: &[u8]) -> Option<LineBlocks> {
    static KEY_END: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"umber\""));
    let mut found: Option<LineBlocks> = None;
    for at in KEY_END.find_iter(line) {
        let before = &line[..at];
        let header = before.ends_with(b"\"n");
        if !(header || before.ends_with(b"\"block_n") || before.ends_with(b"\"blockN")) {
            continue;
        }
        let rest = &line[at + 6..];
        let rest = trim_start(rest).strip_prefix(b":")?;
        let rest = trim_start(rest);
        let digits = match rest.strip_prefix(b"\"") {
            Some(quoted) => &quoted[..memchr::memchr(b'"', quoted)?],
            None => {
                let end = rest
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .unwrap_or(rest.len());
                &rest[..end]
            }
        };
        let n = parse_u64(std::str::from_utf8(digits).ok()?)?;
        let f = found.get_or_insert(LineBlocks {
            min: n,
            max: n,
            header: false,
        });
        f.min = f.min.min(n);
        f.max = f.max.max(n);
        f.header |= header;
    }
    found
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Adds `n` to sorted, disjoint, inclusive runs.
fn insert_number(runs: &mut Vec<(u64, u64)>, n: u64) {
    let i = runs.partition_point(|(_, hi)| *hi < n);
    if let Some((lo, _)) = runs.get(i)
        && *lo <= n
    {
        return; // already held
    }
    let joins_prev = i > 0 && runs[i - 1].1.checked_add(1) == Some(n);
    let joins_next = runs
        .get(i)
        .is_some_and(|(lo, _)| n.checked_add(1) == Some(*lo));
    match (joins_prev, joins_next) {
        (true, true) => {
            runs[i - 1].1 = runs[i].1;
            runs.remove(i);
        }
        (true, false) => runs[i - 1].1 = n,
        (false, true) => runs[i].0 = n,
        (false, false) => runs.insert(i, (n, n)),
    }
}

fn holds(runs: &[(u64, u64)], n: u64) -> bool {
    let i = runs.partition_point(|(_, hi)| *hi < n);
    runs.get(i).is_some_and(|(lo, _)| *lo <= n)
}

/// Whether a file is JSON lines: its first non-blank line is a whole JSON value and more follows.
/// (A one-line file is read either way alike.)
fn is_json_lines(path: &Path) -> Result<bool, SourceError> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(path, e))?
            == 0
        {
            return Ok(false);
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            break;
        }
    }
    Ok(serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_ok())
}

/// The offset of the first line starting at or after `at` (the file's size if none does).
fn line_start_from(file: &std::fs::File, at: u64) -> std::io::Result<u64> {
    if at == 0 {
        return Ok(0);
    }
    let mut buf = vec![0u8; 64 << 10];
    // From the byte before `at`: a line that starts right at `at` follows a line end there.
    let mut offset = at - 1;
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Ok(offset);
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
            return Ok(offset + i as u64 + 1);
        }
        offset += n as u64;
    }
}

/// Scans bytes `from..to` of `file` (whole lines) into chunks; an error is the part's 1-based
/// line number (0 for none) and message.
fn scan_part(file: &std::fs::File, from: u64, to: u64) -> Result<ScannedPart, (u64, String)> {
    let mut part = ScannedPart::default();
    // buf[..filled] holds file bytes from `buf_offset` on; grown only for a longer line.
    let mut buf = vec![0u8; 2 * CHUNK_BYTES];
    let mut filled = 0usize;
    let mut buf_offset = from;
    let mut current: Option<Chunk> = None;
    let mut eof = false;
    while !eof || filled > 0 {
        if !eof {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let read_at = buf_offset + filled as u64;
            let want = (buf.len() - filled).min(to.saturating_sub(read_at) as usize);
            let n = if want == 0 {
                0
            } else {
                file.read_at(&mut buf[filled..filled + want], read_at)
                    .map_err(|e| (0, e.to_string()))?
            };
            filled += n;
            eof = n == 0;
        }
        let mut start = 0usize;
        loop {
            let end = match memchr::memchr(b'\n', &buf[start..filled]) {
                Some(i) => start + i + 1,
                None if eof && start < filled => filled,
                None => break,
            };
            let line = &buf[start..end];
            part.lines += 1;
            let offset = buf_offset + start as u64;
            let (min, max) = if line.iter().all(u8::is_ascii_whitespace) {
                (u64::MAX, 0) // names nothing, needs nothing
            } else {
                let scanned = scan_line(line);
                // A possible block header, or a line the scan cannot place: parsed now, for
                // the headers' numbers and the head (and to name a malformed one at open).
                if scanned.is_none_or(|b| b.header) {
                    let mut one = Loader::default();
                    one.line(line).map_err(|e| (part.lines, e))?;
                    for block in one.blocks.values() {
                        note_header(&mut part.numbers, &mut part.highest, block);
                    }
                }
                scanned.map_or((0, u64::MAX), |b| (b.min, b.max))
            };
            let chunk = current.get_or_insert(Chunk {
                offset,
                len: 0,
                first_line: part.lines,
                lines: 0,
                min: u64::MAX,
                max: 0,
            });
            chunk.len += line.len();
            chunk.lines += 1;
            chunk.min = chunk.min.min(min);
            chunk.max = chunk.max.max(max);
            if chunk.len >= CHUNK_BYTES {
                part.chunks
                    .extend(current.take().filter(|c| c.min <= c.max));
            }
            start = end;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        buf_offset += start as u64;
    }
    part.chunks
        .extend(current.take().filter(|c| c.min <= c.max));
    Ok(part)
}

/// Adds the numbers `lo..=hi` to sorted, disjoint, inclusive runs.
fn insert_run(runs: &mut Vec<(u64, u64)>, lo: u64, hi: u64) {
    // Runs that overlap or touch `lo..=hi` merge with it.
    let first = runs.partition_point(|(_, h)| h.saturating_add(1) < lo);
    let last = runs.partition_point(|(l, _)| *l <= hi.saturating_add(1));
    let (mut lo, mut hi) = (lo, hi);
    if first < last {
        lo = lo.min(runs[first].0);
        hi = hi.max(runs[last - 1].1);
    }
    runs.splice(first..last, [(lo, hi)]);
}

/// What scanning one part of a JSON-lines file found.
#[derive(Default)]
struct ScannedPart {
    /// Its chunks; their `first_line` counts from the part's first line (1).
    chunks: Vec<Chunk>,
    lines: u64,
    /// The block headers' numbers and the highest header, as [`note_header`] keeps them.
    numbers: Vec<(u64, u64)>,
    highest: Option<BlockHead>,
}

/// Files at least this large are scanned in parts, one a core, at once.
const PARALLEL_SCAN_BYTES: u64 = 16 << 20;

impl LinesFile {
    /// Scans `path` into its chunk index, noting block headers in `numbers` and `highest`. A
    /// large file is cut at line ends into a part a core, scanned at once.
    fn scan(
        path: &Path,
        numbers: &mut Vec<(u64, u64)>,
        highest: &mut Option<BlockHead>,
    ) -> Result<Self, SourceError> {
        let size = std::fs::metadata(path).map_err(|e| bad(path, e))?.len();
        let parts = if size < PARALLEL_SCAN_BYTES {
            1
        } else {
            std::thread::available_parallelism().map_or(1, usize::from) as u64
        };
        Self::scan_in_parts(path, parts, numbers, highest)
    }

    /// [`LinesFile::scan`] in `parts` parts.
    fn scan_in_parts(
        path: &Path,
        parts: u64,
        numbers: &mut Vec<(u64, u64)>,
        highest: &mut Option<BlockHead>,
    ) -> Result<Self, SourceError> {
        let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let size = file.metadata().map_err(|e| bad(path, e))?.len();
        let mut bounds = vec![0];
        for k in 1..parts {
            let at = line_start_from(&file, size * k / parts).map_err(|e| bad(path, e))?;
            bounds.push(at.max(*bounds.last().unwrap_or(&0)));
        }
        bounds.push(size);
        let scanned: Vec<Result<ScannedPart, (u64, String)>> = std::thread::scope(|threads| {
            let handles: Vec<_> = bounds
                .windows(2)
                .map(|w| {
                    let file = &file;
                    let (from, to) = (w[0], w[1]);
                    threads.spawn(move || scan_part(file, from, to))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err((0, "scan panicked".into())))
                })
                .collect()
        });
        let mut chunks = Vec::new();
        let mut lines_before = 0;
        for part in scanned {
            // The first bad line of the file is that of the first part with one.
            let part = part.map_err(|(line, e)| match line {
                0 => bad(path, e),
                line => bad(path, format!("line {}: {e}", lines_before + line)),
            })?;
            chunks.extend(part.chunks.into_iter().map(|c| Chunk {
                first_line: lines_before + c.first_line,
                ..c
            }));
            lines_before += part.lines;
            for (lo, hi) in part.numbers {
                insert_run(numbers, lo, hi);
            }
            if let Some(h) = part.highest
                && highest.as_ref().is_none_or(|top| h.number >= top.number)
            {
                *highest = Some(h);
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            chunks,
        })
    }

    /// Parses the lines of the chunks that can hold `lo..=hi` into `loader`, reading them
    /// through `buf`.
    fn read(
        &self,
        lo: u64,
        hi: u64,
        loader: &mut Loader,
        buf: &mut Vec<u8>,
    ) -> Result<(), SourceError> {
        let wanted = || self.chunks.iter().filter(|c| c.min <= hi && lo <= c.max);
        // Each block's logs reserve the lines a block of the range averages (a quarter more),
        // so they are seldom copied through doublings.
        let wanted_lines: u64 = wanted().map(|c| c.lines).sum();
        let per_block = wanted_lines / (hi - lo).saturating_add(1);
        loader.logs_per_block = usize::try_from(per_block + per_block / 4)
            .unwrap_or(0)
            .min(1 << 16);
        for chunk in wanted() {
            buf.resize(chunk.len, 0);
            self.file
                .read_exact_at(buf, chunk.offset)
                .map_err(|e| bad(&self.path, e))?;
            // A chunk wholly inside the range needs no line sorted out.
            let inside = lo <= chunk.min && chunk.max <= hi;
            for (i, line) in lines(buf).enumerate() {
                if !inside
                    && let Some(b) = scan_line(line)
                    && (b.max < lo || hi < b.min)
                {
                    continue;
                }
                loader.line(line).map_err(|e| {
                    bad(
                        &self.path,
                        format!("line {}: {e}", chunk.first_line + i as u64),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// The lines of `buf` (split at each `\n`, as `split` would, found with `memchr`).
fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', buf)
        .chain(std::iter::once(buf.len()))
        .map(move |end| {
            let line = &buf[start..end];
            start = end + 1;
            line
        })
}

/// Notes a block header: its number among those held, and the head if it is the highest.
fn note_header(numbers: &mut Vec<(u64, u64)>, highest: &mut Option<BlockHead>, block: &Block) {
    insert_number(numbers, block.number);
    if highest.as_ref().is_none_or(|h| block.number >= h.number) {
        *highest = Some(BlockHead {
            number: block.number,
            hash: block.hash,
        });
    }
}

impl Files {
    /// Blocks `lo..=hi`, joined, as far as the files hold them.
    fn read(&self, lo: u64, hi: u64) -> Result<BTreeMap<u64, Block>, SourceError> {
        let mut loader = self.documents.slice(lo, hi);
        let mut buf = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
        for file in &self.lines {
            file.read(lo, hi, &mut loader, &mut buf)?;
        }
        let mut blocks = loader.finish_with(Some(&self.documents.receipts));
        blocks.retain(|n, _| (lo..=hi).contains(n));
        Ok(blocks)
    }
}

impl FileBlockSource {
    /// Opens every `*.json` / `*.jsonl` file under `path` (a directory), or one file: parses the
    /// whole-document files and indexes the JSON-lines files (see the module docs).
    pub fn open(chain: Chain, path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let path = path.as_ref();
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut f: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| bad(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("json" | "jsonl")
                        )
                })
                .collect();
            f.sort();
            f
        } else if path.is_file() {
            vec![path.to_owned()]
        } else {
            return Err(bad(path, "no such file or directory"));
        };
        let mut documents = Loader::default();
        let mut lines = Vec::new();
        let mut numbers = Vec::new();
        let mut head = None;
        for f in &files {
            if is_json_lines(f)? {
                lines.push(LinesFile::scan(f, &mut numbers, &mut head)?);
            } else {
                let bytes = std::fs::read(f).map_err(|e| bad(f, e))?;
                let mut one = Loader::default();
                one.bytes(&bytes).map_err(|e| bad(f, e))?;
                for block in one.blocks.values() {
                    note_header(&mut numbers, &mut head, block);
                }
                documents.extend(one);
            }
        }
        let head = head.ok_or_else(|| {
            bad(
                path,
                "no blocks found (expected eth_getBlockByNumber responses or ethereum-etl blocks.json)",
            )
        })?;
        Ok(Self {
            chain,
            origin: path.display().to_string(),
            files: Arc::new(Files {
                documents,
                lines,
                numbers,
            }),
            head,
        })
    }

    /// From `file://PATH` (no query parameters: one is an error naming it).
    pub fn from_url(chain: Chain, url: &str) -> Result<Self, SourceError> {
        let shown = || model_runner_core::redact::redact_url(url);
        let rest = url
            .strip_prefix("file://")
            .ok_or_else(|| SourceError::InvalidData(format!("not a file URL: {}", shown())))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        serde_urlencoded::from_str::<FileParams>(query).map_err(|e| {
            SourceError::InvalidData(format!(
                "{}: {e}: a file source takes no parameters",
                shown()
            ))
        })?;
        Self::open(chain, path)
    }

    /// Block numbers held (those with a block header), ascending.
    pub fn numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.files.numbers.iter().flat_map(|(lo, hi)| *lo..=*hi)
    }
}

#[async_trait]
impl BlockSource for FileBlockSource {
    fn chain(&self) -> &Chain {
        &self.chain
    }

    async fn head(&self) -> Result<BlockHead, SourceError> {
        Ok(self.head)
    }

    async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, SourceError> {
        let missing = |number| SourceError::BlockNotFound {
            number,
            source_name: format!("files at {}", self.origin),
        };
        let (lo, hi) = (range.start(), range.end());
        if let Some(n) = (lo..=hi).find(|n| !holds(&self.files.numbers, *n)) {
            return Err(missing(n));
        }
        let files = self.files.clone();
        let mut blocks = tokio::task::spawn_blocking(move || files.read(lo, hi))
            .await
            .map_err(|e| SourceError::InvalidData(format!("reading files: {e}")))??;
        let mut out = Vec::with_capacity(range.len().min(10_000) as usize);
        for n in lo..=hi {
            out.push(blocks.remove(&n).ok_or_else(|| missing(n))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `file://` URLs open their path or fail naming what is wrong, never showing a secret.
    #[test]
    fn file_urls_open_or_name_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("file-source-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("b.json"),
            r#"{"number": 1, "hash": "0x1111111111111111111111111111111111111111111111111111111111111111", "parent_hash": "0x1111111111111111111111111111111111111111111111111111111111111111", "timestamp": 1, "gas_used": 0, "gas_limit": 1}"#,
        )
        .unwrap();
        let d = dir.display();
        let cases = [
            (format!("file://{d}"), Ok(1)),
            (format!("file://{d}?"), Ok(1)),
            (
                format!("file://{d}?follow=1"),
                Err("unknown field `follow`"),
            ),
            (
                "https://u:hunter22@node/".to_owned(),
                Err("not a file URL: https://u:***@node/"),
            ),
            (format!("file://{d}/missing"), Err("no such file")),
        ];
        for (url, want) in cases {
            let chain = Chain::new("ethereum").unwrap();
            match (FileBlockSource::from_url(chain, &url), want) {
                (Ok(s), Ok(n)) => assert_eq!(s.numbers().count(), n, "{url}"),
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{url}: {e}");
                    assert!(!e.contains("hunter22"), "{url}: {e}");
                }
                (Ok(_), Err(want)) => panic!("{url}: opened, want {want}"),
                (Err(e), Ok(_)) => panic!("{url}: {e}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scan_finds_every_block_number_key() {
        let etl = br#"{"log_index": 3, "transaction_hash": "0xab", "block_number": 18000001, "type": "log"}"#;
        assert_eq!(
            scan_line(etl),
            Some(LineBlocks {
                min: 18000001,
                max: 18000001,
                header: false
            })
        );
        let header = br#"{"number": 7, "hash": "0x01", "parent_hash": "0x00"}"#;
        assert_eq!(
            scan_line(header),
            Some(LineBlocks {
                min: 7,
                max: 7,
                header: true
            })
        );
        let rpc =
            br#"{"result":[{"blockNumber":"0x10"},{"blockNumber" : "0x2"}, {"blockNumber":"17"}]}"#;
        assert_eq!(
            scan_line(rpc),
            Some(LineBlocks {
                min: 2,
                max: 17,
                header: false
            })
        );
        // No key, or a value the scan cannot read: the line is read for every range.
        assert_eq!(scan_line(br#"{"hash": "0x01"}"#), None);
        assert_eq!(scan_line(br#"{"block_number": null}"#), None);
        // Keys that merely end alike are not block numbers.
        assert_eq!(
            scan_line(br#"{"phone_number": 5, "blockNumberish": 4}"#),
            None
        );
    }

    #[test]
    fn lines_split_as_split_does() {
        for text in ["", "\n", "a", "a\n", "a\nbc\n\nd", "\n\na\n"] {
            let want: Vec<&[u8]> = text.as_bytes().split(|b| *b == b'\n').collect();
            assert_eq!(lines(text.as_bytes()).collect::<Vec<_>>(), want, "{text:?}");
        }
    }

    #[test]
    fn number_runs_merge_and_answer_membership() {
        let mut runs = Vec::new();
        for n in [5, 7, 6, 1, 2, 10, 9, 7, u64::MAX, 0] {
            insert_number(&mut runs, n);
        }
        assert_eq!(runs, vec![(0, 2), (5, 7), (9, 10), (u64::MAX, u64::MAX)]);
        // Whole runs merge alike, touching or overlapping.
        let mut merged = Vec::new();
        for (lo, hi) in [
            (9, 10),
            (5, 6),
            (u64::MAX, u64::MAX),
            (0, 1),
            (7, 7),
            (2, 2),
            (6, 7),
        ] {
            insert_run(&mut merged, lo, hi);
        }
        assert_eq!(merged, runs);
        insert_run(&mut merged, 3, 8);
        assert_eq!(merged, vec![(0, 10), (u64::MAX, u64::MAX)]);
        for n in 0..12 {
            assert_eq!(
                holds(&runs, n),
                [0, 1, 2, 5, 6, 7, 9, 10].contains(&n),
                "{n}"
            );
        }
    }

    /// Scanning a file in parts finds what one scan finds: the same lines, chunks covering the
    /// same blocks, the same headers and head, and the same first bad line.
    #[test]
    fn a_scan_in_parts_equals_one_scan() {
        let dir = tempfile::tempdir().unwrap();
        let hash = |n: u64| format!("0x{n:064x}");
        let mut text = String::new();
        for n in 0..60u64 {
            // Blocks out of order, with a blank line and logs between them.
            let b = (n * 7) % 60 + 100;
            text += &format!(
                "{{\"number\": {b}, \"hash\": \"{}\", \"parent_hash\": \"{}\", \"timestamp\": 1, \"gas_used\": 0, \"gas_limit\": 1}}\n",
                hash(b),
                hash(b - 1)
            );
            text += "\n";
            for i in 0..5 {
                text += &format!(
                    "{{\"log_index\": {i}, \"transaction_hash\": \"{}\", \"transaction_index\": 0, \"block_number\": {b}, \"address\": \"0x{:040x}\", \"data\": \"0x\", \"topics\": []}}\n",
                    hash(i),
                    i
                );
            }
        }
        let path = dir.path().join("rows.json");
        std::fs::write(&path, &text).unwrap();
        let scan = |parts: u64| {
            let (mut numbers, mut head) = (Vec::new(), None);
            let file = LinesFile::scan_in_parts(&path, parts, &mut numbers, &mut head).unwrap();
            let lines: u64 = file.chunks.iter().map(|c| c.lines).sum();
            let blocks: Vec<(u64, u64)> = file.chunks.iter().map(|c| (c.min, c.max)).collect();
            (numbers, head.map(|h| h.number), lines, blocks, file)
        };
        let (numbers, head, lines, _, _) = scan(1);
        assert_eq!(numbers, vec![(100, 159)]);
        assert_eq!((head, lines), (Some(159), 60 * 7));
        for parts in [2, 3, 7, 1000] {
            let (n, h, l, blocks, file) = scan(parts);
            assert_eq!((&n, h, l), (&numbers, head, lines), "{parts} parts");
            // Every chunk starts at its line and holds whole lines.
            for c in &file.chunks {
                let start = c.offset as usize;
                assert!(
                    start == 0 || text.as_bytes()[start - 1] == b'\n',
                    "{parts} parts"
                );
                let before = text[..start].matches('\n').count() as u64;
                assert_eq!(c.first_line, before + 1, "{parts} parts");
                let body = &text[start..start + c.len];
                assert_eq!(body.matches('\n').count() as u64, c.lines, "{parts} parts");
            }
            assert!(blocks.iter().all(|(lo, hi)| lo <= hi));
        }
        // A bad line is named by its line in the file, whichever part holds it.
        let mut lines: Vec<&str> = text.lines().collect();
        lines[300] = "{\"number\": 7, \"parent_hash\": \"x\"}";
        lines[20] = "{\"number\": 8, \"parent_hash\": \"x\"}";
        std::fs::write(&path, lines.join("\n")).unwrap();
        for parts in [1, 2, 3, 7] {
            let Err(e) = LinesFile::scan_in_parts(&path, parts, &mut Vec::new(), &mut None) else {
                panic!("{parts} parts: the bad line was taken");
            };
            assert!(e.to_string().contains("line 21:"), "{parts} parts: {e}");
        }
    }
}
