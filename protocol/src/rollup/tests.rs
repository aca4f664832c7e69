use proptest::prelude::*;

use super::*;
use crate::identity::NodeKey;
use crate::merkle::{MerkleTree, root_of};

const HOUR: u64 = 3_600_000;

fn config() -> RollupConfig {
    RollupConfig {
        epoch_ms: HOUR,
        grace_ms: 300_000,
        reconcile_window_ms: 600_000,
        max_ledgers: 4,
    }
}

fn key(i: u8) -> NodeKey {
    NodeKey::from_secret_bytes(&[i; 32])
}

fn rid(i: u32) -> MessageId {
    MessageId(*blake3::hash(&i.to_le_bytes()).as_bytes())
}

fn drain(r: &mut Rollup) -> Vec<RollupAction> {
    std::iter::from_fn(|| r.poll_action()).collect()
}

fn published(actions: &[RollupAction]) -> Vec<RollupHeader> {
    actions
        .iter()
        .filter_map(|a| match a {
            RollupAction::Publish(h) => Some(h.clone()),
            _ => None,
        })
        .collect()
}

/// Epoch 10 (hours since the Unix epoch) and a time inside it.
const E: u64 = 10;
const AT: u64 = E * HOUR + 1_000;

fn close(e: u64) -> u64 {
    (e + 1) * HOUR + 300_000
}

/// Two ledgers (keys `i`, `j`), each the other's live ledger.
fn live_pair(i: u8, j: u8) -> (NodeKey, Rollup, NodeKey, Rollup) {
    let (ka, kb) = (key(i), key(j));
    let mut a = Rollup::new(ka.node_id(), config());
    let mut b = Rollup::new(kb.node_id(), config());
    a.set_ledgers([kb.node_id()]);
    b.set_ledgers([ka.node_id()]);
    (ka, a, kb, b)
}

#[test]
fn closes_after_grace_with_the_sorted_root_and_a_hash_chain() {
    let k = key(1);
    let mut r = Rollup::new(k.node_id(), config());
    for i in 0..5 {
        assert_eq!(
            r.record(rid(i), AT + u64::from(i), AT),
            Recorded::Added { epoch: E }
        );
    }
    assert_eq!(r.record(rid(2), AT, AT), Recorded::Unchanged);
    assert_eq!(r.next_deadline(), Some(close(E)));
    r.handle_timeout(close(E) - 1);
    assert!(drain(&mut r).is_empty());

    r.handle_timeout(close(E));
    let actions = drain(&mut r);
    let headers = published(&actions);
    assert_eq!(headers.len(), 1);
    let h = &headers[0];
    let mut leaves: Vec<[u8; 32]> = (0..5).map(|i| rid(i).0).collect();
    leaves.sort();
    assert_eq!((h.epoch, h.count, h.root), (E, 5, root_of(&leaves)));
    assert_eq!(h.prev, [0; 32]);
    assert_eq!(h.ledger, k.node_id());
    // Alone, the ledger agrees with itself: final at once, and it anchors.
    assert!(actions.contains(&RollupAction::Anchor {
        epoch: E,
        root: h.root,
        count: 5
    }));
    assert!(r.is_final(E));

    // Proofs verify against the header; a wrong receipt does not.
    for i in 0..5 {
        let p = r.proof(&rid(i)).unwrap();
        p.verify(&rid(i)).unwrap();
        assert!(p.verify(&rid(99)).is_err());
        let mut forged = p.clone();
        forged.header.count += 1;
        assert!(forged.verify(&rid(i)).is_err());
    }
    assert!(matches!(r.proof(&rid(99)), Err(ProofError::Unknown(_))));

    // The next epoch chains to the first header.
    r.record(rid(10), AT + HOUR, AT + HOUR);
    r.handle_timeout(close(E + 1));
    let next = published(&drain(&mut r));
    assert_eq!(next.len(), 1);
    let signed = Signed::sign(&k, h).unwrap();
    assert_eq!(next[0].prev, signed.id().0);
    assert_eq!(r.chain_tip(), Signed::sign(&k, &next[0]).unwrap().id().0);
}

