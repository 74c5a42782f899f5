//! What recovery meets on disk after a fault (docs/reliability.md, F8, F10, F11, F12), and a crash in the
//! middle of recovery itself, on the simulated storage.
//!
//! Scenario, one test each:
//! - `file_growth_not_durable`: segments are created at full size and fsynced before use, so no
//!   crash leaves a segment shorter than its size; then the last segment's durable length is cut
//!   (as if its size change were lost) at the header's end, at record boundaries, inside
//!   records, and past the data; the cut of an older segment.
//! - `bitflip_mid_log_refuses`: one bit flips in a record that later acknowledged records
//!   follow, in an older segment or the last one; opened in each recovery mode.
//! - `misdirected_record_detected`: a valid record's bytes copied into another segment, to a
//!   wrong offset of its own segment (mid-log, and past the end), and a write misdirected by the
//!   simulator (`Faults::misdirect`) with acknowledged writes after it.
//! - `read_eio_during_recovery`: reads fail with EIO while the store opens (always, or at
//!   random rates), and afterwards while it reads.
//! - `crash_during_recovery`: a torn tail and a leftover temp file, then the machine halts at
//!   each storage operation of the recovering open (and at random pairs of points in two
//!   successive opens) and loses power.
//!
//! Method: the real engine on `SimStorage` (deterministic: no background threads, a manual
//! clock), a `BTreeMap` model of every prefix of the issued operations, record boundaries from
//! the documented segment framing. Seeds come from `SESSIONDB_SEED` (printed on failure).
//!
//! Invariant: recovery trusts records, not file lengths, and opens to the records wholly present;
//! damage that later acknowledged records follow, and a misplaced record, is refused with
//! `Error::Corruption { path, offset }` naming the segment and an offset inside the damaged
//! record, never silently cut; `Salvage` opens and returns no value that was never written; a
//! read error fails the open or the read with `Error::Io` naming a file of the store, never a
//! wrong value; recovery interrupted by a crash is idempotent: the oracle of docs/reliability.md holds and a
//! further open gives the same state.

mod support;

use std::path::{Path, PathBuf};

use sessiondb::internals::sim::{CrashMode, Faults, SimStorage};
use sessiondb::{Db, Error, RecoveryMode, SyncMode};
use support::faults::{
    assert_only_written, check_oracle, contents, create_durable, issue, options, rolling_write, run_all, segments,
    segments_with_records, state_without, states, value, workload, written_values, Op, RollingWrite, State, DIR,
};
use support::{assert_corruption_in, parse_records, RecordPos, Rng, SEGMENT_SIZE_SMALL};

fn crash_mode(i: u64) -> CrashMode {
    match i % 3 {
        0 => CrashMode::DropUnsynced,
        1 => CrashMode::Torn { sector: 512 },
        _ => CrashMode::Torn { sector: 4096 },
    }
}

/// A closed `SyncMode::Always` store holding `ops`, one record each.
fn closed_store(seed: u64, ops: &[Op]) -> SimStorage {
    let sim = SimStorage::new(seed);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    run_all(&db, ops, "closed_store");
    db.close().unwrap();
    sim
}

/// How many of `ops` fill at least `segments` segments with at least `last_records` records in
/// the last one.
fn ops_for_layout(seed: u64, ops: &[Op], segments: usize, last_records: usize) -> usize {
    let sim = SimStorage::new(seed);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    for (i, op) in ops.iter().enumerate() {
        issue(&db, op).unwrap();
        let segs = segments_with_records(&sim);
        if segs.len() >= segments && segs.last().unwrap().1.len() >= last_records {
            return i + 1;
        }
    }
    panic!("{} operations do not make the layout", ops.len());
}

// ---------------------------------------------------------------------------------------------
// file_growth_not_durable

