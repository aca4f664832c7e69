//! Scenarios: what a run simulates, read from TOML.
//!
//! Every field has a default, so a scenario file names only what it changes
//! (`sim/scenarios/*.toml` are documented examples; `sim/README.md` explains
//! each model). [`Scenario::load`] reads a file, applies `--set`-style
//! overrides (`churn.rate=0.2`: a dotted path into the TOML document, the
//! value parsed as TOML), and checks every field. Maps are `BTreeMap`s, so
//! nothing about a scenario depends on hash order.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::dist::Dist;

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Short name (file names, tables).
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Seed of every random stream (`--seed` overrides).
    pub seed: u64,
    /// Simulated time during which jobs arrive, seconds.
    pub duration_s: u64,
    /// After arrivals stop, run at most this much longer for jobs to finish.
    pub drain_s: u64,
    /// Period of the time series (utilization, queue), seconds.
    pub sample_s: u64,
    /// Mesh settings: the protocol machines' configuration.
    pub mesh: Mesh,
    /// The network model.
    pub net: Net,
    /// Regions and their share of nodes.
    pub regions: Vec<Region>,
    /// GPU classes.
    pub gpu_classes: Vec<GpuClass>,
    /// Node groups.
    pub groups: Vec<Group>,
    /// Churn.
    pub churn: Churn,
    /// Job arrivals.
    pub arrivals: Arrivals,
    /// Job shapes.
    pub jobs: Jobs,
    /// Worker failures.
    pub failures: Failures,
    /// Dishonest workers.
    pub dishonest: Dishonest,
    /// The credit ledger.
    pub ledger: LedgerSim,
    /// Result verification and reputation.
    pub trust: Trust,
    /// What is written besides the summary.
    pub output: Output,
}

/// The credit ledger (sim/README.md, "Credits and the ledger").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSim {
    /// Drive `protocol::ledger::Ledger` with the escrow, refund and settle
    /// events of the run, really signed (every node gets a signing key).
    /// Costs about 0.2 ms of CPU per task: for scenarios up to a few
    /// thousand nodes.
    pub enabled: bool,
}

/// Result verification and reputation (sim/README.md, "Trust").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Trust {
    /// The jobs' verification policy: `none`, `quorum`, `spot-check`, or
    /// `default` (`verify::default_policy` of the job kind: quorum for
    /// builtin jobs, spot-check for Blender).
    pub policy: String,
    /// Sampled fraction of tasks, per mille (quorum and spot-check).
    pub sample_permille: u16,
    /// Quorum: independent workers per sampled task.
    pub k: u8,
    /// Spot-check: crop side as a fraction of the region's, per mille.
    pub crop_permille: u16,
    /// Spot-check: least similarity that passes, per mille.
    pub min_similarity_milli: u16,
    /// Each scheduler keeps a `ReputationBook` fed with its `Outcome`s and
    /// sets every worker's score and probation from it; new nodes start on
    /// probation (as the node does with a book). Off: no book, no
    /// probation (as the node runs without one).
    pub reputation: bool,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            policy: "none".into(),
            sample_permille: 100,
            k: 2,
            crop_permille: 250,
            min_similarity_milli: 900,
            reputation: false,
        }
    }
}

impl Trust {
    /// The policy of a job of `kind`.
    pub fn policy_for(
        &self,
        kind: &rendertrust_protocol::wire::JobKind,
    ) -> Result<rendertrust_protocol::wire::VerificationPolicy> {
        use rendertrust_protocol::wire::VerificationPolicy as P;
        let p = match self.policy.as_str() {
            "none" => P::None,
            "quorum" => P::Quorum {
                sample_permille: self.sample_permille,
                k: self.k,
            },
            "spot-check" => P::SpotCheck {
                sample_permille: self.sample_permille,
                crop_permille: self.crop_permille,
                min_similarity_milli: self.min_similarity_milli,
            },
            "default" => rendertrust_protocol::verify::default_policy(kind),
            other => {
                bail!("trust.policy: expected none, quorum, spot-check or default, found {other:?}")
            }
        };
        rendertrust_protocol::verify::check_policy(&p)
            .map_err(|e| anyhow::anyhow!("trust: {e}"))?;
        Ok(p)
    }
}

