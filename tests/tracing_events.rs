//! The library's `tracing` events (docs/design.md, "Logging (tracing)").
//!
//! Method: a small in-test `tracing::Subscriber` that records every span and event (level,
//! target, fields) while the store runs on the simulated storage, installed for the test's
//! thread (no background threads run: `quiet()` options).
//! Invariant: opening a store with a torn tail emits the WARN "torn tail cut" naming the segment
//! and the offset; a checkpoint runs in span `sessiondb.checkpoint` and emits its INFO; a
//! poisoned store emits one ERROR with the cause; a full disk one WARN per transition to full,
//! and a checkpoint it fails its own WARN; `Salvage` a WARN per skipped region with file and
//! offset; a key rotation an INFO; no span or event field holds key or value bytes, nor key
//! material.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sessiondb::internals::sim::{Faults, SimStorage};
use sessiondb::{Db, SyncMode};
use support::faults::{options, segments_with_records, DIR};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

const KEY_MARKER: &str = "KEYMARKERqz7";
const VALUE_MARKER: &str = "VALUEMARKERqz7";

#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    target: String,
    /// The span (by name) the event was emitted in, innermost first.
    spans: Vec<String>,
    fields: HashMap<String, String>,
}

impl Captured {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Log {
    events: Vec<Captured>,
    /// Every span created: name and fields (recorded later ones included).
    spans: HashMap<u64, (String, HashMap<String, String>)>,
    stack: Vec<u64>,
}

#[derive(Clone, Default)]
struct Capture {
    log: Arc<Mutex<Log>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut log = self.log.lock().unwrap();
        log.spans.insert(id, (attrs.metadata().name().to_string(), fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut log = self.log.lock().unwrap();
        if let Some((_, fields)) = log.spans.get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        let mut log = self.log.lock().unwrap();
        let spans = log.stack.iter().rev().map(|id| log.spans[id].0.clone()).collect();
        log.events.push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            spans,
            fields,
        });
    }
    fn enter(&self, span: &Id) {
        self.log.lock().unwrap().stack.push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut log = self.log.lock().unwrap();
        if let Some(at) = log.stack.iter().rposition(|&id| id == span.into_u64()) {
            log.stack.remove(at);
        }
    }
}

impl Capture {
    fn events(&self) -> Vec<Captured> {
        self.log.lock().unwrap().events.clone()
    }
    fn find(&self, message: &str) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|e| e.message().starts_with(message))
            .collect()
    }
    /// No field of any event or span holds the marker key or value (as text or as bytes).
    fn assert_no_key_or_value(&self) {
        let log = self.log.lock().unwrap();
        let bytes = |s: &str| format!("{:?}", s.as_bytes());
        let mut all: Vec<&String> = log.events.iter().flat_map(|e| e.fields.values()).collect();
        all.extend(log.spans.values().flat_map(|(_, f)| f.values()));
        for text in all {
            for marker in [KEY_MARKER, VALUE_MARKER] {
                let inner = bytes(marker);
                let inner = &inner[1..inner.len() - 1];
                assert!(
                    !text.contains(marker) && !text.contains(inner),
                    "a logged field holds key or value bytes: {text}"
                );
            }
        }
        assert!(!log.events.is_empty(), "events were captured");
    }
}

fn put_markers(db: &Db, n: usize) {
    for i in 0..n {
        db.put(format!("{KEY_MARKER}{i}"), format!("{VALUE_MARKER}{i}"))
            .unwrap();
    }
}

#[test]
fn torn_tail_at_open_is_a_warn_naming_file_and_offset() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let sim = SimStorage::new(1);
        let opts = options(&sim, SyncMode::Always);
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        put_markers(&db, 20);
        drop(db);
        // Half a record's worth of bytes after the last record: a write whose fsync never came.
        let (seg, recs) = segments_with_records(&sim).pop().unwrap();
        let end = recs.last().unwrap().end();
        sim.write_durable(&seg, end, &[0xA5; 37]).unwrap();

        let db = Db::open_with(DIR, opts).unwrap();
        assert!(db.stats().recovery.torn_tail_bytes > 0);
        let torn = capture.find("torn tail cut");
        assert_eq!(torn.len(), 1, "one torn-tail event: {:?}", capture.events());
        let e = &torn[0];
        assert_eq!(e.level, Level::WARN);
        assert_eq!(e.target, "sessiondb");
        assert_eq!(e.fields["file"], seg.display().to_string());
        assert_eq!(e.fields["offset"], end.to_string());
        assert!(e.spans.iter().any(|s| s == "sessiondb.open"), "in the open span: {e:?}");
        let opened = capture.find("store opened");
        assert!(opened
            .iter()
            .any(|e| e.level == Level::INFO && e.fields.contains_key("duration_ms")));
        capture.assert_no_key_or_value();
    });
}

#[test]
fn checkpoint_emits_its_span_and_info() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let sim = SimStorage::new(2);
        let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
        put_markers(&db, 50);
        db.checkpoint().unwrap();
        let done = capture.find("checkpoint written");
        assert_eq!(done.len(), 1, "{:?}", capture.events());
        let e = &done[0];
        assert_eq!(e.level, Level::INFO);
        assert!(e.fields["bytes"].parse::<u64>().unwrap() > 0);
        assert!(e.fields.contains_key("duration_ms"));
        assert_eq!(e.spans.first().map(String::as_str), Some("sessiondb.checkpoint"));
        let log = capture.log.lock().unwrap();
        let span = log.spans.values().find(|(n, _)| n == "sessiondb.checkpoint").unwrap();
        assert_eq!(span.1.get("base_seq").map(String::as_str), Some("50"), "{span:?}");
        drop(log);
        capture.assert_no_key_or_value();
    });
}

