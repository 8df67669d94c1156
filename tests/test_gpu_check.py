"""scripts/gpu_check.sh without a GPU: its argument handling, and a dry run of its CPU
parts (a small CPU benchmark, the summary and the results file) into a temporary
folder, so that CI exercises the script a GPU session will run once."""
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import requires_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the GPU check needs bash and coreutils' timeout")


def run(*args, env=None, timeout=120):
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})}, timeout=timeout)


def test_help_and_bad_arguments():
    shown = run("--help")
    assert shown.returncode == 0 and "--dry-run" in shown.stdout and "8 minutes" in shown.stdout
    bad = run("--gpu")
    assert bad.returncode == 2 and "unknown argument '--gpu'" in bad.stderr
    bad_env = run(env={"GENFAST_GPU_CHECK_DRY_RUN": "yes"})
    assert bad_env.returncode == 2 and "GENFAST_GPU_CHECK_DRY_RUN must be 0 or 1" in bad_env.stderr


@requires_ext
def test_dry_run_writes_the_results_file(tmp_path):
    pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")
    out, results = tmp_path / "out", tmp_path / "results"
    done = run("--dry-run", env={"OUT": str(out), "GENFAST_GPU_CHECK_RESULTS": str(results),
                                 "GENFAST_COMMIT": "abc123"})
    assert done.returncode == 0, done.stdout + done.stderr
    result = results / "gpu-check-abc123-dry-run.md"
    text = result.read_text()
    assert (out / "gpu-check-logs" / result.name).read_text() == text
    assert text.startswith("# GPU check of genfast abc123 (DRY RUN")
    # The GPU steps are listed with the commands they would run; the CPU ones ran.
    for name in ("build", "tests", "memcheck", "racecheck"):
        assert re.search(rf"^- {name}: not run \(dry run\): \S", text, re.M), name
    assert "compute-sanitizer --tool racecheck" in text
    assert re.search(r"^- collect: pass in \d+ s$", text, re.M)
    assert re.search(r"^- bench: pass in \d+ s$", text, re.M)
    # The benchmark table, summarised from the run's JSON.
    assert "| case | implementation | median ms | speed-up vs baseline |" in text
    assert re.search(r"^\| penalty fwd\+bwd 1M fp32 cpu \| genfast \| [0-9.]+ \| ", text, re.M)
