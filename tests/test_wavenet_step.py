"""wavenet_step: kernels against the reference on random architectures and random
(non-zero) states, the draw rule, poisoned outputs, strided state, opcheck and bad input."""
import math
import random

import pytest
import torch
from conftest import DEVICES, requires_ext

from genfast.ops import WaveNetWeights, draw_from_logits, wavenet_step, wavenet_step_reference, wavenet_stepper


def random_case(seed, device, dtype=torch.float64):
    """Random packed weights, a random cache (as if mid-sequence), samples and uniforms."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    n, length = rng.randint(1, 7), rng.randint(3, 12)
    levels, r, half = rng.randint(2, 20), rng.randint(1, 9), rng.randint(1, 6)
    s, h, k, k_in = rng.randint(1, 8), rng.randint(1, 8), rng.randint(1, 3), rng.randint(1, 3)
    dilations = tuple(rng.choice([1, 2, 3, 4, 8]) for _ in range(rng.randint(1, 5)))
    layers = len(dilations)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) / 2).to(device, dtype)

    weights = WaveNetWeights(
        input_weight=rand(k_in, levels, r), input_bias=rand(r), dilated_weight=rand(layers, k * r, 2 * half),
        gate_bias=rand(rng.choice([1, n]), layers, 2 * half), out_weight=rand(layers, half, r + s),
        out_bias=rand(layers, r + s), head_weight1=rand(s, h), head_bias1=rand(h),
        head_weight2=rand(h, levels), head_bias2=rand(levels), dilations=dilations)
    cache = rand(n, sum(weights.ring_lengths()), r)
    samples = torch.randint(0, levels, (n, length), generator=gen).to(device)
    uniforms = torch.rand(length, n, generator=gen, dtype=torch.float64).to(device)
    return weights, cache, samples, uniforms, rng.randint(0, length)


def run_steps(weights, cache, samples, uniforms, known, impl, steps):
    cache, samples = cache.clone(), samples.clone()
    logits = [wavenet_step(samples, cache, uniforms, t, known, 0.8, weights, impl=impl) for t in steps]
    return torch.stack(logits), cache, samples


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(24))
def test_matches_reference_float64(device, seed):
    weights, cache, samples, uniforms, known = random_case(seed, device)
    steps = range(samples.shape[1])
    got = run_steps(weights, cache, samples, uniforms, known, "ext", steps)
    want = run_steps(weights, cache, samples, uniforms, known, "reference", steps)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)  # logits
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)  # cache
    assert torch.equal(got[2], want[2])  # samples: drawn from the same logits and uniforms
    assert torch.equal(got[2][:, :known], samples[:, :known])  # known steps are kept


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_float32(device, seed):
    # float32 takes the AVX-512 micro-kernels and vectorised gate on the CPU where available.
    weights, cache, samples, uniforms, known = random_case(100 + seed, device, torch.float32)
    steps = range(samples.shape[1])
    got = run_steps(weights, cache, samples, uniforms, samples.shape[1], "ext", steps)
    want = run_steps(weights, cache, samples, uniforms, samples.shape[1], "reference", steps)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_model_sized_step(device):
    # Channel counts that are not multiples of the vector and tile widths, batch 13.
    gen = torch.Generator().manual_seed(3)
    layers, r, half, s, h, levels, n = 6, 67, 70, 131, 45, 256, 13
    rand = lambda *shape: (0.1 * torch.randn(*shape, generator=gen)).to(device)  # noqa: E731
    weights = WaveNetWeights(rand(2, levels, r), rand(r), rand(layers, 3 * r, 2 * half),
                             rand(n, layers, 2 * half), rand(layers, half, r + s), rand(layers, r + s),
                             rand(s, h), rand(h), rand(h, levels), rand(levels), (1, 2, 4, 8, 1, 2))
    cache = rand(n, sum(weights.ring_lengths()), r)
    samples = torch.randint(0, levels, (n, 9), generator=gen).to(device)
    uniforms = torch.rand(9, n, generator=gen, dtype=torch.float64).to(device)
    got = run_steps(weights, cache, samples, uniforms, 9, "ext", range(9))
    want = run_steps(weights, cache, samples, uniforms, 9, "reference", range(9))
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_written(device, poisoned_allocations):
    # Deterministic mode fills fresh allocations with NaN: an unwritten logit or sample
    # (the draw of a NaN row is -1) shows up.
    for seed in range(6):
        weights, cache, samples, uniforms, _ = random_case(200 + seed, device, torch.float32)
        logits, _, out = run_steps(weights, cache, samples, uniforms, 0, "ext", range(samples.shape[1]))
        assert torch.isfinite(logits).all()
        assert (out >= 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_logits_draw_minus_one(device):
    weights, cache, samples, uniforms, _ = random_case(300, device)
    bias = weights.head_bias2.clone()
    bias[-1] = float("nan")
    weights = weights._replace(head_bias2=bias)
    logits, _, out = run_steps(weights, cache, samples, uniforms, 0, "ext", [0])
    assert (out[:, 0] == -1).all()
    # A later step reads -1 as "no sample" (adds nothing), like the reference.
    want = run_steps(weights, cache, out, uniforms, 1, "reference", [1])
    got = run_steps(weights, cache, out, uniforms, 1, "ext", [1])
    torch.testing.assert_close(got[0], want[0], equal_nan=True)


@requires_ext
def test_strided_state_is_updated_in_place():
    weights, cache, samples, uniforms, known = random_case(400, "cpu")
    cache_t = cache.transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
    samples_t = samples.t().contiguous().t()
    uniforms_t = uniforms.t().contiguous().t()
    assert not cache_t.is_contiguous() and not samples_t.is_contiguous() and not uniforms_t.is_contiguous()
    want = run_steps(weights, cache, samples, uniforms, known, "reference", range(3))
    logits = [wavenet_step(samples_t, cache_t, uniforms_t, t, known, 0.8, weights, impl="ext")
              for t in range(3)]
    torch.testing.assert_close(torch.stack(logits), want[0])
    torch.testing.assert_close(cache_t, want[1])
    assert torch.equal(samples_t, want[2])


def test_draw_from_logits_rule():
    # Levels are drawn by the inverse CDF with no normalisation step: level k where
    # cdf[k - 1] <= u * total < cdf[k].
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 2.0, 1.0], [1.0, 2.0, 1.0], [1.0, 2.0, 1.0]]))
    u = torch.tensor([0.0, 0.2499, 0.25, 0.9999], dtype=torch.float64)
    assert draw_from_logits(logits, u).tolist() == [0, 0, 1, 2]
    # Temperature divides the logits: at temperature 0.5 the weights are 1 : 4 : 1.
    assert draw_from_logits(logits, torch.full((4,), 0.17, dtype=torch.float64), 0.5).tolist() == [1] * 4
    assert draw_from_logits(logits, torch.full((4,), 0.16, dtype=torch.float64), 0.5).tolist() == [0] * 4
    # u -> 1 never draws past the last level; a non-finite row draws -1.
    assert draw_from_logits(logits[:1], torch.tensor([1.0], dtype=torch.float64)).tolist() == [2]
    bad = torch.tensor([[0.0, math.inf, 0.0], [0.0, math.nan, 1.0]])
    assert draw_from_logits(bad, torch.tensor([0.5, 0.5], dtype=torch.float64)).tolist() == [-1, -1]


@requires_ext
def test_draw_matches_kernel_next_to_cdf_steps():
    # Logits log(1), ..., log(levels): the CDF steps are at cumsum(1..levels) / total. The
    # kernel's draw equals draw_from_logits and the expected level just below and just
    # above each step (no off-by-one), at u = 0 and as u -> 1.
    weights, cache, samples, uniforms, _ = random_case(500, "cpu")
    n, levels = samples.shape[0], weights.levels
    head_bias2 = torch.log(torch.arange(1, levels + 1, dtype=torch.float64))
    weights = weights._replace(head_weight2=torch.zeros_like(weights.head_weight2), head_bias2=head_bias2)
    edges = torch.arange(1, levels + 1, dtype=torch.float64).cumsum(0)
    edges = edges / edges[-1]
    cases = [(0.0, 0), (1.0 - 1e-16, levels - 1)]
    for i in range(levels - 1):
        cases += [(float(edges[i]) - 1e-9, i), (float(edges[i]) + 1e-9, i + 1)]
    for u, level in cases:
        uni = torch.full_like(uniforms, u)
        out = samples.clone()
        logits = wavenet_step(out, cache.clone(), uni, 0, 0, 1.0, weights, impl="ext")
        assert out[:, 0].tolist() == [level] * n, u
        assert torch.equal(out[:, 0], draw_from_logits(logits, uni[0]))


@requires_ext
@pytest.mark.parametrize("seed", range(3))
def test_opcheck(seed):
    weights, cache, samples, uniforms, known = random_case(600 + seed, "cpu")
    w = weights
    args = (samples, cache, uniforms, samples.shape[1] - 1, known, 0.7, w.tensors(), list(w.dilations))
    torch.library.opcheck(torch.ops.genfast.wavenet_step.default, args)


def _ok_case():
    return random_case(700, "cpu", torch.float32)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("change,error,match", [
    (lambda c: c.update(samples=c["samples"].float()), TypeError, "samples must be int64"),
    (lambda c: c.update(samples=c["samples"][0]), ValueError, "samples must be a non-empty"),
    (lambda c: c.update(uniforms=c["uniforms"].float()), TypeError, "uniforms must be float64"),
    (lambda c: c.update(uniforms=c["uniforms"][:-1]), ValueError, "uniforms must have shape"),
    (lambda c: c.update(cache=c["cache"].half()), TypeError, "cache must be float32 or float64"),
    (lambda c: c.update(cache=c["cache"][:, 1:]), ValueError, "cache must have shape"),
    (lambda c: c.update(cache=c["cache"].to("meta")), ValueError, "is on cpu but cache is on meta"),
    (lambda c: c.update(step=-1), ValueError, "step must be an int in"),
    (lambda c: c.update(step=c["samples"].shape[1]), ValueError, "step must be an int in"),
    (lambda c: c.update(known=c["samples"].shape[1] + 1), ValueError, "known_steps"),
    (lambda c: c.update(temperature=0.0), ValueError, "temperature"),
    (lambda c: c.update(temperature=math.nan), ValueError, "temperature"),
    (lambda c: c.update(weights=c["weights"]._replace(dilations=())), ValueError, "dilations"),
    (lambda c: c.update(weights=c["weights"]._replace(dilations=(0,) * len(c["weights"].dilations))),
     ValueError, "dilations"),
    (lambda c: c.update(weights=c["weights"]._replace(head_bias2=c["weights"].head_bias2[1:])),
     ValueError, "head_bias2 must have shape"),
    (lambda c: c.update(weights=c["weights"]._replace(gate_bias=c["weights"].gate_bias.double())),
     TypeError, "gate_bias must have cache's dtype"),
    (lambda c: c.update(weights=c["weights"]._replace(out_weight=c["weights"].out_weight[:, :, :1])),
     ValueError, "out_weight must be"),
    (lambda c: c.update(weights=(1, 2)), TypeError, "WaveNetWeights"),
])
def test_bad_input(impl, change, error, match):
    weights, cache, samples, uniforms, known = _ok_case()
    case = dict(weights=weights, cache=cache, samples=samples, uniforms=uniforms, step=0, known=known,
                temperature=1.0)
    change(case)
    with pytest.raises(error, match=match):
        wavenet_step(case["samples"], case["cache"], case["uniforms"], case["step"], case["known"],
                     case["temperature"], case["weights"], impl=impl)


@requires_ext
def test_bad_input_reaching_the_kernel():
    # Direct op calls (as from C++) are checked in the kernel too, with the wrappers'
    # exception types.
    weights, cache, samples, uniforms, _ = _ok_case()
    w = weights

    def call(samples=samples, cache=cache, uniforms=uniforms, step=1, dilations=list(w.dilations),
             gate_bias=w.gate_bias, temperature=1.0, tensors=None):
        tensors = w._replace(gate_bias=gate_bias).tensors() if tensors is None else tensors
        return torch.ops.genfast.wavenet_step(samples, cache, uniforms, step, 0, temperature, tensors, dilations)

    with pytest.raises(ValueError, match="cache must have .* slots"):
        call(dilations=[d + 1 for d in w.dilations])
    with pytest.raises(ValueError, match="step must lie in"):
        call(step=samples.shape[1])
    with pytest.raises(ValueError, match="gate_bias must have shape"):
        call(gate_bias=w.gate_bias[:, :, 1:])
    with pytest.raises(ValueError, match="temperature"):
        call(temperature=-1.0)
    with pytest.raises(TypeError, match="uniforms must be float64"):
        call(uniforms=uniforms.float())
    with pytest.raises(ValueError, match="weights must hold 10 tensors"):
        call(tensors=w.tensors()[:-1])
    bad = samples.clone()
    bad[:, 0] = w.levels  # the input of step 1
    with pytest.raises(ValueError, match=r"samples\[0, 0\] = .* is not a level"):
        call(samples=bad)


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
def test_the_wrapper_validates_samples(impl):
    # The samples a step reads are user data (a prefix): a ValueError naming the first bad one.
    weights, cache, samples, uniforms, _ = _ok_case()
    bad = samples.clone()
    bad[1 % bad.shape[0], 0] = -2
    with pytest.raises(ValueError, match=r"samples\[\d+, 0\] = -2 is not a level"):
        wavenet_step(bad, cache.clone(), uniforms, 1, 0, 1.0, weights, impl=impl)
    with pytest.raises(ValueError, match=r"samples\[\d+, 0\] = -2 is not a level"):
        wavenet_stepper(bad, cache.clone(), uniforms, 0, 1.0, weights, impl=impl)


@pytest.mark.parametrize("device", DEVICES)
def test_invalid_samples_raise_and_unchecked_ones_add_nothing(device):
    # Never a device assert: a ValueError from the op's host check, after which the CUDA
    # context keeps working; with check_levels=False an out-of-range sample adds nothing
    # to the input layer, like a failed draw's -1.
    weights, cache, samples, uniforms, _ = random_case(710, device)
    k_in = weights.input_weight.shape[0]
    step = samples.shape[1] - 1
    bad = samples.clone()
    bad[:, step - 1] = weights.levels + 5
    with pytest.raises(ValueError, match=rf"samples\[0, {step - 1}\] = .* is not a level"):
        torch.ops.genfast.wavenet_step(bad, cache.clone(), uniforms, step, 0, 1.0, weights.tensors(),
                                       list(weights.dilations))
    minus_one = samples.clone()
    minus_one[:, step - 1] = -1
    got = wavenet_step(bad, cache.clone(), uniforms, step, step + 1, 1.0, weights, impl="ext",
                       check_levels=False)
    want = wavenet_step(minus_one, cache.clone(), uniforms, step, step + 1, 1.0, weights, impl="ext")
    assert k_in >= 1
    torch.testing.assert_close(got, want)
