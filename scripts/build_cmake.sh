#!/usr/bin/env bash
# Builds libgenfast_ops and the C++ example with CMake, runs the example, and loads
# the library into Python with torch.ops.load_library. Extra arguments go to cmake
# (e.g. -DGENFAST_WITH_CUDA=ON).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=${BUILD_DIR:-build-cmake}

args=(-G Ninja -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')")
if "$PY" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
  # torch's CMake config of a CUDA build wants the toolkit and nvrtc; nvrtc comes
  # with torch's pip CUDA packages.
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="${CUDA_HOME:-/usr/local/cuda}")
  nvrtc=$("$PY" - <<'PYEOF'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
found = sorted(glob.glob(os.path.join(site, "nvidia", "**", "libnvrtc.so*"), recursive=True))
print(next((f for f in found if "builtins" not in f), ""))
PYEOF
)
  [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
cmake -S . -B "$BUILD" "${args[@]}" "$@"
cmake --build "$BUILD" -j"${MAX_JOBS:-2}"

"$BUILD"/masked_conv2d_example
"$PY" - "$BUILD/libgenfast_ops.so" <<'PYEOF'
import sys
import torch
import torch.nn.functional as F

torch.ops.load_library(sys.argv[1])
x, w = torch.randn(2, 3, 8, 8), torch.randn(6, 3, 3, 3)
mask = torch.zeros(3, 3)
mask[0] = 1
mask[1, :2] = 1  # mask 'B': the row above, the tap left of the centre and the centre
y = torch.ops.genfast.masked_conv2d(x, w, None, [1, 1], "B", 1)
torch.testing.assert_close(y, F.conv2d(x, w * mask, padding=1), rtol=1e-4, atol=1e-4)
print(f"torch.ops.load_library({sys.argv[1]}): genfast::masked_conv2d matches F.conv2d")
PYEOF
