"""code_statistics: per-code counts and sums of the vectors assigned to each code,
the statistics of an EMA (exponential moving average) codebook update.

For x (N, D) and indices (N,) int64 in [0, num_codes): counts (num_codes,) int64 and
sums (num_codes, D), each code's rows accumulated in float64 in their original row
order and rounded to float32 (float64 for float64 x). The exact order: the rows,
sorted stably by code, are cut into pieces of SUM_PIECE_ROWS positions; a code's
rows in each piece are summed in row order from zero, and its piece sums are added
in order (a code within one piece is one sequential sum). The pieces let the GPU
spread a collapsed codebook (most rows on one code) over many blocks. Both
backends sum in this order, bit for bit, whatever the thread count. No gradient
(statistics only; inputs detached).

Not fused with nearest_code: the statistics read x once (O(N D)) against the
search's O(N K D), and fusing them into the search's parallel tiles would give up
the fixed summation order.

Kernels: csrc/cpu/code_statistics.cpp, csrc/cuda/code_statistics.cu; schema in
csrc/schemas.cpp.
"""
from __future__ import annotations

import torch

from genfast.ops._checks import check_tensor
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
OP = register_op("code_statistics", module=__name__, kernel_dtypes=KERNEL_DTYPES)


SUM_PIECE_ROWS = 256  # kSumPieceRows in csrc/code_statistics.h


def sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the sums for x of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_args(x, indices, num_codes) -> None:
    check_tensor("code_statistics", "x", x)
    check_tensor("code_statistics", "indices", indices)
    if x.dim() != 2:
        raise ValueError(f"code_statistics: x must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"code_statistics: x must be floating point, got {x.dtype}")
    if indices.dtype != torch.long:
        raise TypeError(f"code_statistics: indices must be int64, got {indices.dtype}")
    if indices.shape != (x.shape[0],):
        raise ValueError(f"code_statistics: indices must have shape ({x.shape[0]},) to match x, "
                         f"got {tuple(indices.shape)}")
    if indices.device != x.device:
        raise ValueError(f"code_statistics: indices are on {indices.device} but x is on {x.device}")
    if not isinstance(num_codes, int) or isinstance(num_codes, bool) or not 1 <= num_codes <= 2**31 - 1:
        raise ValueError(f"code_statistics: num_codes must be an int between 1 and 2**31 - 1, got {num_codes!r}")


def code_statistics_reference(x: torch.Tensor, indices: torch.Tensor,
                              num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch twin: bincount and a float64 index_add in row order."""
    _check_args(x, indices, num_codes)
    if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < num_codes):
        bad = int(((indices < 0) | (indices >= num_codes)).nonzero()[0, 0])
        raise ValueError(f"code_statistics: indices must be in [0, {num_codes}), got "
                         f"{int(indices[bad])} at position {bad}")
    x, indices = x.detach(), indices.detach()
    counts = torch.bincount(indices, minlength=num_codes)
    sums = torch.zeros(num_codes, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, indices, x.to(torch.float64))
    return counts, sums.to(sum_dtype(x.dtype))


def code_statistics(x: torch.Tensor, indices: torch.Tensor, num_codes: int, *,
                    impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, sums) of the rows of x (N, D) per code, indices (N,) in [0, num_codes).

    impl: "auto" (compiled kernel when available, else the reference), "ext" or
    "reference".
    """
    _check_args(x, indices, num_codes)
    if not OP.use_kernel(impl, x):
        return code_statistics_reference(x, indices, num_codes)
    return torch.ops.genfast.code_statistics(x.detach(), indices.detach(), num_codes)


@OP.register_fake()
def _(x, indices, num_codes):
    return (indices.new_empty((num_codes,)),
            x.new_empty((num_codes, x.shape[1]), dtype=sum_dtype(x.dtype)))
