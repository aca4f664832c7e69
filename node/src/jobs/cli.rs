//! `rendertrust job …`: the creator's commands, talking to a node's API.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::submit::SubmitRequest;
use super::view::{
    JobDetail, JobState, JobSummary, JobUpdate, ResultsView, SubmitView, TaskStateView,
};
use crate::cli::ApiClient;

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn counts_line(s: &JobSummary) -> String {
    let c = s.counts;
    format!(
        "{} accepted, {} running, {} fetching, {} queued, {} failed (of {})",
        c.accepted, c.running, c.fetching, c.queued, c.failed, s.tasks
    )
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Submitting => "submitting",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn task_state_name(s: TaskStateView) -> &'static str {
    match s {
        TaskStateView::Queued => "queued",
        TaskStateView::Offered => "offered",
        TaskStateView::Running => "running",
        TaskStateView::Fetching => "fetching",
        TaskStateView::Accepted => "accepted",
        TaskStateView::Failed => "failed",
    }
}

/// Makes every input path absolute (the node resolves paths on its machine).
pub fn absolutize(request: &mut SubmitRequest) -> Result<()> {
    let abs = |p: &Path| -> Result<PathBuf> {
        std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
    };
    if let Some(s) = &request.scene {
        request.scene = Some(abs(s)?);
    }
    for i in &mut request.inputs {
        i.path = abs(&i.path)?;
    }
    Ok(())
}

/// `rendertrust job submit`.
pub async fn submit(
    client: &ApiClient,
    request: &SubmitRequest,
    json: bool,
) -> Result<(SubmitView, String)> {
    let view: SubmitView = client.post("/v1/jobs", request).await?;
    let text = if json {
        serde_json::to_string_pretty(&view)?
    } else {
        format!(
            "job {} submitted: {} task(s), scheduler {}\nwatch it:  rendertrust job status {} (or --watch)\nfetch it:  rendertrust job fetch {} --out DIR",
            view.id,
            view.tasks,
            view.scheduler,
            short(&view.id),
            short(&view.id)
        )
    };
    Ok((view, text))
}

/// `rendertrust job list`.
pub async fn list(client: &ApiClient, json: bool) -> Result<String> {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Jobs {
        jobs: Vec<JobSummary>,
    }
    let jobs: Jobs = client.get("/v1/jobs").await?;
    if json {
        return Ok(serde_json::to_string_pretty(&jobs)?);
    }
    let mut out = String::new();
    if jobs.jobs.is_empty() {
        writeln!(
            out,
            "no jobs created on this node yet (rendertrust job submit --help)"
        )?;
    }
    for j in &jobs.jobs {
        writeln!(
            out,
            "{}  {:<8} {:<10} {}",
            short(&j.id),
            j.kind,
            state_name(j.state),
            counts_line(j)
        )?;
    }
    Ok(out)
}

/// `rendertrust job status`.
pub async fn status(client: &ApiClient, id: &str, json: bool) -> Result<String> {
    let d: JobDetail = client.get(&format!("/v1/jobs/{id}")).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&d)?);
    }
    let s = &d.summary;
    let mut out = String::new();
    writeln!(out, "job {} ({}, {}x{})", s.id, s.kind, s.width, s.height)?;
    writeln!(out, "state:     {}", state_name(s.state))?;
    writeln!(out, "tasks:     {}", counts_line(s))?;
    if let Some(r) = &s.reason {
        writeln!(out, "reason:    {r}")?;
    }
    if let Some(sch) = &s.scheduler {
        writeln!(out, "scheduler: {sch}")?;
    }
    writeln!(
        out,
        "{:>5} {:>6} {:<9} {:>5} {:>7} worker",
        "task", "frame", "state", "try", "done"
    )?;
    for t in &d.tasks {
        writeln!(
            out,
            "{:>5} {:>6} {:<9} {:>5} {:>6.1}% {}{}",
            t.index,
            t.frame,
            task_state_name(t.state),
            t.attempt,
            f64::from(t.progress_permille) / 10.0,
            t.worker.as_deref().unwrap_or("-"),
            t.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        )?;
    }
    Ok(out)
}

/// `rendertrust job cancel`.
pub async fn cancel(client: &ApiClient, id: &str, json: bool) -> Result<String> {
    let s: JobSummary = client.delete(&format!("/v1/jobs/{id}")).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&s)?);
    }
    Ok(format!(
        "job {} {}: {}",
        s.id,
        state_name(s.state),
        counts_line(&s)
    ))
}

/// `rendertrust job fetch`: downloads every accepted output, checks its
/// BLAKE3 hash against the one the worker signed, writes it under `out`.
pub async fn fetch(client: &ApiClient, id: &str, out: &Path, json: bool) -> Result<String> {
    let r: ResultsView = client.get(&format!("/v1/jobs/{id}/results")).await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    for res in &r.results {
        if res.file_name.contains('/') || res.file_name.starts_with('.') {
            bail!("the node proposed a bad file name {:?}", res.file_name);
        }
        let bytes = client.get_bytes(&res.url).await?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        if hash != res.output_hash {
            bail!(
                "task {} ({}): hash {hash} does not match the signed output hash {}; nothing written for it",
                res.task,
                res.file_name,
                res.output_hash
            );
        }
        let path = out.join(&res.file_name);
        crate::node::write_atomic(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    if json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "job": r.job,
            "written": written,
            "missing": r.missing,
        }))?);
    }
    let mut text = format!(
        "{} output(s) of job {} verified and written to {}",
        written.len(),
        short(&r.job),
        out.display()
    );
    if !r.missing.is_empty() {
        let list: Vec<String> = r.missing.iter().take(20).map(u32::to_string).collect();
        write!(
            text,
            "\n{} task(s) have no accepted output yet: {}{}",
            r.missing.len(),
            list.join(", "),
            if r.missing.len() > 20 { ", …" } else { "" }
        )?;
    }
    Ok(text)
}

