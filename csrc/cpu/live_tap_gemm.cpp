#include "live_tap_gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>

#include "avx512_tiles.h"

namespace genfast {
namespace cpu {
namespace {

// Micro-tiles of MR rows (the broadcast operand: weights) x NV 16-float vectors of
// pixels. Layers with many output rows use 8 x 2; few rows (the input gradient of a
// first layer with 1-3 image channels) use MR = rows and wider tiles, so that the
// FMAs are not spent on padding rows.
// c[r, :cols] = (accumulate ? c : 0) + bias[r] + sum_k ap[k, r] * bp[k, :], r < rows.
// ap is a packed (K, MR) panel, bp a packed (K, 16 * NV) strip; MR * NV accumulators
// stay in registers for the whole reduction.
template <int MR, int NV>
__attribute__((target("avx512f"))) void micro_kernel(const float* ap, const float* bp,
                                                     int64_t kdim, float* c, int64_t ldc,
                                                     int rows, int cols, const float* bias,
                                                     bool accumulate) {
  constexpr int nr = 16 * NV;
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kdim; ++k) {
    __m512 b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(bp + k * nr + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(ap[k * MR + r]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
  __mmask16 mask[NV];
  for (int v = 0; v < NV; ++v) {
    const int left = cols - 16 * v;
    mask[v] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
  }
  for (int r = 0; r < rows; ++r) {
    float* cr = c + r * ldc;
    for (int v = 0; v < NV; ++v) {
      __m512 x = acc[r][v];
      if (bias != nullptr) x = _mm512_add_ps(x, _mm512_set1_ps(bias[r]));
      if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask[v], cr + 16 * v));
      _mm512_mask_storeu_ps(cr + 16 * v, mask[v], x);
    }
  }
}

// a (M, K) row-major -> panels (ceil(M / MR), K, MR), zero-padded rows.
template <int MR>
std::vector<float> pack_panels(const float* a, int64_t m, int64_t k) {
  const int64_t panels = (m + MR - 1) / MR;
  std::vector<float> packed(panels * k * MR, 0.f);
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* dst = packed.data() + p * k * MR;
      for (int64_t r = 0; r < MR && p * MR + r < m; ++r) {
        const float* row = a + (p * MR + r) * k;
        for (int64_t j = 0; j < k; ++j) dst[j * MR + r] = row[j];
      }
    }
  });
  return packed;
}

// Strip (K, 16 * NV) of the gather for pixels [p0, p0 + 16 * NV) of one sample image
// (C, H, W). A strip's pixels are consecutive in the plane, so tap t reads them at the
// constant offset sign * (dy * W + dx); only which lanes are inside the image depends on
// the tap, and not on the channel: one mask per (tap, vector), then one masked load and
// store per (channel, tap, vector) — no per-row copies.
template <int NV>
__attribute__((target("avx512f"))) void gather_strip(const float* image, int64_t c, int64_t h,
                                                     int64_t w, const LiveTaps& taps, int sign,
                                                     int64_t p0, float* strip) {
  constexpr int nr = 16 * NV;
  const int64_t plane = h * w;
  int32_t ys[nr], xs[nr];
  for (int l = 0; l < nr; ++l) {
    const int64_t p = p0 + l;
    // Pixels past the plane's end get a row no tap can bring back inside.
    ys[l] = p < plane ? static_cast<int32_t>(p / w) : INT32_MIN / 2;
    xs[l] = static_cast<int32_t>(p % w);
  }
  __mmask16 masks[kMaxLiveTaps][NV];
  int64_t offsets[kMaxLiveTaps];
  for (int t = 0; t < taps.count; ++t) {
    const int32_t dy = sign * taps.dy[t], dx = sign * taps.dx[t];
    offsets[t] = static_cast<int64_t>(dy) * w + dx;
    // 0 <= y + dy < h and 0 <= x + dx < w, as unsigned compares of (y + dy) < h.
    const __m512i vdy = _mm512_set1_epi32(dy), vdx = _mm512_set1_epi32(dx);
    const __m512i vh = _mm512_set1_epi32(static_cast<int32_t>(h));
    const __m512i vw = _mm512_set1_epi32(static_cast<int32_t>(w));
    for (int v = 0; v < NV; ++v) {
      const __m512i y = _mm512_add_epi32(_mm512_loadu_si512(ys + 16 * v), vdy);
      const __m512i x = _mm512_add_epi32(_mm512_loadu_si512(xs + 16 * v), vdx);
      masks[t][v] = _mm512_cmplt_epu32_mask(y, vh) & _mm512_cmplt_epu32_mask(x, vw);
    }
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    const float* base = image + ch * plane + p0;
    for (int t = 0; t < taps.count; ++t) {
      float* dst = strip + (ch * taps.count + t) * nr;
      // Masked-off lanes are not read (no fault), so the address may lie outside the plane.
      const float* s = base + offsets[t];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        _mm512_storeu_ps(dst + 16 * v, _mm512_maskz_loadu_ps(masks[t][v], s + 16 * v));
      }
    }
  }
}

}  // namespace

