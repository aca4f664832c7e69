//! The scheduler's public types: settings, actions, events, reasons, errors.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::placement::{ScoreWeights, Unmet, runtime_name, vendor_name};
use crate::reputation::Outcome;
use crate::signed::SignedError;
use crate::task::Rect;
use crate::wire::{GpuVendor, JobId, RuntimeKind, TaskId, TaskOffer, ValidationError};

/// Settings of a [`Scheduler`](super::Scheduler). Every bound here is a hard limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Most jobs this scheduler owns at once (finished ones count until pruned).
    pub max_jobs: usize,
    /// Most jobs it keeps as a replica for other schedulers.
    pub max_replicas: usize,
    /// Most tasks over all jobs held (owned and replicas).
    pub max_tasks: u64,
    /// Most attempts offered or assigned at once; placement waits beyond.
    pub max_in_flight: usize,
    /// Most nodes in the capacity view (new nodes beyond are ignored).
    pub max_nodes: usize,
    /// Candidates compared per decision (power of d choices).
    pub choices: usize,
    /// Random probes of the index per decision before a bounded scan.
    pub max_probes: usize,
    /// Most index entries a decision scans when probing found nobody.
    pub max_scan: usize,
    /// Most placement decisions per `handle_timeout` call; the rest is due at once after.
    pub decisions_per_pass: usize,
    /// How long an offer reserves the worker.
    pub reserve_ms: u64,
    /// A worker silent this long loses its task.
    pub heartbeat_timeout_ms: u64,
    /// A task's deadline after its offer (capped by the job deadline).
    pub task_timeout_ms: u64,
    /// Accepted attempts that may be lost or fail before the task fails.
    pub max_attempts: u8,
    /// How soon a job whose tasks found no candidate is tried again.
    pub retry_ms: u64,
    /// Least time between two replications of a job.
    pub replicate_interval_ms: u64,
    /// How long a finished job is kept (views, duplicate detection).
    pub finished_retention_ms: u64,
    /// How long a finished job this scheduler took over (or got from one
    /// that did) is kept, if longer: its former owner, coming back within
    /// this time, learns from it that the job moved on and yields (see
    /// "Two owners" in the module docs).
    pub takeover_retention_ms: u64,
    /// After a restart (`Scheduler::resumed`), how long owned jobs place
    /// nothing: time for a scheduler that took them over meanwhile to answer
    /// the claim the resumed one shows it (and for it to yield).
    pub resume_grace_ms: u64,
    /// Progress events to the creator at most every this many per mille.
    pub progress_step_permille: u16,
    /// Score weights.
    pub weights: ScoreWeights,
    /// Whether a node the driver never called `set_probation` for is on
    /// probation (new identities start there).
    pub new_nodes_on_probation: bool,
    /// Most attempts (offered or accepted) a probationer holds from this
    /// scheduler at once.
    pub probation_max_tasks: u16,
    /// Most tasks of one job under verification at once; beyond it, drawn
    /// samples are skipped (counted in `check_bound`) and probationers get
    /// no task of the job.
    pub max_open_checks: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_jobs: 1024,
            max_replicas: 1024,
            max_tasks: 1_000_000,
            max_in_flight: 100_000,
            max_nodes: 100_000,
            choices: 2,
            max_probes: 16,
            max_scan: 1024,
            decisions_per_pass: 4096,
            reserve_ms: 10_000,
            heartbeat_timeout_ms: 30_000,
            task_timeout_ms: 2 * 3600 * 1000,
            max_attempts: 3,
            retry_ms: 1_000,
            replicate_interval_ms: 2_000,
            finished_retention_ms: 600_000,
            takeover_retention_ms: 3_600_000,
            resume_grace_ms: 10_000,
            progress_step_permille: 100,
            weights: ScoreWeights::default(),
            new_nodes_on_probation: true,
            probation_max_tasks: 1,
            max_open_checks: 4096,
        }
    }
}

/// The signed frames of a result, forwarded to the creator untouched.
pub use crate::creator::ResultFrames;

