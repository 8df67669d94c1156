"""genfast.losses: the penalty API on critics with known input gradients, GAN losses
against their formulas, lazy regularisation, VQGAN's adaptive weight, bad input."""
import math

import pytest
import torch
import torch.nn as nn
from conftest import requires_ext

from genfast import losses

IMPLS = ["reference", pytest.param("ext", marks=requires_ext)]


def linear_critic(features, seed=0):
    """D(x) = w . x + b: its input gradient is w for every sample."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 1)).double()


@pytest.mark.parametrize("impl", IMPLS)
def test_penalties_of_a_linear_critic(impl):
    critic = linear_critic(12)
    w = critic[1].weight.detach()
    norm = w.norm().item()
    real, fake = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(5, 3, 4, dtype=torch.float64)
    expect = {
        ("wgan-gp", False): 10 * (norm - 1) ** 2,
        ("wgan-gp", True): 10 * max(0.0, norm - 1) ** 2,
        ("r1", False): 10 / 2 * norm ** 2,
        ("r2", False): 10 / 2 * norm ** 2,
    }
    for (kind, one_sided), value in expect.items():
        got = losses.critic_gradient_penalty(critic, real, fake, kind=kind, weight=10.0, one_sided=one_sided, impl=impl)
        assert math.isclose(got.item(), value, rel_tol=1e-12)
        # Its gradient w.r.t. w: d/dw 10 (|w| - 1)^2 = 20 (|w| - 1) w / |w|; d/dw 5 |w|^2 = 10 w.
        (dw,) = torch.autograd.grad(got, critic[1].weight)
        want = 20 * (norm - 1) * w / norm if kind == "wgan-gp" else 10 * w
        if one_sided and norm < 1:
            want = torch.zeros_like(w)
        torch.testing.assert_close(dw, want)


@pytest.mark.parametrize("impl", IMPLS)
def test_penalty_of_a_quadratic_critic(impl):
    # D(x) = a / 2 * |x|^2 has input gradient a * x: the WGAN-GP penalty at
    # x_hat = eps * real + (1 - eps) * fake is lambda * mean (a |x_hat| - 1)^2.
    a = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    critic = lambda x: a / 2 * x.flatten(1).square().sum(1)
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(6, 7, generator=gen, dtype=torch.float64), torch.randn(6, 7, generator=gen, dtype=torch.float64)
    eps = torch.rand(6, generator=gen, dtype=torch.float64)
    x_hat = eps[:, None] * real + (1 - eps[:, None]) * fake
    want = 10 * ((a * x_hat.norm(dim=1) - 1) ** 2).mean()
    got = losses.critic_gradient_penalty(critic, real, fake, eps=eps, impl=impl)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, a)[0], torch.autograd.grad(want, a)[0])


def test_penalty_eps_from_generator_and_labels():
    critic_weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    seen = []

    def conditional_critic(x, labels):  # D(x, y) = W[y] . x
        seen.append(labels)
        return (critic_weight[labels] * x).sum(1)

    real, fake = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    labels = torch.tensor([0, 2, 3])
    run = lambda seed: losses.critic_gradient_penalty(conditional_critic, real, fake, labels=labels,
                                               generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(5), run(5))  # eps comes from the generator
    assert seen[-1] is labels
    norms = critic_weight[labels].norm(dim=1)  # the input gradient of sample i is W[y_i]
    torch.testing.assert_close(run(6), 10 * ((norms - 1) ** 2).mean())


def test_penalty_does_not_train_the_inputs_and_works_under_no_grad():
    critic = linear_critic(4)
    real = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    penalty = losses.critic_gradient_penalty(critic, real, fake)
    penalty.backward()
    assert real.grad is None and fake.grad is None and critic[1].weight.grad is not None
    with torch.no_grad():  # e.g. while logging: still the same value
        torch.testing.assert_close(losses.critic_gradient_penalty(critic, real, fake, kind="r1"),
                                   5 * critic[1].weight.detach().norm() ** 2)


@pytest.mark.parametrize("make,error,match", [
    (lambda c, r, f: (c, r, f[:, :3], {}), ValueError, "same shape"),
    (lambda c, r, f: (c, r[:0], f[:0], {}), ValueError, "non-empty batch"),
    (lambda c, r, f: (c, r, None, {}), ValueError, "needs the fake batch"),
    (lambda c, r, f: (c, r, None, {"kind": "r2"}), ValueError, "needs the fake batch"),
    (lambda c, r, f: (c, r, f, {"kind": "r3"}), ValueError, "kind must be one of"),
    (lambda c, r, f: (c, r.long(), f.long(), {}), TypeError, "floating point"),
    (lambda c, r, f: ("critic", r, f, {}), TypeError, "critic must be callable"),
    # a critic whose output does not depend on its input
    (lambda c, r, f: (lambda x: c[1].bias.expand(x.shape[0]), r, f, {}), ValueError, "does not depend on its input"),
    (lambda c, r, f: (lambda x: torch.ones(x.shape[0]), r, f, {"kind": "r1"}), ValueError, "does not depend"),
    # non-scalar critic outputs
    (lambda c, r, f: (lambda x: torch.stack([c(x), c(x)], 1), r, f, {}), ValueError, "one score per sample"),
    (lambda c, r, f: (lambda x: c(x).sum(), r, f, {}), ValueError, "one score per sample"),
    (lambda c, r, f: (lambda x: c(x)[:2], r, f, {}), ValueError, "one score per sample"),
    (lambda c, r, f: (lambda x: (c(x),), r, f, {}), TypeError, "must return a tensor"),
])
def test_penalty_bad_input(make, error, match):
    critic, real, fake, kwargs = make(linear_critic(4), torch.randn(3, 4, dtype=torch.float64),
                                      torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(error, match=match):
        losses.critic_gradient_penalty(critic, real, fake, **kwargs)


def test_gan_losses_against_their_formulas():
    gen = torch.Generator().manual_seed(2)
    r = torch.randn(9, 1, generator=gen, dtype=torch.float64) * 3
    f = torch.randn(7, 1, generator=gen, dtype=torch.float64) * 3
    s = torch.sigmoid
    formulas = {
        ("ns", "d"): -(torch.log(s(r))).mean() - torch.log(1 - s(f)).mean(),
        ("ns", "g"): -torch.log(s(f)).mean(),
        ("saturating", "d"): -(torch.log(s(r))).mean() - torch.log(1 - s(f)).mean(),
        ("saturating", "g"): torch.log(1 - s(f)).mean(),
        ("ls", "d"): 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean(),
        ("ls", "g"): 0.5 * ((f - 1) ** 2).mean(),
        ("wgan", "d"): f.mean() - r.mean(),
        ("wgan", "g"): -f.mean(),
        ("hinge", "d"): torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(),
        ("hinge", "g"): -f.mean(),
    }
    assert {k for k, _ in formulas} == set(losses.GAN_LOSS_KINDS)
    for (kind, target), want in formulas.items():
        got = losses.gan_loss(r, f, kind=kind, target=target)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        if target == "g":
            torch.testing.assert_close(losses.gan_loss(None, f, kind=kind, target="g"), want)
    # Large logits stay finite (softplus, not log of a sigmoid).
    big = torch.tensor([80.0, -80.0], dtype=torch.float64)
    for kind in ("ns", "saturating"):
        for target in ("d", "g"):
            assert torch.isfinite(losses.gan_loss(big, big, kind=kind, target=target))


@pytest.mark.parametrize("call,error,match", [
    (lambda r, f: losses.gan_loss(r, f, kind="minimax"), ValueError, "kind must be one of"),
    (lambda r, f: losses.gan_loss(r, f, target="x"), ValueError, "target must be"),
    (lambda r, f: losses.gan_loss(None, f, target="d"), ValueError, "needs real_logits"),
    (lambda r, f: losses.gan_loss(r, f[:0]), ValueError, "non-empty"),
    (lambda r, f: losses.gan_loss(r.long(), f), TypeError, "floating point"),
    (lambda r, f: losses.gan_loss(r, 1.0), TypeError, "must be a tensor"),
])
def test_gan_loss_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(4), torch.randn(4))


def test_lazy_regularization():
    lazy = losses.LazyRegularization(every=16)
    assert lazy.gain == 16 and lazy.ratio == 16 / 17
    assert [s for s in range(40) if lazy.applies(s)] == [0, 16, 32]
    hp = lazy.adam_hyperparameters(0.002, (0.0, 0.99))
    assert math.isclose(hp["lr"], 0.002 * 16 / 17)
    assert hp["betas"] == (0.0, 0.99 ** (16 / 17))
    assert losses.LazyRegularization(every=1).adam_hyperparameters(0.01, (0.5, 0.9)) == {"lr": 0.005, "betas": (0.5 ** 0.5, 0.9 ** 0.5)}
    # Usable as Adam's arguments.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], **hp)
    for every in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="every must be a positive int"):
            losses.LazyRegularization(every=every)
    with pytest.raises(ValueError, match="betas"):
        lazy.adam_hyperparameters(0.01, (1.0, 0.9))
    with pytest.raises(ValueError, match="lr"):
        lazy.adam_hyperparameters(0.0)


def test_lazy_penalty_matches_the_gained_penalty():
    # Applied every k steps with gain k, the penalty's gradient is k times the plain one.
    lazy = losses.LazyRegularization(every=4)
    critic = linear_critic(6)
    real = torch.randn(5, 6, dtype=torch.float64)
    plain = torch.autograd.grad(losses.critic_gradient_penalty(critic, real, kind="r1"), critic[1].weight)[0]
    lazy_grad = torch.autograd.grad(lazy.gain * losses.critic_gradient_penalty(critic, real, kind="r1"), critic[1].weight)[0]
    torch.testing.assert_close(lazy_grad, 4 * plain)


def test_adaptive_weight_against_hand_computation():
    # Decoder's last layer y = W x; rec = |W x - t|^2 summed; gan = -v . (W x) summed.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    v = torch.randn(3, generator=gen, dtype=torch.float64)
    W = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = x @ W.T
    rec = (y - t).square().sum()
    gan = -(y @ v).sum()
    weight = losses.adaptive_weight(rec, gan, W)
    # d rec / dW = 2 (W x - t)^T x; d gan / dW = -v (sum of x)^T.
    d_rec = 2 * (x @ W.detach().T - t).T @ x
    d_gan = -torch.outer(v, x.sum(0))
    want = d_rec.norm() / (d_gan.norm() + 1e-4)
    torch.testing.assert_close(weight, want)
    assert not weight.requires_grad
    rec.backward()  # the graphs are kept for the losses' own backward
    # Clamped: a vanishing adversarial gradient gives max_weight.
    y2 = x @ W.T
    tiny = losses.adaptive_weight((y2 - t).square().sum(), 1e-12 * y2.sum(), W, delta=0.0, max_weight=50.0)
    assert tiny.item() == 50.0


def test_adaptive_weight_bad_input():
    W = torch.randn(3, 4, requires_grad=True)
    other = torch.randn(3, requires_grad=True)
    y = (W @ torch.randn(4)).sum()
    with pytest.raises(ValueError, match="gan_loss does not depend on last_layer"):
        losses.adaptive_weight(y, other.sum(), W)
    with pytest.raises(ValueError, match="rec_loss must be a scalar"):
        losses.adaptive_weight(W @ torch.randn(4), y, W)
    with pytest.raises(ValueError, match="last_layer must be a tensor that requires grad"):
        losses.adaptive_weight(y, y, W.detach())
