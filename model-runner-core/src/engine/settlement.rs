//! What becomes of a delivery: the worker's ack / requeue / reject decision as pure functions of
//! what happened to its run, so every case is decided in one place and tested in one table,
//! like the run state machine in [`crate::run`].
//!
//! - **Ack**: the message has nothing left to do (the run succeeded, will be retried through the
//!   outbox with a new message, or moved on without it).
//! - **Requeue**: the run is `queued` on this message's attempt and needs this message (a claim
//!   undone by a store crash, a run handed back at shutdown, a run not yet marked after waiting).
//! - **Reject**: to the dead-letter queue (the last attempt failed, or no such run).

use crate::ports::{StoreError, StoreResult};
use crate::run::{ModelRun, RunState};

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Acknowledge: the message is done with.
    Ack,
    /// Back to its queue for another delivery.
    Requeue,
    /// To the dead-letter queue.
    Reject,
}

/// What claiming a delivered run found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimFound {
    /// The claim succeeded.
    Claimed,
    /// The run was published but is not yet marked `queued` (the enqueuer's mark is behind its
    /// publish). `gave_up`: waited longer than the worker's `unmarked_wait`; `shutting_down`:
    /// the worker is handing its runs back.
    NotYetMarked {
        /// Waited too long.
        gave_up: bool,
        /// The worker is stopping.
        shutting_down: bool,
    },
    /// The run moved on (another attempt, succeeded, cancelled): this message is stale.
    NoLongerClaimable,
    /// The store has no such run.
    UnknownRun,
    /// The store failed (unavailable, timed out).
    StoreFailed,
}

/// What to do after a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimStep {
    /// Execute the run.
    Execute,
    /// Hold the delivery, wait a little and claim again.
    WaitAndRetry,
    /// Settle the delivery without executing.
    Settle(Settle),
}

/// The step after a claim; see the module docs.
pub fn after_claim(found: ClaimFound) -> ClaimStep {
    match found {
        ClaimFound::Claimed => ClaimStep::Execute,
        // Holding the delivery rather than requeueing it: on quorum queues every requeue counts
        // toward the delivery limit, so a healthy run would be dead-lettered.
        ClaimFound::NotYetMarked {
            gave_up: false,
            shutting_down: false,
        } => ClaimStep::WaitAndRetry,
        ClaimFound::NotYetMarked { .. } => ClaimStep::Settle(Settle::Requeue),
        ClaimFound::NoLongerClaimable => ClaimStep::Settle(Settle::Ack),
        ClaimFound::UnknownRun => ClaimStep::Settle(Settle::Reject),
        // The run is still `queued` and needs this message; the worker pauses before it.
        ClaimFound::StoreFailed => ClaimStep::Settle(Settle::Requeue),
    }
}

/// How an executed (or abandoned) attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Records delivered.
    Succeeded,
    /// The model, source or sink failed. `last_attempt`: no attempt is left.
    Failed {
        /// No attempt left after this one.
        last_attempt: bool,
    },
    /// The lease was lost while executing (the run expired or was cancelled): nothing is written.
    LeaseLost,
    /// A heartbeat found the run `queued` again on this attempt: the claim was undone.
    ClaimLost,
    /// The worker is shutting down and gives the run back (`queued`, same attempt).
    HandedBack,
}

/// What writing the attempt's outcome to the store gave (ignored for [`Ended::LeaseLost`] and
/// [`Ended::ClaimLost`], which write nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written.
    Yes,
    /// Refused because the run is `queued` again on this attempt: the claim was undone.
    ClaimLost,
    /// Refused because the run moved on (conflict, refused event, gone).
    MovedOn,
    /// The store failed; the lease will expire and the scheduler retries the run.
    StoreFailed,
}

/// Whether `e` shows that the claim on `run` was undone: the run is `queued` again on the same
/// attempt. Nothing else moves a run back to `queued` without a new attempt, so its message
/// must go back to the queue (or the run would wait in `queued` with no message to run it).
pub fn claim_lost(e: &StoreError, run: &ModelRun) -> bool {
    matches!(e, StoreError::Conflict { current: Some(c), .. }
        if c.state == RunState::Queued && c.attempt == run.attempt)
}

