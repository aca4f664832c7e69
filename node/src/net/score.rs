//! Gossipsub peer scoring: the parameters and why they are what they are.
//!
//! Every RenderTrust peer (nodes and the bootstrap) scores its gossipsub peers
//! with these values; the gossipsub router applies them (this module only
//! chooses numbers). A peer's score is visible in `GET /v1/peers`.
//!
//! The threat we price is a peer that forwards adverts which fail the
//! protocol's checks ([`AdvertRejected::is_misbehaviour`]): honest peers
//! validate before forwarding, so only the originator of a bad frame (or a
//! peer that forwards without validating) is ever charged. Benign rejections
//! (stale duplicates, a full table, an advert too old) are `Ignore`d and cost
//! nothing.
//!
//! | parameter | value | why |
//! |---|---|---|
//! | topic weight (capacity, receipts, rollups, reputation) | 1.0 each | every topic a service validates; receipts and rollups carry the same parameters as capacity ([`ledger_topic_params`]), so a ledger event or rollup header a ledger peer rejects as misbehaviour (`LedgerRejected::is_misbehaviour`, a bad signature) costs its sender like an invalid advert; so does a reputation report that does not decode or verify ([`reputation_topic_params`]; stale, replayed or weightless reports are ignored) |
//! | P1 time in mesh | 0.0027 per s, cap 3600 s | about +10 after an hour in the mesh: steady peers are preferred when the mesh is pruned |
//! | P2 first deliveries | +1 each, cap 5, decays to zero over 10 min | credit for delivering fresh adverts first |
//! | P3/P3b mesh delivery rate | 0 (off) | adverts are sparse (one per node per interval): a delivery-rate quota would punish honest peers in a quiet mesh |
//! | P4 invalid messages | −20 × count², decays to zero over 10 min | one invalid advert sends a fresh peer to −20 (below the gossip threshold); two to −80 (publish threshold passed, at the graylist); three graylist it for about two minutes |
//! | topic score cap | 10 | positive credit is capped below one P4 penalty, so a long-lived peer cannot bank credit to hide an invalid advert |
//! | P5 application score | weight 1 | reserved for reputation; nothing sets it yet |
//! | P6 IP colocation | −5 × (peers on the IP − 10)², loopback exempt | Sybil pressure from one address; a devnet on one host is exempt |
//! | P7 behaviour penalty | −1 × (count − 6)², decays over 5 min | broken IHAVE/IWANT promises and re-grafts during backoff, with slack for lossy links |
//! | retain score | 1 h | a penalised peer cannot reset its score by reconnecting |
//!
//! Thresholds: gossip −10, publish −50, graylist −80 (messages from a
//! graylisted peer are dropped unread), accept PX 10 (PX is off), opportunistic
//! graft 1.
//!
//! # Request/response hygiene ([`super::guard`])
//!
//! Gossipsub scores only gossip. The request/response services are guarded
//! per peer by [`super::guard::PeerGuard`], in the event loop, before a
//! request reaches a service:
//!
//! | limit | value | why |
//! |---|---|---|
//! | rpc rate (token bucket per peer) | burst 200, 100/s | a scheduler offering a large job, or a creator's burst of key requests, stays far below; a flood does not |
//! | content rate | burst 2048, 1024/s | one request per 1 MiB chunk: 1 GiB/s per peer, about what a 10 Gb/s link carries; concurrency is bounded by the inbound cap below, so a flood still costs at most that many disk reads at once |
//! | ledger rate | burst 50, 20/s | reconciliation pages between ledger peers |
//! | inbound streams waiting for an answer, per peer (all services) | 64 | besides libp2p's 64 per connection and service: one peer cannot fill the services' queue (256) |
//! | over a limit | answered at once with the service's refusal (`Error{Busy}`, `Refused`), no service sees it | the peer learns to retry later; no work is done |
//! | penalty points | malformed request 10 (reported by the service that could not decode it), broken or oversized stream 20, refused request 1; 2 points drain per second | honest peers never send malformed bytes; an occasional burst over the rate costs nothing lasting |
//! | ban | at 100 points: 1 hour, persisted in the sled tree `bans` (survives a restart), lifted at expiry | the peer is disconnected and its connections refused (libp2p's block list, the first behaviour) |
//!
//! So ten malformed requests, five oversized streams, or a sustained excess
//! of more than 2 requests a second over the rate for about a minute ban a
//! peer. `GET /v1/peers` shows each peer's counters (`hygiene`: malformed,
//! oversized, throttled, points, banned until).
//!
//! [`AdvertRejected::is_misbehaviour`]: rendertrust_protocol::capacity::AdvertRejected::is_misbehaviour

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::gossipsub::{
    PeerScoreParams, PeerScoreThresholds, TopicScoreParams, score_parameter_decay,
};

