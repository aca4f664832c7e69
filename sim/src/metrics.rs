//! What a run measures: counters, per-job and per-node records, and the
//! time series. Filled by the world's drivers; turned into files by
//! `output` and `plot`.

use serde::Serialize;

use crate::credits::Credits;
use crate::scenario::Scenario;

/// One point of the time series.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds into the run.
    pub t_s: u64,
    /// Workers online.
    pub online_workers: i64,
    /// Their task slots.
    pub online_slots: i64,
    /// Slots holding an accepted task (fetching or rendering).
    pub busy_slots: i64,
    /// Slots rendering (GPU busy).
    pub rendering: i64,
    /// Tasks submitted and not yet done or failed.
    pub open_tasks: i64,
    /// Jobs not yet finished.
    pub jobs_open: i64,
    /// Re-dispatches so far.
    pub redispatches: u64,
    /// Tasks done so far.
    pub tasks_done: u64,
    /// Jain's index of credits so far (nodes that earned any).
    pub credits_jain: f64,
}

/// What verification cost and caught (sim/README.md, "Trust").
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TrustMetrics {
    /// GPU time of every run that ended (results and failures), ms.
    pub gpu_ms: u64,
    /// GPU time of the runs whose result a creator accepted, ms.
    pub gpu_accepted_ms: u64,
    /// GPU time of spot-check crop lines, ms.
    pub gpu_crop_ms: u64,
    /// Results returned to schedulers (tasks and verification lines).
    pub results: u64,
    /// Of them, wrong (by `wrong` or `lazy` workers).
    pub wrong_results: u64,
    /// Crop lines offered.
    pub crop_offers: u64,
    /// `Failed` outcomes of dishonest workers: lies caught.
    pub caught: u64,
    /// `Failed` outcomes of honest workers (must stay 0 without collusion).
    pub failed_honest: u64,
    /// `Verified` outcomes.
    pub outcomes_verified: u64,
    /// `Lost` outcomes.
    pub outcomes_lost: u64,
    /// Spot-check comparisons sent by creators.
    pub comparisons: u64,
    /// Comparisons a creator or scheduler refused.
    pub comparisons_refused: u64,
    /// Verdicts the creator's re-check refused.
    pub verdicts_refused: u64,
    /// Credits settled to dishonest (wrong, lazy) workers.
    pub cheater_credits: u64,
}

/// One job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobRecord {
    /// Index in submission order.
    pub index: u32,
    /// Job id (hex prefix).
    pub id: String,
    /// Creator node index.
    pub creator: u32,
    /// Submitted, ms into the run.
    pub submitted_at: u64,
    /// Tasks (frames).
    pub frames: u32,
    /// Render seconds per frame at reference speed.
    pub seconds_per_frame: f64,
    /// Owner scheduler node index (the first to take it).
    pub owner: u32,
    /// No scheduler took it.
    pub rejected: bool,
    /// The owner said every task is done or failed, ms into the run.
    pub sched_finished_at: Option<u64>,
    /// The creator had every task accepted or failed, ms into the run.
    pub finished_at: Option<u64>,
    /// `finished_at − submitted_at`.
    pub makespan_ms: Option<u64>,
    /// Tasks done (scheduler's word).
    pub tasks_done: u32,
    /// Tasks failed (scheduler's word).
    pub tasks_failed: u32,
    /// Tasks accepted by the creator.
    pub accepted: u32,
    /// Tasks failed at the creator.
    pub creator_failed: u32,
    /// Assignments beyond each task's first.
    pub redispatches: u32,
    /// Takeovers by a replica.
    pub takeovers: u32,
    /// Accepted outputs that were wrong.
    pub wrong_accepted: u32,
}

/// One node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStats {
    /// Node id (hex prefix).
    pub id: String,
    /// Group.
    pub group: String,
    /// Roles.
    pub roles: String,
    /// Region.
    pub region: String,
    /// GPU class.
    pub class: String,
    /// Behaviour.
    pub behaviour: &'static str,
    /// Sessions (times it came online).
    pub sessions: u32,
    /// Time online, ms.
    pub online_ms: u64,
    /// Time rendering, ms (summed over slots).
    pub busy_ms: u64,
    /// Results sent.
    pub results: u32,
    /// Results accepted by creators.
    pub accepted: u32,
    /// Runs that failed.
    pub failed: u32,
    /// Attempts cancelled by a scheduler.
    pub cancelled: u32,
    /// Accepted outputs that were wrong.
    pub wrong_accepted: u32,
    /// Credits earned.
    pub credits: u64,
    /// Render capacity (speed × slots).
    pub capacity: f64,
}

