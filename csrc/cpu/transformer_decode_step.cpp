// transformer_decode_step on the CPU: one call runs every layer for one token of every
// sequence. The projections (QKV, output, MLP, head) are register-blocked small GEMMs
// (csrc/cpu/step_kernels.h: AVX-512 micro-kernels for float32) split over threads by
// blocks of kRows sequences x column chunks, so batch 1 spreads a layer's weight sweep
// over the threads too; attention runs on threads over batch x heads, reading the
// cache in place; the draw runs on threads over the batch.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../transformer_decode_step.h"
#include "step_kernels.h"

namespace genfast {
namespace {

constexpr int64_t kColumnChunk = 64;  // columns per GEMM work item (a multiple of 16 floats)

// y (B, N) = bias + x (B, K) @ w (K, N), rows and columns split over threads.
template <typename T>
void parallel_gemm(const MathKernels<T>& math, int64_t batch, const T* x, int64_t K, const T* w,
                   int64_t N, const T* bias, T* y) {
  const int64_t row_blocks = (batch + kRows - 1) / kRows, chunks = (N + kColumnChunk - 1) / kColumnChunk;
  // About 64k multiply-adds per task at least: less costs more to hand to a thread.
  const int64_t grain = std::max<int64_t>(1, 65536 / (kRows * K * kColumnChunk));
  at::parallel_for(0, row_blocks * chunks, grain, [&](int64_t begin, int64_t end) {
    const T* rows_x[kRows];
    for (int64_t item = begin; item < end; ++item) {
      // Column chunk major: a thread's consecutive items reuse one chunk of the weights
      // (K x 64 values, in L2) for every block of sequences.
      const int64_t c0 = (item / row_blocks) * kColumnChunk, r0 = (item % row_blocks) * kRows;
      const int rows = static_cast<int>(std::min<int64_t>(kRows, batch - r0));
      for (int r = 0; r < rows; ++r) rows_x[r] = x + (r0 + r) * K;
      math.gemm(rows, 1, rows_x, K, w + c0, N, std::min(kColumnChunk, N - c0),
                bias != nullptr ? bias + c0 : nullptr, y + r0 * N + c0, N);
    }
  });
}

// out = LayerNorm(x) * gamma + beta over D values (statistics in double).
template <typename T>
void layer_norm(const T* x, const T* gamma, const T* beta, int64_t D, T* out) {
  double mean = 0.0;
  for (int64_t i = 0; i < D; ++i) mean += static_cast<double>(x[i]);
  mean /= static_cast<double>(D);
  double var = 0.0;
  for (int64_t i = 0; i < D; ++i) {
    const double d = static_cast<double>(x[i]) - mean;
    var += d * d;
  }
  const double rstd = 1.0 / std::sqrt(var / static_cast<double>(D) + kLayerNormEps);
  const T m = static_cast<T>(mean), r = static_cast<T>(rstd);
  for (int64_t i = 0; i < D; ++i) out[i] = (x[i] - m) * r * gamma[i] + beta[i];
}

template <typename T>
void layer_norm_rows(int64_t batch, const T* x, const T* gamma, const T* beta, int64_t D, T* out) {
  for (int64_t b = 0; b < batch; ++b) layer_norm(x + b * D, gamma, beta, D, out + b * D);
}

// The draw of one sequence: the shared inverse CDF, with the top-k / top-p filter of
// sampling_math.h when asked for. Scratch: z, w, cdf (V doubles each), order (V).
template <typename T>
int64_t draw_filtered(const T* logits, int64_t V, double u, double temperature, int64_t top_k, double top_p,
                      double* z, double* w, double* cdf, int32_t* order) {
  if (!(top_k > 0 || top_p < 1.0)) return inverse_cdf_draw(logits, V, u, temperature, cdf);
  double z_max = -INFINITY;
  for (int64_t i = 0; i < V; ++i) {
    const double v = static_cast<double>(logits[i]);
    if (!std::isfinite(v)) return -1;
    z[i] = tempered_logit(v, temperature);
    z_max = std::max(z_max, z[i]);
  }
  for (int64_t i = 0; i < V; ++i) w[i] = draw_exp(z[i] - z_max);
  std::iota(order, order + V, 0);
  const int64_t k = top_k > 0 && top_k < V ? top_k : V;
  auto before = [&](int32_t a, int32_t b) { return ranks_before(z[a], a, z[b], b); };
  if (top_p < 1.0 || k == V) {
    std::sort(order, order + V, before);  // a strict total order: ties broken by level
  } else {
    std::partial_sort(order, order + k, order + V, before);
  }
  std::fill(cdf, cdf + V, 0.0);
  return filtered_draw_ranked(w, order, V, k, top_p, u, cdf);
}

template <typename T>
void decode_step(const TransformerShape& s, const int64_t* tokens, T* keys, T* values, const double* uniforms,
                 int64_t step, double temperature, int64_t top_k, double top_p, const TransformerPointers<T>& w,
                 int64_t* drawn, T* logits) {
  const int64_t B = s.batch, D = s.width, M = s.mlp, NH = s.heads, HD = s.head_dim, V = s.levels;
  const int64_t t_len = step + 1;
  const MathKernels<T> math = math_kernels<T>();
  std::vector<T> x(B * D), h(B * D), qkv(B * 3 * D), context(B * D), tmp(B * D), hidden(B * M);
  std::vector<T> scores(B * NH * t_len);
  // The input: token embedding (zeros for an id out of range) + position embedding.
  for (int64_t b = 0; b < B; ++b) {
    const int64_t row = embedding_row(tokens[b], s.vocabulary);
    const T* pos = w.position_embedding + step * D;
    for (int64_t i = 0; i < D; ++i) x[b * D + i] = (row >= 0 ? w.token_embedding[row * D + i] : T(0)) + pos[i];
  }
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(HD)));
  for (int64_t l = 0; l < s.layers; ++l) {
    layer_norm_rows(B, x.data(), w.ln1_weight + l * D, w.ln1_bias + l * D, D, h.data());
    parallel_gemm(math, B, h.data(), D, w.qkv_weight + l * D * 3 * D, 3 * D, w.qkv_bias + l * 3 * D, qkv.data());
    // Attention of the new query over positions 0..step, one (sequence, head) per task.
    at::parallel_for(0, B * NH, std::max<int64_t>(1, 16384 / (t_len * HD)), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / NH, head = item % NH;
        const T* q = qkv.data() + b * 3 * D + head * HD;
        const int64_t base = ((b * s.layers + l) * NH + head) * s.max_positions * HD;
        T* kc = keys + base;
        T* vc = values + base;
        std::copy(q + D, q + D + HD, kc + step * HD);
        std::copy(q + 2 * D, q + 2 * D + HD, vc + step * HD);
        math.attend(q, kc, vc, t_len, HD, scale, scores.data() + item * t_len, context.data() + b * D + head * HD);
      }
    });
    parallel_gemm(math, B, context.data(), D, w.out_weight + l * D * D, D, w.out_bias + l * D, tmp.data());
    for (int64_t i = 0; i < B * D; ++i) x[i] += tmp[i];
    layer_norm_rows(B, x.data(), w.ln2_weight + l * D, w.ln2_bias + l * D, D, h.data());
    parallel_gemm(math, B, h.data(), D, w.mlp_weight1 + l * D * M, M, w.mlp_bias1 + l * M, hidden.data());
    math.gelu(hidden.data(), B * M);
    parallel_gemm(math, B, hidden.data(), M, w.mlp_weight2 + l * M * D, D, w.mlp_bias2 + l * D, tmp.data());
    for (int64_t i = 0; i < B * D; ++i) x[i] += tmp[i];
  }
  layer_norm_rows(B, x.data(), w.final_ln_weight, w.final_ln_bias, D, h.data());
  parallel_gemm(math, B, h.data(), D, w.head_weight, V, w.head_bias, logits);
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / V), [&](int64_t begin, int64_t end) {
    std::vector<double> z(V), wt(V), cdf(V);
    std::vector<int32_t> order(V);
    for (int64_t b = begin; b < end; ++b) {
      drawn[b] = draw_filtered(logits + b * V, V, uniforms[b], temperature, top_k, top_p, z.data(), wt.data(),
                               cdf.data(), order.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor> transformer_decode_step_cpu(
    const at::Tensor& tokens, const at::Tensor& key_cache, const at::Tensor& value_cache,
    const at::Tensor& uniforms, int64_t step, double temperature, int64_t top_k, double top_p,
    at::TensorList weights, bool check_levels) {
  const char* op = "transformer_decode_step";
  const TransformerWeights w = unpack_weights<TransformerWeights>(op, weights);
  const TransformerShape shape = check_transformer_decode_step(tokens, key_cache, value_cache, uniforms, step,
                                                               temperature, top_k, top_p, w, check_levels);
  check_cpu(op, key_cache, "key_cache");
  const TransformerWeights wc = contiguous_weights(w);
  const at::Tensor tokens_c = tokens.contiguous(), uniforms_c = uniforms.contiguous();
  at::Tensor drawn = at::empty({shape.batch}, tokens.options());
  at::Tensor logits = at::empty({shape.batch, shape.levels}, key_cache.options());
  AT_DISPATCH_FLOATING_TYPES(key_cache.scalar_type(), "transformer_decode_step_cpu", [&] {
    TransformerPointers<scalar_t> p{};
    p.set(wc);
    decode_step<scalar_t>(shape, tokens_c.const_data_ptr<int64_t>(), key_cache.mutable_data_ptr<scalar_t>(),
                          value_cache.mutable_data_ptr<scalar_t>(), uniforms_c.const_data_ptr<double>(), step,
                          temperature, top_k, top_p, p, drawn.mutable_data_ptr<int64_t>(),
                          logits.mutable_data_ptr<scalar_t>());
  });
  return {drawn, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CPU, m) { m.impl("transformer_decode_step", &transformer_decode_step_cpu); }

}  // namespace genfast
