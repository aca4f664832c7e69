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
//! announces it took the job over).
//!
//! # Verified tasks
//!
//! A task the scheduler sampled for verification (see [`crate::verify`])
//! never arrives as `Done`: each of its results comes as a `JobEvent::Vote`
//! and is **held** ([`CreatorJob::vote`], checked like any result bundle,
//! state [`TaskState::Verifying`]); nothing is fetched or countersigned.
//! For a spot-check, the scheduler asks for comparisons
//! ([`CreatorJob::compare`] says what to fetch and which pixels to compare;
//! [`CreatorJob::compared`] checks both outputs against their signed hashes
//! and returns the [`Comparison`] to send back). The verdict
//! (`JobEvent::Verified`) names one held result; [`CreatorJob::verified`]
//! **re-checks it by the same rule the scheduler used, on the creator's own
//! evidence** (a quorum: enough distinct workers signed the same output
//! hash; a spot-check: the creator's own comparisons pass it), and only then
//! fetches it for acceptance. A result the scheduler caught
//! (`JobEvent::Rejected`, [`CreatorJob::rejected`]) is refused for good, by
//! whatever path it arrives later, so its worker is never paid for it; and a
//! task under verification cannot be accepted through a plain `Done`.
//!
//! # What it must not do
//!
//! No I/O, no clock (`now_ms` comes in), no signing: the driver signs what
//! the machine returns.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::signed::{Signed, SignedError};
use crate::task::{Rect, task_geometry};
use crate::verify::{self, CompareResult, Comparison, Cross, QuorumTally, SpotTally, SpotVote};
use crate::wire::{
    JobSpec, Receipt, ReceiptAcceptance, TaskId, TaskOffer, TaskResult, VerificationPolicy,
};

/// Result candidates kept per task while one is being fetched.
pub const MAX_CANDIDATES: usize = 4;
/// Results held per task under verification: a quorum's `2k + 1` lines, or a
/// spot-check's primaries and checks across re-runs.
pub const MAX_VOTES: usize = 16;
/// Comparisons remembered per task.
pub const MAX_COMPARISONS: usize = 16;
/// Caught results remembered per task.
pub const MAX_REJECTED: usize = 32;
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
    /// Verification caught this result: it is never accepted.
    #[error("task {task} attempt {attempt} was caught by verification")]
    Caught {
        /// Task index.
        task: u32,
        /// Attempt.
        attempt: u32,
    },
    /// The task is under verification: only a verdict accepts a result.
    #[error("task {0} is under verification: its result is accepted only on a verdict")]
    UnderVerification(u32),
    /// More results of the task are held than any verification needs.
    #[error("task {0} already holds {MAX_VOTES} results under verification")]
    TooManyVotes(u32),
}

/// What to do with a held verification result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteDecision {
    /// Held until the verdict.
    Held,
    /// The verdict named this result already: fetch it now.
    Fetch(Box<CheckedResult>),
    /// Known already, or the task is accepted: drop it.
    Duplicate,
}

/// Why a verdict was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerdictRejected {
    /// The task holds no results under verification.
    #[error("task {0} is not under verification")]
    NotVerifying(u32),
    /// The job's policy verifies nothing.
    #[error("this job has no verification policy")]
    NoPolicy,
    /// The named result was caught before.
    #[error("task {task} attempt {attempt} was caught by verification")]
    Caught {
        /// Task index.
        task: u32,
        /// Attempt.
        attempt: u32,
    },
    /// The results held do not give the named one a quorum.
    #[error(
        "task {task}: {agreeing} distinct workers signed the named output hash; {needed} needed, and more than the {others} others"
    )]
    NoQuorum {
        /// Task index.
        task: u32,
        /// Workers agreeing with the named result.
        agreeing: usize,
        /// Needed.
        needed: usize,
        /// Results with other hashes.
        others: usize,
    },
    /// This creator's own comparisons do not pass the named result.
    #[error("task {task}: this creator's comparisons do not pass attempt {attempt}")]
    NotPassed {
        /// Task index.
        task: u32,
        /// Attempt.
        attempt: u32,
    },
}

