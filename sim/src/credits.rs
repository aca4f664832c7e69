//! The credit seam: where escrows, refunds and settlements go.
//!
//! The scheduler publishes `Escrow` and `Closed` (refund) actions, the
//! creator countersigns receipts (settle). In the mesh these travel to
//! ledger peers (`protocol::ledger`). This module *observes* the three flows
//! on every run and keeps no rule of its own: a settle pays the receipt's
//! price to its worker, a refund releases the escrow it names, and the books
//! must balance (`escrowed = settled + refunded + still open`). With
//! `[ledger] enabled` the world also feeds the real `Ledger` machine
//! (`world::LedgerDriver`) and takes balances from it.

use rustc_hash::FxHashMap;
use serde::Serialize;

use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::scheduler::CloseReason;
use rendertrust_protocol::wire::{Receipt, ReceiptAcceptance, TaskId};

/// The flows of credits, as the simulator sees them.
///
/// Hash maps, never iterated in an order that shows: `totals` and `jain`
/// only sum (exactly, in integers), so outputs do not depend on the maps'
/// order. (Ordered maps of 10⁵ node ids cost a chain of cache misses per
/// settle.)
#[derive(Debug, Clone, Default)]
pub struct Credits {
    open: FxHashMap<(TaskId, u32), (NodeId, u64)>,
    earned: FxHashMap<NodeId, u64>,
    totals: CreditTotals,
}

/// Totals, for the summary and the conservation check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CreditTotals {
    /// Credits escrowed (one escrow per accepted attempt).
    pub escrowed: u64,
    /// Credits paid to workers (countersigned receipts).
    pub settled: u64,
    /// Credits returned to creators (attempts closed without payment).
    pub refunded: u64,
    /// Escrows neither settled nor refunded at the end.
    pub open_escrows: u64,
    /// Their credits.
    pub open_credits: u64,
    /// Escrows published twice for one attempt (must stay 0).
    pub double_escrows: u64,
    /// Refunds naming no open escrow.
    pub unmatched_refunds: u64,
    /// Settlements naming no open escrow.
    pub unmatched_settles: u64,
    /// Credits paid for outputs that were wrong (no verification policy yet).
    pub paid_for_wrong: u64,
}

impl Credits {
    /// An escrow for an accepted attempt.
    pub fn escrow(&mut self, task: TaskId, attempt: u32, worker: NodeId, price: u64) {
        if self.open.insert((task, attempt), (worker, price)).is_some() {
            self.totals.double_escrows += 1;
        }
        self.totals.escrowed += price;
    }

    /// A refund of an attempt's escrow.
    pub fn refund(&mut self, task: TaskId, attempt: u32, _worker: NodeId, _why: CloseReason) {
        match self.open.remove(&(task, attempt)) {
            Some((_, price)) => self.totals.refunded += price,
            None => self.totals.unmatched_refunds += 1,
        }
    }

    /// A countersigned receipt.
    pub fn settle(&mut self, receipt: &Receipt, _acceptance: &ReceiptAcceptance, wrong: bool) {
        match self.open.remove(&(receipt.task, receipt.attempt)) {
            Some((worker, price)) => {
                self.totals.settled += price;
                *self.earned.entry(worker).or_default() += price;
                if wrong {
                    self.totals.paid_for_wrong += price;
                }
            }
            None => self.totals.unmatched_settles += 1,
        }
    }

    /// Credits a node earned.
    pub fn earned(&self, node: &NodeId) -> u64 {
        self.earned.get(node).copied().unwrap_or(0)
    }

    /// Totals now.
    pub fn totals(&self) -> CreditTotals {
        let mut t = self.totals;
        t.open_escrows = self.open.len() as u64;
        t.open_credits = self.open.values().map(|(_, p)| *p).sum();
        t
    }

    /// Whether every escrowed credit is settled, refunded or still open.
    pub fn balanced(&self) -> bool {
        let t = self.totals();
        t.escrowed == t.settled + t.refunded + t.open_credits
    }

    /// Jain's fairness index of credits over the nodes that earned any
    /// (1: all equal; `1/n`: one node has everything). The sums are exact
    /// (integers), so the result does not depend on the order of the nodes.
    pub fn jain(&self) -> f64 {
        let (mut s, mut s2) = (0u128, 0u128);
        for v in self.earned.values() {
            let v = u128::from(*v);
            s += v;
            s2 += v * v;
        }
        if s2 == 0 {
            1.0
        } else {
            let s = s as f64;
            s * s / (self.earned.len() as f64 * s2 as f64)
        }
    }
}

/// Jain's fairness index `(Σx)² / (n Σx²)` (1.0 for no or all-zero values).
pub fn jain(values: impl Iterator<Item = f64>) -> f64 {
    let (mut n, mut s, mut s2) = (0.0, 0.0, 0.0);
    for v in values {
        n += 1.0;
        s += v;
        s2 += v * v;
    }
    if s2 <= 0.0 { 1.0 } else { s * s / (n * s2) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::wire::JobId;

    #[test]
    fn books_balance_and_mismatches_are_counted() {
        let mut c = Credits::default();
        let t = |i| TaskId {
            job: JobId([1; 32]),
            index: i,
        };
        let w = NodeId::from_bytes([2; 32]);
        c.escrow(t(0), 0, w, 10);
        c.escrow(t(1), 0, w, 10);
        c.escrow(t(1), 1, w, 10);
        c.refund(t(1), 0, w, CloseReason::Silent);
        c.refund(t(9), 0, w, CloseReason::Silent);
        let receipt = Receipt {
            task: t(0),
            worker: w,
            creator: w,
            scheduler: w,
            attempt: 0,
            output_hash: [0; 32],
            usage: Default::default(),
            started_at_ms: 0,
            finished_at_ms: 1,
            price: 10,
        };
        let acc = ReceiptAcceptance {
            receipt_id: [0; 32],
            creator: w,
            accepted_at_ms: 1,
        };
        c.settle(&receipt, &acc, false);
        c.settle(&receipt, &acc, false);
        let tot = c.totals();
        assert_eq!((tot.escrowed, tot.settled, tot.refunded), (30, 10, 10));
        assert_eq!((tot.open_escrows, tot.open_credits), (1, 10));
        assert_eq!((tot.unmatched_refunds, tot.unmatched_settles), (1, 1));
        assert!(c.balanced());
        assert_eq!(c.earned(&w), 10);
        assert_eq!(c.jain(), 1.0);
        // A second earner with three times as much: (10 + 30)² / (2 (10² + 30²)).
        let w2 = NodeId::from_bytes([3; 32]);
        c.escrow(t(2), 0, w2, 30);
        c.settle(
            &Receipt {
                task: t(2),
                worker: w2,
                price: 30,
                ..receipt
            },
            &acc,
            false,
        );
        assert!((c.jain() - 0.8).abs() < 1e-12, "{}", c.jain());
        assert_eq!(c.jain(), jain([10.0, 30.0].into_iter()));
    }

    #[test]
    fn jain_index() {
        assert!((jain([1.0, 1.0, 1.0].into_iter()) - 1.0).abs() < 1e-12);
        assert!((jain([1.0, 0.0, 0.0, 0.0].into_iter()) - 0.25).abs() < 1e-12);
        assert_eq!(jain(std::iter::empty()), 1.0);
    }
}
