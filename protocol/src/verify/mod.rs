//! Result verification: policies, their defaults, sampling, spot-check crops,
//! the vote tallies that decide a sampled task, and the image metric.
//!
//! # What this module owns
//!
//! The *rules* of verification as pure functions, so the scheduler (which
//! places verification lines and decides verdicts), the creator (which
//! re-checks a verdict before it countersigns) and the simulator (which
//! sweeps policies) all run the same code:
//!
//! * [`default_policy`]: the policy a runtime gets when the creator names
//!   none, and [`check_policy`]: the bounds a creator's policy must respect
//!   (called by [`JobSpec::validate`](crate::wire::JobSpec)).
//! * [`draw_sampled`]: whether a task is sampled. The scheduler draws it from
//!   its own RNG when it first places the task, before any result exists;
//!   workers never see the RNG, and an offer of a sampled task looks exactly
//!   like any other offer, so a worker cannot tell whether it is checked.
//! * [`pick_crop`]: the random crop of a spot-checked task's region.
//! * [`quorum_tally`] and [`spot_tally`]: from the votes so far, whether a
//!   verdict stands, more votes are needed (another line), or the task cannot
//!   be verified within the bounds ([`quorum_max_lines`], [`MAX_SPOT_LINES`]).
//! * [`metric`]: the windowed SSIM over RGB(A) pixel buffers that the node
//!   computes for a spot-check (integer arithmetic: the same pixels give the
//!   same similarity on every machine).
//!
//! # The policies and why these defaults
//!
//! | job kind | default | why |
//! |---|---|---|
//! | `builtin`, `process` (deterministic) | `Quorum { sample 100‰, k 2 }` | outputs are bit-exact, so a BLAKE3 hash comparison is free and exact; one extra run on 10% of tasks costs ~10% GPU time and catches a liar on each sampled task it lies on (k = 2: any disagreement escalates to a third run, which decides) |
//! | `blender` | `SpotCheck { sample 100‰, crop 250‰, similarity 900‰ }` | GPU renders are not bit-exact across devices; re-rendering a crop of 1/4 × 1/4 of the region (1/16 of its pixels) costs ~1/16 of a frame on 10% of tasks (plus the scene load); SSIM ≥ 0.90 passes two honest Cycles renders of one seed, while blank, cached or wrong frames score far below (≤ 0.5) |
//! | `process` (not deterministic) | `SpotCheck { sample 100‰, crop 1000‰, similarity 900‰ }` | no hash agreement and no crop rendering for an arbitrary command: the whole region is re-run and compared |
//!
//! A creator may set any policy within [`check_policy`]'s bounds, including
//! `None` (accept what workers return: only for meshes it trusts). New or
//! distrusted workers are verified on *every* task whatever the sampling rate
//! (probation, see [`crate::reputation`] and the scheduler), as long as the
//! job has a policy other than `None`.
//!
//! # Votes and verdicts
//!
//! *Quorum*: a sampled task runs on `k` lines (the task itself and `k − 1`
//! verification lines) on distinct workers. A hash wins when at least
//! `⌊k/2⌋ + 1` results carry it **and** it has more results than any other
//! single hash could reach with every outstanding line, so no later result
//! can overturn it (plurality: independent liars return distinct hashes and
//! do not add up; docs/trust.md says why). When every line has answered and nothing wins, one more line is added,
//! up to [`quorum_max_lines`] (`2k + 1`) lines; then the task is unresolved
//! and fails (the job is most likely not deterministic).
//!
//! *Spot-check*: the task runs once (the primary) and a crop of it is
//! re-rendered by a verification line on another worker; the creator, who
//! alone can open both outputs, computes the similarity of the crop to the
//! same pixels of the primary. The primary passes when at least one
//! comparison meets the threshold and passing comparisons outnumber failing
//! and pending ones. A single failing comparison is not enough (the checker
//! may be the liar), so another checker is added; the primary fails when two
//! checkers disagree with it **and agree with each other** (a cross
//! comparison of their crops). Two dissenters that disagree with each other
//! are set aside. So one liar can never convict an honest primary, and two
//! independent liars cannot either; only colluders producing the same wrong
//! crop can. At most [`MAX_SPOT_LINES`] verification lines are made per
//! primary.
//!
//! # What it must not do
//!
//! No state, no I/O, no clock; randomness only as an argument. Floats never
//! decide anything.

