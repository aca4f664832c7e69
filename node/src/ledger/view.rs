//! What the ledger routes of the API answer (JSON), and the conversions from
//! the ledger service's wire answers ([`RollupResponse`]), which are the same
//! whether this node's own ledger answered or a ledger peer did.
//!
//! [`RollupResponse`]: rendertrust_protocol::ledger::wire::RollupResponse

use rendertrust_protocol::ledger::LedgerEvent;
use rendertrust_protocol::ledger::wire::{
    AnchorPlace, ChainEntry, LeaderRow, ProofInfo, ReceiptInfo, ReceiptState,
};
use rendertrust_protocol::signed::MessageId;
use serde::{Deserialize, Serialize};

/// `GET /v1/ledger/balances/{node}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    /// The node (peer id).
    pub node: String,
    /// Its credits (negative when its escrows exceed what it had).
    pub balance: i128,
    /// The ledger peer that answered.
    pub ledger: String,
}

/// One row of `GET /v1/ledger/leaderboard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    /// The node (peer id).
    pub node: String,
    /// Its balance.
    pub balance: i128,
    /// Credits earned as a worker.
    pub earned: u64,
    /// Tasks it was paid for.
    pub tasks: u64,
}

impl From<&LeaderRow> for LeaderView {
    fn from(r: &LeaderRow) -> Self {
        LeaderView {
            node: r.node.to_string(),
            balance: r.balance,
            earned: r.earned,
            tasks: r.tasks,
        }
    }
}

/// `GET /v1/ledger/leaderboard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderboardView {
    /// The ledger peer that answered.
    pub ledger: String,
    /// Rows, most earned first.
    pub rows: Vec<LeaderView>,
}

/// How an epoch was anchored, as this ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorStatusView {
    /// `anchored`, `pending` (this ledger anchors it, not done yet),
    /// `failed` (with `error`), or `elsewhere` (another ledger anchors it).
    pub status: String,
    /// Where it lives (`node::anchor::AnchorRef` as JSON), when anchored here.
    pub reference: Option<serde_json::Value>,
    /// Why anchoring failed.
    pub error: Option<String>,
}

/// One epoch of `GET /v1/ledger/epochs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochView {
    /// The epoch number (`accepted_at_ms / epoch_ms`).
    pub epoch: u64,
    /// Receipts in it.
    pub count: u64,
    /// Receipts that arrived after it was final (in no root).
    pub late: u64,
    /// Its Merkle root (hex), once this ledger published a header.
    pub root: Option<String>,
    /// Whether it is final here.
    pub is_final: bool,
    /// Ledger peers whose header agrees with ours.
    pub agreeing: usize,
    /// The ledger that anchors it (known once final).
    pub anchorer: Option<String>,
    /// How it was anchored.
    pub anchor: Option<AnchorStatusView>,
}

/// `GET /v1/ledger/epochs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochsView {
    /// This ledger.
    pub ledger: String,
    /// Epoch length, ms.
    pub epoch_ms: u64,
    /// The epoch now.
    pub current_epoch: u64,
    /// The anchor backend (`journal` or `evm`).
    pub backend: String,
    /// Epochs with receipts, newest last.
    pub epochs: Vec<EpochView>,
}

/// The receipt itself, as its worker signed it and its creator countersigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// Job id (hex).
    pub job: String,
    /// Task index.
    pub task: u32,
    /// Attempt.
    pub attempt: u32,
    /// Worker (peer id).
    pub worker: String,
    /// Creator (peer id).
    pub creator: String,
    /// Scheduler that assigned the task (peer id).
    pub scheduler: String,
    /// BLAKE3 of the output (hex).
    pub output_hash: String,
    /// CPU milliseconds.
    pub cpu_ms: u64,
    /// GPU milliseconds.
    pub gpu_ms: u64,
    /// Peak memory, bytes.
    pub peak_mem_bytes: u64,
    /// Start (worker's clock, Unix ms).
    pub started_at_ms: u64,
    /// End (worker's clock, Unix ms).
    pub finished_at_ms: u64,
    /// Price, credits.
    pub price: u64,
    /// When the creator accepted it (its clock): decides the epoch.
    pub accepted_at_ms: u64,
}

