//! One set of defaults and caps for what a submission asks: blocks per run and attempts per run
//! of a backfill, an adhoc run set, a rerun or a realtime subscription, whether it comes from
//! code ([`BackfillRequest::new`](crate::engine::BackfillRequest::new),
//! [`RealtimeSubscription::new`](crate::engine::RealtimeSubscription::new)), a CLI flag, the
//! config file or the API.
//!
//! The engine checks what it must to stay sound (`submit_backfill` refuses a zero chunk size,
//! zero attempts, more runs than `Limits::max_runs_per_backfill`); these are the request-level
//! rules on top: what an absent value means and the most attempts anyone may ask for. A refusal
//! names the field, so the API can point at it and the CLI can name the flag.

/// Blocks per run when a submission does not say.
pub const DEFAULT_CHUNK_SIZE: u64 = 100;
/// Attempts per run when a submission does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The most attempts per run a submission may ask for: a run that failed a hundred times will
/// not succeed on the next, and each attempt reads its blocks again.
pub const MAX_ATTEMPTS: u32 = 100;

/// A submission field that breaks a rule of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The field, as the API names it (`chunk_size`, `max_attempts`).
    pub field: &'static str,
    /// Stable code, e.g. `invalid_chunk_size`.
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl std::fmt::Display for InvalidField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidField {}

/// Blocks per run: [`DEFAULT_CHUNK_SIZE`] unless given, at least 1.
pub fn chunk_size(given: Option<u64>) -> Result<u64, InvalidField> {
    match given.unwrap_or(DEFAULT_CHUNK_SIZE) {
        0 => Err(InvalidField {
            field: "chunk_size",
            code: "invalid_chunk_size",
            message: "chunk_size must be at least 1 block".into(),
        }),
        n => Ok(n),
    }
}

/// Attempts per run: [`DEFAULT_MAX_ATTEMPTS`] unless given, 1 to [`MAX_ATTEMPTS`].
pub fn max_attempts(given: Option<u32>) -> Result<u32, InvalidField> {
    let n = given.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if (1..=MAX_ATTEMPTS).contains(&n) {
        Ok(n)
    } else {
        Err(InvalidField {
            field: "max_attempts",
            code: "invalid_max_attempts",
            message: format!("max_attempts must be between 1 and {MAX_ATTEMPTS}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_caps() {
        assert_eq!(chunk_size(None), Ok(DEFAULT_CHUNK_SIZE));
        assert_eq!(chunk_size(Some(7)), Ok(7));
        assert_eq!(chunk_size(Some(0)).unwrap_err().field, "chunk_size");
        assert_eq!(max_attempts(None), Ok(DEFAULT_MAX_ATTEMPTS));
        assert_eq!(max_attempts(Some(MAX_ATTEMPTS)), Ok(MAX_ATTEMPTS));
        for bad in [0, MAX_ATTEMPTS + 1] {
            let e = max_attempts(Some(bad)).unwrap_err();
            assert_eq!((e.field, e.code), ("max_attempts", "invalid_max_attempts"));
        }
    }
}
