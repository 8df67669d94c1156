// gated_pixelcnn_row on CUDA: ONE launch per row, one thread block per image (the
// images of a row are independent, so no grid-wide synchronisation is needed). The
// block walks the row's sub-pixels; every product is a block-wide matrix-vector
// product (block_gemv.cuh, deterministic). Per-position vectors live in shared
// memory, the row buffers of the layers' inputs in a global scratch tensor.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../gated_pixelcnn_row.h"
#include "block_gemv.cuh"
#include "warp_draw.cuh"

namespace genfast {
namespace {

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

std::tuple<at::Tensor, at::Tensor> gated_pixelcnn_row_cuda(
    const at::Tensor& prefix, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& row_bias, at::TensorList weights, bool check_levels) {
  const char* op = "gated_pixelcnn_row";
  const GatedRowWeights w = unpack_weights<GatedRowWeights>(op, weights);
  const GatedRowShape s =
      check_gated_pixelcnn_row(prefix, known, uniforms, temperature, row_bias, w, check_levels);
  check_cuda(op, row_bias, "row_bias");
  TORCH_CHECK_VALUE(s.batch <= 65535 * 1024, op, ": batch ", s.batch, " is too large");
  const c10::cuda::CUDAGuard guard(row_bias.device());
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
    Params<scalar_t> p{};
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
    p.batch = static_cast<int>(s.batch);
    p.channels = static_cast<int>(s.channels);
    p.width = static_cast<int>(s.width);
    p.levels = static_cast<int>(s.levels);
    p.features = static_cast<int>(s.features);
    p.hidden = static_cast<int>(s.hidden);
    p.taps = static_cast<int>(s.taps);
    p.layers = static_cast<int>(s.layers);
    launch(p, s, row_bias.get_device());
  });
  return {values, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) { m.impl("gated_pixelcnn_row", &gated_pixelcnn_row_cuda); }

}  // namespace genfast
