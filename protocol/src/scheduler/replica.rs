//! Replication to the HRW runner-up and takeover by the replica.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::job::{Cmp, Job, JobCore, Phase, TaskState};
use super::{
    ATTEMPT_GAP, Ctx, JobEvent, JobSnapshot, ReplicaError, Scheduler, SchedulerAction,
    TakeOverError,
};
use crate::hrw;
use crate::identity::NodeId;
use crate::placement::Need;
use crate::signed::Signed;
use crate::wire::{JobId, JobSpec, VerificationPolicy};

impl Ctx {
    /// The HRW best live scheduler for the job other than this one and its owner.
    pub(crate) fn pick_replica(&self, job: &Job) -> Option<NodeId> {
        hrw::owner_excluding(
            hrw::job_key(&job.spec.id),
            self.view.schedulers.iter(),
            &[self.me, job.core.owner],
        )
    }

    /// Sends the whole job state to its replica.
    pub(crate) fn replicate(&mut self, job: &mut Job, now_ms: u64) {
        job.core.replica = self.pick_replica(job);
        job.core.dirty = false;
        job.core.replicate_now = false;
        job.core.last_replicated_ms = now_ms;
        let Some(to) = job.core.replica else {
            return;
        };
        job.core.escrowed_since_rep.clear();
        job.core.revision += 1;
        for t in &mut job.core.tasks {
            t.offers_since_rep = 0;
        }
        self.stats.replications += 1;
        self.actions.push_back(SchedulerAction::Replicate {
            to,
            snapshot: Box::new(JobSnapshot {
                job: job.spec.id,
                frame: job.frame.clone(),
                core: job.core.clone(),
            }),
        });
    }
}

/// Checks a job's state against its spec: every count, index and reference
/// in range and consistent, so no later step can index out of bounds.
pub(crate) fn validate_core(spec: &JobSpec, core: &JobCore) -> Result<(), String> {
    let n = spec.split.task_count();
    if core.tasks.len() as u64 != n {
        return Err(format!(
            "{} tasks, the spec splits into {n}",
            core.tasks.len()
        ));
    }
    let n = core.tasks.len() as u32;
    let workers = core.workers.len() as u32;
    let mut seen: Vec<&NodeId> = core.workers.iter().collect();
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return Err("a worker is listed twice".into());
    }
    let lines = u64::from(n) + u64::from(core.next_line);
    if core.escrowed_since_rep.len() as u64 > lines.saturating_mul(256)
        || core.escrowed_since_rep.iter().any(|(t, _)| *t >= n)
    {
        return Err("escrows since the last replication out of range".into());
    }
    if core.next_fresh > n {
        return Err(format!("next_fresh {} > {n} tasks", core.next_fresh));
    }
    // Verification lines: ids in range and unique, each of one check.
    let spot = matches!(spec.verification, VerificationPolicy::SpotCheck { .. });
    let max_line = u64::from(n) + u64::from(core.next_line);
    let mut line_of: BTreeMap<u32, u32> = BTreeMap::new();
    for (t, c) in &core.checks {
        if *t >= n || matches!(spec.verification, VerificationPolicy::None) {
            return Err(format!("a check names task {t}"));
        }
        if c.lines.len() > 2 * usize::from(crate::verify::MAX_QUORUM_K)
            || c.votes.len() > c.lines.len() + 1
        {
            return Err(format!("check of task {t} has too many lines or votes"));
        }
        let crop_ok = match (spot, c.crop) {
            (true, Some(r)) => r.fits(spec.width, spec.height),
            (false, None) => true,
            _ => false,
        };
        if !crop_ok {
            return Err(format!("check of task {t}: crop does not fit the policy"));
        }
        for (v, _) in &c.lines {
            if *v < n || u64::from(*v) >= max_line || line_of.insert(*v, *t).is_some() {
                return Err(format!("line {v} out of range or twice"));
            }
        }
        let mut voted = std::collections::BTreeSet::new();
        for vote in &c.votes {
            let own = vote.line == *t || line_of.get(&vote.line) == Some(t);
            if !own || vote.worker >= workers || !voted.insert(vote.line) {
                return Err(format!("check of task {t}: a vote is inconsistent"));
            }
        }
    }
    let is_line = |v: u32| v < n || line_of.contains_key(&v);
    let mut queued = std::collections::BTreeSet::new();
    for &i in &core.requeued {
        if !is_line(i) || i >= core.next_fresh && i < n || !queued.insert(i) {
            return Err(format!("queued task {i} out of range or twice"));
        }
    }
    let in_queue = |i: u32| queued.contains(&i) || (i >= core.next_fresh && i < n);
    let has_vote = |task: u32, line: u32, t: &TaskState| {
        core.checks.get(&task).is_some_and(|c| {
            c.votes
                .iter()
                .any(|v| v.line == line && v.worker == t.worker && v.attempt == t.attempt)
        })
    };
    let line_ok = |task: u32, i: u32, t: &TaskState, is_task: bool| -> bool {
        let live = core.live.contains_key(&i);
        let q = in_queue(i);
        let ok = match t.phase {
            Phase::Queued => !live && q,
            Phase::Offered | Phase::Assigned => live && !q && t.worker < workers,
            Phase::Voted => !live && !q && t.worker < workers && has_vote(task, i, t),
            Phase::Done => is_task && !live && !q && t.worker < workers,
            Phase::Failed => !live && !q,
        };
        ok && t.past.iter().all(|p| p.worker < workers) && t.permille <= 1000
    };
    let (mut done, mut failed) = (0u32, 0u32);
    for (i, t) in core.tasks.iter().enumerate() {
        let i = i as u32;
        let checked = core.checks.contains_key(&i);
        match t.phase {
            Phase::Done => done += 1,
            Phase::Failed => failed += 1,
            _ => {}
        }
        if !line_ok(i, i, t, true) || (t.is_terminal() && checked) {
            return Err(format!("task {i} is inconsistent ({:?})", t.phase));
        }
    }
    for (task, c) in &core.checks {
        for (v, t) in &c.lines {
            if !line_ok(*task, *v, t, false) {
                return Err(format!(
                    "line {v} of task {task} is inconsistent ({:?})",
                    t.phase
                ));
            }
        }
    }
    if core.live.keys().any(|k| !is_line(*k)) {
        return Err("a live attempt names no task or line".into());
    }
    if done != core.done || failed != core.failed {
        return Err(format!(
            "counts done {} failed {}, tasks say {done} and {failed}",
            core.done, core.failed
        ));
    }
    if core.finished_at_ms.is_some() != (done + failed == n) {
        return Err("finished flag disagrees with the tasks".into());
    }
    Ok(())
}

