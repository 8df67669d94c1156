// gated_pixelcnn_row on CUDA, two kernels (docs/gated-pixelcnn-row-gpu.md):
//
// * the batched kernel (default): ONE cooperative (persistent) launch per row. Each
//   sub-pixel is L + 3 phases separated by grid-wide barriers (csrc/gated_row_tiles.h);
//   every phase splits its outputs for ALL images into tiles of 8 images x 32 columns
//   that the resident blocks take in turn, so a weight is read once per 8 images, not
//   once per image. In a tile each lane owns one output column (coalesced weight
//   reads), the 8 warps split the reduction and add their partial sums in warp order:
//   results do not depend on the grid size. The vectors of the whole batch live in a
//   global work buffer (L2) between phases.
// * the per-image kernel (the fallback where cooperative launch is unavailable): one
//   thread block per image walks the row; every product is a block-wide
//   matrix-vector product (block_gemv.cuh, deterministic). Per-position vectors live in
//   shared memory.
// Both keep the layers' input rows in a global scratch tensor of the same layout.
// GENFAST_GATED_ROW_KERNEL picks one (gated_row_kernel_choice in gated_pixelcnn_row.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <cstdlib>

#include "../gated_pixelcnn_row.h"
#include "block_gemv.cuh"
#include "cooperative.cuh"
#include "warp_draw.cuh"

