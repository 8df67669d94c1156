// concat_elu on CUDA: one grid-stride elementwise kernel each way over x's elements,
// each thread writing both of its outputs; math in float (double for double) whatever
// the storage dtype.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../concat_elu.h"
#include "elementwise.cuh"

namespace genfast {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void concat_elu_kernel(const scalar_t* __restrict__ x, int64_t inner, int64_t n,
                                  scalar_t* __restrict__ out) {
  GENFAST_GRID_STRIDE(i, n) {
    const int64_t pos = i + (i / inner) * inner;  // o * 2 * inner + j
    const acc_t v = static_cast<acc_t>(x[i]);
    acc_t a, b;
    concat_elu_values(v, expm1(concat_elu_expm1_arg(v)), a, b);
    out[pos] = static_cast<scalar_t>(a);
    out[pos + inner] = static_cast<scalar_t>(b);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void concat_elu_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                           int64_t inner, int64_t n, scalar_t* __restrict__ grad_x) {
  GENFAST_GRID_STRIDE(i, n) {
    const int64_t pos = i + (i / inner) * inner;
    const acc_t v = static_cast<acc_t>(x[i]);
    const acc_t g_pos = static_cast<acc_t>(grad[pos]), g_neg = static_cast<acc_t>(grad[pos + inner]);
    grad_x[i] = static_cast<scalar_t>(concat_elu_grad(g_pos, g_neg, v, expm1(concat_elu_expm1_arg(v))));
  }
}

at::Tensor concat_elu_cuda(const at::Tensor& x_in, int64_t dim) {
  const auto layout = check_concat_elu("concat_elu", x_in, dim);
  check_cuda("concat_elu", x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  auto out = at::empty(concat_elu_shape(x, dim), x.options());
  const int64_t n = x.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "concat_elu_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    concat_elu_kernel<scalar_t, acc_t>
        <<<elementwise_blocks(n), kElementwiseThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), layout.inner, n, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor concat_elu_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in, int64_t dim) {
  const auto layout = check_concat_elu_backward(grad_in, x_in, dim);
  check_cuda("concat_elu_backward", x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto grad = grad_in.contiguous();
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "concat_elu_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    concat_elu_backward_kernel<scalar_t, acc_t>
        <<<elementwise_blocks(n), kElementwiseThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), layout.inner, n,
        grad_x.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("concat_elu", &concat_elu_cuda);
  m.impl("concat_elu_backward", &concat_elu_backward_cuda);
}

}  // namespace genfast
