"""WGAN-GP training (genfast.training.wgan_gp): mode coverage on 8 Gaussians
(genfast.metrics), the digits data (genfast.data), exact resume and the command line
(atomic checkpoints: genfast.training.checkpoint, tested in test_training_checkpoint.py)."""
import json
import os

import pytest
import torch

from genfast import cli
from genfast.data import load_digits16, ring8_centers
from genfast.metrics import mode_coverage
from genfast.training.wgan_gp import WGANGPConfig, WGANGPTrainer, load_trainer, train

# A short 8-Gaussians run with a fixed seed: the paper's penalty (lambda 10) and 5
# critic steps per generator step, with larger, two-timescale step sizes than the
# paper's 1e-4 so that 250 steps suffice (the paper's settings take ~800 here).
# Seeds 0, 1 and 2 all cover the 8 modes by step 250.
FAST_RING8 = dict(data="ring8", steps=250, batch_size=256, hidden=128, z_dim=2, lr=3e-4, critic_lr=1e-3,
                  beta1=0.5, seed=0)


@pytest.fixture
def one_thread():
    # Bit-for-bit reproducible training: a fixed thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mode_coverage_metric():
    centers = ring8_centers()
    assert torch.allclose(centers.norm(dim=1), torch.full((8,), 2 / 1.414))
    gen = torch.Generator().manual_seed(0)
    all_modes = centers.repeat(50, 1) + 0.05 * torch.randn(400, 2, generator=gen)
    assert mode_coverage(all_modes) == (8, 1.0)
    assert mode_coverage(centers[:3].repeat(100, 1))[0] == 3
    assert mode_coverage(torch.zeros(100, 2)) == (0, 0.0)  # collapsed on the centre


def test_short_ring8_run_covers_all_modes(one_thread):
    trainer = WGANGPTrainer(WGANGPConfig(**FAST_RING8))
    while trainer.step < trainer.config.steps:
        trainer.train_step()
    covered, close = mode_coverage(trainer.samples(2000))
    assert covered == 8, f"only {covered}/8 modes covered"
    # Concentrated on the modes: points spread evenly over [-2, 2]^2 would put ~10% there.
    assert close > 0.25
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in trainer.history)


def test_digits_data_and_steps(one_thread):
    images = load_digits16()
    assert images.shape == (1797, 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.3
    trainer = WGANGPTrainer(WGANGPConfig(data="digits", steps=2, batch_size=16, hidden=8, z_dim=8))
    for _ in range(2):
        record = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(v)) for v in record.values())
    assert trainer.samples(5).shape == (5, 1, 16, 16)


def test_resume_is_exact(tmp_path, one_thread):
    small = dict(FAST_RING8, hidden=16, batch_size=32)
    config = WGANGPConfig(**dict(small, steps=6))
    straight = train(config, str(tmp_path / "straight"), progress=False)
    half = WGANGPConfig(**dict(small, steps=3))
    train(half, str(tmp_path / "resumed"), progress=False)
    resumed = train(config, str(tmp_path / "resumed"), resume=True, progress=False)
    assert resumed.step == straight.step == 6
    assert resumed.history == straight.history
    for a, b in zip(straight.state_dict()["critic"].values(), resumed.state_dict()["critic"].values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.generator.parameters(), resumed.generator.parameters()):
        assert torch.equal(a, b)
    # A changed setting cannot silently resume.
    with pytest.raises(ValueError, match="differ"):
        train(WGANGPConfig(**dict(small, steps=8, lr=5e-4)), str(tmp_path / "resumed"), resume=True,
              progress=False)
    with pytest.raises(FileNotFoundError):
        train(config, str(tmp_path / "nothing"), resume=True, progress=False)


def test_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "wgan-gp", "--data", "ring8", "--steps", "4", "--batch-size", "16", "--hidden", "8",
            "--sample-every", "2", "--checkpoint-every", "2", "--out", out, "--quiet", "--device", "cpu"]
    assert cli.main(args) == 0
    files = set(os.listdir(out))
    assert {"samples_000002.png", "samples_000004.png", "losses.png", "history.json", "checkpoint.pt"} <= files
    assert "modes covered" in capsys.readouterr().out
    with open(os.path.join(out, "history.json")) as f:
        assert [h["step"] for h in json.load(f)] == [1, 2, 3, 4]
    assert cli.main(args[:5] + ["6"] + args[6:] + ["--resume"]) == 0
    assert load_trainer(os.path.join(out, "checkpoint.pt")).step == 6
    png = str(tmp_path / "s.png")
    assert cli.main(["sample", "wgan-gp", "--checkpoint", os.path.join(out, "checkpoint.pt"), "--out", png]) == 0
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    digits = str(tmp_path / "digits")
    assert cli.main(["train", "wgan-gp", "--data", "digits", "--steps", "1", "--batch-size", "8", "--hidden", "4",
                     "--z-dim", "4", "--out", digits, "--quiet", "--device", "cpu"]) == 0
    assert "samples_000001.png" in os.listdir(digits)


def test_bad_settings():
    with pytest.raises(ValueError, match="data must be one of"):
        WGANGPTrainer(WGANGPConfig(data="mnist"))
    with pytest.raises(ValueError, match="n_critic must be positive"):
        WGANGPTrainer(WGANGPConfig(n_critic=0))
