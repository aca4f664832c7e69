//! Sealed, content-addressed content on disk, and moving it: the node's
//! side of `docs/jobs.md` steps 1, 4, 5 and 7.
//!
//! # What this module owns
//!
//! * [`ContentStore`]: sealed chunks and manifests under
//!   `<data_dir>/content/`, an in-memory index of them, a byte budget and
//!   garbage collection.
//! * The file pipelines [`seal_file_into_store`] (plaintext file → STREAM →
//!   1 MiB content chunks → store, one pass) and [`open_from_store`] (store →
//!   STREAM → plaintext file), in constant memory for any file size.
//! * [`fetch_content`]: pulling a manifest and its missing chunks from a
//!   [`ChunkSource`] (a peer, over whatever transport implements it).
//! * [`ChunkBuf`] ([`buf`]): the data plane's chunk buffers, 4 KiB-aligned
//!   for `O_DIRECT` and recycled through a small pool.
//!
//! # What it must not do
//!
//! * No sealing, hashing or verification rule of its own: STREAM is
//!   `protocol::seal`, chunk hashes, manifest ids and chunk verification are
//!   `protocol::content`. This module only moves bytes between them and disk.
//! * No libp2p: the transport implements [`ChunkSource`].
//! * Never store a chunk that did not verify against its manifest, never
//!   leave a partial file under a final name, never write plaintext into the
//!   store (only sealed bytes are content-addressed).
//!
//! # Layout on disk
//!
//! ```text
//! <data_dir>/content/
//!   LAYOUT                 "rendertrust content store v1"
//!   LOCK                   flock'd by the one ContentStore using the directory
//!   chunks/ab/cdef…        a sealed chunk, named by its chunk hash (hex; 256 fan-out dirs,
//!                          all made at open)
//!   manifests/ab/cdef…     a manifest, named by its id, in the manifest id layout:
//!                          1u8 | chunk_size u32 LE | total_size u64 LE | chunk hashes
//!   tmp/                   files being written; emptied at open
//! ```
//!
//! A chunk shared by several manifests is one file. Every file is written
//! to `tmp/`, synced (`fdatasync`), then renamed to its final name, so a
//! crash leaves at worst a file in `tmp/` (removed at the next open), never
//! a partial chunk or manifest under a final name. Manifest renames are made
//! durable at once (directory fsync); chunk renames from
//! [`ContentStore::put_chunk`] are not (a chunk lost to a crash is simply
//! missing and fetched again), while [`seal_file_into_store`] syncs the
//! directories it wrote before it stores the manifest.
//!
//! The 256 fan-out directories of `chunks/` are made at open, not on a
//! chunk's first write (a mkdir is an inode allocation on the fetch path).
//!
//! **Decision: chunks fetched from peers are written around the page cache
//! (`O_DIRECT`).** A fetched chunk is read back once, soon, by the opener;
//! putting it through the page cache first costs a kernel copy into freshly
//! allocated page-cache pages, which on this project's VMs was the largest
//! single item of a fetch (15% of the CPU profile of a 1 GiB fetch, the copy
//! running at ~1.2 GB/s). Whole 4 KiB blocks are written with `O_DIRECT` from
//! an aligned buffer (the caller's: chunk streams read each chunk straight
//! into an aligned [`ChunkBuf`]; otherwise a copy in a buffer the writing
//! thread keeps); a tail that is not whole blocks, and every write on a file system
//! that refuses `O_DIRECT` (`EINVAL`: tmpfs on older kernels, some FUSE
//! mounts; the store then stops trying and logs it once), goes through the
//! page cache as before. Chunks a node seals itself (inputs it will serve,
//! outputs it will serve to the creator) still go through the page cache, so
//! serving them reads memory. Measured with `tests/measure.rs` (1 GiB, three
//! interleaved runs each): 315–336 MB/s at 4.7–5.1 CPU s/GiB with direct
//! writes, 261–287 MB/s at 6.0–6.4 CPU s/GiB without.
//!
//! **Decision: the disk is the index.** The index (which manifests, which
//! chunks, bytes used) is rebuilt at open by listing the directories (about
//! 80 bytes of memory per chunk: ~80 KiB per GiB stored) instead of being
//! kept in a second file that could disagree with the files. A manifest is
//! *complete* when all its chunks are present ([`ContentStore::has_complete`],
//! cached in the index). Chunk files are not re-hashed at open; they are
//! checked when read (below).
//!
//! # Verification
//!
//! * [`ContentStore::put_chunk`] verifies index, length and hash against
//!   the stored manifest before anything touches the disk; a manifest is
//!   stored only if valid, and loaded only if it hashes to its file name.
//! * [`ContentStore::get_chunk`] re-hashes the file; a chunk that no
//!   longer matches is removed, so it is fetched again.
//! * **Decision: what the node serves to peers
//!   ([`ContentStore::serve_chunk_into`]) is hashed once per open**, not on
//!   every read: a chunk this store wrote (verified or hashed as it was
//!   written) or already checked since it opened is read and sent with its
//!   length checked, the fetcher's own check being the one that guards the
//!   bytes; chunks found on disk at open are hashed on their first read.
//!   Re-hashing every served chunk cost a holder ~0.2 CPU s per GiB per
//!   fetching worker (BLAKE3; half the hashing of a transfer in `perf`).
//! * **Decision: [`open_from_store`] does not hash chunks on the fast
//!   path.** The AEAD authenticates every sealed byte (the header through
//!   the AAD), so hashing again would cost ~20% of the throughput for no
//!   extra safety. When a STREAM chunk fails, the content chunks under it
//!   are re-hashed to report [`OpenFileError::CorruptChunk`] (and drop the
//!   chunk) rather than a bare authentication error.
//!
//! # Retention: budget and garbage collection
//!
//! **Decision: the store refuses, the caller evicts.** A write that would
//! pass [`ContentConfig::max_bytes`] fails with a `BudgetExceeded` error;
//! nothing is evicted behind the caller's back, because only the caller
//! knows which content is still needed (inputs of running tasks, outputs
//! not yet accepted by their creator). [`ContentStore::gc`]`(keep,
//! unused_since)` removes every manifest not in `keep` and last used before
//! `unused_since`, then every chunk no remaining manifest lists (chunks of
//! a seal in progress are held until its manifest is stored). "Used" means
//! stored, fetched into, served from or opened; the last use survives a
//! restart as the manifest file's mtime ([`ContentStore::touch`]).
//!
//! # Concurrency
//!
//! [`ContentStore`] is `Clone` (one shared index behind a mutex) and safe
//! to use from many threads and tokio tasks. Its methods are synchronous:
//! file I/O happens outside the lock, except the rename that publishes a
//! chunk (so that [`ContentStore::gc`], which holds the lock while it
//! removes files, never races a writer). From async code call them through
//! `tokio::task::spawn_blocking`, as [`fetch_content`] does; the pipelines
//! block for the whole file and run their own three threads.

pub mod buf;
mod fetch;
mod pipeline;
mod store;

pub use buf::ChunkBuf;
pub use fetch::{
    ChunkAnswers, ChunkSource, FetchError, FetchOptions, FetchProgress, FetchReport, Rejection,
    fetch_content,
};
pub use pipeline::{
    OpenFileError, OpenedFile, PipelineOptions, SealFileError, SealedFile, open_from_store,
    open_from_store_with, seal_file_into_store, seal_file_into_store_with,
};
pub use store::{
    ContentConfig, ContentStore, DEFAULT_MAX_BYTES, GcError, GcReport, GetChunkError, PutChunk,
    PutChunkError, PutManifestError, StoreOpenError, Usage,
};

#[cfg(test)]
mod test_util;