/// Whether claim `a` (epoch, claimant) to own job `id` beats claim `b`: the
/// higher epoch (more takeovers behind it) wins; at equal epochs the
/// claimant HRW ranks higher for the job. Both sides compute the same answer.
pub(crate) fn claim_beats(id: &JobId, a: (u32, NodeId), b: (u32, NodeId)) -> bool {
    a.0 > b.0
        || (a.0 == b.0 && a.1 != b.1 && hrw::owner(hrw::job_key(id), [&a.1, &b.1]) == Some(a.1))
}

/// Every attempt a job state lists, as (task, attempt, worker): current
/// attempts of offered, assigned, voted and done lines, and past ones.
pub(crate) fn attempts_listed(job: &Job) -> std::collections::BTreeSet<(u32, u32, NodeId)> {
    let mut out = std::collections::BTreeSet::new();
    for line in all_lines(job) {
        let Some(t) = job.task(line) else {
            continue;
        };
        let task = job.task_of(line);
        if matches!(
            t.phase,
            Phase::Offered | Phase::Assigned | Phase::Voted | Phase::Done
        ) && let Some(w) = job.worker_id(t.worker)
        {
            out.insert((task, t.attempt, w));
        }
        for p in &t.past {
            if let Some(w) = job.worker_id(p.worker) {
                out.insert((task, p.attempt, w));
            }
        }
    }
    out
}

/// Every line of a job: its tasks, then its verification lines.
fn all_lines(job: &Job) -> Vec<u32> {
    (0..job.n_tasks())
        .chain(job.line_task.keys().copied())
        .collect()
}

/// Builds a held job from its spec and state.
pub(crate) fn job_from(spec: JobSpec, frame: std::sync::Arc<[u8]>, core: JobCore) -> Job {
    let (worker_ref, line_task) = derived_of(&core);
    Job {
        need: Need::of(&spec),
        spec,
        frame,
        core,
        worker_ref,
        line_task,
    }
}

