// masked_conv2d: what the CPU and CUDA kernels share — the mask rule, the list of
// live taps, argument checks and the packing of the live weights into a matrix.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "common.h"
#include "layout.h"  // the results take their main input's layout

namespace genfast {

enum class MaskType : int { A = 0, B = 1 };

// An 11x11 kernel has 60 taps before its centre, plus the centre itself.
constexpr int kMaxKernelSize = 11;
constexpr int kMaxLiveTaps = kMaxKernelSize * kMaxKernelSize / 2 + 1;
// Tap offsets are at most (kMaxKernelSize / 2) * dilation = 5 * 2^24 < 2^27 pixels, so
// 32-bit pixel coordinates plus an offset cannot overflow (an image side is < 2^31).
constexpr int64_t kMaxDilation = int64_t(1) << 24;

// Raster-order rule at the centre tap: with colour groups (R, G, B), mask 'A' lets
// a group see only earlier groups, mask 'B' also itself. Taps before the centre
// see every channel; taps after it see nothing.
GENFAST_HOST_DEVICE inline bool center_tap_live(MaskType type, int group_in, int group_out) {
  return type == MaskType::A ? group_in < group_out : group_in <= group_out;
}

// The live taps of a mask in raster order, as offsets (dilation applied) from the
// output position. Small enough to pass to a CUDA kernel by value. In raster order
// the live taps are the first `count` taps of the flattened kernel, so tap t is
// kernel entry t (row * kernel_w + col).
struct LiveTaps {
  MaskType type;
  int color_groups;
  int count;
  bool has_center;  // if true, the last tap is the centre and is partially masked
  int dy[kMaxLiveTaps];
  int dx[kMaxLiveTaps];
};

// Argument checks of each op, the same on every backend; each returns the live taps.
LiveTaps check_masked_conv2d(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef dilation,
                             c10::string_view mask_type, int64_t color_groups);
LiveTaps check_masked_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef dilation, c10::string_view mask_type,
                                        int64_t color_groups);
LiveTaps check_masked_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                                         c10::string_view mask_type, int64_t color_groups);

// The result when no tap is live (1x1 mask 'A' with one colour group): each
// output pixel is its bias, or zero; the gradients are zero.
at::Tensor output_without_live_taps(const at::Tensor& like, int64_t channels,
                                    const c10::optional<at::Tensor>& bias);

// weight (Cout, Cin, kh, kw) -> (Cout, Cin * T) holding only the live taps, with the
// masked pairs of the centre tap zeroed; column c * T + t is tap t of channel c.
at::Tensor pack_live_weight(const at::Tensor& weight, const LiveTaps& taps);

// The same packing transposed for the input gradient: (Cin, Cout * T).
at::Tensor pack_live_weight_transposed(const at::Tensor& weight, const LiveTaps& taps);

// Inverse of pack_live_weight for a gradient: masked entries come back as exact zeros.
at::Tensor unpack_live_weight(const at::Tensor& packed, at::IntArrayRef weight_size,
                              const LiveTaps& taps);

}  // namespace genfast