use super::topic::Topic;

/// Penalty weight per invalid advert (squared count), see the module docs.
pub const INVALID_MESSAGE_WEIGHT: f64 = -20.0;

/// Cap on the positive score a peer earns from topics.
pub const TOPIC_SCORE_CAP: f64 = 10.0;

// One invalid advert must outweigh all the credit a peer can bank.
const _: () = assert!(TOPIC_SCORE_CAP + INVALID_MESSAGE_WEIGHT < 0.0);

/// Score parameters for the capacity topic.
pub fn capacity_topic_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        // P1: ~+10 after an hour in the mesh.
        time_in_mesh_weight: 0.0027,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 3600.0,
        // P2: credit for first deliveries, capped.
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: score_parameter_decay(Duration::from_secs(600)),
        first_message_deliveries_cap: 5.0,
        // P3/P3b off: adverts are too sparse for a delivery-rate quota.
        mesh_message_deliveries_weight: 0.0,
        mesh_message_deliveries_decay: 0.5,
        mesh_message_deliveries_cap: 100.0,
        mesh_message_deliveries_threshold: 1.0,
        mesh_message_deliveries_window: Duration::from_millis(10),
        mesh_message_deliveries_activation: Duration::from_secs(5),
        mesh_failure_penalty_weight: 0.0,
        mesh_failure_penalty_decay: 0.5,
        // P4: rejected adverts.
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: score_parameter_decay(Duration::from_secs(600)),
    }
}

/// Score parameters for the ledger topics (`receipts`, `rollups`): those of
/// the capacity topic. Ledger peers validate every event on its own merits
/// before forwarding it, so an honest forwarder is never charged; the
/// originator of a rejected event is.
pub fn ledger_topic_params() -> TopicScoreParams {
    capacity_topic_params()
}

/// Score parameters for the reputation topic: those of the capacity topic.
/// A report that does not decode or whose signature fails is rejected
/// (P4); a stale, replayed or weightless one is ignored and costs nothing,
/// since honest peers forward reports the receiver may merely know already.
pub fn reputation_topic_params() -> TopicScoreParams {
    capacity_topic_params()
}

/// Peer score parameters (all topics).
pub fn peer_score_params() -> PeerScoreParams {
    let mut topics = HashMap::new();
    topics.insert(Topic::Capacity.hash(), capacity_topic_params());
    topics.insert(Topic::Receipts.hash(), ledger_topic_params());
    topics.insert(Topic::Rollups.hash(), ledger_topic_params());
    topics.insert(Topic::Reputation.hash(), reputation_topic_params());
    PeerScoreParams {
        topics,
        topic_score_cap: TOPIC_SCORE_CAP,
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: -5.0,
        ip_colocation_factor_threshold: 10.0,
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        behaviour_penalty_weight: -1.0,
        behaviour_penalty_threshold: 6.0,
        behaviour_penalty_decay: score_parameter_decay(Duration::from_secs(300)),
        decay_interval: Duration::from_secs(1),
        decay_to_zero: 0.1,
        retain_score: Duration::from_secs(3600),
        ..PeerScoreParams::default()
    }
}

/// Peer score thresholds.
pub fn peer_score_thresholds() -> PeerScoreThresholds {
    PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_valid() {
        peer_score_params().validate().unwrap();
        peer_score_thresholds().validate().unwrap();
        capacity_topic_params().validate().unwrap();
        ledger_topic_params().validate().unwrap();
        reputation_topic_params().validate().unwrap();
        let params = peer_score_params();
        for t in Topic::ALL {
            assert!(params.topics.contains_key(&t.hash()), "{t} is not scored");
        }
    }

    #[test]
    fn one_invalid_advert_sends_a_fresh_peer_below_the_gossip_threshold() {
        assert!(INVALID_MESSAGE_WEIGHT < peer_score_thresholds().gossip_threshold);
    }
}