#[test]
fn late_receipts_reopen_until_final_then_stay_out() {
    let k = key(2);
    let other = key(3);
    let mut r = Rollup::new(k.node_id(), config());
    r.set_ledgers([other.node_id()]);
    r.record(rid(1), AT, AT);
    r.handle_timeout(close(E));
    let first = published(&drain(&mut r)).remove(0);
    assert!(
        !r.is_final(E),
        "another live ledger: not final before agreement"
    );

    // After close, before final: reopened, re-published as a revision.
    assert_eq!(
        r.record(rid(2), AT, close(E) + 1),
        Recorded::Reopened { epoch: E }
    );
    assert!(matches!(
        r.proof(&rid(2)),
        Err(ProofError::NotClosed { .. })
    ));
    assert_eq!(r.next_deadline(), Some(close(E)));
    r.handle_timeout(close(E) + 2);
    let revision = published(&drain(&mut r)).remove(0);
    assert_eq!(revision.count, 2);
    assert_eq!(revision.prev, Signed::sign(&k, &first).unwrap().id().0);
    assert_eq!(r.stats().revisions, 1);
    r.proof(&rid(2)).unwrap().verify(&rid(2)).unwrap();

    // The other ledger's header is missing: asked for from close + 5 s.
    assert_eq!(r.next_deadline(), Some(close(E) + HEADER_ASK_MS));
    // At the window's end: final without agreement.
    let final_at = close(E) + 600_000;
    r.handle_timeout(final_at);
    let actions = drain(&mut r);
    assert!(actions.iter().any(|a| matches!(
        a,
        RollupAction::Final {
            epoch: E,
            count: 2,
            ..
        }
    )));
    assert_eq!(r.stats().timed_out, 1);

    // After final: late, in no root.
    assert_eq!(
        r.record(rid(3), AT, final_at + 1),
        Recorded::Late { epoch: E }
    );
    r.handle_timeout(final_at + 2);
    assert!(published(&drain(&mut r)).is_empty());
    assert_eq!(r.current_root(E).1, 2);
    assert_eq!(r.proof(&rid(3)), Err(ProofError::Late { epoch: E }));
    assert_eq!(r.stats().late, 1);

    // A receipt for an epoch long gone, never seen here: late too.
    assert_eq!(
        r.record(rid(4), AT - 5 * HOUR, final_at),
        Recorded::Late { epoch: E - 5 }
    );
}

#[test]
fn agreement_finalises_and_only_the_hrw_winner_anchors() {
    let keys = [key(4), key(5), key(6)];
    let ids: Vec<NodeId> = keys.iter().map(NodeKey::node_id).collect();
    let mut rollups: Vec<Rollup> = ids.iter().map(|id| Rollup::new(*id, config())).collect();
    for r in &mut rollups {
        r.set_ledgers(ids.clone());
        for i in 0..20 {
            r.record(rid(i), AT, AT);
        }
        r.handle_timeout(close(E));
    }
    let headers: Vec<Signed<RollupHeader>> = rollups
        .iter_mut()
        .zip(&keys)
        .map(|(r, k)| {
            let h = published(&drain(r)).remove(0);
            Signed::sign(k, &h).unwrap()
        })
        .collect();
    // The definition: highest BLAKE3 derive_key("rendertrust 2026-11 hrw v1", epoch LE | node).
    let expected = *ids
        .iter()
        .max_by_key(|n| {
            let mut h = blake3::Hasher::new_derive_key("rendertrust 2026-11 hrw v1");
            h.update(&E.to_le_bytes());
            h.update(n.as_bytes());
            *h.finalize().as_bytes()
        })
        .unwrap();
    let mut anchors = 0;
    for (i, r) in rollups.iter_mut().enumerate() {
        assert_eq!(r.anchorer(E), expected);
        for (j, h) in headers.iter().enumerate() {
            let outcome = r.handle_header(h, close(E) + 10).unwrap();
            if i == j {
                assert_eq!(outcome, HeaderOutcome::Own);
            } else {
                assert!(matches!(
                    outcome,
                    HeaderOutcome::Agrees | HeaderOutcome::Final { agrees: true }
                ));
            }
        }
        assert!(r.is_final(E), "ledger {i}");
        let actions = drain(r);
        let anchored = actions
            .iter()
            .filter(|a| matches!(a, RollupAction::Anchor { .. }))
            .count();
        assert_eq!(anchored, usize::from(ids[i] == expected));
        anchors += anchored;
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, RollupAction::Final { .. }))
        );
    }
    assert_eq!(anchors, 1);
}