/// What happened to a job, for its creator (`JobEvent` in docs/jobs.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEvent {
    /// Tasks wait: no worker can take them now, and why.
    Queued {
        /// Why.
        reason: QueuedReason,
    },
    /// A task was offered to a worker.
    Offered {
        /// Task index.
        task: u32,
        /// Worker.
        worker: NodeId,
        /// Attempt.
        attempt: u32,
    },
    /// The worker accepted.
    Assigned {
        /// Task index.
        task: u32,
        /// Worker.
        worker: NodeId,
        /// Attempt.
        attempt: u32,
    },
    /// The worker reported progress.
    Progress {
        /// Task index.
        task: u32,
        /// Done so far, per mille.
        permille: u16,
    },
    /// The task has a result (the first valid one).
    Done {
        /// Task index.
        task: u32,
        /// Worker.
        worker: NodeId,
        /// Attempt.
        attempt: u32,
        /// The signed frames the creator checks.
        frames: ResultFrames,
    },
    /// The task failed for good.
    Failed {
        /// Task index.
        task: u32,
        /// Its last attempt, if it was ever offered.
        attempt: Option<u32>,
        /// Why.
        reason: FailReason,
    },
    /// Every task is done or failed.
    JobFinished {
        /// Tasks done.
        done: u32,
        /// Tasks failed.
        failed: u32,
    },
    /// Another scheduler (the replica) took the job over.
    TakenOver {
        /// The new owner.
        by: NodeId,
    },
    /// A result of a task under verification: keep it, do not accept it
    /// until a `Verified` names it (`CreatorJob::vote`).
    Vote {
        /// Task index.
        task: u32,
        /// Worker.
        worker: NodeId,
        /// Attempt.
        attempt: u32,
        /// The signed frames the creator checks.
        frames: ResultFrames,
    },
    /// Spot-check: compare the crop rendered by `check_attempt` with the same
    /// pixels of `reference_attempt`'s output (the primary's whole output, or
    /// another check's crop) and answer with a
    /// [`Comparison`](crate::verify::Comparison) (`CreatorJob::compare`).
    Compare {
        /// Task index.
        task: u32,
        /// The crop, frame coordinates (inside the task's region).
        crop: Rect,
        /// The attempt compared against.
        reference_attempt: u32,
        /// The attempt that rendered the crop.
        check_attempt: u32,
        /// The reference is another check's crop (compare whole images), not
        /// the primary's output (crop it first).
        cross: bool,
    },
    /// Verification caught this result: never countersign it.
    Rejected {
        /// Task index.
        task: u32,
        /// Worker.
        worker: NodeId,
        /// Attempt.
        attempt: u32,
    },
    /// The verdict of a task under verification: this result is the task's
    /// (the creator re-checks it with `CreatorJob::verified`, then fetches and
    /// countersigns it). Ends the task like `Done`.
    Verified {
        /// Task index.
        task: u32,
        /// Worker.
        worker: NodeId,
        /// Attempt.
        attempt: u32,
    },
}

/// Why a job's tasks wait in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum QueuedReason {
    /// No live worker has the runtime at all.
    #[error("no live worker has runtime {}", runtime_name(*.runtime))]
    NoRuntime {
        /// The runtime.
        runtime: RuntimeKind,
    },
    /// Workers have the runtime but none has a GPU of the vendor.
    #[error("no live worker with runtime {} has a {} GPU", runtime_name(*.runtime), vendor_name(*.vendor))]
    NoGpu {
        /// The runtime.
        runtime: RuntimeKind,
        /// The vendor.
        vendor: GpuVendor,
    },
    /// Every live worker that has the runtime is busy.
    #[error("all {workers} live workers with runtime {} are busy", runtime_name(*.runtime))]
    AllBusy {
        /// The runtime.
        runtime: RuntimeKind,
        /// How many.
        workers: u32,
    },
    /// Free workers exist but none checked meets the requirements.
    #[error("none of the {checked} free workers checked meets the requirements, e.g. {example}")]
    Unmet {
        /// Workers checked.
        checked: u32,
        /// One worker's unmet requirement.
        example: Unmet,
    },
    /// The free workers checked all failed this task before.
    #[error("the {checked} free workers checked have all failed this task before")]
    Excluded {
        /// Workers checked.
        checked: u32,
    },
    /// This scheduler has as many attempts in flight as it allows.
    #[error("this scheduler has {max} tasks in flight, its limit")]
    InFlightLimit {
        /// The limit.
        max: u32,
    },
    /// Verification needs another worker, and every free worker checked
    /// already works on the task.
    #[error(
        "verification needs another worker: the {checked} free workers checked already work on this task"
    )]
    NoVerifier {
        /// Workers checked.
        checked: u32,
    },
}