/// Why a comparison cannot be made or recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompareRefused {
    /// The job's policy is not a spot-check.
    #[error("this job is not spot-checked")]
    NotSpotCheck,
    /// A result to compare is not held.
    #[error("task {task}: no held result of attempt {attempt}")]
    NotHeld {
        /// Task index.
        task: u32,
        /// Attempt.
        attempt: u32,
    },
    /// The crop does not lie inside the task's region.
    #[error("crop {crop:?} does not lie inside the region {region:?} of task {task}")]
    BadCrop {
        /// Task index.
        task: u32,
        /// The crop.
        crop: Rect,
        /// The task's region.
        region: Rect,
    },
    /// The task holds [`MAX_COMPARISONS`] comparisons of results still held.
    #[error("task {task}: {MAX_COMPARISONS} comparisons of held results are open already")]
    TooMany {
        /// Task index.
        task: u32,
    },
    /// No such comparison was asked for.
    #[error("task {task}: no comparison of {reference} and {check} was asked for")]
    NotAsked {
        /// Task index.
        task: u32,
        /// Reference attempt.
        reference: u32,
        /// Check attempt.
        check: u32,
    },
}

/// What the driver fetches and compares for a spot-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareRequest {
    /// The reference result (the primary, or another check).
    pub reference: CheckedResult,
    /// The check that rendered the crop.
    pub check: CheckedResult,
    /// The crop, frame coordinates.
    pub crop: Rect,
    /// The pixels of the reference's output to compare: the crop relative to
    /// the task's region for a primary, the whole image for another check.
    pub reference_pixels: Rect,
}

