//! The job service task: one loop that owns the scheduler, worker and
//! creator machines of this node and carries out their actions.
//!
//! Inputs, each handled to completion before the next (the str0m rule: one
//! mutation, then drain the machines' actions):
//! * requests and gossip from peers (`net::Inbound`), decoded with
//!   `protocol::rpc`, signatures checked before any machine sees them;
//! * commands from the API ([`JobsCommand`]);
//! * results of work this loop started in other tasks (sealing, fetching,
//!   runtimes, requests to peers), as `Internal` events;
//! * the machines' timers; a capacity refresh every [`CAPACITY_REFRESH`].
//!
//! Nothing slow runs in the loop: I/O and CPU work run in spawned tasks that
//! report back. The clock is read once per input (`now_ms`).
//!
//! Persistence (sled trees): `jobs` holds this node's jobs as creator (written
//! before a job is sent and after every accepted result, flushed before the
//! acceptance leaves the node); `scheduler` holds the scheduler snapshot
//! (written at most every [`SNAPSHOT_EVERY`] when it changed, and at stop);
//! `reputation` holds the reputation book of schedulers and ledger peers
//! (`super::reputation`, written at most every 2 s when it changed).
//! A restarted node resumes both; a worker's running tasks are not resumed
//! (their scheduler re-offers them after the heartbeat timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rendertrust_protocol::capacity::CapacityEntry;
use rendertrust_protocol::codec;
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::reputation::ReputationConfig;
use rendertrust_protocol::rpc::{ErrorCode, RpcRequest, RpcResponse};
use rendertrust_protocol::scheduler::{
    Scheduler, SchedulerConfig, SchedulerSnapshot, SnapshotAssembler,
};
use rendertrust_protocol::seal::WrapSecret;
use rendertrust_protocol::wire::{CapacityAdvert, JobId, Role, TaskId};
use rendertrust_protocol::worker::{Worker, WorkerConfig};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::create::CreatorEntry;
use super::handle::{JobsCommand, JobsError, UPDATE_BUFFER};
use super::outbox::{Outbox, RpcClient};
use super::view::JobUpdate;
use crate::content::ContentStore;
use crate::net::{Inbound, InboundRequest, NetHandle, Service as NetService, Topic, unix_now_ms};
use crate::runtime::{GpuBackend, Limits};
use crate::store::Store;

/// How often the capacity view is refreshed at least, and the job timers
/// (creator queries) run.
pub const CAPACITY_REFRESH: Duration = Duration::from_secs(1);
/// Least time between two capacity refreshes triggered by table changes
/// (a changed advert reaches the scheduler within this, not a full tick).
pub const CAPACITY_DEBOUNCE: Duration = Duration::from_millis(50);
/// Least time between two scheduler snapshot writes.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// Events from spawned work waiting for the loop, at most.
pub const INTERNAL_QUEUE: usize = 4096;
/// Longest the loop sleeps.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Key of the scheduler snapshot in the `scheduler` tree.
const SNAPSHOT_KEY: &[u8] = b"snapshot";

/// Settings of the job service.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Tasks run at once on this node (also advertised).
    pub max_tasks: u16,
    /// Worker heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Limits of each task.
    pub limits: Limits,
    /// GPU backend for render tasks, if the node has one.
    pub gpu: Option<GpuBackend>,
    /// Scheduler settings (when the node is a scheduler).
    pub scheduler: SchedulerConfig,
    /// Reputation book settings (schedulers and ledger peers keep one).
    pub reputation: ReputationConfig,
    /// TEST ONLY (feature `dishonest-test-hooks`): how this worker cheats.
    #[cfg(feature = "dishonest-test-hooks")]
    pub dishonest: Option<super::dishonest::Dishonesty>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            max_tasks: 1,
            heartbeat_interval_ms: 2_000,
            limits: Limits::default(),
            gpu: None,
            scheduler: SchedulerConfig::default(),
            reputation: ReputationConfig::default(),
            #[cfg(feature = "dishonest-test-hooks")]
            dishonest: None,
        }
    }
}

