"""genfast.models.WaveNet: mu-law, causality and receptive field, the likelihood,
cached vs naive sampling (identical samples in float64, logits equal to the full
forward in float32), cache memory and bad arguments."""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from genfast.models import WaveNet, dilation_cycles, mu_law_decode, mu_law_encode
from genfast.nn import CausalConv1d


def random_model(seed, dtype=torch.float64, device="cpu"):
    """A random architecture: kernel width 2 or 3, dilations, layer count, channel
    counts, input kernel width, with or without global conditioning."""
    rng = random.Random(seed)
    conditional = rng.random() < 0.5
    torch.manual_seed(seed)
    model = WaveNet(levels=rng.choice([7, 32, 256]), residual_channels=rng.randint(2, 12),
                    gate_channels=2 * rng.randint(1, 8), skip_channels=rng.randint(2, 12),
                    head_channels=rng.randint(2, 12), kernel_size=rng.choice([2, 3]),
                    dilations=[rng.choice([1, 2, 4]) for _ in range(rng.randint(1, 5))],
                    input_kernel_size=rng.randint(1, 3), num_classes=3 if conditional else None,
                    class_embedding_dim=rng.randint(1, 5) if conditional else None)
    with torch.no_grad():  # sharper distributions than the default initialisation
        for p in model.parameters():
            p.mul_(2.0)
    return model.to(device, dtype).eval(), rng


def test_mu_law_round_trip():
    levels = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(levels, dtype=torch.float64)), levels)
    x = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    q = mu_law_encode(x)
    assert q.dtype == torch.int64 and q.min() == 0 and q.max() == 255
    assert torch.equal(q, q.sort().values)  # monotone
    # Companding: steps are finest near zero (about 1/4000 there, 1/16 at the ends).
    err = (mu_law_decode(q, dtype=torch.float64) - x).abs()
    assert err[x.abs() < 0.01].max() < 2.5e-4 and err.max() < 0.032
    assert mu_law_encode(torch.tensor([0.0])).item() == 128
    assert mu_law_encode(torch.tensor([-5.0, 5.0])).tolist() == [0, 255]  # clipped
    assert torch.equal(mu_law_encode(mu_law_decode(torch.arange(16), 16), 16), torch.arange(16))


def test_default_architecture_and_config_round_trip():
    model = WaveNet()
    assert model.dilations == dilation_cycles(3, 10) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] * 3
    assert model.receptive_field == 1 + 3 * 1023
    assert model.layers[-1].residual is None and model.layers[0].residual is not None
    model, _ = random_model(4)
    copy = WaveNet(**model.config).double()
    copy.load_state_dict(model.state_dict())
    x = torch.randint(0, model.levels, (1, 50))
    torch.testing.assert_close(copy(x, torch.tensor([2])), model(x, torch.tensor([2])))


def test_input_features_equal_a_causal_conv_of_the_shifted_one_hot():
    torch.manual_seed(0)
    model = WaveNet(levels=11, residual_channels=5, input_kernel_size=3, dilations=[1]).double()
    x = torch.randint(0, 11, (2, 9))
    shifted = F.pad(F.one_hot(x, 11).double().transpose(1, 2), (1, 0))[:, :, :-1]
    conv = CausalConv1d(11, 5, 3).double()
    conv.load_state_dict(model.input_conv.state_dict())
    torch.testing.assert_close(model.input_features(x), conv(shifted))


@pytest.mark.parametrize("kernel_size,dilations,input_kernel_size",
                         [(2, [1, 2, 4, 8], 1), (3, [4, 1, 4], 2), (2, [1, 1, 2], 3)])
def test_logits_depend_on_exactly_the_receptive_field(kernel_size, dilations, input_kernel_size):
    torch.manual_seed(0)
    model = WaveNet(levels=16, residual_channels=8, kernel_size=kernel_size, dilations=dilations,
                    input_kernel_size=input_kernel_size).double()
    rf = model.receptive_field
    assert rf == input_kernel_size + sum((kernel_size - 1) * d for d in dilations)
    x = torch.randint(0, 16, (1, rf + 6))
    t = rf + 5
    base = model(x)[0, :, t]
    for position, changes in [(t - rf, True), (t - 1, True), (t - rf - 1, False), (t, False)]:
        changed = []
        for level in (x[0, position].item() + 1) % 16, (x[0, position].item() + 5) % 16:
            y = x.clone()
            y[0, position] = level
            changed.append(bool((model(y)[0, :, t] != base).any()))
        assert any(changed) == changes, position


def test_loss_is_the_mean_nll():
    model, _ = random_model(1)
    labels = torch.tensor([0, 2]) if model.num_classes else None
    x = torch.randint(0, model.levels, (2, 20))
    logits = model(x, labels)
    nll = -torch.log_softmax(logits, 1).gather(1, x.unsqueeze(1)).mean()
    torch.testing.assert_close(model.loss(x, labels), nll)
    torch.testing.assert_close(model.loss(x, labels, unit="bits"), nll / math.log(2))
    model.loss(x, labels).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(12))
