use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use rendertrust_protocol::ledger::testkit::{Kit, T0};
use rendertrust_protocol::ledger::{LedgerPeer, SettleStatus};
use rendertrust_protocol::wire::TaskId;

use super::*;

const NOW: u64 = T0 + 1_000;

fn rollup_config() -> RollupConfig {
    RollupConfig::default()
}

/// `tasks` escrows and their settles (interleaved), all in one epoch.
fn events(kit: &Kit, tasks: u32) -> Vec<LedgerEvent> {
    let spec = kit.spec(0, 7, tasks, 10).unwrap();
    let job = spec.verify().unwrap().id;
    let creator = kit.creators[0].node_id();
    let mut out = Vec::new();
    for index in 0..tasks {
        let offer = kit.offer(
            TaskId { job, index },
            0,
            index as usize % 4,
            index as usize % 2,
            3,
        );
        out.push(kit.escrow_for(&spec, &offer, true).unwrap());
        out.push(
            kit.settle(
                &kit.receipt(&offer, &creator),
                T0 + 130_000 + u64::from(index),
            )
            .unwrap(),
        );
    }
    out
}

fn open(dir: &Path, kit: &Kit) -> LedgerStore {
    let store = Store::open(dir).unwrap();
    LedgerStore::open(&store, &kit.ledgers[0], kit.config(), rollup_config()).unwrap()
}

fn close_time(p: &LedgerPeer) -> u64 {
    let r = p.rollup();
    r.close_time(r.epoch_of(T0 + 130_000))
}

