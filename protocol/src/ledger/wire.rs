//! The ledger's wire messages: the [`LedgerEvent`] envelope carried on the
//! `receipts` gossip topic, and the request/response pair of the ledger
//! service ([`RollupRequest`], [`RollupResponse`]): rollup reconciliation
//! between ledger peers, and the questions any node asks a ledger peer on
//! behalf of its user (a receipt's state and inclusion proof, a balance, the
//! leaderboard, an anchor journal, recent headers).
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
use crate::identity::NodeId;
use crate::merkle::{InclusionProof, MAX_PATH};
use crate::signed::{MessageId, Signed, SignedError};
use crate::wire::{
    JobSpec, Mint, Receipt, ReceiptAcceptance, RollupHeader, TaskAccept, TaskClosed, TaskOffer,
};

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
/// Longest reason text in [`RollupResponse::Refused`] and [`ReceiptState::Unpaid`].
pub const MAX_REASON: usize = 256;
/// Most journal entries in one [`RollupResponse::Chain`] page.
pub const MAX_CHAIN_PAGE: usize = 1024;
/// Longest journal entry in a [`RollupResponse::Chain`] page (a stored
/// header frame is far shorter; longer stored bytes are served cut to this,
/// so the verifier sees a frame that does not decode: tampering).
pub const MAX_CHAIN_ENTRY: usize = 1024;
/// Most headers in one [`RollupResponse::Headers`].
pub const MAX_HEADERS: usize = 64;
/// Most rows in one [`RollupResponse::Leaderboard`].
pub const MAX_LEADERBOARD: usize = 100;
/// Largest rollup header frame.
const MAX_HEADER_FRAME: usize = Signed::<RollupHeader>::MAX_FRAME;

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
    /// Where a receipt stands on the answering ledger (any node may ask).
    Receipt {
        /// The receipt id.
        id: MessageId,
    },
    /// The inclusion proof of a receipt against the answering ledger's
    /// header of its epoch, and who anchors that epoch.
    Proof {
        /// The receipt id.
        id: MessageId,
    },
    /// A node's balance on the answering ledger.
    Balance {
        /// The node.
        node: NodeId,
    },
    /// A page of the anchor journal the answering ledger keeps for `ledger`
    /// (raw stored entries, epochs ascending, after `after`).
    Chain {
        /// Whose chain.
        ledger: NodeId,
        /// Start after this epoch (exclusive); `None` for the first page.
        after: Option<u64>,
    },
    /// The answering ledger's own current headers of epochs after `after`
    /// (the newest [`MAX_HEADERS`]): how a ledger that was away catches up
    /// with headers it missed on the `rollups` topic.
    Headers {
        /// Epochs after this one (exclusive).
        after: u64,
    },
    /// The nodes that earned most (at most `limit`, capped at [`MAX_LEADERBOARD`]).
    Leaderboard {
        /// Rows wanted.
        limit: u16,
    },
}

/// Where a receipt stands on a ledger ([`RollupResponse::Receipt`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptState {
    /// The ledger never admitted it.
    Unknown,
    /// It is its task's settle: the worker was paid.
    Settled,
    /// It matches an escrow, but another receipt of the task was paid (its
    /// escrow went back to the creator).
    Outranked,
    /// Admitted, waiting for its escrow (nothing paid yet).
    Waiting,
    /// Admitted, but it matches no escrow and pays nothing (the reason, e.g.
    /// the worker was never assigned the task; at most [`MAX_REASON`] bytes).
    Unpaid {
        /// Why.
        reason: String,
    },
}

/// The answer to [`RollupRequest::Receipt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptInfo {
    /// Its state.
    pub state: ReceiptState,
    /// The epoch it falls in, once it matched an escrow.
    pub epoch: Option<u64>,
    /// Whether that epoch is final on the answering ledger.
    pub epoch_final: bool,
    /// Whether it arrived after its epoch was final (then it is in no root).
    pub late: bool,
    /// The settle event as admitted (the receipt and the acceptance kept).
    pub settle: Option<LedgerEvent>,
}

/// Where the answering ledger anchored an epoch ([`ProofInfo::anchor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnchorPlace {
    /// In its embedded journal: read it with [`RollupRequest::Chain`].
    Journal,
    /// In the anchor contract on an EVM chain, under `account`.
    Evm {
        /// Chain id.
        chain_id: u64,
        /// The anchor contract's address.
        contract: [u8; 20],
        /// The account the root is kept under.
        account: [u8; 20],
    },
}

