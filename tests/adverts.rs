//! Hostile capacity adverts against real node processes.
//!
//! A test peer (a bare gossipsub swarm in this process, built with the node's
//! own swarm helpers) joins a 3-node mesh of real `rendertrust` processes,
//! announces itself with a valid advert, then publishes a malformed frame, a
//! wrongly signed advert and an advert about another node signed with its own
//! key. Every node must reject and count them, no table may change, and the
//! sender's gossipsub score as seen by its direct peer must drop below zero.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, identify};
use rendertrust_e2e::protocol::codec;
use rendertrust_e2e::protocol::identity::NodeKey;
use rendertrust_e2e::protocol::signed::Signed;
use rendertrust_e2e::protocol::wire::{CapacityAdvert, MessageKind};
use rendertrust_e2e::*;
use rendertrust_node::net::swarm;
use rendertrust_node::net::topic::Topic;

#[derive(NetworkBehaviour)]
struct RawBehaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
}

#[derive(serde::Deserialize)]
struct PeerRow {
    peer_id: String,
    gossipsub_score: Option<f64>,
}

#[derive(serde::Deserialize)]
struct Peers {
    peers: Vec<PeerRow>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_adverts_are_rejected_counted_and_charged() {
    let mesh = Mesh::start(3, &[]).await;
    let n = 3;
    let mut ids = BTreeSet::new();
    for i in 0..n {
        ids.insert(peer_id(mesh.api(i)).await);
    }

    for i in 0..n {
        let api = mesh.api(i).clone();
        let want = ids.clone();
        eventually(
            &format!("node {i} to list the mesh"),
            Duration::from_secs(60),
            Duration::from_millis(300),
            || {
                let api = api.clone();
                let want = want.clone();
                async move {
                    let got: BTreeSet<String> = capacity_nodes(&api).await?.into_iter().collect();
                    if want.is_subset(&got) {
                        Ok(())
                    } else {
                        Err(format!("{got:?}"))
                    }
                }
            },
        )
        .await;
    }

    // The attacker dials node 0 directly.
    let status: StatusView = mesh.api(0).get("/v1/status").await.unwrap();
    let target: Multiaddr = status
        .listen_addrs
        .iter()
        .find(|a| a.contains("/127.0.0.1/"))
        .expect("node 0 listens on loopback")
        .parse()
        .unwrap();
    let raw_key = NodeKey::from_secret_bytes(&[0xa7; 32]);
    let mut raw = swarm::build_server_swarm(raw_key.to_libp2p().unwrap(), |k| {
        Ok(RawBehaviour {
            gossipsub: swarm::gossipsub_behaviour(k)?,
            identify: swarm::identify_behaviour(k.public()),
        })
    })
    .unwrap();
    let raw_peer = raw.local_peer_id().to_string();
    swarm::subscribe_live_topics(&mut raw.behaviour_mut().gossipsub).unwrap();
    swarm::listen_all(&mut raw, &["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()])
        .await
        .unwrap();
    raw.dial(target).unwrap();

    let good = Signed::sign(&raw_key, &worker_advert(raw_key.node_id(), 1))
        .unwrap()
        .into_bytes();
    let garbage = b"\x00\x01 definitely not a capacity advert".to_vec();
    let other = NodeKey::from_secret_bytes(&[0xb8; 32]);
    let mut bad_sig = Signed::sign(&other, &worker_advert(other.node_id(), 1))
        .unwrap()
        .into_bytes();
    bad_sig[40] ^= 0x01; // inside the signature
    // Signed by the attacker, but describing another node.
    let payload = codec::encode_payload(
        MessageKind::CapacityAdvert as u8,
        <CapacityAdvert as rendertrust_e2e::protocol::wire::WireMessage>::VERSION,
        &worker_advert(other.node_id(), 2),
    )
    .unwrap();
    let impostor = codec::assemble_frame(
        raw_key.node_id().as_bytes(),
        &raw_key.sign_raw(&payload),
        &payload,
    );

    let (bad_tx, mut bad_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        let topic = Topic::Capacity.hash();
        let mut sent_good = false;
        let mut sent_bad = false;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = raw.select_next_some() => {
                    if let SwarmEvent::Behaviour(RawBehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, .. })) = event {
                        // Forward nothing: this peer only injects.
                        raw.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, MessageAcceptance::Ignore);
                    }
                }
                _ = tick.tick(), if !sent_good => {
                    sent_good = raw.behaviour_mut().gossipsub.publish(topic.clone(), good.clone()).is_ok();
                }
                r = &mut bad_rx, if !sent_bad => {
                    r.unwrap();
                    sent_bad = true;
                    for frame in [&garbage, &bad_sig, &impostor] {
                        raw.behaviour_mut().gossipsub.publish(topic.clone(), frame.clone()).unwrap();
                    }
                }
            }
        }
    });

    // The valid advert reaches node 0 (the one connected to the attacker).
    let mut with_attacker = ids.clone();
    with_attacker.insert(raw_key.node_id().to_string());
    let api0 = mesh.api(0).clone();
    let want = with_attacker.clone();
    eventually(
        "node 0 to list the test peer",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let api0 = api0.clone();
            let want = want.clone();
            async move {
                let got: BTreeSet<String> = capacity_nodes(&api0).await?.into_iter().collect();
                if want.is_subset(&got) {
                    Ok(())
                } else {
                    Err(format!("{got:?}"))
                }
            }
        },
    )
    .await;
    let before: CapacityResponse = mesh.api(0).get("/v1/capacity").await.unwrap();
    bad_tx.send(()).unwrap();

    // Node 0 rejects and counts all three.
    let api0 = mesh.api(0).clone();
    let invalid_before = before.stats.invalid;
    eventually(
        "node 0 to count the 3 bad adverts",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let api0 = api0.clone();
            async move {
                let c: CapacityResponse =
                    api0.get("/v1/capacity").await.map_err(|e| e.to_string())?;
                if c.stats.invalid >= invalid_before + 3 {
                    Ok(())
                } else {
                    Err(format!("invalid = {}", c.stats.invalid))
                }
            }
        },
    )
    .await;

    // The sender's score as node 0 sees it drops below zero.
    let api0 = mesh.api(0).clone();
    let who = raw_peer.clone();
    let score = eventually(
        "the test peer's gossipsub score to drop below 0",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let api0 = api0.clone();
            let who = who.clone();
            async move {
                let p: Peers = api0.get("/v1/peers").await.map_err(|e| e.to_string())?;
                let s = p
                    .peers
                    .iter()
                    .find(|r| r.peer_id == who)
                    .and_then(|r| r.gossipsub_score);
                match s {
                    Some(s) if s < 0.0 => Ok(s),
                    other => Err(format!("score {other:?}")),
                }
            }
        },
    )
    .await;
    assert!(score < 0.0);

    // No table changed: no node learned of the forged node or lost a mesh
    // node, and node 0 still holds the attacker's own advert at seq 1.
    // (The attacker's valid entry may expire on its own: it advertises once.)
    for i in 0..n {
        let now: BTreeSet<String> = capacity_nodes(mesh.api(i))
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert!(
            !now.contains(&other.node_id().to_string()),
            "node {i} accepted a forged advert"
        );
        assert!(ids.is_subset(&now), "node {i} lost a mesh node: {now:?}");
    }
    let c: CapacityResponse = mesh.api(0).get("/v1/capacity").await.unwrap();
    if let Some(e) = c
        .nodes
        .iter()
        .find(|e| e.node == raw_key.node_id().to_string())
    {
        assert_eq!(e.seq, 1, "the attacker's entry changed");
    }

    driver.abort();
    mesh.stop().await;
}
