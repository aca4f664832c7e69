//! The RenderTrust node: drivers that feed events into the `rendertrust-protocol`
//! state machines and carry out their actions (networking, storage, runtimes,
//! local API). No protocol rule lives here: if a driver needs a rule, the rule
//! goes into `rendertrust-protocol` and the driver calls it.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the `Config` struct: TOML file, env, flags, defaults |
//! | [`keys`] | identity and wrap keys on disk (mode 0600) |
//! | [`store`] | the sled store: one tree per module, schema version, migrations |
//! | [`content`] | sealed, content-addressed chunks on disk; seal/open file pipelines; chunk fetch |
//! | [`ledger_store`] | the ledger peer's journal: replayed into `protocol::ledger::LedgerPeer` on open |
//! | [`ledger`] | the ledger service (ledger peers), asking ledger peers (any node), the ledger API and CLI |
//! | [`probe`] | what this machine has: CPU, RAM, disk, GPUs, runtimes, benchmark score |
//! | [`runtime`] | task runtimes (builtin renderer, Blender, sandboxed process) and the output check |
//! | [`net`] | the libp2p swarm and its event loop; [`net::NetHandle`] for the rest of the node |
//! | [`api`] | the local HTTP API and its OpenAPI document |
//! | [`cli`] | client commands that talk to a node's API |
//! | [`jobs`] | the job service: scheduler, worker and creator drivers |
//! | [`devnet`] | a whole mesh on loopback as child processes |
//! | [`node`] | wiring: `rendertrust node start` |
//! | [`anchor`] | anchor backends (journal, evm) and the receipt inclusion check |
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// Dishonest workers exist for tests only: never in a release build.
#[cfg(all(feature = "dishonest-test-hooks", not(debug_assertions)))]
compile_error!(
    "the feature dishonest-test-hooks (test-only dishonest workers) must not be enabled in release builds"
);

pub mod anchor;
pub mod api;
pub mod cli;
pub mod config;
pub mod content;
pub mod devnet;
pub mod jobs;
pub mod keys;
pub mod ledger;
pub mod ledger_store;
pub mod net;
pub mod node;
pub mod probe;
pub mod runtime;
pub mod store;
