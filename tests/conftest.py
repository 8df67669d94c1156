import os

import pytest
import torch

import genfast

# poisoned_allocations turns on deterministic mode, in which any cuBLAS matmul on CUDA
# (the references of the row and step ops call some) raises unless cuBLAS has a
# deterministic workspace. torch reads this once, at the process's first matmul.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

HAS_EXT = genfast.BUILD_INFO is not None and genfast._backend.kernel_unavailable_reason("cpu") is None
HAS_CUDA_EXT = HAS_EXT and genfast.BUILD_INFO["with_cuda"] and torch.cuda.is_available()

requires_ext = pytest.mark.skipif(
    not HAS_EXT, reason=f"genfast._C is not usable: {genfast._backend.kernel_unavailable_reason('cpu')}")


def _cuda_skip_reason():
    if not torch.cuda.is_available():
        return "no CUDA device visible"
    return genfast._backend.kernel_unavailable_reason("cuda")


requires_cuda = pytest.mark.skipif(not HAS_CUDA_EXT, reason=f"CUDA kernels not tested: {_cuda_skip_reason()}")

# The devices whose compiled kernels are tested against the reference.
DEVICES = [pytest.param("cpu", marks=requires_ext), pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


@pytest.fixture
def poisoned_allocations():
    """Deterministic mode fills fresh allocations with NaN (integers with their largest
    value), so an output element a kernel forgets to write shows up."""
    torch.use_deterministic_algorithms(True)
    assert torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(False)


def assert_half_matches_float(op, reference, x: torch.Tensor) -> None:
    """An elementwise op's half-precision kernel (float16 / bfloat16 input x, requires_grad)
    against its reference in float32: values to 1e-2, input gradients to 2e-2."""
    out = op(x)
    ref = reference(x.float())
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    up = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, up)
    (ref_dx,) = torch.autograd.grad(ref, x, up.float())
    torch.testing.assert_close(dx.float(), ref_dx.float(), rtol=2e-2, atol=2e-2)
