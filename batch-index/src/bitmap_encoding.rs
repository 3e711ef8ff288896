//! Compact on-disk encoding of one checkpoint set (a `RoaringBitmap`).
//!
//! Most accounts take part in a handful of checkpoints, where a serialized
//! roaring bitmap spends ~18 bytes of container headers. Each set is therefore
//! written in whichever of two forms is smaller:
//! - tag `0`: varint count, then the first checkpoint and the gaps between
//!   successive checkpoints as varints (a 1-element set costs 4-6 bytes);
//! - tag `1`: varint length, then the portable roaring serialization (wins
//!   for long dense runs);
//! - tag `3`: varint count, first checkpoint, period `p`, then `p` gaps that
//!   repeat (an account active every `k` checkpoints, or on a weekly
//!   pattern, costs a few bytes however long its history);
//! - tag `2`: varint length, then the tag-0 body compressed with raw deflate
//!   (no container overhead; wins for long regular histories, e.g. an account
//!   active every few checkpoints).
//!
//! The choice is a pure function of the set, so equal sets encode to equal
//! bytes, which keeps shard files byte-identical across job layouts.

use roaring::RoaringBitmap;

use crate::varint::{self, Cursor};

const TAG_DELTAS: u8 = 0;
const TAG_ROARING: u8 = 1;
const TAG_DEFLATE_DELTAS: u8 = 2;
const TAG_PERIODIC: u8 = 3;
/// Longest gap pattern tried for tag 3.
const MAX_PERIOD: usize = 16;
/// Bound on a decompressed tag-2 body, so a corrupt file cannot exhaust memory.
const MAX_DELTA_BYTES: u64 = 64 << 20;
/// Most checkpoints a tag-3 set may hold: no more than a tag-2 body can ([`MAX_DELTA_BYTES`],
/// at least a byte each), so a few bytes cannot make the reader loop billions of times and
/// fill hundreds of MiB. The encoder writes a larger set in another form.
const MAX_PERIODIC_LEN: u64 = MAX_DELTA_BYTES;

/// Appends the encoding of `set` to `out`.
pub fn encode(set: &RoaringBitmap, out: &mut Vec<u8>) {
    let mut deltas = Vec::with_capacity(8);
    varint::put(&mut deltas, set.len());
    let mut prev = 0u32;
    for (i, v) in set.iter().enumerate() {
        let d = if i == 0 { v } else { v - prev };
        varint::put(&mut deltas, u64::from(d));
        prev = v;
    }
    // Below this size no roaring serialization can be smaller.
    if deltas.len() <= 16 {
        out.push(TAG_DELTAS);
        out.extend_from_slice(&deltas);
        return;
    }
    let periodic = periodic_body(set);
    let mut packed = set.clone();
    packed.optimize();
    let roaring_len = packed.serialized_size();
    let roaring_total = varint_len(roaring_len as u64) + roaring_len;
    let compressed = deflate(&deltas);
    let compressed_total = compressed
        .as_ref()
        .map_or(usize::MAX, |z| varint_len(z.len() as u64) + z.len());
    let periodic_total = periodic.as_ref().map_or(usize::MAX, Vec::len);
    if periodic_total < deltas.len()
        && periodic_total < roaring_total
        && periodic_total < compressed_total
    {
        out.push(TAG_PERIODIC);
        out.extend_from_slice(&periodic.expect("periodic_total is finite"));
    } else if deltas.len() <= roaring_total && deltas.len() <= compressed_total {
        out.push(TAG_DELTAS);
        out.extend_from_slice(&deltas);
    } else if roaring_total <= compressed_total {
        out.push(TAG_ROARING);
        varint::put(out, roaring_len as u64);
        packed
            .serialize_into(&mut *out)
            .expect("writing to a Vec cannot fail");
    } else {
        let z = compressed.expect("compressed_total is finite");
        out.push(TAG_DEFLATE_DELTAS);
        varint::put(out, z.len() as u64);
        out.extend_from_slice(&z);
    }
}

