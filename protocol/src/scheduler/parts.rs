//! Splitting a [`JobSnapshot`] into parts that each fit one codec frame.
//!
//! A job of 100 000 tasks, run by as many workers with long failure reasons,
//! is far larger than the 4 MiB of one [`crate::codec`] frame. The driver
//! sends (or stores) a snapshot as [`SnapshotPart`]s: a head (spec frame and
//! job scalars), then the tasks, the live attempts and the worker table in
//! slices, each bounded so that its encoding stays under about 1 MiB whatever
//! a task holds. The receiver collects parts with a [`SnapshotAssembler`]
//! (bounded) and gets the snapshot back when all have arrived; the snapshot
//! is then checked completely by `handle_replica` or `restore`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::JobSnapshot;
use super::job::{Check, JobCore, Live, TaskState};
use super::types::arc_bytes;
use crate::identity::NodeId;
use crate::wire::JobId;

/// Tasks per part: at most about 300 bytes each (a 256-byte failure reason,
/// past attempts), so under 1 MiB.
pub const TASKS_PER_PART: usize = 2048;
/// Live attempts per part (about 80 bytes each).
pub const LIVE_PER_PART: usize = 8192;
/// Worker ids per part (32 bytes each).
pub const WORKERS_PER_PART: usize = 16384;
/// Open verification checks per part: at most 10 lines of about 300 bytes
/// and 11 votes of about 50 bytes each, so under 1 MiB.
pub const CHECKS_PER_PART: usize = 256;
/// Most parts of one snapshot: a head, the tasks and live attempts of the
/// largest job (100 000 of each), up to about a million worker ids, and
/// 4096 open checks (the default `max_open_checks`; a larger bound needs
/// fewer workers).
pub const MAX_PARTS: u32 = 192;

/// What a part carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PartBody {
    Head {
        #[serde(with = "arc_bytes")]
        frame: Arc<[u8]>,
        /// The core with `tasks`, `live` and `workers` empty.
        core: Box<JobCore>,
        tasks: u32,
        live: u32,
        workers: u32,
        checks: u32,
    },
    Checks {
        entries: Vec<(u32, Check)>,
    },
    Tasks {
        start: u32,
        tasks: Vec<TaskState>,
    },
    Live {
        entries: Vec<(u32, Live)>,
    },
    Workers {
        start: u32,
        ids: Vec<NodeId>,
    },
}

/// One piece of a [`JobSnapshot`] (opaque body); encode each with
/// [`crate::codec`] (under 1 MiB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// The job.
    pub job: JobId,
    /// The snapshot's revision.
    pub revision: u64,
    /// This part's place, from 0.
    pub index: u32,
    /// Parts in the snapshot.
    pub count: u32,
    pub(crate) body: PartBody,
}

/// Why parts do not make a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartsError {
    /// The parts disagree on the job, revision or count, or repeat an index.
    #[error("snapshot parts do not belong together: {0}")]
    Mismatch(String),
    /// More parts than any job needs.
    #[error("snapshot of {count} parts; at most {max}")]
    TooMany {
        /// Parts announced.
        count: u32,
        /// The bound.
        max: u32,
    },
    /// The slices do not add up to what the head announced.
    #[error("snapshot parts incomplete: {0}")]
    Incomplete(String),
}

