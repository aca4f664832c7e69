//! The job routes of the local API.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/jobs` | submit a job ([`SubmitRequest`]) from this node |
//! | `GET /v1/jobs` | jobs this node created |
//! | `GET /v1/jobs/{id}` | one job and its tasks (`{id}`: full hex id or a unique prefix) |
//! | `DELETE /v1/jobs/{id}` | cancel it |
//! | `GET /v1/jobs/{id}/events` | server-sent events: `job` and `task` updates, starting with the current state |
//! | `GET /v1/jobs/{id}/results` | accepted outputs with their hashes |
//! | `GET /v1/jobs/{id}/results/{task}` | the bytes of one accepted output (`x-blake3` header: its hash) |
//! | `GET /v1/reputation`, `GET /v1/reputation/{node}` | the node's reputation book (schedulers and ledger peers keep one): scores, probation, evidence |

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast;

use super::handle::JobsError;
use super::submit::SubmitRequest;
use super::view::{JobUpdate, TaskStateView};
use crate::api::{ApiError, ApiState};

fn job_err(e: JobsError) -> ApiError {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError::new(status, e.to_string())
}

async fn submit(State(st): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let request: SubmitRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("job request is not valid JSON for a job: {e}"),
        )
    })?;
    let view = st.jobs.submit(request).await.map_err(job_err)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let jobs = st.jobs.list().await.map_err(job_err)?;
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

async fn detail(State(st): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(st.jobs.get(&id).await.map_err(job_err)?).into_response())
}

async fn cancel(State(st): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(st.jobs.cancel(&id).await.map_err(job_err)?).into_response())
}

async fn results(State(st): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(st.jobs.results(&id).await.map_err(job_err)?).into_response())
}

async fn result_file(
    State(st): State<ApiState>,
    Path((id, task)): Path<(String, u32)>,
) -> Result<Response, ApiError> {
    let path = st.jobs.result_file(&id, task).await.map_err(job_err)?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("opening {}: {e}", path.display()),
        )
    })?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn sse_event(update: &JobUpdate) -> Event {
    Event::default()
        .event(update.event_name())
        .json_data(update)
        .unwrap_or_else(|_| Event::default().comment("unserialisable update"))
}

