//! The scheduler's capacity view: live nodes, what this scheduler holds on
//! each, and the placement index.
//!
//! Nodes live in an arena (`slots`, reused through `free_list`) so the index
//! can refer to them by a `u32`. The index is one vector per bucket
//! `(runtime kind, GPU vendor or any)`: 3 × 6 = 18 buckets, each listing the
//! *worker* nodes that have that runtime (and a GPU of that vendor) and at
//! least one free slot, so sampling a candidate is one random index. A node
//! enters and leaves buckets when its advert changes, when this scheduler
//! takes or releases a slot on it, and when it expires; each move is a
//! swap-remove, O(1) per bucket. `live` counts every live worker per bucket,
//! busy or not, to explain an empty bucket.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::placement::{NEUTRAL_REPUTATION, Profile, runtime_index, vendor_index};
use crate::wire::{CapacityAdvert, GpuVendor, Role, RuntimeKind};

/// Number of index buckets.
pub(crate) const BUCKETS: usize = 18;
/// Region id of a region this view does not know (never "same region").
pub(crate) const NO_REGION: u32 = u32::MAX;
/// Most distinct region labels interned; later ones count as unknown.
pub(crate) const MAX_REGIONS: usize = 4096;

/// The bucket of a job's needs.
pub(crate) fn bucket_of(kind: RuntimeKind, vendor: Option<GpuVendor>) -> usize {
    runtime_index(kind) * 6 + vendor.map_or(0, |v| vendor_index(v) + 1)
}

/// Every bucket a profile belongs in (bit per bucket); 0 if not a worker.
fn bucket_mask(p: &Profile) -> u32 {
    if !p.is_worker {
        return 0;
    }
    let mut mask = 0u32;
    for (kind, _) in &p.runtimes {
        mask |= 1 << bucket_of(*kind, None);
        for (vendor, _) in &p.gpus {
            mask |= 1 << bucket_of(*kind, Some(*vendor));
        }
    }
    mask
}

/// One node as this scheduler sees it.
#[derive(Debug, Clone, Eq, Serialize, Deserialize)]
pub(crate) struct NodeEntry {
    pub(crate) id: NodeId,
    pub(crate) profile: Profile,
    pub(crate) region: u32,
    pub(crate) is_scheduler: bool,
    pub(crate) seq: u64,
    pub(crate) expires_at_ms: u64,
    /// When this node's expiry timer is armed (0: not armed). Expiry is lazy:
    /// an advert that moves `expires_at_ms` later leaves the timer where it
    /// is, and the timer re-arms at the entry's expiry when it fires, so a
    /// node is forgotten exactly at its expiry with one timer update per
    /// lifetime rather than two per advert.
    #[serde(skip)]
    pub(crate) timer_at: u64,
    /// The placement digest of the advert applied last
    /// ([`crate::capacity::ContentDigest::placement`]; 0: not known, as after
    /// a restore): an advert with the same digest changes the load alone.
    #[serde(skip)]
    pub(crate) placement: u64,
    /// Changes with every advert applied (global counter).
    pub(crate) generation: u64,
    /// The `generation` when this entry was created: holds taken on an earlier
    /// incarnation of the node are not released on this one.
    pub(crate) incarnation: u64,
    /// Offers outstanding (not yet answered).
    pub(crate) outstanding: u16,
    /// Offers accepted since the advert of `generation`.
    pub(crate) assigned_since: u16,
    /// Declined or did not answer since its last advert: no more offers until the next.
    pub(crate) saturated: bool,
    pub(crate) reputation: u16,
    /// Buckets it belongs in when it has a free slot.
    pub(crate) mask: u32,
    /// Position in each bucket it is in now (rebuilt on restore).
    #[serde(skip)]
    pub(crate) pos: Vec<(u8, u32)>,
}

