"""transformer_decode_step's CUDA kernels (csrc/cuda/transformer_decode_step.cu):

- on the CPU, the grid kernel's phase schedule (csrc/transformer_decode_schedule.h,
  through genfast._C._decode_schedule): every output of every phase covered exactly
  once, and its data flow -- the phases and tiles simulated in torch ops, block by
  block in both orders, for several grid sizes -- equal to the reference step in
  float64; GENFAST_DECODE_KERNEL / GENFAST_DECODE_GRID parsing;
- on a GPU (marked `cuda`, run by scripts/gpu_check.sh): each kernel against the
  reference in float64 over random configurations (batches 1/3/17, heads, head dims,
  top-k/top-p), bit-identical across runs and grid sizes, the draws equal across
  kernels and to the CPU kernel, cached == naive samples, every output written."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda, requires_ext
from test_code_transformer import random_model

from genfast import ops
from genfast.ops._draw import filtered_draw
from genfast.ops.transformer_decode_step import LAYER_NORM_EPS, TransformerWeights

QKV, ATTENTION, OUT, MLP1, MLP2, HEAD, DRAW = range(7)
TILE_SEQS, TILE_COLUMNS = 4, 8
CUDA_KERNELS = ["auto", "grid", "block"]


def schedule(batch, layers, heads, head_dim, mlp, levels, max_positions=8):
    from genfast import _C

    return _C._decode_schedule(batch, layers, heads, head_dim, mlp, levels, max_positions)


# (batch, layers, heads, head_dim, mlp, levels): batches 1/3/17 (a partial last tile of
# sequences), column counts that are and are not multiples of the 8-column tile.
SCHEDULE_SHAPES = [(1, 1, 1, 8, 16, 2), (3, 2, 3, 7, 44, 13), (17, 2, 2, 12, 33, 1024), (4, 8, 8, 32, 1024, 1024),
                   (5, 1, 5, 3, 7, 17)]


@requires_ext
@pytest.mark.parametrize("shape", SCHEDULE_SHAPES)
def test_schedule_covers_every_output_once(shape):
    n, layers, heads, hd, m, levels = shape
    d = heads * hd
    phases, max_items, shared = schedule(n, layers, heads, hd, m, levels, max_positions=9)
    assert len(phases) == 5 * layers + 2
    assert max_items == max(len(items) for items in phases)
    assert shared == max(TILE_SEQS * max(d, m), hd + 9 + max(hd, 512))
    columns = {QKV: 3 * d, OUT: d, MLP1: m, MLP2: d, HEAD: levels}
    for phase, items in enumerate(phases):
        kind = phase % 5 if phase < 5 * layers else (HEAD if phase == 5 * layers else DRAW)
        layer = phase // 5 if phase < 5 * layers else -1
        assert all(it[0] == kind and it[1] == layer for it in items)
        if kind == ATTENTION:
            assert sorted((it[2], it[3]) for it in items) == [(b, h) for b in range(n) for h in range(heads)]
        elif kind == DRAW:
            assert sorted(it[2] for it in items) == list(range(n))
        else:
            count = torch.zeros(n, columns[kind], dtype=torch.int64)
            for _, _, seq0, column0, _ in items:
                assert seq0 % TILE_SEQS == 0 and column0 % TILE_COLUMNS == 0 and seq0 < n
                assert column0 < columns[kind]
                count[seq0:seq0 + TILE_SEQS, column0:column0 + TILE_COLUMNS] += 1
            assert (count == 1).all()
        writers = [it for it in items if it[4]]
        if phase == 0:  # one per tile of sequences: layer 0's embedding is stored once
            assert all(it[3] == 0 for it in writers)
            assert sorted(it[2] for it in writers) == list(range(0, n, TILE_SEQS))
        else:
            assert writers == []


@requires_ext
def test_kernel_choice():
    from genfast import _C

    assert [_C._decode_kernel_choice(v, "")[0] for v in ["", "auto", "grid", "block"]] == \
        ["auto", "auto", "grid", "block"]
    assert [_C._decode_kernel_choice("", g)[1] for g in ["", "1", "96"]] == [0, 1, 96]
    with pytest.raises(ValueError, match="GENFAST_DECODE_KERNEL must be 'auto', 'grid' or 'block', got 'fast'"):
        _C._decode_kernel_choice("fast", "")
    for bad in ["0", "-3", "x", "2.5", "7 "]:
        with pytest.raises(ValueError, match="GENFAST_DECODE_GRID must be a positive int"):
            _C._decode_kernel_choice("grid", bad)


def random_case(seed, batch, heads, head_dim, *, top_k=0, top_p=1.0, temperature=1.0, dtype=torch.float64,
                layers=2, mlp=40, levels=13, step=None, scale=0.4,
                image_size=(3, 5)):
    """(tokens, key_cache, value_cache, uniforms, step, weights, kwargs) of one step of a
    random model with random caches."""
    model = random_model(seed, dtype=dtype, levels=levels, image_size=image_size, width=heads * head_dim, heads=heads,
                         layers=layers, mlp=mlp, scale=scale)
    weights = model.pack_weights(dtype, "cpu")
    g = torch.Generator().manual_seed(seed)
    keys, values = (c.normal_(generator=g) for c in model.new_cache(batch, dtype, "cpu"))
    step = (seed * 7 + 2) % model.positions if step is None else step
    tokens = torch.randint(0, model.vocabulary, (batch,), generator=g)
    uniforms = torch.rand(batch, generator=g, dtype=torch.float64)
    return tokens, keys, values, uniforms, step, weights, dict(temperature=temperature, top_k=top_k, top_p=top_p)


def simulate_grid_step(tokens, keys, values, uniforms, step, w: TransformerWeights, kwargs, grid, reverse=False):
    """The grid kernel's data flow in torch ops: per phase, block b runs items b, b + grid,
    ... (from genfast._C._decode_schedule), the blocks one after the other (in reverse
    with `reverse`, so that a block reading what another writes in the same phase would
    see a different value in one of the two orders). The work buffers start as NaN."""
    n, layers, heads, t_max, hd = keys.shape
    d, m, levels = heads * hd, w.mlp_weight1.shape[2], w.head_weight.shape[1]
    vocabulary = w.token_embedding.shape[0]
    phases, _, _ = schedule(n, layers, heads, hd, m, levels, t_max)
    nan = float("nan")
    x, q, context = (keys.new_full((n, d), nan) for _ in range(3))
    hidden, logits = keys.new_full((n, m), nan), keys.new_full((n, levels), nan)
    drawn = torch.full((n,), -2, dtype=torch.int64)

    def norm(rows, gamma, beta):
        return F.layer_norm(rows, (d,), gamma, beta, LAYER_NORM_EPS)

    for phase, items in enumerate(phases):
        blocks = list(range(grid))[::-1] if reverse else range(grid)
        for b in blocks:
            for kind, l, seq0, column0, writer in items[b::grid]:
                seqs = slice(seq0, min(seq0 + TILE_SEQS, n))
                if kind == ATTENTION:
                    head = column0
                    k = keys[seq0, l, head, :step + 1]
                    v = values[seq0, l, head, :step + 1]
                    scores = (k @ q[seq0, head * hd:(head + 1) * hd]) / math.sqrt(hd)
                    context[seq0, head * hd:(head + 1) * hd] = scores.softmax(0) @ v
                    continue
                if kind == DRAW:
                    drawn[seq0] = filtered_draw(logits[seq0:seq0 + 1], uniforms[seq0:seq0 + 1], **kwargs)[0]
                    continue
                if kind == QKV:
                    if l == 0:
                        ids = tokens[seqs]
                        valid = ((ids >= 0) & (ids < vocabulary)).unsqueeze(1).to(keys.dtype)
                        rows = w.token_embedding[ids.clamp(0, vocabulary - 1)] * valid + w.position_embedding[step]
                        if writer:
                            x[seqs] = rows
                    else:
                        rows = x[seqs].clone()
                    inputs, weight, bias = norm(rows, w.ln1_weight[l], w.ln1_bias[l]), w.qkv_weight[l], w.qkv_bias[l]
                elif kind == OUT:
                    inputs, weight, bias = context[seqs].clone(), w.out_weight[l], w.out_bias[l]
                elif kind == MLP1:
                    inputs = norm(x[seqs], w.ln2_weight[l], w.ln2_bias[l])
                    weight, bias = w.mlp_weight1[l], w.mlp_bias1[l]
                elif kind == MLP2:
                    inputs, weight, bias = hidden[seqs].clone(), w.mlp_weight2[l], w.mlp_bias2[l]
                else:
                    inputs, weight, bias = norm(x[seqs], w.final_ln_weight, w.final_ln_bias), w.head_weight, w.head_bias
                cols = torch.arange(column0, min(column0 + TILE_COLUMNS, weight.shape[1]))
                y = inputs @ weight[:, cols] + bias[cols]
                if kind == QKV:
                    for j, col in enumerate(cols.tolist()):
                        part, i = divmod(col, d)
                        if part == 0:
                            q[seqs, col] = y[:, j]
                        else:
                            (keys if part == 1 else values)[seqs, l, i // hd, step, i % hd] = y[:, j]
                elif kind in (OUT, MLP2):
                    x[seqs, cols] += y
                elif kind == MLP1:
                    hidden[seqs, cols] = F.gelu(y)
                else:
                    logits[seqs, cols] = y
    return drawn, logits


# (seed, batch, heads, head_dim, top_k, top_p, temperature)
GRID_CASES = [(0, 1, 1, 8, 0, 1.0, 1.0), (1, 3, 3, 8, 4, 1.0, 0.8), (2, 17, 2, 12, 0, 0.7, 1.2),
              (3, 5, 4, 6, 3, 0.9, 1.0), (4, 17, 3, 5, 1, 1.0, 1.0)]


@requires_ext
@pytest.mark.parametrize("case", GRID_CASES)
@pytest.mark.parametrize("grid,reverse", [(1, False), (2, True), (3, False), (64, True)])
def test_grid_schedule_equals_reference(case, grid, reverse):
    seed, batch, heads, hd, top_k, top_p, temperature = case
    tokens, keys, values, uniforms, step, weights, kwargs = random_case(
        seed, batch, heads, hd, top_k=top_k, top_p=top_p, temperature=temperature)
    ref_keys, ref_values = keys.clone(), values.clone()
    want = ops.transformer_decode_step(tokens, ref_keys, ref_values, uniforms, step, weights, impl="reference",
                                       **kwargs)
    got = simulate_grid_step(tokens, keys, values, uniforms, step, weights, kwargs, grid, reverse)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-10)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(keys, ref_keys, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(values, ref_values, rtol=1e-10, atol=1e-10)


# ---- on a GPU -------------------------------------------------------------------------

def to_cuda(case):
    tokens, keys, values, uniforms, step, weights, kwargs = case
    return (tokens.cuda(), keys.cuda(), values.cuda(), uniforms.cuda(), step,
            TransformerWeights(*(t.cuda() for t in weights)), kwargs)


def run_step(case, kernel=None, monkeypatch=None, grid=""):
    """One op step on a copy of the case's caches; returns (values, logits, keys, values cache)."""
    tokens, keys, values, uniforms, step, weights, kwargs = case
    if monkeypatch is not None:
        monkeypatch.setenv("GENFAST_DECODE_KERNEL", kernel)
        monkeypatch.setenv("GENFAST_DECODE_GRID", grid)
    keys, values = keys.clone(), values.clone()
    drawn, logits = ops.transformer_decode_step(tokens, keys, values, uniforms, step, weights, impl="ext", **kwargs)
    return drawn, logits, keys, values


