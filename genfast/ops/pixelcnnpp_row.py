"""pixelcnnpp_row: the `ul` stream of one image row of PixelCNN++'s cached sampler.

PixelCNN++'s cached sampler (genfast.models.pixelcnnpp_cache) computes the `u` stream
(rows strictly above a pixel) one whole row per layer with batched convolutions at the
start of each image row; this op then runs everything that depends on the pixels to
the left, for the whole row in one call: at each column j, the ul layers at resolution
0, and at resolutions 1 and 2 when the row and column are multiples of 2 and 4 (the
first moment their output is computable: a stride-2^s layer updates every 2^s rows
and columns), the output layer, and the draw of the pixel with dmol_sample's rule (or
the known pixel), whose input features enter the state for the next columns and rows.

State (updated in place): per resolution s, state_s (N, 2, W >> s, D_s), two rows of
every ul map, row q in slot q % 2; per pixel each F-map's values followed by their
concat_elu (what the next layers read), the blocks' concat_elu'd first convolutions,
and at s = 0 the image features. Every layer reads at most rows q - 1 and q of its
input (2 x 2 down-right-shifted kernels, stride-2 ones reading rows 2q - 1 and 2q of
the finer map, transposed ones row q // 2 of the coarser), so two rows suffice. The
exact layout, the per-column schedule and the weights' layout are in
csrc/pixelcnnpp_row.h; `state_depth`, `u_depth` and `block_spec` below are its Python
twins.

Shapes (N images, C colours, W columns, F filters, nr = nr_resnet, B = 6 nr + 2 blocks,
P DMOL parameters):
  state0, state1, state2   (N, 2, W >> s, state_depth(s, nr, F, C)), float
  u_rows0, u_rows1, u_rows2 (N, W >> s, u_depth(s, nr, F)): concat_elu of the u maps
                           on the resolution's current row (read when updated)
  values (N, C, W) int64, known (N, W) bool, uniforms (W, C + 1, N) float64
  block_out_bias (B, N, 2F): each block's second bias + class embedding per image
  row: the image row; levels: the levels per sub-pixel
  PixelCNNppRowWeights: packed by genfast.models.pixelcnnpp_cache.pack_row_weights
returns (values (N, C, W) int64, -1 where a drawn pixel's parameters were not finite;
params (N, W, P)).

`pixelcnnpp_row_reference` runs the same schedule in per-pixel torch ops: the fallback,
the test oracle and `PixelCNNpp.sample(method="cached", impl="reference")`. Kernels:
csrc/cpu/pixelcnnpp_row.cpp, csrc/cuda/pixelcnnpp_row.cu; schema in csrc/schemas.cpp.
Sampling only: the op has no autograd.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from genfast.ops._checks import check_tensors
from genfast.ops._registry import register_op
from genfast.ops.dmol import dmol_num_params, dmol_sample_reference

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64),
}
OP = register_op("pixelcnnpp_row", module=__name__, kernel_dtypes=KERNEL_DTYPES)


class PixelCNNppRowWeights(NamedTuple):
    """A PixelCNN++'s ul-stream weights packed for pixelcnnpp_row (one dtype and device;
    every matrix (inputs, outputs), rows tap-major: tap * inputs + channel).

    init_above (3 (C+1), F), init_above_bias (F): ul_init_above's taps at columns j-1..j+1;
    init_left (2 (C+1), F), init_left_bias (F): ul_init_left's taps at rows i-1, i;
    block_in (B, 12 F, F): each block's first convolution on concat_elu(source) at
    (q-1, c-1), (q-1, c), (q, c-1), (q, c), then its 1x1 on the skip: 2F rows of
    concat_elu(u), and for down blocks 2F rows of concat_elu(the up-pass ul map);
    block_in_bias (B, F): both biases; block_out (B, 8 F, 2 F): the second convolution
    on the four c1 taps; down (2, 4 F, F), down_bias (2, F): the stride-2 convolutions;
    up (2, 4, F, F), up_bias (2, F): the transposed ones, tap 2 (q % 2) + c % 2; head
    (F, P), head_bias (P): the output layer on elu(ul).
    """
    init_above: torch.Tensor
    init_above_bias: torch.Tensor
    init_left: torch.Tensor
    init_left_bias: torch.Tensor
    block_in: torch.Tensor
    block_in_bias: torch.Tensor
    block_out: torch.Tensor
    down: torch.Tensor
    down_bias: torch.Tensor
    up: torch.Tensor
    up_bias: torch.Tensor
    head: torch.Tensor
    head_bias: torch.Tensor


# ---- layout (csrc/pixelcnnpp_row.h) ------------------------------------------------
def num_fmaps(s: int, nr: int) -> int:
    return 2 * nr + 3 if s < 2 else 2 * nr + 1


def c1_offset(s: int, nr: int, f: int) -> int:
    return num_fmaps(s, nr) * 3 * f


def num_c1_maps(s: int, nr: int) -> int:
    return 2 * nr + (s < 2)


def image_offset(s: int, nr: int, f: int) -> int:
    return c1_offset(s, nr, f) + num_c1_maps(s, nr) * 2 * f


def state_depth(s: int, nr: int, f: int, channels: int) -> int:
    """Values per pixel of state_s."""
    return image_offset(s, nr, f) + (channels + 1 if s == 0 else 0)


def u_depth(s: int, nr: int, f: int) -> int:
    """Values per pixel of u_rows_s: concat_elu of nr up-pass and nr + (s < 2) down-pass maps."""
    return (2 * nr + (s < 2)) * 2 * f


class BlockSpec(NamedTuple):
    index: int   # into the block weights
    source: int  # F-map read (and added to the output)
    out: int     # F-map written
    c1: int      # c1 map written
    u_tap: int   # map of u_rows_s
    skip: int    # F-map whose concat_elu is the last tap (down blocks), else -1
    taps: int    # taps of 2F rows of block_in


def block_spec(s: int, down: bool, k: int, nr: int) -> BlockSpec:
    """Block k of resolution s's up or down pass (pp_block in the header)."""
    if not down:
        return BlockSpec(s * nr + k, k, k + 1, k, k, -1, 5)
    index = 3 * nr + k if s == 2 else (4 * nr + k if s == 1 else 5 * nr + 1 + k)
    first = nr if s == 2 else nr + 1
    return BlockSpec(index, first + k, first + k + 1, nr + k, nr + k, nr - 1 - k if s == 2 else nr - k, 6)


