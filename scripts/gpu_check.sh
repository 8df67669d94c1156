#!/usr/bin/env bash
# The GPU check: one run on a fresh machine with a CUDA GPU and no network (e.g. an
# H100/H200 with 16 cores, torch + CUDA, Python 3.12) that
#   1. installs missing test tools from wheels in .whl/ (made here by --fetch-wheels),
#   2. builds genfast for this GPU's architecture only, with every core,
#   3. runs the CUDA tests (those marked `cuda`),
#   4. runs the quick GPU benchmark (benchmarks/run.py --device cuda --quick),
#   5. runs a short subset of the tests under compute-sanitizer memcheck and racecheck,
#   6. writes benchmarks/results/gpu-check-<commit>.md (commit, device, versions,
#      each step's pass/fail and time, test summary, sanitizer summaries, benchmark
#      table) and copies it and every log to $OUT (what the device tool brings back).
# Every step has a time limit, and all of them together stay within the budget
# (GENFAST_GPU_CHECK_BUDGET, 450 s): the whole run fits in 8 minutes. See
# docs/gpu-check.md.
#
# Usage: bash scripts/gpu_check.sh [--dry-run] [--fetch-wheels] [--help]
#   --dry-run       (or GENFAST_GPU_CHECK_DRY_RUN=1) the parts a CPU can run: argument
#                   handling, a small CPU benchmark, the summary and the results file
#                   (gpu-check-<commit>-dry-run.md); prints the GPU commands instead
#                   of running them
#   --fetch-wheels  (needs the network; run before going to the GPU) downloads the
#                   test tools' wheels for Python 3.12 on x86-64 Linux into .whl/;
#                   with GENFAST_GPU_CHECK_CUPY=1 cupy-cuda13x too (large: see the doc)
# Environment: PYTHON (python3), OUT (where logs go), GENFAST_COMMIT (the commit where
# .git is absent), GENFAST_GPU_CHECK_RESULTS (benchmarks/results), TORCH_CUDA_ARCH_LIST
# (default: the GPU's own, else 9.0), MAX_JOBS (default: all cores).
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

dry_run=${GENFAST_GPU_CHECK_DRY_RUN:-0}
fetch_wheels=0
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=1 ;;
    --fetch-wheels) fetch_wheels=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --dry-run, --fetch-wheels or --help)" >&2
       exit 2 ;;
  esac
done
[ "$dry_run" = 1 ] || [ "$dry_run" = 0 ] || {
  echo "gpu_check.sh: GENFAST_GPU_CHECK_DRY_RUN must be 0 or 1, got '$dry_run'" >&2; exit 2; }
PY=${PYTHON:-python3}
# Test tools a bare torch image may lack; the build's ninja (parallel compiles) and
# numpy (a genfast dependency).
WHEELS=(pytest pytest-benchmark expecttest ninja numpy)

if [ "$fetch_wheels" = 1 ]; then
  mkdir -p .whl
  "$PY" -m pip download -q -d .whl --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 "${WHEELS[@]}" || exit 1
  if [ "${GENFAST_GPU_CHECK_CUPY:-0}" = 1 ]; then
    "$PY" -m pip download -q -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 cupy-cuda13x fastrlock || exit 1
  fi
  du -sh .whl && ls .whl
  exit 0
fi

budget=${GENFAST_GPU_CHECK_BUDGET:-450}
reserve=25  # seconds kept for the report
commit=${GENFAST_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
results=${GENFAST_GPU_CHECK_RESULTS:-benchmarks/results}
if [ -n "${OUT:-}" ]; then logs=$OUT/gpu-check-logs; else logs=$(mktemp -d /tmp/gpu-check-logs.XXXXXX); fi
mkdir -p "$logs" "$results" || exit 1
suffix=$([ "$dry_run" = 1 ] && echo "-dry-run")
result=$results/gpu-check-$commit$suffix.md
declare -A status
order=()

# step NAME LIMIT COMMAND...: runs COMMAND with at most LIMIT seconds (less if the
# budget is nearly spent), logs it, and records pass/fail and its time. SIGINT
# first: pytest then still prints its summary and pytest-benchmark saves its JSON.
step() {
  local name=$1 limit=$2; shift 2
  order+=("$name")
  local left=$((budget - reserve - SECONDS))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 5 ]; then
    status[$name]="not run: the time budget ($budget s) is spent"
    echo "$name: ${status[$name]}"; return 1
  fi
  local t0=$SECONDS
  timeout -s INT -k 10 "$limit" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  local what="FAIL (exit $rc)"
  [ $rc -eq 0 ] && what=pass
  [ $rc -eq 124 ] && what="FAIL (time limit $limit s)"
  status[$name]="$what in $((SECONDS - t0)) s"
  echo "$name: ${status[$name]}"
  return $rc
}

# skip NAME REASON COMMAND...: records a step that a dry run does not run.
skip() {
  local name=$1 reason=$2; shift 2
  order+=("$name")
  status[$name]="not run ($reason): $*"
  echo "$name: ${status[$name]}"
}

# The sanitizer subsets: small cases that still launch every kernel of the ops in
# OP_TESTS. concat_elu and dmol have no such per-file case; the plain CUDA test step
# runs their kernels (and the op contract's poisoned-output case for every op).
MEMCHECK_K="cuda and (every_output_is_written or model_sized or duplicates or collapsed or no_live_taps)"
RACECHECK_K="cuda and (every_output_is_written or collapsed)"
OP_TESTS=(tests/test_masked_conv2d.py tests/test_masked_conv2d_channels_last.py
          tests/test_nearest_code.py tests/test_code_statistics.py
          tests/test_gradient_penalty.py tests/test_pixelcnn_row.py tests/test_gated_pixelcnn_row.py
          tests/test_pixelcnnpp_row.py
          tests/test_wavenet_step.py tests/test_transformer_decode_grid.py
          tests/test_gated_activation.py tests/test_softmax_cross_entropy.py)
