"""Arrays from other libraries reach the ops through DLPack without copies: numpy
arrays on the CPU, cupy arrays on a GPU (cupy is optional, never needed by genfast).
The inputs' memory is shared (same data pointer) on the way in, and the outputs go
back the same way."""
import pytest
import torch
from conftest import requires_cuda, requires_ext

from genfast.ops import (code_statistics, code_statistics_reference, masked_conv2d,
                         masked_conv2d_reference, nearest_code, nearest_code_reference)


def run_ops(x, codes, image, weight):
    """The ops on tensors that alias foreign arrays; returns their outputs and the
    expected outputs from the references."""
    indices, distances = nearest_code(x, codes, impl="ext")
    counts, sums = code_statistics(x, indices, codes.shape[0], impl="ext")
    out = masked_conv2d(image, weight, mask_type="A", color_groups=3, impl="ext")
    ref_indices, ref_distances = nearest_code_reference(x.cpu(), codes.cpu())
    ref_counts, ref_sums = code_statistics_reference(x.cpu(), ref_indices, codes.shape[0])
    ref_out = masked_conv2d_reference(image.cpu(), weight.cpu(), mask_type="A", color_groups=3)
    assert torch.equal(indices.cpu(), ref_indices)
    torch.testing.assert_close(distances.cpu(), ref_distances)
    assert torch.equal(counts.cpu(), ref_counts)
    torch.testing.assert_close(sums.cpu(), ref_sums)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=1e-4, atol=1e-4)
    return indices, sums, out


@requires_ext
def test_numpy_arrays_through_dlpack_without_copies():
    np = pytest.importorskip("numpy", reason="numpy is not installed")
    rng = np.random.default_rng(0)
    arrays = dict(x=rng.standard_normal((300, 16), dtype=np.float32),
                  codes=rng.standard_normal((40, 16), dtype=np.float32),
                  image=rng.standard_normal((2, 6, 9, 10), dtype=np.float32),
                  weight=rng.standard_normal((9, 6, 5, 5), dtype=np.float32))
    tensors = {name: torch.from_dlpack(a) for name, a in arrays.items()}
    for name, a in arrays.items():
        assert tensors[name].data_ptr() == a.ctypes.data, f"{name} was copied"
    indices, sums, out = run_ops(**tensors)
    for t in (indices, sums, out):
        back = np.from_dlpack(t)
        assert back.ctypes.data == t.data_ptr()
        assert np.array_equal(back, t.numpy())


@requires_cuda
@pytest.mark.cuda
def test_cupy_arrays_through_dlpack_without_copies():
    cp = pytest.importorskip("cupy", reason="cupy is not installed (optional: pip install cupy-cuda13x)")
    rng = cp.random.default_rng(0)
    arrays = dict(x=rng.standard_normal((3000, 32), dtype=cp.float32),
                  codes=rng.standard_normal((500, 32), dtype=cp.float32),
                  image=rng.standard_normal((2, 6, 17, 20), dtype=cp.float32),
                  weight=rng.standard_normal((9, 6, 5, 5), dtype=cp.float32))
    tensors = {name: torch.from_dlpack(a) for name, a in arrays.items()}
    for name, a in arrays.items():
        assert tensors[name].is_cuda and tensors[name].data_ptr() == a.data.ptr, f"{name} was copied"
    indices, sums, out = run_ops(**tensors)
    for t in (indices, sums, out):
        back = cp.from_dlpack(t)
        assert back.data.ptr == t.data_ptr()
        assert cp.array_equal(back, cp.asarray(t))
