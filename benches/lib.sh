# Helpers shared by the benchmark scripts (sourced).

# wait_listen LOGFILE LABEL: prints the address once "listening on ADDR (LABEL)" is logged.
wait_listen() {
  for _ in $(seq 1 300); do
    local a
    a=$(grep -o "listening on [^ ]* ($2)" "$1" 2>/dev/null | head -1 | awk '{print $3}')
    if [ -n "$a" ]; then echo "$a"; return 0; fi
    sleep 0.1
  done
  echo "no '$2' listener in $1" >&2; cat "$1" >&2; exit 1
}

# wait_port HOST:PORT: returns once something accepts connections there.
wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_setup NAME: OUT (benches/results/NAME-STAMP.md), WORK (a scratch directory, removed at
# exit) and PIDS (processes interrupted at exit). Call it in the script's own shell.
bench_setup() {
  mkdir -p benches/results
  OUT="benches/results/$1-$(date -u +%Y%m%dT%H%M%SZ).md"
  WORK=$(mktemp -d)
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# start_sims N MODEL [FLAGS...]: N simulators on free ports; their addresses in SIMS.
start_sims() {
  local n=$1 model=$2 i
  shift 2
  SIMS=()
  for i in $(seq 1 "$n"); do
    $BIN sim --listen 127.0.0.1:0 --model "$model" "$@" 2>"$WORK/sim$i.log" >/dev/null &
    PIDS+=($!)
  done
  for i in $(seq 1 "$n"); do
    SIMS+=("$(wait_listen "$WORK/sim$i.log" sim)")
  done
}

# write_post_lua FILE [BEARER_KEY]: a wrk script that POSTs $WRK_BODY as JSON (with the key as
# Authorization: Bearer) and prints "RESULT rps=… p50=… p99=… errors=… requests=…" at the end.
write_post_lua() {
  {
    echo 'wrk.method = "POST"'
    echo 'wrk.headers["Content-Type"] = "application/json"'
    if [ -n "${2:-}" ]; then echo "wrk.headers[\"Authorization\"] = \"Bearer $2\""; fi
    cat <<'LUA'
wrk.body = os.getenv("WRK_BODY")
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.1f p50=%.1f p99=%.1f errors=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    errors, summary.requests))
end
LUA
  } >"$1"
}

# medians: lines of numbers in, one line out: each column's median (the lower middle value
# for an even count, as written), the last column's sum (errors).
medians() {
  python3 -c '
import sys
cols = list(zip(*[line.split() for line in sys.stdin if line.strip()]))
mid = [sorted(c, key=float)[(len(c) - 1) // 2] for c in cols[:-1]]
print(" ".join(mid + [str(sum(int(float(x)) for x in cols[-1]))]))'
}
