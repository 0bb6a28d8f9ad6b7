"""ONNX Runtime baseline for `bench/vs-onnxruntime.sh`: the same architecture as
Exemplar's embedder (batch-norm folded into the convolutions, as ONNX Runtime itself
would fold it), truncated before the classifier and average-pooled, built directly
as an ONNX graph so that no PyTorch is needed. Weights are random (He-scaled): the
speed of a dense float network does not depend on their values, and Exemplar's own
tests check its numbers against the reference path.

Usage: ort_baseline.py MODEL HEIGHT WIDTH BATCH SECONDS THREADS [--passes-from-stdin]
-> one JSON line. MODEL: efficientnet-lite0, resnet18, resnet34, resnet50.
--passes-from-stdin: as `exemplar bench --passes-from-stdin` (SECONDS unused): `ready`,
then per line read passes for its number of seconds, their count and mean time printed;
the JSON line at the end of input.
"""
import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

LITE0_STAGES = [  # repeats, kernel, first stride, expansion, in, out (as in Exemplar)
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
]
RESNETS = {"resnet18": (False, [2, 2, 2, 2]), "resnet34": (False, [3, 4, 6, 3]),
           "resnet50": (True, [3, 4, 6, 3])}


class Graph:
    def __init__(self, height, width):
        self.nodes, self.inits, self.count = [], [], 0
        self.rng = np.random.default_rng(0)
        self.size = (height, width)

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array):
        n = self.name("c")
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), n))
        return n

    def conv(self, x, cin, cout, k, stride, pads, groups=1):
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(2.0 / fan_in)
        b = self.rng.standard_normal(cout) * 0.01
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(w), self.const(b)], [y], kernel_shape=[k, k],
            strides=[stride, stride], pads=pads, group=groups))
        h, w_ = self.size
        self.size = ((h + pads[0] + pads[2] - k) // stride + 1, (w_ + pads[1] + pads[3] - k) // stride + 1)
        return y

    def op(self, kind, inputs, **attrs):
        y = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [y], **attrs))
        return y

    def relu6(self, x):
        return self.op("Clip", [x, self.const(np.array(0.0)), self.const(np.array(6.0))])


def tf_same(size, k, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def same_pads(g, k, stride):
    (t, b), (l, r) = tf_same(g.size[0], k, stride), tf_same(g.size[1], k, stride)
    return [t, l, b, r]


def lite0(g, x):
    x = g.relu6(g.conv(x, 3, 32, 3, 2, same_pads(g, 3, 2)))
    for repeats, k, first_stride, expand, c_in, c_out in LITE0_STAGES:
        for r in range(repeats):
            inp, stride = (c_in, first_stride) if r == 0 else (c_out, 1)
            hidden = inp * expand
            h = x if expand == 1 else g.relu6(g.conv(x, inp, hidden, 1, 1, [0, 0, 0, 0]))
            h = g.relu6(g.conv(h, hidden, hidden, k, stride, same_pads(g, k, stride), groups=hidden))
            h = g.conv(h, hidden, c_out, 1, 1, [0, 0, 0, 0])
            x = g.op("Add", [h, x]) if stride == 1 and inp == c_out else h
    return g.relu6(g.conv(x, 320, 1280, 1, 1, [0, 0, 0, 0]))


def resnet(g, x, bottleneck, repeats):
    x = g.op("Relu", [g.conv(x, 3, 64, 7, 2, [3, 3, 3, 3])])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    g.size = ((g.size[0] - 1) // 2 + 1, (g.size[1] - 1) // 2 + 1)
    inp, expansion = 64, 4 if bottleneck else 1
    for stage, (width, n) in enumerate(zip([64, 128, 256, 512], repeats)):
        for i in range(n):
            stride = 2 if i == 0 and stage > 0 else 1
            out = width * expansion
            size_in = g.size
            if bottleneck:
                h = g.op("Relu", [g.conv(x, inp, width, 1, 1, [0, 0, 0, 0])])
                h = g.op("Relu", [g.conv(h, width, width, 3, stride, [1, 1, 1, 1])])
                h = g.conv(h, width, out, 1, 1, [0, 0, 0, 0])
            else:
                h = g.op("Relu", [g.conv(x, inp, width, 3, stride, [1, 1, 1, 1])])
                h = g.conv(h, width, width, 3, 1, [1, 1, 1, 1])
            size_out = g.size
            if stride != 1 or inp != out:
                g.size = size_in
                x = g.conv(x, inp, out, 1, stride, [0, 0, 0, 0])
                g.size = size_out
            x = g.op("Relu", [g.op("Add", [h, x])])
            inp = out
    return x


def build(model, height, width):
    g = Graph(height, width)
    if model in ("efficientnet-lite0", "lite0"):
        fmap = lite0(g, "x")
    elif model in RESNETS:
        fmap = resnet(g, "x", *RESNETS[model])
    else:
        sys.exit(f"unknown model {model}; expected efficientnet-lite0, {', '.join(RESNETS)}")
    y = g.op("GlobalAveragePool", [fmap])
    graph = helper.make_graph(
        g.nodes, model, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, height, width])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["b", None, 1, 1])], initializer=g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m.SerializeToString()


def main():
    model, h, w, batch, seconds, threads = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5]), int(sys.argv[6])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    runner = ort.InferenceSession(build(model, h, w), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((batch, 3, h, w)).astype(np.float32)
    runner.run(None, {"x": x})  # warm-up, as Exemplar's bench does
    passes = []

    def one_pass():
        t = time.perf_counter()
        runner.run(None, {"x": x})
        passes.append(time.perf_counter() - t)

    if "--passes-from-stdin" in sys.argv[7:]:
        print("ready", flush=True)
        for line in sys.stdin:
            # Passes back to back for the line's seconds (at least one), as Exemplar's.
            seconds, start, first = float(line.strip() or 0), time.perf_counter(), len(passes)
            while len(passes) == first or time.perf_counter() - start < seconds:
                one_pass()
            done = passes[first:]
            print(len(done), sum(done) / len(done), flush=True)
    else:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or not passes:
            one_pass()
    print(json.dumps({"runtime": "onnxruntime " + ort.__version__, "model": model, "batch": batch,
                      "input": [3, h, w], "threads": threads, "passes": len(passes),
                      "images_per_second": len(passes) * batch / sum(passes),
                      "median_pass_ms": sorted(passes)[len(passes) // 2] * 1e3}))


if __name__ == "__main__":
    main()
