//! The bootstrap peer's swarm and event loop.
//!
//! Behaviours: Kademlia in forced server mode (the mesh's entry point into the
//! DHT, storing role provider records like any other server), relay v2 server
//! (default limits of libp2p-relay: 128 reservations, 16 circuits, 2 min and
//! 128 KiB per circuit), AutoNAT v2 server (tells nodes whether their
//! addresses are reachable), identify, ping, and gossipsub.
//!
//! Gossip policy: the bootstrap subscribes only to topics it can validate
//! ([`Topic::LIVE`]: capacity) and forwards a message only after the same
//! [`CapacityTable`] machine the nodes run has accepted it, so it never
//! relays a frame a node would reject, and no rule is re-implemented here.
//! Its table is bounded and expires like a node's. It publishes nothing.
//!
//! Transport and protocol settings come from `rendertrust_node::net::swarm`,
//! so the bootstrap and the nodes cannot disagree on a protocol name or limit.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, identify, ping, relay};
use rendertrust_node::net::swarm as build;
use rendertrust_node::net::{NetError, Topic, unix_now_ms};
use rendertrust_protocol::capacity::{CapacityConfig, CapacityTable};
use rendertrust_protocol::identity::NodeKey;

/// The bootstrap peer's behaviours.
#[derive(NetworkBehaviour)]
pub struct BootstrapBehaviour {
    /// Protocol, agent and listen addresses of peers.
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// The DHT, in server mode.
    pub kad: kad::Behaviour<MemoryStore>,
    /// Gossip relay for the live topics, validated.
    pub gossipsub: gossipsub::Behaviour,
    /// Relay v2 server.
    pub relay: relay::Behaviour,
    /// AutoNAT v2 server.
    pub autonat: autonat::v2::server::Behaviour,
}

/// Settings of the bootstrap peer.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses to announce as reachable (in addition to listen addresses
    /// bound to a specific IP).
    pub external: Vec<Multiaddr>,
    /// Capacity table used to validate gossip.
    pub capacity: CapacityConfig,
    /// Lifetime of provider records stored here.
    pub provider_ttl: Duration,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            listen: Vec::new(),
            external: Vec::new(),
            capacity: CapacityConfig::default(),
            provider_ttl: build::DEFAULT_PROVIDER_TTL,
        }
    }
}

/// A running bootstrap peer (listening; events are handled by [`Bootstrap::run`]).
pub struct Bootstrap {
    swarm: Swarm<BootstrapBehaviour>,
    table: CapacityTable,
    address: Multiaddr,
    /// Connected peers and whether one of their connections is over loopback.
    loopback: HashMap<PeerId, bool>,
}

/// The address to hand out for a listener: the bound address, with an
/// unspecified IP (configured `0.0.0.0` / `::`) replaced by loopback, and
/// `/p2p/<peer id>` appended.
pub fn printable_address(configured: &Multiaddr, bound: &Multiaddr, peer: PeerId) -> Multiaddr {
    let wildcard = build::is_unspecified(configured);
    bound
        .iter()
        .map(|p| match p {
            Protocol::Ip4(_) if wildcard => Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST),
            Protocol::Ip6(_) if wildcard => Protocol::Ip6(std::net::Ipv6Addr::LOCALHOST),
            Protocol::Ip4(ip) if ip.is_unspecified() => {
                Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST)
            }
            Protocol::Ip6(ip) if ip.is_unspecified() => {
                Protocol::Ip6(std::net::Ipv6Addr::LOCALHOST)
            }
            other => other,
        })
        .collect::<Multiaddr>()
        .with(Protocol::P2p(peer))
}

