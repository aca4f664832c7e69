//! Fetching content from a peer, independent of the transport:
//! [`ChunkSource`] is what a peer offers (implemented by the node over the
//! `/rendertrust/content/1` request-response protocol), [`fetch_content`]
//! pulls one manifest and its missing chunks into the [`ContentStore`].
//!
//! What the fetch guarantees: the manifest is stored only if it hashes to
//! the id asked for; a chunk is stored only after it verified against that
//! manifest; a chunk already stored is never requested again (a broken
//! transfer resumes where it stopped, a second task of the same job fetches
//! nothing); at most [`FetchOptions::max_in_flight`] requests are
//! outstanding (pipelining keeps a QUIC connection busy); a failed or
//! rejected chunk is retried [`FetchOptions::max_attempts`] times in all,
//! then the fetch fails naming the chunk.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::{BoxStream, FuturesUnordered, SelectAll};
use rendertrust_protocol::content::{CHUNK_SIZE, ContentError, ContentId, Manifest};

use super::buf::ChunkBuf;
use super::store::{ContentStore, PutChunk, PutChunkError, PutManifestError};

/// Answers of [`ChunkSource::get_chunks`]: (chunk index, its bytes or why
/// not), in the order asked.
pub type ChunkAnswers<'a, E> = BoxStream<'a, (u32, Result<ChunkBuf, E>)>;

/// A peer (or set of peers) that serves content by manifest id.
///
/// Answers are untrusted: [`fetch_content`] verifies every one. An
/// implementation should bound what it accepts from the wire (a chunk is at
/// most the manifest's chunk size, 1 MiB by default; a manifest at most
/// `13 + 32 × MAX_CHUNKS` bytes) and may pick a different peer per call.
pub trait ChunkSource: Sync {
    /// Why a request failed (connection dropped, peer refused, timeout…).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The manifest with this id.
    fn get_manifest(
        &self,
        id: ContentId,
    ) -> impl Future<Output = Result<Manifest, Self::Error>> + Send;

    /// Chunk `index` of manifest `id`: the sealed bytes, as stored.
    fn get_chunk(
        &self,
        id: ContentId,
        index: u32,
    ) -> impl Future<Output = Result<Vec<u8>, Self::Error>> + Send;

    /// How many chunks one [`get_chunks`](Self::get_chunks) call should
    /// carry: 1 (the default) for sources that answer chunk by chunk.
    fn batch_size(&self) -> usize {
        1
    }

    /// Chunks of manifest `id`, each given as (index, length by the
    /// manifest), answered in order as a stream: one answer per chunk asked
    /// for, an error for each chunk the source could not deliver. A source
    /// must not accept more bytes for a chunk than its length. The default
    /// asks [`get_chunk`](Self::get_chunk) for one after the other.
    fn get_chunks(&self, id: ContentId, chunks: Vec<(u32, u32)>) -> ChunkAnswers<'_, Self::Error> {
        futures::stream::iter(chunks)
            .then(move |(index, _)| async move {
                (index, self.get_chunk(id, index).await.map(ChunkBuf::from))
            })
            .boxed()
    }
}

/// Limits of one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// Most chunk requests outstanding at once (and most chunks waiting to
    /// be written): at least 1; default 8.
    pub max_in_flight: usize,
    /// Tries per chunk (and for the manifest) before the fetch fails: at
    /// least 1; default 4.
    pub max_attempts: u32,
    /// Wait before retry `n` is `n × retry_delay`; default 200 ms.
    pub retry_delay: Duration,
    /// Largest content chunk size accepted in a manifest (default 1 MiB,
    /// what the content protocol carries): bounds the memory a fetched
    /// manifest can make this node spend per chunk.
    pub max_chunk_size: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 8,
            max_attempts: 4,
            retry_delay: Duration::from_millis(200),
            max_chunk_size: CHUNK_SIZE,
        }
    }
}

/// How far a fetch is, reported after the manifest and after each chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProgress {
    /// Sealed bytes present (cached before or fetched now).
    pub done_bytes: u64,
    /// Sealed bytes of the whole content.
    pub total_bytes: u64,
    /// Chunks present.
    pub done_chunks: u32,
    /// Chunks in the manifest.
    pub total_chunks: u32,
}

