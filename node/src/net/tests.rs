//! Real swarms on loopback: no mocks. Waits are bounded polls, never timing asserts.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, identify};
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::signed::Signed;
use rendertrust_protocol::wire::{
    CapacityAdvert, GpuInfo, GpuVendor, Role, RuntimeInfo, RuntimeKind,
};
use tokio::sync::{oneshot, watch};

use super::guard::PeerGuard;
use super::*;

const WAIT: Duration = Duration::from_secs(30);

fn key(seed: u8) -> NodeKey {
    NodeKey::from_secret_bytes(&[seed; 32])
}

fn template(node: NodeId, roles: &[Role]) -> CapacityAdvert {
    CapacityAdvert {
        node,
        seq: 0,
        issued_at_ms: 0,
        refresh_ms: 10_000,
        wrap_key: [7; 32],
        roles: roles.to_vec(),
        cpu_cores: 8,
        cpu_model: "test cpu".into(),
        ram_bytes: 16 << 30,
        disk_free_bytes: 100 << 30,
        gpus: vec![GpuInfo {
            vendor: GpuVendor::Nvidia,
            model: "test gpu".into(),
            vram_bytes: 8 << 30,
        }],
        runtimes: vec![RuntimeInfo {
            kind: RuntimeKind::Builtin,
            version: "1".into(),
        }],
        bench_mfpm: 1000,
        running_tasks: 0,
        max_tasks: 2,
        price_per_task: 5,
        region: "test".into(),
    }
}

fn loopback() -> Vec<Multiaddr> {
    vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
    ]
}

struct TestNode {
    id: NodeId,
    net: NetHandle,
    task: tokio::task::JoinHandle<()>,
    inbound: tokio::sync::mpsc::Receiver<Inbound>,
    advert: watch::Sender<CapacityAdvert>,
}

impl TestNode {
    async fn start(seed: u8, roles: &[Role], bootstrap: Vec<Multiaddr>) -> TestNode {
        TestNode::start_with(
            seed,
            roles,
            bootstrap,
            guard::GuardConfig::default(),
            None,
            loopback(),
        )
        .await
    }

    async fn start_with(
        seed: u8,
        roles: &[Role],
        bootstrap: Vec<Multiaddr>,
        guard: guard::GuardConfig,
        bans: Option<sled::Tree>,
        listen: Vec<Multiaddr>,
    ) -> TestNode {
        TestNode::try_start_with(seed, roles, bootstrap, guard, bans, listen)
            .await
            .unwrap()
    }

    async fn try_start_with(
        seed: u8,
        roles: &[Role],
        bootstrap: Vec<Multiaddr>,
        guard: guard::GuardConfig,
        bans: Option<sled::Tree>,
        listen: Vec<Multiaddr>,
    ) -> Result<TestNode, NetError> {
        let k = key(seed);
        let (tx, rx) = watch::channel(template(k.node_id(), roles));
        let config = NetConfig {
            listen,
            bootstrap,
            roles: roles.to_vec(),
            kad_server: true,
            advert_interval: Duration::from_secs(1),
            guard,
            bans,
            ..NetConfig::default()
        };
        let spawned = spawn(&k, config, rx).await?;
        Ok(TestNode {
            id: k.node_id(),
            net: spawned.handle,
            task: spawned.task,
            inbound: spawned.inbound,
            advert: tx,
        })
    }

    async fn first_addr(&self) -> Multiaddr {
        let status = self.net.status().await.unwrap();
        status.listen_addrs[0].parse().unwrap()
    }

    async fn table_nodes(&self) -> BTreeSet<NodeId> {
        self.net
            .capacity()
            .await
            .unwrap()
            .iter()
            .map(|e| e.advert.node)
            .collect()
    }

