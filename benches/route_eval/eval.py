#!/usr/bin/env python3
"""Evaluates the task classifier of benches/route_eval/config.yaml by method.

Usage: eval.py BIN WORKDIR OUT big=ADDR coder=ADDR ... (simulator addresses)

Starts the gateway on the filled-in config, sends every prompt of prompts.tsv once as a real
request through a virtual model whose classifier votes with every method (the latency the
client waits: the classifier's `total` histogram, and the time to the first byte), then asks
/admin/route for the decision of each method's virtual model and compares the label with the
prompt's. Reports accuracy, macro-F1, the confusion matrix, per-method latency p50/p99, and
the cost of the routed traffic against sending everything to the biggest model.
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS = ["code", "math", "summarize", "translate", "creative", "chat"]
TARGET = {"code": "coder", "math": "mathm", "creative": "big",
          "summarize": "small", "translate": "small", "chat": "small"}
# The ensemble's weights (ENSEMBLE= overrides): chosen on the even half of prompts.tsv among
# 1:1:1 (0.824), 1:2:2 (0.776), 2:1:1 (0.867) and 1:1:0.5 (0.824), lexical:embedding:llm.
WEIGHTS = "lexical: 2.0, embedding: 1.0, llm: 1.0"
METHODS = {
    "lexical": "    method: lexical",
    "embedding": "    method: embedding\n    embedding: {model: embed-small, k: 5}",
    "llm": "    method: llm\n    llm: {model: judge, max_tokens: 8}",
    "ensemble": "    method: ensemble\n    embedding: {model: embed-small, k: 5}\n"
                "    llm: {model: judge, max_tokens: 8}\n"
                "    ensemble: {%s}" % os.environ.get("ENSEMBLE", WEIGHTS),
}
BUDGET_MS = 80
COMPLETION_TOKENS = 256  # assumed answer length for the cost comparison


def post(url, body, headers=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def config(addrs):
    labels = (HERE / "labels.yaml").read_text().rstrip()
    classifiers, models = [], []
    for name, method in list(METHODS.items()) + [("live", METHODS["ensemble"])]:
        classifiers.append(f"  {name}:\n{labels}\n{method}\n    fallback: chat\n"
                           f"    budget: {BUDGET_MS}ms\n")
        rules = "".join(f"      - when: {{class: {{{name}: {label}}}}}\n        to: {TARGET[label]}\n"
                        for label in LABELS if TARGET[label] != "small")
        models.append(f"  by-{name}:\n    route:\n{rules}      - to: small\n")
    text = (HERE / "config.yaml").read_text()
    for k, v in addrs.items():
        text = text.replace("{{%s}}" % k, f"http://{v}")
    text = text.replace("{{classifiers}}", "\n".join(classifiers))
    text = text.replace("{{auto_models}}", "".join(models))
    return "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n" + text


def start_gateway(binary, work, text):
    path = Path(work) / "eval.yaml"
    path.write_text(text)
    log = open(Path(work) / "gateway.log", "w+")
    proc = subprocess.Popen([binary, "run", "-c", str(path)], stderr=log, stdout=subprocess.DEVNULL)
    found = {}
    for _ in range(300):
        log.seek(0)
        for m in re.finditer(r"listening on (\S+) \((api|admin)\)", log.read()):
            found[m.group(2)] = m.group(1)
        if len(found) == 2:
            return proc, found["api"], found["admin"]
        time.sleep(0.1)
    sys.exit("the gateway did not start:\n" + open(Path(work) / "gateway.log").read())


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else 0


def f1_scores(pairs):
    out = {}
    for label in LABELS:
        tp = sum(1 for t, p in pairs if t == label and p == label)
        fp = sum(1 for t, p in pairs if t != label and p == label)
        fn = sum(1 for t, p in pairs if t == label and p != label)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        out[label] = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return out


def main():
    binary, work, out = sys.argv[1:4]
    addrs = dict(a.split("=", 1) for a in sys.argv[4:])
    prompts = [line.split("\t", 1) for line in (HERE / "prompts.tsv").read_text().splitlines() if line]
    proc, api, admin = start_gateway(binary, work, config(addrs))
    try:
        for _ in range(300):
            ready = json.loads(get(f"http://{admin}/readyz"))
            states = [c["embedding"]["state"] for c in ready.get("classifiers", {}).values()]
            if states and all(s == "ready" for s in states):
                break
            time.sleep(0.1)
        else:
            sys.exit(f"exemplar vectors never ready: {ready}")
        report = run(prompts, api, admin)
    finally:
        proc.terminate()
        proc.wait()
    Path(out).write_text(report)
    print(report)


def run(prompts, api, admin):
    prices = {p["name"]: p["cost"] for p in json.loads(get(f"http://{admin}/admin/config"))["pools"]}
    pool_of = {"big": "big", "coder": "coder", "mathm": "maths", "small": "small"}

    # 1. The request path: each prompt once through `by-live` (ensemble, cold cache).
    ttfb = []
    for _, text in prompts:
        body = {"model": "by-live", "max_tokens": 1, "messages": [{"role": "user", "content": text}]}
        t0 = time.perf_counter()
        status, _, _ = post(f"http://{api}/v1/chat/completions", body)
        ttfb.append((time.perf_counter() - t0) * 1000)
        assert status == 200
    metrics = get(f"http://{admin}/metrics")
    buckets = {}
    for m in re.finditer(r'switchyard_classifier_seconds_bucket\{classifier="live",method="total",le="([^"]+)"\} (\d+)', metrics):
        buckets[m.group(1)] = int(m.group(2))

    # 2. Each method's decision for each prompt, from /admin/route.
    results = defaultdict(list)   # method -> [(truth, predicted, total_us, method_us, model, tokens)]
    for truth, text in prompts:
        body = {"model": None, "messages": [{"role": "user", "content": text}]}
        for method in METHODS:
            body["model"] = f"by-{method}"
            _, _, raw = post(f"http://{admin}/admin/route", body)
            t = json.loads(raw)
            c = t["classes"][0]
            own = [m for m in c["methods"] if m["method"] == method]
            results[method].append((truth, c["label"] or "none", c["micros"],
                                    own[0]["micros"] if own else c["micros"],
                                    t["decision"]["model"], t["request"]["prompt_tokens_estimate"]))
            if os.environ.get("DUMP"):
                with open(os.environ["DUMP"], "a") as f:
                    f.write(json.dumps({"method": method, "truth": truth, "label": c["label"],
                                        "confidence": c["confidence"]}) + "\n")
            if method in os.environ.get("SHOW_MISTAKES", "").split(",") and c["label"] != truth:
                print(f"{method}: {truth} → {c['label']} ({c['confidence']:.2f}): {text}", file=sys.stderr)

    def cost(model, tokens):
        p = prices[pool_of[model]]
        return (tokens * p["input_per_mtok"] + COMPLETION_TOKENS * p["output_per_mtok"]) / 1e6

    lines = [f"prompts: {len(prompts)} over {len(LABELS)} labels; budget {BUDGET_MS} ms; "
             f"cost assumes {COMPLETION_TOKENS} completion tokens per request\n",
             f"ensemble weights: {{{os.environ.get('ENSEMBLE', WEIGHTS)}}}; "
             "accuracy also on the even and odd halves of prompts.tsv (choices were made on the even half)\n",
             "| method | accuracy | even / odd | macro-F1 | method p50 µs | method p99 µs | classification p99 µs | cost vs all-big |",
             "|---|---|---|---|---|---|---|---|"]
    for method, rows in results.items():
        pairs = [(t, p) for t, p, *_ in rows]
        acc = sum(t == p for t, p in pairs) / len(pairs)
        half = [sum(t == p for t, p in pairs[h::2]) / len(pairs[h::2]) for h in (0, 1)]
        f1 = f1_scores(pairs)
        routed = sum(cost(model, tok) for *_, model, tok in rows)
        biggest = sum(cost("big", tok) for *_, tok in rows)
        own = [r[3] for r in rows]
        total = [r[2] for r in rows]
        lines.append(f"| {method} | {acc:.3f} | {half[0]:.3f} / {half[1]:.3f} | {sum(f1.values()) / len(f1):.3f} | {pct(own, 50)} | "
                     f"{pct(own, 99)} | {pct(total, 99)} | {routed / biggest:.2f} ({routed:.4f} $ vs {biggest:.4f} $) |")
    for method, rows in results.items():
        lines.append(f"\nconfusion ({method}; rows: truth, columns: predicted)\n")
        lines.append("| | " + " | ".join(LABELS) + " |")
        lines.append("|---|" + "---|" * len(LABELS))
        counts = Counter((t, p) for t, p, *_ in rows)
        for t in LABELS:
            lines.append(f"| {t} | " + " | ".join(str(counts[(t, p)]) for p in LABELS) + " |")
    total = buckets.get("+Inf", 0)
    within = max((n for le, n in buckets.items() if le != "+Inf" and float(le) * 1000 <= BUDGET_MS * 1.25), default=0)
    lines.append(f"\nrequest path (ensemble, cold cache, {len(ttfb)} requests): classification histogram "
                 f"{within}/{total} within the {BUDGET_MS} ms budget's bucket (le≤{BUDGET_MS * 1.25:.0f} ms); "
                 f"buckets {json.dumps(buckets)}; whole request p50 {pct(ttfb, 50):.1f} ms, p99 {pct(ttfb, 99):.1f} ms")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
