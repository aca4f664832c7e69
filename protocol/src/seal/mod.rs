//! Per-job encryption: job keys, chunked STREAM sealing and key wrapping.
//!
//! # What this module owns
//!
//! * [`JobKey`]: the random 256-bit symmetric key of one render job. Every
//!   input and output of the job is sealed under it, each with its own
//!   `context` (job id and input/output name) so that sealed files cannot be
//!   exchanged for one another.
//! * The sealed stream format and its sans-IO state machines, [`Sealer`] and
//!   [`Opener`]: the STREAM construction of Hoang, Reyhanitabar, Rogaway and
//!   Vizár ("Online Authenticated-Encryption and its Nonce-Reuse
//!   Misuse-Resistance", CRYPTO 2015) over XChaCha20-Poly1305, so that a
//!   10 GiB file is sealed and opened in constant memory, one chunk at a time,
//!   and every chunk is authenticated before its plaintext is released. The
//!   [`std::io`] conveniences [`seal_stream`] / [`open_stream`] and the
//!   in-memory [`seal_to_vec`] / [`open_slice`] sit on top of them.
//! * Key wrapping, [`wrap_key`] / [`unwrap_key`]: a job key is sent to a node
//!   encrypted to that node's X25519 *wrap key* ([`WrapSecret`]) with an
//!   ephemeral-static Diffie-Hellman exchange (an ECIES/HPKE-base-style KEM),
//!   so only the chosen node can read the job's data.
//!
//! ## Decision: a separate X25519 wrap key, not the converted ed25519 identity
//!
//! Key wrapping uses a **separate X25519 key** that each node publishes inside
//! its signed capacity advert; it is *not* derived from the node's ed25519
//! identity key by the Edwards-to-Montgomery conversion. Reasons:
//!
//! * key separation: the identity key only ever signs and the wrap key only
//!   ever does key agreement, so no analysis has to cover one key used by two
//!   different primitives;
//! * the wrap key can rotate (or be revoked after a leak) without changing the
//!   node's identity, its `NodeId` or its reputation;
//! * no ed25519 → X25519 conversion edge cases (small-order and non-canonical
//!   encodings, clamping differences, libraries that disagree).
//!
//! The advert is signed by the identity key, and that signature is what binds
//! the X25519 public key to the node: a peer must only wrap to a key it read
//! from a verified advert.
//!
//! # What this module must not do
//!
//! * No I/O of its own: [`Sealer`] and [`Opener`] work on caller buffers; the
//!   stream helpers only use the `Read`/`Write` traits they are given. No
//!   clock, no global or OS randomness: every random value comes from the
//!   `rng` argument.
//! * Never reuse a nonce: each stream draws a fresh 19-byte nonce prefix, each
//!   chunk uses its own counter, and the counter never wraps
//!   ([`SealError::CounterOverflow`]).
//! * Never release unauthenticated plaintext: a chunk is decrypted only after
//!   its tag verified, and on any error the caller's buffer is wiped.
//! * Never print or serialize key material: [`JobKey`] and [`WrapSecret`] have
//!   redacting `Debug` impls and are zeroized on drop.
//!
//! # Sealed stream format (version 1)
//!
//! ```text
//! header (32 bytes) = "RTSEAL" | version u8 = 1 | log2(chunk_size) u8
//!                   | nonce_prefix [u8; 19] | 5 reserved zero bytes
//! chunk i           = XChaCha20-Poly1305(job key,
//!                       nonce = nonce_prefix || i as u32 BE || last_flag u8,
//!                       aad   = header || context) ciphertext || 16-byte tag
//! ```
//!
//! Every chunk but the last holds exactly `chunk_size` plaintext bytes; the
//! last holds `1..=chunk_size` (zero only when the whole plaintext is empty)
//! and is sealed with `last_flag = 1`. The end of the stream is marked by that
//! flag, so a stream cut at a chunk boundary is detected as truncated; the
//! header in the AAD binds every chunk to this stream's nonce prefix and chunk
//! size, and the context binds it to one job and one file.

mod stream;
mod wrap;

use std::fmt;

use rand_core::CryptoRng;
use zeroize::Zeroize;

