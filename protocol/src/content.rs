//! BLAKE3 content addressing: fixed-size chunks and a manifest.
//!
//! # What this module owns
//!
//! * [`ContentId`]: a 32-byte BLAKE3 digest, written as 64 lowercase hex
//!   digits.
//! * The chunk hash ([`chunk_id`]): BLAKE3 in `derive_key` mode with context
//!   [`CHUNK_CONTEXT`], so a chunk hash can never be confused with a manifest
//!   id (which uses [`MANIFEST_CONTEXT`]) or with any other BLAKE3 use.
//! * [`Manifest`]: a file cut into chunks of `chunk_size` bytes (the last one
//!   shorter), listing each chunk's hash. Its id ([`Manifest::id`]) hashes a
//!   fixed, hand-written byte layout, so it never changes with a serde or
//!   codec change. Every chunk can be verified alone as it arrives
//!   ([`Manifest::verify_chunk`]), in any order, from any peer.
//! * [`ManifestBuilder`] and [`Manifest::from_reader`]: building a manifest
//!   in one pass and constant memory (at most one chunk buffered), hashing
//!   whole chunks straight from the caller's slice.
//!
//! Content is addressed as stored: for job data that is the *sealed* stream
//! (see [`crate::seal`]), so storage and relay peers can verify chunks
//! without the job key.
//!
//! # What this module must not do
//!
//! * No I/O beyond the `Read` it is handed, no clock, no randomness.
//! * No dependency on other modules of this crate: ids must stay stable when
//!   the wire format or codec evolves.
//! * Never trust a received manifest before [`Manifest::validate`] (which
//!   [`Manifest::chunk_len`] and [`Manifest::verify_chunk`] run themselves).

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Default chunk size: 1 MiB.
pub const CHUNK_SIZE: u32 = 1 << 20;
/// Smallest allowed chunk size: 4 KiB.
pub const MIN_CHUNK_SIZE: u32 = 1 << 12;
/// Largest allowed chunk size: 64 MiB.
pub const MAX_CHUNK_SIZE: u32 = 1 << 26;
/// Largest number of chunks in one manifest (so at most 64 TiB of content at
/// the largest chunk size, and a manifest of at most 32 MiB of hashes).
pub const MAX_CHUNKS: u32 = 1 << 20;
/// BLAKE3 `derive_key` context for chunk hashes.
pub const CHUNK_CONTEXT: &str = "rendertrust 2026-11 content chunk v1";
/// BLAKE3 `derive_key` context for manifest ids.
pub const MANIFEST_CONTEXT: &str = "rendertrust 2026-11 content manifest v1";
/// Version byte at the start of the manifest id layout.
const MANIFEST_ID_VERSION: u8 = 1;

