// Per-element math of genfast's cached samplers (wavenet_step, gated_pixelcnn_row,
// pixelcnn_row), shared by their CPU and CUDA kernels so that every backend gates and
// draws alike.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace genfast {

// The CUDA row samplers' blocks are 32 * kGemvWarps threads (csrc/cuda/block_gemv.cuh).
constexpr int kGemvWarps = 8;

// Shared memory a CUDA block may use (static + dynamic) without opting in.
constexpr size_t kDefaultSharedMemoryBytes = 48 * 1024;

// tanh(a) * sigmoid(b): the gated activation unit of WaveNet and the Gated PixelCNN.
template <typename T>
GENFAST_HOST_DEVICE inline T gated_unit(T a, T b) {
  using std::exp;
  using std::tanh;
  return tanh(a) * (T(1) / (T(1) + exp(-b)));
}

template <typename T>
GENFAST_HOST_DEVICE inline T relu_value(T x) {
  return x > T(0) ? x : T(0);
}

// A known (given) level as the kernels read it: one outside [0, levels) -- possible
// only when the caller skipped the op's check_levels -- reads as -1, a failed draw
// (zero features onwards), never as an index out of bounds.
GENFAST_HOST_DEVICE inline int64_t known_level(int64_t value, int64_t levels) {
  return value >= 0 && value < levels ? value : -1;
}

// ---- the inverse-CDF draw --------------------------------------------------------
// The draw of genfast.ops._draw.inverse_cdf: in float64, z = logit / temperature and
// w = e^(z - max z); the drawn level is the number of levels whose running sum of w
// (summed in level order) is <= u * (sum of all w), clamped to levels - 1 against
// rounding at u -> 1.
//
// The CPU and CUDA kernels draw bit-identically by construction: every step below is
// an IEEE-754 double operation rounded to nearest (division, subtraction, add_rn,
// mul_rn, fma, rint, ldexp by an exponent that keeps the result normal), so no
// library exp and no compiler contraction of a * b + c into an fma can differ between
// them, and the weights are summed in the same (level) order on both (warp_draw.cuh
// only computes the weights in parallel). genfast.ops._draw.exact_draw is the same
// arithmetic in Python (tests); torch.exp may differ from draw_exp by an ulp, so
// inverse_cdf agrees with the kernels except for a uniform within a few ulps of a CDF
// step.

// a + b and a * b rounded once, never fused with a neighbouring operation.
GENFAST_HOST_DEVICE inline double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

GENFAST_HOST_DEVICE inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// e^x for the draw's x = z - max z <= 0, within ~1 ulp of the exact value: x = n ln2 + r
// (ln2 in two parts, |r| <= ln2 / 2), e^r by its Taylor polynomial of degree 13
// (truncation error < 5e-18) in Horner form with fmas, times 2^n. Below -700, where
// e^x < 1e-304 cannot move the sum of weights that include the maximum's 1, it returns
// 0 (so that 2^n stays a normal number).
GENFAST_HOST_DEVICE inline double draw_exp(double x) {
  using std::fma;
  using std::ldexp;
  using std::rint;
  if (!(x > -700.0)) return 0.0;
  const double n = rint(mul_rn(x, 0x1.71547652b82fep0));  // x / ln2
  const double r = fma(-n, 0x1.a39ef35793c76p-33, fma(-n, 0x1.62e42feep-1, x));
  double p = 1.0 / 6227020800.0;  // 1 / 13!
  p = fma(p, r, 1.0 / 479001600.0);
  p = fma(p, r, 1.0 / 39916800.0);
  p = fma(p, r, 1.0 / 3628800.0);
  p = fma(p, r, 1.0 / 362880.0);
  p = fma(p, r, 1.0 / 40320.0);
  p = fma(p, r, 1.0 / 5040.0);
  p = fma(p, r, 1.0 / 720.0);
  p = fma(p, r, 1.0 / 120.0);
  p = fma(p, r, 1.0 / 24.0);
  p = fma(p, r, 1.0 / 6.0);
  p = fma(p, r, 0.5);
  p = fma(p, r, 1.0);
  p = fma(p, r, 1.0);
  return ldexp(p, static_cast<int>(n));
}

GENFAST_HOST_DEVICE inline double tempered_logit(double logit, double temperature) {
  return logit / temperature;
}

// The weight of a level: e^(z - max z).
GENFAST_HOST_DEVICE inline double draw_weight(double logit, double temperature, double z_max) {
  return draw_exp(tempered_logit(logit, temperature) - z_max);
}

