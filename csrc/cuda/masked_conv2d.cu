// masked_conv2d on CUDA: implicit GEMMs over the live taps only. Tiles of the
// packed live weights and of the gathered image are staged in shared memory and
// multiplied with float32 (float64 for double) accumulation; the gather is fused
// into the tile load, so no column matrix ever exists in device memory.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../masked_conv2d.h"

namespace genfast {
namespace {

constexpr int kTileM = 64;  // rows of the output tile
constexpr int kTileN = 64;  // columns of the output tile
constexpr int kTileK = 16;  // reduction step staged in shared memory
constexpr int kThreads = 256;  // 16 x 16 threads, each computing a 4 x 4 sub-tile
constexpr int kMaxGridZ = 65535;

// gather(src)[k, p] for one sample image (C, H, W): tap k % T of channel k / T at
// pixel p, shifted by sign * offset; zero outside the image.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t gather_tap(const scalar_t* __restrict__ image, int h, int w,
                                            const LiveTaps& taps, int sign, int k, int p) {
  const int ch = k / taps.count, t = k - ch * taps.count;
  const int y = p / w + sign * taps.dy[t];
  const int x = p % w + sign * taps.dx[t];
  if (y < 0 || y >= h || x < 0 || x >= w) return acc_t(0);
  return static_cast<acc_t>(image[(ch * h + y) * w + x]);
}

// acc += as[kk][rows] (x) bs[kk][cols] over one staged reduction step.
template <typename acc_t, int kPadB>
__device__ __forceinline__ void multiply_tiles(const acc_t (&as)[kTileK][kTileM],
                                               const acc_t (&bs)[kTileK][kTileN + kPadB],
                                               int tr, int tc, acc_t (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < kTileK; ++kk) {
    acc_t a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = as[kk][tr * 4 + i];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = bs[kk][tc * 4 + j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
  }
}

// out[n] (M, H*W) = a (M, K) @ gather(src[n]) (K, H*W) (+ bias). Grid: (pixel tiles,
// row tiles, samples); the forward (sign +1) and the input gradient (sign -1).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    live_tap_gemm_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ bias,
                         const scalar_t* __restrict__ src, scalar_t* __restrict__ out,
                         int64_t batch, int m, int c, int h, int w, const LiveTaps taps,
                         int sign) {
  __shared__ acc_t as[kTileK][kTileM];
  __shared__ acc_t bs[kTileK][kTileN];
  const int k_total = c * taps.count, plane = h * w;
  const int row0 = blockIdx.y * kTileM, col0 = blockIdx.x * kTileN;
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  for (int64_t n = blockIdx.z; n < batch; n += gridDim.z) {
    const scalar_t* image = src + n * c * plane;
    acc_t acc[4][4] = {};
    for (int k0 = 0; k0 < k_total; k0 += kTileK) {
      for (int i = tid; i < kTileM * kTileK; i += kThreads) {
        const int r = i / kTileK, kk = i % kTileK;
        const int gr = row0 + r, gk = k0 + kk;
        as[kk][r] = gr < m && gk < k_total ? static_cast<acc_t>(a[int64_t(gr) * k_total + gk])
                                            : acc_t(0);
      }
      for (int i = tid; i < kTileK * kTileN; i += kThreads) {
        const int kk = i / kTileN, pc = i % kTileN;
        const int gk = k0 + kk, p = col0 + pc;
        bs[kk][pc] = gk < k_total && p < plane
                         ? gather_tap<acc_t>(image, h, w, taps, sign, gk, p)
                         : acc_t(0);
      }
      __syncthreads();
      multiply_tiles<acc_t, 0>(as, bs, tr, tc, acc);
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = row0 + tr * 4 + i;
      if (r >= m) continue;
      const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[r]) : acc_t(0);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int p = col0 + tc * 4 + j;
        if (p < plane) out[(n * m + r) * plane + p] = static_cast<scalar_t>(acc[i][j] + b);
      }
    }
  }
}

