use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::wire::BlenderEngine;

#[test]
fn defaults_per_runtime_are_valid_and_as_documented() {
    let q = default_policy(&JobKind::Builtin);
    assert_eq!(
        q,
        VerificationPolicy::Quorum {
            sample_permille: 100,
            k: 2
        }
    );
    assert_eq!(
        default_policy(&JobKind::Process {
            argv: vec!["x".into()],
            deterministic: true
        }),
        q
    );
    assert!(matches!(
        default_policy(&JobKind::Blender {
            engine: BlenderEngine::Cycles
        }),
        VerificationPolicy::SpotCheck {
            crop_permille: 250,
            ..
        }
    ));
    assert!(matches!(
        default_policy(&JobKind::Process {
            argv: vec!["x".into()],
            deterministic: false
        }),
        VerificationPolicy::SpotCheck {
            crop_permille: 1000,
            ..
        }
    ));
    for kind in [
        JobKind::Builtin,
        JobKind::Blender {
            engine: BlenderEngine::Eevee,
        },
        JobKind::Process {
            argv: vec!["x".into()],
            deterministic: false,
        },
    ] {
        check_policy(&default_policy(&kind)).unwrap();
    }
}

#[test]
fn out_of_bounds_policies_are_refused_with_the_reason() {
    let bad = [
        VerificationPolicy::Quorum {
            sample_permille: 1001,
            k: 2,
        },
        VerificationPolicy::Quorum {
            sample_permille: 100,
            k: 1,
        },
        VerificationPolicy::Quorum {
            sample_permille: 100,
            k: MAX_QUORUM_K + 1,
        },
        VerificationPolicy::SpotCheck {
            sample_permille: 100,
            crop_permille: 0,
            min_similarity_milli: 900,
        },
        VerificationPolicy::SpotCheck {
            sample_permille: 100,
            crop_permille: 1001,
            min_similarity_milli: 900,
        },
        VerificationPolicy::SpotCheck {
            sample_permille: 100,
            crop_permille: 100,
            min_similarity_milli: 1001,
        },
    ];
    for p in bad {
        let e = check_policy(&p).unwrap_err();
        assert!(e.to_string().contains("expected"), "{e}");
    }
    check_policy(&VerificationPolicy::None).unwrap();
}

#[test]
fn sampling_extremes_and_rate() {
    let mut r = ChaCha20Rng::seed_from_u64(1);
    assert!((0..1000).all(|_| draw_sampled(1000, &mut r)));
    assert!((0..1000).all(|_| !draw_sampled(0, &mut r)));
    let hits = (0..100_000).filter(|_| draw_sampled(100, &mut r)).count();
    // 10% ± 5σ (σ ≈ 95).
    assert!((9_500..=10_500).contains(&hits), "{hits}");
}

#[test]
fn crop_sides() {
    assert_eq!(crop_side(1920, 250), 480);
    assert_eq!(crop_side(100, 250), 32, "at least MIN_CROP_SIDE");
    assert_eq!(crop_side(20, 250), 20, "a small region is cropped whole");
    assert_eq!(crop_side(1001, 1), 32);
    assert_eq!(crop_side(999, 1000), 999);
    assert_eq!(crop_side(7, 1000), 7);
}

