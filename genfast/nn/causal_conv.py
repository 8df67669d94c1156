from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv1d(nn.Conv1d):
    """WaveNet's dilated causal 1-D convolution as a drop-in for nn.Conv1d.

    Takes nn.Conv1d's arguments and has its attributes and state_dict. The input is
    padded on the left only, by causal_padding = (kernel_size - 1) * dilation zeros, so
    output t sees inputs t - (kernel_size - 1) * dilation, ..., t and never a later one,
    and the output is as long as the input. Any kernel width and dilation, optional
    bias, groups; stride 1 and zero padding only (`padding` must be "causal", the
    default, or 0, which nn.Conv1d's attribute then shows). Training runs F.conv1d on the
    padded input; fast sampling runs genfast.ops.wavenet_step (see genfast.models.WaveNet).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding="causal", dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None):
        kernel_size = _single(kernel_size, "kernel_size")
        dilation = _single(dilation, "dilation")
        if kernel_size < 1:
            raise ValueError(f"CausalConv1d: kernel_size must be positive, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"CausalConv1d: dilation must be positive, got {dilation}")
        if _single(stride, "stride") != 1:
            raise ValueError(f"CausalConv1d: only stride 1 is supported, got {stride!r}")
        if padding not in ("causal", 0, (0,)):
            raise ValueError(f"CausalConv1d: padding must be 'causal' (left padding of "
                             f"{(kernel_size - 1) * dilation}), got {padding!r}")
        if padding_mode != "zeros":
            raise ValueError(f"CausalConv1d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride=1, padding=0,
                         dilation=dilation, groups=groups, bias=bias, padding_mode="zeros",
                         device=device, dtype=dtype)
        self.causal_padding = (kernel_size - 1) * dilation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() not in (2, 3):
            raise ValueError(f"CausalConv1d: input must be (N, C, T) or (C, T), got shape "
                             f"{tuple(input.shape)}")
        return F.conv1d(F.pad(input, (self.causal_padding, 0)), self.weight, self.bias,
                        dilation=self.dilation, groups=self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, causal_padding={self.causal_padding}"


def _single(value, name: str) -> int:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"CausalConv1d: {name} must be an int, got {value!r}")
    return value
