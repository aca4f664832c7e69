//! Anchor backends: where a ledger makes its signed epoch rollups permanent,
//! and where anyone reads an anchored root back to check a receipt.
//!
//! One trait, [`AnchorBackend`], two backends:
//!
//! | backend | anchorer | what is kept | set-up |
//! |---|---|---|---|
//! | [`journal`] (default) | the ledger's [`NodeId`] | every `Signed<RollupHeader>`, hash-chained, in the sled tree `anchors` | none |
//! | [`evm`] | the ledger's EVM account | `(epoch, root, count)` in the anchor contract (`node/contracts/`), one transaction per epoch | an RPC URL, a funded key, a deployed contract |
//!
//! Reading is integrity-checked: the journal re-verifies the ledger's whole
//! chain (every signature, every `prev` link) and reports a broken one as
//! [`AnchorError::Tampered`]; the EVM backend only talks to a contract whose
//! runtime code is exactly the committed artifact's.
//!
//! [`verify_receipt_inclusion`] is the pure check behind `receipt verify`: a
//! receipt id, its inclusion proof and the anchored root give a [`Verdict`]
//! that says why. [`check_receipt`] fetches the root from a backend first.
//!
//! This module owns no protocol rule: which epoch a receipt is in, which
//! receipts make a root and who anchors an epoch are `protocol::rollup` and
//! `protocol::hrw`'s to decide. The hash chain's link is
//! [`header_hash`] (the header's [`MessageId`]).

pub mod evm;
pub mod journal;

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use alloy::primitives::{Address, B256};
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::merkle::{Hash32, InclusionProof};
use rendertrust_protocol::signed::{MessageId, Signed, SignedError};
use rendertrust_protocol::wire::RollupHeader;
use serde::Serialize;

use crate::config::{AnchorBackendKind, AnchorConfig};
use crate::store::{Store, StoreError};

pub use evm::EvmAnchor;
pub use journal::Journal;

/// Where a ledger anchors its epoch roots, and where verifiers read them back.
pub trait AnchorBackend: Send + Sync {
    /// Anchors one signed rollup header (its signature is checked first).
    /// Anchoring the same header again is a no-op that reports
    /// `already_anchored`; another root for an anchored epoch is a
    /// [`AnchorError::Conflict`].
    fn anchor(
        &self,
        header: &Signed<RollupHeader>,
    ) -> impl Future<Output = Result<AnchorReceipt, AnchorError>> + Send;

    /// The root `anchorer` anchored for `epoch`, integrity-checked; `None`
    /// when it anchored nothing for that epoch.
    fn anchored_root(
        &self,
        anchorer: &Anchorer,
        epoch: u64,
    ) -> impl Future<Output = Result<Option<AnchoredRoot>, AnchorError>> + Send;
}

/// The hash that links a ledger's rollup headers: a header's `prev` is the
/// `header_hash` of the same ledger's previous header (zero for its first).
///
/// It is the header's [`MessageId`]: BLAKE3 (keyed by the message-id domain)
/// of signer and signed payload; it does not cover the signature.
pub fn header_hash(header: &Signed<RollupHeader>) -> Hash32 {
    header.id().0
}

/// Who anchored a root: the identity a backend keeps roots under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Anchorer {
    /// A ledger peer (journal: chains are kept per header signer).
    Ledger(NodeId),
    /// An EVM account (the contract keeps roots per `msg.sender`).
    Evm(Address),
}

impl fmt::Display for Anchorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anchorer::Ledger(id) => write!(f, "ledger {id}"),
            Anchorer::Evm(a) => write!(f, "EVM account {a}"),
        }
    }
}

/// Text that names no anchorer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AnchorerParseError(String);

impl FromStr for Anchorer {
    type Err = AnchorerParseError;

    /// `0x` and 40 hex digits: an EVM account; otherwise a ledger's peer id
    /// (`12D3KooW…`) or 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() == 42 && (s.starts_with("0x") || s.starts_with("0X")) {
            return s
                .parse::<Address>()
                .map(Anchorer::Evm)
                .map_err(|e| AnchorerParseError(format!("{s:?} is not an EVM address: {e}")));
        }
        s.parse::<NodeId>().map(Anchorer::Ledger).map_err(|_| {
            AnchorerParseError(format!("{s:?}: expected a ledger peer id (12D3KooW…), 64 hex digits, or an EVM address (0x + 40 hex digits)"))
        })
    }
}

/// Where an anchor lives, backend by backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum AnchorRef {
    /// In the embedded journal.
    Journal {
        /// Position in the ledger's chain, from 0.
        index: u64,
        /// [`header_hash`] of the stored header (hex).
        header_hash: String,
    },
    /// In the anchor contract on an EVM chain.
    Evm {
        /// Chain id.
        chain_id: u64,
        /// The anchor contract.
        contract: Address,
        /// The account the root is kept under.
        anchorer: Address,
        /// Block that holds the anchor.
        block: u64,
        /// The transaction, when this call sent it (`None` when read back or
        /// when the root was already anchored).
        tx: Option<B256>,
        /// Gas the transaction used, when this call sent it.
        gas_used: Option<u64>,
    },
}

