//! The credit ledger end to end, as real processes on loopback: a bootstrap
//! peer and four nodes in the devnet plan (nodes 0 and 1 schedulers, nodes 1
//! and 2 ledger peers, all workers; jobs are submitted from node 3), set up
//! like `rendertrust devnet` (genesis credits for every node, a mint
//! authority, 5-10 s epochs):
//!
//! * on the `evm` backend against a real `anvil` started here (the contract
//!   deployed with `rendertrust ledger deploy-contract`): after a job, every
//!   receipt verifies against the on-chain root with `rendertrust receipt
//!   verify`, and both ledger peers report equal balances, roots and state;
//! * forged receipts from a raw gossipsub peer (bad worker signature, no
//!   creator countersignature, a replay, a worker never assigned the task,
//!   inflated resource use) are rejected or pay nothing: no balance moves;
//! * SIGKILL a ledger peer mid-epoch, run a job while it is down, restart
//!   it: no receipt lost, none applied twice, its roots and balances match
//!   the other peer's; then on the `journal` backend a stored header altered
//!   on disk makes `receipt verify` say TAMPERED.
//!
//! The three tests share nothing but run one after another (each holds
//! [`SERIAL`]) to keep the 2-core CI machine responsive. Without anvil the
//! EVM test is skipped loudly (fails in CI). Gas per anchor is printed, never
//! asserted. `RENDERTRUST_KEEP_TEST_DIR=1` keeps the nodes' logs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, identify};
use rendertrust_e2e::protocol::identity::NodeKey;
use rendertrust_e2e::protocol::ledger::LedgerEvent;
use rendertrust_e2e::protocol::signed::Signed;
use rendertrust_e2e::protocol::wire::{Receipt, ReceiptAcceptance};
use rendertrust_e2e::*;
use rendertrust_node::devnet::{LedgerPlan, PreparedLedger, prepare_ledger};
use rendertrust_node::jobs::submit::{KindRequest, SubmitRequest, VerifyRequest};
use rendertrust_node::jobs::view::{JobDetail, JobState, SubmitView};
use rendertrust_node::ledger::view::{
    BalanceView, EpochsView, LeaderboardView, LedgerStatusView, ReceiptView,
};
use rendertrust_node::net::{swarm, topic::Topic, unix_now_ms};

/// One test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NODES: usize = 4;
const CREATOR: usize = 3;
const LEDGERS: [usize; 2] = [1, 2];
const FAST: &[&str] = &[
    "--advert-interval-secs",
    "2",
    "--capacity-ttl-secs",
    "6",
    "--heartbeat-timeout-secs",
    "6",
];
/// anvil's development keys 0-2 (public knowledge, never for real chains).
const ANVIL_KEYS: [&str; 3] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
];

fn builtin_job(frames: &str) -> SubmitRequest {
    SubmitRequest {
        kind: KindRequest::Builtin,
        scene: None,
        inputs: vec![],
        frames: Some(frames.into()),
        tiles: None,
        width: Some(160),
        height: Some(90),
        max_price_per_task: None,
        requirements: Default::default(),
        deadline_secs: None,
        verify: VerifyRequest {
            policy: Some("none".into()),
            ..Default::default()
        },
    }
}

fn args(base: &[&str], more: &[&str]) -> Vec<String> {
    base.iter().chain(more).map(|s| s.to_string()).collect()
}

/// Submits a builtin job from the creator, waits for it to finish, and
/// returns its receipt ids.
/// A mesh of [`NODES`] on ledger plan `plan` (prepared in a fresh dir),
/// every node with [`FAST`] timings: the mesh, what was prepared, and the
/// node arguments (to restart one with).
async fn ledger_mesh(plan: &LedgerPlan) -> (Mesh, PreparedLedger, Vec<String>) {
    let dir = Mesh::dir();
    let prepared = prepare_ledger(dir.path(), NODES, plan).unwrap();
    let config = prepared.config.display().to_string();
    let extra = args(FAST, &["--config", &config]);
    let mesh = Mesh::start_each(dir, NODES, |_| extra.clone()).await;
    wait_for_mesh(&mesh, NODES).await;
    (mesh, prepared, extra)
}