/// What the service needs to start.
pub struct ServiceParts {
    /// The node key (signs offers, results, receipts, acceptances).
    pub key: NodeKey,
    /// The node's wrap secret (unwraps job and output keys).
    pub wrap: WrapSecret,
    /// The network.
    pub net: NetHandle,
    /// Requests and gossip from peers.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Commands from the API.
    pub commands: mpsc::Receiver<JobsCommand>,
    /// The node's store.
    pub store: Store,
    /// The content store.
    pub content: ContentStore,
    /// The data dir (task dirs, results).
    pub data_dir: PathBuf,
    /// Roles this node takes.
    pub roles: Vec<Role>,
    /// The capacity advert template (the service updates `running_tasks`).
    pub advert: watch::Sender<CapacityAdvert>,
    /// Bumped by the network driver whenever its capacity table changes.
    pub capacity_version: watch::Receiver<u64>,
    /// Settings.
    pub config: JobsConfig,
    /// The ledger service's queue, when this node is a ledger peer: ledger
    /// gossip and ledger requests go there, with this node's own events.
    pub ledger: Option<mpsc::Sender<LocalLedger>>,
}

/// What the job service hands the node's ledger service (when the node is a
/// ledger peer): its own ledger events (gossipsub does not deliver a node's
/// own messages to itself), gossip on the ledger topics, and requests on the
/// ledger service.
#[derive(Debug)]
pub enum LocalLedger {
    /// An encoded ledger event this node published.
    Event(Vec<u8>),
    /// Gossip or a request from a peer, for the ledger service.
    Inbound(Inbound),
}

/// Work finished elsewhere, reported to the loop.
pub(crate) enum Internal {
    /// A creator's inputs are sealed; submit the job.
    Sealed(Box<super::create::Sealed>),
    /// The answer of a scheduler to a submit.
    SubmitAnswer {
        job: JobId,
        scheduler: NodeId,
        result: Result<(), String>,
        remaining: Vec<NodeId>,
    },
    /// A worker's answer to an offer (or why it did not come).
    OfferAnswer {
        task: TaskId,
        attempt: u32,
        worker: NodeId,
        result: Result<RpcResponse, String>,
    },
    /// A worker-side task moved on.
    Work(super::work::WorkEvent),
    /// A creator's fetch of a result ended.
    Fetched(Box<super::create::Fetched>),
    /// A progress report was answered "cancelled": stop the task.
    StopTask { task: TaskId, attempt: u32 },
    /// A query answer from a job's scheduler.
    QueryAnswer {
        job: JobId,
        result: Result<RpcResponse, String>,
    },
    /// A worker's result could not reach the scheduler it was sent to.
    ResultUndelivered {
        frames: Box<rendertrust_protocol::creator::ResultFrames>,
        tried: Vec<NodeId>,
    },
    /// A result's frames, recovered from its worker.
    ResultFrames {
        job: JobId,
        frames: Box<rendertrust_protocol::creator::ResultFrames>,
    },
    /// A spot-check comparison finished.
    Compared(Box<super::compare::CompareDone>),
    /// A request from this node to itself.
    LocalRpc {
        request: Box<RpcRequest>,
        reply: tokio::sync::oneshot::Sender<RpcResponse>,
    },
}

