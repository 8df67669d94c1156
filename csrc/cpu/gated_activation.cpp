// gated_activation on the CPU: one pass over x, threads over the flat output. The
// float loops use fast_math.h's exp/tanh and are compiled for AVX-512, AVX2 and the
// baseline (target_clones picks one at load time), so they vectorise.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../gated_activation.h"
#include "elementwise.h"
#include "fast_math.h"

namespace genfast {
namespace {

template <typename T>
inline T sigmoid(T b) { return T(1) / (T(1) + fast_exp(-b)); }

template <typename T>
__attribute__((always_inline)) inline void forward_run(const T* a, const T* b, T* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = gate_value(fast_tanh(a[j]), sigmoid(b[j]));
}

template <typename T>
__attribute__((always_inline)) inline void backward_run(const T* g, const T* a, const T* b, T* ga, T* gb, int64_t n) {
  for (int64_t j = 0; j < n; ++j) gate_grads(g[j], fast_tanh(a[j]), sigmoid(b[j]), ga[j], gb[j]);
}

GENFAST_CLONES void forward_f32(const float* a, const float* b, float* y, int64_t n) {
  forward_run(a, b, y, n);
}
GENFAST_CLONES void backward_f32(const float* g, const float* a, const float* b, float* ga, float* gb,
                                 int64_t n) {
  backward_run(g, a, b, ga, gb, n);
}
// float64 (std:: math, not vectorised) needs no clones.
inline auto forward_fn(float) { return &forward_f32; }
inline auto forward_fn(double) { return &forward_run<double>; }
inline auto backward_fn(float) { return &backward_f32; }
inline auto backward_fn(double) { return &backward_run<double>; }

at::Tensor gated_activation_cpu(const at::Tensor& x_in, int64_t groups) {
  const int64_t contiguous_half = check_gated_activation(x_in, groups);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "gated_activation: the CPU kernel supports float32 and float64 x, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), "gated_activation: x must be a CPU tensor, got ", x_in.device());
  const auto blocks = gated_activation_blocks(x_in, groups, contiguous_half);
  const auto& x = blocks.x;
  const int64_t half = blocks.half;
  auto out = at::empty(gated_activation_shape(x), x.options().memory_format(blocks.format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_activation_cpu", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* res = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
      for_runs(begin, end, half, [&](int64_t o, int64_t j0, int64_t j1) {
        const scalar_t* a = in + o * 2 * half + j0;
        forward_fn(scalar_t())(a, a + half, res + o * half + j0, j1 - j0);
      });
    });
  });
  return out;
}

at::Tensor gated_activation_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                         int64_t groups) {
  const int64_t contiguous_half = check_gated_activation_backward(grad_in, x_in, groups);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "gated_activation_backward: the CPU kernel supports float32 and float64 x, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), "gated_activation_backward: x must be a CPU tensor, got ",
              x_in.device());
  const auto blocks = gated_activation_blocks(x_in, groups, contiguous_half);
  const auto& x = blocks.x;
  const int64_t half = blocks.half;
  const auto grad = grad_in.contiguous(blocks.format);
  auto grad_x = at::empty_like(x, blocks.format);
  if (x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gated_activation_backward_cpu", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* gx = grad_x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, grad.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
      for_runs(begin, end, half, [&](int64_t o, int64_t j0, int64_t j1) {
        const int64_t off = o * 2 * half + j0;
        backward_fn(scalar_t())(g + o * half + j0, in + off, in + off + half, gx + off, gx + off + half,
                                j1 - j0);
      });
    });
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("gated_activation", &gated_activation_cpu);
  m.impl("gated_activation_backward", &gated_activation_backward_cpu);
}

}  // namespace genfast
