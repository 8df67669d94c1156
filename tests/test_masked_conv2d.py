"""masked_conv2d: kernels against the reference, masks against hand-written tables,
receptive field, autograd, opcheck, torch.compile and bad input. The kernels are
pinned with algorithm="live_tap" ("auto" may pick a PyTorch algorithm; those are tested
in test_masked_conv2d_algorithms.py)."""
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, requires_cuda, requires_ext

from genfast.ops import masked_conv2d, masked_conv2d_mask, masked_conv2d_reference


@pytest.fixture(autouse=True)
def no_tf32_reference(monkeypatch):
    # On Ampere and later GPUs cuDNN would run the reference's float32 convolutions
    # in TF32 (10-bit mantissa), far outside the float32 tolerances below.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def random_case(seed, device, dtype=torch.float64):
    """A random layer: kernel, mask, colour groups, dilation, bias, batch and image."""
    rng = random.Random(seed)
    color_groups = rng.choice([1, 1, 3])
    in_c = color_groups * rng.randint(1, 6)
    out_c = color_groups * rng.randint(1, 7)
    kh, kw = rng.choice([1, 3, 5, 7, 9, 11]), rng.choice([1, 3, 5, 7])
    if rng.random() < 0.5:
        kw = kh
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rng.randint(1, 3), in_c, rng.randint(1, 13), rng.randint(1, 37), generator=gen,
                    dtype=dtype)
    w = torch.randn(out_c, in_c, kh, kw, generator=gen, dtype=dtype)
    b = torch.randn(out_c, generator=gen, dtype=dtype) if rng.random() < 0.7 else None
    kwargs = dict(mask_type=rng.choice("AB"), color_groups=color_groups,
                  dilation=(rng.randint(1, 3), rng.randint(1, 3)))
    move = lambda t: None if t is None else t.to(device).requires_grad_()
    return move(x), move(w), move(b), kwargs


def grads(out, tensors, seed):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    live = [t for t in tensors if t is not None]
    return torch.autograd.grad(out, live, g)


