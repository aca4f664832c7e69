//! The embedded anchor journal: a hash-chained, append-only log of
//! `Signed<RollupHeader>` frames in the sled tree `anchors`. The default
//! backend: no set-up, no chain, no fees.
//!
//! Layout: key = ledger node id (32 bytes) | epoch (u64 big-endian), value =
//! the header's signed frame bytes, as received. One chain per ledger (the
//! header's signer), in epoch order; each header's `prev` is the
//! [`header_hash`] of the one before it, and the first one's is zero.
//!
//! Appending ([`Journal::anchor`]) checks the signature, that the epoch
//! increases and that `prev` links to the ledger's last header, then inserts
//! and flushes before it answers. Re-appending the exact same frame is a
//! no-op. Every read re-verifies the ledger's whole chain: each frame decodes
//! and its signature verifies (batched), each is stored under its own ledger
//! and epoch, each `prev` links. Any failure is [`AnchorError::Tampered`]
//! naming the first epoch where the chain breaks.
//!
//! What a journal cannot show on its own: a chain rewritten end to end by
//! someone holding the ledger's key, or its last entries cut off (a cut looks
//! like "not anchored yet", never like a valid anchor). The EVM backend is
//! the answer to both. This module does not decide what goes into a header
//! (`protocol::rollup` does) and does not gossip headers.

use std::sync::{Arc, Mutex};

use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::merkle::Hash32;
use rendertrust_protocol::signed::{KeyCache, Signed, verify_batch};
use rendertrust_protocol::wire::RollupHeader;

use super::{
    AnchorBackend, AnchorError, AnchorReceipt, AnchorRef, AnchoredRoot, Anchorer, header_hash,
};
use crate::store::{Store, StoreError};

/// The sled tree the journal lives in.
pub const TREE: &str = "anchors";

/// Frames verified per signature batch while walking a chain (bounds memory).
const BATCH: usize = 256;

const KEY_LEN: usize = 40;

/// The embedded journal backend (cheap to clone).
#[derive(Debug, Clone)]
pub struct Journal {
    tree: sled::Tree,
    /// Serialises appends in this process (sled locks the store against
    /// other processes), so two headers never both link to the same head.
    append: Arc<Mutex<()>>,
}

/// A verified chain position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    index: u64,
    epoch: u64,
    root: Hash32,
    count: u64,
    hash: Hash32,
}

/// The result of walking a ledger's chain.
#[derive(Debug, Default)]
struct Walk {
    /// The last link (the chain's head).
    head: Option<Link>,
    /// The link at the epoch asked for, if any.
    found: Option<(Link, Vec<u8>)>,
}

/// A summary of a verified chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// Headers in the chain.
    pub len: u64,
    /// The last epoch, if any.
    pub head_epoch: Option<u64>,
    /// [`header_hash`] of the last header (zero when empty): the next header's `prev`.
    pub head_hash: Hash32,
}

fn key(ledger: &NodeId, epoch: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[..32].copy_from_slice(ledger.as_bytes());
    k[32..].copy_from_slice(&epoch.to_be_bytes());
    k
}

fn sled_err(e: sled::Error) -> AnchorError {
    AnchorError::Journal {
        action: "store",
        message: e.to_string(),
    }
}

fn tampered(epoch: u64, reason: impl Into<String>) -> AnchorError {
    AnchorError::Tampered {
        epoch,
        reason: reason.into(),
    }
}

/// Verifies the chain of `ledger` from its first header, in batches.
/// Returns its head and, if `want` is given, that epoch's link and frame.
fn walk(tree: &sled::Tree, ledger: &NodeId, want: Option<u64>) -> Result<Walk, AnchorError> {
    let entries = tree
        .scan_prefix(ledger.as_bytes())
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_err));
    walk_entries(ledger, entries, want)
}

