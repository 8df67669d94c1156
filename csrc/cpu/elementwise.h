// What the CPU kernels of the elementwise ops (gated_activation, concat_elu) share:
// the task size, the SIMD clones of their float loops, and the walk of a flat element
// range as runs within rows (the ops' layouts are (rows, row length) blocks).
#pragma once

#include <algorithm>
#include <cstdint>

namespace genfast {

constexpr int64_t kElementwiseGrain = 1 << 14;  // elements per task: enough to pay for a thread

// A float loop compiled for AVX-512, AVX2 and the baseline; the loader picks one.
#define GENFAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// Calls fn(o, j0, j1) for the runs [j0, j1) of row o (rows of row_length elements)
// covering the flat elements [begin, end).
template <typename Fn>
void for_runs(int64_t begin, int64_t end, int64_t row_length, const Fn& fn) {
  while (begin < end) {
    const int64_t o = begin / row_length, j0 = begin - o * row_length;
    const int64_t j1 = std::min(row_length, j0 + (end - begin));
    fn(o, j0, j1);
    begin += j1 - j0;
  }
}

// pos = elu(x), neg = elu(-x) for n elements (concat_elu's CPU loop, vectorised for
// float32), for kernels that apply concat_elu to short rows of their own buffers.
void concat_elu_run(const float* x, float* pos, float* neg, int64_t n);
void concat_elu_run(const double* x, double* pos, double* neg, int64_t n);

}  // namespace genfast
