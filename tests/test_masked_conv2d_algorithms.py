"""masked_conv2d's algorithms (live_tap, decomposed, dense), each phase chosen
separately, and the autotuner that picks them: every algorithm against the reference
in float64 (output and all three gradients), the override on op and layer, the cache
(in-process and file), deterministic mode, GENFAST_AUTOTUNE=0, failing candidates,
torch.compile and the listing in backend_info / `python -m genfast info`.

The decomposed and dense algorithms are PyTorch code that is the same on CUDA (run
by cuDNN there), so these CPU tests check the CUDA path's arithmetic too."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import HAS_EXT, requires_ext
from test_masked_conv2d import grads, random_case

import genfast
from genfast import _backend
from genfast.nn import MaskedConv2d
from genfast.ops import _autotune, masked_conv2d, masked_conv2d_reference

mc = sys.modules["genfast.ops.masked_conv2d"]

ALGOS = [pytest.param("live_tap", marks=requires_ext), "decomposed", "dense",
         pytest.param(("decomposed", "live_tap", "dense"), marks=requires_ext, id="mixed1"),
         pytest.param(("live_tap", "dense", "decomposed"), marks=requires_ext, id="mixed2"),
         pytest.param(("dense", "decomposed", "decomposed"), id="mixed3")]
EXACT = dict(rtol=1e-10, atol=1e-10)


@pytest.fixture(autouse=True)
def fresh_autotuner(monkeypatch):
    """Each test starts with an empty in-process cache and no cache file."""
    monkeypatch.setattr(_autotune, "CACHE_PATH", None)
    monkeypatch.setattr(_autotune, "ENABLED", True)
    _autotune.clear()
    yield
    _autotune.clear()


def check_against_reference(x, w, b, kwargs, algorithm, seed):
    out = masked_conv2d(x, w, b, algorithm=algorithm, **kwargs)
    ref = masked_conv2d_reference(x, w, b, **kwargs)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, **EXACT)
    for got, want in zip(grads(out, (x, w, b), seed), grads(ref, (x, w, b), seed)):
        torch.testing.assert_close(got, want, **EXACT)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("seed", range(20))
def test_every_algorithm_matches_reference(algorithm, seed):
    # random_case: colour groups 1/3, masks A/B, rectangular kernels 1..11, dilation 1..3.
    x, w, b, kwargs = random_case(seed, "cpu")
    check_against_reference(x, w, b, kwargs, algorithm, seed)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("kernel,mask_type,color_groups,dilation", [
    ((1, 1), "A", 1, 1),   # no live tap at all: the bias alone
    ((1, 1), "B", 1, 1),
    ((1, 1), "A", 3, 1),   # colour-masked 1x1
    ((1, 1), "B", 3, 2),
    ((1, 5), "A", 1, 2),   # a centre row only
    ((5, 1), "A", 1, 3),   # rows above only (no tap left of the centre)
    ((3, 7), "B", 3, (2, 1)),
    ((7, 3), "A", 3, (1, 3)),
    ((11, 11), "B", 1, 1),  # larger than the image
])
def test_edge_kernels(algorithm, kernel, mask_type, color_groups, dilation):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 5, 7, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(9, 6, *kernel, generator=gen, dtype=torch.float64).requires_grad_()
    b = torch.randn(9, generator=gen, dtype=torch.float64).requires_grad_()
    kwargs = dict(mask_type=mask_type, color_groups=color_groups, dilation=dilation)
    check_against_reference(x, w, b, kwargs, algorithm, 3)
    check_against_reference(x, w, None, kwargs, algorithm, 4)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize("seed", range(4))
def test_channels_last(algorithm, seed):
    x, w, b, kwargs = random_case(700 + seed, "cpu")
    x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    check_against_reference(x, w, b, kwargs, algorithm, seed)


@pytest.mark.parametrize("algorithm", ["decomposed", "dense", pytest.param("live_tap", marks=requires_ext)])
def test_only_some_gradients(algorithm):
    # Input without grad, or weight without grad: only the needed phases run.
    x, w, b, kwargs = random_case(11, "cpu")
    ref_out = masked_conv2d_reference(x, w, b, **kwargs)
    for needs in [(False, True), (True, False)]:
        xx, ww = x.detach().requires_grad_(needs[0]), w.detach().requires_grad_(needs[1])
        out = masked_conv2d(xx, ww, b, algorithm=algorithm, **kwargs)
        live = [t for t in (xx, ww, b) if t is not None and t.requires_grad]
        ref = masked_conv2d_reference(xx, ww, b, **kwargs)
        g = torch.randn_like(out)
        for got, want in zip(torch.autograd.grad(out, live, g), torch.autograd.grad(ref, live, g)):
            torch.testing.assert_close(got, want, **EXACT)
    with torch.no_grad():
        torch.testing.assert_close(masked_conv2d(x, w, b, algorithm=algorithm, **kwargs), ref_out, **EXACT)


@pytest.mark.parametrize("algorithm", ["decomposed", "dense", pytest.param("live_tap", marks=requires_ext)])
def test_float32_and_autocast_keep_the_dtype(algorithm):
    x, w, b, kwargs = random_case(12, "cpu", torch.float32)
    ref = masked_conv2d_reference(x, w, b, **kwargs)
    torch.testing.assert_close(masked_conv2d(x, w, b, algorithm=algorithm, **kwargs), ref,
                               rtol=1e-4, atol=1e-4)
    # Whichever algorithm runs, the result is in the inputs' dtype under autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_conv2d(x, w, b, algorithm=algorithm, **kwargs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@requires_ext
def test_gradcheck_mixed_algorithms():
    x, w, b, kwargs = random_case(401, "cpu")
    x, w = x[:1, :, :5, :6].detach().requires_grad_(), w.detach().requires_grad_()
    for algorithm in [("decomposed", "live_tap", "dense"), ("dense", "decomposed", "live_tap")]:
        fn = lambda x, w, b: masked_conv2d(x, w, b, algorithm=algorithm, **kwargs)
        assert torch.autograd.gradcheck(fn, (x, w, b))


# ---------------------------------------------------------------- which algorithm runs
@pytest.fixture
def spy(monkeypatch):
    """Records (phase, algorithm) of every algorithm call made by the op (timing included)."""
    calls = []
    for name, phase in (("_forward", "forward"), ("_grad_input", "grad_input"), ("_grad_weight", "grad_weight")):
        original = getattr(mc, name)

        def wrapper(algorithm, *args, _original=original, _phase=phase):
            calls.append((_phase, algorithm))
            return _original(algorithm, *args)
        monkeypatch.setattr(mc, name, wrapper)
    original_op = mc._kernel_op

    def kernel_op(input, weight, *args):  # live_tap in every phase, through the op's autograd
        calls.append(("forward", "live_tap"))
        if torch.is_grad_enabled():
            calls.extend((p, "live_tap") for p, t in (("grad_input", input), ("grad_weight", weight))
                         if t.requires_grad)
        return original_op(input, weight, *args)
    monkeypatch.setattr(mc, "_kernel_op", kernel_op)
    return calls


def _layer_input(seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 6, 8, 8, generator=gen).requires_grad_(requires_grad)


@pytest.mark.parametrize("algorithm", ["decomposed", "dense"])
def test_override_on_op_and_layer(spy, algorithm):
    x = _layer_input()
    w = torch.randn(6, 6, 5, 5, requires_grad=True)
    out = masked_conv2d(x, w, algorithm=algorithm)
    out.sum().backward()
    assert set(spy) == {("forward", algorithm), ("grad_input", algorithm), ("grad_weight", algorithm)}
    assert not _autotune.choices()  # no timing for an explicit choice
    spy.clear()
    layer = MaskedConv2d(6, 6, 5, mask_type="A", algorithm=algorithm)
    layer(x).sum().backward()
    assert set(spy) == {("forward", algorithm), ("grad_input", algorithm), ("grad_weight", algorithm)}
    spy.clear()
    layer.algorithm = ("dense", "decomposed", "dense")
    layer(x).sum().backward()
    assert spy == [("forward", "dense"), ("grad_input", "decomposed"), ("grad_weight", "dense")] or \
        set(spy) == {("forward", "dense"), ("grad_input", "decomposed"), ("grad_weight", "dense")}


@requires_ext
def test_override_live_tap_runs_the_kernel(spy):
    with torch.no_grad():
        masked_conv2d(_layer_input(), torch.randn(6, 6, 3, 3), algorithm="live_tap")
    assert spy == [("forward", "live_tap")]


@pytest.mark.parametrize("bad", ["fast", "Dense", "", ("dense", "dense"), ("dense", "dense", "gpu"), 3, None])
def test_bad_algorithm_names(bad):
    x, w = _layer_input(), torch.randn(6, 6, 3, 3)
    with pytest.raises(ValueError, match="algorithm must be"):
        masked_conv2d(x, w, algorithm=bad)
    with pytest.raises(ValueError, match="algorithm must be"):
        MaskedConv2d(6, 6, 3, algorithm=bad)


def test_reference_impl_ignores_algorithm(spy):
    x, w = _layer_input(), torch.randn(6, 6, 3, 3)
    out = masked_conv2d(x, w, impl="reference", algorithm="decomposed")
    torch.testing.assert_close(out, masked_conv2d_reference(x, w))
    assert spy == []


# ---------------------------------------------------------------- autotuning
def test_auto_times_once_per_key_and_lists_the_choice(spy):
    x = _layer_input()
    w = torch.randn(6, 6, 5, 5, requires_grad=True)
    masked_conv2d(x, w, mask_type="A").sum().backward()
    choices = _autotune.choices()
    phases = sorted(e["phase"] for e in choices.values())
    assert phases == ["forward", "grad_input", "grad_weight"]
    eligible = {"live_tap", "decomposed", "dense"} if HAS_EXT else {"decomposed", "dense"}
    for entry in choices.values():
        assert set(entry["timings_ms"]) == eligible and entry["source"] == "timed"
        assert entry["algorithm"] == min(entry["timings_ms"], key=entry["timings_ms"].get)
    n = len(spy)
    masked_conv2d(x, w, mask_type="A").sum().backward()
    assert len(spy) <= n + 3  # the second call runs its three phases once: no timing
    # backend_info lists them; another shape is another key.
    info = genfast.backend_info()["autotune"]
    assert info["choices"].keys() == choices.keys()
    with torch.no_grad():
        masked_conv2d(x[:1], w, mask_type="A")
    assert len(_autotune.choices()) == 4


def test_timing_keeps_the_rng_state():
    state = torch.get_rng_state()
    x = _layer_input()
    masked_conv2d(x, torch.randn(6, 6, 3, 3, requires_grad=True)).sum().backward()
    state_after_randn = torch.get_rng_state()
    torch.set_rng_state(state)
    torch.randn(6, 6, 3, 3)
    assert torch.equal(torch.get_rng_state(), state_after_randn)
    assert len(_autotune.choices()) == 3


def _fail_if_timed(monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("timed although timing is off")
    monkeypatch.setattr(_autotune, "_time_all", no_timing)


def _expected_heuristic(x, w, mask_type, phase):
    eligible = mc.ALGORITHMS if HAS_EXT else mc._PYTORCH_ALGORITHMS
    return mc.heuristic_algorithm(phase, "cpu", x.dtype, tuple(x.shape), tuple(w.shape), mask_type, 1,
                                  eligible)


def test_autotune_off_uses_the_heuristic(monkeypatch, spy):
    monkeypatch.setattr(_autotune, "ENABLED", False)  # what GENFAST_AUTOTUNE=0 sets
    _fail_if_timed(monkeypatch)
    x, w = _layer_input(), torch.randn(6, 6, 7, 7, requires_grad=True)
    masked_conv2d(x, w, mask_type="A").sum().backward()
    assert set(spy) == {(p, _expected_heuristic(x, w, "A", p)) for p in mc.PHASES}
    assert not _autotune.choices()


def test_environment_variable_turns_timing_off():
    code = "from genfast.ops import _autotune; print(_autotune.ENABLED)"
    env = {**os.environ, "GENFAST_AUTOTUNE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_deterministic_mode_picks_without_timing(monkeypatch, spy):
    _fail_if_timed(monkeypatch)
    x, w = _layer_input(), torch.randn(6, 6, 3, 3, requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        out = masked_conv2d(x, w)
        out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    assert set(spy) == {(p, _expected_heuristic(x, w, "B", p)) for p in mc.PHASES}
    assert not _autotune.choices()
    torch.testing.assert_close(out, masked_conv2d_reference(x, w))


def test_deterministic_mode_uses_a_cached_choice_only_if_deterministic(monkeypatch, spy):
    x, w = _layer_input(), torch.randn(6, 6, 3, 3)
    with torch.no_grad():
        masked_conv2d(x, w, algorithm="auto")  # timed, cached
    (entry,) = _autotune.choices().values()
    monkeypatch.setattr(mc, "_NONDETERMINISTIC", {(entry["algorithm"], "forward", "cpu")})
    spy.clear()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.no_grad():
            masked_conv2d(x, w, algorithm="auto")
    finally:
        torch.use_deterministic_algorithms(False)
    assert spy and spy[0][1] != entry["algorithm"]


def test_a_failing_candidate_is_dropped(monkeypatch):
    original = mc._forward

    def failing(algorithm, *args):
        if algorithm == "decomposed":
            raise RuntimeError("out of memory (test)")
        return original(algorithm, *args)
    monkeypatch.setattr(mc, "_forward", failing)
    x, w = _layer_input(requires_grad=False), torch.randn(6, 6, 3, 3)
    out = masked_conv2d(x, w)
    torch.testing.assert_close(out, masked_conv2d_reference(x, w))
    (entry,) = _autotune.choices().values()
    assert entry["timings_ms"]["decomposed"] is None and entry["algorithm"] != "decomposed"


def test_without_extension_only_pytorch_candidates(monkeypatch):
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "_UNUSABLE", "genfast._C is not built (test)")
    monkeypatch.setattr(_backend, "_warned", {"genfast._C is not built (test)"})
    x, w = _layer_input(), torch.randn(6, 6, 3, 3, requires_grad=True)
    out = masked_conv2d(x, w)
    out.sum().backward()
    for entry in _autotune.choices().values():
        assert set(entry["timings_ms"]) == {"decomposed", "dense"}
    with pytest.raises(RuntimeError, match="impl='ext' was asked for"):
        masked_conv2d(x, w, algorithm="live_tap")
    torch.testing.assert_close(out, masked_conv2d_reference(x, w))


# ---------------------------------------------------------------- the cache file
def test_cache_file_round_trip(monkeypatch, tmp_path, spy):
    path = tmp_path / "autotune.json"
    monkeypatch.setattr(_autotune, "CACHE_PATH", str(path))
    x, w = _layer_input(), torch.randn(6, 6, 5, 5, requires_grad=True)
    masked_conv2d(x, w, mask_type="A").sum().backward()
    timed = {k: e["algorithm"] for k, e in _autotune.choices().items()}
    data = json.loads(path.read_text())
    env = _autotune.environment_key(torch.device("cpu"))
    assert data["version"] == 1 and env in data["environments"]
    assert env.endswith(f"torch {torch.__version__}") and _autotune.processor_name(torch.device("cpu")) in env
    assert {k: e["algorithm"] for k, e in data["environments"][env].items()} == timed
    # A new process (cleared cache) reads the choices back instead of timing.
    _autotune.clear()
    _fail_if_timed(monkeypatch)
    spy.clear()
    masked_conv2d(x, w, mask_type="A").sum().backward()
    choices = _autotune.choices()
    assert {k: e["algorithm"] for k, e in choices.items()} == timed
    assert all(e["source"] == "file" for e in choices.values())
    assert {a for _, a in spy} <= set(timed.values())
    assert not list(tmp_path.glob(".genfast-autotune-*"))  # no temporary file left behind


def test_cache_file_of_another_machine_is_not_used(monkeypatch, tmp_path):
    path = tmp_path / "autotune.json"
    x, w = _layer_input(requires_grad=False), torch.randn(6, 6, 3, 3)
    key = _autotune.key_string("masked_conv2d", "forward",
                               mc._full_key(mc._base_key(x, w, "B", 1, (1, 1))))
    entry = {"op": "masked_conv2d", "phase": "forward", "algorithm": "dense", "timings_ms": {"dense": 1.0}}
    path.write_text(json.dumps({"version": 1, "environments": {"Some Other CPU | torch 0.0": {key: entry}}}))
    monkeypatch.setattr(_autotune, "CACHE_PATH", str(path))
    masked_conv2d(x, w)
    (got,) = _autotune.choices().values()
    assert got["source"] == "timed"
    # The other machine's entry survives the rewrite.
    assert "Some Other CPU | torch 0.0" in json.loads(path.read_text())["environments"]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 99, "environments": {}}',
                                     '{"version": 1, "environments": {"x": {"k": {"algorithm": 3}}}}'])
def test_corrupt_cache_file_is_ignored_with_a_warning(monkeypatch, tmp_path, content):
    path = tmp_path / "autotune.json"
    path.write_text(content)
    monkeypatch.setattr(_autotune, "CACHE_PATH", str(path))
    x, w = _layer_input(requires_grad=False), torch.randn(6, 6, 3, 3)
    with pytest.warns(RuntimeWarning, match="ignoring the autotune cache file"):
        out = masked_conv2d(x, w)
    torch.testing.assert_close(out, masked_conv2d_reference(x, w))
    assert len(_autotune.choices()) == 1
    assert json.loads(path.read_text())["version"] == 1  # replaced by a valid file


def test_cli_lists_cached_choices(tmp_path, monkeypatch):
    path = tmp_path / "autotune.json"
    monkeypatch.setattr(_autotune, "CACHE_PATH", str(path))
    x, w = _layer_input(requires_grad=False), torch.randn(6, 6, 3, 3)
    masked_conv2d(x, w)
    (key, entry), = _autotune.choices().items()
    env = {**os.environ, "GENFAST_AUTOTUNE_CACHE": str(path)}
    # A fresh process lists what the cache file holds for this machine.
    out = subprocess.run([sys.executable, "-m", "genfast", "info"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert f"{key} -> {entry['algorithm']} (file;" in out and "ms" in out
    out = subprocess.run([sys.executable, "-m", "genfast", "info", "--json"], capture_output=True,
                         text=True, env=env, check=True).stdout
    info = json.loads(out)["autotune"]
    assert info["cache_file"] == str(path) and info["choices"][key]["algorithm"] == entry["algorithm"]


# ---------------------------------------------------------------- torch.compile
def test_torch_compile_fullgraph_never_times(monkeypatch):
    torch._dynamo.reset()
    x, w, b, kwargs = random_case(601, "cpu", torch.float32)
    _fail_if_timed(monkeypatch)

    @torch.compile(fullgraph=True)
    def layer(x, w, b):
        return torch.relu(masked_conv2d(x, w, b, **kwargs)).square().sum()

    eager = torch.relu(masked_conv2d_reference(x, w, b, **kwargs)).square().sum()
    compiled = layer(x, w, b)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)
    live = [t for t in (x, w, b) if t is not None]
    for got, want in zip(torch.autograd.grad(compiled, live), torch.autograd.grad(eager, live)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    assert not _autotune.choices()


@pytest.mark.parametrize("algorithm", ["decomposed", "dense", pytest.param("live_tap", marks=requires_ext)])
def test_torch_compile_fullgraph_each_algorithm(algorithm):
    torch._dynamo.reset()
    x, w, b, kwargs = random_case(602, "cpu", torch.float32)

    @torch.compile(fullgraph=True)
    def layer(x, w, b):
        return masked_conv2d(x, w, b, algorithm=algorithm, **kwargs).square().sum()

    eager = masked_conv2d_reference(x, w, b, **kwargs).square().sum()
    compiled = layer(x, w, b)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)
    live = [t for t in (x, w, b) if t is not None]
    for got, want in zip(torch.autograd.grad(compiled, live), torch.autograd.grad(eager, live)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_torch_compile_uses_the_cached_choice(monkeypatch, spy):
    torch._dynamo.reset()
    x, w = _layer_input(requires_grad=False), torch.randn(6, 6, 3, 3)
    key = mc._full_key(mc._base_key(x, w, "B", 1, (1, 1)))
    # A cached choice that the heuristic would not make.
    heur = _expected_heuristic(x, w, "B", "forward")
    other = "dense" if heur != "dense" else "decomposed"
    _autotune._cache[_autotune.key_string("masked_conv2d", "forward", key)] = {
        "op": "masked_conv2d", "phase": "forward", "algorithm": other, "timings_ms": {other: 1.0},
        "source": "timed"}
    compiled = torch.compile(lambda x, w: masked_conv2d(x, w), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, w), masked_conv2d_reference(x, w), rtol=1e-5, atol=1e-5)
    assert ("forward", other) in spy and ("forward", heur) not in spy
