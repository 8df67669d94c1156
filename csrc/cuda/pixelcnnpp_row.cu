// pixelcnnpp_row on CUDA: a whole image row of both streams (layout and schedule in
// csrc/pixelcnnpp_row.h) in one launch. Images are independent, so each thread block
// runs the row of one image (blocks stride over the images) and walks the schedule's
// layers itself (the u stream's rows column by column, then the ul stream's columns):
// every layer, at every pixel it updates, gathers its taps from the state
// (global memory, zeros outside the image) into shared memory, then one block-wide
// GEMV (block_gemv.cuh, deterministic) whose epilogue writes the result; __syncthreads
// between the phases. The draw is dmol_pixel_sample (dmol.h), by one thread.
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../concat_elu.h"
#include "../dmol.h"
#include "../pixelcnnpp_row.h"
#include "block_gemv.cuh"

namespace genfast {
namespace {

constexpr int kThreads = 32 * kGemvWarps;
constexpr int kMaxGrid = 4096;
constexpr int64_t kMaxSharedBytes = 48 * 1024;  // without the opt-in attribute

template <typename T>
struct Params : PixelCNNppRowArgs<T> {
  int64_t row;
  int batch, channels, width, filters, nr, nparams, mixtures, levels;
  int widths[3], depths[3];
};

template <typename T>
__device__ inline void put_concat_elu(T v, T* pos, T* neg) {
  concat_elu_values(v, T(expm1(concat_elu_expm1_arg(v))), *pos, *neg);
}

// pixelcnnpp_u_rows' and pixelcnnpp_column's step object for image n, run by the
// whole block (every call ends with a barrier).
template <typename T>
struct DeviceStep {
  const Params<T>& p;
  int n;
  T* x;  // shared: a layer's gathered taps (<= 14F)
  T* y;  // shared: a product (<= max(2F, P))
  T (*partial)[32];

  // Offsets within a pixel: F-map m and c1 map k of the ul (u = false) or u stream.
  __device__ int64_t fmap(int s, bool u, int64_t m) const {
    return (u ? pp_stream_offset(s, p.nr, p.filters) : 0) + m * 3 * p.filters;
  }
  __device__ int64_t c1map(int s, bool u, int64_t k) const {
    return (u ? pp_stream_offset(s, p.nr, p.filters) : 0) + pp_c1_offset(s, p.nr, p.filters) + k * 2 * p.filters;
  }
  __device__ T* pixel(int s, int64_t q, int c) const {
    return p.state[s] + ((int64_t(n) * 2 + (q & 1)) * p.widths[s] + c) * p.depths[s];
  }
  __device__ const T* read(int s, int64_t q, int c, int64_t offset) const {
    return q < 0 || c < 0 || c >= p.widths[s] ? nullptr : pixel(s, q, c) + offset;  // nullptr: zeros
  }
  // x = the taps (kdim values each) side by side; ends with a barrier.
  __device__ void gather(const T* const* taps, int count, int kdim) const {
    for (int i = threadIdx.x; i < count * kdim; i += blockDim.x) {
      const T* src = taps[i / kdim];
      x[i] = src ? src[i % kdim] : T(0);
    }
    __syncthreads();
  }
  // The F-map at `offset` of (q, c) = y[0, F) and its concat_elu; ends with a barrier.
  __device__ void put_map(int s, int64_t offset, int64_t q, int c) const {
    const int f = p.filters;
    T* dst = pixel(s, q, c) + offset;
    for (int i = threadIdx.x; i < f; i += blockDim.x) {
      dst[i] = y[i];
      put_concat_elu(y[i], dst + f + i, dst + 2 * f + i);
    }
    __syncthreads();
  }
  // c1(q, c) = concat_elu(bias + x @ w) (k = taps * 2F rows).
  __device__ void first_conv(int s, int64_t c1, int64_t q, int c, int k, const T* w, const T* bias) const {
    const int f = p.filters;
    T* dst = pixel(s, q, c) + c1;
    block_gemv(x, k, w, f, f, partial, [&](int col, T acc) { put_concat_elu(acc + bias[col], dst + col, dst + f + col); });
  }
  // out = source + gate(x @ w + block_out_bias[stream, b]) at (q, c) (k rows of w).
  __device__ void second_conv(int s, bool u, const PPBlock& b, int64_t q, int c, int k, const T* w) const {
    const int f = p.filters;
    const T* bias = p.block_out_bias + ((int64_t(u ? pp_blocks(p.nr) : 0) + b.index) * p.batch + n) * 2 * f;
    block_gemv(x, k, w, 2 * f, 2 * f, partial, [&](int col, T acc) { y[col] = acc + bias[col]; });
    T* px = pixel(s, q, c);
    const T* source = px + fmap(s, u, b.source);
    T* dst = px + fmap(s, u, b.out);
    for (int i = threadIdx.x; i < f; i += blockDim.x) {
      const T v = source[i] + y[i] * dmol_sigmoid(y[f + i]);
      dst[i] = v;
      put_concat_elu(v, dst + f + i, dst + 2 * f + i);
    }
    __syncthreads();
  }
  // The 2 x 3 taps (rows q - 1, q; columns c - 1..c + 1) at `offset`.
  __device__ void taps6(const T** taps, int s, int64_t q, int c, int64_t offset) const {
    for (int t = 0; t < 6; ++t) taps[t] = read(s, q - 1 + t / 3, c - 1 + t % 3, offset);
  }

