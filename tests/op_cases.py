"""Per-op random cases for the common op contract (tests/test_op_contract.py): for each
op registered in genfast.ops, CASES[name](seed, device, dtype) returns a Case whose
run(impl) calls the public wrapper genfast.ops.<name>(..., impl=impl) on fresh random
inputs and returns its outputs as a tuple. The input makers are those of the op's own
test file, so both test the same distribution of shapes and values."""
import dataclasses
from typing import Callable

import torch
import test_code_statistics
import test_concat_elu
import test_dmol
import test_gated_activation
import test_gated_pixelcnn_row
import test_gradient_penalty
import test_masked_conv2d
import test_nearest_code
import test_pixelcnn_row
import test_pixelcnnpp_row
import test_softmax_cross_entropy
import test_transformer_decode_step
import test_wavenet_step

from genfast import ops


@dataclasses.dataclass
class Case:
    run: Callable[[str], tuple]  # run(impl) -> the wrapper's outputs, as a tuple
    rtol: float  # for float outputs and, when differentiable, for the gradients
    atol: float
    exact: tuple[int, ...] = ()  # indices of outputs that must equal the reference's exactly
    grad_inputs: tuple[torch.Tensor, ...] = ()  # non-empty: the float outputs' sum backpropagates to these


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def masked_conv2d(seed, device, dtype):
    x, w, b, kwargs = test_masked_conv2d.random_case(seed, device, dtype)
    # live_tap: the compiled kernel (the other algorithms are PyTorch's own convolutions).
    return Case(lambda impl: (ops.masked_conv2d(x, w, b, impl=impl, algorithm="live_tap", **kwargs),),
                rtol=1e-10, atol=1e-10, grad_inputs=tuple(t for t in (x, w, b) if t is not None))


def gradient_penalty(seed, device, dtype):
    weight, center, one_sided = test_gradient_penalty.SETTINGS[seed % len(test_gradient_penalty.SETTINGS)]
    g = test_gradient_penalty.random_grad(seed, device, dtype)
    return Case(lambda impl: ops.gradient_penalty(g, weight=weight, center=center, one_sided=one_sided,
                                                  return_norms=True, impl=impl),
                rtol=1e-10, atol=1e-12, grad_inputs=(g,))


def gradient_penalty_interpolate(seed, device, dtype):
    g = test_gradient_penalty.random_grad(seed, device, dtype)
    real, fake = g.detach().clone().requires_grad_(), torch.randn_like(g).requires_grad_()
    eps = torch.rand(g.shape[0], dtype=g.dtype, device=device, requires_grad=True)
    return Case(lambda impl: (ops.gradient_penalty_interpolate(real, fake, eps, impl=impl),),
                rtol=1e-12, atol=1e-12, grad_inputs=(real, fake, eps))


def nearest_code(seed, device, dtype):
    x, codes = test_nearest_code.random_case(seed, device, dtype, scale=[1.0, 1e-3, 50.0][seed % 3])
    return Case(lambda impl: ops.nearest_code(x, codes, cosine=bool(seed % 2), impl=impl),
                rtol=0, atol=0, exact=(0, 1))


def code_statistics(seed, device, dtype):
    x, indices, k = test_code_statistics.random_case(seed, device, dtype)
    return Case(lambda impl: ops.code_statistics(x, indices, k, impl=impl), rtol=1e-14, atol=1e-6, exact=(0,))


def wavenet_step(seed, device, dtype):
    weights, cache, samples, uniforms, known = test_wavenet_step.random_case(seed, device, dtype)
    steps = range(samples.shape[1])
    # (logits, cache, samples) after all steps; the op updates cache and samples in place.
    return Case(lambda impl: test_wavenet_step.run_steps(weights, cache, samples, uniforms, known, impl, steps),
                rtol=1e-12, atol=1e-12, exact=(2,))


def gated_pixelcnn_row(seed, device, dtype):
    args = test_gated_pixelcnn_row.random_row_case(seed, device, dtype)
    return Case(lambda impl: ops.gated_pixelcnn_row(*_clone(args), impl=impl), rtol=1e-10, atol=1e-10, exact=(0,))


def pixelcnn_row(seed, device, dtype):
    args = test_pixelcnn_row.random_row(seed, device, dtype)
    return Case(lambda impl: ops.pixelcnn_row(*_clone(args), impl=impl), rtol=1e-12, atol=1e-12, exact=(0,))


def pixelcnnpp_row(seed, device, dtype):
    args = test_pixelcnnpp_row.random_row(seed, device, dtype)

    def run(impl):  # (values, params, the three states): the op updates the states in place
        states, *rest = test_pixelcnnpp_row._clone(args)
        return (*ops.pixelcnnpp_row(states, *rest, impl=impl), *states)

    return Case(run, rtol=1e-9, atol=1e-9, exact=(0,))


def transformer_decode_step(seed, device, dtype):
    tokens, keys, values, uniforms, step, weights, kwargs = test_transformer_decode_step.random_step_case(
        seed, device, dtype)
    return Case(lambda impl: ops.transformer_decode_step(tokens, keys.clone(), values.clone(), uniforms, step,
                                                         weights, impl=impl, **kwargs),
                rtol=1e-12, atol=1e-12, exact=(0,))


def dmol_loss(seed, device, dtype):
    channels, m, levels = test_dmol.CASES[seed % len(test_dmol.CASES)]
    params = test_dmol.random_params(seed, 3, channels, m, 5, 7, dtype=dtype, device=device).requires_grad_()
    x = test_dmol.random_images(seed, 3, channels, 5, 7, levels, device=device)
    return Case(lambda impl: (ops.dmol_loss(params, x, num_mixtures=m, levels=levels, reduction="none", impl=impl),),
                rtol=1e-8, atol=1e-10, grad_inputs=(params,))


def dmol_sample(seed, device, dtype):
    channels, m, levels = test_dmol.CASES[seed % len(test_dmol.CASES)]
    params = test_dmol.random_params(seed, 4, channels, m, 6, 5, dtype=dtype, device=device)
    u = torch.rand(4, channels + 1, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    u = u.to(device)
    temperature = (1.0, 0.6, 1.7)[seed % 3]
    return Case(lambda impl: (ops.dmol_sample(params, u, num_mixtures=m, levels=levels, temperature=temperature,
                                              impl=impl),), rtol=0, atol=0, exact=(0,))


def gated_activation(seed, device, dtype):
    x, groups = test_gated_activation.random_input(seed, device, dtype)
    return Case(lambda impl: (ops.gated_activation(x, groups, impl=impl),), rtol=1e-12, atol=1e-13,
                grad_inputs=(x,))


def softmax_cross_entropy(seed, device, dtype):
    logits, target = test_softmax_cross_entropy.random_case(seed, device, dtype)
    reduction = ("mean", "sum", "none")[seed % 3]
    return Case(lambda impl: (ops.softmax_cross_entropy(logits, target, reduction, impl=impl),),
                rtol=1e-11, atol=1e-13, grad_inputs=(logits,))


def concat_elu(seed, device, dtype):
    x, dim = test_concat_elu.random_input(seed, device, dtype)
    return Case(lambda impl: (ops.concat_elu(x, dim, impl=impl),), rtol=1e-14, atol=1e-15, grad_inputs=(x,))


# One input maker per registered op (test_op_contract checks that none is missing).
CASES = {name: globals()[name] for name in ops.OPS if name in globals()}
