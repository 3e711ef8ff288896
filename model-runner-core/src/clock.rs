//! [`Clock`]: the wall clock the engine decides by, as a dependency.
//!
//! Every time the engine stamps or compares (lease ends, heartbeats, retry times, leadership,
//! the outbox's "due now", the reconcile age) comes from one `Arc<dyn Clock>` in
//! [`EngineDeps`](crate::engine::EngineDeps), and the in-memory store can share it
//! ([`MemoryRunStore::with_clock`](crate::memory::MemoryRunStore::with_clock)). Production uses
//! [`SystemClock`]; tests use [`TokioClock`], which moves with tokio's clock, so a test under
//! `#[tokio::test(start_paused = true)]` (or `tokio::time::pause()`) lets an hour-long lease
//! expire with `tokio::time::advance` instead of waiting for it. The engine's own waits are
//! `tokio::time` sleeps, which pause and advance with the same clock.

use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// The wall clock. Object safe: shared as `Arc<dyn Clock>`.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time. Successive calls on one clock MUST NOT go backwards by more than the
    /// system clock itself does.
    fn now(&self) -> DateTime<Utc>;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

/// The system's wall clock ([`Utc::now`]): the default everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock, shared.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that follows tokio's clock: the wall time at creation plus the
/// [`tokio::time::Instant`] time elapsed since. While tokio's time is paused it stands still,
/// and `tokio::time::advance` (or the runtime's auto-advance to the next timer) moves it.
/// Outside a paused runtime it runs like the system clock.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the system's wall time now.
    pub fn new() -> Self {
        Self::starting_at(Utc::now())
    }

    /// A clock reading `wall` now.
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        Self {
            wall,
            start: tokio::time::Instant::now(),
        }
    }

    /// A new clock, shared.
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(Self::new())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        self.wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_stands_still_while_paused_and_moves_with_advance() {
        let clock = TokioClock::new();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now() - t0, chrono::Duration::hours(1));
        let shared: Arc<dyn Clock> = Arc::new(clock);
        assert_eq!(shared.now() - t0, chrono::Duration::hours(1));
    }
}
