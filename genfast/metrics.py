"""Metrics: bits per dimension of likelihood models, mode coverage of the GAN toy."""
from __future__ import annotations

import math

import torch


def bits_per_dim(nll_nats: torch.Tensor | float, dims: int = 1) -> torch.Tensor | float:
    """Negative log-likelihood in nats over `dims` dimensions -> bits per dimension.
    With the mean NLL per sub-pixel (what the models' loss returns) dims is 1; with an
    image's total NLL it is the number of sub-pixels, channels * H * W."""
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        raise ValueError(f"bits_per_dim: dims must be a positive int, got {dims!r}")
    return nll_nats / (dims * math.log(2))


# Mode coverage on the 8-Gaussians ring (genfast.data.ring8_centers): a mode counts as
# covered when at least 1% of the samples lie within this distance of its centre
# (neighbouring centres are 1.08 apart).
MODE_RADIUS = 0.25
MODE_MIN_FRACTION = 0.01


def mode_coverage(samples: torch.Tensor) -> tuple[int, float]:
    """(modes covered, fraction of samples within MODE_RADIUS of some mode) for 2-D
    samples of the 8-Gaussians ring."""
    from genfast.data import RING_MODES, ring8_centers

    dist = torch.cdist(samples.float().cpu(), ring8_centers())
    nearest, mode = dist.min(1)
    close = nearest < MODE_RADIUS
    counts = torch.bincount(mode[close], minlength=RING_MODES)
    covered = int((counts >= MODE_MIN_FRACTION * len(samples)).sum())
    return covered, float(close.float().mean())