impl Recorded {
    /// Classifies the result of writing `run`'s outcome.
    pub fn of(result: &StoreResult<ModelRun>, run: &ModelRun) -> Self {
        match result {
            Ok(_) => Recorded::Yes,
            Err(e) if claim_lost(e, run) => Recorded::ClaimLost,
            Err(
                StoreError::Conflict { .. }
                | StoreError::Transition(_)
                | StoreError::NotFound { .. },
            ) => Recorded::MovedOn,
            Err(_) => Recorded::StoreFailed,
        }
    }
}

/// The settlement of a delivery whose attempt ended as `ended`, its outcome `recorded`.
pub fn after_outcome(ended: Ended, recorded: Recorded) -> Settle {
    match (ended, recorded) {
        // Nothing was written: the run expired or was cancelled meanwhile.
        (Ended::LeaseLost, _) => Settle::Ack,
        // The run is `queued` on this attempt with no other message: this one must go back.
        (Ended::ClaimLost, _) | (_, Recorded::ClaimLost) => Settle::Requeue,
        // Succeeded, or the store missed it and the run will run again from its expiry.
        (Ended::Succeeded, _) => Settle::Ack,
        // Retries go through the outbox with a new message; the last failure dead-letters.
        (Ended::Failed { last_attempt }, _) => {
            if last_attempt {
                Settle::Reject
            } else {
                Settle::Ack
            }
        }
        (Ended::HandedBack, Recorded::Yes) => Settle::Requeue,
        // Cancelled, expired or taken meanwhile; or the store failed and the lease will expire
        // (a requeued copy would only be dropped by the next claimer).
        (Ended::HandedBack, Recorded::MovedOn | Recorded::StoreFailed) => Settle::Ack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_claim_case() {
        use ClaimFound::*;
        use ClaimStep::*;
        let cases = [
            (Claimed, Execute),
            (
                NotYetMarked {
                    gave_up: false,
                    shutting_down: false,
                },
                WaitAndRetry,
            ),
            (
                NotYetMarked {
                    gave_up: true,
                    shutting_down: false,
                },
                Settle(super::Settle::Requeue),
            ),
            (
                NotYetMarked {
                    gave_up: false,
                    shutting_down: true,
                },
                Settle(super::Settle::Requeue),
            ),
            (
                NotYetMarked {
                    gave_up: true,
                    shutting_down: true,
                },
                Settle(super::Settle::Requeue),
            ),
            (NoLongerClaimable, Settle(super::Settle::Ack)),
            (UnknownRun, Settle(super::Settle::Reject)),
            (StoreFailed, Settle(super::Settle::Requeue)),
        ];
        for (found, want) in cases {
            assert_eq!(after_claim(found), want, "{found:?}");
        }
    }

    #[test]
    fn every_outcome_case() {
        use Recorded::*;
        use Settle::*;
        let all_recorded = [Yes, ClaimLost, MovedOn, StoreFailed];
        // (ended, [settlement for Yes, ClaimLost, MovedOn, StoreFailed])
        let table = [
            (Ended::Succeeded, [Ack, Requeue, Ack, Ack]),
            (
                Ended::Failed {
                    last_attempt: false,
                },
                [Ack, Requeue, Ack, Ack],
            ),
            (
                Ended::Failed { last_attempt: true },
                [Reject, Requeue, Reject, Reject],
            ),
            (Ended::LeaseLost, [Ack, Ack, Ack, Ack]),
            (Ended::ClaimLost, [Requeue, Requeue, Requeue, Requeue]),
            (Ended::HandedBack, [Requeue, Requeue, Ack, Ack]),
        ];
        for (ended, wants) in table {
            for (recorded, want) in all_recorded.into_iter().zip(wants) {
                assert_eq!(
                    after_outcome(ended, recorded),
                    want,
                    "{ended:?} recorded {recorded:?}"
                );
            }
        }
    }
}
