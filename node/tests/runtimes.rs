//! The task runtimes against the real thing: the builtin renderer through
//! `run_task`, real bubblewrap for `process` tasks, real Blender.
//!
//! When bwrap/prlimit or blender is missing, a test prints a loud SKIPPED
//! message and passes outside CI; with `CI` set it fails (`.ci/run` installs
//! them through scripts/deps.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rendertrust_node::runtime::builtin::{self, RenderError, SceneError};
use rendertrust_node::runtime::sandbox::{SandboxError, find_program};
use rendertrust_node::runtime::{CheckError, Limits, RuntimeError, TaskOutput, TaskRun, run_task};
use rendertrust_protocol::content::ContentId;
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::task::Rect;
use rendertrust_protocol::wire::{
    BlenderEngine, ImageFormat, InputRef, JobId, JobKind, JobSpec, Requirements, SplitRule,
    VerificationPolicy,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Whether `tools` are installed; if not: fail in CI, else skip loudly.
fn available(tools: &[&str], what: &str) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_program(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} not found, but CI is set: {what} must be tested in CI (scripts/deps.sh installs it)",
            missing.join(", ")
        );
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {what}: {} not found. Install with scripts/deps.sh. !!!!!!!!\n",
        missing.join(", ")
    );
    false
}

fn sandbox_ok() -> bool {
    available(&["bwrap", "prlimit"], "the bubblewrap sandbox")
}

fn spec(kind: JobKind, inputs: &[&str], split: SplitRule, w: u32, h: u32) -> JobSpec {
    let creator = NodeId::from_bytes([7; 32]);
    JobSpec {
        id: JobId::derive(&creator, 1),
        creator,
        nonce: 1,
        created_at_ms: 0,
        kind,
        inputs: inputs
            .iter()
            .map(|n| InputRef {
                name: (*n).to_owned(),
                manifest: ContentId([0; 32]),
                size: 0,
            })
            .collect(),
        requirements: Requirements::default(),
        split,
        width: w,
        height: h,
        format: ImageFormat::Png,
        max_price_per_task: 1,
        verification: VerificationPolicy::None,
        deadline_ms: 0,
    }
}

fn one_frame() -> SplitRule {
    SplitRule::Frames {
        start: 1,
        end: 1,
        step: 1,
    }
}

/// A fresh dir outside `/tmp` (the sandbox has its own `/tmp`), so "not
/// visible inside" means something.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

struct Job {
    dir: tempfile::TempDir,
    spec: JobSpec,
    inputs: BTreeMap<String, PathBuf>,
}

impl Job {
    fn new(spec: JobSpec, files: &[(&str, &[u8])]) -> Job {
        let dir = scratch();
        std::fs::create_dir(dir.path().join("in")).unwrap();
        let mut inputs = BTreeMap::new();
        for (name, bytes) in files {
            let p = dir.path().join("in").join(name);
            std::fs::write(&p, bytes).unwrap();
            inputs.insert((*name).to_owned(), p);
        }
        Job { dir, spec, inputs }
    }

    fn task(&self, index: u32, limits: Limits, deadline: Duration) -> TaskRun {
        let td = self.dir.path().join(format!("task{index}"));
        std::fs::create_dir_all(&td).unwrap();
        TaskRun::new(
            self.spec.clone(),
            index,
            self.inputs.clone(),
            td,
            Instant::now() + deadline,
            limits,
            None,
        )
        .unwrap()
    }

    async fn run(&self, index: u32) -> (Result<TaskOutput, RuntimeError>, Vec<u16>) {
        let t = self.task(index, small_limits(), Duration::from_secs(120));
        run_collect(&t, CancellationToken::new()).await
    }
}

fn small_limits() -> Limits {
    Limits {
        memory_bytes: 2 << 30,
        cpu_seconds: Some(120),
        max_output_bytes: 64 << 20,
        threads: 2,
        kill_grace: Duration::from_millis(500),
    }
}

async fn run_collect(
    t: &TaskRun,
    cancel: CancellationToken,
) -> (Result<TaskOutput, RuntimeError>, Vec<u16>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let r = run_task(t, tx, cancel).await;
    let mut seen = Vec::new();
    while let Ok(p) = rx.try_recv() {
        seen.push(p);
    }
    (r, seen)
}

fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn process(argv: &[&str]) -> JobKind {
    JobKind::Process {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        deterministic: true,
    }
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

// ---------------------------------------------------------------- builtin

const TEST_SCENE_SAMPLES: &str = "samples = 4";

fn test_scene() -> String {
    builtin::DEFAULT_SCENE.replace("samples = 16", TEST_SCENE_SAMPLES)
}

#[tokio::test]
async fn builtin_tiles_through_run_task_equal_the_full_frame() {
    let (w, h) = (60u32, 34u32);
    let scene = test_scene();
    let job = Job::new(
        spec(
            JobKind::Builtin,
            &["scene.toml"],
            SplitRule::Tiles {
                frame: 9,
                cols: 3,
                rows: 2,
            },
            w,
            h,
        ),
        &[("scene.toml", scene.as_bytes())],
    );
    let full_png = builtin::render_png(&scene, 9, w, h, Rect::full(w, h)).unwrap();
    let full_path = job.dir.path().join("full.png");
    std::fs::write(&full_path, &full_png).unwrap();
    let (fw, fh, full) = decode_png(&full_path);
    assert_eq!((fw, fh), (w, h));
    for index in 0..6 {
        let (r, progress) = job.run(index).await;
        let out = r.unwrap();
        assert_eq!(
            out.path,
            job.dir.path().join(format!("task{index}/output.png"))
        );
        assert_eq!(progress.last(), Some(&1000), "{progress:?}");
        assert!(progress.windows(2).all(|p| p[0] < p[1]), "{progress:?}");
        assert!(out.usage.peak_mem_bytes > 0);
        let t = job.task(index, small_limits(), Duration::from_secs(60));
        let reg = t.geometry.region;
        let (tw, th, tile) = decode_png(&out.path);
        assert_eq!((tw, th), (reg.w, reg.h));
        for row in 0..reg.h {
            let src = (((reg.y + row) * w + reg.x) * 3) as usize;
            let dst = (row * reg.w * 3) as usize;
            assert_eq!(
                tile[dst..dst + reg.w as usize * 3],
                full[src..src + reg.w as usize * 3],
                "tile {index} row {row}"
            );
        }
    }
}

#[tokio::test]
async fn builtin_refusals() {
    // a scene that does not parse: the error names the field
    let bad = test_scene().replace(TEST_SCENE_SAMPLES, "samples = 0");
    let job = Job::new(
        spec(JobKind::Builtin, &["s.toml"], one_frame(), 16, 9),
        &[("s.toml", bad.as_bytes())],
    );
    match job.run(0).await.0 {
        Err(RuntimeError::Builtin(RenderError::Scene(SceneError::Invalid { field, .. }))) => {
            assert_eq!(field, "render.samples")
        }
        other => panic!("expected a scene error, got {other:?}"),
    }
    // EXR is not something the builtin renderer writes
    let mut s = spec(JobKind::Builtin, &["s.toml"], one_frame(), 16, 9);
    s.format = ImageFormat::Exr;
    let job = Job::new(s, &[("s.toml", test_scene().as_bytes())]);
    assert!(matches!(job.run(0).await.0, Err(RuntimeError::BadTask(_))));
    // an input the spec names but the driver did not provide
    let job = Job::new(spec(JobKind::Builtin, &["s.toml"], one_frame(), 16, 9), &[]);
    let e = TaskRun::new(
        job.spec.clone(),
        0,
        BTreeMap::new(),
        job.dir.path().to_owned(),
        Instant::now(),
        Limits::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, RuntimeError::BadTask(m) if m.contains("not provided")));
    // an input name that would escape /job/in
    let job = Job::new(spec(JobKind::Builtin, &["../x"], one_frame(), 16, 9), &[]);
    let e = TaskRun::new(
        job.spec.clone(),
        0,
        BTreeMap::from([("../x".to_owned(), PathBuf::from("/etc/passwd"))]),
        job.dir.path().to_owned(),
        Instant::now(),
        Limits::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, RuntimeError::BadTask(m) if m.contains("plain file name")));
    // a task index past the split
    let e = TaskRun::new(
        job.spec.clone(),
        1,
        BTreeMap::new(),
        job.dir.path().to_owned(),
        Instant::now(),
        Limits::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, RuntimeError::BadTask(m) if m.contains("does not exist")));
}