namespace genfast {
namespace {

// ==== the per-image kernel ============================================================

constexpr int kThreads = 32 * kGemvWarps;

template <typename T>
struct Params {
  const int64_t* prefix;
  const bool* known;
  const double* uniforms;
  double temperature;
  const T* row_bias;
  GatedRowPointers<T> w;
  T* input0;  // (N, W + T - 1, C * E) the first layer's input row, zeros on the left
  T* inputs;  // (L - 1, N, W + T - 1, H) the later layers' input rows
  int64_t* values;
  T* logits;
  int batch, channels, width, levels, features, hidden, taps, layers;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) gated_pixelcnn_row_kernel(const Params<T> p) {
  extern __shared__ __align__(16) unsigned char shared_memory[];
  __shared__ T partial[kGemvWarps][32];
  T* shared = reinterpret_cast<T*>(shared_memory);
  const int C = p.channels, W = p.width, V = p.levels, E = p.features, H = p.hidden;
  const int P = 2 * H, L = p.layers, K0 = C * E, Hg = H / C, Pg = P / C;
  const int padded = W + p.taps - 1;
  const int n = blockIdx.x;
  // Dynamic shared memory: every layer's gated units (L * H), skip sum, head input,
  // head hidden (H each), the pre-activation of one group (Pg), a group's outputs (Hg).
  T* gated = shared;
  T* skip = gated + L * H;
  T* head_in = skip + H;
  T* hidden = head_in + H;
  T* z = hidden + H;
  T* y = z + Pg;
  const auto store = [](T* out, const T* bias) {  // an epilogue: out[q] = sum (+ bias[q])
    return [=](int q, T sum) { out[q] = bias != nullptr ? sum + bias[q] : sum; };
  };
  T* input0 = p.input0 + int64_t(n) * padded * K0;
  auto layer_input = [&](int l) {  // layer l >= 1's input row of image n
    return p.inputs + (int64_t(l - 1) * p.batch + n) * padded * H;
  };

  for (int j = 0; j < W; ++j) {
    // Groups above the current colour must read as zeros (the masks zero their weights).
    for (int i = threadIdx.x; i < (L + 3) * H; i += blockDim.x) shared[i] = T(0);
    __syncthreads();
    for (int c = 0; c < C; ++c) {
      for (int l = 0; l < L; ++l) {
        const int K = l == 0 ? K0 : H;
        // Taps j-p..j are buffer columns j..j+p: one contiguous vector of T * K inputs.
        const T* x = (l == 0 ? input0 : layer_input(l)) + int64_t(j) * K;
        const T* w = l == 0 ? p.w.first_weight : p.w.horizontal_weight + int64_t(l - 1) * p.taps * H * P;
        block_gemv(x, p.taps * K, w + c * Pg, P, Pg, partial, store(z, nullptr));
        const T* bias = p.row_bias + ((int64_t(l) * p.batch + n) * W + j) * P + c * Pg;
        T* g = gated + l * H;
        for (int i = threadIdx.x; i < Hg; i += blockDim.x) {
          g[c * Hg + i] = gated_unit(z[i] + bias[i], z[Hg + i] + bias[Hg + i]);
        }
        __syncthreads();
        block_gemv(g, H, p.w.skip_weight + int64_t(l) * H * H + c * Hg, H, Hg, partial,
                   store(y, p.w.skip_bias + l * H + c * Hg));
        for (int i = threadIdx.x; i < Hg; i += blockDim.x) skip[c * Hg + i] += y[i];
        __syncthreads();
        if (l == L - 1) continue;  // the last layer has no horizontal output
        block_gemv(g, H, p.w.residual_weight + int64_t(l) * H * H + c * Hg, H, Hg, partial,
                   store(y, p.w.residual_bias + l * H + c * Hg));
        T* out = layer_input(l + 1) + int64_t(j + p.taps - 1) * H + c * Hg;
        const T* res = l == 0 ? nullptr : layer_input(l) + int64_t(j + p.taps - 1) * H + c * Hg;
        for (int i = threadIdx.x; i < Hg; i += blockDim.x) out[i] = y[i] + (res ? res[i] : T(0));
        __syncthreads();
      }
      // Output head: relu -> 1x1 -> relu -> 1x1 to colour c's levels, then the draw.
      for (int i = threadIdx.x; i < H; i += blockDim.x) head_in[i] = relu_value(skip[i]);
      __syncthreads();
      block_gemv(head_in, H, p.w.head_weight1 + c * Hg, H, Hg, partial, store(y, p.w.head_bias1 + c * Hg));
      for (int i = threadIdx.x; i < Hg; i += blockDim.x) hidden[c * Hg + i] = relu_value(y[i]);
      __syncthreads();
      const int64_t at = (int64_t(n) * C + c) * W + j;
      T* logits = p.logits + at * V;
      block_gemv(hidden, H, p.w.head_weight2 + c * V, C * V, V, partial, store(logits, p.w.head_bias2 + c * V));
      if (threadIdx.x < 32) {
        // Known sub-pixels (teacher forcing, completion) are not drawn; the condition is
        // the same in the whole warp, as warp_draw needs.
        const int64_t value =
            p.known[at] ? known_level(p.prefix[at], V)
                        : warp_draw(logits, V, p.uniforms[(int64_t(j) * C + c) * p.batch + n],
                                    p.temperature);
        if (threadIdx.x == 0) p.values[at] = value;
        T* feature = input0 + int64_t(j + p.taps - 1) * K0 + c * E;
        for (int e = threadIdx.x; e < E; e += 32) {
          feature[e] = value >= 0 ? p.w.feature_table[value * E + e] : T(0);
        }
      }
      __syncthreads();
    }
  }
}

// Launches the kernel with its shared memory: the check counts static + dynamic bytes
// (gated_row_shared_memory), and the dynamic limit is raised whenever the total passes
// the default 48 KiB.
template <typename T>
void launch(const Params<T>& p, const GatedRowShape& s, int device) {
  const GatedRowSharedMemory shared = gated_row_shared_memory(s, sizeof(T));
  cudaFuncAttributes attributes{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, gated_pixelcnn_row_kernel<T>));
  // The formula must cover the compiled kernel's static shared memory.
  TORCH_INTERNAL_ASSERT(attributes.sharedSizeBytes <= shared.static_bytes,
                        "gated_pixelcnn_row: the kernel uses ", attributes.sharedSizeBytes,
                        " bytes of static shared memory, gated_row_shared_memory counts ",
                        shared.static_bytes);
  int device_limit = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&device_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK_VALUE(shared.total() <= static_cast<size_t>(device_limit),
                    "gated_pixelcnn_row: ", s.layers, " layers of ", s.hidden,
                    " hidden channels need ", shared.total(),
                    " bytes of shared memory per image, more than this GPU's ", device_limit,
                    "; use fewer layers or channels, or the CPU");
  if (shared.needs_opt_in()) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(gated_pixelcnn_row_kernel<T>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared.dynamic_bytes)));
  }
  gated_pixelcnn_row_kernel<T><<<static_cast<unsigned>(s.batch), kThreads, shared.dynamic_bytes,
                                 c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ==== the batched kernel ==============================================================

namespace cg = cooperative_groups;

