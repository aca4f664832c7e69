//! The `blender` runtime: one frame (or a tile of it) of the .blend file in
//! input 0, rendered by Blender inside the [`super::sandbox`].
//!
//! # What this module owns
//!
//! The Blender command line, the Python expression that applies the task
//! to the scene, progress parsing, and collecting the frame file:
//!
//! ```text
//! blender -b --factory-startup --disable-autoexec -noaudio /job/in/SCENE \
//!   -t THREADS --python-exit-code 2 --python-expr EXPR \
//!   -o /job/task/out/frame_###### -f FRAME
//! ```
//!
//! `--disable-autoexec` stops the .blend file's own scripts (drivers,
//! registered text blocks); it does not stop `--python-expr`, which is ours
//! and built from numbers only. A .blend file can still carry Python that
//! other paths run, which is why Blender never runs outside the sandbox.
//!
//! EXPR sets: the engine (Cycles, or Eevee: `BLENDER_EEVEE_NEXT` where
//! Blender has it, else `BLENDER_EEVEE`); the resolution to the job's width
//! × height at 100 %; for a tile, the render border around the region with
//! crop-to-border, so the file is exactly the tile; the output format (PNG
//! or OpenEXR); and the Cycles device: the GPU backend the node chose
//! ([`super::GpuBackend`]) when it has one and Blender finds such a device
//! (else it falls back to CPU and says so on stdout: `RENDERTRUST_GPU=none`),
//! the CPU otherwise.
//!
//! Border edges: Blender computes a border's pixel edges as
//! `(int)(border × size)` in single precision, so an edge at pixel `k` is
//! passed as `(k + 0.5) / size` (and a frame edge as exactly 0 or 1): the
//! truncation lands on `k` whatever the rounding. The output check then
//! verifies the size exactly.
//!
//! Progress: Cycles prints `… | Sample a/b` (and `Rendered a/b Tiles` for
//! large frames), Eevee `Rendering a / b samples`; see [`parse_progress`].
//!
//! Known limits, found on Debian's Blender 3.4.1: Blender exits 0 even when
//! the render fails (e.g. a scene with denoising on a build without
//! OpenImageDenoise: "Error: Build without OpenImageDenoiser"), so a missing
//! frame is reported with Blender's `Error` lines. Eevee needs an OpenGL
//! context: Debian's build falls back to surfaceless EGL (software) and
//! works headless in the sandbox; where that fails the error is
//! [`RuntimeError::EeveeNoContext`].
//!
//! # What it must not do
//!
//! Never run Blender outside the sandbox, never put job-supplied text into
//! the Python expression, never follow a symlink Blender leaves in `out/`.

use std::sync::Arc;

use rendertrust_protocol::task::Rect;
use rendertrust_protocol::wire::{BlenderEngine, ImageFormat, ResourceUsage};
use tokio_util::sync::CancellationToken;

use super::process::last_lines;
use super::sandbox::{self, INPUT_DIR, SandboxSpec, TASK_DIR, Tools};
use super::{GpuBackend, Progress, RuntimeError, TaskOutput, TaskRun};

/// Blender's largest frame number (MAXFRAME).
pub const MAX_FRAME: u32 = 1_048_574;
/// Where Blender writes inside the task dir.
pub const OUT_DIR: &str = "out";
/// What EXPR prints when the requested GPU backend has no device.
pub const GPU_FALLBACK_MARK: &str = "RENDERTRUST_GPU=none";

/// Lines of Blender's stdout kept for error messages.
const ERROR_LINES: usize = 12;
/// Words in Blender's output that mean Eevee had no OpenGL context.
const NO_CONTEXT_HINTS: &[&str] = &[
    "Unable to open a display",
    "Failed to create",
    "failed to create",
    "GPU context",
    "GHOST",
    "GLX",
    "EGL Error",
    "OpenGL",
];

/// A border edge at pixel `k` of `size` (see the module docs).
fn edge(k: u32, size: u32) -> String {
    if k == 0 {
        "0.0".into()
    } else if k >= size {
        "1.0".into()
    } else {
        format!("{:.10}", (f64::from(k) + 0.5) / f64::from(size))
    }
}

