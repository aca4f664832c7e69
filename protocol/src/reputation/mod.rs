//! Reputation: a per-node score from verified and failed outcomes, decaying
//! with time, exchanged between peers as signed reports with bounded
//! influence.
//!
//! # What this module owns
//!
//! [`ReputationBook`], a small state machine kept by schedulers (which
//! observe verification outcomes, [`Outcome`]) and by ledger peers (which
//! merge schedulers' reports), and the wire type [`ReputationReport`]
//! (message kind 20, gossiped on `rendertrust/reputation/1`).
//!
//! ## The score
//!
//! A beta reputation over *evidence* in milli-outcomes:
//!
//! ```text
//! α = prior_verified + V          β = prior_failed + failure_weight·F + lost_weight·L
//! score = 1000 · α / (α + β)      (per mille)
//! ```
//!
//! `V`, `F`, `L` are verified, failed (caught by verification) and lost
//! (silent or late) outcomes, own observations plus capped peer evidence
//! (below). Defaults: prior (1, 3), so a new identity starts at 250 ‰, below
//! any established honest worker (10 verified: 786 ‰, 30: 912 ‰); a failure
//! weighs 8 verified outcomes, so one catch after 10 verified drops a node to
//! 500 ‰.
//!
//! Evidence decays exponentially with a half-life of 30 days (long enough
//! that a worker verified on a few tasks a day keeps its standing, short
//! enough that a caught cheater's record fades over months, not never).
//! Decay is integer: time is counted in steps of half-life / 16 and each
//! step multiplies by `2^(−1/16)` from a fixed Q32 table, so every machine
//! computes the same score from the same inputs.
//!
//! ## Probation
//!
//! A node is **on probation** while its verified evidence is under 10
//! outcomes, or its score is under 600 ‰, or this book itself caught it
//! within about a half-life (own failed evidence above half an outcome: one
//! catch keeps a node there for 30 days, two for 60). Placement (the
//! scheduler) verifies every task of a probationer and caps its concurrent
//! tasks, so a fresh identity must do about ten honestly verified tasks
//! before it can lie unobserved, and a caught one spends a month verified on
//! every task at one task at a time: throwaway identities are expensive, and
//! so is lying with an established one.
//!
//! ## Reports and their influence
//!
//! A book exports only its **own** observations ([`ReputationBook::report`]:
//! evidence decayed to the report time, the most evidenced nodes first, at
//! most [`MAX_REPORT_ENTRIES`]); it never relays what peers told it, so a
//! claim cannot be amplified by passing it on. A merged report
//! ([`ReputationBook::merge`]) is a weaker signal than own observations, in
//! four ways:
//!
//! 1. **Reporter weight**: `peer_weight` (500 ‰) times the reporter's own
//!    score in *this* book, and zero while the reporter is on probation here
//!    by this book's *own* observations, unless the operator listed it in
//!    `trusted_reporters`. A flood of reports from fresh (Sybil) identities
//!    therefore has no effect at all and costs no memory.
//! 2. **Per-entry cap**: a report counts at most 50 outcomes of each kind per
//!    subject.
//! 3. **Per-subject cap**: at most `max_reporters_per_subject` (8) reporters
//!    per subject are kept (the heaviest), and their total is capped at 5
//!    verified, 3 failed and 3 lost outcomes, less than the 10 own-verified
//!    that leave probation. So peers can warn about a node, within bounds,
//!    but can never vouch a node out of probation: that takes observations
//!    by this book's owner.
//! 4. **Replacement, not accumulation**: a newer report from a reporter
//!    replaces that reporter's earlier evidence about each subject it names;
//!    reports must be fresh (at most an hour old, not from the future) and
//!    newer than the reporter's last.
//!
//! A report about the reporter itself is invalid.
//!
//! # What it must not do
//!
//! No I/O, no clock (`now_ms` comes in), no signing (the driver signs the
//! report the book returns and checks signatures before `merge`).

mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

pub use wire::{MAX_EVIDENCE_MILLI, MAX_REPORT_ENTRIES, ReportEntry, ReputationReport};

/// One outcome of a node's work, as a scheduler observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// A verified result agreed with the verdict.
    Verified,
    /// A result was caught wrong by verification (or its output was unusable).
    Failed,
    /// An accepted task was lost: the worker went silent or ran past its deadline.
    Lost,
}

