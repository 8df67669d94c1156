#include "pixelcnn_row.h"

#include <ATen/ATen.h>

namespace genfast {
namespace {

constexpr const char* kOp = "pixelcnn_row";

}  // namespace

PixelCNNRowShape check_pixelcnn_row(const at::Tensor& values, const at::Tensor& known,
                                    const at::Tensor& uniforms, double temperature,
                                    const at::Tensor& input_bias, const at::Tensor& block_bias,
                                    const PixelCNNRowWeights& w, bool check_levels) {
  // input_weight is the reference for dtype and device.
  const at::Tensor& like = w.input_weight;
  check_float_dtype(kOp, like, "input_weight");
  check_weights_like(kOp, w, like, "input_weight");
  check_same_device(kOp, input_bias, "input_bias", like, "input_weight");
  check_same_dtype(kOp, input_bias, "input_bias", like, "input_weight");
  check_same_device(kOp, block_bias, "block_bias", like, "input_weight");
  check_same_dtype(kOp, block_bias, "block_bias", like, "input_weight");
  check_same_device(kOp, values, "values", like, "input_weight");
  check_same_device(kOp, known, "known", like, "input_weight");
  check_same_device(kOp, uniforms, "uniforms", like, "input_weight");
  check_dtype(kOp, values, "values", at::kLong);
  check_dtype(kOp, known, "known", at::kBool);
  check_dtype(kOp, uniforms, "uniforms", at::kDouble);
  TORCH_CHECK_VALUE(values.dim() == 3 && values.numel() > 0, kOp,
                    ": values must be a non-empty (N, C, W) tensor, got shape ", values.sizes());
  check_temperature(kOp, temperature);

  PixelCNNRowShape s;
  s.batch = values.size(0);
  s.channels = values.size(1);
  s.width = values.size(2);
  const at::Tensor& table = w.feature_table;
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(0) >= 2 && table.size(1) >= 1, kOp,
                    ": feature_table must be (levels >= 2, F >= 1), got ", table.sizes());
  s.levels = table.size(0);
  s.features = table.size(1);
  s.in_channels = s.channels * s.features;
  const at::Tensor& iw = w.input_weight;
  TORCH_CHECK_VALUE(iw.dim() == 2 && iw.size(0) >= s.in_channels && iw.size(0) % s.in_channels == 0 &&
                        iw.size(1) >= 1 && iw.size(1) % s.channels == 0,
                    kOp, ": input_weight must be ((p + 1) * Cin, R) with Cin = ", s.in_channels,
                    " and R a multiple of C = ", s.channels, ", got ", iw.sizes());
  s.pad = iw.size(0) / s.in_channels - 1;
  s.wide = iw.size(1);
  const at::Tensor& rw = w.reduce_weight;
  TORCH_CHECK_VALUE(rw.dim() == 3 && rw.size(1) == s.wide && rw.size(2) >= 1 &&
                        rw.size(2) % s.channels == 0,
                    kOp, ": reduce_weight must be (B, R=", s.wide,
                    ", Hd) with Hd a multiple of C = ", s.channels, ", got ", rw.sizes());
  s.blocks = rw.size(0);
  s.hidden = rw.size(2);
  const int64_t N = s.batch, C = s.channels, W = s.width, B = s.blocks, Hd = s.hidden, R = s.wide;
  check_shape(kOp, known, "known", {N, C, W});
  check_shape(kOp, uniforms, "uniforms", {W, C, N});
  check_shape(kOp, input_bias, "input_bias", {N, W, R});
  check_shape(kOp, block_bias, "block_bias", {B, N, W, Hd});
  check_shape(kOp, w.reduce_bias, "reduce_bias", {B, Hd});
  check_shape(kOp, w.conv_weight, "conv_weight", {B, 2 * Hd, Hd});
  check_shape(kOp, w.expand_weight, "expand_weight", {B, Hd, R});
  check_shape(kOp, w.expand_bias, "expand_bias", {B, R});
  check_shape(kOp, w.hidden_weight, "hidden_weight", {R, R});
  check_shape(kOp, w.hidden_bias, "hidden_bias", {R});
  check_shape(kOp, w.output_weight, "output_weight", {R, C * s.levels});
  check_shape(kOp, w.output_bias, "output_bias", {C * s.levels});
  // Kernels index within one image's row and within a weight with 32-bit integers.
  TORCH_CHECK_VALUE(C * W * s.levels <= kMaxIndex32 && (s.pad + W) * s.in_channels <= kMaxIndex32 &&
                        B * (W + 1) * Hd <= kMaxIndex32 && iw.numel() <= kMaxIndex32 &&
                        w.output_weight.numel() <= kMaxIndex32 && rw.numel() <= kMaxIndex32 &&
                        w.conv_weight.numel() <= kMaxIndex32 &&
                        w.expand_weight.numel() <= kMaxIndex32 && N <= kMaxIndex32,
                    kOp, ": a row of one image or a weight is too large for 32-bit indexing");
  if (check_levels) {
    check_levels_in_range(kOp, "values", values, known, 0, s.levels,
                          "known values must be levels");
  }
  return s;
}

}  // namespace genfast
