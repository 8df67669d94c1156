"""PixelCNN sampling, time per batch of images (one model.sample call):

- "naive" (the baseline): the network rerun for every sub-pixel (method="naive").
  Where a whole naive batch takes too long (large batches, the GPU check's --quick, the
  RGB case) only the last NAIVE_ROWS rows are sampled (the rows above are a known
  prefix, which the naive sampler skips) and the time is scaled to the whole image by
  sum over rows i of (i + 1) / the same sum over the timed rows, since row i reruns the
  network on rows 0..i; a fixed per-call cost makes the early rows dearer than that, so
  the estimate errs low (speed-ups err low). extra_info["naive_rows"] says which.
- "python incremental": the same cached algorithm as genfast, orchestrated from Python
  with per-position torch ops (method="cached", impl="reference").
- "genfast": method="cached" with the pixelcnn_row op, one call per image row.

Models: 28x28 grey, hidden 64 (128-channel residual stream), 8 blocks, 256 levels; on
CUDA also 32x32 RGB, hidden 96, 8 blocks. float32. extra_info["samples_per_s"] is
images per second.
"""
import pytest
import torch
from conftest import record, synced

from genfast.models import PixelCNN

IMPLS = ("naive", "python incremental", "genfast")
BATCHES = (1, 16, 64, 256)
MODELS = {"28x28 grey": dict(image_channels=1, hidden_channels=64, image_size=28),
          "32x32 RGB": dict(image_channels=3, hidden_channels=96, image_size=32)}
NAIVE_ROWS = 4


def make_model(name: str, device: str) -> PixelCNN:
    torch.manual_seed(0)
    return PixelCNN(num_blocks=8, **MODELS[name]).to(device).eval()


def naive_rows(name: str, batch: int, device: str, quick: bool) -> int:
    height = MODELS[name]["image_size"]
    whole = device == "cpu" and batch <= 16 and not quick and name == "28x28 grey"
    return height if whole else NAIVE_ROWS


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_pixelcnn_sample(benchmark, bench_device, quick, name, batch, impl):
    if bench_device == "cpu" and name != "28x28 grey":
        pytest.skip("the RGB case is measured on the GPU only")
    if bench_device == "cpu" and quick and batch > 16:
        pytest.skip("large CPU batches are not in --quick")
    if quick and batch == 64:
        pytest.skip("not in --quick")
    model = make_model(name, bench_device)
    height = MODELS[name]["image_size"]
    kwargs = dict(generator=torch.Generator(bench_device).manual_seed(0))
    rows = height
    if impl == "naive":
        rows = naive_rows(name, batch, bench_device, quick)
        if rows < height:
            prefix = model.sample(batch, generator=torch.Generator(bench_device).manual_seed(1))
            kwargs["prefix"] = prefix[:, :, :height - rows]
        run = lambda: model.sample(batch, method="naive", **kwargs)  # noqa: E731
    else:
        impl_name = "reference" if impl == "python incremental" else "ext"
        run = lambda: model.sample(batch, method="cached", impl=impl_name, **kwargs)  # noqa: E731
    label = impl
    if rows < height:
        # Scale the timed rows to the whole image (see the module docstring).
        benchmark.extra_info["scale"] = sum(range(1, height + 1)) / sum(range(height - rows + 1, height + 1))
        label = f"naive (last {rows} rows, scaled, estimated)"
    record(benchmark, f"pixelcnn sample {name} 8 blocks b{batch} fp32 {bench_device}", label,
           baseline=impl == "naive")
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    n_rounds = 1 if impl == "naive" or batch >= 64 or bench_device == "cpu" and impl != "genfast" else 3
    benchmark.pedantic(synced(run, bench_device), rounds=n_rounds, warmup_rounds=0 if impl == "naive" else 1)
    if benchmark.stats:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median * benchmark.extra_info.get("scale", 1)
        benchmark.extra_info["samples_per_s"] = batch / seconds
