//! Steps 5 and 6 of recovery: the log after the snapshot replayed into the index, segment by
//! segment, and the last segment's torn tail cut.

use std::ops::Range;
use std::sync::Arc;

use super::segments::Seg;
use super::snapshot::Base;
use super::{apply_record, skip, Recovery};
use crate::error::{Error, Result};
use crate::format::FORMAT_VERSION;
use crate::index::{FileId, Source};
use crate::limits;
use crate::storage::{write_all_at, FileBytes};
use crate::wal::reader::{self, ScanInput, SegmentScan};

/// What replay found in one segment.
#[derive(Default, Clone, Copy)]
pub(super) struct Scanned {
    pub first_seq: Option<u64>,
    /// The format version of its header (`None` without a valid one).
    pub version: Option<u32>,
    pub last_seq: Option<u64>,
    /// End of its last valid record (0 without a valid header).
    pub valid_end: u64,
}

/// What step 5 found.
#[derive(Default)]
pub(super) struct Replay {
    /// The last sequence number in the log, if it holds any.
    pub last_seq: Option<u64>,
    /// One for each segment replayed, in order.
    pub per_segment: Vec<Scanned>,
    /// The bytes of the last segment to zero (step 6), if it ends in a torn write.
    torn_tail: Option<Range<u64>>,
}

