"""Cached sampling of PixelCNN++ (genfast.models.PixelCNNpp): the network evaluated
incrementally, each layer computing only the outputs that the newly drawn pixel makes
computable, at its own resolution, from a two-row cache of its input.

Why two rows suffice. Every spatial layer of PixelCNN++ reads at most the rows r - 1
and r of its input for output row r (2 x 3 down-shifted and 2 x 2 down-right-shifted
kernels; the stride-2 ones read rows 2i - 1 and 2i of the finer map for row i; the
transposed ones read row floor(r / 2) of the coarser map). So every map of the network
lives in a ring of two rows, row r in slot r % 2, with one zero column each side (the
convolutions' zero padding); slot 1 starts at zero, which is row -1's padding.

Schedule, for image row r (H x W, resolutions H / 2^s, s = 0, 1, 2):
  * the `u` stream (rows strictly above) depends only on rows < r, so at the start of
    row r it computes one whole row per layer: row r at resolution 0, row r / 2 at
    resolution 1 when r is even, row r / 4 at resolution 2 when r % 4 == 0 (up pass,
    then down pass with its skip rows and transposed convolutions);
  * the `ul` stream (above and to the left) then steps once per pixel (r, c): the
    resolution-0 layers at every pixel, the resolution-1 layers when r and c are
    even (output (r/2, c/2), the first moment it is computable: it reads the
    finer map at (r, c)), the resolution-2 layers when r and c are multiples of 4.
    That is fast-pixel-cnn's "cache every" rule generalised: a layer at stride 2^s
    updates every 2^s rows and columns. The transposed convolutions up read the
    coarser map's cached value at (r // 2, c // 2) (its tap (r % 2, c % 2)).
  * the output layer gives the pixel's DMOL parameters, dmol_sample draws it with
    the pixel's uniforms, and the drawn levels enter the input ring.
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


class _Ring:
    """The last two rows of a map: (n, channels, 2, width + 2), row r in slot r % 2,
    columns shifted by one (zero padding at both ends)."""

    def __init__(self, n: int, channels: int, width: int, like: torch.Tensor):
        self.buf = like.new_zeros((n, channels, 2, width + 2))
        self.width = width

    def patch(self, c: int) -> torch.Tensor:
        """Both slots at columns c - 1, c, flattened: (n, C * 2 * 2), the rows in slot
        order (weights from _phased match it)."""
        return self.buf[:, :, :, c:c + 2].reshape(self.buf.shape[0], -1)

    def row(self, r: int) -> torch.Tensor:
        return self.buf[:, :, r % 2, 1:self.width + 1]

    def put_row(self, r: int, value: torch.Tensor) -> None:
        self.buf[:, :, r % 2, 1:self.width + 1] = value

    def at(self, r: int, c: int) -> torch.Tensor:
        return self.buf[:, :, r % 2, c + 1]

    def put(self, r: int, c: int, value: torch.Tensor) -> None:
        self.buf[:, :, r % 2, c + 1] = value


def _matrix(conv, weight=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's weight as (in * kh * kw, out), the order of a flattened
    (in, kh, kw) patch, and its bias."""
    w = (conv.weight if weight is None else weight).detach()
    return w.reshape(w.shape[0], -1).t().contiguous(), conv.bias.detach()


def _phased(weight: torch.Tensor) -> list[torch.Tensor]:
    """A 2-row kernel for the ring's slot order: at an output row r reading rows r - 1
    and r, slot 0 holds row r when r is even (kernel rows swapped) and row r - 1 when r
    is odd. Index by r % 2. Reading the ring in place this way spares a copy per read."""
    weight = weight.detach()
    # Rows swapped by stacking: torch.flip is ~1 ms per weight on one CPU thread.
    return [torch.stack([weight[:, :, 1], weight[:, :, 0]], dim=2), weight]


def _phased_matrices(conv) -> list[torch.Tensor]:
    return [_matrix(conv, w)[0] for w in _phased(conv.weight)]


