//! The file pipelines: plaintext file → sealed chunks in the store
//! ([`seal_file_into_store`]) and back ([`open_from_store`]), in one
//! streaming pass and constant memory.
//!
//! Each pipeline runs three stages on scoped threads joined by bounded
//! channels that recycle their buffers, so memory is
//! `O(queue_depth × (seal chunk + content chunk))` whatever the file size:
//!
//! ```text
//! seal:  read file + BLAKE3(plaintext) ─▶ seal in place, cut into content chunks ─▶ chunk hash, write, fsync, rename
//! open:  read chunk files in order ─▶ reassemble STREAM chunks, open in place ─▶ BLAKE3(plaintext), write temp, fsync
//! ```
//!
//! The only copy besides the kernel's is the one that re-cuts STREAM chunks
//! (`seal chunk + 16` bytes) into content chunks (a power of two) or back:
//! the two sizes can never align.
//!
//! The functions block; call them from `tokio::task::spawn_blocking` in
//! async code.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread;

use rand_core::CryptoRng;
use rendertrust_protocol::content::{
    CHUNK_SIZE, ContentError, ContentId, MAX_CHUNKS, Manifest, ManifestBuilder, chunk_id,
};
use rendertrust_protocol::seal::{
    DEFAULT_CHUNK_SIZE, HEADER_LEN, JobKey, Opener, SealError, Sealer, TAG_LEN,
};
use zeroize::Zeroizing;

use super::store::{
    ChunkOwner, ContentStore, GetChunkError, PutManifestError, ReadChunkError, WriteChunkError,
};

/// Chunk sizes and queue depth of the pipelines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineOptions {
    /// STREAM plaintext chunk size (a power of two, 4 KiB..=16 MiB; default
    /// 64 KiB). Only sealing uses it: opening reads it from the header.
    pub seal_chunk_size: usize,
    /// Content chunk size of the manifest (a power of two, 4 KiB..=64 MiB;
    /// default 1 MiB, the size peers fetch one at a time).
    pub content_chunk_size: u32,
    /// Buffers in flight between two stages (at least 1; default 4).
    pub queue_depth: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            seal_chunk_size: DEFAULT_CHUNK_SIZE,
            content_chunk_size: CHUNK_SIZE,
            queue_depth: 4,
        }
    }
}

/// A file sealed into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFile {
    /// The manifest's id: what a job spec or task result names.
    pub manifest_id: ContentId,
    /// The manifest of the sealed stream.
    pub manifest: Arc<Manifest>,
    /// Plaintext bytes read.
    pub plaintext_size: u64,
    /// BLAKE3 of the plaintext (`blake3::hash`, what receipts carry).
    pub plaintext_hash: [u8; 32],
}

/// A file opened from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedFile {
    /// Plaintext bytes written.
    pub size: u64,
    /// BLAKE3 of the plaintext.
    pub plaintext_hash: [u8; 32],
}

/// Why a file could not be sealed into the store. Chunks written before
/// the failure stay until the next [`ContentStore::gc`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealFileError {
    /// The content chunk size is not allowed.
    #[error("content chunk size: {0}")]
    ChunkSize(ContentError),
    /// The input file could not be opened or read.
    #[error("reading {path}: {source}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Sealing failed (bad seal chunk size, or a file past the STREAM
    /// counter limit).
    #[error("sealing: {0}")]
    Seal(#[from] SealError),
    /// The sealed file needs more chunks than a manifest may list.
    #[error("file too large: {0}")]
    TooLarge(ContentError),
    /// The store's byte budget would be passed.
    #[error(
        "content store budget exceeded: {needed} more bytes needed, {used} of {limit} bytes used"
    )]
    BudgetExceeded {
        /// Bytes used (and reserved).
        used: u64,
        /// Bytes the next chunk needs.
        needed: u64,
        /// The budget.
        limit: u64,
    },
    /// Writing to the store failed.
    #[error("writing {path}: {source}")]
    Store {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The manifest could not be stored.
    #[error("storing the manifest: {0}")]
    Manifest(#[from] PutManifestError),
    /// A pipeline thread panicked (a bug).
    #[error("a sealing pipeline thread panicked")]
    Thread,
}

/// Why stored content could not be opened to a file. The output path is
/// left untouched on any error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenFileError {
    /// No manifest with this id is stored.
    #[error("no manifest {id} in the content store")]
    UnknownManifest {
        /// The manifest id.
        id: ContentId,
    },
    /// Some chunks are not stored (fetch them first).
    #[error("content {id} is incomplete: {missing} chunks missing, the first is chunk {first}")]
    Incomplete {
        /// The manifest id.
        id: ContentId,
        /// Number of missing chunks.
        missing: usize,
        /// Index of the first missing chunk.
        first: u32,
    },
    /// A chunk file vanished while opening.
    #[error("chunk {index} of {id} is missing from the store")]
    MissingChunk {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
    },
    /// A chunk file does not match its manifest (it was modified on disk);
    /// it was removed from the store.
    #[error("chunk {index} of {id} is corrupt on disk and was removed: {detail}")]
    CorruptChunk {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
        /// What did not match.
        detail: String,
    },
    /// The sealed stream does not open: wrong key or context, truncated,
    /// reordered or tampered chunks that still match their manifest.
    #[error("opening the sealed stream: {0}")]
    Seal(#[from] SealError),
    /// Reading a chunk file failed.
    #[error("reading {path}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Output {
        /// The output (or its temp file).
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A pipeline thread panicked (a bug).
    #[error("an opening pipeline thread panicked")]
    Thread,
}

/// A stage's failure: its own error, or the neighbour it talks to hung up
/// (whose own error is then the one to report).
enum Stage<E> {
    Failed(E),
    Cancelled,
}

impl<E> From<E> for Stage<E> {
    fn from(e: E) -> Self {
        Stage::Failed(e)
    }
}

/// Picks the first real error among the stages, in pipeline order. A stage
/// that was only cancelled was stopped by another one's error (or, when no
/// stage has a real error, by a panic: `thread`).
fn first_error<E>(results: [Option<Stage<E>>; 3], thread: E) -> E {
    results
        .into_iter()
        .flatten()
        .find_map(|r| match r {
            Stage::Failed(e) => Some(e),
            Stage::Cancelled => None,
        })
        .unwrap_or(thread)
}

fn join<T, E>(
    handle: thread::ScopedJoinHandle<'_, Result<T, Stage<E>>>,
) -> Result<T, Option<Stage<E>>> {
    match handle.join() {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(stage)) => Err(Some(stage)),
        Err(_) => Err(None),
    }
}

