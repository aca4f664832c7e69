//! The credit ledger: accounts per node, escrow, settle, refund, mint.
//!
//! A sans-IO state machine fed with [`LedgerEvent`]s (as they arrive on the
//! `receipts` topic, or from a peer during reconciliation) and the clock
//! (`now_ms`). It owns the credit rules and nothing else: it does not decide
//! epochs or roots ([`crate::rollup`] does, fed with the receipts this
//! machine matches; [`LedgerPeer`] wires the two), and it persists nothing
//! (the node journals every event it accepted and replays the journal).
//!
//! # Accounts and entries
//! Accounts are [`Account::Node`] (one per node id), [`Account::Escrow`] (one
//! per escrow) and [`Account::Mint`] (the source of all credits; its balance
//! is minus everything minted). Every movement is a double-entry [`Entry`]
//! (`from` → `to`, an amount); balances are the sums of the entries, so
//! `Σ node balances + Σ escrow balances = minted` always holds (the
//! `Mint` account balances the books). [`Ledger::entries`] lists them;
//! balances are kept incrementally and [`Ledger::recompute_accounts`]
//! re-derives them from the entries (the property tests check both agree).
//!
//! # Admission: each event on its own merits
//! An event is *admitted* (stored) or *rejected* by checks that depend on
//! the event alone, never on which other events arrived before it:
//! * all signatures, batched ([`crate::signed::verify_batch`]), before
//!   anything else; then the messages' internal consistency:
//! * **escrow**: the spec (creator-signed), the offer (scheduler-signed) and
//!   the accept (worker-signed) agree: `offer.task` is a task of the spec's
//!   job, `offer.price ≤ spec.max_price_per_task`, the accept answers that
//!   offer (task, attempt, worker) with `accepted = true`;
//! * **refund**: a valid `TaskClosed` (scheduler-signed);
//! * **settle**: a worker-signed receipt and a creator-signed acceptance of
//!   *that* receipt (`acceptance.receipt_id` = the receipt's id,
//!   `acceptance.creator == receipt.creator`); resource use within physics:
//!   `cpu_ms ≤ wall × max_cpu_parallelism`, `gpu_ms ≤ wall × max_gpu_parallelism`
//!   (wall = `finished − started`), otherwise *inflated usage*;
//! * **mint**: signed by the configured mint authority.
//!
//! Replays (an id already admitted) are `Duplicate` and change nothing. Ids:
//! see [`LedgerEvent::id`].
//!
//! # Resolution: the state is a function of the admitted set
//! How admitted events combine is decided per task by one pure function of
//! the task's admitted events (and `now`, for expiry), so **two ledgers
//! that admitted the same events end in the same state whatever the order
//! of arrival** — the ordering rule:
//! 1. A settle *matches* an escrow of the same task when attempt, worker,
//!    scheduler, creator and price are equal and the receipt's wall clock
//!    lies in the offer's window: `started ≥ reserve_until − max_offer_reserve − skew`
//!    and `finished ≤ deadline + skew`. A settle that matches no escrow pays
//!    nothing: it waits (a settle that arrives before its escrow), counted
//!    in a bounded pending set; [`Unmatched`] says why (no escrow yet, the
//!    escrow names another worker: "never assigned", price, window, creator).
//! 2. **One settle per task, ever.** Among the task's matching settles the
//!    winner is the lowest `(attempt refunded?, attempt, receipt id)`: a
//!    receipt of a live attempt beats one of an attempt its scheduler
//!    closed, an earlier attempt beats a later one. The winner's escrow pays
//!    the worker; every other escrow of the task returns to the creator.
//!    Two matching settles for one task need the creator to countersign two
//!    results of one task (which `protocol::creator` never does).
//! 3. **A countersigned receipt beats a refund of the same attempt**: with
//!    no other settle for the task, a refunded attempt is still paid if its
//!    settle matches (the scheduler gave up, but the work was done and
//!    accepted). A refund arriving *after* the settle changes nothing;
//!    a settle arriving after the refund takes the credits back from the
//!    creator (whose balance may go negative, below).
//! 4. Without a winner, a task holds **at most one escrow**: the highest
//!    `(attempt, escrow id)` among escrows neither refunded (a `TaskClosed`
//!    by the same scheduler for the same attempt and worker) nor expired;
//!    the others return to the creator. A re-offer (attempt + 1) thus frees
//!    the previous attempt's credits even before its refund arrives, and a
//!    stranger publishing escrows for a creator's job locks at most one
//!    price per task.
//! 5. An escrow **expires** at `spec.deadline_ms + escrow_grace_ms` (the
//!    creator-signed job deadline); its credits return to the creator unless
//!    a settle matches it later (rule 3 again). Time is the only input
//!    besides the event set: drivers call [`Ledger::handle_timeout`].
//!
//! Each step moves credits by re-deriving the task's entries and posting
//! the difference, so an event can only ever change its own task (and, for
//! mints, one balance).
//!
//! # Decisions
//! * **No balance check at escrow** (a creator may go negative): any check
//!   of the form "enough credits left" makes the outcome depend on which of
//!   two competing escrows arrived first, and breaks rule 3 (a settle after
//!   a refund must be able to take the credits back). By the time an escrow
//!   is published the worker is already working; refusing it would only
//!   leave the worker unpaid. Admission control belongs before the offer:
//!   schedulers refuse jobs of creators whose [`Ledger::balance`] cannot
//!   cover them.
//! * Escrows are keyed by their three frames ([`wire::escrow_id`]): a
//!   scheduler that signs two offers for one attempt makes two escrows, and
//!   rules 2 and 4 still pay and hold at most one.
//! * A receipt countersigned twice (different acceptance times) keeps the
//!   earliest `(accepted_at_ms, acceptance id)`: the epoch a receipt falls
//!   in is then a function of the set too.
//! * Bounds: at most `max_per_task` escrows, refunds and settles per task
//!   and `max_pending` unmatched settles and refunds in all; beyond them an
//!   event is refused (`TaskFull`, `PendingFull`). Only past these bounds can
//!   two ledgers diverge by arrival order; they exist against floods that
//!   gossip rate limits let through.
//! * Only the scheduler that signed an attempt's offer can refund it. A
//!   replica that takes a job over cannot refund its predecessor's open
//!   attempts; they return by rule 4 (its re-offer) or rule 5 (expiry).

