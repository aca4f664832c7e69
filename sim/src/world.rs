//! The simulated mesh: nodes that drive the protocol machines, and the
//! event loop that carries their messages.
//!
//! # What this module owns
//!
//! The *drivers*: what `node/` does around each machine, with the I/O
//! replaced by events. A worker node runs a [`Worker`] and an
//! [`AdvertSchedule`]; a scheduler node a [`CapacityTable`] and a
//! [`Scheduler`]; a creator node a [`CreatorJob`] per job. Each input is a
//! machine call; each machine action becomes a message event (delivered
//! after the network model's delay, or failed after the RPC timeout); each
//! machine timer becomes a wake-up event at `next_deadline()`. Nothing
//! here decides placement, retries, acceptance or payment: the machines do.
//!
//! # What is modelled rather than computed
//!
//! * Signatures: job specs are really signed by their creator (a replica
//!   verifies them), every other message travels as the decoded value the
//!   receiver would get after verifying it, and the machines are driven
//!   through their verified-value entry points (`apply_verified`,
//!   `submit`, `handle_accept`, `CreatorJob::check_verified`). A signature
//!   that would fail is not modelled (no forger among the behaviours yet).
//! * The runtime: a task takes `seconds_per_frame / speed` (with noise);
//!   inputs and outputs are sizes moved at the nodes' bandwidth.
//! * Discovery: a Kademlia provider lookup returns the schedulers online at
//!   that moment, after `net.lookup_ms`.
//! * Capacity gossip reaches scheduler nodes only: nothing on other nodes
//!   reads their capacity table (creators and workers find schedulers by
//!   lookup), so delivering adverts to them would change no outcome.
//! * Verification (`[trust]`): a crop line renders its share of the frame's
//!   pixels; output hashes are equal for honest runs and distinct per liar;
//!   a creator's spot-check comparison is decided by whether both outputs
//!   are honest, not computed from pixels. Outcomes feed one
//!   `ReputationBook` per scheduler node when `trust.reputation` is on.
//!
//! See `sim/README.md` for each model's assumptions.

use std::collections::BTreeMap;
use std::sync::Arc;

use rendertrust_protocol::capacity::{AdvertSchedule, CapacityConfig, CapacityTable, Publication};
use rendertrust_protocol::content::ContentId;
use rendertrust_protocol::creator::{
    CheckedResult, CreatorJob, Decision, ResultFrames, VoteDecision,
};
use rendertrust_protocol::hrw;
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::reputation::{Outcome, ReputationBook, ReputationConfig};
use rendertrust_protocol::scheduler::{
    JobEvent, JobSnapshot, ProgressError, ResultError, Scheduler, SchedulerAction, SchedulerConfig,
    SchedulerSnapshot, SubmitError,
};
use rendertrust_protocol::seal::WrappedKey;
use rendertrust_protocol::signed::Signed;
use rendertrust_protocol::task::Rect;
use rendertrust_protocol::verify::{CompareResult, Comparison};
use rendertrust_protocol::wire::{
    CapacityAdvert, GpuInfo, ImageFormat, JobId, JobSpec, Progress, Receipt, Requirements,
    ResourceUsage, Role, RuntimeInfo, RuntimeKind, SplitRule, TaskAccept, TaskId, TaskOffer,
    TaskResult, VerificationPolicy,
};
use rendertrust_protocol::worker::{Worker, WorkerAction, WorkerConfig};

use crate::credits::Credits;
use crate::engine::EventQueue;
use crate::metrics::{JobRecord, Metrics, Sample};
use crate::models::{self, ArrivalModel, Behaviour, NetModel};
use crate::rng::{SimRng, seed_bytes};
use crate::scenario::{Scenario, vendor_of};

/// Virtual time zero: 2026-05-28, as Unix milliseconds (any value works;
/// the machines only compare times).
pub const T0: u64 = 1_780_000_000_000;
/// Input caches a worker keeps (jobs whose inputs it has).
const CACHE_JOBS: usize = 4;
/// A creator retries fetching an output from an offline worker after this,
/// doubling up to [`FETCH_RETRY_MAX_MS`] (a volunteer's rig often comes back).
const FETCH_RETRY_MS: u64 = 30_000;
/// Longest wait between two fetch tries.
const FETCH_RETRY_MAX_MS: u64 = 600_000;
/// Fetch tries before the creator gives up on a result (about 2 hours).
const FETCH_TRIES: u8 = 16;
/// How often a worker re-sends a result that could not be delivered.
const RESULT_RETRY_MS: u64 = 10_000;
/// Result deliveries tried before the worker gives up.
const RESULT_TRIES: u8 = 8;
/// A creator waits this long before submitting again when no scheduler took the job.
const SUBMIT_RETRY_MS: u64 = 30_000;
/// Bandwidth of nodes that are not workers, Mbit/s.
const INFRA_MBPS: f64 = 1000.0;

/// A worker's run of one task (the runtime, replaced by a timer).
#[derive(Debug, Clone)]
struct Run {
    task: TaskId,
    attempt: u32,
    job: u32,
    offer: TaskOffer,
    /// The scheduler node progress and results go to.
    target: u32,
    token: u32,
    started_at: Option<u64>,
    /// Render time, ms.
    run_ms: u64,
    /// The run fails (reported) instead of finishing.
    fails: bool,
    /// A spot-check line: the crop it renders.
    crop: Option<Rect>,
}

#[derive(Debug)]
struct WorkerPart {
    m: Worker,
    runs: Vec<Run>,
}

#[derive(Debug)]
struct SchedPart {
    table: CapacityTable,
    m: Scheduler,
    rng: SimRng,
    next_sweep: u64,
    /// When the job service next reads the capacity table into its
    /// scheduler: `mesh.capacity_debounce_ms` after the first change since the
    /// last read (`u64::MAX`: nothing changed).
    next_refresh: u64,
    /// Nodes whose entry changed, and nodes that left the table, since the
    /// last read.
    changed: Vec<NodeId>,
    gone: Vec<NodeId>,
    /// The scheduler node's reputation book (`trust.reputation`).
    book: Option<ReputationBook>,
}

#[derive(Debug)]
struct CreatorPart {
    key: NodeKey,
    nonce: u64,
}

/// One simulated node.
#[derive(Debug)]
struct Node {
    id: NodeId,
    group: u16,
    region: u16,
    /// GPU class (workers), else `u16::MAX`.
    class: u16,
    template: u32,
    churns: bool,
    online: bool,
    /// Held down by a regional outage: churn does not bring it back.
    held: bool,
    inc: u32,
    wake_at: u64,
    next_token: u32,
    rng: SimRng,
    net_rng: SimRng,
    adv: AdvertSchedule,
    behaviour: Behaviour,
    down_mbps: f64,
    up_mbps: f64,
    /// Inline, not boxed: a worker's events read it with the node, so a
    /// box was one more cache miss on most events of a 100 000-node run.
    worker: Option<WorkerPart>,
    sched: Option<Box<SchedPart>>,
    /// A scheduler's state as persisted when it went down (the node resumes it).
    saved: Option<Box<SchedulerSnapshot>>,
    creator: Option<Box<CreatorPart>>,
    cached: [u32; CACHE_JOBS],
    cache_next: usize,
    online_since: u64,
    /// Links from this node with a message in flight: (to, latest arrival);
    /// a slot whose arrival has passed is free. See [`World::arrival`].
    links: LinkSlots,
}

/// In-flight links a node keeps inline ([`World::arrival`]); a node with
/// more (a scheduler) keeps the rest in [`Links`].
const LINK_SLOTS: usize = 3;

/// A node's in-flight link slots: (to, latest arrival); a slot whose
/// arrival has passed is free.
type LinkSlots = [(u32, u64); LINK_SLOTS];

/// The latest arrival on each directed link with a message in flight that
/// its node's [`LinkSlots`] do not hold, swept of passed arrivals as it
/// grows. See [`World::arrival`].
#[derive(Debug, Default)]
struct Links {
    map: rustc_hash::FxHashMap<u64, u64>,
    /// `map`'s size after its last sweep.
    swept: usize,
}

impl Links {
    /// When a message sent at `now` on `from → to` with its own arrival `at`
    /// (`≥ now`) arrives: the later of `at` and the link's latest arrival.
    /// `slots` are `from`'s.
    fn arrival(&mut self, slots: &mut LinkSlots, from: u32, to: u32, now: u64, at: u64) -> u64 {
        let mut free = None;
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.1 <= now {
                free.get_or_insert(i);
            } else if slot.0 == to {
                slot.1 = slot.1.max(at);
                return slot.1;
            }
        }
        let key = u64::from(from) << 32 | u64::from(to);
        if !self.map.is_empty()
            && let Some(last) = self.map.get_mut(&key)
        {
            if *last > now {
                *last = (*last).max(at);
                return *last;
            }
            self.map.remove(&key);
        }
        match free.and_then(|i| slots.get_mut(i)) {
            Some(slot) => *slot = (to, at),
            None => {
                self.map.insert(key, at);
                if self.map.len() > 2 * self.swept.max(1024) {
                    self.map.retain(|_, last| *last > now);
                    self.swept = self.map.len();
                }
            }
        }
        at
    }
}

/// The decoded values of a worker's signed result bundle.
#[derive(Debug, Clone)]
struct Bundle {
    offer: TaskOffer,
    result: TaskResult,
    receipt: Receipt,
}

/// What a message carries.
#[derive(Debug, Clone)]
enum Body {
    Submit {
        job: u32,
        rank: u8,
    },
    SubmitReply {
        job: u32,
        rank: u8,
        ok: bool,
        busy: bool,
    },
    Offer {
        offer: TaskOffer,
        job: u32,
        /// A spot-check line's crop (`OfferCrop`).
        crop: Option<Rect>,
    },
    /// A creator's spot-check comparison, to the job's scheduler.
    Compared {
        comparison: Comparison,
    },
    Unfetchable {
        task: TaskId,
        attempt: u32,
    },
    OfferFailed {
        task: TaskId,
        attempt: u32,
    },
    Accept {
        accept: TaskAccept,
    },
    Progress {
        p: Progress,
    },
    ProgressCancelled {
        task: TaskId,
        attempt: u32,
    },
    ProgressRedirect {
        task: TaskId,
        owner: NodeId,
    },
    ProgressFailed {
        task: TaskId,
        attempt: u32,
    },
    Result {
        bundle: Box<Bundle>,
        tries: u8,
    },
    ResultRetry {
        bundle: Box<Bundle>,
        tries: u8,
        redirect: Option<NodeId>,
    },
    TaskFailed {
        task: TaskId,
        attempt: u32,
        tries: u8,
    },
    TaskFailedRetry {
        task: TaskId,
        attempt: u32,
        tries: u8,
    },
    Cancel {
        task: TaskId,
        attempt: u32,
    },
    Notify {
        job: u32,
        event: Box<JobEvent>,
        bundle: Option<Box<Bundle>>,
    },
    Replicate {
        snapshot: Box<JobSnapshot>,
    },
    Fetch {
        job: u32,
        task: u32,
        attempt: u32,
        tries: u8,
    },
    FetchReply {
        job: u32,
        task: u32,
        attempt: u32,
        ok: bool,
        tries: u8,
    },
}

#[derive(Debug, Clone)]
struct Msg {
    to: u32,
    from: u32,
    sent_at: u64,
    body: Body,
}

/// An event.
#[derive(Debug, Clone)]
enum Ev {
    Arrival,
    Burst,
    Sample,
    Up(u32),
    Down(u32, u32),
    OutageStart(u16),
    OutageEnd(u16),
    Wake(u32, u32, u64),
    FetchDone(u32, u32, u32),
    RunEnd(u32, u32, u32),
    /// A gossiped capacity advert reaching scheduler node `to`.
    Advert {
        to: u32,
        from: u32,
        running: u16,
        /// The refresh period it announces.
        refresh: u32,
        seq: u64,
        issued: u64,
    },
    Msg(Box<Msg>),
    /// A creator retries the submission of a job no scheduler took.
    Resubmit(u32),
    /// A job of the arrival trace.
    TraceJob,
}

