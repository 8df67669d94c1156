"""masked_conv2d: the masked ("causal") 2-D convolution of PixelCNN.

Output pixel (i, j) sees only input pixels before it in raster order: mask 'A'
(first layer) excludes the centre tap, mask 'B' includes it. With colour groups
(R, G, B) the channels split into equal groups, and at the centre tap mask 'A' lets
a group see only the earlier groups, mask 'B' also itself. Stride 1, 'same' padding.

Kernels: csrc/cpu/masked_conv2d.cpp, csrc/cuda/masked_conv2d.cu; schema in
csrc/schemas.cpp; both skip the masked-out taps instead of multiplying by zero.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

from genfast import _backend
from genfast.ops import _autotune
from genfast.ops._layout import empty_in_layout, is_channels_last
from genfast.ops._registry import register_op

MASK_TYPES = ("A", "B")
MAX_KERNEL_SIZE = 11
KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
OP = register_op("masked_conv2d", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                 torch_ops=("masked_conv2d", "masked_conv2d_grad_input", "masked_conv2d_grad_weight"))


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"masked_conv2d: {name} must be an int or a pair of ints, got {value!r}")


def check_mask_args(in_channels: int, out_channels: int, kernel_size, mask_type: str,
                    color_groups: int) -> tuple[int, int]:
    """Checks the mask's arguments; returns the kernel size as a pair."""
    kh, kw = _pair(kernel_size, "kernel_size")
    if mask_type not in MASK_TYPES:
        raise ValueError(f"masked_conv2d: mask_type must be 'A' or 'B', got {mask_type!r}")
    if not (kh % 2 == 1 and kw % 2 == 1 and 1 <= kh <= MAX_KERNEL_SIZE and 1 <= kw <= MAX_KERNEL_SIZE):
        raise ValueError(f"masked_conv2d: kernel_size must be odd and between 1 and "
                         f"{MAX_KERNEL_SIZE}, got {(kh, kw)}")
    if not isinstance(color_groups, int) or isinstance(color_groups, bool) or color_groups < 1:
        raise ValueError(f"masked_conv2d: color_groups must be a positive int, got {color_groups!r}")
    if in_channels % color_groups or out_channels % color_groups:
        raise ValueError(f"masked_conv2d: color_groups ({color_groups}) must divide in_channels "
                         f"({in_channels}) and out_channels ({out_channels})")
    return kh, kw


@functools.lru_cache(maxsize=64)
def _cpu_mask(out_channels: int, in_channels: int, kh: int, kw: int, mask_type: str,
              color_groups: int) -> torch.Tensor:
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    ch, cw = kh // 2, kw // 2
    mask[:, :, :ch, :] = 1
    mask[:, :, ch, :cw] = 1
    group_out = torch.arange(out_channels) // (out_channels // color_groups)
    group_in = torch.arange(in_channels) // (in_channels // color_groups)
    if mask_type == "A":
        center = group_in[None, :] < group_out[:, None]
    else:
        center = group_in[None, :] <= group_out[:, None]
    mask[:, :, ch, cw] = center.float()
    return mask


def masked_conv2d_mask(in_channels: int, out_channels: int, kernel_size, mask_type: str = "B",
                       color_groups: int = 1, *, dtype: torch.dtype = torch.float32,
                       device=None) -> torch.Tensor:
    """The 0/1 mask, shaped like the weight (out_channels, in_channels, kH, kW). Takes
    (in_channels, out_channels) like nn.Conv2d and MaskedConv2d (before genfast 0.2 it
    took (out_channels, in_channels); keyword calls work either way)."""
    kh, kw = check_mask_args(in_channels, out_channels, kernel_size, mask_type, color_groups)
    # copy=True: callers may modify the result; the cached tensor must stay intact.
    return _cpu_mask(out_channels, in_channels, kh, kw, mask_type, color_groups).to(
        device=device, dtype=dtype, copy=True)


