// masked_conv2d on the CPU: a GEMM of the packed live weights with the gather of
// only the live taps of the image ("im2col" without the masked-out taps), so dead
// taps cost neither memory traffic nor multiplications. Float32 on AVX-512 CPUs
// runs live_tap_gemm.cpp (gather fused into the GEMM's packing; the weight gradient
// reads the image planes in place, no gather); other cases gather
// a column matrix per sample and call at::mm. Channels-last float32 tensors on AVX-512
// CPUs run live_tap_nhwc.cpp in place; other channels-last tensors are computed on a
// contiguous copy and the result is returned channels-last (is_channels_last).
#include <algorithm>
#include <cstring>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../masked_conv2d.h"
#include "live_tap_gemm.h"
#include "live_tap_nhwc.h"

namespace genfast {
namespace {

// cols[c * T + t, y * W + x] = src[c, y + sign * dy[t], x + sign * dx[t]], zero outside.
// sign = +1 gathers the input for the forward pass; sign = -1 gathers the output
// gradient for the input gradient (the same taps, mirrored).
template <typename scalar_t>
void gather_live_taps(const scalar_t* src, int64_t channels, int64_t height, int64_t width,
                      const LiveTaps& taps, int sign, scalar_t* cols) {
  const int64_t plane = height * width;
  at::parallel_for(0, channels * taps.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / taps.count, t = row % taps.count;
      const int64_t oy = sign * taps.dy[t], ox = sign * taps.dx[t];
      const scalar_t* plane_in = src + c * plane;
      scalar_t* out = cols + row * plane;
      // Columns [x0, x1) read inside the image; the rest is padding.
      const int64_t x0 = std::clamp<int64_t>(-ox, 0, width);
      const int64_t x1 = std::clamp<int64_t>(width - ox, 0, width);
      for (int64_t y = 0; y < height; ++y) {
        scalar_t* out_row = out + y * width;
        const int64_t sy = y + oy;
        if (sy < 0 || sy >= height || x0 >= x1) {
          std::fill(out_row, out_row + width, scalar_t(0));
          continue;
        }
        std::fill(out_row, out_row + x0, scalar_t(0));
        std::memcpy(out_row + x0, plane_in + sy * width + x0 + ox, (x1 - x0) * sizeof(scalar_t));
        std::fill(out_row + x1, out_row + width, scalar_t(0));
      }
    }
  });
}

void check_cpu(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CPU kernel supports float32 and float64, got ", name, " of ",
              t.scalar_type());
}

// out[n] (M, H*W) = matrix (M, K) @ gather(src[n]) (K, H*W) (+ bias), sample by sample.
at::Tensor gather_gemm(const at::Tensor& src, const at::Tensor& matrix,
                       const c10::optional<at::Tensor>& bias, const LiveTaps& taps, int sign) {
  if (taps.count == 0) return output_without_live_taps(src, matrix.size(0), bias);
  const int64_t n = src.size(0), c = src.size(1), h = src.size(2), w = src.size(3);
  const int64_t m = matrix.size(0);
  auto out = at::empty({n, m, h, w}, src.options());
  if (src.scalar_type() == at::kFloat && cpu::live_tap_gemm_supported()) {
    const auto bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
    cpu::live_tap_gemm(matrix.const_data_ptr<float>(), m,
                       bias_c.defined() ? bias_c.const_data_ptr<float>() : nullptr,
                       src.const_data_ptr<float>(), n, c, h, w, taps, sign,
                       out.mutable_data_ptr<float>());
    return out;
  }
  auto cols = at::empty({c * taps.count, h * w}, src.options());
  auto out_flat = out.view({n, m, h * w});
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "masked_conv2d_cpu", [&] {
    for (int64_t i = 0; i < n; ++i) {
      gather_live_taps(src[i].const_data_ptr<scalar_t>(), c, h, w, taps, sign,
                       cols.mutable_data_ptr<scalar_t>());
      auto out_i = out_flat[i];
      if (bias.has_value()) {
        at::addmm_out(out_i, bias->view({m, 1}).expand({m, h * w}), matrix, cols);
      } else {
        at::mm_out(out_i, matrix, cols);
      }
    }
  });
  return out;
}

// Whether a channels-last t runs the NHWC kernel, for a result with out_channels
// channels: its tiles are 16-channel vectors, so fewer than 16 (the input gradient of
// a first layer with 1-3 image channels) waste most lanes, and the NCHW kernel's
// few-row tiles on a contiguous copy are faster (3->128 7x7 'A': ~2x).
bool nhwc_kernel(const at::Tensor& t, int64_t out_channels) {
  return is_channels_last(t) && t.scalar_type() == at::kFloat && out_channels >= 16 &&
         cpu::live_tap_gemm_supported();
}

// The NHWC kernels' per-tap matrices (T, K, M) from pack_live_weight's (C_out, C_in * T):
// (T, C_in, C_out) for the forward, (T, C_out, C_in) for the input gradient.
at::Tensor tap_matrices(const at::Tensor& weight, const LiveTaps& taps, bool transposed) {
  const auto live = pack_live_weight(weight, taps).view({weight.size(0), weight.size(1), taps.count});
  return (transposed ? live.permute({2, 0, 1}) : live.permute({2, 1, 0})).contiguous();
}

