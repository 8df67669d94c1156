// nearest_code: what the CPU and CUDA kernels share — the definition of the exact
// distance, the error bound of the fast filter, and the argument checks.
//
// What "exact" means. For each row x the op returns the lowest index k minimising
//   d64(x, e_k) = sum over i = 0, 1, ..., D-1 (in that order) of (x_i - e_ki)^2,
// every operation in float64 with round-to-nearest and no fused multiply-add (in
// cosine mode x_i and e_ki are first multiplied by the float64 reciprocal of their
// row's norm, itself summed in the same order). genfast.ops.nearest_code_reference
// computes exactly this, so indices and distances match it bit for bit.
//
// How the kernels get there fast. A filter computes s_k = ||e_k||^2 - 2 x.e_k in the
// accumulation type (float32 for float32, float16 and bfloat16 inputs) with tiled
// dot products, keeping per row the best score b1, its index and the second best b2.
// Each s_k is within `filter_tolerance` of d64(x, e_k) - ||x||^2, so b2 - b1 > 2 tau
// proves the filter's winner is the exact one. Rows that fail the test (near ties,
// duplicate codes, overflow) are resolved exactly: every code whose filter score is
// within 2 tau of b1 has its d64 computed, the lowest index of the smallest wins.
#pragma once

#include <cmath>

#include <ATen/core/Tensor.h>

#include "common.h"

namespace genfast {

// Rounding facts of the filter's accumulation type.
struct FilterPrecision {
  double unit_roundoff;  // u: relative error of one rounding
  double underflow;      // absolute error of one rounding in the subnormal range
  double overflow;       // largest finite value
};
constexpr FilterPrecision kFloatFilter{5.9604644775390625e-08, 7.006492321624085e-46,
                                       3.4028234663852886e+38};  // 2^-24, 2^-150, FLT_MAX
constexpr FilterPrecision kDoubleFilter{1.1102230246251565e-16, 4.9406564584124654e-324,
                                        1.7976931348623157e+308};  // 2^-53, 2^-1074, DBL_MAX

// A bound on |s_k - (d64(x, e_k) - ||x||^2)|, where x_norm = ||x|| and
// max_code_norm = max_k ||e_k|| (of the normalised vectors in cosine mode).
// Dot products of D terms in any order err by at most D u ||x|| ||e_k|| (to first
// order), the rounded operands, norms and final subtraction by a few u (||x|| +
// ||e_k||)^2, and d64 by (D + 3) u' (||x|| + ||e_k||)^2 with u' <= u; (3 D + 16) u
// covers all of them with room to spare, the factor 1.01 the second-order terms,
// and one underflow error per operation the subnormal range. Every intermediate
// value is at most (||x|| + max ||e_k||)^2 in magnitude: when that could overflow,
// the bound is infinite and the row is resolved exactly.
GENFAST_HOST_DEVICE inline double filter_tolerance(double x_norm, double max_code_norm,
                                                   int64_t dim, FilterPrecision precision) {
  const double scale = x_norm + max_code_norm;
  const double magnitude = 1.01 * scale * scale;
  if (!(magnitude < precision.overflow)) return INFINITY;
  const double operations = static_cast<double>(3 * dim + 16);
  return operations * (precision.unit_roundoff * magnitude + precision.underflow);
}

// True when the filter's winner is certainly the exact one. NaN (from overflowing
// scores) compares false and sends the row to the exact resolution.
GENFAST_HOST_DEVICE inline bool filter_is_certain(double best, double second, double tolerance) {
  return second - best > 2.0 * tolerance;
}

// The reciprocal norm that normalises a row in cosine mode; zero rows stay zero.
GENFAST_HOST_DEVICE inline double reciprocal_norm(double squared_norm) {
  return squared_norm > 0.0 ? 1.0 / sqrt(squared_norm) : 0.0;
}

// d64 of the definition above; x_scale and e_scale are 1 outside cosine mode.
// Explicitly rounded operations on the GPU (nvcc would fuse them); on the CPU,
// csrc/cpu/nearest_code.cpp turns floating-point contraction off.
template <typename scalar_t>
GENFAST_HOST_DEVICE inline double exact_sq_distance(const scalar_t* x, double x_scale,
                                                    const scalar_t* e, double e_scale,
                                                    int64_t dim) {
  double acc = 0.0;
  for (int64_t i = 0; i < dim; ++i) {
#if defined(__CUDA_ARCH__)
    const double diff = __dsub_rn(__dmul_rn(static_cast<double>(x[i]), x_scale),
                                  __dmul_rn(static_cast<double>(e[i]), e_scale));
    acc = __dadd_rn(acc, __dmul_rn(diff, diff));
#else
    const double diff = static_cast<double>(x[i]) * x_scale - static_cast<double>(e[i]) * e_scale;
    acc = acc + diff * diff;
#endif
  }
  return acc;
}

// sum over i in order of x_i^2, the same on both backends.
template <typename scalar_t>
GENFAST_HOST_DEVICE inline double exact_sq_norm(const scalar_t* x, int64_t dim) {
  double acc = 0.0;
  for (int64_t i = 0; i < dim; ++i) {
#if defined(__CUDA_ARCH__)
    acc = __dadd_rn(acc, __dmul_rn(static_cast<double>(x[i]), static_cast<double>(x[i])));
#else
    acc = acc + static_cast<double>(x[i]) * static_cast<double>(x[i]);
#endif
  }
  return acc;
}

// Argument checks, the same on every backend (x (N, D), codebook (K, D), same
// floating dtype and device, K >= 1, D >= 1, K within 32-bit indexing).
void check_nearest_code(const at::Tensor& x, const at::Tensor& codebook);

}  // namespace genfast
