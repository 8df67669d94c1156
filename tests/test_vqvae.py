"""VQVAE / VQVAE2: shapes, gradients, encode/decode round trip, bad input; the
`genfast train vqvae` command: outputs, codebook usage report, exact resume."""
import os
import struct

import pytest
import torch

from genfast import cli
from genfast.models import VQVAE, VQVAE2

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn")

SMALL = dict(channels=8, res_channels=4, res_blocks=1, num_codes=16, code_dim=4)


@pytest.mark.parametrize("ema", [True, False])
def test_vqvae_shapes_and_gradients(ema):
    torch.manual_seed(0)
    model = VQVAE(in_channels=3, downsample=2, ema=ema, **SMALL)
    x = torch.randn(2, 3, 16, 12)
    loss, out = model.loss(x)
    assert out.reconstruction.shape == x.shape and out.vq.indices.shape == (2, 4, 3)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert ema == (not isinstance(model.quantizer.codebook, torch.nn.Parameter))


def test_vqvae2_levels_and_round_trip():
    torch.manual_seed(1)
    model = VQVAE2(in_channels=1, **SMALL).eval()
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
    model = VQVAE(in_channels=1, downsample=1, **SMALL).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model.decode_codes(model.encode(x)), model(x).reconstruction)


@pytest.mark.parametrize("model,x,match", [
    (lambda: VQVAE(in_channels=1, **SMALL), torch.randn(2, 3, 16, 16), r"expected images \(B, 1, H, W\)"),
    (lambda: VQVAE(in_channels=1, downsample=2, **SMALL), torch.randn(2, 1, 10, 16), "multiples of 4"),
    (lambda: VQVAE2(in_channels=1, **SMALL), torch.randn(2, 1, 12, 16), "multiples of 8"),
    (lambda: VQVAE2(in_channels=1, **SMALL), torch.randn(1, 16, 16), r"expected images"),
])
def test_bad_input(model, x, match):
    with pytest.raises(ValueError, match=match):
        model()(x)


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
