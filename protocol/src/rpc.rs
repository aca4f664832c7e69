//! Request/response envelopes of the `rpc` and `content` services.
//!
//! # What this module owns
//!
//! The typed messages that travel point to point between the peers of a job
//! (see `docs/jobs.md`, "Messages between peers"), their encoding through
//! [`crate::codec`] and their bounds. The transport (`node::net::reqres`)
//! carries opaque length-prefixed bytes of at most 4 MiB (rpc) or 4 KiB
//! requests / 4 MiB responses (content); this module decodes them again
//! with its own limits, rejects trailing and non-canonical bytes, and checks
//! every field bound ([`RpcRequest::validate`]) before a machine sees it.
//!
//! Signed frames travel inside as `Vec<u8>`: the receiver verifies them with
//! [`crate::signed::Signed`]; the envelope itself is authenticated by the
//! transport (the remote peer id), not signed.
//!
//! # What it must not do
//!
//! No rules about *when* a message is acceptable: that is the machines'
//! business (`scheduler`, `worker`, `creator`). Only shape and size.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::content::{ContentId, Manifest};
use crate::creator::ResultFrames;
use crate::seal::WrappedKey;
use crate::signed::Signed;
use crate::task::Rect;
use crate::verify::Comparison;
use crate::wire::{JobId, JobSpec, Progress, Receipt, TaskId, TaskOffer, TaskResult, WireMessage};

/// Largest encoded rpc request or response.
pub const MAX_RPC: usize = 4 << 20;
/// Largest encoded content request.
pub const MAX_CONTENT_REQUEST: usize = 4 << 10;
/// Largest encoded content response: the codec's 4 MiB, so a manifest of up
/// to ~131k chunks (128 GiB at 1 MiB chunks) and chunks of up to 4 MiB.
pub const MAX_CONTENT_RESPONSE: usize = codec::MAX_FRAME;
/// Longest reason / message text.
pub const MAX_REASON: usize = 1024;

/// Errors decoding or bounding an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The bytes do not decode.
    #[error("malformed message: {0}")]
    Codec(#[from] CodecError),
    /// A field is out of bounds.
    #[error("field {field}: at most {max} allowed, found {found}")]
    TooLong {
        /// Field.
        field: &'static str,
        /// Bound.
        max: usize,
        /// Found.
        found: usize,
    },
    /// A field's value makes no sense.
    #[error("field {field}: {reason}")]
    Invalid {
        /// Field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn bound(field: &'static str, found: usize, max: usize) -> Result<(), RpcError> {
    if found > max {
        Err(RpcError::TooLong { field, max, found })
    } else {
        Ok(())
    }
}

fn bound_frame<T: WireMessage>(field: &'static str, frame: &[u8]) -> Result<(), RpcError> {
    bound(field, frame.len(), Signed::<T>::MAX_FRAME)
}

/// A request on the rpc service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Creator → scheduler: a `Signed<JobSpec>`.
    Submit {
        /// The signed spec frame.
        spec: Vec<u8>,
    },
    /// Scheduler → worker: a `Signed<TaskOffer>` and the job's `Signed<JobSpec>`.
    Offer {
        /// The signed offer frame.
        offer: Vec<u8>,
        /// The signed spec frame.
        spec: Vec<u8>,
    },
    /// Worker → scheduler: a `Signed<Progress>` (also the heartbeat).
    Progress {
        /// The signed progress frame.
        progress: Vec<u8>,
    },
    /// Worker → scheduler: a finished task's offer, result and receipt.
    Result {
        /// The frames.
        frames: ResultFrames,
    },
    /// Worker → scheduler: a task failed on this worker.
    TaskFailed {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// Why, for the creator.
        reason: String,
    },
    /// Worker → creator: the job key, proving the assignment with the offer.
    Key {
        /// The signed offer frame.
        offer: Vec<u8>,
    },
    /// Creator → scheduler, or scheduler → worker: stop a job (or one task).
    Cancel {
        /// The job.
        job: JobId,
        /// One task only, if given.
        task: Option<u32>,
    },
    /// Scheduler → creator: something happened to the job (encoded
    /// `scheduler::JobEvent`; decoded by the creator's driver with its own bound).
    Event {
        /// The job.
        job: JobId,
        /// The encoded event.
        event: Vec<u8>,
    },
    /// Creator → scheduler: the scheduler's view of the job.
    Query {
        /// The job.
        job: JobId,
    },
    /// Creator → worker: the signed frames of a result the scheduler reported
    /// done (when the event that carried them was lost).
    ResultOf {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Scheduler → replica: the state of a job (encoded snapshot).
    Replicate {
        /// The job.
        job: JobId,
        /// The encoded snapshot.
        snapshot: Vec<u8>,
    },
    /// Scheduler → worker: like `Offer`, for a spot-check line: the worker
    /// renders only `crop` (frame coordinates, inside the task's region) and
    /// answers like an offer. Its output is an image of the crop's size.
    CropOffer {
        /// The signed offer frame.
        offer: Vec<u8>,
        /// The signed spec frame.
        spec: Vec<u8>,
        /// The pixels to render.
        crop: Rect,
    },
    /// Creator → scheduler: a spot-check comparison, answering a
    /// `JobEvent::Compare` (`Scheduler::handle_comparison`).
    Compared {
        /// What the creator found.
        comparison: Comparison,
    },
    /// Creator → scheduler: the output of the task's winning result
    /// (`attempt`) could not be fetched from any source, or did not match its
    /// signed hash (`Scheduler::handle_unfetchable`): run the task again.
    Unfetchable {
        /// The task.
        task: TaskId,
        /// The attempt whose output is lost.
        attempt: u32,
    },
}

/// Why a request was refused, in a form a peer can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or fails a check.
    Invalid,
    /// The peer is not allowed to ask this.
    Forbidden,
    /// The job or task is unknown here.
    NotFound,
    /// The job or task is cancelled or closed.
    Closed,
    /// Try again later.
    Busy,
    /// This node does not take that role.
    WrongRole,
}

