//! The worker machine: task slots, answering offers, the task lifecycle and
//! heartbeat timing (docs/jobs.md, steps 3 to 6).
//!
//! # What this module owns
//!
//! * [`Worker::offer`]: the answer to a scheduler's offer. Accepted only if
//!   the offer is addressed to this node, belongs to the spec sent with it,
//!   names a task the spec has, has not lapsed (`now < reserve_until_ms`) nor
//!   passed its deadline, pays at least this node's asking price and at most
//!   the job's ceiling, the node meets the job's requirements by its own
//!   advert ([`crate::placement::meets`], the scheduler's rule), the node does
//!   not already run that task, and a slot is free (`max_tasks`). Each answer
//!   is remembered (the last `remembered_answers`): the same offer again gets
//!   the same answer, so a retried request never takes a second slot.
//! * The lifecycle of an accepted task: accepted → fetching → running →
//!   finished / failed / cancelled / aborted (past its deadline); the slot
//!   is free again when the task ends.
//! * Heartbeats: every task holding a slot sends [`Progress`] to the scheduler
//!   that offered it at least every `heartbeat_interval_ms` from acceptance,
//!   and once when it starts running, with a sequence number that grows by
//!   one per report ([`Worker::next_deadline`], [`Worker::handle_timeout`]).
//! * [`Worker::running_tasks`] for the node's capacity advert.
//!
//! # What it must not do
//!
//! No I/O, no clock, no signatures: the driver verifies offers and specs
//! before calling, signs the `TaskAccept` and `Progress` it gets back, runs
//! the runtime, fetches inputs, and reports each step here.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::placement::{Unmet, meets};
use crate::wire::{CapacityAdvert, JobSpec, Progress, TaskAccept, TaskId, TaskOffer};

/// Up to this many entries, the worker's vectors grow one entry at a time:
/// a node holds one or a few slots and answers, and a simulated mesh holds
/// 100 000 workers, where the standard first allocation (room for 4) cost
/// ~1 KiB per worker per vector for nothing.
const TIGHT: usize = 8;

/// Makes room for one more element, exactly while the vector is small.
fn tight<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() && v.len() < TIGHT {
        v.reserve_exact(1);
    }
}

/// Settings of a [`Worker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Tasks run at once (the advert's `max_tasks`).
    pub max_tasks: u16,
    /// Progress is sent at least this often per task.
    pub heartbeat_interval_ms: u64,
    /// Answers remembered for repeated offers.
    pub remembered_answers: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_tasks: 1,
            heartbeat_interval_ms: 10_000,
            remembered_answers: 1024,
        }
    }
}

/// Why an offer was declined (its text is the `TaskAccept` reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Declined {
    /// The offer names another worker.
    #[error("offer is addressed to {worker}, not this node")]
    NotForMe {
        /// The worker named.
        worker: NodeId,
    },
    /// The spec sent with the offer is another job's.
    #[error("offer is for job {offer} but the spec sent is job {spec}")]
    JobMismatch {
        /// The offer's job.
        offer: String,
        /// The spec's job.
        spec: String,
    },
    /// The job has no such task.
    #[error("job has {tasks} tasks; no task {index}")]
    NoSuchTask {
        /// The index.
        index: u32,
        /// Tasks in the job.
        tasks: u64,
    },
    /// The reservation lapsed before the answer.
    #[error("offer lapsed at {reserve_until_ms} (now {now_ms})")]
    Lapsed {
        /// Its reservation.
        reserve_until_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// The task deadline already passed.
    #[error("task deadline {deadline_ms} already passed (now {now_ms})")]
    PastDeadline {
        /// The deadline.
        deadline_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// The offer pays less than this node asks.
    #[error("offer pays {offered} credits per task; this node asks {asking}")]
    Underpriced {
        /// Offered.
        offered: u64,
        /// Asked.
        asking: u64,
    },
    /// The offer pays more than the job allows (the ledger would refuse the escrow).
    #[error("offer price {price} is above the job's ceiling {ceiling}")]
    AboveCeiling {
        /// Offered.
        price: u64,
        /// The job's ceiling.
        ceiling: u64,
    },
    /// This node does not meet the job's requirements.
    #[error("requirements not met: {0}")]
    Requirements(Unmet),
    /// This node already runs another attempt of the task.
    #[error("this node already runs attempt {attempt} of this task")]
    AlreadyRunning {
        /// The attempt it runs.
        attempt: u32,
    },
    /// Every slot is busy.
    #[error("all {max} task slots are busy")]
    NoFreeSlot {
        /// Slots.
        max: u16,
    },
    /// The same task and attempt were offered before with other terms.
    #[error("attempt {attempt} of this task was offered before with other terms")]
    ConflictingOffer {
        /// The attempt.
        attempt: u32,
    },
}

/// Where an accepted task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotPhase {
    /// Accepted; nothing started.
    Accepted,
    /// Fetching the key and inputs.
    Fetching,
    /// The runtime runs.
    Running,
}

