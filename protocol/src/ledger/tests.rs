use proptest::prelude::*;

use super::testkit::{GENESIS, Kit, T0};
use super::*;
use crate::rollup::RollupConfig;
use crate::wire::{CloseOutcome, ResourceUsage};

const NOW: u64 = T0 + 1_000;

struct Job {
    spec: Signed<JobSpec>,
    id: JobId,
    creator: NodeId,
}

fn job(kit: &Kit, creator: usize, nonce: u64) -> Job {
    let spec = kit.spec(creator, nonce, 8, 10).unwrap();
    let s = spec.verify().unwrap();
    Job {
        spec,
        id: s.id,
        creator: s.creator,
    }
}

fn task(job: &Job, index: u32) -> TaskId {
    TaskId { job: job.id, index }
}

fn ok(l: &mut Ledger, e: &LedgerEvent) -> Applied {
    let r = l.handle_event(e, NOW);
    check_books(l);
    r.unwrap_or_else(|err| panic!("{} refused: {err}", e.kind_name()))
}

fn err(l: &mut Ledger, e: &LedgerEvent) -> LedgerRejected {
    let before = l.digest();
    let r = l.handle_event(e, NOW);
    assert_eq!(l.digest(), before, "a refused event changed the ledger");
    r.expect_err("accepted")
}

/// Conservation and entries-derived balances.
fn check_books(l: &Ledger) {
    let nodes: i128 = l.balances().map(|(_, b)| b).sum();
    assert_eq!(nodes + l.escrowed(), l.minted(), "credits not conserved");
    assert_eq!(
        &l.recompute_accounts(),
        l.accounts(),
        "balances differ from entries"
    );
    let mut settles = BTreeMap::new();
    for e in l.entries() {
        if e.kind == EntryKind::Settle {
            *settles.entry(e.task).or_insert(0) += 1;
        }
    }
    assert!(settles.values().all(|n| *n == 1), "a task paid twice");
}

fn setup(seed: u64) -> (Kit, Ledger, Job) {
    let kit = Kit::new(seed);
    let ledger = Ledger::new(kit.config());
    let job = job(&kit, 0, 1);
    (kit, ledger, job)
}

#[test]
fn genesis_and_mints() {
    let (kit, mut l, _) = setup(1);
    let c0 = kit.creators[0].node_id();
    assert_eq!(l.balance(&c0), i128::from(GENESIS));
    assert_eq!(l.minted(), 2 * i128::from(GENESIS));
    let w = kit.workers[0].node_id();
    let mint = kit.mint(w, 500, 1).unwrap();
    assert_eq!(ok(&mut l, &mint), Applied::Minted { to: w, amount: 500 });
    assert_eq!(l.balance(&w), 500);
    assert!(matches!(
        err(&mut l, &mint),
        LedgerRejected::Duplicate { .. }
    ));
    // Same grant, another nonce: another mint.
    ok(&mut l, &kit.mint(w, 500, 2).unwrap());
    assert_eq!(l.balance(&w), 1000);
    // Anyone else: refused, nothing minted.
    let forged = kit.mint_by(&kit.creators[0], w, 1_000_000, 3).unwrap();
    assert!(matches!(
        err(&mut l, &forged),
        LedgerRejected::NotMintAuthority { .. }
    ));
    let mut none = Ledger::new(LedgerConfig::default());
    assert!(matches!(
        none.handle_event(&kit.mint(w, 5, 9).unwrap(), NOW),
        Err(LedgerRejected::NotMintAuthority {
            authority: None,
            ..
        })
    ));
}

