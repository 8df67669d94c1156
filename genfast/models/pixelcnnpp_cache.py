"""Cached sampling of PixelCNN++ (genfast.models.PixelCNNpp): the network evaluated
incrementally, each layer computing only the outputs that the newly drawn pixel makes
computable, at its own resolution, from a two-row cache of its input.

Why two rows suffice. Every spatial layer of PixelCNN++ reads at most the rows r - 1
and r of its input for output row r (2 x 3 down-shifted and 2 x 2 down-right-shifted
kernels; the stride-2 ones read rows 2i - 1 and 2i of the finer map for row i; the
transposed ones read row floor(r / 2) of the coarser map). So every map of the network
lives in a ring of two rows, row r in slot r % 2.

Schedule, for image row r (H x W, resolutions H / 2^s, s = 0, 1, 2):
  * the `u` stream (rows strictly above) depends only on rows < r, so at the start of
    row r it computes one whole row per layer here, with batched convolutions over its
    rings (one zero column each side: the convolutions' padding): row r at resolution
    0, row r / 2 at resolution 1 when r is even, row r / 4 at resolution 2 when
    r % 4 == 0 (up pass, then down pass with its skip rows and transposed convolutions);
  * the `ul` stream (above and to the left), the output layer and the draws then run
    pixel by pixel in one call of the op genfast.ops.pixelcnnpp_row for the whole row
    (its compiled kernel, or its per-pixel PyTorch reference): the resolution-0 layers
    at every pixel, the resolution-1 layers when r and c are even (output (r/2, c/2),
    the first moment it is computable: it reads the finer map at (r, c)), the
    resolution-2 layers when r and c are multiples of 4 — fast-pixel-cnn's "cache
    every" rule generalised: a layer at stride 2^s updates every 2^s rows and columns.
Per pixel this is O(layers * nr_filters^2) work, against the naive sampler's whole
network over up to H x W positions. Cache memory: two rows per map, O(n * layers *
nr_filters * W). The computation is the same arithmetic as the full forward
(convolutions as matrix products over the same taps), so the parameters equal the
full forward's up to float rounding; the draws use the same uniforms.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from genfast.models.pixelcnnpp import concat_elu
from genfast.ops.concat_elu import concat_elu as ops_concat_elu
from genfast.ops.pixelcnnpp_row import PixelCNNppRowWeights, pixelcnnpp_row, state_depth, u_depth


class _Ring:
    """The last two rows of a u-stream map: (n, channels, 2, width + 2), row r in slot
    r % 2, columns shifted by one (zero padding at both ends)."""

    def __init__(self, n: int, channels: int, width: int, like: torch.Tensor):
        self.buf = like.new_zeros((n, channels, 2, width + 2))
        self.width = width

    def row(self, r: int) -> torch.Tensor:
        return self.buf[:, :, r % 2, 1:self.width + 1]

    def put_row(self, r: int, value: torch.Tensor) -> None:
        self.buf[:, :, r % 2, 1:self.width + 1] = value


def _phased(weight: torch.Tensor) -> list[torch.Tensor]:
    """A 2-row kernel for the ring's slot order: at an output row r reading rows r - 1
    and r, slot 0 holds row r when r is even (kernel rows swapped) and row r - 1 when r
    is odd. Index by r % 2. Reading the ring in place this way spares a copy per read."""
    weight = weight.detach()
    # Rows swapped by stacking: torch.flip is ~1 ms per weight on one CPU thread.
    return [torch.stack([weight[:, :, 1], weight[:, :, 0]], dim=2), weight]


class _UBlock:
    """One gated ResNet block of the u stream with its caches: the rings of its output
    and of concat_elu(c1) (the input of its second convolution)."""

    def __init__(self, block, n: int, width: int, like, labels):
        f = block.conv_in.out_channels
        self.out = _Ring(n, f, width, like)
        self.c1 = _Ring(n, 2 * f, width, like)
        self.conv_in = _phased(block.conv_in.weight)
        self.conv_out = _phased(block.conv_out.weight)
        self.b_in = block.conv_in.bias.detach()
        self.w_skip = None
        if block.skip is not None:
            self.w_skip = block.skip.weight.detach()[:, :, 0, 0].t().contiguous()
            self.b_in = self.b_in + block.skip.bias.detach()  # both biases added once
        self.bias_out = _bias_out(block, labels, like.dtype)

    def row_step(self, source: _Ring, r: int, skip_row: torch.Tensor | None) -> None:
        """Output row r (2 x 3 kernels over whole rows)."""
        c1 = F.conv2d(concat_elu(source.buf), self.conv_in[r % 2], self.b_in)[:, :, 0]
        if skip_row is not None:
            c1 = c1 + torch.einsum("nkw,ko->now", concat_elu(skip_row), self.w_skip)
        self.c1.put_row(r, concat_elu(c1))
        c2 = F.conv2d(self.c1.buf, self.conv_out[r % 2])[:, :, 0] + self.bias_out[..., None]
        a, b = c2.chunk(2, dim=1)
        self.out.put_row(r, torch.addcmul(source.row(r), a, torch.sigmoid(b)))


def _bias_out(block, labels, dtype) -> torch.Tensor:
    """A block's second bias plus, when class-conditioned, its class embedding per image:
    (2F,) or (n, 2F)."""
    bias = block.conv_out.bias.detach()
    if block.class_embedding is not None:
        bias = bias + block.class_embedding(labels).to(dtype)
    return bias


def _tap_major(weight: torch.Tensor) -> torch.Tensor:
    """A convolution's weight (out, in, kh, kw) as (kh * kw * in, out): rows tap-major."""
    out, cin, kh, kw = weight.shape
    return weight.detach().permute(2, 3, 1, 0).reshape(kh * kw * cin, out)


