"""nearest_code: the nearest code of each vector in a codebook (vector quantisation).

For x (N, D) and codebook (K, D), returns (indices, sq_dist): indices (N,) int64 is,
for each row, the lowest index k minimising the squared Euclidean distance to code
k, and sq_dist (N,) that distance (float32, or float64 for float64 inputs).

"Exact" here means: the distance is d64(x, e) = sum over i = 0..D-1, in that order,
of (x_i - e_i)^2 with every operation in float64 (no fused multiply-add), and
indices and sq_dist equal nearest_code_reference bit for bit, whatever the input
dtype. The kernels get there with a fast float32 filter whose error bound proves
its winner or sends the row to an exact float64 resolution (csrc/nearest_code.h).

cosine=True compares directions: rows and codes are scaled by the float64
reciprocal of their norms first (zero vectors stay zero), so the winner has the
largest cosine similarity and sq_dist = ||x/|x| - e/|e| ||^2 = 2 - 2 cos.

Non-finite inputs (NaN or infinity in x or the codebook) are an error, since the
nearest code is undefined; N = 0 gives empty results; K = 0 or D = 0 is an error.
The op has no gradient (indices are discrete): its inputs are detached.

Kernels: csrc/cpu/nearest_code.cpp, csrc/cuda/nearest_code.cu; schema in
csrc/schemas.cpp. Neither stores the N x K distance matrix (extra memory O(N + K)
besides a packed copy of the codebook on the CPU).
"""
from __future__ import annotations

import numpy
import torch

from genfast.ops._checks import check_tensor
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}
OP = register_op("nearest_code", module=__name__, kernel_dtypes=KERNEL_DTYPES)
# Rows of the N x K float64 matrix the reference builds at a time.
_REFERENCE_CHUNK_ELEMENTS = 1 << 22


def distance_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of sq_dist for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_args(x, codebook, cosine) -> None:
    for name, t in (("x", x), ("codebook", codebook)):
        check_tensor("nearest_code", name, t)
        if t.dim() != 2:
            shape = "N, D" if name == "x" else "K, D"
            raise ValueError(f"nearest_code: {name} must be 2-D ({shape}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"nearest_code: {name} must be floating point, got {t.dtype}")
    if not isinstance(cosine, bool):
        raise TypeError(f"nearest_code: cosine must be a bool, got {cosine!r}")
    if codebook.dtype != x.dtype:
        raise TypeError(f"nearest_code: codebook dtype {codebook.dtype} does not match x dtype {x.dtype}")
    if codebook.device != x.device:
        raise ValueError(f"nearest_code: codebook is on {codebook.device} but x is on {x.device}")
    if codebook.shape[0] == 0:
        raise ValueError("nearest_code: codebook must have at least one code, got shape "
                         f"{tuple(codebook.shape)}")
    if codebook.shape[1] == 0:
        raise ValueError("nearest_code: vectors must have at least one feature, got D = 0")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_code: x has {x.shape[1]} features per row but the codebook's codes "
                         f"have {codebook.shape[1]}")
    if codebook.shape[0] > 2**31 - 1:
        raise ValueError(f"nearest_code: at most 2**31 - 1 codes are supported, got {codebook.shape[0]}")


def _sq_norms(v: torch.Tensor) -> torch.Tensor:
    """sum over features in order of v_i^2, float64 (the kernels' exact_sq_norm)."""
    acc = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    for i in range(v.shape[1]):
        acc = acc + v[:, i] * v[:, i]
    return acc


def _sqrt_rn(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float64 square roots (torch's CPU sqrt may be off by an ulp:
    it can run MKL's vectorised math; numpy's is IEEE's)."""
    return torch.from_numpy(numpy.sqrt(t.cpu().numpy())).to(t.device)


def _scaled(v: torch.Tensor, cosine: bool) -> torch.Tensor:
    """v in float64, scaled to unit norm in cosine mode (zero rows stay zero)."""
    v = v.to(torch.float64)
    if not cosine:
        return v
    sq = _sq_norms(v)
    scale = torch.where(sq > 0, torch.ones_like(sq) / _sqrt_rn(sq), torch.zeros_like(sq))
    return v * scale[:, None]


def _check_finite(t: torch.Tensor, name: str, what: str) -> None:
    bad = (~torch.isfinite(t)).any(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"nearest_code: {name} contains NaN or infinity ({what} {first}); the nearest "
                         "code is undefined for non-finite vectors")


def nearest_code_reference(x: torch.Tensor, codebook: torch.Tensor, *,
                           cosine: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch twin and the definition of the result: float64 distances summed
    feature by feature, argmin with the lowest index winning ties."""
    _check_args(x, codebook, cosine)
    _check_finite(codebook, "codebook", "code")
    _check_finite(x, "x", "row")
    x64, e64 = _scaled(x.detach(), cosine), _scaled(codebook.detach(), cosine)
    n, k = x64.shape[0], e64.shape[0]
    indices = torch.empty(n, dtype=torch.long, device=x.device)
    sq_dist = torch.empty(n, dtype=torch.float64, device=x.device)
    chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // k)
    for start in range(0, n, chunk):
        xs = x64[start:start + chunk]
        acc = torch.zeros(xs.shape[0], k, dtype=torch.float64, device=x.device)
        for i in range(x64.shape[1]):
            diff = xs[:, i, None] - e64[None, :, i]
            acc += diff * diff
        best = acc.argmin(dim=1)  # the first minimum: the lowest index wins ties
        indices[start:start + chunk] = best
        sq_dist[start:start + chunk] = acc.gather(1, best[:, None])[:, 0]
    return indices, sq_dist.to(distance_dtype(x.dtype))


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, *, cosine: bool = False,
                 impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, sq_dist) of the nearest code of each row of x (N, D) in codebook (K, D).

    Both tensors share one floating dtype (float32, float16, bfloat16; float64 on the
    CPU) and device. Equal to nearest_code_reference bit for bit. impl: "auto"
    (compiled kernel when available, else the reference), "ext" or "reference".
    """
    _check_args(x, codebook, cosine)
    if not OP.use_kernel(impl, x):
        return nearest_code_reference(x, codebook, cosine=cosine)
    return torch.ops.genfast.nearest_code(x.detach(), codebook.detach(), cosine)


@OP.register_fake()
def _(x, codebook, cosine):
    n = x.shape[0]
    return x.new_empty((n,), dtype=torch.long), x.new_empty((n,), dtype=distance_dtype(x.dtype))
