// softmax_cross_entropy on CUDA. Logits are (outer, L, inner) memory: the forward runs
// one thread per position (neighbouring threads read neighbouring inner positions of
// a class row, coalesced when inner is large) with an online logsumexp; the backward
// one thread per logit. Out-of-range targets are flagged (lowest position) and
// reported after the kernel, which costs one synchronisation per call.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../softmax_cross_entropy.h"

namespace genfast {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)));
}

__device__ inline bool target_ok(int64_t t, int64_t classes, int64_t p, unsigned long long* first_bad) {
  if (t >= 0 && t < classes) return true;
  atomicMin(first_bad, static_cast<unsigned long long>(p));
  return false;
}

template <typename scalar_t, typename acc_t>
__global__ void xent_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ target,
                            int64_t classes, int64_t inner, int64_t positions, acc_t* __restrict__ loss,
                            acc_t* __restrict__ max_out, acc_t* __restrict__ log_sum,
                            unsigned long long* __restrict__ first_bad) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < positions; p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = p / inner, j = p - o * inner;
    const scalar_t* base = x + o * classes * inner + j;
    acc_t max = -std::numeric_limits<acc_t>::infinity(), sum = 0;
    for (int64_t c = 0; c < classes; ++c) lse_update(static_cast<acc_t>(base[c * inner]), max, sum);
    const acc_t ls = log(sum);
    max_out[p] = max;
    log_sum[p] = ls;
    const int64_t t = target[p];
    loss[p] = target_ok(t, classes, p, first_bad) ? ls + (max - static_cast<acc_t>(base[t * inner]))
                                                  : std::numeric_limits<acc_t>::quiet_NaN();
  }
}

template <typename scalar_t, typename acc_t>
__global__ void xent_backward_kernel(const acc_t* __restrict__ grad_loss, const scalar_t* __restrict__ x,
                                     const int64_t* __restrict__ target, const acc_t* __restrict__ max,
                                     const acc_t* __restrict__ log_sum,
                                     int64_t classes, int64_t inner, int64_t n, scalar_t* __restrict__ grad,
                                     unsigned long long* __restrict__ first_bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % inner, oc = i / inner, c = oc % classes, p = (oc / classes) * inner + j;
    const int64_t t = target[p];
    const bool ok = target_ok(t, classes, p, first_bad);
    grad[i] = static_cast<scalar_t>(ok ? xent_grad(grad_loss[p], exp((static_cast<acc_t>(x[i]) - max[p]) - log_sum[p]), c == t)
                                       : std::numeric_limits<acc_t>::quiet_NaN());
  }
}

void raise_bad_target(const at::Tensor& first_bad, const at::Tensor& target, int64_t classes,
                      const char* op) {
  const auto bad = static_cast<unsigned long long>(first_bad.item<int64_t>());  // synchronises
  if (bad == std::numeric_limits<unsigned long long>::max()) return;
  const int64_t value = target.reshape(-1)[static_cast<int64_t>(bad)].item<int64_t>();
  TORCH_CHECK_VALUE(false, op, ": target must be in [0, ", classes, "), got ", value, " at flat position ", bad);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_cuda(const at::Tensor& logits,
                                                                          const at::Tensor& target_in) {
  const char* op = "softmax_cross_entropy";
  const auto l = check_softmax_cross_entropy(logits, target_in, op);
  TORCH_CHECK_VALUE(logits.is_cuda(), op, ": logits must be a CUDA tensor, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto target = xent_positions(target_in, l);
  const auto acc = xent_acc_dtype(logits);
  auto loss = at::empty(target.sizes(), logits.options().dtype(acc));
  auto max = at::empty(target.sizes(), logits.options().dtype(acc));
  auto log_sum = at::empty(target.sizes(), logits.options().dtype(acc));
  const int64_t positions = target.numel();
  if (positions == 0) return {loss, max, log_sum};  // empty: never permuted
  auto first_bad = at::full({1}, int64_t(-1), target.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "softmax_cross_entropy_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    xent_kernel<scalar_t, acc_t><<<blocks_for(positions), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        l.logits.const_data_ptr<scalar_t>(), target.const_data_ptr<int64_t>(), l.classes, l.inner, positions,
        loss.mutable_data_ptr<acc_t>(), max.mutable_data_ptr<acc_t>(), log_sum.mutable_data_ptr<acc_t>(),
        reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  raise_bad_target(first_bad, target, l.classes, op);
  return {xent_unpermute_positions(loss, l), xent_unpermute_positions(max, l),
          xent_unpermute_positions(log_sum, l)};
}

at::Tensor softmax_cross_entropy_backward_cuda(const at::Tensor& grad_loss_in, const at::Tensor& logits,
                                               const at::Tensor& target_in, const at::Tensor& max_in,
                                               const at::Tensor& log_sum_in) {
  const char* op = "softmax_cross_entropy_backward";
  check_softmax_cross_entropy_backward(grad_loss_in, logits, target_in, max_in, log_sum_in);
  const auto l = check_softmax_cross_entropy(logits, target_in, op);
  TORCH_CHECK_VALUE(logits.is_cuda(), op, ": logits must be a CUDA tensor, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto target = xent_positions(target_in, l);
  const auto grad_loss = xent_positions(grad_loss_in, l);
  const auto max = xent_positions(max_in, l);
  const auto log_sum = xent_positions(log_sum_in, l);
  auto grad = xent_empty_grad(logits, l);
  const int64_t n = grad.numel();
  if (n == 0) return grad;
  auto first_bad = at::full({1}, int64_t(-1), target.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "softmax_cross_entropy_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    xent_backward_kernel<scalar_t, acc_t><<<blocks_for(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad_loss.const_data_ptr<acc_t>(), l.logits.const_data_ptr<scalar_t>(), target.const_data_ptr<int64_t>(),
        max.const_data_ptr<acc_t>(), log_sum.const_data_ptr<acc_t>(), l.classes, l.inner, n, grad.mutable_data_ptr<scalar_t>(),
        reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  raise_bad_target(first_bad, target, l.classes, op);
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("softmax_cross_entropy", &softmax_cross_entropy_cuda);
  m.impl("softmax_cross_entropy_backward", &softmax_cross_entropy_backward_cuda);
}

}  // namespace genfast
