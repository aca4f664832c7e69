//! The versioned messages of the mesh.
//!
//! Every message that matters travels as a [`Signed<T>`](crate::signed::Signed)
//! of one of the types here. Each type implements [`WireMessage`], which fixes
//! its message kind (part of the signed domain tag), its protocol version and
//! its size limit. A change to a type's layout must bump its `VERSION`: peers
//! reject versions they do not speak with a clear error rather than guessing.
//!
//! Design rules for these types:
//! * integers only (no floats): encodings are canonical and decisions replay
//!   bit-for-bit on every machine;
//! * every collection is bounded by the message's `MAX_BODY` (checked before
//!   decoding) and, where a field has a smaller sane bound, by [`WireMessage::validate`];
//! * time is Unix milliseconds as the *signer* saw it (`*_ms` fields); receivers
//!   judge freshness with their own `now_ms`;
//! * where a message names the node that must have signed it, that is
//!   [`WireMessage::signer`], and [`crate::signed`] checks it.
//!
//! This module holds data and field-level validation only; the rules that
//! act on messages live in the state-machine modules.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::content::ContentId;
use crate::identity::NodeId;
use crate::seal::WrappedKey;

/// The kind of a signed message; part of the signed payload header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// [`CapacityAdvert`].
    CapacityAdvert = 1,
    /// [`JobSpec`].
    JobSpec = 2,
    /// [`TaskOffer`].
    TaskOffer = 3,
    /// [`TaskAccept`].
    TaskAccept = 4,
    /// [`Progress`].
    Progress = 5,
    /// [`TaskResult`].
    TaskResult = 6,
    /// [`Receipt`].
    Receipt = 7,
    /// [`ReceiptAcceptance`].
    ReceiptAcceptance = 8,
    /// [`RollupHeader`].
    RollupHeader = 9,
    /// [`TaskClosed`].
    TaskClosed = 10,
    /// [`Mint`].
    Mint = 11,
    /// [`ReputationReport`](crate::reputation::ReputationReport) (20 and up:
    /// trust messages; 10–19 belong to the ledger).
    ReputationReport = 20,
}

/// Why a message's fields are out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A text or list field is longer than allowed.
    #[error("field {field}: at most {max} allowed, found {found}")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Allowed maximum.
        max: usize,
        /// Found length.
        found: usize,
    },
    /// A field's value makes no sense.
    #[error("field {field}: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A message type that can travel signed.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The message kind in the signed header.
    const KIND: MessageKind;
    /// The protocol version of this type's layout.
    const VERSION: u8;
    /// Largest accepted encoded body, in bytes.
    const MAX_BODY: usize;

    /// The node that must have signed this message, if the message names one.
    fn signer(&self) -> Option<&NodeId>;

    /// Field-level bounds beyond the size limit.
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }
}

fn check_len(field: &'static str, found: usize, max: usize) -> Result<(), ValidationError> {
    if found > max {
        Err(ValidationError::TooLong { field, max, found })
    } else {
        Ok(())
    }
}

/// Largest text field (names, models, versions).
pub const MAX_TEXT: usize = 256;

/// A 32-byte job id: BLAKE3 of the creator's id and a creator-chosen nonce.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub [u8; 32]);

impl JobId {
    /// Derives a job id from its creator and a nonce the creator chose.
    pub fn derive(creator: &NodeId, nonce: u64) -> Self {
        let mut h = blake3::Hasher::new_derive_key("rendertrust 2026-11 job id v1");
        h.update(creator.as_bytes());
        h.update(&nonce.to_le_bytes());
        JobId(*h.finalize().as_bytes())
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobId({})", &hex::encode(self.0)[..16])
    }
}

/// A task: one unit of a job (a frame, or a tile of a frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    /// The job.
    pub job: JobId,
    /// The task's index within the job, from 0.
    pub index: u32,
}

/// Roles a node can take. (Serde names are lowercase, as in the CLI and in
/// config files; bincode encodes the variant index, so names are not on the wire.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs tasks.
    Worker,
    /// Places jobs.
    Scheduler,
    /// Keeps the credit ledger and anchors rollups.
    Ledger,
    /// Relays connections for nodes behind NAT.
    Relay,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [Role::Worker, Role::Scheduler, Role::Ledger, Role::Relay];

    /// The role's name on the wire and in the CLI (`worker`, `scheduler`, …);
    /// also the name in its Kademlia provider key.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
            Role::Ledger => "ledger",
            Role::Relay => "relay",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ValidationError::Invalid {
                field: "role",
                reason: format!(
                    "unknown role {s:?}; expected one of worker, scheduler, ledger, relay"
                ),
            })
    }
}

/// GPU vendors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GpuVendor {
    /// NVIDIA.
    Nvidia,
    /// AMD.
    Amd,
    /// Intel.
    Intel,
    /// Apple.
    Apple,
    /// Anything else.
    Other,
}