/// The Python expression that applies the task to the loaded scene.
pub fn python_expr(
    width: u32,
    height: u32,
    region: Rect,
    engine: BlenderEngine,
    format: ImageFormat,
    gpu: Option<GpuBackend>,
) -> String {
    let mut e = String::from("import bpy\ns = bpy.context.scene\nr = s.render\n");
    e.push_str(match engine {
        BlenderEngine::Cycles => "r.engine = 'CYCLES'\n",
        BlenderEngine::Eevee => {
            "try:\n    r.engine = 'BLENDER_EEVEE_NEXT'\nexcept TypeError:\n    r.engine = 'BLENDER_EEVEE'\n"
        }
    });
    e.push_str(&format!(
        "r.resolution_x = {width}\nr.resolution_y = {height}\nr.resolution_percentage = 100\n"
    ));
    if region == Rect::full(width, height) {
        e.push_str("r.use_border = False\n");
    } else {
        // Blender's y axis points up; ours (the region's) down.
        let (y_bottom, y_top) = (height - region.y - region.h, height - region.y);
        e.push_str(&format!(
            "r.use_border = True\nr.use_crop_to_border = True\n\
             r.border_min_x = {}\nr.border_max_x = {}\n\
             r.border_min_y = {}\nr.border_max_y = {}\n",
            edge(region.x, width),
            edge(region.x + region.w, width),
            edge(y_bottom, height),
            edge(y_top, height),
        ));
    }
    e.push_str("r.use_file_extension = True\n");
    e.push_str(match format {
        ImageFormat::Png => "r.image_settings.file_format = 'PNG'\n",
        ImageFormat::Exr => "r.image_settings.file_format = 'OPEN_EXR'\n",
    });
    match gpu {
        Some(b) => e.push_str(&format!(
            "if r.engine == 'CYCLES':\n\
             \x20   p = bpy.context.preferences.addons['cycles'].preferences\n\
             \x20   try:\n\
             \x20       p.compute_device_type = '{b}'\n\
             \x20       p.get_devices()\n\
             \x20   except (TypeError, ValueError, AttributeError):\n\
             \x20       pass\n\
             \x20   found = False\n\
             \x20   for d in p.devices:\n\
             \x20       d.use = d.type == '{b}'\n\
             \x20       found = found or d.use\n\
             \x20   s.cycles.device = 'GPU' if found else 'CPU'\n\
             \x20   print('RENDERTRUST_GPU=' + ('{b}' if found else 'none'))\n",
            b = b.blender_name()
        )),
        None => e.push_str("if r.engine == 'CYCLES':\n    s.cycles.device = 'CPU'\n"),
    }
    e
}

