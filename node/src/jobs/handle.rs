//! [`JobsHandle`]: how the API talks to the job service (a bounded command
//! queue, each command answered on its own oneshot channel), and the
//! service's error type.

use std::path::PathBuf;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::reputation::ReputationView;
use super::submit::SubmitRequest;
use super::view::{JobDetail, JobSummary, JobUpdate, ResultsView, SubmitView};

/// Commands waiting for the job service, at most.
pub const COMMAND_QUEUE: usize = 64;
/// Updates buffered per subscriber before it lags (and gets a fresh snapshot).
pub const UPDATE_BUFFER: usize = 1024;

/// Errors of job commands, each with the HTTP status the API answers.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// No such job (or an ambiguous prefix).
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong; the message says how.
    #[error("{0}")]
    Refused(String),
    /// The mesh cannot take it now (no scheduler reachable, ...).
    #[error("{0}")]
    Unavailable(String),
    /// The node failed.
    #[error("{0}")]
    Internal(String),
    /// The job service has stopped.
    #[error("the job service has stopped")]
    Stopped,
}

impl JobsError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            JobsError::NotFound(_) => 404,
            JobsError::Refused(_) => 400,
            JobsError::Unavailable(_) | JobsError::Stopped => 503,
            JobsError::Internal(_) => 500,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, JobsError>>;

/// A command to the job service.
#[derive(Debug)]
pub enum JobsCommand {
    /// Submit a job from this node.
    Submit(Box<SubmitRequest>, Reply<SubmitView>),
    /// Jobs this node created.
    List(Reply<Vec<JobSummary>>),
    /// One job (id or unique hex prefix).
    Get(String, Reply<JobDetail>),
    /// Cancel a job.
    Cancel(String, Reply<JobSummary>),
    /// A job's detail now, and its updates from now on.
    Subscribe(String, Reply<(JobDetail, broadcast::Receiver<JobUpdate>)>),
    /// A job's accepted outputs.
    Results(String, Reply<ResultsView>),
    /// The file of one accepted output.
    ResultFile(String, u32, Reply<PathBuf>),
    /// The reputation book: every node, or one (peer id or hex).
    Reputation(Option<String>, Reply<ReputationView>),
}

/// The API's handle on the job service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobsHandle {
    commands: mpsc::Sender<JobsCommand>,
}

impl JobsHandle {
    /// A handle and the queue the service reads.
    pub fn channel() -> (JobsHandle, mpsc::Receiver<JobsCommand>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        (JobsHandle { commands: tx }, rx)
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> JobsCommand) -> Result<T, JobsError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| JobsError::Stopped)?;
        rx.await.map_err(|_| JobsError::Stopped)?
    }

    /// Submits a job.
    pub async fn submit(&self, request: SubmitRequest) -> Result<SubmitView, JobsError> {
        self.ask(|r| JobsCommand::Submit(Box::new(request), r))
            .await
    }

    /// Jobs this node created, newest first.
    pub async fn list(&self) -> Result<Vec<JobSummary>, JobsError> {
        self.ask(JobsCommand::List).await
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<JobDetail, JobsError> {
        self.ask(|r| JobsCommand::Get(id.to_owned(), r)).await
    }

    /// Cancels a job.
    pub async fn cancel(&self, id: &str) -> Result<JobSummary, JobsError> {
        self.ask(|r| JobsCommand::Cancel(id.to_owned(), r)).await
    }

    /// A job's detail and its updates.
    pub async fn subscribe(
        &self,
        id: &str,
    ) -> Result<(JobDetail, broadcast::Receiver<JobUpdate>), JobsError> {
        self.ask(|r| JobsCommand::Subscribe(id.to_owned(), r)).await
    }

    /// A job's accepted outputs.
    pub async fn results(&self, id: &str) -> Result<ResultsView, JobsError> {
        self.ask(|r| JobsCommand::Results(id.to_owned(), r)).await
    }

    /// The reputation book (schedulers and ledger peers keep one).
    pub async fn reputation(&self, node: Option<&str>) -> Result<ReputationView, JobsError> {
        self.ask(|r| JobsCommand::Reputation(node.map(str::to_owned), r))
            .await
    }

    /// The file of one accepted output.
    pub async fn result_file(&self, id: &str, task: u32) -> Result<PathBuf, JobsError> {
        self.ask(|r| JobsCommand::ResultFile(id.to_owned(), task, r))
            .await
    }
}