/// One GPU of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Vendor.
    pub vendor: GpuVendor,
    /// Model name as the driver reports it.
    pub model: String,
    /// Video memory in bytes.
    pub vram_bytes: u64,
}

/// Runtimes that execute tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuntimeKind {
    /// The deterministic builtin CPU renderer.
    Builtin,
    /// Blender, sandboxed.
    Blender,
    /// A command in a bubblewrap sandbox.
    Process,
}

/// A runtime a node offers, with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Which runtime.
    pub kind: RuntimeKind,
    /// Its version (e.g. "4.3.2" for Blender).
    pub version: String,
}

/// A node's signed statement of what it can do, gossiped on `capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityAdvert {
    /// The advertising node (must be the signer).
    pub node: NodeId,
    /// Sequence number, increasing per node: the newest advert wins.
    pub seq: u64,
    /// When the node issued it (signer's clock, Unix ms).
    pub issued_at_ms: u64,
    /// How long until the node's next periodic advert, ms (its refresh
    /// period, [`crate::capacity::RefreshPolicy`]): receivers keep the entry
    /// [`crate::capacity::TTL_FACTOR`] periods (at least their own ttl).
    /// `1..=`[`MAX_ADVERT_REFRESH_MS`]; receivers clamp it further
    /// ([`crate::capacity::CapacityConfig::max_refresh_ms`]).
    pub refresh_ms: u32,
    /// The X25519 public key job keys are wrapped to (see [`crate::seal`]).
    pub wrap_key: [u8; 32],
    /// Roles the node takes.
    pub roles: Vec<Role>,
    /// CPU cores.
    pub cpu_cores: u16,
    /// CPU model.
    pub cpu_model: String,
    /// Total RAM in bytes.
    pub ram_bytes: u64,
    /// Free disk in the data dir, bytes.
    pub disk_free_bytes: u64,
    /// GPUs (empty: CPU only).
    pub gpus: Vec<GpuInfo>,
    /// Runtimes available.
    pub runtimes: Vec<RuntimeInfo>,
    /// Builtin benchmark score, milli-frames per minute.
    pub bench_mfpm: u64,
    /// Tasks running now.
    pub running_tasks: u16,
    /// Tasks the node accepts at once.
    pub max_tasks: u16,
    /// Asking price, credits per task.
    pub price_per_task: u64,
    /// Free-form region label for proximity (e.g. "eu-west").
    pub region: String,
}

/// Largest refresh period an advert may announce (one hour): beyond it the
/// advert is malformed. Receivers clamp accepted values to their own, lower
/// bound ([`crate::capacity::CapacityConfig::max_refresh_ms`]).
pub const MAX_ADVERT_REFRESH_MS: u32 = 3_600_000;

impl WireMessage for CapacityAdvert {
    const KIND: MessageKind = MessageKind::CapacityAdvert;
    /// 2: `refresh_ms` added.
    const VERSION: u8 = 2;
    const MAX_BODY: usize = 16 * 1024;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.node)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        check_len("roles", self.roles.len(), 4)?;
        check_len("cpu_model", self.cpu_model.len(), MAX_TEXT)?;
        check_len("gpus", self.gpus.len(), 16)?;
        check_len("runtimes", self.runtimes.len(), 8)?;
        check_len("region", self.region.len(), 64)?;
        if self.refresh_ms == 0 || self.refresh_ms > MAX_ADVERT_REFRESH_MS {
            return Err(ValidationError::Invalid {
                field: "refresh_ms",
                reason: format!(
                    "must be 1..={MAX_ADVERT_REFRESH_MS} ms, found {}",
                    self.refresh_ms
                ),
            });
        }
        for g in &self.gpus {
            check_len("gpus.model", g.model.len(), MAX_TEXT)?;
        }
        for r in &self.runtimes {
            check_len("runtimes.version", r.version.len(), 64)?;
        }
        Ok(())
    }
}

/// Which render engine a Blender job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlenderEngine {
    /// Cycles (path tracer).
    Cycles,
    /// Eevee (rasteriser).
    Eevee,
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// The builtin deterministic renderer; the scene is input 0.
    Builtin,
    /// Blender on the `.blend` file in input 0.
    Blender {
        /// Engine.
        engine: BlenderEngine,
    },
    /// A command run in the sandbox, inputs mounted read-only.
    Process {
        /// argv; `{frame}` is replaced by the task's frame number.
        argv: Vec<String>,
        /// Whether the command is deterministic (enables exact-hash verification).
        deterministic: bool,
    },
}

/// An input of a job, by content address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// File name the task sees.
    pub name: String,
    /// Manifest id of the sealed content.
    pub manifest: ContentId,
    /// Plaintext size in bytes.
    pub size: u64,
}

