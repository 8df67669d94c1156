// CPU building blocks of genfast's cached samplers (wavenet_step, gated_pixelcnn_row,
// pixelcnn_row, transformer_decode_step):
// small register-blocked GEMMs whose rows are a few sequences and whose inputs are
// gathered through per-row pointers (ring-buffer slots, taps of a row buffer), the
// vectorised gate and the inverse-CDF draw. Float32 on AVX-512 CPUs runs AVX-512
// micro-kernels (runtime dispatch); other cases run plain loops that the compiler
// vectorises.
#pragma once

#include <algorithm>
#include <cstdint>

#include <ATen/Parallel.h>

namespace genfast {

constexpr int kRows = 4;  // sequences per register block

// The two products of a step: y (rows, cols) = bias + sum over taps of x_tap @ w_tap,
// where x[tap * kRows + r] points at row r's kdim inputs of tap `tap` and tap `tap`'s
// weight is rows [tap * kdim, (tap + 1) * kdim) of w (leading dimension ldw).
// gate: a[i] = gated_unit(z[i] + b[i], z[half + i] + b[half + i]), i < half.
// attend: out (hd) = softmax(scale * keys q) values for one query q (hd) over t_len
//   cached positions (keys, values: t_len rows of hd); scores: scratch for t_len values.
// gelu: x[i] = GELU(x[i]) in place, i < n (float32 on AVX-512: a polynomial erf with
//   absolute error below 2e-7 |x|; otherwise the exact gelu_value).
template <typename T>
struct MathKernels {
  void (*gemm)(int rows, int taps, const T* const* x, int64_t kdim, const T* w, int64_t ldw,
               int64_t cols, const T* bias, T* y, int64_t ldy);
  void (*gate)(const T* z, const T* bias, int64_t half, T* a);
  void (*attend)(const T* q, const T* keys, const T* values, int64_t t_len, int64_t hd, T scale,
                 T* scores, T* out);
  void (*gelu)(T* x, int64_t n);
};

template <typename T>
MathKernels<T> math_kernels();

// Calls run(begin, end) on threads for ranges of the `batch` sequences or images that
// start at multiples of kRows, at least 8 per thread: below that a thread's share of
// a step is a fraction of a millisecond and waking it costs more than it saves.
template <typename Run>
void parallel_over_batch(int64_t batch, const Run& run) {
  const int64_t blocks = (batch + kRows - 1) / kRows;
  at::parallel_for(0, blocks, 8 / kRows, [&](int64_t begin, int64_t end) {
    run(begin * kRows, std::min(end * kRows, batch));
  });
}

// The drawn level of one sequence (-1 when a logit is not finite): inverse_cdf_draw of
// sampling_math.h; cdf: scratch for `levels` doubles.
template <typename T>
int64_t draw(const T* logits, int64_t levels, double u, double temperature, double* cdf);

}  // namespace genfast
