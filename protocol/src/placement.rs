//! Placement rules: does a worker meet a job's requirements, and how good a
//! candidate is it.
//!
//! # What this module owns
//!
//! * [`meets`]: the one requirements check. The scheduler uses it to filter
//!   candidates ([`Need::check`] on a pre-parsed [`Profile`], the same rule)
//!   and the worker uses it to re-check an offer against its own advert.
//!   A worker meets a job when it takes the worker role, has the job's
//!   runtime kind at a version ≥ `min_runtime_version` (dotted numbers,
//!   [`Version`]), has a GPU of the required vendor (if any) with at least
//!   `min_vram_bytes` (one GPU, not the sum), at least `min_ram_bytes` of RAM,
//!   and asks at most the job's price ceiling per task.
//! * [`Unmet`]: why not, in words a creator can act on
//!   ("no runtime blender >= 3.6: this node has blender 3.4.1").
//! * [`score`]: the integer candidate score (fit, load, reputation, price,
//!   proximity, benchmark speed), each part per mille, weighted by
//!   [`ScoreWeights`]. Integers only, so decisions replay bit-for-bit.
//!
//! # What it must not do
//!
//! No state and no I/O: free slots, reputation and region come in as
//! arguments; choosing among candidates is the scheduler's.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::wire::{CapacityAdvert, GpuVendor, JobKind, JobSpec, Role, RuntimeKind};

/// A version as dotted numbers, e.g. `4.3.2` → `[4, 3, 2, 0]`.
///
/// Parsing is lenient and total: each of the first four dot-separated
/// components counts by its leading decimal digits (saturating at `u32::MAX`,
/// none → 0), later components and any suffix (`-beta`) are ignored, missing
/// ones are 0. So `3.6` = `3.6.0`, `4.10` > `4.9`, `4.1-rc1` = `4.1`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Version(pub [u32; 4]);

impl Version {
    /// Parses a version string (never fails; see the type docs).
    pub fn parse(text: &str) -> Version {
        let mut out = [0u32; 4];
        for (slot, part) in out.iter_mut().zip(text.trim().split('.')) {
            let mut n: u32 = 0;
            for b in part.bytes().take_while(u8::is_ascii_digit) {
                n = n.saturating_mul(10).saturating_add(u32::from(b - b'0'));
            }
            *slot = n;
        }
        Version(out)
    }
}

impl fmt::Display for Version {
    /// Dotted, without trailing zero components (at least two: `4.0`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self
            .0
            .iter()
            .rposition(|c| *c != 0)
            .map_or(0, |i| i + 1)
            .max(2);
        for (i, c) in self.0.iter().take(len).enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Compares two version strings as dotted numbers (see [`Version`]).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    Version::parse(a).cmp(&Version::parse(b))
}

/// The runtime a job kind runs on.
pub fn runtime_of(kind: &JobKind) -> RuntimeKind {
    match kind {
        JobKind::Builtin => RuntimeKind::Builtin,
        JobKind::Blender { .. } => RuntimeKind::Blender,
        JobKind::Process { .. } => RuntimeKind::Process,
    }
}

/// The lowercase name of a runtime kind, as creators write it.
pub fn runtime_name(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Builtin => "builtin",
        RuntimeKind::Blender => "blender",
        RuntimeKind::Process => "process",
    }
}

/// The lowercase name of a GPU vendor.
pub fn vendor_name(vendor: GpuVendor) -> &'static str {
    match vendor {
        GpuVendor::Nvidia => "nvidia",
        GpuVendor::Amd => "amd",
        GpuVendor::Intel => "intel",
        GpuVendor::Apple => "apple",
        GpuVendor::Other => "other",
    }
}

const RUNTIMES: [RuntimeKind; 3] = [
    RuntimeKind::Builtin,
    RuntimeKind::Blender,
    RuntimeKind::Process,
];
const VENDORS: [GpuVendor; 5] = [
    GpuVendor::Nvidia,
    GpuVendor::Amd,
    GpuVendor::Intel,
    GpuVendor::Apple,
    GpuVendor::Other,
];