    async fn stop(self) {
        self.net.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `WAIT`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn status_reports_bound_addresses_and_bad_bootstrap_is_refused() {
    let node = TestNode::start(40, &[Role::Worker], vec![]).await;
    let status = node.net.status().await.unwrap();
    assert_eq!(status.node_id, node.id);
    assert_eq!(status.roles, vec![Role::Worker]);
    assert_eq!(status.listen_addrs.len(), 2);
    assert!(
        status.listen_addrs[0].contains("/quic-v1/"),
        "QUIC first: {:?}",
        status.listen_addrs
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(
        json["node_id"],
        serde_json::Value::String(node.id.to_string())
    );
    for a in &status.listen_addrs {
        assert!(a.ends_with(&format!("/p2p/{}", status.peer_id)), "{a}");
        assert!(
            !a.contains("/udp/0/") && !a.contains("/tcp/0/"),
            "port not resolved: {a}"
        );
    }
    // A node lists itself, and re-advertises as soon as its template changes.
    assert_eq!(node.table_nodes().await, BTreeSet::from([node.id]));
    let first_seq = node.net.capacity().await.unwrap()[0].advert.seq;
    node.advert.send_modify(|t| t.running_tasks = 2);
    wait_for("the changed advert to be applied", || async {
        let entry = node.net.capacity().await.unwrap().pop()?;
        (entry.advert.running_tasks == 2 && entry.advert.seq > first_seq).then_some(())
    })
    .await;
    node.stop().await;

    let k = key(41);
    let (_tx, rx) = watch::channel(template(k.node_id(), &[]));
    let config = NetConfig {
        listen: loopback(),
        bootstrap: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        ..NetConfig::default()
    };
    assert!(matches!(
        spawn(&k, config, rx).await,
        Err(NetError::BootstrapAddr(_))
    ));
}

#[tokio::test]
async fn mesh_gossips_capacity_and_finds_roles() {
    let boot = TestNode::start(1, &[], vec![]).await;
    let boot_addr = boot.first_addr().await;
    let schedulers = [Role::Worker, Role::Scheduler];
    let n1 = TestNode::start(2, &schedulers, vec![boot_addr.clone()]).await;
    let n2 = TestNode::start(3, &schedulers, vec![boot_addr.clone()]).await;
    let n3 = TestNode::start(4, &[Role::Worker, Role::Ledger], vec![boot_addr]).await;
    let nodes = [&boot, &n1, &n2, &n3];
    let all: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();

    for node in nodes {
        wait_for("every table to list every node", || async {
            (node.table_nodes().await == all).then_some(())
        })
        .await;
    }

    let expected: Vec<NodeId> = BTreeSet::from([n1.id, n2.id]).into_iter().collect();
    for node in nodes {
        wait_for("find_role(scheduler) to return the schedulers", || async {
            (node.net.find_role(Role::Scheduler).await.unwrap() == expected).then_some(())
        })
        .await;
    }
    wait_for("find_role(ledger) to return the ledger", || async {
        (n1.net.find_role(Role::Ledger).await.unwrap() == vec![n3.id]).then_some(())
    })
    .await;

    let peers = n1.net.peers().await.unwrap();
    let boot_peer = boot.id.to_string();
    let b = peers.iter().find(|p| p.peer_id == boot_peer).unwrap();
    assert!(b.connected);
    assert!(
        b.agent_version
            .as_deref()
            .is_some_and(|a| a.starts_with("rendertrust/"))
    );
    let stats = n1.net.capacity_stats().await.unwrap();
    assert_eq!(stats.invalid, 0);

    for node in [boot, n1, n2, n3] {
        node.stop().await;
    }
}

/// Requests reach the other node's services with the sender authenticated,
/// answers come back, oversized requests are refused, a request nobody
/// answers fails cleanly, and gossip on a service-validated topic waits for
/// the services' verdict before it spreads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_service_validated_gossip() {
    let boot = TestNode::start(60, &[], vec![]).await;
    let boot_addr = boot.first_addr().await;
    let a = TestNode::start(61, &[Role::Worker], vec![boot_addr.clone()]).await;
    let mut b = TestNode::start(62, &[Role::Worker], vec![boot_addr.clone()]).await;
    let mut c = TestNode::start(63, &[Role::Ledger], vec![boot_addr]).await;
    let all: BTreeSet<NodeId> = [boot.id, a.id, b.id, c.id].into_iter().collect();
    for node in [&a, &b, &c] {
        wait_for("tables to fill", || async {
            (node.table_nodes().await == all).then_some(())
        })
        .await;
    }

    // b echoes requests, reversed, and names the sender it saw.
    let b_id = b.id;
    let mut b_inbound = std::mem::replace(&mut b.inbound, tokio::sync::mpsc::channel(1).1);
    let echo = tokio::spawn(async move {
        while let Some(Inbound::Request(r)) = b_inbound.recv().await {
            if r.bytes == b"silence" {
                drop(r.reply);
                continue;
            }
            let mut answer = r.peer.as_bytes().to_vec();
            answer.extend(r.bytes.iter().rev());
            let _ = r.reply.send(answer);
        }
    });
    for service in [Service::Rpc, Service::Content] {
        let answer = a
            .net
            .request(b_id, service, b"hello".to_vec())
            .await
            .unwrap();
        assert_eq!(&answer[..32], a.id.as_bytes());
        assert_eq!(&answer[32..], b"olleh");
    }
    let too_big = vec![0u8; reqres::MAX_CONTENT_REQUEST + 1];
    assert!(
        a.net
            .request(b_id, Service::Content, too_big)
            .await
            .is_err()
    );
    let silent = a.net.request(b_id, Service::Rpc, b"silence".to_vec()).await;
    assert!(
        matches!(silent, Err(NetError::Request { .. })),
        "{silent:?}"
    );
    assert!(a.net.request(a.id, Service::Rpc, vec![1]).await.is_err());

    // Gossip on the receipts topic: c subscribes and validates; a publishes.
    c.net.subscribe(Topic::Receipts).await.unwrap();
    a.net.subscribe(Topic::Receipts).await.unwrap();
    // Publishing fails until gossipsub knows a subscribed peer: retry, bounded.
    let deadline = tokio::time::Instant::now() + WAIT;
    let got = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "c never received a's gossip"
        );
        let _ = a.net.publish(Topic::Receipts, b"receipt 1".to_vec()).await;
        if let Ok(Some(Inbound::Gossip(g))) =
            tokio::time::timeout(Duration::from_millis(300), c.inbound.recv()).await
        {
            break g;
        }
    };
    assert_eq!(got.topic, Topic::Receipts);
    assert_eq!(got.data, b"receipt 1");
    c.net
        .validate(got.id, got.source, Verdict::Accept)
        .await
        .unwrap();

