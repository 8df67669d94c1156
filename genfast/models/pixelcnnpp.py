"""PixelCNN++ (Salimans, Karpathy, Chen and Kingma 2017; the architecture of
openai/pixel-cnn, re-written in PyTorch): a discretized mixture of logistics over
whole pixels (genfast.ops.dmol_loss / dmol_sample) on top of two streams of gated
ResNet blocks.

Streams. `u` sees the rows strictly above a pixel: down-shifted convolutions (kernel
2 x 3, the input padded one row on top and one column each side) and a final
down-shift of the first layer. `ul` sees the rows above and the pixels to the left:
down-right-shifted convolutions (kernel 2 x 2, padded one row on top and one column
on the left), started as down_shift(conv 1x3 of the input) + right_shift(conv 2x1 of
the input), and fed `u` at the same position through a 1x1 ("nin") layer. The input
is the image scaled to [-1, 1] with a channel of ones appended, so the zero padding
differs from a black image.

Resolutions. Up pass: nr_resnet gated ResNet blocks per stream at H x W, a stride-2
shifted convolution to H/2 x W/2, nr_resnet blocks, another to H/4 x W/4, nr_resnet
blocks; every block output (and each downsampling output) is kept. Down pass:
nr_resnet blocks at H/4, a stride-2 shifted transposed convolution to H/2 (u: kernel
2 x 3, output cropped to rows [0, 2h) and columns [1, 2w + 1); ul: kernel 2 x 2), then
nr_resnet + 1 blocks, another transposed convolution to H, nr_resnet + 1 blocks; each
down-pass block takes the matching up-pass output as its skip input (u: u's; ul: the
concatenation of the current u and ul's), in reverse order. The output is a 1x1 layer
on elu(ul) giving the DMOL parameters (genfast.ops.dmol's layout).

A gated ResNet block on x with optional skip input a and class label:
    c1 = conv(concat_elu(x)) [+ nin(concat_elu(a))]
    c2 = conv(dropout(concat_elu(c1))) [+ class embedding]   (2 * nr_filters channels)
    out = x + c2[:F] * sigmoid(c2[F:])
with concat_elu(t) = elu([t, -t]) over channels. Differences from openai/pixel-cnn:
no weight normalisation / data-dependent init (plain Conv2d, the second convolution of
each block scaled by 0.1 at init, as its init_scale), no Polyak averaging.

Sampling draws whole pixels: sub-pixel colours are coupled by the mixture, so one
draw per pixel with dmol_sample (see `sample`). `method="cached"` uses the row- and
pixel-incremental evaluation of genfast.models.pixelcnnpp_cache; "naive" reruns the
network for every pixel.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genfast.models.autoregressive_image import AutoregressiveImageModel, check_memory_format, positive_int
from genfast.models.sampling import sampling_uniforms
from genfast.ops.concat_elu import concat_elu as ops_concat_elu
from genfast.ops.dmol import dmol_loss, dmol_num_params, dmol_sample


def concat_elu(t: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """elu of [t, -t] concatenated over the channels (dim 1): the fused op
    genfast.ops.concat_elu (no cat temporary; its reference where there is no kernel or
    with impl="reference")."""
    return ops_concat_elu(t, 1, impl=impl)


def dropout(t: torch.Tensor, p: float, training: bool, impl: str = "auto") -> torch.Tensor:
    """nn.Dropout's rule (each element kept with probability 1 - p and scaled by
    1 / (1 - p), from torch's generator). On the CPU the mask comes from torch.rand_like
    instead of bernoulli_, whose CPU path is ~3x slower: dropout took ~24 % of a
    PixelCNN++ training step (fwd+bwd on 16 x 128 x 28 x 28, 2 threads: 17.7 against
    32.7 ms; channels-last 13.2 against 30.4 ms). F.dropout elsewhere (one fused kernel)
    and with impl="reference" (what the PyTorch ports run)."""
    if not training or p == 0:
        return t
    if t.device.type != "cpu" or impl == "reference":
        return F.dropout(t, p, True)
    return t * ((torch.rand_like(t) >= p).to(t.dtype) * (1.0 / (1.0 - p)))


def down_shift(t: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row i - 1 of t (zeros in row 0)."""
    return F.pad(t, (0, 0, 1, 0))[:, :, :-1]