/// A task holding a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSlot {
    /// The task.
    pub task: TaskId,
    /// The attempt accepted.
    pub attempt: u32,
    /// The scheduler that offered it (progress goes there).
    pub scheduler: NodeId,
    /// The agreed price.
    pub price: u64,
    /// Phase.
    pub phase: SlotPhase,
    /// Done so far, per mille.
    pub permille: u16,
    /// When accepted (our clock).
    pub accepted_at_ms: u64,
    /// When the runtime started, if it did.
    pub started_at_ms: Option<u64>,
    /// The task deadline.
    pub deadline_ms: u64,
    /// Last progress sequence number sent.
    pub seq: u32,
    /// When the next heartbeat is due.
    pub next_heartbeat_ms: u64,
}

impl TaskSlot {
    fn timer(&self) -> u64 {
        self.next_heartbeat_ms.min(self.deadline_ms)
    }
}

/// An effect for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerAction {
    /// Sign and send this progress report (also the heartbeat) to `to`.
    Progress {
        /// The scheduler.
        to: NodeId,
        /// The report.
        progress: Progress,
    },
    /// The task ran past its deadline: stop the runtime; the slot is free.
    /// (The scheduler has given the task to another worker.)
    Abort {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
}

/// Why a lifecycle step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// No slot holds this task.
    #[error("no accepted task {0:?}")]
    UnknownTask(TaskId),
    /// The step does not follow from the task's phase.
    #[error("task {task:?} is {phase:?}; expected {expected}")]
    WrongPhase {
        /// The task.
        task: TaskId,
        /// Its phase.
        phase: SlotPhase,
        /// What the step needs.
        expected: &'static str,
    },
}

/// The worker state machine. See the module docs.
///
/// The state is a few small vectors, not maps: a node holds at most
/// `max_tasks` slots (a handful), and a simulated mesh holds one worker per
/// node, 100 000 of them, where a `BTreeMap`'s first node alone (room for 11
/// entries, 2 to 3 KiB here) per map and worker came to ~450 MB and a cache
/// miss per look-up. Lookups scan or binary-search; the order of every
/// decision is the one the maps gave (tasks by id; timers by due time, then
/// task).
#[derive(Debug, Clone)]
pub struct Worker {
    me: NodeId,
    config: WorkerConfig,
    /// Slots, sorted by task.
    slots: Vec<TaskSlot>,
    /// The last `remembered_answers` answers, oldest first.
    answers: VecDeque<(TaskOffer, TaskAccept)>,
    actions: VecDeque<WorkerAction>,
}

impl Worker {
    /// A worker with no task.
    pub fn new(me: NodeId, config: WorkerConfig) -> Self {
        Worker {
            me,
            config,
            slots: Vec::new(),
            answers: VecDeque::new(),
            actions: VecDeque::new(),
        }
    }

    /// The node this worker runs on.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Settings.
    pub fn config(&self) -> WorkerConfig {
        self.config
    }

    /// Tasks holding a slot (the advert's `running_tasks`).
    pub fn running_tasks(&self) -> u16 {
        u16::try_from(self.slots.len()).unwrap_or(u16::MAX)
    }

    /// Slots free.
    pub fn free_slots(&self) -> u16 {
        self.config.max_tasks.saturating_sub(self.running_tasks())
    }

