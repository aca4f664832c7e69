//! Snapshots of the whole machine (restart), and the job view (API).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::job::Phase;
use super::replica::{job_from, validate_core};
use super::view::{NodeEntry, View};
use super::{
    Ctx, FailReason, JobSnapshot, QueuedReason, RestoreError, Scheduler, SchedulerConfig,
    SchedulerStats, TimerRef,
};
use crate::identity::NodeId;
use crate::signed::Signed;
use crate::wire::{JobId, JobSpec};

/// Version of [`SchedulerSnapshot`]'s layout.
pub const SNAPSHOT_VERSION: u8 = 4;

/// The whole scheduler state, to resume after a restart (and to checkpoint a
/// simulation): restoring it and feeding the same inputs gives the same
/// actions. Take it after draining [`Scheduler::poll_action`].
///
/// Encode the parts with [`crate::codec`] separately: one codec frame holds
/// at most 4 MiB, so `core`, the nodes in chunks (about 100 bytes each;
/// 10 000 per chunk is safe) and each job as its
/// [`to_parts`](JobSnapshot::to_parts) each get their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerSnapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u8,
    /// The node that ran the scheduler.
    pub me: NodeId,
    /// Index, counters, placement cursor.
    pub core: CoreSnapshot,
    /// The capacity view's nodes.
    pub nodes: Vec<NodeSnapshot>,
    /// Every job held.
    pub jobs: Vec<JobSnapshot>,
}

/// The index and counters of a [`SchedulerSnapshot`] (opaque).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreSnapshot {
    pub(crate) slots: u32,
    pub(crate) free_list: Vec<u32>,
    pub(crate) buckets: Vec<Vec<u32>>,
    pub(crate) region_names: Vec<String>,
    pub(crate) reputation: Vec<(NodeId, u16)>,
    pub(crate) probation: Vec<(NodeId, bool)>,
    pub(crate) operators: Vec<(NodeId, u64)>,
    pub(crate) next_generation: u64,
    pub(crate) place_due: Option<u64>,
    pub(crate) cursor: Option<JobId>,
    pub(crate) stats: SchedulerStats,
    /// The capacity view's clock (see `Scheduler::resumed`); since version 3.
    pub(crate) clock_ms: u64,
    /// `Ctx::claiming_until_ms`; since version 4.
    pub(crate) claiming_until_ms: u64,
}

/// One node of a [`SchedulerSnapshot`] (opaque).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    pub(crate) slot: u32,
    pub(crate) entry: NodeEntry,
}

/// Whether this scheduler owns a job or keeps a replica of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobRole {
    /// This scheduler places the job.
    Owner,
    /// This scheduler keeps a copy for the owner.
    Replica,
}

/// Where a task is, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum TaskStatus {
    /// Waiting for a worker.
    Queued,
    /// Offered, not yet accepted.
    Offered,
    /// Accepted, no progress yet.
    Assigned,
    /// A result is in; the task waits for its verification verdict.
    Verifying,
    /// Running.
    Running {
        /// Done so far, per mille.
        permille: u16,
    },
    /// Done.
    Done,
    /// Failed for good.
    Failed {
        /// Why.
        reason: FailReason,
    },
}

/// One task in a [`JobView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Index.
    pub index: u32,
    /// State.
    pub status: TaskStatus,
    /// The worker of the current attempt (or of the result).
    pub worker: Option<NodeId>,
    /// The current (or winning) attempt.
    pub attempt: Option<u32>,
    /// Accepted attempts lost or failed so far.
    pub failures: u8,
}

/// A job as this scheduler sees it (`JobQuery`, the API's job page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job.
    pub id: JobId,
    /// Its creator.
    pub creator: NodeId,
    /// The scheduler that owns it.
    pub owner: NodeId,
    /// Its replica, if any.
    pub replica: Option<NodeId>,
    /// Owner or replica here.
    pub role: JobRole,
    /// When submitted (our clock).
    pub submitted_at_ms: u64,
    /// The job deadline.
    pub deadline_ms: u64,
    /// When every task ended.
    pub finished_at_ms: Option<u64>,
    /// Cancelled by the creator.
    pub cancelled: bool,
    /// Tasks in all.
    pub tasks_total: u32,
    /// Tasks queued.
    pub queued: u32,
    /// Tasks offered.
    pub offered: u32,
    /// Tasks assigned or running.
    pub running: u32,
    /// Tasks with a result waiting for a verification verdict.
    pub verifying: u32,
    /// Tasks under verification (sampled, not yet decided).
    pub checks: u32,
    /// Tasks done.
    pub done: u32,
    /// Tasks failed.
    pub failed: u32,
    /// Why tasks wait, if they do.
    pub queued_reason: Option<QueuedReason>,
    /// The same, in words.
    pub why_queued: Option<String>,
    /// Every task.
    pub tasks: Vec<TaskView>,
}

