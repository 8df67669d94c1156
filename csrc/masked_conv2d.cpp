#include "masked_conv2d.h"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>

namespace genfast {
namespace {

MaskType parse_mask_type(c10::string_view mask_type) {
  TORCH_CHECK_VALUE(mask_type == "A" || mask_type == "B",
              "masked_conv2d: mask_type must be 'A' or 'B', got '", mask_type, "'");
  return mask_type == "A" ? MaskType::A : MaskType::B;
}

LiveTaps live_taps(int64_t kernel_h, int64_t kernel_w, int64_t dilation_h, int64_t dilation_w,
                   MaskType type, int64_t color_groups) {
  LiveTaps taps{};
  taps.type = type;
  taps.color_groups = static_cast<int>(color_groups);
  const int64_t center_h = kernel_h / 2, center_w = kernel_w / 2;
  for (int64_t i = 0; i <= center_h; ++i) {
    const int64_t cols = i < center_h ? kernel_w : center_w;
    for (int64_t j = 0; j < cols; ++j) {
      taps.dy[taps.count] = static_cast<int>((i - center_h) * dilation_h);
      taps.dx[taps.count] = static_cast<int>((j - center_w) * dilation_w);
      ++taps.count;
    }
  }
  // With one colour group mask 'A' blanks the centre entirely; otherwise some
  // channel pairs see it.
  taps.has_center = type == MaskType::B || color_groups > 1;
  if (taps.has_center) {
    taps.dy[taps.count] = 0;
    taps.dx[taps.count] = 0;
    ++taps.count;
  }
  return taps;
}

// `input` is the tensor in the input's role (grad_output for the input gradient,
// checked against the weight with its channels swapped).
LiveTaps check_args(const char* op, const at::Tensor& input, const char* input_name,
                    at::IntArrayRef weight_size, at::IntArrayRef dilation,
                    c10::string_view mask_type, int64_t color_groups) {
  const MaskType type = parse_mask_type(mask_type);
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": ", input_name, " must be 4-D (N, C, H, W), got ",
              input.dim(), "-D");
  TORCH_CHECK_VALUE(weight_size.size() == 4, op, ": weight must be 4-D (C_out, C_in, kH, kW), got ",
              weight_size.size(), "-D");
  TORCH_CHECK_VALUE(input.numel() > 0, op, ": ", input_name, " must not be empty, got shape ",
              input.sizes());
  TORCH_CHECK_VALUE(input.size(1) == weight_size[1], op, ": ", input_name, " has ", input.size(1),
              " channels but the weight expects ", weight_size[1]);
  TORCH_CHECK_VALUE(weight_size[0] > 0, op, ": weight must not be empty, got shape ", weight_size);
  const int64_t kh = weight_size[2], kw = weight_size[3];
  TORCH_CHECK_VALUE(kh % 2 == 1 && kw % 2 == 1 && kh <= kMaxKernelSize && kw <= kMaxKernelSize, op,
              ": kernel_size must be odd and at most ", kMaxKernelSize, ", got (", kh, ", ", kw,
              ")");
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1, op,
              ": dilation must be two positive integers, got ", dilation);
  // Larger offsets would overflow the kernels' 32-bit pixel coordinates and read real
  // pixels where the true tap lies in the padding.
  TORCH_CHECK_VALUE(dilation[0] <= kMaxDilation && dilation[1] <= kMaxDilation, op,
                    ": dilation must be at most ", kMaxDilation, " (2^24) per dimension, got ",
                    dilation);
  TORCH_CHECK_VALUE(color_groups >= 1 && weight_size[0] % color_groups == 0 &&
                  weight_size[1] % color_groups == 0,
              op, ": color_groups (", color_groups,
              ") must be positive and divide both channel counts of the weight ", weight_size);
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op, ": ", input_name,
              " must be a floating-point tensor, got ", input.scalar_type());
  const int64_t plane = input.size(2) * input.size(3);
  const int64_t channels = std::max(weight_size[0], weight_size[1]);
  const int64_t taps = kh * kw / 2 + 1;
  TORCH_CHECK_VALUE(plane * channels * taps <= kMaxIndex32, op,
              ": one sample is too large for 32-bit indexing (", channels, " channels x ",
              input.size(2), " x ", input.size(3), " pixels x ", taps,
              " taps); use smaller images or fewer channels");
  return live_taps(kh, kw, dilation[0], dilation[1], type, color_groups);
}

