#include "live_tap_nhwc.h"

#include <algorithm>
#include <vector>

#include <ATen/Parallel.h>

#include "avx512_tiles.h"

namespace genfast {
namespace cpu {
namespace {

constexpr int kRows = 6;  // pixels (forward) or input channels (weight gradient) per tile
constexpr int kVecs = 4;  // 16-float vectors of output channels per tile: 24 accumulators

// Forward / input-gradient tile: RB pixels x CB vectors of output channels, summed over
// k input channels of ntaps taps. px[q * kRows + r]: pixel r's input channels at the q-th
// tap (a zero row where the tap falls outside the image); wt[q]: that tap's (k, ldw)
// matrix at this tile's first column. Starts from out (accumulate) or the bias.
template <int RB, int CB>
__attribute__((target("avx512f"))) void forward_tile(const float* const* px, const float* const* wt,
                                                     int ntaps, int64_t k, int64_t ldw,
                                                     const float* bias, bool accumulate, float* out,
                                                     int64_t ldo, __mmask16 last) {
  row_pointer_tile<RB, CB>(ntaps, px, kRows, [&](int q) { return wt[q]; }, k, ldw, bias, accumulate,
                           out, ldo, last);
}

using ForwardTile = void (*)(const float* const*, const float* const*, int, int64_t, int64_t,
                             const float*, bool, float*, int64_t, __mmask16);

template <int RB>
ForwardTile forward_tile_for(int cb) {
  switch (cb) {
    case 1: return &forward_tile<RB, 1>;
    case 2: return &forward_tile<RB, 2>;
    case 3: return &forward_tile<RB, 3>;
    default: return &forward_tile<RB, 4>;
  }
}

ForwardTile forward_tile_for(int rb, int cb) {
  switch (rb) {
    case 1: return forward_tile_for<1>(cb);
    case 2: return forward_tile_for<2>(cb);
    case 3: return forward_tile_for<3>(cb);
    case 4: return forward_tile_for<4>(cb);
    case 5: return forward_tile_for<5>(cb);
    default: return forward_tile_for<6>(cb);
  }
}

// Weight-gradient tile: RK input channels x CB vectors of output channels of one tap,
// accumulated in place in grad (rows ldg apart) over `count` pixels of one row pair:
// xs + j * k (the tap's source pixel, RK channels) and gs + j * m (its gradient).
template <int RK, int CB>
__attribute__((target("avx512f"))) void grad_weight_tile(const float* xs, int64_t k, const float* gs,
                                                         int64_t m, int64_t count, float* grad,
                                                         int64_t ldg, __mmask16 last) {
  __m512 acc[RK][CB];
#pragma GCC unroll 8
  for (int r = 0; r < RK; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < CB; ++v)
      acc[r][v] = _mm512_maskz_loadu_ps(v == CB - 1 ? last : __mmask16(0xFFFF), grad + r * ldg + 16 * v);
  for (int64_t j = 0; j < count; ++j) {
    __m512 b[CB];
#pragma GCC unroll 8
    for (int v = 0; v < CB; ++v)
      b[v] = _mm512_maskz_loadu_ps(v == CB - 1 ? last : __mmask16(0xFFFF), gs + j * m + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < RK; ++r) {
      const __m512 a = _mm512_set1_ps(xs[j * k + r]);
#pragma GCC unroll 8
      for (int v = 0; v < CB; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RK; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < CB; ++v)
      _mm512_mask_storeu_ps(grad + r * ldg + 16 * v, v == CB - 1 ? last : __mmask16(0xFFFF), acc[r][v]);
}

using GradWeightTile = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*,
                                int64_t, __mmask16);

template <int RK>
GradWeightTile grad_weight_tile_for(int cb) {
  switch (cb) {
    case 1: return &grad_weight_tile<RK, 1>;
    case 2: return &grad_weight_tile<RK, 2>;
    case 3: return &grad_weight_tile<RK, 3>;
    default: return &grad_weight_tile<RK, 4>;
  }
}

GradWeightTile grad_weight_tile_for(int rk, int cb) {
  switch (rk) {
    case 1: return grad_weight_tile_for<1>(cb);
    case 2: return grad_weight_tile_for<2>(cb);
    case 3: return grad_weight_tile_for<3>(cb);
    case 4: return grad_weight_tile_for<4>(cb);
    case 5: return grad_weight_tile_for<5>(cb);
    default: return grad_weight_tile_for<6>(cb);
  }
}

}  // namespace

void live_tap_nhwc(const float* src, int64_t n, int64_t h, int64_t w, int64_t k,
                   const float* mats, int64_t m, const float* bias, const LiveTaps& taps, int sign,
                   float* out) {
  // The tiles read weights and bias in place: their last vector's loads are masked.
  const int64_t col_tile = 16 * kVecs;
  // The reduction in blocks of taps x input channels whose weights (up to kBlockRows
  // rows of a 64-column tile: 32 KiB) stay in L1 while every tile of an output row uses
  // them; the tiles' partial sums wait in the output row (also in L1).
  constexpr int64_t kBlockRows = 128;
  struct Block { int t0, t1; int64_t k0, k1; };
  std::vector<Block> blocks;
  if (k >= kBlockRows) {
    for (int t = 0; t < taps.count; ++t)
      for (int64_t k0 = 0; k0 < k; k0 += kBlockRows) blocks.push_back({t, t + 1, k0, std::min(k, k0 + kBlockRows)});
  } else {
    const int per_block = static_cast<int>(kBlockRows / k);
    for (int t = 0; t < taps.count; t += per_block) blocks.push_back({t, std::min(taps.count, t + per_block), 0, k});
  }
  // One output row (sample, y) per task: every output element is written by one thread.
  at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
    const std::vector<float> zeros(k, 0.f);
    const float* px[kMaxLiveTaps * kRows];
    const float* wt[kMaxLiveTaps];
    int live[kMaxLiveTaps];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t s = row / h, y = row % h;
      float* orow = out + row * w * m;
      for (int64_t c0 = 0; c0 < m; c0 += col_tile) {
        const int64_t cols = std::min(col_tile, m - c0);
        const int cb = static_cast<int>((cols + 15) / 16);
        const __mmask16 last = tail_mask(cols - 16 * (cb - 1));
        const float* tile_bias = bias != nullptr ? bias + c0 : nullptr;
        bool started = false;
        for (const Block& b : blocks) {
          int ntaps = 0;  // the block's taps whose source row lies inside the image
          for (int t = b.t0; t < b.t1; ++t) {
            const int64_t sy = y + sign * taps.dy[t];
            if (sy >= 0 && sy < h) live[ntaps++] = t;
          }
          if (ntaps == 0) continue;
          for (int q = 0; q < ntaps; ++q) wt[q] = mats + (live[q] * k + b.k0) * m + c0;
          for (int64_t x0 = 0; x0 < w; x0 += kRows) {
            const int rb = static_cast<int>(std::min<int64_t>(kRows, w - x0));
            for (int q = 0; q < ntaps; ++q) {
              const int t = live[q];
              const float* srow = src + (s * h + y + sign * taps.dy[t]) * w * k + b.k0;
              for (int r = 0; r < rb; ++r) {
                const int64_t sx = x0 + r + sign * taps.dx[t];
                px[q * kRows + r] = sx >= 0 && sx < w ? srow + sx * k : zeros.data();
              }
            }
            forward_tile_for(rb, cb)(px, wt, ntaps, b.k1 - b.k0, m, tile_bias, started,
                                     orow + x0 * m + c0, m, last);
          }
          started = true;
        }
        if (!started) {  // no tap reads inside the image: the bias alone
          for (int64_t x0 = 0; x0 < w; x0 += kRows) {
            const int rb = static_cast<int>(std::min<int64_t>(kRows, w - x0));
            forward_tile_for(rb, cb)(px, wt, 0, 0, m, tile_bias, false, orow + x0 * m + c0, m, last);
          }
        }
      }
    }
  });
}