impl Scheduler {
    /// The view of a job, if held.
    pub fn job_view(&self, id: &JobId) -> Option<JobView> {
        let job = self.jobs.get(id)?;
        let mut tasks = Vec::with_capacity(job.core.tasks.len());
        let (mut queued, mut offered, mut running, mut verifying) = (0, 0, 0, 0);
        for (i, t) in job.core.tasks.iter().enumerate() {
            let i = i as u32;
            let live = job.core.live.get(&i);
            let status = match t.phase {
                Phase::Queued => {
                    queued += 1;
                    TaskStatus::Queued
                }
                Phase::Offered => {
                    offered += 1;
                    TaskStatus::Offered
                }
                Phase::Assigned => {
                    running += 1;
                    if live.is_some_and(|l| l.progress_seq.is_some()) {
                        TaskStatus::Running {
                            permille: t.permille,
                        }
                    } else {
                        TaskStatus::Assigned
                    }
                }
                Phase::Voted => {
                    verifying += 1;
                    TaskStatus::Verifying
                }
                Phase::Done => TaskStatus::Done,
                Phase::Failed => TaskStatus::Failed {
                    reason: t.failure.clone().unwrap_or(FailReason::Cancelled),
                },
            };
            let has_worker = matches!(
                t.phase,
                Phase::Offered | Phase::Assigned | Phase::Voted | Phase::Done
            );
            tasks.push(TaskView {
                index: i,
                status,
                worker: if has_worker {
                    job.worker_id(t.worker)
                } else {
                    None
                },
                attempt: if has_worker { Some(t.attempt) } else { None },
                failures: t.failures,
            });
        }
        let reason = if job.queued_len() > 0 {
            job.core.queued_reason.clone()
        } else {
            None
        };
        Some(JobView {
            id: *id,
            creator: job.spec.creator,
            owner: job.core.owner,
            replica: job.core.replica,
            role: if job.core.owner == self.ctx.me {
                JobRole::Owner
            } else {
                JobRole::Replica
            },
            submitted_at_ms: job.core.submitted_at_ms,
            deadline_ms: job.spec.deadline_ms,
            finished_at_ms: job.core.finished_at_ms,
            cancelled: job.core.cancelled,
            tasks_total: job.n_tasks(),
            queued,
            offered,
            running,
            verifying,
            checks: job.core.checks.len() as u32,
            done: job.core.done,
            failed: job.core.failed,
            why_queued: reason.as_ref().map(ToString::to_string),
            queued_reason: reason,
            tasks,
        })
    }

