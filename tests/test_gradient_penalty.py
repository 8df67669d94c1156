"""gradient_penalty and gradient_penalty_interpolate: kernels against the references
and the composite expression GAN code writes, through a critic's double backward;
gradcheck/gradgradcheck, opcheck, torch.compile, zero gradients, determinism and bad
input."""
import random

import pytest
import torch
import torch.nn as nn
from conftest import DEVICES, requires_ext

from genfast import losses
from genfast.ops import (gradient_penalty, gradient_penalty_interpolate,
                         gradient_penalty_interpolate_reference, gradient_penalty_reference)

SETTINGS = [  # (weight, center, one_sided)
    (10.0, 1.0, False), (10.0, 1.0, True), (5.0, 0.0, False), (0.7, 2.5, False), (3.0, 0.4, True),
]


def random_grad(seed, device, dtype=torch.float64, max_sample=50):
    """A random batch of gradients: rank 1-4, norms spread around 1."""
    rng = random.Random(seed)
    shape = [rng.randint(1, 7)] + [rng.randint(1, 5) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        shape = [shape[0], rng.randint(1, max_sample)]
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    per_sample = g.reshape(shape[0], -1)
    g = g * (torch.rand(shape[0], dtype=dtype) * 2.5 / per_sample.norm(dim=1).clamp(min=1e-3)).reshape(
        [shape[0]] + [1] * (len(shape) - 1))
    return g.to(device).requires_grad_()


def composite_penalty(grad, weight, center, one_sided):
    """What GAN code writes on autograd.grad's result."""
    flat = grad.reshape(grad.shape[0], -1)
    if center == 0:
        return weight * flat.square().sum(1).mean()
    gap = flat.norm(2, dim=1) - center
    return weight * (gap.clamp(min=0) if one_sided else gap).square().mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(20))
