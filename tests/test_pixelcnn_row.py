"""pixelcnn_row and PixelCNN's cached sampler: cached == naive samples on random
architectures, the op's logits against the full forward (teacher forcing), the kernels
against the reference, poisoned outputs, opcheck, bad input and the cache memory."""
import functools
import random

import pytest
import torch
from conftest import DEVICES, requires_ext

import genfast.models.pixelcnn as pixelcnn_module
from genfast.models import PixelCNN
from genfast.ops import PixelCNNRowWeights, pixelcnn_row, pixelcnn_row_reference

IMPLS = ["reference"] + [pytest.param("ext", marks=requires_ext)]


def random_model(seed, dtype=torch.float64):
    """A random small PixelCNN with sharpened output distributions, and a sampling case."""
    rng = random.Random(seed)
    channels = rng.choice([1, 3])
    model = PixelCNN(image_channels=channels, levels=rng.randint(2, 12), hidden_channels=channels * rng.randint(1, 4),
                     num_blocks=rng.randint(0, 3), input_kernel_size=rng.choice([3, 5, 7]),
                     num_classes=rng.choice([None, 3]), embedding_dim=rng.choice([None, rng.randint(1, 3)]),
                     image_size=(rng.randint(1, 6), rng.randint(1, 7)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
        model.output_conv.weight.mul_(3)
    model.to(dtype)
    n = rng.randint(1, 5)
    h, w = model.image_size
    labels = None if model.num_classes is None else torch.randint(0, 3, (n,))
    prefix = known_mask = None
    if rng.random() < 0.5:
        rows = rng.randint(1, h)
        prefix = torch.randint(0, model.levels, (n, channels, rows, w))
        known_mask = torch.rand(n, channels, rows, w) < 0.6
    temperature = rng.choice([1.0, 0.7, 1.6])
    return model, dict(n=n, labels=labels, prefix=prefix, known_mask=known_mask,
                       temperature=temperature)


def sample(model, case, device, method, impl=None):
    model = model.to(device)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return model.sample(case["n"], labels=to(case["labels"]), prefix=to(case["prefix"]),
                        known_mask=to(case["known_mask"]), temperature=case["temperature"],
                        generator=torch.Generator(device).manual_seed(7), device=device,
                        method=method, impl=impl).cpu()


@functools.lru_cache(maxsize=None)
def naive_sample(seed, device):
    model, case = random_model(seed)
    return sample(model, case, device, "naive")


SEEDS = range(14)


@pytest.mark.parametrize("seed", SEEDS)
def test_cached_reference_equals_naive(seed):
    model, case = random_model(seed)
    got = sample(model, case, "cpu", "cached", "reference")
    assert torch.equal(got, naive_sample(seed, "cpu"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
def test_cached_ext_equals_naive(device, seed):
    model, case = random_model(seed)
    got = sample(model, case, device, "cached", "ext")
    want = naive_sample(seed, device)
    assert torch.equal(got, want)
    if case["prefix"] is not None:  # known sub-pixels are kept
        rows = case["prefix"].shape[2]
        mask = case["known_mask"]
        assert torch.equal(got[:, :, :rows][mask], case["prefix"][mask])


def test_the_random_cases_cover_the_architectures():
    cases = [random_model(seed) for seed in SEEDS]
    models = [m for m, _ in cases]
    assert {m.image_channels for m in models} == {1, 3}
    assert {m.input_kernel_size for m in models} == {3, 5, 7}
    assert {m.num_blocks for m in models} == {0, 1, 2, 3}
    assert {m.embedding_dim is None for m in models} == {True, False}
    assert {m.num_classes is None for m in models} == {True, False}
    assert {c["prefix"] is None for _, c in cases} == {True, False}
    assert {c["temperature"] for _, c in cases} > {1.0}


def recorded_rows(monkeypatch):
    """Records the arguments and results of every pixelcnn_row call of the sampler."""
    calls = []
    original = pixelcnn_module.pixelcnn_row

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, out))
        return out

    monkeypatch.setattr(pixelcnn_module, "pixelcnn_row", spy)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels,embedding", [(1, None), (3, None), (3, 2)])
def test_float32_logits_equal_the_full_forward(device, channels, embedding, monkeypatch):
    # Teacher forcing: every sub-pixel known, so the op's logits at each row must be the
    # full forward's logits there.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(channels)
    model = PixelCNN(image_channels=channels, levels=11, hidden_channels=6 * channels, num_blocks=3, input_kernel_size=5,
                     num_classes=4, embedding_dim=embedding, image_size=(6, 7)).to(device)
    n = 5
    x = torch.randint(0, 11, (n, channels, 6, 7), device=device)
    labels = torch.randint(0, 4, (n,), device=device)
    got = model.cached_logits(x, labels, impl="ext")
    with torch.no_grad():
        want = model(x, labels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max())
    # The sampler with the whole image as prefix keeps it.
    assert torch.equal(model.sample(n, labels=labels, prefix=x, impl="ext"), x)


@pytest.mark.parametrize("impl", IMPLS)
def test_cache_memory_is_independent_of_the_height(impl, monkeypatch):
    # Between rows the sampler keeps only reduce_rows (B, N, W, hidden) (and reads the last
    # input_kernel // 2 image rows): the same tensors whatever the image height.
    shapes = {}
    for height in (3, 9):
        calls = recorded_rows(monkeypatch)
        model = PixelCNN(image_channels=3, levels=4, hidden_channels=6, num_blocks=2, input_kernel_size=5,
                         image_size=(height, 5))
        model.sample(2, impl=impl)
        assert len(calls) == height
        shapes[height] = {tuple(t.shape) for args, out in calls for t in (args[4], args[5], out[2])}
        monkeypatch.undo()
    assert shapes[3] == shapes[9] == {(2, 5, 12), (2, 2, 5, 6)}


# ---- the op against its reference on random weights --------------------------------

def random_row(seed, device, dtype=torch.float64):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n, c, w = rng.randint(1, 11), rng.choice([1, 3]), rng.randint(1, 9)
    levels, f, pad = rng.randint(2, 20), rng.randint(1, 3), rng.randint(0, 3)
    wide, hidden, blocks = c * rng.randint(1, 7), c * rng.randint(1, 5), rng.randint(0, 3)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) / 2).to(device, dtype)

    weights = PixelCNNRowWeights(
        rand(levels, f), rand((pad + 1) * c * f, wide), rand(blocks, wide, hidden), rand(blocks, hidden),
        rand(blocks, 2 * hidden, hidden), rand(blocks, hidden, wide), rand(blocks, wide), rand(wide, wide),
        rand(wide), 3 * rand(wide, c * levels), rand(c * levels))
    values = torch.randint(0, levels, (n, c, w), generator=gen).to(device)
    known = (torch.rand(n, c, w, generator=gen) < 0.4).to(device)
    uniforms = torch.rand(w, c, n, generator=gen, dtype=torch.float64).to(device)
    return (values, known, uniforms, rng.choice([1.0, 0.6]), rand(n, w, wide),
            rand(blocks, n, w, hidden), weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(12))
