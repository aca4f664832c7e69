//! The creator's side: jobs submitted from this node.
//!
//! Submit: the request is checked ([`super::submit`]), each input sealed
//! with a fresh job key into the content store, the spec signed, the job
//! written to the `jobs` tree, then sent to the HRW-best scheduler this node
//! knows (capacity adverts with the scheduler role, or a Kademlia lookup),
//! falling down the ranking when one refuses or is unreachable.
//!
//! Results: the scheduler forwards each task's result bundle as a `Done`
//! event (the worker keeps it too, for [`RpcRequest::ResultOf`]). The
//! [`CreatorJob`] machine checks it; the output is fetched from the worker,
//! verified chunk by chunk, opened, checked as an image of the right size,
//! and its hash compared with the signed one; only then is the receipt
//! countersigned, the acceptance stored and flushed, and the frame moved
//! into `<data_dir>/results/<job id>/`.
//!
//! A job the node has not heard about for [`QUIET`] is queried from its
//! scheduler (or, when that one is gone, from every live scheduler), and a
//! result the creator missed is asked from its worker. So a creator that was
//! offline, or restarted, catches up.
//!
//! Decision: a result whose output fails the creator's checks (hash, image)
//! is refused and the next candidate tried.
//!
//! Verified tasks (`docs/trust.md`): `Vote`s are held unfetched, `Verified`
//! is re-checked by the machine before the winner is fetched, `Rejected`
//! results are never countersigned, and a spot-check `Compare` is answered
//! by [`super::compare`] (both outputs fetched and opened, decoded, the
//! metric computed, `CreatorJob::compared`, `Compared` to the scheduler).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rendertrust_protocol::codec;
use rendertrust_protocol::creator::{
    CheckedResult, CreatorJob, Decision, ResultFrames, TaskState, VoteDecision,
};
use rendertrust_protocol::hrw;
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::rpc::{ErrorCode, RpcRequest, RpcResponse};
use rendertrust_protocol::scheduler::{JobEvent, JobRole, JobView, TaskStatus};
use rendertrust_protocol::seal::{self, JobKey, WrapSecret};
use rendertrust_protocol::signed::Signed;
use rendertrust_protocol::task::{
    input_context, job_key_context, output_key_context, task_geometry,
};
use rendertrust_protocol::wire::{
    ImageFormat, InputRef, JobId, JobKind, JobSpec, Role, TaskId, TaskOffer,
};
use serde::{Deserialize, Serialize};

use super::handle::JobsError;
use super::service::{Internal, JobService};
use super::submit::{PreparedJob, SubmitRequest};
use super::transfer::PeerSource;
use super::view::{
    Counts, JobDetail, JobState, JobSummary, JobUpdate, ResultView, ResultsView, SubmitView,
    TaskStateView, TaskView, output_file_name,
};
use crate::content::{
    ContentStore, FetchOptions, fetch_content, open_from_store, seal_file_into_store,
};
use crate::net::NetHandle;
use crate::store::Store;

/// A job unheard of for this long is queried from its scheduler.
pub(crate) const QUIET: Duration = Duration::from_secs(10);
/// Tries to fetch one result before moving to the next candidate.
pub(crate) const FETCH_TRIES: u32 = 3;
/// Version of the stored job record.
const RECORD_VERSION: u8 = 1;

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, JobsError>>;

/// Where a task is, beyond what the creator machine knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    /// Waiting for a worker.
    #[default]
    Queued,
    /// Offered to a worker.
    Offered,
    /// A worker runs it.
    Running,
}

/// What the scheduler told us of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskInfo {
    pub(crate) phase: Phase,
    pub(crate) worker: Option<NodeId>,
    pub(crate) attempt: u32,
    pub(crate) permille: u16,
    pub(crate) reason: Option<String>,
}

/// An accepted output on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutputFile {
    pub(crate) name: String,
    pub(crate) size: u64,
}

/// A job this node created (the `jobs` tree stores it).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CreatorEntry {
    pub(crate) version: u8,
    pub(crate) spec_frame: Vec<u8>,
    pub(crate) job_key: [u8; 32],
    pub(crate) owner: Option<NodeId>,
    pub(crate) machine: CreatorJob,
    pub(crate) info: Vec<TaskInfo>,
    pub(crate) submitted: bool,
    /// Why the job waits (from the scheduler) or why it could not start.
    pub(crate) reason: Option<String>,
    /// Set when no scheduler took the job.
    pub(crate) failed: Option<String>,
    pub(crate) created_at_ms: u64,
    pub(crate) acceptances: BTreeMap<u32, Vec<u8>>,
    pub(crate) files: BTreeMap<u32, OutputFile>,
    #[serde(skip)]
    pub(crate) last_heard_ms: u64,
    #[serde(skip)]
    pub(crate) query_in_flight: bool,
    #[serde(skip)]
    pub(crate) fetch_tries: BTreeMap<u32, u32>,
    #[serde(skip)]
    pub(crate) pending_reply: Option<Reply<SubmitView>>,
}

/// A job whose inputs are sealed, ready to submit.
pub(crate) struct Sealed {
    spec: JobSpec,
    spec_frame: Vec<u8>,
    key: [u8; 32],
    candidates: Vec<NodeId>,
    reply: Reply<SubmitView>,
}

/// The end of a result fetch.
pub(crate) struct Fetched {
    job: JobId,
    task: u32,
    attempt: u32,
    /// Plaintext hash and the incoming file, or why not.
    result: Result<([u8; 32], PathBuf, u64), String>,
    /// Whether the failure is the worker's fault (bad output) rather than the network's.
    bad_output: bool,
}

