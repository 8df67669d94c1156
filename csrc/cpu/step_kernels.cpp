#include "step_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <immintrin.h>

#include "../sampling_math.h"

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

// ---- AVX-512 float32 -------------------------------------------------------------

// A (MR rows) x (16 * NV columns) block; the last vector of columns is masked by `last`.
template <int MR, int NV>
__attribute__((target("avx512f"))) void gemm_block_avx512(int taps, const float* const* x,
                                                          int64_t kdim, const float* w,
                                                          int64_t ldw, __mmask16 last,
                                                          const float* bias, float* y,
                                                          int64_t ldy) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m = v == NV - 1 ? last : __mmask16(0xFFFF);
    const __m512 b = bias != nullptr ? _mm512_maskz_loadu_ps(m, bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][v] = b;
  }
  for (int tap = 0; tap < taps; ++tap) {
    const float* xr[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) xr[r] = x[tap * kRows + r];
    const float* wt = w + tap * kdim * ldw;
    for (int64_t c = 0; c < kdim; ++c) {
      const float* wr = wt + c * ldw;
      __m512 wv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        wv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, wr + 16 * v) : _mm512_loadu_ps(wr + 16 * v);
      }
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const __m512 xb = _mm512_set1_ps(xr[r][c]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      _mm512_mask_storeu_ps(y + r * ldy + 16 * v, v == NV - 1 ? last : __mmask16(0xFFFF), acc[r][v]);
    }
  }
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

bool has_avx512() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}

}  // namespace

template <typename T>
MathKernels<T> math_kernels() {
  return {&gemm_generic<T>, &gate_generic<T>};
}

template <>
MathKernels<float> math_kernels<float>() {
  if (has_avx512()) return {&gemm_avx512, &gate_avx512};
  return {&gemm_generic<float>, &gate_generic<float>};
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
