"""Gated PixelCNN sampling, time per batch of images:

- "naive" (the baseline): model.sample(method="naive"), the network rerun for every
  sub-pixel on the rows up to it. A whole batch takes minutes on the CPU, so it is
  timed on ONE sub-pixel of the last row (all other sub-pixels given as known) and
  scaled by W * C * (H + 1) / 2 (extra_info["scale"]): the cost of a sub-pixel grows
  with the rows it reruns, so row i costs about (i + 1) / H of the last one. Fixed
  per-call costs make the real naive sampler slower than that estimate, so the
  speed-ups are conservative; at batch 1 on the CPU the full naive run is timed too
  ("naive, full run").
- "python incremental": the same cached algorithm orchestrated from Python, per
  sub-pixel and layer torch ops (sample(impl="reference"); what fast-pixel-cnn does);
- "genfast": sample(), one gated_pixelcnn_row call per row (on CUDA the batched kernel);
- "genfast, per-image kernel" (CUDA only): the same with GENFAST_GATED_ROW_KERNEL=per_image,
  the one-block-per-image kernel the batched one replaced as the default.

test_gated_row_op_per_sub_pixel times the op alone on one row of the RGB model at
batch 16 with each CUDA kernel; extra_info["us_per_sub_pixel"] = median / (W * C)
(the design target: <= 20 us, docs/gated-pixelcnn-row-gpu.md).

Models: 28x28 grey, 8 layers of 64 channels, kernel 5 (the defaults); 32x32 RGB, 15
layers of 126 channels (the multiple of 3 colour groups nearest 128), kernel 5 (CUDA
only: a CPU batch takes tens of seconds).
256 levels, float32. extra_info["images_per_s"] is batch / (scaled) median.
"""
import pytest
import torch
from conftest import record, synced

from genfast.models import GatedPixelCNN

IMPLS = ("naive", "naive, full run", "python incremental", "genfast", "genfast, per-image kernel")
CASES = {"grey28": dict(image_channels=1, image_size=28, hidden_channels=64, num_layers=8, kernel_size=5),
         "rgb32": dict(image_channels=3, image_size=32, hidden_channels=126, num_layers=15, kernel_size=5)}
BATCHES = (1, 16, 64, 256)
QUICK = {("grey28", 1), ("grey28", 16), ("rgb32", 1), ("rgb32", 16)}


def skip_reason(case: str, impl: str, batch: int, device: str, quick: bool) -> str | None:
    if quick and (case, batch) not in QUICK:
        return "not in --quick"
    if device == "cpu" and case == "rgb32":
        return "the 15-layer RGB model is measured on the GPU only"
    if impl == "genfast, per-image kernel" and device != "cuda":
        return "the per-image kernel is one of the two CUDA kernels"
    if impl == "naive, full run" and (device != "cpu" or batch != 1 or quick):
        return "the full naive run is timed at batch 1 on the CPU only"
    if device == "cpu" and impl == "python incremental" and batch > 64:
        return "the Python-orchestrated sampler takes minutes at this batch on the CPU"
    return None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
def test_gated_pixelcnn_sampling(benchmark, bench_device, quick, monkeypatch, case, batch, impl):
    reason = skip_reason(case, impl, batch, bench_device, quick)
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = GatedPixelCNN(**CASES[case]).to(bench_device).eval()
    c, (h, w) = model.image_channels, model.image_size
    generator = torch.Generator(bench_device)
    kwargs = {}
    if impl == "naive":
        # Every sub-pixel known but the last: the naive sampler computes that one alone.
        prefix = torch.randint(0, model.levels, (batch, c, h, w), device=bench_device)
        known = torch.ones_like(prefix, dtype=torch.bool)
        known[:, -1, -1, -1] = False
        kwargs = dict(prefix=prefix, known_mask=known, method="naive")
        benchmark.extra_info["scale"] = w * c * (h + 1) / 2
    elif impl == "naive, full run":
        kwargs = dict(method="naive")
    else:
        kwargs = dict(impl="reference" if impl == "python incremental" else "ext")
        if impl == "genfast, per-image kernel":
            monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", "per_image")

    def run():
        model.sample(batch, generator=generator.manual_seed(0), **kwargs)

    label = "naive (1 sub-pixel x W*C*(H+1)/2, estimated)" if impl == "naive" else impl
    group = (f"gated pixelcnn sample {c}x{h}x{w} h{model.hidden_channels}x{model.num_layers} k{model.kernel_size} "
             f"b{batch} fp32 {bench_device}")
    record(benchmark, group, label, baseline=impl == "naive")
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    slow = impl == "naive, full run" or (bench_device == "cpu" and batch >= 64)
    benchmark.pedantic(synced(run, bench_device), rounds=1 if slow else 3, warmup_rounds=0 if slow else 1)
    if benchmark.stats:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median * benchmark.extra_info.get("scale", 1)
        benchmark.extra_info["images_per_s"] = batch / seconds


@pytest.mark.parametrize("kernel", ("per_image", "batched"))
def test_gated_row_op_per_sub_pixel(benchmark, bench_device, monkeypatch, kernel):
    if bench_device != "cuda":
        pytest.skip("compares the two CUDA kernels")
    from genfast.ops import GatedRowWeights, gated_pixelcnn_row

    monkeypatch.setenv("GENFAST_GATED_ROW_KERNEL", kernel)
    n, c, width, h, layers, taps, levels = 16, 3, 32, 126, 15, 3, 256
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(shape, generator=gen) * scale).to(bench_device)

    # Unmasked weights of the model's sizes: the kernels' work does not depend on the masks.
    weights = GatedRowWeights(rand(levels, 1), rand(taps, c, 2 * h, scale=0.3),
                              rand(layers - 1, taps, h, 2 * h, scale=(taps * h) ** -0.5),
                              rand(layers, h, h, scale=h ** -0.5), rand(layers, h),
                              rand(layers, h, h, scale=h ** -0.5), rand(layers, h),
                              rand(h, h, scale=h ** -0.5), rand(h), rand(h, c * levels, scale=h ** -0.5),
                              rand(c * levels))
    prefix = torch.zeros((n, c, width), dtype=torch.int64, device=bench_device)
    known = torch.zeros((n, c, width), dtype=torch.bool, device=bench_device)
    uniforms = torch.rand((width, c, n), generator=gen, dtype=torch.float64).to(bench_device)
    row_bias = rand(layers, n, width, 2 * h)

    def run():
        gated_pixelcnn_row(prefix, known, uniforms, 1.0, row_bias, weights, impl="ext", check_levels=False)

    record(benchmark, f"gated_pixelcnn_row op, one row 3x32 h{h}x{layers} k5 b{n} fp32 cuda ({width * c} sub-pixels)",
           f"{kernel} kernel", baseline=kernel == "per_image")
    benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    benchmark.pedantic(synced(run, bench_device), rounds=5, warmup_rounds=1)
    if benchmark.stats:
        benchmark.extra_info["us_per_sub_pixel"] = benchmark.stats.stats.median / (width * c) * 1e6
