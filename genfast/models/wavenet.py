"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio").

Audio is quantised to `levels` (256) mu-law levels; the network predicts each sample
from all earlier ones: a one-hot causal input convolution (kernel width 1 is a
learned embedding of the previous sample), then stacks of dilation cycles of
residual layers — a dilated causal convolution of any kernel width, the gated unit
tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h) with optional global conditioning h
(a learned embedding of a class or speaker id), a 1x1 residual and a 1x1 skip
convolution — and the head relu -> 1x1 -> relu -> 1x1 over the sum of the skips,
giving a softmax over the levels.

Sampling: method="cached" (default) runs genfast.ops.wavenet_step — one op call per
time step computing only that step of every layer from per-layer ring buffers
(memory O(batch * layers * residual_channels * (k - 1) * dilation)); method="naive"
reruns the network on the receptive field for every sample. Both draw with the same
uniforms and the same inverse-CDF rule, so with the same generator they give the
same samples (exactly, up to the rounding of the logits; identical in float64 in
the tests).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genfast.models.autoregressive_image import check_labels, is_integer_tensor, positive_int
from genfast.nn import CausalConv1d
from genfast.ops._draw import draw_from_logits
from genfast.ops.wavenet_step import WaveNetWeights, wavenet_stepper

METHODS = ("cached", "naive")


