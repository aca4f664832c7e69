//! Task runtimes: turn one task of a job into one checked output file.
//!
//! # What this module owns
//!
//! Running a task (docs/jobs.md, step 5 "Run") in the runtime its job's
//! [`JobKind`] names, reporting progress, honouring the deadline and
//! cancellation, measuring what it used, and sanity-checking the output
//! ([`check`]) *before* the caller may hash, seal or sign it. Runtimes sign
//! nothing, send nothing and decide nothing about the job.
//!
//! | runtime | module | where it runs |
//! |---|---|---|
//! | `builtin` | [`builtin`] | in the node's process: our own deterministic path tracer; the scene text (input 0) is parsed with strict bounds |
//! | `blender` | [`blender`] | `blender -b --disable-autoexec …` inside the [`sandbox`] (a .blend file can carry Python) |
//! | `process` | [`process`] | the job's argv inside the [`sandbox`] |
//!
//! # The API (used by the worker driver)
//!
//! ```text
//! let task = TaskRun::new(spec, index, inputs, task_dir, deadline, limits, gpu)?;
//! let out: TaskOutput = run_task(&task, progress_tx, cancel_token).await?;
//! // out.path: the one output file (checked); out.usage: ResourceUsage
//! ```
//!
//! * [`TaskRun`]: the job spec, the task index and its [`TaskGeometry`]
//!   (frame + region, from `protocol::task::task_geometry`), the inputs
//!   already decrypted by the driver (name → host path; every input of the
//!   spec, nothing else), the task dir (exists, empty, the only place the
//!   task may write), the deadline (an [`Instant`]), [`Limits`], and which
//!   [`GpuBackend`] to use, if any.
//! * Progress: per mille on a `tokio::sync::mpsc::Sender<u16>`, increasing,
//!   sent with `try_send` (a full channel drops an update, never blocks the
//!   render); below 1000 while running, exactly 1000 once the output has
//!   passed its check.
//! * Cancellation: a [`CancellationToken`]. Cancel, the deadline or dropping
//!   the future stop the task: the builtin renderer after its current row,
//!   a sandboxed command by SIGTERM to its process group, SIGKILL after
//!   [`Limits::kill_grace`] (see [`sandbox`]).
//! * [`TaskOutput`]: the output file and the [`ResourceUsage`]: `cpu_ms`
//!   (builtin: its render threads; sandboxed: the whole sandbox's rusage),
//!   `gpu_ms` (wall time of a task that used a GPU, else 0),
//!   `peak_mem_bytes` (builtin: its buffers; sandboxed: sampled RSS peak).
//!
//! # One output file per task
//!
//! Renders (`builtin`, `blender`): an image of exactly `region.w × region.h`
//! (a tile, or the whole frame) at `TASK_DIR/output.png` (or `.exr`).
//! `process`: the file the command writes at the path substituted for
//! `{out}`, `TASK_DIR/output` on the host, `/job/task/output` inside.
//!
//! `process` argv placeholders (replaced in every argument):
//!
//! | placeholder | value |
//! |---|---|
//! | `{out}` | `/job/task/output`: write the result here |
//! | `{frame}` | the task's frame number |
//! | `{task}` | the task index |
//! | `{width}`, `{height}` | the job's frame size |
//! | `{x}`, `{y}`, `{w}`, `{h}` | the task's region (pixels, from the top left) |
//!
//! Inside the sandbox, inputs are at `/job/in/NAME` (read-only), the working
//! directory is `/job/task`, `/tmp` is scratch; see [`sandbox`] for the
//! rest. A `process` command may print `RENDERTRUST_PROGRESS=<permille>` lines
//! on stdout to report progress.
//!
//! # What it must not do
//!
//! No signing, hashing, sealing or network: the driver does those with the
//! checked output. No protocol rule: which task runs where is decided by
//! `protocol::worker` / `protocol::scheduler`.

pub mod blender;
pub mod builtin;
pub mod check;
pub mod process;
pub mod sandbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use rendertrust_protocol::task::{TaskGeometry, task_geometry};
use rendertrust_protocol::wire::{GpuVendor, ImageFormat, JobKind, JobSpec, ResourceUsage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use check::{CheckError, Expect};
pub use sandbox::SandboxError;

/// Most bytes of an input name (a plain file name).
pub const MAX_INPUT_NAME: usize = 255;

/// Resource limits of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory, bytes: `RLIMIT_AS` of every sandboxed process (`RLIMIT_DATA`
    /// for GPU tasks) and the size of the sandbox's `/tmp`.
    pub memory_bytes: u64,
    /// CPU seconds per sandboxed process (`RLIMIT_CPU`, soft; the hard limit
    /// is one second more): a child process gets SIGXCPU, the command itself
    /// (PID 1 of the sandbox, which ignores SIGXCPU) SIGKILL a second later.
    /// `None`: no limit beyond the deadline.
    pub cpu_seconds: Option<u64>,
    /// Largest output file, bytes (`RLIMIT_FSIZE` in the sandbox, and the check).
    pub max_output_bytes: u64,
    /// Threads the task may use (builtin render threads, Blender `-t`).
    pub threads: u16,
    /// Between SIGTERM and SIGKILL when a sandboxed task is stopped.
    pub kill_grace: Duration,
}

