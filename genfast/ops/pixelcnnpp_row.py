"""pixelcnnpp_row: one image row of PixelCNN++'s cached sampler, in one call.

PixelCNN++ has two streams: `u` sees the rows strictly above a pixel, `ul` the rows
above and the pixels to the left. For image row r this op first computes the `u`
stream's new rows, layer by layer over whole rows (they depend only on earlier image
rows), then walks the columns: at each column j the `ul` layers at resolution 0, and
at resolutions 1 and 2 when the row and column are multiples of 2 and 4 (the first
moment their output is computable: a stride-2^s layer updates every 2^s rows and
columns — fast-pixel-cnn's "cache every" rule, generalised), the output layer, and the
draw of the pixel with dmol_sample's rule (or the known pixel), whose input features
enter the state for the next columns and rows.

State (updated in place): per resolution s, state_s (N, 2, W >> s, D_s), two rows of
every map of both streams, row q in slot q % 2; per pixel each map's values followed
by their concat_elu (what the next layers read), the blocks' concat_elu'd first
convolutions, and at s = 0 the image features. Every layer reads at most rows q - 1
and q of its input (2 x 3 and 2 x 2 shifted kernels, stride-2 ones reading rows 2q - 1
and 2q of the finer map, transposed ones row q // 2 of the coarser), so two rows
suffice. The exact layout, the schedule and the weights' layout are in
csrc/pixelcnnpp_row.h; `state_depth`, `block_spec`, `pixelcnnpp_u_rows` and
`pixelcnnpp_column` below are its Python twins.

Shapes (N images, C colours, W columns, F filters, nr = nr_resnet, B = 6 nr + 2 blocks
per stream, P DMOL parameters):
  states: state0, state1, state2  (N, 2, W >> s, state_depth(s, nr, F, C)), float,
                                  zeros before row 0
  values (N, C, W) int64, known (N, W) bool, uniforms (W, C + 1, N) float64
  block_out_bias (2, B, N, 2F): each block's second bias + class embedding per image
                                  (ul blocks, then u blocks)
  row: the image row (rows are run in order 0, 1, ...); levels: levels per sub-pixel
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
    """A PixelCNN++'s weights packed for pixelcnnpp_row (one dtype and device; every
    matrix (inputs, outputs), rows tap-major: tap * inputs + channel). The ul stream's:

    init_above (3 (C+1), F), init_above_bias (F): ul_init_above's taps at columns j-1..j+1;
    init_left (2 (C+1), F), init_left_bias (F): ul_init_left's taps at rows i-1, i;
    block_in (B, 12 F, F): each block's first convolution on concat_elu(source) at
    (q-1, c-1), (q-1, c), (q, c-1), (q, c), then its 1x1 on the skip: 2F rows of
    concat_elu(u at (q, c)), and for down blocks 2F rows of concat_elu(the up-pass ul map);
    block_in_bias (B, F): both biases; block_out (B, 8 F, 2 F): the second convolution
    on the four c1 taps; down (2, 4 F, F), down_bias (2, F): the stride-2 convolutions;
    up (2, 4, F, F), up_bias (2, F): the transposed ones, tap 2 (q % 2) + c % 2; head
    (F, P), head_bias (P): the output layer on elu(ul).
    The u stream's (2 x 3 kernels, taps at rows q-1, q and columns c-1..c+1): u_init
    (6 (C+1), F), u_init_bias (F): u_init on feature rows r-2, r-1 (its down-shift);
    u_block_in (B, 14 F, F): the six taps of concat_elu(source), then for down blocks
    the skip's concat_elu; u_block_in_bias (B, F); u_block_out (B, 12 F, 2 F); u_down
    (2, 6 F, F), u_down_bias (2, F); u_up (2, 2, 3, F, F), u_up_bias (2, F): the
    transposed 2 x 3 kernels per kernel row, kernel columns in the order 1, 0, 2.
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
    u_init: torch.Tensor
    u_init_bias: torch.Tensor
    u_block_in: torch.Tensor
    u_block_in_bias: torch.Tensor
    u_block_out: torch.Tensor
    u_down: torch.Tensor
    u_down_bias: torch.Tensor
    u_up: torch.Tensor
    u_up_bias: torch.Tensor


