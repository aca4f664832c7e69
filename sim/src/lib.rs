//! `rendertrust-sim`: a deterministic discrete-event simulator of the
//! RenderTrust mesh.
//!
//! It drives the same `protocol/` machines the node drives (capacity
//! table, advert schedule, scheduler, worker, creator) with a virtual
//! clock and modelled network, churn, hardware, workload and behaviours.
//! A run is a pure function of its scenario and seed: the same inputs give
//! byte-identical outputs.
//!
//! | module | owns |
//! |---|---|
//! | [`engine`] | the event queue and virtual clock |
//! | [`rng`] | one seeded random stream per component |
//! | [`dist`] | distributions (portable float maths) |
//! | [`scenario`] | the TOML scenario schema, overrides, checks |
//! | [`models`] | network, churn, arrivals, behaviours |
//! | [`world`] | the drivers of the protocol machines and the event loop |
//! | [`credits`] | the seam to the ledger: escrow, refund, settle |
//! | [`metrics`] | what a run measures |
//! | [`output`] | `summary.json` and the CSVs |
//! | [`plot`] | SVG and PNG plots |
//! | [`sweep`] | parameter sweeps in parallel |
//! | [`validate`] | the simulator against a real `rendertrust devnet` |

pub mod credits;
pub mod dist;
pub mod engine;
pub mod metrics;
pub mod models;
pub mod output;
pub mod plot;
pub mod rng;
pub mod scenario;
pub mod sweep;
pub mod validate;
pub mod world;

use std::path::Path;

use anyhow::Result;

use crate::metrics::Metrics;
use crate::output::Summary;
use crate::scenario::Scenario;

/// What `run` produced.
pub struct Outcome {
    /// The summary (also in `summary.json`).
    pub summary: Summary,
    /// Everything measured.
    pub metrics: Metrics,
    /// Events handled by kind, most frequent first (for `--perf`).
    pub events_by_kind: Vec<(&'static str, u64)>,
}

/// Runs a scenario with `seed` and, if `out` is given, writes its files.
/// `progress` is called with (simulated ms, total ms) every simulated minute.
pub fn run(
    sc: &Scenario,
    seed: u64,
    out: Option<&Path>,
    progress: Option<Box<dyn FnMut(u64, u64)>>,
) -> Result<Outcome> {
    let mut w = world::World::new(sc.clone(), seed);
    if let Some(p) = progress {
        w.on_progress(p);
    }
    let r = w.run();
    let summary = output::summarize(sc, seed, &r.metrics);
    if let Some(dir) = out {
        output::write_all(dir, sc, &summary, &r.metrics)?;
        if sc.output.plots {
            plot::plot_run(dir, sc, &r.metrics)?;
        }
    }
    Ok(Outcome {
        summary,
        metrics: r.metrics,
        events_by_kind: r.events_by_kind,
    })
}