pub mod wire;

mod peer;
#[doc(hidden)]
pub mod testkit;

pub use peer::LedgerPeer;
pub use wire::LedgerEvent;

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::NodeId;
use crate::signed::{KeyCache, MessageId, Signed, SignedError, verify_batch};
use crate::wire::{
    JobId, JobSpec, Mint, Receipt, ReceiptAcceptance, TaskAccept, TaskClosed, TaskId, TaskOffer,
    WireMessage,
};

/// The error for an event the batch path somehow left unchecked (unreachable:
/// every event gets a result; kept so that no path can panic).
fn unchecked() -> LedgerRejected {
    LedgerRejected::Invalid {
        frame: "event",
        source: SignedError::Codec(crate::codec::CodecError::Malformed("unchecked".into())),
    }
}

/// [`verify_batch`], skipping the empty case.
fn verify_all<T: WireMessage>(
    items: &[Signed<T>],
    keys: &mut KeyCache,
) -> Vec<Result<T, SignedError>> {
    if items.is_empty() {
        return Vec::new();
    }
    verify_batch(items, keys)
}

/// Settings of a [`Ledger`]. Every ledger peer of a mesh must use the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The only key whose [`Mint`]s are honoured (`None`: no minting).
    pub mint_authority: Option<NodeId>,
    /// Credits every ledger starts with (e.g. a devnet's creators).
    pub genesis: Vec<(NodeId, u64)>,
    /// A receipt's `cpu_ms` may be at most its wall clock times this.
    pub max_cpu_parallelism: u64,
    /// A receipt's `gpu_ms` may be at most its wall clock times this.
    pub max_gpu_parallelism: u64,
    /// Clock skew allowed between worker and scheduler clocks.
    pub clock_skew_ms: u64,
    /// Longest reservation a scheduler gives an offer: a task cannot start
    /// earlier than this before `reserve_until_ms`.
    pub max_offer_reserve_ms: u64,
    /// An escrow returns to the creator this long after the job deadline.
    pub escrow_grace_ms: u64,
    /// Most unmatched settles and refunds held in all.
    pub max_pending: usize,
    /// Most escrows, refunds and settles (each) per task.
    pub max_per_task: usize,
    /// Verified job specs remembered (a job's escrows share its spec).
    pub spec_cache: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            mint_authority: None,
            genesis: Vec::new(),
            max_cpu_parallelism: 512,
            max_gpu_parallelism: 16,
            clock_skew_ms: 60_000,
            max_offer_reserve_ms: 10 * 60_000,
            escrow_grace_ms: 60 * 60_000,
            max_pending: 65_536,
            max_per_task: 16,
            spec_cache: 4096,
        }
    }
}

/// An account of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    /// Where minted credits come from (balance: minus all minted).
    Mint,
    /// A node's spendable credits.
    Node(NodeId),
    /// Credits held for one escrow (by [`wire::escrow_id`]).
    Escrow(MessageId),
}

/// Why an entry was posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// Genesis allocation from the config.
    Genesis,
    /// A mint by the authority.
    Mint,
    /// Creator → escrow.
    Escrow,
    /// Escrow → worker.
    Settle,
    /// Escrow → creator: the attempt was refunded by its scheduler.
    Refund,
    /// Escrow → creator: another escrow of the task is held or paid.
    Superseded,
    /// Escrow → creator: the job deadline and grace passed.
    Expired,
}

/// One double-entry movement of credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Why.
    pub kind: EntryKind,
    /// The task it belongs to (none for genesis and mints).
    pub task: Option<TaskId>,
    /// Debited account.
    pub from: Account,
    /// Credited account.
    pub to: Account,
    /// Credits moved.
    pub amount: u64,
}

/// What is wrong with an escrow's frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EscrowProblem {
    /// The offer is for a task of another job than the spec.
    #[error("offer is for job {offer}, spec is job {spec}")]
    WrongJob {
        /// Job of the offer.
        offer: JobId,
        /// Job of the spec.
        spec: JobId,
    },
    /// The task index is beyond the job's split.
    #[error("task index {index} but the job has {tasks} tasks")]
    NoSuchTask {
        /// Index offered.
        index: u32,
        /// Tasks of the job.
        tasks: u64,
    },
    /// The offer's price exceeds the creator's ceiling.
    #[error("offer price {price} above the job's ceiling {max}")]
    OverPrice {
        /// Offered price.
        price: u64,
        /// The spec's `max_price_per_task`.
        max: u64,
    },
    /// The worker declined.
    #[error("the worker declined: {reason:?}")]
    Declined {
        /// Its reason.
        reason: String,
    },
    /// The accept answers another offer.
    #[error("accept does not answer the offer: {field} differs")]
    AcceptMismatch {
        /// The differing field.
        field: &'static str,
    },
    /// Another escrow of this task names another creator (a job id collision).
    #[error("task already escrowed by creator {held}, this spec is by {found}")]
    CreatorConflict {
        /// Creator held.
        held: NodeId,
        /// Creator of this spec.
        found: NodeId,
    },
}

