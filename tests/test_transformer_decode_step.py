"""genfast.ops.transformer_decode_step: the compiled kernels against the reference twin
in float64 (every step of a sequence, caches included, top-k / top-p draws), the C++
draw against the documented rule, poisoned outputs, bad input in Python and through
direct torch.ops calls, opcheck and torch.compile. (The registry contract, with
tests/op_cases.py, runs the shared checks too.)"""
import pytest
import torch
from conftest import DEVICES, requires_ext
from test_code_transformer import random_model

from genfast import ops
from genfast.ops.transformer_decode_step import TransformerWeights

# (batch, num_classes, prefix_length, top_k, top_p, temperature)
SETTINGS = [(3, None, 0, 0, 1.0, 1.0), (5, 3, 2, 4, 1.0, 0.8), (1, None, 3, 0, 0.7, 1.2), (6, 2, 0, 3, 0.9, 1.0),
            (9, None, 0, 1, 1.0, 1.0)]


def random_step_case(seed, device, dtype, *, step=None):
    """(tokens, key_cache, value_cache, uniforms, step, weights, kwargs) of one decode step
    with caches filled with random values up to the step, for a small random model."""
    batch, num_classes, prefix_length, top_k, top_p, temperature = SETTINGS[seed % len(SETTINGS)]
    model = random_model(seed, num_classes=num_classes, prefix_length=prefix_length, dtype=dtype,
                         levels=13, width=24, heads=3, layers=2, mlp=40)
    weights = model.pack_weights(dtype, device)
    g = torch.Generator().manual_seed(seed)
    keys, values = (c.normal_(generator=g) for c in model.new_cache(batch, dtype, "cpu"))
    step = (seed * 5 + 3) % model.positions if step is None else step
    tokens = torch.randint(0, model.vocabulary, (batch,), generator=g)
    uniforms = torch.rand(batch, generator=g, dtype=torch.float64)
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    return (tokens.to(device), keys.to(device), values.to(device), uniforms.to(device), step, weights, kwargs)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(10))
def test_matches_reference_float64(seed, device):
    tokens, keys, values, uniforms, step, weights, kwargs = random_step_case(seed, device, torch.float64)
    ref_keys, ref_values = keys.clone(), values.clone()
    got = ops.transformer_decode_step(tokens, keys, values, uniforms, step, weights, impl="ext", **kwargs)
    want = ops.transformer_decode_step(tokens, ref_keys, ref_values, uniforms, step, weights, impl="reference",
                                       **kwargs)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(keys, ref_keys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values, ref_values, rtol=1e-12, atol=1e-12)
    assert not torch.equal(keys[:, :, :, step], random_step_case(seed, device, torch.float64)[1][:, :, :, step])
    # only position `step` of the caches is written
    before = random_step_case(seed, device, torch.float64)[1]
    others = [t for t in range(keys.shape[3]) if t != step]
    assert torch.equal(keys[:, :, :, others], before[:, :, :, others])


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
def test_float32_close_to_reference(device):
    tokens, keys, values, uniforms, step, weights, kwargs = random_step_case(2, device, torch.float32)
    got = ops.transformer_decode_step(tokens, keys.clone(), values.clone(), uniforms, step, weights, impl="ext")
    want = ops.transformer_decode_step(tokens, keys.clone(), values.clone(), uniforms, step, weights,
                                       impl="reference")
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("width,heads", [(24, 3), (32, 2), (48, 2), (96, 3), (80, 1), (64, 4)])
def test_float32_head_dims_and_lengths(device, width, heads):
    """The float32 kernels (on AVX-512 CPUs: attention 16 positions at a time, 64 value
    columns per register block, a polynomial erf in GELU) over head dims 8..80 (partial
    vectors and more than one column block) and lengths around multiples of 16, against
    the reference evaluated in float64 on the same float32 inputs."""
    model = random_model(7, dtype=torch.float32, levels=9, image_size=(6, 7), width=width, heads=heads,
                         layers=2, mlp=2 * width, scale=0.6)
    weights = model.pack_weights(torch.float32, device)
    g = torch.Generator().manual_seed(width + heads)
    batch = 3
    keys, values = (3 * c.normal_(generator=g) for c in model.new_cache(batch, torch.float32, "cpu"))
    tokens = torch.randint(0, model.vocabulary, (batch,), generator=g).to(device)
    uniforms = torch.rand(batch, generator=g, dtype=torch.float64).to(device)
    weights64 = TransformerWeights(*(w.double() for w in weights))
    for step in (0, 1, 15, 16, 17, 33, model.positions - 1):
        got = ops.transformer_decode_step(tokens, keys.to(device), values.to(device), uniforms, step, weights,
                                          impl="ext")[1]
        want = ops.transformer_decode_step(tokens, keys.double().to(device), values.double().to(device), uniforms,
                                           step, weights64, impl="reference")[1]
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@requires_ext
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (2, 1.0), (0, 0.5), (5, 0.8), (1, 0.3), (40, 0.99)])
def test_kernel_draw_follows_the_rule(top_k, top_p):
    """Many draws of one step, with ties: the kernel's values equal filtered_draw's."""
    tokens, keys, values, _, step, weights, _ = random_step_case(0, "cpu", torch.float64)
    w = weights._replace(head_weight=weights.head_weight.clone(), head_bias=weights.head_bias.clone())
    w.head_weight[:, 4] = w.head_weight[:, 7]  # a tie between levels 4 and 7
    w.head_bias[4] = w.head_bias[7]
    for trial in range(40):
        u = torch.rand(tokens.shape[0], generator=torch.Generator().manual_seed(trial), dtype=torch.float64)
        got, logits = ops.transformer_decode_step(tokens, keys.clone(), values.clone(), u, step, w, impl="ext",
                                                  top_k=top_k, top_p=top_p)
        assert torch.equal(got, ops.draw_from_logits(logits, u) if (top_k, top_p) == (0, 1.0)
                           else __import__("genfast.ops._draw", fromlist=["x"]).filtered_draw(logits, u, 1.0,
                                                                                              top_k, top_p))


