"""concat_elu: what is specific to it (the common contract: tests/test_op_contract.py,
with random_input below): every dim, float32 and half accuracy, extreme values,
strided input, gradcheck and bad input in the wrapper and the C++ op."""
import random

import pytest
import torch
from conftest import DEVICES, assert_half_matches_float, requires_ext

from genfast.ops import concat_elu, concat_elu_reference


def random_input(seed, device, dtype=torch.float64):
    """x of 1 to 4 dimensions (some of size 1) and a dim, negative half the time."""
    rng = random.Random(seed)
    shape = [rng.choice([1, 2, 3, 5, 8]) for _ in range(rng.randint(1, 4))]
    dim = rng.randrange(len(shape)) - (len(shape) if rng.random() < 0.5 else 0)
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(*shape, generator=gen, dtype=dtype)
    return x.to(device).requires_grad_(), dim


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1, -4])
def test_every_dim(device, dim):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    out = concat_elu(x, dim, impl="ext")
    ref = concat_elu_reference(x, dim)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-15)
    up = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, up)[0], torch.autograd.grad(ref, x, up)[0],
                               rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_against_float64(device):
    # float32 on the CPU uses a polynomial expm1: values within 3e-7 of float64 (torch float32: 1.2e-7).
    x = torch.cat([torch.randn(4000, dtype=torch.float64) * s for s in (1e-6, 1e-2, 0.3, 3, 30)])
    x = x.reshape(5, 4000).to(device).requires_grad_()
    x32 = x.detach().float().requires_grad_()
    out = concat_elu(x32, 0, impl="ext")
    ref = concat_elu_reference(x, 0)
    torch.testing.assert_close(out.double(), ref, rtol=3e-7, atol=1e-30)
    up = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x32, up.float())[0].double(),
                               torch.autograd.grad(ref, x, up)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_values(device, dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 0.34, -0.36, 20.0, -20.0, 100.0, -100.0, big, -big,
                      float("inf"), float("-inf"), float("nan")], dtype=dtype, device=device)
    out = concat_elu(x, 0, impl="ext")
    torch.testing.assert_close(out, concat_elu_reference(x, 0), rtol=4e-7, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(out[:2]), torch.tensor([False, True], device=device))  # elu(+-0) = +-0
    finite = x[:-1].clone().requires_grad_()  # NaN has a NaN gradient
    assert torch.isfinite(torch.autograd.grad(concat_elu(finite, 0, impl="ext").sum(), finite)[0]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_strided_input(device):
    x = torch.randn(3, 16, 9, 20, device=device)[:, ::2, :, ::3].requires_grad_()
    out = concat_elu(x, 1, impl="ext")
    ref = concat_elu_reference(x, 1)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    up = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, up)[0], torch.autograd.grad(ref, x, up)[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [1, -1, 0])
def test_permuted_layouts_are_kept(device, dim):
    # A channels-last or permuted x runs the kernel on its contiguous permutation (no
    # copy) and the result keeps x's layout (for channels-last: torch.cat's).
    for x in (torch.randn(2, 6, 5, 7, dtype=torch.float64, device=device).contiguous(memory_format=torch.channels_last),
              torch.randn(4, 5, 3, 2, dtype=torch.float64, device=device).permute(3, 1, 0, 2)):
        x.requires_grad_()
        out = concat_elu(x, dim, impl="ext")
        ref = concat_elu_reference(x, dim)
        torch.testing.assert_close(out, ref, rtol=1e-14, atol=1e-15)
        order = sorted(range(4), key=lambda d: -x.stride(d))
        assert out.permute(order).is_contiguous()
        if x.is_contiguous(memory_format=torch.channels_last):
            assert out.stride() == ref.stride()
        up = torch.randn_like(out)
        grad = torch.autograd.grad(out, x, up)[0]
        torch.testing.assert_close(grad, torch.autograd.grad(ref, x, up)[0], rtol=1e-14, atol=1e-15)


@requires_ext
def test_gradcheck():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: concat_elu(t, -1, impl="ext"), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cuda(device, dtype):
    if device == "cpu":
        pytest.skip("the CPU kernels are float32/float64 only; half precision runs the reference there")
    x = torch.randn(4, 16, 9, 9, device=device, dtype=dtype, requires_grad=True)
    assert_half_matches_float(lambda t: concat_elu(t, 1, impl="ext"), lambda t: concat_elu_reference(t, 1), x)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("x,dim,error,match", [
    ([1.0, 2.0], 0, TypeError, "x must be a tensor"),
    (torch.ones(2, 4, dtype=torch.long), 1, TypeError, "floating point"),
    (torch.tensor(1.0), 0, ValueError, "at least 1 dimension"),
    (torch.ones(2, 4), 2, ValueError, r"dim must be an int in \[-2, 2\)"),
    (torch.ones(2, 4), -3, ValueError, "dim must be an int"),
    (torch.ones(2, 4), True, ValueError, "dim must be an int"),
])
def test_bad_input(impl, x, dim, error, match):
    with pytest.raises(error, match=match):
        concat_elu(x, dim, impl=impl)


@requires_ext
def test_bad_input_reaching_the_kernel():
    ops = torch.ops.genfast
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ops.concat_elu(torch.tensor(1.0), 0)
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 2\)"):
        ops.concat_elu(torch.ones(2, 4), 2)
    with pytest.raises(TypeError, match="x must be floating point, got int64"):
        ops.concat_elu(torch.ones(2, 4, dtype=torch.long), 1)
    with pytest.raises(TypeError, match="x must be float32 or float64, got float16"):
        ops.concat_elu(torch.ones(2, 4, dtype=torch.half), 1)
    with pytest.raises(ValueError, match=r"grad_output must have shape \[2, 8\]"):
        ops.concat_elu_backward(torch.ones(2, 4), torch.ones(2, 4), 1)
    with pytest.raises(TypeError, match="grad_output must have x's dtype float32, got float64"):
        ops.concat_elu_backward(torch.ones(2, 8, dtype=torch.float64), torch.ones(2, 4), 1)