impl JobSnapshot {
    /// Splits the snapshot into parts that each fit a codec frame.
    pub fn to_parts(&self) -> Vec<SnapshotPart> {
        let core = &self.core;
        let mut head_core = core.clone();
        head_core.tasks = Vec::new();
        head_core.live = BTreeMap::new();
        head_core.workers = Vec::new();
        head_core.checks = BTreeMap::new();
        let mut bodies = vec![PartBody::Head {
            frame: self.frame.clone(),
            core: Box::new(head_core),
            tasks: core.tasks.len() as u32,
            live: core.live.len() as u32,
            workers: core.workers.len() as u32,
            checks: core.checks.len() as u32,
        }];
        for (i, chunk) in core.tasks.chunks(TASKS_PER_PART).enumerate() {
            bodies.push(PartBody::Tasks {
                start: (i * TASKS_PER_PART) as u32,
                tasks: chunk.to_vec(),
            });
        }
        let live: Vec<(u32, Live)> = core.live.iter().map(|(k, v)| (*k, v.clone())).collect();
        for chunk in live.chunks(LIVE_PER_PART) {
            bodies.push(PartBody::Live {
                entries: chunk.to_vec(),
            });
        }
        for (i, chunk) in core.workers.chunks(WORKERS_PER_PART).enumerate() {
            bodies.push(PartBody::Workers {
                start: (i * WORKERS_PER_PART) as u32,
                ids: chunk.to_vec(),
            });
        }
        let checks: Vec<(u32, Check)> = core.checks.iter().map(|(k, v)| (*k, v.clone())).collect();
        for chunk in checks.chunks(CHECKS_PER_PART) {
            bodies.push(PartBody::Checks {
                entries: chunk.to_vec(),
            });
        }
        let count = bodies.len() as u32;
        bodies
            .into_iter()
            .enumerate()
            .map(|(index, body)| SnapshotPart {
                job: self.job,
                revision: core.revision,
                index: index as u32,
                count,
                body,
            })
            .collect()
    }

    /// Puts parts (in any order) back together. The result still has to pass
    /// `handle_replica` or `restore`, which check it completely.
    pub fn from_parts(parts: Vec<SnapshotPart>) -> Result<JobSnapshot, PartsError> {
        let first = parts
            .first()
            .ok_or_else(|| PartsError::Incomplete("no part".into()))?;
        let (job, revision, count) = (first.job, first.revision, first.count);
        if count > MAX_PARTS {
            return Err(PartsError::TooMany {
                count,
                max: MAX_PARTS,
            });
        }
        if parts.len() != count as usize {
            return Err(PartsError::Incomplete(format!(
                "{} of {count} parts",
                parts.len()
            )));
        }
        let mut slots: Vec<Option<PartBody>> = vec![None; count as usize];
        for p in parts {
            if p.job != job || p.revision != revision || p.count != count {
                return Err(PartsError::Mismatch(format!(
                    "part {} is of job {} revision {}",
                    p.index, p.job, p.revision
                )));
            }
            match slots.get_mut(p.index as usize) {
                Some(cell @ None) => *cell = Some(p.body),
                _ => {
                    return Err(PartsError::Mismatch(format!(
                        "part index {} out of range or twice",
                        p.index
                    )));
                }
            }
        }
        let mut bodies = slots.into_iter().flatten();
        let Some(PartBody::Head {
            frame,
            core,
            tasks,
            live,
            workers,
            checks,
        }) = bodies.next()
        else {
            return Err(PartsError::Incomplete("part 0 is not the head".into()));
        };
        let mut core = *core;
        for body in bodies {
            match body {
                PartBody::Head { .. } => {
                    return Err(PartsError::Mismatch("two heads".into()));
                }
                PartBody::Tasks { start, tasks: t } => {
                    if start as usize != core.tasks.len()
                        || core.tasks.len() + t.len() > tasks as usize
                    {
                        return Err(PartsError::Mismatch(format!("task slice at {start}")));
                    }
                    core.tasks.extend(t);
                }
                PartBody::Live { entries } => {
                    if core.live.len() + entries.len() > live as usize {
                        return Err(PartsError::Mismatch("too many live attempts".into()));
                    }
                    core.live.extend(entries);
                }
                PartBody::Workers { start, ids } => {
                    if start as usize != core.workers.len()
                        || core.workers.len() + ids.len() > workers as usize
                    {
                        return Err(PartsError::Mismatch(format!("worker slice at {start}")));
                    }
                    core.workers.extend(ids);
                }
                PartBody::Checks { entries } => {
                    if core.checks.len() + entries.len() > checks as usize {
                        return Err(PartsError::Mismatch("too many checks".into()));
                    }
                    core.checks.extend(entries);
                }
            }
        }
        if core.tasks.len() != tasks as usize
            || core.live.len() != live as usize
            || core.workers.len() != workers as usize
            || core.checks.len() != checks as usize
        {
            return Err(PartsError::Incomplete(format!(
                "{}/{tasks} tasks, {}/{live} live attempts, {}/{workers} workers, {}/{checks} checks",
                core.tasks.len(),
                core.live.len(),
                core.workers.len(),
                core.checks.len()
            )));
        }
        Ok(JobSnapshot { job, frame, core })
    }
}

