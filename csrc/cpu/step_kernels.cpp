#include "step_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "../sampling_math.h"
#include "../transformer_decode_step.h"
#include "avx512_tiles.h"
#include "fast_math.h"

namespace genfast {
namespace {


template <typename T>
void gemm_generic(int rows, int taps, const T* const* x, int64_t kdim, const T* w, int64_t ldw,
                  int64_t cols, const T* bias, T* y, int64_t ldy) {
  for (int r = 0; r < rows; ++r) {
    T* __restrict yr = y + r * ldy;
    for (int64_t o = 0; o < cols; ++o) yr[o] = bias != nullptr ? bias[o] : T(0);
    for (int tap = 0; tap < taps; ++tap) {
      const T* xr = x[tap * kRows + r];
      for (int64_t c = 0; c < kdim; ++c) {
        const T v = xr[c];
        const T* __restrict wr = w + (tap * kdim + c) * ldw;
        for (int64_t o = 0; o < cols; ++o) yr[o] += v * wr[o];
      }
    }
  }
}

template <typename T>
void gate_generic(const T* z, const T* bias, int64_t half, T* a) {
  for (int64_t i = 0; i < half; ++i) a[i] = gated_unit(z[i] + bias[i], z[half + i] + bias[half + i]);
}

// sum_i a[i] b[i] in kLanes partial sums, so that the compiler vectorises it (a single
// running sum is a serial dependency chain it may not reorder).
constexpr int kLanes = 16;

template <typename T>
T dot_product(const T* __restrict a, const T* __restrict b, int64_t n) {
  T part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) part[j] += a[i + j] * b[i + j];
  }
  for (; i < n; ++i) part[0] += a[i] * b[i];
  T sum = 0;
  for (int j = 0; j < kLanes; ++j) sum += part[j];
  return sum;
}

template <typename T>
void attend_generic(const T* q, const T* keys, const T* values, int64_t t_len, int64_t hd, T scale,
                    T* scores, T* out) {
  T best = -INFINITY;
  for (int64_t t = 0; t < t_len; ++t) {
    scores[t] = dot_product(q, keys + t * hd, hd) * scale;
    best = std::max(best, scores[t]);
  }
  T sum = 0;
  for (int64_t t = 0; t < t_len; ++t) {
    scores[t] = fast_exp(scores[t] - best);
    sum += scores[t];
  }
  std::fill(out, out + hd, T(0));
  for (int64_t t = 0; t < t_len; ++t) {
    const T a = scores[t] / sum;
    const T* __restrict v = values + t * hd;
    for (int64_t i = 0; i < hd; ++i) out[i] += a * v[i];
  }
}

template <typename T>
void gelu_generic(T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = gelu_value(x[i]);
}

// ---- AVX-512 float32 -------------------------------------------------------------

// A (MR rows) x (16 * NV columns) block; the last vector of columns is masked by `last`.
template <int MR, int NV>
__attribute__((target("avx512f"))) void gemm_block_avx512(int taps, const float* const* x,
                                                          int64_t kdim, const float* w,
                                                          int64_t ldw, __mmask16 last,
                                                          const float* bias, float* y,
                                                          int64_t ldy) {
  cpu::row_pointer_tile<MR, NV>(taps, x, kRows, [&](int t) { return w + t * kdim * ldw; }, kdim, ldw,
                                bias, false, y, ldy, last);
}

// Column blocks of up to 16 * kMaxVectors / MR floats: with one row (batch 1) a block
// covers 256 columns, so each weight row is read in one contiguous sweep.
constexpr int kMaxVectors = 16;

template <int MR, int NV>
__attribute__((target("avx512f"))) void gemm_block_dispatch(int nv, int taps, const float* const* x,
                                                             int64_t kdim, const float* w,
                                                             int64_t ldw, __mmask16 last,
                                                             const float* bias, float* y,
                                                             int64_t ldy) {
  if constexpr (NV > 1) {
    if (nv < NV) {
      gemm_block_dispatch<MR, NV - 1>(nv, taps, x, kdim, w, ldw, last, bias, y, ldy);
      return;
    }
  }
  gemm_block_avx512<MR, NV>(taps, x, kdim, w, ldw, last, bias, y, ldy);
}

