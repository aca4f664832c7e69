//! Epoch rollups: which receipts fall in which epoch, the epoch's Merkle
//! root, agreement between ledger peers, reconciliation, and who anchors.
//!
//! A sans-IO machine fed with the receipts the ledger matched
//! ([`Rollup::record`], from [`crate::ledger::Ledger::take_matched`]; the
//! [`crate::ledger::LedgerPeer`] wires the two), with other ledgers' signed
//! [`RollupHeader`]s from the `rollups` topic, with reconciliation answers,
//! and with the clock. Effects go out through [`Rollup::poll_action`]; timers
//! through [`Rollup::next_deadline`]. It owns no keys: the driver signs the
//! headers it is asked to publish. It does not decide credits
//! ([`crate::ledger`] does) and does not talk to an anchor backend.
//!
//! # Rules
//! * A receipt falls in epoch `accepted_at_ms / epoch_ms` (its creator's
//!   acceptance time; when a receipt has two acceptances, the ledger passes
//!   the earliest, and a receipt recorded again with an earlier time moves
//!   to the earlier epoch while neither epoch is final).
//! * Epoch `e` **closes** at `close(e) = (e + 1) · epoch_ms + grace_ms`: its
//!   sorted, unique receipt ids form an RFC 6962 tree ([`crate::merkle`]); the
//!   machine asks the driver to sign and publish a [`RollupHeader`] (`count`,
//!   `root`, `prev` = message id of this ledger's previous header: a hash
//!   chain of everything it published). Epochs without receipts get no header.
//! * Epoch `e` is **final** when every live ledger (the driver's list, see
//!   [`Rollup::set_ledgers`]) published the same root and count (agreement),
//!   or at `close(e) + reconcile_window_ms` regardless. Between close and
//!   final the epoch is *reconciling*.
//! * **Late receipts** — decision: a receipt for a closed, not yet final
//!   epoch *reopens* it: the receipt joins, and at the next timeout the
//!   ledger publishes a new header for the epoch (a revision; the chain
//!   records both). A receipt for a final epoch is recorded as *late*: it is
//!   in no root (its credits still moved: the ledger's state does not
//!   depend on time), [`Recorded::Late`] tells the driver, and
//!   [`RollupStats::late`] counts it. The grace period exists so that this
//!   does not happen to honest receipts.
//! * **Reconciliation**: a peer's header for a closed epoch with another root
//!   than ours makes us ask that peer for its receipt ids of the epoch
//!   ([`RollupAction::RequestIds`], paged), then for the receipts we lack
//!   ([`RollupAction::FetchReceipts`], at most
//!   [`crate::ledger::wire::MAX_FETCH_IDS`] each). The fetched events go
//!   through the ledger like any other (so a peer cannot make us count a
//!   receipt it cannot prove); those that match reopen the epoch, and our
//!   revised header converges on the union. Each side fetches what it lacks,
//!   so both end with the union of what they hold.
//! * **Asking for missing headers** — decision: gossip alone can lose a
//!   header (a ledger restarting while its peers publish, a mesh not formed
//!   yet), and one lost header left an epoch to time out on two different
//!   roots. So a closed epoch that is not final asks every live ledger whose
//!   header it lacks for its headers ([`RollupAction::RequestHeaders`]),
//!   [`HEADER_ASK_MS`] after close and again every [`HEADER_ASK_MS`] until
//!   it is final; the answers go through [`Rollup::handle_header`] like
//!   gossip.
//! * **Late catch-up** — decision: a live ledger's header for an epoch that
//!   is final here, with another root, still makes this ledger fetch the
//!   receipts it lacks (the same paged reconciliation), for the last
//!   [`LATE_CATCH_UP_EPOCHS`] epochs. They are late here: in no root (the
//!   epoch is final), but the ledger admits them, so credits move and the
//!   books of a ledger that was away longer than the window converge with
//!   the others'. Without it such a ledger never learnt what it missed.
//! * **Anchoring**: the anchorer of epoch `e` is the rendezvous-hash winner
//!   over the live ledgers and us, key = `e` as u64 LE. When an epoch turns
//!   final at the anchorer it emits [`RollupAction::Anchor`] with its root;
//!   every ledger emits [`RollupAction::Final`] (to persist; its `anchor`
//!   flag says whether this ledger owes the epoch's anchor).
//! * **Anchors go out in epoch order** — decision: an anchor this ledger
//!   owes for epoch `e` is released only when every earlier epoch it knows
//!   is final *and* no earlier epoch can still appear (`now ≥
//!   final_time(e − 1)`: a receipt of an epoch past its final time is late,
//!   it opens nothing). Finality is not in epoch order (epoch `e + 1` can
//!   agree while `e` still reconciles, or after a restart while `e` waits
//!   out its window; a receipt of an epoch this ledger never held can arrive
//!   after a later epoch agreed), and an anchor chain is: the embedded
//!   journal links each ledger's headers in epoch order and refuses an epoch
//!   below its head, so an anchor sent out of order left the earlier epoch
//!   unanchored for good. The cost is latency only where the window is
//!   longer than an epoch (`reconcile_window_ms − epoch_ms` at most after
//!   agreement; none with the defaults, an hour and ten minutes).
//!
//! Bounds: headers are kept for at most `max_ledgers` peers per epoch and
//! only for epochs not yet final (older and far-future headers are refused);
//! a reconciliation accepts at most the number of ids the peer's signed
//! header counts, plus one page.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::identity::NodeId;
use crate::ledger::wire::{MAX_FETCH_IDS, MAX_IDS_PAGE};
use crate::merkle::{self, InclusionProof, MerkleError, MerkleTree};
use crate::signed::{MessageId, Signed, SignedError, message_id};
use crate::wire::RollupHeader;

