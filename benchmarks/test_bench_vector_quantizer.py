"""A VQ layer's training step (forward with the EMA codebook update, backward to the
input) with the same features switched on everywhere: EMA codebook (decay 0.99),
commitment weight 0.25, straight-through gradients, dead-code restart (threshold
2). Peers: vector-quantize-pytorch's VectorQuantize (the baseline) and a
plain-PyTorch EMA layer in the style of Sonnet's VectorQuantizerEMA / rosinality's
vq-vae-2 (expanded-form distances, an N x K one-hot, dense matmuls for the
statistics). Each case also records the step's peak extra memory
(extra_info["peak_memory_mib"]). GENFAST_BENCH_LARGE=1 adds the largest case.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import record, synced
from test_bench_nearest_code import peak_extra_mib

from genfast.nn import VectorQuantizer

LARGE = os.environ.get("GENFAST_BENCH_LARGE") == "1"
DECAY, BETA, DEAD = 0.99, 0.25, 2.0
BATCH = 16

CPU_CASES = [(65536, 1024, 64), (16384, 8192, 32)]
LARGE_CPU_CASES = [(262144, 4096, 64)]
QUICK_CPU_CASES = [(16384, 1024, 64)]
CUDA_CASES = [(262144, 1024, 64), (65536, 16384, 256), (262144, 8192, 32)]
QUICK_CUDA_CASES = [(65536, 1024, 64)]
ALL_CASES = sorted(set(CPU_CASES + LARGE_CPU_CASES + QUICK_CPU_CASES + CUDA_CASES + QUICK_CUDA_CASES))


class OneHotEMAQuantizer(torch.nn.Module):
    """The common plain-PyTorch EMA quantiser: expanded-form distances, argmin, an
    N x K one-hot whose column sums and transposed product give the statistics."""

    def __init__(self, num_codes, dim):
        super().__init__()
        codebook = torch.randn(num_codes, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_avg", codebook.clone())

    def forward(self, z):
        flat = z.reshape(-1, z.shape[-1])
        scores = flat.square().sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.square().sum(1)
        indices = scores.argmin(1)
        onehot = F.one_hot(indices, self.codebook.shape[0]).to(flat.dtype)
        quantized = onehot @ self.codebook
        if self.training:
            with torch.no_grad():
                self.cluster_size.mul_(DECAY).add_(onehot.sum(0), alpha=1 - DECAY)
                self.embed_avg.mul_(DECAY).add_(onehot.T @ flat, alpha=1 - DECAY)
                n = self.cluster_size.sum()
                smoothed = (self.cluster_size + 1e-5) / (n + self.codebook.shape[0] * 1e-5) * n
                self.codebook.copy_(self.embed_avg / smoothed[:, None])
                dead = self.cluster_size < DEAD
                if dead.any():
                    picks = flat[torch.randint(len(flat), (int(dead.sum()),), device=flat.device)]
                    self.codebook[dead] = picks
                    self.embed_avg[dead] = picks * DEAD
                    self.cluster_size[dead] = DEAD
        loss = BETA * F.mse_loss(flat, quantized.detach())
        out = flat + (quantized - flat).detach()
        return out.view_as(z), indices, loss


def make_layer(impl, k, d):
    if impl == "genfast":
        layer = VectorQuantizer(k, d, decay=DECAY, commitment=BETA, dead_code_threshold=DEAD,
                                channels_first=False, impl="ext")

        def step(z):
            out = layer(z)
            return out.quantized, out.loss
        return layer, step
    if impl == "vector-quantize-pytorch":
        vqp = pytest.importorskip("vector_quantize_pytorch",
                                  reason="vector-quantize-pytorch is not installed (pip install vector-quantize-pytorch)")
        layer = vqp.VectorQuantize(dim=d, codebook_size=k, decay=DECAY, commitment_weight=BETA,
                                   threshold_ema_dead_code=DEAD, kmeans_init=False, rotation_trick=False)

        def step(z):
            quantized, _, loss = layer(z)
            return quantized, loss
        return layer, step
    layer = OneHotEMAQuantizer(k, d)

    def step(z):
        quantized, _, loss = layer(z)
        return quantized, loss
    return layer, step


IMPLS = ["genfast", "vector-quantize-pytorch", "one-hot EMA layer (Sonnet/rosinality style)"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: "N{}-K{}-D{}".format(*c))
def test_vq_training_step(benchmark, bench_device, quick, impl, case):
    if bench_device == "cuda":
        wanted = QUICK_CUDA_CASES if quick else CUDA_CASES
    else:
        wanted = QUICK_CPU_CASES if quick else CPU_CASES + (LARGE_CPU_CASES if LARGE else [])
    if case not in wanted:
        pytest.skip(f"not a {'--quick ' if quick else ''}{bench_device} case")
    n, k, d = case
    torch.manual_seed(0)
    layer, forward = make_layer(impl, k, d)
    layer = layer.to(bench_device).train()
    z = torch.randn(BATCH, n // BATCH, d, device=bench_device, requires_grad=True)

    def train_step():
        quantized, loss = forward(z)
        (quantized.square().mean() + loss).backward()

    step = synced(train_step, bench_device)
    step()  # warm-up
    record(benchmark, f"VQ layer training step N={n} K={k} D={d} fp32 {bench_device}", impl,
           baseline=impl == "vector-quantize-pytorch")
    benchmark.extra_info["peak_memory_mib"] = peak_extra_mib(step, bench_device)
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    rounds = 10 if bench_device == "cuda" else (2 if quick else 3)
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0)