pub mod metric;

use serde::{Deserialize, Serialize};

use crate::task::Rect;
use crate::wire::{JobKind, TaskId, ValidationError, VerificationPolicy};

/// Most workers a quorum may ask for.
pub const MAX_QUORUM_K: u8 = 5;
/// Most verification lines of one spot-checked primary (first check,
/// tie-breakers and replacements of unusable checks).
pub const MAX_SPOT_LINES: usize = 4;
/// Smallest crop side in pixels (SSIM needs 8 × 8 windows; 32 leaves a
/// useful number of them), unless the region itself is smaller.
pub const MIN_CROP_SIDE: u32 = 32;

/// The default sampled fraction, per mille.
pub const DEFAULT_SAMPLE_PERMILLE: u16 = 100;
/// The default spot-check crop side, per mille of the region side.
pub const DEFAULT_CROP_PERMILLE: u16 = 250;
/// The default spot-check threshold, SSIM × 1000.
pub const DEFAULT_MIN_SIMILARITY_MILLI: u16 = 900;

/// The policy a job of `kind` gets when its creator names none (see the
/// module docs for the reasons).
pub fn default_policy(kind: &JobKind) -> VerificationPolicy {
    match kind {
        JobKind::Builtin
        | JobKind::Process {
            deterministic: true,
            ..
        } => VerificationPolicy::Quorum {
            sample_permille: DEFAULT_SAMPLE_PERMILLE,
            k: 2,
        },
        JobKind::Blender { .. } => VerificationPolicy::SpotCheck {
            sample_permille: DEFAULT_SAMPLE_PERMILLE,
            crop_permille: DEFAULT_CROP_PERMILLE,
            min_similarity_milli: DEFAULT_MIN_SIMILARITY_MILLI,
        },
        JobKind::Process {
            deterministic: false,
            ..
        } => VerificationPolicy::SpotCheck {
            sample_permille: DEFAULT_SAMPLE_PERMILLE,
            crop_permille: 1000,
            min_similarity_milli: DEFAULT_MIN_SIMILARITY_MILLI,
        },
    }
}

fn invalid(reason: String) -> ValidationError {
    ValidationError::Invalid {
        field: "verification",
        reason,
    }
}

/// Checks a policy's fields: fractions at most 1000‰, `2 ≤ k ≤`
/// [`MAX_QUORUM_K`], a crop of at least 1‰.
pub fn check_policy(policy: &VerificationPolicy) -> Result<(), ValidationError> {
    match *policy {
        VerificationPolicy::None => Ok(()),
        VerificationPolicy::Quorum { sample_permille, k } => {
            if sample_permille > 1000 {
                return Err(invalid(format!(
                    "sample_permille {sample_permille}; expected 0..=1000"
                )));
            }
            if !(2..=MAX_QUORUM_K).contains(&k) {
                return Err(invalid(format!(
                    "quorum k {k}; expected 2..={MAX_QUORUM_K}"
                )));
            }
            Ok(())
        }
        VerificationPolicy::SpotCheck {
            sample_permille,
            crop_permille,
            min_similarity_milli,
        } => {
            if sample_permille > 1000 {
                return Err(invalid(format!(
                    "sample_permille {sample_permille}; expected 0..=1000"
                )));
            }
            if !(1..=1000).contains(&crop_permille) {
                return Err(invalid(format!(
                    "crop_permille {crop_permille}; expected 1..=1000"
                )));
            }
            if min_similarity_milli > 1000 {
                return Err(invalid(format!(
                    "min_similarity_milli {min_similarity_milli}; expected 0..=1000"
                )));
            }
            Ok(())
        }
    }
}

/// The sampled fraction of a policy, per mille (0 for `None`).
pub fn sample_permille(policy: &VerificationPolicy) -> u16 {
    match *policy {
        VerificationPolicy::None => 0,
        VerificationPolicy::Quorum {
            sample_permille, ..
        }
        | VerificationPolicy::SpotCheck {
            sample_permille, ..
        } => sample_permille.min(1000),
    }
}

