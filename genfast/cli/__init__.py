"""The genfast command line (`genfast ...` or `python -m genfast ...`).

The package only parses arguments and prints: data sets live in genfast.data,
trainers in genfast.training, plots in genfast.plotting. Each feature adds its
commands from its own module, listed in COMMAND_MODULES: the module's
`add_commands(commands, train, sample)` receives the top-level subparsers and those
of `genfast train` and `genfast sample`, and sets `func` on each parser it adds
(func(args) -> exit code), wrapped in genfast.cli.common.user_errors so that bad
arguments, data or checkpoints end the command with one line, not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# Modules that add commands; each defines add_commands(commands, train, sample).
COMMAND_MODULES: list[str] = ["genfast.cli.image_models", "genfast.cli.gan", "genfast.cli.vq",
                              "genfast.cli.wavenet", "genfast.cli.vae", "genfast.cli.vqgan"]


def _info(args) -> int:
    import genfast

    info = genfast.backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    build = info["build"]
    print(f"genfast {info['genfast_version']} on torch {info['torch_version']}")
    if build is None:
        print("compiled kernels: none")
    else:
        cuda = (f"CUDA {build['cuda_version']} for archs {build['cuda_archs']}"
                if build["with_cuda"] else "no CUDA kernels")
        print(f"compiled kernels: CPU, {cuda}; built against torch {build['torch_version']}")
    if info["extension_problem"]:
        print(f"problem: {info['extension_problem']}")
    print(f"GENFAST_IMPL: {info['forced_impl']}; CUDA device visible: {info['cuda_available']}")
    print("what impl='auto' runs:")
    width = max(map(len, info["ops"]))
    for op, per_device in info["ops"].items():
        for device, choice in per_device.items():
            print(f"  {op:<{width}} {device:<5} {choice}")
    _print_autotune(info["autotune"])
    return 0


def _print_autotune(autotune: dict) -> None:
    state = "on" if autotune["enabled"] else "off (GENFAST_AUTOTUNE=0: heuristic choices)"
    print(f"algorithm autotuning: {state}; cache file: {autotune['cache_file'] or 'none'}")
    if not autotune["choices"]:
        print("  no cached choices (made on an op's first call with a new signature; "
              "GENFAST_AUTOTUNE_CACHE=path keeps them across processes)")
    for key, entry in sorted(autotune["choices"].items()):
        timings = ", ".join(f"{name} {'failed' if ms is None else f'{ms:.3g} ms'}"
                            for name, ms in entry["timings_ms"].items())
        print(f"  {key} -> {entry['algorithm']} ({entry['source']}; {timings})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genfast", description="genfast: fast kernels for generative models")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="what is compiled and what each op runs on each device")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_info)
    train = commands.add_parser("train", help="train a model").add_subparsers(dest="model", required=True)
    sample = commands.add_parser("sample", help="sample from a trained model").add_subparsers(dest="model", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands, train, sample)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
