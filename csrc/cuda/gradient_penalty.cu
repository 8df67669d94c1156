// gradient_penalty and gradient_penalty_interpolate on CUDA. Each block takes one
// chunk (csrc/gradient_penalty.h) of one sample at a time; reductions write one
// partial per chunk, and small follow-up kernels add them in chunk order, so every
// result is deterministic. float32 accumulation for float16/bfloat16/float32,
// float64 for float64.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../gradient_penalty.h"

namespace genfast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535 * 8;  // grid-stride loops cover the rest

// The sum of `value` over the block (blockDim.x == kThreads), in a fixed order;
// every thread gets the result.
template <typename acc_t>
__device__ acc_t block_sum(acc_t value, acc_t* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const acc_t total = shared[0];
  __syncthreads();  // shared is reused by the next call
  return total;
}

// partial[task] = sum of squares of chunk task % chunks of sample task / chunks.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_squares_kernel(const scalar_t* __restrict__ grad, int64_t sample_size, int64_t chunks,
                       int64_t tasks, acc_t* __restrict__ partial) {
  __shared__ acc_t shared[kThreads];
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t sample = task / chunks, begin = (task % chunks) * kPenaltyChunk;
    const int64_t end = min(begin + kPenaltyChunk, sample_size);
    const scalar_t* x = grad + sample * sample_size;
    acc_t sum = 0;
#pragma unroll 4
    for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) {
      const acc_t v = static_cast<acc_t>(x[j]);
      sum += v * v;
    }
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partial[task] = sum;
  }
}

// norms[i] = sqrt(sum of sample i's partials); terms[i] = phi(norms[i]).
template <typename acc_t>
__global__ void norms_kernel(const acc_t* __restrict__ partial, int64_t batch, int64_t chunks,
                             acc_t center, bool one_sided, acc_t* __restrict__ norms,
                             acc_t* __restrict__ terms) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < batch;
       i += int64_t(gridDim.x) * blockDim.x) {
    acc_t squares = 0;
    for (int64_t c = 0; c < chunks; ++c) squares += partial[i * chunks + c];
    norms[i] = sqrt(squares);
    terms[i] = penalty_term(norms[i], center, one_sided);
  }
}

// penalty = scale * sum of terms; one block.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    penalty_sum_kernel(const acc_t* __restrict__ terms, int64_t batch, acc_t scale,
                       scalar_t* __restrict__ penalty) {
  __shared__ acc_t shared[kThreads];
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < batch; i += kThreads) sum += terms[i];
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) *penalty = static_cast<scalar_t>(sum * scale);
}

