// The inverse-CDF draw (csrc/sampling_math.h) of one row of logits by one warp, for the
// CUDA kernels of genfast's cached samplers, bit-identical to the CPU's serial
// inverse_cdf_draw: the lanes compute the weights e^(z - max z) in parallel with the
// same draw_weight (the maximum is exact in any order), but the running sum adds them
// in level order, as the CPU does: level i = base + lane's weight is broadcast to every
// lane in lane order, so every lane holds the CPU's running sum after each level.
#pragma once

#include "../sampling_math.h"

namespace genfast {

// Returns the drawn level, or -1 when a logit is not finite, in every lane. All 32
// lanes of the warp must call it.
template <typename T>
__device__ int64_t warp_draw(const T* logits, int levels, double u, double temperature) {
  constexpr unsigned kAll = 0xffffffffu;
  const int lane = threadIdx.x % 32;
  bool finite = true;
  double z_max = -INFINITY;
  for (int i = lane; i < levels; i += 32) {
    const double v = static_cast<double>(logits[i]);
    finite = finite && isfinite(v);
    z_max = fmax(z_max, tempered_logit(v, temperature));
  }
  if (!__all_sync(kAll, finite)) return -1;
  for (int s = 16; s > 0; s /= 2) z_max = fmax(z_max, __shfl_xor_sync(kAll, z_max, s));
  // The running sum over levels [0, end) in level order, identical in every lane; with
  // `threshold`, also the number of levels whose running sum is <= threshold.
  const auto running_sum = [&](double threshold, int& count) {
    double sum = 0.0;
    count = 0;
    for (int base = 0; base < levels; base += 32) {
      const int i = base + lane;
      const double w = i < levels ? draw_weight(static_cast<double>(logits[i]), temperature, z_max) : 0.0;
      const int chunk = min(32, levels - base);
      for (int s = 0; s < chunk; ++s) {
        sum = add_rn(sum, __shfl_sync(kAll, w, s));
        count += sum <= threshold ? 1 : 0;
      }
    }
    return sum;
  };
  int count = 0;
  const double threshold = mul_rn(u, running_sum(-INFINITY, count));
  running_sum(threshold, count);  // the same sums again, now counted
  return clamp_level(count, levels);
}

}  // namespace genfast