def test_op_matches_reference_float64(device, seed):
    args = random_row(seed, device)
    got = pixelcnn_row(*args, impl="ext")
    want = pixelcnn_row_reference(*args)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[2], want[2], rtol=1e-12, atol=1e-12)
    known = args[1]
    assert torch.equal(got[0][known], args[0][known])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_op_matches_reference_float32(device, seed):
    # Every sub-pixel known: float32 rounding cannot change a draw and so the later inputs.
    values, known, *rest = random_row(100 + seed, device, torch.float32)
    args = (values, torch.ones_like(known), *rest)
    got = pixelcnn_row(*args, impl="ext")
    want = pixelcnn_row_reference(*args)
    assert torch.equal(got[0], values)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_model_sized_row(device):
    # Widths that are not multiples of the vector and register-block sizes, batch 13.
    gen = torch.Generator().manual_seed(0)
    n, c, w, levels, f, pad, wide, hidden, blocks = 13, 3, 11, 256, 1, 3, 3 * 45, 3 * 23, 2
    rand = lambda *shape: (0.1 * torch.randn(*shape, generator=gen)).to(device)  # noqa: E731
    weights = PixelCNNRowWeights(
        rand(levels, f), rand((pad + 1) * c * f, wide), rand(blocks, wide, hidden), rand(blocks, hidden),
        rand(blocks, 2 * hidden, hidden), rand(blocks, hidden, wide), rand(blocks, wide), rand(wide, wide),
        rand(wide), rand(wide, c * levels), rand(c * levels))
    values = torch.randint(0, levels, (n, c, w), generator=gen).to(device)
    args = (values, torch.ones(n, c, w, dtype=torch.bool, device=device),
            torch.rand(w, c, n, generator=gen, dtype=torch.float64).to(device), 1.0,
            rand(n, w, wide), rand(blocks, n, w, hidden), weights)
    got = pixelcnn_row(*args, impl="ext")
    want = pixelcnn_row_reference(*args)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs(device):
    values, known, uniforms, temperature, input_bias, block_bias, weights = random_row(7, device)
    want = pixelcnn_row_reference(values, known, uniforms, temperature, input_bias, block_bias, weights)
    strided = lambda t: t.transpose(0, -1).contiguous().transpose(0, -1) if t.dim() > 1 else t  # noqa: E731
    weights = PixelCNNRowWeights(*(strided(t) for t in weights))
    got = pixelcnn_row(strided(values), strided(known), strided(uniforms), temperature, strided(input_bias),
                       strided(block_bias), weights, impl="ext")
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    # Deterministic mode fills fresh allocations with NaN: an unwritten output shows.
    for seed in range(6):
        args = random_row(200 + seed, device, torch.float32)
        values, logits, reduce_rows = pixelcnn_row(*args, impl="ext")
        levels = args[-1].feature_table.shape[0]
        assert torch.isfinite(logits).all() and torch.isfinite(reduce_rows).all()
        assert ((values >= 0) & (values < levels)).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_logits(impl):
    args = random_row(300, "cpu")
    weights = args[-1]
    levels = weights.feature_table.shape[0]
    bias = weights.output_bias.clone()
    bias[-1] = float("nan")  # the last colour's logits
    args = (*args[:1], torch.zeros_like(args[1]), *args[2:-1], weights._replace(output_bias=bias))
    values = pixelcnn_row(*args, impl=impl)[0]
    assert (values[:, -1] == -1).all() and (values[:, :-1] >= 0).all() and (values < levels).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_sampler_names_the_first_non_finite_sub_pixel(impl):
    torch.manual_seed(0)
    model = PixelCNN(image_channels=3, levels=5, hidden_channels=6, num_blocks=1, input_kernel_size=3, image_size=(3, 4))
    with torch.no_grad():
        model.output_conv.bias[5:10] = float("nan")  # colour 1
    with pytest.raises(RuntimeError, match="non-finite logits at row 0, column 0, colour 1"):
        model.sample(2, impl=impl)