/// How many epochs back (from the current one) a final epoch still catches
/// up: a live ledger's header with another root makes this ledger fetch the
/// receipts it lacks, recorded late (see the module docs).
pub const LATE_CATCH_UP_EPOCHS: u64 = 24;

/// How often a closed, not yet final epoch asks each live ledger whose
/// header it lacks for its headers (see the module docs).
pub const HEADER_ASK_MS: u64 = 5_000;

/// Settings of a [`Rollup`]. Every ledger peer of a mesh must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupConfig {
    /// Epoch length.
    pub epoch_ms: u64,
    /// How long after its end an epoch closes.
    pub grace_ms: u64,
    /// How long after closing an epoch turns final without agreement.
    pub reconcile_window_ms: u64,
    /// Most peer headers kept per epoch.
    pub max_ledgers: usize,
}

impl Default for RollupConfig {
    fn default() -> Self {
        RollupConfig {
            epoch_ms: 60 * 60_000,
            grace_ms: 5 * 60_000,
            reconcile_window_ms: 10 * 60_000,
            max_ledgers: 64,
        }
    }
}

/// An effect the driver carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollupAction {
    /// Sign this header, persist it, then publish it on `rollups`.
    Publish(RollupHeader),
    /// Ask `ledger` for its headers from `epoch` on
    /// ([`crate::ledger::wire::RollupRequest::Headers`] with `after =
    /// epoch − 1`); feed each to [`Rollup::handle_header`]. Emitted every
    /// [`HEADER_ASK_MS`] while a closed epoch waits for that live ledger's
    /// header (see the module docs).
    RequestHeaders {
        /// The live ledger whose header is missing.
        ledger: NodeId,
        /// The epoch.
        epoch: u64,
    },
    /// Ask `ledger` for its receipt ids of `epoch` after `after`
    /// ([`crate::ledger::wire::RollupRequest::Ids`]); feed the answer to
    /// [`Rollup::handle_ids`].
    RequestIds {
        /// The peer.
        ledger: NodeId,
        /// The epoch.
        epoch: u64,
        /// Page start (exclusive).
        after: Option<MessageId>,
    },
    /// Ask `ledger` for these receipts
    /// ([`crate::ledger::wire::RollupRequest::Receipts`]); feed the events
    /// of the answer to the ledger.
    FetchReceipts {
        /// The peer.
        ledger: NodeId,
        /// Receipt ids (at most [`MAX_FETCH_IDS`]).
        ids: Vec<MessageId>,
    },
    /// This ledger anchors the epoch's root. Always after the epoch's
    /// [`RollupAction::Final`] with `anchor: true`, and in epoch order (see
    /// the module docs): at once, or once no earlier epoch holds it back.
    Anchor {
        /// The epoch.
        epoch: u64,
        /// Its root.
        root: [u8; 32],
        /// Its receipt count.
        count: u64,
    },
    /// The epoch is final here (persist it; see [`Rollup::restore_final`]).
    Final {
        /// The epoch.
        epoch: u64,
        /// Its root (the empty root if we never held a receipt of it).
        root: [u8; 32],
        /// Its receipt count.
        count: u64,
        /// This ledger owes the epoch's anchor: a [`RollupAction::Anchor`]
        /// follows, now or once no earlier epoch holds it back. Persist it,
        /// and after a restart hand unanchored ones back with
        /// [`Rollup::restore_owed_anchor`].
        anchor: bool,
    },
}

/// What [`Rollup::record`] did with a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Added to an open epoch.
    Added {
        /// The epoch.
        epoch: u64,
    },
    /// Added to a closed epoch, which will be published again.
    Reopened {
        /// The epoch.
        epoch: u64,
    },
    /// The epoch is final: in no root.
    Late {
        /// The epoch.
        epoch: u64,
    },
    /// Moved to an earlier epoch (an earlier acceptance).
    Moved {
        /// From.
        from: u64,
        /// To.
        to: u64,
    },
    /// Already held (or a move refused because an epoch is final).
    Unchanged,
}