#[test]
fn escrow_then_settle_pays_the_worker_once() {
    let (kit, mut l, j) = setup(2);
    let offer = kit.offer(task(&j, 0), 0, 0, 0, 7);
    let escrow = kit.escrow_for(&j.spec, &offer, true).unwrap();
    assert!(matches!(
        ok(&mut l, &escrow),
        Applied::Escrowed {
            price: 7,
            held: true,
            ..
        }
    ));
    assert_eq!(l.balance(&j.creator), i128::from(GENESIS) - 7);
    assert_eq!(l.escrowed(), 7);

    let receipt = kit.receipt(&offer, &j.creator);
    let settle = kit.settle(&receipt, T0 + 130_000).unwrap();
    let Applied::Settle {
        status,
        receipt: rid,
        ..
    } = ok(&mut l, &settle)
    else {
        panic!("not a settle")
    };
    assert_eq!(status, SettleStatus::Paid);
    assert_eq!(l.balance(&offer.worker), 7);
    assert_eq!(l.escrowed(), 0);
    assert_eq!(l.balance(&j.creator), i128::from(GENESIS) - 7);
    assert_eq!(l.paid_receipt(&offer.task), Some(rid));
    assert_eq!(l.take_matched(), vec![(rid, T0 + 130_000)]);

    // Replayed receipt: nothing changes.
    assert!(matches!(
        err(&mut l, &settle),
        LedgerRejected::Duplicate { kind: "settle", .. }
    ));
    assert!(matches!(
        err(&mut l, &escrow),
        LedgerRejected::Duplicate { .. }
    ));
    assert_eq!(l.stats().duplicates, 2);
    assert_eq!(l.balance(&offer.worker), 7);
}

#[test]
fn refund_returns_the_escrow_and_a_countersigned_receipt_beats_it() {
    let (kit, mut l, j) = setup(3);
    let offer = kit.offer(task(&j, 1), 0, 1, 0, 9);
    ok(&mut l, &kit.escrow_for(&j.spec, &offer, true).unwrap());
    let refund = kit.refund(&offer, CloseOutcome::Lapsed).unwrap();
    assert!(matches!(
        ok(&mut l, &refund),
        Applied::Refund {
            effective: true,
            ..
        }
    ));
    assert_eq!(l.balance(&j.creator), i128::from(GENESIS));
    assert_eq!(l.escrowed(), 0);

    // The worker finished after all and the creator accepted: paid.
    let settle = kit
        .settle(&kit.receipt(&offer, &j.creator), T0 + 130_000)
        .unwrap();
    assert!(matches!(
        ok(&mut l, &settle),
        Applied::Settle {
            status: SettleStatus::Paid,
            ..
        }
    ));
    assert_eq!(l.balance(&offer.worker), 9);
    assert_eq!(l.balance(&j.creator), i128::from(GENESIS) - 9);

    // The other order gives the same ledger.
    let mut m = Ledger::new(kit.config());
    for e in [
        &settle,
        &refund,
        &kit.escrow_for(&j.spec, &offer, true).unwrap(),
    ] {
        ok(&mut m, e);
    }
    assert_eq!(m.digest(), l.digest());
}

#[test]
fn refund_needs_the_offering_scheduler() {
    let (kit, mut l, j) = setup(4);
    let offer = kit.offer(task(&j, 0), 0, 0, 0, 5);
    ok(&mut l, &kit.escrow_for(&j.spec, &offer, true).unwrap());
    let mut other = offer.clone();
    other.scheduler = kit.schedulers[1].node_id();
    let r = ok(
        &mut l,
        &kit.refund(&other, CloseOutcome::Cancelled).unwrap(),
    );
    assert!(matches!(
        r,
        Applied::Refund {
            effective: false,
            ..
        }
    ));
    assert_eq!(l.escrowed(), 5);
    assert_eq!(l.pending(), 1);
}

