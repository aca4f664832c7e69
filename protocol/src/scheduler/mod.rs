//! The scheduler machine: task split, placement, offer → accept, tracking,
//! re-offers, replication and takeover (docs/jobs.md, steps 2, 3, 6, 8).
//!
//! # What this module owns
//!
//! The task table of every job this scheduler owns or replicates, and every
//! rule that acts on it. It is sans-IO in the quinn-proto / str0m style:
//! inputs are method calls with `now_ms`; effects come out of
//! [`Scheduler::poll_action`] as [`SchedulerAction`]s; timers are
//! [`Scheduler::next_deadline`] and [`Scheduler::handle_timeout`], which is
//! also the only call that places tasks and so the only one that takes the
//! RNG (`&mut impl rand_core::Rng`). Every map that reaches an output is a
//! `BTreeMap`, every decision integer arithmetic: the same inputs and RNG
//! seed give the same actions.
//!
//! # Driver contract
//!
//! * `observe_advert(&advert, expires_at_ms, now)` for every advert the
//!   driver's [`CapacityTable`](crate::capacity::CapacityTable) accepted
//!   (including the node's own), with the entry's `expires_at_ms`; the view
//!   drops the node at that time unless a newer advert comes.
//!   `forget_node(&id, now)` drops it at once (banned, removed).
//! * `submit` / `submit_signed` for `Submit`; `cancel` for `Cancel` (creator);
//!   `handle_accept` with the answer to an `Offer`, `handle_undeliverable`
//!   when an offer could not be delivered; `handle_progress`, `handle_result`
//!   (with the result's signed frames), `handle_task_failed`;
//!   `handle_replica` for `Replicate`; `take_over` to force a takeover.
//! * After each input: drain `poll_action`; then call
//!   `handle_timeout(now, rng)` whenever `now >= next_deadline()` (an input
//!   that queues placement sets the deadline to `now`).
//! * Actions: `Offer` (sign, send with the spec frame), `OfferCrop` (the
//!   same for a spot-check line, with the crop to render), `CancelTask`,
//!   `Notify` (creator), `Escrow` (publish spec + offer + accept),
//!   `Closed` (publish a refund), `Replicate` (send
//!   [`JobSnapshot::to_parts`]; the receiver rebuilds it with a
//!   [`SnapshotAssembler`]), `Outcome` (feed the node's
//!   [`ReputationBook`](crate::reputation::ReputationBook), then
//!   `set_reputation` / `set_probation` with the worker's new standing).
//! * Trust inputs: `set_reputation(node, permille)` and
//!   `set_probation(node, on)` from the reputation book (on every
//!   `Outcome`, and for each advert observed, since scores decay);
//!   `set_operator(node, group)` with the driver's operator group of the
//!   node (its address prefix); `handle_comparison(&creator, &c, now)` for
//!   the creator's answer to a `Compare` event.
//! * Persist with [`Scheduler::snapshot`] (take it after draining actions),
//!   resume with [`Scheduler::restore`].
//!
//! # Rules
//!
//! * **Split**: task `i` of a job is [`crate::task::task_geometry`] of index `i`.
//! * **Placement**: candidates are sampled from an index of free workers per
//!   `(runtime, GPU vendor)` (see `view`), never by scanning the table: up to
//!   `max_probes` random probes until `choices` candidates pass
//!   [`Need::check`](crate::placement::Need::check) (the same rule as
//!   [`crate::placement::meets`]) and have not failed this task, then the best
//!   [`score`](crate::placement::score) wins. Only when the probes found
//!   nobody does a decision scan, at most `max_scan` entries. Free slots are
//!   `max_tasks − running_tasks` of the advert, minus this scheduler's
//!   outstanding offers on the node and offers accepted since that advert;
//!   a node that declined or did not answer gets nothing until its next advert.
//!   A job whose task found nobody waits `retry_ms` and says why
//!   ([`QueuedReason`], a `Queued` event when the reason changes).
//! * **Attempts**: every offer has a fresh attempt number. Accepts count
//!   only from the offered worker for the current attempt, before
//!   `reserve_until_ms`; a late accept gets a `CancelTask`. Declined,
//!   lapsed and undeliverable offers go back to the queue. An accepted
//!   attempt is escrowed; a silent one (no progress for
//!   `heartbeat_timeout_ms`) or one past its task deadline is lost: its
//!   worker is excluded from the task, the task is offered again, and after
//!   `max_attempts` losses or reported failures the task fails.
//! * **Verification** ([`crate::verify`] has the rules; `check.rs` applies
//!   them): when a task is first placed, whether it is verified is drawn
//!   from the RNG at the policy's rate (before any result exists; an offer
//!   looks the same either way), and it always is when its worker is on
//!   probation (and when it re-runs after a catch). A verified task gets
//!   verification *lines* (quorum: `k − 1`; spot-check: one crop line), each
//!   tracked like the task itself (offers, accepts, heartbeats, losses,
//!   escrows), on workers that hold or held no other line of the task,
//!   preferring another operator group and, for a probationer's task,
//!   workers off probation. Attempt numbers stay unique per task across its
//!   lines. Each result is a vote (`Vote` to the creator); a quorum verdict,
//!   or the creator's comparisons for a spot-check, decide: `Verified` (the
//!   winner's receipt is the one the creator countersigns; every other
//!   attempt is refunded, `Checked` or `Caught`), a catch (`Rejected`,
//!   `Outcome::Failed`; a caught spot-check primary is re-run elsewhere), one
//!   more line, or `FailReason::Unverified` after the bound. Probationers
//!   hold at most `probation_max_tasks` attempts from this scheduler, and a
//!   job keeps at most `max_open_checks` tasks under verification.
//! * **Results**: the first valid result wins: from the current attempt, or
//!   from an earlier attempt that was lost (not one that reported failure); a
//!   running attempt is then cancelled. A result for a done task is a
//!   duplicate (counted, dropped). **Decision:** escrows of attempts that did
//!   not win are refunded (`Closed`) when the task closes, not when they are
//!   lost, so a late result of a lost attempt can still win and be paid.
//! * **Ownership**: fixed at submission. The owner replicates a job (whole
//!   job state, at most every `replicate_interval_ms`, at once when an
//!   attempt number runs `ATTEMPT_GAP / 2` ahead) to the HRW best live
//!   scheduler other than itself. Replicas are taken only from live
//!   schedulers. A replica takes over when the owner leaves its view and it
//!   is the HRW best of the live schedulers left (a copy the owner stopped
//!   updating after the ranking changed stays passive), or on `take_over`;
//!   it bumps attempt numbers by `ATTEMPT_GAP` so
//!   none the old owner used is reused, gives running workers a fresh
//!   heartbeat window, tells the creator (`TakenOver`) and picks its own
//!   replica.
//! * **Two owners**: a takeover raises the job's `epoch`. An owner that comes
//!   back (restart, healed partition) still claims its jobs, so two
//!   schedulers may own one. **Decision:** the claim with the higher epoch
//!   wins, ties to the HRW-preferred claimant; both sides decide the same.
//!   An owner yields only to its HRW runner-up among the live schedulers
//!   (the epoch is the sender's word; the runner-up can take the job over
//!   anyway by calling the owner silent).
//!   A claim meets the other when one owner replicates to the other (a
//!   resumed scheduler replicates every owned job at once, and the HRW
//!   winner is the runner-up's replica). The winner refuses the loser's
//!   state (`WeOwn`) and sends its own back; the loser yields: it calls off
//!   and refunds (`CloseReason::Yielded`) the attempts the winner's state
//!   does not list and keeps the winner's state as a replica. A replica
//!   holder refuses state from an older claim (`OlderClaim`). What the loser
//!   completed that the winner does not know runs again under the winner
//!   (the creator keeps the first result of a task).
//! * **Bounds**: `max_jobs` owned and `max_replicas` replicated jobs,
//!   `max_tasks` tasks held, `max_in_flight` attempts offered or assigned,
//!   `max_nodes` nodes in the view, `decisions_per_pass` per call. Finished
//!   jobs are pruned after `finished_retention_ms`.
//!
//! # What it must not do
//!
//! No signatures, no sockets, no clock, no storage: the driver signs offers,
//! sends, persists [`SchedulerSnapshot`]s and feeds answers back.