#[tokio::test]
async fn builtin_stops_at_cancel_and_deadline() {
    let heavy = builtin::DEFAULT_SCENE.replace("samples = 16", "samples = 4096");
    let job = Job::new(
        spec(JobKind::Builtin, &["s.toml"], one_frame(), 400, 300),
        &[("s.toml", heavy.as_bytes())],
    );
    let t = job.task(0, small_limits(), Duration::from_millis(300));
    assert!(matches!(
        run_collect(&t, CancellationToken::new()).await.0,
        Err(RuntimeError::DeadlineExceeded)
    ));
    let t = job.task(0, small_limits(), Duration::from_secs(600));
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    assert!(matches!(
        run_collect(&t, cancel).await.0,
        Err(RuntimeError::Cancelled)
    ));
}

// ---------------------------------------------------------------- process

#[tokio::test]
async fn process_reads_inputs_and_writes_its_output() {
    if !sandbox_ok() {
        return;
    }
    let job = Job::new(
        spec(
            process(&[
                "sh",
                "-c",
                "cat /job/in/data.txt > {out}; echo frame={frame} task={task} cwd=$(pwd) >> {out}; echo RENDERTRUST_PROGRESS=500",
            ]),
            &["data.txt"],
            SplitRule::Frames {
                start: 10,
                end: 20,
                step: 5,
            },
            8,
            8,
        ),
        &[("data.txt", b"hello\n")],
    );
    let (r, progress) = job.run(2).await;
    let out = r.unwrap();
    assert_eq!(out.path, job.dir.path().join("task2/output"));
    assert_eq!(
        std::fs::read_to_string(&out.path).unwrap(),
        "hello\nframe=20 task=2 cwd=/job/task\n"
    );
    assert_eq!(progress, vec![500, 1000]);
}

#[tokio::test]
async fn process_cannot_reach_the_network() {
    if !sandbox_ok() || !available(&["bash"], "the network test (bash /dev/tcp)") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo connected; else echo refused; fi"
    );
    // Control: the same script outside the sandbox does connect, so the
    // test can tell a sandbox that works from a script that never could.
    let outside = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout), "connected\n");
    let (_conn, _) = listener.accept().expect("the control connection");

    let job = Job::new(
        spec(
            process(&["bash", "-c", &format!("({script}) > {{out}}")]),
            &[],
            one_frame(),
            8,
            8,
        ),
        &[],
    );
    let out = job.run(0).await.0.unwrap();
    assert_eq!(std::fs::read_to_string(&out.path).unwrap(), "refused\n");
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "nothing may have connected from inside the sandbox"
    );
}

#[tokio::test]
async fn process_cannot_write_or_see_outside_its_task_dir() {
    if !sandbox_ok() {
        return;
    }
    let outside = scratch();
    let o = outside.path().display().to_string();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let script = format!(
        r#"for p in {o}/escape /etc/rt-escape /usr/rt-escape /rt-escape /job/rt-escape /job/in/data.txt /proc/sys/kernel/hostname /proc/sys/vm/drop_caches; do
  if (echo x > "$p") 2>/dev/null; then echo "wrote $p"; else echo "denied $p"; fi
done
test -e {o} && echo "outside visible"
test -e {manifest}/Cargo.toml && echo "source tree visible"
echo in > /job/task/inside && echo "task dir ok"
echo t > /tmp/scratch && echo "tmp ok"
"#
    );
    let job = Job::new(
        spec(
            process(&["sh", "-c", &format!("({script}) > {{out}} 2>&1")]),
            &["data.txt"],
            one_frame(),
            8,
            8,
        ),
        &[("data.txt", b"original")],
    );
    let out = job.run(0).await.0.unwrap();
    let report = std::fs::read_to_string(&out.path).unwrap();
    let expected = format!(
        "denied {o}/escape\ndenied /etc/rt-escape\ndenied /usr/rt-escape\ndenied /rt-escape\ndenied /job/rt-escape\ndenied /job/in/data.txt\ndenied /proc/sys/kernel/hostname\ndenied /proc/sys/vm/drop_caches\ntask dir ok\ntmp ok\n"
    );
    assert_eq!(report, expected);
    assert!(!outside.path().join("escape").exists());
    assert!(!Path::new("/etc/rt-escape").exists());
    assert_eq!(
        std::fs::read(job.inputs.get("data.txt").unwrap()).unwrap(),
        b"original"
    );
    assert_eq!(
        std::fs::read_to_string(job.dir.path().join("task0/inside")).unwrap(),
        "in\n"
    );
}