/// An answer on the rpc service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Done.
    Ok,
    /// The worker's signed answer to an offer (accepted or declined).
    Accept {
        /// The signed `TaskAccept` frame.
        accept: Vec<u8>,
    },
    /// The job key, wrapped to the asking worker.
    Key {
        /// The wrapped key.
        wrapped: WrappedKey,
    },
    /// A result's signed frames.
    Result {
        /// The frames.
        frames: ResultFrames,
    },
    /// The scheduler's view of a job (encoded `scheduler::JobView`).
    View {
        /// The encoded view.
        view: Vec<u8>,
    },
    /// Refused.
    Error {
        /// What kind of refusal.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
}

impl RpcRequest {
    /// Field bounds beyond the size limit.
    pub fn validate(&self) -> Result<(), RpcError> {
        match self {
            RpcRequest::Submit { spec } => bound_frame::<JobSpec>("spec", spec),
            RpcRequest::Offer { offer, spec } => {
                bound_frame::<TaskOffer>("offer", offer)?;
                bound_frame::<JobSpec>("spec", spec)
            }
            RpcRequest::Progress { progress } => bound_frame::<Progress>("progress", progress),
            RpcRequest::Result { frames } => {
                bound_frame::<TaskOffer>("offer", &frames.offer)?;
                bound_frame::<TaskResult>("result", &frames.result)?;
                bound_frame::<Receipt>("receipt", &frames.receipt)
            }
            RpcRequest::TaskFailed { reason, .. } => bound("reason", reason.len(), MAX_REASON),
            RpcRequest::Key { offer } => bound_frame::<TaskOffer>("offer", offer),
            RpcRequest::Cancel { .. } | RpcRequest::Query { .. } | RpcRequest::ResultOf { .. } => {
                Ok(())
            }
            RpcRequest::Event { event, .. } => bound("event", event.len(), 64 << 10),
            RpcRequest::Replicate { snapshot, .. } => {
                bound("snapshot", snapshot.len(), MAX_RPC - 1024)
            }
            RpcRequest::CropOffer { offer, spec, crop } => {
                bound_frame::<TaskOffer>("offer", offer)?;
                bound_frame::<JobSpec>("spec", spec)?;
                if crop.w == 0 || crop.h == 0 {
                    return Err(RpcError::Invalid {
                        field: "crop",
                        reason: "an empty crop; expected at least 1x1 pixels",
                    });
                }
                Ok(())
            }
            RpcRequest::Compared { .. } | RpcRequest::Unfetchable { .. } => Ok(()),
        }
    }

