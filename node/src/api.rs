//! The node's local HTTP API (axum) and its OpenAPI document.
//!
//! Binds 127.0.0.1 by default. On any other address a bearer token is
//! required (the config refuses to start without one), and every request must
//! carry `Authorization: Bearer <token>`; on loopback the token is checked
//! only if one is configured.
//!
//! Routes (all JSON; the OpenAPI 3.1 document is served at `/v1/openapi.json`):
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/status` | peer id, roles, listen addresses, connected peers, version |
//! | `GET /v1/peers` | connected and known peers with gossipsub score, agent, RTT |
//! | `GET /v1/capacity` | the node's capacity table (live entries) and its counters |
//! | `GET /v1/roles/{role}` | providers of a role found in Kademlia |
//! | `/v1/jobs…` | jobs: see [`crate::jobs::api`] |
//! | `/v1/ledger…`, `/v1/receipts…` | credits, epochs, receipts and proofs: see [`crate::ledger::api`] |
//!
//! The API only reads the node's state through [`NetHandle`]; it holds no
//! protocol rule.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rendertrust_protocol::capacity::{CapacityEntry, CapacityStats};
use rendertrust_protocol::wire::{GpuVendor, Role, RuntimeKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::jobs::JobsHandle;
use crate::net::NetHandle;

/// Version string reported by the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The network driver.
    pub net: NetHandle,
    /// Bearer token required on requests, if any.
    pub token: Option<Arc<str>>,
    /// The node's data dir (shown in status).
    pub data_dir: Arc<str>,
    /// The job service.
    pub jobs: JobsHandle,
    /// The ledger service, on ledger peers.
    pub ledger: Option<crate::ledger::LedgerHandle>,
    /// This node's id.
    pub node: rendertrust_protocol::identity::NodeId,
}

/// An API error as JSON: `{"error": "..."}` with an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl<E: std::fmt::Display> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// libp2p peer id (also the node id).
    pub peer_id: String,
    /// Roles taken.
    pub roles: Vec<String>,
    /// Listen addresses, each with `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    /// Connected peers.
    pub connected_peers: usize,
    /// Node version.
    pub version: String,
    /// Data dir.
    pub data_dir: String,
}

/// One row of `GET /v1/capacity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityView {
    /// Node (peer id).
    pub node: String,
    /// Advert sequence number.
    pub seq: u64,
    /// Roles.
    pub roles: Vec<String>,
    /// CPU cores.
    pub cpu_cores: u16,
    /// CPU model.
    pub cpu_model: String,
    /// RAM bytes.
    pub ram_bytes: u64,
    /// Free disk bytes.
    pub disk_free_bytes: u64,
    /// GPUs: "vendor model (VRAM GiB)".
    pub gpus: Vec<GpuView>,
    /// Runtimes: "kind version".
    pub runtimes: Vec<String>,
    /// Benchmark, frames per minute.
    pub bench_fpm: f64,
    /// Running / max tasks.
    pub running_tasks: u16,
    /// Max tasks.
    pub max_tasks: u16,
    /// Price per task.
    pub price_per_task: u64,
    /// Region.
    pub region: String,
    /// When the node issued the advert held (its clock, Unix ms).
    pub issued_at_ms: u64,
    /// When this node received it (our clock, Unix ms).
    pub received_at_ms: u64,
    /// Age of the entry, ms since we received it.
    pub age_ms: u64,
    /// Time left before expiry, ms.
    pub expires_in_ms: u64,
}

/// A GPU in [`CapacityView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuView {
    /// Vendor.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// VRAM bytes.
    pub vram_bytes: u64,
}

/// `GET /v1/capacity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityResponse {
    /// Live entries, ordered by node id.
    pub nodes: Vec<CapacityView>,
    /// What the table accepted and rejected.
    pub stats: StatsView,
}

/// Counters of the capacity table.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsView {
    /// Accepted adverts.
    pub accepted: u64,
    /// Rejected: malformed or badly signed.
    pub invalid: u64,
    /// Rejected: stale.
    pub stale: u64,
    /// Rejected: too old or from the future.
    pub out_of_time: u64,
    /// Rejected: table full.
    pub full: u64,
    /// Entries expired.
    pub expired: u64,
}