mod check;
mod job;
mod parts;
mod place;
mod replica;
mod snapshot;
mod track;
mod types;
mod view;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod verify_tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

pub use parts::{
    CHECKS_PER_PART, LIVE_PER_PART, MAX_PARTS, PartsError, SnapshotAssembler, SnapshotPart,
    TASKS_PER_PART, WORKERS_PER_PART,
};
pub use snapshot::{
    CoreSnapshot, JobRole, JobView, NodeSnapshot, SNAPSHOT_VERSION, SchedulerSnapshot, TaskStatus,
    TaskView,
};
pub use types::*;

use crate::identity::NodeId;
use crate::placement::Need;
use crate::signed::Signed;
pub use crate::verify::{CompareResult, Comparison};
use crate::wire::{
    CapacityAdvert, JobId, JobSpec, Progress, TaskAccept, TaskId, TaskResult, WireMessage,
};
use job::{Job, JobCore, Past, PastKind, Phase, TaskState};
use view::View;

/// Attempt numbers a replica skips when it takes a job over.
pub const ATTEMPT_GAP: u32 = 1024;

/// What a timer entry refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerRef {
    /// A node's expiry (arena slot).
    Node(u32),
    /// A task's current attempt.
    Task(JobId, u32),
    /// A job's deadline, retry, replication or pruning.
    Job(JobId),
}

