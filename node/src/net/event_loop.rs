//! The event loop: owns the swarm, feeds the protocol machines, answers commands.
//!
//! Every handler takes `now_ms`, read once when the event arrived. Handlers
//! translate; the decisions are the machines' ([`CapacityTable`],
//! [`AdvertSchedule`]) or libp2p's (gossipsub scoring, Kademlia).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::gossipsub::{self, PublishError};
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping};
use rendertrust_protocol::capacity::{AdvertSchedule, CapacityTable, RefreshPolicy};
use rendertrust_protocol::codec;
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::signed::Signed;
use rendertrust_protocol::wire::{CapacityAdvert, Role};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::guard::{Admission, Offence, PeerGuard};
use super::reqres::Service;
use super::swarm::{self as build, NodeBehaviour, NodeBehaviourEvent};
use super::topic::Topic;
use super::{
    BOOTSTRAP_INTERVAL, Command, FIND_ROLE_TIMEOUT, Inbound, InboundGossip, InboundRequest,
    MAX_PENDING_FINDS, MAX_PENDING_REQUESTS, NetError, NetStatus, PeerInfo, Verdict, unix_now_ms,
};

/// How often housekeeping runs (publish retries, lookup deadlines, redials).
const MAINTENANCE: Duration = Duration::from_secs(1);
/// Least time between two redials of the bootstrap peers.
const REDIAL_INTERVAL: Duration = Duration::from_secs(5);
/// Longest sleep of the loop when no machine has a deadline.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Shortest sleep: a deadline that stays in the past can never spin the loop.
const MIN_SLEEP: Duration = Duration::from_millis(10);
/// Addresses kept per peer.
const MAX_ADDRS_PER_PEER: usize = 16;

/// What we know of one peer.
#[derive(Debug, Default)]
struct PeerState {
    /// Open connections.
    connections: usize,
    /// Remote addresses of the connections (or the configured bootstrap address).
    conn_addrs: Vec<Multiaddr>,
    /// Listen addresses from identify.
    listen_addrs: Vec<Multiaddr>,
    agent: Option<String>,
    rtt: Option<Duration>,
    /// Reached over loopback: its loopback listen addresses are usable.
    loopback: bool,
}

/// A role lookup in flight.
struct PendingFind {
    found: BTreeSet<NodeId>,
    reply: oneshot::Sender<Result<Vec<NodeId>, NetError>>,
    deadline: Instant,
}

/// An answer from a service, on its way back to the peer that asked.
type PendingResponse = BoxFuture<
    'static,
    (
        PeerId,
        Service,
        ResponseChannel<Vec<u8>>,
        Result<Vec<u8>, oneshot::error::RecvError>,
    ),
>;

/// The refusal a service's peers understand (rate or stream limits).
fn refusal(service: Service, reason: &str) -> Option<Vec<u8>> {
    use rendertrust_protocol::ledger::wire::RollupResponse;
    use rendertrust_protocol::rpc::{ContentResponse, ErrorCode, RpcResponse};
    match service {
        Service::Rpc => RpcResponse::error(ErrorCode::Busy, reason).encode().ok(),
        Service::Content => ContentResponse::Refused {
            reason: reason.to_owned(),
        }
        .encode()
        .ok(),
        Service::Ledger => RollupResponse::Refused {
            reason: reason.to_owned(),
        }
        .encode()
        .ok(),
    }
}

/// An outbound request waiting for its answer.
struct PendingRequest {
    peer: NodeId,
    service: Service,
    reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
}

/// Our latest signed advert, until gossipsub has sent it.
struct PendingPublish {
    frame: Vec<u8>,
    issued_at_ms: u64,
}