    /// The whole state (see [`SchedulerSnapshot`]).
    pub fn snapshot(&self) -> SchedulerSnapshot {
        let v = &self.ctx.view;
        SchedulerSnapshot {
            version: SNAPSHOT_VERSION,
            me: self.ctx.me,
            core: CoreSnapshot {
                slots: v.slots.len() as u32,
                free_list: v.free_list.clone(),
                buckets: v.buckets.clone(),
                region_names: v.region_names.clone(),
                reputation: v.reputation.iter().map(|(k, r)| (*k, *r)).collect(),
                probation: v.probation.iter().map(|(k, p)| (*k, *p)).collect(),
                operators: v.operators.iter().map(|(k, g)| (*k, *g)).collect(),
                next_generation: v.next_generation,
                place_due: self.ctx.place_due,
                cursor: self.ctx.cursor,
                stats: self.ctx.stats,
                clock_ms: self.ctx.clock_ms,
                claiming_until_ms: self.ctx.claiming_until_ms,
            },
            nodes: v
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    e.as_ref().map(|e| NodeSnapshot {
                        slot: i as u32,
                        // Positions are rebuilt from the buckets on restore.
                        entry: NodeEntry {
                            pos: Vec::new(),
                            ..e.clone()
                        },
                    })
                })
                .collect(),
            jobs: self
                .jobs
                .values()
                .map(|j| JobSnapshot {
                    job: j.spec.id,
                    frame: j.frame.clone(),
                    core: j.core.clone(),
                })
                .collect(),
        }
    }

    /// Resumes from a snapshot, with (possibly new) settings. Checks every
    /// job's signed spec and the consistency of every part.
    pub fn restore(
        config: SchedulerConfig,
        snapshot: SchedulerSnapshot,
    ) -> Result<Scheduler, RestoreError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(RestoreError::Version {
                expected: SNAPSHOT_VERSION,
                found: snapshot.version,
            });
        }
        let invalid = |s: &str| RestoreError::Invalid(s.to_owned());
        let c = snapshot.core;
        let mut view = View::new();
        if c.slots as usize > config.max_nodes.max(snapshot.nodes.len()).saturating_mul(2) + 1024 {
            return Err(invalid("arena larger than the node bound allows"));
        }
        view.slots = vec![None; c.slots as usize];
        for n in snapshot.nodes {
            match view.slots.get_mut(n.slot as usize) {
                Some(cell @ None) => *cell = Some(n.entry),
                _ => return Err(invalid("node slot out of range or twice")),
            }
        }
        view.free_list = c.free_list;
        view.buckets = c.buckets;
        view.regions = c
            .region_names
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), i as u32))
            .collect();
        view.region_names = c.region_names;
        view.reputation = c.reputation.into_iter().collect();
        view.probation = c.probation.into_iter().collect();
        view.operators = c.operators.into_iter().collect();
        view.next_generation = c.next_generation;
        if !view.rebuild() {
            return Err(invalid("capacity index disagrees with its nodes"));
        }
        let mut timers = BTreeSet::new();
        for (i, e) in view.slots.iter_mut().enumerate() {
            if let Some(e) = e {
                e.timer_at = e.expires_at_ms;
                timers.insert((e.expires_at_ms, TimerRef::Node(i as u32)));
            }
        }
        let mut s = Scheduler {
            ctx: Ctx {
                me: snapshot.me,
                config,
                view,
                timers,
                ready: BTreeSet::new(),
                place_due: c.place_due,
                cursor: c.cursor,
                in_flight: 0,
                tasks_held: 0,
                owned: 0,
                replicas: 0,
                actions: VecDeque::new(),
                stats: c.stats,
                held: BTreeMap::new(),
                clock_ms: c.clock_ms,
                claiming_until_ms: c.claiming_until_ms,
            },
            jobs: BTreeMap::new(),
        };
        for js in snapshot.jobs {
            let spec = Signed::<JobSpec>::from_slice(&js.frame)?.verify()?;
            if spec.id != js.job {
                return Err(invalid("a job snapshot carries another job's spec"));
            }
            validate_core(&spec, &js.core).map_err(RestoreError::Invalid)?;
            let job = job_from(spec, js.frame, js.core);
            let id = job.spec.id;
            s.ctx.tasks_held += u64::from(job.n_tasks());
            if let Some(at) = job.core.timer_at {
                s.ctx.timers.insert((at, TimerRef::Job(id)));
            }
            if job.core.owner == s.ctx.me {
                s.ctx.owned += 1;
                for (index, l) in &job.core.live {
                    s.ctx
                        .timers
                        .insert((l.timer_at, TimerRef::Task(id, *index)));
                }
                s.ctx.in_flight += job.core.live.len();
                for index in job.core.live.keys() {
                    if let Some(w) = job.task(*index).and_then(|t| job.worker_id(t.worker)) {
                        *s.ctx.held.entry(w).or_default() += 1;
                    }
                }
                if !job.is_finished() && job.core.blocked_until_ms.is_none() && job.queued_len() > 0
                {
                    s.ctx.ready.insert(id);
                }
            } else {
                s.ctx.replicas += 1;
            }
            if s.jobs.insert(id, job).is_some() {
                return Err(invalid("a job appears twice"));
            }
        }
        Ok(s)
    }

    /// Checks internal invariants (tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.ctx.view.check()?;
        let mut in_flight = 0;
        let mut outstanding: BTreeMap<(NodeId, u64), u16> = BTreeMap::new();
        let mut held: BTreeMap<NodeId, u32> = BTreeMap::new();
        for (id, job) in &self.jobs {
            validate_core(&job.spec, &job.core)?;
            let owner = job.core.owner == self.ctx.me;
            let ready = owner
                && !job.is_finished()
                && job.core.blocked_until_ms.is_none()
                && job.queued_len() > 0;
            if ready != self.ctx.ready.contains(id) {
                return Err(format!("job {id:?} ready {ready} but set says otherwise"));
            }
            if owner {
                in_flight += job.core.live.len();
                for (index, l) in &job.core.live {
                    if !self
                        .ctx
                        .timers
                        .contains(&(l.timer_at, TimerRef::Task(*id, *index)))
                    {
                        return Err(format!("task {index} has no timer"));
                    }
                    if let Some(w) = job.task(*index).and_then(|t| job.worker_id(t.worker)) {
                        *held.entry(w).or_default() += 1;
                    }
                    if let super::view::Hold::Offer { inc } = l.hold
                        && let Some(w) = job.task(*index).and_then(|t| job.worker_id(t.worker))
                    {
                        *outstanding.entry((w, inc)).or_default() += 1;
                    }
                }
            }
            if let Some(at) = job.core.timer_at
                && !self.ctx.timers.contains(&(at, TimerRef::Job(*id)))
            {
                return Err(format!("job {id:?} timer missing"));
            }
        }
        if held != self.ctx.held {
            return Err(format!("held {:?} counted, {held:?} found", self.ctx.held));
        }
        if in_flight != self.ctx.in_flight {
            return Err(format!(
                "in flight {} counted, {in_flight} found",
                self.ctx.in_flight
            ));
        }
        for e in self.ctx.view.slots.iter().flatten() {
            let want = outstanding
                .get(&(e.id, e.incarnation))
                .copied()
                .unwrap_or(0);
            if e.outstanding != want {
                return Err(format!(
                    "node {:?} outstanding {} but {want} offers",
                    e.id, e.outstanding
                ));
            }
        }
        Ok(())
    }
}
