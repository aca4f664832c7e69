//! Verification of sampled tasks: lines, votes, verdicts (see
//! [`crate::verify`] for the rules and the module docs of `scheduler`).
//!
//! A sampled task gets a [`Check`] when it is first placed: `k − 1`
//! verification lines (quorum) or one crop line (spot-check), queued at the
//! head of the job's queue. Each result of a line is a [`Vote`] (forwarded to
//! the creator as `JobEvent::Vote`); the tallies of [`crate::verify`] decide
//! after every vote, comparison or line failure:
//!
//! * a verdict: the winner's result is the task's (`Verified`), agreeing
//!   workers get `Outcome::Verified`, dissenters `Outcome::Failed` and a
//!   `Rejected` event; every other escrowed attempt of the task is refunded
//!   (`Closed{Checked}` for agreeing votes, `Closed{Caught}` for caught ones);
//! * a failed spot-check: the primary is caught, its attempt closed, the
//!   check dropped, and the task re-run elsewhere, verified again;
//! * another line (disagreement), or no verdict within the bound: the task
//!   fails (`FailReason::Unverified`).

use super::job::{Check, Cmp, CrossCmp, Job, Past, PastKind, Phase, TaskState, Vote};
use super::{
    AttemptEnd, CloseReason, ComparisonError, Ctx, FailReason, JobEvent, ResultFrames, Scheduler,
    SchedulerAction,
};
use crate::identity::NodeId;
use crate::reputation::Outcome;
use crate::verify::{self, CompareResult, Comparison, Cross, QuorumTally, SpotTally, SpotVote};
use crate::wire::VerificationPolicy;

impl Ctx {
    /// Attempts this scheduler holds on `worker` now (offered or accepted).
    pub(crate) fn held_on(&self, worker: &NodeId) -> u32 {
        self.held.get(worker).copied().unwrap_or(0)
    }

