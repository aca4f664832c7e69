//! The bubblewrap sandbox that `process` and `blender` tasks run in, and the
//! supervisor that runs a sandboxed command to its end, its deadline or its
//! cancellation.
//!
//! # What this module owns
//!
//! The exact command line (`prlimit … -- bwrap … -- COMMAND`) and what it
//! lets the command see and do; starting it, reading its output, measuring
//! it, and killing it. What the sandbox looks like from inside:
//!
//! | path | what | how |
//! |---|---|---|
//! | `/usr`, `/bin`, `/sbin`, `/lib*` | the host's programs and libraries | read-only bind (or the host's symlink, on merged-/usr systems) |
//! | `/etc/…` | a short allow-list: dynamic linker cache and config, alternatives, fonts, passwd/group, nsswitch, localtime, hosts | read-only binds, each only if present |
//! | `/job/in/NAME` | each input of the job | read-only bind of the decrypted file |
//! | `/job/task` | the task dir: **the only writable place that survives** | read-write bind; the working directory |
//! | `/tmp` | scratch, also `HOME` | fresh tmpfs, at most `limits.memory_bytes` |
//! | `/proc` | fresh procfs of the sandbox's PID namespace, **read-only** | `--proc`, `--remount-ro` |
//! | `/dev` | minimal devices (null, zero, random, tty, shm, …) | `--dev` |
//! | everything else, `/` itself | nothing; not writable | bwrap's root, `--remount-ro /` |
//! | `/dev/nvidia*`, `/dev/dri`, `/dev/kfd`, `/sys` | GPU devices, only for GPU tasks | `--dev-bind`, `/sys` read-only |
//!
//! **Decision: a minimal set of read-only binds, not `--ro-bind / /`.** The
//! whole root would show the node's data dir (its identity key is readable
//! by the node's user), the user's home, SSH keys and other tasks' dirs to a
//! command that can copy them into its output, which goes back to the
//! creator. Programs installed outside `/usr` (e.g. a Blender tarball in
//! `/opt`) are bound explicitly by the runtime that needs them.
//!
//! Namespaces: all of them (`--unshare-all`, so the only network is an
//! unconnected loopback), a user namespace even when the node runs as root
//! (`--unshare-user`, `--cap-drop ALL`; with bwrap ≥ 0.8 also
//! `--disable-userns`, so the command cannot build a new one to regain
//! privileges), its own session (`--new-session`: no TIOCSTI into the
//! node's terminal). The command runs as uid/gid [`SANDBOX_ID`] (nobody)
//! inside, as PID 1 of its PID namespace (`--as-pid-1`, see Measuring).
//! The environment is cleared and set to `PATH`, `HOME`, `TMPDIR`, `LANG`.
//! bwrap dies with the node (`--die-with-parent`).
//!
//! **Why `/proc` is read-only:** bwrap 0.8 leaves `/proc/sys` writable when
//! its own access check says it is not (it covers only `irq` and `bus`
//! here). Inside a user namespace the command's *kernel* uid is still the
//! node's; for a node run as root that is uid 0, and sysctls that check only
//! file permissions (not capabilities) would be writable on the host. Run
//! the node as an ordinary user anyway: the sandbox is the second wall, not
//! the only one.
//!
//! Limits, by `prlimit` wrapping bwrap (inherited by everything inside;
//! `unsafe_code` is forbidden in this workspace, so no `pre_exec`):
//! `RLIMIT_AS` = memory (for GPU tasks `RLIMIT_DATA` instead: GPU drivers
//! reserve address space far beyond what they use), `RLIMIT_CPU` per
//! process, `RLIMIT_FSIZE` = the output size limit, no core dumps. The
//! wall-clock deadline is enforced here by [`supervise`]. Not bounded: the
//! number of processes (RLIMIT_NPROC counts all of the user's processes on
//! the host) and the total size of the task dir (needs a quota or a
//! dedicated filesystem); the deadline ends both.
//!
//! Killing: [`supervise`] makes the sandbox its own process group, sends
//! `SIGTERM` to the group, waits `limits.kill_grace`, then `SIGKILL`. bwrap
//! does not forward `SIGTERM`: it dies, and the kernel then kills the
//! command (`--die-with-parent`) and every process of the sandbox's PID
//! namespace with it, so nothing started inside outlives the kill, whatever
//! session or group it put itself in. The same happens if the future
//! running the task is dropped.
//!
//! Measuring: CPU time is read from `/proc/PID/stat` of bwrap after it has
//! exited but before it is reaped (`waitid(WNOWAIT)`): its own time plus
//! that of every descendant waited for, i.e. the whole sandbox. This needs
//! `--as-pid-1`: with bwrap's own init as PID 1, the outer bwrap learns the
//! exit code through an eventfd and exits without reaping the sandbox, so
//! its CPU time would be lost. The price: the command is PID 1 (it does not
//! get signals it has no handler for, which nothing here relies on, and it
//! reaps orphans only if it waits). A command killed by signal N makes bwrap
//! exit with 128 + N. Peak memory
//! is the largest sum of resident set sizes over the sandbox's process tree,
//! sampled every 200 ms (a spike shorter than that can be missed).
//!
//! # What it must not do
//!
//! It decides nothing about a job: runtimes say what to run and which inputs
//! to show. It never runs a command outside bwrap.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Limits, RuntimeError};

