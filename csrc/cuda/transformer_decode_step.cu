// transformer_decode_step on CUDA, two kernels (docs/code-transformer.md "GPU kernels";
// GENFAST_DECODE_KERNEL picks one, decode_kernel_choice in transformer_decode_step.h):
//
// * the grid kernel (default where cooperative launch works): ONE cooperative
//   (persistent) launch per token over many blocks, the step split into 5 L + 2 phases
//   with grid-wide barriers between them (csrc/transformer_decode_schedule.h), so that
//   at batch 1 the weights stream through many SMs instead of one. Deterministic and
//   independent of the grid size: every output is summed by one fixed set of threads
//   in a fixed order.
// * the block kernel (the fallback): one launch per token runs every layer; one block
//   per sequence keeps the token's activations in shared memory for the whole step (no
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
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>

#include "../transformer_decode_schedule.h"
#include "../transformer_decode_step.h"
#include "cooperative.cuh"

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
    p.drawn[b] = filtered_draw_ranked(weight, order, V, p.top_k, p.top_p, p.uniforms[b], kept_weight);
  }
}

template <typename T>
size_t dynamic_shared_bytes(const TransformerShape& s, int64_t step) {
  return sizeof(T) * static_cast<size_t>(6 * s.width + s.mlp + s.heads * (step + 1));
}

// ==== the grid kernel (docs/code-transformer.md "GPU kernels") =======================
// One cooperative launch of up to one block per item of the widest phase; the phases
// of csrc/transformer_decode_schedule.h, separated by grid-wide barriers. The
// activations of the whole batch live in a global work buffer (L2) between phases.

namespace cg = cooperative_groups;

constexpr int kGridThreads = 32 * kDecodeWarps;
constexpr unsigned kAllLanes = 0xffffffffu;

template <typename T>
struct GridParams {
  TransformerPointers<T> w;  // read only: loaded with __ldg
  const int64_t* tokens;
  T* keys;
  T* values;
  const double* uniforms;
  double temperature, top_p;
  int top_k, step, head_dim, max_positions, vocabulary;
  DecodeSchedule s;
  // Written by the kernel between barriers (plain loads, never the read-only cache).
  T* x;        // (B, D) the residual stream
  T* q;        // (B, D) the queries of the current layer
  T* context;  // (B, D)
  T* hidden;   // (B, M)
  int64_t* drawn;
  T* logits;       // (B, V)
  double* scratch;  // (B, 3 V): z, weights, kept weights (or running sums) of the draw
  int32_t* order;   // (B, V): the levels by rank
};

// Shared memory of one block besides the dynamic part.
template <typename T>
struct GridShared {
  T partial[kDecodeWarps][kDecodeTileSeqs][kDecodeTileColumns];  // a tile's per-warp sums
  double reduce[kDecodeWarps];                                   // block reductions
  double stats[kDecodeTileSeqs][2];                              // LayerNorm mean, 1 / std
  double threshold;
  int flag;
};

// op(...) of every thread's value, in every thread: a xor tree in each warp (every lane
// ends with the same bits: IEEE + and max commute), then the warps in order. The same
// order in every block, whatever the item.
template <typename V, typename Op>
__device__ V block_reduce(V value, double* scratch, Op op) {
  for (int s = 16; s > 0; s /= 2) value = op(value, __shfl_xor_sync(kAllLanes, value, s));
  V* partials = reinterpret_cast<V*>(scratch);
  __syncthreads();  // scratch may still be read by the previous reduction
  if (threadIdx.x % 32 == 0) partials[threadIdx.x / 32] = value;
  __syncthreads();
  V total = partials[0];
  for (int i = 1; i < kDecodeWarps; ++i) total = op(total, partials[i]);
  return total;
}

struct SumOp {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a + b; }
};
struct MaxOp {
  template <typename V>
  __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};

