// The vector code of csrc/cpu/dmol_lanes.cpp, written once for any vector width:
// dmol_lanes.cpp includes this file once per instruction set, each time with
// GENFAST_DMOL_WIDTH (floats per register) and GENFAST_DMOL_NAMESPACE defined, before
// which it includes every header used here. Hence no include guard. Every function
// is always_inline, so it is compiled for the target of the entry point that calls it.
// GCC vector types of the register's width: wider ones would be split by GCC 12's
// generic lowering, which turns comparisons and selects into per-lane scalar code.

namespace genfast {
namespace GENFAST_DMOL_NAMESPACE {

constexpr int kWidth = GENFAST_DMOL_WIDTH;  // floats per vector
typedef float vf __attribute__((vector_size(kWidth * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kWidth * sizeof(int32_t))));

GENFAST_INLINE vf splat(float v) { return vf{} + v; }
GENFAST_INLINE vf as_float(vi v) { return reinterpret_cast<vf>(v); }  // bit casts
GENFAST_INLINE vi as_int(vf v) { return reinterpret_cast<vi>(v); }
GENFAST_INLINE vf vabs(vf v) { return as_float(as_int(v) & 0x7fffffff); }
// mask ? a : b per lane (mask lanes all bits set or clear, as comparisons give): GCC 12
// turns a vector ?: into per-lane scalar code where the vector is wider than the
// target's registers or the mask is a variable, but not this.
GENFAST_INLINE vf sel(vi mask, vf a, vf b) { return as_float((mask & as_int(a)) | (~mask & as_int(b))); }
// Selects written so that NaN passes through: relu(NaN) = NaN.
GENFAST_INLINE vf relu(vf v) { return sel(v < 0.0f, splat(0.0f), v); }

// kWidth pixels at ptr: a full vector (Full: n == kWidth) is one unaligned load, a
// partial one (the end of an image) is padded with zeros, harmless values for every
// input here.
template <bool Full>
GENFAST_INLINE vf load(const float* ptr, int n) {
  vf v = {};
  if (Full) {
    std::memcpy(&v, ptr, sizeof(v));
  } else {
    for (int l = 0; l < n; ++l) v[l] = ptr[l];
  }
  return v;
}
template <bool Full>
GENFAST_INLINE void store(float* ptr, vf v, int n) {
  if (Full) {
    std::memcpy(ptr, &v, sizeof(v));
  } else {
    for (int l = 0; l < n; ++l) ptr[l] = v[l];
  }
}

// e^x: Cody-Waite reduction and Cephes' degree-6 polynomial (~1 ulp, as fast_math.h's
// fast_exp) on [-87, 88.37]; the argument is clamped there (e^-inf gives 1.6e-38,
// which every caller treats as 0). NaN stays NaN.
GENFAST_INLINE vf vexp(vf x) {
  x = sel(x < -87.0f, splat(-87.0f), x);
  x = sel(x > 88.37f, splat(88.37f), x);
  // round(x / ln 2) by the 1.5 * 2^23 trick: t's low mantissa bits hold it as an integer.
  const vf t = x * 1.44269504088896341f + 12582912.0f;
  const vf n = t - 12582912.0f;
  const vi e = (as_int(t) - 0x4b400000 + 127) << 23;
  return exp_reduced(x, n) * as_float(e);
}

// log x for x > 0 (Cephes' logf: mantissa in [sqrt(1/2), sqrt 2), degree-8
// polynomial, ~2 ulp); x below the smallest normal gives ~-87.3; NaN stays NaN.
GENFAST_INLINE vf vlog(vf x) {
  const vf in = x;
  x = sel(x < 1.17549435e-38f, splat(1.17549435e-38f), x);
  const vi bits = as_int(x);
  vf e = as_float((bits >> 23) | 0x4b000000) - (8388608.0f + 127.0f);  // the exponent, as a float
  vf m = as_float((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const vi big = m > 1.41421356f;
  m = sel(big, m * 0.5f, m);
  e = sel(big, e + 1.0f, e);
  const vf f = m - 1.0f;
  const vf z = f * f;
  vf p = splat(7.0376836292e-2f);
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  vf y = p * f * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  const vf out = f + y + e * 0.693359375f;
  return sel(in != in, in, out);
}

// 1 - e^-w for w >= 0 given ew = e^-w, with relative accuracy as w -> 0 (series
// below 1/4, where 1 - ew cancels).
GENFAST_INLINE vf one_minus(vf w, vf ew) {
  const vf s = w * (1.0f - w * (0.5f - w * (1.0f / 6 - w * (1.0f / 24 - w * (1.0f / 120 - w * (1.0f / 720))))));
  return sel(w < 0.25f, s, 1.0f - ew);
}

// tanh r = 1 - 2 / (e^2|r| + 1) with the sign, the series below |r| = 1/8.
GENFAST_INLINE vf vtanh(vf r) {
  const vf a = vabs(r), z = a * a;
  const vf big = 1.0f - 2.0f / (vexp(2.0f * a) + 1.0f);
  const vf small = a * (1.0f - z * (1.0f / 3 - z * (2.0f / 15 - z * (17.0f / 315))));
  const vf t = sel(a < 0.125f, small, big);
  return as_float(as_int(t) | (as_int(r) & int32_t(0x80000000u)));
}

// One strip of one image: the levels and their positions per colour, the logits'
// log-sum-exp.
template <bool Full>
struct Strip {
  int n;
  int64_t channels, mixtures, levels, hw;
  // Set by init:
  const float* params = nullptr;  // image b's params + j0
  vf position[3] = {};
  vi left[3] = {}, right[3] = {};  // level 0 / level levels - 1: the open-ended bins
  vf lse = {};
  float log_half_levels = 0;  // log((levels - 1) / 2)

  GENFAST_INLINE vf row(int64_t channel) const { return load<Full>(params + channel * hw, n); }

  GENFAST_INLINE void init(const float* image_params, const int64_t* image_x, int64_t j0) {
    params = image_params + j0;
    log_half_levels = float(std::log(double(levels - 1) / 2.0));
    for (int64_t c = 0; c < channels; ++c) {
      // Positions rounded once from float64 (level * 2h - 1 in float32 rounds twice,
      // and 1/scale up to e^7 amplifies that error).
      float pos[kWidth] = {};
      int32_t at_left[kWidth] = {}, at_right[kWidth] = {};  // padding lanes: level 0's position, -1
      for (int l = 0; l < kWidth; ++l) {
        const int64_t v = l < n ? image_x[c * hw + j0 + l] : 0;
        pos[l] = float(level_position(v, levels));
        at_left[l] = v == 0 ? -1 : 0;
        at_right[l] = v == levels - 1 ? -1 : 0;
      }
      std::memcpy(&position[c], pos, sizeof(pos));
      std::memcpy(&left[c], at_left, sizeof(at_left));
      std::memcpy(&right[c], at_right, sizeof(at_right));
    }
    vf top = row(0);
    for (int64_t k = 1; k < mixtures; ++k) {
      const vf v = row(k);
      top = sel(v > top, v, top);
    }
    vf sum = {};
    for (int64_t k = 0; k < mixtures; ++k) sum += vexp(row(k) - top);
    lse = top + vlog(sum);
  }
};

// log P(bin) of colour c for one mixture (mean already coupled, raw log-scale), and
// with Grad its derivatives (d_log_scale 0 below the clamp, torch.clamp's rule).
// Every regime (edge bins, exact bin, mid-bin approximation) is computed for every
// lane and selected.
struct Bin {
  vf value, d_mean, d_log_scale;
};

template <bool Grad, class Strip>
GENFAST_INLINE Bin bin(const Strip& s, int64_t c, vf mean, vf raw_scale) {
  const float h = 1.0f / float(s.levels - 1);
  const float log_half_levels = s.log_half_levels;
  const vi left = s.left[c], right = s.right[c], edge = left | right;
  const vf log_scale = sel(raw_scale < float(kMinLogScale), splat(float(kMinLogScale)), raw_scale);
  const vf inv = vexp(-log_scale);
  const vf centered = s.position[c] - mean;
  const vf mid = inv * centered, p = mid + inv * h, m = mid - inv * h, w = inv * (2.0f * h);
  const vf ep = vexp(-vabs(p)), em = vexp(-vabs(m)), e_mid = vexp(-vabs(mid));
  const vf q = one_minus(w, vexp(-w));  // 1 - e^-(p - m)
  // P = sig(p) sig(-m) (1 - e^-w) = e^-linear * core, core = q / ((1 + ep)(1 + em))
  // in the middle; sig(p) (left) and sig(-m) (right) at the edges.
  const vf one_p = sel(right, splat(1.0f), 1.0f + ep), one_m = sel(left, splat(1.0f), 1.0f + em);
  const vf r = 1.0f / (one_p * one_m);
  const vf core = sel(edge, r, q * r);
  const vf linear = sel(right, splat(0.0f), relu(-p)) + sel(left, splat(0.0f), relu(m));
  const vf e_linear = sel(right | (p >= 0.0f), splat(1.0f), ep) * sel(left | (m <= 0.0f), splat(1.0f), em);
  // The composite formula's rule: the mid-bin density where P <= 1e-5 (never at edges).
  const vi tiny = ~edge & (core * e_linear <= float(kTinyProbability));
  // log pdf(centre) + log 2h = mid - s - 2 softplus(mid) - log((L-1)/2), softplus(mid)
  // = relu(mid) + log(1 + e_mid): one log for both branches.
  const vf one_mid = 1.0f + e_mid;
  const vf lg = vlog(sel(tiny, one_mid * one_mid, core));
  Bin out;
  out.value = sel(tiny, mid - log_scale - 2.0f * relu(mid) - log_half_levels - lg, lg - linear);
  if (Grad) {
    const vf sp = sel(right, splat(0.0f), sel(p >= 0.0f, ep, splat(1.0f)) * r * one_m);  // sig(-p)
    const vf sm = sel(left, splat(0.0f), sel(m >= 0.0f, splat(1.0f), em) * r * one_p);   // sig(m)
    // d/dw log(1 - e^-w) = e^-w / (1 - e^-w); w = 2h/scale shrinks as s grows.
    const vf width_term = sel(edge, splat(0.0f), w * (1.0f - q) / q);
    const vf slope = sel(mid >= 0.0f, e_mid - 1.0f, 1.0f - e_mid) / one_mid;  // 1 - 2 sig(mid)
    out.d_mean = sel(tiny, -inv * slope, -inv * (sp - sm));
    const vf ds = sel(tiny, -mid * slope - 1.0f, -p * sp + m * sm - width_term);
    out.d_log_scale = sel(raw_scale > float(kMinLogScale), ds, splat(0.0f));
  }
  return out;
}

// a = sum_c log P_c for mixture k; with Grad the per-colour derivatives and the
// coupling coefficients.
struct Mixture {
  vf a, coeff[3], d_mean[3], d_log_scale[3];
};

template <bool Grad, class Strip>
GENFAST_INLINE Mixture mixture(const Strip& s, int64_t k) {
  const int64_t m = s.mixtures, block = dmol_block(s.channels, m);
  Mixture out;
  out.a = vf{};
  if (s.channels == 3) {
    for (int64_t c = 0; c < 3; ++c) out.coeff[c] = vtanh(s.row(m + c * block + 2 * m + k));
  }
  for (int64_t c = 0; c < s.channels; ++c) {
    const int64_t base = m + c * block;
    vf mean = s.row(base + k);
    if (c == 1) mean += out.coeff[0] * s.position[0];
    if (c == 2) mean += out.coeff[1] * s.position[0] + out.coeff[2] * s.position[1];
    const Bin b = bin<Grad>(s, c, mean, s.row(base + m + k));
    out.a += b.value;
    if (Grad) out.d_mean[c] = b.d_mean, out.d_log_scale[c] = b.d_log_scale;
  }
  return out;
}


// The next strip's 64 bytes of each of the `count` channels at base (stride hw): the
// channels of a strip lie hw * 4 bytes apart, more streams than the hardware
// prefetcher follows, so without this nearly every row load misses the cache.
GENFAST_INLINE void prefetch_rows(const float* base, int64_t count, int64_t hw, bool write) {
  for (int64_t ch = 0; ch < count; ++ch) {
    if (write) {
      __builtin_prefetch(base + ch * hw, 1);
    } else {
      __builtin_prefetch(base + ch * hw, 0);
    }
  }
}

struct Problem {
  const float* params;
  const int64_t* x;
  int64_t p, hw, channels, mixtures, levels;
};

// nll of the kWidth (Full) or n pixels of image b from j0.
template <bool Full>
GENFAST_INLINE void loss_strip(const Problem& pr, int64_t b, int64_t j0, int n, float* nll) {
  constexpr int64_t kChunk = 16;  // mixtures per log-sum-exp pass: a running (top, sum) across chunks
  vf a[kChunk];
  Strip<Full> s{n, pr.channels, pr.mixtures, pr.levels, pr.hw};
  s.init(pr.params + b * pr.p * pr.hw, pr.x + b * pr.channels * pr.hw, j0);
  vf top = splat(-INFINITY), sum = {};
  for (int64_t k0 = 0; k0 < pr.mixtures; k0 += kChunk) {
    const int64_t count = pr.mixtures - k0 < kChunk ? pr.mixtures - k0 : kChunk;
    vf chunk_top = splat(-INFINITY);
    for (int64_t i = 0; i < count; ++i) {
      a[i] = s.row(k0 + i) + mixture<false>(s, k0 + i).a;
      chunk_top = sel(a[i] > chunk_top, a[i], chunk_top);
    }
    const vf new_top = sel(chunk_top > top, chunk_top, top);
    sum = k0 == 0 ? sum : sum * vexp(top - new_top);
    for (int64_t i = 0; i < count; ++i) sum += vexp(a[i] - new_top);
    top = new_top;
  }
  store<Full>(nll + b * pr.hw + j0, s.lse - (top + vlog(sum)), n);
}

// grad of the kWidth (Full) or n pixels of image b from j0.
template <bool Full>
GENFAST_INLINE void backward_strip(const Problem& pr, int64_t b, int64_t j0, int n, const float* grad_nll,
                                   const float* nll, float* grad) {
  const int64_t mixtures = pr.mixtures, hw = pr.hw, block = dmol_block(pr.channels, mixtures);
  Strip<Full> s{n, pr.channels, mixtures, pr.levels, hw};
  s.init(pr.params + b * pr.p * hw, pr.x + b * pr.channels * hw, j0);
  const vf g = load<Full>(grad_nll + b * hw + j0, n), saved = load<Full>(nll + b * hw + j0, n);
  float* out = grad + b * pr.p * hw + j0;
  for (int64_t k = 0; k < mixtures; ++k) {
    const Mixture mix = mixture<true>(s, k);
    const vf log_weight = s.row(k) - s.lse;
    // The posterior of mixture k: its share of the pixel's likelihood.
    const vf posterior = vexp(log_weight + mix.a + saved);
    store<Full>(out + k * hw, g * (vexp(log_weight) - posterior), n);
    const vf scale = -g * posterior;
    vf g_mean[3];
    for (int64_t c = 0; c < pr.channels; ++c) {
      g_mean[c] = scale * mix.d_mean[c];
      store<Full>(out + (mixtures + c * block + k) * hw, g_mean[c], n);
      store<Full>(out + (mixtures + c * block + mixtures + k) * hw, scale * mix.d_log_scale[c], n);
    }
    if (pr.channels == 3) {  // d tanh(r) / dr = 1 - tanh^2
      store<Full>(out + (mixtures + 2 * mixtures + k) * hw,
                  g_mean[1] * s.position[0] * (1.0f - mix.coeff[0] * mix.coeff[0]), n);
      store<Full>(out + (mixtures + block + 2 * mixtures + k) * hw,
                  g_mean[2] * s.position[0] * (1.0f - mix.coeff[1] * mix.coeff[1]), n);
      store<Full>(out + (mixtures + 2 * block + 2 * mixtures + k) * hw,
                  g_mean[2] * s.position[1] * (1.0f - mix.coeff[2] * mix.coeff[2]), n);
    }
  }
}

// The tasks [begin, end) (task = b * dmol_strips(hw) + strip, kLanes pixels each),
// kWidth pixels at a time; the next task's rows are prefetched first.
GENFAST_INLINE void loss_tasks(const Problem& pr, float* nll, int64_t begin, int64_t end) {
  const int64_t hw = pr.hw, strips = dmol_strips(hw);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / strips, j0 = (task % strips) * kLanes;
    if (j0 + kLanes < hw) {
      prefetch_rows(pr.params + b * pr.p * hw + j0 + kLanes, pr.p, hw, false);
      prefetch_rows(reinterpret_cast<const float*>(pr.x + b * pr.channels * hw + j0 + kLanes), pr.channels,
                    2 * hw, false);
    }
    const int64_t stop = j0 + kLanes < hw ? j0 + kLanes : hw;
    for (int64_t j = j0; j < stop; j += kWidth) {
      if (stop - j >= kWidth) {
        loss_strip<true>(pr, b, j, kWidth, nll);
      } else {
        loss_strip<false>(pr, b, j, int(stop - j), nll);
      }
    }
  }
}

GENFAST_INLINE void backward_tasks(const Problem& pr, const float* grad_nll, const float* nll, float* grad,
                                   int64_t begin, int64_t end) {
  const int64_t hw = pr.hw, strips = dmol_strips(hw);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / strips, j0 = (task % strips) * kLanes;
    if (j0 + kLanes < hw) {
      prefetch_rows(pr.params + b * pr.p * hw + j0 + kLanes, pr.p, hw, false);
      prefetch_rows(grad + b * pr.p * hw + j0 + kLanes, pr.p, hw, true);
    }
    const int64_t stop = j0 + kLanes < hw ? j0 + kLanes : hw;
    for (int64_t j = j0; j < stop; j += kWidth) {
      if (stop - j >= kWidth) {
        backward_strip<true>(pr, b, j, kWidth, grad_nll, nll, grad);
      } else {
        backward_strip<false>(pr, b, j, int(stop - j), grad_nll, nll, grad);
      }
    }
  }
}

}  // namespace GENFAST_DMOL_NAMESPACE
}  // namespace genfast