def mu_law_encode(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Waveform in [-1, 1] -> int64 levels in [0, levels): F(x) = sign(x) ln(1 + mu |x|) /
    ln(1 + mu) with mu = levels - 1, then rounded to the nearest of `levels` equal steps
    of [-1, 1]. Values outside [-1, 1] are clipped."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"mu_law_encode: x must be a floating-point tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    mu = levels - 1
    x = x.clamp(-1.0, 1.0)
    f = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.round((f + 1) / 2 * mu).long().clamp_(0, mu)


def mu_law_decode(q: torch.Tensor, levels: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Levels in [0, levels) -> waveform in [-1, 1], the inverse of mu_law_encode's
    companding: x = sign(f) ((1 + mu)^|f| - 1) / mu at f = 2 q / mu - 1."""
    mu = levels - 1
    f = q.to(dtype) * (2.0 / mu) - 1
    return torch.sign(f) * torch.expm1(f.abs() * math.log1p(mu)) / mu


def dilation_cycles(cycles: int, cycle_length: int) -> list[int]:
    """[1, 2, 4, ..., 2^(cycle_length - 1)] repeated `cycles` times."""
    return [2 ** i for i in range(cycle_length)] * cycles


def _positive_int(value, name: str) -> int:
    return positive_int(value, name, "WaveNet")


class WaveNetLayer(nn.Module):
    """One residual layer: dilated causal conv -> gate -> 1x1 residual and 1x1 skip.
    The last layer has no residual convolution (its output would be unused)."""

    def __init__(self, residual_channels: int, gate_channels: int, skip_channels: int,
                 kernel_size: int, dilation: int, class_embedding_dim: int | None, last: bool):
        super().__init__()
        self.dilated = CausalConv1d(residual_channels, gate_channels, kernel_size, dilation=dilation)
        self.condition = (None if class_embedding_dim is None
                          else nn.Linear(class_embedding_dim, gate_channels, bias=False))
        half = gate_channels // 2
        self.residual = None if last else nn.Conv1d(half, residual_channels, 1)
        self.skip = nn.Conv1d(half, skip_channels, 1)


class WaveNet(nn.Module):
    """WaveNet over sequences of integer levels x (N, T) in [0, levels).

    levels: quantisation levels (256 with mu-law); residual_channels R; gate_channels G
    (the dilated convolutions' outputs, split into the tanh and the sigmoid half;
    default 2R); skip_channels S (default 2R); head_channels (default S); kernel_size k
    of the dilated convolutions (any width >= 1); dilations, one per layer (default
    dilation_cycles(cycles, cycle_length): 3 cycles of 1, 2, ..., 512);
    input_kernel_size: width of the one-hot input causal convolution (1: an embedding);
    num_classes: global conditioning on a class or speaker id (labels (N,)), embedded
    in class_embedding_dim dimensions (default 32; formerly cond_channels, see
    docs/vocabulary.md) and added to every layer's gate pre-activations;
    impl: the sampling step's implementation, "auto" | "ext" | "reference".

    model(x) gives logits (N, levels, T): position t is the distribution of x[:, t]
    given x[:, :t] (position 0 sees nothing but the labels).
    """

    def __init__(self, *, levels: int = 256, residual_channels: int = 64,
                 gate_channels: int | None = None, skip_channels: int | None = None,
                 head_channels: int | None = None, kernel_size: int = 2,
                 dilations: list[int] | None = None, cycles: int = 3, cycle_length: int = 10,
                 input_kernel_size: int = 1, num_classes: int | None = None,
                 class_embedding_dim: int | None = None, impl: str = "auto"):
        super().__init__()
        self.levels = _positive_int(levels, "levels")
        if levels < 2:
            raise ValueError(f"WaveNet: levels must be at least 2, got {levels}")
        self.residual_channels = _positive_int(residual_channels, "residual_channels")
        self.gate_channels = _positive_int(gate_channels or 2 * residual_channels, "gate_channels")
        if self.gate_channels % 2:
            raise ValueError(f"WaveNet: gate_channels must be even (tanh and sigmoid halves), got "
                             f"{self.gate_channels}")
        self.skip_channels = _positive_int(skip_channels or 2 * residual_channels, "skip_channels")
        self.head_channels = _positive_int(head_channels or self.skip_channels, "head_channels")
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.input_kernel_size = _positive_int(input_kernel_size, "input_kernel_size")
        if dilations is None:
            dilations = dilation_cycles(_positive_int(cycles, "cycles"),
                                        _positive_int(cycle_length, "cycle_length"))
        if not isinstance(dilations, (list, tuple)) or not dilations:
            raise ValueError(f"WaveNet: dilations must be a non-empty list of positive ints, got {dilations!r}")
        self.dilations = [_positive_int(d, "every dilation") for d in dilations]
        self.num_classes = None if num_classes is None else _positive_int(num_classes, "num_classes")
        if self.num_classes is None and class_embedding_dim is not None:
            raise ValueError("WaveNet: class_embedding_dim given without num_classes")
        self.class_embedding_dim = (None if self.num_classes is None
                                    else _positive_int(class_embedding_dim or 32, "class_embedding_dim"))
        self.impl = impl

        self.input_conv = CausalConv1d(levels, self.residual_channels, self.input_kernel_size)
        self.label_embedding = (None if self.num_classes is None
                                else nn.Embedding(self.num_classes, self.class_embedding_dim))
        self.layers = nn.ModuleList(
            WaveNetLayer(self.residual_channels, self.gate_channels, self.skip_channels,
                         self.kernel_size, d, self.class_embedding_dim, last=i == len(self.dilations) - 1)
            for i, d in enumerate(self.dilations))
        self.head1 = nn.Conv1d(self.skip_channels, self.head_channels, 1)
        self.head2 = nn.Conv1d(self.head_channels, levels, 1)

    @property
    def config(self) -> dict:
        """The constructor arguments: WaveNet(**model.config) rebuilds the model."""
        return {"levels": self.levels, "residual_channels": self.residual_channels,
                "gate_channels": self.gate_channels, "skip_channels": self.skip_channels,
                "head_channels": self.head_channels, "kernel_size": self.kernel_size,
                "dilations": list(self.dilations), "input_kernel_size": self.input_kernel_size,
                "num_classes": self.num_classes, "class_embedding_dim": self.class_embedding_dim}

    @property
    def receptive_field(self) -> int:
        """The number of earlier samples the logits of a sample depend on."""
        return self.input_kernel_size + sum((self.kernel_size - 1) * d for d in self.dilations)

    # -- checks -------------------------------------------------------------------------
    def _check_levels(self, x, name: str) -> None:
        if not is_integer_tensor(x):
            raise TypeError(f"WaveNet: {name} must be an integer tensor of levels in [0, {self.levels}), "
                            f"got {getattr(x, 'dtype', type(x).__name__)}; quantise with mu_law_encode")
        if x.dim() != 2 or x.numel() == 0:
            raise ValueError(f"WaveNet: {name} must be a non-empty (N, T) tensor, got shape {tuple(x.shape)}")
        lo, hi = torch.aminmax(x)
        if lo < 0 or hi >= self.levels:
            raise ValueError(f"WaveNet: {name} values must lie in [0, {self.levels}), got values in "
                             f"[{int(lo)}, {int(hi)}]")

    def _labels(self, labels, n: int, device) -> torch.Tensor | None:
        if self.num_classes is not None and isinstance(labels, int) and not isinstance(labels, bool):
            labels = torch.full((n,), labels, dtype=torch.long)
        if self.num_classes is not None and is_integer_tensor(labels) and tuple(labels.shape) != (n,):
            raise ValueError(f"WaveNet: labels must have shape ({n},), got {tuple(labels.shape)}")
        check_labels(labels, n, self.num_classes, "WaveNet", accepts="an int or an integer tensor")
        if labels is None:
            return None
        return labels.to(device=device, dtype=torch.long)

    # -- likelihood ---------------------------------------------------------------------
    def input_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input causal convolution of one-hot(x) shifted right by one step (position
        t sees x[:, t - input_kernel_size : t]; before the start, nothing): (N, R, T).
        Computed as a sum of per-tap embedding lookups of the weight, which equals the
        convolution of the one-hot signal without materialising it."""
        k_in, length = self.input_kernel_size, x.shape[1]
        shifted = F.pad(x, (k_in, 0), value=-1)[:, : length + k_in - 1] + 1  # 0: no sample
        weight = self.input_conv.weight
        h = self.input_conv.bias.view(1, -1, 1)
        for j in range(k_in):
            table = F.pad(weight[:, :, j].t(), (0, 0, 1, 0))  # row 0 (no sample) is zero
            h = h + F.embedding(shifted[:, j: j + length], table).transpose(1, 2)
        return h

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network on checked inputs: logits (N, levels, T)."""
        h = self.input_features(x)
        cond = None if labels is None else self.label_embedding(labels)
        half = self.gate_channels // 2
        skip = None
        for layer in self.layers:
            z = layer.dilated(h)
            if cond is not None:
                z = z + layer.condition(cond).unsqueeze(-1)
            a = torch.tanh(z[:, :half]) * torch.sigmoid(z[:, half:])
            s = layer.skip(a)
            skip = s if skip is None else skip + s
            if layer.residual is not None:
                h = h + layer.residual(a)
        return self.head2(torch.relu(self.head1(torch.relu(skip))))

    def forward(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """Logits (N, levels, T) of integer levels x (N, T)."""
        self._check_levels(x, "x")
        return self.logits(x, self._labels(labels, x.shape[0], x.device))

    def loss(self, x: torch.Tensor, labels=None, *, unit: str = "nats") -> torch.Tensor:
        """Mean negative log-likelihood per sample, in nats (unit="bits": in bits)."""
        if unit not in ("nats", "bits"):
            raise ValueError(f"WaveNet.loss: unit must be 'nats' or 'bits', got {unit!r}")
        nll = F.cross_entropy(self(x, labels), x)
        return nll / math.log(2) if unit == "bits" else nll

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def pack_weights(self, labels: torch.Tensor | None = None, *, dtype: torch.dtype | None = None,
                     device=None) -> WaveNetWeights:
        """The weights in wavenet_step's layout (see genfast.ops.WaveNetWeights), for
        checked labels (N,) or None; the conditioning is folded into gate_bias."""
        p = next(self.parameters())
        dtype, device = dtype or p.dtype, device or p.device
        r, s, half = self.residual_channels, self.skip_channels, self.gate_channels // 2
        cast = lambda t: t.detach().to(device=device, dtype=dtype).contiguous()  # noqa: E731
        dilated = torch.stack([l.dilated.weight.permute(2, 1, 0).reshape(-1, self.gate_channels)
                               for l in self.layers])
        gate_bias = torch.stack([l.dilated.bias for l in self.layers]).unsqueeze(0)
        if labels is not None:
            cond = self.label_embedding(labels.to(p.device))
            gate_bias = gate_bias + torch.stack([l.condition(cond) for l in self.layers], dim=1)
        out_weight = torch.zeros(len(self.layers), half, r + s, dtype=p.dtype, device=p.device)
        out_bias = torch.zeros(len(self.layers), r + s, dtype=p.dtype, device=p.device)
        for i, layer in enumerate(self.layers):
            out_weight[i, :, r:] = layer.skip.weight[:, :, 0].t()
            out_bias[i, r:] = layer.skip.bias
            if layer.residual is not None:
                out_weight[i, :, :r] = layer.residual.weight[:, :, 0].t()
                out_bias[i, :r] = layer.residual.bias
        return WaveNetWeights(
            input_weight=cast(self.input_conv.weight.permute(2, 1, 0)),
            input_bias=cast(self.input_conv.bias), dilated_weight=cast(dilated),
            gate_bias=cast(gate_bias), out_weight=cast(out_weight), out_bias=cast(out_bias),
            head_weight1=cast(self.head1.weight[:, :, 0].t()), head_bias1=cast(self.head1.bias),
            head_weight2=cast(self.head2.weight[:, :, 0].t()), head_bias2=cast(self.head2.bias),
            dilations=tuple(self.dilations))

    def sampler(self, n: int, length: int, *, labels=None, prefix: torch.Tensor | None = None,
                temperature: float = 1.0, generator: torch.Generator | None = None, device=None,
                method: str = "cached", impl: str | None = None) -> "WaveNetSampler":
        """The state of one sample() call, to run step by step (see sample())."""
        return WaveNetSampler(self, n, length, labels=labels, prefix=prefix, temperature=temperature,
                              generator=generator, device=device, method=method,
                              impl=self.impl if impl is None else impl)

    @torch.no_grad()
    def sample(self, n: int, length: int, *, labels=None, prefix: torch.Tensor | None = None,
               temperature: float = 1.0, generator: torch.Generator | None = None, device=None,
               method: str = "cached", impl: str | None = None) -> torch.Tensor:
        """Draws n sequences of `length` levels: (n, length) int64.

        labels: an int or integer tensor (n,) for a conditional model. prefix: integer
        levels (n, P) or (P,) with P <= length, kept as the first P samples (the rest
        continues them). temperature > 0 divides the logits. method: "cached" (one
        wavenet_step call per step; impl picks its implementation, default self.impl:
        "reference" runs the per-layer torch-ops incremental sampler) or "naive" (the
        network rerun on the last receptive_field samples for every sample).

        Randomness: exactly one call torch.rand((length, n), dtype=torch.float64,
        generator=generator) on the generator's device (on `device` with the default
        generator when generator is None): one uniform per step per sequence, in step
        order, sequences within a step, prefix steps included. Sample t of sequence b is
        the inverse-CDF draw (genfast.ops.draw_from_logits) of its logits with
        u[t, b]; so the methods give the same samples from the same generator state.
        Sampling runs in the dtype of the model's parameters.
        """
        return self.sampler(n, length, labels=labels, prefix=prefix, temperature=temperature,
                            generator=generator, device=device, method=method, impl=impl).run()


class WaveNetSampler:
    """One sampling call of a WaveNet: the samples (with the prefix), the uniforms and,
    for method="cached", the packed weights and ring-buffer cache. step(t) computes the
    logits of sample t (and draws it unless it is part of the prefix); run() steps
    through the whole length and returns the samples."""

    @torch.no_grad()
    def __init__(self, model: WaveNet, n: int, length: int, *, labels, prefix, temperature,
                 generator, device, method: str, impl: str):
        for name, value in (("n", n), ("length", length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WaveNet.sample: {name} must be a positive int, got {value!r}")
        if method not in METHODS:
            raise ValueError(f"WaveNet.sample: method must be one of {METHODS}, got {method!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"WaveNet.sample: temperature must be a finite number > 0, got {temperature!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"WaveNet.sample: generator must be a torch.Generator, got "
                            f"{type(generator).__name__}")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model, self.method, self.temperature = model, method, float(temperature)
        self.labels = model._labels(labels, n, device)
        self.samples = torch.zeros(n, length, dtype=torch.long, device=device)
        self.known_steps = 0
        if prefix is not None:
            if is_integer_tensor(prefix) and prefix.dim() == 1:
                prefix = prefix.unsqueeze(0).expand(n, -1)
            model._check_levels(prefix, "prefix")
            if prefix.shape[0] != n or prefix.shape[1] > length:
                raise ValueError(f"WaveNet.sample: prefix must be (n={n}, P) or (P,) with P <= length="
                                 f"{length}, got {tuple(prefix.shape)}")
            self.known_steps = prefix.shape[1]
            self.samples[:, : self.known_steps] = prefix.to(device)
        gen_device = generator.device if generator is not None else device
        self.uniforms = torch.rand((length, n), dtype=torch.float64, generator=generator,
                                   device=gen_device).to(device)
        if method == "cached":
            self.weights = model.pack_weights(self.labels, device=device)
            self.cache = self.weights.new_cache(n)
            self._step = wavenet_stepper(self.samples, self.cache, self.uniforms, self.known_steps,
                                         self.temperature, self.weights, impl=impl)

    @torch.no_grad()
    def step(self, t: int) -> torch.Tensor:
        """The logits (n, levels) of sample t; draws it into self.samples unless known.
        Cached sampling must step through t = 0, 1, 2, ... in order."""
        if self.method == "cached":
            return self._step(t)
        start = max(0, t - self.model.receptive_field)
        window = self.samples[:, start: t + 1]
        logits = self.model.logits(window, self.labels)[:, :, -1]
        if t >= self.known_steps:
            self.samples[:, t] = draw_from_logits(logits, self.uniforms[t], self.temperature)
        return logits

    @torch.no_grad()
    def run(self) -> torch.Tensor:
        # The cached path must fill its caches through the prefix as well.
        for t in range(0 if self.method == "cached" else self.known_steps, self.samples.shape[1]):
            self.step(t)
        failed = (self.samples[:, self.known_steps:] < 0).nonzero()
        if len(failed):
            b, t = (int(v) for v in failed[0])
            raise RuntimeError(f"WaveNet.sample: the network produced non-finite logits for "
                               f"sequence {b} at step {t + self.known_steps}")
        return self.samples
