//! Signed messages: [`Signed<T>`].
//!
//! A `Signed<T>` is the frame bytes of one message (layout in [`crate::codec`]):
//! the signer's ed25519 key, the signature, and the payload
//! `DOMAIN | kind | version | body`. The signature covers the whole payload,
//! so the domain tag and the message kind are signed: a signature over a
//! receipt can never verify as a capacity advert (or as any non-RenderTrust
//! message signed with the same key).
//!
//! Reading a message from a peer takes three steps, cheapest first:
//! 1. [`Signed::from_bytes`]: size limit, domain, kind and version (no crypto);
//! 2. signature: [`Signed::verify`], or [`verify_batch`] for many at once
//!    (ed25519 batch verification, about twice as fast per signature);
//! 3. body decode (bounded, canonical), field validation
//!    ([`WireMessage::validate`]) and the check that the signer is the node the
//!    message names ([`WireMessage::signer`]).
//!
//! Nothing is decoded into a `T` before its signature has been checked, so a
//! state machine never sees an unauthenticated value.
//!
//! Signatures are ed25519 as in RFC 8032, with weak (small order) public keys
//! rejected. The single-message path uses `verify_strict`; when a batch fails,
//! each message is re-checked alone with `verify_strict` to find the culprit,
//! so a batch never accepts what the single path would reject for a honest
//! signer's key.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::codec::{self, CodecError};
use crate::identity::{IdentityError, NodeId, NodeKey};
use crate::wire::{ValidationError, WireMessage};

/// Why a signed message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    /// The frame or the body could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The signer key is invalid or weak.
    #[error("signer key: {0}")]
    Signer(#[from] IdentityError),
    /// The signature does not verify for this signer and payload.
    #[error("bad signature by {signer}")]
    BadSignature {
        /// The claimed signer.
        signer: NodeId,
    },
    /// The message names another node than the one that signed it.
    #[error("signed by {signer} but the message names {named}")]
    SignerMismatch {
        /// Who signed.
        signer: NodeId,
        /// Who the message names.
        named: NodeId,
    },
    /// The body decodes but a field is out of bounds.
    #[error("invalid message: {0}")]
    Invalid(#[from] ValidationError),
}

/// A 32-byte message id: BLAKE3 (keyed by a domain) of signer and payload.
///
/// Gossipsub uses it as the message id, ledgers as the receipt id. It does not
/// cover the signature, so one message has one id however it was signed.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct MessageId(pub [u8; 32]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", &hex::encode(self.0)[..16])
    }
}

fn id_of(signer: &[u8; 32], payload: &[u8]) -> MessageId {
    let mut h = blake3::Hasher::new_derive_key("rendertrust 2026-11 message id v1");
    h.update(signer);
    h.update(payload);
    MessageId(*h.finalize().as_bytes())
}

/// The id [`Signed::id`] gives `message` once `signer` signs it, computed
/// without signing (e.g. a ledger chaining its rollup headers, which its
/// driver signs later).
pub fn message_id<T: WireMessage>(signer: &NodeId, message: &T) -> Result<MessageId, CodecError> {
    let payload = codec::encode_payload(T::KIND as u8, T::VERSION, message)?;
    Ok(id_of(signer.as_bytes(), &payload))
}

/// A message of type `T` with its signature, as bytes.
pub struct Signed<T> {
    frame: Vec<u8>,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            frame: self.frame.clone(),
            _kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.frame == other.frame
    }
}

impl<T> Eq for Signed<T> {}

impl<T: WireMessage> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("kind", &T::KIND)
            .field("signer", &self.signer())
            .field("len", &self.frame.len())
            .finish()
    }
}

impl<T: WireMessage> Signed<T> {
    /// Largest accepted frame for this message type.
    pub const MAX_FRAME: usize = codec::PAYLOAD_OFFSET + codec::PAYLOAD_HEADER_LEN + T::MAX_BODY;