def test_matches_reference_float64(device, seed):
    weight, center, one_sided = SETTINGS[seed % len(SETTINGS)]
    g = random_grad(seed, device)
    kwargs = dict(weight=weight, center=center, one_sided=one_sided, return_norms=True)
    penalty, norms = gradient_penalty(g, impl="ext", **kwargs)
    ref_penalty, ref_norms = gradient_penalty_reference(g, **kwargs)
    torch.testing.assert_close(penalty, ref_penalty, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(penalty, composite_penalty(g, weight, center, one_sided), rtol=1e-12, atol=1e-12)
    # First and second derivatives: d loss / d g, and d (v . d loss / d g) / d g, for
    # the penalty alone and with a gradient flowing into the norms too.
    v = torch.randn(g.shape, generator=torch.Generator().manual_seed(seed), dtype=g.dtype).to(device)
    up = torch.randn(norms.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=g.dtype).to(device)
    for norm_weight in (0.0, 1.0):
        loss = lambda fn: (lambda p, n: p + norm_weight * (n * up).sum())(*fn(g, **kwargs))
        got = loss(lambda g, **kw: gradient_penalty(g, impl="ext", **kw))
        want = loss(gradient_penalty_reference)
        (dg,) = torch.autograd.grad(got, g, create_graph=True)
        (ref_dg,) = torch.autograd.grad(want, g, create_graph=True)
        torch.testing.assert_close(dg, ref_dg, rtol=1e-10, atol=1e-12)
        (ddg,) = torch.autograd.grad((dg * v).sum(), g)
        (ref_ddg,) = torch.autograd.grad((ref_dg * v).sum(), g)
        torch.testing.assert_close(ddg, ref_ddg, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sample_size", [1, 4095, 4096, 4097, 3 * 4096 + 17, 50000])
def test_float32_many_chunks(device, sample_size):
    # Samples spanning several chunks of the kernels' reductions, in float32 against float64.
    gen = torch.Generator().manual_seed(sample_size)
    g = (torch.randn(3, sample_size, generator=gen) / sample_size ** 0.5).to(device).requires_grad_()
    penalty, norms = gradient_penalty(g, impl="ext", return_norms=True)
    ref_penalty, ref_norms = gradient_penalty_reference(g.double(), return_norms=True)
    assert penalty.dtype == torch.float32 and norms.dtype == torch.float32
    torch.testing.assert_close(norms.double(), ref_norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(penalty.double(), ref_penalty, rtol=1e-4, atol=1e-5)
    (dg,) = torch.autograd.grad(penalty, g)
    (ref_dg,) = torch.autograd.grad(ref_penalty, g)
    torch.testing.assert_close(dg.double(), ref_dg.double(), rtol=1e-4, atol=1e-6)


def mlp_critic(dtype, in_features):
    return nn.Sequential(nn.Linear(in_features, 16), nn.LeakyReLU(0.2), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1)).to(dtype)


def conv_critic(dtype, channels, bias):
    return nn.Sequential(nn.Conv2d(channels, 6, 3, 2, 1, bias=bias), nn.LeakyReLU(0.2),
                         nn.Conv2d(6, 8, 3, 2, 1, bias=bias), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.LazyLinear(1, bias=bias)).to(dtype)


CRITICS = ["mlp", "conv-bias", "conv-no-bias"]


def make_critic_case(name, seed, device):
    torch.manual_seed(seed)
    if name == "mlp":
        shape = (5, 7)
        critic = mlp_critic(torch.float64, 7)
    else:
        shape = (4, 3, 9, 8)
        critic = conv_critic(torch.float64, 3, bias=name == "conv-bias")
        critic(torch.zeros(1, *shape[1:], dtype=torch.float64))  # materialise the lazy layer
    critic = critic.to(device)
    gen = torch.Generator().manual_seed(seed)
    real = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    fake = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    eps = torch.rand(shape[0], generator=gen, dtype=torch.float64).to(device)
    return critic, real, fake, eps


def composite_critic_penalty(critic, real, fake, eps, kind, weight, center, one_sided):
    """The WGAN-GP / R1 / R2 penalty as public GAN code writes it."""
    if kind == "wgan-gp":
        e = eps.reshape([-1] + [1] * (real.dim() - 1))
        x = (e * real + (1 - e) * fake).requires_grad_()
    else:
        x = (real if kind == "r1" else fake).clone().requires_grad_()
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    if kind != "wgan-gp":
        return weight / 2 * g.flatten(1).square().sum(1).mean()
    gap = g.flatten(1).norm(2, dim=1) - center
    return weight * (gap.clamp(min=0) if one_sided else gap).square().mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("critic_name", CRITICS)
@pytest.mark.parametrize("kind,one_sided", [("wgan-gp", False), ("wgan-gp", True), ("r1", False), ("r2", False)])
def test_critic_parameter_gradients(device, critic_name, kind, one_sided):
    # The penalty's gradient with respect to the critic's parameters runs through
    # the double backward of the critic and the penalty ops' backward ops.
    critic, real, fake, eps = make_critic_case(critic_name, 3, device)
    center = 0.8 if one_sided else 1.0  # one-sided with some samples on each side
    got = losses.gradient_penalty(critic, real, fake, kind=kind, weight=7.0, center=center,
                                  one_sided=one_sided, eps=eps, impl="ext")
    want = composite_critic_penalty(critic, real, fake, eps, kind, 7.0, center, one_sided)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)
    params = list(critic.parameters())
    # The last bias never reaches the input gradient: both give None there.
    got_grads = torch.autograd.grad(got, params, allow_unused=True)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    assert [a is None for a in got_grads] == [b is None for b in want_grads]
    assert sum(a is not None for a in got_grads) >= len(params) - 1
    for a, b in zip(got_grads, want_grads):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(8))
def test_interpolate_matches_reference(device, seed):
    g = random_grad(seed, device)
    real, fake = g.detach().clone().requires_grad_(), torch.randn_like(g).requires_grad_()
    eps = torch.rand(g.shape[0], dtype=g.dtype, device=device, requires_grad=True)
    out = gradient_penalty_interpolate(real, fake, eps, impl="ext")
    ref = gradient_penalty_interpolate_reference(real, fake, eps)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-14)
    up = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (real, fake, eps), up), torch.autograd.grad(ref, (real, fake, eps), up)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # eps may also come shaped for broadcasting.
    eps_b = eps.detach().reshape([-1] + [1] * (g.dim() - 1))
    torch.testing.assert_close(gradient_penalty_interpolate(real, fake, eps_b, impl="ext"), ref)


@requires_ext
@pytest.mark.parametrize("weight,center,one_sided", SETTINGS)
def test_gradcheck_and_gradgradcheck(weight, center, one_sided):
    g = random_grad(7, "cpu")
    kwargs = dict(weight=weight, center=center, one_sided=one_sided, impl="ext")
    assert torch.autograd.gradcheck(lambda g: gradient_penalty(g, **kwargs), (g,))
    assert torch.autograd.gradgradcheck(lambda g: gradient_penalty(g, **kwargs), (g,))
    with_norms = lambda g: gradient_penalty(g, return_norms=True, **kwargs)
    assert torch.autograd.gradcheck(with_norms, (g,))
    assert torch.autograd.gradgradcheck(with_norms, (g,))
    # The backward op on its own, with independent (not ||g||) norms: its partial derivatives.
    gen = torch.Generator().manual_seed(1)
    grad_penalty = torch.randn((), generator=gen, dtype=torch.float64).requires_grad_()
    grad_norms = torch.randn(g.shape[0], generator=gen, dtype=torch.float64).requires_grad_()
    norms = (torch.rand(g.shape[0], generator=gen, dtype=torch.float64) * 3 + 0.05).requires_grad_()
    backward = lambda gp, gn, g, n: torch.ops.genfast.gradient_penalty_backward(gp, gn, g, n, weight, center, one_sided)
    assert torch.autograd.gradcheck(backward, (grad_penalty, grad_norms, g, norms))
    assert torch.autograd.gradgradcheck(backward, (grad_penalty, grad_norms, g, norms))


