//! `rendertrust-sim validate`: one small job on a real `rendertrust devnet`
//! and on the simulator, compared.
//!
//! The real side needs only the devnet's HTTP API (as a creator uses it):
//! `rendertrust devnet --nodes N --dir D` prints each node's API URL;
//! `POST /v1/jobs` with `{"kind":"builtin","frames":"1-24","width":320,"height":180}`
//! submits from node 0; `GET /v1/jobs/{id}` is polled until the summary's
//! `state` is final, and its `tasks` give the worker of each accepted
//! frame. A one-frame job first calibrates the simulator's
//! `seconds_per_frame` (the builtin renderer's time on this machine,
//! end to end). The simulated mesh copies the devnet's role plan (nodes 0
//! and 1 worker+scheduler, the rest workers; node 0 also the creator), one
//! region with loopback latency, one task slot per worker.
//!
//! Compared: the job's completion time, and how tasks spread over workers
//! (node identities differ, so the sorted per-worker counts and the share
//! taken by scheduler nodes). The HTTP client is a few lines of std
//! (loopback, no TLS, `Connection: close`), so the simulator needs no
//! async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::dist::Dist;
use crate::scenario::{GpuClass, Group, Region, Scenario};

/// Options of `validate`.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The `rendertrust` binary.
    pub rendertrust: PathBuf,
    /// Devnet nodes.
    pub nodes: usize,
    /// Frames of the job, e.g. `1-24`.
    pub frames: String,
    /// Output size.
    pub width: u32,
    /// Output size.
    pub height: u32,
    /// Devnet directory (kept).
    pub dir: PathBuf,
    /// Give up after this long.
    pub timeout: Duration,
    /// Simulator seed.
    pub seed: u64,
    /// Seconds per frame for the simulator; measured when `None`.
    pub seconds_per_frame: Option<f64>,
}

/// What was compared.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Real completion time, s.
    pub real_s: f64,
    /// Simulated completion time, s.
    pub sim_s: f64,
    /// Tasks per worker, real, sorted descending.
    pub real_counts: Vec<u64>,
    /// Tasks per worker, simulated, sorted descending.
    pub sim_counts: Vec<u64>,
    /// Share of tasks on scheduler nodes, real.
    pub real_sched_share: f64,
    /// Share of tasks on scheduler nodes, simulated.
    pub sim_sched_share: f64,
    /// Calibrated seconds per frame.
    pub seconds_per_frame: f64,
}

impl Comparison {
    /// Total variation distance between the two sorted count profiles
    /// (0: same spread, 1: disjoint).
    pub fn spread_distance(&self) -> f64 {
        spread_distance(&self.real_counts, &self.sim_counts)
    }

    /// A table for people.
    pub fn report(&self) -> String {
        let rel = if self.real_s > 0.0 {
            (self.sim_s - self.real_s) / self.real_s * 100.0
        } else {
            0.0
        };
        format!(
            "                      real        sim\n\
             completion (s)   {:>9.2}  {:>9.2}   ({rel:+.1} %)\n\
             tasks/worker     {:>9}  {:>9}   (sorted, most first)\n\
             on schedulers    {:>8.1}%  {:>8.1}%\n\
             spread distance  {:>9.3}             (total variation of the sorted profiles; 0 = same)\n\
             seconds per frame (builtin render, this machine): {:.3}\n",
            self.real_s,
            self.sim_s,
            format!("{:?}", self.real_counts),
            format!("{:?}", self.sim_counts),
            self.real_sched_share * 100.0,
            self.sim_sched_share * 100.0,
            self.spread_distance(),
            self.seconds_per_frame
        )
    }
}

/// Total variation distance between two count profiles (sorted, padded).
pub fn spread_distance(a: &[u64], b: &[u64]) -> f64 {
    let (sa, sb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    if sa == 0.0 || sb == 0.0 {
        return if sa == sb { 0.0 } else { 1.0 };
    }
    let n = a.len().max(b.len());
    let get = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0) as f64;
    (0..n)
        .map(|i| (get(a, i) / sa - get(b, i) / sb).abs())
        .sum::<f64>()
        / 2.0
}

