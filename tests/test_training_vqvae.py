"""The VQ-VAE trainer (genfast.training.vqvae) through `genfast train vqvae`: outputs,
codebook usage report, exact resume, the resume's configuration check."""
import os
import struct

import pytest
import torch

from genfast import cli

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn")


def run_cli(out, *extra):
    args = ["train", "vqvae", "--limit", "64", "--batch-size", "32", "--size", "16", "--channels", "8",
            "--num-codes", "16", "--code-dim", "4", "--out", str(out), *extra]
    assert cli.main(args) == 0


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("levels", ["1", "2"])
def test_train_command(tmp_path, capsys, levels):
    run_cli(tmp_path, "--epochs", "1", "--levels", levels)
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err and "2/2" in captured.err  # the progress bar
    names = ["codes"] if levels == "1" else ["top", "bottom"]
    for name in names:
        assert f"codebook usage ({name}): " in captured.out and "/16 codes used" in captured.out
    width, height = png_size(tmp_path / "reconstructions.png")
    assert (width, height) == (12 * 33 + 1, 2 * 33 + 1)  # 12 images of 16 x 16, 2 rows, x2, gap 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "reconstructions.png"]  # no temp files


def test_resume_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli(straight, "--epochs", "2")
    run_cli(resumed, "--epochs", "1")
    run_cli(resumed, "--epochs", "2", "--resume")
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def test_resume_checks_the_configuration(tmp_path):
    run_cli(tmp_path, "--epochs", "1")
    with pytest.raises(SystemExit, match="trained with"):
        run_cli(tmp_path, "--epochs", "2", "--resume", "--num-codes", "8")