/// The protocol machines' settings, as a node's config would set them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mesh {
    /// Capacity advert period of meshes up to `advert_interval_s ×
    /// advert_mesh_rate` nodes (node default 10 s): `RefreshPolicy::base_ms`.
    pub advert_interval_s: u64,
    /// Longest capacity advert period, however large the mesh (default
    /// 300 s): `RefreshPolicy::max_ms`.
    pub advert_max_interval_s: u64,
    /// Periodic adverts a second the whole mesh aims at (default 1 000): a
    /// node re-advertises unchanged capacity every
    /// `clamp(known nodes × 1000 / rate, interval, max interval)` ms
    /// (`RefreshPolicy::mesh_rate_per_s`).
    pub advert_mesh_rate: u64,
    /// Capacity entry lifetime (node default 30 s).
    pub capacity_ttl_s: u64,
    /// Worker heartbeat period (`WorkerConfig`, default 10 s).
    pub heartbeat_interval_s: u64,
    /// Scheduler: silent workers lose their task after this (default 30 s).
    pub heartbeat_timeout_s: u64,
    /// Scheduler: how long an offer reserves a worker (default 10 s).
    pub reserve_s: u64,
    /// Scheduler: per-task deadline after the offer (default 2 h).
    pub task_timeout_s: u64,
    /// Scheduler: lost or failed attempts before a task fails (default 3).
    pub max_attempts: u8,
    /// Scheduler: power-of-d choices (default 2).
    pub choices: usize,
    /// Scheduler: jobs owned at once, finished ones until pruned (default 1024).
    pub max_jobs: usize,
    /// Scheduler: jobs kept as a replica (default 1024).
    pub max_replicas: usize,
    /// Scheduler: finished jobs kept this long (default 600 s).
    pub finished_retention_s: u64,
    /// Scheduler: finished jobs that were taken over kept this long, if
    /// longer (default 3600 s), so a former owner coming back yields.
    pub takeover_retention_s: u64,
    /// Scheduler: retry period of a job whose tasks found nobody (default 1 s).
    pub retry_s: u64,
    /// Scheduler: least time between replications of a job (default 2 s).
    pub replicate_interval_s: u64,
    /// How often a scheduler node sweeps expired capacity entries.
    pub table_sweep_s: u64,
    /// The job service reads the capacity table into its scheduler this
    /// long after the first change since its last read (`CAPACITY_DEBOUNCE`
    /// in node/src/jobs/service.rs, 50 ms); 0: every advert reaches the
    /// scheduler as it arrives.
    pub capacity_debounce_ms: u64,
}

impl Mesh {
    /// The nodes' advert refresh policy.
    pub fn refresh_policy(&self) -> rendertrust_protocol::capacity::RefreshPolicy {
        rendertrust_protocol::capacity::RefreshPolicy {
            base_ms: self.advert_interval_s.saturating_mul(1000),
            max_ms: self.advert_max_interval_s.saturating_mul(1000),
            mesh_rate_per_s: self.advert_mesh_rate,
        }
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh {
            advert_interval_s: 10,
            advert_max_interval_s: 300,
            advert_mesh_rate: 1_000,
            capacity_ttl_s: 30,
            heartbeat_interval_s: 10,
            heartbeat_timeout_s: 30,
            reserve_s: 10,
            task_timeout_s: 7200,
            max_attempts: 3,
            choices: 2,
            max_jobs: 1024,
            max_replicas: 1024,
            finished_retention_s: 600,
            takeover_retention_s: 3600,
            retry_s: 1,
            replicate_interval_s: 2,
            table_sweep_s: 5,
            capacity_debounce_ms: 50,
        }
    }
}

