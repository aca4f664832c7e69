//! [`LedgerPeer`]: the ledger and the rollup of one ledger peer, wired.
//!
//! The one place where receipts the ledger matches reach the rollup, so the
//! node and the simulator drive the same pair the same way. Owns no rule of
//! its own.

use crate::identity::NodeId;
use crate::rollup::{
    HeaderOutcome, HeaderRejected, IdsRejected, Rollup, RollupAction, RollupConfig,
};
use crate::signed::{MessageId, Signed};
use crate::wire::RollupHeader;

use super::{Applied, Ledger, LedgerConfig, LedgerEvent, LedgerRejected};

/// A ledger peer's protocol state: credits ([`Ledger`]) and epochs ([`Rollup`]).
///
/// Driver contract: feed events with [`LedgerPeer::handle_events`] (journal
/// those that return `Ok` before acknowledging them), peers' headers with
/// [`LedgerPeer::handle_header`], reconciliation pages with
/// [`LedgerPeer::handle_ids`]; call [`LedgerPeer::handle_timeout`] at
/// [`LedgerPeer::next_deadline`]; carry out [`LedgerPeer::poll_action`]
/// until it returns `None`.
#[derive(Debug, Clone)]
pub struct LedgerPeer {
    ledger: Ledger,
    rollup: Rollup,
}

impl LedgerPeer {
    /// A fresh peer for ledger node `me`.
    pub fn new(me: NodeId, ledger: LedgerConfig, rollup: RollupConfig) -> Self {
        LedgerPeer {
            ledger: Ledger::new(ledger),
            rollup: Rollup::new(me, rollup),
        }
    }

    /// Feeds ledger events (see [`Ledger::handle_events`]); the receipts they
    /// match are recorded in the rollup.
    pub fn handle_events(
        &mut self,
        events: &[LedgerEvent],
        now_ms: u64,
    ) -> Vec<Result<Applied, LedgerRejected>> {
        let out = self.ledger.handle_events(events, now_ms);
        for (id, accepted_at) in self.ledger.take_matched() {
            self.rollup.record(id, accepted_at, now_ms);
        }
        out
    }

    /// Feeds another ledger's header (see [`Rollup::handle_header`]).
    pub fn handle_header(
        &mut self,
        header: &Signed<RollupHeader>,
        now_ms: u64,
    ) -> Result<HeaderOutcome, HeaderRejected> {
        self.rollup.handle_header(header, now_ms)
    }

    /// Feeds a page of a peer's receipt ids (see [`Rollup::handle_ids`]).
    pub fn handle_ids(
        &mut self,
        ledger: NodeId,
        epoch: u64,
        ids: &[MessageId],
        more: bool,
    ) -> Result<usize, IdsRejected> {
        self.rollup.handle_ids(ledger, epoch, ids, more)
    }

    /// Expires escrows, closes and finalises epochs.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.ledger.handle_timeout(now_ms);
        self.rollup.handle_timeout(now_ms);
    }

    /// When [`LedgerPeer::handle_timeout`] next has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        match (self.ledger.next_deadline(), self.rollup.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next effect to carry out.
    pub fn poll_action(&mut self) -> Option<RollupAction> {
        self.rollup.poll_action()
    }

    /// The credit ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The rollup.
    pub fn rollup(&self) -> &Rollup {
        &self.rollup
    }

    /// The rollup, mutably (set live ledgers, restore from a journal, proofs).
    pub fn rollup_mut(&mut self) -> &mut Rollup {
        &mut self.rollup
    }
}
