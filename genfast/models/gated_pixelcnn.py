"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): a vertical and a horizontal stack with no blind spot, gated tanh * sigmoid
units, class and spatial conditioning, skip connections to the output.

Each GatedLayer is a fixed sequence of explicit convolutions, so a sampler can step it
one position at a time. Offsets below are relative to the output position (i, j) and
colour c; p = kernel_size // 2.

  vertical_conv    Conv2d (p + 1) x kernel_size on the vertical input: rows i-p..i,
                   columns j-p..j+p, all colours (it is applied to the input padded by p
                   rows on top and p columns each side). Sees row i itself, so the
                   horizontal stack only ever receives it shifted down a row:
  link             Conv2d 1x1 on the vertical pre-activation of (i - 1, j).
  horizontal_conv  MaskedConv2d 1 x kernel_size on the horizontal input: row i, columns
                   j-p..j-1, and at column j the colours < c (mask 'A', first layer) or
                   <= c (mask 'B', later layers).
  horizontal_out   1x1, mask 'B' between colour groups (colours <= c at (i, j); a plain
                   Conv2d for grey images); layers after the first add their horizontal
                   input to it (the residual connection). The last layer has none: only
                   its skip output is used, as is none of its vertical output.
  skip             1x1 like horizontal_out, summed over the layers.
  class_*, cond_*  per-layer terms added to both pre-activations: an embedding of the
                   label, a 1x1 Conv2d of the conditioning map at (i, j).

Pre-activations have 2 * hidden channels; gate() pairs them per colour group. After
L layers the output at (i, j, c) sees rows i-1-L*p..i-1 at columns j-L*p..j+L*p, row i
at columns j-L*p..j-1, and the colours < c at (i, j): the whole causal past once L*p
reaches the image size, with no blind spot. The output layers (relu, 1x1 'B', relu,
1x1 'B' to channels * levels) work per position.

Cached sampling (`sample(method="cached")`, the default) exploits that split: the
vertical stack of row i sees only rows < i (through the link), so it runs once per
row as batched convolutions on a ring buffer of each layer's last p + 1 vertical
input rows; the horizontal stack, the head and the draws of the row's sub-pixels run
in one genfast.ops.gated_pixelcnn_row call. Cache memory: per layer p + 1 rows of
vertical input, one row of vertical link terms and one row of horizontal input,
O(batch * layers * hidden * (p + 1) * width), never the activations of every step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genfast.models._compat import renamed_keywords
from genfast.models.autoregressive_image import (AutoregressiveImageModel, check_memory_format, masked_weight,
                                                pointwise, run_masked)
from genfast.nn import MaskedConv2d
from genfast.ops.gated_activation import gated_activation
from genfast.ops.gated_pixelcnn_row import GatedRowWeights, gated_pixelcnn_row
from genfast.ops.masked_conv2d import MAX_KERNEL_SIZE


def gate(pre: torch.Tensor, groups: int, impl: str = "auto") -> torch.Tensor:
    """tanh(a) * sigmoid(b) of a pre-activation (N, 2 * C, H, W) -> (N, C, H, W). Colour
    group g owns the channel block g of the pre-activation: a and b are its first and
    second half. One fused op (genfast.ops.gated_activation; impl="reference" is the
    composite tanh * sigmoid)."""
    return gated_activation(pre, groups, impl=impl)


