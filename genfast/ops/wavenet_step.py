"""wavenet_step: one cached ("fast WaveNet") sampling step of a whole WaveNet.

For a new time step t every layer computes only its output at t, reading its
dilated taps from a per-layer ring buffer of its last (k - 1) * dilation + 1
inputs, so a step costs the same at t = 10 and at t = 100 000. One call runs the
input convolution, every residual layer (taps + gated unit + residual + skip),
the output head and the inverse-CDF draw, so batch 1 is not dominated by
per-op overhead.

State and packed weights (see csrc/wavenet_step.h for the exact layout):
samples (N, T) int64, cache (N, slots, R), uniforms (T, N) float64 and a
WaveNetWeights built once per sampling call (genfast.models.WaveNet.pack_weights).
Cache memory is N * R * sum over layers of ((k - 1) * dilation + 1) elements:
O(batch * layers * channels * (k - 1) * dilation), independent of the length.

`wavenet_step_reference` is the same step in per-layer torch ops on the same
state: the fallback, the test oracle and the "Python-orchestrated incremental
sampler" (as in r9y9's wavenet_vocoder) that the benchmarks compare against.
Kernels: csrc/cpu/wavenet_step.cpp, csrc/cuda/wavenet_step.cu; schema in
csrc/schemas.cpp. Sampling only: the op has no autograd.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from genfast.ops._checks import check_tensors
from genfast.ops._draw import draw_from_logits
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64),
}
OP = register_op("wavenet_step", module=__name__, kernel_dtypes=KERNEL_DTYPES)
MAX_LAYERS = 256  # the CUDA kernel takes the layer table by value


class WaveNetWeights(NamedTuple):
    """A WaveNet's weights packed for wavenet_step (all one dtype and device).

    input_weight (k_in, levels, R): the one-hot input causal convolution, tap-major;
    input_bias (R,); dilated_weight (L, k * R, G): row j * R + r is tap j (which reads
    time t - (k - 1 - j) * dilation) of input channel r, columns [0, G/2) feed tanh,
    [G/2, G) sigmoid; gate_bias (1 or N, L, G): the dilated convolutions' biases plus
    global conditioning; out_weight (L, G/2, R + S): residual 1x1 | skip 1x1;
    out_bias (L, R + S); head_weight1 (S, H), head_bias1 (H,), head_weight2
    (H, levels), head_bias2 (levels,); dilations: one int per layer.
    """
    input_weight: torch.Tensor
    input_bias: torch.Tensor
    dilated_weight: torch.Tensor
    gate_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    head_weight1: torch.Tensor
    head_bias1: torch.Tensor
    head_weight2: torch.Tensor
    head_bias2: torch.Tensor
    dilations: tuple[int, ...]

    @property
    def residual_channels(self) -> int:
        return self.input_weight.shape[2]

    @property
    def kernel_size(self) -> int:
        return self.dilated_weight.shape[1] // self.input_weight.shape[2]

    @property
    def levels(self) -> int:
        return self.input_weight.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        """Every field but dilations, in order: the op's `weights` argument."""
        return list(self[:-1])

    def ring_lengths(self) -> list[int]:
        return [(self.kernel_size - 1) * d + 1 for d in self.dilations]

    def new_cache(self, batch: int) -> torch.Tensor:
        """Zeros for the ring buffers of `batch` sequences: (batch, slots, R). Times
        before the start read as zeros, the causal convolutions' left padding."""
        return self.input_weight.new_zeros((batch, sum(self.ring_lengths()), self.residual_channels))


def _fail(error, message):
    raise error(f"wavenet_step: {message}")