/// Reads every stored job.
pub(crate) fn load_all(store: &Store) -> Result<BTreeMap<JobId, CreatorEntry>, String> {
    let tree = store.tree("jobs").map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for item in tree.iter() {
        let (k, v) = item.map_err(|e| e.to_string())?;
        match codec::decode_local::<CreatorEntry>(&v) {
            Ok(e) if e.version == RECORD_VERSION => {
                out.insert(e.machine.spec().id, e);
            }
            Ok(e) => tracing::warn!(
                version = e.version,
                "skipping a job record of another version"
            ),
            Err(err) => {
                tracing::warn!(key = %hex::encode(&k), error = %err, "skipping an unreadable job record")
            }
        }
    }
    Ok(out)
}

/// Writes one job.
pub(crate) fn save(store: &Store, entry: &CreatorEntry) -> Result<(), String> {
    let bytes = codec::encode_local(entry).map_err(|e| e.to_string())?;
    let tree = store.tree("jobs").map_err(|e| e.to_string())?;
    tree.insert(entry.machine.spec().id.0, bytes)
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn kind_name(k: &JobKind) -> &'static str {
    match k {
        JobKind::Builtin => "builtin",
        JobKind::Blender { .. } => "blender",
        JobKind::Process { .. } => "process",
    }
}

fn ext(spec: &JobSpec) -> &'static str {
    match (&spec.kind, spec.format) {
        (JobKind::Process { .. }, _) => "out",
        (_, ImageFormat::Png) => "png",
        (_, ImageFormat::Exr) => "exr",
    }
}

impl CreatorEntry {
    fn spec(&self) -> &JobSpec {
        self.machine.spec()
    }

    fn task_view(&self, index: u32) -> TaskView {
        let spec = self.spec();
        let g = task_geometry(&spec.split, spec.width, spec.height, index);
        let region = g.map_or([0, 0, spec.width, spec.height], |g| {
            [g.region.x, g.region.y, g.region.w, g.region.h]
        });
        let info = self.info.get(index as usize).cloned().unwrap_or_default();
        let mut v = TaskView {
            index,
            frame: g.map_or(0, |g| g.frame),
            region,
            state: match info.phase {
                Phase::Queued => TaskStateView::Queued,
                Phase::Offered => TaskStateView::Offered,
                Phase::Running => TaskStateView::Running,
            },
            worker: info.worker.map(|w| w.to_string()),
            attempt: info.attempt,
            progress_permille: info.permille,
            output_hash: None,
            receipt_id: None,
            reason: info.reason,
        };
        match self.machine.tasks().get(index as usize) {
            Some(TaskState::Fetching { fetching, .. }) => {
                v.state = TaskStateView::Fetching;
                v.progress_permille = 1000;
                v.worker = Some(fetching.result.worker.to_string());
                v.attempt = fetching.result.attempt;
            }
            Some(TaskState::Accepted { result, .. }) => {
                v.state = TaskStateView::Accepted;
                v.progress_permille = 1000;
                v.worker = Some(result.result.worker.to_string());
                v.attempt = result.result.attempt;
                v.output_hash = Some(hex::encode(result.result.output_hash));
                v.receipt_id = Some(hex::encode(result.receipt_id));
                v.reason = None;
            }
            Some(TaskState::Failed { reason }) => {
                v.state = TaskStateView::Failed;
                v.reason = Some(reason.clone());
            }
            _ => {}
        }
        v
    }

    fn summary(&self) -> JobSummary {
        let spec = self.spec();
        let mut counts = Counts::default();
        for i in 0..self.info.len() {
            match self.task_view(i as u32).state {
                TaskStateView::Queued | TaskStateView::Offered => counts.queued += 1,
                TaskStateView::Running => counts.running += 1,
                TaskStateView::Fetching => counts.fetching += 1,
                TaskStateView::Accepted => counts.accepted += 1,
                TaskStateView::Failed => counts.failed += 1,
            }
        }
        let tasks = self.info.len() as u64;
        let state = if self.machine.is_cancelled() {
            JobState::Cancelled
        } else if self.failed.is_some() {
            JobState::Failed
        } else if counts.accepted == tasks {
            JobState::Done
        } else if counts.accepted + counts.failed == tasks {
            JobState::Failed
        } else if !self.submitted {
            JobState::Submitting
        } else if counts.running + counts.fetching + counts.accepted > 0 {
            JobState::Running
        } else {
            JobState::Queued
        };
        let reason = self.failed.clone().or_else(|| match state {
            JobState::Queued | JobState::Running => self.reason.clone(),
            _ => None,
        });
        JobSummary {
            id: hex::encode(spec.id.0),
            kind: kind_name(&spec.kind).to_owned(),
            state,
            tasks,
            counts,
            reason,
            scheduler: self.owner.map(|o| o.to_string()),
            created_at_ms: self.created_at_ms,
            width: spec.width,
            height: spec.height,
        }
    }

    fn is_over(&self) -> bool {
        self.summary().state.is_final()
    }
}

/// What a result fetch needs.
pub(crate) struct FetchCtx {
    pub(crate) net: NetHandle,
    pub(crate) content: ContentStore,
    pub(crate) wrap: Arc<WrapSecret>,
    pub(crate) incoming: PathBuf,
    pub(crate) internal: tokio::sync::mpsc::Sender<Internal>,
}