GENFAST_HOST_DEVICE inline int64_t clamp_level(int64_t count, int64_t levels) {
  return count < levels ? count : levels - 1;
}

// The draw of one row of logits, serially (the CPU kernels; the definition that
// warp_draw.cuh reproduces): the level, or -1 when a logit is not finite. cdf: scratch
// for `levels` doubles.
template <typename T>
GENFAST_HOST_DEVICE inline int64_t inverse_cdf_draw(const T* logits, int64_t levels, double u,
                                                    double temperature, double* cdf) {
  double z_max = -INFINITY;
  for (int64_t i = 0; i < levels; ++i) {
    const double v = static_cast<double>(logits[i]);
    if (!std::isfinite(v)) return -1;
    const double z = tempered_logit(v, temperature);
    z_max = z > z_max ? z : z_max;  // any order gives the same maximum
  }
  double sum = 0.0;
  for (int64_t i = 0; i < levels; ++i) {
    sum = add_rn(sum, draw_weight(static_cast<double>(logits[i]), temperature, z_max));
    cdf[i] = sum;
  }
  const double threshold = mul_rn(u, sum);
  int64_t count = 0;  // the running sums never decrease: count up to the first one above
  while (count < levels && cdf[count] <= threshold) ++count;
  return clamp_level(count, levels);
}

// ---- top-k / top-p (nucleus) filtering before the draw --------------------------
// The rule of genfast.ops._draw.filtered_draw (its docstring states it in full): rank
// the levels by z = logit / temperature, largest first, the lower level first on a
// tie; keep the top_k first ranks (0: all); with top_p < 1 keep, of those, rank 0 and
// every rank whose running sum of weights over the ranks before it (summed in rank
// order) is < top_p * (their sum over the kept ranks, in rank order); then draw by
// inverse CDF over the kept levels only (in level order), the last kept level when
// rounding at u -> 1 leaves no running sum above u * total.

// Whether level a (tempered logit za) ranks before level b.
GENFAST_HOST_DEVICE inline bool ranks_before(double za, int64_t a, double zb, int64_t b) {
  return za > zb || (za == zb && a < b);
}

// How many ranks the filter keeps: a prefix order[0..kept) of the rank order. w: the
// weights e^(z - max z) by level; order: the levels by rank.
GENFAST_HOST_DEVICE inline int64_t filtered_rank_count(const double* w, const int32_t* order, int64_t levels,
                                                       int64_t top_k, double top_p) {
  const int64_t k = top_k > 0 && top_k < levels ? top_k : levels;
  if (!(top_p < 1.0)) return k;
  double total = 0.0;
  for (int64_t r = 0; r < k; ++r) total = add_rn(total, w[order[r]]);
  const double threshold = mul_rn(top_p, total);
  double running = w[order[0]];
  int64_t kept = 1;
  while (kept < k && running < threshold) running = add_rn(running, w[order[kept++]]);
  return kept;
}

// The draw over the levels order[0..kept): running sums of their weights in level
// order (kept_weight: w of kept levels, 0 elsewhere -- adding 0 changes no sum), the
// first one above u * total, else the last kept level.
GENFAST_HOST_DEVICE inline int64_t filtered_level(const double* kept_weight, int64_t levels, double u,
                                                  int64_t last_kept) {
  double total = 0.0;
  for (int64_t i = 0; i < levels; ++i) total = add_rn(total, kept_weight[i]);
  const double threshold = mul_rn(u, total);
  double running = 0.0;
  for (int64_t i = 0; i < levels; ++i) {
    running = add_rn(running, kept_weight[i]);
    if (running > threshold) return i;
  }
  return last_kept;
}

// The whole filter after ranking: keeps filtered_rank_count's prefix of `order`, copies
// those levels' weights into kept_weight (all zeros on entry) and draws by filtered_level.
GENFAST_HOST_DEVICE inline int64_t filtered_draw_ranked(const double* w, const int32_t* order, int64_t levels,
                                                        int64_t top_k, double top_p, double u,
                                                        double* kept_weight) {
  const int64_t kept = filtered_rank_count(w, order, levels, top_k, top_p);
  int64_t last_kept = 0;
  for (int64_t r = 0; r < kept; ++r) {
    kept_weight[order[r]] = w[order[r]];
    last_kept = last_kept > order[r] ? last_kept : order[r];
  }
  return filtered_level(kept_weight, levels, u, last_kept);
}

}  // namespace genfast
