//! `rendertrust-bootstrap`: the mesh's entry point. A DHT bootstrap (Kademlia
//! server), relay v2 server, AutoNAT v2 server and validating gossip relay.
//! No job logic, no protocol rule of its own. Its identity file is the
//! node's (`rendertrust_node::keys`): `identity.key`, 32 bytes, mode 0600.
//!
//! | module | owns |
//! |---|---|
//! | [`server`] | the swarm, its behaviours and its event loop |
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod server;
