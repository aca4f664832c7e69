//! The ledger routes of the local API.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/ledger/balances/{node}` | a node's credits |
//! | `GET /v1/ledger/leaderboard?limit=N` | the nodes that earned most |
//! | `GET /v1/ledger/epochs?limit=N` | closed epochs: root, count, agreement, where and how anchored (ledger peers) |
//! | `GET /v1/ledger/status` | the ledger's counters and state digest (ledger peers) |
//! | `GET /v1/ledger/chain/{ledger}?after=EPOCH` | a page of a ledger's anchor journal, raw (the reader verifies it) |
//! | `POST /v1/ledger/mint` | publish an authority-signed mint ([`MintRequest`]) |
//! | `GET /v1/receipts/{id}` | where a receipt stands (settled, waiting, unpaid…), its epoch and content |
//! | `GET /v1/receipts/{id}/proof` | its inclusion proof, epoch, and the anchorer to check against |
//!
//! On a ledger peer the answers come from its own ledger; on any other node
//! the balance, leaderboard, receipt and proof routes ask the live ledger
//! peers over `/rendertrust/ledger/1` (so `receipt verify` works from every
//! node), and the chain route asks the ledger whose chain it is. A proof
//! from a ledger that did not anchor the epoch is completed by asking the
//! anchorer. Nothing here is trusted by `receipt verify` beyond what it
//! checks itself (the proof against the anchored root).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::ledger::LedgerEvent;
use rendertrust_protocol::ledger::wire::{MAX_LEADERBOARD, RollupRequest, RollupResponse};
use rendertrust_protocol::signed::{MessageId, Signed};
use rendertrust_protocol::wire::Mint;
use serde::Deserialize;
use serde_json::json;

use super::handle::LedgerError;
use super::remote;
use super::view::{
    BalanceView, ChainPageView, LeaderView, LeaderboardView, MintRequest, MintView, ProofView,
    ReceiptView,
};
use crate::api::{ApiError, ApiState};
use crate::net::Topic;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

fn parse_node(text: &str) -> Result<NodeId, ApiError> {
    text.trim().parse().map_err(|_| {
        bad(format!(
            "{text:?} is not a node id: expected a peer id (12D3KooW…) or 64 hex digits"
        ))
    })
}

fn parse_receipt(text: &str) -> Result<MessageId, ApiError> {
    let mut id = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut id).map_err(|_| {
        bad(format!(
            "{text:?} is not a receipt id: expected 64 hex digits (rendertrust job status shows them)"
        ))
    })?;
    Ok(MessageId(id))
}

fn not_ledger() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "this node is not a ledger peer: ask one (--api of a node started with --roles ledger)",
    )
}

fn ledger_err(e: LedgerError) -> ApiError {
    match e {
        LedgerError::Refused(m) => bad(m),
        other => unavailable(other.to_string()),
    }
}

/// Asks this node's ledger or the live ledger peers; `Refused` → 404.
async fn ask(
    st: &ApiState,
    first: Option<NodeId>,
    req: &RollupRequest,
    useful: impl Fn(&RollupResponse) -> bool,
) -> Result<(NodeId, RollupResponse), ApiError> {
    let (who, answer) = remote::ask_any(st.ledger.as_ref(), &st.net, st.node, first, req, useful)
        .await
        .map_err(unavailable)?;
    if let RollupResponse::Refused { reason } = &answer {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("ledger {who}: {reason}"),
        ));
    }
    Ok((who, answer))
}

fn unexpected(who: &NodeId, r: &RollupResponse) -> ApiError {
    unavailable(format!(
        "ledger {who} answered something else than asked ({:?})",
        std::mem::discriminant(r)
    ))
}

