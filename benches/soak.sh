#!/usr/bin/env bash
# Soak: DURATION seconds (default 1200, 20 minutes) of mixed load through the release gateway in
# front of three simulators, with faults injected on a share of the requests: servers dying
# mid-stream (die_after), answering 503, hanging (the model's first-token timeout fails them
# over), sending garbage after the first event, clients aborting mid-stream, and a config
# reload every 60 s. Every 30 s it samples the gateway's RSS, open descriptors and in-flight
# gauges. At the end, after the load stops: in-flight back to 0, descriptors back to where
# they were, and token accounting against the simulators' own counters. The report goes to
# benches/results/soak-STAMP.md.
#
# Usage: benches/soak.sh [DURATION_SECONDS] [CONCURRENCY]   (defaults 1200 and 32)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-1200}
CONCURRENCY=${2:-32}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet
BIN=./target/release/switchyard
source benches/lib.sh
bench_setup soak
MODEL=meta-llama/Llama-3.1-8B-Instruct
start_sims 3 "$MODEL" --decode-step-ms 2 --max-num-seqs 128

cat > "$WORK/gw.yaml" <<YAML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
server:
  access_log: off
  grace_period: 5s
auth: optional
tenants:
  anonymous: {}
pools:
  p:
    model: $MODEL
    health: {interval: 1s}
    breaker: {consecutive_failures: 50, failure_rate: 0.9, min_calls: 200}
    servers:
      - url: http://${SIMS[0]}
      - url: http://${SIMS[1]}
      - url: http://${SIMS[2]}
models:
  m:
    pool: p
    first_token_timeout: 2s
YAML
$BIN run -c "$WORK/gw.yaml" 2>"$WORK/gw.log" >/dev/null &
GW_PID=$!
PIDS+=($GW_PID)
API=$(wait_listen "$WORK/gw.log" api)
ADMIN=$(wait_listen "$WORK/gw.log" admin)

python3 benches/soak.py --api "$API" --admin "$ADMIN" --pid "$GW_PID" --duration "$DURATION" \
  --concurrency "$CONCURRENCY" --config "$WORK/gw.yaml" --sims "${SIMS[@]}" --out "$OUT"
cat "$OUT"
