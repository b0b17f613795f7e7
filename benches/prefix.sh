#!/usr/bin/env bash
# Prefix-cache benchmark: 4 `switchyard sim` servers behind the gateway, one workload sent
# through each balancing policy in turn (fresh servers, cold caches, same seed), by
# benches/prefix_load.rs. Workloads:
#   tight:     multi-turn conversations over 4 shared 2k-token system prompts plus 20 % of
#              unique 2k-token prompts, on servers whose KV cache cannot hold every system
#              prompt and the running conversations (the working set does not fit one server);
#   roomy:     the same on caches that hold everything;
#   no-shared: single requests with unique prompts only (nothing to gain from affinity).
# The rate sits near what the cluster can serve when it reuses its caches (RATE, for tight and
# roomy), and for no-shared near what it can serve at all (NOSHARED_RATE: every request is a
# full 2k-token prefill, and a tight cache runs three at a time).
#
# Usage: benches/prefix.sh [REQUESTS] [RATE]   (defaults 240 and 16; results in
#        benches/results/prefix-<time>.md). Environment: POLICIES, WORKLOADS, SEEDS (e.g. "1 2 3":
#        every run once per seed, rows labelled with it), NOSHARED_RATE,
#        TIGHT_BLOCKS (KV blocks per server when tight), POOL_EXTRA (YAML lines added to the
#        pool, e.g. "    prefix: {beta: 1}"), KEEP_WORK (keep the logs and configs).
# Takes about 10 minutes with the defaults (one seed, three workloads, four policies).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-240}
RATE=${2:-16}
NOSHARED_RATE=${NOSHARED_RATE:-8}
SEEDS=${SEEDS:-${SEED:-1}}
POLICIES=${POLICIES:-"weighted_round_robin least_load consistent_hash prefix_aware"}
WORKLOADS=${WORKLOADS:-"tight roomy no-shared"}
OUT_DIR=benches/results
mkdir -p "$OUT_DIR"
OUT="$OUT_DIR/prefix-$(date -u +%Y%m%dT%H%M%SZ).md"
WORK=$(mktemp -d)
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
trap 'stop_all; [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT

cargo build --release --quiet
cargo build --release --quiet --bench prefix_load
BIN=./target/release/switchyard
LOAD=$(ls -t target/release/deps/prefix_load-* | grep -v '\.d$' | head -1)
source benches/lib.sh
MODEL=meta-llama/Llama-3.1-8B-Instruct
# The simulated engine: 16-token KV blocks, 16 sequences at most, 30 us of
# prefill per uncached prompt token (a 2.6k-token conversation: ~80 ms), 20 ms decode steps.
SIM_FLAGS="--max-num-seqs 16 --prefill-us-per-token 30 --decode-step-ms 20"

run() { # WORKLOAD POLICY SEED HEADER
  local blocks=8192 rate=$RATE extra=()
  case "$1" in
    tight) blocks=${TIGHT_BLOCKS:-400} ;;
    roomy) blocks=8192 ;;
    no-shared) blocks=${TIGHT_BLOCKS:-400}; rate=$NOSHARED_RATE; extra=(--system-prompts 0) ;;
  esac
  local sims=() servers=""
  for i in 1 2 3 4; do
    # shellcheck disable=SC2086
    $BIN sim --listen 127.0.0.1:0 --model "$MODEL" --num-blocks "$blocks" $SIM_FLAGS --seed "$3" \
      2>"$WORK/sim$i.log" >/dev/null &
    PIDS+=($!)
  done
  for i in 1 2 3 4; do
    local a; a=$(wait_listen "$WORK/sim$i.log" sim)
    sims+=("$a"); servers+="      - url: http://$a"$'\n'
  done
  cat > "$WORK/gw.yaml" <<YAML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
server:
  access_log: off
pools:
  gpu:
    model: $MODEL
    engine: vllm
    balance: $2
${POOL_EXTRA:-}
    servers:
$servers
models:
  llama:
    pool: gpu
YAML
  $BIN run -c "$WORK/gw.yaml" 2>"$WORK/gw.log" >/dev/null &
  PIDS+=($!)
  local gw; gw=$(wait_listen "$WORK/gw.log" api)
  local label=$2
  [ "$SEEDS" = "${SEEDS%% *}" ] || label="$2 (seed $3)"
  # The first engine scrape (1 s interval) is in before the load starts.
  sleep 1.5
  "$LOAD" --url "http://$gw" --model llama --sims "$(IFS=,; echo "${sims[*]}")" \
    --label "$label" --seed "$3" --requests "$REQUESTS" --rate "$rate" "${extra[@]}" $4
  stop_all
}

{
  echo "# Prefix-cache benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$(nproc) cores; 4 simulators ($SIM_FLAGS); $REQUESTS requests per run at $RATE/s"
  echo "(no-shared: $NOSHARED_RATE/s), seeds $SEEDS; tight: ${TIGHT_BLOCKS:-400} KV blocks per server, roomy: 8192."
  echo "Sessions: 80 % conversations of 4 turns (100-token user turns, 50-token answers carried"
  echo "over) on one of 4 shared 2k-token system prompts, 20 % single requests with a unique"
  echo "2k-token prompt; 32 output tokens, streamed; think time 300 ms mean."
  for w in $WORKLOADS; do
    echo
    echo "## $w"
    echo
    header=--header
    for seed in $SEEDS; do
      for p in $POLICIES; do
        run "$w" "$p" "$seed" "$header"
        header=
      done
    done
  done
} | tee "$OUT"
echo "results: $OUT" >&2