    echo.abort();
    for node in [boot, a, b, c] {
        node.stop().await;
    }
}

/// A bare gossipsub peer, to send what no RenderTrust node would.
#[derive(NetworkBehaviour)]
struct RawBehaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
}

#[tokio::test]
async fn invalid_adverts_are_rejected_and_charged_to_the_sender() {
    let receiver = TestNode::start(20, &[Role::Worker], vec![]).await;
    let receiver_addr = receiver.first_addr().await;
    let receiver_peer = receiver.id.to_peer_id().unwrap();

    let raw_key = key(21);
    let mut raw = swarm::build_server_swarm(raw_key.to_libp2p().unwrap(), |k| {
        Ok(RawBehaviour {
            gossipsub: swarm::gossipsub_behaviour(k)?,
            identify: swarm::identify_behaviour(k.public()),
        })
    })
    .unwrap();
    let raw_peer = *raw.local_peer_id();
    swarm::subscribe_live_topics(&mut raw.behaviour_mut().gossipsub).unwrap();
    swarm::listen_all(&mut raw, &loopback()[..1]).await.unwrap();
    raw.dial(receiver_addr).unwrap();

    // A valid advert by the raw peer's own key, then two bad frames.
    let now = unix_now_ms();
    let mut good = template(raw_key.node_id(), &[Role::Worker]);
    good.seq = 1;
    good.issued_at_ms = now;
    let good = Signed::sign(&raw_key, &good).unwrap().into_bytes();
    let garbage = b"definitely not a capacity advert".to_vec();
    let other = key(22);
    let mut forged = template(other.node_id(), &[Role::Worker]);
    forged.seq = 1;
    forged.issued_at_ms = now;
    let mut forged = Signed::sign(&other, &forged).unwrap().into_bytes();
    forged[40] ^= 0x01; // inside the signature

    let (send_bad_tx, mut send_bad_rx) = oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        let topic = Topic::Capacity.hash();
        let mut subscribed = false;
        let mut send_bad = false;
        loop {
            tokio::select! {
                event = raw.select_next_some() => match event {
                    SwarmEvent::Behaviour(RawBehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic: t }))
                        if peer_id == receiver_peer && t == topic && !subscribed =>
                    {
                        subscribed = true;
                        raw.behaviour_mut().gossipsub.publish(topic.clone(), good.clone()).unwrap();
                    }
                    SwarmEvent::Behaviour(RawBehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, .. })) => {
                        raw.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, MessageAcceptance::Ignore);
                    }
                    _ => {}
                },
                r = &mut send_bad_rx, if !send_bad => {
                    r.unwrap();
                    send_bad = true;
                    raw.behaviour_mut().gossipsub.publish(topic.clone(), garbage.clone()).unwrap();
                    raw.behaviour_mut().gossipsub.publish(topic.clone(), forged.clone()).unwrap();
                }
            }
        }
    });

    let expected = BTreeSet::from([receiver.id, raw_key.node_id()]);
    wait_for("the valid advert to be applied", || async {
        (receiver.table_nodes().await == expected).then_some(())
    })
    .await;
    let before = receiver.net.capacity_stats().await.unwrap();
    send_bad_tx.send(()).unwrap();

    let after = wait_for("both bad frames to be counted", || async {
        let s = receiver.net.capacity_stats().await.unwrap();
        (s.invalid >= before.invalid + 2).then_some(s)
    })
    .await;
    assert!(after.invalid >= before.invalid + 2);
    assert_eq!(
        receiver.table_nodes().await,
        expected,
        "the table must not change"
    );

    let raw_peer = raw_peer.to_string();
    let score = wait_for("the sender's score to drop below zero", || async {
        let peers = receiver.net.peers().await.unwrap();
        let score = peers
            .iter()
            .find(|p| p.peer_id == raw_peer)?
            .gossipsub_score?;
        (score < 0.0).then_some(score)
    })
    .await;
    assert!(score < 0.0);

    driver.abort();
    receiver.stop().await;
}

