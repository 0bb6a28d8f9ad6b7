#!/usr/bin/env python3
"""Two `exemplar` binaries' embedders, taking turns of 0.5 s (bench/paired.py): the
speed-up of NEW over OLD as the median of the per-round ratios, with their quartiles,
which stays readable on a machine whose speed drifts by tens of percent while other
tenants run. Each repeat starts both processes afresh (memory layout differs by run).

Usage: bench/ab.py OLD_BINARY NEW_BINARY [--batch 1] [--seconds 20] [--repeats 2]
       [-- extra `exemplar bench` flags, e.g. --model resnet50 --random-weights]
RAYON_NUM_THREADS passes through. Not part of the tests or CI.
"""
import argparse
import json
import statistics
import sys

from paired import COLD, PassServer, images_per_second, speedup, take_turns, turns


def main():
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20, help="per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cold", action="store_true", help=COLD)
    args = sys.argv[1:]
    # Everything after `--` goes to `exemplar bench` as it is.
    cut = args.index("--") if "--" in args else len(args)
    a = p.parse_args(args[:cut])
    extra = args[cut + 1:]
    repeats = []
    for r in range(a.repeats):
        old, new = (PassServer(name, [binary, "bench", "--batch", str(a.batch),
                                      "--passes-from-stdin", *extra])
                    for name, binary in (("old", a.old), ("new", a.new)))
        take_turns([old, new], a.seconds, **turns(a.cold))
        for s in (old, new):
            s.close()
        result = speedup(new, old)
        result.update(old_images_per_second=images_per_second(old, a.batch),
                      new_images_per_second=images_per_second(new, a.batch))
        repeats.append(result)
        print(f"repeat {r + 1}: old {result['old_images_per_second']:.1f}, new "
              f"{result['new_images_per_second']:.1f} images/s; new/old median "
              f"{result['median']:.3f} (quartiles {result['q1']:.3f}-{result['q3']:.3f}, "
              f"{result['rounds']} rounds)", file=sys.stderr)
    medians = [r["median"] for r in repeats]
    print(f"batch {a.batch}, {a.repeats} repeats of {a.seconds:g} s, "
          f"{'single passes from cold caches' if a.cold else 'turns of 0.5 s'}")
    print(f"new/old: median of per-round ratios {statistics.median(medians):.3f} "
          f"(repeats: {', '.join(f'{m:.3f}' for m in medians)}; quartiles "
          f"{min(r['q1'] for r in repeats):.3f}-{max(r['q3'] for r in repeats):.3f})")
    print(json.dumps({"batch": a.batch, "cold": a.cold, "repeats": repeats,
                      "ratio_median": statistics.median(medians)}))


if __name__ == "__main__":
    main()
