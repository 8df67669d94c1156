"""gated_pixelcnn_row and GatedPixelCNN's cached sampler: cached == naive samples in
float64 over random architectures, teacher-forced logits == the full forward in
float32, completion, poisoned outputs, non-finite logits, cache memory, opcheck,
torch.compile and bad input."""
import random

import pytest
import torch
from conftest import DEVICES, requires_cuda, requires_ext

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
@pytest.mark.parametrize("kernel", ["auto", "per_image"])
def test_a_row_needing_more_than_48_kib_of_shared_memory_runs(monkeypatch, device, kernel):
    # The per-image kernel's block needs the opt-in; the batched one has no such limit.
    monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
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


# ---- the batched CUDA kernel ---------------------------------------------------------
# Its tiling (csrc/gated_row_tiles.h) is checked on the CPU through genfast._C, and its
# data flow (inline residual and skip slices, writers, zeroing between columns) by
# simulate_batched_row, a Python twin of the kernel's schedule run tile by tile. The
# kernel itself runs in the CUDA tests below (scripts/gpu_check.sh).

GATE, SKIP, HEAD1, HEAD2, DRAW = range(5)
TILE_IMAGES, TILE_COLUMNS = 8, 32
CUDA_KERNELS = ["auto", "batched", "phases", "per_image"]


def tile_shapes():
    # (batch, channels, hidden, levels, layers): batches 1/3/17, grey and RGB, groups that
    # are not multiples of the 32-column tile (14, 42, 1) and level counts around it.
    return [(1, 1, 14, 2, 1), (3, 3, 42, 33, 2), (17, 3, 126, 256, 4), (17, 1, 64, 7, 3),
            (9, 3, 3, 32, 1), (16, 3, 126, 256, 15)]


def tile_cover(tiles, kinds, layer, images, columns):
    """How often the tiles of `kinds` (and `layer`, unless None) cover each (image, column)."""
    count = torch.zeros(images, columns, dtype=torch.int64)
    for kind, tile_layer, image0, column0, _ in tiles:
        if kind in kinds and (layer is None or tile_layer == layer):
            count[image0:image0 + TILE_IMAGES, column0:column0 + TILE_COLUMNS] += 1
    return count


@requires_ext
@pytest.mark.parametrize("shape", tile_shapes())
def test_batched_tiles_cover_every_output_once(shape):
    from genfast import _C

    n, c, h, levels, layers = shape
    group = h // c
    phases, max_tiles, work = _C._gated_row_tiles(n, c, h, levels, layers, 5)
    assert len(phases) == layers + 3
    assert max_tiles == max(len(tiles) for tiles in phases)
    assert work == (layers + 3) * n * h + 5 * TILE_IMAGES * group
    for phase, tiles in enumerate(phases):
        for kind, layer, image0, column0, _ in tiles:
            assert 0 <= image0 < n and image0 % TILE_IMAGES == 0 and column0 % TILE_COLUMNS == 0
        if phase < layers:
            assert (tile_cover(tiles, {GATE}, phase, n, group) == 1).all()
            assert tile_cover(tiles, {GATE}, None, n, group).sum() == n * group
            want_skip = 1 if phase >= 1 else 0
            assert (tile_cover(tiles, {SKIP}, phase - 1, n, group) == want_skip).all()
            assert tile_cover(tiles, {SKIP}, None, n, group).sum() == want_skip * n * group
        elif phase == layers:
            assert (tile_cover(tiles, {HEAD1}, None, n, group) == 1).all()
        elif phase == layers + 1:
            assert (tile_cover(tiles, {HEAD2}, None, n, levels) == 1).all()
        else:
            assert (tile_cover(tiles, {DRAW}, None, n, 1) == 1).all()
        # Writers: exactly one per image tile where a slice is recomputed inline (gate
        # tiles of layers >= 1, head tiles 1), and it covers the whole group.
        writers = [t for t in tiles if t[4]]
        if (phase >= 1 and phase < layers) or phase == layers:
            kind = GATE if phase < layers else HEAD1
            assert all(t[0] == kind and t[3] == 0 for t in writers)
            assert sorted(t[2] for t in writers) == list(range(0, n, TILE_IMAGES))
        else:
            assert writers == []


@requires_ext
def test_batched_row_steps_walk_the_sub_pixels_in_order():
    from genfast import _C

    phases, channels, width = 6, 3, 4
    steps = [_C._gated_row_step(q, phases, channels) for q in range(width * channels * phases)]
    assert steps == [(j, c, p) for j in range(width) for c in range(channels) for p in range(phases)]
    assert _C._gated_row_step(2**40 + 5, 7, 3)[0] == (2**40 + 5) // 7 // 3  # 64-bit steps


