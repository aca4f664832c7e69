//! The job service: the node's driver of the scheduler, worker and creator
//! machines (see `docs/jobs.md`).

pub mod submit;