/// `GET /v1/receipts/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptView {
    /// Receipt id (hex).
    pub id: String,
    /// The ledger peer that answered.
    pub ledger: String,
    /// `settled` (the worker was paid), `outranked` (another receipt of the
    /// task was paid), `waiting` (no escrow seen yet), `unpaid` (matches no
    /// escrow: see `reason`) or `unknown` (never admitted).
    pub status: String,
    /// Why, for `unpaid`.
    pub reason: Option<String>,
    /// Its epoch, once it matched an escrow.
    pub epoch: Option<u64>,
    /// Whether that epoch is final.
    pub epoch_final: bool,
    /// Arrived after its epoch was final: in no root.
    pub late: bool,
    /// The receipt, when the ledger holds it.
    pub receipt: Option<ReceiptBody>,
}

impl ReceiptView {
    /// The view of a ledger's answer.
    pub fn new(id: &MessageId, ledger: String, info: &ReceiptInfo) -> Self {
        let (status, reason) = match &info.state {
            ReceiptState::Unknown => ("unknown", None),
            ReceiptState::Settled => ("settled", None),
            ReceiptState::Outranked => ("outranked", None),
            ReceiptState::Waiting => ("waiting", None),
            ReceiptState::Unpaid { reason } => ("unpaid", Some(reason.clone())),
        };
        let receipt = match &info.settle {
            Some(LedgerEvent::Settle {
                receipt,
                acceptance,
            }) => match (receipt.verify(), acceptance.verify()) {
                (Ok(r), Ok(a)) => Some(ReceiptBody {
                    job: r.task.job.to_string(),
                    task: r.task.index,
                    attempt: r.attempt,
                    worker: r.worker.to_string(),
                    creator: r.creator.to_string(),
                    scheduler: r.scheduler.to_string(),
                    output_hash: hex::encode(r.output_hash),
                    cpu_ms: r.usage.cpu_ms,
                    gpu_ms: r.usage.gpu_ms,
                    peak_mem_bytes: r.usage.peak_mem_bytes,
                    started_at_ms: r.started_at_ms,
                    finished_at_ms: r.finished_at_ms,
                    price: r.price,
                    accepted_at_ms: a.accepted_at_ms,
                }),
                _ => None,
            },
            _ => None,
        };
        ReceiptView {
            id: id.to_string(),
            ledger,
            status: status.to_owned(),
            reason,
            epoch: info.epoch,
            epoch_final: info.epoch_final,
            late: info.late,
            receipt,
        }
    }
}

/// Where an epoch was anchored, in [`ProofView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorPlaceView {
    /// `journal` or `evm`.
    pub backend: String,
    /// evm: chain id.
    pub chain_id: Option<u64>,
    /// evm: the anchor contract.
    pub contract: Option<String>,
    /// evm: the account the root is kept under.
    pub account: Option<String>,
}

/// `GET /v1/receipts/{id}/proof`: what `receipt verify` checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofView {
    /// Receipt id (hex).
    pub receipt: String,
    /// The ledger peer whose header the proof is against.
    pub ledger: String,
    /// The receipt's epoch.
    pub epoch: u64,
    /// That ledger's root of the epoch (hex).
    pub root: String,
    /// Receipts under it.
    pub count: u64,
    /// Leaf index of the receipt.
    pub leaf_index: u64,
    /// Tree size the proof is for.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up (hex).
    pub path: Vec<String>,
    /// The ledger that anchors the epoch (peer id), once final.
    pub anchorer_ledger: Option<String>,
    /// What to check against: a ledger's peer id (journal) or an EVM
    /// account (`0x…`); `None` while unknown.
    pub anchorer: Option<String>,
    /// Where the anchorer anchored it, when known.
    pub anchor: Option<AnchorPlaceView>,
}

