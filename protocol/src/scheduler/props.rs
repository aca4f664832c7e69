//! Property tests: the scheduler driven by random event sequences (accepts,
//! declines, lapses, undeliverable offers, silent workers, late and duplicate
//! results, failures, cancels, worker loss, re-adverts, new jobs), checked
//! against a model built only from its inputs and actions.

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
use crate::wire::TaskOffer;

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
    ]
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
    jobs: Vec<(JobId, u32)>,
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
    fn new(seed: u64, n_workers: u8, slots: u16) -> Harness {
        let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), config());
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
                    let r = self.s.handle_result(
                        &result_of(&self.offer_of(t, &h)),
                        ResultFrames::default(),
                        now,
                    );
                    prop_assert_eq!(r, Ok(ResultOutcome::Done));
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
                        &result_of(&self.offer_of(t, &h)),
                        ResultFrames::default(),
                        now,
                    ) {
                        Ok(ResultOutcome::Done) => prop_assert!(!was_terminal),
                        Ok(_) => prop_assert!(was_terminal || !self.s.jobs().any(|j| *j == t.job)),
                        Err(_) => {}
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
            SchedulerAction::Offer { to, offer, .. } => {
                prop_assert_eq!(*to, offer.worker);
                let hs = self.m.open.entry(offer.task).or_default();
                hs.push(Held {
                    worker: *to,
                    attempt: offer.attempt,
                    accepted: false,
                    reserve_until: offer.reserve_until_ms,
                });
                prop_assert!(
                    hs.len() <= 1,
                    "task {:?} held by two workers: {:?}",
                    offer.task,
                    hs
                );
                prop_assert_eq!(
                    self.m.terminal.get(&offer.task),
                    None,
                    "offer of an ended task"
                );
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
                } => {
                    let t = TaskId {
                        job: *job,
                        index: *task,
                    };
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
            SchedulerAction::OfferCrop { .. } | SchedulerAction::Outcome { .. } => {}
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

fn run(
    seed: u64,
    workers: u8,
    slots: u16,
    jobs: &[(u8, u8)],
    events: &[Ev],
) -> Result<Harness, TestCaseError> {
    let mut h = Harness::new(seed, workers, slots);
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

    /// No task is ever held by two workers; every escrow is paid or refunded
    /// once; every task of a finished job ends exactly once in Done or Failed.
    #[test]
    fn safety_under_random_events(
        seed in any::<u64>(),
        workers in 1u8..7,
        slots in 0u16..3,
        jobs in prop::collection::vec((1u8..6, any::<u8>()), 1..3),
        events in prop::collection::vec(ev(), 0..120),
    ) {
        let mut h = run(seed, workers, slots, &jobs, &events)?;
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
        let a = run(seed, workers, 1, &jobs, &events)?;
        let b = run(seed, workers, 1, &jobs, &events)?;
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
        let mut a = run(seed, workers, 2, &jobs, &events[..k])?;
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
