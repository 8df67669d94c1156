"""Backend selection: impl= switch, GENFAST_IMPL, fallback warnings, build info."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import requires_ext

import genfast
from genfast import _backend
from genfast.ops import masked_conv2d, masked_conv2d_reference


def test_unknown_impl_is_rejected():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match="impl must be one of"):
        masked_conv2d(x, w, impl="fast")


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "_UNUSABLE", "genfast._C is not built (test)")
    monkeypatch.setattr(_backend, "_warned", set())
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 3, 3)
    with pytest.raises(RuntimeError, match=r"impl='ext' was asked for but genfast._C is not built \(test\)"):
        masked_conv2d(x, w, impl="ext")
    with pytest.warns(RuntimeWarning, match="not built"):
        out = masked_conv2d(x, w)
    torch.testing.assert_close(out, masked_conv2d_reference(x, w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masked_conv2d(x, w)  # warned once per process, not again


@requires_ext
def test_unsupported_dtype_falls_back_on_cpu(monkeypatch):
    monkeypatch.setattr(_backend, "_warned", set())
    x, w = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16), torch.randn(2, 2, 3, 3, dtype=torch.bfloat16)
    with pytest.warns(RuntimeWarning, match="supports float32, float64"):
        out = masked_conv2d(x, w)
    torch.testing.assert_close(out, masked_conv2d_reference(x, w))
    with pytest.raises(RuntimeError, match="supports float32, float64"):
        masked_conv2d(x, w, impl="ext")


def _run(code, **env):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, check=True)
    return result.stdout


def test_genfast_impl_reference_forces_reference():
    code = ("import genfast, json; print(json.dumps(genfast.backend_info()['ops']))")
    ops = json.loads(_run(code, GENFAST_IMPL="reference"))
    assert ops["masked_conv2d"]["cpu"] == "reference (GENFAST_IMPL=reference)"


def test_genfast_impl_rejects_unknown_value():
    with pytest.raises(subprocess.CalledProcessError):
        _run("import genfast", GENFAST_IMPL="fastest")


@requires_ext
def test_backend_info_and_cli():
    info = genfast.backend_info()
    assert info["build"]["torch_version"] == torch.__version__.split("+")[0]
    assert info["ops"]["masked_conv2d"]["cpu"] == "ext"
    if not info["build"]["with_cuda"]:
        assert "built without CUDA" in info["ops"]["masked_conv2d"]["cuda"]
    else:
        assert info["build"]["cuda_archs"]
    out = subprocess.run([sys.executable, "-m", "genfast", "info"], capture_output=True, text=True, check=True).stdout
    assert "masked_conv2d" in out and "compiled kernels: CPU" in out


def test_without_the_compiled_library_every_op_imports_and_runs_its_reference():
    """The registry entries' fake and autograd decorators do nothing when genfast._C is
    not loaded (no schema to attach to), and the wrappers run their references."""
    code = ("import sys; sys.modules['genfast._C'] = None  # import genfast._C fails\n"
            "import warnings, torch\n"
            "from genfast import _backend, ops\n"
            "assert not _backend.LIBRARY_LOADED\n"
            "x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    out = ops.concat_elu(x, 1)\n"
            "assert 'genfast._C is not built' in str(caught[0].message)\n"
            "assert torch.equal(out, ops.concat_elu_reference(x, 1))\n"
            "out.sum().backward()\n"
            "print(len(ops.OPS))\n")
    assert int(_run(code)) == len(genfast.ops.OPS)


def test_a_registry_entry_refuses_a_torch_op_it_does_not_list():
    entry = next(e for e in genfast.ops.registered_ops() if e.name == "concat_elu")
    for register in (entry.register_fake, lambda name: entry.register_autograd(setup_context=None, torch_op=name)):
        with pytest.raises(ValueError, match="'concat_elu_grad' is not in its registry entry's torch_ops"):
            register("concat_elu_grad")(lambda *args: None)
