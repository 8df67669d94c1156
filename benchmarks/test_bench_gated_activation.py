"""gated_activation: the fused gate tanh(a) * sigmoid(b) against the composite PyTorch
expression the models wrote (genfast.ops.gated_activation_reference: view, tanh,
sigmoid, product; the baseline), forward + backward, at the pre-activation sizes of
the benchmark models: Gated PixelCNN h64 on 28x28 grey (batch 16, one colour group)
and h96 on 32x32 RGB (batch 8, three colour groups)."""
import pytest
import torch
from conftest import record, synced

from genfast.ops import gated_activation, gated_activation_reference

CASES = [(16, 128, 28, 1), (8, 192, 32, 3)]  # (batch, 2 * hidden, side, groups)
IMPLS = {"genfast": lambda x, g: gated_activation(x, g, impl="ext"), "composite": gated_activation_reference}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-c{c[1]}-{c[2]}x{c[2]}-g{c[3]}")
def test_gate_forward_backward(benchmark, bench_device, quick, impl, case):
    if quick and case != CASES[0]:
        pytest.skip("not in --quick")
    batch, channels, side, groups = case
    x = torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(0))
    x = x.to(bench_device).requires_grad_()
    fn = IMPLS[impl]
    up = torch.randn_like(fn(x, groups))
    torch.testing.assert_close(fn(x, groups), gated_activation_reference(x, groups), rtol=1e-5, atol=1e-6)

    def step():
        torch.autograd.grad(fn(x, groups), x, up)

    record(benchmark, f"gate fwd+bwd {batch}x{channels}x{side}x{side} groups {groups} fp32 {bench_device}",
           impl, baseline=impl == "composite")
    rounds = 50 if bench_device == "cuda" else (10 if quick else 20)
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=2)