PYTEST=("$PY" -m pytest -q -rs -p no:cacheprovider)

if [ "$dry_run" = 1 ]; then
  archs=${TORCH_CUDA_ARCH_LIST:-9.0}
  skip wheels "dry run" "$PY" -m pip install --no-index --find-links .whl "<missing of ${WHEELS[*]}>"
  skip build "dry run" "TORCH_CUDA_ARCH_LIST=$archs MAX_JOBS=$(nproc)" "$PY" setup.py build_ext --inplace
  skip tests "dry run" "${PYTEST[*]}" tests -m cuda
  # Checks that the subsets select tests (collection only: cheap, no GPU).
  step collect 60 "${PYTEST[@]}" --collect-only "${OP_TESTS[@]}" -k "$MEMCHECK_K"
  skip memcheck "dry run" compute-sanitizer --tool memcheck "${PYTEST[*]}" "${OP_TESTS[*]}" -k "'$MEMCHECK_K'"
  skip racecheck "dry run" compute-sanitizer --tool racecheck "${PYTEST[*]}" "${OP_TESTS[*]}" -k "'$RACECHECK_K'"
  # A small CPU benchmark stands in for the GPU one, to exercise the summary.
  step bench 90 "$PY" benchmarks/run.py --device cpu --quick \
    -k "${GENFAST_GPU_CHECK_DRY_RUN_BENCH:-test_penalty_math and genfast and 1M}" --json "$logs/bench.json"
else
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} GENFAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  export PATH=$CUDA_HOME/bin:$PATH
  archs=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)}
  export TORCH_CUDA_ARCH_LIST=$archs
  missing=()
  for w in "${WHEELS[@]}"; do
    "$PY" -c "import ${w//-/_}" 2>/dev/null || missing+=("$w")
  done
  if [ ${#missing[@]} -gt 0 ]; then  # one at a time: a wheel missing from .whl/ blocks no other
    step wheels 30 bash -c 'rc=0; for w; do "$0" -m pip install --no-index --find-links .whl "$w" || rc=1; done; exit $rc' \
      "$PY" "${missing[@]}"
  fi
  # torch compiles in parallel only with a ninja on PATH (the wheel's lies in its package).
  ninja_bin=$("$PY" -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null) && export PATH=$ninja_bin:$PATH
  if ls .whl/cupy_cuda13x-*.whl > /dev/null 2>&1 && ! "$PY" -c "import cupy" 2>/dev/null; then
    step cupy 30 "$PY" -m pip install --no-index --find-links .whl .whl/cupy_cuda13x-*.whl
  fi
  # Limits: 170 + 70 + 70 + 50 + 40 = 400 s (+ 30 s for wheels where needed).
  if step build 170 "$PY" setup.py build_ext --inplace; then
    step tests 70 "${PYTEST[@]}" tests -m cuda
    step bench 70 "$PY" benchmarks/run.py --device cuda --quick --json "$logs/bench.json"
    if command -v compute-sanitizer > /dev/null; then
      # gradcheck and torch.compile are slow under the sanitizer and add no kernels.
      step memcheck 50 compute-sanitizer --tool memcheck --error-exitcode 1 \
        "${PYTEST[@]}" "${OP_TESTS[@]}" -k "$MEMCHECK_K"
      step racecheck 40 compute-sanitizer --tool racecheck --error-exitcode 1 \
        "${PYTEST[@]}" "${OP_TESTS[@]}" -k "$RACECHECK_K"
    else
      skip memcheck "compute-sanitizer not found" compute-sanitizer --tool memcheck
      skip racecheck "compute-sanitizer not found" compute-sanitizer --tool racecheck
    fi
  else
    for name in tests bench memcheck racecheck; do skip $name "the build failed"; done
  fi
fi

{
  echo "# GPU check of genfast $commit$([ "$dry_run" = 1 ] && echo " (DRY RUN on a CPU: no GPU step ran)")"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); total $SECONDS s of a $budget s budget"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)"
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
  echo "- $("$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")' 2>&1 | tail -1)"
  echo "- archs built: $archs; $(nvcc --version 2>/dev/null | tail -1)"
  echo
  for name in "${order[@]}"; do echo "- $name: ${status[$name]}"; done
  for name in tests memcheck racecheck; do
    [ -f "$logs/$name.log" ] || continue
    echo
    echo "## $name"
    echo '```'
    if [ "$name" = tests ]; then
      grep -E "^(FAILED|ERROR|SKIPPED)" "$logs/$name.log" | head -n 40
      tail -n 3 "$logs/$name.log"
    else
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race|FAILED|passed|failed" "$logs/$name.log" | head -n 20
    fi
    echo '```'
  done
  echo
  echo "## Benchmarks (--quick)"
  echo
  "$PY" benchmarks/run.py --summarize "$logs/bench.json" 2>&1 || echo "no benchmark results (see bench.log)"
} > "$result"
cp "$result" "$logs/"
cat "$result"
echo "results: $result; logs: $logs"
# Exit status: 0 when every step that ran passed.
for name in "${order[@]}"; do
  case ${status[$name]} in FAIL*) exit 1 ;; esac
done
exit 0
