//! [`ContentStore`]: sealed chunks and manifests on disk, and the in-memory
//! index over them. See the [module docs](super) for the layout and the
//! decisions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use rendertrust_protocol::content::{ContentError, ContentId, MAX_CHUNKS, Manifest};

/// Default byte budget of the store: 64 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;

/// Alignment of a direct write: of the buffer, the file offset and the
/// length (the largest logical block size of common devices).
const DIRECT_ALIGN: usize = super::buf::ALIGN;

/// First line of `<data_dir>/content/LAYOUT`: the on-disk layout version.
const LAYOUT: &str = "rendertrust content store v1";
/// Manifest file: `1u8 | chunk_size u32 LE | total_size u64 LE | hashes`.
const MANIFEST_HEADER_LEN: usize = 13;
const MANIFEST_FILE_VERSION: u8 = 1;
/// Largest manifest file: [`MAX_CHUNKS`] hashes.
const MAX_MANIFEST_FILE: u64 = MANIFEST_HEADER_LEN as u64 + 32 * MAX_CHUNKS as u64;

/// Settings of a [`ContentStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentConfig {
    /// Most bytes the store may hold (chunk and manifest files, not counting
    /// file system overhead). A write that would pass it is refused with a
    /// `BudgetExceeded` error; nothing is evicted automatically (see
    /// [`ContentStore::gc`]).
    pub max_bytes: u64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreOpenError {
    /// A directory or file of the store could not be created or read.
    #[error("content store: {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another `ContentStore` (this process or another) holds the store.
    #[error(
        "content store at {path} is in use: expected no other node on this data dir, found the \
         lock held"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The store was written in a layout this binary does not know.
    #[error("content store at {path}: expected layout {LAYOUT:?}, found {found:?}")]
    Layout {
        /// The layout file.
        path: PathBuf,
        /// Its first line.
        found: String,
    },
}

/// Why a manifest could not be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutManifestError {
    /// The manifest is inconsistent (chunk size, chunk count, size).
    #[error("invalid manifest: {0}")]
    Invalid(#[from] ContentError),
    /// Storing it would pass the byte budget.
    #[error(
        "content store budget exceeded: {needed} more bytes needed, {used} of {limit} bytes used"
    )]
    BudgetExceeded {
        /// Bytes used (and reserved by writes in progress).
        used: u64,
        /// Bytes this write needs.
        needed: u64,
        /// The budget.
        limit: u64,
    },
    /// Writing the manifest file failed.
    #[error("writing manifest {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Why a chunk could not be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutChunkError {
    /// No manifest with this id is stored: store the manifest first.
    #[error("no manifest {id} in the content store: expected put_manifest before put_chunk")]
    UnknownManifest {
        /// The manifest id.
        id: ContentId,
    },
    /// The bytes are not chunk `index` of the manifest (wrong index, length
    /// or hash). Nothing was stored.
    #[error("chunk {index} of {id} rejected: {source}")]
    Rejected {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
        /// What did not match.
        source: ContentError,
    },
    /// Storing it would pass the byte budget.
    #[error(
        "content store budget exceeded: {needed} more bytes needed, {used} of {limit} bytes used"
    )]
    BudgetExceeded {
        /// Bytes used (and reserved by writes in progress).
        used: u64,
        /// Bytes this write needs.
        needed: u64,
        /// The budget.
        limit: u64,
    },
    /// Writing the chunk file failed.
    #[error("writing chunk {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// What [`ContentStore::put_chunk`] did with a verified chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutChunk {
    /// The chunk was written.
    Stored,
    /// A chunk with this hash was already stored (for this or another
    /// manifest): nothing was written.
    AlreadyPresent,
}

/// Why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetChunkError {
    /// No manifest with this id is stored.
    #[error("no manifest {id} in the content store")]
    UnknownManifest {
        /// The manifest id.
        id: ContentId,
    },
    /// The index is past the manifest's last chunk.
    #[error("chunk {index} of {id}: {source}")]
    Index {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
        /// The range error.
        source: ContentError,
    },
    /// The manifest is stored but this chunk is not (yet).
    #[error("chunk {index} of {id} is not in the content store")]
    Missing {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
    },
    /// The chunk file on disk does not match the manifest (length or hash).
    /// It has been removed from the store, so it will be fetched again.
    #[error("chunk {index} of {id} is corrupt on disk and was removed: {detail}")]
    Corrupt {
        /// The manifest id.
        id: ContentId,
        /// The chunk index.
        index: u32,
        /// What did not match.
        detail: String,
    },
    /// Reading the chunk file failed.
    #[error("reading chunk {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Why garbage collection stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// A file could not be removed. Whatever was removed before stays
    /// removed; the index matches the disk.
    #[error("removing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// What [`ContentStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifests removed, in id order.
    pub manifests_removed: Vec<ContentId>,
    /// Number of chunk files removed.
    pub chunks_removed: u64,
    /// Bytes freed (chunk and manifest files).
    pub bytes_freed: u64,
}

/// How full the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of chunk and manifest files.
    pub bytes_used: u64,
    /// The budget ([`ContentConfig::max_bytes`]).
    pub max_bytes: u64,
    /// Number of manifests.
    pub manifests: usize,
    /// Number of distinct chunks.
    pub chunks: usize,
}

/// One stored manifest.
#[derive(Debug)]
struct ManifestEntry {
    manifest: Arc<Manifest>,
    file_len: u64,
    last_used: SystemTime,
    /// Cache: every chunk was present when last checked.
    complete: bool,
}

/// The in-memory index, rebuilt from the directories at open.
#[derive(Debug, Default)]
struct Index {
    manifests: BTreeMap<ContentId, ManifestEntry>,
    /// Chunk hash → its file.
    chunks: HashMap<ContentId, ChunkEntry>,
    /// Chunks written by pipelines whose manifest is not stored yet, with a
    /// count of holders: [`ContentStore::gc`] keeps them.
    staged: HashMap<ContentId, u32>,
    /// Bytes of chunk and manifest files.
    bytes_used: u64,
    /// Bytes being written outside the lock, counted against the budget.
    bytes_reserved: u64,
}

/// A chunk file the index knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkEntry {
    /// File length.
    len: u64,
    /// Its bytes were hashed against its name by this store: when it was
    /// written (fetched chunks are verified first, sealed ones named by the
    /// hash of what was written) or when it was last read and checked.
    /// Chunks found at open are not, until their first checked read. See
    /// [`ContentStore::serve_chunk_into`].
    verified: bool,
}

impl Index {
    fn committed_or_reserved(&self) -> u64 {
        self.bytes_used.saturating_add(self.bytes_reserved)
    }
}

struct Inner {
    root: PathBuf,
    chunks_dir: PathBuf,
    manifests_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    tmp_counter: AtomicU64,
    /// `O_DIRECT` was refused on this store's file system.
    no_direct: AtomicBool,
    _lock: Flock<File>,
}

/// The node's content-addressed store of sealed chunks and manifests, under
/// `<data_dir>/content/`.
///
/// Cheap to clone (one shared index). Every method is synchronous and does
/// its file I/O outside the index lock, except [`gc`](Self::gc) and the
/// final rename of a chunk; call it from `tokio::task::spawn_blocking` (or a
/// thread) in async code.
#[derive(Clone)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentStore")
            .field("root", &self.inner.root)
            .field("usage", &self.usage())
            .finish()
    }
}

/// Where a chunk file write is accounted.
pub(super) enum ChunkOwner<'a> {
    /// Chunk of a stored manifest (fails if the manifest was collected
    /// meanwhile).
    Manifest(&'a ContentId),
    /// Chunk of a pipeline whose manifest is not stored yet.
    Staged(&'a mut Staging),
}

/// Internal error of a chunk file write.
#[derive(Debug)]
pub(super) enum WriteChunkError {
    UnknownManifest,
    Budget { used: u64, needed: u64, limit: u64 },
    Io { path: PathBuf, source: io::Error },
}

/// Internal error of a raw chunk file read.
#[derive(Debug)]
pub(super) enum ReadChunkError {
    Missing,
    Length { found: u64 },
    Io { path: PathBuf, source: io::Error },
}

/// Chunks a pipeline wrote before its manifest exists; released on drop.
pub(super) struct Staging {
    store: ContentStore,
    held: Vec<ContentId>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let mut index = self.store.index();
        for id in self.held.drain(..) {
            if let Some(count) = index.staged.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    index.staged.remove(&id);
                }
            }
        }
    }
}

