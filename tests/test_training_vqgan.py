"""The VQGAN tokenizer trainer (genfast.training.vqgan) and `genfast train vqgan`: the
generator's gradient equals that of nll + lambda * g + vq with lambda from
genfast.losses.adaptive_weight, exact resume across the discriminator's start,
the outputs and messages of the command, and its errors. Tiny sizes, random VGG
weights (no pretrained weights needed)."""
import copy
import os
import struct
import warnings

import pytest
import torch

from genfast import cli
from genfast.data import FASHION_MNIST_DIR
from genfast.losses import adaptive_weight, gan_loss
from genfast.training import vqgan
from genfast.training.autoregressive import batch_indices

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn")

TINY = dict(size=16, batch_size=8, channels=8, num_codes=16, code_dim=4, disc_channels=8, limit=32,
            perceptual="random")


def tiny_config(**changes):
    return vqgan.VQGANConfig(**{**TINY, **changes})


def trainer(**changes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return vqgan.VQGANTrainer(tiny_config(**changes))


def test_generator_gradient_matches_adaptive_weight():
    """One backward through the perceptual network instead of adaptive_weight's two:
    the same lambda and the same gradients as the loss written out."""
    t = trainer(disc_start=0)
    t.train_step()  # k-means initialisation, a first discriminator step
    twin = copy.deepcopy(t)
    rng = torch.get_rng_state()
    seen = {}
    step = t.opt_g.step
    t.opt_g.step = lambda: (seen.update({n: p.grad.clone() for n, p in t.model.named_parameters()
                                         if p.grad is not None}), step())[1]
    record = t.train_step()

    torch.set_rng_state(rng)
    c, model, disc = twin.config, twin.model, twin.discriminator
    x = twin.train_images[batch_indices(len(twin.train_images), c.batch_size, c.seed, twin.step)]
    out = model(x)
    nll = (x - out.reconstruction).abs().mean() + c.perceptual_weight * twin.perceptual(x, out.reconstruction).mean()
    disc.requires_grad_(False)
    g = gan_loss(None, disc(out.reconstruction), kind="hinge", target="g")
    weight = c.disc_weight * adaptive_weight(nll, g, twin.last_layer)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(nll + weight * g + out.vq.loss, [p for p in model.parameters() if p.requires_grad],
                                allow_unused=True)
    assert record["weight"] == pytest.approx(weight.item(), rel=1e-5)
    assert 0 < record["weight"] < 1e4
    expected = {n: gr for n, gr in zip(names, grads) if gr is not None}
    assert set(seen) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(seen[name], value, rtol=1e-4, atol=1e-7, msg=name)


def test_discriminator_waits_for_its_start():
    t = trainer(disc_start=2)
    before = copy.deepcopy(t.discriminator.state_dict())
    first = t.train_step()
    assert "d" not in first and "weight" not in first
    assert all(torch.equal(v, t.discriminator.state_dict()[k]) for k, v in before.items())
    t.train_step()
    third = t.train_step()
    assert {"d", "g", "weight"} <= set(third)
    assert not all(torch.equal(v, t.discriminator.state_dict()[k]) for k, v in before.items())


def test_resume_is_exact(tmp_path):
    """3 steps, then 2 more from the checkpoint, against 5 straight; the discriminator
    starts at step 2, so the resumed part has both optimisers' state to restore."""
    config = dict(TINY, disc_start=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        straight = vqgan.train(vqgan.VQGANConfig(**config, steps=5), str(tmp_path / "a"), progress=False).trainer
        vqgan.train(vqgan.VQGANConfig(**config, steps=3), str(tmp_path / "b"), progress=False)
        resumed = vqgan.train(vqgan.VQGANConfig(**config, steps=5), str(tmp_path / "b"), resume=True,
                              progress=False).trainer
    assert resumed.step == straight.step == 5
    for name in ("model", "discriminator", "opt_g", "opt_d"):
        a, b = straight.state_dict()[name], resumed.state_dict()[name]
        if name.startswith("opt"):
            a = {(k, n): v for k, s in a["state"].items() for n, v in s.items()}
            b = {(k, n): v for k, s in b["state"].items() for n, v in s.items()}
        assert a.keys() == b.keys(), name
        for key, value in a.items():
            assert torch.equal(value, b[key]), (name, key)
    assert straight.history == resumed.history and straight.initial == resumed.initial


def run_cli(out, *extra):
    args = ["train", "vqgan", "--limit", "32", "--batch-size", "8", "--size", "16", "--channels", "8",
            "--num-codes", "16", "--code-dim", "4", "--disc-channels", "8", "--out", str(out), *extra]
    return cli.main(args)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_train_command(tmp_path, capsys):
    with pytest.warns(UserWarning, match="random weights"):
        assert run_cli(tmp_path, "--steps", "3", "--disc-start", "1", "--perceptual", "random",
                       "--checkpoint-every", "2") == 0
    captured = capsys.readouterr()
    assert "vqgan digits" in captured.err and "3/3" in captured.err and "lam=" in captured.err  # progress bar
    assert "3 steps" in captured.out and "test reconstruction" in captured.out and "MSE" in captured.out
    assert "LPIPS" not in captured.out  # not reported for random weights
    assert png_size(tmp_path / "reconstructions.png") == (12 * 33 + 1, 2 * 33 + 1)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "reconstructions.png"]  # no temp files
    model, config = vqgan.load_tokenizer(str(tmp_path / "checkpoint.pt"))
    codes = model.encode(torch.zeros(2, 1, 16, 16))
    assert codes.shape == (2, 4, 4) and config["steps"] == 3
    assert model.decode_codes(codes).shape == (2, 1, 16, 16)
    # resume: the steps may grow, nothing else may change
    with pytest.raises(SystemExit, match="trained with"):
        run_cli(tmp_path, "--steps", "4", "--perceptual", "off", "--resume")
    with pytest.warns(UserWarning, match="random weights"):
        assert run_cli(tmp_path, "--steps", "4", "--disc-start", "1", "--perceptual", "random", "--resume",
                       "--no-progress") == 0
    assert "4 steps" in capsys.readouterr().out


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    from genfast import perceptual

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(perceptual, "default_heads_path", lambda: None)
    with pytest.raises(SystemExit) as info:
        run_cli(tmp_path / "run", "--steps", "1")
    message = str(info.value)
    assert message.startswith("error: PerceptualLoss needs pretrained weights")
    assert os.path.join(str(tmp_path / "torch"), "hub", "checkpoints", "vgg16-397923af.pth") in message
    assert "--perceptual off" in message and "--perceptual random" in message
    assert not (tmp_path / "run").exists()


def test_bad_settings(tmp_path):
    with pytest.raises(SystemExit, match="disc_layers=3 leaves .* at 16x16; use disc_layers <= 2"):
        run_cli(tmp_path, "--disc-layers", "3", "--perceptual", "off")
    with pytest.raises(SystemExit, match="size must be a positive multiple of 4"):
        run_cli(tmp_path, "--size", "18", "--perceptual", "off")
    with pytest.raises(SystemExit, match="batch_size .* exceeds the 4 training images"):
        run_cli(tmp_path, "--limit", "4", "--perceptual", "off")
    with pytest.raises(SystemExit, match="--resume but there is no checkpoint"):
        run_cli(tmp_path / "none", "--resume", "--perceptual", "off")


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason=f"Fashion-MNIST is not installed "
                    f"({FASHION_MNIST_DIR}: the Debian package dataset-fashion-mnist)")
