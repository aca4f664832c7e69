//! The `process` runtime: the job's argv, with placeholders filled in, run
//! inside the [`super::sandbox`].
//!
//! # What this module owns
//!
//! Placeholder substitution (the table is in [`super`]'s docs), reading
//! `RENDERTRUST_PROGRESS=<permille>` lines from the command's stdout, and
//! turning its exit into an output or a clear error. The output is
//! `TASK_DIR/output` on the host (`{out}` = `/job/task/output` inside).
//!
//! # What it must not do
//!
//! Never run the command outside the sandbox; never read any file of the
//! task dir but `output` (and that only through the check, which refuses
//! symlinks).

use std::path::Path;
use std::sync::Arc;

use rendertrust_protocol::task::TaskGeometry;
use rendertrust_protocol::wire::ResourceUsage;
use tokio_util::sync::CancellationToken;

use super::sandbox::{self, SandboxSpec, Tools};
use super::{Progress, RuntimeError, TaskOutput, TaskRun};

/// The output's file name in the task dir.
pub const OUTPUT_NAME: &str = "output";
/// What `{out}` becomes: the output as the sandboxed command sees it.
pub const OUT_IN_SANDBOX: &str = "/job/task/output";
/// Prefix of a progress line on stdout: `RENDERTRUST_PROGRESS=<permille>`.
pub const PROGRESS_PREFIX: &str = "RENDERTRUST_PROGRESS=";

/// The job's argv with `{out}`, `{frame}`, `{task}`, `{width}`, `{height}`,
/// `{x}`, `{y}`, `{w}`, `{h}` replaced; other text is left alone.
pub fn substitute(
    argv: &[String],
    index: u32,
    geometry: &TaskGeometry,
    width: u32,
    height: u32,
) -> Vec<String> {
    let r = geometry.region;
    let vars: [(&str, String); 9] = [
        ("{out}", OUT_IN_SANDBOX.to_owned()),
        ("{frame}", geometry.frame.to_string()),
        ("{task}", index.to_string()),
        ("{width}", width.to_string()),
        ("{height}", height.to_string()),
        ("{x}", r.x.to_string()),
        ("{y}", r.y.to_string()),
        ("{w}", r.w.to_string()),
        ("{h}", r.h.to_string()),
    ];
    argv.iter()
        .map(|a| {
            // One left-to-right pass, so a substituted value is never
            // substituted again.
            let mut out = String::with_capacity(a.len());
            let mut rest = a.as_str();
            'scan: while let Some(i) = rest.find('{') {
                out.push_str(&rest[..i]);
                let tail = &rest[i..];
                for (k, v) in &vars {
                    if let Some(after) = tail.strip_prefix(k) {
                        out.push_str(v);
                        rest = after;
                        continue 'scan;
                    }
                }
                out.push('{');
                rest = &tail[1..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// Parses a `RENDERTRUST_PROGRESS=<permille>` line.
pub fn parse_progress(line: &str) -> Option<u16> {
    let v: u16 = line
        .trim()
        .strip_prefix(PROGRESS_PREFIX)?
        .trim()
        .parse()
        .ok()?;
    Some(v.min(1000))
}

/// The last few lines of `text`, for error messages.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The `process` branch of [`super::run_task`].
pub(crate) async fn run(
    task: &TaskRun,
    argv: &[String],
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<TaskOutput, RuntimeError> {
    if argv.is_empty() {
        return Err(RuntimeError::BadTask(
            "a process job needs a command".into(),
        ));
    }
    let tools = Tools::find()?;
    let out = task.task_dir.join(OUTPUT_NAME);
    super::remove_if_present(&out)?;
    let command = substitute(
        argv,
        task.index,
        &task.geometry,
        task.spec.width,
        task.spec.height,
    );
    let inputs = task.input_list();
    let spec = SandboxSpec {
        task_dir: &task.task_dir,
        inputs: &inputs,
        extra_ro: &[],
        gpu: task.gpu.is_some(),
        limits: &task.limits,
    };
    let full = spec.argv(&tools, &command);
    tracing::debug!(task = task.index, command = ?command, "running process task");
    let exit = sandbox::supervise(
        &full,
        task.deadline,
        cancel,
        task.limits.kill_grace,
        |line| {
            if let Some(p) = parse_progress(line) {
                progress.report(p);
            }
        },
    )
    .await?;
    if let Some(msg) = exit.setup_failure() {
        return Err(sandbox::SandboxError::Setup(msg).into());
    }
    if !exit.status.success() {
        return Err(RuntimeError::Failed {
            what: "process",
            status: exit.describe(),
            detail: last_lines(&exit.stderr_tail, 5),
        });
    }
    if !exists_no_follow(&out) {
        return Err(RuntimeError::NoOutput {
            what: "process",
            detail: format!(
                "nothing at {{out}} ({OUT_IN_SANDBOX}); stderr: {}",
                last_lines(&exit.stderr_tail, 3)
            ),
        });
    }
    Ok(TaskOutput {
        path: out,
        usage: ResourceUsage {
            gpu_ms: if task.gpu.is_some() {
                super::millis(exit.wall)
            } else {
                0
            },
            cpu_ms: super::millis(exit.cpu),
            peak_mem_bytes: exit.peak_rss_bytes,
        },
    })
}

/// Whether anything (even a dangling symlink) is at `p`.
pub(crate) fn exists_no_follow(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::task::Rect;

    #[test]
    fn placeholders() {
        let g = TaskGeometry {
            frame: 42,
            region: Rect {
                x: 1,
                y: 2,
                w: 3,
                h: 4,
            },
        };
        let argv: Vec<String> = [
            "render",
            "--frame={frame}",
            "-o",
            "{out}",
            "{x},{y},{w},{h} of {width}x{height} task {task}",
            "{unknown} {frame",
            "{{frame}}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            substitute(&argv, 7, &g, 640, 480),
            vec![
                "render",
                "--frame=42",
                "-o",
                "/job/task/output",
                "1,2,3,4 of 640x480 task 7",
                "{unknown} {frame",
                "{42}",
            ]
        );
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("RENDERTRUST_PROGRESS=250"), Some(250));
        assert_eq!(parse_progress("  RENDERTRUST_PROGRESS= 7 "), Some(7));
        assert_eq!(parse_progress("RENDERTRUST_PROGRESS=5000"), Some(1000));
        assert_eq!(parse_progress("RENDERTRUST_PROGRESS=-1"), None);
        assert_eq!(parse_progress("progress 50"), None);
    }
}