/// Index of a runtime kind in `0..3`.
pub(crate) fn runtime_index(kind: RuntimeKind) -> usize {
    match kind {
        RuntimeKind::Builtin => 0,
        RuntimeKind::Blender => 1,
        RuntimeKind::Process => 2,
    }
}

/// Index of a GPU vendor in `0..5`.
pub(crate) fn vendor_index(vendor: GpuVendor) -> usize {
    match vendor {
        GpuVendor::Nvidia => 0,
        GpuVendor::Amd => 1,
        GpuVendor::Intel => 2,
        GpuVendor::Apple => 3,
        GpuVendor::Other => 4,
    }
}

/// A set of runtime kinds (bit `i` = kind `i` in builtin, blender, process order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuntimeSet(pub u8);

impl RuntimeSet {
    /// Whether `kind` is in the set.
    pub fn contains(&self, kind: RuntimeKind) -> bool {
        self.0 & (1 << runtime_index(kind)) != 0
    }
}

impl fmt::Display for RuntimeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = RUNTIMES
            .iter()
            .filter(|k| self.contains(**k))
            .map(|k| runtime_name(*k))
            .collect();
        if names.is_empty() {
            f.write_str("no runtime")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// A set of GPU vendors (bit `i` = vendor `i` in nvidia, amd, intel, apple, other order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VendorSet(pub u8);

impl VendorSet {
    /// Whether `vendor` is in the set.
    pub fn contains(&self, vendor: GpuVendor) -> bool {
        self.0 & (1 << vendor_index(vendor)) != 0
    }
}

impl fmt::Display for VendorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = VENDORS
            .iter()
            .filter(|v| self.contains(**v))
            .map(|v| vendor_name(*v))
            .collect();
        if names.is_empty() {
            f.write_str("no GPU")
        } else {
            write!(f, "{} GPU", names.join(", "))
        }
    }
}

/// Bytes for people: whole GiB when exact, else one decimal of GiB, or MiB below 1 GiB.
pub(crate) fn fmt_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        if bytes.is_multiple_of(GIB) {
            format!("{} GiB", bytes / GIB)
        } else {
            let tenths = u128::from(bytes) * 10 / u128::from(GIB);
            format!("{}.{} GiB", tenths / 10, tenths % 10)
        }
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

/// Why a worker does not meet a job's requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Unmet {
    /// The node does not take the worker role.
    #[error("this node does not take the worker role")]
    NotAWorker,
    /// No runtime of the job's kind.
    #[error("no runtime {}: this node has {has}", runtime_name(*.kind))]
    NoRuntime {
        /// The runtime the job needs.
        kind: RuntimeKind,
        /// The runtimes the node has.
        has: RuntimeSet,
    },
    /// The runtime is there but older than required.
    #[error("no runtime {} >= {min}: this node has {} {best}", runtime_name(*.kind), runtime_name(*.kind))]
    RuntimeTooOld {
        /// The runtime.
        kind: RuntimeKind,
        /// The minimum version.
        min: Version,
        /// The newest version the node has.
        best: Version,
    },
    /// No GPU of the required vendor.
    #[error("no {} GPU: this node has {has}", vendor_name(*.vendor))]
    NoGpuVendor {
        /// The vendor required.
        vendor: GpuVendor,
        /// The vendors the node has.
        has: VendorSet,
    },
    /// No (suitable) GPU with enough video memory.
    #[error("{}", vram_text(*.vendor, *.min_bytes, *.best_bytes))]
    Vram {
        /// The vendor required, if any.
        vendor: Option<GpuVendor>,
        /// The minimum VRAM of one GPU.
        min_bytes: u64,
        /// The most VRAM of one suitable GPU here (0: no GPU).
        best_bytes: u64,
    },
    /// Not enough RAM.
    #[error("needs {} of RAM: this node has {}", fmt_bytes(*.min_bytes), fmt_bytes(*.found_bytes))]
    Ram {
        /// The minimum.
        min_bytes: u64,
        /// What the node has.
        found_bytes: u64,
    },
    /// The node asks more than the job pays.
    #[error("this node asks {asked} credits per task, above the job's ceiling of {ceiling}")]
    Price {
        /// The job's ceiling per task.
        ceiling: u64,
        /// The node's asking price.
        asked: u64,
    },
}

