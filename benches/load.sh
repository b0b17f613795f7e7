#!/usr/bin/env bash
# Load benchmark: the same requests, back to back in one run, sent
#   1. directly to the upstream,
#   2. through nginx as a plain reverse proxy (benches/nginx/proxy.conf), access log on and off,
#   3. through Switchyard (routing by the body's `model`), access log on and off,
#   4. through the Pingora floor (examples/pingora_floor.rs: the smallest proxy on the same
#      Pingora with Switchyard's process settings), which splits a gap to nginx into what
#      Pingora costs and what the gateway adds,
# for two upstreams: the simulator with zero delays, and nginx answering a canned chat
# completion (so the upstream is never the bottleneck).
#
# Workloads: non-streaming chat completions at concurrency 1 (latency p50/p99) and 64
# (throughput); streaming (simulator emitting an event every 20 ms, stamped with its send
# time; its stream headers say when it read the request): time to first event, the part of it
# spent on the way (request and first event), and per-event lag at 100 and 1000 concurrent
# streams; memory:
# the gateway's RSS growth with 10 000 concurrent idle streams. Everything runs on 127.0.0.1
# and stops by itself.
#
# The request and stream measurements run in ROUNDS rounds, each round through every target
# in turn, and the tables give the median of the rounds (errors: their sum): on a shared
# machine one run moves by 10-25 %, and a slow minute then lands on every target alike.
#
# Usage: benches/load.sh [DURATION_SECONDS] [ROUNDS]   (defaults 10 and 3; results in
#        benches/results/)
# Needs: wrk and nginx (installed with apt-get when missing and running as root), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${2:-3}
OUT_DIR=benches/results
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$OUT_DIR/load-$STAMP.md"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in wrk nginx; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "load.sh needs $tool (apt-get install $tool)" >&2; exit 1
    fi
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet
cargo build --release --quiet --bench stream_load
cargo build --release --quiet --example pingora_floor
BIN=./target/release/switchyard
FLOOR=./target/release/examples/pingora_floor
STREAM_LOAD=$(ls -t target/release/deps/stream_load-* | grep -v '\.d$' | head -1)
# 10 000 idle streams need ~20 000 descriptors in the gateway alone.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

source benches/lib.sh

