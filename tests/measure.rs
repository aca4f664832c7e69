//! Measurements for the closing notes, not assertions: run by hand with
//! `cargo build --release --workspace --bins && cargo test --release --test measure -- --ignored --nocapture`.
//! They print figures; they never fail on a timing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::collections::BTreeMap;
use std::time::Duration;

use rendertrust_e2e::*;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).ceil() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Time for a capacity advert to reach 95% and 100% of a 50-node mesh:
/// each node records when it received the advert (`received_at_ms`) and
/// the advert carries when it was issued; all on one machine, one clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand"]
async fn advert_propagation_50_nodes() {
    const N: usize = 50;
    let mesh = Mesh::start(
        N,
        &["--advert-interval-secs", "10", "--capacity-ttl-secs", "60"],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(peer_id(mesh.api(i)).await);
    }
    for i in 0..N {
        let api = mesh.api(i).clone();
        eventually(
            &format!("node {i} full"),
            Duration::from_secs(300),
            Duration::from_secs(1),
            || {
                let api = api.clone();
                async move {
                    let n = capacity_nodes(&api).await?.len();
                    if n >= N { Ok(()) } else { Err(format!("{n}")) }
                }
            },
        )
        .await;
    }
    let mut p95s = Vec::new();
    let mut maxs = Vec::new();
    for round in 0..5 {
        let origin = (round * 11) % N;
        let who = ids[origin].clone();
        // Wait for a fresh advert of `origin` (issued within the last 3 s), then let it spread.
        let own: CapacityResponse = mesh.api(origin).get("/v1/capacity").await.unwrap();
        let e = own.nodes.iter().find(|e| e.node == who).unwrap().clone();
        let next_issue = e.issued_at_ms + 10_000;
        let wait = next_issue.saturating_sub(rendertrust_node::net::unix_now_ms()) + 4_000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let own: CapacityResponse = mesh.api(origin).get("/v1/capacity").await.unwrap();
        let held = own.nodes.iter().find(|e| e.node == who).unwrap().clone();
        let mut delays = Vec::new();
        let mut by_seq: BTreeMap<u64, usize> = BTreeMap::new();
        for i in (0..N).filter(|i| *i != origin) {
            let c: CapacityResponse = mesh.api(i).get("/v1/capacity").await.unwrap();
            if let Some(x) = c.nodes.iter().find(|x| x.node == who) {
                *by_seq.entry(x.seq).or_default() += 1;
                if x.seq == held.seq {
                    delays.push(x.received_at_ms.saturating_sub(held.issued_at_ms));
                }
            }
        }
        delays.sort_unstable();
        let reached = delays.len();
        let p95 = percentile(&delays, 0.95);
        let max = delays.last().copied().unwrap_or(0);
        eprintln!(
            "round {round}: advert seq {} of node {origin} reached {reached}/{} peers; p95 {p95} ms, 100% {max} ms (seqs seen {by_seq:?})",
            held.seq,
            N - 1
        );
        if reached == N - 1 {
            p95s.push(p95);
            maxs.push(max);
        }
    }
    p95s.sort_unstable();
    maxs.sort_unstable();
    eprintln!(
        "MEASURE advert propagation, 50 nodes: median over {} rounds: 95% in {} ms, 100% in {} ms",
        p95s.len(),
        percentile(&p95s, 0.5),
        percentile(&maxs, 0.5)
    );
    mesh.stop().await;
}

fn proc_stat(pid: u32) -> (u64, u64) {
    // (rss bytes, utime+stime ticks)
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    (rss_kb * 1024, ticks)
}

/// An idle node's RSS and CPU after 5 minutes, in a 5-node mesh with default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand"]
async fn idle_node_resources() {
    let mins: u64 = std::env::var("IDLE_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mesh = Mesh::start(5, &[]).await;
    let pid = mesh.nodes[4].as_ref().unwrap().proc.child.id().unwrap();
    tokio::time::sleep(Duration::from_secs(mins * 60)).await;
    let (_, t0) = proc_stat(pid);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (rss, t1) = proc_stat(pid);
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1 - t0) as f64 / hz / 60.0 * 100.0;
    eprintln!(
        "MEASURE idle node after {mins} min: RSS {:.1} MB, CPU {cpu:.2}% of a core (over the following minute)",
        rss as f64 / 1e6
    );
    mesh.stop().await;
}
