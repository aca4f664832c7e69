//! What a creator asks for (`POST /v1/jobs`, `rendertrust job submit`), and
//! its checks before anything is sealed or sent.
//!
//! Everything a person can get wrong is refused here with a sentence that
//! says what was expected and what was found: a frame range that makes no
//! sense, a missing or unreadable file, a duplicate input name, a size that
//! does not parse. Whether any worker *can* run the job is the scheduler's
//! call (a job nobody can run stays queued with its reason visible).
//!
//! Input paths are paths on the node's machine: the API listens on loopback
//! by default, and the CLI sends absolute paths.

use std::path::{Path, PathBuf};

use rendertrust_protocol::verify;
use rendertrust_protocol::wire::{
    BlenderEngine, GpuVendor, ImageFormat, JobKind, MAX_TASKS_PER_JOB, Requirements, SplitRule,
    VerificationPolicy,
};
use serde::{Deserialize, Serialize};

/// Default output width, pixels.
pub const DEFAULT_WIDTH: u32 = 320;
/// Default output height, pixels.
pub const DEFAULT_HEIGHT: u32 = 180;
/// Default price ceiling per task, credits.
pub const DEFAULT_MAX_PRICE: u64 = 100;
/// Default deadline: one day.
pub const DEFAULT_DEADLINE_SECS: u64 = 24 * 3600;
/// Name of the builtin scene input when the creator gives none.
pub const DEFAULT_SCENE_NAME: &str = "scene.toml";

/// What runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindRequest {
    /// The builtin deterministic renderer.
    Builtin,
    /// Blender.
    Blender {
        /// `cycles` (default) or `eevee`.
        #[serde(default)]
        engine: Option<String>,
    },
    /// A sandboxed command.
    Process {
        /// The command and its arguments; `{frame}`, `{out}` and `/job/in/NAME` as in the runtime docs.
        argv: Vec<String>,
        /// Whether the command's output is bit-exact for the same input.
        #[serde(default)]
        deterministic: bool,
    },
}

/// An input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPath {
    /// The name the task sees.
    pub name: String,
    /// Where it is on this node's machine.
    pub path: PathBuf,
}

/// Tiles of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TilesRequest {
    /// The frame.
    pub frame: u32,
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// What the job needs of a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequirementsRequest {
    /// `nvidia`, `amd`, `intel` or `apple`.
    #[serde(default)]
    pub gpu_vendor: Option<String>,
    /// Minimum VRAM, e.g. `8G`.
    #[serde(default)]
    pub min_vram: Option<String>,
    /// Minimum RAM, e.g. `16G`.
    #[serde(default)]
    pub min_ram: Option<String>,
    /// Minimum runtime version, e.g. `3.4`.
    #[serde(default)]
    pub min_runtime_version: Option<String>,
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// What runs.
    pub kind: KindRequest,
    /// The scene (input 0 of render jobs). Builtin jobs without one render
    /// the embedded default scene.
    #[serde(default)]
    pub scene: Option<PathBuf>,
    /// Further inputs.
    #[serde(default)]
    pub inputs: Vec<NamedPath>,
    /// Frames: `7`, `1-240` or `1-240:2` (every second frame).
    #[serde(default)]
    pub frames: Option<String>,
    /// Tiles of one frame instead of frames.
    #[serde(default)]
    pub tiles: Option<TilesRequest>,
    /// Output width.
    #[serde(default)]
    pub width: Option<u32>,
    /// Output height.
    #[serde(default)]
    pub height: Option<u32>,
    /// Price ceiling per task, credits.
    #[serde(default)]
    pub max_price_per_task: Option<u64>,
    /// Worker requirements.
    #[serde(default)]
    pub requirements: RequirementsRequest,
    /// Seconds from now until the job's deadline.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    /// How results are verified (default: the job kind's default policy,
    /// `verify::default_policy`).
    #[serde(default)]
    pub verify: VerifyRequest,
}