/// Everything measured in a run.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Verification and reputation.
    pub trust: TrustMetrics,
    /// Render capacity of all workers (reference seconds per second).
    pub capacity: f64,
    /// Background arrival rate, jobs per hour.
    pub arrival_rate_per_hour: f64,
    /// When the run ended, ms into it.
    pub end_ms: u64,
    /// Events processed.
    pub events: u64,
    /// Jobs created.
    pub jobs_submitted: u64,
    /// Jobs finished at their creator.
    pub jobs_finished: u64,
    /// Jobs no scheduler took.
    pub jobs_rejected: u64,
    /// Arrivals with no creator online.
    pub jobs_no_creator: u64,
    /// Jobs neither finished nor rejected at the end.
    pub unfinished_jobs: u64,
    /// Tasks of jobs a scheduler took.
    pub tasks_submitted: u64,
    /// Tasks done (scheduler's word).
    pub tasks_done: u64,
    /// Tasks failed for good.
    pub tasks_failed: u64,
    /// Tasks accepted by creators.
    pub tasks_accepted: u64,
    /// Wrong outputs accepted.
    pub wrong_accepted: u64,
    /// Tasks open now.
    pub open_tasks: i64,
    /// Workers online now.
    pub online_workers: i64,
    /// Their slots.
    pub online_slots: i64,
    /// Slots holding a task now.
    pub busy_slots: i64,
    /// Slots rendering now.
    pub rendering: i64,
    /// Adverts published.
    pub adverts: u64,
    /// Adverts delivered to scheduler nodes.
    pub advert_deliveries: u64,
    /// Gossip deliveries lost.
    pub gossip_lost: u64,
    /// Requests sent.
    pub messages: u64,
    /// Requests lost.
    pub rpc_lost: u64,
    /// Offers sent.
    pub offers: u64,
    /// Offers declined by workers.
    pub declines: u64,
    /// Attempts accepted (escrowed).
    pub assignments: u64,
    /// Assignments of a task after its first.
    pub redispatches: u64,
    /// When each re-dispatch happened, seconds into the run.
    pub redispatch_times: Vec<u32>,
    /// Cancels sent.
    pub cancels: u64,
    /// Runs aborted at their deadline.
    pub aborts: u64,
    /// Heartbeats received by schedulers.
    pub heartbeats: u64,
    /// Replications sent.
    pub replications: u64,
    /// Replications applied.
    pub replicas_applied: u64,
    /// Jobs taken over.
    pub takeovers: u64,
    /// Owned jobs given up to a newer owner (after a takeover).
    pub yields: u64,
    /// Results given up after retries.
    pub results_dropped: u64,
    /// Results refused by a scheduler.
    pub results_refused: u64,
    /// Results refused by a creator.
    pub results_refused_by_creator: u64,
    /// Output fetches given up.
    pub fetches_failed: u64,
    /// Done tasks run again because the creator could not fetch the output.
    pub unfetchable_reruns: u64,
    /// `Queued` events (a job's tasks waited for workers).
    pub queued_events: u64,
    /// Nodes that went offline.
    pub departures: u64,
    /// Per task: submission to first assignment, ms.
    pub task_waits_ms: Vec<u32>,
    /// The time series.
    pub samples: Vec<Sample>,
    /// Per job.
    pub jobs: Vec<JobRecord>,
    /// Per node.
    pub nodes: Vec<NodeStats>,
    /// Credits.
    pub credits: Credits,
    /// The ledger's end state, when driven.
    pub ledger: Option<LedgerReport>,
}

/// The ledger machine's end state (`ledger.enabled`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LedgerReport {
    /// Events admitted.
    pub admitted: u64,
    /// Events refused (duplicates, unmatched beyond bounds, invalid).
    pub refused: u64,
    /// Events the simulator could not build (a frame missing).
    pub unsigned: u64,
    /// Credits minted (genesis and mints).
    pub minted: i64,
    /// Credits in escrow at the end.
    pub escrowed: i64,
    /// Sum of all node balances (creators negative, workers positive).
    pub node_balances: i64,
    /// `node balances + escrowed = minted`, and the balances re-derived
    /// from the entries equal the ones kept.
    pub balanced: bool,
}

impl Metrics {
    /// Empty metrics for a scenario of `nodes` nodes.
    pub fn new(_sc: &Scenario, nodes: usize) -> Metrics {
        Metrics {
            nodes: vec![NodeStats::default(); nodes],
            ..Metrics::default()
        }
    }
}

/// The `p`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}
