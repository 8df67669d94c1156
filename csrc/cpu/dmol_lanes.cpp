// The float32 path of dmol_loss on the CPU (csrc/cpu/dmol.cpp threads it): kLanes
// consecutive pixels of a row at a time, the formulas of csrc/dmol.h written as
// branch-free loops over the pixels, with polynomial exp (csrc/cpu/fast_math.h) and log (~2 ulp) that the
// compiler vectorises. It includes no ATen header and sets no-trapping-math before any
// include: otherwise GCC 12 does not if-convert (so not vectorise) these loops.
// Selects on float compares only become vector blends when FP exceptions are not
// observable; they are not (no code here reads the FP status flags).
#pragma GCC optimize("no-trapping-math")

#include "dmol_lanes.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../dmol.h"
#include "fast_math.h"  // fast_exp: below -87 it gives ~e^-87, which every caller here treats as 0

namespace genfast {
namespace {

// --- branch-free float math (vectorisable) ----------------------------------------
inline float bits_to_float(int32_t i) { return std::bit_cast<float>(i); }
inline int32_t float_to_bits(float f) { return std::bit_cast<int32_t>(f); }
// log x for x > 0 normal (x below the smallest normal gives ~-87.3), branch-free.
inline float fast_log(float x) {
  x = x < 1.17549435e-38f ? 1.17549435e-38f : x;
  const int32_t bits = float_to_bits(x);
  float e = float((bits >> 23) - 127);
  float m = bits_to_float((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  const float f = m - 1.0f;  // [-0.29, 0.41]
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = p * f * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return f + y + e * 0.693359375f;
}
// 1 - e^-w for w >= 0 with relative accuracy as w -> 0 (series below 1/4).
inline float fast_one_minus_exp_neg(float w) {
  const float s = w * (1.0f - w * (0.5f - w * (1.0f / 6 - w * (1.0f / 24 - w * (1.0f / 120 - w * (1.0f / 720))))));
  return w < 0.25f ? s : 1.0f - fast_exp(-w);
}
inline float fast_tanh(float r) {  // 1 - 2 / (e^2r + 1), relative accuracy near 0 by series
  const float a = r < 0 ? -r : r;
  const float big = 1.0f - 2.0f / (fast_exp(2.0f * a) + 1.0f);
  const float z = a * a;
  const float small = a * (1.0f - z * (1.0f / 3 - z * (2.0f / 15 - z * (17.0f / 315))));
  const float t = a < 0.125f ? small : big;
  return r < 0 ? -t : t;
}


// One (colour, mixture) bin for n <= kLanes pixels: value[l] = log P(bin), and with
// Grad its derivatives (d_log_scale already 0 below the clamp). Every regime (edge
// bins, the exact bin, the mid-bin approximation, which random or far-off mixtures
// hit often) is computed for every pixel and selected, so the loop has no branches.
// Kept out of line: compiled once per Grad, its loop vectorised.
template <bool Grad>
__attribute__((noinline)) void bin_lanes(int n, const int32_t* __restrict level, const float* __restrict mean,
                                         const float* __restrict raw_scale, int64_t levels,
                                         float* __restrict value, float* __restrict d_mean,
                                         float* __restrict d_log_scale) {
  const float h = 1.0f / float(levels - 1), last = float(levels - 1);
  const float log_half_levels = float(std::log(double(levels - 1) / 2.0));
  for (int l = 0; l < n; ++l) {
    const float s = raw_scale[l] < float(kMinLogScale) ? float(kMinLogScale) : raw_scale[l];
    const float inv = fast_exp(-s);
    const float lv = float(level[l]);
    const bool left = lv == 0.0f, right = lv == last, edge = left || right;
    const float centered = (lv * (2.0f * h) - 1.0f) - mean[l];
    const float p = inv * (centered + h), m = inv * (centered - h), w = 2.0f * h * inv;
    const float ep = fast_exp(-(p > 0.0f ? p : -p)), em = fast_exp(-(m > 0.0f ? m : -m));
    const float q = fast_one_minus_exp_neg(w);
    const float den = (right ? 1.0f : 1.0f + ep) * (left ? 1.0f : 1.0f + em);
    const float linear = (right ? 0.0f : (p < 0.0f ? -p : 0.0f)) + (left ? 0.0f : (m > 0.0f ? m : 0.0f));
    const float exact = fast_log((edge ? 1.0f : q) / den) - linear;
    // Mid-bin density: log pdf(centre) + log(2h) = mid - s - 2 softplus(mid) - log((L-1)/2).
    const float mid = inv * centered, e_mid = fast_exp(-(mid > 0.0f ? mid : -mid));
    const float softplus_mid = (mid > 0.0f ? mid : 0.0f) + fast_log(1.0f + e_mid);
    const float approx = mid - s - 2.0f * softplus_mid - log_half_levels;
    const bool tiny = !edge && !(exact > float(kLogTinyProbability));
    value[l] = tiny ? approx : exact;
    if (Grad) {
      const float sp = right ? 0.0f : (p >= 0.0f ? ep : 1.0f) / (1.0f + ep);  // sig(-p)
      const float sm = left ? 0.0f : (m >= 0.0f ? 1.0f : em) / (1.0f + em);   // sig(m)
      const float width_term = edge ? 0.0f : w * (1.0f - q) / q;
      const float slope = 1.0f - 2.0f * (mid >= 0.0f ? 1.0f : e_mid) / (1.0f + e_mid);  // 1 - 2 sig(mid)
      const float dm = tiny ? -inv * slope : -inv * (sp - sm);
      const float ds = tiny ? -mid * slope - 1.0f : -p * sp + m * sm - width_term;
      d_mean[l] = dm;
      d_log_scale[l] = raw_scale[l] >= float(kMinLogScale) ? ds : 0.0f;
    }
  }
}

// The pixels [j0, j0 + n) of image b, float32: their levels, positions, the logits'
// log-sum-exp, and every mixture's a_k = logit_k + sum_c log P_c (into a (M, kLanes)).
struct LaneBlock {
  int n;
  int64_t channels, mixtures, levels, hw;
  const float* params;  // image b's params + j0
  int32_t level[3][kLanes];
  float position[3][kLanes], lse[kLanes];
  float coeff[3][kLanes], mean[kLanes], value[kLanes];
  float d_mean[3][kLanes], d_log_scale[3][kLanes];

  const float* row(int64_t channel) const { return params + channel * hw; }

  void load(const int64_t* x) {  // x: image b's levels + j0
    for (int64_t c = 0; c < channels; ++c) {
      for (int l = 0; l < n; ++l) {
        level[c][l] = int32_t(x[c * hw + l]);
        position[c][l] = float(level_position(level[c][l], levels));
      }
    }
    float top[kLanes], sum[kLanes];
    for (int l = 0; l < n; ++l) top[l] = row(0)[l], sum[l] = 0.0f;
    for (int64_t k = 1; k < mixtures; ++k) {
      for (int l = 0; l < n; ++l) top[l] = row(k)[l] > top[l] ? row(k)[l] : top[l];
    }
    for (int64_t k = 0; k < mixtures; ++k) {
      const float* __restrict r = row(k);
      for (int l = 0; l < n; ++l) sum[l] += fast_exp(r[l] - top[l]);
    }
    for (int l = 0; l < n; ++l) lse[l] = top[l] + fast_log(sum[l]);
  }

  // a[l] = sum_c log P_c for mixture k (derivatives into d_mean, d_log_scale).
  template <bool Grad>
  void mixture(int64_t k, float* a) {
    const int64_t block = dmol_block(channels, mixtures);
    for (int l = 0; l < n; ++l) a[l] = 0.0f;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t base = mixtures + c * block;
      const float* __restrict mu = row(base + k);
      if (channels == 3) {
        const float* __restrict raw = row(base + 2 * mixtures + k);
        for (int l = 0; l < n; ++l) coeff[c][l] = fast_tanh(raw[l]);
      }
      for (int l = 0; l < n; ++l) {
        float effective = mu[l];
        if (c == 1) effective += coeff[0][l] * position[0][l];
        if (c == 2) effective += coeff[1][l] * position[0][l] + coeff[2][l] * position[1][l];
        mean[l] = effective;
      }
      bin_lanes<Grad>(n, level[c], mean, row(base + mixtures + k), levels, value, d_mean[c], d_log_scale[c]);
      for (int l = 0; l < n; ++l) a[l] += value[l];
    }
  }
};

// The block of pixels j0.. (at most kLanes) of image b, its levels loaded.
LaneBlock lane_block_at(const float* params, const int64_t* x, int64_t p, int64_t hw, int64_t channels,
                        int64_t mixtures, int64_t levels, int64_t b, int64_t j0) {
  LaneBlock blk{int(std::min<int64_t>(kLanes, hw - j0)), channels, mixtures, levels, hw, params + b * p * hw + j0};
  blk.load(x + b * channels * hw + j0);
  return blk;
}

}  // namespace

void dmol_loss_lanes(const float* params, const int64_t* x, int64_t p, int64_t hw, int64_t channels,
                     int64_t mixtures, int64_t levels, float* nll, int64_t begin, int64_t end) {
  const int64_t strips = dmol_strips(hw);
  {
    std::vector<float> a(mixtures * kLanes);
    LaneBlock blk;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / strips, j0 = (task % strips) * kLanes;
      blk = lane_block_at(params, x, p, hw, channels, mixtures, levels, b, j0);
      const int n = blk.n;
      for (int64_t k = 0; k < mixtures; ++k) {
        float* ak = a.data() + k * kLanes;
        blk.mixture<false>(k, ak);
        for (int l = 0; l < n; ++l) ak[l] += blk.row(k)[l];
      }
      float top[kLanes], sum[kLanes];
      for (int l = 0; l < n; ++l) top[l] = a[l], sum[l] = 0.0f;
      for (int64_t k = 1; k < mixtures; ++k) {
        for (int l = 0; l < n; ++l) top[l] = a[k * kLanes + l] > top[l] ? a[k * kLanes + l] : top[l];
      }
      for (int64_t k = 0; k < mixtures; ++k) {
        for (int l = 0; l < n; ++l) sum[l] += fast_exp(a[k * kLanes + l] - top[l]);
      }
      float* out = nll + b * hw + j0;
      for (int l = 0; l < n; ++l) out[l] = blk.lse[l] - (top[l] + fast_log(sum[l]));
    }
  }
}

void dmol_loss_backward_lanes(const float* grad_nll, const float* params, const int64_t* x, const float* nll,
                              int64_t p, int64_t hw, int64_t channels, int64_t mixtures, int64_t levels,
                              float* grad, int64_t begin, int64_t end) {
  const int64_t strips = dmol_strips(hw);
  const int64_t block = dmol_block(channels, mixtures);
  {
    LaneBlock blk;
    float a[kLanes];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / strips, j0 = (task % strips) * kLanes;
      blk = lane_block_at(params, x, p, hw, channels, mixtures, levels, b, j0);
      const int n = blk.n;
      const float* __restrict g = grad_nll + b * hw + j0;
      const float* __restrict saved = nll + b * hw + j0;
      float* __restrict out = grad + b * p * hw + j0;
      for (int64_t k = 0; k < mixtures; ++k) {
        blk.mixture<true>(k, a);
        const float* __restrict logit = blk.row(k);
        float scale[kLanes];
        for (int l = 0; l < n; ++l) {
          const float log_weight = logit[l] - blk.lse[l];
          const float posterior = fast_exp(log_weight + a[l] + saved[l]);
          out[k * hw + l] = g[l] * (fast_exp(log_weight) - posterior);
          scale[l] = -g[l] * posterior;
        }
        for (int64_t c = 0; c < channels; ++c) {
          float* gm = out + (mixtures + c * block + k) * hw;
          float* gs = out + (mixtures + c * block + mixtures + k) * hw;
          for (int l = 0; l < n; ++l) {
            gm[l] = scale[l] * blk.d_mean[c][l];
            gs[l] = scale[l] * blk.d_log_scale[c][l];
          }
        }
        if (channels == 3) {  // d tanh(r) / dr = 1 - tanh^2
          float* ga = out + (mixtures + 2 * mixtures + k) * hw;
          float* gb = out + (mixtures + block + 2 * mixtures + k) * hw;
          float* gc = out + (mixtures + 2 * block + 2 * mixtures + k) * hw;
          for (int l = 0; l < n; ++l) {
            const float g1 = scale[l] * blk.d_mean[1][l], g2 = scale[l] * blk.d_mean[2][l];
            ga[l] = g1 * blk.position[0][l] * (1.0f - blk.coeff[0][l] * blk.coeff[0][l]);
            gb[l] = g2 * blk.position[0][l] * (1.0f - blk.coeff[1][l] * blk.coeff[1][l]);
            gc[l] = g2 * blk.position[1][l] * (1.0f - blk.coeff[2][l] * blk.coeff[2][l]);
          }
        }
      }
    }
  }
}

}  // namespace genfast