impl Bootstrap {
    /// Builds the swarm and binds every listen address.
    pub async fn start(key: &NodeKey, config: BootstrapConfig) -> Result<Bootstrap, NetError> {
        if config.listen.is_empty() {
            return Err(NetError::NoListenAddr);
        }
        let provider_ttl = config.provider_ttl;
        let mut swarm = build::build_server_swarm(key.to_libp2p()?, |k| {
            let peer_id = k.public().to_peer_id();
            Ok(BootstrapBehaviour {
                identify: build::identify_behaviour(k.public()),
                ping: build::ping_behaviour(),
                kad: build::kademlia_behaviour(peer_id, provider_ttl, true),
                gossipsub: build::gossipsub_behaviour(k)?,
                relay: relay::Behaviour::new(peer_id, relay::Config::default()),
                autonat: autonat::v2::server::Behaviour::default(),
            })
        })?;
        build::subscribe_live_topics(&mut swarm.behaviour_mut().gossipsub)?;
        let bound = build::listen_all(&mut swarm, &config.listen).await?;
        let peer = *swarm.local_peer_id();
        let address = bound
            .first()
            .map(|(configured, b)| printable_address(configured, b, peer))
            .ok_or(NetError::NoListenAddr)?;
        // Listeners on a specific IP are reachable where the operator put them.
        for (configured, b) in &bound {
            if !build::is_unspecified(configured) {
                swarm.add_external_address(b.clone());
            }
        }
        for a in config.external {
            swarm.add_external_address(a);
        }
        Ok(Bootstrap {
            swarm,
            table: CapacityTable::new(config.capacity),
            address,
            loopback: HashMap::new(),
        })
    }