/// What a peer's header did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOutcome {
    /// Our own header (ignored).
    Own,
    /// Kept; compared once our epoch closes.
    Stored,
    /// Same root and count as ours.
    Agrees,
    /// Another root: reconciliation started.
    Reconciling,
    /// Not newer than the header held for that ledger.
    Stale,
    /// The epoch is final here; nothing changes.
    Final {
        /// Whether it matches our final root.
        agrees: bool,
    },
}

/// Why a peer's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderRejected {
    /// Malformed or badly signed.
    #[error("invalid rollup header: {0}")]
    Invalid(#[from] SignedError),
    /// For an epoch that has not ended yet.
    #[error("header for epoch {epoch}, but the current epoch is {current}")]
    FromFuture {
        /// Its epoch.
        epoch: u64,
        /// Ours.
        current: u64,
    },
    /// Too many ledgers for the epoch.
    #[error("epoch {epoch} already holds headers of {max} ledgers")]
    Full {
        /// The epoch.
        epoch: u64,
        /// The bound.
        max: usize,
    },
}

/// Why a page of receipt ids from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdsRejected {
    /// We did not ask that peer about that epoch (or are done with it).
    #[error("unsolicited ids from {ledger} for epoch {epoch}")]
    Unsolicited {
        /// The peer.
        ledger: NodeId,
        /// The epoch.
        epoch: u64,
    },
    /// Not strictly ascending after the page start.
    #[error("ids not strictly ascending after the page start (at position {index})")]
    NotAscending {
        /// First offending position.
        index: usize,
    },
    /// More ids than a page or the peer's signed header allow.
    #[error("{found} ids, at most {max} allowed")]
    TooMany {
        /// Found.
        found: u64,
        /// Allowed.
        max: u64,
    },
}

/// Why no proof can be given for a receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The rollup never recorded it.
    #[error("receipt {0} is not in any epoch here")]
    Unknown(MessageId),
    /// Its epoch is not closed (or changed since it was published).
    #[error("epoch {epoch} has no current header yet")]
    NotClosed {
        /// The epoch.
        epoch: u64,
    },
    /// It arrived after its epoch was final: it is in no root.
    #[error("receipt arrived after epoch {epoch} was final: in no root")]
    Late {
        /// The epoch.
        epoch: u64,
    },
    /// The tree refused (should not happen for a held receipt).
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// Why a persisted header could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Not signed by this ledger.
    #[error("header of epoch {epoch} is by {ledger}, not by this ledger")]
    NotOwn {
        /// The epoch.
        epoch: u64,
        /// Its ledger.
        ledger: NodeId,
    },
    /// The replayed receipts give another root than the header.
    #[error(
        "epoch {epoch}: replayed receipts give {found_count} ids and root {found}, header says {expected_count} and {expected}"
    )]
    Mismatch {
        /// The epoch.
        epoch: u64,
        /// Header root (hex).
        expected: String,
        /// Header count.
        expected_count: u64,
        /// Replayed root (hex).
        found: String,
        /// Replayed count.
        found_count: u64,
    },
}

/// An inclusion proof of a receipt against this ledger's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptProof {
    /// The header (its `count` is the tree size to trust).
    pub header: RollupHeader,
    /// The proof.
    pub proof: InclusionProof,
}

impl ReceiptProof {
    /// Checks the proof for `receipt` against the header's root and count.
    pub fn verify(&self, receipt: &MessageId) -> Result<(), MerkleError> {
        if self.proof.tree_size != self.header.count {
            return Err(MerkleError::IndexOutOfRange {
                index: self.proof.tree_size,
                size: self.header.count,
            });
        }
        self.proof.verify(&receipt.0, &self.header.root)
    }
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupStats {
    /// Headers published (revisions included).
    pub published: u64,
    /// Revisions (headers of an epoch already published).
    pub revisions: u64,
    /// Receipts recorded after their epoch was final.
    pub late: u64,
    /// Moves refused because an epoch was final.
    pub conflicts: u64,
    /// Reconciliations started.
    pub reconciles: u64,
    /// Receipt ids asked for during reconciliation.
    pub fetched: u64,
    /// Epochs final with every live ledger agreeing.
    pub agreed: u64,
    /// Epochs final by the window, without agreement.
    pub timed_out: u64,
    /// Missing headers asked for ([`RollupAction::RequestHeaders`]).
    pub header_asks: u64,
}

/// One epoch's summary, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSummary {
    /// The epoch.
    pub epoch: u64,
    /// Receipts held.
    pub count: u64,
    /// Receipts recorded late.
    pub late: u64,
    /// Our latest header, if published and current.
    pub header: Option<RollupHeader>,
    /// Whether final.
    pub is_final: bool,
    /// Peers whose header agrees with ours.
    pub agreeing: usize,
}

#[derive(Debug, Clone)]
struct Reconcile {
    root: [u8; 32],
    count: u64,
    next_after: Option<MessageId>,
    received: u64,
    done: bool,
}

