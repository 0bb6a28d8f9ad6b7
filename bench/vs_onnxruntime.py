"""Exemplar's embedder against the ONNX Runtime baseline (ort_baseline.py) on the same
model, input and thread count, taking turns of 0.5 s (bench/paired.py): prints a table
of images/s and the ratio Exemplar / ONNX Runtime (the median of per-round ratios, with
the quartiles), then one JSON line. Each repeat starts every process afresh.
Use bench/vs-onnxruntime.sh, which prepares the venv and the release build."""
import argparse
import os
import statistics
import sys
import json

from paired import COLD, PassServer, images_per_second, speedup, take_turns, turns

HERE = os.path.dirname(os.path.abspath(__file__))


def exemplar(args, model, batch, engine):
    cmd = [args.exemplar, "--model", model, "--engine", engine, "bench",
           "--batch", str(batch), "--passes-from-stdin"]
    if model != "efficientnet-lite0":
        cmd.append("--random-weights")  # no hub here; speed does not depend on values
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    return PassServer(f"exemplar {engine}", cmd, env)


def onnxruntime(args, model, batch):
    cmd = [sys.executable, os.path.join(HERE, "ort_baseline.py"), model, "224", "224",
           str(batch), "0", str(args.threads), "--passes-from-stdin"]
    return PassServer("onnxruntime", cmd)


def spread(values):
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--exemplar", required=True)
    p.add_argument("--models", default="efficientnet-lite0 resnet50 resnet18")
    p.add_argument("--batches", default="1 8")
    p.add_argument("--seconds", type=float, default=20, help="per model, batch and repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--cold", action="store_true", help=COLD)
    p.add_argument("--with-candle", action="store_true",
                   help="also time the reference engine (Candle's own operations)")
    args = p.parse_args()
    runs = {}
    for r in range(args.repeats):
        for model in args.models.split():
            for batch in map(int, args.batches.split()):
                row = runs.setdefault((model, batch), {"exemplar": [], "onnxruntime": [],
                                                       "candle": [], "ratio": []})
                servers = [exemplar(args, model, batch, "nhwc"), onnxruntime(args, model, batch)]
                if args.with_candle:
                    servers.append(exemplar(args, model, batch, "candle"))
                take_turns(servers, args.seconds, **turns(args.cold))
                for s in servers:
                    s.close()
                ratio = speedup(servers[0], servers[1])
                row["ratio"].append(ratio)
                for key, s in zip(["exemplar", "onnxruntime", "candle"], servers):
                    row[key].append(images_per_second(s, batch))
                print(f"repeat {r + 1}: {model} batch {batch}: exemplar {row['exemplar'][-1]:.1f}, "
                      f"onnxruntime {row['onnxruntime'][-1]:.1f} images/s, ratio median "
                      f"{ratio['median']:.3f} (quartiles {ratio['q1']:.3f}-{ratio['q3']:.3f}, "
                      f"{ratio['rounds']} rounds)", file=sys.stderr)
    print(f"224x224, {args.threads} threads, {args.repeats} repeats of {args.seconds:g} s, "
          f"{'single passes from cold caches' if args.cold else 'turns of 0.5 s'}; images/s median (min-max) over the repeats; ratio: median of "
          "per-round ratios (each repeat's, then their median), lowest quartile-highest quartile")
    print(f"{'model':<20}{'batch':>6}  {'exemplar':<22}{'onnxruntime':<22}{'ratio':<24}"
          + ("candle" if args.with_candle else ""))
    summary = []
    for (model, batch), row in runs.items():
        medians = [x["median"] for x in row["ratio"]]
        q1, q3 = min(x["q1"] for x in row["ratio"]), max(x["q3"] for x in row["ratio"])
        print(f"{model:<20}{batch:>6}  {spread(row['exemplar']):<22}{spread(row['onnxruntime']):<22}"
              f"{statistics.median(medians):.3f} ({q1:.2f}-{q3:.2f})      "
              + (spread(row["candle"]) if row["candle"] else ""))
        summary.append({"model": model, "batch": batch, "exemplar": row["exemplar"],
                        "onnxruntime": row["onnxruntime"], "candle": row["candle"],
                        "ratios": row["ratio"], "ratio_median": statistics.median(medians)})
    print(json.dumps({"threads": args.threads, "seconds": args.seconds, "cold": args.cold,
                      "results": summary}))


if __name__ == "__main__":
    main()