/// The network model (see sim/README.md, "Network").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Net {
    /// One-way base latency between regions, ms: `latency_ms[i][j]` from
    /// region `i` to region `j` (the diagonal is within a region). Missing
    /// entries default to 50 ms (10 ms on the diagonal).
    pub latency_ms: Vec<Vec<f64>>,
    /// Extra delay per message, on top of the base (ms).
    pub jitter: Dist,
    /// Probability that a request/response exchange fails (the sender sees
    /// a timeout).
    pub rpc_loss: f64,
    /// Probability that a gossiped message never reaches one subscriber.
    pub gossip_loss: f64,
    /// How long a sender waits before an exchange counts as failed.
    pub rpc_timeout_s: f64,
    /// Gossipsub mesh degree: messages travel ⌈log_D(N)⌉ hops.
    pub gossip_degree: u32,
    /// Validation and forwarding delay per gossip hop (ms).
    pub gossip_hop_ms: f64,
    /// How long finding the live schedulers takes (Kademlia provider lookup), ms.
    pub lookup_ms: f64,
}

impl Default for Net {
    fn default() -> Self {
        Net {
            latency_ms: Vec::new(),
            jitter: Dist::Exponential { mean: 2.0 },
            rpc_loss: 0.0,
            gossip_loss: 0.0,
            rpc_timeout_s: 10.0,
            gossip_degree: 6,
            gossip_hop_ms: 3.0,
            lookup_ms: 200.0,
        }
    }
}

/// A region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Region {
    /// Its label (as in adverts).
    pub name: String,
    /// Share of nodes placed in it (relative weight).
    pub weight: f64,
}

impl Default for Region {
    fn default() -> Self {
        Region {
            name: "eu-west".into(),
            weight: 1.0,
        }
    }
}

/// A class of worker hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuClass {
    /// Name (e.g. `rtx4090`).
    pub name: String,
    /// Share of workers (relative weight).
    pub weight: f64,
    /// `nvidia`, `amd`, `intel`, `apple`, `other`, or `none` (CPU only).
    pub vendor: String,
    /// Video memory, GiB.
    pub vram_gb: u64,
    /// Render speed relative to the reference (job `seconds_per_frame` are at 1.0).
    pub speed: f64,
    /// Task slots (`max_tasks`).
    pub slots: u16,
    /// Asking price per task, credits.
    pub price: u64,
    /// Download bandwidth, Mbit/s.
    pub down_mbps: f64,
    /// Upload bandwidth, Mbit/s.
    pub up_mbps: f64,
}

impl Default for GpuClass {
    fn default() -> Self {
        GpuClass {
            name: "rtx3080".into(),
            weight: 1.0,
            vendor: "nvidia".into(),
            vram_gb: 10,
            speed: 1.0,
            slots: 1,
            price: 10,
            down_mbps: 200.0,
            up_mbps: 50.0,
        }
    }
}

/// A group of nodes with the same roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Group {
    /// Name (in the per-node CSV).
    pub name: String,
    /// Nodes in the group.
    pub count: usize,
    /// Roles: any of `worker`, `scheduler`, `creator` (submits jobs).
    pub roles: Vec<String>,
    /// Region weights for this group (default: the global `regions` weights).
    pub regions: BTreeMap<String, f64>,
    /// GPU class weights for this group's workers (default: the classes' weights).
    pub classes: BTreeMap<String, f64>,
    /// Whether churn and regional outages apply to this group.
    pub churn: bool,
    /// Whether dishonest behaviours may be drawn for this group's workers.
    pub dishonest: bool,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            name: "workers".into(),
            count: 100,
            roles: vec!["worker".into()],
            regions: BTreeMap::new(),
            classes: BTreeMap::new(),
            churn: true,
            dishonest: true,
        }
    }
}

