#include "softmax_cross_entropy.h"

#include <algorithm>

#include <ATen/ATen.h>

namespace genfast {

XentLayout check_softmax_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                       const char* op) {
  TORCH_CHECK_VALUE(logits.dim() >= 2, op, ": logits must be (N, classes, ...) with at least 2 dimensions, "
              "got shape ", logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), op, ": logits must be floating point, got ",
              logits.scalar_type());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, op, ": target must be int64, got ",
              target.scalar_type());
  auto expected = logits.sizes().vec();
  expected.erase(expected.begin() + 1);
  TORCH_CHECK_VALUE(target.sizes() == at::IntArrayRef(expected), op, ": target must have shape ",
              at::IntArrayRef(expected), " (logits' without dimension 1), got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), op, ": target is on ", target.device(),
              " but logits are on ", logits.device());
  const int64_t classes = logits.size(1);
  TORCH_CHECK_VALUE(classes >= 1 && classes <= kMaxIndex32, op, ": logits must have between 1 and ",
              kMaxIndex32, " classes in dimension 1, got ", classes);
  XentLayout layout{logits, 1, 1, classes, 1, {}};
  bool in_place = false;
  for (int64_t m = 1; m < logits.dim() && !in_place; ++m) {
    if (logits.movedim(1, m).is_contiguous()) layout.move_to = m, in_place = true;
  }
  if (!in_place && logits.stride(1) == 1) {
    // Classes contiguous: the other dimensions by decreasing stride, classes last.
    std::vector<int64_t> others;
    for (int64_t d = 0; d < logits.dim(); ++d) {
      if (d != 1) others.push_back(d);
    }
    std::stable_sort(others.begin(), others.end(),
                     [&](int64_t a, int64_t b) { return logits.stride(a) > logits.stride(b); });
    std::vector<int64_t> perm{others[0], 1};
    perm.insert(perm.end(), others.begin() + 1, others.end());
    const auto permuted = logits.permute(perm);
    if (permuted.movedim(1, -1).is_contiguous()) {
      layout.logits = permuted, layout.perm = perm, layout.move_to = logits.dim() - 1, in_place = true;
    }
  }
  if (!in_place) layout.logits = logits.contiguous();
  for (int64_t d = 0; d < logits.dim(); ++d) {
    if (d == 1) continue;
    // Dimensions before dimension 1's new place make up `outer`, the rest `inner`.
    (d <= layout.move_to ? layout.outer : layout.inner) *= layout.logits.size(d);
  }
  return layout;
}

namespace {

// The layout's permutation of the logits' dimensions as one of target's (no dimension 1).
std::vector<int64_t> target_perm(const XentLayout& layout) {
  std::vector<int64_t> perm;
  for (const int64_t d : layout.perm) {
    if (d != 1) perm.push_back(d == 0 ? 0 : d - 1);
  }
  return perm;
}

std::vector<int64_t> inverse(const std::vector<int64_t>& perm) {
  std::vector<int64_t> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[perm[i]] = static_cast<int64_t>(i);
  return inv;
}

}  // namespace

at::Tensor xent_positions(const at::Tensor& t, const XentLayout& layout) {
  return layout.perm.empty() ? t.contiguous() : t.permute(target_perm(layout)).contiguous();
}

at::Tensor xent_unpermute_positions(const at::Tensor& t, const XentLayout& layout) {
  return layout.perm.empty() ? t : t.permute(inverse(target_perm(layout))).contiguous();
}

void check_softmax_cross_entropy_backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                                          const at::Tensor& target, const at::Tensor& max,
                                          const at::Tensor& log_sum) {
  const char* op = "softmax_cross_entropy_backward";
  check_softmax_cross_entropy(logits, target, op);
  const auto dtype = xent_acc_dtype(logits);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_loss", grad_loss},
                                {"max", max}, {"log_sum", log_sum}}) {
    TORCH_CHECK_VALUE(t.sizes() == target.sizes(), op, ": ", name, " must have target's shape ",
                target.sizes(), ", got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
                t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == logits.device(), op, ": ", name, " is on ", t.device(),
                " but logits are on ", logits.device());
  }
}

at::ScalarType xent_acc_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor xent_empty_grad(const at::Tensor& logits, const XentLayout& layout) {
  auto moved = layout.logits.movedim(1, layout.move_to).sizes().vec();
  auto grad = at::empty(moved, logits.options()).movedim(layout.move_to, 1);
  return layout.perm.empty() ? grad : grad.permute(inverse(layout.perm));
}

}  // namespace genfast
