// Cooperative (persistent) kernels: how many blocks of a kernel can be resident at
// once, the grid a cooperative launch may use (wavenet_step, gated_pixelcnn_row,
// transformer_decode_step).
#pragma once

#include <atomic>
#include <cstdint>

#include <c10/cuda/CUDAException.h>

namespace genfast {

// One per kernel instantiation (a function-local static of its caller): the answer
// per device for the dynamic shared memory it was last asked for, looked up once.
struct ResidentBlocksCache {
  static constexpr int kMaxDevices = 64;
  // (dynamic bytes << 32) | (resident blocks + 1); 0: not looked up yet. One word, so
  // a reader never pairs one call's bytes with another's blocks.
  std::atomic<int64_t> known[kMaxDevices] = {};
};

// Blocks of `kernel` (launched with `threads` threads and `dynamic_bytes` of dynamic
// shared memory; above 48 KiB the caller opts in first) that can be resident at once
// on `device`; 0 when the device cannot launch cooperatively.
template <typename Kernel>
int resident_cooperative_blocks(ResidentBlocksCache& cache, Kernel kernel, int threads, int device,
                                int dynamic_bytes = 0) {
  const bool cached = device < ResidentBlocksCache::kMaxDevices;
  if (cached) {
    const int64_t known = cache.known[device].load();
    if (known != 0 && (known >> 32) == dynamic_bytes) return static_cast<int>(known & 0xffffffff) - 1;
  }
  int cooperative = 0, sms = 0, blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, dynamic_bytes));
  const int blocks = cooperative ? blocks_per_sm * sms : 0;
  if (cached) cache.known[device].store((static_cast<int64_t>(dynamic_bytes) << 32) | (blocks + 1));
  return blocks;
}

}  // namespace genfast
