"""The randomness of autoregressive image sampling, shared by every genfast sampler.

A sampler that draws its uniforms with `sampling_uniforms` and turns each sub-pixel's
logits into a value with `inverse_cdf` produces exactly the images of any other
sampler fed the same generator state (up to the rounding of the logits themselves),
whatever order it computes the network in. (inverse_cdf lives beside the ops, whose
reference twins draw with it too.)
"""
from __future__ import annotations

import torch

from genfast.ops._draw import inverse_cdf  # noqa: F401 - part of this module's API


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
