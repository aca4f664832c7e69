//! The mesh, as real processes on loopback: a bootstrap peer and 20 nodes.
//!
//! * every node's capacity table lists all 20 nodes within a bounded wait;
//! * `mesh roles scheduler` finds exactly the nodes started as schedulers;
//! * a node killed with SIGKILL leaves every table after expiry, and restarted
//!   on the same data dir it keeps its peer id and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use rendertrust_e2e::*;

const NODES: usize = 20;
// Short advert interval and ttl so expiry is observable in a test.
const FAST: &[&str] = &["--advert-interval-secs", "2", "--capacity-ttl-secs", "8"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_see_each_other_find_roles_and_forget_the_dead() {
    let mut mesh = Mesh::start(NODES, FAST).await;

    let mut ids = Vec::new();
    for i in 0..NODES {
        ids.push(peer_id(mesh.api(i)).await);
    }
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(all.len(), NODES, "peer ids must be distinct");

    // Every table lists all 20.
    for i in 0..NODES {
        let api = mesh.api(i).clone();
        let want = all.clone();
        eventually(
            &format!("node {i}'s table to list all {NODES} nodes"),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let api = api.clone();
                let want = want.clone();
                async move {
                    let got: BTreeSet<String> = capacity_nodes(&api).await?.into_iter().collect();
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} of {} listed; missing {:?}",
                            got.len(),
                            want.len(),
                            want.difference(&got).take(3).collect::<Vec<_>>()
                        ))
                    }
                }
            },
        )
        .await;
    }

    // Roles: nodes 0 and 1 are the schedulers (devnet plan).
    let schedulers: BTreeSet<String> = [ids[0].clone(), ids[1].clone()].into_iter().collect();
    for asker in [5usize, 19] {
        let api = mesh.api(asker).clone();
        let want = schedulers.clone();
        eventually(
            &format!("node {asker} to find exactly the schedulers"),
            Duration::from_secs(60),
            Duration::from_secs(1),
            || {
                let api = api.clone();
                let want = want.clone();
                async move {
                    let r: RoleProviders = api
                        .get("/v1/roles/scheduler")
                        .await
                        .map_err(|e| e.to_string())?;
                    let got: BTreeSet<String> = r.providers.into_iter().collect();
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!("found {got:?}"))
                    }
                }
            },
        )
        .await;
    }
    // Ledger peers: nodes 1 and 2 (devnet plan).
    let ledgers: BTreeSet<String> = [ids[1].clone(), ids[2].clone()].into_iter().collect();
    let api = mesh.api(7).clone();
    eventually(
        "node 7 to find exactly the ledger peers",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let api = api.clone();
            let want = ledgers.clone();
            async move {
                let r: RoleProviders = api
                    .get("/v1/roles/ledger")
                    .await
                    .map_err(|e| e.to_string())?;
                let got: BTreeSet<String> = r.providers.into_iter().collect();
                if got == want {
                    Ok(())
                } else {
                    Err(format!("found {got:?}"))
                }
            }
        },
    )
    .await;

    // SIGKILL node 4: it leaves every table once its entry expires.
    let victim = 4;
    mesh.kill(victim).await;
    for i in mesh.live() {
        let api = mesh.api(i).clone();
        let gone = ids[victim].clone();
        eventually(
            &format!("node {i} to forget the killed node"),
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let api = api.clone();
                let gone = gone.clone();
                async move {
                    let got = capacity_nodes(&api).await?;
                    if got.contains(&gone) {
                        Err("still listed".into())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await;
    }

    // Restarted on the same data dir: same peer id, back in the tables.
    mesh.restart(victim, FAST).await;
    assert_eq!(
        peer_id(mesh.api(victim)).await,
        ids[victim],
        "peer id changed across restart"
    );
    let api = mesh.api(0).clone();
    let back = ids[victim].clone();
    eventually(
        "the restarted node to be listed again",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let api = api.clone();
            let back = back.clone();
            async move {
                if capacity_nodes(&api).await?.contains(&back) {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            }
        },
    )
    .await;

    mesh.stop().await;
}