/// Everything but the jobs, so a job can be borrowed beside it.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) me: NodeId,
    pub(crate) config: SchedulerConfig,
    pub(crate) view: View,
    pub(crate) timers: BTreeSet<(u64, TimerRef)>,
    /// Owned, unfinished jobs with queued tasks that are not waiting to retry.
    pub(crate) ready: BTreeSet<JobId>,
    pub(crate) place_due: Option<u64>,
    pub(crate) cursor: Option<JobId>,
    pub(crate) in_flight: usize,
    pub(crate) tasks_held: u64,
    pub(crate) owned: usize,
    pub(crate) replicas: usize,
    pub(crate) actions: VecDeque<SchedulerAction>,
    pub(crate) stats: SchedulerStats,
    /// Attempts (offered or accepted) held on each worker, over owned jobs.
    pub(crate) held: BTreeMap<NodeId, u32>,
    /// The latest time seen by `observe_advert` or `handle_timeout`: the
    /// capacity view's clock, kept in snapshots so that
    /// [`Scheduler::resumed`] knows how long the scheduler was away.
    pub(crate) clock_ms: u64,
    /// Until then (after `resumed`), owned jobs are not replicated: a claim
    /// was shown instead, and a replication would count the attempts made
    /// since the last one as known to a replica that may have refused it.
    pub(crate) claiming_until_ms: u64,
}

/// The scheduler state machine. See the module docs.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pub(crate) ctx: Ctx,
    pub(crate) jobs: BTreeMap<JobId, Job>,
}

impl Scheduler {
    /// An empty scheduler run by node `me`.
    pub fn new(me: NodeId, config: SchedulerConfig) -> Self {
        Scheduler {
            ctx: Ctx {
                me,
                config,
                view: View::new(),
                timers: BTreeSet::new(),
                ready: BTreeSet::new(),
                place_due: None,
                cursor: None,
                in_flight: 0,
                tasks_held: 0,
                owned: 0,
                replicas: 0,
                actions: VecDeque::new(),
                stats: SchedulerStats::default(),
                held: BTreeMap::new(),
                clock_ms: 0,
                claiming_until_ms: 0,
            },
            jobs: BTreeMap::new(),
        }
    }

    /// Tells a scheduler just [restored](Self::restore) after a restart that
    /// it is `now_ms`: the capacity view's clock is held still over the time
    /// it was away (from the latest time it had seen when the snapshot was
    /// taken), so every node it knew keeps the rest of its lifetime from now
    /// on. A node is then judged gone only if it stays silent after the
    /// restart, not because this scheduler was down; without this a
    /// restarted scheduler finds every entry expired at its first timer pass,
    /// sees every other scheduler leave at once and takes over the jobs it
    /// replicates for them while their owners are alive. Call it once,
    /// before any other call; a scheduler that never stopped must not.
    pub fn resumed(&mut self, now_ms: u64) {
        let away = now_ms.saturating_sub(self.ctx.clock_ms);
        if away > 0 {
            // Lazy expiry timers stay where they are and re-arm at the moved
            // expiry when they fire (see `NodeEntry::timer_at`).
            for e in self.ctx.view.slots.iter_mut().flatten() {
                e.expires_at_ms = e.expires_at_ms.saturating_add(away);
            }
        }
        self.ctx.clock_ms = self.ctx.clock_ms.max(now_ms);
        // A replica may have taken our jobs over while we were away. Our
        // workers' silence over our downtime proves nothing (as for the
        // view): accepted attempts get a fresh heartbeat window, so we do not
        // call off attempts the taker adopted. Owned jobs place nothing for
        // `resume_grace_ms`, and each owned job's state is shown to its
        // replica now, so a newer claim is answered (and we yield, see
        // `handle_replica`) before we act. Not a replication: the replica
        // may refuse it, so the attempts made since the last one stay
        // counted as ours (`offers_since_rep`, `escrowed_since_rep`).
        let me = self.ctx.me;
        let hb = self.ctx.config.heartbeat_timeout_ms;
        let grace_until = now_ms.saturating_add(self.ctx.config.resume_grace_ms);
        self.ctx.claiming_until_ms = grace_until;
        for job in self.jobs.values_mut() {
            if job.core.owner != me || job.is_finished() {
                continue;
            }
            let lines: Vec<u32> = job.core.live.keys().copied().collect();
            for line in lines {
                if job.task(line).map(|t| t.phase) != Some(Phase::Assigned) {
                    continue;
                }
                let Some(live) = job.core.live.get_mut(&line) else {
                    continue;
                };
                live.last_heard_ms = live.last_heard_ms.max(now_ms);
                let at = now_ms.saturating_add(hb).min(live.deadline_ms);
                if at > live.timer_at {
                    self.ctx.set_task_timer(job, line, at);
                }
            }
            if self.ctx.config.resume_grace_ms > 0 {
                job.core.blocked_until_ms = Some(
                    job.core
                        .blocked_until_ms
                        .map_or(grace_until, |t| t.max(grace_until)),
                );
                self.ctx.ready.remove(&job.spec.id);
                self.ctx.rearm_job(job);
            }
        }
        for job in self.jobs.values() {
            // Finished ones too: a replica that took over may be running
            // one of them again.
            if job.core.owner != me {
                continue;
            }
            if let Some(to) = self.ctx.pick_replica(job) {
                self.ctx.stats.replications += 1;
                self.ctx.actions.push_back(SchedulerAction::Replicate {
                    to,
                    snapshot: Box::new(JobSnapshot {
                        job: job.spec.id,
                        frame: job.frame.clone(),
                        core: job.core.clone(),
                    }),
                });
            }
        }
    }