impl JobService {
    pub(crate) fn cmd_submit(&mut self, req: SubmitRequest, reply: Reply<SubmitView>, now_ms: u64) {
        let prepared = match req.prepare() {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(JobsError::Refused(e.0)));
                return;
            }
        };
        let nonce = rand_core::Rng::next_u64(&mut self.rng);
        let key = JobKey::generate(&mut self.rng);
        let ctx = (
            self.content.clone(),
            self.key.clone(),
            self.data_dir.join("submit").join(format!("{nonce:016x}")),
            self.net.clone(),
            self.internal.clone(),
            self.live_schedulers(),
        );
        tokio::spawn(async move {
            let (content, node_key, tmp, net, internal, mut candidates) = ctx;
            let me = node_key.node_id();
            let key_bytes = *key.as_bytes();
            let sealed = tokio::task::spawn_blocking(move || {
                seal_inputs(
                    &content, &prepared, &key, me, nonce, now_ms, &tmp, &node_key,
                )
            })
            .await;
            let (spec, spec_frame) = match sealed {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let _ = reply.send(Err(JobsError::Refused(e)));
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(JobsError::Internal(e.to_string())));
                    return;
                }
            };
            if candidates.is_empty() {
                candidates = net.find_role(Role::Scheduler).await.unwrap_or_default();
            }
            if candidates.is_empty() {
                let _ = reply.send(Err(JobsError::Unavailable(
                    "no scheduler is known yet: wait until this node has joined the mesh (rendertrust mesh roles scheduler), or start a node with --roles scheduler".into(),
                )));
                return;
            }
            let candidates = hrw::rank(hrw::job_key(&spec.id), candidates.iter());
            let _ = internal
                .send(Internal::Sealed(Box::new(Sealed {
                    spec,
                    spec_frame,
                    key: key_bytes,
                    candidates,
                    reply,
                })))
                .await;
        });
    }

    pub(crate) fn on_sealed(&mut self, s: Sealed, now_ms: u64) {
        let id = s.spec.id;
        let tasks = usize::try_from(s.spec.split.task_count()).unwrap_or(0);
        let Some(first) = s.candidates.first().copied() else {
            return;
        };
        // The owner and its likely successors may sign offers for the job;
        // a later owner is trusted when it announces a takeover.
        let mut machine = CreatorJob::new(s.spec, first);
        for c in s.candidates.iter().skip(1).take(2) {
            machine.trust_scheduler(*c);
        }
        let entry = CreatorEntry {
            version: RECORD_VERSION,
            spec_frame: s.spec_frame.clone(),
            job_key: s.key,
            owner: None,
            machine,
            info: vec![TaskInfo::default(); tasks],
            submitted: false,
            reason: None,
            failed: None,
            created_at_ms: now_ms,
            acceptances: BTreeMap::new(),
            files: BTreeMap::new(),
            last_heard_ms: now_ms,
            query_in_flight: false,
            fetch_tries: BTreeMap::new(),
            pending_reply: Some(s.reply),
        };
        // Stored before it is sent: a crash after this resubmits it.
        if let Err(e) = save(&self.store, &entry) {
            if let Some(r) = entry.pending_reply {
                let _ = r.send(Err(JobsError::Internal(format!("storing the job: {e}"))));
            }
            return;
        }
        let _ = self.store.flush();
        self.jobs.insert(id, entry);
        tracing::info!(job = %hex::encode(id.0), tasks, "job sealed; submitting");
        self.send_submit(id, s.spec_frame, s.candidates);
    }

    fn send_submit(&mut self, job: JobId, spec_frame: Vec<u8>, mut candidates: Vec<NodeId>) {
        if candidates.is_empty() {
            return;
        }
        let scheduler = candidates.remove(0);
        let rpc = self.rpc.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let request = RpcRequest::Submit { spec: spec_frame };
            let result = match rpc.call(scheduler, &request, 2).await {
                Ok(RpcResponse::Ok) => Ok(()),
                Ok(RpcResponse::Error { message, .. }) => Err(message),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            };
            let _ = internal
                .send(Internal::SubmitAnswer {
                    job,
                    scheduler,
                    result,
                    remaining: candidates,
                })
                .await;
        });
    }

    pub(crate) fn on_submit_answer(
        &mut self,
        job: JobId,
        scheduler: NodeId,
        result: Result<(), String>,
        remaining: Vec<NodeId>,
        now_ms: u64,
    ) {
        let Some(entry) = self.jobs.get_mut(&job) else {
            return;
        };
        match result {
            Ok(()) => {
                entry.submitted = true;
                entry.owner = Some(scheduler);
                entry.machine.trust_scheduler(scheduler);
                entry.last_heard_ms = now_ms;
                tracing::info!(job = %hex::encode(job.0), %scheduler, "job submitted");
                if let Some(r) = entry.pending_reply.take() {
                    let _ = r.send(Ok(SubmitView {
                        id: hex::encode(job.0),
                        tasks: entry.info.len() as u64,
                        scheduler: scheduler.to_string(),
                    }));
                }
            }
            Err(e) if !remaining.is_empty() => {
                tracing::warn!(job = %hex::encode(job.0), %scheduler, error = %e, "scheduler did not take the job; trying the next");
                let frame = entry.spec_frame.clone();
                self.send_submit(job, frame, remaining);
                return;
            }
            Err(e) => {
                let why = format!("no scheduler took the job; the last ({scheduler}) said: {e}");
                tracing::warn!(job = %hex::encode(job.0), "{why}");
                if let Some(r) = entry.pending_reply.take() {
                    let _ = r.send(Err(JobsError::Unavailable(why.clone())));
                }
                entry.failed = Some(why);
            }
        }
        self.dirty_jobs.insert(job);
        self.job_changed(&job, None);
    }

    pub(crate) fn rpc_key(&mut self, peer: NodeId, offer: &[u8], now_ms: u64) -> RpcResponse {
        let parsed = match Signed::<TaskOffer>::from_slice(offer).and_then(|f| f.verify()) {
            Ok(o) => o,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("offer: {e}")),
        };
        let Some(entry) = self.jobs.get(&parsed.task.job) else {
            return RpcResponse::error(ErrorCode::NotFound, "this node did not create that job");
        };
        if let Err(e) = entry.machine.authorize_key(offer, peer, now_ms) {
            return RpcResponse::error(ErrorCode::Forbidden, e.to_string());
        }
        let Some(recipient) = self.wrap_key_of(&peer) else {
            return RpcResponse::error(
                ErrorCode::Busy,
                "no capacity advert of yours has reached this node yet; retry shortly",
            );
        };
        let key = JobKey::from_bytes(entry.job_key);
        match seal::wrap_key(
            &key,
            &recipient,
            &job_key_context(&parsed.task.job),
            &mut self.rng,
        ) {
            Ok(wrapped) => RpcResponse::Key { wrapped },
            Err(e) => RpcResponse::error(ErrorCode::Invalid, format!("cannot wrap the key: {e}")),
        }
    }

    pub(crate) fn rpc_event(
        &mut self,
        peer: NodeId,
        job: JobId,
        event: &[u8],
        now_ms: u64,
    ) -> RpcResponse {
        let event: JobEvent = match codec::decode(event, 64 << 10) {
            Ok(e) => e,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("job event: {e}")),
        };
        if !self.jobs.contains_key(&job) {
            return RpcResponse::error(ErrorCode::NotFound, "this node did not create that job");
        }
        self.on_job_event(peer, job, event, now_ms);
        RpcResponse::Ok
    }

    /// An event about one of our jobs from a scheduler.
    pub(crate) fn on_job_event(&mut self, from: NodeId, job: JobId, event: JobEvent, now_ms: u64) {
        let live = self.live_schedulers();
        let Some(entry) = self.jobs.get_mut(&job) else {
            return;
        };
        if let JobEvent::TakenOver { by } = &event
            && *by == from
            && live.contains(by)
        {
            entry.machine.trust_scheduler(*by);
            entry.owner = Some(*by);
            tracing::info!(job = %hex::encode(job.0), scheduler = %by, "job taken over");
        }
        if !entry.machine.schedulers().contains(&from) {
            tracing::debug!(%from, "event from a scheduler that does not hold the job; ignored");
            return;
        }
        entry.last_heard_ms = now_ms;
        let mut task_changed = None;
        match event {
            JobEvent::Queued { reason } => entry.reason = Some(reason.to_string()),
            JobEvent::Offered {
                task,
                worker,
                attempt,
            } => {
                if let Some(i) = entry.info.get_mut(task as usize) {
                    *i = TaskInfo {
                        phase: Phase::Offered,
                        worker: Some(worker),
                        attempt,
                        permille: 0,
                        reason: None,
                    };
                    task_changed = Some(task);
                }
            }
            JobEvent::Assigned {
                task,
                worker,
                attempt,
            } => {
                if let Some(i) = entry.info.get_mut(task as usize) {
                    *i = TaskInfo {
                        phase: Phase::Running,
                        worker: Some(worker),
                        attempt,
                        permille: 0,
                        reason: None,
                    };
                    task_changed = Some(task);
                }
                entry.reason = None;
            }
            JobEvent::Progress { task, permille } => {
                if let Some(i) = entry.info.get_mut(task as usize) {
                    i.phase = Phase::Running;
                    i.permille = permille;
                    task_changed = Some(task);
                }
            }
            JobEvent::Done { task, frames, .. } => {
                task_changed = Some(task);
                self.creator_result(job, frames, now_ms);
            }
            JobEvent::Failed { task, reason, .. } => {
                entry.machine.task_failed(task, reason.to_string());
                task_changed = Some(task);
            }
            JobEvent::JobFinished { .. } | JobEvent::TakenOver { .. } => {}
            // Verified tasks (docs/trust.md): results are held until the
            // verdict, which the machine re-checks before anything is fetched.
            JobEvent::Vote { task, frames, .. } => {
                task_changed = Some(task);
                match entry.machine.vote(frames) {
                    Ok(VoteDecision::Fetch(checked)) => self.start_fetch(job, *checked),
                    Ok(VoteDecision::Held | VoteDecision::Duplicate) => {}
                    Err(e) => {
                        tracing::warn!(job = %hex::encode(job.0), error = %e, "vote refused")
                    }
                }
            }
            JobEvent::Verified { task, attempt, .. } => {
                task_changed = Some(task);
                match entry.machine.verified(task, attempt) {
                    Ok(Some(checked)) => self.start_fetch(job, checked),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(job = %hex::encode(job.0), task, error = %e, "verdict refused")
                    }
                }
            }
            JobEvent::Rejected { task, attempt, .. } => {
                entry.machine.rejected(task, attempt);
                task_changed = Some(task);
            }
            JobEvent::Compare {
                task,
                crop,
                reference_attempt,
                check_attempt,
                cross,
            } => {
                match entry
                    .machine
                    .compare(task, crop, reference_attempt, check_attempt, cross)
                {
                    Ok(request) => self.start_compare(from, job, task, cross, request),
                    Err(e) => {
                        tracing::warn!(job = %hex::encode(job.0), task, error = %e, "comparison refused")
                    }
                }
            }
        }
        self.dirty_jobs.insert(job);
        self.job_changed(&job, task_changed);
    }

    /// A result bundle for one of our jobs (from an event, a query, or a worker).
    fn creator_result(&mut self, job: JobId, frames: ResultFrames, _now_ms: u64) {
        let Some(entry) = self.jobs.get_mut(&job) else {
            return;
        };
        match entry.machine.check_result(frames) {
            Ok(Decision::Fetch(checked)) => self.start_fetch(job, *checked),
            Ok(Decision::Queued | Decision::Duplicate) => {}
            Err(e) => tracing::warn!(job = %hex::encode(job.0), error = %e, "result refused"),
        }
    }

    pub(crate) fn fetch_ctx(&self) -> FetchCtx {
        FetchCtx {
            net: self.net.clone(),
            content: self.content.clone(),
            wrap: self.wrap.clone(),
            incoming: self.data_dir.join("results").join(".incoming"),
            internal: self.internal.clone(),
        }
    }

    fn start_fetch(&mut self, job: JobId, checked: CheckedResult) {
        let Some(entry) = self.jobs.get(&job) else {
            return;
        };
        let spec = entry.spec().clone();
        let ctx = self.fetch_ctx();
        tracing::debug!(job = %hex::encode(job.0), task = checked.result.task.index, worker = %checked.result.worker, "fetching a result");
        tokio::spawn(async move {
            let internal = ctx.internal.clone();
            let fetched = fetch_result(ctx, spec, checked).await;
            let _ = internal.send(Internal::Fetched(Box::new(fetched))).await;
        });
    }

    pub(crate) fn on_fetched(&mut self, f: Fetched, now_ms: u64) {
        let job = f.job;
        let results_dir = self.results_dir(&job);
        let retry_ctx = self.fetch_ctx();
        let internal = self.internal.clone();
        let Some(entry) = self.jobs.get_mut(&job) else {
            return;
        };
        let outcome = match f.result {
            Ok((hash, incoming, size)) => {
                match entry.machine.fetched(f.task, f.attempt, hash, now_ms) {
                    Ok(acceptance) => Ok((acceptance, incoming, size)),
                    Err(e) => {
                        let _ = std::fs::remove_file(&incoming);
                        Err((e.to_string(), true))
                    }
                }
            }
            Err(e) => Err((e, f.bad_output)),
        };
        match outcome {
            Ok((acceptance, incoming, size)) => {
                let spec = entry.spec();
                let g = task_geometry(&spec.split, spec.width, spec.height, f.task);
                let name = g.map_or_else(
                    || format!("task_{:05}.{}", f.task, ext(spec)),
                    |g| {
                        output_file_name(
                            g.frame,
                            [g.region.x, g.region.y, g.region.w, g.region.h],
                            (spec.width, spec.height),
                            ext(spec),
                        )
                    },
                );
                let signed = match Signed::sign(&self.key, &acceptance) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot countersign a receipt");
                        return;
                    }
                };
                if let Err(e) = std::fs::create_dir_all(&results_dir)
                    .and_then(|()| std::fs::rename(&incoming, results_dir.join(&name)))
                {
                    tracing::error!(error = %e, "moving an accepted output into place");
                }
                entry.acceptances.insert(f.task, signed.into_bytes());
                entry.files.insert(f.task, OutputFile { name, size });
                entry.fetch_tries.remove(&f.task);
                if let Some(i) = entry.info.get_mut(f.task as usize) {
                    i.reason = None;
                }
                tracing::info!(job = %hex::encode(job.0), task = f.task, "result accepted and countersigned");
                // The acceptance is durable before anyone else learns of it.
                if let Err(e) = save(&self.store, entry) {
                    tracing::error!(error = %e, "storing an acceptance");
                }
                let _ = self.store.flush();
                self.ledger_settle(job, f.task);
            }
            Err((why, bad_output)) => {
                let tries = entry.fetch_tries.entry(f.task).or_insert(0);
                *tries += 1;
                let retry_same = !bad_output && *tries < FETCH_TRIES;
                if let Some(i) = entry.info.get_mut(f.task as usize) {
                    i.reason = Some(format!("result of attempt {}: {why}", f.attempt));
                }
                tracing::warn!(job = %hex::encode(job.0), task = f.task, attempt = f.attempt, error = %why, retry_same, "result not accepted");
                let next = if retry_same {
                    entry
                        .machine
                        .tasks()
                        .get(f.task as usize)
                        .and_then(|t| match t {
                            TaskState::Fetching { fetching, .. } => Some((**fetching).clone()),
                            _ => None,
                        })
                } else {
                    entry.fetch_tries.remove(&f.task);
                    entry.machine.fetch_failed(f.task, f.attempt)
                };
                // No source of this result is left: the scheduler thinks the
                // task done, so tell it to run the task again.
                let lost = next.is_none()
                    && !retry_same
                    && matches!(
                        entry.machine.tasks().get(f.task as usize),
                        Some(TaskState::Waiting)
                    );
                let reopen = if lost { entry.owner } else { None };
                if let Some(next) = next {
                    let job_id = job;
                    if retry_same {
                        let ctx = retry_ctx;
                        let spec = entry.spec().clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            let fetched = fetch_result(ctx, spec, next).await;
                            let _ = internal.send(Internal::Fetched(Box::new(fetched))).await;
                        });
                    } else {
                        self.start_fetch(job_id, next);
                    }
                }
                if let Some(owner) = reopen {
                    let task = TaskId { job, index: f.task };
                    tracing::warn!(job = %hex::encode(job.0), task = f.task, attempt = f.attempt, %owner, "no source of the result is left; asking the scheduler to run the task again");
                    if owner == self.me {
                        if let RpcResponse::Error { message, .. } =
                            self.rpc_unfetchable(self.me, task, f.attempt, now_ms)
                        {
                            tracing::warn!(task = f.task, %message, "this node's scheduler did not reopen the task");
                        }
                    } else {
                        let request = RpcRequest::Unfetchable {
                            task,
                            attempt: f.attempt,
                        };
                        self.outbox.send(&self.rpc, owner, request, None);
                    }
                }
            }
        }
        self.dirty_jobs.insert(job);
        self.job_changed(&job, Some(f.task));
    }

    /// Publishes a countersigned receipt to the ledger peers.
    fn ledger_settle(&mut self, job: JobId, task: u32) {
        let Some(entry) = self.jobs.get(&job) else {
            return;
        };
        let (Some((result, _)), Some(acceptance)) =
            (entry.machine.accepted(task), entry.acceptances.get(&task))
        else {
            return;
        };
        let receipt =
            Signed::<rendertrust_protocol::wire::Receipt>::from_slice(&result.frames.receipt);
        let acceptance =
            Signed::<rendertrust_protocol::wire::ReceiptAcceptance>::from_slice(acceptance);
        let (Ok(receipt), Ok(acceptance)) = (receipt, acceptance) else {
            tracing::warn!(task, "settle frames do not parse");
            return;
        };
        tracing::debug!(job = %hex::encode(job.0), task, "settle");
        self.publish_ledger(rendertrust_protocol::ledger::LedgerEvent::Settle {
            receipt,
            acceptance,
        });
    }

    /// After a restart: resubmit jobs never taken, refetch results whose
    /// fetch died, and query the rest soon.
    pub(crate) fn resume_jobs(&mut self, now_ms: u64) {
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let Some(entry) = self.jobs.get_mut(&id) else {
                continue;
            };
            if entry.is_over() {
                continue;
            }
            entry.last_heard_ms = 0;
            if !entry.submitted && entry.failed.is_none() {
                let candidates: Vec<NodeId> = entry.machine.schedulers().iter().copied().collect();
                let ranked = hrw::rank(hrw::job_key(&id), candidates.iter());
                let frame = entry.spec_frame.clone();
                self.send_submit(id, frame, ranked);
                continue;
            }
            let fetching: Vec<CheckedResult> = entry
                .machine
                .tasks()
                .iter()
                .filter_map(|t| match t {
                    TaskState::Fetching { fetching, .. } => Some((**fetching).clone()),
                    _ => None,
                })
                .collect();
            for c in fetching {
                self.start_fetch(id, c);
            }
        }
        let _ = now_ms;
    }

    /// Queries the scheduler of every job that has been quiet for [`QUIET`].
    pub(crate) fn poll_jobs(&mut self, now_ms: u64) {
        let live = self.live_schedulers();
        let quiet_ms = u64::try_from(QUIET.as_millis()).unwrap_or(10_000);
        let due: Vec<(JobId, Vec<NodeId>)> = self
            .jobs
            .iter_mut()
            .filter(|(_, e)| {
                e.submitted
                    && !e.query_in_flight
                    && !e.is_over()
                    && now_ms.saturating_sub(e.last_heard_ms) >= quiet_ms
            })
            .map(|(id, e)| {
                e.query_in_flight = true;
                e.last_heard_ms = now_ms;
                // The owner first, then every other live scheduler (it may
                // have been taken over while we did not hear).
                let mut to: Vec<NodeId> = e.owner.into_iter().collect();
                to.extend(live.iter().filter(|s| Some(**s) != e.owner));
                (*id, to)
            })
            .collect();
        for (job, to) in due {
            let rpc = self.rpc.clone();
            let internal = self.internal.clone();
            tokio::spawn(async move {
                let mut last = Err("no scheduler to ask".to_owned());
                for s in to {
                    match rpc.call(s, &RpcRequest::Query { job }, 1).await {
                        Ok(RpcResponse::View { view }) => {
                            last = Ok(RpcResponse::View { view });
                            // Keep asking only if this one is a mere replica.
                            if let Ok(RpcResponse::View { view }) = &last
                                && codec::decode::<JobView>(
                                    view,
                                    rendertrust_protocol::rpc::MAX_RPC,
                                )
                                .is_ok_and(|v| v.role == JobRole::Owner)
                            {
                                break;
                            }
                        }
                        Ok(other) => last = Ok(other),
                        Err(e) => last = Err(e),
                    }
                }
                let _ = internal
                    .send(Internal::QueryAnswer { job, result: last })
                    .await;
            });
        }
    }

    pub(crate) fn on_query_answer(
        &mut self,
        job: JobId,
        result: Result<RpcResponse, String>,
        now_ms: u64,
    ) {
        let live = self.live_schedulers();
        let Some(entry) = self.jobs.get_mut(&job) else {
            return;
        };
        entry.query_in_flight = false;
        let view = match result {
            Ok(RpcResponse::View { view }) => {
                match codec::decode::<JobView>(&view, rendertrust_protocol::rpc::MAX_RPC) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "unreadable job view");
                        return;
                    }
                }
            }
            Ok(other) => {
                tracing::debug!(job = %hex::encode(job.0), answer = ?other, "job query not answered with a view");
                return;
            }
            Err(e) => {
                tracing::debug!(job = %hex::encode(job.0), error = %e, "job query failed");
                return;
            }
        };
        if view.id != job || view.creator != self.me {
            return;
        }
        if view.role == JobRole::Owner && live.contains(&view.owner) {
            entry.machine.trust_scheduler(view.owner);
            entry.owner = Some(view.owner);
        }
        entry.last_heard_ms = now_ms;
        if let Some(why) = &view.why_queued {
            entry.reason = Some(why.clone());
        }
        let mut missing = Vec::new();
        for t in &view.tasks {
            let waiting = matches!(
                entry.machine.tasks().get(t.index as usize),
                Some(TaskState::Waiting)
            );
            match (&t.status, t.worker, t.attempt) {
                (TaskStatus::Done, Some(w), Some(a)) if waiting => missing.push((t.index, w, a)),
                (TaskStatus::Failed { reason }, _, _) if waiting => {
                    entry.machine.task_failed(t.index, reason.to_string());
                }
                (TaskStatus::Running { permille }, w, a) if waiting => {
                    if let Some(i) = entry.info.get_mut(t.index as usize) {
                        i.phase = Phase::Running;
                        i.permille = *permille;
                        i.worker = w;
                        i.attempt = a.unwrap_or(i.attempt);
                    }
                }
                _ => {}
            }
        }
        self.dirty_jobs.insert(job);
        self.job_changed(&job, None);
        // Results the scheduler has but we never got: ask their workers.
        for (index, worker, attempt) in missing.into_iter().take(256) {
            let rpc = self.rpc.clone();
            let internal = self.internal.clone();
            let task = TaskId { job, index };
            tokio::spawn(async move {
                if let Ok(RpcResponse::Result { frames }) = rpc
                    .call(worker, &RpcRequest::ResultOf { task, attempt }, 2)
                    .await
                {
                    let _ = internal
                        .send(Internal::ResultFrames {
                            job,
                            frames: Box::new(frames),
                        })
                        .await;
                }
            });
        }
    }

    pub(crate) fn on_result_frames(&mut self, job: JobId, frames: ResultFrames, now_ms: u64) {
        self.creator_result(job, frames, now_ms);
        self.dirty_jobs.insert(job);
        self.job_changed(&job, None);
    }

    /// Cancels a job: the machine stops accepting, the scheduler is told.
    pub(crate) fn cancel_job(&mut self, job: JobId, _now_ms: u64) -> JobSummary {
        let mut to = None;
        if let Some(entry) = self.jobs.get_mut(&job) {
            if !entry.is_over() {
                entry.machine.cancel();
                to = entry.owner;
            }
            self.dirty_jobs.insert(job);
        }
        if let Some(s) = to {
            self.outbox
                .send(&self.rpc, s, RpcRequest::Cancel { job, task: None }, None);
        }
        self.job_changed(&job, None);
        self.jobs
            .get(&job)
            .map(CreatorEntry::summary)
            .unwrap_or_else(|| unreachable_summary(job))
    }

    /// Tells subscribers what changed.
    pub(crate) fn job_changed(&mut self, job: &JobId, task: Option<u32>) {
        let Some(entry) = self.jobs.get(job) else {
            return;
        };
        let summary = entry.summary();
        let task_view = task.map(|t| entry.task_view(t));
        if let Some(t) = task_view {
            self.publish(job, JobUpdate::Task { task: t });
        }
        self.publish(job, JobUpdate::Job { summary });
    }

    pub(crate) fn list_jobs(&self) -> Vec<JobSummary> {
        let mut v: Vec<JobSummary> = self.jobs.values().map(CreatorEntry::summary).collect();
        v.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
        v
    }

    pub(crate) fn detail(&self, job: &JobId) -> JobDetail {
        match self.jobs.get(job) {
            Some(e) => JobDetail {
                summary: e.summary(),
                tasks: (0..e.info.len() as u32).map(|i| e.task_view(i)).collect(),
            },
            None => JobDetail {
                summary: unreachable_summary(*job),
                tasks: Vec::new(),
            },
        }
    }

    pub(crate) fn results(&self, job: &JobId) -> ResultsView {
        let id = hex::encode(job.0);
        let Some(e) = self.jobs.get(job) else {
            return ResultsView {
                job: id,
                results: Vec::new(),
                missing: Vec::new(),
            };
        };
        let mut results = Vec::new();
        let mut missing = Vec::new();
        for i in 0..e.info.len() as u32 {
            match (e.machine.accepted(i), e.files.get(&i)) {
                (Some((r, _)), Some(f)) => {
                    let v = e.task_view(i);
                    results.push(ResultView {
                        task: i,
                        frame: v.frame,
                        region: v.region,
                        file_name: f.name.clone(),
                        size: f.size,
                        output_hash: hex::encode(r.result.output_hash),
                        receipt_id: hex::encode(r.receipt_id),
                        worker: r.result.worker.to_string(),
                        url: format!("/v1/jobs/{id}/results/{i}"),
                    });
                }
                _ => missing.push(i),
            }
        }
        ResultsView {
            job: id,
            results,
            missing,
        }
    }

    pub(crate) fn result_file(&self, job: &JobId, task: u32) -> Result<PathBuf, JobsError> {
        let e = self
            .jobs
            .get(job)
            .ok_or_else(|| JobsError::NotFound("no such job".into()))?;
        let f = e.files.get(&task).ok_or_else(|| {
            JobsError::NotFound(format!("task {task} has no accepted output (yet)"))
        })?;
        Ok(self.results_dir(job).join(&f.name))
    }

    /// `ResultOf` from a creator: the frames of a result this worker sent.
    pub(crate) fn rpc_result_of(
        &mut self,
        peer: NodeId,
        task: TaskId,
        attempt: u32,
    ) -> RpcResponse {
        match self.sent_results.get(&(task, attempt)) {
            Some((creator, frames)) if *creator == peer => RpcResponse::Result {
                frames: frames.clone(),
            },
            Some(_) => RpcResponse::error(ErrorCode::Forbidden, "only the job's creator may ask"),
            None => RpcResponse::error(ErrorCode::NotFound, "no such result here"),
        }
    }
}

