//! Fuzz entry points: one function per decoder of peer input.
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` call these, and so does the
//! corpus replay test (`protocol/tests/fuzz_corpus.rs`), which runs every seed
//! and corpus file on the stable toolchain in `cargo test`. Each function must
//! return normally for every input: a panic is a bug.
//!
//! [`seeds`] yields valid inputs for each target (deterministic keys), so the
//! fuzzer starts past the outer checks. `scripts/fuzz.sh` writes them into
//! `fuzz/seeds/`.
//!
//! Not part of the stable API.

use serde::{Deserialize, Serialize};

use crate::capacity::{CapacityConfig, CapacityTable};
use crate::codec;
use crate::content::{Manifest, ManifestBuilder};
use crate::identity::{NodeId, NodeKey};
use crate::ledger::testkit::{Kit, T0};
use crate::ledger::wire::{LedgerEvent, RollupRequest, RollupResponse};
use crate::ledger::{LedgerConfig, LedgerPeer};
use crate::merkle::{InclusionProof, MerkleTree};
use crate::reputation::{ReputationBook, ReputationConfig, ReputationReport};
use crate::rollup::RollupConfig;
use crate::seal::{self, JobKey, WrapSecret, WrappedKey};
use crate::signed::{KeyCache, Signed, verify_batch};
use crate::wire::{
    CapacityAdvert, JobSpec, Mint, Progress, Receipt, ReceiptAcceptance, RollupHeader, TaskAccept,
    TaskClosed, TaskOffer, TaskResult, WireMessage,
};

/// Names of the fuzz targets, as in `fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 9] = [
    "signed_frames",
    "wire_bodies",
    "sealed_stream",
    "wrapped_key",
    "manifest",
    "merkle_proof",
    "rpc_messages",
    "ledger_events",
    "reputation_report",
];

/// Runs the named target on one input. Unknown names do nothing.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "signed_frames" => signed_frames(data),
        "wire_bodies" => wire_bodies(data),
        "sealed_stream" => sealed_stream(data),
        "wrapped_key" => wrapped_key(data),
        "manifest" => manifest(data),
        "merkle_proof" => merkle_proof(data),
        "rpc_messages" => rpc_messages(data),
        "ledger_events" => ledger_events(data),
        "reputation_report" => reputation_report(data),
        _ => {}
    }
}

const NOW_MS: u64 = 1_780_000_000_000;
const CONTEXT: &[u8] = b"fuzz job / input 0";

fn fuzz_job_key() -> JobKey {
    JobKey::from_bytes([0x42; 32])
}

fn fuzz_wrap_secret() -> WrapSecret {
    WrapSecret::from_bytes([0x24; 32])
}

fn frame_as<T: WireMessage>(frame: &[u8]) {
    if let Ok(s) = Signed::<T>::from_slice(frame) {
        let _ = s.id();
        let _ = s.signer();
        let _ = s.verify();
        let _ = verify_batch(std::slice::from_ref(&s), &mut KeyCache::new(4));
    }
}

/// Signed frames of every message kind, and the capacity table fed with them.
pub fn signed_frames(data: &[u8]) {
    frame_as::<CapacityAdvert>(data);
    frame_as::<JobSpec>(data);
    frame_as::<TaskOffer>(data);
    frame_as::<TaskAccept>(data);
    frame_as::<Progress>(data);
    frame_as::<TaskResult>(data);
    frame_as::<Receipt>(data);
    frame_as::<ReceiptAcceptance>(data);
    frame_as::<RollupHeader>(data);
    frame_as::<TaskClosed>(data);
    frame_as::<Mint>(data);
    frame_as::<ReputationReport>(data);
    let mut table = CapacityTable::new(CapacityConfig::default());
    let _ = table.handle_frame(data, NOW_MS);
}

fn body_as<T: WireMessage>(data: &[u8]) {
    if let Ok(v) = codec::decode::<T>(data, T::MAX_BODY) {
        let _ = v.validate();
    }
}

