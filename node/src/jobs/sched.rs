//! The scheduler role: requests from creators and workers into the
//! [`Scheduler`](rendertrust_protocol::scheduler::Scheduler) machine, its
//! actions out to the mesh. Signatures are checked here, before the machine
//! sees anything; every decision is the machine's.

use std::sync::Arc;

use rendertrust_protocol::codec;
use rendertrust_protocol::creator::ResultFrames;
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::ledger::LedgerEvent;
use rendertrust_protocol::rpc::{ErrorCode, RpcRequest, RpcResponse};
use rendertrust_protocol::scheduler::{
    AcceptOutcome, CloseReason, ComparisonError, JobEvent, ProgressError, SchedulerAction,
    SnapshotPart, UnfetchableError,
};
use rendertrust_protocol::signed::Signed;
use rendertrust_protocol::task::Rect;
use rendertrust_protocol::verify::Comparison;
use rendertrust_protocol::wire::{
    JobId, JobSpec, Progress, TaskAccept, TaskClosed, TaskId, TaskOffer, TaskResult,
};

use super::service::{Internal, JobService};
use crate::net::Topic;

/// Offers kept for escrow bundles, at most (oldest dropped first).
pub(crate) const MAX_OFFER_FRAMES: usize = 100_000;

/// The signed frames of an offer and its acceptance (for the ledger's escrow).
#[derive(Debug, Clone)]
pub(crate) struct OfferFrames {
    pub(crate) offer: Vec<u8>,
    pub(crate) spec: Arc<[u8]>,
    pub(crate) accept: Option<Vec<u8>>,
}

fn not_scheduler() -> RpcResponse {
    RpcResponse::error(ErrorCode::WrongRole, "this node is not a scheduler")
}

