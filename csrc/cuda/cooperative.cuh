// Cooperative (persistent) kernels: how many blocks of a kernel can be resident at
// once, the grid a cooperative launch may use (wavenet_step, gated_pixelcnn_row).
#pragma once

#include <atomic>

#include <c10/cuda/CUDAException.h>

namespace genfast {

// One per kernel instantiation (a function-local static of its caller): the answer
// per device, looked up once.
struct ResidentBlocksCache {
  static constexpr int kMaxDevices = 64;
  std::atomic<int> known[kMaxDevices] = {};  // resident blocks + 1; 0: not looked up yet
};

// Blocks of `kernel` (launched with `threads` threads, no dynamic shared memory) that
// can be resident at once on `device`; 0 when the device cannot launch cooperatively.
template <typename Kernel>
int resident_cooperative_blocks(ResidentBlocksCache& cache, Kernel kernel, int threads, int device) {
  const bool cached = device < ResidentBlocksCache::kMaxDevices;
  if (cached && cache.known[device].load() > 0) return cache.known[device].load() - 1;
  int cooperative = 0, sms = 0, blocks_per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, 0));
  const int blocks = cooperative ? blocks_per_sm * sms : 0;
  if (cached) cache.known[device].store(blocks + 1);
  return blocks;
}

}  // namespace genfast
