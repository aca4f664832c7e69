//! Request hygiene per peer: rate limits, a stream cap, misbehaviour counts
//! and bans (the numbers and why are in [`super::score`]'s module docs).
//!
//! [`PeerGuard`] is a small machine the event loop consults before an
//! inbound request reaches a service ([`PeerGuard::admit`]), and tells about
//! misbehaviour ([`PeerGuard::offence`]): malformed requests (reported by the
//! services, which alone can decode them), oversized or broken streams
//! (reported by the request-response codec), and requests refused for rate
//! or streams. Each offence adds penalty points that drain with time; a peer
//! whose points reach the ban threshold is banned until an expiry: the event
//! loop disconnects it and refuses its connections (the swarm's block list).
//! Bans are written to a sled tree and read back at start, so they survive a
//! restart; an expired ban is lifted by [`PeerGuard::expire`].
//!
//! Time comes in as Unix ms; amounts are integers (milli-tokens, points).

use std::collections::{BTreeMap, HashMap};

use libp2p::PeerId;
use serde::Serialize;

use super::reqres::Service;

/// One service's token bucket: `burst` requests at once, `per_sec` sustained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Bucket size, requests.
    pub burst: u64,
    /// Refill, requests per second.
    pub per_sec: u64,
}

/// Settings of the guard. The defaults are documented in [`super::score`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Rate of `/rendertrust/rpc/1` requests per peer.
    pub rpc: Rate,
    /// Rate of `/rendertrust/content/1` requests per peer.
    pub content: Rate,
    /// Rate of `/rendertrust/ledger/1` requests per peer.
    pub ledger: Rate,
    /// Inbound requests of one peer waiting for our answer, at most (all services).
    pub max_inbound_streams: usize,
    /// Points of a malformed request.
    pub malformed_points: u64,
    /// Points of an oversized or broken inbound stream.
    pub oversized_points: u64,
    /// Points of a request refused for rate or streams.
    pub throttled_points: u64,
    /// Points drained per second.
    pub drain_per_sec: u64,
    /// Points at which a peer is banned.
    pub ban_points: u64,
    /// How long a ban lasts.
    pub ban_ms: u64,
    /// Peers tracked at most (the idlest are forgotten first; bans are kept apart).
    pub max_peers: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            rpc: Rate {
                burst: 200,
                per_sec: 100,
            },
            content: Rate {
                burst: 2048,
                per_sec: 1024,
            },
            ledger: Rate {
                burst: 50,
                per_sec: 20,
            },
            max_inbound_streams: 64,
            malformed_points: 10,
            oversized_points: 20,
            throttled_points: 1,
            drain_per_sec: 2,
            ban_points: 100,
            ban_ms: 3_600_000,
            max_peers: 10_000,
        }
    }
}

/// What the guard says of an inbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Hand it to the service.
    Admit,
    /// Over the peer's rate for the service: answer with a refusal.
    Throttled,
    /// Too many of the peer's requests are waiting for answers: refuse.
    TooManyStreams,
    /// The peer is banned: drop it.
    Banned,
}

/// Misbehaviour the guard counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// A request that does not decode (reported by a service).
    Malformed,
    /// An inbound stream over the size bound, truncated, or otherwise broken.
    Oversized,
    /// A request refused for rate or streams.
    Throttled,
}

/// Per-peer counters, as `GET /v1/peers` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PeerCounters {
    /// Malformed requests.
    pub malformed: u64,
    /// Oversized or broken inbound streams.
    pub oversized: u64,
    /// Requests refused for rate or streams.
    pub throttled: u64,
    /// Penalty points now.
    pub points: u64,
    /// Banned until (Unix ms), if banned.
    pub banned_until_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Bucket {
    milli_tokens: u64,
    at_ms: u64,
}

#[derive(Debug, Clone)]
struct PeerRecord {
    buckets: [Bucket; 3],
    in_flight: usize,
    malformed: u64,
    oversized: u64,
    throttled: u64,
    milli_points: u64,
    points_at_ms: u64,
    last_ms: u64,
}

fn index(service: Service) -> usize {
    match service {
        Service::Rpc => 0,
        Service::Content => 1,
        Service::Ledger => 2,
    }
}

/// The guard (see the module docs).
#[derive(Debug)]
pub struct PeerGuard {
    config: GuardConfig,
    peers: HashMap<PeerId, PeerRecord>,
    bans: BTreeMap<PeerId, u64>,
    tree: Option<sled::Tree>,
}

