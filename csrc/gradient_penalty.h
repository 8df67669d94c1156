// gradient_penalty and gradient_penalty_interpolate: what the CPU and CUDA kernels
// share — the per-sample penalty math (value, first and second derivative
// coefficients), the interpolation, the split of each sample into fixed chunks and
// the argument checks.
//
// A sample's gradient g (M values) has norm n = ||g||_2 and penalty term
//   phi(n) = (n - c)^2            (two-sided, WGAN-GP; c = 0 gives R1/R2's ||g||^2)
//   phi(n) = max(0, n - c)^2      (one-sided)
// and d phi / d g = k(n) * g with k(n) = phi'(n) / n. At n = 0 the norm has no
// gradient; we take g / ||g|| := 0 there (the least-norm subgradient), so the
// gradient is 0 and every value stays finite. For c = 0, phi = ||g||^2 is smooth and
// k = 2 everywhere.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "common.h"

namespace genfast {

// Reductions split each sample into chunks of this many elements, reduced in a
// fixed order, so that the result does not depend on the number of threads.
constexpr int64_t kPenaltyChunk = 4096;

GENFAST_HOST_DEVICE inline int64_t penalty_chunks(int64_t sample_size) {
  return (sample_size + kPenaltyChunk - 1) / kPenaltyChunk;
}

// x_hat = eps * real + (1 - eps) * fake.
template <typename T>
GENFAST_HOST_DEVICE inline T interpolate(T real, T fake, T eps) {
  return eps * real + (T(1) - eps) * fake;
}

// Whether the penalty term is differentiable with non-zero slope at norm n.
template <typename T>
GENFAST_HOST_DEVICE inline bool penalty_active(T norm, T center, bool one_sided) {
  return norm > T(0) && (!one_sided || norm > center);
}

// phi(n).
template <typename T>
GENFAST_HOST_DEVICE inline T penalty_term(T norm, T center, bool one_sided) {
  T d = norm - center;
  if (one_sided && d < T(0)) d = T(0);
  return d * d;
}

// k(n) = phi'(n) / n: the gradient of phi with respect to g is k(n) * g.
template <typename T>
GENFAST_HOST_DEVICE inline T penalty_gradient_scale(T norm, T center, bool one_sided) {
  if (center == T(0)) return T(2);  // phi = ||g||^2
  return penalty_active(norm, center, one_sided) ? T(2) * (T(1) - center / norm) : T(0);
}

// 1 / n, or 0 at n = 0: the gradient of n itself with respect to g is g / n.
template <typename T>
GENFAST_HOST_DEVICE inline T inverse_norm(T norm) {
  return norm > T(0) ? T(1) / norm : T(0);
}

// The per-sample factor of the gradient with respect to g, given the upstream
// gradients of the penalty (already times weight / N) and of the sample's norm.
template <typename T>
GENFAST_HOST_DEVICE inline T penalty_backward_scale(T penalty_grad, T norm_grad, T norm, T center,
                                                    bool one_sided) {
  return penalty_grad * penalty_gradient_scale(norm, center, one_sided) + norm_grad * inverse_norm(norm);
}

// Argument checks, the same on every backend. Each returns the sample size M
// (elements per sample; the batch is dimension 0).
int64_t check_gradient_penalty(const at::Tensor& grad, double weight, double center);
int64_t check_gradient_penalty_backward(const at::Tensor& grad_penalty,
                                        const c10::optional<at::Tensor>& grad_norms,
                                        const at::Tensor& grad, const at::Tensor& norms,
                                        double weight, double center);
int64_t check_gradient_penalty_interpolate(const at::Tensor& real, const at::Tensor& fake,
                                           const at::Tensor& eps);
int64_t check_gradient_penalty_interpolate_backward(const at::Tensor& grad_output,
                                                    const at::Tensor& real, const at::Tensor& fake,
                                                    const at::Tensor& eps);

// The dtype of the per-sample norms: float64 for float64 input, else float32.
at::ScalarType norm_dtype(at::ScalarType grad_dtype);

}  // namespace genfast