impl Recovery<'_> {
    /// Step 5: scans each segment after the snapshot (`wal/reader.rs`) and replays its records
    /// above `base` into the index; sequence numbers must continue from one segment to the next.
    pub(super) fn replay(&mut self, segs: &[Seg], base: u64) -> Result<Replay> {
        let mut out = Replay::default();
        let mut expected: Option<u64> = None;
        // Whether the log read so far lies wholly at or below the snapshot's base: then a gap in
        // the segment ids after it is segments a checkpoint deleted (with some of its unlinks
        // lost in a crash, F4), and the log starts afresh after the gap.
        let mut covered_so_far = true;
        for (i, seg) in segs.iter().enumerate() {
            let after_gap = i > 0 && seg.file.id != segs[i - 1].file.id + 1;
            if after_gap {
                self.check_gap(&segs[i - 1], seg, covered_so_far)?;
                expected = None;
            }
            let is_last = i + 1 == segs.len();
            let (scan, bytes) = self.replay_segment(seg, is_last, expected, base)?;
            if i == 0 || after_gap {
                self.check_log_start(seg, &scan, base)?;
            }
            if is_last && scan.dirty_end > scan.valid_end {
                out.torn_tail = Some(scan.valid_end..scan.dirty_end);
            }
            let last = scan.last_seq.or_else(|| scan.header.map(|h| h.first_seq - 1));
            covered_so_far &= last.is_none_or(|l| l <= base);
            if let Some(l) = last {
                out.last_seq = Some(out.last_seq.map_or(l, |p: u64| p.max(l)));
            }
            let version = scan.header.map(|h| h.version);
            let cipher = self.cipher(FileId::Segment(seg.file.id));
            self.index.set_source(
                Source::bytes(FileId::Segment(seg.file.id), version.unwrap_or(FORMAT_VERSION), bytes)
                    .with_cipher(cipher),
            );
            expected = last.map(|l| l + 1).or(expected);
            out.per_segment.push(Scanned {
                first_seq: scan.header.map(|h| h.first_seq),
                version,
                last_seq: last,
                valid_end: if scan.header.is_some() { scan.valid_end } else { 0 },
            });
        }
        Ok(out)
    }

    /// Scans one segment, replaying its records above `base` into the index.
    fn replay_segment(
        &mut self,
        seg: &Seg,
        is_last: bool,
        expected_seq: Option<u64>,
        base: u64,
    ) -> Result<(SegmentScan, Arc<FileBytes>)> {
        let path = &seg.file.path;
        let bytes = Arc::new(FileBytes::load(seg.file.file.as_ref()).map_err(|e| Error::read(path, e))?);
        let data_end = bytes
            .data_end(seg.file.file.as_ref())
            .map_err(|e| Error::read(path, e))?;
        let input = ScanInput {
            bytes: bytes.bytes(),
            segment_id: seg.file.id,
            path,
            // NOTE: not opts.record_payload_max(): the store may have been written with larger
            // limits.
            payload_max: limits::RECORD_PAYLOAD_MAX,
            is_last,
            mode: self.opts.recovery_mode,
            expected_seq,
            data_end,
        };
        let cipher = self.cipher(FileId::Segment(seg.file.id));
        let (index, opts, report) = (&mut self.index, self.opts, &mut self.report);
        let mut replayed = 0u64;
        let scan = reader::scan_segment(&input, |offset, rec, version| {
            if rec.seq <= base {
                return Ok(());
            }
            apply_record(
                index,
                (seg.file.id, version),
                cipher.as_deref(),
                offset,
                rec,
                path,
                opts,
                report,
            )?;
            replayed += 1;
            Ok(())
        })?;
        self.report.records_replayed += replayed;
        for s in &scan.skipped {
            super::skipped(&mut self.report, s.clone());
        }
        Ok((scan, bytes))
    }

    /// A gap in the segment ids is allowed only after segments the snapshot covers (step 4).
    fn check_gap(&self, before: &Seg, after: &Seg, covered_so_far: bool) -> Result<()> {
        if covered_so_far || self.salvage() {
            return Ok(());
        }
        let reason = format!("segment {} is missing", before.file.id + 1);
        Err(Error::corruption(&after.file.path, 0, reason))
    }

    /// The log, or its part after a gap, must start at or below the snapshot's `S + 1`.
    fn check_log_start(&self, seg: &Seg, scan: &SegmentScan, base: u64) -> Result<()> {
        match scan.header {
            Some(h) if h.first_seq > base + 1 && !self.salvage() => {
                let reason = format!(
                    "the log starts at sequence {} but the snapshot ends at {base}",
                    h.first_seq
                );
                Err(Error::corruption(&seg.file.path, 0, reason))
            }
            _ => Ok(()),
        }
    }

    /// Step 6: zeroes the last segment's torn tail and makes the zeros durable before anything
    /// is appended, so stale bytes can never be parsed as records later (F9).
    pub(super) fn cut_torn_tail(&mut self, segs: &[Seg], replay: &Replay) -> Result<()> {
        let (Some(seg), Some(torn)) = (segs.last(), &replay.torn_tail) else {
            return Ok(());
        };
        let path = &seg.file.path;
        let len = (torn.end - torn.start) as usize;
        write_all_at(seg.file.file.as_ref(), &vec![0u8; len], torn.start).map_err(|e| Error::io("write", path, e))?;
        seg.file.file.sync_data().map_err(|e| Error::io("fdatasync", path, e))?;
        self.report.torn_tail_bytes = len as u64;
        tracing::warn!(target: "sessiondb", file = %path.display(), offset = torn.start, bytes = len as u64, "torn tail cut");
        Ok(())
    }

    /// Step 6's check: the log must reach what the snapshot holds, and a log standing in for
    /// damaged snapshots must hold a record. Returns the last sequence number recovered.
    pub(super) fn check_log_reaches_snapshot(&mut self, base: &mut Base, replay: &Replay) -> Result<u64> {
        let log_end = replay.last_seq.unwrap_or(0);
        if let Some(e) = base.log_instead_of.take() {
            // Every snapshot is damaged and the log was to stand in for them from sequence 1: a
            // log with no record says nothing (and the next open could not tell that it starts
            // at 1).
            if log_end == 0 {
                if !self.salvage() {
                    return Err(e);
                }
                skip(&mut self.report, &e);
            }
        }
        if let Some(s) = &base.snapshot {
            if log_end.max(base.seq) < s.end_seq && !self.salvage() {
                let reason = format!(
                    "the log ends at sequence {log_end} but the snapshot holds writes up to {}",
                    s.end_seq
                );
                return Err(Error::corruption(self.layout.snapshot(s.base_seq), 0, reason));
            }
        }
        Ok(log_end.max(base.seq))
    }

    /// The index holds everything up to `last_seq`: every touch is replayed now, so what is
    /// still expired can go.
    pub(super) fn index_ready(&mut self, last_seq: u64) {
        self.index.applied_seq = last_seq;
        self.index.drop_expired(self.opts.clock.now_ms());
    }
}
