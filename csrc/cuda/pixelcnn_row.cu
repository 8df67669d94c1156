// pixelcnn_row on CUDA: the whole row (layout and math in csrc/pixelcnn_row.h) in one
// launch. Images are independent within a row, so each block runs the row of one image
// (blocks stride over the images) and no grid-wide synchronisation is needed: the
// block loops over the columns, colours and layers itself, with __syncthreads between
// the phases. The image's row buffers and per-position vectors live in a zeroed global
// scratch tensor (its size grows with the model and would not always fit in shared
// memory; the block re-reads it from L1/L2). Every product is a block-wide GEMV
// (block_gemv.cuh, deterministic).
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pixelcnn_row.h"
#include "block_gemv.cuh"
#include "warp_draw.cuh"

namespace genfast {
namespace {

constexpr int kThreads = 32 * kGemvWarps;
constexpr int kMaxGrid = 4096;

template <typename T>
struct Params {
  const int64_t* values;
  const bool* known;
  const double* uniforms;
  double temperature;
  const T *input_bias, *block_bias;
  PixelCNNRowPointers<T> w;
  int64_t* values_out;
  T* logits;
  T* reduce_rows;
  T* scratch;  // (N, per_image), zeros
  int batch, channels, width, levels, features, in_channels, pad, wide, hidden, blocks;
  int64_t per_image;
};

// Offsets of one image's buffers in the scratch (see the CPU kernel for their roles).
struct Layout {
  int64_t feats, reduce, h, h_relu, conv, out_hidden, total;
  GENFAST_HOST_DEVICE Layout(int64_t pad, int64_t width, int64_t in_channels, int64_t blocks,
                             int64_t hidden, int64_t wide) {
    feats = 0;                                     // [p + W][Cin]
    reduce = feats + (pad + width) * in_channels;  // [b][1 + W][Hd]
    h = reduce + blocks * (1 + width) * hidden;    // [b][R], b <= B
    h_relu = h + (blocks + 1) * wide;              // [b][R]
    conv = h_relu + (blocks + 1) * wide;           // [b][Hd]
    out_hidden = conv + blocks * hidden;           // [R]
    total = out_hidden + wide;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) pixelcnn_row_kernel(const Params<T> p) {
  __shared__ T partial[kGemvWarps][32];
  const int C = p.channels, W = p.width, L = p.levels, Fe = p.features, Cin = p.in_channels;
  const int P = p.pad, R = p.wide, Hd = p.hidden, B = p.blocks, N = p.batch;
  const int gw = R / C, gh = Hd / C;
  const Layout lay(P, W, Cin, B, Hd, R);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    T* base = p.scratch + int64_t(n) * p.per_image;
    T* feats = base + lay.feats;
    auto reduce = [&](int b) { return base + lay.reduce + int64_t(b) * (1 + W) * Hd; };
    auto h = [&](int b) { return base + lay.h + int64_t(b) * R; };
    auto h_relu = [&](int b) { return base + lay.h_relu + int64_t(b) * R; };
    auto conv = [&](int b) { return base + lay.conv + int64_t(b) * Hd; };
    T* out_hidden = base + lay.out_hidden;
    for (int j = 0; j < W; ++j) {
      for (int c = 0; c < C; ++c) {
        const int o = c * gw, oh = c * gh, kw = (c + 1) * gw, kh = (c + 1) * gh;
        const T* in_bias = p.input_bias + (int64_t(n) * W + j) * R + o;
        block_gemv(feats + int64_t(j) * Cin, P * Cin + c * Fe, p.w.input_weight + o, R, gw, partial,
                   [&](int q, T s) {
                     const T v = s + in_bias[q];
                     h(0)[o + q] = v;
                     h_relu(0)[o + q] = relu_value(v);
                   });
        for (int b = 0; b < B; ++b) {
          T* red = reduce(b);
          const T* red_bias = p.w.reduce_bias + int64_t(b) * Hd + oh;
          block_gemv(h_relu(b), kw, p.w.reduce_weight + int64_t(b) * R * Hd + oh, Hd, gh, partial,
                     [&](int q, T s) { red[int64_t(j + 1) * Hd + oh + q] = relu_value(s + red_bias[q]); });
          const T* bb = p.block_bias + ((int64_t(b) * N + n) * W + j) * Hd + oh;
          T* cv = conv(b);
          block_gemv(red + int64_t(j) * Hd, Hd + kh, p.w.conv_weight + int64_t(b) * 2 * Hd * Hd + oh, Hd,
                     gh, partial, [&](int q, T s) { cv[oh + q] = relu_value(s + bb[q]); });
          const T* eb = p.w.expand_bias + int64_t(b) * R + o;
          const T* prev = h(b);
          T* next = h(b + 1);
          T* next_relu = h_relu(b + 1);
          block_gemv(cv, kh, p.w.expand_weight + int64_t(b) * Hd * R + o, R, gw, partial,
                     [&](int q, T s) {
                       const T v = prev[o + q] + s + eb[q];
                       next[o + q] = v;
                       next_relu[o + q] = relu_value(v);
                     });
        }
        block_gemv(h_relu(B), kw, p.w.hidden_weight + o, R, gw, partial,
                   [&](int q, T s) { out_hidden[o + q] = relu_value(s + p.w.hidden_bias[o + q]); });
        T* logits = p.logits + ((int64_t(n) * C + c) * W + j) * L;
        block_gemv(out_hidden, kw, p.w.output_weight + int64_t(c) * L, C * L, L, partial,
                   [&](int q, T s) { logits[q] = s + p.w.output_bias[int64_t(c) * L + q]; });
        if (warp == 0) {
          const int64_t at = (int64_t(n) * C + c) * W + j;
          int64_t level;
          if (p.known[at]) {  // the same in the whole warp, as warp_draw needs
            level = known_level(p.values[at], L);
          } else {
            level = warp_draw(logits, L, p.uniforms[(int64_t(j) * C + c) * N + n], p.temperature);
          }
          if (lane == 0) p.values_out[at] = level;
          T* dst = feats + int64_t(P + j) * Cin + c * Fe;
          for (int e = lane; e < Fe; e += 32) dst[e] = level >= 0 ? p.w.feature_table[level * Fe + e] : T(0);
        }
        __syncthreads();
      }
    }
    for (int64_t i = threadIdx.x; i < int64_t(B) * W * Hd; i += blockDim.x) {
      const int64_t b = i / (int64_t(W) * Hd), rest = i % (int64_t(W) * Hd);
      p.reduce_rows[(b * N + n) * W * Hd + rest] = reduce(static_cast<int>(b))[Hd + rest];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixelcnn_row_cuda(
    const at::Tensor& values, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& input_bias, const at::Tensor& block_bias,
    at::TensorList weights, bool check_levels) {
  const char* op = "pixelcnn_row";
  const PixelCNNRowWeights w = unpack_weights<PixelCNNRowWeights>(op, weights);
  const PixelCNNRowShape s = check_pixelcnn_row(values, known, uniforms, temperature, input_bias,
                                                block_bias, w, check_levels);
  check_cuda(op, w.input_weight, "input_weight");
  const c10::cuda::CUDAGuard guard(w.input_weight.device());
  const PixelCNNRowWeights wc = contiguous_weights(w);
  const at::Tensor values_c = values.contiguous(), known_c = known.contiguous(),
                   uniforms_c = uniforms.contiguous(), input_bias_c = input_bias.contiguous(),
                   block_bias_c = block_bias.contiguous();
  const at::TensorOptions options = w.input_weight.options();
  at::Tensor values_out = at::empty({s.batch, s.channels, s.width}, values.options());
  at::Tensor logits = at::empty({s.batch, s.channels, s.width, s.levels}, options);
  at::Tensor reduce_rows = at::empty({s.blocks, s.batch, s.width, s.hidden}, options);
  const Layout layout(s.pad, s.width, s.in_channels, s.blocks, s.hidden, s.wide);
  TORCH_CHECK_VALUE(layout.total <= kMaxIndex32, op, ": the row buffers of one image (",
                    layout.total, " values) are too large for 32-bit indexing");
  at::Tensor scratch = at::zeros({s.batch, layout.total}, options);
  AT_DISPATCH_FLOATING_TYPES(w.input_weight.scalar_type(), "pixelcnn_row_cuda", [&] {
    Params<scalar_t> p{};
    p.values = values_c.const_data_ptr<int64_t>();
    p.known = known_c.const_data_ptr<bool>();
    p.uniforms = uniforms_c.const_data_ptr<double>();
    p.temperature = temperature;
    p.input_bias = input_bias_c.const_data_ptr<scalar_t>();
    p.block_bias = block_bias_c.const_data_ptr<scalar_t>();
    p.w.set(wc);
    p.values_out = values_out.mutable_data_ptr<int64_t>();
    p.logits = logits.mutable_data_ptr<scalar_t>();
    p.reduce_rows = reduce_rows.mutable_data_ptr<scalar_t>();
    p.scratch = scratch.mutable_data_ptr<scalar_t>();
    p.batch = static_cast<int>(s.batch);
    p.channels = static_cast<int>(s.channels);
    p.width = static_cast<int>(s.width);
    p.levels = static_cast<int>(s.levels);
    p.features = static_cast<int>(s.features);
    p.in_channels = static_cast<int>(s.in_channels);
    p.pad = static_cast<int>(s.pad);
    p.wide = static_cast<int>(s.wide);
    p.hidden = static_cast<int>(s.hidden);
    p.blocks = static_cast<int>(s.blocks);
    p.per_image = layout.total;
    const int grid = static_cast<int>(std::min<int64_t>(s.batch, kMaxGrid));
    pixelcnn_row_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {values_out, logits, reduce_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("pixelcnn_row", &pixelcnn_row_cuda);
}

}  // namespace genfast
