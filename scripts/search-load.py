#!/usr/bin/env python3
"""Bounded load on a running Exemplar's POST /search: latency p50/p95 per concurrency.

    scripts/search-load.py --images ../shared/data/dvdcovers/queries --requests 80 --concurrency 1,4

Only loopback servers are accepted (this is a benchmark, not a load generator for other
hosts). Each level sends exactly --requests searches, cycling through the images, after
--warmup unmeasured ones. Last line: JSON.
"""
import argparse
import http.client
import ipaddress
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.parse
import uuid

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def multipart(image_bytes, filename, k):
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode(),
        image_bytes,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def search(host, port, body, content_type):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    started = time.perf_counter()
    conn.request("POST", "/search", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"/search answered {response.status}: {payload[:200]!r}")
    return elapsed


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_level(host, port, bodies, concurrency, requests):
    latencies = []
    lock = threading.Lock()
    next_index = [0]

    def worker():
        while True:
            with lock:
                i = next_index[0]
                if i >= requests:
                    return
                next_index[0] += 1
            body, content_type = bodies[i % len(bodies)]
            elapsed = search(host, port, body, content_type)
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "mean_ms": round(statistics.mean(ms), 1),
        "max_ms": round(max(ms), 1),
        "searches_per_second": round(len(ms) / wall, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--images", required=True, nargs="+", help="image files or folders")
    parser.add_argument("--requests", type=int, default=80, help="measured searches per level (max 2000)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels (max 16)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    url = urllib.parse.urlparse(args.url)
    host, port = url.hostname, url.port or 80
    address = ipaddress.ip_address(socket.gethostbyname(host))
    if not address.is_loopback:
        sys.exit(f"refusing {host}: only servers on this machine (loopback) are load-tested")
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.requests > 2000 or max(levels) > 16:
        sys.exit("bounded: at most 2000 requests and concurrency 16 per level")

    files = []
    for item in args.images:
        if os.path.isdir(item):
            files += sorted(
                os.path.join(item, f) for f in os.listdir(item)
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            )
        else:
            files.append(item)
    if not files:
        sys.exit("no images")
    bodies = []
    for path in files:
        with open(path, "rb") as f:
            bodies.append(multipart(f.read(), os.path.basename(path), args.k))

    for i in range(args.warmup):
        search(host, port, *bodies[i % len(bodies)])
    results = []
    for level in levels:
        result = run_level(host, port, bodies, level, args.requests)
        print(
            f"concurrency {level}: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
            f"mean {result['mean_ms']} ms, {result['searches_per_second']} searches/s "
            f"({result['requests']} requests)"
        )
        results.append(result)
    print(json.dumps({"images": len(files), "levels": results}))


if __name__ == "__main__":
    main()