async fn events(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (detail, rx) = st.jobs.subscribe(&id).await.map_err(job_err)?;
    let mut first: Vec<JobUpdate> = vec![JobUpdate::Job {
        summary: detail.summary.clone(),
    }];
    first.extend(
        detail
            .tasks
            .into_iter()
            .map(|task| JobUpdate::Task { task }),
    );
    let done = detail.summary.state.is_final();
    let jobs = st.jobs.clone();
    let job_id = detail.summary.id;
    // State: events queued to send first, the receiver, and whether the job
    // is over (nothing more to wait for once the queue is empty).
    let stream = futures::stream::unfold(
        (first.into_iter(), rx, done),
        move |(mut queued, mut rx, over)| {
            let jobs = jobs.clone();
            let job_id = job_id.clone();
            async move {
                if let Some(u) = queued.next() {
                    return Some((Ok(sse_event(&u)), (queued, rx, over)));
                }
                if over {
                    return None;
                }
                match rx.recv().await {
                    Ok(u) => {
                        let over =
                            matches!(&u, JobUpdate::Job { summary } if summary.state.is_final());
                        Some((Ok(sse_event(&u)), (queued, rx, over)))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow a reader: start again from a fresh snapshot.
                        let (detail, fresh) = jobs.subscribe(&job_id).await.ok()?;
                        let over = detail.summary.state.is_final();
                        let mut again = vec![JobUpdate::Job {
                            summary: detail.summary,
                        }];
                        again.extend(
                            detail
                                .tasks
                                .into_iter()
                                .filter(|t| t.state != TaskStateView::Queued)
                                .map(|task| JobUpdate::Task { task }),
                        );
                        let mut it = again.into_iter();
                        let head = it.next()?;
                        Some((Ok(sse_event(&head)), (it, fresh, over)))
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The job routes (mounted behind the token check by `api::router`).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/jobs", get(list).post(submit))
        .route("/v1/jobs/{id}", get(detail).delete(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .route("/v1/jobs/{id}/results", get(results))
        .route("/v1/jobs/{id}/results/{task}", get(result_file))
        .route("/v1/reputation", get(reputation_all))
        .route("/v1/reputation/{node}", get(reputation_one))
}

async fn reputation_all(State(st): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(st.jobs.reputation(None).await.map_err(job_err)?).into_response())
}

async fn reputation_one(
    State(st): State<ApiState>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(st.jobs.reputation(Some(&node)).await.map_err(job_err)?).into_response())
}

/// OpenAPI path items of the job routes.
pub fn openapi_paths() -> serde_json::Value {
    let err = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" },
        "description": "job id (64 hex digits) or a unique prefix of at least 8" });
    json!({
        "/v1/jobs": {
            "get": { "summary": "Jobs this node created", "responses": { "200": { "description": "{\"jobs\": [JobSummary]}" } } },
            "post": { "summary": "Submit a job from this node",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
                    "required": ["kind"],
                    "properties": {
                        "kind": { "description": "\"builtin\", {\"blender\": {\"engine\": \"cycles\"}} or {\"process\": {\"argv\": [..], \"deterministic\": true}}" },
                        "scene": { "type": "string", "description": "absolute path of the scene (input 0) on the node's machine" },
                        "inputs": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "path": { "type": "string" } } } },
                        "frames": { "type": "string", "description": "N, A-B or A-B:STEP" },
                        "tiles": { "type": "object", "properties": { "frame": { "type": "integer" }, "cols": { "type": "integer" }, "rows": { "type": "integer" } } },
                        "width": { "type": "integer" }, "height": { "type": "integer" },
                        "max_price_per_task": { "type": "integer" },
                        "requirements": { "type": "object" },
                        "deadline_secs": { "type": "integer" },
                        "verify": { "type": "object", "description": "verification (default: the kind's default policy): policy none|quorum|spot-check, sample_permille, quorum_k, crop_permille, min_similarity_milli" } } } } } },
                "responses": { "201": { "description": "SubmitView: id, tasks, scheduler" }, "400": err, "503": err } }
        },
        "/v1/jobs/{id}": {
            "get": { "summary": "A job and its tasks", "parameters": [id], "responses": { "200": { "description": "JobDetail" }, "404": err } },
            "delete": { "summary": "Cancel a job", "parameters": [id], "responses": { "200": { "description": "JobSummary" }, "404": err } }
        },
        "/v1/jobs/{id}/events": {
            "get": { "summary": "Server-sent events: `job` (JobSummary) and `task` (TaskView), current state first; ends when the job is over",
                "parameters": [id], "responses": { "200": { "description": "text/event-stream" }, "404": err } }
        },
        "/v1/jobs/{id}/results": {
            "get": { "summary": "Accepted outputs with BLAKE3 hashes", "parameters": [id], "responses": { "200": { "description": "ResultsView" }, "404": err } }
        },
        "/v1/reputation": {
            "get": { "summary": "This node's reputation book: every node, best score first", "responses": { "200": { "description": "ReputationView" } } }
        },
        "/v1/reputation/{node}": {
            "get": { "summary": "One node's standing in this node's book", "parameters": [
                { "name": "node", "in": "path", "required": true, "schema": { "type": "string" }, "description": "peer id or 64 hex digits" }],
                "responses": { "200": { "description": "ReputationView" }, "400": err } }
        },
        "/v1/jobs/{id}/results/{task}": {
            "get": { "summary": "The bytes of one accepted output", "parameters": [id,
                { "name": "task", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "responses": { "200": { "description": "application/octet-stream" }, "404": err } }
        }
    })
}
