//! Swarm construction, shared by the node and `rendertrust-bootstrap`.
//!
//! One place says how a RenderTrust peer talks: transports (QUIC first, TCP +
//! noise + yamux as fallback, DNS), protocol names, gossipsub settings and
//! scoring, Kademlia settings. The node's [`NodeBehaviour`] and the
//! bootstrap's behaviour are both assembled from the functions here, so the
//! two can never drift apart on a protocol name or a limit.
//!
//! This module builds things; it runs nothing and holds no protocol rule. The
//! one translation it owns, [`capacity_acceptance`], maps the protocol's
//! verdict on an advert to a gossipsub validation result.

use std::time::Duration;

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::kad::{self, store::MemoryStore, store::MemoryStoreConfig};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, autonat, dcutr, identify, noise, ping,
    relay, request_response, tcp, yamux,
};
use rendertrust_protocol::capacity::{AdvertApplied, AdvertRejected};

use super::NetError;
use super::reqres;
use super::score;
use super::topic::Topic;

/// Identify protocol version: peers with another value are not RenderTrust peers.
pub const IDENTIFY_PROTOCOL: &str = "/rendertrust/id/1.0.0";

/// Kademlia protocol name: keeps our DHT apart from the public IPFS DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/rendertrust/kad/1.0.0");

/// Largest gossipsub message (frame plus envelope): an advert frame is at
/// most ~16 KiB, a ledger escrow event (spec + offer + accept) ~67 KiB.
pub const MAX_GOSSIP_BYTES: usize = 96 * 1024;

/// Gossipsub heartbeat. Short, so a loopback devnet forms its mesh in about a
/// second; the cost is a few small control messages per peer per second.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// How long a provider record lives on the peers that store it, unless
/// configured otherwise; the provider re-announces at half of it.
pub const DEFAULT_PROVIDER_TTL: Duration = Duration::from_secs(10 * 60);

/// Connections with nothing to do close after this long.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The agent string sent in identify: `rendertrust/<version>`.
pub fn agent_version() -> String {
    format!("rendertrust/{}", env!("CARGO_PKG_VERSION"))
}

/// The Kademlia provider key of a role: `/rendertrust/role/<name>/1`.
pub fn role_key(role: rendertrust_protocol::wire::Role) -> kad::RecordKey {
    kad::RecordKey::new(&format!("/rendertrust/role/{}/1", role.as_str()))
}

/// The behaviours of a node.
#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// Banned peers: connections refused and closed ([`super::guard`]).
    /// First, so a denied connection never reaches the other behaviours.
    pub blocked: libp2p::allow_block_list::Behaviour<libp2p::allow_block_list::BlockedPeers>,
    /// Relay v2 client (reach and be reached through relays).
    pub relay: relay::client::Behaviour,
    /// Hole punching over relayed connections.
    pub dcutr: dcutr::Behaviour,
    /// Protocol, agent and listen addresses of peers.
    pub identify: identify::Behaviour,
    /// Liveness and round-trip times.
    pub ping: ping::Behaviour,
    /// The DHT: routing and role provider records.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Gossip: capacity adverts.
    pub gossipsub: gossipsub::Behaviour,
    /// AutoNAT v2 client: are our address candidates reachable?
    pub autonat: autonat::v2::client::Behaviour,
    /// Job control requests ([`reqres::Service::Rpc`]).
    pub rpc: request_response::Behaviour<reqres::BytesCodec>,
    /// Manifests and sealed chunks ([`reqres::Service::Content`]).
    pub content: request_response::Behaviour<reqres::BytesCodec>,
    /// Rollup reconciliation between ledger peers ([`reqres::Service::Ledger`]).
    pub ledger: request_response::Behaviour<reqres::BytesCodec>,
    /// Raw streams: bulk chunk transfer ([`reqres::CHUNK_STREAM_PROTOCOL`],
    /// served by `jobs::transfer`).
    pub streams: libp2p_stream::Behaviour,
}

impl NodeBehaviour {
    /// Assembles a node's behaviours.
    pub fn new(
        key: &Keypair,
        relay: relay::client::Behaviour,
        provider_ttl: Duration,
        kad_server: bool,
    ) -> Result<Self, NetError> {
        let peer_id = key.public().to_peer_id();
        Ok(NodeBehaviour {
            blocked: libp2p::allow_block_list::Behaviour::default(),
            relay,
            dcutr: dcutr::Behaviour::new(peer_id),
            identify: identify_behaviour(key.public()),
            ping: ping_behaviour(),
            kad: kademlia_behaviour(peer_id, provider_ttl, kad_server),
            gossipsub: gossipsub_behaviour(key)?,
            autonat: autonat::v2::client::Behaviour::default(),
            rpc: reqres::behaviour(reqres::Service::Rpc),
            content: reqres::behaviour(reqres::Service::Content),
            ledger: reqres::behaviour(reqres::Service::Ledger),
            streams: libp2p_stream::Behaviour::new(),
        })
    }
}

