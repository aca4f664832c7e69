//! `rendertrust`: the node and its command-line interface.
//!
//! Commands go noun then verb (`node start`, `mesh capacity`). Client commands
//! talk to a running node through its local API (`--api URL`).

// The doc comments below are clap's `--help` text, written for a terminal:
// `<SETTING>`, `[anchor] rpc_url` are meant literally, not as HTML or links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rendertrust_node::cli::{self, ApiClient, DEFAULT_API_URL};
use rendertrust_node::config::{Config, ConfigOverrides, LogFormat};
use rendertrust_node::jobs::cli as jobs_cli;
use rendertrust_node::jobs::submit::{
    KindRequest, NamedPath, RequirementsRequest, SubmitRequest, TilesRequest, VerifyRequest,
};
use rendertrust_node::jobs::view::JobState;
use rendertrust_node::ledger::cli as ledger_cli;
use rendertrust_node::{devnet, keys, node};

/// RenderTrust: a peer-to-peer render mesh that nobody has to trust blindly.
///
/// Volunteers run `rendertrust node start` on a GPU rig and earn credits;
/// creators publish jobs from any peer. Start a whole local mesh with
/// `rendertrust devnet --nodes 4`.
#[derive(Debug, Parser)]
#[command(name = "rendertrust", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run this machine as a mesh node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show the local node: peer id, roles, addresses, peers.
    Status(ClientArgs),
    /// Look at the mesh as the node sees it.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Show this node's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create and follow jobs: submit from this node, watch, fetch verified results.
    #[command(subcommand)]
    Job(JobCommand),
    /// The credit ledger: balances, leaderboard, epochs, minting, anchoring.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Receipts: where one stands, and whether it is in an anchored epoch root.
    #[command(subcommand)]
    Receipt(ReceiptCommand),
    /// Reputation scores as this node's book holds them (schedulers and ledger
    /// peers keep one): score per mille, probation, verified / failed / lost
    /// outcomes. Give a NODE (peer id) for one node.
    Reputation {
        /// A node's peer id (default: every node in the book).
        node: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a bootstrap peer and N nodes on loopback, as child processes.
    ///
    /// Each node gets its own data dir under --dir and free ports; the API
    /// URL of each is printed. Ctrl-C (or SIGTERM) stops them all.
    Devnet {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Directory for the nodes' data dirs and logs (reused across runs).
        #[arg(long, default_value = "devnet")]
        dir: PathBuf,
        /// Run the demo: submit a builtin render job from a node that is not
        /// a scheduler, show its progress, fetch and verify the frames into
        /// DIR/frames, then stop the mesh.
        #[arg(long)]
        demo: bool,
        /// Frames the demo renders.
        #[arg(long, default_value_t = 24, value_name = "N")]
        demo_frames: u32,
    },
    /// Render one frame (or a region of it) with the builtin renderer, locally.
    Render(RenderArgs),
}

/// `rendertrust render`: a local builtin render, no mesh involved. The same
/// inputs give the same PNG bytes on every x86-64 machine.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["scene", "default_scene"]))]
struct RenderArgs {
    /// Scene file (TOML; format in node/src/runtime/builtin/scene.rs).
    #[arg(long, value_name = "FILE")]
    scene: Option<PathBuf>,
    /// Render the embedded default scene (the demo's and the benchmark's).
    #[arg(long)]
    default_scene: bool,
    /// Frame number (the camera orbits with it).
    #[arg(long, default_value_t = 0)]
    frame: u32,
    /// Image width, pixels.
    #[arg(long, default_value_t = 320)]
    width: u32,
    /// Image height, pixels.
    #[arg(long, default_value_t = 180)]
    height: u32,
    /// Only this region, as X,Y,W,H (pixels, from the top left).
    #[arg(long, value_name = "X,Y,W,H")]
    region: Option<String>,
    /// Output PNG file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Start the node and run until Ctrl-C / SIGTERM.
    ///
    /// Settings come from, highest first: flags, environment
    /// (RENDERTRUST_<SETTING>), the config file, built-in defaults. See
    /// node/rendertrust.toml for every setting, documented.
    Start(StartArgs),
}

