"""Runs `exemplar bench` and the ONNX Runtime baseline (ort_baseline.py) alternately on
the same model, input and thread count; prints a table of images/s (median and range
over the repeats) and the ratio Exemplar / ONNX Runtime, then one JSON line.
Use bench/vs-onnxruntime.sh, which prepares the venv and the release build."""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def last_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def exemplar(args, model, batch, engine):
    cmd = [args.exemplar, "--model", model, "--engine", engine, "bench",
           "--batch", str(batch), "--seconds", str(args.seconds)]
    if model != "efficientnet-lite0":
        cmd.append("--random-weights")  # no hub here; speed does not depend on values
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    return last_json(cmd, env)["images_per_second"]


def onnxruntime(args, model, batch):
    cmd = [sys.executable, os.path.join(HERE, "ort_baseline.py"), model, "224", "224",
           str(batch), str(args.seconds), str(args.threads)]
    return last_json(cmd)["images_per_second"]


def spread(values):
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--exemplar", required=True)
    p.add_argument("--models", default="efficientnet-lite0 resnet50 resnet18")
    p.add_argument("--batches", default="1 8")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--with-candle", action="store_true",
                   help="also time the reference engine (Candle's own operations)")
    args = p.parse_args()
    runs = {}
    for r in range(args.repeats):
        for model in args.models.split():
            for batch in map(int, args.batches.split()):
                row = runs.setdefault((model, batch), {"exemplar": [], "onnxruntime": [], "candle": []})
                row["exemplar"].append(exemplar(args, model, batch, "nhwc"))
                row["onnxruntime"].append(onnxruntime(args, model, batch))
                if args.with_candle:
                    row["candle"].append(exemplar(args, model, batch, "candle"))
                print(f"repeat {r + 1}: {model} batch {batch}: exemplar {row['exemplar'][-1]:.1f}, "
                      f"onnxruntime {row['onnxruntime'][-1]:.1f} images/s", file=sys.stderr)
    print(f"224x224, {args.threads} threads, {args.repeats} repeats of {args.seconds:g} s; "
          "images/s median (min-max)")
    print(f"{'model':<20}{'batch':>6}  {'exemplar':<22}{'onnxruntime':<22}{'ratio':<22}"
          + ("candle" if args.with_candle else ""))
    summary = []
    for (model, batch), row in runs.items():
        ratios = [e / o for e, o in zip(row["exemplar"], row["onnxruntime"])]
        print(f"{model:<20}{batch:>6}  {spread(row['exemplar']):<22}{spread(row['onnxruntime']):<22}"
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})      "
              + (spread(row["candle"]) if row["candle"] else ""))
        summary.append({"model": model, "batch": batch, "exemplar": row["exemplar"],
                        "onnxruntime": row["onnxruntime"], "candle": row["candle"],
                        "ratio_median": statistics.median(ratios)})
    print(json.dumps({"threads": args.threads, "seconds": args.seconds, "results": summary}))


if __name__ == "__main__":
    main()