/// Message bodies decoded directly (as after a signature check).
pub fn wire_bodies(data: &[u8]) {
    body_as::<CapacityAdvert>(data);
    body_as::<JobSpec>(data);
    body_as::<TaskOffer>(data);
    body_as::<TaskAccept>(data);
    body_as::<Progress>(data);
    body_as::<TaskResult>(data);
    body_as::<Receipt>(data);
    body_as::<ReceiptAcceptance>(data);
    body_as::<RollupHeader>(data);
    body_as::<TaskClosed>(data);
    body_as::<Mint>(data);
    body_as::<ReputationReport>(data);
}

/// A sealed stream opened with a fixed key, from a slice and through `Read`.
pub fn sealed_stream(data: &[u8]) {
    let key = fuzz_job_key();
    let _ = seal::open_slice(&key, CONTEXT, data);
    let mut sink = Vec::new();
    let _ = seal::open_stream(&key, CONTEXT, data, &mut sink);
}

/// A wrapped job key decoded and unwrapped with a fixed secret.
pub fn wrapped_key(data: &[u8]) {
    if let Ok(w) = codec::decode::<WrappedKey>(data, 128) {
        let _ = seal::unwrap_key(&fuzz_wrap_secret(), &w, CONTEXT);
    }
}

/// Fuzz input of the manifest target: a manifest and a chunk claimed for it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestInput {
    /// The manifest as a peer sends it.
    pub manifest: Manifest,
    /// Chunk index claimed.
    pub index: u32,
    /// Chunk bytes.
    pub chunk: Vec<u8>,
}

/// A content manifest and a chunk verified against it.
pub fn manifest(data: &[u8]) {
    if let Ok(input) = codec::decode::<ManifestInput>(data, 1 << 20) {
        let _ = input.manifest.id();
        if input.manifest.validate().is_ok() {
            let _ = input.manifest.chunk_len(input.index);
            let _ = input.manifest.verify_chunk(input.index, &input.chunk);
        }
    }
}

/// Fuzz input of the Merkle target: a proof as a peer sends it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProofInput {
    /// Leaf (receipt id).
    pub leaf: [u8; 32],
    /// Root it should lead to.
    pub root: [u8; 32],
    /// The proof.
    pub proof: InclusionProof,
}

/// A Merkle inclusion proof decoded and verified.
pub fn merkle_proof(data: &[u8]) {
    if let Ok(input) = codec::decode::<ProofInput>(data, 8 * 1024) {
        let _ = input.proof.verify(&input.leaf, &input.root);
    }
}

fn fuzz_creator_job() -> crate::creator::CreatorJob {
    let creator = NodeId::from_bytes([9; 32]);
    let spec = JobSpec {
        id: crate::wire::JobId::derive(&creator, 1),
        creator,
        nonce: 1,
        created_at_ms: NOW_MS,
        kind: crate::wire::JobKind::Builtin,
        inputs: vec![],
        requirements: crate::wire::Requirements::default(),
        split: crate::wire::SplitRule::Frames {
            start: 1,
            end: 8,
            step: 1,
        },
        width: 64,
        height: 64,
        format: crate::wire::ImageFormat::Png,
        max_price_per_task: 10,
        verification: crate::wire::VerificationPolicy::None,
        deadline_ms: NOW_MS + 3_600_000,
    };
    crate::creator::CreatorJob::new(spec, NodeKey::from_secret_bytes(&[7; 32]).node_id())
}

/// The scheduler that sends replicas in the fuzz target, and the one that
/// receives them.
const FUZZ_PEER_SCHEDULER: [u8; 32] = [11; 32];
const FUZZ_SCHEDULER: [u8; 32] = [12; 32];

/// The job the fuzz schedulers know: a signed 8-frame builtin job.
fn fuzz_signed_job() -> Option<(JobSpec, std::sync::Arc<[u8]>)> {
    let creator = NodeKey::from_secret_bytes(&[5; 32]);
    let spec = JobSpec {
        id: crate::wire::JobId::derive(&creator.node_id(), 1),
        creator: creator.node_id(),
        ..fuzz_creator_job().spec().clone()
    };
    let frame = Signed::sign(&creator, &spec).ok()?.into_bytes();
    Some((spec, std::sync::Arc::from(frame)))
}