/// [`walk`] over `(key, stored bytes)` pairs in key order, wherever they
/// came from (the local tree, or a copy fetched from the ledger).
fn walk_entries(
    ledger: &NodeId,
    mut iter: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), AnchorError>>,
    want: Option<u64>,
) -> Result<Walk, AnchorError> {
    let mut out = Walk::default();
    let mut cache = KeyCache::new(4);
    let mut pending: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH);
    loop {
        let next = iter.next().transpose()?;
        let done = next.is_none();
        if let Some((k, v)) = next {
            let epoch = match <[u8; 8]>::try_from(k.get(32..).unwrap_or_default()) {
                Ok(e) if k.len() == KEY_LEN => u64::from_be_bytes(e),
                _ => {
                    // Verify what comes before, so the error names where it sits.
                    check_batch(ledger, &mut pending, &mut cache, want, &mut out)?;
                    let after = out.head.map_or(0, |h| h.epoch);
                    return Err(tampered(
                        after,
                        format!(
                            "stray key {} after epoch {after} in the journal",
                            hex::encode(&k)
                        ),
                    ));
                }
            };
            pending.push((epoch, v));
        }
        if pending.len() >= BATCH || (done && !pending.is_empty()) {
            check_batch(ledger, &mut pending, &mut cache, want, &mut out)?;
        }
        if done {
            return Ok(out);
        }
    }
}

fn check_batch(
    ledger: &NodeId,
    pending: &mut Vec<(u64, Vec<u8>)>,
    cache: &mut KeyCache,
    want: Option<u64>,
    out: &mut Walk,
) -> Result<(), AnchorError> {
    let mut frames = Vec::with_capacity(pending.len());
    for (epoch, bytes) in pending.iter() {
        let frame = Signed::<RollupHeader>::from_slice(bytes)
            .map_err(|e| tampered(*epoch, format!("stored frame does not decode: {e}")))?;
        frames.push(frame);
    }
    let verified = verify_batch(&frames, cache);
    for (((epoch, bytes), frame), result) in pending.drain(..).zip(&frames).zip(verified) {
        let header = result.map_err(|e| tampered(epoch, format!("stored header: {e}")))?;
        if frame.signer() != *ledger {
            return Err(tampered(
                epoch,
                format!(
                    "header signed by {} is stored in the chain of {ledger}",
                    frame.signer()
                ),
            ));
        }
        if header.epoch != epoch {
            return Err(tampered(
                epoch,
                format!(
                    "header of epoch {} is stored under epoch {epoch}",
                    header.epoch
                ),
            ));
        }
        let expected_prev = out.head.map_or([0; 32], |h| h.hash);
        if header.prev != expected_prev {
            return Err(tampered(
                epoch,
                format!(
                    "prev is {}, but the header before it hashes to {} (zero for the first): a header was removed, replaced or inserted",
                    hex::encode(header.prev),
                    hex::encode(expected_prev)
                ),
            ));
        }
        let link = Link {
            index: out.head.map_or(0, |h| h.index + 1),
            epoch,
            root: header.root,
            count: header.count,
            hash: header_hash(frame),
        };
        if want == Some(epoch) {
            out.found = Some((link, bytes));
        }
        out.head = Some(link);
    }
    Ok(())
}

impl Journal {
    /// Opens the journal in the node's store.
    pub fn open(store: &Store) -> Result<Journal, StoreError> {
        Ok(Journal {
            tree: store.tree(TREE)?,
            append: Arc::new(Mutex::new(())),
        })
    }

    /// Verifies `ledger`'s whole chain and summarises it.
    pub async fn verify_chain(&self, ledger: &NodeId) -> Result<ChainSummary, AnchorError> {
        let tree = self.tree.clone();
        let ledger = *ledger;
        blocking(move || walk(&tree, &ledger, None))
            .await
            .map(|w| ChainSummary {
                len: w.head.map_or(0, |h| h.index + 1),
                head_epoch: w.head.map(|h| h.epoch),
                head_hash: w.head.map_or([0; 32], |h| h.hash),
            })
    }

    /// The stored signed header of `ledger` for `epoch`, after verifying the
    /// whole chain.
    pub async fn header(
        &self,
        ledger: &NodeId,
        epoch: u64,
    ) -> Result<Option<Signed<RollupHeader>>, AnchorError> {
        let tree = self.tree.clone();
        let ledger = *ledger;
        let walk = blocking(move || walk(&tree, &ledger, Some(epoch))).await?;
        match walk.found {
            None => Ok(None),
            Some((_, bytes)) => Signed::from_bytes(bytes)
                .map(Some)
                .map_err(|e| tampered(epoch, e.to_string())),
        }
    }