/// What [`AnchorBackend::anchor`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorReceipt {
    /// The epoch.
    pub epoch: u64,
    /// The anchored root (hex in JSON).
    #[serde(serialize_with = "ser_hex")]
    pub root: Hash32,
    /// Receipts under the root.
    pub count: u64,
    /// True when this exact anchor was already there (nothing was written or sent).
    pub already_anchored: bool,
    /// Where it lives.
    pub reference: AnchorRef,
}

/// An epoch's root as a backend holds it, integrity-checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchoredRoot {
    /// Who anchored it.
    #[serde(serialize_with = "ser_display")]
    pub anchorer: Anchorer,
    /// The epoch.
    pub epoch: u64,
    /// The root (hex in JSON).
    #[serde(serialize_with = "ser_hex")]
    pub root: Hash32,
    /// Receipts under the root: the tree size a proof must be for.
    pub count: u64,
    /// Where it lives.
    pub reference: AnchorRef,
}

fn ser_hex<S: serde::Serializer>(v: &Hash32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

fn ser_display<S: serde::Serializer, T: fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Why anchoring or reading an anchor failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The header to anchor does not verify.
    #[error("rollup header rejected: {0}")]
    InvalidHeader(#[from] SignedError),
    /// The zero root cannot be anchored (it means "nothing anchored").
    #[error(
        "epoch {epoch}: the zero root cannot be anchored (the empty tree's root is BLAKE3(\"\"), never zero)"
    )]
    ZeroRoot {
        /// The epoch.
        epoch: u64,
    },
    /// The anchorer already anchored another root (or count) for this epoch;
    /// anchors are never rewritten.
    #[error(
        "epoch {epoch}: {anchorer} already anchored root {anchored_root} ({anchored_count} receipts); refusing root {new_root} ({new_count} receipts): anchors are never rewritten"
    )]
    Conflict {
        /// The epoch.
        epoch: u64,
        /// Who anchored it.
        anchorer: String,
        /// Root already anchored (hex).
        anchored_root: String,
        /// Its count.
        anchored_count: u64,
        /// Root refused (hex).
        new_root: String,
        /// Its count.
        new_count: u64,
    },
    /// The header's epoch does not follow the ledger's last anchored epoch.
    #[error("epoch {epoch}: {ledger} already anchored epoch {head_epoch}; epochs must increase")]
    EpochNotIncreasing {
        /// The ledger.
        ledger: NodeId,
        /// The header's epoch.
        epoch: u64,
        /// The last anchored epoch.
        head_epoch: u64,
    },
    /// The header's `prev` is not the hash of the ledger's last anchored header.
    #[error(
        "epoch {epoch}: prev is {found}, but the last anchored header of {ledger} hashes to {expected} (zero when none)"
    )]
    BrokenLink {
        /// The ledger.
        ledger: NodeId,
        /// The header's epoch.
        epoch: u64,
        /// What `prev` must be (hex).
        expected: String,
        /// What it is (hex).
        found: String,
    },
    /// Stored anchors fail their integrity check.
    #[error("anchors tampered with at epoch {epoch}: {reason}")]
    Tampered {
        /// The first epoch where the check fails.
        epoch: u64,
        /// What failed.
        reason: String,
    },
    /// This backend keeps roots under another kind of anchorer.
    #[error("the {backend} backend keeps roots per {expected}; got {found}")]
    WrongAnchorer {
        /// The backend.
        backend: &'static str,
        /// The anchorer kind it takes.
        expected: &'static str,
        /// What was given.
        found: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing the journal failed.
    #[error("anchor journal: {action}: {message}")]
    Journal {
        /// What was being done.
        action: &'static str,
        /// The cause.
        message: String,
    },
    /// The chain refused the transaction.
    #[error("epoch {epoch}: the anchor contract reverted: {reason}")]
    Reverted {
        /// The epoch.
        epoch: u64,
        /// The decoded reason.
        reason: String,
    },
    /// Talking to the chain failed.
    #[error("{action}: {message}")]
    Rpc {
        /// What was being done.
        action: &'static str,
        /// The cause.
        message: String,
    },
}

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The `[anchor]` settings are incomplete or wrong.
    #[error("[anchor] {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The signer key could not be read.
    #[error("anchor signer key: {0}")]
    Key(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain or the contract is not what the settings say.
    #[error(transparent)]
    Chain(#[from] AnchorError),
}

/// The configured backend, chosen at run time from `[anchor] backend`.
#[derive(Debug)]
pub enum Backend {
    /// The embedded journal.
    Journal(Journal),
    /// An EVM chain.
    Evm(EvmAnchor),
}

impl Backend {
    /// Opens the backend `config` names (the journal lives in `store`).
    /// The EVM backend connects and checks the contract before returning.
    pub async fn open(config: &AnchorConfig, store: &Store) -> Result<Backend, OpenError> {
        match config.backend {
            AnchorBackendKind::Journal => Ok(Backend::Journal(Journal::open(store)?)),
            AnchorBackendKind::Evm => {
                let settings = evm::EvmSettings::from_config(config)?;
                Ok(Backend::Evm(EvmAnchor::connect(settings).await?))
            }
        }
    }
}

impl AnchorBackend for Backend {
    async fn anchor(&self, header: &Signed<RollupHeader>) -> Result<AnchorReceipt, AnchorError> {
        match self {
            Backend::Journal(j) => j.anchor(header).await,
            Backend::Evm(e) => e.anchor(header).await,
        }
    }

    async fn anchored_root(
        &self,
        anchorer: &Anchorer,
        epoch: u64,
    ) -> Result<Option<AnchoredRoot>, AnchorError> {
        match self {
            Backend::Journal(j) => j.anchored_root(anchorer, epoch).await,
            Backend::Evm(e) => e.anchored_root(anchorer, epoch).await,
        }
    }
}

/// The answer of `receipt verify`: whether a receipt is in an anchored epoch
/// root, and why (its `Display` is the plain-language verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The proof leads from the receipt id to the anchored root.
    Included {
        /// The anchored root it was checked against.
        anchored: AnchoredRoot,
        /// The receipt's leaf index in the epoch's tree.
        leaf_index: u64,
    },
    /// The anchorer anchored nothing for this epoch (yet).
    NotAnchored {
        /// The anchorer asked about.
        anchorer: Anchorer,
        /// The epoch.
        epoch: u64,
    },
    /// The epoch is anchored but the proof does not show the receipt in it.
    NotIncluded {
        /// The anchored root.
        anchored: AnchoredRoot,
        /// Why the proof fails.
        reason: String,
    },
    /// The backend's stored anchors fail their integrity check: nothing read
    /// from it can be trusted.
    Tampered {
        /// The check that failed.
        error: String,
    },
    /// The anchored root could not be fetched (network, configuration): no
    /// conclusion either way.
    Unavailable {
        /// The cause.
        error: String,
    },
}

