//! Unit tests of the scheduler machine, and helpers shared with `props`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::codec;
use crate::identity::NodeKey;
use crate::wire::{
    GpuInfo, GpuVendor, ImageFormat, JobKind, Requirements, ResourceUsage, Role, RuntimeInfo,
    RuntimeKind, SplitRule, TaskOffer, VerificationPolicy,
};

pub(super) const T0: u64 = 1_780_000_000_000;
pub(super) const TTL: u64 = 30_000;

pub(super) fn key(seed: u64) -> NodeKey {
    NodeKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

pub(super) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub(super) fn worker_advert(
    id: NodeId,
    seq: u64,
    runtimes: &[(RuntimeKind, &str)],
    max_tasks: u16,
) -> CapacityAdvert {
    CapacityAdvert {
        node: id,
        seq,
        issued_at_ms: T0,
        refresh_ms: 10_000,
        wrap_key: [0; 32],
        roles: vec![Role::Worker],
        cpu_cores: 8,
        cpu_model: "cpu".into(),
        ram_bytes: 64 << 30,
        disk_free_bytes: 1 << 40,
        gpus: vec![GpuInfo {
            vendor: GpuVendor::Nvidia,
            model: "gpu".into(),
            vram_bytes: 24 << 30,
        }],
        runtimes: runtimes
            .iter()
            .map(|(kind, v)| RuntimeInfo {
                kind: *kind,
                version: (*v).into(),
            })
            .collect(),
        bench_mfpm: 100_000,
        running_tasks: 0,
        max_tasks,
        price_per_task: 10,
        region: "eu".into(),
    }
}

pub(super) fn builtin_worker(id: NodeId, seq: u64, max_tasks: u16) -> CapacityAdvert {
    worker_advert(id, seq, &[(RuntimeKind::Builtin, "1")], max_tasks)
}

pub(super) fn scheduler_advert(id: NodeId, seq: u64) -> CapacityAdvert {
    let mut a = worker_advert(id, seq, &[], 0);
    a.roles = vec![Role::Scheduler];
    a
}

pub(super) fn job(
    creator: &NodeKey,
    nonce: u64,
    frames: u32,
    kind: JobKind,
    req: Requirements,
) -> (JobSpec, Arc<[u8]>) {
    let spec = JobSpec {
        id: JobId::derive(&creator.node_id(), nonce),
        creator: creator.node_id(),
        nonce,
        created_at_ms: T0,
        kind,
        inputs: vec![],
        requirements: req,
        split: SplitRule::Frames {
            start: 1,
            end: frames,
            step: 1,
        },
        width: 64,
        height: 64,
        format: ImageFormat::Png,
        max_price_per_task: 100,
        verification: VerificationPolicy::None,
        deadline_ms: T0 + 3_600_000,
    };
    let frame = Signed::sign(creator, &spec).unwrap().into_bytes();
    (spec, Arc::from(frame))
}

pub(super) fn builtin_job(creator: &NodeKey, nonce: u64, frames: u32) -> (JobSpec, Arc<[u8]>) {
    job(
        creator,
        nonce,
        frames,
        JobKind::Builtin,
        Requirements::default(),
    )
}

pub(super) fn config() -> SchedulerConfig {
    SchedulerConfig {
        heartbeat_timeout_ms: 10_000,
        reserve_ms: 2_000,
        retry_ms: 1_000,
        replicate_interval_ms: 1_000,
        // The tests of placement and tracking run without probation;
        // `verify_tests` turn it on.
        new_nodes_on_probation: false,
        ..SchedulerConfig::default()
    }
}

pub(super) fn drain(s: &mut Scheduler) -> Vec<SchedulerAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

pub(super) fn pump(s: &mut Scheduler, now: u64, r: &mut ChaCha20Rng) -> Vec<SchedulerAction> {
    let mut out = drain(s);
    while s.next_deadline().is_some_and(|d| d <= now) {
        s.handle_timeout(now, r);
        out.extend(drain(s));
    }
    out
}

pub(super) fn offers(actions: &[SchedulerAction]) -> Vec<TaskOffer> {
    actions
        .iter()
        .filter_map(|a| match a {
            SchedulerAction::Offer { offer, .. } => Some(offer.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn answer(o: &TaskOffer, yes: bool) -> TaskAccept {
    TaskAccept {
        task: o.task,
        worker: o.worker,
        attempt: o.attempt,
        accepted: yes,
        reason: String::new(),
    }
}

pub(super) fn result_of(o: &TaskOffer) -> TaskResult {
    TaskResult {
        task: o.task,
        worker: o.worker,
        attempt: o.attempt,
        output_hash: [1; 32],
        output_manifest: crate::content::ContentId([2; 32]),
        wrapped_key: crate::seal::WrappedKey {
            ephemeral: [0; 32],
            ciphertext: [0; 32],
            tag: [0; 16],
        },
        usage: ResourceUsage::default(),
    }
}

pub(super) fn progress_of(o: &TaskOffer, seq: u32, permille: u16) -> Progress {
    Progress {
        task: o.task,
        worker: o.worker,
        attempt: o.attempt,
        seq,
        permille,
        at_ms: T0,
    }
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

/// A scheduler with `n` builtin workers of `slots` slots each.
pub(super) fn setup(n: u8, slots: u16) -> (Scheduler, Vec<NodeId>, ChaCha20Rng) {
    let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), config());
    let workers: Vec<NodeId> = (1..=n).map(|i| NodeId::from_bytes([i; 32])).collect();
    for w in &workers {
        s.observe_advert(&builtin_worker(*w, 1, slots), T0 + TTL, T0);
    }
    (s, workers, rng(7))
}

#[test]
fn submit_splits_and_is_idempotent() {
    let (mut s, _, mut r) = setup(3, 4);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 5);
    assert_eq!(
        s.submit(spec.clone(), frame.clone(), T0),
        Ok(Submitted::New { tasks: 5 })
    );
    assert_eq!(
        s.submit(spec.clone(), frame.clone(), T0),
        Ok(Submitted::AlreadyKnown)
    );
    let mut other = spec.clone();
    other.width = 32;
    assert_eq!(
        s.submit(other, frame, T0),
        Err(SubmitError::Conflict(spec.id))
    );
    let acts = pump(&mut s, T0, &mut r);
    let o = offers(&acts);
    assert_eq!(o.len(), 5);
    let mut idx: Vec<u32> = o.iter().map(|o| o.task.index).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2, 3, 4]);
    for o in &o {
        assert_eq!(o.attempt, 0);
        assert_eq!(o.scheduler, s.me());
        assert_eq!(o.price, 10);
        assert_eq!(o.reserve_until_ms, T0 + 2_000);
        assert_eq!(o.deadline_ms, T0 + 3_600_000);
    }
    s.check_invariants().unwrap();
}

#[test]
fn submit_refusals_say_why() {
    let c = key(1);
    let mut s = Scheduler::new(
        NodeId::from_bytes([200; 32]),
        SchedulerConfig {
            max_jobs: 1,
            max_tasks: 10,
            ..config()
        },
    );
    let (mut spec, frame) = builtin_job(&c, 1, 5);
    spec.deadline_ms = T0;
    let e = s.submit(spec, frame.clone(), T0).unwrap_err();
    assert!(matches!(e, SubmitError::DeadlinePassed { .. }));
    assert!(e.to_string().contains("already past"));
    let (spec, frame) = builtin_job(&c, 2, 11);
    assert!(matches!(
        s.submit(spec, frame, T0),
        Err(SubmitError::TooManyTasks {
            tasks: 11,
            max: 10,
            ..
        })
    ));
    let (spec, frame) = builtin_job(&c, 3, 2);
    s.submit(spec, frame, T0).unwrap();
    let (spec, frame) = builtin_job(&c, 4, 2);
    assert_eq!(
        s.submit(spec, frame, T0),
        Err(SubmitError::TooManyJobs { max: 1 })
    );
    let (mut spec, frame) = builtin_job(&c, 5, 2);
    spec.nonce = 99;
    assert!(matches!(
        s.submit(spec, frame, T0),
        Err(SubmitError::Invalid(_))
    ));
    // A signed spec with a bad signature.
    let (spec, frame) = builtin_job(&c, 6, 2);
    let mut bytes = frame.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let _ = spec;
    let signed = Signed::<JobSpec>::from_bytes(bytes).unwrap();
    assert!(matches!(
        s.submit_signed(&signed, T0),
        Err(SubmitError::Signed(_))
    ));
}

#[test]
fn queued_reasons_name_what_is_missing() {
    let c = key(1);
    let mut r = rng(1);
    let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), config());
    let blender = JobKind::Blender {
        engine: crate::wire::BlenderEngine::Cycles,
    };
    let (spec, frame) = job(
        &c,
        1,
        2,
        blender.clone(),
        Requirements {
            min_runtime_version: Some("3.6".into()),
            ..Default::default()
        },
    );
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let ev = events(&pump(&mut s, T0, &mut r));
    let reason = QueuedReason::NoRuntime {
        runtime: RuntimeKind::Blender,
    };
    assert_eq!(
        ev,
        vec![JobEvent::Queued {
            reason: reason.clone()
        }]
    );
    assert_eq!(reason.to_string(), "no live worker has runtime blender");
    let v = s.job_view(&id).unwrap();
    assert_eq!(
        v.why_queued.as_deref(),
        Some("no live worker has runtime blender")
    );
    assert_eq!(v.queued, 2);

    // An old Blender appears: the reason changes and names the version.
    let w = NodeId::from_bytes([1; 32]);
    s.observe_advert(
        &worker_advert(w, 1, &[(RuntimeKind::Blender, "3.4.1")], 2),
        T0 + TTL,
        T0,
    );
    let ev = events(&pump(&mut s, T0 + 1_000, &mut r));
    assert_eq!(ev.len(), 1);
    let why = s.job_view(&id).unwrap().why_queued.unwrap();
    assert_eq!(
        why,
        "none of the 1 free workers checked meets the requirements, e.g. no runtime blender >= 3.6: this node has blender 3.4.1"
    );
    // Retried on the timer, not told again while the reason stays.
    assert!(events(&pump(&mut s, T0 + 2_000, &mut r)).is_empty());

    // A new enough Blender takes both tasks.
    s.observe_advert(
        &worker_advert(w, 2, &[(RuntimeKind::Blender, "4.1")], 2),
        T0 + TTL,
        T0 + 2_500,
    );
    let acts = pump(&mut s, T0 + 3_000, &mut r);
    assert_eq!(offers(&acts).len(), 2);
    assert_eq!(s.job_view(&id).unwrap().why_queued, None);

    // A vendor nobody has.
    let (spec, frame) = job(
        &c,
        2,
        1,
        blender,
        Requirements {
            gpu_vendor: Some(GpuVendor::Amd),
            ..Default::default()
        },
    );
    s.submit(spec, frame, T0 + 3_000).unwrap();
    let ev = events(&pump(&mut s, T0 + 3_000, &mut r));
    assert_eq!(
        ev[0],
        JobEvent::Queued {
            reason: QueuedReason::NoGpu {
                runtime: RuntimeKind::Blender,
                vendor: GpuVendor::Amd
            }
        }
    );
}