impl From<CapacityStats> for StatsView {
    fn from(s: CapacityStats) -> Self {
        StatsView {
            accepted: s.accepted,
            invalid: s.invalid,
            stale: s.stale,
            out_of_time: s.out_of_time,
            full: s.full,
            expired: s.expired,
        }
    }
}

fn vendor_name(v: GpuVendor) -> &'static str {
    match v {
        GpuVendor::Nvidia => "nvidia",
        GpuVendor::Amd => "amd",
        GpuVendor::Intel => "intel",
        GpuVendor::Apple => "apple",
        GpuVendor::Other => "other",
    }
}

fn runtime_name(k: RuntimeKind) -> &'static str {
    match k {
        RuntimeKind::Builtin => "builtin",
        RuntimeKind::Blender => "blender",
        RuntimeKind::Process => "process",
    }
}

/// Converts a table entry for display, given the current time.
pub fn capacity_view(e: &CapacityEntry, now_ms: u64) -> CapacityView {
    let a = &e.advert;
    CapacityView {
        node: a.node.to_string(),
        seq: a.seq,
        roles: a.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        cpu_cores: a.cpu_cores,
        cpu_model: a.cpu_model.clone(),
        ram_bytes: a.ram_bytes,
        disk_free_bytes: a.disk_free_bytes,
        gpus: a
            .gpus
            .iter()
            .map(|g| GpuView {
                vendor: vendor_name(g.vendor).to_owned(),
                model: g.model.clone(),
                vram_bytes: g.vram_bytes,
            })
            .collect(),
        runtimes: a
            .runtimes
            .iter()
            .map(|r| format!("{} {}", runtime_name(r.kind), r.version))
            .collect(),
        bench_fpm: a.bench_mfpm as f64 / 1000.0,
        running_tasks: a.running_tasks,
        max_tasks: a.max_tasks,
        price_per_task: a.price_per_task,
        region: a.region.clone(),
        issued_at_ms: a.issued_at_ms,
        received_at_ms: e.received_at_ms,
        age_ms: now_ms.saturating_sub(e.received_at_ms),
        expires_in_ms: e.expires_at_ms.saturating_sub(now_ms),
    }
}

/// `GET /v1/roles/{role}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleProviders {
    /// The role asked for.
    pub role: String,
    /// Providers found in Kademlia (peer ids, sorted).
    pub providers: Vec<String>,
}

/// Current Unix time in ms (the driver's clock edge).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn status(State(st): State<ApiState>) -> Result<Json<StatusView>, ApiError> {
    let s = st.net.status().await?;
    Ok(Json(StatusView {
        peer_id: s.peer_id,
        roles: s.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        listen_addrs: s.listen_addrs,
        connected_peers: s.connected_peers,
        version: VERSION.to_owned(),
        data_dir: st.data_dir.to_string(),
    }))
}

async fn peers(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let peers = st.net.peers().await?;
    Ok(Json(json!({ "peers": peers })).into_response())
}

async fn capacity(State(st): State<ApiState>) -> Result<Json<CapacityResponse>, ApiError> {
    let entries = st.net.capacity().await?;
    let stats = st.net.capacity_stats().await?;
    let now = now_ms();
    Ok(Json(CapacityResponse {
        nodes: entries.iter().map(|e| capacity_view(e, now)).collect(),
        stats: stats.into(),
    }))
}

