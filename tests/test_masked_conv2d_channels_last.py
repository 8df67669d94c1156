"""masked_conv2d on channels-last tensors: the CPU's NHWC live-tap kernels
(csrc/cpu/live_tap_nhwc.cpp, float32 on AVX-512) and the layout rule every kernel
follows (results channels-last when the main input is), against the float64 reference."""
import pytest
import torch
from conftest import DEVICES, requires_ext

from genfast.ops import masked_conv2d, masked_conv2d_mask, masked_conv2d_reference
from genfast.ops.masked_conv2d import _base_key

CL = torch.channels_last

# (batch, in_c, out_c, kernel, mask, groups, dilation, height, width): the NHWC tiles are
# 6 pixels (forward) or 6 input channels (weight gradient) x 64 output channels, the
# last vector masked (results with fewer than 16 channels take the NCHW kernel on a
# contiguous copy instead), the forward's sum in blocks of up to 128 (tap, channel) rows:
# widths and channel counts on both sides of those edges, more than 64 output channels,
# taps past every edge, colour groups, dilation.
CASES = [
    (2, 64, 64, (3, 3), "B", 1, (1, 1), 9, 11),
    (3, 5, 19, (5, 5), "A", 1, (1, 1), 7, 6),
    (2, 6, 33, (7, 7), "A", 3, (1, 1), 8, 8),
    (1, 3, 12, (3, 3), "B", 3, (2, 2), 5, 13),
    (2, 70, 130, (5, 5), "B", 1, (1, 1), 4, 3),
    (2, 7, 9, (1, 1), "B", 1, (1, 1), 6, 6),
    (1, 6, 6, (1, 1), "A", 3, (1, 1), 3, 3),   # colour-masked 1x1: the centre only
    (2, 16, 80, (1, 3), "B", 1, (1, 1), 2, 25),
    (1, 4, 4, (11, 11), "B", 1, (1, 1), 3, 2),  # kernel larger than the image
    (2, 5, 17, (3, 5), "A", 1, (2, 3), 7, 12),  # dilated taps past the image edge
    (2, 8, 1, (3, 3), "B", 1, (1, 1), 5, 7),    # one output channel
    (2, 5, 7, (5, 1), "A", 1, (1, 1), 6, 4),    # rows above only: rows 0 / H-1 are the bias alone
    (1, 140, 20, (3, 3), "B", 1, (1, 1), 3, 9),  # input channels in blocks of 128
]


def _case(case, seed):
    n, cin, cout, kernel, mask_type, groups, dilation, h, w = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(cout, cin, *kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(cout, generator=gen, dtype=torch.float64)
    g = torch.randn(n, cout, h, w, generator=gen, dtype=torch.float64)
    return x, wt, b, g, dict(mask_type=mask_type, color_groups=groups, dilation=dilation)


def _is_cl(t):
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


@requires_ext
@pytest.mark.parametrize("case", CASES, ids=str)
def test_nhwc_kernels_match_reference(case):
    x, wt, b, g, kwargs = _case(case, sum(case[3]) + case[7] * case[8])
    ref_args = [t.clone().requires_grad_() for t in (x, wt, b)]
    ref = masked_conv2d_reference(*ref_args, **kwargs)
    want = torch.autograd.grad(ref, ref_args, g)
    xf = x.float().contiguous(memory_format=CL).requires_grad_()
    wf, bf = wt.float().requires_grad_(), b.float().requires_grad_()
    out = masked_conv2d(xf, wf, bf, impl="ext", algorithm="live_tap", **kwargs)
    got = torch.autograd.grad(out, (xf, wf, bf), g.float().contiguous(memory_format=CL))
    scale = lambda t: dict(rtol=1e-4, atol=1e-5 * max(1.0, t.abs().max().item()))  # noqa: E731
    torch.testing.assert_close(out.double(), ref.detach(), **scale(ref))
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, **scale(e))
    # Results follow their main input (the input gradient: grad_output); one channel
    # is contiguous in both layouts.
    assert _is_cl(out) or out.shape[1] == 1
    assert _is_cl(got[0]) or 1 in (g.shape[1], x.shape[1])
    mask = masked_conv2d_mask(x.shape[1], wt.shape[0], tuple(wt.shape[2:]), kwargs["mask_type"],
                              kwargs["color_groups"])
    assert (got[1][mask == 0] == 0).all()  # masked entries are exact zeros


@requires_ext
def test_nhwc_results_do_not_depend_on_thread_count():
    x, wt, _, g, kwargs = _case((3, 13, 70, (5, 5), "B", 1, (1, 1), 9, 10), 3)
    x, g, wt = x.float().contiguous(memory_format=CL), g.float().contiguous(memory_format=CL), wt.float()
    d, mt, cg = list(kwargs["dilation"]), kwargs["mask_type"], kwargs["color_groups"]
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append((torch.ops.genfast.masked_conv2d(x, wt, None, d, mt, cg),
                            torch.ops.genfast.masked_conv2d_grad_input(g, wt, d, mt, cg),
                            torch.ops.genfast.masked_conv2d_grad_weight(g, x, [5, 5], d, mt, cg)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layout_rule_every_output_is_written(device, dtype, poisoned_allocations):
    # float64 (and CPUs without AVX-512) compute on a contiguous copy and return the
    # result channels-last; unwritten elements would be NaN under poisoned allocations.
    x, wt, b, g, kwargs = _case((2, 6, 21, (5, 5), "A", 3, (1, 1), 7, 9), 11)
    xd = x.to(device, dtype).contiguous(memory_format=CL).requires_grad_()
    wd, bd = wt.to(device, dtype).requires_grad_(), b.to(device, dtype).requires_grad_()
    out = masked_conv2d(xd, wd, bd, impl="ext", algorithm="live_tap", **kwargs)
    gi, gw, gb = torch.autograd.grad(out, (xd, wd, bd), g.to(device, dtype).contiguous(memory_format=CL))
    assert _is_cl(out) and _is_cl(gi)
    for t in (out, gi, gw, gb):
        assert torch.isfinite(t).all()
    ref = masked_conv2d_reference(x, wt, b, **kwargs)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.cpu().double(), ref, **tol)


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_channels_last(dtype):
    # The fake kernels give channels-last results for channels-last inputs, as the kernels do.
    x, wt, b, g, kwargs = _case((2, 6, 9, (3, 3), "B", 3, (1, 2), 5, 7), 4)
    x, g = (t.to(dtype).contiguous(memory_format=CL) for t in (x, g))
    wt, b = wt.to(dtype), b.to(dtype)
    d, op_args = list(kwargs["dilation"]), (kwargs["mask_type"], kwargs["color_groups"])
    torch.library.opcheck(torch.ops.genfast.masked_conv2d.default,
                          (x.requires_grad_(), wt.requires_grad_(), b.requires_grad_(), d, *op_args))
    torch.library.opcheck(torch.ops.genfast.masked_conv2d_grad_input.default, (g, wt.detach(), d, *op_args))
    torch.library.opcheck(torch.ops.genfast.masked_conv2d_grad_weight.default,
                          (g, x.detach(), list(wt.shape[2:]), d, *op_args))


@requires_ext
def test_channels_last_is_its_own_autotune_key():
    x = torch.randn(2, 8, 6, 6)
    w = torch.randn(8, 8, 3, 3)
    assert _base_key(x.contiguous(memory_format=CL), w, "B", 1, (1, 1))[-1] == "channels_last"
    assert _base_key(x, w, "B", 1, (1, 1))[-1] == "contiguous"
