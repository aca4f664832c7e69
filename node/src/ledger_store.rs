//! The ledger peer's persistence: a journal in sled that rebuilds the
//! [`LedgerPeer`] (credits and rollups) after a restart or a crash.
//!
//! The protocol machines are deterministic, so the store keeps their
//! *inputs*, not their state: every ledger event the machine admitted (with
//! the `now_ms` it was fed at), every rollup header this ledger signed,
//! every epoch it finalised and every anchor the driver confirmed, in the
//! order they happened. [`LedgerStore::open`]
//! replays the journal into a fresh machine; replay is idempotent (the ledger
//! deduplicates by event id, so nothing is applied twice) and checked (each
//! persisted header must match the root the replayed receipts give).
//!
//! Durability: [`LedgerStore::ingest`] appends the admitted events and
//! flushes *before* it returns, so an event the caller acknowledges (or
//! forwards) survives SIGKILL. A header is persisted before the caller gets
//! it to publish. If a write fails the in-memory state is ahead of the disk:
//! the caller must stop using the store and reopen it.
//!
//! Layout, in the `ledger` tree of [`crate::store::Store`] (no schema change):
//! `l | seq (u64 BE)` → a journal record, either
//! * `0 | now_ms (u64 LE) | (len (u32 LE) | event)*`: admitted events
//!   ([`LedgerEvent::encode`]) fed at `now_ms`, packed up to 64 KiB per
//!   record (one `ingest` writes one sled batch of such records: a few large
//!   values cost an order of magnitude less than a key per event), or
//! * `1 | record` (protocol codec): a header, a finality or an anchor.
//!
//! An in-memory index (event id → record and position, about 70 bytes per
//! event, rebuilt on replay) serves receipts and the escrows they matched to
//! reconciling peers.
//!
//! No ledger rule lives here: the store feeds [`LedgerPeer`] and carries out
//! what it asks (sign, persist, hand out actions).

use std::collections::{BTreeMap, VecDeque};

use rendertrust_protocol::codec::{self, CodecError};
use rendertrust_protocol::identity::{NodeId, NodeKey};
use rendertrust_protocol::ledger::wire::{LedgerWireError, MAX_EVENT};
use rendertrust_protocol::ledger::{
    Applied, LedgerConfig, LedgerEvent, LedgerPeer, LedgerRejected,
};
use rendertrust_protocol::rollup::{
    HeaderOutcome, HeaderRejected, IdsRejected, ProofError, ReceiptProof, RestoreError,
    RollupAction, RollupConfig,
};
use rendertrust_protocol::signed::{MessageId, Signed, SignedError};
use rendertrust_protocol::wire::RollupHeader;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

const TREE: &str = "ledger";
const LOG: u8 = b'l';
/// Events packed per journal record (one event may exceed it alone).
const CHUNK_BYTES: usize = 64 * 1024;
/// Events replayed per machine call.
const REPLAY_BATCH: usize = 4096;
/// Largest journal record accepted on replay.
const MAX_RECORD: usize = MAX_EVENT + 64;

/// Why the ledger store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerStoreError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// sled failed.
    #[error("ledger journal: {0}")]
    Sled(#[from] sled::Error),
    /// A journal record does not decode.
    #[error("ledger journal record {seq}: {reason}")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The replayed receipts disagree with a persisted header.
    #[error("ledger journal record {seq}: {source}")]
    Replay {
        /// Its sequence number.
        seq: u64,
        /// Cause.
        source: RestoreError,
    },
    /// A header could not be signed.
    #[error("signing a rollup header: {0}")]
    Sign(#[from] SignedError),
    /// A record could not be encoded.
    #[error("encoding a journal record: {0}")]
    Encode(#[from] CodecError),
}

const EVENT_RECORD: u8 = 0;
const OTHER_RECORD: u8 = 1;

/// One journal record other than an event.
#[derive(Debug, Serialize, Deserialize)]
enum Record {
    /// A header this ledger signed (frame bytes).
    Header { frame: Vec<u8> },
    /// An epoch this ledger finalised; `anchor`: this ledger must anchor it.
    Final {
        epoch: u64,
        root: [u8; 32],
        count: u64,
        anchor: bool,
    },
    /// The driver anchored the epoch ([`LedgerStore::anchored`]).
    Anchored { epoch: u64 },
}

/// What the driver must do for the ledger peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerAction {
    /// Publish this header on the `rollups` topic (already signed and persisted).
    Publish(Signed<RollupHeader>),
    /// A rollup action to carry out: `RequestIds`, `FetchReceipts`, `Anchor`
    /// (anchor the root, then call [`LedgerStore::anchored`]; until then it
    /// is handed out again after every restart), `Final` (already persisted;
    /// informational).
    Rollup(RollupAction),
}

/// The ledger peer with its journal.
pub struct LedgerStore {
    store: Store,
    tree: sled::Tree,
    key: NodeKey,
    peer: LedgerPeer,
    next_seq: u64,
    out: VecDeque<LedgerAction>,
    /// Event id → (record, position) of its latest journaled copy.
    index: BTreeMap<MessageId, (u64, u32)>,
    events: u64,
}

impl std::fmt::Debug for LedgerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerStore")
            .field("node", &self.key.node_id())
            .field("records", &self.next_seq)
            .finish_non_exhaustive()
    }
}

