// masked_conv2d on CUDA: implicit GEMMs over the live taps only. Tiles of the
// packed live weights and of the gathered image are staged in shared memory and
// multiplied with float32 (float64 for double) accumulation; the gather is fused
// into the tile load, so no column matrix ever exists in device memory.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../masked_conv2d.h"

namespace genfast {
namespace {

constexpr int kTileM = 64;  // rows of the output tile
constexpr int kTileN = 64;  // columns of the output tile
constexpr int kTileK = 16;  // reduction step staged in shared memory
constexpr int kThreads = 256;  // 16 x 16 threads, each computing a 4 x 4 sub-tile
constexpr int kPasses = kTileK * kTileM / kThreads;  // elements each thread stages per tile
constexpr int kMaxGridYZ = 65535;
static_assert(kTileM == kTileN && kThreads % kTileK == 0 && kThreads % kTileN == 0,
              "the staging loops below assume these shapes");

// Shared tiles are [kTileK][64 + pad]. Stores that walk the reduction index fastest
// (16 lanes per row, two rows per warp) hit 32 distinct banks with a row stride of
// 66 words for 4-byte values; 8-byte values are served per half-warp, where a
// stride of 65 doubles is conflict-free. Reads in multiply_tiles are broadcasts (A)
// or 16 consecutive elements (B), conflict-free either way.
template <typename acc_t>
constexpr int kPad = sizeof(acc_t) == 4 ? 2 : 1;
template <typename acc_t>
using Tile = acc_t[kTileK][kTileM + kPad<acc_t>];

// acc[i][j] += as[kk][4 tr + i] * bs[kk][tc + 16 j] over one staged reduction step.
template <typename acc_t>
__device__ __forceinline__ void multiply_tiles(const Tile<acc_t>& as, const Tile<acc_t>& bs,
                                               int tr, int tc, acc_t (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < kTileK; ++kk) {
    acc_t a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = as[kk][tr * 4 + i];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = bs[kk][tc + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
  }
}

// out[n] (M, H*W) = a (M, K) @ gather(src[n]) (K, H*W) (+ bias), where gather(src)[k, p]
// is tap k % T of channel k / T at pixel p shifted by sign * offset (zero outside
// the image): the forward (sign +1) and the input gradient (sign -1). Grid: x the
// (row tile, pixel tile) pairs, flattened (gridDim.y would cap the rows at 65535
// tiles, i.e. ~4.19M channels), z the samples.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    live_tap_gemm_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ bias,
                         const scalar_t* __restrict__ src, scalar_t* __restrict__ out,
                         int64_t batch, int m, int c, int h, int w, const LiveTaps taps,
                         int sign, int col_tiles) {
  __shared__ Tile<acc_t> as;
  __shared__ Tile<acc_t> bs;
  const int taps_count = taps.count, k_total = c * taps_count, plane = h * w;
  const int row0 = (blockIdx.x / col_tiles) * kTileM, col0 = (blockIdx.x % col_tiles) * kTileN;
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  // Each thread stages the B tile at one pixel column (the same in every step) and
  // reduction rows kb + 4 s: the pixel's coordinates are divided out once, and each
  // row's (channel, tap) advances by kTileK per step without dividing.
  constexpr int kRowsPerPass = kThreads / kTileN;
  const int pc = tid % kTileN, kb = tid / kTileN, p = col0 + pc;
  const int py = p / w, px = p - py * w;
  const int step_ch = kTileK / taps_count, step_t = kTileK - step_ch * taps_count;
  int first_ch[kPasses], first_t[kPasses];
#pragma unroll
  for (int s = 0; s < kPasses; ++s) {
    const int k = kb + kRowsPerPass * s;
    first_ch[s] = k / taps_count;
    first_t[s] = k - first_ch[s] * taps_count;
  }
  for (int64_t n = blockIdx.z; n < batch; n += gridDim.z) {
    const scalar_t* image = src + n * c * plane;
    int ch[kPasses], t[kPasses];
#pragma unroll
    for (int s = 0; s < kPasses; ++s) {
      ch[s] = first_ch[s];
      t[s] = first_t[s];
    }
    acc_t acc[4][4] = {};
    for (int k0 = 0; k0 < k_total; k0 += kTileK) {
      // Consecutive threads read consecutive reduction columns of a weight row.
#pragma unroll
      for (int s = 0; s < kPasses; ++s) {
        const int i = tid + kThreads * s, r = i / kTileK, kk = i % kTileK;
        const int gr = row0 + r, gk = k0 + kk;
        as[kk][r] = gr < m && gk < k_total ? static_cast<acc_t>(a[int64_t(gr) * k_total + gk])
                                            : acc_t(0);
      }
#pragma unroll
      for (int s = 0; s < kPasses; ++s) {
        const int kk = kb + kRowsPerPass * s;
        acc_t v = acc_t(0);
        if (k0 + kk < k_total && p < plane) {
          const int y = py + sign * taps.dy[t[s]], x = px + sign * taps.dx[t[s]];
          if (y >= 0 && y < h && x >= 0 && x < w) v = static_cast<acc_t>(image[(ch[s] * h + y) * w + x]);
        }
        bs[kk][pc] = v;
        t[s] += step_t;
        ch[s] += step_ch;
        if (t[s] >= taps_count) {
          t[s] -= taps_count;
          ++ch[s];
        }
      }
      __syncthreads();
      multiply_tiles<acc_t>(as, bs, tr, tc, acc);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = row0 + tr * 4 + i;
      if (r >= m) continue;
      const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[r]) : acc_t(0);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int q = col0 + tc + 16 * j;
        if (q < plane) out[(n * m + r) * plane + q] = static_cast<scalar_t>(acc[i][j] + b);
      }
    }
  }
}