#[test]
fn busy_workers_are_not_offered_more_than_their_free_slots() {
    let (mut s, w, mut r) = setup(1, 2);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 5);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let o = offers(&pump(&mut s, T0, &mut r));
    assert_eq!(o.len(), 2, "two free slots, two offers");
    assert_eq!(
        s.job_view(&id).unwrap().why_queued.as_deref(),
        Some("all 1 live workers with runtime builtin are busy")
    );
    // Accepted tasks still count until the worker's next advert.
    for o in &o {
        assert_eq!(
            s.handle_accept(&answer(o, true), T0 + 1),
            Ok(AcceptOutcome::Assigned)
        );
    }
    assert!(offers(&pump(&mut s, T0 + 1_500, &mut r)).is_empty());
    // The next advert says both run: still full.
    let mut a = builtin_worker(w[0], 2, 2);
    a.running_tasks = 2;
    s.observe_advert(&a, T0 + TTL, T0 + 1_600);
    assert!(offers(&pump(&mut s, T0 + 2_600, &mut r)).is_empty());
    // One finished: one more offer.
    a.seq = 3;
    a.running_tasks = 1;
    s.observe_advert(&a, T0 + TTL, T0 + 2_700);
    assert_eq!(offers(&pump(&mut s, T0 + 3_700, &mut r)).len(), 1);
    s.check_invariants().unwrap();
}

/// A job with more queued tasks than a placement quantum, every one of them
/// excluded from the only free worker (it failed them all): placement gives
/// up on the job until `retry_ms` instead of trying it again and again at
/// the same instant (the simulator's churn scenario spun there, and so would
/// a node's job service).
#[test]
fn a_job_whose_tasks_all_exclude_the_free_workers_waits_for_the_retry() {
    let (mut s, w, mut r) = setup(1, 1);
    let (spec, frame) = builtin_job(&key(1), 1, 200);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    {
        let job = s.jobs.get_mut(&id).unwrap();
        let wi = job.worker_index(w[0]);
        for t in &mut job.core.tasks {
            t.next_attempt = 1;
            t.failures = 1;
            t.past.push(job::Past {
                worker: wi,
                attempt: 0,
                kind: job::PastKind::Reported,
            });
        }
    }
    let mut calls = 0;
    while s.next_deadline().is_some_and(|d| d <= T0) {
        calls += 1;
        assert!(calls <= 2, "placement is due again at the same instant");
        s.handle_timeout(T0, &mut r);
    }
    assert!(offers(&drain(&mut s)).is_empty());
    assert!(
        s.stats().decisions <= 200,
        "{} decisions for 200 queued tasks",
        s.stats().decisions
    );
    assert!(
        s.next_deadline()
            .is_some_and(|d| d >= T0 + config().retry_ms)
    );
    assert!(
        matches!(
            s.job_view(&id).unwrap().why_queued.as_deref(),
            Some(r) if r.contains("excluded") || r.contains("failed")
        ),
        "{:?}",
        s.job_view(&id).unwrap().why_queued
    );
}

