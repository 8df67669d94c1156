#include "pixelcnn_row.h"

#include <cmath>
#include <utility>

#include <ATen/ATen.h>

namespace genfast {
namespace {

constexpr const char* kOp = "pixelcnn_row";

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, kOp, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

}  // namespace

PixelCNNRowShape check_pixelcnn_row(
    const at::Tensor& values, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& input_bias, const at::Tensor& block_bias,
    const at::Tensor& feature_table, const at::Tensor& input_weight,
    const at::Tensor& reduce_weight, const at::Tensor& reduce_bias, const at::Tensor& conv_weight,
    const at::Tensor& expand_weight, const at::Tensor& expand_bias,
    const at::Tensor& hidden_weight, const at::Tensor& hidden_bias,
    const at::Tensor& output_weight, const at::Tensor& output_bias) {
  const auto dtype = input_weight.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, kOp,
              ": input_weight must be float32 or float64, got ", dtype);
  const std::pair<const at::Tensor*, const char*> tensors[] = {
      {&values, "values"}, {&known, "known"}, {&uniforms, "uniforms"},
      {&input_bias, "input_bias"}, {&block_bias, "block_bias"},
      {&feature_table, "feature_table"}, {&input_weight, "input_weight"},
      {&reduce_weight, "reduce_weight"}, {&reduce_bias, "reduce_bias"},
      {&conv_weight, "conv_weight"}, {&expand_weight, "expand_weight"},
      {&expand_bias, "expand_bias"}, {&hidden_weight, "hidden_weight"},
      {&hidden_bias, "hidden_bias"}, {&output_weight, "output_weight"},
      {&output_bias, "output_bias"}};
  for (int i = 0; i < 16; ++i) {
    const at::Tensor& t = *tensors[i].first;
    TORCH_CHECK(t.device() == input_weight.device(), kOp, ": ", tensors[i].second,
                " must be on input_weight's device ", input_weight.device(), ", got ", t.device());
    if (i >= 3) {
      TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", tensors[i].second,
                  " must have input_weight's dtype ", dtype, ", got ", t.scalar_type());
    }
  }
  TORCH_CHECK(values.scalar_type() == at::kLong, kOp, ": values must be int64, got ",
              values.scalar_type());
  TORCH_CHECK(known.scalar_type() == at::kBool, kOp, ": known must be bool, got ",
              known.scalar_type());
  TORCH_CHECK(uniforms.scalar_type() == at::kDouble, kOp, ": uniforms must be float64, got ",
              uniforms.scalar_type());
  TORCH_CHECK(values.dim() == 3 && values.numel() > 0, kOp,
              ": values must be a non-empty (N, C, W) tensor, got shape ", values.sizes());
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, kOp,
              ": temperature must be a finite number > 0, got ", temperature);

  PixelCNNRowShape s;
  s.batch = values.size(0);
  s.channels = values.size(1);
  s.width = values.size(2);
  TORCH_CHECK(feature_table.dim() == 2 && feature_table.size(0) >= 2 && feature_table.size(1) >= 1,
              kOp, ": feature_table must be (levels >= 2, F >= 1), got ", feature_table.sizes());
  s.levels = feature_table.size(0);
  s.features = feature_table.size(1);
  s.in_channels = s.channels * s.features;
  TORCH_CHECK(input_weight.dim() == 2 && input_weight.size(0) >= s.in_channels &&
                  input_weight.size(0) % s.in_channels == 0 && input_weight.size(1) >= 1 &&
                  input_weight.size(1) % s.channels == 0,
              kOp, ": input_weight must be ((p + 1) * Cin, R) with Cin = ", s.in_channels,
              " and R a multiple of C = ", s.channels, ", got ", input_weight.sizes());
  s.pad = input_weight.size(0) / s.in_channels - 1;
  s.wide = input_weight.size(1);
  TORCH_CHECK(reduce_weight.dim() == 3 && reduce_weight.size(1) == s.wide &&
                  reduce_weight.size(2) >= 1 && reduce_weight.size(2) % s.channels == 0,
              kOp, ": reduce_weight must be (B, R=", s.wide, ", Hd) with Hd a multiple of C = ",
              s.channels, ", got ", reduce_weight.sizes());
  s.blocks = reduce_weight.size(0);
  s.hidden = reduce_weight.size(2);
  const int64_t N = s.batch, C = s.channels, W = s.width, B = s.blocks, Hd = s.hidden, R = s.wide;
  check_shape(known, "known", {N, C, W});
  check_shape(uniforms, "uniforms", {W, C, N});
  check_shape(input_bias, "input_bias", {N, W, R});
  check_shape(block_bias, "block_bias", {B, N, W, Hd});
  check_shape(reduce_bias, "reduce_bias", {B, Hd});
  check_shape(conv_weight, "conv_weight", {B, 2 * Hd, Hd});
  check_shape(expand_weight, "expand_weight", {B, Hd, R});
  check_shape(expand_bias, "expand_bias", {B, R});
  check_shape(hidden_weight, "hidden_weight", {R, R});
  check_shape(hidden_bias, "hidden_bias", {R});
  check_shape(output_weight, "output_weight", {R, C * s.levels});
  check_shape(output_bias, "output_bias", {C * s.levels});
  // Kernels index within one image's row and within a weight with 32-bit integers.
  TORCH_CHECK(C * W * s.levels <= kMaxIndex32 && (s.pad + W) * s.in_channels <= kMaxIndex32 &&
                  B * (W + 1) * Hd <= kMaxIndex32 && input_weight.numel() <= kMaxIndex32 &&
                  output_weight.numel() <= kMaxIndex32 && reduce_weight.numel() <= kMaxIndex32 &&
                  conv_weight.numel() <= kMaxIndex32 && expand_weight.numel() <= kMaxIndex32 &&
                  N <= kMaxIndex32,
              kOp, ": a row of one image or a weight is too large for 32-bit indexing");
  return s;
}

}  // namespace genfast
