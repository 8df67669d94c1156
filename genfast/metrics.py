"""Metrics of likelihood models."""
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
