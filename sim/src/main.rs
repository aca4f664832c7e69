//! `rendertrust-sim`: the deterministic mesh simulator (see `sim/README.md`).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use rendertrust_sim::scenario::Scenario;
use rendertrust_sim::sweep::{self, Param};
use rendertrust_sim::validate::{ValidateOptions, validate};

// The advert path allocates and frees small strings and vectors millions of
// times a simulated hour; mimalloc does that faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// RenderTrust mesh simulator: runs the protocol machines of thousands of
/// virtual nodes with a virtual clock. Same scenario and seed, same bytes out.
#[derive(Debug, Parser)]
#[command(name = "rendertrust-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a scenario: writes summary.json, jobs.csv, nodes.csv,
    /// timeseries.csv and plots (SVG and PNG) to --out.
    Run {
        /// The scenario (TOML; see sim/scenarios/).
        scenario: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Override a scenario field, e.g. --set churn.rate=0.3 (repeatable).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Skip the plots.
        #[arg(long)]
        no_plots: bool,
        /// Write the wall time, events/s and peak memory to this JSON file
        /// (kept out of --out, whose files depend only on scenario and seed).
        #[arg(long)]
        perf: Option<PathBuf>,
    },
    /// Run variants of a scenario in parallel and compare them, e.g.
    /// --param churn.rate=0.1,0.2,0.4 (repeat --param for a grid).
    Sweep {
        /// The scenario.
        scenario: PathBuf,
        /// PATH=V1,V2,… (repeatable; variants are every combination).
        #[arg(long, required = true)]
        param: Vec<Param>,
        /// Output directory (one sub-directory per variant, plus comparison.*).
        #[arg(long)]
        out: PathBuf,
        /// Seed of every variant (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Override a scenario field in every variant (repeatable).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Skip the plots.
        #[arg(long)]
        no_plots: bool,
    },
    /// Run one small job on a real `rendertrust devnet` and in the
    /// simulator, and print how close completion time and placement are.
    Validate {
        /// The `rendertrust` binary (default: next to this one).
        #[arg(long)]
        rendertrust: Option<PathBuf>,
        /// Devnet nodes.
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Frames of the job.
        #[arg(long, default_value = "1-24")]
        frames: String,
        /// Output width.
        #[arg(long, default_value_t = 320)]
        width: u32,
        /// Output height.
        #[arg(long, default_value_t = 180)]
        height: u32,
        /// Devnet directory (default: a fresh temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// Simulator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds per frame for the simulator (default: `rendertrust
        /// render` of one frame, timed on this machine).
        #[arg(long)]
        seconds_per_frame: Option<f64>,
    },
    /// Check a scenario and print it with every default filled in.
    Check {
        /// The scenario.
        scenario: PathBuf,
        /// Override a scenario field (repeatable).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
    },
}

fn overrides(set: &[String]) -> Result<Vec<(String, String)>> {
    set.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => bail!("--set {s:?}: expected PATH=VALUE"),
        })
        .collect()
}

