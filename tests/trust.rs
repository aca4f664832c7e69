//! Trust end to end (issue 7), as real processes on loopback: a bootstrap
//! peer and eight nodes in the devnet plan (nodes 0 and 1 schedulers, nodes
//! 1 and 2 ledger peers, all workers; the job is submitted from node 7),
//! with two cheating workers: node 5 `wrong-output` (inverts its frames and
//! signs them) and node 6 `lazy` (returns blank frames). Two different lies,
//! so the cheaters never agree with each other (two identical liars are
//! colluders, which quorum does not cover: docs/trust.md).
//!
//! A 48-frame builtin job with quorum verification (k 2, half the tasks
//! sampled; every node starts on probation, so in practice every task is
//! verified). Checked:
//!
//! * every accepted frame is byte-identical to a local render (the code of
//!   `rendertrust render`), and no accepted frame is a cheater's;
//! * each cheater's caught results (failed outcomes in the job's scheduler's
//!   reputation book) are at least the sampled fraction of the results it
//!   sent (counted in its log), and at least one;
//! * cheaters earn nothing: every receipt of the job is settled on a ledger
//!   peer, and the cheaters' balances are still their genesis credits;
//! * in the scheduler's book, each cheater scores below every honest worker.
//!
//! Needs the binaries built with the test-only feature
//! `dishonest-test-hooks` (`scripts/test.sh` does it:
//! `cargo build --workspace --bins --features rendertrust-node/dishonest-test-hooks`).
//! About 45 s on the 2-core build machine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rendertrust_e2e::*;
use rendertrust_node::devnet::{GENESIS_CREDITS, LedgerPlan, prepare_ledger};
use rendertrust_node::jobs::reputation::ReputationView;
use rendertrust_node::jobs::submit::{KindRequest, SubmitRequest, VerifyRequest};
use rendertrust_node::jobs::view::{JobDetail, JobState, ResultsView, SubmitView};
use rendertrust_node::ledger::view::BalanceView;
use rendertrust_node::runtime::builtin;
use rendertrust_protocol::task::Rect;

const NODES: usize = 8;
const CREATOR: usize = 7;
const WRONG: usize = 5;
const LAZY: usize = 6;
const CHEATERS: [usize; 2] = [WRONG, LAZY];
const LEDGER: usize = 1;
const FRAMES: u32 = 48;
const SAMPLE_PERMILLE: u16 = 500;
const W: u32 = 64;
const H: u32 = 36;
const FAST: &[&str] = &[
    "--advert-interval-secs",
    "2",
    "--capacity-ttl-secs",
    "6",
    "--heartbeat-timeout-secs",
    "6",
];

/// Fails with instructions when the binary was built without the feature.
async fn require_dishonest_hooks() {
    let help = rendertrust_cli(&["node", "start", "--help"]).await;
    assert!(
        help.stdout.contains("--dishonest"),
        "target/debug/rendertrust was built without the test-only feature: run \
         `cargo build --workspace --bins --features rendertrust-node/dishonest-test-hooks` \
         (scripts/test.sh does) before this test"
    );
}