/// Why an event changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerRejected {
    /// A frame is badly signed, malformed, or names another signer.
    #[error("{frame} frame: {source}")]
    Invalid {
        /// Which frame.
        frame: &'static str,
        /// Cause.
        source: SignedError,
    },
    /// Already admitted (a replay or a gossip duplicate).
    #[error("duplicate {kind} {id}: already applied")]
    Duplicate {
        /// Event kind.
        kind: &'static str,
        /// Its id.
        id: MessageId,
    },
    /// The escrow's frames do not fit together.
    #[error("escrow refused: {0}")]
    Escrow(EscrowProblem),
    /// The acceptance countersigns another receipt.
    #[error("acceptance countersigns receipt {found}, not {expected}")]
    AcceptanceMismatch {
        /// The receipt's id.
        expected: MessageId,
        /// The id the acceptance names.
        found: MessageId,
    },
    /// The acceptance is not by the receipt's creator.
    #[error("receipt names creator {creator} but is countersigned by {signer}")]
    NotCountersigned {
        /// The creator the receipt names.
        creator: NodeId,
        /// Who countersigned.
        signer: NodeId,
    },
    /// Resource use impossible within the receipt's wall clock.
    #[error("inflated usage: {field} = {found} ms, at most {max} ms in {wall_ms} ms of wall clock")]
    InflatedUsage {
        /// `cpu_ms` or `gpu_ms`.
        field: &'static str,
        /// Claimed.
        found: u64,
        /// Allowed.
        max: u64,
        /// The receipt's wall clock.
        wall_ms: u64,
    },
    /// A mint not signed by the configured authority.
    #[error("mint signed by {signer}; the mint authority is {authority:?}")]
    NotMintAuthority {
        /// Who signed.
        signer: NodeId,
        /// The configured authority.
        authority: Option<NodeId>,
    },
    /// The pending set (unmatched settles and refunds) is full.
    #[error("pending set full ({max} unmatched settles and refunds)")]
    PendingFull {
        /// The bound.
        max: usize,
    },
    /// The task holds the most events of this kind allowed.
    #[error("task {task:?} already holds {max} {what}")]
    TaskFull {
        /// The task.
        task: TaskId,
        /// Which kind.
        what: &'static str,
        /// The bound.
        max: usize,
    },
}

impl LedgerRejected {
    /// Whether whoever published the event did something wrong (as opposed
    /// to a duplicate or our bounds). Drivers penalise peers that forward these.
    pub fn is_misbehaviour(&self) -> bool {
        !matches!(
            self,
            LedgerRejected::Duplicate { .. }
                | LedgerRejected::PendingFull { .. }
                | LedgerRejected::TaskFull { .. }
        )
    }
}

/// Why an admitted settle pays nothing (yet).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unmatched {
    /// No escrow for this task and attempt yet: it waits.
    NoEscrow,
    /// The attempt's escrow names another worker or scheduler: this worker
    /// was never assigned the task.
    NeverAssigned {
        /// The worker the escrow names.
        escrowed_worker: NodeId,
    },
    /// The receipt's creator is not the job's.
    CreatorMismatch,
    /// The receipt's price is not the offer's.
    PriceMismatch {
        /// Offer price.
        offer: u64,
        /// Receipt price.
        receipt: u64,
    },
    /// The receipt's wall clock lies outside the offer's window.
    OutsideWindow {
        /// Receipt start.
        started_at_ms: u64,
        /// Receipt end.
        finished_at_ms: u64,
        /// Earliest allowed start.
        window_start_ms: u64,
        /// Latest allowed end.
        window_end_ms: u64,
    },
}

/// Where an admitted settle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleStatus {
    /// It is the task's settle: the worker is paid.
    Paid,
    /// It matches an escrow but another settle of the task ranks first.
    Outranked,
    /// It matches no escrow: nothing is paid.
    Unmatched(Unmatched),
}

/// What an admitted event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// An escrow was admitted.
    Escrowed {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// Credits.
        price: u64,
        /// Whether it holds the task's credits now (rule 4).
        held: bool,
    },
    /// A refund was admitted.
    Refund {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// Whether it matches an escrow now.
        effective: bool,
    },
    /// A settle was admitted.
    Settle {
        /// Receipt id.
        receipt: MessageId,
        /// The task.
        task: TaskId,
        /// Where it stands now.
        status: SettleStatus,
    },
    /// A known receipt got an earlier acceptance.
    AcceptanceUpdated {
        /// Receipt id.
        receipt: MessageId,
        /// The acceptance time kept.
        accepted_at_ms: u64,
    },
    /// Credits were minted.
    Minted {
        /// Receiver.
        to: NodeId,
        /// Credits.
        amount: u64,
    },
}