/// Blender's argv (inside the sandbox) for one frame.
pub fn blender_argv(
    blender: &str,
    scene: &str,
    threads: u16,
    expr: &str,
    frame: u32,
) -> Vec<String> {
    [
        blender,
        "-b",
        "--factory-startup",
        "--disable-autoexec",
        "-noaudio",
        scene,
        "-t",
        &threads.max(1).to_string(),
        "--python-exit-code",
        "2",
        "--python-expr",
        expr,
        "-o",
        &format!("{TASK_DIR}/{OUT_DIR}/frame_######"),
        "-f",
        &frame.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `a/b` or `a / b` at the start of `s`.
fn ratio(s: &str) -> Option<(u64, u64)> {
    let (a, rest) = s.split_once('/')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = rest
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    (b > 0 && a <= b).then_some((a, b))
}

fn after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.rfind(key).map(|i| &line[i + key.len()..])
}

/// Per-mille progress from a line of Blender's stdout, if it has any.
pub fn parse_progress(line: &str) -> Option<u16> {
    let sample = after(line, "Sample ").and_then(ratio);
    let tiles = after(line, "Rendered ").and_then(ratio);
    let eevee = after(line, "Rendering ").and_then(ratio);
    let permille = match (tiles, sample, eevee) {
        (Some((t, tn)), s, _) => {
            let frac = s.map_or(0, |(a, b)| a * 1000 / b);
            (t * 1000 + frac) / tn
        }
        (None, Some((a, b)), _) | (None, None, Some((a, b))) => a * 1000 / b,
        _ => return None,
    };
    u16::try_from(permille.min(1000)).ok()
}

/// The `blender` branch of [`super::run_task`].
pub(crate) async fn run(
    task: &TaskRun,
    engine: BlenderEngine,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<TaskOutput, RuntimeError> {
    let g = task.geometry;
    if g.frame > MAX_FRAME {
        return Err(RuntimeError::BadTask(format!(
            "frame {} is beyond Blender's last frame {MAX_FRAME}",
            g.frame
        )));
    }
    let tools = Tools::find()?;
    let host_blender = sandbox::find_program("blender").ok_or(RuntimeError::BlenderMissing)?;
    let real = std::fs::canonicalize(&host_blender).unwrap_or(host_blender);
    // Blender installed outside /usr (a tarball in /opt): show its directory.
    let mut extra_ro = Vec::new();
    if !real.starts_with("/usr")
        && let Some(dir) = real.parent()
    {
        extra_ro.push(dir.to_path_buf());
    }
    let (scene_name, _) = task.scene_input()?;
    let scene_in = format!("{INPUT_DIR}/{scene_name}");

    let out_dir = task.task_dir.join(OUT_DIR);
    if std::fs::symlink_metadata(&out_dir).is_ok() {
        std::fs::remove_dir_all(&out_dir)
            .map_err(RuntimeError::io(format!("clearing {}", out_dir.display())))?;
    }
    std::fs::create_dir(&out_dir)
        .map_err(RuntimeError::io(format!("creating {}", out_dir.display())))?;

    let expr = python_expr(
        task.spec.width,
        task.spec.height,
        g.region,
        engine,
        task.spec.format,
        task.gpu,
    );
    let argv = blender_argv(
        &real.to_string_lossy(),
        &scene_in,
        task.limits.threads,
        &expr,
        g.frame,
    );
    let inputs = task.input_list();
    let spec = SandboxSpec {
        task_dir: &task.task_dir,
        inputs: &inputs,
        extra_ro: &extra_ro,
        gpu: task.gpu.is_some(),
        limits: &task.limits,
    };
    let full = spec.argv(&tools, &argv);
    let mut notes: Vec<String> = Vec::new();
    let mut gpu_fell_back = false;
    tracing::debug!(task = task.index, frame = g.frame, "running blender");
    let exit = sandbox::supervise(
        &full,
        task.deadline,
        cancel,
        task.limits.kill_grace,
        |line| {
            if let Some(p) = parse_progress(line) {
                progress.report(p);
            }
            if line.contains(GPU_FALLBACK_MARK) {
                gpu_fell_back = true;
            }
            if line.contains("Error") || line.starts_with("Traceback") || line.contains("EGL") {
                if notes.len() == ERROR_LINES {
                    notes.remove(0);
                }
                notes.push(line.trim().to_owned());
            }
        },
    )
    .await?;
    if let Some(msg) = exit.setup_failure() {
        return Err(sandbox::SandboxError::Setup(msg).into());
    }
    let said = || {
        let mut s = notes.join(" | ");
        let err = last_lines(&exit.stderr_tail, 3);
        if !err.is_empty() {
            if !s.is_empty() {
                s.push_str(" | ");
            }
            s.push_str(&err);
        }
        if s.is_empty() {
            "(nothing on stdout/stderr)".into()
        } else {
            s
        }
    };
    let no_context = || {
        engine == BlenderEngine::Eevee
            && NO_CONTEXT_HINTS
                .iter()
                .any(|h| notes.iter().any(|n| n.contains(h)) || exit.stderr_tail.contains(h))
    };
    if !exit.status.success() {
        if no_context() {
            return Err(RuntimeError::EeveeNoContext { detail: said() });
        }
        let status = match exit.status.code() {
            Some(2) => "exit code 2 (our Python expression failed)".to_owned(),
            _ => exit.describe(),
        };
        return Err(RuntimeError::Failed {
            what: "blender",
            status,
            detail: said(),
        });
    }
    let mut files = Vec::new();
    let mut others = 0usize;
    for e in std::fs::read_dir(&out_dir)
        .map_err(RuntimeError::io(format!("listing {}", out_dir.display())))?
        .filter_map(Result::ok)
    {
        match e.file_type() {
            Ok(t) if t.is_file() => files.push(e.path()),
            _ => others += 1,
        }
    }
    if files.len() != 1 || others != 0 {
        if files.is_empty() && no_context() {
            return Err(RuntimeError::EeveeNoContext { detail: said() });
        }
        return Err(RuntimeError::NoOutput {
            what: "blender",
            detail: format!(
                "expected one frame file in {OUT_DIR}/, found {} file(s) and {others} other entr(ies); Blender said: {}",
                files.len(),
                said()
            ),
        });
    }
    let path = task.render_output_path();
    super::remove_if_present(&path)?;
    if let Some(f) = files.first() {
        std::fs::rename(f, &path).map_err(RuntimeError::io(format!(
            "moving {} to {}",
            f.display(),
            path.display()
        )))?;
    }
    let used_gpu = task.gpu.is_some() && !gpu_fell_back;
    if task.gpu.is_some() && gpu_fell_back {
        tracing::warn!(
            task = task.index,
            "Blender found no device for the requested GPU backend; rendered on the CPU"
        );
    }
    Ok(TaskOutput {
        path,
        usage: ResourceUsage {
            gpu_ms: if used_gpu {
                super::millis(exit.wall)
            } else {
                0
            },
            cpu_ms: super::millis(exit.cpu),
            peak_mem_bytes: exit.peak_rss_bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_of_cycles_and_eevee() {
        let c = "Fra:2 Mem:9.95M (Peak 10.83M) | Time:00:00.05 | Mem:0.78M, Peak:0.78M | Scene, ViewLayer | Sample 4/16";
        assert_eq!(parse_progress(c), Some(250));
        let t = "Fra:1 Mem:9M | Time:00:01.00 | Scene, ViewLayer | Rendered 1/4 Tiles, Sample 8/16";
        assert_eq!(parse_progress(t), Some(375));
        let e = "Fra:2 Mem:10.80M (Peak 11.91M) | Time:00:04.19 | Rendering 26 / 64 samples";
        assert_eq!(parse_progress(e), Some(406));
        assert_eq!(parse_progress("Fra:2 | Sample 0/4"), Some(0));
        for none in [
            "Fra:2 Mem:9.40M | Scene, ViewLayer | Updating Objects",
            "Saved: '/job/task/out/frame_000002.png'",
            "Sample 5/0",
            "Sample 9/4",
            "Sample x/4",
        ] {
            assert_eq!(parse_progress(none), None, "{none}");
        }
    }

    #[test]
    fn border_edges_truncate_onto_the_pixel() {
        // Emulate Blender: float32 border × size, truncated.
        for size in [1u32, 2, 3, 7, 64, 1000, 1080, 4095, 16384] {
            for k in 0..=size.min(2000) {
                let v: f32 = edge(k, size).parse().unwrap();
                assert_eq!((v * size as f32) as u32, k, "k {k} of {size}");
            }
        }
    }

    #[test]
    fn python_expr_for_a_tile_and_a_frame() {
        let full = python_expr(
            64,
            48,
            Rect::full(64, 48),
            BlenderEngine::Cycles,
            ImageFormat::Png,
            None,
        );
        assert!(full.contains("r.resolution_x = 64\nr.resolution_y = 48\n"));
        assert!(full.contains("r.use_border = False"));
        assert!(full.contains("s.cycles.device = 'CPU'"));
        // bottom-right tile: x 32..64, y 24..48 from the top = 0..24 from the bottom
        let tile = Rect {
            x: 32,
            y: 24,
            w: 32,
            h: 24,
        };
        let e = python_expr(
            64,
            48,
            tile,
            BlenderEngine::Eevee,
            ImageFormat::Exr,
            Some(GpuBackend::Optix),
        );
        assert!(e.contains("r.use_crop_to_border = True"));
        assert!(
            e.contains("r.border_min_x = 0.5078125000\nr.border_max_x = 1.0\n"),
            "{e}"
        );
        assert!(
            e.contains("r.border_min_y = 0.0\nr.border_max_y = 0.5104166667\n"),
            "{e}"
        );
        assert!(e.contains("BLENDER_EEVEE_NEXT"));
        assert!(e.contains("'OPEN_EXR'"));
        assert!(e.contains("p.compute_device_type = 'OPTIX'"));
        let argv = blender_argv("blender", "/job/in/s.blend", 2, &e, 7);
        assert_eq!(
            argv[..6],
            [
                "blender",
                "-b",
                "--factory-startup",
                "--disable-autoexec",
                "-noaudio",
                "/job/in/s.blend"
            ]
        );
        assert_eq!(argv[argv.len() - 2..], ["-f", "7"]);
    }
}
