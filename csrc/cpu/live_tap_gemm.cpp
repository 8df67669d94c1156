#include "live_tap_gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>
#include <immintrin.h>

namespace genfast {
namespace cpu {
namespace {

constexpr int kMr = 8;   // rows of the micro-tile (broadcast operand)
constexpr int kNr = 32;  // columns of the micro-tile: two 16-float vectors
constexpr int64_t kKc = 256;  // reduction block: a (256, 32) strip slice is 32 KiB

// c[r, :cols] = (accumulate ? c : 0) + bias[r] + sum_k ap[k, r] * bp[k, :], r < rows.
// ap is a packed (K, 8) panel, bp a packed (K, 32) strip; 16 accumulators stay in
// registers for the whole reduction.
__attribute__((target("avx512f"))) void micro_kernel(const float* ap, const float* bp,
                                                     int64_t kdim, float* c, int64_t ldc,
                                                     int rows, int cols, const float* bias,
                                                     bool accumulate) {
  __m512 acc[kMr][2];
#pragma GCC unroll 8
  for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kdim; ++k) {
    const __m512 b0 = _mm512_loadu_ps(bp + k * kNr);
    const __m512 b1 = _mm512_loadu_ps(bp + k * kNr + 16);
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) {
      const __m512 a = _mm512_set1_ps(ap[k * kMr + r]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
    }
  }
  const __mmask16 m0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32   ? 0xFFFF
                       : cols <= 16 ? 0
                                    : static_cast<__mmask16>((1u << (cols - 16)) - 1);
  for (int r = 0; r < rows; ++r) {
    float* cr = c + r * ldc;
    __m512 v0 = acc[r][0], v1 = acc[r][1];
    if (bias != nullptr) {
      const __m512 br = _mm512_set1_ps(bias[r]);
      v0 = _mm512_add_ps(v0, br);
      v1 = _mm512_add_ps(v1, br);
    }
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

// a (M, K) row-major -> panels (ceil(M / 8), K, 8), zero-padded rows.
std::vector<float> pack_panels(const float* a, int64_t m, int64_t k) {
  const int64_t panels = (m + kMr - 1) / kMr;
  std::vector<float> packed(panels * k * kMr, 0.f);
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* dst = packed.data() + p * k * kMr;
      for (int64_t r = 0; r < kMr && p * kMr + r < m; ++r) {
        const float* row = a + (p * kMr + r) * k;
        for (int64_t j = 0; j < k; ++j) dst[j * kMr + r] = row[j];
      }
    }
  });
  return packed;
}

// dst[0:len) = image row `row` (length w) shifted by ox, zero outside.
inline void shifted_row(const float* row, int64_t w, int64_t x, int64_t len, int64_t ox,
                        float* dst) {
  const int64_t lo = std::clamp<int64_t>(-ox, x, x + len);
  const int64_t hi = std::clamp<int64_t>(w - ox, lo, x + len);
  std::fill(dst, dst + (lo - x), 0.f);
  if (hi > lo) std::memcpy(dst + (lo - x), row + lo + ox, (hi - lo) * sizeof(float));
  std::fill(dst + (hi - x), dst + len, 0.f);
}

// Strip (K, 32) of the gather for pixels [p0, p0 + 32) of one sample image (C, H, W).
void gather_strip(const float* image, int64_t c, int64_t h, int64_t w, const LiveTaps& taps,
                  int sign, int64_t p0, float* strip) {
  const int64_t p_end = std::min(p0 + kNr, h * w);
  for (int64_t ch = 0; ch < c; ++ch) {
    const float* plane = image + ch * h * w;
    for (int t = 0; t < taps.count; ++t) {
      float* dst = strip + (ch * taps.count + t) * kNr;
      const int64_t oy = sign * taps.dy[t], ox = sign * taps.dx[t];
      // The strip's pixels as runs along image rows.
      for (int64_t p = p0; p < p_end;) {
        const int64_t y = p / w, x = p % w, len = std::min(w - x, p_end - p);
        const int64_t sy = y + oy;
        if (sy < 0 || sy >= h) {
          std::fill(dst + (p - p0), dst + (p - p0) + len, 0.f);
        } else {
          shifted_row(plane + sy * w, w, x, len, ox, dst + (p - p0));
        }
        p += len;
      }
      std::fill(dst + (p_end - p0), dst + kNr, 0.f);
    }
  }
}

// Strip (H*W, 32) of the transposed gather for columns [k0, k0 + 32) of one sample.
void gather_strip_transposed(const float* image, int64_t c, int64_t h, int64_t w,
                             const LiveTaps& taps, int64_t k0, float* strip) {
  const int64_t k_total = c * taps.count;
  float row_buf[1024];
  for (int lane = 0; lane < kNr; ++lane) {
    const int64_t k = k0 + lane;
    if (k >= k_total) {
      for (int64_t p = 0; p < h * w; ++p) strip[p * kNr + lane] = 0.f;
      continue;
    }
    const float* plane = image + (k / taps.count) * h * w;
    const int t = static_cast<int>(k % taps.count);
    const int64_t oy = taps.dy[t], ox = taps.dx[t];
    for (int64_t y = 0; y < h; ++y) {
      const int64_t sy = y + oy;
      for (int64_t x0 = 0; x0 < w; x0 += 1024) {
        const int64_t len = std::min<int64_t>(1024, w - x0);
        if (sy < 0 || sy >= h) {
          std::fill(row_buf, row_buf + len, 0.f);
        } else {
          shifted_row(plane + sy * w, w, x0, len, ox, row_buf);
        }
        float* dst = strip + (y * w + x0) * kNr + lane;
        for (int64_t x = 0; x < len; ++x) dst[x * kNr] = row_buf[x];
      }
    }
  }
}

}  // namespace