def _check_args(input, weight, bias, mask_type, color_groups) -> None:
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"masked_conv2d: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"masked_conv2d: {name} must be 4-D "
                             f"({'N, C, H, W' if name == 'input' else 'C_out, C_in, kH, kW'}), "
                             f"got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"masked_conv2d: {name} must be floating point, got {t.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"masked_conv2d: weight dtype {weight.dtype} does not match input dtype "
                        f"{input.dtype}")
    if weight.device != input.device:
        raise ValueError(f"masked_conv2d: weight is on {weight.device} but input is on {input.device}")
    if input.numel() == 0:
        raise ValueError(f"masked_conv2d: input must not be empty, got shape {tuple(input.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"masked_conv2d: weight must not be empty, got shape {tuple(weight.shape)}")
    if input.shape[1] != weight.shape[1]:
        raise ValueError(f"masked_conv2d: input has {input.shape[1]} channels but weight expects "
                         f"{weight.shape[1]}")
    check_mask_args(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), mask_type,
                    color_groups)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(f"masked_conv2d: bias must be a tensor of shape ({weight.shape[0]},), "
                             f"got {getattr(bias, 'shape', type(bias).__name__)}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise TypeError(f"masked_conv2d: bias must have the input's dtype and device "
                            f"({input.dtype}, {input.device}), got ({bias.dtype}, {bias.device})")


