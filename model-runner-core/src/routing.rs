//! Queue and topic names, exactly as the production system spells them.
//!
//! Realtime and backfill runs go to `<chain>_<realtime|backfill>_<reads|nonreads>`; adhoc runs
//! go to the shared pools `backfill_1` .. `backfill_N`; records go to `<env>-<chain>-sink`.
//! Rejected messages go to `<queue>.dead`.

use serde::{Deserialize, Serialize};

use crate::chain::{Chain, ModelKind, RunMode};

/// The queue for a realtime or backfill run: `ethereum_realtime_reads`,
/// `matic_backfill_nonreads`, ... Adhoc runs are routed by [`Routing::queue_for`] to the
/// `backfill_N` pools; called with [`RunMode::Adhoc`] this function names the chain's backfill
/// queue.
pub fn queue_name(chain: &Chain, mode: RunMode, kind: ModelKind) -> String {
    let mode = match mode {
        RunMode::Realtime => "realtime",
        RunMode::Backfill | RunMode::Adhoc => "backfill",
    };
    format!("{chain}_{mode}_{}", kind.as_str())
}

/// The adhoc pool `backfill_<slot>` (slots count from 1).
pub fn adhoc_queue_name(slot: u32) -> String {
    format!("backfill_{slot}")
}

/// The sink topic for a chain: `prod-ethereum-sink`.
pub fn topic_name(env: &str, chain: &Chain) -> String {
    format!("{env}-{chain}-sink")
}

/// Where a queue's rejected messages go: `<queue>.dead`.
pub fn dead_letter_queue_name(queue: &str) -> String {
    format!("{queue}.dead")
}

/// A routing error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// An adhoc slot outside `1..=adhoc_queues`.
    #[error("invalid adhoc queue backfill_{slot}: adhoc queues are backfill_1..backfill_{count}")]
    AdhocSlot {
        /// The requested slot.
        slot: u32,
        /// How many adhoc pools exist.
        count: u32,
    },
    /// Zero adhoc pools configured.
    #[error("invalid adhoc queue count 0: at least one backfill_N pool is needed")]
    NoAdhocQueues,
}

/// Routing configuration: how many adhoc pools exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    adhoc_queues: u32,
}

impl Default for Routing {
    /// Four adhoc pools, `backfill_1` .. `backfill_4`, as in production.
    fn default() -> Self {
        Self { adhoc_queues: 4 }
    }
}

impl Routing {
    /// Routing with `adhoc_queues` pools (at least one).
    pub fn new(adhoc_queues: u32) -> Result<Self, RoutingError> {
        if adhoc_queues == 0 {
            return Err(RoutingError::NoAdhocQueues);
        }
        Ok(Self { adhoc_queues })
    }

    /// Number of adhoc pools.
    pub fn adhoc_queues(&self) -> u32 {
        self.adhoc_queues
    }

    /// The queue a run goes to. Adhoc runs use `adhoc_slot` when given (1-based, checked), or
    /// else a pool chosen by `spread` (e.g. the chunk index) so a large adhoc job uses all pools.
    pub fn queue_for(
        &self,
        chain: &Chain,
        mode: RunMode,
        kind: ModelKind,
        adhoc_slot: Option<u32>,
        spread: u64,
    ) -> Result<String, RoutingError> {
        match mode {
            RunMode::Adhoc => {
                let slot = match adhoc_slot {
                    Some(s) if s == 0 || s > self.adhoc_queues => {
                        return Err(RoutingError::AdhocSlot {
                            slot: s,
                            count: self.adhoc_queues,
                        });
                    }
                    Some(s) => s,
                    None => 1 + (spread % u64::from(self.adhoc_queues)) as u32,
                };
                Ok(adhoc_queue_name(slot))
            }
            _ => Ok(queue_name(chain, mode, kind)),
        }
    }

    /// Every queue this routing can produce for `chains`: what a broker topology declares.
    pub fn all_queues<'a>(&self, chains: impl IntoIterator<Item = &'a Chain>) -> Vec<String> {
        let mut out = Vec::new();
        for chain in chains {
            for mode in [RunMode::Realtime, RunMode::Backfill] {
                for kind in ModelKind::ALL {
                    out.push(queue_name(chain, mode, *kind));
                }
            }
        }
        out.extend((1..=self.adhoc_queues).map(adhoc_queue_name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Chain {
        Chain::new(s).unwrap()
    }

    #[test]
    fn production_queue_names() {
        use ModelKind::*;
        use RunMode::*;
        let eth = c("ethereum");
        let matic = c("matic");
        assert_eq!(queue_name(&eth, Realtime, Reads), "ethereum_realtime_reads");
        assert_eq!(
            queue_name(&eth, Realtime, Nonreads),
            "ethereum_realtime_nonreads"
        );
        assert_eq!(queue_name(&eth, Backfill, Reads), "ethereum_backfill_reads");
        assert_eq!(
            queue_name(&eth, Backfill, Nonreads),
            "ethereum_backfill_nonreads"
        );
        assert_eq!(queue_name(&matic, Realtime, Reads), "matic_realtime_reads");
        assert_eq!(
            queue_name(&matic, Backfill, Nonreads),
            "matic_backfill_nonreads"
        );
    }

    #[test]
    fn adhoc_pools() {
        let r = Routing::default();
        let eth = c("ethereum");
        let names: Vec<_> = (0..8)
            .map(|i| {
                r.queue_for(&eth, RunMode::Adhoc, ModelKind::Reads, None, i)
                    .unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [
                "backfill_1",
                "backfill_2",
                "backfill_3",
                "backfill_4",
                "backfill_1",
                "backfill_2",
                "backfill_3",
                "backfill_4"
            ]
        );
        assert_eq!(
            r.queue_for(&eth, RunMode::Adhoc, ModelKind::Reads, Some(3), 0)
                .unwrap(),
            "backfill_3"
        );
        let err = r
            .queue_for(&eth, RunMode::Adhoc, ModelKind::Reads, Some(5), 0)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid adhoc queue backfill_5: adhoc queues are backfill_1..backfill_4"
        );
        assert!(
            r.queue_for(&eth, RunMode::Adhoc, ModelKind::Reads, Some(0), 0)
                .is_err()
        );
        let six = Routing::new(6).unwrap();
        assert_eq!(
            six.queue_for(&eth, RunMode::Adhoc, ModelKind::Nonreads, Some(6), 0)
                .unwrap(),
            "backfill_6"
        );
        assert_eq!(Routing::new(0).unwrap_err(), RoutingError::NoAdhocQueues);
        assert_eq!(
            r.queue_for(&eth, RunMode::Backfill, ModelKind::Reads, Some(2), 0)
                .unwrap(),
            "ethereum_backfill_reads"
        );
    }

    #[test]
    fn topics_and_dead_letters() {
        assert_eq!(topic_name("prod", &c("ethereum")), "prod-ethereum-sink");
        assert_eq!(topic_name("prod", &c("matic")), "prod-matic-sink");
        assert_eq!(
            dead_letter_queue_name("ethereum_realtime_reads"),
            "ethereum_realtime_reads.dead"
        );
    }

    #[test]
    fn topology_lists_every_queue() {
        let all = Routing::default().all_queues([&c("ethereum"), &c("matic")]);
        assert_eq!(all.len(), 8 + 4);
        assert!(all.contains(&"matic_realtime_nonreads".to_owned()));
        assert!(all.contains(&"backfill_4".to_owned()));
    }
}
