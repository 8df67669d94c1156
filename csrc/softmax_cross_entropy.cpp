#include "softmax_cross_entropy.h"

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
  XentLayout layout{logits, 1, 1, classes, 1};
  for (int64_t m = 1; m < logits.dim(); ++m) {
    if (logits.movedim(1, m).is_contiguous()) {
      layout.move_to = m;
      break;
    }
    if (m == logits.dim() - 1) layout.logits = logits.contiguous();
  }
  for (int64_t d = 0; d < logits.dim(); ++d) {
    if (d == 1) continue;
    // Dimensions before dimension 1's new place make up `outer`, the rest `inner`.
    (d <= layout.move_to ? layout.outer : layout.inner) *= logits.size(d);
  }
  return layout;
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
  auto moved = logits.movedim(1, layout.move_to).sizes().vec();
  return at::empty(moved, logits.options()).movedim(layout.move_to, 1);
}

}  // namespace genfast
