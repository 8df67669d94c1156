#include "gated_pixelcnn_row.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include <ATen/ATen.h>

namespace genfast {
namespace {

constexpr const char* kOp = "gated_pixelcnn_row";

}  // namespace

GatedRowShape check_gated_pixelcnn_row(const at::Tensor& prefix, const at::Tensor& known,
                                       const at::Tensor& uniforms, double temperature,
                                       const at::Tensor& row_bias, const GatedRowWeights& w,
                                       bool check_levels) {
  // row_bias is the reference for dtype and device.
  check_float_dtype(kOp, row_bias, "row_bias");
  check_weights_like(kOp, w, row_bias, "row_bias");
  check_same_device(kOp, prefix, "prefix", row_bias, "row_bias");
  check_same_device(kOp, known, "known", row_bias, "row_bias");
  check_same_device(kOp, uniforms, "uniforms", row_bias, "row_bias");
  check_dtype(kOp, prefix, "prefix", at::kLong);
  check_dtype(kOp, known, "known", at::kBool);
  check_dtype(kOp, uniforms, "uniforms", at::kDouble);
  TORCH_CHECK_VALUE(prefix.dim() == 3 && prefix.numel() > 0, kOp,
                    ": prefix must be a non-empty (N, C, W) tensor, got shape ", prefix.sizes());
  check_temperature(kOp, temperature);

  GatedRowShape s;
  s.batch = prefix.size(0);
  s.channels = prefix.size(1);
  s.width = prefix.size(2);
  check_shape(kOp, known, "known", prefix.sizes());
  check_shape(kOp, uniforms, "uniforms", {s.width, s.channels, s.batch});
  const at::Tensor& table = w.feature_table;
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(0) >= 2 && table.size(1) >= 1, kOp,
                    ": feature_table must have shape (levels >= 2, E >= 1), got ", table.sizes());
  s.levels = table.size(0);
  s.features = table.size(1);
  TORCH_CHECK_VALUE(row_bias.dim() == 4 && row_bias.size(0) >= 1 && row_bias.size(1) == s.batch &&
                        row_bias.size(2) == s.width && row_bias.size(3) >= 2 * s.channels &&
                        row_bias.size(3) % (2 * s.channels) == 0,
                    kOp, ": row_bias must have shape (L, N=", s.batch, ", W=", s.width,
                    ", P) with P = 2 * hidden a multiple of 2 * C=", 2 * s.channels, ", got ",
                    row_bias.sizes());
  s.layers = row_bias.size(0);
  s.hidden = row_bias.size(3) / 2;
  const int64_t P = s.pre(), H = s.hidden, L = s.layers;
  TORCH_CHECK_VALUE(w.first_weight.dim() == 3 && w.first_weight.size(0) >= 1 &&
                        w.first_weight.size(1) == s.input_channels() && w.first_weight.size(2) == P,
                    kOp, ": first_weight must have shape (T, C * E=", s.input_channels(), ", P=", P,
                    "), got ", w.first_weight.sizes());
  s.taps = w.first_weight.size(0);
  check_shape(kOp, w.horizontal_weight, "horizontal_weight", {L - 1, s.taps, H, P});
  check_shape(kOp, w.residual_weight, "residual_weight", {L, H, H});
  check_shape(kOp, w.residual_bias, "residual_bias", {L, H});
  check_shape(kOp, w.skip_weight, "skip_weight", {L, H, H});
  check_shape(kOp, w.skip_bias, "skip_bias", {L, H});
  check_shape(kOp, w.head_weight1, "head_weight1", {H, H});
  check_shape(kOp, w.head_bias1, "head_bias1", {H});
  check_shape(kOp, w.head_weight2, "head_weight2", {H, s.channels * s.levels});
  check_shape(kOp, w.head_bias2, "head_bias2", {s.channels * s.levels});
  // The CUDA kernel indexes one image's row buffers and one weight with 32-bit ints.
  TORCH_CHECK_VALUE(L * (s.width + s.taps) * std::max(H, s.input_channels()) <= kMaxIndex32 &&
                        w.horizontal_weight.numel() <= kMaxIndex32 &&
                        row_bias.numel() <= kMaxIndex32 &&
                        s.batch * s.channels * s.width * s.levels <= kMaxIndex32,
                    kOp, ": the row (", s.batch, " images x ", s.width, " columns, ", L,
                    " layers of ", H, " channels) is too large for 32-bit indexing");
  if (check_levels) {
    check_levels_in_range(kOp, "prefix", prefix, known, 0, s.levels,
                          "prefix must hold levels wherever known is true");
  }
  return s;
}

GatedRowSharedMemory gated_row_shared_memory(const GatedRowShape& s, size_t element_size) {
  const size_t group = static_cast<size_t>(s.hidden / s.channels);
  return {element_size * (static_cast<size_t>(s.layers + 3) * s.hidden + 3 * group),
          element_size * kGemvWarps * 32};
}

GatedRowTiling gated_row_tiling(const GatedRowShape& s) {
  // Tile counts in 64 bits first: the kernel indexes tiles with ints.
  const int64_t image_tiles = (s.batch + kRowTileImages - 1) / kRowTileImages;
  const int64_t group_columns = (s.hidden / s.channels + kRowTileColumns - 1) / kRowTileColumns;
  const int64_t level_columns = (s.levels + kRowTileColumns - 1) / kRowTileColumns;
  TORCH_CHECK_VALUE(2 * group_columns * image_tiles <= INT_MAX && level_columns * image_tiles <= INT_MAX &&
                        s.layers + 3 <= INT_MAX,
                    kOp, ": ", s.batch, " images of ", s.hidden, " hidden channels and ", s.levels,
                    " levels are too many tiles for the CUDA kernel");
  return GatedRowTiling{static_cast<int>(s.batch), static_cast<int>(s.channels),
                        static_cast<int>(s.hidden), static_cast<int>(s.levels),
                        static_cast<int>(s.layers)};
}

int64_t gated_row_work_elements(const GatedRowShape& s, int64_t grid) {
  return (s.layers + 3) * s.batch * s.hidden + grid * kRowTileImages * (s.hidden / s.channels);
}

GatedRowKernel gated_row_kernel_choice(const char* value) {
  if (value == nullptr || std::strcmp(value, "") == 0 || std::strcmp(value, "auto") == 0) {
    return GatedRowKernel::kAuto;
  }
  if (std::strcmp(value, "batched") == 0) return GatedRowKernel::kBatched;
  if (std::strcmp(value, "phases") == 0) return GatedRowKernel::kPhases;
  if (std::strcmp(value, "per_image") == 0) return GatedRowKernel::kPerImage;
  TORCH_CHECK_VALUE(false, kOp, ": GENFAST_GATED_ROW_KERNEL must be 'auto', 'batched', 'phases' or ",
                    "'per_image', got '", value, "'");
  return GatedRowKernel::kAuto;  // not reached
}

}  // namespace genfast
