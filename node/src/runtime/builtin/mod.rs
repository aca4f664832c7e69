//! The builtin runtime: a small deterministic CPU path tracer (spheres and
//! planes; diffuse, metal and emissive materials; a camera that orbits with
//! the frame number) of a scene described in TOML ([`scene`]).
//!
//! # What this module owns
//!
//! Rendering a region of a frame to RGB8 and PNG, bit-identically on every
//! x86-64 machine for the same (scene text, frame, width, height, region)
//! and rendering version (see the `trace` module for how), whatever the number of
//! threads; the node's benchmark ([`benchmark_mfpm`]); and the builtin branch
//! of [`super::run_task`].
//!
//! Output bytes: an RGB8 PNG of exactly the region, encoded with fixed
//! settings (zlib level 6, adaptive filter, no ancillary chunks). The PNG
//! bytes are as stable as the `png` crate pinned in `Cargo.lock`; the
//! golden-hash test in this module fails if either the pixels or the
//! encoding ever change.
//!
//! # What it must not do
//!
//! It runs in the node's process (no sandbox: the only untrusted input is
//! the scene text, parsed with strict bounds), so it must not panic on any
//! scene, must stop promptly when cancelled or past its deadline (checked
//! after every row), and touches no file (the caller writes the PNG).

pub mod scene;
mod trace;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rendertrust_protocol::task::Rect;
use rendertrust_protocol::wire::{ImageFormat, ResourceUsage};
use tokio_util::sync::CancellationToken;

use super::{Progress, RuntimeError, TaskOutput, TaskRun};

pub use scene::{Scene, SceneError};

/// The embedded default scene: the demo's job and the benchmark frame.
pub const DEFAULT_SCENE: &str = include_str!("default_scene.toml");

/// Benchmark frame width (the default scene, one thread).
pub const BENCH_WIDTH: u32 = 320;
/// Benchmark frame height.
pub const BENCH_HEIGHT: u32 = 180;
/// Benchmark frame number.
pub const BENCH_FRAME: u32 = 0;

/// Most pixels one builtin render may produce (a 4096 × 4096 region): bounds
/// the memory a task can make the node allocate (3 bytes each, plus the PNG).
pub const MAX_REGION_PIXELS: u64 = 4096 * 4096;

/// Why a builtin render failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The scene text was refused.
    #[error(transparent)]
    Scene(#[from] SceneError),
    /// The frame size or region is unusable.
    #[error("region {region:?} of a {width}x{height} frame: {reason}")]
    Region {
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// The region asked for.
        region: Rect,
        /// What is wrong with it.
        reason: String,
    },
    /// At this frame the orbiting camera looks along its up vector.
    #[error("at frame {frame} the camera looks along its up vector (no image plane)")]
    Camera {
        /// The frame.
        frame: u32,
    },
    /// Stopped by the caller.
    #[error("render cancelled")]
    Cancelled,
    /// Stopped at the deadline.
    #[error("render passed its deadline")]
    DeadlineExceeded,
    /// The PNG encoder failed (should not happen for valid sizes).
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

/// How a render runs: threads, and when it must stop.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    /// Worker threads (≥ 1; the result does not depend on it).
    pub threads: usize,
    /// Checked after every row: stop with [`RenderError::Cancelled`] when set.
    pub cancel: Option<&'a AtomicBool>,
    /// Checked after every row: stop with [`RenderError::DeadlineExceeded`] once passed.
    pub deadline: Option<Instant>,
    /// Called after every row with (rows done, rows in the region), from the render threads.
    pub progress: Option<&'a (dyn Fn(u32, u32) + Sync)>,
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("threads", &self.threads)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Control<'_> {
    /// One thread per available core, no cancellation, no deadline.
    pub fn all_cores() -> Control<'static> {
        Control {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cancel: None,
            deadline: None,
            progress: None,
        }
    }
}

/// A rendered region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// RGB8, row-major, `region.w × region.h × 3` bytes, top row first.
    pub rgb: Vec<u8>,
    /// The region rendered.
    pub region: Rect,
    /// CPU time the render threads used (user + system).
    pub cpu: Duration,
}

fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

const STOP_NONE: u32 = 0;
const STOP_CANCEL: u32 = 1;
const STOP_DEADLINE: u32 = 2;

