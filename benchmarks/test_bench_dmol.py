"""The PixelCNN++ loss: genfast.ops.dmol_loss (fused, one pass per pixel forward and
one backward) against the composite formula of openai/pixel-cnn and its PyTorch ports
(dmol_loss_reference, baseline), forward + backward with respect to the params, at
the issue's size: B=16 RGB 32x32, 10 mixtures (params 16 x 100 x 32 x 32), float32.
Also one fused draw per pixel (dmol_sample) against its reference.

extra_info["peak_mb"]: the peak memory the step allocates above its inputs (CPU:
the profiler's allocation events, summed in time order; CUDA: max_memory_allocated),
gradient included (params' size, 6.25 MiB here, for both), and "peak_mb_beyond_grad"
the same less the gradient.
"""
import pytest
import torch
from conftest import MiB, peak_memory_mb, record, synced

from genfast.ops import dmol_loss, dmol_loss_reference, dmol_num_params, dmol_sample, dmol_sample_reference

B, C, H, W, M = 16, 3, 32, 32, 10


def inputs(device):
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(B, dmol_num_params(C, M), H, W, generator=gen)
    params[:, M:].reshape(B, C, 3, M, H, W)[:, :, 1].uniform_(-5, 0, generator=gen)  # log-scales
    x = torch.randint(0, 256, (B, C, H, W), generator=gen)
    return params.to(device).requires_grad_(), x.to(device)


def fused(params, x):
    return torch.autograd.grad(dmol_loss(params, x, num_mixtures=M, impl="ext"), params)


def composite(params, x):
    return torch.autograd.grad(dmol_loss_reference(params, x, num_mixtures=M), params)


LOSS_IMPLS = {"genfast": fused, "composite formula": composite}


@pytest.mark.parametrize("impl", list(LOSS_IMPLS))
def test_dmol_loss_forward_backward(benchmark, bench_device, quick, impl):
    params, x = inputs(bench_device)
    fn = LOSS_IMPLS[impl]
    step = lambda: fn(params, x)
    record(benchmark, "dmol_loss fwd+bwd B=16 3x32x32 M=10 float32", impl, baseline=impl != "genfast")
    step()  # warm-up outside the memory measurement
    peak = peak_memory_mb(step, bench_device)
    benchmark.extra_info["peak_mb"] = round(peak, 2)
    benchmark.extra_info["peak_mb_beyond_grad"] = round(peak - params.numel() * 4 / MiB, 2)
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    rounds = 50 if bench_device == "cuda" else (5 if quick else 10)
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=1)


SAMPLE_IMPLS = {
    "genfast": lambda p, u: dmol_sample(p, u, num_mixtures=M, impl="ext"),
    "reference": lambda p, u: dmol_sample_reference(p, u, num_mixtures=M),
}


@pytest.mark.parametrize("impl", list(SAMPLE_IMPLS))
def test_dmol_sample(benchmark, bench_device, impl):
    params, _ = inputs(bench_device)
    params = params.detach()
    u = torch.rand(B, C + 1, H, W, dtype=torch.float64, device=bench_device)
    fn = SAMPLE_IMPLS[impl]
    record(benchmark, "dmol_sample B=16 3x32x32 M=10 float32", impl, baseline=impl != "genfast")
    benchmark.pedantic(synced(lambda: fn(params, u), bench_device), rounds=10, warmup_rounds=1)
