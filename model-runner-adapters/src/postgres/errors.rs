//! How PostgreSQL failures become [`StoreError`]s, how transient ones are retried, and how URLs
//! are shown without their password.

use std::time::{Duration, Instant};

use model_runner_core::ports::{StoreError, StoreResult};
use rand::Rng;

/// The adapter name carried by errors.
pub(crate) const ADAPTER: &str = "postgres";

/// Maps a sqlx error to the port's error. Connection loss, pool exhaustion, serialization
/// failures, deadlocks, shutdowns and the `08` connection class are [`StoreError::Unavailable`]
/// (retryable); everything else is [`StoreError::Backend`].
pub(crate) fn classify(err: sqlx::Error) -> StoreError {
    if is_transient(&err) {
        return StoreError::Unavailable {
            adapter: ADAPTER,
            message: err.to_string(),
        };
    }
    StoreError::Backend {
        adapter: ADAPTER,
        source: Box::new(err),
    }
}

fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs after which the same statement may succeed: serialization failure, deadlock,
/// admin/crash shutdown, cannot connect now, too many connections, a statement cancelled (by the
/// store's `statement_timeout`: nothing it did remains) and connection exceptions.
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "57014"
    ) || code.starts_with("08")
}

/// A corrupt or unreadable row: a backend failure, never retried.
pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Backend {
        adapter: ADAPTER,
        source: what.into().into(),
    }
}

/// Bounded exponential backoff with jitter for transient failures.
///
/// Starts at 20 ms, doubles up to 1 s, and gives up once `budget` has passed since the first
/// attempt, returning the last error.
#[derive(Debug)]
pub(crate) struct Backoff {
    started: Instant,
    budget: Duration,
    delay: Duration,
}

impl Backoff {
    pub(crate) fn new(budget: Duration) -> Self {
        Self {
            started: Instant::now(),
            budget,
            delay: Duration::from_millis(20),
        }
    }

    /// Waits before the next attempt if `err` is retryable and time remains; else returns `err`.
    pub(crate) async fn retry(&mut self, op: &str, err: StoreError) -> StoreResult<()> {
        if !err.is_retryable() || self.started.elapsed() >= self.budget {
            return Err(err);
        }
        let jitter = rand::rng().random_range(0..=self.delay.as_millis() as u64 / 2);
        let wait = self.delay + Duration::from_millis(jitter);
        tracing::warn!(op, error = %err, wait_ms = wait.as_millis() as u64, "postgres store: retrying");
        tokio::time::sleep(wait).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
        Ok(())
    }
}

pub(crate) use model_runner_core::redact::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://user:secret@db:5432/runs"),
            "postgres://user:***@db:5432/runs"
        );
        assert_eq!(redact_url("postgres://db/runs"), "postgres://db/runs");
        assert!(!redact_url("postgres://u:secret@[::1/x").contains("secret"));
    }

    #[test]
    fn transient_sqlstates() {
        for code in ["40001", "40P01", "57P01", "08006", "08001"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22003"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        assert!(classify(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!classify(sqlx::Error::RowNotFound).is_retryable());
    }
}