/// Churn: nodes leave and come back (sim/README.md, "Churn").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Fraction of the churning nodes that leave per hour (0: no churn).
    /// Sets the mean session to `1 / rate` hours; `session` gives the shape.
    pub rate: f64,
    /// Shape of session lengths; its mean is replaced by `1 / rate` hours.
    pub session: Dist,
    /// Time away before a node comes back (none: it never returns).
    pub offline: Option<Dist>,
    /// Correlated outages of a region.
    pub outages: Vec<Outage>,
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            rate: 0.0,
            session: Dist::Exponential { mean: 3600.0 },
            offline: Some(Dist::Exponential { mean: 600.0 }),
            outages: Vec::new(),
        }
    }
}

/// A region going dark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Outage {
    /// The region.
    pub region: String,
    /// Start, seconds into the run.
    pub at_s: u64,
    /// Length, seconds.
    pub duration_s: u64,
    /// Fraction of the region's churning nodes that go down.
    pub fraction: f64,
}

impl Default for Outage {
    fn default() -> Self {
        Outage {
            region: "eu-west".into(),
            at_s: 600,
            duration_s: 600,
            fraction: 1.0,
        }
    }
}

/// How jobs arrive (sim/README.md, "Arrivals").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Arrivals {
    /// `poisson`, `bursts`, `diurnal` or `trace` (jobs at `at_s` only).
    pub process: String,
    /// Trace: submission times, seconds into the run.
    pub at_s: Vec<f64>,
    /// Mean jobs per hour; 0 to derive it from `load`.
    pub rate_per_hour: f64,
    /// Offered load: the fraction of the mesh's render capacity the mean
    /// arrival rate asks for (used when `rate_per_hour` is 0).
    pub load: f64,
    /// Bursts: one burst every this many seconds…
    pub burst_every_s: f64,
    /// …of this many jobs at once (on top of the Poisson background).
    pub burst_jobs: u32,
    /// Diurnal: the rate swings by ±this fraction…
    pub diurnal_amplitude: f64,
    /// …over this period (seconds).
    pub diurnal_period_s: f64,
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals {
            process: "poisson".into(),
            at_s: Vec::new(),
            rate_per_hour: 0.0,
            load: 0.5,
            burst_every_s: 1800.0,
            burst_jobs: 20,
            diurnal_amplitude: 0.5,
            diurnal_period_s: 86_400.0,
        }
    }
}

/// The shape of jobs (sim/README.md, "Jobs").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Jobs {
    /// Frames per job (one task per frame).
    pub frames: Dist,
    /// Render seconds per frame on the reference GPU (speed 1.0).
    pub seconds_per_frame: Dist,
    /// Per-task noise on the render time (log-normal sigma; 0: none).
    pub task_noise_sigma: f64,
    /// Input size, MB (fetched once per worker and job).
    pub input_mb: Dist,
    /// Output size per frame, MB (fetched by the creator).
    pub output_mb: Dist,
    /// `builtin` or `blender`.
    pub kind: String,
    /// Required VRAM, GiB (0: any).
    pub min_vram_gb: u64,
    /// Required GPU vendor, if any.
    pub gpu_vendor: Option<String>,
    /// Price ceiling per task.
    pub max_price_per_task: u64,
    /// Job deadline after submission, seconds.
    pub deadline_s: u64,
    /// Output width and height (only in the spec).
    pub width: u32,
    /// Output height.
    pub height: u32,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            frames: Dist::Uniform {
                min: 24.0,
                max: 240.0,
            },
            seconds_per_frame: Dist::Lognormal {
                mean: 30.0,
                sigma: 0.5,
            },
            task_noise_sigma: 0.1,
            input_mb: Dist::Fixed { value: 200.0 },
            output_mb: Dist::Fixed { value: 8.0 },
            kind: "blender".into(),
            min_vram_gb: 0,
            gpu_vendor: None,
            max_price_per_task: 100,
            deadline_s: 6 * 3600,
            width: 1920,
            height: 1080,
        }
    }
}

/// Worker failures (honest ones: crashes are churn).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Failures {
    /// Probability that a run fails (the worker reports it) at a uniform
    /// point of its run.
    pub task_fail_prob: f64,
}

