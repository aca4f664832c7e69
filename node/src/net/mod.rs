//! The libp2p swarm of a node and its event loop.
//!
//! One swarm per node, owned by one task (the *event loop*). The rest of the
//! node talks to it through a cloneable [`NetHandle`]: a bounded queue of
//! commands, each answered on its own oneshot channel (the shape of
//! rust-libp2p's `examples/file-sharing`).
//!
//! The loop is a driver: it translates swarm events into inputs of the
//! `rendertrust-protocol` machines and their verdicts into swarm calls. It
//! reads the clock once per event and passes `now_ms` (Unix ms) down. It holds
//! no protocol rule: what makes an advert valid, newer or expired is decided
//! by [`CapacityTable`]; when to publish our own, by [`AdvertSchedule`].
//!
//! What the loop does:
//! * **Transports and behaviours** ([`swarm`]): QUIC, TCP + noise + yamux,
//!   DNS, relay client; identify, ping, Kademlia, gossipsub, AutoNAT v2
//!   client, DCUtR.
//! * **Capacity gossip** on [`Topic::Capacity`]: every message is fed to
//!   [`CapacityTable::handle_frame`]; accepted → forwarded, misbehaviour →
//!   rejected (the sending peer's gossipsub score drops, see [`score`]),
//!   benign (stale, full, too old) → ignored. The table expires entries at its
//!   own deadline. Gossipsub runs with signed messages, strict validation,
//!   content-hash message ids, 96 KiB messages at most and a 500 ms
//!   heartbeat, so a loopback mesh forms within a second ([`swarm`]).
//! * **Own advert**: the caller's `watch` template, completed with node id,
//!   sequence number and issue time, signed and published at start, on
//!   change and periodically: every `advert_interval` in meshes of up to
//!   10 000 known nodes, longer in larger ones (`capacity::RefreshPolicy`:
//!   about 1 000 adverts a second mesh-wide, at most every 5 min; the period
//!   travels in the advert so receivers keep the entry long enough)
//!   ([`AdvertSchedule`]; the first
//!   sequence number is the Unix time in ms, so it only grows across
//!   restarts). It is also applied to the local table, so a node lists itself.
//!   A publish that finds no subscribed peer is retried every second until
//!   it is sent or a newer advert replaces it.
//! * **Roles** as Kademlia provider records (`/rendertrust/role/<name>/1`),
//!   announced after each bootstrap and every `provider_ttl / 2`;
//!   [`NetHandle::find_role`] collects providers for at most
//!   [`FIND_ROLE_TIMEOUT`].
//! * **Bootstrap**: dials every bootstrap address, adds it to Kademlia, runs
//!   a Kademlia bootstrap once connected and every [`BOOTSTRAP_INTERVAL`],
//!   and redials the bootstrap peers when no connection is left.
//!
//! Bounds: the command queue holds [`COMMAND_QUEUE`] commands; at most
//! [`MAX_PENDING_FINDS`] role lookups run at once; the peer view keeps
//! connected peers and the bootstrap peers only, with at most 16 addresses
//! each; the capacity table is bounded by its own `max_entries`.
//!
//! [`AdvertSchedule`]: rendertrust_protocol::capacity::AdvertSchedule

mod event_loop;
pub mod guard;
pub mod reqres;
pub mod score;
pub mod swarm;
#[cfg(test)]
mod tests;
pub mod topic;

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rendertrust_protocol::capacity::{CapacityConfig, CapacityEntry, CapacityStats, CapacityTable};
use rendertrust_protocol::identity::{IdentityError, NodeId, NodeKey};
use rendertrust_protocol::wire::{CapacityAdvert, Role};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use reqres::Service;
pub use swarm::NodeBehaviour;
pub use topic::Topic;

