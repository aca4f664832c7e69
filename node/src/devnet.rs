//! `rendertrust devnet`: a whole mesh on loopback, as child processes.
//!
//! Starts one `rendertrust-bootstrap` and N `rendertrust node start`
//! processes, each with its own data dir under `--dir` (kept, so a second run
//! reuses the same identities) and OS-assigned free ports (QUIC on
//! `127.0.0.1:0`, API on `127.0.0.1:0`; a node writes its API URL to
//! `<data_dir>/api.url`). Prints each node's API URL, then waits; Ctrl-C or
//! SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period).
//!
//! Role plan ([`roles_for`]): nodes 0 and 1 are schedulers, nodes 1 and 2
//! are ledger peers; every node is a worker. Logs go to
//! `<dir>/<name>/node.log`.
//!
//! Credits ([`prepare_ledger`]): before the nodes start, the devnet creates
//! their identity keys (so it knows their peer ids) and a mint authority key
//! (`<dir>/mint-authority.key`), and writes `<dir>/devnet.toml` with a
//! `[ledger]` section every node reads: that authority, a genesis allocation
//! of [`GENESIS_CREDITS`] to every node (so creators can pay), and short
//! epochs ([`DEVNET_EPOCH_SECS`]) so receipts are anchored within seconds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Options of `rendertrust devnet`.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Directory for data dirs and logs.
    pub dir: PathBuf,
    /// Run the demo (submit a builtin job from a non-scheduler, watch it,
    /// fetch and verify the frames), then stop.
    pub demo: bool,
    /// Frames the demo renders.
    pub demo_frames: u32,
}

/// A started child process.
#[derive(Debug)]
pub struct Proc {
    /// Display name ("bootstrap", "node-0", …).
    pub name: String,
    /// The process.
    pub child: Child,
    /// Its data dir.
    pub data_dir: PathBuf,
}

/// Finds a sibling binary of the running executable (same target dir).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe.parent().context("executable has no parent directory")?;
    // Test binaries live in target/<profile>/deps; the binaries one level up.
    for candidate in [dir.join(name), dir.join("..").join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find `{name}` next to {}: build it first (`cargo build --release --workspace`, or use scripts/devnet.sh)",
        exe.display()
    )
}

/// Roles of node `i` in the devnet plan: two schedulers, two ledger peers
/// (node 1 is both), every node a worker.
pub fn roles_for(i: usize) -> &'static str {
    match i {
        0 => "worker,scheduler",
        1 => "worker,scheduler,ledger",
        2 => "worker,ledger",
        _ => "worker",
    }
}

/// Credits every devnet node starts with.
pub const GENESIS_CREDITS: u64 = 1000;
/// Epoch length of a devnet's ledgers, seconds.
pub const DEVNET_EPOCH_SECS: u64 = 5;
/// Grace before a devnet epoch closes, seconds.
pub const DEVNET_GRACE_SECS: u64 = 1;
/// A devnet epoch turns final at the latest this long after closing, seconds.
pub const DEVNET_RECONCILE_SECS: u64 = 20;

/// The ledger settings a devnet (or a test mesh) starts its nodes with.
#[derive(Debug, Clone)]
pub struct LedgerPlan {
    /// Epoch length, seconds.
    pub epoch_secs: u64,
    /// Grace, seconds.
    pub grace_secs: u64,
    /// Reconcile window, seconds.
    pub reconcile_secs: u64,
    /// Genesis credits per node.
    pub genesis: u64,
    /// Extra TOML appended to the config (e.g. an `[anchor]` section).
    pub extra_toml: String,
}

impl Default for LedgerPlan {
    fn default() -> Self {
        LedgerPlan {
            epoch_secs: DEVNET_EPOCH_SECS,
            grace_secs: DEVNET_GRACE_SECS,
            reconcile_secs: DEVNET_RECONCILE_SECS,
            genesis: GENESIS_CREDITS,
            extra_toml: String::new(),
        }
    }
}

/// What [`prepare_ledger`] set up.
#[derive(Debug, Clone)]
pub struct PreparedLedger {
    /// The config file every node gets (`--config`).
    pub config: PathBuf,
    /// The mint authority's key file.
    pub authority_key: PathBuf,
    /// The mint authority's peer id.
    pub authority: String,
    /// Node `i`'s peer id.
    pub nodes: Vec<String>,
}