/// Identify with our protocol and agent strings; pushes listen address changes.
pub fn identify_behaviour(public: PublicKey) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), public)
            .with_agent_version(agent_version())
            .with_push_listen_addr_updates(true),
    )
}

/// Ping every 15 s (RTT for `peers()`; failures close dead connections).
pub fn ping_behaviour() -> ping::Behaviour {
    ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15)))
}

/// Kademlia on [`KAD_PROTOCOL`].
///
/// Provider records stored here expire after `provider_ttl`. Re-announcing our
/// own records is driven by the node's event loop (at `provider_ttl / 2`),
/// as is the periodic bootstrap, so Kademlia's own timers for both are off.
/// `server`: answer DHT queries (forced); otherwise Kademlia switches to server
/// mode by itself once an external address is confirmed (AutoNAT).
pub fn kademlia_behaviour(
    peer_id: PeerId,
    provider_ttl: Duration,
    server: bool,
) -> kad::Behaviour<MemoryStore> {
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config
        .set_query_timeout(Duration::from_secs(30))
        .set_provider_record_ttl(Some(provider_ttl))
        .set_provider_publication_interval(None)
        .set_periodic_bootstrap_interval(None)
        // No value records are used: keep their store small.
        .set_record_ttl(Some(Duration::from_secs(3600)))
        .set_max_packet_size(64 * 1024);
    let store = MemoryStore::with_config(
        peer_id,
        MemoryStoreConfig {
            max_records: 256,
            max_value_bytes: 16 * 1024,
            // Role keys are few; a role may have many providers.
            max_providers_per_key: 256,
            max_provided_keys: 64,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, config);
    if server {
        kad.set_mode(Some(kad::Mode::Server));
    }
    kad
}

/// Gossipsub: signed messages, strict validation, manual acceptance, content
/// ids, bounded size, peer scoring (see [`score`]). Subscribes to nothing.
pub fn gossipsub_behaviour(key: &Keypair) -> Result<gossipsub::Behaviour, NetError> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        // The id is the content hash: the same frame relayed by many peers is
        // one message, whoever wrapped it.
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
        })
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .heartbeat_interval(HEARTBEAT)
        .heartbeat_initial_delay(Duration::from_millis(100))
        // Keep ~6 s of messages for IWANT replies at this heartbeat.
        .history_length(12)
        .history_gossip(3)
        .mesh_n(6)
        .mesh_n_low(4)
        .mesh_n_high(12)
        .mesh_outbound_min(2)
        .build()
        .map_err(|e| NetError::Behaviour(format!("gossipsub config: {e}")))?;
    let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| NetError::Behaviour(format!("gossipsub: {e}")))?;
    gossipsub
        .with_peer_score(score::peer_score_params(), score::peer_score_thresholds())
        .map_err(|e| NetError::Behaviour(format!("gossipsub scoring: {e}")))?;
    Ok(gossipsub)
}

/// Subscribes to every live topic ([`Topic::LIVE`]).
pub fn subscribe_live_topics(gossipsub: &mut gossipsub::Behaviour) -> Result<(), NetError> {
    for topic in Topic::LIVE {
        gossipsub
            .subscribe(&topic.ident())
            .map_err(|e| NetError::Behaviour(format!("subscribing to {topic}: {e}")))?;
    }
    Ok(())
}

/// How gossipsub should treat an advert, given the capacity table's verdict:
/// accepted → `Accept` (forward); misbehaviour → `Reject` (drop and charge the
/// peer that sent it); a benign rejection (stale, full, too old) → `Ignore`.
pub fn capacity_acceptance(verdict: &Result<AdvertApplied, AdvertRejected>) -> MessageAcceptance {
    match verdict {
        Ok(_) => MessageAcceptance::Accept,
        Err(e) if e.is_misbehaviour() => MessageAcceptance::Reject,
        Err(_) => MessageAcceptance::Ignore,
    }
}

/// Whether an address names a loopback IP.
pub fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether an address names the unspecified IP (`0.0.0.0`, `::`).
pub fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// Whether identify describes a RenderTrust peer that serves our DHT.
pub fn is_rendertrust_dht_peer(info: &identify::Info) -> bool {
    info.protocol_version == IDENTIFY_PROTOCOL && info.protocols.contains(&KAD_PROTOCOL)
}