fn unreachable_summary(job: JobId) -> JobSummary {
    JobSummary {
        id: hex::encode(job.0),
        kind: String::new(),
        state: JobState::Failed,
        tasks: 0,
        counts: Counts::default(),
        reason: Some("unknown job".into()),
        scheduler: None,
        created_at_ms: 0,
        width: 0,
        height: 0,
    }
}

/// Seals every input into the store and signs the spec (blocking: file I/O and crypto).
#[allow(clippy::too_many_arguments)]
fn seal_inputs(
    content: &ContentStore,
    p: &PreparedJob,
    key: &JobKey,
    me: NodeId,
    nonce: u64,
    now_ms: u64,
    tmp: &std::path::Path,
    node_key: &rendertrust_protocol::identity::NodeKey,
) -> Result<(JobSpec, Vec<u8>), String> {
    let id = JobId::derive(&me, nonce);
    let mut rng = crate::keys::os_rng().map_err(|e| e.to_string())?;
    let mut inputs = Vec::new();
    for (name, path) in &p.inputs {
        let path = match path {
            Some(p) => p.clone(),
            None => {
                std::fs::create_dir_all(tmp)
                    .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
                let f = tmp.join(name);
                std::fs::write(&f, crate::runtime::builtin::DEFAULT_SCENE)
                    .map_err(|e| format!("writing the default scene: {e}"))?;
                f
            }
        };
        let sealed = seal_file_into_store(content, &path, key, &input_context(&id, name), &mut rng)
            .map_err(|e| format!("sealing input {name} ({}): {e}", path.display()))?;
        inputs.push(InputRef {
            name: name.clone(),
            manifest: sealed.manifest_id,
            size: sealed.plaintext_size,
        });
    }
    let _ = std::fs::remove_dir_all(tmp);
    let spec = JobSpec {
        id,
        creator: me,
        nonce,
        created_at_ms: now_ms,
        kind: p.kind.clone(),
        inputs,
        requirements: p.requirements.clone(),
        split: p.split.clone(),
        width: p.width,
        height: p.height,
        format: super::submit::format_of(&p.kind),
        max_price_per_task: p.max_price_per_task,
        verification: p.verification.clone(),
        deadline_ms: now_ms.saturating_add(p.deadline_secs.saturating_mul(1000)),
    };
    let signed =
        Signed::sign(node_key, &spec).map_err(|e| format!("the job spec is invalid: {e}"))?;
    Ok((spec, signed.into_bytes()))
}