@requires_ext
def test_interpolate_gradcheck_and_gradgradcheck():
    gen = torch.Generator().manual_seed(2)
    real, fake, grad_out = (torch.randn(3, 2, 5, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3))
    eps = torch.rand(3, generator=gen, dtype=torch.float64).requires_grad_()
    fn = lambda r, f, e: gradient_penalty_interpolate(r, f, e, impl="ext")
    assert torch.autograd.gradcheck(fn, (real, fake, eps))
    assert torch.autograd.gradgradcheck(fn, (real, fake, eps))
    backward = torch.ops.genfast.gradient_penalty_interpolate_backward
    assert torch.autograd.gradcheck(backward, (grad_out, real, fake, eps))
    assert torch.autograd.gradgradcheck(backward, (grad_out, real, fake, eps))


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(4, 3, 5, generator=gen, dtype=dtype, requires_grad=True)
    for weight, center, one_sided in SETTINGS[:3]:
        torch.library.opcheck(torch.ops.genfast.gradient_penalty.default, (g, weight, center, one_sided))
        _, norms = torch.ops.genfast.gradient_penalty(g.detach(), weight, center, one_sided)
        grad_penalty = torch.tensor(0.7, dtype=dtype)
        for grad_norms in (None, torch.randn(4, generator=gen, dtype=norms.dtype)):
            torch.library.opcheck(torch.ops.genfast.gradient_penalty_backward.default,
                                  (grad_penalty, grad_norms, g.detach(), norms, weight, center, one_sided))
    real, fake = torch.randn(4, 6, generator=gen, dtype=dtype), torch.randn(4, 6, generator=gen, dtype=dtype)
    eps = torch.rand(4, generator=gen, dtype=dtype)
    torch.library.opcheck(torch.ops.genfast.gradient_penalty_interpolate.default,
                          (real.requires_grad_(), fake.requires_grad_(), eps.requires_grad_()))
    torch.library.opcheck(torch.ops.genfast.gradient_penalty_interpolate_backward.default,
                          (torch.randn(4, 6, generator=gen, dtype=dtype), real.detach(), fake.detach(), eps.detach()))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    real, fake = torch.randn(6, 3, 4, 4, generator=gen), torch.randn(6, 3, 4, 4, generator=gen)
    eps = torch.rand(6, generator=gen)
    g = torch.randn(6, 3, 4, 4, generator=gen, requires_grad=True)

    @torch.compile(fullgraph=True)
    def fused(g, real, fake, eps):
        x_hat = gradient_penalty_interpolate(real, fake, eps, impl="ext")
        return gradient_penalty(g * x_hat, weight=10.0, impl="ext")

    eager = gradient_penalty_reference(g * gradient_penalty_interpolate_reference(real, fake, eps), weight=10.0)
    compiled = fused(g, real, fake, eps)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(compiled, g)[0], torch.autograd.grad(eager, g)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center,one_sided", [(1.0, False), (1.0, True), (0.0, False)])