#[derive(Debug, Args)]
struct StartArgs {
    /// Config file (TOML).
    #[arg(long, env = "RENDERTRUST_CONFIG")]
    config: Option<PathBuf>,
    /// Data dir: identity key, store, logs.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (multiaddr), repeatable, e.g. /ip4/0.0.0.0/udp/4001/quic-v1.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Bootstrap peer (multiaddr ending in /p2p/<peer id>), repeatable.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Roles, comma-separated: worker, scheduler, ledger, relay.
    #[arg(long, value_name = "LIST")]
    roles: Option<String>,
    /// Address of the local API (a token is required off loopback).
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// Seconds between capacity adverts (also sent at once on any change).
    #[arg(long, value_name = "SECS")]
    advert_interval_secs: Option<u64>,
    /// Seconds a node stays in the capacity table after its last advert.
    #[arg(long, value_name = "SECS")]
    capacity_ttl_secs: Option<u64>,
    /// Tasks this node runs at once.
    #[arg(long, value_name = "N")]
    max_tasks: Option<u16>,
    /// Seconds without a heartbeat before a scheduler re-offers a worker's task.
    #[arg(long, value_name = "SECS")]
    heartbeat_timeout_secs: Option<u64>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Anchor backend of a ledger: journal (default, embedded) or evm.
    #[arg(long, value_name = "BACKEND")]
    anchor_backend: Option<String>,
    /// evm anchor backend: the chain's JSON-RPC URL.
    #[arg(long, value_name = "URL")]
    anchor_rpc_url: Option<String>,
    /// evm anchor backend: file holding the signer's private key (hex).
    #[arg(long, value_name = "FILE")]
    anchor_key_file: Option<PathBuf>,
    /// evm anchor backend: the anchor contract's address.
    #[arg(long, value_name = "ADDRESS")]
    anchor_contract: Option<String>,
    /// Ledger: peer id of the mint authority (the only key whose mints count).
    #[arg(long, value_name = "PEER_ID")]
    mint_authority: Option<String>,
    /// Ledger: genesis credits, PEER_ID=CREDITS (repeatable; replaces [ledger.genesis]).
    #[arg(long = "genesis", value_name = "PEER_ID=CREDITS")]
    genesis: Vec<String>,
    /// Ledger: epoch length in seconds (every ledger peer must use the same).
    #[arg(long, value_name = "SECS")]
    epoch_secs: Option<u64>,
    /// Ledger: seconds after its end an epoch closes.
    #[arg(long, value_name = "SECS")]
    epoch_grace_secs: Option<u64>,
    /// Ledger: seconds after closing an epoch turns final without agreement.
    #[arg(long, value_name = "SECS")]
    reconcile_secs: Option<u64>,
    /// TEST ONLY (debug builds with the feature dishonest-test-hooks): make
    /// this worker cheat: wrong-output (corrupts its output, signs it),
    /// lazy (returns a blank image without rendering) or slow (accepts, then
    /// sleeps past the deadline).
    #[cfg(feature = "dishonest-test-hooks")]
    #[arg(long, env = "RENDERTRUST_DISHONEST", value_name = "MODE")]
    dishonest: Option<rendertrust_node::jobs::dishonest::Dishonesty>,
}