async fn balance(
    State(st): State<ApiState>,
    Path(node): Path<String>,
) -> Result<Json<BalanceView>, ApiError> {
    let node = parse_node(&node)?;
    let (who, answer) = ask(&st, None, &RollupRequest::Balance { node }, |r| {
        matches!(r, RollupResponse::Balance { .. })
    })
    .await?;
    match answer {
        RollupResponse::Balance { node, balance } => Ok(Json(BalanceView {
            node: node.to_string(),
            balance,
            ledger: who.to_string(),
        })),
        other => Err(unexpected(&who, &other)),
    }
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn leaderboard(
    State(st): State<ApiState>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<LeaderboardView>, ApiError> {
    let limit = q.limit.unwrap_or(20).min(MAX_LEADERBOARD) as u16;
    let (who, answer) = ask(&st, None, &RollupRequest::Leaderboard { limit }, |r| {
        matches!(r, RollupResponse::Leaderboard { .. })
    })
    .await?;
    match answer {
        RollupResponse::Leaderboard { rows } => Ok(Json(LeaderboardView {
            ledger: who.to_string(),
            rows: rows.iter().map(LeaderView::from).collect(),
        })),
        other => Err(unexpected(&who, &other)),
    }
}

async fn epochs(
    State(st): State<ApiState>,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    let ledger = st.ledger.as_ref().ok_or_else(not_ledger)?;
    let view = ledger
        .epochs(q.limit.unwrap_or(100))
        .await
        .map_err(ledger_err)?;
    Ok(Json(view).into_response())
}

async fn status(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let ledger = st.ledger.as_ref().ok_or_else(not_ledger)?;
    Ok(Json(ledger.status().await.map_err(ledger_err)?).into_response())
}

#[derive(Debug, Deserialize)]
struct AfterQuery {
    after: Option<u64>,
}

async fn chain(
    State(st): State<ApiState>,
    Path(ledger): Path<String>,
    Query(q): Query<AfterQuery>,
) -> Result<Json<ChainPageView>, ApiError> {
    let ledger = parse_node(&ledger)?;
    let req = RollupRequest::Chain {
        ledger,
        after: q.after,
    };
    // Only the ledger itself keeps its journal: ask nobody else.
    let answer = match (&st.ledger, ledger == st.node) {
        (Some(h), true) => h.ask(req).await.map_err(ledger_err)?,
        _ => remote::request(&st.net, ledger, &req)
            .await
            .map_err(|e| unavailable(format!("asking ledger {ledger} for its journal: {e}")))?,
    };
    match answer {
        RollupResponse::Chain { entries, more } => Ok(Json(ChainPageView {
            ledger: ledger.to_string(),
            entries: entries.iter().map(Into::into).collect(),
            more,
        })),
        RollupResponse::Refused { reason } => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("ledger {ledger}: {reason}"),
        )),
        other => Err(unexpected(&ledger, &other)),
    }
}