/// What a worker must have to take a task of the job.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requirements {
    /// Required GPU vendor, if any.
    pub gpu_vendor: Option<GpuVendor>,
    /// Minimum VRAM of one GPU, bytes (0: no GPU needed).
    pub min_vram_bytes: u64,
    /// Minimum RAM, bytes.
    pub min_ram_bytes: u64,
    /// Minimum runtime version (compared as dotted numbers), if any.
    pub min_runtime_version: Option<String>,
}

/// How a job splits into tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SplitRule {
    /// One task per frame in `start..=end` by `step`.
    Frames {
        /// First frame.
        start: u32,
        /// Last frame (inclusive).
        end: u32,
        /// Step (≥ 1).
        step: u32,
    },
    /// One frame cut into `cols × rows` tiles, one task each.
    Tiles {
        /// The frame.
        frame: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// How results are checked before they are paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerificationPolicy {
    /// Accept what the worker returns (the creator checks).
    None,
    /// A sampled fraction of tasks runs on `k` workers; hashes must agree.
    Quorum {
        /// Sampled fraction, per mille.
        sample_permille: u16,
        /// Independent workers per sampled task.
        k: u8,
    },
    /// A random crop of a sampled frame is re-rendered elsewhere and compared.
    SpotCheck {
        /// Sampled fraction, per mille.
        sample_permille: u16,
        /// Crop side as a fraction of the frame, per mille.
        crop_permille: u16,
        /// Minimum similarity (SSIM × 1000) to accept.
        min_similarity_milli: u16,
    },
}

/// Output image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageFormat {
    /// PNG.
    Png,
    /// OpenEXR.
    Exr,
}

/// A creator's signed job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job id; must equal `JobId::derive(creator, nonce)`.
    pub id: JobId,
    /// Creator (must be the signer).
    pub creator: NodeId,
    /// Creator's nonce for the id.
    pub nonce: u64,
    /// When the job was created (creator's clock).
    pub created_at_ms: u64,
    /// What runs.
    pub kind: JobKind,
    /// Inputs (input 0 is the scene for render kinds).
    pub inputs: Vec<InputRef>,
    /// Worker requirements.
    pub requirements: Requirements,
    /// Task split.
    pub split: SplitRule,
    /// Output image width, pixels.
    pub width: u32,
    /// Output image height, pixels.
    pub height: u32,
    /// Output format.
    pub format: ImageFormat,
    /// Most the creator pays per task, credits.
    pub max_price_per_task: u64,
    /// Verification policy.
    pub verification: VerificationPolicy,
    /// Job deadline (creator's clock).
    pub deadline_ms: u64,
}

/// Most tasks a job may have.
pub const MAX_TASKS_PER_JOB: u64 = 100_000;

impl SplitRule {
    /// Number of tasks this rule yields.
    pub fn task_count(&self) -> u64 {
        match *self {
            SplitRule::Frames { start, end, step } => {
                if end < start || step == 0 {
                    0
                } else {
                    u64::from(end - start) / u64::from(step) + 1
                }
            }
            SplitRule::Tiles { cols, rows, .. } => u64::from(cols) * u64::from(rows),
        }
    }
}

impl WireMessage for JobSpec {
    const KIND: MessageKind = MessageKind::JobSpec;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 64 * 1024;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.creator)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if JobId::derive(&self.creator, self.nonce) != self.id {
            return Err(ValidationError::Invalid {
                field: "id",
                reason: "does not match the creator and nonce".into(),
            });
        }
        check_len("inputs", self.inputs.len(), 64)?;
        for i in &self.inputs {
            check_len("inputs.name", i.name.len(), MAX_TEXT)?;
        }
        if let JobKind::Process { argv, .. } = &self.kind {
            check_len("argv", argv.len(), 64)?;
            if argv.is_empty() {
                return Err(ValidationError::Invalid {
                    field: "argv",
                    reason: "a process job needs a command".into(),
                });
            }
            for a in argv {
                check_len("argv item", a.len(), 4096)?;
            }
        }
        if let Some(v) = &self.requirements.min_runtime_version {
            check_len("min_runtime_version", v.len(), 64)?;
        }
        crate::verify::check_policy(&self.verification)?;
        let tasks = self.split.task_count();
        if tasks == 0 || tasks > MAX_TASKS_PER_JOB {
            return Err(ValidationError::Invalid {
                field: "split",
                reason: format!("yields {tasks} tasks; expected 1..={MAX_TASKS_PER_JOB}"),
            });
        }
        if let SplitRule::Tiles { cols, rows, .. } = self.split
            && (u32::from(cols) > self.width || u32::from(rows) > self.height)
        {
            return Err(ValidationError::Invalid {
                field: "split",
                reason: format!(
                    "{cols}x{rows} tiles do not fit a {}x{} frame (at most one tile per pixel)",
                    self.width, self.height
                ),
            });
        }
        if self.width == 0 || self.height == 0 || self.width > 16384 || self.height > 16384 {
            return Err(ValidationError::Invalid {
                field: "width/height",
                reason: format!(
                    "{}x{} is outside 1x1..=16384x16384",
                    self.width, self.height
                ),
            });
        }
        Ok(())
    }
}