// partial[s] (M, K) = sum over the pixels q of split s of g[q] (M) (x) gather(src)[:, q],
// where q runs over all samples and pixels. Splits (grid y) keep every SM busy;
// their sum (on the host side, in a fixed order) keeps the result deterministic.
// Grid x: the (row tile, column tile) pairs, flattened as in live_tap_gemm_kernel.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    live_tap_gemm_transposed_kernel(const scalar_t* __restrict__ g,
                                    const scalar_t* __restrict__ src, acc_t* __restrict__ partial,
                                    int64_t batch, int m, int c, int h, int w,
                                    const LiveTaps taps, int64_t pixels_per_split, int col_tiles) {
  __shared__ Tile<acc_t> as;
  __shared__ Tile<acc_t> bs;
  const int taps_count = taps.count, k_total = c * taps_count, plane = h * w;
  const int row0 = (blockIdx.x / col_tiles) * kTileM, col0 = (blockIdx.x % col_tiles) * kTileN;
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  const int64_t q_begin = blockIdx.y * pixels_per_split;
  const int64_t q_end = min(q_begin + pixels_per_split, batch * plane);
  // Each thread stages pixel q0 + kk of every step (consecutive threads, consecutive
  // pixels: coalesced reads of g and src) for rows / columns rb + 16 s of the tiles.
  const int kk = tid % kTileK, rb = tid / kTileK;
  constexpr int kRowsPerPass = kThreads / kTileK;
  // The B tile's columns (channel, tap) are fixed for the block: resolved once.
  int b_offset[kPasses], b_dy[kPasses], b_dx[kPasses];
  bool b_live[kPasses];
#pragma unroll
  for (int s = 0; s < kPasses; ++s) {
    const int k = col0 + rb + kRowsPerPass * s;
    b_live[s] = k < k_total;
    const int ch = b_live[s] ? k / taps_count : 0, t = b_live[s] ? k - ch * taps_count : 0;
    b_offset[s] = ch * plane;
    b_dy[s] = taps.dy[t];
    b_dx[s] = taps.dx[t];
  }
  // (sample, y, x) of pixel q_begin + kk, advanced by kTileK = step_n planes +
  // step_y rows + step_x columns per step: no 64-bit division per element.
  const int64_t q_first = q_begin + kk;
  int64_t sample = q_first / plane;
  int y0 = static_cast<int>(q_first - sample * plane), x0 = y0 % w;
  y0 /= w;
  const int step_n = kTileK / plane, step_y = (kTileK % plane) / w, step_x = kTileK % w;
  acc_t acc[4][4] = {};
  for (int64_t q0 = q_begin; q0 < q_end; q0 += kTileK) {
    const bool q_live = q0 + kk < q_end;
    const int pixel = y0 * w + x0;
    const scalar_t* g_q = g + sample * m * plane + pixel;
    const scalar_t* src_q = src + sample * c * plane;
#pragma unroll
    for (int s = 0; s < kPasses; ++s) {
      const int r = rb + kRowsPerPass * s, gr = row0 + r;
      as[kk][r] = gr < m && q_live ? static_cast<acc_t>(g_q[int64_t(gr) * plane]) : acc_t(0);
    }
#pragma unroll
    for (int s = 0; s < kPasses; ++s) {
      const int y = y0 + b_dy[s], x = x0 + b_dx[s];
      bs[kk][rb + kRowsPerPass * s] =
          b_live[s] && q_live && y >= 0 && y < h && x >= 0 && x < w
              ? static_cast<acc_t>(src_q[b_offset[s] + y * w + x])
              : acc_t(0);
    }
    x0 += step_x;
    y0 += step_y;
    sample += step_n;
    if (x0 >= w) {
      x0 -= w;
      ++y0;
    }
    if (y0 >= h) {
      y0 -= h;
      ++sample;
    }
    __syncthreads();
    multiply_tiles<acc_t>(as, bs, tr, tc, acc);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = row0 + tr * 4 + i;
    if (r >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int k = col0 + tc + 16 * j;
      if (k < k_total) partial[(int64_t(blockIdx.y) * m + r) * k_total + k] = acc[i][j];
    }
  }
}

void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

// SM counts of all devices, read once (no driver query per training step).
int multiprocessor_count(int device) {
  static const std::vector<int> counts = [] {
    std::vector<int> result(c10::cuda::device_count());
    for (size_t i = 0; i < result.size(); ++i) {
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&result[i], cudaDevAttrMultiProcessorCount,
                                            static_cast<int>(i)));
    }
    return result;
  }();
  return counts.at(device);
}

