"""softmax_cross_entropy: F.cross_entropy over the `levels` logits of the image models'
output head, without a second copy of the logits.

logits (N, L, ...) (classes in dimension 1, F.cross_entropy's layout) and integer
targets (N, ...) in [0, L). The forward computes each position's logsumexp (saved:
with its max logit: two values per position) and loss = logsumexp - logit[target];
the backward writes
grad_loss * (softmax - onehot) straight into grad_logits. F.cross_entropy on the
models' (N, L, C, H, W) logits (a transposed view) copies them to a contiguous
tensor, keeps log_softmax's output (another logits-sized tensor) for the backward,
and runs nll_loss's and log_softmax's backwards as separate passes. The kernels read
any layout where moving dimension 1 somewhere gives contiguous memory in place, and
logits whose classes are contiguous but whose other dimensions are out of order (a
channels-last RGB model's head) with those dimensions permuted (other layouts are
copied once); grad_logits has the logits' layout. Loss and logsumexp
are float32 (float64 for float64 logits). First derivatives only. Kernels:
csrc/cpu/softmax_cross_entropy.cpp, csrc/cuda/softmax_cross_entropy.cu; shared math
in csrc/softmax_cross_entropy.h. On CUDA an out-of-range target is found by the kernel
and reported after it (one synchronisation per call).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from genfast.ops._checks import check_float_tensor, check_tensor
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
OP = register_op("softmax_cross_entropy", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                 torch_ops=("softmax_cross_entropy", "softmax_cross_entropy_backward"))
REDUCTIONS = ("mean", "sum", "none")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(logits, target, reduction) -> None:
    op = "softmax_cross_entropy"
    check_tensor(op, "logits", logits)
    check_tensor(op, "target", target)
    check_float_tensor(op, "logits", logits)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{op}: target must be an integer tensor, got {target.dtype}")
    if logits.dim() < 2:
        raise ValueError(f"{op}: logits must be (N, classes, ...), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"{op}: target must have shape {expected} (logits' without dimension 1), "
                         f"got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"{op}: target is on {target.device} but logits are on {logits.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def softmax_cross_entropy_reference(logits: torch.Tensor, target: torch.Tensor,
                                    reduction: str = "mean") -> torch.Tensor:
    """Pure-PyTorch twin: F.cross_entropy in float32 (float64 for float64 logits)."""
    return F.cross_entropy(logits.to(_acc_dtype(logits.dtype)), target.long(), reduction=reduction)


def softmax_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean", *,
                          impl: str = "auto") -> torch.Tensor:
    """Cross-entropy of logits (N, L, ...) against integer targets (N, ...):
    F.cross_entropy(logits, target, reduction=reduction) computed in float32 (float64
    for float64 logits). reduction: "mean", "sum" or "none" (per position).
    Differentiable once with respect to logits. impl: "auto", "ext" or "reference"."""
    _check(logits, target, reduction)
    if not OP.use_kernel(impl, logits):
        return softmax_cross_entropy_reference(logits, target, reduction)
    loss, _, _ = torch.ops.genfast.softmax_cross_entropy(logits, target.long())
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def _empty_grad(logits: torch.Tensor) -> torch.Tensor:
    """grad_logits as the kernels lay it out (csrc/softmax_cross_entropy.cpp): the logits'
    layout when moving dimension 1 to some place makes them contiguous, or when the
    classes are contiguous and the other dimensions, sorted by stride, are too; else
    contiguous."""
    for m in range(1, logits.dim()):
        moved = logits.movedim(1, m)
        if moved.is_contiguous():
            return torch.empty_like(moved, memory_format=torch.contiguous_format).movedim(m, 1)
    if logits.stride(1) == 1:
        others = sorted((d for d in range(logits.dim()) if d != 1), key=lambda d: -logits.stride(d))
        perm = [others[0], 1, *others[1:]]
        permuted = logits.permute(perm)
        if permuted.movedim(1, -1).is_contiguous():
            grad = torch.empty_like(permuted.movedim(1, -1), memory_format=torch.contiguous_format).movedim(-1, 1)
            return grad.permute([perm.index(d) for d in range(logits.dim())])
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@OP.register_fake()
def _(logits, target):
    dtype = _acc_dtype(logits.dtype)
    return tuple(target.new_empty(target.shape, dtype=dtype) for _ in range(3))


@OP.register_fake("softmax_cross_entropy_backward")
def _(grad_loss, logits, target, max, log_sum):
    return _empty_grad(logits)


def _setup(ctx, inputs, output):
    logits, target = inputs
    ctx.save_for_backward(logits, target, output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])  # the saved max and log-sum


@OP.register_autograd(setup_context=_setup)
def _backward(ctx, grad_loss, grad_max, grad_log_sum):
    logits, target, max, log_sum = ctx.saved_tensors
    grad = torch.ops.genfast.softmax_cross_entropy_backward(grad_loss.to(max.dtype), logits, target,
                                                            max, log_sum)
    return grad, None
