"""gradient_penalty and gradient_penalty_interpolate: the fused math of GAN gradient
penalties (WGAN-GP, Gulrajani et al. 2017; R1/R2, Mescheder et al. 2018).

gradient_penalty_interpolate(real, fake, eps) = eps * real + (1 - eps) * fake with
one eps per sample: the points x_hat where WGAN-GP evaluates the critic's gradient.

gradient_penalty(grad) = weight * mean over samples of phi(||grad_i||_2), where
grad_i is sample i's gradient (all of its elements) and
    phi(n) = (n - center)^2              (two-sided; WGAN-GP: center 1, weight 10)
    phi(n) = max(0, n - center)^2        (one_sided=True)
R1/R2 (gamma / 2 * mean ||grad_i||^2) is center=0, weight=gamma/2. The norms are
reduced in one pass over grad in float32 (float64 for float64 input).

At ||grad_i|| = 0 the norm is not differentiable: genfast takes grad_i / ||grad_i||
:= 0 there (the least-norm subgradient), so the gradient with respect to grad_i is
0 and every value and derivative is finite (the penalty term itself is center^2, or
0 when one-sided). With center = 0 the term is ||grad_i||^2, which is smooth, and
the derivatives are exact everywhere.

Each op's backward is itself a custom op (gradient_penalty_backward,
gradient_penalty_interpolate_backward), differentiable again, so a penalty built on
autograd.grad(create_graph=True) reaches the critic's parameters through the double
backward and gradgradcheck holds. Kernels: csrc/cpu/gradient_penalty.cpp,
csrc/cuda/gradient_penalty.cu; shared math in csrc/gradient_penalty.h; schemas in
csrc/schemas.cpp.
"""
from __future__ import annotations

import math

import torch

from genfast.ops._checks import check_float_tensor, check_tensor
from genfast.ops._registry import register_op

KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}
PENALTY_OP = register_op("gradient_penalty", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                         torch_ops=("gradient_penalty", "gradient_penalty_backward"))
INTERPOLATE_OP = register_op("gradient_penalty_interpolate", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                             torch_ops=("gradient_penalty_interpolate", "gradient_penalty_interpolate_backward"))


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the per-sample norms: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_batch(op: str, name: str, t) -> None:
    check_float_tensor(op, name, t)
    if t.dim() == 0:
        raise ValueError(f"{op}: {name} must have a batch dimension (N, ...), got a 0-D tensor")
    if t.numel() == 0:
        raise ValueError(f"{op}: {name} must not be empty, got shape {tuple(t.shape)}")