def test_zero_gradient_is_finite(device, center, one_sided):
    # Samples whose gradient is exactly 0 (a critic flat there): the norm has no
    # derivative at 0; genfast uses the subgradient 0, so all values are finite.
    g = torch.randn(4, 10, dtype=torch.float64)
    g[1] = 0
    g[3] = 0
    g = g.to(device).requires_grad_()
    weight = 3.0
    penalty, norms = gradient_penalty(g, weight=weight, center=center, one_sided=one_sided,
                                      return_norms=True, impl="ext")
    assert norms[1] == 0 and norms[3] == 0
    terms = (norms - center).clamp(min=0) ** 2 if one_sided else (norms - center) ** 2
    torch.testing.assert_close(penalty, weight * terms.mean())  # zero samples add center^2 (0 one-sided)
    (dg,) = torch.autograd.grad(penalty + norms.sum(), g, create_graph=True)
    assert torch.isfinite(dg).all() and (dg[1] == 0).all() and (dg[3] == 0).all()
    v = torch.randn_like(g)
    (ddg,) = torch.autograd.grad((dg * v).sum(), g)
    assert torch.isfinite(ddg).all()
    # With center 0 the term is ||g||^2: smooth, Hessian 2 * weight / N * I exactly at 0 too.
    if center == 0:
        torch.testing.assert_close(ddg[1], 2 * weight / 4 * v[1])
    else:
        assert (ddg[1] == 0).all()
    # An all-zero batch through a critic: a constant critic has zero input gradient.
    flat = nn.Linear(10, 1).to(device, torch.float64)
    nn.init.zeros_(flat.weight)
    out = losses.gradient_penalty(flat, g.detach(), torch.randn_like(g), impl="ext")
    torch.testing.assert_close(out, torch.tensor(10.0, dtype=torch.float64, device=device))
    grads = torch.autograd.grad(out, list(flat.parameters()), allow_unused=True)
    assert all(gr is None or torch.isfinite(gr).all() for gr in grads)