/// Fetches a result's sealed output from its worker and opens it into
/// `ctx.incoming` (named after the task, attempt and `tag`). Returns the
/// plaintext hash, the file and its size, or why not and whether it is the
/// worker's fault (bad output) rather than the network's.
pub(crate) async fn fetch_open(
    ctx: &FetchCtx,
    checked: &CheckedResult,
    tag: &str,
) -> Result<([u8; 32], PathBuf, u64), (String, bool)> {
    let task = checked.result.task;
    let attempt = checked.result.attempt;
    let source = PeerSource {
        net: ctx.net.clone(),
        peer: checked.result.worker,
    };
    if let Err(e) = fetch_content(
        &ctx.content,
        checked.result.output_manifest,
        &source,
        &FetchOptions::default(),
        |_| {},
    )
    .await
    {
        return Err((
            format!("fetching the output from {}: {e}", checked.result.worker),
            false,
        ));
    }
    let key = seal::unwrap_key(
        &ctx.wrap,
        &checked.result.wrapped_key,
        &output_key_context(&task, attempt),
    )
    .map_err(|e| (format!("the output key does not open: {e}"), true))?;
    std::fs::create_dir_all(&ctx.incoming)
        .map_err(|e| (format!("creating {}: {e}", ctx.incoming.display()), false))?;
    let out = ctx.incoming.join(format!(
        "{}-{}-{}{tag}",
        hex::encode(&task.job.0[..8]),
        task.index,
        attempt
    ));
    let (store, id, out2, context) = (
        ctx.content.clone(),
        checked.result.output_manifest,
        out.clone(),
        rendertrust_protocol::task::output_context(&task, attempt),
    );
    let opened =
        tokio::task::spawn_blocking(move || open_from_store(&store, &id, &key, &context, &out2))
            .await;
    match opened {
        Ok(Ok(o)) => Ok((o.plaintext_hash, out, o.size)),
        Ok(Err(e)) => Err((format!("opening the output: {e}"), true)),
        Err(e) => Err((format!("internal error: {e}"), false)),
    }
}