async fn standing(api: &ApiClient, node: &str) -> (u16, u64, u64) {
    let v: ReputationView = api.get(&format!("/v1/reputation/{node}")).await.unwrap();
    assert!(v.keeps_book, "a scheduler keeps a reputation book");
    let n = &v.nodes[0];
    (n.permille, n.verified_milli, n.failed_milli)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheaters_are_caught_unpaid_and_ranked_below_honest_workers() {
    require_dishonest_hooks().await;
    let dir = Mesh::dir();
    let prepared = prepare_ledger(dir.path(), NODES, &LedgerPlan::default()).unwrap();
    let config = prepared.config.display().to_string();
    let mesh = Mesh::start_each(dir, NODES, |i| {
        let mut a: Vec<String> = FAST.iter().map(|s| s.to_string()).collect();
        a.extend(["--config".to_string(), config.clone()]);
        match i {
            WRONG => a.extend(["--dishonest".into(), "wrong-output".into()]),
            LAZY => a.extend(["--dishonest".into(), "lazy".into()]),
            _ => {}
        }
        a
    })
    .await;
    wait_for_mesh(&mesh, NODES).await;
    let ids: Vec<String> = prepared.nodes.clone();
    let creator = mesh.api(CREATOR).clone();

    let request = SubmitRequest {
        kind: KindRequest::Builtin,
        scene: None,
        inputs: vec![],
        frames: Some(format!("1-{FRAMES}")),
        tiles: None,
        width: Some(W),
        height: Some(H),
        max_price_per_task: None,
        requirements: Default::default(),
        deadline_secs: None,
        verify: VerifyRequest {
            policy: Some("quorum".into()),
            sample_permille: Some(SAMPLE_PERMILLE),
            quorum_k: Some(2),
            ..Default::default()
        },
    };
    let v: SubmitView = creator.post("/v1/jobs", &request).await.unwrap();
    let id = v.id.clone();
    let d: JobDetail = eventually(
        "the verified job to finish",
        Duration::from_secs(600),
        Duration::from_millis(1000),
        || {
            let api = creator.clone();
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
    assert_eq!(d.summary.counts.accepted, u64::from(FRAMES));

    // Every accepted frame is correct, and none is a cheater's.
    let r: ResultsView = creator
        .get(&format!("/v1/jobs/{id}/results"))
        .await
        .unwrap();
    assert!(r.missing.is_empty(), "missing outputs: {:?}", r.missing);
    assert_eq!(r.results.len(), FRAMES as usize);
    for res in &r.results {
        let bytes = creator.get_bytes(&res.url).await.unwrap();
        let local =
            builtin::render_png(builtin::DEFAULT_SCENE, res.frame, W, H, Rect::full(W, H)).unwrap();
        assert!(
            bytes == local,
            "accepted frame {} differs from a local render",
            res.frame
        );
    }
    let cheater_ids: BTreeSet<&str> = CHEATERS.iter().map(|c| ids[*c].as_str()).collect();
    for t in &d.tasks {
        let w = t.worker.as_deref().unwrap_or("");
        assert!(
            !cheater_ids.contains(w),
            "task {} was accepted from cheater {w}",
            t.index
        );
    }

    // Caught at no less than the sampled rate, in the job's scheduler's book.
    let owner = (0..2)
        .find(|i| ids[*i] == v.scheduler)
        .expect("the job went to a devnet scheduler");
    let book = mesh.api(owner).clone();
    for c in CHEATERS {
        let sent = read_lossy(&mesh.data_dir(c).join("node.log"))
            .matches("task finished; sending the result")
            .count() as u64;
        let (permille, verified, failed) = standing(&book, &ids[c]).await;
        let caught = failed.div_ceil(1000);
        eprintln!(
            "cheater node {c}: sent {sent} results, caught {caught}, verified {verified} milli, score {permille}‰"
        );
        assert!(caught >= 1, "cheater {c} was never caught");
        assert!(
            caught * 1000 >= sent * u64::from(SAMPLE_PERMILLE),
            "cheater {c}: {caught} of {sent} results caught, below the sampled rate"
        );
        assert_eq!(verified, 0, "cheater {c} had a lie verified");
    }

    // Ranked below every honest worker.
    let mut honest = BTreeMap::new();
    for h in (0..NODES).filter(|i| !CHEATERS.contains(i)) {
        honest.insert(h, standing(&book, &ids[h]).await.0);
    }
    eprintln!("honest scores: {honest:?}");
    for c in CHEATERS {
        let (score, _, _) = standing(&book, &ids[c]).await;
        for (h, s) in &honest {
            assert!(
                score < *s,
                "cheater {c} ({score}‰) is not below honest node {h} ({s}‰)"
            );
        }
    }

    // Unpaid: every receipt settles on a ledger, the cheaters' balances do not move.
    let receipts: Vec<String> = d
        .tasks
        .iter()
        .filter_map(|t| t.receipt_id.clone())
        .collect();
    assert_eq!(receipts.len(), FRAMES as usize);
    let ledger = mesh.api(LEDGER).clone();
    wait_receipts_settled(
        "every receipt of the job to settle",
        &ledger,
        &receipts,
        Duration::from_secs(120),
    )
    .await;
    let mut earned = 0u64;
    for (i, id) in ids.iter().enumerate() {
        let b: BalanceView = ledger
            .get(&format!("/v1/ledger/balances/{id}"))
            .await
            .unwrap();
        if CHEATERS.contains(&i) {
            assert_eq!(
                b.balance,
                i128::from(GENESIS_CREDITS),
                "cheater {i} earned credits"
            );
        } else if i != CREATOR {
            earned += u64::try_from(b.balance - i128::from(GENESIS_CREDITS)).unwrap_or(0);
        }
    }
    assert!(earned > 0, "honest workers earned nothing");
    mesh.stop().await;
}