/// A newer replica of a job we hold: the same spec (checked by the caller),
/// so its requirements stand; only the state and what derives from it change.
///
/// The worker list only grows while a job lives (`Job::worker_index`
/// appends): when the new one extends the held one, only the new workers
/// enter the index. Rebuilding the whole index for every replica was 3.5% of a
/// 100 000-node simulation; anything else (another owner's list) rebuilds it.
fn replace_core(job: &mut Job, frame: std::sync::Arc<[u8]>, core: JobCore) {
    let held = job.core.workers.len();
    if core.workers.starts_with(&job.core.workers) {
        for (i, w) in core.workers.iter().enumerate().skip(held) {
            job.worker_ref.insert(*w, i as u32);
        }
        job.line_task = line_task_of(&core);
    } else {
        let (worker_ref, line_task) = derived_of(&core);
        job.worker_ref = worker_ref;
        job.line_task = line_task;
    }
    // The tests (debug builds, replicas driven by the property tests) hold
    // the incremental index to the full rebuild.
    debug_assert!(job.worker_ref == derived_of(&core).0);
    job.frame = frame;
    job.core = core;
}

/// The lookups a [`Job`] keeps beside its core: worker → index, line → task.
fn derived_of(core: &JobCore) -> (BTreeMap<NodeId, u32>, BTreeMap<u32, u32>) {
    let worker_ref = core
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| (*w, i as u32))
        .collect();
    (worker_ref, line_task_of(core))
}

/// A job's verification lines → their task.
fn line_task_of(core: &JobCore) -> BTreeMap<u32, u32> {
    core.checks
        .iter()
        .flat_map(|(t, c)| c.lines.iter().map(move |(l, _)| (*l, *t)))
        .collect()
}

impl Scheduler {
    /// The set of live schedulers changed: owned jobs whose replica changes
    /// replicate to the new one at once.
    pub(crate) fn schedulers_changed(&mut self, _now_ms: u64) {
        let me = self.ctx.me;
        for job in self.jobs.values_mut() {
            if job.core.owner != me || job.is_finished() {
                continue;
            }
            let r = self.ctx.pick_replica(job);
            if r != job.core.replica {
                job.core.replica = r;
                job.core.dirty = true;
                job.core.replicate_now = r.is_some();
                self.ctx.rearm_job(job);
            }
        }
    }

    /// A scheduler left the view: take over each replicated job whose owner
    /// is no live scheduler here and for which this node is now the HRW best
    /// live scheduler (so a replica the owner stopped updating, because a
    /// better-ranked scheduler joined, does not take over beside it).
    pub(crate) fn scheduler_gone(&mut self, _node: &NodeId, now_ms: u64) {
        let me = self.ctx.me;
        let schedulers = &self.ctx.view.schedulers;
        let orphans: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.core.owner != me && !schedulers.contains(&j.core.owner))
            .filter(|(id, j)| {
                hrw::owner_excluding(
                    hrw::job_key(id),
                    schedulers.iter().chain(std::iter::once(&me)),
                    &[j.core.owner],
                ) == Some(me)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            self.take_over_job(&id, now_ms);
        }
    }

    /// Takes over a job this scheduler replicates (the driver learned that its
    /// owner is gone).
    pub fn take_over(&mut self, job: &JobId, now_ms: u64) -> Result<(), TakeOverError> {
        match self.jobs.get(job) {
            None => Err(TakeOverError::UnknownJob(*job)),
            Some(j) if j.core.owner == self.ctx.me => Err(TakeOverError::AlreadyOwner(*job)),
            Some(_) => {
                self.take_over_job(job, now_ms);
                Ok(())
            }
        }
    }

