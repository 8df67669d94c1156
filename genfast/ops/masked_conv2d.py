"""masked_conv2d: the masked ("causal") 2-D convolution of PixelCNN.

Output pixel (i, j) sees only input pixels before it in raster order: mask 'A'
(first layer) excludes the centre tap, mask 'B' includes it. With colour groups
(R, G, B) the channels split into equal groups, and at the centre tap mask 'A' lets
a group see only the earlier groups, mask 'B' also itself. Stride 1, 'same' padding.

Kernels: csrc/cpu/masked_conv2d.cpp, csrc/cuda/masked_conv2d.cu; schema in
csrc/schemas.cpp; both skip the masked-out taps instead of multiplying by zero.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from genfast import _backend

MASK_TYPES = ("A", "B")
MAX_KERNEL_SIZE = 11
KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"masked_conv2d: {name} must be an int or a pair of ints, got {value!r}")


def check_mask_args(in_channels: int, out_channels: int, kernel_size, mask_type: str,
                    color_groups: int) -> tuple[int, int]:
    """Checks the mask's arguments; returns the kernel size as a pair."""
    kh, kw = _pair(kernel_size, "kernel_size")
    if mask_type not in MASK_TYPES:
        raise ValueError(f"masked_conv2d: mask_type must be 'A' or 'B', got {mask_type!r}")
    if not (kh % 2 == 1 and kw % 2 == 1 and 1 <= kh <= MAX_KERNEL_SIZE and 1 <= kw <= MAX_KERNEL_SIZE):
        raise ValueError(f"masked_conv2d: kernel_size must be odd and between 1 and "
                         f"{MAX_KERNEL_SIZE}, got {(kh, kw)}")
    if not isinstance(color_groups, int) or isinstance(color_groups, bool) or color_groups < 1:
        raise ValueError(f"masked_conv2d: color_groups must be a positive int, got {color_groups!r}")
    if in_channels % color_groups or out_channels % color_groups:
        raise ValueError(f"masked_conv2d: color_groups ({color_groups}) must divide in_channels "
                         f"({in_channels}) and out_channels ({out_channels})")
    return kh, kw


@functools.lru_cache(maxsize=64)
def _cpu_mask(out_channels: int, in_channels: int, kh: int, kw: int, mask_type: str,
              color_groups: int) -> torch.Tensor:
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    ch, cw = kh // 2, kw // 2
    mask[:, :, :ch, :] = 1
    mask[:, :, ch, :cw] = 1
    group_out = torch.arange(out_channels) // (out_channels // color_groups)
    group_in = torch.arange(in_channels) // (in_channels // color_groups)
    if mask_type == "A":
        center = group_in[None, :] < group_out[:, None]
    else:
        center = group_in[None, :] <= group_out[:, None]
    mask[:, :, ch, cw] = center.float()
    return mask


def masked_conv2d_mask(in_channels: int, out_channels: int, kernel_size, mask_type: str = "B",
                       color_groups: int = 1, *, dtype: torch.dtype = torch.float32,
                       device=None) -> torch.Tensor:
    """The 0/1 mask, shaped like the weight (out_channels, in_channels, kH, kW). Takes
    (in_channels, out_channels) like nn.Conv2d and MaskedConv2d (before genfast 0.2 it
    took (out_channels, in_channels); keyword calls work either way)."""
    kh, kw = check_mask_args(in_channels, out_channels, kernel_size, mask_type, color_groups)
    # copy=True: callers may modify the result; the cached tensor must stay intact.
    return _cpu_mask(out_channels, in_channels, kh, kw, mask_type, color_groups).to(
        device=device, dtype=dtype, copy=True)


