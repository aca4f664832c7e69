//! The node's reputation book (`docs/trust.md`, "Reputation and probation"):
//! the driver of `protocol::reputation::ReputationBook` on schedulers and
//! ledger peers.
//!
//! * **Fed by outcomes**: each scheduler `Outcome` action goes to
//!   `ReputationBook::observe`; the node's new standing goes back into the
//!   scheduler (`set_reputation`, `set_probation`). Standings are pushed for
//!   every known node at start and every [`REPORT_EVERY`] (scores decay), and
//!   for the subjects of every merged report.
//! * **Persisted** in the sled tree `reputation` (key `book`), written at most
//!   every [`SAVE_EVERY`] when it changed and at stop, so a crash loses at
//!   most the outcomes of the last [`SAVE_EVERY`].
//! * **Reports**: every [`REPORT_EVERY`] the node signs its book's own
//!   observations (`ReputationBook::report`) and publishes them on
//!   `rendertrust/reputation/1`. Reports received are decoded (bounded),
//!   their signature checked, then merged: a merged report is `Accept`ed
//!   (forwarded), a malformed or badly signed one `Reject`ed (its sender's
//!   gossipsub score pays, `net::score`), a stale, replayed or own one
//!   `Ignore`d.
//!
//! What it must not do: decide anything about scores, weights or probation
//! (all of it is `protocol::reputation`'s).

use std::time::Duration;

use rendertrust_protocol::codec;
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::reputation::{
    MAX_REPORT_ENTRIES, MergeError, Outcome, ReputationBook, ReputationConfig, ReputationReport,
};
use rendertrust_protocol::signed::Signed;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::handle::JobsError;
use super::service::JobService;
use crate::net::{InboundGossip, Topic, Verdict};
use crate::store::Store;

/// Least time between two writes of the book.
pub const SAVE_EVERY: Duration = Duration::from_secs(2);
/// How often a report is published (and standings refreshed).
pub const REPORT_EVERY: Duration = Duration::from_secs(180);
/// The sled tree and key of the book.
const TREE: &str = "reputation";
const KEY: &[u8] = b"book";

/// The book and its driver state.
pub(crate) struct Reputation {
    pub(crate) book: ReputationBook,
    dirty: bool,
    saved: Instant,
    reported: Instant,
}

/// One node as `GET /v1/reputation` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReputation {
    /// The node (peer id).
    pub node: String,
    /// Score, per mille (a new node: 250).
    pub permille: u16,
    /// On probation: every task verified, one at a time.
    pub probation: bool,
    /// Verified outcomes (own plus capped peers'), milli, decayed to now.
    pub verified_milli: u64,
    /// Failed (caught) outcomes, milli.
    pub failed_milli: u64,
    /// Lost tasks, milli.
    pub lost_milli: u64,
}

/// `GET /v1/reputation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationView {
    /// The node that answers.
    pub keeper: String,
    /// Whether it keeps a book (schedulers and ledger peers do).
    pub keeps_book: bool,
    /// Nodes, best score first (or the one asked for).
    pub nodes: Vec<NodeReputation>,
}

impl Reputation {
    /// The stored book of `me`, or a new one.
    pub(crate) fn load(store: &Store, me: NodeId, config: ReputationConfig) -> Reputation {
        let stored = store
            .tree(TREE)
            .ok()
            .and_then(|t| t.get(KEY).ok().flatten())
            .and_then(|bytes| match codec::decode_local::<ReputationBook>(&bytes) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, "stored reputation book unusable; starting empty");
                    None
                }
            });
        let book = match stored {
            Some(b) => {
                tracing::info!(nodes = b.len(), "reputation book restored");
                b
            }
            None => ReputationBook::new(me, config),
        };
        Reputation {
            book,
            dirty: false,
            saved: Instant::now(),
            reported: Instant::now(),
        }
    }

    /// Writes the book if it changed (at most every [`SAVE_EVERY`] unless `force`).
    pub(crate) fn persist(&mut self, store: &Store, force: bool) {
        if !self.dirty || (!force && self.saved.elapsed() < SAVE_EVERY) {
            return;
        }
        match codec::encode_local(&self.book) {
            Ok(bytes) => match store.tree(TREE) {
                Ok(t) => {
                    if let Err(e) = t.insert(KEY, bytes) {
                        tracing::warn!(error = %e, "writing the reputation book");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "opening the reputation tree"),
            },
            Err(e) => tracing::warn!(error = %e, "encoding the reputation book"),
        }
        self.dirty = false;
        self.saved = Instant::now();
    }

    fn view_of(&self, node: &NodeId, now_ms: u64) -> NodeReputation {
        let s = self.book.standing(node, now_ms);
        NodeReputation {
            node: node.to_string(),
            permille: s.permille,
            probation: s.probation,
            verified_milli: s.evidence.verified_milli,
            failed_milli: s.evidence.failed_milli,
            lost_milli: s.evidence.lost_milli,
        }
    }
}

