//! The files a run writes: `summary.json`, `jobs.csv`, `nodes.csv`,
//! `timeseries.csv`. Byte-identical for the same scenario and seed: every
//! collection is written in a fixed order and floats are rounded to a
//! fixed number of decimals. Nothing measured on the host (wall time,
//! memory) goes into these files; the CLI prints that on stderr.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::credits::{CreditTotals, jain};
use crate::metrics::{Metrics, quantile};
use crate::scenario::Scenario;

/// Rounds to 4 decimals (stable, readable output).
pub fn r4(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10_000.0).round() / 10_000.0
    } else {
        0.0
    }
}

/// Quantiles of a distribution, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Values.
    pub n: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Quantiles {
    /// Of unsorted values.
    pub fn of(mut v: Vec<f64>) -> Quantiles {
        v.sort_by(f64::total_cmp);
        let q = |p| r4(quantile(&v, p).unwrap_or(0.0));
        Quantiles {
            n: v.len() as u64,
            mean: r4(if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: q(1.0),
        }
    }
}

/// Job counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobCounts {
    /// Created by creators.
    pub submitted: u64,
    /// Every task accepted or failed at the creator.
    pub finished: u64,
    /// No scheduler took it (all busy or none live).
    pub rejected: u64,
    /// Not finished (nor rejected) when the run ended.
    pub unfinished: u64,
    /// Arrivals dropped because no creator was online.
    pub no_creator: u64,
}

/// Task counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskCounts {
    /// Tasks of jobs a scheduler took.
    pub submitted: u64,
    /// Done (the owner scheduler's word).
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
    /// Neither at the end.
    pub open: i64,
    /// Accepted (countersigned) by creators.
    pub accepted: u64,
    /// Accepted with a wrong output (undetected: no verification policy yet).
    pub wrong_accepted: u64,
}

/// Protocol activity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Activity {
    /// Offers sent.
    pub offers: u64,
    /// Offers declined.
    pub declines: u64,
    /// Attempts accepted (escrowed).
    pub assignments: u64,
    /// Assignments after a task's first (re-dispatches).
    pub redispatches: u64,
    /// Cancels sent.
    pub cancels: u64,
    /// Runs aborted at their deadline.
    pub aborts: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Replications sent / applied.
    pub replications: u64,
    /// Replications applied.
    pub replicas_applied: u64,
    /// Takeovers.
    pub takeovers: u64,
    /// Owned jobs a scheduler gave up to a newer owner (it came back after a
    /// replica took them over).
    pub yields: u64,
    /// `Queued` events.
    pub queued_events: u64,
    /// Adverts published.
    pub adverts: u64,
    /// Adverts delivered to schedulers.
    pub advert_deliveries: u64,
    /// Requests sent.
    pub messages: u64,
    /// Requests lost.
    pub rpc_lost: u64,
    /// Gossip deliveries lost.
    pub gossip_lost: u64,
    /// Results given up after retries.
    pub results_dropped: u64,
    /// Output fetches given up.
    pub fetches_failed: u64,
    /// Done tasks run again because the creator could not fetch the output.
    pub unfetchable_reruns: u64,
    /// Nodes that went offline.
    pub departures: u64,
}

/// Conservation checks (every run).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Conservation {
    /// Every task of a finished run ended done or failed (`open == 0`),
    /// and done + failed + open = submitted.
    pub tasks_accounted: bool,
    /// No task left open.
    pub all_tasks_closed: bool,
    /// Escrowed = settled + refunded + still open.
    pub credits_balanced: bool,
    /// No attempt escrowed twice.
    pub no_double_escrow: bool,
    /// The ledger machine's books balance (`None`: ledger not driven).
    pub ledger_balanced: Option<bool>,
}

/// Credits.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreditSummary {
    /// Totals.
    #[serde(flatten)]
    pub totals: CreditTotals,
    /// Jain's index of credits over all workers.
    pub jain_workers: f64,
    /// Jain's index of credits per unit of capacity-time (speed × slots × time online).
    pub jain_per_capacity: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Workers.
    pub workers: usize,
    /// Simulated time, seconds.
    pub simulated_s: f64,
    /// Events processed.
    pub events: u64,
    /// Render capacity (reference seconds per second, all workers).
    pub capacity: f64,
    /// Background arrival rate, jobs per hour.
    pub arrival_rate_per_hour: f64,
    /// Jobs.
    pub jobs: JobCounts,
    /// Tasks.
    pub tasks: TaskCounts,
    /// Job makespan (submission to last task accepted), seconds.
    pub makespan_s: Quantiles,
    /// Task queue wait (submission to first assignment), seconds.
    pub queue_wait_s: Quantiles,
    /// Mean fraction of online slots rendering while jobs arrive.
    pub gpu_utilization: f64,
    /// Mean fraction of online slots holding a task while jobs arrive.
    pub slot_utilization: f64,
    /// Protocol activity.
    pub activity: Activity,
    /// Credits.
    pub credits: CreditSummary,
    /// Conservation checks.
    pub conservation: Conservation,
    /// The ledger machine's end state (`ledger.enabled`).
    pub ledger: Option<crate::metrics::LedgerReport>,
    /// Verification: what it cost and caught.
    pub trust: TrustSummary,
}