    fn append(&self, header: &Signed<RollupHeader>) -> Result<AnchorReceipt, AnchorError> {
        let h = header.verify()?;
        if h.root == [0; 32] {
            return Err(AnchorError::ZeroRoot { epoch: h.epoch });
        }
        let ledger = header.signer();
        let receipt = |link: Link, already_anchored| AnchorReceipt {
            epoch: link.epoch,
            root: link.root,
            count: link.count,
            already_anchored,
            reference: AnchorRef::Journal {
                index: link.index,
                header_hash: hex::encode(link.hash),
            },
        };
        // A poisoned lock only means another append panicked; the chain on
        // disk is re-verified below anyway.
        let _guard = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let walk = walk(&self.tree, &ledger, Some(h.epoch))?;
        if let Some((link, stored)) = walk.found {
            if stored == header.as_bytes() {
                return Ok(receipt(link, true));
            }
            return Err(AnchorError::Conflict {
                epoch: h.epoch,
                anchorer: Anchorer::Ledger(ledger).to_string(),
                anchored_root: hex::encode(link.root),
                anchored_count: link.count,
                new_root: hex::encode(h.root),
                new_count: h.count,
            });
        }
        if let Some(head) = walk.head
            && h.epoch <= head.epoch
        {
            return Err(AnchorError::EpochNotIncreasing {
                ledger,
                epoch: h.epoch,
                head_epoch: head.epoch,
            });
        }
        let expected = walk.head.map_or([0; 32], |l| l.hash);
        if h.prev != expected {
            return Err(AnchorError::BrokenLink {
                ledger,
                epoch: h.epoch,
                expected: hex::encode(expected),
                found: hex::encode(h.prev),
            });
        }
        // Compare-and-swap from "absent": never overwrites, even if a
        // second process got in despite sled's lock.
        self.tree
            .compare_and_swap(
                key(&ledger, h.epoch),
                None::<&[u8]>,
                Some(header.as_bytes()),
            )
            .map_err(sled_err)?
            .map_err(|_| AnchorError::Conflict {
                epoch: h.epoch,
                anchorer: Anchorer::Ledger(ledger).to_string(),
                anchored_root: "(written concurrently)".into(),
                anchored_count: 0,
                new_root: hex::encode(h.root),
                new_count: h.count,
            })?;
        Ok(receipt(
            Link {
                index: walk.head.map_or(0, |l| l.index + 1),
                epoch: h.epoch,
                root: h.root,
                count: h.count,
                hash: header_hash(header),
            },
            false,
        ))
    }
}

/// Raw journal entries (`(epoch, stored bytes)`, epochs ascending) and
/// whether more follow.
pub type RawPage = (Vec<(u64, Vec<u8>)>, bool);

impl Journal {
    /// Up to `limit` raw entries of `ledger`'s chain with epochs after
    /// `after`, as stored (not verified: the reader verifies), and whether
    /// more follow. What a ledger serves to verifiers elsewhere; a stored
    /// value longer than `max_len` is cut to it (it then fails to decode,
    /// which the verifier reports as tampering).
    pub fn raw_entries(
        &self,
        ledger: &NodeId,
        after: Option<u64>,
        limit: usize,
        max_len: usize,
    ) -> Result<RawPage, AnchorError> {
        let start = match after {
            None => key(ledger, 0).to_vec(),
            Some(u64::MAX) => return Ok((Vec::new(), false)),
            Some(e) => key(ledger, e + 1).to_vec(),
        };
        let mut out = Vec::new();
        let mut more = false;
        for item in self.tree.range(start..) {
            let (k, v) = item.map_err(sled_err)?;
            if !k.starts_with(ledger.as_bytes()) {
                break;
            }
            if out.len() >= limit {
                more = true;
                break;
            }
            // A stray key (not 40 bytes) is served under an impossible epoch
            // so that the reader's walk reports it.
            let epoch = <[u8; 8]>::try_from(k.get(32..).unwrap_or_default())
                .ok()
                .filter(|_| k.len() == KEY_LEN)
                .map_or(u64::MAX, u64::from_be_bytes);
            out.push((epoch, v.get(..max_len).unwrap_or(&v).to_vec()));
        }
        Ok((out, more))
    }
}

/// A copy of one ledger's anchor journal, fetched from that ledger (raw
/// entries, epochs ascending, from the first). Reading it verifies the whole
/// copy exactly as [`Journal`] verifies its own tree, so a verifier anywhere
/// detects a stored header that was altered, removed or inserted.
#[derive(Debug, Clone)]
pub struct ChainCopy {
    ledger: NodeId,
    entries: Vec<(u64, Vec<u8>)>,
}

