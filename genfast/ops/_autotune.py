"""Per-call-signature algorithm choice by timing, like torch.backends.cudnn.benchmark.

An op that has several algorithms for one computation (e.g. masked_conv2d: genfast's
live-tap kernel, a dense sub-kernel decomposition, the dense convolution of
weight * mask) asks `choose(op, phase, key, candidates, heuristic, device)` once per
call. The first call with a new key times every candidate (one warm-up run each, then
3 to 10 interleaved rounds within a small time budget, keeping each one's fastest run),
drops the ones that raise (out of memory included), and caches the fastest; later
calls with that key look the choice up.

No timing happens (the heuristic, or an already cached choice, is used instead) when
- timing is off: GENFAST_AUTOTUNE=0 (module attribute ENABLED),
- torch.use_deterministic_algorithms is on (a timing-dependent choice would make runs
  differ; the op also restricts itself to its deterministic candidates),
- torch.compile / torch.export is tracing, or a CUDA graph is being captured,
- the tensors are fake or on the meta device.

Timing never changes the global RNG state: the op builds its candidates' inputs from a
private generator.

GENFAST_AUTOTUNE_CACHE=path keeps the timed choices in a JSON file across processes:
read once on first use, rewritten atomically after each new timing, its entries keyed
by the processor (CPU model string or GPU name) and torch version, so a file shared
between machines or torch versions never hands one of them another's choice. A file
that cannot be read or parsed is ignored with a warning (and replaced on the next write).
"""
from __future__ import annotations

import functools
import json
import os
import platform
import tempfile
import threading
import time
import warnings
from typing import Callable, Mapping

import torch

ENABLED = os.environ.get("GENFAST_AUTOTUNE", "1").strip().lower() not in ("0", "false", "off", "no")
CACHE_PATH = os.environ.get("GENFAST_AUTOTUNE_CACHE") or None

WARMUP = 1           # untimed runs per candidate (first-call setup: oneDNN primitives, cuDNN plans)
MIN_REPS = 3         # timed rounds at least (each round runs every candidate once); the minimum is kept
MAX_REPS = 10        # ... and at most, while the rounds so far took less than BUDGET_S
BUDGET_S = 0.3
FILE_VERSION = 1

