//! The one error type of the crate: every variant names what was wrong and
//! where, and none of them carries credentials (store URLs are redacted by
//! [`crate::store::redact_url`] before they reach a message).

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from building, reading or querying an index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag, environment variable or argument is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An object the job needs does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An object exists but its content is malformed or fails its checksum.
    #[error("corrupt data in {path}: {reason}")]
    Corrupt {
        /// Store path of the object (redacted URL plus key).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Chain data could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// Which ledger, block or file.
        what: String,
        /// Decoder message.
        reason: String,
    },
    /// The blob store failed (after its bounded retries).
    #[error("storage error on {path}: {source}")]
    Storage {
        /// Store path of the object.
        path: String,
        /// Underlying object_store error.
        #[source]
        source: object_store::Error,
    },
    /// A chain block source (the runner's `devnet://`, `runner+file://` or
    /// `http(s)://` sources) failed or returned an incomplete range.
    #[error("block source {source_name}: {reason}")]
    Source {
        /// Which source (redacted URL).
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// The map jobs do not cover the ledgers the index is meant to hold:
    /// the message names the first missing range and the job to rerun.
    #[error("incomplete coverage: {0}")]
    Incomplete(String),
    /// A child job process failed (local runner).
    #[error("job failed: {0}")]
    JobFailed(String),
}

impl Error {
    /// Builds a [`Error::Corrupt`] for `path`.
    pub fn corrupt(path: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Corrupt {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Builds a [`Error::Decode`].
    pub fn decode(what: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Decode {
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Builds a [`Error::InvalidInput`].
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidInput(msg.to_string())
    }
}