/// Equal as state: every field but `timer_at`, the lazy expiry timer's
/// bookkeeping (a restored scheduler arms it at the expiry, a running one
/// may hold it earlier; either forgets the node exactly at its expiry), and
/// `placement`, a shortcut's memo (a restored view learns it again with the
/// node's next advert).
impl PartialEq for NodeEntry {
    fn eq(&self, o: &Self) -> bool {
        let NodeEntry {
            id,
            profile,
            region,
            is_scheduler,
            seq,
            expires_at_ms,
            timer_at: _,
            placement: _,
            generation,
            incarnation,
            outstanding,
            assigned_since,
            saturated,
            reputation,
            mask,
            pos,
        } = self;
        *id == o.id
            && *profile == o.profile
            && *region == o.region
            && *is_scheduler == o.is_scheduler
            && *seq == o.seq
            && *expires_at_ms == o.expires_at_ms
            && *generation == o.generation
            && *incarnation == o.incarnation
            && *outstanding == o.outstanding
            && *assigned_since == o.assigned_since
            && *saturated == o.saturated
            && *reputation == o.reputation
            && *mask == o.mask
            && *pos == o.pos
    }
}

impl NodeEntry {
    /// Free slots as this scheduler sees them.
    pub(crate) fn free(&self) -> u16 {
        if self.saturated {
            return 0;
        }
        self.profile
            .advertised_free()
            .saturating_sub(self.outstanding)
            .saturating_sub(self.assigned_since)
    }
}

/// What applying an advert changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observed {
    /// The advert was applied (newer than what was held).
    pub(crate) applied: bool,
    /// The node's slot.
    pub(crate) slot: u32,
    /// The node's scheduler role before and after.
    pub(crate) was_scheduler: bool,
    pub(crate) is_scheduler: bool,
}

/// A hold this scheduler has on a node's slot, so it can be released on the
/// same incarnation only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Hold {
    /// Nothing counted (e.g. taken over from another scheduler).
    None,
    /// An offer outstanding.
    Offer {
        /// Node incarnation.
        inc: u64,
    },
    /// An accepted offer, counted until the node's next advert.
    Assigned {
        /// Node incarnation.
        inc: u64,
        /// Node `generation` when accepted.
        generation: u64,
    },
}

/// The capacity view.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub(crate) slots: Vec<Option<NodeEntry>>,
    pub(crate) free_list: Vec<u32>,
    /// Lookups only, never iterated (its order would not replay): a hash
    /// map, keyed by the standard library's randomly seeded SipHash, which
    /// hostile node ids cannot collide.
    pub(crate) by_id: HashMap<NodeId, u32>,
    pub(crate) buckets: Vec<Vec<u32>>,
    pub(crate) live: [u32; BUCKETS],
    pub(crate) schedulers: BTreeSet<NodeId>,
    pub(crate) regions: BTreeMap<String, u32>,
    pub(crate) region_names: Vec<String>,
    pub(crate) reputation: BTreeMap<NodeId, u16>,
    /// Probation as the driver set it (absent: the config's default).
    pub(crate) probation: BTreeMap<NodeId, bool>,
    /// Operator groups as the driver set them (absent or 0: unknown).
    pub(crate) operators: BTreeMap<NodeId, u64>,
    pub(crate) next_generation: u64,
    /// Tests: never take [`View::observe_same`]'s shortcut.
    #[cfg(test)]
    pub(crate) slow_only: bool,
}

