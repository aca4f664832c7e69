//! What this machine has: CPU, RAM, disk, GPUs, runtimes, and a benchmark
//! score. Never fails: what cannot be read is reported as absent, with a log
//! line that says so plainly.
//!
//! GPUs: NVML (loaded at run time through `nvml-wrapper`), then
//! `nvidia-smi --query-gpu`, else none ("CPU-only node"). Runtimes: builtin
//! always; blender and process when bubblewrap and prlimit (the sandbox)
//! are on `PATH`, blender only when it is too. The benchmark score is
//! cached in the store per hardware fingerprint, so it runs at first start
//! and after a hardware change only.

use std::path::Path;
use std::process::Command;

use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::wire::{
    CapacityAdvert, GpuInfo, GpuVendor, MAX_TEXT, Role, RuntimeInfo, RuntimeKind,
};

use crate::store::Store;

/// The machine as probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardware {
    /// CPU cores available to us.
    pub cpu_cores: u16,
    /// CPU model name.
    pub cpu_model: String,
    /// Total RAM, bytes.
    pub ram_bytes: u64,
    /// Free disk in the data dir, bytes.
    pub disk_free_bytes: u64,
    /// GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Runtimes.
    pub runtimes: Vec<RuntimeInfo>,
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Parses `/proc/meminfo`'s `MemTotal` into bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses `/proc/cpuinfo`'s first `model name`.
pub fn parse_cpu_model(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// Parses `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits` (MiB).
pub fn parse_nvidia_smi(text: &str) -> Vec<GpuInfo> {
    text.lines()
        .filter_map(|l| {
            let (name, mem) = l.rsplit_once(',')?;
            let mib: u64 = mem.trim().parse().ok()?;
            Some(GpuInfo {
                vendor: GpuVendor::Nvidia,
                model: truncate(name.trim().to_owned(), MAX_TEXT),
                vram_bytes: mib << 20,
            })
        })
        .collect()
}

/// Parses the first line of `blender --version` ("Blender 4.3.2").
pub fn parse_blender_version(text: &str) -> Option<String> {
    let first = text
        .lines()
        .find(|l| l.trim_start().starts_with("Blender "))?;
    first.split_whitespace().nth(1).map(str::to_owned)
}

/// Parses `bwrap --version` ("bubblewrap 0.8.0").
pub fn parse_bwrap_version(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let mut parts = first.split_whitespace();
    (parts.next()? == "bubblewrap").then(|| parts.next().map(str::to_owned))?
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nvml_gpus() -> Option<Vec<GpuInfo>> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let count = nvml.device_count().ok()?;
    let mut gpus = Vec::new();
    for i in 0..count.min(16) {
        let dev = nvml.device_by_index(i).ok()?;
        gpus.push(GpuInfo {
            vendor: GpuVendor::Nvidia,
            model: truncate(dev.name().unwrap_or_else(|_| "NVIDIA GPU".into()), MAX_TEXT),
            vram_bytes: dev.memory_info().map(|m| m.total).unwrap_or(0),
        });
    }
    Some(gpus)
}

fn disk_free(path: &Path) -> u64 {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read free disk space");
            0
        }
    }
}

/// Probes the machine; `data_dir` decides which disk is measured.
pub fn probe(data_dir: &Path) -> Hardware {
    let cpu_cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(u16::MAX as usize) as u16;
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| parse_cpu_model(&t))
        .unwrap_or_else(|| "unknown CPU".into());
    let ram_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or(0);
    let gpus = match nvml_gpus() {
        Some(g) if !g.is_empty() => g,
        _ => run(
            "nvidia-smi",
            &[
                "--query-gpu=name,memory.total",
                "--format=csv,noheader,nounits",
            ],
        )
        .map(|t| parse_nvidia_smi(&t))
        .unwrap_or_default(),
    };
    if gpus.is_empty() {
        tracing::info!("no GPU found: CPU-only node");
    }
    let mut runtimes = vec![RuntimeInfo {
        kind: RuntimeKind::Builtin,
        version: env!("CARGO_PKG_VERSION").into(),
    }];
    // Blender and process tasks run only inside the sandbox (bwrap + prlimit).
    let bwrap = run("bwrap", &["--version"]).and_then(|t| parse_bwrap_version(&t));
    let sandbox = bwrap.is_some() && crate::runtime::sandbox::find_program("prlimit").is_some();
    if !sandbox {
        tracing::warn!(
            "no sandbox (bubblewrap and prlimit): blender and process tasks disabled; run scripts/deps.sh"
        );
    }
    if let Some(v) = run("blender", &["--version"]).and_then(|t| parse_blender_version(&t))
        && sandbox
    {
        runtimes.push(RuntimeInfo {
            kind: RuntimeKind::Blender,
            version: truncate(v, 64),
        });
    }
    if let Some(v) = bwrap.filter(|_| sandbox) {
        runtimes.push(RuntimeInfo {
            kind: RuntimeKind::Process,
            version: truncate(v, 64),
        });
    }
    Hardware {
        cpu_cores,
        cpu_model: truncate(cpu_model, MAX_TEXT),
        ram_bytes,
        disk_free_bytes: disk_free(data_dir),
        gpus: gpus.into_iter().take(16).collect(),
        runtimes,
    }
}

