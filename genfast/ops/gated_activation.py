"""gated_activation: the gated unit tanh(a) * sigmoid(b) of Gated PixelCNN (and WaveNet)
in one pass.

x (N, 2 * C, ...) holds `groups` channel blocks per sample, each its a half then its b
half (the layout of genfast.models.gated_pixelcnn.gate: colour group g of an RGB model
owns block g of a and of b); the result is (N, C, ...). The composite PyTorch version
runs tanh, sigmoid and a product forward and five kernels plus two slice-backward
copies backward, keeping tanh(a) and sigmoid(b); this op reads x once each way and
saves only x (the backward recomputes tanh and sigmoid). A channels-last 4-D x is read
in place (one pixel's group blocks) and the results are channels-last (the rule of
genfast/ops/_layout.py). First derivatives only.
Kernels: csrc/cpu/gated_activation.cpp, csrc/cuda/gated_activation.cu; shared math in
csrc/gated_activation.h; on the CPU float32 uses a vectorised exp/tanh
(csrc/cpu/fast_math.h, ~1e-7 absolute error).
"""
from __future__ import annotations

import torch

from genfast.ops._checks import check_float_tensor
from genfast.ops._layout import empty_in_layout
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
OP = register_op("gated_activation", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                 torch_ops=("gated_activation", "gated_activation_backward"))


def _check(x, groups) -> None:
    op = "gated_activation"
    check_float_tensor(op, "x", x)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if x.dim() < 2 or x.shape[1] % (2 * groups):
        raise ValueError(f"{op}: x must be (N, 2 * C, ...) with channels a multiple of 2 * groups "
                         f"({2 * groups}), got shape {tuple(x.shape)}")


def gated_activation_reference(x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Pure-PyTorch twin: what genfast.models.gated_pixelcnn.gate wrote before."""
    n, c2, rest = x.shape[0], x.shape[1], x.shape[2:]
    v = x.reshape(n, groups, 2, c2 // (2 * groups), *rest)
    return (torch.tanh(v[:, :, 0]) * torch.sigmoid(v[:, :, 1])).reshape(n, c2 // 2, *rest)


def gated_activation(x: torch.Tensor, groups: int = 1, *, impl: str = "auto") -> torch.Tensor:
    """tanh(a) * sigmoid(b) per channel block of x (N, 2 * C, ...) -> (N, C, ...).
    Differentiable once. impl: "auto", "ext" or "reference"."""
    _check(x, groups)
    if not OP.use_kernel(impl, x):
        return gated_activation_reference(x, groups)
    return torch.ops.genfast.gated_activation(x, groups)


@OP.register_fake()
def _(x, groups):
    return empty_in_layout(x, (x.shape[0], x.shape[1] // 2, *x.shape[2:]))


OP.register_elementwise_backward("gated_activation_backward", keeps_channels_last=True)
