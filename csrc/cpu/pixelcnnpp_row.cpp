// pixelcnnpp_row on the CPU: a whole image row of both streams (layout and schedule in
// csrc/pixelcnnpp_row.h) in one op call. Images are independent, so they are split over
// threads in blocks of kRows; for each of its blocks a thread runs the row's u layers,
// then walks the columns. Every layer at a pixel is one small register-blocked GEMM
// (step_kernels) whose rows are the block's images, its taps read in place from the
// state through per-image pointers (a zero vector outside the image).
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../pixelcnnpp_row.h"
#include "elementwise.h"
#include "fast_math.h"
#include "step_kernels.h"

namespace genfast {
namespace {

// out[i] = x[i] + (z[i] + b[i]) * sigmoid(z[f + i] + b[f + i]): the block's gated residual.
template <typename T>
__attribute__((always_inline)) inline void gated_residual_run(const T* x, const T* z, const T* b, T* out,
                                                               int64_t f) {
  for (int64_t i = 0; i < f; ++i) {
    out[i] = x[i] + (z[i] + b[i]) / (T(1) + fast_exp(-(z[f + i] + b[f + i])));
  }
}
GENFAST_CLONES void gated_residual(const float* x, const float* z, const float* b, float* out, int64_t f) {
  gated_residual_run(x, z, b, out, f);
}
void gated_residual(const double* x, const double* z, const double* b, double* out, int64_t f) {
  gated_residual_run(x, z, b, out, f);
}

template <typename T>
struct RowArgs : PixelCNNppRowArgs<T> {
  const PixelCNNppRowShape* shape;
};

// The layers of pixelcnnpp_u_rows and pixelcnnpp_column for images [n0, n0 + rows),
// rows <= kRows.
template <typename T>
struct Step {
  const RowArgs<T>& a;
  const MathKernels<T>& math;
  const T* zeros;  // >= 3F + C + 1 zeros: taps outside the image
  T* y;            // kRows * 2F scratch: a product
  T* y2;           // kRows * 2F scratch: ul_init's second product
  int64_t n0;
  int rows;
  const T* x[7 * kRows];

  int64_t F() const { return a.shape->filters; }
  // Offsets within a pixel: F-map m and c1 map k of the ul (u = false) or u stream.
  int64_t fmap(int s, bool u, int64_t m) const {
    return (u ? pp_stream_offset(s, a.shape->nr, F()) : 0) + m * 3 * F();
  }
  int64_t c1map(int s, bool u, int64_t k) const {
    return (u ? pp_stream_offset(s, a.shape->nr, F()) : 0) + pp_c1_offset(s, a.shape->nr, F()) + k * 2 * F();
  }
  T* pixel(int s, int r, int64_t q, int64_t c) const {
    const PixelCNNppRowShape& sh = *a.shape;
    return a.state[s] + (((n0 + r) * 2 + (q & 1)) * sh.widths[s] + c) * sh.depths[s];
  }
  const T* read(int s, int r, int64_t q, int64_t c, int64_t offset) const {
    if (q < 0 || c < 0 || c >= a.shape->widths[s]) return zeros;
    return pixel(s, r, q, c) + offset;
  }
  // Writes the F-map at `offset` of pixel (q, c) from src (rows x F, leading dim ld)
  // and its concat_elu.
  void put_map(int s, int64_t offset, int64_t q, int64_t c, const T* src, int64_t ld) const {
    const int64_t f = F();
    for (int r = 0; r < rows; ++r) {
      T* dst = pixel(s, r, q, c) + offset;
      std::copy(src + r * ld, src + r * ld + f, dst);
      concat_elu_run(dst, dst + f, dst + 2 * f, f);
    }
  }
  // c1 map at `c1` of pixel (q, c) = concat_elu(y).
  void put_c1(int s, int64_t c1, int64_t q, int64_t c) const {
    const int64_t f = F();
    for (int r = 0; r < rows; ++r) {
      T* dst = pixel(s, r, q, c) + c1;
      concat_elu_run(y + r * f, dst, dst + f, f);
    }
  }
  // out = source + gate(y + block_out_bias[stream, b]) at pixel (q, c).
  void put_gated(int s, bool u, const PPBlock& b, int64_t q, int64_t c) const {
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F();
    for (int r = 0; r < rows; ++r) {
      const T* bias = a.block_out_bias + (((u ? pp_blocks(sh.nr) : 0) + b.index) * sh.batch + n0 + r) * 2 * f;
      T* px = pixel(s, r, q, c);
      T* dst = px + fmap(s, u, b.out);
      gated_residual(px + fmap(s, u, b.source), y + r * 2 * f, bias, dst, f);
      concat_elu_run(dst, dst + f, dst + 2 * f, f);
    }
  }
  // x[t * kRows + r] = read(s, r, q + dq[t], c + dc[t], offset) for t < taps.
  void taps(int s, int count, const int* dq, const int* dc, int64_t q, int64_t c, int64_t offset) {
    for (int t = 0; t < count; ++t)
      for (int r = 0; r < rows; ++r) x[t * kRows + r] = read(s, r, q + dq[t], c + dc[t], offset);
  }

