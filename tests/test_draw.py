"""The inverse-CDF draw shared by the sampling kernels (csrc/sampling_math.h): the
compiled kernels draw exactly what genfast.ops._draw.exact_draw (their arithmetic in
Python) says, also for uniforms placed at and next to the CDF steps; exact_draw follows
inverse_cdf's rule and agrees with it away from the steps; the GPU draws bit-identically
to the CPU."""
import math
import random

import pytest
import torch
from conftest import requires_cuda, requires_ext

from genfast.ops import WaveNetWeights, wavenet_step
from genfast.ops._draw import draw_exp, exact_cdf, exact_draw, inverse_cdf


def kernel_draws(logits, uniforms, temperature, device):
    """The compiled kernels' draws of one row of logits (levels,) with each of the
    uniforms (n,): a one-layer WaveNet whose logits are exactly head_bias2."""
    levels, n = len(logits), len(uniforms)
    f64 = dict(dtype=torch.float64, device=device)
    ones = lambda *shape: torch.ones(shape, **f64)  # noqa: E731
    weights = WaveNetWeights(
        input_weight=ones(1, levels, 1), input_bias=ones(1), dilated_weight=ones(1, 1, 2),
        gate_bias=ones(1, 1, 2), out_weight=ones(1, 1, 2), out_bias=ones(1, 2), head_weight1=ones(1, 1),
        head_bias1=ones(1), head_weight2=torch.zeros(1, levels, **f64),
        head_bias2=torch.tensor(logits, **f64), dilations=(1,))
    samples = torch.zeros(n, 1, dtype=torch.long, device=device)
    u = torch.tensor(uniforms, **f64).unsqueeze(0)
    got = wavenet_step(samples, weights.new_cache(n), u, 0, 0, temperature, weights, impl="ext")
    torch.testing.assert_close(got[0].cpu(), torch.tensor(logits, dtype=torch.float64), rtol=0, atol=0,
                               equal_nan=True)
    return samples[:, 0].tolist()


def adversarial_case(seed):
    """Random logits and a temperature, with uniforms at, and a few ulps around, every
    CDF step (u * total hits the step exactly where such a u exists), plus random ones."""
    rng = random.Random(seed)
    levels = rng.choice([2, 3, 17, 256, 300])
    scale = rng.choice([0.1, 3.0, 40.0])
    logits = [rng.gauss(0.0, scale) for _ in range(levels)]
    if seed % 3 == 0:
        logits[rng.randrange(levels)] = logits[0]  # ties
    temperature = rng.choice([1.0, 0.7, 1.3])
    cdf = exact_cdf(logits, temperature)
    total = cdf[-1]
    uniforms = [0.0, math.nextafter(1.0, 0.0)] + [rng.random() for _ in range(20)]
    for k in rng.sample(range(levels), min(levels, 40)):
        u = cdf[k] / total
        for _ in range(3):
            u = math.nextafter(u, 0.0)
        for _ in range(7):
            if 0.0 <= u < 1.0:
                uniforms.append(u)
            u = math.nextafter(u, 1.0)
    return logits, temperature, cdf, uniforms


def test_draw_exp_is_exp_within_one_ulp():
    rng = random.Random(0)
    for x in [0.0, -0.0, -1e-300, -0.5, -1.0, -699.9] + [-rng.random() * rng.choice([1, 30, 700]) for _ in range(3000)]:
        assert abs(draw_exp(x) - math.exp(x)) <= math.ulp(math.exp(x)), x
    assert draw_exp(-700.5) == 0.0  # below 1e-304 of the maximum's weight: nothing


@pytest.mark.parametrize("seed", range(12))
def test_exact_draw_follows_the_rule_and_agrees_with_inverse_cdf_away_from_steps(seed):
    logits, temperature, cdf, uniforms = adversarial_case(seed)
    total = cdf[-1]
    hits = 0
    for u in uniforms:
        level = exact_draw(logits, u, temperature, cdf)
        # The rule: the number of running sums <= u * total, clamped to levels - 1.
        assert level == min(sum(c <= u * total for c in cdf), len(cdf) - 1)
        for k, c in enumerate(cdf[:-1]):
            if c == u * total:  # exactly at a step: that level is already passed
                assert level > k
                hits += 1
        # inverse_cdf (torch.exp) agrees unless u is within a few ulps of a step.
        near = any(abs(u * total - c) <= 1e-12 * total for c in cdf)
        if not near:
            got = inverse_cdf(torch.tensor([logits], dtype=torch.float64),
                              torch.tensor([u], dtype=torch.float64), temperature)
            assert got.item() == level, u
    assert hits > 0 or len(cdf) <= 3  # the cases do hit steps exactly


@requires_ext
@pytest.mark.parametrize("seed", range(12))
def test_cpu_kernel_draws_exactly_the_shared_draw(seed):
    logits, temperature, cdf, uniforms = adversarial_case(seed)
    want = [exact_draw(logits, u, temperature, cdf) for u in uniforms]
    assert kernel_draws(logits, uniforms, temperature, "cpu") == want


@requires_ext
def test_non_finite_logits_draw_minus_one():
    for bad in (math.inf, -math.inf, math.nan):
        logits = [0.0, 1.0, bad, 2.0]
        assert exact_draw(logits, 0.5) == -1
        assert kernel_draws(logits, [0.0, 0.5], 1.0, "cpu") == [-1, -1]


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("seed", range(12))
def test_gpu_draws_are_bit_identical_to_cpu_draws(seed):
    logits, temperature, cdf, uniforms = adversarial_case(seed)
    cpu = kernel_draws(logits, uniforms, temperature, "cpu")
    assert kernel_draws(logits, uniforms, temperature, "cuda") == cpu
    assert cpu == [exact_draw(logits, u, temperature, cdf) for u in uniforms]
