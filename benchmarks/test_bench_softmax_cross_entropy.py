"""softmax_cross_entropy: the output head's loss, forward + backward, against
F.cross_entropy on the same logits (the baseline; what the models ran), at the
image models' layout: logits (N, 256, C, H, W), a transposed view of the last
layer's (N, C * 256, H, W) output, for 28x28 grey (batch 16) and 32x32 RGB (batch 8).
extra_info["peak_mb"]: memory allocated by the loss and its backward above the
logits (CPU: the profiler's allocation events; CUDA: max_memory_allocated); the
logits themselves are 12.25 MiB (grey) and 24 MiB (RGB)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import peak_memory_mb, record, synced

from genfast.ops import softmax_cross_entropy

CASES = [(16, 1, 28), (8, 3, 32)]  # (batch, channels, side)
IMPLS = {"genfast": lambda x, t: softmax_cross_entropy(x, t, impl="ext"), "F.cross_entropy": F.cross_entropy}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-{c[1]}x{c[2]}x{c[2]}")
def test_loss_forward_backward(benchmark, bench_device, quick, impl, case):
    if quick and case != CASES[0]:
        pytest.skip("not in --quick")
    batch, channels, side = case
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(batch, channels * 256, side, side, generator=gen).to(bench_device).requires_grad_()
    target = torch.randint(0, 256, (batch, channels, side, side), generator=gen).to(bench_device)
    fn = IMPLS[impl]

    def step():
        logits = out.view(batch, channels, 256, side, side).transpose(1, 2)
        torch.autograd.grad(fn(logits, target), out)

    logits = out.view(batch, channels, 256, side, side).transpose(1, 2)
    torch.testing.assert_close(fn(logits, target), F.cross_entropy(logits, target), rtol=1e-5, atol=1e-6)
    record(benchmark, f"loss fwd+bwd b{batch} 256x{channels}x{side}x{side} fp32 {bench_device}", impl,
           baseline=impl == "F.cross_entropy")
    step()
    benchmark.extra_info["peak_mb"] = round(peak_memory_mb(step, bench_device), 2)
    rounds = 50 if bench_device == "cuda" else (10 if quick else 20)
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=2)
