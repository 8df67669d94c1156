"""softmax_cross_entropy: the kernels against F.cross_entropy (float64, random shapes,
layouts and reductions, the image models' transposed logits included), float32
accuracy, gradcheck, opcheck, torch.compile, poisoned outputs, no copy of the logits,
extreme logits and bad input."""
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, requires_ext

from genfast.ops import softmax_cross_entropy, softmax_cross_entropy_reference


def random_case(seed, device, dtype=torch.float64):
    """Logits (N, L, ...) in a random layout (contiguous, the models' transposed view,
    channels-last-like, or strided) and matching targets."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n, levels = rng.randint(1, 4), rng.choice([1, 2, 5, 17, 64, 256])
    spatial = [rng.randint(1, 9) for _ in range(rng.randint(0, 3))]
    layout = rng.choice(["contiguous", "models", "last", "strided"])
    if layout == "models" and spatial:  # (N, C, L, ...) memory seen as (N, L, C, ...)
        logits = torch.randn(n, spatial[0], levels, *spatial[1:], generator=gen, dtype=dtype).transpose(1, 2)
    elif layout == "last":  # classes innermost
        logits = torch.randn(n, *spatial, levels, generator=gen, dtype=dtype).movedim(-1, 1)
    elif layout == "strided":
        logits = torch.randn(n, levels, *spatial, 2, generator=gen, dtype=dtype)[..., 0]
    else:
        logits = torch.randn(n, levels, *spatial, generator=gen, dtype=dtype)
    logits = (3 * logits).to(device).requires_grad_()
    target = torch.randint(0, levels, (n, *spatial), generator=gen).to(device)
    return logits, target


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(24))
def test_matches_reference_float64(device, seed):
    logits, target = random_case(seed, device)
    reduction = ("mean", "sum", "none")[seed % 3]
    got = softmax_cross_entropy(logits, target, reduction, impl="ext")
    want = F.cross_entropy(logits, target, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    up = torch.randn_like(want)
    (grad,) = torch.autograd.grad(got, logits, up)
    (ref_grad,) = torch.autograd.grad(want, logits, up)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-11, atol=1e-13)
    if logits.is_contiguous():  # the gradient keeps the layout (strides of size-1 dims aside)
        assert [s for s, n in zip(grad.stride(), grad.shape) if n > 1] == \
               [s for s, n in zip(logits.stride(), logits.shape) if n > 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_float32_against_float64(device, seed):
    logits, target = random_case(40 + seed, device)
    x32 = logits.detach().float().requires_grad_()
    got = softmax_cross_entropy(x32, target, "none", impl="ext")
    assert got.dtype == torch.float32
    want = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)
    up = torch.rand_like(want)
    (grad,) = torch.autograd.grad(got, x32, up.float())
    (ref_grad,) = torch.autograd.grad(want, logits, up)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_model_logits_float32(device, channels):
    # A channels-last model's head (N, C * L, H, W) seen as (N, L, C, H, W): the classes
    # are contiguous per position, read in place by the vectorised row loops (RGB: memory
    # N, H, W, C, L, walked with the positions permuted); the gradient keeps the layout.
    out = torch.randn(2, channels * 256, 5, 7, device=device).mul(4).contiguous(memory_format=torch.channels_last)
    logits = out.view(2, channels, 256, 5, 7).transpose(1, 2).requires_grad_()
    target = torch.randint(0, 256, (2, channels, 5, 7), device=device)
    loss = softmax_cross_entropy(logits, target, "none", impl="ext")
    ref = F.cross_entropy(logits.double(), target, reduction="none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=2e-6)
    up = torch.rand_like(ref)
    (grad,) = torch.autograd.grad(loss, logits, up.float())
    (ref_grad,) = torch.autograd.grad(ref, logits, up)  # float64 math, cast to float32 at the leaf
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    assert [s for s, n in zip(grad.stride(), grad.shape) if n > 1] == \
           [s for s, n in zip(logits.stride(), logits.shape) if n > 1]
    if device == "cpu":
        torch.library.opcheck(torch.ops.genfast.softmax_cross_entropy.default, (logits, target))
        _, mx, ls = torch.ops.genfast.softmax_cross_entropy(logits.detach(), target)
        torch.library.opcheck(torch.ops.genfast.softmax_cross_entropy_backward.default,
                              (up.float(), logits.detach(), target, mx, ls))


@pytest.mark.parametrize("device", DEVICES)
def test_image_model_layout_is_read_in_place(device):
    # (N, L, C, H, W) as the models make it: the kernels read it without a copy and
    # the gradient comes back in the same layout.
    logits = torch.randn(2, 3, 256, 5, 7, device=device).transpose(1, 2).requires_grad_()
    target = torch.randint(0, 256, (2, 3, 5, 7), device=device)
    loss = softmax_cross_entropy(logits, target, impl="ext")
    torch.testing.assert_close(loss, F.cross_entropy(logits, target), rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.stride() == logits.stride()
    torch.testing.assert_close(grad, torch.autograd.grad(F.cross_entropy(logits, target), logits)[0],
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits(device, dtype):
    big = 1e4 if dtype == torch.float32 else 1e200
    logits = torch.tensor([[0.0, big, -big, 3.0], [-big, -big, -big, 0.0], [big, big, 0.0, -1.0],
                           [float("-inf"), 0.0, 1.0, 2.0]], dtype=dtype, device=device).requires_grad_()
    target = torch.tensor([1, 2, 0, 3], device=device)
    got = softmax_cross_entropy(logits, target, "none", impl="ext")
    want = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    (ref_grad,) = torch.autograd.grad(want.sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-6)
    nan = logits.detach().clone()
    nan[0, 2] = float("nan")
    assert torch.isnan(softmax_cross_entropy(nan, target, "none", impl="ext")[0])


@requires_ext
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(reduction):
    logits, target = random_case(5, "cpu")
    assert torch.autograd.gradcheck(lambda t: softmax_cross_entropy(t, target, reduction, impl="ext"),
                                    (logits,))


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    for seed in range(4):
        logits, target = random_case(60 + seed, "cpu", dtype)
        torch.library.opcheck(torch.ops.genfast.softmax_cross_entropy.default, (logits, target))
        loss, max, log_sum = torch.ops.genfast.softmax_cross_entropy(logits.detach(), target)
        torch.library.opcheck(torch.ops.genfast.softmax_cross_entropy_backward.default,
                              (torch.rand_like(loss), logits.detach(), target, max, log_sum))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    logits = torch.randn(2, 4 * 16, 3, 3, requires_grad=True)
    target = torch.randint(0, 16, (2, 4, 3, 3))

    @torch.compile(fullgraph=True)
    def f(out):
        n, _, h, w = out.shape
        return softmax_cross_entropy(out.view(n, 4, 16, h, w).transpose(1, 2), target, impl="ext")

    compiled = f(logits)
    eager = F.cross_entropy(logits.view(2, 4, 16, 3, 3).transpose(1, 2), target)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(compiled, logits)[0], torch.autograd.grad(eager, logits)[0],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    for seed in range(8):
        logits, target = random_case(80 + seed, device, torch.float32)
        loss = softmax_cross_entropy(logits, target, "none", impl="ext")
        (grad,) = torch.autograd.grad(loss, logits, torch.rand_like(loss))
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cuda(device, dtype):
    if device == "cpu":
        pytest.skip("the CPU kernels are float32/float64 only; half precision runs the reference there")
    logits = torch.randn(4, 256, 3, 8, 8, device=device, dtype=dtype).requires_grad_()
    target = torch.randint(0, 256, (4, 3, 8, 8), device=device)
    loss = softmax_cross_entropy(logits, target, impl="ext")
    assert loss.dtype == torch.float32
    want = F.cross_entropy(logits.float(), target)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad.float(), torch.autograd.grad(want, logits)[0].float(), rtol=2e-2, atol=1e-5)


def test_reference_is_cross_entropy():
    logits, target = random_case(9, "cpu")
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(softmax_cross_entropy_reference(logits, target, reduction),
                                   F.cross_entropy(logits, target, reduction=reduction), rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("make,error,match", [
    (lambda x, t: ([1.0], t), TypeError, "logits must be a tensor"),
    (lambda x, t: (x, t.float()), TypeError, "target must be an integer tensor"),
    (lambda x, t: (x.long(), t), TypeError, "logits must be floating point"),
    (lambda x, t: (x, t[:, :2]), ValueError, "target must have shape"),
    (lambda x, t: (x[0, 0], t), ValueError, "logits must be"),
    (lambda x, t: (x, t.to("meta")), ValueError, "target is on meta"),
])
def test_bad_input(impl, make, error, match):
    logits, target = make(torch.randn(2, 5, 3), torch.randint(0, 5, (2, 3)))
    with pytest.raises(error, match=match):
        softmax_cross_entropy(logits, target, impl=impl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [-1, 5])
def test_out_of_range_target(device, bad):
    target = torch.randint(0, 5, (2, 3), device=device)
    target[1, 2] = bad
    with pytest.raises(ValueError, match=r"target must be in \[0, 5\), got " + str(bad)):
        softmax_cross_entropy(torch.randn(2, 5, 3, device=device), target, impl="ext")


@requires_ext
def test_bad_input_reaching_the_kernel():
    ops = torch.ops.genfast
    x, t = torch.randn(2, 5, 3), torch.randint(0, 5, (2, 3))
    loss, mx, ls = ops.softmax_cross_entropy(x, t)
    with pytest.raises(TypeError, match="target must be int64"):
        ops.softmax_cross_entropy(x, t.int())
    with pytest.raises(ValueError, match=r"target must have shape \[2, 3\]"):
        ops.softmax_cross_entropy(x, t[:, :2])
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        ops.softmax_cross_entropy(x[0, 0], t[0])
    with pytest.raises(TypeError, match="supports float32 and float64"):
        ops.softmax_cross_entropy(x.half(), t)
    with pytest.raises(ValueError, match=r"target must be in \[0, 5\), got 7 at flat position 4"):
        ops.softmax_cross_entropy(x, torch.tensor([[0, 1, 2], [3, 7, 0]]))
    with pytest.raises(ValueError, match="log_sum must have target's shape"):
        ops.softmax_cross_entropy_backward(loss, x, t, mx, ls[:1])
    with pytest.raises(TypeError, match="grad_loss must be Float"):
        ops.softmax_cross_entropy_backward(loss.double(), x, t, mx, ls)
    with pytest.raises(ValueError, match=r"target must be in \[0, 5\)"):
        ops.softmax_cross_entropy_backward(loss, x, torch.full((2, 3), -2), mx, ls)