/// What a finished fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// The content's manifest.
    pub manifest: Arc<Manifest>,
    /// Whether the manifest was requested (false: it was stored already).
    pub manifest_fetched: bool,
    /// Chunks fetched and stored now.
    pub chunks_fetched: u32,
    /// Chunks that were stored already and not requested.
    pub chunks_cached: u32,
    /// Sealed bytes fetched and stored now.
    pub bytes_fetched: u64,
    /// Requests that failed or were rejected and were tried again.
    pub retries: u32,
}

/// Why an answer from the source was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The manifest is not the one asked for.
    #[error("manifest must hash to {expected}, found {found}")]
    ManifestId {
        /// The id asked for.
        expected: ContentId,
        /// The id of what came back.
        found: ContentId,
    },
    /// The manifest's chunks are larger than this node accepts.
    #[error("manifest chunk size must be at most {max} bytes, found {found}")]
    ChunkSize {
        /// [`FetchOptions::max_chunk_size`].
        max: u32,
        /// The manifest's chunk size.
        found: u32,
    },
    /// The manifest is inconsistent, or the chunk does not match it.
    #[error(transparent)]
    Content(#[from] ContentError),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a fetch stopped. Chunks stored before the failure stay: fetching
/// again resumes with the missing ones.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No valid manifest with this id came back after every attempt.
    #[error("manifest {id}: no valid answer after {attempts} attempts, last: {last}")]
    Manifest {
        /// The manifest id.
        id: ContentId,
        /// Attempts made.
        attempts: u32,
        /// The last failure (a source error or a [`Rejection`]).
        #[source]
        last: BoxError,
    },
    /// A chunk failed or was rejected on every attempt.
    #[error("chunk {index} of {id}: no valid answer after {attempts} attempts, last: {last}")]
    Chunk {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
        /// Attempts made.
        attempts: u32,
        /// The last failure (a source error or a [`Rejection`]).
        #[source]
        last: BoxError,
    },
    /// The missing chunks do not fit in the store's budget.
    #[error(
        "content {id} needs {needed} more bytes, the content store has {available} left: free \
         space with gc or raise the budget"
    )]
    BudgetExceeded {
        /// The manifest id.
        id: ContentId,
        /// Bytes still to fetch.
        needed: u64,
        /// Bytes left in the budget.
        available: u64,
    },
    /// Storing the manifest failed.
    #[error("storing manifest {id}: {source}")]
    StoreManifest {
        /// The manifest id.
        id: ContentId,
        /// The cause.
        source: PutManifestError,
    },
    /// Storing a chunk failed for a reason retrying cannot fix (disk,
    /// budget, manifest collected meanwhile).
    #[error("storing chunk {index} of {id}: {source}")]
    StoreChunk {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
        /// The cause.
        source: PutChunkError,
    },
    /// Every chunk was stored but the content is not complete: it was
    /// garbage-collected during the fetch.
    #[error("content {id} was removed from the store during the fetch")]
    Collected {
        /// The manifest id.
        id: ContentId,
    },
    /// A blocking store task panicked or the runtime is shutting down.
    #[error("store task failed: {0}")]
    Task(String),
}