/// Everything that can go wrong with content ids, manifests and chunks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The chunk size is not a power of two in
    /// [`MIN_CHUNK_SIZE`]`..=`[`MAX_CHUNK_SIZE`].
    #[error("chunk size must be a power of two from 4096 to 67108864 bytes, found {found}")]
    ChunkSize {
        /// The rejected chunk size.
        found: u32,
    },
    /// More than [`MAX_CHUNKS`] chunks.
    #[error("manifest may have at most {MAX_CHUNKS} chunks, found {found}")]
    TooManyChunks {
        /// The number of chunks found (or needed).
        found: u64,
    },
    /// The number of chunk hashes does not match `total_size / chunk_size`
    /// rounded up.
    #[error(
        "manifest of {total_size} bytes in {chunk_size}-byte chunks must list {expected} chunks, \
         found {found}"
    )]
    ChunkCount {
        /// The manifest's total size.
        total_size: u64,
        /// The manifest's chunk size.
        chunk_size: u32,
        /// The number of chunks that size needs.
        expected: u64,
        /// The number of chunk hashes listed.
        found: u64,
    },
    /// A chunk index past the last chunk.
    #[error("chunk index must be below {count}, found {index}")]
    IndexOutOfRange {
        /// The requested index.
        index: u32,
        /// The number of chunks in the manifest.
        count: u64,
    },
    /// A chunk of the wrong length.
    #[error("chunk {index} must be {expected} bytes long, found {found}")]
    ChunkLength {
        /// The chunk's index.
        index: u32,
        /// The length the manifest implies.
        expected: u32,
        /// The length received.
        found: u64,
    },
    /// A chunk whose hash is not the one in the manifest.
    #[error("chunk {index} must hash to {expected}, found {found}")]
    ChunkHash {
        /// The chunk's index.
        index: u32,
        /// The hash listed in the manifest.
        expected: ContentId,
        /// The hash of the bytes received.
        found: ContentId,
    },
    /// A content id string of the wrong length.
    #[error("content id must be 64 lowercase hex digits, found {found} characters")]
    IdLength {
        /// The length of the string, in characters.
        found: usize,
    },
    /// A content id string with a character that is not a lowercase hex digit.
    #[error("content id must be lowercase hex digits, found {found:?} at position {position}")]
    IdDigit {
        /// Position (in bytes) of the bad character.
        position: usize,
        /// The bad character.
        found: char,
    },
}

/// A 32-byte BLAKE3 content address: a chunk hash or a manifest id.
///
/// Displayed and parsed as 64 lowercase hex digits; `Debug` shows a short
/// prefix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 64];
        // Cannot fail: the output is exactly twice the input length.
        if hex::encode_to_slice(self.0, &mut out).is_err() {
            return Err(fmt::Error);
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({}..)", hex::encode(&self.0[..4]))
    }
}

impl FromStr for ContentId {
    type Err = ContentError;

    /// Parses exactly 64 lowercase hex digits (the [`Display`](fmt::Display)
    /// form; uppercase is rejected so that every id has one spelling).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((position, found)) = s
            .char_indices()
            .find(|&(_, c)| !matches!(c, '0'..='9' | 'a'..='f'))
        {
            return Err(ContentError::IdDigit { position, found });
        }
        // All ASCII from here on: bytes are characters.
        let mut bytes = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut bytes).is_err() {
            return Err(ContentError::IdLength { found: s.len() });
        }
        Ok(Self(bytes))
    }
}

fn chunk_hasher() -> blake3::Hasher {
    blake3::Hasher::new_derive_key(CHUNK_CONTEXT)
}

/// The content id of one chunk: BLAKE3 `derive_key`([`CHUNK_CONTEXT`],
/// `data`).
pub fn chunk_id(data: &[u8]) -> ContentId {
    ContentId(*chunk_hasher().update(data).finalize().as_bytes())
}

fn check_chunk_size(chunk_size: u32) -> Result<(), ContentError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(ContentError::ChunkSize { found: chunk_size })
    }
}

/// A file as a list of fixed-size chunk hashes.
///
/// Deserialized manifests are untrusted: call [`validate`](Self::validate)
/// (the chunk accessors do so themselves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Size of every chunk but the last, in bytes.
    pub chunk_size: u32,
    /// Size of the whole content, in bytes.
    pub total_size: u64,
    /// Hash of each chunk, in order.
    pub chunks: Vec<ContentId>,
}

impl Manifest {
    /// The manifest's id: BLAKE3 `derive_key`([`MANIFEST_CONTEXT`], layout)
    /// over the fixed layout `1u8 || chunk_size u32 LE || total_size u64 LE ||
    /// chunk hashes`.
    pub fn id(&self) -> ContentId {
        let mut hasher = blake3::Hasher::new_derive_key(MANIFEST_CONTEXT);
        hasher.update(&[MANIFEST_ID_VERSION]);
        hasher.update(&self.chunk_size.to_le_bytes());
        hasher.update(&self.total_size.to_le_bytes());
        for chunk in &self.chunks {
            hasher.update(&chunk.0);
        }
        ContentId(*hasher.finalize().as_bytes())
    }

