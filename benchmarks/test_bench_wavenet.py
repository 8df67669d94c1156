"""WaveNet sampling, time per step (one new sample for every sequence of the batch):

- "naive" (the baseline): the network rerun on the last receptive_field samples for
  every new sample (model.sample(method="naive")), measured on fewer steps;
- "python incremental": the same cached algorithm as genfast, but orchestrated from
  Python with per-layer torch ops on the ring buffers (genfast.ops.wavenet_step_reference,
  what r9y9's wavenet_vocoder incremental_forward does);
- "genfast": one wavenet_step op call per step.

24 layers in 3 dilation cycles (1 .. 128), kernel width 2, 64 or 128 residual
channels (gate and skip 2x), float32. extra_info["samples_per_s"] is batch / median.
"""
import pytest
import torch
from conftest import record, synced

from genfast.models import WaveNet, dilation_cycles

IMPLS = ("naive", "python incremental", "genfast")
CHANNELS = (64, 128)
BATCHES = (1, 16, 64, 256)
QUICK = {(128, 1), (128, 16), (64, 256)}


def rounds(impl: str, batch: int, device: str, quick: bool) -> int:
    if device == "cuda":
        return 10 if impl == "naive" else (200 if quick else 500)
    if impl == "naive":
        return 3 if batch <= 16 else 1
    return 200 if batch <= 16 else (40 if batch <= 64 else 12)


def make_model(channels: int, device: str) -> WaveNet:
    torch.manual_seed(0)
    model = WaveNet(residual_channels=channels, dilations=dilation_cycles(3, 8))
    return model.to(device).eval()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("channels", CHANNELS)
def test_wavenet_sampling_step(benchmark, bench_device, quick, impl, batch, channels):
    if quick and (channels, batch) not in QUICK:
        pytest.skip("not in --quick")
    model = make_model(channels, bench_device)
    n_rounds = rounds(impl, batch, bench_device, quick)
    start = model.receptive_field  # naive steps from here on see a full receptive field
    method = "naive" if impl == "naive" else "cached"
    sampler = model.sampler(batch, start + n_rounds + 2, method=method,
                            impl="reference" if impl == "python incremental" else "ext",
                            generator=torch.Generator(bench_device).manual_seed(0))
    if impl == "naive":
        step = lambda: sampler.step(start)  # noqa: E731 - every naive step costs the same
    else:
        position = iter(range(start + n_rounds + 2))
        step = lambda: sampler.step(next(position))  # noqa: E731 - the cached state advances
        step()
    group = f"wavenet step 24 layers R{channels} b{batch} fp32 {bench_device}"
    record(benchmark, group, impl, baseline=impl == "naive")
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    benchmark.pedantic(synced(step, bench_device), rounds=n_rounds, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("batch", (1, 16))
def test_wavenet_sample_16000(benchmark, bench_device, batch):
    # One whole model.sample call of 16 000 samples (4 s of 4 kHz audio, 1 s of 16 kHz).
    if bench_device != "cuda":
        pytest.skip("16 000-step end-to-end runs are measured on the GPU only (see the per-step cases)")
    model = make_model(128, bench_device)
    record(benchmark, f"wavenet sample(n={batch}, 16000) 24 layers R128 fp32 cuda", "genfast")
    benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    benchmark.pedantic(synced(lambda: model.sample(batch, 16000), bench_device), rounds=1, warmup_rounds=0)
    if benchmark.stats:
        benchmark.extra_info["samples_per_s"] = batch * 16000 / benchmark.stats.stats.median
