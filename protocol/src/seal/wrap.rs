//! Wrapping a [`JobKey`] to a node's X25519 wrap key.

use std::fmt;

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::{EphemeralSecret, PublicKey, SharedSecret, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::{JOB_KEY_LEN, JobKey, SealError};

/// BLAKE3 `derive_key` context of the key-encryption key.
pub const KEY_WRAP_CONTEXT: &str = "rendertrust 2026-11 key-wrap v1";

/// A node's X25519 secret for receiving wrapped job keys.
///
/// Its public half ([`public`](Self::public)) is published in the node's
/// signed capacity advert; see the [module docs](super) for why it is separate
/// from the ed25519 identity key. Zeroized on drop; `Debug` shows only the
/// public key.
#[derive(Clone)]
pub struct WrapSecret(StaticSecret);

impl WrapSecret {
    /// Draws a fresh wrap secret from `rng`.
    pub fn generate<G: CryptoRng + ?Sized>(rng: &mut G) -> Self {
        Self(StaticSecret::random_from_rng(rng))
    }

    /// Restores a wrap secret from its 32 bytes (as saved by
    /// [`to_bytes`](Self::to_bytes)).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    /// The secret's 32 bytes, for the node's key store. Handle with care.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The X25519 public key to publish in the capacity advert.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl fmt::Debug for WrapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrapSecret")
            .field("public", &hex::encode(self.public()))
            .finish_non_exhaustive()
    }
}

/// A [`JobKey`] encrypted to one recipient's wrap key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// The sender's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    /// The job key encrypted under the key-encryption key.
    pub ciphertext: [u8; JOB_KEY_LEN],
    /// The Poly1305 tag over the ciphertext and context.
    pub tag: [u8; 16],
}

/// KEK = BLAKE3 derive_key([`KEY_WRAP_CONTEXT`], ephemeral || recipient ||
/// shared): binding both public keys makes the KEK unique to this exchange.
fn key_encryption_key(
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
    shared: &SharedSecret,
) -> XChaCha20Poly1305 {
    let mut hasher = blake3::Hasher::new_derive_key(KEY_WRAP_CONTEXT);
    hasher.update(ephemeral);
    hasher.update(recipient);
    hasher.update(shared.as_bytes());
    let mut kek = Key::from(*hasher.finalize().as_bytes());
    let aead = XChaCha20Poly1305::new(&kek);
    kek.as_mut_slice().zeroize();
    aead
}

/// Wraps `key` to the holder of the wrap secret whose public key is
/// `recipient` (read from a verified capacity advert), bound to `context`
/// (for example the job id). Uses a fresh ephemeral key from `rng`.
///
/// The nonce is all zeros: the KEK depends on the fresh ephemeral key, so it
/// encrypts exactly one message.
pub fn wrap_key<G: CryptoRng + ?Sized>(
    key: &JobKey,
    recipient: &[u8; 32],
    context: &[u8],
    rng: &mut G,
) -> Result<WrappedKey, SealError> {
    let ephemeral_secret = EphemeralSecret::random_from_rng(rng);
    let ephemeral = PublicKey::from(&ephemeral_secret).to_bytes();
    let shared = ephemeral_secret.diffie_hellman(&PublicKey::from(*recipient));
    if !shared.was_contributory() {
        return Err(SealError::LowOrderRecipientKey);
    }
    let aead = key_encryption_key(&ephemeral, recipient, &shared);
    let mut buf = Zeroizing::new(*key.as_bytes());
    let tag = aead
        .encrypt_inout_detached(&XNonce::default(), context, buf.as_mut_slice().into())
        .map_err(|_| SealError::Encrypt { index: 0 })?;
    let mut tag_bytes = [0u8; 16];
    tag_bytes.copy_from_slice(&tag);
    Ok(WrappedKey {
        ephemeral,
        ciphertext: *buf,
        tag: tag_bytes,
    })
}

