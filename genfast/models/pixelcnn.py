"""PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"), built from
genfast's masked convolutions.

Layers, in order (k: the input kernel size, 7 by default; R = 2 * hidden channels):
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
"""
from __future__ import annotations

import torch
from torch import nn

from genfast.models.base import AutoregressiveImageModel, pointwise, run_masked
from genfast.nn import MaskedConv2d


class PixelCNN(AutoregressiveImageModel):
    """PixelCNN over `levels` values per sub-pixel; grey (channels=1) or RGB (channels=3).

    hidden: the residual blocks' inner width (a multiple of channels); num_blocks;
    input_kernel: the odd size of the first, mask-'A' layer; num_classes: class
    conditioning (None for none); embedding_dim: learned level embeddings instead of
    scaled levels at the input; image_size: the default size of `sample`;
    impl: "auto" | "ext" | "reference" for every masked layer.
    """

    def __init__(self, channels: int = 1, levels: int = 256, hidden: int = 64,
                 num_blocks: int = 6, input_kernel: int = 7, num_classes: int | None = None,
                 embedding_dim: int | None = None, image_size=28, impl: str = "auto"):
        super().__init__(channels=channels, levels=levels, num_classes=num_classes,
                         cond_channels=0, embedding_dim=embedding_dim, image_size=image_size,
                         impl=impl)
        if not isinstance(hidden, int) or hidden < 1 or hidden % channels:
            raise ValueError(f"PixelCNN: hidden must be a positive multiple of channels "
                             f"({channels}), got {hidden!r}")
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"PixelCNN: num_blocks must be an int >= 0, got {num_blocks!r}")
        self.hidden, self.num_blocks, self.input_kernel = hidden, num_blocks, input_kernel
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
        return dict(channels=self.channels, levels=self.levels, hidden=self.hidden,
                    num_blocks=self.num_blocks, input_kernel=self.input_kernel,
                    num_classes=self.num_classes, embedding_dim=self.embedding_dim,
                    image_size=self.image_size, impl=self.impl)

    def logits(self, features, labels=None, cond=None, *, last_row_only=False):
        h = run_masked(self.input_conv, features)
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
