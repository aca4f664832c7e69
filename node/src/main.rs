//! `rendertrust`: the node and its command-line interface.
//!
//! Commands go noun then verb (`node start`, `mesh capacity`). Client commands
//! talk to a running node through its local API (`--api URL`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rendertrust_node::cli::{self, ApiClient, DEFAULT_API_URL};
use rendertrust_node::config::{Config, ConfigOverrides, LogFormat};
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
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
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
                log_format: a.log_format,
                ..ConfigOverrides::default()
            };
            let config =
                Config::load(a.config.as_deref(), &overrides).context("loading configuration")?;
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
        Command::Keys(KeysCommand::Show { data_dir, json }) => {
            let overrides = ConfigOverrides {
                data_dir,
                ..ConfigOverrides::default()
            };
            let config = Config::load(None, &overrides)?;
            print(&keys::show(&config.data_dir, json)?);
            Ok(())
        }
        Command::Devnet { nodes, dir } => {
            init_logging(LogFormat::Text);
            devnet::run(devnet::DevnetOptions { nodes, dir }).await
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
