#include "gradient_penalty.h"

#include <cmath>

#include <ATen/ATen.h>

namespace genfast {
namespace {

void check_floating(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

void check_like(const char* op, const at::Tensor& t, const char* name, const at::Tensor& ref,
                const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " and ", ref_name,
              " must have the same dtype, got ", t.scalar_type(), " and ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " and ", ref_name,
              " must be on the same device, got ", t.device(), " and ", ref.device());
}

// A batch (N, ...) with N >= 1 samples of M >= 1 elements each; returns M.
int64_t check_batch(const char* op, const at::Tensor& t, const char* name) {
  check_floating(op, t, name);
  TORCH_CHECK_VALUE(t.dim() >= 1, op, ": ", name, " must have a batch dimension (N, ...), got a 0-D tensor");
  TORCH_CHECK_VALUE(t.numel() > 0, op, ": ", name, " must not be empty, got shape ", t.sizes());
  return t.numel() / t.size(0);
}

// A per-sample vector (N,).
void check_per_sample(const char* op, const at::Tensor& t, const char* name, int64_t batch,
                      at::ScalarType dtype, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == batch, op, ": ", name, " must have shape (", batch,
              "), one value per sample, got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ",
              t.device());
}

void check_scalars(const char* op, double weight, double center) {
  TORCH_CHECK_VALUE(std::isfinite(weight), op, ": weight must be finite, got ", weight);
  TORCH_CHECK_VALUE(std::isfinite(center) && center >= 0, op,
              ": center must be finite and non-negative, got ", center);
}

int64_t check_interpolate_args(const char* op, const at::Tensor& real, const at::Tensor& fake,
                               const at::Tensor& eps) {
  const int64_t sample_size = check_batch(op, real, "real");
  TORCH_CHECK_VALUE(fake.sizes() == real.sizes(), op, ": real and fake must have the same shape, got ",
              real.sizes(), " and ", fake.sizes());
  check_like(op, fake, "fake", real, "real");
  check_per_sample(op, eps, "eps", real.size(0), real.scalar_type(), real);
  return sample_size;
}

}  // namespace

at::ScalarType norm_dtype(at::ScalarType grad_dtype) {
  return grad_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

int64_t check_gradient_penalty(const at::Tensor& grad, double weight, double center) {
  const char* op = "gradient_penalty";
  check_scalars(op, weight, center);
  return check_batch(op, grad, "grad");
}

int64_t check_gradient_penalty_backward(const at::Tensor& grad_penalty,
                                        const c10::optional<at::Tensor>& grad_norms,
                                        const at::Tensor& grad, const at::Tensor& norms,
                                        double weight, double center) {
  const char* op = "gradient_penalty_backward";
  check_scalars(op, weight, center);
  const int64_t sample_size = check_batch(op, grad, "grad");
  TORCH_CHECK_VALUE(grad_penalty.numel() == 1, op, ": grad_penalty must hold one value, got shape ",
              grad_penalty.sizes());
  check_like(op, grad_penalty, "grad_penalty", grad, "grad");
  const auto dtype = norm_dtype(grad.scalar_type());
  check_per_sample(op, norms, "norms", grad.size(0), dtype, grad);
  if (grad_norms.has_value()) check_per_sample(op, *grad_norms, "grad_norms", grad.size(0), dtype, grad);
  return sample_size;
}

int64_t check_gradient_penalty_interpolate(const at::Tensor& real, const at::Tensor& fake,
                                           const at::Tensor& eps) {
  return check_interpolate_args("gradient_penalty_interpolate", real, fake, eps);
}

int64_t check_gradient_penalty_interpolate_backward(const at::Tensor& grad_output,
                                                    const at::Tensor& real, const at::Tensor& fake,
                                                    const at::Tensor& eps) {
  const char* op = "gradient_penalty_interpolate_backward";
  const int64_t sample_size = check_interpolate_args(op, real, fake, eps);
  TORCH_CHECK_VALUE(grad_output.sizes() == real.sizes(), op, ": grad_output must have the shape of real ",
              real.sizes(), ", got ", grad_output.sizes());
  check_like(op, grad_output, "grad_output", real, "real");
  return sample_size;
}

}  // namespace genfast
