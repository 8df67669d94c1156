// Channels-last (N, H, W, C) float32 live-tap kernels with AVX-512 register tiles, for
// models that keep their activations channels-last (where oneDNN's 1x1 convolutions are
// 2-3x faster than on NCHW): no layout copies, and each tap of a pixel is a contiguous
// row of channels, so a tile of pixels x output channels is a small GEMM per tap.
// Called only where live_tap_gemm_supported() (AVX-512F).
#pragma once

#include <cstdint>

#include "../masked_conv2d.h"

namespace genfast {
namespace cpu {

// out (N, H, W, M) = bias + sum over live taps t of src (N, H, W, K) read at
// (y + sign * dy[t], x + sign * dx[t]) (zero outside the image) @ mats[t];
// mats (T, K, M) row-major, bias (M) or null. sign +1: the forward (K = C_in, M = C_out);
// -1: the input gradient (src = grad_output, mats[t] = the tap's (C_out, C_in) weights).
void live_tap_nhwc(const float* src, int64_t n, int64_t h, int64_t w, int64_t k,
                   const float* mats, int64_t m, const float* bias, const LiveTaps& taps, int sign,
                   float* out);

// grad (T, K, M) = sum over pixels p of src[p + (dy[t], dx[t])] (K) x g[p] (M), both
// (N, H, W, ·): the weight gradient per live tap. Each output element is summed by one
// thread in a fixed order: the result does not depend on the thread count.
void live_tap_nhwc_grad_weight(const float* src, const float* g, int64_t n, int64_t h, int64_t w,
                               int64_t k, int64_t m, const LiveTaps& taps, float* grad);

}  // namespace cpu
}  // namespace genfast
