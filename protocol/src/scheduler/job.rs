//! A job's task table as the scheduler holds it (and replicates it).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::view::Hold;
use super::{CloseReason, FailReason, QueuedReason};
use crate::identity::NodeId;
use crate::placement::Need;
use crate::wire::{JobSpec, TaskId};

/// "No worker" in a worker reference.
pub(crate) const NO_WORKER: u32 = u32::MAX;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    Queued,
    Offered,
    Assigned,
    Done,
    Failed,
}

/// How an accepted attempt that did not win ended. Its escrow is refunded
/// when the task closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PastKind {
    /// Silent past the heartbeat timeout: a late result may still win.
    Silent,
    /// Still running past the task deadline: a late result may still win.
    PastDeadline,
    /// The worker reported failure.
    Reported,
    /// Cancelled because an earlier attempt's result won.
    Superseded,
}

impl PastKind {
    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            PastKind::Silent => CloseReason::Silent,
            PastKind::PastDeadline => CloseReason::PastDeadline,
            PastKind::Reported => CloseReason::Reported,
            PastKind::Superseded => CloseReason::Superseded,
        }
    }
}

/// An accepted (escrowed) attempt that is no longer current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Past {
    pub(crate) worker: u32,
    pub(crate) attempt: u32,
    pub(crate) kind: PastKind,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskState {
    pub(crate) phase: Phase,
    /// The attempt number the next offer uses.
    pub(crate) next_attempt: u32,
    /// Worker of the current attempt (Offered/Assigned) or the winner (Done).
    pub(crate) worker: u32,
    /// Attempt of `worker`.
    pub(crate) attempt: u32,
    /// Accepted attempts lost or failed (counted against `max_attempts`).
    pub(crate) failures: u8,
    /// Offers since the last replication (bounds the attempt numbers a
    /// replica could reuse after a takeover).
    pub(crate) offers_since_rep: u16,
    pub(crate) permille: u16,
    pub(crate) failure: Option<FailReason>,
    pub(crate) past: Vec<Past>,
}

impl TaskState {
    pub(crate) fn new() -> TaskState {
        TaskState {
            phase: Phase::Queued,
            next_attempt: 0,
            worker: NO_WORKER,
            attempt: 0,
            failures: 0,
            offers_since_rep: 0,
            permille: 0,
            failure: None,
            past: Vec::new(),
        }
    }

    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// Whether `worker` already failed this task (lost or reported).
    pub(crate) fn excluded(&self, worker: u32) -> bool {
        self.past.iter().any(|p| p.worker == worker)
    }
}

/// Details of the current attempt of an Offered or Assigned task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Live {
    pub(crate) price: u64,
    pub(crate) reserve_until_ms: u64,
    pub(crate) deadline_ms: u64,
    pub(crate) last_heard_ms: u64,
    /// Highest progress sequence number seen.
    pub(crate) progress_seq: Option<u32>,
    /// Progress last told to the creator.
    pub(crate) notified_permille: u16,
    pub(crate) hold: Hold,
    /// When this attempt's timer fires.
    pub(crate) timer_at: u64,
}

/// Everything about a job but its spec (which travels as the signed frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobCore {
    pub(crate) owner: NodeId,
    pub(crate) replica: Option<NodeId>,
    /// Increases with every replication.
    pub(crate) revision: u64,
    pub(crate) submitted_at_ms: u64,
    pub(crate) finished_at_ms: Option<u64>,
    pub(crate) cancelled: bool,
    pub(crate) tasks: Vec<TaskState>,
    pub(crate) live: BTreeMap<u32, Live>,
    /// Workers this job has offered to; tasks refer to them by index.
    pub(crate) workers: Vec<NodeId>,
    /// Tasks `next_fresh..` have never been offered (queued).
    pub(crate) next_fresh: u32,
    /// Tasks queued again, in order.
    pub(crate) requeued: VecDeque<u32>,
    pub(crate) done: u32,
    pub(crate) failed: u32,
    pub(crate) queued_reason: Option<QueuedReason>,
    pub(crate) blocked_until_ms: Option<u64>,
    /// Changed since the last replication.
    pub(crate) dirty: bool,
    pub(crate) last_replicated_ms: u64,
    /// Replicate at once (attempt numbers ran ahead).
    pub(crate) replicate_now: bool,
    /// When the job's timer fires (deadline, retry, replication, pruning).
    pub(crate) timer_at: Option<u64>,
}

/// A job held by the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) spec: JobSpec,
    pub(crate) need: Need,
    pub(crate) frame: Arc<[u8]>,
    pub(crate) core: JobCore,
    pub(crate) worker_ref: BTreeMap<NodeId, u32>,
}

impl Job {
    pub(crate) fn task_id(&self, index: u32) -> TaskId {
        TaskId {
            job: self.spec.id,
            index,
        }
    }

    pub(crate) fn n_tasks(&self) -> u32 {
        self.core.tasks.len() as u32
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.core.finished_at_ms.is_some()
    }

    /// The index of `worker` in the job's worker table, adding it.
    pub(crate) fn worker_index(&mut self, worker: NodeId) -> u32 {
        if let Some(i) = self.worker_ref.get(&worker) {
            return *i;
        }
        let i = self.core.workers.len() as u32;
        self.core.workers.push(worker);
        self.worker_ref.insert(worker, i);
        i
    }

    pub(crate) fn worker_id(&self, index: u32) -> Option<NodeId> {
        self.core.workers.get(index as usize).copied()
    }

    pub(crate) fn task(&self, index: u32) -> Option<&TaskState> {
        self.core.tasks.get(index as usize)
    }

    pub(crate) fn task_mut(&mut self, index: u32) -> Option<&mut TaskState> {
        self.core.tasks.get_mut(index as usize)
    }

    pub(crate) fn queued_len(&self) -> usize {
        self.core.requeued.len()
            + (self.n_tasks() - self.core.next_fresh.min(self.n_tasks())) as usize
    }

    /// The next queued task, and whether it was never offered (fresh).
    pub(crate) fn pop_queued(&mut self) -> Option<(u32, bool)> {
        if let Some(i) = self.core.requeued.pop_front() {
            return Some((i, false));
        }
        if self.core.next_fresh < self.n_tasks() {
            let i = self.core.next_fresh;
            self.core.next_fresh += 1;
            return Some((i, true));
        }
        None
    }

    /// Puts a popped task back at the head of the queue (placement found nobody).
    pub(crate) fn unpop(&mut self, index: u32, fresh: bool) {
        if fresh {
            self.core.next_fresh = index;
        } else {
            self.core.requeued.push_front(index);
        }
    }

    pub(crate) fn clear_queue(&mut self) {
        self.core.requeued.clear();
        self.core.next_fresh = self.n_tasks();
    }
}