/// One outcome, in milli-outcomes.
const ONE: u64 = 1000;
/// Decay steps per half-life.
const STEPS_PER_HALF_LIFE: u64 = 16;
/// `2^32 · 2^(−i/16)`, rounded.
const DECAY: [u64; 16] = [
    4_294_967_296,
    4_112_874_773,
    3_938_502_376,
    3_771_522_796,
    3_611_622_603,
    3_458_501_653,
    3_311_872_529,
    3_171_459_999,
    3_037_000_500,
    2_908_241_642,
    2_784_941_738,
    2_666_869_345,
    2_553_802_834,
    2_445_529_972,
    2_341_847_524,
    2_242_560_872,
];

/// `value · 2^(−steps/16)`, in integers.
fn decay(value: u64, steps: u64) -> u64 {
    let halvings = steps / STEPS_PER_HALF_LIFE;
    if halvings >= 64 || value == 0 {
        return 0;
    }
    let v = value >> halvings;
    let f = DECAY[(steps % STEPS_PER_HALF_LIFE) as usize];
    ((u128::from(v) * u128::from(f)) >> 32) as u64
}

/// Settings of a [`ReputationBook`]. The defaults are the documented policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationConfig {
    /// Evidence half-life.
    pub half_life_ms: u64,
    /// Prior verified evidence (α₀), milli-outcomes.
    pub prior_verified_milli: u64,
    /// Prior failed evidence (β₀), milli-outcomes.
    pub prior_failed_milli: u64,
    /// How many verified outcomes one failure outweighs.
    pub failure_weight: u64,
    /// How many verified outcomes one lost task outweighs.
    pub lost_weight: u64,
    /// Verified evidence (own plus capped peers) below which a node is on probation.
    pub probation_min_verified_milli: u64,
    /// Score below which a node is on probation, per mille.
    pub probation_below_permille: u16,
    /// Own failed evidence above which a node is on probation (this book
    /// caught it recently), milli-outcomes.
    pub probation_failed_milli: u64,
    /// A fully trusted reporter's weight, per mille of own observations.
    pub peer_weight_permille: u16,
    /// Most evidence of each kind one report entry counts.
    pub max_report_evidence_milli: u64,
    /// Most verified evidence all peers together add to a subject.
    pub peer_cap_verified_milli: u64,
    /// Most failed evidence all peers together add to a subject.
    pub peer_cap_failed_milli: u64,
    /// Most lost evidence all peers together add to a subject.
    pub peer_cap_lost_milli: u64,
    /// Reporters kept per subject (the heaviest).
    pub max_reporters_per_subject: usize,
    /// Most nodes tracked.
    pub max_nodes: usize,
    /// Most reporters whose last report time is remembered.
    pub max_reporters: usize,
    /// How far in the future a report's time may be.
    pub max_skew_ms: u64,
    /// Oldest report accepted.
    pub max_report_age_ms: u64,
    /// Reporters the operator trusts fully (their weight is `peer_weight`
    /// whatever this book observed of them), e.g. its own schedulers.
    pub trusted_reporters: BTreeSet<NodeId>,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            half_life_ms: 30 * 24 * 3600 * 1000,
            prior_verified_milli: ONE,
            prior_failed_milli: 3 * ONE,
            failure_weight: 8,
            lost_weight: 1,
            probation_min_verified_milli: 10 * ONE,
            probation_below_permille: 600,
            probation_failed_milli: 500,
            peer_weight_permille: 500,
            max_report_evidence_milli: 50 * ONE,
            peer_cap_verified_milli: 5 * ONE,
            peer_cap_failed_milli: 3 * ONE,
            peer_cap_lost_milli: 3 * ONE,
            max_reporters_per_subject: 8,
            max_nodes: 100_000,
            max_reporters: 4096,
            max_skew_ms: 60_000,
            max_report_age_ms: 3_600_000,
            trusted_reporters: BTreeSet::new(),
        }
    }
}

/// Evidence about one node, in milli-outcomes, as of decay step `step`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Verified outcomes.
    pub verified_milli: u64,
    /// Failed outcomes.
    pub failed_milli: u64,
    /// Lost tasks.
    pub lost_milli: u64,
    step: u64,
}

impl Evidence {
    /// The evidence decayed to `step` (no change if `step` is not later).
    fn at(&self, step: u64) -> Evidence {
        let d = step.saturating_sub(self.step);
        Evidence {
            verified_milli: decay(self.verified_milli, d),
            failed_milli: decay(self.failed_milli, d),
            lost_milli: decay(self.lost_milli, d),
            step: step.max(self.step),
        }
    }

    fn is_empty(&self) -> bool {
        self.verified_milli == 0 && self.failed_milli == 0 && self.lost_milli == 0
    }

