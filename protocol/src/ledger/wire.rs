//! The ledger's wire messages: the [`LedgerEvent`] envelope carried on the
//! `receipts` gossip topic, and the rollup reconciliation request/response
//! pair ([`RollupRequest`], [`RollupResponse`]).
//!
//! None of these is signed as a whole: each carries [`Signed`] frames that
//! prove what it claims to a third peer (the envelope only groups them). The
//! signed kinds they add, [`TaskClosed`] and [`Mint`], live in
//! [`crate::wire`] beside the other signed messages.
//!
//! Layout of every type here: `version (1) | bincode body` through
//! [`crate::codec`], version [`EVENT_VERSION`] / [`RPC_VERSION`]. Decoding is
//! bounded *per variant*: the variant tag (the first body byte) is read
//! before anything else and the input is refused if it is longer than that
//! variant can be (a refund cannot smuggle 64 KiB). Each inner frame is then
//! checked by [`Signed::from_bytes`] against its own kind's limit. No
//! signature is checked here; that is the ledger machine's first step.
//!
//! This module owns encodings and their bounds only; what the events mean is
//! decided in [`crate::ledger`] and [`crate::rollup`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, CodecError};
use crate::signed::{MessageId, Signed, SignedError};
use crate::wire::{JobSpec, Mint, Receipt, ReceiptAcceptance, TaskAccept, TaskClosed, TaskOffer};

/// Version byte of an encoded [`LedgerEvent`].
pub const EVENT_VERSION: u8 = 1;
/// Version byte of an encoded [`RollupRequest`] or [`RollupResponse`].
pub const RPC_VERSION: u8 = 1;

/// Slack for the envelope around frames: a variant tag and up to three
/// length prefixes (each at most 9 bytes).
const ENVELOPE_SLACK: usize = 1 + 3 * 9;

/// Largest encoded [`LedgerEvent::Escrow`] (version byte included).
pub const MAX_ESCROW_EVENT: usize = 1
    + ENVELOPE_SLACK
    + Signed::<JobSpec>::MAX_FRAME
    + Signed::<TaskOffer>::MAX_FRAME
    + Signed::<TaskAccept>::MAX_FRAME;
/// Largest encoded [`LedgerEvent::Refund`].
pub const MAX_REFUND_EVENT: usize = 1 + ENVELOPE_SLACK + Signed::<TaskClosed>::MAX_FRAME;
/// Largest encoded [`LedgerEvent::Settle`].
pub const MAX_SETTLE_EVENT: usize =
    1 + ENVELOPE_SLACK + Signed::<Receipt>::MAX_FRAME + Signed::<ReceiptAcceptance>::MAX_FRAME;
/// Largest encoded [`LedgerEvent::Mint`].
pub const MAX_MINT_EVENT: usize = 1 + ENVELOPE_SLACK + Signed::<Mint>::MAX_FRAME;
/// Largest encoded ledger event of any variant.
pub const MAX_EVENT: usize = MAX_ESCROW_EVENT;

/// Most receipt ids in one [`RollupResponse::Ids`] page.
pub const MAX_IDS_PAGE: usize = 4096;
/// Most receipt ids asked for in one [`RollupRequest::Receipts`].
pub const MAX_FETCH_IDS: usize = 256;
/// Largest encoded [`RollupResponse`] (the events of a `Receipts` answer are
/// packed up to this size; the asker re-asks for what did not fit).
pub const MAX_RESPONSE: usize = 4 << 20;
/// Largest encoded [`RollupRequest`].
pub const MAX_REQUEST: usize = 1 + 1 + 9 + MAX_FETCH_IDS * 32 + 16;
/// Longest reason text in [`RollupResponse::Refused`].
pub const MAX_REASON: usize = 256;

