#!/usr/bin/env python3
"""Re-indexes a running catalogue while clients search and add, and checks the outcome.

    scripts/reindex-load.py --build DATA_DIR --references ../shared/data/smvs-dvd-dev/Reference \
        --references ../shared/data/dvdcovers/references --references ../shared/data/holidays/images
    scripts/reindex-load.py DATA_DIR --queries ../shared/data/smvs-dvd-dev/Canon \
        --change '{"model": "resnet18", "weights": "/tmp/resnet18.safetensors"}' \
        --change '{"model": "efficientnet-lite0", "local_features": "orb"}' \
        --change '{"local_features": "sift"}'

`--build` adds every image under the reference folders as a class of its own to a new
data directory, waits for the projection and vocabulary fitted on them, then stops. Without it, the server is started on DATA_DIR and, for each
--change in turn: `--concurrency` clients search the query photos (every `--add-every`th
request adds one of them as a new class instead) for `--before` seconds, then through a
re-index with that change until it has switched, then for `--after` seconds. Reported per
change: failed requests (any answer but 200/201, or a transport error), search p50/p95
before, during and after, the build and switch times, and whether every exemplar is
found by its own kept photo afterwards (its exemplar first, or a match of a class that
holds the same photo). Only loopback servers are used. Last line: JSON.
"""
import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import Client, images_under, percentile, start_server  # noqa: E402

def read(path):
    with open(path, "rb") as f:
        return f.read()


def build(args):
    process, url = start_server(args.binary, args.data_dir)
    client = Client(url)
    paths = [p for folder in args.references for p in images_under(folder)]
    failures = []
    lock = threading.Lock()
    todo = list(enumerate(paths))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i, path = todo.pop()
            status, body = client.multipart("/classes", [("label", os.path.relpath(path))],
                                            [("image", os.path.basename(path), read(path))])
            if status != 201:
                failures.append((path, status, body))

    started = time.time()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.time() - started
    # The state a catalogue of this size settles in: a fitted projection and vocabulary.
    wait_for(client, ("/readyz", lambda b: b["projection"].startswith("pca") and b["vocabulary"]))
    time.sleep(2)
    process.terminate()
    process.wait()
    print(json.dumps({"built": args.data_dir, "classes": len(paths) - len(failures),
                      "failures": failures[:5], "seconds": round(seconds, 1)}))


class Load:
    """Clients searching and adding until stopped; every request's time, kind and status."""

    def __init__(self, client, queries, concurrency, add_every):
        self.client, self.queries, self.add_every = client, queries, add_every
        self.records, self.running, self.lock = [], True, threading.Lock()
        self.added = []  # (class id, photo path) of acknowledged adds
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(concurrency)]

    def run(self, seed):
        rng = random.Random(seed)
        n = 0
        while self.running:
            n += 1
            path = rng.choice(self.queries)
            data = read(path)
            adding = self.add_every and n % self.add_every == 0
            started = time.perf_counter()
            try:
                if adding:
                    status, body = self.client.multipart(
                        "/classes", [("label", f"added {seed}-{n}")], [("image", os.path.basename(path), data)])
                else:
                    status, body = self.client.multipart("/search", [], [("image", os.path.basename(path), data)])
            except OSError as e:
                status, body = None, str(e)
            elapsed = time.perf_counter() - started
            with self.lock:
                self.records.append((time.time(), "add" if adding else "search", status, elapsed, body if status not in (200, 201) else None))
                if adding and status == 201:
                    self.added.append((body["id"], path))

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join()


def summary(records, start, end):
    window = [r for r in records if start <= r[0] < end]
    searches = [r[3] * 1000 for r in window if r[1] == "search" and r[2] == 200]
    failed = [r for r in window if r[2] not in (200, 201)]
    return {
        "requests": len(window),
        "adds": sum(1 for r in window if r[1] == "add"),
        "failed": len(failed),
        "failures": [[r[1], r[2], str(r[4])[:200]] for r in failed[:3]],
        "search_p50_ms": round(percentile(searches, 50) or 0, 1),
        "search_p95_ms": round(percentile(searches, 95) or 0, 1),
    }