  // ---- the u stream: whole rows ----
  __device__ void u_init() {  // down_shift(conv 2x3): features of rows row - 2, row - 1
    const int f = p.filters, cin = p.channels + 1;
    const int64_t row = p.row, image = pp_image_offset(0, p.nr, f);
    for (int c = 0; c < p.width; ++c) {
      if (row > 0) {
        const T* taps[6];
        taps6(taps, 0, row - 1, c, image);
        gather(taps, 6, cin);
        block_gemv(x, 6 * cin, p.w.u_init, f, f, partial, [&](int col, T acc) { y[col] = acc + p.w.u_init_bias[col]; });
      } else {
        for (int i = threadIdx.x; i < f; i += blockDim.x) y[i] = T(0);
        __syncthreads();
      }
      put_map(0, fmap(0, true, 0), row, c);
    }
  }

  __device__ void u_block(int s, const PPBlock& b, int64_t q) {
    const int f = p.filters;
    const int64_t c1 = c1map(s, true, b.c1), ce = fmap(s, true, b.source) + f;
    for (int c = 0; c < p.widths[s]; ++c) {
      const T* taps[7];
      taps6(taps, s, q, c, ce);
      taps[6] = b.down ? read(s, q, c, fmap(s, true, b.skip) + f) : nullptr;
      const int count = b.down ? 7 : 6;
      gather(taps, count, 2 * f);
      first_conv(s, c1, q, c, count * 2 * f, p.w.u_block_in + b.index * 14 * f * f, p.w.u_block_in_bias + b.index * f);
    }
    for (int c = 0; c < p.widths[s]; ++c) {  // the c1 row is complete: its c + 1 taps exist
      const T* taps[6];
      taps6(taps, s, q, c, c1);
      gather(taps, 6, 2 * f);
      second_conv(s, true, b, q, c, 12 * f, p.w.u_block_out + b.index * 24 * f * f);
    }
  }

  __device__ void u_down(int s, int64_t q) {  // stride 2: rows 2q - 1, 2q, columns 2c - 1..2c + 1
    const int f = p.filters;
    const int64_t finer = fmap(s - 1, true, p.nr);
    const T* bias = p.w.u_down_bias + (s - 1) * f;
    for (int c = 0; c < p.widths[s]; ++c) {
      const T* taps[6];
      for (int t = 0; t < 6; ++t) taps[t] = read(s - 1, 2 * q - 1 + t / 3, 2 * c - 1 + t % 3, finer);
      gather(taps, 6, f);
      block_gemv(x, 6 * f, p.w.u_down + int64_t(s - 1) * 6 * f * f, f, f, partial,
                 [&](int col, T acc) { y[col] = acc + bias[col]; });
      put_map(s, fmap(s, true, 0), q, c);
    }
  }

  __device__ void u_up(int s, int64_t q) {  // transposed 2x3, cropped: row q / 2, kernel row q % 2
    const int f = p.filters;
    const int64_t coarse = fmap(s + 1, true, pp_fmaps(s + 1, p.nr) - 1);
    const T* w = p.w.u_up + (int64_t(s) * 2 + q % 2) * 3 * f * f;  // kernel columns 1, 0, 2
    const T* bias = p.w.u_up_bias + s * f;
    for (int c = 0; c < p.widths[s]; ++c) {
      const bool odd = c % 2;
      const T* taps[2] = {read(s + 1, q / 2, odd ? (c + 1) / 2 : c / 2, coarse), read(s + 1, q / 2, (c - 1) / 2, coarse)};
      gather(taps, odd ? 2 : 1, f);
      block_gemv(x, (odd ? 2 : 1) * f, odd ? w + int64_t(f) * f : w, f, f, partial,
                 [&](int col, T acc) { y[col] = acc + bias[col]; });
      put_map(s, fmap(s, true, p.nr + 1), q, c);
    }
  }

