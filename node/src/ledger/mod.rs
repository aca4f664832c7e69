//! The ledger service: what a node with the ledger role runs, and how every
//! node asks ledger peers about credits and receipts.
//!
//! | module | owns |
//! |---|---|
//! | [`service`] | the ledger peer's task: ingests ledger events from gossip (batched, then validated), runs epochs, reconciles, anchors, answers `/rendertrust/ledger/1` |
//! | [`handle`] | [`LedgerHandle`]: the API's command queue to the service |
//! | [`remote`] | asking ledger peers over the network (any node) |
//! | [`api`] | the `/v1/ledger/…` and `/v1/receipts/…` routes |
//! | [`cli`] | `ledger balance/leaderboard/epochs/mint`, `receipt show/verify` |
//! | [`view`] | the JSON the routes answer |
//!
//! The persistence (journal and replay) is [`crate::ledger_store`]'s; the
//! anchor backends are [`crate::anchor`]'s; every credit, epoch and
//! reconciliation rule is `rendertrust_protocol::{ledger, rollup}`'s. This
//! module only carries events, answers and actions between them and the
//! network.

pub mod api;
pub mod cli;
pub mod handle;
pub mod remote;
pub mod service;
pub mod view;

pub use handle::{LedgerCommand, LedgerError, LedgerHandle};
pub use service::{LedgerParts, LedgerServiceError};