#[test]
fn forged_receipts_credit_nothing() {
    let (kit, mut l, j) = setup(5);
    let offer = kit.offer(task(&j, 2), 0, 0, 0, 8);
    ok(&mut l, &kit.escrow_for(&j.spec, &offer, true).unwrap());
    let receipt = kit.receipt(&offer, &j.creator);
    let baseline = l.digest();

    // Bad worker signature.
    let LedgerEvent::Settle {
        receipt: signed,
        acceptance,
    } = kit.settle(&receipt, T0 + 130_000).unwrap()
    else {
        panic!()
    };
    let mut bytes = signed.as_bytes().to_vec();
    bytes[40] ^= 1;
    let bad = LedgerEvent::Settle {
        receipt: Signed::from_bytes(bytes).unwrap(),
        acceptance: acceptance.clone(),
    };
    assert!(matches!(
        err(&mut l, &bad),
        LedgerRejected::Invalid {
            frame: "receipt",
            source: SignedError::BadSignature { .. }
        }
    ));

    // Missing creator signature: countersigned by the worker itself, or by
    // another creator.
    for who in [offer.worker, kit.creators[1].node_id()] {
        let self_signed = kit.settle_by(&receipt, &who, T0 + 130_000).unwrap();
        assert!(matches!(
            err(&mut l, &self_signed),
            LedgerRejected::NotCountersigned { .. }
        ));
    }

    // A genuine acceptance, of another receipt.
    let mut other = receipt.clone();
    other.output_hash = [0xee; 32];
    let LedgerEvent::Settle {
        acceptance: other_acceptance,
        ..
    } = kit.settle(&other, T0 + 130_000).unwrap()
    else {
        panic!()
    };
    let mixed = LedgerEvent::Settle {
        receipt: signed.clone(),
        acceptance: other_acceptance,
    };
    assert!(matches!(
        err(&mut l, &mixed),
        LedgerRejected::AcceptanceMismatch { .. }
    ));

    // Inflated resource use.
    for (cpu, gpu, field) in [
        (60_000 * 512 + 1, 0, "cpu_ms"),
        (0, 60_000 * 16 + 1, "gpu_ms"),
    ] {
        let mut r = receipt.clone();
        r.usage = ResourceUsage {
            cpu_ms: cpu,
            gpu_ms: gpu,
            peak_mem_bytes: 0,
        };
        let e = kit.settle(&r, T0 + 130_000).unwrap();
        assert!(
            matches!(err(&mut l, &e), LedgerRejected::InflatedUsage { field: f, .. } if f == field)
        );
    }
    assert_eq!(l.digest(), baseline);
    assert_eq!(l.balance(&offer.worker), 0);
    assert_eq!(l.stats().invalid, 6);
}

#[test]
fn receipts_for_unassigned_workers_never_pay() {
    let (kit, mut l, j) = setup(6);
    let offer = kit.offer(task(&j, 3), 0, 0, 0, 6);
    ok(&mut l, &kit.escrow_for(&j.spec, &offer, true).unwrap());
    let baseline: Vec<_> = l.balances().collect();

    // Worker 1 claims worker 0's task.
    let mut claim = offer.clone();
    claim.worker = kit.workers[1].node_id();
    let settle = kit
        .settle(&kit.receipt(&claim, &j.creator), T0 + 130_000)
        .unwrap();
    assert_eq!(
        ok(&mut l, &settle),
        Applied::Settle {
            receipt: settle.id(),
            task: offer.task,
            status: SettleStatus::Unmatched(Unmatched::NeverAssigned {
                escrowed_worker: offer.worker
            }),
        }
    );
    // A task nobody escrowed: waits, pays nothing.
    let ghost = kit.offer(task(&j, 7), 0, 2, 0, 6);
    let e = kit.settle(&kit.receipt(&ghost, &j.creator), T0).unwrap();
    assert!(matches!(
        ok(&mut l, &e),
        Applied::Settle {
            status: SettleStatus::Unmatched(Unmatched::NoEscrow),
            ..
        }
    ));
    assert_eq!(l.balances().collect::<Vec<_>>(), baseline);
    assert_eq!(l.pending(), 2);
    assert!(l.take_matched().is_empty());

    // Price, window and creator mismatches against the right worker's escrow.
    let mut cheap = kit.receipt(&offer, &j.creator);
    cheap.price = 5;
    let mut late = kit.receipt(&offer, &j.creator);
    late.finished_at_ms = offer.deadline_ms + 60_001;
    let mut early = kit.receipt(&offer, &j.creator);
    early.started_at_ms = offer.reserve_until_ms - 11 * 60_000 - 1;
    let mut foreign = kit.receipt(&offer, &kit.creators[1].node_id());
    foreign.output_hash = [3; 32];
    for (r, want) in [
        (cheap, "price"),
        (late, "window"),
        (early, "window"),
        (foreign, "creator"),
    ] {
        let e = kit.settle(&r, T0 + 130_000).unwrap();
        let Applied::Settle {
            status: SettleStatus::Unmatched(why),
            ..
        } = ok(&mut l, &e)
        else {
            panic!("{want}: matched")
        };
        let got = match why {
            Unmatched::PriceMismatch { .. } => "price",
            Unmatched::OutsideWindow { .. } => "window",
            Unmatched::CreatorMismatch => "creator",
            other => panic!("{want}: {other:?}"),
        };
        assert_eq!(got, want);
    }
    assert_eq!(l.balances().collect::<Vec<_>>(), baseline);
}