pub use stream::{
    DEFAULT_CHUNK_SIZE, HEADER_LEN, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Opener, Sealer, TAG_LEN,
    open_slice, open_stream, seal_stream, seal_stream_with_chunk_size, seal_to_vec,
    seal_to_vec_with_chunk_size, sealed_len,
};
pub use wrap::{KEY_WRAP_CONTEXT, WrapSecret, WrappedKey, unwrap_key, wrap_key};

/// Length in bytes of a [`JobKey`].
pub const JOB_KEY_LEN: usize = 32;

/// The symmetric key of one job: 32 uniformly random bytes.
///
/// Zeroized on drop; its `Debug` output never shows the key.
#[derive(Clone)]
pub struct JobKey([u8; JOB_KEY_LEN]);

impl JobKey {
    /// Draws a fresh job key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; JOB_KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps existing key bytes (for example a key just unwrapped or loaded
    /// from the node's encrypted store).
    pub fn from_bytes(bytes: [u8; JOB_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes. Handle with care: do not log or persist them in the
    /// clear.
    pub fn as_bytes(&self) -> &[u8; JOB_KEY_LEN] {
        &self.0
    }
}

impl Drop for JobKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for JobKey {}

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobKey(<redacted>)")
    }
}

/// Everything that can go wrong while sealing, opening, wrapping or
/// unwrapping.
///
/// Opening distinguishes what the format lets it distinguish: a truncated
/// stream, data after the final chunk, chunks out of order (found at another
/// position of the same stream), a first chunk that does not authenticate
/// (wrong key or context, or a modified header), and a later chunk that does
/// not authenticate (tampered with, or taken from another stream). An AEAD
/// cannot tell a wrong key from a wrong context, nor a tampered chunk from a
/// chunk of another stream sealed under the same key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The chunk size is not a power of two in
    /// [`MIN_CHUNK_SIZE`]`..=`[`MAX_CHUNK_SIZE`].
    #[error("chunk size must be a power of two from 4096 to 16777216 bytes, found {found}")]
    ChunkSize {
        /// The rejected chunk size.
        found: usize,
    },
    /// A header slice of the wrong length was passed to [`Opener::new`].
    #[error("sealed stream header must be {HEADER_LEN} bytes, found {found}")]
    HeaderLength {
        /// Length of the slice that was passed.
        found: usize,
    },
    /// The header does not start with `RTSEAL`.
    #[error("sealed stream header must start with magic \"RTSEAL\", found {found:02x?}")]
    BadMagic {
        /// The six bytes found where the magic belongs.
        found: [u8; 6],
    },
    /// The header names a format version this code does not know.
    #[error("sealed stream version must be 1, found {found}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The header's log2(chunk size) is outside 12..=24.
    #[error("sealed stream log2(chunk size) must be in 12..=24, found {found}")]
    HeaderChunkSize {
        /// The log2(chunk size) byte found.
        found: u8,
    },
    /// The header's reserved bytes are not all zero.
    #[error("sealed stream reserved header bytes must be zero, found {found:02x?}")]
    ReservedNonZero {
        /// The five reserved bytes found.
        found: [u8; 5],
    },
    /// A non-final chunk buffer does not have the exact length of a chunk
    /// (`chunk_size` plaintext bytes to seal, `chunk_size + 16` sealed bytes to
    /// open).
    #[error("chunk {index}: expected exactly {expected} bytes, found {found}")]
    ChunkLength {
        /// Position of the chunk in the stream.
        index: u64,
        /// The required length.
        expected: usize,
        /// The length of the buffer passed.
        found: usize,
    },
    /// A final chunk buffer is longer than one chunk.
    #[error("final chunk {index}: expected at most {max} bytes, found {found}")]
    FinalChunkLength {
        /// Position of the chunk in the stream.
        index: u64,
        /// The largest allowed length.
        max: usize,
        /// The length of the buffer passed.
        found: usize,
    },
    /// [`Sealer::seal_final`] was given an empty buffer after earlier chunks:
    /// only an empty plaintext has an empty final chunk.
    #[error(
        "final chunk {index}: expected 1..=chunk_size plaintext bytes after earlier chunks, \
         found 0 (seal the last full chunk with seal_final instead)"
    )]
    EmptyFinalChunk {
        /// Position of the chunk in the stream.
        index: u64,
    },
    /// The chunk counter would exceed `u32::MAX`; it never wraps.
    #[error("chunk counter exhausted: expected at most 2^32 chunks per stream, found more")]
    CounterOverflow,
    /// The stream ended before its final chunk: cut inside the header, at a
    /// chunk boundary, or inside the last chunk's tag.
    #[error(
        "sealed stream truncated: expected more data up to a final chunk, found end of stream \
         after {offset} bytes"
    )]
    Truncated {
        /// Number of sealed bytes present (header included).
        offset: u64,
    },
    /// The chunk at `index` is the stream's final chunk, but more data follows.
    #[error(
        "chunk {index} is the final chunk of the stream, but more data follows it: expected end \
         of stream"
    )]
    TrailingData {
        /// Position of the final chunk.
        index: u64,
    },
    /// The chunk at `index` authenticates only at position `sealed_at` of this
    /// stream: chunks were reordered, duplicated or dropped.
    #[error(
        "chunk at position {index} was sealed at position {sealed_at}: expected chunks in \
         order, found them reordered, duplicated or dropped"
    )]
    OutOfOrder {
        /// Position where the chunk was found.
        index: u64,
        /// Position the chunk was sealed at.
        sealed_at: u64,
    },
    /// The first chunk does not authenticate: wrong key or wrong context (or a
    /// modified nonce prefix, or a tampered first chunk).
    #[error(
        "chunk 0 failed authentication: expected the key and context the stream was sealed \
         with, found a different key or context (or a modified header or first chunk)"
    )]
    KeyOrContextMismatch,
    /// A chunk after the first does not authenticate although the earlier ones
    /// did: it was modified or taken from another stream.
    #[error(
        "chunk {index} failed authentication: expected the chunk sealed at this position of this \
         stream, found a modified chunk or one from another stream"
    )]
    ChunkAuthentication {
        /// Position of the rejected chunk.
        index: u64,
    },
    /// XChaCha20-Poly1305 refused to encrypt (only possible beyond its
    /// per-message length limit, far above [`MAX_CHUNK_SIZE`]).
    #[error(
        "XChaCha20-Poly1305 refused to encrypt chunk {index}: expected a chunk within its length limit"
    )]
    Encrypt {
        /// Position of the chunk.
        index: u64,
    },
    /// The recipient's X25519 public key is a low-order point: the shared
    /// secret would not depend on our ephemeral key.
    #[error(
        "recipient X25519 key is a low-order point: expected a key that yields a contributory \
         shared secret, found a non-contributory one"
    )]
    LowOrderRecipientKey,
    /// The wrapped key's ephemeral X25519 key is a low-order point.
    #[error(
        "wrapped key's ephemeral X25519 key is a low-order point: expected a key that yields a \
         contributory shared secret, found a non-contributory one"
    )]
    LowOrderEphemeralKey,
    /// The wrapped key does not authenticate.
    #[error(
        "wrapped job key failed authentication: expected a key wrapped to this recipient under \
         this context, found another recipient, another context or a modified wrapped key"
    )]
    UnwrapAuthentication,
    /// The reader or writer failed.
    #[error("I/O error while sealing or opening: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn job_key_generate_is_random_and_round_trips() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = JobKey::generate(&mut rng);
        let b = JobKey::generate(&mut rng);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), &[0u8; 32]);
        let c = JobKey::from_bytes(*a.as_bytes());
        assert_eq!(a.as_bytes(), c.as_bytes());
    }

    #[test]
    fn job_key_debug_is_redacted() {
        let key = JobKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "JobKey(<redacted>)");
        assert!(!shown.contains("ab"));
        assert!(!shown.contains("171"));
    }

    #[test]
    fn errors_say_expected_and_found() {
        let e = SealError::ChunkLength {
            index: 3,
            expected: 4112,
            found: 7,
        };
        assert_eq!(
            e.to_string(),
            "chunk 3: expected exactly 4112 bytes, found 7"
        );
        let e = SealError::BadMagic { found: *b"RTSEAX" };
        assert!(e.to_string().contains("RTSEAL"));
        assert!(e.to_string().contains("58"));
    }
}
