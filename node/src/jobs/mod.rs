//! The job service: the node's driver of the scheduler, worker and creator
//! machines (see `docs/jobs.md`).

pub mod api;
pub mod cli;
pub mod handle;
pub mod submit;
pub mod view;

pub use handle::{JobsCommand, JobsError, JobsHandle};
