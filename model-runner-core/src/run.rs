//! Model runs and their one state machine.
//!
//! ```text
//! pending ──Enqueue──▶ queued ──Start──▶ running ──Succeed──▶ succeeded
//!                        ▲ ▲                │ ├──Fail──────▶ failed  ──┐
//!                        │ └──Release───────┤ └──Expire────▶ expired ──┤
//!                        │   (same attempt) │                          │
//!                        └──────Enqueue (attempt + 1, while attempts remain)
//! pending | queued | running | failed | expired ──Cancel──▶ cancelled
//! any state but cancelled | superseded ──Supersede──▶ superseded
//! ```
//!
//! `Release` is a worker handing its run back unfinished (it is shutting down): the run goes
//! back to `queued` on the same attempt, so a hand-back never spends an attempt. `Cancel` is
//! the user's final word, so it is allowed from every state that is not `succeeded` or
//! `cancelled`, including a `failed`/`expired` run that would otherwise be retried.
//! `Supersede` is the scheduler's word after a chain reorganisation: the realtime run's blocks
//! are no longer on the node's chain, so the run (even a succeeded one) is replaced by a run
//! over the new branch; its records are those of orphaned blocks (they carry their block hash
//! and run id, so consumers can drop them).
//!
//! [`RunState::next`] is the only place a transition is decided and [`ModelRun::apply`] the only
//! place a run's fields change with it; stores call `apply` and persist the result with a
//! compare-and-set on `(id, state, attempt)`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chain::{BlockRange, Chain, ModelKind, RunMode, str_enum};

/// A run id: a UUID v7, so ids sort by creation time and key pagination is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A string that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid run id {input:?}: expected a UUID such as 0192f0c4-7a3e-7d1b-9a55-3f1e2b4c5d6e")]
pub struct RunIdError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for RunId {
    type Err = RunIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self).map_err(|_| RunIdError {
            input: s.chars().take(64).collect(),
        })
    }
}

str_enum!(
    /// Where a run is in its life. See the module docs for the diagram.
    #[cfg_attr(
        feature = "openapi",
        derive(utoipa::ToSchema),
        schema(as = RunStateView, description = "Where a run is in its life.")
    )]
    RunState, InvalidState, {
        /// Created, in the outbox, not yet on a queue.
        Pending => "pending",
        /// Published to its queue, waiting for a worker.
        Queued => "queued",
        /// Claimed by a worker holding a lease.
        Running => "running",
        /// Done; its records are in the sink.
        Succeeded => "succeeded",
        /// The model or the sink failed; retried while attempts remain.
        Failed => "failed",
        /// The worker's lease ran out; retried while attempts remain.
        Expired => "expired",
        /// Cancelled by a user; never runs again.
        Cancelled => "cancelled",
        /// A realtime run whose blocks a chain reorganisation replaced: a run over the new
        /// branch supersedes it, and its records (if any) are of orphaned blocks. Never runs
        /// again.
        Superseded => "superseded",
    }
);

impl RunState {
    /// Whether no attempt is waiting or executing: `succeeded`, `failed`, `expired`,
    /// `cancelled` or `superseded`. Not "final": `failed` and `expired` runs go back to `queued` while attempts
    /// remain; [`ModelRun::is_settled`] says whether a run is done for good.
    pub fn is_idle(&self) -> bool {
        matches!(
            self,
            RunState::Succeeded
                | RunState::Failed
                | RunState::Expired
                | RunState::Cancelled
                | RunState::Superseded
        )
    }

