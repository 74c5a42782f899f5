//! Side-by-side benchmarks of sessiondb against its peers (redb, fjall, sled, SQLite, optionally
//! RocksDB) and a raw `fdatasync` floor, on the same disk in the same run.
//!
//! ```sh
//! cargo run --release --manifest-path benches/compare/Cargo.toml -- --out target/compare --runs 3
//! cargo run --release --manifest-path benches/compare/Cargo.toml -- --quick      # smoke run
//! ```
//!
//! Writes `report.md` (a table per workload, medians over the runs, ratios to the best peer and
//! to the floor, and the issue's targets), `results.csv` (every run), `medians.csv` and
//! `w2_throughput.svg` to `--out`. Workloads and engines: docs/benchmarks.md.

mod engines;
mod report;
mod workloads;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "sessiondb against its peers and a raw fdatasync floor")]
pub struct Args {
    /// Where report.md, results.csv, medians.csv and the SVG plot go.
    #[arg(long, default_value = "target/compare")]
    pub out: PathBuf,
    /// Where the stores go (must be a real disk, not tmpfs). Default: OUT/stores.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Repeat everything this many times; tables show medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Small sizes and short times: a smoke run (numbers only indicative).
    #[arg(long)]
    pub quick: bool,
    /// Engines, comma separated (default: all built).
    #[arg(long, value_delimiter = ',')]
    pub engines: Option<Vec<String>>,
    /// Workloads, comma separated: w1,w2,w3 (w3 also runs w4, w5, w6 on its store),w4b,w7,ckpt;
    /// also wopen (W5's reopen of 1M keys, engines interleaved; not in the default set).
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4b,w7,ckpt")]
    pub workloads: Vec<String>,
    /// Writer counts for W2.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub writers: Vec<usize>,
    /// Internal: reopen a store in a fresh process and print the time to the first get.
    #[arg(long, hide = true, num_args = 4, value_names = ["ENGINE", "DIR", "KEYS", "PROBE"])]
    pub reopen_child: Option<Vec<String>>,
    /// For `strace -c -f`: open ENGINE in a fresh DIR, make N durable puts, close.
    #[arg(long, num_args = 3, value_names = ["ENGINE", "DIR", "N"])]
    pub durable_puts: Option<Vec<String>>,
    /// For profilers: WORKLOAD (w3: N lazy puts + sync; w4: load N keys, then N random gets;
    /// w4b: load N keys in batches of 1,000, then N random gets before any checkpoint)
    /// on ENGINE in a fresh DIR. The measured part runs in `measured_puts` / `measured_gets`
    /// (for `valgrind --tool=callgrind --toggle-collect='*measured_*'`).
    #[arg(long, num_args = 4, value_names = ["WORKLOAD", "ENGINE", "DIR", "N"])]
    pub profile_run: Option<Vec<String>>,
}

fn main() {
    let args = Args::parse();
    if let Some(child) = &args.reopen_child {
        workloads::reopen_child(child);
        return;
    }
    if let Some(a) = &args.profile_run {
        workloads::profile_run(a);
        return;
    }
    if let Some(a) = &args.durable_puts {
        workloads::durable_puts(a);
        return;
    }
    let cfg = workloads::Config::new(&args);
    let engines: Vec<String> = args
        .engines
        .clone()
        .unwrap_or_else(|| engines::ALL.iter().map(|s| s.to_string()).collect());
    for e in &engines {
        assert!(
            engines::ALL.contains(&e.as_str()),
            "unknown engine {e}; known: {:?}",
            engines::ALL
        );
    }
    std::fs::create_dir_all(&args.out).expect("create --out dir");
    let store_root = args.dir.clone().unwrap_or_else(|| args.out.join("stores"));
    std::fs::create_dir_all(&store_root).expect("create store dir");
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for run in 1..=args.runs {
        eprintln!("== run {run} of {}", args.runs);
        let mut ctx = workloads::Ctx::new(&cfg, &store_root, run);
        for w in &args.workloads {
            workloads::run(&mut ctx, w, &engines);
        }
        rows.extend(ctx.rows);
        report::write(&args, &cfg, &engines, &rows, started.elapsed());
    }
    eprintln!(
        "done in {:.0} s; report: {}",
        started.elapsed().as_secs_f64(),
        args.out.join("report.md").display()
    );
}