@requires_ext
@pytest.mark.parametrize("seed", range(2))
def test_opcheck(seed):
    values, known, uniforms, temperature, input_bias, block_bias, weights = random_row(600 + seed, "cpu")
    args = (values, known, uniforms, temperature, input_bias, block_bias, list(weights))
    torch.library.opcheck(torch.ops.genfast.pixelcnn_row.default, args)


@requires_ext
def test_torch_compile():
    values, known, uniforms, temperature, input_bias, block_bias, weights = random_row(650, "cpu", torch.float32)

    def row(values, known, uniforms, input_bias, block_bias):
        return pixelcnn_row(values, known, uniforms, temperature, input_bias, block_bias, weights, impl="ext")

    compiled = torch.compile(row, fullgraph=True, backend="aot_eager")
    got = compiled(values, known, uniforms, input_bias, block_bias)
    want = row(values, known, uniforms, input_bias, block_bias)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])


def _ok_case():
    values, known, uniforms, temperature, input_bias, block_bias, weights = random_row(11, "cpu", torch.float32)
    return dict(values=values, known=known, uniforms=uniforms, temperature=temperature,
                input_bias=input_bias, block_bias=block_bias, weights=weights)


def _weight(name, fn):
    return lambda c: c.update(weights=c["weights"]._replace(**{name: fn(getattr(c["weights"], name))}))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("change,error,match", [
    (lambda c: c.update(values=c["values"].float()), TypeError, "values must be"),
    (lambda c: c.update(values=c["values"][0]), ValueError, "values must be a non-empty"),
    (lambda c: c.update(known=c["known"].long()), TypeError, "known must be"),
    (lambda c: c.update(known=c["known"][:, :, :-1]), ValueError, "known must have shape"),
    (lambda c: c.update(uniforms=c["uniforms"].float()), TypeError, "uniforms must be"),
    (lambda c: c.update(uniforms=c["uniforms"][:-1]), ValueError, "uniforms must have shape"),
    (lambda c: c.update(temperature=0.0), ValueError, "temperature must be"),
    (lambda c: c.update(temperature=float("nan")), ValueError, "temperature must be"),
    (lambda c: c.update(input_bias=c["input_bias"][:, 1:]), ValueError, "input_bias must have shape"),
    (lambda c: c.update(input_bias=c["input_bias"].double()), TypeError, "input_bias must have"),
    (lambda c: c.update(block_bias=c["block_bias"][None]), ValueError, "block_bias must have shape"),
    (_weight("input_weight", lambda t: t[None]), ValueError, "input_weight must be"),
    (_weight("feature_table", lambda t: t[:1]), ValueError, "feature_table must be"),
    (_weight("reduce_weight", lambda t: t[:, 1:]), ValueError, "reduce_weight must be"),
    (_weight("conv_weight", lambda t: t[:, 1:]), ValueError, "conv_weight must have shape"),
    (_weight("output_weight", lambda t: t[:, 1:]), ValueError, "output_weight must have shape"),
    (_weight("hidden_bias", lambda t: t.double()), TypeError, "hidden_bias must have"),
    (_weight("output_bias", lambda t: t.to("meta")), ValueError, "output_bias is on meta"),
    (lambda c: c.update(values=c["values"] + 100, known=torch.ones_like(c["known"])), ValueError,
     "known values must be levels"),
])
def test_bad_input(impl, change, error, match):
    case = _ok_case()
    change(case)
    with pytest.raises(error, match=match):
        pixelcnn_row(**case, impl=impl)


