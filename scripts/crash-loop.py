#!/usr/bin/env python3
"""kill -9 of `exemplar serve` at random moments of concurrent writes, round after round on
one data directory; then every write the server acknowledged must be there and be found
again by its own photo.

    scripts/crash-loop.py --binary target/release/exemplar --rounds 20 --writers 4

Each round starts the server on the same data directory, lets --writers threads add
classes (each with a photo of its own) and kills the server after a random 0.3–3 s.
Last line: JSON (rounds, acknowledged, lost, not found by their photo).
"""
import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import Client, distinct_photo, start_server  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/exemplar")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", help="default: a new temporary directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="exemplar-crash-")
    acknowledged, lock, next_photo = [], threading.Lock(), [0]

    for round_no in range(args.rounds):
        server, url = start_server(args.binary, data_dir)
        client, stop = Client(url, timeout=30), threading.Event()

        def writer(w):
            while not stop.is_set():
                with lock:
                    n = next_photo[0]
                    next_photo[0] += 1
                label = f"round {round_no} writer {w} #{n}"
                try:
                    status, body = client.multipart("/classes", [("label", label)], [("image", f"{n}.png", distinct_photo(n))])
                except OSError:
                    continue  # killed mid-request: never acknowledged
                if status == 201:
                    with lock:
                        acknowledged.append((label, n, body["id"]))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(args.writers)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 3.0))
        server.kill()
        server.wait()
        stop.set()
        for t in threads:
            t.join()
        print(f"round {round_no + 1}: {len(acknowledged)} acknowledged so far", file=sys.stderr)

    server, url = start_server(args.binary, data_dir)
    client = Client(url)
    lost, not_found = [], []
    for label, n, class_id in acknowledged:
        status, body = client.request("GET", f"/classes/{class_id}")
        if status != 200 or body.get("label") != label:
            lost.append(class_id)
            continue
        status, answer = client.multipart("/search", [], [("image", "q.png", distinct_photo(n))])
        if status != 200 or answer["neighbours"][0]["class_id"] != class_id:
            not_found.append(class_id)
    server.terminate()
    server.wait()
    print(json.dumps({"rounds": args.rounds, "writers": args.writers, "acknowledged": len(acknowledged),
                      "lost": lost, "not_found_by_own_photo": not_found, "data_dir": data_dir}))
    sys.exit(1 if lost or not_found else 0)


if __name__ == "__main__":
    main()
