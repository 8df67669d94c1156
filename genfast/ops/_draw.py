"""The inverse-CDF draw of every genfast sampler (the Python twin of
csrc/sampling_math.h): the models' samplers and the reference twins of the
cached-sampling ops turn logits and uniforms into levels with it."""
from __future__ import annotations

import torch


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


def draw_from_logits(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One level per row of `logits` (n, levels) from the uniforms `u` (n,), int64:
    inverse_cdf, except that a row with a non-finite logit gets -1
    (the kernel's marker of a failed draw)."""
    value = inverse_cdf(logits, u, temperature)
    return torch.where(torch.isfinite(logits).all(dim=-1), value, torch.full_like(value, -1))