/// Whether a task is sampled at `permille`: exactly one `u32` is drawn
/// whatever the rate (so the RNG stream does not depend on the policy), and
/// `(x · 1000) >> 32 < permille` holds for a uniform `x` with probability
/// `permille / 1000` (1000 ‰: always; 0 ‰: never).
pub fn draw_sampled<G: rand_core::Rng + ?Sized>(permille: u16, rng: &mut G) -> bool {
    let x = u64::from(rng.next_u32());
    (x * 1000) >> 32 < u64::from(permille)
}

/// A uniform integer in `0..=max` (Lemire's multiply-shift on one `u32`).
fn uniform<G: rand_core::Rng + ?Sized>(max: u32, rng: &mut G) -> u32 {
    ((u64::from(rng.next_u32()) * (u64::from(max) + 1)) >> 32) as u32
}

/// The side of a crop: `⌈len · permille / 1000⌉`, at least
/// [`MIN_CROP_SIDE`] (or `len` when smaller), at most `len`.
pub fn crop_side(len: u32, permille: u16) -> u32 {
    let want = (u64::from(len) * u64::from(permille.min(1000))).div_ceil(1000) as u32;
    want.max(MIN_CROP_SIDE.min(len)).min(len)
}

/// A random crop inside `region` with sides [`crop_side`] of the region's;
/// two `u32` are drawn. A crop always lies inside the region (and so inside
/// the frame, if the region does).
pub fn pick_crop<G: rand_core::Rng + ?Sized>(region: Rect, permille: u16, rng: &mut G) -> Rect {
    let w = crop_side(region.w, permille);
    let h = crop_side(region.h, permille);
    let dx = uniform(region.w - w, rng);
    let dy = uniform(region.h - h, rng);
    Rect {
        x: region.x + dx,
        y: region.y + dy,
        w,
        h,
    }
}

/// Most lines (the task and its verification lines) a quorum of `k` uses
/// before it gives up: `2k + 1`.
pub fn quorum_max_lines(k: u8) -> usize {
    2 * usize::from(k.clamp(2, MAX_QUORUM_K)) + 1
}

/// Agreeing results a quorum of `k` needs at least: `⌊k/2⌋ + 1`.
pub fn quorum_needed(k: u8) -> usize {
    usize::from(k.clamp(2, MAX_QUORUM_K)) / 2 + 1
}

/// Where a quorum stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumTally {
    /// Lines are still out; nothing stands yet.
    Wait,
    /// This hash stands: no outstanding result can overturn it.
    Agreed {
        /// The output hash that stands.
        hash: [u8; 32],
    },
    /// Every line answered and nothing stands: add a line.
    AddLine,
    /// Every line answered, nothing stands and no line may be added.
    Unresolved,
}

/// Tallies a quorum of `k` from the hashes received (one per distinct
/// worker), `pending` lines still out and `lines` lines made so far
/// (including the task's own).
pub fn quorum_tally(k: u8, hashes: &[[u8; 32]], pending: usize, lines: usize) -> QuorumTally {
    let needed = quorum_needed(k);
    // Distinct hashes in first-seen order, with their counts (at most
    // `quorum_max_lines` results: quadratic is fine).
    let mut counts: Vec<([u8; 32], usize)> = Vec::new();
    for h in hashes {
        match counts.iter_mut().find(|(x, _)| x == h) {
            Some((_, n)) => *n += 1,
            None => counts.push((*h, 1)),
        }
    }
    // A hash stands when it has `needed` votes and no other hash can reach
    // it, even with every outstanding line: workers that lie independently
    // return distinct wrong hashes, so only colluders add up against it.
    // (Counting every other vote against it, as a strict majority does, let
    // a few cheap liars with distinct hashes stall every task they touched.)
    for (i, (h, n)) in counts.iter().enumerate() {
        let best_other = counts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, m))| *m)
            .max()
            .unwrap_or(0);
        if *n >= needed && *n > best_other + pending {
            return QuorumTally::Agreed { hash: *h };
        }
    }
    if pending > 0 {
        QuorumTally::Wait
    } else if lines < quorum_max_lines(k) {
        QuorumTally::AddLine
    } else {
        QuorumTally::Unresolved
    }
}

