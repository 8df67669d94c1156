// gated_pixelcnn_row on the CPU: images are split over threads (each thread walks the
// whole row for its images, so threads never wait for each other); at every
// sub-pixel each layer's colour group is a few small register-blocked GEMMs over the
// packed weights (csrc/cpu/step_kernels.h).
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../gated_pixelcnn_row.h"
#include "../sampling_math.h"
#include "step_kernels.h"

namespace genfast {
namespace {

template <typename T>
struct RowArgs {
  const GatedRowShape* shape;
  const int64_t* prefix;
  const bool* known;
  const double* uniforms;
  double temperature;
  const T* row_bias;
  GatedRowPointers<T> w;
  int64_t* values;
  T* logits;
};

// Walks the row for images [b0, b1). Every product runs over register blocks of kRows
// images with the layer loop outside the block loop, so a layer's weights stay in
// cache while all the thread's images use them.
template <typename T>
void walk_row(const RowArgs<T>& a, const MathKernels<T>& math, int64_t b0, int64_t b1) {
  const GatedRowShape& s = *a.shape;
  const int64_t C = s.channels, W = s.width, V = s.levels, E = s.features, H = s.hidden;
  const int64_t P = s.pre(), L = s.layers, T_ = s.taps, K0 = s.input_channels();
  const int64_t Hg = H / C, Pg = P / C;  // one colour group's channels
  const int64_t padded = W + T_ - 1;     // row buffers keep T - 1 zero columns on the left
  const int64_t count = b1 - b0;
  // Row buffers: the first layer's input features and every later layer's input.
  std::vector<T> input0(count * padded * K0, T(0)),
      inputs(std::max<int64_t>(L - 1, 0) * count * padded * H, T(0));
  // Per position: every layer's gated units, the skip sum, the head's hidden layer.
  std::vector<T> gated(L * count * H), skip(count * H), head_in(count * H), hidden(count * H);
  std::vector<T> z(kRows * Pg), y(kRows * Hg);
  std::vector<double> cdf(V);
  std::vector<const T*> x(T_ * kRows);
  auto layer_input = [&](int64_t l, int64_t r, int64_t column) -> T* {  // column: -p..W-1
    const int64_t slot = column + T_ - 1;
    return l == 0 ? input0.data() + (r * padded + slot) * K0
                  : inputs.data() + (((l - 1) * count + r) * padded + slot) * H;
  };
  // Calls body(r0, rows) for the register blocks of the thread's images.
  auto for_blocks = [&](auto&& body) {
    for (int64_t r0 = 0; r0 < count; r0 += kRows) body(r0, static_cast<int>(std::min<int64_t>(kRows, count - r0)));
  };

  for (int64_t j = 0; j < W; ++j) {
    // Groups above the current colour must read as zeros (the masks zero their weights).
    std::fill(gated.begin(), gated.end(), T(0));
    std::fill(skip.begin(), skip.end(), T(0));
    std::fill(hidden.begin(), hidden.end(), T(0));
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t l = 0; l < L; ++l) {
        const int64_t K = l == 0 ? K0 : H;
        const T* w = l == 0 ? a.w.first_weight : a.w.horizontal_weight + (l - 1) * T_ * H * P;
        T* g = gated.data() + l * count * H;
        for_blocks([&](int64_t r0, int rows) {
          for (int64_t t = 0; t < T_; ++t) {
            for (int r = 0; r < rows; ++r) x[t * kRows + r] = layer_input(l, r0 + r, j - (T_ - 1) + t);
          }
          math.gemm(rows, static_cast<int>(T_), x.data(), K, w + c * Pg, P, Pg, nullptr, z.data(), Pg);
          for (int r = 0; r < rows; ++r) {
            const T* bias = a.row_bias + ((l * s.batch + b0 + r0 + r) * W + j) * P + c * Pg;
            math.gate(z.data() + r * Pg, bias, Hg, g + (r0 + r) * H + c * Hg);
            x[r] = g + (r0 + r) * H;
          }
          math.gemm(rows, 1, x.data(), H, a.w.skip_weight + l * H * H + c * Hg, H, Hg,
                    a.w.skip_bias + l * H + c * Hg, y.data(), Hg);
          for (int r = 0; r < rows; ++r) {
            T* acc = skip.data() + (r0 + r) * H + c * Hg;
            for (int64_t o = 0; o < Hg; ++o) acc[o] += y[r * Hg + o];
          }
          if (l == L - 1) return;  // the last layer has no horizontal output
          math.gemm(rows, 1, x.data(), H, a.w.residual_weight + l * H * H + c * Hg, H, Hg,
                    a.w.residual_bias + l * H + c * Hg, y.data(), Hg);
          for (int r = 0; r < rows; ++r) {
            T* out = layer_input(l + 1, r0 + r, j) + c * Hg;
            const T* res = l == 0 ? nullptr : layer_input(l, r0 + r, j) + c * Hg;
            for (int64_t o = 0; o < Hg; ++o) out[o] = y[r * Hg + o] + (res ? res[o] : T(0));
          }
        });
      }
      // Output head: relu -> 1x1 -> relu -> 1x1 to colour c's levels, then the draw.
      for_blocks([&](int64_t r0, int rows) {
        for (int r = 0; r < rows; ++r) {
          const T* acc = skip.data() + (r0 + r) * H;
          T* in = head_in.data() + (r0 + r) * H;
          for (int64_t o = 0; o < H; ++o) in[o] = relu_value(acc[o]);
          x[r] = in;
        }
        math.gemm(rows, 1, x.data(), H, a.w.head_weight1 + c * Hg, H, Hg, a.w.head_bias1 + c * Hg,
                  y.data(), Hg);
        for (int r = 0; r < rows; ++r) {
          T* h = hidden.data() + (r0 + r) * H;
          for (int64_t o = 0; o < Hg; ++o) h[c * Hg + o] = relu_value(y[r * Hg + o]);
          x[r] = h;
        }
        T* logits = a.logits + (((b0 + r0) * C + c) * W + j) * V;
        math.gemm(rows, 1, x.data(), H, a.w.head_weight2 + c * V, C * V, V, a.w.head_bias2 + c * V,
                  logits, C * W * V);
        for (int r = 0; r < rows; ++r) {
          const int64_t n = b0 + r0 + r, at = (n * C + c) * W + j;
          const int64_t value =
              a.known[at] ? known_level(a.prefix[at], V)
                          : draw(logits + r * C * W * V, V, a.uniforms[(j * C + c) * s.batch + n],
                                 a.temperature, cdf.data());
          a.values[at] = value;
          T* feature = layer_input(0, r0 + r, j) + c * E;
          for (int64_t e = 0; e < E; ++e) feature[e] = value >= 0 ? a.w.feature_table[value * E + e] : T(0);
        }
      });
    }
  }
}