#[test]
fn quorum_tallies() {
    let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    assert_eq!(quorum_needed(2), 2);
    assert_eq!(quorum_needed(3), 2);
    assert_eq!(quorum_needed(5), 3);
    assert_eq!(quorum_max_lines(2), 5);
    // k = 2: agreement of both.
    assert_eq!(quorum_tally(2, &[a], 1, 2), QuorumTally::Wait);
    assert_eq!(
        quorum_tally(2, &[a, a], 0, 2),
        QuorumTally::Agreed { hash: a }
    );
    // Disagreement adds a line; the third decides.
    assert_eq!(quorum_tally(2, &[a, b], 0, 2), QuorumTally::AddLine);
    assert_eq!(quorum_tally(2, &[a, b], 1, 3), QuorumTally::Wait);
    assert_eq!(
        quorum_tally(2, &[a, b, b], 0, 3),
        QuorumTally::Agreed { hash: b }
    );
    assert_eq!(quorum_tally(2, &[a, b, c], 0, 3), QuorumTally::AddLine);
    // Plurality: liars with distinct hashes do not add up against `a`.
    assert_eq!(
        quorum_tally(2, &[a, b, c, a], 0, 4),
        QuorumTally::Agreed { hash: a }
    );
    assert_eq!(
        quorum_tally(2, &[b, a, c, [4; 32], a], 0, 5),
        QuorumTally::Agreed { hash: a }
    );
    // ... but a hash that an outstanding line could still tie waits.
    assert_eq!(quorum_tally(2, &[a, b, b, a], 1, 5), QuorumTally::Wait);
    assert_eq!(quorum_tally(3, &[a, a, b], 1, 4), QuorumTally::Wait);
    assert_eq!(quorum_tally(5, &[a, a, a, b, b], 1, 6), QuorumTally::Wait);
    assert_eq!(
        quorum_tally(2, &[a, b, c, a, b], 0, 5),
        QuorumTally::Unresolved
    );
    // k = 3: two agreeing stand as soon as the third cannot overturn them.
    assert_eq!(
        quorum_tally(3, &[a, a], 1, 3),
        QuorumTally::Agreed { hash: a }
    );
    assert_eq!(quorum_tally(3, &[a, b], 1, 3), QuorumTally::Wait);
}

#[test]
fn spot_tallies() {
    use SpotVote::{Compared as C, Pending as P, Unusable as U};
    let t = 900;
    let x = |a, b, s| Cross {
        a,
        b,
        similarity: s,
    };
    assert_eq!(spot_tally(t, &[], &[], 1, 1), SpotTally::Wait);
    assert_eq!(spot_tally(t, &[P], &[], 0, 1), SpotTally::Wait);
    assert_eq!(spot_tally(t, &[C(950)], &[], 0, 1), SpotTally::Pass);
    assert_eq!(
        spot_tally(t, &[C(900)], &[], 0, 1),
        SpotTally::Pass,
        "the threshold passes"
    );
    // One failing check is not enough: the checker may be the liar.
    assert_eq!(spot_tally(t, &[C(100)], &[], 0, 1), SpotTally::AddLine);
    assert_eq!(spot_tally(t, &[C(100)], &[], 1, 2), SpotTally::Wait);
    // Two dissenters: compared with each other first.
    assert_eq!(
        spot_tally(t, &[C(100), C(200)], &[], 0, 2),
        SpotTally::CrossCheck { a: 0, b: 1 }
    );
    assert_eq!(
        spot_tally(t, &[C(100), C(200)], &[x(0, 1, None)], 0, 2),
        SpotTally::Wait
    );
    assert_eq!(
        spot_tally(t, &[C(100), C(200)], &[x(0, 1, Some(950))], 0, 2),
        SpotTally::Fail
    );
    // Dissenters that disagree with each other are set aside.
    let apart = [x(0, 1, Some(300))];
    assert_eq!(
        spot_tally(t, &[C(100), C(200)], &apart, 0, 2),
        SpotTally::AddLine
    );
    assert_eq!(
        spot_tally(t, &[C(100), C(200), C(990)], &apart, 0, 3),
        SpotTally::Pass
    );
    assert_eq!(
        spot_tally(t, &[C(100), C(990)], &[], 0, 2),
        SpotTally::AddLine
    );
    assert_eq!(
        spot_tally(t, &[C(100), C(990), C(980)], &[], 0, 3),
        SpotTally::Pass
    );
    assert_eq!(
        spot_tally(t, &[C(100), C(990), C(10)], &[], 0, 3),
        SpotTally::CrossCheck { a: 0, b: 2 }
    );
    // Unusable checks use lines up without a comparison.
    assert_eq!(
        spot_tally(t, &[U, U, U, U], &[], 0, MAX_SPOT_LINES),
        SpotTally::Unresolved
    );
    assert_eq!(
        spot_tally(t, &[C(100)], &[], 0, MAX_SPOT_LINES),
        SpotTally::Unresolved
    );
}

