//! Gossipsub topics: typed, with versioned names.
//!
//! A topic's name carries the version of the messages on it
//! (`rendertrust/<name>/<version>`): a change of message format gets a new
//! topic, so old and new peers never feed each other frames they cannot read.
//! Every node subscribes to [`Topic::Capacity`] (validated in the event loop
//! by the capacity table). The others are subscribed by the services that
//! validate them (ledger peers; schedulers and ledger peers for reputation), through `NetHandle::subscribe`; anyone may
//! publish on them.

use libp2p::gossipsub::{IdentTopic, TopicHash};

/// A gossipsub topic of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Topic {
    /// Signed [`CapacityAdvert`](rendertrust_protocol::wire::CapacityAdvert)s.
    Capacity,
    /// Ledger events: escrows, refunds, doubly signed receipts.
    Receipts,
    /// Signed rollup headers.
    Rollups,
    /// Signed reputation reports (schedulers and ledger peers).
    Reputation,
}

impl Topic {
    /// Every topic, in a fixed order.
    pub const ALL: [Topic; 4] = [
        Topic::Capacity,
        Topic::Receipts,
        Topic::Rollups,
        Topic::Reputation,
    ];

    /// The topics every peer subscribes to at start.
    pub const LIVE: [Topic; 1] = [Topic::Capacity];

    /// The topic's name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            // 2: `CapacityAdvert` version 2 (`refresh_ms`).
            Topic::Capacity => "rendertrust/capacity/2",
            Topic::Receipts => "rendertrust/receipts/1",
            Topic::Rollups => "rendertrust/rollups/1",
            Topic::Reputation => "rendertrust/reputation/1",
        }
    }

    /// The gossipsub topic (names are sent as they are, not hashed).
    pub fn ident(self) -> IdentTopic {
        IdentTopic::new(self.name())
    }

    /// The gossipsub topic hash.
    pub fn hash(self) -> TopicHash {
        self.ident().hash()
    }

    /// The topic with this hash, if it is one of ours.
    pub fn from_hash(hash: &TopicHash) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == hash.as_str())
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_hashes() {
        for t in Topic::ALL {
            assert_eq!(Topic::from_hash(&t.hash()), Some(t));
            assert!(t.name().starts_with("rendertrust/"));
            // The version suffix is the version of the messages on the topic.
            let want = match t {
                Topic::Capacity => format!(
                    "/{}",
                    <rendertrust_protocol::wire::CapacityAdvert as rendertrust_protocol::wire::WireMessage>::VERSION
                ),
                _ => "/1".to_owned(),
            };
            assert!(t.name().ends_with(&want), "{t}");
        }
        assert_eq!(Topic::from_hash(&TopicHash::from_raw("other")), None);
    }
}