/// How a creator wants results verified. Everything left out comes from the
/// job kind's default (`rendertrust_protocol::verify::default_policy`):
/// builtin and deterministic process jobs `quorum` (sample 100‰, k 2),
/// blender `spot-check` (sample 100‰, crop 250‰, similarity 900‰),
/// other process jobs `spot-check` of the whole region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// `none`, `quorum` or `spot-check` (default: the kind's default).
    #[serde(default)]
    pub policy: Option<String>,
    /// Fraction of tasks verified, per mille (0..=1000).
    #[serde(default)]
    pub sample_permille: Option<u16>,
    /// Quorum: independent workers per sampled task (2..=5).
    #[serde(default)]
    pub quorum_k: Option<u8>,
    /// Spot-check: crop side, per mille of the region side (1..=1000).
    #[serde(default)]
    pub crop_permille: Option<u16>,
    /// Spot-check: least similarity (SSIM × 1000) that passes (0..=1000).
    #[serde(default)]
    pub min_similarity_milli: Option<u16>,
}

impl VerifyRequest {
    /// The policy for a job of `kind`: the named policy (or the kind's
    /// default) with the given fields, checked against the protocol's bounds.
    pub fn resolve(&self, kind: &JobKind) -> Result<VerificationPolicy, SubmitRefused> {
        let default = verify::default_policy(kind);
        let policy = match self
            .policy
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("default") => default,
            Some("none") => VerificationPolicy::None,
            Some("quorum") => match default {
                q @ VerificationPolicy::Quorum { .. } => q,
                _ => VerificationPolicy::Quorum {
                    sample_permille: verify::DEFAULT_SAMPLE_PERMILLE,
                    k: 2,
                },
            },
            Some("spot-check" | "spotcheck" | "spot_check") => match default {
                s @ VerificationPolicy::SpotCheck { .. } => s,
                _ => VerificationPolicy::SpotCheck {
                    sample_permille: verify::DEFAULT_SAMPLE_PERMILLE,
                    crop_permille: verify::DEFAULT_CROP_PERMILLE,
                    min_similarity_milli: verify::DEFAULT_MIN_SIMILARITY_MILLI,
                },
            },
            Some(other) => {
                return refuse(format!(
                    "verification policy {other:?}: expected none, quorum or spot-check"
                ));
            }
        };
        let policy = match policy {
            VerificationPolicy::None => {
                if self.sample_permille.is_some()
                    || self.quorum_k.is_some()
                    || self.crop_permille.is_some()
                    || self.min_similarity_milli.is_some()
                {
                    return refuse(
                        "verification none takes no sample rate, quorum k, crop or similarity",
                    );
                }
                VerificationPolicy::None
            }
            VerificationPolicy::Quorum { sample_permille, k } => {
                if self.crop_permille.is_some() || self.min_similarity_milli.is_some() {
                    return refuse(
                        "a quorum compares output hashes: crop and similarity are for spot-check",
                    );
                }
                VerificationPolicy::Quorum {
                    sample_permille: self.sample_permille.unwrap_or(sample_permille),
                    k: self.quorum_k.unwrap_or(k),
                }
            }
            VerificationPolicy::SpotCheck {
                sample_permille,
                crop_permille,
                min_similarity_milli,
            } => {
                if self.quorum_k.is_some() {
                    return refuse("quorum k is for quorum verification, not spot-check");
                }
                VerificationPolicy::SpotCheck {
                    sample_permille: self.sample_permille.unwrap_or(sample_permille),
                    crop_permille: self.crop_permille.unwrap_or(crop_permille),
                    min_similarity_milli: self.min_similarity_milli.unwrap_or(min_similarity_milli),
                }
            }
        };
        verify::check_policy(&policy).map_err(|e| SubmitRefused(e.to_string()))?;
        Ok(policy)
    }
}

