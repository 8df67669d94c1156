"""gated_pixelcnn_row and GatedPixelCNN's cached sampler: cached == naive samples in
float64 over random architectures, teacher-forced logits == the full forward in
float32, completion, poisoned outputs, non-finite logits, cache memory, opcheck,
torch.compile and bad input."""
import random

import pytest
import torch
from conftest import DEVICES, requires_ext

from genfast.models import GatedPixelCNN
from genfast.ops import (GatedRowWeights, gated_pixelcnn_row, gated_pixelcnn_row_reference,
                         masked_conv2d_mask)

IMPLS = ["reference", pytest.param("ext", marks=requires_ext)]


def random_model(seed, dtype=torch.float64, device="cpu"):
    """A random small Gated PixelCNN (architecture, conditioning, image size) and the
    inputs of one sampling call."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    channels = rng.choice([1, 3])
    num_classes = rng.choice([None, 4])
    cond_channels = rng.choice([0, 2])
    size = (rng.randint(2, 6), rng.randint(1, 7))
    model = GatedPixelCNN(image_channels=channels, levels=rng.choice([2, 5, 16]),
                          hidden_channels=channels * rng.randint(1, 4), num_layers=rng.randint(1, 4),
                          kernel_size=rng.choice([3, 5, 7]), num_classes=num_classes,
                          cond_channels=cond_channels, embedding_dim=rng.choice([None, 3]),
                          image_size=size).to(device, dtype)
    # Larger weights than the initialisation so that every term matters in the logits.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    n = rng.randint(1, 5)
    kwargs = dict(labels=None if num_classes is None else torch.randint(0, num_classes, (n,)),
                  cond=None if not cond_channels else torch.randn(n, cond_channels, *size, dtype=dtype))
    return model, n, kwargs


def sample(model, n, kwargs, seed, **more):
    return model.sample(n, generator=torch.Generator().manual_seed(seed), **kwargs, **more)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(12))
def test_cached_samples_equal_naive_samples_in_float64(impl, seed):
    model, n, kwargs = random_model(seed)
    naive = sample(model, n, kwargs, seed, method="naive")
    cached = sample(model, n, kwargs, seed, impl=impl)  # cached is the default
    assert torch.equal(cached, naive)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(4))
def test_cached_completion_equals_naive_completion(impl, seed):
    model, n, kwargs = random_model(100 + seed)
    height, width = model.image_size
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, model.levels, (n, model.image_channels, max(1, height - 1), width), generator=gen)
    known = torch.rand(prefix.shape, generator=gen) < 0.6
    extra = dict(prefix=prefix, known_mask=known, temperature=0.7)
    naive = sample(model, n, kwargs, seed, method="naive", **extra)
    cached = sample(model, n, kwargs, seed, impl=impl, **extra)
    assert torch.equal(cached, naive)
    rows = prefix.shape[2]
    assert torch.equal(cached[:, :, :rows][known], prefix[known])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=DEVICES[1].marks)])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(6))
def test_teacher_forced_logits_equal_the_full_forward_in_float32(device, impl, seed):
    if device == "cuda" and impl == "reference":
        pytest.skip("the reference runs on the CPU leg")
    model, n, kwargs = random_model(200 + seed, torch.float32, device)
    kwargs = {k: (v.to(device) if v is not None else None) for k, v in kwargs.items()}
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.levels, (n, model.image_channels, *model.image_size), generator=gen).to(device)
    with torch.no_grad():
        want = model(x, **kwargs)
    got = model.cached_logits(x, **kwargs, impl=impl)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def random_row_case(seed, device="cpu", dtype=torch.float64):
    """Random packed weights and one row's arguments for the op itself."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    c, e = rng.choice([1, 3]), rng.randint(1, 3)
    n, width, levels = rng.randint(1, 9), rng.randint(1, 9), rng.choice([2, 7, 33])
    h, taps, layers = c * rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 4)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=dtype).to(device)

    def taps_mask(cin, cout, mask_type):  # live taps j-p..j of a 1 x (2T - 1) mask, (T, in, out)
        mask = masked_conv2d_mask(cin, cout, (1, 2 * taps - 1), mask_type, c, dtype=dtype, device=device)
        return mask[:, :, 0, :taps].permute(2, 1, 0)

    def pointwise_mask(cin, cout):  # a 1x1 mask 'B' as (in, out)
        return masked_conv2d_mask(cin, cout, 1, "B", c, dtype=dtype, device=device)[:, :, 0, 0].t()

    # Random weights under the colour masks the op relies on (group c sees groups <= c).
    weights = GatedRowWeights(rand(levels, e), rand(taps, c * e, 2 * h) * taps_mask(c * e, 2 * h, "A"),
                              rand(layers - 1, taps, h, 2 * h) * taps_mask(h, 2 * h, "B"),
                              rand(layers, h, h) * pointwise_mask(h, h), rand(layers, h),
                              rand(layers, h, h) * pointwise_mask(h, h), rand(layers, h),
                              rand(h, h) * pointwise_mask(h, h), rand(h),
                              rand(h, c * levels) * pointwise_mask(h, c * levels), rand(c * levels))
    prefix = torch.randint(0, levels, (n, c, width), generator=gen).to(device)
    known = (torch.rand((n, c, width), generator=gen) < 0.3).to(device)
    uniforms = torch.rand((width, c, n), generator=gen, dtype=torch.float64).to(device)
    return prefix, known, uniforms, 0.8, rand(layers, n, width, 2 * h), weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(10))
