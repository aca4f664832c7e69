//! Criterion benches of the ledger peer's receipt path with persistence:
//! wire bytes → decode → batch signature verification → admission and
//! settlement → journal append → sled flush, per batch of 1024.
//!
//! | bench | what |
//! |---|---|
//! | `ledger_store/ingest_settle_1024` | 1024 doubly-signed receipts whose escrows are held (the "receipts ingested per second": verify + apply + persist) |
//! | `ledger_store/ingest_escrow_settle_1024` | 1024 escrows, then their 1024 receipts (two flushes) |
//! | `raw/sled_chunks_flush_1024` | the journal's writes alone: as many bytes as 1024 settle records, in 64 KiB records of one sled batch, then a flush |
//!
//! The store lives in a temporary directory (on this machine's disk); each
//! timed batch is fresh (pre-signed outside the timing), so nothing is a duplicate.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rendertrust_node::ledger_store::LedgerStore;
use rendertrust_node::store::Store;
use rendertrust_protocol::identity::NodeKey;
use rendertrust_protocol::ledger::LedgerEvent;
use rendertrust_protocol::ledger::testkit::{Kit, T0};
use rendertrust_protocol::rollup::RollupConfig;
use rendertrust_protocol::wire::TaskId;

const BATCH: usize = 1024;
const WORKERS: u64 = 256;
/// Batches signed ahead per store (one job of up to 100 000 tasks).
const POOL: usize = 12;

struct Pool {
    _dir: tempfile::TempDir,
    store: LedgerStore,
    escrows: Vec<Vec<Vec<u8>>>,
    settles: Vec<Vec<Vec<u8>>>,
}

fn kit() -> Kit {
    let mut kit = Kit::new(11);
    kit.workers = (0..WORKERS)
        .map(|i| NodeKey::from_secret_bytes(blake3::hash(&i.to_le_bytes()).as_bytes()))
        .collect();
    kit
}

/// A fresh store and `POOL` batches of escrow and settle events as wire bytes.
fn pool(kit: &Kit, nonce: u64) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let store = LedgerStore::open(
        &store,
        &kit.ledgers[0],
        kit.config(),
        RollupConfig::default(),
    )
    .unwrap();
    let n = (POOL * BATCH) as u32;
    let spec = kit.spec(0, nonce, n, 10).unwrap();
    let job = spec.verify().unwrap().id;
    let creator = kit.creators[0].node_id();
    let (mut escrows, mut settles) = (Vec::new(), Vec::new());
    for b in 0..POOL {
        let (mut e, mut s) = (Vec::new(), Vec::new());
        for i in 0..BATCH {
            let index = (b * BATCH + i) as u32;
            let offer = kit.offer(TaskId { job, index }, 0, index as usize, 0, 5);
            e.push(
                kit.escrow_for(&spec, &offer, true)
                    .unwrap()
                    .encode()
                    .unwrap(),
            );
            s.push(
                kit.settle(
                    &kit.receipt(&offer, &creator),
                    T0 + 130_000 + u64::from(index),
                )
                .unwrap()
                .encode()
                .unwrap(),
            );
        }
        escrows.push(e);
        settles.push(s);
    }
    Pool {
        _dir: dir,
        store,
        escrows,
        settles,
    }
}

fn ingest(store: &mut LedgerStore, frames: &[Vec<u8>]) {
    let events: Vec<LedgerEvent> = frames
        .iter()
        .map(|f| LedgerEvent::decode(f).unwrap())
        .collect();
    let out = store.ingest(&events, T0).unwrap();
    assert!(out.iter().all(|r| r.is_ok()));
}

fn ledger_store(c: &mut Criterion) {
    let kit = kit();
    let mut g = c.benchmark_group("ledger_store");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let mut nonce = 0;
    g.bench_function("ingest_settle_1024", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                nonce += 1;
                let mut p = pool(&kit, nonce);
                let take = left.min(POOL);
                for e in &p.escrows[..take] {
                    ingest(&mut p.store, e);
                }
                for s in &p.settles[..take] {
                    let t = Instant::now();
                    ingest(&mut p.store, s);
                    total += t.elapsed();
                }
                left -= take;
            }
            total
        })
    });
    g.bench_function("ingest_escrow_settle_1024", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                nonce += 1;
                let mut p = pool(&kit, nonce);
                let take = left.min(POOL);
                for i in 0..take {
                    let t = Instant::now();
                    ingest(&mut p.store, &p.escrows[i]);
                    ingest(&mut p.store, &p.settles[i]);
                    total += t.elapsed();
                }
                left -= take;
            }
            total
        })
    });
    g.finish();

    // What the journal costs on this disk, without the ledger.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tree = store.tree("ledger").unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut seq = 0u64;
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("sled_chunks_flush_1024", |b| {
        b.iter(|| {
            let mut batch = sled::Batch::default();
            for _ in 0..(BATCH * 540).div_ceil(chunk.len()) {
                let mut key = vec![b'l'];
                key.extend_from_slice(&seq.to_be_bytes());
                batch.insert(key, chunk.clone());
                seq += 1;
            }
            tree.apply_batch(batch).unwrap();
            store.flush().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, ledger_store);
criterion_main!(benches);
