"""nearest_code against the ways a VQ user finds nearest codes otherwise: torch.cdist
+ argmin (the baseline), the expanded form ||x||^2 - 2 x.e + ||e||^2 + argmin
(taming's VectorQuantizer2, rosinality's vq-vae-2), and faiss's IndexFlatL2 (a
tiled GEMM with a fused k-select; the faiss-cpu package, and faiss's GPU index
where a GPU build is installed), and on a GPU the expanded form in cupy (cupy matrix
product + argmin on the same memory, shared through DLPack; optional: pip install
cupy-cuda13x). Each case also records the peak extra memory of
one call (extra_info["peak_memory_mib"]). Sizes are those of VQ-VAE-2, ViT-VQGAN
and VQGAN codebooks; GENFAST_BENCH_LARGE=1 adds the largest (N = 262144).
"""
import os

import pytest
import torch
from conftest import record, synced

from genfast.ops import nearest_code, nearest_code_reference

LARGE = os.environ.get("GENFAST_BENCH_LARGE") == "1"

# (N, K, D): vectors, codes, features.
CPU_CASES = [
    (65536, 1024, 64),   # VQ-VAE-2-like; the CPU target
    (16384, 8192, 32),   # ViT-VQGAN-like (many low-dimensional codes)
    (4096, 16384, 256),  # VQGAN f16 codebook, a small batch
    (65536, 512, 8),     # tiny codes: the epilogue dominates
]
LARGE_CPU_CASES = [(262144, 4096, 64), (65536, 16384, 256)]
CUDA_CASES = [(262144, 16384, 256), (65536, 1024, 64), (262144, 8192, 32)]  # the first: the H100 target
QUICK_CUDA_CASES = [(65536, 16384, 256)]
QUICK_CPU_CASES = [(16384, 1024, 64)]


def faiss_search(device):
    """A function (x, e) -> (distances, indices) over a flat L2 index built once per
    codebook (index construction is not timed), or None with the reason."""
    try:
        import faiss
    except ImportError:
        return None, "faiss is not installed (pip install faiss-cpu)"
    if device == "cuda" and not hasattr(faiss, "StandardGpuResources"):
        return None, "this faiss build has no GPU index (faiss-cpu)"
    cache = {}

    def search(x, e):
        key = (e.data_ptr(), tuple(e.shape))
        if key not in cache:
            cache.clear()
            if device == "cuda":
                resources = faiss.StandardGpuResources()
                index = faiss.GpuIndexFlatL2(resources, e.shape[1])
                cache["resources"] = resources
            else:
                index = faiss.IndexFlatL2(e.shape[1])
            index.add(e.float().cpu().numpy())
            cache[key] = index
        distances, indices = cache[key].search(x.float().cpu().numpy(), 1)
        return distances[:, 0], indices[:, 0]

    return search, None


def cupy_expanded_form(device):
    """The expanded form written with cupy, as a cupy user would (x and e shared with
    torch through DLPack, no copies), or None with the reason."""
    if device != "cuda":
        return None, "cupy is the GPU peer (CUDA only)"
    try:
        import cupy as cp
    except ImportError:
        return None, "cupy is not installed (optional: pip install cupy-cuda13x)"

    def search(x, e):
        xc, ec = cp.from_dlpack(x), cp.from_dlpack(e)
        scores = (xc * xc).sum(1, keepdims=True) - 2 * (xc @ ec.T) + (ec * ec).sum(1)
        indices = scores.argmin(1)
        distances = cp.take_along_axis(scores, indices[:, None], 1)[:, 0]
        return torch.from_dlpack(distances), torch.from_dlpack(indices)

    return search, None


def expanded_form(x, e):
    scores = x.square().sum(1, keepdim=True) - 2 * x @ e.T + e.square().sum(1)
    return scores.min(1)


def cdist_argmin(x, e):
    return torch.cdist(x, e).min(1)


def peak_extra_mib(fn, device):
    """Peak memory of one call of fn beyond what was allocated before it, in MiB:
    the CUDA allocator's peak, or on the CPU the peak resident set (from /proc,
    which sees every allocator: torch's, faiss's, the kernels' own)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        def status(field):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field))
        before = status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak
    except OSError:
        return None
    fn()
    return (status("VmHWM:") - before) / 1024


IMPLS = ["genfast", "torch.cdist+argmin", "expanded form", "faiss IndexFlatL2", "cupy expanded form"]


def cases(device, quick):
    if device == "cuda":
        return QUICK_CUDA_CASES if quick else CUDA_CASES
    return QUICK_CPU_CASES if quick else CPU_CASES + (LARGE_CPU_CASES if LARGE else [])


ALL_CASES = sorted(set(CPU_CASES + LARGE_CPU_CASES + CUDA_CASES + QUICK_CUDA_CASES + QUICK_CPU_CASES))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: "N{}-K{}-D{}".format(*c))
def test_nearest_code(benchmark, bench_device, quick, impl, dtype, case):
    if case not in cases(bench_device, quick):
        pytest.skip(f"not a {'--quick ' if quick else ''}{bench_device} case"
                    + ("" if LARGE or bench_device == "cuda" else " (GENFAST_BENCH_LARGE=1 adds the large ones)"))
    if dtype == torch.bfloat16 and (bench_device == "cpu" or impl in ("faiss IndexFlatL2", "cupy expanded form")):
        pytest.skip("bfloat16 is benchmarked on CUDA, without faiss and cupy (float32 only)")
    n, k, d = case
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(k, d, generator=gen)
    x = e[torch.randint(k, (n,), generator=gen)] + 0.5 * torch.randn(n, d, generator=gen)
    x, e = x.to(bench_device, dtype), e.to(bench_device, dtype)
    if impl in ("faiss IndexFlatL2", "cupy expanded form"):
        fn, reason = (faiss_search if impl == "faiss IndexFlatL2" else cupy_expanded_form)(bench_device)
        if fn is None:
            pytest.skip(reason)
    else:
        # Each peer returns (distances, indices).
        fn = {"genfast": lambda x, e: nearest_code(x, e, impl="ext")[::-1],
              "torch.cdist+argmin": cdist_argmin, "expanded form": expanded_form}[impl]
    # genfast is exact; float32 peers find nearly the same codes (bfloat16 peers
    # round their scores to 8 bits and are not checked).
    check = slice(0, min(2048, max(64, 2**24 // (k * d))))  # the float64 reference is slow
    ref, _ = nearest_code_reference(x[check].float().cpu(), e.float().cpu())
    got = torch.as_tensor(fn(x[check], e)[1]).cpu()
    if impl == "genfast":
        assert torch.equal(got, ref)
    elif dtype == torch.float32:
        assert (got == ref).float().mean() > 0.99
    record(benchmark, f"nearest_code N={n} K={k} D={d} {str(dtype)[6:]} {bench_device}", impl,
           baseline=impl == "torch.cdist+argmin")
    step = synced(lambda: fn(x, e), bench_device)
    step()  # warm-up (and faiss's index)
    benchmark.extra_info["peak_memory_mib"] = peak_extra_mib(step, bench_device)
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    rounds = 10 if bench_device == "cuda" else (2 if quick else 3)
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0)