/// Renders `region` of frame `frame` of a `width × height` image of `scene`.
pub fn render_rgb(
    scene: &Scene,
    frame: u32,
    width: u32,
    height: u32,
    region: Rect,
    ctl: &Control<'_>,
) -> Result<Rendered, RenderError> {
    let bad = |reason: &str| RenderError::Region {
        width,
        height,
        region,
        reason: reason.into(),
    };
    if width == 0 || height == 0 {
        return Err(bad("the frame is empty"));
    }
    if !region.fits(width, height) {
        return Err(bad("the region is empty or outside the frame"));
    }
    if region.area() > MAX_REGION_PIXELS {
        return Err(bad(&format!(
            "{} pixels; at most {MAX_REGION_PIXELS} per render",
            region.area()
        )));
    }
    let cam = trace::Camera::for_frame(&scene.camera, frame, width, height)
        .ok_or(RenderError::Camera { frame })?;
    let row_bytes = region.w as usize * 3;
    let mut rgb = vec![0u8; row_bytes * region.h as usize];
    let threads = ctl.threads.clamp(1, 256).min(region.h as usize);
    let mut buckets: Vec<Vec<(u32, &mut [u8])>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, row) in rgb.chunks_exact_mut(row_bytes).enumerate() {
        if let Some(b) = buckets.get_mut(i % threads) {
            b.push((region.y + i as u32, row));
        }
    }
    let stop = AtomicU32::new(STOP_NONE);
    let done = AtomicU32::new(0);
    let cpu_ns = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for bucket in buckets {
            let (stop, done, cpu_ns, cam) = (&stop, &done, &cpu_ns, &cam);
            s.spawn(move || {
                let start = thread_cpu();
                for (y, row) in bucket {
                    if stop.load(Ordering::Relaxed) != STOP_NONE {
                        break;
                    }
                    trace::render_row(scene, cam, frame, y, region.x, row);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(p) = ctl.progress {
                        p(n, region.h);
                    }
                    if ctl.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        stop.store(STOP_CANCEL, Ordering::Relaxed);
                    } else if ctl.deadline.is_some_and(|d| Instant::now() >= d) {
                        stop.store(STOP_DEADLINE, Ordering::Relaxed);
                    }
                }
                let used = thread_cpu().saturating_sub(start);
                cpu_ns.fetch_add(
                    u64::try_from(used.as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            });
        }
    });
    match stop.load(Ordering::Relaxed) {
        STOP_CANCEL => Err(RenderError::Cancelled),
        STOP_DEADLINE => Err(RenderError::DeadlineExceeded),
        _ => Ok(Rendered {
            rgb,
            region,
            cpu: Duration::from_nanos(cpu_ns.load(Ordering::Relaxed)),
        }),
    }
}

/// Encodes RGB8 pixels as PNG with the fixed settings that make the bytes
/// reproducible (see the module docs).
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::with_capacity(rgb.len() / 2 + 1024);
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_deflate_compression(png::DeflateCompression::Level(6));
    enc.set_filter(png::Filter::Adaptive);
    let mut w = enc
        .write_header()
        .map_err(|e| RenderError::Png(e.to_string()))?;
    w.write_image_data(rgb)
        .map_err(|e| RenderError::Png(e.to_string()))?;
    w.finish().map_err(|e| RenderError::Png(e.to_string()))?;
    Ok(out)
}

/// Renders `region` of frame `frame` of a `width × height` image of the
/// scene text on every core, and returns the PNG bytes (exactly
/// `region.w × region.h`). For local renders (`rendertrust render`).
pub fn render_png(
    scene_text: &str,
    frame: u32,
    width: u32,
    height: u32,
    region: Rect,
) -> Result<Vec<u8>, RenderError> {
    let scene = Scene::parse(scene_text)?;
    let r = render_rgb(&scene, frame, width, height, region, &Control::all_cores())?;
    encode_png(&r.rgb, region.w, region.h)
}

/// Renders the benchmark frame (the default scene, frame [`BENCH_FRAME`],
/// [`BENCH_WIDTH`] × [`BENCH_HEIGHT`]) on one thread; returns its RGB8 pixels.
pub fn benchmark_frame() -> Result<Vec<u8>, RenderError> {
    let scene = Scene::parse(DEFAULT_SCENE)?;
    let ctl = Control {
        threads: 1,
        ..Control::all_cores()
    };
    let r = render_rgb(
        &scene,
        BENCH_FRAME,
        BENCH_WIDTH,
        BENCH_HEIGHT,
        Rect::full(BENCH_WIDTH, BENCH_HEIGHT),
        &ctl,
    )?;
    Ok(r.rgb)
}

