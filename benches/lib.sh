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
