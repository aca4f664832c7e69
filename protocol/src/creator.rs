//! The creator's side of a job: which results it accepts, which workers may
//! have the job key, and when it countersigns a receipt.
//!
//! # What this module owns
//!
//! [`CreatorJob`], a small state machine per submitted job, kept by the
//! creator's node (and persisted by it: the type is serde):
//!
//! * **Key requests** ([`CreatorJob::authorize_key`]): a worker gets the job
//!   key only with an offer for one of the job's tasks, signed by a scheduler
//!   the creator trusts for this job, addressed to that worker, and not past
//!   its task deadline.
//! * **Results** ([`CreatorJob::check_result`]): a result bundle (the
//!   scheduler's offer, the worker's result and receipt) is checked
//!   completely (signatures, every cross-reference between the three, the
//!   creator named in the receipt) before anything changes. A valid result
//!   becomes a *candidate* for its task; the first candidate is fetched. At
//!   most [`MAX_CANDIDATES`] wait per task; a task already accepted answers
//!   [`Decision::Duplicate`], so a late result is never paid twice.
//!   [`CreatorJob::check_verified`] is the same check after the signature
//!   step, for a driver that verified the frames itself (the simulator
//!   models signatures and calls it with decoded values).
//! * **Acceptance** ([`CreatorJob::fetched`]): after the driver has fetched
//!   and opened the sealed output, the plaintext hash must equal the one the
//!   worker signed. Then, and only then, the machine returns the
//!   [`ReceiptAcceptance`] to countersign. A mismatch or a failed fetch moves
//!   on to the next candidate ([`CreatorJob::fetch_failed`]).
//!
//! Trusted schedulers: the one the job was submitted to, plus those the
//! driver adds with [`CreatorJob::trust_scheduler`] (a live scheduler that
//! announces it took the job over). Verification policies (quorum,
//! spot-checks) plug in at acceptance later.
//!
//! # What it must not do
//!
//! No I/O, no clock (`now_ms` comes in), no signing: the driver signs what
//! the machine returns.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::signed::{Signed, SignedError};
use crate::wire::{JobSpec, Receipt, ReceiptAcceptance, TaskId, TaskOffer, TaskResult};

/// Result candidates kept per task while one is being fetched.
pub const MAX_CANDIDATES: usize = 4;
/// Schedulers trusted per job, at most.
pub const MAX_TRUSTED_SCHEDULERS: usize = 16;

/// The three signed frames that prove a result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResultFrames {
    /// `Signed<TaskOffer>` by the scheduler.
    pub offer: Vec<u8>,
    /// `Signed<TaskResult>` by the worker.
    pub result: Vec<u8>,
    /// `Signed<Receipt>` by the worker.
    pub receipt: Vec<u8>,
}

/// A result that passed every check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedResult {
    /// The offer.
    pub offer: TaskOffer,
    /// The result.
    pub result: TaskResult,
    /// The receipt.
    pub receipt: Receipt,
    /// The receipt's id (what the creator countersigns).
    pub receipt_id: [u8; 32],
    /// The frames, as received (for the ledger and for re-checking).
    pub frames: ResultFrames,
}

/// Why a result bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResultRejected {
    /// A frame did not decode or verify.
    #[error("{what}: {source}")]
    Frame {
        /// Which frame.
        what: &'static str,
        /// Why.
        source: SignedError,
    },
    /// The offer is not signed by a scheduler this creator trusts for the job.
    #[error("offer signed by {0}, which is not a scheduler of this job")]
    UntrustedScheduler(NodeId),
    /// The frames do not describe the same thing.
    #[error("{field} differs between {a} and {b}")]
    Mismatch {
        /// The field.
        field: &'static str,
        /// One message.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
    /// The bundle is for another job or a task outside it.
    #[error("task {0:?} is not part of this job")]
    NotThisJob(TaskId),
    /// The receipt names another creator.
    #[error("receipt names creator {found}, expected {expected}")]
    WrongCreator {
        /// This job's creator.
        expected: NodeId,
        /// The one named.
        found: NodeId,
    },
    /// The price is above the job's ceiling.
    #[error("price {price} is above the job's ceiling {ceiling}")]
    OverPrice {
        /// Price in the offer.
        price: u64,
        /// The job's ceiling.
        ceiling: u64,
    },
    /// Enough candidates already wait for this task.
    #[error("task {0} already has {MAX_CANDIDATES} results waiting")]
    TooManyCandidates(u32),
    /// The job was cancelled.
    #[error("the job was cancelled")]
    Cancelled,
}

