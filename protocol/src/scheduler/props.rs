//! Property tests: the scheduler driven by random event sequences (accepts,
//! declines, lapses, undeliverable offers, silent workers, late and duplicate
//! results, failures, cancels, worker loss, re-adverts, new jobs, spot-check
//! comparisons, probation and operator changes), with jobs under every
//! verification policy and some workers cheating (each returns its own wrong
//! output), checked against a model built only from its inputs and actions.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;

use super::tests::{
    T0, answer, builtin_job, builtin_worker, config, key, progress_of, result_of, rng,
    scheduler_advert,
};
use super::*;
use crate::codec;
use crate::identity::NodeKey;
use crate::reputation::Outcome;
use crate::verify::{self, CompareResult, Comparison, MAX_SPOT_LINES};
use crate::wire::{TaskOffer, VerificationPolicy};

const ADVERT_TTL: u64 = 60_000;

#[derive(Debug, Clone)]
enum Ev {
    Advance(u16),
    Accept(u8, bool),
    Undeliverable(u8),
    Progress(u8, u16),
    Result(u8),
    LateResult(u8),
    Fail(u8),
    Cancel(u8),
    WorkerLoss(u8),
    Readvert(u8, u8),
    Submit(u8, u8),
    Compare(u8, u8),
    Trust(u8, bool),
    Operator(u8, u8),
    Unfetchable(u8),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => (1u16..15_000).prop_map(Ev::Advance),
        5 => (any::<u8>(), prop::bool::weighted(0.8)).prop_map(|(i, y)| Ev::Accept(i, y)),
        1 => any::<u8>().prop_map(Ev::Undeliverable),
        6 => (any::<u8>(), 0u16..=1000).prop_map(|(i, p)| Ev::Progress(i, p)),
        3 => any::<u8>().prop_map(Ev::Result),
        2 => any::<u8>().prop_map(Ev::LateResult),
        1 => any::<u8>().prop_map(Ev::Fail),
        1 => any::<u8>().prop_map(Ev::Cancel),
        1 => any::<u8>().prop_map(Ev::WorkerLoss),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(i, r)| Ev::Readvert(i, r)),
        1 => (1u8..5, any::<u8>()).prop_map(|(n, d)| Ev::Submit(n, d)),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(i, k)| Ev::Compare(i, k)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, t)| Ev::Trust(i, t)),
        1 => (any::<u8>(), 0u8..3).prop_map(|(i, g)| Ev::Operator(i, g)),
        1 => any::<u8>().prop_map(Ev::Unfetchable),
    ]
}

/// Events that move jobs along (most offers accepted, results and
/// comparisons returned), so verification reaches its verdicts.
fn busy_ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        2 => (1u16..3_000).prop_map(Ev::Advance),
        8 => (any::<u8>(), prop::bool::weighted(0.95)).prop_map(|(i, y)| Ev::Accept(i, y)),
        8 => any::<u8>().prop_map(Ev::Result),
        6 => (any::<u8>(), any::<u8>()).prop_map(|(i, k)| Ev::Compare(i, k)),
        2 => (any::<u8>(), 0u16..=1000).prop_map(|(i, p)| Ev::Progress(i, p)),
        1 => any::<u8>().prop_map(Ev::LateResult),
        1 => any::<u8>().prop_map(Ev::Fail),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(i, r)| Ev::Readvert(i, r)),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, t)| Ev::Trust(i, t)),
        1 => (any::<u8>(), 0u8..3).prop_map(|(i, g)| Ev::Operator(i, g)),
        1 => any::<u8>().prop_map(Ev::Unfetchable),
    ]
}

/// A verification policy for a job, from a byte (all kinds, all rates).
fn policy(b: u8) -> VerificationPolicy {
    match b % 6 {
        0 => VerificationPolicy::None,
        1 => VerificationPolicy::Quorum {
            sample_permille: 300,
            k: 2,
        },
        2 => VerificationPolicy::Quorum {
            sample_permille: 1000,
            k: 2,
        },
        3 => VerificationPolicy::Quorum {
            sample_permille: 1000,
            k: 3,
        },
        4 => VerificationPolicy::SpotCheck {
            sample_permille: 1000,
            crop_permille: 250,
            min_similarity_milli: 900,
        },
        _ => VerificationPolicy::SpotCheck {
            sample_permille: 400,
            crop_permille: 1000,
            min_similarity_milli: 900,
        },
    }
}