@requires_ext
def test_non_finite_logits_and_out_of_range_tokens():
    tokens, keys, values, uniforms, step, weights, kwargs = random_step_case(0, "cpu", torch.float64)
    bad = weights._replace(head_bias=weights.head_bias.clone())
    bad.head_bias[3] = float("nan")
    got, _ = ops.transformer_decode_step(tokens, keys, values, uniforms, step, bad, impl="ext", **kwargs)
    assert (got == -1).all()
    tokens = tokens.clone()
    tokens[0] = -1  # a failed draw fed back: a zero embedding
    for impl in ("ext", "reference"):
        with pytest.raises(ValueError, match="tokens"):
            ops.transformer_decode_step(tokens, keys.clone(), values.clone(), uniforms, step, weights, impl=impl)
    got = ops.transformer_decode_step(tokens, keys.clone(), values.clone(), uniforms, step, weights, impl="ext",
                                      check_levels=False)
    want = ops.transformer_decode_step(tokens, keys.clone(), values.clone(), uniforms, step, weights,
                                       impl="reference", check_levels=False)
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


@requires_ext
def test_outputs_are_written(poisoned_allocations):
    tokens, keys, values, uniforms, step, weights, kwargs = random_step_case(1, "cpu", torch.float64)
    drawn, logits = ops.transformer_decode_step(tokens, keys, values, uniforms, step, weights, impl="ext", **kwargs)
    assert torch.isfinite(logits).all() and (drawn >= 0).all() and (drawn < logits.shape[1]).all()