def check_wavenet_step(samples, cache, uniforms, step, known_steps, temperature,
                       weights: WaveNetWeights) -> None:
    """The op's argument checks (ValueError / TypeError naming the argument)."""
    if not isinstance(weights, WaveNetWeights):
        _fail(TypeError, f"weights must be a WaveNetWeights, got {type(weights).__name__}")
    floats = {"cache": cache, **{f: getattr(weights, f) for f in WaveNetWeights._fields if f != "dilations"}}
    check_tensors("wavenet_step", {"samples": (samples, torch.int64), "uniforms": (uniforms, torch.float64)},
                  floats, "cache", (torch.float32, torch.float64))
    if samples.dim() != 2 or samples.numel() == 0:
        _fail(ValueError, f"samples must be a non-empty (N, T) tensor, got shape {tuple(samples.shape)}")
    n, length = samples.shape
    dilations = weights.dilations
    if (not isinstance(dilations, (tuple, list)) or not 1 <= len(dilations) <= MAX_LAYERS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dilations)):
        _fail(ValueError, f"dilations must be 1 to {MAX_LAYERS} positive ints, got {dilations!r}")
    w = weights
    if w.input_weight.dim() != 3 or min(w.input_weight.shape) < 1 or w.input_weight.shape[1] < 2:
        _fail(ValueError, f"input_weight must be (k_in, levels >= 2, R), got {tuple(w.input_weight.shape)}")
    k_in, levels, r = w.input_weight.shape
    layers = len(dilations)
    dw = w.dilated_weight
    if (dw.dim() != 3 or dw.shape[0] != layers or dw.shape[1] < r or dw.shape[1] % r
            or dw.shape[2] < 2 or dw.shape[2] % 2):
        _fail(ValueError, f"dilated_weight must be (L={layers}, k * R, G) with R={r} and an even G, "
                          f"got {tuple(dw.shape)}")
    gate = dw.shape[2]
    if w.out_weight.dim() != 3 or w.out_weight.shape[:2] != (layers, gate // 2) or w.out_weight.shape[2] <= r:
        _fail(ValueError, f"out_weight must be (L={layers}, G/2={gate // 2}, R={r} + S), got "
                          f"{tuple(w.out_weight.shape)}")
    skip = w.out_weight.shape[2] - r
    if w.head_weight1.dim() != 2 or w.head_weight1.shape[0] != skip:
        _fail(ValueError, f"head_weight1 must be (S={skip}, H), got {tuple(w.head_weight1.shape)}")
    head = w.head_weight1.shape[1]
    expected = {"input_bias": (r,), "out_bias": (layers, r + skip), "head_bias1": (head,),
                "head_weight2": (head, levels), "head_bias2": (levels,)}
    for name, shape in expected.items():
        if tuple(getattr(w, name).shape) != shape:
            _fail(ValueError, f"{name} must have shape {shape}, got {tuple(getattr(w, name).shape)}")
    if w.gate_bias.dim() != 3 or w.gate_bias.shape[0] not in (1, n) or w.gate_bias.shape[1:] != (layers, gate):
        _fail(ValueError, f"gate_bias must be (1 or N={n}, L={layers}, G={gate}), got "
                          f"{tuple(w.gate_bias.shape)}")
    slots = sum(w.ring_lengths())
    if tuple(cache.shape) != (n, slots, r):
        _fail(ValueError, f"cache must have shape {(n, slots, r)} (N, sum of (k - 1) * dilation + 1, R), "
                          f"got {tuple(cache.shape)}")
    if tuple(uniforms.shape) != (length, n):
        _fail(ValueError, f"uniforms must have shape {(length, n)} (T, N), got {tuple(uniforms.shape)}")
    for name, value, hi in (("step", step, length - 1), ("known_steps", known_steps, length)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
            _fail(ValueError, f"{name} must be an int in [0, {hi}], got {value!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        _fail(ValueError, f"temperature must be a finite number > 0, got {temperature!r}")


def check_samples(samples: torch.Tensor, levels: int, first: int, end: int) -> None:
    """The data-dependent check (one device->host sync): samples[:, first:end] hold levels
    or -1 (a failed draw). The compiled op runs it in C++ for the columns a step reads
    when check_levels is true."""
    window = samples[:, first:end]
    bad = ((window < -1) | (window >= levels)).nonzero()
    if bad.numel():
        row, column = bad[0].tolist()
        _fail(ValueError, f"samples must hold levels (or -1, a failed draw); samples[{row}, "
                          f"{first + column}] = {window[row, column].item()} is not a level in [0, {levels})")


def wavenet_step_reference(samples: torch.Tensor, cache: torch.Tensor, uniforms: torch.Tensor,
                           step: int, known_steps: int, temperature: float,
                           weights: WaveNetWeights) -> torch.Tensor:
    """Pure-PyTorch twin of the op, one layer at a time on the same state: updates
    `cache` and (when step >= known_steps) samples[:, step] in place, returns the
    logits (N, levels) of step `step`."""
    w, t = weights, step
    k_in, levels, r = w.input_weight.shape
    k, gate_half = w.kernel_size, w.dilated_weight.shape[2] // 2
    lengths = w.ring_lengths()
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    current = lambda l: offsets[l] + t % lengths[l]  # noqa: E731 - layer l's slot of time t

    h = w.input_bias.expand(samples.shape[0], r)
    for j in range(k_in):
        column = t - k_in + j  # the input at time t - (k_in - 1 - j) is sample t - k_in + j
        if column < 0:
            continue
        level = samples[:, column]
        if ((level < -1) | (level >= levels)).any():
            raise ValueError(f"wavenet_step: samples[:, {column}] holds values outside [0, {levels})")
        # -1 marks a failed draw (non-finite logits): it adds nothing.
        h = h + w.input_weight[j][level.clamp(min=0)] * (level >= 0).unsqueeze(1).to(h.dtype)
    cache[:, current(0)] = h

    skip = None
    for l, d in enumerate(w.dilations):
        z = w.gate_bias[:, l]
        for j in range(k):
            tap = cache[:, offsets[l] + (t - (k - 1 - j) * d) % lengths[l]]
            z = z + tap @ w.dilated_weight[l, j * r:(j + 1) * r]
        a = torch.tanh(z[:, :gate_half]) * torch.sigmoid(z[:, gate_half:])
        y = torch.addmm(w.out_bias[l], a, w.out_weight[l])
        if l + 1 < len(w.dilations):
            cache[:, current(l + 1)] = cache[:, current(l)] + y[:, :r]
        skip = y[:, r:] if skip is None else skip + y[:, r:]
    hidden = torch.relu(torch.addmm(w.head_bias1, torch.relu(skip), w.head_weight1))
    logits = torch.addmm(w.head_bias2, hidden, w.head_weight2)
    if t >= known_steps:
        samples[:, t] = draw_from_logits(logits, uniforms[t], temperature)
    return logits


def _ext_args(samples, cache, uniforms, step, known_steps, temperature, w: WaveNetWeights,
              check_levels: bool):
    return (samples, cache, uniforms, step, known_steps, float(temperature), w.tensors(), list(w.dilations),
            bool(check_levels))


def wavenet_step(samples: torch.Tensor, cache: torch.Tensor, uniforms: torch.Tensor, step: int,
                 known_steps: int, temperature: float, weights: WaveNetWeights, *,
                 impl: str = "auto", check_levels: bool = True) -> torch.Tensor:
    """One sampling step t = `step` of a WaveNet for N sequences.

    Reads samples[:, t - k_in : t] (the input of time t is sample t - 1), writes layer
    l's input at time t into its ring buffer in `cache`, returns the logits (N, levels)
    of sample t and, when step >= known_steps, writes the level drawn with
    uniforms[step] (see draw_from_logits) into samples[:, step] (-1 where the logits
    are not finite). Earlier steps must have run on the same cache, from a zero cache
    at step 0.
    impl: "auto" (compiled kernel when available, else the reference), "ext" or "reference".
    check_levels: check that the samples the step reads (columns step - k_in .. step - 1)
    are levels or -1 (a device->host sync on a GPU); unchecked, an out-of-range sample
    adds nothing, like a -1.
    """
    check_wavenet_step(samples, cache, uniforms, step, known_steps, temperature, weights)
    if not OP.use_kernel(impl, cache):
        if check_levels and not torch.compiler.is_compiling():
            check_samples(samples, weights.levels, max(0, step - weights.input_weight.shape[0]), step)
        return wavenet_step_reference(samples, cache, uniforms, step, known_steps, temperature, weights)
    return torch.ops.genfast.wavenet_step(*_ext_args(samples, cache, uniforms, step, known_steps,
                                                    temperature, weights, check_levels))


def wavenet_stepper(samples: torch.Tensor, cache: torch.Tensor, uniforms: torch.Tensor,
                    known_steps: int, temperature: float, weights: WaveNetWeights, *,
                    impl: str = "auto") -> Callable[[int], torch.Tensor]:
    """`step(t) -> logits`, the same as wavenet_step(samples, cache, ..., t, ...) but with the
    arguments checked and the implementation chosen once: a sampling loop's per-step cost
    is the op call alone: every sample is checked once here (levels or -1), so the steps
    skip the op's per-step check (and its device->host sync)."""
    check_wavenet_step(samples, cache, uniforms, 0, known_steps, temperature, weights)
    check_samples(samples, weights.levels, 0, samples.shape[1])
    if not OP.use_kernel(impl, cache):
        return lambda t: wavenet_step_reference(samples, cache, uniforms, t, known_steps, temperature,
                                                weights)
    op = torch.ops.genfast.wavenet_step.default
    args = list(_ext_args(samples, cache, uniforms, 0, known_steps, temperature, weights, False))

    def step(t: int) -> torch.Tensor:
        args[3] = t
        return op(*args)

    return step


@OP.register_fake()
def _(samples, cache, uniforms, step, known_steps, temperature, weights, dilations, check_levels=True):
    w = WaveNetWeights(*weights, dilations=tuple(dilations))
    return cache.new_empty((samples.shape[0], w.levels))
