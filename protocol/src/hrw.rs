//! Rendezvous (highest random weight) hashing: who owns a key.
//!
//! # What this module owns
//!
//! The one ranking of nodes for a key, used to elect a job's owner scheduler
//! (key: the job id bytes, [`job_key`]) and its replica (the best-ranked live
//! scheduler other than the owner), and an epoch's anchorer (key: the epoch
//! number as u64 little-endian, [`epoch_key`]):
//!
//! `score(key, node) = BLAKE3 derive_key("rendertrust 2026-11 hrw v1", key | node)`,
//! compared as 32 big-endian bytes, highest first. The node id is a fixed 32
//! bytes at the end, so `key | node` is unambiguous for any key length. Ties
//! (which need a BLAKE3 collision) fall to the higher node id.
//!
//! Removing a node from the set moves only the keys it owned (to their
//! runner-up); adding one takes over only the keys it now wins. Nobody needs
//! to agree on anything but the set of nodes.
//!
//! # What it must not do
//!
//! No I/O and no notion of liveness: callers pass the set of nodes they
//! consider live.

use crate::identity::NodeId;
use crate::wire::JobId;

/// The BLAKE3 key-derivation context of the score.
pub const HRW_CONTEXT: &str = "rendertrust 2026-11 hrw v1";

/// The score of `node` for `key` (higher wins).
pub fn score(key: &[u8], node: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(HRW_CONTEXT);
    h.update(key);
    h.update(node.as_bytes());
    *h.finalize().as_bytes()
}

/// The nodes ranked for `key`, highest score first, each node once.
pub fn rank<'a>(key: &[u8], nodes: impl IntoIterator<Item = &'a NodeId>) -> Vec<NodeId> {
    let mut scored: Vec<([u8; 32], NodeId)> =
        nodes.into_iter().map(|n| (score(key, n), *n)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, n)| n).collect()
}

/// The highest-ranked node for `key`, if any.
pub fn owner<'a>(key: &[u8], nodes: impl IntoIterator<Item = &'a NodeId>) -> Option<NodeId> {
    nodes
        .into_iter()
        .map(|n| (score(key, n), *n))
        .max()
        .map(|(_, n)| n)
}

/// The highest-ranked node for `key` that is not in `excluded`.
pub fn owner_excluding<'a>(
    key: &[u8],
    nodes: impl IntoIterator<Item = &'a NodeId>,
    excluded: &[NodeId],
) -> Option<NodeId> {
    owner(key, nodes.into_iter().filter(|n| !excluded.contains(n)))
}

/// The HRW key of a job (its id bytes).
pub fn job_key(job: &JobId) -> &[u8] {
    &job.0
}

/// The HRW key of an epoch (the number, u64 little-endian).
pub fn epoch_key(epoch: u64) -> [u8; 8] {
    epoch.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(i: u8) -> NodeId {
        NodeId::from_bytes([i; 32])
    }

    #[test]
    fn score_is_the_documented_derivation() {
        let n = node(7);
        let mut concat = b"job".to_vec();
        concat.extend_from_slice(n.as_bytes());
        assert_eq!(score(b"job", &n), blake3::derive_key(HRW_CONTEXT, &concat));
        assert_ne!(score(b"job", &n), score(b"jo", &n));
    }

    #[test]
    fn rank_orders_by_score_and_dedups() {
        let nodes: Vec<NodeId> = (0..10).map(node).collect();
        let mut with_dups = nodes.clone();
        with_dups.extend_from_slice(&nodes[..3]);
        let ranked = rank(b"k", &with_dups);
        assert_eq!(ranked.len(), 10);
        for w in ranked.windows(2) {
            assert!(score(b"k", &w[0]) > score(b"k", &w[1]));
        }
        assert_eq!(owner(b"k", &nodes), Some(ranked[0]));
        assert_eq!(owner_excluding(b"k", &nodes, &ranked[..1]), Some(ranked[1]));
        assert_eq!(owner(b"k", &[]), None);
        assert!(rank(b"k", &[]).is_empty());
    }

    #[test]
    fn epoch_key_is_le() {
        assert_eq!(epoch_key(1), [1, 0, 0, 0, 0, 0, 0, 0]);
        let j = JobId([4; 32]);
        assert_eq!(job_key(&j), &[4; 32]);
    }

    proptest! {
        /// A node leaving moves only the keys it owned, each to its runner-up;
        /// every other key keeps its owner.
        #[test]
        fn leaving_moves_only_its_keys(
            ids in proptest::collection::btree_set(any::<[u8; 32]>(), 2..12),
            keys in proptest::collection::vec(any::<u64>(), 1..64),
            leave in any::<proptest::sample::Index>(),
        ) {
            let nodes: Vec<NodeId> = ids.into_iter().map(NodeId::from_bytes).collect();
            let gone = nodes[leave.index(nodes.len())];
            let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != gone).collect();
            for k in keys {
                let key = epoch_key(k);
                let before = rank(&key, &nodes);
                let after = owner(&key, &rest);
                if before[0] == gone {
                    prop_assert_eq!(after, Some(before[1]));
                } else {
                    prop_assert_eq!(after, Some(before[0]));
                }
            }
        }

        /// A node joining takes only the keys it now wins.
        #[test]
        fn joining_takes_only_what_it_wins(
            ids in proptest::collection::btree_set(any::<[u8; 32]>(), 2..12),
            keys in proptest::collection::vec(any::<[u8; 32]>(), 1..32),
        ) {
            let mut nodes: Vec<NodeId> = ids.into_iter().map(NodeId::from_bytes).collect();
            let newcomer = nodes.pop().unwrap();
            for k in keys {
                let before = owner(&k, &nodes).unwrap();
                let mut all = nodes.clone();
                all.push(newcomer);
                let after = owner(&k, &all).unwrap();
                prop_assert!(after == before || after == newcomer);
                prop_assert_eq!(after == newcomer, score(&k, &newcomer) > score(&k, &before));
            }
        }
    }
}