@requires_ext
def test_batched_tiling_rejects_tile_counts_past_int():
    from genfast import _C

    with pytest.raises(ValueError, match="too many tiles for the CUDA kernel"):
        _C._gated_row_tiles(2**26, 1, 2**20, 2, 1, 1)


@requires_ext
def test_kernel_choice():
    from genfast import _C

    assert [_C._gated_row_kernel_choice(v) for v in ["", "auto", "batched", "phases", "per_image"]] == \
        ["auto", "auto", "batched", "phases", "per_image"]
    with pytest.raises(ValueError, match="GENFAST_GATED_ROW_KERNEL must be 'auto', 'batched', 'phases' or "
                                         "'per_image', got 'fast'"):
        _C._gated_row_kernel_choice("fast")


def simulate_batched_row(prefix, known, uniforms, temperature, row_bias, w, grid, reverse=False):
    """The batched kernel's schedule in torch ops: per sub-pixel and phase, block b runs
    tiles b, b + grid, ... of the phase (from genfast._C._gated_row_tiles) with its own
    slice buffer, the blocks one after the other (in reverse order with `reverse`, so
    that a block reading what another writes in the same phase would see a different
    value in one of the two orders)."""
    from genfast import _C
    from genfast.ops._draw import draw_from_logits

    n, c, width = prefix.shape
    levels, e = w.feature_table.shape
    layers, h = row_bias.shape[0], row_bias.shape[3] // 2
    taps, group, p = w.first_weight.shape[0], h // c, 2 * h
    pg, pad = p // c, taps - 1
    phases, _, _ = _C._gated_row_tiles(n, c, h, levels, layers, grid)
    new = row_bias.new_zeros
    input0, inputs = new(n, width + pad, c * e), new(max(layers - 1, 0), n, width + pad, h)
    gated, skip, skip_total, hidden = new(layers, n, h), new(n, h), new(n, h), new(n, h)
    slices = new(grid, TILE_IMAGES, group)
    values = torch.full_like(prefix, -2)
    logits = row_bias.new_full((n, c, width, levels), float("nan"))
    for j in range(width):
        cur = j + pad
        for colour in range(c):
            g = slice(colour * group, (colour + 1) * group)  # colour group's channels
            for phase, tiles in enumerate(phases):
                blocks = list(range(grid))[::-1] if reverse else range(grid)
                for b in blocks:
                    for kind, layer, image0, column0, writer in tiles[b::grid]:
                        im = slice(image0, min(image0 + TILE_IMAGES, n))
                        rows = im.stop - im.start
                        cols = torch.arange(column0, min(column0 + TILE_COLUMNS, levels if kind == HEAD2 else group))
                        sl = slices[b, :rows]
                        if kind == GATE:
                            k = c * e if layer == 0 else h
                            buf = input0 if layer == 0 else inputs[layer - 1]
                            x = buf[im, j:j + taps].clone()
                            if layer >= 1:
                                m = layer - 1
                                y = gated[m, im] @ w.residual_weight[m][:, g] + w.residual_bias[m, g]
                                if m >= 1:
                                    y = y + inputs[m - 1][im, cur, g]
                                sl.copy_(y)
                                if writer:
                                    buf[im, cur, g] = y
                                x[:, taps - 1, g] = sl
                            x = x.reshape(rows, taps * k)
                            wl = (w.first_weight if layer == 0 else w.horizontal_weight[layer - 1]).reshape(taps * k, p)
                            bias = row_bias[layer, im, j]
                            za = x @ wl[:, colour * pg + cols] + bias[:, colour * pg + cols]
                            zb = x @ wl[:, colour * pg + group + cols] + bias[:, colour * pg + group + cols]
                            gated[layer, im, colour * group + cols] = torch.tanh(za) * torch.sigmoid(zb)
                        elif kind == SKIP:
                            o = colour * group + cols
                            skip[im, o] += gated[layer, im] @ w.skip_weight[layer][:, o] + w.skip_bias[layer, o]
                        elif kind == HEAD1:
                            m = layers - 1
                            y = skip[im, g] + (gated[m, im] @ w.skip_weight[m][:, g] + w.skip_bias[m, g])
                            sl.copy_(y)
                            if writer:
                                skip_total[im, g] = y
                            x = skip_total[im].clone()
                            x[:, g] = sl
                            o = colour * group + cols
                            hidden[im, o] = torch.relu(torch.relu(x) @ w.head_weight1[:, o] + w.head_bias1[o])
                        elif kind == HEAD2:
                            o = colour * levels + cols
                            logits[im, colour, j, cols] = hidden[im] @ w.head_weight2[:, o] + w.head_bias2[o]
                        else:
                            for i in range(im.start, im.stop):
                                given = int(prefix[i, colour, j])
                                value = ((given if 0 <= given < levels else -1) if known[i, colour, j] else
                                         int(draw_from_logits(logits[i:i + 1, colour, j], uniforms[j, colour, i:i + 1],
                                                              temperature)[0]))
                                values[i, colour, j] = value
                                input0[i, cur, colour * e:(colour + 1) * e] = (
                                    w.feature_table[value] if value >= 0 else 0)
            if colour == c - 1:  # the column is done
                for t in (gated, skip, skip_total, hidden):
                    t.zero_()
    return values, logits


