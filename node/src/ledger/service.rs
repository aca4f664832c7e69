//! The ledger service task of a ledger peer: one loop that owns the
//! [`LedgerStore`] (the ledger and rollup machines with their journal) and
//! the anchor backend, and carries out what the machines ask.
//!
//! Inputs, each handled to completion before the next:
//! * [`LocalLedger`] from the job service: this node's own ledger events
//!   (gossipsub does not deliver a node's messages to itself), gossip on the
//!   `receipts` and `rollups` topics, and requests on `/rendertrust/ledger/1`;
//! * commands from the API ([`LedgerCommand`]);
//! * answers to requests this loop sent, and anchoring outcomes (`Internal`);
//! * the machines' timers; a refresh of the live ledger set every
//!   [`LIVE_REFRESH`] (ledger-role adverts of the capacity table, fed to
//!   `set_ledgers`).
//!
//! Events are ingested in batches: what is queued when the loop wakes (at
//! most [`BATCH`] events) goes to one [`LedgerStore::ingest`], which verifies
//! signatures in a batch, journals and flushes. Only then is each gossip
//! message validated: admitted → `Accept` (forwarded), misbehaviour (bad
//! signature, inflated usage, a mint not by the authority, …) → `Reject`
//! (charges the sender's gossipsub score), duplicates and bounds → `Ignore`.
//!
//! Actions: headers are published on `rollups`; reconciliation asks peers
//! over `Service::Ledger`; an epoch this ledger must anchor goes to one
//! anchoring task that works through epochs in order, re-signs a header for
//! the backend (the journal's `prev` links to the journal's own head, see
//! `docs/jobs.md`), anchors it, and reports back; the loop then confirms it
//! to the store ([`LedgerStore::anchored`]) and records where it went in the
//! sled tree `ledger_anchors` (epoch → JSON [`AnchorRecord`]). A transient
//! failure is retried with backoff; a permanent one (a conflicting root
//! already anchored, a tampered journal) is recorded and not retried.
//!
//! Catch-up: whenever a ledger peer appears in the live set (at start too),
//! the loop asks it for its recent headers ([`RollupRequest::Headers`]), so
//! a ledger that was away when an epoch closed still compares roots and
//! reconciles what it missed. For the same reason the epoch timers wait
//! [`LedgerParts::warmup`] after a start: an epoch whose close passed while
//! the node was down would otherwise close at once, with no live ledger
//! known, and turn final on its own (partial) root.
//!
//! No ledger rule lives here: admission, resolution, epochs, roots,
//! reconciliation and the anchorer are `protocol::ledger`'s and
//! `protocol::rollup`'s. Nothing slow runs in the loop (requests and
//! anchoring run in spawned tasks that report back).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::gossipsub::MessageId as GossipId;
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::ledger::wire::{
    AnchorPlace, ChainEntry, LeaderRow, MAX_CHAIN_ENTRY, MAX_CHAIN_PAGE, MAX_FETCH_IDS,
    MAX_HEADERS, MAX_LEADERBOARD, MAX_REASON, ProofInfo, ReceiptInfo, ReceiptState, RollupRequest,
    RollupResponse,
};
use rendertrust_protocol::ledger::{
    Account, EntryKind, LedgerConfig, LedgerEvent, LedgerRejected, SettleStatus, Unmatched,
};
use rendertrust_protocol::rollup::{ProofError, RollupAction, RollupConfig};
use rendertrust_protocol::signed::{MessageId, Signed};
use rendertrust_protocol::wire::{Role, RollupHeader};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::handle::{LedgerCommand, LedgerError};
use super::remote;
use super::view::{AnchorStatusView, EpochView, EpochsView, LedgerStatusView};
use crate::anchor::{AnchorBackend, AnchorError, AnchorReceipt, Anchorer, Backend, OpenError};
use crate::config::AnchorConfig;
use crate::jobs::LocalLedger;
use crate::ledger_store::{LedgerAction, LedgerStore, LedgerStoreError};
use crate::net::{Inbound, InboundRequest, NetError, NetHandle, Service, Topic, Verdict};
use crate::store::{Store, StoreError};

/// Most events ingested in one batch.
pub const BATCH: usize = 1024;
/// Capacity of the queue the job service feeds ([`LocalLedger`]).
pub const LOCAL_QUEUE: usize = 4096;
/// How often the live ledger set is refreshed from the capacity table.
pub const LIVE_REFRESH: Duration = Duration::from_secs(1);
/// The sled tree where anchoring outcomes are recorded.
pub const ANCHOR_TREE: &str = "ledger_anchors";
/// Longest the loop sleeps.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Reports from spawned work waiting for the loop, at most.
const INTERNAL_QUEUE: usize = 1024;
/// Epochs waiting to be anchored, at most.
const ANCHOR_QUEUE: usize = 1024;
/// Tries of one anchor before it is left for the next start.
const ANCHOR_TRIES: u32 = 8;
/// Epochs the leaderboard and epochs views hold, at most.
pub const MAX_EPOCHS_VIEW: usize = 1000;

/// What the service needs to start.
pub struct LedgerParts {
    /// The node key (signs rollup headers).
    pub key: NodeKey,
    /// The network.
    pub net: NetHandle,
    /// The node's store (journal, anchor journal, anchor records).
    pub store: Store,
    /// What the job service hands over.
    pub inbound: mpsc::Receiver<LocalLedger>,
    /// Commands from the API.
    pub commands: mpsc::Receiver<LedgerCommand>,
    /// Credit rules (`[ledger]`).
    pub ledger: LedgerConfig,
    /// Epochs (`[ledger]`).
    pub rollup: RollupConfig,
    /// The anchor backend (`[anchor]`).
    pub anchor: AnchorConfig,
    /// How long after start the epoch timers wait (see the module docs):
    /// at least one advert interval, so the live ledger set is known.
    pub warmup: Duration,
}

