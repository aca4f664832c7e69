//! Placement: from a queued task to an offer, by sampling the index.

use std::ops::Bound;

use super::job::{Job, Live, Phase, Sample};
use super::view::{NO_REGION, bucket_of};
use super::{Ctx, JobEvent, QueuedReason, Scheduler, SchedulerAction, TimerRef};
use crate::placement::{Standing, Unmet, score};
use crate::wire::{TaskOffer, VerificationPolicy};

/// Decisions one job gets before the next ready job has its turn.
const QUANTUM: usize = 64;
/// Most candidates compared per decision, whatever `choices` says.
const MAX_CHOICES: usize = 8;

/// Why a decision found nobody.
enum Miss {
    /// Nobody for the whole job: it waits `retry_ms`.
    Job(QueuedReason),
    /// Only workers that failed (or already work on) this task: the next
    /// task may do better.
    Excluded { checked: u32, verifying: bool },
}

/// The candidates of one decision so far.
struct Pick {
    picked: [u32; MAX_CHOICES],
    found: usize,
    /// Best so far: preference class (lower is better), score, slot.
    best: Option<(u8, u64, u32)>,
    checked: u32,
    excluded: u32,
    unmet: Option<Unmet>,
}

/// Whom a decision must avoid, and whom it prefers to avoid.
struct Avoid {
    /// Job worker indices that may not take this line: workers that failed
    /// the task, and for a verified task every worker on any of its lines.
    workers: Vec<u32>,
    /// Operator groups of the task's other workers (0 left out): a candidate
    /// in one of them is taken only if no other is found.
    groups: Vec<u64>,
    /// Prefer workers off probation (a verification line of a task a
    /// probationer works on: Sybils should not check each other).
    prefer_trusted: bool,
    /// Whether the line verifies (for the queued reason).
    verifying: bool,
    /// Whether probationers may take the line at all (they are verified on
    /// every task, which needs room for a check).
    allow_probation: bool,
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
                    if !job.is_line(index) {
                        self.sample(job, index, slot, rng);
                    }
                    self.offer(job, index, slot, now_ms);
                }
                Err(Miss::Excluded { checked, verifying }) => {
                    self.stats.misses += 1;
                    job.core.requeued.push_back(index);
                    misses += 1;
                    // A whole quantum (or the whole queue) in a row that no
                    // free worker may take: wait for the retry. Without the
                    // quantum bound a job queueing more than a quantum came
                    // round again at once, and placement spun at one instant.
                    if misses >= job.queued_len().min(QUANTUM) {
                        let reason = if verifying {
                            QueuedReason::NoVerifier { checked }
                        } else {
                            QueuedReason::Excluded { checked }
                        };
                        self.block(job, reason, now_ms);
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

    /// Checks one sampled node for line `index` and keeps the best.
    fn probe(&self, pick: &mut Pick, job: &Job, avoid: &Avoid, slot: u32, region: u32) {
        if pick.picked[..pick.found].contains(&slot) {
            return;
        }
        let Some(e) = self.view.entry(slot) else {
            return;
        };
        pick.checked += 1;
        if !avoid.workers.is_empty()
            && job
                .worker_ref
                .get(&e.id)
                .is_some_and(|w| avoid.workers.binary_search(w).is_ok())
        {
            pick.excluded += 1;
            return;
        }
        if let Err(u) = job.need.check(&e.profile) {
            pick.unmet.get_or_insert(u);
            return;
        }
        let probation = self
            .view
            .on_probation(&e.id, self.config.new_nodes_on_probation);
        if probation
            && (!avoid.allow_probation
                || self.held_on(&e.id) >= u32::from(self.config.probation_max_tasks))
        {
            return;
        }
        let group = self.view.operator_of(&e.id);
        let class = u8::from(group != 0 && avoid.groups.binary_search(&group).is_ok())
            + u8::from(avoid.prefer_trusted && probation);
        let standing = Standing {
            free_slots: e.free(),
            reputation: e.reputation,
            same_region: region != NO_REGION && e.region == region,
        };
        let s = score(&job.need, &e.profile, standing, &self.config.weights);
        if pick
            .best
            .is_none_or(|(bc, bs, _)| class < bc || (class == bc && s > bs))
        {
            pick.best = Some((class, s, slot));
        }
        if let Some(cell) = pick.picked.get_mut(pick.found) {
            *cell = slot;
            pick.found += 1;
        }
    }

    /// What line `index` must avoid.
    fn avoid(&self, job: &Job, index: u32) -> Avoid {
        let task = job.task_of(index);
        let allow_probation = matches!(job.spec.verification, VerificationPolicy::None)
            || job.core.checks.contains_key(&task)
            || job.core.checks.len() < self.config.max_open_checks;
        if !job.core.checks.contains_key(&task) {
            let mut workers: Vec<u32> = job
                .task(index)
                .map(|t| t.past.iter().map(|p| p.worker).collect())
                .unwrap_or_default();
            workers.sort_unstable();
            workers.dedup();
            return Avoid {
                workers,
                groups: Vec::new(),
                prefer_trusted: false,
                verifying: false,
                allow_probation,
            };
        }
        let workers = job.task_workers(task);
        let ids: Vec<_> = workers.iter().filter_map(|w| job.worker_id(*w)).collect();
        let mut groups: Vec<u64> = ids
            .iter()
            .map(|id| self.view.operator_of(id))
            .filter(|g| *g != 0)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let prefer_trusted = ids.iter().any(|id| {
            self.view
                .on_probation(id, self.config.new_nodes_on_probation)
        });
        Avoid {
            workers,
            groups,
            prefer_trusted,
            verifying: true,
            allow_probation,
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
        if job.task(index).is_none() {
            return Err(Miss::Excluded {
                checked: 0,
                verifying: false,
            });
        }
        let avoid = self.avoid(job, index);
        let choices = self.config.choices.clamp(1, MAX_CHOICES);
        let mut pick = Pick {
            picked: [u32::MAX; MAX_CHOICES],
            found: 0,
            best: None,
            checked: 0,
            excluded: 0,
            unmet: None,
        };
        // Stop at `choices` candidates, unless none of them is in the
        // preferred class (another operator, off probation) yet.
        let enough = |p: &Pick| p.found >= choices && p.best.is_some_and(|(c, _, _)| c == 0);
        for _ in 0..self.config.max_probes {
            if enough(&pick) {
                break;
            }
            self.probe(&mut pick, job, &avoid, slots[draw(rng, len)], region);
        }
        if pick.found == 0 {
            // The probes found nobody: a bounded scan from a random start,
            // which alone counts what it saw (every entry once).
            pick.checked = 0;
            pick.excluded = 0;
            pick.unmet = None;
            let start = draw(rng, len);
            for k in 0..len.min(self.config.max_scan) {
                self.probe(&mut pick, job, &avoid, slots[(start + k) % len], region);
                if enough(&pick) {
                    break;
                }
            }
        }
        match (pick.best, pick.unmet) {
            (Some((_, _, slot)), _) => Ok(slot),
            (None, Some(example)) => Err(Miss::Job(QueuedReason::Unmet {
                checked: pick.checked,
                example,
            })),
            (None, None) if pick.excluded > 0 => Err(Miss::Excluded {
                checked: pick.checked,
                verifying: avoid.verifying,
            }),
            (None, None) => Err(Miss::Job(self.empty_reason(job, bucket))),
        }
    }

    /// Decides whether task `index`, about to be offered to the node in
    /// `slot`, is verified: drawn once from the RNG when first placed (before
    /// any result exists), and always when the node is on probation. A
    /// verified task gets its check (and verification lines) now.
    fn sample<G: rand_core::Rng + ?Sized>(
        &mut self,
        job: &mut Job,
        index: u32,
        slot: u32,
        rng: &mut G,
    ) {
        if matches!(job.spec.verification, VerificationPolicy::None) {
            return;
        }
        let permille = crate::verify::sample_permille(&job.spec.verification);
        let probation = self.view.entry(slot).is_some_and(|e| {
            self.view
                .on_probation(&e.id, self.config.new_nodes_on_probation)
        });
        let Some(t) = job.task_mut(index) else {
            return;
        };
        if t.sample == Sample::Undrawn {
            t.sample = if crate::verify::draw_sampled(permille, rng) {
                Sample::Check
            } else {
                Sample::Skip
            };
        }
        if probation {
            t.sample = Sample::Check;
        }
        if t.sample == Sample::Check && !job.core.checks.contains_key(&index) {
            self.open_check(job, index, rng);
        }
    }

    /// Offers line `index` to the node in `slot`.
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
        // Attempt numbers come from the task's counter, whichever line offers.
        let task_index = job.task_of(index);
        let Some(task) = job.task_mut(task_index) else {
            return;
        };
        let attempt = task.next_attempt;
        let Some(next) = attempt.checked_add(1) else {
            self.fail_task(
                job,
                task_index,
                super::FailReason::AttemptNumbers,
                super::CloseReason::TaskFailed,
                now_ms,
            );
            return;
        };
        task.next_attempt = next;
        task.offers_since_rep = task.offers_since_rep.saturating_add(1);
        if u32::from(task.offers_since_rep) >= super::ATTEMPT_GAP / 2 {
            job.core.replicate_now = true;
        }
        let Some(line) = job.task_mut(index) else {
            return;
        };
        line.phase = Phase::Offered;
        line.worker = w;
        line.attempt = attempt;
        line.permille = 0;
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
        *self.held.entry(worker).or_default() += 1;
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
        let crop = if job.is_line(index) {
            job.core.checks.get(&task_index).and_then(|c| c.crop)
        } else {
            None
        };
        self.actions.push_back(match crop {
            Some(crop) => SchedulerAction::OfferCrop {
                to: worker,
                offer,
                crop,
                spec_frame: job.frame.clone(),
            },
            None => SchedulerAction::Offer {
                to: worker,
                offer,
                spec_frame: job.frame.clone(),
            },
        });
        if !job.is_line(index) {
            self.notify(
                job,
                JobEvent::Offered {
                    task: index,
                    worker,
                    attempt,
                },
            );
        }
        if job.core.replicate_now {
            job.core.dirty = true;
            self.rearm_job(job);
        } else {
            self.mark_dirty(job);
        }
    }
}