/// A scheduler that sees both fuzz schedulers as live.
fn fuzz_scheduler(me: NodeId) -> crate::scheduler::Scheduler {
    let mut s = crate::scheduler::Scheduler::new(me, crate::scheduler::SchedulerConfig::default());
    for id in [FUZZ_SCHEDULER, FUZZ_PEER_SCHEDULER].map(NodeId::from_bytes) {
        let advert = CapacityAdvert {
            node: id,
            seq: 1,
            issued_at_ms: NOW_MS,
            refresh_ms: 10_000,
            wrap_key: [0; 32],
            roles: vec![crate::wire::Role::Scheduler],
            cpu_cores: 1,
            cpu_model: String::new(),
            ram_bytes: 0,
            disk_free_bytes: 0,
            gpus: vec![],
            runtimes: vec![],
            bench_mfpm: 0,
            running_tasks: 0,
            max_tasks: 0,
            price_per_task: 0,
            region: String::new(),
        };
        s.observe_advert(&advert, NOW_MS + 60_000, NOW_MS);
    }
    s
}

/// Replication parts from the peer scheduler, assembled and handed to a
/// scheduler that holds nothing and to one that owns the fuzz job (the
/// two-owner path: refuse and answer, or yield).
fn replica_parts(parts: Vec<crate::scheduler::SnapshotPart>) {
    let peer = NodeId::from_bytes(FUZZ_PEER_SCHEDULER);
    let mut assembler = crate::scheduler::SnapshotAssembler::new(4);
    let mut done = None;
    for part in parts.into_iter().take(crate::scheduler::MAX_PARTS as usize) {
        match assembler.add(peer, part) {
            Some(Ok(snapshot)) => {
                done = Some(snapshot);
                break;
            }
            Some(Err(_)) => return,
            None => {}
        }
    }
    let Some(snapshot) = done else {
        return;
    };
    let me = NodeId::from_bytes(FUZZ_SCHEDULER);
    let mut fresh = fuzz_scheduler(me);
    let _ = fresh.handle_replica(&peer, snapshot.clone(), NOW_MS);
    let mut owner = fuzz_scheduler(me);
    if let Some((spec, frame)) = fuzz_signed_job() {
        let _ = owner.submit(spec, frame, NOW_MS);
    }
    let mut rng = SeedRng(1);
    owner.handle_timeout(NOW_MS, &mut rng);
    let _ = owner.handle_replica(&peer, snapshot, NOW_MS + 1);
    owner.handle_timeout(NOW_MS + 10_000, &mut rng);
    while owner.poll_action().is_some() {}
}

/// A replication of the fuzz job by the peer scheduler, taken over once
/// (epoch 1, so a scheduler owning the job yields to it), as parts.
fn fuzz_replica_seed() -> Option<Vec<crate::scheduler::SnapshotPart>> {
    let peer = NodeId::from_bytes(FUZZ_PEER_SCHEDULER);
    let mut s = fuzz_scheduler(peer);
    let (spec, frame) = fuzz_signed_job()?;
    s.submit(spec, frame, NOW_MS).ok()?;
    s.handle_timeout(NOW_MS + 5_000, &mut SeedRng(2));
    let mut snapshot = std::iter::from_fn(|| s.poll_action()).find_map(|a| match a {
        crate::scheduler::SchedulerAction::Replicate { snapshot, .. } => Some(*snapshot),
        _ => None,
    })?;
    snapshot.core.epoch = 1;
    Some(snapshot.to_parts())
}

/// Rpc and content envelopes, and what the creator's machine does with the
/// peer-supplied parts (result bundles, key requests).
pub fn rpc_messages(data: &[u8]) {
    use crate::rpc::{ContentRequest, ContentResponse, RpcRequest, RpcResponse};
    if let Ok(r) = RpcRequest::decode(data) {
        let mut job = fuzz_creator_job();
        match r {
            RpcRequest::Result { frames } => {
                let _ = job.check_result(frames.clone());
                let mut verified = fuzz_creator_job();
                if let Ok(crate::creator::VoteDecision::Held) = verified.vote(frames) {
                    let _ = verified.verified(2, 0);
                    let _ = verified.compare(
                        2,
                        crate::task::Rect {
                            x: 0,
                            y: 0,
                            w: 8,
                            h: 8,
                        },
                        0,
                        0,
                        false,
                    );
                }
            }
            RpcRequest::Key { offer } => {
                let _ = job.authorize_key(&offer, NodeId::from_bytes([7; 32]), NOW_MS);
            }
            RpcRequest::Replicate { snapshot, .. } => {
                if let Ok(part) = codec::decode(&snapshot, crate::rpc::MAX_RPC) {
                    replica_parts(vec![part]);
                }
            }
            _ => {}
        }
    }
    // Several parts at once (what a replica assembles over several requests).
    if let Ok(parts) =
        codec::decode::<Vec<crate::scheduler::SnapshotPart>>(data, crate::rpc::MAX_RPC)
    {
        replica_parts(parts);
    }
    let _ = RpcResponse::decode(data);
    let _ = ContentRequest::decode(data);
    let _ = ContentResponse::decode(data);
    let _ = crate::rpc::ChunkStreamRequest::decode(data);
    if let Ok(header) = <[u8; crate::rpc::CHUNK_FRAME_HEADER]>::try_from(data) {
        let _ = crate::rpc::ChunkFrameHeader::from_bytes(header);
    }
}

