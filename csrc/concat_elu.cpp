#include "concat_elu.h"

#include <ATen/ATen.h>

#include "checks.h"

namespace genfast {

ConcatEluLayout check_concat_elu(const char* op, const at::Tensor& x, int64_t dim) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dimension, got shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ",
                   dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(-x.dim() <= dim && dim < x.dim(), op, ": dim must be in [", -x.dim(), ", ", x.dim(),
                    ") for x of shape ", x.sizes(), ", got ", dim);
  const int64_t d = dim < 0 ? dim + x.dim() : dim;
  int64_t outer = 1;
  for (int64_t i = 0; i < d; ++i) outer *= x.size(i);
  return {outer, outer == 0 ? 0 : x.numel() / outer};
}

ConcatEluLayout check_concat_elu_backward(const at::Tensor& grad_output, const at::Tensor& x, int64_t dim) {
  const char* op = "concat_elu_backward";
  const auto layout = check_concat_elu(op, x, dim);
  check_shape(op, grad_output, "grad_output", concat_elu_shape(x, dim));
  check_same_dtype(op, grad_output, "grad_output", x, "x");
  check_same_device(op, grad_output, "grad_output", x, "x");
  return layout;
}

std::vector<int64_t> concat_elu_shape(const at::Tensor& x, int64_t dim) {
  auto shape = x.sizes().vec();
  shape[dim < 0 ? dim + x.dim() : dim] *= 2;
  return shape;
}

}  // namespace genfast