/// Names of the event kinds [`event_kind`] counts, in its order.
pub const EVENT_KINDS: [&str; 35] = [
    "arrival",
    "burst",
    "sample",
    "up",
    "down",
    "outage_start",
    "outage_end",
    "wake",
    "wake_stale",
    "wake_idle",
    "fetch_done",
    "run_end",
    "advert",
    "resubmit",
    "trace_job",
    "msg_submit",
    "msg_submit_reply",
    "msg_offer",
    "msg_compared",
    "msg_unfetchable",
    "msg_offer_failed",
    "msg_accept",
    "msg_progress",
    "msg_progress_cancelled",
    "msg_progress_redirect",
    "msg_progress_failed",
    "msg_result",
    "msg_result_retry",
    "msg_task_failed",
    "msg_task_failed_retry",
    "msg_cancel",
    "msg_notify",
    "msg_replicate",
    "msg_fetch",
    "msg_fetch_reply",
];

/// Indices of the wake-up kinds in [`EVENT_KINDS`].
const WAKE: usize = 7;
const WAKE_STALE: usize = 8;
const WAKE_IDLE: usize = 9;

/// The index in [`EVENT_KINDS`] of `ev`. A wake-up is counted as `wake`
/// here; the handler moves it to `wake_stale` (superseded by an earlier
/// one) or `wake_idle` (on time, but nothing was due).
fn event_kind(ev: &Ev) -> usize {
    match ev {
        Ev::Arrival => 0,
        Ev::Burst => 1,
        Ev::Sample => 2,
        Ev::Up(_) => 3,
        Ev::Down(..) => 4,
        Ev::OutageStart(_) => 5,
        Ev::OutageEnd(_) => 6,
        Ev::Wake(..) => WAKE,
        Ev::FetchDone(..) => 10,
        Ev::RunEnd(..) => 11,
        Ev::Advert { .. } => 12,
        Ev::Resubmit(_) => 13,
        Ev::TraceJob => 14,
        Ev::Msg(m) => match m.body {
            Body::Submit { .. } => 15,
            Body::SubmitReply { .. } => 16,
            Body::Offer { .. } => 17,
            Body::Compared { .. } => 18,
            Body::Unfetchable { .. } => 19,
            Body::OfferFailed { .. } => 20,
            Body::Accept { .. } => 21,
            Body::Progress { .. } => 22,
            Body::ProgressCancelled { .. } => 23,
            Body::ProgressRedirect { .. } => 24,
            Body::ProgressFailed { .. } => 25,
            Body::Result { .. } => 26,
            Body::ResultRetry { .. } => 27,
            Body::TaskFailed { .. } => 28,
            Body::TaskFailedRetry { .. } => 29,
            Body::Cancel { .. } => 30,
            Body::Notify { .. } => 31,
            Body::Replicate { .. } => 32,
            Body::Fetch { .. } => 33,
            Body::FetchReply { .. } => 34,
        },
    }
}

/// A job as the simulator follows it.
#[derive(Debug)]
struct SimJob {
    spec: JobSpec,
    frame: Arc<[u8]>,
    creator: u32,
    submitted_at: u64,
    /// Seconds per frame at reference speed.
    spf: f64,
    input_mb: f64,
    output_mb: f64,
    /// The scheduler that took it.
    owner: Option<u32>,
    taken: bool,
    cj: Option<CreatorJob>,
    /// Per task: 0 open, 1 done, 2 failed (scheduler's word, deduplicated).
    closed: Vec<u8>,
    /// Per task: when it was first assigned (`u64::MAX`: never).
    first_assigned: Vec<u64>,
    rec: JobRecord,
}

