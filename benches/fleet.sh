#!/usr/bin/env bash
# The shared store's cost: the same tenant's requests (every limit and a budget applying, none
# reached) through a gateway on its in-process store and through one on a local Redis
# (shared:), back to back in each round:
#   - c=1: latency p50/p99 (the difference is what the admission round trip adds; settlement
#     runs off the request path);
#   - c=64: requests per second (Redis shares the 2 cores with the gateway, the simulator
#     and wrk);
#   - the admission round trip itself, from switchyard_shared_store_admission_seconds:
#     p50 and p99 interpolated within the histogram's buckets, over every request of the run.
# Medians of ROUNDS rounds. Everything on 127.0.0.1; stops by itself.
#
# Usage: benches/fleet.sh [DURATION_SECONDS] [ROUNDS]   (defaults 10 and 3; results in
#        benches/results/)
# Needs: wrk and redis-server (installed with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${2:-3}
source benches/lib.sh
bench_setup fleet

for tool in wrk redis-server; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "fleet.sh needs $tool (apt-get install $tool)" >&2; exit 1
    fi
  fi
done

cargo build --release --quiet
BIN=./target/release/switchyard
MODEL=meta-llama/Llama-3.1-8B-Instruct
KEY=sk-bench
BODY='{"model":"m","messages":[{"role":"user","content":"Summarise the benefits of continuous batching for GPU inference in one sentence."}],"max_tokens":16}'

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "127.0.0.1:$REDIS_PORT"
start_sims 1 "$MODEL" --zero-delay

DIGEST=$(printf %s "$KEY" | $BIN key hash)
config() { # config NAME EXTRA
  cat > "$WORK/$1.yaml" <<YAML
listen: 127.0.0.1:0
admin: 127.0.0.1:0
server: {access_log: "off"}
pools:
  p:
    model: $MODEL
    engine: vllm
    cost: {input_per_mtok: 0.01, output_per_mtok: 0.01}
    servers: [{url: "http://${SIMS[0]}"}]
models:
  m:
    pool: p
tenants:
  bench:
    keys: ["$DIGEST"]
    limits: {requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, concurrent_requests: 100000}
    budget: {usd_per_day: 1000000}
$2
YAML
  $BIN run -c "$WORK/$1.yaml" 2>"$WORK/$1.log" >/dev/null &
  PIDS+=($!)
}
config local ""
config shared "shared: {redis: \"redis://127.0.0.1:$REDIS_PORT/0\", timeout: 50ms}"
LOCAL=$(wait_listen "$WORK/local.log" api)
SHARED=$(wait_listen "$WORK/shared.log" api)
SHARED_ADMIN=$(wait_listen "$WORK/shared.log" admin)
for _ in $(seq 1 100); do
  curl -s "http://$SHARED_ADMIN/metrics" | grep -q '^switchyard_shared_store_up 1' && break
  sleep 0.1
done

write_post_lua "$WORK/post.lua" "$KEY"
run() { # run ADDR CONNECTIONS THREADS -> "rps p50_us p99_us errors"
  WRK_BODY="$BODY" wrk -t"$3" -c"$2" -d"${DURATION}s" --timeout 10s -s "$WORK/post.lua" \
    "http://$1/v1/chat/completions" | grep '^RESULT' \
    | sed -E 's/.*rps=([^ ]+) p50=([^ ]+) p99=([^ ]+) errors=([^ ]+).*/\1 \2 \3 \4/'
}
for addr in "$LOCAL" "$SHARED"; do
  WRK_BODY="$BODY" wrk -t1 -c4 -d1s -s "$WORK/post.lua" "http://$addr/v1/chat/completions" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  run "$LOCAL" 1 1 >>"$WORK/local-c1"
  run "$SHARED" 1 1 >>"$WORK/shared-c1"
  run "$LOCAL" 64 2 >>"$WORK/local-c64"
  run "$SHARED" 64 2 >>"$WORK/shared-c64"
done
quantiles() { # the admission histogram's p50 and p99 in µs
  curl -s "http://$SHARED_ADMIN/metrics" | python3 -c '
import sys, re
b = []
for line in sys.stdin:
    m = re.match(r"switchyard_shared_store_admission_seconds_bucket\{le=\"([^\"]+)\"\} (\S+)", line)
    if m:
        b.append((float("inf") if m[1] == "+Inf" else float(m[1]), float(m[2])))
total = b[-1][1]
def q(p):
    want, prev_le, prev_n = p * total, 0.0, 0.0
    for le, n in b:
        if n >= want:
            if le == float("inf"):
                return prev_le * 1e6
            return (prev_le + (le - prev_le) * (want - prev_n) / max(n - prev_n, 1)) * 1e6
        prev_le, prev_n = le, n
print(f"{q(0.5):.0f} {q(0.99):.0f} {int(total)}")'
}
read -r LC1 LP50 LP99 LE <<<"$(medians <"$WORK/local-c1")"
read -r SC1 SP50 SP99 SE <<<"$(medians <"$WORK/shared-c1")"
read -r L64 _ _ LE64 <<<"$(medians <"$WORK/local-c64")"
read -r S64 _ _ SE64 <<<"$(medians <"$WORK/shared-c64")"
read -r AP50 AP99 AN <<<"$(quantiles)"
# Redis's own round trip on this machine (PING, redis-cli --latency for 3 s): the floor of an
# admission.
PING=$(timeout 3 redis-cli -p "$REDIS_PORT" --latency --raw 2>/dev/null | tail -1 | awk '{print $3}' || true)
{
  echo "# Fleet benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Machine: $(nproc) cores, $(uname -sr); $(redis-server --version | awk '{print $3}'); wrk; ${DURATION}s per run, medians of $ROUNDS rounds; gateway, Redis, simulator and wrk on the same cores."
  echo
  echo "| store | c=1 req/s | c=1 p50 µs | c=1 p99 µs | c=64 req/s | errors |"
  echo "|---|---|---|---|---|---|"
  echo "| in process | $LC1 | $LP50 | $LP99 | $L64 | $((LE + LE64)) |"
  echo "| Redis (shared:) | $SC1 | $SP50 | $SP99 | $S64 | $((SE + SE64)) |"
  echo
  python3 -c "print(f'Shared / local: c=1 p50 {float(\"$SP50\")-float(\"$LP50\"):+.0f} µs, c=64 throughput x{float(\"$S64\")/float(\"$L64\"):.2f}.')"
  echo
  echo "Admission round trip (one script call), over $AN admissions of both loads: p50 ${AP50} µs, p99 ${AP99} µs (interpolated in the histogram's buckets: 50, 100, 250, 500 µs, 1, 2, 5 ms…). Redis PING round trip, idle: ${PING:-?} ms on average."
} | tee "$OUT"
