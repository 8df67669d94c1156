// What the CUDA kernels of the elementwise ops (gated_activation, concat_elu) share:
// their block size, grid size and grid-stride loop.
#pragma once

#include <algorithm>
#include <cstdint>

namespace genfast {

constexpr int kElementwiseThreads = 256;

// Blocks for n elements, capped: the kernels stride over the rest.
inline unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((n + kElementwiseThreads - 1) / kElementwiseThreads, 65535 * 8)));
}

// for (i : this thread's share of [0, n)), grid-stride.
#define GENFAST_GRID_STRIDE(i, n)                                                    \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n);        \
       i += int64_t(gridDim.x) * blockDim.x)

}  // namespace genfast
