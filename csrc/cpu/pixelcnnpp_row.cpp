// pixelcnnpp_row on the CPU: the ul stream of a whole image row (layout and schedule in
// csrc/pixelcnnpp_row.h) in one op call. Images are independent, so they are split over
// threads in blocks of kRows; a thread walks the row's columns for each of its blocks,
// every layer one small register-blocked GEMM (step_kernels) whose rows are the block's
// images, its taps read in place from the state through per-image pointers (a zero
// vector outside the image).
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../dmol.h"
#include "../pixelcnnpp_row.h"
#include "../sampling_math.h"
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
struct RowArgs {
  const PixelCNNppRowShape* shape;
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
};

// The layers of pixelcnnpp_column for images [n0, n0 + rows), rows <= kRows.
template <typename T>
struct Step {
  const RowArgs<T>& a;
  const MathKernels<T>& math;
  const T* zeros;  // >= 3F + C + 1 zeros: taps outside the image
  T* y;            // kRows * max(2F, F + F) scratch
  T* y2;
  int64_t n0;
  int rows;
  const T* x[6 * kRows];

  int64_t F() const { return a.shape->filters; }
  T* pixel(int s, int r, int64_t q, int64_t c) const {
    const PixelCNNppRowShape& sh = *a.shape;
    return a.state[s] + (((n0 + r) * 2 + (q & 1)) * sh.widths[s] + c) * sh.depths[s];
  }
  const T* read(int s, int r, int64_t q, int64_t c, int64_t offset) const {
    if (q < 0 || c < 0 || c >= a.shape->widths[s]) return zeros;
    return pixel(s, r, q, c) + offset;
  }
  // Writes F-map m of pixel (q, c) from y (rows x F) and its concat_elu.
  void put_map(int s, int64_t m, int64_t q, int64_t c, const T* src, int64_t ld) const {
    const int64_t f = F();
    for (int r = 0; r < rows; ++r) {
      T* dst = pixel(s, r, q, c) + m * 3 * f;
      std::copy(src + r * ld, src + r * ld + f, dst);
      concat_elu_run(dst, dst + f, dst + 2 * f, f);
    }
  }

  void init(int64_t j) {
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), cin = sh.channels + 1, row = sh.row;
    const int64_t image = pp_image_offset(0, sh.nr, f);
    std::fill(y, y + kRows * f, T(0));
    if (row > 0) {  // down_shift(conv 1x3): features of row - 1, columns j - 1..j + 1
      for (int t = 0; t < 3; ++t)
        for (int r = 0; r < rows; ++r) x[t * kRows + r] = read(0, r, row - 1, j - 1 + t, image);
      math.gemm(rows, 3, x, cin, a.w.init_above, f, f, a.w.init_above_bias, y, f);
    }
    if (j > 0) {  // right_shift(conv 2x1): rows row - 1, row of column j - 1
      for (int r = 0; r < rows; ++r) {
        x[r] = read(0, r, row - 1, j - 1, image);
        x[kRows + r] = read(0, r, row, j - 1, image);
      }
      math.gemm(rows, 2, x, cin, a.w.init_left, f, f, a.w.init_left_bias, y2, f);
      for (int64_t i = 0; i < rows * f; ++i) y[i] += y2[i];
    }
    put_map(0, 0, row, j, y, f);
  }

  void block(int s, const PPBlock& b, int64_t q, int64_t c) {
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), c1 = pp_c1_offset(s, sh.nr, f) + b.c1 * 2 * f;
    const int64_t ce = b.source * 3 * f + f;
    for (int r = 0; r < rows; ++r) {
      x[0 * kRows + r] = read(s, r, q - 1, c - 1, ce);
      x[1 * kRows + r] = read(s, r, q - 1, c, ce);
      x[2 * kRows + r] = read(s, r, q, c - 1, ce);
      x[3 * kRows + r] = read(s, r, q, c, ce);
      x[4 * kRows + r] = a.u_rows[s] + ((n0 + r) * sh.widths[s] + c) * sh.u_depths[s] + b.u_tap * 2 * f;
      if (b.skip >= 0) x[5 * kRows + r] = read(s, r, q, c, b.skip * 3 * f + f);
    }
    math.gemm(rows, b.taps, x, 2 * f, a.w.block_in + b.index * 12 * f * f, f, f,
              a.w.block_in_bias + b.index * f, y, f);
    for (int r = 0; r < rows; ++r) {
      T* dst = pixel(s, r, q, c) + c1;
      concat_elu_run(y + r * f, dst, dst + f, f);
    }
    for (int r = 0; r < rows; ++r) {
      x[0 * kRows + r] = read(s, r, q - 1, c - 1, c1);
      x[1 * kRows + r] = read(s, r, q - 1, c, c1);
      x[2 * kRows + r] = read(s, r, q, c - 1, c1);
      x[3 * kRows + r] = read(s, r, q, c, c1);
    }
    math.gemm(rows, 4, x, 2 * f, a.w.block_out + b.index * 16 * f * f, 2 * f, 2 * f, nullptr, y, 2 * f);
    for (int r = 0; r < rows; ++r) {
      const T* bias = a.block_out_bias + (b.index * sh.batch + n0 + r) * 2 * f;
      T* px = pixel(s, r, q, c);
      T* dst = px + b.out * 3 * f;
      gated_residual(px + b.source * 3 * f, y + r * 2 * f, bias, dst, f);
      concat_elu_run(dst, dst + f, dst + 2 * f, f);
    }
  }

  void down(int s, int64_t q, int64_t c) {  // stride 2: rows 2q - 1, 2q, columns 2c - 1, 2c
    const int64_t f = F(), finer = a.shape->nr * 3 * f;
    for (int t = 0; t < 4; ++t)
      for (int r = 0; r < rows; ++r) x[t * kRows + r] = read(s - 1, r, 2 * q - 1 + t / 2, 2 * c - 1 + t % 2, finer);
    math.gemm(rows, 4, x, f, a.w.down + (s - 1) * 4 * f * f, f, f, a.w.down_bias + (s - 1) * f, y, f);
    put_map(s, 0, q, c, y, f);
  }

  void up(int s, int64_t q, int64_t c) {  // transposed: (q, c) reads (q / 2, c / 2), tap (q % 2, c % 2)
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), coarse = (pp_fmaps(s + 1, sh.nr) - 1) * 3 * f;
    for (int r = 0; r < rows; ++r) x[r] = read(s + 1, r, q / 2, c / 2, coarse);
    math.gemm(rows, 1, x, f, a.w.up + (s * 4 + (q % 2) * 2 + c % 2) * f * f, f, f, a.w.up_bias + s * f, y, f);
    put_map(s, sh.nr + 1, q, c, y, f);
  }

  void head(int64_t j) {
    const PixelCNNppRowShape& sh = *a.shape;
    const int64_t f = F(), P = sh.params, W = sh.width, C = sh.channels, N = sh.batch, L = sh.levels;
    const int64_t elu = (pp_fmaps(0, sh.nr) - 1) * 3 * f + f;  // elu(x): the first half of concat_elu
    for (int r = 0; r < rows; ++r) x[r] = read(0, r, sh.row, j, elu);
    T* params = a.params + (n0 * W + j) * P;
    math.gemm(rows, 1, x, f, a.w.head, P, P, a.w.head_bias, params, W * P);
    const int64_t image = pp_image_offset(0, sh.nr, f);
    const T scale = static_cast<T>(2.0 / double(L - 1));  // as the sampler's float scale
    for (int r = 0; r < rows; ++r) {
      const int64_t n = n0 + r;
      const T* p = params + r * W * P;
      int64_t level[3];
      if (a.known[n * W + j]) {
        for (int64_t c = 0; c < C; ++c) level[c] = known_level(a.values[(n * C + c) * W + j], L);
      } else {
        bool finite = true;
        for (int64_t i = 0; i < P; ++i) finite = finite && std::isfinite(p[i]);
        if (finite) {
          dmol_pixel_sample<T>({p, 1}, {a.uniforms + j * (C + 1) * N + n, N}, C, sh.mixtures, L,
                               a.temperature, {level, 1});
        } else {
          for (int64_t c = 0; c < C; ++c) level[c] = -1;
        }
      }
      T* feature = pixel(0, r, sh.row, j) + image;
      for (int64_t c = 0; c < C; ++c) {
        a.values_out[(n * C + c) * W + j] = level[c];
        feature[c] = level[c] >= 0 ? T(level[c]) * scale - T(1) : T(0);
      }
      feature[C] = T(1);
    }
  }
};