/// Most attempts of one task a policy may hold at once.
fn max_lines(p: &VerificationPolicy) -> usize {
    match p {
        VerificationPolicy::None => 1,
        VerificationPolicy::Quorum { k, .. } => verify::quorum_max_lines(*k),
        VerificationPolicy::SpotCheck { .. } => 1 + MAX_SPOT_LINES,
    }
}

/// An attempt a worker holds (offered to it, or accepted by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    worker: NodeId,
    attempt: u32,
    accepted: bool,
    reserve_until: u64,
}

/// What the inputs and actions say, independently of the machine.
#[derive(Debug, Clone, Default)]
struct Model {
    now: u64,
    workers: Vec<(NodeId, u64, u16)>,
    /// Workers that return wrong outputs (each its own).
    cheaters: BTreeSet<NodeId>,
    jobs: Vec<(JobId, u32)>,
    policies: BTreeMap<JobId, VerificationPolicy>,
    /// Who was offered each attempt.
    attempt_worker: BTreeMap<(TaskId, u32), NodeId>,
    /// Comparisons the scheduler asked for: task, reference, check.
    compares: Vec<(TaskId, u32, u32)>,
    /// Tasks for which an output was reported unusable (an honest worker may be blamed).
    unusable: BTreeSet<TaskId>,
    rejected: BTreeSet<(TaskId, NodeId, u32)>,
    /// Attempts whose result is a verification vote.
    voted: BTreeSet<(TaskId, u32)>,
    nonce: u64,
    open: BTreeMap<TaskId, Vec<Held>>,
    history: Vec<(TaskId, NodeId, u32)>,
    terminal: BTreeMap<TaskId, u32>,
    escrowed: BTreeSet<(TaskId, u32)>,
    closed: BTreeSet<(TaskId, u32)>,
    winners: BTreeMap<TaskId, u32>,
    finished: BTreeSet<JobId>,
    seq: u32,
}

#[derive(Clone)]
struct Harness {
    s: Scheduler,
    rng: ChaCha20Rng,
    m: Model,
    log: Vec<SchedulerAction>,
}

fn creator() -> NodeKey {
    key(1)
}