constexpr int kBatchedThreads = 32 * kRowTileWarps;
static_assert(kRowTileImages == kRowTileWarps, "a tile's outputs are one per thread: image = warp");

template <typename T>
struct BatchedParams {
  const int64_t* prefix;
  const bool* known;
  const double* uniforms;
  double temperature;
  const T* row_bias;
  GatedRowPointers<T> w;  // read only: loaded with __ldg
  // Written by the kernel (plain loads, never the read-only cache: other blocks write
  // them between barriers).
  T* input0;       // (N, W + T - 1, C * E) the first layer's input row, zeros on the left
  T* inputs;       // (L - 1, N, W + T - 1, H) the later layers' input rows
  T* gated;        // (L, N, H) every layer's gated units at the current position
  T* skip;         // (N, H) the skip sum over layers < L - 1
  T* skip_total;   // (N, H) the complete skip sum (group c written in head phase 1)
  T* hidden;       // (N, H) the head's hidden layer
  T* slices;       // (grid, kRowTileImages, H / C) each block's inline slice
  int64_t* values;
  T* logits;
  GatedRowTiling tiling;
  int width, features, taps;
};

template <typename T>
__device__ __forceinline__ T* layer_input_rows(const BatchedParams<T>& p, int layer) {  // layer >= 1
  const int64_t padded = p.width + p.taps - 1;
  return p.inputs + int64_t(layer - 1) * p.tiling.batch * padded * p.tiling.hidden;
}

// Row r (image image0 + r) of a tile's input: rows[(image0 + r) * stride + k], except for
// k in [lo, lo + len), which reads slice[r * len + k - lo] (the group-c slice the block
// recomputed itself), through a relu with kRelu.
template <typename T, bool kRelu>
struct TileInput {
  const T* rows;
  int64_t stride;
  int image0, lo, len;
  const T* slice;
  __device__ __forceinline__ T value(int r, int k) const {
    const T v = static_cast<unsigned>(k - lo) < static_cast<unsigned>(len)
                    ? slice[r * len + (k - lo)]
                    : rows[int64_t(image0 + r) * stride + k];
    return kRelu ? relu_value(v) : v;
  }
};

template <typename T, int NC>
using TilePartial = T (*)[kRowTileImages][NC][kRowTileColumns];

