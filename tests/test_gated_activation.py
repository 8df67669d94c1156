"""gated_activation: the kernels against the reference (float64, random shapes and
groups), float32 accuracy, gradcheck, opcheck, torch.compile, poisoned outputs,
extreme inputs and bad input."""
import random

import pytest
import torch
from conftest import DEVICES, assert_half_matches_float, requires_ext

from genfast.ops import gated_activation, gated_activation_reference


def random_input(seed, device, dtype=torch.float64):
    rng = random.Random(seed)
    groups = rng.choice([1, 1, 2, 3])
    channels = 2 * groups * rng.randint(1, 6)
    spatial = [rng.randint(1, 9) for _ in range(rng.randint(0, 3))]
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(rng.randint(1, 4), channels, *spatial, generator=gen, dtype=dtype)
    return x.to(device).requires_grad_(), groups


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(16))
def test_matches_reference_float64(device, seed):
    x, groups = random_input(seed, device)
    out = gated_activation(x, groups, impl="ext")
    ref = gated_activation_reference(x, groups)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    up = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, up)
    (ref_dx,) = torch.autograd.grad(ref, x, up)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_float32_against_float64(device, seed):
    # float32 on the CPU uses a polynomial exp/tanh (csrc/cpu/fast_math.h).
    x, groups = random_input(100 + seed, device)
    x32 = x.detach().float().requires_grad_()
    out = gated_activation(x32, groups, impl="ext")
    up = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x32, up)
    ref = gated_activation_reference(x, groups)
    (ref_dx,) = torch.autograd.grad(ref, x, up.double())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=5e-7)
    torch.testing.assert_close(dx.double(), ref_dx, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_reference_is_the_blockwise_gate(groups):
    # The layout written out block by block: block g is x[:, 2gC' : 2(g+1)C'], a then b.
    x = torch.randn(2, 2 * groups * 4, 3, 5, dtype=torch.float64)
    per = 4
    want = torch.cat([torch.tanh(x[:, 2 * g * per:(2 * g + 1) * per]) *
                      torch.sigmoid(x[:, (2 * g + 1) * per:(2 * g + 2) * per]) for g in range(groups)], 1)
    torch.testing.assert_close(gated_activation_reference(x, groups), want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_values(device, dtype):
    big = torch.finfo(dtype).max
    values = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.05, -0.07, 20.0, -20.0, 100.0, -100.0, 1e4, -1e4,
                           big, -big, float("inf"), float("-inf")], dtype=dtype)
    a, b = torch.meshgrid(values, values, indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)])[None].to(device).requires_grad_()  # (1, 2, M)
    out = gated_activation(x, impl="ext")
    ref = gated_activation_reference(x.detach())
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-7)
    (dx,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(dx).all()
    nan = gated_activation(torch.tensor([[float("nan"), 1.0], [0.5, float("nan")]], dtype=dtype,
                                        device=device)[None].transpose(1, 2).contiguous(), impl="ext")
    assert torch.isnan(nan).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_large(device):
    x = torch.randn(3, 64, 17, 40, device=device)[:, :, :, ::2].requires_grad_()  # strided
    out = gated_activation(x, 2, impl="ext")
    ref = gated_activation_reference(x, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    up = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, up)[0], torch.autograd.grad(ref, x, up)[0],
                               rtol=1e-5, atol=1e-6)