/// A checked request, ready to be sealed and signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedJob {
    /// What runs.
    pub kind: JobKind,
    /// Inputs in order (input 0 is the scene of render jobs); `None` as the
    /// path of input 0 means the embedded default builtin scene.
    pub inputs: Vec<(String, Option<PathBuf>)>,
    /// Split.
    pub split: SplitRule,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Price ceiling.
    pub max_price_per_task: u64,
    /// Requirements.
    pub requirements: Requirements,
    /// Verification.
    pub verification: VerificationPolicy,
    /// Deadline, seconds from now.
    pub deadline_secs: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SubmitRefused(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, SubmitRefused> {
    Err(SubmitRefused(msg.into()))
}

/// Parses a frame range: `N`, `A-B` or `A-B:STEP`.
pub fn parse_frames(text: &str) -> Result<SplitRule, SubmitRefused> {
    let t = text.trim();
    let bad = || {
        SubmitRefused(format!(
            "frames {text:?}: expected N, A-B or A-B:STEP with A <= B and STEP >= 1 (e.g. 1-240 or 1-240:2)"
        ))
    };
    let (range, step) = match t.split_once(':') {
        Some((r, s)) => (r, s.trim().parse::<u32>().map_err(|_| bad())?),
        None => (t, 1),
    };
    let (start, end) = match range.split_once('-') {
        Some((a, b)) => (
            a.trim().parse::<u32>().map_err(|_| bad())?,
            b.trim().parse::<u32>().map_err(|_| bad())?,
        ),
        None => {
            let n = range.trim().parse::<u32>().map_err(|_| bad())?;
            (n, n)
        }
    };
    if end < start || step == 0 {
        return Err(bad());
    }
    let split = SplitRule::Frames { start, end, step };
    if split.task_count() > MAX_TASKS_PER_JOB {
        return refuse(format!(
            "frames {text:?} make {} tasks; a job has at most {MAX_TASKS_PER_JOB}",
            split.task_count()
        ));
    }
    Ok(split)
}

/// Parses a size: bytes, or with a `K`, `M`, `G` or `T` suffix (powers of
/// 1024; an optional trailing `B` or `iB` is allowed).
pub fn parse_size(text: &str) -> Result<u64, SubmitRefused> {
    let t = text.trim();
    let bad = || {
        SubmitRefused(format!(
            "size {text:?}: expected e.g. 512M, 8G or 1073741824"
        ))
    };
    let upper = t.to_ascii_uppercase();
    let s = upper.trim_end_matches("IB").trim_end_matches('B');
    let (num, shift) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        Some('T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

fn parse_vendor(text: &str) -> Result<GpuVendor, SubmitRefused> {
    match text.trim().to_ascii_lowercase().as_str() {
        "nvidia" => Ok(GpuVendor::Nvidia),
        "amd" => Ok(GpuVendor::Amd),
        "intel" => Ok(GpuVendor::Intel),
        "apple" => Ok(GpuVendor::Apple),
        other => refuse(format!(
            "gpu vendor {other:?}: expected nvidia, amd, intel or apple"
        )),
    }
}

fn check_name(name: &str) -> Result<(), SubmitRefused> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        refuse(format!(
            "input name {name:?}: expected 1-128 characters of letters, digits, '.', '_' or '-'"
        ))
    }
}

fn check_readable(path: &Path) -> Result<(), SubmitRefused> {
    if !path.is_absolute() {
        return refuse(format!(
            "input {}: expected an absolute path on the node's machine",
            path.display()
        ));
    }
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => refuse(format!("input {}: not a regular file", path.display())),
        Err(e) => refuse(format!("input {}: cannot read it: {e}", path.display())),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
}

impl SubmitRequest {
    /// Checks the request and resolves defaults.
    pub fn prepare(&self) -> Result<PreparedJob, SubmitRefused> {
        let kind = match &self.kind {
            KindRequest::Builtin => JobKind::Builtin,
            KindRequest::Blender { engine } => JobKind::Blender {
                engine: match engine.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    None | Some("cycles") => BlenderEngine::Cycles,
                    Some("eevee") => BlenderEngine::Eevee,
                    Some(other) => {
                        return refuse(format!(
                            "blender engine {other:?}: expected cycles or eevee"
                        ));
                    }
                },
            },
            KindRequest::Process {
                argv,
                deterministic,
            } => {
                if argv.is_empty() || argv.iter().any(|a| a.len() > 4096) || argv.len() > 64 {
                    return refuse(
                        "a process job needs a command: 1 to 64 arguments of at most 4096 bytes",
                    );
                }
                JobKind::Process {
                    argv: argv.clone(),
                    deterministic: *deterministic,
                }
            }
        };

        let mut inputs: Vec<(String, Option<PathBuf>)> = Vec::new();
        match (&kind, &self.scene) {
            (JobKind::Builtin, None) => inputs.push((DEFAULT_SCENE_NAME.into(), None)),
            (JobKind::Blender { .. }, None) => {
                return refuse("a blender job needs a scene: the .blend file to render");
            }
            (JobKind::Process { .. }, None) => {}
            (_, Some(scene)) => {
                check_readable(scene)?;
                inputs.push((file_name(scene), Some(scene.clone())));
            }
        }
        for input in &self.inputs {
            check_name(&input.name)?;
            check_readable(&input.path)?;
            if inputs.iter().any(|(n, _)| *n == input.name) {
                return refuse(format!("input name {:?} is given twice", input.name));
            }
            inputs.push((input.name.clone(), Some(input.path.clone())));
        }
        if inputs.len() > 64 {
            return refuse(format!("{} inputs: a job has at most 64", inputs.len()));
        }
        if let Some((name, _)) = inputs.first() {
            check_name(name).map_err(|e| SubmitRefused(format!("scene file: {e}")))?;
        }

        let width = self.width.unwrap_or(DEFAULT_WIDTH);
        let height = self.height.unwrap_or(DEFAULT_HEIGHT);
        if !(1..=16384).contains(&width) || !(1..=16384).contains(&height) {
            return refuse(format!(
                "size {width}x{height}: width and height must be 1..=16384"
            ));
        }
        let split = match (&self.frames, &self.tiles) {
            (Some(_), Some(_)) => {
                return refuse("give either frames or tiles, not both");
            }
            (Some(f), None) => parse_frames(f)?,
            (None, Some(t)) => {
                if t.cols == 0 || t.rows == 0 {
                    return refuse("tiles: cols and rows must be at least 1");
                }
                if u32::from(t.cols) > width || u32::from(t.rows) > height {
                    return refuse(format!(
                        "tiles {}x{} do not fit a {width}x{height} frame",
                        t.cols, t.rows
                    ));
                }
                let split = SplitRule::Tiles {
                    frame: t.frame,
                    cols: t.cols,
                    rows: t.rows,
                };
                if split.task_count() > MAX_TASKS_PER_JOB {
                    return refuse(format!("at most {MAX_TASKS_PER_JOB} tiles"));
                }
                split
            }
            (None, None) => SplitRule::Frames {
                start: 1,
                end: 1,
                step: 1,
            },
        };

        let r = &self.requirements;
        let requirements = Requirements {
            gpu_vendor: r.gpu_vendor.as_deref().map(parse_vendor).transpose()?,
            min_vram_bytes: r
                .min_vram
                .as_deref()
                .map(parse_size)
                .transpose()?
                .unwrap_or(0),
            min_ram_bytes: r
                .min_ram
                .as_deref()
                .map(parse_size)
                .transpose()?
                .unwrap_or(0),
            min_runtime_version: r.min_runtime_version.clone(),
        };
        if let Some(v) = &requirements.min_runtime_version
            && (v.is_empty()
                || v.len() > 64
                || !v
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        {
            return refuse(format!(
                "min runtime version {v:?}: expected dotted numbers such as 3.4 or 3.4.1"
            ));
        }
        let verification = self.verify.resolve(&kind)?;
        let deadline_secs = self.deadline_secs.unwrap_or(DEFAULT_DEADLINE_SECS);
        if deadline_secs == 0 || deadline_secs > 30 * 24 * 3600 {
            return refuse(format!(
                "deadline of {deadline_secs} s: expected 1 s to 30 days"
            ));
        }
        Ok(PreparedJob {
            kind,
            inputs,
            split,
            width,
            height,
            max_price_per_task: self.max_price_per_task.unwrap_or(DEFAULT_MAX_PRICE),
            requirements,
            verification,
            deadline_secs,
        })
    }
}

/// The output format of a job kind: images for renders, PNG by default.
pub fn format_of(_kind: &JobKind) -> ImageFormat {
    ImageFormat::Png
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: KindRequest) -> SubmitRequest {
        SubmitRequest {
            kind,
            scene: None,
            inputs: vec![],
            frames: Some("1-24".into()),
            tiles: None,
            width: None,
            height: None,
            max_price_per_task: None,
            requirements: RequirementsRequest::default(),
            deadline_secs: None,
            verify: VerifyRequest::default(),
        }
    }

    #[test]
    fn frame_ranges_parse_or_say_why_not() {
        assert_eq!(
            parse_frames("1-240").unwrap(),
            SplitRule::Frames {
                start: 1,
                end: 240,
                step: 1
            }
        );
        assert_eq!(
            parse_frames(" 10-20:5 ").unwrap(),
            SplitRule::Frames {
                start: 10,
                end: 20,
                step: 5
            }
        );
        assert_eq!(parse_frames("7").unwrap().task_count(), 1);
        for bad in [
            "",
            "a-b",
            "5-1",
            "1-10:0",
            "1-",
            "-3",
            "1-2-3",
            "1-99999999",
        ] {
            let e = parse_frames(bad).unwrap_err();
            assert!(
                e.0.contains("frames") || e.0.contains("tasks"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn builtin_defaults_and_bad_input() {
        let p = req(KindRequest::Builtin).prepare().unwrap();
        assert_eq!(p.inputs, vec![(DEFAULT_SCENE_NAME.to_string(), None)]);
        assert_eq!(p.split.task_count(), 24);

        let mut r = req(KindRequest::Blender { engine: None });
        assert!(r.prepare().unwrap_err().0.contains("needs a scene"));
        r.scene = Some("/nonexistent/scene.blend".into());
        assert!(r.prepare().unwrap_err().0.contains("cannot read"));
        r.scene = Some("relative.blend".into());
        assert!(r.prepare().unwrap_err().0.contains("absolute"));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("scene.blend");
        std::fs::write(&f, b"BLENDER").unwrap();
        r.scene = Some(f.clone());
        r.kind = KindRequest::Blender {
            engine: Some("octane".into()),
        };
        assert!(r.prepare().unwrap_err().0.contains("engine"));
        r.kind = KindRequest::Blender {
            engine: Some("Cycles".into()),
        };
        let p = r.prepare().unwrap();
        assert_eq!(p.inputs[0].0, "scene.blend");

        r.inputs = vec![NamedPath {
            name: "scene.blend".into(),
            path: f.clone(),
        }];
        assert!(r.prepare().unwrap_err().0.contains("twice"));
        r.inputs = vec![NamedPath {
            name: "../x".into(),
            path: f,
        }];
        assert!(r.prepare().unwrap_err().0.contains("input name"));

        let mut t = req(KindRequest::Builtin);
        t.frames = None;
        t.tiles = Some(TilesRequest {
            frame: 1,
            cols: 400,
            rows: 1,
        });
        assert!(t.prepare().unwrap_err().0.contains("do not fit"));
        let mut p = req(KindRequest::Process {
            argv: vec![],
            deterministic: true,
        });
        assert!(p.prepare().unwrap_err().0.contains("needs a command"));
        p.kind = KindRequest::Process {
            argv: vec!["true".into()],
            deterministic: true,
        };
        p.requirements.min_runtime_version = Some("3.x".into());
        assert!(p.prepare().unwrap_err().0.contains("dotted"));
    }

    #[test]
    fn verification_defaults_per_kind_and_overrides() {
        let p = req(KindRequest::Builtin).prepare().unwrap();
        assert_eq!(p.verification, verify::default_policy(&JobKind::Builtin));
        assert!(matches!(
            p.verification,
            VerificationPolicy::Quorum { k: 2, .. }
        ));

        let mut r = req(KindRequest::Builtin);
        r.verify.sample_permille = Some(500);
        r.verify.quorum_k = Some(3);
        assert_eq!(
            r.prepare().unwrap().verification,
            VerificationPolicy::Quorum {
                sample_permille: 500,
                k: 3
            }
        );
        r.verify.quorum_k = Some(9);
        assert!(r.prepare().unwrap_err().0.contains("quorum k 9"));
        r.verify.quorum_k = None;
        r.verify.crop_permille = Some(100);
        assert!(r.prepare().unwrap_err().0.contains("spot-check"));

        let mut r = req(KindRequest::Builtin);
        r.verify.policy = Some("none".into());
        assert_eq!(r.prepare().unwrap().verification, VerificationPolicy::None);
        r.verify.sample_permille = Some(10);
        assert!(r.prepare().unwrap_err().0.contains("none takes no"));

        let mut r = req(KindRequest::Builtin);
        r.verify.policy = Some("spot-check".into());
        r.verify.min_similarity_milli = Some(950);
        assert_eq!(
            r.prepare().unwrap().verification,
            VerificationPolicy::SpotCheck {
                sample_permille: verify::DEFAULT_SAMPLE_PERMILLE,
                crop_permille: verify::DEFAULT_CROP_PERMILLE,
                min_similarity_milli: 950
            }
        );
        r.verify.sample_permille = Some(1001);
        assert!(r.prepare().unwrap_err().0.contains("sample_permille 1001"));
        r.verify.policy = Some("majority".into());
        assert!(
            r.prepare()
                .unwrap_err()
                .0
                .contains("expected none, quorum or spot-check")
        );

        let p = req(KindRequest::Process {
            argv: vec!["true".into()],
            deterministic: false,
        })
        .prepare()
        .unwrap();
        assert!(matches!(
            p.verification,
            VerificationPolicy::SpotCheck {
                crop_permille: 1000,
                ..
            }
        ));
    }
}
