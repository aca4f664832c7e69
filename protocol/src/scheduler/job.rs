//! A job's task table as the scheduler holds it (and replicates it).
//!
//! # Lines
//!
//! A task runs on one *line* (its own state, `tasks[i]`) unless it is
//! sampled for verification: then it also has verification lines, each a
//! [`TaskState`] of its own inside the task's [`Check`]. Every function that
//! tracks attempts (offers, accepts, progress, timers, losses) works on a
//! line index `v`: `v < n` is task `v` itself, `v >= n` a verification line
//! (ids never reused within a job, see `JobCore::next_line`). Attempt numbers
//! come from the task's own counter, so they stay unique per task across its
//! lines (the ledger escrows per task and attempt).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::view::Hold;
use super::{CloseReason, FailReason, QueuedReason};
use crate::identity::NodeId;
use crate::placement::Need;
use crate::task::Rect;
use crate::wire::{JobSpec, TaskId};

/// "No worker" in a worker reference.
pub(crate) const NO_WORKER: u32 = u32::MAX;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    Queued,
    Offered,
    Assigned,
    /// The line returned a result that is a verification vote; the task
    /// waits for its verdict.
    Voted,
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
    /// Its result lost verification (or its output was unusable).
    Caught,
    /// Its result won, but the creator could not fetch the output.
    Unfetchable,
}

impl PastKind {
    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            PastKind::Silent => CloseReason::Silent,
            PastKind::PastDeadline => CloseReason::PastDeadline,
            PastKind::Reported => CloseReason::Reported,
            PastKind::Superseded => CloseReason::Superseded,
            PastKind::Caught => CloseReason::Caught,
            PastKind::Unfetchable => CloseReason::Unfetchable,
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
    /// Whether the task is verified (tasks only; lines are `Skip`).
    pub(crate) sample: Sample,
}

/// The sampling decision of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Sample {
    /// Not drawn yet (never placed).
    Undrawn,
    /// Drawn: not verified.
    Skip,
    /// Verified: drawn so, placed on a probationer, or re-run after a catch.
    Check,
}

/// Where a spot-check comparison of a verification vote stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Cmp {
    /// Not asked of the creator yet (quorum votes stay here).
    NotSent,
    /// Asked (`Compare` event), no answer yet.
    Sent,
    /// The creator's similarity to the primary, × 1000.
    Similar(u16),
    /// The check's output could not be used.
    Unusable,
}

/// A result of one line of a verified task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Vote {
    pub(crate) line: u32,
    pub(crate) worker: u32,
    pub(crate) attempt: u32,
    /// The output hash the worker signed.
    pub(crate) hash: [u8; 32],
    pub(crate) cmp: Cmp,
}

/// The verification of one sampled task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Check {
    /// The spot-check crop (frame coordinates); `None` for a quorum.
    pub(crate) crop: Option<Rect>,
    /// Verification lines: id and state, in creation order.
    pub(crate) lines: Vec<(u32, TaskState)>,
    /// Results so far, in arrival order (at most one per line).
    pub(crate) votes: Vec<Vote>,
    /// Spot-check: comparisons of two dissenting checks with each other.
    pub(crate) cross: Vec<CrossCmp>,
}

/// A comparison of two spot-check crops (by attempt) with each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CrossCmp {
    pub(crate) a: u32,
    pub(crate) b: u32,
    pub(crate) cmp: Cmp,
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
            sample: Sample::Undrawn,
        }
    }

    /// A fresh verification line.
    pub(crate) fn line() -> TaskState {
        TaskState {
            sample: Sample::Skip,
            ..TaskState::new()
        }
    }

    /// Whether the line holds an attempt now (offered or accepted).
    pub(crate) fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Offered | Phase::Assigned)
    }

    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
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
    /// Takeovers so far (0 at submission, +1 at each takeover): of two
    /// schedulers that both claim the job, the higher epoch owns it (ties go
    /// to the HRW-preferred one); see `Scheduler::handle_replica`.
    pub(crate) epoch: u32,
    /// Attempts (task, attempt) escrowed since the last replication: only
    /// this owner knows them, so only it refunds them if it yields. Never
    /// taken from a peer (cleared on receipt and at takeover).
    pub(crate) escrowed_since_rep: Vec<(u32, u32)>,
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
    /// Sampled tasks under verification, by task index.
    pub(crate) checks: BTreeMap<u32, Check>,
    /// Verification lines made so far: the next line id is `n + next_line`.
    pub(crate) next_line: u32,
}

/// A job held by the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) spec: JobSpec,
    pub(crate) need: Need,
    pub(crate) frame: Arc<[u8]>,
    pub(crate) core: JobCore,
    pub(crate) worker_ref: BTreeMap<NodeId, u32>,
    /// Line id → its task (derived from `core.checks`).
    pub(crate) line_task: BTreeMap<u32, u32>,
}

impl Job {
    /// The id of the task line `index` belongs to.
    pub(crate) fn task_id(&self, index: u32) -> TaskId {
        TaskId {
            job: self.spec.id,
            index: self.task_of(index),
        }
    }

    /// The task a line belongs to (a task is its own first line).
    pub(crate) fn task_of(&self, line: u32) -> u32 {
        if line < self.n_tasks() {
            line
        } else {
            self.line_task.get(&line).copied().unwrap_or(u32::MAX)
        }
    }

    /// Whether `line` is a verification line.
    pub(crate) fn is_line(&self, line: u32) -> bool {
        line >= self.n_tasks()
    }

    /// Every line of task `task`: itself, then its verification lines.
    pub(crate) fn lines_of(&self, task: u32) -> Vec<u32> {
        let mut v = vec![task];
        if let Some(c) = self.core.checks.get(&task) {
            v.extend(c.lines.iter().map(|(l, _)| *l));
        }
        v
    }

    /// The line of `task` whose current attempt (offered or accepted) is `attempt`.
    pub(crate) fn line_with_attempt(&self, task: u32, attempt: u32) -> Option<u32> {
        self.lines_of(task).into_iter().find(|l| {
            self.task(*l)
                .is_some_and(|t| t.is_live() && t.attempt == attempt)
        })
    }

    /// Every worker (job worker index) that holds, held or voted on a line
    /// of `task`: none of them may take another line of it.
    pub(crate) fn task_workers(&self, task: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for l in self.lines_of(task) {
            if let Some(t) = self.task(l) {
                if matches!(
                    t.phase,
                    Phase::Offered | Phase::Assigned | Phase::Voted | Phase::Done
                ) {
                    out.push(t.worker);
                }
                out.extend(t.past.iter().map(|p| p.worker));
            }
        }
        if let Some(c) = self.core.checks.get(&task) {
            out.extend(c.votes.iter().map(|v| v.worker));
        }
        out.sort_unstable();
        out.dedup();
        out
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

    /// The state of line `index` (a task, or a verification line).
    pub(crate) fn task(&self, index: u32) -> Option<&TaskState> {
        if index < self.n_tasks() {
            return self.core.tasks.get(index as usize);
        }
        let t = self.line_task.get(&index)?;
        self.core
            .checks
            .get(t)?
            .lines
            .iter()
            .find(|(l, _)| *l == index)
            .map(|(_, s)| s)
    }

    /// The state of line `index`, mutably.
    pub(crate) fn task_mut(&mut self, index: u32) -> Option<&mut TaskState> {
        if index < self.n_tasks() {
            return self.core.tasks.get_mut(index as usize);
        }
        let t = self.line_task.get(&index)?;
        self.core
            .checks
            .get_mut(t)?
            .lines
            .iter_mut()
            .find(|(l, _)| *l == index)
            .map(|(_, s)| s)
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