#[derive(Debug, Args, Clone)]
struct ClientArgs {
    /// The node's API URL.
    #[arg(long, env = "RENDERTRUST_API", default_value = DEFAULT_API_URL)]
    api: String,
    /// Bearer token for the API.
    #[arg(long, env = "RENDERTRUST_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// The node's capacity table: every node it sees, with its hardware.
    Capacity(ClientArgs),
    /// Nodes providing a role (worker, scheduler, ledger, relay), found in Kademlia.
    Roles {
        /// The role.
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Submit a job from this node to the mesh.
    ///
    /// Examples:
    ///   rendertrust job submit --kind builtin --frames 1-24 --watch
    ///   rendertrust job submit --kind blender --scene shot.blend --frames 1-240 --min-runtime-version 3.4
    ///   rendertrust job submit --kind process --input data=in.csv --frames 1-10 -- /usr/bin/sort -o {out} /job/in/data
    ///
    /// Inputs are sealed on this node with a fresh key; only the workers a
    /// scheduler assigns get that key. `--watch` follows the job to its end.
    #[command(verbatim_doc_comment)]
    Submit(Box<SubmitArgs>),
    /// A job's state and its tasks (ID: full id or a unique prefix).
    Status {
        /// Job id or prefix.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Jobs created on this node.
    List(ClientArgs),
    /// Follow a job until it ends, with a progress bar per running task.
    Watch {
        /// Job id or prefix.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job: no further task is placed, no further result accepted.
    Cancel {
        /// Job id or prefix.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Download a job's accepted outputs, check each against the hash its
    /// worker signed, and write them to a directory.
    Fetch {
        /// Job id or prefix.
        id: String,
        /// Directory to write the frames to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// What runs: builtin (deterministic renderer), blender, or process (a sandboxed command).
    #[arg(long, value_name = "KIND", default_value = "builtin")]
    kind: String,
    /// Scene file (input 0): a .blend for blender, a scene TOML for builtin (default: the embedded demo scene).
    #[arg(long, value_name = "FILE")]
    scene: Option<PathBuf>,
    /// Further input, NAME=PATH (repeatable); tasks see it at /job/in/NAME.
    #[arg(long = "input", value_name = "NAME=PATH")]
    inputs: Vec<String>,
    /// Frames: N, A-B or A-B:STEP.
    #[arg(long, value_name = "RANGE", conflicts_with = "tiles")]
    frames: Option<String>,
    /// Split one frame into COLSxROWS tiles instead (with --frame).
    #[arg(long, value_name = "COLSxROWS")]
    tiles: Option<String>,
    /// The frame to tile (with --tiles).
    #[arg(long, value_name = "N", default_value_t = 1)]
    frame: u32,
    /// Output width in pixels.
    #[arg(long)]
    width: Option<u32>,
    /// Output height in pixels.
    #[arg(long)]
    height: Option<u32>,
    /// Blender engine: cycles or eevee.
    #[arg(long)]
    engine: Option<String>,
    /// Most you pay per task, credits.
    #[arg(long, value_name = "CREDITS")]
    max_price: Option<u64>,
    /// Required GPU vendor: nvidia, amd, intel, apple.
    #[arg(long, value_name = "VENDOR")]
    gpu_vendor: Option<String>,
    /// Minimum VRAM, e.g. 8G.
    #[arg(long, value_name = "SIZE")]
    min_vram: Option<String>,
    /// Minimum RAM, e.g. 16G.
    #[arg(long, value_name = "SIZE")]
    min_ram: Option<String>,
    /// Minimum runtime version, e.g. 3.4.
    #[arg(long, value_name = "VERSION")]
    min_runtime_version: Option<String>,
    /// Seconds until the job's deadline.
    #[arg(long, value_name = "SECS")]
    deadline_secs: Option<u64>,
    /// The process command is bit-exact for the same input (allows exact verification).
    #[arg(long)]
    deterministic: bool,
    /// How results are verified: none (trust the workers), quorum (a sampled
    /// task runs on K workers whose output hashes must agree; for bit-exact
    /// jobs) or spot-check (a random crop of a sampled task is re-rendered
    /// elsewhere and compared by SSIM). Default: quorum for builtin and
    /// --deterministic process jobs, spot-check for blender and other process
    /// jobs (docs/trust.md).
    #[arg(long = "verify", value_name = "POLICY", value_parser = ["none", "quorum", "spot-check"])]
    verify_policy: Option<String>,
    /// Fraction of tasks verified, per mille (0-1000; default 100). New or
    /// recently caught workers are verified on every task anyway.
    #[arg(long, value_name = "PERMILLE")]
    sample_permille: Option<u16>,
    /// Quorum: workers that run each sampled task (2-5; default 2).
    #[arg(long, value_name = "K")]
    quorum_k: Option<u8>,
    /// Spot-check: crop side as a fraction of the task's region side, per mille (1-1000; default 250, 1000 for process jobs).
    #[arg(long, value_name = "PERMILLE")]
    crop_permille: Option<u16>,
    /// Spot-check: least similarity (SSIM x 1000, 0-1000; default 900) for a crop to pass.
    #[arg(long, value_name = "MILLI")]
    ssim_threshold: Option<u16>,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    client: ClientArgs,
    /// The command of a process job (after --).
    #[arg(last = true, value_name = "ARGV")]
    argv: Vec<String>,
}

impl SubmitArgs {
    fn request(&self) -> Result<SubmitRequest> {
        let kind = match self.kind.as_str() {
            "builtin" => KindRequest::Builtin,
            "blender" => KindRequest::Blender {
                engine: self.engine.clone(),
            },
            "process" => KindRequest::Process {
                argv: self.argv.clone(),
                deterministic: self.deterministic,
            },
            other => anyhow::bail!("--kind {other:?}: expected builtin, blender or process"),
        };
        if !self.argv.is_empty() && !matches!(kind, KindRequest::Process { .. }) {
            anyhow::bail!("a command after -- is only for --kind process");
        }
        let mut inputs = Vec::new();
        for i in &self.inputs {
            let (name, path) = i
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--input {i:?}: expected NAME=PATH"))?;
            inputs.push(NamedPath {
                name: name.to_owned(),
                path: PathBuf::from(path),
            });
        }
        let tiles = match &self.tiles {
            None => None,
            Some(t) => {
                let (c, r) = t.split_once(['x', 'X']).ok_or_else(|| {
                    anyhow::anyhow!("--tiles {t:?}: expected COLSxROWS, e.g. 4x4")
                })?;
                let bad =
                    || anyhow::anyhow!("--tiles {t:?}: expected COLSxROWS with numbers, e.g. 4x4");
                Some(TilesRequest {
                    frame: self.frame,
                    cols: c.trim().parse().map_err(|_| bad())?,
                    rows: r.trim().parse().map_err(|_| bad())?,
                })
            }
        };
        let mut request = SubmitRequest {
            kind,
            scene: self.scene.clone(),
            inputs,
            frames: self.frames.clone(),
            tiles,
            width: self.width,
            height: self.height,
            max_price_per_task: self.max_price,
            requirements: RequirementsRequest {
                gpu_vendor: self.gpu_vendor.clone(),
                min_vram: self.min_vram.clone(),
                min_ram: self.min_ram.clone(),
                min_runtime_version: self.min_runtime_version.clone(),
            },
            deadline_secs: self.deadline_secs,
            verify: VerifyRequest {
                policy: self.verify_policy.clone(),
                sample_permille: self.sample_permille,
                quorum_k: self.quorum_k,
                crop_permille: self.crop_permille,
                min_similarity_milli: self.ssim_threshold,
            },
        };
        jobs_cli::absolutize(&mut request)?;
        Ok(request)
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print the node's peer id and public keys (never the secrets).
    Show {
        /// Data dir holding the keys.
        #[arg(long, env = "RENDERTRUST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ReceiptCommand {
    /// Where a receipt stands: settled, outranked, waiting for its escrow,
    /// unpaid (and why), or unknown; its epoch and content.
    ///
    /// Receipt ids are in `rendertrust job status ID --json` (tasks[].receipt_id).
    Show {
        /// Receipt id (64 hex digits).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Check that a receipt is in an anchored epoch root, and say why or why not.
    ///
    /// Fetches the receipt's inclusion proof from a ledger peer (through the
    /// node's API), reads the root the epoch's anchorer anchored (journal:
    /// the ledger's signed, hash-chained headers, re-verified here; evm: the
    /// anchor contract, read through --rpc-url) and checks the proof against
    /// it. Prints VALID, INVALID, NOT ANCHORED, TAMPERED or UNKNOWN with the
    /// reason; exits non-zero unless VALID.
    Verify {
        /// Receipt id (64 hex digits).
        id: String,
        /// JSON-RPC URL of the chain, for roots anchored on an EVM chain
        /// (default: [anchor] rpc_url of --config).
        #[arg(long, env = "RENDERTRUST_ANCHOR_RPC_URL", value_name = "URL")]
        rpc_url: Option<String>,
        /// The anchor contract to trust (default: the one the ledger names).
        #[arg(long, value_name = "ADDRESS")]
        contract: Option<String>,
        /// Config file to read [anchor] rpc_url from.
        #[arg(long, env = "RENDERTRUST_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// A node's credits (default: the node behind --api).
    Balance {
        /// Peer id of the node.
        node: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The nodes that earned most as workers.
    Leaderboard {
        /// Rows.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Epochs of a ledger peer: receipts, root, finality, where each was anchored.
    Epochs {
        /// Newest epochs shown.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mint credits (the mint authority only): signs here, the node publishes.
    ///
    /// Ledger peers honour a mint only if it is signed by the key their
    /// [ledger] mint_authority names. The key never leaves this process.
    Mint {
        /// Who receives the credits (peer id).
        #[arg(long, value_name = "PEER_ID")]
        to: String,
        /// Credits.
        #[arg(long, value_name = "N")]
        amount: u64,
        /// The authority's key file (32 raw bytes, mode 0600, like identity.key).
        #[arg(long, value_name = "FILE")]
        authority_key: PathBuf,
        /// Makes equal grants distinct (default: the time in ms).
        #[arg(long)]
        nonce: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deploy the anchor contract (node/contracts/Anchor.sol) to an EVM chain.
    ///
    /// Sends one deployment transaction from the key's account and prints the
    /// contract's address: put it in [anchor] contract (with backend = "evm")
    /// on every ledger that anchors there. The bytecode is the one committed
    /// in node/contracts/Anchor.json. Try it on a local chain started with
    /// scripts/anvil.sh.
    DeployContract {
        /// The chain's JSON-RPC URL.
        #[arg(long, env = "RENDERTRUST_ANCHOR_RPC_URL", value_name = "URL")]
        rpc_url: String,
        /// File holding the deploying account's private key, hex (it pays the gas).
        #[arg(long, env = "RENDERTRUST_ANCHOR_KEY_FILE", value_name = "FILE")]
        key_file: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,libp2p_gossipsub=warn,libp2p_kad=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn client(args: &ClientArgs) -> Result<ApiClient> {
    ApiClient::new(&args.api, args.token.clone())
}

#[allow(clippy::print_stdout)]
fn print(out: &str) {
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
}

async fn run_job(cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Submit(a) => {
            let request = a.request()?;
            let c = client(&a.client)?;
            let (view, text) = jobs_cli::submit(&c, &request, a.client.json).await?;
            print(&text);
            if a.watch {
                finish_watch(&c, &view.id).await?;
            }
            Ok(())
        }
        JobCommand::Status { id, client: a } => {
            print(&jobs_cli::status(&client(&a)?, &id, a.json).await?);
            Ok(())
        }
        JobCommand::List(a) => {
            print(&jobs_cli::list(&client(&a)?, a.json).await?);
            Ok(())
        }
        JobCommand::Watch { id, client: a } => finish_watch(&client(&a)?, &id).await,
        JobCommand::Cancel { id, client: a } => {
            print(&jobs_cli::cancel(&client(&a)?, &id, a.json).await?);
            Ok(())
        }
        JobCommand::Fetch { id, out, client: a } => {
            print(&jobs_cli::fetch(&client(&a)?, &id, &out, a.json).await?);
            Ok(())
        }
    }
}

/// Watches a job to its end; fails (exit code 1) unless every task was accepted.
async fn finish_watch(c: &ApiClient, id: &str) -> Result<()> {
    let s = jobs_cli::watch(c, id).await?;
    print(&format!(
        "job {}: {:?}; {} of {} task(s) accepted, {} failed",
        s.id, s.state, s.counts.accepted, s.tasks, s.counts.failed
    ));
    if s.state != JobState::Done {
        anyhow::bail!(
            "job {} ended {:?}{}",
            s.id,
            s.state,
            s.reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(NodeCommand::Start(a)) => {
            let overrides = ConfigOverrides {
                data_dir: a.data_dir,
                listen: (!a.listen.is_empty()).then_some(a.listen),
                bootstrap: (!a.bootstrap.is_empty()).then_some(a.bootstrap),
                roles: a.roles,
                api: a.api,
                advert_interval_secs: a.advert_interval_secs,
                capacity_ttl_secs: a.capacity_ttl_secs,
                max_tasks: a.max_tasks,
                heartbeat_timeout_secs: a.heartbeat_timeout_secs,
                log_format: a.log_format,
                anchor_backend: a.anchor_backend,
                anchor_rpc_url: a.anchor_rpc_url,
                anchor_key_file: a.anchor_key_file,
                anchor_contract: a.anchor_contract,
                mint_authority: a.mint_authority,
                genesis: (!a.genesis.is_empty()).then_some(a.genesis),
                epoch_secs: a.epoch_secs,
                epoch_grace_secs: a.epoch_grace_secs,
                reconcile_secs: a.reconcile_secs,
                ..ConfigOverrides::default()
            };
            #[allow(unused_mut)]
            let mut config =
                Config::load(a.config.as_deref(), &overrides).context("loading configuration")?;
            #[cfg(feature = "dishonest-test-hooks")]
            {
                config.dishonest = a.dishonest;
            }
            init_logging(config.log_format);
            node::start(config).await
        }
        Command::Status(a) => {
            print(&cli::status(&client(&a)?, a.json).await?);
            Ok(())
        }
        Command::Mesh(MeshCommand::Capacity(a)) => {
            print(&cli::capacity(&client(&a)?, a.json).await?);
            Ok(())
        }
        Command::Mesh(MeshCommand::Roles { role, client: a }) => {
            print(&cli::roles(&client(&a)?, &role, a.json).await?);
            Ok(())
        }
        Command::Job(cmd) => run_job(cmd).await,
        Command::Keys(KeysCommand::Show { data_dir, json }) => {
            let overrides = ConfigOverrides {
                data_dir,
                ..ConfigOverrides::default()
            };
            let config = Config::load(None, &overrides)?;
            print(&keys::show(&config.data_dir, json)?);
            Ok(())
        }
        Command::Reputation { node, client: a } => {
            print(&jobs_cli::reputation(&client(&a)?, node.as_deref(), a.json).await?);
            Ok(())
        }
        Command::Ledger(LedgerCommand::Balance { node, client: a }) => {
            print(&ledger_cli::balance(&client(&a)?, node.as_deref(), a.json).await?);
            Ok(())
        }
        Command::Ledger(LedgerCommand::Leaderboard { limit, client: a }) => {
            print(&ledger_cli::leaderboard(&client(&a)?, limit, a.json).await?);
            Ok(())
        }
        Command::Ledger(LedgerCommand::Epochs { limit, client: a }) => {
            print(&ledger_cli::epochs(&client(&a)?, limit, a.json).await?);
            Ok(())
        }
        Command::Ledger(LedgerCommand::Mint {
            to,
            amount,
            authority_key,
            nonce,
            client: a,
        }) => {
            print(
                &ledger_cli::mint(&client(&a)?, &authority_key, &to, amount, nonce, a.json).await?,
            );
            Ok(())
        }
        Command::Receipt(ReceiptCommand::Show { id, client: a }) => {
            print(&ledger_cli::show(&client(&a)?, &id, a.json).await?);
            Ok(())
        }
        Command::Receipt(ReceiptCommand::Verify {
            id,
            rpc_url,
            contract,
            config,
            client: a,
        }) => {
            let rpc_url = match (rpc_url, &config) {
                (Some(u), _) => Some(u),
                (None, Some(path)) => {
                    Config::load(Some(path), &ConfigOverrides::default())
                        .context("loading configuration")?
                        .anchor
                        .rpc_url
                }
                (None, None) => None,
            };
            let opts = ledger_cli::VerifyOptions { rpc_url, contract };
            let report = ledger_cli::verify(&client(&a)?, &id, &opts).await?;
            print(&ledger_cli::format_report(&report, a.json)?);
            if !report.is_valid() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Ledger(LedgerCommand::DeployContract {
            rpc_url,
            key_file,
            json,
        }) => {
            use rendertrust_node::anchor::evm;
            let url = evm::parse_rpc_url(&rpc_url)?;
            let signer = evm::load_signer(None, Some(&key_file))?;
            let deployment = evm::deploy_contract(&url, signer).await?;
            if json {
                print(&serde_json::to_string_pretty(&deployment)?);
            } else {
                print(&deployment.to_string());
            }
            Ok(())
        }
        Command::Devnet {
            nodes,
            dir,
            demo,
            demo_frames,
        } => {
            init_logging(LogFormat::Text);
            devnet::run(devnet::DevnetOptions {
                nodes,
                dir,
                demo,
                demo_frames,
            })
            .await
        }
        Command::Render(a) => render(a),
    }
}

fn render(a: RenderArgs) -> Result<()> {
    use rendertrust_node::runtime::builtin;
    use rendertrust_protocol::task::Rect;
    let text = match &a.scene {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading scene {}", p.display()))?
        }
        None => builtin::DEFAULT_SCENE.to_owned(),
    };
    let region = match &a.region {
        None => Rect::full(a.width, a.height),
        Some(r) => {
            let v: Vec<u32> = r
                .split(',')
                .map(|n| n.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--region {r:?}: expected X,Y,W,H"))?;
            let [x, y, w, h] = v[..] else {
                anyhow::bail!("--region {r:?}: expected four numbers X,Y,W,H");
            };
            Rect { x, y, w, h }
        }
    };
    let png = builtin::render_png(&text, a.frame, a.width, a.height, region)?;
    std::fs::write(&a.out, png).with_context(|| format!("writing {}", a.out.display()))?;
    Ok(())
}
