//! Tracking: the transitions of a task's attempts, and the timers.

use super::job::{Job, Live, Past, PastKind, Phase};
use super::view::Hold;
use super::{
    AttemptEnd, CloseReason, Ctx, FailReason, JobEvent, ResultFrames, SchedulerAction, TimerRef,
};
use crate::identity::NodeId;
use crate::reputation::Outcome;

/// The attempt that just stopped being current.
pub(crate) struct Ended {
    pub(crate) worker: u32,
    pub(crate) attempt: u32,
    pub(crate) phase: Phase,
    pub(crate) live: Live,
}

impl Ctx {
    pub(crate) fn notify(&mut self, job: &Job, event: JobEvent) {
        if job.core.owner == self.me {
            self.actions.push_back(SchedulerAction::Notify {
                creator: job.spec.creator,
                job: job.spec.id,
                event,
            });
        }
    }

    /// Moves the current attempt's timer of task `index` to `at`.
    pub(crate) fn set_task_timer(&mut self, job: &mut Job, index: u32, at: u64) {
        let id = job.spec.id;
        if let Some(l) = job.core.live.get_mut(&index) {
            self.timers.remove(&(l.timer_at, TimerRef::Task(id, index)));
            l.timer_at = at;
            self.timers.insert((at, TimerRef::Task(id, index)));
        }
    }

    /// Recomputes the job's timer: deadline, retry, replication, pruning.
    pub(crate) fn rearm_job(&mut self, job: &mut Job) {
        let owner = job.core.owner == self.me;
        let mut at: Option<u64> = None;
        let mut add = |t: u64| at = Some(at.map_or(t, |a| a.min(t)));
        match job.core.finished_at_ms {
            Some(done) => add(done.saturating_add(self.retention_ms(job))),
            None if owner => add(job.spec.deadline_ms),
            None => {}
        }
        if let Some(t) = job.core.blocked_until_ms {
            add(t);
        }
        if owner && job.core.replica.is_some() && (job.core.dirty || job.core.replicate_now) {
            let due = if job.core.replicate_now {
                0
            } else {
                job.core
                    .last_replicated_ms
                    .saturating_add(self.config.replicate_interval_ms)
            };
            add(due.max(self.claiming_until_ms));
        }
        if at != job.core.timer_at {
            let id = job.spec.id;
            if let Some(old) = job.core.timer_at {
                self.timers.remove(&(old, TimerRef::Job(id)));
            }
            if let Some(new) = at {
                self.timers.insert((new, TimerRef::Job(id)));
            }
            job.core.timer_at = at;
        }
    }

    /// How long the job is kept once finished: longer after a takeover.
    pub(crate) fn retention_ms(&self, job: &Job) -> u64 {
        if job.core.epoch > 0 {
            self.config
                .takeover_retention_ms
                .max(self.config.finished_retention_ms)
        } else {
            self.config.finished_retention_ms
        }
    }

    /// Marks the job changed since its last replication.
    pub(crate) fn mark_dirty(&mut self, job: &mut Job) {
        if !job.core.dirty {
            job.core.dirty = true;
            self.rearm_job(job);
        }
    }

    /// Queues placement for the job if it has queued tasks and is not waiting.
    pub(crate) fn mark_ready(&mut self, job: &Job, now_ms: u64) {
        if job.core.owner == self.me
            && !job.is_finished()
            && job.core.blocked_until_ms.is_none()
            && job.queued_len() > 0
        {
            self.ready.insert(job.spec.id);
            self.place_due = Some(self.place_due.map_or(now_ms, |t| t.min(now_ms)));
        }
    }

