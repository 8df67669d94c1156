// transformer_decode_step on CUDA: one launch per token runs every layer. One block
// per sequence keeps the token's activations in shared memory for the whole step (no
// launch per layer, no global round trip between layers): LayerNorm by a block
// reduction, each projection as a block GEMV (a thread per output column, so the
// weight rows are read coalesced), attention with a thread per (head, position) for
// the scores, a warp per head for the softmax and a thread per (head, channel) for the
// weighted values, then the head and the draw of sampling_math.h (thread 0, in level
// order, as the CPU draws; the ranks of the top-k / top-p filter in parallel).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../transformer_decode_step.h"

namespace genfast {
namespace {

constexpr int kThreads = 512;

template <typename T>
struct Params {
  TransformerPointers<T> w;
  const int64_t* tokens;
  T* keys;
  T* values;
  const double* uniforms;
  double temperature, top_p;
  int top_k, step;
  int layers, heads, head_dim, max_positions, width, mlp, levels, vocabulary;
  int64_t* drawn;
  T* logits;
  double* scratch;  // (B, 3 V): z, weights, kept weights of the filtered draw
  int32_t* order;   // (B, V): the levels by rank
};

// The sum of every thread's `value`, in every thread (partials: kThreads / 32 doubles).
__device__ double block_sum(double value, double* partials) {
  for (int s = 16; s > 0; s /= 2) value += __shfl_xor_sync(0xffffffffu, value, s);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // partials may still be read by a previous call
  if (lane == 0) partials[warp] = value;
  __syncthreads();
  double total = 0.0;
  for (int i = 0; i < kThreads / 32; ++i) total += partials[i];
  return total;
}

template <typename T>
__device__ void layer_norm(const T* x, const T* gamma, const T* beta, int D, T* out, double* partials) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < D; i += kThreads) sum += static_cast<double>(x[i]);
  const double mean = block_sum(sum, partials) / D;
  double squares = 0.0;
  for (int i = threadIdx.x; i < D; i += kThreads) {
    const double d = static_cast<double>(x[i]) - mean;
    squares += d * d;
  }
  const double rstd = 1.0 / sqrt(block_sum(squares, partials) / D + kLayerNormEps);
  const T m = static_cast<T>(mean), r = static_cast<T>(rstd);
  for (int i = threadIdx.x; i < D; i += kThreads) out[i] = (x[i] - m) * r * gamma[i] + beta[i];
  __syncthreads();
}