def right_shift(t: torch.Tensor) -> torch.Tensor:
    """Column j of the result is column j - 1 of t (zeros in column 0)."""
    return F.pad(t, (1, 0, 0, 0))[:, :, :, :-1]


class DownShiftedConv2d(nn.Conv2d):
    """Kernel (kh, kw), kw odd, the input padded kh - 1 rows on top and (kw - 1) / 2
    columns each side: output (i, j) sees input rows i - kh + 1 .. i (times the stride),
    columns j - (kw-1)/2 .. j + (kw-1)/2."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 3), stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x):
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)))


class DownRightShiftedConv2d(nn.Conv2d):
    """Kernel (kh, kw), the input padded kh - 1 rows on top and kw - 1 columns on the
    left: output (i, j) sees input rows i - kh + 1 .. i, columns j - kw + 1 .. j."""

    def __init__(self, in_channels, out_channels, kernel_size=(2, 2), stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x):
        kh, kw = self.kernel_size
        return super().forward(F.pad(x, (kw - 1, 0, kh - 1, 0)))


class DownShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 transposed convolution, kernel 2 x 3, cropped to (2h, 2w): output row
    2i + t comes from input row i alone (tap t), so it sees no later rows."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, (2, 3), stride=2)

    def forward(self, x):
        h, w = x.shape[2:]
        return super().forward(x)[:, :, : 2 * h, 1: 2 * w + 1]


class DownRightShiftedConvTranspose2d(nn.ConvTranspose2d):
    """Stride-2 transposed convolution, kernel 2 x 2: output (2i + s, 2j + t) comes from
    input (i, j) alone (tap (s, t))."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, (2, 2), stride=2)


class GatedResnet(nn.Module):
    """The gated ResNet block (module docstring). conv: the stream's shifted
    convolution class; skip_channels: channels of the skip input a (0: none)."""

    def __init__(self, filters: int, conv, skip_channels: int, dropout: float,
                 num_classes: int | None):
        super().__init__()
        self.conv_in = conv(2 * filters, filters)
        self.skip = nn.Conv2d(2 * skip_channels, filters, 1) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * filters, 2 * filters)
        with torch.no_grad():  # openai/pixel-cnn's init_scale=0.1 on this layer
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.mul_(0.1)
        self.class_embedding = nn.Embedding(num_classes, 2 * filters) if num_classes else None

    def forward(self, x, a=None, labels=None, impl: str = "auto"):
        c1 = self.conv_in(concat_elu(x, impl))
        if self.skip is not None:
            c1 = c1 + self.skip(concat_elu(a, impl))
        c2 = self.conv_out(dropout(concat_elu(c1, impl), self.dropout.p, self.training, impl))
        if self.class_embedding is not None:
            c2 = c2 + self.class_embedding(labels).to(c2.dtype)[:, :, None, None]
        a_half, b_half = c2.chunk(2, dim=1)
        return x + a_half * torch.sigmoid(b_half)