  // ---- the u stream: whole rows ----
  void u_init() {  // down_shift(conv 2x3): features of rows row - 2, row - 1
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), cin = sh.channels + 1, row = sh.row;
    static constexpr int dq[6] = {-2, -2, -2, -1, -1, -1}, dc[6] = {-1, 0, 1, -1, 0, 1};
    std::fill(y, y + kRows * f, T(0));
    for (int64_t c = 0; c < sh.width; ++c) {
      if (row > 0) {
        taps(0, 6, dq, dc, row, c, pp_image_offset(0, sh.nr, f));
        math.gemm(rows, 6, x, cin, a.w.u_init, f, f, a.w.u_init_bias, y, f);
      }
      put_map(0, fmap(0, true, 0), row, c, y, f);
    }
  }

  void u_block(int s, const PPBlock& b, int64_t q) {
    const int64_t f = F(), c1 = c1map(s, true, b.c1), ce = fmap(s, true, b.source) + f;
    static constexpr int dq[6] = {-1, -1, -1, 0, 0, 0}, dc[6] = {-1, 0, 1, -1, 0, 1};
    for (int64_t c = 0; c < a.shape->widths[s]; ++c) {
      taps(s, 6, dq, dc, q, c, ce);
      if (b.down)
        for (int r = 0; r < rows; ++r) x[6 * kRows + r] = read(s, r, q, c, fmap(s, true, b.skip) + f);
      math.gemm(rows, b.down ? 7 : 6, x, 2 * f, a.w.u_block_in + b.index * 14 * f * f, f, f,
                a.w.u_block_in_bias + b.index * f, y, f);
      put_c1(s, c1, q, c);
    }
    for (int64_t c = 0; c < a.shape->widths[s]; ++c) {  // the c1 row is complete: its c + 1 taps exist
      taps(s, 6, dq, dc, q, c, c1);
      math.gemm(rows, 6, x, 2 * f, a.w.u_block_out + b.index * 24 * f * f, 2 * f, 2 * f, nullptr, y, 2 * f);
      put_gated(s, true, b, q, c);
    }
  }

  void u_down(int s, int64_t q) {  // stride 2: rows 2q - 1, 2q, columns 2c - 1..2c + 1
    const int64_t f = F(), finer = fmap(s - 1, true, a.shape->nr);
    for (int64_t c = 0; c < a.shape->widths[s]; ++c) {
      for (int t = 0; t < 6; ++t)
        for (int r = 0; r < rows; ++r) x[t * kRows + r] = read(s - 1, r, 2 * q - 1 + t / 3, 2 * c - 1 + t % 3, finer);
      math.gemm(rows, 6, x, f, a.w.u_down + (s - 1) * 6 * f * f, f, f, a.w.u_down_bias + (s - 1) * f, y, f);
      put_map(s, fmap(s, true, 0), q, c, y, f);
    }
  }

