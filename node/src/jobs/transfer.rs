//! Content over the mesh: serving manifests and sealed chunks from the
//! node's [`ContentStore`], and fetching them from a peer
//! ([`PeerSource`], a [`ChunkSource`] over the `content` service).
//!
//! Anyone may ask for content by id: it is sealed (useless without the job
//! key) and content-addressed (the asker verifies every chunk). Answers are
//! bounded by `rendertrust_protocol::rpc`.

use rendertrust_protocol::content::{ContentId, Manifest};
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::rpc::{ContentRequest, ContentResponse};

use crate::content::{ChunkSource, ContentStore};
use crate::net::{InboundRequest, NetHandle, Service};

/// Why a content request to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The request did not get through.
    #[error("{0}")]
    Net(String),
    /// The peer answered something unusable.
    #[error("peer {peer}: {reason}")]
    Answer {
        /// The peer.
        peer: NodeId,
        /// What was wrong.
        reason: String,
    },
}

/// A peer holding content, as a [`ChunkSource`].
#[derive(Debug, Clone)]
pub struct PeerSource {
    /// The network.
    pub net: NetHandle,
    /// The peer.
    pub peer: NodeId,
}

impl PeerSource {
    async fn ask(&self, request: ContentRequest) -> Result<ContentResponse, TransferError> {
        let bytes = request
            .encode()
            .map_err(|e| TransferError::Net(e.to_string()))?;
        let answer = self
            .net
            .request(self.peer, Service::Content, bytes)
            .await
            .map_err(|e| TransferError::Net(e.to_string()))?;
        ContentResponse::decode(&answer).map_err(|e| TransferError::Answer {
            peer: self.peer,
            reason: e.to_string(),
        })
    }

    fn unexpected(&self, what: &ContentResponse) -> TransferError {
        let reason = match what {
            ContentResponse::NotFound => "does not hold it".to_owned(),
            ContentResponse::Refused { reason } => format!("refused: {reason}"),
            _ => "answered the wrong kind of message".to_owned(),
        };
        TransferError::Answer {
            peer: self.peer,
            reason,
        }
    }
}

impl ChunkSource for PeerSource {
    type Error = TransferError;

    async fn get_manifest(&self, id: ContentId) -> Result<Manifest, TransferError> {
        match self.ask(ContentRequest::Manifest { id }).await? {
            ContentResponse::Manifest { manifest } => Ok(manifest),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn get_chunk(&self, id: ContentId, index: u32) -> Result<Vec<u8>, TransferError> {
        match self.ask(ContentRequest::Chunk { id, index }).await? {
            ContentResponse::Chunk { bytes } => Ok(bytes),
            other => Err(self.unexpected(&other)),
        }
    }
}

/// Answers one content request from the store (reads run on the blocking
/// pool). A request that does not decode is reported to `net` as malformed.
pub async fn serve(store: ContentStore, net: crate::net::NetHandle, request: InboundRequest) {
    let answer = match ContentRequest::decode(&request.bytes) {
        Err(e) => {
            let _ = net
                .offence(request.peer, crate::net::guard::Offence::Malformed)
                .await;
            ContentResponse::Refused {
                reason: format!("malformed request: {e}"),
            }
        }
        Ok(ContentRequest::Manifest { id }) => match store.get_manifest(&id) {
            Some(m) => ContentResponse::Manifest {
                manifest: (*m).clone(),
            },
            None => ContentResponse::NotFound,
        },
        Ok(ContentRequest::Chunk { id, index }) => {
            let read = tokio::task::spawn_blocking(move || store.get_chunk(&id, index)).await;
            match read {
                Ok(Ok(bytes)) => ContentResponse::Chunk { bytes },
                Ok(Err(e)) => {
                    tracing::debug!(%id, index, error = %e, "content request not served");
                    ContentResponse::NotFound
                }
                Err(e) => ContentResponse::Refused {
                    reason: format!("internal error: {e}"),
                },
            }
        }
    };
    match answer.encode() {
        Ok(bytes) => {
            let _ = request.reply.send(bytes);
        }
        Err(e) => tracing::warn!(error = %e, "content answer does not encode"),
    }
}
