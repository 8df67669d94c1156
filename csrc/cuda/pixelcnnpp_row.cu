// pixelcnnpp_row on CUDA: the ul stream of a whole image row (layout and schedule in
// csrc/pixelcnnpp_row.h) in one launch. Images are independent, so each thread block
// runs the row of one image (blocks stride over the images) and walks
// pixelcnnpp_column's layers itself: every layer gathers its taps from the state
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
struct Params {
  T* state[3];
  const T* u_rows[3];
  const int64_t* values;
  const bool* known;
  const double* uniforms;
  double temperature;
  const T* block_out_bias;
  PixelCNNppRowPointers<T> w;
  int64_t* values_out;
  T* params;
  int64_t row;
  int batch, channels, width, filters, nr, nparams, mixtures, levels;
  int widths[3], depths[3], u_depths[3];
};

template <typename T>
__device__ inline void put_concat_elu(T v, T* pos, T* neg) {
  concat_elu_values(v, T(expm1(concat_elu_expm1_arg(v))), *pos, *neg);
}

// pixelcnnpp_column's step object for image n, run by the whole block.
template <typename T>
struct DeviceStep {
  const Params<T>& p;
  int n;
  T* x;  // shared: a layer's gathered taps (<= 12F)
  T* y;  // shared: a product (<= max(2F, P))
  T (*partial)[32];

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
  // F-map m of (q, c) = y[0, F) and its concat_elu; ends with a barrier.
  __device__ void put_map(int s, int64_t m, int64_t q, int c) const {
    const int f = p.filters;
    T* dst = pixel(s, q, c) + m * 3 * f;
    for (int i = threadIdx.x; i < f; i += blockDim.x) {
      dst[i] = y[i];
      put_concat_elu(y[i], dst + f + i, dst + 2 * f + i);
    }
    __syncthreads();
  }

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
    put_map(0, 0, row, j);
  }

  __device__ void block(int s, const PPBlock& b, int64_t q, int64_t c64) {
    const int f = p.filters, c = static_cast<int>(c64);
    const int64_t c1 = pp_c1_offset(s, p.nr, f) + b.c1 * 2 * f, ce = b.source * 3 * f + f;
    const T* u = p.u_rows[s] + (int64_t(n) * p.widths[s] + c) * p.u_depths[s] + b.u_tap * 2 * f;
    const T* taps_in[6] = {read(s, q - 1, c - 1, ce), read(s, q - 1, c, ce), read(s, q, c - 1, ce),
                           read(s, q, c, ce), u, b.skip >= 0 ? read(s, q, c, b.skip * 3 * f + f) : nullptr};
    gather(taps_in, b.taps, 2 * f);
    T* c1_dst = pixel(s, q, c) + c1;
    const T* bias_in = p.w.block_in_bias + b.index * f;
    block_gemv(x, b.taps * 2 * f, p.w.block_in + b.index * 12 * f * f, f, f, partial,
               [&](int col, T acc) { put_concat_elu(acc + bias_in[col], c1_dst + col, c1_dst + f + col); });
    const T* taps_out[4] = {read(s, q - 1, c - 1, c1), read(s, q - 1, c, c1), read(s, q, c - 1, c1),
                            read(s, q, c, c1)};
    gather(taps_out, 4, 2 * f);
    const T* bias_out = p.block_out_bias + (b.index * p.batch + n) * 2 * f;
    block_gemv(x, 8 * f, p.w.block_out + b.index * 16 * f * f, 2 * f, 2 * f, partial,
               [&](int col, T acc) { y[col] = acc + bias_out[col]; });
    T* px = pixel(s, q, c);
    const T* source = px + b.source * 3 * f;
    T* dst = px + b.out * 3 * f;
    for (int i = threadIdx.x; i < f; i += blockDim.x) {
      const T v = source[i] + y[i] * dmol_sigmoid(y[f + i]);
      dst[i] = v;
      put_concat_elu(v, dst + f + i, dst + 2 * f + i);
    }
    __syncthreads();
  }

  __device__ void down(int s, int64_t q, int64_t c64) {  // stride 2: rows 2q - 1, 2q, columns 2c - 1, 2c
    const int f = p.filters, c = static_cast<int>(c64);
    const int64_t finer = int64_t(p.nr) * 3 * f;
    const T* taps[4] = {read(s - 1, 2 * q - 1, 2 * c - 1, finer), read(s - 1, 2 * q - 1, 2 * c, finer),
                        read(s - 1, 2 * q, 2 * c - 1, finer), read(s - 1, 2 * q, 2 * c, finer)};
    gather(taps, 4, f);
    const T* bias = p.w.down_bias + (s - 1) * f;
    block_gemv(x, 4 * f, p.w.down + int64_t(s - 1) * 4 * f * f, f, f, partial,
               [&](int col, T acc) { y[col] = acc + bias[col]; });
    put_map(s, 0, q, c);
  }

  __device__ void up(int s, int64_t q, int64_t c64) {  // transposed: (q / 2, c / 2), tap (q % 2, c % 2)
    const int f = p.filters, c = static_cast<int>(c64);
    const T* taps[1] = {read(s + 1, q / 2, c / 2, (pp_fmaps(s + 1, p.nr) - 1) * 3 * f)};
    gather(taps, 1, f);
    const T* bias = p.w.up_bias + s * f;
    block_gemv(x, f, p.w.up + (int64_t(s) * 4 + (q % 2) * 2 + c % 2) * f * f, f, f, partial,
               [&](int col, T acc) { y[col] = acc + bias[col]; });
    put_map(s, p.nr + 1, q, c);
  }

  __device__ void head(int64_t j64) {
    const int f = p.filters, P = p.nparams, C = p.channels, j = static_cast<int>(j64);
    const int64_t row = p.row;
    const T* taps[1] = {read(0, row, j, (pp_fmaps(0, p.nr) - 1) * 3 * f + f)};  // elu(x)
    gather(taps, 1, f);
    T* params = p.params + (int64_t(n) * p.width + j) * P;
    block_gemv(x, f, p.w.head, P, P, partial, [&](int col, T acc) {
      const T v = acc + p.w.head_bias[col];
      params[col] = v;
      y[col] = v;
    });
    if (threadIdx.x == 0) {
      int64_t level[3];
      const int64_t L = p.levels;
      if (p.known[int64_t(n) * p.width + j]) {
        for (int c = 0; c < C; ++c) level[c] = known_level(p.values[(int64_t(n) * C + c) * p.width + j], L);
      } else {
        bool finite = true;
        for (int i = 0; i < P; ++i) finite = finite && isfinite(y[i]);
        if (finite) {
          dmol_pixel_sample<T>({y, 1}, {p.uniforms + int64_t(j) * (C + 1) * p.batch + n, p.batch}, C,
                               p.mixtures, L, p.temperature, {level, 1});
        } else {
          for (int c = 0; c < C; ++c) level[c] = -1;
        }
      }
      T* feature = pixel(0, row, j) + pp_image_offset(0, p.nr, f);
      const T scale = static_cast<T>(2.0 / double(L - 1));  // as the sampler's float scale
      for (int c = 0; c < C; ++c) {
        p.values_out[(int64_t(n) * C + c) * p.width + j] = level[c];
        feature[c] = level[c] >= 0 ? T(level[c]) * scale - T(1) : T(0);
      }
      feature[C] = T(1);
    }
    __syncthreads();
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) pixelcnnpp_row_kernel(const Params<T> p) {
  __shared__ T partial[kGemvWarps][32];
  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* x = reinterpret_cast<T*>(shared_raw);
  T* y = x + 12 * p.filters;
  for (int n = blockIdx.x; n < p.batch; n += gridDim.x) {
    DeviceStep<T> step{p, n, x, y, partial};
    for (int j = 0; j < p.width; ++j) pixelcnnpp_column(step, p.row, j, p.nr);
  }
}