/// Where the task dir appears inside the sandbox (also the working directory).
pub const TASK_DIR: &str = "/job/task";
/// Where inputs appear inside the sandbox: `/job/in/NAME`, read-only.
pub const INPUT_DIR: &str = "/job/in";

/// The uid and gid a sandboxed command runs as (inside its user namespace).
pub const SANDBOX_ID: &str = "65534";
/// `/etc` entries shown to sandboxed commands (read-only, when present).
const ETC_ALLOW: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "fonts",
    "passwd",
    "group",
    "nsswitch.conf",
    "localtime",
    "hosts",
    "mime.types",
];
/// More `/etc` entries for GPU tasks (ICD loaders).
const ETC_GPU: &[&str] = &["OpenCL", "vulkan", "glvnd", "nvidia"];
/// Top-level directories that are symlinks into /usr on merged-/usr systems.
const ROOT_LIB_DIRS: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Why a sandboxed command could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// `bwrap` is not on `PATH`.
    #[error("bubblewrap not found: install it (apt install bubblewrap) or run scripts/deps.sh")]
    BwrapMissing,
    /// `prlimit` is not on `PATH`.
    #[error(
        "prlimit not found: install util-linux (apt install util-linux) or run scripts/deps.sh"
    )]
    PrlimitMissing,
    /// Starting `prlimit`/`bwrap` failed.
    #[error("cannot start the sandbox: {0}")]
    Spawn(#[source] std::io::Error),
    /// bwrap or prlimit refused to set the sandbox up (its own message):
    /// e.g. unprivileged user namespaces are disabled on this host, or the
    /// command does not exist inside the sandbox.
    #[error("the sandbox could not be set up: {0}")]
    Setup(String),
}

/// The sandbox programs, found on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// bubblewrap.
    pub bwrap: PathBuf,
    /// util-linux prlimit.
    pub prlimit: PathBuf,
    /// bwrap ≥ 0.8.0 (`--disable-userns`, `--size`).
    pub bwrap_0_8: bool,
}

impl Tools {
    /// Finds bwrap and prlimit, with a clear error for whichever is missing.
    pub fn find() -> Result<Tools, SandboxError> {
        let bwrap = find_program("bwrap").ok_or(SandboxError::BwrapMissing)?;
        let prlimit = find_program("prlimit").ok_or(SandboxError::PrlimitMissing)?;
        let version = std::process::Command::new(&bwrap)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| crate::probe::parse_bwrap_version(&String::from_utf8_lossy(&o.stdout)));
        let bwrap_0_8 = version.as_deref().is_some_and(|v| {
            let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            (major, minor) >= (0, 8)
        });
        Ok(Tools {
            bwrap,
            prlimit,
            bwrap_0_8,
        })
    }
}

