//! End-to-end tests of the simulator on small scenarios (seconds in a debug
//! build). Each prints the seed it ran, so a failure replays exactly:
//! `rendertrust-sim run <scenario> --seed N`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::path::Path;

use rendertrust_sim::output::Summary;
use rendertrust_sim::scenario::Scenario;

/// A small mesh: `workers` workers in two regions, 2 schedulers, 3 creators.
fn small(workers: usize, extra: &str) -> String {
    format!(
        r#"
name = "small"
duration_s = 900
drain_s = 2400
sample_s = 30
[mesh]
max_jobs = 4096
[[regions]]
name = "a"
weight = 1
[[regions]]
name = "b"
weight = 1
[[gpu_classes]]
name = "fast"
weight = 1
speed = 2.0
[[gpu_classes]]
name = "slow"
weight = 1
speed = 1.0
slots = 2
[[groups]]
name = "workers"
count = {workers}
roles = ["worker"]
[[groups]]
name = "schedulers"
count = 2
roles = ["scheduler"]
churn = false
dishonest = false
regions = {{ a = 1, b = 1 }}
[[groups]]
name = "creators"
count = 3
roles = ["creator"]
churn = false
dishonest = false
[jobs]
frames = {{ dist = "uniform", min = 4, max = 30 }}
seconds_per_frame = {{ dist = "lognormal", mean = 20, sigma = 0.4 }}
input_mb = {{ dist = "fixed", value = 20 }}
{extra}
"#
    )
}

fn run(text: &str, seed: u64, out: Option<&Path>) -> Summary {
    println!("seed {seed}");
    let sc = Scenario::parse(text, &[]).unwrap();
    rendertrust_sim::run(&sc, seed, out, None).unwrap().summary
}