fn vram_text(vendor: Option<GpuVendor>, min: u64, best: u64) -> String {
    let which = vendor.map_or(String::new(), |v| format!("{} ", vendor_name(v)));
    if best == 0 {
        format!(
            "needs a {which}GPU with {} of VRAM: this node has none",
            fmt_bytes(min)
        )
    } else {
        format!(
            "needs a {which}GPU with {} of VRAM: the largest here has {}",
            fmt_bytes(min),
            fmt_bytes(best)
        )
    }
}

/// What a job needs of a worker, parsed once from its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// Runtime kind.
    pub runtime: RuntimeKind,
    /// Minimum runtime version, if any.
    pub min_version: Option<Version>,
    /// Required GPU vendor, if any.
    pub vendor: Option<GpuVendor>,
    /// Minimum VRAM of one GPU (0: no GPU needed unless a vendor is required).
    pub min_vram_bytes: u64,
    /// Minimum RAM.
    pub min_ram_bytes: u64,
    /// Most the job pays per task.
    pub max_price: u64,
}

impl Need {
    /// The needs of a job.
    pub fn of(spec: &JobSpec) -> Need {
        let r = &spec.requirements;
        Need {
            runtime: runtime_of(&spec.kind),
            min_version: r.min_runtime_version.as_deref().map(Version::parse),
            vendor: r.gpu_vendor,
            min_vram_bytes: r.min_vram_bytes,
            min_ram_bytes: r.min_ram_bytes,
            max_price: spec.max_price_per_task,
        }
    }

    /// Whether a worker meets these needs; the first unmet requirement
    /// otherwise (role, runtime, GPU vendor, VRAM, RAM, price, in that order).
    pub fn check(&self, p: &Profile) -> Result<(), Unmet> {
        if !p.is_worker {
            return Err(Unmet::NotAWorker);
        }
        let best = p
            .runtimes
            .iter()
            .filter(|(k, _)| *k == self.runtime)
            .map(|(_, v)| *v)
            .max();
        let Some(best) = best else {
            return Err(Unmet::NoRuntime {
                kind: self.runtime,
                has: p.runtime_set(),
            });
        };
        if let Some(min) = self.min_version
            && best < min
        {
            return Err(Unmet::RuntimeTooOld {
                kind: self.runtime,
                min,
                best,
            });
        }
        if let Some(vendor) = self.vendor
            && !p.gpus.iter().any(|(v, _)| *v == vendor)
        {
            return Err(Unmet::NoGpuVendor {
                vendor,
                has: p.vendor_set(),
            });
        }
        if self.min_vram_bytes > 0 {
            let best_vram = self.best_vram(p);
            if best_vram < self.min_vram_bytes {
                return Err(Unmet::Vram {
                    vendor: self.vendor,
                    min_bytes: self.min_vram_bytes,
                    best_bytes: best_vram,
                });
            }
        }
        if p.ram_bytes < self.min_ram_bytes {
            return Err(Unmet::Ram {
                min_bytes: self.min_ram_bytes,
                found_bytes: p.ram_bytes,
            });
        }
        if p.price > self.max_price {
            return Err(Unmet::Price {
                ceiling: self.max_price,
                asked: p.price,
            });
        }
        Ok(())
    }

    /// The most VRAM of one GPU of the required vendor (any vendor if none).
    fn best_vram(&self, p: &Profile) -> u64 {
        p.gpus
            .iter()
            .filter(|(v, _)| self.vendor.is_none_or(|want| want == *v))
            .map(|(_, b)| *b)
            .max()
            .unwrap_or(0)
    }
}