impl QueuedReason {
    /// Same kind of reason (counts aside): the creator is told only of changes.
    pub fn same_kind(&self, other: &QueuedReason) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// How an accepted attempt ended without a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptEnd {
    /// The worker was silent past the heartbeat timeout.
    Silent,
    /// The worker ran past the task deadline.
    PastDeadline,
    /// The worker reported a failure.
    Reported {
        /// What it said (at most 256 bytes).
        reason: String,
    },
    /// Verification caught the worker's result.
    Caught,
    /// The creator could not fetch the worker's output.
    Unfetchable,
}

impl fmt::Display for AttemptEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptEnd::Silent => f.write_str("the worker went silent"),
            AttemptEnd::PastDeadline => f.write_str("the worker ran past the task deadline"),
            AttemptEnd::Reported { reason } => write!(f, "the worker reported: {reason}"),
            AttemptEnd::Caught => f.write_str("verification caught a wrong result"),
            AttemptEnd::Unfetchable => f.write_str("the creator could not fetch the output"),
        }
    }
}

/// Why a task failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum FailReason {
    /// The creator cancelled the job.
    #[error("cancelled by the creator")]
    Cancelled,
    /// The job's deadline passed first.
    #[error("the job deadline passed")]
    JobDeadline,
    /// Too many accepted attempts were lost or failed.
    #[error("{failures} attempts failed; last: {last}")]
    Attempts {
        /// How many.
        failures: u8,
        /// The last one.
        last: AttemptEnd,
    },
    /// The task ran out of attempt numbers.
    #[error("no attempt numbers left")]
    AttemptNumbers,
    /// Verification reached no verdict within its bound of lines.
    #[error(
        "verification reached no verdict over {results} results; the job may not be deterministic"
    )]
    Unverified {
        /// Usable results received.
        results: u8,
    },
}

/// Why an escrowed (accepted) attempt is closed without payment: the driver
/// publishes a refund of that attempt's escrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// Worker silent past the heartbeat timeout.
    Silent,
    /// Worker past the task deadline.
    PastDeadline,
    /// Worker reported failure.
    Reported,
    /// Another attempt's result won.
    Superseded,
    /// The creator cancelled the job.
    Cancelled,
    /// The job deadline passed.
    JobDeadline,
    /// The task failed for good while this attempt ran.
    TaskFailed,
    /// A verification result that agreed (or was not needed): the ledger
    /// settles one receipt per task, so only the winner is paid.
    Checked,
    /// Verification caught this attempt's result: never paid.
    Caught,
    /// The creator could not fetch this attempt's output (its worker was
    /// unreachable, or the output did not match its signed hash): never
    /// countersigned, so never paid; the task ran again.
    Unfetchable,
    /// This scheduler yielded the job to an owner with a newer claim (it had
    /// taken the job over while this one was away) that does not know this
    /// attempt: the attempt is called off, not the worker's fault.
    Yielded,
}

impl CloseReason {
    /// The outcome a refund (`TaskClosed`) states for this reason: lost
    /// attempts lapsed, cancelled ones were cancelled, everything else
    /// (verification losers and catches included) failed.
    pub fn outcome(self) -> crate::wire::CloseOutcome {
        use crate::wire::CloseOutcome;
        match self {
            CloseReason::Silent
            | CloseReason::PastDeadline
            | CloseReason::JobDeadline
            | CloseReason::Unfetchable => CloseOutcome::Lapsed,
            CloseReason::Cancelled | CloseReason::Yielded => CloseOutcome::Cancelled,
            CloseReason::Reported
            | CloseReason::Superseded
            | CloseReason::TaskFailed
            | CloseReason::Checked
            | CloseReason::Caught => CloseOutcome::Failed,
        }
    }
}

/// A job's state as carried to its replica and kept in a
/// [`SchedulerSnapshot`](super::SchedulerSnapshot) (opaque). A large job does
/// not fit one codec frame: send and store it as
/// [`to_parts`](JobSnapshot::to_parts), each part encoded with
/// [`crate::codec`]; [`SnapshotAssembler`](super::SnapshotAssembler) puts
/// them back together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSnapshot {
    pub(crate) job: JobId,
    /// The creator's `Signed<JobSpec>` frame.
    #[serde(with = "arc_bytes")]
    pub(crate) frame: Arc<[u8]>,
    pub(crate) core: super::job::JobCore,
}