impl Verdict {
    /// True only for [`Verdict::Included`].
    pub fn is_included(&self) -> bool {
        matches!(self, Verdict::Included { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Included {
                anchored,
                leaf_index,
            } => write!(
                f,
                "VALID: the receipt is leaf {leaf_index} of {} in epoch {}, whose root {} was anchored by {} ({})",
                anchored.count,
                anchored.epoch,
                hex::encode(anchored.root),
                anchored.anchorer,
                describe(&anchored.reference),
            ),
            Verdict::NotAnchored { anchorer, epoch } => write!(
                f,
                "NOT ANCHORED: {anchorer} has anchored no root for epoch {epoch}; the receipt cannot be checked yet"
            ),
            Verdict::NotIncluded { anchored, reason } => write!(
                f,
                "INVALID: the receipt is not in epoch {}'s anchored root {} ({} receipts): {reason}",
                anchored.epoch,
                hex::encode(anchored.root),
                anchored.count,
            ),
            Verdict::Tampered { error } => {
                write!(
                    f,
                    "TAMPERED: the anchor store fails its integrity check: {error}"
                )
            }
            Verdict::Unavailable { error } => {
                write!(f, "UNKNOWN: the anchored root could not be read: {error}")
            }
        }
    }
}

fn describe(reference: &AnchorRef) -> String {
    match reference {
        AnchorRef::Journal { index, .. } => format!("journal entry {index}"),
        AnchorRef::Evm {
            chain_id,
            contract,
            block,
            ..
        } => format!("contract {contract} on chain {chain_id}, block {block}"),
    }
}

/// Checks that `receipt` is in the epoch root `anchored` (as fetched from a
/// backend; `None`: nothing anchored), with `proof`. Pure: no I/O.
///
/// The tree size comes from the anchored, signed `count`, never from the
/// proof: a proof for another size is refused (see `protocol::merkle`).
pub fn verify_receipt_inclusion(
    receipt: &MessageId,
    proof: &InclusionProof,
    anchorer: &Anchorer,
    epoch: u64,
    anchored: Option<&AnchoredRoot>,
) -> Verdict {
    let Some(anchored) = anchored else {
        return Verdict::NotAnchored {
            anchorer: *anchorer,
            epoch,
        };
    };
    let not_included = |reason: String| Verdict::NotIncluded {
        anchored: anchored.clone(),
        reason,
    };
    if anchored.epoch != epoch || anchored.anchorer != *anchorer {
        return not_included(format!(
            "the root given is {}'s for epoch {}, not {anchorer}'s for epoch {epoch}",
            anchored.anchorer, anchored.epoch
        ));
    }
    if proof.tree_size != anchored.count {
        return not_included(format!(
            "the proof is for a tree of {} receipts, but the anchored epoch has {}",
            proof.tree_size, anchored.count
        ));
    }
    match proof.verify(&receipt.0, &anchored.root) {
        Ok(()) => Verdict::Included {
            anchored: anchored.clone(),
            leaf_index: proof.leaf_index,
        },
        Err(e) => not_included(e.to_string()),
    }
}

/// Fetches the root `anchorer` anchored for `epoch` from `backend`, then
/// [`verify_receipt_inclusion`]. Tampering and fetch failures become
/// verdicts too, so a caller always has one plain answer to print.
pub async fn check_receipt<B: AnchorBackend>(
    backend: &B,
    receipt: &MessageId,
    proof: &InclusionProof,
    anchorer: &Anchorer,
    epoch: u64,
) -> Verdict {
    match backend.anchored_root(anchorer, epoch).await {
        Ok(anchored) => {
            verify_receipt_inclusion(receipt, proof, anchorer, epoch, anchored.as_ref())
        }
        Err(e @ AnchorError::Tampered { .. }) => Verdict::Tampered {
            error: e.to_string(),
        },
        Err(e) => Verdict::Unavailable {
            error: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::merkle::MerkleTree;

    fn anchored(root: Hash32, count: u64) -> AnchoredRoot {
        AnchoredRoot {
            anchorer: Anchorer::Ledger(NodeId::from_bytes([7; 32])),
            epoch: 4,
            root,
            count,
            reference: AnchorRef::Journal {
                index: 0,
                header_hash: String::new(),
            },
        }
    }

    fn ids(n: u8) -> Vec<Hash32> {
        (0..n).map(|i| [i + 1; 32]).collect()
    }

    #[test]
    fn verdicts() {
        let leaves = ids(9);
        let tree = MerkleTree::from_sorted_unique(leaves.clone()).unwrap();
        let a = anchored(tree.root(), 9);
        let who = a.anchorer;
        let proof = tree.proof(3).unwrap();
        let receipt = MessageId(leaves[3]);

        let v = verify_receipt_inclusion(&receipt, &proof, &who, 4, Some(&a));
        assert!(v.is_included(), "{v}");
        assert!(v.to_string().starts_with("VALID"), "{v}");

        // Another receipt with this proof.
        let v = verify_receipt_inclusion(&MessageId(leaves[4]), &proof, &who, 4, Some(&a));
        assert!(matches!(v, Verdict::NotIncluded { .. }), "{v}");
        assert!(v.to_string().starts_with("INVALID"), "{v}");

        // A proof claiming another tree size than the anchored count.
        let mut wrong_size = proof.clone();
        wrong_size.tree_size = 10;
        let v = verify_receipt_inclusion(&receipt, &wrong_size, &who, 4, Some(&a));
        assert!(
            matches!(&v, Verdict::NotIncluded { reason, .. } if reason.contains("tree of 10")),
            "{v}"
        );

        // The same proof against a root anchored with another count.
        let v =
            verify_receipt_inclusion(&receipt, &proof, &who, 4, Some(&anchored(tree.root(), 8)));
        assert!(matches!(v, Verdict::NotIncluded { .. }), "{v}");

        // A root of another epoch or anchorer is never accepted.
        let v = verify_receipt_inclusion(&receipt, &proof, &who, 5, Some(&a));
        assert!(matches!(v, Verdict::NotIncluded { .. }), "{v}");
        let other = Anchorer::Ledger(NodeId::from_bytes([8; 32]));
        let v = verify_receipt_inclusion(&receipt, &proof, &other, 4, Some(&a));
        assert!(matches!(v, Verdict::NotIncluded { .. }), "{v}");

        let v = verify_receipt_inclusion(&receipt, &proof, &who, 4, None);
        assert!(matches!(v, Verdict::NotAnchored { epoch: 4, .. }), "{v}");
        assert!(!v.is_included());
    }

    #[test]
    fn anchorer_parses() {
        let evm: Anchorer = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
            .parse()
            .unwrap();
        assert!(matches!(evm, Anchorer::Evm(_)));
        let hex64 = "11".repeat(32);
        assert_eq!(
            hex64.parse::<Anchorer>().unwrap(),
            Anchorer::Ledger(NodeId::from_bytes([0x11; 32]))
        );
        assert!("0x1234".parse::<Anchorer>().is_err());
        assert!("nonsense".parse::<Anchorer>().is_err());
    }
}