def _check_penalty_args(grad, weight, center, one_sided) -> None:
    op = "gradient_penalty"
    _check_batch(op, "grad", grad)
    for name, value in (("weight", weight), ("center", center)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
    if center < 0:
        raise ValueError(f"{op}: center must be non-negative, got {center!r}")
    if not isinstance(one_sided, bool):
        raise TypeError(f"{op}: one_sided must be a bool, got {one_sided!r}")


def _gradient_scale(norms: torch.Tensor, center: float, one_sided: bool):
    """k(n) = phi'(n) / n and its derivative dk/dn, per sample (the same conventions
    as penalty_gradient_scale in csrc/gradient_penalty.h)."""
    if center == 0:  # phi = n^2
        return torch.full_like(norms, 2.0), torch.zeros_like(norms)
    active = norms > 0
    if one_sided:
        active = active & (norms > center)
    safe = torch.where(active, norms, torch.ones_like(norms))
    scale = torch.where(active, 2 * (1 - center / safe), torch.zeros_like(norms))
    slope = torch.where(active, 2 * center / safe.square(), torch.zeros_like(norms))
    return scale, slope


def gradient_penalty_reference(grad: torch.Tensor, *, weight: float = 10.0, center: float = 1.0,
                               one_sided: bool = False, return_norms: bool = False):
    """Pure-PyTorch twin: what GAN code writes with torch.linalg.vector_norm (and the
    sum of squares for center 0, as R1 code does)."""
    flat = grad.reshape(grad.shape[0], -1).to(norm_dtype(grad.dtype))
    norms = torch.linalg.vector_norm(flat, dim=1)
    if center == 0:
        terms = flat.square().sum(1)
    else:
        gap = norms - center
        terms = (gap.clamp(min=0) if one_sided else gap).square()
    penalty = (weight * terms.mean()).to(grad.dtype)
    return (penalty, norms) if return_norms else penalty


def gradient_penalty(grad: torch.Tensor, *, weight: float = 10.0, center: float = 1.0,
                     one_sided: bool = False, return_norms: bool = False, impl: str = "auto"):
    """weight * mean_i phi(||grad_i||) for a batch of gradients grad (N, ...).

    Returns the penalty (a 0-D tensor of grad's dtype), or (penalty, norms) with the
    per-sample norms (N,) (float32, or float64 for float64 grad) if return_norms.
    Differentiable twice with respect to grad. impl: "auto", "ext" or "reference".
    """
    _check_penalty_args(grad, weight, center, one_sided)
    if not PENALTY_OP.use_kernel(impl, grad):
        return gradient_penalty_reference(grad, weight=weight, center=center, one_sided=one_sided,
                                          return_norms=return_norms)
    penalty, norms = torch.ops.genfast.gradient_penalty(grad, float(weight), float(center), one_sided)
    return (penalty, norms) if return_norms else penalty


def _check_interpolate_args(real, fake, eps) -> torch.Tensor:
    """Checks the arguments; returns eps as a vector (N,)."""
    op = "gradient_penalty_interpolate"
    _check_batch(op, "real", real)
    _check_batch(op, "fake", fake)
    if real.shape != fake.shape:
        raise ValueError(f"{op}: real and fake must have the same shape, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    check_tensor(op, "eps", eps)
    n = real.shape[0]
    if eps.numel() != n or (eps.dim() > 0 and eps.shape[0] != n) or any(s != 1 for s in eps.shape[1:]):
        raise ValueError(f"{op}: eps must hold one value per sample, shape ({n},) or ({n}, 1, ...), "
                         f"got {tuple(eps.shape)}")
    for name, t in (("fake", fake), ("eps", eps)):
        if t.dtype != real.dtype:
            raise TypeError(f"{op}: {name} dtype {t.dtype} does not match real dtype {real.dtype}")
        if t.device != real.device:
            raise ValueError(f"{op}: {name} is on {t.device} but real is on {real.device}")
    return eps.reshape(n)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """v (N,) shaped to broadcast against like (N, ...)."""
    return v.reshape((v.shape[0],) + (1,) * (like.dim() - 1))


def gradient_penalty_interpolate_reference(real: torch.Tensor, fake: torch.Tensor,
                                           eps: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch twin: eps * real + (1 - eps) * fake, eps broadcast per sample."""
    e = _per_sample(eps.reshape(real.shape[0]), real)
    return e * real + (1 - e) * fake


def gradient_penalty_interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, *,
                                 impl: str = "auto") -> torch.Tensor:
    """x_hat = eps * real + (1 - eps) * fake, one eps per sample: real and fake
    (N, ...) of the same shape, eps (N,) or (N, 1, ..., 1). Differentiable (twice)
    with respect to all three. impl: "auto", "ext" or "reference"."""
    eps = _check_interpolate_args(real, fake, eps)
    if not INTERPOLATE_OP.use_kernel(impl, real):
        return gradient_penalty_interpolate_reference(real, fake, eps)
    return torch.ops.genfast.gradient_penalty_interpolate(real, fake, eps)


@PENALTY_OP.register_fake()
def _(grad, weight, center, one_sided):
    return grad.new_empty(()), grad.new_empty((grad.shape[0],), dtype=norm_dtype(grad.dtype))


@PENALTY_OP.register_fake("gradient_penalty_backward")
def _(grad_penalty, grad_norms, grad, norms, weight, center, one_sided):
    return grad.new_empty(grad.shape)


@INTERPOLATE_OP.register_fake()
def _(real, fake, eps):
    return real.new_empty(real.shape)


@INTERPOLATE_OP.register_fake("gradient_penalty_interpolate_backward")
def _(grad_output, real, fake, eps):
    return real.new_empty(real.shape), real.new_empty(real.shape), eps.new_empty(eps.shape)


# gradient_penalty: (penalty, norms) = f(grad).
def _penalty_setup(ctx, inputs, output):
    grad, weight, center, one_sided = inputs
    ctx.save_for_backward(grad, output[1])
    ctx.config = (weight, center, one_sided)


@PENALTY_OP.register_autograd(setup_context=_penalty_setup)
def _penalty_backward(ctx, grad_penalty, grad_norms):
    grad, norms = ctx.saved_tensors
    if grad_penalty is None:
        grad_penalty = grad.new_zeros(())
    grad_grad = torch.ops.genfast.gradient_penalty_backward(grad_penalty, grad_norms, grad, norms, *ctx.config)
    return grad_grad, None, None, None


# gradient_penalty_backward: out_i = (a * k(n_i) + b_i * h(n_i)) * grad_i with
# a = grad_penalty * weight / N, b = grad_norms, h(n) = 1/n (0 at 0). Partial
# derivatives, norms held fixed (autograd adds the path through the norms).
def _penalty_backward_setup(ctx, inputs, output):
    grad_penalty, grad_norms, grad, norms, weight, center, one_sided = inputs
    ctx.save_for_backward(grad_penalty, grad_norms, grad, norms)
    ctx.config = (weight, center, one_sided)


@PENALTY_OP.register_autograd(setup_context=_penalty_backward_setup, torch_op="gradient_penalty_backward")
def _penalty_backward_backward(ctx, upstream):
    grad_penalty, grad_norms, grad, norms = ctx.saved_tensors
    weight, center, one_sided = ctx.config
    batch = grad.shape[0]
    flat_upstream = upstream.reshape(batch, -1).to(norms.dtype)
    dots = (grad.reshape(batch, -1).to(norms.dtype) * flat_upstream).sum(1)
    k, k_slope = _gradient_scale(norms, center, one_sided)
    positive = norms > 0
    safe = torch.where(positive, norms, torch.ones_like(norms))
    h = torch.where(positive, 1 / safe, torch.zeros_like(norms))
    a = grad_penalty.reshape(()).to(norms.dtype) * (weight / batch)
    b = grad_norms if grad_norms is not None else torch.zeros_like(norms)
    d_penalty = d_norms_upstream = d_grad = d_norms = None
    if ctx.needs_input_grad[0]:
        d_penalty = ((weight / batch) * (k * dots).sum()).to(grad_penalty.dtype).reshape(grad_penalty.shape)
    if ctx.needs_input_grad[1]:
        d_norms_upstream = h * dots
    if ctx.needs_input_grad[2]:
        scale = a * k + b * h
        d_grad = (scale[:, None] * flat_upstream).to(grad.dtype).reshape(grad.shape)
    if ctx.needs_input_grad[3]:
        h_slope = torch.where(positive, -1 / safe.square(), torch.zeros_like(norms))
        d_norms = (a * k_slope + b * h_slope) * dots
    return d_penalty, d_norms_upstream, d_grad, d_norms, None, None, None


def _interpolate_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@INTERPOLATE_OP.register_autograd(setup_context=_interpolate_setup)
def _interpolate_backward(ctx, grad_output):
    real, fake, eps = ctx.saved_tensors
    grads = torch.ops.genfast.gradient_penalty_interpolate_backward(grad_output, real, fake, eps)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


# gradient_penalty_interpolate_backward: (eps * g, (1 - eps) * g, sum g * (real - fake)).
def _interpolate_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@INTERPOLATE_OP.register_autograd(setup_context=_interpolate_backward_setup,
                                  torch_op="gradient_penalty_interpolate_backward")
def _interpolate_backward_backward(ctx, up_real, up_fake, up_eps):
    grad, real, fake, eps = ctx.saved_tensors
    zeros = torch.zeros_like(grad)
    up_real = zeros if up_real is None else up_real
    up_fake = zeros if up_fake is None else up_fake
    up_eps = _per_sample(torch.zeros_like(eps) if up_eps is None else up_eps, grad)
    e = _per_sample(eps, grad)
    d_grad = d_real = d_fake = d_eps = None
    if ctx.needs_input_grad[0]:
        d_grad = e * up_real + (1 - e) * up_fake + up_eps * (real - fake)
    if ctx.needs_input_grad[1]:
        d_real = up_eps * grad
    if ctx.needs_input_grad[2]:
        d_fake = -up_eps * grad
    if ctx.needs_input_grad[3]:
        d_eps = (grad * (up_real - up_fake)).reshape(grad.shape[0], -1).sum(1)
    return d_grad, d_real, d_fake, d_eps