def test_op_equals_reference_on_random_weights(device, seed):
    # Unmasked random weights: the op computes exactly the documented row whatever the weights.
    args = random_row_case(seed, device)
    want_values, want_logits = gated_pixelcnn_row_reference(*args)
    values, logits = gated_pixelcnn_row(*args, impl="ext")
    torch.testing.assert_close(logits, want_logits, rtol=1e-10, atol=1e-10)
    assert torch.equal(values, want_values)


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    # Deterministic mode fills fresh allocations with NaN: an unwritten logit shows up,
    # and an unwritten value would not be a level.
    for seed in range(6):
        args = random_row_case(300 + seed, device, torch.float32)
        values, logits = gated_pixelcnn_row(*args, impl="ext")
        assert torch.isfinite(logits).all()
        assert ((values >= 0) & (values < logits.shape[-1])).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_logits_draw_minus_one_and_sample_raises(device):
    prefix, known, uniforms, temperature, row_bias, weights = random_row_case(400, device)
    bias = weights.head_bias2.clone()
    bias[0] = float("nan")  # colour 0's first level
    weights = weights._replace(head_bias2=bias)
    known = torch.zeros_like(known)
    values, _ = gated_pixelcnn_row(prefix, known, uniforms, temperature, row_bias, weights, impl="ext")
    want, _ = gated_pixelcnn_row_reference(prefix, known, uniforms, temperature, row_bias, weights)
    assert (values[:, 0] == -1).all()
    assert torch.equal(values, want)

    model = GatedPixelCNN(levels=5, hidden_channels=4, num_layers=2, kernel_size=3, image_size=3).double()
    with torch.no_grad():
        model.output_conv.bias[2] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite logits at row 0, column 0, colour 0"):
        model.sample(2)


def test_cache_memory_does_not_grow_with_the_image_height():
    # The cached sampler keeps, per layer, p + 1 rows of vertical input, one row of link
    # terms and (inside the op) one row of horizontal input: every tensor it holds
    # between rows is O(batch * layers * hidden * (p + 1) * width), whatever the height.
    import genfast.models.gated_pixelcnn as module

    sizes = {}
    original = module.gated_pixelcnn_row

    def spy(prefix, known, uniforms, temperature, row_bias, weights, **kwargs):
        sizes.setdefault("row_bias", set()).add(row_bias.numel())
        sizes.setdefault("check_levels", set()).add(kwargs.get("check_levels"))
        return original(prefix, known, uniforms, temperature, row_bias, weights, **kwargs)

    module.gated_pixelcnn_row = spy
    try:
        for height in (3, 12):
            model = GatedPixelCNN(levels=4, hidden_channels=6, num_layers=2, kernel_size=5, image_size=(height, 5))
            model.sample(2)
    finally:
        module.gated_pixelcnn_row = original
    assert sizes["row_bias"] == {2 * 2 * 5 * 12}  # L * N * W * 2H for both heights
    # The images are checked once per sample() call, not per row (a device->host sync).
    assert sizes["check_levels"] == {False}


