// code_statistics: what the CPU and CUDA kernels share. For x (N, D) and indices
// (N,) in [0, K): counts[k] = #{n : indices[n] = k} (int64) and sums[k] = the sum of
// the rows assigned to code k, accumulated in float64 in row order and rounded to
// float32 (float64 for float64 x). Both backends are deterministic and sum in the
// same order, whatever the thread count (see kSumPieceRows).
#pragma once

#include <ATen/core/Tensor.h>

#include "common.h"

namespace genfast {

// The summation order. The rows, sorted stably by code, are cut into pieces of
// kSumPieceRows consecutive positions; within a piece each code's rows are summed in
// row order in float64 from zero, and each code's piece sums are then added in
// order (the first one to zero, exactly). A code whose rows lie in one piece is thus
// one sequential sum. The pieces let the GPU spread the rows of a collapsed codebook
// (most rows on one code) over many blocks instead of one.
constexpr int64_t kSumPieceRows = 256;

// Argument checks, the same on every backend (the range of the indices is checked
// by the kernels, which read them anyway).
void check_code_statistics(const at::Tensor& x, const at::Tensor& indices, int64_t num_codes);

// dtype of the sums: float64 for float64 x, otherwise float32.
at::ScalarType code_statistics_sum_dtype(const at::Tensor& x);

}  // namespace genfast
