// code_statistics: what the CPU and CUDA kernels share. For x (N, D) and indices
// (N,) in [0, K): counts[k] = #{n : indices[n] = k} (int64) and sums[k] = the sum of
// the rows assigned to code k, accumulated in float64 in row order and rounded to
// float32 (float64 for float64 x). Both backends are deterministic: each code's rows
// are summed in their original order, whatever the thread count.
#pragma once

#include <ATen/core/Tensor.h>

#include "common.h"

namespace genfast {

// Argument checks, the same on every backend (the range of the indices is checked
// by the kernels, which read them anyway).
void check_code_statistics(const at::Tensor& x, const at::Tensor& indices, int64_t num_codes);

// dtype of the sums: float64 for float64 x, otherwise float32.
at::ScalarType code_statistics_sum_dtype(const at::Tensor& x);

}  // namespace genfast