impl JobService {
    pub(crate) fn rpc_submit(&mut self, peer: NodeId, spec: &[u8], now_ms: u64) -> RpcResponse {
        let Some(s) = self.scheduler.as_mut() else {
            return not_scheduler();
        };
        let signed = match Signed::<JobSpec>::from_slice(spec) {
            Ok(s) => s,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("job spec: {e}")),
        };
        if signed.signer() != peer {
            return RpcResponse::error(
                ErrorCode::Forbidden,
                "a job is submitted by its creator only",
            );
        }
        match s.submit_signed(&signed, now_ms) {
            Ok(_) => {
                self.sched_dirty = true;
                RpcResponse::Ok
            }
            Err(e) => RpcResponse::error(ErrorCode::Invalid, e.to_string()),
        }
    }

    pub(crate) fn rpc_progress(&mut self, peer: NodeId, frame: &[u8], now_ms: u64) -> RpcResponse {
        let Some(s) = self.scheduler.as_mut() else {
            return not_scheduler();
        };
        let p = match Signed::<Progress>::from_slice(frame).and_then(|f| f.verify()) {
            Ok(p) => p,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("progress: {e}")),
        };
        if p.worker != peer {
            return RpcResponse::error(ErrorCode::Forbidden, "progress of another worker");
        }
        match s.handle_progress(&p, now_ms) {
            Ok(()) => RpcResponse::Ok,
            Err(ProgressError::Cancelled { .. }) => RpcResponse::error(
                ErrorCode::Closed,
                "the task is cancelled or taken elsewhere",
            ),
            Err(e) => RpcResponse::error(ErrorCode::NotFound, e.to_string()),
        }
    }

    pub(crate) fn rpc_result(
        &mut self,
        peer: NodeId,
        frames: ResultFrames,
        now_ms: u64,
    ) -> RpcResponse {
        let Some(s) = self.scheduler.as_mut() else {
            return not_scheduler();
        };
        let result = match Signed::<TaskResult>::from_slice(&frames.result).and_then(|f| f.verify())
        {
            Ok(r) => r,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("result: {e}")),
        };
        if result.worker != peer {
            return RpcResponse::error(ErrorCode::Forbidden, "result of another worker");
        }
        // The creator re-checks the whole bundle; the scheduler checks what
        // it forwards is at least signed by the worker it names.
        if let Err(e) = Signed::<rendertrust_protocol::wire::Receipt>::from_slice(&frames.receipt)
            .and_then(|f| f.verify())
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.worker == peer {
                    Ok(())
                } else {
                    Err("receipt of another worker".into())
                }
            })
        {
            return RpcResponse::error(ErrorCode::Invalid, format!("receipt: {e}"));
        }
        match s.handle_result(&result, frames, now_ms) {
            Ok(_) => RpcResponse::Ok,
            Err(e) => RpcResponse::error(ErrorCode::NotFound, e.to_string()),
        }
    }

    pub(crate) fn rpc_task_failed(
        &mut self,
        peer: NodeId,
        task: TaskId,
        attempt: u32,
        reason: &str,
        now_ms: u64,
    ) -> RpcResponse {
        let Some(s) = self.scheduler.as_mut() else {
            return not_scheduler();
        };
        match s.handle_task_failed(&task, &peer, attempt, reason, now_ms) {
            Ok(()) => RpcResponse::Ok,
            Err(e) => RpcResponse::error(ErrorCode::NotFound, e.to_string()),
        }
    }

    /// `Cancel` from a creator (to its job's scheduler) or from a scheduler
    /// (to a worker running one of its tasks).
    pub(crate) fn rpc_cancel(
        &mut self,
        peer: NodeId,
        job: JobId,
        task: Option<u32>,
        now_ms: u64,
    ) -> RpcResponse {
        let mut handled = false;
        if let Some(s) = self.scheduler.as_mut()
            && s.jobs().any(|j| *j == job)
        {
            match s.cancel(&job, &peer, now_ms) {
                Ok(_) => {
                    self.sched_dirty = true;
                    handled = true;
                }
                Err(e) => return RpcResponse::error(ErrorCode::Forbidden, e.to_string()),
            }
        }
        // A worker stops tasks of the job that the asking scheduler offered it.
        let stop: Vec<(TaskId, u32)> = self
            .running
            .iter()
            .filter(|(t, r)| {
                t.job == job && r.scheduler == peer && task.is_none_or(|i| t.index == i)
            })
            .map(|(t, r)| (*t, r.attempt))
            .collect();
        for (t, attempt) in stop {
            self.stop_task(&t, attempt, now_ms);
            handled = true;
        }
        if handled {
            RpcResponse::Ok
        } else {
            RpcResponse::error(ErrorCode::NotFound, "no such job or task here")
        }
    }

    pub(crate) fn rpc_query(&mut self, peer: NodeId, job: JobId) -> RpcResponse {
        let Some(s) = self.scheduler.as_ref() else {
            return not_scheduler();
        };
        match s.job_view(&job) {
            Some(v) if v.creator == peer || peer == self.me => match codec::encode_local(&v) {
                Ok(view) if view.len() < rendertrust_protocol::rpc::MAX_RPC - 1024 => {
                    RpcResponse::View { view }
                }
                _ => RpcResponse::error(ErrorCode::Busy, "the job's view is too large to send"),
            },
            Some(_) => RpcResponse::error(ErrorCode::Forbidden, "only the job's creator may ask"),
            None => RpcResponse::error(ErrorCode::NotFound, "this scheduler does not hold the job"),
        }
    }

    pub(crate) fn rpc_replicate(
        &mut self,
        peer: NodeId,
        job: JobId,
        part: &[u8],
        now_ms: u64,
    ) -> RpcResponse {
        let Some(s) = self.scheduler.as_mut() else {
            return not_scheduler();
        };
        let part: SnapshotPart = match codec::decode(part, rendertrust_protocol::rpc::MAX_RPC) {
            Ok(p) => p,
            Err(e) => return RpcResponse::error(ErrorCode::Invalid, format!("snapshot part: {e}")),
        };
        if part.job != job {
            return RpcResponse::error(ErrorCode::Invalid, "snapshot part of another job");
        }
        match self.assembler.add(peer, part) {
            None => RpcResponse::Ok,
            Some(Err(e)) => RpcResponse::error(ErrorCode::Invalid, e.to_string()),
            Some(Ok(snapshot)) => match s.handle_replica(&peer, snapshot, now_ms) {
                Ok(()) => {
                    self.sched_dirty = true;
                    RpcResponse::Ok
                }
                Err(e) => RpcResponse::error(ErrorCode::Invalid, e.to_string()),
            },
        }
    }

    pub(crate) fn on_scheduler_action(&mut self, action: SchedulerAction, now_ms: u64) {
        match action {
            SchedulerAction::Offer {
                to,
                offer,
                spec_frame,
            } => self.send_offer(to, offer, spec_frame, None),
            SchedulerAction::OfferCrop {
                to,
                offer,
                crop,
                spec_frame,
            } => self.send_offer(to, offer, spec_frame, Some(crop)),
            SchedulerAction::Outcome {
                worker,
                task,
                attempt,
                outcome,
            } => {
                tracing::debug!(%worker, job = %hex::encode(task.job.0), task = task.index, attempt, ?outcome, "verification outcome");
                self.on_outcome(worker, outcome, now_ms);
            }
            SchedulerAction::CancelTask {
                worker,
                task,
                attempt: _,
            } => {
                let request = RpcRequest::Cancel {
                    job: task.job,
                    task: Some(task.index),
                };
                self.outbox.send(&self.rpc, worker, request, None);
            }
            SchedulerAction::Notify {
                creator,
                job,
                event,
            } => self.notify_creator(creator, job, event, now_ms),
            SchedulerAction::Escrow {
                task,
                attempt,
                worker,
                price,
            } => self.ledger_escrow(task, attempt, worker, price),
            SchedulerAction::Closed {
                task,
                attempt,
                worker,
                reason,
            } => {
                self.ledger_refund(task, attempt, worker, reason, now_ms);
                self.offers.remove(&(task, attempt));
            }
            SchedulerAction::Replicate { to, snapshot } => {
                for part in snapshot.to_parts() {
                    match codec::encode(&part) {
                        Ok(bytes) => {
                            let request = RpcRequest::Replicate {
                                job: snapshot.job(),
                                snapshot: bytes,
                            };
                            self.outbox.send(&self.rpc, to, request, None);
                        }
                        Err(e) => tracing::warn!(error = %e, "snapshot part does not encode"),
                    }
                }
            }
        }
    }

    /// Sends an offer (with `crop`: a spot-check line's `CropOffer`).
    fn send_offer(&mut self, to: NodeId, offer: TaskOffer, spec: Arc<[u8]>, crop: Option<Rect>) {
        let signed = match Signed::sign(&self.key, &offer) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign an offer");
                if let Some(s) = self.scheduler.as_mut() {
                    s.handle_undeliverable(&offer.task, offer.attempt, crate::net::unix_now_ms());
                }
                return;
            }
        };
        if self.offers.len() >= MAX_OFFER_FRAMES
            && let Some(first) = self.offers.keys().next().copied()
        {
            self.offers.remove(&first);
        }
        self.offers.insert(
            (offer.task, offer.attempt),
            OfferFrames {
                offer: signed.as_bytes().to_vec(),
                spec: spec.clone(),
                accept: None,
            },
        );
        let request = match crop {
            None => RpcRequest::Offer {
                offer: signed.into_bytes(),
                spec: spec.to_vec(),
            },
            Some(crop) => RpcRequest::CropOffer {
                offer: signed.into_bytes(),
                spec: spec.to_vec(),
                crop,
            },
        };
        let rpc = self.rpc.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            // One try: a lost offer lapses and the scheduler places the task again.
            let result = rpc.call(to, &request, 1).await;
            let _ = internal
                .send(Internal::OfferAnswer {
                    task: offer.task,
                    attempt: offer.attempt,
                    worker: to,
                    result,
                })
                .await;
        });
    }

    pub(crate) fn on_offer_answer(
        &mut self,
        task: TaskId,
        attempt: u32,
        worker: NodeId,
        result: Result<RpcResponse, String>,
        now_ms: u64,
    ) {
        let Some(s) = self.scheduler.as_mut() else {
            return;
        };
        let accept = match result {
            Ok(RpcResponse::Accept { accept }) => {
                match Signed::<TaskAccept>::from_slice(&accept).and_then(|f| f.verify()) {
                    Ok(a) if a.worker == worker && a.task == task && a.attempt == attempt => {
                        Some((a, accept))
                    }
                    Ok(_) => {
                        tracing::debug!(%worker, "accept for another task or worker");
                        None
                    }
                    Err(e) => {
                        tracing::debug!(%worker, error = %e, "bad accept");
                        None
                    }
                }
            }
            Ok(other) => {
                tracing::debug!(%worker, answer = ?other, "offer not answered with an accept");
                None
            }
            Err(e) => {
                tracing::debug!(%worker, error = %e, "offer not delivered");
                None
            }
        };
        match accept {
            Some((a, frame)) => match s.handle_accept(&a, now_ms) {
                Ok(AcceptOutcome::Assigned) => {
                    if let Some(f) = self.offers.get_mut(&(task, attempt)) {
                        f.accept = Some(frame);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(%worker, error = %e, "accept refused"),
            },
            None => s.handle_undeliverable(&task, attempt, now_ms),
        }
        self.sched_dirty = true;
    }

    /// `Compared`: the creator's answer to a spot-check `Compare` event.
    pub(crate) fn rpc_compared(
        &mut self,
        peer: NodeId,
        comparison: &Comparison,
        now_ms: u64,
    ) -> RpcResponse {
        let Some(s) = self.scheduler.as_mut() else {
            return not_scheduler();
        };
        match s.handle_comparison(&peer, comparison, now_ms) {
            Ok(()) => {
                self.sched_dirty = true;
                RpcResponse::Ok
            }
            Err(e @ ComparisonError::NotCreator { .. }) => {
                RpcResponse::error(ErrorCode::Forbidden, e.to_string())
            }
            Err(e) => RpcResponse::error(ErrorCode::NotFound, e.to_string()),
        }
    }

    /// `Unfetchable`: the creator lost every source of a done task's output.
    pub(crate) fn rpc_unfetchable(
        &mut self,
        peer: NodeId,
        task: TaskId,
        attempt: u32,
        now_ms: u64,
    ) -> RpcResponse {
        let Some(s) = self.scheduler.as_mut() else {
            return not_scheduler();
        };
        match s.handle_unfetchable(&peer, &task, attempt, now_ms) {
            Ok(()) => {
                tracing::info!(job = %hex::encode(task.job.0), task = task.index, attempt, "the creator could not fetch the result; the task runs again");
                self.sched_dirty = true;
                RpcResponse::Ok
            }
            Err(e @ UnfetchableError::NotCreator { .. }) => {
                RpcResponse::error(ErrorCode::Forbidden, e.to_string())
            }
            Err(e) => RpcResponse::error(ErrorCode::NotFound, e.to_string()),
        }
    }

    fn notify_creator(&mut self, creator: NodeId, job: JobId, event: JobEvent, now_ms: u64) {
        if creator == self.me {
            let from = self.me;
            self.on_job_event(from, job, event, now_ms);
            return;
        }
        match codec::encode(&event) {
            Ok(bytes) => {
                let request = RpcRequest::Event { job, event: bytes };
                self.outbox.send(&self.rpc, creator, request, None);
            }
            Err(e) => tracing::warn!(error = %e, "job event does not encode"),
        }
    }

    /// Publishes the escrow bundle of an accepted attempt (ledger peers act on it).
    pub(crate) fn ledger_escrow(&mut self, task: TaskId, attempt: u32, worker: NodeId, price: u64) {
        let Some(frames) = self.offers.get(&(task, attempt)) else {
            tracing::warn!(
                task = task.index,
                attempt,
                "escrow of an offer this node does not hold"
            );
            return;
        };
        let Some(accept) = &frames.accept else {
            tracing::warn!(
                task = task.index,
                attempt,
                "escrow before the accept arrived"
            );
            return;
        };
        let parts = (
            Signed::<JobSpec>::from_slice(&frames.spec),
            Signed::<TaskOffer>::from_slice(&frames.offer),
            Signed::<TaskAccept>::from_slice(accept),
        );
        let (Ok(spec), Ok(offer), Ok(accept)) = parts else {
            tracing::warn!(task = task.index, attempt, "escrow frames do not parse");
            return;
        };
        tracing::debug!(job = %hex::encode(task.job.0), task = task.index, attempt, %worker, price, "escrow");
        self.publish_ledger(LedgerEvent::Escrow {
            spec,
            offer,
            accept,
        });
    }

    /// Publishes the refund of an escrowed attempt that will not be paid.
    pub(crate) fn ledger_refund(
        &mut self,
        task: TaskId,
        attempt: u32,
        worker: NodeId,
        reason: CloseReason,
        now_ms: u64,
    ) {
        let outcome = reason.outcome();
        let closed = TaskClosed {
            task,
            attempt,
            worker,
            scheduler: self.me,
            outcome,
            closed_at_ms: now_ms,
        };
        match Signed::sign(&self.key, &closed) {
            Ok(closed) => self.publish_ledger(LedgerEvent::Refund { closed }),
            Err(e) => tracing::warn!(error = %e, "cannot sign a refund"),
        }
    }

    /// Publishes a ledger event on the receipts topic (best effort: ledger
    /// peers that missed it reconcile receipts with each other; an escrow or
    /// refund lost for good expires at the job deadline).
    pub(crate) fn publish_ledger(&mut self, event: LedgerEvent) {
        let bytes = match event.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "ledger event does not encode");
                return;
            }
        };
        if let Some(tx) = &self.ledger_local {
            let _ = tx.try_send(super::service::LocalLedger::Event(bytes.clone()));
        }
        let net = self.net.clone();
        tokio::spawn(async move {
            // Gossipsub refuses to publish until it knows a subscribed peer:
            // retry a few times while the mesh forms.
            for attempt in 0..10u32 {
                match net.publish(Topic::Receipts, bytes.clone()).await {
                    Ok(()) => return,
                    Err(e) if attempt == 9 => {
                        tracing::warn!(error = %e, "publishing a ledger event")
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
                }
            }
        });
    }
}