impl JobSnapshot {
    /// The job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The scheduler that owns the job, as the snapshot says.
    pub fn owner(&self) -> NodeId {
        self.core.owner
    }

    /// The revision (grows with every replication).
    pub fn revision(&self) -> u64 {
        self.core.revision
    }
}

pub(crate) mod arc_bytes {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Arc<[u8]>, s: S) -> Result<S::Ok, S::Error> {
        <[u8]>::serialize(v, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[u8]>, D::Error> {
        Vec::<u8>::deserialize(d).map(Arc::from)
    }
}

/// An effect the driver carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedulerAction {
    /// Sign `offer` and send it with the job's signed spec to `to`; feed the
    /// answer to `handle_accept`, a failure to deliver to `handle_undeliverable`.
    Offer {
        /// The worker.
        to: NodeId,
        /// The offer (unsigned).
        offer: TaskOffer,
        /// The creator's `Signed<JobSpec>` frame.
        spec_frame: Arc<[u8]>,
    },
    /// Tell a worker to stop an attempt (best effort).
    CancelTask {
        /// The worker.
        worker: NodeId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Send an event to the job's creator.
    Notify {
        /// The creator.
        creator: NodeId,
        /// The job.
        job: JobId,
        /// What happened.
        event: JobEvent,
    },
    /// Publish the escrow bundle (signed spec, offer and accept) for an accepted attempt.
    Escrow {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// The worker.
        worker: NodeId,
        /// The offer's price.
        price: u64,
    },
    /// Publish a refund (`TaskClosed`) of an escrowed attempt that will not be paid.
    Closed {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// Its worker.
        worker: NodeId,
        /// Why.
        reason: CloseReason,
    },
    /// Send the job's state to its replica (`Replicate` requests, one per
    /// [`JobSnapshot::to_parts`] part).
    Replicate {
        /// The replica.
        to: NodeId,
        /// The state.
        snapshot: Box<JobSnapshot>,
    },
    /// Like `Offer`, for a spot-check line: the worker renders only `crop`
    /// (frame coordinates) of the task (`RpcRequest::CropOffer`).
    OfferCrop {
        /// The worker.
        to: NodeId,
        /// The offer (unsigned).
        offer: TaskOffer,
        /// The crop to render.
        crop: Rect,
        /// The creator's `Signed<JobSpec>` frame.
        spec_frame: Arc<[u8]>,
    },
    /// A verification (or loss) outcome for `worker`: feed it to the
    /// node's `ReputationBook::observe`, then the book's standing back with
    /// `set_reputation` / `set_probation`.
    Outcome {
        /// The worker.
        worker: NodeId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// What happened.
        outcome: Outcome,
    },
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerStats {
    /// Jobs accepted.
    pub submitted: u64,
    /// Placement decisions made (offer or miss).
    pub decisions: u64,
    /// Decisions that found no candidate.
    pub misses: u64,
    /// Offers made.
    pub offers: u64,
    /// Offers accepted.
    pub accepts: u64,
    /// Offers declined.
    pub declines: u64,
    /// Offers lapsed or undeliverable.
    pub lapses: u64,
    /// Attempts lost (silent or past deadline).
    pub lost: u64,
    /// Attempts reported failed.
    pub reported_failures: u64,
    /// Tasks done.
    pub done: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Results for tasks already done (dropped).
    pub duplicates: u64,
    /// Results from an earlier attempt that won.
    pub late_accepted: u64,
    /// Results for tasks already failed (dropped).
    pub too_late: u64,
    /// Done tasks reopened because the creator could not fetch the output.
    pub unfetchable: u64,
    /// Replications sent.
    pub replications: u64,
    /// Jobs taken over.
    pub takeovers: u64,
    /// Owned jobs given up to a scheduler with a newer claim.
    pub yields: u64,
    /// Nodes ignored because the view was full.
    pub view_full: u64,
    /// Tasks put under verification (drawn, probation or re-run).
    pub sampled: u64,
    /// Tasks whose verification passed.
    pub verified: u64,
    /// Results caught by verification.
    pub caught: u64,
    /// Tasks verification could not decide (failed).
    pub unresolved: u64,
    /// Samples skipped because the job had `max_open_checks` open.
    pub check_bound: u64,
    /// Spot-check comparisons received.
    pub comparisons: u64,
}

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new job with this many tasks.
    New {
        /// Tasks.
        tasks: u32,
    },
    /// The same job was already held (idempotent re-submit).
    AlreadyKnown,
}

/// Why a job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The signed spec did not verify.
    #[error("job spec: {0}")]
    Signed(#[from] SignedError),
    /// A field is out of bounds.
    #[error("job spec: {0}")]
    Invalid(#[from] ValidationError),
    /// The job's deadline is already past.
    #[error("job deadline {deadline_ms} is already past (now {now_ms})")]
    DeadlinePassed {
        /// The deadline.
        deadline_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// This scheduler holds as many jobs as it allows.
    #[error("scheduler busy: it holds {max} jobs, its limit; try the next scheduler")]
    TooManyJobs {
        /// The limit.
        max: usize,
    },
    /// The job's tasks do not fit under the task bound.
    #[error("scheduler busy: {tasks} more tasks over the {held} held exceed its limit of {max}")]
    TooManyTasks {
        /// The job's tasks.
        tasks: u64,
        /// Tasks held now.
        held: u64,
        /// The limit.
        max: u64,
    },
    /// A different spec with the same job id is already held.
    #[error("job {0} is already held with a different spec")]
    Conflict(JobId),
}

/// What an answer to an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// The worker took the task (escrow follows).
    Assigned,
    /// The worker declined; the task is placed again.
    Declined,
    /// The same accept again: nothing changed.
    Duplicate,
}

/// Why an answer to an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// Another scheduler owns the job.
    #[error("job {job} is owned by {owner}, not this scheduler")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: NodeId,
    },
    /// The job has no such task.
    #[error("job has {tasks} tasks; no task {index}")]
    UnknownTask {
        /// The index.
        index: u32,
        /// Tasks in the job.
        tasks: u32,
    },
    /// The attempt is not offered to this worker (now).
    #[error("task {index} attempt {attempt} is not offered to {worker}")]
    NotOffered {
        /// The task.
        index: u32,
        /// The attempt.
        attempt: u32,
        /// The worker.
        worker: NodeId,
    },
    /// The answer came after the offer lapsed.
    #[error("offer lapsed at {reserve_until_ms}, answer at {now_ms}")]
    Lapsed {
        /// When it lapsed.
        reserve_until_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
}

/// Why a progress report was refused; the driver answers `Error{Cancelled}`
/// to all but `NotOwner`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// Another scheduler owns the job.
    #[error("job {job} is owned by {owner}, not this scheduler")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: NodeId,
    },
    /// The worker does not hold this attempt (any more): it should stop.
    #[error("task {index} attempt {attempt} is not assigned to this worker: stop")]
    Cancelled {
        /// The task.
        index: u32,
        /// The attempt.
        attempt: u32,
    },
}