/// The answer to [`RollupRequest::Proof`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofInfo {
    /// The answering ledger's header of the receipt's epoch.
    pub header: Signed<RollupHeader>,
    /// The inclusion proof against that header.
    pub proof: InclusionProof,
    /// The ledger that anchors the epoch, as the answering ledger saw it when
    /// the epoch turned final (`None` while it is not final).
    pub anchorer: Option<NodeId>,
    /// Where the answering ledger anchored the epoch, when it did.
    pub anchor: Option<AnchorPlace>,
}

/// One raw entry of an anchor journal ([`RollupResponse::Chain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    /// The epoch it is stored under.
    pub epoch: u64,
    /// The stored bytes (a signed header frame unless tampered with).
    pub frame: Vec<u8>,
}

/// One row of [`RollupResponse::Leaderboard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRow {
    /// The node.
    pub node: NodeId,
    /// Its balance.
    pub balance: i128,
    /// Credits it earned as a worker (settles).
    pub earned: u64,
    /// Tasks it was paid for.
    pub tasks: u64,
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
    /// Where a receipt stands.
    Receipt(ReceiptInfo),
    /// A receipt's inclusion proof.
    Proof(Box<ProofInfo>),
    /// A node's balance.
    Balance {
        /// The node.
        node: NodeId,
        /// Its balance (negative when its escrows exceed what it had).
        balance: i128,
    },
    /// A page of an anchor journal, at most [`MAX_CHAIN_PAGE`] entries.
    Chain {
        /// The entries, epochs ascending.
        entries: Vec<ChainEntry>,
        /// Whether more entries follow the last one.
        more: bool,
    },
    /// The answering ledger's recent headers, at most [`MAX_HEADERS`].
    Headers {
        /// The headers.
        headers: Vec<Signed<RollupHeader>>,
    },
    /// The nodes that earned most, at most [`MAX_LEADERBOARD`].
    Leaderboard {
        /// Rows, best first.
        rows: Vec<LeaderRow>,
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
    Receipt {
        state: ReceiptState,
        epoch: Option<u64>,
        epoch_final: bool,
        late: bool,
        settle: Option<Bytes>,
    },
    Proof {
        header: Bytes,
        proof: InclusionProof,
        anchorer: Option<NodeId>,
        anchor: Option<AnchorPlace>,
    },
    Balance {
        node: NodeId,
        balance: i128,
    },
    Chain {
        entries: Vec<(u64, Bytes)>,
        more: bool,
    },
    Headers {
        headers: Vec<Bytes>,
    },
    Leaderboard {
        rows: Vec<LeaderRow>,
    },
}

/// Refuses a list longer than `max`.
fn at_most(
    what: &'static str,
    field: &'static str,
    found: usize,
    max: usize,
) -> Result<(), LedgerWireError> {
    if found > max {
        return Err(LedgerWireError::TooMany {
            what,
            field,
            max,
            found,
        });
    }
    Ok(())
}

