"""concat_elu: the fused op against torch's F.elu(torch.cat([x, -x], 1)) (the
baseline; genfast.ops.concat_elu_reference), forward alone and forward + backward, at
the activation sizes of the PixelCNN++ benchmark model (nr_filters 64 on 32x32 RGB,
batch 16, and its 16x16 stage) and of the Fashion-MNIST model (nr_filters 32 on
28x28, batch 32)."""
import pytest
import torch
from conftest import record, synced

from genfast.ops import concat_elu, concat_elu_reference

CASES = [(16, 64, 32), (16, 64, 16), (32, 32, 28)]  # (batch, channels, side)
IMPLS = {"genfast": lambda x: concat_elu(x, 1, impl="ext"), "torch": lambda x: concat_elu_reference(x, 1)}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-c{c[1]}-{c[2]}x{c[2]}")
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
def test_concat_elu(benchmark, bench_device, quick, impl, case, passes):
    if quick and case != CASES[0]:
        pytest.skip("not in --quick")
    batch, channels, side = case
    x = torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(0))
    x = x.to(bench_device).requires_grad_(passes == "fwd+bwd")
    fn = IMPLS[impl]
    torch.testing.assert_close(fn(x), concat_elu_reference(x, 1), rtol=1e-6, atol=1e-7)
    up = torch.randn_like(fn(x))
    step = (lambda: fn(x)) if passes == "fwd" else (lambda: torch.autograd.grad(fn(x), x, up))
    record(benchmark, f"concat_elu {passes} {batch}x{channels}x{side}x{side} fp32 {bench_device}", impl,
           baseline=impl == "torch")
    rounds = 100 if bench_device == "cuda" else (20 if quick else (50 if passes == "fwd" else 30))
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=3)
