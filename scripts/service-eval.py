#!/usr/bin/env python3
"""Cover recognition measured through a running Exemplar's HTTP API (the real two stages:
HNSW shortlist, stored local features, verdict), on a query/reference folder.

    scripts/service-eval.py --url http://127.0.0.1:8080 ../shared/data/smvs-dvd-dev \
        --distractors ../shared/data/dvdcovers/references --distractors ../shared/data/holidays/images

Start the server on an empty data directory. The script adds every reference as a class
(labelled with its path; every image in the reference folders is one) and every distractor as a class no query expects, refits the
projection, then searches each query (closed set). With --open-set it then deletes each
reference's class (and the distractors that show the very same item, --same-item), searches
its queries, which should now come out `unknown`, and adds the class back. Reports top-1
per camera, the unknown rates and the per-stage latency (from each answer's `timings`).
Only loopback servers are accepted. Last line: JSON.
"""
import argparse
import csv
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import Client, images_under  # noqa: E402

def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def add_class(client, label, path):
    with open(path, "rb") as f:
        data = f.read()
    status, body = client.multipart("/classes", [("label", label)], [("image", os.path.basename(path), data)])
    if status != 201:
        sys.exit(f"adding {path}: {status} {body}")
    return body["id"]


def unknown_throughput(args, client, root, rows, class_of, right_names, search):
    """Every reference gone, its photos searched by `concurrency` clients at once for
    `seconds`: the searches per second a store pays for photos of items it does not stock."""
    import threading
    removed = sorted({p for r in rows if r["reference"] for p in right_names(r["reference"])})
    for path in removed:
        status, _ = client.request("DELETE", f"/classes/{class_of[path]}")
        if status != 204:
            sys.exit(f"deleting {path}: {status}")
    queries = [r["query"] for r in rows if r["reference"]]
    named = []
    lock = threading.Lock()
    deadline = time.time() + args.unknown_throughput

    def worker(offset):
        i = offset
        while time.time() < deadline:
            answer, _ = search(queries[i % len(queries)], "unknown_throughput")
            with lock:
                named.append(answer)
            i += args.concurrency

    started = time.time()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started
    for path in removed:
        class_of[path] = add_class(client, path, path)
    return {
        "concurrency": args.concurrency,
        "searches": len(named),
        "seconds": elapsed,
        "searches_per_second": len(named) / elapsed,
        "answered_unknown_rate": sum(n is None for n in named) / max(1, len(named)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="folder with groundtruth.tsv (query, reference[, attribute])")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--distractors", action="append", default=[])
    ap.add_argument("--open-set", action="store_true", help="also search each query with its item deleted")
    ap.add_argument("--same-item", help="JSON list of [reference, distractor] paths showing one item "
                    "(e.g. `exemplar eval`'s same_item_pairs); naming either is right")
    ap.add_argument("--unknown-throughput", type=float, default=0, metavar="SECONDS",
                    help="also delete every reference's class and search their photos (now of "
                    "uncatalogued covers) back to back for this long with --concurrency clients")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--per-query", action="store_true", help="include each query's verdict in the JSON")
    ap.add_argument("--searches-only", action="store_true",
                    help="the server already holds the references and distractors as this script adds "
                    "them (labelled with their paths): add nothing, only search the queries (closed set)")
    args = ap.parse_args()
    if args.searches_only and (args.open_set or args.unknown_throughput):
        ap.error("--searches-only measures the closed set only")
    client = Client(args.url, timeout=300)
    root = os.path.realpath(args.dataset)

    with open(os.path.join(root, "groundtruth.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    columns = list(rows[0].keys())
    attribute = next((c for c in columns if c not in ("query", "reference")), None)
    references = sorted({r["reference"] for r in rows if r["reference"]})
    same = {}
    if args.same_item:
        for ref, other in json.load(open(args.same_item)):
            same.setdefault(os.path.realpath(os.path.join(root, ref)), set()).add(
                os.path.realpath(os.path.join(root, other)))

    started = time.time()
    class_of = {}
    # The catalogue: every image in the folders that hold referenced files (as `exemplar
    # eval` builds it), so a query competes with all of them.
    folders = sorted({os.path.dirname(os.path.realpath(os.path.join(root, ref))) for ref in references})
    distractors = [os.path.realpath(p) for d in args.distractors for p in images_under(d)]
    if not args.searches_only:
        for path in [p for folder in folders for p in images_under(folder)]:
            class_of[path] = add_class(client, path, path)
        for path in distractors:
            class_of[path] = add_class(client, path, path)
        added_seconds = time.time() - started
        status, refit = client.request("POST", "/admin/refit")
        print(f"{len(class_of)} classes added in {added_seconds:.1f} s; refit: {status} {refit}", file=sys.stderr)

    phases = {}

    def search(query, phase):
        timings = phases.setdefault(phase, {"embed_ms": [], "shortlist_ms": [], "verify_ms": [], "total_ms": []})
        with open(os.path.join(root, query), "rb") as f:
            data = f.read()
        t0 = time.perf_counter()
        status, answer = client.multipart("/search", [("k", str(args.k))], [("image", os.path.basename(query), data)])
        total = (time.perf_counter() - t0) * 1000
        if status != 200:
            sys.exit(f"search {query}: {status} {answer}")
        for key in ("embed_ms", "shortlist_ms", "verify_ms"):
            timings[key].append(answer["timings"][key])
        timings["total_ms"].append(total)
        verdict = answer["verdict"]
        return verdict["label"] if verdict["status"] == "match" else None, verdict

    def right_names(ref):
        path = os.path.realpath(os.path.join(root, ref))
        return {path} | same.get(path, set())

    per_attr, closed, details = {}, [], []
    known_unknown = 0
    for row in rows:
        named, verdict = search(row["query"], "closed_set")
        if row["reference"]:
            ok = named in right_names(row["reference"])
            known_unknown += named is None
            closed.append(ok)
            per_attr.setdefault(row.get(attribute) or "-", []).append(ok)
        else:
            closed.append(None)
        details.append({"query": row["query"], "reference": row["reference"], "named": named, "verdict": verdict})
        print(f"{row['query']}: {'unknown' if named is None else os.path.relpath(named, root)} "
              f"({verdict.get('evidence', {}).get('inliers', verdict.get('best_inliers'))} inliers)", file=sys.stderr)
    known = [c for c in closed if c is not None]
    expected_unknown = [r for r, c in zip(rows, closed) if c is None]

    result = {
        "dataset": root,
        "classes_added": len(class_of),
        "queries": len(known),
        "top1": sum(known) / max(1, len(known)),
        "by_attribute_top1": {k: sum(v) / len(v) for k, v in sorted(per_attr.items())},
        "known_answered_unknown": known_unknown,
        "expected_unknown_queries": len(expected_unknown),
    }

    if args.open_set:
        by_reference = {}
        for row in rows:
            if row["reference"]:
                by_reference.setdefault(row["reference"], []).append(row["query"])
        answered_unknown, total, wrong = 0, 0, []
        for ref, queries in sorted(by_reference.items()):
            removed = sorted(right_names(ref))
            for path in removed:
                status, _ = client.request("DELETE", f"/classes/{class_of[path]}")
                if status != 204:
                    sys.exit(f"deleting {path}: {status}")
            for query in queries:
                named, verdict = search(query, "open_set")
                total += 1
                answered_unknown += named is None
                if named is not None:
                    wrong.append({"query": query, "named": os.path.relpath(named, root), "verdict": verdict})
            for path in removed:
                class_of[path] = add_class(client, path, path)
        result["open_set_queries"] = total
        result["open_set_unknown_rate"] = answered_unknown / max(1, total)
        result["open_set_accepted"] = wrong

    if args.unknown_throughput > 0:
        result["unknown_throughput"] = unknown_throughput(
            args, client, root, rows, class_of, right_names, search)

    if args.per_query:
        result["per_query"] = details
    # Per phase: an open-set search rarely finds settling evidence, so it verifies more.
    result["latency_ms"] = {
        phase: {key: {"p50": percentile(v, 50), "p95": percentile(v, 95), "n": len(v)} for key, v in timings.items()}
        for phase, timings in phases.items()
    }
    print(f"top-1 {result['top1']:.3f} {result['by_attribute_top1']}; "
          f"open set unknown {result.get('open_set_unknown_rate')}; latency {result['latency_ms']}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