bool live_tap_gemm_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}

namespace {

template <int MR, int NV>
void live_tap_gemm_tiled(const float* a, int64_t m, const float* bias, const float* src,
                         int64_t n, int64_t c, int64_t h, int64_t w, const LiveTaps& taps,
                         int sign, float* out) {
  constexpr int64_t nr = 16 * NV;
  // Reduction block: a (kc, nr) slice of the strip is 32 KiB, reused from L1 by every panel.
  constexpr int64_t kc_max = 8192 / nr;
  const int64_t k = c * taps.count, plane = h * w;
  const int64_t panels = (m + MR - 1) / MR;
  const int64_t strips = (plane + nr - 1) / nr;
  const std::vector<float> packed_a = pack_panels<MR>(a, m, k);
  at::parallel_for(0, n * strips, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> strip(k * nr);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t sample = job / strips, p0 = (job % strips) * nr;
      gather_strip<NV>(src + sample * c * plane, c, h, w, taps, sign, p0, strip.data());
      const int cols = static_cast<int>(std::min<int64_t>(nr, plane - p0));
      for (int64_t k0 = 0; k0 < k; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, k - k0);
        for (int64_t i = 0; i < panels; ++i) {
          const int rows = static_cast<int>(std::min<int64_t>(MR, m - i * MR));
          const bool first = k0 == 0;
          micro_kernel<MR, NV>(packed_a.data() + (i * k + k0) * MR, strip.data() + k0 * nr, kc,
                               out + (sample * m + i * MR) * plane + p0, plane, rows, cols,
                               first && bias != nullptr ? bias + i * MR : nullptr, !first);
        }
      }
    }
  });
}

}  // namespace

void live_tap_gemm(const float* a, int64_t m, const float* bias, const float* src, int64_t n,
                   int64_t c, int64_t h, int64_t w, const LiveTaps& taps, int sign, float* out) {
  switch (m) {
    case 1: return live_tap_gemm_tiled<1, 8>(a, m, bias, src, n, c, h, w, taps, sign, out);
    case 2: return live_tap_gemm_tiled<2, 8>(a, m, bias, src, n, c, h, w, taps, sign, out);
    case 3: return live_tap_gemm_tiled<3, 8>(a, m, bias, src, n, c, h, w, taps, sign, out);
    case 4: return live_tap_gemm_tiled<4, 6>(a, m, bias, src, n, c, h, w, taps, sign, out);
    default: return live_tap_gemm_tiled<8, 2>(a, m, bias, src, n, c, h, w, taps, sign, out);
  }
}