    /// Encodes a request.
    pub fn encode(&self) -> Result<Vec<u8>, RpcError> {
        self.validate()?;
        Ok(codec::encode(self)?)
    }

    /// Decodes and bounds a request from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, RpcError> {
        let r: RpcRequest = codec::decode(bytes, MAX_RPC)?;
        r.validate()?;
        Ok(r)
    }
}

impl RpcResponse {
    /// A refusal.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        RpcResponse::Error { code, message }
    }

    /// Field bounds beyond the size limit.
    pub fn validate(&self) -> Result<(), RpcError> {
        match self {
            RpcResponse::Ok | RpcResponse::Key { .. } => Ok(()),
            RpcResponse::Accept { accept } => {
                bound_frame::<crate::wire::TaskAccept>("accept", accept)
            }
            RpcResponse::View { view } => bound("view", view.len(), MAX_RPC - 1024),
            RpcResponse::Result { frames } => {
                bound_frame::<TaskOffer>("offer", &frames.offer)?;
                bound_frame::<TaskResult>("result", &frames.result)?;
                bound_frame::<Receipt>("receipt", &frames.receipt)
            }
            RpcResponse::Error { message, .. } => bound("message", message.len(), MAX_REASON),
        }
    }

    /// Encodes a response.
    pub fn encode(&self) -> Result<Vec<u8>, RpcError> {
        self.validate()?;
        Ok(codec::encode(self)?)
    }

    /// Decodes and bounds a response from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, RpcError> {
        let r: RpcResponse = codec::decode(bytes, MAX_RPC)?;
        r.validate()?;
        Ok(r)
    }
}

/// A request on the content service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentRequest {
    /// The manifest with this id.
    Manifest {
        /// Manifest id.
        id: ContentId,
    },
    /// One chunk of the content with this manifest id.
    Chunk {
        /// Manifest id.
        id: ContentId,
        /// Chunk index.
        index: u32,
    },
}

/// An answer on the content service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentResponse {
    /// The manifest (the receiver checks that its id is the one asked for).
    Manifest {
        /// The manifest.
        manifest: Manifest,
    },
    /// The chunk's bytes (the receiver verifies them against the manifest).
    Chunk {
        /// Sealed chunk bytes (encoded as one byte string, not a sequence of
        /// u8: the same bytes on the wire, copied in one go; a per-byte
        /// sequence was a quarter of a transfer's CPU time).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Not held here.
    NotFound,
    /// Refused (busy, or not allowed).
    Refused {
        /// Why.
        reason: String,
    },
}

impl ContentRequest {
    /// Encodes a request.
    pub fn encode(&self) -> Result<Vec<u8>, RpcError> {
        Ok(codec::encode(self)?)
    }

    /// Decodes a request from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, RpcError> {
        Ok(codec::decode(bytes, MAX_CONTENT_REQUEST)?)
    }
}

impl ContentResponse {
    /// Encodes a response.
    pub fn encode(&self) -> Result<Vec<u8>, RpcError> {
        if let ContentResponse::Refused { reason } = self {
            bound("reason", reason.len(), MAX_REASON)?;
        }
        Ok(codec::encode(self)?)
    }

    /// Decodes a response from a peer. The manifest is validated
    /// ([`Manifest::validate`]); chunk bytes are checked by the caller against
    /// the manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, RpcError> {
        let r: ContentResponse = codec::decode(bytes, MAX_CONTENT_RESPONSE)?;
        match &r {
            ContentResponse::Manifest { manifest } => {
                manifest.validate().map_err(|e| {
                    RpcError::Codec(CodecError::Malformed(format!("manifest: {e}")))
                })?;
            }
            ContentResponse::Refused { reason } => bound("reason", reason.len(), MAX_REASON)?,
            _ => {}
        }
        Ok(r)
    }
}

/// Most chunk indices in one [`ChunkStreamRequest`]: 256 MiB of 1 MiB chunks
/// per stream; a fetch of more opens further streams.
pub const MAX_STREAM_CHUNKS: usize = 256;
/// Largest encoded [`ChunkStreamRequest`] (an id and at most
/// [`MAX_STREAM_CHUNKS`] varint indices of at most 5 bytes, with slack).
pub const MAX_STREAM_REQUEST: usize = 2 << 10;
/// Length of a [`ChunkFrameHeader`] on the wire.
pub const CHUNK_FRAME_HEADER: usize = 9;

