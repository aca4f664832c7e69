//! Unit tests of verification in the scheduler: quorum lines and verdicts,
//! spot-check crops, comparisons and cross checks, probation, operators.

use std::sync::Arc;

use super::tests::{
    T0, TTL, answer, builtin_worker, config, drain, job, key, pump, result_of, rng, worker_advert,
};
use super::*;
use crate::reputation::Outcome;
use crate::task::Rect;
use crate::wire::{
    BlenderEngine, JobKind, Requirements, RuntimeKind, TaskOffer, VerificationPolicy,
};
use rand_chacha::ChaCha20Rng;

const HONEST: [u8; 32] = [1; 32];

fn with_policy(
    c: &crate::identity::NodeKey,
    nonce: u64,
    frames: u32,
    kind: JobKind,
    policy: VerificationPolicy,
) -> (JobSpec, Arc<[u8]>) {
    let (mut spec, _) = job(c, nonce, frames, kind, Requirements::default());
    spec.verification = policy;
    let frame = Signed::sign(c, &spec).unwrap().into_bytes();
    (spec, Arc::from(frame))
}

fn quorum(sample_permille: u16, k: u8) -> VerificationPolicy {
    VerificationPolicy::Quorum { sample_permille, k }
}

fn spot() -> VerificationPolicy {
    VerificationPolicy::SpotCheck {
        sample_permille: 1000,
        crop_permille: 250,
        min_similarity_milli: 900,
    }
}

fn blender() -> JobKind {
    JobKind::Blender {
        engine: BlenderEngine::Cycles,
    }
}

/// Offers and crop offers, in order.
fn offered(actions: &[SchedulerAction]) -> Vec<(TaskOffer, Option<Rect>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedulerAction::Offer { offer, .. } => Some((offer.clone(), None)),
            SchedulerAction::OfferCrop { offer, crop, .. } => Some((offer.clone(), Some(*crop))),
            _ => None,
        })
        .collect()
}

fn events(actions: &[SchedulerAction]) -> Vec<JobEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedulerAction::Notify { event, .. } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn outcomes(actions: &[SchedulerAction]) -> Vec<(NodeId, Outcome)> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedulerAction::Outcome {
                worker, outcome, ..
            } => Some((*worker, *outcome)),
            _ => None,
        })
        .collect()
}

fn closed(actions: &[SchedulerAction]) -> Vec<(u32, CloseReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedulerAction::Closed {
                attempt, reason, ..
            } => Some((*attempt, *reason)),
            _ => None,
        })
        .collect()
}

fn accept_all(s: &mut Scheduler, offers: &[(TaskOffer, Option<Rect>)], now: u64) {
    for (o, _) in offers {
        assert_eq!(
            s.handle_accept(&answer(o, true), now),
            Ok(AcceptOutcome::Assigned)
        );
    }
    drain(s);
}

fn result(s: &mut Scheduler, o: &TaskOffer, hash: [u8; 32], now: u64) -> ResultOutcome {
    let mut r = result_of(o);
    r.output_hash = hash;
    s.handle_result(&r, ResultFrames::default(), now).unwrap()
}

fn builtin_mesh(n: u8, slots: u16) -> (Scheduler, Vec<NodeId>, ChaCha20Rng) {
    super::tests::setup(n, slots)
}

fn blender_mesh(n: u8) -> (Scheduler, Vec<NodeId>, ChaCha20Rng) {
    let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), config());
    let workers: Vec<NodeId> = (1..=n).map(|i| NodeId::from_bytes([i; 32])).collect();
    for w in &workers {
        s.observe_advert(
            &worker_advert(*w, 1, &[(RuntimeKind::Blender, "4.2")], 1),
            T0 + TTL,
            T0,
        );
    }
    (s, workers, rng(3))
}

