// gated_activation on CUDA: one grid-stride elementwise kernel each way, math in
// float (double for double) whatever the storage dtype.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../gated_activation.h"
#include "elementwise.cuh"

namespace genfast {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void gate_kernel(const scalar_t* __restrict__ x, int64_t half, int64_t n,
                            scalar_t* __restrict__ out) {
  GENFAST_GRID_STRIDE(i, n) {
    const int64_t o = i / half, a = i + o * half;  // a: o * 2 * half + (i - o * half)
    out[i] = static_cast<scalar_t>(gate_value(tanh(static_cast<acc_t>(x[a])),
                                              gate_sigmoid(static_cast<acc_t>(x[a + half]))));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void gate_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                     int64_t half, int64_t n, scalar_t* __restrict__ grad_x) {
  GENFAST_GRID_STRIDE(i, n) {
    const int64_t o = i / half, a = i + o * half;
    acc_t da, db;
    gate_grads(static_cast<acc_t>(grad[i]), tanh(static_cast<acc_t>(x[a])),
               gate_sigmoid(static_cast<acc_t>(x[a + half])), da, db);
    grad_x[a] = static_cast<scalar_t>(da);
    grad_x[a + half] = static_cast<scalar_t>(db);
  }
}

at::Tensor gated_activation_cuda(const at::Tensor& x_in, int64_t groups) {
  const int64_t contiguous_half = check_gated_activation(x_in, groups);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "gated_activation: x must be a CUDA tensor, got ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto blocks = gated_activation_blocks(x_in, groups, contiguous_half);
  const auto& x = blocks.x;
  const int64_t half = blocks.half;
  auto out = at::empty(gated_activation_shape(x), x.options().memory_format(blocks.format));
  const int64_t n = out.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gated_activation_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    gate_kernel<scalar_t, acc_t>
        <<<elementwise_blocks(n), kElementwiseThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), half, n, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor gated_activation_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                          int64_t groups) {
  const int64_t contiguous_half = check_gated_activation_backward(grad_in, x_in, groups);
  TORCH_CHECK_VALUE(x_in.is_cuda(), "gated_activation_backward: x must be a CUDA tensor, got ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto blocks = gated_activation_blocks(x_in, groups, contiguous_half);
  const auto& x = blocks.x;
  const int64_t half = blocks.half;
  const auto grad = grad_in.contiguous(blocks.format);
  auto grad_x = at::empty_like(x, blocks.format);
  const int64_t n = grad.numel();
  if (n == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gated_activation_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    gate_backward_kernel<scalar_t, acc_t>
        <<<elementwise_blocks(n), kElementwiseThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), half, n,
        grad_x.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("gated_activation", &gated_activation_cuda);
  m.impl("gated_activation_backward", &gated_activation_backward_cuda);
}

}  // namespace genfast
