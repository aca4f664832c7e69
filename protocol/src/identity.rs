//! Node identity: [`NodeId`] and [`NodeKey`].
//!
//! A node's identity *is* its libp2p ed25519 key: the [`NodeId`] is the 32-byte
//! ed25519 public key, and it converts both ways with the libp2p `PeerId` of
//! the same key, so the id a peer has on the swarm and the id that signs its
//! receipts are one and the same.
//!
//! This module owns key material and the id conversions; it does not persist
//! keys (the node stores the secret in its data dir) and does not sign
//! messages (that is [`crate::signed`]).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Why a key or an id could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a valid ed25519 public key.
    #[error("not a valid ed25519 public key: {0}")]
    InvalidPublicKey(String),
    /// The public key is of small order (a "weak" key): no signature by it can be trusted.
    #[error("weak ed25519 public key (small order point) rejected")]
    WeakKey,
    /// The peer id does not embed an ed25519 public key (e.g. it is a hash of an RSA key).
    #[error("peer id {0} does not embed an ed25519 public key")]
    NotEd25519(String),
    /// The text is neither a peer id nor 64 hex digits.
    #[error("cannot parse node id {text:?}: expected a libp2p peer id (12D3Koo…) or 64 hex digits")]
    Parse {
        /// The text given.
        text: String,
    },
    /// The secret key bytes have the wrong length.
    #[error("secret key: expected 32 bytes, found {0}")]
    SecretLength(usize),
}

/// The id of a node: its ed25519 public key.
///
/// Displayed as the node's libp2p peer id (`12D3KooW…`), which is what
/// operators see in logs and in the swarm. Construction from raw bytes does not
/// validate the point: ids arrive in peer messages, and validity is checked
/// when a signature by the id is verified ([`NodeId::verifying_key`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps raw public key bytes (not validated; see the type docs).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeId(bytes)
    }

    /// The raw public key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The ed25519 verifying key, rejecting invalid and weak (small order) keys.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0)
            .map_err(|e| IdentityError::InvalidPublicKey(e.to_string()))?;
        if key.is_weak() {
            return Err(IdentityError::WeakKey);
        }
        Ok(key)
    }

    /// The libp2p peer id of this node.
    pub fn to_peer_id(&self) -> Result<PeerId, IdentityError> {
        let public = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0)
            .map_err(|e| IdentityError::InvalidPublicKey(e.to_string()))?;
        Ok(PeerId::from_public_key(&libp2p_identity::PublicKey::from(
            public,
        )))
    }

    /// The node id inside a libp2p peer id.
    ///
    /// Ed25519 peer ids embed the public key (identity multihash); peer ids of
    /// other key types are hashes and are rejected.
    pub fn from_peer_id(peer: &PeerId) -> Result<Self, IdentityError> {
        let mh = peer.as_ref();
        if mh.code() != 0 {
            return Err(IdentityError::NotEd25519(peer.to_base58()));
        }
        let public = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest())
            .map_err(|_| IdentityError::NotEd25519(peer.to_base58()))?;
        let ed = public
            .try_into_ed25519()
            .map_err(|_| IdentityError::NotEd25519(peer.to_base58()))?;
        Ok(NodeId(ed.to_bytes()))
    }

    /// Lowercase hex of the key bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_peer_id() {
            Ok(peer) => write!(f, "{peer}"),
            // Not a valid point: no peer id exists; show the bytes instead.
            Err(_) => write!(f, "invalid-key:{}", self.to_hex()),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &self.to_hex()[..16])
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;

    /// Parses a libp2p peer id or 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_err = || IdentityError::Parse { text: s.to_owned() };
        if s.len() == 64 {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(s, &mut bytes).map_err(|_| parse_err())?;
            return Ok(NodeId(bytes));
        }
        let peer = PeerId::from_str(s).map_err(|_| parse_err())?;
        NodeId::from_peer_id(&peer)
    }
}

/// A node's secret signing key (the libp2p ed25519 identity key).
pub struct NodeKey {
    signing: SigningKey,
    id: NodeId,
}

