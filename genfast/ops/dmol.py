"""dmol_loss and dmol_sample: the discretized mixture of logistics (DMOL) of PixelCNN++
(Salimans et al. 2017), fused per pixel.

Layout of params (B, P, H, W), openai/pixel-cnn's convention moved to channel-first:
channels [0, M) are the mixture logits; then colour c in 0..C-1 owns the block of
S channels starting at M + c * S: means [0, M), log-scales [M, 2M) and, for RGB only,
raw coupling coefficients [2M, 3M) (passed through tanh: block 0 holds alpha (R->G),
block 1 beta (R->B), block 2 gamma (G->B)). So S = 2M, P = 3M for grey (C = 1) and
S = 3M, P = 10M for RGB (C = 3). A level v of `levels` sits at x = 2v/(levels-1) - 1
in [-1, 1]; colour c's effective mean is mu_R, mu_G + alpha x_R, mu_B + beta x_R +
gamma x_G (x_R, x_G the image's own positions).

dmol_loss(params, x) is the negative log-likelihood in nats of the integer images
x (B, C, H, W): per pixel -log sum_k softmax(logits)_k prod_c P(bin of x_c | k), where
the bin is [x - h, x + h] (h = 1/(levels-1)), reaching -inf at level 0 and +inf at
levels-1. Numerics (csrc/dmol.h):
  - log-scales are clamped below at -7 (the paper's floor; no gradient below it, as
    torch.clamp), so bins never get narrower than the float format can resolve;
  - log P(bin) = log sig(p) + log sig(-m) + log(1 - exp(-(p - m))), not the
    difference of two sigmoids, so it keeps its precision in the tails;
  - bins with probability < 1e-5 use the paper's mid-bin approximation
    log pdf(x) + log(2h), the composite formula's branch rule;
  - large positive log-scales are fine (the mixture tends to a flat density).
reduction: "none" gives the per-pixel NLL (B, H, W) (summed over colours), "sum" its
sum, "mean" its mean over the B*H*W pixels (divide by C * ln 2 for bits per dim).

The forward kernel keeps only that (B, H, W) NLL for the backward pass, a custom
op of its own (dmol_loss_backward) that recomputes each mixture's terms per pixel:
no B x H x W x C x M temporaries, unlike the composite formula (dmol_loss_reference),
which builds ~30 of them. The backward op is not differentiable again.

dmol_sample(params, u) draws one image from the mixture: uniforms u (B, C + 1, H, W)
float64 in [0, 1]: u[:, 0] picks the mixture by the inverse CDF over
softmax(logits / temperature) (genfast.ops._draw.inverse_cdf's convention: the number
of mixtures whose running sum of exp(z - max z) is <= u * total, clamped to M - 1);
u[:, 1 + c] draws colour c from its logistic by the inverse CDF,
x = mean + temperature * exp(log_scale) * log(v / (1 - v)) with v = u clamped into
[1e-5, 1 - 1e-5] (openai/pixel-cnn's interval); x is clamped to [-1, 1] and quantised
to floor((x + 1)(levels - 1)/2 + 1/2). The RGB coupling uses the drawn levels'
positions (what the loss conditions on). All of it in float64, so every backend fed
the same uniforms draws the same levels. With genfast.models.sampling's
sampling_uniforms: u = sampling_uniforms(B, C + 1, H, W).permute(3, 2, 0, 1).
Kernels: csrc/cpu/dmol.cpp, csrc/cuda/dmol.cu; shared math in csrc/dmol.h; schemas in
csrc/schemas.cpp.
"""
from __future__ import annotations

import math

import torch

from genfast.ops._draw import inverse_cdf
from genfast.ops._registry import register_op

KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float64)}
LOSS_OP = register_op("dmol_loss", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                      torch_ops=("dmol_loss", "dmol_loss_backward"))
SAMPLE_OP = register_op("dmol_sample", module=__name__, kernel_dtypes=KERNEL_DTYPES)
REDUCTIONS = ("mean", "sum", "none")
MIN_LOG_SCALE = -7.0
TINY_PROBABILITY = 1e-5
SAMPLE_EPS = 1e-5