template <int MR>
__attribute__((target("avx512f"))) void gemm_rows_avx512(int taps, const float* const* x,
                                                         int64_t kdim, const float* w, int64_t ldw,
                                                         int64_t cols, const float* bias, float* y,
                                                         int64_t ldy) {
  constexpr int kVectors = kMaxVectors / MR;
  for (int64_t o0 = 0; o0 < cols; o0 += 16 * kVectors) {
    const int64_t width = std::min<int64_t>(16 * kVectors, cols - o0);
    const int rem = static_cast<int>(width % 16);
    const __mmask16 last = rem != 0 ? static_cast<__mmask16>((1u << rem) - 1) : __mmask16(0xFFFF);
    gemm_block_dispatch<MR, kVectors>(static_cast<int>((width + 15) / 16), taps, x, kdim, w + o0,
                                      ldw, last, bias != nullptr ? bias + o0 : nullptr, y + o0, ldy);
  }
}

void gemm_avx512(int rows, int taps, const float* const* x, int64_t kdim, const float* w,
                 int64_t ldw, int64_t cols, const float* bias, float* y, int64_t ldy) {
  switch (rows) {
    case 1: gemm_rows_avx512<1>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
    case 2: gemm_rows_avx512<2>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
    case 3: gemm_rows_avx512<3>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
    default: gemm_rows_avx512<4>(taps, x, kdim, w, ldw, cols, bias, y, ldy); break;
  }
}

// e^x for float32 lanes: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two parts so
// that n ln2 is exact), e^r by its degree-7 Taylor polynomial (error below 1 ulp),
// then scaled by 2^n. Inputs are clamped to [-87, 88], where e^x is a normal float.
__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// tanh(t) = 2 / (1 + e^-2t) - 1 and sigmoid(s) = 1 / (1 + e^-s): absolute error ~1e-7.
__attribute__((target("avx512f"))) void gate_avx512(const float* z, const float* bias,
                                                    int64_t half, float* a) {
  const __m512 one = _mm512_set1_ps(1.f), two = _mm512_set1_ps(2.f);
  for (int64_t i = 0; i < half; i += 16) {
    const int64_t left = half - i;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    const __m512 t = _mm512_add_ps(_mm512_maskz_loadu_ps(m, z + i), _mm512_maskz_loadu_ps(m, bias + i));
    const __m512 s = _mm512_add_ps(_mm512_maskz_loadu_ps(m, z + half + i),
                                   _mm512_maskz_loadu_ps(m, bias + half + i));
    const __m512 th = _mm512_sub_ps(
        _mm512_div_ps(two, _mm512_add_ps(one, exp_avx512(_mm512_mul_ps(t, _mm512_set1_ps(-2.f))))), one);
    const __m512 sg =
        _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), s))));
    _mm512_mask_storeu_ps(a + i, m, _mm512_mul_ps(th, sg));
  }
}

// Horizontal max and sum of a vector through memory (GCC 12 warns on _mm512_reduce_*).
__attribute__((target("avx512f"))) inline float lane_max(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  return *std::max_element(lanes, lanes + 16);
}

__attribute__((target("avx512f"))) inline float lane_sum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float sum = 0.f;
  for (float x : lanes) sum += x;
  return sum;
}

__attribute__((target("avx512f"))) inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// The 16 sums of v[0..15]'s lanes as one vector, sum j in lane j: halving the number
// of vectors at each of four levels (256-bit halves, 128-bit quarters, then pairs and
// single lanes inside the quarters) and a final permutation back into order.
__attribute__((target("avx512f"))) inline __m512 transpose_sum16(__m512 v[16]) {
  __m512 x[8], z[4], u[2];
  for (int i = 0; i < 8; ++i) {  // x[i]: sums j = 2i (low half) and 2i + 1 (high half), 8 parts each
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // z[i]: sums 4i .. 4i + 3, one per quarter, 4 parts each
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xDD));
  }
  for (int i = 0; i < 2; ++i) {  // quarter k of u[i]: parts of sums k + 8i and k + 8i + 4
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(z[2 * i], z[2 * i + 1]), _mm512_unpackhi_ps(z[2 * i], z[2 * i + 1]));
  }
  // Quarter k: the sums k, k + 8, k + 4, k + 12.
  const __m512 r = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15), r);
}

