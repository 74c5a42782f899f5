"""Plots results.csv of the session bench: req/s and p99 against concurrency, per store (mean of runs)."""
import csv, sys
from collections import defaultdict
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1])))
agg = defaultdict(lambda: defaultdict(list))
for r in rows:
    agg[r["store"]][int(r["concurrency"])].append((float(r["req_per_s"]), float(r["p99_us"])))
fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
for store, by in sorted(agg.items()):
    cs = sorted(by)
    a.plot(cs, [sum(x[0] for x in by[c]) / len(by[c]) for c in cs], marker="o", label=store)
    b.plot(cs, [sum(x[1] for x in by[c]) / len(by[c]) for c in cs], marker="o", label=store)
for ax, t in ((a, "req/s (load+change+save)"), (b, "p99 latency (µs)")):
    ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.set_xlabel("concurrent requests"); ax.set_title(t)
    ax.grid(True, which="both", alpha=.3)
a.legend(fontsize=7)
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=100)
