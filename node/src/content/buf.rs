//! Chunk buffers on the data plane: 4 KiB-aligned, and recycled.
//!
//! A fetched chunk is read off the network into a [`ChunkBuf`] and written
//! to the store with `O_DIRECT` (`store::write_direct`), which needs the
//! bytes 4 KiB-aligned in memory: a buffer that starts aligned is written as
//! it is instead of copied into an aligned scratch buffer first (a copy of
//! every fetched byte, ~4% of the CPU of a 1 GiB fetch). A holder serving
//! chunks reads each file into a recycled buffer too.
//!
//! **Decision: one small process-wide pool, filled on drop.** A 1 MiB
//! allocation freed and made again goes back to the kernel and returns as
//! fresh pages, each faulted in and zeroed (~7% of the CPU of a 1 GiB fetch
//! on this project's VMs). Dropping a [`ChunkBuf`] puts its allocation into
//! a pool of at most [`POOL_MAX`] buffers (≤ 32 MiB at 1 MiB chunks: one
//! fetch keeps about 12 in use, 8 writes and the streams' reads) that
//! the next [`ChunkBuf::for_overwrite`] or [`take_vec`] reuses. The pool
//! holds allocations only: a recycled buffer's old bytes are overwritten
//! whole before anything reads them (a network read that fails drops the
//! buffer unread).

use std::sync::Mutex;

/// Alignment `O_DIRECT` needs of the buffer (the logical block size).
pub(super) const ALIGN: usize = 4096;

/// Most buffers the pool keeps.
pub const POOL_MAX: usize = 32;

/// Smallest allocation worth keeping (smaller ones are cheap to make).
const KEEP_MIN: usize = 64 * 1024;

/// Largest allocation kept (a chunk is at most 1 MiB plus the alignment
/// slack; anything bigger is not a chunk buffer).
const KEEP_MAX: usize = 4 * 1024 * 1024;

/// A list of spare allocations.
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    const fn new() -> Pool {
        Pool(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A panic while holding it cannot leave the pool inconsistent (it
        // is a plain list of allocations): take it back.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A spare allocation with room for `capacity` bytes, as it was given
    /// back (its length and bytes too), or a new empty one.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut pool = self.lock();
        match pool.iter().position(|v| v.capacity() >= capacity) {
            Some(i) => pool.swap_remove(i),
            None => {
                drop(pool);
                Vec::with_capacity(capacity)
            }
        }
    }

    fn give(&self, v: Vec<u8>) {
        if (KEEP_MIN..=KEEP_MAX).contains(&v.capacity()) {
            let mut pool = self.lock();
            if pool.len() < POOL_MAX {
                pool.push(v);
            }
        }
    }
}

static POOL: Pool = Pool::new();

/// An empty vector with room for at least `capacity` bytes, from the pool
/// when it has one big enough.
pub fn take_vec(capacity: usize) -> Vec<u8> {
    let mut v = POOL.take(capacity);
    v.clear();
    v
}

/// Bytes of one chunk in a pooled allocation; `Deref`s to them. Made
/// [`for_overwrite`](Self::for_overwrite) they start 4 KiB-aligned.
pub struct ChunkBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl ChunkBuf {
    /// A buffer of `len` bytes starting at a 4 KiB boundary, holding
    /// whatever a recycled allocation held: the caller overwrites all of it
    /// (for example with `read_exact`) before it is read.
    pub fn for_overwrite(len: usize) -> ChunkBuf {
        let mut buf = POOL.take(len + ALIGN);
        // Initialised memory throughout: a recycled buffer's bytes are kept
        // as they are (no memset of a megabyte about to be overwritten),
        // only what was never written is zeroed.
        let room = buf.capacity();
        if buf.len() < room {
            buf.resize(room, 0);
        }
        let start = buf.as_ptr().align_offset(ALIGN).min(room - len);
        ChunkBuf { buf, start, len }
    }

    /// The bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl From<Vec<u8>> for ChunkBuf {
    fn from(buf: Vec<u8>) -> ChunkBuf {
        let len = buf.len();
        ChunkBuf { buf, start: 0, len }
    }
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuf").field("len", &self.len).finish()
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        POOL.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_overwrite_is_aligned_and_sized() {
        for len in [1, ALIGN - 1, ALIGN, 3 * ALIGN + 5, 1 << 20] {
            let mut b = ChunkBuf::for_overwrite(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr().align_offset(ALIGN), 0, "len {len}");
            b.as_mut_slice().fill(7);
            assert!(b.iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn the_pool_reuses_chunk_sized_allocations_only() {
        // A pool of its own: the process-wide one is shared with the tests
        // running beside this one.
        let pool = Pool::new();
        let v = vec![5u8; 1 << 20];
        let ptr = v.as_ptr();
        pool.give(v);
        let again = pool.take(1 << 20);
        assert_eq!(again.as_ptr(), ptr, "a given-back allocation is reused");
        assert_eq!(again.len(), 1 << 20, "as it was given back");
        assert_eq!(pool.take(1 << 20).len(), 0, "the pool is empty: a new one");
        pool.give(Vec::with_capacity(100));
        pool.give(Vec::with_capacity(KEEP_MAX + 1));
        assert!(pool.lock().is_empty(), "small and huge ones are freed");
        for _ in 0..POOL_MAX + 3 {
            pool.give(Vec::with_capacity(KEEP_MIN));
        }
        assert_eq!(pool.lock().len(), POOL_MAX);
        assert!(pool.take(KEEP_MIN + 1).capacity() > KEEP_MIN);
    }

    #[test]
    fn from_vec_keeps_the_bytes() {
        let b = ChunkBuf::from(vec![1, 2, 3]);
        assert_eq!(&*b, &[1, 2, 3]);
        let mut a = ChunkBuf::for_overwrite(5);
        a.as_mut_slice().copy_from_slice(&[9, 8, 7, 6, 5]);
        assert_eq!(&*a, &[9, 8, 7, 6, 5]);
    }
}
