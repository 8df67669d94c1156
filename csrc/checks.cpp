#include "checks.h"

#include <sstream>

#include <ATen/ATen.h>

namespace genfast {

const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kBool: return "bool";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(dtype);
  }
}

void check_levels_in_range(const char* op, const char* name, const at::Tensor& values,
                           const at::Tensor& where, int64_t low, int64_t levels,
                           const char* rule, int64_t column_offset) {
  if (values.numel() == 0) return;
  at::Tensor bad = (values < low) | (values >= levels);
  if (where.defined()) bad = bad & where;
  if (!bad.any().item<bool>()) return;
  // The error path only: find and name the first offending element.
  const at::Tensor index = bad.nonzero()[0].cpu();
  std::ostringstream where_text;
  at::Tensor value = values;
  for (int64_t d = 0; d < index.numel(); ++d) {
    const int64_t i = index[d].item<int64_t>();
    where_text << (d ? ", " : "") << (d == index.numel() - 1 ? i + column_offset : i);
    value = value.select(0, i);
  }
  TORCH_CHECK_VALUE(false, op, ": ", rule, "; ", name, "[", where_text.str(), "] = ",
                    value.item<int64_t>(), " is not a level in [0, ", levels, ")");
}

}  // namespace genfast