/// A bounded pool of buffers fed back by the next stage.
struct Pool<B> {
    free: Receiver<B>,
    allocated: usize,
    max: usize,
    new: fn(usize) -> B,
    capacity: usize,
}

impl<B> Pool<B> {
    fn new(free: Receiver<B>, max: usize, capacity: usize, new: fn(usize) -> B) -> Self {
        Self {
            free,
            allocated: 0,
            max,
            new,
            capacity,
        }
    }

    /// A recycled buffer, a new one while fewer than `max` exist, or waits.
    /// `None`: the stage holding the others hung up.
    fn take(&mut self) -> Option<B> {
        match self.free.try_recv() {
            Ok(buf) => return Some(buf),
            Err(TryRecvError::Disconnected) if self.allocated >= self.max => return None,
            Err(_) => {}
        }
        if self.allocated < self.max {
            self.allocated += 1;
            return Some((self.new)(self.capacity));
        }
        self.free.recv().ok()
    }
}

type PlainBuf = Zeroizing<Vec<u8>>;

fn plain_buf(capacity: usize) -> PlainBuf {
    Zeroizing::new(Vec::with_capacity(capacity))
}

fn sealed_buf(capacity: usize) -> Vec<u8> {
    Vec::with_capacity(capacity)
}

/// Reads until `buf` is full or the reader is exhausted.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One STREAM chunk of plaintext and whether it is the last.
struct Piece {
    buf: PlainBuf,
    last: bool,
}

/// Seals the file at `path` into `store` with the default
/// [`PipelineOptions`]: STREAM under `key` bound to `context` (the caller
/// chooses it: `job id | input name` for inputs, `task id | attempt` for
/// outputs), cut into 1 MiB content chunks, each written to the store as it
/// is produced, then the manifest. One pass over the file, constant memory.
pub fn seal_file_into_store<G: CryptoRng + ?Sized>(
    store: &ContentStore,
    path: &Path,
    key: &JobKey,
    context: &[u8],
    rng: &mut G,
) -> Result<SealedFile, SealFileError> {
    seal_file_into_store_with(store, path, key, context, rng, &PipelineOptions::default())
}