#[test]
fn file_growth_not_durable() {
    let (seed, _guard) = support::seeded("file_growth_not_durable");
    // Enough operations for two segments and a few records in the last; 10 more to write
    // after a cut.
    let all = workload(seed, 250);
    let ops = &all[..ops_for_layout(seed, &all, 2, 6)];
    let states = states(&all);

    // 1. No crash, at any storage operation of a write that rolls to a new segment, leaves a
    //    segment shorter than its full size: the size is fsynced before the name exists.
    let RollingWrite {
        index: rolled,
        start,
        ops: roll_ops,
    } = rolling_write(seed, ops);
    for n in 0..=roll_ops {
        for m in 0..3 {
            let what = format!(
                "halt after {n} of the rolling write's {roll_ops} operations, {:?}",
                crash_mode(m)
            );
            let sim = SimStorage::new(seed ^ (n << 16) ^ m);
            let opts = options(&sim, SyncMode::Always);
            let db = Db::open_with(DIR, opts.clone()).unwrap();
            run_all(&db, &ops[..rolled], &what);
            sim.halt_after(Some(start + n));
            let acked = rolled + usize::from(issue(&db, &ops[rolled]).is_ok());
            sim.crash(crash_mode(m));
            drop(db);
            for seg in segments(&sim) {
                let len = sim.read_file(&seg).unwrap().len() as u64;
                assert_eq!(
                    len,
                    SEGMENT_SIZE_SMALL,
                    "{what}: {} has a durable size of {len}",
                    seg.display()
                );
            }
            check_oracle(&opts, &states, acked, rolled + 1, &what);
        }
    }

    // 2. The last segment's durable length cut below its data: recovery opens to the records
    //    wholly present and goes on from there.
    let sim = closed_store(seed, ops);
    let segs = segments_with_records(&sim);
    assert!(segs.len() >= 2, "the test wants several segments");
    let (last, recs) = segs.last().unwrap().clone();
    assert!(recs.len() >= 4, "the test wants a few records in the last segment");
    let before_last = recs[0].seq as usize - 1;
    let data_end = recs.last().unwrap().end();
    let mut cuts = vec![40, data_end, data_end + 100, SEGMENT_SIZE_SMALL - 1];
    for rec in recs.iter().take(2).chain(recs.iter().rev().take(2)) {
        for inside in [0, 1, 12, 25, rec.len / 2, rec.len - 1] {
            cuts.push(rec.start + inside);
        }
    }
    for (c, &cut) in cuts.iter().enumerate() {
        let what = format!("last segment cut to {cut} bytes (its data ends at {data_end})");
        let sim = closed_store(seed, ops);
        sim.set_durable_len(&last, cut).unwrap();
        let whole = recs.iter().filter(|r| r.end() <= cut).count();
        let k = before_last + whole;
        let opts = options(&sim, SyncMode::Always);
        let got = check_oracle(&opts, &states, k, k, &what);
        assert_eq!(got, k);
        // Writes after the cut survive a power loss and two opens.
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        run_all(&db, &all[k..k + 3], &what);
        sim.crash(crash_mode(c as u64));
        drop(db);
        check_oracle(&opts, &states, k + 3, k + 3, &format!("{what}, then three writes"));
    }

    // 3. An older segment cut below its data is not a lost size change (its size was fsynced
    //    before it held a record, and later records follow): refused.
    let (first, first_recs) = segs[0].clone();
    for cut in [
        first_recs[3].start + 7,
        first_recs[3].start,
        first_recs.last().unwrap().end() - 1,
    ] {
        let what = format!("first segment cut to {cut} bytes, later segments intact");
        let sim = closed_store(seed, ops);
        sim.set_durable_len(&first, cut).unwrap();
        match Db::open_with(DIR, options(&sim, SyncMode::Always)) {
            Err(Error::Corruption { path, .. }) => assert!(path.starts_with(Path::new(DIR).join("wal")), "{what}"),
            Err(e) => panic!("{what}: expected Corruption, got {e:?}"),
            Ok(db) => panic!("{what}: opened, with {} keys", db.stats().keys),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bitflip_mid_log_refuses

#[test]
fn bitflip_mid_log_refuses() {
    let (seed, _guard) = support::seeded("bitflip_mid_log_refuses");
    let mut rng = Rng::new(seed);
    let ops = workload(seed, 200);
    let written = written_values(&ops);
    let layout = segments_with_records(&closed_store(seed, &ops));
    assert!(layout.len() >= 3, "the test wants several segments");
    let mut picks: Vec<(usize, usize)> = Vec::new();
    for (s, (_, recs)) in layout.iter().enumerate() {
        // In the last segment only records that later records follow.
        let usable = if s + 1 == layout.len() {
            recs.len() - 1
        } else {
            recs.len()
        };
        if usable == 0 {
            continue;
        }
        picks.extend([(s, 0), (s, usable - 1)]);
        for _ in 0..4 {
            picks.push((s, rng.below(usable as u64) as usize));
        }
    }
    for (s, r) in picks {
        let (seg, recs) = &layout[s];
        let rec = recs[r];
        let inside = if rng.chance(40) {
            rng.below(25)
        } else {
            rng.below(rec.len)
        };
        let bit = rng.below(8) as u8;
        let op = rec.seq as usize - 1;
        let what = format!(
            "bit {bit} of byte {} (record seq {} at {}+{inside}) in {}",
            rec.start + inside,
            rec.seq,
            rec.start,
            seg.display()
        );
        let sim = closed_store(seed, &ops);
        sim.flip_bit(seg, rec.start + inside, bit).unwrap();
        let opts = options(&sim, SyncMode::Always);
        assert_corruption_in(Db::open_with(DIR, opts.clone()), seg, rec, &what);
        assert_corruption_in(
            Db::open_with(DIR, opts.clone().recovery_mode(RecoveryMode::Strict)),
            seg,
            rec,
            &format!("{what}, Strict"),
        );
        // Refusing changed nothing: the same answer again.
        assert_corruption_in(Db::open_with(DIR, opts.clone()), seg, rec, &format!("{what}, again"));

        let db = Db::open_with(DIR, opts.clone().recovery_mode(RecoveryMode::Salvage))
            .unwrap_or_else(|e| panic!("{what}: Salvage must open: {e}"));
        let skipped = db.stats().recovery.skipped;
        assert!(
            skipped.iter().any(|sk| sk.path == *seg && sk.offset == rec.start),
            "{what}: Salvage reports the damaged record: {skipped:?}"
        );
        let got = contents(&db);
        assert_only_written(&got, &written, &format!("{what}, Salvage"));
        assert_eq!(
            got,
            state_without(&ops, op),
            "{what}, Salvage: everything but the damaged record"
        );
        for (k, v) in &got {
            assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "{what}: get and scan disagree");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// misdirected_record_detected

const MIS_OPS: usize = 300;

fn mis_ops() -> Vec<Op> {
    // Same-length records (5-byte keys, 500-byte values) so a copied record covers exactly one;
    // five keys, so every key is written again soon after.
    (0..MIS_OPS)
        .map(|i| Op::Put(format!("key{:02}", i % 5).into_bytes(), value("mis", i, 500)))
        .collect()
}

fn record_bytes(sim: &SimStorage, seg: &Path, rec: RecordPos) -> Vec<u8> {
    sim.read_file(seg).unwrap()[rec.start as usize..rec.end() as usize].to_vec()
}

#[test]
fn misdirected_record_detected() {
    let (seed, _guard) = support::seeded("misdirected_record_detected");
    let ops = mis_ops();
    let states = states(&ops);
    let written = written_values(&ops);
    let layout = segments_with_records(&closed_store(seed, &ops));
    assert!(layout.len() >= 3, "the test wants three segments");
    let (first, first_recs) = &layout[0];
    let (middle, middle_recs) = &layout[1];
    let (last, last_recs) = layout.last().unwrap();
    assert!(last_recs.len() >= 12, "the test wants records in the last segment");
    assert!(
        first_recs.iter().all(|r| r.len == first_recs[0].len),
        "same-length records"
    );

    // (source segment, source record, target segment, target record)
    let cases: [(&PathBuf, RecordPos, &PathBuf, RecordPos, &str); 3] = [
        (first, first_recs[3], middle, middle_recs[10], "into an older segment"),
        (
            first,
            first_recs[3],
            last,
            last_recs[5],
            "into the last segment, later records after it",
        ),
        (
            last,
            last_recs[2],
            last,
            last_recs[6],
            "to a later offset of its own segment",
        ),
    ];
    for (from, x, to, y, how) in cases {
        let what = format!("record seq {} copied over seq {} {how}", x.seq, y.seq);
        let sim = closed_store(seed, &ops);
        let bytes = record_bytes(&sim, from, x);
        sim.write_durable(to, y.start, &bytes).unwrap();
        let opts = options(&sim, SyncMode::Always);
        assert_corruption_in(Db::open_with(DIR, opts.clone()), to, y, &what);
        // Salvage skips the misplaced record, never replays it in the wrong place.
        let db = Db::open_with(DIR, opts.clone().recovery_mode(RecoveryMode::Salvage))
            .unwrap_or_else(|e| panic!("{what}: Salvage must open: {e}"));
        let got = contents(&db);
        assert_only_written(&got, &written, &format!("{what}, Salvage"));
        assert_eq!(got, state_without(&ops, y.seq as usize - 1), "{what}, Salvage");
    }

    // A valid record of this segment copied past the end of the log: nothing vouches for it, it
    // is cut as a torn tail and never replayed, and it stays gone after more writes.
    let what = "a record copied past the end of the log";
    let sim = closed_store(seed, &ops);
    let x = last_recs[2];
    let bytes = record_bytes(&sim, last, x);
    sim.write_durable(last, last_recs.last().unwrap().end(), &bytes)
        .unwrap();
    let opts = options(&sim, SyncMode::Always);
    let db = Db::open_with(DIR, opts.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(contents(&db), states[MIS_OPS], "{what}");
    assert!(db.stats().recovery.torn_tail_bytes > 0, "{what}: cut as a tail");
    let more = vec![
        Op::Put(b"key00".to_vec(), value("more", 0, 50)),
        Op::Put(b"key01".to_vec(), value("more", 1, 50)),
    ];
    run_all(&db, &more, what);
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    let mut all = ops.clone();
    all.extend(more);
    let all_states = support::faults::states(&all);
    check_oracle(&opts, &all_states, all.len(), all.len(), what);

    // The simulator misdirects one acknowledged write; acknowledged writes follow it.
    for round in 0..6u64 {
        let sim = SimStorage::new(seed.wrapping_add(round));
        let opts = options(&sim, SyncMode::Always);
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        let at = 250 + round as usize * 5;
        run_all(&db, &ops[..at], "misdirect");
        let seg = segments_with_records(&sim).pop().unwrap().0;
        let slot = parse_records(&sim.read_file(&seg).unwrap()).last().unwrap().end();
        sim.set_faults(Faults {
            misdirect: 1.0,
            ..Faults::default()
        });
        issue(&db, &ops[at]).unwrap();
        sim.set_faults(Faults::default());
        assert_eq!(sim.counts().misdirects, 1);
        run_all(&db, &ops[at + 1..at + 4], "misdirect");
        db.close().unwrap();
        let what = format!("round {round}: the write of seq {} misdirected", at + 1);
        match Db::open_with(DIR, opts.clone()) {
            Err(Error::Corruption { path, offset, .. }) => {
                assert_eq!((path, offset), (seg.clone(), slot), "{what}: names the record's place")
            }
            Err(e) => panic!("{what}: expected Corruption, got {e:?}"),
            Ok(db) => panic!("{what}: opened, with {} keys", db.stats().keys),
        }
        let db = Db::open_with(DIR, opts.recovery_mode(RecoveryMode::Salvage))
            .unwrap_or_else(|e| panic!("{what}: Salvage must open: {e}"));
        assert_only_written(&contents(&db), &written, &format!("{what}, Salvage"));
    }
}

// ---------------------------------------------------------------------------------------------
// read_eio_during_recovery

/// A closed store with a snapshot and several segments.
fn store_with_snapshot(seed: u64, ops: &[Op]) -> SimStorage {
    let sim = SimStorage::new(seed);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    run_all(&db, &ops[..60], "store");
    db.checkpoint().unwrap();
    run_all(&db, &ops[60..], "store");
    db.close().unwrap();
    sim
}

fn assert_io_names_store_file(sim: &SimStorage, e: &Error, what: &str) {
    match e {
        Error::Io { path, op, offset, .. } => {
            assert!(
                sim.files().contains(path),
                "{what}: the error names {}, not a file of the store",
                path.display()
            );
            if *op == "read" {
                assert!(offset.is_some(), "{what}: a failed read names its offset: {e}");
            }
        }
        other => panic!("{what}: expected Error::Io, got {other:?}"),
    }
}

#[test]
fn read_eio_during_recovery() {
    let (seed, _guard) = support::seeded("read_eio_during_recovery");
    let ops = workload(seed, 150);
    let model: State = states(&ops).pop().unwrap();
    let opts_for = |sim: &SimStorage| options(sim, SyncMode::Always);

    // Every read fails: open fails with an I/O error naming the file; without faults it opens.
    let sim = store_with_snapshot(seed, &ops);
    sim.set_faults(Faults {
        read_eio: 1.0,
        ..Faults::default()
    });
    match Db::open_with(DIR, opts_for(&sim)) {
        Err(e) => assert_io_names_store_file(&sim, &e, "every read fails"),
        Ok(_) => panic!("every read fails: the store opened"),
    }
    sim.set_faults(Faults::default());
    let db = Db::open_with(DIR, opts_for(&sim)).unwrap();
    assert_eq!(contents(&db), model);
    drop(db);

    // Random read failures during open and during reads: an error or the right value.
    let (mut opened, mut failed_opens, mut failed_reads) = (0, 0, 0);
    for round in 0..24u64 {
        let rate = [0.002, 0.01, 0.05, 0.3][round as usize % 4];
        let what = format!("round {round}, read EIO rate {rate}");
        let sim = store_with_snapshot(seed.wrapping_add(round), &ops);
        sim.set_faults(Faults {
            read_eio: rate,
            ..Faults::default()
        });
        match Db::open_with(DIR, opts_for(&sim)) {
            Err(e) => {
                assert_io_names_store_file(&sim, &e, &what);
                failed_opens += 1;
            }
            Ok(db) => {
                opened += 1;
                for k in model.keys().chain([&b"absent".to_vec()]) {
                    match db.get(k) {
                        Ok(v) => assert_eq!(v.as_ref(), model.get(k), "{what}: a wrong value"),
                        Err(e) => {
                            assert_io_names_store_file(&sim, &e, &what);
                            failed_reads += 1;
                        }
                    }
                }
                for item in db.range::<&[u8], _>(..) {
                    match item {
                        Ok((k, v)) => assert_eq!(model.get(&k), Some(&v), "{what}: a wrong value in a scan"),
                        Err(e) => assert_io_names_store_file(&sim, &e, &what),
                    }
                }
            }
        }
        // A failed read changed nothing on disk.
        sim.set_faults(Faults::default());
        let db = Db::open_with(DIR, opts_for(&sim)).unwrap_or_else(|e| panic!("{what}: open without faults: {e}"));
        assert_eq!(contents(&db), model, "{what}: contents after the faults stop");
    }
    println!("read_eio_during_recovery: {opened} opens succeeded, {failed_opens} failed; {failed_reads} gets failed");
    assert!(opened > 0 && failed_opens > 0, "both outcomes occur");
}

// ---------------------------------------------------------------------------------------------
// crash_during_recovery

const CR_OPS: usize = 90;

/// A store whose last segment ends in half a record (the write of operation `CR_OPS`, whose
/// fsync never happened) and a leftover snapshot temp file, after a power loss.
fn torn_store(seed: u64, ops: &[Op]) -> SimStorage {
    let sim = SimStorage::new(seed);
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    run_all(&db, &ops[..40], "torn_store");
    db.checkpoint().unwrap();
    run_all(&db, &ops[40..CR_OPS], "torn_store");
    sim.halt_after(Some(sim.ops() + 1));
    let halted = issue(&db, &ops[CR_OPS]);
    assert!(
        matches!(halted, Err(Error::Io { .. })),
        "the halted write is not acknowledged: {halted:?}"
    );
    let seg = segments_with_records(&sim).pop().unwrap().0;
    let visible = sim.read_file(&seg).unwrap();
    let rec = *parse_records(&visible).last().unwrap();
    assert_eq!(
        rec.seq as usize,
        CR_OPS + 1,
        "the unacknowledged record is in the page cache"
    );
    sim.crash(CrashMode::DropUnsynced);
    drop(db);
    let half = &visible[rec.start as usize..(rec.start + rec.len / 2) as usize];
    sim.write_durable(&seg, rec.start, half).unwrap();
    create_durable(
        &sim,
        &Path::new(DIR).join("00000000000000000077.snap.tmp"),
        b"half a snapshot",
    );
    sim
}

#[test]
fn crash_during_recovery() {
    let (seed, _guard) = support::seeded("crash_during_recovery");
    let mut rng = Rng::new(seed);
    let ops = workload(seed, CR_OPS + 10);
    let states = states(&ops);

    let sim = torn_store(seed, &ops);
    let start = sim.ops();
    let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
    let open_ops = sim.ops() - start;
    let report = db.stats().recovery;
    assert!(report.torn_tail_bytes > 0, "the open cuts a torn tail: {report:?}");
    assert!(report.files_removed > 0, "the open removes the temp file: {report:?}");
    assert_eq!(contents(&db), states[CR_OPS]);
    drop(db);

    let check = |sim: &SimStorage, what: &str| {
        let opts = options(sim, SyncMode::Always);
        let k = check_oracle(&opts, &states, CR_OPS, CR_OPS + 1, what);
        assert_eq!(k, CR_OPS, "{what}: half a record never becomes a write");
        // Recovery left the log ready: a write after it survives a power loss.
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        run_all(&db, &ops[k..k + 2], what);
        sim.crash(CrashMode::DropUnsynced);
        drop(db);
        check_oracle(&opts, &states, k + 2, k + 2, &format!("{what}, then two writes"));
    };

    // A halt at every storage operation of the recovering open, then a power loss.
    for n in 0..=open_ops {
        for m in 0..3 {
            let what = format!(
                "recovery halted after {n} of its {open_ops} operations, {:?}",
                crash_mode(m)
            );
            let sim = torn_store(seed, &ops);
            assert_eq!(sim.ops(), start, "{what}: the setup is deterministic");
            sim.halt_after(Some(start + n));
            let opened = Db::open_with(DIR, options(&sim, SyncMode::Always));
            sim.crash(crash_mode(m));
            drop(opened);
            check(&sim, &what);
        }
    }

    // Two recoveries in a row, each interrupted at a random point.
    for round in 0..20 {
        let (n1, n2) = (rng.below(open_ops + 1), rng.below(open_ops + 1));
        let (m1, m2) = (rng.below(3), rng.below(3));
        let what = format!(
            "recovery halted after {n1} operations ({:?}), then the next one after {n2} ({:?}), round {round}",
            crash_mode(m1),
            crash_mode(m2)
        );
        let sim = torn_store(seed, &ops);
        sim.halt_after(Some(sim.ops() + n1));
        let opened = Db::open_with(DIR, options(&sim, SyncMode::Always));
        sim.crash(crash_mode(m1));
        drop(opened);
        sim.halt_after(Some(sim.ops() + n2));
        let opened = Db::open_with(DIR, options(&sim, SyncMode::Always));
        sim.crash(crash_mode(m2));
        drop(opened);
        check(&sim, &what);
    }
}