  // ---- the ul stream: one pixel ----
  __device__ void init(int64_t j64) {
    const int f = p.filters, cin = p.channels + 1, j = static_cast<int>(j64);
    const int64_t row = p.row, image = pp_image_offset(0, p.nr, f);
    if (row > 0) {  // down_shift(conv 1x3): features of row - 1, columns j - 1..j + 1
      const T* taps[3] = {read(0, row - 1, j - 1, image), read(0, row - 1, j, image), read(0, row - 1, j + 1, image)};
      gather(taps, 3, cin);
      block_gemv(x, 3 * cin, p.w.init_above, f, f, partial,
                 [&](int col, T acc) { y[col] = acc + p.w.init_above_bias[col]; });
    } else {
      for (int i = threadIdx.x; i < f; i += blockDim.x) y[i] = T(0);
      __syncthreads();
    }
    if (j > 0) {  // right_shift(conv 2x1): rows row - 1, row of column j - 1
      const T* taps[2] = {read(0, row - 1, j - 1, image), read(0, row, j - 1, image)};
      gather(taps, 2, cin);
      block_gemv(x, 2 * cin, p.w.init_left, f, f, partial,
                 [&](int col, T acc) { y[col] += acc + p.w.init_left_bias[col]; });
    }
    put_map(0, fmap(0, false, 0), row, j);
  }

  __device__ void block(int s, const PPBlock& b, int64_t q, int64_t c64) {
    const int f = p.filters, c = static_cast<int>(c64);
    const int64_t c1 = c1map(s, false, b.c1), ce = fmap(s, false, b.source) + f;
    const T* taps_in[6] = {read(s, q - 1, c - 1, ce), read(s, q - 1, c, ce), read(s, q, c - 1, ce),
                           read(s, q, c, ce), read(s, q, c, fmap(s, true, b.out) + f),  // u at the same position
                           b.down ? read(s, q, c, fmap(s, false, b.skip) + f) : nullptr};
    const int count = b.down ? 6 : 5;
    gather(taps_in, count, 2 * f);
    first_conv(s, c1, q, c, count * 2 * f, p.w.block_in + b.index * 12 * f * f, p.w.block_in_bias + b.index * f);
    const T* taps_out[4] = {read(s, q - 1, c - 1, c1), read(s, q - 1, c, c1), read(s, q, c - 1, c1),
                            read(s, q, c, c1)};
    gather(taps_out, 4, 2 * f);
    second_conv(s, false, b, q, c, 8 * f, p.w.block_out + b.index * 16 * f * f);
  }

  __device__ void down(int s, int64_t q, int64_t c64) {  // stride 2: rows 2q - 1, 2q, columns 2c - 1, 2c
    const int f = p.filters, c = static_cast<int>(c64);
    const int64_t finer = fmap(s - 1, false, p.nr);
    const T* taps[4] = {read(s - 1, 2 * q - 1, 2 * c - 1, finer), read(s - 1, 2 * q - 1, 2 * c, finer),
                        read(s - 1, 2 * q, 2 * c - 1, finer), read(s - 1, 2 * q, 2 * c, finer)};
    gather(taps, 4, f);
    const T* bias = p.w.down_bias + (s - 1) * f;
    block_gemv(x, 4 * f, p.w.down + int64_t(s - 1) * 4 * f * f, f, f, partial,
               [&](int col, T acc) { y[col] = acc + bias[col]; });
    put_map(s, fmap(s, false, 0), q, c);
  }

  __device__ void up(int s, int64_t q, int64_t c64) {  // transposed: (q / 2, c / 2), tap (q % 2, c % 2)
    const int f = p.filters, c = static_cast<int>(c64);
    const T* taps[1] = {read(s + 1, q / 2, c / 2, fmap(s + 1, false, pp_fmaps(s + 1, p.nr) - 1))};
    gather(taps, 1, f);
    const T* bias = p.w.up_bias + s * f;
    block_gemv(x, f, p.w.up + (int64_t(s) * 4 + (q % 2) * 2 + c % 2) * f * f, f, f, partial,
               [&](int col, T acc) { y[col] = acc + bias[col]; });
    put_map(s, fmap(s, false, p.nr + 1), q, c);
  }