@requires_ext
def test_opcheck():
    prefix, known, uniforms, temperature, row_bias, w = random_row_case(500)
    args = (prefix, known, uniforms, temperature, row_bias, list(w))
    torch.library.opcheck(torch.ops.genfast.gated_pixelcnn_row.default, args)


@requires_ext
def test_torch_compile():
    prefix, known, uniforms, temperature, row_bias, w = random_row_case(600, dtype=torch.float32)

    def row(prefix, known, uniforms, row_bias):
        return gated_pixelcnn_row(prefix, known, uniforms, temperature, row_bias, w, impl="ext")

    compiled = torch.compile(row, fullgraph=True, backend="aot_eager")
    got = compiled(prefix, known, uniforms, row_bias)
    want = row(prefix, known, uniforms, row_bias)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("change,error,match", [
    (lambda a: a.update(prefix=a["prefix"].int()), TypeError, "prefix must be int64"),
    (lambda a: a.update(known=a["known"].long()), TypeError, "known must be bool"),
    (lambda a: a.update(uniforms=a["uniforms"].float()), TypeError, "uniforms must be float64"),
    (lambda a: a.update(row_bias=a["row_bias"].double()), TypeError, "must have row_bias's dtype"),
    (lambda a: a.update(row_bias=a["row_bias"][:, :1]), ValueError, "row_bias must be"),
    (lambda a: a.update(uniforms=a["uniforms"][:1]), ValueError, "uniforms must have shape"),
    (lambda a: a.update(prefix=a["prefix"][:0]), ValueError, "non-empty"),
    (lambda a: a.update(temperature=0.0), ValueError, "temperature must be"),
    (lambda a: a.update(temperature=float("nan")), ValueError, "temperature must be"),
    (lambda a: a.update(prefix=a["prefix"] + 1000, known=torch.ones_like(a["known"])), ValueError,
     "prefix must hold levels"),
    (lambda a: a.update(weights=a["weights"]._replace(head_bias2=a["weights"].head_bias2[:-1])),
     ValueError, "head_bias2 must have shape"),
    (lambda a: a.update(weights=a["weights"]._replace(first_weight=a["weights"].first_weight[:, 1:])),
     ValueError, "first_weight must be"),
    (lambda a: a.update(weights=tuple(a["weights"])), TypeError, "must be a GatedRowWeights"),
])
def test_bad_input(impl, change, error, match):
    prefix, known, uniforms, temperature, row_bias, weights = random_row_case(700, dtype=torch.float32)
    a = dict(prefix=prefix, known=known, uniforms=uniforms, temperature=temperature, row_bias=row_bias,
             weights=weights)
    change(a)
    with pytest.raises(error, match=match):
        gated_pixelcnn_row(a["prefix"], a["known"], a["uniforms"], a["temperature"], a["row_bias"],
                           a["weights"], impl=impl)


@requires_ext
@pytest.mark.parametrize("change,error,match", [
    (lambda a: a.__setitem__(0, a[0].int()), TypeError, "prefix must be int64"),
    (lambda a: a.__setitem__(4, a[4][:, :, :1]), ValueError, "row_bias must have shape"),
    (lambda a: a[5].__setitem__(1, a[5][1][:, :1]), ValueError, "first_weight must have shape"),
    (lambda a: a[5].__setitem__(2, a[5][2].float()), TypeError, "must have row_bias's dtype"),
    (lambda a: a.__setitem__(3, -1.0), ValueError, "temperature must be"),
    (lambda a: a.__setitem__(5, a[5][:-1]), ValueError, "weights must hold 11 tensors"),
    (lambda a: a.__setitem__(0, a[0] + 100), ValueError, r"prefix must hold levels.*prefix\[\d+, \d+, \d+\] = "),
])
def test_bad_input_to_the_compiled_op(change, error, match):
    # The C++ checks guard direct calls of torch.ops.genfast.gated_pixelcnn_row too, with
    # the wrappers' exception types.
    prefix, known, uniforms, temperature, row_bias, w = random_row_case(800)
    args = [prefix, known.clone().fill_(True), uniforms, temperature, row_bias, list(w)]
    change(args)
    with pytest.raises(error, match=match):
        torch.ops.genfast.gated_pixelcnn_row(*args)


