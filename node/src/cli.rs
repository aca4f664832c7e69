//! Client commands: talk to a running node's local API and print for humans
//! (tables) or scripts (`--json`).
//!
//! Every client command takes `--api URL` (default `http://127.0.0.1:7700`,
//! or `$RENDERTRUST_API`) and `--token` (or `$RENDERTRUST_API_TOKEN`).

use std::fmt::Write as _;

use anyhow::{Context, Result, anyhow, bail};
use serde::de::DeserializeOwned;

use crate::api::{CapacityResponse, RoleProviders, StatusView};

/// Default API URL of a local node.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7700";

/// A client of one node's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// Without an overall timeout: for event streams.
    streaming: reqwest::Client,
}

impl ApiClient {
    /// A client for the API at `base` (e.g. `http://127.0.0.1:7700`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--api must be an http(s) URL such as {DEFAULT_API_URL}, got {base:?}");
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        let streaming = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            base,
            token,
            http,
            streaming,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the node API at {}: is `rendertrust node start` running there? (set --api URL)",
                    self.base
                )
            } else {
                anyhow!("request to {url} failed: {e}")
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("{status}: {msg}");
    }

    async fn json<T: DeserializeOwned>(resp: reqwest::Response, url: &str) -> Result<T> {
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{url} answered JSON this client does not understand"))
    }

    /// GETs `path` and decodes the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self.send(self.http.get(&url), &url).await?;
        Self::json(resp, &url).await
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self.send(self.http.post(&url).json(body), &url).await?;
        Self::json(resp, &url).await
    }

    /// DELETEs `path` and decodes the JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self.send(self.http.delete(&url), &url).await?;
        Self::json(resp, &url).await
    }

    /// GETs `path` as raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let url = format!("{}{}", self.base, path);
        let resp = self.send(self.http.get(&url), &url).await?;
        Ok(resp
            .bytes()
            .await
            .with_context(|| format!("reading {url}"))?
            .to_vec())
    }

    /// GETs `path` as a stream (server-sent events), without an overall timeout.
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        self.send(self.streaming.get(&url), &url).await
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `rendertrust status`.
pub async fn status(client: &ApiClient, json: bool) -> Result<String> {
    let s: StatusView = client.get("/v1/status").await?;
    if json {
        return Ok(serde_json::to_string_pretty(&s)?);
    }
    let mut out = String::new();
    writeln!(out, "peer id:    {}", s.peer_id)?;
    writeln!(out, "version:    {}", s.version)?;
    writeln!(out, "roles:      {}", s.roles.join(", "))?;
    writeln!(out, "peers:      {} connected", s.connected_peers)?;
    writeln!(out, "data dir:   {}", s.data_dir)?;
    writeln!(out, "listening:")?;
    for a in &s.listen_addrs {
        writeln!(out, "  {a}")?;
    }
    Ok(out)
}

/// `rendertrust mesh capacity`.
pub async fn capacity(client: &ApiClient, json: bool) -> Result<String> {
    let c: CapacityResponse = client.get("/v1/capacity").await?;
    if json {
        return Ok(serde_json::to_string_pretty(&c)?);
    }
    let mut out = String::new();
    writeln!(
        out,
        "{:<54} {:<18} {:>5} {:>9} {:<28} {:>8} {:>7}",
        "node", "roles", "cores", "ram", "gpus", "fpm", "tasks"
    )?;
    for n in &c.nodes {
        let gpus = if n.gpus.is_empty() {
            "none (CPU only)".to_owned()
        } else {
            n.gpus
                .iter()
                .map(|g| format!("{} {}", g.model, gib(g.vram_bytes)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            out,
            "{:<54} {:<18} {:>5} {:>9} {:<28} {:>8.1} {:>3}/{:<3}",
            n.node,
            n.roles.join(","),
            n.cpu_cores,
            gib(n.ram_bytes),
            gpus,
            n.bench_fpm,
            n.running_tasks,
            n.max_tasks
        )?;
    }
    let s = c.stats;
    writeln!(
        out,
        "{} nodes; adverts accepted {}, rejected: invalid {}, stale {}, out of time {}, table full {}; expired {}",
        c.nodes.len(),
        s.accepted,
        s.invalid,
        s.stale,
        s.out_of_time,
        s.full,
        s.expired
    )?;
    Ok(out)
}

/// `rendertrust mesh roles ROLE`.
pub async fn roles(client: &ApiClient, role: &str, json: bool) -> Result<String> {
    let r: RoleProviders = client.get(&format!("/v1/roles/{role}")).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&r)?);
    }
    let mut out = String::new();
    if r.providers.is_empty() {
        writeln!(out, "no provider of role {} found", r.role)?;
    }
    for p in &r.providers {
        writeln!(out, "{p}")?;
    }
    Ok(out)
}