// Stages the tile's `rows` input rows of length K at xs[r * K + k]: with `embed`, x of
// layer 0 from the embeddings (the writer also stores it in p.x), else rows of `src`.
// With gamma, then LayerNorm of each row (a warp per row, statistics in float64 as the
// block kernel), in place. Ends with a barrier.
template <typename T>
__device__ void stage_rows(const GridParams<T>& p, const T* src, int K, int seq0, int rows, bool embed,
                           bool writer, const T* gamma, const T* beta, T* xs, GridShared<T>& sh) {
  const TransformerPointers<T>& w = p.w;
  for (int i = threadIdx.x; i < rows * K; i += blockDim.x) {
    const int r = i / K, k = i % K, b = seq0 + r;
    T v;
    if (embed) {
      const int64_t row = embedding_row(p.tokens[b], p.vocabulary);
      v = (row >= 0 ? __ldg(w.token_embedding + row * K + k) : T(0)) +
          __ldg(w.position_embedding + int64_t(p.step) * K + k);
      if (writer) p.x[int64_t(b) * K + k] = v;
    } else {
      v = src[int64_t(b) * K + k];
    }
    xs[i] = v;
  }
  __syncthreads();
  if (gamma == nullptr) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp < rows) {
    const T* row = xs + warp * K;
    double sum = 0.0;
    for (int k = lane; k < K; k += 32) sum += static_cast<double>(row[k]);
    for (int s = 16; s > 0; s /= 2) sum += __shfl_xor_sync(kAllLanes, sum, s);
    const double mean = sum / K;
    double squares = 0.0;
    for (int k = lane; k < K; k += 32) {
      const double d = static_cast<double>(row[k]) - mean;
      squares += d * d;
    }
    for (int s = 16; s > 0; s /= 2) squares += __shfl_xor_sync(kAllLanes, squares, s);
    if (lane == 0) {
      sh.stats[warp][0] = mean;
      sh.stats[warp][1] = 1.0 / sqrt(squares / K + kLayerNormEps);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows * K; i += blockDim.x) {
    const int r = i / K, k = i % K;
    const T m = static_cast<T>(sh.stats[r][0]), rs = static_cast<T>(sh.stats[r][1]);
    xs[i] = (xs[i] - m) * rs * __ldg(gamma + k) + __ldg(beta + k);
  }
  __syncthreads();
}

