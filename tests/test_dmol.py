"""dmol_loss and dmol_sample: kernels against the composite formula (float64 values
and gradients on random params with extreme log-scales and edge bins), normalisation
over all levels, float32 accuracy in the tails, gradcheck, opcheck, torch.compile,
poisoned outputs, samples equal to the reference and distributed as the loss says,
and bad input through Python and direct torch.ops calls."""
import itertools
import math

import pytest
import torch
from conftest import DEVICES, requires_ext

from genfast.ops import dmol_loss, dmol_loss_reference, dmol_num_params, dmol_sample, dmol_sample_reference


def random_params(seed, batch, channels, m, h, w, dtype=torch.float64, device="cpu", extreme=True):
    """Mixture params with means in [-1.3, 1.3], log-scales in [-9, 2] and, when
    extreme, some at -30 (clamped) and +30 (flat)."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(batch, dmol_num_params(channels, m), h, w, generator=gen, dtype=torch.float64)
    logits, rest = p[:, :m], p[:, m:].reshape(batch, channels, -1, m, h, w)
    logits.mul_(2)
    rest[:, :, 0].uniform_(-1.3, 1.3, generator=gen)
    rest[:, :, 1].uniform_(-9, 2, generator=gen)
    if extreme:
        pick = torch.rand(rest[:, :, 1].shape, generator=gen)
        rest[:, :, 1][pick < 0.05] = -30.0
        rest[:, :, 1][pick > 0.95] = 30.0
    if channels == 3:
        rest[:, :, 2].mul_(1.5)
    return p.to(dtype=dtype, device=device)


def random_images(seed, batch, channels, h, w, levels, device="cpu"):
    """Levels with about a quarter at each edge bin."""
    gen = torch.Generator().manual_seed(seed + 1000)
    x = torch.randint(0, levels, (batch, channels, h, w), generator=gen)
    pick = torch.rand(x.shape, generator=gen)
    x[pick < 0.25] = 0
    x[pick > 0.75] = levels - 1
    return x.to(device)


CASES = [  # (channels, mixtures, levels)
    (1, 1, 256), (1, 3, 256), (3, 1, 256), (3, 5, 256), (3, 2, 16), (1, 4, 2), (3, 3, 5),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels,m,levels", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_loss_and_grads_match_reference_float64(device, channels, m, levels, seed):
    params = random_params(seed, 3, channels, m, 5, 7, device=device).requires_grad_()
    x = random_images(seed, 3, channels, 5, 7, levels, device=device)
    got = dmol_loss(params, x, num_mixtures=m, levels=levels, reduction="none", impl="ext")
    want = dmol_loss_reference(params, x, num_mixtures=m, levels=levels, reduction="none")
    assert got.shape == (3, 5, 7) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    up = torch.randn(got.shape, generator=torch.Generator().manual_seed(seed), dtype=got.dtype).to(device)
    g_got, = torch.autograd.grad((got * up).sum(), params)
    g_want, = torch.autograd.grad((want * up).sum(), params)
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-10)
    assert (g_got[:, m:] != 0).any()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@requires_ext
def test_reductions(reduction):
    params = random_params(0, 2, 3, 2, 4, 4).requires_grad_()
    x = random_images(0, 2, 3, 4, 4, 256)
    got = dmol_loss(params, x, num_mixtures=2, reduction=reduction, impl="ext")
    per_pixel = dmol_loss(params, x, num_mixtures=2, reduction="none", impl="ext")
    assert got.dim() == 0
    torch.testing.assert_close(got, per_pixel.sum() if reduction == "sum" else per_pixel.mean())
    torch.testing.assert_close(got, dmol_loss_reference(params, x, num_mixtures=2, reduction=reduction))
    got.backward()
    assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("impl", [pytest.param("ext", marks=requires_ext), "reference"])
@pytest.mark.parametrize("channels", [1, 3])
def test_probabilities_sum_to_one(impl, channels):
    """exp(-nll) over every image of a few levels sums to 1 per pixel (scales wide
    enough that no bin takes the mid-bin approximation)."""
    levels, m = 4, 3
    params = random_params(5, 1, channels, m, 2, 3, extreme=False)
    params[:, m:].reshape(1, channels, -1, m, 2, 3)[:, :, 1].clamp_(min=-0.5)
    total = torch.zeros(1, 2, 3, dtype=torch.float64)
    for combo in itertools.product(range(levels), repeat=channels):
        x = torch.tensor(combo).reshape(1, channels, 1, 1).expand(1, channels, 2, 3)
        total += torch.exp(-dmol_loss(params, x, num_mixtures=m, levels=levels, reduction="none", impl=impl))
    torch.testing.assert_close(total, torch.ones_like(total), rtol=1e-12, atol=1e-12)


@requires_ext
def test_float32_accuracy_in_the_tails():
    """float32 kernel against the float64 formula: the bin's log-probability stays
    accurate where both sigmoids are ~1 (the composite's float32 difference is 0 there
    and falls back to the mid-bin approximation) and at the edge bins."""
    m, levels = 1, 256
    # Grey, one mixture: mean -0.6, scale e^-3; levels 60..255 reach far into the upper tail.
    x = torch.arange(60, 256).reshape(1, 1, 1, -1)
    params = torch.tensor([0.0, -0.6, -3.0], dtype=torch.float64).reshape(1, 3, 1, 1).expand(1, 3, 1, 196)
    exact = dmol_loss_reference(params, x, num_mixtures=m, levels=levels, reduction="none")
    got = dmol_loss(params.float(), x, num_mixtures=m, levels=levels, reduction="none", impl="ext")
    composite = dmol_loss_reference(params.float(), x, num_mixtures=m, levels=levels, reduction="none")
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-4)
    # The composite's float32 difference of sigmoids near 1 is off by ~1e-3 nats there.
    assert (composite.double() - exact).abs().max() > 1e-3


@requires_ext
@pytest.mark.parametrize("channels", [1, 3])
def test_float32_matches_reference(channels):
    params = random_params(3, 4, channels, 4, 6, 6, extreme=False).float().requires_grad_()
    x = random_images(3, 4, channels, 6, 6, 256)
    got = dmol_loss(params, x, num_mixtures=4, reduction="sum", impl="ext")
    want = dmol_loss_reference(params.double(), x, num_mixtures=4, reduction="sum")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)
    g_got, = torch.autograd.grad(got, params)
    g_want, = torch.autograd.grad(want, params)
    torch.testing.assert_close(g_got.double(), g_want.double(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("impl,dtype", [("reference", torch.float64), pytest.param("ext", torch.float64, marks=requires_ext),
                                         pytest.param("ext", torch.float32, marks=requires_ext)])
@pytest.mark.parametrize("channels", [1, 3])
def test_no_gradient_at_the_log_scale_floor(impl, dtype, channels):
    # A log-scale exactly at the floor (-7) is clamped: zero gradient there, in the
    # kernels and the reference alike; just above it the gradient flows.
    m = 2
    params = random_params(3, 2, channels, m, 3, 4, dtype=dtype, extreme=False)
    block = (3 if channels == 3 else 2) * m
    at_floor = torch.zeros_like(params, dtype=torch.bool)
    for c in range(channels):
        at_floor[:, m + c * block + m:m + c * block + 2 * m] = True
    at_floor[:, :, :, 0] = False  # column 0 keeps its random log-scales
    params = torch.where(at_floor, -7.0, params).requires_grad_()
    x = random_images(3, 2, channels, 3, 4, 256)
    dmol_loss(params, x, num_mixtures=m, reduction="sum", impl=impl).backward()
    assert (params.grad[at_floor] == 0).all()
    log_scales = torch.zeros_like(at_floor)
    for c in range(channels):
        log_scales[:, m + c * block + m:m + c * block + 2 * m] = True
    assert (params.grad[log_scales & ~at_floor] != 0).any()


@requires_ext
@pytest.mark.parametrize("channels", [1, 3])
def test_gradcheck(channels):
    params = random_params(7, 2, channels, 2, 3, 3).requires_grad_()
    x = random_images(7, 2, channels, 3, 3, 256)
    assert torch.autograd.gradcheck(
        lambda p: dmol_loss(p, x, num_mixtures=2, reduction="none", impl="ext"), (params,))


@requires_ext
def test_opcheck():
    ops = torch.ops.genfast
    for channels, dtype in ((1, torch.float64), (3, torch.float32)):
        params = random_params(1, 2, channels, 3, 4, 5, dtype=dtype).requires_grad_()
        x = random_images(1, 2, channels, 4, 5, 256)
        torch.library.opcheck(ops.dmol_loss.default, (params, x, 3, 256))
        nll = ops.dmol_loss(params.detach(), x, 3, 256)
        torch.library.opcheck(ops.dmol_loss_backward.default, (torch.rand_like(nll), params.detach(), x, nll, 3, 256))
        u = torch.rand(2, channels + 1, 4, 5, dtype=torch.float64)
        torch.library.opcheck(ops.dmol_sample.default, (params.detach(), u, 3, 256, 0.8))


@requires_ext
def test_torch_compile_fullgraph():
    params = random_params(2, 2, 3, 2, 4, 4, dtype=torch.float32).requires_grad_()
    x = random_images(2, 2, 3, 4, 4, 256)
    u = torch.rand(2, 4, 4, 4, dtype=torch.float64)

    @torch.compile(fullgraph=True)
    def step(p, x, u):
        return dmol_loss(p, x, num_mixtures=2, impl="ext") * 2, dmol_sample(p.detach(), u, num_mixtures=2,
                                                                            impl="ext")

    loss, sample = step(params, x, u)
    grad, = torch.autograd.grad(loss, params)
    eager = dmol_loss(params, x, num_mixtures=2, impl="ext") * 2
    eager_grad, = torch.autograd.grad(eager, params)
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(grad, eager_grad)
    assert torch.equal(sample, dmol_sample(params.detach(), u, num_mixtures=2, impl="ext"))


@requires_ext
def test_poisoned_outputs(poisoned_allocations):
    for channels in (1, 3):
        params = random_params(4, 2, channels, 3, 5, 3).requires_grad_()
        x = random_images(4, 2, channels, 5, 3, 256)
        nll = dmol_loss(params, x, num_mixtures=3, reduction="none", impl="ext")
        grad, = torch.autograd.grad(nll.sum(), params)
        assert torch.isfinite(nll).all() and torch.isfinite(grad).all()
        u = torch.rand(2, channels + 1, 5, 3, dtype=torch.float64)
        sample = dmol_sample(params.detach(), u, num_mixtures=3, impl="ext")
        assert sample.min() >= 0 and sample.max() <= 255
        assert torch.equal(sample, dmol_sample_reference(params.detach(), u, num_mixtures=3))


# --- sampling ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels,m,levels", CASES)
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_equals_reference(device, channels, m, levels, temperature, dtype):
    params = random_params(11, 4, channels, m, 6, 5, dtype=dtype, device=device)
    u = torch.rand(4, channels + 1, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u[0, :, 0] = 0.0
    u[0, :, 1] = 1.0
    u = u.to(device)
    got = dmol_sample(params, u, num_mixtures=m, levels=levels, temperature=temperature, impl="ext")
    want = dmol_sample_reference(params, u, num_mixtures=m, levels=levels, temperature=temperature)
    assert got.dtype == torch.int64 and got.shape == (4, channels, 6, 5)
    assert torch.equal(got, want)
    assert got.min() >= 0 and got.max() < levels


@pytest.mark.parametrize("impl", [pytest.param("ext", marks=requires_ext), "reference"])
@pytest.mark.parametrize("channels", [1, 3])
def test_samples_follow_the_loss(impl, channels):
    """One pixel's mixture repeated over 40 000 pixels: the frequency of each image of
    3 levels per colour matches exp(-dmol_loss)."""
    levels, m, n = 3, 2, 40_000
    one = random_params(8, 1, channels, m, 1, 1, extreme=False)
    one[:, m:].reshape(1, channels, -1, m, 1, 1)[:, :, 1].clamp_(min=-1.5)  # no mid-bin bins
    params = one.expand(1, one.shape[1], 1, n).contiguous()
    u = torch.rand(1, channels + 1, 1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sample = dmol_sample(params, u, num_mixtures=m, levels=levels, impl=impl)
    code = sum(sample[0, c, 0] * levels ** c for c in range(channels))
    freq = torch.bincount(code, minlength=levels ** channels).double() / n
    probs = torch.zeros(levels ** channels, dtype=torch.float64)
    for combo in itertools.product(range(levels), repeat=channels):
        x = torch.tensor(combo).reshape(1, channels, 1, 1)
        nll = dmol_loss(one, x, num_mixtures=m, levels=levels, reduction="sum", impl=impl)
        probs[sum(v * levels ** c for c, v in enumerate(combo))] = torch.exp(-nll)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (freq - probs).abs().max() < 0.012, (freq, probs)


@requires_ext
def test_sample_temperature_sharpens():
    params = random_params(9, 2, 1, 3, 8, 8, extreme=False)
    u = torch.rand(2, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cold = dmol_sample(params, u, num_mixtures=3, temperature=1e-6, impl="ext")
    # Near zero temperature: the most likely mixture's mean, quantised.
    logits, means = params[:, :3], params[:, 3:6]
    best = means.gather(1, logits.argmax(1, keepdim=True)).squeeze(1).clamp(-1, 1)
    assert torch.equal(cold[:, 0], torch.floor((best + 1) * 255 / 2 + 0.5).long())


# --- bad input ----------------------------------------------------------------------------

def _good():
    params = random_params(0, 2, 3, 2, 3, 3)
    return params, random_images(0, 2, 3, 3, 3, 256)


@pytest.mark.parametrize("impl", [pytest.param("ext", marks=requires_ext), "reference"])
def test_loss_bad_input_python(impl):
    params, x = _good()
    cases = [
        (dict(params=params.half()), TypeError, "params must be float32 or float64"),
        (dict(params=params[0]), ValueError, r"params must have shape \(B, P, H, W\)"),
        (dict(x=x.double()), TypeError, "x must hold integer levels"),
        (dict(x=x[:, :2]), ValueError, "C = 1 or 3"),
        (dict(x=x[:, :1]), ValueError, "params must have 6 channels"),
        (dict(num_mixtures=3), ValueError, "params must have 30 channels"),
        (dict(num_mixtures=0), ValueError, "num_mixtures must be an int >= 1"),
        (dict(levels=1), ValueError, "levels must be an int >= 2"),
        (dict(x=x[:1]), ValueError, "must agree in B, H and W"),
        (dict(x=x + 256), ValueError, r"x must hold levels in \[0, 256\)"),
        (dict(x=x - 1), ValueError, r"x must hold levels in \[0, 256\)"),
        (dict(levels=16), ValueError, r"x must hold levels in \[0, 16\)"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(x=[1, 2]), TypeError, "x must be a tensor"),
    ]
    for change, exc, match in cases:
        kwargs = dict(params=params, x=x, num_mixtures=2, levels=256, reduction="mean")
        kwargs.update(change)
        with pytest.raises(exc, match=match):
            dmol_loss(kwargs.pop("params"), kwargs.pop("x"), impl=impl, **kwargs)


@pytest.mark.parametrize("impl", [pytest.param("ext", marks=requires_ext), "reference"])
def test_sample_bad_input_python(impl):
    params, _ = _good()
    u = torch.rand(2, 4, 3, 3, dtype=torch.float64)
    cases = [
        (dict(u=u.float()), TypeError, "u must be float64"),
        (dict(u=u[:, :3]), ValueError, r"u must have shape \(2, 4, 3, 3\)"),
        (dict(u=u * 2), ValueError, r"u must hold uniforms in \[0, 1\]"),
        (dict(u=u.masked_fill(u > 0.5, math.nan)), ValueError, r"u must hold uniforms in \[0, 1\]"),
        (dict(params=params[:, :19]), ValueError, r"params must have 6 \(grey\) or 20 \(RGB\) channels"),
        (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
        (dict(temperature=math.inf), ValueError, "temperature must be a finite number > 0"),
        (dict(levels=1), ValueError, "levels must be an int >= 2"),
    ]
    for change, exc, match in cases:
        kwargs = dict(params=params, u=u, num_mixtures=2, levels=256, temperature=1.0)
        kwargs.update(change)
        with pytest.raises(exc, match=match):
            dmol_sample(kwargs.pop("params"), kwargs.pop("u"), impl=impl, **kwargs)


@requires_ext
def test_bad_input_direct_ops():
    ops = torch.ops.genfast
    params, x = _good()
    nll = ops.dmol_loss(params, x, 2, 256)
    u = torch.rand(2, 4, 3, 3, dtype=torch.float64)
    type_errors = ("params must be float32 or float64", "x must be int64", "nll must have params' dtype",
                   "u must be float64")
    cases = [
        (lambda: ops.dmol_loss(params.half(), x, 2, 256), "params must be float32 or float64"),
        (lambda: ops.dmol_loss(params, x.int(), 2, 256), "x must be int64"),
        (lambda: ops.dmol_loss(params, x[:, :2], 2, 256), "C = 1 or 3"),
        (lambda: ops.dmol_loss(params, x, 3, 256), "params must have 30 channels"),
        (lambda: ops.dmol_loss(params, x, 0, 256), "num_mixtures must be >= 1"),
        (lambda: ops.dmol_loss(params, x, 2, 1), "levels must be >= 2"),
        (lambda: ops.dmol_loss(params, x + 300, 2, 256), r"x must hold levels in \[0, 256\)"),
        (lambda: ops.dmol_loss(params, x[:1], 2, 256), "must agree in B, H and W"),
        (lambda: ops.dmol_loss_backward(nll[:1], params, x, nll, 2, 256), "grad_nll must have shape"),
        (lambda: ops.dmol_loss_backward(nll, params, x, nll.float(), 2, 256), "nll must have params' dtype"),
        (lambda: ops.dmol_sample(params, u.float(), 2, 256, 1.0), "u must be float64"),
        (lambda: ops.dmol_sample(params, u[:, :2], 2, 256, 1.0), "u must have shape"),
        (lambda: ops.dmol_sample(params, u - 1, 2, 256, 1.0), r"u must hold uniforms in \[0, 1\]"),
        (lambda: ops.dmol_sample(params, u, 3, 256, 1.0), "params must have 9 \\(grey\\) or 30 \\(RGB\\)"),
        (lambda: ops.dmol_sample(params, u, 2, 256, -1.0), "temperature must be finite and > 0"),
    ]
    for call, match in cases:  # the wrappers' exception types (TORCH_CHECK_TYPE / _VALUE)
        with pytest.raises(TypeError if match in type_errors else ValueError, match=match):
            call()


# The float32 CPU kernel's instruction sets (csrc/cpu/dmol_lanes.cpp): GENFAST_DMOL_ISA
# narrows the run-time choice, so each vector width runs on this machine ("best" is
# AVX-512 where the CPU has it).
ISAS = ["best", "avx2", "baseline"]


@pytest.fixture(params=ISAS)
def dmol_isa(request, monkeypatch):
    if request.param != "best":
        monkeypatch.setenv("GENFAST_DMOL_ISA", request.param)
    return request.param


@requires_ext
@pytest.mark.parametrize("channels,m,levels", CASES)
def test_float32_lanes_extreme(channels, m, levels, dmol_isa):
    """The vectorised float32 path (16-pixel tasks, partial vectors at the end, edge bins,
    clamped and huge log-scales, mid-bin fix-ups) against the float64 formula."""
    params = random_params(21, 2, channels, m, 5, 7).requires_grad_()
    x = random_images(21, 2, channels, 5, 7, levels)
    p32 = params.detach().float().requires_grad_()
    got = dmol_loss(p32, x, num_mixtures=m, levels=levels, reduction="none", impl="ext")
    want = dmol_loss_reference(params, x, num_mixtures=m, levels=levels, reduction="none")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-4)
    up = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_got, = torch.autograd.grad((got * up.float()).sum(), p32)
    g_want, = torch.autograd.grad((want * up).sum(), params)
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-3, atol=2e-3)


def bin_sweep(levels=256):
    """One grey mixture per pixel (so the NLL is -log P(bin) itself): levels at and
    next to both edges and in the middle, means from 2.2 below to 2.2 above the level's
    position (through the mid-bin regime far out), log-scales from below the clamp
    (-7.5) to flat (30); float32-representable float64 params."""
    levels_ = torch.tensor([0, 1, 2, 64, 127, 128, 200, levels - 2, levels - 1], dtype=torch.float64)
    offsets = torch.linspace(-2.2, 2.2, 89, dtype=torch.float64)
    log_scales = torch.tensor([-7.5, -6.99, -6, -5, -4, -3, -2, -1, 0, 1, 2, 4, 8, 16, 30], dtype=torch.float64)
    lv, off, ls = (t.flatten() for t in torch.meshgrid(levels_, offsets, log_scales, indexing="ij"))
    logits = torch.randn(lv.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mean = 2.0 * lv / (levels - 1) - 1.0 + off
    params = torch.stack([logits, mean, ls]).reshape(1, 3, 1, -1).float().double()
    return params, lv.long().reshape(1, 1, 1, -1)


@requires_ext
def test_float32_error_bounds(dmol_isa):
    """The polynomial exp/log of the float32 CPU kernel, bounded against the float64
    formula over every regime of one bin: |error| <= 4e-6 (1 + |nll|) for the NLL
    (measured 5.8e-7), and <= 2e-4 (1 + |g| + 1/scale) for the gradients (measured
    1.5e-5; 1/scale, up to e^7, is the conditioning of the float32 inputs)."""
    params, x = bin_sweep()
    p64 = params.clone().requires_grad_()
    want = dmol_loss_reference(p64, x, num_mixtures=1, reduction="none")
    g_want, = torch.autograd.grad(want.sum(), p64)
    p32 = params.float().requires_grad_()
    got = dmol_loss(p32, x, num_mixtures=1, reduction="none", impl="ext")
    g_got, = torch.autograd.grad(got.sum(), p32)
    assert torch.isfinite(got).all() and torch.isfinite(g_got).all()
    value_err = (got.double() - want).abs() / (1 + want.abs())
    assert value_err.max() <= 4e-6, value_err.max()
    inv_scale = torch.exp(-params[:, 2:3].clamp(min=-7))
    grad_err = (g_got.double() - g_want).abs() / (1 + g_want.abs() + inv_scale)
    assert grad_err.max() <= 2e-4, grad_err.max()


@requires_ext
def test_float32_nan_params_give_nan(dmol_isa):
    """A NaN in one pixel's params makes that pixel's NLL and gradient NaN (the
    polynomial log, the selects and the running maximum let it through) and leaves
    the other pixels finite."""
    params = random_params(8, 1, 3, 3, 3, 7, extreme=False).float()
    x = random_images(8, 1, 3, 3, 7, 256)
    for channel in (0, 4, 8, 10, 15, 28):  # logit, mean R, log-scale R, alpha, log-scale G, gamma
        bad = params.clone()
        bad[0, channel, 1, 2] = float("nan")
        bad.requires_grad_()
        nll = dmol_loss(bad, x, num_mixtures=3, reduction="none", impl="ext")
        grad, = torch.autograd.grad(nll.sum(), bad)
        isnan = torch.zeros(1, 3, 7, dtype=torch.bool)
        isnan[0, 1, 2] = True
        assert torch.equal(nll.isnan(), isnan), channel
        assert grad[..., 1, 2].isnan().any() and torch.isfinite(grad[~isnan.unsqueeze(1).expand_as(grad)]).all()
