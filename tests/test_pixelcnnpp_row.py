"""genfast.ops.pixelcnnpp_row (one image row of PixelCNN++'s cached sampler, both
streams): the compiled kernels against the per-pixel PyTorch reference on random
weights and random (non-zero) states at random rows, float64 and float32, the states'
in-place updates, poisoned outputs, opcheck, torch.compile, bad input; the sampler
that uses it is tested in test_models_pixelcnnpp.py (cached == naive, teacher forcing)."""
import random

import pytest
import torch

from conftest import requires_ext, requires_cuda
from genfast.models import PixelCNNpp
from genfast.models.pixelcnnpp_cache import pack_row_weights
from genfast.ops import PixelCNNppRowWeights, pixelcnnpp_row, pixelcnnpp_row_reference
from genfast.ops.dmol import dmol_num_params
from genfast.ops.pixelcnnpp_row import num_blocks, state_depth

DEVICES = [pytest.param("cpu", marks=requires_ext), pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]
IMPLS = ["reference", pytest.param("ext", marks=requires_ext)]


def random_row(seed, device, dtype=torch.float64, *, n=None, known_share=0.4, scale=0.5):
    """(states, values, known, uniforms, temperature, block_out_bias, row, levels,
    weights) with random weights and states (every slot non-zero: a read of the wrong
    slot, column or map shows). Rows cover every resolution phase (row % 4), row 0 and
    row 1 (their zero rows above) included."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n = n or rng.randint(1, 9)
    c, width, nr = rng.choice([1, 3]), 4 * rng.randint(1, 3), rng.randint(1, 2)
    f, mixtures, levels = rng.randint(1, 5), rng.randint(1, 3), rng.randint(2, 40)
    row = seed % 4 + 4 * rng.randint(0, 2) * (seed >= 4)
    blocks, p = num_blocks(nr), dmol_num_params(c, mixtures)

    def rand(*shape):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(device, dtype)

    weights = PixelCNNppRowWeights(
        rand(3 * (c + 1), f), rand(f), rand(2 * (c + 1), f), rand(f), rand(blocks, 12 * f, f), rand(blocks, f),
        rand(blocks, 8 * f, 2 * f), rand(2, 4 * f, f), rand(2, f), rand(2, 4, f, f), rand(2, f), rand(f, p),
        rand(p), rand(6 * (c + 1), f), rand(f), rand(blocks, 14 * f, f), rand(blocks, f), rand(blocks, 12 * f, 2 * f),
        rand(2, 6 * f, f), rand(2, f), rand(2, 2, 3, f, f), rand(2, f))
    states = [rand(n, 2, width >> s, state_depth(s, nr, f, c)) for s in range(3)]
    values = torch.randint(0, levels, (n, c, width), generator=gen).to(device)
    known = (torch.rand(n, width, generator=gen) < known_share).to(device)
    uniforms = torch.rand(width, c + 1, n, generator=gen, dtype=torch.float64).to(device)
    return (states, values, known, uniforms, rng.choice([1.0, 0.7]), rand(2, blocks, n, 2 * f), row, levels,
            weights)


def _clone(args):
    states, *rest = args
    return ([t.clone() for t in states], *rest)


def run_both(args, **kwargs):
    """(kernel outputs, kernel states, reference outputs, reference states)."""
    got_args, want_args = _clone(args), _clone(args)
    got = pixelcnnpp_row(*got_args, impl="ext", **kwargs)
    want = pixelcnnpp_row_reference(*want_args)
    return got, got_args[0], want, want_args[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(12))
def test_op_matches_reference_float64(device, seed):
    args = random_row(seed, device)
    got, got_states, want, want_states = run_both(args)
    assert torch.equal(got[0], want[0])
    # Rounding only (summation orders differ; ~30 layers of random weights amplify it).
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-9)
    for g, w in zip(got_states, want_states):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)
    values, known = args[1], args[2]
    assert torch.equal(got[0].transpose(1, 2)[known], values.transpose(1, 2)[known])
    assert not torch.equal(got_states[0], args[0][0])  # the row's maps were written


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_op_matches_reference_float32(device, seed):
    # Every pixel known: float32 rounding cannot change a draw and so the later inputs.
    # Weights of a trained network's size (0.5 makes ~30 random layers amplify rounding).
    states, values, known, *rest = random_row(100 + seed, device, torch.float32, scale=0.25)
    args = (states, values, torch.ones_like(known), *rest)
    got, got_states, want, want_states = run_both(args)
    assert torch.equal(got[0], values)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    for g, w in zip(got_states, want_states):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_model_sized_row(device):
    # The benchmark model's sizes (F = 64, nr 2, RGB, 10 mixtures), batch 13: register
    # blocks of 4 images with a remainder, full vectors and shared-memory tiles.
    torch.manual_seed(0)
    model = PixelCNNpp(image_channels=3, image_size=16, nr_resnet=2, nr_filters=64, num_mixtures=10).eval().to(device)
    n, f, nr, width = 13, 64, 2, 16
    weights, bias = pack_row_weights(model, n, None, torch.float32)
    gen = torch.Generator().manual_seed(1)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device)  # noqa: E731
    states = [rand(n, 2, width >> s, state_depth(s, nr, f, 3)) for s in range(3)]
    values = torch.randint(0, 256, (n, 3, width), generator=gen).to(device)
    args = (states, values, torch.ones(n, width, dtype=torch.bool, device=device),
            torch.rand(width, 4, n, generator=gen, dtype=torch.float64).to(device), 1.0, bias, 8, 256, weights)
    got, got_states, want, want_states = run_both(args)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)
    for g, w in zip(got_states, want_states):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs(device):
    args = random_row(7, device)
    want = pixelcnnpp_row_reference(*_clone(args))
    strided = lambda t: t.transpose(0, -1).contiguous().transpose(0, -1) if t.dim() > 1 else t  # noqa: E731
    states, values, known, uniforms, temperature, bias, row, levels, weights = _clone(args)
    got = pixelcnnpp_row(states, strided(values), strided(known), strided(uniforms), temperature, strided(bias),
                         row, levels, PixelCNNppRowWeights(*map(strided, weights)), impl="ext")
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-9)


@requires_ext
def test_non_contiguous_state_is_refused():
    states, *rest = random_row(8, "cpu")
    states[1] = states[1].transpose(0, 1).contiguous().transpose(0, 1)
    with pytest.raises(ValueError, match="state1 must be contiguous"):
        torch.ops.genfast.pixelcnnpp_row(*states, *rest[:-1], list(rest[-1]))


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    # Deterministic mode fills fresh allocations with NaN: an unwritten output shows.
    for seed in range(4):
        args = random_row(200 + seed, device, torch.float32)
        values, params = pixelcnnpp_row(*args, impl="ext")
        assert torch.isfinite(params).all()
        assert ((values >= 0) & (values < args[7])).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_params(impl):
    states, values, known, *rest = random_row(300, "cpu", n=3)
    weights = rest[-1]
    bias = weights.head_bias.clone()
    bias[0] = float("nan")  # a mixture logit of every pixel
    args = (states, values, torch.zeros_like(known), *rest[:-1], weights._replace(head_bias=bias))
    got, params = pixelcnnpp_row(*_clone(args), impl=impl)
    assert (got == -1).all() and params[..., 0].isnan().all()
    # Known pixels keep their values.
    got, _ = pixelcnnpp_row(*_clone((states, values, torch.ones_like(known), *rest[:-1],
                                     weights._replace(head_bias=bias))), impl=impl)
    assert torch.equal(got, values)


@requires_ext
@pytest.mark.parametrize("seed", range(2))
def test_opcheck(seed):
    states, values, known, uniforms, temperature, bias, row, levels, weights = random_row(600 + seed, "cpu")
    args = (*states, values, known, uniforms, temperature, bias, row, levels, list(weights))
    torch.library.opcheck(torch.ops.genfast.pixelcnnpp_row.default, args)


@requires_ext
def test_torch_compile():
    states, values, known, uniforms, temperature, bias, row, levels, weights = random_row(
        650, "cpu", torch.float32)

    def run(s0, s1, s2, values, known, uniforms):
        return pixelcnnpp_row([s0, s1, s2], values, known, uniforms, temperature, bias, row, levels,
                              weights, impl="ext")

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    eager_states = [t.clone() for t in states]
    got = compiled(*states, values, known, uniforms)
    want = run(*eager_states, values, known, uniforms)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for g, w in zip(states, eager_states):  # the in-place updates survive compilation
        torch.testing.assert_close(g, w)


def _ok_case():
    states, values, known, uniforms, temperature, bias, row, levels, weights = random_row(
        11, "cpu", torch.float32)
    return dict(states=states, values=values, known=known, uniforms=uniforms,
                temperature=temperature, block_out_bias=bias, row=row, levels=levels, weights=weights)


def _weight(name, fn):
    return lambda c: c.update(weights=c["weights"]._replace(**{name: fn(getattr(c["weights"], name))}))


def _state(s, fn):
    return lambda c: c.update(states=[fn(t) if i == s else t for i, t in enumerate(c["states"])])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("change,error,match", [
    (lambda c: c.update(values=c["values"].float()), TypeError, "values must be"),
    (lambda c: c.update(values=c["values"][0]), ValueError, "values must be a non-empty"),
    (lambda c: c.update(values=c["values"][:, :, :-1], known=c["known"][:, :-1],
                        uniforms=c["uniforms"][:-1]), ValueError, "multiple of 4"),
    (lambda c: c.update(known=c["known"].long()), TypeError, "known must be"),
    (lambda c: c.update(known=c["known"][:, :-1]), ValueError, "known must have shape"),
    (lambda c: c.update(uniforms=c["uniforms"].float()), TypeError, "uniforms must be"),
    (lambda c: c.update(uniforms=c["uniforms"][:, :-1]), ValueError, "uniforms must have shape"),
    (lambda c: c.update(temperature=0.0), ValueError, "temperature must be"),
    (lambda c: c.update(row=-1), ValueError, "row must be"),
    (lambda c: c.update(levels=1), ValueError, "levels must be"),
    (lambda c: c.update(block_out_bias=c["block_out_bias"][:, 1:]), ValueError, "block_out_bias must have shape"),
    (_state(2, lambda t: t[:, :, :, 1:]), ValueError, "state2 must have shape"),
    (_state(0, lambda t: t.double()), TypeError, "state0 must have"),
    (_weight("u_up", lambda t: t[:, :, :2]), ValueError, "u_up must have shape"),
    (_weight("u_block_in", lambda t: t[:, 1:]), ValueError, "u_block_in must have shape"),
    (lambda c: c.update(states=c["states"][:2]), ValueError, "must hold 3 tensors"),
    (_weight("init_above", lambda t: t[1:]), ValueError, "init_above must be"),
    (_weight("block_in", lambda t: t[1:]), ValueError, "block_in must be"),
    (_weight("block_out", lambda t: t[:, 1:]), ValueError, "block_out must have shape"),
    (_weight("head", lambda t: t[:, 1:]), ValueError, "head must be"),
    (_weight("up", lambda t: t.double()), TypeError, "up must have"),
    (_weight("down_bias", lambda t: t.to("meta")), ValueError, "down_bias is on meta"),
    (lambda c: c.update(values=c["values"] + 100, known=torch.ones_like(c["known"])), ValueError,
     "known values must be levels"),
])
def test_bad_input(impl, change, error, match):
    case = _ok_case()
    change(case)
    with pytest.raises(error, match=match):
        pixelcnnpp_row(**case, impl=impl)


@requires_ext
def test_the_kernel_checks_its_arguments_too():
    # Direct op calls (bypassing the Python checks) get the wrappers' error types, not crashes.
    case = _ok_case()
    w = case["weights"]
    args = [*case["states"], case["values"], case["known"], case["uniforms"], 1.0, case["block_out_bias"],
            case["row"], case["levels"], list(w)]
    op = torch.ops.genfast.pixelcnnpp_row.default
    bad = list(args)
    bad[1] = case["states"][1][:, :, 1:]
    with pytest.raises(ValueError, match="state1 must have shape"):
        op(*bad)
    bad = list(args)
    bad[3] = case["values"] + 100
    bad[4] = torch.ones_like(case["known"])
    with pytest.raises(ValueError, match="is not a level"):
        op(*bad)
    bad = list(args)
    bad[8] = -2
    with pytest.raises(ValueError, match="row must be >= 0"):
        op(*bad)
    bad = list(args)
    bad[10] = list(w._replace(u_block_out=w.u_block_out.double()))
    with pytest.raises(TypeError, match="u_block_out must have init_above's dtype"):
        op(*bad)
    bad = list(args)
    bad[10] = list(w)[1:]
    with pytest.raises(ValueError, match="weights must hold 22 tensors"):
        op(*bad)