// partial[s] (M, K) = sum over the pixels q of split s of g[q] (M) (x) gather(src)[:, q],
// where q runs over all samples and pixels. Splits keep every SM busy; their sum
// (on the host side, in a fixed order) keeps the result deterministic.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    live_tap_gemm_transposed_kernel(const scalar_t* __restrict__ g,
                                    const scalar_t* __restrict__ src, acc_t* __restrict__ partial,
                                    int64_t batch, int m, int c, int h, int w,
                                    const LiveTaps taps, int64_t pixels_per_split) {
  __shared__ acc_t as[kTileK][kTileM];
  __shared__ acc_t bs[kTileK][kTileN + 1];  // +1: column-wise stores without bank conflicts
  const int k_total = c * taps.count, plane = h * w;
  const int row0 = blockIdx.y * kTileM, col0 = blockIdx.x * kTileN;
  const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
  const int64_t q_begin = blockIdx.z * pixels_per_split;
  const int64_t q_end = min(q_begin + pixels_per_split, batch * plane);
  acc_t acc[4][4] = {};
  for (int64_t q0 = q_begin; q0 < q_end; q0 += kTileK) {
    // Consecutive threads take consecutive pixels: coalesced reads of g and src.
    for (int i = tid; i < kTileM * kTileK; i += kThreads) {
      const int kk = i % kTileK, r = i / kTileK;
      const int64_t q = q0 + kk;
      const int gr = row0 + r;
      as[kk][r] = gr < m && q < q_end
                      ? static_cast<acc_t>(g[((q / plane) * m + gr) * plane + q % plane])
                      : acc_t(0);
    }
    for (int i = tid; i < kTileK * kTileN; i += kThreads) {
      const int kk = i % kTileK, col = i / kTileK;
      const int64_t q = q0 + kk;
      const int gk = col0 + col;
      bs[kk][col] = gk < k_total && q < q_end
                        ? gather_tap<acc_t>(src + (q / plane) * c * plane, h, w, taps, 1, gk,
                                            static_cast<int>(q % plane))
                        : acc_t(0);
    }
    __syncthreads();
    multiply_tiles<acc_t, 1>(as, bs, tr, tc, acc);
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = row0 + tr * 4 + i;
    if (r >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int k = col0 + tc * 4 + j;
      if (k < k_total) partial[(int64_t(blockIdx.z) * m + r) * k_total + k] = acc[i][j];
    }
  }
}

void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

int64_t tiles(int64_t size, int64_t tile) { return (size + tile - 1) / tile; }

// out = matrix (M, C*T) @ gather(src) per sample (+ bias), on src's device.
at::Tensor launch_live_tap_gemm(const at::Tensor& matrix, const c10::optional<at::Tensor>& bias,
                                const at::Tensor& src, const LiveTaps& taps, int sign) {
  if (taps.count == 0) return output_without_live_taps(src, matrix.size(0), bias);
  const int64_t n = src.size(0), c = src.size(1), h = src.size(2), w = src.size(3);
  const int64_t m = matrix.size(0);
  auto out = at::empty({n, m, h, w}, src.options());
  const auto bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  const dim3 grid(static_cast<unsigned>(tiles(h * w, kTileN)), static_cast<unsigned>(tiles(m, kTileM)),
                  static_cast<unsigned>(std::min<int64_t>(n, kMaxGridZ)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "masked_conv2d_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    live_tap_gemm_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        matrix.const_data_ptr<scalar_t>(),
        bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr,
        src.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n,
        static_cast<int>(m), static_cast<int>(c), static_cast<int>(h), static_cast<int>(w), taps,
        sign);
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
  return launch_live_tap_gemm(pack_live_weight(weight, taps), bias, input.contiguous(), taps, +1);
}

// grad_input[c] = sum over o, t of W[o, c, t] * grad_output[o] shifted back by tap t.
at::Tensor masked_conv2d_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& weight,
                                         at::IntArrayRef dilation, c10::string_view mask_type,
                                         int64_t color_groups) {
  const LiveTaps taps =
      check_masked_conv2d_grad_input(grad_output, weight, dilation, mask_type, color_groups);
  check_cuda("masked_conv2d_grad_input", grad_output, "grad_output");
  const c10::cuda::CUDAGuard guard(grad_output.device());
  return launch_live_tap_gemm(pack_live_weight_transposed(weight, taps), c10::nullopt,
                              grad_output.contiguous(), taps, -1);
}

at::Tensor masked_conv2d_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                          at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                                          c10::string_view mask_type, int64_t color_groups) {
  const LiveTaps taps = check_masked_conv2d_grad_weight(grad_output, input, kernel_size, dilation,
                                                        mask_type, color_groups);
  check_cuda("masked_conv2d_grad_weight", input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  const auto x = input.contiguous();
  const auto gy = grad_output.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t m = gy.size(1), k = c * taps.count, pixels = n * h * w;
  if (taps.count == 0) return at::zeros({m, c, kernel_size[0], kernel_size[1]}, x.options());
  // Enough splits of the pixel reduction for about two blocks per SM.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  const int64_t tile_blocks = tiles(k, kTileN) * tiles(m, kTileM);
  const int64_t splits = std::clamp<int64_t>((2 * sms + tile_blocks - 1) / tile_blocks, 1,
                                             std::min<int64_t>(kMaxGridZ, tiles(pixels, 256)));
  const int64_t per_split = tiles(tiles(pixels, splits), kTileK) * kTileK;
  const auto acc_dtype = at::toAccumulateType(x.scalar_type(), /*is_cuda=*/true);
  auto partial = at::empty({splits, m, k}, x.options().dtype(acc_dtype));
  const dim3 grid(static_cast<unsigned>(tiles(k, kTileN)), static_cast<unsigned>(tiles(m, kTileM)),
                  static_cast<unsigned>(splits));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_conv2d_grad_weight_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    live_tap_gemm_transposed_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        partial.mutable_data_ptr<acc_t>(), n, static_cast<int>(m), static_cast<int>(c),
        static_cast<int>(h), static_cast<int>(w), taps, per_split);
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
