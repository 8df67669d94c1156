#include "gated_activation.h"

#include <ATen/ATen.h>

namespace genfast {

int64_t check_gated_activation(const at::Tensor& x, int64_t groups) {
  const char* op = "gated_activation";
  TORCH_CHECK_VALUE(x.dim() >= 2, op, ": x must be (N, 2 * C, ...) with at least 2 dimensions, got shape ",
              x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be positive, got ", groups);
  TORCH_CHECK_VALUE(x.size(1) % (2 * groups) == 0, op, ": x's channels (", x.size(1),
              ") must be a multiple of 2 * groups (", 2 * groups, ")");
  return x.numel() == 0 ? 0 : x.numel() / (x.size(0) * 2 * groups);
}

int64_t check_gated_activation_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                        int64_t groups) {
  const int64_t half = check_gated_activation(x, groups);
  const auto shape = gated_activation_shape(x);
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(shape), "gated_activation_backward: ",
              "grad_output must have shape ", at::IntArrayRef(shape), ", got ", grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == x.scalar_type(), "gated_activation_backward: ",
              "grad_output must have x's dtype ", x.scalar_type(), ", got ", grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.device() == x.device(), "gated_activation_backward: grad_output is on ",
              grad_output.device(), " but x is on ", x.device());
  return half;
}

GateBlocks gated_activation_blocks(const at::Tensor& x, int64_t groups, int64_t contiguous_half) {
  if (is_channels_last(x)) return {x, x.size(1) / (2 * groups), at::MemoryFormat::ChannelsLast};
  return {x.contiguous(), contiguous_half, at::MemoryFormat::Contiguous};
}

std::vector<int64_t> gated_activation_shape(const at::Tensor& x) {
  auto shape = x.sizes().vec();
  shape[1] /= 2;
  return shape;
}

}  // namespace genfast
