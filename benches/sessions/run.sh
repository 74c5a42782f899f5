#!/usr/bin/env bash
# Issue 17, point 1: the session benchmark. Installs redis-server if missing, starts two
# (appendfsync always on :6391, everysec on :6392, AOF in a temp dir on the measured disk),
# runs the bench (release) and always stops them (trap), then writes results.csv and
# sessions.png (matplotlib if importable). Never part of `cargo test`.
# Usage: benches/sessions/run.sh [OUT_DIR]   (env: BENCH_SECS, BENCH_RUNS, BENCH_CONC, BENCH_STORES)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/results}"
mkdir -p "$out"
if ! command -v redis-server >/dev/null; then
    apt-get update && apt-get install -y redis-server
fi
work="$(mktemp -d "$here/redis.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
start() { # port fsync
    mkdir -p "$work/$1"
    redis-server --port "$1" --bind 127.0.0.1 --dir "$work/$1" --save '' --appendonly yes \
        --appendfsync "$2" --daemonize no --logfile "$work/$1.log" &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.1; done
    echo "redis-server on $1 did not start" >&2; exit 1
}
start 6391 always
start 6392 everysec
export REDIS_ALWAYS_URL=redis://127.0.0.1:6391 REDIS_ALWAYS_PID="${pids[0]}"
export REDIS_EVERYSEC_URL=redis://127.0.0.1:6392 REDIS_EVERYSEC_PID="${pids[1]}"
cd "$here"
cargo build --release
BENCH_DIR="$work" timeout 1800 ./target/release/sessiondb-sessions-bench | tee "$out/results.csv"
python3 "$here/plot.py" "$out/results.csv" "$out/sessions.png" || echo "no plot (matplotlib missing?)" >&2