/// The mint authority of the fuzzed ledger: the ledger test kit's (seed 0),
/// so the seed corpus's mints are honoured.
fn fuzz_ledger_config() -> LedgerConfig {
    LedgerConfig {
        mint_authority: Some(NodeId::from_bytes(FUZZ_AUTHORITY)),
        genesis: vec![(NodeId::from_bytes([9; 32]), 1000)],
        ..LedgerConfig::default()
    }
}

/// Public key of `Kit::new(0).authority` (checked by a test).
const FUZZ_AUTHORITY: [u8; 32] = [
    0x70, 0x10, 0x9c, 0xf9, 0x1f, 0x52, 0x93, 0x2e, 0x5e, 0xc3, 0xd4, 0x44, 0x6f, 0xe3, 0x3f, 0x22,
    0xd8, 0x89, 0x89, 0x86, 0x30, 0xf0, 0xc5, 0xeb, 0x94, 0x3f, 0xf0, 0xe5, 0xf4, 0x7e, 0x16, 0x85,
];

/// A ledger event decoded and fed to a ledger peer (with its timers run),
/// and the same bytes decoded as rollup requests and responses.
pub fn ledger_events(data: &[u8]) {
    if let Ok(event) = LedgerEvent::decode(data) {
        let _ = event.id();
        let _ = event.encode();
        let mut peer = LedgerPeer::new(
            NodeId::from_bytes([1; 32]),
            fuzz_ledger_config(),
            RollupConfig::default(),
        );
        let _ = peer.handle_events(std::slice::from_ref(&event), T0);
        let _ = peer.handle_events(std::slice::from_ref(&event), T0);
        peer.handle_timeout(T0 + 100 * 86_400_000);
        while peer.poll_action().is_some() {}
        let _ = peer.ledger().recompute_accounts();
    }
    if let Ok(req) = RollupRequest::decode(data) {
        let _ = req.encode();
    }
    if let Ok(resp) = RollupResponse::decode(data) {
        let _ = resp.encode();
    }
}

/// The reporter whose reports the fuzz book trusts.
fn fuzz_reporter() -> NodeKey {
    NodeKey::from_secret_bytes(&[11; 32])
}

fn fuzz_book() -> ReputationBook {
    let mut config = ReputationConfig::default();
    config.trusted_reporters.insert(fuzz_reporter().node_id());
    config.max_nodes = 64;
    let mut book = ReputationBook::new(NodeId::from_bytes([9; 32]), config);
    book.observe(
        NodeId::from_bytes([3; 32]),
        crate::reputation::Outcome::Verified,
        NOW_MS,
    );
    book
}

/// A reputation report, as a signed frame from gossip and as a body, merged
/// into a book that trusts its reporter; then the book's scores and its own
/// report.
pub fn reputation_report(data: &[u8]) {
    let report = Signed::<ReputationReport>::from_slice(data)
        .ok()
        .and_then(|s| s.verify().ok())
        .or_else(|| {
            codec::decode::<ReputationReport>(data, ReputationReport::MAX_BODY)
                .ok()
                .filter(|r| r.validate().is_ok())
        });
    if let Some(r) = report {
        let mut book = fuzz_book();
        let _ = book.merge(&r, NOW_MS);
        for e in r.entries.iter().take(64) {
            let _ = book.standing(&e.subject, NOW_MS);
        }
        let _ = book.report(NOW_MS, 16);
        book.prune(NOW_MS + 1);
    }
}

