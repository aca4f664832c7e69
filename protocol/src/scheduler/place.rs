//! Placement: from a queued task to an offer, by sampling the index.

use std::ops::Bound;

use super::job::{Job, Live, Phase, TaskState};
use super::view::{NO_REGION, bucket_of};
use super::{Ctx, JobEvent, QueuedReason, Scheduler, SchedulerAction, TimerRef};
use crate::placement::{Standing, Unmet, score};
use crate::wire::TaskOffer;

/// Decisions one job gets before the next ready job has its turn.
const QUANTUM: usize = 64;
/// Most candidates compared per decision, whatever `choices` says.
const MAX_CHOICES: usize = 8;

/// Why a decision found nobody.
enum Miss {
    /// Nobody for the whole job: it waits `retry_ms`.
    Job(QueuedReason),
    /// Only workers that failed this task: the next task may do better.
    Excluded { checked: u32 },
}

/// The candidates of one decision so far.
struct Pick {
    picked: [u32; MAX_CHOICES],
    found: usize,
    best: Option<(u64, u32)>,
    checked: u32,
    excluded: u32,
    unmet: Option<Unmet>,
}

/// Draws an index in `0..len` (`len` ≥ 1), Lemire's multiply-shift.
fn draw<G: rand_core::Rng + ?Sized>(rng: &mut G, len: usize) -> usize {
    ((u64::from(rng.next_u32()) * len as u64) >> 32) as usize
}

impl Scheduler {
    /// One placement pass: ready jobs in turn (round robin from the cursor),
    /// `QUANTUM` decisions each, at most `decisions_per_pass` in all.
    pub(crate) fn place<G: rand_core::Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut G) {
        let mut budget = self.ctx.config.decisions_per_pass.max(1);
        loop {
            let order: Vec<_> = match self.ctx.cursor {
                Some(c) => self
                    .ctx
                    .ready
                    .range((Bound::Excluded(c), Bound::Unbounded))
                    .chain(self.ctx.ready.range(..=c))
                    .copied()
                    .collect(),
                None => self.ctx.ready.iter().copied().collect(),
            };
            if order.is_empty() {
                return;
            }
            let mut used_round = 0;
            for id in order {
                if budget == 0 {
                    break;
                }
                let Some(job) = self.jobs.get_mut(&id) else {
                    self.ctx.ready.remove(&id);
                    continue;
                };
                let used = self.ctx.place_job(job, QUANTUM.min(budget), now_ms, rng);
                budget -= used;
                used_round += used;
                self.ctx.cursor = Some(id);
            }
            if budget == 0 {
                if !self.ctx.ready.is_empty() {
                    self.ctx.place_due = Some(now_ms);
                }
                return;
            }
            if used_round == 0 {
                return;
            }
        }
    }
}

impl Ctx {
    /// Places up to `max` queued tasks of one job; returns decisions made.
    fn place_job<G: rand_core::Rng + ?Sized>(
        &mut self,
        job: &mut Job,
        max: usize,
        now_ms: u64,
        rng: &mut G,
    ) -> usize {
        let region = self.view.region_of(&job.spec.creator);
        let bucket = bucket_of(job.need.runtime, job.need.vendor);
        let mut used = 0;
        let mut misses = 0;
        while used < max {
            if self.in_flight >= self.config.max_in_flight {
                let reason = QueuedReason::InFlightLimit {
                    max: u32::try_from(self.config.max_in_flight).unwrap_or(u32::MAX),
                };
                self.set_reason(job, reason);
                break;
            }
            let Some((index, fresh)) = job.pop_queued() else {
                break;
            };
            used += 1;
            self.stats.decisions += 1;
            match self.decide(job, index, bucket, region, rng) {
                Ok(slot) => {
                    misses = 0;
                    self.offer(job, index, slot, now_ms);
                }
                Err(Miss::Excluded { checked }) => {
                    self.stats.misses += 1;
                    job.core.requeued.push_back(index);
                    misses += 1;
                    if misses >= job.queued_len() {
                        self.block(job, QueuedReason::Excluded { checked }, now_ms);
                        break;
                    }
                }
                Err(Miss::Job(reason)) => {
                    self.stats.misses += 1;
                    job.unpop(index, fresh);
                    self.block(job, reason, now_ms);
                    break;
                }
            }
        }
        if job.queued_len() == 0 {
            self.ready.remove(&job.spec.id);
        }
        used
    }

    fn set_reason(&mut self, job: &mut Job, reason: QueuedReason) {
        let changed = !job
            .core
            .queued_reason
            .as_ref()
            .is_some_and(|r| r.same_kind(&reason));
        if changed {
            self.notify(
                job,
                JobEvent::Queued {
                    reason: reason.clone(),
                },
            );
        }
        job.core.queued_reason = Some(reason);
    }

    /// Nobody can take the job's tasks now: try again in `retry_ms`.
    fn block(&mut self, job: &mut Job, reason: QueuedReason, now_ms: u64) {
        self.set_reason(job, reason);
        job.core.blocked_until_ms = Some(now_ms.saturating_add(self.config.retry_ms.max(1)));
        self.ready.remove(&job.spec.id);
        self.rearm_job(job);
    }

    /// The reason when the job's bucket has no free worker.
    fn empty_reason(&self, job: &Job, bucket: usize) -> QueuedReason {
        let live = |b: usize| self.view.live.get(b).copied().unwrap_or(0);
        let runtime = job.need.runtime;
        if live(bucket) > 0 {
            QueuedReason::AllBusy {
                runtime,
                workers: live(bucket),
            }
        } else if let Some(vendor) = job.need.vendor
            && live(bucket_of(runtime, None)) > 0
        {
            QueuedReason::NoGpu { runtime, vendor }
        } else {
            QueuedReason::NoRuntime { runtime }
        }
    }