#[test]
fn settle_before_escrow_waits_then_pays() {
    let (kit, mut l, j) = setup(7);
    let offer = kit.offer(task(&j, 4), 2, 3, 1, 10);
    let settle = kit
        .settle(&kit.receipt(&offer, &j.creator), T0 + 140_000)
        .unwrap();
    assert!(matches!(
        ok(&mut l, &settle),
        Applied::Settle {
            status: SettleStatus::Unmatched(Unmatched::NoEscrow),
            ..
        }
    ));
    assert_eq!(l.pending(), 1);
    assert!(matches!(
        ok(&mut l, &kit.escrow_for(&j.spec, &offer, true).unwrap()),
        Applied::Escrowed { held: false, .. }
    ));
    assert_eq!(l.pending(), 0);
    assert_eq!(l.receipt_status(&settle.id()), Some(SettleStatus::Paid));
    assert_eq!(l.balance(&offer.worker), 10);
    assert_eq!(l.take_matched(), vec![(settle.id(), T0 + 140_000)]);
    assert!(l.matched_escrow(&settle.id()).is_some());
}

#[test]
fn one_settle_per_task_even_with_a_late_receipt() {
    let (kit, _, j) = setup(8);
    let t = task(&j, 5);
    let first = kit.offer(t, 0, 0, 0, 7);
    let second = kit.offer(t, 1, 1, 0, 8);
    let events = [
        kit.escrow_for(&j.spec, &first, true).unwrap(),
        kit.refund(&first, CloseOutcome::Lapsed).unwrap(),
        kit.escrow_for(&j.spec, &second, true).unwrap(),
        kit.settle(&kit.receipt(&second, &j.creator), T0 + 150_000)
            .unwrap(),
        // The first worker's late result, countersigned by a careless creator.
        kit.settle(&kit.receipt(&first, &j.creator), T0 + 160_000)
            .unwrap(),
    ];
    let mut digests = BTreeSet::new();
    for order in [
        [0, 1, 2, 3, 4],
        [4, 3, 2, 1, 0],
        [0, 4, 2, 3, 1],
        [2, 4, 0, 1, 3],
    ] {
        let mut l = Ledger::new(kit.config());
        for i in order {
            ok(&mut l, &events[i]);
        }
        assert_eq!(l.balance(&second.worker), 8, "order {order:?}");
        assert_eq!(l.balance(&first.worker), 0, "order {order:?}");
        assert_eq!(l.balance(&j.creator), i128::from(GENESIS) - 8);
        assert_eq!(l.escrowed(), 0);
        assert_eq!(
            l.receipt_status(&events[4].id()),
            Some(SettleStatus::Outranked)
        );
        digests.insert(l.digest());
    }
    assert_eq!(digests.len(), 1);
}