/// What to do with a checked result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Fetch this result's output now.
    Fetch(Box<CheckedResult>),
    /// Kept as a fallback: another result of the task is being fetched.
    Queued,
    /// The task is already accepted (or this very result is known): drop it.
    Duplicate,
}

/// Why a key request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRefused {
    /// The offer did not decode or verify.
    #[error("offer: {0}")]
    Frame(SignedError),
    /// The offer is not signed by a scheduler of this job.
    #[error("offer signed by {0}, which is not a scheduler of this job")]
    UntrustedScheduler(NodeId),
    /// The offer is for another worker.
    #[error("offer is for {offered}, but {requester} asked")]
    NotYours {
        /// The worker named.
        offered: NodeId,
        /// Who asked.
        requester: NodeId,
    },
    /// The offer is for another job or a task outside it.
    #[error("task {0:?} is not part of this job")]
    NotThisJob(TaskId),
    /// The task's deadline has passed.
    #[error("the offer's task deadline has passed")]
    Expired,
    /// The task is already accepted, or the job cancelled.
    #[error("task {0} needs no more work")]
    Closed(u32),
}

/// Why an acceptance was refused after the fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchRejected {
    /// No fetch of this task and attempt is under way.
    #[error("no fetch of task {task} attempt {attempt} is under way")]
    NotFetching {
        /// Task index.
        task: u32,
        /// Attempt.
        attempt: u32,
    },
    /// The opened output's hash is not the one the worker signed.
    #[error("output hash {found} differs from the signed {expected}")]
    HashMismatch {
        /// Signed by the worker (hex).
        expected: String,
        /// Computed (hex).
        found: String,
    },
}

/// One task, as the creator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// No result yet.
    Waiting,
    /// The output of `fetching` is being fetched; `candidates` wait behind it.
    Fetching {
        /// The result being fetched.
        fetching: Box<CheckedResult>,
        /// Further valid results, in arrival order.
        candidates: Vec<CheckedResult>,
    },
    /// Accepted and countersigned.
    Accepted {
        /// The accepted result.
        result: Box<CheckedResult>,
        /// When (creator's clock).
        accepted_at_ms: u64,
    },
    /// The scheduler gave up on the task.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Counts of tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Waiting for a result.
    pub waiting: u64,
    /// Fetching a result.
    pub fetching: u64,
    /// Accepted.
    pub accepted: u64,
    /// Failed.
    pub failed: u64,
}

/// The creator's state of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatorJob {
    spec: JobSpec,
    schedulers: BTreeSet<NodeId>,
    tasks: Vec<TaskState>,
    /// Receipt ids seen, so the same bundle twice is a duplicate.
    seen: BTreeSet<[u8; 32]>,
    cancelled: bool,
}

fn frame<T: crate::wire::WireMessage>(
    what: &'static str,
    bytes: &[u8],
) -> Result<(Signed<T>, T), ResultRejected> {
    let signed =
        Signed::<T>::from_slice(bytes).map_err(|source| ResultRejected::Frame { what, source })?;
    let value = signed
        .verify()
        .map_err(|source| ResultRejected::Frame { what, source })?;
    Ok((signed, value))
}