def masked_conv2d_reference(input: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, *, mask_type: str = "B",
                            color_groups: int = 1, dilation=1) -> torch.Tensor:
    """Pure-PyTorch twin: F.conv2d with the masked weight (what public PixelCNNs do)."""
    dh, dw = _pair(dilation, "dilation")
    kh, kw = weight.shape[2:]
    mask = masked_conv2d_mask(weight.shape[1], weight.shape[0], (kh, kw), mask_type, color_groups,
                              dtype=weight.dtype, device=weight.device)
    return F.conv2d(input, weight * mask, bias, padding=(dh * (kh // 2), dw * (kw // 2)),
                    dilation=(dh, dw))


# ---------------------------------------------------------------- algorithms
# Each phase (forward, grad-input, grad-weight) runs one of three algorithms, chosen
# separately (see _choose_algorithms):
#   live_tap   genfast's compiled kernels (skip the masked-out taps);
#   decomposed the live taps as dense sub-kernels run by the device's dense convolution
#              (oneDNN, cuDNN with tensor cores): the rows above the centre as one
#              convolution, the centre row's live part (left taps + centre tap, the
#              colour-group centre mask applied on the centre column only) as another;
#   dense      the convolution of weight * mask (every tap, the dead ones multiplied by 0).
ALGORITHMS = ("live_tap", "decomposed", "dense")
PHASES = ("forward", "grad_input", "grad_weight")
_PYTORCH_ALGORITHMS = ("decomposed", "dense")
# Algorithms whose result may differ from run to run for a phase and device type; none
# today (the CUDA kernels reduce without atomics; PyTorch picks deterministic oneDNN/cuDNN
# convolutions itself under torch.use_deterministic_algorithms).
_NONDETERMINISTIC: set[tuple[str, str, str]] = set()


def _mask_like(weight_shape, mask_type: str, color_groups: int, like: torch.Tensor) -> torch.Tensor:
    """The mask of a weight of this shape, in like's dtype and on its device."""
    return masked_conv2d_mask(in_channels=weight_shape[1], out_channels=weight_shape[0],
                              kernel_size=tuple(weight_shape[2:]), mask_type=mask_type,
                              color_groups=color_groups, dtype=like.dtype, device=like.device)


def _center_column_mask(weight: torch.Tensor, mask_type: str, color_groups: int):
    """The centre tap's (C_out, C_in) 0/1 mask as a tensor, or True / False when it is
    all ones / all zeros (one colour group)."""
    if color_groups == 1:
        return mask_type == "B"
    kh, kw = weight.shape[2:]
    return _mask_like(weight.shape, mask_type, color_groups, weight)[:, :, kh // 2, kw // 2]


def _decomposed_parts(weight: torch.Tensor, mask_type: str, color_groups: int, dilation, input_hw):
    """[(sub-kernel, pad amounts, (row slice, column slice) of the full kernel, centre
    column mask or None)] such that the masked convolution is the sum over the parts of
    F.conv2d(_shift(x, pad), sub-kernel, dilation=dilation). Negative pad amounts crop:
    the parts' outputs come out at exactly the input's size. A part whose crop leaves
    nothing of an input of size input_hw reads only padding and is left out."""
    dh, dw = dilation
    h, w = input_hw
    kh, kw = weight.shape[2:]
    ch, cw = kh // 2, kw // 2
    parts = []
    # Rows above the centre, every column: output row i reads rows i - dh*ch .. i - dh.
    if ch > 0 and h > dh:
        parts.append((weight[:, :, :ch, :], (dw * cw, dw * cw, dh * ch, -dh),
                      (slice(0, ch), slice(0, kw)), None))
    center = _center_column_mask(weight, mask_type, color_groups)
    width = cw + (center is not False)
    # The centre row: columns j - dw*cw .. j - dw, and j itself when the centre is live.
    if width > 0 and w > dw * (cw + 1 - width):
        sub = weight[:, :, ch:ch + 1, :width]
        cmask = None
        if isinstance(center, torch.Tensor):
            cmask = center
            sub = torch.cat([sub[..., :cw], sub[..., cw:] * center[:, :, None, None]], dim=3)
        parts.append((sub, (dw * cw, dw * (width - 1 - cw), 0, 0),
                      (slice(ch, ch + 1), slice(0, width)), cmask))
    return parts


def _shift(x: torch.Tensor, pad) -> torch.Tensor:
    """F.pad(x, pad) with crops (negative amounts) taken first as a view, so that a crop
    larger than a positive pad on the other side cannot make an intermediate empty."""
    l, r, t, b = pad
    x = x[:, :, max(0, -t):x.shape[2] - max(0, -b), max(0, -l):x.shape[3] - max(0, -r)]
    return F.pad(x, (max(l, 0), max(r, 0), max(t, 0), max(b, 0)))


def _conv_backward(grad_output, input, weight, dilation, padding, mask):
    if is_channels_last(grad_output):
        # The stand-in input (_expanded) has no layout, so oneDNN would take the NCHW path
        # and convert grad_output; a channels-last weight (tiny) keeps it channels-last
        # (2x faster for the 3x3 'B' 128->128 input + weight gradients).
        weight = weight.contiguous(memory_format=torch.channels_last)
    return torch.ops.aten.convolution_backward(grad_output, input, weight, None, [1, 1],
                                               list(padding), list(dilation), False, [0, 0], 1,
                                               list(mask))


def _expanded(t: torch.Tensor, shape) -> torch.Tensor:
    # Only its shape is read (what torch.nn.grad.conv2d_input/_weight pass as well).
    return t.new_empty(1).expand(shape)


def _forward(algorithm, input, weight, bias, dilation, mask_type, color_groups):
    dh, dw = dilation
    if algorithm == "live_tap":
        return torch.ops.genfast.masked_conv2d(input, weight, bias, [dh, dw], mask_type, color_groups)
    if algorithm == "dense":
        return masked_conv2d_reference(input, weight, bias, mask_type=mask_type,
                                       color_groups=color_groups, dilation=(dh, dw))
    out = None
    for sub, pad, _, _ in _decomposed_parts(weight, mask_type, color_groups, (dh, dw), input.shape[2:]):
        part = F.conv2d(_shift(input, pad), sub, bias if out is None else None, dilation=(dh, dw))
        out = part if out is None else out.add_(part)
    if out is None:  # no live tap (1x1 'A', one colour group): the bias alone
        out = input.new_zeros((input.shape[0], weight.shape[0], *input.shape[2:]))
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
    return out


def _grad_input(algorithm, grad_output, input_shape, weight, dilation, mask_type, color_groups):
    dh, dw = dilation
    kh, kw = weight.shape[2:]
    if algorithm == "live_tap":
        return torch.ops.genfast.masked_conv2d_grad_input(grad_output, weight, [dh, dw], mask_type,
                                                          color_groups)
    if algorithm == "dense":
        mask = _mask_like(weight.shape, mask_type, color_groups, weight)
        return _conv_backward(grad_output, _expanded(grad_output, input_shape), weight * mask,
                              (dh, dw), (dh * (kh // 2), dw * (kw // 2)), (True, False, False))[0]
    grad = None
    for sub, pad, _, _ in _decomposed_parts(weight, mask_type, color_groups, (dh, dw), input_shape[2:]):
        l, r, t, b = pad
        padded = (input_shape[0], input_shape[1], input_shape[2] + t + b, input_shape[3] + l + r)
        g = _conv_backward(grad_output, _expanded(grad_output, padded), sub, (dh, dw), (0, 0),
                           (True, False, False))[0]
        g = F.pad(g, (-l, -r, -t, -b))  # undo the pad: cropped input rows get zero gradient
        grad = g if grad is None else grad.add_(g)
    if grad is None:
        grad = grad_output.new_zeros(input_shape)
    return grad


def _grad_weight(algorithm, grad_output, input, weight_shape, dilation, mask_type, color_groups):
    dh, dw = dilation
    kh, kw = weight_shape[2:]
    if algorithm == "live_tap":
        return torch.ops.genfast.masked_conv2d_grad_weight(grad_output, input, [kh, kw], [dh, dw],
                                                           mask_type, color_groups)
    mask = _mask_like(weight_shape, mask_type, color_groups, input)
    if algorithm == "dense":
        grad = _conv_backward(grad_output, input, _expanded(input, weight_shape), (dh, dw),
                              (dh * (kh // 2), dw * (kw // 2)), (False, True, False))[1]
        return grad * mask
    grad = input.new_zeros(weight_shape)
    # The sub-kernels' shapes; their values are not read by the weight gradient.
    for sub, pad, (rows, cols), cmask in _decomposed_parts(mask, mask_type, color_groups, (dh, dw),
                                                           input.shape[2:]):
        g = _conv_backward(grad_output, _shift(input, pad), _expanded(input, sub.shape), (dh, dw),
                           (0, 0), (False, True, False))[1]
        if cmask is not None:
            g[..., -1:] *= cmask[:, :, None, None]
        grad[:, :, rows, cols] = g
    return grad


def _no_autocast(device_type: str):
    # The op computes in its inputs' dtype whichever algorithm runs (autocast would
    # otherwise cast the PyTorch algorithms' convolutions but not genfast's kernels).
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _MaskedConv2dFunction(torch.autograd.Function):
    """The op with its forward, grad-input and grad-weight algorithms chosen separately."""

    @staticmethod
    def forward(input, weight, bias, dilation, mask_type, color_groups, algorithms):
        with _no_autocast(input.device.type):
            return _forward(algorithms[0], input, weight, bias, dilation, mask_type, color_groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, dilation, mask_type, color_groups, algorithms = inputs
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None
        ctx.config = (dilation, mask_type, color_groups, algorithms)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        dilation, mask_type, color_groups, algorithms = ctx.config
        grad_input = grad_weight = grad_bias = None
        with _no_autocast(input.device.type):
            if ctx.needs_input_grad[0]:
                grad_input = _grad_input(algorithms[1], grad_output, input.shape, weight, dilation,
                                         mask_type, color_groups)
            if ctx.needs_input_grad[1]:
                grad_weight = _grad_weight(algorithms[2], grad_output, input, weight.shape, dilation,
                                           mask_type, color_groups)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None, None


# ---------------------------------------------------------------- choosing
@functools.lru_cache(maxsize=1)
def _cpu_has_avx512() -> bool:
    """Whether the CPU runs genfast's AVX-512 live-tap kernels (ATen's own detection)."""
    try:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    except (AttributeError, RuntimeError):
        return False


def heuristic_algorithm(phase: str, device_type: str, dtype: torch.dtype, input_shape, weight_shape,
                        mask_type: str, color_groups: int, eligible=ALGORITHMS) -> str:
    """The choice when no timing may happen (GENFAST_AUTOTUNE=0, deterministic mode,
    torch.compile tracing or CUDA graph capture with a signature never timed).

    CPU (measured on an Intel Xeon with AVX-512/AMX, torch 2.14, 2 threads; see
    docs/masked-conv-algorithms.md): with AVX-512, genfast's live-tap kernels in every
    phase (since the weight gradient reads the image planes directly it beats the
    decomposition on all 5 benchmark layers, as the forward and input gradient did).
    Without AVX-512 the live-tap weight gradient is a gather + at::mm per sample, and the
    decomposition keeps that phase. Without a kernel for the dtype (e.g. bfloat16 on the
    CPU) the PyTorch algorithm next in that order.
    CUDA: the decomposition, whose dense sub-kernels cuDNN runs on tensor cores (TF32 /
    bf16 / fp16), while genfast's CUDA kernel is a SIMT implicit GEMM without them (not
    measured here: no GPU; time it with GENFAST_AUTOTUNE=1, the default).
    """
    if phase not in PHASES:
        raise ValueError(f"masked_conv2d: phase must be one of {PHASES}, got {phase!r}")
    if device_type == "cuda":
        order = ("decomposed", "dense", "live_tap")
    elif phase == "grad_weight" and not _cpu_has_avx512():
        order = ("decomposed", "live_tap", "dense")
    else:
        order = ("live_tap", "dense", "decomposed")
    return next((a for a in order if a in eligible), order[0])


def _check_algorithm(algorithm):
    if isinstance(algorithm, str):
        if algorithm == "auto" or algorithm in ALGORITHMS:
            return (algorithm,) * 3
    elif (isinstance(algorithm, (tuple, list)) and len(algorithm) == 3
          and all(isinstance(a, str) and (a == "auto" or a in ALGORITHMS) for a in algorithm)):
        return tuple(algorithm)
    raise ValueError(f"masked_conv2d: algorithm must be 'auto', one of {ALGORITHMS}, or a "
                     f"(forward, grad_input, grad_weight) triple of them, got {algorithm!r}")


def _memory_format(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "contiguous"
    return "channels_last" if is_channels_last(t) else "strided"


def _base_key(input, weight, mask_type, color_groups, dilation) -> tuple:
    return (input.device.type, str(input.dtype).replace("torch.", ""),
            "x".join(str(int(s)) for s in input.shape), "x".join(str(int(s)) for s in weight.shape),
            mask_type, f"groups{color_groups}", f"dil{dilation[0]}x{dilation[1]}",
            _memory_format(input))


def _full_key(base_key: tuple) -> tuple:
    threads = f"threads{torch.get_num_threads()}" if base_key[0] == "cpu" else "gpu"
    return (*base_key, threads)


def _heuristics(base_key, phases, eligible) -> dict:
    device_type, dtype = base_key[0], getattr(torch, base_key[1])
    in_shape = tuple(map(int, base_key[2].split("x")))
    w_shape = tuple(map(int, base_key[3].split("x")))
    cg = int(base_key[5].removeprefix("groups"))
    return {p: heuristic_algorithm(p, device_type, dtype, in_shape, w_shape, base_key[4], cg,
                                   eligible[p]) for p in phases}


def _deterministic_eligible(device_type: str, phase: str, eligible: tuple) -> tuple:
    if not torch.are_deterministic_algorithms_enabled():
        return eligible
    return tuple(a for a in eligible if (a, phase, device_type) not in _NONDETERMINISTIC)


def _untimed_choice(base_key: tuple, phases: tuple, ext_ok: bool) -> tuple:
    """The cached choice for each phase, else the heuristic; never times."""
    _autotune._load_file(torch.device(base_key[0]))
    key = _full_key(base_key)
    eligible = {p: _deterministic_eligible(base_key[0], p, ALGORITHMS if ext_ok else _PYTORCH_ALGORITHMS)
                for p in phases}
    heur = _heuristics(base_key, phases, eligible)
    return tuple((_autotune.cached("masked_conv2d", p, key, eligible[p]) or heur[p]) for p in phases)


# Under torch.compile the choice is made once while tracing and baked into the graph as
# a constant (the wrapper's key is built from static shapes).
_traced_choice = torch.compiler.assume_constant_result(_untimed_choice)


def chosen_algorithms(input: torch.Tensor, weight: torch.Tensor, *, mask_type: str = "B",
                      color_groups: int = 1, dilation=1, impl: str = "auto") -> dict:
    """What algorithm="auto" runs for this call signature, per phase: the cached
    (timed) choice, else the heuristic. Never times. {"forward": ..., "grad_input": ...,
    "grad_weight": ...}"""
    dh, dw = _pair(dilation, "dilation")
    if _backend.FORCED_IMPL == "reference" or impl == "reference":
        return dict.fromkeys(PHASES, "reference")
    ext_ok = _backend.kernel_unavailable_reason(input.device.type) is None and \
        input.dtype in KERNEL_DTYPES.get(input.device.type, ())
    base_key = _base_key(input, weight, mask_type, color_groups, (dh, dw))
    return dict(zip(PHASES, _untimed_choice(base_key, PHASES, ext_ok)))


def _choose_algorithms(input, weight, bias, dilation, mask_type, color_groups, phases, ext_ok):
    """One algorithm per phase in `phases` (a subset of PHASES, in order)."""
    base_key = _base_key(input, weight, mask_type, color_groups, dilation)
    if torch.compiler.is_compiling():
        return dict(zip(phases, _traced_choice(base_key, tuple(phases), ext_ok)))
    key = _full_key(base_key)
    device = input.device
    eligible = {p: _deterministic_eligible(device.type, p, ALGORITHMS if ext_ok else _PYTORCH_ALGORITHMS)
                for p in phases}
    _autotune._load_file(device)
    hits = {p: _autotune.cached("masked_conv2d", p, key, eligible[p]) for p in phases}
    if all(hits.values()):  # the common case: every phase timed before
        return hits
    heur = _heuristics(base_key, phases, eligible)
    allowed = _autotune.timing_allowed(input, weight, bias)
    chosen = {}
    x, w = input.detach(), weight.detach()
    b = None if bias is None else bias.detach()
    made = []

    def grad_out():  # made on the first timing only
        if not made:
            # A private generator: timing leaves the global RNG state alone.
            gen = torch.Generator().manual_seed(0)
            out_shape = (x.shape[0], w.shape[0], *x.shape[2:])
            g = torch.randn(out_shape, generator=gen, dtype=x.dtype).to(device)
            if _memory_format(x) == "channels_last":
                g = g.contiguous(memory_format=torch.channels_last)
            made.append(g)
        return made[0]

    for phase in phases:
        if phase == "forward":
            thunk = lambda a: lambda: _forward(a, x, w, b, dilation, mask_type, color_groups)
        elif phase == "grad_input":
            thunk = lambda a: lambda: _grad_input(a, grad_out(), x.shape, w, dilation, mask_type,
                                                  color_groups)
        else:
            thunk = lambda a: lambda: _grad_weight(a, grad_out(), x, w.shape, dilation, mask_type,
                                                   color_groups)
        candidates = {a: thunk(a) for a in eligible[phase]}
        with _no_autocast(device.type):
            chosen[phase] = _autotune.choose("masked_conv2d", phase, key, candidates, heur[phase],
                                             device, allowed=allowed)
    return chosen


def _kernel_op(input, weight, bias, dilation, mask_type, color_groups):
    """genfast's op with its registered autograd: the live-tap kernels in every phase."""
    return torch.ops.genfast.masked_conv2d(input, weight, bias, list(dilation), mask_type, color_groups)


def masked_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  mask_type: str = "B", color_groups: int = 1, dilation=1,
                  impl: str = "auto", algorithm="auto") -> torch.Tensor:
    """Masked 2-D convolution, stride 1 with 'same' padding.

    input (N, C_in, H, W); weight (C_out, C_in, kH, kW) with odd kH, kW <= 11;
    bias (C_out,) or None; mask_type 'A' or 'B'; color_groups divides both channel
    counts; dilation an int or pair. Masked weights get zero gradient. The result is in
    the inputs' dtype (autocast does not cast them).

    impl: "auto" (compiled kernel when available, else PyTorch only), "ext" (insist on
    the compiled kernel being available) or "reference" (the pure reference:
    F.conv2d(weight * mask); `algorithm` is then ignored).
    algorithm: "auto" (per call signature, the fastest of the eligible algorithms,
    timed once and cached, see genfast/ops/_autotune.py), "live_tap" (genfast's
    kernels), "decomposed" (dense sub-kernels), "dense" (weight * mask), or a
    (forward, grad_input, grad_weight) triple of them.
    """
    dh, dw = _pair(dilation, "dilation")
    if not (1 <= dh <= 2**24 and 1 <= dw <= 2**24):  # larger would overflow 32-bit offsets
        raise ValueError(f"masked_conv2d: dilation must be between 1 and 2**24 (16777216), got {(dh, dw)}")
    requested = _check_algorithm(algorithm)
    _check_args(input, weight, bias, mask_type, color_groups)
    if impl not in _backend.IMPLS:
        raise ValueError(f"masked_conv2d: impl must be one of {_backend.IMPLS}, got {impl!r}")
    if _backend.FORCED_IMPL == "reference" or impl == "reference":
        return masked_conv2d_reference(input, weight, bias, mask_type=mask_type,
                                       color_groups=color_groups, dilation=(dh, dw))
    if "live_tap" in requested and impl == "auto":
        impl = "ext"  # asked for by name: the kernel must be there
    # Only the PyTorch algorithms asked for: whether the kernel is there does not matter.
    ext_ok = (any(a in ("auto", "live_tap") for a in requested)
              and OP.use_kernel(impl, input))
    needs_grad = torch.is_grad_enabled() and (
        input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    phases = ["forward"]
    if needs_grad:
        phases += [p for p, t in (("grad_input", input), ("grad_weight", weight)) if t.requires_grad]
    auto = [p for p in phases if requested[PHASES.index(p)] == "auto"]
    chosen = dict(zip(PHASES, requested))
    if auto:
        chosen.update(_choose_algorithms(input, weight, bias, (dh, dw), mask_type, color_groups,
                                         auto, ext_ok))
    algorithms = tuple("live_tap" if chosen[p] == "auto" else chosen[p] for p in PHASES)
    if not needs_grad:
        with _no_autocast(input.device.type):
            return _forward(algorithms[0], input, weight, bias, (dh, dw), mask_type, color_groups)
    if all(a == "live_tap" for a, p in zip(algorithms, PHASES) if p in phases):
        return _kernel_op(input, weight, bias, (dh, dw), mask_type, color_groups)
    return _MaskedConv2dFunction.apply(input, weight, bias, (dh, dw), mask_type, color_groups,
                                       algorithms)


@OP.register_fake()
def _(input, weight, bias, dilation, mask_type, color_groups):
    return empty_in_layout(input, (input.shape[0], weight.shape[0], input.shape[2], input.shape[3]))


@OP.register_fake("masked_conv2d_grad_input")
def _(grad_output, weight, dilation, mask_type, color_groups):
    shape = (grad_output.shape[0], weight.shape[1], grad_output.shape[2], grad_output.shape[3])
    return empty_in_layout(grad_output, shape)


@OP.register_fake("masked_conv2d_grad_weight")
def _(grad_output, input, kernel_size, dilation, mask_type, color_groups):
    return input.new_empty((grad_output.shape[1], input.shape[1], *kernel_size))


def _setup_context(ctx, inputs, output):
    input, weight, bias, dilation, mask_type, color_groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.config = (dilation, mask_type, color_groups)


@OP.register_autograd(setup_context=_setup_context)
def _backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    dilation, mask_type, color_groups = ctx.config
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.genfast.masked_conv2d_grad_input(
            grad_output, weight, dilation, mask_type, color_groups)
    if ctx.needs_input_grad[1]:
        grad_weight = torch.ops.genfast.masked_conv2d_grad_weight(
            grad_output, input, list(weight.shape[2:]), dilation, mask_type, color_groups)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad_output.sum((0, 2, 3))
    return grad_input, grad_weight, grad_bias, None, None, None