def test_cached_and_naive_sampling_are_identical_float64(device, seed):
    model, rng = random_model(seed, torch.float64, device)
    n = rng.choice([1, 2, 5])
    length = rng.choice([model.receptive_field // 2, model.receptive_field]) + rng.randint(1, 12)
    kwargs = dict(temperature=rng.choice([1.0, 0.7]))
    if model.num_classes:
        kwargs["labels"] = torch.tensor([rng.randrange(3) for _ in range(n)])
    if rng.random() < 0.4:
        kwargs["prefix"] = torch.randint(0, model.levels, (n, rng.randint(1, length)))
    samples = {}
    for method, impl in [("naive", None), ("cached", "ext"), ("cached", "reference")]:
        gen = torch.Generator(device).manual_seed(seed)
        samples[method, impl] = model.sample(n, length, generator=gen, method=method, impl=impl, **kwargs)
    naive = samples["naive", None]
    assert naive.shape == (n, length) and naive.dtype == torch.int64
    assert torch.equal(samples["cached", "ext"], naive)
    assert torch.equal(samples["cached", "reference"], naive)
    if "prefix" in kwargs:
        assert torch.equal(naive[:, : kwargs["prefix"].shape[1]], kwargs["prefix"].to(device))
    assert len(naive.unique()) > 1  # not a constant signal


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_cached_logits_equal_the_full_forward_float32(device, seed):
    # Teacher forcing: with a random signal as the prefix, the cached step's logits at
    # every step equal the full forward's logits to 1e-4 relative (max-norm per step).
    model, rng = random_model(20 + seed, torch.float32, device)
    n, length = rng.choice([1, 3, 6]), model.receptive_field + 20
    labels = torch.tensor([rng.randrange(3) for _ in range(n)]) if model.num_classes else None
    x = torch.randint(0, model.levels, (n, length), device=device)
    # cuDNN may run float32 convolutions in TF32 (10-bit mantissas): the full forward runs
    # without it (cuBLAS matmuls stay float32 unless torch.backends.cuda.matmul says otherwise).
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        full = model(x, labels)
    sampler = model.sampler(n, length, labels=labels, prefix=x, impl="ext")
    for t in range(length):
        logits = sampler.step(t)
        err = (logits - full[:, :, t]).abs().max() / full[:, :, t].abs().max()
        assert err < 1e-4, (t, err.item())
    assert torch.equal(sampler.samples, x)


def test_cache_memory_is_per_layer_rings_not_the_activation_stack():
    model = WaveNet(residual_channels=16, kernel_size=3, dilations=[1, 2, 4, 8, 16] * 2)
    n = 4
    k, r = model.kernel_size, model.residual_channels
    expected = n * r * sum((k - 1) * d + 1 for d in model.dilations)
    for length in (10, 5000):
        sampler = model.sampler(n, length)
        cache_bytes = sampler.cache.numel() * sampler.cache.element_size()
        assert sampler.cache.numel() == expected  # independent of the length
        assert cache_bytes == expected * 4
    # Against every layer's activations at every step of a 5000-step sequence:
    assert expected < n * len(model.dilations) * r * 5000 / 30


def test_same_generator_same_samples():
    model, _ = random_model(3, torch.float32)
    labels = 1 if model.num_classes else None
    a = model.sample(2, 30, labels=labels, generator=torch.Generator().manual_seed(0))
    b = model.sample(2, 30, labels=labels, generator=torch.Generator().manual_seed(0))
    c = model.sample(2, 30, labels=labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_conditioning_changes_the_samples():
    model, _ = random_model(1)  # conditional
    assert model.num_classes == 3
    a = model.sample(3, 40, labels=0, generator=torch.Generator().manual_seed(0))
    b = model.sample(3, 40, labels=torch.tensor([2, 2, 2]), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)


def test_non_finite_network_is_reported():
    model, _ = random_model(2)
    labels = 0 if model.num_classes else None
    with torch.no_grad():
        model.head2.bias[0] = float("nan")
    for method in ("cached", "naive"):
        with pytest.raises(RuntimeError, match="non-finite logits for sequence 0 at step 0"):
            model.sample(1, 5, labels=labels, method=method)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(n=0), ValueError, "n must be a positive int"),
    (dict(length=1.5), ValueError, "length must be a positive int"),
    (dict(method="fast"), ValueError, "method must be one of"),
    (dict(temperature=0), ValueError, "temperature"),
    (dict(generator=1), TypeError, "generator"),
    (dict(labels=0), ValueError, "labels given but the model is unconditional"),
    (dict(prefix=torch.full((2, 3), 300)), ValueError, r"prefix values must lie in \[0, 256\)"),
    (dict(prefix=torch.zeros(2, 11, dtype=torch.long)), ValueError, "P <= length"),
    (dict(prefix=torch.zeros(3, 2, dtype=torch.long)), ValueError, "prefix must be"),
    (dict(prefix=torch.zeros(2, 2)), TypeError, "prefix must be an integer tensor"),
])
def test_bad_sample_arguments(kwargs, error, match):
    model = WaveNet(residual_channels=4, dilations=[1, 2])
    args = dict(n=2, length=10) | kwargs
    with pytest.raises(error, match=match):
        model.sample(args.pop("n"), args.pop("length"), **args)


def test_bad_model_inputs():
    model = WaveNet(residual_channels=4, dilations=[1], num_classes=2)
    x = torch.randint(0, 256, (2, 5))
    with pytest.raises(ValueError, match="labels are required"):
        model(x)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        model(x, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels must have shape"):
        model(x, torch.tensor([0]))
    with pytest.raises(TypeError, match="quantise with mu_law_encode"):
        model(x.float(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-empty"):
        model(x[:, :0], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unit"):
        model.loss(x, torch.tensor([0, 1]), unit="dB")
    for kwargs, match in [(dict(gate_channels=3), "even"), (dict(dilations=[]), "dilations"),
                          (dict(dilations=[1, 0]), "dilation"), (dict(kernel_size=0), "kernel_size"),
                          (dict(class_embedding_dim=4), "without num_classes"), (dict(levels=1), "levels")]:
        with pytest.raises(ValueError, match=match):
            WaveNet(**kwargs)