/// Answers every request with `ok` until the node stops; reports requests
/// that say `malformed` as malformed.
fn answer_ok(node: &mut TestNode) -> tokio::task::JoinHandle<()> {
    let mut inbound = std::mem::replace(&mut node.inbound, tokio::sync::mpsc::channel(1).1);
    let net = node.net.clone();
    tokio::spawn(async move {
        while let Some(msg) = inbound.recv().await {
            if let Inbound::Request(r) = msg {
                if r.bytes == b"malformed" {
                    let _ = net.offence(r.peer, guard::Offence::Malformed).await;
                }
                let _ = r.reply.send(b"ok".to_vec());
            }
        }
    })
}

fn is_busy(answer: &[u8]) -> bool {
    use rendertrust_protocol::rpc::{ErrorCode, RpcResponse};
    matches!(
        RpcResponse::decode(answer),
        Ok(RpcResponse::Error {
            code: ErrorCode::Busy,
            ..
        })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_throttled_and_others_are_still_answered() {
    let guard = guard::GuardConfig {
        rpc: guard::Rate {
            burst: 20,
            per_sec: 5,
        },
        // No ban here: this test is about throttling.
        ban_points: u64::MAX / 2000,
        ..guard::GuardConfig::default()
    };
    let mut a = TestNode::start_with(80, &[Role::Worker], vec![], guard, None, loopback()).await;
    let a_addr = a.first_addr().await;
    let a_id = a.id;
    let responder = answer_ok(&mut a);
    let flooder = TestNode::start(81, &[Role::Worker], vec![a_addr.clone()]).await;
    let polite = TestNode::start(82, &[Role::Worker], vec![a_addr]).await;
    for n in [&flooder, &polite] {
        wait_for("a connection to a", || async {
            n.net.request(a_id, Service::Rpc, b"hi".to_vec()).await.ok()
        })
        .await;
    }

    // 200 requests at once from the flooder; the polite peer asks meanwhile.
    let flood = {
        let net = flooder.net.clone();
        tokio::spawn(async move {
            let asks = (0..200).map(|_| net.request(a_id, Service::Rpc, b"x".to_vec()));
            futures::future::join_all(asks).await
        })
    };
    let mut polite_answers = Vec::new();
    for _ in 0..5 {
        polite_answers.push(polite.net.request(a_id, Service::Rpc, b"y".to_vec()).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flood = flood.await.unwrap();
    let ok = flood
        .iter()
        .filter(|r| r.as_deref().is_ok_and(|b| b == b"ok"))
        .count();
    let busy = flood
        .iter()
        .filter(|r| r.as_deref().is_ok_and(is_busy))
        .count();
    assert!(busy > 0, "the flood was not throttled ({ok} answered)");
    // The burst, and what refilled while the flood lasted (5 a second).
    assert!(ok < 100, "{ok} of 200 flooded requests were answered");
    for r in &polite_answers {
        assert_eq!(
            r.as_deref().ok(),
            Some(&b"ok"[..]),
            "the polite peer was refused: {r:?}"
        );
    }
    // The refusals are counted against the flooder only.
    let peers = a.net.peers().await.unwrap();
    let of = |id: NodeId| {
        let peer = id.to_peer_id().unwrap().to_string();
        peers.iter().find(|p| p.peer_id == peer).unwrap().hygiene
    };
    assert_eq!(of(flooder.id).throttled, busy as u64);
    assert_eq!(of(polite.id).throttled, 0);

    responder.abort();
    for node in [a, flooder, polite] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_survives_a_restart_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let bans = db.open_tree("bans").unwrap();
    let guard = guard::GuardConfig {
        ban_points: 15,
        ban_ms: 6_000,
        ..guard::GuardConfig::default()
    };
    // QUIC only, so the restarted node can listen on the same port at once.
    let quic: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()];
    let mut a = TestNode::start_with(
        85,
        &[Role::Worker],
        vec![],
        guard.clone(),
        Some(bans.clone()),
        quic,
    )
    .await;
    let a_addr = a.first_addr().await;
    let mut same_port = a_addr.clone();
    same_port.pop();
    let a_id = a.id;
    let responder = answer_ok(&mut a);
    let b = TestNode::start(86, &[Role::Worker], vec![a_addr]).await;
    wait_for("b to reach a", || async {
        b.net.request(a_id, Service::Rpc, b"hi".to_vec()).await.ok()
    })
    .await;
    // Two malformed requests (10 points each, minus what drains) ban b.
    for _ in 0..2 {
        let _ = b
            .net
            .request(a_id, Service::Rpc, b"malformed".to_vec())
            .await;
    }
    let b_peer = b.id.to_peer_id().unwrap();
    wait_for("a to ban b", || async { (!bans.is_empty()).then_some(()) }).await;
    assert!(
        b.net
            .request(a_id, Service::Rpc, b"hi".to_vec())
            .await
            .is_err(),
        "a banned peer was answered"
    );

    // Restart a on the same store: the ban holds, and b's requests fail.
    responder.abort();
    a.stop().await;
    // The old socket may linger for a moment: retry the same port, bounded.
    let mut tries = 0;
    let mut a = loop {
        match TestNode::try_start_with(
            85,
            &[Role::Worker],
            vec![],
            guard.clone(),
            Some(bans.clone()),
            vec![same_port.clone()],
        )
        .await
        {
            Ok(a) => break a,
            Err(e) => {
                tries += 1;
                assert!(tries < 50, "cannot listen on {same_port} again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let responder = answer_ok(&mut a);
    let banned_until = PeerGuard::new(
        guard::GuardConfig::default(),
        Some(bans.clone()),
        unix_now_ms(),
    )
    .bans()
    .find(|(p, _)| **p == b_peer)
    .map(|(_, u)| *u)
    .expect("the ban is stored");
    let refused = b.net.request(a_id, Service::Rpc, b"hi".to_vec()).await;
    if unix_now_ms() < banned_until {
        assert!(
            refused.is_err(),
            "a restarted node answered a banned peer: {refused:?}"
        );
    }
    // After the expiry b is answered again.
    wait_for("the ban to expire", || async {
        b.net
            .request(a_id, Service::Rpc, b"hi".to_vec())
            .await
            .ok()
            .filter(|_| unix_now_ms() >= banned_until)
    })
    .await;
    assert!(
        bans.is_empty(),
        "the expired ban was removed from the store"
    );
    responder.abort();
    for node in [a, b] {
        node.stop().await;
    }
}

// ---- chunk streams (`jobs::transfer`): real swarms, real stores ----

mod chunk_streams {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    use rendertrust_protocol::content::{Manifest, ManifestBuilder};
    use rendertrust_protocol::rpc::{
        CHUNK_FRAME_HEADER, ChunkFrameHeader, ChunkStatus, ChunkStreamRequest, MAX_STREAM_REQUEST,
    };

    use super::*;
    use crate::content::{ContentConfig, ContentStore, FetchError, FetchOptions, fetch_content};
    use crate::jobs::transfer::{self, PeerSource};

    const CHUNK: usize = 4096;

    /// `n` incompressible 4 KiB chunks (the last one short) and their manifest.
    fn content(n: usize, seed: u8) -> (Manifest, Vec<Vec<u8>>) {
        let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
        let len = n * CHUNK - 100;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut b = ManifestBuilder::new(CHUNK as u32).unwrap();
        b.update(&bytes);
        (
            b.finish(),
            bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect(),
        )
    }

    fn store(dir: &tempfile::TempDir, name: &str) -> ContentStore {
        ContentStore::open(&dir.path().join(name), ContentConfig::default()).unwrap()
    }

    /// Holds `manifest` and the chunks whose index passes `keep`.
    fn hold(store: &ContentStore, m: &Manifest, chunks: &[Vec<u8>], keep: impl Fn(u32) -> bool) {
        let id = store.put_manifest(m).unwrap();
        for (i, c) in chunks.iter().enumerate() {
            let i = i as u32;
            if keep(i) {
                store.put_chunk(&id, i, c).unwrap();
            }
        }
    }

    /// Answers `node`'s content requests (manifests) from `store`.
    fn serve_requests(node: &mut TestNode, store: ContentStore) {
        let mut inbound = std::mem::replace(&mut node.inbound, tokio::sync::mpsc::channel(1).1);
        let net = node.net.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                if let Inbound::Request(r) = msg {
                    tokio::spawn(transfer::serve(store.clone(), net.clone(), r));
                }
            }
        });
    }

    /// Serves `store` from `node`: manifests on the content service, chunks
    /// on chunk streams.
    fn serve(node: &mut TestNode, store: ContentStore) {
        serve_requests(node, store.clone());
        let incoming = node.net.accept_chunk_streams().unwrap();
        tokio::spawn(transfer::serve_chunk_streams(
            store,
            node.net.clone(),
            incoming,
        ));
    }

    /// `holder` as a chunk source, seen from `fetcher`.
    fn source(fetcher: &TestNode, holder: &TestNode) -> PeerSource {
        PeerSource {
            net: fetcher.net.clone(),
            peer: holder.id,
        }
    }

    async fn pair(seed: u8) -> (TestNode, TestNode) {
        let a = TestNode::start(seed, &[Role::Worker], vec![]).await;
        let mut addr = a.first_addr().await;
        addr.push(libp2p::multiaddr::Protocol::P2p(a.id.to_peer_id().unwrap()));
        let b = TestNode::start(seed + 1, &[Role::Worker], vec![addr]).await;
        (a, b)
    }

    fn quick() -> FetchOptions {
        FetchOptions {
            max_attempts: 3,
            retry_delay: Duration::from_millis(10),
            ..FetchOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_spans_several_streams_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, b) = pair(61).await;
        let (m, chunks) = content(150, 1);
        let (store_a, store_b) = (store(&dir, "a"), store(&dir, "b"));
        hold(&store_a, &m, &chunks, |_| true);
        // B already holds the first ten: only the rest travel.
        hold(&store_b, &m, &chunks, |i| i < 10);
        serve(&mut a, store_a);
        assert!(
            a.net.accept_chunk_streams().is_err(),
            "one consumer of chunk streams"
        );
        let source = source(&b, &a);
        let report = fetch_content(&store_b, m.id(), &source, &quick(), |_| {})
            .await
            .unwrap();
        assert_eq!(report.chunks_fetched, 140, "{report:?}");
        assert_eq!(report.chunks_cached, 10);
        assert_eq!(report.retries, 0);
        assert!(store_b.has_complete(&m.id()));
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(
                &store_b.get_chunk(&m.id(), i as u32).unwrap(),
                c,
                "chunk {i}"
            );
        }
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_the_holder_lacks_fail_the_fetch_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, b) = pair(63).await;
        let (m, chunks) = content(70, 2);
        let (store_a, store_b) = (store(&dir, "a"), store(&dir, "b"));
        hold(&store_a, &m, &chunks, |i| i != 65);
        serve(&mut a, store_a);
        let source = source(&b, &a);
        let err = fetch_content(&store_b, m.id(), &source, &quick(), |_| {})
            .await
            .unwrap_err();
        match &err {
            FetchError::Chunk {
                index, attempts, ..
            } => assert_eq!((*index, *attempts), (65, 3), "{err}"),
            other => panic!("expected the missing chunk named, got {other}"),
        }
        assert!(err.to_string().contains("does not hold chunk 65"), "{err}");
        // Chunks stored before the failure stay (a later fetch resumes);
        // the one the holder lacks is not among them.
        let missing = store_b.missing_chunks(&m.id()).unwrap();
        assert!(missing.contains(&65), "{missing:?}");
        assert!(missing.len() < 70, "{missing:?}");
        a.stop().await;
        b.stop().await;
    }

    /// A holder that lies on its chunk streams, a different way per stream.
    async fn lie(mut incoming: libp2p_stream::IncomingStreams, m: Manifest, chunks: Vec<Vec<u8>>) {
        let mut n = 0usize;
        while let Some((_, mut stream)) = incoming.next().await {
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await.unwrap();
            let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
            stream.read_exact(&mut req).await.unwrap();
            let req = ChunkStreamRequest::decode(&req).unwrap();
            let first = req.indices[0];
            let mut bytes = chunks[first as usize].clone();
            let expected = m.chunk_len(first).unwrap();
            let header = match n % 3 {
                // Another chunk than the one due.
                0 => ChunkFrameHeader {
                    index: first + 1,
                    status: ChunkStatus::Chunk,
                    len: expected,
                },
                // More bytes than the manifest allows.
                1 => {
                    bytes.push(0);
                    ChunkFrameHeader {
                        index: first,
                        status: ChunkStatus::Chunk,
                        len: expected + 1,
                    }
                }
                // The right length, wrong bytes.
                _ => {
                    bytes[7] ^= 1;
                    ChunkFrameHeader {
                        index: first,
                        status: ChunkStatus::Chunk,
                        len: expected,
                    }
                }
            };
            n += 1;
            let _ = stream.write_all(&header.to_bytes()).await;
            let _ = stream.write_all(&bytes).await;
            let _ = stream.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lies_on_a_chunk_stream_are_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, b) = pair(65).await;
        let (m, chunks) = content(5, 3);
        let (store_a, store_b) = (store(&dir, "a"), store(&dir, "b"));
        // A holds the manifest (served honestly) and lies about the chunks.
        store_a.put_manifest(&m).unwrap();
        serve_requests(&mut a, store_a);
        tokio::spawn(lie(
            a.net.accept_chunk_streams().unwrap(),
            m.clone(),
            chunks,
        ));
        let source = source(&b, &a);
        let err = fetch_content(&store_b, m.id(), &source, &quick(), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Chunk { attempts: 3, .. }),
            "{err}"
        );
        assert_eq!(
            store_b.missing_chunks(&m.id()).unwrap(),
            vec![0, 1, 2, 3, 4],
            "nothing a liar sent is stored"
        );
        a.stop().await;
        b.stop().await;
    }

    /// Opens a chunk stream from `b` to `a`, sends `bytes`, and returns what
    /// comes back before the stream ends.
    async fn exchange(b: &TestNode, a: NodeId, bytes: &[u8]) -> Vec<u8> {
        let mut s = tokio::time::timeout(WAIT, b.net.open_chunk_stream(a))
            .await
            .expect("a chunk stream opens")
            .unwrap();
        tokio::time::timeout(WAIT, async {
            s.write_all(bytes).await.unwrap();
            s.flush().await.unwrap();
        })
        .await
        .expect("the request is sent");
        let mut back = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut back))
            .await
            .expect("the holder ends the stream");
        back
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_chunk_requests_end_the_stream_unanswered() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = pair(67).await;
        let (m, chunks) = content(3, 4);
        let store_a = store(&dir, "a");
        hold(&store_a, &m, &chunks, |_| true);
        tokio::spawn(transfer::serve_chunk_streams(
            store_a,
            a.net.clone(),
            a.net.accept_chunk_streams().unwrap(),
        ));
        // Too long a request: refused before it is read.
        let huge = u32::try_from(MAX_STREAM_REQUEST + 1).unwrap().to_be_bytes();
        assert!(exchange(&b, a.id, &huge).await.is_empty());
        // A request that does not decode.
        let mut junk = 5u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xff; 5]);
        assert!(exchange(&b, a.id, &junk).await.is_empty());
        // A good request is answered: header and bytes of chunk 2, then the
        // "not found" header of an index past the end.
        let req = ChunkStreamRequest {
            id: m.id(),
            indices: vec![2, 9],
        }
        .encode()
        .unwrap();
        let mut framed = (req.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&req);
        let back = exchange(&b, a.id, &framed).await;
        let (head, rest) = back.split_at(CHUNK_FRAME_HEADER);
        let h = ChunkFrameHeader::from_bytes(head.try_into().unwrap()).unwrap();
        assert_eq!((h.index, h.status), (2, ChunkStatus::Chunk));
        let (body, rest) = rest.split_at(h.len as usize);
        assert_eq!(body, &chunks[2][..]);
        let h = ChunkFrameHeader::from_bytes(rest.try_into().unwrap()).unwrap();
        assert_eq!((h.index, h.status, h.len), (9, ChunkStatus::NotFound, 0));
        a.stop().await;
        b.stop().await;
    }
}
