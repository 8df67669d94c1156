"""VQ-VAE (van den Oord et al. 2017) and the two-level VQ-VAE-2 (Razavi et al. 2019):
convolutional encoders and decoders with residual blocks around
genfast.nn.VectorQuantizer bottlenecks.

Both take images (B, C, H, W) with H and W divisible by the total downsampling
(2 ** downsample for VQVAE, 8 for VQVAE2) and return the reconstruction plus each
level's VQOutput; `loss(x)` is the mean squared reconstruction error plus the
quantisers' losses. `encode`/`decode_codes` map images to code indices and back,
which is what a prior over codes (a PixelCNN) models.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from genfast.models._compat import renamed_keywords
from genfast.nn.vector_quantizer import VectorQuantizer, VQOutput


def _image_channels(model: str, image_channels: int, options: dict) -> int:
    """image_channels, or its deprecated alias in_channels popped from options."""
    if "in_channels" not in options:
        return image_channels
    old = {"in_channels": options.pop("in_channels")}
    return renamed_keywords(model, old, {"image_channels": image_channels}, stacklevel=4)["image_channels"]


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _encoder(in_channels: int, channels: int, res_channels: int, res_blocks: int, halvings: int) -> nn.Sequential:
    """`halvings` stride-2 4x4 convolutions, a 3x3 convolution, residual blocks."""
    layers: list[nn.Module] = []
    for i in range(halvings):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 4, stride=2, padding=1), nn.ReLU()]
    layers.append(nn.Conv2d(channels if halvings else in_channels, channels, 3, padding=1))
    layers += [ResidualBlock(channels, res_channels) for _ in range(res_blocks)]
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _decoder(in_channels: int, out_channels: int, channels: int, res_channels: int, res_blocks: int,
             doublings: int) -> nn.Sequential:
    """A 3x3 convolution, residual blocks, `doublings` stride-2 4x4 transposed
    convolutions (the last one, or a 3x3 convolution, to out_channels)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
    layers += [ResidualBlock(channels, res_channels) for _ in range(res_blocks)]
    layers.append(nn.ReLU())
    for i in range(doublings):
        last = i == doublings - 1
        layers.append(nn.ConvTranspose2d(channels, out_channels if last else channels, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    if doublings == 0:
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


def _check_images(x: torch.Tensor, channels: int, multiple: int, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name}: expected images (B, {channels}, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"{name}: H and W must be multiples of {multiple}, got {tuple(x.shape[2:])}")


class VQVAEOutput(NamedTuple):
    reconstruction: torch.Tensor
    vq: VQOutput


class VQVAE(nn.Module):
    """One-level VQ-VAE. The codes form a (H / 2**downsample, W / 2**downsample) grid.
    Keyword arguments only (names: docs/vocabulary.md): image_channels of the images
    (`in_channels` is a deprecated alias); hidden_channels of the encoder and decoder;
    block_channels, the inner width of each of their num_blocks residual blocks.
    Extra keyword arguments go to the VectorQuantizer (ema, kmeans_init, ...)."""

    def __init__(self, *, image_channels: int = 1, hidden_channels: int = 64, block_channels: int = 32,
                 num_blocks: int = 2, num_codes: int = 512, code_dim: int = 64, downsample: int = 2,
                 **quantizer_options):
        in_channels = _image_channels("VQVAE", image_channels, quantizer_options)
        channels, res_channels, res_blocks = hidden_channels, block_channels, num_blocks
        super().__init__()
        if downsample < 0:
            raise ValueError(f"VQVAE: downsample must be >= 0, got {downsample}")
        self.image_channels, self.downsample = in_channels, downsample
        self.encoder = _encoder(in_channels, channels, res_channels, res_blocks, downsample)
        self.to_codes = nn.Conv2d(channels, code_dim, 1)
        self.quantizer = VectorQuantizer(num_codes, code_dim, **quantizer_options)
        self.decoder = _decoder(code_dim, in_channels, channels, res_channels, res_blocks, downsample)

    def quantize(self, x: torch.Tensor) -> VQOutput:
        _check_images(x, self.image_channels, 2 ** self.downsample, "VQVAE")
        return self.quantizer(self.to_codes(self.encoder(x)))

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        vq = self.quantize(x)
        return VQVAEOutput(self.decoder(vq.quantized), vq)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, VQVAEOutput]:
        """Reconstruction MSE + the quantiser's loss, and the forward's output."""
        out = self(x)
        return F.mse_loss(out.reconstruction, x) + out.vq.loss, out

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices (B, H', W')."""
        return self.quantize(x).indices

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.codes_to_vectors(indices))


class VQVAE2Output(NamedTuple):
    reconstruction: torch.Tensor
    top: VQOutput     # codes at 1/8 of the image size
    bottom: VQOutput  # codes at 1/4 of the image size


class VQVAE2(nn.Module):
    """Two-level VQ-VAE-2: the bottom encoder downsamples by 4, the top encoder by 2
    more; the top codes are decoded to the bottom resolution and condition the bottom
    codes; the decoder sees both (the top ones upsampled). Arguments as VQVAE's (keyword
    only); extra keyword arguments go to both VectorQuantizers."""

    def __init__(self, *, image_channels: int = 1, hidden_channels: int = 64, block_channels: int = 32,
                 num_blocks: int = 2, num_codes: int = 512, code_dim: int = 64, **quantizer_options):
        in_channels = _image_channels("VQVAE2", image_channels, quantizer_options)
        channels, res_channels, res_blocks = hidden_channels, block_channels, num_blocks
        super().__init__()
        self.image_channels = in_channels
        self.encoder_bottom = _encoder(in_channels, channels, res_channels, res_blocks, 2)
        self.encoder_top = _encoder(channels, channels, res_channels, res_blocks, 1)
        self.to_codes_top = nn.Conv2d(channels, code_dim, 1)
        self.quantizer_top = VectorQuantizer(num_codes, code_dim, **quantizer_options)
        self.decoder_top = _decoder(code_dim, code_dim, channels, res_channels, res_blocks, 1)
        self.to_codes_bottom = nn.Conv2d(channels + code_dim, code_dim, 1)
        self.quantizer_bottom = VectorQuantizer(num_codes, code_dim, **quantizer_options)
        self.upsample_top = nn.ConvTranspose2d(code_dim, code_dim, 4, stride=2, padding=1)
        self.decoder = _decoder(2 * code_dim, in_channels, channels, res_channels, res_blocks, 2)

    def quantize(self, x: torch.Tensor) -> tuple[VQOutput, VQOutput]:
        _check_images(x, self.image_channels, 8, "VQVAE2")
        features = self.encoder_bottom(x)
        top = self.quantizer_top(self.to_codes_top(self.encoder_top(features)))
        conditioned = torch.cat([features, self.decoder_top(top.quantized)], 1)
        bottom = self.quantizer_bottom(self.to_codes_bottom(conditioned))
        return top, bottom

    def _decode(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([self.upsample_top(top), bottom], 1))

    def forward(self, x: torch.Tensor) -> VQVAE2Output:
        top, bottom = self.quantize(x)
        return VQVAE2Output(self._decode(top.quantized, bottom.quantized), top, bottom)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, VQVAE2Output]:
        out = self(x)
        return F.mse_loss(out.reconstruction, x) + out.top.loss + out.bottom.loss, out

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(top indices (B, H/8, W/8), bottom indices (B, H/4, W/4))."""
        top, bottom = self.quantize(x)
        return top.indices, bottom.indices

    def decode_codes(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        return self._decode(self.quantizer_top.codes_to_vectors(top),
                            self.quantizer_bottom.codes_to_vectors(bottom))
