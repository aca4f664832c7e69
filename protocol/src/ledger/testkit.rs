//! Deterministic keys and well-formed ledger events, for tests, benches, the
//! fuzz seeds and the node's tests. Not part of the stable API.
//!
//! Keys are derived from a seed (no RNG), so every run signs the same bytes.

use crate::identity::{NodeId, NodeKey};
use crate::signed::{Signed, SignedError};
use crate::wire::{
    CloseOutcome, ImageFormat, JobId, JobKind, JobSpec, Mint, Receipt, ReceiptAcceptance,
    Requirements, ResourceUsage, SplitRule, TaskAccept, TaskClosed, TaskId, TaskOffer,
    VerificationPolicy,
};

use super::{LedgerConfig, LedgerEvent};

/// A fixed "now" the kit's messages are built around (Unix ms).
pub const T0: u64 = 1_780_000_000_000;
/// Credits each kit creator gets at genesis.
pub const GENESIS: u64 = 1_000_000;

/// Keys for every role, derived from a seed.
#[derive(Debug)]
pub struct Kit {
    /// The mint authority.
    pub authority: NodeKey,
    /// Creators.
    pub creators: Vec<NodeKey>,
    /// Schedulers.
    pub schedulers: Vec<NodeKey>,
    /// Workers.
    pub workers: Vec<NodeKey>,
    /// Ledger peers.
    pub ledgers: Vec<NodeKey>,
}

fn derive_key(seed: u64, role: &str, i: usize) -> NodeKey {
    let mut h = blake3::Hasher::new_derive_key("rendertrust 2026-11 ledger testkit v1");
    h.update(&seed.to_le_bytes());
    h.update(role.as_bytes());
    h.update(&(i as u64).to_le_bytes());
    NodeKey::from_secret_bytes(h.finalize().as_bytes())
}

impl Kit {
    /// Two creators, two schedulers, four workers, three ledgers.
    pub fn new(seed: u64) -> Self {
        let many = |role: &str, n: usize| (0..n).map(|i| derive_key(seed, role, i)).collect();
        Kit {
            authority: derive_key(seed, "authority", 0),
            creators: many("creator", 2),
            schedulers: many("scheduler", 2),
            workers: many("worker", 4),
            ledgers: many("ledger", 3),
        }
    }

    /// A ledger config with this kit's authority and a genesis allocation
    /// of [`GENESIS`] to every creator.
    pub fn config(&self) -> LedgerConfig {
        LedgerConfig {
            mint_authority: Some(self.authority.node_id()),
            genesis: self
                .creators
                .iter()
                .map(|c| (c.node_id(), GENESIS))
                .collect(),
            ..LedgerConfig::default()
        }
    }

    fn all_keys(&self) -> impl Iterator<Item = &NodeKey> {
        std::iter::once(&self.authority)
            .chain(&self.creators)
            .chain(&self.schedulers)
            .chain(&self.workers)
            .chain(&self.ledgers)
    }

    /// The kit's key of a node.
    pub fn key_of(&self, node: &NodeId) -> Option<&NodeKey> {
        self.all_keys().find(|k| k.node_id() == *node)
    }

    /// A job of `tasks` frames by creator `creator`, ceiling `max_price`,
    /// deadline a day after [`T0`].
    pub fn spec(
        &self,
        creator: usize,
        nonce: u64,
        tasks: u32,
        max_price: u64,
    ) -> Result<Signed<JobSpec>, SignedError> {
        let key = &self.creators[creator % self.creators.len()];
        let spec = JobSpec {
            id: JobId::derive(&key.node_id(), nonce),
            creator: key.node_id(),
            nonce,
            created_at_ms: T0,
            kind: JobKind::Builtin,
            inputs: Vec::new(),
            requirements: Requirements::default(),
            split: SplitRule::Frames {
                start: 1,
                end: tasks.max(1),
                step: 1,
            },
            width: 64,
            height: 64,
            format: ImageFormat::Png,
            max_price_per_task: max_price,
            verification: VerificationPolicy::None,
            deadline_ms: T0 + 86_400_000,
        };
        Signed::sign(key, &spec)
    }

    /// The offer of `task` attempt `attempt` to worker `worker` by scheduler
    /// `scheduler`: reserved 30 s after [`T0`], deadline an hour after.
    pub fn offer(
        &self,
        task: TaskId,
        attempt: u32,
        worker: usize,
        scheduler: usize,
        price: u64,
    ) -> TaskOffer {
        TaskOffer {
            task,
            scheduler: self.schedulers[scheduler % self.schedulers.len()].node_id(),
            worker: self.workers[worker % self.workers.len()].node_id(),
            attempt,
            price,
            reserve_until_ms: T0 + 30_000,
            deadline_ms: T0 + 3_600_000,
        }
    }