// out = (a * k(n_i) + b_i / n_i) * grad_i per sample, a = grad_penalty * weight / N.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    penalty_backward_kernel(const scalar_t* __restrict__ grad_penalty,
                            const acc_t* __restrict__ grad_norms, const scalar_t* __restrict__ grad,
                            const acc_t* __restrict__ norms, int64_t sample_size, int64_t chunks,
                            int64_t tasks, acc_t weight_per_sample, acc_t center, bool one_sided,
                            scalar_t* __restrict__ out) {
  const acc_t a = static_cast<acc_t>(*grad_penalty) * weight_per_sample;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t sample = task / chunks, begin = (task % chunks) * kPenaltyChunk;
    const int64_t end = min(begin + kPenaltyChunk, sample_size);
    const acc_t b = grad_norms != nullptr ? grad_norms[sample] : acc_t(0);
    const acc_t scale = penalty_backward_scale(a, b, norms[sample], center, one_sided);
    const int64_t offset = sample * sample_size;
#pragma unroll 4
    for (int64_t j = offset + begin + threadIdx.x; j < offset + end; j += kThreads) {
      out[j] = static_cast<scalar_t>(scale * static_cast<acc_t>(grad[j]));
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    interpolate_kernel(const scalar_t* __restrict__ real, const scalar_t* __restrict__ fake,
                       const scalar_t* __restrict__ eps, int64_t sample_size, int64_t chunks,
                       int64_t tasks, scalar_t* __restrict__ out) {
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t sample = task / chunks, begin = (task % chunks) * kPenaltyChunk;
    const int64_t end = min(begin + kPenaltyChunk, sample_size);
    const acc_t e = static_cast<acc_t>(eps[sample]);
    const int64_t offset = sample * sample_size;
#pragma unroll 4
    for (int64_t j = offset + begin + threadIdx.x; j < offset + end; j += kThreads) {
      out[j] = static_cast<scalar_t>(
          interpolate(static_cast<acc_t>(real[j]), static_cast<acc_t>(fake[j]), e));
    }
  }
}

// grad_real = eps * g, grad_fake = (1 - eps) * g, partial[task] = chunk's sum of g * (real - fake).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    interpolate_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ real,
                                const scalar_t* __restrict__ fake, const scalar_t* __restrict__ eps,
                                int64_t sample_size, int64_t chunks, int64_t tasks,
                                scalar_t* __restrict__ grad_real, scalar_t* __restrict__ grad_fake,
                                acc_t* __restrict__ partial) {
  __shared__ acc_t shared[kThreads];
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t sample = task / chunks, begin = (task % chunks) * kPenaltyChunk;
    const int64_t end = min(begin + kPenaltyChunk, sample_size);
    const acc_t e = static_cast<acc_t>(eps[sample]);
    const int64_t offset = sample * sample_size;
    acc_t sum = 0;
#pragma unroll 4
    for (int64_t j = offset + begin + threadIdx.x; j < offset + end; j += kThreads) {
      const acc_t g = static_cast<acc_t>(grad[j]);
      grad_real[j] = static_cast<scalar_t>(e * g);
      grad_fake[j] = static_cast<scalar_t>((acc_t(1) - e) * g);
      sum += g * (static_cast<acc_t>(real[j]) - static_cast<acc_t>(fake[j]));
    }
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) partial[task] = sum;
  }
}

// out[i] = sum of sample i's partials.
template <typename scalar_t, typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, int64_t batch, int64_t chunks,
                                    scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < batch;
       i += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[i * chunks + c];
    out[i] = static_cast<scalar_t>(sum);
  }
}

