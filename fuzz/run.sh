#!/usr/bin/env bash
# Runs one fuzz target for a fixed time: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
#
# Stable toolchain, no sanitizer (`-s none`); FUZZ_ASAN=1 builds with AddressSanitizer instead,
# which needs nightly flags (RUSTC_BOOTSTRAP=1). New inputs go to fuzz/corpus/TARGET (not
# committed); fuzz/seeds/TARGET is read as a second corpus. A finding is saved under
# fuzz/artifacts/TARGET/ and this script exits non-zero after cargo-fuzz prints how to
# reproduce it. See docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -lt 2 ]; then
    echo "usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

case "$target" in
    record_decode | snapshot_decode | recovery_image) max_len=32768 ;;
    ops_vs_model) max_len=4096 ;;
    *)
        echo "unknown target $target (record_decode, snapshot_decode, recovery_image, ops_vs_model)" >&2
        exit 2
        ;;
esac

mkdir -p "corpus/$target" "seeds/$target"
if [ "${FUZZ_ASAN:-0}" = 1 ]; then
    build=(env RUSTC_BOOTSTRAP=1 cargo fuzz run "$target")
else
    build=(cargo fuzz run -s none "$target")
fi
exec "${build[@]}" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" \
    -max_len="$max_len" \
    -dict=dicts/sessiondb.dict \
    -timeout=20 \
    -rss_limit_mb=2048 \
    -print_final_stats=1 \
    "$@"