@requires_ext
def test_deterministic_across_thread_counts():
    # The kernels add per-chunk partial sums in a fixed order: bit-identical results
    # whatever the number of threads.
    g = torch.randn(5, 3 * 4096 + 100, generator=torch.Generator().manual_seed(5)).requires_grad_()
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            penalty, norms = gradient_penalty(g, impl="ext", return_norms=True)
            (dg,) = torch.autograd.grad(penalty, g)
            results.append((penalty, norms, dg))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_repeat(device):
    g = random_grad(50, device, torch.float32, max_sample=20000)
    runs = []
    for _ in range(2):
        penalty, norms = gradient_penalty(g, impl="ext", return_norms=True)
        runs.append((penalty, norms, *torch.autograd.grad(penalty, g)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    # Deterministic mode fills fresh allocations with NaN: an output element the
    # kernels forget to write shows up as NaN.
    for seed in range(4):
        g = random_grad(20 + seed, device, torch.float32, max_sample=9000)
        penalty, norms = gradient_penalty(g, impl="ext", return_norms=True)
        (dg,) = torch.autograd.grad(penalty + norms.sum(), g)
        real, fake = torch.randn_like(g), torch.randn_like(g)
        eps = torch.rand(g.shape[0], device=device, requires_grad=True)
        x = gradient_penalty_interpolate(real.requires_grad_(), fake.requires_grad_(), eps, impl="ext")
        grads = torch.autograd.grad(x, (real, fake, eps), torch.randn_like(x))
        for t in (penalty, norms, dg, x, *grads):
            assert torch.isfinite(t).all()
        torch.testing.assert_close(x, gradient_penalty_interpolate_reference(real, fake, eps))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cuda(device, dtype):
    if device == "cpu":
        pytest.skip("the CPU kernels are float32/float64 only; half precision runs the reference there")
    g = random_grad(30, device, torch.float32).detach().to(dtype).requires_grad_()
    penalty, norms = gradient_penalty(g, impl="ext", return_norms=True)
    ref_penalty, ref_norms = gradient_penalty_reference(g.float(), return_norms=True)
    assert penalty.dtype == dtype and norms.dtype == torch.float32  # norms reduced in float32
    torch.testing.assert_close(norms, ref_norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(penalty.float(), ref_penalty, rtol=1e-2, atol=1e-2)
    (dg,) = torch.autograd.grad(penalty, g)
    g32 = g.detach().float().requires_grad_()
    (ref_dg,) = torch.autograd.grad(gradient_penalty_reference(g32), g32)
    assert dg.dtype == dtype
    torch.testing.assert_close(dg.float(), ref_dg.float(), rtol=2e-2, atol=2e-2)
    real, fake = torch.randn_like(g), torch.randn_like(g)
    eps = torch.rand(g.shape[0], device=device, dtype=dtype)
    torch.testing.assert_close(gradient_penalty_interpolate(real, fake, eps, impl="ext").float(),
                               gradient_penalty_interpolate_reference(real.float(), fake.float(), eps.float()),
                               rtol=1e-2, atol=1e-2)


@requires_ext
def test_non_contiguous_input():
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(5, 7, 3, generator=gen).transpose(1, 2)  # (5, 3, 7), strided
    cl = torch.randn(4, 3, 6, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    for t in (g, cl, torch.randn(9, 8, generator=gen)[::2]):
        assert not t.is_contiguous()
        t = t.requires_grad_()
        penalty = gradient_penalty(t, impl="ext")
        ref = gradient_penalty_reference(t)
        torch.testing.assert_close(penalty, ref)
        torch.testing.assert_close(torch.autograd.grad(penalty, t)[0], torch.autograd.grad(ref, t)[0])
        other = torch.randn(t.shape, generator=gen)
        eps = torch.rand(t.shape[0], generator=gen)
        torch.testing.assert_close(gradient_penalty_interpolate(t, other, eps, impl="ext"),
                                   gradient_penalty_interpolate_reference(t, other, eps))


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(grad=torch.randn(())), ValueError, "batch dimension"),
    (dict(grad=torch.randn(0, 3)), ValueError, "must not be empty"),
    (dict(grad=torch.randn(3, 0)), ValueError, "must not be empty"),
    (dict(grad=torch.ones(3, 2, dtype=torch.long)), TypeError, "floating point"),
    (dict(grad=[1.0, 2.0]), TypeError, "must be a tensor"),
    (dict(weight=float("nan")), ValueError, "weight must be a finite number"),
    (dict(center=-1.0), ValueError, "center must be non-negative"),
    (dict(center=float("inf")), ValueError, "center must be a finite number"),
    (dict(one_sided=1), TypeError, "one_sided must be a bool"),
])
def test_bad_penalty_input(impl, kwargs, error, match):
    args = dict(grad=torch.randn(3, 4), weight=10.0, center=1.0, one_sided=False)
    args.update(kwargs)
    grad = args.pop("grad")
    with pytest.raises(error, match=match):
        gradient_penalty(grad, impl=impl, **args)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("make,error,match", [
    (lambda r, f, e: (r, f[:, :3], e), ValueError, "same shape"),
    (lambda r, f, e: (r, f, e[:3]), ValueError, "one value per sample"),
    (lambda r, f, e: (r, f, e.reshape(2, 2)), ValueError, "one value per sample"),
    (lambda r, f, e: (r, f.double(), e), TypeError, "fake dtype"),
    (lambda r, f, e: (r, f, e.double()), TypeError, "eps dtype"),
    (lambda r, f, e: (r, f.to("meta"), e), ValueError, "fake is on meta"),
    (lambda r, f, e: (r[:0], f[:0], e[:0]), ValueError, "must not be empty"),
    (lambda r, f, e: (r.long(), f.long(), e), TypeError, "floating point"),
])
def test_bad_interpolate_input(impl, make, error, match):
    real, fake, eps = make(torch.randn(4, 5), torch.randn(4, 5), torch.rand(4))
    with pytest.raises(error, match=match):
        gradient_penalty_interpolate(real, fake, eps, impl=impl)


@requires_ext
def test_bad_input_reaching_the_kernel():
    # Direct op calls (as from C++) are checked in the kernels too.
    ops = torch.ops.genfast
    g = torch.randn(3, 4)
    with pytest.raises(ValueError, match="grad must not be empty"):
        ops.gradient_penalty(torch.randn(0, 4), 10.0, 1.0, False)
    with pytest.raises(ValueError, match="center must be finite and non-negative"):
        ops.gradient_penalty(g, 10.0, -1.0, False)
    with pytest.raises(TypeError, match="float32 and float64"):
        ops.gradient_penalty(g.half(), 10.0, 1.0, False)
    with pytest.raises(ValueError, match=r"norms must have shape \(3\)"):
        ops.gradient_penalty_backward(torch.tensor(1.0), None, g, torch.ones(4), 10.0, 1.0, False)
    with pytest.raises(TypeError, match="norms must be Float"):
        ops.gradient_penalty_backward(torch.tensor(1.0), None, g, torch.ones(3, dtype=torch.float64), 10.0, 1.0, False)
    with pytest.raises(ValueError, match="grad_penalty must hold one value"):
        ops.gradient_penalty_backward(torch.ones(2), None, g, torch.ones(3), 10.0, 1.0, False)
    with pytest.raises(ValueError, match="real and fake must have the same shape"):
        ops.gradient_penalty_interpolate(g, torch.randn(3, 5), torch.rand(3))
    with pytest.raises(ValueError, match=r"eps must have shape \(3\)"):
        ops.gradient_penalty_interpolate(g, g, torch.rand(3, 1))
    with pytest.raises(ValueError, match="grad_output must have the shape of real"):
        ops.gradient_penalty_interpolate_backward(torch.randn(3, 5), g, g, torch.rand(3))


def test_reference_is_the_composite_expression():
    g = random_grad(40, "cpu")
    for weight, center, one_sided in SETTINGS:
        torch.testing.assert_close(gradient_penalty(g, weight=weight, center=center, one_sided=one_sided,
                                                    impl="reference"),
                                   composite_penalty(g, weight, center, one_sided))
