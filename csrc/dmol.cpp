#include "dmol.h"

#include <cmath>

#include <ATen/ATen.h>

namespace genfast {
namespace {

void check_sizes(const char* op, int64_t num_mixtures, int64_t levels) {
  TORCH_CHECK_VALUE(num_mixtures >= 1, op, ": num_mixtures must be >= 1, got ", num_mixtures);
  TORCH_CHECK_VALUE(levels >= 2, op, ": levels must be >= 2, got ", levels);
}

void check_params(const char* op, const at::Tensor& params) {
  TORCH_CHECK_TYPE(params.scalar_type() == at::kFloat || params.scalar_type() == at::kDouble, op,
              ": params must be float32 or float64, got ", params.scalar_type());
  TORCH_CHECK_VALUE(params.dim() == 4, op, ": params must have shape (B, P, H, W), got ", params.sizes());
}

void check_same_device(const char* op, const at::Tensor& t, const char* name, const at::Tensor& params) {
  TORCH_CHECK_VALUE(t.device() == params.device(), op, ": ", name, " must be on params' device ", params.device(),
              ", got ", t.device());
}

// (B, H, W) per-pixel values of params' dtype and device.
void check_per_pixel(const char* op, const at::Tensor& t, const char* name, const at::Tensor& params) {
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == params.size(0) && t.size(1) == params.size(2) &&
                  t.size(2) == params.size(3),
              op, ": ", name, " must have shape (", params.size(0), ", ", params.size(2), ", ", params.size(3),
              "), one value per pixel, got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == params.scalar_type(), op, ": ", name, " must have params' dtype ",
              params.scalar_type(), ", got ", t.scalar_type());
  check_same_device(op, t, name, params);
}

}  // namespace

void check_dmol_loss(const char* op, const at::Tensor& params, const at::Tensor& x, int64_t num_mixtures,
                     int64_t levels) {
  check_sizes(op, num_mixtures, levels);
  check_params(op, params);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kLong, op, ": x must be int64 levels, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4 && (x.size(1) == 1 || x.size(1) == 3), op,
              ": x must have shape (B, C, H, W) with C = 1 or 3, got ", x.sizes());
  check_same_device(op, x, "x", params);
  TORCH_CHECK_VALUE(x.size(0) == params.size(0) && x.size(2) == params.size(2) && x.size(3) == params.size(3), op,
              ": x ", x.sizes(), " and params ", params.sizes(), " must agree in B, H and W");
  const int64_t expected = dmol_params(x.size(1), num_mixtures);
  TORCH_CHECK_VALUE(params.size(1) == expected, op, ": params must have ", expected, " channels for ", x.size(1),
              "-channel images and num_mixtures=", num_mixtures, " (", x.size(1) == 3 ? 10 : 3,
              " per mixture), got ", params.size(1));
  if (x.numel() > 0) {
    const auto [low, high] = at::aminmax(x);
    const int64_t lo = low.item<int64_t>(), hi = high.item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < levels, op, ": x must hold levels in [0, ", levels, "), got values in [", lo,
                ", ", hi, "]");
  }
}

void check_dmol_loss_backward(const at::Tensor& grad_nll, const at::Tensor& params, const at::Tensor& x,
                              const at::Tensor& nll, int64_t num_mixtures, int64_t levels) {
  const char* op = "dmol_loss_backward";
  check_dmol_loss(op, params, x, num_mixtures, levels);
  check_per_pixel(op, grad_nll, "grad_nll", params);
  check_per_pixel(op, nll, "nll", params);
}

void check_dmol_sample(const at::Tensor& params, const at::Tensor& u, int64_t num_mixtures, int64_t levels,
                       double temperature) {
  const char* op = "dmol_sample";
  check_sizes(op, num_mixtures, levels);
  check_params(op, params);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK_VALUE(params.size(1) == dmol_params(1, num_mixtures) || params.size(1) == dmol_params(3, num_mixtures),
              op, ": params must have ", dmol_params(1, num_mixtures), " (grey) or ",
              dmol_params(3, num_mixtures), " (RGB) channels for num_mixtures=", num_mixtures, ", got ",
              params.size(1));
  const int64_t channels = params.size(1) == dmol_params(1, num_mixtures) ? 1 : 3;
  TORCH_CHECK_TYPE(u.scalar_type() == at::kDouble, op, ": u must be float64, got ", u.scalar_type());
  TORCH_CHECK_VALUE(u.dim() == 4 && u.size(0) == params.size(0) && u.size(1) == channels + 1 &&
                  u.size(2) == params.size(2) && u.size(3) == params.size(3),
              op, ": u must have shape (", params.size(0), ", ", channels + 1, ", ", params.size(2), ", ",
              params.size(3), "), the mixture's and each colour's uniform per pixel, got ", u.sizes());
  check_same_device(op, u, "u", params);
  if (u.numel() > 0) {
    const auto [low, high] = at::aminmax(u);
    const double lo = low.item<double>(), hi = high.item<double>();
    TORCH_CHECK_VALUE(lo >= 0 && hi <= 1, op, ": u must hold uniforms in [0, 1], got values in [", lo, ", ", hi, "]");
  }
}

}  // namespace genfast
