"""Gated PixelCNN: receptive field (causal, no blind spot), conditioning, layout."""
import pytest
import torch
from conftest import requires_ext

from genfast.models import GatedPixelCNN, PixelCNN
from genfast.models.gated_pixelcnn import gate, shift_down

IMPLS = ["reference", pytest.param("ext", marks=requires_ext)]


def input_gradients(model, height, width, images=4, seed=0):
    """g[i, j, c] = |d logits[:, :, c, i, j] / d input features|, summed over the levels,
    the features of each input colour group and `images` random images (so that no
    ReLU pattern of one image hides a path): (H, W, C, H, W, C). One backward pass: the
    batch holds a copy of each image per output sub-pixel, and each copy's loss is
    that sub-pixel's logits."""
    gen = torch.Generator().manual_seed(seed)
    c = model.image_channels
    positions = height * width * c
    x = torch.randint(0, model.levels, (images, c, height, width), generator=gen)
    x = x.repeat_interleave(positions, 0)
    features = model.input_features(x).detach().requires_grad_()
    logits = model.logits(features)
    which = torch.arange(x.shape[0]) % positions
    i, j, k = which // (width * c), which // c % width, which % c
    picked = logits[torch.arange(x.shape[0]), :, k, i, j]
    (g,) = torch.autograd.grad(picked.sum(), features)
    g = g.abs().view(images, positions, c, -1, height, width).sum((0, 3))
    return g.view(height, width, c, c, height, width).permute(0, 1, 2, 4, 5, 3)


def raster_order(height, width, channels):
    """Position of every sub-pixel (i, j, c) in generation order: (H, W, C)."""
    return torch.arange(height * width * channels).view(height, width, channels)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels,embedding_dim", [(1, None), (3, None), (3, 2)])
def test_receptive_field_is_the_whole_causal_past(impl, channels, embedding_dim):
    # 3 layers of kernel 3 reach 4 rows up and 3 columns sideways: all of a 4x4 image.
    torch.manual_seed(0)
    model = GatedPixelCNN(image_channels=channels, levels=7, hidden_channels=24, num_layers=3, kernel_size=3,
                          embedding_dim=embedding_dim, impl=impl).double()
    h, w = 4, 4
    grads = input_gradients(model, h, w)
    order = raster_order(h, w, channels)
    for i in range(h):
        for j in range(w):
            for c in range(channels):
                later = order >= order[i, j, c]
                g = grads[i, j, c]
                assert (g[later] == 0).all(), f"({i}, {j}, {c}) sees a later sub-pixel"
                assert (g[~later] > 0).all(), f"({i}, {j}, {c}) has a blind spot"


@pytest.mark.parametrize("impl", IMPLS)
def test_receptive_field_grows_by_half_a_kernel_per_layer(impl):
    # After L layers of kernel k the output sees rows i-1-L*p..i-1 and columns j-L*p..j+L*p.
    torch.manual_seed(1)
    model = GatedPixelCNN(levels=5, hidden_channels=8, num_layers=2, kernel_size=3, impl=impl).double()
    h, w = 9, 11
    g = input_gradients(model, h, w)[6, 5, 0, :, :, 0]
    seen = g > 0
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[6 - 1 - 2:6, 5 - 2:5 + 3] = True  # rows 3..5, columns 3..7
    expected[6, 5 - 2:5] = True  # row 6, columns 3..4
    assert torch.equal(seen, expected)


def test_conditioning_changes_the_logits_everywhere():
    torch.manual_seed(2)
    model = GatedPixelCNN(levels=5, hidden_channels=6, num_layers=2, kernel_size=3, num_classes=4,
                          cond_channels=2)
    x = torch.randint(0, 5, (2, 1, 4, 6))
    cond = torch.randn(2, 2, 4, 6)
    base = model(x, torch.tensor([0, 1]), cond)
    other_labels = model(x, torch.tensor([2, 3]), cond)
    other_cond = model(x, torch.tensor([0, 1]), cond + 1)
    # Even the first sub-pixel, which sees no pixel, depends on the conditioning.
    assert (base[:, :, 0, 0, 0] != other_labels[:, :, 0, 0, 0]).all()
    assert (base[:, :, 0, 0, 0] != other_cond[:, :, 0, 0, 0]).all()


