//! The capacity table: every node's view of the mesh's capacity.
//!
//! A sans-IO state machine fed with signed [`CapacityAdvert`] frames as they
//! arrive on the `capacity` gossip topic, and with the local clock (`now_ms`).
//! It keeps the newest valid advert per node, expires nodes that stop
//! advertising, and counts what it rejected and why, so the driver can
//! penalise the sending peer. It never trusts a byte before the signature is
//! checked; nothing in it panics on peer input.
//!
//! Rules (one place for them; the node and the simulator both call this):
//! * an advert must decode, verify, and be signed by the node it describes;
//! * it must be newer (`seq`) than the advert held for that node: older or
//!   equal sequence numbers are replays and change nothing;
//! * its `issued_at_ms` must be within `max_skew_ms` of our clock in the future
//!   and within `ttl_ms` in the past (a replayed old advert cannot revive a
//!   node that left);
//! * an entry expires `ttl_ms` after we *received* its newest advert (our
//!   clock, not the signer's);
//! * the table holds at most `max_entries` nodes; a new node arriving when it is
//!   full is rejected (and counted), existing nodes still update.
//!
//! [`AdvertSchedule`] decides when the local node publishes its own advert: at
//! start, when its content changes, and every `interval_ms`.

use std::collections::{BTreeSet, HashMap};

use crate::identity::NodeId;
use crate::signed::{Signed, SignedError};
use crate::wire::CapacityAdvert;

/// Settings of a [`CapacityTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityConfig {
    /// An entry lives this long after its newest advert was received.
    pub ttl_ms: u64,
    /// Accepted clock skew of a signer ahead of us.
    pub max_skew_ms: u64,
    /// Most nodes held.
    pub max_entries: usize,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            ttl_ms: 30_000,
            max_skew_ms: 10_000,
            max_entries: 100_000,
        }
    }
}

/// Why an advert changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertRejected {
    /// Malformed, badly signed, or signed by another node than it describes.
    #[error("invalid advert: {0}")]
    Invalid(#[from] SignedError),
    /// Not newer than the advert held for the node (a replay or a reorder).
    #[error("stale advert from {node}: seq {seq} <= held seq {held}")]
    Stale {
        /// The node.
        node: NodeId,
        /// Sequence number received.
        seq: u64,
        /// Sequence number held.
        held: u64,
    },
    /// Issued too far in the future.
    #[error("advert from {node} issued {ahead_ms} ms in the future (max skew {max_ms} ms)")]
    FromFuture {
        /// The node.
        node: NodeId,
        /// How far ahead of our clock.
        ahead_ms: u64,
        /// The allowed skew.
        max_ms: u64,
    },
    /// Issued longer ago than the entry lifetime.
    #[error("advert from {node} is {age_ms} ms old (ttl {ttl_ms} ms)")]
    Expired {
        /// The node.
        node: NodeId,
        /// Its age by our clock.
        age_ms: u64,
        /// The lifetime.
        ttl_ms: u64,
    },
    /// The table is full and the node is new.
    #[error("capacity table full ({max} nodes): new node {node} not added")]
    Full {
        /// The node.
        node: NodeId,
        /// The bound.
        max: usize,
    },
}

impl AdvertRejected {
    /// Whether the sender did something wrong (as opposed to a benign race:
    /// a stale duplicate, or our table being full). Drivers penalise peers
    /// that forward invalid adverts.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            AdvertRejected::Invalid(_) | AdvertRejected::FromFuture { .. }
        )
    }
}

/// What an accepted advert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvertApplied {
    /// A node the table did not hold.
    NewNode(NodeId),
    /// A newer advert for a known node.
    Updated(NodeId),
}

/// One node's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityEntry {
    /// The verified advert.
    pub advert: CapacityAdvert,
    /// When we received it (our clock).
    pub received_at_ms: u64,
    /// When the entry expires unless refreshed (our clock).
    pub expires_at_ms: u64,
}

/// Counters of what the table did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityStats {
    /// Adverts accepted.
    pub accepted: u64,
    /// Rejected: malformed or bad signature.
    pub invalid: u64,
    /// Rejected: stale sequence number.
    pub stale: u64,
    /// Rejected: issued in the future or too old.
    pub out_of_time: u64,
    /// Rejected: table full.
    pub full: u64,
    /// Entries expired.
    pub expired: u64,
}

