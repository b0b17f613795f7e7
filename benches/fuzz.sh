#!/usr/bin/env bash
# Coverage-guided fuzzing of what reads untrusted bytes, with cargo-fuzz (libFuzzer, nightly):
# - request: the request view, and the model splice and usage request built on it;
# - sse: the SSE tracker, the usage scanner and the usage strip under any chunking;
# - config: the config loader.
# Each target runs for SECONDS (default 60) from the seed corpus in fuzz/corpus (read only; what
# it finds new goes to target/fuzz-corpus). A crash stops the script with the input saved under
# fuzz/artifacts/TARGET/; make it a regression test, then fix it.
#
# Usage: benches/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request sse config)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
for t in "${targets[@]}"; do
  mkdir -p "target/fuzz-corpus/$t"
  echo "== $t: ${secs}s"
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added|==|INFO: seed corpus)|ERROR|panicked|SUMMARY" || true
  if ls "fuzz/artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "$t: crash saved in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
