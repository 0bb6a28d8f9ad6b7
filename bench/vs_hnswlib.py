"""Exemplar's index and hnswlib on the same vectors; see vs-hnswlib.sh.

The data set is written once by `exemplar bench-index --write-dataset` (so both read the
same seeded vectors and exact neighbours). Then, per repeat, `exemplar bench-index
--dataset` and this script's own hnswlib run (`--hnswlib-once`, a fresh process) alternate,
the order swapped every repeat. Memory is the growth of the resident set over the build;
queries run one at a time on one thread.
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def resident_bytes():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hnswlib_once(a):
    import hnswlib, numpy as np
    spec = json.load(open(os.path.join(a.dataset, "spec.json")))
    dim, written_k = spec["dim"], spec["k"]
    points = np.fromfile(os.path.join(a.dataset, "points.f32"), dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(os.path.join(a.dataset, "queries.f32"), dtype="<f4").reshape(-1, dim)
    truth = np.fromfile(os.path.join(a.dataset, "truth.u32"), dtype="<u4").reshape(-1, written_k)[:, : a.k]
    before = resident_bytes()
    started = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=len(points), M=a.m, ef_construction=a.ef_construction)
    index.set_num_threads(a.threads)
    index.add_items(points, np.arange(len(points)))
    build = time.perf_counter() - started
    per_vector = (resident_bytes() - before) / len(points)
    index.set_num_threads(1)
    rows = []
    for ef in a.ef:
        index.set_ef(ef)
        found = 0
        started = time.perf_counter()
        for query, row in zip(queries, truth):
            labels, _ = index.knn_query(query, k=a.k)
            found += len(set(labels[0].tolist()) & set(row.tolist()))
        seconds = time.perf_counter() - started
        rows.append({"ef": ef, "recall": found / (a.k * len(queries)), "qps": len(queries) / seconds})
    print(json.dumps({"library": "hnswlib 0.8.0 (PyPI, -march=native)", "build_seconds": build,
                      "bytes_per_vector": per_vector, "search": rows}))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def at_recall(result, target):
    """Queries/s of the fastest setting that reaches `target` recall (None if none does)."""
    ok = [r["qps"] for r in result["search"] if r["recall"] >= target]
    return max(ok) if ok else None


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3g} [{min(values):.3g}–{max(values):.3g}]"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--exemplar", default="target/release/exemplar")
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--spread", type=float, help="bench-index --spread (default: its own)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128, 256])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recall", type=float, default=0.95)
    p.add_argument("--dataset", help="reuse a set written by bench-index --write-dataset")
    p.add_argument("--hnswlib-once", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.hnswlib_once:
        return hnswlib_once(a)

    tmp = tempfile.TemporaryDirectory()
    if not a.dataset:
        a.dataset = os.path.join(tmp.name, "set")
        spread_args = ["--spread", str(a.spread)] if a.spread is not None else []
        subprocess.run([a.exemplar, "bench-index", "--points", str(a.points), "--queries", str(a.queries),
                        "--k", str(a.k), "--write-dataset", a.dataset] + spread_args, check=True)
    common = ["--k", str(a.k), "--m", str(a.m), "--ef-construction", str(a.ef_construction),
              "--ef", ",".join(map(str, a.ef)), "--threads", str(a.threads)]
    ours_cmd = [a.exemplar, "bench-index", "--dataset", a.dataset] + common
    theirs_cmd = [sys.executable, __file__, "--hnswlib-once", "--dataset", a.dataset] + common
    results = {"ours": [], "hnswlib": []}
    for r in range(a.repeats):
        order = [("ours", ours_cmd), ("hnswlib", theirs_cmd)]
        if r % 2:
            order.reverse()
        for name, cmd in order:
            results[name].append(run_json(cmd))
            last = results[name][-1]
            print(f"repeat {r + 1} {name}: build {last['build_seconds']:.1f} s, "
                  f"{last['bytes_per_vector']:.0f} B/vector, "
                  + ", ".join(f"ef {s['ef']} {s['recall']:.4f}@{s['qps']:.0f}/s" for s in last["search"]),
                  file=sys.stderr)

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical; {a.points} points, k={a.k}, M={a.m}, "
          f"ef_construction={a.ef_construction}, build threads {a.threads}, queries on 1 thread; "
          f"median [min–max] of {a.repeats} repeats")
    print(f"{'ef':>5} | {'recall ours':>11} | {'recall hnswlib':>14} | {'q/s ours':>22} | {'q/s hnswlib':>22}")
    for i, ef in enumerate(a.ef):
        ro = [x["search"][i] for x in results["ours"]]
        rh = [x["search"][i] for x in results["hnswlib"]]
        print(f"{ef:>5} | {statistics.median(r['recall'] for r in ro):>11.4f} | "
              f"{statistics.median(r['recall'] for r in rh):>14.4f} | {spread([r['qps'] for r in ro]):>22} | "
              f"{spread([r['qps'] for r in rh]):>22}")
    pairs = list(zip(results["ours"], results["hnswlib"]))
    qps = [(at_recall(o, a.recall) or 0) / at_recall(h, a.recall) for o, h in pairs if at_recall(h, a.recall)]
    build = [o["build_seconds"] / h["build_seconds"] for o, h in pairs]
    memory = [o["bytes_per_vector"] / h["bytes_per_vector"] for o, h in pairs]
    print(f"build s: ours {spread([o['build_seconds'] for o, _ in pairs])}, "
          f"hnswlib {spread([h['build_seconds'] for _, h in pairs])}")
    print(f"bytes/vector: ours {spread([o['bytes_per_vector'] for o, _ in pairs])}, "
          f"hnswlib {spread([h['bytes_per_vector'] for _, h in pairs])}")
    print(f"ratio ours/hnswlib, per repeat: queries/s at recall@{a.k} >= {a.recall}: {spread(qps)}; "
          f"build time: {spread(build)}; memory per vector: {spread(memory)}")
    print(json.dumps({"ours": results["ours"], "hnswlib": results["hnswlib"], "cpu": cpu_model(),
                      "ratio": {"qps_at_recall": qps, "build_time": build, "memory": memory}}))


if __name__ == "__main__":
    main()
