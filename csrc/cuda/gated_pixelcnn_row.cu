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
  const T *feature_table, *row_bias, *first_weight, *horizontal_weight, *residual_weight,
      *residual_bias, *skip_weight, *skip_bias, *head_weight1, *head_bias1, *head_weight2,
      *head_bias2;
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
        const T* w = l == 0 ? p.first_weight : p.horizontal_weight + int64_t(l - 1) * p.taps * H * P;
        block_gemv(x, p.taps * K, w + c * Pg, P, Pg, partial, store(z, nullptr));
        const T* bias = p.row_bias + ((int64_t(l) * p.batch + n) * W + j) * P + c * Pg;
        T* g = gated + l * H;
        for (int i = threadIdx.x; i < Hg; i += blockDim.x) {
          g[c * Hg + i] = gated_unit(z[i] + bias[i], z[Hg + i] + bias[Hg + i]);
        }
        __syncthreads();
        block_gemv(g, H, p.skip_weight + int64_t(l) * H * H + c * Hg, H, Hg, partial,
                   store(y, p.skip_bias + l * H + c * Hg));
        for (int i = threadIdx.x; i < Hg; i += blockDim.x) skip[c * Hg + i] += y[i];
        __syncthreads();
        if (l == L - 1) continue;  // the last layer has no horizontal output
        block_gemv(g, H, p.residual_weight + int64_t(l) * H * H + c * Hg, H, Hg, partial,
                   store(y, p.residual_bias + l * H + c * Hg));
        T* out = layer_input(l + 1) + int64_t(j + p.taps - 1) * H + c * Hg;
        const T* res = l == 0 ? nullptr : layer_input(l) + int64_t(j + p.taps - 1) * H + c * Hg;
        for (int i = threadIdx.x; i < Hg; i += blockDim.x) out[i] = y[i] + (res ? res[i] : T(0));
        __syncthreads();
      }
      // Output head: relu -> 1x1 -> relu -> 1x1 to colour c's levels, then the draw.
      for (int i = threadIdx.x; i < H; i += blockDim.x) head_in[i] = relu_value(skip[i]);
      __syncthreads();
      block_gemv(head_in, H, p.head_weight1 + c * Hg, H, Hg, partial, store(y, p.head_bias1 + c * Hg));
      for (int i = threadIdx.x; i < Hg; i += blockDim.x) hidden[c * Hg + i] = relu_value(y[i]);
      __syncthreads();
      const int64_t at = (int64_t(n) * C + c) * W + j;
      T* logits = p.logits + at * V;
      block_gemv(hidden, H, p.head_weight2 + c * V, C * V, V, partial, store(logits, p.head_bias2 + c * V));
      if (threadIdx.x < 32) {
        const double u = p.uniforms[(int64_t(j) * C + c) * p.batch + n];
        const int64_t drawn = warp_draw(logits, V, u, p.temperature);
        const int64_t value = p.known[at] ? p.prefix[at] : drawn;
        if (threadIdx.x == 0) p.values[at] = value;
        T* feature = input0 + int64_t(j + p.taps - 1) * K0 + c * E;
        for (int e = threadIdx.x; e < E; e += 32) {
          feature[e] = value >= 0 ? p.feature_table[value * E + e] : T(0);
        }
      }
      __syncthreads();
    }
  }
}