/// A scheduler's offer of a task to a worker, reserving it until `reserve_until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOffer {
    /// The task.
    pub task: TaskId,
    /// Offering scheduler (must be the signer).
    pub scheduler: NodeId,
    /// The worker offered the task.
    pub worker: NodeId,
    /// Offer attempt number, so a re-offer is distinct.
    pub attempt: u32,
    /// Price, credits.
    pub price: u64,
    /// The offer lapses after this time.
    pub reserve_until_ms: u64,
    /// Task deadline once accepted.
    pub deadline_ms: u64,
}

impl WireMessage for TaskOffer {
    const KIND: MessageKind = MessageKind::TaskOffer;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 1024;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.scheduler)
    }
}

/// A worker's answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAccept {
    /// The task.
    pub task: TaskId,
    /// Answering worker (must be the signer).
    pub worker: NodeId,
    /// The offer attempt answered.
    pub attempt: u32,
    /// True to take the task; false to decline.
    pub accepted: bool,
    /// Why declined (empty if accepted).
    pub reason: String,
}

impl WireMessage for TaskAccept {
    const KIND: MessageKind = MessageKind::TaskAccept;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 1024;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.worker)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        check_len("reason", self.reason.len(), MAX_TEXT)
    }
}

/// A worker's progress report (also its heartbeat for the task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The task.
    pub task: TaskId,
    /// Reporting worker (must be the signer).
    pub worker: NodeId,
    /// The attempt the worker runs.
    pub attempt: u32,
    /// Report sequence number.
    pub seq: u32,
    /// Done so far, per mille.
    pub permille: u16,
    /// When (worker's clock).
    pub at_ms: u64,
}

impl WireMessage for Progress {
    const KIND: MessageKind = MessageKind::Progress;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 512;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.worker)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.permille > 1000 {
            return Err(ValidationError::Invalid {
                field: "permille",
                reason: format!("{} is above 1000", self.permille),
            });
        }
        Ok(())
    }
}

/// Resources a task used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceUsage {
    /// GPU milliseconds.
    pub gpu_ms: u64,
    /// CPU milliseconds.
    pub cpu_ms: u64,
    /// Peak memory, bytes.
    pub peak_mem_bytes: u64,
}

/// A worker's result for a task: where the sealed output is and how to open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub task: TaskId,
    /// Worker (must be the signer).
    pub worker: NodeId,
    /// The attempt.
    pub attempt: u32,
    /// BLAKE3 of the plaintext output.
    pub output_hash: [u8; 32],
    /// Manifest id of the sealed output.
    pub output_manifest: ContentId,
    /// The output's key, wrapped to the creator.
    pub wrapped_key: WrappedKey,
    /// Resources used.
    pub usage: ResourceUsage,
}

impl WireMessage for TaskResult {
    const KIND: MessageKind = MessageKind::TaskResult;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 1024;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.worker)
    }
}

/// A worker's signed receipt for a finished task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The task.
    pub task: TaskId,
    /// Worker (must be the signer).
    pub worker: NodeId,
    /// The job's creator, who countersigns.
    pub creator: NodeId,
    /// Scheduler that assigned the task.
    pub scheduler: NodeId,
    /// Attempt the worker ran.
    pub attempt: u32,
    /// BLAKE3 of the plaintext output.
    pub output_hash: [u8; 32],
    /// Resources used.
    pub usage: ResourceUsage,
    /// Start (worker's clock).
    pub started_at_ms: u64,
    /// End (worker's clock).
    pub finished_at_ms: u64,
    /// Agreed price, credits.
    pub price: u64,
}

impl WireMessage for Receipt {
    const KIND: MessageKind = MessageKind::Receipt;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 512;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.worker)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.finished_at_ms < self.started_at_ms {
            return Err(ValidationError::Invalid {
                field: "finished_at_ms",
                reason: "ends before it starts".into(),
            });
        }
        Ok(())
    }
}

/// A creator's countersignature accepting a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptAcceptance {
    /// The id of the worker-signed receipt ([`crate::signed::Signed::id`]).
    pub receipt_id: [u8; 32],
    /// The creator (must be the signer).
    pub creator: NodeId,
    /// Acceptance time (creator's clock): decides the receipt's epoch.
    pub accepted_at_ms: u64,
}

impl WireMessage for ReceiptAcceptance {
    const KIND: MessageKind = MessageKind::ReceiptAcceptance;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 256;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.creator)
    }
}

