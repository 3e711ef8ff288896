//! Partial index files written by map jobs and read by reduce jobs.
//!
//! `job_<i>/accounts/part-<r>.bin` holds the accounts owned by reduce job `r`:
//! ```text
//! MAGIC "BIXPART1", varint n_names, names (varint len + UTF-8),
//! varint n_accounts, then per account in byte order of its text:
//!   varint len + account text, varint n_entries,
//!   per entry: varint name_id, bitmap (see bitmap_encoding)
//! ```
//! `job_<i>/transactions/part-<r>.bin`: `MAGIC "BIXTXP01"`, varint count,
//! then sorted fixed records `hash[32] || position u64 BE`.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

use crate::bitmap_encoding;
use crate::varint::{self, Cursor};

const ACCOUNTS_MAGIC: &[u8; 8] = b"BIXPART1";
const TX_MAGIC: &[u8; 8] = b"BIXTXP01";

/// One decoded account record: its text and `(index name, checkpoints)`.
pub type AccountRecord = (String, Vec<(String, RoaringBitmap)>);

/// Per account, per index name, the checkpoint set.
pub type AccountSets = BTreeMap<String, BTreeMap<String, RoaringBitmap>>;

/// Encodes sorted account records.
pub fn encode_accounts(records: &AccountSets) -> Vec<u8> {
    let mut names: Vec<&String> = records.values().flat_map(|m| m.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    out.extend_from_slice(ACCOUNTS_MAGIC);
    varint::put(&mut out, names.len() as u64);
    for n in &names {
        varint::put(&mut out, n.len() as u64);
        out.extend_from_slice(n.as_bytes());
    }
    varint::put(&mut out, records.len() as u64);
    for (account, sets) in records {
        varint::put(&mut out, account.len() as u64);
        out.extend_from_slice(account.as_bytes());
        varint::put(&mut out, sets.len() as u64);
        for (name, set) in sets {
            let id = names.binary_search(&name).expect("name collected above");
            varint::put(&mut out, id as u64);
            bitmap_encoding::encode(set, &mut out);
        }
    }
    out
}

/// Decodes an accounts partial; `Err` holds the reason (callers add the path).
pub fn decode_accounts(bytes: &[u8]) -> Result<Vec<AccountRecord>, String> {
    let mut c = Cursor::new(bytes);
    if c.bytes(8) != Some(ACCOUNTS_MAGIC) {
        return Err("not an accounts partial file (bad magic)".into());
    }
    let n_names = c.len(bytes.len()).ok_or("truncated name table")?;
    let mut names = Vec::with_capacity(n_names);
    for _ in 0..n_names {
        let n = c.prefixed().ok_or("truncated index name")?;
        names.push(String::from_utf8(n.to_vec()).map_err(|_| "index name is not UTF-8")?);
    }
    let n = c.len(bytes.len()).ok_or("truncated account count")?;
    let mut out = Vec::with_capacity(n);
    let mut prev: Option<String> = None;
    for i in 0..n {
        let a = c
            .prefixed()
            .ok_or_else(|| format!("truncated account {i}"))?;
        let a = String::from_utf8(a.to_vec()).map_err(|_| format!("account {i} is not UTF-8"))?;
        if prev.as_ref().is_some_and(|p| p >= &a) {
            return Err(format!("account {i} `{a}` is out of order"));
        }
        let k = c
            .len(names.len())
            .ok_or_else(|| format!("bad entry count for `{a}`"))?;
        let mut sets = Vec::with_capacity(k);
        for _ in 0..k {
            let id = c
                .len(names.len().saturating_sub(1))
                .ok_or_else(|| format!("bad index id for `{a}`"))?;
            let set = bitmap_encoding::decode(&mut c).map_err(|e| format!("account `{a}`: {e}"))?;
            sets.push((names[id].clone(), set));
        }
        out.push((a.clone(), sets));
        prev = Some(a);
    }
    if !c.is_empty() {
        return Err(format!("{} trailing bytes", bytes.len() - c.position()));
    }
    Ok(out)
}

/// Encodes sorted `(hash, position)` records.
pub fn encode_transactions(records: &BTreeMap<[u8; 32], u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + records.len() * 40);
    out.extend_from_slice(TX_MAGIC);
    varint::put(&mut out, records.len() as u64);
    for (h, p) in records {
        out.extend_from_slice(h);
        out.extend_from_slice(&p.to_be_bytes());
    }
    out
}

/// Decodes a transactions partial.
pub fn decode_transactions(bytes: &[u8]) -> Result<Vec<([u8; 32], u64)>, String> {
    let mut c = Cursor::new(bytes);
    if c.bytes(8) != Some(TX_MAGIC) {
        return Err("not a transactions partial file (bad magic)".into());
    }
    let n = c.len(bytes.len() / 40).ok_or("bad transaction count")?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let h: [u8; 32] = c
            .bytes(32)
            .ok_or_else(|| format!("truncated transaction {i}"))?
            .try_into()
            .expect("32");
        let p = u64::from_be_bytes(
            c.bytes(8)
                .ok_or_else(|| format!("truncated transaction {i}"))?
                .try_into()
                .expect("8"),
        );
        out.push((h, p));
    }
    if !c.is_empty() {
        return Err("trailing bytes after transactions".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_roundtrip_and_corruption() {
        let mut recs = AccountSets::new();
        recs.entry("GA".into())
            .or_default()
            .insert("all/all".into(), RoaringBitmap::from_iter([1u32, 5]));
        recs.entry("GB".into())
            .or_default()
            .insert("all/payments".into(), RoaringBitmap::from_iter([7u32]));
        let bytes = encode_accounts(&recs);
        let back = decode_accounts(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[1].1[0],
            ("all/payments".to_string(), RoaringBitmap::from_iter([7u32]))
        );
        assert!(decode_accounts(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(decode_accounts(&bad).is_err());
    }

    #[test]
    fn transactions_roundtrip() {
        let recs: BTreeMap<[u8; 32], u64> =
            [([1u8; 32], 9u64), ([2u8; 32], 10)].into_iter().collect();
        let bytes = encode_transactions(&recs);
        assert_eq!(
            decode_transactions(&bytes).unwrap(),
            vec![([1u8; 32], 9), ([2u8; 32], 10)]
        );
        assert!(decode_transactions(&bytes[..50]).is_err());
    }
}