#[test]
fn a_sampled_task_runs_on_two_workers_and_agreement_verifies_it() {
    let (mut s, _, mut r) = builtin_mesh(3, 1);
    let c = key(1);
    let (spec, frame) = with_policy(&c, 1, 1, JobKind::Builtin, quorum(1000, 2));
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let acts = pump(&mut s, T0, &mut r);
    let o = offered(&acts);
    assert_eq!(o.len(), 2, "the task and one verification line");
    assert_ne!(o[0].0.worker, o[1].0.worker, "distinct workers");
    assert_eq!((o[0].0.attempt, o[1].0.attempt), (0, 1));
    assert!(
        o.iter()
            .all(|(x, crop)| x.task.index == 0 && crop.is_none())
    );
    // The creator hears of the task's own offer only.
    assert_eq!(
        events(&acts)
            .iter()
            .filter(|e| matches!(e, JobEvent::Offered { .. }))
            .count(),
        1
    );
    accept_all(&mut s, &o, T0);
    assert_eq!(
        result(&mut s, &o[1].0, HONEST, T0 + 5),
        ResultOutcome::Voted
    );
    assert_eq!(
        result(&mut s, &o[1].0, HONEST, T0 + 5),
        ResultOutcome::Duplicate,
        "a vote sent twice counts once"
    );
    let acts = drain(&mut s);
    assert!(matches!(
        events(&acts)[..],
        [JobEvent::Vote {
            task: 0,
            attempt: 1,
            ..
        }]
    ));
    assert_eq!(s.job_view(&id).unwrap().checks, 1);
    assert_eq!(
        result(&mut s, &o[0].0, HONEST, T0 + 6),
        ResultOutcome::Voted
    );
    let acts = drain(&mut s);
    let ev = events(&acts);
    assert!(ev.contains(&JobEvent::Verified {
        task: 0,
        worker: o[1].0.worker,
        attempt: 1
    }));
    assert!(ev.contains(&JobEvent::JobFinished { done: 1, failed: 0 }));
    assert!(!ev.iter().any(|e| matches!(e, JobEvent::Done { .. })));
    assert_eq!(closed(&acts), vec![(0, CloseReason::Checked)]);
    let out = outcomes(&acts);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(_, x)| *x == Outcome::Verified));
    let st = s.stats();
    assert_eq!((st.sampled, st.verified, st.caught, st.done), (1, 1, 0, 1));
    // A late duplicate is dropped.
    assert_eq!(
        result(&mut s, &o[0].0, HONEST, T0 + 7),
        ResultOutcome::Duplicate
    );
    s.check_invariants().unwrap();
}

#[test]
fn disagreement_adds_a_line_the_majority_wins_and_the_liar_is_caught() {
    let (mut s, _, mut r) = builtin_mesh(4, 1);
    let c = key(1);
    let (spec, frame) = with_policy(&c, 1, 1, JobKind::Builtin, quorum(1000, 2));
    s.submit(spec, frame, T0).unwrap();
    let o = offered(&pump(&mut s, T0, &mut r));
    accept_all(&mut s, &o, T0);
    let liar = o[0].0.clone();
    assert_eq!(
        result(&mut s, &liar, [0xBA; 32], T0 + 1),
        ResultOutcome::Voted
    );
    assert_eq!(
        result(&mut s, &o[1].0, HONEST, T0 + 2),
        ResultOutcome::Voted
    );
    drain(&mut s);
    // A third line, on a third worker.
    let third = offered(&pump(&mut s, T0 + 2, &mut r));
    assert_eq!(third.len(), 1);
    assert!(![liar.worker, o[1].0.worker].contains(&third[0].0.worker));
    assert_eq!(third[0].0.attempt, 2);
    accept_all(&mut s, &third, T0 + 2);
    assert_eq!(
        result(&mut s, &third[0].0, HONEST, T0 + 3),
        ResultOutcome::Voted
    );
    let acts = drain(&mut s);
    let ev = events(&acts);
    assert!(ev.contains(&JobEvent::Rejected {
        task: 0,
        worker: liar.worker,
        attempt: 0
    }));
    assert!(ev.contains(&JobEvent::Verified {
        task: 0,
        worker: o[1].0.worker,
        attempt: 1
    }));
    let mut cl = closed(&acts);
    cl.sort_by_key(|(a, _)| *a);
    assert_eq!(
        cl,
        vec![(0, CloseReason::Caught), (2, CloseReason::Checked)],
        "the liar's escrow is refunded as caught, the agreeing check's as checked"
    );
    assert!(outcomes(&acts).contains(&(liar.worker, Outcome::Failed)));
    assert_eq!(s.stats().caught, 1);
    s.check_invariants().unwrap();
}