@requires_ext
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("grid,reverse", [(1, False), (2, True), (3, False), (64, True)])
def test_batched_schedule_equals_reference(seed, grid, reverse):
    # The kernel's data flow, tile by tile on the CPU: equal to the documented row
    # whatever the grid (blocks take tiles in turn) and the order of the blocks.
    args = random_row_case(1000 + seed)
    want_values, want_logits = gated_pixelcnn_row_reference(*args)
    values, logits = simulate_batched_row(*args, grid=grid, reverse=reverse)
    torch.testing.assert_close(logits, want_logits, rtol=1e-10, atol=1e-10)
    assert torch.equal(values, want_values)


@requires_ext
@pytest.mark.parametrize("shape", [(17, 3, 42), (9, 1, 33)])
@pytest.mark.parametrize("grid,reverse", [(1, False), (64, False), (64, True)])
def test_batched_schedule_with_several_column_tiles_equals_reference(shape, grid, reverse):
    # Groups of more than 32 channels and 33 levels: several column tiles share their
    # images, so the readers of an inline slice and its writer run in the same phase.
    args = cuda_row_case(1050 + sum(shape), *shape)
    want_values, want_logits = gated_pixelcnn_row_reference(*args)
    values, logits = simulate_batched_row(*args, grid=grid, reverse=reverse)
    torch.testing.assert_close(logits, want_logits, rtol=1e-10, atol=1e-10)
    assert torch.equal(values, want_values)


def to_device(args, device):
    return tuple(GatedRowWeights(*[t.to(device) for t in a]) if isinstance(a, GatedRowWeights)
                 else a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def cuda_row_case(seed, n, c, group, dtype=torch.float64, levels=33, layers=3, taps=3, e=1):
    """A row with the given sizes (random masked weights as random_row_case's)."""
    gen = torch.Generator().manual_seed(seed)
    h = c * group

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=dtype)

    def taps_mask(cin, cout, mask_type):
        return masked_conv2d_mask(cin, cout, (1, 2 * taps - 1), mask_type, c, dtype=dtype)[:, :, 0, :taps].permute(2, 1, 0)

    def pointwise_mask(cin, cout):
        return masked_conv2d_mask(cin, cout, 1, "B", c, dtype=dtype)[:, :, 0, 0].t()

    weights = GatedRowWeights(rand(levels, e), rand(taps, c * e, 2 * h) * taps_mask(c * e, 2 * h, "A") / taps,
                              rand(layers - 1, taps, h, 2 * h) * taps_mask(h, 2 * h, "B") / (taps * h) ** 0.5,
                              rand(layers, h, h) * pointwise_mask(h, h) / h ** 0.5, rand(layers, h),
                              rand(layers, h, h) * pointwise_mask(h, h) / h ** 0.5, rand(layers, h),
                              rand(h, h) * pointwise_mask(h, h) / h ** 0.5, rand(h),
                              rand(h, c * levels) * pointwise_mask(h, c * levels) / h ** 0.5, rand(c * levels))
    width = 5
    prefix = torch.randint(0, levels, (n, c, width), generator=gen)
    known = torch.rand((n, c, width), generator=gen) < 0.3
    uniforms = torch.rand((width, c, n), generator=gen, dtype=torch.float64)
    return prefix, known, uniforms, 0.9, rand(layers, n, width, 2 * h), weights