@requires_ext
def test_the_kernel_checks_its_arguments_too():
    # Direct op calls (bypassing the Python checks) get the wrappers' error types, not crashes.
    case = _ok_case()
    w = case["weights"]
    args = [case["values"], case["known"], case["uniforms"], 1.0, case["input_bias"], case["block_bias"],
            list(w)]
    op = torch.ops.genfast.pixelcnn_row.default
    bad = list(args)
    bad[4] = case["input_bias"][:, 1:]
    with pytest.raises(ValueError, match="input_bias must have shape"):
        op(*bad)
    bad = list(args)
    bad[0] = case["values"] + 100
    bad[1] = torch.ones_like(case["known"])
    with pytest.raises(ValueError, match="is not a level"):
        op(*bad)
    bad = list(args)
    bad[6] = list(w._replace(reduce_weight=w.reduce_weight.double()))
    with pytest.raises(TypeError, match="reduce_weight must have input_weight's dtype"):
        op(*bad)
    bad = list(args)
    bad[6] = list(w)[1:]
    with pytest.raises(ValueError, match="weights must hold 11 tensors"):
        op(*bad)


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_known_values_raise_and_unchecked_ones_read_as_minus_one(device):
    # A known value outside [0, levels) is user data: a ValueError from the op's host
    # check (never a device assert: the CUDA context keeps working), or with
    # check_levels=False (a sampler that checked once) a failed sub-pixel, -1.
    values, known, uniforms, temperature, input_bias, block_bias, weights = random_row(40, device)
    values, known = values.clone(), known.clone()
    values[0, 0, 0], known[0, 0, 0] = 1000, True
    values[-1, -1, -1], known[-1, -1, -1] = -3, True
    args = (values, known, uniforms, temperature, input_bias, block_bias)
    with pytest.raises(ValueError, match="known values must be levels"):
        pixelcnn_row(*args, weights, impl="ext")
    with pytest.raises(ValueError, match=r"values\[0, 0, 0\] = (1000|-3) is not a level"):
        torch.ops.genfast.pixelcnn_row(*args, list(weights))
    got = pixelcnn_row(*args, weights, impl="ext", check_levels=False)
    want = pixelcnn_row_reference(*args, weights)
    assert got[0][0, 0, 0] == -1 and got[0][-1, -1, -1] == -1
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])


def test_the_sampler_checks_the_images_once_not_per_row(monkeypatch):
    # Every row op call skips the known-value check (a device->host sync per row on a
    # GPU): sample() checked the prefix once.
    calls = recorded_rows_kwargs(monkeypatch)
    model = PixelCNN(channels=3, levels=4, hidden=6, num_blocks=1, input_kernel=3, image_size=(4, 3))
    model.sample(2, prefix=torch.randint(0, 4, (2, 3, 2, 3)))
    assert len(calls) == 4 and all(kwargs.get("check_levels") is False for kwargs in calls)


def recorded_rows_kwargs(monkeypatch):
    calls = []
    original = pixelcnn_module.pixelcnn_row

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(pixelcnn_module, "pixelcnn_row", spy)
    return calls