fn actions(s: &mut LedgerStore) -> Vec<LedgerAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn published(actions: &[LedgerAction]) -> Vec<RollupHeader> {
    actions
        .iter()
        .filter_map(|a| match a {
            LedgerAction::Publish(h) => Some(h.verify().unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn reopen_rebuilds_balances_roots_and_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(1);
    let all = events(&kit, 200);
    let (digest, header, tip, records) = {
        let mut s = open(dir.path(), &kit);
        for chunk in all.chunks(37) {
            let results = s.ingest(chunk, NOW).unwrap();
            assert!(results.iter().all(Result::is_ok));
        }
        let close = close_time(s.peer());
        s.handle_timeout(close).unwrap();
        let done = actions(&mut s);
        for a in &done {
            if let LedgerAction::Rollup(RollupAction::Anchor { epoch, .. }) = a {
                s.anchored(*epoch).unwrap();
            }
        }
        let headers = published(&done);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[0].count, 200);
        (
            s.peer().ledger().digest(),
            headers[0].clone(),
            s.peer().rollup().chain_tip(),
            s.records(),
        )
    };
    let mut s = open(dir.path(), &kit);
    assert_eq!(s.peer().ledger().digest(), digest);
    assert_eq!(s.peer().rollup().header(header.epoch), Some(&header));
    assert_eq!(s.peer().rollup().chain_tip(), tip);
    assert_eq!(s.records(), records);
    assert_eq!(s.journaled_events(), 400);
    // Replayed state does not re-publish or re-anchor.
    s.handle_timeout(close_time(s.peer()) + 1).unwrap();
    assert!(actions(&mut s).is_empty());
    // Proofs against the restored header.
    let receipt = all[1].id();
    s.proof(&receipt).unwrap().verify(&receipt).unwrap();
    // Everything again: duplicates, nothing journaled.
    let again = s.ingest(&all, NOW + 5).unwrap();
    assert!(
        again
            .iter()
            .all(|r| matches!(r, Err(LedgerRejected::Duplicate { .. })))
    );
    assert_eq!((s.records(), s.journaled_events()), (records, 400));
}

#[test]
fn dropped_in_memory_state_is_rebuilt_exactly() {
    // The process "dies" after its last ingest returned: nothing but what
    // ingest flushed survives.
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(2);
    let all = events(&kit, 60);
    let mut reference = LedgerPeer::new(kit.ledgers[0].node_id(), kit.config(), rollup_config());
    let s = {
        let mut s = open(dir.path(), &kit);
        s.ingest(&all[..70], NOW).unwrap();
        s
    };
    reference.handle_events(&all[..70], NOW);
    drop(s);
    let mut s = open(dir.path(), &kit);
    assert_eq!(s.peer().ledger().digest(), reference.ledger().digest());
    assert_eq!(s.peer().ledger().pending(), reference.ledger().pending());
    // Carry on: same end as a peer that never stopped.
    s.ingest(&all[70..], NOW + 10).unwrap();
    reference.handle_events(&all[70..], NOW + 10);
    let close = close_time(&reference);
    s.handle_timeout(close).unwrap();
    reference.handle_timeout(close);
    assert_eq!(s.peer().ledger().digest(), reference.ledger().digest());
    let epoch = reference.rollup().epoch_of(T0 + 130_000);
    assert_eq!(
        s.peer().rollup().header(epoch).map(|h| (h.root, h.count)),
        reference.rollup().header(epoch).map(|h| (h.root, h.count))
    );
}

#[test]
fn late_receipts_and_revisions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(3);
    let all = events(&kit, 10);
    let close;
    {
        let mut s = open(dir.path(), &kit);
        s.set_ledgers([kit.ledgers[1].node_id()]);
        s.ingest(&all[..16], NOW).unwrap();
        close = close_time(s.peer());
        s.handle_timeout(close).unwrap();
        assert_eq!(published(&actions(&mut s)).len(), 1);
        // Two more receipts after close, before final: a revision.
        s.ingest(&all[16..], close + 10).unwrap();
        s.handle_timeout(close + 20).unwrap();
        let revision = published(&actions(&mut s));
        assert_eq!(revision.len(), 1);
        assert_eq!(revision[0].count, 10);
    }
    let s = open(dir.path(), &kit);
    let epoch = s.peer().rollup().epoch_of(T0 + 130_000);
    assert_eq!(s.peer().rollup().header(epoch).map(|h| h.count), Some(10));
    assert!(!s.peer().rollup().is_final(epoch));
}

#[test]
fn a_tampered_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(4);
    let all = events(&kit, 5);
    {
        let mut s = open(dir.path(), &kit);
        s.ingest(&all[..6], NOW).unwrap(); // record 0
        s.ingest(&all[6..], NOW).unwrap(); // record 1
        s.handle_timeout(close_time(s.peer())).unwrap(); // header: record 2
    }
    // Remove the second batch of events: the header no longer matches.
    {
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree(TREE).unwrap();
        tree.remove(log_key(1)).unwrap();
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let err =
        LedgerStore::open(&store, &kit.ledgers[0], kit.config(), rollup_config()).unwrap_err();
    assert!(
        matches!(err, LedgerStoreError::Replay { seq: 2, .. }),
        "{err}"
    );
    // Garbage in a record, or a truncated one: refused with its sequence number.
    let tree = store.tree(TREE).unwrap();
    let first = tree.get(log_key(0)).unwrap().unwrap();
    tree.insert(log_key(0), &first[..first.len() - 3]).unwrap();
    let err =
        LedgerStore::open(&store, &kit.ledgers[0], kit.config(), rollup_config()).unwrap_err();
    assert!(
        matches!(err, LedgerStoreError::Corrupt { seq: 0, .. }),
        "{err}"
    );
    tree.insert(log_key(0), first).unwrap();
    tree.insert(log_key(1), &b"garbage"[..]).unwrap();
    let err =
        LedgerStore::open(&store, &kit.ledgers[0], kit.config(), rollup_config()).unwrap_err();
    assert!(
        matches!(err, LedgerStoreError::Corrupt { seq: 1, .. }),
        "{err}"
    );
}

#[test]
fn serves_receipts_with_their_escrows() {
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(5);
    let all = events(&kit, 8);
    let mut s = open(dir.path(), &kit);
    s.ingest(&all, NOW).unwrap();
    let receipts: Vec<MessageId> = all.iter().skip(1).step_by(2).map(LedgerEvent::id).collect();
    let mut ids = receipts.clone();
    ids.push(MessageId([0; 32]));
    let served = s.events_for_receipts(&ids).unwrap();
    assert_eq!(served.len(), 16);
    // A fresh ledger fed only what was served pays the same.
    let mut other = LedgerPeer::new(kit.ledgers[1].node_id(), kit.config(), rollup_config());
    let results = other.handle_events(&served, NOW);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(other.ledger().digest(), s.peer().ledger().digest());
    for r in &receipts {
        assert_eq!(other.ledger().receipt_status(r), Some(SettleStatus::Paid));
    }
}

// ---- SIGKILL mid-epoch ---------------------------------------------------

const CRASH_DIR: &str = "RENDERTRUST_LEDGER_CRASH_DIR";
const CRASH_TASKS: u32 = 1500;
const CRASH_BATCH: usize = 40;

/// The child side of `sigkill_mid_epoch_loses_nothing_and_applies_nothing_twice`:
/// ingests batches and prints how many events are acknowledged after each.
#[test]
#[ignore = "run as a child process by the SIGKILL test"]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let kit = Kit::new(6);
    let all = events(&kit, CRASH_TASKS);
    let mut s = open(Path::new(&dir), &kit);
    let mut acked = 0;
    let mut stdout = std::io::stdout();
    for chunk in all.chunks(CRASH_BATCH) {
        s.ingest(chunk, NOW).unwrap();
        acked += chunk.len();
        writeln!(stdout, "acked {acked}").unwrap();
        stdout.flush().unwrap();
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn sigkill_mid_epoch_loses_nothing_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(6);
    let all = events(&kit, CRASH_TASKS);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ledger_store::tests::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = 0usize;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().unwrap();
            if acked >= all.len() / 3 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(acked >= all.len() / 3, "child stopped early at {acked}");
    assert!(acked < all.len(), "killed after the epoch's last event");

    // Restart: every acknowledged event is there.
    let mut s = open(dir.path(), &kit);
    for e in &all[..acked] {
        assert!(
            s.peer().ledger().contains(&e.id()),
            "acknowledged event lost"
        );
    }
    // The journal is a prefix of what the child ingested (batches are atomic).
    let journaled = s.journaled_events() as usize;
    assert!(
        (journaled >= acked && journaled.is_multiple_of(CRASH_BATCH)) || journaled == all.len()
    );
    let mut prefix = LedgerPeer::new(kit.ledgers[0].node_id(), kit.config(), rollup_config());
    prefix.handle_events(&all[..journaled], NOW);
    assert_eq!(s.peer().ledger().digest(), prefix.ledger().digest());

    // Everything again, as gossip would redeliver it: nothing applied twice.
    let results = s.ingest(&all, NOW + 1).unwrap();
    for (i, r) in results.iter().enumerate() {
        if i < journaled {
            assert!(
                matches!(r, Err(LedgerRejected::Duplicate { .. })),
                "event {i}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "event {i}: {r:?}");
        }
    }
    assert_eq!(s.journaled_events() as usize, all.len());

    // The other ledger peer saw everything without a crash; same root.
    let mut other = LedgerPeer::new(kit.ledgers[1].node_id(), kit.config(), rollup_config());
    other.handle_events(&all, NOW);
    let close = close_time(&other);
    other.handle_timeout(close);
    s.handle_timeout(close).unwrap();
    let mine = published(&actions(&mut s));
    let epoch = other.rollup().epoch_of(T0 + 130_000);
    let theirs = other.rollup().header(epoch).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].root, mine[0].count), (theirs.root, theirs.count));
    assert_eq!(mine[0].count, u64::from(CRASH_TASKS));
    assert_eq!(s.peer().ledger().digest(), other.ledger().digest());
}