_lock = threading.RLock()
# key string -> {"op", "phase", "algorithm", "timings_ms" {name: ms or None (failed)}, "source"}
_cache: dict[str, dict] = {}
_file_loaded_from: str | None = None


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def processor_name(device: torch.device) -> str:
    """The CPU model string, or the GPU's name: what a timing is only valid for."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def environment_key(device: torch.device) -> str:
    return f"{processor_name(device)} | torch {torch.__version__}"


def key_string(op: str, phase: str, key: tuple) -> str:
    return "|".join([op, phase, *map(str, key)])


def timing_allowed(*tensors: torch.Tensor | None) -> bool:
    """False wherever a timing-dependent choice or the timing itself would be wrong."""
    if not ENABLED or torch.are_deterministic_algorithms_enabled():
        return False
    if torch.compiler.is_compiling():
        return False
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "meta" or isinstance(t, torch._subclasses.FakeTensor):
            return False
        if t.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return False
    return True


# ---------------------------------------------------------------- the cache file
def _read_file(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        if not (isinstance(data, dict) and data.get("version") == FILE_VERSION
                and isinstance(data.get("environments"), dict)):
            raise ValueError(f"not a genfast autotune cache (version {FILE_VERSION})")
        for entries in data["environments"].values():
            if not isinstance(entries, dict) or not all(
                    isinstance(e, dict) and isinstance(e.get("algorithm"), str) for e in entries.values()):
                raise ValueError("malformed entries")
        return data
    except FileNotFoundError:
        return {"version": FILE_VERSION, "environments": {}}
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        warnings.warn(f"genfast: ignoring the autotune cache file {path!r}: {exc}", RuntimeWarning,
                      stacklevel=4)
        return {"version": FILE_VERSION, "environments": {}}


def _load_file(device: torch.device) -> None:
    """Merges the file's entries for this device's processor and torch version."""
    global _file_loaded_from
    path = CACHE_PATH
    if path is None:
        return
    marker = f"{path}::{environment_key(device)}"
    if _file_loaded_from == marker:
        return
    _file_loaded_from = marker
    entries = _read_file(path)["environments"].get(environment_key(device), {})
    for k, entry in entries.items():
        if k.split("|")[2:3] == [device.type] and k not in _cache:
            _cache[k] = {**entry, "source": "file"}


def _write_file(device: torch.device, k: str, entry: dict) -> None:
    path = CACHE_PATH
    if path is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corrupt file was reported when it was read
        data = _read_file(path)
    env = data["environments"].setdefault(environment_key(device), {})
    env[k] = {name: entry[name] for name in ("op", "phase", "algorithm", "timings_ms")}
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".genfast-autotune-", suffix=".json", dir=directory)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # atomic: readers see the old or the new file, never half of one
    except OSError as exc:
        warnings.warn(f"genfast: could not write the autotune cache file {path!r}: {exc}",
                      RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_all(candidates: Mapping[str, Callable[[], object]], device: torch.device) -> dict:
    """{name: best time in ms, or None when the candidate raised}. Candidates are timed
    in interleaved rounds, so that a burst of load from other processes hits all of
    them alike; one clearly slower than the best (3x) leaves the rounds early."""
    timings: dict[str, float | None] = {}
    alive: dict[str, Callable[[], object]] = {}
    with torch.no_grad():
        for name, run in candidates.items():
            try:
                for _ in range(WARMUP):
                    run()
                _sync(device)
            except Exception:  # e.g. out of memory, or no kernel for this configuration: dropped
                timings[name] = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            alive[name] = run
            timings[name] = float("inf")
        rounds, spent = 0, 0.0
        while alive and rounds < MAX_REPS and (rounds < MIN_REPS or spent < BUDGET_S):
            for name, run in list(alive.items()):
                try:
                    start = time.perf_counter()
                    run()
                    _sync(device)
                    elapsed = time.perf_counter() - start
                except Exception:
                    timings[name] = None
                    del alive[name]
                    continue
                timings[name] = min(timings[name], elapsed)
                spent += elapsed
            rounds += 1
            done = [t for t in timings.values() if t is not None]
            best = min(done) if done else 0.0
            for name in [n for n in alive if timings[n] > 3 * best]:
                del alive[name]
    return {n: None if t is None else t * 1e3 for n, t in timings.items()}


def cached(op: str, phase: str, key: tuple, eligible) -> str | None:
    """The cached choice for the key among `eligible` algorithms, or None."""
    entry = _cache.get(key_string(op, phase, key))
    if entry is None:
        return None
    if entry["algorithm"] in eligible:
        return entry["algorithm"]
    timed = {n: t for n, t in entry.get("timings_ms", {}).items() if n in eligible and t is not None}
    return min(timed, key=timed.get) if timed else None


def choose(op: str, phase: str, key: tuple, candidates: Mapping[str, Callable[[], object]],
           heuristic: str, device: torch.device, *, allowed: bool = True) -> str:
    """The algorithm to run for (op, phase, key).

    candidates: name -> a thunk running that algorithm once on representative inputs
    (only called when timing); heuristic: the choice when no timing may happen;
    allowed: the caller's own verdict on timing (e.g. from timing_allowed()).
    """
    eligible = tuple(candidates)
    with _lock:
        _load_file(device)
        hit = cached(op, phase, key, eligible)
        if hit is not None:
            return hit
        if not allowed or not ENABLED or len(eligible) < 2:
            return heuristic if heuristic in eligible or not eligible else eligible[0]
        timings = _time_all(candidates, device)
        ok = {n: t for n, t in timings.items() if t is not None}
        if not ok:  # every candidate failed: the call itself will show the real error
            return heuristic
        best = min(ok, key=ok.get)
        k = key_string(op, phase, key)
        entry = {"op": op, "phase": phase, "algorithm": best, "timings_ms": timings, "source": "timed"}
        _cache[k] = entry
        _write_file(device, k, entry)
        return best


def choices(*, read_file: bool = False) -> dict:
    """The cached choices: key string -> {"op", "phase", "algorithm", "timings_ms", "source"}.
    read_file: first merge the cache file's entries for this machine's CPU (and GPU,
    when one is visible), as a process would on its first call."""
    with _lock:
        if read_file:
            _load_file(torch.device("cpu"))
            if torch.cuda.is_available():
                _load_file(torch.device("cuda"))
        return {k: dict(v, timings_ms=dict(v.get("timings_ms", {}))) for k, v in _cache.items()}


def clear() -> None:
    """Forgets every cached choice in this process (the cache file is re-read on next use)."""
    global _file_loaded_from
    with _lock:
        _cache.clear()
        _file_loaded_from = None