impl Default for Failures {
    fn default() -> Self {
        Failures {
            task_fail_prob: 0.0,
        }
    }
}

/// Dishonest workers (sim/README.md, "Dishonest workers").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dishonest {
    /// Fraction of workers (in groups with `dishonest = true`) that misbehave.
    pub fraction: f64,
    /// Relative weights of the behaviours drawn for them.
    pub wrong: f64,
    /// Returns a made-up output after `lazy_time` of the work.
    pub lazy: f64,
    /// Runs `slow_factor` times slower than its class advertises.
    pub slow: f64,
    /// Accepts tasks, then never reports (heartbeats dropped).
    pub silent: f64,
    /// Fraction of the render time a lazy worker spends.
    pub lazy_time: f64,
    /// Slow-down of a slow worker.
    pub slow_factor: f64,
}

impl Default for Dishonest {
    fn default() -> Self {
        Dishonest {
            fraction: 0.0,
            wrong: 1.0,
            lazy: 1.0,
            slow: 1.0,
            silent: 1.0,
            lazy_time: 0.1,
            slow_factor: 3.0,
        }
    }
}

/// Optional outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Output {
    /// Write plots (SVG and PNG).
    pub plots: bool,
    /// Write `nodes.csv` (one row per node).
    pub nodes_csv: bool,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            plots: true,
            nodes_csv: true,
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            description: String::new(),
            seed: 1,
            duration_s: 3600,
            drain_s: 3600,
            sample_s: 60,
            mesh: Mesh::default(),
            net: Net::default(),
            regions: vec![Region::default()],
            gpu_classes: vec![GpuClass::default()],
            groups: vec![
                Group::default(),
                Group {
                    name: "schedulers".into(),
                    count: 2,
                    roles: vec!["scheduler".into()],
                    churn: false,
                    dishonest: false,
                    ..Group::default()
                },
                Group {
                    name: "creators".into(),
                    count: 4,
                    roles: vec!["creator".into()],
                    churn: false,
                    dishonest: false,
                    ..Group::default()
                },
            ],
            churn: Churn::default(),
            arrivals: Arrivals::default(),
            jobs: Jobs::default(),
            failures: Failures::default(),
            dishonest: Dishonest::default(),
            ledger: LedgerSim::default(),
            trust: Trust::default(),
            output: Output::default(),
        }
    }
}

/// Sets `path` (dotted, e.g. `churn.rate`; a number indexes an array, e.g.
/// `groups.0.count`) in a TOML document to `value` (parsed as a TOML value;
/// a bare word is taken as a string).
pub fn set_path(doc: &mut toml::Table, path: &str, value: &str) -> Result<()> {
    let parsed: toml::Value = match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    };
    let keys: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = keys.split_last() else {
        bail!("empty parameter path");
    };
    let mut here = doc;
    for k in parents {
        let next = match here.get(*k) {
            Some(toml::Value::Array(_)) => None,
            Some(toml::Value::Table(_)) => Some(()),
            Some(_) => bail!("{path}: {k} is not a table"),
            None => {
                here.insert(k.to_string(), toml::Value::Table(toml::Table::new()));
                Some(())
            }
        };
        here = match (next, here.get_mut(*k)) {
            (Some(()), Some(toml::Value::Table(t))) => t,
            _ => bail!("{path}: {k} is an array; index it, e.g. {k}.0"),
        };
    }
    here.insert(last.to_string(), parsed);
    Ok(())
}