fn assert_conserved(s: &Summary, what: &str) {
    let c = &s.conservation;
    assert!(
        c.tasks_accounted,
        "{what}: tasks not accounted: {:?}",
        s.tasks
    );
    assert!(
        c.credits_balanced,
        "{what}: credits unbalanced: {:?}",
        s.credits
    );
    assert!(c.no_double_escrow, "{what}: an attempt escrowed twice");
    assert_eq!(
        s.tasks.done + s.tasks.failed,
        s.tasks.submitted,
        "{what}: every submitted task ends done or failed"
    );
    assert_eq!(
        s.jobs.finished + s.jobs.rejected + s.jobs.unfinished,
        s.jobs.submitted,
        "{what}: jobs accounted"
    );
    // Every task done at a scheduler is accepted by its creator (no output
    // is lost for good in these scenarios), and paid exactly once.
    assert_eq!(s.tasks.accepted, s.tasks.done, "{what}: accepted = done");
    assert_eq!(
        s.credits.totals.unmatched_settles, 0,
        "{what}: settle without escrow"
    );
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn same_seed_gives_byte_identical_outputs_and_other_seeds_differ() {
    // Churn, failures, loss and dishonest workers: every random path runs.
    let text = small(
        40,
        r#"
[arrivals]
load = 0.7
[churn]
rate = 0.5
offline = { dist = "exponential", mean = 300 }
[failures]
task_fail_prob = 0.05
[net]
rpc_loss = 0.01
gossip_loss = 0.01
[dishonest]
fraction = 0.2
"#,
    );
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let sa = run(&text, 7, Some(a.path()));
    let sb = run(&text, 7, Some(b.path()));
    let sc = run(&text, 8, Some(c.path()));
    let (fa, fb) = (files(a.path()), files(b.path()));
    let names: Vec<&str> = fa.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "summary.json",
        "jobs.csv",
        "nodes.csv",
        "timeseries.csv",
        "makespan_cdf.svg",
        "makespan_cdf.png",
        "queue_wait.svg",
        "utilization.png",
        "redispatches.svg",
        "credits.svg",
        "fairness.png",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert_eq!(fa.len(), fb.len());
    for ((na, da), (nb, db)) in fa.iter().zip(&fb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs between two runs of seed 7");
    }
    assert_eq!(sa, sb);
    assert_ne!(sa, sc, "seeds 7 and 8 gave the same summary");
    let fc = files(c.path());
    let summary = |f: &[(String, Vec<u8>)]| {
        f.iter()
            .find(|(n, _)| n == "summary.json")
            .unwrap()
            .1
            .clone()
    };
    assert_ne!(summary(&fa), summary(&fc));
    // The hostile paths were exercised, and the books still balance.
    assert!(
        sa.activity.departures > 0 && sa.activity.redispatches > 0,
        "{:?}",
        sa.activity
    );
    assert!(sa.tasks.wrong_accepted > 0, "{:?}", sa.tasks);
    for s in [&sa, &sc] {
        let c = &s.conservation;
        assert!(
            c.tasks_accounted && c.credits_balanced && c.no_double_escrow,
            "{c:?}"
        );
    }
}

#[test]
fn no_churn_and_ample_capacity_completes_every_job() {
    let s = run(&small(60, "[arrivals]\nload = 0.2"), 3, None);
    assert_conserved(&s, "ample");
    assert!(s.jobs.submitted >= 5, "{:?}", s.jobs);
    assert_eq!(s.jobs.finished, s.jobs.submitted, "{:?}", s.jobs);
    assert_eq!(s.tasks.failed, 0);
    assert_eq!(s.activity.redispatches, 0);
    assert_eq!(s.activity.takeovers, 0);
    assert_eq!(s.credits.totals.open_escrows, 0, "{:?}", s.credits);
    assert_eq!(
        s.credits.totals.settled + s.credits.totals.refunded,
        s.credits.totals.escrowed
    );
    // Hardly any waiting: a free worker is almost always there.
    assert!(s.queue_wait_s.p50 < 5.0, "{:?}", s.queue_wait_s);
    // The same with adverts reaching the scheduler as they arrive (no 50 ms
    // capacity refresh of the job service): still every job, as quickly.
    let sc = Scenario::parse(
        &small(60, "[arrivals]\nload = 0.2"),
        &[("mesh.capacity_debounce_ms".into(), "0".into())],
    )
    .unwrap();
    println!("seed 3, capacity_debounce_ms = 0");
    let direct = rendertrust_sim::run(&sc, 3, None, None).unwrap().summary;
    assert_conserved(&direct, "ample, direct adverts");
    assert_eq!(direct.jobs.finished, direct.jobs.submitted);
    assert!(direct.queue_wait_s.p50 < 5.0, "{:?}", direct.queue_wait_s);
    // Different timing, different draws: the runs are not the same run.
    assert_ne!(direct.events, s.events);
}

/// The per-kind event counts (`--perf`) account for every event, and agree
/// with the activity counters of the summary for the kinds both count.
#[test]
fn events_by_kind_add_up_and_agree_with_the_summary() {
    let sc = Scenario::parse(&small(40, "[arrivals]\nload = 0.4"), &[]).unwrap();
    let o = rendertrust_sim::run(&sc, 5, None, None).unwrap();
    let kinds: std::collections::BTreeMap<&str, u64> = o.events_by_kind.iter().copied().collect();
    assert_eq!(kinds.len(), o.events_by_kind.len(), "each kind once");
    assert_eq!(kinds.values().sum::<u64>(), o.summary.events, "{kinds:?}");
    assert!(o.events_by_kind.iter().all(|(_, n)| *n > 0));
    assert!(
        o.events_by_kind.windows(2).all(|w| w[0].1 >= w[1].1),
        "most frequent first: {:?}",
        o.events_by_kind
    );
    let a = &o.summary.activity;
    // A scheduler's own advert goes into its own table at once, not as an
    // event; every other delivery is one.
    let advert_events = kinds.get("advert").copied().unwrap_or(0);
    assert!(
        advert_events > 0
            && advert_events <= a.advert_deliveries
            && advert_events + a.adverts >= a.advert_deliveries,
        "{advert_events} advert events, {a:?}"
    );
    assert_eq!(kinds.get("msg_progress").copied(), Some(a.heartbeats));
    assert_eq!(kinds.get("msg_offer").copied(), Some(a.offers));
    assert!(kinds.get("wake").copied().unwrap_or(0) > 0);
}

/// The advert refresh period follows `protocol::capacity::RefreshPolicy`:
/// with a mesh rate of 1 advert a second, 65 nodes re-advertise every 65 s
/// instead of 10 s, the adverts announce it, and no scheduler drops a live
/// node between two of them (every job finishes, nothing is re-dispatched).
#[test]
fn a_slower_refresh_sends_fewer_adverts_and_loses_no_node() {
    let text = small(60, "[arrivals]\nload = 0.2");
    let base = run(&text, 5, None);
    let sc = Scenario::parse(&text, &[("mesh.advert_mesh_rate".into(), "1".into())]).unwrap();
    println!("seed 5, advert_mesh_rate = 1");
    let slow = rendertrust_sim::run(&sc, 5, None, None).unwrap().summary;
    for (s, what) in [(&base, "10 s refresh"), (&slow, "65 s refresh")] {
        assert_conserved(s, what);
        assert!(s.jobs.submitted >= 5, "{what}: {:?}", s.jobs);
        assert_eq!(s.jobs.finished, s.jobs.submitted, "{what}: {:?}", s.jobs);
        assert_eq!(s.activity.redispatches, 0, "{what}");
        assert_eq!(s.activity.takeovers, 0, "{what}");
    }
    assert!(
        slow.activity.adverts * 2 < base.activity.adverts,
        "adverts: {} with the slow refresh, {} at 10 s",
        slow.activity.adverts,
        base.activity.adverts
    );
    // A bound below the base period is refused, as is a rate of 0.
    for (k, v) in [
        ("mesh.advert_max_interval_s", "5"),
        ("mesh.advert_mesh_rate", "0"),
    ] {
        assert!(
            Scenario::parse(&text, &[(k.into(), v.into())]).is_err(),
            "{k}={v}"
        );
    }
}

#[test]
fn more_work_than_capacity_shows_queueing() {
    let ample = run(&small(60, "[arrivals]\nload = 0.2"), 4, None);
    let over = run(&small(60, "[arrivals]\nload = 2.0"), 4, None);
    assert_conserved(&over, "overload");
    // Tasks wait far longer for a worker, and jobs take longer.
    assert!(
        over.queue_wait_s.p50 > 10.0 * ample.queue_wait_s.p50.max(1.0),
        "queue wait p50: ample {} s, overload {} s",
        ample.queue_wait_s.p50,
        over.queue_wait_s.p50
    );
    assert!(over.makespan_s.p50 > 2.0 * ample.makespan_s.p50);
    // The GPUs are saturated while jobs arrive.
    assert!(over.gpu_utilization > 0.85, "{}", over.gpu_utilization);
    assert!(over.activity.queued_events > 0);
}

#[test]
fn a_regional_outage_hands_jobs_to_replicas_and_loses_nothing() {
    // Every node of region b, one scheduler included, is down for 5 minutes.
    let text = small(
        40,
        r#"
[arrivals]
load = 0.5
[[churn.outages]]
region = "b"
at_s = 300
duration_s = 300
fraction = 1.0
"#,
    )
    .replace(
        "roles = [\"scheduler\"]\nchurn = false",
        "roles = [\"scheduler\"]\nchurn = true",
    );
    let s = run(&text, 5, None);
    assert_conserved(&s, "outage");
    assert!(s.activity.departures >= 20, "{:?}", s.activity);
    assert!(
        s.activity.takeovers > 0,
        "no job was taken over: {:?}",
        s.activity
    );
    assert!(s.activity.redispatches > 0);
    assert_eq!(
        s.jobs.finished + s.jobs.rejected,
        s.jobs.submitted,
        "{:?}",
        s.jobs
    );
}

#[test]
fn every_example_scenario_parses_and_conserves_when_scaled_down() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        // 40 workers, smaller jobs, 10 simulated minutes of arrivals.
        let sc = Scenario::load(
            &path,
            &[
                ("groups.0.count".into(), "40".into()),
                (
                    "jobs.frames".into(),
                    "{ dist = \"uniform\", min = 10, max = 30 }".into(),
                ),
                ("duration_s".into(), "600".into()),
                ("drain_s".into(), "3000".into()),
            ],
        )
        .unwrap();
        println!("{}: seed {}", sc.name, sc.seed);
        let s = rendertrust_sim::run(&sc, sc.seed, None, None)
            .unwrap()
            .summary;
        let c = &s.conservation;
        assert!(
            c.tasks_accounted && c.credits_balanced && c.no_double_escrow,
            "{}: {c:?}",
            sc.name
        );
        assert!(s.jobs.submitted > 0, "{}: no job", sc.name);
    }
    assert!(
        seen >= 4,
        "expected the 4 example scenarios in {}",
        dir.display()
    );
}

