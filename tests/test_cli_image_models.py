"""The model commands: genfast train / sample pixelcnn|gated-pixelcnn and genfast demo."""
import numpy as np
import pytest
import torch
from PIL import Image

import genfast.demo as demo
from genfast.cli import main


@pytest.fixture
def tiny_npy(tmp_path):
    gen = np.random.default_rng(0)
    images = (gen.random((24, 6, 6)) * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.arange(24) % 3)
    return str(tmp_path / "x.npy"), str(tmp_path / "y.npy")


def test_train_and_sample_gated_pixelcnn(tmp_path, tiny_npy, capsys):
    data, labels = tiny_npy
    ckpt = str(tmp_path / "g.pt")
    args = ["train", "gated-pixelcnn", "--data", data, "--labels-npy", labels, "--size", "6",
            "--levels", "4", "--hidden", "6", "--layers", "2", "--kernel-size", "3", "--steps", "4",
            "--batch-size", "4", "--val-every", "2", "--checkpoint", ckpt, "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test bits/dim:" in out and "masked layers on cpu" in out
    assert torch.load(ckpt, weights_only=True)["model_config"]["num_classes"] == 3
    png = str(tmp_path / "s.png")
    assert main(["sample", "gated-pixelcnn", "--checkpoint", ckpt, "--n", "2", "--out", png]) == 0
    # One row per class, 2 samples each, 6x6 cells scaled 4x with 1-pixel gaps.
    assert np.asarray(Image.open(png)).shape == (3 * 25 + 1, 2 * 25 + 1)
    assert "6 samples (cached) in" in capsys.readouterr().out
    naive_png = str(tmp_path / "n.png")
    assert main(["sample", "gated-pixelcnn", "--checkpoint", ckpt, "--n", "2", "--out", naive_png,
                 "--method", "naive"]) == 0
    assert "6 samples (naive) in" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(naive_png)), np.asarray(Image.open(png)))


def test_train_unconditional_pixelcnn_resumes(tmp_path, tiny_npy, capsys):
    data, _ = tiny_npy
    ckpt = str(tmp_path / "p.pt")
    args = ["train", "pixelcnn", "--data", data, "--size", "6", "--levels", "4", "--hidden", "4",
            "--blocks", "1", "--steps", "2", "--batch-size", "4", "--checkpoint", ckpt, "--no-progress"]
    assert main(args) == 0
    args[args.index("--steps") + 1] = "3"
    assert main(args) == 0
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and state["model_config"]["num_classes"] is None
    assert main(["sample", "pixelcnn", "--checkpoint", ckpt, "--n", "3", "--out", str(tmp_path / "p.png")]) == 0


def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    # The real demo's model is bigger; the same code path with a tiny one.
    monkeypatch.setattr(demo, "DEMO_SIZE", 8)
    monkeypatch.setattr(demo, "DEMO_MODEL", dict(hidden_channels=6, num_layers=1, kernel_size=3))
    monkeypatch.setattr(demo, "DEMO_SAMPLES_PER_CLASS", 2)
    monkeypatch.setattr(demo, "DEMO_COMPLETIONS", 2)
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--steps", "2", "--out", str(tmp_path), "--threads", "1", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for line in ("test bits/dim:", "sampling 20 digits: cached", "20/20 digits identical",
                 "backend: masked layers on cpu",
                 "(1 CPU thread(s))"):
        assert line in out
    samples = np.asarray(Image.open(tmp_path / "samples.png"))
    assert samples.shape == (10 * 33 + 1, 2 * 33 + 1)
    completions = np.asarray(Image.open(tmp_path / "completions.png"))
    assert completions.shape == (10 * 33 + 1, 4 * 33 + 1)


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit, match="no CUDA device is visible"):
        main(["demo", "--device", "cuda"])


def test_bad_arguments_end_with_a_message(tmp_path, tiny_npy):
    data, _ = tiny_npy
    base = ["train", "pixelcnn", "--data", data, "--steps", "1", "--checkpoint", str(tmp_path / "x.pt")]
    with pytest.raises(SystemExit, match="error: the image size must be a positive int, got 0"):
        main(base + ["--size", "0"])
    with pytest.raises(SystemExit, match="levels must be an int >= 2"):
        main(base + ["--size", "6", "--levels", "1"])
    with pytest.raises(SystemExit, match="hidden must be a positive multiple"):
        main(base + ["--size", "6", "--hidden", "0"])
    with pytest.raises(SystemExit, match="error: data must be 'digits'"):
        main(["train", "gated-pixelcnn", "--data", str(tmp_path / "nothing.npy")])
    with pytest.raises(SystemExit, match="--threads must be positive"):
        main(["demo", "--threads", "0"])
    with pytest.raises(SystemExit, match="error: .*missing.pt"):
        main(["sample", "pixelcnn", "--checkpoint", str(tmp_path / "missing.pt")])


def test_train_resume_and_sample_pixelcnnpp(tmp_path, tiny_npy, capsys):
    data, labels = tiny_npy
    ckpt = str(tmp_path / "pp.pt")
    args = ["train", "pixelcnnpp", "--data", data, "--labels-npy", labels, "--size", "8", "--levels", "16",
            "--nr-resnet", "1", "--nr-filters", "4", "--num-mixtures", "2", "--dropout", "0.1",
            "--steps", "2", "--batch-size", "4", "--val-every", "2", "--checkpoint", ckpt, "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test bits/dim:" in out and "dmol_loss on cpu" in out
    args[args.index("--steps") + 1] = "3"
    assert main(args) == 0
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3 and state["model_name"] == "pixelcnnpp"
    assert state["model_config"]["num_classes"] == 3 and state["model_config"]["nr_filters"] == 4
    pngs = {}
    for method in ("cached", "naive"):
        pngs[method] = str(tmp_path / f"{method}.png")
        assert main(["sample", "pixelcnnpp", "--checkpoint", ckpt, "--n", "2", "--out", pngs[method],
                     "--method", method]) == 0
        assert f"6 samples ({method}) in" in capsys.readouterr().out
    cached = np.asarray(Image.open(pngs["cached"]))
    assert cached.shape == (3 * 33 + 1, 2 * 33 + 1)
    assert np.array_equal(cached, np.asarray(Image.open(pngs["naive"])))
    with pytest.raises(SystemExit, match="image_size must be multiples of 4"):
        main(args[:args.index("--size") + 1] + ["6"] + args[args.index("--size") + 2:])