    pub(crate) fn release_held(&mut self, worker: &NodeId) {
        if let Some(n) = self.held.get_mut(worker) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(worker);
            }
        }
    }

    /// A new verification line of `task`, queued at the head of the job's
    /// queue. False when line ids ran out.
    fn new_line(&mut self, job: &mut Job, task: u32) -> bool {
        let Some(v) = job.n_tasks().checked_add(job.core.next_line) else {
            return false;
        };
        if v == u32::MAX {
            return false;
        }
        let Some(check) = job.core.checks.get_mut(&task) else {
            return false;
        };
        check.lines.push((v, TaskState::line()));
        job.core.next_line += 1;
        job.line_task.insert(v, task);
        job.core.requeued.push_front(v);
        true
    }

    /// Opens the check of task `task` (its lines queued); false at the
    /// `max_open_checks` bound.
    pub(crate) fn open_check<G: rand_core::Rng + ?Sized>(
        &mut self,
        job: &mut Job,
        task: u32,
        rng: &mut G,
    ) -> bool {
        if job.core.checks.len() >= self.config.max_open_checks {
            self.stats.check_bound += 1;
            return false;
        }
        let (lines, crop) = match job.spec.verification {
            VerificationPolicy::None => return false,
            VerificationPolicy::Quorum { k, .. } => {
                (usize::from(k.clamp(2, verify::MAX_QUORUM_K)) - 1, None)
            }
            VerificationPolicy::SpotCheck { crop_permille, .. } => {
                let Some(g) = crate::task::task_geometry(
                    &job.spec.split,
                    job.spec.width,
                    job.spec.height,
                    task,
                ) else {
                    return false;
                };
                (1, Some(verify::pick_crop(g.region, crop_permille, rng)))
            }
        };
        job.core.checks.insert(
            task,
            Check {
                crop,
                lines: Vec::new(),
                votes: Vec::new(),
                cross: Vec::new(),
            },
        );
        for _ in 0..lines {
            self.new_line(job, task);
        }
        self.stats.sampled += 1;
        true
    }

    /// A result of line `line` (task `task`) of a verified task, from
    /// (`worker`, `attempt`): recorded as a vote, forwarded to the creator,
    /// and the check re-evaluated.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn vote(
        &mut self,
        job: &mut Job,
        task: u32,
        line: u32,
        worker: u32,
        attempt: u32,
        hash: [u8; 32],
        frames: ResultFrames,
        now_ms: u64,
    ) {
        if let Some(ended) = self.end_live(job, line, now_ms)
            && !(ended.worker == worker && ended.attempt == attempt)
        {
            self.cancel_action(job, line, &ended);
            if ended.phase == Phase::Assigned
                && let Some(t) = job.task_mut(line)
            {
                t.past.push(Past {
                    worker: ended.worker,
                    attempt: ended.attempt,
                    kind: PastKind::Superseded,
                });
            }
        }
        let Some(t) = job.task_mut(line) else {
            return;
        };
        t.past
            .retain(|p| !(p.worker == worker && p.attempt == attempt));
        let was_queued = t.phase == Phase::Queued;
        t.phase = Phase::Voted;
        t.worker = worker;
        t.attempt = attempt;
        t.permille = 1000;
        if was_queued {
            job.core.requeued.retain(|i| *i != line);
            if job.queued_len() == 0 {
                self.ready.remove(&job.spec.id);
            }
        }
        if let Some(c) = job.core.checks.get_mut(&task) {
            c.votes.push(Vote {
                line,
                worker,
                attempt,
                hash,
                cmp: Cmp::NotSent,
            });
        }
        if let Some(w) = job.worker_id(worker) {
            self.notify(
                job,
                JobEvent::Vote {
                    task,
                    worker: w,
                    attempt,
                    frames,
                },
            );
        }
        self.mark_dirty(job);
        self.evaluate(job, task, now_ms);
    }

    fn outcome(&mut self, job: &Job, worker: u32, task: u32, attempt: u32, outcome: Outcome) {
        if let Some(w) = job.worker_id(worker) {
            self.actions.push_back(SchedulerAction::Outcome {
                worker: w,
                task: job.task_id(task),
                attempt,
                outcome,
            });
        }
    }

    fn reject(&mut self, job: &Job, vote: &Vote, task: u32) {
        self.stats.caught += 1;
        self.outcome(job, vote.worker, task, vote.attempt, Outcome::Failed);
        if let Some(w) = job.worker_id(vote.worker) {
            self.notify(
                job,
                JobEvent::Rejected {
                    task,
                    worker: w,
                    attempt: vote.attempt,
                },
            );
        }
    }

    /// Decides what a verified task's votes call for.
    pub(crate) fn evaluate(&mut self, job: &mut Job, task: u32, now_ms: u64) {
        let Some(check) = job.core.checks.get(&task) else {
            return;
        };
        // Lines neither voted nor failed for good.
        let open = |t: &TaskState| !matches!(t.phase, Phase::Voted | Phase::Failed);
        let primary_open = job.task(task).is_some_and(open);
        let lines_open = check.lines.iter().filter(|(_, t)| open(t)).count();
        match job.spec.verification {
            VerificationPolicy::None => {}
            VerificationPolicy::Quorum { k, .. } => {
                let hashes: Vec<[u8; 32]> = check.votes.iter().map(|v| v.hash).collect();
                let pending = lines_open + usize::from(primary_open);
                let lines = 1 + check.lines.len();
                match verify::quorum_tally(k, &hashes, pending, lines) {
                    QuorumTally::Wait => {}
                    QuorumTally::Agreed { hash } => {
                        let winner = check.votes.iter().position(|v| v.hash == hash);
                        if let Some(w) = winner {
                            self.pass(job, task, w, now_ms);
                        }
                    }
                    QuorumTally::AddLine => self.add_line(job, task, now_ms),
                    QuorumTally::Unresolved => {
                        let results = hashes.len().min(255) as u8;
                        self.unresolved(job, task, results, now_ms);
                    }
                }
            }
            VerificationPolicy::SpotCheck {
                min_similarity_milli,
                ..
            } => self.evaluate_spot(job, task, min_similarity_milli, lines_open, now_ms),
        }
    }

    /// Asks the creator for every comparison not asked yet.
    fn send_compares(&mut self, job: &mut Job, task: u32) {
        let Some(check) = job.core.checks.get(&task) else {
            return;
        };
        let (Some(crop), Some(primary)) = (
            check.crop,
            check
                .votes
                .iter()
                .find(|v| v.line == task)
                .map(|v| v.attempt),
        ) else {
            return;
        };
        let mut asks: Vec<(u32, u32, bool)> = check
            .votes
            .iter()
            .filter(|v| v.line != task && v.cmp == Cmp::NotSent)
            .map(|v| (primary, v.attempt, false))
            .collect();
        asks.extend(
            check
                .cross
                .iter()
                .filter(|c| c.cmp == Cmp::NotSent)
                .map(|c| (c.a, c.b, true)),
        );
        for (reference_attempt, check_attempt, cross) in asks {
            self.notify(
                job,
                JobEvent::Compare {
                    task,
                    crop,
                    reference_attempt,
                    check_attempt,
                    cross,
                },
            );
        }
        if let Some(c) = job.core.checks.get_mut(&task) {
            for v in c.votes.iter_mut().filter(|v| v.line != task) {
                if v.cmp == Cmp::NotSent {
                    v.cmp = Cmp::Sent;
                }
            }
            for x in &mut c.cross {
                if x.cmp == Cmp::NotSent {
                    x.cmp = Cmp::Sent;
                }
            }
        }
    }

    fn evaluate_spot(
        &mut self,
        job: &mut Job,
        task: u32,
        threshold: u16,
        running: usize,
        now_ms: u64,
    ) {
        self.send_compares(job, task);
        let Some(check) = job.core.checks.get(&task) else {
            return;
        };
        let Some(primary) = check.votes.iter().position(|v| v.line == task) else {
            return; // nothing to compare with yet
        };
        let checks: Vec<&Vote> = check.votes.iter().filter(|v| v.line != task).collect();
        let spot: Vec<SpotVote> = checks
            .iter()
            .map(|v| match v.cmp {
                Cmp::NotSent | Cmp::Sent => SpotVote::Pending,
                Cmp::Similar(s) => SpotVote::Compared(s),
                Cmp::Unusable => SpotVote::Unusable,
            })
            .collect();
        let index_of = |attempt: u32| checks.iter().position(|v| v.attempt == attempt);
        let crosses: Vec<Cross> = check
            .cross
            .iter()
            .filter_map(|c| {
                Some(Cross {
                    a: index_of(c.a)?,
                    b: index_of(c.b)?,
                    similarity: match c.cmp {
                        Cmp::Similar(s) => Some(s),
                        Cmp::Unusable => Some(0),
                        Cmp::NotSent | Cmp::Sent => None,
                    },
                })
            })
            .collect();
        let pair = |a: usize, b: usize| Some((checks.get(a)?.attempt, checks.get(b)?.attempt));
        match verify::spot_tally(threshold, &spot, &crosses, running, check.lines.len()) {
            SpotTally::Wait => {}
            SpotTally::Pass => self.pass(job, task, primary, now_ms),
            SpotTally::Fail => self.catch_primary(job, task, now_ms),
            SpotTally::CrossCheck { a, b } => {
                if let Some((a, b)) = pair(a, b)
                    && let Some(c) = job.core.checks.get_mut(&task)
                {
                    c.cross.push(CrossCmp {
                        a,
                        b,
                        cmp: Cmp::NotSent,
                    });
                    self.send_compares(job, task);
                    self.mark_dirty(job);
                }
            }
            SpotTally::AddLine => self.add_line(job, task, now_ms),
            SpotTally::Unresolved => {
                let results = spot
                    .iter()
                    .filter(|v| matches!(v, SpotVote::Compared(_)))
                    .count()
                    .min(255) as u8;
                self.unresolved(job, task, results, now_ms);
            }
        }
    }

    fn add_line(&mut self, job: &mut Job, task: u32, now_ms: u64) {
        if self.new_line(job, task) {
            self.mark_ready(job, now_ms);
            self.mark_dirty(job);
        } else {
            self.unresolved(job, task, 0, now_ms);
        }
    }

    fn unresolved(&mut self, job: &mut Job, task: u32, results: u8, now_ms: u64) {
        self.stats.unresolved += 1;
        self.fail_task(
            job,
            task,
            FailReason::Unverified { results },
            CloseReason::TaskFailed,
            now_ms,
        );
    }

    /// The verdict stands: vote `winner` is the task's result.
    fn pass(&mut self, job: &mut Job, task: u32, winner: usize, now_ms: u64) {
        let Some(check) = job.core.checks.get(&task) else {
            return;
        };
        let Some(win) = check.votes.get(winner).cloned() else {
            return;
        };
        let threshold = match job.spec.verification {
            VerificationPolicy::SpotCheck {
                min_similarity_milli,
                ..
            } => Some(min_similarity_milli),
            _ => None,
        };
        let votes = check.votes.clone();
        let mut caught = Vec::new();
        for v in &votes {
            let agrees = match threshold {
                None => v.hash == win.hash,
                Some(t) => match v.cmp {
                    _ if v.line == task => true,
                    Cmp::Similar(s) => verify::passes(s, t),
                    // Unusable checks were rejected when reported.
                    _ => false,
                },
            };
            if agrees {
                self.outcome(job, v.worker, task, v.attempt, Outcome::Verified);
            } else {
                if !matches!(v.cmp, Cmp::Unusable) {
                    self.reject(job, v, task);
                }
                caught.push((v.worker, v.attempt));
            }
        }
        self.close_check(
            job,
            task,
            Some((win.worker, win.attempt)),
            &caught,
            CloseReason::Superseded,
            now_ms,
        );
        let Some(t) = job.task_mut(task) else {
            return;
        };
        t.phase = Phase::Done;
        t.worker = win.worker;
        t.attempt = win.attempt;
        t.permille = 1000;
        job.core.done += 1;
        self.stats.done += 1;
        self.stats.verified += 1;
        if let Some(w) = job.worker_id(win.worker) {
            self.notify(
                job,
                JobEvent::Verified {
                    task,
                    worker: w,
                    attempt: win.attempt,
                },
            );
        }
        self.mark_dirty(job);
        self.check_finished(job, now_ms);
    }

    /// A spot-check failed (or the primary's output was unusable): the
    /// primary is caught; the check closes and the task runs again elsewhere,
    /// verified again.
    fn catch_primary(&mut self, job: &mut Job, task: u32, now_ms: u64) {
        let Some(check) = job.core.checks.get(&task) else {
            return;
        };
        let threshold = match job.spec.verification {
            VerificationPolicy::SpotCheck {
                min_similarity_milli,
                ..
            } => min_similarity_milli,
            _ => 0,
        };
        let votes = check.votes.clone();
        let Some(primary) = votes.iter().find(|v| v.line == task).cloned() else {
            return;
        };
        self.reject(job, &primary, task);
        // The dissenters a cross comparison confirmed were right.
        let confirmed: Vec<u32> = check
            .cross
            .iter()
            .filter(|c| matches!(c.cmp, Cmp::Similar(s) if verify::passes(s, threshold)))
            .flat_map(|c| [c.a, c.b])
            .collect();
        for v in votes.iter().filter(|v| v.line != task) {
            if confirmed.contains(&v.attempt) {
                self.outcome(job, v.worker, task, v.attempt, Outcome::Verified);
            }
        }
        if let Some(c) = job.core.checks.get_mut(&task) {
            c.votes.retain(|v| v.line != task);
        }
        self.close_check(job, task, None, &[], CloseReason::Superseded, now_ms);
        let max = self.config.max_attempts.max(1);
        let Some(t) = job.task_mut(task) else {
            return;
        };
        t.past.push(Past {
            worker: primary.worker,
            attempt: primary.attempt,
            kind: PastKind::Caught,
        });
        t.failures = t.failures.saturating_add(1);
        let failures = t.failures;
        if failures >= max {
            self.fail_task(
                job,
                task,
                FailReason::Attempts {
                    failures,
                    last: AttemptEnd::Caught,
                },
                CloseReason::TaskFailed,
                now_ms,
            );
        } else {
            self.requeue(job, task, now_ms);
        }
    }

    /// Closes the check of `task` (if any): every verification line's
    /// attempt is cancelled and refunded (`close` for a running one), every
    /// vote but `winner` refunded (`Caught` if listed in `caught` or
    /// unusable, else `Checked`), and the lines dropped. With a winner, the
    /// task's own line is closed too (its running attempt and past); without
    /// one, it is the caller's business.
    pub(crate) fn close_check(
        &mut self,
        job: &mut Job,
        task: u32,
        winner: Option<(u32, u32)>,
        caught: &[(u32, u32)],
        close: CloseReason,
        now_ms: u64,
    ) {
        let Some(check) = job.core.checks.get(&task) else {
            return;
        };
        let lines: Vec<u32> = check.lines.iter().map(|(l, _)| *l).collect();
        let votes = check.votes.clone();
        if winner.is_some() {
            self.end_line(job, task, close, now_ms);
            self.close_past(job, task);
        }
        for l in &lines {
            self.end_line(job, *l, close, now_ms);
            self.close_past(job, *l);
        }
        for v in votes {
            if winner == Some((v.worker, v.attempt)) {
                continue;
            }
            let caught = matches!(v.cmp, Cmp::Unusable) || caught.contains(&(v.worker, v.attempt));
            if let Some(worker) = job.worker_id(v.worker) {
                self.actions.push_back(SchedulerAction::Closed {
                    task: job.task_id(task),
                    attempt: v.attempt,
                    worker,
                    reason: if caught {
                        CloseReason::Caught
                    } else {
                        CloseReason::Checked
                    },
                });
            }
        }
        job.core.requeued.retain(|i| !lines.contains(i));
        for l in &lines {
            job.line_task.remove(l);
        }
        job.core.checks.remove(&task);
        if job.queued_len() == 0 {
            self.ready.remove(&job.spec.id);
        }
        self.mark_dirty(job);
    }

    /// Ends a line's current attempt, if any: cancelled, refunded with
    /// `close` if it was accepted.
    fn end_line(&mut self, job: &mut Job, line: u32, close: CloseReason, now_ms: u64) {
        if let Some(ended) = self.end_live(job, line, now_ms) {
            self.cancel_action(job, line, &ended);
            if ended.phase == Phase::Assigned
                && let Some(worker) = job.worker_id(ended.worker)
            {
                self.actions.push_back(SchedulerAction::Closed {
                    task: job.task_id(line),
                    attempt: ended.attempt,
                    worker,
                    reason: close,
                });
            }
        }
        let queued = job.task(line).is_some_and(|t| t.phase == Phase::Queued);
        if queued {
            job.core.requeued.retain(|i| *i != line);
        }
        if let Some(t) = job.task_mut(line)
            && matches!(t.phase, Phase::Queued | Phase::Offered | Phase::Assigned)
        {
            t.phase = Phase::Failed;
        }
    }

    /// A verification line ran out of attempts: it stops counting, and the
    /// check decides without it (another line, or unresolved).
    pub(crate) fn fail_line(&mut self, job: &mut Job, line: u32, now_ms: u64) {
        if let Some(t) = job.task_mut(line) {
            t.phase = Phase::Failed;
        }
        self.mark_dirty(job);
        let task = job.task_of(line);
        self.evaluate(job, task, now_ms);
    }
}

