// Per-element math of genfast's cached samplers (wavenet_step, gated_pixelcnn_row),
// shared by their CPU and CUDA kernels so that every backend gates and draws alike.
#pragma once

#include <cmath>

#include "common.h"

namespace genfast {

// tanh(a) * sigmoid(b): the gated activation unit of WaveNet and the Gated PixelCNN.
template <typename T>
GENFAST_HOST_DEVICE inline T gated_unit(T a, T b) {
  using std::exp;
  using std::tanh;
  return tanh(a) * (T(1) / (T(1) + exp(-b)));
}

template <typename T>
GENFAST_HOST_DEVICE inline T relu_value(T x) {
  return x > T(0) ? x : T(0);
}

// The inverse-CDF draw of genfast.models.sampling.inverse_cdf: in float64,
// z = logit / temperature and w = exp(z - max z); the drawn level is the number of
// levels whose running sum of w is <= u * (sum of all w), clamped to levels - 1
// against rounding at u -> 1.
GENFAST_HOST_DEVICE inline double tempered_logit(double logit, double temperature) {
  return logit / temperature;
}

GENFAST_HOST_DEVICE inline int64_t clamp_level(int64_t count, int64_t levels) {
  return count < levels ? count : levels - 1;
}

}  // namespace genfast