// The tile's products: for r < rows and column col = column0 + c < N (c < 8),
// epilogue(r, col, sum over k < K of xs[r * K + k] * w[k * N + col]). Lane l owns
// column column0 + l % 8 and, of its warp's contiguous chunk of K, the k = l / 8
// (mod 4): the four lane groups read adjacent weight rows (32-byte sectors, fully
// used). The groups are added in a fixed tree (lane l + 16 into l, then l + 8 into
// l), then the 16 warps' sums in warp order by one thread per output. Small tiles
// give many tiles: at batch 1 the MLP's 1024 columns are 128 tiles, one per SM.
// Ends with a barrier.
template <typename T, typename Epilogue>
__device__ void tile_gemv(const T* xs, int rows, int K, const T* __restrict__ w, int N, int column0,
                          GridShared<T>& sh, Epilogue epilogue) {
  constexpr int kGroups = 32 / kDecodeTileColumns;
  static_assert(kGroups == 4, "the group sums below add lanes 16 and 8 apart");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int col = column0 + lane % kDecodeTileColumns, group = lane / kDecodeTileColumns;
  const int chunk = (K + kDecodeWarps - 1) / kDecodeWarps;
  const int k_begin = min(K, warp * chunk), k_end = min(K, k_begin + chunk);
  T acc[kDecodeTileSeqs];
#pragma unroll
  for (int r = 0; r < kDecodeTileSeqs; ++r) acc[r] = T(0);
  if (col < N) {
    const T* __restrict__ wc = w + col;
    // Unrolled: 8 weight loads in flight per thread (the phase is bound by the latency
    // of L2 / HBM at batch 1, not by its bandwidth).
#pragma unroll 8
    for (int k = k_begin + group; k < k_end; k += kGroups) {
      const T wv = __ldg(wc + int64_t(k) * N);
#pragma unroll
      for (int r = 0; r < kDecodeTileSeqs; ++r) {
        if (r < rows) acc[r] += xs[r * K + k] * wv;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kDecodeTileSeqs; ++r) {
    acc[r] += __shfl_down_sync(kAllLanes, acc[r], 16);
    acc[r] += __shfl_down_sync(kAllLanes, acc[r], 8);
    if (lane < kDecodeTileColumns) sh.partial[warp][r][lane] = acc[r];
  }
  __syncthreads();
  if (threadIdx.x < kDecodeTileSeqs * kDecodeTileColumns) {
    const int r = threadIdx.x / kDecodeTileColumns, c = threadIdx.x % kDecodeTileColumns;
    if (r < rows && column0 + c < N) {
      T sum = T(0);
#pragma unroll
      for (int v = 0; v < kDecodeWarps; ++v) sum += sh.partial[v][r][c];
      epilogue(r, column0 + c, sum);
    }
  }
  __syncthreads();  // the partial sums and the staged rows are reused by the next tile
}

// Attention of sequence b's new query over positions 0..step in head `head` of layer
// l: a thread per position for the scores, block reductions for the softmax, then
// (channel, position slice) threads for the weighted values, the slices added in order.
template <typename T>
__device__ void attention_item(const GridParams<T>& p, int l, int b, int head, T* shared, GridShared<T>& sh) {
  const DecodeSchedule& s = p.s;
  const int HD = p.head_dim, D = s.width, t_len = p.step + 1;
  T* q = shared;             // (HD)
  T* scores = q + HD;        // (T_max)
  T* part = scores + p.max_positions;  // (max(HD, threads))
  for (int c = threadIdx.x; c < HD; c += blockDim.x) q[c] = p.q[int64_t(b) * D + head * HD + c];
  __syncthreads();
  const int64_t base = ((int64_t(b) * s.layers + l) * s.heads + head) * p.max_positions * HD;
  const T* kc = p.keys + base;
  const T* vc = p.values + base;
  const T scale = static_cast<T>(1.0 / sqrt(static_cast<double>(HD)));
  T best = -INFINITY;
  for (int t = threadIdx.x; t < t_len; t += blockDim.x) {
    const T* k = kc + int64_t(t) * HD;
    T dot = T(0);
#pragma unroll 8
    for (int c = 0; c < HD; ++c) dot += q[c] * k[c];
    scores[t] = dot * scale;
    best = max(best, scores[t]);
  }
  best = block_reduce(best, sh.reduce, MaxOp());
  T sum = T(0);
  for (int t = threadIdx.x; t < t_len; t += blockDim.x) {
    const T e = exp(scores[t] - best);
    scores[t] = e;
    sum += e;
  }
  sum = block_reduce(sum, sh.reduce, SumOp());  // ends with a barrier: the scores are complete
  const int slices = max(1, static_cast<int>(blockDim.x) / HD);
  for (int i = threadIdx.x; i < HD * slices; i += blockDim.x) {
    const int c = i % HD, slice = i / HD;
    T acc = T(0);
#pragma unroll 8
    for (int t = slice; t < t_len; t += slices) acc += scores[t] * vc[int64_t(t) * HD + c];
    part[i] = acc;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < HD; c += blockDim.x) {
    T acc = T(0);
    for (int slice = 0; slice < slices; ++slice) acc += part[slice * HD + c];
    p.context[int64_t(b) * D + head * HD + c] = acc / sum;
  }
  __syncthreads();  // q, scores and part are reused by the next item
}

// The draw of sequence b from its logits (sampling_math.h, bit-identical to the CPU's
// rule). Unfiltered: the weights in parallel (the same draw_weight calls as the serial
// inverse_cdf_draw), their running sums by warp 0 in level order, and the count of
// running sums <= u * total in parallel (they never decrease, so the count is the
// serial loop's). Filtered: the block kernel's rank computation and thread 0's
// filtered_rank_count / filtered_level.
template <typename T>
__device__ void draw_item(const GridParams<T>& p, int b, GridShared<T>& sh) {
  const int V = p.s.levels;
  const T* logits = p.logits + int64_t(b) * V;
  double* z = p.scratch + int64_t(b) * 3 * V;
  double* weight = z + V;
  double* kept_weight = weight + V;  // unfiltered: the running sums
  int finite = 1;
  double z_max = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const double v = static_cast<double>(logits[i]);
    finite = finite && isfinite(v);
    z[i] = tempered_logit(v, p.temperature);
    z_max = fmax(z_max, z[i]);
  }
  finite = block_reduce(finite, sh.reduce, [](int a, int c) { return a & c; });
  if (!finite) {
    if (threadIdx.x == 0) p.drawn[b] = -1;
    __syncthreads();
    return;
  }
  z_max = block_reduce(z_max, sh.reduce, MaxOp());
  const bool filtered = p.top_k > 0 || p.top_p < 1.0;
  int32_t* order = p.order + int64_t(b) * V;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    weight[i] = draw_weight(static_cast<double>(logits[i]), p.temperature, z_max);
    if (filtered) {
      kept_weight[i] = 0.0;
      int rank = 0;
      for (int j = 0; j < V; ++j) rank += ranks_before(z[j], j, z[i], i) ? 1 : 0;
      order[rank] = i;
    }
  }
  __syncthreads();
  if (filtered) {
    if (threadIdx.x == 0) {
      p.drawn[b] = filtered_draw_ranked(weight, order, V, p.top_k, p.top_p, p.uniforms[b], kept_weight);
    }
    __syncthreads();
    return;
  }
  if (threadIdx.x < 32) {
    // The running sums in level order by warp 0: 32 weights per coalesced load (the
    // next chunk's in flight), broadcast to every lane in lane order, so every lane
    // adds the same weights in the same order; lane s keeps level base + s's sum.
    // Lanes past V load 0, and adding 0 changes no sum.
    const int lane = threadIdx.x;
    double running = 0.0;
    double next = lane < V ? weight[lane] : 0.0;
    for (int base = 0; base < V; base += 32) {
      const double mine_weight = next;
      next = base + 32 + lane < V ? weight[base + 32 + lane] : 0.0;
      double mine = 0.0;
#pragma unroll
      for (int s = 0; s < 32; ++s) {
        running = add_rn(running, __shfl_sync(kAllLanes, mine_weight, s));
        if (s == lane) mine = running;
      }
      if (base + lane < V) kept_weight[base + lane] = mine;
    }
    if (lane == 0) sh.threshold = mul_rn(p.uniforms[b], running);
  }
  __syncthreads();
  int count = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) count += kept_weight[i] <= sh.threshold ? 1 : 0;
  count = block_reduce(count, sh.reduce, SumOp());
  if (threadIdx.x == 0) p.drawn[b] = clamp_level(count, V);
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kGridThreads, 1) transformer_decode_grid_kernel(const GridParams<T> p) {
  extern __shared__ __align__(16) unsigned char grid_shared_bytes[];
  __shared__ GridShared<T> sh;
  T* shared = reinterpret_cast<T*>(grid_shared_bytes);
  const DecodeSchedule& s = p.s;
  const TransformerPointers<T>& w = p.w;
  const int D = s.width, M = s.mlp;
  const T* no_norm = nullptr;  // stage_rows without LayerNorm
  for (int phase = 0; phase < s.phases(); ++phase) {
    const int items = s.items(phase);
    for (int i = blockIdx.x; i < items; i += gridDim.x) {  // the same in the whole block
      const DecodeItem it = s.item(phase, i);
      const int l = it.layer, seq0 = it.seq0;
      const int rows = min(kDecodeTileSeqs, s.batch - seq0);
      switch (it.kind) {
        case kDecodeQkv: {
          stage_rows(p, p.x, D, seq0, rows, l == 0, it.writer, w.ln1_weight + l * D, w.ln1_bias + l * D, shared,
                     sh);
          const T* bias = w.qkv_bias + l * 3 * D;
          const int HD = p.head_dim;
          tile_gemv(shared, rows, D, w.qkv_weight + int64_t(l) * D * 3 * D, 3 * D, it.column0, sh,
                    [&](int r, int col, T sum) {
                      const int b = seq0 + r;
                      const T v = sum + __ldg(bias + col);
                      if (col < D) {
                        p.q[int64_t(b) * D + col] = v;
                        return;
                      }
                      const int i = col % D, head = i / HD, c = i % HD;
                      const int64_t at =
                          (((int64_t(b) * s.layers + l) * s.heads + head) * p.max_positions + p.step) * HD + c;
                      (col < 2 * D ? p.keys : p.values)[at] = v;
                    });
          break;
        }
        case kDecodeAttention: attention_item(p, l, seq0, it.column0, shared, sh); break;
        case kDecodeOut:
        case kDecodeMlp2: {  // x += input W + b: the attention's output projection, or MLP 2
          const bool out = it.kind == kDecodeOut;
          const int K = out ? D : M;
          stage_rows(p, out ? p.context : p.hidden, K, seq0, rows, false, false, no_norm, no_norm, shared, sh);
          const T* bias = out ? w.out_bias + l * D : w.mlp_bias2 + l * D;
          const T* weight = out ? w.out_weight + int64_t(l) * D * D : w.mlp_weight2 + int64_t(l) * M * D;
          tile_gemv(shared, rows, K, weight, D, it.column0, sh, [&](int r, int col, T sum) {
            T* x = p.x + int64_t(seq0 + r) * D + col;
            *x = *x + (sum + __ldg(bias + col));
          });
          break;
        }
        case kDecodeMlp1: {
          stage_rows(p, p.x, D, seq0, rows, false, false, w.ln2_weight + l * D, w.ln2_bias + l * D, shared, sh);
          const T* bias = w.mlp_bias1 + l * M;
          tile_gemv(shared, rows, D, w.mlp_weight1 + int64_t(l) * D * M, M, it.column0, sh,
                    [&](int r, int col, T sum) {
                      p.hidden[int64_t(seq0 + r) * M + col] = gelu_value(sum + __ldg(bias + col));
                    });
          break;
        }
        case kDecodeHead: {
          stage_rows(p, p.x, D, seq0, rows, false, false, w.final_ln_weight, w.final_ln_bias, shared, sh);
          const int V = s.levels;
          tile_gemv(shared, rows, D, w.head_weight, V, it.column0, sh, [&](int r, int col, T sum) {
            p.logits[int64_t(seq0 + r) * V + col] = sum + __ldg(w.head_bias + col);
          });
          break;
        }
        default: draw_item(p, seq0, sh); break;
      }
    }
    if (phase + 1 < s.phases()) cg::this_grid().sync();
  }
}