#[test]
fn no_majority_within_the_bound_fails_the_task_as_unverified() {
    let (mut s, _, mut r) = builtin_mesh(6, 1);
    let c = key(1);
    let (spec, frame) = with_policy(&c, 1, 1, JobKind::Builtin, quorum(1000, 2));
    s.submit(spec, frame, T0).unwrap();
    let mut now = T0;
    let mut escrows = 0;
    let mut all = Vec::new();
    for i in 0..4u8 {
        let acts = pump(&mut s, now, &mut r);
        let o = offered(&acts);
        assert_eq!(o.len(), if i == 0 { 2 } else { 1 }, "round {i}");
        accept_all(&mut s, &o, now);
        escrows += o.len();
        for (x, _) in &o {
            now += 1;
            result(&mut s, x, [10 + x.attempt as u8; 32], now);
            all.extend(drain(&mut s));
        }
    }
    assert_eq!(escrows, 5, "2k + 1 lines at most");
    assert!(offered(&pump(&mut s, now, &mut r)).is_empty());
    assert!(events(&all).contains(&JobEvent::Failed {
        task: 0,
        attempt: Some(4),
        reason: FailReason::Unverified { results: 5 }
    }));
    assert_eq!(closed(&all).len(), 5, "every escrow refunded");
    assert!(
        outcomes(&all).is_empty(),
        "nobody is blamed without a majority"
    );
    assert_eq!(s.stats().unresolved, 1);
    s.check_invariants().unwrap();
}

#[test]
fn sampling_follows_the_policy_rate() {
    let (mut s, _, mut r) = builtin_mesh(50, 50);
    let c = key(1);
    let (spec, frame) = with_policy(&c, 1, 1000, JobKind::Builtin, quorum(100, 2));
    s.submit(spec, frame, T0).unwrap();
    pump(&mut s, T0, &mut r);
    let sampled = s.stats().sampled;
    // 10% of 1000: 100 ± 5σ (σ ≈ 9.5).
    assert!((52..=148).contains(&sampled), "{sampled}");
    assert_eq!(s.stats().offers, 1000 + sampled);
    s.check_invariants().unwrap();
}

#[test]
fn probationers_are_always_verified_capped_and_checked_by_trusted_workers() {
    let mut cfg = config();
    cfg.new_nodes_on_probation = true;
    let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), cfg);
    let trusted = NodeId::from_bytes([1; 32]);
    let newbies = [NodeId::from_bytes([2; 32]), NodeId::from_bytes([3; 32])];
    for w in std::iter::once(&trusted).chain(&newbies) {
        s.observe_advert(&builtin_worker(*w, 1, 4), T0 + TTL, T0);
    }
    s.set_probation(trusted, false);
    let c = key(1);
    // Never sampled by the draw: only probation verifies.
    let (spec, frame) = with_policy(&c, 1, 6, JobKind::Builtin, quorum(0, 2));
    s.submit(spec, frame, T0).unwrap();
    let mut r = rng(5);
    let o = offered(&pump(&mut s, T0, &mut r));
    for n in &newbies {
        assert!(
            o.iter().filter(|(x, _)| x.worker == *n).count() <= 1,
            "a probationer holds one task at a time"
        );
    }
    let mut to_newbies = 0;
    for (x, _) in o.iter().filter(|(x, _)| newbies.contains(&x.worker)) {
        to_newbies += 1;
        let same: Vec<_> = o.iter().filter(|(y, _)| y.task == x.task).collect();
        assert_eq!(same.len(), 2, "a probationer's task is verified");
        assert!(
            same.iter().any(|(y, _)| y.worker == trusted),
            "and checked by the trusted worker"
        );
    }
    assert!(to_newbies >= 1);
    assert_eq!(s.stats().sampled, to_newbies as u64);
    s.check_invariants().unwrap();
    // With policy None, probationers still run (capped) but nothing is verified.
    let (spec, frame) = with_policy(&c, 2, 4, JobKind::Builtin, VerificationPolicy::None);
    s.submit(spec, frame, T0).unwrap();
    pump(&mut s, T0 + 1, &mut r);
    assert_eq!(s.stats().sampled, to_newbies as u64);
}

