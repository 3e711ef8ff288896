//! Sorted key/value table: the format of final shard files.
//!
//! ```text
//! [block 0][block 1]...[footer][footer_len: u32 LE][MAGIC: 8 bytes]
//! block  = records sorted by key: varint key_len, key, varint value_len, value
//! footer = varint meta_len, meta, varint record_count, varint block_count,
//!          per block: varint first_key_len, first_key, varint offset, varint len
//! ```
//!
//! A lookup reads the last [`FOOTER_BUDGET`] bytes (one suffix range read,
//! which holds the whole footer because the writer grows blocks until the
//! footer fits), binary-searches the block index, then reads one block: at
//! most two range reads of one object, and one once the footer is cached.

use crate::varint::{self, Cursor};

/// Trailing magic of a table object.
pub const MAGIC: &[u8; 8] = b"BIXTBL01";
/// Upper bound of footer + trailer, so one suffix read of this size always
/// contains the whole footer.
pub const FOOTER_BUDGET: usize = 64 * 1024;
const TRAILER: usize = 4 + MAGIC.len();
const TARGET_BLOCK: usize = 4 * 1024;

/// Serializes sorted, unique `(key, value)` records with `meta` (free-form
/// bytes, e.g. the index names) into one table object.
///
/// Panics if keys are not strictly increasing: that is a bug in the caller.
pub fn write(meta: &[u8], records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    for w in records.windows(2) {
        assert!(w[0].0 < w[1].0, "table records must be sorted and unique");
    }
    let mut target = TARGET_BLOCK;
    loop {
        let (body, blocks) = pack_blocks(records, target);
        let footer = footer_bytes(meta, records.len(), &blocks);
        if footer.len() + TRAILER <= FOOTER_BUDGET || blocks.len() <= 1 {
            let mut out = body;
            out.extend_from_slice(&footer);
            out.extend_from_slice(&(footer.len() as u32).to_le_bytes());
            out.extend_from_slice(MAGIC);
            return out;
        }
        target *= 2;
    }
}

struct BlockRef {
    first_key: Vec<u8>,
    offset: u64,
    len: u64,
}

fn pack_blocks(records: &[(Vec<u8>, Vec<u8>)], target: usize) -> (Vec<u8>, Vec<BlockRef>) {
    let mut body = Vec::new();
    let mut blocks: Vec<BlockRef> = Vec::new();
    let mut block_start = 0usize;
    for (k, v) in records {
        if blocks.is_empty() || body.len() - block_start >= target {
            if let Some(last) = blocks.last_mut() {
                last.len = (body.len() - block_start) as u64;
            }
            block_start = body.len();
            blocks.push(BlockRef {
                first_key: k.clone(),
                offset: block_start as u64,
                len: 0,
            });
        }
        varint::put(&mut body, k.len() as u64);
        body.extend_from_slice(k);
        varint::put(&mut body, v.len() as u64);
        body.extend_from_slice(v);
    }
    if let Some(last) = blocks.last_mut() {
        last.len = (body.len() - block_start) as u64;
    }
    (body, blocks)
}

fn footer_bytes(meta: &[u8], count: usize, blocks: &[BlockRef]) -> Vec<u8> {
    let mut f = Vec::new();
    varint::put(&mut f, meta.len() as u64);
    f.extend_from_slice(meta);
    varint::put(&mut f, count as u64);
    varint::put(&mut f, blocks.len() as u64);
    for b in blocks {
        varint::put(&mut f, b.first_key.len() as u64);
        f.extend_from_slice(&b.first_key);
        varint::put(&mut f, b.offset);
        varint::put(&mut f, b.len);
    }
    f
}

/// A parsed footer: enough to find the block that may hold a key.
#[derive(Debug, Clone)]
pub struct Footer {
    /// The writer's meta bytes.
    pub meta: Vec<u8>,
    /// Number of records in the table.
    pub record_count: u64,
    blocks: Vec<(Vec<u8>, u64, u64)>,
}