#[test]
fn poisoned_store_emits_one_error_with_the_cause() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let sim = SimStorage::new(3);
        let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
        put_markers(&db, 3);
        sim.set_faults(Faults {
            sync_eio: 1.0,
            ..Faults::default()
        });
        for i in 0..5 {
            assert!(db.put(format!("{KEY_MARKER}x{i}"), VALUE_MARKER).is_err());
        }
        let poisoned = capture.find("store poisoned");
        assert_eq!(poisoned.len(), 1, "once: {:?}", capture.events());
        assert_eq!(poisoned[0].level, Level::ERROR);
        assert!(!poisoned[0].fields["cause"].is_empty());
        capture.assert_no_key_or_value();
    });
}

/// Puts until one fails; returns how many succeeded and the error.
fn fill_until_full(db: &Db, from: usize) -> (usize, sessiondb::Error) {
    for i in from..from + 100_000 {
        if let Err(e) = db.put(format!("{KEY_MARKER}{i}"), [b'v'; 900]) {
            return (i, e);
        }
    }
    panic!("the disk never filled");
}

/// A full disk: one WARN per transition to full (not one per refused write), naming the
/// segment that could not be made; again after a write succeeded and the disk filled again;
/// a checkpoint that finds no room emits its own WARN.
#[test]
fn a_full_disk_warns_once_per_transition_and_a_checkpoint_says_why_it_failed() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let sim = SimStorage::new(4);
        let db = Db::open_with(DIR, options(&sim, SyncMode::Always)).unwrap();
        sim.set_capacity(Some(sim.used_bytes() + support::SEGMENT_SIZE_SMALL / 2));
        let (n, e) = fill_until_full(&db, 0);
        assert!(e.is_storage_full(), "{e}");
        for i in 0..5 {
            assert!(db.put(format!("{KEY_MARKER}again{i}"), [b'v'; 900]).is_err());
        }
        let full = capture.find("storage full");
        assert_eq!(full.len(), 1, "one WARN for six refused writes: {:?}", capture.events());
        assert_eq!(full[0].level, Level::WARN);
        assert!(full[0].fields["error"].contains(".wal"), "{:?}", full[0]);

        let failed = db.checkpoint().unwrap_err();
        assert!(failed.is_storage_full(), "{failed}");
        let warned = capture.find("checkpoint failed: storage full");
        assert_eq!(warned.len(), 1, "{:?}", capture.events());
        assert_eq!(warned[0].level, Level::WARN);
        assert!(capture.find("checkpoint failed").iter().all(|e| e.level == Level::WARN));

        sim.set_capacity(None);
        db.put(format!("{KEY_MARKER}room"), VALUE_MARKER).unwrap();
        sim.set_capacity(Some(sim.used_bytes() + support::SEGMENT_SIZE_SMALL / 2));
        fill_until_full(&db, n + 10);
        assert_eq!(
            capture.find("storage full").len(),
            2,
            "full again after a write: a second WARN"
        );
        capture.assert_no_key_or_value();
    });
}

/// Salvage names each damaged region it skipped, by file and offset.
#[test]
fn salvage_warns_of_each_skipped_region_with_file_and_offset() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let sim = SimStorage::new(5);
        let opts = options(&sim, SyncMode::Always);
        let db = Db::open_with(DIR, opts.clone()).unwrap();
        put_markers(&db, 40);
        drop(db);
        let (seg, recs) = segments_with_records(&sim).pop().unwrap();
        let damaged = &recs[recs.len() / 2];
        sim.flip_bit(&seg, damaged.start + 20, 3).unwrap();
        let strict = Db::open_with(DIR, opts.clone());
        assert!(strict.is_err(), "vouched damage refuses a normal open");
        let db = Db::open_with(DIR, opts.recovery_mode(sessiondb::RecoveryMode::Salvage)).unwrap();
        let skipped = capture.find("salvage skipped damage");
        assert!(!skipped.is_empty(), "{:?}", capture.events());
        let e = &skipped[0];
        assert_eq!(e.level, Level::WARN);
        assert_eq!(e.fields["file"], seg.display().to_string());
        assert_eq!(e.fields["offset"], damaged.start.to_string());
        assert!(!e.fields["reason"].is_empty());
        drop(db);
        capture.assert_no_key_or_value();
    });
}

/// An encrypted store: the open says it is encrypted and a rotation is an INFO with the
/// keyring's generation; no field holds key material.
#[test]
fn key_rotation_is_an_info_without_key_material() {
    let capture = Capture::default();
    let (old, new) = ([0x5a; 32], [0xc3; 32]);
    tracing::subscriber::with_default(capture.clone(), || {
        let sim = SimStorage::new(6);
        let opts = options(&sim, SyncMode::Always).encryption_key(sessiondb::EncryptionKey::from_bytes(old));
        let db = Db::open_with(DIR, opts).unwrap();
        put_markers(&db, 5);
        db.rotate_key(sessiondb::EncryptionKey::from_bytes(new)).unwrap();
        let enc = capture.find("store encryption");
        assert!(
            enc.iter().any(|e| e.fields["encrypted"] == "true"),
            "{:?}",
            capture.events()
        );
        let rotated = capture.find("master key rotated");
        assert_eq!(rotated.len(), 1, "{:?}", capture.events());
        assert_eq!(rotated[0].level, Level::INFO);
        assert!(rotated[0].fields["generation"].parse::<u64>().is_ok());
        capture.assert_no_key_or_value();
    });
    let log = capture.log.lock().unwrap();
    let hex = |k: [u8; 32]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
    for text in log.events.iter().flat_map(|e| e.fields.values()) {
        for key in [old, new] {
            assert!(!text.contains(&hex(key)[..16]), "a field holds key bytes: {text}");
        }
    }
}