/// The listen addresses a peer reported that are worth dialling: never
/// unspecified ones, loopback ones only when we reached the peer over
/// loopback (a remote peer's 127.0.0.1 is our own machine). At most 16.
pub fn dialable_listen_addrs(info: &identify::Info, via_loopback: bool) -> Vec<Multiaddr> {
    info.listen_addrs
        .iter()
        .filter(|a| !is_unspecified(a) && (via_loopback || !is_loopback(a)))
        .take(16)
        .cloned()
        .collect()
}

fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

fn swarm_config(config: libp2p::swarm::Config) -> libp2p::swarm::Config {
    config.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
}

/// Builds a swarm with the relay *client* transport (nodes): QUIC, TCP +
/// noise + yamux, DNS, relay client. Must run inside a tokio runtime.
pub fn build_client_swarm<B, F>(keypair: Keypair, behaviour: F) -> Result<Swarm<B>, NetError>
where
    B: NetworkBehaviour,
    F: FnOnce(&Keypair, relay::client::Behaviour) -> Result<B, NetError>,
{
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(format!("tcp: {e}")))?
        .with_quic()
        .with_dns()
        .map_err(|e| NetError::Transport(format!("dns: {e}")))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(format!("relay client: {e}")))?
        .with_behaviour(|key, relay| behaviour(key, relay).map_err(Into::into))
        .map_err(|e| NetError::Behaviour(e.to_string()))?
        .with_swarm_config(swarm_config)
        .build())
}

/// Builds a swarm without the relay client (servers such as the bootstrap,
/// and test peers): QUIC, TCP + noise + yamux, DNS. Must run inside a tokio runtime.
pub fn build_server_swarm<B, F>(keypair: Keypair, behaviour: F) -> Result<Swarm<B>, NetError>
where
    B: NetworkBehaviour,
    F: FnOnce(&Keypair) -> Result<B, NetError>,
{
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(format!("tcp: {e}")))?
        .with_quic()
        .with_dns()
        .map_err(|e| NetError::Transport(format!("dns: {e}")))?
        .with_behaviour(|key| behaviour(key).map_err(Into::into))
        .map_err(|e| NetError::Behaviour(e.to_string()))?
        .with_swarm_config(swarm_config)
        .build())
}

/// Starts a listener on every address and waits until each reports a bound
/// address (at most [`LISTEN_TIMEOUT`](super::LISTEN_TIMEOUT) in all).
///
/// Returns, in the order given, each configured address with the first
/// address its listener bound (port 0 resolved; one interface of `0.0.0.0`).
/// Swarm events other than listener events are dropped: call this before
/// dialling anyone.
pub async fn listen_all<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
) -> Result<Vec<(Multiaddr, Multiaddr)>, NetError> {
    let mut waiting: Vec<(ListenerId, Multiaddr)> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        waiting.push((id, addr.clone()));
    }
    let mut bound: Vec<Option<Multiaddr>> = vec![None; waiting.len()];
    let deadline = tokio::time::Instant::now() + super::LISTEN_TIMEOUT;
    while bound.iter().any(Option::is_none) {
        let pending = || {
            waiting
                .iter()
                .zip(&bound)
                .find(|(_, b)| b.is_none())
                .map(|((_, a), _)| a.clone())
                .unwrap_or_else(Multiaddr::empty)
        };
        let Ok(event) = tokio::time::timeout_at(deadline, swarm.select_next_some()).await else {
            return Err(NetError::ListenTimeout { addr: pending() });
        };
        let index = |id: &ListenerId| waiting.iter().position(|(w, _)| w == id);
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(i) = index(&listener_id)
                    && let Some(slot) = bound.get_mut(i)
                    && slot.is_none()
                {
                    *slot = Some(address);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some((_, addr)) = index(&listener_id).and_then(|i| waiting.get(i)) {
                    let reason = match reason {
                        Ok(()) => "listener closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(NetError::Listen {
                        addr: addr.clone(),
                        reason,
                    });
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some((_, addr)) = index(&listener_id).and_then(|i| waiting.get(i)) {
                    return Err(NetError::Listen {
                        addr: addr.clone(),
                        reason: error.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(waiting
        .into_iter()
        .zip(bound)
        .filter_map(|((_, configured), b)| b.map(|b| (configured, b)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::wire::Role;

    #[test]
    fn role_keys_are_versioned() {
        assert_eq!(
            role_key(Role::Scheduler).to_vec(),
            b"/rendertrust/role/scheduler/1".to_vec()
        );
    }
}
