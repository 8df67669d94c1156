// AVX-512 float32 pieces shared by the CPU kernels: <immintrin.h> behind the one
// warning GCC 12's headers raise, and the register tile of the GEMMs whose left operand
// is a set of row pointers per tap (the cached samplers' step products in
// step_kernels.cpp, the channels-last live-tap convolution in live_tap_nhwc.cpp).
// Include only from files that call these from functions compiled with
// __attribute__((target("avx512f"))).
#pragma once

#include <cstdint>

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized (an undefined pass-through operand
// inside _mm512_reduce_add_ps): a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace genfast {
namespace cpu {

// The first `left` lanes (all 16 when left >= 16).
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// y[r, 16 v + i] for r < MR, v < NV (rows ldy apart; the last vector under `last`) =
//   (accumulate ? y : bias, or 0 without bias)
//   + sum over t < taps, c < kdim of x[t * x_stride + r][c] * weight(t)[c * ldw + 16 v + i].
// MR * NV accumulators stay in registers for the whole reduction; weight(t) gives tap t's
// (kdim, ldw) matrix at the tile's first column.
template <int MR, int NV, typename WeightAt>
__attribute__((target("avx512f"), always_inline)) inline void row_pointer_tile(
    int taps, const float* const* x, int x_stride, const WeightAt& weight, int64_t kdim,
    int64_t ldw, const float* bias, bool accumulate, float* y, int64_t ldy, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m = v == NV - 1 ? last : __mmask16(0xFFFF);
    const __m512 b = bias != nullptr ? _mm512_maskz_loadu_ps(m, bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(m, y + r * ldy + 16 * v) : b;
  }
  for (int t = 0; t < taps; ++t) {
    const float* xr[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) xr[r] = x[t * x_stride + r];
    const float* wt = weight(t);
#pragma GCC unroll 4
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

}  // namespace cpu
}  // namespace genfast