    /// The state `event` leads to from `self`, for a run on attempt `attempt` of `max_attempts`.
    /// This is the whole state machine.
    pub fn next(
        self,
        event: &RunEvent,
        attempt: u32,
        max_attempts: u32,
    ) -> Result<RunState, TransitionError> {
        use RunState::*;
        let to = match (self, event) {
            (Pending, RunEvent::Enqueue) => Queued,
            (Failed | Expired, RunEvent::Enqueue) if attempt < max_attempts => Queued,
            (Failed | Expired, RunEvent::Enqueue) => {
                return Err(TransitionError::AttemptsExhausted {
                    state: self,
                    attempt,
                    max_attempts,
                });
            }
            (Queued, RunEvent::Start { .. }) => Running,
            (Running, RunEvent::Heartbeat { .. }) => Running,
            (Running, RunEvent::Succeed { .. }) => Succeeded,
            (Running, RunEvent::Fail { .. }) => Failed,
            (Running, RunEvent::Expire { .. }) => Expired,
            (Running, RunEvent::Release { .. }) => Queued,
            (Pending | Queued | Running | Failed | Expired, RunEvent::Cancel { .. }) => Cancelled,
            (Failed | Expired, RunEvent::ScheduleRetry { .. }) => self,
            (Queued, RunEvent::Republish { .. }) => Queued,
            (
                Pending | Queued | Running | Succeeded | Failed | Expired,
                RunEvent::Supersede { .. },
            ) => Superseded,
            _ => {
                return Err(TransitionError::Illegal {
                    from: self,
                    event: event.name(),
                });
            }
        };
        Ok(to)
    }
}

/// Something that happens to a run. Timestamps are the caller's clock, so stores and tests agree
/// on lease expiry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run's message was confirmed by the queue. From `failed`/`expired` this starts the
    /// next attempt.
    Enqueue,
    /// A worker claims the run until `lease_until`.
    Start {
        /// Who holds the lease (worker id).
        owner: String,
        /// When the lease ends unless renewed.
        lease_until: DateTime<Utc>,
    },
    /// The lease holder renews its lease and reports progress.
    Heartbeat {
        /// Who holds the lease; must match.
        owner: String,
        /// The new end of the lease.
        lease_until: DateTime<Utc>,
        /// Blocks processed so far.
        blocks_done: u64,
    },
    /// The lease holder reports the run's records durably in the sink.
    Succeed {
        /// Who holds the lease; must match.
        owner: String,
        /// Blocks processed.
        blocks_done: u64,
        /// Records sent to the sink.
        records_written: u64,
        /// What the model counted on the way (see [`ModelRun::notes`]).
        #[serde(default)]
        notes: RunNotes,
    },
    /// The lease holder reports the attempt failed. `retry_at` is when the next attempt may
    /// start; it is dropped when no attempts remain.
    Fail {
        /// Who holds the lease; must match.
        owner: String,
        /// What went wrong, shown to users.
        error: String,
        /// Earliest start of the next attempt.
        retry_at: Option<DateTime<Utc>>,
    },
    /// The lease ran out without a heartbeat. Refused while the lease still ends after `at`,
    /// so a heartbeat that renewed the lease after the caller listed the run wins: the check
    /// runs inside the store's compare-and-set, not against the caller's stale copy.
    Expire {
        /// When the caller found the lease ended.
        at: DateTime<Utc>,
        /// Earliest start of the next attempt.
        retry_at: Option<DateTime<Utc>>,
    },
    /// The lease holder hands the run back unfinished (e.g. it is shutting down): the run goes
    /// back to `queued` on the same attempt, without spending one, for another worker to claim.
    Release {
        /// Who holds the lease; must match.
        owner: String,
        /// Why, recorded in `last_error`.
        reason: String,
    },
    /// A user cancels the run. Allowed until the run succeeded or was cancelled, including a
    /// `failed`/`expired` run awaiting (or out of) retries.
    Cancel {
        /// Why, if given.
        reason: Option<String>,
    },
    /// The reconciler published the message of a run that stayed `queued` too long (its
    /// message may be lost) again; the run stays `queued` on the same attempt and its queue
    /// time restarts, so it is republished at most once per reconcile age.
    Republish {
        /// `queued_at` as the reconciler saw it: refused if the run was queued anew since.
        queued_at: DateTime<Utc>,
    },
    /// A user asks a `failed`/`expired` run to be retried at `at`, granting one more attempt if
    /// none remain.
    ScheduleRetry {
        /// When the retry may start.
        at: DateTime<Utc>,
    },
    /// The scheduler found the realtime run's blocks replaced by a chain reorganisation: a run
    /// over the new branch takes its place. Allowed from every state but `cancelled` and
    /// `superseded`; a worker still running it finds its completion refused.
    Supersede {
        /// What replaced it, recorded in `last_error` (e.g. the block whose hash changed).
        reason: String,
    },
}