impl Footer {
    /// Parses the footer from the tail of a table object (`tail` must be the
    /// last `min(FOOTER_BUDGET, size)` bytes, or the whole object).
    pub fn parse(tail: &[u8]) -> Result<Self, String> {
        if tail.len() < TRAILER || &tail[tail.len() - MAGIC.len()..] != MAGIC {
            return Err("not a batch-index table (bad trailing magic)".into());
        }
        let len_pos = tail.len() - TRAILER;
        let footer_len =
            u32::from_le_bytes(tail[len_pos..len_pos + 4].try_into().expect("4 bytes")) as usize;
        if footer_len > len_pos {
            return Err(format!("footer length {footer_len} exceeds the bytes read"));
        }
        let mut c = Cursor::new(&tail[len_pos - footer_len..len_pos]);
        let bad = || "truncated or malformed footer".to_string();
        let meta = c.prefixed().ok_or_else(bad)?.to_vec();
        let record_count = c.varint().ok_or_else(bad)?;
        let n = c.len(footer_len).ok_or_else(bad)?;
        let mut blocks = Vec::with_capacity(n);
        for _ in 0..n {
            let k = c.prefixed().ok_or_else(bad)?.to_vec();
            let off = c.varint().ok_or_else(bad)?;
            let len = c.varint().ok_or_else(bad)?;
            // `block_for` and `block_ranges` add them: a range past `u64::MAX` is corrupt.
            if off.checked_add(len).is_none() {
                return Err(format!("block at {off} of {len} bytes ends past u64::MAX"));
            }
            blocks.push((k, off, len));
        }
        if !c.is_empty() {
            return Err("trailing bytes after footer".into());
        }
        Ok(Footer {
            meta,
            record_count,
            blocks,
        })
    }

    /// Byte range of the only block that can contain `key`.
    pub fn block_for(&self, key: &[u8]) -> Option<std::ops::Range<u64>> {
        let idx = self
            .blocks
            .partition_point(|(first, _, _)| first.as_slice() <= key);
        let (_, off, len) = self.blocks.get(idx.checked_sub(1)?)?;
        Some(*off..off + len)
    }

    /// Byte ranges of every block, in key order (for full scans).
    pub fn block_ranges(&self) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
        self.blocks.iter().map(|(_, off, len)| *off..off + len)
    }
}

/// One `(key, value)` record borrowed from a block.
pub type Record<'a> = (&'a [u8], &'a [u8]);

/// Iterates the records of one block.
pub fn block_records(block: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut c = Cursor::new(block);
    let mut out = Vec::new();
    while !c.is_empty() {
        let k = c.prefixed().ok_or("truncated record key")?;
        let v = c.prefixed().ok_or("truncated record value")?;
        out.push((k, v));
    }
    Ok(out)
}

/// Finds `key` in one block.
pub fn find_in_block<'a>(block: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, String> {
    Ok(block_records(block)?
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(table: &[u8], key: &[u8]) -> Option<Vec<u8>> {
        let tail = &table[table.len().saturating_sub(FOOTER_BUDGET)..];
        let f = Footer::parse(tail).unwrap();
        let r = f.block_for(key)?;
        find_in_block(&table[r.start as usize..r.end as usize], key)
            .unwrap()
            .map(<[u8]>::to_vec)
    }

    #[test]
    fn finds_every_key_and_rejects_missing() {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
            .map(|i| {
                (
                    format!("key{:08}", i * 2).into_bytes(),
                    i.to_le_bytes().to_vec(),
                )
            })
            .collect();
        let t = write(b"meta", &records);
        for i in (0..20_000u32).step_by(997) {
            assert_eq!(
                lookup(&t, format!("key{:08}", i * 2).as_bytes()),
                Some(i.to_le_bytes().to_vec())
            );
            assert_eq!(lookup(&t, format!("key{:08}", i * 2 + 1).as_bytes()), None);
        }
        assert_eq!(lookup(&t, b"a"), None);
        assert_eq!(lookup(&t, b"zzz"), None);
        let f = Footer::parse(&t).unwrap();
        assert_eq!(f.meta, b"meta");
        assert_eq!(f.record_count, 20_000);
    }

    #[test]
    fn footer_stays_within_budget_for_many_keys() {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..400_000u32)
            .map(|i| (format!("{:056}", i).into_bytes(), vec![1]))
            .collect();
        let t = write(b"", &records);
        let tail = &t[t.len() - FOOTER_BUDGET..];
        let f = Footer::parse(tail).unwrap();
        let key = format!("{:056}", 123_456).into_bytes();
        let r = f.block_for(&key).unwrap();
        assert_eq!(
            find_in_block(&t[r.start as usize..r.end as usize], &key).unwrap(),
            Some(&[1u8][..])
        );
    }

    #[test]
    fn empty_table_and_corruption() {
        let t = write(b"m", &[]);
        let f = Footer::parse(&t).unwrap();
        assert_eq!(f.block_for(b"x"), None);
        let mut bad = t.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(Footer::parse(&bad).is_err());
    }
}
