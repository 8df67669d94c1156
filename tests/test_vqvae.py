"""VQVAE / VQVAE2: shapes, gradients, encode/decode round trip, bad input (their
trainer: test_training_vqvae.py)."""
import pytest
import torch

from genfast.models import VQVAE, VQVAE2

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn")

SMALL = dict(hidden_channels=8, block_channels=4, num_blocks=1, num_codes=16, code_dim=4)


@pytest.mark.parametrize("ema", [True, False])
def test_vqvae_shapes_and_gradients(ema):
    torch.manual_seed(0)
    model = VQVAE(image_channels=3, downsample=2, ema=ema, **SMALL)
    x = torch.randn(2, 3, 16, 12)
    loss, out = model.loss(x)
    assert out.reconstruction.shape == x.shape and out.vq.indices.shape == (2, 4, 3)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert ema == (not isinstance(model.quantizer.codebook, torch.nn.Parameter))


def test_vqvae2_levels_and_round_trip():
    torch.manual_seed(1)
    model = VQVAE2(image_channels=1, **SMALL).eval()
    x = torch.randn(3, 1, 16, 24)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.top.indices.shape == (3, 2, 3) and out.bottom.indices.shape == (3, 4, 6)
    top, bottom = model.encode(x)
    torch.testing.assert_close(model.decode_codes(top, bottom), out.reconstruction)
    model.train()
    loss, out = model.loss(x)
    loss.backward()
    assert model.encoder_top[0].weight.grad.abs().sum() > 0  # the top level learns
    assert model.encoder_bottom[0].weight.grad.abs().sum() > 0


def test_vqvae_round_trip():
    torch.manual_seed(2)
    model = VQVAE(image_channels=1, downsample=1, **SMALL).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model.decode_codes(model.encode(x)), model(x).reconstruction)


@pytest.mark.parametrize("model,x,match", [
    (lambda: VQVAE(image_channels=1, **SMALL), torch.randn(2, 3, 16, 16), r"expected images \(B, 1, H, W\)"),
    (lambda: VQVAE(image_channels=1, downsample=2, **SMALL), torch.randn(2, 1, 10, 16), "multiples of 4"),
    (lambda: VQVAE2(image_channels=1, **SMALL), torch.randn(2, 1, 12, 16), "multiples of 8"),
    (lambda: VQVAE2(image_channels=1, **SMALL), torch.randn(1, 16, 16), r"expected images"),
])
def test_bad_input(model, x, match):
    with pytest.raises(ValueError, match=match):
        model()(x)