    fn take_over_job(&mut self, id: &JobId, now_ms: u64) {
        let me = self.ctx.me;
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        if job.core.owner == me {
            return;
        }
        self.ctx.replicas = self.ctx.replicas.saturating_sub(1);
        self.ctx.owned += 1;
        self.ctx.stats.takeovers += 1;
        job.core.owner = me;
        job.core.epoch = job.core.epoch.saturating_add(1);
        job.core.escrowed_since_rep.clear();
        for t in job.core.tasks.iter_mut().filter(|t| !t.is_terminal()) {
            t.next_attempt = t.next_attempt.saturating_add(ATTEMPT_GAP);
            t.offers_since_rep = 0;
        }
        let live: Vec<u32> = job.core.live.keys().copied().collect();
        for index in live {
            self.ctx.adopt_live(job, index, now_ms);
        }
        job.core.blocked_until_ms = None;
        job.core.replica = self.ctx.pick_replica(job);
        job.core.dirty = true;
        job.core.replicate_now = job.core.replica.is_some();
        self.ctx.notify(job, JobEvent::TakenOver { by: me });
        // Comparisons the creator may have answered to the old owner: ask again.
        let checks: Vec<u32> = job.core.checks.keys().copied().collect();
        for c in job.core.checks.values_mut() {
            for v in &mut c.votes {
                if v.cmp == Cmp::Sent {
                    v.cmp = Cmp::NotSent;
                }
            }
        }
        for task in checks {
            self.ctx.evaluate(job, task, now_ms);
        }
        self.ctx.mark_ready(job, now_ms);
        self.ctx.rearm_job(job);
    }

    /// Gives an owned job up to a newer claim (`core`, from the scheduler
    /// that took it over while this one was away) and keeps the winner's
    /// state as its replica.
    ///
    /// **Decision: what the loser settles.** The winner's state descends from
    /// the last one this scheduler replicated, so whatever that state held is
    /// the winner's to settle (it may have settled it already, so the
    /// winner's current state is no guide to it). What happened since, only
    /// this scheduler knows: attempts offered since (the last
    /// `offers_since_rep` attempt numbers of each task) are called off
    /// (`CancelTask`) unless the winner's state lists them, and attempts
    /// escrowed since (`escrowed_since_rep`) are refunded (`Closed`:
    /// `Yielded` for a current attempt, its own reason for a past one).
    fn yield_job(&mut self, id: &JobId, frame: Arc<[u8]>, mut core: JobCore, now_ms: u64) {
        let Some(mut job) = self.jobs.remove(id) else {
            return;
        };
        core.timer_at = None;
        let winner = job_from(job.spec.clone(), frame, core);
        let known = attempts_listed(&winner);
        let escrowed: std::collections::BTreeSet<(u32, u32)> =
            job.core.escrowed_since_rep.iter().copied().collect();
        let offered_since = |job: &Job, task: u32, attempt: u32| {
            job.task(task).is_some_and(|t| {
                attempt >= t.next_attempt.saturating_sub(u32::from(t.offers_since_rep))
            })
        };
        let lines: Vec<u32> = job.core.live.keys().copied().collect();
        for line in lines {
            let Some(ended) = self.ctx.end_live(&mut job, line, now_ms) else {
                continue;
            };
            let Some(worker) = job.worker_id(ended.worker) else {
                continue;
            };
            let task = job.task_of(line);
            let ours_escrow = escrowed.contains(&(task, ended.attempt));
            if (ours_escrow || offered_since(&job, task, ended.attempt))
                && !known.contains(&(task, ended.attempt, worker))
            {
                self.ctx.cancel_action(&job, line, &ended);
            }
            if ours_escrow && ended.phase == Phase::Assigned {
                self.ctx.actions.push_back(SchedulerAction::Closed {
                    task: job.task_id(line),
                    attempt: ended.attempt,
                    worker,
                    reason: super::CloseReason::Yielded,
                });
            }
        }
        for line in all_lines(&job) {
            let past = job.task(line).map(|t| t.past.clone()).unwrap_or_default();
            for p in past {
                let Some(worker) = job.worker_id(p.worker) else {
                    continue;
                };
                if escrowed.contains(&(job.task_of(line), p.attempt)) {
                    self.ctx.actions.push_back(SchedulerAction::Closed {
                        task: job.task_id(line),
                        attempt: p.attempt,
                        worker,
                        reason: p.kind.close_reason(),
                    });
                }
            }
        }
        // Out of the owner's books (timers, queue, counts), into a replica's.
        self.ctx.forget_job(&job);
        self.ctx.tasks_held += u64::from(winner.n_tasks());
        self.ctx.replicas += 1;
        self.ctx.stats.yields += 1;
        let mut held = winner;
        self.ctx.rearm_job(&mut held);
        self.jobs.insert(*id, held);
    }