    /// Checks the chunk size (a power of two in 4 KiB..=64 MiB), the chunk
    /// count (`ceil(total_size / chunk_size)`, none for empty content) and
    /// the [`MAX_CHUNKS`] bound.
    pub fn validate(&self) -> Result<(), ContentError> {
        check_chunk_size(self.chunk_size)?;
        let found = self.chunks.len() as u64;
        if found > u64::from(MAX_CHUNKS) {
            return Err(ContentError::TooManyChunks { found });
        }
        let expected = self.total_size.div_ceil(u64::from(self.chunk_size));
        if found != expected {
            return Err(ContentError::ChunkCount {
                total_size: self.total_size,
                chunk_size: self.chunk_size,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Length of chunk `index`: `chunk_size`, except for a shorter last chunk.
    pub fn chunk_len(&self, index: u32) -> Result<u32, ContentError> {
        self.validate()?;
        let count = self.chunks.len() as u64;
        if u64::from(index) >= count {
            return Err(ContentError::IndexOutOfRange { index, count });
        }
        let start = u64::from(index) * u64::from(self.chunk_size);
        let len = (self.total_size - start).min(u64::from(self.chunk_size));
        // `len <= chunk_size`, a u32.
        Ok(u32::try_from(len).unwrap_or(self.chunk_size))
    }

    /// Checks that `bytes` is chunk `index` of this content: index in range,
    /// exact length, and hash.
    pub fn verify_chunk(&self, index: u32, bytes: &[u8]) -> Result<(), ContentError> {
        let expected_len = self.chunk_len(index)?;
        if bytes.len() as u64 != u64::from(expected_len) {
            return Err(ContentError::ChunkLength {
                index,
                expected: expected_len,
                found: bytes.len() as u64,
            });
        }
        let expected = *self
            .chunks
            .get(index as usize)
            .ok_or(ContentError::IndexOutOfRange {
                index,
                count: self.chunks.len() as u64,
            })?;
        let found = chunk_id(bytes);
        if found != expected {
            return Err(ContentError::ChunkHash {
                index,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Builds the manifest of everything `reader` yields, reading one chunk
    /// at a time into a single `chunk_size` buffer. The result is valid: a
    /// bad chunk size or more than [`MAX_CHUNKS`] chunks is an
    /// [`io::ErrorKind::InvalidInput`] error wrapping the [`ContentError`].
    pub fn from_reader<R: Read>(chunk_size: u32, mut reader: R) -> io::Result<Manifest> {
        let mut builder = ManifestBuilder::new(chunk_size).map_err(invalid_input)?;
        let mut buf = vec![0u8; chunk_size as usize];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            builder.update(&buf[..filled]);
            if filled < buf.len() {
                let manifest = builder.finish();
                manifest.validate().map_err(invalid_input)?;
                return Ok(manifest);
            }
        }
    }
}

fn invalid_input(error: ContentError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, error)
}

/// Incremental manifest construction over slices of any length.
///
/// Whole chunks are hashed straight from the input slice; only a chunk split
/// across `update` calls is copied into the (single, `chunk_size`) buffer.
#[derive(Clone)]
pub struct ManifestBuilder {
    chunk_size: u32,
    hasher: blake3::Hasher,
    pending: Vec<u8>,
    total_size: u64,
    chunks: Vec<ContentId>,
}

impl fmt::Debug for ManifestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestBuilder")
            .field("chunk_size", &self.chunk_size)
            .field("total_size", &self.total_size)
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl ManifestBuilder {
    /// Starts a manifest with chunks of `chunk_size` bytes (a power of two in
    /// 4 KiB..=64 MiB; [`CHUNK_SIZE`] is the default).
    pub fn new(chunk_size: u32) -> Result<Self, ContentError> {
        check_chunk_size(chunk_size)?;
        Ok(Self {
            chunk_size,
            hasher: chunk_hasher(),
            pending: Vec::new(),
            total_size: 0,
            chunks: Vec::new(),
        })
    }

    fn push_chunk(&mut self, chunk: &[u8]) {
        let id = ContentId(*self.hasher.update(chunk).finalize().as_bytes());
        self.hasher.reset();
        self.chunks.push(id);
    }

    /// Adds the next `data` bytes of the content.
    pub fn update(&mut self, mut data: &[u8]) {
        let chunk_size = self.chunk_size as usize;
        self.total_size = self.total_size.saturating_add(data.len() as u64);
        if !self.pending.is_empty() {
            let take = (chunk_size - self.pending.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.pending.extend_from_slice(head);
            data = rest;
            if self.pending.len() < chunk_size {
                return;
            }
            let pending = std::mem::take(&mut self.pending);
            self.push_chunk(&pending);
            self.pending = pending;
            self.pending.clear();
        }
        let mut whole = data.chunks_exact(chunk_size);
        for chunk in &mut whole {
            self.push_chunk(chunk);
        }
        let rest = whole.remainder();
        if !rest.is_empty() {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(chunk_size);
            }
            self.pending.extend_from_slice(rest);
        }
    }

    /// Bytes added so far.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Hashes the last partial chunk and returns the manifest.
    ///
    /// Content of more than [`MAX_CHUNKS`] chunks (over 4 GiB at the smallest
    /// chunk size, 1 TiB at the default) still yields its manifest, but that
    /// manifest fails [`Manifest::validate`] with
    /// [`ContentError::TooManyChunks`]; [`Manifest::from_reader`] checks this
    /// itself.
    pub fn finish(mut self) -> Manifest {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.push_chunk(&pending);
        }
        Manifest {
            chunk_size: self.chunk_size,
            total_size: self.total_size,
            chunks: self.chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CS: u32 = 4096;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + i / 4099) as u8).collect()
    }

    fn manifest(content: &[u8], chunk_size: u32) -> Manifest {
        let mut b = ManifestBuilder::new(chunk_size).unwrap();
        b.update(content);
        b.finish()
    }

    #[test]
    fn chunk_hash_is_derive_key_mode() {
        let bytes = b"hello chunk";
        assert_eq!(chunk_id(bytes).0, blake3::derive_key(CHUNK_CONTEXT, bytes));
        assert_ne!(chunk_id(bytes).0, *blake3::hash(bytes).as_bytes());
    }

    #[test]
    fn manifest_id_is_the_fixed_layout() {
        let m = manifest(&data(2 * CS as usize + 1), CS);
        let mut layout = vec![1u8];
        layout.extend_from_slice(&CS.to_le_bytes());
        layout.extend_from_slice(&(2 * u64::from(CS) + 1).to_le_bytes());
        for c in &m.chunks {
            layout.extend_from_slice(&c.0);
        }
        assert_eq!(m.id().0, blake3::derive_key(MANIFEST_CONTEXT, &layout));
        // Domain separation: the same bytes hashed as a chunk give another id.
        assert_ne!(m.id(), chunk_id(&layout));
    }

    #[test]
    fn manifest_id_depends_on_every_field() {
        let m = manifest(&data(3 * CS as usize), CS);
        let id = m.id();
        let mut other = m.clone();
        other.total_size -= 1;
        assert_ne!(other.id(), id);
        let mut other = m.clone();
        other.chunk_size = 8192;
        assert_ne!(other.id(), id);
        let mut other = m.clone();
        other.chunks.swap(0, 1);
        assert_ne!(other.id(), id);
        let mut other = m.clone();
        other.chunks.pop();
        assert_ne!(other.id(), id);
    }

    #[test]
    fn empty_content_has_no_chunks() {
        let m = manifest(&[], CS);
        assert_eq!(m.total_size, 0);
        assert!(m.chunks.is_empty());
        m.validate().unwrap();
        assert!(matches!(
            m.chunk_len(0),
            Err(ContentError::IndexOutOfRange { index: 0, count: 0 })
        ));
    }

    #[test]
    fn chunk_lengths() {
        let m = manifest(&data(2 * CS as usize + 10), CS);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_len(0).unwrap(), CS);
        assert_eq!(m.chunk_len(1).unwrap(), CS);
        assert_eq!(m.chunk_len(2).unwrap(), 10);
        let exact = manifest(&data(2 * CS as usize), CS);
        assert_eq!(exact.chunk_count(), 2);
        assert_eq!(exact.chunk_len(1).unwrap(), CS);
    }

    #[test]
    fn every_chunk_verifies_alone() {
        let content = data(3 * CS as usize + 77);
        let m = manifest(&content, CS);
        for (i, chunk) in content.chunks(CS as usize).enumerate().rev() {
            m.verify_chunk(i as u32, chunk).unwrap();
        }
    }

    #[test]
    fn verify_rejects_wrong_hash() {
        let content = data(2 * CS as usize + 5);
        let m = manifest(&content, CS);
        let mut chunk = content[CS as usize..2 * CS as usize].to_vec();
        chunk[100] ^= 1;
        assert!(matches!(
            m.verify_chunk(1, &chunk),
            Err(ContentError::ChunkHash { index: 1, expected, found })
                if expected == m.chunks[1] && found == chunk_id(&chunk)
        ));
        // The right bytes at the wrong index (same length) are rejected too.
        assert!(matches!(
            m.verify_chunk(0, &content[CS as usize..2 * CS as usize]),
            Err(ContentError::ChunkHash { index: 0, .. })
        ));
    }

    #[test]
    fn verify_rejects_wrong_length() {
        let content = data(2 * CS as usize + 5);
        let m = manifest(&content, CS);
        assert!(matches!(
            m.verify_chunk(0, &content[..CS as usize - 1]),
            Err(ContentError::ChunkLength { index: 0, expected: CS, found }) if found == u64::from(CS) - 1
        ));
        assert!(matches!(
            m.verify_chunk(2, &content[2 * CS as usize..]),
            Ok(())
        ));
        let mut long = content[2 * CS as usize..].to_vec();
        long.push(0);
        assert!(matches!(
            m.verify_chunk(2, &long),
            Err(ContentError::ChunkLength {
                index: 2,
                expected: 5,
                found: 6
            })
        ));
        // A full chunk offered as the short last one.
        assert!(matches!(
            m.verify_chunk(2, &content[..CS as usize]),
            Err(ContentError::ChunkLength {
                index: 2,
                expected: 5,
                ..
            })
        ));
    }

    #[test]
    fn verify_rejects_index_out_of_range() {
        let content = data(CS as usize + 1);
        let m = manifest(&content, CS);
        for index in [2, 3, u32::MAX] {
            assert!(matches!(
                m.verify_chunk(index, &content[..1]),
                Err(ContentError::IndexOutOfRange { count: 2, .. })
            ));
            assert!(matches!(
                m.chunk_len(index),
                Err(ContentError::IndexOutOfRange { count: 2, .. })
            ));
        }
    }

    #[test]
    fn validate_rejects_wrong_chunk_count() {
        let m = manifest(&data(2 * CS as usize + 1), CS);
        m.validate().unwrap();
        let mut fewer = m.clone();
        fewer.chunks.pop();
        assert!(matches!(
            fewer.validate(),
            Err(ContentError::ChunkCount {
                expected: 3,
                found: 2,
                ..
            })
        ));
        let mut more = m.clone();
        more.chunks.push(m.chunks[0]);
        assert!(matches!(
            more.validate(),
            Err(ContentError::ChunkCount {
                expected: 3,
                found: 4,
                ..
            })
        ));
        let mut size = m.clone();
        size.total_size = 2 * u64::from(CS);
        assert!(matches!(
            size.validate(),
            Err(ContentError::ChunkCount {
                expected: 2,
                found: 3,
                ..
            })
        ));
        let empty_with_chunk = Manifest {
            chunk_size: CS,
            total_size: 0,
            chunks: vec![chunk_id(&[])],
        };
        assert!(matches!(
            empty_with_chunk.validate(),
            Err(ContentError::ChunkCount {
                expected: 0,
                found: 1,
                ..
            })
        ));
        // The accessors refuse an inconsistent manifest instead of computing
        // nonsense lengths.
        assert!(matches!(
            fewer.chunk_len(0),
            Err(ContentError::ChunkCount { .. })
        ));
        assert!(matches!(
            more.verify_chunk(3, &data(1)),
            Err(ContentError::ChunkCount { .. })
        ));
    }

    #[test]
    fn validate_rejects_bad_chunk_size() {
        for bad in [0, 1, 2048, 4095, 4097, 12288, 1 << 27, u32::MAX] {
            let m = Manifest {
                chunk_size: bad,
                total_size: 0,
                chunks: Vec::new(),
            };
            assert!(matches!(
                m.validate(),
                Err(ContentError::ChunkSize { found }) if found == bad
            ));
            assert!(matches!(
                ManifestBuilder::new(bad),
                Err(ContentError::ChunkSize { .. })
            ));
            assert_eq!(
                Manifest::from_reader(bad, &[][..]).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        for good in [MIN_CHUNK_SIZE, CHUNK_SIZE, MAX_CHUNK_SIZE] {
            ManifestBuilder::new(good).unwrap();
        }
    }

    #[test]
    fn validate_rejects_too_many_chunks() {
        let n = MAX_CHUNKS as usize + 1;
        let m = Manifest {
            chunk_size: MIN_CHUNK_SIZE,
            total_size: n as u64 * u64::from(MIN_CHUNK_SIZE),
            chunks: vec![ContentId([0; 32]); n],
        };
        assert!(matches!(
            m.validate(),
            Err(ContentError::TooManyChunks { found }) if found == n as u64
        ));
        let mut at_limit = m.clone();
        at_limit.chunks.pop();
        at_limit.total_size -= u64::from(MIN_CHUNK_SIZE);
        at_limit.validate().unwrap();
    }

    #[test]
    fn builder_output_over_the_chunk_limit_is_invalid() {
        let mut b = ManifestBuilder::new(MIN_CHUNK_SIZE).unwrap();
        // Simulate having hashed MAX_CHUNKS chunks without hashing 4 GiB.
        b.chunks = vec![ContentId([0; 32]); MAX_CHUNKS as usize];
        b.total_size = u64::from(MAX_CHUNKS) * u64::from(MIN_CHUNK_SIZE);
        let mut at_limit = b.clone();
        at_limit.update(&[]);
        at_limit.finish().validate().unwrap();
        b.update(&[1]);
        assert!(matches!(
            b.finish().validate(),
            Err(ContentError::TooManyChunks { found }) if found == u64::from(MAX_CHUNKS) + 1
        ));
    }

    #[test]
    fn builder_split_updates_match_one_update() {
        let content = data(5 * CS as usize + 123);
        let whole = manifest(&content, CS);
        for step in [1usize, 7, 4095, 4096, 4097, 10_000] {
            let mut b = ManifestBuilder::new(CS).unwrap();
            for piece in content.chunks(step) {
                b.update(piece);
            }
            b.update(&[]);
            assert_eq!(b.total_size(), content.len() as u64);
            assert_eq!(b.finish(), whole, "step {step}");
        }
        assert_eq!(
            Manifest::from_reader(CS, content.as_slice()).unwrap(),
            whole
        );
    }

    #[test]
    fn from_reader_handles_short_reads() {
        struct Trickle<'a>(&'a [u8], usize);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 += 1;
                if self.1.is_multiple_of(4) {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let content = data(3 * CS as usize + 9);
        assert_eq!(
            Manifest::from_reader(CS, Trickle(&content, 0)).unwrap(),
            manifest(&content, CS)
        );
    }

    #[test]
    fn chunk_hashes_are_the_chunk_ids() {
        let content = data(2 * CS as usize + 3);
        let m = manifest(&content, CS);
        let expected: Vec<_> = content.chunks(CS as usize).map(chunk_id).collect();
        assert_eq!(m.chunks, expected);
    }

    #[test]
    fn content_id_text_forms() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 9) as u8;
        }
        let id = ContentId(bytes);
        let text = id.to_string();
        assert_eq!(text, hex::encode(bytes));
        assert_eq!(text.parse::<ContentId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), "ContentId(0009121b..)");
        assert_eq!(id.as_bytes(), &bytes);
    }

    #[test]
    fn content_id_parse_rejects_bad_text() {
        let good = ContentId([0xab; 32]).to_string();
        assert!(matches!(
            good[..63].parse::<ContentId>(),
            Err(ContentError::IdLength { found: 63 })
        ));
        assert!(matches!(
            format!("{good}0").parse::<ContentId>(),
            Err(ContentError::IdLength { found: 65 })
        ));
        assert!(matches!(
            good.to_uppercase().parse::<ContentId>(),
            Err(ContentError::IdDigit {
                position: 0,
                found: 'A'
            })
        ));
        let mut bad = good.clone();
        bad.replace_range(10..11, "g");
        assert!(matches!(
            bad.parse::<ContentId>(),
            Err(ContentError::IdDigit {
                position: 10,
                found: 'g'
            })
        ));
        // 64 bytes but not 64 characters.
        let multibyte = format!("é{}", &good[2..]);
        assert!(matches!(
            multibyte.parse::<ContentId>(),
            Err(ContentError::IdDigit {
                position: 0,
                found: 'é'
            })
        ));
    }

    #[test]
    fn serde_round_trips() {
        let m = manifest(&data(CS as usize + 1), CS);
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&m, config).unwrap();
        let (back, _): (Manifest, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.id(), m.id());
    }