/// What placement needs of a worker's advert, parsed once per advert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Takes the worker role.
    pub is_worker: bool,
    /// Runtimes with parsed versions.
    pub runtimes: Vec<(RuntimeKind, Version)>,
    /// GPUs: vendor and VRAM.
    pub gpus: Vec<(GpuVendor, u64)>,
    /// RAM.
    pub ram_bytes: u64,
    /// Asking price per task.
    pub price: u64,
    /// Benchmark, milli-frames per minute.
    pub bench_mfpm: u64,
    /// Task slots.
    pub max_tasks: u16,
    /// Tasks running when advertised.
    pub running_tasks: u16,
}

impl Profile {
    /// The profile of an advert.
    pub fn of(advert: &CapacityAdvert) -> Profile {
        Profile {
            is_worker: advert.roles.contains(&Role::Worker),
            runtimes: advert
                .runtimes
                .iter()
                .map(|r| (r.kind, Version::parse(&r.version)))
                .collect(),
            gpus: advert
                .gpus
                .iter()
                .map(|g| (g.vendor, g.vram_bytes))
                .collect(),
            ram_bytes: advert.ram_bytes,
            price: advert.price_per_task,
            bench_mfpm: advert.bench_mfpm,
            max_tasks: advert.max_tasks,
            running_tasks: advert.running_tasks,
        }
    }

    /// The runtime kinds present.
    pub fn runtime_set(&self) -> RuntimeSet {
        RuntimeSet(
            self.runtimes
                .iter()
                .fold(0, |acc, (k, _)| acc | (1 << runtime_index(*k))),
        )
    }

    /// The GPU vendors present.
    pub fn vendor_set(&self) -> VendorSet {
        VendorSet(
            self.gpus
                .iter()
                .fold(0, |acc, (v, _)| acc | (1 << vendor_index(*v))),
        )
    }

    /// Whether `Profile::of(advert)` would equal this profile, without
    /// building it (no allocation: the scheduler's path for the periodic
    /// advert whose content did not change).
    pub fn matches(&self, advert: &CapacityAdvert) -> bool {
        self.running_tasks == advert.running_tasks && self.matches_but_load(advert)
    }

    /// [`Profile::matches`] but for `running_tasks`: whether the profile of
    /// `advert` is this one with the advertised load replaced (the advert of
    /// a node that started or finished a task).
    pub fn matches_but_load(&self, advert: &CapacityAdvert) -> bool {
        self.is_worker == advert.roles.contains(&Role::Worker)
            && self.ram_bytes == advert.ram_bytes
            && self.price == advert.price_per_task
            && self.bench_mfpm == advert.bench_mfpm
            && self.max_tasks == advert.max_tasks
            && self.runtimes.len() == advert.runtimes.len()
            && self
                .runtimes
                .iter()
                .zip(&advert.runtimes)
                .all(|((k, v), r)| *k == r.kind && *v == Version::parse(&r.version))
            && self.gpus.len() == advert.gpus.len()
            && self
                .gpus
                .iter()
                .zip(&advert.gpus)
                .all(|((v, m), g)| *v == g.vendor && *m == g.vram_bytes)
    }

    /// Slots free by the advert alone (`max_tasks − running_tasks`).
    pub fn advertised_free(&self) -> u16 {
        self.max_tasks.saturating_sub(self.running_tasks)
    }
}

/// Whether the node of `advert` meets the requirements of `spec`.
///
/// The one requirements rule: the scheduler filters candidates with it and a
/// worker re-checks every offer with it.
pub fn meets(advert: &CapacityAdvert, spec: &JobSpec) -> Result<(), Unmet> {
    Need::of(spec).check(&Profile::of(advert))
}

/// Weights of the score parts, and the benchmark that counts as full speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreWeights {
    /// How closely the worker's GPU and RAM fit the job (no waste of a big GPU).
    pub fit: u32,
    /// Free slots over total slots.
    pub load: u32,
    /// Reputation, per mille (neutral 500).
    pub reputation: u32,
    /// Cheaper than the ceiling.
    pub price: u32,
    /// Same region as the creator.
    pub proximity: u32,
    /// Benchmark speed, up to `full_speed_mfpm`.
    pub speed: u32,
    /// The benchmark that earns the full speed part.
    pub full_speed_mfpm: u64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            fit: 1,
            load: 2,
            reputation: 2,
            price: 1,
            proximity: 1,
            speed: 1,
            full_speed_mfpm: 200_000,
        }
    }
}

