//! Criterion benches of the protocol core's hot paths, each beside the raw
//! primitive it wraps so `scripts/bench.sh` can print the ratio:
//!
//! | bench | raw primitive |
//! |---|---|
//! | `receipts/verify_batch_1024` (decode + batch verify + body decode of signed receipts) | `raw/ed25519_verify_batch_1024` |
//! | `seal/seal_chunks_8MiB`, `seal/open_chunks_8MiB` (STREAM, 64 KiB chunks, in place) | `raw/xchacha20poly1305_8MiB` |
//! | `seal/seal_8MiB`, `seal/open_8MiB` (the same through `Read`/`Write`: two extra copies) | `raw/xchacha20poly1305_8MiB` |
//! | `content/manifest_8MiB` (1 MiB chunks) | `raw/blake3_8MiB` |
//! | `merkle/root_1M`, `merkle/proof_verify_1M` | - |
//! | `scheduler/place_1000_of_10k_nodes` (1000 placement decisions, d = 2, over 10 000 capacity entries) | - |
//! | `scheduler/place_1000_of_10k_nodes_quorum` (the same with every task verified: 500 tasks and their lines) | - |
//! | `trust/ssim_256x256` (spot-check metric on a 256 × 256 RGB crop) | - |
//! | `trust/reputation_observe_10k`, `trust/reputation_merge_1024`, `trust/reputation_report_1024` | - |
//! | `ledger/ingest_settle_1024` (decode + batch verify + apply 1024 doubly-signed receipts, escrows held) | `raw/ed25519_verify_batch_1024` (half the signatures) |
//! | `ledger/ingest_escrow_settle_1024` (the same with their 1024 escrows: 4 signatures per task, spec cached) | - |
//! | `rollup/record_close_1M` (record 1M receipt ids in one epoch and close it), `rollup/proof_1M`, `rollup/proof_verify_1M` | - |
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use rendertrust_protocol::codec;
use rendertrust_protocol::content::ManifestBuilder;
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::ledger::testkit::{Kit, T0};
use rendertrust_protocol::ledger::{Ledger, LedgerEvent};
use rendertrust_protocol::merkle::{MerkleTree, root_of};
use rendertrust_protocol::rollup::{Rollup, RollupConfig};
use rendertrust_protocol::scheduler::{Scheduler, SchedulerConfig};
use rendertrust_protocol::seal::{self, JobKey};
use rendertrust_protocol::signed::MessageId;
use rendertrust_protocol::signed::{KeyCache, Signed, verify_batch};
use rendertrust_protocol::wire::{
    BlenderEngine, CapacityAdvert, GpuInfo, GpuVendor, ImageFormat, JobId, JobKind, JobSpec,
    Receipt, Requirements, ResourceUsage, Role, RuntimeInfo, RuntimeKind, SplitRule, TaskId,
    VerificationPolicy,
};

const BATCH: usize = 1024;
const WORKERS: usize = 256;
const MIB8: usize = 8 << 20;