#[test]
fn a_task_holds_at_most_one_escrow() {
    let (kit, mut l, j) = setup(9);
    let t = task(&j, 6);
    ok(&mut l, &kit.escrow(&j.spec, 6, 0, 0, 0, 9).unwrap());
    // The re-offer arrives before the refund of attempt 0: only one is held.
    ok(&mut l, &kit.escrow(&j.spec, 6, 1, 1, 0, 9).unwrap());
    assert_eq!(l.escrowed(), 9);
    assert_eq!(l.balance(&j.creator), i128::from(GENESIS) - 9);
    // A stranger's escrows of the same task lock nothing more.
    ok(&mut l, &kit.escrow(&j.spec, 6, 7, 2, 1, 10).unwrap());
    assert_eq!(l.escrowed(), 10);
    assert_eq!(l.paid_receipt(&t), None);
}

#[test]
fn escrows_expire_after_the_job_deadline_and_a_settle_still_pays() {
    let (kit, mut l, j) = setup(10);
    let offer = kit.offer(task(&j, 0), 0, 0, 0, 4);
    ok(&mut l, &kit.escrow_for(&j.spec, &offer, true).unwrap());
    let expiry = T0 + 86_400_000 + l.config().escrow_grace_ms;
    assert_eq!(l.next_deadline(), Some(expiry));
    l.handle_timeout(expiry - 1);
    assert_eq!(l.escrowed(), 4);
    l.handle_timeout(expiry);
    check_books(&l);
    assert_eq!(l.escrowed(), 0);
    assert_eq!(l.balance(&j.creator), i128::from(GENESIS));
    assert_eq!(l.next_deadline(), None);
    assert!(l.entries().iter().any(|e| e.kind == EntryKind::Expired));
    let settle = kit
        .settle(&kit.receipt(&offer, &j.creator), T0 + 130_000)
        .unwrap();
    assert!(matches!(
        l.handle_event(&settle, expiry + 5).unwrap(),
        Applied::Settle {
            status: SettleStatus::Paid,
            ..
        }
    ));
    check_books(&l);
    assert_eq!(l.balance(&offer.worker), 4);
}

#[test]
fn escrow_frames_must_fit_together() {
    let (kit, mut l, j) = setup(11);
    let t = task(&j, 0);
    let over = kit.offer(t, 0, 0, 0, 11);
    assert!(matches!(
        err(&mut l, &kit.escrow_for(&j.spec, &over, true).unwrap()),
        LedgerRejected::Escrow(EscrowProblem::OverPrice { price: 11, max: 10 })
    ));
    let fine = kit.offer(t, 0, 0, 0, 3);
    assert!(matches!(
        err(&mut l, &kit.escrow_for(&j.spec, &fine, false).unwrap()),
        LedgerRejected::Escrow(EscrowProblem::Declined { .. })
    ));
    let other = job(&kit, 1, 2);
    assert!(matches!(
        err(&mut l, &kit.escrow_for(&other.spec, &fine, true).unwrap()),
        LedgerRejected::Escrow(EscrowProblem::WrongJob { .. })
    ));
    let beyond = kit.offer(task(&j, 8), 0, 0, 0, 3);
    assert!(matches!(
        err(&mut l, &kit.escrow_for(&j.spec, &beyond, true).unwrap()),
        LedgerRejected::Escrow(EscrowProblem::NoSuchTask { index: 8, tasks: 8 })
    ));
    // The worker's accept of attempt 1 bundled with the offer of attempt 0.
    let LedgerEvent::Escrow { spec, offer, .. } = kit.escrow_for(&j.spec, &fine, true).unwrap()
    else {
        panic!()
    };
    let mut next = fine.clone();
    next.attempt = 1;
    let LedgerEvent::Escrow { accept, .. } = kit.escrow_for(&j.spec, &next, true).unwrap() else {
        panic!()
    };
    let mixed = LedgerEvent::Escrow {
        spec: spec.clone(),
        offer: offer.clone(),
        accept,
    };
    assert!(matches!(
        err(&mut l, &mixed),
        LedgerRejected::Escrow(EscrowProblem::AcceptMismatch { field: "attempt" })
    ));
    // A spec with a broken signature.
    let mut bytes = spec.as_bytes().to_vec();
    bytes[50] ^= 4;
    let LedgerEvent::Escrow { accept, .. } = kit.escrow_for(&j.spec, &fine, true).unwrap() else {
        panic!()
    };
    let forged = LedgerEvent::Escrow {
        spec: Signed::from_bytes(bytes).unwrap(),
        offer,
        accept,
    };
    assert!(matches!(
        err(&mut l, &forged),
        LedgerRejected::Invalid { frame: "spec", .. }
    ));
    assert_eq!(l.escrowed(), 0);
}