    /// Signs a message. Fails if it does not encode within `T::MAX_BODY`, if
    /// a field is out of bounds, or if it names another signer than `key`.
    pub fn sign(key: &NodeKey, message: &T) -> Result<Self, SignedError> {
        message.validate()?;
        if let Some(named) = message.signer()
            && *named != key.node_id()
        {
            return Err(SignedError::SignerMismatch {
                signer: key.node_id(),
                named: *named,
            });
        }
        let payload = codec::encode_payload(T::KIND as u8, T::VERSION, message)?;
        let body_len = payload.len() - codec::PAYLOAD_HEADER_LEN;
        if body_len > T::MAX_BODY {
            return Err(CodecError::TooLarge {
                limit: T::MAX_BODY,
                found: body_len,
            }
            .into());
        }
        let signature = key.sign_raw(&payload);
        Ok(Signed {
            frame: codec::assemble_frame(key.node_id().as_bytes(), &signature, &payload),
            _kind: PhantomData,
        })
    }

    /// Takes frame bytes from a peer, checking size, domain, kind and version.
    /// The signature is *not* checked yet.
    pub fn from_bytes(frame: Vec<u8>) -> Result<Self, SignedError> {
        codec::parse_frame(&frame, T::KIND as u8, T::VERSION, Self::MAX_FRAME)?;
        Ok(Signed {
            frame,
            _kind: PhantomData,
        })
    }

    /// Like [`Signed::from_bytes`], copying from a slice.
    pub fn from_slice(frame: &[u8]) -> Result<Self, SignedError> {
        codec::parse_frame(frame, T::KIND as u8, T::VERSION, Self::MAX_FRAME)?;
        Ok(Signed {
            frame: frame.to_vec(),
            _kind: PhantomData,
        })
    }

    fn parts(&self) -> codec::Frame<'_> {
        // The frame was checked when this value was built; re-splitting cannot fail.
        match codec::parse_frame(&self.frame, T::KIND as u8, T::VERSION, Self::MAX_FRAME) {
            Ok(parts) => parts,
            Err(_) => codec::Frame {
                signer: &[0; 32],
                signature: &[0; 64],
                payload: &[],
                body: &[],
            },
        }
    }

    /// The frame bytes, as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.frame
    }

    /// The frame bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.frame
    }

    /// Who claims to have signed (checked by `verify`).
    pub fn signer(&self) -> NodeId {
        NodeId::from_bytes(*self.parts().signer)
    }

    /// The message id (see [`MessageId`]).
    pub fn id(&self) -> MessageId {
        let parts = self.parts();
        id_of(parts.signer, parts.payload)
    }

    /// Checks the signature, then decodes and validates the body.
    pub fn verify(&self) -> Result<T, SignedError> {
        let parts = self.parts();
        let signer = NodeId::from_bytes(*parts.signer);
        let key = signer.verifying_key()?;
        let signature = Signature::from_bytes(parts.signature);
        key.verify_strict(parts.payload, &signature)
            .map_err(|_| SignedError::BadSignature { signer })?;
        self.decode_verified_body()
    }

    /// Decodes the body of a message whose signature has been checked.
    fn decode_verified_body(&self) -> Result<T, SignedError> {
        let parts = self.parts();
        let message: T = codec::decode(parts.body, T::MAX_BODY)?;
        message.validate()?;
        let signer = NodeId::from_bytes(*parts.signer);
        if let Some(named) = message.signer()
            && *named != signer
        {
            return Err(SignedError::SignerMismatch {
                signer,
                named: *named,
            });
        }
        Ok(message)
    }
}

/// A bounded cache of decompressed verifying keys.
///
/// Decompressing an ed25519 point costs about as much as a quarter of a
/// signature check; a ledger sees receipts from a bounded set of workers, so
/// it keeps their keys. When full, the cache is cleared (simple and bounded).
#[derive(Debug)]
pub struct KeyCache {
    keys: BTreeMap<[u8; 32], VerifyingKey>,
    capacity: usize,
}

impl KeyCache {
    /// A cache holding at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            keys: BTreeMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The verifying key for `signer`, decompressed and checked once.
    pub fn get(&mut self, signer: &[u8; 32]) -> Result<VerifyingKey, IdentityError> {
        if let Some(key) = self.keys.get(signer) {
            return Ok(*key);
        }
        let key = NodeId::from_bytes(*signer).verifying_key()?;
        if self.keys.len() >= self.capacity {
            self.keys.clear();
        }
        self.keys.insert(*signer, key);
        Ok(key)
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(65_536)
    }
}

