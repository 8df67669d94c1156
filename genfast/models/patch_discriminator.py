"""PatchDiscriminator: pix2pix's N-layer PatchGAN critic (Isola et al. 2017), the
discriminator of VQGAN (Esser et al. 2021).

A stride-2 4x4 convolution with LeakyReLU(0.2), num_layers - 1 more stride-2 4x4
convolutions doubling the channels (capped at 8x hidden_channels) with a
normalisation and LeakyReLU, then a stride-1 4x4 convolution (normalised) and a
stride-1 4x4 convolution to one channel: a map of logits, one per overlapping patch
of the input, (B, 1, H', W'). Every 4x4 convolution has padding 1, so a stride-2 one
takes n to floor(n / 2) and a stride-1 one takes n to n - 1.

Small images: with pix2pix's num_layers = 3 a 16x16 input shrinks to 2 after the
strided convolutions and to 0 after the last two, an empty map; forward raises then,
naming the largest num_layers that fits (max_layers). num_layers = 2 fits 16x16 (a
2x2 map) and 28x28 (5x5).
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _after_layers(n: int, num_layers: int) -> list[int]:
    """The side of every map the network makes from a side of n."""
    sides = []
    for _ in range(num_layers):
        n = n // 2  # 4x4, stride 2, padding 1
        sides.append(n)
    for _ in range(2):
        n = n - 1  # 4x4, stride 1, padding 1
        sides.append(n)
    return sides


class PatchDiscriminator(nn.Module):
    """pix2pix's NLayerDiscriminator. Keyword arguments only: image_channels of the
    images; hidden_channels of the first convolution (pix2pix: 64); num_layers of
    stride-2 convolutions (pix2pix: 3); norm "batch" (pix2pix, VQGAN), "instance" or
    "none" ("none" for a per-sample critic, e.g. with
    genfast.losses.critic_gradient_penalty, which needs samples treated
    independently). forward(x) -> patch logits (B, 1, H', W')."""

    def __init__(self, *, image_channels: int = 3, hidden_channels: int = 64, num_layers: int = 3,
                 norm: str = "batch"):
        super().__init__()
        for name, value in (("image_channels", image_channels), ("hidden_channels", hidden_channels),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PatchDiscriminator: {name} must be a positive int, got {value!r}")
        if norm not in NORMS:
            raise ValueError(f"PatchDiscriminator: norm must be one of {NORMS}, got {norm!r}")
        self.image_channels, self.hidden_channels = image_channels, hidden_channels
        self.num_layers, self.norm = num_layers, norm
        # A normalisation after a convolution makes its bias redundant (pix2pix's choice too).
        bias = norm == "none"
        width = lambda k: hidden_channels * min(2 ** k, 8)
        layers: list[nn.Module] = [nn.Conv2d(image_channels, hidden_channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        for k in range(1, num_layers):
            layers += [nn.Conv2d(width(k - 1), width(k), 4, stride=2, padding=1, bias=bias),
                       _norm(norm, width(k)), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(width(num_layers - 1), width(num_layers), 4, stride=1, padding=1, bias=bias),
                   _norm(norm, width(num_layers)), nn.LeakyReLU(0.2),
                   nn.Conv2d(width(num_layers), 1, 4, stride=1, padding=1)]
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    @property
    def config(self) -> dict:
        return {"image_channels": self.image_channels, "hidden_channels": self.hidden_channels,
                "num_layers": self.num_layers, "norm": self.norm}

    def reset_parameters(self) -> None:
        """pix2pix's initialisation: convolutions N(0, 0.02), normalisation scales
        N(1, 0.02), biases 0 (from the global generator: seed it for repeatable runs)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.affine:
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    @staticmethod
    def max_layers(height: int, width: int) -> int:
        """The largest num_layers whose patch map of a height x width image is not
        empty (0: none fits)."""
        n = 0
        while min(_after_layers(height, n + 1) + _after_layers(width, n + 1)) >= 1:
            n += 1
        return n

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the patch map of a height x width image; ValueError when empty."""
        sides_h, sides_w = _after_layers(height, self.num_layers), _after_layers(width, self.num_layers)
        if min(sides_h + sides_w) < 1:
            fits = self.max_layers(height, width)
            hint = (f"use num_layers <= {fits}" if fits else "no num_layers fits: the smallest image it takes is 6x6")
            raise ValueError(f"PatchDiscriminator: a {height}x{width} image leaves an empty patch map "
                             f"with num_layers={self.num_layers}; {hint}")
        return sides_h[-1], sides_w[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.image_channels:
            raise ValueError(f"PatchDiscriminator: expected images (B, {self.image_channels}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        self.output_size(x.shape[2], x.shape[3])
        return self.layers(x)
