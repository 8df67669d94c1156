"""The inverse-CDF draw of every genfast sampler (the Python twin of
csrc/sampling_math.h): the models' samplers and the reference twins of the
cached-sampling ops turn logits and uniforms into levels with it.

The compiled kernels compute the weights with their own exp (draw_exp, the same
IEEE operations on the CPU and the GPU, so their draws are bit-identical); torch.exp
may differ from it by an ulp, so inverse_cdf and the kernels draw the same level
except when a uniform lies within a few ulps of a CDF step. exact_draw below is the
kernels' arithmetic, operation for operation, for the tests."""
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


# ---- the kernels' exact arithmetic (csrc/sampling_math.h), for tests -----------------

def _fma(a: float, b: float, c: float) -> float:
    """a * b + c rounded once (exact rational arithmetic; int / int division in Python
    rounds correctly)."""
    from fractions import Fraction
    if a == 0.0 or b == 0.0:
        return a * b + c  # the signs of zeros as IEEE fma gives them
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    return exact.numerator / exact.denominator if exact else a * b + c


_TAYLOR = [1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
           1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0]


def draw_exp(x: float) -> float:
    """csrc/sampling_math.h's draw_exp, operation for operation: e^x within ~1 ulp."""
    import math
    if not x > -700.0:
        return 0.0
    n = float(round(x * float.fromhex("0x1.71547652b82fep0")))  # round half to even, as rint
    r = _fma(-n, float.fromhex("0x1.a39ef35793c76p-33"), _fma(-n, float.fromhex("0x1.62e42feep-1"), x))
    p = _TAYLOR[0]
    for coefficient in _TAYLOR[1:]:
        p = _fma(p, r, coefficient)
    return math.ldexp(p, int(n))


def exact_cdf(logits: list[float], temperature: float = 1.0) -> list[float] | None:
    """csrc/sampling_math.h's running sums of the weights e^(z - max z) in Python floats
    (None when a logit is not finite)."""
    import math
    if not all(math.isfinite(v) for v in logits):
        return None
    z = [v / temperature for v in logits]
    z_max = max(z)
    cdf, total = [], 0.0
    for zi in z:
        total += draw_exp(zi - z_max)
        cdf.append(total)
    return cdf


def exact_draw(logits: list[float], u: float, temperature: float = 1.0,
               cdf: list[float] | None = None) -> int:
    """csrc/sampling_math.h's inverse_cdf_draw in Python floats: the kernels of every
    backend draw exactly this level (-1: a non-finite logit). cdf: exact_cdf(logits,
    temperature) when already computed."""
    cdf = exact_cdf(logits, temperature) if cdf is None else cdf
    if cdf is None:
        return -1
    threshold = u * cdf[-1]
    return min(sum(1 for c in cdf if c <= threshold), len(cdf) - 1)


# ---- top-k / top-p (nucleus) filtering before the draw -------------------------------
# The rule, shared by csrc/sampling_math.h (filtered_inverse_cdf_draw) and
# filtered_draw below, all in float64:
#   z = logits / temperature, w = e^(z - max z) (the weights of inverse_cdf);
#   rank the levels by z, largest first, ties broken by the lower level first;
#   top_k >= 1 keeps the levels of rank < top_k (0: no top-k);
#   top_p < 1 then keeps, among those, the levels of rank r whose running sum of
#   weights over the ranks before r (summed in rank order) is < top_p * (the sum over
#   all kept ranks, in rank order) -- the smallest set of most likely levels whose mass
#   reaches top_p, never empty (rank 0 is always kept); top_p == 1: no top-p;
#   the draw is inverse_cdf over the kept levels only: running sums in level order of
#   the kept weights (dropped levels weigh 0), the first level whose sum exceeds
#   u * total; when rounding at u -> 1 leaves none, the last kept level.
# With neither filter it is inverse_cdf exactly.

def filter_active(top_k: int, top_p: float) -> bool:
    return top_k > 0 or top_p < 1.0


def filtered_draw(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """One level per row of `logits` (n, levels) from the uniforms u (n,), int64, with
    top-k / top-p filtering as defined above; -1 for a row with a non-finite logit."""
    if not filter_active(top_k, top_p):
        return draw_from_logits(logits, u, temperature)
    levels = logits.shape[-1]
    z = logits.to(torch.float64) / temperature
    w = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    order = torch.sort(z, dim=-1, descending=True, stable=True).indices  # ties: lower level first
    ranks = torch.arange(levels, device=z.device).expand_as(order)
    kept_sorted = ranks < top_k if top_k > 0 else torch.ones_like(order, dtype=torch.bool)
    if top_p < 1.0:
        sorted_w = torch.where(kept_sorted, w.gather(-1, order), 0.0)
        running = sorted_w.cumsum(dim=-1)
        before = torch.cat([torch.zeros_like(running[..., :1]), running[..., :-1]], dim=-1)
        kept_sorted = kept_sorted & ((ranks == 0) | (before < top_p * running[..., -1:]))
    kept = torch.zeros_like(kept_sorted).scatter_(-1, order, kept_sorted)
    cdf = torch.where(kept, w, 0.0).cumsum(dim=-1)
    count = (cdf <= u.to(torch.float64).unsqueeze(-1) * cdf[..., -1:]).sum(dim=-1)
    last_kept = levels - 1 - kept.flip(-1).to(torch.int8).argmax(dim=-1)
    value = torch.where(count < levels, count, last_kept)
    return torch.where(torch.isfinite(logits).all(dim=-1), value, torch.full_like(value, -1))
