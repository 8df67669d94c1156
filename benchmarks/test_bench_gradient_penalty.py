"""Gradient penalties: genfast's fused ops against what GAN code writes.

1. The penalty math given g = grad D(x_hat) (value and its gradient with respect to
   g, i.e. forward + backward), 1M-64M float32 elements in 64 samples: genfast vs
   the composite expression `(g.flatten(1).norm(2, dim=1) - 1) ** 2` (baseline) and
   the sum-of-squares form of the WGAN-GP paper's code; plus the "bandwidth floor",
   the same bytes moved by PyTorch's plainest kernels (one reduction over g, one
   scale of g into a fresh tensor), since the penalty must read g once and then
   read it again and write its gradient. extra_info holds the bytes each moves.
   On a GPU also the composite math written with cupy on g's memory (shared
   through DLPack; optional: pip install cupy-cuda13x).
2. A whole critic step of a DCGAN critic (no batch norm) at 32x32 and 64x64, batch
   64: WGAN-GP (critic loss + penalty, backward) and R1 (StyleGAN2's regularisation
   step: D(real), R1, backward), genfast.losses.critic_gradient_penalty vs the same step
   written as public code does (baseline). extra_info["peak_mb"]: the step's peak
   memory above its inputs (CPU: the profiler's allocation events; CUDA:
   max_memory_allocated).
"""
import pytest
import torch
import torch.nn as nn
from conftest import MiB, peak_memory_mb, record, synced

from genfast import losses
from genfast.ops import gradient_penalty

SIZES = [1 << 20, 1 << 22, 1 << 24, 1 << 26]  # elements of g
QUICK_SIZES = [1 << 20, 1 << 24]
BATCH = 64


def composite_norm(g):
    n = g.flatten(1).norm(2, dim=1)
    return torch.autograd.grad(10 * ((n - 1) ** 2).mean(), g)


def composite_sum_of_squares(g):
    n = torch.sqrt(g.flatten(1).square().sum(1) + 1e-12)
    return torch.autograd.grad(10 * ((n - 1) ** 2).mean(), g)


def fused(g):
    return torch.autograd.grad(gradient_penalty(g, weight=10.0, impl="ext"), g)


def bandwidth_floor(g):
    flat = g.detach().flatten(1)
    scale = flat.sum(1)  # one read of g
    return torch.mul(flat, scale[:, None])  # a second read, one write into a fresh tensor


def cupy_composite(g):
    """The penalty's value and gradient written by hand with cupy, on g's memory."""
    import cupy as cp

    gc = cp.from_dlpack(g.detach()).reshape(g.shape[0], -1)
    norm = cp.sqrt((gc * gc).sum(1))
    value = 10 * ((norm - 1) ** 2).mean()  # what a cupy user's loss would report
    grad = (20 / g.shape[0]) * ((norm - 1) / norm)[:, None] * gc
    return torch.from_dlpack(grad.reshape(g.shape)), torch.from_dlpack(cp.asarray(value))


PENALTY_IMPLS = {
    "genfast": (fused, 3),  # (function, passes over g: reads + writes)
    "composite norm": (composite_norm, None),
    "composite sum of squares": (composite_sum_of_squares, None),
    "bandwidth floor (sum + scale)": (bandwidth_floor, 3),
    "cupy composite (DLPack)": (cupy_composite, None),
}