/// The service state (see the module docs).
pub(crate) struct JobService {
    pub(crate) me: NodeId,
    pub(crate) key: Arc<NodeKey>,
    pub(crate) wrap: Arc<WrapSecret>,
    pub(crate) net: NetHandle,
    pub(crate) store: Store,
    pub(crate) content: ContentStore,
    pub(crate) data_dir: PathBuf,
    pub(crate) config: JobsConfig,
    pub(crate) rng: ChaCha20Rng,
    pub(crate) advert: watch::Sender<CapacityAdvert>,
    pub(crate) outbox: Outbox,
    pub(crate) ledger_local: Option<mpsc::Sender<LocalLedger>>,
    pub(crate) rpc: RpcClient,
    pub(crate) internal: mpsc::Sender<Internal>,
    pub(crate) capacity: BTreeMap<NodeId, CapacityEntry>,
    /// Operator groups given to the scheduler (`Scheduler::set_operator`),
    /// from the addresses this node sees each peer at.
    pub(crate) operators: BTreeMap<NodeId, u64>,
    // scheduler role
    pub(crate) scheduler: Option<Scheduler>,
    pub(crate) sched_dirty: bool,
    pub(crate) sched_saved: Instant,
    pub(crate) assembler: SnapshotAssembler,
    /// Signed offers (and the worker's accept) by (task, attempt), for escrows.
    pub(crate) offers: BTreeMap<(TaskId, u32), super::sched::OfferFrames>,
    // worker role
    pub(crate) worker: Option<Worker>,
    pub(crate) running: BTreeMap<TaskId, super::work::Running>,
    /// Results this worker sent, by (task, attempt): creator and frames
    /// (for `ResultOf`), at most [`super::work::MAX_SENT_RESULTS`].
    pub(crate) sent_results:
        BTreeMap<(TaskId, u32), (NodeId, rendertrust_protocol::creator::ResultFrames)>,
    // creator
    pub(crate) jobs: BTreeMap<JobId, CreatorEntry>,
    pub(crate) dirty_jobs: BTreeSet<JobId>,
    pub(crate) updates: BTreeMap<JobId, broadcast::Sender<JobUpdate>>,
    // reputation (schedulers and ledger peers)
    pub(crate) reputation: Option<super::reputation::Reputation>,
}