class PixelCNNpp(AutoregressiveImageModel):
    """PixelCNN++ over `levels` values per sub-pixel; grey (image_channels=1) or RGB (3).
    Keyword arguments only.

    nr_resnet: gated ResNet blocks per stream and resolution (the down pass has one
    more at H/2 and H); nr_filters: channels of every block; num_mixtures: logistic
    mixture components; dropout: inside each block (training only); num_classes: class
    conditioning (None for none); image_size: (H, W), both multiples of 4, the default
    size of `sample` (forward takes any multiple-of-4 size); memory_format: "auto"
    (channels-last activations on AVX-512 CPUs, where oneDNN's convolutions train ~15 %
    faster on them; NCHW elsewhere), "channels_last" or "contiguous" (the layout of the
    activations between layers; the results are the same); impl: "auto" | "ext" |
    "reference" for genfast's ops in the model (concat_elu, dmol_loss, dmol_sample, the
    cached sampler's pixelcnnpp_row) and its dropout: "reference" runs their PyTorch
    twins and nn.Dropout's mask, i.e. the plain-PyTorch network.

    forward(x, labels) gives the DMOL parameters (N, P, H, W) (P = 3 * num_mixtures
    grey, 10 * num_mixtures RGB; layout: genfast.ops.dmol); loss(x) the mean NLL per
    sub-pixel in nats; bits_per_dim(x) the same in bits.
    """

    def __init__(self, *, image_channels: int = 1, levels: int = 256, nr_resnet: int = 5,
                 nr_filters: int = 160, num_mixtures: int = 10, dropout: float = 0.5,
                 num_classes: int | None = None, image_size=28, impl: str = "auto",
                 memory_format: str = "auto"):
        super().__init__(image_channels=image_channels, levels=levels, num_classes=num_classes,
                         cond_channels=0, embedding_dim=None, image_size=image_size, impl=impl)
        name = "PixelCNNpp"
        if image_channels not in (1, 3):
            raise ValueError(f"{name}: image_channels must be 1 (grey) or 3 (RGB), got {image_channels!r}")
        self.nr_resnet = positive_int(nr_resnet, "nr_resnet", name)
        self.nr_filters = positive_int(nr_filters, "nr_filters", name)
        self.num_mixtures = positive_int(num_mixtures, "num_mixtures", name)
        if (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                or not 0 <= dropout < 1):
            raise ValueError(f"{name}: dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.memory_format = check_memory_format(memory_format, name)
        if any(s % 4 for s in self.image_size):
            raise ValueError(f"{name}: image_size must be multiples of 4 (two stride-2 stages), "
                             f"got {self.image_size}")
        f, n = nr_filters, nr_resnet
        c_in = image_channels + 1

        def blocks(count, conv, skip):
            return nn.ModuleList(GatedResnet(f, conv, skip, self.dropout, num_classes)
                                 for _ in range(count))

        self.u_init = DownShiftedConv2d(c_in, f, (2, 3))
        self.ul_init_above = DownShiftedConv2d(c_in, f, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(c_in, f, (2, 1))
        # Index s = 0, 1, 2: resolution H / 2^s.
        self.u_up = nn.ModuleList(blocks(n, DownShiftedConv2d, 0) for _ in range(3))
        self.ul_up = nn.ModuleList(blocks(n, DownRightShiftedConv2d, f) for _ in range(3))
        self.u_downsample = nn.ModuleList(DownShiftedConv2d(f, f, (2, 3), stride=2) for _ in range(2))
        self.ul_downsample = nn.ModuleList(DownRightShiftedConv2d(f, f, (2, 2), stride=2) for _ in range(2))
        self.u_down = nn.ModuleList(blocks(n + (s < 2), DownShiftedConv2d, f) for s in range(3))
        self.ul_down = nn.ModuleList(blocks(n + (s < 2), DownRightShiftedConv2d, 2 * f) for s in range(3))
        # u_upsample[s]: from resolution s + 1 to s.
        self.u_upsample = nn.ModuleList(DownShiftedConvTranspose2d(f, f) for _ in range(2))
        self.ul_upsample = nn.ModuleList(DownRightShiftedConvTranspose2d(f, f) for _ in range(2))
        self.output_conv = nn.Conv2d(f, dmol_num_params(image_channels, num_mixtures), 1)

    @property
    def config(self) -> dict:
        return dict(image_channels=self.image_channels, levels=self.levels, nr_resnet=self.nr_resnet,
                    nr_filters=self.nr_filters, num_mixtures=self.num_mixtures, dropout=self.dropout,
                    num_classes=self.num_classes, image_size=self.image_size, impl=self.impl,
                    memory_format=self.memory_format)

    # -- network ------------------------------------------------------------------
    def input_features(self, x: torch.Tensor) -> torch.Tensor:
        """Levels scaled to [-1, 1] plus a channel of ones: (N, channels + 1, H, W)."""
        scaled = super().input_features(x)
        return torch.cat([scaled, torch.ones_like(scaled[:, :1])], dim=1)

    def params(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network on input_features (no argument checks): DMOL parameters (N, P, H, W).
        Those at (i, j) depend only on the pixels before (i, j) in raster order."""
        features = self.in_layout(features)
        u_list = [down_shift(self.u_init(features))]
        ul_list = [down_shift(self.ul_init_above(features)) + right_shift(self.ul_init_left(features))]
        for s in range(3):
            if s:
                u_list.append(self.u_downsample[s - 1](u_list[-1]))
                ul_list.append(self.ul_downsample[s - 1](ul_list[-1]))
            for u_block, ul_block in zip(self.u_up[s], self.ul_up[s]):
                u_list.append(u_block(u_list[-1], None, labels, self.impl))
                ul_list.append(ul_block(ul_list[-1], u_list[-1], labels, self.impl))
        u, ul = u_list.pop(), ul_list.pop()
        for s in (2, 1, 0):
            if s < 2:
                u, ul = self.u_upsample[s](u), self.ul_upsample[s](ul)
            for u_block, ul_block in zip(self.u_down[s], self.ul_down[s]):
                u = u_block(u, u_list.pop(), labels, self.impl)
                ul = ul_block(ul, torch.cat([u, ul_list.pop()], dim=1), labels, self.impl)
        return self.output_conv(F.elu(ul))

    def check_size(self, height: int, width: int, name: str = "x") -> None:
        if height % 4 or width % 4:
            raise ValueError(f"PixelCNNpp: {name} height and width must be multiples of 4, "
                             f"got {height} x {width}")

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """DMOL parameters (N, P, H, W) of integer images x (N, channels, H, W)."""
        self.check_images(x)
        self.check_size(*x.shape[2:])
        self.check_conditioning(x.shape[0], x.shape[2], x.shape[3], labels, cond)
        return self.params(self.input_features(x), labels)

    def output_nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean NLL per sub-pixel in nats of x under forward's output (computed in
        float32 at least: dmol_loss takes float32/float64)."""
        if params.dtype not in (torch.float32, torch.float64):
            params = params.float()
        return dmol_loss(params, x, num_mixtures=self.num_mixtures, levels=self.levels,
                         impl=self.impl) / self.image_channels

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None,
             cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood per sub-pixel, in nats."""
        return self.output_nll(self(x, labels, cond), x)

    def bits_per_dim(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """loss(x) in bits per sub-pixel."""
        return self.loss(x, labels) / math.log(2.0)

    # -- sampling -------------------------------------------------------------------
    def _sampling_uniforms(self, n, height, width, generator, device) -> torch.Tensor:
        """sampling_uniforms(n, channels + 1, H, W): per pixel the mixture's uniform and
        one per colour, (H, W, C + 1, n)."""
        return sampling_uniforms(n, self.image_channels + 1, height, width, generator, device)

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, prefix: torch.Tensor | None = None,
               known_mask: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, device=None, cond=None,
               method: str = "cached", impl: str | None = None) -> torch.Tensor:
        """Draws n images of self.image_size, (n, channels, H, W) int64.

        method: "cached" (default; genfast.models.pixelcnnpp_cache: each layer computes
        only its new rows / pixels from caches of its last rows) or "naive" (the network
        rerun for every pixel, on the rows up to the next multiple of 4 it needs).
        labels: an int or an integer tensor (n,) when the model has num_classes.
        prefix (n, channels, h, W), known_mask (bool, broadcastable to prefix):
        image completion as in AutoregressiveImageModel.sample, except that a pixel is
        known or drawn as a whole (its colours are coupled): the mask must agree across
        the colours of each pixel. temperature > 0 scales the logistic scales and
        divides the mixture logits (dmol_sample).

        Randomness: exactly one call sampling_uniforms(n, channels + 1, H, W, generator,
        device) (float64, drawn in raster order, within a pixel the mixture's uniform
        then one per colour, images innermost; known pixels included); pixel (i, j) of
        image b is dmol_sample(its params, u[i, j, :, b]) (genfast.ops.dmol's
        convention). Any sampler doing the same with the same generator state draws the
        same images, up to the rounding of the params themselves.
        """
        return super().sample(n, labels=labels, prefix=prefix, known_mask=known_mask,
                              temperature=temperature, generator=generator, device=device,
                              cond=cond, method=method, impl=impl)

    def _check_pixel_mask(self, known: torch.Tensor) -> None:
        if self.image_channels > 1 and not (known == known[:, :1]).all():
            raise ValueError("PixelCNNpp.sample: known_mask must be the same for every colour of a "
                             "pixel (PixelCNN++ draws whole pixels)")

    def _draw(self, params: torch.Tensor, u: torch.Tensor, temperature: float, impl: str) -> torch.Tensor:
        params = params.float() if params.dtype not in (torch.float32, torch.float64) else params
        return dmol_sample(params, u, num_mixtures=self.num_mixtures, levels=self.levels,
                           temperature=float(temperature), impl=impl)

    def _sample_naive(self, x, known, rows: int, u, labels, cond, temperature: float) -> None:
        """Fills the unknown pixels of x in place, rerunning the network for every pixel
        (i, j) on rows 0..i rounded up to a multiple of 4 (the later rows do not reach row
        i). u: sampling_uniforms's (H, W, C + 1, n)."""
        self._check_pixel_mask(known)
        height, width = self.image_size
        u = u.permute(3, 2, 0, 1)  # (n, C + 1, H, W)
        for i in range(height):
            top = min(height, (i // 4 + 1) * 4)
            for j in range(width):
                todo = ~known[:, 0, i, j] if i < rows else None
                if todo is not None and not todo.any():
                    continue
                params = self.params(self.input_features(x[:, :, :top]), labels)[:, :, i:i + 1, j:j + 1]
                if not torch.isfinite(params).all():
                    raise RuntimeError(f"PixelCNNpp.sample: the network produced non-finite "
                                       f"parameters at row {i}, column {j}")
                value = self._draw(params, u[:, :, i:i + 1, j:j + 1].contiguous(), temperature,
                                   self.impl)[:, :, 0, 0]
                x[:, :, i, j] = value if todo is None else torch.where(todo[:, None], value, x[:, :, i, j])

    def _sample_cached(self, x, known, u, labels, cond, temperature: float, impl: str,
                       keep_logits: bool = False):
        from genfast.models.pixelcnnpp_cache import sample_cached

        self._check_pixel_mask(known)
        with torch.autocast(x.device.type, enabled=False):
            return sample_cached(self, x, known[:, 0], u, labels, temperature,
                                 impl, keep_params=keep_logits)

    @torch.no_grad()
    def cached_params(self, x: torch.Tensor, labels: torch.Tensor | None = None, *,
                      impl: str | None = None) -> torch.Tensor:
        """The DMOL parameters (N, P, H, W) of integer images x computed the way the cached
        sampler computes them, every pixel known (teacher forcing): equal to self(x) up
        to float rounding. For tests and debugging."""
        self.check_images(x)
        if tuple(x.shape[2:]) != self.image_size:
            raise ValueError(f"PixelCNNpp.cached_params: x must be {self.image_size} images, "
                             f"got {tuple(x.shape[2:])}")
        n, channels, height, width = x.shape
        self.check_conditioning(n, height, width, labels, None)
        u = torch.zeros((height, width, channels + 1, n), dtype=torch.float64, device=x.device)
        was_training = self.training
        self.eval()
        try:
            return self._sample_cached(x.long().clone(), torch.ones_like(x, dtype=torch.bool), u, labels,
                                       None, 1.0, self.impl if impl is None else impl, keep_logits=True)
        finally:
            self.train(was_training)

    def cached_logits(self, *args, **kwargs):
        raise NotImplementedError("PixelCNNpp has no logits; use cached_params")