/// Why ledger bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerWireError {
    /// The input is empty or has no variant tag.
    #[error("{what}: truncated, {found} bytes")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes found.
        found: usize,
    },
    /// Unknown version byte.
    #[error("{what}: unknown version {found}, this build speaks {expected}")]
    UnknownVersion {
        /// What was being decoded.
        what: &'static str,
        /// Supported version.
        expected: u8,
        /// Version found.
        found: u8,
    },
    /// Unknown variant tag.
    #[error("{what}: unknown variant tag {found}")]
    UnknownVariant {
        /// What was being decoded.
        what: &'static str,
        /// The tag byte.
        found: u8,
    },
    /// Longer than the variant allows (checked before decoding).
    #[error("{what}: at most {limit} bytes allowed, found {found}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// The variant's limit.
        limit: usize,
        /// Bytes found.
        found: usize,
    },
    /// The body does not decode (bounded, canonical).
    #[error("{what}: {source}")]
    Codec {
        /// What was being decoded.
        what: &'static str,
        /// Cause.
        source: CodecError,
    },
    /// An inner signed frame is malformed (size, domain, kind, version).
    #[error("{what}: frame {frame}: {source}")]
    Frame {
        /// What was being decoded.
        what: &'static str,
        /// Which frame.
        frame: &'static str,
        /// Cause.
        source: SignedError,
    },
    /// A list is longer than allowed.
    #[error("{what}: at most {max} {field} allowed, found {found}")]
    TooMany {
        /// What was being decoded.
        what: &'static str,
        /// The list.
        field: &'static str,
        /// Allowed maximum.
        max: usize,
        /// Found.
        found: usize,
    },
}

/// One input of the ledger machine, as published on the `receipts` topic:
/// a bundle of signed frames that the ledger checks completely before any
/// state changes (see [`crate::ledger`] for what each does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// Published by the scheduler when a worker accepts: escrow
    /// `offer.price` from the spec's creator for (task, attempt).
    Escrow {
        /// The creator-signed job.
        spec: Signed<JobSpec>,
        /// The scheduler-signed offer.
        offer: Signed<TaskOffer>,
        /// The worker-signed acceptance of the offer.
        accept: Signed<TaskAccept>,
    },
    /// Published by the scheduler when an attempt fails, is cancelled or
    /// lapses: refund that attempt's escrow.
    Refund {
        /// The scheduler-signed closure.
        closed: Signed<TaskClosed>,
    },
    /// Published by the creator when it accepts a result: pay the worker.
    Settle {
        /// The worker-signed receipt.
        receipt: Signed<Receipt>,
        /// The creator's countersignature.
        acceptance: Signed<ReceiptAcceptance>,
    },
    /// New credits from the mint authority.
    Mint {
        /// The authority-signed grant.
        mint: Signed<Mint>,
    },
}

/// Frame bytes. Encoded exactly as bincode encodes a `Vec<u8>` (varint
/// length, then the bytes), but copied in bulk rather than byte by byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("frame bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        deserializer.deserialize_byte_buf(Visit)
    }
}

fn bytes<T: crate::wire::WireMessage>(s: &Signed<T>) -> Bytes {
    Bytes(s.as_bytes().to_vec())
}

/// The wire form: raw frames, typed after the per-variant size check.
#[derive(Serialize, Deserialize)]
enum EventWire {
    Escrow {
        spec: Bytes,
        offer: Bytes,
        accept: Bytes,
    },
    Refund {
        closed: Bytes,
    },
    Settle {
        receipt: Bytes,
        acceptance: Bytes,
    },
    Mint {
        mint: Bytes,
    },
}

fn frame<T: crate::wire::WireMessage>(
    what: &'static str,
    name: &'static str,
    bytes: Bytes,
) -> Result<Signed<T>, LedgerWireError> {
    Signed::from_bytes(bytes.0).map_err(|source| LedgerWireError::Frame {
        what,
        frame: name,
        source,
    })
}

/// Splits `version | tag | …`, checking version and the tag's size limit.
fn check_header(
    what: &'static str,
    bytes: &[u8],
    version: u8,
    limit_of: impl Fn(u8) -> Option<usize>,
) -> Result<(), LedgerWireError> {
    let (&found_version, body) = bytes.split_first().ok_or(LedgerWireError::Truncated {
        what,
        found: bytes.len(),
    })?;
    if found_version != version {
        return Err(LedgerWireError::UnknownVersion {
            what,
            expected: version,
            found: found_version,
        });
    }
    let &tag = body.first().ok_or(LedgerWireError::Truncated {
        what,
        found: bytes.len(),
    })?;
    let limit = limit_of(tag).ok_or(LedgerWireError::UnknownVariant { what, found: tag })?;
    if bytes.len() > limit {
        return Err(LedgerWireError::TooLarge {
            what,
            limit,
            found: bytes.len(),
        });
    }
    Ok(())
}

