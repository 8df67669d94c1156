"""Argument checks shared by the ops' Python wrappers: one tensor argument
(check_tensor, check_float_tensor), and the many tensors at once of the sampling ops
(wavenet_step, gated_pixelcnn_row, pixelcnn_row, transformer_decode_step)."""
from __future__ import annotations

import torch


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_tensor(op: str, name: str, t) -> None:
    """TypeError naming the argument unless t is a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")


def check_float_tensor(op: str, name: str, t) -> None:
    """TypeError naming the argument unless t is a floating-point tensor."""
    check_tensor(op, name, t)
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")


def check_tensors(op: str, fixed: dict[str, tuple[object, torch.dtype]], floats: dict[str, object],
                  reference: str, float_dtypes: tuple[torch.dtype, ...]) -> None:
    """Every argument is a tensor on the device of floats[reference]; that one has one of
    float_dtypes and every other float argument the same dtype; each `fixed` argument
    (tensor, dtype) has its own dtype (indices, masks, uniforms). Raises TypeError or
    ValueError naming the argument."""
    named = {**{name: t for name, (t, _) in fixed.items()}, **floats}
    for name, t in named.items():
        check_tensor(op, name, t)
    like = floats[reference]
    if like.dtype not in float_dtypes:
        raise TypeError(f"{op}: {reference} must be {' or '.join(map(_name, float_dtypes))}, "
                        f"got {_name(like.dtype)}")
    for name, t in floats.items():
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: {name} must have {reference}'s dtype {_name(like.dtype)}, "
                            f"got {_name(t.dtype)}")
    for name, t in named.items():
        if t.device != like.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {reference} is on {like.device}")
    for name, (t, dtype) in fixed.items():
        if t.dtype != dtype:
            raise TypeError(f"{op}: {name} must be {_name(dtype)}, got {_name(t.dtype)}")