/// A chunk request's answer: index, attempt, bytes or error.
type Answer<E> = (u32, u32, Result<ChunkBuf, E>);
/// A chunk write's outcome: index, attempt, length, result.
type Written = (
    u32,
    u32,
    u64,
    Result<Result<PutChunk, PutChunkError>, tokio::task::JoinError>,
);
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches content `id` from `source` into `store`: the manifest (unless
/// stored), then every missing chunk, verified before it is stored.
/// `progress` is called after the manifest and after each stored chunk.
///
/// Store writes run on `tokio::task::spawn_blocking`, so this needs a tokio
/// runtime.
pub async fn fetch_content<S, P>(
    store: &ContentStore,
    id: ContentId,
    source: &S,
    options: &FetchOptions,
    mut progress: P,
) -> Result<FetchReport, FetchError>
where
    S: ChunkSource,
    P: FnMut(FetchProgress) + Send,
{
    let max_attempts = options.max_attempts.max(1);
    let max_in_flight = options.max_in_flight.max(1);
    let mut retries = 0u32;
    let (manifest, manifest_fetched) = match store.get_manifest(&id) {
        Some(manifest) => (manifest, false),
        None => (
            fetch_manifest(store, id, source, options, &mut retries).await?,
            true,
        ),
    };
    let missing = store
        .missing_chunks(&id)
        .ok_or(FetchError::Collected { id })?;
    let total_chunks = u32::try_from(manifest.chunks.len()).unwrap_or(u32::MAX);
    // Indices share a hash only in a hand-made manifest; fetch each hash once.
    let mut pending_bytes: HashMap<ContentId, (u64, u32)> = HashMap::new();
    let mut queue: VecDeque<(u32, u32)> = VecDeque::new();
    let mut missing_bytes = 0u64;
    let mut distinct_bytes = 0u64;
    for &index in &missing {
        let (Some(hash), Ok(len)) = (
            manifest.chunks.get(index as usize),
            manifest.chunk_len(index),
        ) else {
            continue;
        };
        let len = u64::from(len);
        missing_bytes += len;
        let entry = pending_bytes.entry(*hash).or_insert((0, 0));
        if entry.1 == 0 {
            queue.push_back((index, 0));
            distinct_bytes += len;
        }
        entry.0 += len;
        entry.1 += 1;
    }
    let usage = store.usage();
    let available = usage.max_bytes.saturating_sub(usage.bytes_used);
    if distinct_bytes > available {
        return Err(FetchError::BudgetExceeded {
            id,
            needed: distinct_bytes,
            available,
        });
    }
    let mut state = FetchProgress {
        done_bytes: manifest.total_size - missing_bytes.min(manifest.total_size),
        total_bytes: manifest.total_size,
        done_chunks: total_chunks.saturating_sub(missing.len() as u32),
        total_chunks,
    };
    progress(state);
    let mut report = FetchReport {
        manifest: Arc::clone(&manifest),
        manifest_fetched,
        chunks_fetched: 0,
        chunks_cached: state.done_chunks,
        bytes_fetched: 0,
        retries: 0,
    };

    // Chunks are asked for in batches of the source's size (one chunk
    // stream each for a peer); a batched source gets `max_in_flight` chunks'
    // worth of batches at once, and at least two so that the next batch's
    // request overlaps the end of the current one.
    let batch_size = source.batch_size().max(1);
    let max_batches = if batch_size == 1 {
        max_in_flight
    } else {
        max_in_flight.div_ceil(batch_size).max(2)
    };
    let mut requests: SelectAll<BoxStream<'_, Answer<S::Error>>> = SelectAll::new();
    let mut writes: FuturesUnordered<BoxFuture<'static, Written>> = FuturesUnordered::new();
    let outcome = loop {
        while requests.len() < max_batches && writes.len() < max_in_flight {
            let Some((index, attempt)) = queue.pop_front() else {
                break;
            };
            // One batch: this chunk and the queued ones on the same attempt.
            let mut batch = vec![(index, manifest.chunk_len(index).unwrap_or(0))];
            while batch.len() < batch_size
                && let Some(&(next, a)) = queue.front()
                && a == attempt
            {
                queue.pop_front();
                batch.push((next, manifest.chunk_len(next).unwrap_or(0)));
            }
            let delay = options.retry_delay * attempt;
            let answers = futures::stream::once(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            })
            .flat_map(move |()| source.get_chunks(id, batch.clone()))
            .map(move |(index, result)| (index, attempt, result));
            requests.push(answers.boxed());
        }
        if requests.is_empty() && writes.is_empty() {
            break Ok(());
        }
        let (index, attempt, last): (u32, u32, BoxError) = tokio::select! {
            // Finish writes first: they hold the memory.
            biased;
            Some((index, attempt, len, result)) = writes.next(), if !writes.is_empty() => {
                let put = match result {
                    Ok(put) => put,
                    Err(e) => break Err(FetchError::Task(e.to_string())),
                };
                match put {
                    Ok(_) => {
                        let hash = manifest.chunks.get(index as usize).copied();
                        let (bytes, chunks) = hash
                            .and_then(|h| pending_bytes.remove(&h))
                            .unwrap_or((len, 1));
                        state.done_bytes += bytes;
                        state.done_chunks += chunks;
                        report.chunks_fetched += 1;
                        report.bytes_fetched += len;
                        progress(state);
                        continue;
                    }
                    Err(PutChunkError::Rejected { source, .. }) => {
                        (index, attempt, Box::new(Rejection::Content(source)))
                    }
                    Err(source) => break Err(FetchError::StoreChunk { id, index, source }),
                }
            }
            Some((index, attempt, result)) = requests.next(),
                if !requests.is_empty() && writes.len() < max_in_flight =>
            {
                match result {
                    Ok(bytes) => {
                        let store = store.clone();
                        let len = bytes.len() as u64;
                        let put = tokio::task::spawn_blocking(move || {
                            store.put_chunk(&id, index, &bytes)
                        });
                        writes.push(Box::pin(async move { (index, attempt, len, put.await) }));
                        continue;
                    }
                    Err(e) => (index, attempt, Box::new(e)),
                }
            }
            // Unreachable: one of the sets is not empty.
            else => continue,
        };
        let attempts = attempt + 1;
        tracing::debug!(%id, index, attempts, error = %last, "chunk fetch failed");
        if attempts >= max_attempts {
            break Err(FetchError::Chunk {
                id,
                index,
                attempts,
                last,
            });
        }
        retries += 1;
        queue.push_back((index, attempts));
    };
    if let Err(e) = outcome {
        // Abandon the requests, but let the writes finish: when this
        // returns, nothing of this fetch is still changing the store.
        drop(requests);
        while writes.next().await.is_some() {}
        return Err(e);
    }
    if !store.has_complete(&id) {
        return Err(FetchError::Collected { id });
    }
    store.touch(&id);
    report.retries = retries;
    Ok(report)
}

