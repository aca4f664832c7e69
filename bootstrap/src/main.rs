//! `rendertrust-bootstrap`: a DHT bootstrap, relay and AutoNAT peer. No job logic.
//!
//! Prints its full multiaddr (with `/p2p/<peer id>`) as the first line on
//! stdout, then logs to stderr; stops cleanly on SIGINT or SIGTERM.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use libp2p::Multiaddr;
use rendertrust_bootstrap::server::{Bootstrap, BootstrapConfig};

/// RenderTrust bootstrap peer: the address new nodes dial first.
///
/// It answers Kademlia queries (peer discovery and role lookups), relays
/// connections for nodes behind NAT (circuit relay v2), tells nodes whether
/// they are reachable (AutoNAT v2), and forwards capacity gossip after
/// validating it. It runs no jobs.
///
/// On start it prints one line on stdout, its full address, e.g.
///
///   /ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooW…
///
/// Give that to nodes: `rendertrust node start --bootstrap <that address>`.
/// Logs go to stderr (`RUST_LOG=debug` for more). Stop it with Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(
    name = "rendertrust-bootstrap",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Cli {
    /// Address to listen on; repeat the flag for several. QUIC is
    /// `/ip4/<ip>/udp/<port>/quic-v1`, TCP is `/ip4/<ip>/tcp/<port>`; port 0
    /// picks a free port. The first one is the address printed on stdout
    /// (0.0.0.0 printed as 127.0.0.1).
    #[arg(
        long = "listen",
        value_name = "MULTIADDR",
        default_values = ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"]
    )]
    listen: Vec<Multiaddr>,

    /// Public address to announce to peers (repeatable), e.g.
    /// `/ip4/203.0.113.5/udp/4001/quic-v1` when listening on 0.0.0.0 behind a
    /// port forward. Listen addresses on a specific IP are announced anyway.
    #[arg(long = "external", value_name = "MULTIADDR")]
    external: Vec<Multiaddr>,

    /// Directory for the persistent identity (`identity.key`, 32 raw secret
    /// bytes, mode 0600). Created on first start; the same directory gives the
    /// same peer id on every restart.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "rendertrust-bootstrap-data",
        env = "RENDERTRUST_BOOTSTRAP_DATA_DIR"
    )]
    data_dir: PathBuf,

    /// Log format on stderr: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let key = rendertrust_node::keys::load_or_create_identity(&cli.data_dir)
        .context("loading the bootstrap identity")?;
    let config = BootstrapConfig {
        listen: cli.listen,
        external: cli.external,
        ..BootstrapConfig::default()
    };
    let bootstrap = Bootstrap::start(&key, config)
        .await
        .context("starting the bootstrap peer")?;
    // Handlers first: a script may signal us as soon as it has read the address.
    let stop = shutdown_signal().context("installing signal handlers")?;
    print_address(bootstrap.address()).context("writing the address to stdout")?;
    bootstrap.run(stop).await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this returns.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The one line on stdout: scripts read it to learn where to bootstrap.
#[allow(clippy::print_stdout)]
fn print_address(address: &Multiaddr) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{address}")?;
    out.flush()
}
