"""Dispatch ``python -m da3stream.bench SUBCOMMAND`` to ``da3stream.bench.<subcommand>``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys

SUBCOMMANDS = {
    "model": "network throughput and peak memory (ours vs the official network)",
    "engine": "engine overhead without the network (cached-prediction predictor)",
    "graph": "pose-graph optimisation time (1,000 nodes, 50 loops)",
    "pipeline": "end-to-end run vs model-only on the same windows",
    "retrieval": "place-recognition search cost as the index grows",
    "bag": "ROS bag / MCAP reading rate and peak memory while streaming",
    "killresume": "SIGKILL a run at random moments, resume it, compare with the uninterrupted run",
    "memory": "CPU memory model vs measured peak RSS, with the CPU, BLAS kernels and allocator it ran on",
    "lie": "Sim(3) Exp/Log/action: alignment.lie vs pypose (when installed)",
    "registration": "window registration time at the pipeline's correspondence counts",
    "accuracy": "engine vs DA3-Streaming-style, naive chaining and the perfect-gauge floor on the same predictions",
    "gpu": "every GPU figure in one command under a time cap: ours vs official, end to end, the hour (--smoke: CPU)",
    "scaleout": "Ray scale-out: many sources and one split source, speed-up with 1/2/4 workers, merged vs single ATE",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m da3stream.bench", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    modules = {}
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        try:
            mod = importlib.import_module(f"da3stream.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"da3stream.bench.{name}":
                raise
            continue
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if args.cmd not in modules:
        print(f"benchmark {args.cmd!r} is not available in this build", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = modules[args.cmd].run(args)
    result.setdefault("benchmark", args.cmd)
    result.setdefault("host", {"python": platform.python_version(), "machine": platform.machine()})
    print(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