#[test]
fn two_offers_for_one_attempt_pay_once() {
    let (kit, mut l, j) = setup(12);
    let a = kit.offer(task(&j, 1), 0, 0, 0, 5);
    let mut b = a.clone();
    b.price = 6;
    ok(&mut l, &kit.escrow_for(&j.spec, &a, true).unwrap());
    ok(&mut l, &kit.escrow_for(&j.spec, &b, true).unwrap());
    assert!(l.escrowed() == 5 || l.escrowed() == 6);
    ok(
        &mut l,
        &kit.settle(&kit.receipt(&b, &j.creator), T0 + 130_000)
            .unwrap(),
    );
    assert_eq!(l.balance(&b.worker), 6);
    assert_eq!(l.escrowed(), 0);
    assert_eq!(l.balance(&j.creator), i128::from(GENESIS) - 6);
}

#[test]
fn an_earlier_acceptance_moves_the_receipt() {
    let (kit, mut l, j) = setup(13);
    let offer = kit.offer(task(&j, 0), 0, 0, 0, 5);
    ok(&mut l, &kit.escrow_for(&j.spec, &offer, true).unwrap());
    let receipt = kit.receipt(&offer, &j.creator);
    let late = kit.settle(&receipt, T0 + 7_200_000).unwrap();
    let early = kit.settle(&receipt, T0 + 130_000).unwrap();
    ok(&mut l, &late);
    assert_eq!(l.take_matched(), vec![(late.id(), T0 + 7_200_000)]);
    assert_eq!(
        ok(&mut l, &early),
        Applied::AcceptanceUpdated {
            receipt: late.id(),
            accepted_at_ms: T0 + 130_000
        }
    );
    assert_eq!(l.take_matched(), vec![(late.id(), T0 + 130_000)]);
    // The later one again: a duplicate.
    assert!(matches!(
        err(&mut l, &late),
        LedgerRejected::Duplicate { .. }
    ));
    assert_eq!(l.balance(&offer.worker), 5);
}

#[test]
fn bounds_refuse_floods() {
    let kit = Kit::new(14);
    let j = job(&kit, 0, 1);
    let mut l = Ledger::new(LedgerConfig {
        max_pending: 2,
        max_per_task: 2,
        ..kit.config()
    });
    for index in 0..3u32 {
        let o = kit.offer(task(&j, index), 0, 0, 0, 1);
        let e = kit.settle(&kit.receipt(&o, &j.creator), T0).unwrap();
        let r = l.handle_event(&e, NOW);
        if index < 2 {
            assert!(r.is_ok());
        } else {
            assert_eq!(r, Err(LedgerRejected::PendingFull { max: 2 }));
            assert!(!r.unwrap_err().is_misbehaviour());
        }
    }
    for attempt in 0..3u32 {
        let r = l.handle_event(&kit.escrow(&j.spec, 5, attempt, 0, 0, 1).unwrap(), NOW);
        assert_eq!(r.is_ok(), attempt < 2, "attempt {attempt}");
    }
    check_books(&l);
}