    /// A job's state from its owner, to keep as a replica.
    pub fn handle_replica(
        &mut self,
        from: &NodeId,
        snapshot: JobSnapshot,
        now_ms: u64,
    ) -> Result<(), ReplicaError> {
        let JobSnapshot {
            job: id,
            frame,
            mut core,
        } = snapshot;
        if core.owner != *from || *from == self.ctx.me {
            return Err(ReplicaError::NotFromOwner {
                owner: core.owner,
                from: *from,
            });
        }
        if !self.ctx.view.schedulers.contains(from) {
            return Err(ReplicaError::NotAScheduler(*from));
        }
        // Our timers, not the owner's; its own escrow list is its own.
        core.timer_at = None;
        core.escrowed_since_rep.clear();
        if let Some(held) = self.jobs.get_mut(&id) {
            if !Arc::ptr_eq(&held.frame, &frame) && *held.frame != *frame {
                return Err(ReplicaError::Conflict(id));
            }
            let me = self.ctx.me;
            if held.core.owner == me {
                // Two claims to own the job: the newer one wins, but only
                // from our HRW runner-up among the live schedulers, the one
                // that takes the job over if we go silent. The epoch is the
                // sender's word: any other scheduler could name a higher one
                // and take every job it knows the spec of.
                let runner_up =
                    hrw::owner_excluding(hrw::job_key(&id), self.ctx.view.schedulers.iter(), &[me]);
                if runner_up == Some(*from) {
                    if claim_beats(&id, (core.epoch, *from), (held.core.epoch, me)) {
                        validate_core(&held.spec, &core).map_err(ReplicaError::Invalid)?;
                        self.yield_job(&id, frame, core, now_ms);
                        return Ok(());
                    }
                } else if claim_beats(&id, (core.epoch, *from), (held.core.epoch, me)) {
                    return Err(ReplicaError::WeOwn(id));
                }
                // Ours stands: send it at once, so the sender yields now
                // rather than when its turn as our replica comes.
                self.ctx.stats.replications += 1;
                self.ctx.actions.push_back(SchedulerAction::Replicate {
                    to: *from,
                    snapshot: Box::new(JobSnapshot {
                        job: id,
                        frame: held.frame.clone(),
                        core: held.core.clone(),
                    }),
                });
                return Err(ReplicaError::WeOwn(id));
            }
            if held.core.owner != *from
                && claim_beats(&id, (held.core.epoch, held.core.owner), (core.epoch, *from))
            {
                return Err(ReplicaError::OlderClaim {
                    held: held.core.epoch,
                    got: core.epoch,
                });
            }
            if held.core.owner == *from && core.revision <= held.core.revision {
                return Err(ReplicaError::Stale {
                    held: held.core.revision,
                    got: core.revision,
                });
            }
            validate_core(&held.spec, &core).map_err(ReplicaError::Invalid)?;
            if let Some(at) = held.core.timer_at {
                self.ctx.timers.remove(&(at, super::TimerRef::Job(id)));
            }
            replace_core(held, frame, core);
            self.ctx.rearm_job(held);
            return Ok(());
        }
        if self.ctx.replicas >= self.ctx.config.max_replicas {
            return Err(ReplicaError::TooMany {
                max: self.ctx.config.max_replicas,
            });
        }
        let spec = Signed::<JobSpec>::from_slice(&frame)?.verify()?;
        if spec.id != id {
            return Err(ReplicaError::Invalid(format!(
                "snapshot of job {id} carries the spec of {}",
                spec.id
            )));
        }
        let tasks = spec.split.task_count();
        if self.ctx.tasks_held.saturating_add(tasks) > self.ctx.config.max_tasks {
            return Err(ReplicaError::TooManyTasks {
                tasks,
                max: self.ctx.config.max_tasks,
            });
        }
        validate_core(&spec, &core).map_err(ReplicaError::Invalid)?;
        let mut job = job_from(spec, frame, core);
        self.ctx.replicas += 1;
        self.ctx.tasks_held += tasks;
        self.ctx.rearm_job(&mut job);
        self.jobs.insert(id, job);
        Ok(())
    }
}