fn reconcile(
    me: &mut Rollup,
    peer: &Rollup,
    their_header: &Signed<RollupHeader>,
    their_key: &NodeKey,
    now: u64,
) {
    assert_eq!(
        me.handle_header(their_header, now).unwrap(),
        HeaderOutcome::Reconciling
    );
    // Same header again: no second reconciliation.
    assert_eq!(
        me.handle_header(their_header, now).unwrap(),
        HeaderOutcome::Stale
    );
    let mut fetched = Vec::new();
    while let Some(action) = me.poll_action() {
        match action {
            RollupAction::RequestIds {
                ledger,
                epoch,
                after,
            } => {
                assert_eq!(ledger, their_key.node_id());
                let (ids, more) = peer.ids_page(epoch, after, MAX_IDS_PAGE);
                me.handle_ids(ledger, epoch, &ids, more).unwrap();
            }
            RollupAction::FetchReceipts { ids, .. } => {
                assert!(ids.len() <= MAX_FETCH_IDS);
                fetched.extend(ids);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fetched.len(), 2000);
    // The fetched receipts come back through the ledger; here, directly.
    for id in fetched {
        assert_eq!(me.record(id, AT, now), Recorded::Reopened { epoch: E });
    }
    assert_eq!(
        me.handle_ids(their_key.node_id(), E, &[], false),
        Err(IdsRejected::Unsolicited {
            ledger: their_key.node_id(),
            epoch: E
        })
    );
}

#[test]
fn different_roots_reconcile_to_the_union() {
    let (ka, mut a, kb, mut b) = live_pair(7, 8);
    for i in 0..6000 {
        if i % 3 != 0 {
            a.record(rid(i), AT, AT);
        }
        if i % 3 != 1 {
            b.record(rid(i), AT, AT);
        }
    }
    a.handle_timeout(close(E));
    b.handle_timeout(close(E));
    let ha = Signed::sign(&ka, &published(&drain(&mut a))[0]).unwrap();
    let hb = Signed::sign(&kb, &published(&drain(&mut b))[0]).unwrap();
    let now = close(E) + 5;

    // Each side fetches what it lacks from the other, page by page.
    reconcile(&mut a, &b, &hb, &kb, now);
    reconcile(&mut b, &a, &ha, &ka, now);
    a.handle_timeout(now + 1);
    b.handle_timeout(now + 1);
    let ha2 = Signed::sign(&ka, &published(&drain(&mut a))[0]).unwrap();
    let hb2 = Signed::sign(&kb, &published(&drain(&mut b))[0]).unwrap();
    assert_eq!(ha2.verify().unwrap().root, hb2.verify().unwrap().root);
    assert_eq!(ha2.verify().unwrap().count, 6000);
    assert_eq!(
        a.handle_header(&hb2, now + 2).unwrap(),
        HeaderOutcome::Agrees
    );
    assert!(a.is_final(E));
}

#[test]
fn hostile_headers_and_pages_are_refused() {
    let (ka, kb) = (key(9), key(10));
    let mut a = Rollup::new(ka.node_id(), config());
    a.set_ledgers([kb.node_id()]);
    a.record(rid(1), AT, AT);
    a.handle_timeout(close(E));
    drain(&mut a);
    let header = |epoch: u64, count: u64| RollupHeader {
        epoch,
        root: [7; 32],
        count,
        ledger: kb.node_id(),
        prev: [0; 32],
        closed_at_ms: close(E),
    };
    let now = close(E) + 1;
    // From the future.
    let future = Signed::sign(&kb, &header(E + 5, 1)).unwrap();
    assert!(matches!(
        a.handle_header(&future, now),
        Err(HeaderRejected::FromFuture { .. })
    ));
    // Bad signature.
    let mut bytes = Signed::sign(&kb, &header(E, 1)).unwrap().into_bytes();
    bytes[40] ^= 1;
    let forged = Signed::<RollupHeader>::from_bytes(bytes).unwrap();
    assert!(matches!(
        a.handle_header(&forged, now),
        Err(HeaderRejected::Invalid(_))
    ));
    // Unsolicited page.
    assert!(matches!(
        a.handle_ids(kb.node_id(), E, &[rid(5)], false),
        Err(IdsRejected::Unsolicited { .. })
    ));
    // A header claiming 2 receipts, then pages that break the rules.
    let two = Signed::sign(&kb, &header(E, 2)).unwrap();
    assert_eq!(
        a.handle_header(&two, now).unwrap(),
        HeaderOutcome::Reconciling
    );
    let (mut x, mut y) = (rid(20), rid(21));
    if x > y {
        std::mem::swap(&mut x, &mut y);
    }
    assert_eq!(
        a.handle_ids(kb.node_id(), E, &[y, x], true),
        Err(IdsRejected::NotAscending { index: 1 })
    );
    // The failed reconciliation can restart on a newer header.
    let mut newer = header(E, 2);
    newer.closed_at_ms += 1;
    newer.root = [8; 32];
    assert_eq!(
        a.handle_header(&Signed::sign(&kb, &newer).unwrap(), now)
            .unwrap(),
        HeaderOutcome::Reconciling
    );
    let mut page: Vec<MessageId> = (1000..1000 + MAX_IDS_PAGE as u32).map(rid).collect();
    page.sort();
    assert_eq!(a.handle_ids(kb.node_id(), E, &page, true), Ok(MAX_IDS_PAGE));
    let mut rest: Vec<MessageId> = (0..10)
        .map(|i| {
            MessageId([
                0xff, 0xff, 0xff, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0,
            ])
        })
        .collect();
    rest.sort();
    assert_eq!(
        a.handle_ids(kb.node_id(), E, &rest, false),
        Err(IdsRejected::TooMany {
            found: MAX_IDS_PAGE as u64 + 10,
            max: MAX_IDS_PAGE as u64 + 2
        })
    );
    // Full: more ledgers than allowed for an epoch.
    for i in 0..4u8 {
        let k = key(100 + i);
        let mut h = header(E, 1);
        h.ledger = k.node_id();
        let r = a.handle_header(&Signed::sign(&k, &h).unwrap(), now);
        if i < 3 {
            assert!(r.is_ok());
        } else {
            assert!(matches!(r, Err(HeaderRejected::Full { max: 4, .. })));
        }
    }
}

#[test]
fn restore_checks_the_replayed_root() {
    let k = key(11);
    let mut live = Rollup::new(k.node_id(), config());
    for i in 0..3 {
        live.record(rid(i), AT, AT);
    }
    live.handle_timeout(close(E));
    let h = published(&drain(&mut live)).remove(0);

    let mut replay = Rollup::new(k.node_id(), config());
    for i in 0..2 {
        replay.record(rid(i), AT, AT);
    }
    assert!(matches!(
        replay.restore_header(h.clone()),
        Err(RestoreError::Mismatch {
            found_count: 2,
            expected_count: 3,
            ..
        })
    ));
    replay.record(rid(2), AT, AT);
    replay.restore_header(h.clone()).unwrap();
    assert_eq!(replay.chain_tip(), live.chain_tip());
    replay.restore_final(E);
    replay.handle_timeout(close(E) + 1);
    assert!(
        drain(&mut replay).is_empty(),
        "a restored epoch is not re-published"
    );
    let mut foreign = h;
    foreign.ledger = key(12).node_id();
    assert!(matches!(
        replay.restore_header(foreign),
        Err(RestoreError::NotOwn { .. })
    ));
}

#[test]
fn an_earlier_acceptance_moves_a_receipt_while_epochs_are_open() {
    let k = key(13);
    let mut r = Rollup::new(k.node_id(), config());
    assert_eq!(
        r.record(rid(1), AT + HOUR, AT),
        Recorded::Added { epoch: E + 1 }
    );
    assert_eq!(
        r.record(rid(1), AT, AT),
        Recorded::Moved { from: E + 1, to: E }
    );
    assert_eq!(r.epoch_of_receipt(&rid(1)), Some(E));
    assert_eq!(r.ids(E + 1).count(), 0);
    // Later times never move it back.
    assert_eq!(r.record(rid(1), AT + HOUR, AT), Recorded::Unchanged);
}

#[test]
fn ids_pages() {
    let k = key(14);
    let mut r = Rollup::new(k.node_id(), config());
    let mut all: Vec<MessageId> = (0..10).map(rid).collect();
    for id in &all {
        r.record(*id, AT, AT);
    }
    all.sort();
    let (p1, more) = r.ids_page(E, None, 4);
    assert_eq!((p1.as_slice(), more), (&all[..4], true));
    let (p2, more) = r.ids_page(E, p1.last().copied(), 100);
    assert_eq!((p2.as_slice(), more), (&all[4..], false));
    assert_eq!(r.ids_page(E + 1, None, 5), (vec![], false));
    // A full tree built from the same ids has the same root.
    r.handle_timeout(close(E));
    let tree = MerkleTree::from_sorted_unique(all.iter().map(|m| m.0).collect()).unwrap();
    assert_eq!(r.header(E).unwrap().root, tree.root());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Two rollups fed the same (receipt, acceptance time) pairs in any order
    /// publish the same roots.
    #[test]
    fn prop_order_independent_roots(
        pairs in proptest::collection::vec((0u32..200, 0u64..3 * HOUR), 1..120),
        seed in any::<u64>(),
    ) {
        let k = key(15);
        let mut a = Rollup::new(k.node_id(), config());
        let mut b = Rollup::new(k.node_id(), config());
        let mut shuffled = pairs.clone();
        // Fisher–Yates with a SplitMix stream.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let j = ((s ^ (s >> 31)) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        for (i, at) in &pairs {
            a.record(rid(*i), E * HOUR + at, AT);
        }
        for (i, at) in &shuffled {
            b.record(rid(*i), E * HOUR + at, AT);
        }
        a.handle_timeout(close(E + 3));
        b.handle_timeout(close(E + 3));
        let ha = published(&drain(&mut a));
        let hb = published(&drain(&mut b));
        prop_assert_eq!(ha.iter().map(|h| (h.epoch, h.root, h.count)).collect::<Vec<_>>(),
                        hb.iter().map(|h| (h.epoch, h.root, h.count)).collect::<Vec<_>>());
    }
}

/// Anchors leave in epoch order: epoch `e + 1` agreeing while `e` still
/// reconciles waits for `e` (an anchor chain refuses an epoch below its
/// head, which left `e` unanchored for good), and so does an owed anchor
/// handed back after a restart.
#[test]
fn anchors_go_out_in_epoch_order() {
    // Short epochs with a window longer than an epoch, as in the node's tests.
    let config = RollupConfig {
        epoch_ms: 10_000,
        grace_ms: 2_000,
        reconcile_window_ms: 60_000,
        max_ledgers: 4,
    };
    let e = 10u64;
    let at = |epoch: u64| epoch * 10_000 + 100;
    // Two ledgers where `a` ranks first for both epochs.
    let (ka, kb) = (1..=u8::MAX)
        .map(|i| (key(i), key(i.wrapping_add(100))))
        .find(|(ka, kb)| {
            let mut r = Rollup::new(ka.node_id(), config);
            r.set_ledgers([kb.node_id()]);
            r.anchorer(e) == ka.node_id() && r.anchorer(e + 1) == ka.node_id()
        })
        .unwrap();
    let mut a = Rollup::new(ka.node_id(), config);
    let mut b = Rollup::new(kb.node_id(), config);
    a.set_ledgers([kb.node_id()]);
    b.set_ledgers([ka.node_id()]);
    // `b` holds one receipt of epoch e that `a` lacks; epoch e + 1 is equal.
    for (r, ids) in [(&mut a, &[1u32][..]), (&mut b, &[1, 3][..])] {
        for i in ids {
            r.record(rid(*i), at(e), at(e));
        }
        r.record(rid(2), at(e + 1), at(e + 1));
    }
    let now = 12 * 10_000 + 2_000; // both epochs closed, e not final by time
    a.handle_timeout(now);
    b.handle_timeout(now);
    drain(&mut a);
    let from_b: Vec<Signed<RollupHeader>> = published(&drain(&mut b))
        .iter()
        .map(|h| Signed::sign(&kb, h).unwrap())
        .collect();
    assert_eq!(from_b.len(), 2);
    for h in &from_b {
        a.handle_header(h, now + 1).unwrap();
    }
    // e + 1 is final and owed, but held back behind e.
    let actions = drain(&mut a);
    assert!(actions.contains(&RollupAction::Final {
        epoch: e + 1,
        root: root_of(&[rid(2).0]),
        count: 1,
        anchor: true
    }));
    assert!(
        !actions
            .iter()
            .any(|x| matches!(x, RollupAction::Anchor { .. })),
        "{actions:?}"
    );
    assert!(a.is_final(e + 1) && !a.is_final(e));
    assert_eq!(a.anchors_waiting(), 1);
    // e reconciles (the fetched receipt comes back through the ledger) and
    // agrees; its anchor still waits until no earlier epoch can appear (the
    // window is longer than an epoch here), then e + 1's until the same
    // holds for it: e first.
    assert_eq!(
        a.record(rid(3), at(e), now + 2),
        Recorded::Reopened { epoch: e }
    );
    let anchors_of = |r: &mut Rollup| -> Vec<(u64, u64)> {
        drain(r)
            .iter()
            .filter_map(|x| match x {
                RollupAction::Anchor { epoch, count, .. } => Some((*epoch, *count)),
                _ => None,
            })
            .collect()
    };
    a.handle_timeout(now + 3);
    assert!(a.is_final(e));
    assert_eq!(anchors_of(&mut a), vec![]);
    assert_eq!(a.next_deadline(), Some(a.final_time(e - 1)));
    a.handle_timeout(a.final_time(e - 1));
    assert_eq!(anchors_of(&mut a), vec![(e, 2)]);
    assert_eq!(a.next_deadline(), Some(a.final_time(e)));
    a.handle_timeout(a.final_time(e));
    assert_eq!(anchors_of(&mut a), vec![(e + 1, 1)]);
    assert_eq!(a.anchors_waiting(), 0);

    // After a restart: an owed anchor handed back waits for an open epoch
    // below it, then follows it.
    let mut r = Rollup::new(ka.node_id(), config);
    r.record(rid(1), at(e), at(e));
    r.restore_final(e + 1);
    r.restore_owed_anchor(e + 1, [9; 32], 4);
    assert!(drain(&mut r).is_empty());
    r.handle_timeout(now);
    assert!(r.is_final(e));
    assert_eq!(anchors_of(&mut r), vec![]);
    r.handle_timeout(r.final_time(e));
    assert_eq!(anchors_of(&mut r), vec![(e, 1), (e + 1, 4)]);
    // With nothing open below it: released once no earlier epoch can appear.
    r.restore_owed_anchor(e + 5, [8; 32], 2);
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.next_deadline(), Some(r.final_time(e + 4)));
    r.handle_timeout(r.final_time(e + 4));
    assert_eq!(anchors_of(&mut r), vec![(e + 5, 2)]);
    assert_eq!(r.next_deadline(), None);
}

