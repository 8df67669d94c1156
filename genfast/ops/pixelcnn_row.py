"""pixelcnn_row: the centre-row half of one row of PixelCNN's cached sampler.

PixelCNN's cached sampler (genfast.models.PixelCNN._sample_cached) splits every
k x k masked convolution at row i into the rows ABOVE the centre row, all known
when row i starts and computed once per row by one batched conv2d over the cached
previous rows (the "row biases" below, which also carry the biases and the class
embedding), and the CENTRE ROW taps j-p..j plus every per-position layer, which
this op runs for a whole row in one call: for each column j and colour c it
computes only colour group c's outputs of every layer at (i, j) (group c sees
groups <= c of a layer's input there, a prefix of the group-major channels; groups
< c were computed at the earlier sub-steps), draws the level of (j, c) with the
inverse-CDF rule (or keeps a known one) and writes its input features for the
positions that follow.

Shapes (N images, C colours, W columns, L levels, F features per colour, Cin = C * F,
p = input_kernel // 2, R = 2 * hidden, Hd = hidden, B blocks; see
csrc/pixelcnn_row.h for the exact layout):
  values (N, C, W) int64        the row's known levels (others: anything in range)
  known (N, C, W) bool          which sub-pixels are kept rather than drawn
  uniforms (W, C, N) float64    u[i] of genfast.models.sampling.sampling_uniforms
  input_bias (N, W, R)          input conv: bias + class embedding + rows above
  block_bias (B, N, W, Hd)      each block's 3x3: bias + row above
  PixelCNNRowWeights            packed by PixelCNN.pack_row_weights
returns (values (N, C, W) int64, -1 where a drawn sub-pixel's logits were not
finite; logits (N, C, W, L); reduce_rows (B, N, W, Hd): each block's relu'd 1x1
reduce output on the row, the input of the next row's 3x3 above-part).

Memory: besides the images, the sampler keeps reduce_rows between rows and reads the
last p rows of the images for the input features: O(N * (B * Hd + p * Cin) * W),
independent of the height; the op's scratch is O(N * ((p + W) * Cin + B * W * Hd +
B * R)).

`pixelcnn_row_reference` is the same row in per-position torch ops: the fallback, the
test oracle and the Python-orchestrated incremental sampler of the benchmarks
(`PixelCNN.sample(method="cached", impl="reference")`). Kernels:
csrc/cpu/pixelcnn_row.cpp, csrc/cuda/pixelcnn_row.cu; schema in csrc/schemas.cpp.
Sampling only: the op has no autograd.
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
OP = register_op("pixelcnn_row", module=__name__, kernel_dtypes=KERNEL_DTYPES)


class PixelCNNRowWeights(NamedTuple):
    """A PixelCNN's centre-row weights packed for pixelcnn_row (one dtype and device;
    masked entries are zero; every matrix is (inputs, outputs), outputs group-major).

    feature_table (L, F): the input features of each level (scaled level or embedding);
    input_weight ((p + 1) * Cin, R): the input conv's centre-row taps j-p..j, row
    tap * Cin + input channel; reduce_weight (B, R, Hd), reduce_bias (B, Hd): the blocks'
    1x1 reduce; conv_weight (B, 2 * Hd, Hd): the blocks' 3x3 centre-row taps j-1, j (row
    tap * Hd + channel; its bias is in block_bias); expand_weight (B, Hd, R),
    expand_bias (B, R); hidden_weight (R, R), hidden_bias (R,); output_weight (R, C * L),
    output_bias (C * L,): the output layers, colour-group-major logits.
    """
    feature_table: torch.Tensor
    input_weight: torch.Tensor
    reduce_weight: torch.Tensor
    reduce_bias: torch.Tensor
    conv_weight: torch.Tensor
    expand_weight: torch.Tensor
    expand_bias: torch.Tensor
    hidden_weight: torch.Tensor
    hidden_bias: torch.Tensor
    output_weight: torch.Tensor
    output_bias: torch.Tensor


def _fail(error, message):
    raise error(f"pixelcnn_row: {message}")


def check_pixelcnn_row(values, known, uniforms, temperature, input_bias, block_bias,
                       weights: PixelCNNRowWeights) -> None:
    """The op's argument checks (ValueError / TypeError naming the argument)."""
    if not isinstance(weights, PixelCNNRowWeights):
        _fail(TypeError, f"weights must be a PixelCNNRowWeights, got {type(weights).__name__}")
    fixed = {"values": (values, torch.int64), "known": (known, torch.bool), "uniforms": (uniforms, torch.float64)}
    floats = {"input_bias": input_bias, "block_bias": block_bias, **weights._asdict()}
    check_tensors("pixelcnn_row", fixed, floats, "input_weight",
                  (torch.float32, torch.float64, torch.float16, torch.bfloat16))
    if values.dim() != 3 or values.numel() == 0:
        _fail(ValueError, f"values must be a non-empty (N, C, W) tensor, got shape {tuple(values.shape)}")
    n, channels, width = values.shape
    w = weights
    if w.feature_table.dim() != 2 or w.feature_table.shape[0] < 2 or w.feature_table.shape[1] < 1:
        _fail(ValueError, f"feature_table must be (levels >= 2, F >= 1), got {tuple(w.feature_table.shape)}")
    levels, features = w.feature_table.shape
    cin = channels * features
    iw = w.input_weight
    if iw.dim() != 2 or iw.shape[0] < cin or iw.shape[0] % cin or iw.shape[1] < 1 or iw.shape[1] % channels:
        _fail(ValueError, f"input_weight must be ((p + 1) * Cin, R) with Cin = {cin} and R a multiple "
                          f"of C = {channels}, got {tuple(iw.shape)}")
    wide = iw.shape[1]
    rw = w.reduce_weight
    if rw.dim() != 3 or rw.shape[1] != wide or rw.shape[2] < 1 or rw.shape[2] % channels:
        _fail(ValueError, f"reduce_weight must be (B, R={wide}, Hd) with Hd a multiple of C = {channels}, "
                          f"got {tuple(rw.shape)}")
    blocks, hidden = rw.shape[0], rw.shape[2]
    expected = {"known": (n, channels, width), "uniforms": (width, channels, n),
                "input_bias": (n, width, wide), "block_bias": (blocks, n, width, hidden),
                "reduce_bias": (blocks, hidden), "conv_weight": (blocks, 2 * hidden, hidden),
                "expand_weight": (blocks, hidden, wide), "expand_bias": (blocks, wide),
                "hidden_weight": (wide, wide), "hidden_bias": (wide,),
                "output_weight": (wide, channels * levels), "output_bias": (channels * levels,)}
    for name, t in {"known": known, "uniforms": uniforms, **floats}.items():
        if name in expected and tuple(t.shape) != expected[name]:
            _fail(ValueError, f"{name} must have shape {expected[name]}, got {tuple(t.shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        _fail(ValueError, f"temperature must be a finite number > 0, got {temperature!r}")


def check_known_levels(values, known, levels: int) -> None:
    """The data-dependent check (one device->host sync): the known values are levels.
    The compiled op runs the same check in C++ when check_levels is true."""
    if (known & ((values < 0) | (values >= levels))).any():
        _fail(ValueError, f"known values must be levels in [0, {levels})")


def pixelcnn_row_reference(values: torch.Tensor, known: torch.Tensor, uniforms: torch.Tensor,
                           temperature: float, input_bias: torch.Tensor, block_bias: torch.Tensor,
                           weights: PixelCNNRowWeights):
    """Pure-PyTorch twin of the op: the same sub-steps in per-position torch ops."""
    w = weights
    n, channels, width = values.shape
    levels, features = w.feature_table.shape
    cin = channels * features
    pad = w.input_weight.shape[0] // cin - 1
    blocks, wide, hidden = w.reduce_weight.shape
    gw, gh = wide // channels, hidden // channels
    new = lambda *shape: w.input_weight.new_zeros(shape)  # noqa: E731
    feats = new(n, pad + width, cin)          # row i's features, p zero columns on the left
    reduce_rows = new(blocks, n, 1 + width, hidden)  # relu'd reduce outputs, 1 zero column
    h = new(blocks + 1, n, wide)              # residual stream at (i, j), per block
    conv = new(blocks, n, hidden)             # relu'd 3x3 outputs at (i, j)
    out_hidden = new(n, wide)                 # relu'd output_hidden at (i, j)
    out_values = values.clone()
    logits = new(n, channels, width, levels)
    relu = torch.relu
    for j in range(width):
        for c in range(channels):
            cols, hcols, lcols = (slice(c * gw, (c + 1) * gw), slice(c * gh, (c + 1) * gh),
                                  slice(c * levels, (c + 1) * levels))
            kw, kh = (c + 1) * gw, (c + 1) * gh  # inputs of groups <= c
            k_in = pad * cin + c * features      # mask 'A': groups < c at the centre tap
            x = feats[:, j:j + pad + 1].reshape(n, -1)[:, :k_in]
            h[0][:, cols] = input_bias[:, j, cols] + x @ w.input_weight[:k_in, cols]
            for b in range(blocks):
                r = torch.addmm(w.reduce_bias[b, hcols], relu(h[b][:, :kw]), w.reduce_weight[b, :kw, hcols])
                reduce_rows[b][:, j + 1, hcols] = relu(r)
                x3 = reduce_rows[b][:, j:j + 2].reshape(n, -1)[:, :hidden + kh]
                conv[b][:, hcols] = relu(block_bias[b, :, j, hcols] + x3 @ w.conv_weight[b, :hidden + kh, hcols])
                y = torch.addmm(w.expand_bias[b, cols], conv[b][:, :kh], w.expand_weight[b, :kh, cols])
                h[b + 1][:, cols] = h[b][:, cols] + y
            out_hidden[:, cols] = relu(torch.addmm(w.hidden_bias[cols], relu(h[blocks][:, :kw]),
                                                   w.hidden_weight[:kw, cols]))
            lg = torch.addmm(w.output_bias[lcols], out_hidden[:, :kw], w.output_weight[:kw, lcols])
            logits[:, c, j] = lg
            given = values[:, c, j]  # an unchecked out-of-range value reads as -1
            given = torch.where((given >= 0) & (given < levels), given, -1)
            level = torch.where(known[:, c, j], given, draw_from_logits(lg, uniforms[j, c], temperature))
            out_values[:, c, j] = level
            feature = w.feature_table[level.clamp(min=0)] * (level >= 0).unsqueeze(1).to(feats.dtype)
            feats[:, pad + j, c * features:(c + 1) * features] = feature
    return out_values, logits, reduce_rows[:, :, 1:]


def pixelcnn_row(values: torch.Tensor, known: torch.Tensor, uniforms: torch.Tensor,
                 temperature: float, input_bias: torch.Tensor, block_bias: torch.Tensor,
                 weights: PixelCNNRowWeights, *, impl: str = "auto", check_levels: bool = True):
    """One row of PixelCNN's cached sampler (see the module docstring): returns
    (values (N, C, W) int64, logits (N, C, W, L), reduce_rows (B, N, W, Hd)).
    Sub-pixel (j, c) of image b keeps values[b, c, j] where known[b, c, j], else takes
    draw_from_logits(its logits, uniforms[j, c, b], temperature) (-1 for non-finite
    logits; such a sub-pixel feeds zero features to the later ones).
    impl: "auto" (compiled kernel when available, else the reference), "ext" or "reference".
    check_levels: check that the known values are levels (a device->host sync on a GPU);
    a sampler that checked its images once passes False, and an unchecked out-of-range
    known value then reads as -1.
    """
    check_pixelcnn_row(values, known, uniforms, temperature, input_bias, block_bias, weights)
    if not OP.use_kernel(impl, weights.input_weight):
        if check_levels and not torch.compiler.is_compiling():
            check_known_levels(values, known, weights.feature_table.shape[0])
        return pixelcnn_row_reference(values, known, uniforms, temperature, input_bias, block_bias, weights)
    return torch.ops.genfast.pixelcnn_row(values, known, uniforms, float(temperature), input_bias,
                                          block_bias, list(weights), bool(check_levels))


@OP.register_fake()
def _(values, known, uniforms, temperature, input_bias, block_bias, weights, check_levels=True):
    w = PixelCNNRowWeights(*weights)
    n, channels, width = values.shape
    blocks, _, hidden = w.reduce_weight.shape
    return (values.new_empty((n, channels, width)),
            w.input_weight.new_empty((n, channels, width, w.feature_table.shape[0])),
            w.input_weight.new_empty((blocks, n, width, hidden)))
