//! The worker role: offers into the [`Worker`](rendertrust_protocol::worker)
//! machine, accepted tasks run in their own tokio task (key from the
//! creator, inputs fetched and opened, the runtime, the output checked,
//! hashed, sealed and its key wrapped to the creator, result and receipt
//! signed), progress and results back to the scheduler.
//!
//! Inputs are fetched chunk by chunk from the creator, each chunk verified
//! against the manifest and cached by hash in the content store, so a second
//! task of the same job (or a retry after a broken connection) fetches only
//! what is missing. Each task opens its inputs into its own task dir; the
//! task dir is removed when the task ends.
//!
//! A `CropOffer` (a spot-check line, `docs/trust.md`) runs like an offer,
//! except that the runtime renders only the crop (frame coordinates, checked
//! to lie inside the task's region): every runtime renders a region (the
//! builtin renderer deterministically, Blender through its render border),
//! so the output is an image of the crop's size, sealed, signed and sent as
//! an ordinary result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rendertrust_protocol::creator::ResultFrames;
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::rpc::{ErrorCode, RpcRequest, RpcResponse};
use rendertrust_protocol::seal::{self, JobKey, WrapSecret};
use rendertrust_protocol::signed::Signed;
use rendertrust_protocol::task::{
    Rect, input_context, job_key_context, output_context, output_key_context, task_geometry,
};
use rendertrust_protocol::wire::{JobSpec, Receipt, TaskId, TaskOffer, TaskResult};
use rendertrust_protocol::worker::WorkerAction;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::outbox::RpcClient;
use super::service::{Internal, JobService};
use super::transfer::PeerSource;
use crate::content::{
    ContentStore, FetchOptions, fetch_content, open_from_store, seal_file_into_store,
};
use crate::net::unix_now_ms;
use crate::runtime::{self, GpuBackend, Limits, TaskRun};

/// Results kept for `ResultOf`, at most (oldest dropped first).
pub(crate) const MAX_SENT_RESULTS: usize = 4096;

/// A task this worker runs.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) attempt: u32,
    pub(crate) scheduler: NodeId,
    pub(crate) cancel: CancellationToken,
}

/// A step of a running task, reported to the service loop.
#[derive(Debug)]
pub(crate) enum WorkEvent {
    Fetching {
        task: TaskId,
        attempt: u32,
    },
    Started {
        task: TaskId,
        attempt: u32,
    },
    Progress {
        task: TaskId,
        attempt: u32,
        permille: u16,
    },
    Finished {
        task: TaskId,
        attempt: u32,
        creator: NodeId,
        frames: Box<ResultFrames>,
    },
    Failed {
        task: TaskId,
        attempt: u32,
        reason: String,
    },
}

fn not_worker() -> RpcResponse {
    RpcResponse::error(ErrorCode::WrongRole, "this node is not a worker")
}