/// What a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultOutcome {
    /// The task is done with this result.
    Done,
    /// The task was already done: dropped (counted).
    Duplicate,
    /// The task already failed for good: dropped (counted).
    TooLate,
    /// The task is under verification: the result is a vote, the verdict follows.
    Voted,
}

/// Why a result was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// Another scheduler owns the job.
    #[error("job {job} is owned by {owner}, not this scheduler")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: NodeId,
    },
    /// The job has no such task.
    #[error("job has {tasks} tasks; no task {index}")]
    UnknownTask {
        /// The index.
        index: u32,
        /// Tasks in the job.
        tasks: u32,
    },
    /// This worker never held this attempt (or it failed, or was superseded).
    #[error("task {index} attempt {attempt} was never assigned to {worker}")]
    NotAssigned {
        /// The task.
        index: u32,
        /// The attempt.
        attempt: u32,
        /// The worker.
        worker: NodeId,
    },
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The job's open tasks failed as cancelled.
    Cancelled,
    /// The job had finished already.
    AlreadyFinished,
}

/// Why a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// Only the creator cancels.
    #[error("only the job's creator {creator} may cancel it, not {by}")]
    NotCreator {
        /// The creator.
        creator: NodeId,
        /// Who asked.
        by: NodeId,
    },
    /// Another scheduler owns the job.
    #[error("job {job} is owned by {owner}, not this scheduler")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: NodeId,
    },
}

