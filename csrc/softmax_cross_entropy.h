// softmax_cross_entropy: what the CPU and CUDA kernels share. For logits (N, L, ...)
// (L classes in dimension 1, F.cross_entropy's layout) and integer targets (N, ...):
//   max = max_l logits[:, l], log_sum = log sum_l exp(logits[:, l] - max)
//                                               per position (saved for the backward)
//   loss = log_sum + (max - logits[:, target])  per position
//   grad_logits[:, l] = grad_loss * (exp((logits[:, l] - max) - log_sum) - [l == target])
// Keeping max and log_sum apart (not their sum, the logsumexp) keeps the loss and the
// softmax exact to rounding even for logits far larger than log(L).
// The kernels read the logits in place as (outer, L, inner) contiguous memory: any
// layout where moving dimension 1 to some position m gives a contiguous tensor (the
// image models' (N, L, C, H, W) logits are a transposed view of (N, C, L, H, W):
// m = 2). Logits whose classes are contiguous but whose other dimensions are out of
// order in memory (a channels-last RGB model's (N, L, C, H, W), memory N, H, W, C, L) are
// read in place with those dimensions permuted, and the targets and per-position results
// permuted to match (small copies). Other layouts are copied once. grad_logits gets the
// logits' layout.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common.h"

namespace genfast {

// One step of an online logsumexp: (max, sum of exp(x - max)) updated with x.
template <typename T>
GENFAST_HOST_DEVICE inline void lse_update(T x, T& max, T& sum) {
  if (x > max) {
    sum = sum * exp(max - x) + T(1);
    max = x;
  } else {
    sum += exp(x - max);  // NaN x keeps a NaN sum: the loss is NaN, as the reference's
  }
}

// The gradient of the loss at one logit, given its softmax:
// g * (softmax - onehot).
template <typename T>
GENFAST_HOST_DEVICE inline T xent_grad(T g, T softmax, bool is_target) {
  return g * (softmax - (is_target ? T(1) : T(0)));
}

// The logits seen as (outer, classes, inner) contiguous memory.
struct XentLayout {
  at::Tensor logits;  // logits (permuted by perm), or a contiguous copy when no in-place view exists
  int64_t move_to;    // dimension 1 moved to move_to makes `logits` contiguous
  int64_t outer, classes, inner;
  std::vector<int64_t> perm;  // `logits` is the caller's permuted by perm; empty: not permuted
};

// Checks the arguments (the same on every backend) and finds the layout. Targets
// must be int64 of the logits' shape without dimension 1; their range is checked by
// the kernels.
XentLayout check_softmax_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                       const char* op);
void check_softmax_cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                                          const at::Tensor& target, const at::Tensor& max,
                                          const at::Tensor& log_sum);
// dtype of loss, max and log_sum: float64 for float64 logits, else float32.
at::ScalarType xent_acc_dtype(const at::Tensor& logits);
// An empty tensor of logits' shape laid out as `layout` reads them (dimension 1 at
// move_to, after the layout's permutation).
at::Tensor xent_empty_grad(const at::Tensor& logits, const XentLayout& layout);
// A per-position tensor (target's shape: target, grad_loss, max, log_sum) in the order the
// kernels walk the positions (the layout's permutation applied), contiguous.
at::Tensor xent_positions(const at::Tensor& t, const XentLayout& layout);
// The inverse: a per-position result of the kernels back in target's order, contiguous.
at::Tensor xent_unpermute_positions(const at::Tensor& t, const XentLayout& layout);

}  // namespace genfast
