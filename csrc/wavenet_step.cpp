#include "wavenet_step.h"

#include <cmath>

#include <ATen/ATen.h>

namespace genfast {
namespace {

constexpr const char* kOp = "wavenet_step";

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, kOp, ": ", name, " must have shape ", expected, ", got ",
              t.sizes());
}

}  // namespace

WaveNetStepShape check_wavenet_step(
    const at::Tensor& samples, const at::Tensor& cache, const at::Tensor& uniforms, int64_t step,
    int64_t known_steps, double temperature, const at::Tensor& input_weight,
    const at::Tensor& input_bias, const at::Tensor& dilated_weight, const at::Tensor& gate_bias,
    const at::Tensor& out_weight, const at::Tensor& out_bias, const at::Tensor& head_weight1,
    const at::Tensor& head_bias1, const at::Tensor& head_weight2, const at::Tensor& head_bias2,
    at::IntArrayRef dilations) {
  TORCH_CHECK(samples.dim() == 2 && samples.numel() > 0, kOp,
              ": samples must be a non-empty 2-D (N, T) tensor, got shape ", samples.sizes());
  TORCH_CHECK(samples.scalar_type() == at::kLong, kOp, ": samples must be int64, got ",
              samples.scalar_type());
  TORCH_CHECK(uniforms.scalar_type() == at::kDouble, kOp, ": uniforms must be float64, got ",
              uniforms.scalar_type());
  TORCH_CHECK(cache.dim() == 3 && cache.numel() > 0, kOp,
              ": cache must be a non-empty 3-D (N, slots, R) tensor, got shape ", cache.sizes());
  TORCH_CHECK(cache.scalar_type() == at::kFloat || cache.scalar_type() == at::kDouble, kOp,
              ": cache must be float32 or float64, got ", cache.scalar_type());
  const std::pair<const at::Tensor*, const char*> tensors[] = {
      {&samples, "samples"}, {&uniforms, "uniforms"}, {&input_weight, "input_weight"},
      {&input_bias, "input_bias"}, {&dilated_weight, "dilated_weight"},
      {&gate_bias, "gate_bias"}, {&out_weight, "out_weight"}, {&out_bias, "out_bias"},
      {&head_weight1, "head_weight1"}, {&head_bias1, "head_bias1"},
      {&head_weight2, "head_weight2"}, {&head_bias2, "head_bias2"}};
  for (const auto& [t, name] : tensors) {
    TORCH_CHECK(t->device() == cache.device(), kOp, ": ", name, " must be on the cache's device ",
                cache.device(), ", got ", t->device());
    if (t != &samples && t != &uniforms) {
      TORCH_CHECK(t->scalar_type() == cache.scalar_type(), kOp, ": ", name,
                  " must have the cache's dtype ", cache.scalar_type(), ", got ",
                  t->scalar_type());
    }
  }

  WaveNetStepShape s;
  s.batch = samples.size(0);
  s.length = samples.size(1);
  s.residual = cache.size(2);
  s.layers = static_cast<int64_t>(dilations.size());
  TORCH_CHECK(s.layers >= 1 && s.layers <= kWaveNetMaxLayers, kOp,
              ": dilations must list between 1 and ", kWaveNetMaxLayers, " layers, got ",
              s.layers);
  TORCH_CHECK(cache.size(0) == s.batch, kOp, ": cache holds ", cache.size(0),
              " sequences but samples holds ", s.batch);
  check_shape(uniforms, "uniforms", {s.length, s.batch});
  TORCH_CHECK(step >= 0 && step < s.length, kOp, ": step must lie in [0, ", s.length,
              ") (the columns of samples), got ", step);
  TORCH_CHECK(known_steps >= 0 && known_steps <= s.length, kOp, ": known_steps must lie in [0, ",
              s.length, "], got ", known_steps);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, kOp,
              ": temperature must be a finite number > 0, got ", temperature);

  TORCH_CHECK(input_weight.dim() == 3 && input_weight.size(0) >= 1 && input_weight.size(1) >= 2 &&
                  input_weight.size(2) == s.residual,
              kOp, ": input_weight must have shape (k_in, levels, R=", s.residual,
              ") with k_in >= 1 and levels >= 2, got ", input_weight.sizes());
  s.input_kernel_size = input_weight.size(0);
  s.levels = input_weight.size(1);
  check_shape(input_bias, "input_bias", {s.residual});

  TORCH_CHECK(dilated_weight.dim() == 3 && dilated_weight.size(0) == s.layers &&
                  dilated_weight.size(1) >= s.residual && dilated_weight.size(1) % s.residual == 0 &&
                  dilated_weight.size(2) >= 2 && dilated_weight.size(2) % 2 == 0,
              kOp, ": dilated_weight must have shape (L=", s.layers, ", k * R, G) with k >= 1, R=",
              s.residual, " and an even G, got ", dilated_weight.sizes());
  s.kernel_size = dilated_weight.size(1) / s.residual;
  s.gate = dilated_weight.size(2);
  s.gate_half = s.gate / 2;
  TORCH_CHECK(gate_bias.dim() == 3 && (gate_bias.size(0) == 1 || gate_bias.size(0) == s.batch) &&
                  gate_bias.size(1) == s.layers && gate_bias.size(2) == s.gate,
              kOp, ": gate_bias must have shape (1 or N=", s.batch, ", L=", s.layers, ", G=", s.gate,
              "), got ", gate_bias.sizes());
  s.gate_bias_per_sequence = gate_bias.size(0) == s.batch && s.batch > 1;

  TORCH_CHECK(out_weight.dim() == 3 && out_weight.size(0) == s.layers &&
                  out_weight.size(1) == s.gate_half && out_weight.size(2) > s.residual,
              kOp, ": out_weight must have shape (L=", s.layers, ", G/2=", s.gate_half, ", R=",
              s.residual, " + S) with S >= 1, got ", out_weight.sizes());
  s.skip = out_weight.size(2) - s.residual;
  check_shape(out_bias, "out_bias", {s.layers, s.residual + s.skip});
  TORCH_CHECK(head_weight1.dim() == 2 && head_weight1.size(0) == s.skip && head_weight1.size(1) >= 1,
              kOp, ": head_weight1 must have shape (S=", s.skip, ", H), got ",
              head_weight1.sizes());
  s.head = head_weight1.size(1);
  check_shape(head_bias1, "head_bias1", {s.head});
  check_shape(head_weight2, "head_weight2", {s.head, s.levels});
  check_shape(head_bias2, "head_bias2", {s.levels});

  s.slots = 0;
  for (int64_t l = 0; l < s.layers; ++l) {
    const int64_t d = dilations[l];
    TORCH_CHECK(d >= 1 && d <= kMaxIndex32 / s.kernel_size, kOp,
                ": dilations must be positive (and below 2^31 / kernel size), got ", d,
                " for layer ", l);
    s.dilation.push_back(d);
    s.offset.push_back(s.slots);
    s.ring_length.push_back((s.kernel_size - 1) * d + 1);
    s.slots += s.ring_length.back();
  }
  TORCH_CHECK(cache.size(1) == s.slots, kOp, ": cache must have ", s.slots,
              " slots (sum over layers of (k - 1) * dilation + 1), got ", cache.size(1));
  // The CUDA kernel indexes within one sequence's cache and within a weight with
  // 32-bit integers.
  TORCH_CHECK(s.slots * s.residual <= kMaxIndex32 && dilated_weight.numel() <= kMaxIndex32 &&
                  out_weight.numel() <= kMaxIndex32 && input_weight.numel() <= kMaxIndex32,
              kOp, ": the cache of one sequence (", s.slots, " x ", s.residual,
              ") or a weight is too large for 32-bit indexing");
  return s;
}

}  // namespace genfast