impl JobService {
    pub(crate) fn rpc_offer(
        &mut self,
        peer: NodeId,
        offer_frame: Vec<u8>,
        spec_frame: Vec<u8>,
        crop: Option<Rect>,
        now_ms: u64,
    ) -> RpcResponse {
        if self.worker.is_none() {
            return not_worker();
        }
        let offer = match Signed::<TaskOffer>::from_slice(&offer_frame).and_then(|f| f.verify()) {
            Ok(o) => o,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("offer: {e}")),
        };
        if offer.scheduler != peer {
            return RpcResponse::error(
                ErrorCode::Forbidden,
                "offer signed by another node than the sender",
            );
        }
        let spec = match Signed::<JobSpec>::from_slice(&spec_frame).and_then(|f| f.verify()) {
            Ok(s) => s,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("job spec: {e}")),
        };
        if let Some(crop) = crop
            && let Err(e) = check_crop(&spec, offer.task.index, crop)
        {
            return RpcResponse::error(ErrorCode::Invalid, e);
        }
        let advert = self.advert.borrow().clone();
        let Some(worker) = self.worker.as_mut() else {
            return not_worker();
        };
        let accept = worker.offer(&offer, &spec, &advert, now_ms);
        let signed = match Signed::sign(&self.key, &accept) {
            Ok(s) => s,
            Err(e) => {
                return RpcResponse::error(
                    ErrorCode::Invalid,
                    format!("cannot sign the answer: {e}"),
                );
            }
        };
        if accept.accepted && !self.running.contains_key(&offer.task) {
            self.start_task(offer, offer_frame, spec, crop, now_ms);
        } else if !accept.accepted {
            tracing::debug!(task = offer.task.index, reason = %accept.reason, "offer declined");
        }
        RpcResponse::Accept {
            accept: signed.into_bytes(),
        }
    }

    fn start_task(
        &mut self,
        offer: TaskOffer,
        offer_frame: Vec<u8>,
        spec: JobSpec,
        crop: Option<Rect>,
        now_ms: u64,
    ) {
        let cancel = CancellationToken::new();
        self.running.insert(
            offer.task,
            Running {
                attempt: offer.attempt,
                scheduler: offer.scheduler,
                cancel: cancel.clone(),
            },
        );
        tracing::info!(
            job = %hex::encode(offer.task.job.0),
            task = offer.task.index,
            attempt = offer.attempt,
            ?crop,
            "task accepted"
        );
        let ctx = TaskCtx {
            rpc: self.rpc.clone(),
            content: self.content.clone(),
            key: self.key.clone(),
            wrap: self.wrap.clone(),
            task_dir: self.task_dir(&offer.task, offer.attempt),
            limits: self.config.limits.clone(),
            gpu: self.config.gpu,
            creator_wrap: self.wrap_key_of(&spec.creator),
            internal: self.internal.clone(),
            cancel,
            deadline: Duration::from_millis(offer.deadline_ms.saturating_sub(now_ms)),
            crop,
            #[cfg(feature = "dishonest-test-hooks")]
            dishonest: self.config.dishonest,
        };
        tokio::spawn(async move {
            let task = offer.task;
            let attempt = offer.attempt;
            let internal = ctx.internal.clone();
            let dir = ctx.task_dir.clone();
            let creator = spec.creator;
            let outcome = execute(ctx, offer, offer_frame, spec).await;
            let _ = tokio::fs::remove_dir_all(&dir).await;
            let ev = match outcome {
                Ok(frames) => WorkEvent::Finished {
                    task,
                    attempt,
                    creator,
                    frames: Box::new(frames),
                },
                Err(reason) => WorkEvent::Failed {
                    task,
                    attempt,
                    reason,
                },
            };
            let _ = internal.send(Internal::Work(ev)).await;
        });
    }

    pub(crate) fn on_worker_action(&mut self, action: WorkerAction, _now_ms: u64) {
        match action {
            WorkerAction::Progress { to, progress } => {
                let frame = match Signed::sign(&self.key, &progress) {
                    Ok(f) => f.into_bytes(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot sign progress");
                        return;
                    }
                };
                let internal = self.internal.clone();
                let (task, attempt) = (progress.task, progress.attempt);
                let on_answer: super::outbox::OnAnswer = Box::new(move |answer| {
                    if let Ok(RpcResponse::Error {
                        code: ErrorCode::Closed,
                        ..
                    }) = answer
                    {
                        let _ = internal.try_send(Internal::StopTask { task, attempt });
                    }
                });
                self.outbox.send(
                    &self.rpc,
                    to,
                    RpcRequest::Progress { progress: frame },
                    Some(on_answer),
                );
            }
            WorkerAction::Abort { task, attempt } => {
                if let Some(r) = self.running.get(&task)
                    && r.attempt == attempt
                {
                    r.cancel.cancel();
                }
                self.running.remove(&task);
            }
        }
    }

    pub(crate) fn on_work(&mut self, ev: WorkEvent, now_ms: u64) {
        let Some(worker) = self.worker.as_mut() else {
            return;
        };
        let current = |running: &BTreeMap<TaskId, Running>, task: &TaskId, attempt: u32| {
            running.get(task).is_some_and(|r| r.attempt == attempt)
        };
        match ev {
            WorkEvent::Fetching { task, attempt } => {
                if current(&self.running, &task, attempt) {
                    let _ = worker.fetching(&task, now_ms);
                }
            }
            WorkEvent::Started { task, attempt } => {
                if current(&self.running, &task, attempt) {
                    let _ = worker.running(&task, now_ms);
                }
            }
            WorkEvent::Progress {
                task,
                attempt,
                permille,
            } => {
                if current(&self.running, &task, attempt) {
                    let _ = worker.set_progress(&task, permille, now_ms);
                }
            }
            WorkEvent::Finished {
                task,
                attempt,
                creator,
                frames,
            } => {
                let Some(r) = self.running.remove(&task) else {
                    return;
                };
                let _ = worker.finished(&task, now_ms);
                if self.sent_results.len() >= MAX_SENT_RESULTS
                    && let Some(first) = self.sent_results.keys().next().copied()
                {
                    self.sent_results.remove(&first);
                }
                self.sent_results
                    .insert((task, attempt), (creator, (*frames).clone()));
                tracing::info!(job = %hex::encode(task.job.0), task = task.index, attempt, "task finished; sending the result");
                self.send_result(r.scheduler, *frames, Vec::new());
            }
            WorkEvent::Failed {
                task,
                attempt,
                reason,
            } => {
                let Some(r) = self.running.remove(&task) else {
                    return;
                };
                let _ = worker.failed(&task, now_ms);
                if r.cancel.is_cancelled() {
                    tracing::info!(task = task.index, attempt, "task stopped");
                    return;
                }
                tracing::warn!(job = %hex::encode(task.job.0), task = task.index, attempt, %reason, "task failed");
                let mut reason = reason;
                if reason.len() > 256 {
                    let mut cut = 256;
                    while !reason.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    reason.truncate(cut);
                }
                let request = RpcRequest::TaskFailed {
                    task,
                    attempt,
                    reason,
                };
                self.outbox.send(&self.rpc, r.scheduler, request, None);
            }
        }
    }

    /// Sends a result to `to`; if it cannot be delivered there (the
    /// scheduler died), to the job's HRW successor among the live schedulers
    /// not yet tried (the replica that took the job over).
    pub(crate) fn send_result(&mut self, to: NodeId, frames: ResultFrames, mut tried: Vec<NodeId>) {
        tried.push(to);
        let internal = self.internal.clone();
        let retry = frames.clone();
        let on_answer: super::outbox::OnAnswer = Box::new(move |answer| {
            if answer.is_err() {
                let _ = internal.try_send(Internal::ResultUndelivered {
                    frames: Box::new(retry),
                    tried,
                });
            }
        });
        self.outbox.send(
            &self.rpc,
            to,
            RpcRequest::Result { frames },
            Some(on_answer),
        );
    }

    pub(crate) fn on_result_undelivered(&mut self, frames: ResultFrames, tried: Vec<NodeId>) {
        let Ok(result) = Signed::<TaskResult>::from_slice(&frames.result).and_then(|f| f.verify())
        else {
            return;
        };
        let live: Vec<NodeId> = self
            .live_schedulers()
            .into_iter()
            .filter(|s| !tried.contains(s))
            .collect();
        match rendertrust_protocol::hrw::owner(
            rendertrust_protocol::hrw::job_key(&result.task.job),
            live.iter(),
        ) {
            Some(next) => {
                tracing::info!(task = result.task.index, %next, "result undelivered; sending it to the job's successor");
                self.send_result(next, frames, tried);
            }
            None => tracing::warn!(
                task = result.task.index,
                "result undelivered and no other scheduler is live"
            ),
        }
    }

    /// Stops a running task (cancel from its scheduler, or the scheduler
    /// answered a progress report with "cancelled").
    pub(crate) fn stop_task(&mut self, task: &TaskId, attempt: u32, now_ms: u64) {
        if let Some(r) = self.running.get(task)
            && r.attempt == attempt
        {
            r.cancel.cancel();
            self.running.remove(task);
            if let Some(w) = self.worker.as_mut() {
                let _ = w.cancel(task, attempt, now_ms);
            }
        }
    }
}