impl ChainCopy {
    /// A copy of `ledger`'s chain from its entries.
    pub fn new(ledger: NodeId, entries: Vec<(u64, Vec<u8>)>) -> Self {
        ChainCopy { ledger, entries }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn walk(&self, want: Option<u64>) -> Result<Walk, AnchorError> {
        let ledger = self.ledger;
        let entries = self.entries.iter().map(move |(epoch, v)| {
            let k = if *epoch == u64::MAX {
                // served for a stray key: a key that cannot be an epoch's
                let mut k = key(&ledger, *epoch).to_vec();
                k.push(0);
                k
            } else {
                key(&ledger, *epoch).to_vec()
            };
            Ok((k, v.clone()))
        });
        walk_entries(&self.ledger, entries, want)
    }
}

impl AnchorBackend for ChainCopy {
    async fn anchor(&self, _header: &Signed<RollupHeader>) -> Result<AnchorReceipt, AnchorError> {
        Err(AnchorError::Journal {
            action: "anchoring",
            message: "a fetched copy of a ledger's journal is read-only".into(),
        })
    }

    async fn anchored_root(
        &self,
        anchorer: &Anchorer,
        epoch: u64,
    ) -> Result<Option<AnchoredRoot>, AnchorError> {
        let ledger = ledger_of(anchorer)?;
        if ledger != self.ledger {
            return Err(AnchorError::WrongAnchorer {
                backend: "journal copy",
                expected: "the ledger whose journal was fetched",
                found: anchorer.to_string(),
            });
        }
        let walk = self.walk(Some(epoch))?;
        Ok(walk.found.map(|(link, _)| AnchoredRoot {
            anchorer: *anchorer,
            epoch,
            root: link.root,
            count: link.count,
            reference: AnchorRef::Journal {
                index: link.index,
                header_hash: hex::encode(link.hash),
            },
        }))
    }
}

/// Runs sled work and signature checks off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AnchorError> + Send + 'static,
) -> Result<T, AnchorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AnchorError::Journal {
            action: "background task",
            message: e.to_string(),
        })?
}

fn ledger_of(anchorer: &Anchorer) -> Result<NodeId, AnchorError> {
    match anchorer {
        Anchorer::Ledger(id) => Ok(*id),
        Anchorer::Evm(a) => Err(AnchorError::WrongAnchorer {
            backend: "journal",
            expected: "ledger node id",
            found: format!("EVM account {a}"),
        }),
    }
}

impl AnchorBackend for Journal {
    async fn anchor(&self, header: &Signed<RollupHeader>) -> Result<AnchorReceipt, AnchorError> {
        let this = self.clone();
        let header = header.clone();
        let receipt = blocking(move || this.append(&header)).await?;
        if !receipt.already_anchored {
            self.tree.flush_async().await.map_err(sled_err)?;
            tracing::info!(
                epoch = receipt.epoch,
                count = receipt.count,
                root = %hex::encode(receipt.root),
                "rollup anchored in the journal"
            );
        }
        Ok(receipt)
    }