CUDA_SHAPES = [(1, 1, 14), (3, 3, 14), (17, 3, 42), (17, 1, 33), (8, 3, 1)]  # (batch, colours, group)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", CUDA_KERNELS)
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_kernels_equal_the_reference_in_float64(monkeypatch, kernel, shape):
    monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
    args = cuda_row_case(1100, *shape)
    want_values, want_logits = gated_pixelcnn_row_reference(*args)
    values, logits = gated_pixelcnn_row(*to_device(args, "cuda"), impl="ext")
    torch.testing.assert_close(logits.cpu(), want_logits, rtol=1e-10, atol=1e-10)
    assert torch.equal(values.cpu(), want_values)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", ["batched", "phases", "per_image"])
def test_cuda_every_output_is_written_by_each_kernel(monkeypatch, poisoned_allocations, kernel):
    # As test_every_output_is_written, for each kernel (the GPU check's sanitizer subsets
    # select tests by this name), with groups of more than one 32-column tile.
    monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
    for args in (random_row_case(310, "cuda", torch.float32), to_device(cuda_row_case(311, 9, 3, 42, torch.float32), "cuda")):
        values, logits = gated_pixelcnn_row(*args, impl="ext")
        assert torch.isfinite(logits).all()
        assert ((values >= 0) & (values < logits.shape[-1])).all()


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_batched_kernel_is_deterministic_and_grid_independent(monkeypatch, dtype):
    # The same sums in the same order whatever the grid: one cooperative launch, one
    # launch per phase (a grid of max_tiles blocks) and a second run agree bit for bit.
    args = to_device(cuda_row_case(1200, 17, 3, 42, dtype=dtype, layers=4), "cuda")
    runs = []
    for kernel in ("batched", "batched", "phases"):
        monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
        runs.append(gated_pixelcnn_row(*args, impl="ext"))
    for values, logits in runs[1:]:
        assert torch.equal(values, runs[0][0]) and torch.equal(logits, runs[0][1])


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", ["batched", "per_image"])
def test_cuda_teacher_forcing_and_known_values(monkeypatch, kernel):
    monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
    prefix, known, uniforms, temperature, row_bias, weights = cuda_row_case(1300, 17, 3, 14)
    for known in (torch.ones_like(known), known):
        args = (prefix, known, uniforms, temperature, row_bias, weights)
        want_values, want_logits = gated_pixelcnn_row_reference(*args)
        values, logits = gated_pixelcnn_row(*to_device(args, "cuda"), impl="ext")
        assert torch.equal(values.cpu(), want_values)
        assert torch.equal(values.cpu()[known], prefix[known])
        torch.testing.assert_close(logits.cpu(), want_logits, rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", ["auto", "per_image"])
@pytest.mark.parametrize("channels,n", [(1, 1), (3, 3), (3, 17)])
def test_cuda_cached_samples_equal_naive_samples_in_float64(monkeypatch, kernel, channels, n):
    monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
    torch.manual_seed(channels * 100 + n)
    model = GatedPixelCNN(image_channels=channels, levels=16, hidden_channels=channels * 14, num_layers=3,
                          kernel_size=5, image_size=(4, 6)).to("cuda", torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    naive = model.sample(n, generator=torch.Generator().manual_seed(n), method="naive")
    cached = model.sample(n, generator=torch.Generator().manual_seed(n), impl="ext")
    assert torch.equal(cached, naive)
    on_cpu = model.cpu().sample(n, generator=torch.Generator().manual_seed(n), impl="ext")
    assert torch.equal(cached.cpu(), on_cpu)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", ["auto", "per_image"])
def test_cuda_graph_capture_of_a_row(monkeypatch, kernel):
    # With check_levels=False the op never synchronises with the host, so a row is
    # capturable (the cooperative launch included) and a replay on new inputs equals
    # an eager call.
    monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
    first = to_device(cuda_row_case(1400, 9, 3, 14, dtype=torch.float32), "cuda")
    second = to_device(cuda_row_case(1401, 9, 3, 14, dtype=torch.float32), "cuda")
    static = [a.clone() if isinstance(a, torch.Tensor) else a for a in first[:5]]
    weights = first[5]

    def row():
        return gated_pixelcnn_row(*static, weights, impl="ext", check_levels=False)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        row()  # warm-up outside the capture (occupancy lookup, allocator)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_values, out_logits = row()
    for case in (first, second):
        for s, a in zip(static, case[:5]):
            if isinstance(s, torch.Tensor):
                s.copy_(a)
        graph.replay()
        want_values, want_logits = gated_pixelcnn_row(*case[:5], weights, impl="ext", check_levels=False)
        assert torch.equal(out_values, want_values)
        assert torch.equal(out_logits, want_logits)