namespace {

// The weight-gradient tile: kGo output channels x kGc columns of the packed live
// weight. Every column of a tile has the same tap row offset dy (columns are grouped by
// kernel row), so they share the range of output rows whose shifted input row exists.
constexpr int kGo = 4;
constexpr int kGc = 6;

struct GradWeightTile {
  int dy;
  int count;            // live columns; the rest repeat the last one and are not stored
  int64_t k[kGc];       // column of the packed weight: channel * T + tap
  int64_t channel[kGc];
  int dx[kGc];
};

// Columns (c, t) for channels [c0, c1), grouped by tap row, channel-major inside a row,
// so that a tile mostly reads one or two input planes (the taps of one row are shifts
// of the same plane).
void append_grad_weight_tiles(int64_t c0, int64_t c1, const LiveTaps& taps,
                              std::vector<GradWeightTile>& tiles) {
  for (int t0 = 0; t0 < taps.count;) {
    int t1 = t0;
    while (t1 < taps.count && taps.dy[t1] == taps.dy[t0]) ++t1;
    GradWeightTile tile{};
    tile.dy = taps.dy[t0];
    for (int64_t ch = c0; ch < c1; ++ch) {
      for (int t = t0; t < t1; ++t) {
        tile.k[tile.count] = ch * taps.count + t;
        tile.channel[tile.count] = ch;
        tile.dx[tile.count] = taps.dx[t];
        if (++tile.count == kGc) {
          tiles.push_back(tile);
          tile.count = 0;
        }
      }
    }
    if (tile.count > 0) {
      for (int j = tile.count; j < kGc; ++j) {
        tile.k[j] = tile.k[j - 1];
        tile.channel[j] = tile.channel[j - 1];
        tile.dx[j] = tile.dx[j - 1];
      }
      tiles.push_back(tile);
    }
    t0 = t1;
  }
}

inline __mmask16 lane_range(int64_t lo, int64_t hi) {
  lo = std::max<int64_t>(lo, 0);
  hi = std::min<int64_t>(hi, 16);
  if (hi <= lo) return 0;
  return static_cast<__mmask16>(((1u << hi) - 1) & ~((1u << lo) - 1));
}

// acc[i][j] = sum over pixels of g_i[y, x] * s_j[y + dy, x + dx_j] (zero outside the
// image), read straight from the planes with masked loads: no gathered copy. rows
// (of kGo) and tile.count (of kGc) entries are added to out[i * ldo + k_j].
__attribute__((target("avx512f"))) void grad_weight_tile(const float* const* g, int rows,
                                                         const float* image, int64_t h,
                                                         int64_t w, const GradWeightTile& tile,
                                                         float* out, int64_t ldo) {
  const int64_t plane = h * w;
  const float* s[kGc];
  for (int j = 0; j < kGc; ++j) s[j] = image + tile.channel[j] * plane + tile.dx[j];
  const int64_t y0 = std::max<int64_t>(0, -tile.dy), y1 = std::min<int64_t>(h, h - tile.dy);
  __m512 acc[kGo][kGc];
#pragma GCC unroll 4
  for (int i = 0; i < kGo; ++i)
#pragma GCC unroll 6
    for (int j = 0; j < kGc; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t x0 = 0; x0 < w; x0 += 16) {
    // Lanes whose pixel is in the row, and (per column) whose shifted pixel is too.
    __mmask16 ms[kGc];
    __mmask16 any = 0;
#pragma GCC unroll 6
    for (int j = 0; j < kGc; ++j) {
      ms[j] = lane_range(-tile.dx[j] - x0, std::min(w - x0, w - tile.dx[j] - x0));
      any |= ms[j];
    }
    if (any == 0) continue;
    const __mmask16 mg = lane_range(0, w - x0);
    for (int64_t y = y0; y < y1; ++y) {
      const int64_t go = y * w + x0, so = (y + tile.dy) * w + x0;
      __m512 gv[kGo];
#pragma GCC unroll 4
      for (int i = 0; i < kGo; ++i) gv[i] = _mm512_maskz_loadu_ps(mg, g[i] + go);
#pragma GCC unroll 6
      for (int j = 0; j < kGc; ++j) {
        // Masked-off lanes are not read (no fault), so s_j + so may point outside the plane.
        const __m512 sv = _mm512_maskz_loadu_ps(ms[j], s[j] + so);
#pragma GCC unroll 4
        for (int i = 0; i < kGo; ++i) acc[i][j] = _mm512_fmadd_ps(gv[i], sv, acc[i][j]);
      }
    }
  }
  // Reduced with compile-time indices only: a run-time index into acc would make GCC
  // keep the accumulators in memory, storing them on every step of the pixel loop.
  float sums[kGo][kGc];
#pragma GCC unroll 4
  for (int i = 0; i < kGo; ++i)
#pragma GCC unroll 6
    for (int j = 0; j < kGc; ++j) sums[i][j] = _mm512_reduce_add_ps(acc[i][j]);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < tile.count; ++j) out[i * ldo + tile.k[j]] += sums[i][j];
}

}  // namespace

void live_tap_grad_weight(const float* g, int64_t m, const float* src, int64_t n, int64_t c,
                          int64_t h, int64_t w, const LiveTaps& taps, float* out) {
  const int64_t k = c * taps.count, plane = h * w;
  if (k == 0) return;  // no live tap: an empty result
  // Input channels in blocks of ~256 KiB of planes, so that a block of one sample stays
  // in L2 while every block of output channels sweeps it.
  const int64_t c_block = std::clamp<int64_t>(65536 / std::max<int64_t>(plane, 1), 1, c);
  std::vector<GradWeightTile> tiles;
  std::vector<size_t> block_start{0};
  for (int64_t c0 = 0; c0 < c; c0 += c_block) {
    append_grad_weight_tiles(c0, std::min(c, c0 + c_block), taps, tiles);
    block_start.push_back(tiles.size());
  }
  const int64_t o_blocks = (m + kGo - 1) / kGo;
  // Threads own blocks of output channels (rows of out): no partial sums to add up,
  // and every entry is summed in the same order (sample by sample) at any thread count.
  // Per sample and channel block, a kGo-row block's gradient planes stay in L1 while
  // its tiles stream the input planes from L2.
  at::parallel_for(0, o_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = 0; s < n; ++s) {
      const float* image = src + s * c * plane;
      for (size_t cb = 0; cb + 1 < block_start.size(); ++cb) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t o0 = b * kGo;
          const int rows = static_cast<int>(std::min<int64_t>(kGo, m - o0));
          const float* gp[kGo];
          // Missing rows of the last block repeat its first row; they are not stored.
          for (int i = 0; i < kGo; ++i) gp[i] = g + (s * m + o0 + (i < rows ? i : 0)) * plane;
          for (size_t t = block_start[cb]; t < block_start[cb + 1]; ++t) {
            grad_weight_tile(gp, rows, image, h, w, tiles[t], out + o0 * k, k);
          }
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace genfast
