//! Shared support for RenderTrust's multi-process tests (`tests/*.rs`).
//!
//! The tests start the real `rendertrust` and `rendertrust-bootstrap` binaries
//! on loopback (built by `scripts/test.sh` before `cargo test`; run
//! `cargo build --workspace --bins --features rendertrust-node/dishonest-test-hooks`
//! first when running a test alone; `tests/trust.rs` needs the feature). This
//! library holds what the tests share; it reuses the devnet's process
//! helpers and the CLI's API client, and contains no mock of the network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use rendertrust_node::api::{CapacityResponse, RoleProviders, StatusView};
pub use rendertrust_node::cli::ApiClient;
pub use rendertrust_node::devnet::{self, Proc};
/// The protocol crate, re-exported so tests need one import.
pub use rendertrust_protocol as protocol;

/// A worker's capacity advert for in-process peers of the tests (2 cores,
/// 1 GiB, the builtin runtime, one task at a time), issued now.
pub fn worker_advert(node: protocol::identity::NodeId, seq: u64) -> protocol::wire::CapacityAdvert {
    use protocol::wire::{CapacityAdvert, Role, RuntimeInfo, RuntimeKind};
    CapacityAdvert {
        node,
        seq,
        issued_at_ms: rendertrust_node::net::unix_now_ms(),
        refresh_ms: 10_000,
        wrap_key: [7; 32],
        roles: vec![Role::Worker],
        cpu_cores: 2,
        cpu_model: "test peer".into(),
        ram_bytes: 1 << 30,
        disk_free_bytes: 1 << 30,
        gpus: vec![],
        runtimes: vec![RuntimeInfo {
            kind: RuntimeKind::Builtin,
            version: "1".into(),
        }],
        bench_mfpm: 1000,
        running_tasks: 0,
        max_tasks: 1,
        price_per_task: 1,
        region: "test".into(),
    }
}

/// A mesh of real processes on loopback: one bootstrap peer and some nodes.
pub struct Mesh {
    /// Temporary directory holding every data dir (removed on drop).
    pub dir: tempfile::TempDir,
    /// Bootstrap multiaddr with /p2p/.
    pub bootstrap_addr: String,
    /// The bootstrap process.
    pub bootstrap: Proc,
    /// Nodes, by index; `None` after [`Mesh::kill`].
    pub nodes: Vec<Option<NodeProc>>,
}

/// A running node and its API client.
pub struct NodeProc {
    /// The process.
    pub proc: Proc,
    /// Its API.
    pub api: ApiClient,
    /// Its API URL.
    pub url: String,
}

impl Mesh {
    /// Starts a bootstrap peer and `n` nodes (devnet role plan: nodes 0 and 1
    /// schedulers, nodes 1 and 2 ledger peers), each with `extra` arguments.
    ///
    /// Set `RENDERTRUST_KEEP_TEST_DIR=1` to keep the data dirs and logs after
    /// the test (their path is printed).
    pub async fn start(n: usize, extra: &[&str]) -> Mesh {
        Mesh::start_in(Mesh::dir(), n, extra).await
    }

    /// A fresh directory for a mesh (kept after the test with
    /// `RENDERTRUST_KEEP_TEST_DIR=1`), to prepare before [`Mesh::start_in`].
    pub fn dir() -> tempfile::TempDir {
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("RENDERTRUST_KEEP_TEST_DIR").is_some() {
            dir.disable_cleanup(true);
            eprintln!("test mesh dir (kept): {}", dir.path().display());
        }
        dir
    }

    /// [`Mesh::start`] in a directory prepared beforehand (e.g. with
    /// `devnet::prepare_ledger`).
    pub async fn start_in(dir: tempfile::TempDir, n: usize, extra: &[&str]) -> Mesh {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Mesh::start_each(dir, n, |_| extra.clone()).await
    }

    /// [`Mesh::start_in`] with arguments per node (`extra_of(i)`).
    pub async fn start_each(
        dir: tempfile::TempDir,
        n: usize,
        extra_of: impl Fn(usize) -> Vec<String>,
    ) -> Mesh {
        let (bootstrap, bootstrap_addr) = devnet::start_bootstrap(dir.path()).await.unwrap();
        let mut mesh = Mesh {
            dir,
            bootstrap_addr,
            bootstrap,
            nodes: Vec::new(),
        };
        let mut procs = Vec::new();
        for i in 0..n {
            procs.push(
                devnet::start_node(mesh.dir.path(), i, &mesh.bootstrap_addr, &extra_of(i)).unwrap(),
            );
        }
        for mut p in procs {
            let url = devnet::wait_api_url(&mut p, Duration::from_secs(120))
                .await
                .unwrap();
            let api = ApiClient::new(&url, None).unwrap();
            mesh.nodes.push(Some(NodeProc { proc: p, api, url }));
        }
        mesh
    }

    /// Path of node `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    /// The API client of node `i` (panics if it was killed).
    pub fn api(&self, i: usize) -> &ApiClient {
        &self.nodes[i].as_ref().expect("node was killed").api
    }

    /// Live nodes' indices.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// SIGKILLs node `i` (no clean shutdown).
    pub async fn kill(&mut self, i: usize) {
        let mut n = self.nodes[i].take().expect("node already killed");
        n.proc.child.start_kill().unwrap();
        n.proc.child.wait().await.unwrap();
    }

