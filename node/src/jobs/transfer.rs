//! Content over the mesh: serving manifests and sealed chunks from the
//! node's [`ContentStore`], and fetching them from a peer
//! ([`PeerSource`], a [`ChunkSource`] over the `content` service for
//! manifests and single chunks, and over chunk streams for bulk).
//!
//! # Chunk streams (`/rendertrust/chunks/1`)
//!
//! A fetch asks for up to [`CHUNK_BATCH`] chunks on one raw libp2p stream
//! ([`rendertrust_protocol::rpc::ChunkStreamRequest`], length-prefixed), and
//! the holder answers each in order with a 9-byte header and the raw sealed
//! bytes. The asker knows every chunk's length from the manifest it
//! verified, checks the header against it before reading, and verifies each
//! chunk's hash before it is stored ([`crate::content::fetch_content`]), so
//! nothing a peer sends is trusted or allocated beyond the manifest's bounds.
//! A holder serves at most [`MAX_SERVED_STREAMS`] streams at once and
//! [`MAX_STREAMS_PER_PEER`] per peer (further streams are dropped at once),
//! gives the asker [`STREAM_REQUEST_TIMEOUT`] to send its request and ends a
//! stream whose reader stalls for [`CONTENT_TIMEOUT`]. The decision and the
//! figures behind it are in `docs/jobs.md` ("Data plane").
//!
//! Anyone may ask for content by id: it is sealed (useless without the job
//! key) and content-addressed (the asker verifies every chunk). Answers are
//! bounded by `rendertrust_protocol::rpc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use rendertrust_protocol::content::{CHUNK_SIZE, ContentId, Manifest};
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::rpc::{
    CHUNK_FRAME_HEADER, ChunkFrameHeader, ChunkStatus, ChunkStreamRequest, ContentRequest,
    ContentResponse, MAX_STREAM_REQUEST,
};

use crate::content::{ChunkAnswers, ChunkBuf, ChunkSource, ContentStore};
use crate::net::reqres::CONTENT_TIMEOUT;
use crate::net::{InboundRequest, NetHandle, Service};

/// Chunks asked for on one stream (64 MiB of 1 MiB chunks): long enough
/// that opening a stream is rare, short enough that a stream broken midway
/// costs little to redo.
pub const CHUNK_BATCH: usize = 64;
/// Chunk streams served at once, all peers together.
pub const MAX_SERVED_STREAMS: usize = 64;
/// Chunk streams served at once to one peer.
/// A fetch keeps two open, so a worker can fetch four inputs of one
/// creator at once before it has to wait.
pub const MAX_STREAMS_PER_PEER: usize = 8;
/// Times a stream the holder dropped before answering is opened again
/// (see `PeerSource::stream_chunks_inner`), pausing [`REFUSAL_PAUSE`]
/// doubled after each refusal, at most [`MAX_REFUSAL_PAUSE`]: about 7 s in
/// all, time for a busy holder's batches to end even on a slow link.
const MAX_REFUSALS: u32 = 8;
/// See [`MAX_REFUSALS`].
const REFUSAL_PAUSE: Duration = Duration::from_millis(50);
/// See [`MAX_REFUSALS`].
const MAX_REFUSAL_PAUSE: Duration = Duration::from_secs(2);

/// Whether an I/O error on a fresh chunk stream is the holder dropping it
/// unanswered (reset, stopped, or ended before the first header).
fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::NotConnected
    )
}

