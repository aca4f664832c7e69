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
//! * an entry expires after we *received* its newest advert (our clock, not
//!   the signer's), by the longer of `ttl_ms` and [`TTL_FACTOR`] times the
//!   refresh period the advert announces (`refresh_ms`, clamped to
//!   `max_refresh_ms`: a peer cannot make its entry outlive
//!   `TTL_FACTOR × max_refresh_ms`; 0, or more than an hour, is malformed
//!   and rejected with the signature checks);
//! * the table holds at most `max_entries` nodes; a new node arriving when it is
//!   full is rejected (and counted), existing nodes still update.
//!
//! [`AdvertSchedule`] decides when the local node publishes its own advert: at
//! start, when its content changes, and every refresh period, which
//! [`RefreshPolicy`] scales with the number of nodes the node knows (its
//! table's size), so that the whole mesh's periodic gossip stays near
//! `mesh_rate_per_s` adverts a second however large the mesh grows. Each
//! advert announces the period until the next one (`refresh_ms`), so every
//! receiver expires it the same way whatever the size of its own table.

use std::collections::{BTreeSet, HashMap};

use rustc_hash::FxHasher;

use crate::identity::NodeId;
use crate::signed::{Signed, SignedError};
use crate::wire::{CapacityAdvert, MAX_ADVERT_REFRESH_MS};

/// A receiver keeps an entry this many announced refresh periods (at least
/// its own `ttl_ms`): two periodic adverts in a row may be lost before a
/// live node is dropped.
pub const TTL_FACTOR: u64 = 3;

/// How often a node re-advertises capacity that did not change.
///
/// `interval_ms(n) = clamp(n × 1000 / mesh_rate_per_s, base_ms, max_ms)`,
/// where `n` is the number of nodes the node knows (the entries of its
/// capacity table). If every one of `n` nodes follows it, the mesh carries
/// about `mesh_rate_per_s` periodic adverts a second once `n` exceeds
/// `base_ms × mesh_rate_per_s / 1000` nodes (10 000 with the defaults;
/// smaller meshes keep `base_ms`); at 100 000 nodes the period is 100 s.
/// Adverts whose content changed are published at once, whatever the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// The shortest period (small meshes), ms.
    pub base_ms: u64,
    /// The longest period, ms (receivers clamp announced periods to their
    /// [`CapacityConfig::max_refresh_ms`], default the same 300 s).
    pub max_ms: u64,
    /// The periodic adverts a second the whole mesh aims at.
    pub mesh_rate_per_s: u64,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            base_ms: 10_000,
            max_ms: 300_000,
            mesh_rate_per_s: 1_000,
        }
    }
}

impl RefreshPolicy {
    /// A period that does not scale: `interval_ms` whatever the mesh's size.
    pub fn fixed(interval_ms: u64) -> Self {
        RefreshPolicy {
            base_ms: interval_ms,
            max_ms: interval_ms,
            mesh_rate_per_s: 1_000,
        }
    }

    /// The refresh period for a node that knows `known_nodes` nodes, ms:
    /// at least 1, at least `base_ms`, at most `max_ms` (a `max_ms` below
    /// `base_ms` counts as `base_ms`) and at most
    /// [`MAX_ADVERT_REFRESH_MS`] (what an advert can announce). A
    /// `mesh_rate_per_s` of 0 counts as 1.
    pub fn interval_ms(&self, known_nodes: usize) -> u64 {
        let n = u64::try_from(known_nodes).unwrap_or(u64::MAX);
        let scaled = n.saturating_mul(1000) / self.mesh_rate_per_s.max(1);
        let base = self.base_ms.clamp(1, u64::from(MAX_ADVERT_REFRESH_MS));
        let max = self.max_ms.clamp(base, u64::from(MAX_ADVERT_REFRESH_MS));
        scaled.clamp(base, max)
    }
}

/// Settings of a [`CapacityTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityConfig {
    /// An entry lives at least this long after its newest advert was
    /// received (longer when the advert announces a long refresh period);
    /// adverts issued longer ago are refused.
    pub ttl_ms: u64,
    /// Announced refresh periods above this count as this much, so an
    /// entry lives at most `TTL_FACTOR × max_refresh_ms` past its advert.
    pub max_refresh_ms: u64,
    /// Accepted clock skew of a signer ahead of us.
    pub max_skew_ms: u64,
    /// Most nodes held.
    pub max_entries: usize,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            ttl_ms: 30_000,
            max_refresh_ms: 300_000,
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
    /// [`content_digest`] of `advert`.
    pub digest: ContentDigest,
}