    fn total(&self) -> u64 {
        self.verified_milli
            .saturating_add(self.failed_milli)
            .saturating_add(self.lost_milli)
    }
}

/// One reporter's (weighted) evidence about a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PeerEvidence {
    reporter: NodeId,
    weight_permille: u16,
    evidence: Evidence,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    own: Evidence,
    /// At most `max_reporters_per_subject`, in reporter order.
    peers: Vec<PeerEvidence>,
}

/// Where a node stands in a book at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The score, per mille (feed to `Scheduler::set_reputation`).
    pub permille: u16,
    /// On probation (feed to `Scheduler::set_probation`).
    pub probation: bool,
    /// Effective evidence: own plus capped peers', decayed to now.
    pub evidence: Evidence,
}

/// Why a report was not merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The report is this book's own.
    #[error("a report by this node itself")]
    OwnReport,
    /// Issued too far in the future.
    #[error("report issued at {issued_at_ms}, more than the allowed skew after now ({now_ms})")]
    FromFuture {
        /// Report time.
        issued_at_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// Too old.
    #[error("report issued at {issued_at_ms} is older than allowed at {now_ms}")]
    Stale {
        /// Report time.
        issued_at_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// Not newer than the reporter's last merged report.
    #[error(
        "report issued at {issued_at_ms}, not after the last one from this reporter ({last_ms})"
    )]
    NotNewer {
        /// Report time.
        issued_at_ms: u64,
        /// The last merged.
        last_ms: u64,
    },
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// The reporter's weight, per mille (0: the report changed nothing).
    pub weight_permille: u16,
    /// Entries applied.
    pub applied: usize,
    /// Entries dropped (subject unknown and the book full, or the subject's
    /// reporter slots held by heavier reporters, or the subject is this node).
    pub dropped: usize,
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationStats {
    /// Own outcomes observed.
    pub observed: u64,
    /// Reports merged with a non-zero weight.
    pub merged: u64,
    /// Reports that had no weight (reporter on probation here).
    pub weightless: u64,
    /// Reports refused (own, stale, future, replayed).
    pub refused: u64,
    /// Nodes evicted because the book was full.
    pub evicted: u64,
}

/// The reputation state machine. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationBook {
    me: NodeId,
    config: ReputationConfig,
    nodes: BTreeMap<NodeId, Entry>,
    /// The last merged report time per reporter with weight.
    reporters: BTreeMap<NodeId, u64>,
    stats: ReputationStats,
}