async fn roles(
    State(st): State<ApiState>,
    Path(role): Path<String>,
) -> Result<Json<RoleProviders>, ApiError> {
    let r: Role = role
        .parse()
        .map_err(|e: rendertrust_protocol::wire::ValidationError| {
            ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        })?;
    let found = st.net.find_role(r).await?;
    Ok(Json(RoleProviders {
        role: r.as_str().to_owned(),
        providers: found.iter().map(|n| n.to_string()).collect(),
    }))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 document of this API.
pub fn openapi_document() -> serde_json::Value {
    let ok = |desc: &str, schema: serde_json::Value| {
        json!({ "200": { "description": desc, "content": { "application/json": { "schema": schema } } },
                "401": { "description": "missing or wrong bearer token", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } } })
    };
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "RenderTrust node API",
            "version": VERSION,
            "description": "Local API of a RenderTrust node. Binds 127.0.0.1 by default; a bearer token is required on any other address."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Status": { "type": "object", "required": ["peer_id", "roles", "listen_addrs", "connected_peers", "version"],
                    "properties": {
                        "peer_id": { "type": "string" }, "roles": { "type": "array", "items": { "type": "string" } },
                        "listen_addrs": { "type": "array", "items": { "type": "string" } },
                        "connected_peers": { "type": "integer" }, "version": { "type": "string" }, "data_dir": { "type": "string" } } },
                "Capacity": { "type": "object", "required": ["nodes", "stats"],
                    "properties": { "nodes": { "type": "array", "items": { "type": "object" } }, "stats": { "type": "object" } } },
                "RoleProviders": { "type": "object", "required": ["role", "providers"],
                    "properties": { "role": { "type": "string" }, "providers": { "type": "array", "items": { "type": "string" } } } },
                "Peers": { "type": "object", "required": ["peers"], "properties": { "peers": { "type": "array", "items": { "type": "object" } } } }
            }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/v1/status": { "get": { "summary": "This node: peer id, roles, listen addresses, connected peers, version",
                "responses": ok("node status", json!({ "$ref": "#/components/schemas/Status" })) } },
            "/v1/peers": { "get": { "summary": "Peers with gossipsub score, agent version and RTT",
                "responses": ok("peers", json!({ "$ref": "#/components/schemas/Peers" })) } },
            "/v1/capacity": { "get": { "summary": "The node's capacity table: live entries and counters",
                "responses": ok("capacity table", json!({ "$ref": "#/components/schemas/Capacity" })) } },
            "/v1/roles/{role}": { "get": { "summary": "Providers of a role found in Kademlia",
                "parameters": [ { "name": "role", "in": "path", "required": true,
                    "schema": { "type": "string", "enum": ["worker", "scheduler", "ledger", "relay"] } } ],
                "responses": ok("providers", json!({ "$ref": "#/components/schemas/RoleProviders" })) } },
            "/v1/openapi.json": { "get": { "summary": "This document", "security": [],
                "responses": { "200": { "description": "OpenAPI document" } } } }
        }
    });
    for more in [
        crate::jobs::api::openapi_paths(),
        crate::ledger::api::openapi_paths(),
    ] {
        if let (Some(paths), serde_json::Value::Object(more)) = (doc["paths"].as_object_mut(), more)
        {
            paths.extend(more);
        }
    }
    doc
}

async fn require_token(
    State(st): State<ApiState>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &st.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: pass --token or set RENDERTRUST_API_TOKEN",
            ));
        }
    }
    Ok(next.run(request).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API router.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/capacity", get(capacity))
        .route("/v1/roles/{role}", get(roles))
        .merge(crate::jobs::api::routes())
        .merge(crate::ledger::api::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .merge(protected)
        .with_state(state)
}

/// Binds the API and serves it until `shutdown` resolves. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_every_route() {
        let doc = openapi_document();
        for p in [
            "/v1/status",
            "/v1/peers",
            "/v1/capacity",
            "/v1/roles/{role}",
            "/v1/openapi.json",
            "/v1/jobs",
            "/v1/jobs/{id}",
            "/v1/jobs/{id}/events",
            "/v1/jobs/{id}/results",
            "/v1/jobs/{id}/results/{task}",
            "/v1/ledger/balances/{node}",
            "/v1/ledger/leaderboard",
            "/v1/ledger/epochs",
            "/v1/ledger/status",
            "/v1/ledger/chain/{ledger}",
            "/v1/receipts/{id}",
            "/v1/receipts/{id}/proof",
        ] {
            assert!(
                doc["paths"][p]["get"].is_object(),
                "{p} missing from OpenAPI"
            );
        }
    }

    #[test]
    fn openapi_lists_the_mint_route() {
        assert!(openapi_document()["paths"]["/v1/ledger/mint"]["post"].is_object());
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