    async fn anchored_root(
        &self,
        anchorer: &Anchorer,
        epoch: u64,
    ) -> Result<Option<AnchoredRoot>, AnchorError> {
        let ledger = ledger_of(anchorer)?;
        let tree = self.tree.clone();
        let walk = blocking(move || walk(&tree, &ledger, Some(epoch))).await?;
        Ok(walk.found.map(|(link, _)| AnchoredRoot {
            anchorer: *anchorer,
            epoch,
            root: link.root,
            count: link.count,
            reference: AnchorRef::Journal {
                index: link.index,
                header_hash: hex::encode(link.hash),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anchor::{Verdict, check_receipt};
    use rendertrust_protocol::identity::NodeKey;
    use rendertrust_protocol::merkle::MerkleTree;
    use rendertrust_protocol::signed::MessageId;

    fn node_key(seed: u8) -> NodeKey {
        NodeKey::from_secret_bytes(&[seed; 32])
    }

    fn header(
        k: &NodeKey,
        epoch: u64,
        root: Hash32,
        count: u64,
        prev: Hash32,
    ) -> Signed<RollupHeader> {
        Signed::sign(
            k,
            &RollupHeader {
                epoch,
                root,
                count,
                ledger: k.node_id(),
                prev,
                closed_at_ms: 1_780_000_000_000 + epoch,
            },
        )
        .unwrap()
    }

    /// A chain of `n` headers for epochs 1..=n (root [epoch; 32], count 10 × epoch).
    fn chain(k: &NodeKey, n: u64) -> Vec<Signed<RollupHeader>> {
        let mut prev = [0; 32];
        (1..=n)
            .map(|e| {
                let h = header(k, e, [e as u8; 32], e * 10, prev);
                prev = header_hash(&h);
                h
            })
            .collect()
    }

    async fn journal_with(dir: &std::path::Path, headers: &[Signed<RollupHeader>]) -> Journal {
        let j = Journal::open(&Store::open(dir).unwrap()).unwrap();
        for h in headers {
            let r = j.anchor(h).await.unwrap();
            assert!(!r.already_anchored);
        }
        j
    }

    fn ledger(k: &NodeKey) -> Anchorer {
        Anchorer::Ledger(k.node_id())
    }

    #[tokio::test]
    async fn append_read_back_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let k = node_key(1);
        let hs = chain(&k, 3);
        {
            let j = journal_with(d.path(), &hs).await;
            let r = j.anchored_root(&ledger(&k), 2).await.unwrap().unwrap();
            assert_eq!((r.epoch, r.root, r.count), (2, [2; 32], 20));
            assert!(matches!(r.reference, AnchorRef::Journal { index: 1, .. }));
            // The same frame again: a no-op.
            let again = j.anchor(&hs[2]).await.unwrap();
            assert!(again.already_anchored);
            assert!(matches!(
                again.reference,
                AnchorRef::Journal { index: 2, .. }
            ));
        }
        // Survives a reopen (appends are flushed).
        let j = Journal::open(&Store::open(d.path()).unwrap()).unwrap();
        let s = j.verify_chain(&k.node_id()).await.unwrap();
        assert_eq!(s.len, 3);
        assert_eq!(s.head_epoch, Some(3));
        assert_eq!(s.head_hash, header_hash(&hs[2]));
        assert!(j.anchored_root(&ledger(&k), 4).await.unwrap().is_none());
        assert_eq!(j.header(&k.node_id(), 1).await.unwrap().unwrap(), hs[0]);
        // Another ledger's chain is separate (and empty).
        assert!(
            j.anchored_root(&ledger(&node_key(2)), 1)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn epochs_may_skip_but_must_increase_and_link() {
        let d = tempfile::tempdir().unwrap();
        let k = node_key(1);
        let hs = chain(&k, 2);
        let j = journal_with(d.path(), &hs).await;
        let head = header_hash(&hs[1]);

        // Epoch 5 after 2, linked: fine.
        j.anchor(&header(&k, 5, [5; 32], 1, head)).await.unwrap();
        let head5 = j.verify_chain(&k.node_id()).await.unwrap().head_hash;

        // Not increasing.
        let e = j
            .anchor(&header(&k, 4, [4; 32], 1, head5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                AnchorError::EpochNotIncreasing {
                    epoch: 4,
                    head_epoch: 5,
                    ..
                }
            ),
            "{e}"
        );

        // Does not link to the head.
        let e = j
            .anchor(&header(&k, 6, [6; 32], 1, head))
            .await
            .unwrap_err();
        assert!(matches!(e, AnchorError::BrokenLink { epoch: 6, .. }), "{e}");
        let e = j
            .anchor(&header(&node_key(3), 1, [1; 32], 1, [9; 32]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, AnchorError::BrokenLink { epoch: 1, .. }),
            "a first header's prev must be zero: {e}"
        );

        // Another root for an anchored epoch, even one that links.
        let e = j
            .anchor(&header(&k, 2, [0xee; 32], 20, header_hash(&hs[0])))
            .await
            .unwrap_err();
        assert!(matches!(e, AnchorError::Conflict { epoch: 2, .. }), "{e}");
        assert!(e.to_string().contains("never rewritten"), "{e}");

        // The zero root.
        let e = j
            .anchor(&header(&k, 9, [0; 32], 0, head5))
            .await
            .unwrap_err();
        assert!(matches!(e, AnchorError::ZeroRoot { epoch: 9 }), "{e}");

        // A header whose signature fails.
        let mut bytes = header(&k, 9, [9; 32], 1, head5).into_bytes();
        bytes[40] ^= 1;
        let bad = Signed::<RollupHeader>::from_bytes(bytes).unwrap();
        assert!(matches!(
            j.anchor(&bad).await,
            Err(AnchorError::InvalidHeader(_))
        ));

        // The journal keeps roots per ledger id, not per EVM account.
        let evm = Anchorer::Evm(alloy::primitives::Address::ZERO);
        assert!(matches!(
            j.anchored_root(&evm, 1).await,
            Err(AnchorError::WrongAnchorer { .. })
        ));
        // None of the refused headers was stored.
        assert_eq!(j.verify_chain(&k.node_id()).await.unwrap().len, 3);
    }

    fn stored(t: &sled::Tree, epoch: u64) -> Vec<u8> {
        t.get(key(&node_key(1).node_id(), epoch))
            .unwrap()
            .unwrap()
            .to_vec()
    }

    fn put(t: &sled::Tree, epoch: u64, v: &[u8]) {
        t.insert(key(&node_key(1).node_id(), epoch), v).unwrap();
    }

    /// Alters the stored bytes directly in sled (flips bits, truncates,
    /// removes, moves, replaces entries): every read of the chain reports
    /// `Tampered` at the first epoch where it breaks.
    #[tokio::test]
    async fn tampering_with_stored_bytes_is_detected() {
        let k = node_key(1);
        let hs = chain(&k, 4);
        type Tamper = fn(&sled::Tree);
        let cases: [(&str, u64, Tamper); 8] = [
            ("a body byte flipped", 2, |t| {
                let mut v = stored(t, 2);
                let n = v.len();
                v[n - 20] ^= 0x01;
                put(t, 2, &v);
            }),
            ("a signature byte flipped", 3, |t| {
                let mut v = stored(t, 3);
                v[40] ^= 0x80;
                put(t, 3, &v);
            }),
            ("a frame truncated", 1, |t| {
                let v = stored(t, 1);
                put(t, 1, &v[..v.len() - 3]);
            }),
            ("a middle entry removed", 3, |t| {
                t.remove(key(&node_key(1).node_id(), 2)).unwrap();
            }),
            ("an entry moved to another epoch", 7, |t| {
                let v = stored(t, 4);
                t.remove(key(&node_key(1).node_id(), 4)).unwrap();
                put(t, 7, &v);
            }),
            ("a validly signed replacement by the key holder", 3, |t| {
                let first = Signed::<RollupHeader>::from_bytes(stored(t, 1)).unwrap();
                let forged = header(&node_key(1), 2, [0xee; 32], 20, header_hash(&first));
                put(t, 2, forged.as_bytes());
            }),
            ("another ledger's header spliced in", 2, |t| {
                let other = header(&node_key(9), 2, [2; 32], 20, [0; 32]);
                put(t, 2, other.as_bytes());
            }),
            ("a stray key", 4, |t| {
                let mut k = key(&node_key(1).node_id(), 5).to_vec();
                k.push(0);
                t.insert(k, b"x".as_slice()).unwrap();
            }),
        ];

        for (name, bad_epoch, tamper) in cases {
            let d = tempfile::tempdir().unwrap();
            let j = journal_with(d.path(), &hs).await;
            assert!(j.anchored_root(&ledger(&k), 1).await.unwrap().is_some());
            tamper(&j.tree);
            for read_epoch in [1, 4] {
                let e = j.anchored_root(&ledger(&k), read_epoch).await.unwrap_err();
                assert!(
                    matches!(e, AnchorError::Tampered { epoch, .. } if epoch == bad_epoch),
                    "{name}: reading epoch {read_epoch}: {e}"
                );
            }
            assert!(j.verify_chain(&k.node_id()).await.is_err(), "{name}");
            // A new header is refused on a broken chain.
            let next = header(&k, 10, [10; 32], 1, header_hash(&hs[3]));
            let e = j.anchor(&next).await.unwrap_err();
            assert!(matches!(e, AnchorError::Tampered { .. }), "{name}: {e}");
        }
    }

    /// A copy of the chain fetched page by page (as a verifier elsewhere gets
    /// it) reads like the journal itself, and reports the same tampering.
    #[tokio::test]
    async fn a_fetched_copy_verifies_like_the_journal() {
        let k = node_key(1);
        let hs = chain(&k, 5);
        let fetch = |j: &Journal| {
            let mut entries = Vec::new();
            let mut after = None;
            loop {
                let (page, more) = j.raw_entries(&k.node_id(), after, 2, 1024).unwrap();
                after = page.last().map(|(e, _)| *e);
                entries.extend(page);
                if !more {
                    break;
                }
            }
            ChainCopy::new(k.node_id(), entries)
        };
        let d = tempfile::tempdir().unwrap();
        let j = journal_with(d.path(), &hs).await;
        let copy = fetch(&j);
        assert_eq!(copy.len(), 5);
        for epoch in 1..=5 {
            assert_eq!(
                copy.anchored_root(&ledger(&k), epoch).await.unwrap(),
                j.anchored_root(&ledger(&k), epoch).await.unwrap()
            );
        }
        assert!(copy.anchored_root(&ledger(&k), 6).await.unwrap().is_none());
        assert!(matches!(
            copy.anchored_root(&ledger(&node_key(2)), 1).await,
            Err(AnchorError::WrongAnchorer { .. })
        ));
        assert!(copy.anchor(&hs[0]).await.is_err());
        // Entries after an epoch only.
        let (tail, more) = j.raw_entries(&k.node_id(), Some(3), 10, 1024).unwrap();
        assert_eq!(tail.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [4, 5]);
        assert!(!more);

        // Tampered in the store: the copy reports it like the journal.
        let mut v = stored(&j.tree, 3);
        let n = v.len();
        v[n - 20] ^= 1;
        put(&j.tree, 3, &v);
        let e = fetch(&j).anchored_root(&ledger(&k), 5).await.unwrap_err();
        assert!(matches!(e, AnchorError::Tampered { epoch: 3, .. }), "{e}");
        // An oversize stored value is served cut, and still reported.
        put(&j.tree, 3, &vec![7u8; 4000]);
        let (page, _) = j.raw_entries(&k.node_id(), None, 10, 1024).unwrap();
        assert!(page.iter().all(|(_, v)| v.len() <= 1024));
        let e = fetch(&j).anchored_root(&ledger(&k), 1).await.unwrap_err();
        assert!(matches!(e, AnchorError::Tampered { epoch: 3, .. }), "{e}");
        // A stray key is served and reported.
        let d2 = tempfile::tempdir().unwrap();
        let j2 = journal_with(d2.path(), &hs).await;
        let mut stray = key(&k.node_id(), 9).to_vec();
        stray.push(0);
        j2.tree.insert(stray, b"x".as_slice()).unwrap();
        let e = fetch(&j2).anchored_root(&ledger(&k), 1).await.unwrap_err();
        assert!(matches!(e, AnchorError::Tampered { .. }), "{e}");
    }

    /// The `receipt verify` path on the journal: a receipt checks against
    /// the anchored root, and is reported as tampered once the stored header
    /// is altered to point at another root.
    #[tokio::test]
    async fn receipt_verify_detects_a_tampered_header() {
        let d = tempfile::tempdir().unwrap();
        let k = node_key(1);
        let mut receipts: Vec<Hash32> = (0u8..5).map(|i| *blake3::hash(&[i]).as_bytes()).collect();
        receipts.sort();
        let tree = MerkleTree::from_sorted_unique(receipts.clone()).unwrap();
        let j = journal_with(d.path(), &[header(&k, 1, tree.root(), 5, [0; 32])]).await;
        let proof = tree.proof(2).unwrap();
        let receipt = MessageId(receipts[2]);

        let v = check_receipt(&j, &receipt, &proof, &ledger(&k), 1).await;
        assert!(v.is_included(), "{v}");
        let v = check_receipt(&j, &receipt, &proof, &ledger(&k), 2).await;
        assert!(matches!(v, Verdict::NotAnchored { .. }), "{v}");

        // Overwrite the stored root, in place, with another tree's root.
        let mut v = stored(&j.tree, 1);
        let at = v
            .windows(32)
            .position(|w| w == tree.root().as_slice())
            .unwrap();
        v[at..at + 32].copy_from_slice(&[0xaa; 32]);
        put(&j.tree, 1, &v);

        let v = check_receipt(&j, &receipt, &proof, &ledger(&k), 1).await;
        assert!(matches!(v, Verdict::Tampered { .. }), "{v}");
        assert!(v.to_string().starts_with("TAMPERED"), "{v}");
    }
}