void live_tap_nhwc_grad_weight(const float* src, const float* g, int64_t n, int64_t h, int64_t w,
                               int64_t k, int64_t m, const LiveTaps& taps, float* grad) {
  const int64_t col_tile = 16 * kVecs;
  const int64_t row_tiles = (k + kRows - 1) / kRows, col_tiles = (m + col_tile - 1) / col_tile;
  const int64_t tiles = taps.count * row_tiles * col_tiles;
  std::fill(grad, grad + taps.count * k * m, 0.f);
  // Threads own tiles of the result and sweep all pixels a few image rows at a time
  // (the rows then stay in cache for every tile of the thread); each element is summed
  // in pixel order whatever the thread count.
  constexpr int64_t kChunkRows = 4;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = 0; r0 < n * h; r0 += kChunkRows) {
      const int64_t r1 = std::min(n * h, r0 + kChunkRows);
      for (int64_t tile = begin; tile < end; ++tile) {
        const int t = static_cast<int>(tile / (row_tiles * col_tiles));
        const int64_t k0 = (tile / col_tiles) % row_tiles * kRows, c0 = tile % col_tiles * col_tile;
        const int rk = static_cast<int>(std::min<int64_t>(kRows, k - k0));
        const int64_t cols = std::min(col_tile, m - c0);
        const int cb = static_cast<int>((cols + 15) / 16);
        const auto fn = grad_weight_tile_for(rk, cb);
        const __mmask16 last = tail_mask(cols - 16 * (cb - 1));
        const int64_t dy = taps.dy[t], dx = taps.dx[t];
        const int64_t j0 = std::max<int64_t>(0, -dx), j1 = std::min<int64_t>(w, w - dx);
        if (j0 >= j1) continue;
        float* gt = grad + (t * k + k0) * m + c0;
        for (int64_t row = r0; row < r1; ++row) {
          const int64_t s = row / h, y = row % h, sy = y + dy;
          if (sy < 0 || sy >= h) continue;
          fn(src + ((s * h + sy) * w + j0 + dx) * k + k0, k, g + (row * w + j0) * m + c0, m, j1 - j0,
             gt, m, last);
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace genfast
