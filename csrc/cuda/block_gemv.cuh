// The block-wide matrix-vector product of genfast's CUDA row samplers
// (gated_pixelcnn_row, pixelcnn_row), where one thread block walks one image.
#pragma once

#include "../sampling_math.h"

namespace genfast {

// For col < cols: epilogue(col, sum over k < kdim of x[k] * w[k * ldw + col]), by the
// whole block; x may be in shared or global memory. Lanes own consecutive columns
// (coalesced weight reads). With at least 32 * kGemvWarps columns each warp owns
// whole groups of 32 columns; with fewer, warp v sums the v-th contiguous chunk of k
// for each group and warp 0 adds the partial sums in warp order (deterministic).
// Ends with a barrier, so the epilogue's writes are visible to the block.
template <typename T, typename Epilogue>
__device__ void block_gemv(const T* x, int kdim, const T* __restrict__ w, int ldw, int cols,
                           T (*partial)[32], Epilogue epilogue) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (cols >= 32 * kGemvWarps) {
    for (int col0 = warp * 32; col0 < cols; col0 += 32 * kGemvWarps) {
      const int col = col0 + lane;
      if (col < cols) {
        T acc = T(0);
        for (int k = 0; k < kdim; ++k) acc += x[k] * w[int64_t(k) * ldw + col];
        epilogue(col, acc);
      }
    }
    __syncthreads();
    return;
  }
  const int chunk = (kdim + kGemvWarps - 1) / kGemvWarps;
  const int k_begin = min(kdim, warp * chunk), k_end = min(kdim, k_begin + chunk);
  for (int col0 = 0; col0 < cols; col0 += 32) {
    const int col = col0 + lane;
    T acc = T(0);
    if (col < cols) {
      for (int k = k_begin; k < k_end; ++k) acc += x[k] * w[int64_t(k) * ldw + col];
    }
    partial[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && col < cols) {
      T sum = T(0);
#pragma unroll
      for (int v = 0; v < kGemvWarps; ++v) sum += partial[v][lane];
      epilogue(col, sum);
    }
    __syncthreads();
  }
}

}  // namespace genfast