#[test]
fn verification_lines_prefer_another_operator() {
    for seed in 0..8 {
        let (mut s, w, _) = builtin_mesh(3, 1);
        s.set_operator(w[0], 7);
        s.set_operator(w[1], 7);
        s.set_operator(w[2], 9);
        let c = key(1);
        let (spec, frame) = with_policy(&c, 1, 1, JobKind::Builtin, quorum(1000, 2));
        s.submit(spec, frame, T0).unwrap();
        let o = offered(&pump(&mut s, T0, &mut rng(seed)));
        assert_eq!(o.len(), 2);
        let group = |n: NodeId| if n == w[2] { 9 } else { 7 };
        assert_ne!(group(o[0].0.worker), group(o[1].0.worker), "seed {seed}");
    }
}

#[test]
fn a_lone_worker_cannot_verify_itself() {
    let (mut s, _, mut r) = builtin_mesh(1, 4);
    let c = key(1);
    let (spec, frame) = with_policy(&c, 1, 1, JobKind::Builtin, quorum(1000, 2));
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let acts = pump(&mut s, T0, &mut r);
    assert_eq!(offered(&acts).len(), 1);
    assert!(events(&acts).contains(&JobEvent::Queued {
        reason: QueuedReason::NoVerifier { checked: 1 }
    }));
    let why = s.job_view(&id).unwrap().why_queued.unwrap();
    assert!(
        why.starts_with("verification needs another worker"),
        "{why}"
    );
}

/// Runs a spot-checked one-task job to the first `Compare`: returns the
/// primary and check offers.
fn spot_started(s: &mut Scheduler, r: &mut ChaCha20Rng) -> (JobSpec, TaskOffer, TaskOffer, Rect) {
    let c = key(1);
    let (spec, frame) = with_policy(&c, 1, 1, blender(), spot());
    s.submit(spec.clone(), frame, T0).unwrap();
    let o = offered(&pump(s, T0, r));
    assert_eq!(o.len(), 2);
    let (primary, check) = (o[0].clone(), o[1].clone());
    assert_eq!(primary.1, None);
    let crop = check.1.unwrap();
    assert!(crop.fits(spec.width, spec.height));
    assert_eq!((crop.w, crop.h), (32, 32), "a quarter of 64, at least 32");
    accept_all(s, &o, T0);
    // The crop comes back first: nothing to compare with yet.
    assert_eq!(result(s, &check.0, [7; 32], T0 + 1), ResultOutcome::Voted);
    assert!(
        !events(&drain(s))
            .iter()
            .any(|e| matches!(e, JobEvent::Compare { .. }))
    );
    assert_eq!(result(s, &primary.0, [8; 32], T0 + 2), ResultOutcome::Voted);
    let ev = events(&drain(s));
    assert!(ev.contains(&JobEvent::Compare {
        task: 0,
        crop,
        reference_attempt: primary.0.attempt,
        check_attempt: check.0.attempt,
        cross: false
    }));
    (spec, primary.0, check.0, crop)
}