@pytest.mark.parametrize("impl", list(PENALTY_IMPLS))
@pytest.mark.parametrize("numel", SIZES, ids=lambda n: f"{n // MiB}M")
def test_penalty_math(benchmark, bench_device, quick, impl, numel):
    if quick and numel not in QUICK_SIZES:
        pytest.skip("not in --quick")
    if impl.startswith("cupy"):
        if bench_device != "cuda":
            pytest.skip("cupy is the GPU peer (CUDA only)")
        pytest.importorskip("cupy", reason="cupy is not installed (optional: pip install cupy-cuda13x)")
    g = torch.randn(BATCH, numel // BATCH, generator=torch.Generator().manual_seed(0)).to(bench_device)
    g = (g / g.norm(dim=1, keepdim=True) * 1.3).requires_grad_()
    fn, passes = PENALTY_IMPLS[impl]
    if impl != "bandwidth floor (sum + scale)":  # every peer computes the same gradient
        torch.testing.assert_close(fn(g)[0], composite_norm(g)[0], rtol=1e-3, atol=1e-9)
    record(benchmark, f"penalty fwd+bwd {numel // MiB}M fp32 {bench_device}", impl,
           baseline=impl == "composite norm")
    if passes is not None:
        benchmark.extra_info["bytes_moved"] = passes * numel * 4
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    rounds = 30 if bench_device == "cuda" else (3 if quick else 7)
    benchmark.pedantic(synced(lambda: fn(g), bench_device), rounds=rounds, warmup_rounds=1)
    if passes is not None and benchmark.stats is not None:
        benchmark.extra_info["GB/s"] = round(passes * numel * 4 / benchmark.stats.stats.median / 1e9, 1)


def dcgan_critic(resolution):
    """DCGAN's discriminator without batch norm (WGAN-GP): 4x4 stride-2 convolutions
    halving the image down to 4x4, then a 4x4 convolution to one score."""
    layers, channels = [], 3
    for i in range({32: 3, 64: 4}[resolution]):
        out = 64 * 2 ** i
        layers += [nn.Conv2d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = out
    return nn.Sequential(*layers, nn.Conv2d(channels, 1, 4), nn.Flatten())


def reference_penalty(critic, real, fake, eps, kind):
    """The penalty as public GAN code writes it."""
    if kind == "wgan-gp":
        e = eps.view(-1, 1, 1, 1)
        x = (e * real + (1 - e) * fake).requires_grad_(True)
    else:
        x = real.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    if kind == "wgan-gp":
        return 10 * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    return 10 / 2 * g.square().sum([1, 2, 3]).mean()


def genfast_penalty(critic, real, fake, eps, kind):
    return losses.critic_gradient_penalty(critic, real, fake, kind=kind, weight=10.0, eps=eps, impl="ext")


def critic_step(critic, real, fake, eps, kind, penalty_fn):
    critic.zero_grad(set_to_none=True)
    if kind == "wgan-gp":
        scores = critic(torch.cat([real, fake]))
        loss = scores[len(real):].mean() - scores[:len(real)].mean() + penalty_fn(critic, real, fake, eps, kind)
    else:  # StyleGAN2's R1 step: the penalty alone, on its own forward pass
        loss = penalty_fn(critic, real, fake, eps, kind)
    loss.backward()


STEP_IMPLS = {"genfast": genfast_penalty, "reference": reference_penalty}


@pytest.mark.parametrize("impl", list(STEP_IMPLS))
@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
@pytest.mark.parametrize("resolution", [32, 64])
def test_critic_step(benchmark, bench_device, quick, impl, kind, resolution):
    if quick and resolution != 32:
        pytest.skip("not in --quick")
    torch.manual_seed(0)
    critic = dcgan_critic(resolution).to(bench_device)
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(BATCH, 3, resolution, resolution, generator=gen).to(bench_device)
    fake = torch.randn(BATCH, 3, resolution, resolution, generator=gen).to(bench_device)
    eps = torch.rand(BATCH, generator=gen).to(bench_device)
    penalty_fn = STEP_IMPLS[impl]
    torch.testing.assert_close(penalty_fn(critic, real, fake, eps, kind),
                               reference_penalty(critic, real, fake, eps, kind), rtol=1e-4, atol=1e-5)
    step = lambda: critic_step(critic, real, fake, eps, kind, penalty_fn)
    step()
    record(benchmark, f"critic step {kind} DCGAN {resolution}x{resolution} b{BATCH} fp32 {bench_device}", impl,
           baseline=impl == "reference")
    critic.zero_grad(set_to_none=True)  # the step allocates its gradients afresh inside the measurement
    benchmark.extra_info["peak_mb"] = round(peak_memory_mb(step, bench_device), 2)
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    rounds = 30 if bench_device == "cuda" else (3 if quick else 5)
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=1)