/// Tag-3 body when the gaps after the first checkpoint repeat with a
/// period of at most [`MAX_PERIOD`] (and at least twice).
fn periodic_body(set: &RoaringBitmap) -> Option<Vec<u8>> {
    if set.len() > MAX_PERIODIC_LEN {
        return None;
    }
    let values: Vec<u32> = set.iter().collect();
    let gaps: Vec<u32> = values.windows(2).map(|w| w[1] - w[0]).collect();
    let period = (1..=MAX_PERIOD.min(gaps.len() / 2))
        .find(|&p| gaps.iter().enumerate().all(|(i, g)| *g == gaps[i % p]))?;
    let mut out = Vec::with_capacity(8 + period * 2);
    varint::put(&mut out, values.len() as u64);
    varint::put(&mut out, u64::from(values[0]));
    varint::put(&mut out, period as u64);
    for g in &gaps[..period] {
        varint::put(&mut out, u64::from(*g));
    }
    Some(out)
}

fn decode_periodic(c: &mut Cursor<'_>) -> Result<RoaringBitmap, String> {
    let bad = || "truncated periodic bitmap".to_string();
    let n = c.varint().ok_or_else(bad)?;
    let first = c.varint().ok_or_else(bad)?;
    let period = c.len(MAX_PERIOD).ok_or("bad period")?;
    let mut gaps = Vec::with_capacity(period);
    for _ in 0..period {
        let g = c.varint().ok_or_else(bad)?;
        if g == 0 {
            return Err("zero gap in periodic bitmap".into());
        }
        gaps.push(g);
    }
    if n == 0 || period == 0 {
        return Err("empty periodic bitmap".into());
    }
    if n > MAX_PERIODIC_LEN {
        return Err(format!(
            "periodic bitmap of {n} checkpoints exceeds the {MAX_PERIODIC_LEN} a set may hold"
        ));
    }
    // Check the last value fits before inserting anything. Gaps are any u64 on the wire, so
    // their sums are checked too.
    let steps = n - 1;
    let sum = |gaps: &[u64]| gaps.iter().try_fold(0u64, |acc, g| acc.checked_add(*g));
    let cycle = sum(&gaps);
    let rest = sum(&gaps[..(steps % period as u64) as usize]);
    let last = cycle
        .zip(rest)
        .and_then(|(cycle, rest)| {
            (steps / period as u64)
                .checked_mul(cycle)
                .and_then(|v| v.checked_add(rest))
                .and_then(|v| v.checked_add(first))
        })
        .filter(|v| *v <= u64::from(u32::MAX))
        .ok_or("periodic bitmap exceeds the checkpoint range")?;
    let mut out = RoaringBitmap::new();
    if gaps == [1] {
        out.insert_range(first as u32..=last as u32);
        return Ok(out);
    }
    let mut v = first;
    out.insert(v as u32);
    for i in 0..steps {
        v += gaps[(i % period as u64) as usize];
        out.insert(v as u32);
    }
    Ok(out)
}

/// Raw deflate at a fixed level (deterministic for a given build).
fn deflate(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).ok()?;
    e.finish().ok()
}

fn varint_len(v: u64) -> usize {
    let mut tmp = Vec::with_capacity(10);
    varint::put(&mut tmp, v);
    tmp.len()
}

fn decode_deltas(c: &mut Cursor<'_>) -> Result<RoaringBitmap, String> {
    let n = c.varint().ok_or("truncated bitmap length")?;
    let mut out = RoaringBitmap::new();
    let mut prev: u64 = 0;
    for i in 0..n {
        let d = c.varint().ok_or("truncated bitmap entry")?;
        let v = if i == 0 { Some(d) } else { prev.checked_add(d) };
        let Some(v) = v.filter(|v| *v <= u64::from(u32::MAX) && (i == 0 || d > 0)) else {
            return Err(format!("bitmap entry {i} out of order or out of range"));
        };
        out.insert(v as u32);
        prev = v;
    }
    Ok(out)
}