/// Starts the service task.
pub fn spawn(parts: ServiceParts) -> Result<tokio::task::JoinHandle<()>, JobsError> {
    let internal_err = |e: String| JobsError::Internal(e);
    let me = parts.key.node_id();
    let rng = crate::keys::os_rng().map_err(|e| internal_err(e.to_string()))?;
    let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
    let roles: BTreeSet<Role> = parts.roles.iter().copied().collect();

    let scheduler = if roles.contains(&Role::Scheduler) {
        let tree = parts
            .store
            .tree("scheduler")
            .map_err(|e| internal_err(e.to_string()))?;
        let restored = match tree.get(SNAPSHOT_KEY) {
            Ok(Some(bytes)) => match codec::decode_local::<SchedulerSnapshot>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|snap| {
                    Scheduler::restore(parts.config.scheduler.clone(), snap)
                        .map_err(|e| e.to_string())
                }) {
                Ok(mut s) => {
                    // It was down since the snapshot: hold the capacity
                    // view's clock still over that time (`Scheduler::resumed`).
                    s.resumed(unix_now_ms());
                    tracing::info!(jobs = s.jobs().count(), "scheduler state restored");
                    Some(s)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler snapshot unusable; starting empty");
                    None
                }
            },
            _ => None,
        };
        Some(restored.unwrap_or_else(|| Scheduler::new(me, parts.config.scheduler.clone())))
    } else {
        None
    };
    let worker = roles.contains(&Role::Worker).then(|| {
        Worker::new(
            me,
            WorkerConfig {
                max_tasks: parts.config.max_tasks.max(1),
                heartbeat_interval_ms: parts.config.heartbeat_interval_ms,
                ..WorkerConfig::default()
            },
        )
    });
    let jobs = super::create::load_all(&parts.store).map_err(|e| internal_err(e.to_string()))?;
    if !jobs.is_empty() {
        tracing::info!(jobs = jobs.len(), "creator jobs restored");
    }

    let reputation =
        (roles.contains(&Role::Scheduler) || roles.contains(&Role::Ledger)).then(|| {
            super::reputation::Reputation::load(&parts.store, me, parts.config.reputation.clone())
        });
    let rpc_net = parts.net.clone();
    let mut service = JobService {
        me,
        key: Arc::new(parts.key),
        wrap: Arc::new(parts.wrap),
        net: parts.net,
        store: parts.store,
        content: parts.content,
        data_dir: parts.data_dir,
        config: parts.config,
        rng,
        advert: parts.advert,
        outbox: Outbox::default(),
        ledger_local: parts.ledger,
        rpc: RpcClient {
            net: rpc_net,
            me,
            local: internal_tx.clone(),
        },
        internal: internal_tx,
        capacity: BTreeMap::new(),
        operators: BTreeMap::new(),
        scheduler,
        sched_dirty: false,
        sched_saved: Instant::now(),
        assembler: SnapshotAssembler::new(64),
        offers: BTreeMap::new(),
        worker,
        running: BTreeMap::new(),
        sent_results: BTreeMap::new(),
        jobs,
        dirty_jobs: BTreeSet::new(),
        updates: BTreeMap::new(),
        reputation,
    };
    match service.net.accept_chunk_streams() {
        Ok(incoming) => {
            tokio::spawn(super::transfer::serve_chunk_streams(
                service.content.clone(),
                service.net.clone(),
                incoming,
            ));
        }
        Err(e) => tracing::warn!(error = %e, "chunk streams will not be served"),
    }
    let mut inbound = parts.inbound;
    let mut commands = parts.commands;
    let mut capacity_version = parts.capacity_version;
    let mut internal_rx = internal_rx;
    Ok(tokio::spawn(async move {
        if service.reputation.is_some() {
            if let Err(e) = service.net.subscribe(Topic::Reputation).await {
                tracing::warn!(error = %e, "subscribing to reputation reports");
            }
            let nodes: Vec<NodeId> = service
                .reputation
                .as_ref()
                .map(|r| r.book.nodes().copied().collect())
                .unwrap_or_default();
            service.push_standings(&nodes, unix_now_ms());
        }
        service.refresh_capacity().await;
        service.resume_jobs(unix_now_ms());
        let mut refresh = tokio::time::interval(CAPACITY_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep = service.until_next_deadline(unix_now_ms());
            tokio::select! {
                msg = inbound.recv() => match msg {
                    Some(m) => service.on_inbound(m, unix_now_ms()),
                    None => break,
                },
                cmd = commands.recv() => match cmd {
                    Some(c) => service.on_command(c, unix_now_ms()),
                    None => break,
                },
                Some(ev) = internal_rx.recv() => service.on_internal(ev, unix_now_ms()),
                _ = refresh.tick() => {
                    service.refresh_capacity().await;
                    service.on_tick(unix_now_ms());
                }
                changed = capacity_version.changed() => {
                    if changed.is_ok() {
                        // Let a burst of adverts settle, then mirror them once.
                        tokio::time::sleep(CAPACITY_DEBOUNCE).await;
                        capacity_version.borrow_and_update();
                        service.refresh_capacity().await;
                    } else {
                        // The network driver is gone; inbound will close too.
                        tokio::time::sleep(MAX_SLEEP).await;
                    }
                }
                () = tokio::time::sleep(sleep) => {}
            }
            let now = unix_now_ms();
            service.on_timers(now);
            service.drain(now);
            service.persist(false);
        }
        service.stop();
        service.persist(true);
        tracing::info!("job service stopped");
    }))
}