// y[o] (+)= bias[o] + sum_k x[k] w[k * N + o], o < N; accumulate: add to y.
template <typename T>
__device__ void block_gemv(const T* x, int K, const T* __restrict__ w, int N, const T* bias, T* y,
                           bool accumulate) {
  for (int o = threadIdx.x; o < N; o += kThreads) {
    T acc = bias[o];
    for (int k = 0; k < K; ++k) acc += x[k] * w[static_cast<int64_t>(k) * N + o];
    y[o] = accumulate ? y[o] + acc : acc;
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads) transformer_decode_step_kernel(const Params<T> p) {
  extern __shared__ unsigned char shared_bytes[];
  __shared__ double partials[kThreads / 32];
  const int b = blockIdx.x, D = p.width, M = p.mlp, NH = p.heads, HD = p.head_dim, V = p.levels;
  const int t_len = p.step + 1;
  T* x = reinterpret_cast<T*>(shared_bytes);  // residual stream (D)
  T* h = x + D;                                // normalised (D)
  T* qkv = h + D;                              // (3D)
  T* context = qkv + 3 * D;                    // (D)
  T* hidden = context + D;                     // (M)
  T* scores = hidden + M;                      // (NH, t_len)
  const TransformerPointers<T>& w = p.w;

  const int64_t row = embedding_row(p.tokens[b], p.vocabulary);
  for (int i = threadIdx.x; i < D; i += kThreads) {
    x[i] = (row >= 0 ? w.token_embedding[row * D + i] : T(0)) + w.position_embedding[p.step * D + i];
  }
  __syncthreads();
  const T scale = static_cast<T>(1.0 / sqrt(static_cast<double>(HD)));
  for (int l = 0; l < p.layers; ++l) {
    layer_norm(x, w.ln1_weight + l * D, w.ln1_bias + l * D, D, h, partials);
    block_gemv(h, D, w.qkv_weight + static_cast<int64_t>(l) * D * 3 * D, 3 * D, w.qkv_bias + l * 3 * D, qkv,
               false);
    // This layer's cache of sequence b: (NH, T_max, HD); position step gets k and v.
    const int64_t base = (static_cast<int64_t>(b) * p.layers + l) * NH * p.max_positions * HD;
    T* kc = p.keys + base;
    T* vc = p.values + base;
    for (int i = threadIdx.x; i < D; i += kThreads) {
      const int head = i / HD, c = i % HD;
      const int64_t at = (static_cast<int64_t>(head) * p.max_positions + p.step) * HD + c;
      kc[at] = qkv[D + i];
      vc[at] = qkv[2 * D + i];
    }
    __syncthreads();
    for (int item = threadIdx.x; item < NH * t_len; item += kThreads) {
      const int head = item / t_len, t = item % t_len;
      const T* k = kc + (static_cast<int64_t>(head) * p.max_positions + t) * HD;
      const T* q = qkv + head * HD;
      T dot = 0;
      for (int c = 0; c < HD; ++c) dot += q[c] * k[c];
      scores[item] = dot * scale;
    }
    __syncthreads();
    // Softmax of each head's scores: a warp per head.
    for (int head = threadIdx.x / 32; head < NH; head += kThreads / 32) {
      T* s = scores + head * t_len;
      const int lane = threadIdx.x % 32;
      T best = -INFINITY;
      for (int t = lane; t < t_len; t += 32) best = max(best, s[t]);
      for (int o = 16; o > 0; o /= 2) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
      T sum = 0;
      for (int t = lane; t < t_len; t += 32) {
        s[t] = exp(s[t] - best);
        sum += s[t];
      }
      for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      for (int t = lane; t < t_len; t += 32) s[t] /= sum;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < D; i += kThreads) {
      const int head = i / HD, c = i % HD;
      const T* s = scores + head * t_len;
      const T* v = vc + static_cast<int64_t>(head) * p.max_positions * HD + c;
      T acc = 0;
      for (int t = 0; t < t_len; ++t) acc += s[t] * v[static_cast<int64_t>(t) * HD];
      context[i] = acc;
    }
    __syncthreads();
    block_gemv(context, D, w.out_weight + static_cast<int64_t>(l) * D * D, D, w.out_bias + l * D, x, true);
    layer_norm(x, w.ln2_weight + l * D, w.ln2_bias + l * D, D, h, partials);
    block_gemv(h, D, w.mlp_weight1 + static_cast<int64_t>(l) * D * M, M, w.mlp_bias1 + l * M, hidden, false);
    for (int i = threadIdx.x; i < M; i += kThreads) hidden[i] = gelu_value(hidden[i]);
    __syncthreads();
    block_gemv(hidden, M, w.mlp_weight2 + static_cast<int64_t>(l) * M * D, D, w.mlp_bias2 + l * D, x, true);
  }
  layer_norm(x, w.final_ln_weight, w.final_ln_bias, D, h, partials);
  T* logits = p.logits + static_cast<int64_t>(b) * V;
  block_gemv(h, D, w.head_weight, V, w.head_bias, logits, false);
  __threadfence_block();

  // The draw (sampling_math.h). Unfiltered: thread 0's serial inverse CDF.
  double* z = p.scratch + static_cast<int64_t>(b) * 3 * V;
  double* weight = z + V;
  double* kept_weight = weight + V;
  if (!(p.top_k > 0 || p.top_p < 1.0)) {
    if (threadIdx.x == 0) p.drawn[b] = inverse_cdf_draw(logits, V, p.uniforms[b], p.temperature, kept_weight);
    return;
  }
  __shared__ int all_finite;
  __shared__ double z_max;
  if (threadIdx.x == 0) all_finite = 1;
  __syncthreads();
  for (int i = threadIdx.x; i < V; i += kThreads) {
    const double v = static_cast<double>(logits[i]);
    if (!isfinite(v)) all_finite = 0;
    z[i] = tempered_logit(v, p.temperature);
  }
  __syncthreads();
  if (!all_finite) {
    if (threadIdx.x == 0) p.drawn[b] = -1;
    return;
  }
  if (threadIdx.x == 0) {
    double m = -INFINITY;
    for (int i = 0; i < V; ++i) m = fmax(m, z[i]);
    z_max = m;
  }
  __syncthreads();
  // Each level's rank: the levels that rank before it (a strict total order).
  int32_t* order = p.order + static_cast<int64_t>(b) * V;
  for (int i = threadIdx.x; i < V; i += kThreads) {
    weight[i] = draw_exp(z[i] - z_max);
    kept_weight[i] = 0.0;
    int rank = 0;
    for (int j = 0; j < V; ++j) rank += ranks_before(z[j], j, z[i], i) ? 1 : 0;
    order[rank] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t kept = filtered_rank_count(weight, order, V, p.top_k, p.top_p);
    int64_t last_kept = 0;
    for (int64_t r = 0; r < kept; ++r) {
      kept_weight[order[r]] = weight[order[r]];
      last_kept = max(last_kept, static_cast<int64_t>(order[r]));
    }
    p.drawn[b] = filtered_level(kept_weight, V, p.uniforms[b], last_kept);
  }
}

template <typename T>
size_t dynamic_shared_bytes(const TransformerShape& s, int64_t step) {
  return sizeof(T) * static_cast<size_t>(6 * s.width + s.mlp + s.heads * (step + 1));
}

std::tuple<at::Tensor, at::Tensor> transformer_decode_step_cuda(
    const at::Tensor& tokens, const at::Tensor& key_cache, const at::Tensor& value_cache,
    const at::Tensor& uniforms, int64_t step, double temperature, int64_t top_k, double top_p,
    at::TensorList weights, bool check_levels) {
  const char* op = "transformer_decode_step";
  const TransformerWeights w = unpack_weights<TransformerWeights>(op, weights);
  const TransformerShape s = check_transformer_decode_step(tokens, key_cache, value_cache, uniforms, step,
                                                           temperature, top_k, top_p, w, check_levels);
  check_cuda(op, key_cache, "key_cache");
  TORCH_CHECK_VALUE(s.batch <= 65535 * 1024, op, ": batch ", s.batch, " is too large");
  const c10::cuda::CUDAGuard guard(key_cache.device());
  const TransformerWeights wc = contiguous_weights(w);
  const at::Tensor tokens_c = tokens.contiguous(), uniforms_c = uniforms.contiguous();
  at::Tensor drawn = at::empty({s.batch}, tokens.options());
  at::Tensor logits = at::empty({s.batch, s.levels}, key_cache.options());
  at::Tensor scratch = at::empty({s.batch, 3 * s.levels}, key_cache.options().dtype(at::kDouble));
  at::Tensor order = at::empty({s.batch, s.levels}, key_cache.options().dtype(at::kInt));
  int device_limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&device_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        key_cache.get_device()));
  AT_DISPATCH_FLOATING_TYPES(key_cache.scalar_type(), "transformer_decode_step_cuda", [&] {
    const size_t bytes = dynamic_shared_bytes<scalar_t>(s, step);
    TORCH_CHECK_VALUE(bytes + 1024 <= static_cast<size_t>(device_limit), op, ": width ", s.width, ", MLP width ",
                      s.mlp, " and ", step + 1, " positions of ", s.heads, " heads need ", bytes,
                      " bytes of shared memory per sequence, more than this GPU's ", device_limit,
                      "; use a smaller model or the CPU");
    if (bytes > kDefaultSharedMemoryBytes - 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(transformer_decode_step_kernel<scalar_t>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    }
    Params<scalar_t> p{};
    p.w.set(wc);
    p.tokens = tokens_c.const_data_ptr<int64_t>();
    p.keys = key_cache.mutable_data_ptr<scalar_t>();
    p.values = value_cache.mutable_data_ptr<scalar_t>();
    p.uniforms = uniforms_c.const_data_ptr<double>();
    p.temperature = temperature;
    p.top_p = top_p;
    p.top_k = static_cast<int>(std::min<int64_t>(top_k, s.levels));
    p.step = static_cast<int>(step);
    p.layers = static_cast<int>(s.layers);
    p.heads = static_cast<int>(s.heads);
    p.head_dim = static_cast<int>(s.head_dim);
    p.max_positions = static_cast<int>(s.max_positions);
    p.width = static_cast<int>(s.width);
    p.mlp = static_cast<int>(s.mlp);
    p.levels = static_cast<int>(s.levels);
    p.vocabulary = static_cast<int>(s.vocabulary);
    p.drawn = drawn.mutable_data_ptr<int64_t>();
    p.logits = logits.mutable_data_ptr<scalar_t>();
    p.scratch = scratch.mutable_data_ptr<double>();
    p.order = order.mutable_data_ptr<int32_t>();
    transformer_decode_step_kernel<scalar_t><<<static_cast<unsigned>(s.batch), kThreads, bytes,
                                                c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {drawn, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) { m.impl("transformer_decode_step", &transformer_decode_step_cuda); }

}  // namespace genfast
