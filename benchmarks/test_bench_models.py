"""PixelCNN and Gated PixelCNN: a training step (forward + backward) with genfast's
masked layers against the same model whose masked layers run F.conv2d(weight * mask)
(impl="reference") on NCHW activations, what public PixelCNNs do: the baseline. genfast's
layers run algorithm="auto" (the autotuner's choice per layer and phase; extra_info["algorithms"]
counts what it chose) and, for comparison, the live-tap kernels only. The models' activations
are channels-last on AVX-512 CPUs by default (memory_format="auto"), so two more rows separate
the layout's share from the layers': genfast on NCHW, and the weight*mask model run
channels-last as well (a peer any user can get by converting their model). Sampling is
measured in test_bench_gated_pixelcnn_row.py and test_bench_pixelcnn_row.py."""
from collections import Counter

import pytest
import torch
from conftest import record, synced, training_step

from genfast.models import GatedPixelCNN, PixelCNN
from genfast.nn import MaskedConv2d
from genfast.ops import _autotune

# (model, channels, side, config, batch): grey digits-sized and CIFAR-sized RGB models.
TRAIN_CASES = [
    ("pixelcnn", 1, 28, dict(hidden_channels=64, num_blocks=6), 16),
    ("gated-pixelcnn", 1, 28, dict(hidden_channels=64, num_layers=8, kernel_size=5), 16),
    ("pixelcnn", 3, 32, dict(hidden_channels=96, num_blocks=6), 8),
    ("gated-pixelcnn", 3, 32, dict(hidden_channels=96, num_layers=8, kernel_size=5), 8),
]
QUICK_TRAIN_CASES = TRAIN_CASES[:2]
# name -> (impl, algorithm of every masked layer, memory_format; None: the model's default,
# for models without the option)
IMPLS = {"genfast": ("auto", "auto", None), "genfast live_tap only": ("ext", "live_tap", None),
         "genfast NCHW": ("auto", "auto", "contiguous"),
         "F.conv2d(weight*mask)": ("reference", "auto", "contiguous"),
         "F.conv2d(weight*mask) channels_last": ("reference", "auto", "channels_last")}
HAS_MEMORY_FORMAT = {"pixelcnn", "gated-pixelcnn"}
MODELS = {"pixelcnn": PixelCNN, "gated-pixelcnn": GatedPixelCNN}


def case_id(case):
    return f"{case[0]}-{case[1]}x{case[2]}"


def build(name, channels, side, config, levels, impl, algorithm, memory_format, device):
    torch.manual_seed(0)
    if name in HAS_MEMORY_FORMAT and memory_format is not None:
        config = dict(config, memory_format=memory_format)
    model = MODELS[name](image_channels=channels, levels=levels, image_size=side, impl=impl, **config)
    for module in model.modules():
        if isinstance(module, MaskedConv2d):
            module.algorithm = algorithm
    return model.to(device)


def describe(name, config):
    depth = config.get("num_layers", config.get("num_blocks"))
    return f"{name} h{config['hidden_channels']}x{depth}"


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", TRAIN_CASES, ids=case_id)
def test_train_step(benchmark, bench_device, quick, impl, case):
    if quick and case not in QUICK_TRAIN_CASES:
        pytest.skip("not in --quick")
    name, channels, side, config, batch = case
    if IMPLS[impl][2] not in (None, "contiguous") or impl == "genfast NCHW":
        if name not in HAS_MEMORY_FORMAT:
            pytest.skip(f"{name} runs NCHW only (no memory_format option): the other rows cover it")
    model = build(name, channels, side, config, 256, *IMPLS[impl], bench_device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (batch, channels, side, side), generator=gen).to(bench_device)

    step = training_step(model, x)
    group = (f"train step (fwd+bwd) {describe(name, config)} b{batch} {channels}x{side}x{side} "
             f"256 levels fp32 {bench_device}")
    record(benchmark, group, impl, baseline=impl == "F.conv2d(weight*mask)")
    if bench_device == "cuda":
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    before = set(_autotune.choices())
    step()  # the autotuner times each new layer signature here, outside the timed rounds
    new = [e for k, e in _autotune.choices().items() if k not in before]
    benchmark.extra_info["algorithms"] = dict(Counter(f"{e['phase']}:{e['algorithm']}" for e in new))
    rounds = 10 if bench_device == "cuda" else (2 if quick else 3)
    benchmark.pedantic(synced(step, bench_device), rounds=rounds, warmup_rounds=1)

