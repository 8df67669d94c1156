"""The memory-layout rule of genfast's kernels (csrc/layout.h), for the fake kernels:
like ATen's convolutions, an op whose main input is channels-last returns channels-last
results."""
from __future__ import annotations

import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """Channels-last 4-D memory that is not also contiguous (one channel, or one pixel,
    is both: such tensors count as contiguous)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def empty_in_layout(like: torch.Tensor, shape) -> torch.Tensor:
    """An empty tensor of `shape` in the layout the rule gives for `like`."""
    out = like.new_empty(shape)
    return out.contiguous(memory_format=torch.channels_last) if is_channels_last(like) else out
