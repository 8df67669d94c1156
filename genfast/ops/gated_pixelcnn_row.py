"""gated_pixelcnn_row: one image row of cached Gated PixelCNN sampling.

The vertical stack of row i sees only rows < i of the image, so
genfast.models.GatedPixelCNN computes it once per row with batched convolutions and
passes the op, per layer, everything the horizontal stack adds at each position
that does not depend on row i (`row_bias`: horizontal conv bias + link of the
vertical stack + class and spatial conditioning). The op walks the row: for each
column j and colour c it computes colour group c of every layer's horizontal stack
at (i, j) only — taps j-p..j of the layer's input row, gate, skip sum, residual —
then the output head for colour c and the inverse-CDF draw, and feeds the drawn
level to the next position. One call per row, so a step is never one framework call
per layer.

Arguments (exact layout in csrc/gated_pixelcnn_row.h): prefix (N, C, W) int64 and
known (N, C, W) bool (known sub-pixels keep the prefix's value and are computed
through), uniforms (W, C, N) float64, temperature, row_bias (L, N, W, 2H), and a
GatedRowWeights packed once per sampling call (GatedPixelCNN.pack_row_weights).
Returns values (N, C, W) int64 (-1 where the logits were not finite) and logits
(N, C, W, levels). The only state is the row buffers of one row (the op's scratch:
N * W * (C*E + (L-1) * H) elements); with the sampler's p + 1 rows of vertical-stack
inputs per layer, cache memory is O(N * L * H * (p + 1) * W).

`gated_pixelcnn_row_reference` is the same row in per-position torch ops: the
fallback, the test oracle and the Python-orchestrated incremental sampler the
benchmarks compare against (it recomputes every colour group at each sub-pixel).
Kernels: csrc/cpu/gated_pixelcnn_row.cpp, csrc/cuda/gated_pixelcnn_row.cu (on CUDA the
whole batch in one cooperative launch per row, docs/gated-pixelcnn-row-gpu.md); schema in
csrc/schemas.cpp. Sampling only: the op has no autograd.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from genfast.ops._checks import check_tensors
from genfast.ops._draw import draw_from_logits
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64),
}
OP = register_op("gated_pixelcnn_row", module=__name__, kernel_dtypes=KERNEL_DTYPES)


class GatedRowWeights(NamedTuple):
    """A Gated PixelCNN's horizontal stack and head packed for gated_pixelcnn_row (one
    dtype and device; masks applied; every matrix K x out, channel blocks per colour).

    feature_table (levels, E): the input features of each level; first_weight
    (T, C*E, 2H): layer 0's horizontal conv taps j-p..j; horizontal_weight
    (L-1, T, H, 2H): the later layers'; residual_weight (L, H, H), residual_bias (L, H):
    horizontal_out (the last layer's is zeros: it has none); skip_weight (L, H, H),
    skip_bias (L, H); head_weight1 (H, H), head_bias1 (H,), head_weight2 (H, C*levels),
    head_bias2 (C*levels,).
    """
    feature_table: torch.Tensor
    first_weight: torch.Tensor
    horizontal_weight: torch.Tensor
    residual_weight: torch.Tensor
    residual_bias: torch.Tensor
    skip_weight: torch.Tensor
    skip_bias: torch.Tensor
    head_weight1: torch.Tensor
    head_bias1: torch.Tensor
    head_weight2: torch.Tensor
    head_bias2: torch.Tensor


def _fail(error, message):
    raise error(f"gated_pixelcnn_row: {message}")


def check_gated_pixelcnn_row(prefix, known, uniforms, temperature, row_bias,
                             weights: GatedRowWeights) -> None:
    """The op's argument checks (ValueError / TypeError naming the argument)."""
    if not isinstance(weights, GatedRowWeights):
        _fail(TypeError, f"weights must be a GatedRowWeights, got {type(weights).__name__}")
    fixed = {"prefix": (prefix, torch.int64), "known": (known, torch.bool), "uniforms": (uniforms, torch.float64)}
    floats = {"row_bias": row_bias, **weights._asdict()}
    check_tensors("gated_pixelcnn_row", fixed, floats, "row_bias",
                  (torch.float32, torch.float64, torch.float16, torch.bfloat16))
    if prefix.dim() != 3 or prefix.numel() == 0:
        _fail(ValueError, f"prefix must be a non-empty (N, C, W) tensor, got shape {tuple(prefix.shape)}")
    n, c, width = prefix.shape
    w = weights
    if w.feature_table.dim() != 2 or w.feature_table.shape[0] < 2 or w.feature_table.shape[1] < 1:
        _fail(ValueError, f"feature_table must be (levels >= 2, E >= 1), got {tuple(w.feature_table.shape)}")
    levels, e = w.feature_table.shape
    if (row_bias.dim() != 4 or row_bias.shape[0] < 1 or row_bias.shape[1:3] != (n, width)
            or row_bias.shape[3] < 2 * c or row_bias.shape[3] % (2 * c)):
        _fail(ValueError, f"row_bias must be (L, N={n}, W={width}, P) with P = 2 * hidden a multiple "
                          f"of {2 * c}, got {tuple(row_bias.shape)}")
    layers, h = row_bias.shape[0], row_bias.shape[3] // 2
    fw = w.first_weight
    if fw.dim() != 3 or fw.shape[0] < 1 or fw.shape[1:] != (c * e, 2 * h):
        _fail(ValueError, f"first_weight must be (T, C * E={c * e}, P={2 * h}), got {tuple(fw.shape)}")
    taps = fw.shape[0]
    expected = {"known": (n, c, width), "uniforms": (width, c, n),
                "horizontal_weight": (layers - 1, taps, h, 2 * h), "residual_weight": (layers, h, h),
                "residual_bias": (layers, h), "skip_weight": (layers, h, h), "skip_bias": (layers, h),
                "head_weight1": (h, h), "head_bias1": (h,), "head_weight2": (h, c * levels),
                "head_bias2": (c * levels,)}
    tensors = {"known": known, "uniforms": uniforms, **floats}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            _fail(ValueError, f"{name} must have shape {shape}, got {tuple(tensors[name].shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        _fail(ValueError, f"temperature must be a finite number > 0, got {temperature!r}")


def check_known_levels(prefix, known, levels: int) -> None:
    """The data-dependent check (one device->host sync): the known prefix values are
    levels. The compiled op runs the same check in C++ when check_levels is true."""
    if (known & ((prefix < 0) | (prefix >= levels))).any():
        _fail(ValueError, f"prefix must hold levels in [0, {levels}) wherever known is true")


def gated_pixelcnn_row_reference(prefix: torch.Tensor, known: torch.Tensor, uniforms: torch.Tensor,
                                 temperature: float, row_bias: torch.Tensor,
                                 weights: GatedRowWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch twin of the op: per sub-pixel, every layer's horizontal stack at
    the current position in batched torch ops (all colour groups, of which the masks
    make group c depend only on what is known), the head and the draw."""
    w = weights
    n, c, width = prefix.shape
    levels, e = w.feature_table.shape
    layers, h = row_bias.shape[0], row_bias.shape[3] // 2
    taps = w.first_weight.shape[0]
    pad = taps - 1
    dtype = row_bias.dtype
    # Row buffers with `pad` zero columns on the left: layer 0's features, later layers' inputs.
    inputs = [row_bias.new_zeros((n, width + pad, c * e))]
    inputs += [row_bias.new_zeros((n, width + pad, h)) for _ in range(layers - 1)]
    tap_weights = [w.first_weight.reshape(taps * c * e, 2 * h)]
    tap_weights += [w.horizontal_weight[l].reshape(taps * h, 2 * h) for l in range(layers - 1)]
    values = torch.empty_like(prefix)
    logits = row_bias.new_empty((n, c, width, levels))
    for j in range(width):
        for colour in range(c):
            skip = 0
            for l in range(layers):
                pre = inputs[l][:, j:j + taps].reshape(n, -1) @ tap_weights[l] + row_bias[l, :, j]
                pre = pre.view(n, c, 2, h // c)
                gated = (torch.tanh(pre[:, :, 0]) * torch.sigmoid(pre[:, :, 1])).reshape(n, h)
                skip = skip + torch.addmm(w.skip_bias[l], gated, w.skip_weight[l])
                if l < layers - 1:
                    out = torch.addmm(w.residual_bias[l], gated, w.residual_weight[l])
                    inputs[l + 1][:, j + pad] = out if l == 0 else out + inputs[l][:, j + pad]
            hidden = torch.relu(torch.addmm(w.head_bias1, torch.relu(skip), w.head_weight1))
            out = torch.addmm(w.head_bias2, hidden, w.head_weight2).view(n, c, levels)[:, colour]
            logits[:, colour, j] = out
            drawn = draw_from_logits(out, uniforms[j, colour], temperature)
            given = prefix[:, colour, j]  # an unchecked out-of-range value reads as -1
            given = torch.where((given >= 0) & (given < levels), given, -1)
            value = torch.where(known[:, colour, j], given, drawn)
            values[:, colour, j] = value
            feature = w.feature_table[value.clamp(min=0)] * (value >= 0).unsqueeze(1).to(dtype)
            inputs[0][:, j + pad, colour * e:(colour + 1) * e] = feature
    return values, logits


def gated_pixelcnn_row(prefix: torch.Tensor, known: torch.Tensor, uniforms: torch.Tensor,
                       temperature: float, row_bias: torch.Tensor, weights: GatedRowWeights, *,
                       impl: str = "auto", check_levels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples one image row (see the module docstring); returns (values, logits).
    impl: "auto" (compiled kernel when available, else the reference), "ext" or "reference".
    check_levels: check that the known prefix values are levels (a device->host sync on
    a GPU); a sampler that checked its images once passes False, and an unchecked
    out-of-range known value then reads as -1 (a failed sub-pixel)."""
    check_gated_pixelcnn_row(prefix, known, uniforms, temperature, row_bias, weights)
    if not OP.use_kernel(impl, row_bias):
        if check_levels and not torch.compiler.is_compiling():
            check_known_levels(prefix, known, weights.feature_table.shape[0])
        return gated_pixelcnn_row_reference(prefix, known, uniforms, temperature, row_bias, weights)
    return torch.ops.genfast.gated_pixelcnn_row(prefix, known, uniforms, float(temperature), row_bias,
                                                list(weights), bool(check_levels))


@OP.register_fake()
def _(prefix, known, uniforms, temperature, row_bias, weights, check_levels=True):  # noqa: ARG001
    w = GatedRowWeights(*weights)
    n, c, width = prefix.shape
    return prefix.new_empty(prefix.shape), row_bias.new_empty((n, c, width, w.feature_table.shape[0]))
