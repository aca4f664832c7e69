//! The one wire codec of RenderTrust.
//!
//! Every byte layout two peers must agree on is decided here, so that the
//! serialisation library can be swapped in one place:
//!
//! * **Bodies** are bincode 2 (through serde) in one fixed configuration:
//!   little endian, variable-length integers, and a hard allocation limit of
//!   [`MAX_FRAME`] bytes. No other module calls bincode.
//! * **Decoding is bounded and strict**: the input length is checked against the
//!   caller's limit *before* anything is decoded, trailing bytes are rejected,
//!   and the decoded value must re-encode to exactly the input (canonical
//!   encoding), so one value has exactly one byte string and ids derived from
//!   bytes cannot be forked by re-encoding.
//! * **Signed frames** ([`Frame`]) have a fixed layout:
//!   `signer (32) | signature (64) | payload`, where
//!   `payload = DOMAIN (12) | kind (1) | version (1) | body`. The signature
//!   covers the whole payload, so the domain tag, the message kind and the
//!   protocol version are all signed: a signature over one kind can never verify
//!   as another, nor as another protocol's message signed with the same key.
//!
//! This module must not know about keys or signatures beyond their sizes
//! (that is [`crate::signed`]), nor about individual message types (that is
//! [`crate::wire`]).

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::error::{DecodeError, EncodeError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Hard upper bound on any encoded message or frame, in bytes (4 MiB).
///
/// Individual message kinds set far smaller limits; this is the cap the
/// bincode configuration itself enforces on any allocation while decoding.
pub const MAX_FRAME: usize = 4 << 20;

/// Domain tag at the start of every signed payload: separates RenderTrust
/// signatures from any other use of the same ed25519 key (libp2p signs
/// gossipsub messages and peer records with it under its own prefixes).
pub const DOMAIN: [u8; 12] = *b"RenderTrust\0";

/// Length of the header of a signed payload: domain, kind, version.
pub const PAYLOAD_HEADER_LEN: usize = DOMAIN.len() + 2;

/// Length of the signer public key in a frame.
pub const SIGNER_LEN: usize = 32;
/// Length of the signature in a frame.
pub const SIGNATURE_LEN: usize = 64;
/// Offset of the payload in a frame.
pub const PAYLOAD_OFFSET: usize = SIGNER_LEN + SIGNATURE_LEN;

type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_FRAME>>;

/// Largest value a node stores for itself ([`encode_local`] / [`decode_local`]):
/// its own persisted state (scheduler snapshots, a creator's jobs), never
/// bytes from a peer.
pub const MAX_LOCAL: usize = 256 << 20;

type LocalConfig = Configuration<LittleEndian, Varint, Limit<MAX_LOCAL>>;

const fn local_config() -> LocalConfig {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_LOCAL>()
}

/// Encodes a node's own state for its store (same layout as the wire
/// encoding, with the larger [`MAX_LOCAL`] bound).
pub fn encode_local<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, local_config())?)
}

/// Decodes what [`encode_local`] wrote. Only for the node's own store: peer
/// input goes through [`decode`] and its per-message bounds.
pub fn decode_local<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_LOCAL {
        return Err(CodecError::TooLarge {
            limit: MAX_LOCAL,
            found: bytes.len(),
        });
    }
    let (value, consumed): (T, usize) = bincode::serde::decode_from_slice(bytes, local_config())?;
    if consumed != bytes.len() {
        return Err(CodecError::TrailingBytes {
            consumed,
            total: bytes.len(),
        });
    }
    Ok(value)
}