impl Harness {
    /// `cheaters`: a bit per worker; `probation`: new nodes start on probation.
    fn with(seed: u64, n_workers: u8, slots: u16, cheaters: u8, probation: bool) -> Harness {
        let mut cfg = config();
        cfg.new_nodes_on_probation = probation;
        let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), cfg);
        let mut m = Model {
            now: T0,
            ..Model::default()
        };
        // A peer scheduler, so replication runs too.
        s.observe_advert(
            &scheduler_advert(NodeId::from_bytes([201; 32]), 1),
            u64::MAX,
            T0,
        );
        for i in 0..n_workers {
            let id = NodeId::from_bytes([i + 1; 32]);
            let slots = 1 + (slots + u16::from(i)) % 3;
            s.observe_advert(&builtin_worker(id, 1, slots), T0 + ADVERT_TTL, T0);
            m.workers.push((id, 1, slots));
            if cheaters & (1 << i) != 0 {
                m.cheaters.insert(id);
            }
        }
        Harness {
            s,
            rng: rng(seed),
            m,
            log: Vec::new(),
        }
    }

    fn submit(&mut self, tasks: u32, deadline_s: u8) -> Result<(), TestCaseError> {
        if self.m.jobs.len() >= 4 {
            return Ok(());
        }
        self.m.nonce += 1;
        let c = creator();
        let (mut spec, _) = builtin_job(&c, self.m.nonce, tasks);
        spec.deadline_ms = self.m.now + 20_000 + u64::from(deadline_s) * 1_000;
        spec.verification = policy(deadline_s / 7);
        self.m.policies.insert(spec.id, spec.verification.clone());
        let frame =
            std::sync::Arc::from(crate::signed::Signed::sign(&c, &spec).unwrap().into_bytes());
        let r = self.s.submit(spec.clone(), frame, self.m.now);
        prop_assert_eq!(r, Ok(Submitted::New { tasks }));
        self.m.jobs.push((spec.id, tasks));
        Ok(())
    }

    /// Offered (not accepted) or accepted attempts, in a fixed order.
    fn held(&self, accepted: bool) -> Vec<(TaskId, Held)> {
        self.m
            .open
            .iter()
            .flat_map(|(t, hs)| hs.iter().map(move |h| (*t, *h)))
            .filter(|(_, h)| h.accepted == accepted)
            .collect()
    }

    fn offer_of(&self, task: TaskId, h: &Held) -> TaskOffer {
        TaskOffer {
            task,
            scheduler: self.s.me(),
            worker: h.worker,
            attempt: h.attempt,
            price: 10,
            reserve_until_ms: h.reserve_until,
            deadline_ms: 0,
        }
    }

    /// The output hash a worker returns for a task: honest workers agree,
    /// each cheater returns its own.
    fn hash_of(&self, task: &TaskId, worker: NodeId) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&task.index.to_le_bytes());
        h[4] = task.job.0[0];
        if self.m.cheaters.contains(&worker) {
            h[5] = 0xC0;
            h[6..].copy_from_slice(&worker.as_bytes()[..26]);
        }
        h
    }

    fn honest(&self, task: &TaskId, attempt: u32) -> Option<bool> {
        self.m
            .attempt_worker
            .get(&(*task, attempt))
            .map(|w| !self.m.cheaters.contains(w))
    }

    fn result_for(&self, task: TaskId, h: &Held) -> TaskResult {
        let mut r = result_of(&self.offer_of(task, h));
        r.output_hash = self.hash_of(&task, h.worker);
        r
    }

    fn forget(&mut self, task: &TaskId, worker: NodeId, attempt: u32) {
        if let Some(hs) = self.m.open.get_mut(task) {
            hs.retain(|h| !(h.worker == worker && h.attempt == attempt));
        }
    }

    fn step(&mut self, e: &Ev) -> Result<(), TestCaseError> {
        let now = self.m.now;
        match *e {
            Ev::Advance(dt) => self.m.now += u64::from(dt),
            Ev::Accept(i, yes) => {
                let offered = self.held(false);
                if !offered.is_empty() {
                    let (t, h) = offered[i as usize % offered.len()];
                    let o = self.offer_of(t, &h);
                    match self.s.handle_accept(&answer(&o, yes), now) {
                        Ok(AcceptOutcome::Assigned) => {
                            prop_assert!(now < h.reserve_until);
                            for x in self.m.open.get_mut(&t).into_iter().flatten() {
                                if x.worker == h.worker && x.attempt == h.attempt {
                                    x.accepted = true;
                                }
                            }
                            self.m.history.push((t, h.worker, h.attempt));
                        }
                        Ok(AcceptOutcome::Declined) => self.forget(&t, h.worker, h.attempt),
                        Ok(AcceptOutcome::Duplicate) => {
                            prop_assert!(false, "duplicate of an unaccepted offer")
                        }
                        Err(e) => prop_assert!(false, "accept of an open offer refused: {e}"),
                    }
                }
            }
            Ev::Undeliverable(i) => {
                let offered = self.held(false);
                if !offered.is_empty() {
                    let (t, h) = offered[i as usize % offered.len()];
                    self.s.handle_undeliverable(&t, h.attempt, now);
                    self.forget(&t, h.worker, h.attempt);
                }
            }
            Ev::Progress(i, permille) => {
                let running = self.held(true);
                if !running.is_empty() {
                    let (t, h) = running[i as usize % running.len()];
                    self.m.seq += 1;
                    let r = self.s.handle_progress(
                        &progress_of(&self.offer_of(t, &h), self.m.seq, permille),
                        now,
                    );
                    prop_assert_eq!(r, Ok(()), "progress of a held attempt");
                }
            }
            Ev::Result(i) => {
                let running = self.held(true);
                if !running.is_empty() {
                    let (t, h) = running[i as usize % running.len()];
                    let r =
                        self.s
                            .handle_result(&self.result_for(t, &h), ResultFrames::default(), now);
                    prop_assert!(
                        matches!(r, Ok(ResultOutcome::Done | ResultOutcome::Voted)),
                        "{:?}",
                        r
                    );
                    if r == Ok(ResultOutcome::Voted) {
                        self.forget(&t, h.worker, h.attempt);
                    }
                }
            }
            Ev::LateResult(i) => {
                if !self.m.history.is_empty() {
                    let (t, w, a) = self.m.history[i as usize % self.m.history.len()];
                    let h = Held {
                        worker: w,
                        attempt: a,
                        accepted: true,
                        reserve_until: 0,
                    };
                    let was_terminal = self.m.terminal.get(&t).copied().unwrap_or(0) > 0;
                    match self.s.handle_result(
                        &self.result_for(t, &h),
                        ResultFrames::default(),
                        now,
                    ) {
                        Ok(ResultOutcome::Done | ResultOutcome::Voted) => {
                            prop_assert!(!was_terminal);
                            self.forget(&t, w, a);
                        }
                        Ok(ResultOutcome::Duplicate) if self.m.voted.contains(&(t, a)) => {}
                        Ok(_) => prop_assert!(was_terminal || !self.s.jobs().any(|j| *j == t.job)),
                        Err(_) => {}
                    }
                }
            }
            Ev::Unfetchable(i) => {
                // The creator could not fetch a winning output: the task reopens.
                let won: Vec<(TaskId, u32)> =
                    self.m.winners.iter().map(|(t, a)| (*t, *a)).collect();
                if !won.is_empty() {
                    let (t, a) = won[i as usize % won.len()];
                    match self.s.handle_unfetchable(&creator().node_id(), &t, a, now) {
                        Ok(()) => {
                            self.m.winners.remove(&t);
                            self.m.terminal.remove(&t);
                            self.m.finished.remove(&t.job);
                        }
                        Err(e) => prop_assert!(
                            matches!(
                                e,
                                UnfetchableError::UnknownJob(_) | UnfetchableError::PastDeadline
                            ),
                            "{:?}",
                            e
                        ),
                    }
                }
            }
            Ev::Fail(i) => {
                let running = self.held(true);
                if !running.is_empty() {
                    let (t, h) = running[i as usize % running.len()];
                    prop_assert_eq!(
                        self.s
                            .handle_task_failed(&t, &h.worker, h.attempt, "boom", now),
                        Ok(())
                    );
                    self.forget(&t, h.worker, h.attempt);
                }
            }
            Ev::Cancel(j) => {
                if !self.m.jobs.is_empty() {
                    let (id, _) = self.m.jobs[j as usize % self.m.jobs.len()];
                    let r = self.s.cancel(&id, &creator().node_id(), now);
                    prop_assert!(r.is_ok() || !self.s.jobs().any(|x| *x == id), "{:?}", r);
                }
            }
            Ev::WorkerLoss(k) => {
                let (id, _, _) = self.m.workers[k as usize % self.m.workers.len()];
                self.s.forget_node(&id, now);
            }
            Ev::Readvert(k, running) => {
                let n = self.m.workers.len();
                let w = &mut self.m.workers[k as usize % n];
                w.1 += 1;
                let mut a = builtin_worker(w.0, w.1, w.2);
                a.running_tasks = u16::from(running) % (w.2 + 1);
                self.s.observe_advert(&a, now + ADVERT_TTL, now);
            }
            Ev::Submit(n, d) => self.submit(u32::from(n), d)?,
            Ev::Compare(i, kind) => {
                if !self.m.compares.is_empty() {
                    let (task, reference, check) =
                        self.m.compares.remove(i as usize % self.m.compares.len());
                    // The creator's metric: the same (honest) output matches.
                    let result = match kind % 16 {
                        0 => CompareResult::CheckUnusable,
                        1 => CompareResult::ReferenceUnusable,
                        _ => {
                            let same = self.honest(&task, reference) == Some(true)
                                && self.honest(&task, check) == Some(true);
                            CompareResult::Similarity(if same { 980 } else { 100 })
                        }
                    };
                    if !matches!(result, CompareResult::Similarity(_)) {
                        self.m.unusable.insert(task);
                    }
                    let c = Comparison {
                        task,
                        reference_attempt: reference,
                        check_attempt: check,
                        result,
                    };
                    let r = self.s.handle_comparison(&creator().node_id(), &c, now);
                    prop_assert!(
                        r.is_ok()
                            || matches!(
                                r,
                                Err(ComparisonError::NotPending { .. }
                                    | ComparisonError::UnknownJob(_))
                            ),
                        "{:?}",
                        r
                    );
                }
            }
            Ev::Trust(k, on) => {
                let (id, _, _) = self.m.workers[k as usize % self.m.workers.len()];
                self.s.set_probation(id, on);
            }
            Ev::Operator(k, g) => {
                let (id, _, _) = self.m.workers[k as usize % self.m.workers.len()];
                self.s.set_operator(id, u64::from(g));
            }
        }
        self.pump()
    }

    /// Drives timers as a driver would, applying every action to the model.
    fn pump(&mut self) -> Result<(), TestCaseError> {
        let now = self.m.now;
        // A worker never accepts after the reservation: those offers are dead.
        for hs in self.m.open.values_mut() {
            hs.retain(|h| h.accepted || h.reserve_until > now);
        }
        let mut acts: Vec<SchedulerAction> = std::iter::from_fn(|| self.s.poll_action()).collect();
        while self.s.next_deadline().is_some_and(|d| d <= now) {
            self.s.handle_timeout(now, &mut self.rng);
            acts.extend(std::iter::from_fn(|| self.s.poll_action()));
        }
        for a in acts {
            self.apply(&a)?;
            self.log.push(a);
        }
        self.s.check_invariants().map_err(TestCaseError::fail)?;
        // The job views agree with the events seen.
        for (id, n) in &self.m.jobs {
            if let Some(v) = self.s.job_view(id) {
                let done = (0..*n)
                    .filter(|i| {
                        self.m.winners.contains_key(&TaskId {
                            job: *id,
                            index: *i,
                        })
                    })
                    .count() as u32;
                prop_assert_eq!(v.done, done);
                let ended = (0..*n)
                    .filter(|i| {
                        self.m.terminal.contains_key(&TaskId {
                            job: *id,
                            index: *i,
                        })
                    })
                    .count() as u32;
                prop_assert_eq!(v.done + v.failed, ended);
            }
        }
        Ok(())
    }

    fn apply(&mut self, a: &SchedulerAction) -> Result<(), TestCaseError> {
        match a {
            SchedulerAction::Offer { to, offer, .. }
            | SchedulerAction::OfferCrop { to, offer, .. } => {
                prop_assert_eq!(*to, offer.worker);
                let limit = self.m.policies.get(&offer.task.job).map_or(1, max_lines);
                prop_assert!(
                    self.m
                        .attempt_worker
                        .insert((offer.task, offer.attempt), *to)
                        .is_none(),
                    "attempt offered twice"
                );
                let hs = self.m.open.entry(offer.task).or_default();
                hs.push(Held {
                    worker: *to,
                    attempt: offer.attempt,
                    accepted: false,
                    reserve_until: offer.reserve_until_ms,
                });
                // Verification lines aside, a task is held by one worker;
                // its lines are always on distinct workers.
                prop_assert!(
                    hs.len() <= limit,
                    "task {:?} held by {} workers: {:?}",
                    offer.task,
                    hs.len(),
                    hs
                );
                let mut ws: Vec<NodeId> = hs.iter().map(|h| h.worker).collect();
                ws.sort();
                ws.dedup();
                prop_assert_eq!(ws.len(), hs.len(), "one worker holds two lines of a task");
                prop_assert_eq!(
                    self.m.terminal.get(&offer.task),
                    None,
                    "offer of an ended task"
                );
            }
            SchedulerAction::Outcome {
                worker,
                task,
                outcome,
                ..
            } => {
                if *outcome == Outcome::Verified {
                    prop_assert!(!self.m.cheaters.contains(worker), "a cheater verified");
                }
                if *outcome == Outcome::Failed && !self.m.unusable.contains(task) {
                    prop_assert!(self.m.cheaters.contains(worker), "an honest worker blamed");
                }
            }
            SchedulerAction::CancelTask {
                worker,
                task,
                attempt,
            } => self.forget(task, *worker, *attempt),
            SchedulerAction::Escrow { task, attempt, .. } => {
                prop_assert!(self.m.escrowed.insert((*task, *attempt)), "escrowed twice");
            }
            SchedulerAction::Closed { task, attempt, .. } => {
                prop_assert!(
                    self.m.escrowed.contains(&(*task, *attempt)),
                    "refund without escrow"
                );
                prop_assert!(self.m.closed.insert((*task, *attempt)), "refunded twice");
                prop_assert_ne!(
                    self.m.winners.get(task),
                    Some(attempt),
                    "refund of the paid attempt"
                );
            }
            SchedulerAction::Notify { job, event, .. } => match event {
                JobEvent::Done {
                    task,
                    worker,
                    attempt,
                    ..
                }
                | JobEvent::Verified {
                    task,
                    worker,
                    attempt,
                } => {
                    let t = TaskId {
                        job: *job,
                        index: *task,
                    };
                    if matches!(event, JobEvent::Verified { .. }) {
                        prop_assert!(
                            !self.m.cheaters.contains(worker),
                            "a cheater's result verified"
                        );
                    }
                    prop_assert!(
                        !self.m.rejected.contains(&(t, *worker, *attempt)),
                        "a caught result accepted"
                    );
                    let n = self.m.terminal.entry(t).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "task ended twice");
                    prop_assert!(
                        self.m.escrowed.contains(&(t, *attempt)),
                        "done without escrow"
                    );
                    prop_assert!(!self.m.closed.contains(&(t, *attempt)), "done after refund");
                    self.m.winners.insert(t, *attempt);
                    self.forget(&t, *worker, *attempt);
                }
                JobEvent::Failed { task, .. } => {
                    let t = TaskId {
                        job: *job,
                        index: *task,
                    };
                    let n = self.m.terminal.entry(t).or_default();
                    *n += 1;
                    prop_assert_eq!(*n, 1, "task ended twice");
                    prop_assert!(
                        self.m.open.get(&t).is_none_or(|h| h.is_empty()),
                        "failed task still held"
                    );
                }
                JobEvent::Rejected {
                    task,
                    worker,
                    attempt,
                } => {
                    let t = TaskId {
                        job: *job,
                        index: *task,
                    };
                    prop_assert_ne!(
                        self.m.winners.get(&t),
                        Some(attempt),
                        "an accepted result caught"
                    );
                    self.m.rejected.insert((t, *worker, *attempt));
                }
                JobEvent::Vote { task, attempt, .. } => {
                    let t = TaskId {
                        job: *job,
                        index: *task,
                    };
                    prop_assert!(self.m.voted.insert((t, *attempt)), "voted twice");
                    prop_assert!(
                        self.m.escrowed.contains(&(t, *attempt)),
                        "vote without escrow"
                    );
                }
                JobEvent::Compare {
                    task,
                    reference_attempt,
                    check_attempt,
                    ..
                } => {
                    let t = TaskId {
                        job: *job,
                        index: *task,
                    };
                    self.m
                        .compares
                        .push((t, *reference_attempt, *check_attempt));
                }
                JobEvent::JobFinished { done, failed } => {
                    prop_assert!(self.m.finished.insert(*job), "finished twice");
                    let n = self
                        .m
                        .jobs
                        .iter()
                        .find(|(j, _)| j == job)
                        .map(|(_, n)| *n)
                        .unwrap_or(0);
                    prop_assert_eq!(done + failed, n);
                    for i in 0..n {
                        let t = TaskId {
                            job: *job,
                            index: i,
                        };
                        prop_assert_eq!(
                            self.m.terminal.get(&t),
                            Some(&1),
                            "task {} of a finished job",
                            i
                        );
                        prop_assert!(self.m.open.get(&t).is_none_or(|h| h.is_empty()));
                    }
                    let won = (0..n)
                        .filter(|i| {
                            self.m.winners.contains_key(&TaskId {
                                job: *job,
                                index: *i,
                            })
                        })
                        .count() as u32;
                    prop_assert_eq!(*done, won);
                }
                _ => {}
            },
            SchedulerAction::Replicate { snapshot, .. } => {
                prop_assert!(codec::encode(snapshot).is_ok());
            }
        }
        Ok(())
    }

    /// Runs past every deadline and checks that everything closed properly.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.m.now += 10_000_000;
        self.pump()?;
        for (id, n) in &self.m.jobs {
            prop_assert!(self.m.finished.contains(id), "job never finished");
            for i in 0..*n {
                let t = TaskId { job: *id, index: i };
                prop_assert_eq!(self.m.terminal.get(&t), Some(&1));
            }
        }
        // Every escrow is either paid (the winner) or refunded, never both.
        for (t, a) in &self.m.escrowed {
            let won = self.m.winners.get(t) == Some(a);
            prop_assert!(
                won != self.m.closed.contains(&(*t, *a)),
                "escrow {:?}/{} won {}",
                t,
                a,
                won
            );
        }
        prop_assert_eq!(self.s.in_flight(), 0);
        Ok(())
    }
}

