// nearest_code on the CPU. Threads take tiles of 32 rows of x; each tile scans the
// whole packed codebook, 8 codes at a time, with a register-blocked micro-kernel
// whose epilogue folds the 8 x 32 scores into each row's best and second-best
// score (the argmin fused into the tile loop: no N x K buffer ever exists). Inputs
// accumulated in float32 (float32, float16, bfloat16) run an AVX-512 micro-kernel
// on CPUs that have it, everything else (float64, other CPUs, or
// GENFAST_DISABLE_AVX512=1 in the environment) a portable loop nest. Rows the
// filter cannot decide are resolved exactly; see csrc/nearest_code.h.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define GENFAST_HAS_AVX512_KERNEL 1
#endif

// The exact distances round every operation (csrc/nearest_code.h): no contraction
// into fused multiply-adds in this file (the AVX-512 intrinsics are explicit).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "../nearest_code.h"

namespace genfast {
namespace {

constexpr int kTileRows = 32;   // rows of x per tile: two 16-float vectors
constexpr int kGroupCodes = 8;  // codes per micro-kernel step

template <typename acc_t>
constexpr FilterPrecision filter_precision() {
  return std::is_same_v<acc_t, double> ? kDoubleFilter : kFloatFilter;
}

// The codebook as the filter reads it: panels of 8 codes, feature-major.
template <typename acc_t>
struct PackedCodebook {
  int64_t codes = 0, dim = 0, groups = 0;
  std::vector<acc_t> panels;    // [(g * dim + d) * 8 + c] = feature d of code 8 g + c
  std::vector<acc_t> sq_norms;  // ||e_k||^2 rounded; +inf for the padding codes
  std::vector<double> scale;    // 1, or the reciprocal norm in cosine mode
  double max_norm = 0.0;        // max ||e_k|| of the (normalised) codes
};

template <typename scalar_t>
bool row_is_finite(const scalar_t* row, int64_t dim) {
  for (int64_t d = 0; d < dim; ++d) {
    if (!std::isfinite(static_cast<double>(row[d]))) return false;
  }
  return true;
}

// Keeps the lowest index of a row holding NaN or infinity (-1: none yet).
void record_bad_row(std::atomic<int64_t>& first_bad, int64_t row) {
  int64_t seen = first_bad.load();
  while ((seen < 0 || row < seen) && !first_bad.compare_exchange_weak(seen, row)) {
  }
}

// Scale and norm of one row: (1, ||x||), or in cosine mode (1 / ||x||, ||x / ||x|| ||).
template <typename scalar_t>
std::pair<double, double> row_scale_and_norm(const scalar_t* row, int64_t dim, bool cosine) {
  const double sq = exact_sq_norm(row, dim);
  if (!cosine) return {1.0, std::sqrt(sq)};
  const double scale = reciprocal_norm(sq);
  double scaled = 0.0;
  for (int64_t d = 0; d < dim; ++d) {
    const double v = static_cast<double>(row[d]) * scale;
    scaled += v * v;
  }
  return {scale, std::sqrt(scaled)};
}

template <typename scalar_t, typename acc_t>
PackedCodebook<acc_t> pack_codebook(const scalar_t* codes, int64_t k, int64_t dim, bool cosine) {
  PackedCodebook<acc_t> cb;
  cb.codes = k;
  cb.dim = dim;
  cb.groups = (k + kGroupCodes - 1) / kGroupCodes;
  cb.panels.assign(cb.groups * dim * kGroupCodes, acc_t(0));
  cb.sq_norms.assign(cb.groups * kGroupCodes, std::numeric_limits<acc_t>::infinity());
  cb.scale.assign(k, 1.0);
  std::vector<double> norms(k);
  std::atomic<int64_t> first_bad{-1};
  const int64_t grain = std::max<int64_t>(64, (int64_t(1) << 16) / dim);
  at::parallel_for(0, k, grain, [&](int64_t begin, int64_t end) {
    for (int64_t code = begin; code < end; ++code) {
      const scalar_t* row = codes + code * dim;
      if (!row_is_finite(row, dim)) {
        record_bad_row(first_bad, code);
        continue;
      }
      const auto [scale, norm] = row_scale_and_norm(row, dim, cosine);
      cb.scale[code] = scale;
      norms[code] = norm;
      cb.sq_norms[code] = static_cast<acc_t>(norm * norm);
      acc_t* panel = cb.panels.data() + (code / kGroupCodes) * dim * kGroupCodes;
      for (int64_t d = 0; d < dim; ++d) {
        panel[d * kGroupCodes + code % kGroupCodes] =
            static_cast<acc_t>(static_cast<double>(row[d]) * scale);
      }
    }
  });
  TORCH_CHECK_VALUE(first_bad.load() < 0, "nearest_code: codebook contains NaN or infinity (code ",
              first_bad.load(), "); the nearest code is undefined for non-finite vectors");
  cb.max_norm = *std::max_element(norms.begin(), norms.end());
  return cb;
}

// Per row of a tile: the filter's best score, its code and the second-best score.
template <typename acc_t>
struct TileBest {
  acc_t best[kTileRows];
  acc_t second[kTileRows];
  int32_t index[kTileRows];
};

// The portable filter: scores of 8 codes x 32 rows per step, kept in an array the
// compiler vectorises over rows. NaN scores cannot occur with a finite tolerance.
template <typename acc_t>
void scan_tile_portable(const acc_t* xt, const PackedCodebook<acc_t>& cb, TileBest<acc_t>& out) {
  const int64_t dim = cb.dim;
  std::fill(out.best, out.best + kTileRows, std::numeric_limits<acc_t>::infinity());
  std::fill(out.second, out.second + kTileRows, std::numeric_limits<acc_t>::infinity());
  std::fill(out.index, out.index + kTileRows, 0);
  acc_t acc[kGroupCodes][kTileRows];
  for (int64_t g = 0; g < cb.groups; ++g) {
    const acc_t* panel = cb.panels.data() + g * dim * kGroupCodes;
    for (auto& row : acc) std::fill(row, row + kTileRows, acc_t(0));
    for (int64_t d = 0; d < dim; ++d) {
      const acc_t* xd = xt + d * kTileRows;
      for (int c = 0; c < kGroupCodes; ++c) {
        const acc_t e = panel[d * kGroupCodes + c];
        for (int r = 0; r < kTileRows; ++r) acc[c][r] += e * xd[r];
      }
    }
    for (int c = 0; c < kGroupCodes; ++c) {
      const acc_t norm = cb.sq_norms[g * kGroupCodes + c];
      const int32_t code = static_cast<int32_t>(g * kGroupCodes + c);
      for (int r = 0; r < kTileRows; ++r) {
        const acc_t s = norm - acc_t(2) * acc[c][r];
        if (s < out.best[r]) {
          out.second[r] = out.best[r];
          out.best[r] = s;
          out.index[r] = code;
        } else if (s < out.second[r]) {
          out.second[r] = s;
        }
      }
    }
  }
}

#ifdef GENFAST_HAS_AVX512_KERNEL
// Folds the scores s = norm - 2 acc of one code into 16 rows' best and second best,
// as scan_tile_portable does; strict < keeps the lowest index among equal scores.
__attribute__((target("avx512f"))) inline void fold_scores(__m512 acc, __m512 norm, __m512i code,
                                                           __m512& best, __m512& second,
                                                           __m512i& index) {
  const __m512 s = _mm512_fnmadd_ps(_mm512_set1_ps(2.f), acc, norm);
  const __mmask16 better = _mm512_cmp_ps_mask(s, best, _CMP_LT_OQ);
  const __m512 demoted = _mm512_mask_mov_ps(s, better, best);  // the score not kept as best
  second = _mm512_mask_mov_ps(second, _mm512_cmp_ps_mask(demoted, second, _CMP_LT_OQ), demoted);
  best = _mm512_mask_mov_ps(best, better, s);
  index = _mm512_mask_mov_epi32(index, better, code);
}

// The same filter as scan_tile_portable with 16 accumulators (8 codes x 32 rows)
// and the running best of the tile's 32 rows in registers.
__attribute__((target("avx512f"))) void scan_tile_avx512(const float* xt,
                                                         const PackedCodebook<float>& cb,
                                                         TileBest<float>& out) {
  const int64_t dim = cb.dim;
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 best0 = inf, best1 = inf, second0 = inf, second1 = inf;
  __m512i index0 = _mm512_setzero_si512(), index1 = _mm512_setzero_si512();
  for (int64_t g = 0; g < cb.groups; ++g) {
    const float* panel = cb.panels.data() + g * dim * kGroupCodes;
    __m512 acc[kGroupCodes][2];
#pragma GCC unroll 8
    for (int c = 0; c < kGroupCodes; ++c) acc[c][0] = acc[c][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; ++d) {
      const __m512 x0 = _mm512_loadu_ps(xt + d * kTileRows);
      const __m512 x1 = _mm512_loadu_ps(xt + d * kTileRows + 16);
#pragma GCC unroll 8
      for (int c = 0; c < kGroupCodes; ++c) {
        const __m512 e = _mm512_set1_ps(panel[d * kGroupCodes + c]);
        acc[c][0] = _mm512_fmadd_ps(e, x0, acc[c][0]);
        acc[c][1] = _mm512_fmadd_ps(e, x1, acc[c][1]);
      }
    }
#pragma GCC unroll 8
    for (int c = 0; c < kGroupCodes; ++c) {
      const __m512 norm = _mm512_set1_ps(cb.sq_norms[g * kGroupCodes + c]);
      const __m512i code = _mm512_set1_epi32(static_cast<int>(g * kGroupCodes + c));
      fold_scores(acc[c][0], norm, code, best0, second0, index0);
      fold_scores(acc[c][1], norm, code, best1, second1, index1);
    }
  }
  _mm512_storeu_ps(out.best, best0);
  _mm512_storeu_ps(out.best + 16, best1);
  _mm512_storeu_ps(out.second, second0);
  _mm512_storeu_ps(out.second + 16, second1);
  _mm512_storeu_si512(out.index, index0);
  _mm512_storeu_si512(out.index + 16, index1);
}
#endif

bool use_avx512() {
#ifdef GENFAST_HAS_AVX512_KERNEL
  static const bool supported = __builtin_cpu_supports("avx512f");
  // Read on every call so that tests can exercise the portable kernel.
  const char* disabled = std::getenv("GENFAST_DISABLE_AVX512");
  return supported && !(disabled != nullptr && disabled[0] == '1');
#else
  return false;
#endif
}

// The exact winner of an uncertain row: every code whose filter score is within
// `threshold` (best + 2 tau) is a candidate, and the candidate with the smallest
// d64, lowest index first, wins. A non-finite threshold makes every code one.
template <typename scalar_t, typename acc_t>
int64_t resolve_exactly(const scalar_t* x_row, double x_scale, const acc_t* x_packed,
                        const scalar_t* codes, const PackedCodebook<acc_t>& cb, double threshold) {
  const int64_t dim = cb.dim;
  const bool every_code = !std::isfinite(threshold);
  double best = std::numeric_limits<double>::infinity();
  int64_t best_code = -1;
  acc_t acc[kGroupCodes];
  for (int64_t g = 0; g < cb.groups; ++g) {
    const acc_t* panel = cb.panels.data() + g * dim * kGroupCodes;
    std::fill(acc, acc + kGroupCodes, acc_t(0));
    for (int64_t d = 0; d < dim; ++d) {
      for (int c = 0; c < kGroupCodes; ++c) acc[c] += x_packed[d] * panel[d * kGroupCodes + c];
    }
    for (int c = 0; c < kGroupCodes; ++c) {
      const int64_t code = g * kGroupCodes + c;
      if (code >= cb.codes) break;
      const double score = static_cast<double>(cb.sq_norms[code] - acc_t(2) * acc[c]);
      if (!every_code && score > threshold) continue;
      const double dist = exact_sq_distance(x_row, x_scale, codes + code * dim, cb.scale[code], dim);
      if (best_code < 0 || dist < best) {
        best = dist;
        best_code = code;
      }
    }
  }
  return best_code;
}

template <typename scalar_t, typename acc_t, typename out_t>
void nearest_code_kernel(const scalar_t* x, int64_t n, const scalar_t* codes,
                         const PackedCodebook<acc_t>& cb, bool cosine, int64_t* indices,
                         out_t* sq_dist) {
  const int64_t dim = cb.dim;
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  const bool vectorised = std::is_same_v<acc_t, float> && use_avx512();
  std::atomic<int64_t> first_bad{-1};
  // At least ~2^20 multiply-adds per thread: waking threads costs more below that.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / (kTileRows * cb.groups * kGroupCodes * dim));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xt(dim * kTileRows);  // the tile, feature-major
    std::vector<acc_t> x_row(dim);
    double scale[kTileRows], norm[kTileRows];
    TileBest<acc_t> tile_best;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t row0 = tile * kTileRows;
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, n - row0));
      std::fill(xt.begin(), xt.end(), acc_t(0));
      bool finite = true;
      for (int r = 0; r < rows; ++r) {
        const scalar_t* row = x + (row0 + r) * dim;
        if (!row_is_finite(row, dim)) {
          record_bad_row(first_bad, row0 + r);
          finite = false;
          break;
        }
        std::tie(scale[r], norm[r]) = row_scale_and_norm(row, dim, cosine);
        for (int64_t d = 0; d < dim; ++d) {
          xt[d * kTileRows + r] = static_cast<acc_t>(static_cast<double>(row[d]) * scale[r]);
        }
      }
      if (!finite) continue;
#ifdef GENFAST_HAS_AVX512_KERNEL
      if constexpr (std::is_same_v<acc_t, float>) {
        if (vectorised) {
          scan_tile_avx512(xt.data(), cb, tile_best);
        } else {
          scan_tile_portable(xt.data(), cb, tile_best);
        }
      } else {
        scan_tile_portable(xt.data(), cb, tile_best);
      }
#else
      scan_tile_portable(xt.data(), cb, tile_best);
#endif
      for (int r = 0; r < rows; ++r) {
        const scalar_t* row = x + (row0 + r) * dim;
        const double tolerance =
            filter_tolerance(norm[r], cb.max_norm, dim, filter_precision<acc_t>());
        const double best = static_cast<double>(tile_best.best[r]);
        int64_t code = tile_best.index[r];
        if (!filter_is_certain(best, static_cast<double>(tile_best.second[r]), tolerance)) {
          for (int64_t d = 0; d < dim; ++d) x_row[d] = xt[d * kTileRows + r];
          const int64_t exact = resolve_exactly(row, scale[r], x_row.data(), codes, cb, best + 2.0 * tolerance);
          if (exact >= 0) code = exact;  // (the exact winner is always a candidate)
        }
        indices[row0 + r] = code;
        sq_dist[row0 + r] = static_cast<out_t>(
            exact_sq_distance(row, scale[r], codes + code * dim, cb.scale[code], dim));
      }
    }
  });
  TORCH_CHECK_VALUE(first_bad.load() < 0, "nearest_code: x contains NaN or infinity (row ",
              first_bad.load(), "); the nearest code is undefined for non-finite vectors");
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x_in,
                                                    const at::Tensor& codebook_in, bool cosine) {
  check_nearest_code(x_in, codebook_in);
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), "nearest_code: x must be a CPU tensor, got ", x_in.device());
  const auto x = x_in.contiguous();
  const auto codes = codebook_in.contiguous();
  const int64_t n = x.size(0), k = codes.size(0), dim = codes.size(1);
  const auto dist_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto indices = at::empty({n}, x.options().dtype(at::kLong));
  auto sq_dist = at::empty({n}, x.options().dtype(dist_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "nearest_code_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cb = pack_codebook<scalar_t, acc_t>(codes.const_data_ptr<scalar_t>(), k, dim, cosine);
    if (n == 0) return;
    nearest_code_kernel<scalar_t, acc_t, acc_t>(x.const_data_ptr<scalar_t>(), n,
                                                codes.const_data_ptr<scalar_t>(), cb, cosine,
                                                indices.mutable_data_ptr<int64_t>(),
                                                sq_dist.mutable_data_ptr<acc_t>());
  });
  return {indices, sq_dist};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) { m.impl("nearest_code", &nearest_code_cpu); }

}  // namespace genfast
