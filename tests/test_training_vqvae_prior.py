"""`genfast train prior` and `genfast sample vqvae` (genfast.training.vqvae): Gated PixelCNN
priors over a tiny VQ-VAE's codes, exact resume, two-stage sampling, bad input."""
import os
import struct

import pytest
import torch

import genfast.training.autoregressive as gtrain
from genfast import cli
from genfast.training.vqvae import load_priors, load_vqvae, sample_codes, top_condition

TINY_VQVAE = ["--limit", "64", "--batch-size", "32", "--size", "16", "--channels", "8",
              "--num-codes", "16", "--code-dim", "4", "--epochs", "1"]
TINY_PRIOR = ["--steps", "6", "--val-every", "3", "--batch-size", "8", "--hidden", "8", "--layers", "2",
              "--kernel-size", "3", "--embedding-dim", "4", "--no-progress"]


def tiny_vqvae(tmp_path_factory, levels):
    """A VQ-VAE checkpoint (16 x 16 images, 16 codes) trained for one short epoch."""
    out = tmp_path_factory.mktemp(f"vqvae{levels}")
    assert cli.main(["train", "vqvae", *TINY_VQVAE, "--levels", str(levels), "--out", str(out)]) == 0
    return str(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def vqvae1(tmp_path_factory):
    return tiny_vqvae(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def vqvae2(tmp_path_factory):
    return tiny_vqvae(tmp_path_factory, 2)


def train_prior(vqvae_path, out, *extra):
    return cli.main(["train", "prior", "--vqvae", vqvae_path, "--out", str(out), *TINY_PRIOR, *extra])


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("levels", [1, 2])
def test_train_prior_then_sample(levels, request, tmp_path, capsys):
    path = request.getfixturevalue(f"vqvae{levels}")
    names = ["codes"] if levels == 1 else ["top", "bottom"]
    assert train_prior(path, tmp_path) == 0
    out = capsys.readouterr().out
    for name in names:
        assert f"test {name}: " in out and "bits per code" in out
    assert sorted(os.listdir(tmp_path)) == sorted(f"prior-{n}.pt" for n in names)  # no temp files

    png = tmp_path / "samples.png"
    assert cli.main(["sample", "vqvae", "--vqvae", path, "--prior", str(tmp_path), "--n", "12",
                     "--out", str(png)]) == 0
    assert "12 samples" in capsys.readouterr().out
    assert png_size(png) == (10 * 33 + 1, 2 * 33 + 1)  # 10 columns of 16 x 16 images, x2, gap 1

    model, _ = load_vqvae(path, torch.device("cpu"))
    priors = load_priors(str(tmp_path), model, 16, torch.device("cpu"))
    assert list(priors) == names
    labels = torch.tensor([3, 1, 4, 1, 5])
    codes = sample_codes(model, priors, labels, generator=torch.Generator().manual_seed(0))
    grids = [(4, 4)] if levels == 1 else [(2, 2), (4, 4)]
    for c, grid in zip(codes, grids):
        assert c.shape == (5, *grid) and c.dtype == torch.long and 0 <= c.min() and c.max() < 16
    assert model.decode_codes(*codes).shape == (5, 1, 16, 16)
    again = sample_codes(model, priors, labels, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(codes, again))  # the seed fixes the draw
    if levels == 2:
        # The bottom prior sees the top code vector of its 2x2 block at each position.
        cond = top_condition(model, codes[0])
        vectors = model.quantizer_top.codes()
        for i, j in [(0, 0), (1, 3), (3, 2)]:
            torch.testing.assert_close(cond[:, :, i, j], vectors[codes[0][:, i // 2, j // 2]])


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(vqvae2, tmp_path, monkeypatch):
    # Two levels: a finished prior (top) and an interrupted one (bottom) resume.
    path = vqvae2
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_prior(path, straight) == 0

    # Killed at step 4 of the bottom prior (the second run through step 4), after the
    # top prior finished and the bottom one checkpointed step 3.
    original, calls = gtrain.batch_indices, []

    def dying(n, batch_size, seed, step):
        calls.append(step)
        if step == 4 and calls.count(4) == 2:
            raise Interrupt
        return original(n, batch_size, seed, step)

    monkeypatch.setattr(gtrain, "batch_indices", dying)
    with pytest.raises(Interrupt):
        train_prior(path, resumed)
    monkeypatch.setattr(gtrain, "batch_indices", original)
    assert torch.load(resumed / "prior-bottom.pt", weights_only=True)["step"] == 3

    assert train_prior(path, resumed, "--resume") == 0
    for name in ("top", "bottom"):
        a = torch.load(straight / f"prior-{name}.pt", weights_only=True)
        b = torch.load(resumed / f"prior-{name}.pt", weights_only=True)
        assert a["step"] == b["step"] == 6 and a["history"] == b["history"]
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (name, key)


def test_bad_input(vqvae1, tmp_path):
    path = vqvae1
    with pytest.raises(SystemExit, match="no checkpoint at"):
        train_prior(str(tmp_path / "missing.pt"), tmp_path / "prior")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read"):
        train_prior(str(junk), tmp_path / "prior")
    with pytest.raises(SystemExit, match="--resume: no checkpoint"):
        train_prior(path, tmp_path / "prior", "--resume")

    prior = tmp_path / "prior"
    assert train_prior(path, prior) == 0
    with pytest.raises(SystemExit, match="not a checkpoint of `genfast train vqvae`"):
        train_prior(str(prior / "prior-codes.pt"), tmp_path / "other")

    def sample(vqvae_path, prior_folder, *extra):
        return cli.main(["sample", "vqvae", "--vqvae", vqvae_path, "--prior", str(prior_folder),
                         "--out", str(tmp_path / "s.png"), *extra])

    with pytest.raises(SystemExit, match="--labels"):
        sample(path, prior, "--labels", "3,12")
    with pytest.raises(SystemExit, match="--n must be positive"):
        sample(path, prior, "--n", "0")
    with pytest.raises(SystemExit, match="no .*prior-codes.pt"):
        sample(path, tmp_path)
    # A prior of another VQ-VAE (8 codes, not 16) is refused, not silently decoded.
    other = tmp_path / "other-vqvae"
    assert cli.main(["train", "vqvae", *TINY_VQVAE, "--num-codes", "8", "--out", str(other)]) == 0
    with pytest.raises(SystemExit, match="another VQ-VAE"):
        sample(str(other / "checkpoint.pt"), prior)
    assert not (tmp_path / "s.png").exists()


TINY_TRANSFORMER = ["--prior", "transformer", "--hidden", "16", "--heads", "2"]


@pytest.mark.parametrize("levels", [1, 2])
def test_transformer_prior_then_sample(levels, request, tmp_path, capsys):
    """`--prior transformer`: CodeTransformer priors (the bottom one given the top codes
    as its prefix), recorded in their checkpoints and sampled by `genfast sample vqvae`."""
    from genfast.models import CodeTransformer

    path = request.getfixturevalue(f"vqvae{levels}")
    names = ["codes"] if levels == 1 else ["top", "bottom"]
    assert train_prior(path, tmp_path, *TINY_TRANSFORMER) == 0
    out = capsys.readouterr().out
    assert "transformer prior over the" in out and all(f"test {n}: " in out for n in names)
    for name in names:
        assert torch.load(tmp_path / f"prior-{name}.pt", weights_only=True)["model_name"] == "code-transformer"

    png = tmp_path / "samples.png"
    assert cli.main(["sample", "vqvae", "--vqvae", path, "--prior", str(tmp_path), "--n", "6", "--top-k", "5",
                     "--top-p", "0.9", "--out", str(png)]) == 0
    assert "6 samples" in capsys.readouterr().out and png.exists()

    model, _ = load_vqvae(path, torch.device("cpu"))
    priors = load_priors(str(tmp_path), model, 16, torch.device("cpu"))
    assert list(priors) == names and all(isinstance(p, CodeTransformer) for p in priors.values())
    if levels == 2:
        assert priors["bottom"].prefix_length == 4 and priors["top"].prefix_length == 0
    labels = torch.tensor([3, 1, 4])
    codes = sample_codes(model, priors, labels, generator=torch.Generator().manual_seed(0), top_k=4)
    again = sample_codes(model, priors, labels, generator=torch.Generator().manual_seed(0), top_k=4)
    grids = [(4, 4)] if levels == 1 else [(2, 2), (4, 4)]
    for c, d, grid in zip(codes, again, grids):
        assert c.shape == (3, *grid) and torch.equal(c, d) and 0 <= c.min() and c.max() < 16
    if levels == 2:  # the bottom codes depend on the top ones through the prefix
        bottom = priors["bottom"]
        x = codes[1][:, None]
        other_top = (codes[0] + 1) % 16
        with torch.no_grad():
            assert not torch.allclose(bottom(x, labels, codes[0]), bottom(x, labels, other_top))


def test_top_k_needs_a_transformer_prior(vqvae1, tmp_path):
    assert train_prior(vqvae1, tmp_path) == 0
    with pytest.raises(SystemExit, match="transformer priors only"):
        cli.main(["sample", "vqvae", "--vqvae", vqvae1, "--prior", str(tmp_path), "--n", "2", "--top-k", "3",
                  "--out", str(tmp_path / "s.png")])


def test_transformer_prior_over_a_vqgan_tokenizer(tmp_path, capsys):
    """VQGAN's two stages: a tokenizer of `genfast train vqgan`, then a transformer prior
    over its codes and two-stage sampling, through the same commands as a VQ-VAE's."""
    from genfast.training import vqgan

    config = vqgan.VQGANConfig(size=16, steps=2, batch_size=8, channels=8, num_codes=16, code_dim=4,
                               disc_channels=8, limit=16, perceptual="off", disc_start=1)
    run = vqgan.train(config, str(tmp_path / "vqgan"), progress=False)
    prior = tmp_path / "prior"
    assert train_prior(run.checkpoint, prior, "--prior", "transformer", "--heads", "2") == 0
    assert "test codes: " in capsys.readouterr().out
    png = tmp_path / "samples.png"
    assert cli.main(["sample", "vqvae", "--vqvae", run.checkpoint, "--prior", str(prior), "--n", "4",
                     "--top-k", "8", "--out", str(png)]) == 0
    assert "4 samples" in capsys.readouterr().out and png.exists()