# ---- layout (csrc/pixelcnnpp_row.h) ------------------------------------------------
def num_fmaps(s: int, nr: int) -> int:
    return 2 * nr + 3 if s < 2 else 2 * nr + 1


def c1_offset(s: int, nr: int, f: int) -> int:
    return num_fmaps(s, nr) * 3 * f


def num_c1_maps(s: int, nr: int) -> int:
    return 2 * nr + (s < 2)


def stream_offset(s: int, nr: int, f: int) -> int:
    """Values per pixel of one stream's part of state_s; the u stream's starts there."""
    return c1_offset(s, nr, f) + num_c1_maps(s, nr) * 2 * f


def image_offset(s: int, nr: int, f: int) -> int:
    return 2 * stream_offset(s, nr, f)


def state_depth(s: int, nr: int, f: int, channels: int) -> int:
    """Values per pixel of state_s."""
    return image_offset(s, nr, f) + (channels + 1 if s == 0 else 0)


class BlockSpec(NamedTuple):
    index: int   # into the stream's block weights
    source: int  # F-map read (and added to the output)
    out: int     # F-map written
    c1: int      # c1 map written
    skip: int    # F-map whose concat_elu is the last tap (down blocks), else -1
    down: bool   # a down-pass block


def block_spec(s: int, down: bool, k: int, nr: int) -> BlockSpec:
    """Block k of resolution s's up or down pass (pp_block in the header)."""
    if not down:
        return BlockSpec(s * nr + k, k, k + 1, k, -1, False)
    index = 3 * nr + k if s == 2 else (4 * nr + k if s == 1 else 5 * nr + 1 + k)
    first = nr if s == 2 else nr + 1
    return BlockSpec(index, first + k, first + k + 1, nr + k, nr - 1 - k if s == 2 else nr - k, True)


def num_blocks(nr: int) -> int:
    return 6 * nr + 2