// attend for float32: scores 16 positions at a time (one vector of products per
// position, then transpose_sum16), the softmax on vectors, and the weighted sum of the
// values with 64 output columns held in registers across all positions.
__attribute__((target("avx512f"))) void attend_avx512(const float* q, const float* keys, const float* values,
                                                      int64_t t_len, int64_t hd, float scale, float* scores,
                                                      float* out) {
  __m512 best = _mm512_set1_ps(-INFINITY);
  for (int64_t t0 = 0; t0 < t_len; t0 += 16) {
    const int64_t n = std::min<int64_t>(16, t_len - t0);
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) {
      acc[j] = _mm512_setzero_ps();
      if (j >= n) continue;
      const float* k = keys + (t0 + j) * hd;
      for (int64_t c = 0; c < hd; c += 16) {
        const __mmask16 m = tail_mask(hd - c);
        acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + c), _mm512_maskz_loadu_ps(m, k + c), acc[j]);
      }
    }
    const __mmask16 m = tail_mask(n);
    const __m512 s = _mm512_mul_ps(transpose_sum16(acc), _mm512_set1_ps(scale));
    _mm512_mask_storeu_ps(scores + t0, m, s);
    best = _mm512_mask_max_ps(best, m, best, s);
  }
  const __m512 top = _mm512_set1_ps(lane_max(best));
  __m512 total = _mm512_setzero_ps();
  for (int64_t t0 = 0; t0 < t_len; t0 += 16) {
    const __mmask16 m = tail_mask(t_len - t0);
    const __m512 p = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + t0), top));
    _mm512_mask_storeu_ps(scores + t0, m, p);
    total = _mm512_mask_add_ps(total, m, total, p);
  }
  const __m512 inv = _mm512_set1_ps(1.f / lane_sum(total));
  for (int64_t c0 = 0; c0 < hd; c0 += 64) {
    __mmask16 m[4];
    __m512 o[4];
    for (int v = 0; v < 4; ++v) {
      m[v] = c0 + 16 * v < hd ? tail_mask(hd - c0 - 16 * v) : __mmask16(0);
      o[v] = _mm512_setzero_ps();
    }
    for (int64_t t = 0; t < t_len; ++t) {
      const __m512 a = _mm512_set1_ps(scores[t]);
      const float* row = values + t * hd + c0;
      for (int v = 0; v < 4; ++v) o[v] = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[v], row + 16 * v), o[v]);
    }
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(out + c0 + 16 * v, m[v], _mm512_mul_ps(o[v], inv));
  }
}

// GELU(x) = x Phi(x) = x / 2 (1 + erf(x / sqrt 2)), erf(z) for z >= 0 by Abramowitz and
// Stegun 7.1.26: 1 - t (a1 + t (a2 + ... a5)) e^(-z^2), t = 1 / (1 + p z), absolute
// error below 1.5e-7; odd symmetry for z < 0.
__attribute__((target("avx512f"))) void gelu_avx512(float* x, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.f), half = _mm512_set1_ps(0.5f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 z = _mm512_abs_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)));
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), one));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    const __m512 tail = _mm512_mul_ps(p, exp_avx512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z)));
    // 1 + erf: 2 - tail above zero, tail below (erf(-z) = tail - 1).
    const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 one_plus_erf = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(2.f), tail), negative, tail);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_mul_ps(half, v), one_plus_erf));
  }
}

bool has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}

}  // namespace

template <typename T>
MathKernels<T> math_kernels() {
  return {&gemm_generic<T>, &gate_generic<T>, &attend_generic<T>, &gelu_generic<T>};
}

template <>
MathKernels<float> math_kernels<float>() {
  if (has_avx512()) return {&gemm_avx512, &gate_avx512, &attend_avx512, &gelu_avx512};
  return {&gemm_generic<float>, &gate_generic<float>, &attend_generic<float>, &gelu_generic<float>};
}

// The shared serial draw (sampling_math.h), which the CUDA kernels reproduce bit for bit.
template <typename T>
int64_t draw(const T* logits, int64_t levels, double u, double temperature, double* cdf) {
  return inverse_cdf_draw(logits, levels, u, temperature, cdf);
}

template MathKernels<double> math_kernels<double>();
template int64_t draw<float>(const float*, int64_t, double, double, double*);
template int64_t draw<double>(const double*, int64_t, double, double, double*);

}  // namespace genfast
