"""genfast: fast hand-written C++/CUDA kernels for generative models.

Every op in genfast.ops has a pure-PyTorch reference twin, used as the fallback
when no compiled kernel exists for a device and as the oracle of the tests.
"""
from genfast import _backend, nn, ops
from genfast import losses, models  # `import genfast` reaches genfast.nn, .ops, .losses, .models
from genfast._backend import BUILD_INFO

__version__ = "0.1.0"


def backend_info() -> dict:
    """What is compiled, what each op will run on each device under impl="auto", and
    the algorithm choices the autotuner made in this process or finds in its cache
    file (GENFAST_AUTOTUNE_CACHE): "autotune" -> {"enabled", "cache_file", "choices":
    {key: {"op", "phase", "algorithm", "timings_ms", "source"}}}."""
    import torch

    from genfast.ops import _autotune

    return {
        "genfast_version": __version__,
        "torch_version": torch.__version__,
        "build": BUILD_INFO,
        "extension_problem": _backend.kernel_unavailable_reason("cpu"),
        "forced_impl": _backend.FORCED_IMPL,
        "cuda_available": torch.cuda.is_available(),
        "ops": {op: {d: _backend.describe(op, d) for d in ("cpu", "cuda")} for op in ops.OPS},
        "autotune": {"enabled": _autotune.ENABLED, "cache_file": _autotune.CACHE_PATH,
                     "choices": _autotune.choices(read_file=True)},
    }


__all__ = ["backend_info", "nn", "ops", "__version__"]
__all__ += ["losses", "models"]
