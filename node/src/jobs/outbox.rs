//! Ordered, bounded delivery of rpc requests to peers.
//!
//! Each destination gets one sender task that sends its queue in order (a
//! task's `Progress` never overtakes its `Result`, a job's events reach the
//! creator in the order the scheduler made them), retrying a failed request
//! a bounded number of times. Queues are bounded ([`QUEUE`] per peer): when a
//! peer's queue is full the newest request is dropped and logged, which only
//! ever loses best-effort traffic (progress, events the creator also learns
//! by querying). A sender task ends after [`IDLE`] without work.

use std::collections::BTreeMap;
use std::time::Duration;

use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::rpc::{RpcRequest, RpcResponse};
use tokio::sync::{mpsc, oneshot};

use super::service::Internal;
use crate::net::{NetHandle, Service};

/// Requests queued per destination, at most.
pub const QUEUE: usize = 512;
/// Tries per request.
pub const TRIES: u32 = 3;
/// Wait between tries (times the try number).
pub const RETRY: Duration = Duration::from_millis(500);
/// A sender task with nothing to do ends after this long.
pub const IDLE: Duration = Duration::from_secs(60);

/// What to do with the answer.
pub type OnAnswer = Box<dyn FnOnce(Result<RpcResponse, String>) + Send>;

struct Queued {
    request: RpcRequest,
    on_answer: Option<OnAnswer>,
}

/// Per-destination ordered senders.
#[derive(Default)]
pub struct Outbox {
    queues: BTreeMap<NodeId, mpsc::Sender<Queued>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("peers", &self.queues.len())
            .finish()
    }
}

/// Sends rpc requests to peers, or to this node's own service (a node is
/// often its own scheduler, worker and creator at once: those requests go
/// through the service's queue, never through the network).
#[derive(Clone, Debug)]
pub struct RpcClient {
    /// The network.
    pub net: NetHandle,
    /// This node.
    pub me: NodeId,
    /// The service's queue (for requests to this node).
    pub(crate) local: mpsc::Sender<Internal>,
}

impl RpcClient {
    /// Sends one request, trying up to `tries` times; the decoded answer or why not.
    pub async fn call(
        &self,
        to: NodeId,
        request: &RpcRequest,
        tries: u32,
    ) -> Result<RpcResponse, String> {
        if to == self.me {
            let (reply, rx) = oneshot::channel();
            self.local
                .send(Internal::LocalRpc {
                    request: Box::new(request.clone()),
                    reply,
                })
                .await
                .map_err(|_| "the job service has stopped".to_owned())?;
            return rx
                .await
                .map_err(|_| "the job service dropped the request".to_owned());
        }
        let bytes = request.encode().map_err(|e| e.to_string())?;
        let mut last = String::new();
        for attempt in 1..=tries.max(1) {
            match self.net.request(to, Service::Rpc, bytes.clone()).await {
                Ok(answer) => {
                    return RpcResponse::decode(&answer)
                        .map_err(|e| format!("bad answer from {to}: {e}"));
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < tries {
                tokio::time::sleep(RETRY * attempt).await;
            }
        }
        Err(last)
    }
}

impl Outbox {
    /// Queues `request` for `to`; `on_answer` (if any) gets the answer or the
    /// last error. Returns false if the request was dropped.
    pub fn send(
        &mut self,
        client: &RpcClient,
        to: NodeId,
        request: RpcRequest,
        on_answer: Option<OnAnswer>,
    ) -> bool {
        if let Err(e) = request.validate() {
            tracing::warn!(%to, error = %e, "not sending an unencodable request");
            if let Some(f) = on_answer {
                f(Err(e.to_string()));
            }
            return false;
        }
        let mut item = Queued { request, on_answer };
        for _ in 0..2 {
            let tx = match self.queues.get(&to) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(drain(client.clone(), to, rx));
                    self.queues.insert(to, tx.clone());
                    tx
                }
            };
            match tx.try_send(item) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    tracing::warn!(%to, "outbox full: request dropped");
                    if let Some(f) = back.on_answer {
                        f(Err("outbox full".into()));
                    }
                    return false;
                }
                // The sender task ended between the check and the send: start another.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    self.queues.remove(&to);
                    item = back;
                }
            }
        }
        false
    }
}

async fn drain(client: RpcClient, to: NodeId, mut rx: mpsc::Receiver<Queued>) {
    loop {
        let Ok(Some(item)) = tokio::time::timeout(IDLE, rx.recv()).await else {
            return;
        };
        let result = client.call(to, &item.request, TRIES).await;
        if let Err(e) = &result {
            tracing::debug!(%to, error = %e, "request failed");
        }
        if let Some(f) = item.on_answer {
            f(result);
        }
    }
}
