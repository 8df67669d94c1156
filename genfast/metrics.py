"""Metrics: bits per dimension of likelihood models, mode coverage of the GAN toy."""
from __future__ import annotations

import math
from typing import NamedTuple

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


class ImportanceWeightedNLL(NamedTuple):
    per_image: torch.Tensor  # (N,) float64: -log of the k-sample importance-weighted estimate, nats
    nats: float              # its mean over the images: nats per image
    bits_per_dim: float      # nats / (dims * ln 2)


def importance_weighted_nll(model, x: torch.Tensor, *, k: int = 1000, chunk: int = 100,
                            batch_size: int | None = None,
                            generator: torch.Generator | None = None) -> ImportanceWeightedNLL:
    """The IWAE bound (Burda et al. 2016) on -log p(x): -log (1/k) sum_j w_j with
    w_j = p(x | z_j) p(z) / q(z_j | x), z_j ~ q(z | x), per image.

    model: anything with importance_log_weights(x, n, generator=...) -> (n, N) log w and
    dims (values per image; for genfast.models.VAE the sub-pixels C * H * W). The k
    draws are taken `chunk` at a time and combined with a streaming log-sum-exp (a
    running maximum and a rescaled float64 sum), so memory does not grow with k;
    batch_size splits the images. k = 1 is the single-sample ELBO estimate; the bound
    tightens towards -log p(x) as k grows.

    Units: with genfast.models.VAE, p(x | z) is a distribution over the integer levels
    (discretised Gaussian, or Bernoulli for binary images), so the result is a discrete
    NLL and bits_per_dim is on the same scale as the PixelCNN models' bits/dim for the
    same images and levels.
    """
    op = "importance_weighted_nll"
    for name, value in (("k", k), ("chunk", chunk)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{op}: batch_size must be a positive int or None, got {batch_size!r}")
    if not hasattr(model, "importance_log_weights"):
        raise TypeError(f"{op}: model must define importance_log_weights(x, k, generator=...) "
                        f"(a latent-variable model such as genfast.models.VAE), got "
                        f"{type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{op}: x must be a non-empty batch of images")
    n = x.shape[0]
    batch_size = batch_size or n
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    per_image = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                xb = x[start:start + batch_size]
                peak = running = None
                for done in range(0, k, chunk):
                    log_w = model.importance_log_weights(xb, min(chunk, k - done),
                                                         generator=generator).double()
                    top = log_w.max(0).values
                    if peak is None:
                        peak, running = top, (log_w - top).exp().sum(0)
                        continue
                    new_peak = torch.maximum(peak, top)
                    running = running * (peak - new_peak).exp() + (log_w - new_peak).exp().sum(0)
                    peak = new_peak
                per_image.append(-(peak + running.log() - math.log(k)))
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    per_image = torch.cat(per_image)
    nats = float(per_image.mean())
    return ImportanceWeightedNLL(per_image, nats, bits_per_dim(nats, int(getattr(model, "dims", 1))))