// How many blocks of the grid kernel can be resident at once on `device` with `bytes`
// of dynamic shared memory (0 when it cannot launch cooperatively).
template <typename T>
int grid_resident_blocks(int device, int bytes) {
  static ResidentBlocksCache cache;
  return resident_cooperative_blocks(cache, transformer_decode_grid_kernel<T>, kGridThreads, device, bytes);
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
  const DecodeKernel choice = decode_kernel_choice(std::getenv("GENFAST_DECODE_KERNEL"));
  const int grid_limit = decode_grid_limit(std::getenv("GENFAST_DECODE_GRID"));
  const c10::cuda::CUDAGuard guard(key_cache.device());
  const TransformerWeights wc = contiguous_weights(w);
  const at::Tensor tokens_c = tokens.contiguous(), uniforms_c = uniforms.contiguous();
  at::Tensor drawn = at::empty({s.batch}, tokens.options());
  at::Tensor logits = at::empty({s.batch, s.levels}, key_cache.options());
  at::Tensor scratch = at::empty({s.batch, 3 * s.levels}, key_cache.options().dtype(at::kDouble));
  at::Tensor order = at::empty({s.batch, s.levels}, key_cache.options().dtype(at::kInt));
  const int device = key_cache.get_device();
  int device_limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&device_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  AT_DISPATCH_FLOATING_TYPES(key_cache.scalar_type(), "transformer_decode_step_cuda", [&] {
    // The fields both kernels' parameters share.
    auto fill_common = [&](auto& p) {
      p.w.set(wc);
      p.tokens = tokens_c.const_data_ptr<int64_t>();
      p.keys = key_cache.mutable_data_ptr<scalar_t>();
      p.values = value_cache.mutable_data_ptr<scalar_t>();
      p.uniforms = uniforms_c.const_data_ptr<double>();
      p.temperature = temperature;
      p.top_p = top_p;
      p.top_k = static_cast<int>(std::min<int64_t>(top_k, s.levels));
      p.step = static_cast<int>(step);
      p.head_dim = static_cast<int>(s.head_dim);
      p.max_positions = static_cast<int>(s.max_positions);
      p.vocabulary = static_cast<int>(s.vocabulary);
      p.drawn = drawn.mutable_data_ptr<int64_t>();
      p.logits = logits.mutable_data_ptr<scalar_t>();
      p.scratch = scratch.mutable_data_ptr<double>();
      p.order = order.mutable_data_ptr<int32_t>();
    };
    // The grid kernel where it can run (see decode_kernel_choice), else the block kernel.
    if (choice != DecodeKernel::kBlock) {
      // Item counts are ints: sequence tiles x column tiles of the widest product, and
      // (sequence, head) pairs.
      const int64_t widest = std::max({3 * s.width, s.mlp, s.levels});
      const int64_t tiles = (s.batch + kDecodeTileSeqs - 1) / kDecodeTileSeqs *
                            ((widest + kDecodeTileColumns - 1) / kDecodeTileColumns);
      TORCH_CHECK_VALUE(s.batch * s.heads <= kMaxIndex32 && tiles <= kMaxIndex32, op, ": batch ", s.batch,
                        " is too large for the grid kernel of this model; use GENFAST_DECODE_KERNEL=block");
      const size_t bytes = sizeof(scalar_t) * static_cast<size_t>(decode_grid_shared_elements(
                                                  s.width, s.mlp, s.head_dim, s.max_positions));
      const bool fits = bytes + sizeof(GridShared<scalar_t>) <= static_cast<size_t>(device_limit);
      TORCH_CHECK_VALUE(fits || choice == DecodeKernel::kAuto, op, ": GENFAST_DECODE_KERNEL=grid, but width ",
                        s.width, ", MLP width ", s.mlp, " and ", s.max_positions, " positions need ", bytes,
                        " bytes of shared memory per block, more than this GPU's ", device_limit,
                        "; use 'block' or the CPU");
      int resident = 0;
      if (fits) {
        if (bytes + sizeof(GridShared<scalar_t>) > kDefaultSharedMemoryBytes) {
          C10_CUDA_CHECK(cudaFuncSetAttribute(transformer_decode_grid_kernel<scalar_t>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
        }
        resident = grid_resident_blocks<scalar_t>(device, static_cast<int>(bytes));
      }
      TORCH_CHECK(resident > 0 || choice == DecodeKernel::kAuto, op,
                  ": GENFAST_DECODE_KERNEL=grid, but this device cannot launch the grid kernel "
                  "cooperatively; use 'block' or 'auto'");
      if (resident > 0) {
        GridParams<scalar_t> p{};
        fill_common(p);
        p.s = DecodeSchedule{static_cast<int>(s.batch), static_cast<int>(s.layers), static_cast<int>(s.heads),
                             static_cast<int>(s.width), static_cast<int>(s.mlp), static_cast<int>(s.levels)};
        // The activations between phases: x, q, context (B, D each) and hidden (B, M);
        // every element is written before it is read.
        at::Tensor work = at::empty({s.batch * (3 * s.width + s.mlp)}, key_cache.options());
        p.x = work.mutable_data_ptr<scalar_t>();
        p.q = p.x + s.batch * s.width;
        p.context = p.q + s.batch * s.width;
        p.hidden = p.context + s.batch * s.width;
        int grid = std::min(p.s.max_items(), resident);
        if (grid_limit > 0) grid = std::min(grid, grid_limit);
        void* args[] = {&p};
        C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(transformer_decode_grid_kernel<scalar_t>),
                                                   dim3(grid), dim3(kGridThreads), args, bytes,
                                                   c10::cuda::getCurrentCUDAStream()));
        return;
      }
    }
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
    fill_common(p);
    p.layers = static_cast<int>(s.layers);
    p.heads = static_cast<int>(s.heads);
    p.width = static_cast<int>(s.width);
    p.mlp = static_cast<int>(s.mlp);
    p.levels = static_cast<int>(s.levels);
    transformer_decode_step_kernel<scalar_t><<<static_cast<unsigned>(s.batch), kThreads, bytes,
                                                c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {drawn, logits};
}

}  // namespace

TORCH_LIBRARY_IMPL(genfast, CUDA, m) { m.impl("transformer_decode_step", &transformer_decode_step_cuda); }

}  // namespace genfast