def _check_args(input, weight, bias, mask_type, color_groups) -> None:
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"masked_conv2d: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"masked_conv2d: {name} must be 4-D "
                             f"({'N, C, H, W' if name == 'input' else 'C_out, C_in, kH, kW'}), "
                             f"got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"masked_conv2d: {name} must be floating point, got {t.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"masked_conv2d: weight dtype {weight.dtype} does not match input dtype "
                        f"{input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"masked_conv2d: weight is on {weight.device} but input is on {input.device}")
    if input.numel() == 0:
        raise ValueError(f"masked_conv2d: input must not be empty, got shape {tuple(input.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"masked_conv2d: weight must not be empty, got shape {tuple(weight.shape)}")
    if input.shape[1] != weight.shape[1]:
        raise ValueError(f"masked_conv2d: input has {input.shape[1]} channels but weight expects "
                         f"{weight.shape[1]}")
    check_mask_args(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), mask_type,
                    color_groups)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(f"masked_conv2d: bias must be a tensor of shape ({weight.shape[0]},), "
                             f"got {getattr(bias, 'shape', type(bias).__name__)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise TypeError(f"masked_conv2d: bias must have the input's dtype and device "
                            f"({input.dtype}, {input.device}), got ({bias.dtype}, {bias.device})")


def masked_conv2d_reference(input: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, *, mask_type: str = "B",
                            color_groups: int = 1, dilation=1) -> torch.Tensor:
    """Pure-PyTorch twin: F.conv2d with the masked weight (what public PixelCNNs do)."""
    dh, dw = _pair(dilation, "dilation")
    kh, kw = weight.shape[2:]
    mask = masked_conv2d_mask(weight.shape[1], weight.shape[0], (kh, kw), mask_type, color_groups,
                              dtype=weight.dtype, device=weight.device)
    return F.conv2d(input, weight * mask, bias, padding=(dh * (kh // 2), dw * (kw // 2)),
                    dilation=(dh, dw))


def masked_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  mask_type: str = "B", color_groups: int = 1, dilation=1,
                  impl: str = "auto") -> torch.Tensor:
    """Masked 2-D convolution, stride 1 with 'same' padding.

    input (N, C_in, H, W); weight (C_out, C_in, kH, kW) with odd kH, kW <= 11;
    bias (C_out,) or None; mask_type 'A' or 'B'; color_groups divides both channel
    counts; dilation an int or pair. Masked weights get zero gradient.
    impl: "auto" (compiled kernel when available, else the reference), "ext" or
    "reference".
    """
    dh, dw = _pair(dilation, "dilation")
    if not (1 <= dh <= 2**24 and 1 <= dw <= 2**24):  # larger would overflow 32-bit offsets
        raise ValueError(f"masked_conv2d: dilation must be between 1 and 2**24 (16777216), got {(dh, dw)}")
    _check_args(input, weight, bias, mask_type, color_groups)
    if not _backend.use_extension("masked_conv2d", impl, input, KERNEL_DTYPES):
        return masked_conv2d_reference(input, weight, bias, mask_type=mask_type,
                                       color_groups=color_groups, dilation=(dh, dw))
    return torch.ops.genfast.masked_conv2d(input, weight, bias, [dh, dw], mask_type, color_groups)


def _register_fake_and_autograd() -> None:
    @torch.library.register_fake("genfast::masked_conv2d")
    def _(input, weight, bias, dilation, mask_type, color_groups):
        return input.new_empty((input.shape[0], weight.shape[0], input.shape[2], input.shape[3]))

    @torch.library.register_fake("genfast::masked_conv2d_grad_input")
    def _(grad_output, weight, dilation, mask_type, color_groups):
        shape = (grad_output.shape[0], weight.shape[1], grad_output.shape[2], grad_output.shape[3])
        return grad_output.new_empty(shape)

    @torch.library.register_fake("genfast::masked_conv2d_grad_weight")
    def _(grad_output, input, kernel_size, dilation, mask_type, color_groups):
        return input.new_empty((grad_output.shape[1], input.shape[1], *kernel_size))

    def setup_context(ctx, inputs, output):
        input, weight, bias, dilation, mask_type, color_groups = inputs
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        ctx.config = (dilation, mask_type, color_groups)

    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        dilation, mask_type, color_groups = ctx.config
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.genfast.masked_conv2d_grad_input(
                grad_output, weight, dilation, mask_type, color_groups)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.genfast.masked_conv2d_grad_weight(
                grad_output, input, list(weight.shape[2:]), dilation, mask_type, color_groups)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None

    torch.library.register_autograd("genfast::masked_conv2d", backward,
                                    setup_context=setup_context)


if _backend.LIBRARY_LOADED:
    _register_fake_and_autograd()