fn same<T: PartialEq>(
    field: &'static str,
    a: (&'static str, &T),
    b: (&'static str, &T),
) -> Result<(), ResultRejected> {
    if a.1 == b.1 {
        Ok(())
    } else {
        Err(ResultRejected::Mismatch {
            field,
            a: a.0,
            b: b.0,
        })
    }
}

impl CreatorJob {
    /// A job the creator has just submitted to `owner`.
    pub fn new(spec: JobSpec, owner: NodeId) -> Self {
        let n = usize::try_from(spec.split.task_count()).unwrap_or(0);
        CreatorJob {
            spec,
            schedulers: BTreeSet::from([owner]),
            tasks: vec![TaskState::Waiting; n],
            seen: BTreeSet::new(),
            cancelled: false,
        }
    }

    /// The job's spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Schedulers trusted to sign offers for this job.
    pub fn schedulers(&self) -> &BTreeSet<NodeId> {
        &self.schedulers
    }

    /// Trusts another scheduler for this job (one that took it over).
    /// Returns false when the bound is reached.
    pub fn trust_scheduler(&mut self, scheduler: NodeId) -> bool {
        if self.schedulers.len() >= MAX_TRUSTED_SCHEDULERS && !self.schedulers.contains(&scheduler)
        {
            return false;
        }
        self.schedulers.insert(scheduler);
        true
    }

    /// Every task's state, by index.
    pub fn tasks(&self) -> &[TaskState] {
        &self.tasks
    }

    /// Counts of tasks by state.
    pub fn counts(&self) -> TaskCounts {
        let mut c = TaskCounts::default();
        for t in &self.tasks {
            match t {
                TaskState::Waiting => c.waiting += 1,
                TaskState::Fetching { .. } => c.fetching += 1,
                TaskState::Accepted { .. } => c.accepted += 1,
                TaskState::Failed { .. } => c.failed += 1,
            }
        }
        c
    }

    /// Whether every task is accepted or failed (or the job was cancelled).
    pub fn is_finished(&self) -> bool {
        self.cancelled
            || self
                .tasks
                .iter()
                .all(|t| matches!(t, TaskState::Accepted { .. } | TaskState::Failed { .. }))
    }

    /// Whether the creator cancelled the job.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Cancels the job: no further key, no further acceptance.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    fn index_of(&self, task: &TaskId) -> Option<usize> {
        if task.job != self.spec.id {
            return None;
        }
        let i = usize::try_from(task.index).ok()?;
        (i < self.tasks.len()).then_some(i)
    }

    /// Decides a worker's key request: `offer` must prove that a trusted
    /// scheduler assigned one of this job's open tasks to `requester`.
    pub fn authorize_key(
        &self,
        offer: &[u8],
        requester: NodeId,
        now_ms: u64,
    ) -> Result<TaskOffer, KeyRefused> {
        let signed = Signed::<TaskOffer>::from_slice(offer).map_err(KeyRefused::Frame)?;
        let offer = signed.verify().map_err(KeyRefused::Frame)?;
        if !self.schedulers.contains(&offer.scheduler) {
            return Err(KeyRefused::UntrustedScheduler(offer.scheduler));
        }
        if offer.worker != requester {
            return Err(KeyRefused::NotYours {
                offered: offer.worker,
                requester,
            });
        }
        let i = self
            .index_of(&offer.task)
            .ok_or(KeyRefused::NotThisJob(offer.task))?;
        if now_ms > offer.deadline_ms {
            return Err(KeyRefused::Expired);
        }
        match self.tasks.get(i) {
            Some(TaskState::Waiting | TaskState::Fetching { .. }) if !self.cancelled => Ok(offer),
            _ => Err(KeyRefused::Closed(offer.task.index)),
        }
    }

    /// Checks a result bundle completely, then records it as a candidate.
    pub fn check_result(&mut self, frames: ResultFrames) -> Result<Decision, ResultRejected> {
        if self.cancelled {
            return Err(ResultRejected::Cancelled);
        }
        let (_, offer) = frame::<TaskOffer>("offer", &frames.offer)?;
        let (_, result) = frame::<TaskResult>("result", &frames.result)?;
        let (signed_receipt, receipt) = frame::<Receipt>("receipt", &frames.receipt)?;
        let receipt_id = signed_receipt.id().0;
        self.check_verified(CheckedResult {
            offer,
            result,
            receipt,
            receipt_id,
            frames,
        })
    }

    /// The checks of [`CreatorJob::check_result`] after the signatures:
    /// takes the three messages already decoded and verified (and the
    /// receipt's id, [`Signed::id`]) and applies every cross-check and the
    /// candidate rules. `check_result` calls it; a driver that verified the
    /// frames itself (or, like the simulator, models signatures instead of
    /// computing them) calls it directly. The `receipt_id` and `frames` are
    /// taken as given.
    pub fn check_verified(&mut self, checked: CheckedResult) -> Result<Decision, ResultRejected> {
        if self.cancelled {
            return Err(ResultRejected::Cancelled);
        }
        let CheckedResult {
            offer,
            result,
            receipt,
            receipt_id,
            frames,
        } = checked;
        if !self.schedulers.contains(&offer.scheduler) {
            return Err(ResultRejected::UntrustedScheduler(offer.scheduler));
        }
        same("task", ("offer", &offer.task), ("result", &result.task))?;
        same("task", ("offer", &offer.task), ("receipt", &receipt.task))?;
        same(
            "worker",
            ("offer", &offer.worker),
            ("result", &result.worker),
        )?;
        same(
            "worker",
            ("offer", &offer.worker),
            ("receipt", &receipt.worker),
        )?;
        same(
            "attempt",
            ("offer", &offer.attempt),
            ("result", &result.attempt),
        )?;
        same(
            "attempt",
            ("offer", &offer.attempt),
            ("receipt", &receipt.attempt),
        )?;
        same(
            "scheduler",
            ("offer", &offer.scheduler),
            ("receipt", &receipt.scheduler),
        )?;
        same(
            "price",
            ("offer", &offer.price),
            ("receipt", &receipt.price),
        )?;
        same(
            "output_hash",
            ("result", &result.output_hash),
            ("receipt", &receipt.output_hash),
        )?;
        same(
            "usage",
            ("result", &result.usage),
            ("receipt", &receipt.usage),
        )?;
        if receipt.creator != self.spec.creator {
            return Err(ResultRejected::WrongCreator {
                expected: self.spec.creator,
                found: receipt.creator,
            });
        }
        if offer.price > self.spec.max_price_per_task {
            return Err(ResultRejected::OverPrice {
                price: offer.price,
                ceiling: self.spec.max_price_per_task,
            });
        }
        let i = self
            .index_of(&offer.task)
            .ok_or(ResultRejected::NotThisJob(offer.task))?;
        if self.seen.contains(&receipt_id) {
            return Ok(Decision::Duplicate);
        }
        let checked = CheckedResult {
            offer,
            result,
            receipt,
            receipt_id,
            frames,
        };
        let Some(state) = self.tasks.get_mut(i) else {
            return Err(ResultRejected::NotThisJob(checked.offer.task));
        };
        let decision = match state {
            TaskState::Accepted { .. } => return Ok(Decision::Duplicate),
            TaskState::Waiting | TaskState::Failed { .. } => {
                *state = TaskState::Fetching {
                    fetching: Box::new(checked.clone()),
                    candidates: Vec::new(),
                };
                Decision::Fetch(Box::new(checked))
            }
            TaskState::Fetching { candidates, .. } => {
                if candidates.len() + 1 >= MAX_CANDIDATES {
                    return Err(ResultRejected::TooManyCandidates(checked.offer.task.index));
                }
                candidates.push(checked);
                Decision::Queued
            }
        };
        self.seen.insert(receipt_id);
        Ok(decision)
    }

    /// The driver fetched and opened the output of `task` / `attempt` and
    /// computed its plaintext hash. Returns the acceptance to countersign.
    pub fn fetched(
        &mut self,
        task: u32,
        attempt: u32,
        plaintext_hash: [u8; 32],
        now_ms: u64,
    ) -> Result<ReceiptAcceptance, FetchRejected> {
        let not_fetching = FetchRejected::NotFetching { task, attempt };
        let i = usize::try_from(task).map_err(|_| not_fetching.clone())?;
        let Some(TaskState::Fetching { fetching, .. }) = self.tasks.get(i) else {
            return Err(not_fetching);
        };
        if fetching.offer.attempt != attempt {
            return Err(not_fetching);
        }
        if fetching.result.output_hash != plaintext_hash {
            return Err(FetchRejected::HashMismatch {
                expected: hex::encode(fetching.result.output_hash),
                found: hex::encode(plaintext_hash),
            });
        }
        let result = fetching.clone();
        let acceptance = ReceiptAcceptance {
            receipt_id: result.receipt_id,
            creator: self.spec.creator,
            accepted_at_ms: now_ms,
        };
        if let Some(slot) = self.tasks.get_mut(i) {
            *slot = TaskState::Accepted {
                result,
                accepted_at_ms: now_ms,
            };
        }
        Ok(acceptance)
    }

    /// The fetch of `task` / `attempt` failed (unreachable worker, tampered
    /// or mismatching output). Returns the next candidate to fetch, if any;
    /// otherwise the task waits for a new result.
    pub fn fetch_failed(&mut self, task: u32, attempt: u32) -> Option<CheckedResult> {
        let i = usize::try_from(task).ok()?;
        let state = self.tasks.get_mut(i)?;
        let TaskState::Fetching {
            fetching,
            candidates,
        } = state
        else {
            return None;
        };
        if fetching.offer.attempt != attempt {
            return None;
        }
        if candidates.is_empty() {
            *state = TaskState::Waiting;
            return None;
        }
        let next = candidates.remove(0);
        **fetching = next.clone();
        Some(next)
    }

    /// The scheduler gave up on a task. An accepted or fetching task keeps
    /// its state (the result is already here).
    pub fn task_failed(&mut self, task: u32, reason: String) {
        if let Some(state) = usize::try_from(task)
            .ok()
            .and_then(|i| self.tasks.get_mut(i))
            && matches!(state, TaskState::Waiting)
        {
            *state = TaskState::Failed { reason };
        }
    }

    /// The result accepted for a task, if any.
    pub fn accepted(&self, task: u32) -> Option<(&CheckedResult, u64)> {
        match self.tasks.get(usize::try_from(task).ok()?)? {
            TaskState::Accepted {
                result,
                accepted_at_ms,
            } => Some((result, *accepted_at_ms)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::ContentId;
    use crate::identity::NodeKey;
    use crate::seal::WrappedKey;
    use crate::wire::{
        ImageFormat, JobId, JobKind, Requirements, ResourceUsage, SplitRule, VerificationPolicy,
    };

    fn key(b: u8) -> NodeKey {
        NodeKey::from_secret_bytes(&[b; 32])
    }

    struct World {
        creator: NodeKey,
        scheduler: NodeKey,
        worker: NodeKey,
        other: NodeKey,
        job: CreatorJob,
    }

    fn world() -> World {
        let creator = key(1);
        let scheduler = key(2);
        let worker = key(3);
        let spec = JobSpec {
            id: JobId::derive(&creator.node_id(), 9),
            creator: creator.node_id(),
            nonce: 9,
            created_at_ms: 1_000,
            kind: JobKind::Builtin,
            inputs: vec![],
            requirements: Requirements::default(),
            split: SplitRule::Frames {
                start: 1,
                end: 4,
                step: 1,
            },
            width: 64,
            height: 32,
            format: ImageFormat::Png,
            max_price_per_task: 10,
            verification: VerificationPolicy::None,
            deadline_ms: 1_000_000,
        };
        let job = CreatorJob::new(spec, scheduler.node_id());
        World {
            creator,
            scheduler,
            worker,
            other: key(7),
            job,
        }
    }

    fn offer(w: &World, index: u32, attempt: u32) -> TaskOffer {
        TaskOffer {
            task: TaskId {
                job: w.job.spec().id,
                index,
            },
            scheduler: w.scheduler.node_id(),
            worker: w.worker.node_id(),
            attempt,
            price: 7,
            reserve_until_ms: 5_000,
            deadline_ms: 100_000,
        }
    }

    fn bundle_from(
        w: &World,
        o: &TaskOffer,
        hash: [u8; 32],
        tweak: impl Fn(&mut Receipt),
    ) -> ResultFrames {
        let usage = ResourceUsage {
            gpu_ms: 0,
            cpu_ms: 900,
            peak_mem_bytes: 1 << 20,
        };
        let result = TaskResult {
            task: o.task,
            worker: o.worker,
            attempt: o.attempt,
            output_hash: hash,
            output_manifest: ContentId([4; 32]),
            wrapped_key: WrappedKey {
                ephemeral: [0; 32],
                ciphertext: [0; 32],
                tag: [0; 16],
            },
            usage,
        };
        let mut receipt = Receipt {
            task: o.task,
            worker: o.worker,
            creator: w.creator.node_id(),
            scheduler: o.scheduler,
            attempt: o.attempt,
            output_hash: hash,
            usage,
            started_at_ms: 2_000,
            finished_at_ms: 3_000,
            price: o.price,
        };
        tweak(&mut receipt);
        ResultFrames {
            offer: Signed::sign(
                if o.scheduler == w.scheduler.node_id() {
                    &w.scheduler
                } else {
                    &w.other
                },
                o,
            )
            .unwrap()
            .into_bytes(),
            result: Signed::sign(&w.worker, &result).unwrap().into_bytes(),
            receipt: Signed::sign(&w.worker, &receipt).unwrap().into_bytes(),
        }
    }

    fn bundle(w: &World, index: u32, attempt: u32) -> ResultFrames {
        bundle_from(w, &offer(w, index, attempt), [8; 32], |_| {})
    }

    #[test]
    fn a_result_is_fetched_accepted_once_and_duplicates_are_dropped() {
        let mut w = world();
        let b = bundle(&w, 0, 0);
        let Decision::Fetch(c) = w.job.check_result(b.clone()).unwrap() else {
            panic!("expected a fetch")
        };
        assert_eq!(w.job.check_result(b).unwrap(), Decision::Duplicate);
        let acc = w.job.fetched(0, 0, [8; 32], 4_000).unwrap();
        assert_eq!(acc.receipt_id, c.receipt_id);
        assert_eq!(acc.creator, w.creator.node_id());
        assert_eq!(w.job.counts().accepted, 1);
        // A late result of another attempt for the accepted task: duplicate.
        assert_eq!(
            w.job.check_result(bundle(&w, 0, 1)).unwrap(),
            Decision::Duplicate
        );
        assert!(w.job.fetched(0, 0, [8; 32], 5_000).is_err());
    }

    /// The verified entry point decides exactly as the frame path does, on
    /// the same values: accepted once, duplicates dropped, cross-checks kept.
    #[test]
    fn check_verified_agrees_with_check_result() {
        let mut framed = world();
        let mut direct = world();
        let decode = |b: &ResultFrames| CheckedResult {
            offer: Signed::<TaskOffer>::from_slice(&b.offer)
                .unwrap()
                .verify()
                .unwrap(),
            result: Signed::<TaskResult>::from_slice(&b.result)
                .unwrap()
                .verify()
                .unwrap(),
            receipt: Signed::<Receipt>::from_slice(&b.receipt)
                .unwrap()
                .verify()
                .unwrap(),
            receipt_id: Signed::<Receipt>::from_slice(&b.receipt).unwrap().id().0,
            frames: ResultFrames::default(),
        };
        for (index, attempt) in [(0, 0), (0, 0), (0, 1), (1, 3)] {
            let b = bundle(&framed, index, attempt);
            let a = framed.job.check_result(b.clone()).unwrap();
            let d = direct.job.check_verified(decode(&b)).unwrap();
            assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&d),
                "task {index} attempt {attempt}"
            );
        }
        // The receipt id of an unsigned receipt is the signed one's.
        let b = bundle(&framed, 2, 0);
        let c = decode(&b);
        assert_eq!(
            crate::signed::message_id(&c.receipt.worker, &c.receipt)
                .unwrap()
                .0,
            c.receipt_id
        );
        // Cross-checks still apply without frames.
        let mut bad = decode(&bundle(&framed, 3, 0));
        bad.receipt.price += 1;
        assert!(matches!(
            direct.job.check_verified(bad),
            Err(ResultRejected::Mismatch { field: "price", .. })
        ));
        let mut untrusted = decode(&bundle(&framed, 3, 0));
        untrusted.offer.scheduler = framed.other.node_id();
        assert!(matches!(
            direct.job.check_verified(untrusted),
            Err(ResultRejected::UntrustedScheduler(_))
        ));
    }

    #[test]
    fn a_wrong_hash_moves_to_the_next_candidate() {
        let mut w = world();
        assert!(matches!(
            w.job.check_result(bundle(&w, 1, 0)).unwrap(),
            Decision::Fetch(_)
        ));
        assert_eq!(
            w.job.check_result(bundle(&w, 1, 1)).unwrap(),
            Decision::Queued
        );
        assert!(matches!(
            w.job.fetched(1, 0, [9; 32], 1),
            Err(FetchRejected::HashMismatch { .. })
        ));
        let next = w.job.fetch_failed(1, 0).unwrap();
        assert_eq!(next.offer.attempt, 1);
        assert!(w.job.fetched(1, 1, [8; 32], 2).is_ok());
        assert!(w.job.fetch_failed(1, 1).is_none());
    }

    #[test]
    fn forged_or_inconsistent_bundles_are_refused() {
        let mut w = world();
        let o = offer(&w, 2, 0);
        // Receipt for another creator.
        let other = key(9).node_id();
        let b = bundle_from(&w, &o, [8; 32], |r| r.creator = other);
        assert!(matches!(
            w.job.check_result(b),
            Err(ResultRejected::WrongCreator { .. })
        ));
        // Receipt price inflated over the offer.
        let b = bundle_from(&w, &o, [8; 32], |r| r.price = 9);
        assert!(matches!(
            w.job.check_result(b),
            Err(ResultRejected::Mismatch { field: "price", .. })
        ));
        // Offer signed by a node that is not a scheduler of the job.
        let mut b = bundle(&w, 2, 0);
        b.offer = Signed::sign(
            &key(7),
            &TaskOffer {
                scheduler: key(7).node_id(),
                ..o.clone()
            },
        )
        .unwrap()
        .into_bytes();
        assert!(matches!(
            w.job.check_result(b),
            Err(ResultRejected::UntrustedScheduler(_))
        ));
        // A bit flipped in the receipt's signature.
        let mut b = bundle(&w, 2, 0);
        b.receipt[40] ^= 1;
        assert!(matches!(
            w.job.check_result(b),
            Err(ResultRejected::Frame {
                what: "receipt",
                ..
            })
        ));
        // A task outside the job.
        let b = bundle(&w, 99, 0);
        assert!(matches!(
            w.job.check_result(b),
            Err(ResultRejected::NotThisJob(_))
        ));
        // Nothing changed.
        assert_eq!(w.job.counts().waiting, 4);
        // A taken-over scheduler becomes trusted when the driver says so.
        let mut b = bundle(&w, 2, 0);
        b.offer = Signed::sign(
            &key(7),
            &TaskOffer {
                scheduler: key(7).node_id(),
                ..o.clone()
            },
        )
        .unwrap()
        .into_bytes();
        assert!(w.job.trust_scheduler(key(7).node_id()));
        let o7 = TaskOffer {
            scheduler: key(7).node_id(),
            ..o
        };
        let b2 = bundle_from(&w, &o7, [8; 32], |_| {});
        assert!(
            w.job.check_result(b).is_err(),
            "receipt still names the old scheduler"
        );
        assert!(matches!(
            w.job.check_result(b2).unwrap(),
            Decision::Fetch(_)
        ));
    }

    #[test]
    fn keys_go_only_to_assigned_workers_of_open_tasks() {
        let mut w = world();
        let o = offer(&w, 3, 0);
        let frame = Signed::sign(&w.scheduler, &o).unwrap().into_bytes();
        assert!(w.job.authorize_key(&frame, w.worker.node_id(), 10).is_ok());
        assert!(matches!(
            w.job.authorize_key(&frame, key(8).node_id(), 10),
            Err(KeyRefused::NotYours { .. })
        ));
        assert!(matches!(
            w.job.authorize_key(&frame, w.worker.node_id(), 100_001),
            Err(KeyRefused::Expired)
        ));
        let forged = Signed::sign(
            &key(7),
            &TaskOffer {
                scheduler: key(7).node_id(),
                ..o.clone()
            },
        )
        .unwrap()
        .into_bytes();
        assert!(matches!(
            w.job.authorize_key(&forged, w.worker.node_id(), 10),
            Err(KeyRefused::UntrustedScheduler(_))
        ));
        assert!(matches!(
            w.job.authorize_key(&frame[..50], w.worker.node_id(), 10),
            Err(KeyRefused::Frame(_))
        ));
        // Accepted task: closed.
        let b = bundle(&w, 3, 0);
        w.job.check_result(b).unwrap();
        w.job.fetched(3, 0, [8; 32], 11).unwrap();
        assert!(matches!(
            w.job.authorize_key(&frame, w.worker.node_id(), 12),
            Err(KeyRefused::Closed(3))
        ));
        w.job.cancel();
        let o1 = Signed::sign(&w.scheduler, &offer(&w, 1, 0))
            .unwrap()
            .into_bytes();
        assert!(w.job.authorize_key(&o1, w.worker.node_id(), 10).is_err());
        assert!(w.job.is_finished());
    }

    #[test]
    fn the_machine_round_trips_through_the_codec() {
        let mut w = world();
        w.job.check_result(bundle(&w, 0, 0)).unwrap();
        let bytes = crate::codec::encode(&w.job).unwrap();
        let back: CreatorJob = crate::codec::decode(&bytes, crate::codec::MAX_FRAME).unwrap();
        assert_eq!(back, w.job);
    }
}