/// Peak resident memory of this process, KiB (Linux), if known.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            scenario,
            out,
            seed,
            set,
            no_plots,
            perf,
        } => {
            let mut sc = Scenario::load(&scenario, &overrides(&set)?)?;
            sc.output.plots &= !no_plots;
            let seed = seed.unwrap_or(sc.seed);
            let bar = ProgressBar::new(1);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} simulated {msg} [{bar:40}] {percent}% ({elapsed} wall)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let b = bar.clone();
            let started = Instant::now();
            let outcome = rendertrust_sim::run(
                &sc,
                seed,
                Some(&out),
                Some(Box::new(move |done, total| {
                    b.set_length(total / 1000);
                    b.set_position(done / 1000);
                    b.set_message(format!("{} min", done / 60_000));
                })),
            )?;
            bar.finish_and_clear();
            let wall = started.elapsed();
            let s = &outcome.summary;
            println!(
                "{}: seed {seed}, {} nodes, {:.0} s simulated; jobs {} submitted, {} finished, {} rejected; tasks {} done, {} failed",
                s.scenario,
                s.nodes,
                s.simulated_s,
                s.jobs.submitted,
                s.jobs.finished,
                s.jobs.rejected,
                s.tasks.done,
                s.tasks.failed
            );
            println!(
                "makespan p50 {:.1} min, p90 {:.1} min; queue wait p90 {:.1} s; GPU utilization {:.1} %; re-dispatches {}; Jain {:.3}",
                s.makespan_s.p50 / 60.0,
                s.makespan_s.p90 / 60.0,
                s.queue_wait_s.p90,
                s.gpu_utilization * 100.0,
                s.activity.redispatches,
                s.credits.jain_workers
            );
            let c = &s.conservation;
            println!(
                "conservation: tasks accounted {}, all closed {}, credits balanced {}, no double escrow {}",
                c.tasks_accounted, c.all_tasks_closed, c.credits_balanced, c.no_double_escrow
            );
            let rate = s.events as f64 / wall.as_secs_f64().max(1e-9);
            let rss = peak_rss_kib();
            eprintln!(
                "wall {:.2} s, {} events ({:.2} M events/s), peak RSS {}",
                wall.as_secs_f64(),
                s.events,
                rate / 1e6,
                rss.map_or_else(
                    || "unknown".into(),
                    |k| format!("{:.1} MiB", k as f64 / 1024.0)
                )
            );
            println!("outputs in {}", out.display());
            if let Some(p) = perf {
                let v = serde_json::json!({
                    "scenario": s.scenario, "seed": seed, "nodes": s.nodes,
                    "simulated_s": s.simulated_s, "events": s.events,
                    "wall_s": wall.as_secs_f64(), "events_per_s": rate,
                    "peak_rss_kib": rss,
                    "events_by_kind": outcome
                        .events_by_kind
                        .iter()
                        .map(|(k, n)| ((*k).to_owned(), serde_json::json!(n)))
                        .collect::<serde_json::Map<_, _>>(),
                });
                std::fs::write(&p, serde_json::to_string_pretty(&v)? + "\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            if let Some(l) = &s.ledger {
                println!(
                    "ledger: {} events admitted, {} refused; {} credits in escrow; balanced {}",
                    l.admitted, l.refused, l.escrowed, l.balanced
                );
            }
            if !(c.tasks_accounted
                && c.credits_balanced
                && c.no_double_escrow
                && c.ledger_balanced != Some(false))
            {
                bail!("a conservation check failed (see summary.json)");
            }
        }
        Cmd::Sweep {
            scenario,
            param,
            out,
            seed,
            set,
            jobs,
            no_plots,
        } => {
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            if let Some(j) = jobs {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(j.max(1))
                    .build_global()
                    .context("setting up the thread pool")?;
            }
            let n = sweep::variants(&param).len();
            let bar = ProgressBar::new_spinner();
            bar.set_message(format!("{n} variants running"));
            bar.enable_steady_tick(Duration::from_millis(200));
            let started = Instant::now();
            let rows = sweep::sweep(&text, &overrides(&set)?, &param, seed, &out, !no_plots)?;
            bar.finish_and_clear();
            print!("{}", sweep::table(&rows));
            eprintln!(
                "{n} variants in {:.1} s wall",
                started.elapsed().as_secs_f64()
            );
            println!("comparison in {}", out.join("comparison.csv").display());
        }
        Cmd::Validate {
            rendertrust,
            nodes,
            frames,
            width,
            height,
            dir,
            timeout_s,
            seed,
            seconds_per_frame,
        } => {
            let rendertrust = match rendertrust {
                Some(p) => p,
                None => std::env::current_exe()?
                    .parent()
                    .map(|d| d.join("rendertrust"))
                    .context("locating rendertrust next to rendertrust-sim")?,
            };
            let dir = match dir {
                Some(d) => d,
                None => std::env::temp_dir()
                    .join(format!("rendertrust-validate-{}", std::process::id())),
            };
            let c = validate(&ValidateOptions {
                rendertrust,
                nodes,
                frames,
                width,
                height,
                dir,
                timeout: Duration::from_secs(timeout_s),
                seed,
                seconds_per_frame,
            })?;
            print!("{}", c.report());
        }
        Cmd::Check { scenario, set } => {
            let sc = Scenario::load(&scenario, &overrides(&set)?)?;
            print!("{}", toml::to_string(&sc)?);
        }
    }
    Ok(())
}