  void u_up(int s, int64_t q) {  // transposed 2x3, cropped: row q / 2, kernel row q % 2
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), coarse = fmap(s + 1, true, pp_fmaps(s + 1, sh.nr) - 1);
    const T* w = a.w.u_up + (s * 2 + q % 2) * 3 * f * f;  // kernel columns 1, 0, 2
    for (int64_t c = 0; c < sh.widths[s]; ++c) {
      const bool odd = c % 2;
      for (int r = 0; r < rows; ++r) {
        x[r] = read(s + 1, r, q / 2, odd ? (c + 1) / 2 : c / 2, coarse);
        x[kRows + r] = read(s + 1, r, q / 2, (c - 1) / 2, coarse);
      }
      math.gemm(rows, odd ? 2 : 1, x, f, odd ? w + f * f : w, f, f, a.w.u_up_bias + s * f, y, f);
      put_map(s, fmap(s, true, sh.nr + 1), q, c, y, f);
    }
  }

  // ---- the ul stream: one pixel ----
  void init(int64_t j) {
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), cin = sh.channels + 1, row = sh.row;
    const int64_t image = pp_image_offset(0, sh.nr, f);
    std::fill(y, y + kRows * f, T(0));
    if (row > 0) {  // down_shift(conv 1x3): features of row - 1, columns j - 1..j + 1
      static constexpr int dq[3] = {-1, -1, -1}, dc[3] = {-1, 0, 1};
      taps(0, 3, dq, dc, row, j, image);
      math.gemm(rows, 3, x, cin, a.w.init_above, f, f, a.w.init_above_bias, y, f);
    }
    if (j > 0) {  // right_shift(conv 2x1): rows row - 1, row of column j - 1
      static constexpr int dq[2] = {-1, 0}, dc[2] = {-1, -1};
      taps(0, 2, dq, dc, row, j, image);
      math.gemm(rows, 2, x, cin, a.w.init_left, f, f, a.w.init_left_bias, y2, f);
      for (int64_t i = 0; i < rows * f; ++i) y[i] += y2[i];
    }
    put_map(0, fmap(0, false, 0), row, j, y, f);
  }

  void block(int s, const PPBlock& b, int64_t q, int64_t c) {
    const int64_t f = F(), c1 = c1map(s, false, b.c1);
    static constexpr int dq[4] = {-1, -1, 0, 0}, dc[4] = {-1, 0, -1, 0};
    taps(s, 4, dq, dc, q, c, fmap(s, false, b.source) + f);
    for (int r = 0; r < rows; ++r) {
      x[4 * kRows + r] = read(s, r, q, c, fmap(s, true, b.out) + f);  // u at the same position
      if (b.down) x[5 * kRows + r] = read(s, r, q, c, fmap(s, false, b.skip) + f);
    }
    math.gemm(rows, b.down ? 6 : 5, x, 2 * f, a.w.block_in + b.index * 12 * f * f, f, f,
              a.w.block_in_bias + b.index * f, y, f);
    put_c1(s, c1, q, c);
    taps(s, 4, dq, dc, q, c, c1);
    math.gemm(rows, 4, x, 2 * f, a.w.block_out + b.index * 16 * f * f, 2 * f, 2 * f, nullptr, y, 2 * f);
    put_gated(s, false, b, q, c);
  }

  void down(int s, int64_t q, int64_t c) {  // stride 2: rows 2q - 1, 2q, columns 2c - 1, 2c
    const int64_t f = F(), finer = fmap(s - 1, false, a.shape->nr);
    for (int t = 0; t < 4; ++t)
      for (int r = 0; r < rows; ++r) x[t * kRows + r] = read(s - 1, r, 2 * q - 1 + t / 2, 2 * c - 1 + t % 2, finer);
    math.gemm(rows, 4, x, f, a.w.down + (s - 1) * 4 * f * f, f, f, a.w.down_bias + (s - 1) * f, y, f);
    put_map(s, fmap(s, false, 0), q, c, y, f);
  }

  void up(int s, int64_t q, int64_t c) {  // transposed: (q / 2, c / 2), tap (q % 2, c % 2)
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), coarse = fmap(s + 1, false, pp_fmaps(s + 1, sh.nr) - 1);
    for (int r = 0; r < rows; ++r) x[r] = read(s + 1, r, q / 2, c / 2, coarse);
    math.gemm(rows, 1, x, f, a.w.up + (s * 4 + (q % 2) * 2 + c % 2) * f * f, f, f, a.w.up_bias + s * f, y, f);
    put_map(s, fmap(s, false, sh.nr + 1), q, c, y, f);
  }

  void head(int64_t j) {
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), P = sh.params, W = sh.width, C = sh.channels, N = sh.batch, L = sh.levels;
    const int64_t elu = fmap(0, false, pp_fmaps(0, sh.nr) - 1) + f;  // elu(x): the first half of concat_elu
    for (int r = 0; r < rows; ++r) x[r] = read(0, r, sh.row, j, elu);
    T* params = a.params + (n0 * W + j) * P;
    math.gemm(rows, 1, x, f, a.w.head, P, P, a.w.head_bias, params, W * P);
    const int64_t image = pp_image_offset(0, sh.nr, f);
    for (int r = 0; r < rows; ++r) {
      const int64_t n = n0 + r;
      pp_finish_pixel<T>(params + r * W * P, P, a.known[n * W + j], a.values + n * C * W + j, W,
                         {a.uniforms + j * (C + 1) * N + n, N}, C, sh.mixtures, L, a.temperature,
                         a.values_out + n * C * W + j, W, pixel(0, r, sh.row, j) + image);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> pixelcnnpp_row_cpu(
    at::Tensor& state0, at::Tensor& state1, at::Tensor& state2, const at::Tensor& values, const at::Tensor& known,
    const at::Tensor& uniforms, double temperature, const at::Tensor& block_out_bias, int64_t row,
    int64_t levels, at::TensorList weights, bool check_levels) {
  const PixelCNNppRowCall call = prepare_pixelcnnpp_row(state0, state1, state2, values, known, uniforms, temperature,
                                                        block_out_bias, row, levels, weights, check_levels);
  check_cpu("pixelcnnpp_row", call.weights.init_above, "init_above");
  const PixelCNNppRowShape& s = call.shape;
  AT_DISPATCH_FLOATING_TYPES(call.weights.init_above.scalar_type(), "pixelcnnpp_row_cpu", [&] {
    RowArgs<scalar_t> a{};
    a.set(call);
    a.shape = &s;
    const MathKernels<scalar_t> math = math_kernels<scalar_t>();
    const int64_t f = s.filters;
    parallel_over_batch(s.batch, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> zeros(3 * f + s.channels + 1, scalar_t(0)), y(2 * kRows * 2 * f);
      Step<scalar_t> step{a, math, zeros.data(), y.data(), y.data() + kRows * 2 * f, 0, 0, {}};
      for (int64_t n0 = b0; n0 < b1; n0 += kRows) {
        step.n0 = n0;
        step.rows = static_cast<int>(std::min<int64_t>(kRows, b1 - n0));
        pixelcnnpp_u_rows(step, s.row, s.nr);
        for (int64_t j = 0; j < s.width; ++j) pixelcnnpp_column(step, s.row, j, s.nr);
      }
    });
  });
  return {call.values_out, call.params};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("pixelcnnpp_row", &pixelcnnpp_row_cpu);
}

}  // namespace genfast