/// Requests the manifest until one hashes to `id` and validates, then
/// stores it.
async fn fetch_manifest<S: ChunkSource>(
    store: &ContentStore,
    id: ContentId,
    source: &S,
    options: &FetchOptions,
    retries: &mut u32,
) -> Result<Arc<Manifest>, FetchError> {
    let max_attempts = options.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        if attempt > 0 {
            *retries += 1;
            tokio::time::sleep(options.retry_delay * attempt).await;
        }
        attempt += 1;
        let last: BoxError = match source.get_manifest(id).await {
            Ok(manifest) => match check_manifest(&manifest, id, options.max_chunk_size) {
                Ok(()) => {
                    let store = store.clone();
                    let put = tokio::task::spawn_blocking(move || {
                        store.put_manifest(&manifest).map(|_| manifest)
                    })
                    .await
                    .map_err(|e| FetchError::Task(e.to_string()))?;
                    let manifest =
                        put.map_err(|source| FetchError::StoreManifest { id, source })?;
                    return Ok(Arc::new(manifest));
                }
                Err(rejection) => Box::new(rejection),
            },
            Err(e) => Box::new(e),
        };
        tracing::debug!(%id, attempt, error = %last, "manifest fetch failed");
        if attempt >= max_attempts {
            return Err(FetchError::Manifest {
                id,
                attempts: attempt,
                last,
            });
        }
    }
}

fn check_manifest(manifest: &Manifest, id: ContentId, max_chunk: u32) -> Result<(), Rejection> {
    manifest.validate()?;
    if manifest.chunk_size > max_chunk {
        return Err(Rejection::ChunkSize {
            max: max_chunk,
            found: manifest.chunk_size,
        });
    }
    let found = manifest.id();
    if found != id {
        return Err(Rejection::ManifestId {
            expected: id,
            found,
        });
    }
    Ok(())
}