async fn run_job(mesh: &Mesh, frames: &str) -> Vec<String> {
    let api = mesh.api(CREATOR).clone();
    let v: SubmitView = api.post("/v1/jobs", &builtin_job(frames)).await.unwrap();
    let id = v.id.clone();
    let d = eventually(
        &format!("job {id} to finish"),
        Duration::from_secs(180),
        Duration::from_millis(500),
        || {
            let api = api.clone();
            let id = id.clone();
            async move {
                let d: JobDetail = api
                    .get(&format!("/v1/jobs/{id}"))
                    .await
                    .map_err(|e| e.to_string())?;
                match d.summary.state {
                    JobState::Done => Ok(d),
                    s if s.is_final() => panic!("job ended {s:?}: {:?}", d.summary.reason),
                    s => Err(format!("{s:?} {:?}", d.summary.counts)),
                }
            }
        },
    )
    .await;
    let receipts: Vec<String> = d
        .tasks
        .iter()
        .filter_map(|t| t.receipt_id.clone())
        .collect();
    assert_eq!(receipts.len(), d.tasks.len(), "a task without a receipt");
    receipts
}

async fn status(api: &ApiClient) -> Result<LedgerStatusView, String> {
    api.get("/v1/ledger/status")
        .await
        .map_err(|e| e.to_string())
}

/// Waits until both ledger peers hold every receipt as settled in a final
/// epoch, with equal roots for those epochs and equal state digests;
/// returns the ledgers' epoch views.
async fn wait_ledgers_agree(mesh: &Mesh, receipts: &[String]) -> Vec<EpochsView> {
    wait_ledgers(mesh, receipts, true).await
}

