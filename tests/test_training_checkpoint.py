"""genfast.training.checkpoint, the one checkpoint helper of every trainer, and what
every command that reads a checkpoint does with a bad one: truncated (half a file),
corrupt (not a torch file), of another model kind, or trained with another config
ends the command with one line naming the file (exit code 1, no traceback), and the
file is left as it was."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from genfast import cli
from genfast.training.checkpoint import (CheckpointError, check_config, load_checkpoint, restoring,
                                         save_checkpoint)

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn")


# -- the helper ------------------------------------------------------------------------
def test_save_records_the_kind_and_load_checks_it(tmp_path):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, {"config": {"a": 1}, "step": 3}, kind="wavenet")
    state = load_checkpoint(path, kind="wavenet", required=("config", "step"))
    assert state == {"config": {"a": 1}, "step": 3, "kind": "wavenet"}
    with pytest.raises(CheckpointError, match="is not a checkpoint of `genfast train vqvae`: it is a "
                                              "checkpoint of `genfast train wavenet`"):
        load_checkpoint(path, kind="vqvae")
    with pytest.raises(CheckpointError, match="it has no 'model'"):
        load_checkpoint(path, kind="wavenet", required=("config", "model"))
    with pytest.raises(ValueError, match="kind must be one of"):
        save_checkpoint(path, {}, kind="gan")


def test_legacy_checkpoints_without_a_kind_are_recognised_by_their_keys(tmp_path):
    path = str(tmp_path / "old.pt")
    save_checkpoint(path, {"config": {}, "model": {}})
    assert load_checkpoint(path, kind="vqvae", required=("config", "model"))["config"] == {}
    with pytest.raises(CheckpointError, match="has no 'optimizer'"):
        load_checkpoint(path, kind="vqvae", required=("config", "model", "optimizer"))


@pytest.mark.parametrize("content,diagnosis", [(b"", "the file is empty"),
                                               (b"not a checkpoint", "not a torch.save file"),
                                               ("half", "truncated: a zip archive of")])
def test_unreadable_files_are_one_line_errors(tmp_path, content, diagnosis):
    path = tmp_path / "c.pt"
    if content == "half":
        save_checkpoint(str(path), {"weights": torch.randn(1000)})
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path), kind="wavenet")
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "cannot read" in message
    assert diagnosis in message
    assert path.read_bytes() == content


def test_missing_file_and_non_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.pt"):
        load_checkpoint(str(tmp_path / "nothing.pt"), kind="vqvae")
    path = str(tmp_path / "list.pt")
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(path, kind="vqvae")


def test_check_config_lists_every_difference():
    check_config("c.pt", {"a": 1, "b": 2}, {"a": 1, "b": 2})
    with pytest.raises(CheckpointError, match=r"c.pt was trained with a config that differs from this "
                                              r"run's: a 1 -> 3, c \(unset\) -> 4, b 2 -> \(unset\)"):
        check_config("c.pt", {"a": 1, "b": 2}, {"a": 3, "c": 4})


def test_restoring_names_the_file():
    layer = torch.nn.Linear(2, 3)
    with pytest.raises(CheckpointError) as info:
        with restoring("w.pt"):
            layer.load_state_dict({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)})
    assert str(info.value).startswith("w.pt does not fit") and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="w.pt does not fit .*missing entry 'rng'"):
        with restoring("w.pt"):
            {}["rng"]


# -- every command that reads a checkpoint -----------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One small checkpoint of every kind: pixelcnn, vqvae (+ its prior), wgan-gp, wavenet."""
    root = tmp_path_factory.mktemp("runs")
    gen = np.random.default_rng(0)
    np.save(root / "x.npy", (gen.random((16, 6, 6)) * 255).astype(np.uint8))
    paths = {"data": str(root / "x.npy"), "pixelcnn": str(root / "p.pt")}
    assert cli.main(PIXELCNN + ["--data", paths["data"], "--checkpoint", paths["pixelcnn"]]) == 0
    assert cli.main(VQVAE + ["--out", str(root / "vq")]) == 0
    paths["vqvae"] = str(root / "vq" / "checkpoint.pt")
    assert cli.main(PRIOR + ["--vqvae", paths["vqvae"], "--out", str(root / "prior")]) == 0
    paths["prior"] = str(root / "prior")
    paths["prior-codes"] = str(root / "prior" / "prior-codes.pt")
    assert cli.main(WGAN + ["--out", str(root / "gan")]) == 0
    paths["wgan-gp"] = str(root / "gan" / "checkpoint.pt")
    assert cli.main(WAVENET + ["--out", str(root / "wave")]) == 0
    paths["wavenet"] = str(root / "wave" / "checkpoint.pt")
    return paths