/// Collects the parts of snapshots as they arrive, per sender and job; keeps
/// at most `max_pending` incomplete snapshots (a new one evicts the oldest)
/// and only the newest revision per sender and job.
#[derive(Debug, Clone)]
pub struct SnapshotAssembler {
    max_pending: usize,
    pending: BTreeMap<(NodeId, JobId), (u64, u64, Vec<SnapshotPart>)>,
    arrivals: u64,
}

impl SnapshotAssembler {
    /// An empty assembler.
    pub fn new(max_pending: usize) -> Self {
        SnapshotAssembler {
            max_pending: max_pending.max(1),
            pending: BTreeMap::new(),
            arrivals: 0,
        }
    }

    /// Incomplete snapshots held.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds a part from `from`; returns the snapshot when it is complete.
    pub fn add(
        &mut self,
        from: NodeId,
        part: SnapshotPart,
    ) -> Option<Result<JobSnapshot, PartsError>> {
        if part.count > MAX_PARTS {
            return Some(Err(PartsError::TooMany {
                count: part.count,
                max: MAX_PARTS,
            }));
        }
        self.arrivals += 1;
        let key = (from, part.job);
        let entry = self.pending.get(&key);
        match entry {
            Some((rev, _, _)) if part.revision < *rev => return None, // older: dropped
            Some((rev, _, _)) if part.revision == *rev => {}
            _ => {
                if !self.pending.contains_key(&key) && self.pending.len() >= self.max_pending {
                    let oldest = self
                        .pending
                        .iter()
                        .min_by_key(|(_, (_, at, _))| *at)
                        .map(|(k, _)| *k);
                    if let Some(k) = oldest {
                        self.pending.remove(&k);
                    }
                }
                self.pending
                    .insert(key, (part.revision, self.arrivals, Vec::new()));
            }
        }
        let (_, _, parts) = self.pending.get_mut(&key)?;
        if parts.iter().any(|p| p.index == part.index) {
            return None; // a repeat
        }
        let count = part.count as usize;
        parts.push(part);
        if parts.len() < count {
            return None;
        }
        let (_, _, parts) = self.pending.remove(&key)?;
        Some(JobSnapshot::from_parts(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{T0, builtin_job, config, key, pump, setup};
    use super::super::*;
    use crate::codec;
    use crate::identity::NodeId;
    use crate::scheduler::job::{Live, Past, PastKind, Phase};
    use crate::scheduler::view::Hold;

    /// The largest job at its worst: 100 000 tasks, each failed with a
    /// 256-byte reason and past attempts, 100 000 live attempts and workers.
    fn huge() -> JobSnapshot {
        let mut s = Scheduler::new(NodeId::from_bytes([200; 32]), config());
        let c = key(1);
        let (spec, frame) = builtin_job(&c, 1, 100_000);
        s.submit(spec, frame, T0).unwrap();
        let mut snap = s.snapshot().jobs.remove(0);
        let reason = "x".repeat(256);
        for (i, t) in snap.core.tasks.iter_mut().enumerate() {
            t.phase = Phase::Failed;
            t.worker = i as u32;
            t.attempt = u32::MAX - 1;
            t.next_attempt = u32::MAX;
            t.failure = Some(FailReason::Attempts {
                failures: 3,
                last: AttemptEnd::Reported {
                    reason: reason.clone(),
                },
            });
            t.past = (0..4)
                .map(|k| Past {
                    worker: u32::MAX - k,
                    attempt: u32::MAX - k,
                    kind: PastKind::Superseded,
                })
                .collect();
        }
        for i in 0..100_000u32 {
            snap.core.live.insert(
                i,
                Live {
                    price: u64::MAX,
                    reserve_until_ms: u64::MAX,
                    deadline_ms: u64::MAX,
                    last_heard_ms: u64::MAX,
                    progress_seq: Some(u32::MAX),
                    notified_permille: 1000,
                    hold: Hold::Assigned {
                        inc: u64::MAX,
                        generation: u64::MAX,
                    },
                    timer_at: u64::MAX,
                },
            );
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            snap.core.workers.push(NodeId::from_bytes(b));
        }
        snap.core.requeued = (0..100_000).collect();
        snap
    }

    #[test]
    fn the_largest_job_travels_in_parts_under_one_mib_each() {
        let snap = huge();
        let whole = codec::encode(&snap).unwrap();
        assert!(whole.len() > codec::MAX_FRAME, "too large for one frame");
        assert!(codec::decode::<JobSnapshot>(&whole, codec::MAX_FRAME).is_err());
        let parts = snap.to_parts();
        assert!(parts.len() as u32 <= MAX_PARTS);
        let mut back = Vec::new();
        for p in &parts {
            let bytes = codec::encode(p).unwrap();
            assert!(
                bytes.len() < 1 << 20,
                "part {} is {} bytes",
                p.index,
                bytes.len()
            );
            back.push(codec::decode::<SnapshotPart>(&bytes, codec::MAX_FRAME).unwrap());
        }
        back.reverse();
        let mut asm = SnapshotAssembler::new(2);
        let from = NodeId::from_bytes([3; 32]);
        let mut done = None;
        for p in back {
            assert!(done.is_none());
            done = asm.add(from, p);
        }
        assert_eq!(done.unwrap().unwrap(), snap);
        assert_eq!(asm.pending(), 0);
    }

    #[test]
    fn parts_that_do_not_belong_together_are_refused() {
        let (mut s, _, mut r) = setup(2, 2);
        let c = key(1);
        let (spec, frame) = builtin_job(&c, 1, 5000);
        s.submit(spec, frame, T0).unwrap();
        pump(&mut s, T0, &mut r);
        let snap = s.snapshot().jobs.remove(0);
        let parts = snap.to_parts();
        assert_eq!(parts.len(), 1 + 3 + 1 + 1);
        assert_eq!(JobSnapshot::from_parts(parts.clone()).unwrap(), snap);
        let mut missing = parts.clone();
        missing.remove(2);
        assert!(matches!(
            JobSnapshot::from_parts(missing),
            Err(PartsError::Incomplete(_))
        ));
        let mut twice = parts.clone();
        twice[2] = twice[1].clone();
        assert!(matches!(
            JobSnapshot::from_parts(twice),
            Err(PartsError::Mismatch(_))
        ));
        let mut other = parts.clone();
        other[3].revision += 1;
        assert!(matches!(
            JobSnapshot::from_parts(other),
            Err(PartsError::Mismatch(_))
        ));
        let mut headless = parts.clone();
        headless.swap(0, 1);
        for (i, p) in headless.iter_mut().enumerate() {
            p.index = i as u32;
        }
        assert!(JobSnapshot::from_parts(headless).is_err());
        let mut big = parts.clone();
        for p in &mut big {
            p.count = MAX_PARTS + 1;
        }
        assert!(matches!(
            JobSnapshot::from_parts(big),
            Err(PartsError::TooMany { .. })
        ));
        // The assembler: repeats ignored, older revisions dropped, newer replace.
        let mut asm = SnapshotAssembler::new(1);
        let from = NodeId::from_bytes([3; 32]);
        assert!(asm.add(from, parts[0].clone()).is_none());
        assert!(asm.add(from, parts[0].clone()).is_none());
        let mut newer = parts[1].clone();
        newer.revision += 1;
        assert!(asm.add(from, newer).is_none());
        assert!(
            asm.add(from, parts[2].clone()).is_none(),
            "older revision dropped"
        );
        assert_eq!(asm.pending(), 1);
        // Bounded: another sender's snapshot evicts the oldest.
        assert!(
            asm.add(NodeId::from_bytes([4; 32]), parts[0].clone())
                .is_none()
        );
        assert_eq!(asm.pending(), 1);
    }
}
