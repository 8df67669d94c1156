import argparse
import json
import os

import pytest
import torch

from genfast.data import ImageData
from genfast.cli.vae import add_arguments, run
from genfast.training.vae import VARIANTS, build_model, load_vae, save_latent_space, train_vae


def toy_data(n=48, levels=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, levels, (n, 1, 8, 8), generator=gen)
    return ImageData(images, torch.randint(0, 10, (n,), generator=gen), levels, num_classes=10)


def model_for(variant, latent_dim=2, **kwargs):
    torch.manual_seed(0)
    return build_model(variant, image_channels=1, hidden_channels=4, latent_dim=latent_dim,
                       kernel_size=3, image_size=8, levels=16, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_resume_is_exact(tmp_path, variant):
    data = toy_data()
    common = dict(variant=variant, batch_size=8, lr=1e-3, val_data=toy_data(16, seed=1), val_every=3,
                  progress=False, seed=4)
    straight = model_for(variant)
    history = train_vae(straight, data, steps=6, **common)
    assert [h["step"] for h in history] == [3, 6]
    assert all(torch.isfinite(torch.tensor(h["val_loss"])) for h in history)

    # an interrupted run: stopped right after its step-3 checkpoint, then resumed
    interrupted = model_for(variant)
    with pytest.MonkeyPatch.context() as mp:
        import genfast.training.vae as trainer
        saved = []
        real_save = trainer.save_checkpoint

        def save_then_stop(p, s, **kwargs):
            real_save(p, s, **kwargs)
            saved.append(s["step"])
            if s["step"] == 3:
                raise KeyboardInterrupt
        mp.setattr(trainer, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train_vae(interrupted, data, steps=6, checkpoint=str(tmp_path / "cut.pt"), **common)
        assert saved == [3]
    resumed = model_for(variant)
    history_resumed = train_vae(resumed, data, steps=6, checkpoint=str(tmp_path / "cut.pt"), **common)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in history_resumed] == [h["train_loss"] for h in history]


def test_checkpoint_mismatch_and_load(tmp_path):
    data = toy_data()
    path = str(tmp_path / "ck.pt")
    model = model_for("vae")
    train_vae(model, data, steps=2, batch_size=8, checkpoint=path, progress=False)
    loaded = load_vae(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="config that differs from this run's: batch_size 8 -> 16"):
        train_vae(model_for("vae"), data, steps=4, batch_size=16, checkpoint=path, progress=False)


def test_bad_arguments():
    data = toy_data()
    with pytest.raises(ValueError, match="variant must be one of"):
        train_vae(model_for("vae"), data, variant="gan", steps=1)
    with pytest.raises(ValueError, match="needs an AE"):
        train_vae(model_for("vae"), data, variant="ae", steps=1)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_vae(model_for("vae"), data, steps=0)
    with pytest.raises(ValueError, match="exceeds the 48"):
        train_vae(model_for("vae"), data, steps=1, batch_size=64)
    with pytest.raises(ValueError, match="levels"):
        train_vae(model_for("vae"), toy_data(levels=8), steps=1, batch_size=8)


def test_latent_space_png(tmp_path):
    model = model_for("vae")
    path = str(tmp_path / "latent.png")
    save_latent_space(model, toy_data(), path, grid=5)
    from PIL import Image
    with Image.open(path) as img:
        assert img.size[0] > 400
    with pytest.raises(ValueError, match="2-D"):
        save_latent_space(model_for("vae", latent_dim=3), toy_data(), path)


def test_run_command_line(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = str(tmp_path / "run")
    args = parser.parse_args(["--variant", "vae", "--size", "8", "--levels", "16", "--latent-dim", "2",
                              "--hidden-channels", "4", "--steps", "3", "--batch-size", "8",
                              "--iwae-k", "4", "--out", out, "--no-progress", "--device", "cpu"])
    assert run(args, data_loader=lambda size, levels: (toy_data(levels=levels), toy_data(16, levels, 1))) == 0
    for name in ("checkpoint.pt", "reconstructions.png", "samples.png", "latent.png", "metrics.json"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["test_iwae"]["k"] == 4 and metrics["test_iwae"]["bits_per_dim"] > 0


def test_fashion_mnist_source(monkeypatch):
    import genfast.data
    from genfast.training.vae import load_data

    calls = []

    def fake(root=None, split="train", size=28, levels=256, limit=None):
        calls.append((split, size, levels))
        return toy_data(levels=levels)

    monkeypatch.setattr(genfast.data, "load_fashion_mnist", fake, raising=False)
    train, test = load_data("fashion-mnist", 8, 16)
    assert calls == [("train", 8, 16), ("test", 8, 16)] and len(train) == len(test) == 48
    with pytest.raises(ValueError, match="the fashion mnist are grey"):
        genfast.data.load_dataset("fashion-mnist", 8, 16, channels=3)