impl JobService {
    fn until_next_deadline(&self, now_ms: u64) -> Duration {
        let s = self.scheduler.as_ref().and_then(Scheduler::next_deadline);
        let w = self.worker.as_ref().and_then(Worker::next_deadline);
        [s, w]
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP)
    }

    fn on_timers(&mut self, now_ms: u64) {
        if let Some(s) = &mut self.scheduler
            && s.next_deadline().is_some_and(|at| at <= now_ms)
        {
            s.handle_timeout(now_ms, &mut self.rng);
            self.sched_dirty = true;
        }
        if let Some(w) = &mut self.worker
            && w.next_deadline().is_some_and(|at| at <= now_ms)
        {
            w.handle_timeout(now_ms);
        }
    }

    /// Carries out every action the machines have queued.
    pub(crate) fn drain(&mut self, now_ms: u64) {
        for _ in 0..16 {
            let mut any = false;
            while let Some(a) = self.scheduler.as_mut().and_then(Scheduler::poll_action) {
                any = true;
                self.sched_dirty = true;
                self.on_scheduler_action(a, now_ms);
            }
            while let Some(a) = self.worker.as_mut().and_then(Worker::poll_action) {
                any = true;
                self.on_worker_action(a, now_ms);
            }
            if !any {
                break;
            }
        }
        self.sync_advert();
    }

    /// Keeps the advert's `running_tasks` equal to the worker machine's.
    fn sync_advert(&mut self) {
        let running = self.worker.as_ref().map_or(0, Worker::running_tasks);
        self.advert.send_if_modified(|a| {
            if a.running_tasks == running {
                false
            } else {
                a.running_tasks = running;
                true
            }
        });
    }

    async fn refresh_capacity(&mut self) {
        let Ok(entries) = self.net.capacity().await else {
            return;
        };
        let now = unix_now_ms();
        let fresh: BTreeMap<NodeId, CapacityEntry> =
            entries.into_iter().map(|e| (e.advert.node, e)).collect();
        if let Some(s) = &mut self.scheduler {
            for (node, e) in &fresh {
                let changed = self.capacity.get(node).is_none_or(|old| {
                    old.advert.seq != e.advert.seq || old.expires_at_ms != e.expires_at_ms
                });
                if changed {
                    s.observe_entry(e, now);
                }
            }
            for node in self.capacity.keys() {
                if !fresh.contains_key(node) {
                    s.forget_node(node, now);
                }
            }
        }
        self.operators.retain(|n, _| fresh.contains_key(n));
        self.capacity = fresh;
        self.refresh_operators().await;
    }

    /// Gives the scheduler an operator group for each node that has none
    /// yet: the /24 (IPv4) or /48 (IPv6) of the address this node sees it
    /// at (`operator_group`), so verification lines prefer workers of
    /// another group. Nodes not connected (no address known) wait for a
    /// later refresh.
    async fn refresh_operators(&mut self) {
        if self.scheduler.is_none()
            || self
                .capacity
                .keys()
                .all(|n| *n == self.me || self.operators.contains_key(n))
        {
            return;
        }
        let Ok(peers) = self.net.peers().await else {
            return;
        };
        let Some(s) = &mut self.scheduler else {
            return;
        };
        for p in peers.iter().filter(|p| p.connected) {
            let Some(node) = self
                .capacity
                .keys()
                .find(|n| n.to_string() == p.peer_id)
                .copied()
            else {
                continue;
            };
            if self.operators.contains_key(&node) {
                continue;
            }
            let group = operator_group(&p.addrs);
            if group != 0 {
                s.set_operator(node, group);
                self.operators.insert(node, group);
            }
        }
    }

    fn on_tick(&mut self, now_ms: u64) {
        self.poll_jobs(now_ms);
        self.reputation_tick(now_ms);
    }

    /// Live schedulers as this node sees them (capacity adverts with the role).
    pub(crate) fn live_schedulers(&self) -> Vec<NodeId> {
        self.capacity
            .values()
            .filter(|e| e.advert.roles.contains(&Role::Scheduler))
            .map(|e| e.advert.node)
            .collect()
    }

    /// A node's wrap key from its capacity advert.
    pub(crate) fn wrap_key_of(&self, node: &NodeId) -> Option<[u8; 32]> {
        self.capacity.get(node).map(|e| e.advert.wrap_key)
    }

    fn on_inbound(&mut self, msg: Inbound, now_ms: u64) {
        match msg {
            Inbound::Request(r) => match r.service {
                NetService::Content => {
                    tokio::spawn(super::transfer::serve(
                        self.content.clone(),
                        self.net.clone(),
                        r,
                    ));
                }
                NetService::Rpc => self.on_rpc(r, now_ms),
                NetService::Ledger => self.forward_to_ledger(Inbound::Request(r)),
            },
            Inbound::Gossip(g) if g.topic == Topic::Reputation => {
                self.on_reputation_gossip(g, now_ms)
            }
            Inbound::Gossip(g) => self.forward_to_ledger(Inbound::Gossip(g)),
        }
    }

    /// Hands ledger traffic to the ledger service; without one, gossip is
    /// ignored (never forwarded, nobody charged) and requests go unanswered.
    fn forward_to_ledger(&mut self, msg: Inbound) {
        if let Some(tx) = &self.ledger_local {
            match tx.try_send(LocalLedger::Inbound(msg)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(LocalLedger::Inbound(Inbound::Gossip(g))))
                | Err(mpsc::error::TrySendError::Closed(LocalLedger::Inbound(Inbound::Gossip(
                    g,
                )))) => {
                    self.ignore_gossip(g);
                }
                Err(_) => {}
            }
            return;
        }
        if let Inbound::Gossip(g) = msg {
            self.ignore_gossip(g);
        }
    }

    fn ignore_gossip(&self, g: crate::net::InboundGossip) {
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net
                .validate(g.id, g.source, crate::net::Verdict::Ignore)
                .await;
        });
    }

    fn on_rpc(&mut self, r: InboundRequest, now_ms: u64) {
        let peer = r.peer;
        let answer = match RpcRequest::decode(&r.bytes) {
            Err(e) => {
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net
                        .offence(peer, crate::net::guard::Offence::Malformed)
                        .await;
                });
                RpcResponse::error(ErrorCode::Invalid, format!("malformed request: {e}"))
            }
            Ok(req) => self.handle_rpc(peer, req, now_ms),
        };
        match answer.encode() {
            Ok(bytes) => {
                let _ = r.reply.send(bytes);
            }
            Err(e) => tracing::warn!(error = %e, "answer does not encode"),
        }
    }

    fn handle_rpc(&mut self, peer: NodeId, req: RpcRequest, now_ms: u64) -> RpcResponse {
        match req {
            RpcRequest::Submit { spec } => self.rpc_submit(peer, &spec, now_ms),
            RpcRequest::Offer { offer, spec } => self.rpc_offer(peer, offer, spec, None, now_ms),
            RpcRequest::CropOffer { offer, spec, crop } => {
                self.rpc_offer(peer, offer, spec, Some(crop), now_ms)
            }
            RpcRequest::Progress { progress } => self.rpc_progress(peer, &progress, now_ms),
            RpcRequest::Result { frames } => self.rpc_result(peer, frames, now_ms),
            RpcRequest::TaskFailed {
                task,
                attempt,
                reason,
            } => self.rpc_task_failed(peer, task, attempt, &reason, now_ms),
            RpcRequest::Key { offer } => self.rpc_key(peer, &offer, now_ms),
            RpcRequest::Cancel { job, task } => self.rpc_cancel(peer, job, task, now_ms),
            RpcRequest::Event { job, event } => self.rpc_event(peer, job, &event, now_ms),
            RpcRequest::Query { job } => self.rpc_query(peer, job),
            RpcRequest::Replicate { job, snapshot } => {
                self.rpc_replicate(peer, job, &snapshot, now_ms)
            }
            RpcRequest::ResultOf { task, attempt } => self.rpc_result_of(peer, task, attempt),
            RpcRequest::Compared { comparison } => self.rpc_compared(peer, &comparison, now_ms),
            RpcRequest::Unfetchable { task, attempt } => {
                self.rpc_unfetchable(peer, task, attempt, now_ms)
            }
        }
    }

    fn on_internal(&mut self, ev: Internal, now_ms: u64) {
        match ev {
            Internal::Sealed(s) => self.on_sealed(*s, now_ms),
            Internal::SubmitAnswer {
                job,
                scheduler,
                result,
                remaining,
            } => self.on_submit_answer(job, scheduler, result, remaining, now_ms),
            Internal::OfferAnswer {
                task,
                attempt,
                worker,
                result,
            } => self.on_offer_answer(task, attempt, worker, result, now_ms),
            Internal::Work(w) => self.on_work(w, now_ms),
            Internal::Fetched(f) => self.on_fetched(*f, now_ms),
            Internal::StopTask { task, attempt } => self.stop_task(&task, attempt, now_ms),
            Internal::QueryAnswer { job, result } => self.on_query_answer(job, result, now_ms),
            Internal::ResultFrames { job, frames } => self.on_result_frames(job, *frames, now_ms),
            Internal::ResultUndelivered { frames, tried } => {
                self.on_result_undelivered(*frames, tried)
            }
            Internal::Compared(done) => self.on_compared(*done),
            Internal::LocalRpc { request, reply } => {
                let answer = self.handle_rpc(self.me, *request, now_ms);
                let _ = reply.send(answer);
            }
        }
    }

    fn on_command(&mut self, cmd: JobsCommand, now_ms: u64) {
        match cmd {
            JobsCommand::Submit(req, reply) => self.cmd_submit(*req, reply, now_ms),
            JobsCommand::List(reply) => {
                let _ = reply.send(Ok(self.list_jobs()));
            }
            JobsCommand::Get(id, reply) => {
                let _ = reply.send(self.find_job(&id).map(|j| self.detail(&j)));
            }
            JobsCommand::Cancel(id, reply) => {
                let r = self.find_job(&id).map(|j| self.cancel_job(j, now_ms));
                let _ = reply.send(r);
            }
            JobsCommand::Subscribe(id, reply) => {
                let r = self.find_job(&id).map(|j| {
                    let rx = self
                        .updates
                        .entry(j)
                        .or_insert_with(|| broadcast::channel(UPDATE_BUFFER).0)
                        .subscribe();
                    (self.detail(&j), rx)
                });
                let _ = reply.send(r);
            }
            JobsCommand::Results(id, reply) => {
                let _ = reply.send(self.find_job(&id).map(|j| self.results(&j)));
            }
            JobsCommand::ResultFile(id, task, reply) => {
                let _ = reply.send(self.find_job(&id).and_then(|j| self.result_file(&j, task)));
            }
            JobsCommand::Reputation(node, reply) => {
                let _ = reply.send(self.reputation_view(node.as_deref(), now_ms));
            }
        }
    }

    /// Resolves a job id or a unique hex prefix (at least 8 digits).
    pub(crate) fn find_job(&self, text: &str) -> Result<JobId, JobsError> {
        let t = text.trim().to_ascii_lowercase();
        if t.len() < 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JobsError::NotFound(format!(
                "job id {text:?}: expected 64 hex digits or a unique prefix of at least 8"
            )));
        }
        let matches: Vec<JobId> = self
            .jobs
            .keys()
            .filter(|id| hex::encode(id.0).starts_with(&t))
            .copied()
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(JobsError::NotFound(format!(
                "no job {text} was created on this node (rendertrust job list)"
            ))),
            _ => Err(JobsError::NotFound(format!(
                "job prefix {text} is ambiguous ({} jobs); give more digits",
                matches.len()
            ))),
        }
    }

    /// Sends an update to the job's subscribers, if any.
    pub(crate) fn publish(&mut self, job: &JobId, update: JobUpdate) {
        if let Some(tx) = self.updates.get(job) {
            if tx.receiver_count() == 0 {
                self.updates.remove(job);
            } else {
                let _ = tx.send(update);
            }
        }
    }

    /// Writes dirty state: the scheduler snapshot at most every
    /// [`SNAPSHOT_EVERY`] (or now if `force`), dirty creator jobs always.
    pub(crate) fn persist(&mut self, force: bool) {
        if self.sched_dirty
            && (force || self.sched_saved.elapsed() >= SNAPSHOT_EVERY)
            && let Some(s) = &self.scheduler
        {
            let snapshot = s.snapshot();
            match codec::encode_local(&snapshot) {
                Ok(bytes) => match self.store.tree("scheduler") {
                    Ok(t) => {
                        if let Err(e) = t.insert(SNAPSHOT_KEY, bytes) {
                            tracing::warn!(error = %e, "writing the scheduler snapshot");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "opening the scheduler tree"),
                },
                Err(e) => tracing::warn!(error = %e, "encoding the scheduler snapshot"),
            }
            self.sched_dirty = false;
            self.sched_saved = Instant::now();
        }
        if let Some(rep) = self.reputation.as_mut() {
            rep.persist(&self.store, force);
        }
        let dirty = std::mem::take(&mut self.dirty_jobs);
        for job in dirty {
            if let Some(entry) = self.jobs.get(&job)
                && let Err(e) = super::create::save(&self.store, entry)
            {
                tracing::warn!(job = %hex::encode(job.0), error = %e, "saving a job");
            }
        }
        if force {
            let _ = self.store.flush();
        }
    }

    fn stop(&mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.cancel.cancel();
        }
    }

    /// Where a task of a job works on this node.
    pub(crate) fn task_dir(&self, task: &TaskId, attempt: u32) -> PathBuf {
        self.data_dir.join("work").join(format!(
            "{}-{}-{}",
            &hex::encode(task.job.0)[..16],
            task.index,
            attempt
        ))
    }

    /// Where a creator's accepted outputs go.
    pub(crate) fn results_dir(&self, job: &JobId) -> PathBuf {
        self.data_dir.join("results").join(hex::encode(job.0))
    }
}

