//! Identifiers and value types shared by every part of the system: which chain, which blocks,
//! which scheduling mode and which kind of model.
//!
//! Each type validates itself at construction, so a value that exists is valid; parsing errors
//! name the offending input.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A bad identifier or range, with a message that names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The chain name is not a lowercase identifier.
    #[error(
        "invalid chain name {name:?}: expected 1-32 characters of lowercase ASCII letters, digits and inner '-', starting with a letter (e.g. `ethereum`, `matic`)"
    )]
    InvalidChain {
        /// The rejected input.
        name: String,
    },
    /// `start > end`.
    #[error("invalid block range {start}-{end}: start is after end")]
    ReversedRange {
        /// First block.
        start: u64,
        /// Last block.
        end: u64,
    },
    /// The range `0..=u64::MAX` has 2^64 blocks, which no counter here can hold.
    #[error("invalid block range 0-{}: more than u64::MAX blocks", u64::MAX)]
    RangeTooLong,
    /// A range string that is not `START-END` or `N`.
    #[error(
        "invalid block range {input:?}: expected START-END (inclusive) or a single block number"
    )]
    Unparsable {
        /// The rejected input.
        input: String,
    },
    /// `chunks(0)`.
    #[error("invalid chunk size 0: a chunk holds at least one block")]
    ZeroChunk,
    /// An unknown run mode.
    #[error("invalid run mode {input:?}: expected `realtime`, `backfill` or `adhoc`")]
    InvalidMode {
        /// The rejected input.
        input: String,
    },
    /// An unknown run state.
    #[error(
        "invalid run state {input:?}: expected one of pending, queued, running, succeeded, failed, expired, cancelled"
    )]
    InvalidState {
        /// The rejected input.
        input: String,
    },
    /// An unknown model kind.
    #[error("invalid model kind {input:?}: expected `reads` or `nonreads`")]
    InvalidKind {
        /// The rejected input.
        input: String,
    },
}

/// A chain identifier such as `ethereum`, `matic` or `stellar`.
///
/// Lowercase ASCII letters and digits with inner single dashes, starting with a letter, at most
/// 32 characters, so it can be embedded in queue and topic names unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, pattern = "^[a-z]([a-z0-9]|-[a-z0-9])*$")
)]
#[serde(try_from = "String", into = "String")]
pub struct Chain(String);

