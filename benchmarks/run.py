"""Runs the benchmark suite (or part of it) and prints, per case, each
implementation's median time and its speed-up over the case's baseline peer.

    python benchmarks/run.py [--device cuda] [--quick] [-k EXPR] [--json PATH]
    python benchmarks/run.py --summarize PATH   # the table of an earlier run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def machine(data: dict) -> str:
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {}).get("brand_raw", info.get("processor", "unknown CPU"))
    extra = next((b["extra_info"].get("gpu") for b in data.get("benchmarks", []) if b["extra_info"].get("gpu")), None)
    return f"{cpu}, {os.cpu_count()} cores" + (f"; {extra}" if extra else "")


def summarize(data: dict) -> str:
    groups: dict[str, list[dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    lines = [f"Machine: {machine(data)}", "",
             "| case | implementation | median ms | speed-up vs baseline |",
             "|---|---|---:|---:|"]
    def median(bench):  # a case timed on 1/scale of its work (extra_info["scale"]) is scaled up
        return bench["stats"]["median"] * bench["extra_info"].get("scale", 1)

    for group, benches in groups.items():
        base = next((b for b in benches if b["extra_info"].get("baseline")), None)
        for b in sorted(benches, key=lambda b: not b["extra_info"].get("baseline")):
            ratio = f"{median(base) / median(b):.2f}x" if base else "n/a"
            name = b["extra_info"].get("impl", b["name"]) + (" (baseline)" if b is base else "")
            lines.append(f"| {group} | {name} | {median(b) * 1e3:.2f} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-k", dest="expr", help="pytest -k expression selecting cases")
    parser.add_argument("--json", help="where to save pytest-benchmark's JSON")
    parser.add_argument("--summarize", metavar="PATH", help="only print the table of a saved JSON")
    args = parser.parse_args()
    if args.summarize:
        with open(args.summarize) as f:
            print(summarize(json.load(f)))
        return 0
    path = args.json or os.path.join(HERE, "results", f"{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", HERE, "-q", "--benchmark-only", f"--benchmark-json={path}",
           "--device", args.device, "-p", "no:cacheprovider"]
    cmd += ["--quick"] if args.quick else []
    cmd += ["-k", args.expr] if args.expr else []
    code = subprocess.call(cmd, cwd=os.path.dirname(HERE))
    if not os.path.exists(path):
        return code or 1
    with open(path) as f:
        print(summarize(json.load(f)))
    print(f"\nJSON: {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