/// 64-bit digests of what an advert says, [`content_digest`].
///
/// An advert usually differs from its node's previous one by its load alone
/// (`running_tasks`: a task started or ended) or not at all (the periodic
/// advert). Comparing digests, not the strings and vectors behind them,
/// keeps the per-advert path of a table or a scheduler's view off the held
/// advert's heap: at 100 000 simulated nodes those pointer chases were the
/// largest cost of gossip (a cache miss each), and the same holds for a
/// real scheduler's table.
///
/// Not a cryptographic hash, and it needs none: digests are only ever
/// compared between two adverts of the same node, each signed by that node
/// and no other. A node that makes two of its own adverts collide only keeps
/// receivers holding its earlier claims about itself, which it could simply
/// have sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContentDigest {
    /// Everything but `node`, `seq`, `issued_at_ms`, `refresh_ms` and
    /// `running_tasks`.
    pub all: u64,
    /// What a scheduler's placement reads ([`crate::placement::Profile`],
    /// region and roles): roles, region, runtimes, GPU vendors and memory,
    /// RAM, price, benchmark and `max_tasks`.
    pub placement: u64,
}

/// The [`ContentDigest`] of an advert (a field added to [`CapacityAdvert`]
/// must be added here: the destructuring does not compile otherwise).
pub fn content_digest(a: &CapacityAdvert) -> ContentDigest {
    use std::hash::{Hash, Hasher};
    let CapacityAdvert {
        node: _,
        seq: _,
        issued_at_ms: _,
        refresh_ms: _,
        wrap_key,
        roles,
        cpu_cores,
        cpu_model,
        ram_bytes,
        disk_free_bytes,
        gpus,
        runtimes,
        bench_mfpm,
        running_tasks: _,
        max_tasks,
        price_per_task,
        region,
    } = a;
    // FxHash (the workspace's `rustc-hash`): deterministic in every run,
    // which a replayable simulation needs (`DefaultHasher` promises
    // nothing), and fast on the ~200 bytes of an advert. Digests never
    // leave the process, so its output may change between versions.
    let mut p = FxHasher::default();
    roles.hash(&mut p);
    region.hash(&mut p);
    p.write_usize(runtimes.len());
    for r in runtimes {
        r.kind.hash(&mut p);
        r.version.hash(&mut p);
    }
    p.write_usize(gpus.len());
    for g in gpus {
        g.vendor.hash(&mut p);
        g.vram_bytes.hash(&mut p);
    }
    ram_bytes.hash(&mut p);
    price_per_task.hash(&mut p);
    bench_mfpm.hash(&mut p);
    max_tasks.hash(&mut p);
    let placement = p.finish();
    let mut all = FxHasher::default();
    all.write_u64(placement);
    wrap_key.hash(&mut all);
    cpu_cores.hash(&mut all);
    cpu_model.hash(&mut all);
    disk_free_bytes.hash(&mut all);
    for g in gpus {
        g.model.hash(&mut all);
    }
    ContentDigest {
        all: all.finish(),
        placement,
    }
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
        let expires_at_ms = now_ms.saturating_add(self.lifetime_ms(advert));
        let digest = content_digest(advert);
        if let Some(held) = self.entries.get_mut(&advert.node)
            && held.expires_at_ms > now_ms
            && advert.seq > held.advert.seq
        {
            // Newer content for a live entry (`apply_checked`'s update).
            if held.digest.all == digest.all {
                // The same but for the load and the times: the held
                // advert's strings and vectors stay untouched.
                held.advert.seq = advert.seq;
                held.advert.issued_at_ms = advert.issued_at_ms;
                held.advert.refresh_ms = advert.refresh_ms;
                held.advert.running_tasks = advert.running_tasks;
            } else {
                // Copied field by field: what did not change keeps its
                // allocation.
                assign(&mut held.advert, advert);
                held.digest = digest;
            }
            held.received_at_ms = now_ms;
            held.expires_at_ms = expires_at_ms;
            self.stats.accepted += 1;
            return Ok(AdvertApplied::Updated(advert.node));
        }
        self.apply_checked(advert.clone(), digest, now_ms)
    }

    /// How long an entry made from `advert` lives past its reception: the
    /// longer of `ttl_ms` and [`TTL_FACTOR`] × the announced refresh period,
    /// clamped to `max_refresh_ms`.
    pub fn lifetime_ms(&self, advert: &CapacityAdvert) -> u64 {
        let refresh = u64::from(advert.refresh_ms).min(self.config.max_refresh_ms);
        self.config.ttl_ms.max(TTL_FACTOR.saturating_mul(refresh))
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
        let digest = content_digest(&advert);
        self.apply_checked(advert, digest, now_ms)
    }

    /// The sequence and capacity rules, for an advert whose time is checked.
    fn apply_checked(
        &mut self,
        advert: CapacityAdvert,
        digest: ContentDigest,
        now_ms: u64,
    ) -> Result<AdvertApplied, AdvertRejected> {
        let node = advert.node;
        let expires_at_ms = now_ms.saturating_add(self.lifetime_ms(&advert));
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
                    digest,
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
                        digest,
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

/// Whether two adverts say the same thing: every field but `seq`,
/// `issued_at_ms` and `refresh_ms` equal (a field added to
/// [`CapacityAdvert`] must be added here: the destructuring does not compile
/// otherwise). The refresh period says when the node speaks next, not what
/// it offers: a change of period alone is no change of content (the table
/// still takes the new period for the entry's expiry).
pub fn same_content(a: &CapacityAdvert, b: &CapacityAdvert) -> bool {
    let CapacityAdvert {
        node,
        seq: _,
        issued_at_ms: _,
        refresh_ms: _,
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

/// A publication [`AdvertSchedule::poll`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication {
    /// The sequence number to sign.
    pub seq: u64,
    /// The refresh period to announce (`CapacityAdvert::refresh_ms`): the
    /// next periodic advert comes at most this long after this one.
    pub refresh_ms: u32,
}

/// Makes `dst` equal to `src`, cloning only the fields that differ (a field
/// added to [`CapacityAdvert`] must be added here: the destructuring does not
/// compile otherwise).
fn assign(dst: &mut CapacityAdvert, src: &CapacityAdvert) {
    fn set<T: Clone + PartialEq>(d: &mut T, s: &T) {
        if d != s {
            d.clone_from(s);
        }
    }
    let CapacityAdvert {
        node,
        seq,
        issued_at_ms,
        refresh_ms,
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
    } = dst;
    *node = src.node;
    *seq = src.seq;
    *issued_at_ms = src.issued_at_ms;
    *refresh_ms = src.refresh_ms;
    *wrap_key = src.wrap_key;
    set(roles, &src.roles);
    *cpu_cores = src.cpu_cores;
    set(cpu_model, &src.cpu_model);
    *ram_bytes = src.ram_bytes;
    *disk_free_bytes = src.disk_free_bytes;
    set(gpus, &src.gpus);
    set(runtimes, &src.runtimes);
    *bench_mfpm = src.bench_mfpm;
    *running_tasks = src.running_tasks;
    *max_tasks = src.max_tasks;
    *price_per_task = src.price_per_task;
    set(region, &src.region);
}

/// Decides when the local node publishes its capacity advert: at start, on
/// content change, and every refresh period ([`RefreshPolicy`] of the nodes
/// it knows, [`AdvertSchedule::set_known_nodes`]). The period that counts
/// for the next periodic advert is the one the last advert announced: a
/// growing mesh lengthens the period one advert later, so receivers never
/// expire an entry whose node kept its word.
#[derive(Debug, Clone)]
pub struct AdvertSchedule {
    policy: RefreshPolicy,
    known_nodes: usize,
    /// The period announced with the last publication.
    promised_ms: u64,
    last_published_ms: Option<u64>,
    last_content: Option<[u8; 32]>,
    next_seq: u64,
}

impl AdvertSchedule {
    /// Publishes every `interval_ms` (at least 1 ms), whatever the mesh's
    /// size ([`RefreshPolicy::fixed`]). `first_seq` must exceed every
    /// sequence number this node used before (drivers persist it, or start
    /// from the wall clock in ms, which only grows).
    pub fn new(interval_ms: u64, first_seq: u64) -> Self {
        Self::with_policy(RefreshPolicy::fixed(interval_ms), first_seq)
    }

    /// Publishes unchanged content every `policy.interval_ms(known nodes)`.
    pub fn with_policy(policy: RefreshPolicy, first_seq: u64) -> Self {
        AdvertSchedule {
            policy,
            known_nodes: 0,
            promised_ms: policy.interval_ms(0),
            last_published_ms: None,
            last_content: None,
            next_seq: first_seq,
        }
    }

    /// The number of nodes the node knows now (its capacity table's size):
    /// the period announced with the next advert follows it.
    pub fn set_known_nodes(&mut self, known_nodes: usize) {
        self.known_nodes = known_nodes;
    }

    /// The period the next advert would announce.
    pub fn interval_ms(&self) -> u64 {
        self.policy.interval_ms(self.known_nodes)
    }

    /// Given the advert's current content (a hash of everything but `seq`,
    /// `issued_at_ms` and `refresh_ms`), returns what to publish now, or
    /// `None` when nothing is due.
    pub fn poll(&mut self, content: [u8; 32], now_ms: u64) -> Option<Publication> {
        let due = match (self.last_published_ms, self.last_content) {
            (None, _) | (_, None) => true,
            (Some(at), Some(prev)) => {
                prev != content || now_ms >= at.saturating_add(self.promised_ms)
            }
        };
        if !due {
            return None;
        }
        self.last_published_ms = Some(now_ms);
        self.last_content = Some(content);
        // `interval_ms` is at most MAX_ADVERT_REFRESH_MS, a u32.
        let refresh_ms = u32::try_from(self.interval_ms()).unwrap_or(MAX_ADVERT_REFRESH_MS);
        self.promised_ms = u64::from(refresh_ms);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        Some(Publication { seq, refresh_ms })
    }

    /// When the next periodic publication is due.
    pub fn next_deadline(&self) -> Option<u64> {
        self.last_published_ms
            .map(|at| at.saturating_add(self.promised_ms))
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
            max_refresh_ms: 300_000,
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
            a.region.push_str("-2"); // changed text and lists
            a.gpus.clear();
            a.refresh_ms += 1;
            steps.push((a.clone(), T0 + 12));
            a.seq = 5;
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

    /// Every field of an advert moves the digest it belongs to and no other:
    /// the load, the times and the node move neither; what placement reads
    /// moves both; the rest moves `all` alone.
    #[test]
    fn digests_follow_exactly_their_fields() {
        use crate::wire::{GpuInfo, GpuVendor, Role, RuntimeInfo, RuntimeKind};
        let base = samples::capacity(key(1).node_id());
        assert!(!base.gpus.is_empty() && !base.runtimes.is_empty());
        let d0 = content_digest(&base);
        assert_eq!(d0, content_digest(&base.clone()));
        type Edit = fn(&mut CapacityAdvert);
        let neither: [(&str, Edit); 5] = [
            ("node", |a| a.node = NodeId::from_bytes([0xee; 32])),
            ("seq", |a| a.seq += 1),
            ("issued_at_ms", |a| a.issued_at_ms += 1),
            ("refresh_ms", |a| a.refresh_ms += 1),
            ("running_tasks", |a| a.running_tasks += 1),
        ];
        let placement: [(&str, Edit); 12] = [
            ("roles", |a| a.roles.push(Role::Ledger)),
            ("roles order", |a| a.roles.reverse()),
            ("region", |a| a.region.push('x')),
            ("runtime version", |a| a.runtimes[0].version.push('1')),
            ("runtime kind", |a| {
                a.runtimes[0].kind = if a.runtimes[0].kind == RuntimeKind::Process {
                    RuntimeKind::Builtin
                } else {
                    RuntimeKind::Process
                }
            }),
            ("another runtime", |a| {
                a.runtimes.push(RuntimeInfo {
                    kind: RuntimeKind::Process,
                    version: String::new(),
                })
            }),
            ("gpu vendor", |a| {
                a.gpus[0].vendor = if a.gpus[0].vendor == GpuVendor::Amd {
                    GpuVendor::Nvidia
                } else {
                    GpuVendor::Amd
                }
            }),
            ("gpu memory", |a| a.gpus[0].vram_bytes += 1),
            ("ram", |a| a.ram_bytes += 1),
            ("price", |a| a.price_per_task += 1),
            ("bench", |a| a.bench_mfpm += 1),
            ("max_tasks", |a| a.max_tasks += 1),
        ];
        let all_only: [(&str, Edit); 5] = [
            ("wrap_key", |a| a.wrap_key[31] ^= 1),
            ("cpu_cores", |a| a.cpu_cores += 1),
            ("cpu_model", |a| a.cpu_model.push('x')),
            ("disk_free_bytes", |a| a.disk_free_bytes += 1),
            ("gpu model", |a| a.gpus[0].model.push('x')),
        ];
        for (name, edit) in neither {
            let mut a = base.clone();
            edit(&mut a);
            assert_eq!(content_digest(&a), d0, "{name}");
        }
        for (name, edit) in placement {
            let mut a = base.clone();
            edit(&mut a);
            let d = content_digest(&a);
            assert_ne!(d.placement, d0.placement, "{name}");
            assert_ne!(d.all, d0.all, "{name}");
        }
        for (name, edit) in all_only {
            let mut a = base.clone();
            edit(&mut a);
            let d = content_digest(&a);
            assert_eq!(d.placement, d0.placement, "{name}");
            assert_ne!(d.all, d0.all, "{name}");
        }
        // The second GPU's model counts too.
        let mut two = base.clone();
        let second: GpuInfo = two.gpus[0].clone();
        two.gpus.push(second);
        let mut other = two.clone();
        other.gpus[1].model.push('y');
        let (d2, d3) = (content_digest(&two), content_digest(&other));
        assert_eq!(d2.placement, d3.placement);
        assert_ne!(d2.all, d3.all);
        // Strings are delimited: moving a byte from one to the next is a change.
        let (mut a, mut b) = (base.clone(), base.clone());
        a.region = "ab".into();
        a.cpu_model = "c".into();
        b.region = "a".into();
        b.cpu_model = "bc".into();
        assert_ne!(content_digest(&a), content_digest(&b));
    }

    proptest! {
        /// Adverts the table counts as the same content (`same_content`,
        /// load aside) have the same digests: the shortcut never takes a
        /// change for a repeat because of how the digest is computed.
        #[test]
        fn same_content_means_same_digest(
            running in 0u16..8,
            seq in 0u64..1000,
            region in "[a-z-]{0,12}",
            model in "[a-zA-Z0-9 ]{0,20}",
            ram in 0u64..1 << 40,
        ) {
            let mut a = samples::capacity(key(1).node_id());
            a.region = region;
            a.cpu_model = model;
            a.ram_bytes = ram;
            let mut b = a.clone();
            b.seq = seq;
            b.issued_at_ms += seq;
            b.refresh_ms = 1 + (seq as u32);
            prop_assert!(same_content(&a, &b));
            prop_assert_eq!(content_digest(&a), content_digest(&b));
            b.running_tasks = running;
            prop_assert_eq!(content_digest(&a), content_digest(&b));
        }
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
        let payload = crate::codec::encode_payload(
            crate::wire::MessageKind::CapacityAdvert as u8,
            <CapacityAdvert as crate::wire::WireMessage>::VERSION,
            &adv,
        )
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
        let seq = |p: Option<Publication>| p.map(|p| p.seq);
        assert_eq!(seq(s.poll([1; 32], T0)), Some(100));
        assert_eq!(s.poll([1; 32], T0 + 1), None);
        assert_eq!(seq(s.poll([2; 32], T0 + 2)), Some(101));
        assert_eq!(s.next_deadline(), Some(T0 + 10_002));
        assert_eq!(s.poll([2; 32], T0 + 10_001), None);
        assert_eq!(
            s.poll([2; 32], T0 + 10_002),
            Some(Publication {
                seq: 102,
                refresh_ms: 10_000
            })
        );
        // A fixed schedule ignores the mesh's size.
        s.set_known_nodes(1_000_000);
        assert_eq!(s.interval_ms(), 10_000);
    }

    #[test]
    fn refresh_policy_scales_with_the_mesh() {
        let p = RefreshPolicy::default();
        assert_eq!(p.interval_ms(0), 10_000);
        assert_eq!(p.interval_ms(1_000), 10_000);
        assert_eq!(p.interval_ms(10_000), 10_000);
        assert_eq!(p.interval_ms(10_001), 10_001);
        assert_eq!(p.interval_ms(100_000), 100_000);
        assert_eq!(p.interval_ms(300_000), 300_000);
        assert_eq!(p.interval_ms(usize::MAX), 300_000);
        let fast = RefreshPolicy {
            mesh_rate_per_s: 2_000,
            ..p
        };
        assert_eq!(fast.interval_ms(100_000), 50_000);
        // Degenerate settings stay usable: rate 0 counts as 1, max below
        // base as base, base 0 as 1 ms, nothing beyond what an advert can say.
        let zero = RefreshPolicy {
            mesh_rate_per_s: 0,
            ..p
        };
        assert_eq!(zero.interval_ms(20), 20_000);
        assert_eq!(
            RefreshPolicy { max_ms: 5, ..p }.interval_ms(1 << 30),
            10_000
        );
        assert_eq!(RefreshPolicy::fixed(0).interval_ms(7), 1);
        let huge = RefreshPolicy {
            max_ms: u64::MAX,
            ..p
        };
        assert_eq!(
            huge.interval_ms(usize::MAX),
            u64::from(MAX_ADVERT_REFRESH_MS)
        );
    }

    /// A growing mesh lengthens the period one advert later: the advert
    /// that announced 10 s is followed 10 s later, by one announcing the
    /// new period.
    #[test]
    fn schedule_keeps_the_announced_period() {
        let mut s = AdvertSchedule::with_policy(RefreshPolicy::default(), 1);
        s.set_known_nodes(50);
        let first = s.poll([1; 32], T0).unwrap();
        assert_eq!(first.refresh_ms, 10_000);
        s.set_known_nodes(100_000);
        assert_eq!(s.next_deadline(), Some(T0 + 10_000));
        assert_eq!(s.poll([1; 32], T0 + 9_999), None);
        let second = s.poll([1; 32], T0 + 10_000).unwrap();
        assert_eq!(second.refresh_ms, 100_000);
        assert_eq!(s.next_deadline(), Some(T0 + 110_000));
        assert_eq!(s.poll([1; 32], T0 + 109_999), None);
        // A content change is published at once, whatever the period.
        assert_eq!(s.poll([2; 32], T0 + 20_000).map(|p| p.seq), Some(3));
        // The mesh shrinks: the next periodic advert still comes after the
        // announced 100 s, and announces 10 s.
        s.set_known_nodes(10);
        assert_eq!(s.next_deadline(), Some(T0 + 120_000));
        let p = s.poll([2; 32], T0 + 120_000).unwrap();
        assert_eq!(p.refresh_ms, 10_000);
        assert_eq!(s.next_deadline(), Some(T0 + 130_000));
    }

    /// An announced period makes the entry live `TTL_FACTOR` periods (at
    /// least the ttl), clamped to `max_refresh_ms`; a same-content advert
    /// with a new period moves the expiry too.
    #[test]
    fn lifetime_follows_the_announced_period() {
        let k = key(1);
        let mut t = table();
        let mut a = samples::capacity(k.node_id());
        a.seq = 1;
        a.issued_at_ms = T0;
        a.refresh_ms = 100_000;
        t.apply_verified_ref(&a, T0).unwrap();
        assert_eq!(t.get(&k.node_id(), T0).unwrap().expires_at_ms, T0 + 300_000);
        // A short period: the ttl still holds.
        a.seq = 2;
        a.refresh_ms = 1;
        t.apply_verified_ref(&a, T0 + 1).unwrap();
        assert_eq!(t.get(&k.node_id(), T0).unwrap().expires_at_ms, T0 + 30_001);
        assert_eq!(t.get(&k.node_id(), T0).unwrap().advert.refresh_ms, 1);
        // A hostile period is clamped: at most 3 × max_refresh_ms.
        a.seq = 3;
        a.refresh_ms = MAX_ADVERT_REFRESH_MS;
        t.apply_verified(a.clone(), T0 + 2).unwrap();
        assert_eq!(t.get(&k.node_id(), T0).unwrap().expires_at_ms, T0 + 900_002);
        assert!(t.expire(T0 + 900_001).is_empty());
        assert_eq!(t.expire(T0 + 900_002), vec![k.node_id()]);
    }

    /// A refresh period of 0 or above an hour is malformed: rejected with
    /// the signature checks, counted, and held against the sender.
    #[test]
    fn rejects_bad_refresh_period() {
        let k = key(1);
        for bad in [0, MAX_ADVERT_REFRESH_MS + 1, u32::MAX] {
            let mut adv = samples::capacity(k.node_id());
            adv.issued_at_ms = T0;
            adv.refresh_ms = bad;
            let payload = crate::codec::encode_payload(
                crate::wire::MessageKind::CapacityAdvert as u8,
                <CapacityAdvert as crate::wire::WireMessage>::VERSION,
                &adv,
            )
            .unwrap();
            let frame = crate::codec::assemble_frame(
                k.node_id().as_bytes(),
                &k.sign_raw(&payload),
                &payload,
            );
            let mut t = table();
            let err = t.handle_frame(&frame, T0).unwrap_err();
            assert!(err.is_misbehaviour(), "{bad}: {err}");
            assert!(err.to_string().contains("refresh_ms"), "{err}");
            assert!(t.is_empty());
            assert_eq!(t.stats().invalid, 1);
        }
    }

    /// Version 1 adverts (no refresh period) are refused, never guessed.
    #[test]
    fn rejects_version_1_adverts() {
        let k = key(1);
        let adv = samples::capacity(k.node_id());
        let payload =
            crate::codec::encode_payload(crate::wire::MessageKind::CapacityAdvert as u8, 1, &adv)
                .unwrap();
        let frame =
            crate::codec::assemble_frame(k.node_id().as_bytes(), &k.sign_raw(&payload), &payload);
        let mut t = table();
        assert!(matches!(
            t.handle_frame(&frame, T0),
            Err(AdvertRejected::Invalid(_))
        ));
    }

    proptest! {
        /// The period lies within its bounds and never shrinks as the mesh
        /// grows.
        #[test]
        fn prop_refresh_bounded_and_monotone(
            base in 0u64..1_000_000,
            max in 0u64..5_000_000,
            rate in 0u64..100_000,
            n in 0usize..10_000_000,
            more in 0usize..10_000_000,
        ) {
            let p = RefreshPolicy { base_ms: base, max_ms: max, mesh_rate_per_s: rate };
            let i = p.interval_ms(n);
            let lo = base.clamp(1, u64::from(MAX_ADVERT_REFRESH_MS));
            prop_assert!(i >= lo);
            prop_assert!(i <= max.max(lo).min(u64::from(MAX_ADVERT_REFRESH_MS)));
            prop_assert!(p.interval_ms(n + more) >= i);
        }

        /// However the known node count moves between adverts, a node that
        /// publishes when its schedule says so is never expired by a
        /// receiver between two of its periodic adverts (gossip delay below
        /// one base period): each gap is the period the earlier advert
        /// announced, and the receiver keeps TTL_FACTOR of those.
        #[test]
        fn prop_schedule_keeps_its_word(
            sizes in proptest::collection::vec(0usize..1_000_000, 1..30),
            delay in 0u64..10_000,
        ) {
            let mut s = AdvertSchedule::with_policy(RefreshPolicy::default(), 1);
            let k = key(1);
            let mut t = CapacityTable::new(CapacityConfig::default());
            let mut now = T0;
            let mut last: Option<(u64, u32)> = None;
            for n in sizes {
                s.set_known_nodes(n);
                let p = s.poll([1; 32], now).expect("due at its deadline");
                if let Some((at, refresh)) = last {
                    prop_assert_eq!(now - at, u64::from(refresh));
                }
                // The receiver still holds the previous advert when this one lands.
                if last.is_some() {
                    prop_assert!(t.get(&k.node_id(), now + delay).is_some());
                }
                let mut a = samples::capacity(k.node_id());
                a.seq = p.seq;
                a.issued_at_ms = now;
                a.refresh_ms = p.refresh_ms;
                t.apply_verified_ref(&a, now + delay).unwrap();
                last = Some((now, p.refresh_ms));
                now = s.next_deadline().unwrap();
            }
        }
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