/// The first executable `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What one sandboxed run may see and use.
#[derive(Debug, Clone)]
pub struct SandboxSpec<'a> {
    /// The task dir (host path), bound read-write at [`TASK_DIR`].
    pub task_dir: &'a Path,
    /// Inputs: (name, host path), bound read-only at `/job/in/NAME`. Names
    /// must be plain file names (the runtime checks them first).
    pub inputs: &'a [(String, PathBuf)],
    /// More host directories to show read-only at the same path.
    pub extra_ro: &'a [PathBuf],
    /// Show the GPU devices.
    pub gpu: bool,
    /// Resource limits.
    pub limits: &'a Limits,
}

fn push(v: &mut Vec<OsString>, args: &[&str]) {
    v.extend(args.iter().map(OsString::from));
}

fn push_bind(v: &mut Vec<OsString>, flag: &str, src: &Path, dest: &Path) {
    v.push(flag.into());
    v.push(src.into());
    v.push(dest.into());
}

impl SandboxSpec<'_> {
    /// The full command line: `prlimit … -- bwrap … -- command…`.
    pub fn argv(&self, tools: &Tools, command: &[String]) -> Vec<OsString> {
        let l = self.limits;
        let mut v: Vec<OsString> = vec![tools.prlimit.clone().into()];
        let mem = if self.gpu { "--data" } else { "--as" };
        v.push(format!("{mem}={}", l.memory_bytes).into());
        if let Some(cpu) = l.cpu_seconds {
            // SIGXCPU at the soft limit; SIGKILL a second later if ignored.
            v.push(format!("--cpu={cpu}:{}", cpu.saturating_add(1)).into());
        }
        v.push(format!("--fsize={}", l.max_output_bytes).into());
        push(&mut v, &["--core=0", "--"]);

        v.push(tools.bwrap.clone().into());
        push(
            &mut v,
            &[
                "--unshare-all",
                "--unshare-user",
                "--uid",
                SANDBOX_ID,
                "--gid",
                SANDBOX_ID,
                "--cap-drop",
                "ALL",
                "--die-with-parent",
                "--new-session",
                "--as-pid-1",
                "--hostname",
                "rendertrust",
                "--clearenv",
                "--setenv",
                "PATH",
                "/usr/local/bin:/usr/bin:/bin",
                "--setenv",
                "HOME",
                "/tmp",
                "--setenv",
                "TMPDIR",
                "/tmp",
                "--setenv",
                "LANG",
                "C.UTF-8",
            ],
        );
        if tools.bwrap_0_8 {
            v.push("--disable-userns".into());
        }
        let usr = Path::new("/usr");
        push_bind(&mut v, "--ro-bind", usr, usr);
        for d in ROOT_LIB_DIRS {
            let p = Path::new("/").join(d);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(&p) {
                        v.push("--symlink".into());
                        v.push(target.into());
                        v.push(p.into());
                    }
                }
                Ok(m) if m.is_dir() => push_bind(&mut v, "--ro-bind", &p, &p),
                _ => {}
            }
        }
        let etc = Path::new("/etc");
        let gpu_etc: &[&str] = if self.gpu { ETC_GPU } else { &[] };
        for e in ETC_ALLOW.iter().chain(gpu_etc) {
            let p = etc.join(e);
            push_bind(&mut v, "--ro-bind-try", &p, &p);
        }
        push(
            &mut v,
            &[
                "--symlink",
                "../proc/self/mounts",
                "/etc/mtab",
                "--proc",
                "/proc",
                "--remount-ro",
                "/proc",
                "--dev",
                "/dev",
            ],
        );
        if tools.bwrap_0_8 {
            v.push("--size".into());
            v.push(l.memory_bytes.to_string().into());
        }
        push(&mut v, &["--tmpfs", "/tmp"]);
        if self.gpu {
            for dev in gpu_devices() {
                push_bind(&mut v, "--dev-bind", &dev, &dev);
            }
            let sys = Path::new("/sys");
            push_bind(&mut v, "--ro-bind-try", sys, sys);
        }
        for p in self.extra_ro {
            push_bind(&mut v, "--ro-bind", p, p);
        }
        push(&mut v, &["--dir", INPUT_DIR]);
        for (name, host) in self.inputs {
            push_bind(&mut v, "--ro-bind", host, &Path::new(INPUT_DIR).join(name));
        }
        push_bind(&mut v, "--bind", self.task_dir, Path::new(TASK_DIR));
        push(&mut v, &["--remount-ro", "/", "--chdir", TASK_DIR, "--"]);
        v.extend(command.iter().map(OsString::from));
        v
    }
}