/// What a received report's merge means for gossipsub.
fn verdict_of(result: &Result<(), ReportRefused>) -> Verdict {
    match result {
        Ok(()) => Verdict::Accept,
        Err(ReportRefused::Malformed(_)) => Verdict::Reject,
        Err(ReportRefused::NotMerged(_)) | Err(ReportRefused::NoBook) => Verdict::Ignore,
    }
}

/// Decodes (bounded) and verifies a signed report.
fn decode_report(data: &[u8]) -> Result<ReputationReport, ReportRefused> {
    Signed::<ReputationReport>::from_slice(data)
        .and_then(|f| f.verify())
        .map_err(|e| ReportRefused::Malformed(e.to_string()))
}

/// Why a received report was not merged.
#[derive(Debug, thiserror::Error)]
enum ReportRefused {
    #[error("malformed or badly signed report: {0}")]
    Malformed(String),
    #[error("{0}")]
    NotMerged(MergeError),
    #[error("this node keeps no reputation book")]
    NoBook,
}

impl JobService {
    /// A scheduler `Outcome`: into the book, the new standing back into the scheduler.
    pub(crate) fn on_outcome(&mut self, worker: NodeId, outcome: Outcome, now_ms: u64) {
        let Some(rep) = self.reputation.as_mut() else {
            return;
        };
        rep.book.observe(worker, outcome, now_ms);
        rep.dirty = true;
        let standing = rep.book.standing(&worker, now_ms);
        tracing::info!(%worker, ?outcome, permille = standing.permille, probation = standing.probation, "reputation outcome");
        if let Some(s) = self.scheduler.as_mut() {
            s.set_reputation(worker, standing.permille);
            s.set_probation(worker, standing.probation);
            self.sched_dirty = true;
        }
    }

    /// Pushes the book's standing of `nodes` into the scheduler.
    pub(crate) fn push_standings(&mut self, nodes: &[NodeId], now_ms: u64) {
        let (Some(rep), Some(s)) = (self.reputation.as_ref(), self.scheduler.as_mut()) else {
            return;
        };
        for node in nodes {
            let standing = rep.book.standing(node, now_ms);
            s.set_reputation(*node, standing.permille);
            s.set_probation(*node, standing.probation);
        }
        self.sched_dirty = true;
    }