/// Verification's cost and effect (sim/README.md, "Trust").
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrustSummary {
    /// The jobs' policy (`trust.policy`, resolved).
    pub policy: String,
    /// GPU time beyond the accepted results' (verification lines, re-runs
    /// after catches, lost and failed runs), % of the accepted results'.
    pub overhead_pct: f64,
    /// Of the accepted tasks, the fraction with a wrong output.
    pub wrong_accepted_fraction: f64,
    /// Of the wrong results returned, the fraction caught.
    pub caught_rate: f64,
    /// Credits settled to dishonest workers, and their share of all settled.
    pub cheater_credits: u64,
    /// `cheater_credits` / all credits settled.
    pub cheater_credit_share: f64,
    /// The counters.
    pub counts: crate::metrics::TrustMetrics,
}

/// Builds the summary of a run.
pub fn summarize(sc: &Scenario, seed: u64, m: &Metrics) -> Summary {
    let workers: Vec<_> = m.nodes.iter().filter(|n| n.capacity > 0.0).collect();
    let makespans: Vec<f64> = m
        .jobs
        .iter()
        .filter_map(|j| j.makespan_ms)
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    let waits: Vec<f64> = m
        .task_waits_ms
        .iter()
        .map(|ms| f64::from(*ms) / 1000.0)
        .collect();
    let during: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.t_s > 0 && s.t_s <= sc.duration_s && s.online_slots > 0)
        .collect();
    let mean = |f: &dyn Fn(&crate::metrics::Sample) -> f64| {
        if during.is_empty() {
            0.0
        } else {
            r4(during.iter().map(|s| f(s)).sum::<f64>() / during.len() as f64)
        }
    };
    let t = m.credits.totals();
    let closed = m.tasks_done + m.tasks_failed;
    Summary {
        scenario: sc.name.clone(),
        seed,
        nodes: m.nodes.len(),
        workers: workers.len(),
        simulated_s: r4(m.end_ms as f64 / 1000.0),
        events: m.events,
        capacity: r4(m.capacity),
        arrival_rate_per_hour: r4(m.arrival_rate_per_hour),
        jobs: JobCounts {
            submitted: m.jobs_submitted,
            finished: m.jobs_finished,
            rejected: m.jobs_rejected,
            unfinished: m.unfinished_jobs,
            no_creator: m.jobs_no_creator,
        },
        tasks: TaskCounts {
            submitted: m.tasks_submitted,
            done: m.tasks_done,
            failed: m.tasks_failed,
            open: m.open_tasks,
            accepted: m.tasks_accepted,
            wrong_accepted: m.wrong_accepted,
        },
        makespan_s: Quantiles::of(makespans),
        queue_wait_s: Quantiles::of(waits),
        gpu_utilization: mean(&|s| s.rendering as f64 / s.online_slots as f64),
        slot_utilization: mean(&|s| s.busy_slots as f64 / s.online_slots as f64),
        activity: Activity {
            offers: m.offers,
            declines: m.declines,
            assignments: m.assignments,
            redispatches: m.redispatches,
            cancels: m.cancels,
            aborts: m.aborts,
            heartbeats: m.heartbeats,
            replications: m.replications,
            replicas_applied: m.replicas_applied,
            takeovers: m.takeovers,
            yields: m.yields,
            queued_events: m.queued_events,
            adverts: m.adverts,
            advert_deliveries: m.advert_deliveries,
            messages: m.messages,
            rpc_lost: m.rpc_lost,
            gossip_lost: m.gossip_lost,
            results_dropped: m.results_dropped,
            fetches_failed: m.fetches_failed,
            unfetchable_reruns: m.unfetchable_reruns,
            departures: m.departures,
        },
        credits: CreditSummary {
            totals: t,
            jain_workers: r4(jain(workers.iter().map(|n| n.credits as f64))),
            jain_per_capacity: r4(jain(
                workers
                    .iter()
                    .filter(|n| n.online_ms > 0)
                    .map(|n| n.credits as f64 / (n.capacity * n.online_ms as f64 / 3.6e6)),
            )),
        },
        conservation: Conservation {
            tasks_accounted: closed as i64 + m.open_tasks == m.tasks_submitted as i64,
            all_tasks_closed: m.open_tasks == 0,
            credits_balanced: m.credits.balanced(),
            no_double_escrow: t.double_escrows == 0,
            ledger_balanced: m.ledger.map(|l| l.balanced),
        },
        ledger: m.ledger,
        trust: trust_summary(sc, m, t.settled),
    }
}