/// GPU device nodes on this host: `/dev/nvidia*` (and `/dev/nvidia-caps`),
/// `/dev/dri`, `/dev/kfd`.
fn gpu_devices() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/dev") {
        let mut nv: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
            .map(|e| e.path())
            .collect();
        nv.sort();
        out.extend(nv);
    }
    for p in ["/dev/dri", "/dev/kfd"] {
        if Path::new(p).exists() {
            out.push(PathBuf::from(p));
        }
    }
    out
}

/// How a supervised command ended (it exited by itself).
#[derive(Debug)]
pub struct Exit {
    /// Its exit status (of bwrap, which passes on the command's).
    pub status: ExitStatus,
    /// CPU time of the whole sandbox (user + system).
    pub cpu: Duration,
    /// Peak resident memory of the sandbox's process tree (sampled).
    pub peak_rss_bytes: u64,
    /// Wall time from start to exit.
    pub wall: Duration,
    /// The last [`STDERR_TAIL`] bytes of its stderr.
    pub stderr_tail: String,
}

impl Exit {
    /// "exit code N" or "signal N (NAME)".
    pub fn describe(&self) -> String {
        describe_status(self.status)
    }

    /// bwrap's or prlimit's own complaint, when the sandbox never ran the command.
    pub fn setup_failure(&self) -> Option<String> {
        if self.status.code() != Some(1) {
            return None;
        }
        self.stderr_tail
            .lines()
            .find(|l| l.starts_with("bwrap: ") || l.starts_with("prlimit: "))
            .map(str::to_owned)
    }
}

/// Describes an exit status for people.
pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        // bwrap (as the sandbox's parent) exits 128 + N when the command
        // dies of signal N.
        (Some(c @ 129..=192), _) => match Signal::try_from(c - 128) {
            Ok(name) => format!("exit code {c} (128 + {name}: killed by {name})"),
            Err(_) => format!("exit code {c}"),
        },
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        _ => "an unknown status".into(),
    }
}

/// Bytes of stderr kept for error messages.
pub const STDERR_TAIL: usize = 8 * 1024;
/// Longest stdout line passed on (longer lines are cut).
pub const MAX_LINE: usize = 4096;