    /// The slot of a task.
    pub fn slot(&self, task: &TaskId) -> Option<&TaskSlot> {
        self.find(task).ok().and_then(|i| self.slots.get(i))
    }

    /// Where `task`'s slot is (`Ok`), or would go (`Err`).
    fn find(&self, task: &TaskId) -> Result<usize, usize> {
        self.slots.binary_search_by(|s| s.task.cmp(task))
    }

    /// Every slot, by task.
    pub fn slots(&self) -> impl Iterator<Item = &TaskSlot> {
        self.slots.iter()
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<WorkerAction> {
        self.actions.pop_front()
    }

    /// When [`Worker::handle_timeout`] has work next.
    pub fn next_deadline(&self) -> Option<u64> {
        self.slots.iter().map(TaskSlot::timer).min()
    }

    /// Answers an offer (verified by the driver) that came with the job's
    /// spec (verified too), judged by this node's own current advert.
    pub fn offer(
        &mut self,
        offer: &TaskOffer,
        spec: &JobSpec,
        own: &CapacityAdvert,
        now_ms: u64,
    ) -> TaskAccept {
        if let Some((seen, answer)) = self
            .answers
            .iter()
            .rev()
            .find(|(o, _)| o.task == offer.task && o.attempt == offer.attempt)
        {
            if seen == offer {
                return answer.clone();
            }
            return self.answer(
                offer,
                Err(Declined::ConflictingOffer {
                    attempt: offer.attempt,
                }),
                false,
            );
        }
        let verdict = self.judge(offer, spec, own, now_ms);
        if verdict.is_ok() {
            let slot = TaskSlot {
                task: offer.task,
                attempt: offer.attempt,
                scheduler: offer.scheduler,
                price: offer.price,
                phase: SlotPhase::Accepted,
                permille: 0,
                accepted_at_ms: now_ms,
                started_at_ms: None,
                deadline_ms: offer.deadline_ms,
                seq: 0,
                next_heartbeat_ms: now_ms.saturating_add(self.config.heartbeat_interval_ms.max(1)),
            };
            // `judge` refused a task already held: the slot is new.
            if let Err(at) = self.find(&offer.task) {
                tight(&mut self.slots);
                self.slots.insert(at, slot);
            }
        }
        self.answer(offer, verdict, true)
    }

    fn answer(
        &mut self,
        offer: &TaskOffer,
        verdict: Result<(), Declined>,
        remember: bool,
    ) -> TaskAccept {
        let accept = TaskAccept {
            task: offer.task,
            worker: self.me,
            attempt: offer.attempt,
            accepted: verdict.is_ok(),
            reason: verdict
                .err()
                .map(|d| crate::scheduler::truncate(&d.to_string(), crate::wire::MAX_TEXT))
                .unwrap_or_default(),
        };
        if remember && self.config.remembered_answers > 0 {
            while self.answers.len() >= self.config.remembered_answers {
                self.answers.pop_front();
            }
            if self.answers.len() == self.answers.capacity() && self.answers.len() < TIGHT {
                self.answers.reserve_exact(1);
            }
            self.answers.push_back((offer.clone(), accept.clone()));
        }
        accept
    }

    fn judge(
        &self,
        offer: &TaskOffer,
        spec: &JobSpec,
        own: &CapacityAdvert,
        now_ms: u64,
    ) -> Result<(), Declined> {
        if offer.worker != self.me {
            return Err(Declined::NotForMe {
                worker: offer.worker,
            });
        }
        if offer.task.job != spec.id {
            return Err(Declined::JobMismatch {
                offer: offer.task.job.to_string(),
                spec: spec.id.to_string(),
            });
        }
        let tasks = spec.split.task_count();
        if u64::from(offer.task.index) >= tasks {
            return Err(Declined::NoSuchTask {
                index: offer.task.index,
                tasks,
            });
        }
        if now_ms >= offer.reserve_until_ms {
            return Err(Declined::Lapsed {
                reserve_until_ms: offer.reserve_until_ms,
                now_ms,
            });
        }
        if now_ms >= offer.deadline_ms {
            return Err(Declined::PastDeadline {
                deadline_ms: offer.deadline_ms,
                now_ms,
            });
        }
        if offer.price > spec.max_price_per_task {
            return Err(Declined::AboveCeiling {
                price: offer.price,
                ceiling: spec.max_price_per_task,
            });
        }
        if offer.price < own.price_per_task {
            return Err(Declined::Underpriced {
                offered: offer.price,
                asking: own.price_per_task,
            });
        }
        meets(own, spec).map_err(Declined::Requirements)?;
        if let Some(held) = self.slot(&offer.task) {
            return Err(Declined::AlreadyRunning {
                attempt: held.attempt,
            });
        }
        if self.free_slots() == 0 {
            return Err(Declined::NoFreeSlot {
                max: self.config.max_tasks,
            });
        }
        Ok(())
    }

    fn slot_mut(&mut self, task: &TaskId) -> Result<&mut TaskSlot, WorkerError> {
        match self.find(task) {
            Ok(i) => self.slots.get_mut(i).ok_or(WorkerError::UnknownTask(*task)),
            Err(_) => Err(WorkerError::UnknownTask(*task)),
        }
    }

    /// The driver started fetching the key and inputs.
    pub fn fetching(&mut self, task: &TaskId, _now_ms: u64) -> Result<(), WorkerError> {
        let s = self.slot_mut(task)?;
        match s.phase {
            SlotPhase::Accepted => {
                s.phase = SlotPhase::Fetching;
                Ok(())
            }
            phase => Err(WorkerError::WrongPhase {
                task: *task,
                phase,
                expected: "accepted",
            }),
        }
    }

    /// The runtime started: a progress report goes out at once.
    pub fn running(&mut self, task: &TaskId, now_ms: u64) -> Result<(), WorkerError> {
        let s = self.slot_mut(task)?;
        match s.phase {
            SlotPhase::Accepted | SlotPhase::Fetching => {
                s.phase = SlotPhase::Running;
                s.started_at_ms = Some(now_ms);
                self.send_progress(task, now_ms);
                Ok(())
            }
            phase => Err(WorkerError::WrongPhase {
                task: *task,
                phase,
                expected: "accepted or fetching",
            }),
        }
    }

    /// The runtime's progress (sent with the next heartbeat); never goes back.
    pub fn set_progress(
        &mut self,
        task: &TaskId,
        permille: u16,
        _now_ms: u64,
    ) -> Result<(), WorkerError> {
        let s = self.slot_mut(task)?;
        match s.phase {
            SlotPhase::Running => {
                s.permille = s.permille.max(permille.min(1000));
                Ok(())
            }
            phase => Err(WorkerError::WrongPhase {
                task: *task,
                phase,
                expected: "running",
            }),
        }
    }

    /// The task finished (output stored): the slot is free. Returns the slot
    /// for the receipt (times, attempt, price).
    pub fn finished(&mut self, task: &TaskId, _now_ms: u64) -> Result<TaskSlot, WorkerError> {
        let s = self.slot_mut(task)?;
        if s.phase != SlotPhase::Running {
            return Err(WorkerError::WrongPhase {
                task: *task,
                phase: s.phase,
                expected: "running",
            });
        }
        self.release(task).ok_or(WorkerError::UnknownTask(*task))
    }

    /// The task failed (fetch or run): the slot is free; the driver reports it.
    pub fn failed(&mut self, task: &TaskId, _now_ms: u64) -> Result<TaskSlot, WorkerError> {
        self.release(task).ok_or(WorkerError::UnknownTask(*task))
    }

    /// The scheduler cancelled the attempt (`CancelTask`, or a progress
    /// answered `Cancelled`): stop it. Other attempts are left alone.
    pub fn cancel(&mut self, task: &TaskId, attempt: u32, _now_ms: u64) -> Option<TaskSlot> {
        if self.slot(task).is_some_and(|s| s.attempt == attempt) {
            self.release(task)
        } else {
            None
        }
    }

    fn release(&mut self, task: &TaskId) -> Option<TaskSlot> {
        let i = self.find(task).ok()?;
        Some(self.slots.remove(i))
    }

    fn send_progress(&mut self, task: &TaskId, now_ms: u64) {
        let interval = self.config.heartbeat_interval_ms.max(1);
        let me = self.me;
        let Some(s) = self.find(task).ok().and_then(|i| self.slots.get_mut(i)) else {
            return;
        };
        s.seq = s.seq.saturating_add(1);
        s.next_heartbeat_ms = now_ms.saturating_add(interval);
        if self.actions.is_empty() && self.actions.capacity() == 0 {
            // One action at a time is the rule (the driver polls at once).
            self.actions.reserve_exact(1);
        }
        self.actions.push_back(WorkerAction::Progress {
            to: s.scheduler,
            progress: Progress {
                task: s.task,
                worker: me,
                attempt: s.attempt,
                seq: s.seq,
                permille: s.permille,
                at_ms: now_ms,
            },
        });
    }

    /// Sends the heartbeats due and aborts tasks past their deadline.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // The earliest timer first, ties by task: each step either frees
        // the slot or moves its timer past `now_ms`, so this ends.
        while let Some((task, attempt, deadline_ms)) = self
            .slots
            .iter()
            .filter(|s| s.timer() <= now_ms)
            .min_by_key(|s| (s.timer(), s.task))
            .map(|s| (s.task, s.attempt, s.deadline_ms))
        {
            if now_ms >= deadline_ms {
                self.release(&task);
                self.actions
                    .push_back(WorkerAction::Abort { task, attempt });
            } else {
                self.send_progress(&task, now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::wire::{
        ImageFormat, JobId, JobKind, Requirements, Role, SplitRule, VerificationPolicy, samples,
    };
    use proptest::prelude::*;

    const T0: u64 = 1_780_000_000_000;

    fn me() -> NodeId {
        NodeId::from_bytes([7; 32])
    }

    fn spec(tasks: u32) -> JobSpec {
        let creator = NodeId::from_bytes([1; 32]);
        JobSpec {
            id: JobId::derive(&creator, 1),
            creator,
            nonce: 1,
            created_at_ms: T0,
            kind: JobKind::Builtin,
            inputs: vec![],
            requirements: Requirements::default(),
            split: SplitRule::Frames {
                start: 1,
                end: tasks,
                step: 1,
            },
            width: 64,
            height: 64,
            format: ImageFormat::Png,
            max_price_per_task: 20,
            verification: VerificationPolicy::None,
            deadline_ms: T0 + 3_600_000,
        }
    }

    fn advert() -> CapacityAdvert {
        samples::capacity(me())
    }

    fn offer(spec: &JobSpec, index: u32, attempt: u32) -> TaskOffer {
        TaskOffer {
            task: TaskId {
                job: spec.id,
                index,
            },
            scheduler: NodeId::from_bytes([9; 32]),
            worker: me(),
            attempt,
            price: 10,
            reserve_until_ms: T0 + 5_000,
            deadline_ms: T0 + 60_000,
        }
    }

    fn worker(max_tasks: u16) -> Worker {
        Worker::new(
            me(),
            WorkerConfig {
                max_tasks,
                heartbeat_interval_ms: 10_000,
                remembered_answers: 4,
            },
        )
    }

    fn drain(w: &mut Worker) -> Vec<WorkerAction> {
        std::iter::from_fn(|| w.poll_action()).collect()
    }

    #[test]
    fn accepts_and_answers_a_repeat_the_same_way() {
        let mut w = worker(2);
        let s = spec(4);
        let o = offer(&s, 0, 0);
        let a = w.offer(&o, &s, &advert(), T0);
        assert!(a.accepted, "{}", a.reason);
        assert_eq!((a.worker, a.attempt, a.task), (me(), 0, o.task));
        assert_eq!(w.running_tasks(), 1);
        // The same offer again (a retried request): same answer, no second slot.
        assert_eq!(w.offer(&o, &s, &advert(), T0 + 10), a);
        assert_eq!(w.running_tasks(), 1);
        // Even after it lapsed.
        assert_eq!(w.offer(&o, &s, &advert(), T0 + 9_000), a);
        // Different terms for the same attempt: declined.
        let mut other = o.clone();
        other.price = 15;
        let d = w.offer(&other, &s, &advert(), T0 + 10);
        assert!(!d.accepted);
        assert!(d.reason.contains("other terms"));
    }

    #[test]
    fn each_decline_says_why() {
        let s = spec(4);
        let a = advert();
        let cases: Vec<(TaskOffer, JobSpec, CapacityAdvert, u64, &str)> = vec![
            (
                TaskOffer {
                    worker: NodeId::from_bytes([8; 32]),
                    ..offer(&s, 0, 0)
                },
                s.clone(),
                a.clone(),
                T0,
                "not this node",
            ),
            (
                offer(&s, 0, 1),
                spec(3).clone_with_nonce(2),
                a.clone(),
                T0,
                "but the spec sent is job",
            ),
            (offer(&s, 4, 2), s.clone(), a.clone(), T0, "no task 4"),
            (offer(&s, 0, 3), s.clone(), a.clone(), T0 + 5_000, "lapsed"),
            (
                TaskOffer {
                    deadline_ms: T0 + 1_000,
                    ..offer(&s, 0, 4)
                },
                s.clone(),
                a.clone(),
                T0 + 1_000,
                "deadline",
            ),
            (
                TaskOffer {
                    price: 5,
                    ..offer(&s, 0, 5)
                },
                s.clone(),
                a.clone(),
                T0,
                "this node asks 10",
            ),
            (
                TaskOffer {
                    price: 25,
                    ..offer(&s, 0, 6)
                },
                s.clone(),
                a.clone(),
                T0,
                "above the job's ceiling 20",
            ),
            (
                offer(&s, 0, 7),
                s.clone(),
                CapacityAdvert {
                    roles: vec![Role::Scheduler],
                    ..a.clone()
                },
                T0,
                "requirements not met: this node does not take the worker role",
            ),
        ];
        for (o, sp, adv, now, want) in cases {
            let mut w = worker(1);
            let d = w.offer(&o, &sp, &adv, now);
            assert!(!d.accepted, "{want}");
            assert!(d.reason.contains(want), "{:?} lacks {want:?}", d.reason);
            assert_eq!(w.running_tasks(), 0);
        }
    }

    trait WithNonce {
        fn clone_with_nonce(&self, nonce: u64) -> JobSpec;
    }
    impl WithNonce for JobSpec {
        fn clone_with_nonce(&self, nonce: u64) -> JobSpec {
            JobSpec {
                id: JobId::derive(&self.creator, nonce),
                nonce,
                ..self.clone()
            }
        }
    }

    #[test]
    fn slots_bound_what_is_accepted() {
        let mut w = worker(2);
        let s = spec(4);
        assert!(w.offer(&offer(&s, 0, 0), &s, &advert(), T0).accepted);
        let again = w.offer(&offer(&s, 0, 1), &s, &advert(), T0);
        assert!(again.reason.contains("already runs attempt 0"));
        assert!(w.offer(&offer(&s, 1, 0), &s, &advert(), T0).accepted);
        let full = w.offer(&offer(&s, 2, 0), &s, &advert(), T0);
        assert_eq!(full.reason, "all 2 task slots are busy");
        assert_eq!(w.free_slots(), 0);
        let t0 = offer(&s, 0, 0).task;
        w.running(&t0, T0 + 1).unwrap();
        w.finished(&t0, T0 + 2).unwrap();
        assert!(w.offer(&offer(&s, 2, 1), &s, &advert(), T0 + 3).accepted);
    }

    #[test]
    fn lifecycle_steps_in_order() {
        let mut w = worker(1);
        let s = spec(1);
        let o = offer(&s, 0, 0);
        assert!(w.offer(&o, &s, &advert(), T0).accepted);
        assert!(matches!(
            w.finished(&o.task, T0),
            Err(WorkerError::WrongPhase { .. })
        ));
        assert!(w.set_progress(&o.task, 5, T0).is_err());
        w.fetching(&o.task, T0).unwrap();
        assert!(w.fetching(&o.task, T0).is_err());
        w.running(&o.task, T0 + 100).unwrap();
        assert!(w.running(&o.task, T0 + 100).is_err());
        w.set_progress(&o.task, 400, T0 + 200).unwrap();
        w.set_progress(&o.task, 300, T0 + 300).unwrap();
        assert_eq!(w.slot(&o.task).unwrap().permille, 400);
        let slot = w.finished(&o.task, T0 + 400).unwrap();
        assert_eq!(slot.started_at_ms, Some(T0 + 100));
        assert_eq!(w.running_tasks(), 0);
        assert!(matches!(
            w.finished(&o.task, T0),
            Err(WorkerError::UnknownTask(_))
        ));
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn heartbeats_at_every_interval_with_growing_seq() {
        let mut w = worker(1);
        let s = spec(1);
        let o = offer(&s, 0, 3);
        assert!(w.offer(&o, &s, &advert(), T0).accepted);
        assert_eq!(w.next_deadline(), Some(T0 + 10_000));
        w.handle_timeout(T0 + 9_999);
        assert!(drain(&mut w).is_empty());
        w.handle_timeout(T0 + 10_000);
        let a = drain(&mut w);
        assert_eq!(a.len(), 1);
        let WorkerAction::Progress { to, progress } = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(*to, o.scheduler);
        assert_eq!(
            (progress.seq, progress.attempt, progress.permille),
            (1, 3, 0)
        );
        // Running sends one at once and restarts the interval.
        w.running(&o.task, T0 + 12_000).unwrap();
        w.set_progress(&o.task, 250, T0 + 12_500).unwrap();
        let a = drain(&mut w);
        assert!(matches!(&a[..], [WorkerAction::Progress { progress, .. }] if progress.seq == 2));
        assert_eq!(w.next_deadline(), Some(T0 + 22_000));
        w.handle_timeout(T0 + 22_000);
        let a = drain(&mut w);
        assert!(
            matches!(&a[..], [WorkerAction::Progress { progress, .. }] if progress.seq == 3 && progress.permille == 250)
        );
    }

    #[test]
    fn past_its_deadline_a_task_is_aborted() {
        let mut w = worker(1);
        let s = spec(1);
        let o = TaskOffer {
            deadline_ms: T0 + 15_000,
            ..offer(&s, 0, 0)
        };
        assert!(w.offer(&o, &s, &advert(), T0).accepted);
        w.handle_timeout(T0 + 10_000);
        drain(&mut w);
        assert_eq!(w.next_deadline(), Some(T0 + 15_000));
        w.handle_timeout(T0 + 15_000);
        assert_eq!(
            drain(&mut w),
            vec![WorkerAction::Abort {
                task: o.task,
                attempt: 0
            }]
        );
        assert_eq!(w.running_tasks(), 0);
    }

    #[test]
    fn cancel_only_the_named_attempt() {
        let mut w = worker(1);
        let s = spec(1);
        let o = offer(&s, 0, 2);
        assert!(w.offer(&o, &s, &advert(), T0).accepted);
        assert_eq!(w.cancel(&o.task, 1, T0), None);
        assert_eq!(w.running_tasks(), 1);
        assert!(w.cancel(&o.task, 2, T0).is_some());
        assert_eq!(w.running_tasks(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn remembered_answers_are_bounded() {
        let mut w = worker(0);
        let s = spec(10);
        for i in 0..10 {
            assert!(!w.offer(&offer(&s, i, 0), &s, &advert(), T0).accepted);
        }
        // The last four, oldest first.
        let kept: Vec<u32> = w.answers.iter().map(|(o, _)| o.task.index).collect();
        assert_eq!(kept, [6, 7, 8, 9]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Offer(u8, u8),
        Run(u8),
        Progress(u8, u16),
        Finish(u8),
        Fail(u8),
        Cancel(u8, u8),
        Wait(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6, 0u8..3).prop_map(|(i, a)| Op::Offer(i, a)),
            2 => (0u8..6).prop_map(Op::Run),
            2 => (0u8..6, 0u16..=1000).prop_map(|(i, p)| Op::Progress(i, p)),
            1 => (0u8..6).prop_map(Op::Finish),
            1 => (0u8..6).prop_map(Op::Fail),
            1 => (0u8..6, 0u8..3).prop_map(|(i, a)| Op::Cancel(i, a)),
            3 => (1u16..20_000).prop_map(Op::Wait),
        ]
    }

    fn record(
        a: WorkerAction,
        now: u64,
        last: &mut BTreeMap<TaskId, (u64, u32)>,
    ) -> Result<(), TestCaseError> {
        match a {
            WorkerAction::Progress { progress, .. } => {
                let l = last.get_mut(&progress.task);
                prop_assert!(l.is_some(), "progress of a task without a slot");
                if let Some(l) = l {
                    prop_assert!(now - l.0 <= 10_000, "heartbeat gap {}", now - l.0);
                    prop_assert_eq!(progress.seq, l.1 + 1);
                    *l = (now, progress.seq);
                }
            }
            WorkerAction::Abort { task, .. } => {
                prop_assert!(last.remove(&task).is_some());
            }
        }
        Ok(())
    }

    proptest! {
        /// Slots never exceed `max_tasks`; every task holding a slot reports
        /// at least every interval (the driver wakes at `next_deadline`), with
        /// sequence numbers growing by one; a repeated offer gets the same
        /// answer and takes no second slot.
        #[test]
        fn slots_and_heartbeats(max in 0u16..4, ops in proptest::collection::vec(op(), 0..80)) {
            let mut w = Worker::new(me(), WorkerConfig { max_tasks: max, heartbeat_interval_ms: 10_000, remembered_answers: 1024 });
            let s = spec(6);
            let mut now = T0;
            let mut last: BTreeMap<TaskId, (u64, u32)> = BTreeMap::new();
            let mut answers: BTreeMap<(u8, u8), TaskAccept> = BTreeMap::new();
            let task = |i: u8| TaskId { job: s.id, index: u32::from(i) };
            for op in ops {
                match op {
                    Op::Offer(i, a) => {
                        let o = TaskOffer { reserve_until_ms: T0 + 10_000_000, deadline_ms: T0 + 200_000, ..offer(&s, u32::from(i), u32::from(a)) };
                        let before = w.running_tasks();
                        let ans = w.offer(&o, &s, &advert(), now);
                        match answers.get(&(i, a)) {
                            Some(prev) => {
                                prop_assert_eq!(prev, &ans);
                                prop_assert_eq!(w.running_tasks(), before);
                            }
                            None => {
                                if ans.accepted {
                                    prop_assert!(last.insert(task(i), (now, 0)).is_none());
                                }
                                answers.insert((i, a), ans);
                            }
                        }
                    }
                    Op::Run(i) => { let _ = w.running(&task(i), now); }
                    Op::Progress(i, p) => { let _ = w.set_progress(&task(i), p, now); }
                    Op::Finish(i) => { if w.finished(&task(i), now).is_ok() { last.remove(&task(i)); } }
                    Op::Fail(i) => { if w.failed(&task(i), now).is_ok() { last.remove(&task(i)); } }
                    Op::Cancel(i, a) => { if w.cancel(&task(i), u32::from(a), now).is_some() { last.remove(&task(i)); } }
                    Op::Wait(dt) => {
                        let until = now + u64::from(dt);
                        while let Some(d) = w.next_deadline().filter(|d| *d <= until) {
                            now = d.max(now);
                            w.handle_timeout(now);
                            for a in std::iter::from_fn(|| w.poll_action()) {
                                record(a, now, &mut last)?;
                            }
                        }
                        now = until;
                    }
                }
                // `running` reports at once.
                for a in std::iter::from_fn(|| w.poll_action()) {
                    record(a, now, &mut last)?;
                }
                prop_assert!(w.running_tasks() <= max);
                prop_assert_eq!(w.running_tasks() as usize, last.len());
                for (t, (at, _)) in &last {
                    prop_assert!(now - at < 10_000, "task {:?} overdue: last report {} ms ago", t, now - at);
                }
            }
        }
    }
}
