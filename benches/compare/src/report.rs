//! Medians over the runs, a markdown table per workload with ratios to the best peer and to
//! the raw floor, the targets, CSVs and the W2 throughput plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::engines::is_peer;
use crate::workloads::{median, Config, Row};
use crate::Args;

const WORKLOADS: &[(&str, &str)] = &[
    ("W1", "durable single writer, 256 B values"),
    (
        "W2",
        "durable concurrent writers (ops/s and p99 per writer count), 256 B values",
    ),
    ("W3", "bulk load of N × 256 B without per-write fsync, then one sync"),
    ("W4", "random point gets of loaded keys"),
    (
        "W4b",
        "random point gets, 1 thread, after a bulk load in 1,000-op batches (sessiondb also after a checkpoint)",
    ),
    (
        "W5",
        "reopen of the W3 store in a fresh process, warm, to the first get",
    ),
    (
        "WOPEN",
        "reopen of a checkpointed store of the W3 keys in a fresh process, warm, engines taking turns: the open alone, and to the first get",
    ),
    (
        "W6",
        "space amplification (allocated bytes on disk / live key+value bytes)",
    ),
    (
        "W7",
        "sessions: 90 % load + lazy sliding touch, 10 % durable 1 KiB save, 4 threads",
    ),
    (
        "CKPT",
        "a checkpoint of the loaded keys during 16 durable writers (sessiondb)",
    ),
];

/// Whether a smaller value of `metric` is better.
fn lower_is_better(metric: &str) -> bool {
    metric.contains("_us")
        || metric.contains("_ms")
        || metric.starts_with("amp")
        || metric.contains("per_key")
        || metric.contains("ratio")
}

type Medians = BTreeMap<(String, String, String), f64>;

fn medians(rows: &[Row]) -> Medians {
    let mut all: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for r in rows {
        all.entry((r.workload.clone(), r.engine.clone(), r.metric.clone()))
            .or_default()
            .push(r.value);
    }
    all.into_iter().map(|(k, mut v)| (k, median(&mut v))).collect()
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v);
        let bytes: Vec<char> = s.chars().collect();
        let mut out = String::new();
        for (i, c) in bytes.iter().enumerate() {
            if i > 0 && (bytes.len() - i).is_multiple_of(3) && *c != '-' {
                out.push(',');
            }
            out.push(*c);
        }
        out
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn write(args: &Args, cfg: &Config, engines: &[String], rows: &[Row], elapsed: Duration) {
    let med = medians(rows);
    let runs = rows.iter().map(|r| r.run).max().unwrap_or(0);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Medians of {runs} run(s); {} keys in W3–W6; wall time so far {:.0} s. Ratios: sessiondb ÷ the \
         best durable peer (sled-flush is not durable and not a peer), and ÷ the raw floor; for \
         latencies, space and memory a ratio below 1 is better.\n",
        fmt(cfg.w3_keys as f64),
        elapsed.as_secs_f64()
    );
    md.push_str(&targets(&med));
    md.push_str(&encryption(rows));
    for (w, about) in WORKLOADS {
        md.push_str(&table(&med, engines, w, about));
    }
    std::fs::write(args.out.join("report.md"), md).expect("write report.md");
    write_csvs(args, rows, &med);
    plot(args, cfg, engines, &med);
}

fn metrics_of(med: &Medians, w: &str) -> Vec<String> {
    let mut ms: Vec<String> = Vec::new();
    for (wk, _, m) in med.keys() {
        if wk == w && !ms.contains(m) {
            ms.push(m.clone());
        }
    }
    // W2: per writer count, in numeric order.
    ms.sort_by_key(|m| {
        let n: usize = m.rsplit('@').next().and_then(|x| x.parse().ok()).unwrap_or(0);
        (n, !m.starts_with("ops"), m.clone())
    });
    ms
}

fn get(med: &Medians, w: &str, e: &str, m: &str) -> Option<f64> {
    med.get(&(w.to_string(), e.to_string(), m.to_string())).copied()
}

fn best_peer(med: &Medians, engines: &[String], w: &str, m: &str) -> Option<(String, f64)> {
    let lower = lower_is_better(m);
    engines
        .iter()
        .filter(|e| is_peer(e))
        .filter_map(|e| get(med, w, e, m).filter(|v| !v.is_nan()).map(|v| (e.clone(), v)))
        .reduce(|a, b| if (b.1 < a.1) == lower { b } else { a })
}