impl LedgerEvent {
    /// Encodes the event: version byte, then the bincode body.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let wire = match self {
            LedgerEvent::Escrow {
                spec,
                offer,
                accept,
            } => EventWire::Escrow {
                spec: bytes(spec),
                offer: bytes(offer),
                accept: bytes(accept),
            },
            LedgerEvent::Refund { closed } => EventWire::Refund {
                closed: bytes(closed),
            },
            LedgerEvent::Settle {
                receipt,
                acceptance,
            } => EventWire::Settle {
                receipt: bytes(receipt),
                acceptance: bytes(acceptance),
            },
            LedgerEvent::Mint { mint } => EventWire::Mint { mint: bytes(mint) },
        };
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.push(EVENT_VERSION);
        codec::encode_into(&wire, &mut out)?;
        Ok(out)
    }

    fn encoded_len_hint(&self) -> usize {
        ENVELOPE_SLACK
            + match self {
                LedgerEvent::Escrow {
                    spec,
                    offer,
                    accept,
                } => spec.as_bytes().len() + offer.as_bytes().len() + accept.as_bytes().len(),
                LedgerEvent::Refund { closed } => closed.as_bytes().len(),
                LedgerEvent::Settle {
                    receipt,
                    acceptance,
                } => receipt.as_bytes().len() + acceptance.as_bytes().len(),
                LedgerEvent::Mint { mint } => mint.as_bytes().len(),
            }
    }

    /// The size limit of the variant with bincode tag `tag`.
    fn limit_of(tag: u8) -> Option<usize> {
        match tag {
            0 => Some(MAX_ESCROW_EVENT),
            1 => Some(MAX_REFUND_EVENT),
            2 => Some(MAX_SETTLE_EVENT),
            3 => Some(MAX_MINT_EVENT),
            _ => None,
        }
    }

    /// Decodes an event from a peer: version, the variant's size limit
    /// (before decoding), canonical bounded body, then each frame's own
    /// size, domain, kind and version. Signatures are not checked.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerWireError> {
        const WHAT: &str = "ledger event";
        check_header(WHAT, bytes, EVENT_VERSION, Self::limit_of)?;
        let wire: EventWire = codec::decode(&bytes[1..], MAX_EVENT)
            .map_err(|source| LedgerWireError::Codec { what: WHAT, source })?;
        Ok(match wire {
            EventWire::Escrow {
                spec,
                offer,
                accept,
            } => LedgerEvent::Escrow {
                spec: frame(WHAT, "spec", spec)?,
                offer: frame(WHAT, "offer", offer)?,
                accept: frame(WHAT, "accept", accept)?,
            },
            EventWire::Refund { closed } => LedgerEvent::Refund {
                closed: frame(WHAT, "closed", closed)?,
            },
            EventWire::Settle {
                receipt,
                acceptance,
            } => LedgerEvent::Settle {
                receipt: frame(WHAT, "receipt", receipt)?,
                acceptance: frame(WHAT, "acceptance", acceptance)?,
            },
            EventWire::Mint { mint } => LedgerEvent::Mint {
                mint: frame(WHAT, "mint", mint)?,
            },
        })
    }

    /// The event's id, by which ledgers deduplicate and index it:
    /// escrow: [`escrow_id`] of its three frames; refund: the
    /// `TaskClosed` message id; settle: the receipt id (a settle carrying a
    /// second acceptance of a known receipt has the same id); mint: the
    /// `Mint` message id.
    pub fn id(&self) -> MessageId {
        match self {
            LedgerEvent::Escrow {
                spec,
                offer,
                accept,
            } => escrow_id(&spec.id(), &offer.id(), &accept.id()),
            LedgerEvent::Refund { closed } => closed.id(),
            LedgerEvent::Settle { receipt, .. } => receipt.id(),
            LedgerEvent::Mint { mint } => mint.id(),
        }
    }

    /// The variant's name, for logs and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            LedgerEvent::Escrow { .. } => "escrow",
            LedgerEvent::Refund { .. } => "refund",
            LedgerEvent::Settle { .. } => "settle",
            LedgerEvent::Mint { .. } => "mint",
        }
    }
}