impl ReputationBook {
    /// An empty book kept by node `me`.
    pub fn new(me: NodeId, config: ReputationConfig) -> Self {
        ReputationBook {
            me,
            config,
            nodes: BTreeMap::new(),
            reporters: BTreeMap::new(),
            stats: ReputationStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ReputationConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> ReputationStats {
        self.stats
    }

    /// Nodes tracked.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is tracked.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn step(&self, now_ms: u64) -> u64 {
        now_ms / (self.config.half_life_ms / STEPS_PER_HALF_LIFE).max(1)
    }

    /// Records an own observation of `node`.
    pub fn observe(&mut self, node: NodeId, outcome: Outcome, now_ms: u64) {
        let step = self.step(now_ms);
        if !self.nodes.contains_key(&node) && self.nodes.len() >= self.config.max_nodes {
            self.evict(step);
        }
        let e = self.nodes.entry(node).or_default();
        e.own = e.own.at(step);
        let slot = match outcome {
            Outcome::Verified => &mut e.own.verified_milli,
            Outcome::Failed => &mut e.own.failed_milli,
            Outcome::Lost => &mut e.own.lost_milli,
        };
        *slot = slot.saturating_add(ONE).min(MAX_EVIDENCE_MILLI);
        self.stats.observed += 1;
    }

    /// Drops the node with the least own evidence (then least peer evidence,
    /// then lowest id): peer hearsay goes first.
    fn evict(&mut self, step: u64) {
        let victim = self
            .nodes
            .iter()
            .map(|(id, e)| {
                let peers: u64 = e.peers.iter().map(|p| p.evidence.at(step).total()).sum();
                (e.own.at(step).total(), peers, *id)
            })
            .min()
            .map(|(_, _, id)| id);
        if let Some(id) = victim {
            self.nodes.remove(&id);
            self.stats.evicted += 1;
        }
    }

    /// Own evidence about `node`, decayed to now.
    pub fn own_evidence(&self, node: &NodeId, now_ms: u64) -> Evidence {
        let step = self.step(now_ms);
        self.nodes
            .get(node)
            .map_or(Evidence::default(), |e| e.own.at(step))
    }

    fn effective(&self, node: &NodeId, step: u64) -> (Evidence, Evidence) {
        let Some(e) = self.nodes.get(node) else {
            return (Evidence::default(), Evidence::default());
        };
        let own = e.own.at(step);
        let mut peers = Evidence::default();
        for p in &e.peers {
            let d = p.evidence.at(step);
            peers.verified_milli = peers.verified_milli.saturating_add(d.verified_milli);
            peers.failed_milli = peers.failed_milli.saturating_add(d.failed_milli);
            peers.lost_milli = peers.lost_milli.saturating_add(d.lost_milli);
        }
        let c = &self.config;
        let total = Evidence {
            verified_milli: own
                .verified_milli
                .saturating_add(peers.verified_milli.min(c.peer_cap_verified_milli)),
            failed_milli: own
                .failed_milli
                .saturating_add(peers.failed_milli.min(c.peer_cap_failed_milli)),
            lost_milli: own
                .lost_milli
                .saturating_add(peers.lost_milli.min(c.peer_cap_lost_milli)),
            step,
        };
        (own, total)
    }

    fn score_of(&self, ev: &Evidence) -> u16 {
        let c = &self.config;
        let alpha = u128::from(c.prior_verified_milli) + u128::from(ev.verified_milli);
        let beta = u128::from(c.prior_failed_milli)
            + u128::from(c.failure_weight) * u128::from(ev.failed_milli)
            + u128::from(c.lost_weight) * u128::from(ev.lost_milli);
        if alpha + beta == 0 {
            return 500;
        }
        (alpha * 1000 / (alpha + beta)) as u16
    }

    /// Probation from effective evidence `ev` and own evidence `own`.
    fn probation_of(&self, ev: &Evidence, own: &Evidence) -> bool {
        ev.verified_milli < self.config.probation_min_verified_milli
            || self.score_of(ev) < self.config.probation_below_permille
            || own.failed_milli > self.config.probation_failed_milli
    }

    /// Where `node` stands now: score and probation from own and capped peer
    /// evidence (the recent-catch rule from own evidence only, so peers
    /// cannot put a node there alone).
    pub fn standing(&self, node: &NodeId, now_ms: u64) -> Standing {
        let (own, ev) = self.effective(node, self.step(now_ms));
        Standing {
            permille: self.score_of(&ev),
            probation: self.probation_of(&ev, &own),
            evidence: ev,
        }
    }

    /// The score of `node` now, per mille.
    pub fn score(&self, node: &NodeId, now_ms: u64) -> u16 {
        self.standing(node, now_ms).permille
    }

    /// Whether `node` is on probation now.
    pub fn on_probation(&self, node: &NodeId, now_ms: u64) -> bool {
        self.standing(node, now_ms).probation
    }

    /// How much a report by `reporter` counts now, per mille of own
    /// observations: `peer_weight` for a trusted reporter; otherwise
    /// `peer_weight × score` judged on **own** evidence only (so reporters
    /// cannot vouch for each other), and 0 while that own evidence leaves the
    /// reporter on probation.
    pub fn reporter_weight(&self, reporter: &NodeId, now_ms: u64) -> u16 {
        let w = self.config.peer_weight_permille.min(1000);
        if self.config.trusted_reporters.contains(reporter) {
            return w;
        }
        let own = self.own_evidence(reporter, now_ms);
        if self.probation_of(&own, &own) {
            return 0;
        }
        (u32::from(w) * u32::from(self.score_of(&own)) / 1000) as u16
    }

    /// This book's own observations as a report (unsigned; the driver signs
    /// it): the `max_entries` (at most [`MAX_REPORT_ENTRIES`]) nodes with the
    /// most own evidence, decayed to `now_ms`, sorted by node id.
    pub fn report(&self, now_ms: u64, max_entries: usize) -> ReputationReport {
        let step = self.step(now_ms);
        let mut picked: Vec<(u64, NodeId, Evidence)> = self
            .nodes
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, e)| {
                let own = e.own.at(step);
                (own.total(), *id, own)
            })
            .filter(|(t, _, _)| *t > 0)
            .collect();
        picked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        picked.truncate(max_entries.min(MAX_REPORT_ENTRIES));
        picked.sort_by_key(|a| a.1);
        ReputationReport {
            reporter: self.me,
            issued_at_ms: now_ms,
            entries: picked
                .into_iter()
                .map(|(_, subject, ev)| ReportEntry {
                    subject,
                    verified_milli: ev.verified_milli,
                    failed_milli: ev.failed_milli,
                    lost_milli: ev.lost_milli,
                })
                .collect(),
        }
    }

    /// Merges a peer's report (its signature checked by the driver, which
    /// also proves `report.reporter` signed it). See the module docs for the
    /// bounds on its influence.
    pub fn merge(&mut self, report: &ReputationReport, now_ms: u64) -> Result<Merged, MergeError> {
        let refuse = |e: MergeError, stats: &mut ReputationStats| {
            stats.refused += 1;
            Err(e)
        };
        let reporter = report.reporter;
        if reporter == self.me {
            return refuse(MergeError::OwnReport, &mut self.stats);
        }
        let issued = report.issued_at_ms;
        if issued > now_ms.saturating_add(self.config.max_skew_ms) {
            return refuse(
                MergeError::FromFuture {
                    issued_at_ms: issued,
                    now_ms,
                },
                &mut self.stats,
            );
        }
        if issued.saturating_add(self.config.max_report_age_ms) < now_ms {
            return refuse(
                MergeError::Stale {
                    issued_at_ms: issued,
                    now_ms,
                },
                &mut self.stats,
            );
        }
        let weight = self.reporter_weight(&reporter, now_ms);
        if weight == 0 {
            self.stats.weightless += 1;
            return Ok(Merged {
                weight_permille: 0,
                applied: 0,
                dropped: report.entries.len(),
            });
        }
        if let Some(last) = self.reporters.get(&reporter)
            && *last >= issued
        {
            return refuse(
                MergeError::NotNewer {
                    issued_at_ms: issued,
                    last_ms: *last,
                },
                &mut self.stats,
            );
        }
        if !self.reporters.contains_key(&reporter)
            && self.reporters.len() >= self.config.max_reporters
        {
            // Forget the reporter heard from longest ago (its evidence stays).
            if let Some(old) = self
                .reporters
                .iter()
                .min_by_key(|(id, at)| (**at, **id))
                .map(|(id, _)| *id)
            {
                self.reporters.remove(&old);
            }
        }
        self.reporters.insert(reporter, issued);
        self.stats.merged += 1;
        let step = self.step(issued.min(now_ms));
        let cap = self.config.max_report_evidence_milli;
        let per_subject = self.config.max_reporters_per_subject.max(1);
        let (mut applied, mut dropped) = (0, 0);
        for entry in &report.entries {
            if entry.subject == self.me || entry.subject == reporter {
                dropped += 1;
                continue;
            }
            let scale = |v: u64| (u128::from(v.min(cap)) * u128::from(weight) / 1000) as u64;
            let evidence = Evidence {
                verified_milli: scale(entry.verified_milli),
                failed_milli: scale(entry.failed_milli),
                lost_milli: scale(entry.lost_milli),
                step,
            };
            if !self.nodes.contains_key(&entry.subject) && self.nodes.len() >= self.config.max_nodes
            {
                dropped += 1; // hearsay never evicts what we know
                continue;
            }
            let e = self.nodes.entry(entry.subject).or_default();
            let pe = PeerEvidence {
                reporter,
                weight_permille: weight,
                evidence,
            };
            match e.peers.binary_search_by(|p| p.reporter.cmp(&reporter)) {
                Ok(i) => {
                    if let Some(slot) = e.peers.get_mut(i) {
                        *slot = pe;
                    }
                }
                Err(i) if e.peers.len() < per_subject => e.peers.insert(i, pe),
                Err(i) => {
                    // Full: replace the lightest reporter if this one is heavier.
                    let lightest = e
                        .peers
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, p)| (p.weight_permille, p.reporter))
                        .map(|(j, p)| (j, p.weight_permille));
                    match lightest {
                        Some((j, w)) if w < weight => {
                            e.peers.remove(j);
                            let i = if j < i { i - 1 } else { i };
                            e.peers.insert(i, pe);
                        }
                        _ => {
                            dropped += 1;
                            continue;
                        }
                    }
                }
            }
            applied += 1;
        }
        Ok(Merged {
            weight_permille: weight,
            applied,
            dropped,
        })
    }

    /// Forgets what has decayed to nothing, and reporters not heard from
    /// within the report age. Call now and then (e.g. hourly).
    pub fn prune(&mut self, now_ms: u64) {
        let step = self.step(now_ms);
        self.nodes.retain(|_, e| {
            e.peers.retain(|p| !p.evidence.at(step).is_empty());
            !e.own.at(step).is_empty() || !e.peers.is_empty()
        });
        let age = self.config.max_report_age_ms;
        self.reporters
            .retain(|_, at| at.saturating_add(age) >= now_ms);
    }

    /// Every node tracked, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.keys()
    }
}