def every_exemplar(client):
    after, out = 0, []
    while True:
        status, page = client.request("GET", f"/classes?after={after}&limit=500")
        assert status == 200, page
        if not page["classes"]:
            return out
        for c in page["classes"]:
            status, detail = client.request("GET", f"/classes/{c['id']}")
            for e in detail["exemplars"]:
                out.append((c["id"], e["id"], e["sha256"]))
            after = c["id"]


def found_by_own_photos(client, exemplars):
    classes_of = {}
    for class_id, _, sha in exemplars:
        classes_of.setdefault(sha, set()).add(class_id)
    missed = []
    for class_id, exemplar, sha in exemplars:
        status, photo = client.request_bytes("GET", f"/exemplars/{exemplar}/photo")
        assert status == 200, (exemplar, status)
        status, answer = client.multipart("/search", [], [("image", "own", photo)])
        first = answer["neighbours"][0]["exemplar_id"] if status == 200 and answer["neighbours"] else None
        verdict = answer.get("verdict", {}) if status == 200 else {}
        named = verdict.get("status") == "match" and verdict.get("class_id") in classes_of[sha]
        if first != exemplar and not named:
            missed.append(exemplar)
    return {"searched": len(exemplars), "found": len(exemplars) - len(missed), "missed": missed[:20]}


def wait_for(client, what, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = client.request("GET", what[0])
        if status == 200 and what[1](body):
            return body
        time.sleep(0.5)
    sys.exit(f"timed out waiting on {what[0]}")


def measure(args):
    process, url = start_server(args.binary, args.data_dir, args.serve_arg or [])
    client = Client(url, timeout=600)

    def request_bytes(method, path):
        import http.client
        conn = http.client.HTTPConnection(client.host, client.port, timeout=60)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()
    client.request_bytes = request_bytes
    queries = [p for folder in args.queries for p in images_under(folder)]
    results = []
    for change in args.change:
        _, ready = client.request("GET", "/readyz")
        load = Load(client, queries, args.concurrency, args.add_every)
        t0 = time.time()
        load.start()
        time.sleep(args.before)
        t1 = time.time()
        status, started = client.request("POST", "/admin/reindex", json.dumps(json.loads(change)).encode(),
                                         {"Content-Type": "application/json"})
        if status != 202:
            load.stop()
            sys.exit(f"re-index refused: {status} {started}")
        progress = wait_for(client, ("/admin/reindex", lambda b: b["state"] not in ("building", "switching")))
        t2 = time.time()
        time.sleep(args.after)
        t3 = time.time()
        load.stop()
        # The visual words are fitted again after the switch (SIFT only).
        after_ready = wait_for(client, ("/readyz", lambda b: b["vocabulary"] is not None or "orb" in change), 600)
        own = found_by_own_photos(client, every_exemplar(client))
        result = {
            "change": json.loads(change),
            "from_model": ready["model"], "to_model": after_ready["model"],
            "state": progress["state"], "error": progress.get("error"),
            "exemplars_reindexed": progress["done"], "build_and_switch_s": round(progress["seconds"], 1),
            "switch_ms": progress["switch_ms"],
            "before": summary(load.records, t0, t1),
            "during": summary(load.records, t1, t2),
            "after": summary(load.records, t2, t3 + 1),
            "acknowledged_adds": len(load.added),
            "found_by_own_photo": own,
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    process.terminate()
    process.wait()
    print(json.dumps({"cpu": cpu_model(), "results": results}))


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--binary", default="target/release/exemplar")
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--references", action="append", default=[])
    parser.add_argument("--queries", action="append", default=[])
    parser.add_argument("--change", action="append", default=[])
    parser.add_argument("--serve-arg", action="append")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--add-every", type=int, default=10)
    parser.add_argument("--before", type=float, default=30)
    parser.add_argument("--after", type=float, default=15)
    args = parser.parse_args()
    build(args) if args.build else measure(args)


if __name__ == "__main__":
    main()