/// Counters of what the ledger did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Events admitted.
    pub admitted: u64,
    /// Duplicates ignored.
    pub duplicates: u64,
    /// Events rejected as misbehaviour.
    pub invalid: u64,
    /// Events refused by a bound.
    pub refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EscrowRec {
    attempt: u32,
    worker: NodeId,
    scheduler: NodeId,
    price: u64,
    window_start: u64,
    window_end: u64,
    expires_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RefundRec {
    attempt: u32,
    worker: NodeId,
    scheduler: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SettleRec {
    acceptance: MessageId,
    accepted_at: u64,
    attempt: u32,
    worker: NodeId,
    scheduler: NodeId,
    creator: NodeId,
    price: u64,
    started: u64,
    finished: u64,
    /// The escrow it matches (lowest matching escrow id), once it does.
    matched: Option<MessageId>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Resolution {
    /// (escrow, receipt) of the task's settle.
    paid: Option<(MessageId, MessageId)>,
    /// The escrow holding the task's credits when none is paid.
    held: Option<MessageId>,
}

#[derive(Debug, Clone, Default)]
struct TaskState {
    creator: Option<NodeId>,
    escrows: BTreeMap<MessageId, EscrowRec>,
    refunds: BTreeMap<MessageId, RefundRec>,
    settles: BTreeMap<MessageId, SettleRec>,
    res: Resolution,
}

impl TaskState {
    fn refunded(&self, attempt: u32, worker: &NodeId, scheduler: &NodeId) -> bool {
        self.refunds
            .values()
            .any(|r| r.attempt == attempt && r.worker == *worker && r.scheduler == *scheduler)
    }

    fn escrow_refunded(&self, e: &EscrowRec) -> bool {
        self.refunded(e.attempt, &e.worker, &e.scheduler)
    }

    fn refund_effective(&self, r: &RefundRec) -> bool {
        self.escrows
            .values()
            .any(|e| e.attempt == r.attempt && e.worker == r.worker && e.scheduler == r.scheduler)
    }

    fn unmatched(&self) -> usize {
        self.settles
            .values()
            .filter(|s| s.matched.is_none())
            .count()
            + self
                .refunds
                .values()
                .filter(|r| !self.refund_effective(r))
                .count()
    }

    /// The escrow a settle matches (lowest id), or why none does.
    fn match_escrow(&self, s: &SettleRec) -> Result<MessageId, Unmatched> {
        let mut why = Unmatched::NoEscrow;
        for (id, e) in self.escrows.iter().filter(|(_, e)| e.attempt == s.attempt) {
            let problem = if e.worker != s.worker || e.scheduler != s.scheduler {
                Unmatched::NeverAssigned {
                    escrowed_worker: e.worker,
                }
            } else if self.creator != Some(s.creator) {
                Unmatched::CreatorMismatch
            } else if e.price != s.price {
                Unmatched::PriceMismatch {
                    offer: e.price,
                    receipt: s.price,
                }
            } else if s.started < e.window_start || s.finished > e.window_end {
                Unmatched::OutsideWindow {
                    started_at_ms: s.started,
                    finished_at_ms: s.finished,
                    window_start_ms: e.window_start,
                    window_end_ms: e.window_end,
                }
            } else {
                return Ok(*id);
            };
            // Report the most specific problem (one about this worker's own escrow).
            why = why.max(problem);
        }
        Err(why)
    }

    /// Rules 2, 4 and 5 of the module docs.
    fn resolve(&self, now: u64) -> Resolution {
        let winner = self
            .settles
            .iter()
            .filter_map(|(rid, s)| s.matched.map(|eid| (s, *rid, eid)))
            .min_by_key(|(s, rid, _)| {
                (
                    self.refunded(s.attempt, &s.worker, &s.scheduler),
                    s.attempt,
                    *rid,
                )
            });
        if let Some((_, rid, eid)) = winner {
            return Resolution {
                paid: Some((eid, rid)),
                held: None,
            };
        }
        let held = self
            .escrows
            .iter()
            .filter(|(_, e)| !self.escrow_refunded(e) && now < e.expires_at)
            .max_by_key(|(id, e)| (e.attempt, **id))
            .map(|(id, _)| *id);
        Resolution { paid: None, held }
    }

    /// The entries this task contributes under its current resolution.
    fn entries(&self, task: &TaskId, out: &mut Vec<Entry>) {
        let Some(creator) = self.creator else {
            return;
        };
        for (id, e) in &self.escrows {
            out.push(Entry {
                kind: EntryKind::Escrow,
                task: Some(*task),
                from: Account::Node(creator),
                to: Account::Escrow(*id),
                amount: e.price,
            });
            let (kind, to) = match (self.res.paid, self.res.held) {
                (Some((paid, _)), _) if paid == *id => (EntryKind::Settle, Account::Node(e.worker)),
                (_, Some(held)) if held == *id => continue,
                _ if self.escrow_refunded(e) => (EntryKind::Refund, Account::Node(creator)),
                (None, None) => (EntryKind::Expired, Account::Node(creator)),
                _ => (EntryKind::Superseded, Account::Node(creator)),
            };
            out.push(Entry {
                kind,
                task: Some(*task),
                from: Account::Escrow(*id),
                to,
                amount: e.price,
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexed {
    Escrow(TaskId),
    Refund(TaskId),
    Receipt(TaskId),
    Mint,
}

#[derive(Debug, Clone, Copy)]
struct SpecInfo {
    id: JobId,
    creator: NodeId,
    tasks: u64,
    max_price: u64,
    deadline: u64,
}

/// A verified event, ready to apply.
enum Checked {
    Escrow {
        id: MessageId,
        spec: SpecInfo,
        offer: TaskOffer,
        accept: TaskAccept,
    },
    Refund {
        id: MessageId,
        closed: TaskClosed,
    },
    Settle {
        id: MessageId,
        acceptance_id: MessageId,
        receipt: Receipt,
        acceptance: ReceiptAcceptance,
    },
    Mint {
        id: MessageId,
        mint: Mint,
    },
}

/// The ledger state machine.
#[derive(Debug)]
pub struct Ledger {
    config: LedgerConfig,
    tasks: BTreeMap<TaskId, TaskState>,
    index: BTreeMap<MessageId, Indexed>,
    mints: BTreeMap<MessageId, (NodeId, u64)>,
    accounts: BTreeMap<Account, i128>,
    /// (expiry, task) of every held escrow.
    expiry: BTreeSet<(u64, TaskId)>,
    pending: usize,
    matched_out: Vec<(MessageId, u64)>,
    keys: KeyCache,
    specs: BTreeMap<MessageId, ([u8; 64], SpecInfo)>,
    stats: LedgerStats,
    now_ms: u64,
}

impl Clone for Ledger {
    fn clone(&self) -> Self {
        Ledger {
            config: self.config.clone(),
            tasks: self.tasks.clone(),
            index: self.index.clone(),
            mints: self.mints.clone(),
            accounts: self.accounts.clone(),
            expiry: self.expiry.clone(),
            pending: self.pending,
            matched_out: self.matched_out.clone(),
            keys: KeyCache::default(),
            specs: self.specs.clone(),
            stats: self.stats,
            now_ms: self.now_ms,
        }
    }
}

fn post(accounts: &mut BTreeMap<Account, i128>, entries: &[Entry], sign: i128) {
    for e in entries {
        let amount = i128::from(e.amount) * sign;
        for (account, delta) in [(e.from, -amount), (e.to, amount)] {
            let slot = accounts.entry(account).or_insert(0);
            *slot += delta;
            if *slot == 0 {
                accounts.remove(&account);
            }
        }
    }
}

fn genesis_entries(config: &LedgerConfig) -> impl Iterator<Item = Entry> + '_ {
    config.genesis.iter().map(|(node, amount)| Entry {
        kind: EntryKind::Genesis,
        task: None,
        from: Account::Mint,
        to: Account::Node(*node),
        amount: *amount,
    })
}

fn signature_of(frame: &[u8]) -> [u8; 64] {
    let mut sig = [0u8; 64];
    if let Some(s) = frame.get(crate::codec::SIGNER_LEN..crate::codec::PAYLOAD_OFFSET) {
        sig.copy_from_slice(s);
    }
    sig
}

fn invalid(frame: &'static str) -> impl Fn(SignedError) -> LedgerRejected {
    move |source| LedgerRejected::Invalid { frame, source }
}

impl Ledger {
    /// A ledger holding only the config's genesis allocation.
    pub fn new(config: LedgerConfig) -> Self {
        let mut accounts = BTreeMap::new();
        let genesis: Vec<Entry> = genesis_entries(&config).collect();
        post(&mut accounts, &genesis, 1);
        Ledger {
            config,
            tasks: BTreeMap::new(),
            index: BTreeMap::new(),
            mints: BTreeMap::new(),
            accounts,
            expiry: BTreeSet::new(),
            pending: 0,
            matched_out: Vec::new(),
            keys: KeyCache::default(),
            specs: BTreeMap::new(),
            stats: LedgerStats::default(),
            now_ms: 0,
        }
    }

    /// The config.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// Feeds one event.
    pub fn handle_event(
        &mut self,
        event: &LedgerEvent,
        now_ms: u64,
    ) -> Result<Applied, LedgerRejected> {
        self.handle_events(std::slice::from_ref(event), now_ms)
            .pop()
            .unwrap_or_else(|| Err(unchecked()))
    }

    /// Feeds events (e.g. one gossip batch): every signature is checked first,
    /// receipts and acceptances with batch verification, then the events are
    /// admitted in order. Returns one result per event.
    pub fn handle_events(
        &mut self,
        events: &[LedgerEvent],
        now_ms: u64,
    ) -> Vec<Result<Applied, LedgerRejected>> {
        let now = self.observe(now_ms);
        let checked = self.check_all(events);
        checked
            .into_iter()
            .map(|c| {
                let result = c.and_then(|c| self.apply(c, now));
                match &result {
                    Ok(_) => self.stats.admitted += 1,
                    Err(LedgerRejected::Duplicate { .. }) => self.stats.duplicates += 1,
                    Err(e) if e.is_misbehaviour() => self.stats.invalid += 1,
                    Err(_) => self.stats.refused += 1,
                }
                result
            })
            .collect()
    }

    fn observe(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    /// Whether an event is exactly one already admitted (skips its signature checks).
    fn known(&self, event: &LedgerEvent) -> Option<LedgerRejected> {
        let (kind, id) = match event {
            LedgerEvent::Settle {
                receipt,
                acceptance,
            } => {
                let id = receipt.id();
                let task = match self.index.get(&id) {
                    Some(Indexed::Receipt(task)) => task,
                    _ => return None,
                };
                let same = self
                    .tasks
                    .get(task)
                    .and_then(|t| t.settles.get(&id))
                    .is_some_and(|s| s.acceptance == acceptance.id());
                if !same {
                    return None;
                }
                ("settle", id)
            }
            other => {
                let id = other.id();
                if !self.index.contains_key(&id) {
                    return None;
                }
                (other.kind_name(), id)
            }
        };
        Some(LedgerRejected::Duplicate { kind, id })
    }

    fn check_spec(&mut self, spec: &Signed<JobSpec>) -> Result<SpecInfo, LedgerRejected> {
        let id = spec.id();
        let sig = signature_of(spec.as_bytes());
        if let Some((cached_sig, info)) = self.specs.get(&id)
            && *cached_sig == sig
        {
            return Ok(*info);
        }
        let s = spec.verify().map_err(invalid("spec"))?;
        let info = SpecInfo {
            id: s.id,
            creator: s.creator,
            tasks: s.split.task_count(),
            max_price: s.max_price_per_task,
            deadline: s.deadline_ms,
        };
        if self.specs.len() >= self.config.spec_cache.max(1) {
            self.specs.clear();
        }
        self.specs.insert(id, (sig, info));
        Ok(info)
    }

    /// Signature checks of a batch, before any state changes.
    fn check_all(&mut self, events: &[LedgerEvent]) -> Vec<Result<Checked, LedgerRejected>> {
        let mut out: Vec<Option<Result<Checked, LedgerRejected>>> =
            events.iter().map(|_| None).collect();
        let (mut receipts, mut acceptances, mut settle_slots) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut offers, mut accepts, mut escrow_slots) = (Vec::new(), Vec::new(), Vec::new());
        let (mut closes, mut close_slots) = (Vec::new(), Vec::new());
        let (mut mints, mut mint_slots) = (Vec::new(), Vec::new());
        for (i, event) in events.iter().enumerate() {
            if let Some(dup) = self.known(event) {
                out[i] = Some(Err(dup));
                continue;
            }
            match event {
                LedgerEvent::Settle {
                    receipt,
                    acceptance,
                } => {
                    receipts.push(receipt.clone());
                    acceptances.push(acceptance.clone());
                    settle_slots.push(i);
                }
                LedgerEvent::Escrow {
                    spec,
                    offer,
                    accept,
                } => match self.check_spec(spec) {
                    Ok(info) => {
                        offers.push(offer.clone());
                        accepts.push(accept.clone());
                        escrow_slots.push((i, info, spec.id()));
                    }
                    Err(e) => out[i] = Some(Err(e)),
                },
                LedgerEvent::Refund { closed } => {
                    closes.push(closed.clone());
                    close_slots.push(i);
                }
                LedgerEvent::Mint { mint } => {
                    mints.push(mint.clone());
                    mint_slots.push(i);
                }
            }
        }
        let keys = &mut self.keys;
        let verified_receipts = verify_all(&receipts, keys);
        let verified_acceptances = verify_all(&acceptances, keys);
        for (((slot, r), a), (rf, af)) in settle_slots
            .iter()
            .zip(verified_receipts)
            .zip(verified_acceptances)
            .zip(receipts.iter().zip(&acceptances))
        {
            out[*slot] = Some(r.map_err(invalid("receipt")).and_then(|receipt| {
                let acceptance = a.map_err(invalid("acceptance"))?;
                Ok(Checked::Settle {
                    id: rf.id(),
                    acceptance_id: af.id(),
                    receipt,
                    acceptance,
                })
            }));
        }
        let verified_offers = verify_all(&offers, keys);
        let verified_accepts = verify_all(&accepts, keys);
        for ((((slot, spec, spec_id), o), a), (of, af)) in escrow_slots
            .iter()
            .zip(verified_offers)
            .zip(verified_accepts)
            .zip(offers.iter().zip(&accepts))
        {
            out[*slot] = Some(o.map_err(invalid("offer")).and_then(|offer| {
                let accept = a.map_err(invalid("accept"))?;
                Ok(Checked::Escrow {
                    id: wire::escrow_id(spec_id, &of.id(), &af.id()),
                    spec: *spec,
                    offer,
                    accept,
                })
            }));
        }
        for ((slot, c), cf) in close_slots
            .iter()
            .zip(verify_all(&closes, keys))
            .zip(&closes)
        {
            out[*slot] = Some(c.map_err(invalid("closed")).map(|closed| Checked::Refund {
                id: cf.id(),
                closed,
            }));
        }
        for ((slot, m), mf) in mint_slots.iter().zip(verify_all(&mints, keys)).zip(&mints) {
            out[*slot] = Some(
                m.map_err(invalid("mint"))
                    .map(|mint| Checked::Mint { id: mf.id(), mint }),
            );
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(unchecked())))
            .collect()
    }

    fn apply(&mut self, checked: Checked, now: u64) -> Result<Applied, LedgerRejected> {
        match checked {
            Checked::Escrow {
                id,
                spec,
                offer,
                accept,
            } => self.apply_escrow(id, spec, offer, accept, now),
            Checked::Refund { id, closed } => self.apply_refund(id, closed, now),
            Checked::Settle {
                id,
                acceptance_id,
                receipt,
                acceptance,
            } => self.apply_settle(id, acceptance_id, receipt, acceptance, now),
            Checked::Mint { id, mint } => self.apply_mint(id, mint),
        }
    }

    fn duplicate(&self, kind: &'static str, id: MessageId) -> Result<(), LedgerRejected> {
        if self.index.contains_key(&id) {
            return Err(LedgerRejected::Duplicate { kind, id });
        }
        Ok(())
    }

    fn task_full(
        &self,
        task: &TaskId,
        what: &'static str,
        count: impl Fn(&TaskState) -> usize,
    ) -> Result<(), LedgerRejected> {
        let max = self.config.max_per_task;
        if self.tasks.get(task).map(count).unwrap_or(0) >= max {
            return Err(LedgerRejected::TaskFull {
                task: *task,
                what,
                max,
            });
        }
        Ok(())
    }

    fn apply_escrow(
        &mut self,
        id: MessageId,
        spec: SpecInfo,
        offer: TaskOffer,
        accept: TaskAccept,
        now: u64,
    ) -> Result<Applied, LedgerRejected> {
        self.duplicate("escrow", id)?;
        let problem = if offer.task.job != spec.id {
            Some(EscrowProblem::WrongJob {
                offer: offer.task.job,
                spec: spec.id,
            })
        } else if u64::from(offer.task.index) >= spec.tasks {
            Some(EscrowProblem::NoSuchTask {
                index: offer.task.index,
                tasks: spec.tasks,
            })
        } else if offer.price > spec.max_price {
            Some(EscrowProblem::OverPrice {
                price: offer.price,
                max: spec.max_price,
            })
        } else if accept.task != offer.task {
            Some(EscrowProblem::AcceptMismatch { field: "task" })
        } else if accept.attempt != offer.attempt {
            Some(EscrowProblem::AcceptMismatch { field: "attempt" })
        } else if accept.worker != offer.worker {
            Some(EscrowProblem::AcceptMismatch { field: "worker" })
        } else if !accept.accepted {
            Some(EscrowProblem::Declined {
                reason: accept.reason.clone(),
            })
        } else {
            match self.tasks.get(&offer.task).and_then(|t| t.creator) {
                Some(held) if held != spec.creator => Some(EscrowProblem::CreatorConflict {
                    held,
                    found: spec.creator,
                }),
                _ => None,
            }
        };
        if let Some(p) = problem {
            return Err(LedgerRejected::Escrow(p));
        }
        self.task_full(&offer.task, "escrows", |t| t.escrows.len())?;
        let skew = self.config.clock_skew_ms;
        let rec = EscrowRec {
            attempt: offer.attempt,
            worker: offer.worker,
            scheduler: offer.scheduler,
            price: offer.price,
            window_start: offer
                .reserve_until_ms
                .saturating_sub(self.config.max_offer_reserve_ms.saturating_add(skew)),
            window_end: offer.deadline_ms.saturating_add(skew),
            expires_at: spec.deadline.saturating_add(self.config.escrow_grace_ms),
        };
        let task = offer.task;
        self.index.insert(id, Indexed::Escrow(task));
        self.update_task(task, now, |t| {
            t.creator = Some(spec.creator);
            t.escrows.insert(id, rec);
        });
        let held = self
            .tasks
            .get(&task)
            .is_some_and(|t| t.res.held == Some(id));
        Ok(Applied::Escrowed {
            task,
            attempt: offer.attempt,
            price: offer.price,
            held,
        })
    }

    fn apply_refund(
        &mut self,
        id: MessageId,
        closed: TaskClosed,
        now: u64,
    ) -> Result<Applied, LedgerRejected> {
        self.duplicate("refund", id)?;
        let task = closed.task;
        self.task_full(&task, "refunds", |t| t.refunds.len())?;
        let rec = RefundRec {
            attempt: closed.attempt,
            worker: closed.worker,
            scheduler: closed.scheduler,
        };
        let effective = self
            .tasks
            .get(&task)
            .is_some_and(|t| t.refund_effective(&rec));
        if !effective && self.pending >= self.config.max_pending {
            return Err(LedgerRejected::PendingFull {
                max: self.config.max_pending,
            });
        }
        self.index.insert(id, Indexed::Refund(task));
        self.update_task(task, now, |t| {
            t.refunds.insert(id, rec);
        });
        Ok(Applied::Refund {
            task,
            attempt: closed.attempt,
            effective,
        })
    }

    fn apply_settle(
        &mut self,
        id: MessageId,
        acceptance_id: MessageId,
        receipt: Receipt,
        acceptance: ReceiptAcceptance,
        now: u64,
    ) -> Result<Applied, LedgerRejected> {
        if acceptance.receipt_id != id.0 {
            return Err(LedgerRejected::AcceptanceMismatch {
                expected: id,
                found: MessageId(acceptance.receipt_id),
            });
        }
        if acceptance.creator != receipt.creator {
            return Err(LedgerRejected::NotCountersigned {
                creator: receipt.creator,
                signer: acceptance.creator,
            });
        }
        let wall_ms = receipt.finished_at_ms.saturating_sub(receipt.started_at_ms);
        for (field, found, factor) in [
            (
                "cpu_ms",
                receipt.usage.cpu_ms,
                self.config.max_cpu_parallelism,
            ),
            (
                "gpu_ms",
                receipt.usage.gpu_ms,
                self.config.max_gpu_parallelism,
            ),
        ] {
            let max = wall_ms.saturating_mul(factor);
            if found > max {
                return Err(LedgerRejected::InflatedUsage {
                    field,
                    found,
                    max,
                    wall_ms,
                });
            }
        }
        let task = receipt.task;
        if let Some(Indexed::Receipt(_)) = self.index.get(&id) {
            return self.update_acceptance(task, id, acceptance_id, acceptance.accepted_at_ms);
        }
        self.duplicate("settle", id)?;
        self.task_full(&task, "settles", |t| t.settles.len())?;
        let rec = SettleRec {
            acceptance: acceptance_id,
            accepted_at: acceptance.accepted_at_ms,
            attempt: receipt.attempt,
            worker: receipt.worker,
            scheduler: receipt.scheduler,
            creator: receipt.creator,
            price: receipt.price,
            started: receipt.started_at_ms,
            finished: receipt.finished_at_ms,
            matched: None,
        };
        let matches = self
            .tasks
            .get(&task)
            .is_some_and(|t| t.match_escrow(&rec).is_ok());
        if !matches && self.pending >= self.config.max_pending {
            return Err(LedgerRejected::PendingFull {
                max: self.config.max_pending,
            });
        }
        self.index.insert(id, Indexed::Receipt(task));
        self.update_task(task, now, |t| {
            t.settles.insert(id, rec);
        });
        Ok(Applied::Settle {
            receipt: id,
            task,
            status: self.settle_status(&task, &id),
        })
    }

    fn update_acceptance(
        &mut self,
        task: TaskId,
        id: MessageId,
        acceptance_id: MessageId,
        accepted_at: u64,
    ) -> Result<Applied, LedgerRejected> {
        let Some(s) = self
            .tasks
            .get_mut(&task)
            .and_then(|t| t.settles.get_mut(&id))
        else {
            return Err(LedgerRejected::Duplicate { kind: "settle", id });
        };
        if (accepted_at, acceptance_id) >= (s.accepted_at, s.acceptance) {
            return Err(LedgerRejected::Duplicate { kind: "settle", id });
        }
        s.accepted_at = accepted_at;
        s.acceptance = acceptance_id;
        if s.matched.is_some() {
            self.matched_out.push((id, accepted_at));
        }
        Ok(Applied::AcceptanceUpdated {
            receipt: id,
            accepted_at_ms: accepted_at,
        })
    }

    fn apply_mint(&mut self, id: MessageId, mint: Mint) -> Result<Applied, LedgerRejected> {
        if self.config.mint_authority != Some(mint.authority) {
            return Err(LedgerRejected::NotMintAuthority {
                signer: mint.authority,
                authority: self.config.mint_authority,
            });
        }
        self.duplicate("mint", id)?;
        self.index.insert(id, Indexed::Mint);
        self.mints.insert(id, (mint.to, mint.amount));
        post(&mut self.accounts, &[mint_entry(mint.to, mint.amount)], 1);
        Ok(Applied::Minted {
            to: mint.to,
            amount: mint.amount,
        })
    }

    /// Applies a change to a task and re-derives its resolution and entries.
    fn update_task(&mut self, task: TaskId, now: u64, change: impl FnOnce(&mut TaskState)) {
        let t = self.tasks.entry(task).or_default();
        let mut old = Vec::new();
        t.entries(&task, &mut old);
        let unmatched_before = t.unmatched();
        let held_before = t
            .res
            .held
            .and_then(|h| t.escrows.get(&h))
            .map(|e| e.expires_at);

        change(t);

        // Matches only grow: escrows are never removed.
        let ids: Vec<MessageId> = t.settles.keys().copied().collect();
        for rid in ids {
            let Some(s) = t.settles.get(&rid).copied() else {
                continue;
            };
            if let Ok(eid) = t.match_escrow(&s) {
                if s.matched.is_none() {
                    self.matched_out.push((rid, s.accepted_at));
                }
                if let Some(rec) = t.settles.get_mut(&rid) {
                    rec.matched = Some(eid);
                }
            }
        }
        t.res = t.resolve(now);
        let unmatched_after = t.unmatched();
        self.pending = (self.pending + unmatched_after).saturating_sub(unmatched_before);
        let held_after = t
            .res
            .held
            .and_then(|h| t.escrows.get(&h))
            .map(|e| e.expires_at);
        let mut new = Vec::new();
        t.entries(&task, &mut new);
        if let Some(at) = held_before {
            self.expiry.remove(&(at, task));
        }
        if let Some(at) = held_after {
            self.expiry.insert((at, task));
        }
        post(&mut self.accounts, &old, -1);
        post(&mut self.accounts, &new, 1);
    }

    fn settle_status(&self, task: &TaskId, receipt: &MessageId) -> SettleStatus {
        let Some(t) = self.tasks.get(task) else {
            return SettleStatus::Unmatched(Unmatched::NoEscrow);
        };
        if t.res.paid.is_some_and(|(_, r)| r == *receipt) {
            return SettleStatus::Paid;
        }
        match t.settles.get(receipt) {
            Some(s) if s.matched.is_some() => SettleStatus::Outranked,
            Some(s) => {
                SettleStatus::Unmatched(t.match_escrow(s).err().unwrap_or(Unmatched::NoEscrow))
            }
            None => SettleStatus::Unmatched(Unmatched::NoEscrow),
        }
    }

    /// Expires escrows whose job deadline and grace have passed (rule 5).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let now = self.observe(now_ms);
        while let Some(&(at, task)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.remove(&(at, task));
            self.update_task(task, now, |_| {});
        }
    }

    /// When [`Ledger::handle_timeout`] next has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Receipts newly matched to an escrow, or matched receipts whose
    /// acceptance time moved earlier, since the last call: `(receipt id,
    /// accepted_at_ms)`, for the rollup.
    pub fn take_matched(&mut self) -> Vec<(MessageId, u64)> {
        std::mem::take(&mut self.matched_out)
    }

    /// A node's balance (spendable credits; negative when the creator's
    /// escrows exceed what it had, see the module docs).
    pub fn balance(&self, node: &NodeId) -> i128 {
        self.accounts
            .get(&Account::Node(*node))
            .copied()
            .unwrap_or(0)
    }

    /// Every account with a non-zero balance.
    pub fn accounts(&self) -> &BTreeMap<Account, i128> {
        &self.accounts
    }

    /// Nodes with a non-zero balance.
    pub fn balances(&self) -> impl Iterator<Item = (NodeId, i128)> + '_ {
        self.accounts.iter().filter_map(|(a, b)| match a {
            Account::Node(n) => Some((*n, *b)),
            _ => None,
        })
    }

    /// Credits held in escrow.
    pub fn escrowed(&self) -> i128 {
        self.accounts
            .iter()
            .filter(|(a, _)| matches!(a, Account::Escrow(_)))
            .map(|(_, b)| *b)
            .sum()
    }

    /// Credits ever minted (genesis included).
    pub fn minted(&self) -> i128 {
        -self.accounts.get(&Account::Mint).copied().unwrap_or(0)
    }

    /// Every entry of the ledger under the current resolution: genesis,
    /// mints, then each task's entries, in a fixed order.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = genesis_entries(&self.config).collect();
        out.extend(
            self.mints
                .values()
                .map(|(to, amount)| mint_entry(*to, *amount)),
        );
        for (task, t) in &self.tasks {
            t.entries(task, &mut out);
        }
        out
    }

    /// Balances re-derived from [`Ledger::entries`] (an audit of the
    /// incremental balances in [`Ledger::accounts`]).
    pub fn recompute_accounts(&self) -> BTreeMap<Account, i128> {
        let mut accounts = BTreeMap::new();
        post(&mut accounts, &self.entries(), 1);
        accounts
    }

    /// The receipt that settled a task, if any.
    pub fn paid_receipt(&self, task: &TaskId) -> Option<MessageId> {
        self.tasks
            .get(task)
            .and_then(|t| t.res.paid)
            .map(|(_, r)| r)
    }

    /// Where an admitted receipt stands.
    pub fn receipt_status(&self, receipt: &MessageId) -> Option<SettleStatus> {
        match self.index.get(receipt) {
            Some(Indexed::Receipt(task)) => Some(self.settle_status(task, receipt)),
            _ => None,
        }
    }

    /// The escrow a receipt matched (to serve it with its receipt during
    /// reconciliation).
    pub fn matched_escrow(&self, receipt: &MessageId) -> Option<MessageId> {
        match self.index.get(receipt) {
            Some(Indexed::Receipt(task)) => self
                .tasks
                .get(task)
                .and_then(|t| t.settles.get(receipt))
                .and_then(|s| s.matched),
            _ => None,
        }
    }

    /// Whether an event id (see [`LedgerEvent::id`]) was admitted.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.index.contains_key(id)
    }

    /// Unmatched settles and refunds held.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Counters.
    pub fn stats(&self) -> LedgerStats {
        self.stats
    }

    /// A digest of the credit state: every non-zero account balance and
    /// every task's settled receipt. Equal digests, equal ledgers.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("rendertrust 2026-11 ledger digest v1");
        for (account, balance) in &self.accounts {
            match account {
                Account::Mint => h.update(&[0]),
                Account::Node(n) => h.update(&[1]).update(n.as_bytes()),
                Account::Escrow(e) => h.update(&[2]).update(&e.0),
            };
            h.update(&balance.to_le_bytes());
        }
        for (task, t) in &self.tasks {
            if let Some((escrow, receipt)) = t.res.paid {
                h.update(&task.job.0)
                    .update(&task.index.to_le_bytes())
                    .update(&escrow.0)
                    .update(&receipt.0);
            }
        }
        *h.finalize().as_bytes()
    }
}

fn mint_entry(to: NodeId, amount: u64) -> Entry {
    Entry {
        kind: EntryKind::Mint,
        task: None,
        from: Account::Mint,
        to: Account::Node(to),
        amount,
    }
}

#[cfg(test)]
mod tests;