/// [`seal_file_into_store`] with explicit chunk sizes and queue depth.
pub fn seal_file_into_store_with<G: CryptoRng + ?Sized>(
    store: &ContentStore,
    path: &Path,
    key: &JobKey,
    context: &[u8],
    rng: &mut G,
    options: &PipelineOptions,
) -> Result<SealedFile, SealFileError> {
    let content_chunk = options.content_chunk_size;
    ManifestBuilder::new(content_chunk).map_err(SealFileError::ChunkSize)?;
    let (sealer, header) = Sealer::new(key, context, options.seal_chunk_size, rng)?;
    let input_err = |source| SealFileError::Input {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(input_err)?;
    let depth = options.queue_depth.max(1);
    let seal_chunk = sealer.chunk_size();

    let (piece_tx, piece_rx) = sync_channel::<Piece>(depth);
    let (free_piece_tx, free_piece_rx) = sync_channel::<PlainBuf>(depth + 2);
    let (chunk_tx, chunk_rx) = sync_channel::<Vec<u8>>(depth);
    let (free_chunk_tx, free_chunk_rx) = sync_channel::<Vec<u8>>(depth + 1);
    // The reader holds two buffers to look one chunk ahead.
    let pieces = Pool::new(free_piece_rx, depth + 2, seal_chunk + TAG_LEN, plain_buf);
    let chunks = Pool::new(free_chunk_rx, depth + 1, content_chunk as usize, sealed_buf);

    let (read, sealed, written) = thread::scope(|s| {
        let reader = s.spawn(|| read_plain(file, path, seal_chunk, piece_tx, pieces));
        let writer = s.spawn(|| write_chunks(store, chunk_rx, free_chunk_tx));
        let sealed = seal_pieces(
            sealer,
            &header,
            content_chunk as usize,
            piece_rx,
            free_piece_tx,
            chunk_tx,
            chunks,
        );
        (join(reader), sealed, join(writer))
    });
    let ((plaintext_size, plaintext_hash), (hashes, total_size, staging)) =
        match (read, sealed, written) {
            (Ok(read), Ok(()), Ok(written)) => (read, written),
            (read, sealed, written) => {
                return Err(first_error(
                    [read.err().flatten(), sealed.err(), written.err().flatten()],
                    SealFileError::Thread,
                ));
            }
        };
    let manifest = Manifest {
        chunk_size: content_chunk,
        total_size,
        chunks: hashes,
    };
    manifest.validate().map_err(SealFileError::TooLarge)?;
    let manifest_id = store.put_manifest(&manifest)?;
    // The manifest now holds the chunks.
    drop(staging);
    tracing::debug!(%manifest_id, plaintext_size, sealed_size = total_size, "sealed file into the content store");
    Ok(SealedFile {
        manifest_id,
        manifest: store
            .get_manifest(&manifest_id)
            .unwrap_or_else(|| Arc::new(manifest)),
        plaintext_size,
        plaintext_hash,
    })
}

/// Stage 1 of sealing: reads the file one STREAM chunk at a time, hashes
/// the plaintext, and marks the last chunk (looking one chunk ahead).
fn read_plain(
    mut file: File,
    path: &Path,
    seal_chunk: usize,
    out: SyncSender<Piece>,
    mut pool: Pool<PlainBuf>,
) -> Result<(u64, [u8; 32]), Stage<SealFileError>> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let mut held: Option<PlainBuf> = None;
    loop {
        let mut buf = pool.take().ok_or(Stage::Cancelled)?;
        // Truncating a recycled sealed buffer keeps its bytes: no zero fill.
        buf.resize(seal_chunk, 0);
        let n = read_full(&mut file, &mut buf).map_err(|source| SealFileError::Input {
            path: path.to_owned(),
            source,
        })?;
        buf.truncate(n);
        hasher.update(&buf);
        total += n as u64;
        if n == 0 {
            let last = held.take().unwrap_or(buf);
            out.send(Piece {
                buf: last,
                last: true,
            })
            .map_err(|_| Stage::Cancelled)?;
            break;
        }
        if let Some(previous) = held.take() {
            out.send(Piece {
                buf: previous,
                last: false,
            })
            .map_err(|_| Stage::Cancelled)?;
        }
        if n < seal_chunk {
            out.send(Piece { buf, last: true })
                .map_err(|_| Stage::Cancelled)?;
            break;
        }
        held = Some(buf);
    }
    Ok((total, *hasher.finalize().as_bytes()))
}

/// Stage 2 of sealing: seals each piece in place and cuts the sealed stream
/// (header first) into content chunks.
fn seal_pieces(
    sealer: Sealer,
    header: &[u8],
    content_chunk: usize,
    pieces: Receiver<Piece>,
    free_pieces: SyncSender<PlainBuf>,
    out: SyncSender<Vec<u8>>,
    mut pool: Pool<Vec<u8>>,
) -> Result<(), Stage<SealFileError>> {
    let mut sealer = Some(sealer);
    let mut chunk = pool.take().ok_or(Stage::Cancelled)?;
    chunk.clear();
    chunk.extend_from_slice(header);
    loop {
        let Piece { mut buf, last } = pieces.recv().map_err(|_| Stage::Cancelled)?;
        match (last, sealer.take()) {
            (true, Some(s)) => s.seal_final(&mut buf).map_err(SealFileError::Seal)?,
            (false, Some(mut s)) => {
                s.seal_chunk(&mut buf).map_err(SealFileError::Seal)?;
                sealer = Some(s);
            }
            // The reader sends nothing after the last piece.
            (_, None) => return Err(Stage::Cancelled),
        }
        let mut rest: &[u8] = &buf;
        while !rest.is_empty() {
            let room = content_chunk - chunk.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            chunk.extend_from_slice(now);
            rest = later;
            if chunk.len() == content_chunk {
                out.send(chunk).map_err(|_| Stage::Cancelled)?;
                chunk = pool.take().ok_or(Stage::Cancelled)?;
                chunk.clear();
            }
        }
        // The reader may be done: a closed pool is fine.
        let _ = free_pieces.send(buf);
        if last {
            break;
        }
    }
    if !chunk.is_empty() {
        out.send(chunk).map_err(|_| Stage::Cancelled)?;
    }
    Ok(())
}

/// Stage 3 of sealing: hashes each content chunk and writes it to the
/// store; returns the hashes, the sealed size and the staging that keeps the
/// chunks from gc until the manifest is stored.
fn write_chunks(
    store: &ContentStore,
    chunks: Receiver<Vec<u8>>,
    free: SyncSender<Vec<u8>>,
) -> Result<(Vec<ContentId>, u64, super::store::Staging), Stage<SealFileError>> {
    let mut staging = store.staging();
    let mut hashes = Vec::new();
    let mut total = 0u64;
    let mut dirty = [false; 256];
    while let Ok(chunk) = chunks.recv() {
        if hashes.len() >= MAX_CHUNKS as usize {
            return Err(SealFileError::TooLarge(ContentError::TooManyChunks {
                found: hashes.len() as u64 + 1,
            })
            .into());
        }
        let hash = chunk_id(&chunk);
        store
            .write_chunk(&hash, &chunk, ChunkOwner::Staged(&mut staging))
            .map_err(|e| match e {
                WriteChunkError::Budget {
                    used,
                    needed,
                    limit,
                } => SealFileError::BudgetExceeded {
                    used,
                    needed,
                    limit,
                },
                WriteChunkError::Io { path, source } => SealFileError::Store { path, source },
                // Staged writes have no manifest to lose.
                WriteChunkError::UnknownManifest => SealFileError::Thread,
            })?;
        dirty[usize::from(hash.as_bytes()[0])] = true;
        hashes.push(hash);
        total += chunk.len() as u64;
        let _ = free.send(chunk);
    }
    // Make the renames durable before the manifest names the chunks.
    for (byte, _) in dirty.iter().enumerate().filter(|(_, d)| **d) {
        let dir = store.chunk_dir(&ContentId([byte as u8; 32]));
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SealFileError::Store { path: dir, source })?;
    }
    Ok((hashes, total, staging))
}