/// The node's benchmark: milli-frames per minute of the benchmark frame
/// ([`benchmark_frame`]) on one core, the figure a capacity advert carries
/// (`bench_mfpm`). Takes about a second on a current core.
pub fn benchmark_mfpm() -> u64 {
    let start = Instant::now();
    let ok = benchmark_frame().is_ok();
    let nanos = start.elapsed().as_nanos().max(1);
    if !ok {
        tracing::warn!("the builtin benchmark frame failed to render; advertising 0");
        return 0;
    }
    // frames/min × 1000 = 60 s × 1000 / seconds per frame
    u64::try_from(60_000_000_000_000u128 / nanos).unwrap_or(u64::MAX)
}

/// Sets the flag when dropped: a dropped task future stops its render.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The builtin branch of [`super::run_task`]: renders the task's region of
/// its frame from the scene in input 0 and writes `output.png`.
pub(crate) async fn run(
    task: &TaskRun,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<TaskOutput, RuntimeError> {
    if task.spec.format != ImageFormat::Png {
        return Err(RuntimeError::BadTask(
            "the builtin renderer writes PNG only; the job asks for EXR".into(),
        ));
    }
    let (name, scene_path) = task.scene_input()?;
    let len = std::fs::metadata(scene_path)
        .map_err(RuntimeError::io(format!("reading scene {name:?}")))?
        .len();
    if len > scene::MAX_SCENE_BYTES as u64 {
        return Err(RenderError::Scene(SceneError::TooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max: scene::MAX_SCENE_BYTES,
        })
        .into());
    }
    let bytes =
        std::fs::read(scene_path).map_err(RuntimeError::io(format!("reading scene {name:?}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| RenderError::Scene(SceneError::Toml("the scene is not UTF-8 text".into())))?;
    let scene = Scene::parse(&text).map_err(RenderError::Scene)?;

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let watcher = {
        let (stop, cancel) = (stop.clone(), cancel.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let (geom, spec_w, spec_h) = (task.geometry, task.spec.width, task.spec.height);
    let (threads, deadline) = (usize::from(task.limits.threads.max(1)), task.deadline);
    let report = progress.clone();
    let flag = stop.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let on_rows = move |done: u32, total: u32| {
            let p = u64::from(done) * 1000 / u64::from(total.max(1));
            report.report(u16::try_from(p).unwrap_or(999));
        };
        let ctl = Control {
            threads,
            cancel: Some(&flag),
            deadline: Some(deadline),
            progress: Some(&on_rows),
        };
        let r = render_rgb(&scene, geom.frame, spec_w, spec_h, geom.region, &ctl)?;
        let png = encode_png(&r.rgb, geom.region.w, geom.region.h)?;
        Ok::<_, RenderError>((r, png))
    })
    .await;
    watcher.abort();
    let (r, png) = match rendered {
        Ok(Ok(x)) => x,
        Ok(Err(RenderError::Cancelled)) => return Err(RuntimeError::Cancelled),
        Ok(Err(RenderError::DeadlineExceeded)) => return Err(RuntimeError::DeadlineExceeded),
        Ok(Err(e)) => return Err(e.into()),
        Err(e) => {
            return Err(RuntimeError::Io {
                context: "builtin render thread".into(),
                source: std::io::Error::other(e.to_string()),
            });
        }
    };
    let path = task.render_output_path();
    super::remove_if_present(&path)?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        f.write_all(&png)?;
        f.sync_all()
    };
    write().map_err(RuntimeError::io(format!("writing {}", path.display())))?;
    Ok(TaskOutput {
        path,
        usage: ResourceUsage {
            gpu_ms: 0,
            cpu_ms: super::millis(r.cpu),
            peak_mem_bytes: (r.rgb.len() + png.len()) as u64,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: (u32, u32) = (48, 27);

    fn small_scene() -> String {
        DEFAULT_SCENE.replace("samples = 16", "samples = 4")
    }

    fn rgb(text: &str, frame: u32, region: Rect, threads: usize) -> Vec<u8> {
        let s = Scene::parse(text).unwrap();
        let ctl = Control {
            threads,
            ..Control::all_cores()
        };
        render_rgb(&s, frame, SMALL.0, SMALL.1, region, &ctl)
            .unwrap()
            .rgb
    }

    #[test]
    fn same_input_same_bytes_whatever_the_threads() {
        let text = small_scene();
        let full = Rect::full(SMALL.0, SMALL.1);
        let a = rgb(&text, 5, full, 1);
        assert_eq!(a, rgb(&text, 5, full, 3));
        assert_eq!(a, rgb(&text, 5, full, 64));
        let p1 = render_png(&text, 5, SMALL.0, SMALL.1, full).unwrap();
        let p2 = render_png(&text, 5, SMALL.0, SMALL.1, full).unwrap();
        assert_eq!(p1, p2);
    }

    #[test]
    fn a_tile_is_the_crop_of_the_full_frame() {
        let text = small_scene();
        let full = rgb(&text, 2, Rect::full(SMALL.0, SMALL.1), 2);
        for tile in [
            Rect {
                x: 0,
                y: 0,
                w: 1,
                h: 1,
            },
            Rect {
                x: 7,
                y: 3,
                w: 20,
                h: 11,
            },
            Rect {
                x: 47,
                y: 26,
                w: 1,
                h: 1,
            },
            Rect {
                x: 24,
                y: 0,
                w: 24,
                h: 27,
            },
        ] {
            let t = rgb(&text, 2, tile, 2);
            let mut crop = Vec::new();
            for y in tile.y..tile.y + tile.h {
                let start = ((y * SMALL.0 + tile.x) * 3) as usize;
                crop.extend_from_slice(&full[start..start + tile.w as usize * 3]);
            }
            assert_eq!(t, crop, "{tile:?}");
        }
    }

    #[test]
    fn frames_differ_and_the_picture_is_not_flat() {
        let text = small_scene();
        let full = Rect::full(SMALL.0, SMALL.1);
        let a = rgb(&text, 0, full, 2);
        let b = rgb(&text, 1, full, 2);
        assert_ne!(a, b);
        // not blank, not black, not saturated: many distinct values
        let distinct: std::collections::BTreeSet<&[u8]> = a.chunks(3).collect();
        assert!(distinct.len() > 100, "{} distinct pixels", distinct.len());
    }

    /// The bytes every x86-64 machine must produce. If this fails after a
    /// deliberate change to the tracer, the scene format or the `png` crate,
    /// update the hash *and* bump the builtin runtime version: workers of
    /// different versions would no longer agree on exact hashes.
    #[test]
    fn golden_hash() {
        let png = render_png(DEFAULT_SCENE, 7, 64, 36, Rect::full(64, 36)).unwrap();
        assert_eq!(
            blake3::hash(&png).to_hex().as_str(),
            "a68132cf2cbb79ac200732e600b10a6c6c3d1d56596a685c0869539a9c078a26"
        );
    }

    #[test]
    fn bad_regions_and_stops() {
        let s = Scene::parse(&small_scene()).unwrap();
        let ctl = Control::all_cores();
        for r in [
            Rect {
                x: 0,
                y: 0,
                w: 0,
                h: 1,
            },
            Rect {
                x: 40,
                y: 0,
                w: 9,
                h: 1,
            },
            Rect {
                x: 0,
                y: 20,
                w: 1,
                h: 8,
            },
        ] {
            assert!(matches!(
                render_rgb(&s, 0, SMALL.0, SMALL.1, r, &ctl),
                Err(RenderError::Region { .. })
            ));
        }
        assert!(matches!(
            render_rgb(&s, 0, 8192, 8192, Rect::full(8192, 8192), &ctl),
            Err(RenderError::Region { .. })
        ));
        let cancel = AtomicBool::new(true);
        let c = Control {
            cancel: Some(&cancel),
            ..ctl
        };
        assert_eq!(
            render_rgb(&s, 0, SMALL.0, SMALL.1, Rect::full(SMALL.0, SMALL.1), &c),
            Err(RenderError::Cancelled)
        );
        let c = Control {
            deadline: Some(Instant::now()),
            ..ctl
        };
        assert_eq!(
            render_rgb(&s, 0, SMALL.0, SMALL.1, Rect::full(SMALL.0, SMALL.1), &c),
            Err(RenderError::DeadlineExceeded)
        );
        // camera straight down its up vector
        let down =
            small_scene().replace("look_from = [0.0, 1.6, 6.5]", "look_from = [0.0, 9.0, 0.0]");
        let s = Scene::parse(&down).unwrap();
        assert_eq!(
            render_rgb(&s, 3, 8, 8, Rect::full(8, 8), &ctl),
            Err(RenderError::Camera { frame: 3 })
        );
    }

    #[test]
    fn progress_reaches_every_row() {
        let s = Scene::parse(&small_scene()).unwrap();
        let max = AtomicU32::new(0);
        let f = |done: u32, total: u32| {
            assert_eq!(total, SMALL.1);
            max.fetch_max(done, Ordering::Relaxed);
        };
        let ctl = Control {
            threads: 2,
            progress: Some(&f),
            ..Control::all_cores()
        };
        render_rgb(&s, 0, SMALL.0, SMALL.1, Rect::full(SMALL.0, SMALL.1), &ctl).unwrap();
        assert_eq!(max.load(Ordering::Relaxed), SMALL.1);
    }
}