/// A ledger peer's signed summary of a closed epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupHeader {
    /// Epoch number.
    pub epoch: u64,
    /// Merkle root of the epoch's sorted receipt ids.
    pub root: [u8; 32],
    /// Number of receipts.
    pub count: u64,
    /// The ledger peer (must be the signer).
    pub ledger: NodeId,
    /// Hash of this ledger's previous header (hash chain), zero for the first.
    pub prev: [u8; 32],
    /// When the epoch was closed (ledger's clock).
    pub closed_at_ms: u64,
}

impl WireMessage for RollupHeader {
    const KIND: MessageKind = MessageKind::RollupHeader;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 256;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.ledger)
    }
}

/// Why a scheduler closed a task attempt without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CloseOutcome {
    /// The worker reported a failure, or its output was refused.
    Failed,
    /// The creator cancelled the job or task.
    Cancelled,
    /// The worker went silent or missed its deadline.
    Lapsed,
}

/// A scheduler's signed statement that an attempt of a task ended without a
/// result: the authority to refund that attempt's escrow (see
/// `crate::ledger`). Only the scheduler that signed the attempt's offer can
/// refund it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskClosed {
    /// The task.
    pub task: TaskId,
    /// The attempt closed.
    pub attempt: u32,
    /// The worker the attempt was offered to.
    pub worker: NodeId,
    /// The scheduler that offered it (must be the signer).
    pub scheduler: NodeId,
    /// Why it closed.
    pub outcome: CloseOutcome,
    /// When (scheduler's clock).
    pub closed_at_ms: u64,
}

impl WireMessage for TaskClosed {
    const KIND: MessageKind = MessageKind::TaskClosed;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 256;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.scheduler)
    }
}

/// New credits, signed by the mint authority a ledger is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mint {
    /// The mint authority (must be the signer).
    pub authority: NodeId,
    /// Who receives the credits.
    pub to: NodeId,
    /// How many credits (at least 1).
    pub amount: u64,
    /// Chosen by the authority so that equal grants are distinct messages.
    pub nonce: u64,
}

