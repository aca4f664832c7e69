//! TEST ONLY: dishonest workers, for tests of verification and reputation
//! (`tests/trust.rs`). Compiled only with the cargo feature
//! `dishonest-test-hooks` of `rendertrust-node`, which is off by default and
//! refused in release builds (`compile_error!` in `lib.rs` when the feature
//! meets `not(debug_assertions)`). Without the feature, neither this module
//! nor `node start --dishonest` exists.
//!
//! | mode | what the worker does | who catches it |
//! |---|---|---|
//! | `wrong-output` | renders, then inverts every pixel (every byte of a non-image output), and signs the corrupted output honestly | quorum (hash disagrees) or spot-check (SSIM) |
//! | `lazy` | renders nothing: returns a blank grey image of the right size (a fixed text for process jobs) | the same |
//! | `slow` | accepts, then sleeps past the task's deadline without rendering (the worker machine keeps heartbeating) | the scheduler loses the task at its deadline and re-offers it |
//!
//! Everything else (fetching, sealing, signing, heartbeats) is the honest
//! path: the point is that a signed lie is caught, not that a broken worker
//! is.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rendertrust_protocol::wire::JobKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::{self, RuntimeError, TaskOutput, TaskRun};

/// How a dishonest worker cheats (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dishonesty {
    /// Corrupts its output, signs it honestly.
    WrongOutput,
    /// Returns a blank output without rendering.
    Lazy,
    /// Accepts, then sleeps past the deadline.
    Slow,
}

impl FromStr for Dishonesty {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "wrong-output" => Ok(Dishonesty::WrongOutput),
            "lazy" => Ok(Dishonesty::Lazy),
            "slow" => Ok(Dishonesty::Slow),
            other => Err(format!(
                "dishonesty {other:?}: expected wrong-output, lazy or slow"
            )),
        }
    }
}

fn write_rgb_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut e = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    let mut wr = e.write_header().map_err(|e| e.to_string())?;
    wr.write_image_data(rgb).map_err(|e| e.to_string())?;
    wr.finish().map_err(|e| e.to_string())
}

/// Inverts an output in place: every pixel of a PNG, else every byte.
fn corrupt(path: &Path, kind: &JobKind, w: u32, h: u32) -> Result<(), String> {
    if matches!(kind, JobKind::Process { .. }) {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let flipped: Vec<u8> = bytes.iter().map(|b| !b).collect();
        return std::fs::write(path, flipped).map_err(|e| e.to_string());
    }
    let (w, h, rgb) = super::compare::decode_rgb(path, w, h)?;
    let flipped: Vec<u8> = rgb.iter().map(|b| 255 - b).collect();
    write_rgb_png(path, w, h, &flipped)
}

/// Runs a task as `mode` says (`None`: honestly).
pub(crate) async fn run_task(
    mode: Option<Dishonesty>,
    task: &TaskRun,
    progress: mpsc::Sender<u16>,
    cancel: CancellationToken,
) -> Result<TaskOutput, String> {
    let region = task.geometry.region;
    match mode {
        None => runtime::run_task(task, progress, cancel)
            .await
            .map_err(|e: RuntimeError| e.to_string()),
        Some(Dishonesty::WrongOutput) => {
            let out = runtime::run_task(task, progress, cancel)
                .await
                .map_err(|e| e.to_string())?;
            let (path, kind) = (out.path.clone(), task.spec.kind.clone());
            tokio::task::spawn_blocking(move || corrupt(&path, &kind, region.w, region.h))
                .await
                .map_err(|e| e.to_string())??;
            tracing::warn!(task = task.index, "DISHONEST (test hook): output corrupted");
            Ok(out)
        }
        Some(Dishonesty::Lazy) => {
            let render = !matches!(task.spec.kind, JobKind::Process { .. });
            let path = task
                .task_dir
                .join(if render { "output.png" } else { "output" });
            let p = path.clone();
            tokio::task::spawn_blocking(move || {
                if render {
                    let grey = vec![128u8; region.area() as usize * 3];
                    write_rgb_png(&p, region.w, region.h, &grey)
                } else {
                    std::fs::write(&p, b"lazy\n").map_err(|e| e.to_string())
                }
            })
            .await
            .map_err(|e| e.to_string())??;
            let _ = progress.try_send(1000);
            tracing::warn!(task = task.index, "DISHONEST (test hook): blank output");
            Ok(TaskOutput {
                path,
                usage: Default::default(),
            })
        }
        Some(Dishonesty::Slow) => {
            let past = task
                .deadline
                .saturating_duration_since(std::time::Instant::now())
                + Duration::from_secs(30);
            tracing::warn!(
                task = task.index,
                "DISHONEST (test hook): sleeping past the deadline"
            );
            tokio::select! {
                () = cancel.cancelled() => Err("cancelled".into()),
                () = tokio::time::sleep(past) => Err("slow worker (test hook) gave up".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(
            "wrong-output".parse::<Dishonesty>(),
            Ok(Dishonesty::WrongOutput)
        );
        assert_eq!("Lazy".parse::<Dishonesty>(), Ok(Dishonesty::Lazy));
        assert_eq!("slow".parse::<Dishonesty>(), Ok(Dishonesty::Slow));
        assert!(
            "honest"
                .parse::<Dishonesty>()
                .unwrap_err()
                .contains("expected")
        );
    }

    #[test]
    fn a_corrupted_frame_is_the_inverse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.png");
        write_rgb_png(&p, 2, 1, &[0, 10, 20, 30, 40, 50]).unwrap();
        corrupt(&p, &JobKind::Builtin, 2, 1).unwrap();
        let (_, _, rgb) = super::super::compare::decode_rgb(&p, 2, 1).unwrap();
        assert_eq!(rgb, vec![255, 245, 235, 225, 215, 205]);
    }
}
