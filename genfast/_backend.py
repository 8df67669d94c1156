"""Which implementation runs an op: a compiled kernel of genfast._C or the
pure-PyTorch reference.

impl="auto" takes the compiled kernel for the tensor's device when there is one and
otherwise falls back to the reference, warning once per process per reason;
impl="ext" insists on the kernel; impl="reference" never uses it. The environment
variable GENFAST_IMPL=reference forces the reference everywhere (GENFAST_IMPL=ext
makes "auto" behave as "ext").
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

IMPLS = ("auto", "ext", "reference")
_REBUILD = "rebuild with `pip install --no-build-isolation -e .`"


def _load_extension():
    """Returns (module or None, build info or None, why it is unusable or None)."""
    if importlib.util.find_spec("genfast._C") is None:
        return None, None, f"genfast._C is not built; {_REBUILD}"
    try:
        from genfast import _C
    except ImportError as exc:  # e.g. undefined symbols: built against another torch
        return None, None, f"genfast._C failed to load ({exc}); {_REBUILD}"
    info = _C.build_info()
    running = torch.__version__.split("+")[0]
    if info["torch_version"] != running:
        return None, info, (f"genfast._C was built against torch {info['torch_version']} but "
                            f"torch {running} is running; {_REBUILD}")
    return _C, info, None


_C, BUILD_INFO, _UNUSABLE = _load_extension()
# The op schemas exist (fake kernels and autograd can be registered) once _C loaded.
LIBRARY_LOADED = BUILD_INFO is not None

_forced = os.environ.get("GENFAST_IMPL", "auto")
if _forced not in IMPLS:
    raise ValueError(f"GENFAST_IMPL must be one of {IMPLS}, got {_forced!r}")
FORCED_IMPL = _forced

_warned: set[str] = set()


def kernel_unavailable_reason(device_type: str) -> str | None:
    """None when genfast has a usable compiled kernel for this device type, else why not."""
    if _C is None:
        return _UNUSABLE
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        if BUILD_INFO["with_cuda"]:
            return None
        return ("genfast._C was built without CUDA kernels (build where nvcc and a GPU are "
                "visible, or with GENFAST_FORCE_CUDA=1)")
    return f"genfast has no compiled kernels for device type '{device_type}'"


def use_extension(op: str, impl: str, tensor: torch.Tensor, dtypes: dict) -> bool:
    """Decides whether `op` runs its compiled kernel for `tensor` under `impl`.
    `dtypes` maps a device type to the dtypes its kernel supports."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if FORCED_IMPL == "reference" or impl == "reference":
        return False
    if impl == "auto" and FORCED_IMPL == "ext":
        impl = "ext"
    device_type = tensor.device.type
    reason = kernel_unavailable_reason(device_type)
    if reason is None and tensor.dtype not in dtypes.get(device_type, ()):
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes.get(device_type, ()))
        reason = f"the {device_type} kernel of {op} supports {names}, got {tensor.dtype}"
    if reason is None:
        return True
    if impl == "ext":
        raise RuntimeError(f"{op}: impl='ext' was asked for but {reason}")
    if reason not in _warned and not torch.compiler.is_compiling():  # dynamo cannot trace warn
        _warned.add(reason)
        warnings.warn(f"genfast: using the pure-PyTorch reference implementation: {reason}",
                      RuntimeWarning, stacklevel=3)
    return False


def describe(op: str, device_type: str) -> str:
    """What `impl="auto"` picks for `op` on this device type, and why."""
    if FORCED_IMPL == "reference":
        return "reference (GENFAST_IMPL=reference)"
    reason = kernel_unavailable_reason(device_type)
    return "ext" if reason is None else f"reference ({reason})"
