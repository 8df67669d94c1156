// nearest_code on CUDA, in three steps and without any N x K buffer:
//  1. prepare_rows (once for the codebook, once for x): each row's scale (1, or its
//     reciprocal norm in cosine mode) and norm in float64, and the first row holding
//     NaN or infinity, checked on the host before the search;
//  2. filter: blocks take 64 rows and scan every code in tiles of 64 staged in
//     shared memory (float32 from float32, float16 or bfloat16, float32 fused
//     multiply-adds); each thread keeps its 4 rows' best and second-best score
//     over its 4 codes of each tile, and the 16 threads sharing rows merge them in
//     a fixed order. A row whose winner the error bound cannot prove is marked and
//     appended to a list;
//  3. finish: one thread per certain row computes the exact float64 distance of its
//     winner, and one warp per listed row resolves it exactly (csrc/nearest_code.h)
//     and computes its winner's distance.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../nearest_code.h"

namespace genfast {
namespace {

constexpr int kRows = 64;      // rows of x per block
constexpr int kCodes = 64;     // codes per shared-memory tile
constexpr int kStep = 16;      // features per shared-memory stage
constexpr int kThreads = 256;  // 16 x 16 threads, each 4 rows x 4 codes
constexpr int kWarpsPerBlock = 8;
constexpr int64_t kMaxBlocks = 65535 * 16;
constexpr unsigned long long kNoBadRow = std::numeric_limits<unsigned long long>::max();

unsigned blocks_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, kMaxBlocks)));
}

// float32, float16 and bfloat16 (the kernels accumulate in float32).
#define GENFAST_DISPATCH_FILTER_TYPES(TYPE, NAME, ...)               \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// Per row: scale, norm of the scaled row, its square rounded to float32 (for the
// codes' filter scores), and the lowest row index holding NaN or infinity.
template <typename scalar_t>
__global__ void prepare_rows_kernel(const scalar_t* __restrict__ v, int64_t rows, int64_t dim,
                                    bool cosine, double* __restrict__ scale,
                                    double* __restrict__ norm, float* __restrict__ sq_norm,
                                    unsigned long long* __restrict__ first_bad) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    const scalar_t* row = v + r * dim;
    bool finite = true;
    for (int64_t d = 0; d < dim; ++d) finite = finite && isfinite(static_cast<double>(row[d]));
    if (!finite) {
      atomicMin(first_bad, static_cast<unsigned long long>(r));
      continue;
    }
    const double sq = exact_sq_norm(row, dim);
    double s = 1.0, scaled = sq;
    if (cosine) {
      s = reciprocal_norm(sq);
      scaled = 0.0;
      for (int64_t d = 0; d < dim; ++d) {
        const double value = static_cast<double>(row[d]) * s;
        scaled += value * value;
      }
    }
    scale[r] = s;
    norm[r] = sqrt(scaled);
    if (sq_norm != nullptr) sq_norm[r] = static_cast<float>(scaled);
  }
}

// One element as the filter sees it: float32, scaled in cosine mode.
template <typename scalar_t>
__device__ __forceinline__ float filter_value(scalar_t v, double scale, bool cosine) {
  return cosine ? static_cast<float>(static_cast<double>(v) * scale) : static_cast<float>(v);
}

