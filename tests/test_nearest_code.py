"""nearest_code: kernels equal to the float64 reference bit for bit (indices and
distances) on random data, exact ties, duplicate codes, near ties and inputs where
the float32 expanded form is wrong; cosine mode; both CPU micro-kernels; opcheck,
torch.compile, bad input and the memory bound."""
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import DEVICES, requires_ext

from genfast.ops import nearest_code, nearest_code_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def skip_unsupported(device, dtype):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernel accumulates in float32: float64 runs the reference there")


def random_case(seed, device, dtype, scale=1.0):
    rng = random.Random(seed)
    n, k, d = rng.randint(1, 300), rng.randint(1, 150), rng.randint(1, 80)
    gen = torch.Generator().manual_seed(seed)
    codes = scale * torch.randn(k, d, generator=gen, dtype=torch.float64)
    # Rows near codes, as in a trained quantiser, and rows anywhere.
    near = codes[torch.randint(k, (n,), generator=gen)] + 0.3 * scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
    far = scale * torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = torch.where(torch.rand(n, 1, generator=gen) < 0.5, near, far)
    return x.to(device=device, dtype=dtype), codes.to(device=device, dtype=dtype)


def assert_equal_to_reference(x, codes, cosine=False):
    got_i, got_d = nearest_code(x, codes, cosine=cosine, impl="ext")
    ref_i, ref_d = nearest_code_reference(x, codes, cosine=cosine)
    assert got_i.dtype == torch.long and got_d.dtype == ref_d.dtype
    assert torch.equal(got_i.cpu(), ref_i.cpu())
    assert torch.equal(got_d.cpu(), ref_d.cpu())
    return got_i


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_matches_reference(device, dtype, cosine, seed):
    skip_unsupported(device, dtype)
    x, codes = random_case(seed, device, dtype, scale=[1.0, 1e-3, 50.0][seed % 3])
    assert_equal_to_reference(x, codes, cosine)


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", range(3))
def test_portable_cpu_kernel(monkeypatch, dtype, seed):
    # The kernel for CPUs without AVX-512 (and float64), forced by the environment.
    monkeypatch.setenv("GENFAST_DISABLE_AVX512", "1")
    x, codes = random_case(10 + seed, "cpu", dtype)
    assert_equal_to_reference(x, codes, cosine=seed == 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_ties_lowest_index_wins(device, dtype):
    # Small integers: every distance is exact in every dtype, so equal distances are
    # real ties, and there are many of them.
    skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(1)
    codes = torch.randint(-1, 2, (40, 4), generator=gen).to(device=device, dtype=dtype)
    x = torch.randint(-2, 3, (500, 4), generator=gen).to(device=device, dtype=dtype)
    indices = assert_equal_to_reference(x, codes)
    dist = (x.double()[:, None] - codes.double()[None]).square().sum(-1)  # exact: small integers
    best = dist.min(dim=1, keepdim=True).values
    first = (dist == best).int().argmax(dim=1)
    assert torch.equal(indices, first)
    assert (dist == best).sum(1).gt(1).float().mean() > 0.2  # the test has ties to break


@pytest.mark.parametrize("device", DEVICES)
def test_symmetric_tie_and_duplicates(device):
    codes = torch.tensor([[3.0, -1.0], [-3.0, 1.0], [3.0, -1.0], [0.5, 0.25], [0.5, 0.25]], device=device)
    x = torch.tensor([[0.0, 0.0], [3.0, -1.0], [0.5, 0.25], [0.4, 0.3]], device=device)
    indices, sq_dist = nearest_code(x, codes, impl="ext")
    assert indices.tolist() == [3, 0, 3, 3]
    assert sq_dist.tolist() == pytest.approx([0.3125, 0.0, 0.0, 0.0125], abs=1e-7)
    # The origin is equally far from a code and its mirror image: the first wins.
    indices, _ = nearest_code(x[:1], codes[[1, 0]], impl="ext")
    assert indices.tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_near_ties_and_large_offsets(device, dtype):
    # Codes differing in the last bits, far from the origin: float32's expanded form
    # ||x||^2 - 2 x.e + ||e||^2 cancels catastrophically here and picks wrong codes.
    gen = torch.Generator().manual_seed(2)
    d = 16
    base = torch.full((d,), 512.0, dtype=torch.float64)
    steps = {torch.float32: 2.0 ** -14, torch.float16: 0.5, torch.bfloat16: 4.0}[dtype]
    codes = base + steps * torch.randint(-3, 4, (64, d), generator=gen, dtype=torch.float64)
    codes = torch.cat([codes, codes[:8]])  # duplicates too
    x = base + steps * torch.randint(-3, 4, (400, d), generator=gen, dtype=torch.float64)
    x = x + steps * 0.5 * torch.randint(0, 2, (400, d), generator=gen)
    x, codes = x.to(device=device, dtype=dtype), codes.to(device=device, dtype=dtype)
    indices = assert_equal_to_reference(x, codes)
    if dtype == torch.float32:
        xf, ef = x.cpu(), codes.cpu()
        expanded = (xf.square().sum(1, keepdim=True) - 2 * xf @ ef.T + ef.square().sum(1)).argmin(1)
        assert (expanded != indices.cpu()).any(), "the case should defeat the naive float32 form"


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_magnitudes(device):
    # Near the float32 range the filter's bound is infinite and every row is resolved
    # exactly; tiny values live in the subnormal range.
    gen = torch.Generator().manual_seed(3)
    for scale in (1e19, 1e-21):
        codes = (scale * torch.randn(20, 7, generator=gen)).to(device)
        x = (scale * torch.randn(50, 7, generator=gen)).to(device)
        for cosine in (False, True):
            assert_equal_to_reference(x, codes, cosine)


@pytest.mark.parametrize("device", DEVICES)
def test_cosine_mode(device):
    gen = torch.Generator().manual_seed(4)
    codes = torch.randn(30, 9, generator=gen)
    codes[5] = 0  # a zero code stays zero: distance 1 to every unit row
    x = torch.randn(100, 9, generator=gen) * torch.rand(100, 1, generator=gen) * 10
    x[7] = 0
    x, codes = x.to(device), codes.to(device)
    indices, sq_dist = nearest_code(x, codes, cosine=True, impl="ext")
    assert_equal_to_reference(x, codes, cosine=True)
    indices, sq_dist = indices.cpu(), sq_dist.cpu()
    unit = torch.nn.functional.normalize
    similarity = unit(x.double().cpu(), dim=1) @ unit(codes.double().cpu(), dim=1).T
    # The zero code is at distance 1 from every unit row: it wins where no code has
    # cosine similarity above 1/2, and the most similar code wins elsewhere.
    best = similarity.max(1)
    zero_wins = best.values < 0.5
    assert torch.equal(indices == 5, zero_wins)
    assert torch.equal(indices[~zero_wins], best.indices[~zero_wins])
    expected = torch.where(zero_wins, 1.0, 2 - 2 * similarity[torch.arange(100), indices])
    expected[7] = 0  # the zero row: distance 0 to the zero code
    torch.testing.assert_close(sq_dist.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    for seed in range(4):
        x, codes = random_case(100 + seed, device, torch.float32)
        assert_equal_to_reference(x, codes, cosine=seed % 2 == 1)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    codes = torch.randn(5, 3, device=device)
    indices, sq_dist = nearest_code(torch.empty(0, 3, device=device), codes, impl="ext")
    assert indices.shape == (0,) and indices.dtype == torch.long
    assert sq_dist.shape == (0,) and sq_dist.dtype == torch.float32


@requires_ext
def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(12, 70, generator=gen).T  # (70, 12), strided
    codes = torch.randn(11, 24, generator=gen)[:, ::2]
    assert not x.is_contiguous() and not codes.is_contiguous()
    assert_equal_to_reference(x, codes)


@requires_ext
def test_opcheck():
    x, codes = random_case(7, "cpu", torch.float32)
    for cosine in (False, True):
        torch.library.opcheck(torch.ops.genfast.nearest_code.default, (x, codes, cosine))


@requires_ext
def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, codes = random_case(8, "cpu", torch.float32)

    @torch.compile(fullgraph=True)
    def quantise(x, codes):
        indices, sq_dist = nearest_code(x, codes, impl="ext")
        return codes[indices], sq_dist.sum()

    quantised, total = quantise(x, codes)
    ref_i, ref_d = nearest_code_reference(x, codes)
    assert torch.equal(quantised, codes[ref_i])
    torch.testing.assert_close(total, ref_d.sum())


@requires_ext
def test_no_gradient_flows():
    x = torch.randn(10, 4, requires_grad=True)
    codes = torch.randn(6, 4, requires_grad=True)
    indices, sq_dist = nearest_code(x, codes, impl="ext")
    assert not sq_dist.requires_grad and not indices.requires_grad


def _ok_args():
    return torch.randn(8, 4), torch.randn(5, 4)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("make,error,match", [
    (lambda x, e: (x[0], e, {}), ValueError, "x must be 2-D"),
    (lambda x, e: (x, e[0], {}), ValueError, "codebook must be 2-D"),
    (lambda x, e: (x, e[:, :3], {}), ValueError, "x has 4 features per row but the codebook's codes have 3"),
    (lambda x, e: (x, e[:0], {}), ValueError, "at least one code"),
    (lambda x, e: (x[:, :0], e[:, :0], {}), ValueError, "at least one feature"),
    (lambda x, e: (x.long(), e.long(), {}), TypeError, "floating point"),
    (lambda x, e: (x, e.double(), {}), TypeError, "dtype"),
    (lambda x, e: (x, e.to("meta"), {}), ValueError, "on meta but x is on cpu"),
    (lambda x, e: (x, e, {"cosine": 1}), TypeError, "cosine must be a bool"),
    (lambda x, e: ("x", e, {}), TypeError, "x must be a tensor"),
])
def test_bad_input(impl, make, error, match):
    x, e, kwargs = make(*_ok_args())
    with pytest.raises(error, match=match):
        nearest_code(x, e, impl=impl, **kwargs)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("where,value", [("x", float("nan")), ("x", float("inf")),
                                         ("codebook", float("-inf")), ("codebook", float("nan"))])
def test_non_finite_input_is_an_error(impl, where, value):
    x, e = _ok_args()
    (x if where == "x" else e)[3, 1] = value
    what = "row 3" if where == "x" else "code 3"
    with pytest.raises(ValueError, match=f"{where} contains NaN or infinity \\({what}\\)"):
        nearest_code(x, e, impl=impl)


@requires_ext
def test_bad_input_reaching_the_kernel():
    x, e = _ok_args()
    with pytest.raises(ValueError, match="x has 4 features per row but the codebook's codes have 2"):
        torch.ops.genfast.nearest_code(x, e[:, :2], False)
    with pytest.raises(ValueError, match="at least one code"):
        torch.ops.genfast.nearest_code(x, e[:0], False)
    with pytest.raises(TypeError, match="floating point"):
        torch.ops.genfast.nearest_code(x.int(), e.int(), False)


@requires_ext
def test_peak_memory_without_distance_matrix():
    # N = 262144, K = 4096, D = 64: the N x K float32 distances alone would be 4 GiB.
    # The peak resident memory of a fresh process grows by the outputs and the packed
    # codebook only (a few MiB), measured from /proc (which sees every allocator).
    script = textwrap.dedent("""
        import torch, genfast
        def kib(field):
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1])
        x = torch.randn(262144, 64)
        codes = torch.randn(4096, 64)
        genfast.ops.nearest_code(x[:64], codes, impl="ext")  # warm up the thread pool
        before = kib("VmRSS:")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak
        indices, sq_dist = genfast.ops.nearest_code(x, codes, impl="ext")
        print((kib("VmHWM:") - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra_mib = float(out.stdout.strip())
    assert extra_mib < 64, f"nearest_code used {extra_mib:.0f} MiB of extra memory"
