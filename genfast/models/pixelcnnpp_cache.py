"""Cached sampling of PixelCNN++ (genfast.models.PixelCNNpp): the network evaluated
incrementally, each layer computing only the outputs that the newly drawn pixel makes
computable, at its own resolution, from a two-row cache of its input.

Why two rows suffice. Every spatial layer of PixelCNN++ reads at most the rows r - 1
and r of its input for output row r (2 x 3 down-shifted and 2 x 2 down-right-shifted
kernels; the stride-2 ones read rows 2i - 1 and 2i of the finer map for row i; the
transposed ones read row floor(r / 2) of the coarser map). So every map of the network
lives in a ring of two rows, row r in slot r % 2.

Schedule, for image row r (H x W, resolutions H / 2^s, s = 0, 1, 2), one call of the
op genfast.ops.pixelcnnpp_row (its compiled kernel, or its per-pixel PyTorch reference):
  * the `u` stream (rows strictly above) depends only on rows < r, so it computes one
    whole row per layer first: row r at resolution 0, row r / 2 at resolution 1 when r
    is even, row r / 4 at resolution 2 when r % 4 == 0 (up pass, then down pass with
    its skip rows and transposed convolutions);
  * the `ul` stream (above and to the left), the output layer and the draws then run
    pixel by pixel: the resolution-0 layers at every pixel, the resolution-1 layers
    when r and c are even (output (r/2, c/2), the first moment it is computable: it
    reads the finer map at (r, c)), the resolution-2 layers when r and c are multiples
    of 4 — fast-pixel-cnn's "cache every" rule generalised: a layer at stride 2^s
    updates every 2^s rows and columns.
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

from genfast.ops.pixelcnnpp_row import PixelCNNppRowWeights, pixelcnnpp_row, state_depth


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


def stream_blocks(model, stream: str) -> list:
    """A stream's ("ul" or "u") gated ResNet blocks in pixelcnnpp_row's order: up blocks
    of resolutions 0, 1, 2, then down blocks of resolutions 2, 1, 0."""
    up, down = getattr(model, stream + "_up"), getattr(model, stream + "_down")
    return [b for s in range(3) for b in up[s]] + [b for s in (2, 1, 0) for b in down[s]]


def _block_in(blocks, f: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each block's first convolution (tap-major) stacked over its skip's 1x1, zero-padded
    to `rows`, and both biases."""
    weights, biases = [], []
    for block in blocks:
        w = _tap_major(block.conv_in.weight)
        bias = block.conv_in.bias.detach()
        if block.skip is not None:
            skip = block.skip.weight.detach()[:, :, 0, 0].t()  # (2 * skip channels, F), concat_elu order
            if skip.shape[0] == 4 * f:  # [elu u, elu ul, elu -u, elu -ul] -> per map [elu, elu -]
                skip = torch.cat([skip[:f], skip[2 * f:3 * f], skip[f:2 * f], skip[3 * f:]])
            w, bias = torch.cat([w, skip]), bias + block.skip.bias.detach()
        weights.append(F.pad(w, (0, 0, 0, rows - w.shape[0])))
        biases.append(bias)
    return torch.stack(weights), torch.stack(biases)


def pack_row_weights(model, n: int, labels, dtype: torch.dtype) -> tuple[PixelCNNppRowWeights, torch.Tensor]:
    """The model's weights packed for genfast.ops.pixelcnnpp_row (dtype, on the model's
    device) and block_out_bias (2, B, n, 2F) for n images with these labels."""
    f = model.nr_filters
    ul, u = stream_blocks(model, "ul"), stream_blocks(model, "u")
    block_in, block_in_bias = _block_in(ul, f, 12 * f)
    u_block_in, u_block_in_bias = _block_in(u, f, 14 * f)
    block_out_bias = torch.stack([torch.stack([_bias_out(b, labels, dtype).expand(n, 2 * f) for b in blocks])
                                  for blocks in (ul, u)])
    # Transposed 2 x 3 kernels (in, out, kh, kw) -> (kh, kw in the order 1, 0, 2, in, out).
    u_up = torch.stack([m.weight.detach()[:, :, :, [1, 0, 2]].permute(2, 3, 0, 1) for m in model.u_upsample])
    weights = PixelCNNppRowWeights(
        init_above=_tap_major(model.ul_init_above.weight), init_above_bias=model.ul_init_above.bias.detach(),
        init_left=_tap_major(model.ul_init_left.weight), init_left_bias=model.ul_init_left.bias.detach(),
        block_in=block_in, block_in_bias=block_in_bias,
        block_out=torch.stack([_tap_major(b.conv_out.weight) for b in ul]),
        down=torch.stack([_tap_major(m.weight) for m in model.ul_downsample]),
        down_bias=torch.stack([m.bias.detach() for m in model.ul_downsample]),
        up=torch.stack([m.weight.detach().permute(2, 3, 0, 1).reshape(4, f, f) for m in model.ul_upsample]),
        up_bias=torch.stack([m.bias.detach() for m in model.ul_upsample]),
        head=model.output_conv.weight.detach()[:, :, 0, 0].t(), head_bias=model.output_conv.bias.detach(),
        u_init=_tap_major(model.u_init.weight), u_init_bias=model.u_init.bias.detach(),
        u_block_in=u_block_in, u_block_in_bias=u_block_in_bias,
        u_block_out=torch.stack([_tap_major(b.conv_out.weight) for b in u]),
        u_down=torch.stack([_tap_major(m.weight) for m in model.u_downsample]),
        u_down_bias=torch.stack([m.bias.detach() for m in model.u_downsample]),
        u_up=u_up, u_up_bias=torch.stack([m.bias.detach() for m in model.u_upsample]))
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
    nr, f = model.nr_resnet, model.nr_filters
    weights, block_out_bias = pack_row_weights(model, n, labels, dtype)
    states = [like.new_zeros((n, 2, width >> s, state_depth(s, nr, f, channels)), dtype=dtype) for s in range(3)]
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    for r in range(height):
        values, params = pixelcnnpp_row(states, x[:, :, r], known[:, r], u[r], temperature, block_out_bias, r,
                                        model.levels, weights, impl=impl, check_levels=False)
        if params_out is not None:
            params_out[:, :, r] = params.transpose(1, 2)
        finite = finite & torch.isfinite(params).all()
        x[:, :, r] = values
    if not bool(finite):
        raise RuntimeError("PixelCNNpp.sample: the network produced non-finite parameters")