#[tokio::test]
async fn process_environment_is_cleared() {
    if !sandbox_ok() {
        return;
    }
    let job = Job::new(
        spec(
            process(&["sh", "-c", "env > {out}"]),
            &[],
            one_frame(),
            8,
            8,
        ),
        &[],
    );
    let out = job.run(0).await.0.unwrap();
    let env = std::fs::read_to_string(&out.path).unwrap();
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
        .collect();
    names.sort();
    assert_eq!(names, ["HOME", "LANG", "PATH", "TMPDIR"], "{env}");
}

#[tokio::test]
async fn process_is_killed_at_its_deadline_even_if_it_ignores_sigterm() {
    if !sandbox_ok() {
        return;
    }
    let marker = "987.6543";
    let job = Job::new(
        spec(
            process(&[
                "sh",
                "-c",
                &format!("trap '' TERM; sleep {marker} & sleep {marker}; wait"),
            ]),
            &[],
            one_frame(),
            8,
            8,
        ),
        &[],
    );
    let t = job.task(0, small_limits(), Duration::from_secs(2));
    let (r, _) = run_collect(&t, CancellationToken::new()).await;
    assert!(matches!(r, Err(RuntimeError::DeadlineExceeded)), "{r:?}");
    // Everything inside died with bwrap (give the kernel a moment to reap).
    let mut left = processes_with(marker);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = processes_with(marker);
    }
    assert!(left.is_empty(), "survivors: {left:?}");
}

#[tokio::test]
async fn process_stops_when_cancelled() {
    if !sandbox_ok() {
        return;
    }
    let marker = "876.5432";
    let job = Job::new(
        spec(process(&["sleep", marker]), &[], one_frame(), 8, 8),
        &[],
    );
    let t = job.task(0, small_limits(), Duration::from_secs(600));
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c2.cancel();
    });
    let (r, _) = run_collect(&t, cancel).await;
    assert!(matches!(r, Err(RuntimeError::Cancelled)), "{r:?}");
    let mut left = processes_with(marker);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = processes_with(marker);
    }
    assert!(left.is_empty(), "survivors: {left:?}");
}