impl Default for Limits {
    /// 4 GiB memory, no CPU-seconds limit, 1 GiB output, all cores, 2 s grace.
    fn default() -> Self {
        Limits {
            memory_bytes: 4 << 30,
            cpu_seconds: None,
            max_output_bytes: 1 << 30,
            threads: std::thread::available_parallelism()
                .map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX)),
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// A GPU compute backend a task may use (the node picks it from its probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBackend {
    /// NVIDIA, CUDA.
    Cuda,
    /// NVIDIA, OptiX (RTX-class and newer datacenter GPUs).
    Optix,
    /// AMD, HIP.
    Hip,
    /// Intel, oneAPI.
    OneApi,
}

impl GpuBackend {
    /// The default backend for a vendor (NVIDIA → CUDA, which every
    /// CUDA-capable card runs; OptiX is opt-in).
    pub fn for_vendor(v: GpuVendor) -> Option<GpuBackend> {
        match v {
            GpuVendor::Nvidia => Some(GpuBackend::Cuda),
            GpuVendor::Amd => Some(GpuBackend::Hip),
            GpuVendor::Intel => Some(GpuBackend::OneApi),
            _ => None,
        }
    }

    /// Blender's name for it (`compute_device_type`).
    pub fn blender_name(self) -> &'static str {
        match self {
            GpuBackend::Cuda => "CUDA",
            GpuBackend::Optix => "OPTIX",
            GpuBackend::Hip => "HIP",
            GpuBackend::OneApi => "ONEAPI",
        }
    }
}

/// One task, ready to run.
#[derive(Debug, Clone)]
pub struct TaskRun {
    /// The job.
    pub spec: JobSpec,
    /// The task index within the job.
    pub index: u32,
    /// Frame and region of this task (`protocol::task::task_geometry`).
    pub geometry: TaskGeometry,
    /// Decrypted inputs: name → host path. Exactly the spec's inputs.
    pub inputs: BTreeMap<String, PathBuf>,
    /// The task dir: exists, the only place the task writes.
    pub task_dir: PathBuf,
    /// When the task must be done.
    pub deadline: Instant,
    /// Resource limits.
    pub limits: Limits,
    /// The GPU to use, if any.
    pub gpu: Option<GpuBackend>,
}

/// A task's checked output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutput {
    /// The one output file (inside the task dir).
    pub path: PathBuf,
    /// What the task used.
    pub usage: ResourceUsage,
}

/// Why a task produced no output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The task itself is unusable (index out of range, input missing or
    /// badly named, a kind/format this runtime cannot do).
    #[error("bad task: {0}")]
    BadTask(String),
    /// The builtin renderer refused the scene or the region.
    #[error("builtin renderer: {0}")]
    Builtin(#[from] builtin::RenderError),
    /// The sandbox is unavailable or could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Blender is not installed.
    #[error("blender not found: install it (apt install blender) or run scripts/deps.sh")]
    BlenderMissing,
    /// Eevee needs an OpenGL context (a display or EGL) it did not get.
    #[error(
        "Eevee could not create an OpenGL context in the sandbox (no display/EGL device): {detail}; use Cycles, or run the node on a machine with a GPU"
    )]
    EeveeNoContext {
        /// Blender's own lines about it.
        detail: String,
    },
    /// The command ended with a failure status.
    #[error("{what} failed with {status}: {detail}")]
    Failed {
        /// "blender" or "process".
        what: &'static str,
        /// "exit code N" / "signal N (NAME)".
        status: String,
        /// Its last error lines.
        detail: String,
    },
    /// The command succeeded but left no usable output.
    #[error("{what} wrote no output: {detail}")]
    NoOutput {
        /// "blender" or "process".
        what: &'static str,
        /// What it said and what was found.
        detail: String,
    },
    /// The deadline passed; the task was stopped.
    #[error("the task passed its deadline and was stopped")]
    DeadlineExceeded,
    /// Cancelled by the driver; the task was stopped.
    #[error("the task was cancelled")]
    Cancelled,
    /// The output failed its sanity check.
    #[error("output check: {0}")]
    Check(#[from] CheckError),
    /// A file operation of the runtime failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }
}

/// Whether `name` can be an input's file name: non-empty, at most
/// [`MAX_INPUT_NAME`] bytes, no `/` or NUL, not `.` or `..`.
pub fn valid_input_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INPUT_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

impl TaskRun {
    /// A task of `spec`, its geometry computed from the spec's split.
    pub fn new(
        spec: JobSpec,
        index: u32,
        inputs: BTreeMap<String, PathBuf>,
        task_dir: PathBuf,
        deadline: Instant,
        limits: Limits,
        gpu: Option<GpuBackend>,
    ) -> Result<TaskRun, RuntimeError> {
        let geometry =
            task_geometry(&spec.split, spec.width, spec.height, index).ok_or_else(|| {
                RuntimeError::BadTask(format!(
                    "task {index} does not exist in split {:?} of a {}x{} frame",
                    spec.split, spec.width, spec.height
                ))
            })?;
        let t = TaskRun {
            spec,
            index,
            geometry,
            inputs,
            task_dir,
            deadline,
            limits,
            gpu,
        };
        t.validate()?;
        Ok(t)
    }

