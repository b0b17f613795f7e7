#!/usr/bin/env bash
# User-space instructions per non-streamed chat completion, counted by callgrind, for the
# Pingora floor (examples/pingora_floor.rs) and Switchyard (default config, access log off),
# both in front of the simulator with zero delays.
#
# Unlike req/s, which moves 10-25 % from minute to minute on a shared machine, the count repeats
# within about 0.5 %: it is the figure to compare two builds by. It leaves out the kernel.
#
# Each proxy runs under `valgrind --tool=callgrind`; 200 requests warm it up, the counters are
# zeroed, N more requests go over one keep-alive connection, and the dump's total is divided
# by N.
#
# Usage: benches/instructions.sh [N]      (default 2000)
# Needs: valgrind (installed with apt-get when missing and running as root), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
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
BODY='{"model":"fast","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the benefits of continuous batching for GPU inference in one sentence."}],"max_tokens":16}'

source benches/lib.sh

# send ADDR BODY COUNT: COUNT requests in a row on one keep-alive connection; fails unless
# every answer is a 200.
send() {
  python3 - "$1" "$3" "$2" <<'EOF'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
n, body = int(sys.argv[2]), sys.argv[3].encode()
c = http.client.HTTPConnection(host, int(port))
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
EOF
}

$BIN sim --listen 127.0.0.1:0 --model "$MODEL" --zero-delay --max-num-seqs 256 \
  2>"$WORK/sim.log" >/dev/null &
PIDS+=($!)
SIM=$(wait_listen "$WORK/sim.log" sim)

cat > "$WORK/switchyard.yaml" <<EOF
listen: 127.0.0.1:0
admin: 127.0.0.1:0
server:
  access_log: off
pools:
  llama-8b:
    model: $MODEL
    engine: vllm
    servers:
      - url: http://$SIM
models:
  llama-3.1-8b:
    pool: llama-8b
    aliases: [fast]
EOF

# measure NAME BODY CMD...: sets IR to NAME's instructions per request. Runs in this shell
# (no command substitution), so a failure stops the script and the trap reaps valgrind.
measure() {
  local name=$1 body=$2 addr pid total
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "$@" \
    >/dev/null 2>"$WORK/$name.log" &
  pid=$!
  PIDS+=("$pid")
  if [ "$name" = switchyard ]; then addr=$(wait_listen "$WORK/$name.log" api); else
    addr=$FLOOR_ADDR; wait_port "$addr"; fi
  send "$addr" "$body" 200
  callgrind_control -z "$pid" >/dev/null 2>&1
  send "$addr" "$body" "$N"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(cat "$WORK/$name.out".* | awk '/^(summary|totals):/ {print $2}' | sort -n | tail -1)
  IR=$((total / N))
}

FLOOR_ADDR=127.0.0.1:$(free_port)
measure floor "${BODY/\"fast\"/\"$MODEL\"}" $FLOOR "$FLOOR_ADDR" "$SIM"
floor=$IR
measure switchyard "$BODY" $BIN run -c "$WORK/switchyard.yaml"
sy=$IR
echo "| proxy | instructions per request |"
echo "|---|---:|"
echo "| Pingora floor | $floor |"
echo "| Switchyard | $sy ($(python3 -c "print(f'{$sy / $floor:.2f}')") × floor) |"
