#include "wavenet_step.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>

namespace genfast {
namespace {

constexpr const char* kOp = "wavenet_step";

}  // namespace

WaveNetStepShape check_wavenet_step(const at::Tensor& samples, const at::Tensor& cache,
                                    const at::Tensor& uniforms, int64_t step, int64_t known_steps,
                                    double temperature, const WaveNetStepWeights& w,
                                    at::IntArrayRef dilations, bool check_levels) {
  TORCH_CHECK_VALUE(samples.dim() == 2 && samples.numel() > 0, kOp,
                    ": samples must be a non-empty 2-D (N, T) tensor, got shape ", samples.sizes());
  check_dtype(kOp, samples, "samples", at::kLong);
  check_dtype(kOp, uniforms, "uniforms", at::kDouble);
  TORCH_CHECK_VALUE(cache.dim() == 3 && cache.numel() > 0, kOp,
                    ": cache must be a non-empty 3-D (N, slots, R) tensor, got shape ",
                    cache.sizes());
  check_float_dtype(kOp, cache, "cache");
  check_same_device(kOp, samples, "samples", cache, "the cache");
  check_same_device(kOp, uniforms, "uniforms", cache, "the cache");
  check_weights_like(kOp, w, cache, "the cache");
  const at::Tensor &input_weight = w.input_weight, &dilated_weight = w.dilated_weight,
                   &gate_bias = w.gate_bias, &out_weight = w.out_weight,
                   &head_weight1 = w.head_weight1;

  WaveNetStepShape s;
  s.batch = samples.size(0);
  s.length = samples.size(1);
  s.residual = cache.size(2);
  s.layers = static_cast<int64_t>(dilations.size());
  TORCH_CHECK_VALUE(s.layers >= 1 && s.layers <= kWaveNetMaxLayers, kOp,
              ": dilations must list between 1 and ", kWaveNetMaxLayers, " layers, got ",
              s.layers);
  TORCH_CHECK_VALUE(cache.size(0) == s.batch, kOp, ": cache holds ", cache.size(0),
              " sequences but samples holds ", s.batch);
  check_shape(kOp, uniforms, "uniforms", {s.length, s.batch});
  TORCH_CHECK_VALUE(step >= 0 && step < s.length, kOp, ": step must lie in [0, ", s.length,
              ") (the columns of samples), got ", step);
  TORCH_CHECK_VALUE(known_steps >= 0 && known_steps <= s.length, kOp, ": known_steps must lie in [0, ",
              s.length, "], got ", known_steps);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, kOp,
              ": temperature must be a finite number > 0, got ", temperature);

  TORCH_CHECK_VALUE(input_weight.dim() == 3 && input_weight.size(0) >= 1 && input_weight.size(1) >= 2 &&
                  input_weight.size(2) == s.residual,
              kOp, ": input_weight must have shape (k_in, levels, R=", s.residual,
              ") with k_in >= 1 and levels >= 2, got ", input_weight.sizes());
  s.input_kernel_size = input_weight.size(0);
  s.levels = input_weight.size(1);
  check_shape(kOp, w.input_bias, "input_bias", {s.residual});

  TORCH_CHECK_VALUE(dilated_weight.dim() == 3 && dilated_weight.size(0) == s.layers &&
                  dilated_weight.size(1) >= s.residual && dilated_weight.size(1) % s.residual == 0 &&
                  dilated_weight.size(2) >= 2 && dilated_weight.size(2) % 2 == 0,
              kOp, ": dilated_weight must have shape (L=", s.layers, ", k * R, G) with k >= 1, R=",
              s.residual, " and an even G, got ", dilated_weight.sizes());
  s.kernel_size = dilated_weight.size(1) / s.residual;
  s.gate = dilated_weight.size(2);
  s.gate_half = s.gate / 2;
  TORCH_CHECK_VALUE(gate_bias.dim() == 3 && (gate_bias.size(0) == 1 || gate_bias.size(0) == s.batch) &&
                  gate_bias.size(1) == s.layers && gate_bias.size(2) == s.gate,
              kOp, ": gate_bias must have shape (1 or N=", s.batch, ", L=", s.layers, ", G=", s.gate,
              "), got ", gate_bias.sizes());
  s.gate_bias_per_sequence = gate_bias.size(0) == s.batch && s.batch > 1;

  TORCH_CHECK_VALUE(out_weight.dim() == 3 && out_weight.size(0) == s.layers &&
                  out_weight.size(1) == s.gate_half && out_weight.size(2) > s.residual,
              kOp, ": out_weight must have shape (L=", s.layers, ", G/2=", s.gate_half, ", R=",
              s.residual, " + S) with S >= 1, got ", out_weight.sizes());
  s.skip = out_weight.size(2) - s.residual;
  check_shape(kOp, w.out_bias, "out_bias", {s.layers, s.residual + s.skip});
  TORCH_CHECK_VALUE(head_weight1.dim() == 2 && head_weight1.size(0) == s.skip && head_weight1.size(1) >= 1,
              kOp, ": head_weight1 must have shape (S=", s.skip, ", H), got ",
              head_weight1.sizes());
  s.head = head_weight1.size(1);
  check_shape(kOp, w.head_bias1, "head_bias1", {s.head});
  check_shape(kOp, w.head_weight2, "head_weight2", {s.head, s.levels});
  check_shape(kOp, w.head_bias2, "head_bias2", {s.levels});

  s.slots = 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    const int64_t d = dilations[l];
    TORCH_CHECK_VALUE(d >= 1 && d <= kMaxIndex32 / s.kernel_size, kOp,
                ": dilations must be positive (and below 2^31 / kernel size), got ", d,
                " for layer ", l);
    s.dilation.push_back(d);
    s.offset.push_back(s.slots);
    s.ring_length.push_back((s.kernel_size - 1) * d + 1);
    s.slots += s.ring_length.back();
  }
  TORCH_CHECK_VALUE(cache.size(1) == s.slots, kOp, ": cache must have ", s.slots,
              " slots (sum over layers of (k - 1) * dilation + 1), got ", cache.size(1));
  // The CUDA kernel indexes within one sequence's cache and within a weight with
  // 32-bit integers.
  TORCH_CHECK_VALUE(s.slots * s.residual <= kMaxIndex32 && dilated_weight.numel() <= kMaxIndex32 &&
                  out_weight.numel() <= kMaxIndex32 && input_weight.numel() <= kMaxIndex32,
              kOp, ": the cache of one sequence (", s.slots, " x ", s.residual,
              ") or a weight is too large for 32-bit indexing");
  if (check_levels && step > 0) {
    // The columns the input layer reads: -1 (a failed draw) or a level.
    const int64_t first = std::max<int64_t>(0, step - s.input_kernel_size);
    check_levels_in_range(kOp, "samples", samples.narrow(1, first, step - first), at::Tensor(), -1,
                          s.levels, "samples must hold levels (or -1, a failed draw)", first);
  }
  return s;
}

}  // namespace genfast