/// Why the ledger service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerServiceError {
    /// The journal could not be opened or replayed.
    #[error("ledger journal: {0}")]
    Journal(#[from] LedgerStoreError),
    /// The anchor backend could not be opened.
    #[error("anchor backend: {0}")]
    Anchor(#[from] OpenError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network refused a subscription.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A background task failed.
    #[error("{0}")]
    Internal(String),
}

/// What this ledger knows of how an epoch was anchored (JSON in
/// [`ANCHOR_TREE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorRecord {
    /// The ledger that anchors the epoch (HRW winner when it turned final here).
    pub anchorer: Option<String>,
    /// `pending`, `anchored`, `failed`, `elsewhere`, or `none` (this ledger
    /// ranks first for the epoch but held none of its receipts: nothing to anchor).
    pub status: String,
    /// Where it lives (an `AnchorRef` as JSON), once anchored here.
    pub reference: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Work finished elsewhere, reported to the loop.
#[derive(Debug)]
enum Internal {
    Ids {
        ledger: NodeId,
        epoch: u64,
        result: Result<RollupResponse, String>,
    },
    Fetched {
        ledger: NodeId,
        ids: Vec<MessageId>,
        result: Result<RollupResponse, String>,
    },
    Headers {
        ledger: NodeId,
        result: Result<RollupResponse, String>,
    },
    Anchored {
        epoch: u64,
        result: Result<AnchorReceipt, AnchorError>,
    },
}

/// An epoch for the anchoring task.
#[derive(Debug, Clone, Copy)]
struct AnchorJob {
    epoch: u64,
    root: [u8; 32],
    count: u64,
    closed_at_ms: u64,
}

/// An event waiting for the next batch, with the gossip message it came in
/// (to validate) if any.
struct Queued {
    event: LedgerEvent,
    gossip: Option<(GossipId, PeerId)>,
}

struct LedgerService {
    me: NodeId,
    key: Arc<NodeKey>,
    net: NetHandle,
    store: Store,
    ledger: LedgerStore,
    ledger_config: LedgerConfig,
    rollup_config: RollupConfig,
    backend: Arc<Backend>,
    records: sled::Tree,
    live: BTreeSet<NodeId>,
    queued: Vec<Queued>,
    internal: mpsc::Sender<Internal>,
    anchor_jobs: mpsc::Sender<AnchorJob>,
}

/// Opens the journal and the anchor backend, subscribes to the ledger
/// topics, and starts the service task.
pub async fn spawn(parts: LedgerParts) -> Result<tokio::task::JoinHandle<()>, LedgerServiceError> {
    let me = parts.key.node_id();
    let store = parts.store.clone();
    let secret = parts.key.secret_bytes();
    let (ledger_config, rollup_config) = (parts.ledger.clone(), parts.rollup);
    let ledger = tokio::task::spawn_blocking(move || {
        LedgerStore::open(
            &store,
            &NodeKey::from_secret_bytes(&secret),
            ledger_config,
            rollup_config,
        )
    })
    .await
    .map_err(|e| LedgerServiceError::Internal(e.to_string()))??;
    let backend = Arc::new(Backend::open(&parts.anchor, &parts.store).await?);
    let records = parts.store.tree(ANCHOR_TREE)?;
    parts.net.subscribe(Topic::Receipts).await?;
    parts.net.subscribe(Topic::Rollups).await?;
    let key = Arc::new(parts.key);
    let (internal_tx, mut internal_rx) = mpsc::channel(INTERNAL_QUEUE);
    let (anchor_tx, anchor_rx) = mpsc::channel(ANCHOR_QUEUE);
    tokio::spawn(anchor_task(
        anchor_rx,
        backend.clone(),
        key.clone(),
        internal_tx.clone(),
    ));
    tracing::info!(
        backend = backend_name(&backend),
        epoch_ms = parts.rollup.epoch_ms,
        mint_authority = ?parts.ledger.mint_authority.map(|a| a.to_string()),
        genesis = parts.ledger.genesis.len(),
        "ledger service started"
    );
    let mut service = LedgerService {
        me,
        key,
        net: parts.net,
        store: parts.store,
        ledger,
        ledger_config: parts.ledger,
        rollup_config: parts.rollup,
        backend,
        records,
        live: BTreeSet::new(),
        queued: Vec::new(),
        internal: internal_tx,
        anchor_jobs: anchor_tx,
    };
    let mut inbound = parts.inbound;
    let mut commands = parts.commands;
    let warm_until = crate::net::unix_now_ms()
        .saturating_add(u64::try_from(parts.warmup.as_millis()).unwrap_or(u64::MAX));
    Ok(tokio::spawn(async move {
        // Anchors the journal handed back (never confirmed before a stop).
        service.drain(crate::net::unix_now_ms());
        service.refresh_live().await;
        let mut refresh = tokio::time::interval(LIVE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = crate::net::unix_now_ms();
            let sleep = if now < warm_until {
                Duration::from_millis(warm_until - now).min(MAX_SLEEP)
            } else {
                service.until_next_deadline(now)
            };
            tokio::select! {
                msg = inbound.recv() => match msg {
                    Some(m) => {
                        service.on_local(m, crate::net::unix_now_ms());
                        // Batch whatever else is already queued.
                        while service.queued.len() < BATCH {
                            match inbound.try_recv() {
                                Ok(m) => service.on_local(m, crate::net::unix_now_ms()),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                Some(cmd) = commands.recv() => service.on_command(cmd, crate::net::unix_now_ms()),
                Some(ev) = internal_rx.recv() => service.on_internal(ev, crate::net::unix_now_ms()),
                _ = refresh.tick() => service.refresh_live().await,
                () = tokio::time::sleep(sleep) => {}
            }
            let now = crate::net::unix_now_ms();
            service.flush_events(now);
            if now >= warm_until {
                service.on_timers(now);
            }
            service.drain(now);
        }
        if let Err(e) = service.store.flush() {
            tracing::warn!(error = %e, "flushing the store");
        }
        tracing::info!("ledger service stopped");
    }))
}

fn backend_name(b: &Backend) -> &'static str {
    match b {
        Backend::Journal(_) => "journal",
        Backend::Evm(_) => "evm",
    }
}

fn clip(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn refused(reason: impl std::fmt::Display) -> RollupResponse {
    RollupResponse::Refused {
        reason: clip(reason.to_string()),
    }
}

/// Why a matched-nothing receipt pays nothing, in words.
fn describe_unmatched(u: &Unmatched) -> String {
    match u {
        Unmatched::NoEscrow => "no escrow for its task and attempt yet".into(),
        Unmatched::NeverAssigned { escrowed_worker } => format!(
            "the worker was never assigned this task: its escrow names worker {escrowed_worker}"
        ),
        Unmatched::CreatorMismatch => "the receipt names another creator than the job's".into(),
        Unmatched::PriceMismatch { offer, receipt } => {
            format!("the receipt's price {receipt} is not the offer's {offer}")
        }
        Unmatched::OutsideWindow {
            started_at_ms,
            finished_at_ms,
            window_start_ms,
            window_end_ms,
        } => format!(
            "worked from {started_at_ms} to {finished_at_ms} (Unix ms), outside the offer's window {window_start_ms}..{window_end_ms}"
        ),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}"),
    }
}

/// Whether retrying cannot help.
fn permanent(e: &AnchorError) -> bool {
    matches!(
        e,
        AnchorError::InvalidHeader(_)
            | AnchorError::ZeroRoot { .. }
            | AnchorError::Conflict { .. }
            | AnchorError::EpochNotIncreasing { .. }
            | AnchorError::BrokenLink { .. }
            | AnchorError::Tampered { .. }
            | AnchorError::WrongAnchorer { .. }
    )
}

/// Who this node anchors as on `backend`.
fn own_anchorer(backend: &Backend, me: NodeId) -> Anchorer {
    match backend {
        Backend::Journal(_) => Anchorer::Ledger(me),
        Backend::Evm(e) => Anchorer::Evm(e.anchorer()),
    }
}

/// Anchors one epoch: done already (a restart between anchoring and its
/// confirmation) → that; otherwise a fresh header whose `prev` is the
/// journal's head (the EVM backend ignores `prev`).
async fn anchor_once(
    backend: &Backend,
    key: &NodeKey,
    job: AnchorJob,
) -> Result<AnchorReceipt, AnchorError> {
    let me = key.node_id();
    let who = own_anchorer(backend, me);
    if let Some(a) = backend.anchored_root(&who, job.epoch).await? {
        if a.root == job.root && a.count == job.count {
            return Ok(AnchorReceipt {
                epoch: job.epoch,
                root: a.root,
                count: a.count,
                already_anchored: true,
                reference: a.reference,
            });
        }
        return Err(AnchorError::Conflict {
            epoch: job.epoch,
            anchorer: who.to_string(),
            anchored_root: hex::encode(a.root),
            anchored_count: a.count,
            new_root: hex::encode(job.root),
            new_count: job.count,
        });
    }
    let prev = match backend {
        Backend::Journal(j) => j.verify_chain(&me).await?.head_hash,
        Backend::Evm(_) => [0; 32],
    };
    let header = RollupHeader {
        epoch: job.epoch,
        root: job.root,
        count: job.count,
        ledger: me,
        prev,
        closed_at_ms: job.closed_at_ms,
    };
    backend.anchor(&Signed::sign(key, &header)?).await
}

/// Anchors epochs one at a time, in the order the rollup released them
/// (epoch order: `protocol::rollup` holds an anchor back while an earlier
/// epoch is not final or can still appear, since the journal backend chains
/// headers by epoch).
async fn anchor_task(
    mut jobs: mpsc::Receiver<AnchorJob>,
    backend: Arc<Backend>,
    key: Arc<NodeKey>,
    report: mpsc::Sender<Internal>,
) {
    while let Some(job) = jobs.recv().await {
        let mut delay = Duration::from_secs(1);
        let mut tries = 0;
        let result = loop {
            tries += 1;
            match anchor_once(&backend, &key, job).await {
                Ok(r) => break Ok(r),
                Err(e) if permanent(&e) || tries >= ANCHOR_TRIES => break Err(e),
                Err(e) => {
                    tracing::warn!(epoch = job.epoch, error = %e, "anchoring failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        };
        if report
            .send(Internal::Anchored {
                epoch: job.epoch,
                result,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

fn record_key(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

impl LedgerService {
    fn until_next_deadline(&self, now_ms: u64) -> Duration {
        self.ledger
            .next_deadline()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP)
    }

    fn on_timers(&mut self, now_ms: u64) {
        if self.ledger.next_deadline().is_some_and(|at| at <= now_ms) {
            let r = self.ledger.handle_timeout(now_ms);
            self.check(r);
        }
    }

    /// A failed journal write leaves memory ahead of the disk: reopen (the
    /// replay rebuilds exactly what is on disk).
    fn check<T>(&mut self, r: Result<T, LedgerStoreError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "ledger journal write failed; reopening it");
                match LedgerStore::open(
                    &self.store,
                    &self.key,
                    self.ledger_config.clone(),
                    self.rollup_config,
                ) {
                    Ok(s) => self.ledger = s,
                    Err(e) => tracing::error!(error = %e, "reopening the ledger journal failed"),
                }
                let live = self.live.clone();
                self.ledger.set_ledgers(live);
                None
            }
        }
    }

    async fn refresh_live(&mut self) {
        let Ok(entries) = self.net.capacity().await else {
            return;
        };
        let live: BTreeSet<NodeId> = entries
            .iter()
            .filter(|e| e.advert.roles.contains(&Role::Ledger) && e.advert.node != self.me)
            .map(|e| e.advert.node)
            .collect();
        let new: Vec<NodeId> = live.difference(&self.live).copied().collect();
        if live != self.live {
            tracing::info!(ledgers = live.len(), "live ledger peers changed");
            self.ledger.set_ledgers(live.iter().copied());
            self.live = live;
        }
        let now = crate::net::unix_now_ms();
        let epoch_ms = self.rollup_config.epoch_ms.max(1);
        // Back to the epochs a final epoch still catches up on (a ledger
        // away longer than the window fetches what it missed, late).
        let lookback =
            ((self.rollup_config.grace_ms + self.rollup_config.reconcile_window_ms) / epoch_ms + 2)
                .max(rendertrust_protocol::rollup::LATE_CATCH_UP_EPOCHS);
        let after = (now / epoch_ms).saturating_sub(lookback);
        for ledger in new {
            self.request_headers(ledger, after);
        }
    }

    /// Asks `ledger` for its headers of epochs after `after`; the answer
    /// comes back as [`Internal::Headers`].
    fn request_headers(&self, ledger: NodeId, after: u64) {
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let result = remote::request(&net, ledger, &RollupRequest::Headers { after }).await;
            let _ = tx.send(Internal::Headers { ledger, result }).await;
        });
    }

    fn on_local(&mut self, msg: LocalLedger, now_ms: u64) {
        match msg {
            LocalLedger::Event(bytes) => match LedgerEvent::decode(&bytes) {
                Ok(event) => self.queued.push(Queued {
                    event,
                    gossip: None,
                }),
                Err(e) => tracing::warn!(error = %e, "own ledger event does not decode"),
            },
            LocalLedger::Inbound(Inbound::Gossip(g)) => match g.topic {
                Topic::Receipts => match LedgerEvent::decode(&g.data) {
                    Ok(event) => self.queued.push(Queued {
                        event,
                        gossip: Some((g.id, g.source)),
                    }),
                    Err(e) => {
                        tracing::info!(from = %g.source, error = %e, "malformed ledger event rejected");
                        self.validate(vec![(g.id, g.source, Verdict::Reject)]);
                    }
                },
                Topic::Rollups => {
                    let verdict = self.on_header_gossip(&g.data, g.source, now_ms);
                    self.validate(vec![(g.id, g.source, verdict)]);
                }
                _ => self.validate(vec![(g.id, g.source, Verdict::Ignore)]),
            },
            LocalLedger::Inbound(Inbound::Request(r)) => self.on_request(r),
        }
    }

    fn on_header_gossip(&mut self, data: &[u8], source: PeerId, now_ms: u64) -> Verdict {
        use rendertrust_protocol::rollup::{HeaderOutcome, HeaderRejected};
        let header = match Signed::<RollupHeader>::from_slice(data) {
            Ok(h) => h,
            Err(e) => {
                tracing::info!(from = %source, error = %e, "malformed rollup header rejected");
                return Verdict::Reject;
            }
        };
        // Ingest what is queued first, so the header is compared with it.
        self.flush_events(now_ms);
        let r = self.ledger.handle_header(&header, now_ms);
        match self.check(r) {
            Some(Ok(outcome)) => {
                tracing::debug!(ledger = %header.signer(), ?outcome, "rollup header");
                match outcome {
                    HeaderOutcome::Stored
                    | HeaderOutcome::Agrees
                    | HeaderOutcome::Reconciling
                    | HeaderOutcome::Final { .. } => Verdict::Accept,
                    _ => Verdict::Ignore,
                }
            }
            Some(Err(HeaderRejected::Invalid(e))) => {
                tracing::info!(from = %source, error = %e, "badly signed rollup header rejected");
                Verdict::Reject
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "rollup header ignored");
                Verdict::Ignore
            }
            None => Verdict::Ignore,
        }
    }

    fn validate(&self, verdicts: Vec<(GossipId, PeerId, Verdict)>) {
        if verdicts.is_empty() {
            return;
        }
        let net = self.net.clone();
        tokio::spawn(async move {
            for (id, source, verdict) in verdicts {
                if net.validate(id, source, verdict).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Ingests the queued events as one batch, then validates their gossip.
    fn flush_events(&mut self, now_ms: u64) {
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        let events: Vec<LedgerEvent> = queued.iter().map(|q| q.event.clone()).collect();
        let results = self.ingest(&events, now_ms);
        let mut verdicts = Vec::new();
        for (q, result) in queued.into_iter().zip(results) {
            let verdict = match &result {
                Some(Ok(_)) => Verdict::Accept,
                Some(Err(r)) if r.is_misbehaviour() => Verdict::Reject,
                _ => Verdict::Ignore,
            };
            if let Some((id, source)) = q.gossip {
                verdicts.push((id, source, verdict));
            }
        }
        self.validate(verdicts);
    }

    /// Ingests events (gossip, own, fetched); one result per event (`None`:
    /// the journal failed and nothing was admitted).
    fn ingest(
        &mut self,
        events: &[LedgerEvent],
        now_ms: u64,
    ) -> Vec<Option<Result<rendertrust_protocol::ledger::Applied, LedgerRejected>>> {
        let r = self.ledger.ingest(events, now_ms);
        let Some(results) = self.check(r) else {
            return vec![None; events.len()];
        };
        for (event, result) in events.iter().zip(&results) {
            match result {
                Ok(applied) => {
                    tracing::debug!(kind = event.kind_name(), ?applied, "ledger event admitted")
                }
                Err(LedgerRejected::Duplicate { .. }) => {}
                Err(r) if r.is_misbehaviour() => tracing::warn!(
                    kind = event.kind_name(),
                    id = %event.id(),
                    reason = %r,
                    "ledger event rejected"
                ),
                Err(r) => {
                    tracing::info!(kind = event.kind_name(), reason = %r, "ledger event refused")
                }
            }
        }
        results.into_iter().map(Some).collect()
    }

    /// Carries out every action the ledger queued.
    fn drain(&mut self, now_ms: u64) {
        while let Some(action) = self.ledger.poll_action() {
            match action {
                LedgerAction::Publish(signed) => {
                    if let Ok(h) = signed.verify() {
                        tracing::info!(
                            epoch = h.epoch,
                            count = h.count,
                            root = %hex::encode(h.root),
                            "rollup header published"
                        );
                    }
                    let net = self.net.clone();
                    let bytes = signed.into_bytes();
                    tokio::spawn(async move {
                        // Gossipsub refuses to publish until it knows a
                        // subscribed peer: retry while the mesh forms.
                        for attempt in 0..20u32 {
                            match net.publish(Topic::Rollups, bytes.clone()).await {
                                Ok(()) => return,
                                Err(e) if attempt == 19 => {
                                    tracing::debug!(error = %e, "publishing a rollup header")
                                }
                                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                            }
                        }
                    });
                }
                LedgerAction::Rollup(RollupAction::RequestIds {
                    ledger,
                    epoch,
                    after,
                }) => {
                    let net = self.net.clone();
                    let tx = self.internal.clone();
                    tokio::spawn(async move {
                        let result =
                            remote::request(&net, ledger, &RollupRequest::Ids { epoch, after })
                                .await;
                        let _ = tx
                            .send(Internal::Ids {
                                ledger,
                                epoch,
                                result,
                            })
                            .await;
                    });
                }
                LedgerAction::Rollup(RollupAction::FetchReceipts { ledger, ids }) => {
                    self.fetch(ledger, ids)
                }
                LedgerAction::Rollup(RollupAction::RequestHeaders { ledger, epoch }) => {
                    tracing::debug!(%ledger, epoch, "asking for a missing rollup header");
                    self.request_headers(ledger, epoch.saturating_sub(1));
                }
                LedgerAction::Rollup(RollupAction::Anchor { epoch, root, count }) => {
                    let closed_at_ms = self
                        .ledger
                        .peer()
                        .rollup()
                        .header(epoch)
                        .map_or(now_ms, |h| h.closed_at_ms);
                    self.update_record(epoch, |r| {
                        r.anchorer = Some(self.me.to_string());
                        r.status = "pending".into();
                    });
                    let job = AnchorJob {
                        epoch,
                        root,
                        count,
                        closed_at_ms,
                    };
                    if self.anchor_jobs.try_send(job).is_err() {
                        tracing::warn!(
                            epoch,
                            "anchor queue full; the epoch is anchored after the next start"
                        );
                    }
                }
                LedgerAction::Rollup(RollupAction::Final {
                    epoch,
                    root,
                    count,
                    anchor,
                }) => {
                    // Owed here: its `Anchor` follows (at once, or once no
                    // earlier epoch holds it back).
                    let anchorer = if anchor {
                        self.me
                    } else {
                        self.ledger.peer().rollup().anchorer(epoch)
                    };
                    tracing::info!(epoch, count, root = %hex::encode(root), %anchorer, anchor, "epoch final");
                    let me = self.me;
                    self.update_record(epoch, |r| {
                        if r.anchorer.is_none() {
                            r.anchorer = Some(anchorer.to_string());
                        }
                        if r.status.is_empty() {
                            r.status = if anchor {
                                "pending"
                            } else if anchorer == me {
                                // The anchorer by rank, holding no receipt of it.
                                "none"
                            } else {
                                "elsewhere"
                            }
                            .into();
                        }
                    });
                }
                LedgerAction::Rollup(other) => tracing::debug!(?other, "rollup action"),
            }
        }
    }

    fn fetch(&self, ledger: NodeId, ids: Vec<MessageId>) {
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let result =
                remote::request(&net, ledger, &RollupRequest::Receipts { ids: ids.clone() }).await;
            let _ = tx
                .send(Internal::Fetched {
                    ledger,
                    ids,
                    result,
                })
                .await;
        });
    }

    fn record(&self, epoch: u64) -> Option<AnchorRecord> {
        let bytes = self.records.get(record_key(epoch)).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    fn update_record(&self, epoch: u64, change: impl FnOnce(&mut AnchorRecord)) {
        let mut r = self.record(epoch).unwrap_or_default();
        change(&mut r);
        match serde_json::to_vec(&r) {
            Ok(bytes) => {
                if let Err(e) = self.records.insert(record_key(epoch), bytes) {
                    tracing::warn!(epoch, error = %e, "recording an anchor");
                }
            }
            Err(e) => tracing::warn!(epoch, error = %e, "encoding an anchor record"),
        }
    }

    fn on_internal(&mut self, ev: Internal, now_ms: u64) {
        match ev {
            Internal::Ids {
                ledger,
                epoch,
                result,
            } => match result {
                Ok(RollupResponse::Ids {
                    epoch: e,
                    ids,
                    more,
                }) if e == epoch => {
                    let r = self.ledger.handle_ids(ledger, epoch, &ids, more);
                    match self.check(r) {
                        Some(Ok(missing)) if missing > 0 => {
                            tracing::info!(%ledger, epoch, missing, "reconciling: fetching receipts")
                        }
                        Some(Err(e)) => {
                            tracing::info!(%ledger, epoch, error = %e, "receipt ids refused")
                        }
                        _ => {}
                    }
                }
                Ok(other) => {
                    tracing::info!(%ledger, epoch, answer = ?short(&other), "unexpected answer to an ids request")
                }
                Err(e) => tracing::info!(%ledger, epoch, error = %e, "ids request failed"),
            },
            Internal::Fetched {
                ledger,
                ids,
                result,
            } => match result {
                Ok(RollupResponse::Receipts { events }) => {
                    let got: BTreeSet<MessageId> = events
                        .iter()
                        .filter(|e| matches!(e, LedgerEvent::Settle { .. }))
                        .map(LedgerEvent::id)
                        .collect();
                    let results = self.ingest(&events, now_ms);
                    let admitted = results.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
                    tracing::info!(%ledger, events = events.len(), admitted, "reconciliation receipts fetched");
                    // What did not fit in the answer: ask again, while it makes progress.
                    let rest: Vec<MessageId> =
                        ids.iter().filter(|i| !got.contains(i)).copied().collect();
                    if !got.is_empty() && !rest.is_empty() {
                        for chunk in rest.chunks(MAX_FETCH_IDS) {
                            self.fetch(ledger, chunk.to_vec());
                        }
                    }
                }
                Ok(other) => {
                    tracing::info!(%ledger, answer = ?short(&other), "unexpected answer to a receipts request")
                }
                Err(e) => tracing::info!(%ledger, error = %e, "receipts request failed"),
            },
            Internal::Headers { ledger, result } => match result {
                Ok(RollupResponse::Headers { headers }) => {
                    for h in headers.iter().filter(|h| h.signer() == ledger) {
                        let r = self.ledger.handle_header(h, now_ms);
                        if let Some(Err(e)) = self.check(r) {
                            tracing::debug!(%ledger, error = %e, "caught-up header refused");
                        }
                    }
                    tracing::debug!(%ledger, headers = headers.len(), "caught up with a ledger's headers");
                }
                Ok(other) => tracing::debug!(%ledger, answer = ?short(&other), "no headers"),
                Err(e) => tracing::debug!(%ledger, error = %e, "headers request failed"),
            },
            Internal::Anchored { epoch, result } => self.on_anchored(epoch, result),
        }
    }

    fn on_anchored(&mut self, epoch: u64, result: Result<AnchorReceipt, AnchorError>) {
        match result {
            Ok(receipt) => {
                tracing::info!(
                    epoch,
                    count = receipt.count,
                    already = receipt.already_anchored,
                    reference = ?receipt.reference,
                    "epoch anchored"
                );
                let reference = serde_json::to_value(&receipt.reference).ok();
                self.update_record(epoch, |r| {
                    r.status = "anchored".into();
                    r.reference = reference;
                    r.error = None;
                });
                let r = self.ledger.anchored(epoch);
                self.check(r);
            }
            Err(e) => {
                let is_permanent = permanent(&e);
                tracing::error!(epoch, error = %e, permanent = is_permanent, "anchoring failed");
                self.update_record(epoch, |r| {
                    r.status = "failed".into();
                    r.error = Some(e.to_string());
                });
                if is_permanent {
                    // Retrying after a restart cannot help either.
                    let r = self.ledger.anchored(epoch);
                    self.check(r);
                }
            }
        }
    }

    fn on_request(&mut self, r: InboundRequest) {
        if r.service != Service::Ledger {
            return;
        }
        let answer = match RollupRequest::decode(&r.bytes) {
            Ok(req) => self.answer(req),
            Err(e) => {
                let net = self.net.clone();
                let peer = r.peer;
                tokio::spawn(async move {
                    let _ = net
                        .offence(peer, crate::net::guard::Offence::Malformed)
                        .await;
                });
                refused(format!("malformed request: {e}"))
            }
        };
        match answer.encode() {
            Ok(bytes) => {
                let _ = r.reply.send(bytes);
            }
            Err(e) => tracing::warn!(error = %e, "ledger answer does not encode"),
        }
    }

    fn on_command(&mut self, cmd: LedgerCommand, now_ms: u64) {
        match cmd {
            LedgerCommand::Ask(req, reply) => {
                self.flush_events(now_ms);
                let _ = reply.send(Ok(self.answer(*req)));
            }
            LedgerCommand::Epochs(limit, reply) => {
                let _ = reply.send(Ok(self.epochs_view(limit, now_ms)));
            }
            LedgerCommand::Status(reply) => {
                self.flush_events(now_ms);
                let _ = reply.send(Ok(self.status_view()));
            }
            LedgerCommand::Ingest(event, reply) => {
                self.flush_events(now_ms);
                let answer = match self.ingest(std::slice::from_ref(&*event), now_ms).pop() {
                    Some(Some(Ok(applied))) => Ok(format!("{applied:?}")),
                    Some(Some(Err(r))) => Err(LedgerError::Refused(r.to_string())),
                    _ => Err(LedgerError::Internal(
                        "the ledger journal failed; see the node log".into(),
                    )),
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// The answer to a question from a peer (or from this node's API).
    fn answer(&mut self, req: RollupRequest) -> RollupResponse {
        match req {
            RollupRequest::Ids { epoch, after } => {
                let (ids, more) = self.ledger.peer().rollup().ids_page(
                    epoch,
                    after,
                    rendertrust_protocol::ledger::wire::MAX_IDS_PAGE,
                );
                RollupResponse::Ids { epoch, ids, more }
            }
            RollupRequest::Receipts { ids } => match self.ledger.events_for_receipts(&ids) {
                Ok(events) => RollupResponse::pack_receipts(&events).0,
                Err(e) => refused(e),
            },
            RollupRequest::Receipt { id } => RollupResponse::Receipt(self.receipt_info(&id)),
            RollupRequest::Proof { id } => self.proof(&id),
            RollupRequest::Balance { node } => RollupResponse::Balance {
                node,
                balance: self.ledger.peer().ledger().balance(&node),
            },
            RollupRequest::Chain { ledger, after } => match &*self.backend {
                Backend::Journal(j) => {
                    match j.raw_entries(&ledger, after, MAX_CHAIN_PAGE, MAX_CHAIN_ENTRY) {
                        Ok((entries, more)) => RollupResponse::Chain {
                            entries: entries
                                .into_iter()
                                .map(|(epoch, frame)| ChainEntry { epoch, frame })
                                .collect(),
                            more,
                        },
                        Err(e) => refused(e),
                    }
                }
                Backend::Evm(e) => refused(format!(
                    "this ledger anchors on EVM chain {} (contract {}), not in a journal",
                    e.chain_id(),
                    e.contract()
                )),
            },
            RollupRequest::Headers { after } => {
                let rollup = self.ledger.peer().rollup();
                let mut headers: Vec<RollupHeader> = rollup
                    .epochs()
                    .into_iter()
                    .filter(|e| e.epoch > after)
                    .filter_map(|e| e.header)
                    .collect();
                let skip = headers.len().saturating_sub(MAX_HEADERS);
                headers.drain(..skip);
                // Ed25519 signatures are deterministic: these are the frames
                // that were published.
                let headers = headers
                    .iter()
                    .filter_map(|h| Signed::sign(&self.key, h).ok())
                    .collect();
                RollupResponse::Headers { headers }
            }
            RollupRequest::Leaderboard { limit } => RollupResponse::Leaderboard {
                rows: self.leaderboard(usize::from(limit).min(MAX_LEADERBOARD)),
            },
        }
    }

    fn receipt_info(&self, id: &MessageId) -> ReceiptInfo {
        let peer = self.ledger.peer();
        let state = match peer.ledger().receipt_status(id) {
            None => ReceiptState::Unknown,
            Some(SettleStatus::Paid) => ReceiptState::Settled,
            Some(SettleStatus::Outranked) => ReceiptState::Outranked,
            Some(SettleStatus::Unmatched(Unmatched::NoEscrow)) => ReceiptState::Waiting,
            Some(SettleStatus::Unmatched(u)) => ReceiptState::Unpaid {
                reason: clip(describe_unmatched(&u)),
            },
        };
        let rollup = peer.rollup();
        let epoch = rollup.epoch_of_receipt(id);
        let late = epoch.is_some_and(|e| !rollup.ids(e).any(|x| x == id));
        let settle = self
            .ledger
            .events_for_receipts(std::slice::from_ref(id))
            .ok()
            .and_then(|events| {
                events
                    .into_iter()
                    .find(|e| matches!(e, LedgerEvent::Settle { .. }))
            });
        ReceiptInfo {
            state,
            epoch,
            epoch_final: epoch.is_some_and(|e| rollup.is_final(e)),
            late,
            settle,
        }
    }

    fn proof(&mut self, id: &MessageId) -> RollupResponse {
        let p = match self.ledger.proof(id) {
            Ok(p) => p,
            Err(ProofError::Unknown(_)) => {
                return refused(format!(
                    "receipt {id} is in no epoch of this ledger (unknown, or its escrow is not here yet)"
                ));
            }
            Err(e) => return refused(e),
        };
        let epoch = p.header.epoch;
        let header = match Signed::sign(&self.key, &p.header) {
            Ok(h) => h,
            Err(e) => return refused(e),
        };
        let record = self.record(epoch);
        let anchorer = record
            .as_ref()
            .and_then(|r| r.anchorer.as_deref())
            .and_then(|a| a.parse::<NodeId>().ok());
        let anchored_here =
            record.as_ref().is_some_and(|r| r.status == "anchored") && anchorer == Some(self.me);
        let anchor = anchored_here.then(|| match &*self.backend {
            Backend::Journal(_) => AnchorPlace::Journal,
            Backend::Evm(e) => AnchorPlace::Evm {
                chain_id: e.chain_id(),
                contract: e.contract().into_array(),
                account: e.anchorer().into_array(),
            },
        });
        RollupResponse::Proof(Box::new(ProofInfo {
            header,
            proof: p.proof,
            anchorer,
            anchor,
        }))
    }

    fn leaderboard(&self, limit: usize) -> Vec<LeaderRow> {
        let ledger = self.ledger.peer().ledger();
        let mut rows: BTreeMap<NodeId, LeaderRow> = BTreeMap::new();
        let row = |rows: &mut BTreeMap<NodeId, LeaderRow>, node: NodeId| -> LeaderRow {
            *rows.entry(node).or_insert(LeaderRow {
                node,
                balance: 0,
                earned: 0,
                tasks: 0,
            })
        };
        for (node, balance) in ledger.balances() {
            let mut r = row(&mut rows, node);
            r.balance = balance;
            rows.insert(node, r);
        }
        for e in ledger.entries() {
            if let (EntryKind::Settle, Account::Node(w)) = (e.kind, e.to) {
                let mut r = row(&mut rows, w);
                r.earned = r.earned.saturating_add(e.amount);
                r.tasks += 1;
                rows.insert(w, r);
            }
        }
        let mut rows: Vec<LeaderRow> = rows.into_values().collect();
        rows.sort_by(|a, b| (b.earned, b.balance, a.node).cmp(&(a.earned, a.balance, b.node)));
        rows.truncate(limit);
        rows
    }

    fn epochs_view(&self, limit: usize, now_ms: u64) -> EpochsView {
        let rollup = self.ledger.peer().rollup();
        let mut epochs: Vec<EpochView> = rollup
            .epochs()
            .into_iter()
            .map(|e| {
                let record = self.record(e.epoch);
                EpochView {
                    epoch: e.epoch,
                    count: e.count,
                    late: e.late,
                    root: e.header.as_ref().map(|h| hex::encode(h.root)),
                    is_final: e.is_final,
                    agreeing: e.agreeing,
                    anchorer: record.as_ref().and_then(|r| r.anchorer.clone()),
                    anchor: record.map(|r| AnchorStatusView {
                        status: r.status,
                        reference: r.reference,
                        error: r.error,
                    }),
                }
            })
            .collect();
        let skip = epochs.len().saturating_sub(limit.min(MAX_EPOCHS_VIEW));
        epochs.drain(..skip);
        EpochsView {
            ledger: self.me.to_string(),
            epoch_ms: rollup.config().epoch_ms,
            current_epoch: rollup.epoch_of(now_ms),
            backend: backend_name(&self.backend).into(),
            epochs,
        }
    }

    fn status_view(&self) -> LedgerStatusView {
        let peer = self.ledger.peer();
        let l = peer.ledger();
        let stats = l.stats();
        let r = peer.rollup().stats();
        let receipts = peer
            .rollup()
            .epochs()
            .iter()
            .map(|e| e.count + e.late)
            .sum();
        LedgerStatusView {
            ledger: self.me.to_string(),
            digest: hex::encode(l.digest()),
            admitted: stats.admitted,
            duplicates: stats.duplicates,
            invalid: stats.invalid,
            refused: stats.refused,
            journaled: self.ledger.journaled_events(),
            pending: l.pending(),
            minted: l.minted(),
            escrowed: l.escrowed(),
            receipts,
            headers_published: r.published,
            reconciles: r.reconciles,
            header_asks: r.header_asks,
            anchors_waiting: self.ledger.peer().rollup().anchors_waiting() as u64,
            agreed: r.agreed,
            timed_out: r.timed_out,
            late: r.late,
            live_ledgers: self.live.iter().map(|n| n.to_string()).collect(),
            backend: backend_name(&self.backend).into(),
        }
    }
}

/// A short description of an answer, for logs.
fn short(r: &RollupResponse) -> String {
    match r {
        RollupResponse::Refused { reason } => format!("refused: {reason}"),
        RollupResponse::Ids { ids, .. } => format!("{} ids", ids.len()),
        RollupResponse::Receipts { events } => format!("{} events", events.len()),
        other => format!("{:?}", std::mem::discriminant(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_clipped_on_a_character_boundary() {
        let long = "é".repeat(MAX_REASON);
        let c = clip(long);
        assert!(c.len() <= MAX_REASON && c.chars().all(|ch| ch == 'é'));
        assert_eq!(clip("short".into()), "short");
        let RollupResponse::Refused { reason } = refused("x".repeat(10_000)) else {
            panic!("not refused");
        };
        assert_eq!(reason.len(), MAX_REASON);
        // So the answer always encodes.
        assert!(refused("y".repeat(10_000)).encode().is_ok());
    }

    #[test]
    fn unmatched_receipts_are_explained() {
        let w = NodeId::from_bytes([5; 32]);
        let text = describe_unmatched(&Unmatched::NeverAssigned { escrowed_worker: w });
        assert!(text.contains("never assigned") && text.contains(&w.to_string()));
        assert!(
            describe_unmatched(&Unmatched::PriceMismatch {
                offer: 10,
                receipt: 99
            })
            .contains("99")
        );
        assert!(describe_unmatched(&Unmatched::NoEscrow).contains("no escrow"));
    }

    /// The anchoring step on the journal: each epoch's header links to the
    /// journal's head (not to the gossiped chain), a repeat after a restart
    /// is recognised, and another root for an anchored epoch is refused.
    #[tokio::test]
    async fn anchoring_links_the_journal_and_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let backend = Backend::open(&AnchorConfig::default(), &store)
            .await
            .unwrap();
        let key = NodeKey::from_secret_bytes(&[9; 32]);
        let job = |epoch, root| AnchorJob {
            epoch,
            root,
            count: 3,
            closed_at_ms: 1_780_000_000_000,
        };
        let first = anchor_once(&backend, &key, job(5, [5; 32])).await.unwrap();
        assert!(!first.already_anchored);
        let again = anchor_once(&backend, &key, job(5, [5; 32])).await.unwrap();
        assert!(again.already_anchored);
        assert_eq!(again.reference, first.reference);
        let e = anchor_once(&backend, &key, job(5, [6; 32]))
            .await
            .unwrap_err();
        assert!(matches!(e, AnchorError::Conflict { epoch: 5, .. }), "{e}");
        assert!(permanent(&e));
        // Epochs 5 and 9 (skipping those another ledger anchored) chain.
        anchor_once(&backend, &key, job(9, [9; 32])).await.unwrap();
        let Backend::Journal(j) = &backend else {
            panic!("not the journal")
        };
        let chain = j.verify_chain(&key.node_id()).await.unwrap();
        assert_eq!((chain.len, chain.head_epoch), (2, Some(9)));
        // An earlier epoch after a later one cannot be appended.
        let e = anchor_once(&backend, &key, job(7, [7; 32]))
            .await
            .unwrap_err();
        assert!(permanent(&e), "{e}");
        let who = Anchorer::Ledger(key.node_id());
        let r = backend.anchored_root(&who, 9).await.unwrap().unwrap();
        assert_eq!((r.root, r.count), ([9; 32], 3));
    }

    #[test]
    fn only_transient_anchor_failures_are_retried() {
        assert!(permanent(&AnchorError::ZeroRoot { epoch: 1 }));
        assert!(permanent(&AnchorError::Tampered {
            epoch: 1,
            reason: String::new()
        }));
        assert!(permanent(&AnchorError::EpochNotIncreasing {
            ledger: NodeId::from_bytes([1; 32]),
            epoch: 1,
            head_epoch: 2
        }));
        assert!(!permanent(&AnchorError::Rpc {
            action: "sending",
            message: "connection refused".into()
        }));
        assert!(!permanent(&AnchorError::Journal {
            action: "store",
            message: "io".into()
        }));
    }
}