PIXELCNN = ["train", "pixelcnn", "--size", "6", "--levels", "4", "--hidden", "4", "--blocks", "1",
            "--steps", "1", "--batch-size", "4", "--no-progress"]
VQVAE = ["train", "vqvae", "--limit", "32", "--batch-size", "32", "--size", "16", "--channels", "4",
         "--num-codes", "8", "--code-dim", "2", "--epochs", "1"]
PRIOR = ["train", "prior", "--steps", "2", "--val-every", "2", "--batch-size", "8", "--hidden", "4",
         "--layers", "1", "--kernel-size", "3", "--embedding-dim", "2", "--no-progress"]
WGAN = ["train", "wgan-gp", "--steps", "1", "--batch-size", "8", "--hidden", "4", "--quiet",
        "--device", "cpu", "--sample-every", "100"]
WAVENET = ["train", "wavenet", "--steps", "1", "--batch-size", "2", "--segment", "8",
           "--residual-channels", "2", "--cycles", "1", "--cycle-length", "2", "--seconds", "1",
           "--num-samples", "0", "--device", "cpu", "--quiet"]


def copy_to(tmp_path, source, mangle=None, name="checkpoint.pt"):
    """A copy of `source` in a fresh folder, optionally mangled: 'half' (truncated) or
    'junk' (not a torch file)."""
    folder = tmp_path / f"copy-{len(os.listdir(tmp_path))}"
    folder.mkdir()
    data = open(source, "rb").read()
    if mangle == "half":
        data = data[: len(data) // 2]
    elif mangle == "junk":
        data = b"\x00garbage\x00" * 10
    path = folder / name
    path.write_bytes(data)
    return path


def commands(paths, path, folder):
    """Every command reading a checkpoint, with `path` as that checkpoint (in `folder`,
    named as its trainer names it)."""
    out = str(folder / "out.png")
    return {
        "train pixelcnn": PIXELCNN + ["--data", paths["data"], "--checkpoint", str(path)],
        "sample pixelcnn": ["sample", "pixelcnn", "--checkpoint", str(path), "--out", out],
        "train vqvae --resume": VQVAE + ["--out", str(folder), "--resume", "--epochs", "2"],
        "train prior --vqvae": ["train", "prior", "--vqvae", str(path), "--out", str(folder / "p"),
                                "--steps", "1", "--no-progress"],
        "train prior --resume": PRIOR + ["--vqvae", paths["vqvae"], "--out", str(folder), "--resume",
                                         "--steps", "3"],
        "sample vqvae --vqvae": ["sample", "vqvae", "--vqvae", str(path), "--prior", paths["prior"],
                                 "--out", out],
        "train wgan-gp --resume": WGAN + ["--out", str(folder), "--resume", "--steps", "2"],
        "sample wgan-gp": ["sample", "wgan-gp", "--checkpoint", str(path), "--out", out],
        "train wavenet --resume": WAVENET + ["--out", str(folder), "--resume", "--steps", "2"],
        "sample wavenet": ["sample", "wavenet", "--checkpoint", str(path), "--out", str(folder / "w"),
                           "--device", "cpu"],
    }


# command -> the kind of checkpoint it reads
READS = {"train pixelcnn": "pixelcnn", "sample pixelcnn": "pixelcnn", "train vqvae --resume": "vqvae",
         "train prior --vqvae": "vqvae", "train prior --resume": "prior-codes", "sample vqvae --vqvae": "vqvae", "train wgan-gp --resume": "wgan-gp",
         "sample wgan-gp": "wgan-gp", "train wavenet --resume": "wavenet", "sample wavenet": "wavenet"}
OTHER = {"pixelcnn": "wavenet", "vqvae": "wgan-gp", "wgan-gp": "vqvae", "wavenet": "pixelcnn",
         "prior-codes": "vqvae"}
# the file name each command looks for in its folder
NAMES = {"prior-codes": "prior-codes.pt"}


def fails_in_one_line(args, path, match):
    before = path.read_bytes()
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert str(path) in message, message
    assert match in message, message
    assert path.read_bytes() == before  # never overwritten
    return message


@pytest.mark.parametrize("command", list(READS))
@pytest.mark.parametrize("mangle", ["half", "junk"])
def test_truncated_or_corrupt_checkpoint(runs, tmp_path, command, mangle):
    path = copy_to(tmp_path, runs[READS[command]], mangle, NAMES.get(READS[command], "checkpoint.pt"))
    fails_in_one_line(commands(runs, path, path.parent)[command], path, "cannot read")


@pytest.mark.parametrize("command", list(READS))
def test_checkpoint_of_another_model(runs, tmp_path, command):
    path = copy_to(tmp_path, runs[OTHER[READS[command]]], None, NAMES.get(READS[command], "checkpoint.pt"))
    fails_in_one_line(commands(runs, path, path.parent)[command], path, "is not a checkpoint of")


@pytest.mark.parametrize("command,change", [
    ("train pixelcnn", ["--hidden", "8"]),
    ("train vqvae --resume", ["--num-codes", "16"]),
    ("train wgan-gp --resume", ["--hidden", "8"]),
    ("train wavenet --resume", ["--residual-channels", "4"]),
    ("train prior --resume", ["--hidden", "8"]),
])
def test_resume_with_another_config(runs, tmp_path, command, change):
    path = copy_to(tmp_path, runs[READS[command]], None, NAMES.get(READS[command], "checkpoint.pt"))
    args = commands(runs, path, path.parent)[command] + change
    message = fails_in_one_line(args, path, "was trained with a config that differs")
    assert change[0][2:].replace("-", "_") in message


def test_prior_of_another_kind_in_the_prior_folder(runs, tmp_path):
    folder = tmp_path / "prior"
    folder.mkdir()
    path = folder / "prior-codes.pt"
    path.write_bytes(open(runs["wavenet"], "rb").read())
    fails_in_one_line(["sample", "vqvae", "--vqvae", runs["vqvae"], "--prior", str(folder),
                       "--out", str(tmp_path / "s.png")], path, "is not a checkpoint of")
    path.write_bytes(path.read_bytes()[:100])
    fails_in_one_line(["sample", "vqvae", "--vqvae", runs["vqvae"], "--prior", str(folder),
                       "--out", str(tmp_path / "s.png")], path, "cannot read")


def test_weights_that_do_not_fit(runs, tmp_path):
    # A checkpoint whose config and weights disagree (edited by hand, or another version).
    state = torch.load(runs["pixelcnn"], weights_only=True)
    state["model_config"]["hidden_channels"] = 8
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    fails_in_one_line(["sample", "pixelcnn", "--checkpoint", str(path), "--out", str(tmp_path / "s.png")],
                      path, "does not fit")


def test_the_real_command_exits_nonzero_without_a_traceback(runs, tmp_path):
    path = copy_to(tmp_path, runs["vqvae"], mangle="half")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "genfast", "sample", "vqvae", "--vqvae", str(path),
                             "--prior", runs["prior"], "--out", str(tmp_path / "s.png")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: cannot read {path} as a checkpoint")