pub(super) struct EventLoop {
    key: NodeKey,
    node_id: NodeId,
    table: CapacityTable,
    schedule: AdvertSchedule,
    advert_interval_ms: u64,
    advert: watch::Receiver<CapacityAdvert>,
    advert_open: bool,
    pending_publish: Option<PendingPublish>,
    roles: BTreeSet<Role>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    bootstrap_query: Option<QueryId>,
    last_redial: Option<Instant>,
    provider_ttl: Duration,
    peers: BTreeMap<PeerId, PeerState>,
    finds: HashMap<QueryId, PendingFind>,
    commands: mpsc::Receiver<Command>,
    swarm: Swarm<NodeBehaviour>,
    inbound: mpsc::Sender<Inbound>,
    /// Bumped whenever the capacity table gains, replaces or drops an entry.
    capacity_version: watch::Sender<u64>,
    requests: HashMap<OutboundRequestId, PendingRequest>,
    responses: FuturesUnordered<PendingResponse>,
    subscribed: BTreeSet<Topic>,
    guard: PeerGuard,
}

/// What [`EventLoop::new`] needs.
pub(super) struct Parts {
    pub(super) key: NodeKey,
    pub(super) table: CapacityTable,
    pub(super) advert_interval: Duration,
    pub(super) advert: watch::Receiver<CapacityAdvert>,
    pub(super) roles: Vec<Role>,
    pub(super) bootstrap: Vec<(PeerId, Multiaddr)>,
    pub(super) provider_ttl: Duration,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) swarm: Swarm<NodeBehaviour>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    pub(super) capacity_version: watch::Sender<u64>,
    pub(super) guard: PeerGuard,
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

fn push_bounded(list: &mut Vec<Multiaddr>, addr: Multiaddr) {
    if !list.contains(&addr) && list.len() < MAX_ADDRS_PER_PEER {
        list.push(addr);
    }
}