def test_fashion_mnist(tmp_path, capsys):
    assert run_cli(tmp_path, "--data", "fashion-mnist", "--size", "28", "--steps", "2", "--disc-start", "1",
                   "--perceptual", "off", "--no-progress") == 0
    assert "2 steps" in capsys.readouterr().out
    assert png_size(tmp_path / "reconstructions.png") == (12 * 57 + 1, 2 * 57 + 1)


def test_pretrained_weights_from_given_files(tmp_path, monkeypatch):
    """--vgg-weights / --lpips-weights reach the PerceptualLoss (fabricated files with
    torchvision's and lpips's key names), and LPIPS is then reported."""
    from genfast.losses import PerceptualLoss

    source = PerceptualLoss(pretrained=False)
    torch.save({f"features.{k}": v for k, v in source.features.state_dict().items()}, tmp_path / "vgg.pth")
    torch.save({f"lin{k}.model.1.weight": h.weight for k, h in enumerate(source.heads)}, tmp_path / "lin.pth")
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(16, 1, 16, 16, generator=gen) * 2 - 1, torch.rand(4, 1, 16, 16, generator=gen) * 2 - 1)
    run = vqgan.train(tiny_config(perceptual="lpips", steps=2, disc_start=1), str(tmp_path / "run"),
                      progress=False, vgg_weights=str(tmp_path / "vgg.pth"),
                      lpips_weights=str(tmp_path / "lin.pth"), images=images)
    assert run.trainer.perceptual.pretrained
    assert torch.equal(run.trainer.perceptual.heads[3].weight, source.heads[3].weight)
    assert set(run.final) == {"l1", "mse", "lpips"} and run.final["lpips"] > 0
    # LPIPS is averaged over the first LPIPS_EVAL_IMAGES test images only
    monkeypatch.setattr(vqgan, "LPIPS_EVAL_IMAGES", 3)
    t = run.trainer
    with torch.no_grad():
        t.model.eval()
        expected = t.perceptual(images[1][:3], t.model(images[1][:3]).reconstruction).mean().item()
    assert t.evaluate(batch_size=2)["lpips"] == pytest.approx(expected, rel=1e-5)
