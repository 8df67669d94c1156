// Float32 GEMMs whose second operand is the live-tap gather of an image, with AVX-512
// register-blocked micro-kernels: the forward and input gradient pack the gather from
// the image into cache-sized strips (no column matrix in memory); the weight gradient
// reads the shifted image rows directly with masked loads. Chosen at run time on CPUs that
// have AVX-512; elsewhere the ops use gather + at::mm.
#pragma once

#include <cstdint>

#include "../masked_conv2d.h"

namespace genfast {
namespace cpu {

bool live_tap_gemm_supported();

// out[n] (M, H*W) = a (M, C*T) @ gather(src[n]) (+ bias), for every sample n;
// src (N, C, H, W); gather as in csrc/cpu/masked_conv2d.cpp (sign +1 or -1).
void live_tap_gemm(const float* a, int64_t m, const float* bias, const float* src, int64_t n,
                   int64_t c, int64_t h, int64_t w, const LiveTaps& taps, int sign, float* out);

// out (M, C*T) += sum over n of g[n] (M, H*W) @ gather(src[n])^T (sign +1): the weight
// gradient, read straight from g and src (no gathered copy).
void live_tap_grad_weight(const float* g, int64_t m, const float* src, int64_t n, int64_t c,
                          int64_t h, int64_t w, const LiveTaps& taps, float* out);

}  // namespace cpu
}  // namespace genfast