fn receipts(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let keys: Vec<NodeKey> = (0..WORKERS).map(|_| NodeKey::generate(&mut rng)).collect();
    let signed: Vec<Signed<Receipt>> = (0..BATCH)
        .map(|i| {
            let k = &keys[i % WORKERS];
            let r = Receipt {
                task: TaskId {
                    job: JobId([(i % 7) as u8; 32]),
                    index: i as u32,
                },
                worker: k.node_id(),
                creator: NodeId::from_bytes([1; 32]),
                scheduler: NodeId::from_bytes([2; 32]),
                attempt: 0,
                output_hash: [3; 32],
                usage: ResourceUsage {
                    gpu_ms: 10_000 + i as u64,
                    cpu_ms: 2_000,
                    peak_mem_bytes: 1 << 30,
                },
                started_at_ms: 1_780_000_000_000,
                finished_at_ms: 1_780_000_010_000,
                price: 7,
            };
            Signed::sign(k, &r).unwrap()
        })
        .collect();
    let frames: Vec<Vec<u8>> = signed.iter().map(|s| s.as_bytes().to_vec()).collect();

    let mut g = c.benchmark_group("receipts");
    g.throughput(Throughput::Elements(BATCH as u64));
    // From wire bytes to verified receipts: frame checks, batch signature
    // verification, canonical body decode. The key cache is warm, as on a
    // ledger that has seen these workers before.
    let mut cache = KeyCache::default();
    g.bench_function("verify_batch_1024", |b| {
        b.iter_batched(
            || frames.clone(),
            |frames| {
                let items: Vec<Signed<Receipt>> = frames
                    .into_iter()
                    .map(|f| Signed::from_bytes(f).unwrap())
                    .collect();
                let out = verify_batch(&items, &mut cache);
                assert!(out.iter().all(|r| r.is_ok()));
                out
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_single", |b| {
        b.iter(|| black_box(&signed[0]).verify().unwrap())
    });
    g.finish();

    // Raw ed25519-dalek batch verification of same-size messages, keys already
    // decompressed: the ceiling for the bench above.
    let sk: Vec<SigningKey> = (0..WORKERS)
        .map(|_| SigningKey::generate(&mut rng))
        .collect();
    let msgs: Vec<Vec<u8>> = signed.iter().map(|s| s.as_bytes()[96..].to_vec()).collect();
    let sigs: Vec<Signature> = (0..BATCH).map(|i| sk[i % WORKERS].sign(&msgs[i])).collect();
    let vks: Vec<VerifyingKey> = (0..BATCH)
        .map(|i| sk[i % WORKERS].verifying_key())
        .collect();
    let msg_refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("ed25519_verify_batch_1024", |b| {
        b.iter(|| ed25519_dalek::verify_batch(black_box(&msg_refs), &sigs, &vks).unwrap())
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("ed25519_verify_single", |b| {
        b.iter(|| vks[0].verify_strict(black_box(&msgs[0]), &sigs[0]).unwrap())
    });
    g.finish();
}

fn sealing(c: &mut Criterion) {
    let key = JobKey::from_bytes([9; 32]);
    let plain = vec![0x5au8; MIB8];
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let sealed = seal::seal_to_vec(&key, b"bench", &plain, &mut rng).unwrap();

    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(MIB8 as u64));
    g.sample_size(20);
    // Streams through Read/Write with two chunk buffers: the constant-memory path.
    g.bench_function("seal_8MiB", |b| {
        let mut out = Vec::with_capacity(sealed.len());
        b.iter(|| {
            out.clear();
            seal::seal_stream(&key, b"bench", &mut rng, plain.as_slice(), &mut out).unwrap()
        })
    });
    g.bench_function("open_8MiB", |b| {
        let mut out = Vec::with_capacity(MIB8);
        b.iter(|| {
            out.clear();
            seal::open_stream(&key, b"bench", sealed.as_slice(), &mut out).unwrap()
        })
    });
    // The sans-IO chunk API, in place: what the data plane calls per chunk.
    let chunk = seal::DEFAULT_CHUNK_SIZE;
    g.bench_function("seal_chunks_8MiB", |b| {
        let mut buf = Vec::with_capacity(chunk + seal::TAG_LEN);
        b.iter(|| {
            let (mut sealer, header) = seal::Sealer::new(&key, b"bench", chunk, &mut rng).unwrap();
            black_box(header);
            let n = MIB8 / chunk;
            for piece in plain.chunks(chunk).take(n - 1) {
                buf.clear();
                buf.extend_from_slice(piece);
                sealer.seal_chunk(&mut buf).unwrap();
                black_box(&buf);
            }
            buf.clear();
            buf.extend_from_slice(&plain[(n - 1) * chunk..]);
            sealer.seal_final(&mut buf).unwrap();
        })
    });
    let sealed_chunks: Vec<Vec<u8>> = sealed[seal::HEADER_LEN..]
        .chunks(chunk + seal::TAG_LEN)
        .map(<[u8]>::to_vec)
        .collect();
    g.bench_function("open_chunks_8MiB", |b| {
        let mut buf = Vec::with_capacity(chunk + seal::TAG_LEN);
        b.iter(|| {
            let mut opener =
                seal::Opener::new(&key, b"bench", &sealed[..seal::HEADER_LEN]).unwrap();
            let (last, rest) = sealed_chunks.split_last().unwrap();
            for c in rest {
                buf.clear();
                buf.extend_from_slice(c);
                opener.open_chunk(&mut buf).unwrap();
                black_box(&buf);
            }
            buf.clear();
            buf.extend_from_slice(last);
            opener.open_final(&mut buf).unwrap();
        })
    });
    g.finish();

    // Raw XChaCha20-Poly1305 over the same bytes in 64 KiB in-place pieces.
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Bytes(MIB8 as u64));
    g.sample_size(20);
    g.bench_function("xchacha20poly1305_8MiB", |b| {
        let mut buf = plain.clone();
        b.iter(|| {
            for (i, piece) in buf.chunks_mut(64 * 1024).enumerate() {
                let mut nonce = [0u8; 24];
                nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let tag = cipher
                    .encrypt_inout_detached(&XNonce::from(nonce), b"", piece.into())
                    .unwrap();
                black_box(tag);
            }
        })
    });
    g.finish();
}

fn content(c: &mut Criterion) {
    let data = vec![0xa5u8; MIB8];
    let mut g = c.benchmark_group("content");
    g.throughput(Throughput::Bytes(MIB8 as u64));
    g.sample_size(20);
    g.bench_function("manifest_8MiB", |b| {
        b.iter(|| {
            let mut m = ManifestBuilder::new(1 << 20).unwrap();
            m.update(black_box(&data));
            m.finish()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Bytes(MIB8 as u64));
    g.sample_size(20);
    g.bench_function("blake3_8MiB", |b| b.iter(|| blake3::hash(black_box(&data))));
    g.finish();
}

fn merkle(c: &mut Criterion) {
    let leaves: Vec<[u8; 32]> = (0u32..1_000_000)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    let mut g = c.benchmark_group("merkle");
    g.sample_size(10);
    g.throughput(Throughput::Elements(leaves.len() as u64));
    g.bench_function("root_1M", |b| b.iter(|| root_of(black_box(&leaves))));
    let tree = MerkleTree::from_leaves(leaves.clone());
    let root = tree.root();
    let proof = tree.proof(777_777).unwrap();
    g.throughput(Throughput::Elements(1));
    g.sample_size(100);
    g.bench_function("proof_verify_1M", |b| {
        b.iter(|| proof.verify(black_box(&leaves[777_777]), &root).unwrap())
    });
    g.finish();
}

/// A mixed fleet: every node has builtin, half Blender 3.6 or 4.2, GPUs of
/// two vendors and three sizes (one in eight none), 16 to 64 GiB RAM, one to
/// four slots partly in use, prices 5 to 15, eight regions.
fn fleet_advert(i: u64, rng: &mut ChaCha20Rng, now: u64) -> CapacityAdvert {
    let r = rng.next_u64();
    let mut runtimes = vec![RuntimeInfo {
        kind: RuntimeKind::Builtin,
        version: "1".into(),
    }];
    if r & 1 == 0 {
        runtimes.push(RuntimeInfo {
            kind: RuntimeKind::Blender,
            version: if r & 2 == 0 { "3.6.5" } else { "4.2.1" }.into(),
        });
    }
    let gpus = if (r >> 2) & 7 == 0 {
        vec![]
    } else {
        vec![GpuInfo {
            vendor: if (r >> 5) & 1 == 0 {
                GpuVendor::Nvidia
            } else {
                GpuVendor::Amd
            },
            model: "gpu".into(),
            vram_bytes: [8u64, 12, 24][((r >> 6) % 3) as usize] << 30,
        }]
    };
    let max_tasks = 1 + ((r >> 8) % 4) as u16;
    CapacityAdvert {
        node: NodeId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
        seq: 1,
        issued_at_ms: now,
        refresh_ms: 10_000,
        wrap_key: [0; 32],
        roles: vec![Role::Worker],
        cpu_cores: 16,
        cpu_model: "cpu".into(),
        ram_bytes: [16u64, 32, 64][((r >> 10) % 3) as usize] << 30,
        disk_free_bytes: 1 << 40,
        gpus,
        runtimes,
        bench_mfpm: 50_000 + (r >> 12) % 200_000,
        running_tasks: ((r >> 30) % u64::from(max_tasks)) as u16,
        max_tasks,
        price_per_task: 5 + (r >> 40) % 11,
        region: format!("region-{}", (r >> 50) % 8),
    }
}

/// Placement decisions per second with 10 000 capacity entries: each
/// iteration is one `handle_timeout` that makes 1000 decisions (offers plus
/// their actions) for a fresh 100 000-task job, on a clone of the same
/// scheduler (the clone is not timed).
fn scheduler(c: &mut Criterion) {
    const NODES: u64 = 10_000;
    const DECISIONS: usize = 1_000;
    let now = 1_780_000_000_000;
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let creator = NodeKey::generate(&mut rng);
    // An established mesh: nobody on probation (a fresh one verifies every
    // task of every node, like the `_quorum` job).
    let config = SchedulerConfig {
        decisions_per_pass: DECISIONS,
        max_in_flight: usize::MAX,
        new_nodes_on_probation: false,
        ..SchedulerConfig::default()
    };
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(DECISIONS as u64));
    g.sample_size(20);
    // A selective Blender job (about a quarter of the Blender bucket
    // qualifies) and an easy builtin one.
    let jobs = [
        (
            "place_1000_of_10k_nodes",
            JobKind::Blender {
                engine: BlenderEngine::Cycles,
            },
            Requirements {
                gpu_vendor: None,
                min_vram_bytes: 0,
                min_ram_bytes: 32 << 30,
                min_runtime_version: Some("4.0".into()),
            },
        ),
        (
            "place_1000_of_10k_nodes_any",
            JobKind::Builtin,
            Requirements::default(),
        ),
    ];
    let quorum = VerificationPolicy::Quorum {
        sample_permille: 1000,
        k: 2,
    };
    let jobs = jobs
        .into_iter()
        .map(|(n, k, r)| (n, k, r, VerificationPolicy::None))
        .chain([(
            "place_1000_of_10k_nodes_quorum",
            JobKind::Builtin,
            Requirements::default(),
            quorum,
        )]);
    for (name, kind, requirements, verification) in jobs {
        let mut s = Scheduler::new(NodeId::from_bytes([0xee; 32]), config.clone());
        for i in 0..NODES {
            s.observe_advert(&fleet_advert(i, &mut rng, now), now + 60_000, now);
        }
        let spec = JobSpec {
            id: JobId::derive(&creator.node_id(), 1),
            creator: creator.node_id(),
            nonce: 1,
            created_at_ms: now,
            kind,
            inputs: vec![],
            requirements,
            split: SplitRule::Frames {
                start: 1,
                end: 100_000,
                step: 1,
            },
            width: 1920,
            height: 1080,
            format: ImageFormat::Png,
            max_price_per_task: 12,
            verification,
            deadline_ms: now + 86_400_000,
        };
        let frame = Signed::sign(&creator, &spec).unwrap().into_bytes();
        s.submit(spec, frame.into(), now).unwrap();
        g.bench_function(name, |b| {
            b.iter_batched(
                || s.clone(),
                |mut s| {
                    s.handle_timeout(now, &mut rng);
                    let mut offers = 0;
                    while let Some(a) = s.poll_action() {
                        offers += usize::from(matches!(
                            a,
                            rendertrust_protocol::scheduler::SchedulerAction::Offer { .. }
                                | rendertrust_protocol::scheduler::SchedulerAction::OfferCrop { .. }
                        ));
                        black_box(a);
                    }
                    assert_eq!(offers, DECISIONS);
                    s
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// A kit with `WORKERS` workers, and `n` tasks of one job: escrow and
/// settle events, encoded as they arrive from the wire.
fn ledger_flow(n: u32) -> (Kit, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut kit = Kit::new(9);
    kit.workers = (0..WORKERS as u64)
        .map(|i| NodeKey::from_secret_bytes(blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    let spec = kit.spec(0, 1, n, 10).unwrap();
    let job = spec.verify().unwrap().id;
    let creator = kit.creators[0].node_id();
    let (mut escrows, mut settles) = (Vec::new(), Vec::new());
    for index in 0..n {
        let offer = kit.offer(TaskId { job, index }, 0, index as usize, 0, 5);
        escrows.push(
            kit.escrow_for(&spec, &offer, true)
                .unwrap()
                .encode()
                .unwrap(),
        );
        let receipt = kit.receipt(&offer, &creator);
        settles.push(
            kit.settle(&receipt, T0 + 130_000 + u64::from(index))
                .unwrap()
                .encode()
                .unwrap(),
        );
    }
    (kit, escrows, settles)
}

fn decode_all(frames: &[Vec<u8>]) -> Vec<LedgerEvent> {
    frames
        .iter()
        .map(|f| LedgerEvent::decode(f).unwrap())
        .collect()
}

fn ledger(c: &mut Criterion) {
    let (kit, escrows, settles) = ledger_flow(BATCH as u32);
    let mut escrowed = Ledger::new(kit.config());
    assert!(
        escrowed
            .handle_events(&decode_all(&escrows), T0)
            .iter()
            .all(|r| r.is_ok())
    );
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(30);
    // The receipt path of a ledger peer: wire bytes → decoded events → batch
    // verification of 2 × 1024 signatures → admission and settlement.
    g.bench_function("ingest_settle_1024", |b| {
        b.iter_batched(
            || escrowed.clone(),
            |mut l| {
                let out = l.handle_events(&decode_all(&settles), T0);
                assert!(out.iter().all(|r| r.is_ok()));
                l
            },
            BatchSize::LargeInput,
        )
    });
    let fresh = Ledger::new(kit.config());
    g.bench_function("ingest_escrow_settle_1024", |b| {
        b.iter_batched(
            || fresh.clone(),
            |mut l| {
                let out = l.handle_events(&decode_all(&escrows), T0);
                let out2 = l.handle_events(&decode_all(&settles), T0);
                assert!(out.iter().chain(&out2).all(|r| r.is_ok()));
                l
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn rollup(c: &mut Criterion) {
    const N: u32 = 1_000_000;
    let config = RollupConfig::default();
    let at = 10 * config.epoch_ms + 5;
    let close = 11 * config.epoch_ms + config.grace_ms;
    let ids: Vec<MessageId> = (0..N)
        .map(|i| MessageId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    let me = NodeKey::from_secret_bytes(&[1; 32]).node_id();
    let mut g = c.benchmark_group("rollup");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(N)));
    g.bench_function("record_close_1M", |b| {
        b.iter(|| {
            let mut r = Rollup::new(me, config);
            for id in &ids {
                r.record(*id, at, at);
            }
            r.handle_timeout(close);
            r
        })
    });
    let mut r = Rollup::new(me, config);
    for id in &ids {
        r.record(*id, at, at);
    }
    r.handle_timeout(close);
    let target = ids[777_777];
    let proof = r.proof(&target).unwrap();
    eprintln!(
        "rollup: 1M-receipt epoch proof: {} path hashes, {} bytes encoded",
        proof.proof.path.len(),
        codec::encode(&proof.proof).unwrap().len()
    );
    g.throughput(Throughput::Elements(1));
    g.sample_size(100);
    // The tree is cached after the first proof of an epoch.
    g.bench_function("proof_1M", |b| {
        b.iter(|| r.proof(black_box(&target)).unwrap())
    });
    g.bench_function("proof_verify_1M", |b| {
        b.iter(|| proof.verify(black_box(&target)).unwrap())
    });
    g.finish();
}

/// The trust hot paths: the spot-check metric on a typical crop (a quarter
/// of a 1024-pixel region side), and the reputation book's updates.
fn trust(c: &mut Criterion) {
    use rendertrust_protocol::reputation::{
        Outcome, ReputationBook, ReputationConfig, ReputationReport,
    };
    use rendertrust_protocol::verify::metric::{Image, similarity_milli};
    let mut g = c.benchmark_group("trust");
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let side = 256u32;
    let mut a = vec![0u8; (side * side * 3) as usize];
    rng.fill_bytes(&mut a);
    let b: Vec<u8> = a.iter().map(|v| v.wrapping_add((*v >> 6) & 1)).collect();
    let (ia, ib) = (
        Image::new(side, side, 3, &a).unwrap(),
        Image::new(side, side, 3, &b).unwrap(),
    );
    g.throughput(Throughput::Elements(u64::from(side * side)));
    g.bench_function("ssim_256x256", |bench| {
        bench.iter(|| similarity_milli(black_box(&ia), black_box(&ib)).unwrap())
    });
    let now = 1_780_000_000_000u64;
    let id = |i: u64| {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&i.to_le_bytes());
        NodeId::from_bytes(b)
    };
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("reputation_observe_10k", |bench| {
        bench.iter_batched(
            || ReputationBook::new(id(u64::MAX), ReputationConfig::default()),
            |mut book| {
                for i in 0..10_000u64 {
                    book.observe(id(i % 1000), Outcome::Verified, now + i * 1000);
                }
                book
            },
            BatchSize::LargeInput,
        )
    });
    // A book of 10 000 nodes; a full report by a trusted reporter.
    let mut config = ReputationConfig::default();
    config.trusted_reporters.insert(id(1 << 40));
    let mut book = ReputationBook::new(id(u64::MAX), config);
    for i in 0..10_000u64 {
        book.observe(id(i), Outcome::Verified, now);
    }
    let report = ReputationReport {
        issued_at_ms: now,
        reporter: id(1 << 40),
        ..book.report(now, 1024)
    };
    g.throughput(Throughput::Elements(1024));
    g.bench_function("reputation_merge_1024", |bench| {
        bench.iter_batched(
            || book.clone(),
            |mut b| {
                b.merge(black_box(&report), now + 1).unwrap();
                b
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("reputation_report_1024", |bench| {
        bench.iter(|| black_box(book.report(now, 1024)))
    });
    g.finish();
}

criterion_group!(
    benches, receipts, sealing, content, merkle, scheduler, ledger, rollup, trust
);
criterion_main!(benches);