# float64 checks the arithmetic exactly; float32 takes the vectorised paths (AVX-512
# on the CPU where available) with their own tiling and edge handling.
TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-3)}
CASES = [(torch.float64, seed) for seed in range(24)] + [(torch.float32, 100 + seed) for seed in range(8)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,seed", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_matches_reference(device, dtype, seed):
    x, w, b, kwargs = random_case(seed, device, dtype)
    out = masked_conv2d(x, w, b, impl="ext", algorithm="live_tap", **kwargs)
    ref = masked_conv2d_reference(x, w, b, **kwargs)
    torch.testing.assert_close(out, ref, **TOLERANCES[dtype])
    for got, want in zip(grads(out, (x, w, b), seed), grads(ref, (x, w, b), seed)):
        torch.testing.assert_close(got, want, **TOLERANCES[dtype])


def reference_grad_weight(g, x, weight_shape, kwargs):
    """The weight gradient of the reference (F.conv2d of weight * mask) in float64."""
    w = torch.zeros(weight_shape, dtype=torch.float64, requires_grad=True)
    out = masked_conv2d_reference(x.double(), w, **kwargs)
    return torch.autograd.grad(out, w, g.double())[0]


# The CPU weight-gradient kernel tiles 4 output channels x 6 live-weight columns (the
# columns of one kernel row), reads 16-pixel chunks of image rows with masked loads:
# sizes on both sides of every tile edge, taps reaching past the image, colour groups.
@requires_ext
@pytest.mark.parametrize("case", [
    # (batch, in_c, out_c, kernel, mask, groups, dilation, height, width)
    (2, 1, 1, (3, 3), "B", 1, (1, 1), 5, 16),
    (3, 1, 7, (7, 7), "A", 1, (1, 1), 9, 17),
    (2, 3, 9, (5, 5), "A", 3, (1, 2), 6, 33),
    (1, 6, 5, (1, 3), "B", 1, (1, 1), 4, 40),
    (2, 6, 6, (1, 1), "A", 3, (1, 1), 3, 15),   # colour-masked 1x1: the centre only
    (2, 5, 13, (3, 5), "B", 1, (2, 3), 7, 11),  # dilated taps past the image edge
    (1, 4, 4, (11, 11), "B", 1, (1, 1), 3, 2),  # kernel larger than the image
    (2, 7, 3, (3, 3), "B", 1, (1, 1), 1, 70),   # one row: only the centre row's taps read it
])
def test_grad_weight_kernel_float32(case):
    n, cin, cout, kernel, mask_type, groups, dilation, h, w = case
    gen = torch.Generator().manual_seed(sum(kernel) + h * w)
    x = torch.randn(n, cin, h, w, generator=gen)
    g = torch.randn(n, cout, h, w, generator=gen)
    got = torch.ops.genfast.masked_conv2d_grad_weight(g, x, list(kernel), list(dilation),
                                                      mask_type, groups)
    kwargs = dict(mask_type=mask_type, color_groups=groups, dilation=dilation)
    want = reference_grad_weight(g, x, (cout, cin, *kernel), kwargs)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    mask = masked_conv2d_mask(cin, cout, kernel, mask_type, groups)
    assert (got[mask == 0] == 0).all()  # masked entries are exact zeros


# The CPU forward / input-gradient kernel picks its micro-tile by the number of result
# rows (output channels, or input channels for the input gradient): 1, 2, 3 and 4 rows
# have their own tiles (16 * 8 or 16 * 6 pixels wide), more rows use 8 x 32.
@requires_ext
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_few_rows_float32(rows):
    gen = torch.Generator().manual_seed(rows)
    for kernel, mask_type, h, w in [((7, 7), "A", 9, 37), ((3, 3), "B", 17, 130), ((1, 3), "B", 2, 5)]:
        x = torch.randn(2, rows, h, w, generator=gen).requires_grad_()
        wt = torch.randn(rows, rows, *kernel, generator=gen).requires_grad_()
        b = torch.randn(rows, generator=gen).requires_grad_()
        out = masked_conv2d(x, wt, b, mask_type=mask_type, impl="ext", algorithm="live_tap")
        ref = masked_conv2d_reference(x.double(), wt.double(), b.double(), mask_type=mask_type)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
        g = torch.randn(out.shape, generator=gen)
        got = torch.autograd.grad(out, (x, wt, b), g)
        want = torch.autograd.grad(ref, (x, wt, b), g.double())
        for a, e in zip(got, want):
            torch.testing.assert_close(a.double(), e.double(), rtol=1e-4, atol=1e-3)


@requires_ext
def test_grad_weight_does_not_depend_on_thread_count():
    # Threads own output channels; each entry is summed in the same order at any count.
    gen = torch.Generator().manual_seed(5)
    x, g = torch.randn(4, 9, 12, 21, generator=gen), torch.randn(4, 10, 12, 21, generator=gen)
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(torch.ops.genfast.masked_conv2d_grad_weight(g, x, [5, 5], [1, 1], "B", 1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("device", DEVICES)
def test_model_sized_layers(device):
    # Sizes of real models: channels not multiples of the tile sizes, 7x7 'A' and 3x3 'B'.
    gen = torch.Generator().manual_seed(7)
    for kernel, mask_type, cin, cout in [(7, "A", 3, 66), (3, "B", 66, 129)]:
        x = torch.randn(3, cin, 19, 23, generator=gen).to(device).requires_grad_()
        w = (0.1 * torch.randn(cout, cin, kernel, kernel, generator=gen)).to(device).requires_grad_()
        b = torch.randn(cout, generator=gen).to(device).requires_grad_()
        cg = 3 if cin % 3 == 0 and cout % 3 == 0 else 1
        kwargs = dict(mask_type=mask_type, color_groups=cg)
        out = masked_conv2d(x, w, b, impl="ext", algorithm="live_tap", **kwargs)
        ref = masked_conv2d_reference(x, w, b, **kwargs)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        for got, want in zip(grads(out, (x, w, b), 1), grads(ref, (x, w, b), 1)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_live_taps(device, dtype):
    # 1x1 mask 'A' with one colour group sees nothing: the output is the bias.
    x = torch.randn(2, 3, 4, 5, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(4, 3, 1, 1, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(4, dtype=dtype, device=device, requires_grad=True)
    out = masked_conv2d(x, w, b, mask_type="A", impl="ext", algorithm="live_tap")
    torch.testing.assert_close(out, b.view(1, 4, 1, 1).expand(2, 4, 4, 5))
    gx, gw, gb = torch.autograd.grad(out.square().sum(), (x, w, b))
    assert (gx == 0).all() and (gw == 0).all()
    torch.testing.assert_close(gb, 2 * 40 * b)  # 2 * b per pixel, 2 * 4 * 5 pixels


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    # Deterministic mode fills every uninitialised allocation with NaN: an output
    # element the kernels forget to write shows up as NaN.
    for seed in range(6):
        x, w, b, kwargs = random_case(200 + seed, device, torch.float32)
        out = masked_conv2d(x, w, b, impl="ext", algorithm="live_tap", **kwargs)
        gi, gw, *_ = grads(out, (x, w, b), seed)
        for t in (out, gi, gw):
            assert torch.isfinite(t).all()
        torch.testing.assert_close(out, masked_conv2d_reference(x, w, b, **kwargs), rtol=1e-4, atol=1e-4)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cuda(dtype):
    # The CPU kernel is float32/float64 only (half precision runs the reference there).
    device = "cuda"
    x, w, b, kwargs = random_case(300, device, torch.float32)
    out = masked_conv2d(x.to(dtype), w.to(dtype), b.to(dtype) if b is not None else None, impl="ext",
                        algorithm="live_tap", **kwargs)
    # float32 accumulation: compare with the float32 reference on the same rounded inputs.
    ref = masked_conv2d_reference(x.to(dtype).float(), w.to(dtype).float(),
                                  b.to(dtype).float() if b is not None else None, **kwargs)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@requires_ext
@pytest.mark.parametrize("seed", range(4))
def test_gradcheck(seed):
    x, w, b, kwargs = random_case(400 + seed, "cpu")
    x, w = x[:1, :, :5, :6].detach().requires_grad_(), w.detach().requires_grad_()
    fn = lambda x, w, b: masked_conv2d(x, w, b, impl="ext", algorithm="live_tap", **kwargs)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@requires_ext
@pytest.mark.parametrize("seed", range(3))
def test_opcheck(seed):
    x, w, b, kwargs = random_case(500 + seed, "cpu")
    dilation = list(kwargs["dilation"])
    op_args = (kwargs["mask_type"], kwargs["color_groups"])
    torch.library.opcheck(torch.ops.genfast.masked_conv2d.default, (x, w, b, dilation, *op_args))
    gy = torch.randn(x.shape[0], w.shape[0], *x.shape[2:], dtype=x.dtype)
    torch.library.opcheck(torch.ops.genfast.masked_conv2d_grad_input.default,
                          (gy, w.detach(), dilation, *op_args))
    torch.library.opcheck(torch.ops.genfast.masked_conv2d_grad_weight.default,
                          (gy, x.detach(), list(w.shape[2:]), dilation, *op_args))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, w, b, kwargs = random_case(600, "cpu", torch.float32)

    @torch.compile(fullgraph=True)
    def layer(x, w, b):
        return torch.relu(masked_conv2d(x, w, b, impl="ext", algorithm="live_tap", **kwargs)).square().sum()

    eager = torch.relu(masked_conv2d_reference(x, w, b, **kwargs)).square().sum()
    compiled = layer(x, w, b)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)
    for got, want in zip(torch.autograd.grad(compiled, (x, w, b)), torch.autograd.grad(eager, (x, w, b))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


# Hand-written centre rows of 3x3 masks (row 0 is always all live, row 2 all dead).
# With 3 colour groups and one channel per group, entry [o][c] of the centre tap.
CENTER_TABLES = {
    ("A", 1): [[1, 0, 0]],
    ("B", 1): [[1, 1, 0]],
}
COLOR_CENTER = {"A": [[0, 0, 0], [1, 0, 0], [1, 1, 0]], "B": [[1, 0, 0], [1, 1, 0], [1, 1, 1]]}


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_mask_tables_one_group(mask_type):
    mask = masked_conv2d_mask(1, 1, 3, mask_type)
    expected = torch.tensor([[1, 1, 1], CENTER_TABLES[(mask_type, 1)][0], [0, 0, 0]], dtype=torch.float32)
    assert torch.equal(mask[0, 0], expected)
    # 5x3 rectangular: two full rows above, one live tap left of the centre.
    rect = masked_conv2d_mask(1, 1, (5, 3), mask_type)[0, 0]
    expected = torch.tensor([[1, 1, 1], [1, 1, 1], [1, float(mask_type == "B"), 0], [0, 0, 0], [0, 0, 0]])
    assert torch.equal(rect, expected)


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_mask_tables_color_groups(mask_type):
    mask = masked_conv2d_mask(3, 3, 3, mask_type, color_groups=3)
    assert torch.equal(mask[:, :, 1, 1], torch.tensor(COLOR_CENTER[mask_type], dtype=torch.float32))
    assert torch.equal(mask[:, :, 0, :], torch.ones(3, 3, 3))
    assert torch.equal(mask[:, :, 1, 0], torch.ones(3, 3))
    assert torch.equal(mask[:, :, 1, 2], torch.zeros(3, 3))
    assert torch.equal(mask[:, :, 2, :], torch.zeros(3, 3, 3))
    # Two channels per group: the table is repeated in 2x2 blocks.
    wide = masked_conv2d_mask(6, 6, 3, mask_type, color_groups=3)[:, :, 1, 1]
    table = torch.tensor(COLOR_CENTER[mask_type], dtype=torch.float32)
    assert torch.equal(wide, table.repeat_interleave(2, 0).repeat_interleave(2, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_type,color_groups", [("A", 1), ("B", 1), ("A", 3), ("B", 3)])
def test_kernel_mask_equals_table(device, mask_type, color_groups):
    # The weight gradient of the kernel is exactly zero where the mask is, and only there.
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 6, 9, 8, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(9, 6, 5, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    out = masked_conv2d(x, w, mask_type=mask_type, color_groups=color_groups, impl="ext", algorithm="live_tap")
    (grad,) = torch.autograd.grad(out.square().sum(), w)
    expected = masked_conv2d_mask(6, 9, 5, mask_type, color_groups, dtype=torch.float64, device=device)
    assert torch.equal((grad != 0).to(torch.float64), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask_type,color_groups", [("A", 1), ("B", 1), ("A", 3), ("B", 3)])
def test_receptive_field(device, mask_type, color_groups):
    # d out[:, :, i, j] / d input vanishes at every later raster position, and at
    # (i, j) itself wherever the centre tap is masked.
    gen = torch.Generator().manual_seed(3)
    h, w_ = 7, 6
    x = torch.randn(1, 3, h, w_, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(3, 3, 5, 3, generator=gen, dtype=torch.float64).to(device)
    out = masked_conv2d(x, w, mask_type=mask_type, color_groups=color_groups, dilation=(1, 2), impl="ext",
                        algorithm="live_tap")
    for i, j in [(0, 0), (3, 2), (6, 5), (2, 0)]:
        for o in range(3):
            (g,) = torch.autograd.grad(out[0, o, i, j], x, retain_graph=True)
            g = g[0].cpu()
            raster = torch.arange(h * w_).view(h, w_)
            assert (g[:, raster > i * w_ + j] == 0).all()
            center = g[:, i, j]
            if color_groups == 1:
                allowed = torch.full((3,), mask_type == "B")
            else:
                allowed = torch.arange(3) < o if mask_type == "A" else torch.arange(3) <= o
            assert (center[~allowed] == 0).all()


@requires_ext
def test_non_contiguous_input():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 11, 4, generator=gen).permute(0, 3, 1, 2)  # (2, 4, 9, 11), strided
    w = torch.randn(6, 4, 3, 3, generator=gen).transpose(2, 3)
    assert not x.is_contiguous() and not w.is_contiguous()
    torch.testing.assert_close(masked_conv2d(x, w, impl="ext", algorithm="live_tap"), masked_conv2d_reference(x, w))
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(masked_conv2d(cl, w, impl="ext", algorithm="live_tap"), masked_conv2d_reference(x, w))


def _ok_args():
    return torch.randn(2, 3, 8, 8), torch.randn(6, 3, 3, 3)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("make,error,match", [
    (lambda x, w: (x[0], w, {}), ValueError, "input must be 4-D"),
    (lambda x, w: (x, w[0], {}), ValueError, "weight must be 4-D"),
    (lambda x, w: (x, w.double(), {}), TypeError, "dtype"),
    (lambda x, w: (x.long(), w.long(), {}), TypeError, "floating point"),
    (lambda x, w: (x, w.to("meta"), {}), ValueError, "on meta but input is on cpu"),
    (lambda x, w: (x, torch.randn(6, 3, 4, 3), {}), ValueError, "kernel_size must be odd"),
    (lambda x, w: (x, torch.randn(6, 3, 13, 13), {}), ValueError, "kernel_size must be odd"),
    (lambda x, w: (x, w, {"color_groups": 2}), ValueError, "color_groups"),
    (lambda x, w: (x, w, {"mask_type": "C"}), ValueError, "mask_type"),
    (lambda x, w: (x[:0], w, {}), ValueError, "must not be empty"),
    (lambda x, w: (x, torch.randn(6, 4, 3, 3), {}), ValueError, "channels"),
    (lambda x, w: (x, w, {"bias": torch.randn(5)}), ValueError, "bias"),
    (lambda x, w: (x, w, {"dilation": 0}), ValueError, "dilation"),
    (lambda x, w: (x, w, {"dilation": (1, 2, 3)}), TypeError, "dilation"),
])
def test_bad_input(impl, make, error, match):
    x, w, kwargs = make(*_ok_args())
    with pytest.raises(error, match=match):
        masked_conv2d(x, w, impl=impl, **kwargs)


@requires_ext
def test_bad_input_reaching_the_kernel():
    # Direct op calls (as from C++) are checked in the kernel too.
    x, w = _ok_args()
    with pytest.raises(ValueError, match="mask_type must be 'A' or 'B'"):
        torch.ops.genfast.masked_conv2d(x, w, None, [1, 1], "Z", 1)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        torch.ops.genfast.masked_conv2d(x, torch.randn(6, 3, 2, 2), None, [1, 1], "A", 1)
    with pytest.raises(ValueError, match="input has 4 channels"):
        torch.ops.genfast.masked_conv2d(torch.randn(1, 4, 5, 5), w, None, [1, 1], "A", 1)
    with pytest.raises(TypeError, match="float32 and float64"):
        torch.ops.genfast.masked_conv2d(x.half(), w.half(), None, [1, 1], "A", 1)
    with pytest.raises(ValueError, match="grad_output"):
        torch.ops.genfast.masked_conv2d_grad_weight(torch.randn(2, 6, 7, 8), x, [3, 3], [1, 1], "A", 1)


@requires_ext
def test_huge_sizes_rejected():
    # 1000 channels x 300 x 300 pixels x 25 taps overflows 32-bit indexing; an
    # expanded view costs no memory, and the check comes before any allocation.
    x = torch.zeros(1, 1, 1, 1).expand(1, 1000, 300, 300)
    w = torch.zeros(1, 1000, 7, 7)
    with pytest.raises(ValueError, match="too large for 32-bit indexing"):
        # algorithm="live_tap": "auto" would drop the failing kernel and run a PyTorch algorithm.
        masked_conv2d(x, w, impl="ext", algorithm="live_tap")


def test_reference_is_masked_conv2d():
    # The reference is F.conv2d with the masked weight and 'same' padding.
    x, w = _ok_args()
    mask = masked_conv2d_mask(3, 6, 3, "A")
    torch.testing.assert_close(masked_conv2d(x, w, mask_type="A", impl="reference"),
                               F.conv2d(x, w * mask, padding=1))


# Dilation: tap offsets (kernel // 2) * dilation must fit the kernels' 32-bit pixel
# coordinates; beyond 2**24 the op refuses (dilation 2**32 + 1 used to wrap to an
# offset of one pixel and read real pixels where the true tap is padding).
@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("dilation", [2**24 + 1, 2**32 + 1, (1, 2**31)])
def test_huge_dilation_rejected(impl, dilation):
    x, w = _ok_args()
    with pytest.raises(ValueError, match=r"dilation must be between 1 and 2\*\*24 \(16777216\)"):
        masked_conv2d(x, w, dilation=dilation, impl=impl)


@requires_ext
@pytest.mark.parametrize("dilation", [[2**24 + 1, 1], [1, 2**32 + 1]])
def test_huge_dilation_rejected_by_the_kernel(dilation):
    # Direct op calls (as from C++): a ValueError naming `dilation` and the limit.
    x, w = _ok_args()
    gy = torch.randn(x.shape[0], w.shape[0], *x.shape[2:])
    match = r"dilation must be at most 16777216 \(2\^24\)"
    with pytest.raises(ValueError, match="masked_conv2d: " + match):
        torch.ops.genfast.masked_conv2d(x, w, None, dilation, "B", 1)
    with pytest.raises(ValueError, match="masked_conv2d_grad_input: " + match):
        torch.ops.genfast.masked_conv2d_grad_input(gy, w, dilation, "B", 1)
    with pytest.raises(ValueError, match="masked_conv2d_grad_weight: " + match):
        torch.ops.genfast.masked_conv2d_grad_weight(gy, x, [3, 3], dilation, "B", 1)


@pytest.mark.parametrize("device", DEVICES)
def test_largest_dilation_sees_only_the_centre(device):
    # Dilation 2**24 is accepted; every tap but the centre then lies in the padding,
    # as with a dilation just larger than the image (a reference cheap to compute).
    x, w, b, kwargs = random_case(600, device)
    kwargs.update(mask_type="B", dilation=2**24)
    out = masked_conv2d(x, w, b, impl="ext", algorithm="live_tap", **kwargs)
    ref = masked_conv2d_reference(x, w, b, **{**kwargs, "dilation": tuple(x.shape[2:])})
    torch.testing.assert_close(out, ref, **TOLERANCES[torch.float64])
    for got, want in zip(grads(out, (x, w, b), 0), grads(ref, (x, w, b), 0)):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])


@requires_cuda
@pytest.mark.cuda
def test_cuda_graph_capture_forward_backward():
    # Forward and both gradients captured in one CUDA graph: nothing in the ops may
    # copy from the host or synchronise (the centre-tap mask used to be a host
    # tensor copied per call), and replays must follow new values in the inputs.
    gen = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).cuda()
    x, w, b = make(2, 6, 9, 11).requires_grad_(), make(12, 6, 5, 5).requires_grad_(), make(12).requires_grad_()
    gy = make(2, 12, 9, 11)
    kwargs = dict(mask_type="A", color_groups=3, dilation=(1, 2))

    def step():
        out = masked_conv2d(x, w, b, impl="ext", algorithm="live_tap", **kwargs)
        return (out, *torch.autograd.grad(out, (x, w, b), gy))

    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        eager = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = masked_conv2d_reference(x, w, b, **kwargs)
    expected = (ref, *torch.autograd.grad(ref, (x, w, b), gy))
    for got, want in zip(eager, expected):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])

    side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for round_ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        eager = step()
        for got, want in zip(captured, eager):
            torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
        with torch.no_grad():  # new values in the captured buffers
            x.copy_(make(*x.shape))
            w.mul_(-0.5)


@requires_cuda
@pytest.mark.cuda
def test_cuda_more_than_65535_row_tiles():
    # 64 * 65536 + 64 output channels on a 1x1 image: 65537 tiles of 64 rows, more
    # than a CUDA grid's y dimension holds (the row tiles used to be grid y). With
    # a 3x3 kernel every tap but the centre lies in the padding, so out = W[:, :, 1, 1] x.
    cout, cin = 64 * 65536 + 64, 2
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, cin, 1, 1, dtype=torch.float64, generator=gen).cuda()
    w = torch.randn(cout, cin, 3, 3, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    b = torch.randn(cout, dtype=torch.float64, generator=gen).cuda()
    out = masked_conv2d(x, w, b, mask_type="B", impl="ext", algorithm="live_tap")
    centre = w.detach()[:, :, 1, 1]
    torch.testing.assert_close(out[:, :, 0, 0], x[:, :, 0, 0] @ centre.T + b, rtol=1e-12, atol=1e-12)
    gy = torch.randn(out.shape, dtype=torch.float64, generator=gen).cuda()
    (gw,) = torch.autograd.grad(out, w, gy)  # the grad-weight kernel: 65537 x 1 tiles
    want = torch.zeros_like(gw)
    want[:, :, 1, 1] = gy[:, :, 0, 0].T @ x[:, :, 0, 0]
    torch.testing.assert_close(gw, want, rtol=1e-12, atol=1e-12)