/// The chunk indices a fetch would request: missing ones, one per hash.
#[cfg(test)]
pub(super) fn to_request(store: &ContentStore, id: &ContentId) -> Option<Vec<u32>> {
    let manifest = store.get_manifest(id)?;
    let mut seen = std::collections::HashSet::new();
    Some(
        store
            .missing_chunks(id)?
            .into_iter()
            .filter(|&i| {
                manifest
                    .chunks
                    .get(i as usize)
                    .is_some_and(|h| seen.insert(*h))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rand_chacha::ChaCha20Rng;
    use rand_core::Rng as _;

    use super::super::test_util::{data, key, open_store, rng, small, write_file};
    use super::super::{ContentConfig, open_from_store, seal_file_into_store_with};
    use super::*;

    /// Our test double of a *peer*: serves a real store, and misbehaves as
    /// told (drops requests, answers garbage, dies for good).
    struct Peer {
        store: ContentStore,
        state: Mutex<PeerState>,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    struct PeerState {
        rng: ChaCha20Rng,
        /// Chance (‰) that a chunk answer is an error or bad bytes.
        fault_permille: u64,
        /// Good chunk answers before the connection drops for good.
        die_after: Option<usize>,
        good_answers: usize,
        /// Index always answered with garbage.
        poison: Option<u32>,
        /// Manifest answered instead of the real one.
        lie: Option<Manifest>,
        chunk_log: Vec<u32>,
        manifest_requests: u32,
        /// Indices already answered correctly: asking again is a refetch.
        answered: BTreeSet<u32>,
        refetches: Vec<u32>,
    }

    #[derive(Debug, thiserror::Error)]
    enum PeerError {
        #[error("connection dropped")]
        Dropped,
        #[error("peer cannot serve: {0}")]
        Serve(String),
    }

    impl Peer {
        fn new(store: &ContentStore, seed: u64, fault_permille: u64) -> Self {
            Self {
                store: store.clone(),
                state: Mutex::new(PeerState {
                    rng: rng(seed),
                    fault_permille,
                    die_after: None,
                    good_answers: 0,
                    poison: None,
                    lie: None,
                    chunk_log: Vec::new(),
                    manifest_requests: 0,
                    answered: BTreeSet::new(),
                    refetches: Vec::new(),
                }),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            }
        }

        fn with(self, f: impl FnOnce(&mut PeerState)) -> Self {
            f(&mut self.state.lock().unwrap());
            self
        }

        fn state(&self) -> std::sync::MutexGuard<'_, PeerState> {
            self.state.lock().unwrap()
        }

        fn answer(&self, id: ContentId, index: u32) -> Result<Vec<u8>, PeerError> {
            let mut s = self.state();
            s.chunk_log.push(index);
            if s.answered.contains(&index) {
                s.refetches.push(index);
            }
            if s.die_after.is_some_and(|n| s.good_answers >= n) {
                return Err(PeerError::Dropped);
            }
            let good = self
                .store
                .get_chunk(&id, index)
                .map_err(|e| PeerError::Serve(e.to_string()))?;
            if s.poison == Some(index) {
                return Ok(vec![0x55; good.len()]);
            }
            if s.rng.next_u64() % 1000 < s.fault_permille {
                let mut bad = good.clone();
                return match s.rng.next_u64() % 5 {
                    0 => Err(PeerError::Dropped),
                    1 => {
                        s.rng.fill_bytes(&mut bad);
                        Ok(bad)
                    }
                    2 => {
                        bad.pop();
                        Ok(bad)
                    }
                    3 => {
                        bad.push(0);
                        Ok(bad)
                    }
                    _ => Ok(self
                        .store
                        .get_chunk(&id, index ^ 1)
                        .unwrap_or_else(|_| vec![1; 7])),
                };
            }
            s.good_answers += 1;
            s.answered.insert(index);
            Ok(good)
        }
    }

    impl ChunkSource for Peer {
        type Error = PeerError;

        async fn get_manifest(&self, id: ContentId) -> Result<Manifest, PeerError> {
            let lie = {
                let mut s = self.state();
                s.manifest_requests += 1;
                s.lie.clone()
            };
            tokio::task::yield_now().await;
            if let Some(lie) = lie {
                return Ok(lie);
            }
            self.store
                .get_manifest(&id)
                .map(|m| (*m).clone())
                .ok_or_else(|| PeerError::Serve("no such manifest".into()))
        }

        async fn get_chunk(&self, id: ContentId, index: u32) -> Result<Vec<u8>, PeerError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            // Let the other requests in: a network round trip.
            tokio::task::yield_now().await;
            let result = self.answer(id, index);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            result
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        peer_store: ContentStore,
        local: ContentStore,
        id: ContentId,
        chunks: usize,
        plain: Vec<u8>,
    }

    /// A peer holding ~`blocks` 4 KiB chunks of sealed content; an empty
    /// local store.
    fn setup(blocks: usize, local_config: ContentConfig) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let peer_store = open_store(&dir.path().join("peer"));
        let plain = data(blocks * 4096 + 123, blocks as u64);
        let input = write_file(dir.path(), "input", &plain);
        let sealed =
            seal_file_into_store_with(&peer_store, &input, &key(1), b"ctx", &mut rng(1), &small())
                .unwrap();
        let local = ContentStore::open(&dir.path().join("local"), local_config).unwrap();
        Setup {
            dir,
            peer_store,
            local,
            id: sealed.manifest_id,
            chunks: sealed.manifest.chunks.len(),
            plain,
        }
    }

    fn options(max_attempts: u32) -> FetchOptions {
        FetchOptions {
            max_in_flight: 4,
            max_attempts,
            retry_delay: Duration::ZERO,
            max_chunk_size: CHUNK_SIZE,
        }
    }

    fn assert_opens(s: &Setup) {
        let out = s.dir.path().join("out");
        open_from_store(&s.local, &s.id, &key(1), b"ctx", &out).unwrap();
        assert!(std::fs::read(out).unwrap() == s.plain);
    }

    #[tokio::test]
    async fn fetch_from_a_flaky_peer_verifies_everything() {
        for seed in 0..3u64 {
            let s = setup(40, ContentConfig::default());
            let peer = Peer::new(&s.peer_store, seed, 300);
            let mut seen = Vec::new();
            let report = fetch_content(&s.local, s.id, &peer, &options(30), |p| seen.push(p))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(report.manifest_fetched);
            assert_eq!(report.chunks_fetched as usize, s.chunks);
            assert_eq!(report.chunks_cached, 0);
            assert!(
                report.retries > 0,
                "seed {seed}: a 30% fault rate must show"
            );
            assert!(s.local.has_complete(&s.id));
            assert_opens(&s);
            let st = peer.state();
            assert!(st.refetches.is_empty(), "seed {seed}: {:?}", st.refetches);
            // Bounded, and pipelined.
            let max = peer.max_in_flight.load(Ordering::SeqCst);
            assert!((2..=4).contains(&max), "seed {seed}: {max} in flight");
            // Progress: from nothing to everything, never backwards.
            assert_eq!(seen.first().unwrap().done_bytes, 0);
            let last = seen.last().unwrap();
            assert_eq!(last.done_bytes, last.total_bytes);
            assert_eq!(last.done_chunks as usize, s.chunks);
            assert!(seen.windows(2).all(|w| w[0].done_bytes < w[1].done_bytes));
            assert_eq!(seen.len(), s.chunks + 1);
        }
    }

    #[tokio::test]
    async fn a_broken_transfer_resumes_with_the_missing_chunks_only() {
        let s = setup(30, ContentConfig::default());
        let dying = Peer::new(&s.peer_store, 1, 0).with(|st| st.die_after = Some(10));
        let error = fetch_content(&s.local, s.id, &dying, &options(2), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&error, FetchError::Chunk { attempts: 2, last, .. } if last.to_string() == "connection dropped"),
            "{error}"
        );
        // Every good answer was stored before fetch_content returned.
        let missing = to_request(&s.local, &s.id).unwrap();
        assert_eq!(missing.len(), s.chunks - 10);
        assert!(!s.local.has_complete(&s.id));

        let healthy = Peer::new(&s.peer_store, 2, 0);
        let mut seen = Vec::new();
        let report = fetch_content(&s.local, s.id, &healthy, &options(2), |p| seen.push(p))
            .await
            .unwrap();
        let mut log = healthy.state().chunk_log.clone();
        log.sort_unstable();
        assert_eq!(log, missing, "exactly the missing chunks, once each");
        assert_eq!(healthy.state().manifest_requests, 0);
        assert!(!report.manifest_fetched);
        assert_eq!(report.chunks_cached, 10);
        assert_eq!(report.chunks_fetched as usize, missing.len());
        // Progress starts from what was cached.
        assert!(seen[0].done_bytes > 0 && seen[0].done_chunks == 10);
        assert_opens(&s);
    }

    #[tokio::test]
    async fn complete_content_is_not_fetched_again() {
        let s = setup(8, ContentConfig::default());
        let peer = Peer::new(&s.peer_store, 1, 0);
        fetch_content(&s.local, s.id, &peer, &options(1), |_| {})
            .await
            .unwrap();
        let again = Peer::new(&s.peer_store, 1, 0);
        let mut seen = Vec::new();
        let report = fetch_content(&s.local, s.id, &again, &options(1), |p| seen.push(p))
            .await
            .unwrap();
        assert!(again.state().chunk_log.is_empty());
        assert_eq!(again.state().manifest_requests, 0);
        assert_eq!(report.chunks_fetched, 0);
        assert_eq!(report.chunks_cached as usize, s.chunks);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].done_bytes, seen[0].total_bytes);
    }

    #[tokio::test]
    async fn a_lying_manifest_is_refused() {
        let s = setup(4, ContentConfig::default());
        let other = s.peer_store.get_manifest(&s.id).unwrap();
        let mut other = (*other).clone();
        other.chunks.swap(0, 1);
        let liar = Peer::new(&s.peer_store, 1, 0).with(|st| st.lie = Some(other.clone()));
        let error = fetch_content(&s.local, s.id, &liar, &options(3), |_| {})
            .await
            .unwrap_err();
        match &error {
            FetchError::Manifest {
                attempts: 3, last, ..
            } => assert!(matches!(
                last.downcast_ref::<Rejection>(),
                Some(Rejection::ManifestId { expected, found }) if *expected == s.id && *found == other.id()
            )),
            other => panic!("{other}"),
        }
        assert_eq!(liar.state().manifest_requests, 3);
        assert!(liar.state().chunk_log.is_empty());
        assert!(s.local.get_manifest(&s.id).is_none());
        // An inconsistent manifest is refused too, before its id is computed.
        let mut broken = other;
        broken.chunks.pop();
        let liar = Peer::new(&s.peer_store, 1, 0).with(|st| st.lie = Some(broken));
        let error = fetch_content(&s.local, s.id, &liar, &options(1), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(
            &error,
            FetchError::Manifest { last, .. } if matches!(last.downcast_ref::<Rejection>(), Some(Rejection::Content(ContentError::ChunkCount { .. })))
        ));
        assert_eq!(s.local.usage().manifests, 0);
    }

    #[tokio::test]
    async fn manifests_with_chunks_too_large_are_refused() {
        let s = setup(4, ContentConfig::default());
        let peer = Peer::new(&s.peer_store, 1, 0);
        let strict = FetchOptions {
            max_chunk_size: 2048,
            ..options(2)
        };
        let error = fetch_content(&s.local, s.id, &peer, &strict, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(
            &error,
            FetchError::Manifest { last, .. } if matches!(
                last.downcast_ref::<Rejection>(),
                Some(Rejection::ChunkSize { max: 2048, found: 4096 })
            )
        ));
        assert!(peer.state().chunk_log.is_empty());
        assert_eq!(s.local.usage().manifests, 0);
    }

    #[tokio::test]
    async fn a_chunk_that_never_verifies_fails_the_fetch() {
        let s = setup(12, ContentConfig::default());
        let peer = Peer::new(&s.peer_store, 1, 0).with(|st| st.poison = Some(3));
        let error = fetch_content(&s.local, s.id, &peer, &options(3), |_| {})
            .await
            .unwrap_err();
        match &error {
            FetchError::Chunk {
                index: 3,
                attempts: 3,
                last,
                ..
            } => assert!(matches!(
                last.downcast_ref::<Rejection>(),
                Some(Rejection::Content(ContentError::ChunkHash { index: 3, .. }))
            )),
            other => panic!("{other}"),
        }
        let log = peer.state().chunk_log.clone();
        assert_eq!(log.iter().filter(|&&i| i == 3).count(), 3);
        // The garbage was never stored.
        assert!(s.local.missing_chunks(&s.id).unwrap().contains(&3));
    }

    #[tokio::test]
    async fn the_budget_is_checked_before_any_chunk_is_requested() {
        let s = setup(10, ContentConfig { max_bytes: 8192 });
        let peer = Peer::new(&s.peer_store, 1, 0);
        let error = fetch_content(&s.local, s.id, &peer, &options(1), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(error, FetchError::BudgetExceeded { needed, .. } if needed > 8192),
            "{error}"
        );
        assert!(peer.state().chunk_log.is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_peer_fails_after_the_attempts() {
        let s = setup(2, ContentConfig::default());
        let empty = open_store(&s.dir.path().join("empty"));
        let peer = Peer::new(&empty, 1, 0);
        let error = fetch_content(&s.local, s.id, &peer, &options(2), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(error, FetchError::Manifest { attempts: 2, .. }));
        assert_eq!(peer.state().manifest_requests, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_of_shared_content_run_concurrently() {
        let s = setup(20, ContentConfig::default());
        let peer = Peer::new(&s.peer_store, 3, 200);
        let local = s.local.clone();
        let opts = options(30);
        let (a, b) = tokio::join!(
            fetch_content(&local, s.id, &peer, &opts, |_| {}),
            fetch_content(&s.local, s.id, &peer, &opts, |_| {}),
        );
        a.unwrap();
        b.unwrap();
        assert_opens(&s);
        // Both may ask for a chunk before either stored it; every chunk
        // was asked for.
        let counts = peer
            .state()
            .chunk_log
            .iter()
            .fold(BTreeMap::new(), |mut m, i| {
                *m.entry(*i).or_insert(0u32) += 1;
                m
            });
        assert_eq!(counts.len(), s.chunks);
    }
}
