#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU (nothing is downloaded): builds genfast
# from source for this GPU, runs the CUDA tests (the DEVICES-parametrised tests marked
# `cuda`), runs them again under compute-sanitizer memcheck, runs the benchmark suite
# briefly on the GPU, and writes benchmarks/results/gpu-check-<commit>.md (commit,
# device, versions, pass/fail, tables). Meant to finish in under 8 minutes on one
# H100 with 16 cores. GENFAST_COMMIT names the commit where .git is absent.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} GENFAST_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
commit=${GENFAST_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
logs=${OUT:-benchmarks/results/gpu-check-logs}
mkdir -p "$logs" benchmarks/results
result=benchmarks/results/gpu-check-$commit.md
declare -A status

step() {  # step NAME SECONDS COMMAND...: runs with a time limit, logs, records pass/fail
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  status[$name]="$([ $rc -eq 0 ] && echo pass || echo "FAIL (exit $rc)") in $((SECONDS - t0)) s"
  echo "$name: ${status[$name]}"
}

step build 300 "$PY" setup.py build_ext --inplace
step tests 240 "$PY" -m pytest tests -q -rs -m cuda -p no:cacheprovider
if command -v compute-sanitizer > /dev/null; then
  # gradcheck and torch.compile are slow under the sanitizer and add no new kernels.
  step memcheck 300 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$PY" -m pytest tests -q -x -m cuda -k "not gradcheck and not compile" -p no:cacheprovider
else
  status[memcheck]="not run: compute-sanitizer not found"
fi
step bench 300 "$PY" benchmarks/run.py --device cuda --quick --json "$logs/bench.json"

{
  echo "# GPU check of genfast $commit"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
  echo "- $("$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")')"
  echo "- archs built: $TORCH_CUDA_ARCH_LIST; $(nvcc --version 2>/dev/null | tail -1)"
  echo
  for name in build tests memcheck bench; do echo "- $name: ${status[$name]:-not run}"; done
  echo
  echo "## Tests"
  echo '```'
  tail -n 15 "$logs/tests.log" 2>/dev/null
  echo '```'
  if [ -f "$logs/memcheck.log" ]; then
    echo "## compute-sanitizer memcheck"
    echo '```'
    grep -E "ERROR SUMMARY|passed|failed" "$logs/memcheck.log" | tail -n 5
    echo '```'
  fi
  echo "## Benchmarks (--quick)"
  "$PY" benchmarks/run.py --summarize "$logs/bench.json" 2>/dev/null || echo "no benchmark results"
} > "$result"
cp "$result" "$logs/" 2>/dev/null || true
cat "$result"