/// Creates the identity keys of nodes `0..n` (their data dirs under `dir`)
/// and the mint authority key, and writes the config every node reads.
pub fn prepare_ledger(dir: &Path, n: usize, plan: &LedgerPlan) -> Result<PreparedLedger> {
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let key = crate::keys::load_or_create_identity(&dir.join(format!("node-{i}")))?;
        nodes.push(key.node_id().to_string());
    }
    let authority_key = dir.join("mint-authority.key");
    let authority = crate::keys::load_or_create_key_file(&authority_key)?
        .node_id()
        .to_string();
    let mut toml = format!(
        "# Written by `rendertrust devnet`: every node of the devnet reads it.\n\
         [ledger]\nmint_authority = \"{authority}\"\nepoch_secs = {}\ngrace_secs = {}\nreconcile_secs = {}\n\n[ledger.genesis]\n",
        plan.epoch_secs, plan.grace_secs, plan.reconcile_secs
    );
    for id in &nodes {
        toml.push_str(&format!("\"{id}\" = {}\n", plan.genesis));
    }
    toml.push_str(&plan.extra_toml);
    let config = dir.join("devnet.toml");
    std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
    Ok(PreparedLedger {
        config,
        authority_key,
        authority,
        nodes,
    })
}

/// Sends SIGTERM to a child (no-op if it already exited).
pub fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Starts the bootstrap peer; returns it and its full multiaddr (first stdout line).
pub async fn start_bootstrap(dir: &Path) -> Result<(Proc, String)> {
    let bin = sibling_binary("rendertrust-bootstrap")?;
    let data_dir = dir.join("bootstrap");
    std::fs::create_dir_all(&data_dir)?;
    let log = std::fs::File::create(data_dir.join("bootstrap.log"))?;
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(&data_dir)
        .args([
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting rendertrust-bootstrap")?;
    let stdout = child.stdout.take().context("bootstrap stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("bootstrap did not print its address within 30 s")??
        .context("bootstrap exited before printing its address")?;
    if !addr.contains("/p2p/") {
        bail!("bootstrap printed {addr:?}, expected a multiaddr with /p2p/");
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((
        Proc {
            name: "bootstrap".into(),
            child,
            data_dir,
        },
        addr,
    ))
}

/// Starts node `i` with the given bootstrap address and extra arguments.
pub fn start_node(dir: &Path, i: usize, bootstrap: &str, extra: &[String]) -> Result<Proc> {
    let bin = sibling_binary("rendertrust")?;
    let name = format!("node-{i}");
    let data_dir = dir.join(&name);
    std::fs::create_dir_all(&data_dir)?;
    let _ = std::fs::remove_file(data_dir.join("api.url"));
    // Appended to, so a restarted node's log follows its previous run's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("node.log"))?;
    let child = Command::new(bin)
        .args(["node", "start", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args([
            "--bootstrap",
            bootstrap,
            "--api",
            "127.0.0.1:0",
            "--roles",
            roles_for(i),
        ])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc {
        name,
        child,
        data_dir,
    })
}

/// Waits until a node has written its API URL; fails if it exits first.
pub async fn wait_api_url(p: &mut Proc, timeout: Duration) -> Result<String> {
    let file = p.data_dir.join("api.url");
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&file) {
            let url = s.trim().to_owned();
            if !url.is_empty() {
                return Ok(url);
            }
        }
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "{} exited ({status}) before its API was up; see {}",
                p.name,
                p.data_dir.join("node.log").display()
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "{}: API not up after {:?}; see {}",
                p.name,
                timeout,
                p.data_dir.join("node.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every child: SIGTERM, then SIGKILL after `grace`.
pub async fn stop_all(procs: &mut [Proc], grace: Duration) {
    for p in procs.iter() {
        terminate(&p.child);
    }
    let deadline = Instant::now() + grace;
    for p in procs.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, p.child.wait()).await.is_err() {
            let _ = p.child.start_kill();
            let _ = p.child.wait().await;
        }
    }
}

/// Runs the devnet until Ctrl-C or SIGTERM.
#[allow(clippy::print_stdout)]
pub async fn run(opts: DevnetOptions) -> Result<()> {
    if opts.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let dir = opts.dir.canonicalize()?;
    println!("devnet in {}", dir.display());
    let ledger = prepare_ledger(&dir, opts.nodes, &LedgerPlan::default())?;
    let extra = vec!["--config".to_owned(), ledger.config.display().to_string()];
    let (boot, addr) = start_bootstrap(&dir).await?;
    println!("bootstrap  {addr}");
    let mut procs = vec![boot];
    let result = async {
        for i in 0..opts.nodes {
            procs.push(start_node(&dir, i, &addr, &extra)?);
        }
        for p in procs.iter_mut().skip(1) {
            let url = wait_api_url(p, Duration::from_secs(120)).await?;
            println!(
                "{:<10} {url}   roles {}",
                p.name,
                roles_for(p.name[5..].parse().unwrap_or(99))
            );
        }
        if opts.demo {
            let urls: Vec<String> = procs
                .iter()
                .skip(1)
                .filter_map(|p| std::fs::read_to_string(p.data_dir.join("api.url")).ok())
                .map(|u| u.trim().to_owned())
                .collect();
            return tokio::select! {
                _ = crate::node::shutdown_signal() => Ok(()),
                r = watch_children(&mut procs) => r,
                r = demo(&dir, &urls, opts.demo_frames) => r,
            };
        }
        println!(
            "\nledger peers: nodes 1 and 2; every node starts with {GENESIS_CREDITS} credits; epochs of {DEVNET_EPOCH_SECS} s.\n\
             mint authority {} (key {}):\n  rendertrust ledger mint --authority-key {} --to <PEER_ID> --amount 100 --api <URL>",
            ledger.authority,
            ledger.authority_key.display(),
            ledger.authority_key.display()
        );
        println!(
            "\n{} nodes up. Try: rendertrust mesh capacity --api <URL>, rendertrust ledger leaderboard --api <URL>. Ctrl-C stops the devnet.",
            opts.nodes
        );
        tokio::select! {
            _ = crate::node::shutdown_signal() => Ok(()),
            r = watch_children(&mut procs) => r,
        }
    }
    .await;
    println!("stopping {} processes", procs.len());
    stop_all(&mut procs, Duration::from_secs(10)).await;
    result
}

/// The demo: wait until every node sees the whole mesh, submit a builtin job
/// from the last node (not a scheduler), watch it, fetch and verify the frames.
#[allow(clippy::print_stdout)]
async fn demo(dir: &Path, urls: &[String], frames: u32) -> Result<()> {
    use crate::cli::ApiClient;
    use crate::jobs::submit::{KindRequest, SubmitRequest};

    let Some(creator_url) = urls.last() else {
        bail!("the demo needs at least one node");
    };
    let creator = ApiClient::new(creator_url, None)?;
    println!("\nwaiting for the mesh to form ({} nodes)…", urls.len());
    let start = Instant::now();
    loop {
        let mut ready = true;
        for u in urls {
            let c = ApiClient::new(u, None)?;
            let seen = c
                .get::<crate::api::CapacityResponse>("/v1/capacity")
                .await
                .map(|r| r.nodes.len())
                .unwrap_or(0);
            ready &= seen >= urls.len();
        }
        if ready {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "the mesh did not form within 120 s; see the node logs under {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let request = SubmitRequest {
        kind: KindRequest::Builtin,
        scene: None,
        inputs: Vec::new(),
        frames: Some(format!("1-{}", frames.max(1))),
        tiles: None,
        width: None,
        height: None,
        max_price_per_task: None,
        requirements: Default::default(),
        deadline_secs: None,
        verify: Default::default(),
    };
    let (view, text) = crate::jobs::cli::submit(&creator, &request, false).await?;
    println!(
        "{text}\n(submitted from node-{}, which is not a scheduler)",
        urls.len() - 1
    );
    let summary = crate::jobs::cli::watch(&creator, &view.id).await?;
    if summary.state != crate::jobs::view::JobState::Done {
        bail!(
            "the demo job ended {:?}: {:?}",
            summary.state,
            summary.reason
        );
    }
    let out = dir.join("frames");
    let fetched = crate::jobs::cli::fetch(&creator, &view.id, &out, false).await?;
    println!("\n{fetched}");
    println!(
        "every frame was rendered by a worker of the mesh, sealed to this creator, and checked against the hash its worker signed.\nframes: {}",
        out.display()
    );
    verify_demo_receipt(&creator, &view.id).await
}

/// The end of the demo: one of the job's receipts, checked against the root
/// its epoch's anchorer anchored (waiting for the epoch to close and be
/// anchored: a few seconds with devnet epochs).
#[allow(clippy::print_stdout)]
async fn verify_demo_receipt(creator: &crate::cli::ApiClient, job: &str) -> Result<()> {
    use crate::ledger::cli::{VerifyOptions, verify};
    let detail: crate::jobs::view::JobDetail = creator.get(&format!("/v1/jobs/{job}")).await?;
    let Some(receipt) = detail.tasks.iter().find_map(|t| t.receipt_id.clone()) else {
        bail!("the demo job has no countersigned receipt");
    };
    println!(
        "\nverifying receipt {receipt} against its anchored epoch root (epochs of {DEVNET_EPOCH_SECS} s; waiting for the epoch to close)…"
    );
    let start = Instant::now();
    let report = loop {
        let r = verify(creator, &receipt, &VerifyOptions::default()).await?;
        let waiting = matches!(r.verdict.as_str(), "NOT ANCHORED" | "UNKNOWN");
        if !waiting || start.elapsed() > Duration::from_secs(60) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("{}", report.reason);
    if let Ok(b) = crate::ledger::cli::balance(creator, None, false).await {
        println!("creator {b}");
    }
    if !report.is_valid() {
        bail!("the demo receipt did not verify: {}", report.verdict);
    }
    println!(
        "the receipt is leaf of an epoch root that a ledger peer anchored: anyone can check it with `rendertrust receipt verify {receipt}`."
    );
    Ok(())
}

async fn watch_children(procs: &mut [Proc]) -> Result<()> {
    loop {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited unexpectedly ({status}); see its log in {}",
                    p.name,
                    p.data_dir.display()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