def test_bad_sampling_method():
    model = GatedPixelCNN(levels=4, hidden_channels=2, num_layers=1, kernel_size=3, image_size=3)
    with pytest.raises(ValueError, match="method must be 'cached' or 'naive'"):
        model.sample(1, method="fast")
    with pytest.raises(ValueError, match="impl must be"):
        model.sample(1, impl="cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_known_values_raise_and_unchecked_ones_read_as_minus_one(device):
    # A known value outside [0, levels) is user data: a ValueError from the op's host
    # check (never a device assert: the CUDA context keeps working), or with
    # check_levels=False (a sampler that checked once) a failed sub-pixel, -1.
    prefix, known, uniforms, temperature, row_bias, weights = random_row_case(900, device)
    prefix, known = prefix.clone(), known.clone()
    prefix[0, 0, 0], known[0, 0, 0] = 1000, True
    prefix[-1, -1, -1], known[-1, -1, -1] = -5, True
    args = (prefix, known, uniforms, temperature, row_bias)
    with pytest.raises(ValueError, match="prefix must hold levels"):
        gated_pixelcnn_row(*args, weights, impl="ext")
    with pytest.raises(ValueError, match=r"prefix\[0, 0, 0\] = (1000|-5) is not a level"):
        torch.ops.genfast.gated_pixelcnn_row(*args, list(weights))
    values, logits = gated_pixelcnn_row(*args, weights, impl="ext", check_levels=False)
    want_values, want_logits = gated_pixelcnn_row_reference(*args, weights)
    assert values[0, 0, 0] == -1 and values[-1, -1, -1] == -1
    assert torch.equal(values, want_values)
    torch.testing.assert_close(logits, want_logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_known_sub_pixels_are_not_drawn(device):
    # Teacher forcing: every sub-pixel known, so no draw happens; non-finite logits
    # (which would draw -1) do not matter.
    prefix, known, uniforms, temperature, row_bias, weights = random_row_case(950, device)
    weights = weights._replace(head_bias2=torch.full_like(weights.head_bias2, float("nan")))
    values, _ = gated_pixelcnn_row(prefix, torch.ones_like(known), uniforms, temperature, row_bias, weights,
                                   impl="ext")
    assert torch.equal(values, prefix)


@requires_ext
def test_cuda_shared_memory_counts_the_static_part():
    # The CUDA kernel's block holds (L + 3) H + 3 H / C values of dynamic and 8 x 32 of
    # static shared memory; their total decides the opt-in above 48 KiB. Float32, 3
    # colours, hidden 384, 28 layers: 48 KiB dynamic + 1 KiB static needs it.
    from genfast import _C

    assert _C._gated_row_shared_memory(3, 384, 28, 4) == (49152, 1024, True)
    assert _C._gated_row_shared_memory(3, 384, 27, 4) == (47616, 1024, False)
    assert _C._gated_row_shared_memory(3, 384, 27, 8) == (95232, 2048, True)


@pytest.mark.cuda
@pytest.mark.parametrize("device", DEVICES[1:])
def test_a_row_needing_more_than_48_kib_of_shared_memory_runs(device):
    c, h, layers, levels, taps, n, width = 3, 384, 28, 4, 2, 2, 3
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * 0.05

    weights = GatedRowWeights(rand(levels, 1), rand(taps, c, 2 * h), rand(layers - 1, taps, h, 2 * h),
                              rand(layers, h, h), rand(layers, h), rand(layers, h, h), rand(layers, h),
                              rand(h, h), rand(h), rand(h, c * levels), rand(c * levels))
    prefix = torch.randint(0, levels, (n, c, width), generator=gen)
    known = torch.ones((n, c, width), dtype=torch.bool)  # teacher forcing: comparable logits
    uniforms = torch.rand((width, c, n), generator=gen, dtype=torch.float64)
    args = (prefix, known, uniforms, 1.0, rand(layers, n, width, 2 * h))
    want_values, want_logits = gated_pixelcnn_row(*args, weights, impl="ext")
    values, logits = gated_pixelcnn_row(*[a.to(device) if isinstance(a, torch.Tensor) else a for a in args],
                                        GatedRowWeights(*[w.to(device) for w in weights]), impl="ext")
    assert torch.equal(values.cpu(), want_values)
    torch.testing.assert_close(logits.cpu(), want_logits, rtol=1e-4, atol=1e-4)