impl RunEvent {
    /// The event's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            RunEvent::Enqueue => "enqueue",
            RunEvent::Start { .. } => "start",
            RunEvent::Heartbeat { .. } => "heartbeat",
            RunEvent::Succeed { .. } => "succeed",
            RunEvent::Fail { .. } => "fail",
            RunEvent::Expire { .. } => "expire",
            RunEvent::Release { .. } => "release",
            RunEvent::Cancel { .. } => "cancel",
            RunEvent::ScheduleRetry { .. } => "retry",
            RunEvent::Republish { .. } => "republish",
            RunEvent::Supersede { .. } => "supersede",
        }
    }
}

/// A refused transition. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The state machine has no such edge.
    #[error("cannot {event} a run that is {from}")]
    Illegal {
        /// Current state.
        from: RunState,
        /// The refused event.
        event: &'static str,
    },
    /// A retry was asked of a run with no attempts left.
    #[error(
        "cannot requeue a run that is {state}: all {max_attempts} attempts are spent (attempt {attempt})"
    )]
    AttemptsExhausted {
        /// Current state.
        state: RunState,
        /// Current attempt.
        attempt: u32,
        /// Attempts allowed.
        max_attempts: u32,
    },
    /// A heartbeat, completion or hand-back from a worker that does not hold the lease.
    #[error("run is leased by {holder:?}, not {owner:?}")]
    NotLeaseHolder {
        /// The current holder.
        holder: Option<String>,
        /// Who asked.
        owner: String,
    },
    /// An expiry of a lease that was renewed after the caller saw it end.
    #[error("the lease of {holder:?} runs until {until}, after {at}: it was renewed")]
    LeaseActive {
        /// The current holder.
        holder: Option<String>,
        /// When the lease ends now.
        until: DateTime<Utc>,
        /// When the caller found it ended.
        at: DateTime<Utc>,
    },
}

/// A request to create one run; the store assigns id, state and timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRun {
    /// Model name.
    pub model: String,
    /// Model version at scheduling time.
    pub model_version: String,
    /// Chain.
    pub chain: Chain,
    /// Blocks to process.
    pub range: BlockRange,
    /// How it was scheduled.
    pub mode: RunMode,
    /// Reads or nonreads.
    pub kind: ModelKind,
    /// Queue it is published to (see [`crate::routing`]).
    pub queue: String,
    /// Attempts allowed, at least 1.
    pub max_attempts: u32,
}

/// One execution unit: a model over a block range on a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRun {
    /// UUID v7.
    pub id: RunId,
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: String,
    /// Chain.
    pub chain: Chain,
    /// Blocks to process.
    pub range: BlockRange,
    /// How it was scheduled.
    pub mode: RunMode,
    /// Reads or nonreads.
    pub kind: ModelKind,
    /// The queue it is published to.
    pub queue: String,
    /// Current state.
    pub state: RunState,
    /// Current attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When the current attempt was confirmed by the queue.
    pub queued_at: Option<DateTime<Utc>>,
    /// When the current attempt was claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker holding the lease while `running`.
    pub lease_owner: Option<String>,
    /// When the lease ends unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// For `failed`/`expired` runs with attempts left: when the next attempt may be queued.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Blocks processed by the current attempt.
    pub blocks_done: u64,
    /// Records the succeeded attempt wrote.
    pub records_written: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// The idempotency key of the batch that created it, with its origin's prefix: `api:` and
    /// the API's `Idempotency-Key` header, or `cli:` and the configured backfill.
    pub idempotency_key: Option<String>,
    /// How many times the reconciler published the run's message again because the run
    /// stayed `queued` longer than the reconcile age (its message was presumably lost).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub republished: u32,
    /// What the model counted during the attempt that succeeded, by name: input it skipped
    /// rather than fail on, such as `abi_mismatched_logs` (logs of a contract with a
    /// registered ABI that the ABI does not decode). Empty until a run succeeds.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(required = true, value_type = std::collections::BTreeMap<String, u64>)
    )]
    pub notes: RunNotes,
}