/// Follows a job's events until it ends, drawing a progress bar per running
/// task (or printing a line per change when stderr is not a terminal).
/// Returns the final summary.
pub async fn watch(client: &ApiClient, id: &str) -> Result<JobSummary> {
    let resp = client.get_stream(&format!("/v1/jobs/{id}/events")).await?;
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    if !tty {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let overall = multi.add(ProgressBar::new(0));
    overall.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:40.green/blue}] {pos}/{len} accepted {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    overall.set_prefix(format!("job {}", short(id)));
    let task_style = ProgressStyle::with_template("  {prefix:<18} [{bar:30}] {percent:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let mut bars: std::collections::BTreeMap<u32, ProgressBar> = Default::default();
    let mut last: Option<JobSummary> = None;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    loop {
        let Some(chunk) = tokio::time::timeout(WATCH_IDLE, stream.next())
            .await
            .map_err(|_| {
                anyhow!(
                    "no event from the node for {} s; giving up",
                    WATCH_IDLE.as_secs()
                )
            })?
        else {
            break;
        };
        let chunk = chunk.context("reading job events")?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                continue;
            }
            let update: JobUpdate = serde_json::from_str(&data).map_err(|e| {
                anyhow!("the node sent an event this client does not understand: {e}")
            })?;
            match update {
                JobUpdate::Job { summary } => {
                    overall.set_length(summary.tasks);
                    overall.set_position(summary.counts.accepted);
                    overall.set_message(format!(
                        "{} {}",
                        state_name(summary.state),
                        summary.reason.as_deref().unwrap_or("")
                    ));
                    if !tty {
                        eprintln_line(&format!(
                            "job {}: {}",
                            state_name(summary.state),
                            counts_line(&summary)
                        ));
                    }
                    last = Some(summary);
                }
                JobUpdate::Task { task } => {
                    let label = format!("task {} frame {}", task.index, task.frame);
                    match task.state {
                        TaskStateView::Running
                        | TaskStateView::Offered
                        | TaskStateView::Fetching => {
                            let bar = bars.entry(task.index).or_insert_with(|| {
                                let b = multi.add(ProgressBar::new(1000));
                                b.set_style(task_style.clone());
                                b.set_prefix(label.clone());
                                b
                            });
                            bar.set_position(u64::from(task.progress_permille));
                            bar.set_message(format!(
                                "{} {}",
                                task_state_name(task.state),
                                task.worker.as_deref().map(short).unwrap_or("")
                            ));
                        }
                        _ => {
                            if let Some(b) = bars.remove(&task.index) {
                                b.finish_and_clear();
                            }
                        }
                    }
                    if !tty && task.state != TaskStateView::Queued {
                        eprintln_line(&format!(
                            "{label}: {}{}{}",
                            task_state_name(task.state),
                            task.worker
                                .as_deref()
                                .map(|w| format!(" on {}", short(w)))
                                .unwrap_or_default(),
                            task.reason
                                .as_deref()
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    for (_, b) in bars {
        b.finish_and_clear();
    }
    overall.finish();
    last.ok_or_else(|| anyhow!("the event stream ended before the job's state arrived"))
}

#[allow(clippy::print_stderr)]
fn eprintln_line(line: &str) {
    eprintln!("{line}");
}

/// How long `watch` may go without any event (the server sends keep-alives
/// every 15 s) before the client gives up.
pub const WATCH_IDLE: Duration = Duration::from_secs(120);

/// `rendertrust reputation [NODE]`: the node's reputation book.
pub async fn reputation(client: &ApiClient, node: Option<&str>, json: bool) -> Result<String> {
    let path = match node {
        Some(n) => format!("/v1/reputation/{}", n.trim()),
        None => "/v1/reputation".to_owned(),
    };
    let v: super::reputation::ReputationView = client.get(&path).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&v)?);
    }
    if !v.keeps_book {
        return Ok(format!(
            "{} keeps no reputation book (schedulers and ledger peers do); ask one with --api",
            v.keeper
        ));
    }
    let mut out = format!(
        "reputation book of {} ({} nodes)\n",
        v.keeper,
        v.nodes.len()
    );
    out.push_str("node                                                   score  probation  verified  failed  lost\n");
    for n in &v.nodes {
        out.push_str(&format!(
            "{:<54} {:>4}‰  {:<9}  {:>8.1}  {:>6.1}  {:>4.1}\n",
            n.node,
            n.permille,
            if n.probation { "yes" } else { "no" },
            n.verified_milli as f64 / 1000.0,
            n.failed_milli as f64 / 1000.0,
            n.lost_milli as f64 / 1000.0,
        ));
    }
    Ok(out.trim_end().to_owned())
}
