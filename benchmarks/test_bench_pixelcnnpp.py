"""PixelCNN++ sampling, time per batch of images (and, at the end, a training step against
the plain-PyTorch network):

- "naive" (the baseline): model.sample(method="naive"), the network rerun for every
  pixel on the rows up to the next multiple of 4. A whole batch takes many minutes on
  the CPU, so the baseline times the naive sampler's work for ONE pixel of the last
  row (its loop body: the network on all H rows, the pixel's parameters, the finiteness
  check and the dmol_sample draw) and scales it by W * sum_i rows(i) / H
  (extra_info["scale"]; rows(i) = the rows the naive sampler runs for row i): the cost
  of a pixel grows with those rows. The naive sampler's per-pixel bookkeeping (known-
  mask tests, writes) is left out, so the real naive sampler is slower than that
  estimate and the speed-ups are conservative. (An earlier version timed
  sample(method="naive") with every pixel but one known; that also timed 783 skipped
  iterations of the loop, which a loaded machine made cost more than the network and
  overstated the naive time 4x.) At batch 1 the full naive run is timed too
  ("naive, full run").
- "cached (genfast kernel)": sample(method="cached"), genfast.models.pixelcnnpp_cache:
  the u stream one row per layer with batched convolutions, the ul stream, output
  layer and draws of each image row in one call of the compiled op
  genfast.ops.pixelcnnpp_row (threads over the images).
- "cached (python reference)": the same sampler with impl="reference": the ul stream
  in per-pixel torch ops orchestrated from Python (one intra-op thread whatever
  torch.get_num_threads() says), the sampler genfast had before the op.
The naive sampler and the kernel run with the process's thread count: run with
OMP_NUM_THREADS=1 for all on one thread.

Models: the issue's small ones, nr_resnet 2, nr_filters 64, 10 mixtures, 28x28 grey
and 32x32 RGB, 256 levels, float32, dropout inactive (eval). extra_info["images_per_s"]
is batch / (scaled) median.
"""
import pytest
import torch
from conftest import record, synced, training_step

from genfast.models import PixelCNNpp

IMPLS = ("naive", "naive, full run", "cached (genfast kernel)", "cached (python reference)")
CASES = {"grey28": dict(image_channels=1, image_size=28, nr_resnet=2, nr_filters=64, num_mixtures=10),
         "rgb32": dict(image_channels=3, image_size=32, nr_resnet=2, nr_filters=64, num_mixtures=10)}
BATCHES = (1, 16)


def naive_scale(height: int, width: int) -> float:
    return width * sum(min(height, 4 * (i // 4 + 1)) for i in range(height)) / height


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
def test_pixelcnnpp_sampling(benchmark, bench_device, quick, case, batch, impl):
    if impl == "naive, full run" and (batch != 1 or quick or case != "grey28"):
        pytest.skip("the full naive run is timed at batch 1 of the grey model only (minutes), not in --quick")
    torch.manual_seed(0)
    model = PixelCNNpp(**CASES[case]).to(bench_device).eval()
    c, (h, w) = model.image_channels, model.image_size
    generator = torch.Generator(bench_device)
    if impl == "naive":
        # The naive sampler's loop body for pixel (H - 1, W - 1) (PixelCNNpp._sample_naive).
        x = torch.randint(0, model.levels, (batch, c, h, w), device=bench_device)
        u = torch.rand((batch, c + 1, 1, 1), dtype=torch.float64, device=bench_device)

        def run():
            with torch.no_grad():
                params = model.params(model.input_features(x), None)[:, :, h - 1:h, w - 1:w]
                if not torch.isfinite(params).all():
                    raise RuntimeError("non-finite parameters")
                x[:, :, h - 1, w - 1] = model._draw(params, u, 1.0, model.impl)[:, :, 0, 0]

        benchmark.extra_info["scale"] = naive_scale(h, w)
    else:
        kwargs = dict(method="naive" if impl == "naive, full run" else "cached",
                      impl="reference" if impl == "cached (python reference)" else None)

        def run():
            model.sample(batch, generator=generator.manual_seed(0), **kwargs)

    label = "naive (1 pixel's network call x W*sum(rows)/H, estimated)" if impl == "naive" else impl
    group = (f"pixelcnn++ sample {c}x{h}x{w} r{model.nr_resnet} f{model.nr_filters} m{model.num_mixtures} "
             f"b{batch} fp32 {bench_device}")
    record(benchmark, group, label, baseline=impl == "naive")
    slow = impl == "naive, full run"  # minutes; the cached samplers take seconds at most
    benchmark.pedantic(synced(run, bench_device), rounds=1 if slow else 3, warmup_rounds=0 if slow else 1)
    if benchmark.stats:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.median * benchmark.extra_info.get("scale", 1)
        benchmark.extra_info["images_per_s"] = batch / seconds


# ---- training step -----------------------------------------------------------------
# The peer is the same network in plain PyTorch, what the PyTorch ports users train
# (pclucas14/pixel-cnn-pp): NCHW activations, the composite DMOL formula and
# elu(cat([x, -x])) — PixelCNNpp with impl="reference" and memory_format="contiguous"
# computes exactly that. The port converted to channels-last by its user is a second
# peer.
TRAIN_IMPLS = {"plain PyTorch port (NCHW)": ("reference", "contiguous"),
               "plain PyTorch port, channels-last": ("reference", "channels_last"),
               "genfast (auto)": ("auto", "auto"),
               "genfast NCHW": ("auto", "contiguous")}


@pytest.mark.parametrize("impl", list(TRAIN_IMPLS))
@pytest.mark.parametrize("case", list(CASES))
def test_pixelcnnpp_train_step(benchmark, bench_device, quick, case, impl):
    batch = 16
    torch.manual_seed(0)
    layer_impl, memory_format = TRAIN_IMPLS[impl]
    config = dict(CASES[case], dropout=0.5)
    model = PixelCNNpp(impl=layer_impl, memory_format=memory_format, **config).to(bench_device).train()
    c, (h, w) = model.image_channels, model.image_size
    x = torch.randint(0, model.levels, (batch, c, h, w), generator=torch.Generator().manual_seed(1)).to(bench_device)

    step = training_step(model, x)
    group = (f"pixelcnn++ train step {c}x{h}x{w} r{model.nr_resnet} f{model.nr_filters} m{model.num_mixtures} "
             f"b{batch} fp32 {bench_device}")
    record(benchmark, group, impl, baseline=impl == "plain PyTorch port (NCHW)")
    benchmark.pedantic(synced(step, bench_device), rounds=2 if quick else 5, warmup_rounds=1)
