use proptest::prelude::*;

use super::*;
use crate::codec;
use crate::identity::NodeKey;
use crate::signed::Signed;
use crate::wire::{ValidationError, WireMessage};

const T0: u64 = 1_780_000_000_000;
const DAY: u64 = 24 * 3600 * 1000;

fn id(b: u8) -> NodeId {
    NodeId::from_bytes([b; 32])
}

fn book() -> ReputationBook {
    ReputationBook::new(id(0), ReputationConfig::default())
}

fn verified(b: &mut ReputationBook, node: NodeId, n: usize, now: u64) {
    for _ in 0..n {
        b.observe(node, Outcome::Verified, now);
    }
}

#[test]
fn new_nodes_start_low_and_on_probation() {
    let b = book();
    let s = b.standing(&id(1), T0);
    assert_eq!(s.permille, 250);
    assert!(s.probation);
}

#[test]
fn ten_verified_leave_probation_and_one_catch_returns_to_it() {
    let mut b = book();
    verified(&mut b, id(1), 9, T0);
    assert!(b.on_probation(&id(1), T0), "nine are not enough");
    verified(&mut b, id(1), 1, T0);
    let s = b.standing(&id(1), T0);
    assert!(!s.probation);
    assert_eq!(s.permille, 785); // 11 / 14
    b.observe(id(1), Outcome::Failed, T0);
    let s = b.standing(&id(1), T0);
    assert_eq!(s.permille, 500); // 11 / 22
    assert!(s.probation);
    // A lost task weighs like one verified outcome the other way.
    verified(&mut b, id(2), 30, T0);
    let before = b.score(&id(2), T0);
    b.observe(id(2), Outcome::Lost, T0);
    assert!(b.score(&id(2), T0) < before);
    assert!(!b.on_probation(&id(2), T0));
}

#[test]
fn a_catch_means_a_half_life_of_probation_however_established() {
    let mut b = book();
    verified(&mut b, id(1), 200, T0);
    b.observe(id(1), Outcome::Failed, T0);
    let s = b.standing(&id(1), T0);
    assert!(s.permille > 900, "the score barely moves: {}", s.permille);
    assert!(s.probation, "but the node is verified on every task again");
    let h = b.config().half_life_ms;
    assert!(b.on_probation(&id(1), T0 + h - h / 8));
    assert!(!b.on_probation(&id(1), T0 + h + h / 8));
    // Two catches: two half-lives.
    b.observe(id(1), Outcome::Failed, T0 + h + h / 8);
    assert!(b.on_probation(&id(1), T0 + 2 * h + h / 4));
    assert!(!b.on_probation(&id(1), T0 + 3 * h));
    // Peers alone cannot put a node there: their failures only weigh on the score.
    let mut cfg = ReputationConfig::default();
    cfg.trusted_reporters.insert(id(9));
    let mut c = ReputationBook::new(id(0), cfg);
    verified(&mut c, id(2), 200, T0);
    c.merge(&report(id(9), T0, &[(2, 0, 50_000)]), T0).unwrap();
    assert!(!c.on_probation(&id(2), T0));
}

#[test]
fn evidence_halves_every_half_life() {
    let mut b = book();
    verified(&mut b, id(1), 16, T0);
    let h = b.config().half_life_ms;
    assert_eq!(b.own_evidence(&id(1), T0).verified_milli, 16_000);
    // The step grid starts at a multiple of the step: allow one step of slack.
    let v = b.own_evidence(&id(1), T0 + h).verified_milli;
    assert!((7_600..=8_000).contains(&v), "{v}");
    let v = b.own_evidence(&id(1), T0 + 10 * h).verified_milli;
    assert!(v <= 16, "{v}");
    assert_eq!(b.own_evidence(&id(1), T0 + 70 * h).verified_milli, 0);
    // An inactive node drifts back into probation; a cheater's record fades.
    assert!(b.on_probation(&id(1), T0 + 2 * h));
    b.prune(T0 + 70 * h);
    assert!(b.is_empty());
    // Time going backwards changes nothing.
    verified(&mut b, id(2), 4, T0);
    assert_eq!(b.own_evidence(&id(2), T0 - DAY).verified_milli, 4_000);
}

#[test]
fn decay_matches_the_table() {
    assert_eq!(decay(1 << 20, 16), 1 << 19);
    assert_eq!(decay(1 << 20, 0), 1 << 20);
    assert_eq!(decay(1000, 8), 707); // 1000 / √2
    assert_eq!(decay(u64::MAX, 64 * 16), 0);
    assert_eq!(decay(0, 3), 0);
}