def ul_blocks(model) -> list:
    """The ul stream's gated ResNet blocks in pixelcnnpp_row's order: up blocks of
    resolutions 0, 1, 2, then down blocks of resolutions 2, 1, 0."""
    return ([b for s in range(3) for b in model.ul_up[s]] +
            [b for s in (2, 1, 0) for b in model.ul_down[s]])


def pack_row_weights(model, n: int, labels, dtype: torch.dtype) -> tuple[PixelCNNppRowWeights, torch.Tensor]:
    """The model's ul-stream weights packed for genfast.ops.pixelcnnpp_row (dtype, on the
    model's device) and block_out_bias (B, n, 2F) for n images with these labels."""
    f = model.nr_filters
    blocks = ul_blocks(model)
    block_in = []
    for block in blocks:
        skip = block.skip.weight.detach()[:, :, 0, 0].t()  # (2 * skip channels, F), concat_elu order
        if skip.shape[0] == 4 * f:  # [elu u, elu ul, elu -u, elu -ul] -> per map [elu, elu -]
            skip = torch.cat([skip[:f], skip[2 * f:3 * f], skip[f:2 * f], skip[3 * f:]])
        rows = torch.cat([_tap_major(block.conv_in.weight), skip])
        block_in.append(F.pad(rows, (0, 0, 0, 12 * f - rows.shape[0])))
    block_out_bias = torch.stack([_bias_out(b, labels, dtype).expand(n, 2 * f) for b in blocks])
    up = torch.stack([m.weight.detach().permute(2, 3, 0, 1).reshape(4, f, f) for m in model.ul_upsample])
    weights = PixelCNNppRowWeights(
        init_above=_tap_major(model.ul_init_above.weight), init_above_bias=model.ul_init_above.bias.detach(),
        init_left=_tap_major(model.ul_init_left.weight), init_left_bias=model.ul_init_left.bias.detach(),
        block_in=torch.stack(block_in),
        block_in_bias=torch.stack([(b.conv_in.bias + b.skip.bias).detach() for b in blocks]),
        block_out=torch.stack([_tap_major(b.conv_out.weight) for b in blocks]),
        down=torch.stack([_tap_major(m.weight) for m in model.ul_downsample]),
        down_bias=torch.stack([m.bias.detach() for m in model.ul_downsample]),
        up=up, up_bias=torch.stack([m.bias.detach() for m in model.ul_upsample]),
        head=model.output_conv.weight.detach()[:, :, 0, 0].t(), head_bias=model.output_conv.bias.detach())
    weights = PixelCNNppRowWeights(*(t.to(dtype).contiguous() for t in weights))
    return weights, block_out_bias.to(dtype).contiguous()


