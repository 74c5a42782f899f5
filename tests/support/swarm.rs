//! The model of the seeded swarm (`tests/swarm.rs`) and of the `ops_vs_model` fuzz target
//! (`fuzz/ops_vs_model.rs`): the operations they issue, a `BTreeMap` of key → (value,
//! deadline) they apply to, and the oracle of docs/reliability.md as a search for the prefix of the issued
//! operations that a recovered store holds.

use std::collections::BTreeMap;
use std::time::Duration;

use sessiondb::{Batch, Db, Durability};

use super::{batch_of, PutOrDelete};

/// Key → (value, expiry deadline in ms or 0).
pub type State = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

#[derive(Debug, Clone)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>, Option<u64>),
    Delete(Vec<u8>),
    Batch(Vec<PutOrDelete>),
    /// A put with `Durability::Lazy` / `Durability::Immediate`.
    Lazy(Vec<u8>, Vec<u8>),
    Immediate(Vec<u8>, Vec<u8>),
    /// A touch with a TTL in ms, and whether the model says the key is live (it must succeed).
    Touch(Vec<u8>, u64, bool),
    /// `put_if_version` with the live version (`true`: must succeed) or a stale one (must
    /// conflict and write nothing).
    Cas(Vec<u8>, Vec<u8>, bool),
}

pub fn apply(state: &mut State, op: &Op, now_ms: u64) {
    match op {
        Op::Put(k, v, ttl) => {
            state.insert(k.clone(), (v.clone(), ttl.map_or(0, |t| now_ms + t)));
        }
        Op::Delete(k) => {
            state.remove(k);
        }
        Op::Batch(ops) => {
            for (k, v) in ops {
                match v {
                    Some(v) => state.insert(k.clone(), (v.clone(), 0)),
                    None => state.remove(k),
                };
            }
        }
        Op::Lazy(k, v) | Op::Immediate(k, v) | Op::Cas(k, v, true) => {
            state.insert(k.clone(), (v.clone(), 0));
        }
        Op::Cas(_, _, false) => {}
        Op::Touch(k, ttl, _) => {
            if let Some((_, exp)) = state.get_mut(k) {
                if *exp == 0 || *exp > now_ms {
                    *exp = now_ms + ttl;
                }
            }
        }
    }
}

/// The live entries of `state`, with their deadlines.
pub fn live_entries(state: &State, now_ms: u64) -> State {
    state
        .iter()
        .filter(|(_, (_, exp))| *exp == 0 || *exp > now_ms)
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect()
}

pub fn visible(state: &State, now_ms: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    state
        .iter()
        .filter(|(_, (_, exp))| *exp == 0 || *exp > now_ms)
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

/// the oracle of docs/reliability.md: the model after the longest prefix of `issued` (each with the clock at
/// its issue) applied to `base`, holding at least the first `must_survive`, whose live entries
/// (deadlines included: a lost touch changes only a deadline) equal `got` at `now_ms`.
/// `None` when no such prefix exists.
pub fn recovered_prefix(
    base: &State,
    issued: &[(Op, u64)],
    must_survive: usize,
    got: &State,
    now_ms: u64,
) -> Option<(usize, State)> {
    let mut state = base.clone();
    let mut found = None;
    for k in 0..=issued.len() {
        if k > 0 {
            let (op, at) = &issued[k - 1];
            apply(&mut state, op, *at);
        }
        if k >= must_survive && &live_entries(&state, now_ms) == got {
            found = Some((k, state.clone()));
        }
    }
    found
}

/// Issues `op` on `db`; `Err` only for the errors an injected fault explains.
pub fn issue(db: &Db, op: &Op) -> sessiondb::Result<()> {
    match op {
        Op::Put(k, v, None) => db.put(k, v),
        Op::Put(k, v, Some(ttl)) => db.put_with_ttl(k, v, Duration::from_millis(*ttl)),
        Op::Delete(k) => db.delete(k),
        Op::Batch(ops) => db.write(batch_of(ops)),
        Op::Lazy(k, v) | Op::Immediate(k, v) => {
            let mut b = Batch::new();
            let d = if matches!(op, Op::Lazy(..)) {
                Durability::Lazy
            } else {
                Durability::Immediate
            };
            b.put(k, v).durability(d);
            db.write(b)
        }
        Op::Touch(k, ttl, live) => {
            let touched = db.touch(k, Duration::from_millis(*ttl))?;
            assert_eq!(touched, *live, "touch of {k:?}: the model says live = {live}");
            Ok(())
        }
        Op::Cas(k, v, fresh) => {
            let live = db.get_with_version(k)?.map(|(_, version)| version);
            let expected = if *fresh { live } else { Some(u64::MAX / 2) };
            match db.put_if_version(k, v, expected, None)? {
                Ok(_) => assert!(*fresh, "a compare-and-swap on a stale version succeeded"),
                Err(c) => {
                    assert!(!*fresh, "a compare-and-swap on the live version conflicted: {c}");
                    assert_eq!(c.actual, live, "the conflict names the live version");
                }
            }
            Ok(())
        }
    }
}