int64_t tiles(int64_t size, int64_t tile) { return (size + tile - 1) / tile; }

// Grid x of both kernels: every (row tile, column tile) pair.
unsigned tile_pairs(const char* op, int64_t rows, int64_t cols) {
  const int64_t pairs = tiles(rows, kTileM) * tiles(cols, kTileN);
  TORCH_CHECK_VALUE(pairs <= std::numeric_limits<int32_t>::max(), op, ": ", rows, " x ", cols,
              " output tiles exceed the CUDA grid; use fewer channels");
  return static_cast<unsigned>(pairs);
}

// out = matrix (M, C*T) @ gather(src) per sample (+ bias), on src's device.
at::Tensor launch_live_tap_gemm(const char* op, const at::Tensor& matrix,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& src,
                                const LiveTaps& taps, int sign) {
  if (taps.count == 0) return output_without_live_taps(src, matrix.size(0), bias);
  const int64_t n = src.size(0), c = src.size(1), h = src.size(2), w = src.size(3);
  const int64_t m = matrix.size(0);
  auto out = at::empty({n, m, h, w}, src.options());
  const auto bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t col_tiles = tiles(h * w, kTileN);
  const dim3 grid(tile_pairs(op, m, h * w), 1, static_cast<unsigned>(std::min<int64_t>(n, kMaxGridYZ)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "masked_conv2d_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    live_tap_gemm_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        matrix.const_data_ptr<scalar_t>(),
        bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr,
        src.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n,
        static_cast<int>(m), static_cast<int>(c), static_cast<int>(h), static_cast<int>(w), taps,
        sign, static_cast<int>(col_tiles));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor masked_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef dilation,
                              c10::string_view mask_type, int64_t color_groups) {
  const LiveTaps taps = check_masked_conv2d(input, weight, bias, dilation, mask_type, color_groups);
  check_cuda("masked_conv2d", input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  return in_layout_of(input, launch_live_tap_gemm("masked_conv2d", pack_live_weight(weight, taps),
                                                 bias, input.contiguous(), taps, +1));
}

// grad_input[c] = sum over o, t of W[o, c, t] * grad_output[o] shifted back by tap t.
at::Tensor masked_conv2d_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                         at::IntArrayRef dilation, c10::string_view mask_type,
                                         int64_t color_groups) {
  const LiveTaps taps =
      check_masked_conv2d_grad_input(grad_output, weight, dilation, mask_type, color_groups);
  check_cuda("masked_conv2d_grad_input", grad_output, "grad_output");
  const c10::cuda::CUDAGuard guard(grad_output.device());
  return in_layout_of(grad_output,
                      launch_live_tap_gemm("masked_conv2d_grad_input",
                                           pack_live_weight_transposed(weight, taps), c10::nullopt,
                                           grad_output.contiguous(), taps, -1));
}

at::Tensor masked_conv2d_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                          at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                                          c10::string_view mask_type, int64_t color_groups) {
  const char* op = "masked_conv2d_grad_weight";
  const LiveTaps taps = check_masked_conv2d_grad_weight(grad_output, input, kernel_size, dilation,
                                                        mask_type, color_groups);
  check_cuda(op, input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto x = input.contiguous();
  const auto gy = grad_output.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t m = gy.size(1), k = c * taps.count, pixels = n * h * w;
  if (taps.count == 0) return at::zeros({m, c, kernel_size[0], kernel_size[1]}, x.options());
  // Enough splits of the pixel reduction for about two blocks per SM.
  const int64_t sms = multiprocessor_count(x.get_device());
  const unsigned pairs = tile_pairs(op, m, k);
  const int64_t splits = std::clamp<int64_t>((2 * sms + pairs - 1) / pairs, 1,
                                             std::min<int64_t>(kMaxGridYZ, tiles(pixels, 256)));
  const int64_t per_split = tiles(tiles(pixels, splits), kTileK) * kTileK;
  const auto acc_dtype = at::toAccumulateType(x.scalar_type(), /*is_cuda=*/true);
  auto partial = at::empty({splits, m, k}, x.options().dtype(acc_dtype));
  const dim3 grid(pairs, static_cast<unsigned>(splits));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_conv2d_grad_weight_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    live_tap_gemm_transposed_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        partial.mutable_data_ptr<acc_t>(), n, static_cast<int>(m), static_cast<int>(c),
        static_cast<int>(h), static_cast<int>(w), taps, per_split,
        static_cast<int>(tiles(k, kTileN)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto grad_packed = partial.sum(0).to(x.scalar_type());
  return unpack_live_weight(grad_packed, {m, c, kernel_size[0], kernel_size[1]}, taps);
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d_cuda);
  m.impl("masked_conv2d_grad_input", &masked_conv2d_grad_input_cuda);
  m.impl("masked_conv2d_grad_weight", &masked_conv2d_grad_weight_cuda);
}

}  // namespace genfast