/// The id of an escrow: BLAKE3 `derive_key("rendertrust 2026-11 escrow id v1")`
/// over the message ids of its spec, offer and accept. Any difference in any
/// of the three makes another escrow (see [`crate::ledger`] on conflicts).
pub fn escrow_id(spec: &MessageId, offer: &MessageId, accept: &MessageId) -> MessageId {
    let mut h = blake3::Hasher::new_derive_key("rendertrust 2026-11 escrow id v1");
    h.update(&spec.0);
    h.update(&offer.0);
    h.update(&accept.0);
    MessageId(*h.finalize().as_bytes())
}

/// A ledger peer's request to another during reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RollupRequest {
    /// The receipt ids the peer holds for `epoch`, ascending, after `after`.
    Ids {
        /// The epoch.
        epoch: u64,
        /// Start after this id (exclusive); `None` for the first page.
        after: Option<MessageId>,
    },
    /// The settle events (and the escrow events they matched) of these
    /// receipts; at most [`MAX_FETCH_IDS`].
    Receipts {
        /// Receipt ids.
        ids: Vec<MessageId>,
    },
}

/// The answer to a [`RollupRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollupResponse {
    /// A page of receipt ids, ascending, at most [`MAX_IDS_PAGE`].
    Ids {
        /// The epoch.
        epoch: u64,
        /// The ids.
        ids: Vec<MessageId>,
        /// Whether more ids follow the last one.
        more: bool,
    },
    /// Ledger events, each checked like any event from a peer.
    Receipts {
        /// The events (settles, and the escrows they matched).
        events: Vec<LedgerEvent>,
    },
    /// The peer will not answer (with why).
    Refused {
        /// Why.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
enum ResponseWire {
    Ids {
        epoch: u64,
        ids: Vec<MessageId>,
        more: bool,
    },
    Receipts {
        events: Vec<Bytes>,
    },
    Refused {
        reason: String,
    },
}

impl RollupRequest {
    fn limit_of(tag: u8) -> Option<usize> {
        match tag {
            0 => Some(1 + 1 + 10 + 1 + 32),
            1 => Some(MAX_REQUEST),
            _ => None,
        }
    }

    /// Encodes the request.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![RPC_VERSION];
        codec::encode_into(self, &mut out)?;
        Ok(out)
    }

    /// Decodes a request from a peer, bounded per variant.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerWireError> {
        const WHAT: &str = "rollup request";
        check_header(WHAT, bytes, RPC_VERSION, Self::limit_of)?;
        let req: RollupRequest = codec::decode(&bytes[1..], MAX_REQUEST)
            .map_err(|source| LedgerWireError::Codec { what: WHAT, source })?;
        if let RollupRequest::Receipts { ids } = &req
            && ids.len() > MAX_FETCH_IDS
        {
            return Err(LedgerWireError::TooMany {
                what: WHAT,
                field: "ids",
                max: MAX_FETCH_IDS,
                found: ids.len(),
            });
        }
        Ok(req)
    }
}

impl RollupResponse {
    fn limit_of(tag: u8) -> Option<usize> {
        match tag {
            0 => Some(1 + 1 + 10 + 5 + MAX_IDS_PAGE * 32 + 1),
            1 => Some(MAX_RESPONSE),
            2 => Some(1 + 1 + 5 + MAX_REASON),
            _ => None,
        }
    }