fn sign(key: &NodeKey, r: &ReputationReport) -> ReputationReport {
    // Through the real signed codec, as a peer's report arrives.
    let s = Signed::sign(key, r).unwrap();
    Signed::<ReputationReport>::from_bytes(s.into_bytes())
        .unwrap()
        .verify()
        .unwrap()
}

#[test]
fn reports_carry_own_observations_only_sorted_and_bounded() {
    let k = NodeKey::from_secret_bytes(&[5; 32]);
    let mut b = ReputationBook::new(k.node_id(), ReputationConfig::default());
    for i in 1..=20u8 {
        verified(&mut b, id(i), usize::from(i), T0);
    }
    b.observe(k.node_id(), Outcome::Verified, T0); // never reported
    let r = b.report(T0, 5);
    assert_eq!(r.entries.len(), 5);
    let subjects: Vec<NodeId> = r.entries.iter().map(|e| e.subject).collect();
    assert_eq!(subjects, vec![id(16), id(17), id(18), id(19), id(20)]);
    assert_eq!(r.entries[4].verified_milli, 20_000);
    assert_eq!(sign(&k, &r), r);
    // Peer hearsay is not re-exported.
    let mut cfg = ReputationConfig::default();
    cfg.trusted_reporters.insert(id(99));
    let mut c = ReputationBook::new(id(0), cfg);
    let heard = ReputationReport {
        reporter: id(99),
        issued_at_ms: T0,
        entries: vec![ReportEntry {
            subject: id(3),
            verified_milli: 5000,
            failed_milli: 0,
            lost_milli: 0,
        }],
    };
    c.merge(&heard, T0).unwrap();
    assert!(c.report(T0, 100).entries.is_empty());
}

#[test]
fn invalid_reports_are_refused_at_decoding() {
    let k = NodeKey::from_secret_bytes(&[5; 32]);
    let e = |b: u8| ReportEntry {
        subject: id(b),
        verified_milli: 1,
        failed_milli: 0,
        lost_milli: 0,
    };
    let mut r = ReputationReport {
        reporter: k.node_id(),
        issued_at_ms: T0,
        entries: vec![e(2), e(1)],
    };
    assert!(matches!(
        r.validate(),
        Err(ValidationError::Invalid {
            field: "entries",
            ..
        })
    ));
    r.entries = vec![e(1), e(1)];
    assert!(r.validate().is_err(), "repeats");
    r.entries = vec![ReportEntry {
        subject: k.node_id(),
        ..e(1)
    }];
    assert!(r.validate().is_err(), "about itself");
    r.entries = vec![ReportEntry {
        failed_milli: MAX_EVIDENCE_MILLI + 1,
        ..e(1)
    }];
    assert!(r.validate().is_err());
    r.entries = (0..=MAX_REPORT_ENTRIES)
        .map(|i| ReportEntry {
            subject: NodeId::from_bytes({
                let mut b = [0u8; 32];
                b[..4].copy_from_slice(&(i as u32).to_be_bytes());
                b
            }),
            ..e(0)
        })
        .collect();
    assert!(matches!(r.validate(), Err(ValidationError::TooLong { .. })));
    assert!(Signed::sign(&k, &r).is_err());
    // A full report fits its size limit.
    r.entries.truncate(MAX_REPORT_ENTRIES);
    for en in &mut r.entries {
        en.verified_milli = MAX_EVIDENCE_MILLI;
        en.failed_milli = MAX_EVIDENCE_MILLI;
        en.lost_milli = MAX_EVIDENCE_MILLI;
    }
    let bytes = codec::encode(&r).unwrap();
    assert!(bytes.len() <= ReputationReport::MAX_BODY, "{}", bytes.len());
    assert!(Signed::sign(&k, &r).is_ok());
}

fn report(reporter: NodeId, at: u64, subjects: &[(u8, u64, u64)]) -> ReputationReport {
    ReputationReport {
        reporter,
        issued_at_ms: at,
        entries: subjects
            .iter()
            .map(|(s, v, f)| ReportEntry {
                subject: id(*s),
                verified_milli: *v,
                failed_milli: *f,
                lost_milli: 0,
            })
            .collect(),
    }
}