/// Opens content `id` from `store` under `key` and `context` and writes the
/// plaintext to `out_path` (through a temp file beside it, synced and
/// renamed: `out_path` appears complete or not at all). Every STREAM chunk
/// is authenticated before its plaintext is written; a chunk that fails is
/// checked against the manifest to tell corruption on disk
/// ([`OpenFileError::CorruptChunk`]) from a wrong key, context or stream
/// ([`OpenFileError::Seal`]).
pub fn open_from_store(
    store: &ContentStore,
    id: &ContentId,
    key: &JobKey,
    context: &[u8],
    out_path: &Path,
) -> Result<OpenedFile, OpenFileError> {
    open_from_store_with(
        store,
        id,
        key,
        context,
        out_path,
        &PipelineOptions::default(),
    )
}

/// Sealed byte range of the STREAM chunk that failed, for diagnosis.
struct Failure {
    error: SealError,
    range: Option<(u64, u64)>,
}

/// [`open_from_store`] with an explicit queue depth (the chunk sizes come
/// from the manifest and the stream header).
pub fn open_from_store_with(
    store: &ContentStore,
    id: &ContentId,
    key: &JobKey,
    context: &[u8],
    out_path: &Path,
    options: &PipelineOptions,
) -> Result<OpenedFile, OpenFileError> {
    let manifest = store
        .get_manifest(id)
        .ok_or(OpenFileError::UnknownManifest { id: *id })?;
    if let Some(missing) = store.missing_chunks(id)
        && let Some(&first) = missing.first()
    {
        return Err(OpenFileError::Incomplete {
            id: *id,
            missing: missing.len(),
            first,
        });
    }
    let depth = options.queue_depth.max(1);
    let (out, out_file) = OutputTemp::create(out_path)?;

    let (chunk_tx, chunk_rx) = sync_channel::<(u32, Vec<u8>)>(depth);
    let (free_chunk_tx, free_chunk_rx) = sync_channel::<Vec<u8>>(depth + 1);
    let (plain_tx, plain_rx) = sync_channel::<PlainBuf>(depth);
    let (free_plain_tx, free_plain_rx) = sync_channel::<PlainBuf>(depth + 1);
    let chunk_pool = Pool::new(
        free_chunk_rx,
        depth + 1,
        manifest.chunk_size as usize,
        sealed_buf,
    );

    let (read, opened, written) = thread::scope(|s| {
        let reader = s.spawn(|| read_chunks(store, id, &manifest, chunk_tx, chunk_pool));
        let writer = s.spawn(|| write_plain(out_file, out.path(), plain_rx, free_plain_tx));
        let mut assembler = Assembler {
            chunks: chunk_rx,
            free: free_chunk_tx,
            current: Vec::new(),
            pos: 0,
        };
        let opened = open_pieces(
            key,
            context,
            manifest.total_size,
            &mut assembler,
            plain_tx,
            free_plain_rx,
            depth + 1,
        );
        // Unblock the reader before joining it.
        drop(assembler);
        (join(reader), opened, join(writer))
    });
    let (size, plaintext_hash) = match (read, opened, written) {
        (Ok(()), Ok(()), Ok(written)) => written,
        (read, opened, written) => {
            let read = read.err().flatten();
            let written = written.err().flatten();
            let opened = match opened {
                Err(Stage::Failed(failure)) => {
                    Some(Stage::Failed(diagnose(store, id, &manifest, failure)))
                }
                Err(Stage::Cancelled) => Some(Stage::Cancelled),
                Ok(()) => None,
            };
            return Err(first_error([read, opened, written], OpenFileError::Thread));
        }
    };
    out.persist(out_path)?;
    store.touch(id);
    Ok(OpenedFile {
        size,
        plaintext_hash,
    })
}

/// Names the cause of a STREAM failure: a content chunk under the failed
/// range that no longer matches its hash, or the stream itself.
fn diagnose(
    store: &ContentStore,
    id: &ContentId,
    manifest: &Manifest,
    failure: Failure,
) -> OpenFileError {
    if let Some((start, end)) = failure.range {
        let chunk = u64::from(manifest.chunk_size);
        let first = start / chunk;
        let last = end.saturating_sub(1).max(start) / chunk;
        for index in first..=last {
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            match store.get_chunk(id, index) {
                Ok(_) | Err(GetChunkError::Index { .. }) => {}
                Err(GetChunkError::Corrupt { detail, .. }) => {
                    return OpenFileError::CorruptChunk {
                        id: *id,
                        index,
                        detail,
                    };
                }
                Err(GetChunkError::Missing { .. } | GetChunkError::UnknownManifest { .. }) => {
                    return OpenFileError::MissingChunk { id: *id, index };
                }
                Err(GetChunkError::Io { path, source }) => {
                    return OpenFileError::Store { path, source };
                }
            }
        }
    }
    OpenFileError::Seal(failure.error)
}