/// Neutral reputation, per mille.
pub const NEUTRAL_REPUTATION: u16 = 500;

/// What varies per candidate beyond its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Free slots as this scheduler sees them.
    pub free_slots: u16,
    /// Reputation, per mille.
    pub reputation: u16,
    /// In the creator's region.
    pub same_region: bool,
}

fn permille(num: u64, den: u64) -> u64 {
    if den == 0 {
        return 1000;
    }
    (u128::from(num) * 1000 / u128::from(den)).min(1000) as u64
}

/// The score of a candidate that meets `need` (higher is better): each part
/// is 0..=1000, times its weight.
///
/// * fit: VRAM fit `min_vram / vram` of the best suitable GPU (a GPU job) or
///   500 for a GPU node taking a CPU job, averaged with RAM fit `min_ram / ram`;
/// * load: `free_slots / max_tasks`;
/// * reputation: as given;
/// * price: `(ceiling − price) / ceiling`;
/// * proximity: 1000 in the creator's region, else 0;
/// * speed: `bench / full_speed`, capped.
pub fn score(need: &Need, p: &Profile, standing: Standing, w: &ScoreWeights) -> u64 {
    let gpu_fit = if need.min_vram_bytes > 0 {
        permille(need.min_vram_bytes, need.best_vram(p))
    } else if need.vendor.is_none() && !p.gpus.is_empty() {
        500
    } else {
        1000
    };
    let ram_fit = if need.min_ram_bytes > 0 {
        permille(need.min_ram_bytes, p.ram_bytes)
    } else {
        1000
    };
    let fit = (gpu_fit + ram_fit) / 2;
    let load = permille(u64::from(standing.free_slots), u64::from(p.max_tasks));
    let reputation = u64::from(standing.reputation.min(1000));
    let price = permille(need.max_price.saturating_sub(p.price), need.max_price);
    let proximity = if standing.same_region { 1000 } else { 0 };
    let speed = permille(p.bench_mfpm, w.full_speed_mfpm);
    fit * u64::from(w.fit)
        + load * u64::from(w.load)
        + reputation * u64::from(w.reputation)
        + price * u64::from(w.price)
        + proximity * u64::from(w.proximity)
        + speed * u64::from(w.speed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeId;
    use crate::wire::{GpuInfo, Requirements, RuntimeInfo, samples};
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn spec(kind: JobKind, req: Requirements, ceiling: u64) -> JobSpec {
        let creator = NodeId::from_bytes([1; 32]);
        JobSpec {
            id: crate::wire::JobId::derive(&creator, 1),
            creator,
            nonce: 1,
            created_at_ms: 0,
            kind,
            inputs: vec![],
            requirements: req,
            split: crate::wire::SplitRule::Frames {
                start: 1,
                end: 1,
                step: 1,
            },
            width: 64,
            height: 64,
            format: crate::wire::ImageFormat::Png,
            max_price_per_task: ceiling,
            verification: crate::wire::VerificationPolicy::None,
            deadline_ms: u64::MAX,
        }
    }

    fn blender() -> JobKind {
        JobKind::Blender {
            engine: crate::wire::BlenderEngine::Cycles,
        }
    }

    fn advert() -> CapacityAdvert {
        let mut a = samples::capacity(NodeId::from_bytes([2; 32]));
        a.runtimes.push(RuntimeInfo {
            kind: RuntimeKind::Blender,
            version: "3.4.1".into(),
        });
        a
    }

    /// `matches` says exactly whether the advert's profile equals this one.
    #[test]
    fn profile_matches_iff_the_built_profile_is_equal() {
        let base = advert();
        let p = Profile::of(&base);
        let mutations: [&dyn Fn(&mut CapacityAdvert); 9] = [
            &|_| {},
            &|a| a.running_tasks += 1,
            &|a| a.max_tasks += 1,
            &|a| a.price_per_task += 1,
            &|a| a.runtimes[1].version = "3.4.2".into(),
            &|a| a.runtimes[1].version = "3.4.1.0".into(), // parses equal
            &|a| a.gpus.clear(),
            &|a| a.roles.clear(),
            &|a| a.cpu_model = "other".into(), // not in the profile
        ];
        for (i, m) in mutations.iter().enumerate() {
            let mut a = base.clone();
            m(&mut a);
            assert_eq!(p.matches(&a), Profile::of(&a) == p, "mutation {i}");
            // The same question with the load taken from the advert.
            let mut load = p.clone();
            load.running_tasks = a.running_tasks;
            assert_eq!(
                p.matches_but_load(&a),
                Profile::of(&a) == load,
                "mutation {i}"
            );
        }
        let mut a = base.clone();
        a.running_tasks += 1;
        assert!(!p.matches(&a));
    }

    #[test]
    fn versions_compare_as_dotted_numbers() {
        assert_eq!(compare_versions("3.6", "3.6.0"), Ordering::Equal);
        assert_eq!(compare_versions("4.10", "4.9"), Ordering::Greater);
        assert_eq!(compare_versions("3.4.1", "3.6"), Ordering::Less);
        assert_eq!(compare_versions("4.1-rc1", "4.1"), Ordering::Equal);
        assert_eq!(compare_versions("", "0"), Ordering::Equal);
        assert_eq!(Version::parse("99999999999").0[0], u32::MAX);
        assert_eq!(Version::parse("3.4.1").to_string(), "3.4.1");
        assert_eq!(Version::parse("4").to_string(), "4.0");
    }

    #[test]
    fn meets_every_requirement() {
        let req = Requirements {
            gpu_vendor: Some(GpuVendor::Nvidia),
            min_vram_bytes: 16 * GIB,
            min_ram_bytes: 32 * GIB,
            min_runtime_version: Some("3.4".into()),
        };
        assert_eq!(meets(&advert(), &spec(blender(), req, 10)), Ok(()));
    }

    #[test]
    fn each_unmet_requirement_is_named() {
        let base = spec(blender(), Requirements::default(), 10);
        let mut a = advert();
        a.roles = vec![Role::Scheduler];
        assert_eq!(meets(&a, &base), Err(Unmet::NotAWorker));
        assert_eq!(
            Unmet::NotAWorker.to_string(),
            "this node does not take the worker role"
        );

        let a = samples::capacity(NodeId::from_bytes([2; 32]));
        let e = meets(&a, &base).unwrap_err();
        assert_eq!(e.to_string(), "no runtime blender: this node has builtin");

        let mut s = base.clone();
        s.requirements.min_runtime_version = Some("3.6".into());
        let e = meets(&advert(), &s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no runtime blender >= 3.6: this node has blender 3.4.1"
        );

        let mut s = base.clone();
        s.requirements.gpu_vendor = Some(GpuVendor::Amd);
        let e = meets(&advert(), &s).unwrap_err();
        assert_eq!(e.to_string(), "no amd GPU: this node has nvidia GPU");
        let mut cpu = advert();
        cpu.gpus.clear();
        assert_eq!(
            meets(&cpu, &s).unwrap_err().to_string(),
            "no amd GPU: this node has no GPU"
        );

        let mut s = base.clone();
        s.requirements.min_vram_bytes = 48 * GIB;
        let e = meets(&advert(), &s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "needs a GPU with 48 GiB of VRAM: the largest here has 24 GiB"
        );
        assert_eq!(
            meets(&cpu, &s).unwrap_err().to_string(),
            "needs a GPU with 48 GiB of VRAM: this node has none"
        );

        let mut s = base.clone();
        s.requirements.min_ram_bytes = 96 * GIB + GIB / 2;
        assert_eq!(
            meets(&advert(), &s).unwrap_err().to_string(),
            "needs 96.5 GiB of RAM: this node has 64 GiB"
        );

        let s = spec(blender(), Requirements::default(), 9);
        assert_eq!(
            meets(&advert(), &s).unwrap_err().to_string(),
            "this node asks 10 credits per task, above the job's ceiling of 9"
        );
    }

    #[test]
    fn vram_counts_one_gpu_of_the_vendor() {
        let mut a = advert();
        a.gpus = vec![
            GpuInfo {
                vendor: GpuVendor::Amd,
                model: "x".into(),
                vram_bytes: 32 * GIB,
            },
            GpuInfo {
                vendor: GpuVendor::Nvidia,
                model: "y".into(),
                vram_bytes: 8 * GIB,
            },
            GpuInfo {
                vendor: GpuVendor::Nvidia,
                model: "y".into(),
                vram_bytes: 8 * GIB,
            },
        ];
        let req = Requirements {
            gpu_vendor: Some(GpuVendor::Nvidia),
            min_vram_bytes: 16 * GIB,
            ..Default::default()
        };
        assert!(matches!(
            meets(&a, &spec(blender(), req.clone(), 10)),
            Err(Unmet::Vram {
                best_bytes,
                ..
            }) if best_bytes == 8 * GIB
        ));
        let any = Requirements {
            gpu_vendor: None,
            ..req
        };
        assert_eq!(meets(&a, &spec(blender(), any, 10)), Ok(()));
    }

    #[test]
    fn score_prefers_cheap_free_reputable_nearby() {
        let need = Need::of(&spec(blender(), Requirements::default(), 20));
        let p = Profile::of(&advert());
        let w = ScoreWeights::default();
        let base = Standing {
            free_slots: 1,
            reputation: NEUTRAL_REPUTATION,
            same_region: false,
        };
        let s0 = score(&need, &p, base, &w);
        assert!(
            score(
                &need,
                &p,
                Standing {
                    free_slots: 3,
                    ..base
                },
                &w
            ) > s0
        );
        assert!(
            score(
                &need,
                &p,
                Standing {
                    reputation: 900,
                    ..base
                },
                &w
            ) > s0
        );
        assert!(
            score(
                &need,
                &p,
                Standing {
                    same_region: true,
                    ..base
                },
                &w
            ) > s0
        );
        let mut cheap = p.clone();
        cheap.price = 1;
        assert!(score(&need, &cheap, base, &w) > s0);
        let mut huge = p.clone();
        huge.ram_bytes = u64::MAX;
        huge.bench_mfpm = u64::MAX;
        // Never overflows whatever a peer advertises.
        let _ = score(&need, &huge, base, &w);
    }

    proptest! {
        /// The check agrees with a direct reading of each requirement.
        #[test]
        fn check_matches_the_rules(
            adv in crate::wire::strategies::capacity(),
            job in crate::wire::strategies::job_spec(),
        ) {
            let r = meets(&adv, &job);
            let kind = runtime_of(&job.kind);
            let versions: Vec<Version> = adv.runtimes.iter().filter(|x| x.kind == kind).map(|x| Version::parse(&x.version)).collect();
            let runtime_ok = versions.iter().any(|v| job.requirements.min_runtime_version.as_deref().is_none_or(|m| *v >= Version::parse(m)));
            let gpu_ok = (job.requirements.gpu_vendor.is_none() && job.requirements.min_vram_bytes == 0)
                || adv.gpus.iter().any(|g| job.requirements.gpu_vendor.is_none_or(|v| v == g.vendor) && g.vram_bytes >= job.requirements.min_vram_bytes);
            let expect = adv.roles.contains(&Role::Worker)
                && runtime_ok
                && gpu_ok
                && adv.ram_bytes >= job.requirements.min_ram_bytes
                && adv.price_per_task <= job.max_price_per_task;
            prop_assert_eq!(r.is_ok(), expect, "{:?}", r);
        }

        /// Dotted comparison is a total order consistent with numbers.
        #[test]
        fn version_order(a in proptest::collection::vec(0u32..50, 1..5), b in proptest::collection::vec(0u32..50, 1..5)) {
            let sa = a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(".");
            let sb = b.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(".");
            let pad = |v: &Vec<u32>| { let mut p = v.clone(); p.resize(4, 0); p };
            prop_assert_eq!(compare_versions(&sa, &sb), pad(&a).cmp(&pad(&b)));
        }
    }
}
