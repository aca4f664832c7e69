//! Parameter sweeps: one scenario, several values of one or more
//! parameters, run in parallel (rayon, one independent run per variant),
//! compared in a table and a plot.
//!
//! Each variant is a separate deterministic run, so the parallelism never
//! reaches an output: results are collected in variant order.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::Serialize;

use crate::output::{Summary, r4};
use crate::plot::{Chart, Line, save};
use crate::scenario::Scenario;

/// One parameter and its values: `churn.rate=0.1,0.2,0.4`.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Dotted path.
    pub path: String,
    /// Values, as TOML text.
    pub values: Vec<String>,
}

impl std::str::FromStr for Param {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Param> {
        let Some((path, values)) = s.split_once('=') else {
            bail!("--param {s:?}: expected PATH=V1,V2,… (e.g. churn.rate=0.1,0.2,0.4)");
        };
        let values: Vec<String> = values
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect();
        if path.trim().is_empty() || values.is_empty() {
            bail!("--param {s:?}: expected PATH=V1,V2,…");
        }
        Ok(Param {
            path: path.trim().to_string(),
            values,
        })
    }
}

/// A variant: one value per parameter.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// `path=value` pairs.
    pub set: Vec<(String, String)>,
    /// Directory name.
    pub name: String,
}

/// Every combination of the parameters' values, in order.
pub fn variants(params: &[Param]) -> Vec<Variant> {
    let mut out = vec![Variant {
        set: Vec::new(),
        name: String::new(),
    }];
    for p in params {
        let mut next = Vec::new();
        for v in &out {
            for value in &p.values {
                let mut set = v.set.clone();
                set.push((p.path.clone(), value.clone()));
                next.push(Variant {
                    name: set
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                        .replace(['/', ' ', '"', '{', '}'], "_"),
                    set,
                });
            }
        }
        out = next;
    }
    out
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The variant.
    pub variant: String,
    /// Its summary.
    pub summary: Summary,
}

/// Runs every variant of `base` (TOML text) in parallel, writing each
/// run's files under `out/<variant>/` and the comparison in `out/`.
pub fn sweep(
    base: &str,
    extra: &[(String, String)],
    params: &[Param],
    seed: Option<u64>,
    out: &Path,
    plots: bool,
) -> Result<Vec<Row>> {
    let vars = variants(params);
    let scenarios: Vec<(Variant, Scenario)> = vars
        .into_iter()
        .map(|v| {
            let mut set = extra.to_vec();
            set.extend(v.set.iter().cloned());
            let mut sc =
                Scenario::parse(base, &set).with_context(|| format!("variant {}", v.name))?;
            sc.output.plots &= plots;
            Ok((v, sc))
        })
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(out)?;
    let rows: Vec<Row> = scenarios
        .par_iter()
        .map(|(v, sc)| {
            let s = seed.unwrap_or(sc.seed);
            let dir = out.join(&v.name);
            let o = crate::run(sc, s, Some(&dir), None)?;
            Ok(Row {
                variant: v.name.clone(),
                summary: o.summary,
            })
        })
        .collect::<Result<_>>()?;
    write_comparison(out, params, &rows)?;
    if plots {
        plot_comparison(out, params, &rows)?;
    }
    if params.iter().any(|p| p.path.starts_with("trust.")) {
        write_trust(out, &rows, plots)?;
    }
    Ok(rows)
}

/// A variant's value of `path` (as written in its name), or `""`.
fn value_of<'a>(variant: &'a str, path: &str) -> &'a str {
    variant
        .split(',')
        .find_map(|kv| kv.strip_prefix(path)?.strip_prefix('='))
        .unwrap_or("")
}

