//! The state machine's own semantics, which openraft's suite cannot know: each request as the
//! leader put it in the log, versions that are log indexes, compare-and-swap and touch decided
//! at apply on the leader's time, all of it in a snapshot built on one node and installed on
//! another (a sessiondb backup restored), and durable across a reopen.

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, Membership, RaftSnapshotBuilder};
use sessiondb_cluster::{LogStore, Request, Response, StateMachine, TypeConfig};

/// The leader's time in the requests: the real time, since each node's store expires values
/// on its own clock too (a value the leader put with a deadline already past reads as absent).
fn now() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    since.as_millis() as u64
}

fn entry(index: u64, req: Request) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(req),
    }
}

fn put(key: &str, value: &str, expires_at_ms: u64) -> Request {
    Request::Put {
        key: key.into(),
        value: value.into(),
        expires_at_ms,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn requests_apply_as_the_leader_decided_and_travel_in_snapshots() {
    let (now_ms, later) = (now(), now() + 3_600_000);
    runtime().block_on(async {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sm = StateMachine::open(a.path()).unwrap();
        let membership = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], None)),
        };
        let responses = sm
            .apply(vec![
                membership,
                entry(2, put("session", "v1", later)),
                // Expired at the leader's time (now_ms + 1 > now_ms): absent for a compare-and-swap.
                entry(3, put("gone", "x", now_ms - 1)),
                entry(
                    4,
                    Request::CompareAndSwap {
                        key: "session".into(),
                        now_ms,
                        expected: Some(2),
                        value: "v2".into(),
                        expires_at_ms: later,
                    },
                ),
                // A stale version: refused, the live version reported.
                entry(
                    5,
                    Request::CompareAndSwap {
                        key: "session".into(),
                        now_ms,
                        expected: Some(2),
                        value: "lost".into(),
                        expires_at_ms: later,
                    },
                ),
                entry(
                    6,
                    Request::CompareAndSwap {
                        key: "gone".into(),
                        now_ms,
                        expected: None,
                        value: "new".into(),
                        expires_at_ms: 0,
                    },
                ),
                entry(
                    7,
                    Request::Touch {
                        key: "session".into(),
                        now_ms,
                        expires_at_ms: later + 1,
                    },
                ),
                entry(
                    8,
                    Request::Touch {
                        key: "absent".into(),
                        now_ms,
                        expires_at_ms: later,
                    },
                ),
                entry(9, put("doomed", "d", 0)),
                entry(10, Request::Delete { key: "doomed".into() }),
            ])
            .await
            .unwrap();
        let applied = |version| Response {
            applied: true,
            version,
            ..Response::default()
        };
        assert_eq!(
            responses,
            vec![
                Response::default(),
                applied(Some(2)),
                applied(Some(3)),
                applied(Some(4)),
                Response {
                    applied: false,
                    version: Some(4),
                    ..Response::default()
                },
                applied(Some(6)),
                applied(Some(4)),
                Response::default(),
                applied(Some(9)),
                applied(None),
            ]
        );
        let check = |sm: &StateMachine, what: &str| {
            let s = sm.get(b"session").unwrap().unwrap();
            assert_eq!(
                (s.value.as_slice(), s.version, s.expires_at_ms),
                (&b"v2"[..], 4, later + 1),
                "{what}"
            );
            let g = sm.get(b"gone").unwrap().unwrap();
            assert_eq!(
                (g.value.as_slice(), g.version, g.expires_at_ms),
                (&b"new"[..], 6, 0),
                "{what}"
            );
            assert_eq!(sm.get(b"doomed").unwrap(), None, "{what}");
            assert_eq!(sm.applied(), Some(log_id(1, 1, 10)), "{what}");
        };
        check(&sm, "applied");

        // A snapshot, installed on another node's state machine.
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let mut other = StateMachine::open(b.path()).unwrap();
        let mut receiving = other.begin_receiving_snapshot().await.unwrap();
        *receiving = *snapshot.snapshot;
        other.install_snapshot(&snapshot.meta, receiving).await.unwrap();
        check(&other, "installed");
        let (applied, membership) = other.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 10)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1, 1)));
        drop(other);

        // Both survive a reopen: the installed store is the one `STATE` names.
        let reopened = StateMachine::open(b.path()).unwrap();
        check(&reopened, "installed, reopened");
        drop(sm);
        check(&StateMachine::open(a.path()).unwrap(), "reopened");
    });
}

/// Entries, vote, committed log id, purge and truncation survive a reopen (the suite builds a
/// fresh store for each of its checks, so it never reopens one).
#[test]
fn the_log_survives_a_reopen() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        let vote = openraft::Vote::new(3, 2);
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(3, 2, 4))).await.unwrap();
        log.append_entries((1..=6).map(|i| entry(i, put("k", &format!("v{i}"), 0))))
            .unwrap();
        log.truncate(log_id(1, 1, 5)).await.unwrap();
        log.purge(log_id(1, 1, 2)).await.unwrap();
        drop(log);
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 2, 4)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 4)));
        use openraft::RaftLogReader;
        let kept = log.try_get_log_entries(0..10).await.unwrap();
        let indexes: Vec<u64> = kept.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, [3, 4], "purged through 2, truncated from 5");
    });
}
