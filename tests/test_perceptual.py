"""genfast.losses.PerceptualLoss (LPIPS on VGG16, genfast.perceptual): the distance
against an independent F.conv2d computation from torchvision-named weights, its
properties (symmetry, d(x, x) = 0, non-negativity, finite gradients), small images,
loading weights from files and the default places, and the errors when they are
missing or do not fit. Random weights throughout: no real weights are needed."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from genfast import perceptual
from genfast.losses import PerceptualLoss


def fabricated_vgg16(seed=0):
    """A VGG16 state dict with torchvision's key names and shapes (features and a
    classifier, which must be ignored), random values of a sensible scale."""
    gen = torch.Generator().manual_seed(seed)
    state, channels = {}, 3
    index = 0
    for entry in perceptual.VGG16_LAYOUT:
        if entry == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(entry, channels, 3, 3, generator=gen) * (2 / (9 * channels)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(entry, generator=gen) * 0.1
        channels, index = entry, index + 2
    state["classifier.0.weight"] = torch.randn(8, 4, generator=gen)
    return state


def fabricated_heads(seed=1, keys="lpips"):
    gen = torch.Generator().manual_seed(seed)
    name = "lin{}.model.1.weight" if keys == "lpips" else "heads.{}.weight"
    return {name.format(k): torch.rand(1, c, 1, 1, generator=gen) for k, c in enumerate(perceptual.STAGE_CHANNELS)}


def reference_lpips(x, y, vgg, heads):
    """LPIPS written out with F.conv2d from the two state dicts (float64)."""
    def taps(images):
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=images.dtype).view(1, 3, 1, 1)
        h = ((images + 1) / 2 - mean) / std  # [-1, 1] -> [0, 1] -> ImageNet-normalised
        out, index = [], 0
        for entry in perceptual.VGG16_LAYOUT:
            if entry == "M":
                out.append(h)
                if min(h.shape[2:]) < 2:
                    return out
                h = F.max_pool2d(h, 2)
                index += 1
                continue
            h = F.relu(F.conv2d(h, vgg[f"features.{index}.weight"].to(h.dtype),
                                vgg[f"features.{index}.bias"].to(h.dtype), padding=1))
            index += 2
        out.append(h)
        return out

    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].to(x.dtype).view(1, -1, 1, 1)
        total += ((a - b).pow(2) * w).sum(1).mean((1, 2))
    return total


@pytest.fixture
def weight_files(tmp_path):
    vgg, heads = fabricated_vgg16(), fabricated_heads()
    torch.save(vgg, tmp_path / "vgg.pth")
    torch.save(heads, tmp_path / "heads.pth")
    return str(tmp_path / "vgg.pth"), str(tmp_path / "heads.pth"), vgg, heads


def images(n, c, size, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, size, size, generator=gen, dtype=torch.float64) * 2 - 1)


@pytest.mark.parametrize("channels,size", [(1, 16), (3, 16), (1, 28), (3, 20), (1, 8)])
def test_against_reference_from_torchvision_named_weights(weight_files, channels, size):
    vgg_path, heads_path, vgg, heads = weight_files
    loss = PerceptualLoss(backbone_weights=vgg_path, head_weights=heads_path).double()
    x, y = images(3, channels, size, 0), images(3, channels, size, 1)
    d = loss(x, y)
    assert d.shape == (3,) and d.dtype == torch.float64
    torch.testing.assert_close(d, reference_lpips(x, y, vgg, heads), rtol=1e-9, atol=1e-12)


def test_weights_round_trip(weight_files):
    vgg_path, heads_path, vgg, heads = weight_files
    loss = PerceptualLoss(backbone_weights=vgg_path, head_weights=heads_path)
    for key, value in loss.features.state_dict().items():
        assert torch.equal(value, vgg[f"features.{key}"]), key
    for k, head in enumerate(loss.heads):
        assert torch.equal(head.weight, heads[f"lin{k}.model.1.weight"])
    # genfast's own head keys load too, and the whole module's state dict round-trips
    again = PerceptualLoss(pretrained=False)
    again.load_heads(fabricated_heads(keys="genfast"))
    again.load_state_dict(loss.state_dict())
    x, y = images(2, 1, 16, 3).float(), images(2, 1, 16, 4).float()
    assert torch.equal(again(x, y), loss(x, y))


def test_properties_and_gradients():
    torch.manual_seed(0)
    loss = PerceptualLoss(pretrained=False).double()
    x, y = images(4, 1, 16, 5), images(4, 1, 16, 6)
    d = loss(x, y)
    torch.testing.assert_close(d, loss(y, x), rtol=1e-12, atol=0)
    assert (d > 0).all()
    assert torch.equal(loss(x, x), torch.zeros(4, dtype=torch.float64))
    # gradients reach the inputs and stay finite, also through regions that are all -1
    # (pixels whose features are all zero); the network itself stays frozen
    x[:, :, :8] = -1
    x.requires_grad_(True)
    loss(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    assert all(p.grad is None for p in loss.parameters())
    loss.train()
    assert not loss.training


def test_gradcheck_small():
    torch.manual_seed(0)
    loss = PerceptualLoss(pretrained=False).double()
    x, y = images(1, 1, 8, 7).requires_grad_(True), images(1, 1, 8, 8)
    assert torch.autograd.gradcheck(lambda a: loss(a, y), (x,), eps=1e-6, atol=1e-5)


def test_small_images_use_the_stages_that_have_pixels():
    torch.manual_seed(0)
    loss = PerceptualLoss(pretrained=False)
    sizes = {16: [16, 8, 4, 2, 1], 28: [28, 14, 7, 3, 1], 8: [8, 4, 2, 1], 3: [3, 1], 1: [1]}
    for size, sides in sizes.items():
        taps = loss.stage_features(torch.zeros(1, 1, size, size))
        assert [t.shape[2] for t in taps] == sides, size
        assert loss(torch.rand(2, 1, size, size), torch.rand(2, 1, size, size)).shape == (2,)


def test_resize_upsamples_first():
    torch.manual_seed(0)
    loss = PerceptualLoss(pretrained=False, resize=32)
    plain = PerceptualLoss(pretrained=False)
    plain.load_state_dict(loss.state_dict())
    x, y = images(2, 1, 16, 9).float(), images(2, 1, 16, 10).float()
    up = lambda t: F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss(x, y), plain(up(x), up(y)))
    assert [t.shape[2] for t in loss.stage_features(x)] == [32, 16, 8, 4, 2]


def test_default_places(tmp_path, monkeypatch):
    """The backbone from $TORCH_HOME/hub/checkpoints, the heads from an installed lpips
    package, which is found without being imported."""
    vgg, heads = fabricated_vgg16(2), fabricated_heads(3)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(vgg, checkpoints / "vgg16-397923af.pth")
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    torch.save(heads, package / "weights" / "v0.1" / "vgg.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    assert perceptual.default_backbone_path() == str(checkpoints / "vgg16-397923af.pth")
    assert perceptual.default_heads_path() == str(package / "weights" / "v0.1" / "vgg.pth")
    loss = PerceptualLoss()
    assert torch.equal(loss.features[0].weight, vgg["features.0.weight"])
    assert torch.equal(loss.heads[4].weight, heads["lin4.model.1.weight"])


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    expected = os.path.join(str(tmp_path / "empty"), "hub", "checkpoints", "vgg16-397923af.pth")
    with pytest.raises(FileNotFoundError, match="never downloads") as info:
        PerceptualLoss(head_weights=str(tmp_path / "no-heads.pth"))
    message = str(info.value)
    assert expected in message and str(tmp_path / "no-heads.pth") in message
    assert "pretrained=False" in message and "\n" not in message
    monkeypatch.setattr(perceptual, "default_heads_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="install the lpips package"):
        PerceptualLoss()


def test_unusable_weight_files(tmp_path, weight_files):
    vgg_path, heads_path, vgg, heads = weight_files
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read the VGG16 backbone weights .*broken.pth"):
        PerceptualLoss(backbone_weights=str(broken), head_weights=heads_path)
    partial = {k: v for k, v in vgg.items() if k != "features.28.weight"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="lacks features.28.weight"):
        PerceptualLoss(backbone_weights=str(tmp_path / "partial.pth"), head_weights=heads_path)
    wrong = dict(vgg, **{"features.0.weight": torch.zeros(64, 1, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit"):
        PerceptualLoss(backbone_weights=str(tmp_path / "wrong.pth"), head_weights=heads_path)
    negative = dict(heads, **{"lin2.model.1.weight": -heads["lin2.model.1.weight"]})
    torch.save(negative, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match="negative head weights"):
        PerceptualLoss(backbone_weights=vgg_path, head_weights=str(tmp_path / "negative.pth"))
    torch.save({"lin0.model.1.weight": heads["lin0.model.1.weight"]}, tmp_path / "few.pth")
    with pytest.raises(ValueError, match="lin1.model.1.weight"):
        PerceptualLoss(backbone_weights=vgg_path, head_weights=str(tmp_path / "few.pth"))


def test_bad_inputs():
    loss = PerceptualLoss(pretrained=False)
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        loss(x, torch.rand(2, 1, 16, 8))
    with pytest.raises(ValueError, match="x must be floating-point images"):
        loss(torch.rand(2, 2, 16, 16), torch.rand(2, 2, 16, 16))
    with pytest.raises(ValueError, match="y must be"):
        loss(x, (x * 255).long())
    with pytest.raises(ValueError, match="resize"):
        PerceptualLoss(pretrained=False, resize=0)


def test_docs_examples_run(tmp_path, monkeypatch):
    """docs/vqgan.md's Python blocks run as written."""
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "vqgan.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/vqgan.md python block {index}", "exec"), {"__name__": "docs_vqgan"})
