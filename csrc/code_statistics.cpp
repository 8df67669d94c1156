#include "code_statistics.h"

#include <ATen/ATen.h>

namespace genfast {

void check_code_statistics(const at::Tensor& x, const at::Tensor& indices, int64_t num_codes) {
  const char* op = "code_statistics";
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D (N, D), got shape ", x.sizes());
  TORCH_CHECK_VALUE(indices.dim() == 1 && indices.size(0) == x.size(0), op,
              ": indices must have shape (", x.size(0), ",) to match x, got ", indices.sizes());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == indices.device(), op,
              ": x and indices must be on the same device, got ", x.device(), " and ",
              indices.device());
  TORCH_CHECK_VALUE(num_codes >= 1 && num_codes <= kMaxIndex32, op,
              ": num_codes must be between 1 and ", kMaxIndex32, ", got ", num_codes);
}

at::ScalarType code_statistics_sum_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace genfast
