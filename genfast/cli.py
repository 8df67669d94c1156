"""The genfast command line: `genfast info` (or `python -m genfast info`)."""
from __future__ import annotations

import argparse
import json
import sys


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
    for op, per_device in info["ops"].items():
        for device, choice in per_device.items():
            print(f"  {op:<16} {device:<5} {choice}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="genfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what is compiled and what each op runs on each device")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