/// Stage 1 of opening: reads the chunk files in order. Their hashes are not
/// checked here: the AEAD authenticates every byte, and a failure is
/// diagnosed against the manifest afterwards.
fn read_chunks(
    store: &ContentStore,
    id: &ContentId,
    manifest: &Manifest,
    out: SyncSender<(u32, Vec<u8>)>,
    mut pool: Pool<Vec<u8>>,
) -> Result<(), Stage<OpenFileError>> {
    for (hash, index) in manifest.chunks.iter().zip(0u32..) {
        let len = manifest
            .chunk_len(index)
            .map_err(|e| OpenFileError::CorruptChunk {
                id: *id,
                index,
                detail: e.to_string(),
            })?;
        let mut buf = pool.take().ok_or(Stage::Cancelled)?;
        store
            .read_chunk_raw(hash, u64::from(len), &mut buf)
            .map_err(|e| match e {
                ReadChunkError::Missing => {
                    store.forget_chunk(hash, false);
                    OpenFileError::MissingChunk { id: *id, index }
                }
                ReadChunkError::Length { .. } => {
                    // get_chunk sees the same length, removes the chunk and
                    // reports it.
                    match store.get_chunk(id, index) {
                        Err(GetChunkError::Corrupt { detail, .. }) => OpenFileError::CorruptChunk {
                            id: *id,
                            index,
                            detail,
                        },
                        _ => OpenFileError::MissingChunk { id: *id, index },
                    }
                }
                ReadChunkError::Io { path, source } => OpenFileError::Store { path, source },
            })?;
        out.send((index, buf)).map_err(|_| Stage::Cancelled)?;
    }
    Ok(())
}