std::tuple<at::Tensor, at::Tensor> pixelcnnpp_row_cuda(
    at::Tensor& state0, at::Tensor& state1, at::Tensor& state2, const at::Tensor& u_rows0,
    const at::Tensor& u_rows1, const at::Tensor& u_rows2, const at::Tensor& values, const at::Tensor& known,
    const at::Tensor& uniforms, double temperature, const at::Tensor& block_out_bias, int64_t row,
    int64_t levels, at::TensorList weights, bool check_levels) {
  const char* op = "pixelcnnpp_row";
  const PixelCNNppRowWeights w = unpack_weights<PixelCNNppRowWeights>(op, weights);
  const at::Tensor states[3] = {state0, state1, state2};
  const at::Tensor u_rows[3] = {u_rows0, u_rows1, u_rows2};
  const PixelCNNppRowShape s = check_pixelcnnpp_row(states, u_rows, values, known, uniforms, temperature,
                                                    block_out_bias, row, levels, w, check_levels);
  check_cuda(op, w.init_above, "init_above");
  for (int r = 0; r < 3; ++r) {
    TORCH_CHECK_VALUE(states[r].is_contiguous(), op, ": state", r, " must be contiguous (it is updated in place)");
  }
  const int64_t shared_bytes = (12 * s.filters + std::max(2 * s.filters, s.params)) *
                               static_cast<int64_t>(w.init_above.element_size());
  TORCH_CHECK_VALUE(shared_bytes <= kMaxSharedBytes, op, ": F = ", s.filters, " and P = ", s.params,
                    " need ", shared_bytes, " bytes of shared memory per block; the CUDA kernel has ",
                    kMaxSharedBytes);
  const c10::cuda::CUDAGuard guard(w.init_above.device());
  const PixelCNNppRowWeights wc = contiguous_weights(w);
  const at::Tensor u_c[3] = {u_rows0.contiguous(), u_rows1.contiguous(), u_rows2.contiguous()};
  const at::Tensor values_c = values.contiguous(), known_c = known.contiguous(),
                   uniforms_c = uniforms.contiguous(), bias_c = block_out_bias.contiguous();
  at::Tensor values_out = at::empty({s.batch, s.channels, s.width}, values.options());
  at::Tensor params = at::empty({s.batch, s.width, s.params}, w.init_above.options());
  AT_DISPATCH_FLOATING_TYPES(w.init_above.scalar_type(), "pixelcnnpp_row_cuda", [&] {
    Params<scalar_t> p{};
    for (int r = 0; r < 3; ++r) {
      p.state[r] = states[r].mutable_data_ptr<scalar_t>();
      p.u_rows[r] = u_c[r].const_data_ptr<scalar_t>();
      p.widths[r] = static_cast<int>(s.widths[r]);
      p.depths[r] = static_cast<int>(s.depths[r]);
      p.u_depths[r] = static_cast<int>(s.u_depths[r]);
    }
    p.values = values_c.const_data_ptr<int64_t>();
    p.known = known_c.const_data_ptr<bool>();
    p.uniforms = uniforms_c.const_data_ptr<double>();
    p.temperature = temperature;
    p.block_out_bias = bias_c.const_data_ptr<scalar_t>();
    p.w.set(wc);
    p.values_out = values_out.mutable_data_ptr<int64_t>();
    p.params = params.mutable_data_ptr<scalar_t>();
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
  return {values_out, params};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) {
  m.impl("pixelcnnpp_row", &pixelcnnpp_row_cuda);
}

}  // namespace genfast