/// Fetches, opens and checks one result's output.
async fn fetch_result(ctx: FetchCtx, spec: JobSpec, checked: CheckedResult) -> Fetched {
    let task = checked.result.task;
    let attempt = checked.result.attempt;
    let fail = |reason: String, bad_output: bool| Fetched {
        job: task.job,
        task: task.index,
        attempt,
        result: Err(reason),
        bad_output,
    };
    let (hash, out, size) = match fetch_open(&ctx, &checked, "").await {
        Ok(o) => o,
        Err((reason, bad)) => return fail(reason, bad),
    };
    // The same sanity check the worker ran, on our side.
    if !matches!(spec.kind, JobKind::Process { .. })
        && let Some(g) = task_geometry(&spec.split, spec.width, spec.height, task.index)
    {
        let expect = crate::runtime::Expect::Image {
            format: spec.format,
            width: g.region.w,
            height: g.region.h,
        };
        let path = out.clone();
        let check = tokio::task::spawn_blocking(move || {
            crate::runtime::check::check_output(&path, &expect, u64::MAX)
        })
        .await;
        match check {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&out);
                return fail(format!("the output is not a usable image: {e}"), true);
            }
            Err(e) => return fail(format!("internal error: {e}"), false),
        }
    }
    Fetched {
        job: task.job,
        task: task.index,
        attempt,
        result: Ok((hash, out, size)),
        bad_output: false,
    }
}