impl View {
    pub(crate) fn new() -> View {
        View {
            buckets: vec![Vec::new(); BUCKETS],
            next_generation: 1,
            ..View::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn slot_of(&self, id: &NodeId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn entry(&self, slot: u32) -> Option<&NodeEntry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn entry_mut(&mut self, slot: u32) -> Option<&mut NodeEntry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub(crate) fn get(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.slot_of(id).and_then(|s| self.entry(s))
    }

    /// The region id of a node, or [`NO_REGION`].
    pub(crate) fn region_of(&self, id: &NodeId) -> u32 {
        self.get(id).map_or(NO_REGION, |e| e.region)
    }

    fn intern(&mut self, region: &str) -> u32 {
        if region.is_empty() {
            return NO_REGION;
        }
        if let Some(id) = self.regions.get(region) {
            return *id;
        }
        if self.region_names.len() >= MAX_REGIONS {
            return NO_REGION;
        }
        let id = self.region_names.len() as u32;
        self.region_names.push(region.to_owned());
        self.regions.insert(region.to_owned(), id);
        id
    }

    /// Applies a verified advert received at our clock, live until `expires_at_ms`.
    /// Returns `None` when the view is full and the node is new.
    pub(crate) fn observe(
        &mut self,
        advert: &CapacityAdvert,
        placement: u64,
        expires_at_ms: u64,
        max_nodes: usize,
    ) -> Option<Observed> {
        if let Some(obs) = self.observe_same(advert, placement, expires_at_ms) {
            return Some(obs);
        }
        let obs = self.observe_slow(advert, expires_at_ms, max_nodes)?;
        if obs.applied
            && let Some(e) = self.entry_mut(obs.slot)
        {
            e.placement = placement;
        }
        Some(obs)
    }

    /// [`View::observe`] without the shortcut: the profile rebuilt from the advert.
    fn observe_slow(
        &mut self,
        advert: &CapacityAdvert,
        expires_at_ms: u64,
        max_nodes: usize,
    ) -> Option<Observed> {
        let profile = Profile::of(advert);
        let is_scheduler = advert.roles.contains(&Role::Scheduler);
        let region = self.intern(&advert.region);
        let generation = self.next_generation;
        let slot = match self.by_id.get(&advert.node) {
            Some(slot) => *slot,
            None => {
                if self.by_id.len() >= max_nodes {
                    return None;
                }
                let entry = NodeEntry {
                    id: advert.node,
                    profile: profile.clone(),
                    region,
                    is_scheduler: false,
                    seq: advert.seq,
                    expires_at_ms,
                    timer_at: 0,
                    placement: 0,
                    generation,
                    incarnation: generation,
                    outstanding: 0,
                    assigned_since: 0,
                    saturated: false,
                    reputation: self
                        .reputation
                        .get(&advert.node)
                        .copied()
                        .unwrap_or(NEUTRAL_REPUTATION),
                    mask: 0,
                    pos: Vec::new(),
                };
                let slot = match self.free_list.pop() {
                    Some(s) => {
                        if let Some(cell) = self.slots.get_mut(s as usize) {
                            *cell = Some(entry);
                        }
                        s
                    }
                    None => {
                        self.slots.push(Some(entry));
                        (self.slots.len() - 1) as u32
                    }
                };
                self.by_id.insert(advert.node, slot);
                // A fresh entry: apply below as an update with seq check skipped.
                self.next_generation += 1;
                return Some(self.apply(
                    slot,
                    profile,
                    region,
                    is_scheduler,
                    advert.seq,
                    expires_at_ms,
                    generation,
                    true,
                ));
            }
        };
        let e = self.entry(slot)?;
        if advert.seq <= e.seq {
            return Some(Observed {
                applied: false,
                slot,
                was_scheduler: e.is_scheduler,
                is_scheduler: e.is_scheduler,
            });
        }
        self.next_generation += 1;
        Some(self.apply(
            slot,
            profile,
            region,
            is_scheduler,
            advert.seq,
            expires_at_ms,
            generation,
            false,
        ))
    }

    /// The advert of a known node whose content (profile, region, roles)
    /// equals what the view holds but for the advertised load
    /// (`running_tasks`: the periodic advert, or one sent as a task started
    /// or ended), as its placement digest says: what [`View::apply`] would
    /// do, without rebuilding the profile or touching the region, scheduler
    /// and bucket counts (none of them depends on the load), and without
    /// reading the advert's strings and vectors. `None` when the slow path
    /// must run.
    fn observe_same(
        &mut self,
        advert: &CapacityAdvert,
        placement: u64,
        expires_at_ms: u64,
    ) -> Option<Observed> {
        let slot = *self.by_id.get(&advert.node)?;
        let e = self.entry(slot)?;
        if advert.seq <= e.seq {
            return Some(Observed {
                applied: false,
                slot,
                was_scheduler: e.is_scheduler,
                is_scheduler: e.is_scheduler,
            });
        }
        if e.placement == 0 || e.placement != placement {
            return None;
        }
        let is_scheduler = e.is_scheduler;
        #[cfg(test)]
        if self.slow_only {
            return None;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let e = self.entry_mut(slot)?;
        e.profile.running_tasks = advert.running_tasks;
        e.seq = advert.seq;
        e.expires_at_ms = expires_at_ms;
        e.generation = generation;
        e.assigned_since = 0;
        e.saturated = false;
        self.sync(slot);
        Some(Observed {
            applied: true,
            slot,
            was_scheduler: is_scheduler,
            is_scheduler,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        slot: u32,
        profile: Profile,
        region: u32,
        is_scheduler: bool,
        seq: u64,
        expires_at_ms: u64,
        generation: u64,
        fresh: bool,
    ) -> Observed {
        let mask = bucket_mask(&profile);
        let mut was_scheduler = false;
        let mut old_mask = 0;
        let mut id = None;
        if let Some(e) = self.entry_mut(slot) {
            was_scheduler = e.is_scheduler;
            old_mask = if fresh { 0 } else { e.mask };
            e.profile = profile;
            e.region = region;
            e.is_scheduler = is_scheduler;
            e.seq = seq;
            e.expires_at_ms = expires_at_ms;
            e.generation = generation;
            e.assigned_since = 0;
            e.saturated = false;
            e.mask = mask;
            id = Some(e.id);
        }
        for b in 0..BUCKETS {
            if old_mask & (1 << b) != 0 {
                self.live[b] = self.live[b].saturating_sub(1);
            }
            if mask & (1 << b) != 0 {
                self.live[b] += 1;
            }
        }
        if let Some(id) = id {
            if is_scheduler {
                self.schedulers.insert(id);
            } else {
                self.schedulers.remove(&id);
            }
        }
        self.sync(slot);
        Observed {
            applied: true,
            slot,
            was_scheduler,
            is_scheduler,
        }
    }

    /// Removes a node; returns its entry.
    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<NodeEntry> {
        let slot = self.by_id.remove(id)?;
        let mut entry = self.slots.get_mut(slot as usize)?.take()?;
        for (b, i) in std::mem::take(&mut entry.pos) {
            self.bucket_remove(b as usize, i);
        }
        for b in 0..BUCKETS {
            if entry.mask & (1 << b) != 0 {
                self.live[b] = self.live[b].saturating_sub(1);
            }
        }
        self.schedulers.remove(id);
        self.free_list.push(slot);
        Some(entry)
    }

    /// Puts the node in (or takes it out of) the buckets its free slots call for.
    pub(crate) fn sync(&mut self, slot: u32) {
        let Some(e) = self.entry(slot) else {
            return;
        };
        let want = if e.free() > 0 { e.mask } else { 0 };
        let have = e.pos.iter().fold(0u32, |m, (b, _)| m | (1 << b));
        if want == have {
            return;
        }
        // Remove from buckets no longer wanted.
        let leaving: Vec<(u8, u32)> = e
            .pos
            .iter()
            .copied()
            .filter(|(b, _)| want & (1 << b) == 0)
            .collect();
        if let Some(e) = self.entry_mut(slot) {
            e.pos.retain(|(b, _)| want & (1 << b) != 0);
        }
        for (b, i) in leaving {
            self.bucket_remove(b as usize, i);
        }
        for b in 0..BUCKETS {
            if want & (1 << b) != 0 && have & (1 << b) == 0 {
                let Some(bucket) = self.buckets.get_mut(b) else {
                    continue;
                };
                bucket.push(slot);
                let i = (bucket.len() - 1) as u32;
                if let Some(e) = self.entry_mut(slot) {
                    e.pos.push((b as u8, i));
                }
            }
        }
    }

    fn bucket_remove(&mut self, b: usize, i: u32) {
        let Some(bucket) = self.buckets.get_mut(b) else {
            return;
        };
        if (i as usize) >= bucket.len() {
            return;
        }
        bucket.swap_remove(i as usize);
        if let Some(&moved) = bucket.get(i as usize)
            && let Some(e) = self.entry_mut(moved)
        {
            for p in e.pos.iter_mut() {
                if p.0 as usize == b {
                    p.1 = i;
                }
            }
        }
    }

    /// Counts an offer on a node.
    pub(crate) fn hold_offer(&mut self, slot: u32) -> Hold {
        let Some(e) = self.entry_mut(slot) else {
            return Hold::None;
        };
        e.outstanding = e.outstanding.saturating_add(1);
        let inc = e.incarnation;
        self.sync(slot);
        Hold::Offer { inc }
    }

    /// The offer was answered with an accept: counted as assigned until the next advert.
    pub(crate) fn offer_accepted(&mut self, id: &NodeId, hold: Hold) -> Hold {
        let Some(slot) = self.slot_of(id) else {
            return Hold::None;
        };
        let Some(e) = self.entry_mut(slot) else {
            return Hold::None;
        };
        if let Hold::Offer { inc } = hold
            && inc == e.incarnation
        {
            e.outstanding = e.outstanding.saturating_sub(1);
        }
        e.assigned_since = e.assigned_since.saturating_add(1);
        let out = Hold::Assigned {
            inc: e.incarnation,
            generation: e.generation,
        };
        self.sync(slot);
        out
    }

    /// Releases a hold (offer answered no, lapsed, task over).
    pub(crate) fn release(&mut self, id: &NodeId, hold: Hold) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        let Some(e) = self.entry_mut(slot) else {
            return;
        };
        match hold {
            Hold::None => return,
            Hold::Offer { inc } if inc == e.incarnation => {
                e.outstanding = e.outstanding.saturating_sub(1);
            }
            Hold::Assigned { inc, generation }
                if inc == e.incarnation && generation == e.generation =>
            {
                e.assigned_since = e.assigned_since.saturating_sub(1);
            }
            _ => return,
        }
        self.sync(slot);
    }

    /// No more offers to this node until its next advert.
    pub(crate) fn saturate(&mut self, id: &NodeId) {
        if let Some(slot) = self.slot_of(id) {
            if let Some(e) = self.entry_mut(slot) {
                e.saturated = true;
            }
            self.sync(slot);
        }
    }

    /// Whether `id` is on probation (`default` when never set).
    pub(crate) fn on_probation(&self, id: &NodeId, default: bool) -> bool {
        self.probation.get(id).copied().unwrap_or(default)
    }

    /// The operator group of `id` (0: unknown).
    pub(crate) fn operator_of(&self, id: &NodeId) -> u64 {
        self.operators.get(id).copied().unwrap_or(0)
    }

    pub(crate) fn set_reputation(&mut self, id: NodeId, permille: u16) {
        let permille = permille.min(1000);
        self.reputation.insert(id, permille);
        if let Some(slot) = self.slot_of(&id)
            && let Some(e) = self.entry_mut(slot)
        {
            e.reputation = permille;
        }
    }

    /// Rebuilds `by_id`, `pos`, `live` and `schedulers` from slots and buckets
    /// (after restore); `false` if they disagree.
    pub(crate) fn rebuild(&mut self) -> bool {
        self.by_id.clear();
        self.schedulers.clear();
        self.live = [0; BUCKETS];
        for (i, cell) in self.slots.iter_mut().enumerate() {
            if let Some(e) = cell {
                e.pos.clear();
                if self.by_id.insert(e.id, i as u32).is_some() {
                    return false;
                }
                if e.is_scheduler {
                    self.schedulers.insert(e.id);
                }
                for b in 0..BUCKETS {
                    if e.mask & (1 << b) != 0 {
                        self.live[b] += 1;
                    }
                }
            }
        }
        let free: BTreeSet<u32> = self.free_list.iter().copied().collect();
        if free.len() != self.free_list.len()
            || free.len() + self.by_id.len() != self.slots.len()
            || free
                .iter()
                .any(|s| self.slots.get(*s as usize).is_none_or(Option::is_some))
        {
            return false;
        }
        if self.buckets.len() != BUCKETS {
            return false;
        }
        for b in 0..BUCKETS {
            for i in 0..self.buckets[b].len() {
                let slot = self.buckets[b][i];
                let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                    return false;
                };
                if e.mask & (1 << b) == 0 || e.pos.iter().any(|(pb, _)| *pb as usize == b) {
                    return false;
                }
                e.pos.push((b as u8, i as u32));
            }
        }
        // Every node with a free slot is in all its buckets, and no other.
        self.slots.iter().flatten().all(|e| {
            let want = if e.free() > 0 { e.mask } else { 0 };
            e.pos.iter().fold(0u32, |m, (b, _)| m | (1 << b)) == want
        }) && self.regions.len() == self.region_names.len()
    }

    /// Checks the index against the entries (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        for (b, bucket) in self.buckets.iter().enumerate() {
            for (i, slot) in bucket.iter().enumerate() {
                let e = self
                    .entry(*slot)
                    .ok_or(format!("bucket {b} holds empty slot {slot}"))?;
                if !e.pos.contains(&(b as u8, i as u32)) {
                    return Err(format!("bucket {b}[{i}] = {slot}, pos {:?}", e.pos));
                }
            }
        }
        for e in self.slots.iter().flatten() {
            let want = if e.free() > 0 { e.mask } else { 0 };
            let have = e.pos.iter().fold(0u32, |m, (b, _)| m | (1 << b));
            if want != have {
                return Err(format!("node {:?}: buckets {have:b}, want {want:b}", e.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::samples;
    use proptest::prelude::*;

    proptest! {
        /// The shortcut for adverts that change nothing or only the load
        /// leaves the view exactly as the full update does: entries, bucket
        /// positions and counts, schedulers.
        #[test]
        fn prop_shortcut_agrees_with_the_full_update(
            steps in proptest::collection::vec(
                (0u8..3, 0u16..5, 0u8..8, any::<bool>()), 1..60),
        ) {
            let mut fast = View::new();
            let mut slow = View::new();
            slow.slow_only = true;
            let mut seq = [0u64; 3];
            for (i, (n, running, change, sched)) in steps.into_iter().enumerate() {
                let mut a = samples::capacity(NodeId::from_bytes([n + 1; 32]));
                seq[n as usize] += 1;
                a.seq = seq[n as usize];
                a.running_tasks = running;
                match change {
                    0 => a.max_tasks = 2,
                    1 => a.region = "us-east".into(),
                    2 => a.gpus.clear(),
                    // Not read by placement: the shortcut still applies.
                    3 => a.cpu_model = "another".into(),
                    _ => {}
                }
                if sched {
                    a.roles = vec![Role::Scheduler];
                }
                let at = 1_000 + i as u64;
                let d = crate::capacity::content_digest(&a).placement;
                let f = fast.observe(&a, d, at, 16);
                let s = slow.observe(&a, d, at, 16);
                prop_assert_eq!(f, s);
                // Offers and assignments counted in between, as the
                // scheduler does, must be reset alike.
                for v in [&mut fast, &mut slow] {
                    if let Some(e) = v.slots.get_mut(0).and_then(Option::as_mut) {
                        e.assigned_since += 1;
                    }
                    v.sync(0);
                }
                prop_assert!(fast.check().is_ok());
                prop_assert_eq!(&fast.slots, &slow.slots);
                prop_assert_eq!(&fast.buckets, &slow.buckets);
                prop_assert_eq!(fast.live, slow.live);
                prop_assert_eq!(&fast.schedulers, &slow.schedulers);
            }
        }
    }
}