/// Why a replica snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The snapshot's signed spec did not verify.
    #[error("replica spec: {0}")]
    Signed(#[from] SignedError),
    /// The snapshot is inconsistent.
    #[error("replica snapshot invalid: {0}")]
    Invalid(String),
    /// The sender is not the owner the snapshot names.
    #[error("replica of job owned by {owner} sent by {from}")]
    NotFromOwner {
        /// The owner named.
        owner: NodeId,
        /// The sender.
        from: NodeId,
    },
    /// The sender is no live scheduler in this node's view.
    #[error("{0} is not a live scheduler here")]
    NotAScheduler(NodeId),
    /// This scheduler owns the job now, with a claim at least as new as the
    /// sender's (it sent its own state back: the sender yields).
    #[error("this scheduler owns job {0}")]
    WeOwn(JobId),
    /// The replica held comes from an owner with a newer claim (more
    /// takeovers behind it) than the sender's.
    #[error("replica from an older owner: epoch {got} < held {held}")]
    OlderClaim {
        /// Epoch of the claim held.
        held: u32,
        /// Epoch of the sender's claim.
        got: u32,
    },
    /// Not newer than the replica held.
    #[error("stale replica: revision {got} <= held {held}")]
    Stale {
        /// Revision held.
        held: u64,
        /// Revision received.
        got: u64,
    },
    /// A different spec with the same job id is held.
    #[error("job {0} is held with a different spec")]
    Conflict(JobId),
    /// As many replicas held as allowed.
    #[error("replica limit {max} reached")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// Holding it would exceed the task bound.
    #[error("replica of {tasks} tasks exceeds the task limit {max}")]
    TooManyTasks {
        /// Its tasks.
        tasks: u64,
        /// The limit.
        max: u64,
    },
}

/// Why a takeover was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TakeOverError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// This scheduler owns it already.
    #[error("this scheduler owns job {0} already")]
    AlreadyOwner(JobId),
}

/// Why a task failure report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailureError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// Another scheduler owns the job.
    #[error("job {job} is owned by {owner}, not this scheduler")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: NodeId,
    },
    /// The worker does not hold this attempt.
    #[error("task {index} attempt {attempt} is not assigned to {worker}")]
    NotAssigned {
        /// The task.
        index: u32,
        /// The attempt.
        attempt: u32,
        /// The worker.
        worker: NodeId,
    },
}

/// Why a spot-check comparison was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComparisonError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// Another scheduler owns the job.
    #[error("job {job} is owned by {owner}, not this scheduler")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: NodeId,
    },
    /// Only the creator compares.
    #[error("only the job's creator {creator} compares its outputs, not {by}")]
    NotCreator {
        /// The creator.
        creator: NodeId,
        /// Who sent it.
        by: NodeId,
    },
    /// No comparison of these attempts is pending (already answered, or the
    /// task moved on).
    #[error(
        "no comparison of task {index} attempts {reference_attempt} and {check_attempt} is pending"
    )]
    NotPending {
        /// The task.
        index: u32,
        /// The reference attempt.
        reference_attempt: u32,
        /// The check's attempt.
        check_attempt: u32,
    },
}

/// Why a creator's report of an unfetchable result was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnfetchableError {
    /// No such job here.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// Another scheduler owns the job.
    #[error("job {job} is owned by {owner}, not this scheduler")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its owner.
        owner: NodeId,
    },
    /// Only the creator reports its fetches.
    #[error("only the job's creator {creator} reports unfetchable results, not {by}")]
    NotCreator {
        /// The creator.
        creator: NodeId,
        /// Who sent it.
        by: NodeId,
    },
    /// The task is not done with that attempt (it already moved on, or the
    /// report is about another attempt).
    #[error("task {index} is not done with attempt {attempt}")]
    NotDone {
        /// The task.
        index: u32,
        /// The attempt reported.
        attempt: u32,
    },
    /// The job's deadline passed: nothing runs again.
    #[error("the job's deadline passed")]
    PastDeadline,
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Written by another snapshot version.
    #[error("snapshot version {found}, expected {expected}")]
    Version {
        /// Expected.
        expected: u8,
        /// Found.
        found: u8,
    },
    /// A job's spec did not verify.
    #[error("job spec: {0}")]
    Signed(#[from] SignedError),
    /// The snapshot is inconsistent.
    #[error("snapshot invalid: {0}")]
    Invalid(String),
}