/// Both ledger peers settled every receipt with equal state digests; with
/// `roots`, also in equal, final epoch roots, none of them late.
async fn wait_ledgers(mesh: &Mesh, receipts: &[String], roots: bool) -> Vec<EpochsView> {
    let apis: Vec<ApiClient> = LEDGERS.iter().map(|i| mesh.api(*i).clone()).collect();
    let receipts = receipts.to_vec();
    eventually(
        if roots {
            "both ledger peers to settle every receipt in equal, final epoch roots"
        } else {
            "both ledger peers to settle every receipt with equal state digests"
        },
        Duration::from_secs(180),
        Duration::from_millis(700),
        || {
            let apis = apis.clone();
            let receipts = receipts.clone();
            async move {
                let mut views = Vec::new();
                let mut digests = BTreeSet::new();
                let mut statuses = Vec::new();
                let mut epochs_of: BTreeSet<u64> = BTreeSet::new();
                for api in &apis {
                    for r in &receipts {
                        let v: ReceiptView = api
                            .get(&format!("/v1/receipts/{r}"))
                            .await
                            .map_err(|e| e.to_string())?;
                        if v.status != "settled" || (roots && (!v.epoch_final || v.late)) {
                            return Err(format!("{} on ledger {}: {v:?}", &r[..12], v.ledger));
                        }
                        epochs_of.extend(v.epoch);
                    }
                    let s = status(api).await?;
                    digests.insert(s.digest.clone());
                    statuses.push(s);
                    views.push(
                        api.get::<EpochsView>("/v1/ledger/epochs?limit=1000")
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                if digests.len() != 1 {
                    // Each ledger's counters, to tell which events one lacks.
                    return Err(format!("state digests differ: {statuses:?}"));
                }
                if !roots {
                    return Ok(views);
                }
                for e in &epochs_of {
                    let roots: BTreeSet<Option<String>> = views
                        .iter()
                        .map(|v| {
                            v.epochs
                                .iter()
                                .find(|x| x.epoch == *e && x.is_final)
                                .and_then(|x| x.root.clone())
                        })
                        .collect();
                    if roots.len() != 1 || roots.contains(&None) {
                        return Err(format!("epoch {e}: roots {roots:?}"));
                    }
                }
                Ok(views)
            }
        },
    )
    .await
}

/// Every node's balance as each ledger peer reports it: equal on both.
async fn assert_equal_balances(mesh: &Mesh, nodes: &[String]) -> BTreeMap<String, i128> {
    let mut seen: Vec<BTreeMap<String, i128>> = Vec::new();
    for l in LEDGERS {
        let mut m = BTreeMap::new();
        for n in nodes {
            let b: BalanceView = mesh
                .api(l)
                .get(&format!("/v1/ledger/balances/{n}"))
                .await
                .unwrap();
            assert_eq!(b.ledger, peer_id(mesh.api(l)).await, "answered by itself");
            m.insert(n.clone(), b.balance);
        }
        seen.push(m);
    }
    assert_eq!(
        seen[0], seen[1],
        "the ledger peers report different balances"
    );
    // Credits are conserved: balances + escrow = minted.
    for l in LEDGERS {
        let s = status(mesh.api(l)).await.unwrap();
        let board: LeaderboardView = mesh
            .api(l)
            .get("/v1/ledger/leaderboard?limit=100")
            .await
            .unwrap();
        let total: i128 = board.rows.iter().map(|r| r.balance).sum();
        assert_eq!(
            total + s.escrowed,
            s.minted,
            "ledger {l}: credits not conserved"
        );
    }
    seen.remove(0)
}

/// `rendertrust receipt verify` (the real CLI) until its verdict settles.
async fn verify(api_url: &str, receipt: &str, extra: &[&str]) -> (CliRun, serde_json::Value) {
    let url = api_url.to_owned();
    let receipt = receipt.to_owned();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    eventually(
        &format!("receipt verify {} to settle", &receipt[..12]),
        Duration::from_secs(120),
        Duration::from_secs(1),
        || {
            let url = url.clone();
            let receipt = receipt.clone();
            let extra = extra.clone();
            async move {
                let mut a = vec!["receipt", "verify", &receipt, "--api", &url, "--json"];
                a.extend(extra.iter().map(String::as_str));
                let run = rendertrust_cli(&a).await;
                let v: serde_json::Value = serde_json::from_str(&run.stdout)
                    .map_err(|e| format!("{e}: {} {}", run.stdout, run.stderr))?;
                match v["verdict"].as_str() {
                    Some("NOT ANCHORED") | Some("UNKNOWN") => Err(v["reason"].to_string()),
                    _ => Ok((run, v)),
                }
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evm_anchored_receipts_verify_on_chain_and_ledgers_agree() {
    let _serial = SERIAL.lock().await;
    let Some(anvil) = start_anvil("the EVM ledger test (tests/ledger.rs)") else {
        return;
    };
    let dir = Mesh::dir();
    let key_files: Vec<String> = ANVIL_KEYS
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let p = dir.path().join(format!("anvil-{i}.key"));
            std::fs::write(&p, k).unwrap();
            p.display().to_string()
        })
        .collect();
    let deployed = rendertrust_cli(&[
        "ledger",
        "deploy-contract",
        "--rpc-url",
        &anvil.url,
        "--key-file",
        &key_files[0],
        "--json",
    ])
    .await;
    assert_eq!(
        deployed.code,
        Some(0),
        "deploy-contract: {}",
        deployed.stderr
    );
    let contract: serde_json::Value = serde_json::from_str(&deployed.stdout).unwrap();
    let contract = contract["address"].as_str().unwrap().to_owned();

    let plan = LedgerPlan {
        epoch_secs: 5,
        grace_secs: 1,
        reconcile_secs: 30,
        ..LedgerPlan::default()
    };
    let prepared = prepare_ledger(dir.path(), NODES, &plan).unwrap();
    let config = prepared.config.display().to_string();
    let mesh = Mesh::start_each(dir, NODES, |i| {
        // Each ledger anchors from its own account; the others never anchor.
        let key = &key_files[if LEDGERS.contains(&i) { i } else { 0 }];
        args(
            FAST,
            &[
                "--config",
                &config,
                "--anchor-backend",
                "evm",
                "--anchor-rpc-url",
                &anvil.url,
                "--anchor-contract",
                &contract,
                "--anchor-key-file",
                key,
            ],
        )
    })
    .await;
    wait_for_mesh(&mesh, NODES).await;

    let receipts = run_job(&mesh, "1-4").await;
    let views = wait_ledgers_agree(&mesh, &receipts).await;
    let balances = assert_equal_balances(&mesh, &prepared.nodes).await;
    eprintln!("balances after the job: {balances:?}");
    let creator = &prepared.nodes[CREATOR];
    assert!(
        balances[creator] < i128::from(plan.genesis),
        "the creator paid nothing"
    );

    // Every receipt verifies against the root on chain, read by the CLI
    // through the RPC URL (the proof comes through the creator's node, which
    // is not a ledger peer).
    let creator_url = mesh.nodes[CREATOR].as_ref().unwrap().url.clone();
    for r in &receipts {
        let (run, v) = verify(&creator_url, r, &["--rpc-url", &anvil.url]).await;
        assert_eq!(v["verdict"], "VALID", "{v}");
        assert_eq!(run.code, Some(0));
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.to_lowercase().contains(&contract.to_lowercase()),
            "{reason}"
        );
    }
    // Without an RPC URL the CLI cannot read the chain: it says so, and fails.
    let mut no_rpc = vec!["receipt", "verify", &receipts[0], "--api", &creator_url];
    no_rpc.push("--json");
    let run = rendertrust_cli(&no_rpc).await;
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["verdict"], "UNKNOWN", "{v}");
    assert_ne!(run.code, Some(0));

    // One transaction per anchored epoch, whatever its receipt count.
    for view in &views {
        for e in view.epochs.iter().filter(|e| e.count > 0) {
            if let Some(a) = e.anchor.as_ref().filter(|a| a.status == "anchored") {
                let r = a.reference.as_ref().unwrap();
                assert_eq!(r["backend"], "evm");
                eprintln!(
                    "ledger {} anchored epoch {} ({} receipts): block {}, gas {}",
                    view.ledger, e.epoch, e.count, r["block"], r["gas_used"]
                );
            }
        }
    }
    mesh.stop().await;
    drop(anvil);
}

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

fn identity(dir: &Path) -> NodeKey {
    rendertrust_node::keys::load_or_create_identity(dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_receipts_are_rejected_and_credit_nothing() {
    let _serial = SERIAL.lock().await;
    let (mesh, prepared, _) = ledger_mesh(&LedgerPlan::default()).await;

    // The attacker: a bare gossipsub peer connected to ledger node 2 only,
    // subscribed to the receipts topic (it sees genuine events go by).
    let target = 2;
    let s: StatusView = mesh.api(target).get("/v1/status").await.unwrap();
    let addr: Multiaddr = s
        .listen_addrs
        .iter()
        .find(|a| a.contains("/127.0.0.1/"))
        .unwrap()
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
    raw.behaviour_mut()
        .gossipsub
        .subscribe(&Topic::Receipts.ident())
        .unwrap();
    swarm::listen_all(&mut raw, &["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()])
        .await
        .unwrap();
    raw.dial(addr).unwrap();
    let seen: Arc<Mutex<Vec<LedgerEvent>>> = Arc::default();
    let (inject_tx, mut inject_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let seen_by_driver = seen.clone();
    let driver = tokio::spawn(async move {
        let topic = Topic::Receipts.hash();
        loop {
            tokio::select! {
                event = raw.select_next_some() => {
                    if let SwarmEvent::Behaviour(RawBehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message })) = event {
                        if let Ok(e) = LedgerEvent::decode(&message.data) {
                            seen_by_driver.lock().unwrap().push(e);
                        }
                        // Forward nothing: this peer only listens and injects.
                        raw.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, MessageAcceptance::Ignore);
                    }
                }
                Some(bytes) = inject_rx.recv() => {
                    if let Err(e) = raw.behaviour_mut().gossipsub.publish(topic.clone(), bytes) {
                        eprintln!("attacker publish: {e}");
                    }
                }
            }
        }
    });
    let api = mesh.api(target).clone();
    let who = raw_peer.clone();
    eventually(
        "the attacker to connect to node 2",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let api = api.clone();
            let who = who.clone();
            async move {
                let p: Peers = api.get("/v1/peers").await.map_err(|e| e.to_string())?;
                if p.peers.iter().any(|r| r.peer_id == who) {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            }
        },
    )
    .await;
    // A couple of heartbeats so node 2 grafts it into the topic mesh.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let receipts = run_job(&mesh, "1-4").await;
    let creator_id = prepared.nodes[CREATOR].clone();
    wait_ledgers_agree(&mesh, &receipts).await;
    // The attacker captured a genuine settle (forwarded by node 2), of a
    // task another node than the creator ran.
    let genuine = eventually(
        "the attacker to see a genuine settle of a worker other than the creator",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let seen = seen.clone();
            let receipts = receipts.clone();
            let creator_id = creator_id.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .find(|e| match e {
                        LedgerEvent::Settle { receipt, .. } => {
                            receipts.contains(&e.id().to_string())
                                && receipt.signer().to_string() != creator_id
                        }
                        _ => false,
                    })
                    .cloned()
                    .ok_or_else(|| "no such settle yet".to_owned())
            }
        },
    )
    .await;
    let LedgerEvent::Settle {
        receipt,
        acceptance,
    } = &genuine
    else {
        unreachable!()
    };
    let r: Receipt = receipt.verify().unwrap();
    let a: ReceiptAcceptance = acceptance.verify().unwrap();
    let worker_index = prepared
        .nodes
        .iter()
        .position(|n| *n == r.worker.to_string())
        .unwrap();
    let worker = identity(&mesh.data_dir(worker_index));
    let creator = identity(&mesh.data_dir(CREATOR));
    assert_eq!(creator.node_id(), r.creator);
    let accept = |key: &NodeKey, receipt: &Signed<Receipt>, at: u64| {
        Signed::sign(
            key,
            &ReceiptAcceptance {
                receipt_id: receipt.id().0,
                creator: key.node_id(),
                accepted_at_ms: at,
            },
        )
        .unwrap()
    };
    let settle =
        |receipt: Signed<Receipt>, acceptance: Signed<ReceiptAcceptance>| LedgerEvent::Settle {
            receipt,
            acceptance,
        };

    // (a) A new receipt whose worker signature is broken (one bit), though
    // the creator countersigned it. (A known receipt with a broken signature
    // is a replay: the ledger ignores it before checking signatures.)
    let fresh = Signed::sign(
        &worker,
        &Receipt {
            output_hash: [0xdd; 32],
            ..r.clone()
        },
    )
    .unwrap();
    let mut bytes = fresh.as_bytes().to_vec();
    bytes[40] ^= 0x01;
    let broken = Signed::<Receipt>::from_bytes(bytes).unwrap();
    let bad_sig = settle(broken.clone(), accept(&creator, &broken, a.accepted_at_ms));
    // (b) No creator countersignature: the worker "accepts" its own new receipt.
    let own = Signed::sign(
        &worker,
        &Receipt {
            output_hash: [0xbb; 32],
            ..r.clone()
        },
    )
    .unwrap();
    let self_accepted = settle(own.clone(), accept(&worker, &own, unix_now_ms()));
    // (c) A replay: the settled receipt again, countersigned again later.
    let replay = settle(
        receipt.clone(),
        accept(&creator, receipt, a.accepted_at_ms + 1000),
    );
    // (d) A worker never assigned the task, with the creator's countersignature.
    let stranger = Signed::sign(
        &raw_key,
        &Receipt {
            worker: raw_key.node_id(),
            ..r.clone()
        },
    )
    .unwrap();
    let never_assigned = settle(
        stranger.clone(),
        accept(&creator, &stranger, a.accepted_at_ms),
    );
    // (e) Inflated usage: far more CPU time than the wall clock allows.
    let wall = r.finished_at_ms - r.started_at_ms;
    let mut usage = r.usage;
    usage.cpu_ms = wall * 1000 + 1;
    let inflated_receipt = Signed::sign(
        &worker,
        &Receipt {
            usage,
            output_hash: [0xcc; 32],
            ..r.clone()
        },
    )
    .unwrap();
    let inflated = settle(
        inflated_receipt.clone(),
        accept(&creator, &inflated_receipt, a.accepted_at_ms),
    );

    let before: Vec<LedgerStatusView> = {
        let mut v = Vec::new();
        for l in LEDGERS {
            v.push(status(mesh.api(l)).await.unwrap());
        }
        v
    };
    let balances_before = assert_equal_balances(&mesh, &prepared.nodes).await;
    for e in [
        &bad_sig,
        &self_accepted,
        &replay,
        &never_assigned,
        &inflated,
        &genuine,
    ] {
        inject_tx.send(e.encode().unwrap()).await.unwrap();
    }

    // Node 2 rejects the three invalid ones, ignores the replay, admits the
    // stranger's receipt (well signed) without paying it.
    let api = mesh.api(target).clone();
    let base = before[1].clone();
    let after = eventually(
        "node 2 to reject, ignore and admit the forged settles",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let api = api.clone();
            let base = base.clone();
            async move {
                let s = status(&api).await?;
                if s.invalid >= base.invalid + 3
                    && s.duplicates > base.duplicates
                    && s.admitted > base.admitted
                {
                    Ok(s)
                } else {
                    Err(format!(
                        "invalid {} duplicates {} admitted {}",
                        s.invalid, s.duplicates, s.admitted
                    ))
                }
            }
        },
    )
    .await;
    assert_eq!(after.invalid, base.invalid + 3, "{after:?}");
    assert_eq!(after.admitted, base.admitted + 1, "{after:?}");

    // The stranger's receipt reaches node 1 too (it was well formed), and
    // both say why it pays nothing.
    let stranger_id = stranger.id().to_string();
    for l in LEDGERS {
        let api = mesh.api(l).clone();
        let id = stranger_id.clone();
        let v = eventually(
            &format!("ledger node {l} to hold the stranger's receipt"),
            Duration::from_secs(30),
            Duration::from_millis(300),
            || {
                let api = api.clone();
                let id = id.clone();
                async move {
                    let v: ReceiptView = api
                        .get(&format!("/v1/receipts/{id}"))
                        .await
                        .map_err(|e| e.to_string())?;
                    if v.status == "unknown" {
                        Err("unknown".into())
                    } else {
                        Ok(v)
                    }
                }
            },
        )
        .await;
        assert_eq!(v.status, "unpaid", "{v:?}");
        assert!(
            v.reason.as_deref().unwrap_or("").contains("never assigned"),
            "{v:?}"
        );
        assert_eq!(v.epoch, None, "an unmatched receipt is in no epoch");
    }
    // The rejected ones were never admitted anywhere.
    for forged in [&broken, &own, &inflated_receipt] {
        for l in LEDGERS {
            let v: ReceiptView = mesh
                .api(l)
                .get(&format!("/v1/receipts/{}", forged.id()))
                .await
                .unwrap();
            assert_eq!(v.status, "unknown", "ledger {l}: {v:?}");
        }
    }
    // No credit moved, on either ledger; their state is unchanged.
    let balances_after = assert_equal_balances(&mesh, &prepared.nodes).await;
    assert_eq!(balances_before, balances_after);
    for (i, l) in LEDGERS.iter().enumerate() {
        let s = status(mesh.api(*l)).await.unwrap();
        assert_eq!(
            s.digest, before[i].digest,
            "ledger {l}'s credit state changed"
        );
        assert_eq!(s.receipts, before[i].receipts, "ledger {l}");
    }
    // The genuine receipts still stand.
    for r in &receipts {
        let v: ReceiptView = mesh.api(1).get(&format!("/v1/receipts/{r}")).await.unwrap();
        assert_eq!(v.status, "settled");
    }
    // And the attacker's gossipsub score at node 2 went negative.
    let api = mesh.api(target).clone();
    eventually(
        "the attacker's score at node 2 to drop below 0",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let api = api.clone();
            let who = raw_peer.clone();
            async move {
                let p: Peers = api.get("/v1/peers").await.map_err(|e| e.to_string())?;
                match p
                    .peers
                    .iter()
                    .find(|r| r.peer_id == who)
                    .and_then(|r| r.gossipsub_score)
                {
                    Some(s) if s < 0.0 => Ok(()),
                    other => Err(format!("score {other:?}")),
                }
            }
        },
    )
    .await;
    driver.abort();
    mesh.stop().await;
}