#[test]
fn a_sweep_runs_every_variant_and_compares_them() {
    let text = small(30, "[arrivals]\nload = 0.5\n[churn]\nrate = 0.0");
    let out = tempfile::tempdir().unwrap();
    let params = vec!["churn.rate=0.0,1.5".parse().unwrap()];
    println!("seed 11");
    let rows =
        rendertrust_sim::sweep::sweep(&text, &[], &params, Some(11), out.path(), false).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].variant, "churn.rate=0.0");
    let (calm, churny) = (&rows[0].summary, &rows[1].summary);
    assert_eq!(calm.activity.departures, 0);
    assert!(churny.activity.departures > 0);
    assert!(churny.activity.redispatches > calm.activity.redispatches);
    let csv = std::fs::read_to_string(out.path().join("comparison.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(out.path().join("churn.rate=1.5/summary.json").is_file());
    // The same sweep again gives the same comparison, whatever the threads did.
    let again = tempfile::tempdir().unwrap();
    rendertrust_sim::sweep::sweep(&text, &[], &params, Some(11), again.path(), false).unwrap();
    assert_eq!(
        csv,
        std::fs::read_to_string(again.path().join("comparison.csv")).unwrap()
    );
}

#[test]
fn the_ledger_machine_pays_what_creators_accepted_and_balances() {
    // Failed runs make refunds; every credit flow goes through the real,
    // really signed ledger machine.
    let text = small(
        20,
        "[arrivals]\nload = 0.5\n[failures]\ntask_fail_prob = 0.1\n[ledger]\nenabled = true",
    );
    println!("seed 9");
    let sc = Scenario::parse(&text, &[]).unwrap();
    let out = rendertrust_sim::run(&sc, 9, None, None).unwrap();
    let s = &out.summary;
    assert_conserved(s, "ledger");
    let l = s.ledger.expect("ledger report");
    assert!(l.balanced, "{l:?}");
    assert_eq!(s.conservation.ledger_balanced, Some(true));
    assert_eq!((l.unsigned, l.refused), (0, 0), "{l:?}");
    let t = &s.credits.totals;
    assert!(t.refunded > 0, "no refund exercised: {t:?}");
    // Every escrow, refund and settle was admitted; nothing is left in escrow.
    let refunds = s.activity.assignments - s.tasks.accepted;
    assert_eq!(
        l.admitted,
        s.activity.assignments + refunds + s.tasks.accepted,
        "{l:?}"
    );
    assert_eq!(l.escrowed, 0, "{l:?}");
    // The workers' ledger balances are exactly what the settles paid, and
    // the creators paid it (no mint: their balances are its negative).
    let workers: u64 = out.metrics.nodes.iter().map(|n| n.credits).sum();
    assert_eq!(workers, t.settled, "{t:?}");
    assert_eq!(l.node_balances, l.minted - l.escrowed);
}

/// The trust model can fail: with no verification, liars' wrong outputs are
/// accepted and paid; with every task verified (quorum or spot-check at
/// 1000‰) none is, every lie on a verified task is caught, no honest
/// worker is blamed, and cheaters earn nothing. The same seed replays.
#[test]
fn verifying_every_task_accepts_no_wrong_result_and_none_accepts_some() {
    let text = |policy: &str| {
        small(
            40,
            &format!(
                r#"
[arrivals]
load = 0.3
[dishonest]
fraction = 0.2
wrong = 1.0
lazy = 1.0
slow = 0.0
silent = 0.0
[trust]
policy = "{policy}"
sample_permille = 1000
reputation = true
"#
            ),
        )
        .replace(
            "[[groups]]\nname = \"workers\"",
            "[[groups]]\nname = \"workers\"\ndishonest = true",
        )
    };
    let none = run(&text("none"), 5, None);
    assert_conserved(&none, "no verification");
    assert!(none.trust.counts.wrong_results > 0, "{:?}", none.trust);
    assert!(none.tasks.wrong_accepted > 0, "{:?}", none.tasks);
    assert!(none.trust.cheater_credits > 0, "{:?}", none.trust);
    assert_eq!(none.trust.counts.caught, 0);
    for policy in ["quorum", "spot-check"] {
        let s = run(&text(policy), 5, None);
        let what = format!("{policy} at 1000‰");
        assert!(s.conservation.tasks_accounted, "{what}: {:?}", s.tasks);
        assert!(s.conservation.credits_balanced, "{what}: {:?}", s.credits);
        assert!(s.trust.counts.wrong_results > 0, "{what}: {:?}", s.trust);
        assert_eq!(s.tasks.wrong_accepted, 0, "{what}: {:?}", s.tasks);
        assert_eq!(s.trust.wrong_accepted_fraction, 0.0, "{what}");
        assert!(s.tasks.accepted > 0, "{what}: {:?}", s.tasks);
        assert!(s.trust.counts.caught > 0, "{what}: {:?}", s.trust);
        assert_eq!(s.trust.counts.failed_honest, 0, "{what}: {:?}", s.trust);
        assert_eq!(s.trust.cheater_credits, 0, "{what}: {:?}", s.trust);
        assert_eq!(s.credits.totals.paid_for_wrong, 0, "{what}");
        assert!(s.trust.overhead_pct > 0.0, "{what}: {:?}", s.trust);
        let again = run(&text(policy), 5, None);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            serde_json::to_string(&again).unwrap(),
            "{what}: the same seed replays"
        );
    }
}
