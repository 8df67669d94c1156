#include "gated_pixelcnn_row.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>

namespace genfast {
namespace {

constexpr const char* kOp = "gated_pixelcnn_row";

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, kOp, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

}  // namespace

GatedRowShape check_gated_pixelcnn_row(
    const at::Tensor& prefix, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& feature_table, const at::Tensor& row_bias,
    const at::Tensor& first_weight, const at::Tensor& horizontal_weight,
    const at::Tensor& residual_weight, const at::Tensor& residual_bias,
    const at::Tensor& skip_weight, const at::Tensor& skip_bias, const at::Tensor& head_weight1,
    const at::Tensor& head_bias1, const at::Tensor& head_weight2, const at::Tensor& head_bias2) {
  const at::Tensor& w = row_bias;  // the reference for dtype and device
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, kOp,
              ": row_bias must be float32 or float64, got ", w.scalar_type());
  const std::pair<const at::Tensor*, const char*> tensors[] = {
      {&prefix, "prefix"}, {&known, "known"}, {&uniforms, "uniforms"},
      {&feature_table, "feature_table"}, {&first_weight, "first_weight"},
      {&horizontal_weight, "horizontal_weight"}, {&residual_weight, "residual_weight"},
      {&residual_bias, "residual_bias"}, {&skip_weight, "skip_weight"},
      {&skip_bias, "skip_bias"}, {&head_weight1, "head_weight1"}, {&head_bias1, "head_bias1"},
      {&head_weight2, "head_weight2"}, {&head_bias2, "head_bias2"}};
  for (const auto& [t, name] : tensors) {
    TORCH_CHECK(t->device() == w.device(), kOp, ": ", name, " must be on row_bias's device ",
                w.device(), ", got ", t->device());
    if (t != &prefix && t != &known && t != &uniforms) {
      TORCH_CHECK(t->scalar_type() == w.scalar_type(), kOp, ": ", name,
                  " must have row_bias's dtype ", w.scalar_type(), ", got ", t->scalar_type());
    }
  }
  TORCH_CHECK(prefix.scalar_type() == at::kLong, kOp, ": prefix must be int64, got ",
              prefix.scalar_type());
  TORCH_CHECK(known.scalar_type() == at::kBool, kOp, ": known must be bool, got ",
              known.scalar_type());
  TORCH_CHECK(uniforms.scalar_type() == at::kDouble, kOp, ": uniforms must be float64, got ",
              uniforms.scalar_type());
  TORCH_CHECK(prefix.dim() == 3 && prefix.numel() > 0, kOp,
              ": prefix must be a non-empty (N, C, W) tensor, got shape ", prefix.sizes());
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, kOp,
              ": temperature must be a finite number > 0, got ", temperature);

  GatedRowShape s;
  s.batch = prefix.size(0);
  s.channels = prefix.size(1);
  s.width = prefix.size(2);
  check_shape(known, "known", prefix.sizes());
  check_shape(uniforms, "uniforms", {s.width, s.channels, s.batch});
  TORCH_CHECK(feature_table.dim() == 2 && feature_table.size(0) >= 2 && feature_table.size(1) >= 1,
              kOp, ": feature_table must have shape (levels >= 2, E >= 1), got ",
              feature_table.sizes());
  s.levels = feature_table.size(0);
  s.features = feature_table.size(1);
  TORCH_CHECK(row_bias.dim() == 4 && row_bias.size(0) >= 1 && row_bias.size(1) == s.batch &&
                  row_bias.size(2) == s.width && row_bias.size(3) >= 2 * s.channels &&
                  row_bias.size(3) % (2 * s.channels) == 0,
              kOp, ": row_bias must have shape (L, N=", s.batch, ", W=", s.width,
              ", P) with P = 2 * hidden a multiple of 2 * C=", 2 * s.channels, ", got ",
              row_bias.sizes());
  s.layers = row_bias.size(0);
  s.hidden = row_bias.size(3) / 2;
  const int64_t P = s.pre(), H = s.hidden, L = s.layers;
  TORCH_CHECK(first_weight.dim() == 3 && first_weight.size(0) >= 1 &&
                  first_weight.size(1) == s.input_channels() && first_weight.size(2) == P,
              kOp, ": first_weight must have shape (T, C * E=", s.input_channels(), ", P=", P,
              "), got ", first_weight.sizes());
  s.taps = first_weight.size(0);
  check_shape(horizontal_weight, "horizontal_weight", {L - 1, s.taps, H, P});
  check_shape(residual_weight, "residual_weight", {L, H, H});
  check_shape(residual_bias, "residual_bias", {L, H});
  check_shape(skip_weight, "skip_weight", {L, H, H});
  check_shape(skip_bias, "skip_bias", {L, H});
  check_shape(head_weight1, "head_weight1", {H, H});
  check_shape(head_bias1, "head_bias1", {H});
  check_shape(head_weight2, "head_weight2", {H, s.channels * s.levels});
  check_shape(head_bias2, "head_bias2", {s.channels * s.levels});
  // The CUDA kernel indexes one image's row buffers and one weight with 32-bit ints.
  TORCH_CHECK(L * (s.width + s.taps) * std::max(H, s.input_channels()) <= kMaxIndex32 &&
                  horizontal_weight.numel() <= kMaxIndex32 && row_bias.numel() <= kMaxIndex32 &&
                  s.batch * s.channels * s.width * s.levels <= kMaxIndex32,
              kOp, ": the row (", s.batch, " images x ", s.width, " columns, ", L,
              " layers of ", H, " channels) is too large for 32-bit indexing");
  const at::Tensor bad = known & ((prefix < 0) | (prefix >= s.levels));
  TORCH_CHECK(!bad.any().item<bool>(), kOp, ": prefix must hold levels in [0, ", s.levels,
              ") wherever known is true");
  return s;
}

}  // namespace genfast