/// Number of frames in `1-24`, `7` or `1-240:2`.
pub fn frame_count(frames: &str) -> Result<u32> {
    let (range, step) = match frames.split_once(':') {
        Some((r, s)) => (r, s.trim().parse::<u32>()?),
        None => (frames, 1),
    };
    let (a, b) = match range.split_once('-') {
        Some((a, b)) => (a.trim().parse::<u32>()?, b.trim().parse::<u32>()?),
        None => {
            let f = range.trim().parse::<u32>()?;
            (f, f)
        }
    };
    if b < a || step == 0 {
        bail!("frames {frames:?}: expected FIRST-LAST[:STEP] with FIRST <= LAST");
    }
    Ok((b - a) / step + 1)
}

// ----- a minimal HTTP/1.1 client (loopback) -------------------------------------

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("chunked body: missing chunk size line"))?;
        let size_text = std::str::from_utf8(&body[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("chunked body: chunk of {size} bytes is cut short");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// `METHOD url` with an optional JSON body; returns (status, JSON).
pub fn http(method: &str, url: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs (the devnet's loopback API)"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let payload = body
        .map(serde_json::to_vec)
        .transpose()?
        .unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(&payload)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{url}: response has no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{url}: bad status line in {head:?}"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{url}: answer is not JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })?
    };
    Ok((status, json))
}

// ----- the devnet --------------------------------------------------------------

struct Devnet {
    child: Child,
    urls: Vec<String>,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        // SIGTERM, so the devnet stops its own children.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_devnet(bin: &Path, nodes: usize, dir: &Path, timeout: Duration) -> Result<Devnet> {
    let mut child = Command::new(bin)
        .args(["devnet", "--nodes", &nodes.to_string(), "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} devnet", bin.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("devnet stdout not captured"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end (the devnet prints until it stops; a closed pipe
        // would make its last lines fail), forwarding while anyone listens.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut dev = Devnet {
        child,
        urls: vec![String::new(); nodes],
    };
    let deadline = Instant::now() + timeout;
    let mut found = 0;
    while found < nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| anyhow!("devnet printed {found} of {nodes} API URLs in time"))?;
        // "node-3     http://127.0.0.1:PORT   roles worker"
        let mut words = line.split_whitespace();
        if let (Some(name), Some(url)) = (words.next(), words.next())
            && let Some(i) = name
                .strip_prefix("node-")
                .and_then(|i| i.parse::<usize>().ok())
            && url.starts_with("http://")
            && let Some(slot) = dev.urls.get_mut(i)
            && slot.is_empty()
        {
            *slot = url.to_string();
            found += 1;
        }
    }
    Ok(dev)
}

/// Median wall time of `rendertrust render` for one default-scene frame.
fn render_seconds(bin: &Path, width: u32, height: u32, dir: &Path) -> Result<f64> {
    let out = dir.join("calibration.png");
    let mut times = Vec::new();
    for frame in 1..=3 {
        let start = Instant::now();
        let status = Command::new(bin)
            .args(["render", "--default-scene", "--frame", &frame.to_string()])
            .args([
                "--width",
                &width.to_string(),
                "--height",
                &height.to_string(),
            ])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {} render", bin.display()))?;
        if !status.success() {
            bail!("{} render failed ({status})", bin.display());
        }
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}

/// Submits a builtin job at `api`; returns (wall seconds to final state, tasks JSON).
fn real_job(
    api: &str,
    frames: &str,
    width: u32,
    height: u32,
    timeout: Duration,
) -> Result<(f64, Vec<Value>)> {
    let req =
        serde_json::json!({"kind": "builtin", "frames": frames, "width": width, "height": height});
    let start = Instant::now();
    let (status, v) = http("POST", &format!("{api}/v1/jobs"), Some(&req))?;
    if !(200..300).contains(&status) {
        bail!("POST /v1/jobs answered {status}: {v}");
    }
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("POST /v1/jobs answer has no id: {v}"))?
        .to_string();
    loop {
        let (status, v) = http("GET", &format!("{api}/v1/jobs/{id}"), None)?;
        if status == 200 {
            let state = v
                .pointer("/summary/state")
                .and_then(Value::as_str)
                .unwrap_or("");
            match state {
                "done" => {
                    let tasks = v
                        .get("tasks")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    return Ok((start.elapsed().as_secs_f64(), tasks));
                }
                "failed" | "cancelled" => bail!("the real job ended {state}: {v}"),
                _ => {}
            }
        }
        if start.elapsed() > timeout {
            bail!("the real job did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The scenario mirroring a devnet of `nodes` nodes running one job.
pub fn devnet_scenario(nodes: usize, frames: u32, seconds_per_frame: f64) -> Scenario {
    let mut sc = Scenario {
        name: "validate".into(),
        duration_s: 10,
        drain_s: 3600,
        sample_s: 1,
        ..Scenario::default()
    };
    sc.regions = vec![Region {
        name: "loopback".into(),
        weight: 1.0,
    }];
    sc.net.latency_ms = vec![vec![0.2]];
    sc.net.jitter = Dist::Exponential { mean: 0.2 };
    sc.net.lookup_ms = 5.0;
    sc.gpu_classes = vec![GpuClass {
        name: "local".into(),
        vendor: "none".into(),
        vram_gb: 0,
        speed: 1.0,
        slots: 1,
        price: 1,
        down_mbps: 10_000.0,
        up_mbps: 10_000.0,
        ..GpuClass::default()
    }];
    let group = |name: &str, count: usize, roles: &[&str]| Group {
        name: name.into(),
        count,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        churn: false,
        dishonest: false,
        ..Group::default()
    };
    sc.groups = vec![group("node-0", 1, &["worker", "scheduler", "creator"])];
    if nodes >= 2 {
        sc.groups.push(group("node-1", 1, &["worker", "scheduler"]));
    }
    if nodes >= 3 {
        sc.groups.push(group("workers", nodes - 2, &["worker"]));
    }
    // Submitted once every node's advert reached the schedulers, as on the
    // devnet (which is up before the job comes).
    sc.arrivals.process = "trace".into();
    sc.arrivals.at_s = vec![5.0];
    sc.jobs.kind = "builtin".into();
    sc.jobs.frames = Dist::Fixed {
        value: f64::from(frames),
    };
    sc.jobs.seconds_per_frame = Dist::Fixed {
        value: seconds_per_frame,
    };
    sc.jobs.task_noise_sigma = 0.0;
    sc.jobs.input_mb = Dist::Fixed { value: 0.01 };
    sc.jobs.output_mb = Dist::Fixed { value: 0.1 };
    sc.output.plots = false;
    sc
}

/// Runs the comparison.
pub fn validate(o: &ValidateOptions) -> Result<Comparison> {
    let frames = frame_count(&o.frames)?;
    std::fs::create_dir_all(&o.dir)?;
    let dev = start_devnet(&o.rendertrust, o.nodes, &o.dir, o.timeout)?;
    let api = dev.urls.first().cloned().unwrap_or_default();
    // Let the capacity adverts reach the schedulers.
    std::thread::sleep(Duration::from_secs(3));
    // Calibration: the builtin renderer's time for one frame of this size on
    // this machine (`rendertrust render`, median of three frames). The
    // simulator adds the protocol's own costs (messages, heartbeats, adverts,
    // transfers); what the real job takes beyond that is the job service's.
    let spf = match o.seconds_per_frame {
        Some(s) => s,
        None => render_seconds(&o.rendertrust, o.width, o.height, &o.dir)?,
    };
    // A fresh devnet's first job waits for the mesh to settle (adverts,
    // provider records): a one-frame warm-up job takes that.
    real_job(&api, "1", o.width, o.height, o.timeout).context("warm-up job")?;
    let (real_s, tasks) = real_job(&api, &o.frames, o.width, o.height, o.timeout)?;
    let sched_ids: Vec<String> = dev
        .urls
        .iter()
        .take(2)
        .filter_map(|u| http("GET", &format!("{u}/v1/status"), None).ok())
        .filter_map(|(_, v)| v.get("peer_id").and_then(Value::as_str).map(String::from))
        .collect();
    drop(dev);
    let mut per: std::collections::BTreeMap<String, u64> = Default::default();
    for t in &tasks {
        if let Some(w) = t.get("worker").and_then(Value::as_str) {
            *per.entry(w.to_string()).or_default() += 1;
        }
    }
    let placed: u64 = per.values().sum();
    let on_sched: u64 = per
        .iter()
        .filter(|(w, _)| sched_ids.contains(w))
        .map(|(_, n)| *n)
        .sum();
    let mut real_counts: Vec<u64> = per.values().copied().collect();
    real_counts.sort_unstable_by(|a, b| b.cmp(a));

    let sc = devnet_scenario(o.nodes, frames, spf);
    let out = crate::run(&sc, o.seed, None, None)?;
    let m = &out.metrics;
    let job = m
        .jobs
        .first()
        .ok_or_else(|| anyhow!("the simulator ran no job"))?;
    let sim_s = job
        .makespan_ms
        .map(|ms| ms as f64 / 1000.0)
        .ok_or_else(|| anyhow!("the simulated job did not finish"))?;
    let mut sim_counts: Vec<u64> = m
        .nodes
        .iter()
        .filter(|n| n.accepted > 0)
        .map(|n| u64::from(n.accepted))
        .collect();
    sim_counts.sort_unstable_by(|a, b| b.cmp(a));
    let sim_total: u64 = sim_counts.iter().sum();
    let sim_sched: u64 = m
        .nodes
        .iter()
        .filter(|n| n.roles.contains("scheduler"))
        .map(|n| u64::from(n.accepted))
        .sum();
    Ok(Comparison {
        real_s,
        sim_s,
        real_counts,
        sim_counts,
        real_sched_share: if placed > 0 {
            on_sched as f64 / placed as f64
        } else {
            0.0
        },
        sim_sched_share: if sim_total > 0 {
            sim_sched as f64 / sim_total as f64
        } else {
            0.0
        },
        seconds_per_frame: spf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_chunks() {
        assert_eq!(frame_count("1-24").unwrap(), 24);
        assert_eq!(frame_count("7").unwrap(), 1);
        assert_eq!(frame_count("1-240:2").unwrap(), 120);
        assert!(frame_count("5-1").is_err());
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"9\r\nshort\r\n").is_err());
    }

    #[test]
    fn spread_distance_is_zero_for_the_same_profile() {
        assert_eq!(spread_distance(&[6, 6, 6, 6], &[12, 12, 12, 12]), 0.0);
        assert!((spread_distance(&[24], &[6, 6, 6, 6]) - 0.75).abs() < 1e-12);
    }

    /// The devnet's mirror runs its job to the end in the simulator.
    #[test]
    fn the_devnet_mirror_runs_in_the_simulator() {
        let sc = devnet_scenario(4, 24, 2.0);
        sc.check().unwrap();
        let out = crate::run(&sc, 1, None, None).unwrap();
        let job = &out.metrics.jobs[0];
        assert_eq!(job.accepted, 24, "seed 1");
        // 24 frames of 2 s on 4 single-slot workers: about 6 rounds.
        let s = job.makespan_ms.unwrap() as f64 / 1000.0;
        assert!((12.0..30.0).contains(&s), "makespan {s} s, seed 1");
    }
}
