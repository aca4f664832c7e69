//! The chunked STREAM construction: [`Sealer`] / [`Opener`] state machines and
//! the `std::io` conveniences built on them.

use std::fmt;
use std::io::{self, Read, Write};

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use super::{JobKey, SealError};

/// Length of the sealed stream header.
pub const HEADER_LEN: usize = 32;
/// Length of the Poly1305 tag that ends every sealed chunk.
pub const TAG_LEN: usize = 16;
/// Default plaintext chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 16;
/// Smallest allowed plaintext chunk size: 4 KiB.
pub const MIN_CHUNK_SIZE: usize = 1 << 12;
/// Largest allowed plaintext chunk size: 16 MiB.
pub const MAX_CHUNK_SIZE: usize = 1 << 24;

const MAGIC: [u8; 6] = *b"RTSEAL";
const VERSION: u8 = 1;
const MIN_LOG2: u8 = 12;
const MAX_LOG2: u8 = 24;
const NONCE_PREFIX_LEN: usize = 19;
/// Highest chunk index: the counter is a big-endian u32 in the nonce.
const MAX_INDEX: u64 = u32::MAX as u64;
/// How far (in chunks, either side) a chunk that fails authentication is
/// tried at other positions to report [`SealError::OutOfOrder`]. Bounded so
/// that a bad chunk costs at most `4 * WINDOW` extra trial decryptions.
const DIAGNOSIS_WINDOW: u64 = 8;

fn chunk_log2(chunk_size: usize) -> Result<u8, SealError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        // trailing_zeros of a power of two in 2^12..=2^24 is in 12..=24.
        Ok(chunk_size.trailing_zeros() as u8)
    } else {
        Err(SealError::ChunkSize { found: chunk_size })
    }
}

/// Length of the sealed stream for `plaintext_len` bytes sealed with
/// `chunk_size`: header, then every chunk with its tag.
pub fn sealed_len(plaintext_len: u64, chunk_size: usize) -> Result<u64, SealError> {
    chunk_log2(chunk_size)?;
    let chunk = chunk_size as u64;
    let chunks = plaintext_len.div_ceil(chunk).max(1);
    if chunks - 1 > MAX_INDEX {
        return Err(SealError::CounterOverflow);
    }
    Ok(HEADER_LEN as u64 + plaintext_len + chunks * TAG_LEN as u64)
}

/// The per-stream cipher state shared by [`Sealer`] and [`Opener`].
struct ChunkCipher {
    aead: XChaCha20Poly1305,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// header || context, authenticated with every chunk.
    aad: Vec<u8>,
    chunk_size: usize,
}

impl ChunkCipher {
    fn new(key: &JobKey, header: &[u8; HEADER_LEN], context: &[u8], chunk_size: usize) -> Self {
        let mut key_bytes = Key::from(*key.as_bytes());
        let aead = XChaCha20Poly1305::new(&key_bytes);
        key_bytes.as_mut_slice().zeroize();
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&header[8..8 + NONCE_PREFIX_LEN]);
        let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
        aad.extend_from_slice(header);
        aad.extend_from_slice(context);
        Self {
            aead,
            nonce_prefix,
            aad,
            chunk_size,
        }
    }

    fn nonce(&self, index: u64, last: bool) -> Result<XNonce, SealError> {
        let counter = u32::try_from(index).map_err(|_| SealError::CounterOverflow)?;
        let mut nonce = [0u8; 24];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&counter.to_be_bytes());
        nonce[23] = u8::from(last);
        Ok(XNonce::from(nonce))
    }

    /// Encrypts `buf` in place and appends the tag.
    fn seal(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let nonce = self.nonce(index, last)?;
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce, &self.aad, buf.as_mut_slice().into())
            .map_err(|_| SealError::Encrypt { index })?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Checks the tag at the end of `sealed` for position `index` and flag
    /// `last`; on success decrypts the body in place (the tag bytes are left
    /// as they are) and returns true. On failure `sealed` is unchanged.
    fn try_open(&self, index: u64, last: bool, sealed: &mut [u8]) -> bool {
        let Some(body_len) = sealed.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let Ok(nonce) = self.nonce(index, last) else {
            return false;
        };
        let (body, tag_bytes) = sealed.split_at_mut(body_len);
        let mut tag = Tag::default();
        tag.copy_from_slice(tag_bytes);
        self.aead
            .decrypt_inout_detached(&nonce, &self.aad, body.into(), &tag)
            .is_ok()
    }

    /// Names the failure of the chunk at `index` that authenticated neither
    /// where it is nor with the other final flag: out of order (found nearby),
    /// first chunk (key or context), or a later chunk.
    fn diagnose(&self, index: u64, sealed: &mut [u8]) -> SealError {
        let full = sealed.len() == self.chunk_size + TAG_LEN;
        let low = index.saturating_sub(DIAGNOSIS_WINDOW);
        let high = index.saturating_add(DIAGNOSIS_WINDOW).min(MAX_INDEX);
        for other in (low..=high).filter(|&other| other != index) {
            if (full && self.try_open(other, false, sealed)) || self.try_open(other, true, sealed) {
                return SealError::OutOfOrder {
                    index,
                    sealed_at: other,
                };
            }
        }
        if index == 0 {
            SealError::KeyOrContextMismatch
        } else {
            SealError::ChunkAuthentication { index }
        }
    }
}

