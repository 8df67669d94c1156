"""GAN losses and regularisers.

- critic_gradient_penalty(critic, real, fake, kind=...): WGAN-GP (Gulrajani et al.
  2017) and R1 / R2 (Mescheder et al. 2018) of a critic, on genfast's fused ops
  (genfast.ops.gradient_penalty_interpolate, and genfast.ops.gradient_penalty, the op
  on a given gradient); differentiable with respect to the critic's parameters.
  `gradient_penalty` is its deprecated former name.
- gan_loss(real_logits, fake_logits, kind=..., target="d" | "g"): the standard
  adversarial losses.
- LazyRegularization: StyleGAN2's lazy regularisation (Karras et al. 2020): apply the
  penalty every k steps with gain k, and adjust Adam for the steps it shares.
- adaptive_weight(rec_loss, gan_loss, last_layer): VQGAN's (Esser et al. 2021)
  balance of the adversarial loss against the reconstruction loss.
- PerceptualLoss: LPIPS on VGG16 (genfast.perceptual), VQGAN's perceptual term.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import torch
import torch.nn.functional as F

from genfast import ops
from genfast.perceptual import PerceptualLoss  # re-exported (__all__); its home is genfast.perceptual

PENALTY_KINDS = ("wgan-gp", "r1", "r2")
GAN_LOSS_KINDS = ("ns", "saturating", "ls", "wgan", "hinge")


def _check_batch(name: str, t, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    if t.dim() == 0 or t.shape[0] == 0 or t.numel() == 0:
        raise ValueError(f"{op}: {name} must be a non-empty batch (N, ...), got shape {tuple(t.shape)}")


def critic_gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor | None = None, *,
                     kind: str = "wgan-gp", weight: float = 10.0, center: float = 1.0,
                     one_sided: bool = False, labels=None, eps: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, return_norms: bool = False,
                     impl: str = "auto"):
    """The gradient penalty of `critic`, differentiable with respect to its parameters.

    kind="wgan-gp": weight * mean_i (||grad D(x_hat_i)|| - center)^2 (max(0, .)^2 when
        one_sided) at x_hat = eps * real + (1 - eps) * fake, eps ~ U(0, 1) per sample
        (drawn with `generator` unless given); weight is lambda (10 in the paper).
    kind="r1" / "r2": weight / 2 * mean_i ||grad D(x_i)||^2 at the real (R1) or fake (R2)
        samples; weight is gamma. center and one_sided do not apply.

    critic(x) (or critic(x, labels) when labels is given) must return one score per
    sample, shape (N,) or (N, 1), and must treat samples independently (no batch
    norm), since the gradient is taken of the sum of the scores. real and fake are
    detached: the penalty trains the critic only. Returns the penalty (0-D), or
    (penalty, per-sample gradient norms) if return_norms.
    """
    op = "critic_gradient_penalty"
    if kind not in PENALTY_KINDS:
        raise ValueError(f"{op}: kind must be one of {PENALTY_KINDS}, got {kind!r}")
    if not callable(critic):
        raise TypeError(f"{op}: critic must be callable, got {type(critic).__name__}")
    _check_batch("real", real, op)
    if kind in ("wgan-gp", "r2"):
        if fake is None:
            raise ValueError(f"{op}: kind={kind!r} needs the fake batch")
        _check_batch("fake", fake, op)
        if fake.shape != real.shape:
            raise ValueError(f"{op}: real and fake must have the same shape, got {tuple(real.shape)} "
                             f"and {tuple(fake.shape)}")
    batch = real.shape[0]
    if kind == "wgan-gp":
        if eps is None:
            eps = torch.rand(batch, generator=generator, dtype=real.dtype,
                             device=generator.device if generator is not None else real.device)
            eps = eps.to(real.device)
        x = ops.gradient_penalty_interpolate(real.detach(), fake.detach(), eps, impl=impl)
    else:
        x = (real if kind == "r1" else fake).detach()
        weight, center, one_sided = weight / 2, 0.0, False
    x.requires_grad_(True)
    with torch.enable_grad():
        scores = critic(x) if labels is None else critic(x, labels)
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"{op}: critic must return a tensor, got {type(scores).__name__}")
        if scores.dim() == 0 or scores.shape[0] != batch or scores.numel() != batch:
            raise ValueError(f"{op}: critic must return one score per sample, shape ({batch},) or "
                             f"({batch}, 1), got {tuple(scores.shape)}")
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True, allow_unused=True) \
            if scores.requires_grad else (None,)
    if grad is None:
        raise ValueError(f"{op}: the critic's output does not depend on its input; the gradient "
                         f"penalty needs a critic that is differentiable in x")
    return ops.gradient_penalty(grad, weight=weight, center=center, one_sided=one_sided,
                                return_norms=return_norms, impl=impl)


def gradient_penalty(*args, **kwargs):
    """Deprecated: critic_gradient_penalty, renamed so that it is not confused with
    genfast.ops.gradient_penalty (the op on a given gradient)."""
    warnings.warn("genfast.losses.gradient_penalty is deprecated; use "
                  "genfast.losses.critic_gradient_penalty (genfast.ops.gradient_penalty is the "
                  "op on a given gradient)", DeprecationWarning, stacklevel=2)
    return critic_gradient_penalty(*args, **kwargs)


def gan_loss(real_logits: torch.Tensor | None, fake_logits: torch.Tensor, *, kind: str = "ns",
             target: str = "d") -> torch.Tensor:
    """The adversarial loss of the discriminator (target="d") or generator ("g").

    With r = D(real), f = D(G(z)) as raw scores (logits), sigma the sigmoid:
      "ns"          d: -log sigma(r) - log(1 - sigma(f))  g: -log sigma(f)  (non-saturating)
      "saturating"  d: as "ns"                           g: log(1 - sigma(f))  (minimax)
      "ls"          d: (r - 1)^2 / 2 + f^2 / 2          g: (f - 1)^2 / 2  (LSGAN, 0-1 coding)
      "wgan"        d: f - r                             g: -f
      "hinge"       d: max(0, 1 - r) + max(0, 1 + f)     g: -f
    each averaged over its batch. The generator's losses need only fake_logits
    (real_logits may be None).
    """
    op = "gan_loss"
    if kind not in GAN_LOSS_KINDS:
        raise ValueError(f"{op}: kind must be one of {GAN_LOSS_KINDS}, got {kind!r}")
    if target not in ("d", "g"):
        raise ValueError(f"{op}: target must be 'd' (discriminator) or 'g' (generator), got {target!r}")
    _check_batch("fake_logits", fake_logits, op)
    f = fake_logits
    if target == "g":
        if kind == "ns":
            return F.softplus(-f).mean()
        if kind == "saturating":
            return -F.softplus(f).mean()
        if kind == "ls":
            return 0.5 * (f - 1).square().mean()
        return -f.mean()
    if real_logits is None:
        raise ValueError(f"{op}: the discriminator's loss needs real_logits")
    _check_batch("real_logits", real_logits, op)
    r = real_logits
    if kind in ("ns", "saturating"):
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "ls":
        return 0.5 * (r - 1).square().mean() + 0.5 * f.square().mean()
    if kind == "wgan":
        return f.mean() - r.mean()
    return F.relu(1 - r).mean() + F.relu(1 + f).mean()


@dataclasses.dataclass(frozen=True)
class LazyRegularization:
    """StyleGAN2's lazy regularisation: the penalty is computed only every `every`
    steps (minibatches) and multiplied by `every` to keep its average strength; the
    optimiser of those parameters, which sees the penalty on 1 of every (every + 1)
    of its updates, runs with lr * c and betas ** c, c = every / (every + 1).

        lazy = LazyRegularization(every=16)
        opt_d = torch.optim.Adam(D.parameters(), **lazy.adam_hyperparameters(2e-3, (0, 0.99)))
        ...
        if lazy.applies(step):
            (lazy.gain * critic_gradient_penalty(D, real, kind="r1", weight=gamma)).backward()
    """

    every: int = 16

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"LazyRegularization: every must be a positive int, got {self.every!r}")

    @property
    def gain(self) -> int:
        """The factor the penalty is multiplied by on the steps where it applies."""
        return self.every

    @property
    def ratio(self) -> float:
        """c = every / (every + 1)."""
        return self.every / (self.every + 1)

    def applies(self, step: int) -> bool:
        """Whether the penalty is due at `step` (0-based): steps 0, every, 2 * every, ..."""
        return step % self.every == 0

    def adam_hyperparameters(self, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> dict:
        """{"lr": lr * c, "betas": (beta1 ** c, beta2 ** c)} for torch.optim.Adam."""
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"LazyRegularization: lr must be positive, got {lr!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LazyRegularization: betas must be two numbers in [0, 1), got {betas!r}")
        c = self.ratio
        return {"lr": lr * c, "betas": (betas[0] ** c, betas[1] ** c)}


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, *,
                    delta: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's adaptive weight lambda = ||grad_L rec_loss|| / (||grad_L gan_loss|| + delta),
    L the last layer's weight, clamped to [0, max_weight] and detached (a constant
    for the step). The graphs of both losses are kept for their own backward."""
    op = "adaptive_weight"
    for name, loss in (("rec_loss", rec_loss), ("gan_loss", gan_loss)):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"{op}: {name} must be a scalar tensor, got "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
    if not isinstance(last_layer, torch.Tensor) or not last_layer.requires_grad:
        raise ValueError(f"{op}: last_layer must be a tensor that requires grad (the decoder's last "
                         f"weight)")
    norms = []
    for name, loss in (("rec_loss", rec_loss), ("gan_loss", gan_loss)):
        (grad,) = torch.autograd.grad(loss, last_layer, retain_graph=True, allow_unused=True) \
            if loss.requires_grad else (None,)
        if grad is None:
            raise ValueError(f"{op}: {name} does not depend on last_layer")
        norms.append(torch.linalg.vector_norm(grad))
    return (norms[0] / (norms[1] + delta)).clamp(0, max_weight).detach()


__all__ = ["GAN_LOSS_KINDS", "PENALTY_KINDS", "LazyRegularization", "PerceptualLoss", "adaptive_weight",
           "critic_gradient_penalty", "gan_loss", "gradient_penalty"]