/// One step of two ledgers' lives, for the anchor-order property.
#[derive(Debug, Clone)]
enum Step {
    /// A receipt (`id`) matched at ledger a (`on_a`) or b, accepted up to
    /// `back_ms` before now (its first acceptance time sticks).
    Record { on_a: bool, id: u32, back_ms: u64 },
    /// Time passes; both run their timers.
    Tick { ms: u64 },
    /// A published header reaches the other ledger (`pick` of those in flight).
    Deliver { to_a: bool, pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<bool>(), 0u32..40, 0u64..40_000).prop_map(|(on_a, id, back_ms)| Step::Record {
            on_a,
            id,
            back_ms
        }),
        (1u64..15_000).prop_map(|ms| Step::Tick { ms }),
        (any::<bool>(), any::<usize>()).prop_map(|(to_a, pick)| Step::Deliver { to_a, pick }),
    ]
}

/// What one ledger owed and anchored, checked as actions come out.
#[derive(Default)]
struct AnchorLog {
    owed: BTreeSet<u64>,
    finals: BTreeSet<u64>,
    anchored: Vec<u64>,
}

/// Carries out `me`'s actions: headers to its outbox, reconciliation against
/// `other` at once, anchors and finals into `log` (checking their order).
#[allow(clippy::too_many_arguments)]
fn pump(
    me: &mut Rollup,
    key: &NodeKey,
    other: &Rollup,
    other_key: &NodeKey,
    accepted: &BTreeMap<MessageId, u64>,
    outbox: &mut Vec<Signed<RollupHeader>>,
    log: &mut AnchorLog,
    now: u64,
) -> Result<(), TestCaseError> {
    while let Some(action) = me.poll_action() {
        match action {
            RollupAction::Publish(h) => outbox.push(Signed::sign(key, &h).unwrap()),
            // Answered at once, as the node's `Headers` request is.
            RollupAction::RequestHeaders { epoch, .. } => {
                for s in other.epochs().into_iter().filter(|s| s.epoch >= epoch) {
                    if let Some(h) = s.header {
                        let _ = me.handle_header(&Signed::sign(other_key, &h).unwrap(), now);
                    }
                }
            }
            RollupAction::RequestIds {
                ledger,
                epoch,
                after,
            } => {
                let (ids, more) = other.ids_page(epoch, after, MAX_IDS_PAGE);
                let _ = me.handle_ids(ledger, epoch, &ids, more);
            }
            RollupAction::FetchReceipts { ids, .. } => {
                for id in ids {
                    me.record(id, accepted[&id], now);
                }
            }
            RollupAction::Final { epoch, anchor, .. } => {
                prop_assert!(log.finals.insert(epoch), "epoch {} final twice", epoch);
                if anchor {
                    log.owed.insert(epoch);
                }
            }
            RollupAction::Anchor { epoch, .. } => {
                prop_assert!(
                    log.owed.contains(&epoch),
                    "anchor of {} before its final",
                    epoch
                );
                prop_assert!(
                    log.anchored.last().is_none_or(|last| *last < epoch),
                    "anchors out of order: {:?} then {}",
                    log.anchored,
                    epoch
                );
                log.anchored.push(epoch);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Two ledgers with receipts in several short epochs, headers delivered
    /// late and out of order, reconciliation, late receipts: each ledger's
    /// anchors go out in strictly increasing epoch order, each after its
    /// epoch's final, and once every window has passed each owed anchor has
    /// gone out exactly once.
    #[test]
    fn prop_anchors_leave_in_epoch_order(steps in proptest::collection::vec(step(), 1..150)) {
        let config = RollupConfig {
            epoch_ms: 10_000,
            grace_ms: 2_000,
            reconcile_window_ms: 60_000,
            max_ledgers: 4,
        };
        let (ka, kb) = (key(20), key(21));
        let mut a = Rollup::new(ka.node_id(), config);
        let mut b = Rollup::new(kb.node_id(), config);
        a.set_ledgers([kb.node_id()]);
        b.set_ledgers([ka.node_id()]);
        let mut now = 1_000 * 10_000u64;
        let mut accepted: BTreeMap<MessageId, u64> = BTreeMap::new();
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let (mut log_a, mut log_b) = (AnchorLog::default(), AnchorLog::default());
        let end = steps.len();
        for (i, s) in steps.into_iter().chain([Step::Tick { ms: 200_000 }]).enumerate() {
            match s {
                Step::Record { on_a, id, back_ms } => {
                    let at = *accepted.entry(rid(id)).or_insert(now.saturating_sub(back_ms));
                    let r = if on_a { &mut a } else { &mut b };
                    r.record(rid(id), at, now);
                }
                Step::Tick { ms } => {
                    now += ms;
                    a.handle_timeout(now);
                    b.handle_timeout(now);
                }
                Step::Deliver { to_a, pick } => {
                    let (to, outbox) = if to_a { (&mut a, &mut out_b) } else { (&mut b, &mut out_a) };
                    if !outbox.is_empty() {
                        let h = outbox.remove(pick % outbox.len());
                        let _ = to.handle_header(&h, now);
                    }
                }
            }
            pump(&mut a, &ka, &b, &kb, &accepted, &mut out_a, &mut log_a, now)?;
            pump(&mut b, &kb, &a, &ka, &accepted, &mut out_b, &mut log_b, now)?;
            if i == end {
                // Every window has passed: nothing is owed any more.
                for (r, log) in [(&a, &log_a), (&b, &log_b)] {
                    prop_assert_eq!(r.anchors_waiting(), 0);
                    prop_assert_eq!(log.owed.iter().copied().collect::<Vec<_>>(), log.anchored.clone());
                }
            }
        }
    }
}

/// A ledger away longer than the window: its epoch turned final on what it
/// held; a live ledger's header with more receipts still makes it fetch
/// what it lacks, recorded late (credits move, roots stay final). Only from
/// live ledgers, only for recent epochs, once per root.
#[test]
fn a_final_epoch_catches_up_late_from_a_live_ledger() {
    let (ka, mut a, kb, mut b) = live_pair(30, 31);
    let kc = key(32);
    for i in 1..=6 {
        if i <= 3 {
            a.record(rid(i), AT, AT);
        }
        b.record(rid(i), AT, AT);
    }
    // Neither hears the other before the window ends: final on its own root.
    let end = close(E) + 600_000;
    a.handle_timeout(end);
    b.handle_timeout(end);
    let own_a = published(&drain(&mut a)).remove(0);
    let hb = Signed::sign(&kb, &published(&drain(&mut b))[0]).unwrap();
    assert!(a.is_final(E));
    let now = end + 5_000;
    assert_eq!(
        a.handle_header(&hb, now).unwrap(),
        HeaderOutcome::Final { agrees: false }
    );
    let actions = drain(&mut a);
    let [
        RollupAction::RequestIds {
            ledger,
            epoch,
            after,
        },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}");
    };
    assert_eq!((*ledger, *epoch, *after), (kb.node_id(), E, None));
    let (ids, more) = b.ids_page(E, None, MAX_IDS_PAGE);
    assert_eq!(a.handle_ids(kb.node_id(), E, &ids, more), Ok(3));
    let fetched: Vec<MessageId> = drain(&mut a)
        .into_iter()
        .flat_map(|x| match x {
            RollupAction::FetchReceipts { ids, .. } => ids,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(fetched.len(), 3);
    for id in fetched {
        assert_eq!(a.record(id, AT, now), Recorded::Late { epoch: E });
    }
    assert_eq!(a.stats().late, 3);
    // The final root stays what it was.
    assert_eq!(a.header(E), Some(&own_a));
    // The same header again: no second catch-up.
    a.handle_header(&hb, now + 1).unwrap();
    assert!(drain(&mut a).is_empty());
    // Not from a ledger outside the live set, nor for an epoch too old.
    let hc = Signed::sign(
        &kc,
        &RollupHeader {
            ledger: kc.node_id(),
            ..hb.verify().unwrap()
        },
    )
    .unwrap();
    a.handle_header(&hc, now + 2).unwrap();
    assert!(drain(&mut a).is_empty());
    let other_root = |k: &NodeKey| {
        Signed::sign(
            k,
            &RollupHeader {
                root: [7; 32],
                count: 9,
                ..hb.verify().unwrap()
            },
        )
        .unwrap()
    };
    let later = (E + LATE_CATCH_UP_EPOCHS + 2) * HOUR;
    a.handle_header(&other_root(&kb), later).unwrap();
    assert!(drain(&mut a).is_empty());
    // A newer root from the live ledger within the horizon: a new catch-up.
    let mut fresh = Rollup::new(ka.node_id(), config());
    fresh.set_ledgers([kb.node_id()]);
    fresh.handle_header(&other_root(&kb), now).unwrap();
    assert!(matches!(
        drain(&mut fresh).as_slice(),
        [RollupAction::RequestIds { .. }]
    ));
}

/// A closed epoch lacking a live ledger's header asks that ledger for its
/// headers, `HEADER_ASK_MS` after close and again every `HEADER_ASK_MS`,
/// until the header comes (gossip alone lost it after a restart, and the
/// epoch timed out on two roots).
#[test]
fn a_missing_header_is_asked_for_until_it_comes() {
    let (_ka, mut a, kb, mut b) = live_pair(40, 41);
    a.record(rid(1), AT, AT);
    b.record(rid(1), AT, AT);
    a.handle_timeout(close(E));
    b.handle_timeout(close(E));
    assert_eq!(published(&drain(&mut a)).len(), 1);
    let hb = Signed::sign(&kb, &published(&drain(&mut b))[0]).unwrap();
    let ask = vec![RollupAction::RequestHeaders {
        ledger: kb.node_id(),
        epoch: E,
    }];
    let first = close(E) + HEADER_ASK_MS;
    assert_eq!(a.next_deadline(), Some(first));
    a.handle_timeout(first - 1);
    assert!(drain(&mut a).is_empty());
    a.handle_timeout(first);
    assert_eq!(drain(&mut a), ask);
    assert_eq!(a.next_deadline(), Some(first + HEADER_ASK_MS));
    a.handle_timeout(first + 1);
    assert!(drain(&mut a).is_empty());
    a.handle_timeout(first + HEADER_ASK_MS);
    assert_eq!(drain(&mut a), ask);
    assert_eq!(a.stats().header_asks, 2);
    // The answer (here: b's header) agrees: final, nothing more to ask.
    a.handle_header(&hb, first + HEADER_ASK_MS + 1).unwrap();
    assert!(a.is_final(E));
    drain(&mut a);
    a.handle_timeout(first + 3 * HEADER_ASK_MS);
    assert!(drain(&mut a).is_empty());
}