#[test]
fn reports_from_unknown_identities_change_nothing() {
    let mut b = book();
    verified(&mut b, id(1), 30, T0);
    let before = b.clone();
    // A Sybil flood: 2000 fresh identities each claim node 1 failed 50 times
    // and node 2 verified 50 times.
    for i in 0..2000u32 {
        let mut r = [0xAAu8; 32];
        r[..4].copy_from_slice(&i.to_le_bytes());
        let m = b
            .merge(
                &report(NodeId::from_bytes(r), T0, &[(1, 0, 50_000), (2, 50_000, 0)]),
                T0,
            )
            .unwrap();
        assert_eq!(m.weight_permille, 0);
    }
    assert_eq!(b.standing(&id(1), T0), before.standing(&id(1), T0));
    assert!(b.on_probation(&id(2), T0));
    assert_eq!(b.len(), 1, "no memory spent on the flood");
    assert_eq!(b.stats().weightless, 2000);
}

#[test]
fn established_reporters_count_within_caps() {
    let mut b = book();
    // 20 reporters this book knows as honest workers.
    let reporters: Vec<NodeId> = (100..120).map(id).collect();
    for r in &reporters {
        verified(&mut b, *r, 40, T0);
    }
    verified(&mut b, id(1), 100, T0);
    let w = b.reporter_weight(&reporters[0], T0);
    assert!(w > 400 && w <= 500, "{w}");
    for (i, r) in reporters.iter().enumerate() {
        let m = b
            .merge(
                &report(*r, T0 + i as u64, &[(1, 0, 1_000_000), (2, 1_000_000, 0)]),
                T0 + 20,
            )
            .unwrap();
        assert!(m.applied == 2 || m.dropped > 0);
    }
    let s1 = b.standing(&id(1), T0 + 20);
    assert_eq!(s1.evidence.failed_milli, 3_000, "failed hearsay capped");
    assert!(
        s1.permille >= 700,
        "100 own verified outweigh capped hearsay: {}",
        s1.permille
    );
    let s2 = b.standing(&id(2), T0 + 20);
    assert_eq!(s2.evidence.verified_milli, 5_000, "verified hearsay capped");
    assert!(s2.probation, "peers never vouch a node out of probation");
    // At most 8 reporters are kept per subject.
    assert!(
        b.nodes
            .get(&id(1))
            .is_some_and(|e| e.peers.len() == b.config().max_reporters_per_subject)
    );
}

#[test]
fn merge_refusals() {
    let mut cfg = ReputationConfig::default();
    cfg.trusted_reporters.insert(id(9));
    let mut b = ReputationBook::new(id(0), cfg);
    assert_eq!(
        b.merge(&report(id(0), T0, &[]), T0),
        Err(MergeError::OwnReport)
    );
    assert!(matches!(
        b.merge(&report(id(9), T0 + 61_000, &[]), T0),
        Err(MergeError::FromFuture { .. })
    ));
    assert!(matches!(
        b.merge(&report(id(9), T0, &[]), T0 + 3_600_001),
        Err(MergeError::Stale { .. })
    ));
    b.merge(&report(id(9), T0, &[(1, 1000, 0)]), T0).unwrap();
    assert!(matches!(
        b.merge(&report(id(9), T0, &[(1, 1000, 0)]), T0),
        Err(MergeError::NotNewer { .. })
    ));
    // A newer report replaces the reporter's earlier evidence.
    b.merge(&report(id(9), T0 + 1, &[(1, 4000, 0)]), T0 + 1)
        .unwrap();
    assert_eq!(b.standing(&id(1), T0 + 1).evidence.verified_milli, 2000);
    // Entries about this book's owner are dropped.
    let m = b
        .merge(&report(id(9), T0 + 2, &[(0, 4000, 0)]), T0 + 2)
        .unwrap();
    assert_eq!((m.applied, m.dropped), (0, 1));
    assert_eq!(b.stats().refused, 4);
}

#[test]
fn the_book_is_bounded_and_hearsay_never_evicts() {
    let cfg = ReputationConfig {
        max_nodes: 3,
        trusted_reporters: [id(9)].into_iter().collect(),
        ..ReputationConfig::default()
    };
    let mut b = ReputationBook::new(id(0), cfg);
    verified(&mut b, id(1), 3, T0);
    verified(&mut b, id(2), 1, T0);
    verified(&mut b, id(3), 2, T0);
    let m = b.merge(&report(id(9), T0, &[(4, 1000, 0)]), T0).unwrap();
    assert_eq!(m.dropped, 1);
    assert_eq!(b.len(), 3);
    b.observe(id(5), Outcome::Verified, T0);
    assert_eq!(b.len(), 3);
    let ids: Vec<NodeId> = b.nodes().copied().collect();
    assert_eq!(ids, vec![id(1), id(3), id(5)], "the least evidenced went");
    assert_eq!(b.stats().evicted, 1);
}

