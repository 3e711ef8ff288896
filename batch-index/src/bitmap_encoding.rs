//! Compact on-disk encoding of one checkpoint set (a `RoaringBitmap`).
//!
//! Most accounts take part in a handful of checkpoints, where a serialized
//! roaring bitmap spends ~18 bytes of container headers. Each set is therefore
//! written in whichever of two forms is smaller:
//! - tag `0`: varint count, then the first checkpoint and the gaps between
//!   successive checkpoints as varints (a 1-element set costs 4-6 bytes);
//! - tag `1`: varint length, then the portable roaring serialization (wins
//!   for long or dense histories).
//!
//! The choice is a pure function of the set, so equal sets encode to equal
//! bytes, which keeps shard files byte-identical across job layouts.

use roaring::RoaringBitmap;

use crate::varint::{self, Cursor};

const TAG_DELTAS: u8 = 0;
const TAG_ROARING: u8 = 1;

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
    let mut packed = set.clone();
    packed.optimize();
    let roaring_len = packed.serialized_size();
    let mut len_prefix = Vec::with_capacity(10);
    varint::put(&mut len_prefix, roaring_len as u64);
    if deltas.len() <= len_prefix.len() + roaring_len {
        out.push(TAG_DELTAS);
        out.extend_from_slice(&deltas);
    } else {
        out.push(TAG_ROARING);
        out.extend_from_slice(&len_prefix);
        packed
            .serialize_into(&mut *out)
            .expect("writing to a Vec cannot fail");
    }
}

/// Decodes one set from `c`; `Err` holds a reason for the caller to attach
/// to the file name.
pub fn decode(c: &mut Cursor<'_>) -> Result<RoaringBitmap, String> {
    let tag = c.bytes(1).ok_or("truncated bitmap tag")?[0];
    match tag {
        TAG_DELTAS => {
            let n = c.varint().ok_or("truncated bitmap length")?;
            let mut out = RoaringBitmap::new();
            let mut prev: u64 = 0;
            for i in 0..n {
                let d = c.varint().ok_or("truncated bitmap entry")?;
                let v = if i == 0 { d } else { prev + d };
                if v > u64::from(u32::MAX) || (i > 0 && d == 0) {
                    return Err(format!("bitmap entry {v} out of order or out of range"));
                }
                out.insert(v as u32);
                prev = v;
            }
            Ok(out)
        }
        TAG_ROARING => {
            let len = c.len(usize::MAX).ok_or("truncated roaring length")?;
            let bytes = c.bytes(len).ok_or("truncated roaring bitmap")?;
            RoaringBitmap::deserialize_from(bytes).map_err(|e| format!("bad roaring bitmap: {e}"))
        }
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
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(decode(&mut Cursor::new(&[7])).is_err());
        assert!(decode(&mut Cursor::new(&[0, 3, 1])).is_err());
        assert!(decode(&mut Cursor::new(&[1, 5, 1, 2])).is_err());
    }
}