fn table(med: &Medians, engines: &[String], w: &str, about: &str) -> String {
    let ms = metrics_of(med, w);
    if ms.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n### {w}: {about}\n\n| engine | {} |\n|---|{}\n",
        ms.join(" | "),
        "---:|".repeat(ms.len())
    );
    for e in engines {
        if ms.iter().all(|m| get(med, w, e, m).is_none()) {
            continue;
        }
        let label = if e == "sled-flush" {
            "sled-flush (NOT durable)".to_string()
        } else {
            e.clone()
        };
        let cells: Vec<String> = ms.iter().map(|m| get(med, w, e, m).map_or("".into(), fmt)).collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    }
    if w == "CKPT" {
        return s;
    }
    let ours = |m: &String| get(med, w, "sessiondb", m);
    let peer: Vec<String> = ms
        .iter()
        .map(|m| match (ours(m), best_peer(med, engines, w, m)) {
            _ if m.ends_with("compact_ms") => "".into(),
            (Some(a), Some((e, b))) => format!("{:.2} ({e})", a / b),
            _ => "".into(),
        })
        .collect();
    let floor: Vec<String> = ms
        .iter()
        .map(|m| match (ours(m), get(med, w, "raw", m)) {
            _ if m.ends_with("compact_ms") => "".into(),
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "".into(),
        })
        .collect();
    let _ = writeln!(s, "| *sessiondb ÷ best peer* | {} |", peer.join(" | "));
    let _ = writeln!(s, "| *sessiondb ÷ raw floor* | {} |", floor.join(" | "));
    s
}

/// Issue 16's targets: sessiondb-enc ÷ sessiondb, `(workload, metric, bound, at least?)`.
const ENCRYPTION_TARGETS: &[(&str, &str, f64, bool)] = &[
    ("W2", "ops_s@64", 0.85, true),
    ("W3", "ops_s", 0.7, true),
    ("W4", "ops_s_1t", 0.7, true),
    ("W4", "ops_s_2t", 0.7, true),
    ("W4b", "ops_s_1t", 0.7, true),
    ("W4b", "ops_s_1t_checkpointed", 0.7, true),
    ("WOPEN", "open_ms", 1.5, false),
    ("W5", "open_ms", 1.5, false),
];

