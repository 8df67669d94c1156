// code_statistics on CUDA, deterministic: counts by integer atomics (exact in any
// order), a stable sort of the rows by code, then the sums in the order that
// csrc/code_statistics.h defines: one block per piece of kSumPieceRows sorted rows
// (threads across the features) sums each code's rows in the piece in float64, and
// a second kernel adds the pieces of the codes that span several, in order. A
// collapsed codebook thus spreads over N / kSumPieceRows blocks, not one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../code_statistics.h"

namespace genfast {
namespace {

constexpr int64_t kMaxBlocks = 65535 * 16;
constexpr unsigned long long kNoBadIndex = std::numeric_limits<unsigned long long>::max();

unsigned blocks_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, kMaxBlocks)));
}

// counts[k] += 1 for each index; the lowest position of an out-of-range index.
__global__ void count_kernel(const int64_t* __restrict__ indices, int64_t n, int64_t num_codes,
                             unsigned long long* __restrict__ counts,
                             unsigned long long* __restrict__ first_bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = indices[i];
    if (k < 0 || k >= num_codes) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
    } else {
      atomicAdd(counts + k, 1ull);
    }
  }
}

// Pass 1: block b sums sorted positions [b R, b R + R) (R = kSumPieceRows), code by
// code. A code lying wholly in the piece gets its result; otherwise the piece's
// partial sum goes to head[b] (the code began in an earlier piece; it starts the
// piece) or tail[b] (the code continues into the next piece; it ends the piece).
template <typename scalar_t, typename sum_t>
__global__ void piece_sum_kernel(const scalar_t* __restrict__ x, int64_t n, int64_t dim,
                                 const int64_t* __restrict__ order,
                                 const int64_t* __restrict__ sorted_codes,
                                 const int64_t* __restrict__ counts,
                                 const int64_t* __restrict__ ends, sum_t* __restrict__ sums,
                                 double* __restrict__ head, double* __restrict__ tail) {
  const int64_t pieces = (n + kSumPieceRows - 1) / kSumPieceRows;
  for (int64_t piece = blockIdx.x; piece < pieces; piece += gridDim.x) {
    const int64_t p0 = piece * kSumPieceRows, p1 = min(p0 + kSumPieceRows, n);
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      for (int64_t j = p0; j < p1;) {
        const int64_t code = sorted_codes[j];
        const int64_t code_end = ends[code], code_begin = code_end - counts[code];
        const int64_t segment_end = min(code_end, p1);
        double acc = 0.0;
        for (; j < segment_end; ++j) acc += static_cast<double>(x[order[j] * dim + d]);
        if (code_begin >= p0 && code_end <= p1) {
          sums[code * dim + d] = static_cast<sum_t>(acc);
        } else if (code_begin < p0) {
          head[piece * dim + d] = acc;
        } else {
          tail[piece * dim + d] = acc;
        }
      }
    }
  }
}

// Pass 2: codes spanning pieces first..last add tail[first], head[first + 1], ...,
// head[last] in that order; unused codes get zeros.
template <typename sum_t>
__global__ void combine_pieces_kernel(int64_t dim, const int64_t* __restrict__ counts,
                                      const int64_t* __restrict__ ends, int64_t num_codes,
                                      const double* __restrict__ head,
                                      const double* __restrict__ tail, sum_t* __restrict__ sums) {
  for (int64_t k = blockIdx.x; k < num_codes; k += gridDim.x) {
    const int64_t end = ends[k], begin = end - counts[k];
    if (begin == end) {
      for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) sums[k * dim + d] = sum_t(0);
      continue;
    }
    const int64_t first = begin / kSumPieceRows, last = (end - 1) / kSumPieceRows;
    if (first == last) continue;  // summed whole by piece_sum_kernel
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      double acc = tail[first * dim + d];
      for (int64_t p = first + 1; p <= last; ++p) acc += head[p * dim + d];
      sums[k * dim + d] = static_cast<sum_t>(acc);
    }
  }
}

// Threads across the features: a multiple of the warp size covering dim, at most 256.
int feature_threads(int64_t dim) {
  return static_cast<int>(std::clamp<int64_t>((dim + 31) / 32 * 32, 32, 256));
}

std::tuple<at::Tensor, at::Tensor> code_statistics_cuda(const at::Tensor& x_in,
                                                        const at::Tensor& indices_in,
                                                        int64_t num_codes) {
  check_code_statistics(x_in, indices_in, num_codes);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "code_statistics: x must be a CUDA tensor, got ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto indices = indices_in.contiguous();
  const int64_t n = x.size(0), dim = x.size(1);
  auto counts = at::zeros({num_codes}, indices.options());
  auto sums = at::empty({num_codes, dim}, x.options().dtype(code_statistics_sum_dtype(x)));
  auto first_bad = at::full({1}, static_cast<int64_t>(-1), indices.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (n > 0) {
    count_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(
        indices.const_data_ptr<int64_t>(), n, num_codes,
        reinterpret_cast<unsigned long long*>(counts.mutable_data_ptr<int64_t>()),
        reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto bad = static_cast<unsigned long long>(first_bad.item<int64_t>());  // synchronises
  if (bad != kNoBadIndex) {
    const int64_t value = indices[static_cast<int64_t>(bad)].item<int64_t>();
    TORCH_CHECK_VALUE(false, "code_statistics: indices must be in [0, ", num_codes, "), got ", value,
                " at position ", bad);
  }
  if (dim == 0) return {counts, sums};
  const auto sorted = at::sort(indices, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto& sorted_codes = std::get<0>(sorted);
  const auto& order = std::get<1>(sorted);
  const auto ends = at::cumsum(counts, 0);
  const int64_t pieces = (n + kSumPieceRows - 1) / kSumPieceRows;
  auto head = at::empty({pieces, dim}, x.options().dtype(at::kDouble));
  auto tail = at::empty({pieces, dim}, x.options().dtype(at::kDouble));
  const int threads = feature_threads(dim);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "code_statistics_cuda", [&] {
    using sum_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    if (n > 0) {
      piece_sum_kernel<scalar_t, sum_t><<<blocks_for(pieces, 1), threads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), n, dim, order.const_data_ptr<int64_t>(),
          sorted_codes.const_data_ptr<int64_t>(), counts.const_data_ptr<int64_t>(),
          ends.const_data_ptr<int64_t>(), sums.mutable_data_ptr<sum_t>(),
          head.mutable_data_ptr<double>(), tail.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    combine_pieces_kernel<sum_t><<<blocks_for(num_codes, 1), threads, 0, stream>>>(
        dim, counts.const_data_ptr<int64_t>(), ends.const_data_ptr<int64_t>(), num_codes,
        head.const_data_ptr<double>(), tail.const_data_ptr<double>(),
        sums.mutable_data_ptr<sum_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {counts, sums};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) { m.impl("code_statistics", &code_statistics_cuda); }

}  // namespace genfast
