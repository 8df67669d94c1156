"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"), built from
genfast's masked convolutions.

Layers, in order (k: input_kernel_size, 7 by default; R = 2 * hidden_channels):
  input    MaskedConv2d 'A', k x k, input_channels -> R; output (i, j) sees rows i-k//2..i-1
           (columns j-k//2..j+k//2) and row i columns j-k//2..j-1, plus the earlier colours
           at (i, j).
  blocks   num_blocks residual blocks: x + conv1x1(relu(conv3x3(relu(conv1x1(relu(x)))))),
           R -> hidden -> hidden -> R; the 3x3 is mask 'B' (row i-1 columns j-1..j+1, row i
           columns j-1..j, colours <= c at (i, j)); the 1x1s are mask 'B' with colour groups
           (colours <= c; plain 1x1 convolutions for grey images).
  output   relu, 1x1 'B' R -> R, relu, 1x1 'B' R -> channels * levels (also plain for grey).
Class conditioning adds a learned per-class vector after the input layer.

The receptive field has the blind spot of stacked masked convolutions: however deep
the network, the output at (i, j) sees row i-r (r >= 1) only up to column
j + k//2 + r - 1; the pixels to the right of that are in its past but unseen
(tests/test_models_pixelcnn.py::test_the_blind_spot). The Gated PixelCNN removes it.

Cached sampling (`sample(method="cached")`, the default): every k x k masked
convolution at row i is split into its rows above the centre row, all known when row
i starts (batched matrix products per row over the cached rows: the input features of the
last k//2 image rows, and each block's relu'd 1x1-reduce output of row i-1), and its
centre row plus the per-position layers, which genfast.ops.pixelcnn_row steps through
the row one sub-pixel at a time in one op call. Cache memory between rows:
N * num_blocks * hidden * W values (the reduce rows) plus the last k//2 rows of the
images (N * channels * k//2 * W levels, whose features are recomputed): O(batch *
layers * channels * kernel rows * width), independent of the height.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genfast.models._compat import renamed_keywords
from genfast.models.autoregressive_image import (AutoregressiveImageModel, check_memory_format, masked_weight,
                                                pointwise, run_masked)
from genfast.nn import MaskedConv2d
from genfast.ops.pixelcnn_row import PixelCNNRowWeights, pixelcnn_row


class PixelCNN(AutoregressiveImageModel):
    """PixelCNN over `levels` values per sub-pixel; grey (image_channels=1) or RGB (3).
    Keyword arguments only (names: docs/vocabulary.md; `hidden` is a deprecated alias
    of hidden_channels).

    hidden_channels: the residual blocks' inner width (a multiple of image_channels;
    the residual stream has twice as many); num_blocks: residual blocks;
    input_kernel_size: the odd size of the first, mask-'A' layer; num_classes: class
    conditioning (None for none); embedding_dim: learned level embeddings instead of
    scaled levels at the input; image_size: the default size of `sample`;
    impl: "auto" | "ext" | "reference" for every masked layer; memory_format: "auto"
    (channels-last activations on AVX-512 CPUs, NCHW elsewhere), "channels_last" or "contiguous"
    (the layout of the activations between layers; the results are the same).
    """

    def __init__(self, *, image_channels: int = 1, levels: int = 256, hidden_channels: int = 64,
                 num_blocks: int = 6, input_kernel_size: int = 7, num_classes: int | None = None,
                 embedding_dim: int | None = None, image_size=28, impl: str = "auto",
                 memory_format: str = "auto", **deprecated):
        if deprecated:
            hidden_channels = renamed_keywords("PixelCNN", deprecated,
                                               {"hidden_channels": hidden_channels})["hidden_channels"]
        channels, hidden, input_kernel = image_channels, hidden_channels, input_kernel_size
        super().__init__(image_channels=channels, levels=levels, num_classes=num_classes,
                         cond_channels=0, embedding_dim=embedding_dim, image_size=image_size,
                         impl=impl)
        if not isinstance(hidden, int) or hidden < 1 or hidden % channels:
            raise ValueError(f"PixelCNN: hidden_channels must be a positive multiple of "
                             f"image_channels ({channels}), got {hidden!r}")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"PixelCNN: num_blocks must be an int >= 0, got {num_blocks!r}")
        self.hidden_channels, self.num_blocks, self.input_kernel_size = hidden, num_blocks, input_kernel
        self.memory_format = check_memory_format(memory_format, "PixelCNN")
        groups, wide = self.color_groups, 2 * hidden

        def masked(cin, cout, k, mask_type="B"):
            return MaskedConv2d(cin, cout, k, mask_type=mask_type, color_groups=groups, impl=impl)

        self.input_conv = masked(self.input_channels, wide, input_kernel, "A")
        self.class_embedding = None if num_classes is None else nn.Embedding(num_classes, wide)
        self.blocks = nn.ModuleList(
            nn.ModuleList([pointwise(wide, hidden, groups, impl), masked(hidden, hidden, 3),
                           pointwise(hidden, wide, groups, impl)])
            for _ in range(num_blocks))
        self.output_hidden = pointwise(wide, wide, groups, impl)
        self.output_conv = pointwise(wide, channels * levels, groups, impl)

    @property
    def config(self) -> dict:
        return dict(image_channels=self.image_channels, levels=self.levels,
                    hidden_channels=self.hidden_channels, num_blocks=self.num_blocks,
                    input_kernel_size=self.input_kernel_size,
                    num_classes=self.num_classes, embedding_dim=self.embedding_dim,
                    image_size=self.image_size, impl=self.impl, memory_format=self.memory_format)

    def logits(self, features, labels=None, cond=None, *, last_row_only=False):
        h = self.in_layout(run_masked(self.input_conv, features))
        if self.class_embedding is not None:
            h = h + self.class_embedding(labels).to(h.dtype)[:, :, None, None]
        for reduce, conv, expand in self.blocks:
            r = run_masked(reduce, torch.relu(h))
            r = run_masked(conv, torch.relu(r))
            h = h + run_masked(expand, torch.relu(r))
        if last_row_only:
            h = h[:, :, -1:]
        out = run_masked(self.output_hidden, torch.relu(h))
        return self.output_logits(run_masked(self.output_conv, torch.relu(out)))

    # -- cached sampling ------------------------------------------------------------
    def pack_row_weights(self, dtype: torch.dtype | None = None, device=None) -> PixelCNNRowWeights:
        """The centre-row weights of genfast.ops.pixelcnn_row (masked entries zeroed)."""
        device = torch.device(device) if device is not None else next(self.parameters()).device
        dtype = dtype or next(self.parameters()).dtype
        p, wide, hidden = self.input_kernel_size // 2, 2 * self.hidden_channels, self.hidden_channels
        weight = lambda layer: masked_weight(layer, dtype, device)  # noqa: E731
        bias = lambda layer: layer.bias.detach().to(device=device, dtype=dtype)  # noqa: E731
        matrix = lambda layer: weight(layer)[:, :, 0, 0].t()  # noqa: E731 - a 1x1 as (in, out)

        def stacked(make, *shape):
            if not self.blocks:
                return torch.zeros((0, *shape), dtype=dtype, device=device)
            return torch.stack([make(block) for block in self.blocks]).contiguous()

        # (out, in, taps) -> (taps * in, out): row tap * in + channel.
        taps = lambda w: w.permute(2, 1, 0).reshape(-1, w.shape[0])  # noqa: E731
        return PixelCNNRowWeights(
            feature_table=self.feature_table(dtype, device).contiguous(),
            input_weight=taps(weight(self.input_conv)[:, :, p, :p + 1]).contiguous(),
            reduce_weight=stacked(lambda b: matrix(b[0]), wide, hidden),
            reduce_bias=stacked(lambda b: bias(b[0]), hidden),
            conv_weight=stacked(lambda b: taps(weight(b[1])[:, :, 1, :2]), 2 * hidden, hidden),
            expand_weight=stacked(lambda b: matrix(b[2]), hidden, wide),
            expand_bias=stacked(lambda b: bias(b[2]), wide),
            hidden_weight=matrix(self.output_hidden).contiguous(),
            hidden_bias=bias(self.output_hidden),
            output_weight=matrix(self.output_conv).contiguous(),
            output_bias=bias(self.output_conv))

    def _sample_cached(self, x, known, u, labels, cond, temperature: float, impl: str,
                       keep_logits: bool = False) -> torch.Tensor | None:
        """Row by row: the rows-above parts of the k x k layers as batched matrix
        products over the cached rows, then one pixelcnn_row call for the centre row and the
        per-position layers (see the module docstring). With keep_logits, returns every
        sub-pixel's logits (n, levels, channels, H, W)."""
        n, _, height, width = x.shape
        dtype, device = self._compute_dtype(x.device), x.device
        weights = self.pack_row_weights(dtype, device)
        p, blocks, hidden = self.input_kernel_size // 2, self.num_blocks, self.hidden_channels
        # The input conv's rows i-p..i-1 (columns j-p..j+p) as a matrix over unfolded
        # windows, (Cin * p * k, R).
        input_above = masked_weight(self.input_conv, dtype, device)[:, :, :p]
        input_above = input_above.reshape(input_above.shape[0], -1).t()
        input_bias = self.input_conv.bias.detach().to(dtype).expand(n, -1)
        if self.class_embedding is not None:
            input_bias = input_bias + self.class_embedding(labels).detach().to(dtype)
        input_bias = input_bias[:, None, :]                                  # (N, 1, R)
        # Each block's 3x3 row i-1 as one product with its three taps side by side,
        # (B, Hd, 3 * Hd), whose tap outputs are then shifted into place.
        conv_above = torch.stack([masked_weight(b[1], dtype, device)[:, :, 0].permute(1, 2, 0).reshape(hidden, -1)
                                  for b in self.blocks]) if blocks else None
        conv_bias = torch.stack([b[1].bias.detach().to(dtype) for b in self.blocks])[:, None, None] if blocks else None
        reduce_rows = torch.zeros(blocks, n, width, hidden, dtype=dtype, device=device)
        kept = [] if keep_logits else None
        for i in range(height):
            row_bias = input_bias.expand(n, width, -1)
            if p:
                # A failed draw's -1 reads as level 0 (the sample raises at the end anyway).
                feats = self.input_features(x[:, :, max(0, i - p):i].clamp(min=0))
                feats = F.pad(feats, (p, p, p - feats.shape[2], 0))          # zeros outside the image
                windows = feats.unfold(3, 2 * p + 1, 1).permute(0, 3, 1, 2, 4).reshape(n, width, -1)
                row_bias = torch.baddbmm(row_bias, windows, input_above.expand(n, -1, -1))
            block_bias = reduce_rows
            if blocks:
                taps = torch.bmm(reduce_rows.reshape(blocks, n * width, hidden), conv_above)
                taps = taps.view(blocks, n, width, 3, hidden)
                block_bias = taps[:, :, :, 1] + conv_bias                  # column j
                block_bias[:, :, 1:] += taps[:, :, :-1, 0]                 # column j - 1
                block_bias[:, :, :-1] += taps[:, :, 1:, 2]                 # column j + 1
            # x's known values were checked once per sample()/cached_logits call: no
            # per-row check (a device->host sync); failed draws are reported after the loop.
            values, logits, reduce_rows = pixelcnn_row(
                x[:, :, i], known[:, :, i], u[i], temperature, row_bias, block_bias, weights, impl=impl,
                check_levels=False)
            x[:, :, i] = values
            if keep_logits:
                kept.append(logits)
        self._check_drawn(x)
        if keep_logits:
            return torch.stack(kept, dim=2).permute(0, 4, 1, 2, 3)  # (N, C, H, W, L) -> (N, L, C, H, W)
        return None