#[test]
fn accept_only_from_the_offered_worker_and_attempt() {
    let (mut s, w, mut r) = setup(2, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    s.submit(spec, frame, T0).unwrap();
    let o = offers(&pump(&mut s, T0, &mut r)).remove(0);
    let other = if o.worker == w[0] { w[1] } else { w[0] };
    let mut wrong = answer(&o, true);
    wrong.worker = other;
    assert!(matches!(
        s.handle_accept(&wrong, T0 + 1),
        Err(AcceptError::NotOffered { .. })
    ));
    // The wrong worker is told to drop it.
    assert!(
        drain(&mut s)
            .iter()
            .any(|a| matches!(a, SchedulerAction::CancelTask { worker, .. } if *worker == other))
    );
    let mut stale = answer(&o, true);
    stale.attempt = 5;
    assert!(s.handle_accept(&stale, T0 + 1).is_err());
    let acts = {
        assert_eq!(
            s.handle_accept(&answer(&o, true), T0 + 2),
            Ok(AcceptOutcome::Assigned)
        );
        drain(&mut s)
    };
    assert!(acts.iter().any(|a| matches!(
        a,
        SchedulerAction::Escrow {
            attempt: 0,
            price: 10,
            ..
        }
    )));
    assert!(events(&acts).contains(&JobEvent::Assigned {
        task: 0,
        worker: o.worker,
        attempt: 0
    }));
    assert_eq!(
        s.handle_accept(&answer(&o, true), T0 + 3),
        Ok(AcceptOutcome::Duplicate)
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_progress_report_that_overtakes_its_accept_cancels_nothing() {
    let (mut s, w, mut r) = setup(2, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    s.submit(spec, frame, T0).unwrap();
    let o = offers(&pump(&mut s, T0, &mut r)).remove(0);
    // The offered worker's first report arrives before its accept: no harm.
    assert_eq!(s.handle_progress(&progress_of(&o, 1, 0), T0 + 1), Ok(()));
    assert!(drain(&mut s).is_empty(), "nothing cancelled, nothing told");
    // Another worker's report for the task is still refused.
    let mut stranger = progress_of(&o, 1, 0);
    stranger.worker = if o.worker == w[0] { w[1] } else { w[0] };
    assert!(matches!(
        s.handle_progress(&stranger, T0 + 1),
        Err(ProgressError::Cancelled { .. })
    ));
    assert_eq!(
        s.handle_accept(&answer(&o, true), T0 + 2),
        Ok(AcceptOutcome::Assigned)
    );
    assert_eq!(s.handle_progress(&progress_of(&o, 2, 100), T0 + 3), Ok(()));
}

#[test]
fn declined_and_lapsed_offers_go_back_to_placement() {
    let (mut s, _, mut r) = setup(3, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    s.submit(spec, frame, T0).unwrap();
    let o0 = offers(&pump(&mut s, T0, &mut r)).remove(0);
    assert_eq!(
        s.handle_accept(&answer(&o0, false), T0 + 10),
        Ok(AcceptOutcome::Declined)
    );
    let o1 = offers(&pump(&mut s, T0 + 10, &mut r)).remove(0);
    assert_eq!(o1.attempt, 1);
    assert_ne!(
        o1.worker, o0.worker,
        "a worker that declined waits for its next advert"
    );
    // No answer: the offer lapses, the worker is told to drop it, attempt 2 goes elsewhere.
    let acts = pump(&mut s, o1.reserve_until_ms, &mut r);
    assert!(
        acts.iter()
            .any(|a| matches!(a, SchedulerAction::CancelTask { attempt: 1, .. }))
    );
    let o2 = offers(&acts).remove(0);
    assert_eq!(o2.attempt, 2);
    assert!(o2.worker != o0.worker && o2.worker != o1.worker);
    // A late accept of attempt 1 is refused and cancelled.
    assert!(
        s.handle_accept(&answer(&o1, true), o1.reserve_until_ms + 1)
            .is_err()
    );
    assert!(
        drain(&mut s)
            .iter()
            .any(|a| matches!(a, SchedulerAction::CancelTask { attempt: 1, .. }))
    );
    // Undeliverable: back to placement at once.
    s.handle_undeliverable(&o2.task, o2.attempt, o1.reserve_until_ms + 2);
    let acts = pump(&mut s, o1.reserve_until_ms + 2, &mut r);
    assert!(
        events(&acts)
            .iter()
            .any(|e| matches!(e, JobEvent::Queued { .. })),
        "all three saturated now"
    );
    assert_eq!(s.stats().lapses, 2);
    assert_eq!(s.stats().declines, 1);
    s.check_invariants().unwrap();
}

#[test]
fn accept_exactly_at_reserve_time_is_too_late() {
    let (mut s, _, mut r) = setup(1, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    s.submit(spec, frame, T0).unwrap();
    let o = offers(&pump(&mut s, T0, &mut r)).remove(0);
    assert_eq!(
        s.handle_accept(&answer(&o, true), o.reserve_until_ms),
        Err(AcceptError::Lapsed {
            reserve_until_ms: o.reserve_until_ms,
            now_ms: o.reserve_until_ms
        })
    );
    s.check_invariants().unwrap();
}

/// Offers, accepts, and returns the accepted offer.
fn assigned(s: &mut Scheduler, r: &mut ChaCha20Rng, now: u64) -> TaskOffer {
    let o = offers(&pump(s, now, r)).remove(0);
    assert_eq!(
        s.handle_accept(&answer(&o, true), now),
        Ok(AcceptOutcome::Assigned)
    );
    drain(s);
    o
}

#[test]
fn silent_worker_loses_the_task_and_is_excluded() {
    let (mut s, _, mut r) = setup(3, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let o0 = assigned(&mut s, &mut r, T0);
    // Progress keeps it.
    s.handle_progress(&progress_of(&o0, 1, 300), T0 + 9_000)
        .unwrap();
    assert!(offers(&pump(&mut s, T0 + 15_000, &mut r)).is_empty());
    let v = s.job_view(&id).unwrap();
    assert_eq!(v.tasks[0].status, TaskStatus::Running { permille: 300 });
    // Then silence.
    let acts = pump(&mut s, T0 + 19_000, &mut r);
    assert!(
        acts.iter()
            .any(|a| matches!(a, SchedulerAction::CancelTask { attempt: 0, .. }))
    );
    let o1 = offers(&acts).remove(0);
    assert_eq!(o1.attempt, 1);
    assert_ne!(o1.worker, o0.worker);
    // No refund yet: a late result of attempt 0 may still win.
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, SchedulerAction::Closed { .. }))
    );
    // Its progress is refused: it should stop.
    assert_eq!(
        s.handle_progress(&progress_of(&o0, 2, 500), T0 + 19_001),
        Err(ProgressError::Cancelled {
            index: 0,
            attempt: 0
        })
    );
    assert_eq!(s.stats().lost, 1);
    s.check_invariants().unwrap();
}

#[test]
fn attempts_run_out_and_every_escrow_is_refunded() {
    let (mut s, _, mut r) = setup(4, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let mut now = T0;
    let mut o = assigned(&mut s, &mut r, now);
    let mut workers = vec![o.worker];
    for _ in 0..2 {
        now += 11_000;
        let acts = pump(&mut s, now, &mut r);
        o = offers(&acts).remove(0);
        assert!(!workers.contains(&o.worker), "lost workers are excluded");
        workers.push(o.worker);
        s.handle_accept(&answer(&o, true), now).unwrap();
        drain(&mut s);
    }
    // Third attempt: the worker reports failure.
    let (worker, attempt) = (o.worker, o.attempt);
    s.handle_task_failed(&o.task, &worker, attempt, "out of memory", now)
        .unwrap();
    let acts = drain(&mut s);
    let closed: Vec<u32> = acts
        .iter()
        .filter_map(|a| match a {
            SchedulerAction::Closed { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 3, "{acts:?}");
    let ev = events(&acts);
    assert!(matches!(
        &ev[0],
        JobEvent::Failed { task: 0, reason: FailReason::Attempts { failures: 3, last: AttemptEnd::Reported { reason } }, .. } if reason == "out of memory"
    ));
    assert_eq!(ev[1], JobEvent::JobFinished { done: 0, failed: 1 });
    assert_eq!(
        s.job_view(&id).unwrap().tasks[0].status.clone(),
        TaskStatus::Failed {
            reason: FailReason::Attempts {
                failures: 3,
                last: AttemptEnd::Reported {
                    reason: "out of memory".into()
                }
            }
        }
    );
    // A late result now is counted and dropped.
    let late = TaskOffer {
        task: TaskId { job: id, index: 0 },
        scheduler: s.me(),
        worker,
        attempt,
        price: 10,
        reserve_until_ms: 0,
        deadline_ms: 0,
    };
    assert_eq!(
        s.handle_result(&result_of(&late), ResultFrames::default(), now),
        Ok(ResultOutcome::TooLate)
    );
    s.check_invariants().unwrap();
}

#[test]
fn late_result_of_a_lost_attempt_wins_and_the_rerun_is_cancelled() {
    let (mut s, _, mut r) = setup(3, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    s.submit(spec, frame, T0).unwrap();
    let o0 = assigned(&mut s, &mut r, T0);
    pump(&mut s, T0 + 10_000, &mut r);
    let o1 = {
        let v = s.job_view(&o0.task.job).unwrap();
        let t = &v.tasks[0];
        TaskOffer {
            worker: t.worker.unwrap(),
            attempt: t.attempt.unwrap(),
            ..o0.clone()
        }
    };
    assert_eq!(
        s.handle_accept(&answer(&o1, true), T0 + 10_001),
        Ok(AcceptOutcome::Assigned)
    );
    drain(&mut s);
    // The first worker's result arrives late: it wins.
    let frames = ResultFrames {
        offer: vec![1],
        result: vec![2],
        receipt: vec![3],
    };
    assert_eq!(
        s.handle_result(&result_of(&o0), frames.clone(), T0 + 12_000),
        Ok(ResultOutcome::Done)
    );
    let acts = drain(&mut s);
    assert!(acts.contains(&SchedulerAction::CancelTask {
        worker: o1.worker,
        task: o1.task,
        attempt: o1.attempt
    }));
    assert!(acts.contains(&SchedulerAction::Closed {
        task: o1.task,
        attempt: o1.attempt,
        worker: o1.worker,
        reason: CloseReason::Superseded
    }));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, SchedulerAction::Closed { attempt: 0, .. }))
    );
    assert!(events(&acts).contains(&JobEvent::Done {
        task: 0,
        worker: o0.worker,
        attempt: 0,
        frames
    }));
    // The re-run's result is a duplicate now.
    assert_eq!(
        s.handle_result(&result_of(&o1), ResultFrames::default(), T0 + 13_000),
        Ok(ResultOutcome::Duplicate)
    );
    assert_eq!(s.stats().duplicates, 1);
    assert_eq!(s.stats().late_accepted, 1);
    s.check_invariants().unwrap();
}

#[test]
fn results_from_strangers_and_failed_attempts_are_refused() {
    let (mut s, w, mut r) = setup(2, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 2);
    s.submit(spec, frame, T0).unwrap();
    let o = assigned(&mut s, &mut r, T0);
    let mut stranger = result_of(&o);
    stranger.worker = NodeId::from_bytes([99; 32]);
    assert!(matches!(
        s.handle_result(&stranger, ResultFrames::default(), T0),
        Err(ResultError::NotAssigned { .. })
    ));
    let mut wrong_task = result_of(&o);
    wrong_task.task.index = 7;
    assert!(matches!(
        s.handle_result(&wrong_task, ResultFrames::default(), T0),
        Err(ResultError::UnknownTask { index: 7, tasks: 2 })
    ));
    s.handle_task_failed(&o.task, &o.worker, o.attempt, "crash", T0 + 1)
        .unwrap();
    assert!(matches!(
        s.handle_result(&result_of(&o), ResultFrames::default(), T0 + 2),
        Err(ResultError::NotAssigned { .. })
    ));
    assert!(matches!(
        s.handle_task_failed(&o.task, &o.worker, o.attempt, "again", T0 + 3),
        Err(FailureError::NotAssigned { .. })
    ));
    let _ = w;
}

#[test]
fn cancel_by_the_creator_only() {
    let (mut s, _, mut r) = setup(2, 2);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 3);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let o = assigned(&mut s, &mut r, T0);
    assert!(matches!(
        s.cancel(&id, &NodeId::from_bytes([9; 32]), T0),
        Err(CancelError::NotCreator { .. })
    ));
    assert_eq!(
        s.cancel(&id, &c.node_id(), T0 + 1),
        Ok(Cancelled::Cancelled)
    );
    let acts = drain(&mut s);
    assert!(acts.contains(&SchedulerAction::Closed {
        task: o.task,
        attempt: o.attempt,
        worker: o.worker,
        reason: CloseReason::Cancelled
    }));
    let cancels = acts
        .iter()
        .filter(|a| matches!(a, SchedulerAction::CancelTask { .. }))
        .count();
    assert_eq!(cancels, 3, "the assigned and the two offered attempts");
    let failed = events(&acts)
        .iter()
        .filter(|e| {
            matches!(
                e,
                JobEvent::Failed {
                    reason: FailReason::Cancelled,
                    ..
                }
            )
        })
        .count();
    assert_eq!(failed, 3);
    assert_eq!(
        s.cancel(&id, &c.node_id(), T0 + 2),
        Ok(Cancelled::AlreadyFinished)
    );
    let v = s.job_view(&id).unwrap();
    assert!(v.cancelled && v.finished_at_ms.is_some() && v.failed == 3);
    assert_eq!(s.in_flight(), 0);
    s.check_invariants().unwrap();
    // Pruned after the retention.
    pump(&mut s, T0 + 1 + 600_000, &mut r);
    assert!(s.job_view(&id).is_none());
    assert_eq!(s.jobs().count(), 0);
}

#[test]
fn job_deadline_fails_what_is_left() {
    let (mut s, _, mut r) = setup(1, 1);
    let c = key(1);
    let (mut spec, _) = builtin_job(&c, 1, 2);
    spec.deadline_ms = T0 + 50_000;
    let frame: Arc<[u8]> = Arc::from(Signed::sign(&c, &spec).unwrap().into_bytes());
    s.submit(spec.clone(), frame, T0).unwrap();
    let o = assigned(&mut s, &mut r, T0);
    assert_eq!(o.deadline_ms, T0 + 50_000);
    let mut now = T0;
    while now < T0 + 50_000 {
        now += 5_000;
        s.handle_progress(&progress_of(&o, (now / 1000) as u32, 10), now)
            .ok();
        pump(&mut s, now, &mut r);
    }
    let v = s.job_view(&spec.id).unwrap();
    assert_eq!(v.failed, 2);
    assert!(
        v.tasks
            .iter()
            .all(|t| matches!(t.status, TaskStatus::Failed { .. }))
    );
    s.check_invariants().unwrap();
}

#[test]
fn reputation_decides_between_equal_workers() {
    let mut s = Scheduler::new(
        NodeId::from_bytes([200; 32]),
        SchedulerConfig {
            choices: 8,
            max_probes: 64,
            ..config()
        },
    );
    let (a, b) = (NodeId::from_bytes([1; 32]), NodeId::from_bytes([2; 32]));
    s.observe_advert(&builtin_worker(a, 1, 100), T0 + TTL, T0);
    s.observe_advert(&builtin_worker(b, 1, 100), T0 + TTL, T0);
    s.set_reputation(b, 900);
    s.set_reputation(a, 100);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 10);
    s.submit(spec, frame, T0).unwrap();
    let mut r = rng(3);
    let o = offers(&pump(&mut s, T0, &mut r));
    assert!(o.iter().filter(|o| o.worker == b).count() >= 8, "{o:?}");
}

#[test]
fn expired_and_forgotten_workers_leave_placement() {
    let (mut s, w, mut r) = setup(2, 1);
    s.forget_node(&w[0], T0);
    assert_eq!(s.nodes(), 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 2);
    s.submit(spec, frame, T0).unwrap();
    let o = offers(&pump(&mut s, T0, &mut r));
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].worker, w[1]);
    // Its advert expires: gone from the view.
    pump(&mut s, T0 + TTL, &mut r);
    assert_eq!(s.nodes(), 0);
    s.check_invariants().unwrap();
}

#[test]
fn in_flight_limit_pauses_placement() {
    let mut s = Scheduler::new(
        NodeId::from_bytes([200; 32]),
        SchedulerConfig {
            max_in_flight: 2,
            ..config()
        },
    );
    s.observe_advert(
        &builtin_worker(NodeId::from_bytes([1; 32]), 1, 10),
        T0 + TTL,
        T0,
    );
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 3);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let mut r = rng(1);
    let o = offers(&pump(&mut s, T0, &mut r));
    assert_eq!(o.len(), 2);
    assert_eq!(
        s.job_view(&id).unwrap().queued_reason,
        Some(QueuedReason::InFlightLimit { max: 2 })
    );
    s.check_invariants().unwrap();
    s.handle_accept(&answer(&o[0], true), T0 + 1).unwrap();
    s.handle_result(&result_of(&o[0]), ResultFrames::default(), T0 + 2)
        .unwrap();
    assert_eq!(offers(&pump(&mut s, T0 + 2, &mut r)).len(), 1);
    s.check_invariants().unwrap();
}

