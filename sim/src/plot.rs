//! Plots (SVG and PNG) with `plotters`.
//!
//! Text is drawn with the `ab_glyph` backend and a font embedded in the
//! binary (`sim/assets/DejaVuSans.ttf`, Bitstream Vera licence, see
//! `sim/assets/DejaVu-LICENSE.txt`): no system fonts, fontconfig or
//! freetype are needed, and the output does not depend on what fonts the
//! machine has. Same data → same bytes.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::metrics::Metrics;
use crate::scenario::Scenario;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn fonts() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType font shipped with the crate.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Size of every plot, pixels.
const SIZE: (u32, u32) = (900, 560);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line of a chart.
pub struct Line {
    /// Legend.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
pub struct Chart {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x: String,
    /// Y axis label.
    pub y: String,
    /// Lines.
    pub lines: Vec<Line>,
}

fn range(lines: &[Line], pick: fn(&(f64, f64)) -> f64, zero: bool) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for p in lines.iter().flat_map(|l| l.points.iter()) {
        let v = pick(p);
        if v.is_finite() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    (lo, hi + (hi - lo) * 0.05)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {}: {e:?}", c.title);
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1) = range(&c.lines, |p| p.0, false);
    let (y0, y1) = range(&c.lines, |p| p.1, true);
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(c.x.as_str())
        .y_desc(c.y.as_str())
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (i, l) in c.lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(l.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        // A few points (a sweep): mark each, so a single point shows.
        if l.points.len() <= 12 {
            chart
                .draw_series(l.points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(e)?;
        }
    }
    if c.lines.len() > 1 || c.lines.iter().any(|l| !l.name.is_empty()) {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Writes `name.svg` and `name.png` in `dir`.
pub fn save(dir: &Path, name: &str, c: &Chart) -> Result<()> {
    fonts();
    let svg = dir.join(format!("{name}.svg"));
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), c)?;
    let png = dir.join(format!("{name}.png"));
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), c)?;
    Ok(())
}

/// The empirical CDF of values: (value, fraction ≤ value), at most ~2000 points.
pub fn cdf(mut v: Vec<f64>) -> Vec<(f64, f64)> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return Vec::new();
    }
    let step = (n / 2000).max(1);
    let mut out: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (v[i], (i + 1) as f64 / n as f64))
        .collect();
    out.push((v[n - 1], 1.0));
    out
}

/// Every plot of a run.
pub fn plot_run(dir: &Path, sc: &Scenario, m: &Metrics) -> Result<()> {
    let minutes = |ms: u64| ms as f64 / 60_000.0;
    let makespans: Vec<f64> = m
        .jobs
        .iter()
        .filter_map(|j| j.makespan_ms)
        .map(minutes)
        .collect();
    save(
        dir,
        "makespan_cdf",
        &Chart {
            title: format!("{}: job makespan CDF ({} jobs)", sc.name, makespans.len()),
            x: "makespan (minutes)".into(),
            y: "fraction of jobs".into(),
            lines: vec![Line {
                name: String::new(),
                points: cdf(makespans),
            }],
        },
    )?;
    let waits: Vec<f64> = m
        .task_waits_ms
        .iter()
        .map(|w| f64::from(*w) / 1000.0)
        .collect();
    save(
        dir,
        "queue_wait",
        &Chart {
            title: format!("{}: task queue wait CDF ({} tasks)", sc.name, waits.len()),
            x: "submission to first assignment (s)".into(),
            y: "fraction of tasks".into(),
            lines: vec![Line {
                name: String::new(),
                points: cdf(waits),
            }],
        },
    )?;
    let util = |f: fn(&crate::metrics::Sample) -> i64| -> Vec<(f64, f64)> {
        m.samples
            .iter()
            .filter(|s| s.online_slots > 0)
            .map(|s| (s.t_s as f64 / 60.0, f(s) as f64 / s.online_slots as f64))
            .collect()
    };
    save(
        dir,
        "utilization",
        &Chart {
            title: format!("{}: GPU utilization over time", sc.name),
            x: "time (minutes)".into(),
            y: "fraction of online slots".into(),
            lines: vec![
                Line {
                    name: "rendering".into(),
                    points: util(|s| s.rendering),
                },
                Line {
                    name: "holding a task".into(),
                    points: util(|s| s.busy_slots),
                },
            ],
        },
    )?;
    // Re-dispatches per sample period.
    let period = sc.sample_s.max(1);
    let bins = (m.end_ms / 1000 / period + 1) as usize;
    let mut per = vec![0u64; bins];
    for t in &m.redispatch_times {
        if let Some(b) = per.get_mut((u64::from(*t) / period) as usize) {
            *b += 1;
        }
    }
    save(
        dir,
        "redispatches",
        &Chart {
            title: format!("{}: re-dispatches ({} in all)", sc.name, m.redispatches),
            x: "time (minutes)".into(),
            y: format!("re-dispatches per {period} s"),
            lines: vec![Line {
                name: String::new(),
                points: per
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ((i as u64 * period) as f64 / 60.0, *n as f64))
                    .collect(),
            }],
        },
    )?;
    let mut credits: Vec<f64> = m
        .nodes
        .iter()
        .filter(|n| n.capacity > 0.0)
        .map(|n| n.credits as f64)
        .collect();
    credits.sort_by(|a, b| b.total_cmp(a));
    let jain = crate::credits::jain(credits.iter().copied());
    save(
        dir,
        "credits",
        &Chart {
            title: format!("{}: credits per worker (Jain's index {jain:.3})", sc.name),
            x: "workers, richest first".into(),
            y: "credits".into(),
            lines: vec![Line {
                name: String::new(),
                points: credits
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i as f64, *c))
                    .collect(),
            }],
        },
    )?;
    save(
        dir,
        "fairness",
        &Chart {
            title: format!("{}: fairness of credits over time (Jain's index)", sc.name),
            x: "time (minutes)".into(),
            y: "Jain's index (earning workers)".into(),
            lines: vec![Line {
                name: String::new(),
                points: m
                    .samples
                    .iter()
                    .map(|s| (s.t_s as f64 / 60.0, s.credits_jain))
                    .collect(),
            }],
        },
    )?;
    Ok(())
}