#[derive(Debug, Clone, Default)]
struct Epoch {
    ids: BTreeSet<MessageId>,
    late: BTreeSet<MessageId>,
    own: Option<RollupHeader>,
    dirty: bool,
    is_final: bool,
    peers: BTreeMap<NodeId, RollupHeader>,
    reconciles: BTreeMap<NodeId, Reconcile>,
    /// When live ledgers' missing headers were last asked for.
    asked_at: Option<u64>,
}

impl Epoch {
    fn current_root(&self) -> ([u8; 32], u64) {
        match &self.own {
            Some(h) if !self.dirty => (h.root, h.count),
            _ => {
                let leaves: Vec<[u8; 32]> = self.ids.iter().map(|m| m.0).collect();
                (merkle::root_of(&leaves), leaves.len() as u64)
            }
        }
    }

    fn clean_own(&self) -> Option<&RollupHeader> {
        self.own.as_ref().filter(|_| !self.dirty)
    }
}

/// The rollup state machine of one ledger peer.
#[derive(Debug, Clone)]
pub struct Rollup {
    me: NodeId,
    config: RollupConfig,
    epochs: BTreeMap<u64, Epoch>,
    known: BTreeMap<MessageId, u64>,
    ledgers: BTreeSet<NodeId>,
    tip: [u8; 32],
    actions: VecDeque<RollupAction>,
    stats: RollupStats,
    tree: Option<(u64, [u8; 32], MerkleTree)>,
    now_ms: u64,
    /// Anchors owed and not yet released (epoch → root, count): each waits
    /// for every earlier epoch to be final.
    owed: BTreeMap<u64, ([u8; 32], u64)>,
}

impl Rollup {
    /// A rollup for ledger `me`, with no receipts.
    pub fn new(me: NodeId, config: RollupConfig) -> Self {
        Rollup {
            me,
            config: RollupConfig {
                epoch_ms: config.epoch_ms.max(1),
                ..config
            },
            epochs: BTreeMap::new(),
            known: BTreeMap::new(),
            ledgers: BTreeSet::new(),
            tip: [0; 32],
            actions: VecDeque::new(),
            stats: RollupStats::default(),
            tree: None,
            now_ms: 0,
            owed: BTreeMap::new(),
        }
    }

    /// The config.
    pub fn config(&self) -> &RollupConfig {
        &self.config
    }

    /// The epoch a time falls in.
    pub fn epoch_of(&self, at_ms: u64) -> u64 {
        at_ms / self.config.epoch_ms
    }

    /// When epoch `epoch` closes.
    pub fn close_time(&self, epoch: u64) -> u64 {
        epoch
            .saturating_add(1)
            .saturating_mul(self.config.epoch_ms)
            .saturating_add(self.config.grace_ms)
    }

    /// When epoch `epoch` turns final without agreement.
    pub fn final_time(&self, epoch: u64) -> u64 {
        self.close_time(epoch)
            .saturating_add(self.config.reconcile_window_ms)
    }

    fn observe(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    fn is_final_at(&self, epoch: u64, now: u64) -> bool {
        self.epochs.get(&epoch).is_some_and(|e| e.is_final) || now >= self.final_time(epoch)
    }

    /// Whether epoch `epoch` is final here (by agreement, by the window at the
    /// last time seen, or restored).
    pub fn is_final(&self, epoch: u64) -> bool {
        self.is_final_at(epoch, self.now_ms)
    }

    /// Sets the other live ledger peers (e.g. from the capacity table's
    /// ledger-role adverts). Used for agreement and for the anchorer.
    pub fn set_ledgers(&mut self, live: impl IntoIterator<Item = NodeId>) {
        let me = self.me;
        self.ledgers = live
            .into_iter()
            .filter(|n| *n != me)
            .take(self.config.max_ledgers)
            .collect();
    }

    /// The anchorer of `epoch` among the live ledgers and us.
    pub fn anchorer(&self, epoch: u64) -> NodeId {
        let key = crate::hrw::epoch_key(epoch);
        crate::hrw::owner(&key, self.ledgers.iter().chain(std::iter::once(&self.me)))
            .unwrap_or(self.me)
    }

    /// Records a receipt the ledger matched, with its acceptance time.
    pub fn record(&mut self, id: MessageId, accepted_at_ms: u64, now_ms: u64) -> Recorded {
        let now = self.observe(now_ms);
        let epoch = self.epoch_of(accepted_at_ms);
        if let Some(&old) = self.known.get(&id) {
            if epoch >= old {
                return Recorded::Unchanged;
            }
            let was_late = self.epochs.get(&old).is_some_and(|e| e.late.contains(&id));
            if was_late || self.is_final_at(old, now) || self.is_final_at(epoch, now) {
                self.stats.conflicts += 1;
                return Recorded::Unchanged;
            }
            if let Some(e) = self.epochs.get_mut(&old) {
                e.ids.remove(&id);
                if e.own.is_some() {
                    e.dirty = true;
                }
            }
            self.insert(id, epoch);
            return Recorded::Moved {
                from: old,
                to: epoch,
            };
        }
        if self.is_final_at(epoch, now) {
            self.epochs.entry(epoch).or_default().late.insert(id);
            self.known.insert(id, epoch);
            self.stats.late += 1;
            return Recorded::Late { epoch };
        }
        if self.insert(id, epoch) {
            Recorded::Reopened { epoch }
        } else {
            Recorded::Added { epoch }
        }
    }

    /// Inserts into a non-final epoch; true if that reopened a closed one.
    fn insert(&mut self, id: MessageId, epoch: u64) -> bool {
        self.known.insert(id, epoch);
        let e = self.epochs.entry(epoch).or_default();
        e.ids.insert(id);
        if e.own.is_some() {
            e.dirty = true;
            true
        } else {
            false
        }
    }

    /// Closes, re-publishes and finalises epochs whose time has come.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let now = self.observe(now_ms);
        let due: Vec<u64> = self
            .epochs
            .iter()
            .filter(|(e, ep)| !ep.is_final && now >= self.close_time(**e))
            .map(|(e, _)| *e)
            .collect();
        for epoch in due {
            let needs_header = self
                .epochs
                .get(&epoch)
                .is_some_and(|ep| (ep.own.is_none() && !ep.ids.is_empty()) || ep.dirty);
            if needs_header {
                self.close(epoch, now);
            }
            self.reconcile_differing(epoch);
            if now >= self.final_time(epoch) || self.agreed(epoch) {
                self.finalize(epoch);
            } else {
                self.ask_missing_headers(epoch, now);
            }
        }
        // Anchors held back by time alone.
        self.release_anchors();
    }