/// How long a peer that opened a chunk stream has to send its request.
pub const STREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a content request to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// Fetches `chunks` (index, expected length) on one chunk stream and
    /// sends each answer to `tx` in order. A failure of the stream itself
    /// fails every chunk not yet answered (the fetcher retries them).
    async fn stream_chunks(
        &self,
        id: ContentId,
        chunks: Vec<(u32, u32)>,
        tx: tokio::sync::mpsc::Sender<(u32, Result<ChunkBuf, TransferError>)>,
    ) {
        let mut done = 0usize;
        let failure = match self.stream_chunks_inner(id, &chunks, &tx, &mut done).await {
            Ok(()) => return,
            Err(e) => e,
        };
        tracing::debug!(peer = %self.peer, %id, error = %failure, "chunk stream failed");
        for (index, _) in chunks.iter().skip(done) {
            if tx.send((*index, Err(failure.clone()))).await.is_err() {
                return;
            }
        }
    }

    async fn stream_chunks_inner(
        &self,
        id: ContentId,
        chunks: &[(u32, u32)],
        tx: &tokio::sync::mpsc::Sender<(u32, Result<ChunkBuf, TransferError>)>,
        done: &mut usize,
    ) -> Result<(), TransferError> {
        let request = ChunkStreamRequest {
            id,
            indices: chunks.iter().map(|(i, _)| *i).collect(),
        }
        .encode()
        .map_err(|e| TransferError::Net(format!("chunk request: {e}")))?;
        let net_err = |what: &str, e: std::io::Error| TransferError::Net(format!("{what}: {e}"));
        let len = u32::try_from(request.len())
            .map_err(|_| TransferError::Net("chunk request too long".to_owned()))?;
        let mut framed = Vec::with_capacity(4 + request.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&request);
        // A holder drops a stream it cannot take at once (libp2p-stream
        // hands over one new stream at a time, and a holder bounds how many
        // it serves): such a refusal comes before the first header, costs
        // the holder nothing, and is tried again here after a short pause
        // rather than counted as a failed attempt of every chunk.
        let mut refusals = 0u32;
        let (mut stream, head) = loop {
            let mut stream = self
                .net
                .open_chunk_stream(self.peer)
                .await
                .map_err(|e| TransferError::Net(e.to_string()))?;
            let mut head = [0u8; CHUNK_FRAME_HEADER];
            let first = async {
                timed(stream.write_all(&framed)).await?;
                timed(stream.flush()).await?;
                timed(stream.read_exact(&mut head)).await
            }
            .await;
            match first {
                Ok(()) => break (stream, head),
                Err(e) if refusals < MAX_REFUSALS && refused(&e) => {
                    refusals += 1;
                    tracing::debug!(peer = %self.peer, refusals, error = %e, "chunk stream refused, opening another");
                    let pause = REFUSAL_PAUSE.saturating_mul(1 << (refusals - 1).min(8));
                    tokio::time::sleep(pause.min(MAX_REFUSAL_PAUSE)).await;
                }
                Err(e) => return Err(net_err("chunk stream", e)),
            }
        };
        let mut head = Some(head);
        for &(index, expected) in chunks {
            let head = match head.take() {
                Some(h) => h,
                None => {
                    let mut h = [0u8; CHUNK_FRAME_HEADER];
                    timed(stream.read_exact(&mut h))
                        .await
                        .map_err(|e| net_err("reading chunk header", e))?;
                    h
                }
            };
            let header = ChunkFrameHeader::from_bytes(head).map_err(|e| self.answer(e))?;
            if header.index != index {
                return Err(self.answer(format!(
                    "answered chunk {} where chunk {index} was due",
                    header.index
                )));
            }
            let answer = match header.status {
                ChunkStatus::NotFound => Err(self.answer(format!("does not hold chunk {index}"))),
                ChunkStatus::Chunk if header.len != expected => {
                    return Err(self.answer(format!(
                        "chunk {index} must be {expected} bytes by the manifest, header says {}",
                        header.len
                    )));
                }
                ChunkStatus::Chunk => {
                    // Aligned, so the store writes it with O_DIRECT as it
                    // is; recycled (content::buf).
                    let mut bytes = ChunkBuf::for_overwrite(expected as usize);
                    timed(stream.read_exact(bytes.as_mut_slice()))
                        .await
                        .map_err(|e| net_err("reading chunk", e))?;
                    Ok(bytes)
                }
            };
            *done += 1;
            if tx.send((index, answer)).await.is_err() {
                // The fetcher gave up: dropping the stream resets it.
                return Ok(());
            }
        }
        let _ = stream.close().await;
        Ok(())
    }

    fn answer(&self, reason: impl std::fmt::Display) -> TransferError {
        TransferError::Answer {
            peer: self.peer,
            reason: reason.to_string(),
        }
    }

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

    fn batch_size(&self) -> usize {
        CHUNK_BATCH
    }

    fn get_chunks(
        &self,
        id: ContentId,
        chunks: Vec<(u32, u32)>,
    ) -> ChunkAnswers<'_, TransferError> {
        // The stream is driven by its own task, one chunk ahead of the
        // fetcher (the channel holds one), so reading the next chunk off the
        // network overlaps storing this one. Dropping the returned stream
        // ends the task and resets the libp2p stream.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let source = self.clone();
        tokio::spawn(async move { source.stream_chunks(id, chunks, tx).await });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|answer| (answer, rx))
        })
        .boxed()
    }

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
            let read = tokio::task::spawn_blocking(move || {
                let mut bytes = Vec::new();
                store
                    .serve_chunk_into(&id, index, &mut bytes)
                    .map(|()| bytes)
            })
            .await;
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