/// A comparison this creator made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    /// Reference attempt.
    pub reference: u32,
    /// Check attempt.
    pub check: u32,
    /// Whether the reference was another check (a cross comparison).
    pub cross: bool,
    /// What was found (`None`: asked, not answered yet).
    pub result: Option<CompareResult>,
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
    /// Under verification: results held until the scheduler's verdict.
    Verifying {
        /// Held results, in arrival order.
        votes: Vec<CheckedResult>,
        /// A verdict that named an attempt not held yet.
        verdict: Option<u32>,
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
    /// Results held under verification.
    pub verifying: u64,
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
    /// Caught results (task, attempt): never accepted.
    rejected: BTreeSet<(u32, u32)>,
    /// Spot-check comparisons asked for and made, per task.
    comparisons: BTreeMap<u32, Vec<Compared>>,
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
            rejected: BTreeSet::new(),
            comparisons: BTreeMap::new(),
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
                TaskState::Verifying { .. } => c.verifying += 1,
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
            Some(TaskState::Waiting | TaskState::Fetching { .. } | TaskState::Verifying { .. })
                if !self.cancelled =>
            {
                Ok(offer)
            }
            _ => Err(KeyRefused::Closed(offer.task.index)),
        }
    }

    /// Checks a result bundle completely: signatures, every cross-reference,
    /// this job's creator, task and price ceiling. Changes nothing.
    fn check_bundle(&self, frames: ResultFrames) -> Result<(usize, CheckedResult), ResultRejected> {
        if self.cancelled {
            return Err(ResultRejected::Cancelled);
        }
        let (_, offer) = frame::<TaskOffer>("offer", &frames.offer)?;
        let (_, result) = frame::<TaskResult>("result", &frames.result)?;
        let (signed_receipt, receipt) = frame::<Receipt>("receipt", &frames.receipt)?;
        let receipt_id = signed_receipt.id().0;
        self.cross_check(CheckedResult {
            offer,
            result,
            receipt,
            receipt_id,
            frames,
        })
    }

    /// The checks of [`CreatorJob::check_bundle`] after the signatures: every
    /// cross-reference, this job's creator, task and price ceiling, and the
    /// attempts already caught. Changes nothing.
    fn cross_check(
        &self,
        checked: CheckedResult,
    ) -> Result<(usize, CheckedResult), ResultRejected> {
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
        if self.rejected.contains(&(offer.task.index, offer.attempt)) {
            return Err(ResultRejected::Caught {
                task: offer.task.index,
                attempt: offer.attempt,
            });
        }
        Ok((
            i,
            CheckedResult {
                offer,
                result,
                receipt,
                receipt_id,
                frames,
            },
        ))
    }

    /// Checks a result bundle completely (a `Done` event), then records it
    /// as a candidate. A task under verification is refused: only a verdict
    /// accepts its result.
    pub fn check_result(&mut self, frames: ResultFrames) -> Result<Decision, ResultRejected> {
        let (i, checked) = self.check_bundle(frames)?;
        self.candidate(i, checked)
    }

    /// The checks of [`CreatorJob::check_result`] after the signatures:
    /// takes the three messages already decoded and verified (and the
    /// receipt's id, [`Signed::id`]) and applies every cross-check and the
    /// candidate rules. A driver that verified the frames itself (or, like
    /// the simulator, models signatures instead of computing them) calls it
    /// directly. The `receipt_id` and `frames` are taken as given.
    pub fn check_verified(&mut self, checked: CheckedResult) -> Result<Decision, ResultRejected> {
        let (i, checked) = self.cross_check(checked)?;
        self.candidate(i, checked)
    }

    /// Records a checked result of task `i` as a candidate (or a duplicate).
    fn candidate(&mut self, i: usize, checked: CheckedResult) -> Result<Decision, ResultRejected> {
        let receipt_id = checked.receipt_id;
        if self.seen.contains(&receipt_id) {
            return Ok(Decision::Duplicate);
        }
        let Some(state) = self.tasks.get_mut(i) else {
            return Err(ResultRejected::NotThisJob(checked.offer.task));
        };
        let decision = match state {
            TaskState::Accepted { .. } => return Ok(Decision::Duplicate),
            TaskState::Verifying { .. } => {
                return Err(ResultRejected::UnderVerification(checked.offer.task.index));
            }
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

    /// Checks a result of a task under verification (a `Vote` event) and
    /// holds it until the verdict.
    pub fn vote(&mut self, frames: ResultFrames) -> Result<VoteDecision, ResultRejected> {
        let (i, checked) = self.check_bundle(frames)?;
        self.hold_vote(i, checked)
    }

    /// The checks of [`CreatorJob::vote`] after the signatures, for drivers
    /// that verified the frames themselves or model signatures (as
    /// [`CreatorJob::check_verified`] is to `check_result`).
    pub fn vote_verified(
        &mut self,
        checked: CheckedResult,
    ) -> Result<VoteDecision, ResultRejected> {
        let (i, checked) = self.cross_check(checked)?;
        self.hold_vote(i, checked)
    }

    /// Holds a checked vote of task `i` until the verdict.
    fn hold_vote(
        &mut self,
        i: usize,
        checked: CheckedResult,
    ) -> Result<VoteDecision, ResultRejected> {
        let task = checked.offer.task.index;
        let receipt_id = checked.receipt_id;
        let Some(state) = self.tasks.get_mut(i) else {
            return Err(ResultRejected::NotThisJob(checked.offer.task));
        };
        match state {
            TaskState::Accepted { .. } | TaskState::Fetching { .. } => {
                return Ok(VoteDecision::Duplicate);
            }
            TaskState::Waiting | TaskState::Failed { .. } => {
                *state = TaskState::Verifying {
                    votes: Vec::new(),
                    verdict: None,
                };
            }
            TaskState::Verifying { .. } => {}
        }
        let TaskState::Verifying { votes, verdict } = state else {
            return Ok(VoteDecision::Duplicate);
        };
        if votes.iter().any(|v| v.receipt_id == receipt_id) {
            return Ok(VoteDecision::Duplicate);
        }
        if votes.len() >= MAX_VOTES {
            return Err(ResultRejected::TooManyVotes(task));
        }
        let named = *verdict == Some(checked.offer.attempt);
        votes.push(checked.clone());
        if named {
            // The verdict came first: re-check it now that the result is here.
            return match self.verified(task, checked.offer.attempt) {
                Ok(Some(r)) => Ok(VoteDecision::Fetch(Box::new(r))),
                _ => Ok(VoteDecision::Held),
            };
        }
        Ok(VoteDecision::Held)
    }

    /// Verification caught `attempt` of `task` (`Rejected`): it is dropped
    /// and refused for good.
    pub fn rejected(&mut self, task: u32, attempt: u32) {
        let Some(state) = usize::try_from(task)
            .ok()
            .and_then(|i| self.tasks.get_mut(i))
        else {
            return;
        };
        if let TaskState::Verifying { votes, .. } = state {
            votes.retain(|v| v.offer.attempt != attempt);
        }
        if self.rejected.range((task, 0)..=(task, u32::MAX)).count() < MAX_REJECTED {
            self.rejected.insert((task, attempt));
        }
    }

    /// The scheduler's verdict (`Verified`) names `attempt` as the task's
    /// result. The creator re-checks it on its own evidence (see the module
    /// docs); if it stands, the task moves to fetching that result, which is
    /// returned. `Ok(None)`: the named result is not held yet (it is fetched
    /// when its `Vote` arrives).
    pub fn verified(
        &mut self,
        task: u32,
        attempt: u32,
    ) -> Result<Option<CheckedResult>, VerdictRejected> {
        if self.rejected.contains(&(task, attempt)) {
            return Err(VerdictRejected::Caught { task, attempt });
        }
        let policy = self.spec.verification.clone();
        let i = usize::try_from(task).map_err(|_| VerdictRejected::NotVerifying(task))?;
        let Some(TaskState::Verifying { votes, verdict }) = self.tasks.get_mut(i) else {
            return Err(VerdictRejected::NotVerifying(task));
        };
        let Some(winner) = votes.iter().find(|v| v.offer.attempt == attempt).cloned() else {
            *verdict = Some(attempt);
            return Ok(None);
        };
        match policy {
            VerificationPolicy::None => return Err(VerdictRejected::NoPolicy),
            VerificationPolicy::Quorum { k, .. } => {
                // One hash per distinct worker.
                let mut by_worker: BTreeMap<NodeId, [u8; 32]> = BTreeMap::new();
                for v in votes.iter() {
                    by_worker
                        .entry(v.offer.worker)
                        .or_insert(v.result.output_hash);
                }
                let hashes: Vec<[u8; 32]> = by_worker.into_values().collect();
                let h = winner.result.output_hash;
                if verify::quorum_tally(k, &hashes, 0, 0) != (QuorumTally::Agreed { hash: h }) {
                    let agreeing = hashes.iter().filter(|x| **x == h).count();
                    return Err(VerdictRejected::NoQuorum {
                        task,
                        agreeing,
                        needed: verify::quorum_needed(k),
                        others: hashes.len() - agreeing,
                    });
                }
            }
            VerificationPolicy::SpotCheck {
                min_similarity_milli,
                ..
            } => {
                let made = self
                    .comparisons
                    .get(&task)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                // The checks of this primary, in the order compared.
                let checks: Vec<u32> = made
                    .iter()
                    .filter(|c| !c.cross && c.reference == attempt)
                    .map(|c| c.check)
                    .collect();
                let spot: Vec<SpotVote> = made
                    .iter()
                    .filter(|c| !c.cross && c.reference == attempt)
                    .map(|c| match c.result {
                        Some(CompareResult::Similarity(s)) => SpotVote::Compared(s),
                        Some(_) => SpotVote::Unusable,
                        None => SpotVote::Pending,
                    })
                    .collect();
                let pos = |a: u32| checks.iter().position(|c| *c == a);
                let crosses: Vec<Cross> = made
                    .iter()
                    .filter(|c| c.cross)
                    .filter_map(|c| {
                        Some(Cross {
                            a: pos(c.reference)?,
                            b: pos(c.check)?,
                            similarity: match c.result? {
                                CompareResult::Similarity(s) => Some(s),
                                _ => Some(0),
                            },
                        })
                    })
                    .collect();
                if verify::spot_tally(min_similarity_milli, &spot, &crosses, 0, 0)
                    != SpotTally::Pass
                {
                    return Err(VerdictRejected::NotPassed { task, attempt });
                }
            }
        }
        if let Some(state) = self.tasks.get_mut(i) {
            *state = TaskState::Fetching {
                fetching: Box::new(winner.clone()),
                candidates: Vec::new(),
            };
        }
        self.seen.insert(winner.receipt_id);
        self.comparisons.remove(&task);
        Ok(Some(winner))
    }

    /// A spot-check comparison the scheduler asks for (`Compare`): what to
    /// fetch (both held results) and which pixels to compare.
    pub fn compare(
        &mut self,
        task: u32,
        crop: Rect,
        reference_attempt: u32,
        check_attempt: u32,
        cross: bool,
    ) -> Result<CompareRequest, CompareRefused> {
        if !matches!(self.spec.verification, VerificationPolicy::SpotCheck { .. }) {
            return Err(CompareRefused::NotSpotCheck);
        }
        let held = |attempt: u32| {
            usize::try_from(task)
                .ok()
                .and_then(|i| self.tasks.get(i))
                .and_then(|t| match t {
                    TaskState::Verifying { votes, .. } => {
                        votes.iter().find(|v| v.offer.attempt == attempt).cloned()
                    }
                    _ => None,
                })
                .ok_or(CompareRefused::NotHeld { task, attempt })
        };
        let reference = held(reference_attempt)?;
        let check = held(check_attempt)?;
        let region = task_geometry(&self.spec.split, self.spec.width, self.spec.height, task)
            .map(|g| g.region)
            .unwrap_or(Rect::full(0, 0));
        if !crop.within(&region) {
            return Err(CompareRefused::BadCrop { task, crop, region });
        }
        let reference_pixels = if cross {
            Rect::full(crop.w, crop.h)
        } else {
            Rect {
                x: crop.x - region.x,
                y: crop.y - region.y,
                ..crop
            }
        };
        let held_attempts: Vec<u32> = usize::try_from(task)
            .ok()
            .and_then(|i| self.tasks.get(i))
            .map(|t| match t {
                TaskState::Verifying { votes, .. } => {
                    votes.iter().map(|v| v.offer.attempt).collect()
                }
                _ => Vec::new(),
            })
            .unwrap_or_default();
        let made = self.comparisons.entry(task).or_default();
        let asked = made
            .iter()
            .any(|c| c.reference == reference_attempt && c.check == check_attempt);
        if !asked {
            if made.len() >= MAX_COMPARISONS {
                // Comparisons of results no longer held (a caught primary's,
                // an earlier run's) are done with: forget them first.
                made.retain(|c| {
                    held_attempts.contains(&c.reference) && held_attempts.contains(&c.check)
                });
            }
            if made.len() >= MAX_COMPARISONS {
                // Refused rather than answered unrecorded: `compared` would
                // then refuse the answer and the scheduler wait for it.
                return Err(CompareRefused::TooMany { task });
            }
            made.push(Compared {
                reference: reference_attempt,
                check: check_attempt,
                cross,
                result: None,
            });
        }
        Ok(CompareRequest {
            reference,
            check,
            crop,
            reference_pixels,
        })
    }

    /// The driver fetched and opened both outputs of a comparison (`None`:
    /// it could not) and compared them (`found`: the similarity, or which
    /// output was not an image of the expected size). An output whose
    /// plaintext hash differs from the one its worker signed is unusable,
    /// whatever the metric said. Records the result and returns the
    /// [`Comparison`] to send to the scheduler.
    pub fn compared(
        &mut self,
        task: u32,
        reference_attempt: u32,
        check_attempt: u32,
        reference_hash: Option<[u8; 32]>,
        check_hash: Option<[u8; 32]>,
        found: CompareResult,
    ) -> Result<Comparison, CompareRefused> {
        let signed = |attempt: u32| {
            usize::try_from(task)
                .ok()
                .and_then(|i| self.tasks.get(i))
                .and_then(|t| match t {
                    TaskState::Verifying { votes, .. } => votes
                        .iter()
                        .find(|v| v.offer.attempt == attempt)
                        .map(|v| v.result.output_hash),
                    _ => None,
                })
        };
        let not_asked = CompareRefused::NotAsked {
            task,
            reference: reference_attempt,
            check: check_attempt,
        };
        let (Some(rh), Some(ch)) = (signed(reference_attempt), signed(check_attempt)) else {
            return Err(not_asked);
        };
        let result = if reference_hash != Some(rh) {
            CompareResult::ReferenceUnusable
        } else if check_hash != Some(ch) {
            CompareResult::CheckUnusable
        } else {
            match found {
                CompareResult::Similarity(s) => CompareResult::Similarity(s.min(1000)),
                other => other,
            }
        };
        let made = self.comparisons.get_mut(&task).ok_or(not_asked.clone())?;
        let c = made
            .iter_mut()
            .find(|c| c.reference == reference_attempt && c.check == check_attempt)
            .ok_or(not_asked)?;
        c.result = Some(result);
        Ok(Comparison {
            task: TaskId {
                job: self.spec.id,
                index: task,
            },
            reference_attempt,
            check_attempt,
            result,
        })
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
    /// its state (the result is already here); held verification results
    /// are dropped.
    pub fn task_failed(&mut self, task: u32, reason: String) {
        if let Some(state) = usize::try_from(task)
            .ok()
            .and_then(|i| self.tasks.get_mut(i))
            && matches!(state, TaskState::Waiting | TaskState::Verifying { .. })
        {
            *state = TaskState::Failed { reason };
            self.comparisons.remove(&task);
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
    use crate::wire::{ImageFormat, JobId, JobKind, Requirements, ResourceUsage, SplitRule};

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

    /// A result of `index`/`attempt` by worker key `by` with output `hash`,
    /// offered by the job's scheduler.
    fn signed_by(
        w: &World,
        by: &NodeKey,
        index: u32,
        attempt: u32,
        hash: [u8; 32],
    ) -> ResultFrames {
        let o = TaskOffer {
            worker: by.node_id(),
            ..offer(w, index, attempt)
        };
        let usage = ResourceUsage::default();
        let result = TaskResult {
            task: o.task,
            worker: o.worker,
            attempt,
            output_hash: hash,
            output_manifest: ContentId([4; 32]),
            wrapped_key: WrappedKey {
                ephemeral: [0; 32],
                ciphertext: [0; 32],
                tag: [0; 16],
            },
            usage,
        };
        let receipt = Receipt {
            task: o.task,
            worker: o.worker,
            creator: w.creator.node_id(),
            scheduler: o.scheduler,
            attempt,
            output_hash: hash,
            usage,
            started_at_ms: 2_000,
            finished_at_ms: 3_000,
            price: o.price,
        };
        ResultFrames {
            offer: Signed::sign(&w.scheduler, &o).unwrap().into_bytes(),
            result: Signed::sign(by, &result).unwrap().into_bytes(),
            receipt: Signed::sign(by, &receipt).unwrap().into_bytes(),
        }
    }

    fn world_with(policy: VerificationPolicy, kind: JobKind) -> World {
        let w = world();
        let mut spec = w.job.spec().clone();
        spec.verification = policy;
        spec.kind = kind;
        World {
            job: CreatorJob::new(spec, w.scheduler.node_id()),
            ..w
        }
    }

    #[test]
    fn quorum_votes_are_held_until_a_verdict_the_creator_can_check() {
        let mut w = world_with(
            VerificationPolicy::Quorum {
                sample_permille: 100,
                k: 2,
            },
            JobKind::Builtin,
        );
        let (a, b, c) = (key(21), key(22), key(23));
        let honest = [8; 32];
        assert_eq!(
            w.job.vote(signed_by(&w, &a, 0, 0, [6; 32])).unwrap(),
            VoteDecision::Held
        );
        assert_eq!(
            w.job.vote(signed_by(&w, &b, 0, 1, honest)).unwrap(),
            VoteDecision::Held
        );
        assert_eq!(w.job.counts().verifying, 1);
        // Not through a plain Done while under verification.
        assert!(matches!(
            w.job.check_result(signed_by(&w, &b, 0, 1, honest)),
            Err(ResultRejected::UnderVerification(0))
        ));
        // A verdict without a quorum on the creator's own evidence is refused.
        assert!(matches!(
            w.job.verified(0, 1),
            Err(VerdictRejected::NoQuorum {
                agreeing: 1,
                needed: 2,
                ..
            })
        ));
        // The liar is caught; its result can never come back.
        w.job.rejected(0, 0);
        assert!(matches!(
            w.job.vote(signed_by(&w, &a, 0, 0, [6; 32])),
            Err(ResultRejected::Caught {
                task: 0,
                attempt: 0
            })
        ));
        assert!(matches!(
            w.job.check_result(signed_by(&w, &a, 0, 0, [6; 32])),
            Err(ResultRejected::Caught { .. })
        ));
        assert_eq!(
            w.job.verified(0, 0),
            Err(VerdictRejected::Caught {
                task: 0,
                attempt: 0
            })
        );
        // The same worker twice counts once.
        w.job.vote(signed_by(&w, &b, 0, 1, honest)).unwrap();
        assert!(w.job.verified(0, 1).is_err());
        w.job.vote(signed_by(&w, &c, 0, 2, honest)).unwrap();
        let winner = w.job.verified(0, 1).unwrap().unwrap();
        assert_eq!(winner.offer.attempt, 1);
        let acc = w.job.fetched(0, 1, honest, 9).unwrap();
        assert_eq!(acc.receipt_id, winner.receipt_id);
        assert_eq!(w.job.counts().accepted, 1);
        assert_eq!(
            w.job.vote(signed_by(&w, &c, 0, 2, honest)).unwrap(),
            VoteDecision::Duplicate
        );
    }

    /// The verified entry point for votes decides as the frame path does.
    #[test]
    fn vote_verified_agrees_with_vote() {
        let policy = VerificationPolicy::Quorum {
            sample_permille: 100,
            k: 2,
        };
        let mut framed = world_with(policy.clone(), JobKind::Builtin);
        let mut direct = world_with(policy, JobKind::Builtin);
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
        let (a, b) = (key(21), key(22));
        for (k, attempt, hash) in [(&a, 0, [6; 32]), (&b, 1, [8; 32]), (&b, 1, [8; 32])] {
            let f = signed_by(&framed, k, 0, attempt, hash);
            assert_eq!(
                framed.job.vote(f.clone()).unwrap(),
                direct.job.vote_verified(decode(&f)).unwrap()
            );
        }
        framed.job.rejected(0, 0);
        direct.job.rejected(0, 0);
        let f = signed_by(&framed, &a, 0, 0, [6; 32]);
        assert!(matches!(
            direct.job.vote_verified(decode(&f)),
            Err(ResultRejected::Caught { .. })
        ));
        assert_eq!(framed.job.counts(), direct.job.counts());
    }

    #[test]
    fn a_verdict_before_its_vote_waits_for_it() {
        let mut w = world_with(
            VerificationPolicy::Quorum {
                sample_permille: 100,
                k: 2,
            },
            JobKind::Builtin,
        );
        let (a, b) = (key(21), key(22));
        w.job.vote(signed_by(&w, &a, 1, 0, [8; 32])).unwrap();
        assert_eq!(w.job.verified(1, 1), Ok(None));
        match w.job.vote(signed_by(&w, &b, 1, 1, [8; 32])).unwrap() {
            VoteDecision::Fetch(r) => assert_eq!(r.offer.attempt, 1),
            other => panic!("{other:?}"),
        }
        assert!(w.job.verified(2, 0).is_err(), "nothing held for task 2");
    }

    #[test]
    fn spot_checks_compare_then_verify_on_the_creators_own_comparisons() {
        let mut w = world_with(
            VerificationPolicy::SpotCheck {
                sample_permille: 100,
                crop_permille: 250,
                min_similarity_milli: 900,
            },
            JobKind::Blender {
                engine: crate::wire::BlenderEngine::Cycles,
            },
        );
        let (p, c1, c2) = (key(21), key(22), key(23));
        w.job.vote(signed_by(&w, &p, 3, 0, [1; 32])).unwrap();
        w.job.vote(signed_by(&w, &c1, 3, 1, [2; 32])).unwrap();
        let crop = Rect {
            x: 10,
            y: 4,
            w: 32,
            h: 16,
        };
        let req = w.job.compare(3, crop, 0, 1, false).unwrap();
        assert_eq!(req.reference.offer.attempt, 0);
        assert_eq!(req.check.offer.attempt, 1);
        assert_eq!(
            req.reference_pixels, crop,
            "frames: the region is the whole frame"
        );
        // Nothing passes before the comparison is in.
        assert!(w.job.verified(3, 0).is_err());
        // A check whose output does not match its signed hash is unusable.
        let cmp = w
            .job
            .compared(
                3,
                0,
                1,
                Some([1; 32]),
                Some([9; 32]),
                CompareResult::Similarity(990),
            )
            .unwrap();
        assert_eq!(cmp.result, CompareResult::CheckUnusable);
        assert!(w.job.verified(3, 0).is_err());
        // A second check, compared properly.
        w.job.vote(signed_by(&w, &c2, 3, 2, [3; 32])).unwrap();
        w.job.compare(3, crop, 0, 2, false).unwrap();
        let cmp = w
            .job
            .compared(
                3,
                0,
                2,
                Some([1; 32]),
                Some([3; 32]),
                CompareResult::Similarity(950),
            )
            .unwrap();
        assert_eq!(cmp.result, CompareResult::Similarity(950));
        assert_eq!(cmp.task.index, 3);
        assert_eq!(
            w.job.verified(3, 2),
            Err(VerdictRejected::NotPassed {
                task: 3,
                attempt: 2
            })
        );
        let winner = w.job.verified(3, 0).unwrap().unwrap();
        assert_eq!(winner.offer.attempt, 0);
        // Refusals.
        assert!(matches!(
            w.job.compare(0, crop, 0, 1, false),
            Err(CompareRefused::NotHeld { .. })
        ));
        assert!(matches!(
            w.job
                .compared(3, 7, 8, None, None, CompareResult::Similarity(1)),
            Err(CompareRefused::NotAsked { .. })
        ));
    }

    /// Re-runs after catches make new comparisons of one task, far more than
    /// `MAX_COMPARISONS` over the task's life: the stale ones (of results no
    /// longer held) make room, so every comparison asked for is recorded and
    /// its answer taken (the sweep saw spot-checks stall on this).
    #[test]
    fn comparisons_of_caught_results_make_room_for_new_ones() {
        let mut w = world_with(
            VerificationPolicy::SpotCheck {
                sample_permille: 100,
                crop_permille: 250,
                min_similarity_milli: 900,
            },
            JobKind::Blender {
                engine: crate::wire::BlenderEngine::Cycles,
            },
        );
        let crop = Rect {
            x: 10,
            y: 4,
            w: 32,
            h: 16,
        };
        let rounds = u32::try_from(MAX_COMPARISONS).unwrap() + 4;
        for round in 0..rounds {
            let (p, c) = (2 * round, 2 * round + 1);
            let (kp, kc) = (key(30 + 2 * round as u8), key(31 + 2 * round as u8));
            w.job.vote(signed_by(&w, &kp, 3, p, [1; 32])).unwrap();
            w.job.vote(signed_by(&w, &kc, 3, c, [2; 32])).unwrap();
            w.job.compare(3, crop, p, c, false).unwrap();
            let cmp = w
                .job
                .compared(
                    3,
                    p,
                    c,
                    Some([1; 32]),
                    Some([2; 32]),
                    CompareResult::Similarity(100),
                )
                .unwrap();
            assert_eq!(cmp.result, CompareResult::Similarity(100), "round {round}");
            // The scheduler caught the primary; the check is set aside too.
            w.job.rejected(3, p);
            w.job.rejected(3, c);
        }
    }

    #[test]
    fn crops_outside_the_region_and_comparisons_of_quorum_jobs_are_refused() {
        let mut w = world_with(
            VerificationPolicy::SpotCheck {
                sample_permille: 100,
                crop_permille: 250,
                min_similarity_milli: 900,
            },
            JobKind::Builtin,
        );
        w.job.vote(signed_by(&w, &key(21), 0, 0, [1; 32])).unwrap();
        w.job.vote(signed_by(&w, &key(22), 0, 1, [2; 32])).unwrap();
        let outside = Rect {
            x: 60,
            y: 0,
            w: 8,
            h: 8,
        };
        assert!(matches!(
            w.job.compare(0, outside, 0, 1, false),
            Err(CompareRefused::BadCrop { .. })
        ));
        let mut q = world_with(
            VerificationPolicy::Quorum {
                sample_permille: 1,
                k: 2,
            },
            JobKind::Builtin,
        );
        assert_eq!(
            q.job.compare(0, outside, 0, 1, false),
            Err(CompareRefused::NotSpotCheck)
        );
        // A failed verified task drops its held results.
        w.job.task_failed(0, "unverified".into());
        assert!(matches!(w.job.tasks()[0], TaskState::Failed { .. }));
        let bytes = crate::codec::encode(&w.job).unwrap();
        let back: CreatorJob = crate::codec::decode(&bytes, crate::codec::MAX_FRAME).unwrap();
        assert_eq!(back, w.job);
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