class _Block:
    """One gated ResNet block with its caches: the ring of its output and of
    concat_elu(c1) (the input of its second convolution)."""

    def __init__(self, block, n: int, width: int, like, labels):
        f = block.conv_in.out_channels
        self.block = block
        self.out = _Ring(n, f, width, like)
        self.c1 = _Ring(n, 2 * f, width, like)
        self.conv_in = _phased(block.conv_in.weight)
        self.conv_out = _phased(block.conv_out.weight)
        self.w_in, self.w_out = _phased_matrices(block.conv_in), _phased_matrices(block.conv_out)
        self.b_in, self.b_out = block.conv_in.bias.detach(), block.conv_out.bias.detach()
        self.w_skip = None
        if block.skip is not None:
            self.w_skip = block.skip.weight.detach()[:, :, 0, 0].t().contiguous()
            self.b_in = self.b_in + block.skip.bias.detach()  # both biases added once
        self.bias_out = self.b_out
        if block.class_embedding is not None:
            self.bias_out = self.b_out + block.class_embedding(labels).to(like.dtype)  # (n, 2F)

    def row_step(self, source: _Ring, r: int, skip_row: torch.Tensor | None) -> None:
        """Output row r (the u stream: 2 x 3 kernels over whole rows)."""
        c1 = F.conv2d(concat_elu(source.buf), self.conv_in[r % 2], self.b_in)[:, :, 0]
        if skip_row is not None:
            c1 = c1 + torch.einsum("nkw,ko->now", concat_elu(skip_row), self.w_skip)
        self.c1.put_row(r, concat_elu(c1))
        c2 = F.conv2d(self.c1.buf, self.conv_out[r % 2])[:, :, 0] + self.bias_out[..., None]
        a, b = c2.chunk(2, dim=1)
        self.out.put_row(r, torch.addcmul(source.row(r), a, torch.sigmoid(b)))

    def pixel_step(self, source: _Ring, r: int, c: int, skip: torch.Tensor | None) -> None:
        """Output (r, c) (the ul stream: 2 x 2 kernels)."""
        phase = r % 2
        # concat_elu commutes with the flattening: elu of [patch, -patch] as one row.
        c1 = torch.addmm(self.b_in, concat_elu(source.patch(c)), self.w_in[phase])
        if skip is not None:
            c1.addmm_(concat_elu(skip), self.w_skip)
        self.c1.put(r, c, concat_elu(c1))
        c2 = torch.addmm(self.bias_out, self.c1.patch(c), self.w_out[phase])
        a, b = c2.chunk(2, dim=1)
        self.out.put(r, c, torch.addcmul(source.at(r, c), a, torch.sigmoid(b)))


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
    place, in raster order, drawing pixel (r, c) with dmol_sample(params, u[:, :, r, c])
    (u: (n, C + 1, H, W) float64). With keep_params, returns every pixel's parameters
    (n, P, H, W) (teacher forcing when every pixel is known)."""
    params_out = None
    if keep_params:  # allocated outside inference mode: the caller gets an ordinary tensor
        n, _, height, width = x.shape
        params_out = model.output_conv.weight.new_empty((n, model.output_conv.out_channels, height, width))
    # inference_mode rather than no_grad: ~5% less per-op overhead (no version counters
    # or view tracking on the caches); x and params_out are written in place.
    with _intra_op_threads(1 if x.device.type == "cpu" else None), torch.inference_mode():
        _sample_cached(model, x, known, u, labels, temperature, impl, params_out)
    return params_out


def _sample_cached(model, x, known, u, labels, temperature, impl, params_out):
    n, channels, height, width = x.shape
    like = model.output_conv.weight.detach()
    dtype = like.dtype
    nr = model.nr_resnet
    widths = [width >> s for s in range(3)]
    f = model.nr_filters

    def ring(s, ch=f):
        return _Ring(n, ch, widths[s], like)

    def blocks(s, modules):
        return [_Block(b, n, widths[s], like, labels) for b in modules]

    image = ring(0, channels + 1)
    # Up pass, per resolution: the ring of its first map (the initial layer or the
    # stride-2 convolution's output), then the blocks; up[s][k] is u_list's order.
    u_first = [ring(s) for s in range(3)]
    ul_first = [ring(s) for s in range(3)]
    u_up = [blocks(s, model.u_up[s]) for s in range(3)]
    ul_up = [blocks(s, model.ul_up[s]) for s in range(3)]
    u_up_maps = [[u_first[s]] + [b.out for b in u_up[s]] for s in range(3)]
    ul_up_maps = [[ul_first[s]] + [b.out for b in ul_up[s]] for s in range(3)]
    # Down pass: the first map of resolutions 1 and 0 is the transposed convolution's.
    u_dn_first = [ring(0), ring(1), u_up_maps[2][-1]]
    ul_dn_first = [ring(0), ring(1), ul_up_maps[2][-1]]
    u_dn = [blocks(s, model.u_down[s]) for s in range(3)]
    ul_dn = [blocks(s, model.ul_down[s]) for s in range(3)]
    u_dn_maps = [[u_dn_first[s]] + [b.out for b in u_dn[s]] for s in range(3)]
    ul_dn_maps = [[ul_dn_first[s]] + [b.out for b in ul_dn[s]] for s in range(3)]

    w_above, b_above = _matrix(model.ul_init_above)
    w_left, b_left = _phased_matrices(model.ul_init_left), model.ul_init_left.bias.detach()
    u_init_w = _phased(model.u_init.weight)
    u_down_w = [_phased(conv.weight)[0] for conv in model.u_downsample]  # rows 2i - 1, 2i: phase 0
    ul_down_w = [(_phased_matrices(conv)[0], conv.bias.detach()) for conv in model.ul_downsample]
    ul_up_w = [m.weight.detach() for m in model.ul_upsample]  # (in, out, 2, 2)
    w_head, b_head = _matrix(model.output_conv)
    scale = 2.0 / (model.levels - 1)
    finite = torch.ones((), dtype=torch.bool, device=x.device)

    def skip_index(s, k):  # the up-pass map that down-pass block k of resolution s reads
        return nr - 1 - k if s == 2 else nr - k

    def u_rows(s: int, r: int) -> None:
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

    def u_down_rows(s: int, r: int) -> None:
        if s < 2:
            conv = model.u_upsample[s]
            coarse = u_dn_maps[s + 1][-1].row(r // 2).unsqueeze(2)
            up = F.conv_transpose2d(coarse, conv.weight[:, :, r % 2:r % 2 + 1], conv.bias, stride=(1, 2))
            u_dn_first[s].put_row(r, up[:, :, 0, 1:widths[s] + 1])
        for k, block in enumerate(u_dn[s]):
            block.row_step(u_dn_maps[s][k], r, u_up_maps[s][skip_index(s, k)].row(r))

    def ul_up_pixel(s: int, r: int, c: int) -> None:
        if s == 0:
            term = 0.0
            if r > 0:  # down_shift(conv 1x3): image row r - 1, columns c - 1..c + 1
                term = torch.addmm(b_above, image.buf[:, :, (r - 1) % 2, c:c + 3].reshape(n, -1), w_above)
            if c > 0:  # right_shift(conv 2x1): rows r - 1, r of column c - 1
                term = term + torch.addmm(b_left, image.buf[:, :, :, c].reshape(n, -1), w_left[r % 2])
            ul_first[0].put(r, c, term if isinstance(term, torch.Tensor) else
                            like.new_zeros((n, f)))
        else:
            w, b = ul_down_w[s - 1]
            finer = ul_up_maps[s - 1][-1].patch(2 * c)  # rows 2r - 1, 2r: phase 0
            ul_first[s].put(r, c, torch.addmm(b, finer, w))
        for k, block in enumerate(ul_up[s]):
            block.pixel_step(ul_up_maps[s][k], r, c, u_up_maps[s][k + 1].at(r, c))

    def ul_down_pixel(s: int, r: int, c: int) -> None:
        if s < 2:
            coarse = ul_dn_maps[s + 1][-1].at(r // 2, c // 2)
            conv = model.ul_upsample[s]
            ul_dn_first[s].put(r, c, torch.addmm(conv.bias, coarse, ul_up_w[s][:, :, r % 2, c % 2]))
        for k, block in enumerate(ul_dn[s]):
            skip = torch.cat([u_dn_maps[s][k + 1].at(r, c), ul_up_maps[s][skip_index(s, k)].at(r, c)], dim=1)
            block.pixel_step(ul_dn_maps[s][k], r, c, skip)

    for r in range(height):
        # The u stream's rows: everything they read lies above row r.
        u_rows(0, r)
        if r % 2 == 0:
            u_rows(1, r // 2)
        if r % 4 == 0:
            u_rows(2, r // 4)
            u_down_rows(2, r // 4)
        if r % 2 == 0:
            u_down_rows(1, r // 2)
        u_down_rows(0, r)
        for c in range(width):
            ul_up_pixel(0, r, c)
            if r % 2 == 0 and c % 2 == 0:
                ul_up_pixel(1, r // 2, c // 2)
                if r % 4 == 0 and c % 4 == 0:
                    ul_up_pixel(2, r // 4, c // 4)
                    ul_down_pixel(2, r // 4, c // 4)
                ul_down_pixel(1, r // 2, c // 2)
            ul_down_pixel(0, r, c)
            params = torch.addmm(b_head, F.elu(ul_dn_maps[0][-1].at(r, c)), w_head)
            if params_out is not None:
                params_out[:, :, r, c] = params
            finite = finite & torch.isfinite(params).all()
            drawn = model._draw(params[:, :, None, None], u[:, :, r:r + 1, c:c + 1].contiguous(),
                                temperature, impl)[:, :, 0, 0]
            value = torch.where(known[:, r, c, None], x[:, :, r, c], drawn)
            x[:, :, r, c] = value
            image.buf[:, :channels, r % 2, c + 1] = value.to(dtype) * scale - 1.0
            image.buf[:, channels, r % 2, c + 1] = 1.0
    if not bool(finite):
        raise RuntimeError("PixelCNNpp.sample: the network produced non-finite parameters")