void check_same_dtype_and_device(const char* op, const at::Tensor& a, const char* a_name,
                                 const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", a_name, " and ", b_name,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

// (out_channels, in_channels) 0/1 mask of the centre tap (center_tap_live in tensor
// form), built by kernels on the weight's device: no host-to-device copy, so no
// stream stall and nothing that breaks CUDA-graph capture.
at::Tensor center_tap_mask(int64_t out_channels, int64_t in_channels, const LiveTaps& taps,
                           const at::TensorOptions& options) {
  const auto index_options = options.dtype(at::kLong);
  const auto group_out =
      at::arange(out_channels, index_options).div_(out_channels / taps.color_groups, "trunc");
  const auto group_in =
      at::arange(in_channels, index_options).div_(in_channels / taps.color_groups, "trunc");
  const auto live = taps.type == MaskType::A ? group_in.unsqueeze(0).lt(group_out.unsqueeze(1))
                                             : group_in.unsqueeze(0).le(group_out.unsqueeze(1));
  return live.to(options.dtype());
}

// (Cout, Cin, T) copy of the live taps (the first T of the flattened kernel); the
// centre column is multiplied by its mask.
at::Tensor live_weight(const at::Tensor& weight, const LiveTaps& taps) {
  const int64_t out_c = weight.size(0), in_c = weight.size(1);
  auto live = weight.reshape({out_c, in_c, weight.size(2) * weight.size(3)})
                  .narrow(2, 0, taps.count)
                  .clone(at::MemoryFormat::Contiguous);
  if (taps.has_center) {
    live.select(2, taps.count - 1).mul_(center_tap_mask(out_c, in_c, taps, weight.options()));
  }
  return live;
}

}  // namespace

LiveTaps check_masked_conv2d(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef dilation,
                             c10::string_view mask_type, int64_t color_groups) {
  const char* op = "masked_conv2d";
  check_same_dtype_and_device(op, input, "input", weight, "weight");
  // check_args checks the weight's rank first: the bias check reads weight.size(0).
  LiveTaps taps = check_args(op, input, "input", weight.sizes(), dilation, mask_type, color_groups);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                      ": bias must have shape (", weight.size(0), "), got ", bias->sizes());
    check_same_dtype_and_device(op, input, "input", *bias, "bias");
  }
  return taps;
}

LiveTaps check_masked_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef dilation, c10::string_view mask_type,
                                        int64_t color_groups) {
  const char* op = "masked_conv2d_grad_input";
  check_same_dtype_and_device(op, grad_output, "grad_output", weight, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 4, op, ": weight must be 4-D, got ", weight.dim(), "-D");
  const std::vector<int64_t> swapped{weight.size(1), weight.size(0), weight.size(2),
                                     weight.size(3)};
  return check_args(op, grad_output, "grad_output", swapped, dilation, mask_type, color_groups);
}

LiveTaps check_masked_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                                         c10::string_view mask_type, int64_t color_groups) {
  const char* op = "masked_conv2d_grad_weight";
  check_same_dtype_and_device(op, grad_output, "grad_output", input, "input");
  TORCH_CHECK_VALUE(kernel_size.size() == 2, op, ": kernel_size must have 2 values, got ", kernel_size);
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && input.dim() == 4 &&
                  grad_output.size(0) == input.size(0) && grad_output.size(2) == input.size(2) &&
                  grad_output.size(3) == input.size(3),
              op, ": grad_output ", grad_output.sizes(), " does not match input ", input.sizes());
  const std::vector<int64_t> weight_size{grad_output.size(1), input.size(1), kernel_size[0],
                                         kernel_size[1]};
  return check_args(op, input, "input", weight_size, dilation, mask_type, color_groups);
}

at::Tensor output_without_live_taps(const at::Tensor& like, int64_t channels,
                                    const c10::optional<at::Tensor>& bias) {
  auto out = at::zeros({like.size(0), channels, like.size(2), like.size(3)}, like.options());
  if (bias.has_value()) out.add_(bias->view({1, channels, 1, 1}));
  return out;
}

at::Tensor pack_live_weight(const at::Tensor& weight, const LiveTaps& taps) {
  return live_weight(weight, taps).reshape({weight.size(0), weight.size(1) * taps.count}).contiguous();
}

at::Tensor pack_live_weight_transposed(const at::Tensor& weight, const LiveTaps& taps) {
  return live_weight(weight, taps)
      .permute({1, 0, 2})
      .reshape({weight.size(1), weight.size(0) * taps.count})
      .contiguous();
}

at::Tensor unpack_live_weight(const at::Tensor& packed, at::IntArrayRef weight_size,
                              const LiveTaps& taps) {
  const int64_t out_c = weight_size[0], in_c = weight_size[1];
  auto live = packed.reshape({out_c, in_c, taps.count});
  if (taps.has_center) {
    live.select(2, taps.count - 1).mul_(center_tap_mask(out_c, in_c, taps, packed.options()));
  }
  auto full = at::zeros({out_c, in_c, weight_size[2] * weight_size[3]}, packed.options());
  full.narrow(2, 0, taps.count).copy_(live);
  return full.view(weight_size);
}

}  // namespace genfast