/// The trust sweep's table (`trust.md`, `trust.csv`) and plot (`trust`):
/// verification overhead against wrong results accepted, per policy,
/// sample rate and dishonest fraction (issue 7's measure).
pub fn write_trust(out: &Path, rows: &[Row], plots: bool) -> Result<()> {
    let mut md = String::from(
        "| policy | reputation | sample ‰ | dishonest | GPU overhead % | wrong accepted % | caught % | cheaters' credit share % | tasks failed | makespan p50 s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut csv = String::from(
        "variant,policy,reputation,sample_permille,dishonest_fraction,overhead_pct,wrong_accepted_fraction,caught_rate,cheater_credit_share,tasks_accepted,tasks_failed,makespan_p50_s\n",
    );
    for r in rows {
        let t = &r.summary.trust;
        let policy = value_of(&r.variant, "trust.policy");
        let policy = if policy.is_empty() { "?" } else { policy };
        let rate = value_of(&r.variant, "trust.sample_permille");
        let frac = value_of(&r.variant, "dishonest.fraction");
        let rep = value_of(&r.variant, "trust.reputation");
        let _ = writeln!(
            md,
            "| {policy} | {rep} | {} | {frac} | {:.1} | {:.2} | {:.1} | {:.2} | {} | {:.0} |",
            if policy == "none" { "—" } else { rate },
            t.overhead_pct,
            100.0 * t.wrong_accepted_fraction,
            100.0 * t.caught_rate,
            100.0 * t.cheater_credit_share,
            r.summary.tasks.failed,
            r.summary.makespan_s.p50
        );
        let _ = writeln!(
            csv,
            "{},{policy},{rep},{rate},{frac},{},{},{},{},{},{},{}",
            r.variant,
            t.overhead_pct,
            t.wrong_accepted_fraction,
            t.caught_rate,
            t.cheater_credit_share,
            r.summary.tasks.accepted,
            r.summary.tasks.failed,
            r.summary.makespan_s.p50
        );
    }
    std::fs::write(out.join("trust.md"), md)?;
    std::fs::write(out.join("trust.csv"), csv)?;
    if !plots {
        return Ok(());
    }
    // Without a book: one line per (policy, dishonest fraction) through its
    // sample rates, starting at no verification (x = 0). With a book
    // (probation): one series per policy, every rate and fraction.
    let mut lines: Vec<Line> = Vec::new();
    let mut add = |name: String, point: (f64, f64)| match lines.iter_mut().find(|l| l.name == name)
    {
        Some(l) => {
            if !l.points.contains(&point) {
                l.points.push(point);
            }
        }
        None => lines.push(Line {
            name,
            points: vec![point],
        }),
    };
    for r in rows {
        let policy = value_of(&r.variant, "trust.policy");
        let frac = value_of(&r.variant, "dishonest.fraction");
        let book = value_of(&r.variant, "trust.reputation") == "true";
        let t = &r.summary.trust;
        let point = (r4(t.overhead_pct), r4(100.0 * t.wrong_accepted_fraction));
        match (policy, book) {
            ("none", true) => {}
            ("none", false) => {
                for p in ["quorum", "spot-check"] {
                    add(format!("{p}, no book, {frac} dishonest"), point);
                }
            }
            (p, false) => add(format!("{p}, no book, {frac} dishonest"), point),
            (p, true) => add(format!("{p}, probation, any rate and fraction"), point),
        }
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    save(
        out,
        "trust",
        &Chart {
            title: "verification: GPU overhead against wrong results accepted".into(),
            x: "extra GPU time, % of the accepted results'".into(),
            y: "accepted tasks with a wrong output, %".into(),
            lines,
        },
    )
}

/// The comparison table as text (also `comparison.csv`).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<28} {:>7} {:>7} {:>9} {:>9} {:>9} {:>7} {:>8} {:>7} {:>6}",
        "variant",
        "jobs",
        "done",
        "p50 min",
        "p90 min",
        "wait p90",
        "gpu %",
        "redisp",
        "failed",
        "jain"
    );
    for r in rows {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "{:<28} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>7.1} {:>8} {:>7} {:>6.3}",
            r.variant,
            m.jobs.submitted,
            m.jobs.finished,
            m.makespan_s.p50 / 60.0,
            m.makespan_s.p90 / 60.0,
            m.queue_wait_s.p90,
            m.gpu_utilization * 100.0,
            m.activity.redispatches,
            m.tasks.failed,
            m.credits.jain_workers
        );
    }
    s
}

fn write_comparison(out: &Path, _params: &[Param], rows: &[Row]) -> Result<()> {
    let mut s = String::from(
        "variant,jobs_submitted,jobs_finished,jobs_rejected,makespan_p50_s,makespan_p90_s,makespan_p99_s,queue_wait_p50_s,queue_wait_p90_s,gpu_utilization,redispatches,tasks_failed,takeovers,jain_workers\n",
    );
    for r in rows {
        let m = &r.summary;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.variant,
            m.jobs.submitted,
            m.jobs.finished,
            m.jobs.rejected,
            m.makespan_s.p50,
            m.makespan_s.p90,
            m.makespan_s.p99,
            m.queue_wait_s.p50,
            m.queue_wait_s.p90,
            m.gpu_utilization,
            m.activity.redispatches,
            m.tasks.failed,
            m.activity.takeovers,
            m.credits.jain_workers
        );
    }
    std::fs::write(out.join("comparison.csv"), s)?;
    std::fs::write(out.join("comparison.txt"), table(rows))?;
    Ok(())
}

fn plot_comparison(out: &Path, params: &[Param], rows: &[Row]) -> Result<()> {
    // X axis: the first parameter's value when numeric, else the variant's position.
    let x_of = |i: usize, r: &Row| -> f64 {
        let first = params.first().map(|p| p.path.as_str()).unwrap_or("");
        r.variant
            .split(',')
            .find_map(|kv| {
                kv.strip_prefix(first)?
                    .strip_prefix('=')?
                    .parse::<f64>()
                    .ok()
            })
            .filter(|_| params.len() == 1)
            .unwrap_or(i as f64)
    };
    let line = |name: &str, f: &dyn Fn(&Summary) -> f64| Line {
        name: name.into(),
        points: rows
            .iter()
            .enumerate()
            .map(|(i, r)| (x_of(i, r), r4(f(&r.summary))))
            .collect(),
    };
    let x = if params.len() == 1 {
        params[0].path.clone()
    } else {
        "variant".into()
    };
    save(
        out,
        "comparison",
        &Chart {
            title: "makespan and queue wait by variant".into(),
            x,
            y: "minutes".into(),
            lines: vec![
                line("makespan p50", &|s| s.makespan_s.p50 / 60.0),
                line("makespan p90", &|s| s.makespan_s.p90 / 60.0),
                line("queue wait p90", &|s| s.queue_wait_s.p90 / 60.0),
            ],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_expand_to_every_combination() {
        let p: Vec<Param> = ["churn.rate=0.1,0.2", "arrivals.load=0.5,0.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let v = variants(&p);
        assert_eq!(v.len(), 4);
        assert_eq!(v[1].name, "churn.rate=0.1,arrivals.load=0.9");
        assert!("churn.rate".parse::<Param>().is_err());
        assert!("churn.rate=".parse::<Param>().is_err());
    }
}
