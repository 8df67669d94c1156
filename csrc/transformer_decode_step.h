// transformer_decode_step: one token of key/value-cached decoding of a decoder-only
// transformer (genfast.models.CodeTransformer), every layer in one call -- what the CPU
// and CUDA kernels share: the layout of the arguments, their checks and the
// per-element math.
//
// B sequences, L layers, NH heads of HD channels, D = NH * HD, M MLP channels, V
// levels (the head's outputs), S token ids, P >= T_max learned positions.
//   tokens        (B,) int64       the token at position `step` of each sequence; an id
//                                  outside [0, S) reads as a zero embedding
//   key_cache, value_cache (B, L, NH, T_max, HD)  contiguous; position `step` is
//                                  written, positions 0..step are read
//   uniforms      (B,) float64      one per sequence for the draw
//   token_embedding (S, D), position_embedding (P, D)
//   ln1_weight, ln1_bias (L, D), qkv_weight (L, D, 3D) (K x out; q, k, v blocks,
//   each head-major), qkv_bias (L, 3D), out_weight (L, D, D), out_bias (L, D),
//   ln2_weight, ln2_bias (L, D), mlp_weight1 (L, D, M), mlp_bias1 (L, M),
//   mlp_weight2 (L, M, D), mlp_bias2 (L, D), final_ln_weight, final_ln_bias (D),
//   head_weight (D, V), head_bias (V)
// The weights come as one Tensor[] in the order of GENFAST_TRANSFORMER_WEIGHTS (the
// fields of genfast.ops.TransformerWeights). Pre-LayerNorm blocks (eps kLayerNormEps),
// exact (erf) GELU, attention scale 1 / sqrt(HD); the draw: temperature, top_k (0:
// off), top_p (1: off) as in sampling_math.h. check_levels: check on the host that the
// tokens are ids (a device->host sync on a GPU).
// Returns values (B,) int64 (-1 where the logits were not finite) and logits (B, V).
#pragma once

#include <cmath>

#include <ATen/core/Tensor.h>

#include "checks.h"
#include "common.h"
#include "sampling_math.h"

namespace genfast {

#define GENFAST_TRANSFORMER_WEIGHTS(X)                                                     \
  X(token_embedding) X(position_embedding) X(ln1_weight) X(ln1_bias) X(qkv_weight)          \
  X(qkv_bias) X(out_weight) X(out_bias) X(ln2_weight) X(ln2_bias) X(mlp_weight1)            \
  X(mlp_bias1) X(mlp_weight2) X(mlp_bias2) X(final_ln_weight) X(final_ln_bias)              \
  X(head_weight) X(head_bias)

GENFAST_WEIGHT_TENSORS(TransformerWeights, GENFAST_TRANSFORMER_WEIGHTS)
GENFAST_WEIGHT_POINTERS(TransformerPointers, TransformerWeights, GENFAST_TRANSFORMER_WEIGHTS)

constexpr double kLayerNormEps = 1e-5;

struct TransformerShape {
  int64_t batch, layers, heads, head_dim, max_positions, width, mlp, levels, vocabulary;
  // Elements of one sequence's cache of one layer (NH * T_max * HD).
  int64_t layer_cache() const { return heads * max_positions * head_dim; }
};

// Checks every argument (names, shapes, dtypes, devices, the scalars, and with
// check_levels the token ids) the same way on every backend and returns the sizes.
TransformerShape check_transformer_decode_step(const at::Tensor& tokens, const at::Tensor& key_cache,
                                               const at::Tensor& value_cache, const at::Tensor& uniforms,
                                               int64_t step, double temperature, int64_t top_k,
                                               double top_p, const TransformerWeights& w,
                                               bool check_levels);

// The exact GELU, x * Phi(x).
template <typename T>
GENFAST_HOST_DEVICE inline T gelu_value(T x) {
  using std::erf;
  return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
}

// An embedding row index, or -1 (a zero embedding) for an id outside [0, count).
GENFAST_HOST_DEVICE inline int64_t embedding_row(int64_t id, int64_t count) {
  return id >= 0 && id < count ? id : -1;
}

// The CUDA kernel GENFAST_DECODE_KERNEL selects (null or "" reads as "auto"):
// "grid" the cooperative multi-block kernel (an error where the device cannot launch
// it), "block" one block per sequence, "auto" the grid kernel where it can run, else
// the block kernel. Anything else: ValueError naming the variable.
enum class DecodeKernel { kAuto, kGrid, kBlock };
DecodeKernel decode_kernel_choice(const char* value);

// GENFAST_DECODE_GRID: the most blocks the grid kernel may use (null or "": no limit,
// i.e. every resident block up to the most items of a phase), for tests of grid
// independence and tuning; else a positive int (ValueError otherwise). Returns 0 for
// no limit.
int decode_grid_limit(const char* value);

}  // namespace genfast