    /// Every [`REPORT_EVERY`]: refresh standings (decay), prune, publish a report.
    pub(crate) fn reputation_tick(&mut self, now_ms: u64) {
        let Some(rep) = self.reputation.as_mut() else {
            return;
        };
        if rep.reported.elapsed() < REPORT_EVERY {
            return;
        }
        rep.reported = Instant::now();
        rep.book.prune(now_ms);
        let report = rep.book.report(now_ms, MAX_REPORT_ENTRIES);
        let nodes: Vec<NodeId> = rep.book.nodes().copied().collect();
        self.push_standings(&nodes, now_ms);
        if report.entries.is_empty() {
            return;
        }
        let bytes = match Signed::sign(&self.key, &report) {
            Ok(s) => s.into_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign a reputation report");
                return;
            }
        };
        let net = self.net.clone();
        let entries = report.entries.len();
        tokio::spawn(async move {
            match net.publish(Topic::Reputation, bytes).await {
                Ok(()) => tracing::debug!(entries, "reputation report published"),
                Err(e) => tracing::debug!(error = %e, "publishing a reputation report"),
            }
        });
    }

    /// A report from the reputation topic: check, merge, tell gossipsub.
    pub(crate) fn on_reputation_gossip(&mut self, g: InboundGossip, now_ms: u64) {
        let result = self.merge_report(&g.data, now_ms);
        match &result {
            Ok(()) => tracing::debug!(source = %g.source, "reputation report merged"),
            Err(e) => {
                tracing::debug!(source = %g.source, error = %e, "reputation report not merged")
            }
        }
        let verdict = verdict_of(&result);
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.validate(g.id, g.source, verdict).await;
        });
    }

    fn merge_report(&mut self, data: &[u8], now_ms: u64) -> Result<(), ReportRefused> {
        let report = decode_report(data)?;
        let rep = self.reputation.as_mut().ok_or(ReportRefused::NoBook)?;
        rep.book
            .merge(&report, now_ms)
            .map_err(ReportRefused::NotMerged)?;
        rep.dirty = true;
        let subjects: Vec<NodeId> = report.entries.iter().map(|e| e.subject).collect();
        self.push_standings(&subjects, now_ms);
        Ok(())
    }

    /// `GET /v1/reputation[/NODE]`.
    pub(crate) fn reputation_view(
        &self,
        node: Option<&str>,
        now_ms: u64,
    ) -> Result<ReputationView, JobsError> {
        let mut view = ReputationView {
            keeper: self.me.to_string(),
            keeps_book: self.reputation.is_some(),
            nodes: Vec::new(),
        };
        let Some(rep) = self.reputation.as_ref() else {
            return Ok(view);
        };
        match node {
            Some(text) => {
                let id: NodeId = text.trim().parse().map_err(|_| {
                    JobsError::Refused(format!(
                        "node {text:?}: expected a peer id or 64 hex digits"
                    ))
                })?;
                view.nodes.push(rep.view_of(&id, now_ms));
            }
            None => {
                view.nodes = rep.book.nodes().map(|n| rep.view_of(n, now_ms)).collect();
                view.nodes
                    .sort_by(|a, b| b.permille.cmp(&a.permille).then(a.node.cmp(&b.node)));
            }
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::identity::NodeKey;

    #[test]
    fn the_book_survives_a_restart_and_writes_are_debounced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let me = NodeId::from_bytes([1; 32]);
        let w = NodeId::from_bytes([2; 32]);
        let mut rep = Reputation::load(&store, me, ReputationConfig::default());
        assert!(rep.book.is_empty());
        rep.book.observe(w, Outcome::Failed, 1_000);
        rep.dirty = true;
        // Within the debounce nothing is written unless forced.
        rep.persist(&store, false);
        assert!(
            Reputation::load(&store, me, ReputationConfig::default())
                .book
                .is_empty()
        );
        rep.persist(&store, true);
        let again = Reputation::load(&store, me, ReputationConfig::default());
        assert_eq!(again.book, rep.book);
        assert!(again.book.on_probation(&w, 2_000));
    }

    #[test]
    fn reports_are_checked_before_merging() {
        let verdict = |r: Result<(), ReportRefused>| verdict_of(&r);
        assert_eq!(verdict(Ok(())), Verdict::Accept);
        assert_eq!(
            verdict(Err(ReportRefused::Malformed("x".into()))),
            Verdict::Reject
        );
        assert_eq!(
            verdict(Err(ReportRefused::NotMerged(MergeError::OwnReport))),
            Verdict::Ignore
        );
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed([7; 32]);
        let key = NodeKey::generate(&mut rng);
        let mut report = ReputationReport {
            reporter: key.node_id(),
            issued_at_ms: 1,
            entries: vec![rendertrust_protocol::reputation::ReportEntry {
                subject: NodeId::from_bytes([3; 32]),
                verified_milli: 0,
                failed_milli: 1000,
                lost_milli: 0,
            }],
        };
        let mut frame = Signed::sign(&key, &report).unwrap().into_bytes();
        assert_eq!(decode_report(&frame).unwrap(), report);
        // Tampered bytes, truncated frames and garbage are malformed.
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert!(matches!(
            decode_report(&frame),
            Err(ReportRefused::Malformed(_))
        ));
        assert!(matches!(
            decode_report(&frame[..10]),
            Err(ReportRefused::Malformed(_))
        ));
        // A report naming another reporter than its signer cannot be made.
        report.reporter = NodeId::from_bytes([9; 32]);
        assert!(Signed::sign(&key, &report).is_err());
    }
}
