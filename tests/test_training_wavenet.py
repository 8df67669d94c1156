"""The WaveNet trainer (genfast.training.wavenet) and its commands `genfast train wavenet` /
`genfast sample wavenet`: outputs, exact resume, bad settings; the synthetic signal (genfast.data)."""
import json
import os

import numpy as np
import pytest
import torch

from genfast.cli import main
from genfast.data import synthesize_signal
from genfast.training.wavenet import WaveNetTrainConfig, train

TINY = ["--steps", "4", "--batch-size", "2", "--segment", "16", "--residual-channels", "4",
        "--cycles", "1", "--cycle-length", "3", "--seconds", "2", "--sample-length", "40",
        "--num-samples", "1", "--checkpoint-every", "2", "--device", "cpu", "--quiet"]


def test_synthetic_signal_is_deterministic_and_in_range():
    a, b = synthesize_signal(1.0, seed=3), synthesize_signal(1.0, seed=3)
    assert a.dtype == np.float32 and a.shape == (4000,)
    assert np.array_equal(a, b) and not np.array_equal(a, synthesize_signal(1.0, seed=4))
    assert np.abs(a).max() <= 0.95 + 1e-6 and a.std() > 0.05


def test_train_writes_outputs_and_sample_command(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "wavenet", *TINY, "--out", out]) == 0
    for name in ("checkpoint.pt", "history.json", "samples_000004.npy", "samples_000004.wav",
                 "samples_000004.png"):
        assert os.path.exists(os.path.join(out, name)), name
    history = json.load(open(os.path.join(out, "history.json")))
    assert [h["step"] for h in history] == [1, 2, 3, 4] and "validation_bits" in history[-1]
    waves = np.load(os.path.join(out, "samples_000004.npy"))
    assert waves.shape == (1, 40) and np.abs(waves).max() <= 1
    assert "bits/sample" in capsys.readouterr().out
    prefix = str(tmp_path / "s")
    assert main(["sample", "wavenet", "--checkpoint", os.path.join(out, "checkpoint.pt"), "--out", prefix,
                 "--num", "2", "--length", "30", "--device", "cpu"]) == 0
    assert np.load(prefix + ".npy").shape == (2, 30) and os.path.exists(prefix + ".png")


def test_resume_continues_exactly(tmp_path):
    config = dict(batch_size=2, segment=16, residual_channels=4, cycles=1, cycle_length=3, seconds=2.0)
    kwargs = dict(num_samples=0, checkpoint_every=2, progress=False)
    straight = train(WaveNetTrainConfig(steps=4, **config), str(tmp_path / "a"), **kwargs)
    train(WaveNetTrainConfig(steps=2, **config), str(tmp_path / "b"), **kwargs)
    resumed = train(WaveNetTrainConfig(steps=4, **config), str(tmp_path / "b"), resume=True, **kwargs)
    assert resumed.step == 4 and resumed.history == straight.history
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_resume_errors(tmp_path):
    config = dict(batch_size=2, segment=16, residual_channels=4, cycles=1, cycle_length=3, seconds=2.0)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(WaveNetTrainConfig(steps=2, **config), str(tmp_path), resume=True, progress=False)
    train(WaveNetTrainConfig(steps=2, **config), str(tmp_path), num_samples=0, progress=False)
    with pytest.raises(ValueError, match="residual_channels 4 -> 8"):
        train(WaveNetTrainConfig(steps=3, **(config | {"residual_channels": 8})), str(tmp_path), resume=True,
              progress=False)
    with pytest.raises(ValueError, match="steps must be positive"):
        WaveNetTrainConfig(steps=0).check()
