"""What every command module of genfast.cli shares: turning user errors into one line,
and picking the device."""
from __future__ import annotations

import functools

import torch


def one_line_error(exc: BaseException) -> str:
    """`error: <message>` on one line."""
    return "error: " + " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def user_errors(command):
    """Bad arguments, data or checkpoints end the command with their message on one
    line (SystemExit, exit code 1), not a traceback. Checkpoint problems arrive as
    genfast.training.checkpoint.CheckpointError, a ValueError naming the file."""
    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(one_line_error(exc)) from None
    return run


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device(name: str | None) -> torch.device:
    """The device of --device (default: cuda when visible); a clear error for cuda
    without a visible device."""
    if name is None:
        name = default_device()
    try:
        chosen = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA device is visible")
    return chosen