/// Decodes one set from `c`; `Err` holds a reason for the caller to attach
/// to the file name.
pub fn decode(c: &mut Cursor<'_>) -> Result<RoaringBitmap, String> {
    let tag = c.bytes(1).ok_or("truncated bitmap tag")?[0];
    match tag {
        TAG_DELTAS => decode_deltas(c),
        TAG_ROARING => {
            let len = c.len(usize::MAX).ok_or("truncated roaring length")?;
            let bytes = c.bytes(len).ok_or("truncated roaring bitmap")?;
            RoaringBitmap::deserialize_from(bytes).map_err(|e| format!("bad roaring bitmap: {e}"))
        }
        TAG_DEFLATE_DELTAS => {
            let len = c
                .len(usize::MAX)
                .ok_or("truncated compressed bitmap length")?;
            let frame = c.bytes(len).ok_or("truncated compressed bitmap")?;
            let mut body = Vec::new();
            let decoder = flate2::read::DeflateDecoder::new(frame);
            std::io::Read::read_to_end(
                &mut std::io::Read::take(decoder, MAX_DELTA_BYTES),
                &mut body,
            )
            .map_err(|e| format!("bad compressed bitmap: {e}"))?;
            let mut inner = Cursor::new(&body);
            let set = decode_deltas(&mut inner)?;
            if !inner.is_empty() {
                return Err("trailing bytes in compressed bitmap".into());
            }
            Ok(set)
        }
        TAG_PERIODIC => decode_periodic(c),
        t => Err(format!("unknown bitmap tag {t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(set: &RoaringBitmap) -> usize {
        let mut out = Vec::new();
        encode(set, &mut out);
        let mut c = Cursor::new(&out);
        assert_eq!(&decode(&mut c).unwrap(), set);
        assert!(c.is_empty());
        out.len()
    }

    #[test]
    fn small_sets_use_deltas_large_dense_use_roaring() {
        assert_eq!(roundtrip(&RoaringBitmap::from_iter([22033u32])), 1 + 1 + 3);
        assert_eq!(roundtrip(&RoaringBitmap::new()), 2);
        let dense: RoaringBitmap = (1000u32..200_000).collect();
        let n = roundtrip(&dense);
        assert!(
            n < 100,
            "dense run should be roaring run-encoded, got {n} bytes"
        );
        let sparse: RoaringBitmap = (0u32..5000).map(|i| i * 997).collect();
        roundtrip(&sparse);
        // A regular but non-contiguous history compresses well.
        let periodic: RoaringBitmap = (0u32..400)
            .flat_map(|i| [22033 + 5 * i, 22035 + 5 * i])
            .collect();
        let n = roundtrip(&periodic);
        assert!(n <= 10, "periodic history should be tiny, got {n} bytes");
        let every_third: RoaringBitmap = (0u32..1000).map(|i| 100 + 3 * i).collect();
        assert!(roundtrip(&every_third) <= 8);
        let contiguous: RoaringBitmap = (22033u32..23600).collect();
        assert!(roundtrip(&contiguous) <= 8);
        // Irregular long histories still round-trip (deflate or roaring).
        let irregular: RoaringBitmap = (0u32..3000).map(|i| i * 7 + (i * i) % 5).collect();
        roundtrip(&irregular);
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(decode(&mut Cursor::new(&[7])).is_err());
        assert!(decode(&mut Cursor::new(&[0, 3, 1])).is_err());
        assert!(decode(&mut Cursor::new(&[1, 5, 1, 2])).is_err());
        // Periodic: count 2^40 from 5 with gap 1 overflows the range.
        assert!(
            decode(&mut Cursor::new(&[
                3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 5, 1, 1
            ]))
            .is_err()
        );
        assert!(decode(&mut Cursor::new(&[3, 2, 5, 1, 0])).is_err());
        // Found by fuzzing (index_file): a gap near u64::MAX overflowed the sums instead of
        // being refused, in a delta list and in a periodic set's cycle.
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let deltas = [&[0u8, 2, 5][..], &huge].concat();
        assert!(decode(&mut Cursor::new(&deltas)).is_err());
        let periodic = [&[3u8, 3, 5, 2, 1][..], &huge].concat();
        assert!(decode(&mut Cursor::new(&periodic)).is_err());
        let periodic_rest = [&[3u8, 3, 5, 3][..], &huge, &huge, &[1]].concat();
        assert!(decode(&mut Cursor::new(&periodic_rest)).is_err());
    }
}