/// The capacity table state machine.
#[derive(Debug, Clone)]
pub struct CapacityTable {
    config: CapacityConfig,
    /// Entries, for lookups (the per-advert path): never iterated, its
    /// order would not replay. Keyed by the standard library's randomly
    /// seeded SipHash, which hostile node ids cannot collide.
    entries: HashMap<NodeId, CapacityEntry>,
    /// The same nodes in id order, for everything that iterates.
    order: BTreeSet<NodeId>,
    stats: CapacityStats,
}

impl CapacityTable {
    /// An empty table.
    pub fn new(config: CapacityConfig) -> Self {
        CapacityTable {
            config,
            entries: HashMap::new(),
            order: BTreeSet::new(),
            stats: CapacityStats::default(),
        }
    }

    /// Feeds advert frame bytes as received from a peer.
    pub fn handle_frame(
        &mut self,
        frame: &[u8],
        now_ms: u64,
    ) -> Result<AdvertApplied, AdvertRejected> {
        let signed = Signed::<CapacityAdvert>::from_slice(frame).map_err(|e| self.invalid(e))?;
        self.handle_signed(&signed, now_ms)
    }

    /// Feeds a signed advert (signature not yet checked).
    pub fn handle_signed(
        &mut self,
        signed: &Signed<CapacityAdvert>,
        now_ms: u64,
    ) -> Result<AdvertApplied, AdvertRejected> {
        let advert = signed.verify().map_err(|e| self.invalid(e))?;
        self.apply_verified(advert, now_ms)
    }

    fn invalid(&mut self, e: SignedError) -> AdvertRejected {
        self.stats.invalid += 1;
        AdvertRejected::Invalid(e)
    }

    /// [`CapacityTable::apply_verified`] for a borrowed advert: the periodic
    /// advert whose content equals the held one (only `seq` and
    /// `issued_at_ms` moved) updates the entry in place, without a copy; any
    /// other advert is copied in. The same rules, checks and counters.
    pub fn apply_verified_ref(
        &mut self,
        advert: &CapacityAdvert,
        now_ms: u64,
    ) -> Result<AdvertApplied, AdvertRejected> {
        self.check_time(advert, now_ms)?;
        let expires_at_ms = now_ms.saturating_add(self.config.ttl_ms);
        if let Some(held) = self.entries.get_mut(&advert.node)
            && held.expires_at_ms > now_ms
            && advert.seq > held.advert.seq
            && same_content(&held.advert, advert)
        {
            held.advert.seq = advert.seq;
            held.advert.issued_at_ms = advert.issued_at_ms;
            held.received_at_ms = now_ms;
            held.expires_at_ms = expires_at_ms;
            self.stats.accepted += 1;
            return Ok(AdvertApplied::Updated(advert.node));
        }
        self.apply_checked(advert.clone(), now_ms)
    }

    fn check_time(&mut self, advert: &CapacityAdvert, now_ms: u64) -> Result<(), AdvertRejected> {
        let node = advert.node;
        if advert.issued_at_ms > now_ms.saturating_add(self.config.max_skew_ms) {
            self.stats.out_of_time += 1;
            return Err(AdvertRejected::FromFuture {
                node,
                ahead_ms: advert.issued_at_ms - now_ms,
                max_ms: self.config.max_skew_ms,
            });
        }
        let age_ms = now_ms.saturating_sub(advert.issued_at_ms);
        if age_ms > self.config.ttl_ms {
            self.stats.out_of_time += 1;
            return Err(AdvertRejected::Expired {
                node,
                age_ms,
                ttl_ms: self.config.ttl_ms,
            });
        }
        Ok(())
    }

    /// Applies an advert whose signature has been checked (e.g. the node's own).
    pub fn apply_verified(
        &mut self,
        advert: CapacityAdvert,
        now_ms: u64,
    ) -> Result<AdvertApplied, AdvertRejected> {
        self.check_time(&advert, now_ms)?;
        self.apply_checked(advert, now_ms)
    }

