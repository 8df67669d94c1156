#include "pixelcnnpp_row.h"

#include <ATen/ATen.h>

#include "dmol.h"

namespace genfast {
namespace {

constexpr const char* kOp = "pixelcnnpp_row";
const char* const kStateNames[3] = {"state0", "state1", "state2"};

void check_like(const at::Tensor& t, const char* name, const at::Tensor& like) {
  check_same_device(kOp, t, name, like, "init_above");
  check_same_dtype(kOp, t, name, like, "init_above");
}

}  // namespace

PixelCNNppRowShape check_pixelcnnpp_row(const at::Tensor* states, const at::Tensor& values, const at::Tensor& known,
                                        const at::Tensor& uniforms, double temperature,
                                        const at::Tensor& block_out_bias, int64_t row, int64_t levels,
                                        const PixelCNNppRowWeights& w, bool check_levels) {
  // init_above is the reference for dtype and device.
  const at::Tensor& like = w.init_above;
  check_float_dtype(kOp, like, "init_above");
  check_weights_like(kOp, w, like, "init_above");
  for (int s = 0; s < 3; ++s) {
    check_like(states[s], kStateNames[s], like);
  }
  check_like(block_out_bias, "block_out_bias", like);
  check_same_device(kOp, values, "values", like, "init_above");
  check_same_device(kOp, known, "known", like, "init_above");
  check_same_device(kOp, uniforms, "uniforms", like, "init_above");
  check_dtype(kOp, values, "values", at::kLong);
  check_dtype(kOp, known, "known", at::kBool);
  check_dtype(kOp, uniforms, "uniforms", at::kDouble);
  check_temperature(kOp, temperature);
  TORCH_CHECK_VALUE(values.dim() == 3 && values.numel() > 0 && (values.size(1) == 1 || values.size(1) == 3),
                    kOp, ": values must be a non-empty (N, C, W) tensor with C = 1 or 3, got shape ",
                    values.sizes());
  PixelCNNppRowShape s{};
  s.batch = values.size(0);
  s.channels = values.size(1);
  s.width = values.size(2);
  s.row = row;
  s.levels = levels;
  TORCH_CHECK_VALUE(s.width % 4 == 0, kOp, ": the row width must be a multiple of 4, got ", s.width);
  TORCH_CHECK_VALUE(row >= 0, kOp, ": row must be >= 0, got ", row);
  TORCH_CHECK_VALUE(levels >= 2, kOp, ": levels must be >= 2, got ", levels);
  const int64_t N = s.batch, C = s.channels, W = s.width;
  TORCH_CHECK_VALUE(like.dim() == 2 && like.size(0) == 3 * (C + 1) && like.size(1) >= 1, kOp,
                    ": init_above must be (3 (C + 1), F) with C = ", C, ", got ", like.sizes());
  const int64_t F = s.filters = like.size(1);
  const at::Tensor& bi = w.block_in;
  TORCH_CHECK_VALUE(bi.dim() == 3 && bi.size(0) >= 8 && (bi.size(0) - 2) % 6 == 0, kOp,
                    ": block_in must be (6 nr + 2, 12 F, F), got ", bi.sizes());
  const int64_t nr = s.nr = (bi.size(0) - 2) / 6, B = bi.size(0);
  const at::Tensor& head = w.head;
  TORCH_CHECK_VALUE(head.dim() == 2 && head.size(0) == F && head.size(1) >= 1 &&
                        head.size(1) % dmol_params(C, 1) == 0,
                    kOp, ": head must be (F = ", F, ", P) with P a multiple of ", dmol_params(C, 1),
                    " (", C, " colours), got ", head.sizes());
  s.params = head.size(1);
  s.mixtures = s.params / dmol_params(C, 1);
  check_shape(kOp, w.init_above_bias, "init_above_bias", {F});
  check_shape(kOp, w.init_left, "init_left", {2 * (C + 1), F});
  check_shape(kOp, w.init_left_bias, "init_left_bias", {F});
  check_shape(kOp, bi, "block_in", {B, 12 * F, F});
  check_shape(kOp, w.block_in_bias, "block_in_bias", {B, F});
  check_shape(kOp, w.block_out, "block_out", {B, 8 * F, 2 * F});
  check_shape(kOp, w.down, "down", {2, 4 * F, F});
  check_shape(kOp, w.down_bias, "down_bias", {2, F});
  check_shape(kOp, w.up, "up", {2, 4, F, F});
  check_shape(kOp, w.up_bias, "up_bias", {2, F});
  check_shape(kOp, w.head_bias, "head_bias", {s.params});
  check_shape(kOp, w.u_init, "u_init", {6 * (C + 1), F});
  check_shape(kOp, w.u_init_bias, "u_init_bias", {F});
  check_shape(kOp, w.u_block_in, "u_block_in", {B, 14 * F, F});
  check_shape(kOp, w.u_block_in_bias, "u_block_in_bias", {B, F});
  check_shape(kOp, w.u_block_out, "u_block_out", {B, 12 * F, 2 * F});
  check_shape(kOp, w.u_down, "u_down", {2, 6 * F, F});
  check_shape(kOp, w.u_down_bias, "u_down_bias", {2, F});
  check_shape(kOp, w.u_up, "u_up", {2, 2, 3, F, F});
  check_shape(kOp, w.u_up_bias, "u_up_bias", {2, F});
  check_shape(kOp, block_out_bias, "block_out_bias", {2, B, N, 2 * F});
  check_shape(kOp, known, "known", {N, W});
  check_shape(kOp, uniforms, "uniforms", {W, C + 1, N});
  for (int r = 0; r < 3; ++r) {
    s.widths[r] = W >> r;
    s.depths[r] = pp_depth(r, nr, F, C);
    check_shape(kOp, states[r], kStateNames[r], {N, 2, s.widths[r], s.depths[r]});
    TORCH_CHECK_VALUE(states[r].is_contiguous(), kOp, ": ", kStateNames[r],
                      " must be contiguous (it is updated in place)");
  }
  // Kernels index within one image's state and within a weight with 32-bit integers.
  TORCH_CHECK_VALUE(2 * W * s.depths[0] <= kMaxIndex32 && bi.numel() <= kMaxIndex32 &&
                        w.block_out.numel() <= kMaxIndex32 &&
                        w.u_block_in.numel() <= kMaxIndex32 && w.u_block_out.numel() <= kMaxIndex32 && W * s.params <= kMaxIndex32 &&
                        levels <= kMaxIndex32 &&
                        N <= kMaxIndex32,
                    kOp, ": one image's state or a weight is too large for 32-bit indexing");
  if (check_levels) {
    check_levels_in_range(kOp, "values", values, known.unsqueeze(1).expand_as(values), 0, levels,
                          "known values must be levels");
  }
  return s;
}

PixelCNNppRowCall prepare_pixelcnnpp_row(const at::Tensor& state0, const at::Tensor& state1,
                                         const at::Tensor& state2, const at::Tensor& values,
                                         const at::Tensor& known, const at::Tensor& uniforms,
                                         double temperature, const at::Tensor& block_out_bias, int64_t row,
                                         int64_t levels, at::TensorList weights, bool check_levels) {
  PixelCNNppRowCall call;
  const PixelCNNppRowWeights w = unpack_weights<PixelCNNppRowWeights>(kOp, weights);
  call.states[0] = state0;
  call.states[1] = state1;
  call.states[2] = state2;
  call.shape = check_pixelcnnpp_row(call.states, values, known, uniforms, temperature, block_out_bias, row,
                                    levels, w, check_levels);
  call.weights = contiguous_weights(w);
  call.values = values.contiguous();
  call.known = known.contiguous();
  call.uniforms = uniforms.contiguous();
  call.block_out_bias = block_out_bias.contiguous();
  call.temperature = temperature;
  const PixelCNNppRowShape& s = call.shape;
  call.values_out = at::empty({s.batch, s.channels, s.width}, values.options());
  call.params = at::empty({s.batch, s.width, s.params}, w.init_above.options());
  return call;
}

}  // namespace genfast
