"""code_statistics: counts exact, sums equal to the float64 reference, bitwise
deterministic whatever the thread count; opcheck, torch.compile and bad input."""
import pytest
import torch
from conftest import DEVICES, requires_ext

from genfast.ops import code_statistics, code_statistics_reference
from genfast.ops.code_statistics import SUM_PIECE_ROWS, sum_dtype


def random_case(seed, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    n, k, d = [int(v) for v in torch.randint(1, 200, (3,), generator=gen)]
    x = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
    # Skewed assignments: a few popular codes, many rare or unused ones.
    indices = (torch.rand(n, generator=gen).pow(3) * k).long().to(device)
    return x, indices, k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(4))
def test_matches_reference(device, dtype, seed):
    x, indices, k = random_case(seed, device, dtype)
    counts, sums = code_statistics(x, indices, k, impl="ext")
    ref_counts, ref_sums = code_statistics_reference(x, indices, k)
    assert counts.dtype == torch.long and torch.equal(counts, ref_counts)
    assert sums.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # Both sum each code's rows in row order in float64, then round.
    torch.testing.assert_close(sums, ref_sums, rtol=1e-6 if dtype != torch.float64 else 1e-14, atol=1e-6)
    assert int(counts.sum()) == x.shape[0]


@requires_ext
def test_deterministic_across_thread_counts():
    x, indices, k = random_case(10, "cpu")
    x, indices = x.repeat(50, 1), indices.repeat(50)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = code_statistics(x, indices, k, impl="ext")
        torch.set_num_threads(max(2, threads))
        many = code_statistics(x, indices, k, impl="ext")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def piece_order_sums(x, indices, k):
    """The documented summation order, written out (float64 adds, one at a time)."""
    x64, indices = x.detach().cpu().double(), indices.cpu()
    order = torch.sort(indices, stable=True).indices.tolist()
    ends = torch.bincount(indices, minlength=k).cumsum(0).tolist()
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64)
    begin = 0
    for code, end in enumerate(ends):
        j = begin
        while j < end:  # a piece: positions up to the next multiple of SUM_PIECE_ROWS
            piece_end = min(end, (j // SUM_PIECE_ROWS + 1) * SUM_PIECE_ROWS)
            piece = torch.zeros(x.shape[1], dtype=torch.float64)
            for position in range(j, piece_end):
                piece = piece + x64[order[position]]
            sums[code] = sums[code] + piece
            j = piece_end
        begin = end
    return sums.to(sum_dtype(x.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collapsed_codebook_summation_order(device, dtype):
    # Most rows on one code (a collapsed codebook), spanning several pieces, with rows
    # of other codes in between; magnitudes spread so that the order shows in the
    # last bits. Both backends follow the documented order bit for bit.
    gen = torch.Generator().manual_seed(3)
    n, k, d = 3 * SUM_PIECE_ROWS + 77, 6, 5
    indices = torch.where(torch.rand(n, generator=gen) < 0.9, 2, torch.randint(k, (n,), generator=gen))
    indices[:40] = 4  # a run inside the first piece, plus scattered rows in later ones
    x = torch.randn(n, d, generator=gen) * torch.logspace(-6, 6, n)[torch.randperm(n, generator=gen)][:, None]
    x = x.to(device=device, dtype=dtype)
    counts, sums = code_statistics(x, indices.to(device), k, impl="ext")
    assert counts.cpu().tolist() == torch.bincount(indices, minlength=k).tolist()
    assert torch.equal(sums.cpu(), piece_order_sums(x, indices, k))
    if dtype == torch.float64:  # (float32 sums round the difference away)
        # A plain sequential sum differs somewhere: the test tells the orders apart.
        _, sequential = code_statistics_reference(x.cpu(), indices, k)
        assert not torch.equal(sums.cpu(), sequential)


@pytest.mark.parametrize("device", DEVICES)
def test_hand_computed(device):
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 4.0]], device=device)
    indices = torch.tensor([2, 0, 2, 2], device=device)
    counts, sums = code_statistics(x, indices, 4, impl="ext")
    assert counts.tolist() == [1, 0, 3, 0]
    assert sums.tolist() == [[3.0, -1.0], [0.0, 0.0], [-0.5, 6.5], [0.0, 0.0]]


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    x, indices, k = random_case(11, device)
    counts, sums = code_statistics(x, indices, k + 5, impl="ext")  # unused codes too
    assert torch.isfinite(sums).all() and (sums[k:] == 0).all() and (counts[k:] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    counts, sums = code_statistics(torch.empty(0, 3, device=device),
                                   torch.empty(0, dtype=torch.long, device=device), 4, impl="ext")
    assert counts.tolist() == [0] * 4 and sums.shape == (4, 3) and (sums == 0).all()


@requires_ext
def test_opcheck():
    x, indices, k = random_case(12, "cpu")
    torch.library.opcheck(torch.ops.genfast.code_statistics.default, (x, indices, k))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, indices, k = random_case(13, "cpu")

    @torch.compile(fullgraph=True)
    def means(x, indices):
        counts, sums = code_statistics(x, indices, k, impl="ext")
        return sums / counts.clamp(min=1)[:, None]

    ref_counts, ref_sums = code_statistics_reference(x, indices, k)
    torch.testing.assert_close(means(x, indices), ref_sums / ref_counts.clamp(min=1)[:, None])


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("make,error,match", [
    (lambda x, i: (x[0], i, 4), ValueError, "x must be 2-D"),
    (lambda x, i: (x, i[:-1], 4), ValueError, "indices must have shape"),
    (lambda x, i: (x, i.int(), 4), TypeError, "indices must be int64"),
    (lambda x, i: (x.long(), i, 4), TypeError, "floating point"),
    (lambda x, i: (x, i, 0), ValueError, "num_codes must be"),
    (lambda x, i: (x, i.to("meta"), 4), ValueError, "indices are on meta"),
])
def test_bad_input(impl, make, error, match):
    x, indices, k = make(torch.randn(6, 3), torch.tensor([0, 1, 3, 2, 1, 0]))
    with pytest.raises(error, match=match):
        code_statistics(x, indices, k, impl=impl)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("bad", [-1, 4])
def test_out_of_range_index_is_an_error(impl, bad):
    indices = torch.tensor([0, 1, 3, bad, 1, 0])
    with pytest.raises(ValueError, match=f"indices must be in \\[0, 4\\), got {bad} at position 3"):
        code_statistics(torch.randn(6, 3), indices, 4, impl=impl)