/// The one request on a chunk stream (`/rendertrust/chunks/1`): send these
/// chunks of manifest `id`, in this order.
///
/// The answer is, per index in order, a [`ChunkFrameHeader`] and (for
/// [`ChunkStatus::Chunk`]) exactly `len` raw sealed bytes, with no encoding
/// around them: the receiver checks `index` and `len` against its own
/// manifest before it reads or allocates, then verifies the bytes. One
/// stream carries many chunks, so a transfer is not one request, one stream
/// and two copies through the swarm per megabyte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStreamRequest {
    /// Manifest id.
    pub id: ContentId,
    /// Chunk indices, 1 to [`MAX_STREAM_CHUNKS`] of them, no repeats.
    pub indices: Vec<u32>,
}

impl ChunkStreamRequest {
    fn validate(&self) -> Result<(), RpcError> {
        if self.indices.is_empty() {
            return Err(RpcError::Invalid {
                field: "indices",
                reason: "at least one chunk index expected",
            });
        }
        bound("indices", self.indices.len(), MAX_STREAM_CHUNKS)?;
        let mut seen = self.indices.clone();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(RpcError::Invalid {
                field: "indices",
                reason: "an index is repeated",
            });
        }
        Ok(())
    }

    /// Encodes a request (checked against the bounds a receiver applies).
    pub fn encode(&self) -> Result<Vec<u8>, RpcError> {
        self.validate()?;
        Ok(codec::encode(self)?)
    }

    /// Decodes a request from a peer, bounded and validated.
    pub fn decode(bytes: &[u8]) -> Result<Self, RpcError> {
        let r: ChunkStreamRequest = codec::decode(bytes, MAX_STREAM_REQUEST)?;
        r.validate()?;
        Ok(r)
    }
}

/// What follows a [`ChunkFrameHeader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStatus {
    /// `len` bytes of the chunk.
    Chunk,
    /// Nothing (`len` is 0): the sender does not hold this chunk.
    NotFound,
}

/// The fixed 9-byte header before each answer on a chunk stream:
/// `index` (u32 big-endian), status (one byte: 0 chunk, 1 not found),
/// `len` (u32 big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkFrameHeader {
    /// Which chunk this answers.
    pub index: u32,
    /// Whether bytes follow.
    pub status: ChunkStatus,
    /// How many bytes follow (0 unless [`ChunkStatus::Chunk`]).
    pub len: u32,
}