/// Encrypted ÷ unencrypted (sessiondb-enc ÷ sessiondb) per run, for every metric both have in
/// a run, and the median of the per-run ratios: issue 16's targets first, then everything else.
fn encryption(rows: &[Row]) -> String {
    let mut by: BTreeMap<(String, String), BTreeMap<usize, (Option<f64>, Option<f64>)>> = BTreeMap::new();
    for r in rows {
        let slot = match r.engine.as_str() {
            "sessiondb" => 0,
            "sessiondb-enc" => 1,
            _ => continue,
        };
        let e = by
            .entry((r.workload.clone(), r.metric.clone()))
            .or_default()
            .entry(r.run)
            .or_default();
        if slot == 0 {
            e.0 = Some(r.value);
        } else {
            e.1 = Some(r.value);
        }
    }
    let ratios = |w: &str, m: &str| -> Vec<(usize, f64)> {
        by.get(&(w.to_string(), m.to_string()))
            .map(|runs| {
                runs.iter()
                    .filter_map(|(run, (a, b))| Some((*run, b.as_ref()? / a.as_ref()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let line = |w: &str, m: &str, rs: &[(usize, f64)]| {
        let mut v: Vec<f64> = rs.iter().map(|r| r.1).collect();
        let per: Vec<String> = rs.iter().map(|(run, r)| format!("{r:.3} (run {run})")).collect();
        (median(&mut v), format!("{w} {m}"), per.join(", "))
    };
    if !rows.iter().any(|r| r.engine == "sessiondb-enc") {
        return String::new();
    }
    let mut out = String::from(
        "\n### Encryption (issue 16): sessiondb-enc ÷ sessiondb, per run and the median\n\n\
         | target | median | met | per run |\n|---|---:|---|---|\n",
    );
    for (w, m, bound, at_least) in ENCRYPTION_TARGETS {
        let rs = ratios(w, m);
        if rs.is_empty() {
            continue;
        }
        let (med, what, per) = line(w, m, &rs);
        let met = if *at_least { med >= *bound } else { med <= *bound };
        let _ = writeln!(
            out,
            "| {what} {} {bound} | {med:.3} | {} | {per} |",
            if *at_least { "≥" } else { "≤" },
            if met { "**met**" } else { "**not met**" }
        );
    }
    out.push_str("\n| every metric | median | per run |\n|---|---:|---|\n");
    for (w, m) in by.keys() {
        let rs = ratios(w, m);
        if rs.is_empty() {
            continue;
        }
        let (med, what, per) = line(w, m, &rs);
        let _ = writeln!(out, "| {what} | {med:.3} | {per} |");
    }
    out
}

struct Target {
    what: &'static str,
    value: Option<f64>,
    ratio: Option<f64>,
    against: String,
    met: Option<bool>,
}

fn targets(med: &Medians) -> String {
    let g = |w: &str, e: &str, m: &str| get(med, w, e, m);
    let s = |w: &str, m: &str| g(w, "sessiondb", m);
    let peers_max = |w: &str, m: &str, except: &[&str]| {
        ["redb", "fjall", "sled", "sqlite", "rocksdb"]
            .iter()
            .filter(|e| !except.contains(e))
            .filter_map(|e| g(w, e, m).map(|v| (e.to_string(), v)))
            .reduce(|a, b| if b.1 > a.1 { b } else { a })
    };
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let mut t = Vec::new();
    let p50 = s("W1", "p50_us");
    let r = ratio(p50, g("W1", "raw", "p50_us"));
    t.push(Target {
        what: "W1 p50 ≤ 1.15 × floor",
        value: p50,
        ratio: r,
        against: "raw".into(),
        met: r.map(|r| r <= 1.15),
    });
    let ops = s("W1", "ops_s");
    let bp = peers_max("W1", "ops_s", &[]);
    let r = ratio(ops, bp.as_ref().map(|b| b.1));
    t.push(Target {
        what: "W1 ops/s ≥ best peer",
        value: ops,
        ratio: r,
        against: bp.map_or("".into(), |b| b.0),
        met: r.map(|r| r >= 1.0),
    });
    let ops64 = s("W2", "ops_s@64");
    let r = ratio(ops64, g("W2", "raw", "ops_s@64"));
    t.push(Target {
        what: "W2@64 ops/s ≥ 0.8 × floor",
        value: ops64,
        ratio: r,
        against: "raw".into(),
        met: r.map(|r| r >= 0.8),
    });
    for n in [64, 16] {
        let m = format!("ops_s@{n}");
        let r = ratio(s("W2", &m), g("W2", "rocksdb", &m));
        t.push(Target {
            what: if n == 64 {
                "W2@64 ops/s ≥ 2 × RocksDB"
            } else {
                "W2@16 ops/s ≥ 2 × RocksDB"
            },
            value: s("W2", &m),
            ratio: r,
            against: "rocksdb".into(),
            met: r.map(|r| r >= 2.0),
        });
    }
    let bp = peers_max("W2", "ops_s@64", &["rocksdb"]);
    let r = ratio(ops64, bp.as_ref().map(|b| b.1));
    t.push(Target {
        what: "W2@64 ops/s ≥ 8 × every other peer",
        value: ops64,
        ratio: r,
        against: bp.map_or("".into(), |b| b.0),
        met: r.map(|r| r >= 8.0),
    });
    let p99 = s("W2", "p99_us@64");
    let r = ratio(p99, g("W2", "raw", "p99_us@64"));
    t.push(Target {
        what: "W2@64 p99 ≤ 2 × floor",
        value: p99,
        ratio: r,
        against: "raw".into(),
        met: r.map(|r| r <= 2.0),
    });
    let w3 = s("W3", "ops_s");
    let r = ratio(w3, g("W3", "raw", "ops_s"));
    t.push(Target {
        what: "W3 ≥ 0.6 × floor",
        value: w3,
        ratio: r,
        against: "raw".into(),
        met: r.map(|r| r >= 0.6),
    });
    let bp = peers_max("W3", "ops_s", &[]);
    let r = ratio(w3, bp.as_ref().map(|b| b.1));
    t.push(Target {
        what: "W3 ≥ 2 × best peer",
        value: w3,
        ratio: r,
        against: bp.map_or("".into(), |b| b.0),
        met: r.map(|r| r >= 2.0),
    });
    let w4 = s("W4", "ops_s_1t");
    let r = ratio(w4, g("W4", "redb", "ops_s_1t"));
    t.push(Target {
        what: "W4 1 thread ≥ 1.5 × redb",
        value: w4,
        ratio: r,
        against: "redb".into(),
        met: r.map(|r| r >= 1.5),
    });
    let redb_w4b = g("W4b", "redb", "ops_s_1t");
    for (metric, what) in [
        ("ops_s_1t", "W4b (batched load) 1 thread ≥ 1.5 × redb"),
        ("ops_s_1t_checkpointed", "W4b after a checkpoint ≥ 1.5 × redb"),
    ] {
        let v = s("W4b", metric);
        let r = ratio(v, redb_w4b);
        t.push(Target {
            what,
            value: v,
            ratio: r,
            against: "redb".into(),
            met: r.map(|r| r >= 1.5),
        });
    }
    let w5 = s("W5", "reopen_ms");
    t.push(Target {
        what: "W5 reopen ≤ 100 ms",
        value: w5,
        ratio: w5.map(|v| v / 100.0),
        against: "100 ms".into(),
        met: w5.map(|v| v <= 100.0),
    });
    // First reopens after the load: a peer that flushes its replayed log at open is fast only
    // from its second reopen on.
    let w5_first = s("W5", "first_reopen_ms");
    let replaying = ["fjall", "sled", "rocksdb"]
        .iter()
        .filter_map(|e| g("W5", e, "first_reopen_ms").map(|v| (e.to_string(), v)))
        .reduce(|a, b| if b.1 < a.1 { b } else { a });
    let r = ratio(replaying.as_ref().map(|b| b.1), w5_first);
    t.push(Target {
        what: "W5 first reopen ≥ 2.5 × faster than log-replaying peers'",
        value: w5_first,
        ratio: r,
        against: replaying.map_or("".into(), |b| b.0),
        met: r.map(|r| r >= 2.5),
    });
    let amp = s("W6", "amp_compact");
    t.push(Target {
        what: "W6 after checkpoint ≤ 1.25",
        value: amp,
        ratio: amp,
        against: "live bytes".into(),
        met: amp.map(|v| v <= 1.25),
    });
    let mem = s("W5", "rss_anon_b_per_key");
    t.push(Target {
        what: "index memory ≤ 16 + 48 B per key",
        value: mem,
        ratio: mem.map(|v| v / 64.0),
        against: "64 B".into(),
        met: mem.map(|v| v <= 64.0),
    });
    let ck = g("CKPT", "sessiondb", "p99_ratio");
    t.push(Target {
        what: "checkpoint during W2@16: p99 ≤ 2 × without",
        value: g("CKPT", "sessiondb", "p99_us_with"),
        ratio: ck,
        against: "p99 without".into(),
        met: ck.map(|v| v <= 2.0),
    });

    let mut out = String::from("### Targets\n\n| target | sessiondb | ratio | against | |\n|---|---:|---:|---|---|\n");
    for x in t {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            x.what,
            x.value.map_or("–".into(), fmt),
            x.ratio.map_or("–".into(), |r| format!("{r:.2}")),
            x.against,
            match x.met {
                Some(true) => "**met**",
                Some(false) => "**not met**",
                None => "not measured",
            }
        );
    }
    out
}

fn write_csvs(args: &Args, rows: &[Row], med: &Medians) {
    let mut all = String::from("run,workload,engine,metric,value\n");
    for r in rows {
        let _ = writeln!(all, "{},{},{},{},{}", r.run, r.workload, r.engine, r.metric, r.value);
    }
    std::fs::write(args.out.join("results.csv"), all).expect("write results.csv");
    let mut m = String::from("workload,engine,metric,median\n");
    for ((w, e, k), v) in med {
        let _ = writeln!(m, "{w},{e},{k},{v}");
    }
    std::fs::write(args.out.join("medians.csv"), m).expect("write medians.csv");
}

fn plot(args: &Args, cfg: &Config, engines: &[String], med: &Medians) {
    use plotters::prelude::*;
    let path = args.out.join("w2_throughput.svg");
    let writers = &cfg.writers;
    let series: Vec<(String, Vec<(f64, f64)>)> = engines
        .iter()
        .map(|e| {
            let pts = writers
                .iter()
                .filter_map(|n| get(med, "W2", e, &format!("ops_s@{n}")).map(|v| ((*n as f64).log2(), v)))
                .collect();
            (e.clone(), pts)
        })
        .filter(|(_, p): &(String, Vec<(f64, f64)>)| !p.is_empty())
        .collect();
    if series.is_empty() {
        return;
    }
    let ymax = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;
    let xmax = writers.iter().map(|n| (*n as f64).log2()).fold(0.0, f64::max);
    let root = SVGBackend::new(&path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).expect("svg fill");
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "W2: durable puts/s vs writer threads (256 B values)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.2..xmax + 0.2, 0.0..ymax)
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc("writer threads")
        .y_desc("durable puts per second")
        .x_labels(8)
        .x_label_formatter(&|x| {
            let n = 2f64.powf(*x);
            if (n - n.round()).abs() < 1e-6 && writers.contains(&(n.round() as usize)) {
                format!("{}", n.round())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| fmt(*y))
        .draw()
        .expect("mesh");
    for (i, (e, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(&color).stroke_width(if e == "sessiondb" { 4 } else { 2 });
        let label = if e == "sled-flush" {
            "sled-flush (not durable)".to_string()
        } else {
            e.clone()
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .expect("line")
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .expect("points");
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .expect("legend");
    root.present().expect("write svg");
}