/// Kills the process group on drop unless disarmed: a dropped task future
/// must not leave its sandbox running.
struct KillOnDrop {
    pgid: Pid,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Why [`supervise`] stopped a command.
enum Stop {
    Cancelled,
    Deadline,
}

/// Runs `argv` (from [`SandboxSpec::argv`]) in its own process group until
/// it exits, `deadline` passes or `cancel` fires; every stdout line (cut at
/// [`MAX_LINE`] bytes) goes to `on_line`. On deadline or cancel the group
/// gets SIGTERM, then SIGKILL after `grace`, and the answer is
/// [`RuntimeError::DeadlineExceeded`] or [`RuntimeError::Cancelled`].
pub async fn supervise(
    argv: &[OsString],
    deadline: Instant,
    cancel: &CancellationToken,
    grace: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<Exit, RuntimeError> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| RuntimeError::BadTask("empty command line".into()))?;
    let started = Instant::now();
    let mut child = std::process::Command::new(prog)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| RuntimeError::Sandbox(SandboxError::Spawn(e)))?;
    let raw_pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let pid = Pid::from_raw(raw_pid);
    let mut guard = KillOnDrop {
        pgid: pid,
        armed: true,
    };

    let (line_tx, mut line_rx) = mpsc::channel::<String>(256);
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || pump_lines(out, &line_tx));
    }
    let (err_tx, err_rx) = oneshot::channel::<String>();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = err_tx.send(tail(err));
        });
    }
    let (exit_tx, mut exit_rx) = oneshot::channel::<(std::io::Result<ExitStatus>, Duration)>();
    std::thread::spawn(move || {
        // Wait without reaping, so /proc/PID/stat still holds the totals.
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let cpu = zombie_cpu(raw_pid);
        let _ = exit_tx.send((child.wait(), cpu));
    });

    let mut peak = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
    tokio::pin!(sleep);
    let mut lines_open = true;
    let ended = loop {
        tokio::select! {
            r = &mut exit_rx => break Ok(r),
            l = line_rx.recv(), if lines_open => match l {
                Some(l) => on_line(&l),
                None => lines_open = false,
            },
            _ = cancel.cancelled() => break Err(Stop::Cancelled),
            _ = &mut sleep => break Err(Stop::Deadline),
            _ = tick.tick() => peak = peak.max(tree_rss_bytes(raw_pid)),
        }
    };
    match ended {
        Ok(r) => {
            guard.armed = false;
            let (status, cpu) = r.map_err(|_| RuntimeError::Io {
                context: "waiting for the sandbox".into(),
                source: std::io::Error::other("waiter thread ended"),
            })?;
            let status = status.map_err(|e| RuntimeError::Io {
                context: "waiting for the sandbox".into(),
                source: e,
            })?;
            let wall = started.elapsed();
            // The pipes close once the sandbox is gone; drain what is left.
            if lines_open {
                let drain = async {
                    while let Some(l) = line_rx.recv().await {
                        on_line(&l);
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            }
            let stderr_tail = tokio::time::timeout(Duration::from_secs(2), err_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            Ok(Exit {
                status,
                cpu,
                peak_rss_bytes: peak,
                wall,
                stderr_tail,
            })
        }
        Err(stop) => {
            tracing::info!(
                pid = raw_pid,
                reason = match stop {
                    Stop::Cancelled => "cancelled",
                    Stop::Deadline => "deadline",
                },
                "stopping sandboxed task"
            );
            let _ = killpg(pid, Signal::SIGTERM);
            if tokio::time::timeout(grace, &mut exit_rx).await.is_err() {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = exit_rx.await;
            }
            guard.armed = false;
            Err(match stop {
                Stop::Cancelled => RuntimeError::Cancelled,
                Stop::Deadline => RuntimeError::DeadlineExceeded,
            })
        }
    }
}

/// Reads `r` to its end, sending each line (split at `\n` or `\r`, cut at
/// [`MAX_LINE`] bytes, lossily UTF-8). Keeps reading after the receiver is
/// gone, so the writer never blocks on a full pipe.
fn pump_lines(mut r: impl Read, tx: &mpsc::Sender<String>) {
    let mut buf = [0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    let send = |line: &mut Vec<u8>| {
        if !line.is_empty() {
            let _ = tx.blocking_send(String::from_utf8_lossy(line).into_owned());
            line.clear();
        }
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in buf.get(..n).unwrap_or(&[]) {
            if b == b'\n' || b == b'\r' {
                send(&mut line);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    send(&mut line);
}

/// Reads `r` to its end, keeping the last [`STDERR_TAIL`] bytes.
fn tail(mut r: impl Read) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(buf.get(..n).unwrap_or(&[]));
                if kept.len() > 2 * STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if kept.len() > STDERR_TAIL {
        kept.drain(..kept.len() - STDERR_TAIL);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// utime + stime + cutime + cstime of an exited, not yet reaped process.
fn zombie_cpu(pid: i32) -> Duration {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    Duration::from_millis(parse_stat_cpu_ms(&text, clock_ticks()).unwrap_or(0))
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// CPU milliseconds (own + waited-for children) from a `/proc/PID/stat` line.
pub fn parse_stat_cpu_ms(stat: &str, ticks_per_sec: u64) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) .. cstime (17) are 11..=14.
    let mut ticks = 0u64;
    for i in 11..=14 {
        ticks = ticks.saturating_add(f.get(i)?.parse::<u64>().ok()?);
    }
    Some(ticks.saturating_mul(1000) / ticks_per_sec.max(1))
}

/// Sum of resident memory over `pid` and its descendants.
fn tree_rss_bytes(pid: i32) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    let mut stack = vec![pid];
    let mut total = 0u64;
    let mut seen = 0usize;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        if let Ok(statm) = std::fs::read_to_string(format!("/proc/{p}/statm")) {
            let pages: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            total = total.saturating_add(pages.saturating_mul(page));
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.filter_map(Result::ok) {
                if let Ok(kids) = std::fs::read_to_string(t.path().join("children")) {
                    stack.extend(
                        kids.split_whitespace()
                            .filter_map(|k| k.parse::<i32>().ok()),
                    );
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_parses_names_with_spaces_and_parens() {
        let line =
            "1234 (a b) c)) Z 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 30 20 20 0 1 0 5 0 0";
        // utime 150 + stime 50 + cutime 30 + cstime 20 = 250 ticks at 100/s
        assert_eq!(parse_stat_cpu_ms(line, 100), Some(2500));
        assert_eq!(parse_stat_cpu_ms("garbage", 100), None);
        assert_eq!(parse_stat_cpu_ms("1 (x) Z 1 2", 100), None);
    }

    #[test]
    fn lines_are_split_and_cut() {
        let (tx, mut rx) = mpsc::channel(16);
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\r\ntwo\rthree\n{long}\nlast");
        pump_lines(input.as_bytes(), &tx);
        drop(tx);
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push(l);
        }
        assert_eq!(got[..3], ["one", "two", "three"]);
        assert_eq!(got[3].len(), MAX_LINE);
        assert_eq!(got[4], "last");
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn tail_keeps_the_end() {
        let s = format!("{}END", "a".repeat(3 * STDERR_TAIL));
        let t = tail(s.as_bytes());
        assert_eq!(t.len(), STDERR_TAIL);
        assert!(t.ends_with("END"));
    }

    #[test]
    fn command_line_shape() {
        let limits = Limits {
            memory_bytes: 1 << 30,
            cpu_seconds: Some(60),
            max_output_bytes: 1 << 20,
            ..Limits::default()
        };
        let inputs = vec![("scene.blend".to_owned(), PathBuf::from("/cache/abc"))];
        let spec = SandboxSpec {
            task_dir: Path::new("/data/tasks/t1"),
            inputs: &inputs,
            extra_ro: &[],
            gpu: false,
            limits: &limits,
        };
        let tools = Tools {
            bwrap: "/usr/bin/bwrap".into(),
            prlimit: "/usr/bin/prlimit".into(),
            bwrap_0_8: true,
        };
        let argv: Vec<String> = spec
            .argv(&tools, &["echo".into(), "hi".into()])
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = argv.join(" ");
        assert!(joined.starts_with(
            "/usr/bin/prlimit --as=1073741824 --cpu=60:61 --fsize=1048576 --core=0 -- /usr/bin/bwrap --unshare-all --unshare-user --uid 65534 --gid 65534 --cap-drop ALL --die-with-parent --new-session --as-pid-1"
        ), "{joined}");
        assert!(joined.contains("--clearenv"));
        assert!(joined.contains("--disable-userns"));
        assert!(joined.contains("--ro-bind /usr /usr"));
        assert!(joined.contains("--proc /proc --remount-ro /proc"));
        assert!(joined.contains("--ro-bind /cache/abc /job/in/scene.blend"));
        assert!(
            joined.ends_with(
                "--bind /data/tasks/t1 /job/task --remount-ro / --chdir /job/task -- echo hi"
            ),
            "{joined}"
        );
        // nothing else writable, no host root, no GPU without asking
        assert_eq!(argv.iter().filter(|a| *a == "--bind").count(), 1);
        assert!(!joined.contains("--ro-bind / /"));
        assert!(!joined.contains("--share-net"));
        assert!(!joined.contains("/dev/nvidia") && !joined.contains("--dev-bind"));
        // GPU tasks: data limit instead of address space
        let spec = SandboxSpec { gpu: true, ..spec };
        let joined: Vec<String> = spec
            .argv(&tools, &["x".into()])
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(joined.iter().any(|a| a == "--data=1073741824"));
        assert!(!joined.iter().any(|a| a.starts_with("--as=")));
    }
}