#[test]
fn batches_report_each_event_and_isolate_bad_signatures() {
    let (kit, mut l, j) = setup(15);
    let mut events = Vec::new();
    for index in 0..8u32 {
        let o = kit.offer(task(&j, index), 0, (index % 4) as usize, 0, 3);
        events.push(kit.escrow_for(&j.spec, &o, true).unwrap());
        events.push(
            kit.settle(&kit.receipt(&o, &j.creator), T0 + 130_000)
                .unwrap(),
        );
    }
    // Corrupt one acceptance signature in the middle of the batch.
    if let LedgerEvent::Settle {
        receipt,
        acceptance,
    } = &events[5]
    {
        let mut b = acceptance.as_bytes().to_vec();
        b[33] ^= 1;
        events[5] = LedgerEvent::Settle {
            receipt: receipt.clone(),
            acceptance: Signed::from_bytes(b).unwrap(),
        };
    }
    let results = l.handle_events(&events, NOW);
    check_books(&l);
    for (i, r) in results.iter().enumerate() {
        if i == 5 {
            assert!(matches!(
                r,
                Err(LedgerRejected::Invalid {
                    frame: "acceptance",
                    ..
                })
            ));
        } else {
            assert!(r.is_ok(), "event {i}: {r:?}");
        }
    }
    let paid: i128 = kit.workers.iter().map(|w| l.balance(&w.node_id())).sum();
    assert_eq!(paid, 7 * 3);
    // The same batch again: duplicates, except the bad one (refused again).
    let again = l.handle_events(&events, NOW);
    assert!(again.iter().all(|r| r.is_err()));
}

// ---- property tests ------------------------------------------------------

/// SplitMix64, for scenario generation and shuffles.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

struct Scenario {
    honest: Vec<LedgerEvent>,
    forged: Vec<LedgerEvent>,
}

fn scenario(kit: &Kit, seed: u64) -> Scenario {
    let mut rng = Mix(seed);
    let mut honest = Vec::new();
    let mut forged = Vec::new();
    for c in 0..2usize {
        let j = job(kit, c, seed);
        for index in 0..3u32 {
            let t = task(&j, index);
            let attempts = 1 + rng.below(3) as u32;
            for attempt in 0..attempts {
                let o = kit.offer(
                    t,
                    attempt,
                    rng.below(4) as usize,
                    rng.below(2) as usize,
                    1 + rng.below(10),
                );
                honest.push(kit.escrow_for(&j.spec, &o, true).unwrap());
                if rng.chance(40) {
                    honest.push(kit.refund(&o, CloseOutcome::Lapsed).unwrap());
                }
                let mut r = kit.receipt(&o, &j.creator);
                // Acceptance times spread over three one-hour epochs.
                let at = T0 + rng.below(3 * 3_600_000);
                if rng.chance(60) {
                    honest.push(kit.settle(&r, at).unwrap());
                    if rng.chance(20) {
                        // A second countersignature of the same receipt.
                        honest.push(kit.settle(&r, T0 + rng.below(3 * 3_600_000)).unwrap());
                    }
                }
                match rng.below(6) {
                    0 => {
                        // Never assigned: another worker claims the attempt.
                        let mut claim = o.clone();
                        claim.worker = kit.workers
                            [(rng.below(3) as usize + 1 + attempt as usize) % 4]
                            .node_id();
                        if claim.worker != o.worker {
                            forged.push(kit.settle(&kit.receipt(&claim, &j.creator), at).unwrap());
                        }
                    }
                    1 => {
                        r.usage.cpu_ms = 60_000 * 512 + 1 + rng.below(1000);
                        forged.push(kit.settle(&r, at).unwrap());
                    }
                    2 => forged.push(kit.settle_by(&r, &o.worker, at).unwrap()),
                    3 => {
                        if let LedgerEvent::Settle {
                            receipt,
                            acceptance,
                        } = kit.settle(&r, at).unwrap()
                        {
                            let mut b = receipt.as_bytes().to_vec();
                            let i = 32 + rng.below(64) as usize;
                            b[i] ^= 1 << rng.below(8);
                            forged.push(LedgerEvent::Settle {
                                receipt: Signed::from_bytes(b).unwrap(),
                                acceptance,
                            });
                        }
                    }
                    4 => {
                        let mut over = o.clone();
                        over.price = 11 + rng.below(5);
                        forged.push(kit.escrow_for(&j.spec, &over, true).unwrap());
                    }
                    _ => {
                        let mut wrong = o.clone();
                        wrong.scheduler = kit.schedulers[1 - (rng.below(2) as usize)].node_id();
                        if wrong.scheduler != o.scheduler {
                            forged.push(kit.refund(&wrong, CloseOutcome::Failed).unwrap());
                        }
                    }
                }
            }
        }
    }
    for n in 0..1 + rng.below(2) {
        honest.push(
            kit.mint(kit.workers[n as usize].node_id(), 1 + rng.below(100), n)
                .unwrap(),
        );
    }
    forged.push(
        kit.mint_by(&kit.creators[0], kit.creators[0].node_id(), 1_000_000, 1)
            .unwrap(),
    );
    Scenario { honest, forged }
}

