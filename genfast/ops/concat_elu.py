"""concat_elu: elu(cat([x, -x], dim)), the nonlinearity of PixelCNN++, in one pass.

The composite writes the cat (2x x's size), then elu's output, and keeps one of them
for the backward, which runs elu's backward and a slice and negation per half. This op
reads x once and writes the output once; the backward reads x and grad_output and
writes grad_x (nothing is saved but x). First derivatives only. Kernels:
csrc/cpu/concat_elu.cpp, csrc/cuda/concat_elu.cu; shared math in csrc/concat_elu.h; on
the CPU float32 uses a polynomial expm1 (~2e-8 relative error).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genfast.ops._checks import check_float_tensor
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
OP = register_op("concat_elu", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                 torch_ops=("concat_elu", "concat_elu_backward"))


def _check(x, dim) -> None:
    op = "concat_elu"
    check_float_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least 1 dimension, got shape {tuple(x.shape)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{op}: dim must be an int in [{-x.dim()}, {x.dim()}) for x of shape "
                         f"{tuple(x.shape)}, got {dim!r}")


def concat_elu_reference(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Pure-PyTorch twin: what genfast.models.pixelcnnpp.concat_elu wrote before."""
    return F.elu(torch.cat([x, -x], dim=dim))


def _dense_order(x: torch.Tensor) -> list[int] | None:
    """The permutation of x's dimensions under which x is contiguous (outermost first),
    when x is a permuted contiguous tensor (channels-last, say) but not contiguous itself."""
    if x.is_contiguous():
        return None
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return order if x.permute(order).is_contiguous() else None


def concat_elu(x: torch.Tensor, dim: int = 1, *, impl: str = "auto") -> torch.Tensor:
    """elu(cat([x, -x], dim)): x's shape with size(dim) doubled, in x's memory layout
    (a channels-last x gives a channels-last result, as torch.cat does; the kernel keeps
    any permuted layout). Differentiable once. impl: "auto", "ext" or "reference"."""
    _check(x, dim)
    if not OP.use_kernel(impl, x):
        return concat_elu_reference(x, dim)
    order = _dense_order(x)
    if order is not None:  # the kernel on the contiguous permutation: no copy, the layout kept
        inverse = sorted(range(x.dim()), key=order.__getitem__)
        return torch.ops.genfast.concat_elu(x.permute(order), order.index(dim % x.dim())).permute(inverse)
    return torch.ops.genfast.concat_elu(x, dim)


@OP.register_fake()
def _(x, dim):
    shape = list(x.shape)
    shape[dim] *= 2
    return x.new_empty(shape)


OP.register_elementwise_backward("concat_elu_backward")