/// Two schedulers: `a` owns, `b` replicates.
#[test]
fn replica_takes_over_when_the_owner_leaves() {
    let (ka, kb) = (key(10), key(11));
    let (a_id, b_id) = (ka.node_id(), kb.node_id());
    let mut a = Scheduler::new(a_id, config());
    let mut b = Scheduler::new(b_id, config());
    let workers: Vec<NodeId> = (1..=3).map(|i| NodeId::from_bytes([i; 32])).collect();
    for s in [&mut a, &mut b] {
        s.observe_advert(&scheduler_advert(a_id, 1), T0 + TTL, T0);
        s.observe_advert(&scheduler_advert(b_id, 1), T0 + TTL, T0);
        for w in &workers {
            s.observe_advert(&builtin_worker(*w, 1, 1), T0 + 100_000, T0);
        }
    }
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 2);
    let id = spec.id;
    a.submit(spec, frame, T0).unwrap();
    let mut r = rng(1);
    let acts = pump(&mut a, T0, &mut r);
    let o = offers(&acts);
    assert_eq!(o.len(), 2);
    a.handle_accept(&answer(&o[0], true), T0 + 1).unwrap();
    let acts = pump(&mut a, T0 + 1_500, &mut r);
    let snap = acts
        .iter()
        .rev()
        .find_map(|x| match x {
            SchedulerAction::Replicate { to, snapshot } => {
                assert_eq!(*to, b_id);
                Some((**snapshot).clone())
            }
            _ => None,
        })
        .expect("replicated");
    // Through the codec, as on the wire.
    let bytes = codec::encode(&snap).unwrap();
    let snap: JobSnapshot = codec::decode(&bytes, codec::MAX_FRAME).unwrap();
    assert_eq!(snap.job(), id);
    b.handle_replica(&a_id, snap.clone(), T0 + 1_500).unwrap();
    assert_eq!(b.job_view(&id).unwrap().role, JobRole::Replica);
    assert!(drain(&mut b).is_empty(), "a replica acts on nothing");
    assert!(matches!(
        b.handle_replica(&a_id, snap.clone(), T0 + 1_600),
        Err(ReplicaError::Stale { .. })
    ));
    assert!(matches!(
        b.handle_progress(&progress_of(&o[0], 1, 10), T0 + 1_600),
        Err(ProgressError::NotOwner { .. })
    ));
    // The owner's advert expires from b's view: b takes over.
    b.observe_advert(&scheduler_advert(b_id, 2), T0 + 100_000, T0 + 20_000);
    let acts = pump(&mut b, T0 + TTL, &mut r);
    assert!(events(&acts).contains(&JobEvent::TakenOver { by: b_id }));
    assert_eq!(b.stats().takeovers, 1);
    let v = b.job_view(&id).unwrap();
    assert_eq!(v.role, JobRole::Owner);
    assert_eq!(v.owner, b_id);
    // The assigned worker keeps its task and reports to b now.
    b.handle_progress(&progress_of(&o[0], 1, 10), T0 + TTL + 1)
        .unwrap();
    // The unanswered offer lapsed at a's reserve time and is re-offered by b
    // with an attempt number a never used.
    let re = offers(&acts);
    assert_eq!(re.len(), 1);
    assert!(re[0].attempt >= ATTEMPT_GAP);
    assert_eq!(re[0].scheduler, b_id);
    b.check_invariants().unwrap();
}