/// Verifies many messages at once with ed25519 batch verification and decodes
/// them. Returns one result per input, in order.
///
/// If the batch equation fails, every message is checked alone so the good
/// ones still pass and each bad one gets its own error.
pub fn verify_batch<T: WireMessage>(
    items: &[Signed<T>],
    cache: &mut KeyCache,
) -> Vec<Result<T, SignedError>> {
    let mut out: Vec<Option<Result<T, SignedError>>> = Vec::with_capacity(items.len());
    let mut messages: Vec<&[u8]> = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    let mut batched = Vec::with_capacity(items.len());

    for (i, item) in items.iter().enumerate() {
        let parts = item.parts();
        match cache.get(parts.signer) {
            Ok(key) => {
                messages.push(parts.payload);
                signatures.push(Signature::from_bytes(parts.signature));
                keys.push(key);
                batched.push(i);
                out.push(None);
            }
            Err(e) => out.push(Some(Err(e.into()))),
        }
    }

    let batch_ok = ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
    for (slot, &i) in batched.iter().enumerate() {
        let result = if batch_ok {
            items[i].decode_verified_body()
        } else {
            match keys[slot].verify_strict(messages[slot], &signatures[slot]) {
                Ok(()) => items[i].decode_verified_body(),
                Err(_) => Err(SignedError::BadSignature {
                    signer: items[i].signer(),
                }),
            }
        };
        out[i] = Some(result);
    }
    out.into_iter()
        .map(|r| {
            r.unwrap_or(Err(SignedError::Codec(CodecError::Malformed(
                "unverified".into(),
            ))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::samples;
    use crate::wire::{CapacityAdvert, Receipt, RollupHeader};
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key(seed: u64) -> NodeKey {
        NodeKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn sign_verify_round_trip() {
        let k = key(1);
        let r = samples::receipt(k.node_id(), 3);
        let s = Signed::sign(&k, &r).unwrap();
        assert_eq!(s.verify().unwrap(), r);
        let again = Signed::<Receipt>::from_bytes(s.as_bytes().to_vec()).unwrap();
        assert_eq!(again.verify().unwrap(), r);
        assert_eq!(again.id(), s.id());
        assert_eq!(again.signer(), k.node_id());
    }

    #[test]
    fn message_id_without_signing_matches() {
        let k = key(1);
        let r = samples::receipt(k.node_id(), 3);
        let s = Signed::sign(&k, &r).unwrap();
        assert_eq!(message_id(&k.node_id(), &r).unwrap(), s.id());
        assert_ne!(message_id(&key(2).node_id(), &r).unwrap(), s.id());
    }

    #[test]
    fn bad_signature_rejected() {
        let k = key(1);
        let s = Signed::sign(&k, &samples::receipt(k.node_id(), 0)).unwrap();
        let mut bytes = s.into_bytes();
        bytes[codec::SIGNER_LEN + 5] ^= 0x40; // inside the signature
        let tampered = Signed::<Receipt>::from_bytes(bytes).unwrap();
        assert!(matches!(
            tampered.verify(),
            Err(SignedError::BadSignature { .. })
        ));
    }

    #[test]
    fn tampered_body_rejected() {
        let k = key(1);
        let s = Signed::sign(&k, &samples::receipt(k.node_id(), 0)).unwrap();
        let mut bytes = s.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = Signed::<Receipt>::from_bytes(bytes).unwrap();
        assert!(matches!(
            tampered.verify(),
            Err(SignedError::BadSignature { .. })
        ));
    }

    #[test]
    fn other_signer_rejected() {
        // A frame re-labelled with another node's key does not verify.
        let (a, b) = (key(1), key(2));
        let s = Signed::sign(&a, &samples::receipt(a.node_id(), 0)).unwrap();
        let mut bytes = s.into_bytes();
        bytes[..32].copy_from_slice(b.node_id().as_bytes());
        let relabelled = Signed::<Receipt>::from_bytes(bytes).unwrap();
        assert!(matches!(
            relabelled.verify(),
            Err(SignedError::BadSignature { .. })
        ));
    }

    #[test]
    fn signer_must_match_named_node() {
        let (a, b) = (key(1), key(2));
        // Signing a receipt that names b with a's key is refused...
        assert!(matches!(
            Signed::sign(&a, &samples::receipt(b.node_id(), 0)),
            Err(SignedError::SignerMismatch { .. })
        ));
        // ...and a hand-built frame doing it anyway is rejected on verify.
        let payload = codec::encode_payload(
            Receipt::KIND as u8,
            Receipt::VERSION,
            &samples::receipt(b.node_id(), 0),
        )
        .unwrap();
        let sig = a.sign_raw(&payload);
        let frame = codec::assemble_frame(a.node_id().as_bytes(), &sig, &payload);
        let s = Signed::<Receipt>::from_bytes(frame).unwrap();
        assert!(matches!(
            s.verify(),
            Err(SignedError::SignerMismatch { .. })
        ));
    }

    #[test]
    fn wrong_domain_kind_never_verifies() {
        // A capacity advert and a receipt are signed by the same key; the
        // advert's frame is refused as a receipt before any signature check,
        // and re-labelling its kind (and version) byte breaks the signature.
        let k = key(4);
        let advert = Signed::sign(&k, &samples::capacity(k.node_id())).unwrap();
        let err = Signed::<Receipt>::from_bytes(advert.as_bytes().to_vec()).unwrap_err();
        assert!(matches!(
            err,
            SignedError::Codec(CodecError::WrongKind { .. })
        ));

        let mut bytes = advert.into_bytes();
        bytes[codec::PAYLOAD_OFFSET + codec::DOMAIN.len()] = Receipt::KIND as u8;
        // The version byte too, so the frame reaches the signature check.
        bytes[codec::PAYLOAD_OFFSET + codec::DOMAIN.len() + 1] = Receipt::VERSION;
        let relabelled = Signed::<Receipt>::from_bytes(bytes).unwrap();
        assert!(matches!(
            relabelled.verify(),
            Err(SignedError::BadSignature { .. })
        ));
    }

    #[test]
    fn signature_over_foreign_domain_never_verifies() {
        // A signature by the same key over the payload bytes without our
        // domain tag (as another protocol might produce) is rejected.
        let k = key(5);
        let payload = codec::encode_payload(
            Receipt::KIND as u8,
            Receipt::VERSION,
            &samples::receipt(k.node_id(), 0),
        )
        .unwrap();
        let foreign_sig = k.sign_raw(&payload[codec::DOMAIN.len()..]);
        let frame = codec::assemble_frame(k.node_id().as_bytes(), &foreign_sig, &payload);
        let s = Signed::<Receipt>::from_bytes(frame).unwrap();
        assert!(matches!(s.verify(), Err(SignedError::BadSignature { .. })));
    }

    #[test]
    fn unknown_version_rejected() {
        let k = key(1);
        let s = Signed::sign(&k, &samples::receipt(k.node_id(), 0)).unwrap();
        let mut bytes = s.into_bytes();
        bytes[codec::PAYLOAD_OFFSET + codec::DOMAIN.len() + 1] = 99;
        assert!(matches!(
            Signed::<Receipt>::from_bytes(bytes),
            Err(SignedError::Codec(CodecError::UnknownVersion {
                found: 99,
                ..
            }))
        ));
    }

    #[test]
    fn truncated_and_oversized_rejected() {
        let k = key(1);
        let s = Signed::sign(&k, &samples::receipt(k.node_id(), 0)).unwrap();
        let bytes = s.into_bytes();
        for cut in 0..bytes.len() {
            let r = Signed::<Receipt>::from_slice(&bytes[..cut]).and_then(|s| s.verify());
            assert!(r.is_err(), "cut at {cut} accepted");
        }
        let mut big = bytes.clone();
        big.resize(Signed::<Receipt>::MAX_FRAME + 1, 0);
        assert!(matches!(
            Signed::<Receipt>::from_bytes(big),
            Err(SignedError::Codec(CodecError::TooLarge { .. }))
        ));
    }

    #[test]
    fn trailing_bytes_in_body_rejected_even_if_signed() {
        let k = key(1);
        let mut payload = codec::encode_payload(
            Receipt::KIND as u8,
            Receipt::VERSION,
            &samples::receipt(k.node_id(), 0),
        )
        .unwrap();
        payload.push(0);
        let sig = k.sign_raw(&payload);
        let s = Signed::<Receipt>::from_bytes(codec::assemble_frame(
            k.node_id().as_bytes(),
            &sig,
            &payload,
        ))
        .unwrap();
        assert!(matches!(
            s.verify(),
            Err(SignedError::Codec(CodecError::TrailingBytes { .. }))
        ));
    }

    #[test]
    fn invalid_fields_rejected_even_if_signed() {
        let k = key(1);
        let mut r = samples::receipt(k.node_id(), 0);
        r.finished_at_ms = r.started_at_ms - 1;
        assert!(matches!(Signed::sign(&k, &r), Err(SignedError::Invalid(_))));
        let payload = codec::encode_payload(Receipt::KIND as u8, Receipt::VERSION, &r).unwrap();
        let sig = k.sign_raw(&payload);
        let s = Signed::<Receipt>::from_bytes(codec::assemble_frame(
            k.node_id().as_bytes(),
            &sig,
            &payload,
        ))
        .unwrap();
        assert!(matches!(s.verify(), Err(SignedError::Invalid(_))));
    }

    #[test]
    fn weak_signer_key_rejected() {
        let k = key(1);
        let s = Signed::sign(&k, &samples::receipt(k.node_id(), 0)).unwrap();
        let mut bytes = s.into_bytes();
        let mut weak = [0u8; 32];
        weak[0] = 1;
        bytes[..32].copy_from_slice(&weak);
        let s = Signed::<Receipt>::from_bytes(bytes).unwrap();
        assert!(matches!(
            s.verify(),
            Err(SignedError::Signer(IdentityError::WeakKey))
        ));
        let results = verify_batch(&[s], &mut KeyCache::default());
        assert!(matches!(
            results[0],
            Err(SignedError::Signer(IdentityError::WeakKey))
        ));
    }

    #[test]
    fn batch_verifies_and_isolates_bad_items() {
        let keys: Vec<NodeKey> = (0..8).map(key).collect();
        let mut items: Vec<Signed<Receipt>> = (0..64)
            .map(|i| {
                let k = &keys[i % keys.len()];
                Signed::sign(k, &samples::receipt(k.node_id(), i as u32)).unwrap()
            })
            .collect();
        let mut cache = KeyCache::new(4); // smaller than the signer set: exercises clearing
        let good = verify_batch(&items, &mut cache);
        assert!(good.iter().all(|r| r.is_ok()));

        // Corrupt two signatures: exactly those two fail.
        for bad in [5usize, 40] {
            let mut bytes = items[bad].as_bytes().to_vec();
            bytes[40] ^= 1;
            items[bad] = Signed::from_bytes(bytes).unwrap();
        }
        let results = verify_batch(&items, &mut cache);
        for (i, r) in results.iter().enumerate() {
            if i == 5 || i == 40 {
                assert!(
                    matches!(r, Err(SignedError::BadSignature { .. })),
                    "item {i}"
                );
            } else {
                assert_eq!(r.as_ref().unwrap().task.index, i as u32);
            }
        }
    }

    #[test]
    fn rollup_and_capacity_round_trip() {
        let k = key(9);
        let h = RollupHeader {
            epoch: 3,
            root: [1; 32],
            count: 10,
            ledger: k.node_id(),
            prev: [0; 32],
            closed_at_ms: 5,
        };
        assert_eq!(Signed::sign(&k, &h).unwrap().verify().unwrap(), h);
        let c: CapacityAdvert = samples::capacity(k.node_id());
        assert_eq!(Signed::sign(&k, &c).unwrap().verify().unwrap(), c);
    }

    proptest! {
        #[test]
        fn prop_any_bit_flip_is_rejected(seed in 0u64..1000, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let k = key(seed);
            let s = Signed::sign(&k, &samples::receipt(k.node_id(), seed as u32)).unwrap();
            let mut bytes = s.as_bytes().to_vec();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let r = Signed::<Receipt>::from_bytes(bytes).and_then(|s| s.verify());
            prop_assert!(r.is_err(), "flip of bit {} at byte {} accepted", bit, i);
        }

        #[test]
        fn prop_arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(s) = Signed::<Receipt>::from_bytes(bytes) {
                let _ = s.verify();
            }
        }
    }
}