/// Recovers the job key from `wrapped` with the recipient's wrap secret and
/// the `context` it was wrapped under.
pub fn unwrap_key(
    secret: &WrapSecret,
    wrapped: &WrappedKey,
    context: &[u8],
) -> Result<JobKey, SealError> {
    let shared = secret.0.diffie_hellman(&PublicKey::from(wrapped.ephemeral));
    if !shared.was_contributory() {
        return Err(SealError::LowOrderEphemeralKey);
    }
    let aead = key_encryption_key(&wrapped.ephemeral, &secret.public(), &shared);
    let mut buf = Zeroizing::new(wrapped.ciphertext);
    aead.decrypt_inout_detached(
        &XNonce::default(),
        context,
        buf.as_mut_slice().into(),
        &Tag::from(wrapped.tag),
    )
    .map_err(|_| SealError::UnwrapAuthentication)?;
    Ok(JobKey::from_bytes(*buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    /// u-coordinates of low-order points on Curve25519 (and their
    /// non-canonical encodings).
    const LOW_ORDER: [[u8; 32]; 4] = {
        let mut points = [[0u8; 32]; 4];
        // u = 0
        // u = 1
        points[1][0] = 1;
        // u = p - 1
        let mut i = 0;
        while i < 32 {
            points[2][i] = 0xff;
            i += 1;
        }
        points[2][0] = 0xec;
        points[2][31] = 0x7f;
        // u = p (non-canonical 0)
        let mut i = 0;
        while i < 32 {
            points[3][i] = 0xff;
            i += 1;
        }
        points[3][0] = 0xed;
        points[3][31] = 0x7f;
        points
    };

    #[test]
    fn wrap_round_trip() {
        let mut r = rng(1);
        let node = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let wrapped = wrap_key(&key, &node.public(), b"job-1", &mut r).unwrap();
        let back = unwrap_key(&node, &wrapped, b"job-1").unwrap();
        assert_eq!(back.as_bytes(), key.as_bytes());
        assert_ne!(&wrapped.ciphertext, key.as_bytes());
    }

    #[test]
    fn wrapping_twice_differs() {
        let mut r = rng(2);
        let node = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let a = wrap_key(&key, &node.public(), b"job", &mut r).unwrap();
        let b = wrap_key(&key, &node.public(), b"job", &mut r).unwrap();
        assert_ne!(a.ephemeral, b.ephemeral);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn kek_is_derived_as_specified() {
        let mut r = rng(3);
        let node = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let wrapped = wrap_key(&key, &node.public(), b"ctx", &mut r).unwrap();
        let shared = x25519_dalek::x25519(node.to_bytes(), wrapped.ephemeral);
        let mut input = Vec::new();
        input.extend_from_slice(&wrapped.ephemeral);
        input.extend_from_slice(&node.public());
        input.extend_from_slice(&shared);
        let kek = blake3::derive_key(KEY_WRAP_CONTEXT, &input);
        let aead = XChaCha20Poly1305::new(&Key::from(kek));
        let mut buf = wrapped.ciphertext;
        aead.decrypt_inout_detached(
            &XNonce::from([0u8; 24]),
            b"ctx",
            buf.as_mut_slice().into(),
            &Tag::from(wrapped.tag),
        )
        .unwrap();
        assert_eq!(&buf, key.as_bytes());
    }

    #[test]
    fn wrong_recipient_fails() {
        let mut r = rng(4);
        let node = WrapSecret::generate(&mut r);
        let other = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let wrapped = wrap_key(&key, &node.public(), b"job", &mut r).unwrap();
        assert!(matches!(
            unwrap_key(&other, &wrapped, b"job"),
            Err(SealError::UnwrapAuthentication)
        ));
    }

    #[test]
    fn wrong_context_fails() {
        let mut r = rng(5);
        let node = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let wrapped = wrap_key(&key, &node.public(), b"job-1", &mut r).unwrap();
        for ctx in [&b"job-2"[..], b"", b"job-1\0"] {
            assert!(matches!(
                unwrap_key(&node, &wrapped, ctx),
                Err(SealError::UnwrapAuthentication)
            ));
        }
    }

    #[test]
    fn tampering_any_byte_fails() {
        let mut r = rng(6);
        let node = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let wrapped = wrap_key(&key, &node.public(), b"job", &mut r).unwrap();
        for i in 0..32 {
            let mut t = wrapped.clone();
            t.ephemeral[i] ^= 1;
            // Flipping the top bit of the last byte is masked by X25519, but
            // the KEK hashes the ephemeral bytes, so it still fails.
            assert!(matches!(
                unwrap_key(&node, &t, b"job"),
                Err(SealError::UnwrapAuthentication)
            ));
            let mut t = wrapped.clone();
            t.ephemeral[31] ^= 0x80;
            assert!(matches!(
                unwrap_key(&node, &t, b"job"),
                Err(SealError::UnwrapAuthentication)
            ));
            let mut t = wrapped.clone();
            t.ciphertext[i] ^= 0x40;
            assert!(matches!(
                unwrap_key(&node, &t, b"job"),
                Err(SealError::UnwrapAuthentication)
            ));
        }
        for i in 0..16 {
            let mut t = wrapped.clone();
            t.tag[i] ^= 0x02;
            assert!(matches!(
                unwrap_key(&node, &t, b"job"),
                Err(SealError::UnwrapAuthentication)
            ));
        }
    }

    #[test]
    fn low_order_ephemeral_is_rejected() {
        let mut r = rng(7);
        let node = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let wrapped = wrap_key(&key, &node.public(), b"job", &mut r).unwrap();
        for point in LOW_ORDER {
            let t = WrappedKey {
                ephemeral: point,
                ..wrapped.clone()
            };
            assert!(
                matches!(
                    unwrap_key(&node, &t, b"job"),
                    Err(SealError::LowOrderEphemeralKey)
                ),
                "{}",
                hex::encode(point)
            );
        }
    }

    #[test]
    fn low_order_recipient_is_rejected() {
        let mut r = rng(8);
        let key = JobKey::generate(&mut r);
        for point in LOW_ORDER {
            assert!(matches!(
                wrap_key(&key, &point, b"job", &mut r),
                Err(SealError::LowOrderRecipientKey)
            ));
        }
    }

    #[test]
    fn wrap_secret_bytes_round_trip_and_debug_hides_secret() {
        let mut r = rng(9);
        let node = WrapSecret::generate(&mut r);
        let restored = WrapSecret::from_bytes(node.to_bytes());
        assert_eq!(restored.public(), node.public());
        let shown = format!("{node:?}");
        assert!(shown.contains(&hex::encode(node.public())));
        assert!(!shown.contains(&hex::encode(node.to_bytes())));
    }

    #[test]
    fn wrapped_key_serde_round_trip() {
        let mut r = rng(10);
        let node = WrapSecret::generate(&mut r);
        let key = JobKey::generate(&mut r);
        let wrapped = wrap_key(&key, &node.public(), b"job", &mut r).unwrap();
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&wrapped, config).unwrap();
        let (back, _): (WrappedKey, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, wrapped);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_wrap_round_trip(
            seed in any::<u64>(),
            key_bytes in any::<[u8; 32]>(),
            ctx in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut r = rng(seed);
            let node = WrapSecret::generate(&mut r);
            let key = JobKey::from_bytes(key_bytes);
            let wrapped = wrap_key(&key, &node.public(), &ctx, &mut r).unwrap();
            let back = unwrap_key(&node, &wrapped, &ctx).unwrap();
            prop_assert_eq!(back.as_bytes(), &key_bytes);
        }
    }
}
