#!/usr/bin/env python3
"""Two `exemplar` binaries' embedders, alternating, many short rounds: the speed-up of B
over A as the median of the per-round ratios (with their spread), which stays readable
on a machine whose speed drifts by tens of percent while other tenants run.

Usage: bench/ab.py OLD_BINARY NEW_BINARY [--batch 1] [--rounds 12] [--seconds 2]
       [-- extra `exemplar bench` flags, e.g. --model resnet50 --random-weights]
Not part of the tests or CI.
"""
import argparse
import json
import statistics
import subprocess
import sys


def images_per_second(binary, batch, seconds, extra):
    out = subprocess.run(
        [binary, "bench", "--batch", str(batch), "--seconds", str(seconds), *extra],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_second"]


def spread(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--seconds", type=float, default=2)
    args = sys.argv[1:]
    # Everything after `--` goes to `exemplar bench` as it is.
    cut = args.index("--") if "--" in args else len(args)
    a = p.parse_args(args[:cut])
    a.extra = args[cut + 1:]
    old, new = [], []
    for i in range(a.rounds):
        # Each binary goes first in every other round: neither always runs warmer.
        order = [(a.old, old), (a.new, new)]
        for binary, results in order if i % 2 == 0 else reversed(order):
            results.append(images_per_second(binary, a.batch, a.seconds, a.extra))
    ratios = [n / o for o, n in zip(old, new)]
    print(f"batch {a.batch}, {a.rounds} rounds of {a.seconds} s, images/s median (min-max)")
    print(f"old {spread(old)}  new {spread(new)}")
    print(f"new/old per round: median {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f})")
    print(json.dumps({"batch": a.batch, "old": old, "new": new,
                      "ratio_median": statistics.median(ratios)}))


if __name__ == "__main__":
    main()
