#include "transformer_decode_step.h"

#include <ATen/ATen.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace genfast {
namespace {

constexpr const char* kOp = "transformer_decode_step";

}  // namespace

TransformerShape check_transformer_decode_step(const at::Tensor& tokens, const at::Tensor& key_cache,
                                               const at::Tensor& value_cache, const at::Tensor& uniforms,
                                               int64_t step, double temperature, int64_t top_k,
                                               double top_p, const TransformerWeights& w,
                                               bool check_levels) {
  // key_cache is the reference for dtype and device.
  check_float_dtype(kOp, key_cache, "key_cache");
  check_same_dtype(kOp, value_cache, "value_cache", key_cache, "key_cache");
  check_weights_like(kOp, w, key_cache, "key_cache");
  check_same_device(kOp, value_cache, "value_cache", key_cache, "key_cache");
  check_same_device(kOp, tokens, "tokens", key_cache, "key_cache");
  check_same_device(kOp, uniforms, "uniforms", key_cache, "key_cache");
  check_dtype(kOp, tokens, "tokens", at::kLong);
  check_dtype(kOp, uniforms, "uniforms", at::kDouble);
  TORCH_CHECK_VALUE(tokens.dim() == 1 && tokens.numel() > 0, kOp,
                    ": tokens must be a non-empty (B,) tensor, got shape ", tokens.sizes());
  TransformerShape s;
  s.batch = tokens.size(0);
  TORCH_CHECK_VALUE(key_cache.dim() == 5 && key_cache.size(0) == s.batch && key_cache.size(1) >= 1 &&
                        key_cache.size(2) >= 1 && key_cache.size(3) >= 1 && key_cache.size(4) >= 1,
                    kOp, ": key_cache must have shape (B=", s.batch, ", L, heads, T_max, head_dim), got ",
                    key_cache.sizes());
  check_shape(kOp, value_cache, "value_cache", key_cache.sizes());
  // Written in place through raw pointers: a copy would lose the writes.
  TORCH_CHECK_VALUE(key_cache.is_contiguous() && value_cache.is_contiguous(), kOp,
                    ": key_cache and value_cache must be contiguous (they are written in place)");
  s.layers = key_cache.size(1);
  s.heads = key_cache.size(2);
  s.max_positions = key_cache.size(3);
  s.head_dim = key_cache.size(4);
  s.width = s.heads * s.head_dim;
  const int64_t D = s.width, L = s.layers;
  TORCH_CHECK_VALUE(w.token_embedding.dim() == 2 && w.token_embedding.size(0) >= 1 &&
                        w.token_embedding.size(1) == D,
                    kOp, ": token_embedding must have shape (S, D=", D, "), got ", w.token_embedding.sizes());
  s.vocabulary = w.token_embedding.size(0);
  TORCH_CHECK_VALUE(w.position_embedding.dim() == 2 && w.position_embedding.size(0) >= s.max_positions &&
                        w.position_embedding.size(1) == D,
                    kOp, ": position_embedding must have shape (P >= T_max=", s.max_positions, ", D=", D,
                    "), got ", w.position_embedding.sizes());
  TORCH_CHECK_VALUE(w.mlp_weight1.dim() == 3 && w.mlp_weight1.size(0) == L && w.mlp_weight1.size(1) == D &&
                        w.mlp_weight1.size(2) >= 1,
                    kOp, ": mlp_weight1 must have shape (L=", L, ", D=", D, ", M), got ", w.mlp_weight1.sizes());
  s.mlp = w.mlp_weight1.size(2);
  TORCH_CHECK_VALUE(w.head_weight.dim() == 2 && w.head_weight.size(0) == D && w.head_weight.size(1) >= 2, kOp,
                    ": head_weight must have shape (D=", D, ", levels >= 2), got ", w.head_weight.sizes());
  s.levels = w.head_weight.size(1);
  check_shape(kOp, uniforms, "uniforms", {s.batch});
  check_shape(kOp, w.ln1_weight, "ln1_weight", {L, D});
  check_shape(kOp, w.ln1_bias, "ln1_bias", {L, D});
  check_shape(kOp, w.qkv_weight, "qkv_weight", {L, D, 3 * D});
  check_shape(kOp, w.qkv_bias, "qkv_bias", {L, 3 * D});
  check_shape(kOp, w.out_weight, "out_weight", {L, D, D});
  check_shape(kOp, w.out_bias, "out_bias", {L, D});
  check_shape(kOp, w.ln2_weight, "ln2_weight", {L, D});
  check_shape(kOp, w.ln2_bias, "ln2_bias", {L, D});
  check_shape(kOp, w.mlp_bias1, "mlp_bias1", {L, s.mlp});
  check_shape(kOp, w.mlp_weight2, "mlp_weight2", {L, s.mlp, D});
  check_shape(kOp, w.mlp_bias2, "mlp_bias2", {L, D});
  check_shape(kOp, w.final_ln_weight, "final_ln_weight", {D});
  check_shape(kOp, w.final_ln_bias, "final_ln_bias", {D});
  check_shape(kOp, w.head_bias, "head_bias", {s.levels});
  TORCH_CHECK_VALUE(step >= 0 && step < s.max_positions, kOp, ": step must be an int in [0, T_max=",
                    s.max_positions, "), got ", step);
  check_temperature(kOp, temperature);
  TORCH_CHECK_VALUE(top_k >= 0, kOp, ": top_k must be an int >= 0 (0: no top-k), got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, kOp, ": top_p must be a number in (0, 1] (1: no top-p), got ",
                    top_p);
  // The CUDA kernel indexes one tensor with 32-bit ints.
  TORCH_CHECK_VALUE(key_cache.numel() <= kMaxIndex32 && w.mlp_weight1.numel() <= kMaxIndex32 &&
                        w.qkv_weight.numel() <= kMaxIndex32 && w.token_embedding.numel() <= kMaxIndex32 &&
                        s.batch * s.levels <= kMaxIndex32,
                    kOp, ": the model or cache is too large for 32-bit indexing");
  if (check_levels) {
    check_levels_in_range(kOp, "tokens", tokens, at::Tensor(), 0, s.vocabulary, "tokens must hold ids");
  }
  return s;
}

DecodeKernel decode_kernel_choice(const char* value) {
  if (value == nullptr || std::strcmp(value, "") == 0 || std::strcmp(value, "auto") == 0) return DecodeKernel::kAuto;
  if (std::strcmp(value, "grid") == 0) return DecodeKernel::kGrid;
  if (std::strcmp(value, "block") == 0) return DecodeKernel::kBlock;
  TORCH_CHECK_VALUE(false, kOp, ": GENFAST_DECODE_KERNEL must be 'auto', 'grid' or 'block', got '", value, "'");
  return DecodeKernel::kAuto;  // not reached
}

int decode_grid_limit(const char* value) {
  if (value == nullptr || std::strcmp(value, "") == 0) return 0;
  char* end = nullptr;
  errno = 0;
  const long blocks = std::strtol(value, &end, 10);
  TORCH_CHECK_VALUE(errno == 0 && *end == '\0' && end != value && blocks >= 1 && blocks <= 1000000, kOp,
                    ": GENFAST_DECODE_GRID must be a positive int (the most blocks of the grid kernel), got '",
                    value, "'");
  return static_cast<int>(blocks);
}

}  // namespace genfast