std::tuple<at::Tensor, at::Tensor> gated_pixelcnn_row_cpu(
    const at::Tensor& prefix, const at::Tensor& known, const at::Tensor& uniforms,
    double temperature, const at::Tensor& row_bias, at::TensorList weights, bool check_levels) {
  const char* op = "gated_pixelcnn_row";
  const GatedRowWeights w = unpack_weights<GatedRowWeights>(op, weights);
  const GatedRowShape shape =
      check_gated_pixelcnn_row(prefix, known, uniforms, temperature, row_bias, w, check_levels);
  check_cpu(op, row_bias, "row_bias");
  const GatedRowWeights wc = contiguous_weights(w);
  const at::Tensor prefix_c = prefix.contiguous(), known_c = known.contiguous(),
                   uniforms_c = uniforms.contiguous(), row_bias_c = row_bias.contiguous();
  at::Tensor values = at::empty(prefix.sizes(), prefix.options());
  at::Tensor logits = at::empty({shape.batch, shape.channels, shape.width, shape.levels},
                                row_bias.options());
  AT_DISPATCH_FLOATING_TYPES(row_bias.scalar_type(), "gated_pixelcnn_row_cpu", [&] {
    RowArgs<scalar_t> a{};
    a.shape = &shape;
    a.prefix = prefix_c.const_data_ptr<int64_t>();
    a.known = known_c.const_data_ptr<bool>();
    a.uniforms = uniforms_c.const_data_ptr<double>();
    a.temperature = temperature;
    a.row_bias = row_bias_c.const_data_ptr<scalar_t>();
    a.w.set(wc);
    a.values = values.mutable_data_ptr<int64_t>();
    a.logits = logits.mutable_data_ptr<scalar_t>();
    const MathKernels<scalar_t> math = math_kernels<scalar_t>();
    parallel_over_batch(shape.batch, [&](int64_t b0, int64_t b1) { walk_row(a, math, b0, b1); });
  });
  return {values, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) { m.impl("gated_pixelcnn_row", &gated_pixelcnn_row_cpu); }

}  // namespace genfast