/// Re-cuts the stream of content chunks into slices of any length.
struct Assembler {
    chunks: Receiver<(u32, Vec<u8>)>,
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Assembler {
    /// Appends the next `len` bytes of the sealed stream to `out`.
    fn fill(&mut self, out: &mut Vec<u8>, mut len: usize) -> Result<(), Stage<Failure>> {
        while len > 0 {
            if self.pos == self.current.len() {
                let (_, next) = self.chunks.recv().map_err(|_| Stage::Cancelled)?;
                let done = std::mem::replace(&mut self.current, next);
                if done.capacity() > 0 {
                    let _ = self.free.send(done);
                }
                self.pos = 0;
            }
            let take = len.min(self.current.len() - self.pos);
            out.extend_from_slice(&self.current[self.pos..self.pos + take]);
            self.pos += take;
            len -= take;
        }
        Ok(())
    }
}

/// Stage 2 of opening: header, then each STREAM chunk opened in place; the
/// final one is known from the manifest's total size.
fn open_pieces(
    key: &JobKey,
    context: &[u8],
    total_size: u64,
    assembler: &mut Assembler,
    out: SyncSender<PlainBuf>,
    free: Receiver<PlainBuf>,
    buffers: usize,
) -> Result<(), Stage<Failure>> {
    let fail = |error, range| Stage::Failed(Failure { error, range });
    let Some(mut remaining) = total_size.checked_sub(HEADER_LEN as u64) else {
        return Err(fail(SealError::Truncated { offset: total_size }, None));
    };
    let mut header = Vec::with_capacity(HEADER_LEN);
    assembler.fill(&mut header, HEADER_LEN)?;
    let mut opener =
        Opener::new(key, context, &header).map_err(|e| fail(e, Some((0, HEADER_LEN as u64))))?;
    let full = opener.chunk_size() + TAG_LEN;
    let mut pool = Pool::new(free, buffers, full, plain_buf);
    let mut offset = HEADER_LEN as u64;
    loop {
        let mut buf = pool.take().ok_or(Stage::Cancelled)?;
        buf.clear();
        let last = remaining <= full as u64;
        // `remaining <= full` here when last.
        let len = if last { remaining as usize } else { full };
        assembler.fill(&mut buf, len)?;
        let range = Some((offset, offset + len as u64));
        if last {
            opener.open_final(&mut buf).map_err(|e| fail(e, range))?;
            out.send(buf).map_err(|_| Stage::Cancelled)?;
            return Ok(());
        }
        opener.open_chunk(&mut buf).map_err(|e| fail(e, range))?;
        out.send(buf).map_err(|_| Stage::Cancelled)?;
        offset += len as u64;
        remaining -= len as u64;
    }
}

/// Stage 3 of opening: hashes and writes the plaintext, then syncs.
fn write_plain(
    mut file: File,
    path: &Path,
    plain: Receiver<PlainBuf>,
    free: SyncSender<PlainBuf>,
) -> Result<(u64, [u8; 32]), Stage<OpenFileError>> {
    let out_err = |source| OpenFileError::Output {
        path: path.to_owned(),
        source,
    };
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    while let Ok(buf) = plain.recv() {
        hasher.update(&buf);
        file.write_all(&buf).map_err(out_err)?;
        total += buf.len() as u64;
        let _ = free.send(buf);
    }
    file.sync_all().map_err(out_err)?;
    Ok((total, *hasher.finalize().as_bytes()))
}

/// The output's temp file, beside it; removed on drop unless persisted.
struct OutputTemp {
    path: PathBuf,
    persisted: bool,
}

static OUTPUT_COUNTER: AtomicU64 = AtomicU64::new(0);

impl OutputTemp {
    fn create(out_path: &Path) -> Result<(Self, File), OpenFileError> {
        let name = out_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| OpenFileError::Output {
                path: out_path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "expected a file name"),
            })?;
        loop {
            let n = OUTPUT_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = out_path.with_file_name(format!(".{name}.{}-{n}.part", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let temp = Self {
                        path,
                        persisted: false,
                    };
                    return Ok((temp, file));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(OpenFileError::Output { path, source }),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn persist(mut self, out_path: &Path) -> Result<(), OpenFileError> {
        fs::rename(&self.path, out_path).map_err(|source| OpenFileError::Output {
            path: out_path.to_owned(),
            source,
        })?;
        self.persisted = true;
        let dir = match out_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| OpenFileError::Output {
                path: dir.to_owned(),
                source,
            })
    }
}

impl Drop for OutputTemp {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::SystemTime;

    use proptest::prelude::*;
    use rendertrust_protocol::seal::{open_slice, sealed_len};

    use super::super::test_util::{
        data, files_under, key, open_store, rng, sealed_bytes, small, write_file,
    };
    use super::super::{ContentConfig, PutManifestError};
    use super::*;

    /// Seals `plain` as a file, checks everything about the result, opens
    /// it back and checks the plaintext.
    fn round_trip(store: &ContentStore, dir: &Path, plain: &[u8], options: &PipelineOptions) {
        let input = write_file(dir, "input", plain);
        let k = key(1);
        let sealed =
            seal_file_into_store_with(store, &input, &k, b"job|input", &mut rng(2), options)
                .unwrap();
        let len = plain.len();
        assert_eq!(sealed.plaintext_size, len as u64, "size {len}");
        assert_eq!(sealed.plaintext_hash, *blake3::hash(plain).as_bytes());
        assert_eq!(sealed.manifest_id, sealed.manifest.id());
        assert!(store.has_complete(&sealed.manifest_id));
        // The stored stream is a STREAM the protocol opens, cut as the
        // protocol's manifest builder cuts it.
        let stream = sealed_bytes(store, &sealed.manifest_id);
        assert_eq!(
            stream.len() as u64,
            sealed_len(len as u64, options.seal_chunk_size).unwrap()
        );
        assert_eq!(open_slice(&k, b"job|input", &stream).unwrap(), plain);
        let mut builder = ManifestBuilder::new(options.content_chunk_size).unwrap();
        builder.update(&stream);
        assert_eq!(builder.finish(), *sealed.manifest);
        // And back to a file.
        let out = dir.join("output");
        let opened =
            open_from_store_with(store, &sealed.manifest_id, &k, b"job|input", &out, options)
                .unwrap();
        assert_eq!(opened.size, len as u64);
        assert_eq!(opened.plaintext_hash, sealed.plaintext_hash);
        assert!(fs::read(&out).unwrap() == plain, "size {len}");
        assert_no_part_files(dir);
    }

    fn assert_no_part_files(dir: &Path) {
        for path in files_under(dir) {
            let name = path.file_name().unwrap().to_string_lossy();
            assert!(!name.ends_with(".part"), "left behind: {}", path.display());
        }
    }

    #[test]
    fn round_trip_with_default_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let chunk = CHUNK_SIZE as usize;
        let seal = DEFAULT_CHUNK_SIZE;
        for len in [
            0,
            1,
            seal - 1,
            seal,
            seal + 1,
            chunk - 1,
            chunk,
            chunk + 1,
            3 * chunk + 17,
        ] {
            round_trip(
                &store,
                dir.path(),
                &data(len, len as u64),
                &PipelineOptions::default(),
            );
        }
    }

    #[test]
    fn round_trip_with_small_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // STREAM chunks of 4096 + 16 bytes straddle every 4 KiB content chunk.
        for len in [0, 1, 4095, 4096, 4097, 2 * 4096, 10 * 4096 + 5] {
            round_trip(&store, dir.path(), &data(len, 7), &small());
        }
        let mixed = PipelineOptions {
            seal_chunk_size: 8192,
            content_chunk_size: 4096,
            queue_depth: 1,
        };
        round_trip(&store, dir.path(), &data(5 * 8192 + 3, 8), &mixed);
    }

    fn sealed_small(store: &ContentStore, dir: &Path, plain: &[u8]) -> SealedFile {
        let input = write_file(dir, "input", plain);
        seal_file_into_store_with(store, &input, &key(1), b"ctx", &mut rng(3), &small()).unwrap()
    }

