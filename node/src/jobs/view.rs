//! What the API and CLI show of jobs: plain JSON views, built by the job
//! service from the machines' state. No rule lives here.

use serde::{Deserialize, Serialize};

/// A job's overall state, as a creator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Sealing inputs / not yet taken by a scheduler.
    Submitting,
    /// Waiting for workers (see `reason`).
    Queued,
    /// Tasks are running.
    Running,
    /// Every task accepted.
    Done,
    /// Finished, some tasks failed.
    Failed,
    /// Cancelled by the creator.
    Cancelled,
}

impl JobState {
    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A task's state, as a creator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStateView {
    /// Waiting for a worker.
    Queued,
    /// Offered to a worker, not yet accepted.
    Offered,
    /// A worker runs it.
    Running,
    /// A result arrived; its output is being fetched and checked.
    Fetching,
    /// Output verified and receipt countersigned.
    Accepted,
    /// Given up.
    Failed,
}

/// Counts of tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Queued or offered.
    pub queued: u64,
    /// Running.
    pub running: u64,
    /// Fetching.
    pub fetching: u64,
    /// Accepted.
    pub accepted: u64,
    /// Failed.
    pub failed: u64,
}

/// One job in `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Job id (hex).
    pub id: String,
    /// `builtin`, `blender` or `process`.
    pub kind: String,
    /// Overall state.
    pub state: JobState,
    /// Number of tasks.
    pub tasks: u64,
    /// Tasks by state.
    pub counts: Counts,
    /// Why the job waits or failed, if it does.
    pub reason: Option<String>,
    /// The scheduler that owns the job (peer id), once known.
    pub scheduler: Option<String>,
    /// When it was created (Unix ms).
    pub created_at_ms: u64,
    /// Output size.
    pub width: u32,
    /// Output size.
    pub height: u32,
}

/// One task in a job's detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task index.
    pub index: u32,
    /// Frame number.
    pub frame: u32,
    /// Region `[x, y, w, h]` of the frame.
    pub region: [u32; 4],
    /// State.
    pub state: TaskStateView,
    /// Worker (peer id), when assigned.
    pub worker: Option<String>,
    /// Attempt number.
    pub attempt: u32,
    /// Progress, per mille.
    pub progress_permille: u16,
    /// BLAKE3 of the accepted output (hex).
    pub output_hash: Option<String>,
    /// Receipt id of the accepted result (hex).
    pub receipt_id: Option<String>,
    /// Why it failed or waits.
    pub reason: Option<String>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The summary.
    pub summary: JobSummary,
    /// Every task.
    pub tasks: Vec<TaskView>,
}

/// One accepted output in `GET /v1/jobs/{id}/results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultView {
    /// Task index.
    pub task: u32,
    /// Frame number.
    pub frame: u32,
    /// Region `[x, y, w, h]`.
    pub region: [u32; 4],
    /// Suggested file name (e.g. `frame_0001.png`).
    pub file_name: String,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the bytes (hex): `job fetch` checks it.
    pub output_hash: String,
    /// The countersigned receipt's id (hex).
    pub receipt_id: String,
    /// The worker that rendered it (peer id).
    pub worker: String,
    /// Where to GET the bytes.
    pub url: String,
}

/// `GET /v1/jobs/{id}/results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsView {
    /// Job id.
    pub job: String,
    /// Accepted outputs, by task index.
    pub results: Vec<ResultView>,
    /// Tasks without an accepted output yet (or ever).
    pub missing: Vec<u32>,
}

/// `POST /v1/jobs` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitView {
    /// Job id (hex).
    pub id: String,
    /// Number of tasks.
    pub tasks: u64,
    /// The scheduler it went to (peer id).
    pub scheduler: String,
}

/// One server-sent event of `GET /v1/jobs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobUpdate {
    /// The job's summary changed.
    Job {
        /// The new summary.
        summary: JobSummary,
    },
    /// A task changed.
    Task {
        /// The new task view.
        task: TaskView,
    },
}

impl JobUpdate {
    /// The SSE event name.
    pub fn event_name(&self) -> &'static str {
        match self {
            JobUpdate::Job { .. } => "job",
            JobUpdate::Task { .. } => "task",
        }
    }
}

/// The file name of a task's output: `frame_0001.png`, or
/// `frame_0001_x64_y0.png` for a tile.
pub fn output_file_name(frame: u32, region: [u32; 4], full: (u32, u32), ext: &str) -> String {
    if region == [0, 0, full.0, full.1] {
        format!("frame_{frame:04}.{ext}")
    } else {
        format!("frame_{frame:04}_x{}_y{}.{ext}", region[0], region[1])
    }
}
