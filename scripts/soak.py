#!/usr/bin/env python3
"""Mixed load on a running `exemplar serve` for a fixed time: searches, class adds,
listings and deletes from --concurrency threads; status counts, p50/p95 per operation,
and the server's resident memory over time.

    scripts/soak.py --url http://127.0.0.1:8080 --pid PID --minutes 10 --concurrency 4 \
        --images ../shared/data/smvs-dvd-dev/Canon

Only loopback servers are used. Each thread loops for --minutes (bounded), picking an
operation: 80 % search (a photo from --images), 10 % add a class (a generated photo),
5 % list classes, 5 % delete one of the classes this run added. Memory (VmRSS of --pid)
is sampled every --sample-secs. Last line: JSON.
"""
import argparse
import json
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import Client, distinct_photo, percentile, rss_bytes  # noqa: E402

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (for its memory)")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--images", required=True, help="a folder of photos to search with")
    ap.add_argument("--sample-secs", type=float, default=10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    photos = []
    for root, _, files in os.walk(args.images):
        photos += [os.path.join(root, f) for f in sorted(files) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    photos = [open(p, "rb").read() for p in sorted(photos)[:200]]
    if not photos:
        sys.exit(f"no photos under {args.images}")
    client = Client(args.url, timeout=120)
    deadline = time.monotonic() + args.minutes * 60
    statuses, latencies = Counter(), defaultdict(list)
    added, lock = [], threading.Lock()
    rss = []

    def worker(seed):
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            roll = rng.random()
            started = time.monotonic()
            try:
                if roll < 0.8:
                    op = "search"
                    status, _ = client.multipart("/search", [], [("image", "q.jpg", rng.choice(photos))])
                elif roll < 0.9:
                    op = "add"
                    n = rng.randrange(1 << 40)
                    status, body = client.multipart("/classes", [("label", f"soak {n}")], [("image", f"{n}.png", distinct_photo(n))])
                    if status == 201:
                        with lock:
                            added.append(body["id"])
                elif roll < 0.95:
                    op = "list"
                    status, _ = client.request("GET", "/classes?limit=100")
                else:
                    op = "delete"
                    with lock:
                        victim = added.pop(rng.randrange(len(added))) if added else None
                    if victim is None:
                        continue
                    status, _ = client.request("DELETE", f"/classes/{victim}")
            except OSError as e:
                op, status = "error", type(e).__name__
            with lock:
                statuses[(op, status)] += 1
                latencies[op].append((time.monotonic() - started) * 1000)

    threads = [threading.Thread(target=worker, args=(args.seed * 1000 + i,)) for i in range(args.concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((round(time.monotonic() - started, 1), rss_bytes(args.pid)))
        time.sleep(args.sample_secs)
    for t in threads:
        t.join()
    rss.append((round(time.monotonic() - started, 1), rss_bytes(args.pid)))
    report = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "statuses": {f"{op} {status}": n for (op, status), n in sorted(statuses.items(), key=str)},
        "server_errors": sum(n for (op, status), n in statuses.items() if not isinstance(status, int) or status >= 500),
        "latency_ms": {op: {"n": len(v), "p50": round(percentile(v, 50), 1), "p95": round(percentile(v, 95), 1)} for op, v in latencies.items()},
        "rss_mib": [(t, round(b / 2**20, 1) if b else None) for t, b in rss],
        "peak_rss_mib": round(rss_bytes(args.pid, "VmHWM") / 2**20, 1),
    }
    print(json.dumps(report))
    sys.exit(1 if report["server_errors"] else 0)


if __name__ == "__main__":
    main()