/// What a task needs, cloned out of the service.
struct TaskCtx {
    rpc: RpcClient,
    content: ContentStore,
    key: Arc<NodeKey>,
    wrap: Arc<WrapSecret>,
    task_dir: PathBuf,
    limits: Limits,
    gpu: Option<GpuBackend>,
    creator_wrap: Option<[u8; 32]>,
    internal: mpsc::Sender<Internal>,
    cancel: CancellationToken,
    deadline: Duration,
    /// A spot-check line renders only these pixels (frame coordinates).
    crop: Option<Rect>,
    /// TEST ONLY: how this worker cheats.
    #[cfg(feature = "dishonest-test-hooks")]
    dishonest: Option<super::dishonest::Dishonesty>,
}

/// Checks that a spot-check crop lies inside task `index`'s region of `spec`.
fn check_crop(spec: &JobSpec, index: u32, crop: Rect) -> Result<(), String> {
    let region = task_geometry(&spec.split, spec.width, spec.height, index)
        .ok_or_else(|| format!("task {index} is not part of the job"))?
        .region;
    if crop.within(&region) {
        Ok(())
    } else {
        Err(format!(
            "crop {crop:?} is not inside task {index}'s region {region:?}"
        ))
    }
}

impl TaskCtx {
    async fn report(&self, ev: WorkEvent) {
        let _ = self.internal.send(Internal::Work(ev)).await;
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

/// Runs one accepted task to its signed result.
async fn execute(
    ctx: TaskCtx,
    offer: TaskOffer,
    offer_frame: Vec<u8>,
    spec: JobSpec,
) -> Result<ResultFrames, String> {
    let task = offer.task;
    let attempt = offer.attempt;
    let creator_wrap = ctx.creator_wrap.ok_or_else(|| {
        format!(
            "the creator {} has no capacity advert here: cannot wrap the output key to it",
            spec.creator
        )
    })?;
    ctx.report(WorkEvent::Fetching { task, attempt }).await;

    // 1. The job key, from the creator, proving the assignment with the offer.
    let answer = ctx
        .rpc
        .call(
            spec.creator,
            &RpcRequest::Key {
                offer: offer_frame.clone(),
            },
            3,
        )
        .await
        .map_err(|e| format!("asking the creator for the job key: {e}"))?;
    let wrapped = match answer {
        RpcResponse::Key { wrapped } => wrapped,
        RpcResponse::Error { message, .. } => {
            return Err(format!("the creator refused the job key: {message}"));
        }
        other => {
            return Err(format!(
                "the creator answered the key request with {other:?}"
            ));
        }
    };
    let job_key = seal::unwrap_key(&ctx.wrap, &wrapped, &job_key_context(&task.job))
        .map_err(|e| format!("unwrapping the job key: {e}"))?;

    // 2. Inputs: fetch what is missing, verify, open into the task dir.
    let in_dir = ctx.task_dir.join("in");
    tokio::fs::create_dir_all(&in_dir)
        .await
        .map_err(|e| format!("creating {}: {e}", in_dir.display()))?;
    let source = PeerSource {
        net: ctx.rpc.net.clone(),
        peer: spec.creator,
    };
    let mut inputs = BTreeMap::new();
    for input in &spec.inputs {
        if ctx.cancel.is_cancelled() {
            return Err("cancelled".into());
        }
        if !runtime::valid_input_name(&input.name) {
            return Err(format!(
                "input name {:?} is not a plain file name",
                input.name
            ));
        }
        let report = fetch_content(
            &ctx.content,
            input.manifest,
            &source,
            &FetchOptions::default(),
            |_| {},
        )
        .await
        .map_err(|e| format!("fetching input {}: {e}", input.name))?;
        tracing::debug!(input = %input.name, fetched = report.chunks_fetched, cached = report.chunks_cached, "input present");
        let path = in_dir.join(&input.name);
        let (store, id, key, context, out) = (
            ctx.content.clone(),
            input.manifest,
            JobKey::from_bytes(*job_key.as_bytes()),
            input_context(&task.job, &input.name),
            path.clone(),
        );
        let opened = blocking(move || {
            open_from_store(&store, &id, &key, &context, &out).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("opening input {}: {e}", input.name))?;
        if opened.size != input.size {
            return Err(format!(
                "input {} opened to {} bytes, the spec says {}",
                input.name, opened.size, input.size
            ));
        }
        inputs.insert(input.name.clone(), path);
    }

    // 3. Run (a spot-check line renders only its crop: every runtime
    // renders a region, so the crop is the region; see docs/trust.md).
    let mut geometry = task_geometry(&spec.split, spec.width, spec.height, task.index)
        .ok_or_else(|| format!("task {} is not part of the job", task.index))?;
    if let Some(crop) = ctx.crop {
        check_crop(&spec, task.index, crop)?;
        geometry.region = crop;
    }
    let run_dir = ctx.task_dir.join("run");
    tokio::fs::create_dir_all(&run_dir)
        .await
        .map_err(|e| format!("creating {}: {e}", run_dir.display()))?;
    let run = TaskRun {
        spec: spec.clone(),
        index: task.index,
        geometry,
        inputs,
        task_dir: run_dir,
        deadline: std::time::Instant::now() + ctx.deadline,
        limits: ctx.limits.clone(),
        gpu: ctx.gpu,
    };
    ctx.report(WorkEvent::Started { task, attempt }).await;
    let started_at_ms = unix_now_ms();
    let (ptx, mut prx) = mpsc::channel::<u16>(16);
    let internal = ctx.internal.clone();
    let forward = tokio::spawn(async move {
        while let Some(permille) = prx.recv().await {
            let _ = internal
                .send(Internal::Work(WorkEvent::Progress {
                    task,
                    attempt,
                    permille,
                }))
                .await;
        }
    });
    #[cfg(not(feature = "dishonest-test-hooks"))]
    let output = runtime::run_task(&run, ptx, ctx.cancel.clone())
        .await
        .map_err(|e| e.to_string());
    #[cfg(feature = "dishonest-test-hooks")]
    let output = super::dishonest::run_task(ctx.dishonest, &run, ptx, ctx.cancel.clone()).await;
    let _ = forward.await;
    let output = output?;
    let finished_at_ms = unix_now_ms().max(started_at_ms);

    // 4. Seal the checked output under a fresh key, wrap the key to the creator.
    let (store, path, context) = (
        ctx.content.clone(),
        output.path.clone(),
        output_context(&task, attempt),
    );
    let (sealed, out_key) = blocking(move || {
        let mut rng = crate::keys::os_rng().map_err(|e| e.to_string())?;
        let key = JobKey::generate(&mut rng);
        let sealed = seal_file_into_store(&store, &path, &key, &context, &mut rng)
            .map_err(|e| e.to_string())?;
        Ok((sealed, key))
    })
    .await
    .map_err(|e| format!("sealing the output: {e}"))?;
    let mut rng = crate::keys::os_rng().map_err(|e| e.to_string())?;
    let wrapped_key = seal::wrap_key(
        &out_key,
        &creator_wrap,
        &output_key_context(&task, attempt),
        &mut rng,
    )
    .map_err(|e| format!("wrapping the output key: {e}"))?;

    // 5. Sign the result and the receipt.
    let result = TaskResult {
        task,
        worker: ctx.key.node_id(),
        attempt,
        output_hash: sealed.plaintext_hash,
        output_manifest: sealed.manifest_id,
        wrapped_key,
        usage: output.usage,
    };
    let receipt = Receipt {
        task,
        worker: ctx.key.node_id(),
        creator: spec.creator,
        scheduler: offer.scheduler,
        attempt,
        output_hash: sealed.plaintext_hash,
        usage: output.usage,
        started_at_ms,
        finished_at_ms,
        price: offer.price,
    };
    let result = Signed::sign(&ctx.key, &result).map_err(|e| format!("signing the result: {e}"))?;
    let receipt =
        Signed::sign(&ctx.key, &receipt).map_err(|e| format!("signing the receipt: {e}"))?;
    Ok(ResultFrames {
        offer: offer_frame,
        result: result.into_bytes(),
        receipt: receipt.into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::wire::SplitRule;

    #[test]
    fn crops_must_lie_inside_the_tasks_region() {
        let spec = JobSpec {
            split: SplitRule::Tiles {
                frame: 1,
                cols: 2,
                rows: 1,
            },
            width: 100,
            height: 50,
            id: rendertrust_protocol::wire::JobId([1; 32]),
            creator: NodeId::from_bytes([2; 32]),
            nonce: 0,
            created_at_ms: 0,
            kind: rendertrust_protocol::wire::JobKind::Builtin,
            inputs: vec![],
            requirements: Default::default(),
            format: rendertrust_protocol::wire::ImageFormat::Png,
            max_price_per_task: 1,
            verification: rendertrust_protocol::wire::VerificationPolicy::None,
            deadline_ms: 1,
        };
        // Task 1 is the right half: x 50..100.
        let ok = Rect {
            x: 60,
            y: 10,
            w: 40,
            h: 40,
        };
        assert_eq!(check_crop(&spec, 1, ok), Ok(()));
        for bad in [
            Rect { x: 40, ..ok },
            Rect { w: 41, ..ok },
            Rect { h: 41, ..ok },
            Rect { w: 0, ..ok },
            Rect { x: u32::MAX, ..ok },
        ] {
            let e = check_crop(&spec, 1, bad).unwrap_err();
            assert!(e.contains("not inside"), "{bad:?}: {e}");
        }
        assert!(check_crop(&spec, 2, ok).unwrap_err().contains("not part"));
    }
}