/// The operator group of a peer seen at `addrs` (multiaddrs): a hash of the
/// /24 of its first IPv4 address, else the /48 of its first IPv6 address; 0
/// (unknown) when it has neither. Nodes of one operator usually share such a
/// prefix; a Sybil spread over many networks is not caught by this, only
/// slowed (docs/trust.md, "Operators").
pub(crate) fn operator_group(addrs: &[String]) -> u64 {
    use libp2p::multiaddr::Protocol;
    let mut v6 = None;
    for a in addrs {
        let Ok(m) = a.parse::<libp2p::Multiaddr>() else {
            continue;
        };
        for p in m.iter() {
            match p {
                Protocol::Ip4(ip) => {
                    let o = ip.octets();
                    return group_hash(&[4, o[0], o[1], o[2]]);
                }
                Protocol::Ip6(ip) if v6.is_none() => {
                    let o = ip.octets();
                    v6 = Some(group_hash(&[6, o[0], o[1], o[2], o[3], o[4], o[5]]));
                }
                _ => {}
            }
        }
    }
    v6.unwrap_or(0)
}

fn group_hash(prefix: &[u8]) -> u64 {
    let h = blake3::hash(prefix);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b).max(1)
}

#[cfg(test)]
mod operator_tests {
    use super::operator_group;

    #[test]
    fn operator_groups_are_network_prefixes() {
        let g = |a: &[&str]| operator_group(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let a = g(&["/ip4/203.0.113.7/udp/4001/quic-v1"]);
        assert_ne!(a, 0);
        assert_eq!(a, g(&["/ip4/203.0.113.200/tcp/4001"]), "same /24");
        assert_ne!(a, g(&["/ip4/203.0.114.7/tcp/4001"]), "another /24");
        let v6 = g(&["/ip6/2001:db8:1:2::1/udp/1/quic-v1"]);
        assert_ne!(v6, 0);
        assert_eq!(v6, g(&["/ip6/2001:db8:1:ffff::9/tcp/1"]), "same /48");
        assert_ne!(v6, g(&["/ip6/2001:db8:2::1/tcp/1"]), "another /48");
        // IPv4 wins over IPv6; nothing usable is unknown.
        assert_eq!(
            a,
            g(&["/ip6/2001:db8:1:2::1/tcp/1", "/ip4/203.0.113.1/tcp/1"])
        );
        assert_eq!(g(&["/dns4/example.org/tcp/1", "not an address"]), 0);
        assert_eq!(g(&[]), 0);
    }
}