#[test]
fn an_unconfirmed_anchor_is_handed_out_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(7);
    let all = events(&kit, 4);
    let anchor = {
        let mut s = open(dir.path(), &kit);
        s.ingest(&all, NOW).unwrap();
        s.handle_timeout(close_time(s.peer())).unwrap();
        // Alone: final at close, and this ledger anchors.
        let a = actions(&mut s);
        let anchor = a
            .iter()
            .find(|x| matches!(x, LedgerAction::Rollup(RollupAction::Anchor { .. })))
            .cloned()
            .unwrap();
        assert!(
            a.iter()
                .any(|x| matches!(x, LedgerAction::Rollup(RollupAction::Final { .. })))
        );
        anchor
        // Crash before the anchor was confirmed.
    };
    let mut s = open(dir.path(), &kit);
    assert_eq!(actions(&mut s), vec![anchor.clone()]);
    let LedgerAction::Rollup(RollupAction::Anchor { epoch, .. }) = anchor else {
        panic!()
    };
    s.anchored(epoch).unwrap();
    drop(s);
    let mut s = open(dir.path(), &kit);
    assert!(actions(&mut s).is_empty());
}

/// The flake this fixed (tests/ledger.rs, a killed ledger): after a restart,
/// epoch e + 1 agreed and turned final while e still reconciled, its anchor
/// went out first, and the anchor journal then refused e for good (epochs
/// must increase). An owed anchor now waits for every earlier epoch, across
/// a restart too.
#[test]
fn an_owed_anchor_waits_for_an_earlier_epoch_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kit = Kit::new(11);
    let config = RollupConfig {
        epoch_ms: 10_000,
        grace_ms: 2_000,
        reconcile_window_ms: 60_000,
        max_ledgers: 4,
    };
    let (me, peer) = (kit.ledgers[0].node_id(), kit.ledgers[1].node_id());
    // A pair of epochs this ledger ranks first for, against the peer.
    let mut rank = rendertrust_protocol::rollup::Rollup::new(me, config);
    rank.set_ledgers([peer]);
    let base = (0..100u64)
        .map(|k| T0 + 130_000 + k * 10_000)
        .find(|t| {
            let e = rank.epoch_of(*t);
            rank.anchorer(e) == me && rank.anchorer(e + 1) == me
        })
        .unwrap();
    let e = rank.epoch_of(base);
    // Task 0 accepted in e, task 1 in e + 1; the peer also holds task 2 in e.
    let spec = kit.spec(0, 9, 3, 10).unwrap();
    let job = spec.verify().unwrap().id;
    let creator = kit.creators[0].node_id();
    let task = |index: u32, at: u64| {
        let offer = kit.offer(TaskId { job, index }, 0, index as usize, 0, 3);
        vec![
            kit.escrow_for(&spec, &offer, true).unwrap(),
            kit.settle(&kit.receipt(&offer, &creator), at).unwrap(),
        ]
    };
    let mine: Vec<LedgerEvent> = [task(0, base), task(1, base + 10_000)].concat();
    let theirs: Vec<LedgerEvent> = [mine.clone(), task(2, base + 1)].concat();
    let mut other = LedgerPeer::new(peer, kit.config(), config);
    other.rollup_mut().set_ledgers([me]);
    other.handle_events(&theirs, NOW);
    let closed = rank.close_time(e + 1);
    other.handle_timeout(closed);
    let header = |epoch: u64| {
        let h = other.rollup().header(epoch).unwrap().clone();
        Signed::sign(&kit.ledgers[1], &h).unwrap()
    };
    let open_store = || {
        let store = Store::open(dir.path()).unwrap();
        let mut s = LedgerStore::open(&store, &kit.ledgers[0], kit.config(), config).unwrap();
        s.set_ledgers([peer]);
        s
    };
    {
        let mut s = open_store();
        assert!(s.ingest(&mine, NOW).unwrap().iter().all(Result::is_ok));
        s.handle_timeout(closed).unwrap();
        assert_eq!(published(&actions(&mut s)).len(), 2);
        // e + 1 agrees: final and owed, held behind e, which reconciles.
        s.handle_header(&header(e + 1), closed + 1)
            .unwrap()
            .unwrap();
        s.handle_header(&header(e), closed + 1).unwrap().unwrap();
        let a = actions(&mut s);
        assert!(a.iter().any(|x| matches!(
            x,
            LedgerAction::Rollup(RollupAction::Final { epoch, anchor: true, .. }) if *epoch == e + 1
        )));
        assert!(
            !a.iter()
                .any(|x| matches!(x, LedgerAction::Rollup(RollupAction::Anchor { .. }))),
            "{a:?}"
        );
        // Killed here.
    }
    let mut s = open_store();
    assert!(
        !actions(&mut s)
            .iter()
            .any(|x| matches!(x, LedgerAction::Rollup(RollupAction::Anchor { .. }))),
        "the owed anchor of e + 1 must wait for e"
    );
    // e turns final at the end of its window: both anchors, e first.
    s.handle_timeout(rank.final_time(e)).unwrap();
    let anchors: Vec<u64> = actions(&mut s)
        .iter()
        .filter_map(|x| match x {
            LedgerAction::Rollup(RollupAction::Anchor { epoch, .. }) => Some(*epoch),
            _ => None,
        })
        .collect();
    assert_eq!(anchors, vec![e, e + 1]);
}