BAD_ARGUMENTS = [
    (lambda a: a.update(tokens=a["tokens"].float()), TypeError, "tokens must be int64"),
    (lambda a: a.update(uniforms=a["uniforms"].float()), TypeError, "uniforms must be float64"),
    (lambda a: a.update(uniforms=a["uniforms"][:-1]), ValueError, "uniforms must have shape"),
    (lambda a: a.update(key_cache=a["key_cache"][:, :, :, :, :-1]), ValueError, "value_cache"),
    (lambda a: a.update(value_cache=a["value_cache"].float()), TypeError, "value_cache"),
    (lambda a: a.update(key_cache=a["key_cache"].transpose(3, 4).contiguous().transpose(3, 4),
                        value_cache=a["value_cache"].transpose(3, 4).contiguous().transpose(3, 4)),
     ValueError, "contiguous"),
    (lambda a: a.update(step=-1), ValueError, "step"),
    (lambda a: a.update(step=10 ** 6), ValueError, "step"),
    (lambda a: a.update(temperature=0.0), ValueError, "temperature"),
    (lambda a: a.update(top_k=-2), ValueError, "top_k"),
    (lambda a: a.update(top_p=0.0), ValueError, "top_p"),
    (lambda a: a.update(top_p=1.5), ValueError, "top_p"),
    (lambda a: a.update(weights=a["weights"]._replace(qkv_weight=a["weights"].qkv_weight[:, :, :-1])),
     ValueError, "qkv_weight must have shape"),
    (lambda a: a.update(weights=a["weights"]._replace(head_bias=a["weights"].head_bias.float())),
     TypeError, "head_bias"),
    (lambda a: a.update(weights=a["weights"]._replace(position_embedding=a["weights"].position_embedding[:2])),
     ValueError, "position_embedding"),
]


def _arguments():
    tokens, keys, values, uniforms, step, weights, kwargs = random_step_case(1, "cpu", torch.float64)
    return dict(tokens=tokens, key_cache=keys, value_cache=values, uniforms=uniforms, step=step, weights=weights,
                temperature=kwargs["temperature"], top_k=kwargs["top_k"], top_p=kwargs["top_p"])


@pytest.mark.parametrize("impl", ["reference", pytest.param("ext", marks=requires_ext)])
@pytest.mark.parametrize("index", range(len(BAD_ARGUMENTS)))
def test_bad_arguments_python(index, impl):
    change, error, match = BAD_ARGUMENTS[index]
    a = _arguments()
    change(a)
    with pytest.raises(error, match=match):
        ops.transformer_decode_step(a.pop("tokens"), a.pop("key_cache"), a.pop("value_cache"), a.pop("uniforms"),
                                    a.pop("step"), a.pop("weights"), impl=impl, **a)


@requires_ext
@pytest.mark.parametrize("index", range(len(BAD_ARGUMENTS)))
def test_bad_arguments_direct_torch_ops(index):
    """The C++ op raises the same errors when called directly (no Python checks)."""
    change, error, match = BAD_ARGUMENTS[index]
    a = _arguments()
    change(a)
    with pytest.raises(error, match=match):
        torch.ops.genfast.transformer_decode_step(a["tokens"], a["key_cache"], a["value_cache"], a["uniforms"],
                                                  a["step"], float(a["temperature"]), a["top_k"], float(a["top_p"]),
                                                  list(a["weights"]), True)


@requires_ext
def test_wrong_number_of_weights_direct():
    a = _arguments()
    with pytest.raises(ValueError, match="weights must hold 18 tensors"):
        torch.ops.genfast.transformer_decode_step(a["tokens"], a["key_cache"], a["value_cache"], a["uniforms"],
                                                  a["step"], 1.0, 0, 1.0, list(a["weights"])[:-1], True)
    assert TransformerWeights._fields[0] == "token_embedding" and len(TransformerWeights._fields) == 18


@requires_ext
def test_opcheck():
    tokens, keys, values, uniforms, step, weights, kwargs = random_step_case(3, "cpu", torch.float64)
    torch.library.opcheck(torch.ops.genfast.transformer_decode_step,
                          (tokens, keys, values, uniforms, step, kwargs["temperature"], kwargs["top_k"],
                           float(kwargs["top_p"]), list(weights), True))


@requires_ext
def test_torch_compile():
    tokens, keys, values, uniforms, step, weights, kwargs = random_step_case(4, "cpu", torch.float64)
    ref_keys, ref_values = keys.clone(), values.clone()

    def run(tokens, keys, values, uniforms):
        return ops.transformer_decode_step(tokens, keys, values, uniforms, step, weights, impl="ext",
                                           check_levels=False, **kwargs)

    got = torch.compile(run, fullgraph=True)(tokens, keys, values, uniforms)
    want = run(tokens, ref_keys, ref_values, uniforms)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(keys, ref_keys)