impl Hardware {
    /// BLAKE3 of what the benchmark depends on: a change re-runs it.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("rendertrust 2026-11 hardware fingerprint v1");
        h.update(self.cpu_model.as_bytes());
        h.update(&self.cpu_cores.to_le_bytes());
        h.update(&self.ram_bytes.to_le_bytes());
        for g in &self.gpus {
            h.update(g.model.as_bytes());
            h.update(&g.vram_bytes.to_le_bytes());
        }
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        *h.finalize().as_bytes()
    }

    /// The capacity advert this machine publishes (seq and time filled in by the swarm).
    #[allow(clippy::too_many_arguments)]
    pub fn to_advert_template(
        &self,
        node: NodeId,
        wrap_key: [u8; 32],
        roles: Vec<Role>,
        bench_mfpm: u64,
        price_per_task: u64,
        max_tasks: u16,
        region: String,
    ) -> CapacityAdvert {
        CapacityAdvert {
            node,
            seq: 0,
            issued_at_ms: 0,
            refresh_ms: 10_000,
            wrap_key,
            roles,
            cpu_cores: self.cpu_cores,
            cpu_model: self.cpu_model.clone(),
            ram_bytes: self.ram_bytes,
            disk_free_bytes: self.disk_free_bytes,
            gpus: self.gpus.clone(),
            runtimes: self.runtimes.clone(),
            bench_mfpm,
            running_tasks: 0,
            max_tasks,
            price_per_task,
            region: truncate(region, 64),
        }
    }
}

/// The benchmark score for this hardware: cached in the store's `capacity`
/// tree per fingerprint, else measured with `run` and cached.
pub fn benchmark_score(store: &Store, hw: &Hardware, run: impl FnOnce() -> u64) -> u64 {
    let key = [b"bench:".as_slice(), &hw.fingerprint()].concat();
    let tree = match store.tree("capacity") {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the capacity tree; benchmarking without cache");
            return run();
        }
    };
    if let Ok(Some(v)) = tree.get(&key)
        && let Ok(bytes) = <[u8; 8]>::try_from(v.as_ref())
    {
        return u64::from_le_bytes(bytes);
    }
    tracing::info!("benchmarking this machine (first start or hardware change)");
    let score = run();
    if tree.insert(key, &score.to_le_bytes()).is_err() || store.flush().is_err() {
        tracing::warn!("cannot cache the benchmark score");
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;
    use rendertrust_protocol::wire::WireMessage;

    #[test]
    fn parsers() {
        assert_eq!(
            parse_meminfo("MemTotal:       16384 kB\nMemFree: 1 kB"),
            Some(16384 * 1024)
        );
        assert_eq!(
            parse_cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n").as_deref(),
            Some("AMD EPYC 7B13")
        );
        let g = parse_nvidia_smi("NVIDIA GeForce RTX 4090, 24564\nNVIDIA H100 80GB HBM3, 81559\n");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].vram_bytes, 24564 << 20);
        assert_eq!(g[1].model, "NVIDIA H100 80GB HBM3");
        assert_eq!(
            parse_blender_version("Blender 4.3.2\n\tbuild date: x").as_deref(),
            Some("4.3.2")
        );
        assert_eq!(
            parse_bwrap_version("bubblewrap 0.8.0\n").as_deref(),
            Some("0.8.0")
        );
        assert_eq!(parse_bwrap_version("something else"), None);
    }

    #[test]
    fn probe_this_machine_and_template_validates() {
        let d = tempfile::tempdir().unwrap();
        let hw = probe(d.path());
        assert!(hw.cpu_cores > 0);
        assert!(hw.ram_bytes > 0);
        assert!(hw.runtimes.iter().any(|r| r.kind == RuntimeKind::Builtin));
        let t = hw.to_advert_template(
            NodeId::from_bytes([1; 32]),
            [2; 32],
            vec![Role::Worker],
            1,
            1,
            1,
            "x".repeat(100),
        );
        t.validate().unwrap();
    }

    #[test]
    fn benchmark_is_cached_per_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let mut hw = probe(d.path());
        assert_eq!(benchmark_score(&store, &hw, || 42), 42);
        assert_eq!(benchmark_score(&store, &hw, || 7), 42);
        hw.ram_bytes += 1;
        assert_eq!(benchmark_score(&store, &hw, || 7), 7);
    }
}