const fn config() -> WireConfig {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_FRAME>()
}

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is longer than the limit for what it claims to be.
    #[error("message too large: limit is {limit} bytes, found {found}")]
    TooLarge {
        /// The limit that applied.
        limit: usize,
        /// The length found.
        found: usize,
    },
    /// The input ended before the value was complete.
    #[error("message truncated: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes the decoder wanted (0 if unknown).
        needed: usize,
    },
    /// The bytes do not describe a value of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A value was decoded but bytes were left over.
    #[error("trailing bytes: value ended at byte {consumed} of {total}")]
    TrailingBytes {
        /// Bytes the value used.
        consumed: usize,
        /// Bytes given.
        total: usize,
    },
    /// The bytes decode, but are not the canonical encoding of their value.
    #[error("non-canonical encoding: the value re-encodes to different bytes")]
    NonCanonical,
    /// A signed payload does not start with the RenderTrust domain tag.
    #[error("wrong domain tag: expected {:?}, found {found:?}", String::from_utf8_lossy(&DOMAIN))]
    WrongDomain {
        /// The first bytes found instead (lossy text).
        found: String,
    },
    /// A signed payload is of another message kind than expected.
    #[error("wrong message kind: expected {expected}, found {found}")]
    WrongKind {
        /// The kind expected by the caller.
        expected: u8,
        /// The kind found in the payload.
        found: u8,
    },
    /// A signed payload carries a protocol version this build does not speak.
    #[error("unknown protocol version for message kind {kind}: expected {expected}, found {found}")]
    UnknownVersion {
        /// The message kind.
        kind: u8,
        /// The version this build speaks.
        expected: u8,
        /// The version found.
        found: u8,
    },
    /// A value could not be encoded (e.g. it exceeds [`MAX_FRAME`]).
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl From<DecodeError> for CodecError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnexpectedEnd { additional } => {
                CodecError::Truncated { needed: additional }
            }
            DecodeError::LimitExceeded => CodecError::TooLarge {
                limit: MAX_FRAME,
                found: MAX_FRAME.saturating_add(1),
            },
            other => CodecError::Malformed(other.to_string()),
        }
    }
}

impl From<EncodeError> for CodecError {
    fn from(e: EncodeError) -> Self {
        CodecError::Encode(e.to_string())
    }
}

/// Encodes a value in the wire configuration.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Appends the encoding of a value to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let before = out.len();
    match bincode::serde::encode_into_std_write(value, out, config()) {
        Ok(_) => Ok(()),
        Err(e) => {
            out.truncate(before);
            Err(e.into())
        }
    }
}

/// Decodes a value, accepting at most `max` bytes of input.
///
/// Rejects oversized input before decoding, trailing bytes, and any encoding
/// that is not the canonical one for the decoded value.
pub fn decode<T: DeserializeOwned + Serialize>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    let limit = max.min(MAX_FRAME);
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            limit,
            found: bytes.len(),
        });
    }
    let (value, consumed): (T, usize) = bincode::serde::decode_from_slice(bytes, config())?;
    if consumed != bytes.len() {
        return Err(CodecError::TrailingBytes {
            consumed,
            total: bytes.len(),
        });
    }
    // Canonical check: re-encode into a buffer of the known size and compare.
    let mut again = Vec::with_capacity(bytes.len());
    encode_into(&value, &mut again)?;
    if again != bytes {
        return Err(CodecError::NonCanonical);
    }
    Ok(value)
}

/// A signed frame split into its parts, borrowed from the frame bytes.
///
/// Only the layout is checked here; the signature is checked by
/// [`crate::signed`].
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The signer's ed25519 public key bytes.
    pub signer: &'a [u8; SIGNER_LEN],
    /// The signature bytes.
    pub signature: &'a [u8; SIGNATURE_LEN],
    /// The signed payload: domain, kind, version, body.
    pub payload: &'a [u8],
    /// The body inside the payload.
    pub body: &'a [u8],
}

/// Builds the payload for a message: domain, kind, version, then the body.
pub fn encode_payload<T: Serialize + ?Sized>(
    kind: u8,
    version: u8,
    body: &T,
) -> Result<Vec<u8>, CodecError> {
    let mut payload = Vec::with_capacity(PAYLOAD_HEADER_LEN + 128);
    payload.extend_from_slice(&DOMAIN);
    payload.push(kind);
    payload.push(version);
    encode_into(body, &mut payload)?;
    Ok(payload)
}

/// Assembles a frame from its parts.
pub fn assemble_frame(
    signer: &[u8; SIGNER_LEN],
    signature: &[u8; SIGNATURE_LEN],
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(PAYLOAD_OFFSET + payload.len());
    frame.extend_from_slice(signer);
    frame.extend_from_slice(signature);
    frame.extend_from_slice(payload);
    frame
}