/// A temp file that is removed on drop unless it was renamed.
struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Renames the file to `to`, creating `to`'s directory (a fan-out
    /// directory is made on its first file).
    fn persist(mut self, to: &Path) -> io::Result<()> {
        let Some(from) = self.0.take() else {
            return Ok(());
        };
        let mut result = fs::rename(&from, to);
        if let Err(e) = &result
            && e.kind() == io::ErrorKind::NotFound
            && let Some(dir) = to.parent()
        {
            result = fs::create_dir_all(dir).and_then(|()| fs::rename(&from, to));
        }
        if result.is_err() {
            let _ = fs::remove_file(&from);
        }
        result
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// `dir/ab/cdef…`: two hex digits of fan-out, then the other 62.
fn fanout_path(dir: &Path, id: &ContentId) -> PathBuf {
    let hex = id.to_string();
    let (head, tail) = hex.split_at(2);
    dir.join(head).join(tail)
}

/// Parses `ab` + `cdef…` back into an id.
fn parse_fanout(head: &str, tail: &str) -> Option<ContentId> {
    if head.len() != 2 || tail.len() != 62 {
        return None;
    }
    format!("{head}{tail}").parse().ok()
}

/// Encodes a manifest in its file layout (the manifest id layout).
pub(super) fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN + 32 * m.chunks.len());
    out.push(MANIFEST_FILE_VERSION);
    out.extend_from_slice(&m.chunk_size.to_le_bytes());
    out.extend_from_slice(&m.total_size.to_le_bytes());
    for c in &m.chunks {
        out.extend_from_slice(c.as_bytes());
    }
    out
}