    /// The address to give to nodes (`--bootstrap`), with `/p2p/`.
    pub fn address(&self) -> &Multiaddr {
        &self.address
    }

    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Handles events until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(address = %self.address, "bootstrap peer running");
        loop {
            let sleep = self
                .table
                .next_deadline()
                .map(|at| Duration::from_millis(at.saturating_sub(unix_now_ms())))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event, unix_now_ms()),
                () = tokio::time::sleep(sleep) => {
                    self.table.expire(unix_now_ms());
                }
                () = &mut shutdown => break,
            }
        }
        tracing::info!("bootstrap peer stopped");
    }

    fn on_event(&mut self, event: SwarmEvent<BootstrapBehaviourEvent>, now_ms: u64) {
        match event {
            SwarmEvent::Behaviour(BootstrapBehaviourEvent::Gossipsub(
                gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                },
            )) => {
                let acceptance = match Topic::from_hash(&message.topic) {
                    Some(Topic::Capacity) => {
                        let verdict = self.table.handle_frame(&message.data, now_ms);
                        if let Err(e) = &verdict
                            && e.is_misbehaviour()
                        {
                            tracing::debug!(peer = %propagation_source, error = %e, "capacity advert rejected");
                        }
                        build::capacity_acceptance(&verdict)
                    }
                    _ => MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            SwarmEvent::Behaviour(BootstrapBehaviourEvent::Identify(
                identify::Event::Received { peer_id, info, .. },
            )) if build::is_rendertrust_dht_peer(&info) => {
                let via_loopback = self.loopback.get(&peer_id).copied().unwrap_or(false);
                for addr in build::dialable_listen_addrs(&info, via_loopback) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BootstrapBehaviourEvent::Relay(e)) => match e {
                relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                    tracing::info!(peer = %src_peer_id, "relay reservation accepted");
                }
                relay::Event::CircuitReqAccepted {
                    src_peer_id,
                    dst_peer_id,
                    ..
                } => tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "relay circuit opened"),
                other => tracing::debug!(event = ?other, "relay"),
            },
            SwarmEvent::Behaviour(BootstrapBehaviourEvent::Autonat(e)) => {
                tracing::debug!(event = ?e, "autonat")
            }
            SwarmEvent::Behaviour(BootstrapBehaviourEvent::Kad(e)) => {
                tracing::trace!(event = ?e, "kademlia")
            }
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let lo = build::is_loopback(endpoint.get_remote_address());
                *self.loopback.entry(peer_id).or_default() |= lo;
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.loopback.remove(&peer_id);
                tracing::debug!(peer = %peer_id, "disconnected");
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error, "listener error")
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                tracing::warn!(?addresses, ?reason, "listener closed");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_node::net::{self, NetConfig, NetHandle};
    use rendertrust_protocol::identity::NodeId;
    use rendertrust_protocol::wire::{CapacityAdvert, Role};
    use std::collections::BTreeSet;
    use tokio::sync::{oneshot, watch};

    fn loopback() -> Vec<Multiaddr> {
        vec![
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        ]
    }

    fn template(node: NodeId, roles: &[Role]) -> CapacityAdvert {
        CapacityAdvert {
            node,
            seq: 0,
            issued_at_ms: 0,
            refresh_ms: 10_000,
            wrap_key: [1; 32],
            roles: roles.to_vec(),
            cpu_cores: 4,
            cpu_model: "cpu".into(),
            ram_bytes: 1 << 30,
            disk_free_bytes: 1 << 30,
            gpus: vec![],
            runtimes: vec![],
            bench_mfpm: 1,
            running_tasks: 0,
            max_tasks: 1,
            price_per_task: 1,
            region: String::new(),
        }
    }

    async fn node(
        seed: u8,
        roles: &[Role],
        bootstrap: &Multiaddr,
    ) -> (NodeId, NetHandle, watch::Sender<CapacityAdvert>) {
        let key = NodeKey::from_secret_bytes(&[seed; 32]);
        let (tx, rx) = watch::channel(template(key.node_id(), roles));
        let config = NetConfig {
            listen: loopback(),
            bootstrap: vec![bootstrap.clone()],
            roles: roles.to_vec(),
            kad_server: true,
            advert_interval: Duration::from_secs(1),
            ..NetConfig::default()
        };
        let handle = net::spawn(&key, config, rx).await.unwrap().handle;
        (key.node_id(), handle, tx)
    }

    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    #[tokio::test]
    async fn nodes_meet_through_the_bootstrap_peer() {
        let key = NodeKey::from_secret_bytes(&[60; 32]);
        let config = BootstrapConfig {
            listen: loopback(),
            ..BootstrapConfig::default()
        };
        let server = Bootstrap::start(&key, config).await.unwrap();
        let addr = server.address().clone();
        let text = addr.to_string();
        assert!(
            text.starts_with("/ip4/127.0.0.1/udp/") && !text.contains("/udp/0/"),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("/quic-v1/p2p/{}", server.peer_id())),
            "{text}"
        );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));

        let (a, net_a, _ta) = node(61, &[Role::Worker, Role::Scheduler], &addr).await;
        let (b, net_b, _tb) = node(62, &[Role::Worker], &addr).await;
        let both = BTreeSet::from([a, b]);
        for net in [&net_a, &net_b] {
            eventually("both tables to list both nodes", || async {
                let got: BTreeSet<NodeId> = net
                    .capacity()
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.advert.node)
                    .collect();
                got == both
            })
            .await;
        }
        eventually(
            "the scheduler to be found through the bootstrap's DHT",
            || async { net_b.find_role(Role::Scheduler).await.unwrap() == vec![a] },
        )
        .await;

        net_a.shutdown().await.unwrap();
        net_b.shutdown().await.unwrap();
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn printable_address_replaces_the_wildcard() {
        let peer = NodeKey::from_secret_bytes(&[1; 32])
            .node_id()
            .to_peer_id()
            .unwrap();
        let configured: Multiaddr = "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap();
        let bound: Multiaddr = "/ip4/10.1.2.3/udp/4242/quic-v1".parse().unwrap();
        assert_eq!(
            printable_address(&configured, &bound, peer).to_string(),
            format!("/ip4/127.0.0.1/udp/4242/quic-v1/p2p/{peer}")
        );
        let configured: Multiaddr = "/ip4/192.0.2.7/tcp/4001".parse().unwrap();
        assert_eq!(
            printable_address(&configured, &configured, peer).to_string(),
            format!("/ip4/192.0.2.7/tcp/4001/p2p/{peer}")
        );
    }
}