    fn close(&mut self, epoch: u64, now: u64) {
        let Some(ep) = self.epochs.get_mut(&epoch) else {
            return;
        };
        let leaves: Vec<[u8; 32]> = ep.ids.iter().map(|m| m.0).collect();
        let header = RollupHeader {
            epoch,
            root: merkle::root_of(&leaves),
            count: leaves.len() as u64,
            ledger: self.me,
            prev: self.tip,
            closed_at_ms: now,
        };
        if let Ok(id) = message_id(&self.me, &header) {
            self.tip = id.0;
        }
        if ep.own.is_some() {
            self.stats.revisions += 1;
        }
        ep.own = Some(header.clone());
        ep.dirty = false;
        self.stats.published += 1;
        self.actions.push_back(RollupAction::Publish(header));
    }

    fn agreed(&self, epoch: u64) -> bool {
        let Some(ep) = self.epochs.get(&epoch) else {
            return false;
        };
        let Some(own) = ep.clean_own() else {
            return false;
        };
        self.ledgers.iter().all(|l| {
            ep.peers
                .get(l)
                .is_some_and(|h| h.root == own.root && h.count == own.count)
        })
    }

    fn finalize(&mut self, epoch: u64) {
        let agreed = self.agreed(epoch);
        let anchorer = self.anchorer(epoch);
        let Some(ep) = self.epochs.get_mut(&epoch) else {
            return;
        };
        ep.is_final = true;
        ep.peers.clear();
        ep.reconciles.clear();
        if agreed {
            self.stats.agreed += 1;
        } else {
            self.stats.timed_out += 1;
        }
        let (root, count) = ep.current_root();
        let anchor = ep.own.is_some() && anchorer == self.me;
        self.actions.push_back(RollupAction::Final {
            epoch,
            root,
            count,
            anchor,
        });
        if anchor {
            self.owed.insert(epoch, (root, count));
        }
        self.release_anchors();
    }

    /// Releases, in epoch order, the owed anchors that no earlier epoch
    /// holds back: none known and not yet final, none that can still appear.
    fn release_anchors(&mut self) {
        let first_open = self
            .epochs
            .iter()
            .find(|(_, ep)| !ep.is_final)
            .map(|(e, _)| *e);
        while let Some(&epoch) = self.owed.keys().next() {
            if first_open.is_some_and(|open| open < epoch)
                || self.now_ms < self.anchor_release_time(epoch)
            {
                break;
            }
            if let Some((root, count)) = self.owed.remove(&epoch) {
                self.actions
                    .push_back(RollupAction::Anchor { epoch, root, count });
            }
        }
    }

    /// The earliest time an owed anchor of `epoch` may go: when no earlier
    /// epoch can appear here any more (the previous epoch's final time).
    fn anchor_release_time(&self, epoch: u64) -> u64 {
        epoch.checked_sub(1).map_or(0, |prev| self.final_time(prev))
    }

    /// Anchors owed and not yet released (they wait for an earlier epoch).
    pub fn anchors_waiting(&self) -> usize {
        self.owed.len()
    }