def pixelcnnpp_u_rows(step, row: int, nr: int) -> None:
    """The u stream's rows of image row `row`, layer by layer (pixelcnnpp_u_rows in the header)."""
    step.u_init()
    for k in range(nr):
        step.u_block(0, block_spec(0, False, k, nr), row)
    if row % 2 == 0:
        step.u_down(1, row // 2)
        for k in range(nr):
            step.u_block(1, block_spec(1, False, k, nr), row // 2)
    if row % 4 == 0:
        step.u_down(2, row // 4)
        for k in range(nr):
            step.u_block(2, block_spec(2, False, k, nr), row // 4)
        for k in range(nr):
            step.u_block(2, block_spec(2, True, k, nr), row // 4)
    if row % 2 == 0:
        step.u_up(1, row // 2)
        for k in range(nr + 1):
            step.u_block(1, block_spec(1, True, k, nr), row // 2)
    step.u_up(0, row)
    for k in range(nr + 1):
        step.u_block(0, block_spec(0, True, k, nr), row)


def pixelcnnpp_column(step, row: int, j: int, nr: int) -> None:
    """The ul stream's layers of column j of image row `row`, in order (pixelcnnpp_column in the header)."""
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


def check_pixelcnnpp_row(states, values, known, uniforms, temperature, block_out_bias, row, levels,
                         weights: PixelCNNppRowWeights) -> tuple[int, int, int, int, int]:
    """The op's argument checks (ValueError / TypeError naming the argument); returns
    (N, C, W, F, nr)."""
    if not isinstance(weights, PixelCNNppRowWeights):
        _fail(TypeError, f"weights must be a PixelCNNppRowWeights, got {type(weights).__name__}")
    fixed = {"values": (values, torch.int64), "known": (known, torch.bool), "uniforms": (uniforms, torch.float64)}
    floats = {**{f"state{s}": t for s, t in enumerate(states)}, "block_out_bias": block_out_bias,
              **weights._asdict()}
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
                "head_bias": (w.head.shape[1],), "u_init": (6 * (channels + 1), f), "u_init_bias": (f,),
                "u_block_in": (blocks, 14 * f, f), "u_block_in_bias": (blocks, f), "u_block_out": (blocks, 12 * f, 2 * f),
                "u_down": (2, 6 * f, f), "u_down_bias": (2, f), "u_up": (2, 2, 3, f, f), "u_up_bias": (2, f),
                "block_out_bias": (2, blocks, n, 2 * f),
                "known": (n, width), "uniforms": (width, channels + 1, n)}
    for s in range(3):
        expected[f"state{s}"] = (n, 2, width >> s, state_depth(s, nr, f, channels))
    for name, t in {"known": known, "uniforms": uniforms, **floats}.items():
        if name in expected and tuple(t.shape) != expected[name]:
            _fail(ValueError, f"{name} must have shape {expected[name]}, got {tuple(t.shape)}")
    return n, channels, width, f, nr


def check_known_levels(values, known, levels: int) -> None:
    """The data-dependent check (one device->host sync): the known values are levels."""
    if (known[:, None] & ((values < 0) | (values >= levels))).any():
        _fail(ValueError, f"known values must be levels in [0, {levels})")


class _ReferenceStep:
    """pixelcnnpp_u_rows' and pixelcnnpp_column's step object in per-pixel torch ops
    (the kernels' twin)."""

    def __init__(self, states, values, known, uniforms, temperature, block_out_bias, row, levels,
                 w: PixelCNNppRowWeights, nr: int):
        self.states, self.values, self.known = states, values, known
        self.uniforms, self.temperature, self.bias_out = uniforms, temperature, block_out_bias
        self.row, self.levels, self.w, self.nr = row, levels, w, nr
        self.n, self.channels, self.width = values.shape
        self.f = w.init_above.shape[1]
        self.mixtures = w.head.shape[1] // dmol_num_params(self.channels, 1)
        self.values_out = values.clone()
        self.params = w.head.new_empty((self.n, self.width, w.head.shape[1]))

    def fmap(self, s: int, u: bool, m: int) -> int:
        return (stream_offset(s, self.nr, self.f) if u else 0) + m * 3 * self.f

    def c1map(self, s: int, u: bool, k: int) -> int:
        return (stream_offset(s, self.nr, self.f) if u else 0) + c1_offset(s, self.nr, self.f) + k * 2 * self.f

    def read(self, s: int, q: int, c: int, offset: int, size: int) -> torch.Tensor:
        state = self.states[s]
        if q < 0 or c < 0 or c >= state.shape[2]:
            return state.new_zeros((self.n, size))
        return state[:, q % 2, c, offset:offset + size]

    def taps(self, s, q, c, rows, cols, offset, size):
        return [self.read(s, q + dq, c + dc, offset, size) for dq in rows for dc in cols]

    def put_map(self, s: int, offset: int, q: int, c: int, value: torch.Tensor) -> None:
        self.states[s][:, q % 2, c, offset:offset + 3 * self.f] = torch.cat([value, F.elu(value), F.elu(-value)], 1)

    def put_c1(self, s: int, offset: int, q: int, c: int, t: torch.Tensor) -> None:
        self.states[s][:, q % 2, c, offset:offset + 2 * self.f] = torch.cat([F.elu(t), F.elu(-t)], 1)

    def put_gated(self, s: int, u: bool, b: BlockSpec, q: int, c: int, z: torch.Tensor) -> None:
        f = self.f
        z = z + self.bias_out[int(u), b.index]
        source = self.read(s, q, c, self.fmap(s, u, b.source), f)
        self.put_map(s, self.fmap(s, u, b.out), q, c, source + z[:, :f] * torch.sigmoid(z[:, f:]))

    # ---- the u stream: whole rows ----
    def u_init(self) -> None:
        w, row = self.w, self.row
        for c in range(self.width):
            value = w.u_init.new_zeros((self.n, self.f))
            if row > 0:  # down_shift(conv 2x3): feature rows row - 2, row - 1
                taps = self.taps(0, row, c, (-2, -1), (-1, 0, 1), image_offset(0, self.nr, self.f), self.channels + 1)
                value = torch.addmm(w.u_init_bias, torch.cat(taps, 1), w.u_init)
            self.put_map(0, self.fmap(0, True, 0), row, c, value)

    def u_block(self, s: int, b: BlockSpec, q: int) -> None:
        w, f = self.w, self.f
        c1 = self.c1map(s, True, b.c1)
        for c in range(self.states[s].shape[2]):
            taps = self.taps(s, q, c, (-1, 0), (-1, 0, 1), self.fmap(s, True, b.source) + f, 2 * f)
            if b.down:
                taps.append(self.read(s, q, c, self.fmap(s, True, b.skip) + f, 2 * f))
            weight = w.u_block_in[b.index, :len(taps) * 2 * f]
            self.put_c1(s, c1, q, c, torch.addmm(w.u_block_in_bias[b.index], torch.cat(taps, 1), weight))
        for c in range(self.states[s].shape[2]):  # the c1 row is complete: its c + 1 taps exist
            taps = self.taps(s, q, c, (-1, 0), (-1, 0, 1), c1, 2 * f)
            self.put_gated(s, True, b, q, c, torch.cat(taps, 1) @ w.u_block_out[b.index])

    def u_down(self, s: int, q: int) -> None:  # stride 2: rows 2q - 1, 2q, columns 2c - 1..2c + 1
        f = self.f
        for c in range(self.states[s].shape[2]):
            taps = [self.read(s - 1, 2 * q + dq, 2 * c + dc, self.fmap(s - 1, True, self.nr), f)
                    for dq in (-1, 0) for dc in (-1, 0, 1)]
            value = torch.addmm(self.w.u_down_bias[s - 1], torch.cat(taps, 1), self.w.u_down[s - 1])
            self.put_map(s, self.fmap(s, True, 0), q, c, value)

    def u_up(self, s: int, q: int) -> None:  # transposed 2x3, cropped: row q // 2, kernel row q % 2
        f, w = self.f, self.w.u_up[s, q % 2]  # kernel columns 1, 0, 2
        coarse = self.fmap(s + 1, True, num_fmaps(s + 1, self.nr) - 1)
        for c in range(self.states[s].shape[2]):
            if c % 2 == 0:
                value = self.read(s + 1, q // 2, c // 2, coarse, f) @ w[0]
            else:
                value = (self.read(s + 1, q // 2, (c + 1) // 2, coarse, f) @ w[1] +
                         self.read(s + 1, q // 2, (c - 1) // 2, coarse, f) @ w[2])
            self.put_map(s, self.fmap(s, True, self.nr + 1), q, c, value + self.w.u_up_bias[s])

    # ---- the ul stream: one pixel ----
    def init(self, j: int) -> None:
        w, f, row = self.w, self.f, self.row
        image, cin = image_offset(0, self.nr, f), self.channels + 1
        value = w.init_above.new_zeros((self.n, f))
        if row > 0:
            taps = self.taps(0, row, j, (-1,), (-1, 0, 1), image, cin)
            value = value + torch.addmm(w.init_above_bias, torch.cat(taps, 1), w.init_above)
        if j > 0:
            taps = self.taps(0, row, j, (-1, 0), (-1,), image, cin)
            value = value + torch.addmm(w.init_left_bias, torch.cat(taps, 1), w.init_left)
        self.put_map(0, self.fmap(0, False, 0), row, j, value)

    def block(self, s: int, b: BlockSpec, q: int, c: int) -> None:
        w, f = self.w, self.f
        c1 = self.c1map(s, False, b.c1)
        taps = self.taps(s, q, c, (-1, 0), (-1, 0), self.fmap(s, False, b.source) + f, 2 * f)
        taps.append(self.read(s, q, c, self.fmap(s, True, b.out) + f, 2 * f))  # u at the same position
        if b.down:
            taps.append(self.read(s, q, c, self.fmap(s, False, b.skip) + f, 2 * f))
        weight = w.block_in[b.index, :len(taps) * 2 * f]
        self.put_c1(s, c1, q, c, torch.addmm(w.block_in_bias[b.index], torch.cat(taps, 1), weight))
        taps = self.taps(s, q, c, (-1, 0), (-1, 0), c1, 2 * f)
        self.put_gated(s, False, b, q, c, torch.cat(taps, 1) @ w.block_out[b.index])

    def down(self, s: int, q: int, c: int) -> None:
        f = self.f
        taps = [self.read(s - 1, 2 * q + dq, 2 * c + dc, self.fmap(s - 1, False, self.nr), f)
                for dq in (-1, 0) for dc in (-1, 0)]
        value = torch.addmm(self.w.down_bias[s - 1], torch.cat(taps, 1), self.w.down[s - 1])
        self.put_map(s, self.fmap(s, False, 0), q, c, value)

    def up(self, s: int, q: int, c: int) -> None:
        f = self.f
        coarse = self.read(s + 1, q // 2, c // 2, self.fmap(s + 1, False, num_fmaps(s + 1, self.nr) - 1), f)
        value = torch.addmm(self.w.up_bias[s], coarse, self.w.up[s, 2 * (q % 2) + c % 2])
        self.put_map(s, self.fmap(s, False, self.nr + 1), q, c, value)

    def head(self, j: int) -> None:
        f, w, row, channels = self.f, self.w, self.row, self.channels
        elu = self.read(0, row, j, self.fmap(0, False, num_fmaps(0, self.nr) - 1) + f, f)
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


def pixelcnnpp_row_reference(states, values, known, uniforms, temperature, block_out_bias, row, levels,
                             weights: PixelCNNppRowWeights):
    """Pure-PyTorch twin of the op: the same schedule in per-pixel torch ops; updates
    the states in place, returns (values, params)."""
    nr = (weights.block_in.shape[0] - 2) // 6
    step = _ReferenceStep(states, values, known, uniforms, temperature, block_out_bias, row, levels, weights, nr)
    pixelcnnpp_u_rows(step, row, nr)
    for j in range(values.shape[2]):
        pixelcnnpp_column(step, row, j, nr)
    return step.values_out, step.params


def pixelcnnpp_row(states, values: torch.Tensor, known: torch.Tensor, uniforms: torch.Tensor,
                   temperature: float, block_out_bias: torch.Tensor, row: int, levels: int,
                   weights: PixelCNNppRowWeights, *, impl: str = "auto", check_levels: bool = True):
    """Image row `row` of PixelCNN++'s cached sampler (module docstring): updates
    states (three tensors) in place and returns (values (N, C, W)
    int64, params (N, W, P)). Pixel j of image n keeps values[n, :, j] where
    known[n, j], else takes dmol_sample(its params, uniforms[j, :, n], temperature)
    (-1 for non-finite params; such a pixel feeds zero features to the later ones).
    impl: "auto" (compiled kernel when available, else the reference), "ext" or
    "reference". check_levels: check that the known values are levels (a device->host
    sync on a GPU); unchecked, an out-of-range known value reads as -1.
    """
    states = tuple(states)
    if len(states) != 3:
        _fail(ValueError, f"states must hold 3 tensors (resolutions 0, 1, 2), got {len(states)}")
    check_pixelcnnpp_row(states, values, known, uniforms, temperature, block_out_bias, row, levels,
                         weights)
    if not OP.use_kernel(impl, weights.init_above):
        if check_levels and not torch.compiler.is_compiling():
            check_known_levels(values, known, levels)
        return pixelcnnpp_row_reference(states, values, known, uniforms, temperature, block_out_bias,
                                        row, levels, weights)
    return torch.ops.genfast.pixelcnnpp_row(*states, values, known, uniforms, float(temperature),
                                            block_out_bias, int(row), int(levels), list(weights),
                                            bool(check_levels))


@OP.register_fake()
def _(state0, state1, state2, values, known, uniforms, temperature, block_out_bias,
      row, levels, weights, check_levels=True):
    n, channels, width = values.shape
    head = weights[11]
    return values.new_empty((n, channels, width)), head.new_empty((n, width, head.shape[1]))
