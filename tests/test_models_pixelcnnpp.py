"""genfast.models.PixelCNNpp: shapes, causality (every position, exact in float64), the
loss against the composite DMOL formula, naive and cached sampling (the same images in
float64; teacher-forced parameters equal the full forward), training, checkpoints."""
import math

import pytest
import torch

import genfast.training.autoregressive as gtrain
from genfast.data import ImageData
from genfast.models import MODELS, PixelCNNpp, build_model, load_model, sampling_uniforms
from genfast.models.pixelcnnpp import dropout
from genfast.ops.dmol import dmol_loss_reference, dmol_sample_reference

# impl: the compiled kernels ("auto": the cached sampler's pixelcnnpp_row, dmol_loss,
# concat_elu) or their PyTorch references.
IMPLS = ("auto", "reference")


def make(channels=1, *, levels=16, nr_resnet=1, nr_filters=8, num_mixtures=3, num_classes=None,
         size=8, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = PixelCNNpp(image_channels=channels, levels=levels, nr_resnet=nr_resnet, nr_filters=nr_filters,
                       num_mixtures=num_mixtures, dropout=0.0, num_classes=num_classes, image_size=size)
    # Random biases too (zeros at init would hide a bias added where it must not be).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return model.to(dtype).eval()


def images(n, channels, size, levels=16, seed=1):
    return torch.randint(0, levels, (n, channels, size, size), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels,labels", [(1, None), (3, None), (3, 4)])
def test_shapes_and_config(channels, labels):
    model = make(channels, num_classes=labels, size=12)
    x = images(2, channels, 12)
    y = None if labels is None else torch.tensor([0, 3])
    params = model(x, y)
    assert params.shape == (2, (3 if channels == 1 else 10) * 3, 12, 12)
    assert params.dtype == torch.float64 and torch.isfinite(params).all()
    # Any multiple-of-4 size runs, not only image_size.
    assert model(images(1, channels, 8), None if y is None else y[:1]).shape[2:] == (8, 8)
    assert model(images(1, channels, 16)[:, :, :4], None if y is None else y[:1]).shape[2:] == (4, 16)
    rebuilt = PixelCNNpp(**model.config)
    assert rebuilt.config == model.config
    assert build_model("pixelcnnpp", model.config).config == model.config and MODELS["pixelcnnpp"] is PixelCNNpp


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size must be multiples of 4"):
        PixelCNNpp(image_size=6)
    with pytest.raises(ValueError, match="image_channels must be 1"):
        PixelCNNpp(image_channels=2, image_size=8)
    with pytest.raises(ValueError, match="dropout must be"):
        PixelCNNpp(dropout=1.0, image_size=8)
    with pytest.raises(ValueError, match="nr_resnet must be a positive int"):
        PixelCNNpp(nr_resnet=0, image_size=8)
    with pytest.raises(TypeError):
        PixelCNNpp(1)
    model = make()
    with pytest.raises(ValueError, match="multiples of 4"):
        model(images(1, 1, 6))
    with pytest.raises(TypeError, match="integer levels"):
        model(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="labels given but the model is unconditional"):
        model(images(1, 1, 8), torch.tensor([0]))


def test_dropout_keeps_nn_dropouts_rule():
    # Each element kept with probability 1 - p, scaled by 1 / (1 - p); identity in eval
    # mode and at p = 0; impl="reference" is F.dropout itself (same generator draws).
    t = torch.randn(64, 32, 16, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    out = dropout(t, 0.3, True)
    kept = out != 0
    assert abs(kept.double().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(out[kept], t[kept] / 0.7)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert dropout(t, 0.3, False) is t and dropout(t, 0.0, True) is t
    torch.manual_seed(1)
    again = dropout(t, 0.3, True)
    torch.manual_seed(1)
    assert torch.equal(dropout(t, 0.3, True), again)
    torch.manual_seed(2)
    ref = dropout(t, 0.3, True, impl="reference")
    torch.manual_seed(2)
    assert torch.equal(ref, torch.nn.functional.dropout(t, 0.3, True))
    g = torch.randn_like(t)
    x = t.clone().requires_grad_()
    torch.manual_seed(3)
    y = dropout(x, 0.3, True)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * (y != 0) / 0.7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", [1, 3])
def test_memory_format_changes_only_the_layout(impl, channels):
    # Channels-last activations (the default on AVX-512 CPUs) give the NCHW model's loss
    # and gradients.
    x = images(2, channels, 8)
    labels = torch.tensor([1, 0])
    results = []
    for fmt in ("contiguous", "channels_last", "auto"):
        model = make(channels, num_classes=2, nr_filters=6, seed=5)
        model.memory_format = fmt
        model.impl = impl
        assert PixelCNNpp(**model.config).config == model.config
        if fmt == "channels_last":
            assert model(x, labels).is_contiguous(memory_format=torch.channels_last)
        loss = model.loss(x, labels)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_causal_at_every_position(channels):
    """Changing pixel (i, j) (all its colours) leaves the parameters of (i, j) and of
    every earlier pixel bit-identical, and changes those of its right neighbour (the
    pixel below at the end of a row: a small model's receptive field does not reach
    from (i + 1, 0) back to the end of row i)."""
    size = 8
    model = make(channels, size=size, nr_resnet=2 if channels == 1 else 1)
    x = images(1, channels, size)
    base = model(x)
    for i in range(size):
        for j in range(size):
            y = x.clone()
            y[:, :, i, j] = (y[:, :, i, j] + 5) % 16
            out = model(y)
            flat_base, flat_out = base.flatten(2), out.flatten(2)
            k = i * size + j
            assert torch.equal(flat_base[:, :, :k + 1], flat_out[:, :, :k + 1]), (i, j)
            after = k + 1 if j + 1 < size else k + size
            if after < size * size:
                assert not torch.equal(flat_base[:, :, after], flat_out[:, :, after]), (i, j)


@pytest.mark.parametrize("channels", [1, 3])
def test_loss_is_the_composite_dmol_formula(channels):
    model = make(channels, num_classes=3, size=8)
    x = images(3, channels, 8)
    labels = torch.tensor([0, 1, 2])
    expected = dmol_loss_reference(model(x, labels), x, num_mixtures=3, levels=16) / channels
    torch.testing.assert_close(model.loss(x, labels), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.bits_per_dim(x, labels), expected / math.log(2), rtol=1e-12, atol=1e-12)
    loss = model.float().loss(x, labels)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def full_forward_sample(model, n, labels, u, prefix=None, known=None, temperature=1.0):
    """An independent sampler: the whole image through forward for every pixel."""
    c, (h, w) = model.image_channels, model.image_size
    x = torch.zeros((n, c, h, w), dtype=torch.long)
    u = u.permute(3, 2, 0, 1)
    for i in range(h):
        for j in range(w):
            params = model(x, labels)[:, :, i:i + 1, j:j + 1]
            value = dmol_sample_reference(params, u[:, :, i:i + 1, j:j + 1], num_mixtures=model.num_mixtures,
                                          levels=model.levels, temperature=temperature)[:, :, 0, 0]
            if prefix is not None and i < prefix.shape[2]:
                value = torch.where(known[:, :, i, j], prefix[:, :, i, j], value)
            x[:, :, i, j] = value
    return x


@pytest.mark.parametrize("channels,classes,method,impl", [
    (1, None, "cached", "auto"), (1, None, "cached", "reference"), (1, None, "naive", "auto"),
    (3, 3, "cached", "auto"), (3, 3, "cached", "reference")])
def test_sampling_is_the_full_forward_sampler(channels, classes, method, impl):
    model = make(channels, num_classes=classes, size=8)
    labels = None if classes is None else torch.tensor([0, 2])
    got = model.sample(2, labels=labels, generator=torch.Generator().manual_seed(3), method=method,
                       temperature=0.8, impl=impl)
    u = sampling_uniforms(2, channels + 1, 8, 8, torch.Generator().manual_seed(3))
    want = full_forward_sample(model, 2, labels, u, temperature=0.8)
    assert torch.equal(got, want)
    assert got.min() >= 0 and got.max() < 16 and got.unique().numel() > 3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", [1, 3])
def test_cached_equals_naive_with_completion(channels, impl):
    model = make(channels, num_classes=2, size=8)
    labels = torch.tensor([1, 0, 1])
    prefix = images(3, channels, 8)[:, :, :5]
    known = torch.rand((3, 1, 5, 8), generator=torch.Generator().manual_seed(0)) < 0.6
    samples = {method: model.sample(3, labels=labels, prefix=prefix, known_mask=known,
                                    generator=torch.Generator().manual_seed(7), method=method, impl=impl)
               for method in ("cached", "naive")}
    assert torch.equal(samples["cached"], samples["naive"])
    kept = known.expand(prefix.shape)
    assert torch.equal(samples["cached"][:, :, :5][kept], prefix[kept])
    assert not torch.equal(samples["cached"][:, :, :5][~kept], prefix[~kept])


def test_known_mask_must_cover_whole_pixels():
    model = make(3)
    prefix = images(1, 3, 8)[:, :, :2]
    mask = torch.ones_like(prefix, dtype=torch.bool)
    mask[0, 1, 0, 3] = False
    for method in ("cached", "naive"):
        with pytest.raises(ValueError, match="same for every colour of a pixel"):
            model.sample(1, prefix=prefix, known_mask=mask, method=method)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", [1, 3])
def test_teacher_forced_cached_params_equal_the_forward_float32(channels, impl):
    model = make(channels, num_classes=3, size=16, nr_resnet=2, nr_filters=16, dtype=torch.float32)
    x = images(2, channels, 16)
    labels = torch.tensor([2, 0])
    params = model.cached_params(x, labels, impl=impl)
    assert not params.is_inference()  # the sampler's inference_mode stays inside it
    torch.testing.assert_close(params, model(x, labels), rtol=1e-4, atol=1e-4)
    # float64: rounding only.
    torch.testing.assert_close(model.double().cached_params(x, labels, impl=impl), model(x, labels),
                               rtol=1e-12, atol=1e-12)


def test_sampling_is_deterministic_and_labels_matter():
    model = make(1, num_classes=2, size=8)
    draw = lambda label, seed: model.sample(2, labels=label, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(0, 1), draw(0, 1))
    assert not torch.equal(draw(0, 1), draw(1, 1))
    assert not torch.equal(draw(0, 1), draw(0, 2))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_parameters_are_an_error(impl):
    model = make(1)
    with torch.no_grad():
        model.output_conv.bias[0] = float("nan")
    for method in ("cached", "naive"):
        with pytest.raises(RuntimeError, match="non-finite parameters"):
            model.sample(1, method=method, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_cached_sampling_restores_the_callers_thread_count(impl):
    # The cached sampler's reference runs its small per-pixel ops on one intra-op thread;
    # the caller's setting must come back, also when sampling raises.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model = make(1)
        model.sample(1, generator=torch.Generator().manual_seed(0), impl=impl)
        assert torch.get_num_threads() == 2
        with torch.no_grad():
            model.output_conv.bias[0] = float("nan")
        with pytest.raises(RuntimeError, match="non-finite parameters"):
            model.sample(1, impl=impl)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def tiny_data(n=24, levels=16, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels, (n, 1, size, size), generator=gen)
    x[:, :, :, : size // 2] = 3  # something to learn
    return ImageData(x, torch.randint(0, 2, (n,), generator=gen), levels, num_classes=2)


def test_training_reduces_the_loss_and_checkpoints_load(tmp_path):
    data = tiny_data()
    torch.manual_seed(0)
    model = PixelCNNpp(levels=16, nr_resnet=1, nr_filters=8, num_mixtures=3, dropout=0.1, num_classes=2,
                       image_size=8)
    before = gtrain.evaluate(model, data)
    path = str(tmp_path / "ppp.pt")
    history = gtrain.train(model, data, steps=30, batch_size=8, lr=1e-2, val_every=10, val_data=data,
                           checkpoint=path, progress=False)
    after = gtrain.evaluate(model, data)
    assert after < before - 0.5 and history[-1]["val_bpd"] == pytest.approx(after)
    loaded = load_model(path)
    assert isinstance(loaded, PixelCNNpp) and loaded.config == model.config
    x, labels = data.images[:4], data.labels[:4]
    torch.testing.assert_close(loaded(x, labels), model.eval()(x, labels))