/// Sans-IO sealing state machine for one stream.
///
/// Feed it every chunk of exactly `chunk_size` plaintext bytes with
/// [`seal_chunk`](Self::seal_chunk), then the last `1..=chunk_size` bytes with
/// [`seal_final`](Self::seal_final) (zero bytes only if the whole plaintext is
/// empty). The last full chunk of a plaintext whose length is a multiple of
/// `chunk_size` must go to `seal_final`, so a caller reading a source of
/// unknown length has to look one byte ahead, as [`seal_stream`] does.
pub struct Sealer {
    cipher: ChunkCipher,
    next: u64,
}

impl Sealer {
    /// Starts a stream under `key` bound to `context`, with a fresh random
    /// nonce prefix. Returns the sealer and the 32-byte header to write before
    /// the first chunk.
    pub fn new<G: CryptoRng + ?Sized>(
        key: &JobKey,
        context: &[u8],
        chunk_size: usize,
        rng: &mut G,
    ) -> Result<(Self, [u8; HEADER_LEN]), SealError> {
        let log2 = chunk_log2(chunk_size)?;
        let mut header = [0u8; HEADER_LEN];
        header[..6].copy_from_slice(&MAGIC);
        header[6] = VERSION;
        header[7] = log2;
        rng.fill_bytes(&mut header[8..8 + NONCE_PREFIX_LEN]);
        let cipher = ChunkCipher::new(key, &header, context, chunk_size);
        Ok((Self { cipher, next: 0 }, header))
    }

    /// The plaintext chunk size of this stream.
    pub fn chunk_size(&self) -> usize {
        self.cipher.chunk_size
    }

    /// Seals one non-final chunk in place: `buf` must hold exactly
    /// `chunk_size` plaintext bytes and becomes ciphertext followed by the
    /// 16-byte tag. Give `buf` a capacity of `chunk_size + 16` to avoid a
    /// reallocation.
    pub fn seal_chunk(&mut self, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let index = self.next;
        if buf.len() != self.cipher.chunk_size {
            return Err(SealError::ChunkLength {
                index,
                expected: self.cipher.chunk_size,
                found: buf.len(),
            });
        }
        self.cipher.seal(index, false, buf)?;
        self.next = index + 1;
        Ok(())
    }

    /// Seals the final chunk in place and ends the stream: `buf` holds
    /// `1..=chunk_size` plaintext bytes (or none, if no chunk was sealed
    /// before) and becomes ciphertext followed by the tag.
    pub fn seal_final(self, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let index = self.next;
        if buf.len() > self.cipher.chunk_size {
            return Err(SealError::FinalChunkLength {
                index,
                max: self.cipher.chunk_size,
                found: buf.len(),
            });
        }
        if buf.is_empty() && index > 0 {
            return Err(SealError::EmptyFinalChunk { index });
        }
        self.cipher.seal(index, true, buf)
    }

    #[cfg(test)]
    fn skip_to(&mut self, index: u64) {
        self.next = index;
    }
}

/// Sans-IO opening state machine for one stream.
///
/// Give it the header, then each sealed chunk of exactly `chunk_size + 16`
/// bytes with [`open_chunk`](Self::open_chunk) as long as more data follows
/// it, and the last `16..=chunk_size + 16` bytes of the stream with
/// [`open_final`](Self::open_final). Only `open_final` returning `Ok` proves
/// the plaintext complete: everything released before is authentic but may be
/// a prefix.
pub struct Opener {
    cipher: ChunkCipher,
    next: u64,
}

impl Opener {
    /// Parses and checks `header` (magic, version, chunk size, reserved bytes)
    /// and prepares to open the stream's chunks under `key` and `context`.
    pub fn new(key: &JobKey, context: &[u8], header: &[u8]) -> Result<Self, SealError> {
        let header: &[u8; HEADER_LEN] = header.try_into().map_err(|_| SealError::HeaderLength {
            found: header.len(),
        })?;
        let mut magic = [0u8; 6];
        magic.copy_from_slice(&header[..6]);
        if magic != MAGIC {
            return Err(SealError::BadMagic { found: magic });
        }
        if header[6] != VERSION {
            return Err(SealError::UnsupportedVersion { found: header[6] });
        }
        let log2 = header[7];
        if !(MIN_LOG2..=MAX_LOG2).contains(&log2) {
            return Err(SealError::HeaderChunkSize { found: log2 });
        }
        let mut reserved = [0u8; 5];
        reserved.copy_from_slice(&header[8 + NONCE_PREFIX_LEN..]);
        if reserved != [0u8; 5] {
            return Err(SealError::ReservedNonZero { found: reserved });
        }
        let chunk_size = 1usize << log2;
        Ok(Self {
            cipher: ChunkCipher::new(key, header, context, chunk_size),
            next: 0,
        })
    }

    /// The plaintext chunk size announced by the header.
    pub fn chunk_size(&self) -> usize {
        self.cipher.chunk_size
    }

    /// Sealed bytes consumed so far, header included.
    fn offset(&self) -> u64 {
        HEADER_LEN as u64 + self.next * (self.cipher.chunk_size + TAG_LEN) as u64
    }

    /// Opens one non-final chunk in place: `buf` must hold exactly
    /// `chunk_size + 16` sealed bytes and becomes the `chunk_size` plaintext
    /// bytes. Call it only when more data follows this chunk. On error `buf` is
    /// wiped.
    pub fn open_chunk(&mut self, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let index = self.next;
        let expected = self.cipher.chunk_size + TAG_LEN;
        if buf.len() != expected {
            return Err(SealError::ChunkLength {
                index,
                expected,
                found: buf.len(),
            });
        }
        if index > MAX_INDEX {
            return Err(SealError::CounterOverflow);
        }
        if self.cipher.try_open(index, false, buf) {
            buf.truncate(self.cipher.chunk_size);
            self.next = index + 1;
            return Ok(());
        }
        let error = if self.cipher.try_open(index, true, buf) {
            SealError::TrailingData { index }
        } else {
            self.cipher.diagnose(index, buf)
        };
        buf.zeroize();
        Err(error)
    }