    /// Hands back, while replaying the journal, an anchor this ledger owed
    /// (a [`RollupAction::Final`] with `anchor: true`) and never confirmed.
    /// Call it after the replay's [`Rollup::restore_final`]s: it is released
    /// as a [`RollupAction::Anchor`] at once, or once no earlier epoch holds
    /// it back (then at a [`Rollup::handle_timeout`]).
    pub fn restore_owed_anchor(&mut self, epoch: u64, root: [u8; 32], count: u64) {
        self.owed.insert(epoch, (root, count));
        self.release_anchors();
    }

    /// Live ledgers whose header of a closed epoch we lack, when we published
    /// ours (before that there is nothing to compare).
    fn missing_headers(&self, epoch: u64) -> impl Iterator<Item = NodeId> + '_ {
        let ep = self
            .epochs
            .get(&epoch)
            .filter(|ep| ep.own.is_some() && !ep.is_final);
        self.ledgers
            .iter()
            .filter(move |l| ep.is_some_and(|ep| !ep.peers.contains_key(l)))
            .copied()
    }

    /// When epoch `epoch` next asks for missing headers.
    fn next_ask(&self, epoch: u64) -> u64 {
        self.epochs
            .get(&epoch)
            .and_then(|ep| ep.asked_at)
            .unwrap_or(self.close_time(epoch))
            .saturating_add(HEADER_ASK_MS)
    }

    fn ask_missing_headers(&mut self, epoch: u64, now: u64) {
        if now < self.next_ask(epoch) {
            return;
        }
        let missing: Vec<NodeId> = self.missing_headers(epoch).collect();
        if missing.is_empty() {
            return;
        }
        if let Some(ep) = self.epochs.get_mut(&epoch) {
            ep.asked_at = Some(now);
        }
        self.stats.header_asks += missing.len() as u64;
        for ledger in missing {
            self.actions
                .push_back(RollupAction::RequestHeaders { ledger, epoch });
        }
    }

    /// Late catch-up (module docs): fetch the receipts of a final epoch that
    /// a live ledger's header shows we may lack.
    fn catch_up_final(&mut self, h: &RollupHeader) {
        match self.epochs.get(&h.epoch) {
            // Final by time, not yet by its timer: finalise it now, so the
            // timer does not end the catch-up.
            Some(ep) if !ep.is_final => self.finalize(h.epoch),
            Some(_) => {}
            None => {
                self.epochs.insert(
                    h.epoch,
                    Epoch {
                        is_final: true,
                        ..Epoch::default()
                    },
                );
            }
        }
        self.start_reconcile(h.epoch, h.ledger, h.root, h.count);
    }

    fn reconcile_differing(&mut self, epoch: u64) {
        let Some(ep) = self.epochs.get(&epoch) else {
            return;
        };
        let (root, count) = ep.current_root();
        let differing: Vec<(NodeId, [u8; 32], u64)> = ep
            .peers
            .values()
            .filter(|h| h.root != root || h.count != count)
            .map(|h| (h.ledger, h.root, h.count))
            .collect();
        for (ledger, root, count) in differing {
            self.start_reconcile(epoch, ledger, root, count);
        }
    }

    fn start_reconcile(&mut self, epoch: u64, ledger: NodeId, root: [u8; 32], count: u64) {
        let Some(ep) = self.epochs.get_mut(&epoch) else {
            return;
        };
        if ep.reconciles.get(&ledger).is_some_and(|r| r.root == root) {
            return;
        }
        ep.reconciles.insert(
            ledger,
            Reconcile {
                root,
                count,
                next_after: None,
                received: 0,
                done: false,
            },
        );
        self.stats.reconciles += 1;
        self.actions.push_back(RollupAction::RequestIds {
            ledger,
            epoch,
            after: None,
        });
    }

    /// Feeds another ledger's signed header (from the `rollups` topic).
    pub fn handle_header(
        &mut self,
        signed: &Signed<RollupHeader>,
        now_ms: u64,
    ) -> Result<HeaderOutcome, HeaderRejected> {
        let now = self.observe(now_ms);
        let h = signed.verify()?;
        if h.ledger == self.me {
            return Ok(HeaderOutcome::Own);
        }
        let current = self.epoch_of(now);
        if h.epoch > current {
            return Err(HeaderRejected::FromFuture {
                epoch: h.epoch,
                current,
            });
        }
        if self.is_final_at(h.epoch, now) {
            let agrees = self
                .epochs
                .get(&h.epoch)
                .map(|ep| ep.current_root())
                .is_some_and(|(root, count)| root == h.root && count == h.count);
            if !agrees
                && h.count > 0
                && self.ledgers.contains(&h.ledger)
                && current.saturating_sub(h.epoch) <= LATE_CATCH_UP_EPOCHS
            {
                self.catch_up_final(&h);
            }
            return Ok(HeaderOutcome::Final { agrees });
        }
        let max = self.config.max_ledgers;
        let close = self.close_time(h.epoch);
        let ep = self.epochs.entry(h.epoch).or_default();
        match ep.peers.get(&h.ledger) {
            Some(old) if old == &h => return Ok(HeaderOutcome::Stale),
            Some(old) if (old.closed_at_ms, old.root) >= (h.closed_at_ms, h.root) => {
                return Ok(HeaderOutcome::Stale);
            }
            None if ep.peers.len() >= max => {
                return Err(HeaderRejected::Full {
                    epoch: h.epoch,
                    max,
                });
            }
            _ => {}
        }
        ep.peers.insert(h.ledger, h.clone());
        if now < close {
            return Ok(HeaderOutcome::Stored);
        }
        let (root, count) = ep.current_root();
        if root == h.root && count == h.count {
            if self.agreed(h.epoch) {
                self.finalize(h.epoch);
            }
            Ok(HeaderOutcome::Agrees)
        } else {
            self.start_reconcile(h.epoch, h.ledger, h.root, h.count);
            Ok(HeaderOutcome::Reconciling)
        }
    }

    /// Feeds a page of receipt ids a peer sent for a [`RollupAction::RequestIds`].
    /// Returns how many of them we lack (asked for with
    /// [`RollupAction::FetchReceipts`]).
    pub fn handle_ids(
        &mut self,
        ledger: NodeId,
        epoch: u64,
        ids: &[MessageId],
        more: bool,
    ) -> Result<usize, IdsRejected> {
        let unsolicited = IdsRejected::Unsolicited { ledger, epoch };
        let ep = self.epochs.get_mut(&epoch).ok_or(unsolicited.clone())?;
        let r = ep
            .reconciles
            .get_mut(&ledger)
            .filter(|r| !r.done)
            .ok_or(unsolicited)?;
        let check = (|| {
            if ids.len() > MAX_IDS_PAGE {
                return Err(IdsRejected::TooMany {
                    found: ids.len() as u64,
                    max: MAX_IDS_PAGE as u64,
                });
            }
            let mut prev = r.next_after;
            for (index, id) in ids.iter().enumerate() {
                if prev.is_some_and(|p| *id <= p) {
                    return Err(IdsRejected::NotAscending { index });
                }
                prev = Some(*id);
            }
            // The peer may hold more by now than its header counted (it
            // reopened the epoch since); one page of slack, then a newer
            // header starts a new reconciliation.
            let received = r.received.saturating_add(ids.len() as u64);
            let max = r.count.saturating_add(MAX_IDS_PAGE as u64);
            if received > max {
                return Err(IdsRejected::TooMany {
                    found: received,
                    max,
                });
            }
            Ok(received)
        })();
        let received = match check {
            Ok(n) => n,
            Err(e) => {
                r.done = true;
                return Err(e);
            }
        };
        r.received = received;
        let missing: Vec<MessageId> = ids
            .iter()
            .filter(|id| !self.known.contains_key(id))
            .copied()
            .collect();
        match ids.last() {
            Some(last) if more => {
                r.next_after = Some(*last);
                self.actions.push_back(RollupAction::RequestIds {
                    ledger,
                    epoch,
                    after: Some(*last),
                });
            }
            _ => r.done = true,
        }
        for chunk in missing.chunks(MAX_FETCH_IDS) {
            self.actions.push_back(RollupAction::FetchReceipts {
                ledger,
                ids: chunk.to_vec(),
            });
        }
        self.stats.fetched += missing.len() as u64;
        Ok(missing.len())
    }

    /// A page of our receipt ids of `epoch` after `after`, at most `limit`
    /// (capped at [`MAX_IDS_PAGE`]), and whether more follow: the answer to a
    /// peer's [`crate::ledger::wire::RollupRequest::Ids`].
    pub fn ids_page(
        &self,
        epoch: u64,
        after: Option<MessageId>,
        limit: usize,
    ) -> (Vec<MessageId>, bool) {
        let limit = limit.clamp(1, MAX_IDS_PAGE);
        let Some(ep) = self.epochs.get(&epoch) else {
            return (Vec::new(), false);
        };
        let mut it: Box<dyn Iterator<Item = &MessageId>> = match after {
            Some(a) => Box::new(
                ep.ids
                    .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(ep.ids.iter()),
        };
        let page: Vec<MessageId> = it.by_ref().take(limit).copied().collect();
        let more = it.next().is_some();
        (page, more)
    }

    /// The inclusion proof of a receipt against our current header of its epoch.
    pub fn proof(&mut self, receipt: &MessageId) -> Result<ReceiptProof, ProofError> {
        let epoch = *self
            .known
            .get(receipt)
            .ok_or(ProofError::Unknown(*receipt))?;
        let ep = self
            .epochs
            .get(&epoch)
            .ok_or(ProofError::NotClosed { epoch })?;
        if ep.late.contains(receipt) {
            return Err(ProofError::Late { epoch });
        }
        let header = ep
            .clean_own()
            .cloned()
            .ok_or(ProofError::NotClosed { epoch })?;
        let cached = self
            .tree
            .as_ref()
            .is_some_and(|(e, root, _)| *e == epoch && *root == header.root);
        if !cached {
            let leaves: Vec<[u8; 32]> = ep.ids.iter().map(|m| m.0).collect();
            self.tree = Some((epoch, header.root, MerkleTree::from_leaves(leaves)));
        }
        let (_, _, tree) = self.tree.as_ref().ok_or(ProofError::NotClosed { epoch })?;
        let index = tree
            .leaf_index(&receipt.0)
            .ok_or(ProofError::Unknown(*receipt))?;
        Ok(ReceiptProof {
            header,
            proof: tree.proof(index)?,
        })
    }

    /// Restores one of our own published headers while replaying the
    /// journal: the receipts replayed so far must give exactly its root.
    pub fn restore_header(&mut self, header: RollupHeader) -> Result<(), RestoreError> {
        if header.ledger != self.me {
            return Err(RestoreError::NotOwn {
                epoch: header.epoch,
                ledger: header.ledger,
            });
        }
        let ep = self.epochs.entry(header.epoch).or_default();
        let leaves: Vec<[u8; 32]> = ep.ids.iter().map(|m| m.0).collect();
        let root = merkle::root_of(&leaves);
        if root != header.root || leaves.len() as u64 != header.count {
            return Err(RestoreError::Mismatch {
                epoch: header.epoch,
                expected: hex::encode(header.root),
                expected_count: header.count,
                found: hex::encode(root),
                found_count: leaves.len() as u64,
            });
        }
        if let Ok(id) = message_id(&self.me, &header) {
            self.tip = id.0;
        }
        ep.own = Some(header);
        ep.dirty = false;
        Ok(())
    }

    /// Restores an epoch's finality while replaying the journal.
    pub fn restore_final(&mut self, epoch: u64) {
        let ep = self.epochs.entry(epoch).or_default();
        ep.is_final = true;
        ep.peers.clear();
        ep.reconciles.clear();
    }

    /// The next effect to carry out.
    pub fn poll_action(&mut self) -> Option<RollupAction> {
        self.actions.pop_front()
    }

    /// When [`Rollup::handle_timeout`] next has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        // An owed anchor held back by time alone (an earlier epoch that is
        // not final holds it back by that epoch's own deadline).
        let anchor = self
            .owed
            .keys()
            .next()
            .map(|e| self.anchor_release_time(*e))
            .filter(|at| *at > self.now_ms);
        self.epochs
            .iter()
            .filter(|(_, ep)| !ep.is_final)
            .map(|(e, ep)| {
                let close = self.close_time(*e);
                let needs_header = (ep.own.is_none() && !ep.ids.is_empty()) || ep.dirty;
                let before_close = self.now_ms < close;
                if needs_header || before_close {
                    close
                } else if self.missing_headers(*e).next().is_none() {
                    self.final_time(*e)
                } else {
                    self.final_time(*e).min(self.next_ask(*e))
                }
            })
            .chain(anchor)
            .min()
    }

    /// Our latest header of `epoch`, if published and current.
    pub fn header(&self, epoch: u64) -> Option<&RollupHeader> {
        self.epochs.get(&epoch).and_then(Epoch::clean_own)
    }

    /// The message id of our latest published header (zero before the first):
    /// the `prev` of the next one.
    pub fn chain_tip(&self) -> [u8; 32] {
        self.tip
    }

    /// The epoch a receipt was recorded in.
    pub fn epoch_of_receipt(&self, receipt: &MessageId) -> Option<u64> {
        self.known.get(receipt).copied()
    }

    /// Whether a receipt was recorded (in an epoch, or late).
    pub fn contains(&self, receipt: &MessageId) -> bool {
        self.known.contains_key(receipt)
    }

    /// Receipts recorded in `epoch` (late ones excluded), ascending.
    pub fn ids(&self, epoch: u64) -> impl Iterator<Item = &MessageId> + '_ {
        self.epochs
            .get(&epoch)
            .into_iter()
            .flat_map(|e| e.ids.iter())
    }

    /// The root and count of `epoch` as things stand (the empty root if none).
    pub fn current_root(&self, epoch: u64) -> ([u8; 32], u64) {
        self.epochs
            .get(&epoch)
            .map(Epoch::current_root)
            .unwrap_or((merkle::empty_root(), 0))
    }

    /// Summaries of every epoch held, ascending.
    pub fn epochs(&self) -> Vec<EpochSummary> {
        self.epochs
            .iter()
            .map(|(e, ep)| {
                let own = ep.clean_own().cloned();
                let agreeing = own.as_ref().map_or(0, |o| {
                    ep.peers
                        .values()
                        .filter(|h| h.root == o.root && h.count == o.count)
                        .count()
                });
                EpochSummary {
                    epoch: *e,
                    count: ep.ids.len() as u64,
                    late: ep.late.len() as u64,
                    header: own,
                    is_final: ep.is_final,
                    agreeing,
                }
            })
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> RollupStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