#[tokio::test]
async fn process_limits_cpu_memory_and_output_size() {
    if !sandbox_ok() {
        return;
    }
    // CPU seconds: a busy loop gets SIGXCPU at the soft limit (PID 1, the
    // command itself, ignores it and gets SIGKILL a second later: tested
    // below through the shell's own loop).
    let job = Job::new(
        spec(
            process(&["sh", "-c", "sh -c 'while :; do :; done'; exit $?"]),
            &[],
            one_frame(),
            8,
            8,
        ),
        &[],
    );
    let limits = Limits {
        cpu_seconds: Some(1),
        ..small_limits()
    };
    let t = job.task(0, limits.clone(), Duration::from_secs(60));
    match run_collect(&t, CancellationToken::new()).await.0 {
        Err(RuntimeError::Failed { status, .. }) => assert!(status.contains("SIGXCPU"), "{status}"),
        other => panic!("expected SIGXCPU, got {other:?}"),
    }
    let job = Job::new(
        spec(
            process(&["sh", "-c", "while :; do :; done"]),
            &[],
            one_frame(),
            8,
            8,
        ),
        &[],
    );
    let t = job.task(0, limits.clone(), Duration::from_secs(60));
    match run_collect(&t, CancellationToken::new()).await.0 {
        Err(RuntimeError::Failed { status, .. }) => assert!(status.contains("SIGKILL"), "{status}"),
        other => panic!("expected SIGKILL, got {other:?}"),
    }
    // Output size: writing past RLIMIT_FSIZE fails.
    let job = Job::new(
        spec(
            process(&["sh", "-c", "head -c 200000 /dev/zero > {out}"]),
            &[],
            one_frame(),
            8,
            8,
        ),
        &[],
    );
    let limits = Limits {
        max_output_bytes: 100_000,
        ..small_limits()
    };
    let t = job.task(0, limits, Duration::from_secs(60));
    assert!(matches!(
        run_collect(&t, CancellationToken::new()).await.0,
        Err(RuntimeError::Failed { .. })
    ));
    // Memory: an allocation over the limit fails, one under it works.
    // (python3 comes with Debian's blender, but is not required.)
    if find_program("python3").is_none() {
        eprintln!("\n!!!!!!!! SKIPPED: the memory limit test: python3 not found !!!!!!!!\n");
        return;
    }
    for (mib, ok) in [(64u64, true), (1024, false)] {
        let job = Job::new(
            spec(
                process(&[
                    "python3",
                    "-c",
                    &format!(
                        "b = bytearray({mib} << 20); open('/job/task/output', 'w').write('ok')"
                    ),
                ]),
                &[],
                one_frame(),
                8,
                8,
            ),
            &[],
        );
        let limits = Limits {
            memory_bytes: 512 << 20,
            ..small_limits()
        };
        let t = job.task(0, limits, Duration::from_secs(60));
        let r = run_collect(&t, CancellationToken::new()).await.0;
        match (ok, r) {
            (true, Ok(_)) => {}
            (false, Err(RuntimeError::Failed { detail, .. })) => {
                assert!(detail.contains("MemoryError"), "{detail}")
            }
            (_, other) => panic!("{mib} MiB under a 512 MiB limit: {other:?}"),
        }
    }
}

