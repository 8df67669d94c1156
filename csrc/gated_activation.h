// gated_activation: what the CPU and CUDA kernels share. The gated unit of Gated
// PixelCNN / WaveNet, out = tanh(a) * sigmoid(b), where the input x (N, 2C, ...) holds
// `groups` channel blocks per sample, each its a half then its b half (colour group g of
// an RGB model owns block g). Seen as (N * groups, 2, S), S = C / groups * spatial
// size, x is contiguous and out is (N * groups, S). A channels-last 4-D x (layout.h) is
// the same blocks with S = C / groups per pixel, read in place; the results then are
// channels-last too.
// The backward recomputes tanh and sigmoid from x (nothing else is saved).
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "common.h"
#include "layout.h"

namespace genfast {

template <typename T>
GENFAST_HOST_DEVICE inline T gate_sigmoid(T b) {
  // exp(-b) overflows to inf for very negative b: the result is then exactly 0.
  return T(1) / (T(1) + exp(-b));
}

// Given t = tanh(a) and s = sigmoid(b): the value and the gradients of a and b for an
// upstream gradient g. Plain arithmetic, so the CPU kernel also runs them on SIMD vectors.
template <typename T>
GENFAST_HOST_DEVICE inline T gate_value(T t, T s) { return t * s; }

template <typename T>
GENFAST_HOST_DEVICE inline void gate_grads(T g, T t, T s, T& grad_a, T& grad_b) {
  const T one(1);
  grad_a = g * s * (one - t * t);
  grad_b = g * t * s * (one - s);
}

// Argument checks, the same on every backend; return S (elements per half-block).
int64_t check_gated_activation(const at::Tensor& x, int64_t groups);
int64_t check_gated_activation_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                        int64_t groups);
// x as the kernels read it, (outer, 2, half) blocks: channels-last x in place (half =
// C / groups), any other layout made contiguous (half = S, what the argument checks
// return: pass it as contiguous_half).
struct GateBlocks {
  at::Tensor x;
  int64_t half;
  at::MemoryFormat format;  // of x and of the results
};
GateBlocks gated_activation_blocks(const at::Tensor& x, int64_t groups, int64_t contiguous_half);
// The output shape: x's with half the channels.
std::vector<int64_t> gated_activation_shape(const at::Tensor& x);

}  // namespace genfast