fn run_with(
    seed: u64,
    workers: u8,
    slots: u16,
    cheaters: u8,
    probation: bool,
    jobs: &[(u8, u8)],
    events: &[Ev],
) -> Result<Harness, TestCaseError> {
    let mut h = Harness::with(seed, workers, slots, cheaters, probation);
    for (n, d) in jobs {
        h.submit(u32::from(*n), *d)?;
    }
    h.pump()?;
    for e in events {
        h.step(e)?;
    }
    Ok(h)
}

fn restore(h: &Harness) -> Scheduler {
    let snap = h.s.snapshot();
    let core = codec::encode(&snap.core).unwrap();
    let nodes = codec::encode(&snap.nodes).unwrap();
    let back = SchedulerSnapshot {
        version: snap.version,
        me: snap.me,
        core: codec::decode(&core, codec::MAX_FRAME).unwrap(),
        nodes: codec::decode(&nodes, codec::MAX_FRAME).unwrap(),
        jobs: snap
            .jobs
            .iter()
            .map(|j| codec::decode(&codec::encode(j).unwrap(), codec::MAX_FRAME).unwrap())
            .collect(),
    };
    Scheduler::restore(h.s.config().clone(), back).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// No task is ever held by two workers (verification lines aside, and
    /// those on distinct workers); every escrow is paid or refunded once;
    /// every task of a finished job ends exactly once in Done, Verified or
    /// Failed; with cheaters about, a caught result is never accepted, a
    /// verified result is never a cheater's, and only cheaters are blamed.
    #[test]
    fn safety_under_random_events(
        seed in any::<u64>(),
        workers in 1u8..7,
        slots in 0u16..3,
        cheaters in any::<u8>(),
        probation in any::<bool>(),
        jobs in prop::collection::vec((1u8..6, any::<u8>()), 1..3),
        events in prop::collection::vec(ev(), 0..120),
    ) {
        let mut h = run_with(seed, workers, slots, cheaters, probation, &jobs, &events)?;
        h.finish()?;
    }

    /// The same properties with jobs moving along, so that verdicts are
    /// reached: honest results verified, cheaters caught.
    #[test]
    fn verification_with_cheaters(
        seed in any::<u64>(),
        workers in 3u8..8,
        slots in 0u16..3,
        cheaters in any::<u8>(),
        probation in any::<bool>(),
        jobs in prop::collection::vec((1u8..6, any::<u8>()), 1..4),
        events in prop::collection::vec(busy_ev(), 0..200),
    ) {
        let mut h = run_with(seed, workers, slots, cheaters, probation, &jobs, &events)?;
        h.finish()?;
    }

    /// The same events and RNG seed give the same actions.
    #[test]
    fn replay_is_identical(
        seed in any::<u64>(),
        workers in 1u8..7,
        jobs in prop::collection::vec((1u8..6, any::<u8>()), 1..3),
        events in prop::collection::vec(ev(), 0..80),
    ) {
        let a = run_with(seed, workers, 1, 0b0101, true, &jobs, &events)?;
        let b = run_with(seed, workers, 1, 0b0101, true, &jobs, &events)?;
        prop_assert_eq!(&a.log, &b.log);
        prop_assert_eq!(a.s.snapshot(), b.s.snapshot());
    }

    /// Snapshot (through the codec) → restore → the same actions afterwards.
    #[test]
    fn restore_resumes_identically(
        seed in any::<u64>(),
        workers in 1u8..7,
        jobs in prop::collection::vec((1u8..6, any::<u8>()), 1..3),
        events in prop::collection::vec(ev(), 0..80),
        split in any::<prop::sample::Index>(),
    ) {
        let k = split.index(events.len() + 1);
        let mut a = run_with(seed, workers, 2, 0b0110, true, &jobs, &events[..k])?;
        let mut b = a.clone();
        b.s = restore(&a);
        prop_assert_eq!(b.s.snapshot(), a.s.snapshot());
        a.log.clear();
        b.log.clear();
        for e in &events[k..] {
            a.step(e)?;
            b.step(e)?;
        }
        a.finish()?;
        b.finish()?;
        prop_assert_eq!(&a.log, &b.log);
    }
}
