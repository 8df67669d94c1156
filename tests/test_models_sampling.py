"""Likelihood, naive and cached sampling and image completion of both models; bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from genfast.metrics import bits_per_dim
from genfast.models import GatedPixelCNN, PixelCNN, inverse_cdf, sampling_uniforms

MODELS = {
    "gated-grey": lambda: GatedPixelCNN(levels=6, hidden_channels=6, num_layers=2, kernel_size=3,
                                        num_classes=3, image_size=(4, 5)),
    "gated-rgb": lambda: GatedPixelCNN(image_channels=3, levels=5, hidden_channels=6, num_layers=2,
                                       kernel_size=3, num_classes=3, image_size=(3, 4)),
    "pixelcnn-rgb": lambda: PixelCNN(image_channels=3, levels=5, hidden_channels=6, num_blocks=1,
                                     input_kernel_size=3, num_classes=3, image_size=(3, 4)),
}


def make(name, seed=0):
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():  # sharper distributions than at initialisation
        model.output_conv.weight.mul_(8)
    return model


def full_forward_sample(model, n, labels, u, prefix=None, known=None, temperature=1.0):
    """The textbook sampler: the whole image through the network for every sub-pixel."""
    h, w = model.image_size
    x = torch.zeros(n, model.image_channels, h, w, dtype=torch.long)
    if prefix is not None:
        x[:, :, :prefix.shape[2]] = torch.where(known, prefix, 0)
    with torch.no_grad():
        for i in range(h):
            for j in range(w):
                for c in range(model.image_channels):
                    value = inverse_cdf(model(x, labels)[:, :, c, i, j], u[i, j, c], temperature)
                    if prefix is not None and i < prefix.shape[2]:
                        value = torch.where(known[:, c, i, j], x[:, c, i, j], value)
                    x[:, c, i, j] = value
    return x


@pytest.mark.parametrize("name", list(MODELS))
def test_loss_is_the_hand_computed_cross_entropy(name):
    model = make(name)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, model.levels, (3, model.image_channels, *model.image_size), generator=gen)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        logits = model(x, labels)
    total = 0.0
    for b, c, i, j in torch.cartesian_prod(*(torch.arange(s) for s in x.shape)).tolist():
        row = logits[b, :, c, i, j].double()
        total += math.log(row.exp().sum()) - row[x[b, c, i, j]].item()
    expected = total / x.numel()
    assert model.loss(x, labels).item() == pytest.approx(expected, rel=1e-5)
    assert bits_per_dim(expected) == pytest.approx(expected / math.log(2))
    assert bits_per_dim(expected * 12, dims=12) == pytest.approx(expected / math.log(2))


@pytest.mark.parametrize("method", ["naive", "cached"])
@pytest.mark.parametrize("name", list(MODELS))
def test_sampling_is_the_full_forward_sampler(name, method):
    # Cropping the network at the current row (naive) or stepping it with caches
    # (cached) changes nothing: the same images.
    model = make(name)
    n = 4
    labels = torch.tensor([0, 1, 2, 0])
    samples = model.sample(n, labels=labels, generator=torch.Generator().manual_seed(7), method=method)
    u = sampling_uniforms(n, model.image_channels, *model.image_size, torch.Generator().manual_seed(7))
    assert torch.equal(samples, full_forward_sample(model, n, labels, u))
    assert samples.dtype == torch.long and samples.shape == (n, model.image_channels, *model.image_size)
    assert samples.min() >= 0 and samples.max() < model.levels


def test_cropped_logits_equal_the_full_forward():
    # Equal up to float rounding (elementwise kernels round a tensor's tail differently).
    model = make("gated-grey")
    x = torch.randint(0, model.levels, (5, 1, 6, 5))
    labels = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        full = model.logits(model.input_features(x), labels)
        for i in range(6):
            part = model.logits(model.input_features(x[:, :, :i + 1]), labels, last_row_only=True)
            torch.testing.assert_close(part[:, :, :, 0], full[:, :, :, i], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["naive", "cached"])
@pytest.mark.parametrize("name", ["gated-rgb", "pixelcnn-rgb"])
def test_completion_keeps_known_pixels_and_is_the_full_forward_completion(name, method):
    model = make(name)
    n, (h, w) = 3, model.image_size
    gen = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, model.levels, (n, 3, 2, w), generator=gen)
    known = torch.rand(n, 3, 2, w, generator=gen) < 0.6
    labels = torch.tensor([2, 0, 1])
    samples = model.sample(n, labels=labels, prefix=prefix, known_mask=known,
                           generator=torch.Generator().manual_seed(11), method=method)
    assert torch.equal(samples[:, :, :2][known], prefix[known])
    u = sampling_uniforms(n, 3, h, w, torch.Generator().manual_seed(11))
    assert torch.equal(samples, full_forward_sample(model, n, labels, u, prefix, known))
    # A prefix without a mask: all its rows are known; the rest is sampled.
    top = model.sample(n, labels=labels, prefix=prefix[:, :, :1], generator=torch.Generator().manual_seed(1),
                       method=method)
    assert torch.equal(top[:, :, :1], prefix[:, :, :1])


def test_completion_depends_on_the_known_pixels():
    model = make("gated-grey")
    labels = torch.zeros(6, dtype=torch.long)
    dark = torch.zeros(6, 1, 2, 5, dtype=torch.long)
    a = model.sample(6, labels=labels, prefix=dark, generator=torch.Generator().manual_seed(0))
    b = model.sample(6, labels=labels, prefix=dark + model.levels - 1,
                     generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a[:, :, 2:], b[:, :, 2:])


@pytest.mark.parametrize("name", list(MODELS))
def test_sampling_is_deterministic_given_the_generator(name):
    model = make(name)
    labels = torch.tensor([0, 1, 2])
    a = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(5))
    b = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(5))
    c = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training  # sampling restores the mode it found


def test_labels_change_the_samples():
    model = make("gated-grey")
    a = model.sample(4, labels=0, generator=torch.Generator().manual_seed(5))
    b = model.sample(4, labels=2, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(a, b)


def test_temperature():
    model = make("gated-grey")
    cold = model.sample(4, labels=1, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    colder = model.sample(4, labels=1, temperature=1e-4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(cold, colder)  # near-greedy: the uniforms no longer matter
    assert torch.equal(cold[0], cold[3])


def test_inverse_cdf():
    logits = torch.tensor([[0.0, math.log(2), math.log(3), math.log(4)]])  # p = .1 .2 .3 .4
    cdf = [0.1, 0.3, 0.6, 1.0]
    for u, want in [(0.0, 0), (0.05, 0), (0.1 - 1e-9, 0), (0.1 + 1e-9, 1), (0.29, 1), (0.31, 2),
                    (0.59, 2), (0.61, 3), (1 - 2 ** -53, 3)]:
        got = inverse_cdf(logits, torch.tensor([u], dtype=torch.float64))
        assert got.item() == want, (u, cdf)
    # Frequencies follow the softmax, and temperature sharpens it.
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(40000, generator=gen, dtype=torch.float64)
    draws = inverse_cdf(logits.expand(40000, 4), u)
    freq = torch.bincount(draws, minlength=4).double() / 40000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.01, rtol=0)
    hot = torch.bincount(inverse_cdf(logits.expand(40000, 4), u, temperature=0.5), minlength=4).double() / 40000
    torch.testing.assert_close(hot, F.softmax(logits[0].double() / 0.5, 0), atol=0.01, rtol=0)


def test_sampling_uniforms_are_one_documented_draw():
    u = sampling_uniforms(3, 2, 4, 5, torch.Generator().manual_seed(4))
    want = torch.rand((4, 5, 2, 3), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(u, want)


@pytest.mark.parametrize("name", ["gated-grey", "pixelcnn-rgb"])
def test_bad_input_to_the_likelihood(name):
    model = make(name)
    c, (h, w) = model.image_channels, model.image_size
    x = torch.randint(0, model.levels, (2, c, h, w))
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"values must lie in \[0, 5\)|values must lie in \[0, 6\)"):
        model.loss(torch.full_like(x, model.levels), labels)
    with pytest.raises(ValueError, match="values must lie"):
        model.loss(x - 1 - x.max(), labels)
    with pytest.raises(TypeError, match="integer levels"):
        model.loss(x.float(), labels)
    with pytest.raises(ValueError, match="shaped"):
        model.loss(x[:, :1] if c == 3 else x.expand(2, 3, h, w), labels)
    with pytest.raises(ValueError, match="labels must be shaped"):
        model.loss(x, labels[:1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        model.loss(x, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        model.loss(x, labels.float())
    with pytest.raises(ValueError, match="labels are required"):
        model.loss(x)
    with pytest.raises(ValueError, match="must not be empty"):
        model.loss(x[:0], labels[:0])
    unconditional = GatedPixelCNN(levels=4, hidden_channels=4, num_layers=1, kernel_size=3)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.loss(torch.zeros(1, 1, 3, 3, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="cond_channels=0"):
        unconditional.loss(torch.zeros(1, 1, 3, 3, dtype=torch.long), cond=torch.zeros(1, 1, 3, 3))
    spatial = GatedPixelCNN(levels=4, hidden_channels=4, num_layers=1, kernel_size=3, cond_channels=2)
    with pytest.raises(ValueError, match=r"cond must be shaped \(1, 2, 3, 3\)"):
        spatial.loss(torch.zeros(1, 1, 3, 3, dtype=torch.long), cond=torch.zeros(1, 2, 3, 4))
    with pytest.raises(TypeError, match="cond must be a float tensor"):
        spatial.loss(torch.zeros(1, 1, 3, 3, dtype=torch.long))


def test_bad_input_to_sample():
    model = make("gated-rgb")
    h, w = model.image_size
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be a positive int"):
            model.sample(n, labels=0)
    with pytest.raises(ValueError, match="labels are required"):
        model.sample(2)
    with pytest.raises(ValueError, match=r"labels must be shaped \(2,\)"):
        model.sample(2, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must lie"):
        model.sample(2, labels=7)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, labels=0, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, labels=0, temperature=float("nan"))
    with pytest.raises(TypeError, match="generator"):
        model.sample(2, labels=0, generator=5)
    prefix = torch.zeros(2, 3, 2, w, dtype=torch.long)
    with pytest.raises(ValueError, match="prefix must be shaped"):
        model.sample(3, labels=0, prefix=prefix)
    with pytest.raises(ValueError, match="prefix must be shaped"):
        model.sample(2, labels=0, prefix=torch.zeros(2, 3, 2, w + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="prefix must be shaped"):
        model.sample(2, labels=0, prefix=torch.zeros(2, 3, h + 1, w, dtype=torch.long))
    with pytest.raises(TypeError, match="prefix must hold integer levels"):
        model.sample(2, labels=0, prefix=prefix.float())
    with pytest.raises(ValueError, match="prefix values must lie"):
        model.sample(2, labels=0, prefix=prefix + model.levels)
    with pytest.raises(ValueError, match="does not broadcast"):
        model.sample(2, labels=0, prefix=prefix, known_mask=torch.ones(2, 3, 3, w, dtype=torch.bool))
    with pytest.raises(TypeError, match="known_mask must be a bool tensor"):
        model.sample(2, labels=0, prefix=prefix, known_mask=torch.ones(2, 3, 2, w))
    with pytest.raises(ValueError, match="known_mask given without prefix"):
        model.sample(2, labels=0, known_mask=torch.ones(2, 3, 2, w, dtype=torch.bool))


def test_non_finite_logits_are_an_error():
    model = make("gated-grey")
    with torch.no_grad():
        model.output_conv.bias.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite logits at row 0, column 0"):
        model.sample(1, labels=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MODELS))
def test_on_device_with_the_compiled_kernels(device, name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions
    model = make(name)
    n, (h, w) = 3, model.image_size
    x = torch.randint(0, model.levels, (n, model.image_channels, h, w))
    labels = torch.tensor([0, 2, 1])
    want = model.double().set_impl("reference")(x, labels)
    model.float().set_impl("ext").to(device)
    got = model(x.to(device), labels.to(device))
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-4)
    model.loss(x.to(device), labels.to(device)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    prefix = x[:, :, :1].to(device)
    gen = torch.Generator(device).manual_seed(0)
    out = model.sample(n, labels=labels.to(device), prefix=prefix, generator=gen)
    again = model.sample(n, labels=labels.to(device), prefix=prefix,
                         generator=torch.Generator(device).manual_seed(0))
    assert out.device.type == device and torch.equal(out, again)
    assert torch.equal(out[:, :, :1], prefix)