/// Bounds an I/O step on a chunk stream by [`CONTENT_TIMEOUT`].
async fn timed<T>(
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(CONTENT_TIMEOUT, step)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no progress for {} s", CONTENT_TIMEOUT.as_secs()),
            )
        })?
}

/// Serves the chunk streams peers open to this node from `store` until the
/// network stops (see the module docs for the bounds).
pub async fn serve_chunk_streams(
    store: ContentStore,
    net: NetHandle,
    mut incoming: libp2p_stream::IncomingStreams,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SERVED_STREAMS));
    let per_peer: Arc<Mutex<HashMap<libp2p::PeerId, usize>>> = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(node) = NodeId::from_peer_id(&peer) else {
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "chunk stream dropped: {MAX_SERVED_STREAMS} served already");
            continue;
        };
        let Some(peer_slot) = PeerSlot::take(&per_peer, peer) else {
            tracing::debug!(%peer, "chunk stream dropped: {MAX_STREAMS_PER_PEER} served to this peer already");
            continue;
        };
        let (store, net) = (store.clone(), net.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_chunk_stream(&store, &net, node, stream).await {
                tracing::debug!(%peer, error = %e, "chunk stream ended early");
            }
            drop(peer_slot);
            drop(permit);
        });
    }
}

/// One of a peer's [`MAX_STREAMS_PER_PEER`] slots, given back on drop.
struct PeerSlot {
    table: Arc<Mutex<HashMap<libp2p::PeerId, usize>>>,
    peer: libp2p::PeerId,
}

impl PeerSlot {
    fn take(
        table: &Arc<Mutex<HashMap<libp2p::PeerId, usize>>>,
        peer: libp2p::PeerId,
    ) -> Option<Self> {
        let mut t = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = t.entry(peer).or_insert(0);
        if *n >= MAX_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            table: Arc::clone(table),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut t = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = t.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.peer);
            }
        }
    }
}

/// Serves one chunk stream: reads the request, then writes each chunk (read
/// from the store one ahead of the network) or a "not found" header.
async fn serve_chunk_stream(
    store: &ContentStore,
    net: &NetHandle,
    peer: NodeId,
    mut stream: libp2p::Stream,
) -> std::io::Result<()> {
    let request = tokio::time::timeout(STREAM_REQUEST_TIMEOUT, async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_STREAM_REQUEST {
            return Ok::<_, std::io::Error>(Err(format!(
                "request of {len} bytes, at most {MAX_STREAM_REQUEST} allowed"
            )));
        }
        let mut bytes = vec![0u8; len];
        stream.read_exact(&mut bytes).await?;
        Ok(ChunkStreamRequest::decode(&bytes).map_err(|e| e.to_string()))
    })
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no chunk request within the timeout",
        )
    })??;
    let request = match request {
        Ok(r) => r,
        Err(reason) => {
            let _ = net
                .offence(peer, crate::net::guard::Offence::Malformed)
                .await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("malformed chunk request: {reason}"),
            ));
        }
    };
    let id = request.id;
    let read = |index: u32| {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            // A recycled allocation (content::buf): no fresh pages to fault
            // in and zero for every megabyte served.
            let mut buf = crate::content::buf::take_vec(CHUNK_SIZE as usize);
            let read = store.serve_chunk_into(&id, index, &mut buf);
            read.map(|()| ChunkBuf::from(buf))
        })
    };
    let mut indices = request.indices.into_iter();
    let mut next = indices.next().map(|i| (i, read(i)));
    while let Some((index, pending)) = next.take() {
        next = indices.next().map(|i| (i, read(i)));
        let bytes = match pending.await {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(e)) => {
                tracing::debug!(%id, index, error = %e, "chunk not served");
                None
            }
            Err(e) => {
                return Err(std::io::Error::other(format!("store task: {e}")));
            }
        };
        let header = match &bytes {
            Some(b) => ChunkFrameHeader {
                index,
                status: ChunkStatus::Chunk,
                len: u32::try_from(b.len()).unwrap_or(u32::MAX),
            },
            None => ChunkFrameHeader {
                index,
                status: ChunkStatus::NotFound,
                len: 0,
            },
        };
        timed(stream.write_all(&header.to_bytes())).await?;
        if let Some(b) = &bytes {
            timed(stream.write_all(b)).await?;
        }
    }
    timed(stream.close()).await
}