/// Valid inputs for every target, from fixed keys (deterministic).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let key = NodeKey::from_secret_bytes(&[7; 32]);
    let id = key.node_id();
    let other = NodeId::from_bytes([9; 32]);
    let mut rng = SeedRng(0x5eed);

    let receipt = Receipt {
        task: crate::wire::TaskId {
            job: crate::wire::JobId::derive(&other, 1),
            index: 3,
        },
        worker: id,
        creator: other,
        scheduler: other,
        attempt: 0,
        output_hash: [1; 32],
        usage: crate::wire::ResourceUsage {
            gpu_ms: 1000,
            cpu_ms: 200,
            peak_mem_bytes: 1 << 20,
        },
        started_at_ms: NOW_MS,
        finished_at_ms: NOW_MS + 1000,
        price: 5,
    };
    let advert = CapacityAdvert {
        node: id,
        seq: 1,
        issued_at_ms: NOW_MS,
        refresh_ms: 10_000,
        wrap_key: fuzz_wrap_secret().public(),
        roles: vec![crate::wire::Role::Worker],
        cpu_cores: 8,
        cpu_model: "fuzz cpu".into(),
        ram_bytes: 16 << 30,
        disk_free_bytes: 100 << 30,
        gpus: vec![],
        runtimes: vec![crate::wire::RuntimeInfo {
            kind: crate::wire::RuntimeKind::Builtin,
            version: "1".into(),
        }],
        bench_mfpm: 60_000,
        running_tasks: 0,
        max_tasks: 2,
        price_per_task: 5,
        region: "local".into(),
    };
    let rollup = RollupHeader {
        epoch: 1,
        root: [2; 32],
        count: 3,
        ledger: id,
        prev: [0; 32],
        closed_at_ms: NOW_MS,
    };
    for frame in [
        Signed::sign(&key, &receipt).map(Signed::into_bytes),
        Signed::sign(&key, &advert).map(Signed::into_bytes),
        Signed::sign(&key, &rollup).map(Signed::into_bytes),
    ]
    .into_iter()
    .flatten()
    {
        let body = frame[codec::PAYLOAD_OFFSET + codec::PAYLOAD_HEADER_LEN..].to_vec();
        out.push(("signed_frames", frame));
        out.push(("wire_bodies", body));
    }

    let plain: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    for len in [0usize, 1, 4096, 10_000] {
        if let Ok(sealed) = seal::seal_to_vec_with_chunk_size(
            &fuzz_job_key(),
            CONTEXT,
            &plain[..len],
            4096,
            &mut rng,
        ) {
            out.push(("sealed_stream", sealed));
        }
    }

    if let Ok(w) = seal::wrap_key(
        &fuzz_job_key(),
        &fuzz_wrap_secret().public(),
        CONTEXT,
        &mut rng,
    ) && let Ok(bytes) = codec::encode(&w)
    {
        out.push(("wrapped_key", bytes));
    }

    if let Ok(mut b) = ManifestBuilder::new(4096) {
        b.update(&plain);
        let m = b.finish();
        let input = ManifestInput {
            manifest: m,
            index: 1,
            chunk: plain[4096..8192].to_vec(),
        };
        if let Ok(bytes) = codec::encode(&input) {
            out.push(("manifest", bytes));
        }
    }

    let leaves: Vec<[u8; 32]> = (0u8..13).map(|i| [i; 32]).collect();
    let tree = MerkleTree::from_leaves(leaves.clone());
    if let Ok(proof) = tree.proof(5) {
        let input = ProofInput {
            leaf: leaves[5],
            root: tree.root(),
            proof,
        };
        if let Ok(bytes) = codec::encode(&input) {
            out.push(("merkle_proof", bytes));
        }
    }

    // A result bundle for the fuzz creator job, signed by its scheduler, and
    // a key request with the same offer.
    let job = fuzz_creator_job();
    let offer = TaskOffer {
        task: crate::wire::TaskId {
            job: job.spec().id,
            index: 2,
        },
        scheduler: id,
        worker: id,
        attempt: 0,
        price: 5,
        reserve_until_ms: NOW_MS + 5_000,
        deadline_ms: NOW_MS + 60_000,
    };
    let result = TaskResult {
        task: offer.task,
        worker: id,
        attempt: 0,
        output_hash: [1; 32],
        output_manifest: crate::content::ContentId([3; 32]),
        wrapped_key: WrappedKey {
            ephemeral: [0; 32],
            ciphertext: [0; 32],
            tag: [0; 16],
        },
        usage: receipt.usage,
    };
    let job_receipt = Receipt {
        task: offer.task,
        scheduler: id,
        ..receipt.clone()
    };
    if let (Ok(o), Ok(r), Ok(rc)) = (
        Signed::sign(&key, &offer),
        Signed::sign(&key, &result),
        Signed::sign(&key, &job_receipt),
    ) {
        let frames = crate::creator::ResultFrames {
            offer: o.as_bytes().to_vec(),
            result: r.into_bytes(),
            receipt: rc.into_bytes(),
        };
        for req in [
            crate::rpc::RpcRequest::Result { frames },
            crate::rpc::RpcRequest::Key {
                offer: o.into_bytes(),
            },
        ] {
            if let Ok(bytes) = req.encode() {
                out.push(("rpc_messages", bytes));
            }
        }
    }
    if let Some(parts) = fuzz_replica_seed() {
        if let Ok(bytes) = codec::encode(&parts) {
            out.push(("rpc_messages", bytes));
        }
        for part in &parts {
            if let Ok(snapshot) = codec::encode(part)
                && let Ok(bytes) = (crate::rpc::RpcRequest::Replicate {
                    job: part.job,
                    snapshot,
                })
                .encode()
            {
                out.push(("rpc_messages", bytes));
            }
        }
    }
    let stream_request = crate::rpc::ChunkStreamRequest {
        id: crate::content::ContentId([5; 32]),
        indices: vec![0, 1, 2, 63],
    };
    if let Ok(bytes) = stream_request.encode() {
        out.push(("rpc_messages", bytes));
    }
    out.push((
        "rpc_messages",
        crate::rpc::ChunkFrameHeader {
            index: 3,
            status: crate::rpc::ChunkStatus::Chunk,
            len: 4096,
        }
        .to_bytes()
        .to_vec(),
    ));
    let kit = Kit::new(0);
    for event in kit.sample_events() {
        if let Ok(bytes) = event.encode() {
            out.push(("ledger_events", bytes));
        }
    }
    let rpc = [
        RollupRequest::Ids {
            epoch: 494_444,
            after: None,
        }
        .encode(),
        RollupResponse::Ids {
            epoch: 494_444,
            ids: vec![crate::signed::MessageId([3; 32]); 3],
            more: false,
        }
        .encode(),
        RollupResponse::Receipts {
            events: kit.sample_events(),
        }
        .encode(),
    ];
    for bytes in rpc.into_iter().flatten() {
        out.push(("ledger_events", bytes));
    }
    out.extend(
        ledger_service_seeds(&kit)
            .into_iter()
            .map(|b| ("ledger_events", b)),
    );

    // A reputation report by the trusted fuzz reporter: as a frame (gossip)
    // for its own target and the signed-frame target, and as a body.
    let reporter = fuzz_reporter();
    let report = ReputationReport {
        reporter: reporter.node_id(),
        issued_at_ms: NOW_MS,
        entries: (1u8..=3)
            .map(|i| crate::reputation::ReportEntry {
                subject: NodeId::from_bytes([i; 32]),
                verified_milli: u64::from(i) * 10_000,
                failed_milli: 1_000,
                lost_milli: 0,
            })
            .collect(),
    };
    if let Ok(frame) = Signed::sign(&reporter, &report).map(Signed::into_bytes) {
        let body = frame[codec::PAYLOAD_OFFSET + codec::PAYLOAD_HEADER_LEN..].to_vec();
        out.push(("signed_frames", frame.clone()));
        out.push(("wire_bodies", body.clone()));
        out.push(("reputation_report", frame));
        out.push(("reputation_report", body));
    }
    out
}

