from __future__ import annotations

import torch
from torch import nn

from genfast.ops.masked_conv2d import _check_algorithm, _pair, check_mask_args, masked_conv2d, masked_conv2d_mask


class MaskedConv2d(nn.Conv2d):
    """PixelCNN's masked convolution as a drop-in for nn.Conv2d.

    Takes nn.Conv2d's arguments and has its attributes (weight, bias, kernel_size,
    dilation, padding, ...), plus mask_type ('A' excludes the centre tap, 'B'
    includes it) and color_groups (1, or 3 for R, G, B sub-pixels). Only stride 1
    with 'same' padding, groups=1 and zero padding are supported. Its state_dict is
    that of an nn.Conv2d of the same shape; the mask is derived, never stored or
    learned, and masked weights receive zero gradient. State dicts of the public
    weight*mask classes, which keep the mask as a buffer (`<layer>.mask`), load too:
    such a key is accepted when it equals this layer's mask (broadcast to the weight's
    shape) and is an error naming the key when it does not.

    impl: "auto" | "ext" | "reference", and algorithm: "auto" | "live_tap" |
    "decomposed" | "dense" (or a per-phase triple), as for genfast.ops.masked_conv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1,
                 padding="same", dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None, *, mask_type: str = "B",
                 color_groups: int = 1, impl: str = "auto", algorithm="auto"):
        _check_algorithm(algorithm)
        kh, kw = check_mask_args(in_channels, out_channels, kernel_size, mask_type, color_groups)
        dh, dw = _pair(dilation, "dilation")
        same = (dh * (kh // 2), dw * (kw // 2))
        if _pair(stride, "stride") != (1, 1):
            raise ValueError(f"MaskedConv2d: only stride 1 is supported, got {stride!r}")
        if padding != "same" and _pair(padding, "padding") != same:
            raise ValueError(f"MaskedConv2d: padding must be 'same' (= {same} here), got {padding!r}")
        if groups != 1:
            raise ValueError(f"MaskedConv2d: only groups=1 is supported, got {groups!r}")
        if padding_mode != "zeros":
            raise ValueError(f"MaskedConv2d: only padding_mode='zeros' is supported, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, (kh, kw), stride=1, padding=same,
                         dilation=(dh, dw), groups=1, bias=bias, padding_mode="zeros",
                         device=device, dtype=dtype)
        self.mask_type = mask_type
        self.color_groups = color_groups
        self.impl = impl
        self.algorithm = algorithm

    @property
    def mask(self) -> torch.Tensor:
        """The 0/1 mask, shaped like the weight."""
        return masked_conv2d_mask(self.in_channels, self.out_channels, self.kernel_size,
                                  self.mask_type, self.color_groups, dtype=self.weight.dtype,
                                  device=self.weight.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A stored mask (weight*mask classes register it as a buffer) is checked, then
        # dropped: strict loading would otherwise reject it as an unexpected key.
        key = prefix + "mask"
        if key in state_dict:
            problem = self._stored_mask_problem(state_dict.pop(key))
            if problem is not None:
                error_msgs.append(f"{key}: {problem}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _stored_mask_problem(self, stored) -> str | None:
        """None when a loaded mask equals this layer's, else what is wrong with it."""
        what = (f"this MaskedConv2d's mask (mask_type={self.mask_type!r}, "
                f"color_groups={self.color_groups}, shape {tuple(self.weight.shape)})")
        if not isinstance(stored, torch.Tensor):
            return f"expected a tensor equal to {what}, got {type(stored).__name__}"
        own = self.mask
        try:
            stored = stored.detach().to(device=own.device, dtype=own.dtype).broadcast_to(own.shape)
        except RuntimeError:
            return f"the stored mask has shape {tuple(stored.shape)}, which does not fit {what}"
        differ = int((stored != own).sum())
        if differ:
            return (f"the stored mask differs from {what} at {differ} of {own.numel()} entries; "
                    f"build the layer with the mask_type and color_groups the checkpoint was "
                    f"trained with")
        return None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return masked_conv2d(input, self.weight, self.bias, mask_type=self.mask_type,
                             color_groups=self.color_groups, dilation=self.dilation,
                             impl=self.impl, algorithm=self.algorithm)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type!r}, color_groups={self.color_groups}"