std::tuple<at::Tensor, at::Tensor> gated_pixelcnn_row_cuda(
    const at::Tensor& prefix, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& feature_table, const at::Tensor& row_bias,
    const at::Tensor& first_weight, const at::Tensor& horizontal_weight,
    const at::Tensor& residual_weight, const at::Tensor& residual_bias,
    const at::Tensor& skip_weight, const at::Tensor& skip_bias, const at::Tensor& head_weight1,
    const at::Tensor& head_bias1, const at::Tensor& head_weight2, const at::Tensor& head_bias2) {
  const GatedRowShape s = check_gated_pixelcnn_row(
      prefix, known, uniforms, temperature, feature_table, row_bias, first_weight,
      horizontal_weight, residual_weight, residual_bias, skip_weight, skip_bias, head_weight1,
      head_bias1, head_weight2, head_bias2);
  TORCH_CHECK(row_bias.is_cuda(), "gated_pixelcnn_row: row_bias must be a CUDA tensor, got ",
              row_bias.device());
  TORCH_CHECK(s.batch <= 65535 * 1024, "gated_pixelcnn_row: batch ", s.batch, " is too large");
  const c10::cuda::CUDAGuard guard(row_bias.device());
  const at::Tensor t[] = {prefix.contiguous(), known.contiguous(), uniforms.contiguous(),
                          feature_table.contiguous(), row_bias.contiguous(),
                          first_weight.contiguous(), horizontal_weight.contiguous(),
                          residual_weight.contiguous(), residual_bias.contiguous(),
                          skip_weight.contiguous(), skip_bias.contiguous(),
                          head_weight1.contiguous(), head_bias1.contiguous(),
                          head_weight2.contiguous(), head_bias2.contiguous()};
  const int64_t padded = s.width + s.taps - 1;
  at::Tensor input0 = at::zeros({s.batch, padded, s.input_channels()}, row_bias.options());
  at::Tensor inputs = at::zeros({std::max<int64_t>(s.layers - 1, 0), s.batch, padded, s.hidden},
                                row_bias.options());
  at::Tensor values = at::empty(prefix.sizes(), prefix.options());
  at::Tensor logits = at::empty({s.batch, s.channels, s.width, s.levels}, row_bias.options());
  AT_DISPATCH_FLOATING_TYPES(row_bias.scalar_type(), "gated_pixelcnn_row_cuda", [&] {
    Params<scalar_t> p{};
    p.prefix = t[0].const_data_ptr<int64_t>();
    p.known = t[1].const_data_ptr<bool>();
    p.uniforms = t[2].const_data_ptr<double>();
    p.temperature = temperature;
    p.feature_table = t[3].const_data_ptr<scalar_t>();
    p.row_bias = t[4].const_data_ptr<scalar_t>();
    p.first_weight = t[5].const_data_ptr<scalar_t>();
    p.horizontal_weight = t[6].const_data_ptr<scalar_t>();
    p.residual_weight = t[7].const_data_ptr<scalar_t>();
    p.residual_bias = t[8].const_data_ptr<scalar_t>();
    p.skip_weight = t[9].const_data_ptr<scalar_t>();
    p.skip_bias = t[10].const_data_ptr<scalar_t>();
    p.head_weight1 = t[11].const_data_ptr<scalar_t>();
    p.head_bias1 = t[12].const_data_ptr<scalar_t>();
    p.head_weight2 = t[13].const_data_ptr<scalar_t>();
    p.head_bias2 = t[14].const_data_ptr<scalar_t>();
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
    const int64_t hg = s.hidden / s.channels;
    const size_t shared_bytes =
        sizeof(scalar_t) * ((s.layers + 3) * s.hidden + 2 * hg + hg);
    int device_limit = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&device_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                          row_bias.get_device()));
    TORCH_CHECK(shared_bytes <= static_cast<size_t>(device_limit),
                "gated_pixelcnn_row: ", s.layers, " layers of ", s.hidden,
                " hidden channels need ", shared_bytes, " bytes of shared memory per image, more "
                "than this GPU's ", device_limit, "; use fewer layers or channels, or the CPU");
    if (shared_bytes > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(gated_pixelcnn_row_kernel<scalar_t>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    }
    gated_pixelcnn_row_kernel<scalar_t>
        <<<static_cast<unsigned>(s.batch), kThreads, shared_bytes,
           c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {values, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) { m.impl("gated_pixelcnn_row", &gated_pixelcnn_row_cuda); }

}  // namespace genfast