def shift_down(t: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row i - 1 of t (zeros in row 0): one copy, in t's layout
    (padding first and then slicing would leave a strided view for the next layer to copy)."""
    return F.pad(t[:, :, :-1], (0, 0, 1, 0))


class GatedLayer(nn.Module):
    """One layer of both stacks (see the module docstring for every convolution's
    offsets). forward(v, h, labels, cond) -> (v, h, skip); v and h are None after the
    last layer."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int, first: bool, last: bool,
                 color_groups: int, num_classes: int | None, cond_channels: int, impl: str):
        super().__init__()
        self.first, self.last, self.color_groups = first, last, color_groups
        self.pad = kernel_size // 2
        pre = 2 * hidden
        self.vertical_conv = nn.Conv2d(in_channels, pre, (self.pad + 1, kernel_size))
        self.link = nn.Conv2d(pre, pre, 1)
        self.horizontal_conv = MaskedConv2d(in_channels, pre, (1, kernel_size),
                                            mask_type="A" if first else "B",
                                            color_groups=color_groups, impl=impl)
        self.horizontal_out = None if last else pointwise(hidden, hidden, color_groups, impl)
        self.skip = pointwise(hidden, hidden, color_groups, impl)
        conditional = num_classes is not None
        self.class_vertical = nn.Embedding(num_classes, pre) if conditional else None
        self.class_horizontal = nn.Embedding(num_classes, pre) if conditional else None
        self.cond_vertical = nn.Conv2d(cond_channels, pre, 1) if cond_channels else None
        self.cond_horizontal = nn.Conv2d(cond_channels, pre, 1) if cond_channels else None

    def conditioning(self, embedding, conv, labels, cond, like: torch.Tensor):
        """The class and spatial terms of one pre-activation (0 when unconditional)."""
        term = 0
        if embedding is not None:
            term = embedding(labels).to(like.dtype)[:, :, None, None]
        if conv is not None:
            term = term + conv(cond)
        return term

    def forward(self, v, h, labels=None, cond=None):
        p, impl = self.pad, self.horizontal_conv.impl
        v_pre = self.vertical_conv(F.pad(v, (p, p, p, 0)))
        # Unconditional layers skip the conditioning terms (adding a 0 is a full pass).
        if self.class_vertical is not None or self.cond_vertical is not None:
            v_pre = v_pre + self.conditioning(self.class_vertical, self.cond_vertical, labels, cond, v_pre)
        h_pre = run_masked(self.horizontal_conv, h) + self.link(shift_down(v_pre))
        if self.class_horizontal is not None or self.cond_horizontal is not None:
            h_pre = h_pre + self.conditioning(self.class_horizontal, self.cond_horizontal, labels, cond, h_pre)
        gated = gate(h_pre, self.color_groups, impl)
        skip = run_masked(self.skip, gated)
        if self.last:
            return None, None, skip
        h_out = run_masked(self.horizontal_out, gated)
        if not self.first:
            h_out = h_out + h
        return gate(v_pre, 1, impl), h_out, skip


