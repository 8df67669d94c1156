"""PixelCNN: causal receptive field with its documented blind spot, conditioning, ext
against the reference."""
import pytest
import torch
from conftest import requires_ext
from test_models_gated_pixelcnn import IMPLS, input_gradients, raster_order

from genfast.models import GatedPixelCNN, PixelCNN, PixelCNNpp


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", [1, 3])
def test_never_sees_a_later_sub_pixel(impl, channels):
    torch.manual_seed(0)
    model = PixelCNN(image_channels=channels, levels=6, hidden_channels=6, num_blocks=2, input_kernel_size=3,
                     impl=impl).double()
    h, w = 5, 6
    grads = input_gradients(model, h, w)
    order = raster_order(h, w, channels)
    for i in range(h):
        for j in range(w):
            for c in range(channels):
                later = order >= order[i, j, c]
                assert (grads[i, j, c][later] == 0).all(), f"({i}, {j}, {c}) sees the future"
                # Its own pixel's earlier colours and its left neighbour are always seen.
                assert (grads[i, j, c][i, j, :c] > 0).all()
                if j > 0:
                    assert (grads[i, j, c][i, j - 1] > 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_the_blind_spot(impl):
    # The known blind spot of stacked masked convolutions (documented in
    # genfast/models/pixelcnn.py): with an input kernel k, the output at (i, j) sees
    # row i-1 only up to column j + k//2 and row i-r up to column j + k//2 + r - 1, however
    # deep the network; the pixels to the right of that are in its past but unseen.
    torch.manual_seed(1)
    model = PixelCNN(levels=6, hidden_channels=6, num_blocks=4, input_kernel_size=3, impl=impl).double()
    h, w = 6, 9
    i, j = 5, 2
    seen = input_gradients(model, h, w)[i, j, 0, :, :, 0] > 0
    for r in range(1, 4):
        last = j + 1 + r - 1
        assert seen[i - r, last], f"row {i - r} column {last} should be seen"
        assert not seen[i - r, last + 1:].any(), f"row {i - r} beyond column {last} is the blind spot"
    assert seen[i, :j].all()


def test_class_conditioning():
    torch.manual_seed(2)
    model = PixelCNN(levels=5, hidden_channels=6, num_blocks=1, num_classes=3)
    x = torch.randint(0, 5, (2, 1, 4, 4))
    a = model(x, torch.tensor([0, 1]))
    b = model(x, torch.tensor([2, 1]))
    assert (a[0] != b[0]).all() and torch.equal(a[1], b[1])


@requires_ext
def test_ext_matches_reference():
    torch.manual_seed(3)
    model = PixelCNN(image_channels=3, levels=8, hidden_channels=12, num_blocks=2).double()
    x = torch.randint(0, 8, (2, 3, 9, 7))
    got = model.set_impl("ext")(x)
    want = model.set_impl("reference")(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    model.set_impl("ext")(x).square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_impl("reference")(x).square().mean().backward()
    for got, want in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


LAYOUT_MODELS = {"pixelcnn": (PixelCNN, dict(hidden_channels=6, num_blocks=2)),
                 "gated": (GatedPixelCNN, dict(hidden_channels=6, num_layers=3, kernel_size=3))}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(LAYOUT_MODELS))
def test_memory_format_changes_only_the_layout(impl, channels, name):
    # Channels-last activations (the CPU default) give the NCHW model's loss and gradients.
    cls, config = LAYOUT_MODELS[name]
    torch.manual_seed(4)
    x = torch.randint(0, 8, (2, channels, 6, 7))
    results = []
    for fmt in ("contiguous", "channels_last", "auto"):
        torch.manual_seed(5)
        model = cls(image_channels=channels, levels=8, impl=impl, memory_format=fmt, **config).double()
        assert cls(**model.config).config == model.config
        loss = model.loss(x)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN, PixelCNNpp])
def test_bad_memory_format(cls):
    with pytest.raises(ValueError, match="memory_format must be one of"):
        cls(memory_format="nhwc")
