"""The autoregressive image-model base: what PixelCNN and Gated PixelCNN share (the
input and output layout, argument checks, the likelihood and naive sampling), and the
argument checks WaveNet reuses (positive_int, is_integer_tensor, check_labels).

Images are integer levels in [0, levels), shaped (N, channels, H, W); the sub-pixels
of a pixel are generated in channel order (R, G, B). Logits are shaped
(N, levels, channels, H, W), the layout F.cross_entropy takes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from genfast.models.sampling import inverse_cdf, sampling_uniforms
from genfast.nn import MaskedConv2d
from genfast.ops import masked_conv2d
from genfast.ops.masked_conv2d import _cpu_has_avx512
from genfast.ops.softmax_cross_entropy import softmax_cross_entropy


def pointwise(in_channels: int, out_channels: int, color_groups: int, impl: str) -> nn.Conv2d:
    """A 1x1 layer of an autoregressive model: masked between colour groups (colour c
    sees colours <= c, mask 'B'); with one colour group there is nothing to mask and it
    is a plain nn.Conv2d."""
    if color_groups == 1:
        return nn.Conv2d(in_channels, out_channels, 1)
    return MaskedConv2d(in_channels, out_channels, 1, color_groups=color_groups, impl=impl)


def run_masked(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """layer(x) in x's dtype: autocast does not cast the inputs of genfast's ops, so under
    mixed precision a MaskedConv2d's float32 weights are cast to the activations' dtype
    here (plain convolutions are cast by autocast itself)."""
    if not isinstance(layer, MaskedConv2d) or layer.weight.dtype == x.dtype:
        return layer(x)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return masked_conv2d(x, layer.weight.to(x.dtype), bias, mask_type=layer.mask_type,
                         color_groups=layer.color_groups, dilation=layer.dilation,
                         impl=layer.impl, algorithm=layer.algorithm)


def masked_weight(layer: nn.Conv2d, dtype: torch.dtype, device) -> torch.Tensor:
    """A layer's weight as its convolution applies it (mask applied for a
    MaskedConv2d), detached, in dtype on device: what the cached samplers pack."""
    weight = layer.weight.detach()
    if isinstance(layer, MaskedConv2d):
        weight = weight * layer.mask
    return weight.to(device=device, dtype=dtype)


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def check_memory_format(value, model: str) -> str:
    if value not in MEMORY_FORMATS:
        raise ValueError(f"{model}: memory_format must be one of {MEMORY_FORMATS}, got {value!r}")
    return value


def positive_int(value, name: str, model: str) -> int:
    """value, checked to be a positive int (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{model}: {name} must be a positive int, got {value!r}")
    return value


def is_integer_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and not (t.is_floating_point() or t.is_complex()
                                                or t.dtype == torch.bool)


def check_labels(labels, n: int, num_classes: int | None, model: str, *,
                 accepts: str = "an integer tensor") -> None:
    """Class labels (n,) in [0, num_classes), or None for an unconditional model."""
    if num_classes is None:
        if labels is not None:
            raise ValueError(f"{model}: labels given but the model is unconditional "
                             f"(num_classes=None)")
        return
    if labels is None:
        raise ValueError(f"{model}: labels are required (num_classes={num_classes})")
    if not is_integer_tensor(labels):
        raise TypeError(f"{model}: labels must be {accepts}, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (n,):
        raise ValueError(f"{model}: labels must be shaped ({n},), got {tuple(labels.shape)}")
    check_range(model, "labels", labels, num_classes)


def check_range(model: str, subject: str, t: torch.Tensor, upper: int) -> None:
    """Raises a ValueError unless the non-empty integer tensor t lies in [0, upper)."""
    lo, hi = torch.aminmax(t)
    if lo < 0 or hi >= upper:
        raise ValueError(f"{model}: {subject} must lie in [0, {upper}), got values in [{int(lo)}, {int(hi)}]")


class AutoregressiveImageModel(nn.Module):
    """Base class. Subclasses build their layers in __init__ (after calling
    super().__init__) and implement `logits`."""

    def __init__(self, *, image_channels: int, levels: int, num_classes: int | None,
                 cond_channels: int, embedding_dim: int | None, image_size, impl: str):
        super().__init__()
        name = type(self).__name__
        self.image_channels = positive_int(image_channels, "image_channels", name)
        self.levels = positive_int(levels, "levels", name)
        if levels < 2:
            raise ValueError(f"{name}: levels must be at least 2, got {levels}")
        if num_classes is not None:
            positive_int(num_classes, "num_classes", name)
        self.num_classes = num_classes
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise ValueError(f"{name}: cond_channels must be an int >= 0, got {cond_channels!r}")
        self.cond_channels = cond_channels
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
                or not all(isinstance(s, int) and s >= 1 for s in image_size)):
            raise ValueError(f"{name}: image_size must be an int or a pair of positive ints, "
                             f"got {image_size!r}")
        self.image_size = tuple(image_size)
        # One colour group per sub-pixel: group c of every masked layer sees colours <= c.
        self.color_groups = image_channels
        self.embedding_dim = embedding_dim
        if embedding_dim is None:
            self.input_channels = image_channels
            self.embedding = None
        else:
            positive_int(embedding_dim, "embedding_dim", name)
            self.input_channels = image_channels * embedding_dim
            self.embedding = nn.Embedding(levels, embedding_dim)
        self.impl = impl

    # -- layout -----------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The constructor arguments: type(model)(**model.config) rebuilds the model."""
        raise NotImplementedError

    def set_impl(self, impl: str) -> "AutoregressiveImageModel":
        """Makes every masked layer run impl ("auto" | "ext" | "reference")."""
        self.impl = impl
        for module in self.modules():
            if isinstance(module, MaskedConv2d):
                module.impl = impl
        return self

    def in_layout(self, h: torch.Tensor) -> torch.Tensor:
        """h (N, C, H, W) in the memory layout the model runs its layers in (its
        `memory_format`, set by subclasses that offer it): channels-last for
        "channels_last", and for "auto" on AVX-512 CPUs, where oneDNN's convolutions
        (their backward above all) and genfast's channels-last live-tap kernels run
        fastest on it (docs/masked-conv-algorithms.md, docs/pixelcnnpp.md); contiguous
        otherwise ("auto" keeps NCHW where that was not measured: other CPUs, which lack
        the channels-last kernel, and CUDA)."""
        fmt = getattr(self, "memory_format", "contiguous")
        if fmt == "auto":
            fmt = "channels_last" if h.device.type == "cpu" and _cpu_has_avx512() else "contiguous"
        return h.contiguous(memory_format=torch.channels_last if fmt == "channels_last"
                            else torch.contiguous_format)

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return next(self.parameters()).dtype

    def input_features(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels (N, channels, H, W) -> the float input of the first layers,
        (N, input_channels, H, W), channel c's features in colour group c: levels scaled
        to [-1, 1], or a learned embedding of each level."""
        dtype = self._compute_dtype(x.device)
        if self.embedding is None:
            return (x.to(dtype) * (2.0 / (self.levels - 1)) - 1.0)
        n, c, h, w = x.shape
        e = self.embedding(x.long()).to(dtype)  # (N, C, H, W, E)
        return e.permute(0, 1, 4, 2, 3).reshape(n, c * self.embedding_dim, h, w)

    def feature_table(self, dtype: torch.dtype, device) -> torch.Tensor:
        """input_features of every level for one sub-pixel, (levels, E), for the cached
        samplers' ops (E = 1 for scaled levels)."""
        if self.embedding is None:
            levels = torch.arange(self.levels, device=device).to(dtype)
            return (levels * (2.0 / (self.levels - 1)) - 1.0).unsqueeze(1)
        return self.embedding.weight.detach().to(device=device, dtype=dtype)

    def output_logits(self, out: torch.Tensor) -> torch.Tensor:
        """The last layer's (N, channels * levels, H, W), colour-group-major, to logits
        (N, levels, channels, H, W)."""
        n, _, h, w = out.shape
        return out.view(n, self.image_channels, self.levels, h, w).transpose(1, 2)

    def logits(self, features: torch.Tensor, labels: torch.Tensor | None = None,
               cond: torch.Tensor | None = None, *, last_row_only: bool = False) -> torch.Tensor:
        """The network on `input_features` (no argument checks). Logits at (i, j, c) depend
        only on the features of earlier sub-pixels in raster/colour order. With
        last_row_only, the output layers run on the last row only: (N, levels, C, 1, W)."""
        raise NotImplementedError

    # -- checks -----------------------------------------------------------------
    def check_images(self, x, name: str = "x") -> None:
        model = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{model}: {name} must be a tensor, got {type(x).__name__}")
        if not is_integer_tensor(x):
            raise TypeError(f"{model}: {name} must hold integer levels in [0, {self.levels}) "
                            f"(an integer tensor), got {x.dtype}; quantise images first")
        if x.dim() != 4 or x.shape[1] != self.image_channels:
            raise ValueError(f"{model}: {name} must be shaped (N, {self.image_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{model}: {name} must not be empty, got shape {tuple(x.shape)}")
        check_range(model, f"{name} values", x, self.levels)

    def check_conditioning(self, n: int, height: int, width: int, labels, cond) -> None:
        model = type(self).__name__
        check_labels(labels, n, self.num_classes, model)
        if self.cond_channels == 0:
            if cond is not None:
                raise ValueError(f"{model}: cond given but the model has cond_channels=0")
        else:
            shape = (n, self.cond_channels, height, width)
            if not isinstance(cond, torch.Tensor) or not cond.is_floating_point():
                raise TypeError(f"{model}: cond must be a float tensor shaped {shape}, got "
                                f"{getattr(cond, 'dtype', type(cond).__name__)}")
            if tuple(cond.shape) != shape:
                raise ValueError(f"{model}: cond must be shaped {shape}, got {tuple(cond.shape)}")

    # -- likelihood ---------------------------------------------------------------
    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (N, levels, channels, H, W) of integer images x (N, channels, H, W)."""
        self.check_images(x)
        self.check_conditioning(x.shape[0], x.shape[2], x.shape[3], labels, cond)
        if cond is not None:
            cond = cond.to(self._compute_dtype(cond.device))
        return self.logits(self.input_features(x), labels, cond)

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None,
             cond: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood per sub-pixel, in nats."""
        return nll(self(x, labels, cond), x, self.impl)

    # -- sampling -------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, labels=None, prefix: torch.Tensor | None = None,
               known_mask: torch.Tensor | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, device=None,
               cond: torch.Tensor | None = None, method: str = "cached",
               impl: str | None = None) -> torch.Tensor:
        """Draws n images of self.image_size, (n, channels, H, W) int64.

        method: "cached" (default) steps the network one sub-pixel at a time, each
        layer computing only the new position from caches of its past inputs (see the
        model's `_sample_cached`); "naive" reruns the network for every sub-pixel.
        impl: "auto" | "ext" | "reference" for the cached sampler's step op
        (default: the model's impl); "reference" is the Python-orchestrated sampler.

        labels: an int or an integer tensor (n,) when the model has num_classes.
        cond: (n, cond_channels, H, W) float when the model has cond_channels.
        prefix, known_mask: image completion. prefix (n, channels, h, W) integer levels
        gives the top h <= H rows; known_mask (bool, broadcastable to prefix's shape)
        says which of its sub-pixels are known (default: all). Known sub-pixels are kept
        as given, the others are sampled conditioned on everything before them in
        raster order.
        temperature > 0 divides the logits.

        Randomness: exactly one call sampling_uniforms(n, channels, H, W, generator,
        device) (one float64 uniform per sub-pixel, drawn in raster order, colours R, G,
        B within a pixel, images within a sub-pixel, known sub-pixels included), and
        sub-pixel (i, j, c) of image b takes inverse_cdf(its logits, u[i, j, c, b],
        temperature). Another sampler that does the same with the same generator state
        reproduces these images.

        Naive cost: the network for row i runs on rows 0..i only and its output layers
        on row i only; the logits there are those of the full image (they do not
        depend on later rows) up to float rounding: PyTorch's elementwise kernels may
        round the tail of a tensor differently, so a draw can differ from a
        full-forward sampler's only where a uniform falls within that rounding of a
        CDF step. The cached sampler's logits equal them to the same rounding.
        """
        model = type(self).__name__
        impl = check_sample_args(self, n, temperature, method, impl, generator)
        device = torch.device(device) if device is not None else next(self.parameters()).device
        height, width = self.image_size
        if isinstance(labels, int) and not isinstance(labels, bool):
            labels = torch.full((n,), labels, dtype=torch.long)
        if isinstance(labels, torch.Tensor):
            labels = labels.to(device)
        self.check_conditioning(n, height, width, labels, cond)
        if cond is not None:
            cond = cond.to(device=device, dtype=self._compute_dtype(device))

        x = torch.zeros(n, self.image_channels, height, width, dtype=torch.long, device=device)
        known = torch.zeros(n, self.image_channels, height, width, dtype=torch.bool, device=device)
        if prefix is not None:
            rows = self._place_prefix(x, known, prefix, known_mask, n)
        elif known_mask is not None:
            raise ValueError(f"{model}.sample: known_mask given without prefix")
        else:
            rows = 0
        u = self._sampling_uniforms(n, height, width, generator, device)

        was_training = self.training
        self.eval()
        try:
            if method == "cached":
                self._sample_cached(x, known, u, labels, cond, temperature, impl)
            else:
                self._sample_naive(x, known, rows, u, labels, cond, temperature)
        finally:
            self.train(was_training)
        return x

    def _sampling_uniforms(self, n: int, height: int, width: int, generator, device) -> torch.Tensor:
        """The one sampling_uniforms call of `sample`: one uniform per sub-pixel (a model
        that draws whole pixels, PixelCNNpp, overrides it)."""
        return sampling_uniforms(n, self.image_channels, height, width, generator, device)

    def output_nll(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean NLL per sub-pixel in nats of x under forward's output (what genfast.train
        minimises; PixelCNNpp's output is DMOL parameters)."""
        return nll(logits, x, self.impl)

    def _sample_naive(self, x, known, rows: int, u, labels, cond, temperature: float) -> None:
        """Fills the unknown sub-pixels of x (n, channels, H, W) in place, rerunning the
        network on rows 0..i for every sub-pixel of row i (rows: the prefix's rows)."""
        model = type(self).__name__
        height, width = self.image_size
        for i in range(height):
            cond_rows = None if cond is None else cond[:, :, : i + 1]
            for j in range(width):
                for c in range(self.image_channels):
                    todo = ~known[:, c, i, j] if i < rows else None
                    if todo is not None and not todo.any():
                        continue
                    features = self.input_features(x[:, :, : i + 1])
                    logits = self.logits(features, labels, cond_rows, last_row_only=True)
                    logits = logits[:, :, c, 0, j]
                    if not torch.isfinite(logits).all():
                        raise RuntimeError(f"{model}.sample: the network produced non-finite "
                                           f"logits at row {i}, column {j}, colour {c}")
                    value = inverse_cdf(logits, u[i, j, c], temperature)
                    x[:, c, i, j] = value if todo is None else torch.where(todo, value, x[:, c, i, j])

    def _sample_cached(self, x, known, u, labels, cond, temperature: float, impl: str,
                       keep_logits: bool = False) -> torch.Tensor | None:
        """Fills the sub-pixels of x (n, channels, H, W) where `known` is False, in
        place, in raster/colour order with uniforms u (H, W, channels, n), stepping
        the network with per-layer caches (the same images as _sample_naive from the
        same uniforms). With keep_logits, returns every sub-pixel's logits
        (n, levels, channels, H, W)."""
        raise NotImplementedError

    def _check_drawn(self, x: torch.Tensor) -> None:
        """Raises naming the first sub-pixel of the images x (n, channels, H, W) in sampling
        order (row, column, colour, image) whose draw failed: a cached row op's value -1,
        non-finite logits. Called once after the last row (one device->host sync per
        sampling call, not one per row); the rows after a failure read it as level 0."""
        failed = (x < 0).permute(2, 3, 1, 0).reshape(-1).nonzero()
        if failed.numel():
            n, channels, _, width = x.shape
            row, rest = divmod(failed[0].item() // n, width * channels)
            column, colour = divmod(rest, channels)
            raise RuntimeError(f"{type(self).__name__}.sample: the network produced non-finite "
                               f"logits at row {row}, column {column}, colour {colour}")

    @torch.no_grad()
    def cached_logits(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                      cond: torch.Tensor | None = None, *, impl: str | None = None) -> torch.Tensor:
        """The logits (N, levels, channels, H, W) of integer images x computed the way the
        cached sampler computes them, every sub-pixel known (teacher forcing): equal to
        self(x) up to float rounding. For tests and debugging."""
        self.check_images(x)
        if tuple(x.shape[2:]) != self.image_size:
            raise ValueError(f"{type(self).__name__}.cached_logits: x must be {self.image_size} "
                             f"images, got {tuple(x.shape[2:])}")
        n, channels, height, width = x.shape
        self.check_conditioning(n, height, width, labels, cond)
        if cond is not None:
            cond = cond.to(self._compute_dtype(cond.device))
        u = torch.zeros((height, width, channels, n), dtype=torch.float64, device=x.device)
        was_training = self.training
        self.eval()
        try:
            return self._sample_cached(x.long().clone(), torch.ones_like(x, dtype=torch.bool), u, labels,
                                       cond, 1.0, self.impl if impl is None else impl, keep_logits=True)
        finally:
            self.train(was_training)

    def _place_prefix(self, x, known, prefix, known_mask, n: int) -> int:
        """Writes the known sub-pixels of prefix into x and known; returns its rows."""
        model = type(self).__name__
        height, width = self.image_size
        self.check_images(prefix, "prefix")
        if prefix.shape[0] != n or prefix.shape[2] > height or prefix.shape[3] != width:
            raise ValueError(f"{model}.sample: prefix must be shaped ({n}, {self.image_channels}, h, "
                             f"{width}) with h <= {height}, got {tuple(prefix.shape)}")
        rows = prefix.shape[2]
        if known_mask is None:
            mask = torch.ones(prefix.shape, dtype=torch.bool, device=x.device)
        else:
            if not isinstance(known_mask, torch.Tensor) or known_mask.dtype != torch.bool:
                raise TypeError(f"{model}.sample: known_mask must be a bool tensor, got "
                                f"{getattr(known_mask, 'dtype', type(known_mask).__name__)}")
            try:
                mask = known_mask.to(x.device).expand(prefix.shape)
            except RuntimeError:
                raise ValueError(f"{model}.sample: known_mask of shape {tuple(known_mask.shape)} "
                                 f"does not broadcast to prefix's shape {tuple(prefix.shape)}") from None
        x[:, :, :rows] = torch.where(mask, prefix.to(x.device, torch.long), 0)
        known[:, :, :rows] = mask
        return rows


def check_sample_args(model: nn.Module, n, temperature, method, impl, generator) -> str:
    """The argument checks of every model's sample(); returns the impl to use (the
    model's own when impl is None)."""
    name = type(model).__name__
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"{name}.sample: n must be a positive int, got {n!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{name}.sample: temperature must be a finite number > 0, got {temperature!r}")
    if method not in ("cached", "naive"):
        raise ValueError(f"{name}.sample: method must be 'cached' or 'naive', got {method!r}")
    impl = model.impl if impl is None else impl
    if impl not in ("auto", "ext", "reference"):
        raise ValueError(f"{name}.sample: impl must be 'auto', 'ext' or 'reference', got {impl!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}.sample: generator must be a torch.Generator, got {type(generator).__name__}")
    return impl


def nll(logits: torch.Tensor, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Mean negative log-likelihood in nats of integer images x under logits
    (N, levels, channels, H, W); computed in float32 at least. One fused op
    (genfast.ops.softmax_cross_entropy: no copy of the logits; impl="reference" is
    F.cross_entropy)."""
    return softmax_cross_entropy(logits, x, impl=impl)