@requires_ext
@pytest.mark.parametrize("groups", [1, 3])
def test_gradcheck(groups):
    x = torch.randn(2, 6 * groups, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gated_activation(t, groups, impl="ext"), (x,))


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 3, 5, generator=gen, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.genfast.gated_activation.default, (x, 2))
    torch.library.opcheck(torch.ops.genfast.gated_activation.default, (x[:, :, 0], 1))
    grad = torch.randn(2, 4, 3, 5, generator=gen, dtype=dtype)
    torch.library.opcheck(torch.ops.genfast.gated_activation_backward.default, (grad, x.detach(), 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [1, 3])
def test_channels_last_is_read_in_place(device, dtype, groups, poisoned_allocations):
    # A channels-last x is read in place (one pixel's group blocks); the output and the
    # gradient come back channels-last (the layout rule of csrc/layout.h).
    gen = torch.Generator().manual_seed(groups)
    x = (3 * torch.randn(2, 2 * groups * 5, 4, 7, generator=gen, dtype=torch.float64)).to(device)
    cl = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = gated_activation(cl, groups, impl="ext")
    ref = gated_activation_reference(x.requires_grad_(), groups)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.double(), ref, **tol)
    up = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    (grad,) = torch.autograd.grad(out, cl, up.to(dtype).contiguous(memory_format=torch.channels_last))
    (ref_grad,) = torch.autograd.grad(ref, x, up)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)
    if device == "cpu":
        torch.library.opcheck(torch.ops.genfast.gated_activation.default, (cl, groups))
        torch.library.opcheck(torch.ops.genfast.gated_activation_backward.default,
                              (up.to(dtype).contiguous(memory_format=torch.channels_last), cl.detach(), groups))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x = torch.randn(2, 8, 5, 5, requires_grad=True)

    @torch.compile(fullgraph=True)
    def f(t):
        return gated_activation(t * 2, 2, impl="ext").sum()

    compiled = f(x)
    eager = gated_activation_reference(x * 2, 2).sum()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(compiled, x)[0], torch.autograd.grad(eager, x)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    for seed in range(6):
        x, groups = random_input(200 + seed, device, torch.float32)
        out = gated_activation(x, groups, impl="ext")
        (dx,) = torch.autograd.grad(out, x, torch.randn_like(out))
        assert torch.isfinite(out).all() and torch.isfinite(dx).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cuda(device, dtype):
    if device == "cpu":
        pytest.skip("the CPU kernels are float32/float64 only; half precision runs the reference there")
    x = torch.randn(4, 16, 9, 9, device=device, dtype=dtype, requires_grad=True)
    assert_half_matches_float(lambda t: gated_activation(t, 2, impl="ext"),
                              lambda t: gated_activation_reference(t, 2), x)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("x,groups,error,match", [
    ([1.0, 2.0], 1, TypeError, "x must be a tensor"),
    (torch.ones(2, 4, dtype=torch.long), 1, TypeError, "floating point"),
    (torch.ones(2, 5), 1, ValueError, "multiple of 2 \\* groups"),
    (torch.ones(2, 4), 3, ValueError, "multiple of 2 \\* groups"),
    (torch.ones(4), 1, ValueError, "multiple of 2 \\* groups"),
    (torch.ones(2, 4), 0, ValueError, "groups must be a positive int"),
    (torch.ones(2, 4), True, ValueError, "groups must be a positive int"),
])
def test_bad_input(impl, x, groups, error, match):
    with pytest.raises(error, match=match):
        gated_activation(x, groups, impl=impl)


@requires_ext
def test_bad_input_reaching_the_kernel():
    ops = torch.ops.genfast
    with pytest.raises(ValueError, match=r"channels \(5\) must be a multiple of 2 \* groups"):
        ops.gated_activation(torch.ones(2, 5), 1)
    with pytest.raises(ValueError, match="groups must be positive"):
        ops.gated_activation(torch.ones(2, 4), 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ops.gated_activation(torch.ones(4), 1)
    with pytest.raises(TypeError, match="floating point"):
        ops.gated_activation(torch.ones(2, 4, dtype=torch.long), 1)
    with pytest.raises(TypeError, match="supports float32 and float64"):
        ops.gated_activation(torch.ones(2, 4, dtype=torch.half), 1)
    with pytest.raises(ValueError, match=r"grad_output must have shape \[2, 2\]"):
        ops.gated_activation_backward(torch.ones(2, 4), torch.ones(2, 4), 1)
    with pytest.raises(TypeError, match="grad_output must have x's dtype"):
        ops.gated_activation_backward(torch.ones(2, 2, dtype=torch.float64), torch.ones(2, 4), 1)