def dmol_num_params(channels: int, num_mixtures: int) -> int:
    """P: 3 * num_mixtures for grey, 10 * num_mixtures for RGB."""
    return num_mixtures * (3 if channels == 1 else 10)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_common(op: str, params, num_mixtures, levels) -> None:
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"{op}: params must be a tensor, got {type(params).__name__}")
    if params.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: params must be float32 or float64, got {params.dtype}")
    if params.dim() != 4:
        raise ValueError(f"{op}: params must have shape (B, P, H, W), got {tuple(params.shape)}")
    for name, value, low in (("num_mixtures", num_mixtures, 1), ("levels", levels, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{op}: {name} must be an int >= {low}, got {value!r}")


def _check_loss_args(params, x, num_mixtures, levels, reduction) -> torch.Tensor:
    """Checks the arguments; returns x as int64."""
    op = "dmol_loss"
    _check_common(op, params, num_mixtures, levels)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{op}: x must hold integer levels (e.g. int64 or uint8), got {x.dtype}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{op}: x must have shape (B, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    if x.device != params.device:
        raise ValueError(f"{op}: x is on {x.device} but params is on {params.device}")
    b, c, h, w = x.shape
    if (params.shape[0], params.shape[2], params.shape[3]) != (b, h, w):
        raise ValueError(f"{op}: x {tuple(x.shape)} and params {tuple(params.shape)} must agree in B, H and W")
    expected = dmol_num_params(c, num_mixtures)
    if params.shape[1] != expected:
        raise ValueError(f"{op}: params must have {expected} channels for {c}-channel images and "
                         f"num_mixtures={num_mixtures} ({expected // num_mixtures} per mixture), "
                         f"got {params.shape[1]}")
    return x.long()


# The value ranges need a device-to-host read; the compiled ops check them themselves
# (csrc/dmol.cpp), so the wrappers check them only before the reference twins.
def _check_levels(x: torch.Tensor, levels: int) -> None:
    if x.numel() and not _compiling():
        low, high = torch.aminmax(x)
        if low.item() < 0 or high.item() >= levels:
            raise ValueError(f"dmol_loss: x must hold levels in [0, {levels}), got values in "
                             f"[{low.item()}, {high.item()}]")


def _check_uniforms(u: torch.Tensor) -> None:
    if u.numel() and not _compiling():
        low, high = torch.aminmax(u)
        if not (low.item() >= 0 and high.item() <= 1):
            raise ValueError(f"dmol_sample: u must hold uniforms in [0, 1], got values in "
                             f"[{low.item()}, {high.item()}]")


def _channels_of(op: str, params, num_mixtures) -> int:
    for channels in (1, 3):
        if params.shape[1] == dmol_num_params(channels, num_mixtures):
            return channels
    raise ValueError(f"{op}: params must have {dmol_num_params(1, num_mixtures)} (grey) or "
                     f"{dmol_num_params(3, num_mixtures)} (RGB) channels for num_mixtures={num_mixtures}, "
                     f"got {params.shape[1]}")


def _check_sample_args(params, u, num_mixtures, levels, temperature) -> int:
    """Checks the arguments; returns the number of colours C."""
    op = "dmol_sample"
    _check_common(op, params, num_mixtures, levels)
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature!r}")
    channels = _channels_of(op, params, num_mixtures)
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"{op}: u must be a tensor, got {type(u).__name__}")
    if u.dtype != torch.float64:
        raise TypeError(f"{op}: u must be float64, got {u.dtype}")
    b, _, h, w = params.shape
    if tuple(u.shape) != (b, channels + 1, h, w):
        raise ValueError(f"{op}: u must have shape {(b, channels + 1, h, w)} (the mixture's and each colour's "
                         f"uniform per pixel), got {tuple(u.shape)}")
    if u.device != params.device:
        raise ValueError(f"{op}: u is on {u.device} but params is on {params.device}")
    return channels


def _unpack(params: torch.Tensor, channels: int, num_mixtures: int):
    """(logits (B, M, H, W), means, raw log-scales, raw coefficients or None), the
    last three (B, C, M, H, W)."""
    b, _, h, w = params.shape
    m = num_mixtures
    logits = params[:, :m]
    blocks = params[:, m:].reshape(b, channels, 3 if channels == 3 else 2, m, h, w)
    coeffs = blocks[:, :, 2] if channels == 3 else None
    return logits, blocks[:, :, 0], blocks[:, :, 1], coeffs


def _softplus(t: torch.Tensor) -> torch.Tensor:
    # log(1 + e^t) without overflow (F.softplus switches to t itself above 20, which
    # is off by up to 2e-9: visible in float64 comparisons).
    return t.clamp(min=0) + torch.log1p(torch.exp(-t.abs()))


def _reduce(nll: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return nll.mean()
    return nll


def dmol_loss_reference(params: torch.Tensor, x: torch.Tensor, *, num_mixtures: int, levels: int = 256,
                        reduction: str = "mean") -> torch.Tensor:
    """Pure-PyTorch twin: the composite formula of openai/pixel-cnn (and its PyTorch
    ports), elementwise over B x C x M x H x W tensors."""
    x = x.long()
    channels = x.shape[1]
    logits, means, raw_log_scales, raw_coeffs = _unpack(params, channels, num_mixtures)
    # The floor with its gradient rule spelled out (zero at and below it; torch.clamp's
    # rule at the boundary has varied between releases): the kernels' rule.
    log_scales = torch.where(raw_log_scales > MIN_LOG_SCALE, raw_log_scales, MIN_LOG_SCALE)
    h = 1.0 / (levels - 1)
    pos = (x.to(params.dtype) * (2.0 * h) - 1.0).unsqueeze(2)  # (B, C, 1, H, W)
    if channels == 3:
        coeffs = torch.tanh(raw_coeffs)
        means = torch.stack([means[:, 0],
                             means[:, 1] + coeffs[:, 0] * pos[:, 0],
                             means[:, 2] + coeffs[:, 1] * pos[:, 0] + coeffs[:, 2] * pos[:, 1]], dim=1)
    centered = pos - means
    inv_scale = torch.exp(-log_scales)
    plus_in = inv_scale * (centered + h)
    min_in = inv_scale * (centered - h)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    log_cdf_plus = plus_in - _softplus(plus_in)
    log_one_minus_cdf_min = -_softplus(min_in)
    mid_in = inv_scale * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * _softplus(mid_in)
    inner = torch.where(cdf_delta > TINY_PROBABILITY, torch.log(cdf_delta.clamp(min=1e-12)),
                        log_pdf_mid - math.log((levels - 1) / 2))
    level = x.unsqueeze(2)
    log_probs = torch.where(level == 0, log_cdf_plus,
                            torch.where(level == levels - 1, log_one_minus_cdf_min, inner))
    log_probs = log_probs.sum(1) + torch.log_softmax(logits, dim=1)  # (B, M, H, W)
    return _reduce(-torch.logsumexp(log_probs, dim=1), reduction)


def dmol_loss(params: torch.Tensor, x: torch.Tensor, *, num_mixtures: int, levels: int = 256,
              reduction: str = "mean", impl: str = "auto") -> torch.Tensor:
    """The DMOL negative log-likelihood (nats) of integer images x (B, C, H, W), C = 1
    or 3, levels in [0, levels), under params (B, P, H, W) (layout: module docstring).
    reduction: "mean" (over pixels), "sum" or "none" (B, H, W). Differentiable with
    respect to params. impl: "auto", "ext" or "reference"."""
    x = _check_loss_args(params, x, num_mixtures, levels, reduction)
    if not LOSS_OP.use_kernel(impl, params):
        _check_levels(x, levels)
        return dmol_loss_reference(params, x, num_mixtures=num_mixtures, levels=levels, reduction=reduction)
    return _reduce(torch.ops.genfast.dmol_loss(params, x, num_mixtures, levels), reduction)


def dmol_sample_reference(params: torch.Tensor, u: torch.Tensor, *, num_mixtures: int, levels: int = 256,
                          temperature: float = 1.0) -> torch.Tensor:
    """Pure-PyTorch twin of dmol_sample: the same float64 operations in the same order."""
    b, _, h, w = params.shape
    channels = u.shape[1] - 1
    logits, means, raw_log_scales, raw_coeffs = _unpack(params.double(), channels, num_mixtures)
    pick = inverse_cdf(logits.permute(0, 2, 3, 1).reshape(-1, num_mixtures), u[:, 0].reshape(-1),
                       temperature).reshape(b, 1, h, w)

    def chosen(t):  # (B, M, H, W) -> the picked mixture's value (B, H, W)
        return t.gather(1, pick).squeeze(1)

    out, pos = [], []
    for c in range(channels):
        mean = chosen(means[:, c])
        if c == 1:
            mean = mean + torch.tanh(chosen(raw_coeffs[:, 0])) * pos[0]
        if c == 2:
            mean = mean + (torch.tanh(chosen(raw_coeffs[:, 1])) * pos[0] +
                           torch.tanh(chosen(raw_coeffs[:, 2])) * pos[1])
        log_scale = chosen(raw_log_scales[:, c]).clamp(min=MIN_LOG_SCALE)
        v = u[:, 1 + c].clamp(SAMPLE_EPS, 1.0 - SAMPLE_EPS)
        value = mean + temperature * torch.exp(log_scale) * (torch.log(v) - torch.log(1.0 - v))
        value = value.clamp(-1.0, 1.0).nan_to_num(nan=-1.0)
        level = torch.floor((value + 1.0) * float(levels - 1) / 2.0 + 0.5).clamp(0, levels - 1).long()
        out.append(level)
        pos.append(2.0 * level.double() / float(levels - 1) - 1.0)
    return torch.stack(out, dim=1)


def dmol_sample(params: torch.Tensor, u: torch.Tensor, *, num_mixtures: int, levels: int = 256,
                temperature: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """One draw per pixel (int64 (B, C, H, W)) from the mixtures params (B, P, H, W),
    C inferred from P, with the uniforms u (B, C + 1, H, W) float64 (layout and
    temperature: module docstring). impl: "auto", "ext" or "reference"."""
    _check_sample_args(params, u, num_mixtures, levels, temperature)
    if not SAMPLE_OP.use_kernel(impl, params):
        _check_uniforms(u)
        return dmol_sample_reference(params, u, num_mixtures=num_mixtures, levels=levels,
                                     temperature=float(temperature))
    return torch.ops.genfast.dmol_sample(params, u, num_mixtures, levels, float(temperature))


@LOSS_OP.register_fake()
def _(params, x, num_mixtures, levels):
    return params.new_empty((params.shape[0], params.shape[2], params.shape[3]))


@LOSS_OP.register_fake("dmol_loss_backward")
def _(grad_nll, params, x, nll, num_mixtures, levels):
    return params.new_empty(params.shape)


@SAMPLE_OP.register_fake()
def _(params, u, num_mixtures, levels, temperature):
    return params.new_empty((params.shape[0], u.shape[1] - 1, params.shape[2], params.shape[3]),
                            dtype=torch.long)


def _loss_setup(ctx, inputs, output):
    params, x, num_mixtures, levels = inputs
    ctx.save_for_backward(params, x, output)
    ctx.config = (num_mixtures, levels)


@LOSS_OP.register_autograd(setup_context=_loss_setup)
def _loss_backward(ctx, grad_nll):
    params, x, nll = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = torch.ops.genfast.dmol_loss_backward(grad_nll, params, x, nll, *ctx.config)
    return grad, None, None, None