    /// The node running this scheduler.
    pub fn me(&self) -> NodeId {
        self.ctx.me
    }

    /// Settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.ctx.config
    }

    /// Counters.
    pub fn stats(&self) -> SchedulerStats {
        self.ctx.stats
    }

    /// Nodes in the capacity view.
    pub fn nodes(&self) -> usize {
        self.ctx.view.len()
    }

    /// Attempts offered or assigned now.
    pub fn in_flight(&self) -> usize {
        self.ctx.in_flight
    }

    /// The jobs held (owned and replicas), in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &JobId> {
        self.jobs.keys()
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<SchedulerAction> {
        self.ctx.actions.pop_front()
    }

    /// When [`Scheduler::handle_timeout`] has work next.
    pub fn next_deadline(&self) -> Option<u64> {
        let timer = self.ctx.timers.first().map(|(at, _)| *at);
        match (timer, self.ctx.place_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sets a node's reputation (per mille, neutral 500) for scoring.
    pub fn set_reputation(&mut self, node: NodeId, permille: u16) {
        self.ctx.view.set_reputation(node, permille);
    }

    /// Applies an advert the driver's capacity table accepted; the node is
    /// live until `expires_at_ms` unless a newer advert comes.
    pub fn observe_advert(&mut self, advert: &CapacityAdvert, expires_at_ms: u64, now_ms: u64) {
        let placement = crate::capacity::content_digest(advert).placement;
        self.observe(advert, placement, expires_at_ms, now_ms);
    }

    /// [`Scheduler::observe_advert`] for an entry of the node's capacity
    /// table: the same, with the digest the table computed when it took the
    /// advert (the shortcut for an advert whose content did not change then
    /// reads none of the advert's strings and vectors).
    pub fn observe_entry(&mut self, entry: &crate::capacity::CapacityEntry, now_ms: u64) {
        self.observe(
            &entry.advert,
            entry.digest.placement,
            entry.expires_at_ms,
            now_ms,
        );
    }

    fn observe(
        &mut self,
        advert: &CapacityAdvert,
        placement: u64,
        expires_at_ms: u64,
        now_ms: u64,
    ) {
        self.ctx.clock_ms = self.ctx.clock_ms.max(now_ms);
        let max = self.ctx.config.max_nodes;
        let Some(obs) = self.ctx.view.observe(advert, placement, expires_at_ms, max) else {
            self.ctx.stats.view_full += 1;
            return;
        };
        if !obs.applied {
            return;
        }
        let slot = obs.slot;
        if let Some(e) = self.ctx.view.entry_mut(slot) {
            // Lazy expiry (see `NodeEntry::timer_at`): a timer armed at or
            // before the new expiry stays and re-arms when it fires.
            if e.timer_at == 0 || e.timer_at > expires_at_ms {
                if e.timer_at != 0 {
                    self.ctx.timers.remove(&(e.timer_at, TimerRef::Node(slot)));
                }
                e.timer_at = expires_at_ms;
                self.ctx
                    .timers
                    .insert((expires_at_ms, TimerRef::Node(slot)));
            }
        }
        if obs.was_scheduler != obs.is_scheduler {
            self.schedulers_changed(now_ms);
            if obs.was_scheduler {
                self.scheduler_gone(&advert.node, now_ms);
            }
        }
    }

    /// Drops a node from the view at once.
    pub fn forget_node(&mut self, node: &NodeId, now_ms: u64) {
        let slot = self.ctx.view.slot_of(node);
        if let Some(entry) = self.ctx.view.remove(node) {
            if let Some(slot) = slot {
                self.ctx
                    .timers
                    .remove(&(entry.timer_at, TimerRef::Node(slot)));
            }
            if entry.is_scheduler {
                self.schedulers_changed(now_ms);
                self.scheduler_gone(node, now_ms);
            }
        }
    }

    /// Verifies a signed job spec, then [`Scheduler::submit`]s it.
    pub fn submit_signed(
        &mut self,
        signed: &Signed<JobSpec>,
        now_ms: u64,
    ) -> Result<Submitted, SubmitError> {
        let spec = signed.verify()?;
        self.submit(spec, Arc::from(signed.as_bytes()), now_ms)
    }

    /// Takes a verified job spec and its signed frame (kept for offers).
    ///
    /// Idempotent: the same spec again is [`Submitted::AlreadyKnown`].
    pub fn submit(
        &mut self,
        spec: JobSpec,
        frame: Arc<[u8]>,
        now_ms: u64,
    ) -> Result<Submitted, SubmitError> {
        if let Some(held) = self.jobs.get(&spec.id) {
            return if held.spec == spec {
                Ok(Submitted::AlreadyKnown)
            } else {
                Err(SubmitError::Conflict(spec.id))
            };
        }
        spec.validate()?;
        if spec.deadline_ms <= now_ms {
            return Err(SubmitError::DeadlinePassed {
                deadline_ms: spec.deadline_ms,
                now_ms,
            });
        }
        if self.ctx.owned >= self.ctx.config.max_jobs {
            return Err(SubmitError::TooManyJobs {
                max: self.ctx.config.max_jobs,
            });
        }
        let tasks = spec.split.task_count();
        if self.ctx.tasks_held.saturating_add(tasks) > self.ctx.config.max_tasks {
            return Err(SubmitError::TooManyTasks {
                tasks,
                held: self.ctx.tasks_held,
                max: self.ctx.config.max_tasks,
            });
        }
        // validate() bounds the count by MAX_TASKS_PER_JOB, far below u32::MAX.
        let n = tasks as u32;
        // Every task must have a frame and region (the last is the extreme one).
        if crate::task::task_geometry(&spec.split, spec.width, spec.height, n.saturating_sub(1))
            .is_none()
        {
            return Err(SubmitError::Invalid(
                crate::wire::ValidationError::Invalid {
                    field: "split",
                    reason: format!("task {} has no frame or region", n - 1),
                },
            ));
        }
        let id = spec.id;
        let mut job = Job {
            need: Need::of(&spec),
            spec,
            frame,
            core: JobCore {
                owner: self.ctx.me,
                epoch: 0,
                escrowed_since_rep: Vec::new(),
                replica: None,
                revision: 0,
                submitted_at_ms: now_ms,
                finished_at_ms: None,
                cancelled: false,
                tasks: vec![TaskState::new(); n as usize],
                live: BTreeMap::new(),
                workers: Vec::new(),
                next_fresh: 0,
                requeued: VecDeque::new(),
                done: 0,
                failed: 0,
                queued_reason: None,
                blocked_until_ms: None,
                dirty: true,
                last_replicated_ms: 0,
                replicate_now: false,
                timer_at: None,
                checks: BTreeMap::new(),
                next_line: 0,
            },
            worker_ref: BTreeMap::new(),
            line_task: BTreeMap::new(),
        };
        self.ctx.owned += 1;
        self.ctx.tasks_held += tasks;
        self.ctx.stats.submitted += 1;
        job.core.replica = self.ctx.pick_replica(&job);
        self.ctx.mark_ready(&job, now_ms);
        self.ctx.rearm_job(&mut job);
        self.jobs.insert(id, job);
        Ok(Submitted::New { tasks: n })
    }

    /// Cancels a job for its creator: every open task fails as cancelled.
    pub fn cancel(
        &mut self,
        job: &JobId,
        by: &NodeId,
        now_ms: u64,
    ) -> Result<Cancelled, CancelError> {
        let j = self
            .jobs
            .get_mut(job)
            .ok_or(CancelError::UnknownJob(*job))?;
        if j.spec.creator != *by {
            return Err(CancelError::NotCreator {
                creator: j.spec.creator,
                by: *by,
            });
        }
        if j.core.owner != self.ctx.me {
            return Err(CancelError::NotOwner {
                job: *job,
                owner: j.core.owner,
            });
        }
        if j.is_finished() {
            return Ok(Cancelled::AlreadyFinished);
        }
        j.core.cancelled = true;
        self.ctx
            .fail_open_tasks(j, FailReason::Cancelled, CloseReason::Cancelled, now_ms);
        Ok(Cancelled::Cancelled)
    }

    /// A worker's answer to an offer (its signature checked by the driver).
    pub fn handle_accept(
        &mut self,
        accept: &TaskAccept,
        now_ms: u64,
    ) -> Result<AcceptOutcome, AcceptError> {
        let job =
            owned_job(&mut self.jobs, self.ctx.me, &accept.task.job).map_err(|e| match e {
                (j, None) => AcceptError::UnknownJob(j),
                (job, Some(owner)) => AcceptError::NotOwner { job, owner },
            })?;
        let index = accept.task.index;
        let tasks = job.n_tasks();
        if index >= tasks {
            return Err(AcceptError::UnknownTask { index, tasks });
        }
        // The line (the task, or one of its verification lines) offered this attempt.
        let line = job
            .line_with_attempt(index, accept.attempt)
            .unwrap_or(index);
        let task = job
            .task(line)
            .ok_or(AcceptError::UnknownTask { index, tasks })?;
        let is_current = job.worker_ref.get(&accept.worker) == Some(&task.worker)
            && task.attempt == accept.attempt;
        match task.phase {
            Phase::Offered if is_current => {
                let reserve_until_ms = job.core.live.get(&line).map_or(0, |l| l.reserve_until_ms);
                if !accept.accepted {
                    self.ctx.stats.declines += 1;
                    self.ctx.view.saturate(&accept.worker);
                    self.ctx.end_offer(job, line, false, now_ms);
                    return Ok(AcceptOutcome::Declined);
                }
                if now_ms >= reserve_until_ms {
                    self.ctx.stats.lapses += 1;
                    self.ctx.view.saturate(&accept.worker);
                    self.ctx.end_offer(job, line, true, now_ms);
                    return Err(AcceptError::Lapsed {
                        reserve_until_ms,
                        now_ms,
                    });
                }
                self.ctx.assign(job, line, accept.worker, now_ms);
                Ok(AcceptOutcome::Assigned)
            }
            Phase::Assigned if is_current && accept.accepted => Ok(AcceptOutcome::Duplicate),
            _ => {
                if accept.accepted {
                    self.ctx.actions.push_back(SchedulerAction::CancelTask {
                        worker: accept.worker,
                        task: accept.task,
                        attempt: accept.attempt,
                    });
                }
                Err(AcceptError::NotOffered {
                    index,
                    attempt: accept.attempt,
                    worker: accept.worker,
                })
            }
        }
    }

    /// The driver could not deliver an offer (or got no answer): it goes back
    /// to placement, and the worker gets nothing more until its next advert.
    pub fn handle_undeliverable(&mut self, task: &TaskId, attempt: u32, now_ms: u64) {
        let Ok(job) = owned_job(&mut self.jobs, self.ctx.me, &task.job) else {
            return;
        };
        if task.index >= job.n_tasks() {
            return;
        }
        let Some(line) = job.line_with_attempt(task.index, attempt) else {
            return;
        };
        let Some(t) = job.task(line) else {
            return;
        };
        if t.phase == Phase::Offered && t.attempt == attempt {
            if let Some(w) = job.worker_id(t.worker) {
                self.ctx.view.saturate(&w);
            }
            self.ctx.stats.lapses += 1;
            self.ctx.end_offer(job, line, true, now_ms);
        }
    }

    /// A worker's progress report, also its heartbeat.
    pub fn handle_progress(&mut self, p: &Progress, now_ms: u64) -> Result<(), ProgressError> {
        let job = owned_job(&mut self.jobs, self.ctx.me, &p.task.job).map_err(|e| match e {
            (j, None) => ProgressError::UnknownJob(j),
            (job, Some(owner)) => ProgressError::NotOwner { job, owner },
        })?;
        let index = p.task.index;
        let line = (index < job.n_tasks())
            .then(|| job.line_with_attempt(index, p.attempt))
            .flatten();
        let ours = |t: &TaskState| {
            t.attempt == p.attempt && job.worker_ref.get(&p.worker) == Some(&t.worker)
        };
        // The worker's first report can overtake its accept (they travel on
        // different streams): the offered worker of the current attempt is
        // not cancelled for it; the report changes nothing.
        if line
            .and_then(|l| job.task(l))
            .is_some_and(|t| t.phase == Phase::Offered && ours(t))
        {
            return Ok(());
        }
        let current = line
            .and_then(|l| job.task(l))
            .is_some_and(|t| t.phase == Phase::Assigned && ours(t));
        let (true, Some(line)) = (current, line) else {
            return Err(ProgressError::Cancelled {
                index,
                attempt: p.attempt,
            });
        };
        self.ctx.progress(job, line, p.seq, p.permille, now_ms);
        Ok(())
    }

    /// A worker's result (signature checked by the driver), with the signed
    /// frames the creator needs.
    pub fn handle_result(
        &mut self,
        result: &TaskResult,
        frames: ResultFrames,
        now_ms: u64,
    ) -> Result<ResultOutcome, ResultError> {
        let job =
            owned_job(&mut self.jobs, self.ctx.me, &result.task.job).map_err(|e| match e {
                (j, None) => ResultError::UnknownJob(j),
                (job, Some(owner)) => ResultError::NotOwner { job, owner },
            })?;
        let index = result.task.index;
        let tasks = job.n_tasks();
        let task = job
            .task(index)
            .ok_or(ResultError::UnknownTask { index, tasks })?;
        match task.phase {
            Phase::Done => {
                self.ctx.stats.duplicates += 1;
                return Ok(ResultOutcome::Duplicate);
            }
            Phase::Failed => {
                self.ctx.stats.too_late += 1;
                return Ok(ResultOutcome::TooLate);
            }
            _ => {}
        }
        let not_assigned = ResultError::NotAssigned {
            index,
            attempt: result.attempt,
            worker: result.worker,
        };
        let Some(&w) = job.worker_ref.get(&result.worker) else {
            return Err(not_assigned);
        };
        if job.core.checks.get(&index).is_some_and(|c| {
            c.votes
                .iter()
                .any(|v| v.worker == w && v.attempt == result.attempt)
        }) {
            self.ctx.stats.duplicates += 1;
            return Ok(ResultOutcome::Duplicate);
        }
        // The line that holds (or held, and lost) this attempt.
        let mut found = None;
        for line in job.lines_of(index) {
            let Some(t) = job.task(line) else {
                continue;
            };
            let current =
                t.phase == Phase::Assigned && t.worker == w && t.attempt == result.attempt;
            let earlier = t.phase != Phase::Voted
                && t.past.iter().any(|p| {
                    p.worker == w
                        && p.attempt == result.attempt
                        && matches!(p.kind, PastKind::Silent | PastKind::PastDeadline)
                });
            if current || earlier {
                found = Some((line, earlier));
                break;
            }
        }
        let Some((line, earlier)) = found else {
            return Err(not_assigned);
        };
        if earlier {
            self.ctx.stats.late_accepted += 1;
        }
        if job.core.checks.contains_key(&index) {
            self.ctx.vote(
                job,
                index,
                line,
                w,
                result.attempt,
                result.output_hash,
                frames,
                now_ms,
            );
            return Ok(ResultOutcome::Voted);
        }
        self.ctx
            .complete(job, index, w, result.attempt, frames, now_ms);
        Ok(ResultOutcome::Done)
    }

    /// A worker reports that its attempt failed (`reason` is kept, at most 256 bytes).
    pub fn handle_task_failed(
        &mut self,
        task: &TaskId,
        worker: &NodeId,
        attempt: u32,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), FailureError> {
        let job = owned_job(&mut self.jobs, self.ctx.me, &task.job).map_err(|e| match e {
            (j, None) => FailureError::UnknownJob(j),
            (job, Some(owner)) => FailureError::NotOwner { job, owner },
        })?;
        let line = (task.index < job.n_tasks())
            .then(|| job.line_with_attempt(task.index, attempt))
            .flatten();
        let current = line.and_then(|l| job.task(l)).is_some_and(|t| {
            t.phase == Phase::Assigned
                && t.attempt == attempt
                && job.worker_ref.get(worker) == Some(&t.worker)
        });
        let (true, Some(line)) = (current, line) else {
            return Err(FailureError::NotAssigned {
                index: task.index,
                attempt,
                worker: *worker,
            });
        };
        self.ctx.stats.reported_failures += 1;
        let reason = truncate(reason, 256);
        self.ctx.lose(
            job,
            line,
            PastKind::Reported,
            AttemptEnd::Reported { reason },
            now_ms,
        );
        Ok(())
    }

    /// The creator could not fetch the output of task `task`'s winning
    /// result (`attempt`): every source of it was unreachable, or the output
    /// did not match the hash its worker signed (`RpcRequest::Unfetchable`,
    /// the transport authenticating `from`). The task is done no longer: the
    /// attempt is closed unpaid (`Closed{Unfetchable}`, a lost outcome for its
    /// worker, who is not offered the task again) and the task runs again, or
    /// fails after `max_attempts`. Only the job's creator reports this; it
    /// gains nothing by lying (it pays only for outputs it countersigns), and
    /// each report costs one of the task's attempts.
    pub fn handle_unfetchable(
        &mut self,
        from: &NodeId,
        task: &TaskId,
        attempt: u32,
        now_ms: u64,
    ) -> Result<(), UnfetchableError> {
        let job = owned_job(&mut self.jobs, self.ctx.me, &task.job).map_err(|e| match e {
            (j, None) => UnfetchableError::UnknownJob(j),
            (job, Some(owner)) => UnfetchableError::NotOwner { job, owner },
        })?;
        if job.spec.creator != *from {
            return Err(UnfetchableError::NotCreator {
                creator: job.spec.creator,
                by: *from,
            });
        }
        let index = task.index;
        let not_done = UnfetchableError::NotDone { index, attempt };
        let Some(t) = job.task(index).filter(|_| index < job.n_tasks()) else {
            return Err(not_done);
        };
        if t.phase != Phase::Done || t.attempt != attempt {
            return Err(not_done);
        }
        if now_ms >= job.spec.deadline_ms {
            return Err(UnfetchableError::PastDeadline);
        }
        let worker = t.worker;
        self.ctx.stats.unfetchable += 1;
        job.core.done = job.core.done.saturating_sub(1);
        if job.core.finished_at_ms.take().is_some() {
            // Finished no longer: the job's timers run again.
            self.ctx.rearm_job(job);
        }
        if let Some(w) = job.worker_id(worker) {
            self.ctx.actions.push_back(SchedulerAction::Outcome {
                worker: w,
                task: *task,
                attempt,
                outcome: crate::reputation::Outcome::Lost,
            });
        }
        let max = self.ctx.config.max_attempts.max(1);
        let Some(t) = job.task_mut(index) else {
            return Err(not_done);
        };
        t.phase = Phase::Queued;
        t.permille = 0;
        t.past.push(Past {
            worker,
            attempt,
            kind: PastKind::Unfetchable,
        });
        t.failures = t.failures.saturating_add(1);
        let failures = t.failures;
        if failures >= max {
            self.ctx.fail_task(
                job,
                index,
                FailReason::Attempts {
                    failures,
                    last: AttemptEnd::Unfetchable,
                },
                CloseReason::TaskFailed,
                now_ms,
            );
        } else {
            // Refund the unfetchable attempt now: it can never win again.
            self.ctx.close_past(job, index);
            self.ctx.requeue(job, index, now_ms);
        }
        Ok(())
    }

    /// Runs timers due at `now_ms`, then placement if due. The only call that
    /// places tasks, hence the only one taking randomness.
    pub fn handle_timeout<G: rand_core::Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut G) {
        self.ctx.clock_ms = self.ctx.clock_ms.max(now_ms);
        while let Some(&(at, r)) = self.ctx.timers.first() {
            if at > now_ms {
                break;
            }
            self.ctx.timers.pop_first();
            match r {
                TimerRef::Node(slot) => {
                    let Some(e) = self.ctx.view.entry_mut(slot).filter(|e| e.timer_at == at) else {
                        continue;
                    };
                    if e.expires_at_ms <= at {
                        let id = e.id;
                        self.forget_node(&id, now_ms);
                    } else {
                        // Refreshed since the timer was armed: re-arm at the expiry.
                        e.timer_at = e.expires_at_ms;
                        self.ctx.timers.insert((e.timer_at, TimerRef::Node(slot)));
                    }
                }
                TimerRef::Task(job, index) => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        self.ctx.fire_task(j, index, at, now_ms);
                    }
                }
                TimerRef::Job(job) => self.fire_job(&job, at, now_ms),
            }
        }
        if self.ctx.place_due.is_some_and(|at| at <= now_ms) {
            self.ctx.place_due = None;
            self.place(now_ms, rng);
        }
    }

    fn fire_job(&mut self, id: &JobId, at: u64, now_ms: u64) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        if job.core.timer_at != Some(at) {
            return;
        }
        job.core.timer_at = None;
        let prune = self.ctx.fire_job(job, now_ms);
        if prune && let Some(job) = self.jobs.remove(id) {
            self.ctx.forget_job(&job);
        }
    }
}

/// The job, if held and owned by `me`; else its id and owner (if held).
fn owned_job<'a>(
    jobs: &'a mut BTreeMap<JobId, Job>,
    me: NodeId,
    job: &JobId,
) -> Result<&'a mut Job, (JobId, Option<NodeId>)> {
    match jobs.get_mut(job) {
        None => Err((*job, None)),
        Some(j) if j.core.owner != me => Err((*job, Some(j.core.owner))),
        Some(j) => Ok(j),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