/// Counts a model reports about a run, by name ([`ModelRun::notes`]).
pub type RunNotes = std::collections::BTreeMap<String, u64>;

impl ModelRun {
    /// Whether nothing more happens to the run on its own: succeeded, cancelled, or failed or
    /// expired with no attempt left.
    pub fn is_settled(&self) -> bool {
        match self.state {
            RunState::Succeeded | RunState::Cancelled | RunState::Superseded => true,
            RunState::Failed | RunState::Expired => self.attempt >= self.max_attempts,
            RunState::Pending | RunState::Queued | RunState::Running => false,
        }
    }

    /// A new `pending` run on attempt 1.
    pub fn new(spec: NewRun, idempotency_key: Option<String>, now: DateTime<Utc>) -> Self {
        Self {
            id: RunId::new(),
            model: spec.model,
            model_version: spec.model_version,
            chain: spec.chain,
            range: spec.range,
            mode: spec.mode,
            kind: spec.kind,
            queue: spec.queue,
            state: RunState::Pending,
            attempt: 1,
            max_attempts: spec.max_attempts.max(1),
            created_at: now,
            updated_at: now,
            queued_at: None,
            started_at: None,
            finished_at: None,
            lease_owner: None,
            lease_expires_at: None,
            next_attempt_at: None,
            blocks_done: 0,
            records_written: 0,
            last_error: None,
            idempotency_key,
            republished: 0,
            notes: RunNotes::new(),
        }
    }

    /// The attempt number the run's next queue message carries: the current one while
    /// `pending`, the next one for a `failed`/`expired` run being retried.
    pub fn publish_attempt(&self) -> u32 {
        match self.state {
            RunState::Failed | RunState::Expired => self.attempt + 1,
            _ => self.attempt,
        }
    }

