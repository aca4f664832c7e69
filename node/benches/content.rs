//! Criterion benches of the content pipelines on a 256 MiB file, beside the
//! raw primitives they are built on, so the ratio can be read off:
//!
//! | bench | compare with |
//! |---|---|
//! | `content/seal_file_256MiB`: file → STREAM (64 KiB) → 1 MiB chunks → store, plaintext BLAKE3, chunk hashes, fsync + rename per chunk | `content/raw_seal_chunks_256MiB` (in-place STREAM in memory) |
//! | `content/open_file_256MiB`: store → STREAM → output file (temp, fsync, rename), plaintext BLAKE3 | `content/raw_open_chunks_256MiB` |
//! | - | `content/raw_blake3_256MiB` (one BLAKE3 pass, single thread) |
//!
//! Files live on tmpfs (`/dev/shm`) when there is one, so the figures are
//! CPU and memory bound, not disk bound; `RT_BENCH_DIR=/some/disk` benches
//! on a real file system instead (one fsync per 1 MiB chunk). The pipelines use three threads.
//! Run: `cargo bench -p rendertrust-node --bench content`.
//!
//! With `RT_BENCH_CPU=1` every bench measures the process's CPU time (all
//! threads) instead of wall time, under names ending in `_cpu`: the
//! "throughput" is then bytes per CPU-second, a cost that a loaded machine
//! distorts far less than wall time, and the ratio pipeline/raw is the CPU
//! overhead of the pipeline (hashing, copies, file I/O) over the cipher.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use nix::time::{ClockId, clock_gettime};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng as _, SeedableRng};
use rendertrust_node::content::{
    ContentConfig, ContentStore, open_from_store, seal_file_into_store,
};
use rendertrust_protocol::seal::{self, JobKey};

const SIZE: usize = 256 << 20;

fn scratch() -> tempfile::TempDir {
    if let Some(dir) = std::env::var_os("RT_BENCH_DIR") {
        tempfile::tempdir_in(dir).unwrap()
    } else if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// Wall time, or with `RT_BENCH_CPU` set, the process's CPU time.
struct Clock {
    cpu: bool,
    base: Instant,
}

impl Clock {
    fn new() -> Self {
        Self {
            cpu: std::env::var_os("RT_BENCH_CPU").is_some(),
            base: Instant::now(),
        }
    }

    fn now(&self) -> Duration {
        if self.cpu {
            let t = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
            Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
        } else {
            self.base.elapsed()
        }
    }

    fn name(&self, name: &str) -> String {
        if self.cpu {
            format!("{name}_cpu")
        } else {
            name.to_string()
        }
    }

    /// Runs `f` `iters` times, timing only `f`; `after` runs untimed.
    fn time<T>(&self, iters: u64, mut f: impl FnMut() -> T, mut after: impl FnMut()) -> Duration {
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            let start = self.now();
            black_box(f());
            timed += self.now() - start;
            after();
        }
        timed
    }
}

fn content(c: &mut Criterion) {
    let clock = Clock::new();
    let dir = scratch();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut plain = vec![0u8; SIZE];
    rng.fill_bytes(&mut plain);
    let input = dir.path().join("input");
    std::fs::write(&input, &plain).unwrap();
    let output = dir.path().join("output");
    let store = ContentStore::open(
        &dir.path().join("data"),
        ContentConfig {
            max_bytes: u64::MAX,
        },
    )
    .unwrap();
    let key = JobKey::from_bytes([9; 32]);
    let everything = SystemTime::now() + Duration::from_secs(1 << 20);

    let mut g = c.benchmark_group("content");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(12));

    g.bench_function(clock.name("seal_file_256MiB"), |b| {
        b.iter_custom(|iters| {
            clock.time(
                iters,
                || seal_file_into_store(&store, &input, &key, b"bench", &mut rng).unwrap(),
                // Every seal is a new stream: drop it, untimed.
                || {
                    store.gc(&BTreeSet::new(), everything).unwrap();
                },
            )
        })
    });

    let sealed = seal_file_into_store(&store, &input, &key, b"bench", &mut rng).unwrap();
    g.bench_function(clock.name("open_file_256MiB"), |b| {
        b.iter_custom(|iters| {
            clock.time(
                iters,
                || open_from_store(&store, &sealed.manifest_id, &key, b"bench", &output).unwrap(),
                || {},
            )
        })
    });
    // (Absent when a filter skipped the open bench.)
    if let Ok(opened) = std::fs::read(&output) {
        assert!(opened == plain, "the opened file is the input");
    }

    let chunk = seal::DEFAULT_CHUNK_SIZE;
    let mut buf = Vec::with_capacity(chunk + seal::TAG_LEN);
    g.bench_function(clock.name("raw_seal_chunks_256MiB"), |b| {
        b.iter_custom(|iters| {
            clock.time(
                iters,
                || {
                    let (mut sealer, header) =
                        seal::Sealer::new(&key, b"bench", chunk, &mut rng).unwrap();
                    black_box(header);
                    let (rest, last) = plain.split_at(SIZE - chunk);
                    for piece in rest.chunks(chunk) {
                        buf.clear();
                        buf.extend_from_slice(piece);
                        sealer.seal_chunk(&mut buf).unwrap();
                        black_box(&buf);
                    }
                    buf.clear();
                    buf.extend_from_slice(last);
                    sealer.seal_final(&mut buf).unwrap();
                },
                || {},
            )
        })
    });

    let stream = seal::seal_to_vec(&key, b"bench", &plain, &mut rng).unwrap();
    let (header, body) = stream.split_at(seal::HEADER_LEN);
    let sealed_chunks: Vec<&[u8]> = body.chunks(chunk + seal::TAG_LEN).collect();
    g.bench_function(clock.name("raw_open_chunks_256MiB"), |b| {
        b.iter_custom(|iters| {
            clock.time(
                iters,
                || {
                    let mut opener = seal::Opener::new(&key, b"bench", header).unwrap();
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
                },
                || {},
            )
        })
    });
    drop(stream);

    g.bench_function(clock.name("raw_blake3_256MiB"), |b| {
        b.iter_custom(|iters| clock.time(iters, || blake3::hash(black_box(&plain)), || {}))
    });
    g.finish();
}

criterion_group!(benches, content);
criterion_main!(benches);