impl ProofView {
    /// The view of a ledger's answer (`ledger` answered).
    pub fn new(id: &MessageId, ledger: String, p: &ProofInfo) -> Option<Self> {
        let header = p.header.verify().ok()?;
        let (anchorer, anchor) = match &p.anchor {
            Some(AnchorPlace::Journal) => (
                p.anchorer.map(|a| a.to_string()),
                Some(AnchorPlaceView {
                    backend: "journal".into(),
                    chain_id: None,
                    contract: None,
                    account: None,
                }),
            ),
            Some(AnchorPlace::Evm {
                chain_id,
                contract,
                account,
            }) => {
                let account = format!("0x{}", hex::encode(account));
                (
                    Some(account.clone()),
                    Some(AnchorPlaceView {
                        backend: "evm".into(),
                        chain_id: Some(*chain_id),
                        contract: Some(format!("0x{}", hex::encode(contract))),
                        account: Some(account),
                    }),
                )
            }
            None => (None, None),
        };
        Some(ProofView {
            receipt: id.to_string(),
            ledger,
            epoch: header.epoch,
            root: hex::encode(header.root),
            count: header.count,
            leaf_index: p.proof.leaf_index,
            tree_size: p.proof.tree_size,
            path: p.proof.path.iter().map(hex::encode).collect(),
            anchorer_ledger: p.anchorer.map(|a| a.to_string()),
            anchorer,
            anchor,
        })
    }
}

/// One entry of `GET /v1/ledger/chain/{ledger}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntryView {
    /// The epoch it is stored under.
    pub epoch: u64,
    /// The stored bytes (hex): a signed header frame unless tampered with.
    pub frame: String,
}

impl From<&ChainEntry> for ChainEntryView {
    fn from(e: &ChainEntry) -> Self {
        ChainEntryView {
            epoch: e.epoch,
            frame: hex::encode(&e.frame),
        }
    }
}

/// `GET /v1/ledger/chain/{ledger}`: a page of a ledger's anchor journal,
/// raw (the reader verifies it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPageView {
    /// Whose chain.
    pub ledger: String,
    /// Entries, epochs ascending.
    pub entries: Vec<ChainEntryView>,
    /// Whether more follow (ask again with `after` = the last epoch).
    pub more: bool,
}

/// `GET /v1/ledger/status`: this ledger's counters (ledger peers only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerStatusView {
    /// This ledger.
    pub ledger: String,
    /// Digest of the credit state: equal digests, equal ledgers (hex).
    pub digest: String,
    /// Events admitted.
    pub admitted: u64,
    /// Duplicates ignored.
    pub duplicates: u64,
    /// Events rejected as misbehaviour.
    pub invalid: u64,
    /// Events refused by a bound.
    pub refused: u64,
    /// Events in the journal.
    pub journaled: u64,
    /// Unmatched settles and refunds held.
    pub pending: usize,
    /// Credits ever minted (genesis included).
    pub minted: i128,
    /// Credits held in escrow.
    pub escrowed: i128,
    /// Receipts recorded in epochs (late ones included).
    pub receipts: u64,
    /// Headers published.
    pub headers_published: u64,
    /// Reconciliations started.
    pub reconciles: u64,
    /// Missing headers asked of live ledgers (a closed epoch lacking one).
    #[serde(default)]
    pub header_asks: u64,
    /// Anchors owed and held back until no earlier epoch can appear.
    #[serde(default)]
    pub anchors_waiting: u64,
    /// Epochs final by agreement.
    pub agreed: u64,
    /// Epochs final by the window.
    pub timed_out: u64,
    /// Receipts that arrived after their epoch was final.
    pub late: u64,
    /// Other live ledger peers.
    pub live_ledgers: Vec<String>,
    /// The anchor backend.
    pub backend: String,
}

/// `POST /v1/ledger/mint`: an authority-signed `Mint` frame (hex), signed
/// where the authority key is (`rendertrust ledger mint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintRequest {
    /// `Signed<Mint>` frame bytes, hex.
    pub frame: String,
}