    /// Encodes the response. Fails if it exceeds [`MAX_RESPONSE`]: use
    /// [`RollupResponse::pack_receipts`] to fill a `Receipts` answer.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let wire = match self {
            RollupResponse::Ids { epoch, ids, more } => ResponseWire::Ids {
                epoch: *epoch,
                ids: ids.clone(),
                more: *more,
            },
            RollupResponse::Receipts { events } => ResponseWire::Receipts {
                events: events
                    .iter()
                    .map(|e| e.encode().map(Bytes))
                    .collect::<Result<_, _>>()?,
            },
            RollupResponse::Refused { reason } => ResponseWire::Refused {
                reason: reason.clone(),
            },
        };
        let mut out = vec![RPC_VERSION];
        codec::encode_into(&wire, &mut out)?;
        if out.len() > MAX_RESPONSE {
            return Err(CodecError::TooLarge {
                limit: MAX_RESPONSE,
                found: out.len(),
            });
        }
        Ok(out)
    }

    /// Packs events into a `Receipts` answer up to [`MAX_RESPONSE`] bytes;
    /// returns the answer and how many events it holds (the rest is left for
    /// the asker's next request).
    pub fn pack_receipts(events: &[LedgerEvent]) -> (RollupResponse, usize) {
        let mut size = 1 + 1 + 9;
        let mut taken = 0;
        for e in events {
            let len = e.encoded_len_hint() + 9;
            if size + len > MAX_RESPONSE {
                break;
            }
            size += len;
            taken += 1;
        }
        (
            RollupResponse::Receipts {
                events: events[..taken].to_vec(),
            },
            taken,
        )
    }

    /// Decodes a response from a peer, bounded per variant; every event in
    /// a `Receipts` answer is decoded with [`LedgerEvent::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerWireError> {
        const WHAT: &str = "rollup response";
        check_header(WHAT, bytes, RPC_VERSION, Self::limit_of)?;
        let wire: ResponseWire = codec::decode(&bytes[1..], MAX_RESPONSE)
            .map_err(|source| LedgerWireError::Codec { what: WHAT, source })?;
        Ok(match wire {
            ResponseWire::Ids { epoch, ids, more } => {
                if ids.len() > MAX_IDS_PAGE {
                    return Err(LedgerWireError::TooMany {
                        what: WHAT,
                        field: "ids",
                        max: MAX_IDS_PAGE,
                        found: ids.len(),
                    });
                }
                RollupResponse::Ids { epoch, ids, more }
            }
            ResponseWire::Receipts { events } => RollupResponse::Receipts {
                events: events
                    .iter()
                    .map(|e| LedgerEvent::decode(&e.0))
                    .collect::<Result<_, _>>()?,
            },
            ResponseWire::Refused { reason } => {
                if reason.len() > MAX_REASON {
                    return Err(LedgerWireError::TooMany {
                        what: WHAT,
                        field: "reason bytes",
                        max: MAX_REASON,
                        found: reason.len(),
                    });
                }
                RollupResponse::Refused { reason }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testkit::Kit;

    #[test]
    fn events_round_trip() {
        let kit = Kit::new(1);
        for e in kit.sample_events() {
            let bytes = e.encode().unwrap();
            assert_eq!(LedgerEvent::decode(&bytes).unwrap(), e);
            assert_eq!(LedgerEvent::decode(&bytes).unwrap().id(), e.id());
        }
    }

    #[test]
    fn variant_limit_checked_before_decoding() {
        let kit = Kit::new(2);
        let settle = kit
            .sample_events()
            .into_iter()
            .find(|e| matches!(e, LedgerEvent::Settle { .. }))
            .unwrap();
        let mut bytes = settle.encode().unwrap();
        bytes.resize(MAX_SETTLE_EVENT + 1, 0);
        assert!(matches!(
            LedgerEvent::decode(&bytes),
            Err(LedgerWireError::TooLarge { limit, .. }) if limit == MAX_SETTLE_EVENT
        ));
        // A refund-tagged input the size of an escrow is refused by the
        // refund's limit, not the global one.
        let mut refund = vec![EVENT_VERSION, 1];
        refund.resize(MAX_REFUND_EVENT + 1, 0);
        assert!(matches!(
            LedgerEvent::decode(&refund),
            Err(LedgerWireError::TooLarge { limit, .. }) if limit == MAX_REFUND_EVENT
        ));
    }

    #[test]
    fn bad_headers_rejected() {
        assert!(matches!(
            LedgerEvent::decode(&[]),
            Err(LedgerWireError::Truncated { .. })
        ));
        assert!(matches!(
            LedgerEvent::decode(&[EVENT_VERSION]),
            Err(LedgerWireError::Truncated { .. })
        ));
        assert!(matches!(
            LedgerEvent::decode(&[9, 0]),
            Err(LedgerWireError::UnknownVersion { found: 9, .. })
        ));
        assert!(matches!(
            LedgerEvent::decode(&[EVENT_VERSION, 7]),
            Err(LedgerWireError::UnknownVariant { found: 7, .. })
        ));
    }

    #[test]
    fn frames_of_the_wrong_kind_rejected() {
        let kit = Kit::new(3);
        let events = kit.sample_events();
        let Some(LedgerEvent::Settle {
            receipt,
            acceptance,
        }) = events
            .iter()
            .find(|e| matches!(e, LedgerEvent::Settle { .. }))
            .cloned()
        else {
            panic!("no settle sample")
        };
        // Swap the frames: each is refused as the other's kind.
        let wire = EventWire::Settle {
            receipt: bytes(&acceptance),
            acceptance: bytes(&receipt),
        };
        let mut bytes = vec![EVENT_VERSION];
        codec::encode_into(&wire, &mut bytes).unwrap();
        assert!(matches!(
            LedgerEvent::decode(&bytes),
            Err(LedgerWireError::Frame {
                frame: "receipt",
                ..
            })
        ));
    }

    #[test]
    fn frame_bytes_encode_like_a_byte_vector() {
        for len in [0usize, 1, 250, 251, 70_000] {
            let v: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let fast = codec::encode(&Bytes(v.clone())).unwrap();
            assert_eq!(fast, codec::encode(&v).unwrap(), "len {len}");
            assert_eq!(codec::decode::<Bytes>(&fast, 1 << 20).unwrap(), Bytes(v));
        }
    }

    #[test]
    fn truncations_never_decode() {
        let kit = Kit::new(4);
        for e in kit.sample_events() {
            let bytes = e.encode().unwrap();
            for cut in 0..bytes.len() {
                assert!(LedgerEvent::decode(&bytes[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn rpc_round_trip_and_bounds() {
        let kit = Kit::new(5);
        let reqs = [
            RollupRequest::Ids {
                epoch: 7,
                after: None,
            },
            RollupRequest::Ids {
                epoch: u64::MAX,
                after: Some(MessageId([0xff; 32])),
            },
            RollupRequest::Receipts {
                ids: vec![MessageId([1; 32]); MAX_FETCH_IDS],
            },
        ];
        for r in reqs {
            let b = r.encode().unwrap();
            assert_eq!(RollupRequest::decode(&b).unwrap(), r);
        }
        let too_many = RollupRequest::Receipts {
            ids: vec![MessageId([1; 32]); MAX_FETCH_IDS + 1],
        };
        assert!(RollupRequest::decode(&too_many.encode().unwrap()).is_err());

        let resps = [
            RollupResponse::Ids {
                epoch: 3,
                ids: vec![MessageId([2; 32]); MAX_IDS_PAGE],
                more: true,
            },
            RollupResponse::Receipts {
                events: kit.sample_events(),
            },
            RollupResponse::Refused {
                reason: "x".repeat(MAX_REASON),
            },
        ];
        for r in resps {
            let b = r.encode().unwrap();
            assert_eq!(RollupResponse::decode(&b).unwrap(), r);
        }
        let big = RollupResponse::Ids {
            epoch: 3,
            ids: vec![MessageId([2; 32]); MAX_IDS_PAGE + 1],
            more: true,
        };
        assert!(RollupResponse::decode(&big.encode().unwrap()).is_err());
    }

    fn seed_inputs() -> &'static [Vec<u8>] {
        static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        SEEDS.get_or_init(|| {
            crate::fuzz::seeds()
                .into_iter()
                .filter(|(t, _)| *t == "ledger_events")
                .map(|(_, d)| d)
                .collect()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Mutated valid inputs (bit flips, byte writes, truncation) never
        /// panic the decoders or the ledger behind them, and whatever decodes
        /// re-encodes to the same bytes.
        #[test]
        fn prop_mutated_inputs_never_panic(
            pick in proptest::prelude::any::<proptest::sample::Index>(),
            edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 0..6),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let seeds = seed_inputs();
            proptest::prop_assume!(!seeds.is_empty());
            let mut data = seeds[pick.index(seeds.len())].clone();
            for (at, byte) in &edits {
                let i = at.index(data.len());
                data[i] ^= byte;
            }
            if edits.len() % 2 == 1 {
                data.truncate(cut.index(data.len() + 1));
            }
            crate::fuzz::ledger_events(&data);
            if let Ok(e) = LedgerEvent::decode(&data) {
                proptest::prop_assert_eq!(e.encode().unwrap(), data);
            }
        }
    }

    #[test]
    fn pack_receipts_respects_the_limit() {
        let kit = Kit::new(6);
        let events = kit.sample_events();
        let many: Vec<LedgerEvent> = events.iter().cycle().take(20_000).cloned().collect();
        let (resp, taken) = RollupResponse::pack_receipts(&many);
        assert!(taken > 0 && taken < many.len());
        let bytes = resp.encode().unwrap();
        assert!(bytes.len() <= MAX_RESPONSE);
        assert!(RollupResponse::decode(&bytes).is_ok());
    }
}