/// A ledger down for a whole job and past its epochs' windows: those epochs
/// turned final without it, yet once back it fetches what it missed (late
/// catch-up, `protocol::rollup`): every receipt credited there too, late
/// (in no root of its own), and both ledgers' books equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_away_past_the_window_catches_up_its_books() {
    let _serial = SERIAL.lock().await;
    // A window no longer than an epoch, as with the defaults.
    let plan = LedgerPlan {
        epoch_secs: 5,
        grace_secs: 1,
        reconcile_secs: 5,
        ..LedgerPlan::default()
    };
    let (mut mesh, prepared, extra) = ledger_mesh(&plan).await;
    let away = 2;
    mesh.kill(away).await;
    let receipts = run_job(&mesh, "1-3").await;
    // Wait until every epoch of the job is final (by the window).
    let mut last_final_ms = 0;
    for r in &receipts {
        let v: ReceiptView = eventually(
            "the other ledger to settle the receipt",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let api = mesh.api(1).clone();
                let r = r.clone();
                async move {
                    let v: ReceiptView = api
                        .get(&format!("/v1/receipts/{r}"))
                        .await
                        .map_err(|e| e.to_string())?;
                    if v.epoch.is_some() {
                        Ok(v)
                    } else {
                        Err(format!("{v:?}"))
                    }
                }
            },
        )
        .await;
        let e = v.epoch.unwrap();
        last_final_ms = last_final_ms
            .max((e + 1) * plan.epoch_secs * 1000 + (plan.grace_secs + plan.reconcile_secs) * 1000);
    }
    tokio::time::sleep(Duration::from_millis(
        (last_final_ms + 2_000).saturating_sub(unix_now_ms()),
    ))
    .await;
    mesh.restart_with(away, &extra).await;

    wait_ledgers(&mesh, &receipts, false).await;
    assert_equal_balances(&mesh, &prepared.nodes).await;
    let s = status(mesh.api(away)).await.unwrap();
    assert_eq!(s.receipts, receipts.len() as u64, "{s:?}");
    assert_eq!(
        s.late,
        receipts.len() as u64,
        "every receipt late there: {s:?}"
    );
    assert!(s.reconciles >= 1, "{s:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ledger_loses_nothing_and_journal_tampering_is_detected() {
    let _serial = SERIAL.lock().await;
    let plan = LedgerPlan {
        epoch_secs: 10,
        grace_secs: 2,
        reconcile_secs: 60,
        ..LedgerPlan::default()
    };
    let (mut mesh, prepared, extra) = ledger_mesh(&plan).await;

    // Job A; then SIGKILL ledger node 2 while its epoch is still open.
    let victim = 2;
    let first = run_job(&mesh, "1-3").await;
    wait_receipts_settled(
        "node 2 to hold job A's receipts",
        mesh.api(victim),
        &first,
        Duration::from_secs(60),
    )
    .await;
    let held_before_kill = status(mesh.api(victim)).await.unwrap();
    // When job A's earliest epoch turns final without the victim.
    let mut first_epoch = u64::MAX;
    for r in &first {
        let v: ReceiptView = mesh.api(1).get(&format!("/v1/receipts/{r}")).await.unwrap();
        first_epoch = first_epoch.min(v.epoch.unwrap());
    }
    let final_ms =
        (first_epoch + 1) * plan.epoch_secs * 1000 + (plan.grace_secs + plan.reconcile_secs) * 1000;
    mesh.kill(victim).await;

    // Job B while it is down: it misses these events on gossip.
    let second = run_job(&mesh, "4-6").await;
    mesh.restart_with(victim, &extra).await;
    let restarted_ms = unix_now_ms();

    // It kept everything it had journaled, fetched what it missed, applied
    // nothing twice, and ends with the other peer's balances. Back (with its
    // warm-up, and a margin) before job A's epoch turned final, it also ends
    // with the other peer's roots, no receipt late. Back later (a loaded
    // machine), its epochs turned final on what it held: it still fetches
    // what it missed (late catch-up, `protocol::rollup`), late there.
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let in_window = restarted_ms + 15_000 < final_ms;
    if !in_window {
        eprintln!(
            "node {victim} came back {} ms after job A's epoch turned final: checking that its books caught up, not its roots",
            restarted_ms.saturating_sub(final_ms)
        );
    }
    wait_ledgers(&mesh, &all, in_window).await;
    assert_equal_balances(&mesh, &prepared.nodes).await;
    let s1 = status(mesh.api(1)).await.unwrap();
    let s2 = status(mesh.api(victim)).await.unwrap();
    assert!(s2.journaled >= held_before_kill.journaled, "{s2:?}");
    assert_eq!(s1.receipts, all.len() as u64, "{s1:?}");
    assert_eq!(s2.receipts, all.len() as u64, "{s2:?}");
    assert_eq!(s1.digest, s2.digest);
    if in_window {
        assert_eq!(s2.late, 0, "a receipt missed its root: {s2:?}");
    }

    // Journal tampering: verify a receipt (through the creator's node, not a
    // ledger), then alter the stored header of its epoch in the anchorer's
    // own store, and verify again.
    let creator_url = mesh.nodes[CREATOR].as_ref().unwrap().url.clone();
    let (_, v) = verify(&creator_url, &all[0], &[]).await;
    assert_eq!(v["verdict"], "VALID", "{v}");
    let epoch = v["epoch"].as_u64().unwrap();
    let anchorer = v["anchorer"].as_str().unwrap().to_owned();
    let at = prepared.nodes.iter().position(|n| *n == anchorer).unwrap();
    mesh.kill(at).await;
    {
        let store = rendertrust_node::store::Store::open(&mesh.data_dir(at)).unwrap();
        let tree = store.tree(rendertrust_node::anchor::journal::TREE).unwrap();
        let id: rendertrust_e2e::protocol::identity::NodeId = anchorer.parse().unwrap();
        let mut key = id.as_bytes().to_vec();
        key.extend_from_slice(&epoch.to_be_bytes());
        let mut value = tree
            .get(&key)
            .unwrap()
            .expect("the anchored header")
            .to_vec();
        // Flip one byte of the header body (its root or count).
        let n = value.len();
        value[n - 30] ^= 0x01;
        tree.insert(key, value).unwrap();
        store.flush().unwrap();
    }
    mesh.restart_with(at, &extra).await;
    // Verified through the anchorer's own node: its ledger gives the proof
    // and its journal the root (the other ledger may have anchored the
    // epoch too, in its own, intact journal).
    let anchorer_url = mesh.nodes[at].as_ref().unwrap().url.clone();
    let (run, v) = verify(&anchorer_url, &all[0], &[]).await;
    assert_eq!(v["verdict"], "TAMPERED", "{v}");
    assert_ne!(run.code, Some(0), "verify must fail on a tampered journal");
    eprintln!("{}", v["reason"]);
    mesh.stop().await;
}