    /// Opens the final chunk in place and ends the stream: `buf` holds the
    /// last `16..=chunk_size + 16` bytes of the stream and becomes their
    /// plaintext. On error `buf` is wiped.
    pub fn open_final(self, buf: &mut Vec<u8>) -> Result<(), SealError> {
        let index = self.next;
        let full = self.cipher.chunk_size + TAG_LEN;
        let len = buf.len();
        if len > full {
            return Err(SealError::FinalChunkLength {
                index,
                max: full,
                found: len,
            });
        }
        let truncated = SealError::Truncated {
            offset: self.offset() + len as u64,
        };
        // A final chunk has a tag and, unless it is the only chunk, at least
        // one plaintext byte: anything shorter is what is left of a cut chunk.
        if len < TAG_LEN || (len == TAG_LEN && index > 0) {
            buf.zeroize();
            return Err(truncated);
        }
        if index > MAX_INDEX {
            return Err(SealError::CounterOverflow);
        }
        if self.cipher.try_open(index, true, buf) {
            buf.truncate(len - TAG_LEN);
            return Ok(());
        }
        // A full chunk sealed as non-final, with nothing after it: the stream
        // was cut at a chunk boundary.
        let error = if len == full && self.cipher.try_open(index, false, buf) {
            truncated
        } else {
            self.cipher.diagnose(index, buf)
        };
        buf.zeroize();
        Err(error)
    }

    #[cfg(test)]
    fn skip_to(&mut self, index: u64) {
        self.next = index;
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("chunk_size", &self.cipher.chunk_size)
            .field("next_chunk", &self.next)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("chunk_size", &self.cipher.chunk_size)
            .field("next_chunk", &self.next)
            .finish_non_exhaustive()
    }
}

/// Reads until `buf` is full or the reader is exhausted; returns the number
/// of bytes read.
fn read_full<Rd: Read + ?Sized>(reader: &mut Rd, buf: &mut [u8]) -> io::Result<usize> {
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

/// Seals everything `reader` yields into `writer` with the default 64 KiB
/// chunks. Returns the number of plaintext bytes sealed.
pub fn seal_stream<G, Rd, W>(
    key: &JobKey,
    context: &[u8],
    rng: &mut G,
    reader: Rd,
    writer: W,
) -> Result<u64, SealError>
where
    G: CryptoRng + ?Sized,
    Rd: Read,
    W: Write,
{
    seal_stream_with_chunk_size(key, context, DEFAULT_CHUNK_SIZE, rng, reader, writer)
}

/// [`seal_stream`] with an explicit chunk size. Uses one chunk buffer (plus
/// one byte of look-ahead to recognise the final chunk).
pub fn seal_stream_with_chunk_size<G, Rd, W>(
    key: &JobKey,
    context: &[u8],
    chunk_size: usize,
    rng: &mut G,
    mut reader: Rd,
    mut writer: W,
) -> Result<u64, SealError>
where
    G: CryptoRng + ?Sized,
    Rd: Read,
    W: Write,
{
    let (mut sealer, header) = Sealer::new(key, context, chunk_size, rng)?;
    writer.write_all(&header)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(chunk_size + TAG_LEN));
    buf.resize(chunk_size, 0);
    let mut start = 0;
    let mut total = 0u64;
    loop {
        let filled = start + read_full(&mut reader, &mut buf[start..chunk_size])?;
        total += filled as u64;
        let mut peek = [0u8; 1];
        let more = filled == chunk_size && read_full(&mut reader, &mut peek)? == 1;
        if !more {
            buf.truncate(filled);
            sealer.seal_final(&mut buf)?;
            writer.write_all(&buf)?;
            writer.flush()?;
            return Ok(total);
        }
        sealer.seal_chunk(&mut buf)?;
        writer.write_all(&buf)?;
        buf.truncate(chunk_size);
        buf[0] = peek[0];
        start = 1;
    }
}

/// Opens a sealed stream from `reader`, writing the plaintext to `writer`.
/// Returns the number of plaintext bytes. Uses one sealed-chunk buffer and
/// one byte of look-ahead to recognise the final chunk.
///
/// Each chunk is authenticated before its plaintext is written, but only an
/// `Ok` return proves the plaintext complete: on error, discard what was
/// written.
pub fn open_stream<Rd, W>(
    key: &JobKey,
    context: &[u8],
    mut reader: Rd,
    mut writer: W,
) -> Result<u64, SealError>
where
    Rd: Read,
    W: Write,
{
    let mut header = [0u8; HEADER_LEN];
    let header_len = read_full(&mut reader, &mut header)?;
    if header_len < HEADER_LEN {
        return Err(SealError::Truncated {
            offset: header_len as u64,
        });
    }
    let mut opener = Opener::new(key, context, &header)?;
    let sealed_chunk = opener.chunk_size() + TAG_LEN;
    let mut buf = Zeroizing::new(vec![0u8; sealed_chunk]);
    let mut start = 0;
    let mut total = 0u64;
    loop {
        buf.resize(sealed_chunk, 0);
        let filled = start + read_full(&mut reader, &mut buf[start..])?;
        let mut peek = [0u8; 1];
        let more = filled == sealed_chunk && read_full(&mut reader, &mut peek)? == 1;
        if !more {
            buf.truncate(filled);
            opener.open_final(&mut buf)?;
            writer.write_all(&buf)?;
            writer.flush()?;
            return Ok(total + buf.len() as u64);
        }
        opener.open_chunk(&mut buf)?;
        writer.write_all(&buf)?;
        total += buf.len() as u64;
        buf[0] = peek[0];
        start = 1;
    }
}

