// dmol_loss, dmol_loss_backward and dmol_sample on CUDA: one thread per pixel
// (grid-stride), the per-pixel math of csrc/dmol.h. Consecutive threads take
// consecutive pixels of a row, so every strided params read is coalesced.
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../dmol.h"

namespace genfast {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 65535 * 8;  // grid-stride loops cover the rest

int blocks_for(int64_t pixels) {
  return int(std::max<int64_t>(1, std::min<int64_t>((pixels + kThreads - 1) / kThreads, kMaxBlocks)));
}

void check_cuda(const char* op, const at::Tensor& params) {
  TORCH_CHECK_VALUE(params.device().is_cuda(), op, ": params must be a CUDA tensor, got ", params.device());
}

// The levels of pixel j of image b, one per channel.
__device__ __forceinline__ void load_levels(const int64_t* __restrict__ x, int64_t b, int64_t j, int64_t hw,
                                            int64_t channels, int64_t* level) {
  for (int64_t c = 0; c < channels; ++c) level[c] = x[(b * channels + c) * hw + j];
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    dmol_loss_kernel(const scalar_t* __restrict__ params, const int64_t* __restrict__ x, int64_t pixels,
                     int64_t hw, int64_t p, int64_t channels, int64_t mixtures, int64_t levels,
                     scalar_t* __restrict__ nll) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pixels;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / hw, j = i % hw;
    int64_t level[3];
    load_levels(x, b, j, hw, channels, level);
    nll[i] = scalar_t(dmol_pixel_nll<scalar_t>(PixelView<const scalar_t>{params + b * p * hw + j, hw}, level,
                                               channels, mixtures, levels));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    dmol_loss_backward_kernel(const scalar_t* __restrict__ grad_nll, const scalar_t* __restrict__ params,
                              const int64_t* __restrict__ x, const scalar_t* __restrict__ nll, int64_t pixels,
                              int64_t hw, int64_t p, int64_t channels, int64_t mixtures, int64_t levels,
                              scalar_t* __restrict__ grad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pixels;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / hw, j = i % hw;
    int64_t level[3];
    load_levels(x, b, j, hw, channels, level);
    dmol_pixel_backward<scalar_t>(PixelView<const scalar_t>{params + b * p * hw + j, hw}, level, channels,
                                  mixtures, levels, grad_nll[i], nll[i],
                                  PixelView<scalar_t>{grad + b * p * hw + j, hw});
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    dmol_sample_kernel(const scalar_t* __restrict__ params, const double* __restrict__ u, int64_t pixels,
                       int64_t hw, int64_t p, int64_t channels, int64_t mixtures, int64_t levels,
                       double temperature, int64_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pixels;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / hw, j = i % hw;
    dmol_pixel_sample<scalar_t>(PixelView<const scalar_t>{params + b * p * hw + j, hw},
                                PixelView<const double>{u + b * (channels + 1) * hw + j, hw}, channels, mixtures,
                                levels, temperature, PixelView<int64_t>{out + b * channels * hw + j, hw});
  }
}

at::Tensor dmol_loss_cuda(const at::Tensor& params_in, const at::Tensor& x_in, int64_t num_mixtures,
                          int64_t levels) {
  check_dmol_loss("dmol_loss", params_in, x_in, num_mixtures, levels);
  check_cuda("dmol_loss", params_in);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const auto params = params_in.contiguous();
  const auto x = x_in.contiguous();
  const int64_t batch = params.size(0), p = params.size(1), hw = params.size(2) * params.size(3);
  auto nll = at::empty({batch, params.size(2), params.size(3)}, params.options());
  const int64_t pixels = batch * hw;
  if (pixels == 0) return nll;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "dmol_loss_cuda", [&] {
    dmol_loss_kernel<scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
        params.const_data_ptr<scalar_t>(), x.const_data_ptr<int64_t>(), pixels, hw, p, x.size(1), num_mixtures,
        levels, nll.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return nll;
}

at::Tensor dmol_loss_backward_cuda(const at::Tensor& grad_nll_in, const at::Tensor& params_in,
                                   const at::Tensor& x_in, const at::Tensor& nll_in, int64_t num_mixtures,
                                   int64_t levels) {
  check_dmol_loss_backward(grad_nll_in, params_in, x_in, nll_in, num_mixtures, levels);
  check_cuda("dmol_loss_backward", params_in);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const auto params = params_in.contiguous();
  const auto x = x_in.contiguous();
  const auto grad_nll = grad_nll_in.contiguous();
  const auto nll = nll_in.contiguous();
  const int64_t batch = params.size(0), p = params.size(1), hw = params.size(2) * params.size(3);
  auto grad = at::empty_like(params);
  const int64_t pixels = batch * hw;
  if (pixels == 0) return grad;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "dmol_loss_backward_cuda", [&] {
    dmol_loss_backward_kernel<scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
        grad_nll.const_data_ptr<scalar_t>(), params.const_data_ptr<scalar_t>(), x.const_data_ptr<int64_t>(),
        nll.const_data_ptr<scalar_t>(), pixels, hw, p, x.size(1), num_mixtures, levels,
        grad.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

at::Tensor dmol_sample_cuda(const at::Tensor& params_in, const at::Tensor& u_in, int64_t num_mixtures,
                            int64_t levels, double temperature) {
  check_dmol_sample(params_in, u_in, num_mixtures, levels, temperature);
  check_cuda("dmol_sample", params_in);
  const c10::cuda::CUDAGuard guard(params_in.device());
  const auto params = params_in.contiguous();
  const auto u = u_in.contiguous();
  const int64_t batch = params.size(0), p = params.size(1), hw = params.size(2) * params.size(3);
  const int64_t channels = u.size(1) - 1;
  auto out = at::empty({batch, channels, params.size(2), params.size(3)}, params.options().dtype(at::kLong));
  const int64_t pixels = batch * hw;
  if (pixels == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "dmol_sample_cuda", [&] {
    dmol_sample_kernel<scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
        params.const_data_ptr<scalar_t>(), u.const_data_ptr<double>(), pixels, hw, p, channels, num_mixtures,
        levels, temperature, out.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("dmol_loss", &dmol_loss_cuda);
  m.impl("dmol_loss_backward", &dmol_loss_backward_cuda);
  m.impl("dmol_sample", &dmol_sample_cuda);
}

}  // namespace genfast
