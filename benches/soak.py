"""The soak's load, faults and measurements (benches/soak.sh). Standard library only."""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--api"); p.add_argument("--admin"); p.add_argument("--pid", type=int)
p.add_argument("--duration", type=int); p.add_argument("--concurrency", type=int)
p.add_argument("--config"); p.add_argument("--sims", nargs="+"); p.add_argument("--out")
a = p.parse_args()
host, port = a.api.rsplit(":", 1)

# What each request may get, with its weight.
FAULTS = [(None, 70), ("die_after=3", 6), ("status=503", 6), ("hang", 2), ("garbage", 4), ("abort", 12)]
stats = {k or "none": {"sent": 0, "ok": 0, "error_event": 0, "status": {}} for k, _ in FAULTS}
lock = threading.Lock()
stop = time.monotonic() + a.duration


def metrics(addr):
    conn = http.client.HTTPConnection(*addr.rsplit(":", 1), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def total(text, name, **labels):
    s = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                s += float(line.rsplit(" ", 1)[1])
    return s


def one(rng):
    fault = rng.choices([f for f, _ in FAULTS], [w for _, w in FAULTS])[0]
    stream = fault in ("die_after=3", "garbage", "abort") or rng.random() < 0.5
    body = {"model": "m", "stream": stream, "max_tokens": rng.randint(8, 64),
            "messages": [{"role": "user", "content": "soak %d" % rng.randint(0, 1 << 30)}]}
    headers = {"content-type": "application/json"}
    if fault and fault != "abort":
        headers["x-sim-fault"] = fault
    key = fault or "none"
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        if fault == "abort" and resp.status == 200:
            resp.read(200)  # a few events, then the client goes away
            conn.sock.shutdown(socket.SHUT_RDWR)
            status = "aborted"
            text = ""
        else:
            text = resp.read().decode(errors="replace")
            status = resp.status
        with lock:
            s = stats[key]
            s["sent"] += 1
            s["status"][str(status)] = s["status"].get(str(status), 0) + 1
            if status == 200 and text:
                if '"error"' in text:
                    s["error_event"] += 1
                elif not stream or text.endswith("data: [DONE]\n\n"):
                    s["ok"] += 1
    except Exception as e:  # a lost connection is counted, not fatal
        with lock:
            stats[key]["sent"] += 1
            stats[key]["status"][type(e).__name__] = stats[key]["status"].get(type(e).__name__, 0) + 1
    finally:
        conn.close()


def worker(seed):
    rng = random.Random(seed)
    while time.monotonic() < stop:
        one(rng)


def sample():
    rss = int(next(l for l in open(f"/proc/{a.pid}/status") if l.startswith("VmRSS")).split()[1])
    fds = len(os.listdir(f"/proc/{a.pid}/fd"))
    text = metrics(a.admin)
    return rss, fds, total(text, "switchyard_upstream_inflight")


start_rss, start_fds, _ = sample()
threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.concurrency)]
for t in threads:
    t.start()
began = time.monotonic()
samples, reloads, next_reload = [], 0, began + 60
while time.monotonic() < stop:
    time.sleep(min(30, max(0.1, stop - time.monotonic())))
    if time.monotonic() >= next_reload:
        os.kill(a.pid, signal.SIGHUP)
        reloads += 1
        next_reload += 60
    samples.append((round(time.monotonic() - began), *sample()))
for t in threads:
    t.join()
time.sleep(5)  # streams the gateway cut end, health probes settle
end_rss, end_fds, end_inflight = sample()
gw = metrics(a.admin)
sims = [metrics(s) for s in a.sims]
sim_prompt = sum(total(t, "vllm:prompt_tokens_total") for t in sims)
sim_gen = sum(total(t, "vllm:generation_tokens_total") for t in sims)
sim_aborted = sum(total(t, "switchyard_sim_requests_aborted_total") for t in sims)
gw_usage = {k: total(gw, "switchyard_tenant_tokens_total", kind=k, source="usage") for k in ("prompt", "completion")}
gw_est = {k: total(gw, "switchyard_tenant_tokens_total", kind=k, source="estimated") for k in ("prompt", "completion")}
sent = sum(s["sent"] for s in stats.values())

with open(a.out, "w") as f:
    f.write(f"# Soak, {a.duration} s, {a.concurrency} clients, {sent} requests, {reloads} reloads\n\n")
    f.write("| fault | sent | whole answers | ended with an error event | statuses |\n|---|---:|---:|---:|---|\n")
    for k, s in stats.items():
        f.write(f"| {k} | {s['sent']} | {s['ok']} | {s['error_event']} | {json.dumps(s['status'], sort_keys=True)} |\n")
    f.write("\n| t (s) | RSS (KiB) | open fds | in flight |\n|---:|---:|---:|---:|\n")
    f.write(f"| start | {start_rss} | {start_fds} | 0 |\n")
    for t, rss, fds, inflight in samples:
        f.write(f"| {t} | {rss} | {fds} | {inflight:.0f} |\n")
    f.write(f"| end (+5 s) | {end_rss} | {end_fds} | {end_inflight:.0f} |\n\n")
    f.write("| tokens | simulators | gateway (usage) | gateway (estimated) |\n|---|---:|---:|---:|\n")
    f.write(f"| prompt | {sim_prompt:.0f} | {gw_usage['prompt']:.0f} | {gw_est['prompt']:.0f} |\n")
    f.write(f"| completion | {sim_gen:.0f} | {gw_usage['completion']:.0f} | {gw_est['completion']:.0f} |\n\n")
    f.write(f"Generations the simulators saw aborted: {sim_aborted:.0f}.\n")
    ok = end_inflight == 0 and end_fds <= start_fds + 8
    f.write(f"\nIn flight back to 0 and descriptors back to the start: {'yes' if ok else 'NO'}.\n")
