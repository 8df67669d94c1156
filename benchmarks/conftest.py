"""Shared fixtures of the benchmark suite (run it with `python benchmarks/run.py`).

Conventions: one file per op or model, benchmarks/test_bench_<name>.py; each case
sets benchmark.group (the case), benchmark.extra_info["impl"] ("genfast" or the
peer's name) and benchmark.extra_info["baseline"] = True on the peer that ratios
are taken against. A case too slow to time in full may time a fixed fraction of its
work and set extra_info["scale"] (the factor run.py multiplies its time by), saying so
in its impl name.
"""
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"], help="device to benchmark on")
    parser.addoption("--quick", action="store_true", help="fewer, smaller cases (GPU check script)")


@pytest.fixture
def bench_device(request) -> str:
    device = request.config.getoption("--device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    return device


@pytest.fixture
def quick(request) -> bool:
    return request.config.getoption("--quick")


def synced(fn, device: str):
    """fn, followed by a device synchronisation so that CUDA work is timed in full."""
    if device != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


def training_step(model, x):
    """One training step of an image model: zero the gradients, backpropagate loss(x)."""
    def step():
        model.zero_grad(set_to_none=True)
        model.loss(x).backward()
    return step


def record(benchmark, group: str, impl: str, baseline: bool = False) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["baseline"] = baseline


MiB = 1 << 20


def cpu_model() -> str:
    """The CPU model string (/proc/cpuinfo's "model name"), named with every figure."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


def peak_memory_mb(fn, device):
    """The peak memory fn allocates above what exists before it, in MiB: CUDA's allocator
    statistics, or on the CPU the running sum of the profiler's allocation events."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / MiB
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak / MiB