fn cmp(spec: &JobSpec, reference: u32, check: u32, result: CompareResult) -> Comparison {
    Comparison {
        task: TaskId {
            job: spec.id,
            index: 0,
        },
        reference_attempt: reference,
        check_attempt: check,
        result,
    }
}

#[test]
fn a_spot_check_that_matches_verifies_the_primary() {
    let (mut s, _, mut r) = blender_mesh(3);
    let (spec, primary, check, _) = spot_started(&mut s, &mut r);
    let creator = spec.creator;
    // Refusals first: not the creator, not pending.
    let good = cmp(
        &spec,
        primary.attempt,
        check.attempt,
        CompareResult::Similarity(950),
    );
    assert!(matches!(
        s.handle_comparison(&primary.worker, &good, T0 + 3),
        Err(ComparisonError::NotCreator { .. })
    ));
    assert!(matches!(
        s.handle_comparison(
            &creator,
            &cmp(&spec, 9, check.attempt, CompareResult::Similarity(1)),
            T0 + 3
        ),
        Err(ComparisonError::NotPending { .. })
    ));
    s.handle_comparison(&creator, &good, T0 + 3).unwrap();
    let acts = drain(&mut s);
    assert!(events(&acts).contains(&JobEvent::Verified {
        task: 0,
        worker: primary.worker,
        attempt: primary.attempt
    }));
    assert_eq!(closed(&acts), vec![(check.attempt, CloseReason::Checked)]);
    assert_eq!(outcomes(&acts).len(), 2);
    // Answered twice: nothing pending any more.
    assert!(s.handle_comparison(&creator, &good, T0 + 4).is_err());
    s.check_invariants().unwrap();
}

#[test]
fn a_failed_spot_check_needs_a_confirmed_second_opinion_then_reruns_elsewhere() {
    let (mut s, _, mut r) = blender_mesh(5);
    let (spec, primary, check, crop) = spot_started(&mut s, &mut r);
    let creator = spec.creator;
    s.handle_comparison(
        &creator,
        &cmp(
            &spec,
            primary.attempt,
            check.attempt,
            CompareResult::Similarity(120),
        ),
        T0 + 3,
    )
    .unwrap();
    let acts = pump(&mut s, T0 + 3, &mut r);
    assert!(outcomes(&acts).is_empty(), "one dissent blames nobody");
    let second = offered(&acts);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].1, Some(crop), "the same crop");
    let second = second[0].0.clone();
    assert!(![primary.worker, check.worker].contains(&second.worker));
    accept_all(&mut s, &[(second.clone(), Some(crop))], T0 + 3);
    result(&mut s, &second, [9; 32], T0 + 4);
    drain(&mut s);
    s.handle_comparison(
        &creator,
        &cmp(
            &spec,
            primary.attempt,
            second.attempt,
            CompareResult::Similarity(90),
        ),
        T0 + 5,
    )
    .unwrap();
    // Two dissenters: compared with each other before blaming the primary.
    let ev = events(&drain(&mut s));
    assert_eq!(
        ev,
        vec![JobEvent::Compare {
            task: 0,
            crop,
            reference_attempt: check.attempt,
            check_attempt: second.attempt,
            cross: true
        }]
    );
    s.handle_comparison(
        &creator,
        &cmp(
            &spec,
            check.attempt,
            second.attempt,
            CompareResult::Similarity(970),
        ),
        T0 + 6,
    )
    .unwrap();
    let acts = pump(&mut s, T0 + 6, &mut r);
    let ev = events(&acts);
    assert!(ev.contains(&JobEvent::Rejected {
        task: 0,
        worker: primary.worker,
        attempt: primary.attempt
    }));
    let out = outcomes(&acts);
    assert!(out.contains(&(primary.worker, Outcome::Failed)));
    assert!(out.contains(&(check.worker, Outcome::Verified)));
    assert!(out.contains(&(second.worker, Outcome::Verified)));
    // Re-run elsewhere, verified again.
    let rerun = offered(&acts);
    assert_eq!(rerun.len(), 2, "{rerun:?}");
    assert!(rerun.iter().all(|(o, _)| o.worker != primary.worker));
    assert_eq!(rerun.iter().filter(|(_, c)| c.is_some()).count(), 1);
    assert_eq!(s.stats().caught, 1);
    s.check_invariants().unwrap();
    // The rerun passes; the caught attempt is refunded as caught when the task closes.
    accept_all(&mut s, &rerun, T0 + 7);
    let (p2, c2) = if rerun[0].1.is_none() {
        (rerun[0].0.clone(), rerun[1].0.clone())
    } else {
        (rerun[1].0.clone(), rerun[0].0.clone())
    };
    result(&mut s, &p2, [3; 32], T0 + 8);
    result(&mut s, &c2, [4; 32], T0 + 8);
    drain(&mut s);
    s.handle_comparison(
        &creator,
        &cmp(
            &spec,
            p2.attempt,
            c2.attempt,
            CompareResult::Similarity(999),
        ),
        T0 + 9,
    )
    .unwrap();
    let acts = drain(&mut s);
    assert!(events(&acts).contains(&JobEvent::Verified {
        task: 0,
        worker: p2.worker,
        attempt: p2.attempt
    }));
    assert!(closed(&acts).contains(&(primary.attempt, CloseReason::Caught)));
    s.check_invariants().unwrap();
}