// The sums of one tile: for the thread's image r = warp and its lane's column col,
// sum[i] = sum over k < kdim of x.value(r, k) * w[k * ldw + col + i * second], i < NC.
// The warps split k into contiguous chunks; in its chunk a thread accumulates all
// rows < `rows` of the tile for its column(s), so a weight is loaded once per tile
// (coalesced over the lanes) and x is a broadcast within the warp. The chunks' sums
// are added in warp order through shared memory: deterministic, and independent of
// the grid. Lanes with col_ok false add nothing (and read no weight). Every thread of
// the block calls it; it ends with a barrier.
template <typename T, int NC, typename Input>
__device__ void tile_product(const Input& x, int rows, int kdim, const T* __restrict__ w, int64_t ldw,
                             int col, int second, bool col_ok, TilePartial<T, NC> partial, T (&sum)[NC]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunk = (kdim + kRowTileWarps - 1) / kRowTileWarps;
  const int k_begin = min(kdim, warp * chunk), k_end = min(kdim, k_begin + chunk);
  T acc[kRowTileImages][NC];
#pragma unroll
  for (int r = 0; r < kRowTileImages; ++r)
#pragma unroll
    for (int i = 0; i < NC; ++i) acc[r][i] = T(0);
  if (col_ok) {
    const T* __restrict__ wc = w + col;
    // Unrolled 8 deep: 8 * NC weight loads in flight per thread (the product is bound
    // by L2 latency at the batch sizes of sampling).
#pragma unroll 8
    for (int k = k_begin; k < k_end; ++k) {
      T wv[NC];
      wv[0] = __ldg(wc + int64_t(k) * ldw);
      if constexpr (NC == 2) wv[1] = __ldg(wc + int64_t(k) * ldw + second);
#pragma unroll
      for (int r = 0; r < kRowTileImages; ++r) {
        if (r < rows) {
          const T xv = x.value(r, k);
#pragma unroll
          for (int i = 0; i < NC; ++i) acc[r][i] += xv * wv[i];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowTileImages; ++r)
#pragma unroll
    for (int i = 0; i < NC; ++i) partial[warp][r][i][lane] = acc[r][i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < NC; ++i) {
    T total = T(0);
#pragma unroll
    for (int v = 0; v < kRowTileWarps; ++v) total += partial[v][warp][i][lane];
    sum[i] = total;
  }
  __syncthreads();  // the shared buffer is reused by the next product
}

// The tile's images' group-c slice of a 1x1 output of layer m's gated units: for o < Hg,
// out(r, o) = sum_k gated[m][n][k] * weight[m][k][c Hg + o] + bias[m][c Hg + o]; each
// thread passes its (image, o) and out to `store` (when the image exists). The slice of
// the block (slice[r * Hg + o]) is filled by `store`; ends with a barrier.
template <typename T, typename Store>
__device__ void group_slice(const BatchedParams<T>& p, const RowTile& t, int rows, int m, int c,
                            const T* weight, const T* bias, TilePartial<T, 1> partial, Store store) {
  const GatedRowTiling& s = p.tiling;
  const int H = s.hidden, Hg = s.group();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const TileInput<T, false> x{p.gated + int64_t(m) * s.batch * H, H, t.image0, 0, 0, nullptr};
  for (int o0 = 0; o0 < Hg; o0 += kRowTileColumns) {
    const int o = o0 + lane;
    const bool ok = o < Hg;
    T y[1];
    tile_product<T, 1>(x, rows, H, weight + int64_t(m) * H * H, H, c * Hg + o, 0, ok, partial, y);
    if (ok && warp < rows) store(t.image0 + warp, o, y[0] + bias[int64_t(m) * H + c * Hg + o]);
  }
  __syncthreads();  // the slice is complete before the block's product reads it
}

// Gate tile of layer l: colour group c's pre-activations over taps j-p..j, then the
// gated units. Layers >= 1 first recompute layer l-1's residual output for group c at
// column j (the slice of their input that the previous phase did not store).
template <typename T>
__device__ void gate_tile(const BatchedParams<T>& p, const RowTile& t, int64_t j, int c, int rows,
                          T* slice, TilePartial<T, 2> partial, TilePartial<T, 1> partial1) {
  const GatedRowTiling& s = p.tiling;
  const int N = s.batch, H = s.hidden, Hg = s.group(), P = 2 * H, Pg = P / s.channels, l = t.layer;
  const int K = l == 0 ? s.channels * p.features : H;
  const int64_t padded = p.width + p.taps - 1, current = j + p.taps - 1;  // column j's slot
  T* buffer = l == 0 ? p.input0 : layer_input_rows(p, l);
  if (l >= 1) {
    // input_l = residual(gated_{l-1}) + input_{l-1} (layer 0 has no residual input).
    const T* previous = l >= 2 ? layer_input_rows(p, l - 1) : nullptr;
    group_slice(p, t, rows, l - 1, c, p.w.residual_weight, p.w.residual_bias, partial1,
                [&](int n, int o, T y) {
                  const int64_t at = (int64_t(n) * padded + current) * H + c * Hg + o;
                  const T v = y + (previous != nullptr ? previous[at] : T(0));
                  slice[(n - t.image0) * Hg + o] = v;
                  if (t.writer) buffer[at] = v;  // read by later columns and layer l + 1
                });
  }
  const TileInput<T, false> x{buffer + j * K, padded * K, t.image0, (p.taps - 1) * K + c * Hg,
                              l >= 1 ? Hg : 0, slice};
  const T* w = l == 0 ? p.w.first_weight : p.w.horizontal_weight + int64_t(l - 1) * p.taps * H * P;
  const int warp = threadIdx.x / 32, col = t.column0 + threadIdx.x % 32;
  const bool ok = col < Hg;
  T z[2];  // the tanh and sigmoid halves of gated unit col
  tile_product<T, 2>(x, rows, p.taps * K, w, P, c * Pg + col, Hg, ok, partial, z);
  if (ok && warp < rows) {
    const int n = t.image0 + warp;
    const T* bias = p.row_bias + ((int64_t(l) * N + n) * p.width + j) * P + c * Pg;
    p.gated[(int64_t(l) * N + n) * H + c * Hg + col] = gated_unit(z[0] + bias[col], z[1] + bias[Hg + col]);
  }
}

// Skip tile of layer m: adds its skip output to group c of the skip sum (layers in order).
template <typename T>
__device__ void skip_tile(const BatchedParams<T>& p, const RowTile& t, int c, int rows,
                          TilePartial<T, 1> partial1) {
  const GatedRowTiling& s = p.tiling;
  const int H = s.hidden, Hg = s.group(), m = t.layer;
  const int warp = threadIdx.x / 32, col = t.column0 + threadIdx.x % 32;
  const bool ok = col < Hg;
  const TileInput<T, false> x{p.gated + int64_t(m) * s.batch * H, H, t.image0, 0, 0, nullptr};
  T y[1];
  tile_product<T, 1>(x, rows, H, p.w.skip_weight + int64_t(m) * H * H, H, c * Hg + col, 0, ok, partial1, y);
  if (ok && warp < rows) {
    T& sum = p.skip[int64_t(t.image0 + warp) * H + c * Hg + col];
    sum = sum + (y[0] + __ldg(p.w.skip_bias + int64_t(m) * H + c * Hg + col));
  }
}

// Head tile 1: the last layer's skip output completes group c of the skip sum (inline,
// into the block's slice; the writer stores it in skip_total for the later colours),
// then hidden = relu(W1 relu(skip_total) + b1) for group c.
template <typename T>
__device__ void head_tile1(const BatchedParams<T>& p, const RowTile& t, int c, int rows, T* slice,
                           TilePartial<T, 1> partial1) {
  const GatedRowTiling& s = p.tiling;
  const int H = s.hidden, Hg = s.group();
  group_slice(p, t, rows, s.layers - 1, c, p.w.skip_weight, p.w.skip_bias, partial1,
              [&](int n, int o, T y) {
                const int64_t at = int64_t(n) * H + c * Hg + o;
                const T v = p.skip[at] + y;
                slice[(n - t.image0) * Hg + o] = v;
                if (t.writer) p.skip_total[at] = v;  // no block reads group c of it in this phase
              });
  const TileInput<T, true> x{p.skip_total, H, t.image0, c * Hg, Hg, slice};
  const int warp = threadIdx.x / 32, col = t.column0 + threadIdx.x % 32;
  const bool ok = col < Hg;
  T y[1];
  tile_product<T, 1>(x, rows, H, p.w.head_weight1, H, c * Hg + col, 0, ok, partial1, y);
  if (ok && warp < rows) {
    p.hidden[int64_t(t.image0 + warp) * H + c * Hg + col] = relu_value(y[0] + __ldg(p.w.head_bias1 + c * Hg + col));
  }
}

// Head tile 2: colour c's logits.
template <typename T>
__device__ void head_tile2(const BatchedParams<T>& p, const RowTile& t, int64_t j, int c, int rows,
                           TilePartial<T, 1> partial1) {
  const GatedRowTiling& s = p.tiling;
  const int H = s.hidden, C = s.channels, V = s.levels;
  const int warp = threadIdx.x / 32, col = t.column0 + threadIdx.x % 32;
  const bool ok = col < V;
  const TileInput<T, false> x{p.hidden, H, t.image0, 0, 0, nullptr};
  T y[1];
  tile_product<T, 1>(x, rows, H, p.w.head_weight2, int64_t(C) * V, c * V + col, 0, ok, partial1, y);
  if (ok && warp < rows) {
    const int64_t at = (int64_t(t.image0 + warp) * C + c) * p.width + j;
    p.logits[at * V + col] = y[0] + __ldg(p.w.head_bias2 + c * V + col);
  }
}

// Draw tile: warp v draws image image0 + v (known sub-pixels are not drawn) and writes
// the level's features into column j of the first layer's input row.
template <typename T>
__device__ void draw_tile(const BatchedParams<T>& p, const RowTile& t, int64_t j, int c) {
  const GatedRowTiling& s = p.tiling;
  const int C = s.channels, V = s.levels, E = p.features, lane = threadIdx.x % 32;
  const int n = t.image0 + static_cast<int>(threadIdx.x / 32);
  if (n >= s.batch) return;  // the whole warp: warp_draw needs all 32 lanes
  const int64_t at = (int64_t(n) * C + c) * p.width + j;
  const int64_t value = p.known[at] ? known_level(p.prefix[at], V)
                                    : warp_draw(p.logits + at * V, V, p.uniforms[(j * C + c) * s.batch + n],
                                                p.temperature);
  if (lane == 0) p.values[at] = value;
  const int64_t padded = p.width + p.taps - 1;
  T* feature = p.input0 + (int64_t(n) * padded + j + p.taps - 1) * (int64_t(C) * E) + c * E;
  for (int e = lane; e < E; e += 32) feature[e] = value >= 0 ? __ldg(p.w.feature_table + value * E + e) : T(0);
}

// Runs steps [q_begin, q_end) of the row (row_step in gated_row_tiles.h), with a grid
// barrier between them: in a cooperative launch the whole row, else one step per launch.
template <typename T>
__global__ void __launch_bounds__(kBatchedThreads)
    gated_row_batched_kernel(const BatchedParams<T> p, int64_t q_begin, int64_t q_end) {
  __shared__ T partial[kRowTileWarps][kRowTileImages][2][kRowTileColumns];
  auto* partial1 = reinterpret_cast<TilePartial<T, 1>>(&partial[0][0][0][0]);
  const GatedRowTiling& s = p.tiling;
  T* slice = p.slices + int64_t(blockIdx.x) * kRowTileImages * s.group();
  for (int64_t q = q_begin; q < q_end; ++q) {
    const RowStep step = row_step(q, s.phases(), s.channels);
    const int tiles = s.tiles(step.phase);
    for (int i = blockIdx.x; i < tiles; i += gridDim.x) {  // the same in the whole block
      const RowTile t = s.tile(step.phase, i);
      const int rows = min(kRowTileImages, s.batch - t.image0);
      switch (t.kind) {
        case kGateTile: gate_tile(p, t, step.column, step.colour, rows, slice, partial, partial1); break;
        case kSkipTile: skip_tile(p, t, step.colour, rows, partial1); break;
        case kHeadTile1: head_tile1(p, t, step.colour, rows, slice, partial1); break;
        case kHeadTile2: head_tile2(p, t, step.column, step.colour, rows, partial1); break;
        default: draw_tile(p, t, step.column, step.colour); break;
      }
    }
    if (step.phase == s.phases() - 1 && step.colour == s.channels - 1) {
      // The column is done: groups above the next colour must read as zeros in the
      // gated units, skip sums and hidden layer (contiguous in the work buffer). No
      // block reads them in the draw phase.
      const int64_t count = int64_t(s.layers + 3) * s.batch * s.hidden;
      for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
           i += int64_t(gridDim.x) * blockDim.x) {
        p.gated[i] = T(0);
      }
    }
    if (q + 1 < q_end) cg::this_grid().sync();
  }
}

// How many blocks of the batched kernel can be resident at once on `device` (0 when
// the device cannot launch cooperative kernels), looked up once per device and dtype.
template <typename T>
int batched_resident_blocks(int device) {
  static ResidentBlocksCache cache;
  return resident_cooperative_blocks(cache, gated_row_batched_kernel<T>, kBatchedThreads, device);
}

// Runs the row on the batched kernel: one cooperative launch of `grid` (<= resident)
// blocks, or with cooperative false one launch per step.
template <typename T>
void launch_batched(const BatchedParams<T>& p, int64_t width, int grid, bool cooperative) {
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t steps = width * p.tiling.channels * p.tiling.phases();
  if (cooperative) {
    int64_t begin = 0, end = steps;
    void* args[] = {const_cast<BatchedParams<T>*>(&p), &begin, &end};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(gated_row_batched_kernel<T>),
                                               dim3(grid), dim3(kBatchedThreads), args, 0, stream));
    return;
  }
  for (int64_t q = 0; q < steps; ++q) {
    gated_row_batched_kernel<T><<<grid, kBatchedThreads, 0, stream>>>(p, q, q + 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ==== the host entry point ============================================================

std::tuple<at::Tensor, at::Tensor> gated_pixelcnn_row_cuda(
    const at::Tensor& prefix, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& row_bias, at::TensorList weights, bool check_levels) {
  const char* op = "gated_pixelcnn_row";
  const GatedRowWeights w = unpack_weights<GatedRowWeights>(op, weights);
  const GatedRowShape s =
      check_gated_pixelcnn_row(prefix, known, uniforms, temperature, row_bias, w, check_levels);
  check_cuda(op, row_bias, "row_bias");
  TORCH_CHECK_VALUE(s.batch <= 65535 * 1024, op, ": batch ", s.batch, " is too large");
  const GatedRowKernel choice = gated_row_kernel_choice(std::getenv("GENFAST_GATED_ROW_KERNEL"));
  const c10::cuda::CUDAGuard guard(row_bias.device());
  const int device = row_bias.get_device();
  const GatedRowWeights wc = contiguous_weights(w);
  const at::Tensor prefix_c = prefix.contiguous(), known_c = known.contiguous(),
                   uniforms_c = uniforms.contiguous(), row_bias_c = row_bias.contiguous();
  const int64_t padded = s.width + s.taps - 1;
  at::Tensor input0 = at::zeros({s.batch, padded, s.input_channels()}, row_bias.options());
  at::Tensor inputs = at::zeros({std::max<int64_t>(s.layers - 1, 0), s.batch, padded, s.hidden},
                                row_bias.options());
  at::Tensor values = at::empty(prefix.sizes(), prefix.options());
  at::Tensor logits = at::empty({s.batch, s.channels, s.width, s.levels}, row_bias.options());
  AT_DISPATCH_FLOATING_TYPES(row_bias.scalar_type(), "gated_pixelcnn_row_cuda", [&] {
    // The batched kernel where it can run (see gated_row_kernel_choice), else the
    // per-image kernel.
    // The arguments and buffers both kernels' parameters hold.
    const auto set_row_buffers = [&](auto& p) {
      p.prefix = prefix_c.const_data_ptr<int64_t>();
      p.known = known_c.const_data_ptr<bool>();
      p.uniforms = uniforms_c.const_data_ptr<double>();
      p.temperature = temperature;
      p.row_bias = row_bias_c.const_data_ptr<scalar_t>();
      p.w.set(wc);
      p.input0 = input0.mutable_data_ptr<scalar_t>();
      p.inputs = inputs.mutable_data_ptr<scalar_t>();
      p.values = values.mutable_data_ptr<int64_t>();
      p.logits = logits.mutable_data_ptr<scalar_t>();
    };
    int resident = 0;
    if (choice == GatedRowKernel::kAuto || choice == GatedRowKernel::kBatched) {
      resident = batched_resident_blocks<scalar_t>(device);
      TORCH_CHECK(resident > 0 || choice == GatedRowKernel::kAuto, op,
                  ": GENFAST_GATED_ROW_KERNEL=batched, but this device cannot launch the batched "
                  "kernel cooperatively; use 'phases' or 'per_image'");
    }
    if (choice == GatedRowKernel::kPerImage || (choice != GatedRowKernel::kPhases && resident == 0)) {
      Params<scalar_t> p{};
      set_row_buffers(p);
      p.batch = static_cast<int>(s.batch);
      p.channels = static_cast<int>(s.channels);
      p.width = static_cast<int>(s.width);
      p.levels = static_cast<int>(s.levels);
      p.features = static_cast<int>(s.features);
      p.hidden = static_cast<int>(s.hidden);
      p.taps = static_cast<int>(s.taps);
      p.layers = static_cast<int>(s.layers);
      launch(p, s, device);
      return;
    }
    const bool cooperative = choice != GatedRowKernel::kPhases;
    BatchedParams<scalar_t> p{};
    p.tiling = gated_row_tiling(s);
    const int grid = std::min(p.tiling.max_tiles(), cooperative ? resident : 65535);
    // Gated units, skip sums and hidden layer start at zero (groups above the colour
    // read as zeros); the blocks' slices are written before they are read.
    at::Tensor work = at::zeros({gated_row_work_elements(s, grid)}, row_bias.options());
    const int64_t vectors = s.batch * s.hidden;
    set_row_buffers(p);
    p.gated = work.mutable_data_ptr<scalar_t>();
    p.skip = p.gated + s.layers * vectors;
    p.skip_total = p.skip + vectors;
    p.hidden = p.skip_total + vectors;
    p.slices = p.hidden + vectors;
    p.width = static_cast<int>(s.width);
    p.features = static_cast<int>(s.features);
    p.taps = static_cast<int>(s.taps);
    launch_batched(p, s.width, grid, cooperative);
  });
  return {values, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) { m.impl("gated_pixelcnn_row", &gated_pixelcnn_row_cuda); }

}  // namespace genfast
