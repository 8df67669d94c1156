"""transformer_decode_step: one token of key/value-cached decoding of a decoder-only
transformer (genfast.models.CodeTransformer), every layer in one call.

For each sequence b of the batch the op embeds its token `tokens[b]` at position
`step` (token embedding + learned position embedding), runs every pre-LayerNorm block
-- LayerNorm, fused QKV projection, the new key and value written in place into
`key_cache` / `value_cache` at position `step`, attention of the one new query over
positions 0..step of the cache, output projection and residual, LayerNorm, GELU MLP and
residual -- then the final LayerNorm, the head (logits over the `levels` codes) and the
draw from uniforms[b] with temperature, top-k and top-p (the rule of
genfast.ops._draw: the shared inverse-CDF convention over the kept levels). The caches
are preallocated by the caller, (B, layers, heads, T_max, head_dim) each, written in
place, never concatenated; their memory is 2 * heads * head_dim = 2 * width elements
per token per layer per sequence.

Arguments (layout in csrc/transformer_decode_step.h): tokens (B,) int64 -- ids into the
token embedding; an id outside [0, vocabulary) reads as a zero embedding (possible only
with check_levels=False: the model feeds a failed draw, -1, back this way);
key_cache, value_cache (B, L, heads, T_max, head_dim), contiguous, the weights' dtype;
uniforms (B,) float64; step in [0, T_max); temperature > 0; top_k >= 0 (0: off);
0 < top_p <= 1 (1: off); weights: TransformerWeights. Returns values (B,) int64 (-1
where the logits were not finite) and logits (B, levels).

LayerNorm uses eps = LAYER_NORM_EPS; GELU is the exact (erf) form; the attention
scale is 1 / sqrt(head_dim).

`transformer_decode_step_reference` is the same step in batched torch ops: the
fallback, the test oracle. Kernels: csrc/cpu/transformer_decode_step.cpp,
csrc/cuda/transformer_decode_step.cu (two kernels: the environment variable
GENFAST_DECODE_KERNEL=auto|grid|block picks the cooperative multi-block one or the
one-block-per-sequence one; docs/code-transformer.md "GPU kernels"); schema in
csrc/schemas.cpp. Sampling only: no autograd.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from genfast.ops._checks import check_tensors
from genfast.ops._draw import filtered_draw
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64),
}
OP = register_op("transformer_decode_step", module=__name__, kernel_dtypes=KERNEL_DTYPES)
LAYER_NORM_EPS = 1e-5


class TransformerWeights(NamedTuple):
    """A CodeTransformer packed for transformer_decode_step (one dtype and device; every
    matrix K x out, i.e. nn.Linear's weight transposed). D = width, M = MLP width,
    L layers, V levels, S = vocabulary (levels + prefix levels + start tokens), P
    positions.

    token_embedding (S, D), position_embedding (P, D); per layer: ln1_weight, ln1_bias
    (L, D), qkv_weight (L, D, 3D) (columns: q, then k, then v, each head-major),
    qkv_bias (L, 3D), out_weight (L, D, D), out_bias (L, D), ln2_weight, ln2_bias (L, D),
    mlp_weight1 (L, D, M), mlp_bias1 (L, M), mlp_weight2 (L, M, D), mlp_bias2 (L, D);
    final_ln_weight, final_ln_bias (D,), head_weight (D, V), head_bias (V,).
    """
    token_embedding: torch.Tensor
    position_embedding: torch.Tensor
    ln1_weight: torch.Tensor
    ln1_bias: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    ln2_weight: torch.Tensor
    ln2_bias: torch.Tensor
    mlp_weight1: torch.Tensor
    mlp_bias1: torch.Tensor
    mlp_weight2: torch.Tensor
    mlp_bias2: torch.Tensor
    final_ln_weight: torch.Tensor
    final_ln_bias: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor


def _fail(error, message):
    raise error(f"transformer_decode_step: {message}")


def check_transformer_decode_step(tokens, key_cache, value_cache, uniforms, step, temperature,
                                  top_k, top_p, weights: TransformerWeights) -> None:
    """The op's argument checks (ValueError / TypeError naming the argument)."""
    if not isinstance(weights, TransformerWeights):
        _fail(TypeError, f"weights must be a TransformerWeights, got {type(weights).__name__}")
    fixed = {"tokens": (tokens, torch.int64), "uniforms": (uniforms, torch.float64)}
    floats = {"key_cache": key_cache, "value_cache": value_cache, **weights._asdict()}
    check_tensors("transformer_decode_step", fixed, floats, "key_cache",
                  (torch.float32, torch.float64, torch.float16, torch.bfloat16))
    if tokens.dim() != 1 or tokens.numel() == 0:
        _fail(ValueError, f"tokens must be a non-empty (B,) tensor, got shape {tuple(tokens.shape)}")
    b = tokens.shape[0]
    if key_cache.dim() != 5 or key_cache.shape[0] != b or min(key_cache.shape) < 1:
        _fail(ValueError, f"key_cache must be (B={b}, L, heads, T_max, head_dim), got {tuple(key_cache.shape)}")
    if value_cache.shape != key_cache.shape:
        _fail(ValueError, f"value_cache must have key_cache's shape {tuple(key_cache.shape)}, "
                          f"got {tuple(value_cache.shape)}")
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        if not cache.is_contiguous():
            _fail(ValueError, f"{name} must be contiguous (it is written in place)")
    _, layers, heads, t_max, head_dim = key_cache.shape
    d = heads * head_dim
    w = weights
    if w.token_embedding.dim() != 2 or w.token_embedding.shape[0] < 1 or w.token_embedding.shape[1] != d:
        _fail(ValueError, f"token_embedding must be (S, D={d}), got {tuple(w.token_embedding.shape)}")
    if w.position_embedding.dim() != 2 or w.position_embedding.shape[0] < t_max or w.position_embedding.shape[1] != d:
        _fail(ValueError, f"position_embedding must be (P >= T_max={t_max}, D={d}), got "
                          f"{tuple(w.position_embedding.shape)}")
    if w.mlp_weight1.dim() != 3 or w.mlp_weight1.shape[:2] != (layers, d) or w.mlp_weight1.shape[2] < 1:
        _fail(ValueError, f"mlp_weight1 must be (L={layers}, D={d}, M), got {tuple(w.mlp_weight1.shape)}")
    m = w.mlp_weight1.shape[2]
    if w.head_weight.dim() != 2 or w.head_weight.shape[0] != d or w.head_weight.shape[1] < 2:
        _fail(ValueError, f"head_weight must be (D={d}, levels >= 2), got {tuple(w.head_weight.shape)}")
    v = w.head_weight.shape[1]
    expected = {"uniforms": (b,), "ln1_weight": (layers, d), "ln1_bias": (layers, d),
                "qkv_weight": (layers, d, 3 * d), "qkv_bias": (layers, 3 * d), "out_weight": (layers, d, d),
                "out_bias": (layers, d), "ln2_weight": (layers, d), "ln2_bias": (layers, d),
                "mlp_bias1": (layers, m), "mlp_weight2": (layers, m, d), "mlp_bias2": (layers, d),
                "final_ln_weight": (d,), "final_ln_bias": (d,), "head_bias": (v,)}
    tensors = {"uniforms": uniforms, **floats}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            _fail(ValueError, f"{name} must have shape {shape}, got {tuple(tensors[name].shape)}")
    if not (isinstance(step, int) and not isinstance(step, bool) and 0 <= step < t_max):
        _fail(ValueError, f"step must be an int in [0, T_max={t_max}), got {step!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        _fail(ValueError, f"temperature must be a finite number > 0, got {temperature!r}")
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 0):
        _fail(ValueError, f"top_k must be an int >= 0 (0: no top-k), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        _fail(ValueError, f"top_p must be a number in (0, 1] (1: no top-p), got {top_p!r}")


def check_tokens(tokens, vocabulary: int) -> None:
    """The data-dependent check (one device->host sync): the tokens are ids."""
    if ((tokens < 0) | (tokens >= vocabulary)).any():
        _fail(ValueError, f"tokens must hold ids in [0, {vocabulary})")


def transformer_decode_step_reference(tokens: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                      uniforms: torch.Tensor, step: int, temperature: float, top_k: int,
                                      top_p: float, weights: TransformerWeights
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch twin of the op (batched torch ops, the caches written in place)."""
    w = weights
    b, layers, heads, _, head_dim = key_cache.shape
    d = heads * head_dim
    vocabulary = w.token_embedding.shape[0]
    valid = (tokens >= 0) & (tokens < vocabulary)
    x = w.token_embedding[tokens.clamp(0, vocabulary - 1)] * valid.unsqueeze(1).to(key_cache.dtype)
    x = x + w.position_embedding[step]
    scale = 1.0 / math.sqrt(head_dim)
    for l in range(layers):
        h = F.layer_norm(x, (d,), w.ln1_weight[l], w.ln1_bias[l], LAYER_NORM_EPS)
        q, k, v = torch.addmm(w.qkv_bias[l], h, w.qkv_weight[l]).view(b, 3, heads, head_dim).unbind(1)
        key_cache[:, l, :, step] = k
        value_cache[:, l, :, step] = v
        scores = (key_cache[:, l, :, :step + 1] @ q.unsqueeze(-1)).squeeze(-1) * scale  # (B, heads, t)
        context = (scores.softmax(dim=-1).unsqueeze(-2) @ value_cache[:, l, :, :step + 1]).squeeze(-2)
        x = x + torch.addmm(w.out_bias[l], context.reshape(b, d), w.out_weight[l])
        h = F.layer_norm(x, (d,), w.ln2_weight[l], w.ln2_bias[l], LAYER_NORM_EPS)
        hidden = F.gelu(torch.addmm(w.mlp_bias1[l], h, w.mlp_weight1[l]))
        x = x + torch.addmm(w.mlp_bias2[l], hidden, w.mlp_weight2[l])
    h = F.layer_norm(x, (d,), w.final_ln_weight, w.final_ln_bias, LAYER_NORM_EPS)
    logits = torch.addmm(w.head_bias, h, w.head_weight)
    return filtered_draw(logits, uniforms, temperature, top_k, top_p), logits


def transformer_decode_step(tokens: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                            uniforms: torch.Tensor, step: int, weights: TransformerWeights, *,
                            temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                            impl: str = "auto", check_levels: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step (see the module docstring); returns (values, logits) and writes
    position `step` of key_cache and value_cache. impl: "auto" (compiled kernel when
    available, else the reference), "ext" or "reference". check_levels: check that the
    tokens are ids (a device->host sync on a GPU); unchecked, an out-of-range id reads as
    a zero embedding."""
    check_transformer_decode_step(tokens, key_cache, value_cache, uniforms, step, temperature, top_k,
                                  top_p, weights)
    if not OP.use_kernel(impl, key_cache):
        if check_levels and not torch.compiler.is_compiling():
            check_tokens(tokens, weights.token_embedding.shape[0])
        return transformer_decode_step_reference(tokens, key_cache, value_cache, uniforms, step, temperature,
                                                 top_k, top_p, weights)
    return torch.ops.genfast.transformer_decode_step(tokens, key_cache, value_cache, uniforms, step,
                                                     float(temperature), top_k, float(top_p), list(weights),
                                                     bool(check_levels))


@OP.register_fake()
def _(tokens, key_cache, value_cache, uniforms, step, temperature, top_k, top_p, weights,  # noqa: ARG001
      check_levels=True):
    w = TransformerWeights(*weights)
    return tokens.new_empty(tokens.shape), key_cache.new_empty((tokens.shape[0], w.head_weight.shape[1]))