    /// Checks one sampled node for task `index` and keeps the best.
    fn probe(&self, pick: &mut Pick, job: &Job, task: &TaskState, slot: u32, region: u32) {
        if pick.picked[..pick.found].contains(&slot) {
            return;
        }
        let Some(e) = self.view.entry(slot) else {
            return;
        };
        pick.checked += 1;
        if !task.past.is_empty() && job.worker_ref.get(&e.id).is_some_and(|w| task.excluded(*w)) {
            pick.excluded += 1;
            return;
        }
        if let Err(u) = job.need.check(&e.profile) {
            pick.unmet.get_or_insert(u);
            return;
        }
        let standing = Standing {
            free_slots: e.free(),
            reputation: e.reputation,
            same_region: region != NO_REGION && e.region == region,
        };
        let s = score(&job.need, &e.profile, standing, &self.config.weights);
        if pick.best.is_none_or(|(b, _)| s > b) {
            pick.best = Some((s, slot));
        }
        if let Some(cell) = pick.picked.get_mut(pick.found) {
            *cell = slot;
            pick.found += 1;
        }
    }

    /// Power of d choices over the job's bucket: returns the chosen node slot.
    fn decide<G: rand_core::Rng + ?Sized>(
        &self,
        job: &Job,
        index: u32,
        bucket: usize,
        region: u32,
        rng: &mut G,
    ) -> Result<u32, Miss> {
        let slots = match self.view.buckets.get(bucket) {
            Some(s) if !s.is_empty() => s,
            _ => return Err(Miss::Job(self.empty_reason(job, bucket))),
        };
        let len = slots.len();
        let Some(task) = job.task(index) else {
            return Err(Miss::Excluded { checked: 0 });
        };
        let choices = self.config.choices.clamp(1, MAX_CHOICES);
        let mut pick = Pick {
            picked: [u32::MAX; MAX_CHOICES],
            found: 0,
            best: None,
            checked: 0,
            excluded: 0,
            unmet: None,
        };
        for _ in 0..self.config.max_probes {
            if pick.found >= choices {
                break;
            }
            self.probe(&mut pick, job, task, slots[draw(rng, len)], region);
        }
        if pick.found == 0 {
            // The probes found nobody: a bounded scan from a random start,
            // which alone counts what it saw (every entry once).
            pick.checked = 0;
            pick.excluded = 0;
            pick.unmet = None;
            let start = draw(rng, len);
            for k in 0..len.min(self.config.max_scan) {
                self.probe(&mut pick, job, task, slots[(start + k) % len], region);
                if pick.found >= choices {
                    break;
                }
            }
        }
        match (pick.best, pick.unmet) {
            (Some((_, slot)), _) => Ok(slot),
            (None, Some(example)) => Err(Miss::Job(QueuedReason::Unmet {
                checked: pick.checked,
                example,
            })),
            (None, None) if pick.excluded > 0 => Err(Miss::Excluded {
                checked: pick.checked,
            }),
            (None, None) => Err(Miss::Job(self.empty_reason(job, bucket))),
        }
    }

    /// Offers task `index` to the node in `slot`.
    fn offer(&mut self, job: &mut Job, index: u32, slot: u32, now_ms: u64) {
        let Some(e) = self.view.entry(slot) else {
            job.core.requeued.push_back(index);
            return;
        };
        let (worker, price) = (e.id, e.profile.price);
        let w = job.worker_index(worker);
        let deadline_ms = job
            .spec
            .deadline_ms
            .min(now_ms.saturating_add(self.config.task_timeout_ms));
        let reserve_until_ms = now_ms
            .saturating_add(self.config.reserve_ms)
            .min(deadline_ms);
        let Some(task) = job.task_mut(index) else {
            return;
        };
        let attempt = task.next_attempt;
        let Some(next) = attempt.checked_add(1) else {
            self.fail_task(
                job,
                index,
                super::FailReason::AttemptNumbers,
                super::CloseReason::TaskFailed,
                now_ms,
            );
            return;
        };
        task.next_attempt = next;
        task.phase = Phase::Offered;
        task.worker = w;
        task.attempt = attempt;
        task.permille = 0;
        task.offers_since_rep = task.offers_since_rep.saturating_add(1);
        if u32::from(task.offers_since_rep) >= super::ATTEMPT_GAP / 2 {
            job.core.replicate_now = true;
        }
        let hold = self.view.hold_offer(slot);
        job.core.live.insert(
            index,
            Live {
                price,
                reserve_until_ms,
                deadline_ms,
                last_heard_ms: now_ms,
                progress_seq: None,
                notified_permille: 0,
                hold,
                timer_at: reserve_until_ms,
            },
        );
        self.timers
            .insert((reserve_until_ms, TimerRef::Task(job.spec.id, index)));
        self.in_flight += 1;
        self.stats.offers += 1;
        job.core.queued_reason = None;
        let offer = TaskOffer {
            task: job.task_id(index),
            scheduler: self.me,
            worker,
            attempt,
            price,
            reserve_until_ms,
            deadline_ms,
        };
        self.actions.push_back(SchedulerAction::Offer {
            to: worker,
            offer,
            spec_frame: job.frame.clone(),
        });
        self.notify(
            job,
            JobEvent::Offered {
                task: index,
                worker,
                attempt,
            },
        );
        if job.core.replicate_now {
            job.core.dirty = true;
            self.rearm_job(job);
        } else {
            self.mark_dirty(job);
        }
    }
}