impl NodeKey {
    /// Generates a fresh key from the given randomness.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_signing_key(SigningKey::generate(rng))
    }

    /// Restores a key from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(secret))
    }

    /// Restores a key from a secret of unchecked length (e.g. read from a file).
    pub fn from_secret_slice(secret: &[u8]) -> Result<Self, IdentityError> {
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(
            secret
                .try_into()
                .map_err(|_| IdentityError::SecretLength(secret.len()))?,
        );
        Ok(Self::from_secret_bytes(&bytes))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let id = NodeId(signing.verifying_key().to_bytes());
        NodeKey { signing, id }
    }

    /// The 32 secret bytes (handle with care: zeroized when dropped).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// This key's node id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// Signs raw bytes. Protocol messages are signed through [`crate::signed`],
    /// which adds the domain tag; use this only for already-framed payloads.
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.signing.sign(message).to_bytes()
    }

    /// The same key as a libp2p identity keypair, for the swarm.
    pub fn to_libp2p(&self) -> Result<libp2p_identity::Keypair, IdentityError> {
        let mut bytes = self.secret_bytes();
        // `ed25519_from_bytes` zeroizes its input.
        libp2p_identity::Keypair::ed25519_from_bytes(bytes.as_mut())
            .map_err(|e| IdentityError::InvalidPublicKey(e.to_string()))
    }

    /// Reads the node key out of a libp2p keypair.
    pub fn from_libp2p(keypair: &libp2p_identity::Keypair) -> Result<Self, IdentityError> {
        let ed = keypair
            .clone()
            .try_into_ed25519()
            .map_err(|_| IdentityError::NotEd25519(keypair.public().to_peer_id().to_base58()))?;
        let secret = ed.secret();
        Self::from_secret_slice(secret.as_ref())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key(seed: u64) -> NodeKey {
        NodeKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn node_id_round_trips_with_peer_id() {
        let k = key(1);
        let peer = k.node_id().to_peer_id().unwrap();
        assert_eq!(NodeId::from_peer_id(&peer).unwrap(), k.node_id());
        // And the libp2p keypair made from the node key has the same peer id.
        assert_eq!(k.to_libp2p().unwrap().public().to_peer_id(), peer);
        assert_eq!(peer.to_base58(), k.node_id().to_string());
    }

    #[test]
    fn libp2p_keypair_round_trip() {
        let lp = libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
        let k = NodeKey::from_libp2p(&lp).unwrap();
        assert_eq!(k.node_id().to_peer_id().unwrap(), lp.public().to_peer_id());
    }

    #[test]
    fn parse_display_and_hex() {
        let id = key(2).node_id();
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.to_hex().parse::<NodeId>().unwrap(), id);
        assert!(matches!(
            "nonsense".parse::<NodeId>(),
            Err(IdentityError::Parse { .. })
        ));
    }

    #[test]
    fn rejects_non_ed25519_peer_id() {
        // A sha256-multihash peer id (as used for large keys) embeds no key.
        let mut bytes = vec![0x12, 0x20];
        bytes.extend_from_slice(&[9u8; 32]);
        let mh = libp2p_identity::PeerId::from_bytes(&bytes).unwrap();
        assert!(matches!(
            NodeId::from_peer_id(&mh),
            Err(IdentityError::NotEd25519(_))
        ));
    }

    #[test]
    fn rejects_weak_key() {
        // The identity point (0, 1) encodes as 1 followed by zeros: small order.
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        assert_eq!(
            NodeId::from_bytes(bytes).verifying_key(),
            Err(IdentityError::WeakKey)
        );
    }

    #[test]
    fn secret_length_checked() {
        assert_eq!(
            NodeKey::from_secret_slice(&[0u8; 31]).unwrap_err(),
            IdentityError::SecretLength(31)
        );
        let k = key(3);
        let again = NodeKey::from_secret_slice(k.secret_bytes().as_ref()).unwrap();
        assert_eq!(again.node_id(), k.node_id());
    }

    proptest! {
        #[test]
        fn prop_peer_id_round_trip(seed: u64) {
            let id = key(seed).node_id();
            let peer = id.to_peer_id().unwrap();
            prop_assert_eq!(NodeId::from_peer_id(&peer).unwrap(), id);
        }
    }
}
