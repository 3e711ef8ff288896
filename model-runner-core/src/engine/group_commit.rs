//! Group commit of a worker's run transitions.
//!
//! Every run a worker executes costs two writes to the store: its claim (`queued -> running`)
//! and its outcome (`succeeded`, `failed`, handed back). Written one at a time, a worker of
//! many slots pays a round trip and a commit per write. [`GroupCommit`] gathers the writes
//! its callers make at the same moment into one [`RunStore::transitions`] call: a group is
//! whatever was submitted while the groups before it were being written (at most `max` of
//! them), and a few groups are written at once. A lone write goes at once, so nothing waits
//! for a timer when traffic is light, and under load the groups grow by themselves.
//!
//! The guarantees stay per run: each write is still a compare-and-set of its own, a conflict
//! or refusal reaches only the caller it concerns, and a caller whose write did not return
//! `Ok` treats it exactly as a failed [`RunStore::transition`].

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// Groups written at once: a durable commit waits for the disk, so while one group waits, the
/// next ones go out (the database flushes concurrent commits together).
const GROUPS_IN_FLIGHT: usize = 4;

use crate::ports::{RunStore, StoreError, StoreResult, Transition};
use crate::run::ModelRun;

/// Writes submitted transitions in groups. Cheap to share; the writing task ends once every
/// handle is dropped.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    store: Arc<dyn RunStore>,
    max: usize,
    /// Started on first use, on the runtime of its first caller.
    sender: OnceLock<mpsc::UnboundedSender<Request>>,
}

#[derive(Debug)]
struct Request {
    transition: Transition,
    reply: oneshot::Sender<StoreResult<ModelRun>>,
}

impl GroupCommit {
    /// Groups of at most `max` transitions to `store`.
    pub(crate) fn new(store: Arc<dyn RunStore>, max: usize) -> Self {
        Self {
            store,
            max: max.max(1),
            sender: OnceLock::new(),
        }
    }

    /// Applies `transition` as [`RunStore::transition`] would, in a group with whatever
    /// other transitions are submitted meanwhile.
    pub(crate) async fn submit(&self, transition: Transition) -> StoreResult<ModelRun> {
        let (reply, answer) = oneshot::channel();
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_groups(self.store.clone(), self.max, rx));
            tx
        });
        if sender.send(Request { transition, reply }).is_err() {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable {
        adapter: "engine",
        message: "the worker's group commit stopped".into(),
    }
}

/// The writing task: up to [`GROUPS_IN_FLIGHT`] groups written at once, each group what
/// queued up while the others were being written.
async fn write_groups(
    store: Arc<dyn RunStore>,
    max: usize,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    loop {
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut group = Vec::with_capacity(max);
        if requests.recv_many(&mut group, max).await == 0 {
            return;
        }
        let store = store.clone();
        tokio::spawn(async move {
            write_group(&*store, group).await;
            drop(slot);
        });
    }
}

async fn write_group(store: &dyn RunStore, group: Vec<Request>) {
    let batch: Vec<Transition> = group.iter().map(|r| r.transition.clone()).collect();
    match store.transitions(&batch).await {
        Ok(results) => {
            for (request, result) in group.into_iter().zip(results) {
                // The caller may have given up (its run was abandoned); nothing to tell.
                let _ = request.reply.send(result);
            }
        }
        Err(e) => {
            for request in group {
                let _ = request.reply.send(Err(copy(&e)));
            }
        }
    }
}

/// A copy of a whole-batch failure for each of its callers (the error is not `Clone`: a
/// backend's source is given as its message).
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable { adapter, message } => StoreError::Unavailable {
            adapter,
            message: message.clone(),
        },
        StoreError::Backend { adapter, source } => StoreError::Backend {
            adapter,
            source: source.to_string().into(),
        },
        StoreError::NotFound { id } => StoreError::NotFound { id: *id },
        StoreError::Conflict { message, current } => StoreError::Conflict {
            message: message.clone(),
            current: current.clone(),
        },
        StoreError::Transition(t) => StoreError::Transition(t.clone()),
        StoreError::InvalidInput(m) => StoreError::InvalidInput(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::conformance::store::{create, enqueue_all};
    use crate::memory::HookedStore;
    use crate::run::{RunEvent, RunId, RunState};

    fn claim(id: RunId, owner: &str) -> Transition {
        Transition {
            id,
            expected: RunState::Queued,
            expected_attempt: 1,
            event: RunEvent::Start {
                owner: owner.into(),
                lease_until: Utc::now() + chrono::Duration::minutes(1),
            },
        }
    }

    /// Writes submitted while groups are being written go out together in the next group, and
    /// each caller gets its own result: the loser of a double claim alone gets the conflict.
    #[tokio::test]
    async fn writes_made_meanwhile_share_a_group_and_keep_their_own_results() {
        let store = Arc::new(HookedStore {
            transitions_gate: Some(tokio::sync::Semaphore::new(0)),
            ..Default::default()
        });
        let ids = create(&*store, 20).await;
        enqueue_all(&*store, &ids).await;
        let group = Arc::new(GroupCommit::new(store.clone(), 64));
        let mut tasks = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let (group, id) = (group.clone(), *id);
            tasks.push(tokio::spawn(async move {
                group.submit(claim(id, &format!("w{n}"))).await
            }));
        }
        // A second claim of the first run, by another owner.
        let (g, first) = (group.clone(), ids[0]);
        let late = tokio::spawn(async move { g.submit(claim(first, "late")).await });
        // The store is held: let every task submit (this runtime has one thread, so each
        // yield runs the others up to their wait), then let the writes through.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        store.transitions_gate.as_ref().unwrap().add_permits(1000);
        let mut won = 0;
        for t in tasks {
            if t.await.unwrap().is_ok() {
                won += 1;
            }
        }
        assert_eq!(won, 20, "every first claim wins");
        match late.await.unwrap() {
            Err(StoreError::Conflict { current, .. }) => {
                assert_eq!(current.unwrap().state, RunState::Running)
            }
            other => panic!("the second claim of a run must conflict, got {other:?}"),
        }
        // The first groups (as many as may be in flight) may have left before the others were
        // submitted; the rest share one.
        let sizes = store.transitions_sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 21, "{sizes:?}");
        assert!(
            sizes.len() <= GROUPS_IN_FLIGHT + 1,
            "21 claims made at once went out in {} calls: {sizes:?}",
            sizes.len()
        );
        assert!(
            sizes.iter().any(|&n| n >= 21 - GROUPS_IN_FLIGHT),
            "{sizes:?}"
        );
    }
}