impl Scheduler {
    /// Sets whether a node is on probation (the reputation book's
    /// [`Standing::probation`](crate::reputation::Standing)). A probationer
    /// gets at most `probation_max_tasks` attempts at once, and every task it
    /// takes in a job with a verification policy is verified.
    pub fn set_probation(&mut self, node: NodeId, on: bool) {
        if self.ctx.view.probation.len() >= self.ctx.config.max_nodes
            && !self.ctx.view.probation.contains_key(&node)
        {
            return;
        }
        self.ctx.view.probation.insert(node, on);
    }

    /// Sets a node's operator group: the driver's hash of what ties nodes to
    /// one operator it can observe, e.g. the /24 (IPv4) or /48 (IPv6) prefix
    /// of the node's address; 0 means unknown. Verification lines prefer
    /// workers of another group than the task's other workers.
    pub fn set_operator(&mut self, node: NodeId, group: u64) {
        if self.ctx.view.operators.len() >= self.ctx.config.max_nodes
            && !self.ctx.view.operators.contains_key(&node)
        {
            return;
        }
        if group == 0 {
            self.ctx.view.operators.remove(&node);
        } else {
            self.ctx.view.operators.insert(node, group);
        }
    }

    /// A creator's spot-check comparison (`RpcRequest::Compared`, the
    /// transport authenticating `from`).
    pub fn handle_comparison(
        &mut self,
        from: &NodeId,
        c: &Comparison,
        now_ms: u64,
    ) -> Result<(), ComparisonError> {
        let me = self.ctx.me;
        let job = match self.jobs.get_mut(&c.task.job) {
            None => return Err(ComparisonError::UnknownJob(c.task.job)),
            Some(j) if j.core.owner != me => {
                return Err(ComparisonError::NotOwner {
                    job: c.task.job,
                    owner: j.core.owner,
                });
            }
            Some(j) => j,
        };
        if job.spec.creator != *from {
            return Err(ComparisonError::NotCreator {
                creator: job.spec.creator,
                by: *from,
            });
        }
        let task = c.task.index;
        let not_pending = ComparisonError::NotPending {
            index: task,
            reference_attempt: c.reference_attempt,
            check_attempt: c.check_attempt,
        };
        let Some(check) = job.core.checks.get_mut(&task) else {
            return Err(not_pending);
        };
        let primary = check
            .votes
            .iter()
            .find(|v| v.line == task)
            .map(|v| v.attempt);
        if primary == Some(c.reference_attempt) {
            // A check against the primary.
            let Some(vote) = check
                .votes
                .iter_mut()
                .find(|v| v.line != task && v.attempt == c.check_attempt && v.cmp == Cmp::Sent)
            else {
                return Err(not_pending);
            };
            self.ctx.stats.comparisons += 1;
            match c.result {
                CompareResult::Similarity(s) => vote.cmp = Cmp::Similar(s.min(1000)),
                CompareResult::CheckUnusable => {
                    vote.cmp = Cmp::Unusable;
                    let v = vote.clone();
                    self.ctx.reject(job, &v, task);
                }
                CompareResult::ReferenceUnusable => {
                    self.ctx.catch_primary(job, task, now_ms);
                    return Ok(());
                }
            }
        } else {
            // Two checks against each other.
            let Some(x) = check.cross.iter_mut().find(|x| {
                x.a == c.reference_attempt && x.b == c.check_attempt && x.cmp == Cmp::Sent
            }) else {
                return Err(not_pending);
            };
            self.ctx.stats.comparisons += 1;
            x.cmp = match c.result {
                CompareResult::Similarity(s) => Cmp::Similar(s.min(1000)),
                _ => Cmp::Unusable,
            };
        }
        self.ctx.mark_dirty(job);
        self.ctx.evaluate(job, task, now_ms);
        Ok(())
    }
}