    /// Whether the outbox should publish this run at `now`.
    pub fn is_due_for_publish(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            RunState::Pending => true,
            RunState::Failed | RunState::Expired => {
                self.attempt < self.max_attempts && self.next_attempt_at.is_some_and(|at| at <= now)
            }
            _ => false,
        }
    }

    /// Applies `event` at `now`: decides the new state with [`RunState::next`] and updates the
    /// fields that go with it. On error the run is unchanged.
    pub fn apply(&mut self, event: &RunEvent, now: DateTime<Utc>) -> Result<(), TransitionError> {
        let to = self.state.next(event, self.attempt, self.max_attempts)?;
        match event {
            RunEvent::Enqueue => {
                if self.state != RunState::Pending {
                    self.attempt += 1;
                }
                self.queued_at = Some(now);
                self.started_at = None;
                self.finished_at = None;
                self.next_attempt_at = None;
                self.blocks_done = 0;
            }
            RunEvent::Start { owner, lease_until } => {
                self.lease_owner = Some(owner.clone());
                self.lease_expires_at = Some(*lease_until);
                self.started_at = Some(now);
            }
            RunEvent::Heartbeat {
                owner,
                lease_until,
                blocks_done,
            } => {
                self.check_holder(owner)?;
                self.lease_expires_at = Some(*lease_until);
                self.blocks_done = *blocks_done;
            }
            RunEvent::Succeed {
                owner,
                blocks_done,
                records_written,
                notes,
            } => {
                self.check_holder(owner)?;
                self.blocks_done = *blocks_done;
                self.records_written = *records_written;
                self.notes = notes.clone();
                self.last_error = None;
                self.release(now);
            }
            RunEvent::Fail {
                owner,
                error,
                retry_at,
            } => {
                self.check_holder(owner)?;
                self.last_error = Some(error.clone());
                self.next_attempt_at = retry_at.filter(|_| self.attempt < self.max_attempts);
                self.release(now);
            }
            RunEvent::Expire { at, retry_at } => {
                if let Some(until) = self.lease_expires_at
                    && until > *at
                {
                    return Err(TransitionError::LeaseActive {
                        holder: self.lease_owner.clone(),
                        until,
                        at: *at,
                    });
                }
                self.last_error = Some(format!(
                    "lease of {} expired (attempt {})",
                    self.lease_owner.as_deref().unwrap_or("unknown worker"),
                    self.attempt
                ));
                self.next_attempt_at = retry_at.filter(|_| self.attempt < self.max_attempts);
                self.release(now);
            }
            RunEvent::Release { owner, reason } => {
                self.check_holder(owner)?;
                self.lease_owner = None;
                self.lease_expires_at = None;
                self.started_at = None;
                self.blocks_done = 0;
                self.last_error = Some(format!("handed back: {reason}"));
            }
            RunEvent::Cancel { reason } => {
                if let Some(r) = reason {
                    self.last_error = Some(format!("cancelled: {r}"));
                }
                self.next_attempt_at = None;
                self.release(now);
            }
            RunEvent::Republish { queued_at } => {
                if self.queued_at != Some(*queued_at) {
                    return Err(TransitionError::Illegal {
                        from: self.state,
                        event: "republish (queued again since it was seen)",
                    });
                }
                self.queued_at = Some(now);
                self.republished = self.republished.saturating_add(1);
            }
            RunEvent::ScheduleRetry { at } => {
                self.max_attempts = self.max_attempts.max(self.attempt + 1);
                self.next_attempt_at = Some(*at);
            }
            RunEvent::Supersede { reason } => {
                self.last_error = Some(format!("superseded: {reason}"));
                self.next_attempt_at = None;
                // A succeeded run keeps the time it finished; any other is ended now.
                if self.state != RunState::Succeeded {
                    self.release(now);
                }
            }
        }
        self.state = to;
        self.updated_at = now;
        Ok(())
    }

    /// Refuses an event of a worker that does not hold the lease.
    fn check_holder(&self, owner: &str) -> Result<(), TransitionError> {
        if self.lease_owner.as_deref() == Some(owner) {
            Ok(())
        } else {
            Err(TransitionError::NotLeaseHolder {
                holder: self.lease_owner.clone(),
                owner: owner.to_owned(),
            })
        }
    }

    fn release(&mut self, now: DateTime<Utc>) {
        self.lease_owner = None;
        self.lease_expires_at = None;
        self.finished_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState::*;

    fn all_events() -> Vec<RunEvent> {
        let t = Utc::now();
        vec![
            RunEvent::Enqueue,
            RunEvent::Start {
                owner: "w".into(),
                lease_until: t,
            },
            RunEvent::Heartbeat {
                owner: "w".into(),
                lease_until: t,
                blocks_done: 1,
            },
            RunEvent::Succeed {
                owner: "w".into(),
                blocks_done: 1,
                records_written: 1,
                notes: Default::default(),
            },
            RunEvent::Fail {
                owner: "w".into(),
                error: "boom".into(),
                retry_at: Some(t),
            },
            RunEvent::Expire {
                at: t,
                retry_at: Some(t),
            },
            RunEvent::Release {
                owner: "w".into(),
                reason: "shutdown".into(),
            },
            RunEvent::Cancel { reason: None },
            RunEvent::ScheduleRetry { at: t },
            RunEvent::Republish { queued_at: t },
            RunEvent::Supersede {
                reason: "reorg".into(),
            },
        ]
    }

    /// Every (state, event) pair, with attempts remaining: exactly these edges are allowed.
    #[test]
    fn every_edge_with_attempts_left() {
        let allowed: &[(RunState, &str, RunState)] = &[
            (Pending, "enqueue", Queued),
            (Failed, "enqueue", Queued),
            (Expired, "enqueue", Queued),
            (Queued, "start", Running),
            (Running, "heartbeat", Running),
            (Running, "succeed", Succeeded),
            (Running, "fail", Failed),
            (Running, "expire", Expired),
            (Running, "release", Queued),
            (Pending, "cancel", Cancelled),
            (Queued, "cancel", Cancelled),
            (Running, "cancel", Cancelled),
            (Failed, "cancel", Cancelled),
            (Expired, "cancel", Cancelled),
            (Failed, "retry", Failed),
            (Expired, "retry", Expired),
            (Queued, "republish", Queued),
            (Pending, "supersede", Superseded),
            (Queued, "supersede", Superseded),
            (Running, "supersede", Superseded),
            (Succeeded, "supersede", Superseded),
            (Failed, "supersede", Superseded),
            (Expired, "supersede", Superseded),
        ];
        let mut seen = 0;
        for from in RunState::ALL {
            for ev in all_events() {
                let got = from.next(&ev, 1, 3);
                match allowed
                    .iter()
                    .find(|(f, e, _)| f == from && *e == ev.name())
                {
                    Some((_, _, to)) => {
                        assert_eq!(got, Ok(*to), "{from} --{}-->", ev.name());
                        seen += 1;
                    }
                    None => assert_eq!(
                        got,
                        Err(TransitionError::Illegal {
                            from: *from,
                            event: ev.name()
                        }),
                        "{from} --{}--> must be refused",
                        ev.name()
                    ),
                }
            }
        }
        assert_eq!(seen, allowed.len());
    }

    #[test]
    fn requeue_needs_attempts_left() {
        for from in [Failed, Expired] {
            let err = from.next(&RunEvent::Enqueue, 3, 3).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "cannot requeue a run that is {from}: all 3 attempts are spent (attempt 3)"
                )
            );
        }
        // A pending run is on its first attempt whatever max_attempts says.
        assert_eq!(Pending.next(&RunEvent::Enqueue, 1, 1), Ok(Queued));
    }

    #[test]
    fn finished_states_refuse_everything_but_a_supersede() {
        for from in [Succeeded, Cancelled, Superseded] {
            for ev in all_events() {
                let superseding_a_success =
                    from == Succeeded && matches!(ev, RunEvent::Supersede { .. });
                assert_eq!(
                    from.next(&ev, 1, 5).is_err(),
                    !superseding_a_success,
                    "{from} {}",
                    ev.name()
                );
            }
        }
        let msg = Succeeded
            .next(&RunEvent::Cancel { reason: None }, 1, 1)
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "cannot cancel a run that is succeeded");
    }

    fn run() -> ModelRun {
        ModelRun::new(
            NewRun {
                model: "m".into(),
                model_version: "1".into(),
                chain: Chain::new("ethereum").unwrap(),
                range: BlockRange::new(0, 9).unwrap(),
                mode: RunMode::Backfill,
                kind: ModelKind::Nonreads,
                queue: "ethereum_backfill_nonreads".into(),
                max_attempts: 2,
            },
            None,
            Utc::now(),
        )
    }

    #[test]
    fn apply_walks_a_retry_cycle() {
        let now = Utc::now();
        let mut r = run();
        assert_eq!(r.publish_attempt(), 1);
        r.apply(&RunEvent::Enqueue, now).unwrap();
        r.apply(
            &RunEvent::Start {
                owner: "w1".into(),
                lease_until: now,
            },
            now,
        )
        .unwrap();
        let hb = RunEvent::Heartbeat {
            owner: "w2".into(),
            lease_until: now,
            blocks_done: 3,
        };
        assert!(matches!(
            r.apply(&hb, now),
            Err(TransitionError::NotLeaseHolder { .. })
        ));
        assert_eq!(r.blocks_done, 0, "a refused event changes nothing");
        r.apply(
            &RunEvent::Fail {
                owner: "w1".into(),
                error: "boom".into(),
                retry_at: Some(now),
            },
            now,
        )
        .unwrap();
        assert_eq!(r.state, Failed);
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        assert!(r.lease_owner.is_none());
        assert!(r.is_due_for_publish(now));
        assert_eq!(r.publish_attempt(), 2);
        r.apply(&RunEvent::Enqueue, now).unwrap();
        assert_eq!((r.state, r.attempt), (Queued, 2));
        r.apply(
            &RunEvent::Start {
                owner: "w2".into(),
                lease_until: now,
            },
            now,
        )
        .unwrap();
        r.apply(
            &RunEvent::Fail {
                owner: "w2".into(),
                error: "again".into(),
                retry_at: Some(now),
            },
            now,
        )
        .unwrap();
        assert_eq!(r.next_attempt_at, None, "no attempts left: no retry time");
        assert!(!r.is_due_for_publish(now));
        assert!(r.apply(&RunEvent::Enqueue, now).is_err());
        r.apply(&RunEvent::ScheduleRetry { at: now }, now).unwrap();
        assert_eq!(r.max_attempts, 3);
        assert!(r.is_due_for_publish(now));
        r.apply(&RunEvent::Enqueue, now).unwrap();
        assert_eq!((r.state, r.attempt), (Queued, 3));
    }

    /// Completion, failure and hand-back come from the lease holder only, and an expiry loses
    /// to a heartbeat that renewed the lease after the expirer saw it end.
    #[test]
    fn lease_rules_hold_for_every_worker_event() {
        let now = Utc::now();
        let running = || {
            let mut r = run();
            r.apply(&RunEvent::Enqueue, now).unwrap();
            r.apply(
                &RunEvent::Start {
                    owner: "w1".into(),
                    lease_until: now + chrono::Duration::seconds(60),
                },
                now,
            )
            .unwrap();
            r
        };
        let foreign = [
            RunEvent::Succeed {
                owner: "w2".into(),
                blocks_done: 10,
                records_written: 1,
                notes: Default::default(),
            },
            RunEvent::Fail {
                owner: "w2".into(),
                error: "boom".into(),
                retry_at: None,
            },
            RunEvent::Release {
                owner: "w2".into(),
                reason: "shutdown".into(),
            },
        ];
        for ev in &foreign {
            let mut r = running();
            assert_eq!(
                r.apply(ev, now),
                Err(TransitionError::NotLeaseHolder {
                    holder: Some("w1".into()),
                    owner: "w2".into()
                }),
                "{}",
                ev.name()
            );
            let before = r.clone();
            let _ = r.apply(ev, now);
            assert_eq!(r, before, "a refused event changes nothing");
        }
        // The lease runs 60 s from `now`: an expiry seen at `now` is refused, one seen after
        // the lease's end is applied.
        let mut r = running();
        let early = RunEvent::Expire {
            at: now,
            retry_at: None,
        };
        assert!(matches!(
            r.apply(&early, now),
            Err(TransitionError::LeaseActive { .. })
        ));
        assert_eq!(r.state, Running);
        let late = RunEvent::Expire {
            at: now + chrono::Duration::seconds(61),
            retry_at: None,
        };
        r.apply(&late, now).unwrap();
        assert_eq!(r.state, Expired);
    }

    #[test]
    fn release_hands_back_on_the_same_attempt() {
        let now = Utc::now();
        let mut r = run();
        r.max_attempts = 1;
        r.apply(&RunEvent::Enqueue, now).unwrap();
        let start = RunEvent::Start {
            owner: "w1".into(),
            lease_until: now,
        };
        r.apply(&start, now).unwrap();
        r.apply(
            &RunEvent::Heartbeat {
                owner: "w1".into(),
                lease_until: now,
                blocks_done: 4,
            },
            now,
        )
        .unwrap();
        // Only the lease holder may hand the run back.
        let foreign = RunEvent::Release {
            owner: "w2".into(),
            reason: "shutdown".into(),
        };
        assert_eq!(
            r.apply(&foreign, now),
            Err(TransitionError::NotLeaseHolder {
                holder: Some("w1".into()),
                owner: "w2".into()
            })
        );
        assert_eq!(r.state, Running, "a refused event changes nothing");
        r.apply(
            &RunEvent::Release {
                owner: "w1".into(),
                reason: "worker w1 shut down".into(),
            },
            now,
        )
        .unwrap();
        assert_eq!((r.state, r.attempt, r.max_attempts), (Queued, 1, 1));
        assert_eq!(r.lease_owner, None);
        assert_eq!(r.lease_expires_at, None);
        assert_eq!(r.started_at, None);
        assert_eq!(r.finished_at, None);
        assert_eq!(r.blocks_done, 0);
        assert_eq!(
            r.last_error.as_deref(),
            Some("handed back: worker w1 shut down")
        );
        assert!(
            !r.is_due_for_publish(now),
            "its message is requeued, not republished"
        );
        // Another worker claims it on the same attempt; the last attempt is still whole.
        r.apply(
            &RunEvent::Start {
                owner: "w2".into(),
                lease_until: now,
            },
            now,
        )
        .unwrap();
        r.apply(
            &RunEvent::Succeed {
                owner: "w2".into(),
                blocks_done: 10,
                records_written: 3,
                notes: Default::default(),
            },
            now,
        )
        .unwrap();
        assert_eq!((r.state, r.attempt), (Succeeded, 1));
        assert_eq!(r.last_error, None);
        // Release is refused outside `running`, whatever the attempts.
        for from in [Pending, Queued, Succeeded, Failed, Expired, Cancelled] {
            assert_eq!(
                from.next(&foreign, 1, 1),
                Err(TransitionError::Illegal {
                    from,
                    event: "release"
                })
            );
        }
    }

    #[test]
    fn cancel_stops_a_failed_or_expired_run_for_good() {
        let now = Utc::now();
        // With attempts left (it would be retried) and with none left.
        for (max_attempts, end) in [(2, "fail"), (2, "expire"), (1, "fail"), (1, "expire")] {
            let mut r = run();
            r.max_attempts = max_attempts;
            r.apply(&RunEvent::Enqueue, now).unwrap();
            r.apply(
                &RunEvent::Start {
                    owner: "w".into(),
                    lease_until: now,
                },
                now,
            )
            .unwrap();
            let ev = if end == "fail" {
                RunEvent::Fail {
                    owner: "w".into(),
                    error: "boom".into(),
                    retry_at: Some(now),
                }
            } else {
                RunEvent::Expire {
                    at: now,
                    retry_at: Some(now),
                }
            };
            r.apply(&ev, now).unwrap();
            assert_eq!(r.is_due_for_publish(now), max_attempts == 2);
            assert_eq!(
                r.state
                    .next(&RunEvent::Cancel { reason: None }, 1, max_attempts),
                Ok(Cancelled)
            );
            r.apply(
                &RunEvent::Cancel {
                    reason: Some("not needed".into()),
                },
                now,
            )
            .unwrap();
            assert_eq!(r.state, Cancelled, "{end} {max_attempts}");
            assert_eq!(r.next_attempt_at, None);
            assert!(
                !r.is_due_for_publish(now),
                "a cancelled run is never published"
            );
            assert!(r.apply(&RunEvent::Enqueue, now).is_err());
            assert!(r.apply(&RunEvent::ScheduleRetry { at: now }, now).is_err());
        }
    }

    #[test]
    fn run_ids_parse_and_order() {
        let a = RunId::new();
        let b = RunId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<RunId>().unwrap(), a);
        let err = "not-a-uuid".parse::<RunId>().unwrap_err();
        assert!(err.to_string().contains("\"not-a-uuid\""));
        assert!(
            "done"
                .parse::<RunState>()
                .unwrap_err()
                .to_string()
                .starts_with("invalid run state \"done\"")
        );
    }
}
