#!/usr/bin/env bash
# User-space instructions counted by callgrind for the Pingora floor (examples/pingora_floor.rs)
# and Switchyard (default config, access log off), per non-streamed chat completion and per
# streamed one.
#
# Unlike req/s, which moves 10-25 % from minute to minute on a shared machine, the count repeats
# within about 0.5 %: it is the figure to compare two builds by. It leaves out the kernel.
#
# Each proxy runs under `valgrind --tool=callgrind`, in front of a simulator; requests warm it
# up, the counters are zeroed, then requests go one after another over one keep-alive
# connection, and the dump's total is divided by their number:
# - N non-streamed requests (default 2000) to a simulator with zero delays;
# - S streams (default 100) of 50 token events to a simulator that makes one token a
#   millisecond, so that every event comes in a chunk of its own, as from a GPU server.
#
# Usage: benches/instructions.sh [N] [S]
#   BASELINE=path/to/other/switchyard benches/instructions.sh   measures that binary too, in the
#   same run against the same simulators, and prints the change (a build of an earlier commit:
#   `git worktree add /tmp/base <commit> && cargo build --release --manifest-path /tmp/base/Cargo.toml`).
#   EXTRA_CONFIG='otel: {...}' benches/instructions.sh   appends that YAML to this build's config
#   only (not the baseline's): with BASELINE set to a copy of the same binary, the change is the
#   cost of what it turns on.
# Needs: valgrind (installed with apt-get when missing and running as root), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
S=${2:-100}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
  else
    echo "instructions.sh needs valgrind (apt-get install valgrind)" >&2; exit 1
  fi
fi

cargo build --release --quiet
cargo build --release --quiet --example pingora_floor
BIN=./target/release/switchyard
FLOOR=./target/release/examples/pingora_floor
MODEL=meta-llama/Llama-3.1-8B-Instruct
MESSAGES='"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the benefits of continuous batching for GPU inference in one sentence."}]'
BODY='{"model":"fast",'$MESSAGES',"max_tokens":16}'
STREAM_BODY='{"model":"fast",'$MESSAGES',"max_tokens":50,"stream":true}'

source benches/lib.sh

# send ADDR BODY COUNT: COUNT requests in a row on one keep-alive connection; fails unless
# every answer is a 200 and every stream ends with [DONE].
send() {
  python3 - "$1" "$3" "$2" <<'EOF'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
n, body = int(sys.argv[2]), sys.argv[3].encode()
c = http.client.HTTPConnection(host, int(port))
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
    if b'"stream":true' in body and not data.endswith(b"data: [DONE]\n\n"):
        sys.exit("a stream ended without [DONE]")
EOF
}

$BIN sim --listen 127.0.0.1:0 --model "$MODEL" --zero-delay --max-num-seqs 256 \
  2>"$WORK/sim.log" >/dev/null &
PIDS+=($!)
SIM=$(wait_listen "$WORK/sim.log" sim)
$BIN sim --listen 127.0.0.1:0 --model "$MODEL" --prefill-us-per-token 0 --decode-step-ms 1 \
  --decode-us-per-seq 0 --max-num-seqs 256 2>"$WORK/stream-sim.log" >/dev/null &
PIDS+=($!)
STREAM_SIM=$(wait_listen "$WORK/stream-sim.log" sim)

# config UPSTREAM: Switchyard's config in front of UPSTREAM.
config() {
  cat <<EOF
listen: 127.0.0.1:0
admin: 127.0.0.1:0
server:
  access_log: off
pools:
  llama-8b:
    model: $MODEL
    engine: vllm
    servers:
      - url: http://$1
models:
  llama-3.1-8b:
    pool: llama-8b
    aliases: [fast]
EOF
}
config "$SIM" > "$WORK/baseline.yaml"
config "$STREAM_SIM" > "$WORK/baseline-stream.yaml"
{ cat "$WORK/baseline.yaml"; echo "${EXTRA_CONFIG:-}"; } > "$WORK/switchyard.yaml"
{ cat "$WORK/baseline-stream.yaml"; echo "${EXTRA_CONFIG:-}"; } > "$WORK/switchyard-stream.yaml"

# measure NAME BODY WARM COUNT CMD...: sets IR to NAME's instructions per request, over COUNT
# requests after WARM. Runs in this shell (no command substitution), so a failure stops the
# script and the trap reaps valgrind.
measure() {
  local name=$1 body=$2 warm=$3 count=$4 addr pid total
  shift 4
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "$@" \
    >/dev/null 2>"$WORK/$name.log" &
  pid=$!
  PIDS+=("$pid")
  if [ "${name#switchyard}" != "$name" ]; then addr=$(wait_listen "$WORK/$name.log" api); else
    addr=$FLOOR_ADDR; wait_port "$addr"; fi
  send "$addr" "$body" "$warm"
  callgrind_control -z "$pid" >/dev/null 2>&1
  send "$addr" "$body" "$count"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(cat "$WORK/$name.out".* | awk '/^(summary|totals):/ {print $2}' | sort -n | tail -1)
  IR=$((total / count))
}

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
FLOOR_ADDR=127.0.0.1:$(free_port)
measure floor "${BODY/\"fast\"/\"$MODEL\"}" 200 "$N" $FLOOR "$FLOOR_ADDR" "$SIM"
floor=$IR
measure switchyard "$BODY" 200 "$N" $BIN run -c "$WORK/switchyard.yaml"
sy=$IR
if [ -n "${BASELINE:-}" ]; then
  measure switchyard-baseline "$BODY" 200 "$N" "$BASELINE" run -c "$WORK/baseline.yaml"
  base=$IR
fi
FLOOR_ADDR=127.0.0.1:$(free_port)
measure floor-stream "${STREAM_BODY/\"fast\"/\"$MODEL\"}" 10 "$S" \
  $FLOOR "$FLOOR_ADDR" "$STREAM_SIM"
floor_stream=$IR
measure switchyard-stream "$STREAM_BODY" 10 "$S" $BIN run -c "$WORK/switchyard-stream.yaml"
sy_stream=$IR
if [ -n "${BASELINE:-}" ]; then
  measure switchyard-baseline-stream "$STREAM_BODY" 10 "$S" "$BASELINE" run -c "$WORK/baseline-stream.yaml"
  base_stream=$IR
fi
echo "| proxy | instructions per request | per stream of 50 events |"
echo "|---|---:|---:|"
echo "| Pingora floor | $floor | $floor_stream |"
echo "| Switchyard | $sy ($(ratio "$sy" "$floor") × floor) | $sy_stream ($(ratio "$sy_stream" "$floor_stream") × floor) |"
if [ -n "${BASELINE:-}" ]; then
  pct() { python3 -c "print(f'{($1 / $2 - 1) * 100:+.2f} %')"; }
  echo "| baseline ($BASELINE) | $base ($(ratio "$base" "$floor") × floor) | $base_stream ($(ratio "$base_stream" "$floor_stream") × floor) |"
  echo "| change against the baseline | $(pct "$sy" "$base") | $(pct "$sy_stream" "$base_stream") |"
fi
