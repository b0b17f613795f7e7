#!/usr/bin/env bash
# Classifier evaluation: the labelled prompts of benches/route_eval/prompts.tsv (420, six task
# labels, several languages, near-misses) classified by each method of the task classifier in
# benches/route_eval/ against simulators: accuracy, macro-F1, confusion, added latency p50/p99,
# and the routed traffic's cost against sending it all to the biggest model.
#
# The embedding method uses the simulator's hashed bag-of-words vectors and the llm method the
# simulator's keyword "model" (JUDGE_WORDS below): stand-ins that need no GPU; with a real
# embedding model and a small chat model the same script measures them.
#
# Usage: benches/route_eval.sh            (results in benches/results/route-eval-*.md)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
cargo build --release --quiet
BIN=target/release/switchyard
bench_setup route-eval

JUDGE_WORDS="code:code|function|bug|error|compile|compiler|python|javascript|rust|java|sql|git|docker|api|script|debug|exception|regex|css|kubernetes|pandas|unit|crash,\
math:integral|derivative|prove|proof|solve|equation|probability|matrix|calculate|compute|factorial|fraction|limit|theorem|percent|sum|radius|triangle|prime,\
summarize:summarize|summarise|summary|recap|condense|takeaways|gist|overview|shorten|distill|tl|bullet|brief,\
translate:translate|translation|traduce|traduis|übersetze|say|meaning,\
creative:poem|story|haiku|lyrics|song|limerick|sonnet|fairy|slogan|names|tale|scene|fable|rhyme|riddle|invent|imagine,\
chat:hello|hi|thanks|weekend|feel|feeling|favorite|favourite|recommend|advice|tips|fun|joke|hey"

declare -A ADDR
for name in big coder maths small embed; do
  model=$(grep -o "^  $name: {model: [^,]*" benches/route_eval/config.yaml | awk '{print $3}')
  start_sims 1 "$model" --zero-delay
  ADDR[$name]=${SIMS[0]}
done
start_sims 1 judge-1b --zero-delay --classifier-labels "$JUDGE_WORDS"
ADDR[judge]=${SIMS[0]}

args=()
for k in "${!ADDR[@]}"; do args+=("$k=${ADDR[$k]}"); done
OUT="benches/results/route-eval-$(date -u +%Y%m%dT%H%M%SZ).md"
python3 benches/route_eval/eval.py "$BIN" "$WORK" "$OUT" "${args[@]}"
echo "results: $OUT"