    /// Restarts node `i` on the same data dir.
    pub async fn restart(&mut self, i: usize, extra: &[&str]) {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        self.restart_with(i, &extra).await
    }

    /// [`Mesh::restart`] with owned arguments.
    pub async fn restart_with(&mut self, i: usize, extra: &[String]) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let mut p = devnet::start_node(self.dir.path(), i, &self.bootstrap_addr, extra).unwrap();
        let url = devnet::wait_api_url(&mut p, Duration::from_secs(120))
            .await
            .unwrap();
        let api = ApiClient::new(&url, None).unwrap();
        self.nodes[i] = Some(NodeProc { proc: p, api, url });
    }

    /// Stops everything cleanly.
    pub async fn stop(mut self) {
        let mut procs: Vec<Proc> = self.nodes.drain(..).flatten().map(|n| n.proc).collect();
        devnet::stop_all(&mut procs, Duration::from_secs(10)).await;
        devnet::stop_all(
            std::slice::from_mut(&mut self.bootstrap),
            Duration::from_secs(5),
        )
        .await;
    }
}

/// Polls `check` every `every` until it returns `Some`, or panics with `what`
/// and the last observation after `timeout`. Bounded waits, no timing asserts.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until the ledger peer behind `api` reports every receipt of
/// `receipts` (hex ids) as settled, polling every 700 ms for at most
/// `timeout`; the failure names the first receipt that is not.
pub async fn wait_receipts_settled(
    what: &str,
    api: &ApiClient,
    receipts: &[String],
    timeout: Duration,
) {
    eventually(what, timeout, Duration::from_millis(700), || {
        let (api, receipts) = (api.clone(), receipts.to_vec());
        async move {
            for r in &receipts {
                let v: rendertrust_node::ledger::view::ReceiptView = api
                    .get(&format!("/v1/receipts/{r}"))
                    .await
                    .map_err(|e| e.to_string())?;
                if v.status != "settled" {
                    return Err(format!("{}: {}", r.get(..12).unwrap_or(r), v.status));
                }
            }
            Ok(())
        }
    })
    .await;
}

/// The node ids a node's capacity table lists.
pub async fn capacity_nodes(api: &ApiClient) -> Result<Vec<String>, String> {
    let c: CapacityResponse = api.get("/v1/capacity").await.map_err(|e| e.to_string())?;
    let mut ids: Vec<String> = c.nodes.into_iter().map(|n| n.node).collect();
    ids.sort();
    Ok(ids)
}

/// Waits until every live node of `mesh` lists at least `n` nodes in its
/// capacity table (so placement has them all).
pub async fn wait_for_mesh(mesh: &Mesh, n: usize) {
    for i in mesh.live() {
        let api = mesh.api(i).clone();
        eventually(
            &format!("node {i} to see {n} nodes"),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let api = api.clone();
                async move {
                    let got = capacity_nodes(&api).await?.len();
                    if got >= n {
                        Ok(())
                    } else {
                        Err(format!("{got} nodes"))
                    }
                }
            },
        )
        .await;
    }
}

/// A node's peer id.
pub async fn peer_id(api: &ApiClient) -> String {
    let s: StatusView = api.get("/v1/status").await.unwrap();
    s.peer_id
}

/// True when running under CI (`CI` set): missing components fail instead of skipping.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// A running `anvil` (a local EVM chain), killed when dropped (also when
/// the test panics).
pub struct Anvil {
    child: std::process::Child,
    /// Its JSON-RPC URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// anvil: `$RENDERTRUST_ANVIL`, else `.tools/` (scripts/deps.sh), else `PATH`.
pub fn anvil_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RENDERTRUST_ANVIL") {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/node_modules/.bin/anvil");
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("anvil"))
            .find(|p| p.is_file())
    })
}

/// Starts anvil on a free loopback port, or says loudly why not and returns
/// `None` (outside CI; in CI, where `CI` is set, a missing anvil fails).
pub fn start_anvil(test: &str) -> Option<Anvil> {
    use std::process::{Command, Stdio};
    let Some(bin) = anvil_binary() else {
        let msg = "anvil not found: run scripts/deps.sh (installs it into .tools/) or set RENDERTRUST_ANVIL";
        if in_ci() {
            panic!("{test}: {msg}");
        }
        eprintln!("\n!!!!!!!! SKIPPED {test}: {msg} !!!!!!!!\n");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("anvil.log");
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut anvil = Anvil {
        child,
        url: String::new(),
        _dir: dir,
    };
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Listening on "))
        {
            anvil.url = format!("http://{}", addr.trim());
            return Some(anvil);
        }
        if let Some(status) = anvil.child.try_wait().unwrap() {
            panic!("anvil exited ({status}) before listening:\n{text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "anvil did not listen within 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a run of the `rendertrust` CLI printed, and how it exited.
#[derive(Debug)]
pub struct CliRun {
    /// Exit status code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the real `rendertrust` binary with `args` and waits for it.
pub async fn rendertrust_cli(args: &[&str]) -> CliRun {
    let bin = devnet::sibling_binary("rendertrust").unwrap();
    let out = tokio::process::Command::new(bin)
        .args(args)
        .output()
        .await
        .unwrap();
    CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Reads a file, or an empty string.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