def num_blocks(nr: int) -> int:
    return 6 * nr + 2


def pixelcnnpp_column(step, row: int, j: int, nr: int) -> None:
    """The layers of column j of image row `row`, in order (pixelcnnpp_column in the header)."""
    step.init(j)
    for k in range(nr):
        step.block(0, block_spec(0, False, k, nr), row, j)
    if row % 2 == 0 and j % 2 == 0:
        q1, c1 = row // 2, j // 2
        step.down(1, q1, c1)
        for k in range(nr):
            step.block(1, block_spec(1, False, k, nr), q1, c1)
        if row % 4 == 0 and j % 4 == 0:
            q2, c2 = row // 4, j // 4
            step.down(2, q2, c2)
            for k in range(nr):
                step.block(2, block_spec(2, False, k, nr), q2, c2)
            for k in range(nr):
                step.block(2, block_spec(2, True, k, nr), q2, c2)
        step.up(1, q1, c1)
        for k in range(nr + 1):
            step.block(1, block_spec(1, True, k, nr), q1, c1)
    step.up(0, row, j)
    for k in range(nr + 1):
        step.block(0, block_spec(0, True, k, nr), row, j)
    step.head(j)


def _fail(error, message):
    raise error(f"pixelcnnpp_row: {message}")


def check_pixelcnnpp_row(states, u_rows, values, known, uniforms, temperature, block_out_bias, row,
                         levels, weights: PixelCNNppRowWeights) -> tuple[int, int, int, int, int]:
    """The op's argument checks (ValueError / TypeError naming the argument); returns
    (N, C, W, F, nr)."""
    if not isinstance(weights, PixelCNNppRowWeights):
        _fail(TypeError, f"weights must be a PixelCNNppRowWeights, got {type(weights).__name__}")
    fixed = {"values": (values, torch.int64), "known": (known, torch.bool), "uniforms": (uniforms, torch.float64)}
    floats = {**{f"state{s}": t for s, t in enumerate(states)}, **{f"u_rows{s}": t for s, t in enumerate(u_rows)},
              "block_out_bias": block_out_bias, **weights._asdict()}
    check_tensors("pixelcnnpp_row", fixed, floats, "init_above", (torch.float32, torch.float64))
    if values.dim() != 3 or values.numel() == 0 or values.shape[1] not in (1, 3):
        _fail(ValueError, f"values must be a non-empty (N, C, W) tensor with C = 1 or 3, got shape "
                          f"{tuple(values.shape)}")
    n, channels, width = values.shape
    if width % 4:
        _fail(ValueError, f"the row width must be a multiple of 4, got {width}")
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        _fail(ValueError, f"row must be an int >= 0, got {row!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        _fail(ValueError, f"levels must be an int >= 2, got {levels!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        _fail(ValueError, f"temperature must be a finite number > 0, got {temperature!r}")
    w = weights
    if w.init_above.dim() != 2 or w.init_above.shape[0] != 3 * (channels + 1) or w.init_above.shape[1] < 1:
        _fail(ValueError, f"init_above must be (3 (C + 1), F) with C = {channels}, got {tuple(w.init_above.shape)}")
    f = w.init_above.shape[1]
    bi = w.block_in
    if bi.dim() != 3 or bi.shape[0] < 8 or (bi.shape[0] - 2) % 6:
        _fail(ValueError, f"block_in must be (6 nr + 2, 12 F, F), got {tuple(bi.shape)}")
    nr, blocks = (bi.shape[0] - 2) // 6, bi.shape[0]
    per_mixture = dmol_num_params(channels, 1)
    if w.head.dim() != 2 or w.head.shape[0] != f or w.head.shape[1] < 1 or w.head.shape[1] % per_mixture:
        _fail(ValueError, f"head must be (F = {f}, P) with P a multiple of {per_mixture} ({channels} colours), "
                          f"got {tuple(w.head.shape)}")
    expected = {"init_above_bias": (f,), "init_left": (2 * (channels + 1), f), "init_left_bias": (f,),
                "block_in": (blocks, 12 * f, f), "block_in_bias": (blocks, f), "block_out": (blocks, 8 * f, 2 * f),
                "down": (2, 4 * f, f), "down_bias": (2, f), "up": (2, 4, f, f), "up_bias": (2, f),
                "head_bias": (w.head.shape[1],), "block_out_bias": (blocks, n, 2 * f),
                "known": (n, width), "uniforms": (width, channels + 1, n)}
    for s in range(3):
        expected[f"state{s}"] = (n, 2, width >> s, state_depth(s, nr, f, channels))
        expected[f"u_rows{s}"] = (n, width >> s, u_depth(s, nr, f))
    for name, t in {"known": known, "uniforms": uniforms, **floats}.items():
        if name in expected and tuple(t.shape) != expected[name]:
            _fail(ValueError, f"{name} must have shape {expected[name]}, got {tuple(t.shape)}")
    return n, channels, width, f, nr


def check_known_levels(values, known, levels: int) -> None:
    """The data-dependent check (one device->host sync): the known values are levels."""
    if (known[:, None] & ((values < 0) | (values >= levels))).any():
        _fail(ValueError, f"known values must be levels in [0, {levels})")


class _ReferenceStep:
    """pixelcnnpp_column's step object in per-pixel torch ops (the kernels' twin)."""

    def __init__(self, states, u_rows, values, known, uniforms, temperature, block_out_bias, row, levels,
                 w: PixelCNNppRowWeights, nr: int):
        self.states, self.u_rows, self.values, self.known = states, u_rows, values, known
        self.uniforms, self.temperature, self.bias_out = uniforms, temperature, block_out_bias
        self.row, self.levels, self.w, self.nr = row, levels, w, nr
        self.n, self.channels, self.width = values.shape
        self.f = w.init_above.shape[1]
        self.mixtures = w.head.shape[1] // dmol_num_params(self.channels, 1)
        self.values_out = values.clone()
        self.params = w.head.new_empty((self.n, self.width, w.head.shape[1]))

    def read(self, s: int, q: int, c: int, offset: int, size: int) -> torch.Tensor:
        state = self.states[s]
        if q < 0 or c < 0 or c >= state.shape[2]:
            return state.new_zeros((self.n, size))
        return state[:, q % 2, c, offset:offset + size]

    def put_map(self, s: int, m: int, q: int, c: int, value: torch.Tensor) -> None:
        f = self.f
        self.states[s][:, q % 2, c, m * 3 * f:(m + 1) * 3 * f] = torch.cat([value, F.elu(value), F.elu(-value)], 1)

    def init(self, j: int) -> None:
        w, f, row = self.w, self.f, self.row
        image, cin = image_offset(0, self.nr, f), self.channels + 1
        value = w.init_above.new_zeros((self.n, f))
        if row > 0:
            taps = [self.read(0, row - 1, j - 1 + t, image, cin) for t in range(3)]
            value = value + torch.addmm(w.init_above_bias, torch.cat(taps, 1), w.init_above)
        if j > 0:
            taps = [self.read(0, row - 1, j - 1, image, cin), self.read(0, row, j - 1, image, cin)]
            value = value + torch.addmm(w.init_left_bias, torch.cat(taps, 1), w.init_left)
        self.put_map(0, 0, row, j, value)

    def block(self, s: int, b: BlockSpec, q: int, c: int) -> None:
        w, f = self.w, self.f
        c1 = c1_offset(s, self.nr, f) + b.c1 * 2 * f
        ce = b.source * 3 * f + f
        taps = [self.read(s, q - 1, c - 1, ce, 2 * f), self.read(s, q - 1, c, ce, 2 * f),
                self.read(s, q, c - 1, ce, 2 * f), self.read(s, q, c, ce, 2 * f),
                self.u_rows[s][:, c, b.u_tap * 2 * f:(b.u_tap + 1) * 2 * f]]
        if b.skip >= 0:
            taps.append(self.read(s, q, c, b.skip * 3 * f + f, 2 * f))
        t = torch.addmm(w.block_in_bias[b.index], torch.cat(taps, 1), w.block_in[b.index, :b.taps * 2 * f])
        self.states[s][:, q % 2, c, c1:c1 + 2 * f] = torch.cat([F.elu(t), F.elu(-t)], 1)
        taps = [self.read(s, q - 1, c - 1, c1, 2 * f), self.read(s, q - 1, c, c1, 2 * f),
                self.read(s, q, c - 1, c1, 2 * f), self.read(s, q, c, c1, 2 * f)]
        z = torch.cat(taps, 1) @ w.block_out[b.index] + self.bias_out[b.index]
        source = self.read(s, q, c, b.source * 3 * f, f)
        self.put_map(s, b.out, q, c, source + z[:, :f] * torch.sigmoid(z[:, f:]))

    def down(self, s: int, q: int, c: int) -> None:
        f = self.f
        taps = [self.read(s - 1, 2 * q - 1 + t // 2, 2 * c - 1 + t % 2, self.nr * 3 * f, f) for t in range(4)]
        self.put_map(s, 0, q, c, torch.addmm(self.w.down_bias[s - 1], torch.cat(taps, 1), self.w.down[s - 1]))

    def up(self, s: int, q: int, c: int) -> None:
        f = self.f
        coarse = self.read(s + 1, q // 2, c // 2, (num_fmaps(s + 1, self.nr) - 1) * 3 * f, f)
        value = torch.addmm(self.w.up_bias[s], coarse, self.w.up[s, 2 * (q % 2) + c % 2])
        self.put_map(s, self.nr + 1, q, c, value)

    def head(self, j: int) -> None:
        f, w, row, channels = self.f, self.w, self.row, self.channels
        elu = self.read(0, row, j, (num_fmaps(0, self.nr) - 1) * 3 * f + f, f)
        params = torch.addmm(w.head_bias, elu, w.head)
        self.params[:, j] = params
        finite = torch.isfinite(params).all(1)
        drawn = dmol_sample_reference(torch.where(finite[:, None], params, 0)[:, :, None, None],
                                      self.uniforms[j].t()[:, :, None, None], num_mixtures=self.mixtures,
                                      levels=self.levels, temperature=self.temperature)[:, :, 0, 0]
        drawn = torch.where(finite[:, None], drawn, -1)
        given = self.values[:, :, j]  # an unchecked out-of-range value reads as -1
        given = torch.where((given >= 0) & (given < self.levels), given, -1)
        level = torch.where(self.known[:, j, None], given, drawn)
        self.values_out[:, :, j] = level
        scale = 2.0 / (self.levels - 1)
        features = torch.where(level >= 0, level.to(params.dtype) * scale - 1.0, 0.0)
        image = image_offset(0, self.nr, f)
        state = self.states[0]
        state[:, row % 2, j, image:image + channels] = features
        state[:, row % 2, j, image + channels] = 1.0


def pixelcnnpp_row_reference(states, u_rows, values, known, uniforms, temperature, block_out_bias, row, levels,
                             weights: PixelCNNppRowWeights):
    """Pure-PyTorch twin of the op: the same schedule in per-pixel torch ops; updates
    the states in place, returns (values, params)."""
    nr = (weights.block_in.shape[0] - 2) // 6
    step = _ReferenceStep(states, u_rows, values, known, uniforms, temperature, block_out_bias, row, levels,
                          weights, nr)
    for j in range(values.shape[2]):
        pixelcnnpp_column(step, row, j, nr)
    return step.values_out, step.params


def pixelcnnpp_row(states, u_rows, values: torch.Tensor, known: torch.Tensor, uniforms: torch.Tensor,
                   temperature: float, block_out_bias: torch.Tensor, row: int, levels: int,
                   weights: PixelCNNppRowWeights, *, impl: str = "auto", check_levels: bool = True):
    """The ul stream of image row `row` of PixelCNN++'s cached sampler (module
    docstring): updates states (three tensors) in place and returns (values (N, C, W)
    int64, params (N, W, P)). Pixel j of image n keeps values[n, :, j] where
    known[n, j], else takes dmol_sample(its params, uniforms[j, :, n], temperature)
    (-1 for non-finite params; such a pixel feeds zero features to the later ones).
    impl: "auto" (compiled kernel when available, else the reference), "ext" or
    "reference". check_levels: check that the known values are levels (a device->host
    sync on a GPU); unchecked, an out-of-range known value reads as -1.
    """
    states, u_rows = tuple(states), tuple(u_rows)
    if len(states) != 3 or len(u_rows) != 3:
        _fail(ValueError, f"states and u_rows must hold 3 tensors (resolutions 0, 1, 2), got "
                          f"{len(states)} and {len(u_rows)}")
    check_pixelcnnpp_row(states, u_rows, values, known, uniforms, temperature, block_out_bias, row, levels,
                         weights)
    if not OP.use_kernel(impl, weights.init_above):
        if check_levels and not torch.compiler.is_compiling():
            check_known_levels(values, known, levels)
        return pixelcnnpp_row_reference(states, u_rows, values, known, uniforms, temperature, block_out_bias,
                                        row, levels, weights)
    return torch.ops.genfast.pixelcnnpp_row(*states, *u_rows, values, known, uniforms, float(temperature),
                                            block_out_bias, int(row), int(levels), list(weights),
                                            bool(check_levels))


@OP.register_fake()
def _(state0, state1, state2, u_rows0, u_rows1, u_rows2, values, known, uniforms, temperature, block_out_bias,
      row, levels, weights, check_levels=True):
    n, channels, width = values.shape
    head = weights[11]
    return values.new_empty((n, channels, width)), head.new_empty((n, width, head.shape[1]))