impl Chain {
    /// Validates and wraps a chain name.
    pub fn new(name: impl Into<String>) -> Result<Self, ChainError> {
        let name = name.into();
        let bytes = name.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 32
            && bytes[0].is_ascii_lowercase()
            && bytes[bytes.len() - 1] != b'-'
            && !name.contains("--")
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if valid {
            Ok(Self(name))
        } else {
            Err(ChainError::InvalidChain { name })
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Blocks a realtime subscription stays behind this chain's head unless told otherwise
    /// (`--confirmations`, the config file's `[chains.NAME] confirmations`): deep enough that a
    /// reorg rarely reaches a block already modeled.
    ///
    /// | chain | confirmations | why |
    /// |---|---|---|
    /// | `ethereum`, `sepolia`, `holesky` | 12 | reorgs past a few blocks are rare since the merge; 12 is the common exchange depth |
    /// | `matic`, `polygon` | 128 | Polygon PoS has reorged dozens of blocks |
    /// | `bsc` | 15 | BNB Chain's fast finality needs two thirds of its 21 validators, about 15 blocks |
    /// | any other | 12 | unknown chains get Ethereum's depth, not none |
    pub fn default_confirmations(&self) -> u64 {
        match self.as_str() {
            "matic" | "polygon" => 128,
            "bsc" => 15,
            _ => 12,
        }
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Chain {
    type Err = ChainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Chain {
    type Error = ChainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<Chain> for String {
    fn from(c: Chain) -> Self {
        c.0
    }
}

/// An inclusive range of block numbers, never empty: `start <= end` holds by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "RawRange")]
pub struct BlockRange {
    /// First block (inclusive).
    start: u64,
    /// Last block (inclusive), not before `start`.
    end: u64,
}

#[derive(Deserialize)]
struct RawRange {
    start: u64,
    end: u64,
}

impl TryFrom<RawRange> for BlockRange {
    type Error = ChainError;
    fn try_from(r: RawRange) -> Result<Self, Self::Error> {
        Self::new(r.start, r.end)
    }
}

impl BlockRange {
    /// The blocks `start..=end`. Refuses `start > end` and the one range whose length does not
    /// fit in a `u64` (`0..=u64::MAX`).
    pub fn new(start: u64, end: u64) -> Result<Self, ChainError> {
        if start > end {
            return Err(ChainError::ReversedRange { start, end });
        }
        if start == 0 && end == u64::MAX {
            return Err(ChainError::RangeTooLong);
        }
        Ok(Self { start, end })
    }

    /// A range of one block.
    pub fn single(block: u64) -> Self {
        Self {
            start: block,
            end: block,
        }
    }

    /// First block (inclusive).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last block (inclusive).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Number of blocks, at least 1.
    #[allow(clippy::len_without_is_empty)] // a BlockRange is never empty
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Whether `block` lies in the range.
    pub fn contains(&self, block: u64) -> bool {
        self.start <= block && block <= self.end
    }

    /// Splits the range into consecutive chunks of `size` blocks; the last may be shorter.
    pub fn chunks(&self, size: u64) -> Result<Chunks, ChainError> {
        if size == 0 {
            return Err(ChainError::ZeroChunk);
        }
        Ok(Chunks {
            next: Some(self.start),
            end: self.end,
            size,
        })
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for BlockRange {
    type Err = ChainError;
    /// Parses `START-END` (inclusive) or a single block number `N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ChainError::Unparsable {
            input: s.to_owned(),
        };
        let num = |p: &str| p.trim().parse::<u64>().map_err(|_| bad());
        match s.split_once('-') {
            Some((a, b)) => Self::new(num(a)?, num(b)?),
            None => Ok(Self::single(num(s)?)),
        }
    }
}

/// Iterator returned by [`BlockRange::chunks`].
#[derive(Debug, Clone)]
pub struct Chunks {
    next: Option<u64>,
    end: u64,
    size: u64,
}

impl Iterator for Chunks {
    type Item = BlockRange;
    fn next(&mut self) -> Option<BlockRange> {
        let start = self.next?;
        let end = start.saturating_add(self.size - 1).min(self.end);
        self.next = if end == self.end { None } else { Some(end + 1) };
        Some(BlockRange { start, end })
    }
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident, $err:ident, { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The lowercase name used in queue names, URLs and the database.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.as_str()) }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::chain::ChainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($text => Ok($name::$variant),)+ _ => Err($crate::chain::ChainError::$err { input: s.to_owned() }) }
            }
        }
    };
}
pub(crate) use str_enum;

str_enum!(
    /// How a run came to be: following the head, a planned backfill, or a one-off adhoc run.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RunModeView))]
    RunMode, InvalidMode, {
        /// Scheduled as the chain head advances.
        Realtime => "realtime",
        /// One chunk of a historical range.
        Backfill => "backfill",
        /// A one-off run routed to the shared `backfill_N` pools.
        Adhoc => "adhoc",
    }
);

str_enum!(
    /// Whether a model calls contract state (`reads`, needs `eth_call`) or only transforms block
    /// data (`nonreads`). Routed to separate queues because their costs differ by orders.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = ModelKindView))]
    ModelKind, InvalidKind, {
        /// Calls contract state at the block.
        Reads => "reads",
        /// Only transforms block data.
        Nonreads => "nonreads",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_stays_behind_each_chain_by_default() {
        for (chain, depth) in [
            ("ethereum", 12),
            ("sepolia", 12),
            ("matic", 128),
            ("polygon", 128),
            ("bsc", 15),
            ("some-new-chain", 12),
        ] {
            let chain = Chain::new(chain).unwrap();
            assert_eq!(chain.default_confirmations(), depth, "{chain}");
            let sub = crate::engine::RealtimeSubscription::new("block_stats", chain.clone());
            assert_eq!(sub.confirmations, depth, "{chain}");
        }
    }

    #[test]
    fn chain_names_are_validated() {
        for ok in ["ethereum", "matic", "stellar", "bsc", "arbitrum-one", "l2"] {
            assert_eq!(Chain::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "", "Ethereum", "eth_main", "1chain", "-eth", "eth-", "a--b", "eth main", "éth",
        ] {
            let err = Chain::new(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(Chain::new("a".repeat(33)).is_err());
        assert!(Chain::new("a".repeat(32)).is_ok());
    }

    #[test]
    fn chain_deserialization_validates() {
        assert!(serde_json::from_str::<Chain>("\"matic\"").is_ok());
        let err = serde_json::from_str::<Chain>("\"MATIC\"").unwrap_err();
        assert!(err.to_string().contains("invalid chain name"));
    }

    #[test]
    fn range_edges() {
        let one = BlockRange::new(7, 7).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one, BlockRange::single(7));
        assert_eq!(
            BlockRange::new(8, 7).unwrap_err(),
            ChainError::ReversedRange { start: 8, end: 7 }
        );
        assert_eq!(
            BlockRange::new(0, u64::MAX).unwrap_err(),
            ChainError::RangeTooLong
        );
        let top = BlockRange::new(1, u64::MAX).unwrap();
        assert_eq!(top.len(), u64::MAX);
        let last = BlockRange::single(u64::MAX);
        assert_eq!(last.len(), 1);
        assert_eq!(last.chunks(10).unwrap().collect::<Vec<_>>(), vec![last]);
        let tail = BlockRange::new(u64::MAX - 4, u64::MAX).unwrap();
        let chunks: Vec<_> = tail.chunks(2).unwrap().collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[2], BlockRange::single(u64::MAX));
        assert_eq!(
            tail.chunks(u64::MAX).unwrap().collect::<Vec<_>>(),
            vec![tail]
        );
    }

    #[test]
    fn range_parse() {
        assert_eq!(
            "0-20000".parse::<BlockRange>().unwrap(),
            BlockRange::new(0, 20000).unwrap()
        );
        assert_eq!("42".parse::<BlockRange>().unwrap(), BlockRange::single(42));
        for bad in ["", "-", "a-b", "1-", "-5", "1-2-3", "5-x"] {
            assert!(
                matches!(
                    bad.parse::<BlockRange>(),
                    Err(ChainError::Unparsable { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            "9-3".parse::<BlockRange>(),
            Err(ChainError::ReversedRange { .. })
        ));
        let reversed = serde_json::from_str::<BlockRange>(r#"{"start":5,"end":1}"#).unwrap_err();
        assert!(reversed.to_string().contains("start is after end"));
    }

    #[test]
    fn chunks_cover_exactly_once() {
        let r = BlockRange::new(10, 109).unwrap();
        let c: Vec<_> = r.chunks(30).unwrap().collect();
        assert_eq!(
            c,
            vec![
                BlockRange::new(10, 39).unwrap(),
                BlockRange::new(40, 69).unwrap(),
                BlockRange::new(70, 99).unwrap(),
                BlockRange::new(100, 109).unwrap(),
            ]
        );
        assert_eq!(c.iter().map(BlockRange::len).sum::<u64>(), r.len());
        assert_eq!(r.chunks(100).unwrap().count(), 1);
        assert_eq!(r.chunks(1).unwrap().count(), 100);
        assert_eq!(r.chunks(0).unwrap_err(), ChainError::ZeroChunk);
    }

    #[test]
    fn modes_and_kinds_round_trip() {
        for m in RunMode::ALL {
            assert_eq!(m.as_str().parse::<RunMode>().unwrap(), *m);
        }
        for k in ModelKind::ALL {
            assert_eq!(k.as_str().parse::<ModelKind>().unwrap(), *k);
        }
        assert!("Reads".parse::<ModelKind>().is_err());
        assert!(
            "live"
                .parse::<RunMode>()
                .unwrap_err()
                .to_string()
                .contains("\"live\"")
        );
    }
}