// live_tap_nhwc on a channels-last src (N, K, H, W) with mats (T, K, M): (N, M, H, W)
// channels-last.
at::Tensor nhwc_gemm(const at::Tensor& src, const at::Tensor& mats,
                     const c10::optional<at::Tensor>& bias, const LiveTaps& taps, int sign) {
  const int64_t m = mats.size(2);
  if (taps.count == 0) {
    return output_without_live_taps(src, m, bias).contiguous(at::MemoryFormat::ChannelsLast);
  }
  const int64_t n = src.size(0), k = src.size(1), h = src.size(2), w = src.size(3);
  auto out = at::empty({n, m, h, w}, src.options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  cpu::live_tap_nhwc(src.const_data_ptr<float>(), n, h, w, k, mats.const_data_ptr<float>(), m,
                     bias_c.defined() ? bias_c.const_data_ptr<float>() : nullptr, taps, sign,
                     out.mutable_data_ptr<float>());
  return out;
}

at::Tensor masked_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef dilation,
                             c10::string_view mask_type, int64_t color_groups) {
  const LiveTaps taps =
      check_masked_conv2d(input, weight, bias, dilation, mask_type, color_groups);
  check_cpu("masked_conv2d", input, "input");
  if (nhwc_kernel(input, weight.size(0))) {
    return nhwc_gemm(input, tap_matrices(weight, taps, false), bias, taps, +1);
  }
  return in_layout_of(input, gather_gemm(input.contiguous(), pack_live_weight(weight, taps), bias, taps, +1));
}

// grad_input[c] = sum over o, t of W[o, c, t] * grad_output[o] shifted back by tap t.
at::Tensor masked_conv2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef dilation, c10::string_view mask_type,
                                        int64_t color_groups) {
  const LiveTaps taps =
      check_masked_conv2d_grad_input(grad_output, weight, dilation, mask_type, color_groups);
  check_cpu("masked_conv2d_grad_input", grad_output, "grad_output");
  if (nhwc_kernel(grad_output, weight.size(1))) {
    return nhwc_gemm(grad_output, tap_matrices(weight, taps, true), c10::nullopt, taps, -1);
  }
  return in_layout_of(grad_output, gather_gemm(grad_output.contiguous(),
                                               pack_live_weight_transposed(weight, taps),
                                               c10::nullopt, taps, -1));
}

// grad_weight (Cout, Cin * T) = sum over samples of grad_output[n] @ gather(input[n])^T.
at::Tensor masked_conv2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                                         c10::string_view mask_type, int64_t color_groups) {
  const LiveTaps taps = check_masked_conv2d_grad_weight(grad_output, input, kernel_size, dilation,
                                                        mask_type, color_groups);
  check_cpu("masked_conv2d_grad_weight", input, "input");
  if (nhwc_kernel(input, grad_output.size(1))) {
    const int64_t in_c = input.size(1), out_c = grad_output.size(1);
    const auto gy = grad_output.contiguous(at::MemoryFormat::ChannelsLast);
    auto per_tap = at::empty({taps.count, in_c, out_c}, input.options());
    cpu::live_tap_nhwc_grad_weight(input.const_data_ptr<float>(), gy.const_data_ptr<float>(),
                                   input.size(0), input.size(2), input.size(3), in_c, out_c, taps,
                                   per_tap.mutable_data_ptr<float>());
    return unpack_live_weight(per_tap.permute({2, 1, 0}).reshape({out_c, in_c * taps.count}),
                              {out_c, in_c, kernel_size[0], kernel_size[1]}, taps);
  }
  const auto x = input.contiguous();
  const int64_t n = x.size(0), in_c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t out_c = grad_output.size(1);
  const auto gy = grad_output.contiguous().view({n, out_c, h * w});
  auto grad_packed = at::zeros({out_c, in_c * taps.count}, x.options());
  if (x.scalar_type() == at::kFloat && cpu::live_tap_gemm_supported()) {
    cpu::live_tap_grad_weight(gy.const_data_ptr<float>(), out_c, x.const_data_ptr<float>(), n,
                              in_c, h, w, taps, grad_packed.mutable_data_ptr<float>());
    return unpack_live_weight(grad_packed, {out_c, in_c, kernel_size[0], kernel_size[1]}, taps);
  }
  auto cols = at::empty({in_c * taps.count, h * w}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_conv2d_grad_weight_cpu", [&] {
    for (int64_t i = 0; i < n; ++i) {
      gather_live_taps(x[i].const_data_ptr<scalar_t>(), in_c, h, w, taps, +1,
                       cols.mutable_data_ptr<scalar_t>());
      grad_packed.addmm_(gy[i], cols.t());
    }
  });
  return unpack_live_weight(grad_packed, {out_c, in_c, kernel_size[0], kernel_size[1]}, taps);
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_grad_input", &masked_conv2d_grad_input_cpu);
  m.impl("masked_conv2d_grad_weight", &masked_conv2d_grad_weight_cpu);
}

}  // namespace genfast
