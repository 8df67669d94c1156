"""genfast.models.PatchDiscriminator: pix2pix's layer structure and map sizes, small
images (and the error when the map would be empty), any number of channels,
locality of the patch logits, and use as a per-sample critic with norm="none"."""
import pytest
import torch
from torch import nn

from genfast.losses import critic_gradient_penalty, gan_loss
from genfast.models import PatchDiscriminator


def convs(d):
    return [m for m in d.modules() if isinstance(m, nn.Conv2d)]


def test_pix2pix_structure():
    d = PatchDiscriminator(image_channels=3)  # pix2pix's defaults: 64 channels, 3 layers
    shapes = [(c.in_channels, c.out_channels, c.stride[0], c.bias is not None) for c in convs(d)]
    assert shapes == [(3, 64, 2, True), (64, 128, 2, False), (128, 256, 2, False),
                      (256, 512, 1, False), (512, 1, 1, True)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # pix2pix's 70x70 PatchGAN map
    wide = PatchDiscriminator(image_channels=1, hidden_channels=4, num_layers=5)
    assert [c.out_channels for c in convs(wide)] == [4, 8, 16, 32, 32, 32, 1]  # capped at 8x


@pytest.mark.parametrize("size,layers,side", [(28, 2, 5), (28, 3, 1), (16, 2, 2), (16, 1, 6), (32, 3, 2), (6, 1, 1)])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_small_images(size, layers, side, channels):
    d = PatchDiscriminator(image_channels=channels, hidden_channels=4, num_layers=layers)
    assert d(torch.randn(2, channels, size, size)).shape == (2, 1, side, side)
    assert d.output_size(size, size) == (side, side)


def test_empty_map_is_a_clear_error():
    assert PatchDiscriminator.max_layers(16, 16) == 2 and PatchDiscriminator.max_layers(28, 28) == 3
    assert PatchDiscriminator.max_layers(5, 5) == 0 and PatchDiscriminator.max_layers(16, 64) == 2
    d = PatchDiscriminator(image_channels=1, hidden_channels=4, num_layers=3)
    with pytest.raises(ValueError, match=r"16x16 image leaves an empty patch map with num_layers=3; "
                                         r"use num_layers <= 2"):
        d(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="smallest image it takes is 6x6"):
        PatchDiscriminator(image_channels=1, num_layers=1)(torch.randn(1, 1, 5, 5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        PatchDiscriminator(num_layers=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        PatchDiscriminator(norm="layer")
    with pytest.raises(TypeError):
        PatchDiscriminator(3)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        PatchDiscriminator()(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_patch_logits_are_local(norm):
    """A logit sees only its receptive field: the top-left pixel reaches the logits
    of rows and columns 0-2 only (one stride-2 then two stride-1 4x4 convolutions)."""
    torch.manual_seed(0)
    d = PatchDiscriminator(image_channels=1, hidden_channels=4, num_layers=1, norm=norm).double().eval()
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    y = x.clone()
    y[:, :, 0, 0] += 5
    a, b = d(x), d(y)
    if norm == "instance":  # instance statistics span the whole map: every logit moves
        assert not torch.equal(a[..., 20:, 20:], b[..., 20:, 20:])
        return
    assert torch.equal(a[..., 3:, :], b[..., 3:, :]) and torch.equal(a[..., :, 3:], b[..., :, 3:])
    assert not torch.equal(a[..., :2, :2], b[..., :2, :2])


def test_critic_of_a_gan_loss_and_a_gradient_penalty():
    torch.manual_seed(0)
    d = PatchDiscriminator(image_channels=1, hidden_channels=4, num_layers=2, norm="none")
    real, fake = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
    loss = gan_loss(d(real), d(fake), kind="hinge", target="d")
    loss = loss + critic_gradient_penalty(lambda x: d(x).mean((1, 2, 3)), real, fake, kind="r1")
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())
    assert PatchDiscriminator(**d.config).config == d.config