/// One of each question any node asks a ledger, and each answer.
fn ledger_service_seeds(kit: &Kit) -> Vec<Vec<u8>> {
    use crate::ledger::wire::{
        AnchorPlace, ChainEntry, LeaderRow, ProofInfo, ReceiptInfo, ReceiptState,
    };
    let ledger = &kit.ledgers[0];
    let node = kit.workers[0].node_id();
    let Ok(header) = Signed::sign(
        ledger,
        &RollupHeader {
            epoch: 494_444,
            root: [4; 32],
            count: 3,
            ledger: ledger.node_id(),
            prev: [0; 32],
            closed_at_ms: T0,
        },
    ) else {
        return Vec::new();
    };
    let leaves: Vec<[u8; 32]> = (1u8..=3).map(|i| [i; 32]).collect();
    let Ok(proof) = crate::merkle::MerkleTree::from_leaves(leaves).proof(1) else {
        return Vec::new();
    };
    let settle = kit
        .sample_events()
        .into_iter()
        .find(|e| matches!(e, LedgerEvent::Settle { .. }));
    let requests = [
        RollupRequest::Receipt {
            id: crate::signed::MessageId([5; 32]),
        },
        RollupRequest::Proof {
            id: crate::signed::MessageId([5; 32]),
        },
        RollupRequest::Balance { node },
        RollupRequest::Chain {
            ledger: ledger.node_id(),
            after: Some(3),
        },
        RollupRequest::Headers { after: 494_440 },
        RollupRequest::Leaderboard { limit: 10 },
    ];
    let responses = [
        RollupResponse::Receipt(ReceiptInfo {
            state: ReceiptState::Unpaid {
                reason: "never assigned".into(),
            },
            epoch: Some(494_444),
            epoch_final: true,
            late: false,
            settle,
        }),
        RollupResponse::Proof(Box::new(ProofInfo {
            header: header.clone(),
            proof,
            anchorer: Some(ledger.node_id()),
            anchor: Some(AnchorPlace::Evm {
                chain_id: 31_337,
                contract: [0x5f; 20],
                account: [0xf3; 20],
            }),
        })),
        RollupResponse::Balance { node, balance: -42 },
        RollupResponse::Chain {
            entries: vec![ChainEntry {
                epoch: 494_444,
                frame: header.as_bytes().to_vec(),
            }],
            more: false,
        },
        RollupResponse::Headers {
            headers: vec![header],
        },
        RollupResponse::Leaderboard {
            rows: vec![LeaderRow {
                node,
                balance: 1_000,
                earned: 30,
                tasks: 3,
            }],
        },
    ];
    requests
        .iter()
        .filter_map(|r| r.encode().ok())
        .chain(responses.iter().filter_map(|r| r.encode().ok()))
        .collect()
}