/// Splits a frame and checks its header against the expected kind and version.
///
/// `max_frame` bounds the whole frame; it is checked first.
pub fn parse_frame(
    frame: &[u8],
    kind: u8,
    version: u8,
    max_frame: usize,
) -> Result<Frame<'_>, CodecError> {
    let limit = max_frame.min(MAX_FRAME);
    if frame.len() > limit {
        return Err(CodecError::TooLarge {
            limit,
            found: frame.len(),
        });
    }
    let min = PAYLOAD_OFFSET + PAYLOAD_HEADER_LEN;
    if frame.len() < min {
        return Err(CodecError::Truncated {
            needed: min - frame.len(),
        });
    }
    let (signer, rest) = frame.split_at(SIGNER_LEN);
    let (signature, payload) = rest.split_at(SIGNATURE_LEN);
    let signer: &[u8; SIGNER_LEN] = signer
        .try_into()
        .map_err(|_| CodecError::Malformed("signer field".into()))?;
    let signature: &[u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| CodecError::Malformed("signature field".into()))?;
    let (domain, rest) = payload.split_at(DOMAIN.len());
    if domain != DOMAIN {
        return Err(CodecError::WrongDomain {
            found: String::from_utf8_lossy(domain).into_owned(),
        });
    }
    let (found_kind, found_version) = (rest[0], rest[1]);
    if found_kind != kind {
        return Err(CodecError::WrongKind {
            expected: kind,
            found: found_kind,
        });
    }
    if found_version != version {
        return Err(CodecError::UnknownVersion {
            kind,
            expected: version,
            found: found_version,
        });
    }
    Ok(Frame {
        signer,
        signature,
        payload,
        body: &rest[2..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: String,
        c: Vec<u32>,
        d: Option<bool>,
    }

    fn sample() -> Sample {
        Sample {
            a: 300,
            b: "frame".into(),
            c: vec![1, 2, 70000],
            d: Some(true),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&bytes, 1024).unwrap(), sample());
    }

    #[test]
    fn rejects_oversized_before_decoding() {
        let bytes = encode(&sample()).unwrap();
        let err = decode::<Sample>(&bytes, bytes.len() - 1).unwrap_err();
        assert_eq!(
            err,
            CodecError::TooLarge {
                limit: bytes.len() - 1,
                found: bytes.len()
            }
        );
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes, 1024),
            Err(CodecError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn rejects_truncated_at_every_length() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<Sample>(&bytes[..cut], 1024).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rejects_non_canonical_varint() {
        // 300 as a varint is [251, 44, 1]; the value 5 padded into the u16 form
        // ([251, 5, 0]) decodes to the same number but is not canonical.
        let value: u64 = 5;
        let canonical = encode(&value).unwrap();
        assert_eq!(canonical, vec![5]);
        let padded = vec![251u8, 5, 0];
        assert_eq!(decode::<u64>(&padded, 16), Err(CodecError::NonCanonical));
    }

    #[test]
    fn rejects_huge_length_prefix_without_allocating() {
        // A Vec<u32> claiming u64::MAX elements: varint marker 253 then 8 bytes.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u32>>(&bytes, 64).is_err());
    }

    #[test]
    fn frame_round_trip_and_header_checks() {
        let payload = encode_payload(7, 1, &sample()).unwrap();
        let frame = assemble_frame(&[1; 32], &[2; 64], &payload);
        let parsed = parse_frame(&frame, 7, 1, 4096).unwrap();
        assert_eq!(parsed.signer, &[1; 32]);
        assert_eq!(parsed.signature, &[2; 64]);
        assert_eq!(decode::<Sample>(parsed.body, 1024).unwrap(), sample());

        assert_eq!(
            parse_frame(&frame, 8, 1, 4096).unwrap_err(),
            CodecError::WrongKind {
                expected: 8,
                found: 7
            }
        );
        assert_eq!(
            parse_frame(&frame, 7, 2, 4096).unwrap_err(),
            CodecError::UnknownVersion {
                kind: 7,
                expected: 2,
                found: 1
            }
        );
        assert!(matches!(
            parse_frame(&frame, 7, 1, frame.len() - 1),
            Err(CodecError::TooLarge { .. })
        ));
        let mut bad_domain = frame.clone();
        bad_domain[PAYLOAD_OFFSET] ^= 1;
        assert!(matches!(
            parse_frame(&bad_domain, 7, 1, 4096),
            Err(CodecError::WrongDomain { .. })
        ));
        for cut in 0..PAYLOAD_OFFSET + PAYLOAD_HEADER_LEN {
            assert!(matches!(
                parse_frame(&frame[..cut], 7, 1, 4096),
                Err(CodecError::Truncated { .. })
            ));
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(a: u64, b in ".{0,40}", c in proptest::collection::vec(any::<u32>(), 0..20), d: Option<bool>) {
            let v = Sample { a, b, c, d };
            let bytes = encode(&v).unwrap();
            prop_assert_eq!(decode::<Sample>(&bytes, 4096).unwrap(), v);
        }

        #[test]
        fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Sample>(&bytes, 4096);
            let _ = parse_frame(&bytes, 1, 1, 4096);
        }
    }
}