std::tuple<at::Tensor, at::Tensor> pixelcnnpp_row_cpu(
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
  check_cpu(op, w.init_above, "init_above");
  for (int r = 0; r < 3; ++r) {
    TORCH_CHECK_VALUE(states[r].is_contiguous(), op, ": state", r, " must be contiguous (it is updated in place)");
  }
  const PixelCNNppRowWeights wc = contiguous_weights(w);
  const at::Tensor u_c[3] = {u_rows0.contiguous(), u_rows1.contiguous(), u_rows2.contiguous()};
  const at::Tensor values_c = values.contiguous(), known_c = known.contiguous(),
                   uniforms_c = uniforms.contiguous(), bias_c = block_out_bias.contiguous();
  at::Tensor values_out = at::empty({s.batch, s.channels, s.width}, values.options());
  at::Tensor params = at::empty({s.batch, s.width, s.params}, w.init_above.options());
  AT_DISPATCH_FLOATING_TYPES(w.init_above.scalar_type(), "pixelcnnpp_row_cpu", [&] {
    RowArgs<scalar_t> a{};
    a.shape = &s;
    for (int r = 0; r < 3; ++r) {
      a.state[r] = states[r].mutable_data_ptr<scalar_t>();
      a.u_rows[r] = u_c[r].const_data_ptr<scalar_t>();
    }
    a.values = values_c.const_data_ptr<int64_t>();
    a.known = known_c.const_data_ptr<bool>();
    a.uniforms = uniforms_c.const_data_ptr<double>();
    a.temperature = temperature;
    a.block_out_bias = bias_c.const_data_ptr<scalar_t>();
    a.w.set(wc);
    a.values_out = values_out.mutable_data_ptr<int64_t>();
    a.params = params.mutable_data_ptr<scalar_t>();
    const MathKernels<scalar_t> math = math_kernels<scalar_t>();
    const int64_t f = s.filters;
    parallel_over_batch(s.batch, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> zeros(3 * f + s.channels + 1, scalar_t(0)), y(2 * kRows * 2 * f);
      Step<scalar_t> step{a, math, zeros.data(), y.data(), y.data() + kRows * 2 * f, 0, 0, {}};
      for (int64_t n0 = b0; n0 < b1; n0 += kRows) {
        step.n0 = n0;
        step.rows = static_cast<int>(std::min<int64_t>(kRows, b1 - n0));
        for (int64_t j = 0; j < s.width; ++j) pixelcnnpp_column(step, s.row, j, s.nr);
      }
    });
  });
  return {values_out, params};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("pixelcnnpp_row", &pixelcnnpp_row_cpu);
}

}  // namespace genfast