MODEL=meta-llama/Llama-3.1-8B-Instruct
BODY='{"model":"fast","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Summarise the benefits of continuous batching for GPU inference in one sentence."}],"max_tokens":16}'
UP_BODY=${BODY/\"fast\"/\"$MODEL\"}

# --- upstreams ---------------------------------------------------------------------------
$BIN sim --listen 127.0.0.1:0 --model "$MODEL" --zero-delay --max-num-seqs 256 \
  2>"$WORK/sim.log" >/dev/null &
PIDS+=($!)
SIM=$(wait_listen "$WORK/sim.log" sim)

CANNED_PORT=$(free_port)
CANNED_JSON='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"'"$MODEL"'","choices":[{"index":0,"message":{"role":"assistant","content":"Continuous batching keeps the GPU busy by adding and removing sequences every step."},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":16,"total_tokens":56}}'
mkdir -p "$WORK/canned"
sed -e "s|@PORT@|$CANNED_PORT|" -e "s|@PREFIX@|$WORK/canned|" -e "s|@BODY@|$CANNED_JSON|" \
  benches/nginx/canned.conf > "$WORK/canned.conf"
$NGINX -c "$WORK/canned.conf" -p "$WORK/canned" -g 'daemon off;' 2>"$WORK/canned.err" >/dev/null &
PIDS+=($!)
CANNED=127.0.0.1:$CANNED_PORT
wait_port "$CANNED"

# --- proxies -----------------------------------------------------------------------------
# The start_* functions set ADDR (no command substitution: a background child would keep the
# substitution's pipe open, and PIDS must be recorded in this shell).
start_nginx_proxy() { # NAME UPSTREAM ACCESS_LOG(on|off)
  local port dir log
  port=$(free_port); dir="$WORK/nginx-$1"; mkdir -p "$dir"
  if [ "$3" = on ]; then log="access_log $dir/access.log;"; else log="access_log off;"; fi
  sed -e "s|@PORT@|$port|" -e "s|@PREFIX@|$dir|" -e "s|@UPSTREAM@|$2|" -e "s|@ACCESS_LOG@|$log|" \
    benches/nginx/proxy.conf > "$dir/nginx.conf"
  $NGINX -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' 2>"$dir/err.log" >/dev/null &
  PIDS+=($!)
  ADDR="127.0.0.1:$port"
  wait_port "$ADDR"
}

start_floor() { # NAME UPSTREAM
  local port; port=$(free_port)
  $FLOOR "127.0.0.1:$port" "$2" 2>"$WORK/floor-$1.log" >/dev/null &
  PIDS+=($!)
  ADDR="127.0.0.1:$port"
  wait_port "$ADDR"
}

start_switchyard() { # NAME UPSTREAM ACCESS_LOG(stdout|off)
  local dir="$WORK/sy-$1"; mkdir -p "$dir"
  cat > "$dir/switchyard.yaml" <<EOF
listen: 127.0.0.1:0
admin: 127.0.0.1:0
server:
  access_log: $3
pools:
  llama-8b:
    model: $MODEL
    engine: vllm
    servers:
      - url: http://$2
models:
  llama-3.1-8b:
    pool: llama-8b
    aliases: [fast]
EOF
  $BIN run -c "$dir/switchyard.yaml" 2>"$dir/err.log" >"$dir/access.log" &
  PIDS+=($!)
  ADDR=$(wait_listen "$dir/err.log" api)
}

# --- measurement -------------------------------------------------------------------------
write_post_lua "$WORK/post.lua"

# run ADDR BODY CONNECTIONS THREADS -> "rps p50_us p99_us errors"
run() {
  local line
  line=$(WRK_BODY="$2" wrk -t"$4" -c"$3" -d"${DURATION}s" --timeout 10s -s "$WORK/post.lua" \
    "http://$1/v1/chat/completions" | grep '^RESULT')
  echo "$line" | sed -E 's/.*rps=([^ ]+) p50=([^ ]+) p99=([^ ]+) errors=([^ ]+).*/\1 \2 \3 \4/'
}

# Warm up (connection pools, page cache) so the first measured target is not penalised.
warm() { WRK_BODY="$2" wrk -t1 -c4 -d1s -s "$WORK/post.lua" "http://$1/v1/chat/completions" >/dev/null; }

{
  echo "# Load benchmark $STAMP"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $($NGINX -v 2>&1 | sed 's/.*version: //'); ${DURATION}s per run; medians of $ROUNDS rounds through every target in turn; load tool on the same cores."
  echo
} > "$OUT"

for upstream in sim canned; do
  if [ "$upstream" = sim ]; then UP=$SIM; else UP=$CANNED; fi
  start_nginx_proxy "$upstream-on" "$UP" on; NG_ON=$ADDR
  start_nginx_proxy "$upstream-off" "$UP" off; NG_OFF=$ADDR
  start_switchyard "$upstream-on" "$UP" stdout; SY_ON=$ADDR
  start_switchyard "$upstream-off" "$UP" off; SY_OFF=$ADDR
  start_floor "$upstream" "$UP"; FL=$ADDR
  declare -A C1 C64
  targets=("direct:$UP:$UP_BODY" "nginx (log on):$NG_ON:$UP_BODY" "nginx (log off):$NG_OFF:$UP_BODY" \
           "pingora floor (no log):$FL:$UP_BODY" \
           "switchyard (log on):$SY_ON:$BODY" "switchyard (log off):$SY_OFF:$BODY")
  for round in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
      name=${t%%:*}; rest=${t#*:}; addr=${rest%%:*}:$(echo "$rest" | cut -d: -f2); body=${rest#*:*:}
      if [ "$round" = 1 ]; then warm "$addr" "$body"; fi
      c1=$(run "$addr" "$body" 1 1)
      c64=$(run "$addr" "$body" 64 2)
      C1[$name]+="$c1"$'\n'
      C64[$name]+="$c64"$'\n'
      echo "  $upstream / round $round / $name: c1=$c1 c64=$c64" >&2
    done
  done
  for t in "${targets[@]}"; do
    name=${t%%:*}
    C1[$name]=$(printf '%s' "${C1[$name]}" | medians)
    C64[$name]=$(printf '%s' "${C64[$name]}" | medians)
  done
  read -r d_rps d_p50 d_p99 _ <<<"${C1[direct]}"
  read -r d64_rps _ _ _ <<<"${C64[direct]}"
  read -r n64_rps _ _ _ <<<"${C64[nginx (log on)]}"
  read -r _ n_p50 _ _ <<<"${C1[nginx (log on)]}"
  read -r n64off_rps _ _ _ <<<"${C64[nginx (log off)]}"
  read -r _ noff_p50 _ _ <<<"${C1[nginx (log off)]}"
  read -r f64_rps _ _ _ <<<"${C64[pingora floor (no log)]}"
  {
    echo "## Upstream: $upstream ($( [ "$upstream" = sim ] && echo 'switchyard sim --zero-delay' || echo 'nginx canned JSON'))"
    echo
    echo "| target | c=1 p50 µs | c=1 p99 µs | added p50 µs vs direct | c=64 req/s | c=64 vs direct | c=64 vs nginx (same log) | c=64 vs Pingora floor | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${targets[@]}"; do
      name=${t%%:*}
      read -r _ p50 p99 e1 <<<"${C1[$name]}"
      read -r rps _ _ e64 <<<"${C64[$name]}"
      case "$name" in *"log off"*|*"no log"*) nref=$n64off_rps ;; *) nref=$n64_rps ;; esac
      awk -v n="$name" -v p50="$p50" -v p99="$p99" -v d="$d_p50" -v rps="$rps" -v drps="$d64_rps" \
          -v nrps="$nref" -v frps="$f64_rps" -v err=$((e1 + e64)) 'BEGIN {
        printf "| %s | %.0f | %.0f | %+.0f | %.0f | %.2f | %.2f | %.2f | %d |\n", n, p50, p99, p50 - d, rps, rps / drps, rps / nrps, rps / frps, err }'
    done
    echo
  } >> "$OUT"
  unset C1 C64
