"""The randomness of autoregressive image sampling, shared by every genfast sampler.

A sampler that draws its uniforms with `sampling_uniforms` and turns each sub-pixel's
logits into a value with `inverse_cdf` produces exactly the images of any other
sampler fed the same generator state (up to the rounding of the logits themselves),
whatever order it computes the network in.
"""
from __future__ import annotations

import torch


def sampling_uniforms(n: int, channels: int, height: int, width: int,
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The uniforms of one sampling call, indexed u[i, j, c, b] for sub-pixel
    (row i, column j, colour c) of image b.

    They come from ONE call, torch.rand((height, width, channels, n), dtype=float64)
    with `generator` on the generator's device (on `device` with torch's default
    generator when `generator` is None), so the generator is consumed in raster order,
    colours R, G, B within a pixel, images within a sub-pixel. Every sub-pixel gets its
    uniform, known ones (image completion) included, so the consumption does not depend
    on what is known. The result is moved to `device`.
    """
    gen_device = generator.device if generator is not None else device
    u = torch.rand((height, width, channels, n), generator=generator, dtype=torch.float64,
                   device=gen_device)
    return u.to(device)


def inverse_cdf(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Draws one level per row of `logits` (n, levels) with the uniforms `u` (n,).

    In float64: z = logits / temperature; w = exp(z - max z); cdf = cumsum(w) over the
    levels; the value is the number of levels k with cdf[k] <= u * cdf[-1] (clamped to
    levels - 1 against rounding at u -> 1). No normalisation step, so nothing depends
    on how a softmax sums.
    """
    z = logits.to(torch.float64) / temperature
    w = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    cdf = w.cumsum(dim=-1)
    value = (cdf <= u.to(torch.float64).unsqueeze(-1) * cdf[..., -1:]).sum(dim=-1)
    return value.clamp_(max=logits.shape[-1] - 1)