/// Where a spot-check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpotTally {
    /// Checks or comparisons are still out.
    Wait,
    /// The primary passes.
    Pass,
    /// The primary fails: two checkers that agree with each other disagree with it.
    Fail,
    /// Two checkers (indices into the checks) disagree with the primary:
    /// compare them with each other before the primary is blamed.
    CrossCheck {
        /// The first.
        a: usize,
        /// The second.
        b: usize,
    },
    /// Nothing stands yet and nothing is out: add a verification line.
    AddLine,
    /// Nothing stands and no line may be added.
    Unresolved,
}

/// One spot-check vote, as the tally sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpotVote {
    /// Not compared with the primary yet.
    Pending,
    /// Its similarity to the primary, × 1000.
    Compared(u16),
    /// Its output could not be used: it counts for nothing.
    Unusable,
}

/// A comparison of two checks' crops with each other (indices into the checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cross {
    /// The first check.
    pub a: usize,
    /// The second check.
    pub b: usize,
    /// Their similarity × 1000, once compared (an unusable output counts as 0).
    pub similarity: Option<u16>,
}

/// Tallies a spot-check from its checks' comparisons with the primary, the
/// cross comparisons made between dissenting checks, the verification lines
/// still running (`running`) and the lines made so far (`lines`).
///
/// Two dissenters that disagree with each other as well are set aside (at
/// least one of them is wrong, maybe both) unless another cross confirmed
/// them: they neither pass nor fail the primary. A primary fails only when two checkers that agree with each
/// other both disagree with it, so two independent liars never convict an
/// honest primary.
pub fn spot_tally(
    threshold: u16,
    checks: &[SpotVote],
    crosses: &[Cross],
    running: usize,
    lines: usize,
) -> SpotTally {
    let touches = |i: usize, agree: bool| {
        crosses.iter().any(|c| {
            (c.a == i || c.b == i) && c.similarity.is_some_and(|s| (s >= threshold) == agree)
        })
    };
    // Set aside: disagrees with another dissenter, and agrees with none.
    let aside = |i: usize| touches(i, false) && !touches(i, true);
    let (mut pass, mut fail, mut pending) = (0, Vec::new(), running);
    for (i, v) in checks.iter().enumerate() {
        if aside(i) {
            continue;
        }
        match v {
            SpotVote::Pending => pending += 1,
            SpotVote::Compared(s) if *s >= threshold => pass += 1,
            SpotVote::Compared(_) => fail.push(i),
            SpotVote::Unusable => {}
        }
    }
    if pass >= 1 && pass > fail.len() + pending {
        return SpotTally::Pass;
    }
    if fail.len() >= 2 && fail.len() > pass + pending {
        let among = |c: &Cross| fail.contains(&c.a) && fail.contains(&c.b);
        if crosses
            .iter()
            .any(|c| among(c) && c.similarity.is_some_and(|s| s >= threshold))
        {
            return SpotTally::Fail;
        }
        if crosses.iter().any(|c| among(c) && c.similarity.is_none()) {
            return SpotTally::Wait;
        }
        if let (Some(a), Some(b)) = (fail.first(), fail.get(1)) {
            return SpotTally::CrossCheck { a: *a, b: *b };
        }
    }
    if pending > 0 {
        SpotTally::Wait
    } else if lines < MAX_SPOT_LINES {
        SpotTally::AddLine
    } else {
        SpotTally::Unresolved
    }
}

/// What the creator found comparing a spot-check crop with its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Both outputs opened and matched their signed hashes: the
    /// [`metric::similarity_milli`] of the crop and the reference's pixels
    /// under it.
    Similarity(u16),
    /// The reference's output could not be fetched or opened, did not match
    /// its signed hash, or was not an image of the expected size.
    ReferenceUnusable,
    /// The same, for the check's output.
    CheckUnusable,
}

/// A creator's answer to a `Compare` event, sent to the job's scheduler
/// (`RpcRequest::Compared`; the transport authenticates the creator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// The task.
    pub task: TaskId,
    /// The attempt compared against: the primary (its whole output, cropped
    /// here), or another check (its crop).
    pub reference_attempt: u32,
    /// The attempt that rendered the crop.
    pub check_attempt: u32,
    /// What the creator found.
    pub result: CompareResult,
}

/// Whether a comparison passes the policy's threshold.
pub fn passes(similarity_milli: u16, min_similarity_milli: u16) -> bool {
    similarity_milli >= min_similarity_milli
}

#[cfg(test)]
mod tests;