/// The owner `a` goes down right after offering a task it never replicated;
/// `b` takes the job over (epoch 1). `a` comes back from its snapshot, shows
/// its claim to `b` (`resumed`), `b` refuses it and answers with its own, and
/// `a` yields: it calls off and refunds only the attempt `b` never knew, and
/// keeps `b`'s state as a replica.
#[test]
fn a_returning_owner_yields_to_the_takeover_and_settles_only_its_own_attempts() {
    let (ka, kb) = (key(10), key(11));
    let (a_id, b_id) = (ka.node_id(), kb.node_id());
    let mut a = Scheduler::new(a_id, config());
    let mut b = Scheduler::new(b_id, config());
    let workers: Vec<NodeId> = (1..=4).map(|i| NodeId::from_bytes([i; 32])).collect();
    for s in [&mut a, &mut b] {
        s.observe_advert(&scheduler_advert(a_id, 1), T0 + TTL, T0);
        s.observe_advert(&scheduler_advert(b_id, 1), T0 + TTL, T0);
        for w in &workers {
            s.observe_advert(&builtin_worker(*w, 1, 1), T0 + 1_000_000, T0);
        }
    }
    let (spec, frame) = builtin_job(&key(1), 1, 3);
    let id = spec.id;
    a.submit(spec, frame, T0).unwrap();
    let mut r = rng(1);
    let first = offers(&pump(&mut a, T0, &mut r));
    assert_eq!(first.len(), 3);
    a.handle_accept(&answer(&first[0], true), T0 + 1).unwrap();
    a.handle_accept(&answer(&first[1], true), T0 + 1).unwrap();
    let snap = pump(&mut a, T0 + 1_500, &mut r)
        .into_iter()
        .find_map(|x| match x {
            SchedulerAction::Replicate { snapshot, .. } => Some(*snapshot),
            _ => None,
        })
        .expect("replicated");
    b.handle_replica(&a_id, snap, T0 + 1_500).unwrap();
    // Task 2 lapses at a and goes to another worker: this attempt exists only
    // at a, which goes down (its snapshot) right after escrowing it.
    let again = offers(&pump(&mut a, T0 + 2_100, &mut r));
    assert_eq!(again.len(), 1, "task 2 offered again");
    let own = again[0].clone();
    a.handle_accept(&answer(&own, true), T0 + 2_200).unwrap();
    assert!(drain(&mut a).iter().any(|x| matches!(
        x,
        SchedulerAction::Escrow { attempt, .. } if *attempt == own.attempt
    )));
    let saved = a.snapshot();

    // b takes the job over when a's advert expires.
    for w in &workers {
        b.observe_advert(&builtin_worker(*w, 2, 1), T0 + 1_000_000, T0 + 20_000);
    }
    b.observe_advert(&scheduler_advert(b_id, 2), T0 + 1_000_000, T0 + 20_000);
    pump(&mut b, T0 + TTL, &mut r);
    assert_eq!(b.stats().takeovers, 1);
    assert_eq!(b.job_view(&id).unwrap().role, JobRole::Owner);

    // a comes back: it still claims the job and shows its claim to b.
    let back = T0 + 60_000;
    let mut a = Scheduler::restore(config(), saved).unwrap();
    a.resumed(back);
    assert_eq!(a.job_view(&id).unwrap().role, JobRole::Owner);
    let claim = drain(&mut a)
        .into_iter()
        .find_map(|x| match x {
            SchedulerAction::Replicate { to, snapshot } if to == b_id => Some(*snapshot),
            _ => None,
        })
        .expect("a resumed owner shows its claim to its replica");
    b.observe_advert(&scheduler_advert(a_id, 2), back + TTL, back);
    let old_claim = claim.clone();
    assert_eq!(
        b.handle_replica(&a_id, claim, back),
        Err(ReplicaError::WeOwn(id))
    );
    let answer_back = drain(&mut b)
        .into_iter()
        .find_map(|x| match x {
            SchedulerAction::Replicate { to, snapshot } if to == a_id => Some(*snapshot),
            _ => None,
        })
        .expect("the winner answers with its own state");
    // Through the codec, as on the wire.
    let answer_back: JobSnapshot =
        codec::decode(&codec::encode(&answer_back).unwrap(), codec::MAX_FRAME).unwrap();
    a.handle_replica(&b_id, answer_back.clone(), back + 1)
        .unwrap();
    assert_eq!(a.stats().yields, 1);
    let v = a.job_view(&id).unwrap();
    assert_eq!((v.role, v.owner), (JobRole::Replica, b_id));
    let acts = drain(&mut a);
    let cancelled: Vec<u32> = acts
        .iter()
        .filter_map(|x| match x {
            SchedulerAction::CancelTask { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    let refunded: Vec<(u32, CloseReason)> = acts
        .iter()
        .filter_map(|x| match x {
            SchedulerAction::Closed {
                attempt, reason, ..
            } => Some((*attempt, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        cancelled,
        vec![own.attempt],
        "only a's own attempt is called off"
    );
    assert_eq!(refunded, vec![(own.attempt, CloseReason::Yielded)]);
    assert!(
        !acts
            .iter()
            .any(|x| matches!(x, SchedulerAction::Offer { .. })),
        "a replica places nothing"
    );
    // The same state again is stale; a third scheduler holding the winner's
    // state refuses the loser's older claim.
    let rev = answer_back.core.revision;
    assert_eq!(
        a.handle_replica(&b_id, answer_back.clone(), back + 2),
        Err(ReplicaError::Stale {
            held: rev,
            got: rev
        })
    );
    let mut c = Scheduler::new(key(12).node_id(), config());
    c.observe_advert(&scheduler_advert(a_id, 3), back + TTL, back);
    c.observe_advert(&scheduler_advert(b_id, 3), back + TTL, back);
    c.handle_replica(&b_id, answer_back, back).unwrap();
    assert_eq!(
        c.handle_replica(&a_id, old_claim, back),
        Err(ReplicaError::OlderClaim { held: 1, got: 0 })
    );
    a.check_invariants().unwrap();
    b.check_invariants().unwrap();
    c.check_invariants().unwrap();
}

/// A newer claim counts only from the owner's HRW runner-up (the scheduler
/// that takes the job over when the owner goes silent): any other live
/// scheduler naming a higher epoch is refused and the owner keeps the job.
#[test]
fn only_the_runner_up_can_claim_a_job_away() {
    let ids: Vec<NodeId> = (10..13).map(|k| key(k).node_id()).collect();
    let a_id = ids[0];
    let mut a = Scheduler::new(a_id, config());
    for id in &ids {
        a.observe_advert(&scheduler_advert(*id, 1), T0 + TTL, T0);
    }
    let (spec, frame) = builtin_job(&key(1), 1, 2);
    let id = spec.id;
    a.submit(spec, frame, T0).unwrap();
    let mut own = pump(&mut a, T0 + 1, &mut rng(1))
        .into_iter()
        .find_map(|x| match x {
            SchedulerAction::Replicate { snapshot, .. } => Some(*snapshot),
            _ => None,
        })
        .expect("replicated");
    let runner_up =
        crate::hrw::owner_excluding(crate::hrw::job_key(&id), ids.iter(), &[a_id]).unwrap();
    let impostor = *ids
        .iter()
        .find(|n| **n != a_id && **n != runner_up)
        .unwrap();
    own.core.epoch = 7;
    own.core.revision += 1;
    let mut claim = own.clone();
    claim.core.owner = impostor;
    assert_eq!(
        a.handle_replica(&impostor, claim, T0 + 2),
        Err(ReplicaError::WeOwn(id))
    );
    assert!(drain(&mut a).is_empty(), "nothing sent, nothing given up");
    assert_eq!(a.job_view(&id).unwrap().role, JobRole::Owner);
    assert_eq!(a.stats().yields, 0);
    // The same claim from the runner-up wins.
    let mut claim = own;
    claim.core.owner = runner_up;
    a.handle_replica(&runner_up, claim, T0 + 3).unwrap();
    let v = a.job_view(&id).unwrap();
    assert_eq!(
        (v.role, v.owner, a.stats().yields),
        (JobRole::Replica, runner_up, 1)
    );
    a.check_invariants().unwrap();
}

/// Of two different claims to a job, exactly one wins, whichever side asks.
#[test]
fn claims_are_ordered_the_same_on_both_sides() {
    let nodes: Vec<NodeId> = (0..6).map(|i| key(100 + i).node_id()).collect();
    for j in 0..20u8 {
        let id = JobId([j; 32]);
        for a in &nodes {
            for b in &nodes {
                for (ea, eb) in [(0, 0), (0, 1), (2, 1), (3, 3)] {
                    let ab = replica::claim_beats(&id, (ea, *a), (eb, *b));
                    let ba = replica::claim_beats(&id, (eb, *b), (ea, *a));
                    if a == b && ea == eb {
                        assert!(!ab && !ba, "a claim does not beat itself");
                    } else {
                        assert!(ab != ba, "exactly one of two claims wins");
                    }
                    if ea != eb {
                        assert_eq!(ab, ea > eb, "the higher epoch wins");
                    }
                }
            }
        }
    }
}

/// Scheduler `a` (key 10) owns a 2-task job and knows scheduler `b` (key
/// 11): the job, and the snapshot `a` replicates to `b` at `T0 + 1`.
fn replicated_job(r: &mut ChaCha20Rng) -> (JobSpec, JobSnapshot) {
    let (a_id, b_id) = (key(10).node_id(), key(11).node_id());
    let mut a = Scheduler::new(a_id, config());
    a.observe_advert(&scheduler_advert(b_id, 1), T0 + TTL, T0);
    let (spec, frame) = builtin_job(&key(1), 1, 2);
    a.submit(spec.clone(), frame, T0).unwrap();
    let snap = pump(&mut a, T0 + 1, r)
        .into_iter()
        .find_map(|x| match x {
            SchedulerAction::Replicate { snapshot, .. } => Some(*snapshot),
            _ => None,
        })
        .unwrap();
    (spec, snap)
}

#[test]
fn replica_refusals() {
    let (a_id, b_id) = (key(10).node_id(), key(11).node_id());
    let (spec, snap) = replicated_job(&mut rng(1));
    let mut b = Scheduler::new(b_id, config());
    // Not (yet) a live scheduler in b's view.
    assert_eq!(
        b.handle_replica(&a_id, snap.clone(), T0),
        Err(ReplicaError::NotAScheduler(a_id))
    );
    b.observe_advert(&scheduler_advert(a_id, 1), T0 + TTL, T0);
    // Sent by someone else than the owner it names.
    assert!(matches!(
        b.handle_replica(&NodeId::from_bytes([5; 32]), snap.clone(), T0),
        Err(ReplicaError::NotFromOwner { .. })
    ));
    // Tampered: a task too many.
    let mut bad = snap.clone();
    bad.core.tasks.push(bad.core.tasks[0].clone());
    assert!(matches!(
        b.handle_replica(&a_id, bad, T0),
        Err(ReplicaError::Invalid(_))
    ));
    // Tampered: a live attempt for a queued task.
    let mut bad = snap.clone();
    bad.core.done = 1;
    assert!(matches!(
        b.handle_replica(&a_id, bad, T0),
        Err(ReplicaError::Invalid(_))
    ));
    // A frame that does not verify.
    let mut bad = snap.clone();
    let mut f = bad.frame.to_vec();
    let last = f.len() - 1;
    f[last] ^= 1;
    bad.frame = Arc::from(f);
    assert!(matches!(
        b.handle_replica(&a_id, bad, T0),
        Err(ReplicaError::Signed(_))
    ));
    // Another job's spec.
    let mut bad = snap.clone();
    bad.job = JobId([0; 32]);
    assert!(matches!(
        b.handle_replica(&a_id, bad, T0),
        Err(ReplicaError::Invalid(_))
    ));
    b.handle_replica(&a_id, snap.clone(), T0).unwrap();
    b.take_over(&spec.id, T0).unwrap();
    assert_eq!(
        b.take_over(&spec.id, T0),
        Err(TakeOverError::AlreadyOwner(spec.id))
    );
    assert!(matches!(
        b.handle_replica(&a_id, snap, T0),
        Err(ReplicaError::WeOwn(_))
    ));
}

/// A scheduler restored after a long stop, told so with `resumed`, keeps the
/// schedulers it knew for the rest of their lifetime (no takeover of a
/// replicated job whose owner is alive); one that is not told sees them all
/// expired at once and takes over. A real silence after the restart still
/// leads to the takeover.
#[test]
fn a_restarted_scheduler_judges_owners_on_their_silence_after_the_restart() {
    let (a_id, b_id) = (key(10).node_id(), key(11).node_id());
    let mut r = rng(1);
    let (_, snap) = replicated_job(&mut r);
    let mut b = Scheduler::new(b_id, config());
    b.observe_advert(&scheduler_advert(a_id, 1), T0 + 2 + TTL, T0 + 2);
    b.handle_replica(&a_id, snap, T0 + 2).unwrap();
    let saved = b.snapshot();
    let back = T0 + 2 + 10 * TTL;

    let mut told = Scheduler::restore(config(), saved.clone()).unwrap();
    told.resumed(back);
    pump(&mut told, back + 1, &mut r);
    assert_eq!(told.stats().takeovers, 0, "the owner is not judged yet");
    told.check_invariants().unwrap();
    // The owner advertises after the restart: no takeover while it lives,
    // though the lifetime it had left at the snapshot is over.
    told.observe_advert(&scheduler_advert(a_id, 2), back + 5 + TTL, back + 5);
    pump(&mut told, back + TTL + 4, &mut r);
    assert_eq!(told.stats().takeovers, 0);
    // Silent for a whole lifetime after that: gone, the replica takes over.
    pump(&mut told, back + 5 + TTL, &mut r);
    assert_eq!(told.stats().takeovers, 1);

    let mut untold = Scheduler::restore(config(), saved.clone()).unwrap();
    pump(&mut untold, back + 1, &mut r);
    assert_eq!(untold.stats().takeovers, 1, "every entry had expired");

    // Silent from the restart on: gone once its remaining lifetime is over.
    let mut silent = Scheduler::restore(config(), saved).unwrap();
    silent.resumed(back);
    pump(&mut silent, back + TTL - 1, &mut r);
    assert_eq!(silent.stats().takeovers, 0);
    pump(&mut silent, back + TTL + 1, &mut r);
    assert_eq!(silent.stats().takeovers, 1);
}

#[test]
fn snapshot_round_trips_through_the_codec() {
    let (mut s, w, mut r) = setup(3, 2);
    s.set_reputation(w[0], 700);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 4);
    s.submit(spec, frame, T0).unwrap();
    let o = offers(&pump(&mut s, T0, &mut r));
    s.handle_accept(&answer(&o[0], true), T0 + 1).unwrap();
    drain(&mut s);
    let snap = s.snapshot();
    let core = codec::encode(&snap.core).unwrap();
    let nodes = codec::encode(&snap.nodes).unwrap();
    let jobs: Vec<Vec<u8>> = snap
        .jobs
        .iter()
        .map(|j| codec::encode(j).unwrap())
        .collect();
    let back = SchedulerSnapshot {
        version: snap.version,
        me: snap.me,
        core: codec::decode(&core, codec::MAX_FRAME).unwrap(),
        nodes: codec::decode(&nodes, codec::MAX_FRAME).unwrap(),
        jobs: jobs
            .iter()
            .map(|j| codec::decode(j, codec::MAX_FRAME).unwrap())
            .collect(),
    };
    assert_eq!(back, snap);
    let mut t = Scheduler::restore(config(), back).unwrap();
    t.check_invariants().unwrap();
    assert_eq!(t.snapshot(), snap);
    let (mut r1, mut r2) = (rng(5), rng(5));
    assert_eq!(
        pump(&mut s, T0 + 5_000, &mut r1),
        pump(&mut t, T0 + 5_000, &mut r2)
    );

    let mut bad = s.snapshot();
    bad.version = 9;
    assert!(matches!(
        Scheduler::restore(config(), bad),
        Err(RestoreError::Version { .. })
    ));
    let mut bad = s.snapshot();
    bad.core.buckets[0].push(77);
    assert!(matches!(
        Scheduler::restore(config(), bad),
        Err(RestoreError::Invalid(_))
    ));
    let mut bad = s.snapshot();
    bad.nodes.push(bad.nodes[0].clone());
    assert!(Scheduler::restore(config(), bad).is_err());
}

#[test]
fn progress_events_are_throttled_and_stale_reports_ignored() {
    let (mut s, _, mut r) = setup(1, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    s.submit(spec, frame, T0).unwrap();
    let o = assigned(&mut s, &mut r, T0);
    let mut told = vec![];
    for (seq, p) in [
        (1, 10),
        (2, 50),
        (3, 120),
        (4, 150),
        (5, 260),
        (5, 900),
        (6, 1000),
    ] {
        s.handle_progress(&progress_of(&o, seq, p), T0 + 100)
            .unwrap();
        for e in events(&drain(&mut s)) {
            if let JobEvent::Progress { permille, .. } = e {
                told.push(permille);
            }
        }
    }
    assert_eq!(told, vec![120, 260, 1000]);
}

/// Found by `props`: the lost attempt's result arrives while its task waits
/// in the queue (its only worker excluded); the task must leave the queue.
#[test]
fn late_result_while_the_task_waits_in_the_queue() {
    let (mut s, _, mut r) = setup(1, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let o = assigned(&mut s, &mut r, T0);
    let acts = pump(&mut s, T0 + 10_000, &mut r);
    assert!(offers(&acts).is_empty(), "the only worker is excluded");
    assert_eq!(s.job_view(&id).unwrap().queued, 1);
    assert_eq!(
        s.handle_result(&result_of(&o), ResultFrames::default(), T0 + 10_500),
        Ok(ResultOutcome::Done)
    );
    let v = s.job_view(&id).unwrap();
    assert_eq!((v.queued, v.done), (0, 1));
    assert!(v.finished_at_ms.is_some());
    s.check_invariants().unwrap();
    assert!(offers(&pump(&mut s, T0 + 20_000, &mut r)).is_empty());
}

/// Two schedulers hold a copy (one stale, after the ranking changed): when
/// the owner goes, only the HRW best of them takes the job over.
#[test]
fn only_the_best_ranked_replica_takes_over() {
    let ids: Vec<NodeId> = (10..13).map(|i| key(i).node_id()).collect();
    let (a_id, others) = (ids[0], &ids[1..]);
    let mut a = Scheduler::new(a_id, config());
    let mut reps: Vec<Scheduler> = others
        .iter()
        .map(|id| Scheduler::new(*id, config()))
        .collect();
    for s in std::iter::once(&mut a).chain(reps.iter_mut()) {
        for id in &ids {
            s.observe_advert(&scheduler_advert(*id, 1), T0 + TTL, T0);
        }
    }
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 2);
    let id = spec.id;
    a.submit(spec, frame, T0).unwrap();
    let snap = pump(&mut a, T0, &mut rng(1))
        .into_iter()
        .find_map(|x| match x {
            SchedulerAction::Replicate { snapshot, .. } => Some(*snapshot),
            _ => None,
        })
        .unwrap();
    for r in &mut reps {
        r.handle_replica(&a_id, snap.clone(), T0).unwrap();
        r.forget_node(&a_id, T0 + 1);
    }
    let best = crate::hrw::owner_excluding(&id.0, &ids, &[a_id]).unwrap();
    for r in &reps {
        let role = r.job_view(&id).unwrap().role;
        assert_eq!(role == JobRole::Owner, r.me() == best, "{:?}", r.me());
    }
}

/// The scheduler and real worker machines, wired by a tiny loop: every offer
/// is re-checked by the worker with the same rule and accepted, heartbeats
/// keep the tasks, and the job finishes with every task done once.
#[test]
fn scheduler_and_workers_run_a_job_end_to_end() {
    use crate::worker::{Worker, WorkerAction, WorkerConfig};
    let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), config());
    let blender = [(RuntimeKind::Blender, "4.2"), (RuntimeKind::Builtin, "1")];
    let mut workers: Vec<(Worker, CapacityAdvert)> = (1..=4u8)
        .map(|i| {
            let id = NodeId::from_bytes([i; 32]);
            let mut a = worker_advert(id, 1, &blender, 2);
            if i == 4 {
                a.runtimes.truncate(1);
                a.runtimes[0].version = "3.4".into(); // never qualifies
            }
            let w = Worker::new(
                id,
                WorkerConfig {
                    max_tasks: 2,
                    heartbeat_interval_ms: 3_000,
                    remembered_answers: 64,
                },
            );
            (w, a)
        })
        .collect();
    for (_, a) in &workers {
        s.observe_advert(a, u64::MAX, T0);
    }
    let c = key(1);
    let (spec, frame) = job(
        &c,
        1,
        12,
        JobKind::Blender {
            engine: crate::wire::BlenderEngine::Eevee,
        },
        Requirements {
            min_runtime_version: Some("4.0".into()),
            ..Default::default()
        },
    );
    let id = spec.id;
    s.submit(spec.clone(), frame, T0).unwrap();
    let mut r = rng(9);
    let mut now = T0;
    let mut started: BTreeMap<TaskId, u64> = BTreeMap::new();
    let mut finished = false;
    while !finished && now < T0 + 600_000 {
        for a in pump(&mut s, now, &mut r) {
            match a {
                SchedulerAction::Offer { to, offer, .. } => {
                    let (w, adv) = workers.iter_mut().find(|(w, _)| w.me() == to).unwrap();
                    let ans = w.offer(&offer, &spec, adv, now);
                    assert!(
                        ans.accepted || ans.reason.contains("slots are busy"),
                        "{}",
                        ans.reason
                    );
                    let _ = s.handle_accept(&ans, now);
                    if ans.accepted {
                        w.running(&offer.task, now).unwrap();
                        started.insert(offer.task, now);
                    }
                }
                SchedulerAction::Notify {
                    event: JobEvent::JobFinished { done, failed },
                    ..
                } => {
                    assert_eq!((done, failed), (12, 0));
                    finished = true;
                }
                SchedulerAction::CancelTask { .. } => panic!("nothing should be cancelled: {a:?}"),
                _ => {}
            }
        }
        now += 1_000;
        for (w, _) in workers.iter_mut() {
            w.handle_timeout(now);
            while let Some(a) = w.poll_action() {
                if let WorkerAction::Progress { progress, .. } = a {
                    s.handle_progress(&progress, now).unwrap();
                }
            }
            // Each task takes 20 s.
            let due: Vec<(TaskId, u32)> = w
                .slots()
                .filter(|t| started.get(&t.task).is_some_and(|at| now >= at + 20_000))
                .map(|t| (t.task, t.attempt))
                .collect();
            for (task, attempt) in due {
                w.finished(&task, now).unwrap();
                let o = TaskOffer {
                    task,
                    scheduler: s.me(),
                    worker: w.me(),
                    attempt,
                    price: 10,
                    reserve_until_ms: 0,
                    deadline_ms: 0,
                };
                assert_eq!(
                    s.handle_result(&result_of(&o), ResultFrames::default(), now),
                    Ok(ResultOutcome::Done)
                );
            }
        }
    }
    assert!(finished);
    let st = s.stats();
    assert_eq!((st.lost, st.lapses, st.done), (0, 0, 12));
    assert!(
        s.job_view(&id)
            .unwrap()
            .tasks
            .iter()
            .all(|t| t.worker != Some(NodeId::from_bytes([4; 32])))
    );
}

#[test]
fn an_unfetchable_result_reopens_its_task_elsewhere() {
    let (mut s, _, mut r) = setup(3, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let o0 = assigned(&mut s, &mut r, T0);
    assert_eq!(
        s.handle_result(&result_of(&o0), ResultFrames::default(), T0 + 1_000),
        Ok(ResultOutcome::Done)
    );
    let ev = events(&drain(&mut s));
    assert!(matches!(
        ev.last(),
        Some(JobEvent::JobFinished { done: 1, failed: 0 })
    ));
    let task = TaskId { job: id, index: 0 };
    // Only the creator reports it, and only for the attempt that is done.
    assert!(matches!(
        s.handle_unfetchable(&o0.worker, &task, 0, T0 + 2_000),
        Err(UnfetchableError::NotCreator { .. })
    ));
    assert_eq!(
        s.handle_unfetchable(&c.node_id(), &task, 1, T0 + 2_000),
        Err(UnfetchableError::NotDone {
            index: 0,
            attempt: 1
        })
    );
    s.handle_unfetchable(&c.node_id(), &task, 0, T0 + 2_000)
        .unwrap();
    let acts = pump(&mut s, T0 + 2_000, &mut r);
    // Refunded at once, as unfetchable; a lost outcome for its worker.
    assert!(acts.iter().any(|a| matches!(
        a,
        SchedulerAction::Closed { attempt: 0, reason: CloseReason::Unfetchable, worker, .. }
            if *worker == o0.worker
    )));
    assert!(acts.iter().any(|a| matches!(
        a,
        SchedulerAction::Outcome {
            attempt: 0,
            outcome: crate::reputation::Outcome::Lost,
            ..
        }
    )));
    // And offered again, to another worker.
    let o1 = offers(&acts).remove(0);
    assert_eq!(o1.attempt, 1);
    assert_ne!(o1.worker, o0.worker);
    // A second report of the same attempt changes nothing.
    assert!(
        s.handle_unfetchable(&c.node_id(), &task, 0, T0 + 2_001)
            .is_err()
    );
    // The re-run finishes the job again.
    s.handle_accept(&answer(&o1, true), T0 + 3_000).unwrap();
    drain(&mut s);
    assert_eq!(
        s.handle_result(&result_of(&o1), ResultFrames::default(), T0 + 4_000),
        Ok(ResultOutcome::Done)
    );
    let ev = events(&drain(&mut s));
    assert!(matches!(
        ev.last(),
        Some(JobEvent::JobFinished { done: 1, failed: 0 })
    ));
    assert_eq!(s.stats().unfetchable, 1);
    s.check_invariants().unwrap();
}

#[test]
fn unfetchable_results_use_up_the_attempts() {
    let (mut s, _, mut r) = setup(4, 1);
    let c = key(1);
    let (spec, frame) = builtin_job(&c, 1, 1);
    let id = spec.id;
    s.submit(spec, frame, T0).unwrap();
    let task = TaskId { job: id, index: 0 };
    let mut now = T0;
    let mut o = assigned(&mut s, &mut r, now);
    for round in 0..3u32 {
        now += 1_000;
        s.handle_result(&result_of(&o), ResultFrames::default(), now)
            .unwrap();
        drain(&mut s);
        s.handle_unfetchable(&c.node_id(), &task, o.attempt, now)
            .unwrap();
        let acts = pump(&mut s, now, &mut r);
        if round == 2 {
            let ev = events(&acts);
            assert!(matches!(
                &ev[0],
                JobEvent::Failed {
                    task: 0,
                    reason: FailReason::Attempts {
                        failures: 3,
                        last: AttemptEnd::Unfetchable
                    },
                    ..
                }
            ));
            assert!(offers(&acts).is_empty());
        } else {
            o = offers(&acts).remove(0);
            s.handle_accept(&answer(&o, true), now).unwrap();
            drain(&mut s);
        }
    }
    s.check_invariants().unwrap();
}

/// One step of an owner in [`takeover_and_return_settle_every_escrow_once`].
#[derive(Debug, Clone)]
enum OwnerOp {
    /// Time passes (timers fire; replications are delivered to the peer).
    Advance(u16),
    /// The worker of the i-th open offer accepts.
    Accept(u8),
    /// The worker of the i-th accepted attempt returns its result.
    Result(u8),
}

fn owner_op() -> impl proptest::strategy::Strategy<Value = OwnerOp> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (1u16..4_000).prop_map(OwnerOp::Advance),
        4 => any::<u8>().prop_map(OwnerOp::Accept),
        2 => any::<u8>().prop_map(OwnerOp::Result),
    ]
}

/// Escrows and refunds seen, by (task, attempt).
#[derive(Default)]
struct Books {
    escrowed: BTreeSet<(u32, u32)>,
    closed: BTreeMap<(u32, u32), u32>,
    won: BTreeSet<(u32, u32)>,
    /// Escrowed by the first owner since its last replication `b` applied.
    unsynced: BTreeSet<(u32, u32)>,
}

/// Drives `s` through `ops` from `now`, delivering its replications to
/// `peer` (when given) and recording escrows, refunds and winners.
fn drive(
    s: &mut Scheduler,
    mut peer: Option<&mut Scheduler>,
    ops: &[OwnerOp],
    now: &mut u64,
    books: &mut Books,
    track_unsynced: bool,
    r: &mut ChaCha20Rng,
) {
    let mut open: Vec<TaskOffer> = Vec::new();
    let mut assigned: Vec<TaskOffer> = Vec::new();
    let me = s.me();
    let absorb = |acts: Vec<SchedulerAction>,
                  open: &mut Vec<TaskOffer>,
                  books: &mut Books,
                  peer: &mut Option<&mut Scheduler>,
                  now: u64| {
        for a in acts {
            match a {
                SchedulerAction::Offer { offer, .. } => open.push(offer),
                SchedulerAction::Escrow { task, attempt, .. } => {
                    books.escrowed.insert((task.index, attempt));
                    if track_unsynced {
                        books.unsynced.insert((task.index, attempt));
                    }
                }
                SchedulerAction::Closed { task, attempt, .. } => {
                    *books.closed.entry((task.index, attempt)).or_default() += 1;
                }
                SchedulerAction::Replicate { snapshot, .. } => {
                    if let Some(p) = peer.as_deref_mut()
                        && p.handle_replica(&me, *snapshot, now).is_ok()
                        && track_unsynced
                    {
                        books.unsynced.clear();
                    }
                }
                _ => {}
            }
        }
    };
    let acts = pump(s, *now, r);
    absorb(acts, &mut open, books, &mut peer, *now);
    for op in ops {
        match op {
            OwnerOp::Advance(ms) => {
                *now += u64::from(*ms);
                let acts = pump(s, *now, r);
                absorb(acts, &mut open, books, &mut peer, *now);
            }
            OwnerOp::Accept(i) if !open.is_empty() => {
                let o = open.remove(usize::from(*i) % open.len());
                if s.handle_accept(&answer(&o, true), *now).is_ok() {
                    assigned.push(o);
                }
                let acts = drain(s);
                absorb(acts, &mut open, books, &mut peer, *now);
            }
            OwnerOp::Result(i) if !assigned.is_empty() => {
                let o = assigned.remove(usize::from(*i) % assigned.len());
                if let Ok(ResultOutcome::Done) =
                    s.handle_result(&result_of(&o), ResultFrames::default(), *now)
                {
                    books.won.insert((o.task.index, o.attempt));
                }
                let acts = drain(s);
                absorb(acts, &mut open, books, &mut peer, *now);
            }
            _ => {}
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Owner `a` runs a job and replicates it to `b`, then stops; `b` takes
    /// the job over and runs it; `a` comes back from its snapshot and
    /// yields. What the yield refunds is exactly what only `a` knows: every
    /// escrow `a` made after the last replication `b` applied, unless it won
    /// or `a` refunded it already, and nothing `b` refunded or still holds;
    /// `a` ends a replica with nothing in flight. (What `a` settled after its
    /// last replication, `b` may settle again: the failover gap of
    /// `docs/jobs.md`, not the yield's.)
    #[test]
    fn takeover_and_return_settle_every_escrow_once(
        seed in proptest::prelude::any::<u64>(),
        tasks in 1u32..6,
        before in proptest::collection::vec(owner_op(), 0..40),
        after in proptest::collection::vec(owner_op(), 0..40),
    ) {
        let (a_id, b_id) = (key(10).node_id(), key(11).node_id());
        let mut a = Scheduler::new(a_id, config());
        let mut b = Scheduler::new(b_id, config());
        let workers: Vec<NodeId> = (1..=4).map(|i| NodeId::from_bytes([i; 32])).collect();
        let far = T0 + 10_000_000;
        for s in [&mut a, &mut b] {
            s.observe_advert(&scheduler_advert(a_id, 1), T0 + TTL, T0);
            s.observe_advert(&scheduler_advert(b_id, 1), far, T0);
            for w in &workers {
                s.observe_advert(&builtin_worker(*w, 1, 2), far, T0);
            }
        }
        let (spec, frame) = builtin_job(&key(1), 1, tasks);
        let id = spec.id;
        a.submit(spec, frame, T0).unwrap();
        let mut r = rng(seed);
        let mut books = Books::default();
        let mut now = T0;
        drive(&mut a, Some(&mut b), &before, &mut now, &mut books, true, &mut r);
        let saved = a.snapshot();
        let unsynced = books.unsynced.clone();

        // a is gone: b takes over (if it holds the job) and runs it.
        now = now.max(T0 + TTL) + 1;
        drive(&mut b, None, &after, &mut now, &mut books, false, &mut r);

        // a comes back and shows its claim; b answers; a yields.
        let mut a = Scheduler::restore(config(), saved).unwrap();
        a.resumed(now);
        b.observe_advert(&scheduler_advert(a_id, 2), far, now);
        let b_owns = b.job_view(&id).is_some_and(|v| v.role == JobRole::Owner);
        // Its timers run before any answer comes: it places nothing and
        // calls off nothing it had accepted (the taker may have adopted it).
        let assigned_before: BTreeSet<(u32, u32)> = a
            .jobs
            .get(&id)
            .map(|j| {
                j.core
                    .live
                    .keys()
                    .filter_map(|l| {
                        j.task(*l)
                            .filter(|t| t.phase == job::Phase::Assigned)
                            .map(|t| (j.task_of(*l), t.attempt))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let claims: Vec<SchedulerAction> = pump(&mut a, now, &mut r);
        for c in &claims {
            proptest::prop_assert!(
                !matches!(c, SchedulerAction::Offer { .. } | SchedulerAction::Closed { .. }),
                "a resumed owner acted before its claim was answered: {:?}", c
            );
            if let SchedulerAction::CancelTask { task, attempt, .. } = c {
                proptest::prop_assert!(
                    !assigned_before.contains(&(task.index, *attempt)),
                    "a resumed owner called off an accepted attempt"
                );
            }
        }
        for c in claims {
            if let SchedulerAction::Replicate { to, snapshot } = c {
                proptest::prop_assert_eq!(to, b_id);
                let refused = b.handle_replica(&a_id, *snapshot, now);
                if b_owns {
                    proptest::prop_assert_eq!(refused, Err(ReplicaError::WeOwn(id)));
                }
            }
        }
        for x in drain(&mut b) {
            if let SchedulerAction::Replicate { to, snapshot } = x {
                proptest::prop_assert_eq!(to, a_id);
                // One answer per claim a showed; the second is not newer.
                let got = a.handle_replica(&b_id, *snapshot, now);
                proptest::prop_assert!(
                    matches!(got, Ok(()) | Err(ReplicaError::Stale { .. })),
                    "{:?}", got
                );
            }
        }
        let mut yielded: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        for x in drain(&mut a) {
            if let SchedulerAction::Closed { task, attempt, .. } = x {
                *yielded.entry((task.index, attempt)).or_default() += 1;
            }
        }
        // What the yield refunds is a's alone: escrowed by a, never won,
        // refunded once, by nobody else, and not the winner's to settle.
        let b_lists: BTreeSet<(u32, u32)> = b
            .jobs
            .get(&id)
            .map(|j| replica::attempts_listed(j).into_iter().map(|(t, a, _)| (t, a)).collect())
            .unwrap_or_default();
        for (k, n) in &yielded {
            proptest::prop_assert!(*n == 1, "escrow {:?} refunded {} times at the yield", k, n);
            proptest::prop_assert!(books.escrowed.contains(k), "refund of {:?} never escrowed", k);
            proptest::prop_assert!(!books.won.contains(k), "winner {:?} refunded", k);
            proptest::prop_assert!(!books.closed.contains_key(k), "{:?} was refunded before", k);
            proptest::prop_assert!(!b_lists.contains(k), "{:?} is the winner's to settle", k);
        }
        if b_owns {
            prop_assert_yielded(&a, &id, b_id)?;
            // And it refunds everything a escrowed that b never saw.
            for k in unsynced.iter().filter(|k| !books.won.contains(k) && !books.closed.contains_key(k)) {
                proptest::prop_assert!(yielded.contains_key(k), "a's own escrow {:?} never refunded", k);
            }
        }
        a.check_invariants().map_err(proptest::test_runner::TestCaseError::fail)?;
        b.check_invariants().map_err(proptest::test_runner::TestCaseError::fail)?;
    }
}

fn prop_assert_yielded(
    a: &Scheduler,
    id: &JobId,
    owner: NodeId,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let v = a.job_view(id).expect("a keeps the job");
    proptest::prop_assert_eq!((v.role, v.owner), (JobRole::Replica, owner));
    proptest::prop_assert_eq!(a.in_flight(), 0);
    proptest::prop_assert_eq!(a.stats().yields, 1);
    Ok(())
}