#[test]
fn an_unusable_check_is_blamed_and_replaced() {
    let (mut s, _, mut r) = blender_mesh(4);
    let (spec, primary, check, _) = spot_started(&mut s, &mut r);
    s.handle_comparison(
        &spec.creator,
        &cmp(
            &spec,
            primary.attempt,
            check.attempt,
            CompareResult::CheckUnusable,
        ),
        T0 + 3,
    )
    .unwrap();
    let acts = pump(&mut s, T0 + 3, &mut r);
    assert!(outcomes(&acts).contains(&(check.worker, Outcome::Failed)));
    assert_eq!(offered(&acts).len(), 1, "another check");
    s.check_invariants().unwrap();
}

#[test]
fn verification_survives_snapshots_and_takeover() {
    let (mut s, _, mut r) = blender_mesh(3);
    let replica = NodeId::from_bytes([201; 32]);
    s.observe_advert(&super::tests::scheduler_advert(replica, 1), u64::MAX, T0);
    let (spec, _, _, _) = spot_started(&mut s, &mut r);
    // Through the parts and the codec, restored: the same machine.
    let snap = s.snapshot();
    let mut parts = Vec::new();
    for p in snap.jobs[0].to_parts() {
        let bytes = crate::codec::encode(&p).unwrap();
        parts.push(crate::codec::decode::<SnapshotPart>(&bytes, crate::codec::MAX_FRAME).unwrap());
    }
    assert_eq!(JobSnapshot::from_parts(parts).unwrap(), snap.jobs[0]);
    let back = Scheduler::restore(s.config().clone(), snap.clone()).unwrap();
    assert_eq!(back.snapshot(), snap);
    back.check_invariants().unwrap();
    // A replica takes over and asks the creator again.
    let mut b = Scheduler::new(replica, config());
    b.observe_advert(&super::tests::scheduler_advert(s.me(), 1), T0 + TTL, T0);
    b.handle_replica(&s.me(), snap.jobs[0].clone(), T0).unwrap();
    b.take_over(&spec.id, T0 + 1).unwrap();
    let ev = events(&drain(&mut b));
    assert!(
        ev.iter().any(|e| matches!(e, JobEvent::Compare { .. })),
        "{ev:?}"
    );
    b.check_invariants().unwrap();
}

