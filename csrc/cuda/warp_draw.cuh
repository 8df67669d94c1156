// The inverse-CDF draw (csrc/sampling_math.h) of one row of logits by one warp, for
// the CUDA kernels of genfast's cached samplers: each lane sums a contiguous run of
// levels; a warp scan of the run sums gives the CDF.
#pragma once

#include "../sampling_math.h"

namespace genfast {

// Returns the drawn level, or -1 when a logit is not finite, in every lane. All 32
// lanes of the warp must call it.
template <typename T>
__device__ int64_t warp_draw(const T* logits, int levels, double u, double temperature) {
  constexpr unsigned kAll = 0xffffffffu;
  const int lane = threadIdx.x % 32;
  const int per_lane = (levels + 31) / 32;
  const int begin = min(levels, lane * per_lane), end = min(levels, begin + per_lane);
  bool finite = true;
  double z_max = -INFINITY;
  for (int i = begin; i < end; ++i) {
    const double v = static_cast<double>(logits[i]);
    finite = finite && isfinite(v);
    z_max = fmax(z_max, tempered_logit(v, temperature));
  }
  finite = __all_sync(kAll, finite);
  for (int s = 16; s > 0; s /= 2) z_max = fmax(z_max, __shfl_xor_sync(kAll, z_max, s));
  double run = 0;
  for (int i = begin; i < end; ++i) {
    run += exp(tempered_logit(static_cast<double>(logits[i]), temperature) - z_max);
  }
  double scan = run;  // inclusive prefix sum of the lanes' runs
  for (int s = 1; s < 32; s *= 2) {
    const double other = __shfl_up_sync(kAll, scan, s);
    if (lane >= s) scan += other;
  }
  const double threshold = u * __shfl_sync(kAll, scan, 31);
  double cdf = scan - run;
  int count = 0;
  for (int i = begin; i < end; ++i) {
    cdf += exp(tempered_logit(static_cast<double>(logits[i]), temperature) - z_max);
    count += cdf <= threshold ? 1 : 0;
  }
  for (int s = 16; s > 0; s /= 2) count += __shfl_xor_sync(kAll, count, s);
  return finite ? clamp_level(count, levels) : -1;
}

}  // namespace genfast
