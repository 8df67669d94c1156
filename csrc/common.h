// Helpers shared by every op and both backends.
#pragma once

#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define GENFAST_HOST_DEVICE __host__ __device__
#else
#define GENFAST_HOST_DEVICE
#endif

namespace genfast {

// Kernels index within one sample with 32-bit integers (cheaper on GPUs); larger
// tensors must be rejected with a clear error, never wrap around.
constexpr int64_t kMaxIndex32 = std::numeric_limits<int32_t>::max();

}  // namespace genfast