/// Seals a small in-memory plaintext with the default chunk size.
pub fn seal_to_vec<G: CryptoRng + ?Sized>(
    key: &JobKey,
    context: &[u8],
    plaintext: &[u8],
    rng: &mut G,
) -> Result<Vec<u8>, SealError> {
    seal_to_vec_with_chunk_size(key, context, plaintext, DEFAULT_CHUNK_SIZE, rng)
}

/// Seals a small in-memory plaintext with an explicit chunk size.
pub fn seal_to_vec_with_chunk_size<G: CryptoRng + ?Sized>(
    key: &JobKey,
    context: &[u8],
    plaintext: &[u8],
    chunk_size: usize,
    rng: &mut G,
) -> Result<Vec<u8>, SealError> {
    let capacity = sealed_len(plaintext.len() as u64, chunk_size)?;
    let mut out = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    seal_stream_with_chunk_size(key, context, chunk_size, rng, plaintext, &mut out)?;
    Ok(out)
}

/// Opens a sealed stream held in memory. On error nothing is returned (the
/// partial plaintext is wiped).
pub fn open_slice(key: &JobKey, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut out = Zeroizing::new(Vec::with_capacity(sealed.len()));
    open_stream(key, context, sealed, &mut *out)?;
    Ok(std::mem::take(&mut *out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const CS: usize = 4096;
    const SEALED_CS: usize = CS + TAG_LEN;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn key(seed: u64) -> JobKey {
        JobKey::generate(&mut rng(seed))
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    fn seal(key: &JobKey, ctx: &[u8], plain: &[u8], seed: u64) -> Vec<u8> {
        seal_to_vec_with_chunk_size(key, ctx, plain, CS, &mut rng(seed)).unwrap()
    }

    /// Splits a sealed stream into header and chunks.
    fn split(sealed: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let (header, body) = sealed.split_at(HEADER_LEN);
        (
            header.to_vec(),
            body.chunks(SEALED_CS).map(<[u8]>::to_vec).collect(),
        )
    }

    fn join(header: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = header.to_vec();
        for c in chunks {
            out.extend_from_slice(c);
        }
        out
    }

    /// A reader that returns at most `step` bytes per call and sometimes
    /// `Interrupted`, to exercise `read_full`.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        calls: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(3) {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn round_trip_edge_lengths() {
        let k = key(1);
        for len in [0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS + 7] {
            let plain = data(len);
            let sealed = seal(&k, b"ctx", &plain, len as u64);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64, CS).unwrap());
            assert_eq!(open_slice(&k, b"ctx", &sealed).unwrap(), plain, "len {len}");
        }
    }

    #[test]
    fn layout_matches_the_format() {
        let k = key(2);
        let sealed = seal(&k, b"ctx", &data(2 * CS + 5), 9);
        assert_eq!(&sealed[..6], b"RTSEAL");
        assert_eq!(sealed[6], 1);
        assert_eq!(sealed[7], 12);
        assert_eq!(&sealed[27..32], &[0u8; 5]);
        assert_eq!(sealed.len(), HEADER_LEN + 2 * SEALED_CS + 5 + TAG_LEN);
        // Empty plaintext: header plus one bare tag.
        let empty = seal(&k, b"ctx", &[], 9);
        assert_eq!(empty.len(), HEADER_LEN + TAG_LEN);
    }

    #[test]
    fn nonce_and_aad_follow_the_spec() {
        // Decrypt chunk 1 (non-final) and chunk 2 (final) by hand.
        let k = key(3);
        let plain = data(2 * CS + 100);
        let sealed = seal(&k, b"job/input", &plain, 4);
        let (header, chunks) = split(&sealed);
        let aead = XChaCha20Poly1305::new(&Key::from(*k.as_bytes()));
        let mut aad = header.clone();
        aad.extend_from_slice(b"job/input");
        for (i, last) in [(1u32, 0u8), (2, 1)] {
            let mut nonce = header[8..27].to_vec();
            nonce.extend_from_slice(&i.to_be_bytes());
            nonce.push(last);
            let nonce = XNonce::try_from(nonce.as_slice()).unwrap();
            let mut chunk = chunks[i as usize].clone();
            let body_len = chunk.len() - TAG_LEN;
            let (body, tag) = chunk.split_at_mut(body_len);
            let tag = Tag::try_from(&*tag).unwrap();
            aead.decrypt_inout_detached(&nonce, &aad, body.into(), &tag)
                .unwrap();
            let at = i as usize * CS;
            assert_eq!(body, &plain[at..at + body_len]);
        }
    }

    #[test]
    fn default_chunk_size_is_64_kib() {
        let k = key(4);
        let plain = data(DEFAULT_CHUNK_SIZE + 1);
        let sealed = seal_to_vec(&k, b"c", &plain, &mut rng(5)).unwrap();
        assert_eq!(sealed[7], 16);
        assert_eq!(sealed.len(), HEADER_LEN + plain.len() + 2 * TAG_LEN);
        assert_eq!(open_slice(&k, b"c", &sealed).unwrap(), plain);
    }

    #[test]
    fn streams_work_with_short_reads() {
        let k = key(5);
        let plain = data(3 * CS + 11);
        let mut sealed = Vec::new();
        let n = seal_stream_with_chunk_size(
            &k,
            b"c",
            CS,
            &mut rng(6),
            Trickle {
                data: &plain,
                step: 1000,
                calls: 0,
            },
            &mut sealed,
        )
        .unwrap();
        assert_eq!(n, plain.len() as u64);
        let mut out = Vec::new();
        let n = open_stream(
            &k,
            b"c",
            Trickle {
                data: &sealed,
                step: 777,
                calls: 0,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(n, plain.len() as u64);
        assert_eq!(out, plain);
    }

    #[test]
    fn seal_stream_default_round_trip() {
        let k = key(6);
        let plain = data(200_000);
        let mut sealed = Vec::new();
        assert_eq!(
            seal_stream(&k, b"c", &mut rng(7), plain.as_slice(), &mut sealed).unwrap(),
            200_000
        );
        let mut out = Vec::new();
        assert_eq!(
            open_stream(&k, b"c", sealed.as_slice(), &mut out).unwrap(),
            200_000
        );
        assert_eq!(out, plain);
    }

    #[test]
    fn sealing_twice_gives_different_streams() {
        let k = key(7);
        let plain = data(100);
        let a = seal(&k, b"c", &plain, 1);
        let b = seal(&k, b"c", &plain, 2);
        assert_ne!(a[8..27], b[8..27]);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }

    #[test]
    fn sans_io_round_trip_in_place() {
        let k = key(8);
        let plain = data(2 * CS + 3);
        let (mut sealer, header) = Sealer::new(&k, b"c", CS, &mut rng(9)).unwrap();
        assert_eq!(sealer.chunk_size(), CS);
        let mut sealed = header.to_vec();
        let mut buf = Vec::with_capacity(SEALED_CS);
        for chunk in plain[..2 * CS].chunks(CS) {
            buf.clear();
            buf.extend_from_slice(chunk);
            let ptr = buf.as_ptr();
            sealer.seal_chunk(&mut buf).unwrap();
            assert_eq!(buf.as_ptr(), ptr, "sealed in place, no reallocation");
            assert_eq!(buf.len(), SEALED_CS);
            sealed.extend_from_slice(&buf);
        }
        buf.clear();
        buf.extend_from_slice(&plain[2 * CS..]);
        sealer.seal_final(&mut buf).unwrap();
        sealed.extend_from_slice(&buf);
        assert_eq!(open_slice(&k, b"c", &sealed).unwrap(), plain);

        let mut opener = Opener::new(&k, b"c", &sealed[..HEADER_LEN]).unwrap();
        assert_eq!(opener.chunk_size(), CS);
        let mut out = Vec::new();
        let mut rest = &sealed[HEADER_LEN..];
        while rest.len() > SEALED_CS {
            buf.clear();
            buf.extend_from_slice(&rest[..SEALED_CS]);
            opener.open_chunk(&mut buf).unwrap();
            out.extend_from_slice(&buf);
            rest = &rest[SEALED_CS..];
        }
        buf.clear();
        buf.extend_from_slice(rest);
        opener.open_final(&mut buf).unwrap();
        out.extend_from_slice(&buf);
        assert_eq!(out, plain);
    }

    #[test]
    fn rejects_bad_chunk_sizes() {
        let k = key(10);
        for bad in [0, 1, 2048, 4095, 4097, 3 * 4096, 1 << 25, usize::MAX] {
            assert!(
                matches!(
                    Sealer::new(&k, b"", bad, &mut rng(1)),
                    Err(SealError::ChunkSize { found }) if found == bad
                ),
                "{bad}"
            );
            assert!(matches!(
                sealed_len(10, bad),
                Err(SealError::ChunkSize { .. })
            ));
        }
        for good in [1 << 12, 1 << 16, 1 << 24] {
            assert!(Sealer::new(&k, b"", good, &mut rng(1)).is_ok());
        }
    }

    #[test]
    fn sealer_rejects_wrong_buffer_lengths() {
        let k = key(11);
        let (mut sealer, _) = Sealer::new(&k, b"", CS, &mut rng(1)).unwrap();
        let mut short = vec![0u8; CS - 1];
        assert!(matches!(
            sealer.seal_chunk(&mut short),
            Err(SealError::ChunkLength { index: 0, expected: CS, found }) if found == CS - 1
        ));
        let mut full = vec![0u8; CS];
        sealer.seal_chunk(&mut full).unwrap();
        let (sealer2, _) = Sealer::new(&k, b"", CS, &mut rng(1)).unwrap();
        let mut long = vec![0u8; CS + 1];
        assert!(matches!(
            sealer2.seal_final(&mut long),
            Err(SealError::FinalChunkLength {
                index: 0,
                max: CS,
                ..
            })
        ));
        // Empty final chunk after a full one is not a valid stream.
        let mut empty = Vec::new();
        assert!(matches!(
            sealer.seal_final(&mut empty),
            Err(SealError::EmptyFinalChunk { index: 1 })
        ));
    }

    #[test]
    fn opener_rejects_wrong_buffer_lengths() {
        let k = key(12);
        let sealed = seal(&k, b"", &data(CS + 1), 1);
        let mut opener = Opener::new(&k, b"", &sealed[..HEADER_LEN]).unwrap();
        let mut short = vec![0u8; SEALED_CS - 1];
        assert!(matches!(
            opener.open_chunk(&mut short),
            Err(SealError::ChunkLength {
                index: 0,
                expected: SEALED_CS,
                ..
            })
        ));
        let mut long = vec![0u8; SEALED_CS + 1];
        assert!(matches!(
            opener.open_final(&mut long),
            Err(SealError::FinalChunkLength {
                index: 0,
                max: SEALED_CS,
                ..
            })
        ));
    }

    #[test]
    fn counter_never_wraps() {
        let k = key(13);
        let (mut sealer, header) = Sealer::new(&k, b"", CS, &mut rng(1)).unwrap();
        sealer.skip_to(MAX_INDEX);
        let mut buf = vec![7u8; CS];
        sealer.seal_chunk(&mut buf).unwrap();
        let last_chunk = buf.clone();
        let mut buf = vec![7u8; CS];
        assert!(matches!(
            sealer.seal_chunk(&mut buf),
            Err(SealError::CounterOverflow)
        ));
        let mut buf = vec![7u8; 10];
        assert!(matches!(
            sealer.seal_final(&mut buf),
            Err(SealError::CounterOverflow)
        ));

        // The opener accepts chunk u32::MAX and refuses to go beyond.
        let mut opener = Opener::new(&k, b"", &header).unwrap();
        opener.skip_to(MAX_INDEX);
        let mut buf = last_chunk;
        opener.open_chunk(&mut buf).unwrap();
        let mut buf = vec![0u8; SEALED_CS];
        assert!(matches!(
            opener.open_chunk(&mut buf),
            Err(SealError::CounterOverflow)
        ));
        assert!(matches!(
            sealed_len((MAX_INDEX + 1) * CS as u64 + 1, CS),
            Err(SealError::CounterOverflow)
        ));
        assert!(sealed_len((MAX_INDEX + 1) * CS as u64, CS).is_ok());
    }

    #[test]
    fn truncated_at_every_chunk_boundary() {
        let k = key(14);
        for len in [CS, 3 * CS, 3 * CS + 5] {
            let sealed = seal(&k, b"c", &data(len), 1);
            let mut cut = HEADER_LEN;
            while cut < sealed.len() {
                assert!(
                    matches!(
                        open_slice(&k, b"c", &sealed[..cut]),
                        Err(SealError::Truncated { offset }) if offset == cut as u64
                    ),
                    "len {len} cut {cut}"
                );
                cut += SEALED_CS;
            }
        }
    }

    #[test]
    fn truncated_inside_the_header() {
        let k = key(15);
        let sealed = seal(&k, b"c", &data(10), 1);
        for cut in 0..HEADER_LEN {
            assert!(matches!(
                open_slice(&k, b"c", &sealed[..cut]),
                Err(SealError::Truncated { offset }) if offset == cut as u64
            ));
        }
    }

    #[test]
    fn truncated_mid_chunk() {
        let k = key(16);
        let plain = data(3 * CS + 100);
        let sealed = seal(&k, b"c", &plain, 1);
        let mut cuts = Vec::new();
        for chunk in 0..4 {
            let start = HEADER_LEN + chunk * SEALED_CS;
            cuts.extend([start + 1, start + 15, start + 16, start + 17, start + CS]);
            cuts.extend([start + SEALED_CS - 1]);
        }
        for cut in cuts.into_iter().filter(|&c| c < sealed.len()) {
            let result = open_slice(&k, b"c", &sealed[..cut]);
            assert!(result.is_err(), "cut {cut}");
            // Cut within the first 16 bytes of a chunk (or exactly after them,
            // past the first chunk, where an empty final chunk is impossible):
            // recognisably truncated.
            let within = (cut - HEADER_LEN) % SEALED_CS;
            if within < TAG_LEN || (within == TAG_LEN && cut > HEADER_LEN + SEALED_CS) {
                assert!(
                    matches!(result, Err(SealError::Truncated { .. })),
                    "cut {cut}: {result:?}"
                );
            }
        }
        // Cut inside the final chunk's tag.
        let end = sealed.len();
        assert!(matches!(
            open_slice(&k, b"c", &sealed[..end - 1]),
            Err(SealError::ChunkAuthentication { index: 3 })
        ));
        // Empty-plaintext stream cut inside its only tag.
        let empty = seal(&k, b"c", &[], 2);
        assert!(matches!(
            open_slice(&k, b"c", &empty[..HEADER_LEN + 15]),
            Err(SealError::Truncated { offset: 47 })
        ));
    }

    #[test]
    fn reordered_chunks() {
        let k = key(17);
        let sealed = seal(&k, b"c", &data(4 * CS + 9), 1);
        let (header, chunks) = split(&sealed);
        let mut swapped = chunks.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            open_slice(&k, b"c", &join(&header, &swapped)),
            Err(SealError::OutOfOrder {
                index: 1,
                sealed_at: 2
            })
        ));
        // First and second swapped.
        let mut swapped = chunks.clone();
        swapped.swap(0, 1);
        assert!(matches!(
            open_slice(&k, b"c", &join(&header, &swapped)),
            Err(SealError::OutOfOrder {
                index: 0,
                sealed_at: 1
            })
        ));
        // The (full-size) final chunk moved before another one.
        let sealed = seal(&k, b"c", &data(5 * CS), 1);
        let (header, chunks) = split(&sealed);
        let mut moved = chunks.clone();
        let last = moved.pop().unwrap();
        moved.insert(3, last);
        assert!(matches!(
            open_slice(&k, b"c", &join(&header, &moved)),
            Err(SealError::OutOfOrder {
                index: 3,
                sealed_at: 4
            })
        ));
    }

    #[test]
    fn duplicated_and_dropped_chunks() {
        let k = key(18);
        let sealed = seal(&k, b"c", &data(4 * CS + 9), 1);
        let (header, chunks) = split(&sealed);
        let mut dup = chunks.clone();
        dup.insert(2, chunks[1].clone());
        assert!(matches!(
            open_slice(&k, b"c", &join(&header, &dup)),
            Err(SealError::OutOfOrder {
                index: 2,
                sealed_at: 1
            })
        ));
        let mut dropped = chunks.clone();
        dropped.remove(1);
        assert!(matches!(
            open_slice(&k, b"c", &join(&header, &dropped)),
            Err(SealError::OutOfOrder {
                index: 1,
                sealed_at: 2
            })
        ));
        // Far outside the diagnosis window it is still rejected.
        let n = 2 * DIAGNOSIS_WINDOW as usize + 4;
        let long = seal(&k, b"c", &data(n * CS), 2);
        let (header, mut chunks) = split(&long);
        chunks[n - 2] = chunks[0].clone();
        assert!(matches!(
            open_slice(&k, b"c", &join(&header, &chunks)),
            Err(SealError::ChunkAuthentication { index }) if index == n as u64 - 2
        ));
    }

    #[test]
    fn chunk_swapped_from_another_file_with_same_key() {
        let k = key(19);
        let plain = data(3 * CS);
        let a = seal(&k, b"c", &plain, 1);
        let b = seal(&k, b"c", &plain, 2);
        let (ha, ca) = split(&a);
        let (_, cb) = split(&b);
        for i in 0..3 {
            let mut mixed = ca.clone();
            mixed[i] = cb[i].clone();
            let result = open_slice(&k, b"c", &join(&ha, &mixed));
            if i == 0 {
                assert!(matches!(result, Err(SealError::KeyOrContextMismatch)));
            } else {
                assert!(
                    matches!(result, Err(SealError::ChunkAuthentication { index }) if index == i as u64)
                );
            }
        }
        // Same key, same plaintext, different context (another job/input).
        let c = seal(&k, b"other", &plain, 1);
        let (_, cc) = split(&c);
        let mut mixed = ca.clone();
        mixed[1] = cc[1].clone();
        assert!(matches!(
            open_slice(&k, b"c", &join(&ha, &mixed)),
            Err(SealError::ChunkAuthentication { index: 1 })
        ));
    }

    #[test]
    fn trailing_data() {
        let k = key(20);
        // Final chunk is a full chunk: the extra bytes make it non-final.
        let mut sealed = seal(&k, b"c", &data(2 * CS), 1);
        sealed.push(0);
        assert!(matches!(
            open_slice(&k, b"c", &sealed),
            Err(SealError::TrailingData { index: 1 })
        ));
        // A whole extra chunk after the end.
        let mut sealed = seal(&k, b"c", &data(2 * CS), 1);
        let extra = sealed[HEADER_LEN..HEADER_LEN + SEALED_CS].to_vec();
        sealed.extend_from_slice(&extra);
        assert!(matches!(
            open_slice(&k, b"c", &sealed),
            Err(SealError::TrailingData { index: 1 })
        ));
        // Final chunk is short: the extra bytes change its length.
        for extra in [1usize, 17, SEALED_CS] {
            let mut sealed = seal(&k, b"c", &data(2 * CS + 10), 1);
            sealed.extend(std::iter::repeat_n(0u8, extra));
            assert!(open_slice(&k, b"c", &sealed).is_err(), "{extra}");
        }
        // Empty plaintext with trailing bytes.
        let mut sealed = seal(&k, b"c", &[], 1);
        sealed.push(0);
        assert!(open_slice(&k, b"c", &sealed).is_err());
    }

    #[test]
    fn wrong_key_and_wrong_context() {
        let k = key(21);
        for len in [0, 5, CS, 3 * CS + 1] {
            let sealed = seal(&k, b"job-1/input-a", &data(len), 1);
            assert!(matches!(
                open_slice(&key(22), b"job-1/input-a", &sealed),
                Err(SealError::KeyOrContextMismatch)
            ));
            for ctx in [
                &b"job-1/input-b"[..],
                b"job-2/input-a",
                b"",
                b"job-1/input-a\0",
            ] {
                assert!(matches!(
                    open_slice(&k, ctx, &sealed),
                    Err(SealError::KeyOrContextMismatch)
                ));
            }
        }
    }

    #[test]
    fn bad_headers() {
        let k = key(23);
        let sealed = seal(&k, b"c", &data(100), 1);
        let with = |at: usize, value: u8| {
            let mut s = sealed.clone();
            s[at] = value;
            open_slice(&k, b"c", &s)
        };
        assert!(matches!(with(0, b'X'), Err(SealError::BadMagic { found }) if &found == b"XTSEAL"));
        assert!(matches!(with(5, b'l'), Err(SealError::BadMagic { .. })));
        for version in [0, 2, 255] {
            assert!(matches!(
                with(6, version),
                Err(SealError::UnsupportedVersion { found }) if found == version
            ));
        }
        for log2 in [0, 11, 25, 255] {
            assert!(matches!(
                with(7, log2),
                Err(SealError::HeaderChunkSize { found }) if found == log2
            ));
        }
        for at in 27..32 {
            assert!(matches!(
                with(at, 1),
                Err(SealError::ReservedNonZero { .. })
            ));
        }
        // A valid but different chunk size is caught by the AAD.
        assert!(matches!(with(7, 13), Err(SealError::KeyOrContextMismatch)));
        // Nonce prefix modified.
        assert!(matches!(
            with(8, sealed[8] ^ 1),
            Err(SealError::KeyOrContextMismatch)
        ));
        assert!(matches!(
            with(26, sealed[26] ^ 0x80),
            Err(SealError::KeyOrContextMismatch)
        ));
        // Opener::new needs exactly 32 bytes.
        for len in [0, 31, 33] {
            let header = vec![0u8; len];
            assert!(matches!(
                Opener::new(&k, b"c", &header),
                Err(SealError::HeaderLength { found }) if found == len
            ));
        }
    }

    #[test]
    fn tampering_any_byte_is_detected() {
        let k = key(24);
        let plain = data(2 * CS + 40);
        let sealed = seal(&k, b"c", &plain, 1);
        let mut positions: Vec<usize> = (0..HEADER_LEN).collect();
        for chunk in 0..3 {
            let start = HEADER_LEN + chunk * SEALED_CS;
            let end = (start + SEALED_CS).min(sealed.len());
            positions.extend([start, start + 1, start + 20, end - TAG_LEN - 1]);
            positions.extend(end - TAG_LEN..end);
        }
        for at in positions {
            for bit in [0x01u8, 0x80] {
                let mut tampered = sealed.clone();
                tampered[at] ^= bit;
                let result = open_slice(&k, b"c", &tampered);
                assert!(result.is_err(), "byte {at} bit {bit:#x}");
                let chunk = at.checked_sub(HEADER_LEN).map(|p| (p / SEALED_CS) as u64);
                match (chunk, result) {
                    (None, Err(_)) | (Some(0), Err(SealError::KeyOrContextMismatch)) => {}
                    (Some(i), Err(SealError::ChunkAuthentication { index })) if i == index => {}
                    (chunk, other) => panic!("byte {at} in chunk {chunk:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn truncated_stream_at_boundary_is_not_reported_as_tamper() {
        // Decrypting the last full chunk as final fails only because of the
        // flag; the opener must say Truncated.
        let k = key(25);
        let sealed = seal(&k, b"c", &data(3 * CS), 1);
        let cut = HEADER_LEN + 2 * SEALED_CS;
        let (header, chunks) = split(&sealed[..cut]);
        let mut opener = Opener::new(&k, b"c", &header).unwrap();
        let mut buf = chunks[0].clone();
        opener.open_chunk(&mut buf).unwrap();
        let mut buf = chunks[1].clone();
        assert!(matches!(
            opener.open_final(&mut buf),
            Err(SealError::Truncated { offset }) if offset == cut as u64
        ));
        assert!(buf.is_empty(), "plaintext wiped on error");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = JobKey::from_bytes([0x5a; 32]);
        let (sealer, header) = Sealer::new(&k, b"c", CS, &mut rng(1)).unwrap();
        let opener = Opener::new(&k, b"c", &header).unwrap();
        for shown in [format!("{sealer:?}"), format!("{opener:?}")] {
            assert!(shown.contains("chunk_size: 4096"), "{shown}");
            assert!(!shown.contains("5a") && !shown.contains("90"), "{shown}");
        }
    }

    #[test]
    fn io_errors_are_reported() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let k = key(26);
        assert!(matches!(
            seal_stream(&k, b"", &mut rng(1), Failing, Vec::new()),
            Err(SealError::Io(_))
        ));
        assert!(matches!(
            open_stream(&k, b"", Failing, Vec::new()),
            Err(SealError::Io(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_round_trip(
            plain in proptest::collection::vec(any::<u8>(), 0..5 * CS),
            ctx in proptest::collection::vec(any::<u8>(), 0..64),
            seed in any::<u64>(),
        ) {
            let k = key(seed);
            let sealed = seal(&k, &ctx, &plain, seed ^ 1);
            prop_assert_eq!(sealed.len() as u64, sealed_len(plain.len() as u64, CS).unwrap());
            prop_assert_eq!(open_slice(&k, &ctx, &sealed).unwrap(), plain);
        }

        #[test]
        fn prop_any_flip_fails(
            plain in proptest::collection::vec(any::<u8>(), 0..3 * CS),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let k = key(1);
            let mut sealed = seal(&k, b"c", &plain, 2);
            let at = at.index(sealed.len());
            sealed[at] ^= 1 << bit;
            prop_assert!(open_slice(&k, b"c", &sealed).is_err());
        }

        #[test]
        fn prop_any_truncation_fails(
            plain in proptest::collection::vec(any::<u8>(), 0..3 * CS),
            cut in any::<prop::sample::Index>(),
        ) {
            let k = key(1);
            let sealed = seal(&k, b"c", &plain, 2);
            let cut = cut.index(sealed.len());
            prop_assert!(open_slice(&k, b"c", &sealed[..cut]).is_err());
        }

        #[test]
        fn prop_any_extension_fails(
            plain in proptest::collection::vec(any::<u8>(), 0..3 * CS),
            extra in proptest::collection::vec(any::<u8>(), 1..100),
        ) {
            let k = key(1);
            let mut sealed = seal(&k, b"c", &plain, 2);
            sealed.extend_from_slice(&extra);
            prop_assert!(open_slice(&k, b"c", &sealed).is_err());
        }
    }
}