    /// An escrow event for `offer` under `spec`, accepted by its worker.
    pub fn escrow_for(
        &self,
        spec: &Signed<JobSpec>,
        offer: &TaskOffer,
        accepted: bool,
    ) -> Result<LedgerEvent, SignedError> {
        let scheduler = self.signer(&offer.scheduler)?;
        let worker = self.signer(&offer.worker)?;
        let accept = TaskAccept {
            task: offer.task,
            worker: offer.worker,
            attempt: offer.attempt,
            accepted,
            reason: if accepted {
                String::new()
            } else {
                "busy".into()
            },
        };
        Ok(LedgerEvent::Escrow {
            spec: spec.clone(),
            offer: Signed::sign(scheduler, offer)?,
            accept: Signed::sign(worker, &accept)?,
        })
    }

    /// An accepted escrow of task `index` of `spec`.
    pub fn escrow(
        &self,
        spec: &Signed<JobSpec>,
        index: u32,
        attempt: u32,
        worker: usize,
        scheduler: usize,
        price: u64,
    ) -> Result<LedgerEvent, SignedError> {
        let job = spec.verify()?.id;
        let offer = self.offer(TaskId { job, index }, attempt, worker, scheduler, price);
        self.escrow_for(spec, &offer, true)
    }

    /// The receipt a worker signs for `offer` of a job by `creator`: ran a
    /// minute, starting a minute after [`T0`].
    pub fn receipt(&self, offer: &TaskOffer, creator: &NodeId) -> Receipt {
        Receipt {
            task: offer.task,
            worker: offer.worker,
            creator: *creator,
            scheduler: offer.scheduler,
            attempt: offer.attempt,
            output_hash: *blake3::hash(&offer.task.index.to_le_bytes()).as_bytes(),
            usage: ResourceUsage {
                gpu_ms: 50_000,
                cpu_ms: 30_000,
                peak_mem_bytes: 1 << 30,
            },
            started_at_ms: T0 + 60_000,
            finished_at_ms: T0 + 120_000,
            price: offer.price,
        }
    }

    /// A settle event: `receipt` signed by its worker, countersigned by
    /// `countersigner` (normally the receipt's creator) at `accepted_at_ms`.
    pub fn settle_by(
        &self,
        receipt: &Receipt,
        countersigner: &NodeId,
        accepted_at_ms: u64,
    ) -> Result<LedgerEvent, SignedError> {
        let receipt = Signed::sign(self.signer(&receipt.worker)?, receipt)?;
        let acceptance = ReceiptAcceptance {
            receipt_id: receipt.id().0,
            creator: *countersigner,
            accepted_at_ms,
        };
        Ok(LedgerEvent::Settle {
            acceptance: Signed::sign(self.signer(countersigner)?, &acceptance)?,
            receipt,
        })
    }

    /// A settle of `receipt` countersigned by its creator.
    pub fn settle(
        &self,
        receipt: &Receipt,
        accepted_at_ms: u64,
    ) -> Result<LedgerEvent, SignedError> {
        self.settle_by(receipt, &receipt.creator, accepted_at_ms)
    }

    /// A refund of `offer`'s attempt, signed by its scheduler.
    pub fn refund(
        &self,
        offer: &TaskOffer,
        outcome: CloseOutcome,
    ) -> Result<LedgerEvent, SignedError> {
        let closed = TaskClosed {
            task: offer.task,
            attempt: offer.attempt,
            worker: offer.worker,
            scheduler: offer.scheduler,
            outcome,
            closed_at_ms: T0 + 200_000,
        };
        Ok(LedgerEvent::Refund {
            closed: Signed::sign(self.signer(&offer.scheduler)?, &closed)?,
        })
    }

    /// A mint by `by` (normally the authority).
    pub fn mint_by(
        &self,
        by: &NodeKey,
        to: NodeId,
        amount: u64,
        nonce: u64,
    ) -> Result<LedgerEvent, SignedError> {
        let mint = Mint {
            authority: by.node_id(),
            to,
            amount,
            nonce,
        };
        Ok(LedgerEvent::Mint {
            mint: Signed::sign(by, &mint)?,
        })
    }

    /// A mint by the authority.
    pub fn mint(&self, to: NodeId, amount: u64, nonce: u64) -> Result<LedgerEvent, SignedError> {
        self.mint_by(&self.authority, to, amount, nonce)
    }

    fn signer(&self, node: &NodeId) -> Result<&NodeKey, SignedError> {
        self.key_of(node)
            .ok_or(SignedError::BadSignature { signer: *node })
    }

    /// One event of each kind for one task: escrow, settle, refund, mint.
    pub fn sample_events(&self) -> Vec<LedgerEvent> {
        let build = || -> Result<Vec<LedgerEvent>, SignedError> {
            let spec = self.spec(0, 1, 4, 10)?;
            let job = spec.verify()?.id;
            let offer = self.offer(TaskId { job, index: 1 }, 0, 0, 0, 7);
            let receipt = self.receipt(&offer, &self.creators[0].node_id());
            Ok(vec![
                self.escrow_for(&spec, &offer, true)?,
                self.settle(&receipt, T0 + 130_000)?,
                self.refund(&offer, CloseOutcome::Lapsed)?,
                self.mint(self.workers[0].node_id(), 100, 1)?,
            ])
        };
        build().unwrap_or_default()
    }
}