impl WireMessage for Mint {
    const KIND: MessageKind = MessageKind::Mint;
    const VERSION: u8 = 1;
    const MAX_BODY: usize = 256;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.authority)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.amount == 0 {
            return Err(ValidationError::Invalid {
                field: "amount",
                reason: "a mint of 0 credits".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Sample messages shared by tests, property tests and the fuzz seed corpus.
    use super::*;

    /// A sample capacity advert by `node`.
    pub(crate) fn capacity(node: NodeId) -> CapacityAdvert {
        CapacityAdvert {
            node,
            seq: 7,
            issued_at_ms: 1_780_000_000_000,
            refresh_ms: 10_000,
            wrap_key: [3; 32],
            roles: vec![Role::Worker, Role::Scheduler],
            cpu_cores: 16,
            cpu_model: "AMD Ryzen 9 7950X".into(),
            ram_bytes: 64 << 30,
            disk_free_bytes: 500 << 30,
            gpus: vec![GpuInfo {
                vendor: GpuVendor::Nvidia,
                model: "RTX 4090".into(),
                vram_bytes: 24 << 30,
            }],
            runtimes: vec![RuntimeInfo {
                kind: RuntimeKind::Builtin,
                version: "1".into(),
            }],
            bench_mfpm: 120_000,
            running_tasks: 1,
            max_tasks: 4,
            price_per_task: 10,
            region: "eu-west".into(),
        }
    }

    /// A sample receipt signed by `worker`.
    pub(crate) fn receipt(worker: NodeId, index: u32) -> Receipt {
        Receipt {
            task: TaskId {
                job: JobId([5; 32]),
                index,
            },
            worker,
            creator: NodeId::from_bytes([6; 32]),
            scheduler: NodeId::from_bytes([8; 32]),
            attempt: 0,
            output_hash: [9; 32],
            usage: ResourceUsage {
                gpu_ms: 12_000,
                cpu_ms: 3_000,
                peak_mem_bytes: 1 << 30,
            },
            started_at_ms: 1_780_000_000_000,
            finished_at_ms: 1_780_000_012_000,
            price: 10,
        }
    }
}

#[cfg(test)]
pub(crate) mod strategies {
    //! proptest strategies for every wire type.
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    pub(crate) fn node_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId::from_bytes)
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        // Includes a two-byte character so UTF-8 handling is exercised; at most
        // 2 * max bytes, within every field bound used below.
        proptest::string::string_regex(&format!("[a-zA-Z0-9 ._é-]{{0,{max}}}")).unwrap()
    }

    pub(crate) fn task_id() -> impl Strategy<Value = TaskId> {
        (any::<[u8; 32]>(), any::<u32>()).prop_map(|(j, index)| TaskId {
            job: JobId(j),
            index,
        })
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Worker),
            Just(Role::Scheduler),
            Just(Role::Ledger),
            Just(Role::Relay)
        ]
    }

    fn vendor() -> impl Strategy<Value = GpuVendor> {
        prop_oneof![
            Just(GpuVendor::Nvidia),
            Just(GpuVendor::Amd),
            Just(GpuVendor::Intel),
            Just(GpuVendor::Apple),
            Just(GpuVendor::Other)
        ]
    }

    fn runtime_kind() -> impl Strategy<Value = RuntimeKind> {
        prop_oneof![
            Just(RuntimeKind::Builtin),
            Just(RuntimeKind::Blender),
            Just(RuntimeKind::Process)
        ]
    }

    pub(crate) fn capacity() -> impl Strategy<Value = CapacityAdvert> {
        (
            (
                node_id(),
                any::<u64>(),
                any::<u64>(),
                any::<[u8; 32]>(),
                vec(role(), 0..4),
            ),
            (any::<u16>(), text(40), any::<u64>(), any::<u64>()),
            vec((vendor(), text(30), any::<u64>()), 0..4),
            vec((runtime_kind(), text(10)), 0..3),
            (
                any::<u64>(),
                any::<u16>(),
                any::<u16>(),
                any::<u64>(),
                text(20),
                1..=MAX_ADVERT_REFRESH_MS,
            ),
        )
            .prop_map(|(a, b, gpus, runtimes, c)| CapacityAdvert {
                node: a.0,
                seq: a.1,
                issued_at_ms: a.2,
                refresh_ms: c.5,
                wrap_key: a.3,
                roles: a.4,
                cpu_cores: b.0,
                cpu_model: b.1,
                ram_bytes: b.2,
                disk_free_bytes: b.3,
                gpus: gpus
                    .into_iter()
                    .map(|(vendor, model, vram_bytes)| GpuInfo {
                        vendor,
                        model,
                        vram_bytes,
                    })
                    .collect(),
                runtimes: runtimes
                    .into_iter()
                    .map(|(kind, version)| RuntimeInfo { kind, version })
                    .collect(),
                bench_mfpm: c.0,
                running_tasks: c.1,
                max_tasks: c.2,
                price_per_task: c.3,
                region: c.4,
            })
    }

    fn job_kind() -> impl Strategy<Value = JobKind> {
        prop_oneof![
            Just(JobKind::Builtin),
            prop_oneof![Just(BlenderEngine::Cycles), Just(BlenderEngine::Eevee)]
                .prop_map(|engine| JobKind::Blender { engine }),
            (vec(text(12), 1..5), any::<bool>()).prop_map(|(argv, deterministic)| {
                JobKind::Process {
                    argv,
                    deterministic,
                }
            }),
        ]
    }

    fn split() -> impl Strategy<Value = SplitRule> {
        prop_oneof![
            (0u32..10_000, 0u32..500, 1u32..5).prop_map(|(start, len, step)| SplitRule::Frames {
                start,
                end: start + len,
                step
            }),
            (any::<u32>(), 1u16..20, 1u16..20).prop_map(|(frame, cols, rows)| SplitRule::Tiles {
                frame,
                cols,
                rows
            }),
        ]
    }

    fn verification() -> impl Strategy<Value = VerificationPolicy> {
        prop_oneof![
            Just(VerificationPolicy::None),
            (0u16..=1000, 2u8..=crate::verify::MAX_QUORUM_K)
                .prop_map(|(sample_permille, k)| VerificationPolicy::Quorum { sample_permille, k }),
            (0u16..=1000, 1u16..=1000, 0u16..=1000).prop_map(|(a, b, c)| {
                VerificationPolicy::SpotCheck {
                    sample_permille: a,
                    crop_permille: b,
                    min_similarity_milli: c,
                }
            }),
        ]
    }

    pub(crate) fn job_spec() -> impl Strategy<Value = JobSpec> {
        (
            (node_id(), any::<u64>(), any::<u64>(), job_kind()),
            vec((text(20), any::<[u8; 32]>(), any::<u64>()), 0..4),
            (
                proptest::option::of(vendor()),
                any::<u64>(),
                any::<u64>(),
                proptest::option::of(text(8)),
            ),
            (
                split(),
                20u32..8000,
                20u32..8000,
                any::<bool>(),
                any::<u64>(),
                verification(),
                any::<u64>(),
            ),
        )
            .prop_map(|(a, inputs, req, rest)| JobSpec {
                id: JobId::derive(&a.0, a.1),
                creator: a.0,
                nonce: a.1,
                created_at_ms: a.2,
                kind: a.3,
                inputs: inputs
                    .into_iter()
                    .map(|(name, m, size)| InputRef {
                        name,
                        manifest: ContentId(m),
                        size,
                    })
                    .collect(),
                requirements: Requirements {
                    gpu_vendor: req.0,
                    min_vram_bytes: req.1,
                    min_ram_bytes: req.2,
                    min_runtime_version: req.3,
                },
                split: rest.0,
                width: rest.1,
                height: rest.2,
                format: if rest.3 {
                    ImageFormat::Png
                } else {
                    ImageFormat::Exr
                },
                max_price_per_task: rest.4,
                verification: rest.5,
                deadline_ms: rest.6,
            })
    }

    pub(crate) fn offer() -> impl Strategy<Value = TaskOffer> {
        (
            task_id(),
            node_id(),
            node_id(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(task, scheduler, worker, attempt, price, reserve_until_ms, deadline_ms)| {
                    TaskOffer {
                        task,
                        scheduler,
                        worker,
                        attempt,
                        price,
                        reserve_until_ms,
                        deadline_ms,
                    }
                },
            )
    }

    pub(crate) fn accept() -> impl Strategy<Value = TaskAccept> {
        (task_id(), node_id(), any::<u32>(), any::<bool>(), text(40)).prop_map(
            |(task, worker, attempt, accepted, reason)| TaskAccept {
                task,
                worker,
                attempt,
                accepted,
                reason,
            },
        )
    }

    pub(crate) fn progress() -> impl Strategy<Value = Progress> {
        (
            task_id(),
            node_id(),
            any::<u32>(),
            any::<u32>(),
            0u16..=1000,
            any::<u64>(),
        )
            .prop_map(|(task, worker, attempt, seq, permille, at_ms)| Progress {
                task,
                worker,
                attempt,
                seq,
                permille,
                at_ms,
            })
    }

    fn usage() -> impl Strategy<Value = ResourceUsage> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(gpu_ms, cpu_ms, peak_mem_bytes)| {
            ResourceUsage {
                gpu_ms,
                cpu_ms,
                peak_mem_bytes,
            }
        })
    }

    pub(crate) fn result() -> impl Strategy<Value = TaskResult> {
        (
            task_id(),
            node_id(),
            any::<u32>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 16]>()),
            usage(),
        )
            .prop_map(
                |(task, worker, attempt, output_hash, m, w, usage)| TaskResult {
                    task,
                    worker,
                    attempt,
                    output_hash,
                    output_manifest: ContentId(m),
                    wrapped_key: WrappedKey {
                        ephemeral: w.0,
                        ciphertext: w.1,
                        tag: w.2,
                    },
                    usage,
                },
            )
    }

    pub(crate) fn receipt() -> impl Strategy<Value = Receipt> {
        (
            (
                task_id(),
                node_id(),
                node_id(),
                node_id(),
                any::<u32>(),
                any::<[u8; 32]>(),
            ),
            (
                usage(),
                0u64..u64::MAX / 2,
                0u64..u64::MAX / 2,
                any::<u64>(),
            ),
        )
            .prop_map(|(a, b)| Receipt {
                task: a.0,
                worker: a.1,
                creator: a.2,
                scheduler: a.3,
                attempt: a.4,
                output_hash: a.5,
                usage: b.0,
                started_at_ms: b.1,
                finished_at_ms: b.1 + b.2,
                price: b.3,
            })
    }

    pub(crate) fn acceptance() -> impl Strategy<Value = ReceiptAcceptance> {
        (any::<[u8; 32]>(), node_id(), any::<u64>()).prop_map(
            |(receipt_id, creator, accepted_at_ms)| ReceiptAcceptance {
                receipt_id,
                creator,
                accepted_at_ms,
            },
        )
    }

    pub(crate) fn task_closed() -> impl Strategy<Value = TaskClosed> {
        (
            task_id(),
            any::<u32>(),
            node_id(),
            node_id(),
            prop_oneof![
                Just(CloseOutcome::Failed),
                Just(CloseOutcome::Cancelled),
                Just(CloseOutcome::Lapsed)
            ],
            any::<u64>(),
        )
            .prop_map(
                |(task, attempt, worker, scheduler, outcome, closed_at_ms)| TaskClosed {
                    task,
                    attempt,
                    worker,
                    scheduler,
                    outcome,
                    closed_at_ms,
                },
            )
    }

    pub(crate) fn mint() -> impl Strategy<Value = Mint> {
        (node_id(), node_id(), 1..=u64::MAX, any::<u64>()).prop_map(
            |(authority, to, amount, nonce)| Mint {
                authority,
                to,
                amount,
                nonce,
            },
        )
    }

    pub(crate) fn rollup() -> impl Strategy<Value = RollupHeader> {
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            node_id(),
            any::<[u8; 32]>(),
            any::<u64>(),
        )
            .prop_map(
                |(epoch, root, count, ledger, prev, closed_at_ms)| RollupHeader {
                    epoch,
                    root,
                    count,
                    ledger,
                    prev,
                    closed_at_ms,
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::strategies::*;
    use super::*;
    use crate::codec;
    use proptest::prelude::*;

    /// Body round trip through the codec, within the type's size limit.
    fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(
        value: &T,
    ) -> Result<(), TestCaseError> {
        let bytes = codec::encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            bytes.len() <= T::MAX_BODY,
            "{} bytes over the limit",
            bytes.len()
        );
        let back: T =
            codec::decode(&bytes, T::MAX_BODY).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, value);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test] fn capacity_round_trip(v in capacity()) { round_trip(&v)?; prop_assert!(v.validate().is_ok()); }
        #[test] fn job_spec_round_trip(v in job_spec()) { round_trip(&v)?; prop_assert!(v.validate().is_ok()); }
        #[test] fn offer_round_trip(v in offer()) { round_trip(&v)?; }
        #[test] fn accept_round_trip(v in accept()) { round_trip(&v)?; }
        #[test] fn progress_round_trip(v in progress()) { round_trip(&v)?; prop_assert!(v.validate().is_ok()); }
        #[test] fn result_round_trip(v in result()) { round_trip(&v)?; }
        #[test] fn receipt_round_trip(v in receipt()) { round_trip(&v)?; prop_assert!(v.validate().is_ok()); }
        #[test] fn acceptance_round_trip(v in acceptance()) { round_trip(&v)?; }
        #[test] fn rollup_round_trip(v in rollup()) { round_trip(&v)?; }
        #[test] fn task_closed_round_trip(v in task_closed()) { round_trip(&v)?; }
        #[test] fn mint_round_trip(v in mint()) { round_trip(&v)?; prop_assert!(v.validate().is_ok()); }
    }

    #[test]
    fn job_id_must_match_creator_and_nonce() {
        let mut spec = proptest::strategy::ValueTree::current(
            &job_spec()
                .new_tree(&mut proptest::test_runner::TestRunner::deterministic())
                .unwrap(),
        );
        assert!(spec.validate().is_ok());
        spec.nonce ^= 1;
        assert!(matches!(
            spec.validate(),
            Err(ValidationError::Invalid { field: "id", .. })
        ));
    }

    /// A refresh period of 0 (an entry that never knows when to expire) or
    /// beyond an hour is malformed; the bounds themselves are accepted.
    #[test]
    fn advert_refresh_bounds() {
        let mut a = samples::capacity(NodeId::from_bytes([1; 32]));
        for ok in [1, 10_000, MAX_ADVERT_REFRESH_MS] {
            a.refresh_ms = ok;
            assert!(a.validate().is_ok(), "{ok}");
        }
        for bad in [0, MAX_ADVERT_REFRESH_MS + 1, u32::MAX] {
            a.refresh_ms = bad;
            assert!(
                matches!(
                    a.validate(),
                    Err(ValidationError::Invalid {
                        field: "refresh_ms",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert_eq!(" Scheduler ".parse::<Role>().unwrap(), Role::Scheduler);
        assert!("boss".parse::<Role>().is_err());
    }

    #[test]
    fn split_counts() {
        assert_eq!(
            SplitRule::Frames {
                start: 1,
                end: 240,
                step: 1
            }
            .task_count(),
            240
        );
        assert_eq!(
            SplitRule::Frames {
                start: 1,
                end: 10,
                step: 3
            }
            .task_count(),
            4
        );
        assert_eq!(
            SplitRule::Frames {
                start: 5,
                end: 1,
                step: 1
            }
            .task_count(),
            0
        );
        assert_eq!(
            SplitRule::Frames {
                start: 1,
                end: 5,
                step: 0
            }
            .task_count(),
            0
        );
        assert_eq!(
            SplitRule::Tiles {
                frame: 1,
                cols: 4,
                rows: 3
            }
            .task_count(),
            12
        );
    }

    #[test]
    fn field_bounds_enforced() {
        let mut c = samples::capacity(NodeId::from_bytes([1; 32]));
        c.cpu_model = "x".repeat(MAX_TEXT + 1);
        assert!(matches!(
            c.validate(),
            Err(ValidationError::TooLong {
                field: "cpu_model",
                ..
            })
        ));
        let mut p = progress_sample();
        p.permille = 1001;
        assert!(p.validate().is_err());
    }

    fn progress_sample() -> Progress {
        Progress {
            task: TaskId {
                job: JobId([1; 32]),
                index: 0,
            },
            worker: NodeId::from_bytes([2; 32]),
            attempt: 0,
            seq: 0,
            permille: 10,
            at_ms: 0,
        }
    }

    #[test]
    fn versions_and_kinds_are_distinct() {
        let kinds = [
            CapacityAdvert::KIND,
            JobSpec::KIND,
            TaskOffer::KIND,
            TaskAccept::KIND,
            Progress::KIND,
            TaskResult::KIND,
            Receipt::KIND,
            ReceiptAcceptance::KIND,
            RollupHeader::KIND,
            TaskClosed::KIND,
            Mint::KIND,
            crate::reputation::ReputationReport::KIND,
        ];
        let set: std::collections::BTreeSet<_> = kinds.iter().collect();
        assert_eq!(set.len(), kinds.len());
    }
}