/// Commands waiting for the event loop, at most.
pub const COMMAND_QUEUE: usize = 64;
/// Role lookups running at once, at most.
pub const MAX_PENDING_FINDS: usize = 32;
/// How long [`NetHandle::find_role`] collects providers.
pub const FIND_ROLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbound requests in flight, at most.
pub const MAX_PENDING_REQUESTS: usize = 1024;
/// Inbound requests and gossip messages waiting for the node's services, at most.
pub const INBOUND_QUEUE: usize = 256;
/// Kademlia bootstrap period (after the first one, which runs once connected).
pub const BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How long [`spawn`] waits for every listener to report an address.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the network driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The node key cannot be used as a libp2p identity.
    #[error("node key: {0}")]
    Identity(#[from] IdentityError),
    /// A transport could not be built.
    #[error("building transport: {0}")]
    Transport(String),
    /// A behaviour could not be built (bad configuration).
    #[error("building behaviour: {0}")]
    Behaviour(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A listener did not report a bound address in time.
    #[error("listener on {addr} reported no address within {:?}", LISTEN_TIMEOUT)]
    ListenTimeout {
        /// The address.
        addr: Multiaddr,
    },
    /// No listen address was given.
    #[error("no listen address given: expected at least one, e.g. /ip4/0.0.0.0/udp/0/quic-v1")]
    NoListenAddr,
    /// A bootstrap address lacks the peer id.
    #[error(
        "bootstrap address {0} has no /p2p/<peer id>: expected e.g. /ip4/1.2.3.4/udp/4001/quic-v1/p2p/12D3Koo…"
    )]
    BootstrapAddr(Multiaddr),
    /// The event loop has stopped.
    #[error("network driver stopped")]
    Stopped,
    /// Too many lookups in flight.
    #[error("too many role lookups in flight (max {MAX_PENDING_FINDS}); retry later")]
    Busy,
    /// A request to a peer failed.
    #[error("{service} request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: NodeId,
        /// The service.
        service: Service,
        /// Why.
        reason: String,
    },
    /// Too many outbound requests in flight.
    #[error("too many requests in flight (max {MAX_PENDING_REQUESTS}); retry later")]
    RequestsBusy,
    /// A raw stream could not be opened or accepted.
    #[error("chunk stream: {0}")]
    Stream(String),
    /// Publishing on a gossipsub topic failed.
    #[error("publishing on {topic}: {reason}")]
    Publish {
        /// The topic.
        topic: Topic,
        /// Why.
        reason: String,
    },
}