    #[test]
    fn error_messages_say_expected_and_found() {
        let e = ContentError::ChunkLength {
            index: 2,
            expected: 5,
            found: 6,
        };
        assert_eq!(e.to_string(), "chunk 2 must be 5 bytes long, found 6");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_split_anywhere_same_manifest(
            content in proptest::collection::vec(any::<u8>(), 0..6 * CS as usize),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let whole = manifest(&content, CS);
            prop_assert!(whole.validate().is_ok());
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(content.len() + 1)).collect();
            cuts.sort_unstable();
            let mut b = ManifestBuilder::new(CS).unwrap();
            let mut at = 0;
            for cut in cuts {
                b.update(&content[at..cut]);
                at = cut;
            }
            b.update(&content[at..]);
            prop_assert_eq!(&b.finish(), &whole);
            for (i, chunk) in content.chunks(CS as usize).enumerate() {
                prop_assert!(whole.verify_chunk(i as u32, chunk).is_ok());
            }
        }

        #[test]
        fn prop_any_flip_is_caught(
            content in proptest::collection::vec(any::<u8>(), 1..3 * CS as usize),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let m = manifest(&content, CS);
            let at = at.index(content.len());
            let mut tampered = content.clone();
            tampered[at] ^= 1 << bit;
            let index = at / CS as usize;
            let chunk = tampered.chunks(CS as usize).nth(index).unwrap();
            let is_hash_error = matches!(
                m.verify_chunk(index as u32, chunk),
                Err(ContentError::ChunkHash { .. })
            );
            prop_assert!(is_hash_error);
            prop_assert_ne!(manifest(&tampered, CS).id(), m.id());
        }

        #[test]
        fn prop_content_id_text_round_trip(bytes in any::<[u8; 32]>()) {
            let id = ContentId(bytes);
            prop_assert_eq!(id.to_string().parse::<ContentId>().unwrap(), id);
        }
    }
}
