// pixelcnn_row on the CPU: a whole row of sub-steps (layout and math in
// csrc/pixelcnn_row.h) in one op call. Images are independent within a row, so they
// are split over threads in blocks of kRows; a thread runs the whole row for each of
// its blocks, every product a small register-blocked GEMM (step_kernels) whose rows are
// the block's images, read through per-image pointers into the row buffers.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../pixelcnn_row.h"
#include "step_kernels.h"

namespace genfast {
namespace {

template <typename T>
struct RowArgs {
  const PixelCNNRowShape* shape;
  const int64_t* values;
  const bool* known;
  const double* uniforms;
  double temperature;
  const T *input_bias, *block_bias;
  PixelCNNRowPointers<T> w;
  int64_t* values_out;
  T* logits;
  T* reduce_rows;
};

// The row's buffers for one block of up to kRows images (zeros: the left padding and
// the not-yet-computed groups of a position, which the prefixes never read anyway).
template <typename T>
struct Buffers {
  Buffers(const PixelCNNRowShape& s)
      : feats(kRows * (s.pad + s.width) * s.in_channels),
        reduce(s.blocks * kRows * (1 + s.width) * s.hidden),
        h((s.blocks + 1) * kRows * s.wide),
        h_relu((s.blocks + 1) * kRows * s.wide),
        conv(s.blocks * kRows * s.hidden),
        out_hidden(kRows * s.wide),
        y(kRows * std::max(s.wide, s.hidden)),
        cdf(s.levels) {}
  void zero() {
    for (auto* v : {&feats, &reduce, &h, &h_relu, &conv, &out_hidden}) std::fill(v->begin(), v->end(), T(0));
  }
  std::vector<T> feats;       // [r][p + W][Cin]: the row's input features
  std::vector<T> reduce;      // [b][r][1 + W][Hd]: relu'd reduce outputs of the row
  std::vector<T> h, h_relu;   // [b][r][R]: residual stream at the position, and its relu
  std::vector<T> conv;        // [b][r][Hd]: relu'd 3x3 outputs at the position
  std::vector<T> out_hidden;  // [r][R]: relu'd output_hidden at the position
  std::vector<T> y;           // [r][max(R, Hd)]: a product's result
  std::vector<double> cdf;
};

// Runs the row for images [n0, n0 + rows), rows <= kRows.
template <typename T>
void row_block(const RowArgs<T>& a, const MathKernels<T>& math, Buffers<T>& buf, int64_t n0,
               int rows) {
  const PixelCNNRowShape& s = *a.shape;
  const int64_t N = s.batch, C = s.channels, W = s.width, L = s.levels, Fe = s.features;
  const int64_t Cin = s.in_channels, P = s.pad, R = s.wide, Hd = s.hidden, B = s.blocks;
  const int64_t gw = R / C, gh = Hd / C, ld_logits = C * W * L;
  buf.zero();
  T* y = buf.y.data();
  auto feats = [&](int r) { return buf.feats.data() + r * (P + W) * Cin; };
  auto reduce = [&](int64_t b, int r) { return buf.reduce.data() + (b * kRows + r) * (1 + W) * Hd; };
  auto h = [&](int64_t b) { return buf.h.data() + b * kRows * R; };
  auto h_relu = [&](int64_t b) { return buf.h_relu.data() + b * kRows * R; };
  auto conv = [&](int64_t b) { return buf.conv.data() + b * kRows * Hd; };
  const T* x[kRows];
  auto rows_of = [&](const T* base, int64_t stride) {
    for (int r = 0; r < rows; ++r) x[r] = base + r * stride;
  };

  for (int64_t j = 0; j < W; ++j) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t o = c * gw, oh = c * gh, kw = (c + 1) * gw, kh = (c + 1) * gh;
      // Input conv: taps j-p..j are contiguous in the feature row; mask 'A' at the centre.
      for (int r = 0; r < rows; ++r) x[r] = feats(r) + j * Cin;
      math.gemm(rows, 1, x, P * Cin + c * Fe, a.w.input_weight + o, R, gw, nullptr, h(0) + o, R);
      for (int r = 0; r < rows; ++r) {
        const T* bias = a.input_bias + ((n0 + r) * W + j) * R + o;
        T* hv = h(0) + r * R + o;
        T* hr = h_relu(0) + r * R + o;
        for (int64_t q = 0; q < gw; ++q) {
          hv[q] += bias[q];
          hr[q] = relu_value(hv[q]);
        }
      }
      for (int64_t b = 0; b < B; ++b) {
        rows_of(h_relu(b), R);
        math.gemm(rows, 1, x, kw, a.w.reduce_weight + b * R * Hd + oh, Hd, gh,
                  a.w.reduce_bias + b * Hd + oh, y, Hd);
        for (int r = 0; r < rows; ++r) {
          T* dst = reduce(b, r) + (j + 1) * Hd + oh;
          for (int64_t q = 0; q < gh; ++q) dst[q] = relu_value(y[r * Hd + q]);
        }
        // 3x3 centre row: taps j-1, j are contiguous in the reduce row (one zero column).
        for (int r = 0; r < rows; ++r) x[r] = reduce(b, r) + j * Hd;
        math.gemm(rows, 1, x, Hd + kh, a.w.conv_weight + b * 2 * Hd * Hd + oh, Hd, gh, nullptr, y, Hd);
        for (int r = 0; r < rows; ++r) {
          const T* bias = a.block_bias + ((b * N + n0 + r) * W + j) * Hd + oh;
          T* dst = conv(b) + r * Hd + oh;
          for (int64_t q = 0; q < gh; ++q) dst[q] = relu_value(y[r * Hd + q] + bias[q]);
        }
        rows_of(conv(b), Hd);
        math.gemm(rows, 1, x, kh, a.w.expand_weight + b * Hd * R + o, R, gw, a.w.expand_bias + b * R + o,
                  y, R);
        for (int r = 0; r < rows; ++r) {
          const T* prev = h(b) + r * R + o;
          T* next = h(b + 1) + r * R + o;
          T* next_relu = h_relu(b + 1) + r * R + o;
          for (int64_t q = 0; q < gw; ++q) {
            next[q] = prev[q] + y[r * R + q];
            next_relu[q] = relu_value(next[q]);
          }
        }
      }
      rows_of(h_relu(B), R);
      math.gemm(rows, 1, x, kw, a.w.hidden_weight + o, R, gw, a.w.hidden_bias + o, y, R);
      for (int r = 0; r < rows; ++r) {
        T* dst = buf.out_hidden.data() + r * R + o;
        for (int64_t q = 0; q < gw; ++q) dst[q] = relu_value(y[r * R + q]);
      }
      rows_of(buf.out_hidden.data(), R);
      T* logits = a.logits + ((n0 * C + c) * W + j) * L;
      math.gemm(rows, 1, x, kw, a.w.output_weight + c * L, C * L, L, a.w.output_bias + c * L, logits,
                ld_logits);
      for (int r = 0; r < rows; ++r) {
        const int64_t n = n0 + r, at = (n * C + c) * W + j;
        int64_t level;
        if (a.known[at]) {
          level = known_level(a.values[at], L);
        } else {
          level = draw(logits + r * ld_logits, L, a.uniforms[(j * C + c) * N + n], a.temperature,
                       buf.cdf.data());
        }
        a.values_out[at] = level;
        T* dst = feats(r) + (P + j) * Cin + c * Fe;
        for (int64_t e = 0; e < Fe; ++e) dst[e] = level >= 0 ? a.w.feature_table[level * Fe + e] : T(0);
      }
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int r = 0; r < rows; ++r) {
      const T* src = reduce(b, r) + Hd;
      std::copy(src, src + W * Hd, a.reduce_rows + (b * N + n0 + r) * W * Hd);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pixelcnn_row_cpu(
    const at::Tensor& values, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& input_bias, const at::Tensor& block_bias,
    at::TensorList weights, bool check_levels) {
  const char* op = "pixelcnn_row";
  const PixelCNNRowWeights w = unpack_weights<PixelCNNRowWeights>(op, weights);
  const PixelCNNRowShape s = check_pixelcnn_row(values, known, uniforms, temperature, input_bias,
                                                block_bias, w, check_levels);
  check_cpu(op, w.input_weight, "input_weight");
  const PixelCNNRowWeights wc = contiguous_weights(w);
  const at::Tensor values_c = values.contiguous(), known_c = known.contiguous(),
                   uniforms_c = uniforms.contiguous(), input_bias_c = input_bias.contiguous(),
                   block_bias_c = block_bias.contiguous();
  const at::TensorOptions options = w.input_weight.options();
  at::Tensor values_out = at::empty({s.batch, s.channels, s.width}, values.options());
  at::Tensor logits = at::empty({s.batch, s.channels, s.width, s.levels}, options);
  at::Tensor reduce_rows = at::empty({s.blocks, s.batch, s.width, s.hidden}, options);
  AT_DISPATCH_FLOATING_TYPES(w.input_weight.scalar_type(), "pixelcnn_row_cpu", [&] {
    RowArgs<scalar_t> a{};
    a.shape = &s;
    a.values = values_c.const_data_ptr<int64_t>();
    a.known = known_c.const_data_ptr<bool>();
    a.uniforms = uniforms_c.const_data_ptr<double>();
    a.temperature = temperature;
    a.input_bias = input_bias_c.const_data_ptr<scalar_t>();
    a.block_bias = block_bias_c.const_data_ptr<scalar_t>();
    a.w.set(wc);
    a.values_out = values_out.mutable_data_ptr<int64_t>();
    a.logits = logits.mutable_data_ptr<scalar_t>();
    a.reduce_rows = reduce_rows.mutable_data_ptr<scalar_t>();
    const MathKernels<scalar_t> math = math_kernels<scalar_t>();
    parallel_over_batch(s.batch, [&](int64_t b0, int64_t b1) {
      Buffers<scalar_t> buf(s);
      for (int64_t n0 = b0; n0 < b1; n0 += kRows) {
        row_block(a, math, buf, n0, static_cast<int>(std::min<int64_t>(kRows, b1 - n0)));
      }
    });
  });
  return {values_out, logits, reduce_rows};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) {
  m.impl("pixelcnn_row", &pixelcnn_row_cpu);
}

}  // namespace genfast
