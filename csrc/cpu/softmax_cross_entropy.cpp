// softmax_cross_entropy on the CPU. The logits are (outer, L, inner) memory: for each
// outer index, blocks of up to kBlock inner positions are reduced over the L classes
// (max, then the sum of exp) with the loops running across positions, so each class
// row is read as contiguous vectors; with inner = 1 (plain (N, L) logits, channels-last
// image logits) each position's classes are contiguous and are reduced as vectors.
// Float blocks use fast_math.h's exp and are compiled for AVX-512, AVX2 and the
// baseline (target_clones), so they vectorise.
// The backward writes g * exp((x - max) - log_sum) over the same blocks, then subtracts g at
// each position's target: grad_logits is written once, no copy of the logits is made.
#include <algorithm>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../softmax_cross_entropy.h"
#include "fast_math.h"

namespace genfast {
namespace {

constexpr int64_t kBlock = 64;  // inner positions per block: a few vectors, kept in cache

void check_targets(const at::Tensor& target, int64_t classes, const char* op) {
  const int64_t* t = target.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < target.numel(); ++i) {
    TORCH_CHECK_VALUE(t[i] >= 0 && t[i] < classes, op, ": target must be in [0, ", classes, "), got ",
                t[i], " at flat position ", i);
  }
}

// Always inlined, so that each target_clones copy below compiles it for its ISA.
// One position whose classes are contiguous (inner = 1).
template <typename T>
__attribute__((always_inline)) inline void forward_row(const T* x, int64_t t, int64_t classes, T* max_out,
                                                       T* log_sum, T* loss) {
  T max = -std::numeric_limits<T>::infinity(), sum = T(0);
#pragma omp simd reduction(max : max)
  for (int64_t c = 0; c < classes; ++c) max = x[c] > max ? x[c] : max;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < classes; ++c) sum += fast_exp(x[c] - max);
  *max_out = max;
  *log_sum = std::log(sum);
  *loss = *log_sum + (max - x[t]);
}

template <typename T>
__attribute__((always_inline)) inline void backward_row(const T* x, int64_t t, T g, T max, T log_sum,
                                                        int64_t classes, T* __restrict__ grad) {
#pragma omp simd
  for (int64_t c = 0; c < classes; ++c) grad[c] = xent_grad(g, fast_exp((x[c] - max) - log_sum), false);
  grad[t] -= g;
}

// One block of n <= kBlock positions: x points at its first logit of class 0, rows
// `inner` apart. Writes max, log_sum and loss of the n positions (t: their targets).
template <typename T>
__attribute__((always_inline)) inline void forward_block(const T* x, const int64_t* t, int64_t classes, int64_t inner, int64_t n,
                          T* max_out, T* log_sum, T* loss) {
  if (inner == 1) {
    for (int64_t j = 0; j < n; ++j) forward_row(x + j * classes, t[j], classes, max_out + j, log_sum + j, loss + j);
    return;
  }
  T max[kBlock], sum[kBlock];  // local, so the compiler sees no aliasing with x
  for (int64_t j = 0; j < n; ++j) max[j] = -std::numeric_limits<T>::infinity(), sum[j] = T(0);
  for (int64_t c = 0; c < classes; ++c) {
    const T* row = x + c * inner;
    // A NaN logit is not kept as the max, but makes its exp, so the sum and the loss, NaN.
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) max[j] = row[j] > max[j] ? row[j] : max[j];
  }
  for (int64_t c = 0; c < classes; ++c) {
    const T* row = x + c * inner;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) sum[j] += fast_exp(row[j] - max[j]);
  }
  for (int64_t j = 0; j < n; ++j) {
    max_out[j] = max[j];
    log_sum[j] = std::log(sum[j]);
    loss[j] = log_sum[j] + (max[j] - x[t[j] * inner + j]);
  }
}

// grad = g * (softmax - onehot(t)) for one block laid out as in forward_block.
template <typename T>
__attribute__((always_inline)) inline void backward_block(const T* x, const int64_t* t, const T* g, const T* max, const T* log_sum,
                           int64_t classes, int64_t inner, int64_t n, T* grad) {
  if (inner == 1) {
    for (int64_t j = 0; j < n; ++j) backward_row(x + j * classes, t[j], g[j], max[j], log_sum[j], classes, grad + j * classes);
    return;
  }
  for (int64_t c = 0; c < classes; ++c) {
    const T* row = x + c * inner;
    T* __restrict__ out = grad + c * inner;
    for (int64_t j = 0; j < n; ++j) out[j] = xent_grad(g[j], fast_exp((row[j] - max[j]) - log_sum[j]), false);
  }
  for (int64_t j = 0; j < n; ++j) grad[t[j] * inner + j] -= g[j];
}