/// Settings of the network driver.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (QUIC `/udp/<port>/quic-v1` and/or TCP).
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers, each with `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Roles announced in Kademlia.
    pub roles: Vec<Role>,
    /// Force Kademlia server mode (answer DHT queries). Set it when the listen
    /// addresses are reachable by peers (public, or loopback in a devnet).
    pub kad_server: bool,
    /// Capacity table settings.
    pub capacity: CapacityConfig,
    /// Our advert is re-published at least this often.
    pub advert_interval: Duration,
    /// Lifetime of our role provider records (re-announced at half of it).
    pub provider_ttl: Duration,
    /// Per-peer request limits and bans ([`guard`]).
    pub guard: guard::GuardConfig,
    /// Where bans are kept across restarts (the node's `bans` tree).
    pub bans: Option<sled::Tree>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
                    .with(Protocol::Udp(0))
                    .with(Protocol::QuicV1),
                Multiaddr::empty()
                    .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
                    .with(Protocol::Tcp(0)),
            ],
            bootstrap: Vec::new(),
            roles: vec![Role::Worker],
            kad_server: false,
            capacity: CapacityConfig::default(),
            advert_interval: Duration::from_secs(10),
            provider_ttl: swarm::DEFAULT_PROVIDER_TTL,
            guard: guard::GuardConfig::default(),
            bans: None,
        }
    }
}

/// What `status()` reports.
#[derive(Debug, Clone, Serialize)]
pub struct NetStatus {
    /// Our libp2p peer id.
    pub peer_id: String,
    /// Our node id (the same key; serialized as its peer id text).
    #[serde(serialize_with = "serialize_display")]
    pub node_id: NodeId,
    /// Bound listen addresses, each ending in `/p2p/<peer id>`; QUIC first.
    pub listen_addrs: Vec<String>,
    /// Confirmed external addresses.
    pub external_addrs: Vec<String>,
    /// Peers with at least one connection.
    pub connected_peers: usize,
    /// Roles we announce.
    pub roles: Vec<Role>,
}

fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// One peer in `peers()`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// Known addresses (from identify, else from the connections).
    pub addrs: Vec<String>,
    /// Its gossipsub score as we see it.
    pub gossipsub_score: Option<f64>,
    /// Its identify agent string.
    pub agent_version: Option<String>,
    /// Last ping round trip, ms.
    pub rtt_ms: Option<f64>,
    /// Whether a connection is open.
    pub connected: bool,
    /// Malformed, oversized and throttled requests, penalty points, ban.
    pub hygiene: guard::PeerCounters,
}

/// A request from a peer, for the node's services.
#[derive(Debug)]
pub struct InboundRequest {
    /// The sender, authenticated by the transport.
    pub peer: NodeId,
    /// Which service it came in on.
    pub service: Service,
    /// The request bytes (bounded by the service, otherwise unchecked).
    pub bytes: Vec<u8>,
    /// Where the answer goes; dropping it tells the peer no answer comes.
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// A gossip message on a topic whose validation the node's services own
/// (every live topic but capacity). Forwarding waits for
/// [`NetHandle::validate`].
#[derive(Debug)]
pub struct InboundGossip {
    /// The topic.
    pub topic: Topic,
    /// The gossipsub message id.
    pub id: libp2p::gossipsub::MessageId,
    /// The peer that forwarded it to us.
    pub source: PeerId,
    /// The message data.
    pub data: Vec<u8>,
}

/// What peers send to the node's services.
#[derive(Debug)]
pub enum Inbound {
    /// A request/response request.
    Request(InboundRequest),
    /// A gossip message awaiting validation.
    Gossip(InboundGossip),
}

/// A gossip verdict, as the services decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Harmless but not worth forwarding (duplicate, stale).
    Ignore,
    /// Invalid: drop it and charge the peer that sent it.
    Reject,
}

#[derive(Debug)]
enum Command {
    Status(oneshot::Sender<NetStatus>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Capacity(oneshot::Sender<Vec<CapacityEntry>>),
    CapacityStats(oneshot::Sender<CapacityStats>),
    FindRole(Role, oneshot::Sender<Result<Vec<NodeId>, NetError>>),
    Request {
        peer: NodeId,
        service: Service,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Subscribe(Topic, oneshot::Sender<Result<(), NetError>>),
    Publish {
        topic: Topic,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Validate {
        id: libp2p::gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    Offence(NodeId, guard::Offence),
    Shutdown(oneshot::Sender<()>),
}

/// How long one try to open a raw stream may take ([`NetHandle::open_chunk_stream`]).
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries to open a raw stream before giving up.
pub const STREAM_OPEN_TRIES: u32 = 3;

/// The rest of the node's handle on the network driver. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    streams: StreamControl,
}

/// Opens and accepts raw streams ([`reqres::CHUNK_STREAM_PROTOCOL`]) without
/// a round trip through the event loop.
#[derive(Clone)]
struct StreamControl(libp2p_stream::Control);

impl std::fmt::Debug for StreamControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamControl")
    }
}

impl NetHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Opens a chunk stream ([`reqres::CHUNK_STREAM_PROTOCOL`]) to `peer`,
    /// dialling it if not connected.
    ///
    /// Each try is bounded by [`STREAM_OPEN_TIMEOUT`], and a try that times
    /// out is made again (up to [`STREAM_OPEN_TRIES`] in all):
    /// libp2p-stream 0.5.0-alpha can park a request forever when it comes
    /// in the instant a connection to the peer is being established (the
    /// connection is not in its table yet, so it queues the request for a
    /// dial the swarm then skips as already connected); seen as rare hangs
    /// of the first stream to a freshly bootstrapped peer. The next try
    /// finds the connection.
    pub async fn open_chunk_stream(&self, peer: NodeId) -> Result<libp2p::Stream, NetError> {
        let peer_id = peer
            .to_peer_id()
            .map_err(|e| NetError::Stream(format!("peer {peer}: {e}")))?;
        for _ in 0..STREAM_OPEN_TRIES {
            let mut control = self.streams.0.clone();
            let open = control.open_stream(peer_id, reqres::CHUNK_STREAM_PROTOCOL);
            match tokio::time::timeout(STREAM_OPEN_TIMEOUT, open).await {
                Ok(opened) => return opened.map_err(|e| NetError::Stream(e.to_string())),
                Err(_) => tracing::debug!(%peer, "opening a chunk stream timed out; trying again"),
            }
        }
        Err(NetError::Stream(format!(
            "no stream to {peer} after {STREAM_OPEN_TRIES} tries of {} s",
            STREAM_OPEN_TIMEOUT.as_secs()
        )))
    }

    /// The chunk streams peers open to this node. Only one consumer may
    /// take them: a second call fails.
    pub fn accept_chunk_streams(&self) -> Result<libp2p_stream::IncomingStreams, NetError> {
        let mut control = self.streams.0.clone();
        control
            .accept(reqres::CHUNK_STREAM_PROTOCOL)
            .map_err(|e| NetError::Stream(e.to_string()))
    }

    /// Our identity, addresses and connection count.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.ask(Command::Status).await
    }

    /// Connected peers and the bootstrap peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(Command::Peers).await
    }

    /// Live entries of the capacity table, ordered by node id (ours included).
    pub async fn capacity(&self) -> Result<Vec<CapacityEntry>, NetError> {
        self.ask(Command::Capacity).await
    }

    /// Counters of the capacity table.
    pub async fn capacity_stats(&self) -> Result<CapacityStats, NetError> {
        self.ask(Command::CapacityStats).await
    }

    /// Nodes announcing `role` in Kademlia (sorted, deduplicated; us included
    /// when we take the role). Takes at most [`FIND_ROLE_TIMEOUT`].
    pub async fn find_role(&self, role: Role) -> Result<Vec<NodeId>, NetError> {
        self.ask(|tx| Command::FindRole(role, tx)).await?
    }

    /// Sends a request to `peer` on `service` and waits for the answer
    /// (dialling the peer when needed; addresses come from identify and
    /// Kademlia). Bounded by the service's timeout.
    pub async fn request(
        &self,
        peer: NodeId,
        service: Service,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        self.ask(|reply| Command::Request {
            peer,
            service,
            bytes,
            reply,
        })
        .await?
    }

    /// Subscribes to a topic; its messages arrive as [`Inbound::Gossip`].
    pub async fn subscribe(&self, topic: Topic) -> Result<(), NetError> {
        self.ask(|reply| Command::Subscribe(topic, reply)).await?
    }

    /// Publishes on a topic (subscribed or not: gossipsub fans out).
    pub async fn publish(&self, topic: Topic, data: Vec<u8>) -> Result<(), NetError> {
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Reports the services' verdict on an [`InboundGossip`] message.
    pub async fn validate(
        &self,
        id: libp2p::gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    ) -> Result<(), NetError> {
        self.commands
            .send(Command::Validate {
                id,
                source,
                verdict,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Reports a peer's misbehaviour seen by a service (a request that does
    /// not decode): counted and penalised by the [`guard`].
    pub async fn offence(&self, peer: NodeId, offence: guard::Offence) -> Result<(), NetError> {
        self.commands
            .send(Command::Offence(peer, offence))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Stops the event loop (connections are closed when the swarm drops).
    pub async fn shutdown(&self) -> Result<(), NetError> {
        self.ask(Command::Shutdown).await
    }
}

/// Current Unix time in ms: the driver's one clock edge.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The peer id at the end of a multiaddr (`…/p2p/<peer id>`), if any.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// A started network driver.
#[derive(Debug)]
pub struct Spawned {
    /// The handle for the rest of the node.
    pub handle: NetHandle,
    /// The event loop's task.
    pub task: tokio::task::JoinHandle<()>,
    /// What peers send to the node's services (bounded: [`INBOUND_QUEUE`];
    /// when it is full, further requests are refused).
    pub inbound: mpsc::Receiver<Inbound>,
    /// A counter bumped whenever the capacity table changes, so services
    /// that mirror it ([`NetHandle::capacity`]) refresh only then.
    pub capacity_version: watch::Receiver<u64>,
}

/// Starts the swarm and its event loop.
///
/// Returns once every listen address is bound, so [`NetHandle::status`]
/// reports real addresses. The task ends after [`NetHandle::shutdown`] or when
/// every handle is dropped.
pub async fn spawn(
    key: &NodeKey,
    config: NetConfig,
    advert: watch::Receiver<CapacityAdvert>,
) -> Result<Spawned, NetError> {
    if config.listen.is_empty() {
        return Err(NetError::NoListenAddr);
    }
    let mut bootstrap = Vec::new();
    for addr in &config.bootstrap {
        let peer = peer_id_of(addr).ok_or_else(|| NetError::BootstrapAddr(addr.clone()))?;
        bootstrap.push((peer, addr.clone()));
    }
    if u128::from(config.capacity.ttl_ms) <= config.advert_interval.as_millis() {
        tracing::warn!(
            ttl_ms = config.capacity.ttl_ms,
            interval_ms = config.advert_interval.as_millis(),
            "capacity ttl is not longer than the advert interval: entries will expire between adverts"
        );
    }
    let keypair = key.to_libp2p()?;
    let provider_ttl = config.provider_ttl;
    let kad_server = config.kad_server;
    let mut swarm = swarm::build_client_swarm(keypair, |key, relay| {
        NodeBehaviour::new(key, relay, provider_ttl, kad_server)
    })?;
    swarm::subscribe_live_topics(&mut swarm.behaviour_mut().gossipsub)?;
    let streams = StreamControl(swarm.behaviour().streams.new_control());
    swarm::listen_all(&mut swarm, &config.listen).await?;

    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
    let (version_tx, capacity_version) = watch::channel(0u64);
    let parts = event_loop::Parts {
        inbound: inbound_tx,
        capacity_version: version_tx,
        key: NodeKey::from_secret_bytes(&key.secret_bytes()),
        table: CapacityTable::new(config.capacity),
        advert_interval: config.advert_interval,
        advert,
        roles: config.roles,
        bootstrap,
        provider_ttl: config.provider_ttl,
        commands: rx,
        swarm,
        guard: guard::PeerGuard::new(config.guard, config.bans, unix_now_ms()),
    };
    let event_loop = event_loop::EventLoop::new(parts, unix_now_ms());
    let task = tokio::spawn(event_loop.run());
    Ok(Spawned {
        handle: NetHandle {
            commands: tx,
            streams,
        },
        task,
        inbound,
        capacity_version,
    })
}