#[test]
fn the_book_round_trips_through_the_codec() {
    let mut b = book();
    verified(&mut b, id(1), 3, T0);
    b.observe(id(2), Outcome::Failed, T0);
    let bytes = codec::encode(&b).unwrap();
    let back: ReputationBook = codec::decode(&bytes, codec::MAX_FRAME).unwrap();
    assert_eq!(back, b);
}

#[derive(Debug, Clone)]
enum Ev {
    Own(u8, u8),
    Report(u8, u32, Vec<(u8, u64, u64, u64)>),
    Advance(u32),
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => (0u8..12, 0u8..3).prop_map(|(n, o)| Ev::Own(n, o)),
        3 => (0u8..24, any::<u32>(), prop::collection::vec((0u8..12, any::<u64>(), any::<u64>(), any::<u64>()), 0..6))
            .prop_map(|(r, dt, e)| Ev::Report(r, dt, e)),
        1 => any::<u32>().prop_map(Ev::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever peers report: peer evidence stays within its caps, a node
    /// with fewer than 5 own verified outcomes never leaves probation, the
    /// score is in range, and more own verified evidence never lowers it.
    #[test]
    fn peer_influence_is_bounded(events in prop::collection::vec(ev(), 0..80)) {
        // Half the reporters are trusted: the strongest peers there can be.
        let cfg = ReputationConfig {
            trusted_reporters: (12u8..18).map(id).collect(),
            max_nodes: 20,
            ..ReputationConfig::default()
        };
        let mut b = ReputationBook::new(id(200), cfg);
        let mut now = T0;
        for e in &events {
            match e {
                Ev::Own(n, o) => b.observe(id(*n), [Outcome::Verified, Outcome::Failed, Outcome::Lost][usize::from(*o)], now),
                Ev::Report(r, dt, entries) => {
                    let mut es: Vec<ReportEntry> = entries.iter()
                        .map(|(s, v, f, l)| ReportEntry {
                            subject: id(*s),
                            verified_milli: v % (MAX_EVIDENCE_MILLI + 1),
                            failed_milli: f % (MAX_EVIDENCE_MILLI + 1),
                            lost_milli: l % (MAX_EVIDENCE_MILLI + 1),
                        })
                        .filter(|x| x.subject != id(*r))
                        .collect();
                    es.sort_by_key(|a| a.subject);
                    es.dedup_by(|a, b| a.subject == b.subject);
                    let rep = ReputationReport { reporter: id(*r), issued_at_ms: now.saturating_sub(u64::from(*dt % 1000)), entries: es };
                    prop_assert!(rep.validate().is_ok());
                    let _ = b.merge(&rep, now);
                }
                Ev::Advance(dt) => now += u64::from(*dt),
            }
            prop_assert!(b.len() <= 20);
            for n in 0..24u8 {
                let own = b.own_evidence(&id(n), now);
                let s = b.standing(&id(n), now);
                prop_assert!(s.permille <= 1000);
                prop_assert!(s.evidence.verified_milli <= own.verified_milli + 5_000);
                prop_assert!(s.evidence.failed_milli <= own.failed_milli + 3_000);
                prop_assert!(s.evidence.lost_milli <= own.lost_milli + 3_000);
                if own.verified_milli < 5_000 {
                    prop_assert!(s.probation);
                }
            }
        }
        // Monotone: one more own verified outcome never lowers a score.
        for n in 0..12u8 {
            let before = b.score(&id(n), now);
            let mut c = b.clone();
            c.observe(id(n), Outcome::Verified, now);
            prop_assert!(c.score(&id(n), now) >= before);
            let mut d = b.clone();
            d.observe(id(n), Outcome::Failed, now);
            prop_assert!(d.score(&id(n), now) <= before);
        }
    }

    /// The report decoder (the fuzz entry point: frame and body paths, then
    /// a merge) never panics on arbitrary bytes, nor on a valid frame or
    /// body with bytes flipped.
    #[test]
    fn report_decoding_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..1200),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        crate::fuzz::reputation_report(&bytes);
        for (_, seed) in crate::fuzz::seeds().into_iter().filter(|(t, _)| *t == "reputation_report") {
            let mut m = seed.clone();
            for (i, x) in &flips {
                let i = i.index(m.len());
                m[i] ^= x | 1;
            }
            crate::fuzz::reputation_report(&m);
        }
    }
}