def test_spatial_conditioning_is_per_position():
    # The map enters through 1x1 convolutions: logits at (i, j) see the map at (i, j)
    # itself and, through the stacks, the map at earlier positions only.
    torch.manual_seed(3)
    model = GatedPixelCNN(levels=5, hidden_channels=6, num_layers=2, kernel_size=3, cond_channels=3).double()
    x = torch.randint(0, 5, (1, 1, 5, 5))
    cond = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    logits = model(x, None, cond)
    (g,) = torch.autograd.grad(logits[:, :, 0, 2, 2].sum(), cond)
    seen = g[0].abs().sum(0) > 0
    order = torch.arange(25).view(5, 5)
    assert not seen[order > 12].any() and seen[2, 2]


def test_gate_pairs_channels_within_colour_groups():
    pre = torch.randn(2, 12, 3, 4)
    out = gate(pre, 3)
    assert out.shape == (2, 6, 3, 4)
    for g in range(3):  # group g: tanh half pre[4g:4g+2], sigmoid half pre[4g+2:4g+4]
        a, b = pre[:, 4 * g:4 * g + 2], pre[:, 4 * g + 2:4 * g + 4]
        torch.testing.assert_close(out[:, 2 * g:2 * g + 2], torch.tanh(a) * torch.sigmoid(b))
    t = torch.arange(12.0).view(1, 1, 3, 4)
    assert torch.equal(shift_down(t)[0, 0, 0], torch.zeros(4))
    assert torch.equal(shift_down(t)[0, 0, 1:], t[0, 0, :2])


@pytest.mark.parametrize("model_cls", [GatedPixelCNN, PixelCNN])
def test_config_rebuilds_the_model(model_cls):
    torch.manual_seed(4)
    model = model_cls(image_channels=3, levels=6, hidden_channels=9, num_classes=3, image_size=(5, 7))
    clone = model_cls(**model.config)
    clone.load_state_dict(model.state_dict())
    x = torch.randint(0, 6, (2, 3, 5, 7))
    labels = torch.tensor([0, 2])
    assert torch.equal(model(x, labels), clone(x, labels))
    assert model(x, labels).shape == (2, 6, 3, 5, 7)


@requires_ext
def test_ext_matches_reference():
    torch.manual_seed(5)
    model = GatedPixelCNN(image_channels=3, levels=8, hidden_channels=12, num_layers=3, kernel_size=5,
                          num_classes=4).double()
    x = torch.randint(0, 8, (3, 3, 7, 6))
    labels = torch.tensor([0, 3, 1])
    got = model.set_impl("ext")(x, labels)
    want = model.set_impl("reference")(x, labels)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_channels=8, image_channels=3), "hidden_channels must be a positive multiple of image_channels"),
    (dict(kernel_size=4), "kernel_size must be odd"),
    (dict(kernel_size=1), "kernel_size must be odd"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(levels=1), "levels must be at least 2"),
    (dict(num_classes=0), "num_classes must be a positive int"),
    (dict(image_size=(4, 0)), "image_size"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(**kwargs)


@pytest.mark.parametrize("model_cls", [GatedPixelCNN, PixelCNN])
def test_every_parameter_is_used(model_cls):
    # DDP (without find_unused_parameters) needs a gradient for every parameter.
    torch.manual_seed(6)
    extra = dict(cond_channels=2) if model_cls is GatedPixelCNN else {}
    model = model_cls(image_channels=3, levels=4, hidden_channels=6, num_classes=2, embedding_dim=3, **extra)
    x = torch.randint(0, 4, (2, 3, 5, 5))
    cond = torch.randn(2, 2, 5, 5) if extra else None
    model.loss(x, torch.tensor([0, 1]), cond).backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unused