    /// The sequence and capacity rules, for an advert whose time is checked.
    fn apply_checked(
        &mut self,
        advert: CapacityAdvert,
        now_ms: u64,
    ) -> Result<AdvertApplied, AdvertRejected> {
        let node = advert.node;
        let expires_at_ms = now_ms.saturating_add(self.config.ttl_ms);
        match self.entries.get_mut(&node) {
            Some(held) if held.expires_at_ms > now_ms => {
                if advert.seq <= held.advert.seq {
                    self.stats.stale += 1;
                    return Err(AdvertRejected::Stale {
                        node,
                        seq: advert.seq,
                        held: held.advert.seq,
                    });
                }
                *held = CapacityEntry {
                    advert,
                    received_at_ms: now_ms,
                    expires_at_ms,
                };
                self.stats.accepted += 1;
                Ok(AdvertApplied::Updated(node))
            }
            _ => {
                // Absent, or held but already past expiry (not yet swept).
                let is_new = !self.entries.contains_key(&node);
                if is_new && self.entries.len() >= self.config.max_entries {
                    self.stats.full += 1;
                    return Err(AdvertRejected::Full {
                        node,
                        max: self.config.max_entries,
                    });
                }
                if is_new {
                    self.order.insert(node);
                }
                self.entries.insert(
                    node,
                    CapacityEntry {
                        advert,
                        received_at_ms: now_ms,
                        expires_at_ms,
                    },
                );
                self.stats.accepted += 1;
                Ok(AdvertApplied::NewNode(node))
            }
        }
    }

    /// Removes entries past their expiry; returns the nodes removed.
    pub fn expire(&mut self, now_ms: u64) -> Vec<NodeId> {
        let mut gone: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_at_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        // The hash map's order is not replayable: id order.
        gone.sort_unstable();
        for id in &gone {
            self.entries.remove(id);
            self.order.remove(id);
        }
        self.stats.expired += gone.len() as u64;
        gone
    }

    /// Removes a node at once (e.g. the driver learned it was banned).
    pub fn remove(&mut self, node: &NodeId) -> Option<CapacityEntry> {
        self.order.remove(node);
        self.entries.remove(node)
    }

    /// The earliest time at which [`CapacityTable::expire`] has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.entries.values().map(|e| e.expires_at_ms).min()
    }

    /// A node's entry, if live at `now_ms`.
    pub fn get(&self, node: &NodeId, now_ms: u64) -> Option<&CapacityEntry> {
        self.entries.get(node).filter(|e| e.expires_at_ms > now_ms)
    }

    /// Live entries at `now_ms`, ordered by node id.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &CapacityEntry> {
        self.order
            .iter()
            .filter_map(|id| self.entries.get(id))
            .filter(move |e| e.expires_at_ms > now_ms)
    }

    /// Number of entries held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> CapacityStats {
        self.stats
    }

    /// Settings.
    pub fn config(&self) -> CapacityConfig {
        self.config
    }
}

/// Whether two adverts say the same thing: every field but `seq` and
/// `issued_at_ms` equal (a field added to [`CapacityAdvert`] must be added
/// here: the destructuring does not compile otherwise).
pub fn same_content(a: &CapacityAdvert, b: &CapacityAdvert) -> bool {
    let CapacityAdvert {
        node,
        seq: _,
        issued_at_ms: _,
        wrap_key,
        roles,
        cpu_cores,
        cpu_model,
        ram_bytes,
        disk_free_bytes,
        gpus,
        runtimes,
        bench_mfpm,
        running_tasks,
        max_tasks,
        price_per_task,
        region,
    } = a;
    *node == b.node
        && *running_tasks == b.running_tasks
        && *wrap_key == b.wrap_key
        && *roles == b.roles
        && *cpu_cores == b.cpu_cores
        && *cpu_model == b.cpu_model
        && *ram_bytes == b.ram_bytes
        && *disk_free_bytes == b.disk_free_bytes
        && *gpus == b.gpus
        && *runtimes == b.runtimes
        && *bench_mfpm == b.bench_mfpm
        && *max_tasks == b.max_tasks
        && *price_per_task == b.price_per_task
        && *region == b.region
}

/// Decides when the local node publishes its capacity advert.
#[derive(Debug, Clone)]
pub struct AdvertSchedule {
    interval_ms: u64,
    last_published_ms: Option<u64>,
    last_content: Option<[u8; 32]>,
    next_seq: u64,
}

impl AdvertSchedule {
    /// Publishes every `interval_ms` at least. `first_seq` must exceed every
    /// sequence number this node used before (drivers persist it, or start
    /// from the wall clock in ms, which only grows).
    pub fn new(interval_ms: u64, first_seq: u64) -> Self {
        AdvertSchedule {
            interval_ms: interval_ms.max(1),
            last_published_ms: None,
            last_content: None,
            next_seq: first_seq,
        }
    }

    /// Given the advert's current content (a hash of everything but `seq` and
    /// `issued_at_ms`), returns the sequence number to publish with now, or
    /// `None` when nothing is due.
    pub fn poll(&mut self, content: [u8; 32], now_ms: u64) -> Option<u64> {
        let due = match (self.last_published_ms, self.last_content) {
            (None, _) | (_, None) => true,
            (Some(at), Some(prev)) => {
                prev != content || now_ms >= at.saturating_add(self.interval_ms)
            }
        };
        if !due {
            return None;
        }
        self.last_published_ms = Some(now_ms);
        self.last_content = Some(content);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        Some(seq)
    }