    /// Takes the current attempt of task `index` off: timer, hold, in-flight count.
    pub(crate) fn end_live(&mut self, job: &mut Job, index: u32, now_ms: u64) -> Option<Ended> {
        let live = job.core.live.remove(&index)?;
        self.timers
            .remove(&(live.timer_at, TimerRef::Task(job.spec.id, index)));
        let task = job.task(index)?;
        let ended = Ended {
            worker: task.worker,
            attempt: task.attempt,
            phase: task.phase,
            live,
        };
        if let Some(w) = job.worker_id(ended.worker) {
            self.view.release(&w, ended.live.hold);
            self.release_held(&w);
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if !self.ready.is_empty() {
            self.place_due = Some(self.place_due.map_or(now_ms, |t| t.min(now_ms)));
        }
        Some(ended)
    }

    pub(crate) fn cancel_action(&mut self, job: &Job, index: u32, ended: &Ended) {
        if let Some(worker) = job.worker_id(ended.worker) {
            self.actions.push_back(SchedulerAction::CancelTask {
                worker,
                task: job.task_id(index),
                attempt: ended.attempt,
            });
        }
    }

    /// Puts a task back in the queue.
    pub(crate) fn requeue(&mut self, job: &mut Job, index: u32, now_ms: u64) {
        if let Some(t) = job.task_mut(index) {
            t.phase = Phase::Queued;
            t.permille = 0;
        }
        job.core.requeued.push_back(index);
        self.mark_ready(job, now_ms);
        self.mark_dirty(job);
    }

    /// An offer ends unanswered or declined: back to the queue. With `cancel`
    /// the worker is told to drop it (it may have accepted unheard).
    pub(crate) fn end_offer(&mut self, job: &mut Job, index: u32, cancel: bool, now_ms: u64) {
        if let Some(ended) = self.end_live(job, index, now_ms) {
            if cancel {
                self.cancel_action(job, index, &ended);
            }
            self.requeue(job, index, now_ms);
        }
    }

    /// The offered worker accepted.
    pub(crate) fn assign(&mut self, job: &mut Job, index: u32, worker: NodeId, now_ms: u64) {
        let hb = self.config.heartbeat_timeout_ms;
        let Some(live) = job.core.live.get_mut(&index) else {
            return;
        };
        live.hold = self.view.offer_accepted(&worker, live.hold);
        live.last_heard_ms = now_ms;
        let (price, at) = (live.price, now_ms.saturating_add(hb).min(live.deadline_ms));
        let Some(task) = job.task_mut(index) else {
            return;
        };
        task.phase = Phase::Assigned;
        let attempt = task.attempt;
        let escrowed = (job.task_of(index), attempt);
        job.core.escrowed_since_rep.push(escrowed);
        self.set_task_timer(job, index, at);
        self.stats.accepts += 1;
        self.actions.push_back(SchedulerAction::Escrow {
            task: job.task_id(index),
            attempt,
            worker,
            price,
        });
        if !job.is_line(index) {
            self.notify(
                job,
                JobEvent::Assigned {
                    task: index,
                    worker,
                    attempt,
                },
            );
        }
        self.mark_dirty(job);
    }

    /// Progress from the current worker: refreshes the heartbeat.
    pub(crate) fn progress(
        &mut self,
        job: &mut Job,
        index: u32,
        seq: u32,
        permille: u16,
        now_ms: u64,
    ) {
        let hb = self.config.heartbeat_timeout_ms;
        let step = self.config.progress_step_permille.max(1);
        let Some(live) = job.core.live.get_mut(&index) else {
            return;
        };
        if live.progress_seq.is_some_and(|s| seq <= s) {
            return; // replayed or reordered: changes nothing
        }
        live.progress_seq = Some(seq);
        live.last_heard_ms = now_ms;
        let permille = permille.min(1000);
        let tell = permille >= live.notified_permille.saturating_add(step)
            || (permille == 1000 && live.notified_permille < 1000);
        if tell {
            live.notified_permille = permille;
        }
        let at = now_ms.saturating_add(hb).min(live.deadline_ms);
        // Lazy, like the view's node expiry: a timer armed no later than
        // `at` stays where it is, and `fire_task` re-arms it from
        // `last_heard_ms` when it fires, so the task is lost at exactly the
        // same time; a heartbeat then costs no timer-set update (two were
        // 3% of a 100 000-node simulation).
        let armed = live.timer_at;
        if let Some(t) = job.task_mut(index) {
            t.permille = permille;
        }
        if at < armed {
            self.set_task_timer(job, index, at);
        }
        if tell && !job.is_line(index) {
            self.notify(
                job,
                JobEvent::Progress {
                    task: index,
                    permille,
                },
            );
        }
    }

    /// The current accepted attempt is lost or failed: exclude its worker and
    /// offer again, or fail the task after `max_attempts`.
    pub(crate) fn lose(
        &mut self,
        job: &mut Job,
        index: u32,
        kind: PastKind,
        end: AttemptEnd,
        now_ms: u64,
    ) {
        let Some(ended) = self.end_live(job, index, now_ms) else {
            return;
        };
        if kind != PastKind::Reported {
            self.cancel_action(job, index, &ended);
            self.stats.lost += 1;
        }
        if let Some(worker) = job.worker_id(ended.worker) {
            self.actions.push_back(SchedulerAction::Outcome {
                worker,
                task: job.task_id(index),
                attempt: ended.attempt,
                outcome: Outcome::Lost,
            });
        }
        let max = self.config.max_attempts.max(1);
        let Some(task) = job.task_mut(index) else {
            return;
        };
        task.past.push(Past {
            worker: ended.worker,
            attempt: ended.attempt,
            kind,
        });
        task.failures = task.failures.saturating_add(1);
        let failures = task.failures;
        if failures >= max && job.is_line(index) {
            self.fail_line(job, index, now_ms);
        } else if failures >= max {
            self.fail_task(
                job,
                index,
                FailReason::Attempts {
                    failures,
                    last: end,
                },
                CloseReason::TaskFailed,
                now_ms,
            );
        } else {
            self.requeue(job, index, now_ms);
        }
    }

    /// Refunds every escrowed attempt of line `index` that did not win.
    pub(crate) fn close_past(&mut self, job: &mut Job, index: u32) {
        let Some(task) = job.task_mut(index) else {
            return;
        };
        let past = std::mem::take(&mut task.past);
        for p in past {
            if let Some(worker) = job.worker_id(p.worker) {
                self.actions.push_back(SchedulerAction::Closed {
                    task: job.task_id(index),
                    attempt: p.attempt,
                    worker,
                    reason: p.kind.close_reason(),
                });
            }
        }
    }

    /// The task is done with the result of (`worker`, `attempt`).
    pub(crate) fn complete(
        &mut self,
        job: &mut Job,
        index: u32,
        worker: u32,
        attempt: u32,
        frames: ResultFrames,
        now_ms: u64,
    ) {
        if let Some(ended) = self.end_live(job, index, now_ms)
            && !(ended.worker == worker && ended.attempt == attempt)
        {
            self.cancel_action(job, index, &ended);
            if ended.phase == Phase::Assigned
                && let Some(t) = job.task_mut(index)
            {
                t.past.push(Past {
                    worker: ended.worker,
                    attempt: ended.attempt,
                    kind: PastKind::Superseded,
                });
            }
        }
        if let Some(t) = job.task_mut(index) {
            t.past
                .retain(|p| !(p.worker == worker && p.attempt == attempt));
            if t.phase == Phase::Queued {
                // A lost attempt's result arrived while the task waited for a re-offer.
                job.core.requeued.retain(|i| *i != index);
                if job.queued_len() == 0 {
                    self.ready.remove(&job.spec.id);
                }
            }
        }
        self.close_past(job, index);
        let Some(t) = job.task_mut(index) else {
            return;
        };
        t.phase = Phase::Done;
        t.worker = worker;
        t.attempt = attempt;
        t.permille = 1000;
        job.core.done += 1;
        self.stats.done += 1;
        if let Some(w) = job.worker_id(worker) {
            self.notify(
                job,
                JobEvent::Done {
                    task: index,
                    worker: w,
                    attempt,
                    frames,
                },
            );
        }
        self.mark_dirty(job);
        self.check_finished(job, now_ms);
    }

    /// The task fails for good; its current attempt (if any) is cancelled.
    pub(crate) fn fail_task(
        &mut self,
        job: &mut Job,
        index: u32,
        reason: FailReason,
        close: CloseReason,
        now_ms: u64,
    ) {
        if let Some(ended) = self.end_live(job, index, now_ms) {
            self.cancel_action(job, index, &ended);
            if ended.phase == Phase::Assigned
                && let Some(worker) = job.worker_id(ended.worker)
            {
                self.actions.push_back(SchedulerAction::Closed {
                    task: job.task_id(index),
                    attempt: ended.attempt,
                    worker,
                    reason: close,
                });
            }
        }
        self.close_past(job, index);
        self.close_check(job, index, None, &[], close, now_ms);
        let Some(t) = job.task_mut(index) else {
            return;
        };
        if t.is_terminal() {
            return;
        }
        t.phase = Phase::Failed;
        t.failure = Some(reason.clone());
        let attempt = t.next_attempt.checked_sub(1);
        job.core.failed += 1;
        self.stats.failed += 1;
        self.notify(
            job,
            JobEvent::Failed {
                task: index,
                attempt,
                reason,
            },
        );
        self.mark_dirty(job);
        self.check_finished(job, now_ms);
    }

    /// Fails every task not done or failed yet (cancel, job deadline).
    pub(crate) fn fail_open_tasks(
        &mut self,
        job: &mut Job,
        reason: FailReason,
        close: CloseReason,
        now_ms: u64,
    ) {
        job.clear_queue();
        self.ready.remove(&job.spec.id);
        for index in 0..job.n_tasks() {
            if job.task(index).is_some_and(|t| !t.is_terminal()) {
                self.fail_task(job, index, reason.clone(), close, now_ms);
            }
        }
    }

    pub(crate) fn check_finished(&mut self, job: &mut Job, now_ms: u64) {
        if job.core.finished_at_ms.is_none() && job.core.done + job.core.failed >= job.n_tasks() {
            job.core.finished_at_ms = Some(now_ms);
            job.core.blocked_until_ms = None;
            job.core.queued_reason = None;
            self.ready.remove(&job.spec.id);
            let (done, failed) = (job.core.done, job.core.failed);
            self.notify(job, JobEvent::JobFinished { done, failed });
            self.mark_dirty(job);
            self.rearm_job(job);
        }
    }

    /// A task's timer fired: the offer lapses, or the worker is silent or late.
    pub(crate) fn fire_task(&mut self, job: &mut Job, index: u32, at: u64, now_ms: u64) {
        let Some(live) = job.core.live.get(&index) else {
            return;
        };
        if live.timer_at != at {
            return;
        }
        let phase = job.task(index).map(|t| t.phase);
        match phase {
            Some(Phase::Offered) => {
                if now_ms >= live.reserve_until_ms {
                    self.stats.lapses += 1;
                    if let Some(w) = job.task(index).and_then(|t| job.worker_id(t.worker)) {
                        self.view.saturate(&w);
                    }
                    self.end_offer(job, index, true, now_ms);
                } else {
                    let at = live.reserve_until_ms;
                    self.set_task_timer(job, index, at);
                }
            }
            Some(Phase::Assigned) => {
                let silent_at = live
                    .last_heard_ms
                    .saturating_add(self.config.heartbeat_timeout_ms);
                if now_ms >= live.deadline_ms {
                    self.lose(
                        job,
                        index,
                        PastKind::PastDeadline,
                        AttemptEnd::PastDeadline,
                        now_ms,
                    );
                } else if now_ms >= silent_at {
                    self.lose(job, index, PastKind::Silent, AttemptEnd::Silent, now_ms);
                } else {
                    let at = silent_at.min(live.deadline_ms);
                    self.set_task_timer(job, index, at);
                }
            }
            _ => {}
        }
    }

    /// The job's timer fired. Returns whether the job is to be pruned.
    pub(crate) fn fire_job(&mut self, job: &mut Job, now_ms: u64) -> bool {
        let owner = job.core.owner == self.me;
        if let Some(done) = job.core.finished_at_ms {
            if now_ms >= done.saturating_add(self.retention_ms(job)) {
                return true;
            }
        } else if owner && now_ms >= job.spec.deadline_ms {
            self.fail_open_tasks(
                job,
                FailReason::JobDeadline,
                CloseReason::JobDeadline,
                now_ms,
            );
        }
        if job.core.blocked_until_ms.is_some_and(|t| t <= now_ms) {
            job.core.blocked_until_ms = None;
            self.mark_ready(job, now_ms);
        }
        if owner
            && now_ms >= self.claiming_until_ms
            && (job.core.replicate_now
                || (job.core.dirty
                    && now_ms
                        >= job
                            .core
                            .last_replicated_ms
                            .saturating_add(self.config.replicate_interval_ms)))
        {
            self.replicate(job, now_ms);
        }
        self.rearm_job(job);
        false
    }

    /// Accounting when a job leaves this scheduler.
    pub(crate) fn forget_job(&mut self, job: &Job) {
        if let Some(at) = job.core.timer_at {
            self.timers.remove(&(at, TimerRef::Job(job.spec.id)));
        }
        for (index, l) in &job.core.live {
            self.timers
                .remove(&(l.timer_at, TimerRef::Task(job.spec.id, *index)));
        }
        self.ready.remove(&job.spec.id);
        self.tasks_held = self.tasks_held.saturating_sub(u64::from(job.n_tasks()));
        if job.core.owner == self.me {
            self.owned = self.owned.saturating_sub(1);
            for index in job.core.live.keys() {
                if let Some(w) = job.task(*index).and_then(|t| job.worker_id(t.worker)) {
                    self.release_held(&w);
                }
            }
            self.in_flight = self.in_flight.saturating_sub(job.core.live.len());
        } else {
            self.replicas = self.replicas.saturating_sub(1);
        }
    }

    /// Counts a hold-free attempt (used after a takeover).
    pub(crate) fn adopt_live(&mut self, job: &mut Job, index: u32, now_ms: u64) {
        let hb = self.config.heartbeat_timeout_ms;
        let phase = job.task(index).map(|t| t.phase);
        let worker = job.task(index).and_then(|t| job.worker_id(t.worker));
        let Some(live) = job.core.live.get_mut(&index) else {
            return;
        };
        let at = match phase {
            Some(Phase::Offered) => {
                live.hold = match worker.and_then(|w| self.view.slot_of(&w)) {
                    Some(slot) => self.view.hold_offer(slot),
                    None => Hold::None,
                };
                live.reserve_until_ms
            }
            _ => {
                live.hold = Hold::None;
                live.last_heard_ms = now_ms;
                now_ms.saturating_add(hb).min(live.deadline_ms)
            }
        };
        // The old owner's timer was never ours: insert afresh.
        live.timer_at = at;
        self.timers.insert((at, TimerRef::Task(job.spec.id, index)));
        self.in_flight += 1;
        if let Some(w) = worker {
            *self.held.entry(w).or_default() += 1;
        }
    }
}