impl PeerGuard {
    /// A guard; bans are read from and written to `tree` (expired ones dropped).
    pub fn new(config: GuardConfig, tree: Option<sled::Tree>, now_ms: u64) -> PeerGuard {
        let mut bans = BTreeMap::new();
        if let Some(t) = &tree {
            for (k, v) in t.iter().flatten() {
                let until = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes);
                match (PeerId::from_bytes(&k), until) {
                    (Ok(peer), Ok(until)) if until > now_ms => {
                        bans.insert(peer, until);
                    }
                    _ => {
                        let _ = t.remove(&k);
                    }
                }
            }
        }
        PeerGuard {
            config,
            peers: HashMap::new(),
            bans,
            tree,
        }
    }

    /// Settings.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    fn rate(&self, service: Service) -> Rate {
        match service {
            Service::Rpc => self.config.rpc,
            Service::Content => self.config.content,
            Service::Ledger => self.config.ledger,
        }
    }

    fn record(&mut self, peer: PeerId, now_ms: u64) -> &mut PeerRecord {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            // Forget the idlest peer without requests in flight.
            if let Some(idle) = self
                .peers
                .iter()
                .filter(|(_, r)| r.in_flight == 0)
                .min_by_key(|(_, r)| r.last_ms)
                .map(|(p, _)| *p)
            {
                self.peers.remove(&idle);
            }
        }
        let full = |rate: Rate| Bucket {
            milli_tokens: rate.burst.saturating_mul(1000),
            at_ms: now_ms,
        };
        let (a, b, c) = (self.config.rpc, self.config.content, self.config.ledger);
        let r = self.peers.entry(peer).or_insert_with(|| PeerRecord {
            buckets: [full(a), full(b), full(c)],
            in_flight: 0,
            malformed: 0,
            oversized: 0,
            throttled: 0,
            milli_points: 0,
            points_at_ms: now_ms,
            last_ms: now_ms,
        });
        r.last_ms = now_ms;
        r
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.bans.get(peer).is_some_and(|until| *until > now_ms)
    }

    /// Peers banned now, with their expiry.
    pub fn bans(&self) -> impl Iterator<Item = (&PeerId, &u64)> {
        self.bans.iter()
    }

    /// An inbound request of `peer` on `service`: admit it (taking a token
    /// and a stream slot, released by [`PeerGuard::answered`]) or say why not.
    pub fn admit(&mut self, peer: PeerId, service: Service, now_ms: u64) -> Admission {
        if self.is_banned(&peer, now_ms) {
            return Admission::Banned;
        }
        let rate = self.rate(service);
        let max_streams = self.config.max_inbound_streams;
        let r = self.record(peer, now_ms);
        let b = &mut r.buckets[index(service)];
        let elapsed = now_ms.saturating_sub(b.at_ms);
        b.milli_tokens = b
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(rate.per_sec))
            .min(rate.burst.saturating_mul(1000));
        b.at_ms = now_ms.max(b.at_ms);
        if r.in_flight >= max_streams {
            return Admission::TooManyStreams;
        }
        if b.milli_tokens < 1000 {
            return Admission::Throttled;
        }
        b.milli_tokens -= 1000;
        r.in_flight += 1;
        Admission::Admit
    }

    /// An admitted request of `peer` was answered (or dropped).
    pub fn answered(&mut self, peer: &PeerId) {
        if let Some(r) = self.peers.get_mut(peer) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
    }

    /// Counts an offence; returns the ban expiry when it bans the peer now.
    pub fn offence(&mut self, peer: PeerId, offence: Offence, now_ms: u64) -> Option<u64> {
        let c = self.config.clone();
        let banned = self.is_banned(&peer, now_ms);
        let r = self.record(peer, now_ms);
        let points = match offence {
            Offence::Malformed => {
                r.malformed += 1;
                c.malformed_points
            }
            Offence::Oversized => {
                r.oversized += 1;
                c.oversized_points
            }
            Offence::Throttled => {
                r.throttled += 1;
                c.throttled_points
            }
        };
        let drained = now_ms
            .saturating_sub(r.points_at_ms)
            .saturating_mul(c.drain_per_sec);
        r.milli_points = r
            .milli_points
            .saturating_sub(drained)
            .saturating_add(points.saturating_mul(1000));
        r.points_at_ms = now_ms.max(r.points_at_ms);
        if r.milli_points < c.ban_points.saturating_mul(1000) || banned {
            return None;
        }
        r.milli_points = 0;
        let until = now_ms.saturating_add(c.ban_ms);
        self.ban(peer, until);
        Some(until)
    }

    /// Bans `peer` until `until_ms` (persisted).
    pub fn ban(&mut self, peer: PeerId, until_ms: u64) {
        self.bans.insert(peer, until_ms);
        if let Some(t) = &self.tree {
            if let Err(e) = t.insert(peer.to_bytes(), &until_ms.to_be_bytes()) {
                tracing::warn!(%peer, error = %e, "writing a ban");
            }
            let _ = t.flush();
        }
    }

    /// Lifts expired bans; returns the peers unbanned.
    pub fn expire(&mut self, now_ms: u64) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, until)| **until <= now_ms)
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            self.bans.remove(p);
            if let Some(t) = &self.tree {
                let _ = t.remove(p.to_bytes());
            }
        }
        gone
    }

    /// The counters of `peer`.
    pub fn counters(&self, peer: &PeerId, now_ms: u64) -> PeerCounters {
        let banned_until_ms = self.bans.get(peer).copied().filter(|u| *u > now_ms);
        match self.peers.get(peer) {
            None => PeerCounters {
                banned_until_ms,
                ..PeerCounters::default()
            },
            Some(r) => PeerCounters {
                malformed: r.malformed,
                oversized: r.oversized,
                throttled: r.throttled,
                points: r
                    .milli_points
                    .saturating_sub(
                        now_ms
                            .saturating_sub(r.points_at_ms)
                            .saturating_mul(self.config.drain_per_sec),
                    )
                    .div_ceil(1000),
                banned_until_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GuardConfig {
        GuardConfig {
            rpc: Rate {
                burst: 3,
                per_sec: 1,
            },
            max_inbound_streams: 2,
            ban_points: 10,
            ban_ms: 1_000,
            ..GuardConfig::default()
        }
    }

    #[test]
    fn a_bucket_limits_bursts_and_refills() {
        let mut g = PeerGuard::new(small(), None, 0);
        let (a, b) = (PeerId::random(), PeerId::random());
        for _ in 0..2 {
            assert_eq!(g.admit(a, Service::Rpc, 0), Admission::Admit);
            g.answered(&a);
        }
        assert_eq!(g.admit(a, Service::Rpc, 0), Admission::Admit);
        g.answered(&a);
        assert_eq!(g.admit(a, Service::Rpc, 0), Admission::Throttled);
        // Another peer and another service have their own buckets.
        assert_eq!(g.admit(b, Service::Rpc, 0), Admission::Admit);
        assert_eq!(g.admit(a, Service::Content, 0), Admission::Admit);
        g.answered(&a);
        // One token a second.
        assert_eq!(g.admit(a, Service::Rpc, 999), Admission::Throttled);
        assert_eq!(g.admit(a, Service::Rpc, 1_000), Admission::Admit);
    }

    #[test]
    fn streams_are_capped_per_peer() {
        let mut g = PeerGuard::new(small(), None, 0);
        let a = PeerId::random();
        assert_eq!(g.admit(a, Service::Rpc, 0), Admission::Admit);
        assert_eq!(g.admit(a, Service::Content, 0), Admission::Admit);
        assert_eq!(g.admit(a, Service::Ledger, 0), Admission::TooManyStreams);
        g.answered(&a);
        assert_eq!(g.admit(a, Service::Ledger, 0), Admission::Admit);
    }

    #[test]
    fn offences_drain_ban_and_bans_persist_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("bans").unwrap();
        let mut g = PeerGuard::new(small(), Some(tree.clone()), 0);
        let a = PeerId::random();
        // 10 points ban; they drain at 2 a second.
        assert_eq!(g.offence(a, Offence::Throttled, 0), None);
        assert_eq!(g.offence(a, Offence::Throttled, 0), None);
        assert_eq!(g.counters(&a, 0).points, 2);
        assert_eq!(g.counters(&a, 1_000).points, 0);
        assert_eq!(g.offence(a, Offence::Malformed, 5_000), Some(6_000));
        assert!(g.is_banned(&a, 5_999));
        assert_eq!(g.admit(a, Service::Rpc, 5_500), Admission::Banned);
        let c = g.counters(&a, 5_500);
        assert_eq!((c.malformed, c.throttled), (1, 2));
        assert_eq!(c.banned_until_ms, Some(6_000));

        // A restart reads the ban back and lifts it at its expiry.
        drop(g);
        let mut g = PeerGuard::new(small(), Some(tree.clone()), 5_500);
        assert!(g.is_banned(&a, 5_500));
        assert_eq!(g.expire(5_999), Vec::<PeerId>::new());
        assert_eq!(g.expire(6_000), vec![a]);
        assert!(tree.is_empty());
        assert_eq!(g.admit(a, Service::Rpc, 6_000), Admission::Admit);
        // A ban that expired while the node was down is dropped at start.
        g.ban(a, 7_000);
        assert!(
            PeerGuard::new(small(), Some(tree.clone()), 7_000)
                .bans()
                .next()
                .is_none()
        );
        assert!(tree.is_empty());
    }
}
