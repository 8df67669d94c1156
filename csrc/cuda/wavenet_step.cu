// wavenet_step on CUDA: the whole step in ONE cooperative (persistent) kernel launch.
// The step is a chain of phases — the input layer, then per layer the gated
// dilated convolution and the residual + skip 1x1s, then the two head layers and
// the inverse-CDF draw — separated by grid-wide barriers; every phase splits its
// outputs into tiles of 8 sequences x 32 columns that the resident blocks take in
// turn. In a tile each lane owns one output column (coalesced weight reads), the 8
// warps split the reduction and add their partial sums in shared memory in warp
// order, so results are deterministic. Devices without cooperative launch get one
// launch per phase instead (the same kernel, one phase at a time).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include "../wavenet_step.h"
#include "cooperative.cuh"
#include "warp_draw.cuh"

namespace genfast {
namespace {

namespace cg = cooperative_groups;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileRows = 8;   // sequences per tile
constexpr int kTileCols = 32;  // output columns per tile, one per lane
static_assert(kTileRows * kTileCols == kThreads, "a tile's outputs are one per thread");

template <typename T>
struct Params {
  int64_t* samples;
  T* cache;
  const double* uniforms;
  WaveNetStepPointers<T> w;
  T* gated;   // (N, G/2): the current layer's gated units
  T* skip;    // (N, S): the running sum of the skip outputs
  T* hidden;  // (N, H): the head's hidden layer
  T* logits;  // (N, levels)
  int batch, length, residual, gate_half, skip_channels, head, levels, kernel_size, input_kernel_size;
  int layers, slots, residual_skip;  // residual_skip = R + S
  bool gate_bias_per_sequence;
  int64_t step, known_steps;
  double temperature;
  int dilation[kWaveNetMaxLayers];
  int offset[kWaveNetMaxLayers];
  int ring_length[kWaveNetMaxLayers];
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__device__ __forceinline__ T* layer_input(const Params<T>& p, int64_t n, int layer, int64_t time) {
  const int64_t slot = p.offset[layer] + wavenet_ring_slot(time, p.ring_length[layer]);
  return p.cache + (n * p.slots + slot) * p.residual;
}

// One tile of a product. The reduction runs over `segments` segments of kdim inputs:
// segment g of row n is the vector x.row(n, g) (kdim contiguous values) and meets weight
// rows [g * kdim, (g + 1) * kdim) of w. For the lane's NC columns (col, col + second) and
// rows n0 + r < batch, out[r][c] = sum over g, kk of x.row(n0 + r, g)[kk] * w[(g * kdim + kk)
// * ldw + column c]. The warps split each segment's kdim; returns, for the thread's
// (row = threadIdx.x / 32, lane = threadIdx.x % 32), the NC sums over the warps.
template <typename T, int NC, typename Input>
__device__ void tile_product(const Input& x, int segments, int kdim, const T* __restrict__ w,
                             int ldw, int col, int second, bool col_ok, int n0, int batch,
                             T (*partial)[kTileRows][NC][kTileCols], T (&sum)[NC]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunk = (kdim + kWarps - 1) / kWarps;
  const int k_begin = warp * chunk, k_end = min(kdim, k_begin + chunk);
  const int rows = min(kTileRows, batch - n0);  // the same in the whole block
  T acc[kTileRows][NC];
#pragma unroll
  for (int r = 0; r < kTileRows; ++r)
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[r][c] = T(0);
  if (col_ok) {
    for (int g = 0; g < segments; ++g) {
      const T* xs[kTileRows];
#pragma unroll
      for (int r = 0; r < kTileRows; ++r) xs[r] = x.row(min(n0 + r, batch - 1), g);
      const T* __restrict__ wg = w + int64_t(g) * kdim * ldw;
#pragma unroll 4
      for (int kk = k_begin; kk < k_end; ++kk) {
        T wv[NC];
        wv[0] = wg[int64_t(kk) * ldw + col];
        if constexpr (NC == 2) wv[1] = wg[int64_t(kk) * ldw + col + second];
#pragma unroll
        for (int r = 0; r < kTileRows; ++r) {
          if (r < rows) {
            const T xv = x.value(xs[r][kk]);
#pragma unroll
            for (int c = 0; c < NC; ++c) acc[r][c] += xv * wv[c];
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kTileRows; ++r)
#pragma unroll
    for (int c = 0; c < NC; ++c) partial[warp][r][c][lane] = acc[r][c];
  __syncthreads();
  const int row = threadIdx.x / 32;
#pragma unroll
  for (int c = 0; c < NC; ++c) {
    T total = T(0);
#pragma unroll
    for (int v = 0; v < kWarps; ++v) total += partial[v][row][c][lane];
    sum[c] = total;
  }
  __syncthreads();  // the shared buffer is reused by the next tile
}

// Phase 0: the input layer writes layer 0's input at time t; the skip sums start at zero.
template <typename T>
__device__ void input_phase(const Params<T>& p) {
  const int64_t threads = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < int64_t(p.batch) * p.residual; i += threads) {
    const int64_t n = i / p.residual;
    const int c = static_cast<int>(i % p.residual);
    T h = p.w.input_bias[c];
    for (int j = 0; j < p.input_kernel_size; ++j) {
      const int64_t column = p.step - p.input_kernel_size + j;
      if (column < 0) continue;
      const int64_t level = p.samples[n * p.length + column];
      // -1, a failed draw, adds nothing; so does an out-of-range value (user data: the
      // host check rejects it unless the caller checked it; never a device assert).
      if (level < 0 || level >= p.levels) continue;
      h += p.w.input_weight[(int64_t(j) * p.levels + level) * p.residual + c];
    }
    layer_input(p, n, 0, p.step)[c] = h;
  }
  for (int64_t i = first; i < int64_t(p.batch) * p.skip_channels; i += threads) p.skip[i] = T(0);
}

template <typename T>
struct TapInput {  // segment j of row n: layer l's input at time t - (k - 1 - j) * dilation
  const Params<T>* p;
  int layer;
  __device__ const T* row(int n, int j) const {
    return layer_input(*p, n, layer, p->step - int64_t(p->kernel_size - 1 - j) * p->dilation[layer]);
  }
  __device__ T value(T v) const { return v; }
};

template <typename T, bool kRelu>
struct RowInput {  // one segment: rows[n * width ...], optionally through a relu
  const T* rows;
  int width;
  __device__ const T* row(int n, int) const { return rows + int64_t(n) * width; }
  __device__ T value(T v) const { return kRelu ? relu_value(v) : v; }
};

// Tiles of a phase: (column tiles) x (row tiles), taken by the blocks in turn.
__device__ __forceinline__ void tile_coordinates(int tile, int columns, int& n0, int& col) {
  const int column_tiles = (columns + kTileCols - 1) / kTileCols;
  n0 = (tile / column_tiles) * kTileRows;
  col = (tile % column_tiles) * kTileCols + threadIdx.x % 32;
}

__device__ __forceinline__ int tile_count(int columns, int batch) {
  return ((columns + kTileCols - 1) / kTileCols) * ((batch + kTileRows - 1) / kTileRows);
}

template <typename T>
__device__ void gate_phase(const Params<T>& p, int layer, T (*partial)[kTileRows][2][kTileCols]) {
  const int G = 2 * p.gate_half;
  const T* w = p.w.dilated_weight + int64_t(layer) * p.kernel_size * p.residual * G;
  const TapInput<T> x{&p, layer};
  for (int tile = blockIdx.x; tile < tile_count(p.gate_half, p.batch); tile += gridDim.x) {
    int n0, col;
    tile_coordinates(tile, p.gate_half, n0, col);
    const bool col_ok = col < p.gate_half;
    T z[2];
    tile_product<T, 2>(x, p.kernel_size, p.residual, w, G, col, p.gate_half, col_ok, n0, p.batch,
                       partial, z);
    const int n = n0 + static_cast<int>(threadIdx.x / 32);
    if (col_ok && n < p.batch) {
      const T* gb = p.w.gate_bias + (int64_t(p.gate_bias_per_sequence ? n : 0) * p.layers + layer) * G;
      p.gated[int64_t(n) * p.gate_half + col] =
          gated_unit(z[0] + gb[col], z[1] + gb[p.gate_half + col]);
    }
  }
}

template <typename T>
__device__ void residual_skip_phase(const Params<T>& p, int layer,
                                    T (*partial)[kTileRows][1][kTileCols]) {
  const bool last = layer == p.layers - 1;
  const int first_col = last ? p.residual : 0;  // the last layer's residual is never used
  const int columns = p.residual_skip - first_col;
  const T* w = p.w.out_weight + int64_t(layer) * p.gate_half * p.residual_skip + first_col;
  const T* bias = p.w.out_bias + int64_t(layer) * p.residual_skip + first_col;
  const RowInput<T, false> x{p.gated, p.gate_half};
  for (int tile = blockIdx.x; tile < tile_count(columns, p.batch); tile += gridDim.x) {
    int n0, col;
    tile_coordinates(tile, columns, n0, col);
    const bool col_ok = col < columns;
    T y[1];
    tile_product<T, 1>(x, 1, p.gate_half, w, p.residual_skip, col, 0, col_ok, n0, p.batch, partial,
                       y);
    const int n = n0 + static_cast<int>(threadIdx.x / 32);
    if (col_ok && n < p.batch) {
      const T v = y[0] + bias[col];
      const int o = first_col + col;
      if (o < p.residual) {
        layer_input(p, n, layer + 1, p.step)[o] = layer_input(p, n, layer, p.step)[o] + v;
      } else {
        p.skip[int64_t(n) * p.skip_channels + (o - p.residual)] += v;
      }
    }
  }
}

// out[n, o] = epilogue(bias[o] + sum_k x(n, k) w[k, o]) for the head's layers.
template <typename T, typename Input>
__device__ void dense_phase(const Params<T>& p, const Input& x, int kdim, const T* w,
                            const T* bias, int columns, bool relu, T* out,
                            T (*partial)[kTileRows][1][kTileCols]) {
  for (int tile = blockIdx.x; tile < tile_count(columns, p.batch); tile += gridDim.x) {
    int n0, col;
    tile_coordinates(tile, columns, n0, col);
    const bool col_ok = col < columns;
    T y[1];
    tile_product<T, 1>(x, 1, kdim, w, columns, col, 0, col_ok, n0, p.batch, partial, y);
    const int n = n0 + static_cast<int>(threadIdx.x / 32);
    if (col_ok && n < p.batch) {
      const T v = y[0] + bias[col];
      out[int64_t(n) * columns + col] = relu ? relu_value(v) : v;
    }
  }
}

// One warp per sequence: the inverse-CDF draw over the levels (warp_draw.cuh).
template <typename T>
__device__ void draw_phase(const Params<T>& p) {
  if (p.step < p.known_steps) return;
  const int warps = gridDim.x * kWarps;
  for (int n = blockIdx.x * kWarps + threadIdx.x / 32; n < p.batch; n += warps) {
    const int64_t level = warp_draw(p.logits + int64_t(n) * p.levels, p.levels,
                                    p.uniforms[p.step * p.batch + n], p.temperature);
    if (threadIdx.x % 32 == 0) p.samples[int64_t(n) * p.length + p.step] = level;
  }
}

// Phases: 0 input; 1 + 2l gate of layer l; 2 + 2l residual/skip of layer l; then the two
// head layers and the draw. Runs phases [phase_begin, phase_end) with a grid barrier
// between them (only in a cooperative launch, where phase_end - phase_begin > 1).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    wavenet_step_kernel(const Params<T> p, int phase_begin, int phase_end) {
  __shared__ T partial[kWarps][kTileRows][2][kTileCols];
  auto* partial1 = reinterpret_cast<T(*)[kTileRows][1][kTileCols]>(&partial[0][0][0][0]);
  for (int phase = phase_begin; phase < phase_end; ++phase) {
    if (phase == 0) {
      input_phase(p);
    } else if (phase <= 2 * p.layers) {
      const int layer = (phase - 1) / 2;
      if (phase % 2 == 1) {
        gate_phase(p, layer, partial);
      } else {
        residual_skip_phase(p, layer, partial1);
      }
    } else if (phase == 2 * p.layers + 1) {
      dense_phase(p, RowInput<T, true>{p.skip, p.skip_channels}, p.skip_channels, p.w.head_weight1,
                  p.w.head_bias1, p.head, true, p.hidden, partial1);
    } else if (phase == 2 * p.layers + 2) {
      dense_phase(p, RowInput<T, false>{p.hidden, p.head}, p.head, p.w.head_weight2, p.w.head_bias2,
                  p.levels, false, p.logits, partial1);
    } else {
      draw_phase(p);
    }
    if (phase + 1 < phase_end) cg::this_grid().sync();
  }
}

// How many blocks of the kernel can be resident at once on `device` (0 when the device
// cannot launch cooperative kernels), looked up once per device.
template <typename T>
int resident_blocks(int device) {
  static ResidentBlocksCache cache;
  return resident_cooperative_blocks(cache, wavenet_step_kernel<T>, kThreads, device);
}

template <typename T>
void launch(const Params<T>& p, int max_tiles, const at::Tensor& like) {
  const int phases = 2 * p.layers + 4;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int resident = resident_blocks<T>(like.get_device());
  if (resident > 0) {
    // Every block must be resident for the grid barrier.
    const int grid = std::max(1, std::min(max_tiles, resident));
    int begin = 0, end = phases;
    void* args[] = {const_cast<Params<T>*>(&p), &begin, &end};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(wavenet_step_kernel<T>),
                                               dim3(grid), dim3(kThreads), args, 0, stream));
    return;
  }
  const int grid = std::max(1, std::min(max_tiles, 65535));
  for (int phase = 0; phase < phases; ++phase) {
    wavenet_step_kernel<T><<<grid, kThreads, 0, stream>>>(p, phase, phase + 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor wavenet_step_cuda(at::Tensor& samples, at::Tensor& cache, const at::Tensor& uniforms,
                             int64_t step, int64_t known_steps, double temperature,
                             at::TensorList weights, at::IntArrayRef dilations, bool check_levels) {
  const char* op = "wavenet_step";
  const WaveNetStepWeights w = unpack_weights<WaveNetStepWeights>(op, weights);
  const WaveNetStepShape s = check_wavenet_step(samples, cache, uniforms, step, known_steps,
                                                temperature, w, dilations, check_levels);
  check_cuda(op, cache, "cache");
  TORCH_CHECK_VALUE(s.batch <= kMaxIndex32 && s.length <= kMaxIndex32 && s.levels <= kMaxIndex32 &&
                        s.gate <= kMaxIndex32 && s.residual + s.skip <= kMaxIndex32 &&
                        s.head <= kMaxIndex32,
                    op, ": sizes must fit 32-bit integers");
  const c10::cuda::CUDAGuard guard(cache.device());
  at::Tensor samples_c = samples.contiguous(), cache_c = cache.contiguous();
  const WaveNetStepWeights wc = contiguous_weights(w);
  const at::Tensor uniforms_c = uniforms.contiguous();
  at::Tensor logits = at::empty({s.batch, s.levels}, cache.options());
  at::Tensor scratch = at::empty({s.batch, s.gate_half + s.skip + s.head}, cache.options());
  int max_tiles = 1;
  for (int64_t columns : {s.gate_half, s.residual + s.skip, s.head, s.levels}) {
    max_tiles = std::max<int>(max_tiles, static_cast<int>(ceil_div(columns, kTileCols) *
                                                          ceil_div(s.batch, kTileRows)));
  }
  AT_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "wavenet_step_cuda", [&] {
    Params<scalar_t> p{};
    p.samples = samples_c.mutable_data_ptr<int64_t>();
    p.cache = cache_c.mutable_data_ptr<scalar_t>();
    p.uniforms = uniforms_c.const_data_ptr<double>();
    p.w.set(wc);
    p.gated = scratch.mutable_data_ptr<scalar_t>();
    p.skip = p.gated + s.batch * s.gate_half;
    p.hidden = p.skip + s.batch * s.skip;
    p.logits = logits.mutable_data_ptr<scalar_t>();
    p.batch = static_cast<int>(s.batch);
    p.length = static_cast<int>(s.length);
    p.residual = static_cast<int>(s.residual);
    p.gate_half = static_cast<int>(s.gate_half);
    p.skip_channels = static_cast<int>(s.skip);
    p.head = static_cast<int>(s.head);
    p.levels = static_cast<int>(s.levels);
    p.kernel_size = static_cast<int>(s.kernel_size);
    p.input_kernel_size = static_cast<int>(s.input_kernel_size);
    p.layers = static_cast<int>(s.layers);
    p.slots = static_cast<int>(s.slots);
    p.residual_skip = static_cast<int>(s.residual + s.skip);
    p.gate_bias_per_sequence = s.gate_bias_per_sequence;
    p.step = step;
    p.known_steps = known_steps;
    p.temperature = temperature;
    for (int64_t l = 0; l < s.layers; ++l) {
      p.dilation[l] = static_cast<int>(s.dilation[l]);
      p.offset[l] = static_cast<int>(s.offset[l]);
      p.ring_length[l] = static_cast<int>(s.ring_length[l]);
    }
    launch(p, max_tiles, cache_c);
  });
  if (!samples_c.is_same(samples)) samples.copy_(samples_c);
  if (!cache_c.is_same(cache)) cache.copy_(cache_c);
  return logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("wavenet_step", &wavenet_step_cuda);
}

}  // namespace genfast