bool live_tap_gemm_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}

void live_tap_gemm(const float* a, int64_t m, const float* bias, const float* src, int64_t n,
                   int64_t c, int64_t h, int64_t w, const LiveTaps& taps, int sign, float* out) {
  const int64_t k = c * taps.count, plane = h * w;
  const int64_t panels = (m + kMr - 1) / kMr;
  const int64_t strips = (plane + kNr - 1) / kNr;
  const std::vector<float> packed_a = pack_panels(a, m, k);
  at::parallel_for(0, n * strips, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> strip(k * kNr);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t sample = job / strips, p0 = (job % strips) * kNr;
      gather_strip(src + sample * c * plane, c, h, w, taps, sign, p0, strip.data());
      const int cols = static_cast<int>(std::min<int64_t>(kNr, plane - p0));
      // Blocks of kKc reduction steps keep the strip's slice in L1 across all panels.
      for (int64_t k0 = 0; k0 < k; k0 += kKc) {
        const int64_t kc = std::min(kKc, k - k0);
        for (int64_t i = 0; i < panels; ++i) {
          const int rows = static_cast<int>(std::min<int64_t>(kMr, m - i * kMr));
          const bool first = k0 == 0;
          micro_kernel(packed_a.data() + (i * k + k0) * kMr, strip.data() + k0 * kNr, kc,
                       out + (sample * m + i * kMr) * plane + p0, plane, rows, cols,
                       first && bias != nullptr ? bias + i * kMr : nullptr, !first);
        }
      }
    }
  });
}

void live_tap_gemm_transposed(const float* g, int64_t m, const float* src, int64_t n, int64_t c,
                              int64_t h, int64_t w, const LiveTaps& taps, float* out) {
  const int64_t k = c * taps.count, plane = h * w;
  const int64_t panels = (m + kMr - 1) / kMr;
  const int64_t strips = (k + kNr - 1) / kNr;
  if (strips == 0) return;  // no live tap: an empty result
  // Few strips (a first layer of 1-3 channels) would leave threads idle: split the
  // samples into chunks too, each summing into its own partial result, and add the
  // partials in a fixed order afterwards.
  const int64_t chunks =
      std::clamp<int64_t>((2 * at::get_num_threads() + strips - 1) / strips, 1, n);
  std::vector<float> partial((chunks - 1) * m * k);
  std::vector<std::vector<float>> packed_g(n);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) packed_g[s] = pack_panels(g + s * m * plane, m, plane);
  });
  at::parallel_for(0, strips * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> strip(plane * kNr);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t k0 = (job % strips) * kNr, chunk = job / strips;
      const int cols = static_cast<int>(std::min<int64_t>(kNr, k - k0));
      float* dst = chunk == 0 ? out : partial.data() + (chunk - 1) * m * k;
      const int64_t first = chunk * n / chunks, last = (chunk + 1) * n / chunks;
      for (int64_t s = first; s < last; ++s) {
        gather_strip_transposed(src + s * c * plane, c, h, w, taps, k0, strip.data());
        for (int64_t p0 = 0; p0 < plane; p0 += kKc) {
          const int64_t pc = std::min(kKc, plane - p0);
          for (int64_t i = 0; i < panels; ++i) {
            const int rows = static_cast<int>(std::min<int64_t>(kMr, m - i * kMr));
            micro_kernel(packed_g[s].data() + (i * plane + p0) * kMr, strip.data() + p0 * kNr,
                         pc, dst + i * kMr * k + k0, k, rows, cols, nullptr,
                         s > first || p0 > 0);
          }
        }
      }
    }
  });
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const float* part = partial.data() + (chunk - 1) * m * k;
    at::parallel_for(0, m * k, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) out[e] += part[e];
    });
  }
}

}  // namespace cpu
}  // namespace genfast