#define GENFAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
GENFAST_CLONES void forward_f32(const float* x, const int64_t* t, int64_t classes, int64_t inner,
                                int64_t n, float* max, float* log_sum, float* loss) {
  forward_block(x, t, classes, inner, n, max, log_sum, loss);
}
GENFAST_CLONES void backward_f32(const float* x, const int64_t* t, const float* g, const float* max,
                                 const float* log_sum, int64_t classes, int64_t inner, int64_t n,
                                 float* grad) {
  backward_block(x, t, g, max, log_sum, classes, inner, n, grad);
}
void forward_f64(const double* x, const int64_t* t, int64_t classes, int64_t inner, int64_t n,
                 double* max, double* log_sum, double* loss) {
  forward_block(x, t, classes, inner, n, max, log_sum, loss);
}
void backward_f64(const double* x, const int64_t* t, const double* g, const double* max,
                  const double* log_sum, int64_t classes, int64_t inner, int64_t n, double* grad) {
  backward_block(x, t, g, max, log_sum, classes, inner, n, grad);
}
inline auto forward_fn(float) { return &forward_f32; }
inline auto forward_fn(double) { return &forward_f64; }
inline auto backward_fn(float) { return &backward_f32; }
inline auto backward_fn(double) { return &backward_f64; }

// Calls fn(o, j0, n) for every block (outer index o, positions j0..j0+n-1); threads
// split the blocks, each about classes * kBlock values of work.
template <typename Fn>
void for_blocks(const XentLayout& l, const Fn& fn) {
  const int64_t per_outer = (l.inner + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / (l.classes * kBlock));
  at::parallel_for(0, l.outer * per_outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = b / per_outer, j0 = (b - o * per_outer) * kBlock;
      fn(o, j0, std::min(kBlock, l.inner - j0));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_cpu(const at::Tensor& logits,
                                                             const at::Tensor& target_in) {
  const char* op = "softmax_cross_entropy";
  const auto l = check_softmax_cross_entropy(logits, target_in, op);
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "softmax_cross_entropy: the CPU kernel supports float32 and float64 logits, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.device().is_cpu(), op, ": logits must be a CPU tensor, got ", logits.device());
  const auto target = xent_positions(target_in, l);
  check_targets(target, l.classes, op);
  const auto acc = xent_acc_dtype(logits);
  auto loss = at::empty(target.sizes(), logits.options().dtype(acc));
  auto max = at::empty(target.sizes(), logits.options().dtype(acc));
  auto log_sum = at::empty(target.sizes(), logits.options().dtype(acc));
  if (target.numel() == 0) return {loss, max, log_sum};  // empty: never permuted
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "softmax_cross_entropy_cpu", [&] {
    const scalar_t* x = l.logits.const_data_ptr<scalar_t>();
    const int64_t* t = target.const_data_ptr<int64_t>();
    scalar_t* out_loss = loss.mutable_data_ptr<scalar_t>();
    scalar_t* out_max = max.mutable_data_ptr<scalar_t>();
    scalar_t* out_log_sum = log_sum.mutable_data_ptr<scalar_t>();
    const auto fn = forward_fn(scalar_t());
    for_blocks(l, [&](int64_t o, int64_t j0, int64_t n) {
      const int64_t p = o * l.inner + j0;
      fn(x + o * l.classes * l.inner + j0, t + p, l.classes, l.inner, n, out_max + p, out_log_sum + p,
         out_loss + p);
    });
  });
  return {xent_unpermute_positions(loss, l), xent_unpermute_positions(max, l),
          xent_unpermute_positions(log_sum, l)};
}

at::Tensor softmax_cross_entropy_backward_cpu(const at::Tensor& grad_loss_in, const at::Tensor& logits,
                                              const at::Tensor& target_in, const at::Tensor& max_in,
                                              const at::Tensor& log_sum_in) {
  const char* op = "softmax_cross_entropy_backward";
  check_softmax_cross_entropy_backward(grad_loss_in, logits, target_in, max_in, log_sum_in);
  const auto l = check_softmax_cross_entropy(logits, target_in, op);
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "softmax_cross_entropy_backward: the CPU kernel supports float32 and float64 logits, got ", logits.scalar_type());
  TORCH_CHECK_VALUE(logits.device().is_cpu(), op, ": logits must be a CPU tensor, got ", logits.device());
  const auto target = xent_positions(target_in, l);
  check_targets(target, l.classes, op);
  const auto grad_loss = xent_positions(grad_loss_in, l);  // small: one value per position
  const auto max = xent_positions(max_in, l);
  const auto log_sum = xent_positions(log_sum_in, l);
  auto grad = xent_empty_grad(logits, l);
  if (target.numel() == 0) return grad;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "softmax_cross_entropy_backward_cpu", [&] {
    const scalar_t* x = l.logits.const_data_ptr<scalar_t>();
    const int64_t* t = target.const_data_ptr<int64_t>();
    const scalar_t* g = grad_loss.const_data_ptr<scalar_t>();
    const scalar_t* m = max.const_data_ptr<scalar_t>();
    const scalar_t* s = log_sum.const_data_ptr<scalar_t>();
    scalar_t* gx = grad.mutable_data_ptr<scalar_t>();
    const auto fn = backward_fn(scalar_t());
    for_blocks(l, [&](int64_t o, int64_t j0, int64_t n) {
      const int64_t p = o * l.inner + j0, off = o * l.classes * l.inner + j0;
      fn(x + off, t + p, g + p, m + p, s + p, l.classes, l.inner, n, gx + off);
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("softmax_cross_entropy", &softmax_cross_entropy_cpu);
  m.impl("softmax_cross_entropy_backward", &softmax_cross_entropy_backward_cpu);
}

}  // namespace genfast