    /// Checks what [`run_task`] relies on: region inside the frame, every
    /// spec input present under a plain name and nothing else, a task dir.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |m: String| Err(RuntimeError::BadTask(m));
        let (w, h) = (self.spec.width, self.spec.height);
        if !self.geometry.region.fits(w, h) {
            return bad(format!(
                "region {:?} is not inside the {w}x{h} frame",
                self.geometry.region
            ));
        }
        for i in &self.spec.inputs {
            if !valid_input_name(&i.name) {
                return bad(format!(
                    "input name {:?} is not a plain file name (1..={MAX_INPUT_NAME} bytes, no '/', not '.' or '..')",
                    i.name
                ));
            }
            if !self.inputs.contains_key(&i.name) {
                return bad(format!("input {:?} was not provided", i.name));
            }
        }
        if let Some(extra) = self
            .inputs
            .keys()
            .find(|k| !self.spec.inputs.iter().any(|i| &i.name == *k))
        {
            return bad(format!("input {extra:?} is not in the job spec"));
        }
        if !self.task_dir.is_dir() {
            return bad(format!(
                "task dir {} does not exist",
                self.task_dir.display()
            ));
        }
        Ok(())
    }

    /// The spec's inputs in spec order, as (name, host path).
    pub fn input_list(&self) -> Vec<(String, PathBuf)> {
        self.spec
            .inputs
            .iter()
            .filter_map(|i| {
                self.inputs
                    .get(&i.name)
                    .map(|p| (i.name.clone(), p.clone()))
            })
            .collect()
    }

    /// Input 0 (the scene of render kinds), as (name, host path).
    pub fn scene_input(&self) -> Result<(&str, &Path), RuntimeError> {
        let first =
            self.spec.inputs.first().ok_or_else(|| {
                RuntimeError::BadTask("the job has no input 0 (the scene)".into())
            })?;
        let path = self.inputs.get(&first.name).ok_or_else(|| {
            RuntimeError::BadTask(format!("input 0 {:?} was not provided", first.name))
        })?;
        Ok((&first.name, path))
    }

    /// What the output must be.
    pub fn expect(&self) -> Expect {
        match self.spec.kind {
            JobKind::Process { .. } => Expect::File,
            JobKind::Builtin | JobKind::Blender { .. } => Expect::Image {
                format: self.spec.format,
                width: self.geometry.region.w,
                height: self.geometry.region.h,
            },
        }
    }

    /// Where a render's output goes on the host: `TASK_DIR/output.png|.exr`.
    pub fn render_output_path(&self) -> PathBuf {
        let ext = match self.spec.format {
            ImageFormat::Png => "png",
            ImageFormat::Exr => "exr",
        };
        self.task_dir.join(format!("output.{ext}"))
    }
}

/// Runs `task` in its runtime, then sanity-checks the output.
pub async fn run_task(
    task: &TaskRun,
    progress: mpsc::Sender<u16>,
    cancel: CancellationToken,
) -> Result<TaskOutput, RuntimeError> {
    task.validate()?;
    let report = std::sync::Arc::new(Progress::new(progress));
    let out = match &task.spec.kind {
        JobKind::Builtin => builtin::run(task, &report, &cancel).await?,
        JobKind::Blender { engine } => blender::run(task, *engine, &report, &cancel).await?,
        JobKind::Process { argv, .. } => process::run(task, argv, &report, &cancel).await?,
    };
    let checked = check::check_output(&out.path, &task.expect(), task.limits.max_output_bytes)?;
    tracing::debug!(path = %out.path.display(), bytes = checked.bytes, "task output checked");
    report.done();
    Ok(out)
}

/// Increasing per-mille progress on a channel that never blocks the runtime.
#[derive(Debug)]
pub(crate) struct Progress {
    tx: mpsc::Sender<u16>,
    last: AtomicU16,
}

impl Progress {
    pub(crate) fn new(tx: mpsc::Sender<u16>) -> Progress {
        Progress {
            tx,
            last: AtomicU16::new(0),
        }
    }

    /// Reports `permille` (capped at 999) if it is higher than the last report.
    pub(crate) fn report(&self, permille: u16) {
        let p = permille.min(999);
        if self.last.fetch_max(p, Ordering::Relaxed) < p {
            let _ = self.tx.try_send(p);
        }
    }

    fn done(&self) {
        self.last.store(1000, Ordering::Relaxed);
        let _ = self.tx.try_send(1000);
    }
}

/// `Duration` → whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Removes `path` if present (a file or a symlink, never followed).
pub(crate) fn remove_if_present(path: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::Io {
            context: format!("removing {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}
