//! `rendertrust-sim`: the deterministic mesh simulator (work in progress, see issue "The mesh simulator").
use clap::Parser;

/// RenderTrust mesh simulator.
#[derive(Debug, Parser)]
#[command(name = "rendertrust-sim", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