impl RollupRequest {
    fn limit_of(tag: u8) -> Option<usize> {
        match tag {
            0 => Some(1 + 1 + 10 + 1 + 32),
            1 => Some(MAX_REQUEST),
            2..=4 => Some(1 + 1 + 32),
            5 => Some(1 + 1 + 32 + 1 + 10),
            6 => Some(1 + 1 + 10),
            7 => Some(1 + 1 + 3),
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
            // state, epoch, two flags, the settle event
            3 => Some(1 + 1 + (1 + 5 + MAX_REASON) + 11 + 2 + (1 + 5 + MAX_SETTLE_EVENT)),
            // header frame, proof (index, size, path), anchorer, anchor place
            4 => Some(
                1 + 1 + (5 + MAX_HEADER_FRAME) + (10 + 10 + 1 + MAX_PATH * 32) + 33 + (2 + 10 + 40),
            ),
            5 => Some(1 + 1 + 32 + 17),
            6 => Some(1 + 1 + 5 + MAX_CHAIN_PAGE * (10 + 5 + MAX_CHAIN_ENTRY) + 1),
            7 => Some(1 + 1 + 5 + MAX_HEADERS * (5 + MAX_HEADER_FRAME)),
            8 => Some(1 + 1 + 5 + MAX_LEADERBOARD * (32 + 17 + 10 + 10)),
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
            RollupResponse::Receipt(info) => ResponseWire::Receipt {
                state: info.state.clone(),
                epoch: info.epoch,
                epoch_final: info.epoch_final,
                late: info.late,
                settle: info
                    .settle
                    .as_ref()
                    .map(|e| e.encode().map(Bytes))
                    .transpose()?,
            },
            RollupResponse::Proof(p) => ResponseWire::Proof {
                header: bytes(&p.header),
                proof: p.proof.clone(),
                anchorer: p.anchorer,
                anchor: p.anchor.clone(),
            },
            RollupResponse::Balance { node, balance } => ResponseWire::Balance {
                node: *node,
                balance: *balance,
            },
            RollupResponse::Chain { entries, more } => ResponseWire::Chain {
                entries: entries
                    .iter()
                    .map(|e| (e.epoch, Bytes(e.frame.clone())))
                    .collect(),
                more: *more,
            },
            RollupResponse::Headers { headers } => ResponseWire::Headers {
                headers: headers.iter().map(bytes).collect(),
            },
            RollupResponse::Leaderboard { rows } => {
                ResponseWire::Leaderboard { rows: rows.clone() }
            }
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
                at_most(WHAT, "reason bytes", reason.len(), MAX_REASON)?;
                RollupResponse::Refused { reason }
            }
            ResponseWire::Receipt {
                state,
                epoch,
                epoch_final,
                late,
                settle,
            } => {
                if let ReceiptState::Unpaid { reason } = &state {
                    at_most(WHAT, "reason bytes", reason.len(), MAX_REASON)?;
                }
                RollupResponse::Receipt(ReceiptInfo {
                    state,
                    epoch,
                    epoch_final,
                    late,
                    settle: settle.map(|b| LedgerEvent::decode(&b.0)).transpose()?,
                })
            }
            ResponseWire::Proof {
                header,
                proof,
                anchorer,
                anchor,
            } => {
                at_most(WHAT, "proof path hashes", proof.path.len(), MAX_PATH)?;
                RollupResponse::Proof(Box::new(ProofInfo {
                    header: frame(WHAT, "header", header)?,
                    proof,
                    anchorer,
                    anchor,
                }))
            }
            ResponseWire::Balance { node, balance } => RollupResponse::Balance { node, balance },
            ResponseWire::Chain { entries, more } => {
                at_most(WHAT, "journal entries", entries.len(), MAX_CHAIN_PAGE)?;
                let mut out = Vec::with_capacity(entries.len());
                for (epoch, frame) in entries {
                    at_most(WHAT, "journal entry bytes", frame.0.len(), MAX_CHAIN_ENTRY)?;
                    out.push(ChainEntry {
                        epoch,
                        frame: frame.0,
                    });
                }
                RollupResponse::Chain { entries: out, more }
            }
            ResponseWire::Headers { headers } => {
                at_most(WHAT, "headers", headers.len(), MAX_HEADERS)?;
                RollupResponse::Headers {
                    headers: headers
                        .into_iter()
                        .map(|h| frame(WHAT, "header", h))
                        .collect::<Result<_, _>>()?,
                }
            }
            ResponseWire::Leaderboard { rows } => {
                at_most(WHAT, "rows", rows.len(), MAX_LEADERBOARD)?;
                RollupResponse::Leaderboard { rows }
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

    /// The answers any node asks a ledger for: every variant round-trips, and
    /// each list and text bound is enforced on decode.
    fn sample_answers(kit: &Kit) -> (Vec<RollupRequest>, Vec<RollupResponse>) {
        let ledger = &kit.ledgers[0];
        let header = Signed::sign(
            ledger,
            &RollupHeader {
                epoch: 9,
                root: [4; 32],
                count: 5,
                ledger: ledger.node_id(),
                prev: [0; 32],
                closed_at_ms: 77,
            },
        )
        .unwrap();
        let leaves: Vec<[u8; 32]> = (1u8..=5).map(|i| [i; 32]).collect();
        let tree = crate::merkle::MerkleTree::from_sorted_unique(leaves).unwrap();
        let settle = kit
            .sample_events()
            .into_iter()
            .find(|e| matches!(e, LedgerEvent::Settle { .. }));
        let node = kit.workers[0].node_id();
        let reqs = vec![
            RollupRequest::Receipt {
                id: MessageId([7; 32]),
            },
            RollupRequest::Proof {
                id: MessageId([0xff; 32]),
            },
            RollupRequest::Balance { node },
            RollupRequest::Chain {
                ledger: node,
                after: Some(u64::MAX),
            },
            RollupRequest::Chain {
                ledger: node,
                after: None,
            },
            RollupRequest::Headers { after: u64::MAX },
            RollupRequest::Leaderboard { limit: u16::MAX },
        ];
        let resps = vec![
            RollupResponse::Receipt(ReceiptInfo {
                state: ReceiptState::Unpaid {
                    reason: "r".repeat(MAX_REASON),
                },
                epoch: Some(u64::MAX),
                epoch_final: true,
                late: false,
                settle,
            }),
            RollupResponse::Receipt(ReceiptInfo {
                state: ReceiptState::Unknown,
                epoch: None,
                epoch_final: false,
                late: false,
                settle: None,
            }),
            RollupResponse::Proof(Box::new(ProofInfo {
                header: header.clone(),
                proof: tree.proof(3).unwrap(),
                anchorer: Some(node),
                anchor: Some(AnchorPlace::Evm {
                    chain_id: u64::MAX,
                    contract: [0xee; 20],
                    account: [0xdd; 20],
                }),
            })),
            RollupResponse::Balance {
                node,
                balance: i128::MIN,
            },
            RollupResponse::Chain {
                entries: (0..MAX_CHAIN_PAGE as u64)
                    .map(|epoch| ChainEntry {
                        epoch: u64::MAX - epoch,
                        frame: vec![0xab; MAX_CHAIN_ENTRY],
                    })
                    .collect(),
                more: true,
            },
            RollupResponse::Headers {
                headers: vec![header; MAX_HEADERS],
            },
            RollupResponse::Leaderboard {
                rows: vec![
                    LeaderRow {
                        node,
                        balance: i128::MAX,
                        earned: u64::MAX,
                        tasks: u64::MAX,
                    };
                    MAX_LEADERBOARD
                ],
            },
        ];
        (reqs, resps)
    }

    #[test]
    fn service_answers_round_trip_at_their_bounds() {
        let kit = Kit::new(7);
        let (reqs, resps) = sample_answers(&kit);
        for r in reqs {
            let b = r.encode().unwrap();
            assert_eq!(RollupRequest::decode(&b).unwrap(), r, "{r:?}");
        }
        for r in resps {
            let b = r.encode().unwrap();
            assert_eq!(RollupResponse::decode(&b).unwrap(), r);
            for cut in [0, 1, 2, b.len() / 2, b.len() - 1] {
                assert!(RollupResponse::decode(&b[..cut]).is_err(), "cut {cut}");
            }
        }
    }

    #[test]
    fn service_answers_over_their_bounds_are_refused() {
        let kit = Kit::new(8);
        let (_, resps) = sample_answers(&kit);
        let too_big: Vec<RollupResponse> = resps
            .into_iter()
            .filter_map(|r| match r {
                RollupResponse::Receipt(mut info) => {
                    info.state = ReceiptState::Unpaid {
                        reason: "r".repeat(MAX_REASON + 1),
                    };
                    Some(RollupResponse::Receipt(info))
                }
                RollupResponse::Chain { mut entries, more } => {
                    entries[0].frame.push(0);
                    Some(RollupResponse::Chain { entries, more })
                }
                RollupResponse::Headers { mut headers } => {
                    headers.push(headers[0].clone());
                    Some(RollupResponse::Headers { headers })
                }
                RollupResponse::Leaderboard { mut rows } => {
                    rows.push(rows[0]);
                    Some(RollupResponse::Leaderboard { rows })
                }
                RollupResponse::Proof(mut p) => {
                    p.proof.path = vec![[1; 32]; MAX_PATH + 1];
                    Some(RollupResponse::Proof(p))
                }
                _ => None,
            })
            .collect();
        assert_eq!(too_big.len(), 6);
        for r in too_big {
            // Encoding may refuse already; if it does not, decoding must.
            if let Ok(b) = r.encode() {
                assert!(RollupResponse::decode(&b).is_err(), "{r:?}");
            }
        }
        // A page entry count over the bound is refused even under the size limit.
        let mut chain = vec![RPC_VERSION];
        let entries: Vec<(u64, Bytes)> = (0..=MAX_CHAIN_PAGE as u64)
            .map(|e| (e, Bytes(Vec::new())))
            .collect();
        codec::encode_into(
            &ResponseWire::Chain {
                entries,
                more: false,
            },
            &mut chain,
        )
        .unwrap();
        assert!(matches!(
            RollupResponse::decode(&chain),
            Err(LedgerWireError::TooMany { .. })
        ));
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
