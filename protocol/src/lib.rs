//! # rendertrust-protocol
//!
//! The protocol core of RenderTrust: everything that two peers must agree on,
//! and every rule of the mesh, as plain data and pure functions.
//!
//! This crate is **sans-IO**. It owns no socket, reads no clock and draws no
//! global randomness: time comes in as an argument (milliseconds since the Unix
//! epoch, `now_ms`), randomness as a `&mut impl CryptoRng` (or `Rng` where it need not be secret), and effects go out
//! as returned values. The node (`node/`) and the simulator (`sim/`) drive the
//! same code. `scripts/test.sh` fails if this crate ever depends on tokio.
//!
//! | module | owns |
//! |---|---|
//! | [`capacity`] | the capacity table machine: newest signed advert per node, expiry, rejection counters |
//! | [`codec`] | the one bincode configuration, bounded decoding, canonical encodings, envelope framing |
//! | [`identity`] | [`NodeId`](identity::NodeId), node signing keys, the round trip with libp2p `PeerId` |
//! | [`signed`] | [`Signed<T>`](signed::Signed): signatures with a domain tag per message kind, batch verification |
//! | [`wire`] | the versioned messages of the mesh (capacity, jobs, offers, progress, results, receipts, rollups) |
//! | [`seal`] | per-job keys, chunked STREAM XChaCha20-Poly1305, key wrapping to X25519 |
//! | [`creator`] | the creator's side of a job: key requests, result checks, verification votes and verdicts, spot-check comparisons, acceptance and countersigning |
//! | [`content`] | BLAKE3 content addressing: fixed-size chunks and a manifest |
//! | [`hrw`] | rendezvous hashing: job owner and replica, epoch anchorer |
//! | [`placement`] | does a worker meet a job's requirements ([`placement::meets`], one rule for scheduler and worker), why not, integer candidate scores |
//! | [`scheduler`] | the scheduler machine: task split, placement, offer → accept, tracking, re-offers, replication and takeover, snapshots, job views |
//! | [`worker`] | the worker machine: task slots, answering offers, task lifecycle, heartbeat timing |
//! | [`task`] | task geometry: the frame and region task `index` of a job renders |
//! | [`rpc`] | request/response envelopes of the rpc and content services, and their bounds |
//! | [`merkle`] | domain-separated (RFC 6962 style) Merkle trees and inclusion proofs |
//! | [`ledger`] | the credit ledger machine: escrow, settle, refund, mint; balances from double entries; order-independent |
//! | [`rollup`] | epoch rollups: Merkle roots of receipt ids, agreement, reconciliation, the anchorer |
//! | [`verify`] | verification policies and their defaults, sampling, spot-check crops, quorum and spot-check tallies, the SSIM image metric |
//! | [`reputation`] | the reputation book: beta scores with decay, probation, signed reports and their bounded merge |
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod capacity;
pub mod codec;
pub mod content;
pub mod creator;
#[doc(hidden)]
pub mod fuzz;
pub mod hrw;
pub mod identity;
pub mod ledger;
pub mod merkle;
pub mod placement;
pub mod reputation;
pub mod rollup;
pub mod rpc;
pub mod scheduler;
pub mod seal;
pub mod signed;
pub mod task;
pub mod verify;
pub mod wire;
pub mod worker;