  __device__ void head(int64_t j64) {
    const int f = p.filters, P = p.nparams, C = p.channels, j = static_cast<int>(j64);
    const int64_t row = p.row;
    const T* taps[1] = {read(0, row, j, fmap(0, false, pp_fmaps(0, p.nr) - 1) + f)};  // elu(x)
    gather(taps, 1, f);
    T* params = p.params + (int64_t(n) * p.width + j) * P;
    block_gemv(x, f, p.w.head, P, P, partial, [&](int col, T acc) {
      const T v = acc + p.w.head_bias[col];
      params[col] = v;
      y[col] = v;
    });
    if (threadIdx.x == 0) {
      const int64_t W = p.width;
      pp_finish_pixel<T>(y, P, p.known[n * W + j], p.values + n * C * W + j, W,
                         {p.uniforms + int64_t(j) * (C + 1) * p.batch + n, p.batch}, C, p.mixtures, p.levels,
                         p.temperature, p.values_out + n * C * W + j, W, pixel(0, row, j) + pp_image_offset(0, p.nr, f));
    }
    __syncthreads();
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) pixelcnnpp_row_kernel(const Params<T> p) {
  __shared__ T partial[kGemvWarps][32];
  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* x = reinterpret_cast<T*>(shared_raw);
  T* y = x + 14 * p.filters;
  for (int n = blockIdx.x; n < p.batch; n += gridDim.x) {
    DeviceStep<T> step{p, n, x, y, partial};
    pixelcnnpp_u_rows(step, p.row, p.nr);
    for (int j = 0; j < p.width; ++j) pixelcnnpp_column(step, p.row, j, p.nr);
  }
}

std::tuple<at::Tensor, at::Tensor> pixelcnnpp_row_cuda(
    at::Tensor& state0, at::Tensor& state1, at::Tensor& state2, const at::Tensor& values, const at::Tensor& known,
    const at::Tensor& uniforms, double temperature, const at::Tensor& block_out_bias, int64_t row,
    int64_t levels, at::TensorList weights, bool check_levels) {
  const char* op = "pixelcnnpp_row";
  const PixelCNNppRowCall call = prepare_pixelcnnpp_row(state0, state1, state2, values, known, uniforms, temperature,
                                                        block_out_bias, row, levels, weights, check_levels);
  check_cuda(op, call.weights.init_above, "init_above");
  const c10::cuda::CUDAGuard guard(call.weights.init_above.device());
  const PixelCNNppRowShape& s = call.shape;
  const int64_t shared_bytes = (14 * s.filters + std::max(2 * s.filters, s.params)) *
                               static_cast<int64_t>(call.weights.init_above.element_size());
  TORCH_CHECK_VALUE(shared_bytes <= kMaxSharedBytes, op, ": F = ", s.filters, " and P = ", s.params,
                    " need ", shared_bytes, " bytes of shared memory per block; the CUDA kernel has ",
                    kMaxSharedBytes);
  AT_DISPATCH_FLOATING_TYPES(call.weights.init_above.scalar_type(), "pixelcnnpp_row_cuda", [&] {
    Params<scalar_t> p{};
    p.set(call);
    for (int r = 0; r < 3; ++r) {
      p.widths[r] = static_cast<int>(s.widths[r]);
      p.depths[r] = static_cast<int>(s.depths[r]);
    }
    p.row = s.row;
    p.batch = static_cast<int>(s.batch);
    p.channels = static_cast<int>(s.channels);
    p.width = static_cast<int>(s.width);
    p.filters = static_cast<int>(s.filters);
    p.nr = static_cast<int>(s.nr);
    p.nparams = static_cast<int>(s.params);
    p.mixtures = static_cast<int>(s.mixtures);
    p.levels = static_cast<int>(s.levels);
    const int grid = static_cast<int>(std::min<int64_t>(s.batch, kMaxGrid));
    pixelcnnpp_row_kernel<scalar_t><<<grid, kThreads, shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {call.values_out, call.params};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("pixelcnnpp_row", &pixelcnnpp_row_cuda);
}

}  // namespace genfast