/// The devnet scenario as a model: 8 workers, 2 of them cheating
/// (each returns its own wrong output), a 48-frame job under each policy,
/// every new worker on probation. The scheduler, the creator's machine and a
/// reputation book are wired as the node wires them, with real signed
/// bundles. Every accepted frame is correct, cheaters earn nothing for a
/// caught task, and their reputation falls below the honest workers'.
#[test]
fn two_cheaters_among_eight_never_get_a_wrong_frame_accepted() {
    use crate::creator::{CreatorJob, Decision, VoteDecision};
    use crate::identity::NodeKey;
    use crate::reputation::{ReputationBook, ReputationConfig};
    use std::collections::{BTreeMap, BTreeSet};

    for (nonce, policy, kind) in [
        (1, quorum(100, 2), JobKind::Builtin),
        (2, spot(), blender()),
    ] {
        let sched_key = key(100);
        let mut cfg = config();
        cfg.new_nodes_on_probation = true;
        let mut s = Scheduler::new(sched_key.node_id(), cfg);
        let keys: Vec<NodeKey> = (0..8).map(|i| key(200 + i)).collect();
        let cheaters: BTreeSet<NodeId> = keys[..2].iter().map(|k| k.node_id()).collect();
        let runtimes = [(RuntimeKind::Builtin, "1"), (RuntimeKind::Blender, "4.2")];
        for k in &keys {
            s.observe_advert(&worker_advert(k.node_id(), 1, &runtimes, 2), u64::MAX, T0);
        }
        let mut book = ReputationBook::new(sched_key.node_id(), ReputationConfig::default());
        let c = key(1);
        let (spec, frame) = with_policy(&c, nonce, 48, kind, policy);
        let mut creator = CreatorJob::new(spec.clone(), s.me());
        s.submit(spec.clone(), frame, T0).unwrap();
        let honest_hash = |t: u32| [t as u8; 32];
        let output = |w: &NodeId, t: u32| {
            if cheaters.contains(w) {
                let mut h = [0xC0; 32];
                h[..4].copy_from_slice(&w.as_bytes()[..4]);
                h
            } else {
                honest_hash(t)
            }
        };
        let mut r = rng(nonce);
        let mut now = T0;
        let mut running: Vec<(TaskOffer, u64)> = Vec::new();
        let mut accepted: BTreeMap<u32, (NodeId, [u8; 32])> = BTreeMap::new();
        let mut caught: BTreeSet<(u32, u32)> = BTreeSet::new();
        let mut finished = false;
        while !finished && now < T0 + 3_600_000 {
            let mut acts = pump(&mut s, now, &mut r);
            while !acts.is_empty() {
                let mut next = Vec::new();
                for a in acts {
                    match a {
                        SchedulerAction::Offer { offer, .. }
                        | SchedulerAction::OfferCrop { offer, .. } => {
                            s.handle_accept(&answer(&offer, true), now).unwrap();
                            running.push((offer, now + 5_000));
                        }
                        SchedulerAction::Outcome {
                            worker, outcome, ..
                        } => {
                            book.observe(worker, outcome, now);
                            let st = book.standing(&worker, now);
                            s.set_reputation(worker, st.permille);
                            s.set_probation(worker, st.probation);
                        }
                        SchedulerAction::Notify { event, .. } => match event {
                            JobEvent::Done { frames, .. } => {
                                if let Ok(Decision::Fetch(b)) = creator.check_result(frames) {
                                    let (t, at) = (b.offer.task.index, b.offer.attempt);
                                    creator.fetched(t, at, b.result.output_hash, now).unwrap();
                                    accepted.insert(t, (b.offer.worker, b.result.output_hash));
                                }
                            }
                            JobEvent::Vote { frames, .. } => {
                                if let VoteDecision::Fetch(b) = creator.vote(frames).unwrap() {
                                    let (t, at) = (b.offer.task.index, b.offer.attempt);
                                    creator.fetched(t, at, b.result.output_hash, now).unwrap();
                                    accepted.insert(t, (b.offer.worker, b.result.output_hash));
                                }
                            }
                            JobEvent::Verified { task, attempt, .. } => {
                                if let Some(b) = creator.verified(task, attempt).unwrap() {
                                    creator
                                        .fetched(task, attempt, b.result.output_hash, now)
                                        .unwrap();
                                    accepted.insert(task, (b.offer.worker, b.result.output_hash));
                                }
                            }
                            JobEvent::Rejected { task, attempt, .. } => {
                                creator.rejected(task, attempt);
                                caught.insert((task, attempt));
                            }
                            JobEvent::Compare {
                                task,
                                crop,
                                reference_attempt,
                                check_attempt,
                                cross,
                            } => {
                                let req = creator
                                    .compare(task, crop, reference_attempt, check_attempt, cross)
                                    .unwrap();
                                // The metric: honest renders match, nothing else does.
                                let ok = |b: &crate::creator::CheckedResult| {
                                    !cheaters.contains(&b.offer.worker)
                                };
                                let sim = if ok(&req.reference) && ok(&req.check) {
                                    970
                                } else {
                                    80
                                };
                                let cmp = creator
                                    .compared(
                                        task,
                                        reference_attempt,
                                        check_attempt,
                                        Some(req.reference.result.output_hash),
                                        Some(req.check.result.output_hash),
                                        CompareResult::Similarity(sim),
                                    )
                                    .unwrap();
                                s.handle_comparison(&spec.creator, &cmp, now).unwrap();
                            }
                            JobEvent::JobFinished { done, failed } => {
                                assert_eq!((done, failed), (48, 0));
                                finished = true;
                            }
                            _ => {}
                        },
                        _ => {}
                    }
                }
                next.extend(pump(&mut s, now, &mut r));
                acts = next;
            }
            now += 1_000;
            let due: Vec<(TaskOffer, u64)> = running
                .iter()
                .filter(|(_, at)| *at <= now)
                .cloned()
                .collect();
            running.retain(|(_, at)| *at > now);
            for (o, _) in due {
                let wk = keys.iter().find(|k| k.node_id() == o.worker).unwrap();
                let hash = output(&o.worker, o.task.index);
                let result = TaskResult {
                    output_hash: hash,
                    ..result_of(&o)
                };
                let receipt = crate::wire::Receipt {
                    task: o.task,
                    worker: o.worker,
                    creator: spec.creator,
                    scheduler: o.scheduler,
                    attempt: o.attempt,
                    output_hash: hash,
                    usage: result.usage,
                    started_at_ms: now - 5_000,
                    finished_at_ms: now,
                    price: o.price,
                };
                let frames = ResultFrames {
                    offer: Signed::sign(&sched_key, &o).unwrap().into_bytes(),
                    result: Signed::sign(wk, &result).unwrap().into_bytes(),
                    receipt: Signed::sign(wk, &receipt).unwrap().into_bytes(),
                };
                let _ = s.handle_result(&result, frames, now);
            }
        }
        assert!(finished, "policy {nonce}: the job finished");
        assert_eq!(creator.counts().accepted, 48);
        for (t, (w, h)) in &accepted {
            assert_eq!(
                *h,
                honest_hash(*t),
                "task {t} accepted a wrong frame from {w:?}"
            );
            assert!(!cheaters.contains(w));
        }
        assert!(
            !caught.is_empty(),
            "policy {nonce}: the cheaters were caught"
        );
        let now = now + 1;
        let worst_honest = keys[2..]
            .iter()
            .map(|k| book.score(&k.node_id(), now))
            .min()
            .unwrap();
        for ch in &cheaters {
            assert!(book.score(ch, now) < worst_honest, "policy {nonce}");
            assert!(book.on_probation(ch, now));
        }
        s.check_invariants().unwrap();
    }
}