/// Outcome of a run, for tests and the CLI.
pub struct RunResult {
    /// Everything measured.
    pub metrics: Metrics,
    /// Events processed.
    pub events: u64,
    /// Events processed by kind, as (name, count), most frequent first
    /// (kinds that never happened left out): where a run's time goes.
    pub events_by_kind: Vec<(&'static str, u64)>,
}

/// The simulated mesh.
pub struct World {
    sc: Scenario,
    seed: u64,
    end_arrivals: u64,
    hard_end: u64,
    q: EventQueue<Ev>,
    /// Events handled, by [`event_kind`].
    kinds: [u64; EVENT_KINDS.len()],
    nodes: Vec<Node>,
    index: rustc_hash::FxHashMap<NodeId, u32>,
    schedulers: Vec<u32>,
    creators: Vec<u32>,
    templates: Vec<CapacityAdvert>,
    /// One advert per template, filled in for each delivery.
    scratch: Vec<CapacityAdvert>,
    jobs: Vec<SimJob>,
    job_index: rustc_hash::FxHashMap<JobId, u32>,
    net: NetModel,
    arrivals: ArrivalModel,
    rng_arrivals: SimRng,
    rng_jobs: SimRng,
    sched_config: SchedulerConfig,
    worker_config_hb: u64,
    credits: Credits,
    m: Metrics,
    /// The credit ledger, when `ledger.enabled` (see [`LedgerDriver`]).
    ledger: Option<Box<LedgerDriver>>,
    /// In-flight links that do not fit their node's slots ([`World::arrival`]).
    links: Links,
    jobs_open: usize,
    /// Nodes online: the size of the capacity table a node without one
    /// (a worker or creator) would hold, for its advert refresh period.
    online_nodes: usize,
    on_progress: Option<Box<dyn FnMut(u64, u64)>>,
}

fn node_id_of(seed: u64, i: usize) -> NodeId {
    // Workers need no signing key (their messages' signatures are
    // modelled): an id is 32 seeded bytes.
    NodeId::from_bytes(seed_bytes(seed, "node id", i as u64))
}

impl World {
    /// Builds the mesh of a scenario, seeded `seed`.
    pub fn new(sc: Scenario, seed: u64) -> World {
        let mut pop = SimRng::stream(seed, "population", 0);
        let mut nodes = Vec::new();
        let mut templates: Vec<CapacityAdvert> = Vec::new();
        let mut template_of: BTreeMap<(u16, u16, u8), u32> = BTreeMap::new();
        let (mut schedulers, mut creators) = (Vec::new(), Vec::new());
        let region_weights: Vec<f64> = sc.regions.iter().map(|r| r.weight).collect();
        let class_weights: Vec<f64> = sc.gpu_classes.iter().map(|c| c.weight).collect();
        let total: usize = sc.groups.iter().map(|g| g.count).sum();
        let mut capacity = 0.0;
        let mut keys: Vec<Option<NodeKey>> = Vec::new();
        for (gi, g) in sc.groups.iter().enumerate() {
            let rw: Vec<f64> = if g.regions.is_empty() {
                region_weights.clone()
            } else {
                sc.regions
                    .iter()
                    .map(|r| g.regions.get(&r.name).copied().unwrap_or(0.0))
                    .collect()
            };
            let cw: Vec<f64> = if g.classes.is_empty() {
                class_weights.clone()
            } else {
                sc.gpu_classes
                    .iter()
                    .map(|c| g.classes.get(&c.name).copied().unwrap_or(0.0))
                    .collect()
            };
            let is_worker = g.roles.iter().any(|r| r == "worker");
            let is_sched = g.roles.iter().any(|r| r == "scheduler");
            let is_creator = g.roles.iter().any(|r| r == "creator");
            for _ in 0..g.count {
                let i = nodes.len();
                let region = pop.weighted(&rw) as u16;
                let class = if is_worker {
                    pop.weighted(&cw) as u16
                } else {
                    u16::MAX
                };
                let behaviour = if is_worker && g.dishonest {
                    Behaviour::draw(&sc, &mut pop)
                } else {
                    Behaviour::Honest
                };
                let roles_key = u8::from(is_worker) | (u8::from(is_sched) << 1);
                let key = (class, region, roles_key);
                let template = *template_of.entry(key).or_insert_with(|| {
                    templates.push(template_advert(&sc, class, region, is_worker, is_sched));
                    (templates.len() - 1) as u32
                });
                let creator_key = is_creator.then(|| {
                    NodeKey::from_secret_bytes(&seed_bytes(seed, "creator key", i as u64))
                });
                let sched_key_id = is_sched.then(|| {
                    NodeKey::from_secret_bytes(&seed_bytes(seed, "scheduler key", i as u64))
                        .node_id()
                });
                let ledger_key = (sc.ledger.enabled && creator_key.is_none()).then(|| {
                    let name = if is_sched {
                        "scheduler key"
                    } else {
                        "worker key"
                    };
                    NodeKey::from_secret_bytes(&seed_bytes(seed, name, i as u64))
                });
                let id = match (&creator_key, &ledger_key, sched_key_id) {
                    (Some(k), _, _) | (None, Some(k), _) => k.node_id(),
                    (None, None, Some(id)) => id,
                    _ => node_id_of(seed, i),
                };
                if sc.ledger.enabled {
                    keys.push(
                        creator_key
                            .as_ref()
                            .map(|k| NodeKey::from_secret_bytes(&k.secret_bytes()))
                            .or(ledger_key),
                    );
                }
                let (down, up) = match sc.gpu_classes.get(class as usize) {
                    Some(c) => (c.down_mbps, c.up_mbps),
                    None => (INFRA_MBPS, INFRA_MBPS),
                };
                if let Some(c) = sc.gpu_classes.get(class as usize) {
                    capacity += c.speed * f64::from(c.slots);
                }
                if is_sched {
                    schedulers.push(i as u32);
                }
                if is_creator {
                    creators.push(i as u32);
                }
                nodes.push(Node {
                    id,
                    group: gi as u16,
                    region,
                    class,
                    template,
                    churns: g.churn,
                    online: false,
                    held: false,
                    inc: 0,
                    wake_at: u64::MAX,
                    next_token: 0,
                    rng: SimRng::stream(seed, "node", i as u64),
                    net_rng: SimRng::stream(seed, "net", i as u64),
                    adv: AdvertSchedule::with_policy(sc.mesh.refresh_policy(), 1),
                    behaviour,
                    down_mbps: down,
                    up_mbps: up,
                    worker: is_worker.then(|| WorkerPart {
                        m: Worker::new(id, WorkerConfig::default()),
                        runs: Vec::new(),
                    }),
                    sched: None,
                    saved: None,
                    creator: creator_key.map(|key| Box::new(CreatorPart { key, nonce: 0 })),
                    cached: [u32::MAX; CACHE_JOBS],
                    links: [(u32::MAX, 0); LINK_SLOTS],
                    cache_next: 0,
                    online_since: 0,
                });
            }
        }
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id, i as u32))
            .collect();
        let mesh = &sc.mesh;
        let sched_config = SchedulerConfig {
            max_jobs: mesh.max_jobs,
            max_replicas: mesh.max_replicas,
            max_nodes: total.max(1) + 16,
            max_in_flight: total.max(100_000),
            choices: mesh.choices,
            reserve_ms: mesh.reserve_s * 1000,
            heartbeat_timeout_ms: mesh.heartbeat_timeout_s * 1000,
            task_timeout_ms: mesh.task_timeout_s * 1000,
            max_attempts: mesh.max_attempts,
            retry_ms: mesh.retry_s.max(1) * 1000,
            replicate_interval_ms: mesh.replicate_interval_s * 1000,
            finished_retention_ms: mesh.finished_retention_s * 1000,
            takeover_retention_ms: mesh.takeover_retention_s * 1000,
            // With a reputation book new nodes start on probation (as the
            // node does with one); without, the node turns probation off.
            new_nodes_on_probation: sc.trust.reputation,
            ..SchedulerConfig::default()
        };
        let net = NetModel::new(&sc, nodes.len());
        let arrivals = ArrivalModel::new(&sc, capacity);
        let end_arrivals = T0 + sc.duration_s * 1000;
        let hard_end = end_arrivals + sc.drain_s * 1000;
        let worker_config_hb = mesh.heartbeat_interval_s * 1000;
        let mut w = World {
            m: Metrics::new(&sc, nodes.len()),
            seed,
            end_arrivals,
            hard_end,
            q: EventQueue::new(T0),
            kinds: [0; EVENT_KINDS.len()],
            nodes,
            index,
            schedulers,
            creators,
            scratch: templates.clone(),
            templates,
            jobs: Vec::new(),
            job_index: rustc_hash::FxHashMap::default(),
            net,
            arrivals,
            rng_arrivals: SimRng::stream(seed, "arrivals", 0),
            rng_jobs: SimRng::stream(seed, "jobs", 0),
            sched_config,
            worker_config_hb,
            credits: Credits::default(),
            ledger: None,
            links: Links::default(),
            jobs_open: 0,
            online_nodes: 0,
            on_progress: None,
            sc,
        };
        if w.sc.ledger.enabled {
            w.ledger = Some(Box::new(LedgerDriver::new(keys)));
        }
        w.m.capacity = capacity;
        w.m.arrival_rate_per_hour = w.arrivals.rate_per_ms * 3_600_000.0;
        w
    }

    /// Calls `f(simulated ms so far, ms in all)` every simulated minute.
    pub fn on_progress(&mut self, f: Box<dyn FnMut(u64, u64)>) {
        self.on_progress = Some(f);
    }

    /// Runs to the end and returns what was measured.
    pub fn run(mut self) -> RunResult {
        // Nodes come up over the first second, in index order.
        for i in 0..self.nodes.len() {
            let at = T0 + (i as u64 * 1000) / self.nodes.len().max(1) as u64;
            self.q.push(at, Ev::Up(i as u32));
        }
        let first = T0 + 5_000;
        if let Some(t) = self.arrivals.next_after(0, &mut self.rng_arrivals) {
            self.q.push(first + t, Ev::Arrival);
        }
        if let Some((every, _)) = self.arrivals.bursts() {
            self.q.push(first + every, Ev::Burst);
        }
        for t in self.arrivals.trace() {
            self.q.push(T0 + t, Ev::TraceJob);
        }
        for (i, o) in self.sc.churn.outages.iter().enumerate() {
            self.q.push(T0 + o.at_s * 1000, Ev::OutageStart(i as u16));
            self.q
                .push(T0 + (o.at_s + o.duration_s) * 1000, Ev::OutageEnd(i as u16));
        }
        self.q.push(T0, Ev::Sample);
        let total = self.hard_end - T0;
        let mut next_report = T0;
        while let Some((now, ev)) = self.q.pop(self.hard_end) {
            if now >= next_report {
                next_report = now + 60_000;
                if let Some(f) = self.on_progress.as_mut() {
                    f(now - T0, total);
                }
            }
            self.kinds[event_kind(&ev)] += 1;
            self.handle(now, ev);
            if now >= self.end_arrivals && self.jobs_open == 0 {
                break;
            }
        }
        let end = self.q.now().min(self.hard_end);
        self.finish(end)
    }

    fn finish(mut self, end: u64) -> RunResult {
        self.sample(end);
        for (n, stats) in self.nodes.iter().zip(self.m.nodes.iter_mut()) {
            if n.online {
                stats.online_ms += end.saturating_sub(n.online_since);
                if let Some(w) = &n.worker {
                    for r in &w.runs {
                        if let Some(s) = r.started_at {
                            stats.busy_ms += end.saturating_sub(s);
                        }
                    }
                }
            }
        }
        for j in &mut self.jobs {
            if j.rec.finished_at.is_none() && !j.rec.rejected {
                self.m.unfinished_jobs += 1;
            }
            j.rec.tasks_done = j.closed.iter().filter(|c| **c == 1).count() as u32;
            j.rec.tasks_failed = j.closed.iter().filter(|c| **c == 2).count() as u32;
            if let Some(cj) = &j.cj {
                let c = cj.counts();
                j.rec.accepted = c.accepted as u32;
                j.rec.creator_failed = c.failed as u32;
            }
        }
        self.m.end_ms = end - T0;
        self.m.jobs = self.jobs.into_iter().map(|j| j.rec).collect();
        self.m.credits = self.credits;
        if let Some(l) = self.ledger.as_mut() {
            l.ledger.handle_timeout(end);
            self.m.ledger = Some(l.report());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let g = &self.sc.groups[n.group as usize];
            // The counters were kept here during the run (cold data, out of
            // the nodes the events touch); the labels are added now.
            let s = &mut self.m.nodes[i];
            s.group = g.name.clone();
            s.roles = g.roles.join("+");
            s.region = self.sc.regions[n.region as usize].name.clone();
            s.class = self
                .sc
                .gpu_classes
                .get(n.class as usize)
                .map_or_else(String::new, |c| c.name.clone());
            s.behaviour = n.behaviour.name();
            s.id = n.id.to_hex()[..16].to_string();
            s.credits = match &self.ledger {
                // The ledger's balance of the node (never negative for a worker).
                Some(l) => u64::try_from(l.ledger.balance(&n.id).max(0)).unwrap_or(0),
                None => self.m.credits.earned(&n.id),
            };
            s.capacity = self
                .sc
                .gpu_classes
                .get(n.class as usize)
                .map_or(0.0, |c| c.speed * f64::from(c.slots));
        }
        self.m.events = self.q.popped();
        let mut events_by_kind: Vec<(&'static str, u64)> = EVENT_KINDS
            .iter()
            .copied()
            .zip(self.kinds)
            .filter(|(_, n)| *n > 0)
            .collect();
        events_by_kind.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        RunResult {
            events: self.q.popped(),
            events_by_kind,
            metrics: self.m,
        }
    }

    fn handle(&mut self, now: u64, ev: Ev) {
        match ev {
            Ev::Arrival => {
                if now < self.end_arrivals {
                    self.new_job(now);
                    if let Some(t) = self
                        .arrivals
                        .next_after(now - T0 - 5_000, &mut self.rng_arrivals)
                    {
                        self.q.push(T0 + 5_000 + t, Ev::Arrival);
                    }
                }
            }
            Ev::Burst => {
                if now < self.end_arrivals
                    && let Some((every, n)) = self.arrivals.bursts()
                {
                    for _ in 0..n {
                        self.new_job(now);
                    }
                    self.q.push(now + every, Ev::Burst);
                }
            }
            Ev::Sample => {
                self.sample(now);
                self.q.push(now + self.sc.sample_s * 1000, Ev::Sample);
            }
            Ev::Up(n) => self.up(n, now),
            Ev::Down(n, inc) => {
                if self.nodes[n as usize].inc == inc {
                    self.down(n, now, true);
                }
            }
            Ev::OutageStart(o) => self.outage(o, now, true),
            Ev::OutageEnd(o) => self.outage(o, now, false),
            Ev::Wake(n, inc, at) => {
                let node = &mut self.nodes[n as usize];
                if node.online && node.inc == inc && node.wake_at == at {
                    node.wake_at = u64::MAX;
                    self.wake(n, now);
                } else {
                    self.kinds[WAKE] -= 1;
                    self.kinds[WAKE_STALE] += 1;
                }
            }
            Ev::FetchDone(n, inc, token) => {
                if self.alive(n, inc) {
                    self.fetch_done(n, token, now);
                }
            }
            Ev::RunEnd(n, inc, token) => {
                if self.alive(n, inc) {
                    self.run_end(n, token, now);
                }
            }
            Ev::Advert {
                to,
                from,
                running,
                refresh,
                seq,
                issued,
            } => self.deliver_advert(to, from, running, refresh, seq, issued, now),
            Ev::Msg(msg) => self.deliver(*msg, now),
            Ev::Resubmit(job) => self.submit(job, 0, now),
            Ev::TraceJob => self.new_job(now),
        }
    }

    fn alive(&self, n: u32, inc: u32) -> bool {
        let node = &self.nodes[n as usize];
        node.online && node.inc == inc
    }

    // ----- lifecycle -------------------------------------------------------

    fn up(&mut self, n: u32, now: u64) {
        let cfg = self.sched_config.clone();
        let ttl = self.sc.mesh.capacity_ttl_s * 1000;
        let refresh = self.sc.mesh.refresh_policy();
        let hb = self.worker_config_hb;
        let max_entries = self.nodes.len() + 16;
        let is_sched = self.schedulers.binary_search(&n).is_ok();
        let slots = self.slots_of(n);
        let reputation = self.sc.trust.reputation;
        let node = &mut self.nodes[n as usize];
        if node.online || node.held {
            return;
        }
        node.online = true;
        self.online_nodes += 1;
        node.inc += 1;
        node.online_since = now;
        node.wake_at = u64::MAX;
        self.m.nodes[n as usize].sessions += 1;
        // A restarted node's sequence numbers start from its clock, as the node's do.
        node.adv = AdvertSchedule::with_policy(refresh, now);
        if let Some(w) = &mut node.worker {
            w.m = Worker::new(
                node.id,
                WorkerConfig {
                    max_tasks: slots,
                    heartbeat_interval_ms: hb,
                    // Answers are remembered for offers delivered twice (a
                    // retried request); the simulator delivers each offer
                    // once, so a few suffice, and 100 000 workers × 1024
                    // remembered offers would take gigabytes.
                    remembered_answers: 4,
                },
            );
            w.runs.clear();
        }
        if is_sched {
            // The node resumes its persisted scheduler snapshot (as the job
            // service does); its capacity table starts empty.
            let m = node
                .saved
                .take()
                .and_then(|snap| Scheduler::restore(cfg.clone(), *snap).ok())
                .map(|mut m| {
                    // Down since the snapshot (`Scheduler::resumed`).
                    m.resumed(now);
                    m
                })
                .unwrap_or_else(|| Scheduler::new(node.id, cfg));
            node.sched = Some(Box::new(SchedPart {
                table: CapacityTable::new(CapacityConfig {
                    ttl_ms: ttl,
                    // Every node runs the same settings.
                    max_refresh_ms: refresh.max_ms,
                    max_skew_ms: 10_000,
                    max_entries,
                }),
                m,
                rng: SimRng::stream(
                    self.seed,
                    "placement",
                    u64::from(n) << 16 | u64::from(node.inc),
                ),
                next_sweep: now + self.sc.mesh.table_sweep_s * 1000,
                next_refresh: u64::MAX,
                changed: Vec::new(),
                gone: Vec::new(),
                // The book is the scheduler node's own: it starts empty on
                // each start (not persisted here).
                book: reputation.then(|| ReputationBook::new(node.id, ReputationConfig::default())),
            }));
        }
        if node.worker.is_some() {
            self.m.online_slots += i64::from(slots);
            self.m.online_workers += 1;
        }
        let inc = node.inc;
        if node.churns
            && let Some(s) = models::session_ms(&self.sc, &mut node.rng)
        {
            self.q.push(now + s, Ev::Down(n, inc));
        }
        self.poll_advert(n, now);
        self.rewake(n, now);
    }

    fn down(&mut self, n: u32, now: u64, returns: bool) {
        let slots = self.slots_of(n);
        let node = &mut self.nodes[n as usize];
        if !node.online {
            return;
        }
        node.online = false;
        self.online_nodes -= 1;
        self.m.nodes[n as usize].online_ms += now.saturating_sub(node.online_since);
        // The job service writes its snapshot at most every 2 s; the state
        // at the crash stands for the last one written.
        if let Some(s) = node.sched.take() {
            node.saved = Some(Box::new(s.m.snapshot()));
        }
        let mut busy = 0i64;
        let mut rendering = 0i64;
        if let Some(w) = &mut node.worker {
            busy = i64::from(w.m.running_tasks());
            for r in w.runs.drain(..) {
                if let Some(s) = r.started_at {
                    self.m.nodes[n as usize].busy_ms += now.saturating_sub(s);
                    rendering += 1;
                }
            }
            self.m.online_slots -= i64::from(slots);
            self.m.online_workers -= 1;
        }
        self.m.busy_slots -= busy;
        self.m.rendering -= rendering;
        self.m.departures += 1;
        // Timers, runs and sessions of this incarnation are void from now on.
        node.inc += 1;
        if returns
            && node.churns
            && let Some(off) = models::offline_ms(&self.sc, &mut node.rng)
        {
            self.q.push(now + off, Ev::Up(n));
        }
    }

    fn outage(&mut self, o: u16, now: u64, start: bool) {
        let Some(out) = self.sc.churn.outages.get(o as usize).cloned() else {
            return;
        };
        let Some(region) = self.sc.region_index(&out.region) else {
            return;
        };
        let mut rng = SimRng::stream(self.seed, "outage", u64::from(o));
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.region as usize != region || !node.churns {
                continue;
            }
            // The same nodes are drawn at start and end (same stream order).
            if !rng.chance(out.fraction) {
                continue;
            }
            if start {
                self.down(i as u32, now, false);
                self.nodes[i].held = true;
            } else {
                self.nodes[i].held = false;
                self.up(i as u32, now);
            }
        }
    }

    fn slots_of(&self, n: u32) -> u16 {
        let node = &self.nodes[n as usize];
        self.sc
            .gpu_classes
            .get(node.class as usize)
            .map_or(0, |c| c.slots)
    }

    // ----- timers ----------------------------------------------------------

    /// Schedules the node's next wake-up at the earliest machine deadline.
    fn rewake(&mut self, n: u32, now: u64) {
        let node = &mut self.nodes[n as usize];
        if !node.online {
            return;
        }
        let mut t = node.adv.next_deadline().unwrap_or(u64::MAX);
        if let Some(w) = &node.worker
            && let Some(d) = w.m.next_deadline()
        {
            t = t.min(d);
        }
        if let Some(s) = &node.sched {
            t = t.min(s.next_sweep).min(s.next_refresh);
            if let Some(d) = s.m.next_deadline() {
                t = t.min(d);
            }
        }
        if t == u64::MAX {
            return;
        }
        let t = t.max(now);
        if t < node.wake_at {
            node.wake_at = t;
            self.q.push(t, Ev::Wake(n, node.inc, t));
        }
    }

    fn wake(&mut self, n: u32, now: u64) {
        let mut worker_actions = Vec::new();
        let node = &mut self.nodes[n as usize];
        if let Some(w) = &mut node.worker {
            for r in &w.runs {
                if let Some(s) = r.started_at {
                    let permille = (now.saturating_sub(s) * 1000 / r.run_ms.max(1)).min(999) as u16;
                    let _ = w.m.set_progress(&r.task, permille, now);
                }
            }
            w.m.handle_timeout(now);
            while let Some(a) = w.m.poll_action() {
                worker_actions.push(a);
            }
        }
        let mut sched_due = false;
        if let Some(s) = &mut node.sched {
            if now >= s.next_sweep {
                let gone = s.table.expire(now);
                if !gone.is_empty() {
                    s.gone.extend(gone);
                    let debounce = self.sc.mesh.capacity_debounce_ms;
                    if debounce == 0 {
                        refresh(s, now);
                        sched_due = true;
                    } else if s.next_refresh == u64::MAX {
                        s.next_refresh = now + debounce;
                    }
                }
                s.next_sweep = now + self.sc.mesh.table_sweep_s * 1000;
            }
            if now >= s.next_refresh {
                s.next_refresh = u64::MAX;
                refresh(s, now);
                sched_due = true;
            }
            if s.m.next_deadline().is_some_and(|d| d <= now) {
                s.m.handle_timeout(now, &mut s.rng);
                sched_due = true;
            }
        }
        let idle = worker_actions.is_empty() && !sched_due;
        for a in worker_actions {
            self.worker_action(n, a, now);
        }
        if sched_due {
            self.sched_actions(n, now, None);
        }
        let adverts = self.m.adverts;
        self.poll_advert(n, now);
        if idle && self.m.adverts == adverts {
            // Nothing was due: the deadline it was set for moved later
            // (a heartbeat sent early, a task ended, an advert published
            // on a change). Counted, to see what such wake-ups cost.
            self.kinds[WAKE] -= 1;
            self.kinds[WAKE_IDLE] += 1;
        }
        self.rewake(n, now);
    }

    // ----- capacity gossip -------------------------------------------------

    fn running_of(&self, n: u32) -> u16 {
        self.nodes[n as usize]
            .worker
            .as_ref()
            .map_or(0, |w| w.m.running_tasks())
    }

    /// Publishes the node's advert if its schedule says so.
    fn poll_advert(&mut self, n: u32, now: u64) {
        let running = self.running_of(n);
        let node = &mut self.nodes[n as usize];
        if !node.online {
            return;
        }
        // Everything but seq and time is the template and `running_tasks`:
        // that pair identifies the content (the node hashes the encoding).
        let mut content = [0u8; 32];
        content[..4].copy_from_slice(&node.template.to_le_bytes());
        content[4..6].copy_from_slice(&running.to_le_bytes());
        // The refresh period follows the size of the node's capacity table:
        // a scheduler's own; the others', modelled, every node online.
        let known = node
            .sched
            .as_ref()
            .map_or(self.online_nodes, |s| s.table.len());
        node.adv.set_known_nodes(known);
        let Some(Publication { seq, refresh_ms }) = node.adv.poll(content, now) else {
            return;
        };
        self.m.adverts += 1;
        let from_region = node.region;
        for si in 0..self.schedulers.len() {
            let s = self.schedulers[si];
            if s == n {
                // Our own advert goes into our own table at once.
                self.deliver_advert(s, n, running, refresh_ms, seq, now, now);
                continue;
            }
            let node = &mut self.nodes[n as usize];
            if node.net_rng.chance(self.net.gossip_loss) {
                self.m.gossip_lost += 1;
                continue;
            }
            let to_region = self.nodes[s as usize].region;
            let node = &mut self.nodes[n as usize];
            let d = self
                .net
                .gossip_delay(from_region, to_region, &mut node.net_rng);
            self.q.push(
                now + d,
                Ev::Advert {
                    to: s,
                    from: n,
                    running,
                    refresh: refresh_ms,
                    seq,
                    issued: now,
                },
            );
        }
    }

    fn advert_of(&self, from: u32, running: u16, seq: u64, issued: u64) -> CapacityAdvert {
        let node = &self.nodes[from as usize];
        let mut a = self.templates[node.template as usize].clone();
        a.node = node.id;
        a.seq = seq;
        a.issued_at_ms = issued;
        a.running_tasks = running;
        a
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_advert(
        &mut self,
        to: u32,
        from: u32,
        running: u16,
        refresh: u32,
        seq: u64,
        issued: u64,
        now: u64,
    ) {
        if !self.nodes[to as usize].online {
            return;
        }
        // One advert per node kind, filled in: the table copies it only
        // when its content changed (`apply_verified_ref`).
        let node = &self.nodes[from as usize];
        let id = node.id;
        let a = &mut self.scratch[node.template as usize];
        a.node = id;
        a.seq = seq;
        a.issued_at_ms = issued;
        a.refresh_ms = refresh;
        a.running_tasks = running;
        let debounce = self.sc.mesh.capacity_debounce_ms;
        let Some(s) = self.nodes[to as usize].sched.as_mut() else {
            return;
        };
        self.m.advert_deliveries += 1;
        if s.table.apply_verified_ref(a, now).is_err() {
            return;
        }
        if debounce > 0 {
            // The network loop bumps the capacity version; the job service
            // reads the table `debounce` later (CAPACITY_DEBOUNCE).
            s.changed.push(id);
            if s.next_refresh == u64::MAX {
                s.next_refresh = now + debounce;
                self.rewake(to, now);
            }
            return;
        }
        if let Some(e) = s.table.get(&id, now) {
            s.m.observe_entry(e, now);
        }
        self.sched_actions(to, now, None);
        self.rewake(to, now);
    }

    // ----- messages ----------------------------------------------------------

    /// Sends a request: delivered after the network delay, or failed back to
    /// the sender after the RPC timeout (lost, or the receiver is offline at
    /// delivery, which [`World::deliver`] decides).
    fn send(&mut self, from: u32, to: u32, body: Body, now: u64) {
        let (fr, tr) = (
            self.nodes[from as usize].region,
            self.nodes[to as usize].region,
        );
        let node = &mut self.nodes[from as usize];
        let lost = from != to && node.net_rng.chance(self.net.rpc_loss);
        let d = if from == to {
            0
        } else {
            self.net.latency(fr, tr, &mut node.net_rng)
        };
        self.m.messages += 1;
        let msg = Msg {
            to,
            from,
            sent_at: now,
            body,
        };
        if lost {
            self.m.rpc_lost += 1;
            self.fail(msg, now);
        } else {
            let at = self.arrival(from, to, now, now + d);
            self.q.push(at, Ev::Msg(Box::new(msg)));
        }
    }

    /// When a message sent at `now` on the link `from → to` arrives, given
    /// its own arrival `at` (`≥ now`): never before the link's previous
    /// message (one QUIC connection keeps the order, whatever the jitter).
    ///
    /// Only links with a message still in flight are remembered: once the
    /// latest arrival on a link has passed, any later message (`at ≥ now`)
    /// arrives at its own time. So a node keeps its few in-flight links in
    /// its own slots (read with the node, which the send has just read),
    /// and only a node with more (a scheduler) uses the shared map; a map
    /// of every link ever used (~2.4 M at 100 000 nodes) cost a cache miss
    /// per message, 5% of a 100 000-node hour.
    fn arrival(&mut self, from: u32, to: u32, now: u64, at: u64) -> u64 {
        let slots = &mut self.nodes[from as usize].links;
        self.links.arrival(slots, from, to, now, at)
    }

    /// A request that got no answer: the sender learns at `sent_at + timeout`.
    fn fail(&mut self, msg: Msg, _now: u64) {
        let at = msg.sent_at + self.net.rpc_timeout_ms;
        let (from, to) = (msg.from, msg.to);
        let back = match msg.body {
            Body::Offer { offer, .. } => Some(Body::OfferFailed {
                task: offer.task,
                attempt: offer.attempt,
            }),
            Body::Progress { p } => Some(Body::ProgressFailed {
                task: p.task,
                attempt: p.attempt,
            }),
            Body::Result { bundle, tries } => Some(Body::ResultRetry {
                bundle,
                tries,
                redirect: None,
            }),
            Body::TaskFailed {
                task,
                attempt,
                tries,
            } => Some(Body::TaskFailedRetry {
                task,
                attempt,
                tries,
            }),
            Body::Submit { job, rank } => Some(Body::SubmitReply {
                job,
                rank,
                ok: false,
                busy: true,
            }),
            Body::Fetch {
                job,
                task,
                attempt,
                tries,
            } => Some(Body::FetchReply {
                job,
                task,
                attempt,
                ok: false,
                tries,
            }),
            // One-way messages and answers are simply lost.
            _ => None,
        };
        if let Some(body) = back {
            self.q.push(
                at,
                Ev::Msg(Box::new(Msg {
                    to: from,
                    from: to,
                    sent_at: at,
                    body,
                })),
            );
        }
    }

    fn deliver(&mut self, msg: Msg, now: u64) {
        if !self.nodes[msg.to as usize].online {
            self.fail(msg, now);
            return;
        }
        let (to, from) = (msg.to, msg.from);
        match msg.body {
            Body::Submit { job, rank } => self.on_submit(to, from, job, rank, now),
            Body::SubmitReply {
                job,
                rank,
                ok,
                busy,
            } => self.on_submit_reply(to, from, job, rank, ok, busy, now),
            Body::Offer { offer, job, crop } => self.on_offer(to, from, offer, job, crop, now),
            Body::Compared { comparison } => {
                let creator = self.nodes[from as usize].id;
                if let Some(s) = self.nodes[to as usize].sched.as_mut() {
                    if s.m.handle_comparison(&creator, &comparison, now).is_err() {
                        self.m.trust.comparisons_refused += 1;
                    }
                    self.sched_actions(to, now, None);
                    self.rewake(to, now);
                }
            }
            Body::Unfetchable { task, attempt } => {
                let creator = self.nodes[from as usize].id;
                if let Some(s) = self.nodes[to as usize].sched.as_mut() {
                    if s.m
                        .handle_unfetchable(&creator, &task, attempt, now)
                        .is_ok()
                    {
                        self.m.unfetchable_reruns += 1;
                    }
                    self.sched_actions(to, now, None);
                    self.rewake(to, now);
                }
            }
            Body::OfferFailed { task, attempt } => {
                if let Some(s) = self.nodes[to as usize].sched.as_mut() {
                    s.m.handle_undeliverable(&task, attempt, now);
                    self.sched_actions(to, now, None);
                    self.rewake(to, now);
                }
            }
            Body::Accept { accept } => {
                if let Some(s) = self.nodes[to as usize].sched.as_mut() {
                    let _ = s.m.handle_accept(&accept, now);
                    self.sched_actions(to, now, None);
                    self.rewake(to, now);
                }
            }
            Body::Progress { p } => self.on_progress_msg(to, from, p, now),
            Body::ProgressCancelled { task, attempt } => {
                self.stop_run(to, &task, attempt, now);
                self.poll_advert(to, now);
                self.rewake(to, now);
            }
            Body::ProgressRedirect { task, owner } => {
                if let Some(&o) = self.index.get(&owner)
                    && self.nodes[o as usize].online
                    && let Some(w) = self.nodes[to as usize].worker.as_mut()
                    && let Some(r) = w.runs.iter_mut().find(|r| r.task == task)
                {
                    r.target = o;
                }
            }
            Body::ProgressFailed { task, attempt } => {
                let succ = self.successor(&task.job, from);
                if let Some(w) = self.nodes[to as usize].worker.as_mut()
                    && let Some(r) = w
                        .runs
                        .iter_mut()
                        .find(|r| r.task == task && r.attempt == attempt)
                    && let Some(s) = succ
                {
                    r.target = s;
                }
            }
            Body::Result { bundle, tries } => self.on_result(to, from, bundle, tries, now),
            Body::ResultRetry {
                bundle,
                tries,
                redirect,
            } => {
                // Back at the worker: try again (the owner named, or the successor).
                if tries + 1 >= RESULT_TRIES {
                    self.m.results_dropped += 1;
                    return;
                }
                let target = redirect
                    .and_then(|o| self.index.get(&o).copied())
                    .filter(|o| self.nodes[*o as usize].online)
                    .or_else(|| self.successor(&bundle.offer.task.job, from))
                    .unwrap_or(from);
                let at = now + RESULT_RETRY_MS;
                self.q.push(
                    at,
                    Ev::Msg(Box::new(Msg {
                        to: target,
                        from: to,
                        sent_at: at,
                        body: Body::Result {
                            bundle,
                            tries: tries + 1,
                        },
                    })),
                );
            }
            Body::TaskFailed {
                task,
                attempt,
                tries,
            } => {
                let worker = self.nodes[from as usize].id;
                if let Some(s) = self.nodes[to as usize].sched.as_mut() {
                    match s
                        .m
                        .handle_task_failed(&task, &worker, attempt, "render failed", now)
                    {
                        Err(rendertrust_protocol::scheduler::FailureError::NotOwner {
                            owner,
                            ..
                        }) => {
                            if let Some(&o) = self.index.get(&owner)
                                && tries + 1 < RESULT_TRIES
                            {
                                self.send(
                                    from,
                                    o,
                                    Body::TaskFailed {
                                        task,
                                        attempt,
                                        tries: tries + 1,
                                    },
                                    now,
                                );
                            }
                        }
                        _ => {
                            self.sched_actions(to, now, None);
                            self.rewake(to, now);
                        }
                    }
                }
            }
            Body::TaskFailedRetry {
                task,
                attempt,
                tries,
            } => {
                if tries + 1 < RESULT_TRIES
                    && let Some(s) = self.successor(&task.job, from)
                {
                    self.send(
                        to,
                        s,
                        Body::TaskFailed {
                            task,
                            attempt,
                            tries: tries + 1,
                        },
                        now,
                    );
                }
            }
            Body::Cancel { task, attempt } => {
                self.stop_run(to, &task, attempt, now);
                self.poll_advert(to, now);
                self.rewake(to, now);
            }
            Body::Notify { job, event, bundle } => {
                self.on_notify(to, from, job, *event, bundle, now)
            }
            Body::Replicate { snapshot } => {
                let from_id = self.nodes[from as usize].id;
                if let Some(s) = self.nodes[to as usize].sched.as_mut() {
                    let yields = s.m.stats().yields;
                    if s.m.handle_replica(&from_id, *snapshot, now).is_ok() {
                        self.m.replicas_applied += 1;
                    }
                    self.m.yields += s.m.stats().yields - yields;
                    self.sched_actions(to, now, None);
                    self.rewake(to, now);
                }
            }
            Body::Fetch {
                job,
                task,
                attempt,
                tries,
            } => {
                // The worker serves its stored output: the reply arrives
                // after the transfer at the slower of the two links.
                let out = self.jobs[job as usize].output_mb;
                let mbps = self.nodes[to as usize]
                    .up_mbps
                    .min(self.nodes[from as usize].down_mbps);
                let (tr, fr) = (
                    self.nodes[to as usize].region,
                    self.nodes[from as usize].region,
                );
                let node = &mut self.nodes[to as usize];
                let d =
                    self.net.latency(tr, fr, &mut node.net_rng) + NetModel::transfer_ms(out, mbps);
                let at = self.arrival(to, from, now, now + d);
                self.q.push(
                    at,
                    Ev::Msg(Box::new(Msg {
                        to: from,
                        from: to,
                        sent_at: now,
                        body: Body::FetchReply {
                            job,
                            task,
                            attempt,
                            ok: true,
                            tries,
                        },
                    })),
                );
            }
            Body::FetchReply {
                job,
                task,
                attempt,
                ok,
                tries,
            } => self.on_fetch_reply(to, from, job, task, attempt, ok, tries, now),
        }
    }

    /// The live scheduler that takes over `job` when `dead` is unreachable:
    /// the HRW ranking over the schedulers online now (a provider lookup),
    /// minus `dead`.
    fn successor(&self, job: &JobId, dead: u32) -> Option<u32> {
        let dead_id = self.nodes[dead as usize].id;
        let live: Vec<NodeId> = self
            .schedulers
            .iter()
            .filter(|s| self.nodes[**s as usize].online)
            .map(|s| self.nodes[*s as usize].id)
            .collect();
        hrw::owner_excluding(hrw::job_key(job), live.iter(), &[dead_id])
            .and_then(|id| self.index.get(&id).copied())
    }

    // ----- scheduler side ----------------------------------------------------

    /// Carries out the scheduler's actions. `bundle` is the result just
    /// handed to `handle_result`, whose `Done` goes to the creator.
    fn sched_actions(&mut self, n: u32, now: u64, mut bundle: Option<Box<Bundle>>) {
        loop {
            let Some(a) = self.nodes[n as usize]
                .sched
                .as_mut()
                .and_then(|s| s.m.poll_action())
            else {
                return;
            };
            match a {
                SchedulerAction::Offer { to, offer, .. } => {
                    let Some(&w) = self.index.get(&to) else {
                        continue;
                    };
                    let Some(&job) = self.job_index.get(&offer.task.job) else {
                        continue;
                    };
                    self.m.offers += 1;
                    if let Some(l) = self.ledger.as_mut() {
                        l.offers
                            .insert((offer.task, offer.attempt), (n, offer.clone()));
                    }
                    self.send(
                        n,
                        w,
                        Body::Offer {
                            offer,
                            job,
                            crop: None,
                        },
                        now,
                    );
                }
                SchedulerAction::OfferCrop {
                    to, offer, crop, ..
                } => {
                    let Some(&w) = self.index.get(&to) else {
                        continue;
                    };
                    let Some(&job) = self.job_index.get(&offer.task.job) else {
                        continue;
                    };
                    self.m.offers += 1;
                    self.m.trust.crop_offers += 1;
                    if let Some(l) = self.ledger.as_mut() {
                        l.offers
                            .insert((offer.task, offer.attempt), (n, offer.clone()));
                    }
                    self.send(
                        n,
                        w,
                        Body::Offer {
                            offer,
                            job,
                            crop: Some(crop),
                        },
                        now,
                    );
                }
                SchedulerAction::Outcome {
                    worker, outcome, ..
                } => self.outcome(n, worker, outcome, now),
                SchedulerAction::CancelTask {
                    worker,
                    task,
                    attempt,
                } => {
                    if let Some(&w) = self.index.get(&worker) {
                        self.m.cancels += 1;
                        self.send(n, w, Body::Cancel { task, attempt }, now);
                    }
                }
                SchedulerAction::Notify {
                    creator,
                    job,
                    event,
                } => {
                    let Some(&j) = self.job_index.get(&job) else {
                        continue;
                    };
                    let b = match &event {
                        JobEvent::Done { task, attempt, .. }
                        | JobEvent::Vote { task, attempt, .. } => bundle
                            .take()
                            .filter(|b| b.offer.task.index == *task && b.offer.attempt == *attempt),
                        JobEvent::Failed { .. }
                        | JobEvent::JobFinished { .. }
                        | JobEvent::TakenOver { .. }
                        | JobEvent::Compare { .. }
                        | JobEvent::Rejected { .. }
                        | JobEvent::Verified { .. } => None,
                        JobEvent::Queued { .. } => {
                            self.m.queued_events += 1;
                            continue;
                        }
                        // Offered, Assigned, Progress: the creator's UI only.
                        _ => continue,
                    };
                    self.sched_event(j, &event, now);
                    if let Some(&c) = self.index.get(&creator) {
                        self.send(
                            n,
                            c,
                            Body::Notify {
                                job: j,
                                event: Box::new(event),
                                bundle: b,
                            },
                            now,
                        );
                    }
                }
                SchedulerAction::Escrow {
                    task,
                    attempt,
                    worker,
                    price,
                } => {
                    self.credits.escrow(task, attempt, worker, price);
                    if let Some(l) = self.ledger.as_mut()
                        && let Some(&j) = self.job_index.get(&task.job)
                    {
                        l.escrow(&self.jobs[j as usize].frame, task, attempt, now);
                    }
                    self.m.assignments += 1;
                    if let Some(&j) = self.job_index.get(&task.job) {
                        let job = &mut self.jobs[j as usize];
                        if let Some(first) = job.first_assigned.get_mut(task.index as usize) {
                            if *first == u64::MAX {
                                *first = now;
                                self.m.task_waits_ms.push((now - job.submitted_at) as u32);
                            } else {
                                job.rec.redispatches += 1;
                                self.m.redispatches += 1;
                                self.m.redispatch_times.push(((now - T0) / 1000) as u32);
                            }
                        }
                    }
                }
                SchedulerAction::Closed {
                    task,
                    attempt,
                    worker,
                    reason,
                } => {
                    self.credits.refund(task, attempt, worker, reason);
                    if let Some(l) = self.ledger.as_mut() {
                        l.refund(n, task, attempt, worker, reason, now);
                    }
                }
                SchedulerAction::Replicate { to, snapshot } => {
                    if let Some(&r) = self.index.get(&to) {
                        self.m.replications += 1;
                        self.send(n, r, Body::Replicate { snapshot }, now);
                    }
                }
            }
        }
    }

    /// Bookkeeping of the scheduler's word on tasks (deduplicated per task).
    fn sched_event(&mut self, j: u32, event: &JobEvent, now: u64) {
        let job = &mut self.jobs[j as usize];
        match event {
            JobEvent::Done { task, .. }
            | JobEvent::Verified { task, .. }
            | JobEvent::Failed { task, .. } => {
                let v = if matches!(event, JobEvent::Done { .. } | JobEvent::Verified { .. }) {
                    1
                } else {
                    2
                };
                if let Some(c) = job.closed.get_mut(*task as usize)
                    && *c == 0
                {
                    *c = v;
                    self.m.open_tasks -= 1;
                    if v == 2 {
                        self.m.tasks_failed += 1;
                    } else {
                        self.m.tasks_done += 1;
                    }
                }
            }
            JobEvent::JobFinished { .. } => {
                job.rec.sched_finished_at.get_or_insert(now - T0);
            }
            JobEvent::TakenOver { .. } => {
                job.rec.takeovers += 1;
                self.m.takeovers += 1;
            }
            _ => {}
        }
    }

    fn on_submit(&mut self, s: u32, c: u32, j: u32, rank: u8, now: u64) {
        let job = &self.jobs[j as usize];
        let (spec, frame) = (job.spec.clone(), job.frame.clone());
        let Some(sp) = self.nodes[s as usize].sched.as_mut() else {
            return;
        };
        let r = sp.m.submit(spec, frame, now);
        if matches!(
            r,
            Ok(rendertrust_protocol::scheduler::Submitted::New { .. })
        ) {
            // Bookkeeping starts when a scheduler holds the job (it places at once).
            let job = &mut self.jobs[j as usize];
            if job.closed.is_empty() {
                let n = job.spec.split.task_count() as usize;
                job.closed = vec![0; n];
                job.first_assigned = vec![u64::MAX; n];
                self.m.open_tasks += n as i64;
                self.m.tasks_submitted += n as u64;
            }
        }
        let (ok, busy) = match r {
            Ok(_) => (true, false),
            Err(SubmitError::TooManyJobs { .. } | SubmitError::TooManyTasks { .. }) => {
                (false, true)
            }
            Err(_) => (false, false),
        };
        self.sched_actions(s, now, None);
        self.rewake(s, now);
        self.send(
            s,
            c,
            Body::SubmitReply {
                job: j,
                rank,
                ok,
                busy,
            },
            now,
        );
    }

    fn on_result(&mut self, s: u32, w: u32, bundle: Box<Bundle>, tries: u8, now: u64) {
        let Some(sp) = self.nodes[s as usize].sched.as_mut() else {
            return;
        };
        match sp
            .m
            .handle_result(&bundle.result, ResultFrames::default(), now)
        {
            Ok(_) => {
                self.sched_actions(s, now, Some(bundle));
                self.rewake(s, now);
            }
            Err(ResultError::NotOwner { owner, .. }) => {
                self.send(
                    s,
                    w,
                    Body::ResultRetry {
                        bundle,
                        tries,
                        redirect: Some(owner),
                    },
                    now,
                );
            }
            Err(ResultError::UnknownJob(_)) => {
                self.send(
                    s,
                    w,
                    Body::ResultRetry {
                        bundle,
                        tries,
                        redirect: None,
                    },
                    now,
                );
            }
            Err(_) => self.m.results_refused += 1,
        }
    }

    fn on_progress_msg(&mut self, s: u32, w: u32, p: Progress, now: u64) {
        let Some(sp) = self.nodes[s as usize].sched.as_mut() else {
            return;
        };
        self.m.heartbeats += 1;
        match sp.m.handle_progress(&p, now) {
            Ok(()) => {
                self.sched_actions(s, now, None);
                self.rewake(s, now);
            }
            Err(ProgressError::NotOwner { owner, .. }) => self.send(
                s,
                w,
                Body::ProgressRedirect {
                    task: p.task,
                    owner,
                },
                now,
            ),
            // Not (yet) known here: keep reporting; the job may be taken over.
            Err(ProgressError::UnknownJob(_)) => {}
            Err(_) => self.send(
                s,
                w,
                Body::ProgressCancelled {
                    task: p.task,
                    attempt: p.attempt,
                },
                now,
            ),
        }
    }

    // ----- worker side -------------------------------------------------------

    fn own_advert(&self, n: u32, now: u64) -> CapacityAdvert {
        self.advert_of(n, self.running_of(n), 0, now)
    }

    fn on_offer(&mut self, w: u32, s: u32, offer: TaskOffer, j: u32, crop: Option<Rect>, now: u64) {
        let own = self.own_advert(w, now);
        let job = &self.jobs[j as usize];
        let Some(wp) = self.nodes[w as usize].worker.as_mut() else {
            return;
        };
        let accept = wp.m.offer(&offer, &job.spec, &own, now);
        let accepted = accept.accepted;
        if accepted && let Some(l) = self.ledger.as_mut() {
            l.accepts
                .insert((offer.task, offer.attempt), (w, accept.clone()));
        }
        // The answer travels back on the same exchange.
        let (wr, sr) = (self.nodes[w as usize].region, self.nodes[s as usize].region);
        let node = &mut self.nodes[w as usize];
        let d = if w == s {
            0
        } else {
            self.net.latency(wr, sr, &mut node.net_rng)
        };
        let at = self.arrival(w, s, now, now + d);
        self.q.push(
            at,
            Ev::Msg(Box::new(Msg {
                to: s,
                from: w,
                sent_at: now,
                body: Body::Accept { accept },
            })),
        );
        if !accepted {
            self.m.declines += 1;
            return;
        }
        self.m.busy_slots += 1;
        let node = &mut self.nodes[w as usize];
        let token = node.next_token;
        node.next_token = node.next_token.wrapping_add(1);
        let cached = node.cached.contains(&j);
        let inc = node.inc;
        let run = Run {
            task: offer.task,
            attempt: offer.attempt,
            job: j,
            target: s,
            token,
            started_at: None,
            run_ms: 0,
            fails: false,
            crop,
            offer,
        };
        if let Some(wp) = node.worker.as_mut() {
            if !cached {
                let _ = wp.m.fetching(&run.task, now);
            }
            if wp.runs.len() == wp.runs.capacity() {
                // A node runs one or a few tasks: room for exactly one more
                // (the usual first allocation holds 4 runs, ~1 KiB a worker).
                wp.runs.reserve_exact(1);
            }
            wp.runs.push(run);
        }
        // The key from the creator (one exchange), then the inputs unless
        // this worker has them from another task of the job.
        let fetch_ms = if cached {
            0
        } else {
            let c = self.jobs[j as usize].creator;
            let (cr, input) = (
                self.nodes[c as usize].region,
                self.jobs[j as usize].input_mb,
            );
            let mbps = self.nodes[c as usize]
                .up_mbps
                .min(self.nodes[w as usize].down_mbps);
            let node = &mut self.nodes[w as usize];
            let rtt = self.net.latency(node.region, cr, &mut node.net_rng)
                + self.net.latency(cr, node.region, &mut node.net_rng);
            2 * rtt + NetModel::transfer_ms(input, mbps)
        };
        self.q.push(now + fetch_ms, Ev::FetchDone(w, inc, token));
        self.poll_advert(w, now);
        self.rewake(w, now);
    }

    fn fetch_done(&mut self, w: u32, token: u32, now: u64) {
        let spf = |s: &World, j: u32| s.jobs[j as usize].spf;
        let node = &self.nodes[w as usize];
        let Some(wp) = node.worker.as_ref() else {
            return;
        };
        let Some(pos) = wp.runs.iter().position(|r| r.token == token) else {
            return;
        };
        let j = wp.runs[pos].job;
        // A spot-check line renders its crop: that fraction of the frame's
        // pixels (scene loading is not modelled).
        let crop_frac = wp.runs[pos].crop.map_or(1.0, |c| {
            let spec = &self.jobs[j as usize].spec;
            let area = f64::from(spec.width.max(1)) * f64::from(spec.height.max(1));
            (f64::from(c.w) * f64::from(c.h) / area).min(1.0)
        });
        let speed = self
            .sc
            .gpu_classes
            .get(node.class as usize)
            .map_or(1.0, |c| c.speed);
        let behaviour = node.behaviour;
        let base = spf(self, j);
        let sigma = self.sc.jobs.task_noise_sigma;
        let fail_p = self.sc.failures.task_fail_prob;
        let (lazy, slow) = (self.sc.dishonest.lazy_time, self.sc.dishonest.slow_factor);
        let node = &mut self.nodes[w as usize];
        let noise = if sigma > 0.0 {
            crate::dist::Dist::Lognormal { mean: 1.0, sigma }.sample(&mut node.rng)
        } else {
            1.0
        };
        let mut secs = base * noise / speed * crop_frac;
        match behaviour {
            Behaviour::Lazy => secs *= lazy,
            Behaviour::Slow => secs *= slow,
            _ => {}
        }
        let fails = node.rng.chance(fail_p);
        let mut run_ms = (secs * 1000.0).round().max(1.0) as u64;
        let end_ms = if fails {
            (run_ms as f64 * node.rng.unit()).round().max(1.0) as u64
        } else {
            run_ms
        };
        if fails {
            run_ms = end_ms;
        }
        // Remember the job's inputs.
        if !node.cached.contains(&j) {
            let k = node.cache_next % CACHE_JOBS;
            node.cached[k] = j;
            node.cache_next = k + 1;
        }
        let inc = node.inc;
        let mut actions = Vec::new();
        if let Some(wp) = node.worker.as_mut() {
            let r = &mut wp.runs[pos];
            r.started_at = Some(now);
            r.run_ms = run_ms;
            r.fails = fails;
            let task = r.task;
            if wp.m.running(&task, now).is_ok() {
                while let Some(a) = wp.m.poll_action() {
                    actions.push(a);
                }
            }
        }
        self.m.rendering += 1;
        if behaviour != Behaviour::Silent {
            self.q.push(now + end_ms, Ev::RunEnd(w, inc, token));
        }
        for a in actions {
            self.worker_action(w, a, now);
        }
        self.rewake(w, now);
    }

    fn worker_action(&mut self, w: u32, a: WorkerAction, now: u64) {
        match a {
            WorkerAction::Progress { progress, .. } => {
                if self.nodes[w as usize].behaviour == Behaviour::Silent {
                    return;
                }
                let target = self.nodes[w as usize]
                    .worker
                    .as_ref()
                    .and_then(|wp| wp.runs.iter().find(|r| r.task == progress.task))
                    .map(|r| r.target);
                if let Some(s) = target {
                    self.send(w, s, Body::Progress { p: progress }, now);
                }
            }
            WorkerAction::Abort { task, attempt } => {
                self.m.aborts += 1;
                self.drop_run(w, &task, attempt, now);
                self.poll_advert(w, now);
            }
        }
    }

    /// The runtime of (task, attempt) stops (cancelled or aborted).
    fn drop_run(&mut self, w: u32, task: &TaskId, attempt: u32, now: u64) {
        let node = &mut self.nodes[w as usize];
        let Some(wp) = node.worker.as_mut() else {
            return;
        };
        if let Some(pos) = wp
            .runs
            .iter()
            .position(|r| r.task == *task && r.attempt == attempt)
        {
            let r = wp.runs.swap_remove(pos);
            self.m.busy_slots -= 1;
            if let Some(s) = r.started_at {
                self.m.nodes[w as usize].busy_ms += now.saturating_sub(s);
                self.m.rendering -= 1;
            }
        }
    }

    fn stop_run(&mut self, w: u32, task: &TaskId, attempt: u32, now: u64) {
        let cancelled = self.nodes[w as usize]
            .worker
            .as_mut()
            .and_then(|wp| wp.m.cancel(task, attempt, now))
            .is_some();
        if cancelled {
            self.m.nodes[w as usize].cancelled += 1;
            self.drop_run(w, task, attempt, now);
        }
    }

    fn run_end(&mut self, w: u32, token: u32, now: u64) {
        let node = &mut self.nodes[w as usize];
        let Some(wp) = node.worker.as_mut() else {
            return;
        };
        let Some(pos) = wp.runs.iter().position(|r| r.token == token) else {
            return;
        };
        let r = wp.runs.swap_remove(pos);
        let started = r.started_at.unwrap_or(now);
        self.m.nodes[w as usize].busy_ms += now.saturating_sub(started);
        self.m.trust.gpu_ms += r.run_ms;
        if r.crop.is_some() {
            self.m.trust.gpu_crop_ms += r.run_ms;
        }
        self.m.rendering -= 1;
        self.m.busy_slots -= 1;
        if r.fails {
            let _ = wp.m.failed(&r.task, now);
            self.m.nodes[w as usize].failed += 1;
            self.send(
                w,
                r.target,
                Body::TaskFailed {
                    task: r.task,
                    attempt: r.attempt,
                    tries: 0,
                },
                now,
            );
        } else if let Ok(slot) = wp.m.finished(&r.task, now) {
            self.m.nodes[w as usize].results += 1;
            let wrong = node.behaviour.wrong_output();
            let hash = output_hash(&r.task, r.crop, wrong.then_some(node.id));
            self.m.trust.results += 1;
            if wrong {
                self.m.trust.wrong_results += 1;
            }
            let usage = ResourceUsage {
                gpu_ms: r.run_ms,
                cpu_ms: r.run_ms / 10,
                peak_mem_bytes: 4 << 30,
            };
            let creator = self.jobs[r.job as usize].spec.creator;
            let result = TaskResult {
                task: r.task,
                worker: node.id,
                attempt: r.attempt,
                output_hash: hash,
                output_manifest: ContentId(hash),
                wrapped_key: WrappedKey {
                    ephemeral: [0; 32],
                    ciphertext: [0; 32],
                    tag: [0; 16],
                },
                usage,
            };
            let receipt = Receipt {
                task: r.task,
                worker: node.id,
                creator,
                scheduler: r.offer.scheduler,
                attempt: r.attempt,
                output_hash: hash,
                usage,
                started_at_ms: slot.started_at_ms.unwrap_or(slot.accepted_at_ms),
                finished_at_ms: now,
                price: slot.price,
            };
            let bundle = Box::new(Bundle {
                offer: r.offer.clone(),
                result,
                receipt,
            });
            self.send(w, r.target, Body::Result { bundle, tries: 0 }, now);
        }
        self.poll_advert(w, now);
        self.rewake(w, now);
    }

    // ----- creator side ------------------------------------------------------

    fn new_job(&mut self, now: u64) {
        let online: Vec<u32> = self
            .creators
            .iter()
            .copied()
            .filter(|c| self.nodes[*c as usize].online)
            .collect();
        if online.is_empty() {
            self.m.jobs_no_creator += 1;
            return;
        }
        let c = online[self.rng_arrivals.below(online.len())];
        let jobs = &self.sc.jobs;
        let r = &mut self.rng_jobs;
        let frames = (jobs.frames.sample(r).round() as u64).clamp(1, 100_000) as u32;
        let spf = jobs.seconds_per_frame.sample(r).max(0.001);
        let input_mb = jobs.input_mb.sample(r);
        let output_mb = jobs.output_mb.sample(r);
        let kind = self.sc.job_kind();
        let verification = self
            .sc
            .trust
            .policy_for(&kind)
            .unwrap_or(VerificationPolicy::None);
        let requirements = Requirements {
            gpu_vendor: jobs
                .gpu_vendor
                .as_deref()
                .and_then(|v| vendor_of(v).ok().flatten()),
            min_vram_bytes: jobs.min_vram_gb << 30,
            min_ram_bytes: 0,
            min_runtime_version: None,
        };
        let Some(cp) = self.nodes[c as usize].creator.as_mut() else {
            return;
        };
        cp.nonce += 1;
        let creator = cp.key.node_id();
        let spec = JobSpec {
            id: JobId::derive(&creator, cp.nonce),
            creator,
            nonce: cp.nonce,
            created_at_ms: now,
            kind,
            inputs: Vec::new(),
            requirements,
            split: SplitRule::Frames {
                start: 1,
                end: frames,
                step: 1,
            },
            width: jobs.width,
            height: jobs.height,
            format: ImageFormat::Png,
            max_price_per_task: jobs.max_price_per_task,
            verification,
            deadline_ms: now + jobs.deadline_s * 1000,
        };
        let frame: Arc<[u8]> = match Signed::sign(&cp.key, &spec) {
            Ok(s) => Arc::from(s.into_bytes()),
            Err(_) => {
                self.m.jobs_rejected += 1;
                return;
            }
        };
        let j = self.jobs.len() as u32;
        self.job_index.insert(spec.id, j);
        let rec = JobRecord {
            index: j,
            id: spec.id.to_string()[..16].to_string(),
            creator: c,
            submitted_at: now - T0,
            frames,
            seconds_per_frame: spf,
            ..JobRecord::default()
        };
        self.jobs.push(SimJob {
            spec,
            frame,
            creator: c,
            submitted_at: now,
            spf,
            input_mb,
            output_mb,
            owner: None,
            taken: false,
            cj: None,
            closed: Vec::new(),
            first_assigned: Vec::new(),
            rec,
        });
        self.m.jobs_submitted += 1;
        self.jobs_open += 1;
        // The creator looks up the live schedulers first.
        let at = now + self.net.lookup_ms;
        self.q.push(at, Ev::Resubmit(j));
    }

    /// Submits job `j` to the scheduler ranked `rank` by HRW among the live ones.
    fn submit(&mut self, j: u32, rank: u8, now: u64) {
        let job = &self.jobs[j as usize];
        if job.taken || job.rec.finished_at.is_some() {
            return;
        }
        let c = job.creator;
        let live: Vec<NodeId> = self
            .schedulers
            .iter()
            .filter(|s| self.nodes[**s as usize].online)
            .map(|s| self.nodes[*s as usize].id)
            .collect();
        let ranked = hrw::rank(hrw::job_key(&job.spec.id), live.iter());
        match ranked.get(rank as usize).and_then(|id| self.index.get(id)) {
            Some(&s) => {
                // The creator records the job before sending it, trusting
                // the scheduler it submits to.
                let sid = self.nodes[s as usize].id;
                let job = &mut self.jobs[j as usize];
                match job.cj.as_mut() {
                    Some(cj) => {
                        cj.trust_scheduler(sid);
                    }
                    None => job.cj = Some(CreatorJob::new(job.spec.clone(), sid)),
                }
                self.send(c, s, Body::Submit { job: j, rank }, now);
            }
            None => {
                if now + SUBMIT_RETRY_MS < job.spec.deadline_ms {
                    self.q.push(now + SUBMIT_RETRY_MS, Ev::Resubmit(j));
                } else {
                    self.give_up(j, now);
                }
            }
        }
    }

    fn give_up(&mut self, j: u32, now: u64) {
        let job = &mut self.jobs[j as usize];
        if job.rec.finished_at.is_none() && !job.rec.rejected {
            job.rec.rejected = true;
            self.m.jobs_rejected += 1;
            self.jobs_open -= 1;
        }
        let _ = now;
    }

    #[allow(clippy::too_many_arguments)]
    fn on_submit_reply(
        &mut self,
        _c: u32,
        s: u32,
        j: u32,
        rank: u8,
        ok: bool,
        busy: bool,
        now: u64,
    ) {
        if ok {
            let job = &mut self.jobs[j as usize];
            if job.taken {
                return;
            }
            job.taken = true;
            job.owner = Some(s);
            job.rec.owner = s;
        } else if busy {
            self.submit(j, rank.saturating_add(1), now);
        } else {
            self.give_up(j, now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_notify(
        &mut self,
        c: u32,
        s: u32,
        j: u32,
        event: JobEvent,
        bundle: Option<Box<Bundle>>,
        now: u64,
    ) {
        let job = &mut self.jobs[j as usize];
        let Some(cj) = job.cj.as_mut() else {
            return;
        };
        match event {
            JobEvent::Vote { .. } => {
                let Some(b) = bundle else {
                    return;
                };
                let Some(checked) = checked_of(*b) else {
                    return;
                };
                match cj.vote_verified(checked) {
                    Ok(VoteDecision::Fetch(r)) => self.fetch_checked(c, j, &r, now),
                    Ok(_) => {}
                    Err(_) => self.m.results_refused_by_creator += 1,
                }
            }
            JobEvent::Verified { task, attempt, .. } => match cj.verified(task, attempt) {
                Ok(Some(r)) => self.fetch_checked(c, j, &r, now),
                Ok(None) => {}
                Err(_) => self.m.trust.verdicts_refused += 1,
            },
            JobEvent::Rejected { task, attempt, .. } => cj.rejected(task, attempt),
            JobEvent::Compare {
                task,
                crop,
                reference_attempt,
                check_attempt,
                cross,
            } => {
                let req = match cj.compare(task, crop, reference_attempt, check_attempt, cross) {
                    Ok(r) => r,
                    Err(_) => {
                        self.m.trust.comparisons_refused += 1;
                        return;
                    }
                };
                // The creator fetches both outputs and computes the metric.
                // Modelled: two honest renders of the same pixels agree
                // (SSIM well above any threshold); a wrong or made-up output
                // disagrees with everything (each liar's output is its own).
                let correct = |r: &CheckedResult| {
                    self.index
                        .get(&r.offer.worker)
                        .is_some_and(|w| !self.nodes[*w as usize].behaviour.wrong_output())
                };
                let agree = correct(&req.reference) && correct(&req.check);
                let similarity = if agree { 985 } else { 310 };
                let (rh, ch) = (
                    req.reference.result.output_hash,
                    req.check.result.output_hash,
                );
                let job = &mut self.jobs[j as usize];
                let Some(cj) = job.cj.as_mut() else {
                    return;
                };
                match cj.compared(
                    task,
                    reference_attempt,
                    check_attempt,
                    Some(rh),
                    Some(ch),
                    CompareResult::Similarity(similarity),
                ) {
                    Ok(comparison) => {
                        self.m.trust.comparisons += 1;
                        self.send(c, s, Body::Compared { comparison }, now);
                    }
                    // The creator asked for more comparisons of the task
                    // than it remembers (`creator::MAX_COMPARISONS`): see
                    // sim/README.md, "Trust".
                    Err(_) => self.m.trust.comparisons_refused += 1,
                }
            }
            JobEvent::Done { .. } => {
                let Some(b) = bundle else {
                    return;
                };
                let receipt_id =
                    match rendertrust_protocol::signed::message_id(&b.receipt.worker, &b.receipt) {
                        Ok(id) => id.0,
                        Err(_) => return,
                    };
                let Bundle {
                    offer,
                    result,
                    receipt,
                } = *b;
                match cj.check_verified(CheckedResult {
                    offer,
                    result,
                    receipt,
                    receipt_id,
                    frames: ResultFrames::default(),
                }) {
                    Ok(Decision::Fetch(checked)) => {
                        let w = self.index.get(&checked.offer.worker).copied();
                        if let Some(w) = w {
                            self.send(
                                c,
                                w,
                                Body::Fetch {
                                    job: j,
                                    task: checked.offer.task.index,
                                    attempt: checked.offer.attempt,
                                    tries: 0,
                                },
                                now,
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(_) => self.m.results_refused_by_creator += 1,
                }
            }
            JobEvent::Failed { task, reason, .. } => {
                cj.task_failed(task, reason.to_string());
                self.check_job_finished(j, now);
            }
            JobEvent::TakenOver { by } => {
                cj.trust_scheduler(by);
                job.owner = self.index.get(&by).copied();
            }
            _ => {}
        }
    }

    /// The creator fetches the output of a result it decided to take.
    fn fetch_checked(&mut self, c: u32, j: u32, r: &CheckedResult, now: u64) {
        if let Some(&w) = self.index.get(&r.offer.worker) {
            self.send(
                c,
                w,
                Body::Fetch {
                    job: j,
                    task: r.offer.task.index,
                    attempt: r.offer.attempt,
                    tries: 0,
                },
                now,
            );
        }
    }

    /// A scheduler's verification outcome: into its reputation book, and
    /// the book's standing back into the scheduler (as the node does).
    fn outcome(&mut self, n: u32, worker: NodeId, outcome: Outcome, now: u64) {
        let cheater = self
            .index
            .get(&worker)
            .is_some_and(|w| self.nodes[*w as usize].behaviour.wrong_output());
        let t = &mut self.m.trust;
        match outcome {
            Outcome::Verified => t.outcomes_verified += 1,
            Outcome::Failed if cheater => t.caught += 1,
            Outcome::Failed => t.failed_honest += 1,
            Outcome::Lost => t.outcomes_lost += 1,
        }
        if let Some(s) = self.nodes[n as usize].sched.as_mut()
            && let Some(book) = s.book.as_mut()
        {
            book.observe(worker, outcome, now);
            let st = book.standing(&worker, now);
            s.m.set_reputation(worker, st.permille);
            s.m.set_probation(worker, st.probation);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetch_reply(
        &mut self,
        c: u32,
        w: u32,
        j: u32,
        task: u32,
        attempt: u32,
        ok: bool,
        tries: u8,
        now: u64,
    ) {
        let job = &mut self.jobs[j as usize];
        let Some(cj) = job.cj.as_mut() else {
            return;
        };
        if !ok {
            if tries + 1 < FETCH_TRIES {
                let wait = (FETCH_RETRY_MS << tries.min(10)).min(FETCH_RETRY_MAX_MS);
                let at = now + wait;
                self.q.push(
                    at,
                    Ev::Msg(Box::new(Msg {
                        to: w,
                        from: c,
                        sent_at: at,
                        body: Body::Fetch {
                            job: j,
                            task,
                            attempt,
                            tries: tries + 1,
                        },
                    })),
                );
                return;
            }
            self.m.fetches_failed += 1;
            match cj.fetch_failed(task, attempt) {
                Some(next) => {
                    if let Some(&nw) = self.index.get(&next.offer.worker) {
                        self.send(
                            c,
                            nw,
                            Body::Fetch {
                                job: j,
                                task,
                                attempt: next.offer.attempt,
                                tries: 0,
                            },
                            now,
                        );
                    }
                }
                None => {
                    // No source left: the owner runs the task again
                    // (`Scheduler::handle_unfetchable`), as the node does.
                    let waiting = matches!(
                        cj.tasks().get(task as usize),
                        Some(rendertrust_protocol::creator::TaskState::Waiting)
                    );
                    let task_id = cj.spec().id;
                    if waiting && let Some(owner) = job.owner {
                        self.send(
                            c,
                            owner,
                            Body::Unfetchable {
                                task: TaskId {
                                    job: task_id,
                                    index: task,
                                },
                                attempt,
                            },
                            now,
                        );
                    }
                }
            }
            return;
        }
        // The plaintext hash of what the worker stored is the hash it signed
        // (no behaviour tampers with stored outputs).
        let Some(signed_hash) = cj.tasks().get(task as usize).and_then(|t| match t {
            rendertrust_protocol::creator::TaskState::Fetching { fetching, .. } => {
                Some((fetching.result.output_hash, fetching.receipt.clone()))
            }
            _ => None,
        }) else {
            return;
        };
        let (hash, receipt) = signed_hash;
        if let Ok(acceptance) = cj.fetched(task, attempt, hash, now) {
            let worker = receipt.worker;
            let true_hash = output_hash(&receipt.task, None, None);
            let wrong = hash != true_hash;
            self.credits.settle(&receipt, &acceptance, wrong);
            if let Some(l) = self.ledger.as_mut()
                && let (Some(&wi), Some(&ci)) = (
                    self.index.get(&receipt.worker),
                    self.index.get(&acceptance.creator),
                )
            {
                l.settle(wi, ci, &receipt, &acceptance, now);
            }
            self.m.tasks_accepted += 1;
            self.m.trust.gpu_accepted_ms += receipt.usage.gpu_ms;
            if let Some(&wi) = self.index.get(&worker)
                && self.nodes[wi as usize].behaviour.wrong_output()
            {
                self.m.trust.cheater_credits += receipt.price;
            }
            if wrong {
                self.m.wrong_accepted += 1;
                job.rec.wrong_accepted += 1;
            }
            if let Some(&wi) = self.index.get(&worker) {
                self.m.nodes[wi as usize].accepted += 1;
                if wrong {
                    self.m.nodes[wi as usize].wrong_accepted += 1;
                }
            }
            self.check_job_finished(j, now);
        }
    }

    fn check_job_finished(&mut self, j: u32, now: u64) {
        let job = &mut self.jobs[j as usize];
        if job.rec.finished_at.is_some() {
            return;
        }
        if job.cj.as_ref().is_some_and(CreatorJob::is_finished) {
            job.rec.finished_at = Some(now - T0);
            let makespan = now - job.submitted_at;
            job.rec.makespan_ms = Some(makespan);
            self.jobs_open -= 1;
            self.m.jobs_finished += 1;
            // Keep the counts; the creator's per-task state (every accepted
            // result) is not needed any more: at 100 000 nodes it would hold
            // millions of results.
            if let Some(cj) = job.cj.take() {
                let c = cj.counts();
                job.rec.accepted = c.accepted as u32;
                job.rec.creator_failed = c.failed as u32;
            }
            job.first_assigned = Vec::new();
        }
    }

    // ----- measurement -------------------------------------------------------

    fn sample(&mut self, now: u64) {
        let s = Sample {
            t_s: (now - T0) / 1000,
            online_workers: self.m.online_workers,
            online_slots: self.m.online_slots,
            busy_slots: self.m.busy_slots,
            rendering: self.m.rendering,
            open_tasks: self.m.open_tasks,
            jobs_open: self.jobs_open as i64,
            redispatches: self.m.redispatches,
            tasks_done: self.m.tasks_done,
            credits_jain: self.credits.jain(),
        };
        self.m.samples.push(s);
    }
}

/// The job service's capacity refresh: every entry that changed since the
/// last one goes to the scheduler (`observe_entry`, in node id order, as
/// the service walks the table), every node that left it is forgotten.
fn refresh(s: &mut SchedPart, now: u64) {
    let mut changed = std::mem::take(&mut s.changed);
    changed.sort_unstable();
    changed.dedup();
    for id in &changed {
        if let Some(e) = s.table.get(id, now) {
            s.m.observe_entry(e, now);
        }
    }
    let mut gone = std::mem::take(&mut s.gone);
    gone.sort_unstable();
    gone.dedup();
    for id in &gone {
        if s.table.get(id, now).is_none() {
            s.m.forget_node(id, now);
        }
    }
    // Keep the buffers' capacity for the next second.
    changed.clear();
    s.changed = changed;
}

/// The creator's view of a worker's result bundle after the signature
/// checks (modelled): the decoded messages and the receipt's id.
fn checked_of(b: Bundle) -> Option<CheckedResult> {
    let receipt_id = rendertrust_protocol::signed::message_id(&b.receipt.worker, &b.receipt)
        .ok()?
        .0;
    let Bundle {
        offer,
        result,
        receipt,
    } = b;
    Some(CheckedResult {
        offer,
        result,
        receipt,
        receipt_id,
        frames: ResultFrames::default(),
    })
}

/// The output hash of a task: the true one, or (for a dishonest worker)
/// one derived from the worker's id.
fn output_hash(task: &TaskId, crop: Option<Rect>, liar: Option<NodeId>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("rendertrust-sim 2026-11 output v1");
    h.update(&task.job.0);
    h.update(&task.index.to_le_bytes());
    if let Some(c) = crop {
        for v in [c.x, c.y, c.w, c.h] {
            h.update(&v.to_le_bytes());
        }
    }
    if let Some(l) = liar {
        h.update(l.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// The advert template of a node kind.
fn template_advert(
    sc: &Scenario,
    class: u16,
    region: u16,
    worker: bool,
    sched: bool,
) -> CapacityAdvert {
    let c = sc.gpu_classes.get(class as usize);
    let mut roles = Vec::new();
    if worker {
        roles.push(Role::Worker);
    }
    if sched {
        roles.push(Role::Scheduler);
    }
    let gpus = c
        .and_then(|c| {
            vendor_of(&c.vendor).ok().flatten().map(|vendor| GpuInfo {
                vendor,
                // The model name reaches no decision; empty costs no allocation.
                model: String::new(),
                vram_bytes: c.vram_gb << 30,
            })
        })
        .into_iter()
        .collect();
    // Workers offer the runtime the scenario's jobs need (one allocation
    // less per advert than listing both).
    let runtimes = if !worker {
        Vec::new()
    } else if sc.jobs.kind == "builtin" {
        vec![RuntimeInfo {
            kind: RuntimeKind::Builtin,
            version: "1".into(),
        }]
    } else {
        vec![RuntimeInfo {
            kind: RuntimeKind::Blender,
            version: "4.2".into(),
        }]
    };
    CapacityAdvert {
        node: NodeId::from_bytes([0; 32]),
        seq: 0,
        issued_at_ms: 0,
        refresh_ms: 10_000,
        wrap_key: [0; 32],
        roles,
        cpu_cores: 16,
        cpu_model: String::new(),
        ram_bytes: 64 << 30,
        disk_free_bytes: 1 << 40,
        gpus,
        runtimes,
        bench_mfpm: c.map_or(0, |c| (c.speed * 100_000.0) as u64),
        running_tasks: 0,
        max_tasks: c.map_or(0, |c| c.slots),
        price_per_task: c.map_or(0, |c| c.price),
        region: sc
            .regions
            .get(region as usize)
            .map_or_else(String::new, |r| r.name.clone()),
    }
}

/// Drives `protocol::ledger::Ledger` with the run's credit events, really
/// signed, as one ledger peer that receives every event (its state is a
/// function of the admitted set, so the order gossip would deliver them in
/// does not change the end state).
pub struct LedgerDriver {
    /// The ledger machine.
    pub ledger: rendertrust_protocol::ledger::Ledger,
    keys: Vec<Option<NodeKey>>,
    /// Offers made, by (task, attempt): the escrow needs them signed.
    offers: rustc_hash::FxHashMap<(TaskId, u32), (u32, TaskOffer)>,
    /// Accepts given, by (task, attempt).
    accepts: rustc_hash::FxHashMap<(TaskId, u32), (u32, TaskAccept)>,
    admitted: u64,
    refused: u64,
    unsigned: u64,
}

impl LedgerDriver {
    fn new(keys: Vec<Option<NodeKey>>) -> LedgerDriver {
        LedgerDriver {
            ledger: rendertrust_protocol::ledger::Ledger::new(Default::default()),
            keys,
            offers: rustc_hash::FxHashMap::default(),
            accepts: rustc_hash::FxHashMap::default(),
            admitted: 0,
            refused: 0,
            unsigned: 0,
        }
    }

    fn key(&self, node: u32) -> Option<&NodeKey> {
        self.keys.get(node as usize).and_then(Option::as_ref)
    }

    fn feed(&mut self, event: Option<rendertrust_protocol::ledger::LedgerEvent>, now: u64) {
        let Some(event) = event else {
            self.unsigned += 1;
            return;
        };
        match self.ledger.handle_event(&event, now) {
            Ok(_) => self.admitted += 1,
            Err(_) => self.refused += 1,
        }
    }

    fn escrow(&mut self, spec_frame: &[u8], task: TaskId, attempt: u32, now: u64) {
        let offer = self.offers.remove(&(task, attempt));
        let accept = self.accepts.remove(&(task, attempt));
        let event = (|| {
            let (s, offer) = offer?;
            let (w, accept) = accept?;
            Some(rendertrust_protocol::ledger::LedgerEvent::Escrow {
                spec: Signed::from_slice(spec_frame).ok()?,
                offer: Signed::sign(self.key(s)?, &offer).ok()?,
                accept: Signed::sign(self.key(w)?, &accept).ok()?,
            })
        })();
        self.feed(event, now);
    }

    fn refund(
        &mut self,
        s: u32,
        task: TaskId,
        attempt: u32,
        worker: NodeId,
        reason: rendertrust_protocol::scheduler::CloseReason,
        now: u64,
    ) {
        let outcome = reason.outcome();
        let event = self.key(s).and_then(|k| {
            let closed = rendertrust_protocol::wire::TaskClosed {
                task,
                attempt,
                worker,
                scheduler: k.node_id(),
                outcome,
                closed_at_ms: now,
            };
            Some(rendertrust_protocol::ledger::LedgerEvent::Refund {
                closed: Signed::sign(k, &closed).ok()?,
            })
        });
        self.feed(event, now);
    }

    fn settle(
        &mut self,
        w: u32,
        c: u32,
        receipt: &Receipt,
        acceptance: &rendertrust_protocol::wire::ReceiptAcceptance,
        now: u64,
    ) {
        let event = (|| {
            Some(rendertrust_protocol::ledger::LedgerEvent::Settle {
                receipt: Signed::sign(self.key(w)?, receipt).ok()?,
                acceptance: Signed::sign(self.key(c)?, acceptance).ok()?,
            })
        })();
        self.feed(event, now);
    }

    fn report(&self) -> crate::metrics::LedgerReport {
        let l = &self.ledger;
        let balances: i128 = l.balances().map(|(_, b)| b).sum();
        crate::metrics::LedgerReport {
            admitted: self.admitted,
            refused: self.refused,
            unsigned: self.unsigned,
            minted: i64::try_from(l.minted()).unwrap_or(i64::MAX),
            escrowed: i64::try_from(l.escrowed()).unwrap_or(i64::MAX),
            node_balances: i64::try_from(balances).unwrap_or(i64::MAX),
            balanced: balances + l.escrowed() == l.minted()
                && l.recompute_accounts() == *l.accounts(),
        }
    }
}

#[cfg(test)]
mod link_tests {
    use super::{LINK_SLOTS, LinkSlots, Links};
    use proptest::prelude::*;

    proptest! {
        /// The slots and the swept map give every message the arrival a
        /// map of every link ever used gives it: the later of its own and
        /// the link's previous message's.
        #[test]
        fn in_flight_links_order_messages_as_a_full_map_does(
            sends in proptest::collection::vec((0u32..6, 0u32..6, 0u64..4, 0u64..40), 1..400),
        ) {
            let mut slots: Vec<LinkSlots> = vec![[(u32::MAX, 0); LINK_SLOTS]; 6];
            let mut links = Links::default();
            let mut full = std::collections::HashMap::<(u32, u32), u64>::new();
            let mut now = 0u64;
            for (from, to, step, delay) in sends {
                now += step;
                let at = now + delay;
                let want = {
                    let last = full.entry((from, to)).or_insert(0);
                    *last = (*last).max(at);
                    *last
                };
                let got = links.arrival(&mut slots[from as usize], from, to, now, at);
                prop_assert_eq!(got, want);
            }
        }
    }

    /// A node with more links in flight than slots (a scheduler) keeps the
    /// rest in the map, which is swept of passed arrivals as it grows.
    #[test]
    fn the_map_holds_the_overflow_and_is_swept() {
        let mut slots: LinkSlots = [(u32::MAX, 0); LINK_SLOTS];
        let mut links = Links::default();
        for to in 0..5000u32 {
            assert_eq!(links.arrival(&mut slots, 1, to, 0, 10), 10);
        }
        assert_eq!(links.map.len(), 5000 - LINK_SLOTS);
        // All passed: the next overflow past the sweep mark sweeps them,
        // and only them.
        let last = |to: u32| 21 + u64::from(to % 3);
        for to in 5000..15_000u32 {
            assert_eq!(links.arrival(&mut slots, 1, to, 20, last(to)), last(to));
        }
        assert!(links.map.len() < 10_000, "{}", links.map.len());
        assert!(links.map.values().all(|&l| l > 20));
        for to in 5000..15_000u32 {
            assert_eq!(
                links.arrival(&mut slots, 1, to, 20, 20),
                last(to),
                "link to {to}"
            );
        }
    }
}