// Merges a (best, second, index) candidate into a running one; ties of best go to
// the lower index (and make the row uncertain, since then second == best).
__device__ __forceinline__ void merge_best(float& best, float& second, int& index, float other_best,
                                           float other_second, int other_index) {
  if (other_best < best || (other_best == best && other_index < index)) {
    second = fminf(best, other_second);
    best = other_best;
    index = other_index;
  } else {
    second = fminf(second, other_best);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    filter_kernel(const scalar_t* __restrict__ x, const double* __restrict__ x_scale,
                  const double* __restrict__ x_norm, int64_t n, const scalar_t* __restrict__ codes,
                  const double* __restrict__ code_scale, const float* __restrict__ code_sq_norm,
                  const double* __restrict__ max_code_norm, int64_t k, int64_t dim, bool cosine,
                  int64_t* __restrict__ index_out, float* __restrict__ best_out,
                  bool* __restrict__ uncertain_out, int64_t* __restrict__ uncertain_rows,
                  unsigned long long* __restrict__ uncertain_count) {
  // +2: the stores walk the features fastest (16 lanes per row, two rows per warp);
  // a row stride of 66 words puts the 32 lanes on 32 distinct banks.
  __shared__ float xs[kStep][kRows + 2];
  __shared__ float es[kStep][kCodes + 2];
  __shared__ float merge_best_s[kRows][16 + 1];
  __shared__ float merge_second_s[kRows][16 + 1];
  __shared__ int merge_index_s[kRows][16 + 1];
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  const int64_t row_tiles = (n + kRows - 1) / kRows;
  for (int64_t tile = blockIdx.x; tile < row_tiles; tile += gridDim.x) {
    const int64_t row0 = tile * kRows;
    float best[4], second[4];
    int index[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      best[i] = second[i] = INFINITY;
      index[i] = 0;
    }
    for (int64_t c0 = 0; c0 < k; c0 += kCodes) {
      float acc[4][4] = {};
      for (int64_t d0 = 0; d0 < dim; d0 += kStep) {
        // Consecutive threads read consecutive features of a row.
        for (int i = tid; i < kRows * kStep; i += kThreads) {
          const int r = i / kStep, dd = i % kStep;
          const int64_t row = row0 + r, d = d0 + dd;
          xs[dd][r] = row < n && d < dim ? filter_value(x[row * dim + d], x_scale[row], cosine) : 0.f;
        }
        for (int i = tid; i < kCodes * kStep; i += kThreads) {
          const int c = i / kStep, dd = i % kStep;
          const int64_t code = c0 + c, d = d0 + dd;
          es[dd][c] = code < k && d < dim
                          ? filter_value(codes[code * dim + d], code_scale[code], cosine)
                          : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int dd = 0; dd < kStep; ++dd) {
          float a[4], b[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = xs[dd][tr * 4 + i];
#pragma unroll
          for (int j = 0; j < 4; ++j) b[j] = es[dd][tc + 16 * j];  // 16 consecutive words
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
      }
      // Codes in increasing order, so strict < keeps the lowest index of equal scores.
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t code = c0 + tc + 16 * j;
        if (code >= k) continue;
        const float sq = code_sq_norm[code];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float s = fmaf(-2.f, acc[i][j], sq);
          if (s < best[i]) {
            second[i] = best[i];
            best[i] = s;
            index[i] = static_cast<int>(code);
          } else {
            second[i] = fminf(second[i], s);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      merge_best_s[tr * 4 + i][tc] = best[i];
      merge_second_s[tr * 4 + i][tc] = second[i];
      merge_index_s[tr * 4 + i][tc] = index[i];
    }
    __syncthreads();
    if (tid < kRows && row0 + tid < n) {
      const int64_t row = row0 + tid;
      float b = INFINITY, s = INFINITY;
      int idx = 0;
      for (int t = 0; t < 16; ++t) {
        merge_best(b, s, idx, merge_best_s[tid][t], merge_second_s[tid][t], merge_index_s[tid][t]);
      }
      const double tolerance = filter_tolerance(x_norm[row], *max_code_norm, dim, kFloatFilter);
      const bool uncertain = !filter_is_certain(b, s, tolerance);
      index_out[row] = idx;
      best_out[row] = b;
      uncertain_out[row] = uncertain;
      // The list's order varies from run to run; each row's result does not.
      if (uncertain) uncertain_rows[atomicAdd(uncertain_count, 1ull)] = row;
    }
    __syncthreads();
  }
}

// One thread per certain row (the filter's winner is exact): its exact distance.
// Each lane walks its own row; the sum's order is fixed by csrc/nearest_code.h.
template <typename scalar_t>
__global__ void certain_distance_kernel(const scalar_t* __restrict__ x,
                                        const double* __restrict__ x_scale, int64_t n,
                                        const scalar_t* __restrict__ codes,
                                        const double* __restrict__ code_scale, int64_t dim,
                                        const bool* __restrict__ uncertain,
                                        const int64_t* __restrict__ indices,
                                        float* __restrict__ sq_dist) {
  for (int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; row < n;
       row += int64_t(gridDim.x) * blockDim.x) {
    if (uncertain[row]) continue;
    const int64_t code = indices[row];
    sq_dist[row] = static_cast<float>(
        exact_sq_distance(x + row * dim, x_scale[row], codes + code * dim, code_scale[code], dim));
  }
}

// One warp per listed (uncertain) row: resolves it exactly (every code whose filter
// score is within 2 tau of the best is a candidate; the lowest index of the
// smallest d64 wins), then writes the exact distance of the winner.
template <typename scalar_t>
__global__ void resolve_kernel(const scalar_t* __restrict__ x, const double* __restrict__ x_scale,
                               const double* __restrict__ x_norm,
                               const scalar_t* __restrict__ codes,
                               const double* __restrict__ code_scale,
                               const float* __restrict__ code_sq_norm,
                               const double* __restrict__ max_code_norm, int64_t k, int64_t dim,
                               bool cosine, const float* __restrict__ best,
                               const int64_t* __restrict__ uncertain_rows,
                               const unsigned long long* __restrict__ uncertain_count,
                               int64_t* __restrict__ indices, float* __restrict__ sq_dist) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t listed = static_cast<int64_t>(*uncertain_count);
  for (int64_t item = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; item < listed;
       item += warps) {
    const int64_t row = uncertain_rows[item];
    const scalar_t* x_row = x + row * dim;
    const double xs = x_scale[row];
    int64_t chosen = indices[row];
    const double tolerance = filter_tolerance(x_norm[row], *max_code_norm, dim, kFloatFilter);
    const double threshold = static_cast<double>(best[row]) + 2.0 * tolerance;
    const bool every_code = !isfinite(threshold);
    double lane_best = INFINITY;
    int64_t lane_code = -1;
    for (int64_t code = lane; code < k; code += 32) {
      const scalar_t* e = codes + code * dim;
      const double cs = code_scale[code];
      float acc = 0.f;
      for (int64_t d = 0; d < dim; ++d) {
        acc = fmaf(filter_value(x_row[d], xs, cosine), filter_value(e[d], cs, cosine), acc);
      }
      const double score = static_cast<double>(fmaf(-2.f, acc, code_sq_norm[code]));
      if (!every_code && score > threshold) continue;
      const double dist = exact_sq_distance(x_row, xs, e, cs, dim);
      if (lane_code < 0 || dist < lane_best) {
        lane_best = dist;
        lane_code = code;
      }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const double other_best = __shfl_down_sync(0xffffffffu, lane_best, offset);
      const long long other_code = __shfl_down_sync(0xffffffffu, static_cast<long long>(lane_code), offset);
      if (other_code >= 0 &&
          (lane_code < 0 || other_best < lane_best || (other_best == lane_best && other_code < lane_code))) {
        lane_best = other_best;
        lane_code = other_code;
      }
    }
    // Lane 0 holds the reduction's result: the exact winner (always a candidate) and
    // its distance, the same d64 as exact_sq_distance of the winner.
    if (lane == 0) {
      if (lane_code >= 0) chosen = lane_code;
      indices[row] = chosen;
      sq_dist[row] = static_cast<float>(
          lane_code >= 0 ? lane_best
                         : exact_sq_distance(x_row, xs, codes + chosen * dim, code_scale[chosen], dim));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cuda(const at::Tensor& x_in,
                                                     const at::Tensor& codebook_in, bool cosine) {
  check_nearest_code(x_in, codebook_in);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "nearest_code: x must be a CUDA tensor, got ", x_in.device());
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "nearest_code: the CUDA kernel supports float32, float16 and bfloat16, got ", dtype);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto codes = codebook_in.contiguous();
  const int64_t n = x.size(0), k = codes.size(0), dim = codes.size(1);
  const auto options = x.options();
  auto indices = at::empty({n}, options.dtype(at::kLong));
  auto sq_dist = at::empty({n}, options.dtype(at::kFloat));

  auto code_scale = at::empty({k}, options.dtype(at::kDouble));
  auto code_norm = at::empty({k}, options.dtype(at::kDouble));
  auto code_sq_norm = at::empty({k}, options.dtype(at::kFloat));
  auto x_scale = at::empty({n}, options.dtype(at::kDouble));
  auto x_norm = at::empty({n}, options.dtype(at::kDouble));
  // [first bad code, first bad row]; int64 storage holding unsigned values.
  auto first_bad = at::full({2}, static_cast<int64_t>(-1), options.dtype(at::kLong));
  auto* bad = reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>());
  auto stream = c10::cuda::getCurrentCUDAStream();
  GENFAST_DISPATCH_FILTER_TYPES(dtype, "nearest_code_cuda_prepare", [&] {
    prepare_rows_kernel<scalar_t><<<blocks_for(k, 256), 256, 0, stream>>>(
        codes.const_data_ptr<scalar_t>(), k, dim, cosine, code_scale.mutable_data_ptr<double>(),
        code_norm.mutable_data_ptr<double>(), code_sq_norm.mutable_data_ptr<float>(), bad);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (n > 0) {
      prepare_rows_kernel<scalar_t><<<blocks_for(n, 256), 256, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), n, dim, cosine, x_scale.mutable_data_ptr<double>(),
          x_norm.mutable_data_ptr<double>(), nullptr, bad + 1);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  const auto bad_host = first_bad.cpu();  // synchronises: NaN must be an error, not an index
  const auto* bad_rows = reinterpret_cast<const unsigned long long*>(bad_host.const_data_ptr<int64_t>());
  TORCH_CHECK_VALUE(bad_rows[0] == kNoBadRow, "nearest_code: codebook contains NaN or infinity (code ",
              bad_rows[0], "); the nearest code is undefined for non-finite vectors");
  TORCH_CHECK_VALUE(bad_rows[1] == kNoBadRow, "nearest_code: x contains NaN or infinity (row ",
              bad_rows[1], "); the nearest code is undefined for non-finite vectors");
  if (n == 0) return {indices, sq_dist};

  const auto max_code_norm = code_norm.max();
  auto best = at::empty({n}, options.dtype(at::kFloat));
  auto uncertain = at::empty({n}, options.dtype(at::kBool));
  auto uncertain_rows = at::empty({n}, options.dtype(at::kLong));
  auto uncertain_count = at::zeros({1}, options.dtype(at::kLong));
  auto* listed = reinterpret_cast<unsigned long long*>(uncertain_count.mutable_data_ptr<int64_t>());
  GENFAST_DISPATCH_FILTER_TYPES(dtype, "nearest_code_cuda", [&] {
    filter_kernel<scalar_t><<<blocks_for(n, kRows), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x_scale.const_data_ptr<double>(),
        x_norm.const_data_ptr<double>(), n, codes.const_data_ptr<scalar_t>(),
        code_scale.const_data_ptr<double>(), code_sq_norm.const_data_ptr<float>(),
        max_code_norm.const_data_ptr<double>(), k, dim, cosine,
        indices.mutable_data_ptr<int64_t>(), best.mutable_data_ptr<float>(),
        uncertain.mutable_data_ptr<bool>(), uncertain_rows.mutable_data_ptr<int64_t>(), listed);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    certain_distance_kernel<scalar_t><<<blocks_for(n, 256), 256, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x_scale.const_data_ptr<double>(), n,
        codes.const_data_ptr<scalar_t>(), code_scale.const_data_ptr<double>(), dim,
        uncertain.const_data_ptr<bool>(), indices.const_data_ptr<int64_t>(),
        sq_dist.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // The list's length is on the device: a bounded grid walks it (no sync).
    const unsigned resolve_blocks = std::min<unsigned>(blocks_for(n, kWarpsPerBlock), 1024);
    resolve_kernel<scalar_t><<<resolve_blocks, kWarpsPerBlock * 32, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x_scale.const_data_ptr<double>(),
        x_norm.const_data_ptr<double>(), codes.const_data_ptr<scalar_t>(),
        code_scale.const_data_ptr<double>(), code_sq_norm.const_data_ptr<float>(),
        max_code_norm.const_data_ptr<double>(), k, dim, cosine, best.const_data_ptr<float>(),
        uncertain_rows.const_data_ptr<int64_t>(), listed, indices.mutable_data_ptr<int64_t>(),
        sq_dist.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {indices, sq_dist};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) { m.impl("nearest_code", &nearest_code_cuda); }

}  // namespace genfast