fn rollup_config() -> RollupConfig {
    RollupConfig::default()
}

/// Feeds events one by one, checking the books after each; then closes
/// every epoch. Returns the peer and each epoch's root.
fn run(kit: &Kit, events: &[LedgerEvent], batch: usize) -> (LedgerPeer, Vec<(u64, [u8; 32], u64)>) {
    let mut p = LedgerPeer::new(kit.ledgers[0].node_id(), kit.config(), rollup_config());
    for chunk in events.chunks(batch.max(1)) {
        p.handle_events(chunk, NOW);
        check_books(p.ledger());
    }
    let end = T0 + 10 * 86_400_000;
    p.handle_timeout(end);
    check_books(p.ledger());
    let roots = p
        .rollup()
        .epochs()
        .into_iter()
        .filter(|e| e.count > 0)
        .map(|e| {
            let (root, count) = p.rollup().current_root(e.epoch);
            (e.epoch, root, count)
        })
        .collect();
    (p, roots)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Credits are conserved after every event; two ledgers fed the same
    /// events (duplicates and forgeries mixed in) in any order and batching
    /// end with the same balances, settlements and roots; forged events
    /// credit nothing; replays change nothing.
    #[test]
    fn prop_order_independent_conserving_and_forgery_proof(
        seed in any::<u64>(),
        shuffle_a in any::<u64>(),
        shuffle_b in any::<u64>(),
        batch_a in 1usize..16,
        batch_b in 1usize..16,
    ) {
        let kit = Kit::new(seed % 4);
        let s = scenario(&kit, seed);

        let mut all: Vec<LedgerEvent> = s.honest.iter().chain(&s.forged).cloned().collect();
        // Duplicates: some events twice.
        let dups: Vec<LedgerEvent> = all.iter().step_by(3).cloned().collect();
        all.extend(dups);
        let mut a = all.clone();
        Mix(shuffle_a).shuffle(&mut a);
        let mut b = all.clone();
        Mix(shuffle_b).shuffle(&mut b);

        let (mut pa, roots_a) = run(&kit, &a, batch_a);
        let (pb, roots_b) = run(&kit, &b, batch_b);
        prop_assert_eq!(pa.ledger().digest(), pb.ledger().digest());
        prop_assert_eq!(pa.ledger().pending(), pb.ledger().pending());
        prop_assert_eq!(&roots_a, &roots_b);

        // Honest events alone: same balances and roots.
        let mut h = s.honest.clone();
        Mix(shuffle_a ^ 1).shuffle(&mut h);
        let (ph, roots_h) = run(&kit, &h, 4);
        prop_assert_eq!(ph.ledger().digest(), pa.ledger().digest());
        prop_assert_eq!(&roots_h, &roots_a);

        // Replaying everything changes nothing.
        let before = pa.ledger().digest();
        let again = pa.handle_events(&all, NOW);
        prop_assert!(again.iter().all(|r| r.is_err()));
        prop_assert_eq!(pa.ledger().digest(), before);
    }
}
