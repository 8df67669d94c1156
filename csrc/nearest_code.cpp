#include "nearest_code.h"

#include <ATen/ATen.h>

namespace genfast {

void check_nearest_code(const at::Tensor& x, const at::Tensor& codebook) {
  const char* op = "nearest_code";
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (N, D), got shape ", x.sizes());
  TORCH_CHECK_VALUE(codebook.dim() == 2, op, ": codebook must be 2-D (K, D), got shape ",
              codebook.sizes());
  TORCH_CHECK_VALUE(x.size(1) == codebook.size(1), op, ": x has ", x.size(1),
              " features per row but the codebook's codes have ", codebook.size(1));
  TORCH_CHECK_VALUE(codebook.size(0) > 0, op, ": codebook must have at least one code, got shape ",
              codebook.sizes());
  TORCH_CHECK_VALUE(codebook.size(1) > 0, op, ": vectors must have at least one feature, got D = 0");
  TORCH_CHECK_VALUE(codebook.size(0) <= kMaxIndex32, op, ": at most ", kMaxIndex32,
              " codes are supported, got ", codebook.size(0));
  TORCH_CHECK_TYPE(x.scalar_type() == codebook.scalar_type(), op,
              ": x and codebook must have the same dtype, got ", x.scalar_type(), " and ",
              codebook.scalar_type());
  TORCH_CHECK_VALUE(x.device() == codebook.device(), op,
              ": x and codebook must be on the same device, got ", x.device(), " and ",
              codebook.device());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op,
              ": x and codebook must be floating point, got ", x.scalar_type());
}

}  // namespace genfast