@contextlib.contextmanager
def _intra_op_threads(count: int | None):
    """torch's intra-op thread count set to count inside (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def sample_cached(model, x: torch.Tensor, known: torch.Tensor, u: torch.Tensor, labels,
                  temperature: float, impl: str, keep_params: bool = False):
    """Fills the pixels of x (n, C, H, W) int64 where known (n, H, W) is False, in
    place, in raster order, drawing pixel (r, c) with dmol_sample(params, u[r, c, :, n])
    (u: (H, W, C + 1, n) float64, sampling_uniforms's layout). With keep_params, returns
    every pixel's parameters (n, P, H, W) (teacher forcing when every pixel is known)."""
    params_out = None
    if keep_params:  # allocated outside inference mode: the caller gets an ordinary tensor
        n, _, height, width = x.shape
        params_out = model.output_conv.weight.new_empty((n, model.output_conv.out_channels, height, width))
    # inference_mode rather than no_grad: ~5% less per-op overhead (no version counters
    # or view tracking on the caches); x and params_out are written in place. The
    # Python-orchestrated reference runs on one intra-op thread: its products are too
    # small to share.
    threads = 1 if x.device.type == "cpu" and impl == "reference" else None
    with _intra_op_threads(threads), torch.inference_mode():
        _sample_cached(model, x, known, u, labels, temperature, impl, params_out)
    return params_out


def _sample_cached(model, x, known, u, labels, temperature, impl, params_out):
    n, channels, height, width = x.shape
    like = model.output_conv.weight.detach()
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    nr = model.nr_resnet
    widths = [width >> s for s in range(3)]
    f = model.nr_filters

    def ring(s, ch=f):
        return _Ring(n, ch, widths[s], like)

    def blocks(s, modules):
        return [_UBlock(b, n, widths[s], like, labels) for b in modules]

    image = ring(0, channels + 1)
    # The u stream, per resolution: the ring of its first map (the initial layer or the
    # stride-2 convolution's output), then the blocks; u_up_maps[s][k] is u_list's order.
    u_first = [ring(s) for s in range(3)]
    u_up = [blocks(s, model.u_up[s]) for s in range(3)]
    u_up_maps = [[u_first[s]] + [b.out for b in u_up[s]] for s in range(3)]
    # Down pass: the first map of resolutions 1 and 0 is the transposed convolution's.
    u_dn_first = [ring(0), ring(1), u_up_maps[2][-1]]
    u_dn = [blocks(s, model.u_down[s]) for s in range(3)]
    u_dn_maps = [[u_dn_first[s]] + [b.out for b in u_dn[s]] for s in range(3)]
    u_init_w = _phased(model.u_init.weight)
    u_down_w = [_phased(conv.weight)[0] for conv in model.u_downsample]  # rows 2i - 1, 2i: phase 0

    # The ul stream's state and weights (genfast.ops.pixelcnnpp_row).
    weights, block_out_bias = pack_row_weights(model, n, labels, dtype)
    states = [like.new_zeros((n, 2, widths[s], state_depth(s, nr, f, channels)), dtype=dtype) for s in range(3)]
    u_rows = [like.new_zeros((n, widths[s], u_depth(s, nr, f)), dtype=dtype) for s in range(3)]
    finite = torch.ones((), dtype=torch.bool, device=x.device)

    def skip_index(s, k):  # the up-pass map that down-pass block k of resolution s reads
        return nr - 1 - k if s == 2 else nr - k

    def image_row(r: int) -> None:
        """Row r of the input features (scaled levels, ones) into the image ring."""
        image.buf[:, :channels, r % 2, 1:width + 1] = x[:, :, r].to(like.dtype) * (2.0 / (model.levels - 1)) - 1.0
        image.buf[:, channels, r % 2, 1:width + 1] = 1.0

    def u_rows_up(s: int, r: int) -> None:
        """Row r of every u map of the up pass at resolution s."""
        if s == 0:
            if r == 0:
                u_first[0].put_row(0, 0.0)
            else:  # the down-shift: row r is the convolution's row r - 1
                u_first[0].put_row(r, F.conv2d(image.buf, u_init_w[(r - 1) % 2], model.u_init.bias)[:, :, 0])
        else:
            conv = model.u_downsample[s - 1]
            u_first[s].put_row(r, F.conv2d(u_up_maps[s - 1][-1].buf, u_down_w[s - 1], conv.bias,
                                           stride=(1, 2))[:, :, 0])
        for k, block in enumerate(u_up[s]):
            block.row_step(u_up_maps[s][k], r, None)

    def u_rows_down(s: int, r: int) -> None:
        if s < 2:
            conv = model.u_upsample[s]
            coarse = u_dn_maps[s + 1][-1].row(r // 2).unsqueeze(2)
            up = F.conv_transpose2d(coarse, conv.weight[:, :, r % 2:r % 2 + 1], conv.bias, stride=(1, 2))
            u_dn_first[s].put_row(r, up[:, :, 0, 1:widths[s] + 1])
        for k, block in enumerate(u_dn[s]):
            block.row_step(u_dn_maps[s][k], r, u_up_maps[s][skip_index(s, k)].row(r))
        # What the ul blocks of this row read: concat_elu of the u maps, per pixel.
        maps = u_up_maps[s][1:] + u_dn_maps[s][1:]
        rows = ops_concat_elu(torch.stack([m.row(r) for m in maps], 1), 2)  # (n, maps, 2F, W)
        u_rows[s] = rows.permute(0, 3, 1, 2).reshape(n, widths[s], -1).to(dtype).contiguous()

    for r in range(height):
        if r > 0:
            image_row(r - 1)
        # The u stream's rows: everything they read lies above row r.
        u_rows_up(0, r)
        if r % 2 == 0:
            u_rows_up(1, r // 2)
        if r % 4 == 0:
            u_rows_up(2, r // 4)
            u_rows_down(2, r // 4)
        if r % 2 == 0:
            u_rows_down(1, r // 2)
        u_rows_down(0, r)
        values, params = pixelcnnpp_row(states, u_rows, x[:, :, r], known[:, r], u[r], temperature,
                                        block_out_bias, r, model.levels, weights, impl=impl,
                                        check_levels=False)
        if params_out is not None:
            params_out[:, :, r] = params.transpose(1, 2)
        finite = finite & torch.isfinite(params).all()
        x[:, :, r] = values
    if not bool(finite):
        raise RuntimeError("PixelCNNpp.sample: the network produced non-finite parameters")
