//! Account identities and their ownership by reduce jobs.
//!
//! An account is stored and hashed by its canonical text form:
//! - Stellar: the `G...` strkey of the ed25519 key. Muxed accounts (`M...`,
//!   `KEY_TYPE_MUXED_ED25519`) are always reduced to their underlying `G...`
//!   account, both when indexing and when querying, so a muxed sub-account's
//!   history is its base account's history (lighthorizon mixed the two forms
//!   depending on the operation).
//! - Ethereum: `0x` plus 40 lowercase hex digits.
//!
//! Ownership follows lighthorizon: the 64-bit FNV-1a hash of the text's bytes,
//! left 32 bits `% reduce_jobs` is the reduce job, right 32 bits `% workers`
//! is the worker inside that job.

use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A chain account in compact binary form (cheap to hash while mapping).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// A Stellar ed25519 account key.
    Stellar([u8; 32]),
    /// An Ethereum address.
    Ethereum([u8; 20]),
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Stellar(key) => {
                let pk = stellar_xdr::PublicKey::PublicKeyTypeEd25519(stellar_xdr::Uint256(*key));
                write!(f, "{pk}")
            }
            Account::Ethereum(addr) => write!(f, "0x{}", hex::encode(addr)),
        }
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Account {
    type Err = Error;

    /// Accepts `G...`, `M...` (reduced to its `G...` account) and `0x` + 40 hex.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some(hex_part) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            let bytes = hex::decode(hex_part)
                .map_err(|e| Error::invalid(format!("account `{s}` is not valid hex: {e}")))?;
            let addr: [u8; 20] = bytes.try_into().map_err(|_| {
                Error::invalid(format!("account `{s}` must be 20 bytes (40 hex digits)"))
            })?;
            return Ok(Account::Ethereum(addr));
        }
        if s.starts_with('M') {
            let muxed = stellar_xdr::MuxedAccount::from_str(s).map_err(|e| {
                Error::invalid(format!("account `{s}` is not a valid M-address: {e}"))
            })?;
            return Ok(Account::from_muxed(&muxed));
        }
        let pk = stellar_xdr::PublicKey::from_str(s).map_err(|e| {
            Error::invalid(format!(
                "account `{s}` is neither a Stellar G-address, an M-address nor a 0x Ethereum address: {e}"
            ))
        })?;
        let stellar_xdr::PublicKey::PublicKeyTypeEd25519(k) = pk;
        Ok(Account::Stellar(k.0))
    }
}

impl Account {
    /// The underlying `G...` account of a (possibly muxed) Stellar account.
    pub fn from_muxed(m: &stellar_xdr::MuxedAccount) -> Self {
        match m {
            stellar_xdr::MuxedAccount::Ed25519(k) => Account::Stellar(k.0),
            stellar_xdr::MuxedAccount::MuxedEd25519(mx) => Account::Stellar(mx.ed25519.0),
        }
    }

    /// A Stellar `AccountId`.
    pub fn from_account_id(a: &stellar_xdr::AccountId) -> Self {
        let stellar_xdr::PublicKey::PublicKeyTypeEd25519(k) = &a.0;
        Account::Stellar(k.0)
    }
}

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// Which reduce job and worker own a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// Reduce job index, `0..reduce_jobs`.
    pub job: u32,
    /// Worker index inside the reduce job, `0..workers`.
    pub worker: u32,
}

impl Owner {
    /// Owner of a 64-bit key hash.
    pub fn of_hash(hash: u64, reduce_jobs: u32, workers: u32) -> Self {
        let left = (hash >> 32) as u32;
        let right = hash as u32;
        Owner {
            job: left % reduce_jobs.max(1),
            worker: right % workers.max(1),
        }
    }

    /// Owner of an account, by FNV-1a of its canonical text.
    pub fn of_account(text: &str, reduce_jobs: u32, workers: u32) -> Self {
        Self::of_hash(fnv1a64(text.as_bytes()), reduce_jobs, workers)
    }

    /// Owner of a transaction hash: its first 8 bytes, big-endian, are
    /// already uniformly distributed and play the role of the FNV hash.
    pub fn of_transaction(hash: &[u8; 32], reduce_jobs: u32, workers: u32) -> Self {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&hash[..8]);
        Self::of_hash(u64::from_be_bytes(prefix), reduce_jobs, workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn owner_splits_hash_halves() {
        let o = Owner::of_hash(0x0000_0007_0000_0005, 4, 3);
        assert_eq!(o, Owner { job: 3, worker: 2 });
    }

    #[test]
    fn muxed_and_plain_parse_to_same_account() {
        let g = "GA7QYNF7SOWQ3GLR2BGMZEHXAVIRZA4KVWLTJJFC7MGXUA74P7UJVSGZ";
        let a: Account = g.parse().unwrap();
        assert_eq!(a.to_string(), g);
        let Account::Stellar(key) = a else {
            panic!("G-address parsed as {a:?}")
        };
        let m = stellar_xdr::MuxedAccount::MuxedEd25519(stellar_xdr::MuxedAccountMed25519 {
            id: 7,
            ed25519: stellar_xdr::Uint256(key),
        })
        .to_string();
        assert!(m.starts_with('M'), "{m}");
        let b: Account = m.parse().unwrap();
        assert_eq!(b, a);
        let e: Account = "0xAbCdEf0000000000000000000000000000000001"
            .parse()
            .unwrap();
        assert_eq!(e.to_string(), "0xabcdef0000000000000000000000000000000001");
        assert!("0x12".parse::<Account>().is_err());
        assert!("hello".parse::<Account>().is_err());
    }
}
