"""ONNX Runtime's own time per node, for comparing layer by layer with Exemplar.

Runs the graph of `ort_baseline.py` (same architecture and input) with ONNX Runtime's
profiler on, then prints each node's median kernel time over the passes, in the
order the nodes ran, with its operator and output shape, and the sum. The profiler
adds a little to every node; compare sums of the same kind of layers, not single
microseconds.

Usage (in the bench venv, see the README's *Embedding speed*):
  ort_profile.py MODEL [--threads N] [--batch B] [--passes P] [--size S]
MODEL: efficientnet-lite0, resnet18, resnet34, resnet50.
"""
import argparse
import collections
import json
import os
import statistics
import tempfile

import numpy as np
import onnxruntime as ort

from ort_baseline import build


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--passes", type=int, default=150)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    if args.passes < 1:
        p.error("--passes must be at least 1")

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        runner = ort.InferenceSession(build(args.model, args.size, args.size), so,
                                       providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal(
            (args.batch, 3, args.size, args.size)).astype(np.float32)
        for _ in range(args.passes):
            runner.run(None, {"x": x})
        with open(runner.end_profiling()) as f:
            events = json.load(f)

    times, order, info = collections.defaultdict(list), [], {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            if name not in times:
                order.append(name)
            times[name].append(e["dur"])
            shape = e["args"].get("output_type_shape") or [{}]
            info[name] = (e["args"].get("op_name", "?"), list(shape[0].values())[0] if shape[0] else "")
    total = 0.0
    print(f"ONNX Runtime {ort.__version__}, {args.model} {args.size}x{args.size}, batch {args.batch}, "
          f"{args.threads} threads, median of {args.passes} passes (us)")
    for name in order:
        us = statistics.median(times[name])
        total += us
        op, shape = info[name]
        print(f"{name:28} {op:18} {us:9.1f}  {shape}")
    print(f"{'total':28} {'':18} {total:9.1f}")


if __name__ == "__main__":
    main()