async fn receipt(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ReceiptView>, ApiError> {
    let id = parse_receipt(&id)?;
    let (who, answer) = ask(&st, None, &RollupRequest::Receipt { id }, |r| {
        matches!(r, RollupResponse::Receipt(i) if i.state != rendertrust_protocol::ledger::wire::ReceiptState::Unknown)
    })
    .await?;
    match answer {
        RollupResponse::Receipt(info) => Ok(Json(ReceiptView::new(&id, who.to_string(), &info))),
        other => Err(unexpected(&who, &other)),
    }
}

async fn proof(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ProofView>, ApiError> {
    let id = parse_receipt(&id)?;
    let req = RollupRequest::Proof { id };
    let (mut who, mut answer) = ask(
        &st,
        None,
        &req,
        |r| matches!(r, RollupResponse::Proof(p) if p.anchor.is_some()),
    )
    .await?;
    // A ledger that did not anchor the epoch names the one that did: its
    // answer says where the root lives.
    if let RollupResponse::Proof(p) = &answer
        && p.anchor.is_none()
        && let Some(anchorer) = p.anchorer.filter(|a| *a != who)
        && let Ok((w, a @ RollupResponse::Proof(_))) = ask(
            &st,
            Some(anchorer),
            &req,
            |r| matches!(r, RollupResponse::Proof(p) if p.anchor.is_some()),
        )
        .await
    {
        who = w;
        answer = a;
    }
    match answer {
        RollupResponse::Proof(p) => ProofView::new(&id, who.to_string(), &p)
            .map(Json)
            .ok_or_else(|| unavailable(format!("ledger {who} sent a badly signed header"))),
        other => Err(unexpected(&who, &other)),
    }
}

async fn mint(
    State(st): State<ApiState>,
    Json(req): Json<MintRequest>,
) -> Result<Json<MintView>, ApiError> {
    let bytes = hex::decode(req.frame.trim())
        .map_err(|_| bad("frame: expected the hex of a signed Mint frame"))?;
    let signed = Signed::<Mint>::from_bytes(bytes).map_err(|e| bad(format!("frame: {e}")))?;
    let m = signed
        .verify()
        .map_err(|e| bad(format!("mint signature: {e}")))?;
    let event = LedgerEvent::Mint { mint: signed };
    let local = match &st.ledger {
        Some(h) => Some(h.ingest(event.clone()).await.map_err(ledger_err)?),
        None => None,
    };
    let bytes = event
        .encode()
        .map_err(|e| unavailable(format!("encoding the mint: {e}")))?;
    // Gossipsub refuses to publish before it knows a subscribed peer.
    let mut published = false;
    for _ in 0..20 {
        if st.net.publish(Topic::Receipts, bytes.clone()).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Json(MintView {
        id: event.id().to_string(),
        authority: m.authority.to_string(),
        to: m.to.to_string(),
        amount: m.amount,
        published,
        local,
    }))
}

/// The ledger routes (mounted behind the token check by `api::router`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/ledger/balances/{node}", get(balance))
        .route("/v1/ledger/leaderboard", get(leaderboard))
        .route("/v1/ledger/epochs", get(epochs))
        .route("/v1/ledger/status", get(status))
        .route("/v1/ledger/chain/{ledger}", get(chain))
        .route("/v1/ledger/mint", post(mint))
        .route("/v1/receipts/{id}", get(receipt))
        .route("/v1/receipts/{id}/proof", get(proof))
}

/// OpenAPI path items of the ledger routes.
pub fn openapi_paths() -> serde_json::Value {
    let err = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" },
        "description": "receipt id, 64 hex digits" });
    let limit = json!({ "name": "limit", "in": "query", "required": false, "schema": { "type": "integer" } });
    json!({
        "/v1/ledger/balances/{node}": { "get": { "summary": "A node's credits (from this node's ledger, or a live ledger peer)",
            "parameters": [ { "name": "node", "in": "path", "required": true, "schema": { "type": "string" }, "description": "peer id or 64 hex digits" } ],
            "responses": { "200": { "description": "BalanceView: node, balance, ledger" }, "400": err, "503": err } } },
        "/v1/ledger/leaderboard": { "get": { "summary": "The nodes that earned most (credits settled to them as workers)",
            "parameters": [limit], "responses": { "200": { "description": "LeaderboardView: ledger, rows[node, balance, earned, tasks]" }, "503": err } } },
        "/v1/ledger/epochs": { "get": { "summary": "Epochs of this ledger: receipts, root, finality, agreement, anchorer, where and how anchored (ledger peers only)",
            "parameters": [limit], "responses": { "200": { "description": "EpochsView" }, "409": err } } },
        "/v1/ledger/status": { "get": { "summary": "This ledger's counters and state digest (ledger peers only)",
            "responses": { "200": { "description": "LedgerStatusView" }, "409": err } } },
        "/v1/ledger/chain/{ledger}": { "get": { "summary": "A page of a ledger's anchor journal, raw stored entries (the reader verifies the chain)",
            "parameters": [ { "name": "ledger", "in": "path", "required": true, "schema": { "type": "string" } },
                { "name": "after", "in": "query", "required": false, "schema": { "type": "integer" }, "description": "entries after this epoch" } ],
            "responses": { "200": { "description": "ChainPageView: ledger, entries[epoch, frame hex], more" }, "404": err, "503": err } } },
        "/v1/ledger/mint": { "post": { "summary": "Publish a mint signed by the mint authority",
            "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["frame"],
                "properties": { "frame": { "type": "string", "description": "hex of a Signed<Mint> frame" } } } } } },
            "responses": { "200": { "description": "MintView: id, authority, to, amount, published, local" }, "400": err } } },
        "/v1/receipts/{id}": { "get": { "summary": "Where a receipt stands: settled, outranked, waiting, unpaid (with why) or unknown; its epoch and content",
            "parameters": [id], "responses": { "200": { "description": "ReceiptView" }, "400": err, "503": err } } },
        "/v1/receipts/{id}/proof": { "get": { "summary": "The receipt's inclusion proof, its epoch, and the anchorer to check it against",
            "parameters": [id], "responses": { "200": { "description": "ProofView" }, "404": err, "503": err } } }
    })
}