proptest! {
    /// A crop lies inside its region, has the documented sides, and draws
    /// exactly two u32 (the stream after it does not depend on the region).
    #[test]
    fn crops_lie_inside_the_region(
        x in 0u32..5000, y in 0u32..5000, w in 1u32..5000, h in 1u32..5000,
        permille in 1u16..=1000, seed in any::<u64>(),
    ) {
        let region = Rect { x, y, w, h };
        let mut r1 = ChaCha20Rng::seed_from_u64(seed);
        let crop = pick_crop(region, permille, &mut r1);
        prop_assert!(crop.w >= 1 && crop.h >= 1);
        prop_assert_eq!(crop.w, crop_side(w, permille));
        prop_assert_eq!(crop.h, crop_side(h, permille));
        prop_assert!(crop.x >= x && crop.x + crop.w <= x + w);
        prop_assert!(crop.y >= y && crop.y + crop.h <= y + h);
        let mut r2 = ChaCha20Rng::seed_from_u64(seed);
        rand_core::Rng::next_u32(&mut r2);
        rand_core::Rng::next_u32(&mut r2);
        prop_assert_eq!(rand_core::Rng::next_u32(&mut r1), rand_core::Rng::next_u32(&mut r2));
    }

    /// A quorum verdict is final: once a hash stands, any outcome of the
    /// pending lines leaves it standing; and honest majorities win.
    #[test]
    fn quorum_agreement_is_final(
        k in 2u8..=MAX_QUORUM_K,
        votes in prop::collection::vec(0u8..3, 0..11),
        later in prop::collection::vec(0u8..3, 0..4),
    ) {
        let hashes: Vec<[u8; 32]> = votes.iter().map(|v| [*v; 32]).collect();
        let lines = hashes.len() + later.len();
        if let QuorumTally::Agreed { hash } = quorum_tally(k, &hashes, later.len(), lines) {
            let mut all = hashes.clone();
            all.extend(later.iter().map(|v| [*v; 32]));
            prop_assert_eq!(quorum_tally(k, &all, 0, lines), QuorumTally::Agreed { hash });
            prop_assert!(all.iter().filter(|h| **h == hash).count() >= quorum_needed(k));
        }
        // Every hash equal: agreed as soon as enough are in.
        let same = vec![[9u8; 32]; usize::from(k)];
        prop_assert_eq!(quorum_tally(k, &same, 0, usize::from(k)), QuorumTally::Agreed { hash: [9; 32] });
    }

    /// A spot-check driven to its verdict as the scheduler drives it (one
    /// check, more on `AddLine`, a cross comparison on `CrossCheck`), with
    /// checkers that are honest, independent liars (each its own garbage) or
    /// colluders (one shared garbage): a verdict comes within the line bound;
    /// an honest primary is never failed unless two colluders checked it; a
    /// lying primary never passes.
    #[test]
    fn spot_checks_convict_only_with_agreeing_dissenters(
        primary_honest in any::<bool>(),
        kinds in prop::collection::vec(0u8..3, MAX_SPOT_LINES),
        t in 500u16..=1000,
    ) {
        // 0 honest, 1 independent liar, 2 colluder. Outputs: honest = 0,
        // colluders = 1, liar i = 100 + i, lying primary = 99.
        let out = |i: usize| match kinds[i] { 0 => 0u32, 1 => 100 + i as u32, _ => 1 };
        let primary = if primary_honest { 0 } else { 99 };
        let sim = |a: u32, b: u32| if a == b { t.clamp(950, 1000) } else { t.saturating_sub(400) };
        let mut checks: Vec<SpotVote> = vec![SpotVote::Compared(sim(out(0), primary))];
        let mut crosses: Vec<Cross> = Vec::new();
        let verdict = loop {
            match spot_tally(t, &checks, &crosses, 0, checks.len()) {
                SpotTally::AddLine => {
                    let i = checks.len();
                    checks.push(SpotVote::Compared(sim(out(i), primary)));
                }
                SpotTally::CrossCheck { a, b } => {
                    prop_assert!(!crosses.iter().any(|c| c.a == a && c.b == b), "asked twice");
                    crosses.push(Cross { a, b, similarity: Some(sim(out(a), out(b))) });
                }
                SpotTally::Wait => prop_assert!(false, "nothing is pending"),
                v => break v,
            }
        };
        let used = &kinds[..checks.len()];
        if primary_honest && used.iter().filter(|k| **k == 2).count() < 2 {
            prop_assert_ne!(verdict, SpotTally::Fail);
        }
        if !primary_honest {
            prop_assert_ne!(verdict, SpotTally::Pass);
        }
        if used.iter().all(|k| *k == 0) {
            prop_assert_eq!(verdict, if primary_honest { SpotTally::Pass } else { SpotTally::Fail });
        }
    }
}