/// Decodes and validates a manifest file.
pub(super) fn decode_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let (header, hashes) = bytes
        .split_at_checked(MANIFEST_HEADER_LEN)
        .ok_or_else(|| format!("expected at least 13 bytes, found {}", bytes.len()))?;
    let (version, rest) = header
        .split_first()
        .ok_or_else(|| "empty header".to_string())?;
    if *version != MANIFEST_FILE_VERSION {
        return Err(format!(
            "expected manifest file version {MANIFEST_FILE_VERSION}, found {version}"
        ));
    }
    let (chunk_size, total_size) = rest.split_at(4);
    let chunk_size = u32::from_le_bytes(chunk_size.try_into().map_err(|_| "chunk size")?);
    let total_size = u64::from_le_bytes(total_size.try_into().map_err(|_| "total size")?);
    if hashes.len() % 32 != 0 {
        return Err(format!(
            "expected a whole number of 32-byte hashes, found {} bytes",
            hashes.len()
        ));
    }
    let chunks = hashes
        .chunks_exact(32)
        .map(|h| h.try_into().map(ContentId))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "hash".to_string())?;
    let manifest = Manifest {
        chunk_size,
        total_size,
        chunks,
    };
    manifest.validate().map_err(|e| e.to_string())?;
    Ok(manifest)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` (a whole number of [`DIRECT_ALIGN`] blocks) to `file`,
/// opened with `O_DIRECT`, from an aligned buffer: `bytes` itself when it is
/// aligned, else a copy in a buffer the thread keeps (the blocking pool's
/// threads write chunks, so the copy lands in memory already mapped, where a
/// buffered write would fill freshly allocated page-cache pages).
/// `EINVAL` means the file system or device refused the direct write.
fn write_direct(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    if bytes.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
        return file.write_all(bytes);
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|buf| {
        let need = bytes.len() + DIRECT_ALIGN;
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let off = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let Some(aligned) = buf.get_mut(off..off + bytes.len()) else {
            return Err(io::Error::from_raw_os_error(nix::libc::EINVAL));
        };
        aligned.copy_from_slice(bytes);
        file.write_all(aligned)
    })
}

fn create_dir(path: &Path) -> Result<(), StoreOpenError> {
    fs::create_dir_all(path).map_err(|source| StoreOpenError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Lists `(id, path)` of every file `dir/ab/<62 hex>`; other names are
/// skipped with a warning.
fn scan_fanout(dir: &Path) -> Result<Vec<(ContentId, PathBuf, fs::Metadata)>, StoreOpenError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreOpenError::Io { path, source }
    };
    let mut found = Vec::new();
    for sub in fs::read_dir(dir).map_err(io_err(dir))? {
        let sub = sub.map_err(io_err(dir))?;
        let sub_path = sub.path();
        let head = sub.file_name();
        let Some(head) = head.to_str().filter(|h| h.len() == 2) else {
            tracing::warn!(path = %sub_path.display(), "content store: ignoring unexpected entry");
            continue;
        };
        if !sub.file_type().map_err(io_err(&sub_path))?.is_dir() {
            tracing::warn!(path = %sub_path.display(), "content store: ignoring unexpected file");
            continue;
        }
        for entry in fs::read_dir(&sub_path).map_err(io_err(&sub_path))? {
            let entry = entry.map_err(io_err(&sub_path))?;
            let path = entry.path();
            let name = entry.file_name();
            let id = name.to_str().and_then(|tail| parse_fanout(head, tail));
            let meta = entry.metadata().map_err(io_err(&path))?;
            match id {
                Some(id) if meta.is_file() => found.push((id, path, meta)),
                _ => {
                    tracing::warn!(path = %path.display(), "content store: ignoring unexpected entry");
                }
            }
        }
    }
    Ok(found)
}

impl ContentStore {
    /// Opens (or creates) the store under `<data_dir>/content/`: takes its
    /// lock, removes temp files a crash left behind, and rebuilds the index
    /// from the chunk and manifest files (a manifest file that does not
    /// decode to its own id is removed with a warning).
    pub fn open(data_dir: &Path, config: ContentConfig) -> Result<Self, StoreOpenError> {
        let root = data_dir.join("content");
        let chunks_dir = root.join("chunks");
        let manifests_dir = root.join("manifests");
        let tmp_dir = root.join("tmp");
        for dir in [&root, &chunks_dir, &manifests_dir, &tmp_dir] {
            create_dir(dir)?;
        }
        let lock_path = root.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreOpenError::Io {
                path: lock_path.clone(),
                source,
            })?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
                match errno {
                    nix::errno::Errno::EWOULDBLOCK => StoreOpenError::Locked {
                        path: lock_path.clone(),
                    },
                    other => StoreOpenError::Io {
                        path: lock_path.clone(),
                        source: other.into(),
                    },
                }
            })?;
        check_layout(&root.join("LAYOUT"))?;
        let mut removed_tmp = 0usize;
        for entry in fs::read_dir(&tmp_dir).map_err(|source| StoreOpenError::Io {
            path: tmp_dir.clone(),
            source,
        })? {
            let path = entry
                .map_err(|source| StoreOpenError::Io {
                    path: tmp_dir.clone(),
                    source,
                })?
                .path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|source| StoreOpenError::Io { path, source })?;
            removed_tmp += 1;
        }
        if removed_tmp > 0 {
            tracing::info!(
                count = removed_tmp,
                "content store: removed temp files left by a crash"
            );
        }

        // Every fan-out directory of chunks exists from the start: making
        // one on a chunk's first write put a mkdir (an inode allocation) on
        // the fetch path of a quarter of the first thousand chunks.
        for prefix in 0..=255u8 {
            // Named as `chunk_path` names them.
            let dir = chunks_dir.join(hex::encode([prefix]));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(StoreOpenError::Io { path: dir, source }),
            }
        }
        let mut index = Index::default();
        for (id, _, meta) in scan_fanout(&chunks_dir)? {
            index.bytes_used = index.bytes_used.saturating_add(meta.len());
            index.chunks.insert(
                id,
                ChunkEntry {
                    len: meta.len(),
                    verified: false,
                },
            );
        }
        for (id, path, meta) in scan_fanout(&manifests_dir)? {
            match load_manifest(&path, &meta, &id) {
                Ok(manifest) => {
                    index.bytes_used = index.bytes_used.saturating_add(meta.len());
                    let last_used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    index.manifests.insert(
                        id,
                        ManifestEntry {
                            manifest: Arc::new(manifest),
                            file_len: meta.len(),
                            last_used,
                            complete: false,
                        },
                    );
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "content store: removing unreadable manifest");
                    fs::remove_file(&path).map_err(|source| StoreOpenError::Io { path, source })?;
                }
            }
        }
        tracing::debug!(
            root = %root.display(),
            manifests = index.manifests.len(),
            chunks = index.chunks.len(),
            bytes = index.bytes_used,
            "content store open"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                chunks_dir,
                manifests_dir,
                tmp_dir,
                max_bytes: config.max_bytes,
                index: Mutex::new(index),
                tmp_counter: AtomicU64::new(0),
                no_direct: AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    /// The store's directory, `<data_dir>/content`.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // No critical section can panic half-way; a poisoned lock still
        // guards a consistent index.
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How full the store is.
    pub fn usage(&self) -> Usage {
        let index = self.index();
        Usage {
            bytes_used: index.bytes_used,
            max_bytes: self.inner.max_bytes,
            manifests: index.manifests.len(),
            chunks: index.chunks.len(),
        }
    }

    /// Path of the file of chunk `hash`.
    pub(super) fn chunk_path(&self, hash: &ContentId) -> PathBuf {
        fanout_path(&self.inner.chunks_dir, hash)
    }

    fn manifest_path(&self, id: &ContentId) -> PathBuf {
        fanout_path(&self.inner.manifests_dir, id)
    }

    /// The fan-out directory a chunk file lives in.
    pub(super) fn chunk_dir(&self, hash: &ContentId) -> PathBuf {
        self.inner
            .chunks_dir
            .join(hex::encode(&hash.as_bytes()[..1]))
    }

    /// Writes `bytes` to a fresh temp file and syncs it. With `direct`
    /// (chunks fetched from peers) a length that is a whole number of
    /// [`DIRECT_ALIGN`] blocks is written with `O_DIRECT`, around the page
    /// cache; see [`write_direct`] and the decision in the module docs
    /// (`node::content`, "Layout on disk").
    fn write_temp(&self, bytes: &[u8], direct: bool) -> io::Result<TempFile> {
        let direct = direct
            && !bytes.is_empty()
            && bytes.len().is_multiple_of(DIRECT_ALIGN)
            && !self.inner.no_direct.load(Ordering::Relaxed);
        loop {
            let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
            let path = self
                .inner
                .tmp_dir
                .join(format!("{}-{n}.tmp", std::process::id()));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            if direct {
                options.custom_flags(nix::fcntl::OFlag::O_DIRECT.bits());
            }
            let mut file = match options.open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    // The file system takes no O_DIRECT (tmpfs, some FUSE).
                    self.direct_unsupported(&e);
                    return self.write_temp(bytes, false);
                }
                Err(e) => return Err(e),
            };
            let temp = TempFile(Some(path));
            if direct {
                match write_direct(&mut file, bytes) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                        self.direct_unsupported(&e);
                        return self.write_temp(bytes, false);
                    }
                    Err(e) => return Err(e),
                }
            } else {
                file.write_all(bytes)?;
            }
            file.sync_data()?;
            return Ok(temp);
        }
    }

    /// Turns direct writes off for this store (after `O_DIRECT` was refused).
    fn direct_unsupported(&self, e: &io::Error) {
        if !self.inner.no_direct.swap(true, Ordering::Relaxed) {
            tracing::info!(
                dir = %self.inner.tmp_dir.display(),
                error = %e,
                "content store: O_DIRECT refused here; fetched chunks go through the page cache"
            );
        }
    }

    /// Reserves `needed` bytes of the budget.
    fn reserve(index: &mut Index, limit: u64, needed: u64) -> Result<(), (u64, u64, u64)> {
        let used = index.committed_or_reserved();
        if used.saturating_add(needed) > limit {
            return Err((used, needed, limit));
        }
        index.bytes_reserved += needed;
        Ok(())
    }

    /// Stores a validated manifest (if it is not stored yet) and returns its
    /// id. Storing a manifest marks it used now.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<ContentId, PutManifestError> {
        manifest.validate()?;
        let id = manifest.id();
        let bytes = encode_manifest(manifest);
        let needed = bytes.len() as u64;
        {
            let mut index = self.index();
            if let Some(entry) = index.manifests.get_mut(&id) {
                entry.last_used = SystemTime::now();
                return Ok(id);
            }
            Self::reserve(&mut index, self.inner.max_bytes, needed).map_err(
                |(used, needed, limit)| PutManifestError::BudgetExceeded {
                    used,
                    needed,
                    limit,
                },
            )?;
        }
        let path = self.manifest_path(&id);
        let io_err = |source| PutManifestError::Io {
            path: path.clone(),
            source,
        };
        let written = self.write_temp(&bytes, false);
        {
            let mut index = self.index();
            index.bytes_reserved -= needed;
            let temp = written.map_err(io_err)?;
            if index.manifests.contains_key(&id) {
                // Another writer stored it while we wrote; `temp` goes.
                return Ok(id);
            }
            // Renamed under the lock, as chunks are: otherwise a gc between
            // a concurrent writer's rename and its index insert deletes the
            // file that this writer then records (index without file).
            temp.persist(&path).map_err(io_err)?;
            index.bytes_used += needed;
            index.manifests.insert(
                id,
                ManifestEntry {
                    manifest: Arc::new(manifest.clone()),
                    file_len: needed,
                    last_used: SystemTime::now(),
                    complete: false,
                },
            );
        }
        // The directory sync (slow) outside the lock; the file is in place
        // and indexed either way, so a failure here leaves both in step.
        sync_dir(path.parent().unwrap_or(&self.inner.manifests_dir)).map_err(io_err)?;
        Ok(id)
    }

    /// The stored manifest `id`, if any.
    pub fn get_manifest(&self, id: &ContentId) -> Option<Arc<Manifest>> {
        self.index()
            .manifests
            .get(id)
            .map(|e| Arc::clone(&e.manifest))
    }

    /// Marks manifest `id` used now (in memory and as its file's mtime, which
    /// is its last use after a restart). Returns false if it is not stored.
    pub fn touch(&self, id: &ContentId) -> bool {
        let now = SystemTime::now();
        {
            let mut index = self.index();
            let Some(entry) = index.manifests.get_mut(id) else {
                return false;
            };
            entry.last_used = now;
        }
        let path = self.manifest_path(id);
        if let Err(e) = File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(now))
        {
            tracing::warn!(path = %path.display(), error = %e, "content store: cannot set manifest mtime");
        }
        true
    }

    /// Verifies `bytes` as chunk `index` of manifest `id` and stores it.
    /// Bytes that fail verification are never written.
    pub fn put_chunk(
        &self,
        id: &ContentId,
        index: u32,
        bytes: &[u8],
    ) -> Result<PutChunk, PutChunkError> {
        let manifest = self
            .get_manifest(id)
            .ok_or(PutChunkError::UnknownManifest { id: *id })?;
        manifest
            .verify_chunk(index, bytes)
            .map_err(|source| PutChunkError::Rejected {
                id: *id,
                index,
                source,
            })?;
        // verify_chunk checked the index.
        let hash = manifest
            .chunks
            .get(index as usize)
            .copied()
            .ok_or(PutChunkError::UnknownManifest { id: *id })?;
        let stored = self
            .write_chunk(&hash, bytes, ChunkOwner::Manifest(id))
            .map_err(|e| match e {
                WriteChunkError::UnknownManifest => PutChunkError::UnknownManifest { id: *id },
                WriteChunkError::Budget {
                    used,
                    needed,
                    limit,
                } => PutChunkError::BudgetExceeded {
                    used,
                    needed,
                    limit,
                },
                WriteChunkError::Io { path, source } => PutChunkError::Io { path, source },
            })?;
        Ok(if stored {
            PutChunk::Stored
        } else {
            PutChunk::AlreadyPresent
        })
    }

    /// Writes chunk `hash` (already verified or computed by the caller)
    /// unless it is present. Returns whether it was written. A chunk file
    /// appears under its final name only complete and synced.
    pub(super) fn write_chunk(
        &self,
        hash: &ContentId,
        bytes: &[u8],
        mut owner: ChunkOwner<'_>,
    ) -> Result<bool, WriteChunkError> {
        let needed = bytes.len() as u64;
        {
            let mut index = self.index();
            if let ChunkOwner::Manifest(id) = &owner {
                let Some(entry) = index.manifests.get_mut(*id) else {
                    return Err(WriteChunkError::UnknownManifest);
                };
                entry.last_used = SystemTime::now();
            }
            if index.chunks.contains_key(hash) {
                if let ChunkOwner::Staged(staging) = &mut owner {
                    staging.hold(&mut index, hash);
                }
                return Ok(false);
            }
            Self::reserve(&mut index, self.inner.max_bytes, needed).map_err(
                |(used, needed, limit)| WriteChunkError::Budget {
                    used,
                    needed,
                    limit,
                },
            )?;
        }
        let direct = matches!(owner, ChunkOwner::Manifest(_));
        let written = self.write_temp(bytes, direct);
        let mut index = self.index();
        index.bytes_reserved -= needed;
        let temp = written.map_err(|source| WriteChunkError::Io {
            path: self.inner.tmp_dir.clone(),
            source,
        })?;
        match &mut owner {
            ChunkOwner::Manifest(id) if !index.manifests.contains_key(*id) => {
                // Collected while we wrote: the temp file goes with `temp`.
                return Err(WriteChunkError::UnknownManifest);
            }
            ChunkOwner::Staged(staging) => staging.hold(&mut index, hash),
            ChunkOwner::Manifest(_) => {}
        }
        if index.chunks.contains_key(hash) {
            // Another writer won the race with the same bytes.
            return Ok(false);
        }
        // Renamed under the lock so that gc (which holds it) never sees a
        // chunk file the index does not know.
        let path = self.chunk_path(hash);
        temp.persist(&path).map_err(|source| WriteChunkError::Io {
            path: path.clone(),
            source,
        })?;
        index.chunks.insert(
            *hash,
            ChunkEntry {
                len: needed,
                verified: true,
            },
        );
        index.bytes_used += needed;
        Ok(true)
    }

    /// Starts holding chunks for a pipeline (see [`ChunkOwner::Staged`]).
    pub(super) fn staging(&self) -> Staging {
        Staging {
            store: self.clone(),
            held: Vec::new(),
        }
    }

    /// Reads chunk `hash` into `buf` (resized to `expected_len`) without
    /// hashing it: the caller authenticates it some other way.
    pub(super) fn read_chunk_raw(
        &self,
        hash: &ContentId,
        expected_len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), ReadChunkError> {
        let path = self.chunk_path(hash);
        let io_err = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                ReadChunkError::Missing
            } else {
                ReadChunkError::Io {
                    path: path.clone(),
                    source,
                }
            }
        };
        let mut file = File::open(&path).map_err(io_err)?;
        let found = file.metadata().map_err(io_err)?.len();
        if found != expected_len {
            return Err(ReadChunkError::Length { found });
        }
        let len = usize::try_from(expected_len).map_err(|_| ReadChunkError::Length { found })?;
        // Read into spare capacity: no zero-fill of a buffer about to be
        // overwritten (a memset per served megabyte).
        buf.clear();
        buf.reserve(len);
        (&mut file)
            .take(expected_len)
            .read_to_end(buf)
            .map_err(io_err)?;
        if buf.len() == len {
            Ok(())
        } else {
            Err(ReadChunkError::Length {
                found: buf.len() as u64,
            })
        }
    }

    /// Reads chunk `index` of manifest `id` and checks it against the
    /// manifest before returning it. A chunk that fails the check is removed
    /// from the store (so it is fetched again) and reported as
    /// [`GetChunkError::Corrupt`].
    pub fn get_chunk(&self, id: &ContentId, index: u32) -> Result<Vec<u8>, GetChunkError> {
        let mut buf = Vec::new();
        self.get_chunk_into(id, index, &mut buf)?;
        Ok(buf)
    }

    /// [`get_chunk`](Self::get_chunk) into a caller buffer (reused across
    /// calls to avoid an allocation per chunk).
    pub fn get_chunk_into(
        &self,
        id: &ContentId,
        index: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), GetChunkError> {
        self.chunk_into(id, index, buf, false)
    }

    /// Reads chunk `index` of manifest `id` into `buf` to send to a peer:
    /// [`get_chunk_into`](Self::get_chunk_into), except that a chunk this
    /// store has already hashed (written, or checked on an earlier read,
    /// since it was opened) is not hashed again; its length is still
    /// checked.
    ///
    /// Decision: a holder re-hashing every chunk it serves spent ~0.2 CPU s
    /// per GiB served (BLAKE3), once per fetching worker, to catch a disk
    /// that changed bytes under a running store, which the fetcher catches
    /// anyway (it verifies every chunk before storing it, and a chunk that
    /// fails is asked for again). Chunks found on disk at open are checked
    /// on their first read, so corruption while the node was down (or a
    /// file replaced behind its back) is still caught here and the chunk
    /// removed. Readers of the plaintext (the opener) do not use this: the
    /// AEAD authenticates every byte they decrypt, and a failure is
    /// diagnosed with [`get_chunk`](Self::get_chunk), which always hashes.
    pub fn serve_chunk_into(
        &self,
        id: &ContentId,
        index: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), GetChunkError> {
        self.chunk_into(id, index, buf, true)
    }

    fn chunk_into(
        &self,
        id: &ContentId,
        index: u32,
        buf: &mut Vec<u8>,
        trust_verified: bool,
    ) -> Result<(), GetChunkError> {
        let (manifest, hash, verified) = {
            let mut idx = self.index();
            let entry = idx
                .manifests
                .get_mut(id)
                .ok_or(GetChunkError::UnknownManifest { id: *id })?;
            entry.last_used = SystemTime::now();
            let manifest = Arc::clone(&entry.manifest);
            let hash = manifest
                .chunks
                .get(index as usize)
                .copied()
                .ok_or_else(|| GetChunkError::Index {
                    id: *id,
                    index,
                    source: ContentError::IndexOutOfRange {
                        index,
                        count: manifest.chunks.len() as u64,
                    },
                })?;
            let Some(chunk) = idx.chunks.get(&hash) else {
                return Err(GetChunkError::Missing { id: *id, index });
            };
            (manifest, hash, chunk.verified)
        };
        let expected = manifest
            .chunk_len(index)
            .map_err(|source| GetChunkError::Index {
                id: *id,
                index,
                source,
            })?;
        let detail = match self.read_chunk_raw(&hash, u64::from(expected), buf) {
            Ok(()) if verified && trust_verified => return Ok(()),
            Ok(()) => match manifest.verify_chunk(index, buf) {
                Ok(()) => {
                    if !verified && let Some(chunk) = self.index().chunks.get_mut(&hash) {
                        chunk.verified = true;
                    }
                    return Ok(());
                }
                Err(e) => e.to_string(),
            },
            Err(ReadChunkError::Missing) => {
                self.forget_chunk(&hash, false);
                return Err(GetChunkError::Missing { id: *id, index });
            }
            Err(ReadChunkError::Length { found }) => {
                format!("expected {expected} bytes, found {found}")
            }
            Err(ReadChunkError::Io { path, source }) => {
                return Err(GetChunkError::Io { path, source });
            }
        };
        buf.clear();
        tracing::warn!(%id, index, %detail, "content store: removing corrupt chunk");
        self.forget_chunk(&hash, true);
        Err(GetChunkError::Corrupt {
            id: *id,
            index,
            detail,
        })
    }

    /// Drops chunk `hash` from the index (and its file, if `remove_file`).
    pub(super) fn forget_chunk(&self, hash: &ContentId, remove_file: bool) {
        let mut index = self.index();
        if let Some(ChunkEntry { len, .. }) = index.chunks.remove(hash) {
            index.bytes_used = index.bytes_used.saturating_sub(len);
            for entry in index.manifests.values_mut() {
                entry.complete = false;
            }
            if remove_file {
                let path = self.chunk_path(hash);
                if let Err(e) = fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "content store: cannot remove chunk");
                }
            }
        }
    }

    /// Indices of the chunks of manifest `id` that are not stored, in order;
    /// `None` if the manifest itself is not stored.
    pub fn missing_chunks(&self, id: &ContentId) -> Option<Vec<u32>> {
        let index = self.index();
        let entry = index.manifests.get(id)?;
        Some(
            entry
                .manifest
                .chunks
                .iter()
                .zip(0u32..)
                .filter(|(hash, _)| !index.chunks.contains_key(hash))
                .map(|(_, i)| i)
                .collect(),
        )
    }

    /// Whether manifest `id` and every one of its chunks are stored.
    pub fn has_complete(&self, id: &ContentId) -> bool {
        let mut index = self.index();
        let Index {
            manifests, chunks, ..
        } = &mut *index;
        let Some(entry) = manifests.get_mut(id) else {
            return false;
        };
        if !entry.complete {
            entry.complete = entry.manifest.chunks.iter().all(|c| chunks.contains_key(c));
        }
        entry.complete
    }

    /// Removes every manifest that is not in `keep` and was last used before
    /// `unused_since`, then every chunk that no remaining manifest lists and
    /// no pipeline in progress holds.
    ///
    /// `unused_since = UNIX_EPOCH` removes only unreferenced chunks (left by
    /// failed pipelines or removed manifests); a time in the future removes
    /// everything not kept. Holds the index lock throughout, so other store
    /// calls wait for it.
    pub fn gc(
        &self,
        keep: &BTreeSet<ContentId>,
        unused_since: SystemTime,
    ) -> Result<GcReport, GcError> {
        let mut index = self.index();
        let mut report = GcReport::default();
        let doomed: Vec<ContentId> = index
            .manifests
            .iter()
            .filter(|(id, e)| !keep.contains(*id) && e.last_used < unused_since)
            .map(|(id, _)| *id)
            .collect();
        for id in doomed {
            let path = self.manifest_path(&id);
            remove_if_present(&path)?;
            if let Some(entry) = index.manifests.remove(&id) {
                index.bytes_used = index.bytes_used.saturating_sub(entry.file_len);
                report.bytes_freed += entry.file_len;
            }
            report.manifests_removed.push(id);
        }
        let mut live: std::collections::HashSet<ContentId> = index.staged.keys().copied().collect();
        for entry in index.manifests.values() {
            live.extend(entry.manifest.chunks.iter().copied());
        }
        let dead: Vec<(ContentId, u64)> = index
            .chunks
            .iter()
            .filter(|(hash, _)| !live.contains(*hash))
            .map(|(hash, entry)| (*hash, entry.len))
            .collect();
        for (hash, len) in dead {
            remove_if_present(&self.chunk_path(&hash))?;
            index.chunks.remove(&hash);
            index.bytes_used = index.bytes_used.saturating_sub(len);
            report.chunks_removed += 1;
            report.bytes_freed += len;
        }
        if !report.manifests_removed.is_empty() || report.chunks_removed > 0 {
            tracing::info!(
                manifests = report.manifests_removed.len(),
                chunks = report.chunks_removed,
                bytes = report.bytes_freed,
                "content store: garbage collected"
            );
        }
        Ok(report)
    }
}

impl Staging {
    fn hold(&mut self, index: &mut Index, hash: &ContentId) {
        *index.staged.entry(*hash).or_insert(0) += 1;
        self.held.push(*hash);
    }
}

fn remove_if_present(path: &Path) -> Result<(), GcError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GcError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn load_manifest(path: &Path, meta: &fs::Metadata, id: &ContentId) -> Result<Manifest, String> {
    if meta.len() > MAX_MANIFEST_FILE {
        return Err(format!(
            "expected at most {MAX_MANIFEST_FILE} bytes, found {}",
            meta.len()
        ));
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let manifest = decode_manifest(&bytes)?;
    let found = manifest.id();
    if found != *id {
        return Err(format!("expected id {id}, found {found}"));
    }
    Ok(manifest)
}

fn check_layout(path: &Path) -> Result<(), StoreOpenError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let first = text.lines().next().unwrap_or("");
            if first == LAYOUT {
                Ok(())
            } else {
                Err(StoreOpenError::Layout {
                    path: path.to_owned(),
                    found: first.chars().take(80).collect(),
                })
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            crate::node::write_atomic(path, format!("{LAYOUT}\n").as_bytes()).map_err(|source| {
                StoreOpenError::Io {
                    path: path.to_owned(),
                    source,
                }
            })
        }
        Err(source) => Err(StoreOpenError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use rendertrust_protocol::content::chunk_id;

    use super::super::test_util::{data, files_under, manifest_of, open_store, store_all};
    use super::*;

    fn far_future() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    /// The index agrees with the files on disk.
    fn assert_index_matches_disk(store: &ContentStore) {
        let files = files_under(&store.inner.chunks_dir);
        let index = store.index();
        assert_eq!(files.len(), index.chunks.len(), "chunk files vs index");
        let mut bytes = 0;
        for path in &files {
            let parent = path
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            let name = path.file_name().unwrap().to_str().unwrap();
            let id = parse_fanout(parent, name).unwrap();
            let len = fs::metadata(path).unwrap().len();
            assert_eq!(
                index.chunks.get(&id).map(|c| c.len),
                Some(len),
                "{}",
                path.display()
            );
            bytes += len;
        }
        let manifests = files_under(&store.inner.manifests_dir);
        assert_eq!(manifests.len(), index.manifests.len());
        for path in &manifests {
            bytes += fs::metadata(path).unwrap().len();
        }
        assert_eq!(index.bytes_used, bytes);
        assert_eq!(index.bytes_reserved, 0);
    }

    #[test]
    fn round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(3 * 4096 + 100, 1);
        let (manifest, chunks) = manifest_of(&content);
        let id = {
            let store = open_store(dir.path());
            let id = store.put_manifest(&manifest).unwrap();
            assert_eq!(id, manifest.id());
            assert!(!store.has_complete(&id));
            // Any order.
            for i in [3u32, 0, 2, 1] {
                assert_eq!(
                    store.put_chunk(&id, i, &chunks[i as usize]).unwrap(),
                    PutChunk::Stored
                );
            }
            assert!(store.has_complete(&id));
            assert_index_matches_disk(&store);
            id
        };
        let store = open_store(dir.path());
        assert_eq!(*store.get_manifest(&id).unwrap(), manifest);
        assert!(store.has_complete(&id));
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(&store.get_chunk(&id, i as u32).unwrap(), chunk);
        }
        let usage = store.usage();
        assert_eq!(usage.manifests, 1);
        assert_eq!(usage.chunks, 4);
        assert_eq!(
            usage.bytes_used,
            content.len() as u64 + encode_manifest(&manifest).len() as u64
        );
        assert_index_matches_disk(&store);
        // Chunk files are named by their hash, with fan-out.
        let hex = manifest.chunks[0].to_string();
        let path = dir
            .path()
            .join("content/chunks")
            .join(&hex[..2])
            .join(&hex[2..]);
        assert_eq!(fs::read(path).unwrap(), chunks[0]);
    }

    /// Chunks fetched from peers are written around the page cache where the
    /// file system allows it (`O_DIRECT`) and through it where it does not
    /// (tmpfs refuses `O_DIRECT` on older kernels): either way every chunk,
    /// whole blocks or not, reads back and survives a reopen.
    #[test]
    fn fetched_chunks_round_trip_with_or_without_direct_writes() {
        let shm = std::path::Path::new("/dev/shm");
        let roots: Vec<tempfile::TempDir> = [
            Some(tempfile::tempdir().unwrap()),
            shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap()),
        ]
        .into_iter()
        .flatten()
        .collect();
        for dir in &roots {
            // Block-sized chunks (direct) and a 100-byte tail (buffered).
            let content = data(3 * 4096 + 100, 7);
            let (manifest, chunks) = manifest_of(&content);
            let takes_direct = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
                .open(dir.path().join("probe"))
                .is_ok();
            let id = {
                let store = open_store(dir.path());
                let id = store.put_manifest(&manifest).unwrap();
                for (i, chunk) in chunks.iter().enumerate() {
                    // An aligned source is written as it is, an unaligned one
                    // from the thread's aligned copy.
                    let mut room = vec![0u8; chunk.len() + 2 * DIRECT_ALIGN];
                    let mut at = room.as_ptr().align_offset(DIRECT_ALIGN);
                    if i % 2 == 1 {
                        at += 1;
                    }
                    room[at..at + chunk.len()].copy_from_slice(chunk);
                    let source = &room[at..at + chunk.len()];
                    assert_eq!(
                        store.put_chunk(&id, i as u32, source).unwrap(),
                        PutChunk::Stored,
                        "{}",
                        dir.path().display()
                    );
                }
                assert!(fs::read_dir(&store.inner.tmp_dir).unwrap().next().is_none());
                assert_index_matches_disk(&store);
                // Where the file system takes O_DIRECT, no write fell back.
                assert_eq!(
                    store.inner.no_direct.load(Ordering::Relaxed),
                    !takes_direct,
                    "{}",
                    dir.path().display()
                );
                id
            };
            let store = open_store(dir.path());
            assert!(store.has_complete(&id));
            for (i, chunk) in chunks.iter().enumerate() {
                assert_eq!(&store.get_chunk(&id, i as u32).unwrap(), chunk);
            }
        }
    }

    #[test]
    fn write_direct_takes_only_whole_aligned_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let open = || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
                .open(&path)
        };
        let Ok(mut file) = open() else {
            eprintln!("write_direct test: no O_DIRECT on {}", dir.path().display());
            return;
        };
        let block = data(3 * DIRECT_ALIGN, 8);
        // From an unaligned source (copied), then an aligned one (as it is).
        write_direct(&mut file, &block[1..=DIRECT_ALIGN]).unwrap();
        let at = block.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &block[at..at + DIRECT_ALIGN];
        write_direct(&mut file, aligned).unwrap();
        drop(file);
        assert_eq!(
            fs::read(&path).unwrap(),
            [&block[1..=DIRECT_ALIGN], aligned].concat()
        );
        // A length that is not whole blocks is refused (ext4, xfs: the
        // caller then falls back to a buffered write) or, on a file system
        // that quietly buffers it, written whole.
        let mut file = open().unwrap();
        match write_direct(&mut file, &block[..100]) {
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::EINVAL), "{e}"),
            Ok(()) => {
                drop(file);
                assert_eq!(fs::read(&path).unwrap(), &block[..100]);
            }
        }
    }

    #[test]
    fn put_chunk_refuses_what_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let content = data(2 * 4096 + 10, 2);
        let (manifest, chunks) = manifest_of(&content);
        let (other, other_chunks) = manifest_of(&data(2 * 4096 + 10, 3));
        let unknown = other.id();
        assert!(matches!(
            store.put_chunk(&unknown, 0, &other_chunks[0]),
            Err(PutChunkError::UnknownManifest { id }) if id == unknown
        ));
        let id = store.put_manifest(&manifest).unwrap();
        let mut flipped = chunks[1].clone();
        flipped[7] ^= 0x10;
        let rejected = |index: u32, bytes: &[u8]| match store.put_chunk(&id, index, bytes) {
            Err(PutChunkError::Rejected {
                id: rid,
                index: rindex,
                source,
            }) if rid == id && rindex == index => source,
            other => panic!("expected a rejection, found {other:?}"),
        };
        assert!(matches!(
            rejected(1, &flipped),
            ContentError::ChunkHash { index: 1, .. }
        ));
        // The right bytes at the wrong index.
        assert!(matches!(
            rejected(0, &chunks[1]),
            ContentError::ChunkHash { index: 0, .. }
        ));
        // Wrong length, including a full chunk offered as the short last one.
        assert!(matches!(
            rejected(0, &chunks[0][..100]),
            ContentError::ChunkLength { .. }
        ));
        assert!(matches!(
            rejected(2, &chunks[0]),
            ContentError::ChunkLength { index: 2, .. }
        ));
        assert!(matches!(
            rejected(3, &chunks[2]),
            ContentError::IndexOutOfRange { index: 3, count: 3 }
        ));
        // A chunk of another manifest at the same index.
        assert!(matches!(
            rejected(0, &other_chunks[0]),
            ContentError::ChunkHash { .. }
        ));
        assert!(files_under(&store.inner.chunks_dir).is_empty());
        assert!(files_under(&store.inner.tmp_dir).is_empty());
        assert_eq!(store.missing_chunks(&id), Some(vec![0, 1, 2]));
        assert_index_matches_disk(&store);
    }

    #[test]
    fn shared_chunks_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let a = data(3 * 4096, 4);
        let mut b = a[..2 * 4096].to_vec();
        b.extend_from_slice(&data(500, 5));
        let id_a = store_all(&store, &a);
        let (manifest_b, chunks_b) = manifest_of(&b);
        let id_b = store.put_manifest(&manifest_b).unwrap();
        assert_eq!(store.missing_chunks(&id_b), Some(vec![2]));
        assert_eq!(
            store.put_chunk(&id_b, 0, &chunks_b[0]).unwrap(),
            PutChunk::AlreadyPresent
        );
        assert_eq!(
            store.put_chunk(&id_b, 2, &chunks_b[2]).unwrap(),
            PutChunk::Stored
        );
        assert!(store.has_complete(&id_a) && store.has_complete(&id_b));
        assert_eq!(files_under(&store.inner.chunks_dir).len(), 4);
        assert_eq!(store.usage().chunks, 4);
        assert_index_matches_disk(&store);
    }

    #[test]
    fn missing_chunks_track_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let (manifest, chunks) = manifest_of(&data(4 * 4096 + 1, 6));
        let id = manifest.id();
        assert_eq!(store.missing_chunks(&id), None);
        assert!(!store.has_complete(&id));
        store.put_manifest(&manifest).unwrap();
        assert_eq!(store.missing_chunks(&id), Some(vec![0, 1, 2, 3, 4]));
        store.put_chunk(&id, 3, &chunks[3]).unwrap();
        store.put_chunk(&id, 0, &chunks[0]).unwrap();
        assert_eq!(store.missing_chunks(&id), Some(vec![1, 2, 4]));
        assert!(matches!(
            store.get_chunk(&id, 1),
            Err(GetChunkError::Missing { index: 1, .. })
        ));
        assert!(matches!(
            store.get_chunk(&id, 5),
            Err(GetChunkError::Index { index: 5, .. })
        ));
        for i in [1, 2, 4] {
            store.put_chunk(&id, i, &chunks[i as usize]).unwrap();
        }
        assert_eq!(store.missing_chunks(&id), Some(vec![]));
        assert!(store.has_complete(&id));
        // An empty content is complete with its manifest alone.
        let (empty, _) = manifest_of(&[]);
        let empty_id = store.put_manifest(&empty).unwrap();
        assert!(store.has_complete(&empty_id));
    }

    #[test]
    fn serving_hashes_a_chunk_once_per_open_and_checks_lengths_always() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(3 * 4096, 11);
        let flip = |path: &Path| {
            let mut bytes = fs::read(path).unwrap();
            bytes[7] ^= 0x10;
            fs::write(path, &bytes).unwrap();
        };
        let (id, manifest, path) = {
            let store = open_store(dir.path());
            let id = store_all(&store, &content);
            let manifest = store.get_manifest(&id).unwrap();
            // Written by this store, so hashed: a bit flipped behind its
            // back is served as it is (the fetcher's check catches it) ...
            flip(&store.chunk_path(&manifest.chunks[0]));
            let mut buf = Vec::new();
            store.serve_chunk_into(&id, 0, &mut buf).unwrap();
            assert_ne!(buf, content[..4096]);
            // ... while a checked read finds it, and drops the chunk.
            assert!(matches!(
                store.get_chunk(&id, 0),
                Err(GetChunkError::Corrupt { index: 0, .. })
            ));
            assert!(matches!(
                store.serve_chunk_into(&id, 0, &mut buf),
                Err(GetChunkError::Missing { index: 0, .. })
            ));
            // A wrong length is always caught.
            let path = store.chunk_path(&manifest.chunks[1]);
            fs::write(&path, &content[4096..4096 + 10]).unwrap();
            assert!(matches!(
                store.serve_chunk_into(&id, 1, &mut buf),
                Err(GetChunkError::Corrupt { index: 1, .. })
            ));
            assert!(!path.exists());
            let path = store.chunk_path(&manifest.chunks[2]);
            (id, manifest, path)
        };
        // Changed while no store had it open: the first read after open
        // hashes the chunk, finds it and drops it.
        flip(&path);
        let store = open_store(dir.path());
        assert!(path.exists());
        let mut buf = Vec::new();
        assert!(matches!(
            store.serve_chunk_into(&id, 2, &mut buf),
            Err(GetChunkError::Corrupt { index: 2, .. })
        ));
        assert!(!path.exists());
        // A good chunk found at open is hashed on its first read, then
        // trusted: stored again and read twice, with a flip in between.
        store.put_chunk(&id, 2, &content[2 * 4096..]).unwrap();
        drop(store);
        let store = open_store(dir.path());
        store.serve_chunk_into(&id, 2, &mut buf).unwrap();
        assert_eq!(buf, content[2 * 4096..]);
        flip(&store.chunk_path(&manifest.chunks[2]));
        store.serve_chunk_into(&id, 2, &mut buf).unwrap();
        assert_ne!(buf, content[2 * 4096..]);
    }

    #[test]
    fn corrupt_or_vanished_chunk_is_reported_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let content = data(3 * 4096, 7);
        let id = store_all(&store, &content);
        let manifest = store.get_manifest(&id).unwrap();
        // Flipped bit.
        let path = store.chunk_path(&manifest.chunks[1]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[100] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.get_chunk(&id, 1),
            Err(GetChunkError::Corrupt { index: 1, .. })
        ));
        assert!(!path.exists());
        assert_eq!(store.missing_chunks(&id), Some(vec![1]));
        assert!(!store.has_complete(&id));
        // Truncated (as a non-atomic writer would leave it).
        let path = store.chunk_path(&manifest.chunks[2]);
        fs::write(&path, &content[2 * 4096..2 * 4096 + 10]).unwrap();
        assert!(matches!(
            store.get_chunk(&id, 2),
            Err(GetChunkError::Corrupt { index: 2, detail, .. }) if detail.contains("expected 4096 bytes, found 10")
        ));
        // Deleted behind the store's back.
        fs::remove_file(store.chunk_path(&manifest.chunks[0])).unwrap();
        assert!(matches!(
            store.get_chunk(&id, 0),
            Err(GetChunkError::Missing { index: 0, .. })
        ));
        assert_eq!(store.missing_chunks(&id), Some(vec![0, 1, 2]));
        assert_index_matches_disk(&store);
        // And it can be stored again.
        store.put_chunk(&id, 1, &content[4096..2 * 4096]).unwrap();
        assert_eq!(store.get_chunk(&id, 1).unwrap(), &content[4096..2 * 4096]);
    }

    #[test]
    fn temp_files_left_by_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let content = data(2 * 4096, 8);
        let id = {
            let store = open_store(dir.path());
            store_all(&store, &content)
        };
        let tmp = dir.path().join("content/tmp");
        // A half-written chunk and a half-written manifest.
        fs::write(tmp.join("123-0.tmp"), &content[..1000]).unwrap();
        fs::write(tmp.join("123-1.tmp"), [1u8, 0, 16]).unwrap();
        fs::create_dir(tmp.join("stray")).unwrap();
        let store = open_store(dir.path());
        assert!(fs::read_dir(&tmp).unwrap().next().is_none());
        assert_eq!(store.usage().chunks, 2);
        assert!(store.has_complete(&id));
        assert_index_matches_disk(&store);
    }

    #[test]
    fn unexpected_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open_store(dir.path());
            store_all(&store, &data(4096, 9));
        }
        let chunks = dir.path().join("content/chunks");
        fs::write(chunks.join("README"), b"hello").unwrap();
        fs::create_dir_all(chunks.join("ab")).unwrap();
        fs::write(chunks.join("ab").join("not-a-hash"), b"x").unwrap();
        fs::create_dir(chunks.join("zz")).unwrap();
        let store = open_store(dir.path());
        assert_eq!(store.usage().chunks, 1);
        assert_eq!(store.usage().manifests, 1);
    }

    #[test]
    fn bad_manifest_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (good, _) = manifest_of(&data(4096 * 2, 10));
        let (other, _) = manifest_of(&data(4096, 11));
        let wrong_id = ContentId([0x42; 32]);
        let garbage_id = ContentId([0x43; 32]);
        {
            let store = open_store(dir.path());
            store.put_manifest(&good).unwrap();
            // A valid manifest under another manifest's name, and garbage.
            for id in [wrong_id, garbage_id] {
                fs::create_dir_all(store.manifest_path(&id).parent().unwrap()).unwrap();
            }
            fs::write(store.manifest_path(&wrong_id), encode_manifest(&other)).unwrap();
            fs::write(store.manifest_path(&garbage_id), b"\x01garbage").unwrap();
        }
        let store = open_store(dir.path());
        assert!(store.get_manifest(&good.id()).is_some());
        assert!(store.get_manifest(&wrong_id).is_none());
        assert!(store.get_manifest(&garbage_id).is_none());
        assert!(!store.manifest_path(&wrong_id).exists());
        assert!(!store.manifest_path(&garbage_id).exists());
        assert_index_matches_disk(&store);
    }

    #[test]
    fn one_store_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_store(dir.path());
        assert!(matches!(
            ContentStore::open(dir.path(), ContentConfig::default()),
            Err(StoreOpenError::Locked { .. })
        ));
        let clone = first.clone();
        drop(first);
        // Still held by the clone.
        assert!(ContentStore::open(dir.path(), ContentConfig::default()).is_err());
        drop(clone);
        open_store(dir.path());
    }

    #[test]
    fn unknown_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_store(dir.path()));
        let layout = dir.path().join("content/LAYOUT");
        assert_eq!(fs::read_to_string(&layout).unwrap(), format!("{LAYOUT}\n"));
        fs::write(&layout, "rendertrust content store v2\n").unwrap();
        assert!(matches!(
            ContentStore::open(dir.path(), ContentConfig::default()),
            Err(StoreOpenError::Layout { found, .. }) if found == "rendertrust content store v2"
        ));
    }

    #[test]
    fn budget_refuses_writes_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let (manifest, chunks) = manifest_of(&data(3 * 4096, 12));
        let manifest_len = encode_manifest(&manifest).len() as u64;
        let limit = manifest_len + 2 * 4096;
        let store = ContentStore::open(dir.path(), ContentConfig { max_bytes: limit }).unwrap();
        let id = store.put_manifest(&manifest).unwrap();
        store.put_chunk(&id, 0, &chunks[0]).unwrap();
        store.put_chunk(&id, 1, &chunks[1]).unwrap();
        assert!(matches!(
            store.put_chunk(&id, 2, &chunks[2]),
            Err(PutChunkError::BudgetExceeded { used, needed: 4096, limit: l })
                if used == limit && l == limit
        ));
        // A chunk already stored needs no budget.
        assert_eq!(
            store.put_chunk(&id, 1, &chunks[1]).unwrap(),
            PutChunk::AlreadyPresent
        );
        let (another, _) = manifest_of(&data(10, 13));
        assert!(matches!(
            store.put_manifest(&another),
            Err(PutManifestError::BudgetExceeded { .. })
        ));
        assert_eq!(store.usage().bytes_used, limit);
        assert_index_matches_disk(&store);
        // gc frees the budget.
        store.gc(&BTreeSet::new(), far_future()).unwrap();
        assert_eq!(store.usage().bytes_used, 0);
        store.put_manifest(&another).unwrap();
    }

    #[test]
    fn gc_keeps_pinned_and_recent_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let a = data(3 * 4096, 14);
        let mut b = a[..4096].to_vec();
        b.extend_from_slice(&data(4096, 15));
        let c = data(2 * 4096, 16);
        let (id_a, id_b, id_c) = (
            store_all(&store, &a),
            store_all(&store, &b),
            store_all(&store, &c),
        );
        let before = store.usage();
        // Only unreferenced chunks go when nothing is old enough.
        let report = store.gc(&BTreeSet::new(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(report, GcReport::default());
        assert_eq!(store.usage(), before);
        // Everything not kept is old enough.
        let keep = BTreeSet::from([id_a]);
        let report = store.gc(&keep, far_future()).unwrap();
        let mut removed = vec![id_b, id_c];
        removed.sort();
        assert_eq!(report.manifests_removed, removed);
        // b's second chunk and c's two; b's first chunk is a's.
        assert_eq!(report.chunks_removed, 3);
        assert!(store.has_complete(&id_a));
        assert!(store.get_manifest(&id_b).is_none());
        assert_eq!(store.usage().chunks, 3);
        assert_eq!(
            before.bytes_used - report.bytes_freed,
            store.usage().bytes_used
        );
        assert_index_matches_disk(&store);
        drop(store);
        let store = open_store(dir.path());
        assert!(store.has_complete(&id_a));
        assert_eq!(store.usage().manifests, 1);
        assert_index_matches_disk(&store);
    }

    #[test]
    fn last_use_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (id_old, id_touched, id_new) = {
            let store = open_store(dir.path());
            let ids = (
                store_all(&store, &data(4096, 17)),
                store_all(&store, &data(4096, 18)),
                store_all(&store, &data(4096, 19)),
            );
            for id in [ids.0, ids.1] {
                File::options()
                    .write(true)
                    .open(store.manifest_path(&id))
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
            ids
        };
        let store = open_store(dir.path());
        assert!(store.touch(&id_touched));
        assert!(!store.touch(&ContentId([9; 32])));
        let modified = fs::metadata(store.manifest_path(&id_touched))
            .unwrap()
            .modified()
            .unwrap();
        assert!(modified > old);
        let report = store
            .gc(&BTreeSet::new(), old + Duration::from_secs(1))
            .unwrap();
        assert_eq!(report.manifests_removed, vec![id_old]);
        assert!(store.has_complete(&id_touched) && store.has_complete(&id_new));
    }

    #[test]
    fn gc_spares_chunks_of_a_seal_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let bytes = data(1000, 20);
        let hash = chunk_id(&bytes);
        let mut staging = store.staging();
        assert!(
            store
                .write_chunk(&hash, &bytes, ChunkOwner::Staged(&mut staging))
                .unwrap()
        );
        // Staged again (a second pipeline with the same chunk).
        let mut second = store.staging();
        assert!(
            !store
                .write_chunk(&hash, &bytes, ChunkOwner::Staged(&mut second))
                .unwrap()
        );
        assert_eq!(
            store
                .gc(&BTreeSet::new(), far_future())
                .unwrap()
                .chunks_removed,
            0
        );
        drop(staging);
        assert_eq!(
            store
                .gc(&BTreeSet::new(), far_future())
                .unwrap()
                .chunks_removed,
            0
        );
        drop(second);
        assert_eq!(
            store
                .gc(&BTreeSet::new(), far_future())
                .unwrap()
                .chunks_removed,
            1
        );
        assert_index_matches_disk(&store);
    }

    #[test]
    fn put_chunk_for_a_collected_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let (manifest, chunks) = manifest_of(&data(4096, 21));
        let id = store.put_manifest(&manifest).unwrap();
        store.gc(&BTreeSet::new(), far_future()).unwrap();
        assert!(matches!(
            store.put_chunk(&id, 0, &chunks[0]),
            Err(PutChunkError::UnknownManifest { .. })
        ));
        assert!(files_under(&store.inner.chunks_dir).is_empty());
    }

    #[test]
    fn concurrent_writers_and_gc_keep_index_and_disk_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let contents: Vec<Vec<u8>> = (0..4).map(|i| data(6 * 4096 + 7, 30 + i)).collect();
        let manifests: Vec<_> = contents.iter().map(|c| manifest_of(c)).collect();
        std::thread::scope(|s| {
            for round in 0..3u64 {
                for (m, chunks) in &manifests {
                    let store = &store;
                    s.spawn(move || {
                        let id = store.put_manifest(m).unwrap();
                        for (i, chunk) in chunks.iter().enumerate().rev() {
                            // A concurrent gc may collect the manifest.
                            match store.put_chunk(&id, i as u32, chunk) {
                                Ok(_) | Err(PutChunkError::UnknownManifest { .. }) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    });
                }
                let store = &store;
                s.spawn(move || {
                    let until = if round == 1 {
                        far_future()
                    } else {
                        SystemTime::UNIX_EPOCH
                    };
                    store.gc(&BTreeSet::new(), until).unwrap();
                });
            }
        });
        assert_index_matches_disk(&store);
        // Whatever survived is consistent, and storing again completes it.
        for (m, chunks) in &manifests {
            let id = store.put_manifest(m).unwrap();
            for (i, chunk) in chunks.iter().enumerate() {
                store.put_chunk(&id, i as u32, chunk).unwrap();
            }
            assert!(store.has_complete(&id));
        }
        assert_index_matches_disk(&store);
    }

    #[test]
    fn manifest_file_decoding_rejects_bad_files() {
        let (m, _) = manifest_of(&data(3 * 4096 + 1, 22));
        let bytes = encode_manifest(&m);
        assert_eq!(decode_manifest(&bytes).unwrap(), m);
        assert!(decode_manifest(&bytes[..12]).is_err());
        assert!(decode_manifest(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_manifest(&bytes[..bytes.len() - 32]).is_err());
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0; 32]);
        assert!(decode_manifest(&extra).unwrap_err().contains("chunks"));
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(decode_manifest(&version).unwrap_err().contains("version"));
        let mut size = bytes;
        size[1] = 1;
        assert!(decode_manifest(&size).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_manifest_file_round_trips(len in 0usize..20 * 4096, seed in any::<u64>()) {
            let (m, _) = manifest_of(&data(len, seed));
            let bytes = encode_manifest(&m);
            // The file is the id layout: it hashes to the id.
            prop_assert_eq!(
                blake3::derive_key(rendertrust_protocol::content::MANIFEST_CONTEXT, &bytes),
                m.id().0
            );
            prop_assert_eq!(decode_manifest(&bytes).unwrap(), m);
        }

        #[test]
        fn prop_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = decode_manifest(&bytes) {
                prop_assert_eq!(encode_manifest(&m), bytes);
            }
        }
    }
}