impl ChunkFrameHeader {
    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; CHUNK_FRAME_HEADER] {
        let mut out = [0u8; CHUNK_FRAME_HEADER];
        out[..4].copy_from_slice(&self.index.to_be_bytes());
        out[4] = match self.status {
            ChunkStatus::Chunk => 0,
            ChunkStatus::NotFound => 1,
        };
        out[5..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Parses a header from a peer: an unknown status, or a "not found"
    /// with bytes, is refused. `len` is checked by the caller against the
    /// manifest before anything is read.
    pub fn from_bytes(bytes: [u8; CHUNK_FRAME_HEADER]) -> Result<Self, RpcError> {
        let [i0, i1, i2, i3, status, l0, l1, l2, l3] = bytes;
        let index = u32::from_be_bytes([i0, i1, i2, i3]);
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        let status = match status {
            0 => ChunkStatus::Chunk,
            1 if len == 0 => ChunkStatus::NotFound,
            1 => {
                return Err(RpcError::Invalid {
                    field: "len",
                    reason: "a not-found answer carries no bytes",
                });
            }
            _ => {
                return Err(RpcError::Invalid {
                    field: "status",
                    reason: "expected 0 (chunk) or 1 (not found)",
                });
            }
        };
        Ok(Self { index, status, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requests() -> impl Strategy<Value = RpcRequest> {
        let bytes = |n: usize| proptest::collection::vec(any::<u8>(), 0..n);
        let job = any::<[u8; 32]>().prop_map(JobId);
        prop_oneof![
            bytes(300).prop_map(|spec| RpcRequest::Submit { spec }),
            (bytes(200), bytes(300)).prop_map(|(offer, spec)| RpcRequest::Offer { offer, spec }),
            bytes(200).prop_map(|progress| RpcRequest::Progress { progress }),
            (bytes(200), bytes(200), bytes(200)).prop_map(|(offer, result, receipt)| {
                RpcRequest::Result {
                    frames: ResultFrames {
                        offer,
                        result,
                        receipt,
                    },
                }
            }),
            (job.clone(), any::<u32>(), any::<u32>(), "[a-z ]{0,40}").prop_map(
                |(job, index, attempt, reason)| RpcRequest::TaskFailed {
                    task: TaskId { job, index },
                    attempt,
                    reason
                }
            ),
            bytes(200).prop_map(|offer| RpcRequest::Key { offer }),
            (job.clone(), proptest::option::of(any::<u32>()))
                .prop_map(|(job, task)| RpcRequest::Cancel { job, task }),
            (job.clone(), bytes(100)).prop_map(|(job, event)| RpcRequest::Event { job, event }),
            job.clone().prop_map(|job| RpcRequest::Query { job }),
            (job.clone(), any::<u32>(), any::<u32>()).prop_map(|(job, index, attempt)| {
                RpcRequest::ResultOf {
                    task: TaskId { job, index },
                    attempt,
                }
            }),
            (job.clone(), bytes(100))
                .prop_map(|(job, snapshot)| RpcRequest::Replicate { job, snapshot }),
            (
                bytes(200),
                bytes(300),
                0u32..100,
                0u32..100,
                1u32..100,
                1u32..100
            )
                .prop_map(|(offer, spec, x, y, w, h)| RpcRequest::CropOffer {
                    offer,
                    spec,
                    crop: Rect { x, y, w, h },
                }),
            (job, any::<u32>(), any::<u32>(), any::<u32>(), any::<u16>()).prop_map(
                |(job, index, reference_attempt, check_attempt, s)| RpcRequest::Compared {
                    comparison: Comparison {
                        task: TaskId { job, index },
                        reference_attempt,
                        check_attempt,
                        result: crate::verify::CompareResult::Similarity(s),
                    },
                }
            ),
            (any::<[u8; 32]>(), any::<u32>(), any::<u32>()).prop_map(|(j, index, attempt)| {
                RpcRequest::Unfetchable {
                    task: TaskId {
                        job: JobId(j),
                        index,
                    },
                    attempt,
                }
            }),
        ]
    }

    /// `serde_bytes` on a chunk changes nothing on the wire: the same bytes
    /// as the plain `Vec<u8>` encoding of earlier versions.
    #[test]
    fn chunk_bytes_encode_as_before() {
        #[derive(serde::Serialize)]
        #[allow(dead_code)]
        enum Plain {
            Manifest { manifest: Manifest },
            Chunk { bytes: Vec<u8> },
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let new = codec::encode(&ContentResponse::Chunk {
            bytes: bytes.clone(),
        })
        .unwrap();
        let old = codec::encode(&Plain::Chunk {
            bytes: bytes.clone(),
        })
        .unwrap();
        assert_eq!(new, old);
        assert_eq!(
            ContentResponse::decode(&old).unwrap(),
            ContentResponse::Chunk { bytes }
        );
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in requests()) {
            let bytes = r.encode().unwrap();
            prop_assert_eq!(RpcRequest::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = RpcRequest::decode(&bytes);
            let _ = RpcResponse::decode(&bytes);
            let _ = ContentRequest::decode(&bytes);
            let _ = ContentResponse::decode(&bytes);
            let _ = ChunkStreamRequest::decode(&bytes);
        }

        #[test]
        fn chunk_stream_requests_round_trip(
            id in any::<[u8; 32]>(),
            set in proptest::collection::btree_set(any::<u32>(), 1..=MAX_STREAM_CHUNKS),
        ) {
            let r = ChunkStreamRequest {
                id: ContentId(id),
                indices: set.into_iter().rev().collect(),
            };
            let bytes = r.encode().unwrap();
            prop_assert!(bytes.len() <= MAX_STREAM_REQUEST);
            prop_assert_eq!(ChunkStreamRequest::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn chunk_frame_headers_round_trip(index in any::<u32>(), len in any::<u32>(), found in any::<bool>()) {
            let h = if found {
                ChunkFrameHeader { index, status: ChunkStatus::Chunk, len }
            } else {
                ChunkFrameHeader { index, status: ChunkStatus::NotFound, len: 0 }
            };
            prop_assert_eq!(ChunkFrameHeader::from_bytes(h.to_bytes()).unwrap(), h);
        }

        #[test]
        fn chunk_frame_headers_never_panic(bytes in any::<[u8; CHUNK_FRAME_HEADER]>()) {
            if let Ok(h) = ChunkFrameHeader::from_bytes(bytes) {
                prop_assert_eq!(h.to_bytes(), bytes);
            }
        }
    }

    #[test]
    fn bad_chunk_stream_requests_are_refused() {
        let id = ContentId([3; 32]);
        let empty = ChunkStreamRequest {
            id,
            indices: vec![],
        };
        assert!(matches!(
            empty.encode(),
            Err(RpcError::Invalid {
                field: "indices",
                ..
            })
        ));
        let bytes = codec::encode(&empty).unwrap();
        assert!(matches!(
            ChunkStreamRequest::decode(&bytes),
            Err(RpcError::Invalid {
                field: "indices",
                ..
            })
        ));
        let twice = ChunkStreamRequest {
            id,
            indices: vec![4, 9, 4],
        };
        let bytes = codec::encode(&twice).unwrap();
        assert!(matches!(
            ChunkStreamRequest::decode(&bytes),
            Err(RpcError::Invalid {
                field: "indices",
                ..
            })
        ));
        let many = ChunkStreamRequest {
            id,
            indices: (0..=MAX_STREAM_CHUNKS as u32).collect(),
        };
        let bytes = codec::encode(&many).unwrap();
        assert!(matches!(
            ChunkStreamRequest::decode(&bytes),
            Err(RpcError::TooLong {
                field: "indices",
                ..
            })
        ));
        let huge = ChunkStreamRequest {
            id,
            indices: (0..1000u32).map(|i| u32::MAX - i).collect(),
        };
        assert!(ChunkStreamRequest::decode(&codec::encode(&huge).unwrap()).is_err());
        let mut h = ChunkFrameHeader {
            index: 1,
            status: ChunkStatus::NotFound,
            len: 0,
        }
        .to_bytes();
        h[8] = 1;
        assert!(matches!(
            ChunkFrameHeader::from_bytes(h),
            Err(RpcError::Invalid { field: "len", .. })
        ));
        h[4] = 2;
        assert!(matches!(
            ChunkFrameHeader::from_bytes(h),
            Err(RpcError::Invalid {
                field: "status",
                ..
            })
        ));
    }

    #[test]
    fn oversized_fields_and_trailing_bytes_are_refused() {
        let r = RpcRequest::Key {
            offer: vec![0; Signed::<TaskOffer>::MAX_FRAME + 1],
        };
        assert!(matches!(
            r.encode(),
            Err(RpcError::TooLong { field: "offer", .. })
        ));
        let bytes = codec::encode(&r).unwrap();
        assert!(matches!(
            RpcRequest::decode(&bytes),
            Err(RpcError::TooLong { field: "offer", .. })
        ));
        let mut ok = RpcRequest::Query {
            job: JobId([1; 32]),
        }
        .encode()
        .unwrap();
        ok.push(0);
        assert!(matches!(
            RpcRequest::decode(&ok),
            Err(RpcError::Codec(CodecError::TrailingBytes { .. }))
        ));
        let empty = RpcRequest::CropOffer {
            offer: vec![],
            spec: vec![],
            crop: Rect {
                x: 0,
                y: 0,
                w: 0,
                h: 4,
            },
        };
        assert!(matches!(
            empty.encode(),
            Err(RpcError::Invalid { field: "crop", .. })
        ));
        let long = RpcResponse::error(ErrorCode::Invalid, "x".repeat(5000));
        assert!(long.encode().is_ok(), "error messages are cut to the bound");
    }

    #[test]
    fn content_messages_round_trip_and_bad_manifests_are_refused() {
        let m = Manifest::from_reader(4096, &[7u8; 10_000][..]).unwrap();
        let r = ContentResponse::Manifest {
            manifest: m.clone(),
        };
        assert_eq!(ContentResponse::decode(&r.encode().unwrap()).unwrap(), r);
        let q = ContentRequest::Chunk {
            id: m.id(),
            index: 2,
        };
        assert_eq!(ContentRequest::decode(&q.encode().unwrap()).unwrap(), q);
        let mut bad = m;
        bad.total_size += 1_000_000;
        let bytes = codec::encode(&ContentResponse::Manifest { manifest: bad }).unwrap();
        assert!(ContentResponse::decode(&bytes).is_err());
    }
}