fn log_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// An event record: the `now_ms` it was fed at and its events' bytes.
type EventRecord<'a> = (u64, Vec<&'a [u8]>);

/// `(now_ms, event bytes…)` of an event record; `None` for another record.
fn parse_events(value: &[u8]) -> Option<Result<EventRecord<'_>, String>> {
    let (&tag, rest) = value.split_first()?;
    if tag != EVENT_RECORD {
        return None;
    }
    let parse = || {
        let (now, mut rest) = rest
            .split_first_chunk::<8>()
            .ok_or("event record shorter than its header")?;
        let mut events = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or("event record: truncated length")?;
            let (event, tail) = tail
                .split_at_checked(u32::from_le_bytes(*len) as usize)
                .ok_or("event record: truncated event")?;
            events.push(event);
            rest = tail;
        }
        Ok((u64::from_le_bytes(*now), events))
    };
    Some(parse().map_err(|e: &str| e.to_string()))
}

fn start_chunk(now_ms: u64) -> Vec<u8> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES + 1024);
    chunk.push(EVENT_RECORD);
    chunk.extend_from_slice(&now_ms.to_le_bytes());
    chunk
}

fn parse_other(value: &[u8]) -> Result<Record, String> {
    match value.split_first() {
        Some((&OTHER_RECORD, body)) => codec::decode(body, MAX_RECORD).map_err(|e| e.to_string()),
        Some((tag, _)) => Err(format!("unknown record tag {tag}")),
        None => Err("empty record".into()),
    }
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

impl LedgerStore {
    /// Opens the journal in `store` and rebuilds the ledger peer of `key`'s
    /// node by replaying it.
    pub fn open(
        store: &Store,
        key: &NodeKey,
        ledger: LedgerConfig,
        rollup: RollupConfig,
    ) -> Result<Self, LedgerStoreError> {
        let tree = store.tree(TREE)?;
        let me = key.node_id();
        let mut s = LedgerStore {
            store: store.clone(),
            tree,
            key: NodeKey::from_secret_bytes(&key.secret_bytes()),
            peer: LedgerPeer::new(me, ledger, rollup),
            next_seq: 0,
            out: VecDeque::new(),
            index: BTreeMap::new(),
            events: 0,
        };
        s.replay()?;
        Ok(s)
    }

    fn replay(&mut self) -> Result<(), LedgerStoreError> {
        let mut batch: Vec<LedgerEvent> = Vec::new();
        let mut batch_now = 0u64;
        let mut replayed = 0u64;
        // Anchors owed (a `Final` with `anchor`) and not confirmed.
        let mut to_anchor: BTreeMap<u64, ([u8; 32], u64)> = BTreeMap::new();
        for item in self.tree.scan_prefix([LOG]) {
            let (k, v) = item?;
            let seq = seq_of(&k).ok_or_else(|| LedgerStoreError::Corrupt {
                seq: self.next_seq,
                reason: "journal key is not 9 bytes".into(),
            })?;
            let corrupt = |reason: String| LedgerStoreError::Corrupt { seq, reason };
            if let Some(parsed) = parse_events(&v) {
                let (now_ms, events) = parsed.map_err(corrupt)?;
                if !batch.is_empty() && (now_ms != batch_now || batch.len() >= REPLAY_BATCH) {
                    self.peer.handle_events(&batch, batch_now);
                    batch.clear();
                }
                batch_now = now_ms;
                for (pos, bytes) in events.into_iter().enumerate() {
                    let event = LedgerEvent::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
                    self.index.insert(event.id(), (seq, pos as u32));
                    self.events += 1;
                    batch.push(event);
                }
            } else {
                let record = parse_other(&v).map_err(corrupt)?;
                self.peer.handle_events(&batch, batch_now);
                batch.clear();
                match record {
                    Record::Header { frame } => {
                        let h = Signed::<RollupHeader>::from_bytes(frame)
                            .and_then(|s| s.verify())
                            .map_err(|e| corrupt(e.to_string()))?;
                        self.peer
                            .rollup_mut()
                            .restore_header(h)
                            .map_err(|source| LedgerStoreError::Replay { seq, source })?;
                    }
                    Record::Final {
                        epoch,
                        root,
                        count,
                        anchor,
                    } => {
                        self.peer.rollup_mut().restore_final(epoch);
                        if anchor {
                            to_anchor.insert(epoch, (root, count));
                        }
                    }
                    Record::Anchored { epoch } => {
                        to_anchor.remove(&epoch);
                    }
                }
            }
            self.next_seq = seq + 1;
            replayed += 1;
        }
        self.peer.handle_events(&batch, batch_now);
        // Replay re-derives state only; what it would ask for was done
        // before, except anchors the driver never confirmed.
        while self.peer.poll_action().is_some() {}
        // The rollup releases them in epoch order: at once, or once every
        // earlier epoch is final (an anchor chain refuses an epoch below
        // its head; see `protocol::rollup`).
        for (epoch, (root, count)) in to_anchor {
            self.peer
                .rollup_mut()
                .restore_owed_anchor(epoch, root, count);
        }
        while let Some(action) = self.peer.poll_action() {
            self.out.push_back(LedgerAction::Rollup(action));
        }
        tracing::info!(
            records = replayed,
            events = self.events,
            balances = self.peer.ledger().balances().count(),
            pending = self.peer.ledger().pending(),
            "ledger journal replayed"
        );
        Ok(())
    }

    fn append(
        &mut self,
        batch: &mut sled::Batch,
        record: &Record,
    ) -> Result<u64, LedgerStoreError> {
        let mut value = vec![OTHER_RECORD];
        codec::encode_into(record, &mut value)?;
        Ok(self.append_raw(batch, value))
    }

    fn append_raw(&mut self, batch: &mut sled::Batch, value: Vec<u8>) -> u64 {
        let seq = self.next_seq;
        batch.insert(&log_key(seq)[..], value);
        self.next_seq += 1;
        seq
    }

    fn commit(&self, batch: sled::Batch) -> Result<(), LedgerStoreError> {
        self.tree.apply_batch(batch)?;
        self.store.flush()?;
        Ok(())
    }

    /// Verifies and applies ledger events (one gossip batch, or a
    /// reconciliation answer), journals the admitted ones and flushes, then
    /// returns one result per event. Only after this returns `Ok` may the
    /// caller acknowledge or forward the admitted events.
    pub fn ingest(
        &mut self,
        events: &[LedgerEvent],
        now_ms: u64,
    ) -> Result<Vec<Result<Applied, LedgerRejected>>, LedgerStoreError> {
        let results = self.peer.handle_events(events, now_ms);
        let mut batch = sled::Batch::default();
        let before = self.next_seq;
        let mut chunk = start_chunk(now_ms);
        let mut pos = 0u32;
        let mut staged = Vec::new();
        for (event, result) in events.iter().zip(&results) {
            if result.is_err() {
                continue;
            }
            let encoded = event.encode()?;
            if pos > 0 && chunk.len() + 4 + encoded.len() > CHUNK_BYTES {
                let full = std::mem::replace(&mut chunk, start_chunk(now_ms));
                self.append_raw(&mut batch, full);
                pos = 0;
            }
            chunk.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
            chunk.extend_from_slice(&encoded);
            // The record this chunk becomes is the next one appended.
            staged.push((event.id(), (self.next_seq, pos)));
            pos += 1;
        }
        if pos > 0 {
            self.append_raw(&mut batch, chunk);
        }
        self.drain(&mut batch)?;
        if self.next_seq != before {
            self.commit(batch)?;
        }
        self.events += staged.len() as u64;
        self.index.extend(staged);
        Ok(results)
    }

    /// Signs and journals what the peer asked to publish or finalise, and
    /// queues every action for the caller (the records join `batch`).
    fn drain(&mut self, batch: &mut sled::Batch) -> Result<(), LedgerStoreError> {
        while let Some(action) = self.peer.poll_action() {
            match action {
                RollupAction::Publish(header) => {
                    let signed = Signed::sign(&self.key, &header)?;
                    self.append(
                        batch,
                        &Record::Header {
                            frame: signed.as_bytes().to_vec(),
                        },
                    )?;
                    self.out.push_back(LedgerAction::Publish(signed));
                }
                RollupAction::Final {
                    epoch,
                    root,
                    count,
                    anchor,
                } => {
                    // `anchor`: this ledger owes the epoch's anchor; it is
                    // handed out again after every restart until
                    // [`LedgerStore::anchored`].
                    self.append(
                        batch,
                        &Record::Final {
                            epoch,
                            root,
                            count,
                            anchor,
                        },
                    )?;
                    self.out.push_back(LedgerAction::Rollup(action));
                }
                other => self.out.push_back(LedgerAction::Rollup(other)),
            }
        }
        Ok(())
    }

    fn drain_and_commit(&mut self) -> Result<(), LedgerStoreError> {
        let before = self.next_seq;
        let mut batch = sled::Batch::default();
        self.drain(&mut batch)?;
        if self.next_seq != before {
            self.commit(batch)?;
        }
        Ok(())
    }

    /// Runs the peer's timers (escrow expiry, epoch close and finality) and
    /// persists the headers and finalities that produced.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), LedgerStoreError> {
        self.peer.handle_timeout(now_ms);
        self.drain_and_commit()
    }

    /// Feeds another ledger's header from the `rollups` topic.
    pub fn handle_header(
        &mut self,
        header: &Signed<RollupHeader>,
        now_ms: u64,
    ) -> Result<Result<HeaderOutcome, HeaderRejected>, LedgerStoreError> {
        let outcome = self.peer.handle_header(header, now_ms);
        self.drain_and_commit()?;
        Ok(outcome)
    }

    /// Feeds a peer's page of receipt ids (reconciliation).
    pub fn handle_ids(
        &mut self,
        ledger: NodeId,
        epoch: u64,
        ids: &[MessageId],
        more: bool,
    ) -> Result<Result<usize, IdsRejected>, LedgerStoreError> {
        let outcome = self.peer.handle_ids(ledger, epoch, ids, more);
        self.drain_and_commit()?;
        Ok(outcome)
    }

    /// Records that the driver anchored `epoch` (it is no longer handed out
    /// after a restart).
    pub fn anchored(&mut self, epoch: u64) -> Result<(), LedgerStoreError> {
        let mut batch = sled::Batch::default();
        self.append(&mut batch, &Record::Anchored { epoch })?;
        self.commit(batch)
    }

    /// Sets the other live ledger peers.
    pub fn set_ledgers(&mut self, live: impl IntoIterator<Item = NodeId>) {
        self.peer.rollup_mut().set_ledgers(live);
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<LedgerAction> {
        self.out.pop_front()
    }

    /// When [`LedgerStore::handle_timeout`] next has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.peer.next_deadline()
    }

    /// The protocol state (balances, roots, …).
    pub fn peer(&self) -> &LedgerPeer {
        &self.peer
    }

    /// An inclusion proof of a receipt against this ledger's header.
    pub fn proof(&mut self, receipt: &MessageId) -> Result<ReceiptProof, ProofError> {
        self.peer.rollup_mut().proof(receipt)
    }

    /// Journal records written so far.
    pub fn records(&self) -> u64 {
        self.next_seq
    }

    /// Events journaled so far (the admitted ones).
    pub fn journaled_events(&self) -> u64 {
        self.events
    }

    fn event_by_id(&self, id: &MessageId) -> Result<Option<LedgerEvent>, LedgerStoreError> {
        let Some(&(seq, pos)) = self.index.get(id) else {
            return Ok(None);
        };
        let corrupt = |reason: String| LedgerStoreError::Corrupt { seq, reason };
        let Some(bytes) = self.tree.get(log_key(seq))? else {
            return Err(corrupt("indexed record missing".into()));
        };
        let (_, events) = parse_events(&bytes)
            .ok_or_else(|| corrupt("index points at a non-event record".into()))?
            .map_err(corrupt)?;
        let event = events
            .get(pos as usize)
            .ok_or_else(|| corrupt(format!("no event at position {pos}")))?;
        LedgerEvent::decode(event)
            .map(Some)
            .map_err(|e: LedgerWireError| corrupt(e.to_string()))
    }

    /// The events that prove these receipts to a reconciling peer: for each
    /// receipt held, the escrow it matched, then its settle (with the
    /// acceptance kept). Unknown ids are skipped.
    pub fn events_for_receipts(
        &self,
        ids: &[MessageId],
    ) -> Result<Vec<LedgerEvent>, LedgerStoreError> {
        let mut out = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            let Some(settle) = self.event_by_id(id)? else {
                continue;
            };
            if let Some(escrow) = self.peer.ledger().matched_escrow(id)
                && let Some(e) = self.event_by_id(&escrow)?
            {
                out.push(e);
            }
            out.push(settle);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