/// The answer to `POST /v1/ledger/mint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintView {
    /// The mint's id (hex).
    pub id: String,
    /// The authority that signed it.
    pub authority: String,
    /// Who receives the credits.
    pub to: String,
    /// Credits.
    pub amount: u64,
    /// Whether it went out on the `receipts` topic.
    pub published: bool,
    /// What this node's own ledger did with it (ledger peers only).
    pub local: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::ledger::testkit::{Kit, T0};
    use rendertrust_protocol::merkle::MerkleTree;
    use rendertrust_protocol::signed::Signed;
    use rendertrust_protocol::wire::RollupHeader;

    #[test]
    fn receipt_view_shows_the_receipt_and_its_state() {
        let kit = Kit::new(1);
        let settle = kit
            .sample_events()
            .into_iter()
            .find(|e| matches!(e, LedgerEvent::Settle { .. }))
            .unwrap();
        let LedgerEvent::Settle { receipt, .. } = &settle else {
            unreachable!()
        };
        let r = receipt.verify().unwrap();
        let id = settle.id();
        let v = ReceiptView::new(
            &id,
            "L".into(),
            &ReceiptInfo {
                state: ReceiptState::Unpaid {
                    reason: "never assigned".into(),
                },
                epoch: Some(7),
                epoch_final: true,
                late: false,
                settle: Some(settle.clone()),
            },
        );
        assert_eq!(
            (v.status.as_str(), v.reason.as_deref()),
            ("unpaid", Some("never assigned"))
        );
        assert_eq!(v.id, id.to_string());
        let b = v.receipt.unwrap();
        assert_eq!(b.worker, r.worker.to_string());
        assert_eq!(
            (b.task, b.cpu_ms, b.price),
            (r.task.index, r.usage.cpu_ms, r.price)
        );
        assert_eq!(b.output_hash, hex::encode(r.output_hash));

        for (state, name) in [
            (ReceiptState::Unknown, "unknown"),
            (ReceiptState::Settled, "settled"),
            (ReceiptState::Outranked, "outranked"),
            (ReceiptState::Waiting, "waiting"),
        ] {
            let v = ReceiptView::new(
                &id,
                "L".into(),
                &ReceiptInfo {
                    state,
                    epoch: None,
                    epoch_final: false,
                    late: false,
                    settle: None,
                },
            );
            assert_eq!(v.status, name);
            assert!(v.receipt.is_none() && v.reason.is_none());
        }
    }

    #[test]
    fn proof_view_names_what_to_check_against() {
        let kit = Kit::new(2);
        let ledger = &kit.ledgers[0];
        let leaves: Vec<[u8; 32]> = (1u8..=5).map(|i| [i; 32]).collect();
        let tree = MerkleTree::from_sorted_unique(leaves).unwrap();
        let header = Signed::sign(
            ledger,
            &RollupHeader {
                epoch: 42,
                root: tree.root(),
                count: 5,
                ledger: ledger.node_id(),
                prev: [0; 32],
                closed_at_ms: T0,
            },
        )
        .unwrap();
        let id = MessageId([3; 32]);
        let mut info = ProofInfo {
            header: header.clone(),
            proof: tree.proof(2).unwrap(),
            anchorer: Some(ledger.node_id()),
            anchor: Some(AnchorPlace::Journal),
        };
        let v = ProofView::new(&id, "me".into(), &info).unwrap();
        assert_eq!((v.epoch, v.count, v.leaf_index, v.tree_size), (42, 5, 2, 5));
        assert_eq!(v.root, hex::encode(tree.root()));
        assert_eq!(
            v.anchorer.as_deref(),
            Some(ledger.node_id().to_string().as_str())
        );
        assert_eq!(v.anchor.unwrap().backend, "journal");

        info.anchor = Some(AnchorPlace::Evm {
            chain_id: 31337,
            contract: [0xab; 20],
            account: [0xcd; 20],
        });
        let v = ProofView::new(&id, "me".into(), &info).unwrap();
        let account = format!("0x{}", "cd".repeat(20));
        assert_eq!(v.anchorer.as_deref(), Some(account.as_str()));
        assert_eq!(
            v.anchorer_ledger.as_deref(),
            Some(ledger.node_id().to_string().as_str())
        );
        let a = v.anchor.unwrap();
        assert_eq!((a.backend.as_str(), a.chain_id), ("evm", Some(31337)));

        // Not anchored (yet): nothing to check against but the ledger's name.
        info.anchor = None;
        info.anchorer = None;
        let v = ProofView::new(&id, "me".into(), &info).unwrap();
        assert!(v.anchorer.is_none() && v.anchor.is_none() && v.anchorer_ledger.is_none());

        // A header whose signature fails gives no view.
        let mut bytes = header.into_bytes();
        bytes[40] ^= 1;
        info.header = Signed::from_bytes(bytes).unwrap();
        assert!(ProofView::new(&id, "me".into(), &info).is_none());
    }
}