/// Like [`set_path`], with array indices (`groups.0.count`).
fn set_indexed(doc: &mut toml::Table, path: &str, value: &str) -> Result<()> {
    let keys: Vec<&str> = path.split('.').collect();
    // Find the first numeric segment: everything after it lives in an array element.
    let Some(pos) = keys.iter().position(|k| k.parse::<usize>().is_ok()) else {
        return set_path(doc, path, value);
    };
    if pos == 0 || pos + 1 >= keys.len() {
        bail!("{path}: an index must follow an array name and precede a field");
    }
    let mut here: &mut toml::Table = doc;
    for k in &keys[..pos - 1] {
        here = match here.get_mut(*k) {
            Some(toml::Value::Table(t)) => t,
            _ => bail!("{path}: {k} is not a table"),
        };
    }
    let arr_name = keys[pos - 1];
    let index: usize = keys[pos].parse()?;
    let elem = match here.get_mut(arr_name) {
        Some(toml::Value::Array(a)) => a.get_mut(index),
        _ => bail!("{path}: {arr_name} is not an array in the scenario"),
    };
    match elem {
        Some(toml::Value::Table(t)) => set_indexed(t, &keys[pos + 1..].join("."), value),
        _ => bail!("{path}: {arr_name} has no element {index}"),
    }
}

impl Scenario {
    /// Parses TOML text, applies overrides (`path=value`), checks the result.
    pub fn parse(text: &str, overrides: &[(String, String)]) -> Result<Scenario> {
        let mut doc: toml::Table = text.parse().context("scenario is not valid TOML")?;
        for (k, v) in overrides {
            set_indexed(&mut doc, k, v).with_context(|| format!("setting {k}={v}"))?;
        }
        let sc: Scenario = toml::Value::Table(doc)
            .try_into()
            .context("scenario does not match the schema (see sim/README.md)")?;
        sc.check()?;
        Ok(sc)
    }