void check_cuda(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

unsigned blocks_for(int64_t tasks) { return static_cast<unsigned>(std::min(tasks, kMaxBlocks)); }

std::tuple<at::Tensor, at::Tensor> gradient_penalty_cuda(const at::Tensor& grad_in, double weight,
                                                         double center, bool one_sided) {
  const int64_t sample_size = check_gradient_penalty(grad_in, weight, center);
  check_cuda("gradient_penalty", grad_in, "grad");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const int64_t batch = grad.size(0), chunks = penalty_chunks(sample_size), tasks = batch * chunks;
  const auto acc_options = grad.options().dtype(norm_dtype(grad.scalar_type()));
  auto partial = at::empty({tasks}, acc_options);
  auto norms = at::empty({batch}, acc_options);
  auto terms = at::empty({batch}, acc_options);
  auto penalty = at::empty({}, grad.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    sum_squares_kernel<scalar_t, acc_t><<<blocks_for(tasks), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), sample_size, chunks, tasks, partial.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    norms_kernel<acc_t><<<blocks_for((batch + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), batch, chunks, acc_t(center), one_sided,
        norms.mutable_data_ptr<acc_t>(), terms.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    penalty_sum_kernel<scalar_t, acc_t><<<1, kThreads, 0, stream>>>(
        terms.const_data_ptr<acc_t>(), batch, acc_t(weight) / acc_t(batch),
        penalty.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {penalty, norms};
}

at::Tensor gradient_penalty_backward_cuda(const at::Tensor& grad_penalty_in,
                                          const c10::optional<at::Tensor>& grad_norms,
                                          const at::Tensor& grad_in, const at::Tensor& norms_in,
                                          double weight, double center, bool one_sided) {
  const int64_t sample_size =
      check_gradient_penalty_backward(grad_penalty_in, grad_norms, grad_in, norms_in, weight, center);
  check_cuda("gradient_penalty_backward", grad_in, "grad");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous(), norms = norms_in.contiguous();
  const auto grad_penalty = grad_penalty_in.contiguous();
  const auto grad_norms_c = grad_norms.has_value() ? grad_norms->contiguous() : at::Tensor();
  const int64_t batch = grad.size(0), chunks = penalty_chunks(sample_size), tasks = batch * chunks;
  auto out = at::empty_like(grad);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    penalty_backward_kernel<scalar_t, acc_t><<<blocks_for(tasks), kThreads, 0, stream>>>(
        grad_penalty.const_data_ptr<scalar_t>(),
        grad_norms_c.defined() ? grad_norms_c.const_data_ptr<acc_t>() : nullptr,
        grad.const_data_ptr<scalar_t>(), norms.const_data_ptr<acc_t>(), sample_size, chunks, tasks,
        acc_t(weight) / acc_t(batch), acc_t(center), one_sided, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor gradient_penalty_interpolate_cuda(const at::Tensor& real_in, const at::Tensor& fake_in,
                                             const at::Tensor& eps_in) {
  const int64_t sample_size = check_gradient_penalty_interpolate(real_in, fake_in, eps_in);
  check_cuda("gradient_penalty_interpolate", real_in, "real");
  const c10::cuda::CUDAGuard guard(real_in.device());
  const auto real = real_in.contiguous(), fake = fake_in.contiguous(), eps = eps_in.contiguous();
  const int64_t chunks = penalty_chunks(sample_size), tasks = real.size(0) * chunks;
  auto out = at::empty_like(real);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gradient_penalty_interpolate_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    interpolate_kernel<scalar_t, acc_t><<<blocks_for(tasks), kThreads, 0, stream>>>(
        real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(),
        sample_size, chunks, tasks, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gradient_penalty_interpolate_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& real_in, const at::Tensor& fake_in,
    const at::Tensor& eps_in) {
  const int64_t sample_size =
      check_gradient_penalty_interpolate_backward(grad_in, real_in, fake_in, eps_in);
  check_cuda("gradient_penalty_interpolate_backward", real_in, "real");
  const c10::cuda::CUDAGuard guard(real_in.device());
  const auto grad = grad_in.contiguous(), real = real_in.contiguous(), fake = fake_in.contiguous();
  const auto eps = eps_in.contiguous();
  const int64_t batch = real.size(0), chunks = penalty_chunks(sample_size), tasks = batch * chunks;
  auto grad_real = at::empty_like(real), grad_fake = at::empty_like(real);
  auto grad_eps = at::empty_like(eps);
  auto partial = at::empty({tasks}, real.options().dtype(norm_dtype(real.scalar_type())));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gradient_penalty_interpolate_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    interpolate_backward_kernel<scalar_t, acc_t><<<blocks_for(tasks), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), real.const_data_ptr<scalar_t>(), fake.const_data_ptr<scalar_t>(),
        eps.const_data_ptr<scalar_t>(), sample_size, chunks, tasks, grad_real.mutable_data_ptr<scalar_t>(),
        grad_fake.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials_kernel<scalar_t, acc_t><<<blocks_for((batch + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        partial.const_data_ptr<acc_t>(), batch, chunks, grad_eps.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_real, grad_fake, grad_eps};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("gradient_penalty", &gradient_penalty_cuda);
  m.impl("gradient_penalty_backward", &gradient_penalty_backward_cuda);
  m.impl("gradient_penalty_interpolate", &gradient_penalty_interpolate_cuda);
  m.impl("gradient_penalty_interpolate_backward", &gradient_penalty_interpolate_backward_cuda);
}

}  // namespace genfast
