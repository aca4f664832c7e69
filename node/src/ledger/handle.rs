//! [`LedgerHandle`]: how the API talks to this node's ledger service (a
//! bounded command queue, each command answered on its own oneshot channel),
//! and the service's error type.

use rendertrust_protocol::ledger::LedgerEvent;
use rendertrust_protocol::ledger::wire::{RollupRequest, RollupResponse};
use tokio::sync::{mpsc, oneshot};

use super::view::{EpochsView, LedgerStatusView};

/// Commands waiting for the ledger service, at most.
pub const COMMAND_QUEUE: usize = 64;

/// Errors of ledger commands.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The event was refused (the reason says why).
    #[error("{0}")]
    Refused(String),
    /// The ledger service failed.
    #[error("{0}")]
    Internal(String),
    /// The ledger service has stopped.
    #[error("the ledger service has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// A command to the ledger service.
#[derive(Debug)]
pub enum LedgerCommand {
    /// A question peers may ask too, answered exactly as for a peer.
    Ask(Box<RollupRequest>, Reply<RollupResponse>),
    /// The epochs held (the newest `limit`).
    Epochs(usize, Reply<EpochsView>),
    /// Counters.
    Status(Reply<LedgerStatusView>),
    /// Apply an event from this node (e.g. a mint posted to the API);
    /// answers what the ledger did with it.
    Ingest(Box<LedgerEvent>, Reply<String>),
}

/// The API's handle on the ledger service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LedgerHandle {
    commands: mpsc::Sender<LedgerCommand>,
}

impl LedgerHandle {
    /// A handle and the queue the service reads.
    pub fn channel() -> (LedgerHandle, mpsc::Receiver<LedgerCommand>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        (LedgerHandle { commands: tx }, rx)
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> LedgerCommand,
    ) -> Result<T, LedgerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Asks this node's ledger what a peer would ask it.
    pub async fn ask(&self, request: RollupRequest) -> Result<RollupResponse, LedgerError> {
        self.call(|r| LedgerCommand::Ask(Box::new(request), r))
            .await
    }

    /// The newest `limit` epochs.
    pub async fn epochs(&self, limit: usize) -> Result<EpochsView, LedgerError> {
        self.call(|r| LedgerCommand::Epochs(limit, r)).await
    }

    /// Counters.
    pub async fn status(&self) -> Result<LedgerStatusView, LedgerError> {
        self.call(LedgerCommand::Status).await
    }

    /// Applies an event from this node.
    pub async fn ingest(&self, event: LedgerEvent) -> Result<String, LedgerError> {
        self.call(|r| LedgerCommand::Ingest(Box::new(event), r))
            .await
    }
}
