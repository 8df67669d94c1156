// concat_elu: what the CPU and CUDA kernels share. concat_elu(x, dim) = elu(cat([x, -x],
// dim)), PixelCNN++'s nonlinearity. Seen as (outer, inner), outer the product of x's
// sizes before dim, x is contiguous and the output is (outer, 2, inner):
// out[o][0][j] = elu(x[o][j]) and out[o][1][j] = elu(-x[o][j]).
// Of elu(x) and elu(-x) one is x or -x itself and the other expm1(-|x|), so each input
// element costs one expm1 each way; the backward recomputes it from x (nothing is saved).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common.h"

namespace genfast {

// The argument of x's one expm1: -|x|, with +0 kept as +0 so that elu(+0) is +0 as in torch.
template <typename T>
GENFAST_HOST_DEVICE inline T concat_elu_expm1_arg(T x) { return x > T(0) ? -x : x; }

// Given e = expm1(concat_elu_expm1_arg(x)): pos = elu(x), neg = elu(-x). Plain selects,
// so the CPU kernel runs them on SIMD vectors; NaN gives NaN in both.
template <typename T>
GENFAST_HOST_DEVICE inline void concat_elu_values(T x, T e, T& pos, T& neg) {
  pos = x > T(0) ? x : e;
  neg = x > T(0) ? e : -x;
}

// d/dx (g_pos * elu(x) + g_neg * elu(-x)), elu'(t) = exp(t) = e + 1 for t <= 0 (1 at 0, as torch).
template <typename T>
GENFAST_HOST_DEVICE inline T concat_elu_grad(T g_pos, T g_neg, T x, T e) {
  return x > T(0) ? g_pos - g_neg * (e + T(1)) : g_pos * (e + T(1)) - g_neg;
}

struct ConcatEluLayout {
  int64_t outer, inner;  // x as (outer, inner); the output as (outer, 2, inner)
};

// Argument checks, the same on every backend.
ConcatEluLayout check_concat_elu(const char* op, const at::Tensor& x, int64_t dim);
ConcatEluLayout check_concat_elu_backward(const at::Tensor& grad_output, const at::Tensor& x, int64_t dim);
// The output shape: x's with size(dim) doubled.
std::vector<int64_t> concat_elu_shape(const at::Tensor& x, int64_t dim);

}  // namespace genfast