/// A tiny deterministic RNG for seed generation only (SplitMix64): the seeds
/// must be byte-identical on every run so the committed files stay stable.
struct SeedRng(u64);

impl rand_core::TryRng for SeedRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SeedRng {}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_authority_is_the_kits() {
        assert_eq!(
            super::Kit::new(0).authority.node_id().to_hex(),
            super::NodeId::from_bytes(super::FUZZ_AUTHORITY).to_hex()
        );
    }

    /// The replication seed assembles, is taken as a replica by a scheduler
    /// holding nothing, and makes the scheduler owning the job yield: the
    /// fuzzer starts on the two-owner path.
    #[test]
    fn the_replica_seed_reaches_the_yield() {
        use super::*;
        let parts = fuzz_replica_seed().expect("seed");
        let peer = NodeId::from_bytes(FUZZ_PEER_SCHEDULER);
        let mut assembler = crate::scheduler::SnapshotAssembler::new(4);
        let snapshot = parts
            .into_iter()
            .find_map(|p| assembler.add(peer, p))
            .expect("complete")
            .expect("valid");
        let me = NodeId::from_bytes(FUZZ_SCHEDULER);
        fuzz_scheduler(me)
            .handle_replica(&peer, snapshot.clone(), NOW_MS)
            .expect("taken as a replica");
        let mut owner = fuzz_scheduler(me);
        let (spec, frame) = fuzz_signed_job().expect("job");
        owner.submit(spec, frame, NOW_MS).expect("submitted");
        owner
            .handle_replica(&peer, snapshot, NOW_MS + 1)
            .expect("yields");
        assert_eq!(owner.stats().yields, 1);
    }
}