#[tokio::test]
async fn process_failures_are_reported_clearly() {
    if !sandbox_ok() {
        return;
    }
    let run = |argv: &[&str]| Job::new(spec(process(argv), &[], one_frame(), 8, 8), &[]);
    // non-zero exit, with its stderr
    let job = run(&["sh", "-c", "echo boom >&2; exit 3"]);
    match job.run(0).await.0 {
        Err(RuntimeError::Failed {
            what,
            status,
            detail,
        }) => {
            assert_eq!((what, status.as_str()), ("process", "exit code 3"));
            assert!(detail.contains("boom"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // success without output
    let job = run(&["true"]);
    assert!(matches!(
        job.run(0).await.0,
        Err(RuntimeError::NoOutput { .. })
    ));
    // an empty output
    let job = run(&["sh", "-c", ": > {out}"]);
    assert!(matches!(
        job.run(0).await.0,
        Err(RuntimeError::Check(CheckError::Empty))
    ));
    // an output that points at a host file is never read
    let job = run(&["ln", "-s", "/etc/passwd", "{out}"]);
    assert!(matches!(
        job.run(0).await.0,
        Err(RuntimeError::Check(CheckError::NotAFile {
            found: "symlink",
            ..
        }))
    ));
    // a command that does not exist: bwrap's own message
    let job = run(&["no-such-command-rt"]);
    match job.run(0).await.0 {
        Err(RuntimeError::Sandbox(SandboxError::Setup(m))) => {
            assert!(m.contains("no-such-command-rt"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn process_usage_is_measured() {
    if !sandbox_ok() {
        return;
    }
    let job = Job::new(
        spec(
            process(&[
                "sh",
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo $i > {out}",
            ]),
            &[],
            one_frame(),
            8,
            8,
        ),
        &[],
    );
    let out = job.run(0).await.0.unwrap();
    assert!(out.usage.cpu_ms > 0, "{:?}", out.usage);
    assert_eq!(out.usage.gpu_ms, 0);
    assert!(out.usage.peak_mem_bytes > 0, "{:?}", out.usage);
}

// ---------------------------------------------------------------- blender

/// A small animated scene, made by Blender itself: the default cube moves
/// along x over frames 1..=4; Cycles, 4 samples, no denoising (Debian's
/// Blender has no OpenImageDenoise).
fn make_blend(path: &Path) {
    let expr = format!(
        r#"import bpy
s = bpy.context.scene
s.render.engine = 'CYCLES'
s.cycles.samples = 4
s.cycles.use_denoising = False
s.render.resolution_x = 320
s.render.resolution_y = 240
cube = bpy.data.objects['Cube']
cube.location = (-1.5, 0, 0)
cube.keyframe_insert(data_path='location', frame=1)
cube.location = (1.5, 0, 0)
cube.keyframe_insert(data_path='location', frame=4)
bpy.ops.wm.save_as_mainfile(filepath={path:?})
"#,
        path = path.display().to_string()
    );
    let out = std::process::Command::new("blender")
        .args([
            "-b",
            "--factory-startup",
            "-noaudio",
            "--python-exit-code",
            "1",
            "--python-expr",
            &expr,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() && path.exists(),
        "making the test scene failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blender_job(split: SplitRule, w: u32, h: u32) -> Option<Job> {
    if !sandbox_ok() || !available(&["blender"], "the blender runtime") {
        return None;
    }
    let dir = scratch();
    let blend = dir.path().join("made.blend");
    make_blend(&blend);
    let bytes = std::fs::read(&blend).unwrap();
    let kind = JobKind::Blender {
        engine: BlenderEngine::Cycles,
    };
    Some(Job::new(
        spec(kind, &["scene.blend"], split, w, h),
        &[("scene.blend", &bytes)],
    ))
}

#[tokio::test]
async fn blender_renders_four_frames_in_the_sandbox() {
    let Some(job) = blender_job(
        SplitRule::Frames {
            start: 1,
            end: 4,
            step: 1,
        },
        64,
        48,
    ) else {
        return;
    };
    let mut frames = Vec::new();
    for index in 0..4 {
        let (r, progress) = job.run(index).await;
        let out = r.unwrap_or_else(|e| panic!("frame {}: {e}", index + 1));
        assert_eq!(progress.last(), Some(&1000));
        assert!(out.usage.cpu_ms > 0, "{:?}", out.usage);
        let (w, h, pixels) = decode_png(&out.path);
        assert_eq!((w, h), (64, 48));
        frames.push(pixels);
    }
    // the cube moves: every frame differs from the others
    for a in 0..4 {
        for b in a + 1..4 {
            assert_ne!(frames[a], frames[b], "frames {} and {}", a + 1, b + 1);
        }
    }
}

#[tokio::test]
async fn blender_renders_a_tile_of_exactly_its_region() {
    // 3 × 2 tiles of 64 × 48: task 4 is x 21..42 (21 wide), y 24..48.
    let Some(job) = blender_job(
        SplitRule::Tiles {
            frame: 2,
            cols: 3,
            rows: 2,
        },
        64,
        48,
    ) else {
        return;
    };
    let t = job.task(4, small_limits(), Duration::from_secs(120));
    assert_eq!(
        t.geometry.region,
        Rect {
            x: 21,
            y: 24,
            w: 21,
            h: 24
        }
    );
    let out = run_collect(&t, CancellationToken::new()).await.0.unwrap();
    let (w, h, _) = decode_png(&out.path);
    assert_eq!((w, h), (21, 24));
}

#[tokio::test]
async fn blender_reports_a_scene_it_cannot_read() {
    if !sandbox_ok() || !available(&["blender"], "the blender runtime") {
        return;
    }
    let kind = JobKind::Blender {
        engine: BlenderEngine::Cycles,
    };
    let job = Job::new(
        spec(kind, &["scene.blend"], one_frame(), 32, 24),
        &[("scene.blend", b"this is not a blend file")],
    );
    match job.run(0).await.0 {
        Err(RuntimeError::NoOutput { what, detail })
        | Err(RuntimeError::Failed { what, detail, .. }) => {
            assert_eq!(what, "blender");
            assert!(!detail.is_empty());
        }
        other => panic!("expected a clear failure, got {other:?}"),
    }
}