    /// When the next periodic publication is due.
    pub fn next_deadline(&self) -> Option<u64> {
        self.last_published_ms
            .map(|at| at.saturating_add(self.interval_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use crate::wire::samples;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const T0: u64 = 1_780_000_000_000;

    fn key(seed: u64) -> NodeKey {
        NodeKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    fn advert(k: &NodeKey, seq: u64, issued: u64) -> Vec<u8> {
        let mut a = samples::capacity(k.node_id());
        a.seq = seq;
        a.issued_at_ms = issued;
        Signed::sign(k, &a).unwrap().into_bytes()
    }

    fn table() -> CapacityTable {
        CapacityTable::new(CapacityConfig {
            ttl_ms: 30_000,
            max_skew_ms: 5_000,
            max_entries: 3,
        })
    }

    /// The borrowed entry point decides exactly as `apply_verified`: the same
    /// results, counters and entries, whether the content changed or not,
    /// and the same rejections (stale, expired, from the future, full).
    #[test]
    fn apply_verified_ref_agrees_with_apply_verified() {
        let ks: Vec<NodeKey> = (1..=4).map(key).collect();
        let mut by_value = table();
        let mut by_ref = table();
        let mut steps = Vec::new();
        for (i, k) in ks.iter().enumerate() {
            let mut a = samples::capacity(k.node_id());
            a.seq = 1;
            a.issued_at_ms = T0;
            steps.push((a.clone(), T0 + i as u64)); // new nodes (the 4th: full)
            a.seq = 2; // same content, newer: in place
            steps.push((a.clone(), T0 + 10));
            steps.push((a.clone(), T0 + 11)); // stale
            a.seq = 3;
            a.running_tasks += 1; // changed content
            steps.push((a.clone(), T0 + 12));
            a.seq = 4;
            a.issued_at_ms = T0 + 60_000; // from the future
            steps.push((a.clone(), T0 + 13));
            a.issued_at_ms = T0;
            steps.push((a.clone(), T0 + 40_000)); // too old
        }
        for (a, now) in steps {
            assert_eq!(
                by_value.apply_verified(a.clone(), now),
                by_ref.apply_verified_ref(&a, now),
                "seq {} at {now}",
                a.seq
            );
        }
        assert_eq!(by_value.stats(), by_ref.stats());
        assert!(by_ref.stats().stale > 0 && by_ref.stats().full > 0);
        assert!(by_ref.stats().out_of_time > 0);
        assert_eq!(by_value.entries, by_ref.entries);
        assert_eq!(by_value.order, by_ref.order);
        let mut other = samples::capacity(ks[0].node_id());
        assert!(same_content(&other, &other.clone()));
        other.seq += 1;
        other.issued_at_ms += 1;
        assert!(same_content(&other, &samples::capacity(ks[0].node_id())));
        other.region.push('x');
        assert!(!same_content(&other, &samples::capacity(ks[0].node_id())));
    }

    #[test]
    fn keeps_newest_per_node() {
        let k = key(1);
        let mut t = table();
        assert_eq!(
            t.handle_frame(&advert(&k, 1, T0), T0),
            Ok(AdvertApplied::NewNode(k.node_id()))
        );
        assert_eq!(
            t.handle_frame(&advert(&k, 2, T0), T0 + 1),
            Ok(AdvertApplied::Updated(k.node_id()))
        );
        assert!(matches!(
            t.handle_frame(&advert(&k, 2, T0), T0 + 2),
            Err(AdvertRejected::Stale {
                seq: 2,
                held: 2,
                ..
            })
        ));
        assert!(matches!(
            t.handle_frame(&advert(&k, 1, T0), T0 + 2),
            Err(AdvertRejected::Stale { .. })
        ));
        assert_eq!(t.get(&k.node_id(), T0 + 3).unwrap().advert.seq, 2);
        assert_eq!(t.stats().stale, 2);
    }

    #[test]
    fn rejects_bad_signature_and_counts_it() {
        let k = key(1);
        let mut bytes = advert(&k, 1, T0);
        bytes[50] ^= 1;
        let mut t = table();
        assert!(matches!(
            t.handle_frame(&bytes, T0),
            Err(AdvertRejected::Invalid(_))
        ));
        assert!(t.is_empty());
        assert_eq!(t.stats().invalid, 1);
        assert!(matches!(
            t.handle_frame(b"garbage", T0),
            Err(AdvertRejected::Invalid(_))
        ));
        assert_eq!(t.stats().invalid, 2);
    }

    #[test]
    fn rejects_advert_about_another_node() {
        let (a, b) = (key(1), key(2));
        let mut adv = samples::capacity(b.node_id());
        adv.issued_at_ms = T0;
        // Signed::sign refuses; build the frame by hand as an attacker would.
        let payload =
            crate::codec::encode_payload(crate::wire::MessageKind::CapacityAdvert as u8, 1, &adv)
                .unwrap();
        let frame =
            crate::codec::assemble_frame(a.node_id().as_bytes(), &a.sign_raw(&payload), &payload);
        let mut t = table();
        let err = t.handle_frame(&frame, T0).unwrap_err();
        assert!(err.is_misbehaviour());
        assert!(t.is_empty());
    }

    #[test]
    fn time_bounds() {
        let k = key(1);
        let mut t = table();
        assert!(matches!(
            t.handle_frame(&advert(&k, 1, T0 + 6_000), T0),
            Err(AdvertRejected::FromFuture { .. })
        ));
        assert!(matches!(
            t.handle_frame(&advert(&k, 1, T0 - 30_001), T0),
            Err(AdvertRejected::Expired { .. })
        ));
        assert!(t.handle_frame(&advert(&k, 1, T0 + 4_000), T0).is_ok());
    }

    #[test]
    fn expiry_and_deadline() {
        let (a, b) = (key(1), key(2));
        let mut t = table();
        t.handle_frame(&advert(&a, 1, T0), T0).unwrap();
        t.handle_frame(&advert(&b, 1, T0), T0 + 10_000).unwrap();
        assert_eq!(t.next_deadline(), Some(T0 + 30_000));
        assert!(t.expire(T0 + 29_999).is_empty());
        assert_eq!(t.expire(T0 + 30_000), vec![a.node_id()]);
        assert_eq!(t.live(T0 + 30_000).count(), 1);
        assert_eq!(t.next_deadline(), Some(T0 + 40_000));
        // A node that left comes back with a fresh advert.
        assert_eq!(
            t.handle_frame(&advert(&a, 2, T0 + 31_000), T0 + 31_000),
            Ok(AdvertApplied::NewNode(a.node_id()))
        );
    }

    #[test]
    fn bounded() {
        let mut t = table();
        for s in 0..3 {
            t.handle_frame(&advert(&key(s), 1, T0), T0).unwrap();
        }
        let extra = key(99);
        assert!(matches!(
            t.handle_frame(&advert(&extra, 1, T0), T0),
            Err(AdvertRejected::Full { .. })
        ));
        // Known nodes still update.
        assert!(t.handle_frame(&advert(&key(0), 2, T0), T0).is_ok());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn schedule_publishes_at_start_on_change_and_interval() {
        let mut s = AdvertSchedule::new(10_000, 100);
        assert_eq!(s.poll([1; 32], T0), Some(100));
        assert_eq!(s.poll([1; 32], T0 + 1), None);
        assert_eq!(s.poll([2; 32], T0 + 2), Some(101));
        assert_eq!(s.next_deadline(), Some(T0 + 10_002));
        assert_eq!(s.poll([2; 32], T0 + 10_001), None);
        assert_eq!(s.poll([2; 32], T0 + 10_002), Some(102));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever order adverts arrive in, the table ends holding the highest
        /// seq per node, and replaying all events gives the same table.
        #[test]
        fn prop_order_independent(order in proptest::collection::vec((0u64..4, 1u64..20), 1..40)) {
            let keys: Vec<NodeKey> = (0..4).map(key).collect();
            let frames: Vec<(usize, u64, Vec<u8>)> = order
                .iter()
                .map(|&(n, seq)| (n as usize, seq, advert(&keys[n as usize], seq, T0)))
                .collect();
            let mut t = CapacityTable::new(CapacityConfig::default());
            for (_, _, f) in &frames {
                let _ = t.handle_frame(f, T0);
            }
            for (n, k) in keys.iter().enumerate() {
                let max = frames.iter().filter(|(m, _, _)| *m == n).map(|(_, s, _)| *s).max();
                prop_assert_eq!(t.get(&k.node_id(), T0).map(|e| e.advert.seq), max);
            }
            let mut again = CapacityTable::new(CapacityConfig::default());
            for (_, _, f) in &frames {
                let _ = again.handle_frame(f, T0);
            }
            prop_assert_eq!(again.entries, t.entries);
        }
    }
}