done

# --- streaming ----------------------------------------------------------------------------
$BIN sim --listen 127.0.0.1:0 --model "$MODEL" --event-timestamps --decode-step-ms 20 \
  --decode-us-per-seq 0 --prefill-us-per-token 0 --max-num-seqs 4096 --num-blocks 1000000 \
  2>"$WORK/sim-ts.log" >/dev/null &
PIDS+=($!)
SIM_TS=$(wait_listen "$WORK/sim-ts.log" sim)
start_nginx_proxy stream "$SIM_TS" on; NG_S=$ADDR
start_switchyard stream "$SIM_TS" stdout; SY_S=$ADDR
start_floor stream "$SIM_TS"; FL_S=$ADDR

# stream_run ADDR MODEL STREAMS -> "ttft_p50 ttft_p99 hops_p50 hops_p99 lag_p50 lag_p99 errors" (µs)
stream_run() {
  "$STREAM_LOAD" stream --url "http://$1" --model "$2" --streams "$3" --tokens 50 | grep '^RESULT' \
    | sed -E 's/.*ttft_p50_us=([0-9]+) ttft_p99_us=([0-9]+) hops_p50_us=([0-9]+) hops_p99_us=([0-9]+) .*lag_p50_us=([0-9]+) lag_p99_us=([0-9]+) events=[0-9]+ errors=([0-9]+).*/\1 \2 \3 \4 \5 \6 \7/'
}
{
  echo "## Streaming (simulator: one event per 20 ms, 50 events per stream; lag = receive time − the simulator's send stamp)"
  echo
  echo "All streams start together. TTFT is what the client measures; it includes the wait for the"
  echo "engine's next 20 ms decode step, which moves by up to a step between runs. *Hops* is the"
  echo "part of it spent between client and server: request sent → read by the simulator, plus the"
  echo "first event's lag. Added TTFT is the target's hops p99 minus direct's."
  echo
  echo "| streams | target | TTFT p50 µs | TTFT p99 µs | hops p50 µs | hops p99 µs | added TTFT p99 µs | lag p50 µs | lag p99 µs | added lag p99 µs | errors |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >> "$OUT"
for n in 100 1000; do
  declare -A S
  for round in $(seq "$ROUNDS"); do
    for t in "direct:$SIM_TS:$MODEL" "nginx:$NG_S:$MODEL" "floor:$FL_S:$MODEL" "switchyard:$SY_S:fast"; do
      IFS=: read -r name host port model <<<"$t"
      line=$(stream_run "$host:$port" "$model" "$n")
      S[$name]+="$line"$'\n'
      echo "  streams $n / round $round / $name: $line" >&2
    done
  done
  for name in direct nginx floor switchyard; do
    S[$name]=$(printf '%s' "${S[$name]}" | medians)
  done
  read -r _ _ _ d_h99 _ d_l99 _ <<<"${S[direct]}"
  for name in direct nginx floor switchyard; do
    read -r t50 t99 h50 h99 l50 l99 err <<<"${S[$name]}"
    label=$name; [ "$name" = floor ] && label="pingora floor"
    echo "| $n | $label | $t50 | $t99 | $h50 | $h99 | $((h99 - d_h99)) | $l50 | $l99 | $((l99 - d_l99)) | $err |" >> "$OUT"
  done
  unset S
done
echo >> "$OUT"

# --- memory with idle streams --------------------------------------------------------------
# Each stream gets its first event (the gateway holds a stream's header until then), then the
# server goes silent with the connection open.
$BIN sim --listen 127.0.0.1:0 --model "$MODEL" --zero-delay --fault stall_after=1 \
  --max-num-seqs 20000 --num-blocks 2000000 2>"$WORK/sim-idle.log" >/dev/null &
PIDS+=($!)
SIM_IDLE=$(wait_listen "$WORK/sim-idle.log" sim)
start_switchyard idle "$SIM_IDLE" stdout; SY_IDLE=$ADDR
SY_IDLE_PID=${PIDS[-1]}
IDLE=$("$STREAM_LOAD" idle --url "http://$SY_IDLE" --model fast --streams 10000 --pid "$SY_IDLE_PID" | grep '^RESULT')
echo "  idle / switchyard: $IDLE" >&2
# The same through the Pingora floor, against a fresh silent server.
$BIN sim --listen 127.0.0.1:0 --model "$MODEL" --zero-delay --fault stall_after=1 \
  --max-num-seqs 20000 --num-blocks 2000000 2>"$WORK/sim-idle2.log" >/dev/null &
PIDS+=($!)
SIM_IDLE2=$(wait_listen "$WORK/sim-idle2.log" sim)
start_floor idle "$SIM_IDLE2"; FL_IDLE=$ADDR
FL_IDLE_PID=${PIDS[-1]}
IDLE_FLOOR=$("$STREAM_LOAD" idle --url "http://$FL_IDLE" --model "$MODEL" --streams 10000 --pid "$FL_IDLE_PID" | grep '^RESULT')
echo "  idle / floor: $IDLE_FLOOR" >&2
{
  echo "## Memory: 10 000 concurrent idle streams"
  echo
  echo "- Switchyard: \`$IDLE\`"
  echo "- Pingora floor: \`$IDLE_FLOOR\`"
  echo
} >> "$OUT"

echo "results: $OUT" >&2
cat "$OUT"
