"""CodeTransformer sampling (the VQGAN prior): 8 layers x width 256 x 8 heads, MLP 1024,
1024 codes, a 16 x 16 code map = 256 tokens, float32; time per batch of sequences:

- "naive": model.sample(method="naive"), the full forward over the sequence so far
  for every code (minGPT / nanoGPT without a cache). A full run takes minutes, so ONE
  step is timed -- the forward over the whole sequence for the last code -- and scaled
  by (T + 1) / 2 (extra_info["scale"]): the cost of a step grows about linearly with
  the length (attention's quadratic term is ~10% of it at T = 256, so the estimate is
  close; it errs towards a slower naive sampler by at most that share, and misses the
  per-call costs, which make the real naive sampler slower).
- "python kv cache": the best Python peer -- taming-transformers' `sample_with_past`
  pattern, but with a PREALLOCATED key/value cache written in place (taming
  concatenates; this is faster): per token, per layer, torch ops on the model's own
  modules (LayerNorm, fused QKV Linear, attention over cache[:t+1] by two matmuls and
  a softmax, out projection, MLP), the head and the same inverse-CDF draw.
- "genfast": model.sample(), one transformer_decode_step call per token.
extra_info["tokens_per_s"] = batch * 256 / (scaled) median.

GPU only, batch 1, each CUDA kernel (GENFAST_DECODE_KERNEL=block / grid; the issue's
target is >= 5000 tokens/s on an H100/H200):
- "<kernel> kernel, model.sample": model.sample(1), per token one op call from
  Python (argument checks, allocations and the launch on the host each time);
- "<kernel> kernel, CUDA graph": the same 256 op calls captured once in a CUDA graph
  (check_levels=False: no host sync) and replayed -- the GPU time of the kernels alone.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import record, synced

from genfast.models import CodeTransformer
from genfast.models.sampling import inverse_cdf, sampling_uniforms

CONFIG = dict(levels=1024, image_size=16, hidden_channels=256, num_layers=8, num_heads=8)
IMPLS = ("naive", "python kv cache", "genfast")
BATCHES = (1, 16)


@torch.no_grad()
def python_kv_cache_sample(model: CodeTransformer, n: int, generator: torch.Generator) -> torch.Tensor:
    """The peer: a preallocated-cache decoding loop in Python (see the module docstring)."""
    device = model.position_embedding.device
    heads, head_dim, t_max = model.num_heads, model.head_dim, model.positions
    d = model.hidden_channels
    u = sampling_uniforms(n, 1, *model.image_size, generator, device).reshape(-1, n)
    keys = torch.zeros(model.num_layers, n, heads, t_max, head_dim, device=device)
    values = torch.zeros_like(keys)
    token = torch.full((n,), model.levels + model.prefix_levels, dtype=torch.long, device=device)
    codes = torch.empty(n, model.sequence_length, dtype=torch.long, device=device)
    scale = 1.0 / math.sqrt(head_dim)
    for t in range(t_max):
        x = model.token_embedding(token) + model.position_embedding[t]
        for l, block in enumerate(model.blocks):
            q, k, v = block.qkv(block.ln1(x)).view(n, 3, heads, head_dim).unbind(1)
            keys[l, :, :, t] = k
            values[l, :, :, t] = v
            scores = (keys[l, :, :, :t + 1] @ q.unsqueeze(-1)).squeeze(-1) * scale
            context = (scores.softmax(-1).unsqueeze(-2) @ values[l, :, :, :t + 1]).reshape(n, d)
            x = x + block.out(context)
            x = x + block.mlp2(F.gelu(block.mlp1(block.ln2(x))))
        logits = model.head(model.final_ln(x))
        token = inverse_cdf(logits, u[t])
        codes[:, t] = token
    return codes


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
def test_code_transformer_sampling(benchmark, bench_device, batch, impl):
    if impl == "naive" and batch == 1:
        pytest.skip("the naive sampler is compared at batch 16")
    torch.manual_seed(0)
    model = CodeTransformer(**CONFIG).to(bench_device).eval()
    generator = torch.Generator(bench_device)
    tokens = batch * model.sequence_length
    if impl == "naive":
        ids = torch.randint(0, model.levels, (batch, model.positions), device=bench_device)

        def run():
            with torch.no_grad():
                inverse_cdf(model.sequence_logits(ids)[:, -1], torch.rand(batch, dtype=torch.float64,
                                                                          device=bench_device))

        benchmark.extra_info["scale"] = (model.positions + 1) / 2
    elif impl == "python kv cache":
        def run():
            python_kv_cache_sample(model, batch, generator.manual_seed(0))
    else:
        def run():
            model.sample(batch, generator=generator.manual_seed(0), impl="ext")

    label = "naive (1 step x (T+1)/2, estimated)" if impl == "naive" else impl
    record(benchmark, f"code transformer sample L8 D256 H8 T256 V1024 b{batch} fp32 {bench_device}", label,
           baseline=impl == "python kv cache")
    benchmark.pedantic(synced(run, bench_device), rounds=2, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median * benchmark.extra_info.get("scale", 1)
        benchmark.extra_info["tokens_per_s"] = tokens / seconds


def test_peer_draws_what_genfast_draws():
    """The peer is the same sampler: the same codes from the same generator (small model)."""
    torch.manual_seed(0)
    model = CodeTransformer(levels=32, image_size=4, hidden_channels=32, num_layers=2, num_heads=4).eval()
    peer = python_kv_cache_sample(model, 3, torch.Generator().manual_seed(5))
    ours = model.sample(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(peer, ours.view(3, -1))


def decode_loop(model: CodeTransformer, generator: torch.Generator):
    """model.sample(1)'s decoding loop with everything allocated up front, so that it can
    be captured in a CUDA graph: returns run() (256 op calls) and the codes it fills."""
    from genfast.ops import transformer_decode_step

    device = model.position_embedding.device
    weights = model.pack_weights(torch.float32, device)
    keys, values = model.new_cache(1, torch.float32, device)
    u = sampling_uniforms(1, 1, *model.image_size, generator, device).reshape(-1, 1)
    start = torch.full((1,), model.levels + model.prefix_levels, dtype=torch.long, device=device)
    codes = torch.empty(1, model.sequence_length, dtype=torch.long, device=device)

    def run():
        ids = start
        for position in range(model.positions):
            drawn, _ = transformer_decode_step(ids, keys, values, u[position], position, weights, impl="ext",
                                               check_levels=False)
            codes[:, position] = drawn
            ids = drawn

    return run, codes


@pytest.mark.parametrize("how", ("model.sample", "CUDA graph"))
@pytest.mark.parametrize("kernel", ("block", "grid"))
def test_code_transformer_batch1_cuda_kernels(benchmark, bench_device, monkeypatch, kernel, how):
    if bench_device != "cuda":
        pytest.skip("compares the CUDA kernels")
    monkeypatch.setenv("GENFAST_DECODE_KERNEL", kernel)
    torch.manual_seed(0)
    model = CodeTransformer(**CONFIG).to(bench_device).eval()
    generator = torch.Generator(bench_device)
    if how == "model.sample":
        def run():
            model.sample(1, generator=generator.manual_seed(0), impl="ext")
    else:
        loop, _ = decode_loop(model, generator.manual_seed(0))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            loop()  # warm-up outside the capture (occupancy lookup, allocator)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loop()
        run = graph.replay
    record(benchmark, "code transformer sample L8 D256 H8 T256 V1024 b1 fp32 cuda, kernels",
           f"{kernel} kernel, {how}", baseline=kernel == "block" and how == "model.sample")
    benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    benchmark.pedantic(synced(run, bench_device), rounds=3, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["tokens_per_s"] = model.sequence_length / benchmark.stats.stats.median
        benchmark.extra_info["us_per_token"] = benchmark.stats.stats.median / model.sequence_length * 1e6


def test_decode_loop_draws_what_sample_draws():
    """The graph-captured loop is model.sample(1)'s loop: the same codes (small model, CPU)."""
    torch.manual_seed(0)
    model = CodeTransformer(levels=32, image_size=4, hidden_channels=32, num_layers=2, num_heads=4).eval()
    loop, codes = decode_loop(model, torch.Generator().manual_seed(5))
    loop()
    assert torch.equal(codes, model.sample(1, generator=torch.Generator().manual_seed(5)).view(1, -1))
