//! The job service: the node's driver of the scheduler, worker and creator
//! machines (see `docs/jobs.md`).
//!
//! | module | owns |
//! |---|---|
//! | [`service`] | the service loop: inputs, timers, persistence |
//! | `sched` | the scheduler role: requests into the scheduler machine, its actions out |
//! | `work` | the worker role: offers, running tasks, results |
//! | `create` | the creator: submit, events, fetching and accepting results |
//! | [`reputation`] | the reputation book: outcomes, persistence, reports |
//! | `compare` | the creator's spot-check comparisons (decode, crop, metric) |
//! | [`transfer`] | content over the mesh (serve, fetch) |
//! | [`outbox`] | ordered per-peer delivery of requests |
//! | [`submit`], [`view`], [`handle`], [`api`], [`cli`] | what creators send and see |

pub mod api;
pub mod cli;
mod compare;
mod create;
#[cfg(feature = "dishonest-test-hooks")]
pub mod dishonest;
pub mod handle;
pub mod outbox;
pub mod reputation;
mod sched;
pub mod service;
pub mod submit;
pub mod transfer;
pub mod view;
mod work;

pub use handle::{JobsCommand, JobsError, JobsHandle};
pub use service::{JobsConfig, LocalLedger, ServiceParts, spawn};
