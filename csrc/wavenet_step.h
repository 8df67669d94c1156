// wavenet_step: one cached sampling step of a WaveNet — what the CPU and CUDA
// kernels share: the per-element math (gate, ring-buffer slots, the inverse-CDF
// draw), the layout of the cache and of the packed weights, and the argument checks.
//
// Layout (built once per sampling call by genfast.models.WaveNet):
//   samples         (N, T) int64     generated and prefix samples; step t reads
//                                    samples[:, t - k_in .. t - 1] and writes column t
//   cache           (N, slots, R)    one ring buffer per layer of its last
//                                    (k - 1) * dilation + 1 residual inputs; layer l
//                                    owns slots [offset_l, offset_l + length_l) and
//                                    keeps time t in slot offset_l + t % length_l
//   uniforms        (T, N) float64   one uniform per step per sequence
//   input_weight    (k_in, levels, R)   the one-hot input convolution, tap-major
//   input_bias      (R)
//   dilated_weight  (L, k * R, G)    row j * R + r: tap j (input t - (k - 1 - j) * d),
//                                    channel r; columns [0, G/2) tanh, [G/2, G) sigmoid
//   gate_bias       (1 or N, L, G)   the dilated conv's bias plus global conditioning
//   out_weight      (L, G/2, R + S)  residual 1x1 (columns [0, R)) | skip 1x1 ([R, R + S))
//   out_bias        (L, R + S)       (the last layer's residual columns are unused)
//   head_weight1    (S, H), head_bias1 (H), head_weight2 (H, levels), head_bias2 (levels)
// The weights come as one Tensor[] in the order of GENFAST_WAVENET_WEIGHTS below (the
// tensor fields of genfast.ops.WaveNetWeights). check_levels: check on the host that the
// samples the step reads (columns step - k_in .. step - 1) are levels or -1 (a
// device->host synchronisation on a GPU; genfast.ops.wavenet_stepper checks all samples
// once and skips it); unchecked, an out-of-range sample adds nothing, like a -1.
#pragma once

#include <cmath>
#include <vector>

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "common.h"
#include "sampling_math.h"

namespace genfast {

#define GENFAST_WAVENET_WEIGHTS(X)                                                         \
  X(input_weight) X(input_bias) X(dilated_weight) X(gate_bias) X(out_weight) X(out_bias)    \
  X(head_weight1) X(head_bias1) X(head_weight2) X(head_bias2)

GENFAST_WEIGHT_TENSORS(WaveNetStepWeights, GENFAST_WAVENET_WEIGHTS)
GENFAST_WEIGHT_POINTERS(WaveNetStepPointers, WaveNetStepWeights, GENFAST_WAVENET_WEIGHTS)

// The CUDA kernel receives the layer table by value in its parameters.
constexpr int kWaveNetMaxLayers = 256;

// Ring-buffer slot (relative to the layer's offset) that holds time `time` (may be
// negative: times before the start are zeros never written) in a ring of `length`.
GENFAST_HOST_DEVICE inline int64_t wavenet_ring_slot(int64_t time, int64_t length) {
  const int64_t slot = time % length;
  return slot < 0 ? slot + length : slot;
}

// Sizes of one step, read from the arguments by check_wavenet_step.
struct WaveNetStepShape {
  int64_t batch, length, residual, gate, gate_half, skip, head, levels;
  int64_t kernel_size, input_kernel_size, layers, slots;
  bool gate_bias_per_sequence;
  std::vector<int64_t> dilation, offset, ring_length;  // per layer
};

// Checks every argument (names, shapes, dtypes, devices, ranges, and with check_levels
// the samples the step reads) the same way on every backend and returns the sizes.
WaveNetStepShape check_wavenet_step(const at::Tensor& samples, const at::Tensor& cache,
                                    const at::Tensor& uniforms, int64_t step, int64_t known_steps,
                                    double temperature, const WaveNetStepWeights& w,
                                    at::IntArrayRef dilations, bool check_levels);

}  // namespace genfast