class GatedPixelCNN(AutoregressiveImageModel):
    """Gated PixelCNN over `levels` values per sub-pixel; grey (image_channels=1) or RGB (3).
    Keyword arguments only (names: docs/vocabulary.md; `hidden` is a deprecated alias
    of hidden_channels).

    hidden_channels: channels of each stack (a multiple of image_channels); num_layers >= 1;
    kernel_size: odd, 3..11; num_classes: class conditioning (None for none);
    cond_channels: channels of a spatial conditioning map (N, cond_channels, H, W) given
    as `cond`, at the image's resolution (0 for none); embedding_dim: learned level embeddings instead of scaled
    levels at the input; image_size: the default size of `sample`;
    impl: "auto" | "ext" | "reference" for every masked layer; memory_format: "auto"
    (channels-last activations on AVX-512 CPUs, NCHW elsewhere), "channels_last" or "contiguous"
    (the layout of the activations between layers; the results are the same).
    """

    def __init__(self, *, image_channels: int = 1, levels: int = 256, hidden_channels: int = 64,
                 num_layers: int = 8, kernel_size: int = 5, num_classes: int | None = None,
                 cond_channels: int = 0, embedding_dim: int | None = None, image_size=28,
                 impl: str = "auto", memory_format: str = "auto", **deprecated):
        if deprecated:
            hidden_channels = renamed_keywords("GatedPixelCNN", deprecated,
                                               {"hidden_channels": hidden_channels})["hidden_channels"]
        channels, hidden = image_channels, hidden_channels
        super().__init__(image_channels=channels, levels=levels, num_classes=num_classes,
                         cond_channels=cond_channels, embedding_dim=embedding_dim,
                         image_size=image_size, impl=impl)
        if not isinstance(hidden, int) or hidden < 1 or hidden % channels:
            raise ValueError(f"GatedPixelCNN: hidden_channels must be a positive multiple of "
                             f"image_channels ({channels}), got {hidden!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"GatedPixelCNN: num_layers must be a positive int, got {num_layers!r}")
        if (not isinstance(kernel_size, int) or kernel_size % 2 == 0
                or not 3 <= kernel_size <= MAX_KERNEL_SIZE):
            raise ValueError(f"GatedPixelCNN: kernel_size must be odd and between 3 and "
                             f"{MAX_KERNEL_SIZE}, got {kernel_size!r}")
        self.hidden_channels, self.num_layers, self.kernel_size = hidden, num_layers, kernel_size
        self.memory_format = check_memory_format(memory_format, "GatedPixelCNN")
        self.layers = nn.ModuleList(
            GatedLayer(self.input_channels if i == 0 else hidden, hidden, kernel_size, i == 0,
                       i == num_layers - 1, self.color_groups, num_classes, cond_channels, impl)
            for i in range(num_layers))
        self.output_hidden = pointwise(hidden, hidden, channels, impl)
        self.output_conv = pointwise(hidden, channels * levels, channels, impl)

    @property
    def config(self) -> dict:
        return dict(image_channels=self.image_channels, levels=self.levels,
                    hidden_channels=self.hidden_channels,
                    num_layers=self.num_layers, kernel_size=self.kernel_size,
                    num_classes=self.num_classes, cond_channels=self.cond_channels,
                    embedding_dim=self.embedding_dim, image_size=self.image_size, impl=self.impl,
                    memory_format=self.memory_format)

    def logits(self, features, labels=None, cond=None, *, last_row_only=False):
        v = h = features
        skips = None
        for i, layer in enumerate(self.layers):
            v, h, skip = layer(v, h, labels, cond)
            if i == 0 and v is not None:  # the image's 1-3 channels have no layout to speak of
                v, h = self.in_layout(v), self.in_layout(h)
            skips = skip if skips is None else skips + skip
        if last_row_only:
            skips = skips[:, :, -1:]
        out = run_masked(self.output_hidden, torch.relu(skips))
        return self.output_logits(run_masked(self.output_conv, torch.relu(out)))

    # -- cached sampling ------------------------------------------------------------
    def pack_row_weights(self) -> GatedRowWeights:
        """The horizontal stack and output head packed for gated_pixelcnn_row (masks
        applied, K x out matrices), in the parameters' dtype."""
        first = self.layers[0]
        dtype, device = first.vertical_conv.weight.dtype, first.vertical_conv.weight.device

        def matrix(layer):  # a 1x1 layer as (in, out)
            return masked_weight(layer, dtype, device)[:, :, 0, 0].t()

        def taps(conv):  # a 1 x k masked conv's live taps j-p..j as (T, in, out)
            weight = masked_weight(conv, dtype, device)[:, :, 0, : self.kernel_size // 2 + 1]
            return weight.permute(2, 1, 0)

        table = self.feature_table(dtype, device)
        hidden = self.hidden_channels
        later = [taps(layer.horizontal_conv) for layer in self.layers[1:]]
        horizontal = (torch.stack(later) if later else
                      table.new_zeros((0, self.kernel_size // 2 + 1, hidden, 2 * hidden)))
        zeros = table.new_zeros((hidden, hidden))
        residual = [matrix(l.horizontal_out) if l.horizontal_out is not None else zeros
                    for l in self.layers]
        residual_bias = [l.horizontal_out.bias if l.horizontal_out is not None else zeros[0]
                         for l in self.layers]
        return GatedRowWeights(
            feature_table=table.contiguous(), first_weight=taps(first.horizontal_conv).contiguous(),
            horizontal_weight=horizontal.contiguous(), residual_weight=torch.stack(residual),
            residual_bias=torch.stack(residual_bias),
            skip_weight=torch.stack([matrix(l.skip) for l in self.layers]),
            skip_bias=torch.stack([l.skip.bias for l in self.layers]),
            head_weight1=matrix(self.output_hidden).contiguous(), head_bias1=self.output_hidden.bias,
            head_weight2=matrix(self.output_conv).contiguous(), head_bias2=self.output_conv.bias)

    def _sample_cached(self, x, known, u, labels, cond, temperature: float, impl: str,
                       keep_logits: bool = False) -> torch.Tensor | None:
        # The row op runs in the parameters' dtype: autocast would make the vertical
        # stack's outputs disagree with it.
        with torch.autocast(x.device.type, enabled=False):
            return self._sample_cached_rows(x, known, u, labels, cond, temperature, impl, keep_logits)

    def _sample_cached_rows(self, x, known, u, labels, cond, temperature, impl, keep_logits):
        n, _, height, width = x.shape
        p = self.kernel_size // 2
        weights = self.pack_row_weights()
        dtype = weights.feature_table.dtype
        if cond is not None:
            cond = cond.to(dtype)
        # Per layer: a ring of its last p + 1 vertical input rows (row r in slot
        # r % (p + 1)), padded p columns each side; the vertical conv reads it with its
        # kernel rows rotated to match (rotations[l][i % (p + 1)] at row i), so a new
        # row is one copy into its slot.
        rings = [weights.feature_table.new_zeros((n, l.vertical_conv.in_channels, p + 1, width + 2 * p))
                 for l in self.layers]
        rotations = [[torch.roll(l.vertical_conv.weight, phase + 1, dims=2) for phase in range(p + 1)]
                     for l in self.layers]
        # row_bias[l] (n, W, 2H): what layer l's horizontal stack adds at each column of
        # the current row besides its own taps: the link of the vertical stack of the
        # row above (zero pre-activations above row 0: the link's bias alone), the
        # horizontal conv's bias, the class and spatial conditioning.
        constant = [layer.horizontal_conv.bias + layer.link.bias for layer in self.layers]
        constant = [c if l.class_horizontal is None else c + l.class_horizontal(labels).to(dtype)
                    for c, l in zip(constant, self.layers)]
        constant = [c.reshape(-1, 1, c.shape[-1]) for c in constant]  # (1 or n, 1, 2H)
        row_bias = weights.feature_table.new_empty((len(self.layers), n, width, 2 * self.hidden_channels))
        for l in range(len(self.layers)):
            row_bias[l] = constant[l]

        def add_spatial_conditioning(i: int) -> None:
            for l, layer in enumerate(self.layers):
                if layer.cond_horizontal is not None:
                    row_bias[l] += layer.cond_horizontal(cond[:, :, i:i + 1])[:, :, 0].transpose(1, 2)

        add_spatial_conditioning(0)
        rows = []  # each row's logits (n, C, W, levels), with keep_logits
        for i in range(height):
            # x's known values were checked once per sample()/cached_logits call: no
            # per-row check (a device->host sync); failed draws are reported after the loop.
            values, logits = gated_pixelcnn_row(x[:, :, i], known[:, :, i], u[i], temperature,
                                                row_bias, weights, impl=impl, check_levels=False)
            if keep_logits:
                rows.append(logits)
            x[:, :, i] = values
            if i == height - 1:
                break
            # The vertical stack on row i gives the links of row i + 1 (a failed draw's -1
            # reads as level 0: the sample raises at the end anyway).
            row_in = self.input_features(x[:, :, i:i + 1].clamp(min=0))
            cond_row = None if cond is None else cond[:, :, i:i + 1]
            for l, layer in enumerate(self.layers):
                rings[l][:, :, i % (p + 1), p:p + width] = row_in[:, :, 0]
                v_pre = F.conv2d(rings[l], rotations[l][i % (p + 1)], layer.vertical_conv.bias)
                v_pre = v_pre + layer.conditioning(layer.class_vertical, layer.cond_vertical, labels,
                                                   cond_row, v_pre)
                link = layer.link.weight[:, :, 0, 0]
                torch.add(v_pre[:, :, 0].transpose(1, 2) @ link.t(), constant[l], out=row_bias[l])
                if l < len(self.layers) - 1:
                    row_in = gate(v_pre, 1, impl)
            add_spatial_conditioning(i + 1)
        self._check_drawn(x)
        # (H, n, C, W, levels) -> (n, levels, C, H, W), the layout of forward's logits.
        return torch.stack(rows).permute(1, 4, 2, 0, 3) if keep_logits else None