    #[test]
    fn tampered_chunk_on_disk_is_detected_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let plain = data(6 * 4096 + 100, 9);
        for (chunk, at) in [(3usize, 2000usize), (0, 5), (0, 40), (6, 1)] {
            let sealed = sealed_small(&store, dir.path(), &plain);
            let path = store.chunk_path(&sealed.manifest.chunks[chunk]);
            let mut bytes = fs::read(&path).unwrap();
            bytes[at] ^= 0x04;
            fs::write(&path, bytes).unwrap();
            let out = dir.path().join("out");
            let error =
                open_from_store_with(&store, &sealed.manifest_id, &key(1), b"ctx", &out, &small())
                    .unwrap_err();
            assert!(
                matches!(error, OpenFileError::CorruptChunk { index, .. } if index as usize == chunk),
                "chunk {chunk} byte {at}: {error}"
            );
            assert!(!out.exists());
            assert_no_part_files(dir.path());
            // The bad chunk is gone from the store, ready to be fetched again.
            assert_eq!(
                store.missing_chunks(&sealed.manifest_id),
                Some(vec![chunk as u32])
            );
        }
    }

    #[test]
    fn wrong_key_or_context_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let sealed = sealed_small(&store, dir.path(), &data(3 * 4096, 10));
        let out = dir.path().join("out");
        for (k, ctx) in [(key(2), &b"ctx"[..]), (key(1), b"task|2")] {
            let error = open_from_store(&store, &sealed.manifest_id, &k, ctx, &out).unwrap_err();
            assert!(
                matches!(error, OpenFileError::Seal(SealError::KeyOrContextMismatch)),
                "{error}"
            );
            assert!(!out.exists());
        }
        // Nothing on disk was blamed.
        assert!(store.has_complete(&sealed.manifest_id));
        assert_no_part_files(dir.path());
    }

    #[test]
    fn truncated_or_reordered_manifests_fail_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let sealed = sealed_small(&store, dir.path(), &data(5 * 4096, 11));
        let m = &sealed.manifest;
        let open = |manifest: &Manifest| {
            let id = store.put_manifest(manifest).unwrap();
            let out = dir.path().join("out");
            let result = open_from_store_with(&store, &id, &key(1), b"ctx", &out, &small());
            assert!(!out.exists());
            result.unwrap_err()
        };
        let prefix = |keep: usize| Manifest {
            chunk_size: m.chunk_size,
            total_size: keep as u64 * u64::from(m.chunk_size),
            chunks: m.chunks[..keep].to_vec(),
        };
        // A prefix of the chunks: a valid manifest of a cut stream. Cut
        // inside a STREAM chunk, its remains do not authenticate.
        assert!(matches!(
            open(&prefix(1)),
            OpenFileError::Seal(SealError::KeyOrContextMismatch)
        ));
        assert!(matches!(
            open(&prefix(3)),
            OpenFileError::Seal(SealError::ChunkAuthentication { index: 2 })
        ));
        // Two chunks swapped.
        let mut swapped = (**m).clone();
        swapped.chunks.swap(1, 2);
        assert!(matches!(open(&swapped), OpenFileError::Seal(_)));
        // Cut exactly after a STREAM chunk: 32 + 254 × 4112 = 255 × 4096.
        let long = sealed_small(&store, dir.path(), &data(300 * 4096, 12));
        let cut = Manifest {
            chunk_size: 4096,
            total_size: 255 * 4096,
            chunks: long.manifest.chunks[..255].to_vec(),
        };
        let error = open(&cut);
        assert!(
            matches!(error, OpenFileError::Seal(SealError::Truncated { offset }) if offset == 255 * 4096),
            "{error}"
        );
        // Shorter than a header.
        let tiny = Manifest {
            chunk_size: 4096,
            total_size: 0,
            chunks: Vec::new(),
        };
        assert!(matches!(
            open(&tiny),
            OpenFileError::Seal(SealError::Truncated { offset: 0 })
        ));
    }

    #[test]
    fn missing_chunks_are_reported_before_and_during_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let sealed = sealed_small(&store, dir.path(), &data(4 * 4096, 12));
        let out = dir.path().join("out");
        // Removed behind the store's back: found while reading.
        fs::remove_file(store.chunk_path(&sealed.manifest.chunks[2])).unwrap();
        assert!(matches!(
            open_from_store(&store, &sealed.manifest_id, &key(1), b"ctx", &out),
            Err(OpenFileError::MissingChunk { index: 2, .. })
        ));
        // Known missing: refused up front.
        assert!(matches!(
            open_from_store(&store, &sealed.manifest_id, &key(1), b"ctx", &out),
            Err(OpenFileError::Incomplete {
                missing: 1,
                first: 2,
                ..
            })
        ));
        assert!(matches!(
            open_from_store(&store, &ContentId([1; 32]), &key(1), b"ctx", &out),
            Err(OpenFileError::UnknownManifest { .. })
        ));
        assert!(!out.exists());
        assert_no_part_files(dir.path());
    }

    #[test]
    fn output_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let plain = data(3 * 4096 + 1, 13);
        let sealed = sealed_small(&store, dir.path(), &plain);
        let out = write_file(dir.path(), "out", b"previous");
        assert!(open_from_store(&store, &sealed.manifest_id, &key(9), b"ctx", &out).is_err());
        assert_eq!(fs::read(&out).unwrap(), b"previous");
        open_from_store(&store, &sealed.manifest_id, &key(1), b"ctx", &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), plain);
        assert!(matches!(
            open_from_store(
                &store,
                &sealed.manifest_id,
                &key(1),
                b"ctx",
                dir.path().join("no/such/dir/out").as_path()
            ),
            Err(OpenFileError::Output { .. })
        ));
    }

    #[test]
    fn sealing_reports_input_and_budget_failures() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let store = open_store(&dir.path().join("a"));
        assert!(matches!(
            seal_file_into_store(&store, &missing, &key(1), b"c", &mut rng(1)),
            Err(SealFileError::Input { path, .. }) if path == missing
        ));
        let input = write_file(dir.path(), "input", &data(10 * 4096, 14));
        let bad = PipelineOptions {
            content_chunk_size: 1000,
            ..small()
        };
        assert!(matches!(
            seal_file_into_store_with(&store, &input, &key(1), b"c", &mut rng(1), &bad),
            Err(SealFileError::ChunkSize(_))
        ));
        let bad = PipelineOptions {
            seal_chunk_size: 5000,
            ..small()
        };
        assert!(matches!(
            seal_file_into_store_with(&store, &input, &key(1), b"c", &mut rng(1), &bad),
            Err(SealFileError::Seal(SealError::ChunkSize { found: 5000 }))
        ));
        drop(store);
        // Room for four chunks: the fifth is refused, and gc removes the
        // four orphans.
        let store = ContentStore::open(
            &dir.path().join("b"),
            ContentConfig {
                max_bytes: 4 * 4096,
            },
        )
        .unwrap();
        let error = seal_file_into_store_with(&store, &input, &key(1), b"c", &mut rng(1), &small())
            .unwrap_err();
        assert!(
            matches!(error, SealFileError::BudgetExceeded { needed: 4096, .. }),
            "{error}"
        );
        assert_eq!(store.usage().manifests, 0);
        assert_eq!(store.usage().chunks, 4);
        store.gc(&BTreeSet::new(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(store.usage().bytes_used, 0);
        // Chunks fit but the manifest does not.
        let store_c_limit = sealed_len(4096, 4096).unwrap();
        drop(store);
        let store = ContentStore::open(
            &dir.path().join("c"),
            ContentConfig {
                max_bytes: store_c_limit,
            },
        )
        .unwrap();
        let small_input = write_file(dir.path(), "small", &data(4096, 15));
        assert!(matches!(
            seal_file_into_store_with(&store, &small_input, &key(1), b"c", &mut rng(1), &small()),
            Err(SealFileError::Manifest(
                PutManifestError::BudgetExceeded { .. }
            ))
        ));
    }

    #[test]
    fn sealing_twice_gives_two_independent_streams() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let plain = data(3 * 4096, 16);
        let input = write_file(dir.path(), "input", &plain);
        let a = seal_file_into_store_with(&store, &input, &key(1), b"c", &mut rng(1), &small())
            .unwrap();
        let b = seal_file_into_store_with(&store, &input, &key(1), b"c", &mut rng(2), &small())
            .unwrap();
        assert_ne!(a.manifest_id, b.manifest_id);
        assert_eq!(a.plaintext_hash, b.plaintext_hash);
        // The same nonce (same rng seed) gives the same stream: stored once.
        let again = seal_file_into_store_with(&store, &input, &key(1), b"c", &mut rng(1), &small())
            .unwrap();
        assert_eq!(again.manifest_id, a.manifest_id);
        assert_eq!(store.usage().manifests, 2);
    }

    #[test]
    fn pipelines_run_concurrently_on_one_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        std::thread::scope(|s| {
            for i in 0..4u64 {
                let store = &store;
                let dir = dir.path();
                s.spawn(move || {
                    let plain = data(7 * 4096 + i as usize, 100 + i);
                    let input = write_file(dir, &format!("in{i}"), &plain);
                    let ctx = format!("task|{i}");
                    let sealed = seal_file_into_store_with(
                        store,
                        &input,
                        &key(i),
                        ctx.as_bytes(),
                        &mut rng(i),
                        &small(),
                    )
                    .unwrap();
                    let out = dir.join(format!("out{i}"));
                    open_from_store(store, &sealed.manifest_id, &key(i), ctx.as_bytes(), &out)
                        .unwrap();
                    assert_eq!(fs::read(out).unwrap(), plain);
                });
            }
            // A gc in the middle removes nothing that is in use.
            store.gc(&BTreeSet::new(), SystemTime::UNIX_EPOCH).unwrap();
        });
        assert_eq!(store.usage().manifests, 4);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn prop_round_trip(
            len in 0usize..12 * 4096,
            seal_log in 12u32..14,
            content_log in 12u32..14,
            depth in 1usize..4,
            seed in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = open_store(dir.path());
            let options = PipelineOptions {
                seal_chunk_size: 1 << seal_log,
                content_chunk_size: 1 << content_log,
                queue_depth: depth,
            };
            round_trip(&store, dir.path(), &data(len, seed), &options);
        }

        #[test]
        fn prop_any_flip_on_disk_is_caught(
            len in 1usize..6 * 4096,
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = open_store(dir.path());
            let sealed = sealed_small(&store, dir.path(), &data(len, len as u64));
            let stream_len = sealed.manifest.total_size as usize;
            let at = at.index(stream_len);
            let chunk = at / 4096;
            let path = store.chunk_path(&sealed.manifest.chunks[chunk]);
            let mut bytes = fs::read(&path).unwrap();
            bytes[at % 4096] ^= 1 << bit;
            fs::write(&path, bytes).unwrap();
            let out = dir.path().join("out");
            let result = open_from_store(&store, &sealed.manifest_id, &key(1), b"ctx", &out);
            let caught = matches!(result, Err(OpenFileError::CorruptChunk { index, .. }) if index as usize == chunk);
            prop_assert!(caught, "{:?}", result);
            prop_assert!(!out.exists());
        }
    }
}