    /// Reads a scenario file.
    pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        Scenario::parse(&text, overrides).with_context(|| format!("scenario {}", path.display()))
    }

    /// The index of a region by name.
    pub fn region_index(&self, name: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name == name)
    }

    /// The index of a GPU class by name.
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.gpu_classes.iter().position(|c| c.name == name)
    }

    /// The kind of the scenario's jobs.
    pub fn job_kind(&self) -> rendertrust_protocol::wire::JobKind {
        use rendertrust_protocol::wire::{BlenderEngine, JobKind};
        if self.jobs.kind == "builtin" {
            JobKind::Builtin
        } else {
            JobKind::Blender {
                engine: BlenderEngine::Cycles,
            }
        }
    }

    /// Checks every field; the error says which and why.
    pub fn check(&self) -> Result<()> {
        self.trust.policy_for(&self.job_kind())?;
        let prob = |x: f64, what: &str| -> Result<()> {
            if !(0.0..=1.0).contains(&x) {
                bail!("{what} must be a probability in 0..=1, found {x}");
            }
            Ok(())
        };
        if self.duration_s == 0 || self.sample_s == 0 {
            bail!("duration_s and sample_s must be > 0");
        }
        if self.regions.is_empty() {
            bail!("at least one region is needed");
        }
        if self.gpu_classes.is_empty() {
            bail!("at least one gpu class is needed");
        }
        let m = &self.mesh;
        if m.advert_interval_s == 0 || m.capacity_ttl_s <= m.advert_interval_s {
            bail!(
                "mesh.capacity_ttl_s ({}) must exceed mesh.advert_interval_s ({}) > 0",
                m.capacity_ttl_s,
                m.advert_interval_s
            );
        }
        if m.advert_max_interval_s < m.advert_interval_s || m.advert_mesh_rate == 0 {
            bail!(
                "mesh.advert_max_interval_s ({}) must be at least mesh.advert_interval_s ({}), and mesh.advert_mesh_rate > 0",
                m.advert_max_interval_s,
                m.advert_interval_s
            );
        }
        if m.advert_max_interval_s
            > u64::from(rendertrust_protocol::wire::MAX_ADVERT_REFRESH_MS) / 1000
        {
            bail!(
                "mesh.advert_max_interval_s ({}) exceeds what an advert can announce ({} s)",
                m.advert_max_interval_s,
                rendertrust_protocol::wire::MAX_ADVERT_REFRESH_MS / 1000
            );
        }
        if m.heartbeat_interval_s == 0 || m.heartbeat_timeout_s <= m.heartbeat_interval_s {
            bail!("mesh.heartbeat_timeout_s must exceed mesh.heartbeat_interval_s > 0");
        }
        if m.table_sweep_s == 0 || m.reserve_s == 0 {
            bail!("mesh.table_sweep_s and mesh.reserve_s must be > 0");
        }
        let n = self.regions.len();
        if self.net.latency_ms.len() > n || self.net.latency_ms.iter().any(|r| r.len() > n) {
            bail!("net.latency_ms is larger than the {n} regions");
        }
        if self
            .net
            .latency_ms
            .iter()
            .flatten()
            .any(|x| !x.is_finite() || *x < 0.0)
        {
            bail!("net.latency_ms entries must be >= 0");
        }
        self.net
            .jitter
            .check("net.jitter")
            .map_err(anyhow::Error::msg)?;
        prob(self.net.rpc_loss, "net.rpc_loss")?;
        prob(self.net.gossip_loss, "net.gossip_loss")?;
        if !positive(self.net.rpc_timeout_s) || self.net.gossip_degree < 2 {
            bail!("net.rpc_timeout_s must be > 0 and net.gossip_degree >= 2");
        }
        for c in &self.gpu_classes {
            if vendor_of(&c.vendor).is_err() {
                bail!("gpu class {}: unknown vendor {:?}", c.name, c.vendor);
            }
            if !positive(c.speed) || c.slots == 0 || !positive(c.down_mbps) || !positive(c.up_mbps)
            {
                bail!(
                    "gpu class {}: speed, slots and bandwidths must be > 0",
                    c.name
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let (mut workers, mut schedulers, mut creators) = (0, 0, 0);
        for g in &self.groups {
            if !names.insert(&g.name) {
                bail!("group {} is defined twice", g.name);
            }
            for r in &g.roles {
                match r.as_str() {
                    "worker" => workers += g.count,
                    "scheduler" => schedulers += g.count,
                    "creator" => creators += g.count,
                    other => bail!(
                        "group {}: unknown role {other:?}; expected worker, scheduler or creator",
                        g.name
                    ),
                }
            }
            for name in g.regions.keys() {
                if self.region_index(name).is_none() {
                    bail!("group {}: unknown region {name}", g.name);
                }
            }
            for name in g.classes.keys() {
                if self.class_index(name).is_none() {
                    bail!("group {}: unknown gpu class {name}", g.name);
                }
            }
        }
        if workers == 0 || schedulers == 0 || creators == 0 {
            bail!(
                "a mesh needs workers, schedulers and creators; found {workers}, {schedulers}, {creators}"
            );
        }
        if !(self.churn.rate >= 0.0 && self.churn.rate.is_finite()) {
            bail!("churn.rate must be >= 0");
        }
        self.churn
            .session
            .check("churn.session")
            .map_err(anyhow::Error::msg)?;
        if let Some(o) = &self.churn.offline {
            o.check("churn.offline").map_err(anyhow::Error::msg)?;
        }
        for o in &self.churn.outages {
            if self.region_index(&o.region).is_none() {
                bail!("outage in unknown region {}", o.region);
            }
            prob(o.fraction, "churn.outages.fraction")?;
        }
        let a = &self.arrivals;
        match a.process.as_str() {
            "poisson" | "bursts" | "diurnal" | "trace" => {}
            p => bail!("arrivals.process {p:?}: expected poisson, bursts, diurnal or trace"),
        }
        if a.process == "trace" && (a.at_s.is_empty() || a.at_s.iter().any(|t| !non_negative(*t))) {
            bail!("arrivals: a trace needs at_s = [seconds, …] (each >= 0)");
        }
        if a.process != "trace"
            && (a.rate_per_hour < 0.0 || a.load < 0.0 || (a.rate_per_hour == 0.0 && a.load == 0.0))
        {
            bail!("arrivals: set rate_per_hour > 0 or load > 0");
        }
        if a.process == "bursts" && !positive(a.burst_every_s) {
            bail!("arrivals.burst_every_s must be > 0");
        }
        if a.process == "diurnal"
            && !(positive(a.diurnal_period_s) && (0.0..=1.0).contains(&a.diurnal_amplitude))
        {
            bail!("arrivals: diurnal_period_s > 0 and 0 <= diurnal_amplitude <= 1");
        }
        let j = &self.jobs;
        j.frames.check("jobs.frames").map_err(anyhow::Error::msg)?;
        j.seconds_per_frame
            .check("jobs.seconds_per_frame")
            .map_err(anyhow::Error::msg)?;
        j.input_mb
            .check("jobs.input_mb")
            .map_err(anyhow::Error::msg)?;
        j.output_mb
            .check("jobs.output_mb")
            .map_err(anyhow::Error::msg)?;
        if !(0.0..=5.0).contains(&j.task_noise_sigma) {
            bail!("jobs.task_noise_sigma must be in 0..=5");
        }
        match j.kind.as_str() {
            "builtin" | "blender" => {}
            k => bail!("jobs.kind {k:?}: expected builtin or blender"),
        }
        if let Some(v) = &j.gpu_vendor {
            vendor_of(v).map_err(anyhow::Error::msg)?;
        }
        if j.deadline_s == 0 || j.width == 0 || j.height == 0 {
            bail!("jobs.deadline_s, width and height must be > 0");
        }
        prob(self.failures.task_fail_prob, "failures.task_fail_prob")?;
        let d = &self.dishonest;
        prob(d.fraction, "dishonest.fraction")?;
        prob(d.lazy_time, "dishonest.lazy_time")?;
        if d.fraction > 0.0 && !positive(d.wrong + d.lazy + d.slow + d.silent) {
            bail!("dishonest: give at least one behaviour a weight > 0");
        }
        if !non_negative(d.slow_factor - 1.0) {
            bail!("dishonest.slow_factor must be >= 1");
        }
        Ok(())
    }
}

/// `x > 0` (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// `x >= 0` (false for NaN).
fn non_negative(x: f64) -> bool {
    x >= 0.0
}

/// A vendor name as in scenarios; `None` for `none` (CPU only).
pub fn vendor_of(name: &str) -> Result<Option<rendertrust_protocol::wire::GpuVendor>, String> {
    use rendertrust_protocol::wire::GpuVendor;
    Ok(Some(match name {
        "nvidia" => GpuVendor::Nvidia,
        "amd" => GpuVendor::Amd,
        "intel" => GpuVendor::Intel,
        "apple" => GpuVendor::Apple,
        "other" => GpuVendor::Other,
        "none" => return Ok(None),
        v => {
            return Err(format!(
                "unknown gpu vendor {v:?}; expected nvidia, amd, intel, apple, other or none"
            ));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_overrides_apply() {
        let sc = Scenario::parse("name = \"x\"", &[("churn.rate".into(), "0.4".into())]).unwrap();
        assert_eq!(sc.churn.rate, 0.4);
        assert_eq!(sc.name, "x");
        let sc = Scenario::parse(
            "",
            &[(
                "jobs.frames".into(),
                "{ dist = \"fixed\", value = 5 }".into(),
            )],
        )
        .unwrap();
        assert_eq!(sc.jobs.frames, Dist::Fixed { value: 5.0 });
        let sc = Scenario::parse(
            "[[groups]]\nname = \"w\"\n[[groups]]\nname = \"s\"\nroles = [\"scheduler\", \"creator\"]",
            &[("groups.1.count".into(), "7".into())],
        )
        .unwrap();
        assert_eq!(sc.groups[1].count, 7);
        assert!(Scenario::parse("", &[("groups.9.count".into(), "7".into())]).is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let e = Scenario::parse("bogus = 1", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let e = Scenario::parse("[churn]\nrate = -1", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("churn.rate"), "{e:#}");
        let e = Scenario::parse("[[groups]]\nname = \"w\"\nroles = [\"worker\"]", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("schedulers"), "{e:#}");
    }
}