/// Hash of an advert template with the fields the loop fills (seq, issue
/// time, refresh period) zeroed: it changes exactly when the content the
/// node announces does.
fn content_hash(template: &CapacityAdvert, node: NodeId) -> Result<[u8; 32], codec::CodecError> {
    let mut t = template.clone();
    t.node = node;
    t.seq = 0;
    t.issued_at_ms = 0;
    t.refresh_ms = 0;
    Ok(*blake3::hash(&codec::encode(&t)?).as_bytes())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl EventLoop {
    pub(super) fn new(parts: Parts, now_ms: u64) -> Self {
        let node_id = parts.key.node_id();
        let advert_interval_ms = millis(parts.advert_interval).max(1);
        let mut peers = BTreeMap::new();
        for (peer, addr) in &parts.bootstrap {
            let state: &mut PeerState = peers.entry(*peer).or_default();
            push_bounded(&mut state.conn_addrs, without_p2p(addr));
        }
        EventLoop {
            key: parts.key,
            node_id,
            table: parts.table,
            // The first seq is the wall clock in ms: it only grows across
            // restarts. The configured interval is the refresh period of
            // meshes up to 10 000 nodes; larger ones stretch it
            // (`RefreshPolicy`'s default bound and mesh rate).
            schedule: AdvertSchedule::with_policy(
                RefreshPolicy {
                    base_ms: advert_interval_ms,
                    ..RefreshPolicy::default()
                },
                now_ms,
            ),
            advert_interval_ms,
            advert: parts.advert,
            advert_open: true,
            pending_publish: None,
            roles: parts.roles.into_iter().collect(),
            bootstrap: parts.bootstrap,
            bootstrap_query: None,
            last_redial: None,
            provider_ttl: parts.provider_ttl,
            peers,
            finds: HashMap::new(),
            commands: parts.commands,
            swarm: parts.swarm,
            inbound: parts.inbound,
            capacity_version: parts.capacity_version,
            requests: HashMap::new(),
            responses: FuturesUnordered::new(),
            subscribed: Topic::LIVE.into_iter().collect(),
            guard: parts.guard,
        }
    }

    pub(super) async fn run(mut self) {
        let now_ms = unix_now_ms();
        for (peer, addr) in &self.bootstrap {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(peer, without_p2p(addr));
        }
        let banned: Vec<PeerId> = self.guard.bans().map(|(p, _)| *p).collect();
        for peer in banned {
            tracing::info!(%peer, "peer banned (stored ban)");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
        self.provide_roles();
        self.dial_bootstrap();
        self.poll_advert(now_ms);

        let mut maintenance = tokio::time::interval(MAINTENANCE);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut bootstrap_timer =
            tokio::time::interval_at(Instant::now() + BOOTSTRAP_INTERVAL, BOOTSTRAP_INTERVAL);
        bootstrap_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reprovide = (self.provider_ttl / 2).max(Duration::from_secs(1));
        let mut provide_timer = tokio::time::interval_at(Instant::now() + reprovide, reprovide);
        provide_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        tracing::info!(peer_id = %self.swarm.local_peer_id(), roles = ?self.roles, "network driver running");
        loop {
            let sleep = self.until_next_deadline(unix_now_ms());
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event, unix_now_ms()),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.on_command(command, unix_now_ms()),
                    // Every handle is gone: nobody can ask anything any more.
                    None => break,
                },
                changed = self.advert.changed(), if self.advert_open => {
                    if changed.is_err() {
                        // The template's sender is gone: keep the last template.
                        self.advert_open = false;
                    }
                    self.poll_advert(unix_now_ms());
                }
                Some((peer, service, channel, answer)) = self.responses.next(), if !self.responses.is_empty() => {
                    self.guard.answered(&peer);
                    self.send_response(service, channel, answer);
                }
                () = tokio::time::sleep(sleep) => self.on_deadline(unix_now_ms()),
                _ = maintenance.tick() => self.on_maintenance(unix_now_ms()),
                _ = bootstrap_timer.tick() => self.kad_bootstrap(),
                _ = provide_timer.tick() => self.provide_roles(),
            }
        }
        for (_, find) in self.finds.drain() {
            let _ = find.reply.send(Err(NetError::Stopped));
        }
        for (_, pending) in self.requests.drain() {
            let _ = pending.reply.send(Err(NetError::Stopped));
        }
        tracing::info!("network driver stopped");
    }

    /// Time until the earliest deadline of the machines.
    fn until_next_deadline(&self, now_ms: u64) -> Duration {
        [self.schedule.next_deadline(), self.table.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
            .unwrap_or(MAX_SLEEP)
            .clamp(MIN_SLEEP, MAX_SLEEP)
    }

    fn on_deadline(&mut self, now_ms: u64) {
        if self.table.next_deadline().is_some_and(|at| at <= now_ms) {
            let gone = self.table.expire(now_ms);
            if !gone.is_empty() {
                self.capacity_changed();
            }
            for node in gone {
                tracing::debug!(%node, "capacity entry expired");
            }
        }
        self.poll_advert(now_ms);
    }

    fn on_maintenance(&mut self, now_ms: u64) {
        self.try_publish(now_ms);
        for peer in self.guard.expire(now_ms) {
            tracing::info!(%peer, "ban expired");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        let now = Instant::now();
        let overdue: Vec<QueryId> = self
            .finds
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            self.complete_find(id);
        }
        let connected = self.swarm.connected_peers().next().is_some();
        let redial_due = self
            .last_redial
            .is_none_or(|at| at.elapsed() >= REDIAL_INTERVAL);
        if !connected && redial_due && !self.bootstrap.is_empty() {
            tracing::info!("no connection left: redialling the bootstrap peers");
            self.dial_bootstrap();
        }
    }

    // ----- own advert -------------------------------------------------------

    /// Signs and publishes our advert when the schedule says it is due.
    fn poll_advert(&mut self, now_ms: u64) {
        let template = self.advert.borrow_and_update().clone();
        let content = match content_hash(&template, self.node_id) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "capacity advert template does not encode; not published");
                return;
            }
        };
        // The refresh period follows the number of nodes we know.
        self.schedule.set_known_nodes(self.table.len());
        let Some(publication) = self.schedule.poll(content, now_ms) else {
            return;
        };
        let seq = publication.seq;
        let mut advert = template;
        advert.node = self.node_id;
        advert.seq = seq;
        advert.issued_at_ms = now_ms;
        advert.refresh_ms = publication.refresh_ms;
        let signed = match Signed::sign(&self.key, &advert) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign our capacity advert; not published");
                return;
            }
        };
        self.capacity_changed();
        if let Err(e) = self.table.apply_verified(advert, now_ms) {
            tracing::warn!(error = %e, "our own advert was not applied to the local table");
        }
        tracing::debug!(seq, "publishing capacity advert");
        self.pending_publish = Some(PendingPublish {
            frame: signed.into_bytes(),
            issued_at_ms: now_ms,
        });
        self.try_publish(now_ms);
    }

    /// Publishes the pending advert; keeps it for the next tick when no peer
    /// is subscribed yet, drops it once a newer one is due anyway.
    fn try_publish(&mut self, now_ms: u64) {
        let Some(pending) = &self.pending_publish else {
            return;
        };
        if now_ms.saturating_sub(pending.issued_at_ms) >= self.advert_interval_ms {
            tracing::debug!(
                "capacity advert never found a subscribed peer; the next one replaces it"
            );
            self.pending_publish = None;
            return;
        }
        let result = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(Topic::Capacity.hash(), pending.frame.clone());
        match result {
            Ok(_) | Err(PublishError::Duplicate) => self.pending_publish = None,
            Err(PublishError::NoPeersSubscribedToTopic) | Err(PublishError::AllQueuesFull(_)) => {
                tracing::trace!("no peer to publish the capacity advert to yet; retrying");
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing the capacity advert failed");
                self.pending_publish = None;
            }
        }
    }

    // ----- roles and bootstrap ----------------------------------------------

    fn provide_roles(&mut self) {
        for role in self.roles.clone() {
            match self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(build::role_key(role))
            {
                Ok(_) => tracing::debug!(%role, "announcing role"),
                Err(e) => {
                    tracing::warn!(%role, error = %e, "cannot store our role provider record")
                }
            }
        }
    }

    fn dial_bootstrap(&mut self) {
        self.last_redial = Some(Instant::now());
        for (peer, addr) in self.bootstrap.clone() {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
    }

    fn kad_bootstrap(&mut self) {
        if self.bootstrap_query.is_some() {
            return;
        }
        match self.swarm.behaviour_mut().kad.bootstrap() {
            Ok(id) => self.bootstrap_query = Some(id),
            Err(_) => tracing::debug!("Kademlia bootstrap skipped: no known peer"),
        }
    }

    // ----- swarm events -----------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>, now_ms: u64) {
        match event {
            SwarmEvent::Behaviour(NodeBehaviourEvent::Gossipsub(e)) => self.on_gossip(e, now_ms),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event {
                peer, result, ..
            })) => match result {
                Ok(rtt) => {
                    if let Some(state) = self.peers.get_mut(&peer) {
                        state.rtt = Some(rtt);
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "ping failed"),
            },
            SwarmEvent::Behaviour(NodeBehaviourEvent::Rpc(e)) => {
                self.on_reqres(Service::Rpc, e, now_ms)
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Content(e)) => {
                self.on_reqres(Service::Content, e, now_ms)
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ledger(e)) => {
                self.on_reqres(Service::Ledger, e, now_ms)
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Blocked(e)) => match e {},
            SwarmEvent::Behaviour(NodeBehaviourEvent::Streams(())) => {}
            SwarmEvent::Behaviour(NodeBehaviourEvent::Autonat(e)) => {
                tracing::debug!(event = ?e, "autonat")
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Relay(e)) => {
                tracing::debug!(event = ?e, "relay client")
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Dcutr(e)) => {
                tracing::debug!(event = ?e, "dcutr")
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                let state = self.peers.entry(peer_id).or_default();
                state.connections += 1;
                state.loopback |= build::is_loopback(&addr);
                push_bounded(&mut state.conn_addrs, without_p2p(&addr));
                tracing::debug!(peer = %peer_id, %addr, "connected");
                if self.is_bootstrap_peer(&peer_id) {
                    tracing::info!(peer = %peer_id, "connected to bootstrap peer");
                    self.kad_bootstrap();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    if self.is_bootstrap_peer(&peer_id) {
                        if let Some(state) = self.peers.get_mut(&peer_id) {
                            state.connections = 0;
                        }
                    } else {
                        self.peers.remove(&peer_id);
                    }
                } else if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.connections = usize::try_from(num_established).unwrap_or(usize::MAX);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => match peer_id {
                Some(peer) if self.is_bootstrap_peer(&peer) => {
                    tracing::warn!(%peer, error = %error, "cannot reach bootstrap peer");
                }
                _ => tracing::debug!(peer = ?peer_id, error = %error, "dial failed"),
            },
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening")
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error, "listener error")
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                tracing::warn!(?addresses, ?reason, "listener closed");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed")
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired")
            }
            _ => {}
        }
    }

    fn is_bootstrap_peer(&self, peer: &PeerId) -> bool {
        self.bootstrap.iter().any(|(p, _)| p == peer)
    }

    fn on_gossip(&mut self, event: gossipsub::Event, now_ms: u64) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let acceptance = match Topic::from_hash(&message.topic) {
                    Some(Topic::Capacity) => {
                        let verdict = self.table.handle_frame(&message.data, now_ms);
                        if verdict.is_ok() {
                            self.capacity_changed();
                        }
                        match &verdict {
                            Ok(applied) => tracing::trace!(?applied, "capacity advert applied"),
                            Err(e) if e.is_misbehaviour() => {
                                tracing::debug!(peer = %propagation_source, error = %e, "capacity advert rejected");
                            }
                            Err(e) => tracing::trace!(error = %e, "capacity advert ignored"),
                        }
                        build::capacity_acceptance(&verdict)
                    }
                    Some(topic) if self.subscribed.contains(&topic) => {
                        // The node's services validate it and answer through
                        // `Command::Validate`; gossipsub holds it until then.
                        let gossip = InboundGossip {
                            topic,
                            id: message_id.clone(),
                            source: propagation_source,
                            data: message.data,
                        };
                        match self.inbound.try_send(Inbound::Gossip(gossip)) {
                            Ok(()) => return,
                            Err(_) => {
                                tracing::debug!(%topic, "services busy: gossip message ignored");
                                gossipsub::MessageAcceptance::Ignore
                            }
                        }
                    }
                    // A topic we cannot validate: never forward it, charge nobody.
                    _ => gossipsub::MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                tracing::debug!(peer = %peer_id, %topic, "peer subscribed");
                if topic == Topic::Capacity.hash() {
                    // Someone to send a pending advert to at last.
                    self.try_publish(now_ms);
                }
            }
            other => tracing::trace!(event = ?other, "gossipsub"),
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        let Some(state) = self.peers.get_mut(&peer_id) else {
            return;
        };
        state.agent = Some(info.agent_version.clone());
        let usable = build::dialable_listen_addrs(&info, state.loopback);
        state.listen_addrs.clear();
        for addr in &usable {
            push_bounded(&mut state.listen_addrs, addr.clone());
        }
        if build::is_rendertrust_dht_peer(&info) {
            for addr in usable {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        } else {
            tracing::debug!(peer = %peer_id, protocol = %info.protocol_version, "not a RenderTrust DHT peer");
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                QueryResult::GetProviders(result) => {
                    match result {
                        Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                            if let Some(find) = self.finds.get_mut(&id) {
                                find.found.extend(
                                    providers
                                        .iter()
                                        .filter_map(|p| NodeId::from_peer_id(p).ok()),
                                );
                            }
                        }
                        Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                        Err(e) => tracing::debug!(error = %e, "role lookup ended early"),
                    }
                    if step.last {
                        self.complete_find(id);
                    }
                }
                QueryResult::Bootstrap(result) if self.bootstrap_query == Some(id) && step.last => {
                    self.bootstrap_query = None;
                    match result {
                        Ok(_) => {
                            tracing::debug!("Kademlia bootstrap done; announcing roles");
                            self.provide_roles();
                        }
                        Err(e) => tracing::warn!(error = %e, "Kademlia bootstrap failed"),
                    }
                }
                QueryResult::StartProviding(result) => match result {
                    Ok(ok) => tracing::debug!(key = ?ok.key, "role announced"),
                    Err(e) => tracing::debug!(error = %e, "role announcement incomplete"),
                },
                _ => {}
            },
            kad::Event::ModeChanged { new_mode } => {
                tracing::info!(mode = %new_mode, "Kademlia mode")
            }
            other => tracing::trace!(event = ?other, "kademlia"),
        }
    }

    fn complete_find(&mut self, id: QueryId) {
        if let Some(find) = self.finds.remove(&id) {
            let _ = find.reply.send(Ok(find.found.into_iter().collect()));
        }
    }

    // ----- commands ---------------------------------------------------------

    fn on_command(&mut self, command: Command, now_ms: u64) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_infos(now_ms));
            }
            Command::Capacity(reply) => {
                let _ = reply.send(self.table.live(now_ms).cloned().collect());
            }
            Command::CapacityStats(reply) => {
                let _ = reply.send(self.table.stats());
            }
            Command::FindRole(role, reply) => {
                if self.finds.len() >= MAX_PENDING_FINDS {
                    let _ = reply.send(Err(NetError::Busy));
                    return;
                }
                let mut found = BTreeSet::new();
                if self.roles.contains(&role) {
                    found.insert(self.node_id);
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(build::role_key(role));
                self.finds.insert(
                    id,
                    PendingFind {
                        found,
                        reply,
                        deadline: Instant::now() + FIND_ROLE_TIMEOUT,
                    },
                );
            }
            Command::Request {
                peer,
                service,
                bytes,
                reply,
            } => self.send_request(peer, service, bytes, reply),
            Command::Offence(node, offence) => match node.to_peer_id() {
                Ok(peer) => self.offence(peer, offence, now_ms),
                Err(e) => tracing::debug!(error = %e, "offence of a node without a peer id"),
            },
            Command::Subscribe(topic, reply) => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&topic.ident())
                    .map(|_| ())
                    .map_err(|e| NetError::Publish {
                        topic,
                        reason: format!("subscribing: {e}"),
                    });
                if result.is_ok() {
                    self.subscribed.insert(topic);
                }
                let _ = reply.send(result);
            }
            Command::Publish { topic, data, reply } => {
                let result = match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic.hash(), data)
                {
                    Ok(_) | Err(PublishError::Duplicate) => Ok(()),
                    Err(e) => Err(NetError::Publish {
                        topic,
                        reason: e.to_string(),
                    }),
                };
                let _ = reply.send(result);
            }
            Command::Validate {
                id,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                    Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                    Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            // Handled in the loop itself.
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn capacity_changed(&mut self) {
        self.capacity_version
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    // ----- request/response -------------------------------------------------

    fn reqres(
        &mut self,
        service: Service,
    ) -> &mut request_response::Behaviour<super::reqres::BytesCodec> {
        let behaviour = self.swarm.behaviour_mut();
        match service {
            Service::Rpc => &mut behaviour.rpc,
            Service::Content => &mut behaviour.content,
            Service::Ledger => &mut behaviour.ledger,
        }
    }

    fn send_request(
        &mut self,
        peer: NodeId,
        service: Service,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    ) {
        let fail = |reason: String| NetError::Request {
            peer,
            service,
            reason,
        };
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            let _ = reply.send(Err(NetError::RequestsBusy));
            return;
        }
        let peer_id = match peer.to_peer_id() {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(fail(e.to_string())));
                return;
            }
        };
        if peer == self.node_id {
            let _ = reply.send(Err(fail("a node does not send requests to itself".into())));
            return;
        }
        // Addresses we know from identify and from our connections; Kademlia
        // adds its own when the swarm dials.
        let addrs = self
            .peers
            .get(&peer_id)
            .map(|s| {
                let mut a = s.listen_addrs.clone();
                a.extend(s.conn_addrs.iter().cloned());
                a
            })
            .unwrap_or_default();
        let id = self
            .reqres(service)
            .send_request_with_addresses(&peer_id, bytes, addrs);
        self.requests.insert(
            id,
            PendingRequest {
                peer,
                service,
                reply,
            },
        );
    }

    /// Counts an offence of `peer`; bans it (disconnect, refuse) when the
    /// guard says so.
    fn offence(&mut self, peer: PeerId, offence: Offence, now_ms: u64) {
        if let Some(until) = self.guard.offence(peer, offence, now_ms) {
            tracing::warn!(%peer, ?offence, until_ms = until, "peer banned");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
        }
    }

    fn on_reqres(
        &mut self,
        service: Service,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
        now_ms: u64,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Ok(node) = NodeId::from_peer_id(&peer) else {
                        tracing::debug!(%peer, "request from a peer without an ed25519 id dropped");
                        return;
                    };
                    let why = match self.guard.admit(peer, service, now_ms) {
                        Admission::Admit => None,
                        Admission::Banned => return,
                        Admission::Throttled => {
                            Some("rate limit: too many requests from this peer; retry later")
                        }
                        Admission::TooManyStreams => Some(
                            "too many requests from this peer waiting for answers; retry later",
                        ),
                    };
                    if let Some(why) = why {
                        // Refused without any work: a fixed answer, no service sees it.
                        tracing::debug!(%peer, %service, why, "request refused");
                        self.offence(peer, Offence::Throttled, now_ms);
                        if let Some(bytes) = refusal(service, why) {
                            let _ = self.reqres(service).send_response(channel, bytes);
                        }
                        return;
                    }
                    let (tx, rx) = oneshot::channel();
                    let request = InboundRequest {
                        peer: node,
                        service,
                        bytes: request,
                        reply: tx,
                    };
                    if self.inbound.try_send(Inbound::Request(request)).is_err() {
                        // Dropping the channel tells the peer no answer comes.
                        tracing::debug!(%peer, %service, "services busy: request refused");
                        self.guard.answered(&peer);
                        return;
                    }
                    self.responses
                        .push(Box::pin(async move { (peer, service, channel, rx.await) }));
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(pending) = self.requests.remove(&request_id) {
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(pending) = self.requests.remove(&request_id) {
                    let _ = pending.reply.send(Err(NetError::Request {
                        peer: pending.peer,
                        service: pending.service,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %service, %error, "inbound request failed");
                // A stream that broke while we read it (over the size bound,
                // truncated, not our framing) is the peer's doing.
                if let request_response::InboundFailure::Io(_) = error {
                    self.offence(peer, Offence::Oversized, now_ms);
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn send_response(
        &mut self,
        service: Service,
        channel: ResponseChannel<Vec<u8>>,
        answer: Result<Vec<u8>, oneshot::error::RecvError>,
    ) {
        // A dropped reply sender means the service chose not to answer; the
        // dropped channel tells the peer so.
        if let Ok(bytes) = answer
            && self.reqres(service).send_response(channel, bytes).is_err()
        {
            tracing::debug!(%service, "peer gone before the answer was sent");
        }
    }

    fn status(&self) -> NetStatus {
        let me = *self.swarm.local_peer_id();
        let with_p2p = |a: &Multiaddr| a.clone().with(Protocol::P2p(me)).to_string();
        let mut listen: Vec<&Multiaddr> = self.swarm.listeners().collect();
        // QUIC first (the default transport), then the rest, each group sorted.
        listen.sort_by_key(|a| {
            (
                !a.iter().any(|p| matches!(p, Protocol::QuicV1)),
                a.to_string(),
            )
        });
        NetStatus {
            peer_id: me.to_string(),
            node_id: self.node_id,
            listen_addrs: listen.into_iter().map(with_p2p).collect(),
            external_addrs: self.swarm.external_addresses().map(with_p2p).collect(),
            connected_peers: self.swarm.connected_peers().count(),
            roles: self.roles.iter().copied().collect(),
        }
    }

    fn peer_infos(&self, now_ms: u64) -> Vec<PeerInfo> {
        let gossipsub = &self.swarm.behaviour().gossipsub;
        self.peers
            .iter()
            .map(|(peer, state)| {
                let addrs = if state.listen_addrs.is_empty() {
                    &state.conn_addrs
                } else {
                    &state.listen_addrs
                };
                PeerInfo {
                    peer_id: peer.to_string(),
                    addrs: addrs.iter().map(ToString::to_string).collect(),
                    gossipsub_score: gossipsub.peer_score(peer),
                    agent_version: state.agent.clone(),
                    rtt_ms: state.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    connected: state.connections > 0,
                    hygiene: self.guard.counters(peer, now_ms),
                }
            })
            .collect()
    }
}