# (seed, batch, heads, head_dim, top_k, top_p, temperature)
CUDA_CASES = [(10, 1, 8, 32, 0, 1.0, 1.0), (11, 3, 3, 8, 4, 1.0, 0.8), (12, 17, 2, 12, 0, 0.7, 1.2),
              (13, 1, 4, 6, 3, 0.9, 1.0), (14, 17, 1, 40, 0, 1.0, 1.0), (15, 3, 5, 16, 20, 0.95, 0.9)]


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", CUDA_KERNELS)
@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_kernels_equal_the_reference_in_float64(monkeypatch, kernel, case):
    seed, batch, heads, hd, top_k, top_p, temperature = case
    cpu = random_case(seed, batch, heads, hd, top_k=top_k, top_p=top_p, temperature=temperature, mlp=4 * heads * hd)
    want = run_step(cpu)  # the CPU kernel
    ref_keys, ref_values = cpu[1].clone(), cpu[2].clone()
    ref = ops.transformer_decode_step(cpu[0], ref_keys, ref_values, cpu[3], cpu[4], cpu[5], impl="reference",
                                      **cpu[6])
    got = [t.cpu() for t in run_step(to_cuda(cpu), kernel, monkeypatch)]
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[2], ref_keys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[3], ref_values, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[0], want[0])  # the same draws as the CPU kernel


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 0.9)])
def test_cuda_grid_kernel_is_deterministic_and_grid_independent(monkeypatch, dtype, top_k, top_p):
    # The same sums in the same order whatever the grid: the full grid twice, 1 and 7
    # blocks agree bit for bit (logits, draws, caches); the block kernel draws the same.
    case = to_cuda(random_case(20, 17, 4, 16, top_k=top_k, top_p=top_p, dtype=dtype, mlp=96, levels=300))
    runs = [run_step(case, "grid", monkeypatch, grid) for grid in ("", "", "1", "7")]
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))
    block = [run_step(case, "block", monkeypatch) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(block[0], block[1]))
    if dtype == torch.float64:
        assert torch.equal(block[0][0], runs[0][0])
        torch.testing.assert_close(block[0][1], runs[0][1], rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", ["grid", "block"])
def test_cuda_every_output_is_written_by_each_kernel(monkeypatch, poisoned_allocations, kernel):
    # Fresh allocations hold NaN (the work buffer of the grid kernel included); the GPU
    # check's sanitizer subsets select tests by this name.
    for batch in (1, 5):
        case = to_cuda(random_case(30 + batch, batch, 3, 8, top_k=2 * batch, dtype=torch.float32))
        drawn, logits, _, _ = run_step(case, kernel, monkeypatch)
        assert torch.isfinite(logits).all() and ((drawn >= 0) & (drawn < logits.shape[1])).all()


@pytest.mark.cuda
@requires_cuda
def test_cuda_grid_kernel_model_sized_step_matches_float64(monkeypatch):
    # The benchmark's model (8 layers x width 256 x 8 heads, MLP 1024, 1024 codes) at
    # batch 1, late in the sequence: float32 grid kernel vs the float64 reference.
    case = random_case(40, 1, 8, 32, dtype=torch.float32, layers=8, mlp=1024, levels=1024, step=200,
                       scale=0.1, image_size=(16, 16))
    got = run_step(to_cuda(case), "grid", monkeypatch)[1].cpu()
    tokens, keys, values, uniforms, step, weights, kwargs = case
    w64 = TransformerWeights(*(t.double() for t in weights))
    want = ops.transformer_decode_step(tokens, keys.double(), values.double(), uniforms, step, w64,
                                       impl="reference", **kwargs)[1]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kernel", CUDA_KERNELS)
@pytest.mark.parametrize("n", [1, 3])
def test_cuda_cached_samples_equal_naive_samples_in_float64(monkeypatch, kernel, n):
    monkeypatch.setenv("GENFAST_DECODE_KERNEL", kernel)
    model = random_model(50 + n, num_classes=3, dtype=torch.float64, levels=11, image_size=(3, 4), width=24,
                         heads=3, layers=2, mlp=40).cuda()
    labels = torch.arange(n) % 3
    for top_k, top_p in ((None, None), (4, 0.9)):
        kwargs = dict(labels=labels, top_k=top_k, top_p=top_p)
        naive = model.sample(n, generator=torch.Generator().manual_seed(n), method="naive", **kwargs)
        cached = model.sample(n, generator=torch.Generator().manual_seed(n), impl="ext", **kwargs)
        assert torch.equal(cached, naive)
        on_cpu = model.cpu().sample(n, generator=torch.Generator().manual_seed(n), impl="ext", **kwargs)
        model.cuda()
        assert torch.equal(cached.cpu(), on_cpu)


@pytest.mark.cuda
@requires_cuda
def test_cuda_grid_kernel_rejects_bad_environment(monkeypatch):
    case = to_cuda(random_case(60, 2, 2, 8))
    monkeypatch.setenv("GENFAST_DECODE_KERNEL", "fast")
    with pytest.raises(ValueError, match="GENFAST_DECODE_KERNEL must be"):
        run_step(case)
    monkeypatch.setenv("GENFAST_DECODE_KERNEL", "grid")
    monkeypatch.setenv("GENFAST_DECODE_GRID", "0")
    with pytest.raises(ValueError, match="GENFAST_DECODE_GRID must be a positive int"):
        run_step(case)