fn trust_summary(sc: &Scenario, m: &Metrics, settled: u64) -> TrustSummary {
    let c = m.trust;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { r4(a as f64 / b as f64) };
    let policy = match sc.trust.policy_for(&sc.job_kind()) {
        Ok(rendertrust_protocol::wire::VerificationPolicy::None) | Err(_) => "none".to_string(),
        Ok(rendertrust_protocol::wire::VerificationPolicy::Quorum { sample_permille, k }) => {
            format!("quorum k={k} sample={sample_permille}‰")
        }
        Ok(rendertrust_protocol::wire::VerificationPolicy::SpotCheck {
            sample_permille,
            crop_permille,
            ..
        }) => format!("spot-check crop={crop_permille}‰ sample={sample_permille}‰"),
    };
    TrustSummary {
        policy,
        overhead_pct: r4(100.0
            * ratio(
                c.gpu_ms.saturating_sub(c.gpu_accepted_ms),
                c.gpu_accepted_ms,
            )),
        wrong_accepted_fraction: ratio(m.wrong_accepted, m.tasks_accepted),
        caught_rate: ratio(c.caught, c.wrong_results),
        cheater_credits: c.cheater_credits,
        cheater_credit_share: ratio(c.cheater_credits, settled),
        counts: c,
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(String::new, |v| format!("{:.3}", v as f64 / 1000.0))
}

/// Writes `summary.json`, `jobs.csv`, `nodes.csv` (if asked) and `timeseries.csv`.
pub fn write_all(dir: &Path, sc: &Scenario, summary: &Summary, m: &Metrics) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    let mut json = serde_json::to_string_pretty(summary)?;
    json.push('\n');
    write("summary.json", &json)?;

    let mut s = String::from(
        "job,id,creator,submitted_s,frames,seconds_per_frame,owner,rejected,sched_finished_s,finished_s,makespan_s,tasks_done,tasks_failed,accepted,creator_failed,redispatches,takeovers,wrong_accepted\n",
    );
    for j in &m.jobs {
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{},{:.3},{},{},{},{},{},{},{},{},{},{},{},{}",
            j.index,
            j.id,
            j.creator,
            j.submitted_at as f64 / 1000.0,
            j.frames,
            j.seconds_per_frame,
            j.owner,
            j.rejected,
            opt(j.sched_finished_at),
            opt(j.finished_at),
            opt(j.makespan_ms),
            j.tasks_done,
            j.tasks_failed,
            j.accepted,
            j.creator_failed,
            j.redispatches,
            j.takeovers,
            j.wrong_accepted
        );
    }
    write("jobs.csv", &s)?;

    if sc.output.nodes_csv {
        let mut s = String::from(
            "node,id,group,roles,region,class,behaviour,sessions,online_s,busy_s,utilization,results,accepted,failed,cancelled,wrong_accepted,credits\n",
        );
        for (i, n) in m.nodes.iter().enumerate() {
            let util = if n.online_ms > 0 && n.capacity > 0.0 {
                n.busy_ms as f64 / n.online_ms as f64
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "{i},{},{},{},{},{},{},{},{:.3},{:.3},{:.4},{},{},{},{},{},{}",
                n.id,
                csv_field(&n.group),
                csv_field(&n.roles),
                csv_field(&n.region),
                csv_field(&n.class),
                n.behaviour,
                n.sessions,
                n.online_ms as f64 / 1000.0,
                n.busy_ms as f64 / 1000.0,
                util,
                n.results,
                n.accepted,
                n.failed,
                n.cancelled,
                n.wrong_accepted,
                n.credits
            );
        }
        write("nodes.csv", &s)?;
    }

    let mut s = String::from(
        "t_s,online_workers,online_slots,busy_slots,rendering,gpu_utilization,open_tasks,jobs_open,redispatches,tasks_done,credits_jain\n",
    );
    for p in &m.samples {
        let util = if p.online_slots > 0 {
            p.rendering as f64 / p.online_slots as f64
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.4},{},{},{},{},{:.4}",
            p.t_s,
            p.online_workers,
            p.online_slots,
            p.busy_slots,
            p.rendering,
            util,
            p.open_tasks,
            p.jobs_open,
            p.redispatches,
            p.tasks_done,
            p.credits_jain
        );
    }
    write("timeseries.csv", &s)?;
    Ok(())
}
