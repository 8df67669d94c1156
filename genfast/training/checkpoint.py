"""The one checkpoint helper of every genfast trainer: atomic saves, reads that fail
in one line naming the file and what is wrong with it, and the resume check that
a run continues with the settings it was started with.

A checkpoint is a dict saved with torch.save. Trainers record their `kind` in it
(KINDS); checkpoints written before the kind was recorded are recognised by the
keys their kind requires. Reading never writes: a checkpoint that cannot be used
is left as it is.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
from contextlib import contextmanager

import torch

# kind -> the command (or function) that writes such checkpoints, for messages.
KINDS = {
    "image-model": "`genfast train pixelcnn|gated-pixelcnn|pixelcnnpp|prior` (genfast.train)",
    "vqvae": "`genfast train vqvae`",
    "wgan-gp": "`genfast train wgan-gp`",
    "wavenet": "`genfast train wavenet`",
    "vae": "`genfast train vae` (genfast.training.vae)",
    "vqgan": "`genfast train vqgan`",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line and names the file.
    saved_kind: the kind the file records when it is a checkpoint of another trainer
    (so a caller accepting several kinds can tell), else None."""

    def __init__(self, message: str, saved_kind: str | None = None):
        super().__init__(message)
        self.saved_kind = saved_kind


def one_line(text: str) -> str:
    """An exception's message on one line (torch's load errors span several)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def save_checkpoint(path: str, state: dict, *, kind: str | None = None) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a
    crash leaves the previous checkpoint or the new one, never a torn file. kind:
    recorded as state["kind"] (one of KINDS)."""
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"save_checkpoint: kind must be one of {sorted(KINDS)}, got {kind!r}")
        state = {**state, "kind": kind}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, *, kind: str, required: tuple[str, ...] = (),
                    map_location=None) -> dict:
    """The state dict saved at `path` by a trainer of `kind`, read with
    weights_only=True. Raises FileNotFoundError when there is no file, and
    CheckpointError (a ValueError) when it is unreadable (corrupt, truncated, not a
    torch file), not a dict, of another kind, or lacks one of the `required` keys."""
    if kind not in KINDS:
        raise ValueError(f"load_checkpoint: kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a torn or foreign file: torch's message spans lines
        reason = one_line(exc)
        if len(reason) > 200:
            reason = reason[:200] + "..."
        detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise CheckpointError(f"cannot read {path} as a checkpoint ({_diagnose(path)}): "
                              f"{detail}") from None
    expected = f"a checkpoint of {KINDS[kind]}"
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not {expected}: it holds a {type(state).__name__}, "
                              f"not a dict")
    saved_kind = state.get("kind")
    if saved_kind is not None and saved_kind != kind:
        what = KINDS.get(saved_kind, repr(saved_kind))
        raise CheckpointError(f"{path} is not {expected}: it is a checkpoint of {what}", saved_kind)
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not {expected}: it has no {', '.join(map(repr, missing))}")
    return state


def _diagnose(path: str) -> str:
    """What is wrong with a file torch.load refused, as far as its bytes tell."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if size == 0:
        return "the file is empty"
    if head == b"PK\x03\x04":  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            return f"truncated: a zip archive of {size} bytes without its end"
        return "corrupt: a zip archive torch cannot read"
    return "not a torch.save file"


def check_config(path: str, saved: dict, wanted: dict) -> None:
    """Resuming: raises CheckpointError listing every setting of `wanted` that the
    checkpoint at `path` was trained with differently (`saved`)."""
    diff = [f"{key} {repr(saved[key]) if key in saved else '(unset)'} -> {value!r}"
            for key, value in wanted.items() if key not in saved or saved[key] != value]
    diff += [f"{key} {value!r} -> (unset)" for key, value in saved.items() if key not in wanted]
    if diff:
        raise CheckpointError(f"{path} was trained with a config that differs from this run's: "
                              f"{', '.join(diff)}; resume with the same settings or use another "
                              f"checkpoint path")


@contextmanager
def restoring(path: str):
    """Wraps the code that loads a checkpoint's contents (load_state_dict of models and
    optimisers, RNG states): any failure there is a CheckpointError naming the file."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        reason = one_line(exc)
        if len(reason) > 300:
            reason = reason[:300] + "..."
        label = f"missing entry {reason}" if isinstance(exc, KeyError) else reason
        raise CheckpointError(f"{path} does not fit (corrupt, or written by another version "
                              f"or model?): {label}") from None


def resume_run(trainer, path: str, config, *, kind: str, required: tuple[str, ...], device,
               name: str) -> None:
    """Continues `trainer` (load_state_dict) from the checkpoint at `path` of a run whose
    settings are the dataclass `config`: the checkpoint must exist and be of `kind`, and
    every setting but `steps` (which may grow on resume) must be the run's."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: --resume but there is no checkpoint at {path}")
    state = load_checkpoint(path, kind=kind, required=required, map_location=device)
    check_config(path, dict(state["config"], steps=config.steps), dataclasses.asdict(config))
    with restoring(path):
        trainer.load_state_dict(state)
