#!/usr/bin/env python3
"""kill -9 at random points of a re-index, while a client adds classes and another searches.

    scripts/reindex-crash.py DATA_DIR --change '{"local_features": "orb"}' --kills 6 \
        --queries ../shared/data/smvs-dvd-dev/Canon

Starts the server on DATA_DIR (a catalogue with kept photos), starts a re-index with the
change, and --kills times: waits a random time (up to --max-wait seconds), kills the
server with SIGKILL, restarts it and checks that
- the model settings in force are still the old ones (the re-index had not switched) or
  the new ones (it had), never a mix: every exemplar's `model` is the one `/readyz` names;
- the re-index resumed by itself, and from where it was (its progress did not restart at 0);
- every class acknowledged so far (201) is there with its exemplar.
With --kill-at-switch, one more kill comes as soon as the re-index reports `switching`
(its last steps). Then it lets the re-index finish and checks the same, plus every
acknowledged class found by its own photo. Only loopback servers are used. Last line: JSON.
"""
import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import Client, distinct_photo, start_server  # noqa: E402


class Clients:
    """One client adding generated photos as classes, one searching; until stopped."""

    def __init__(self, queries, first):
        self.queries, self.n = queries, first
        self.url = None
        self.acknowledged = []  # (class id, photo bytes)
        self.answers = {"search_ok": 0, "search_refused": [], "add_refused": [], "transport_errors": 0}
        self.running = True
        self.lock = threading.Lock()

    def adder(self):
        while self.running:
            url = self.url
            if url is None:
                time.sleep(0.05)
                continue
            self.n += 1
            photo = distinct_photo(self.n)
            try:
                status, body = Client(url, timeout=30).multipart(
                    "/classes", [("label", f"crash-{self.n}")], [("image", "p.png", photo)])
            except OSError:
                with self.lock:
                    self.answers["transport_errors"] += 1
                continue
            with self.lock:
                if status == 201:
                    self.acknowledged.append((body["id"], photo))
                else:
                    self.answers["add_refused"].append((status, body))

    def searcher(self):
        rng = random.Random(1)
        while self.running:
            url = self.url
            if url is None or not self.queries:
                time.sleep(0.05)
                continue
            with open(rng.choice(self.queries), "rb") as f:
                data = f.read()
            try:
                status, body = Client(url, timeout=30).multipart("/search", [], [("image", "q.jpg", data)])
            except OSError:
                with self.lock:
                    self.answers["transport_errors"] += 1
                continue
            with self.lock:
                if status == 200:
                    self.answers["search_ok"] += 1
                else:
                    self.answers["search_refused"].append((status, body))


def check(client, acknowledged, expected_models):
    """The catalogue after a restart: one model in force, every acknowledged class there."""
    _, ready = client.request("GET", "/readyz")
    assert ready["model"] in expected_models, ready
    missing, mixed = [], []
    for class_id, _ in acknowledged:
        status, detail = client.request("GET", f"/classes/{class_id}")
        if status != 200 or len(detail["exemplars"]) != 1:
            missing.append(class_id)
        elif detail["exemplars"][0]["model"] != ready["model"]:
            mixed.append(class_id)
    return ready, missing, mixed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--binary", default="target/release/exemplar")
    parser.add_argument("--change", required=True)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--max-wait", type=float, default=20)
    parser.add_argument("--queries", action="append", default=[])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kill-at-switch", action="store_true")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    queries = [os.path.join(d, f) for d in args.queries for f in sorted(os.listdir(d))]

    process, url = start_server(args.binary, args.data_dir)
    client = Client(url, timeout=600)
    _, ready = client.request("GET", "/readyz")
    old_model = ready["model"]
    clients = Clients(queries, first=10_000_000 + args.seed * 100_000)
    threads = [threading.Thread(target=clients.adder), threading.Thread(target=clients.searcher)]
    clients.url = url
    for t in threads:
        t.start()
    status, started = client.request("POST", "/admin/reindex", args.change.encode(), {"Content-Type": "application/json"})
    assert status == 202, (status, started)
    new_model = started["model"]
    kills = []
    for i in range(args.kills + args.kill_at_switch):
        if i < args.kills:
            time.sleep(rng.uniform(1, args.max_wait))
            _, before = client.request("GET", "/admin/reindex")
        else:
            while True:
                _, before = client.request("GET", "/admin/reindex")
                if before["state"] != "building":
                    break
                time.sleep(0.02)
        clients.url = None
        process.kill()
        process.wait()
        with clients.lock:
            acknowledged = list(clients.acknowledged)
        process, url = start_server(args.binary, args.data_dir)
        client = Client(url, timeout=600)
        ready, missing, mixed = check(client, acknowledged, {old_model, new_model})
        # The resumed build counts what it already has with its first step.
        deadline = time.time() + 15
        while True:
            _, after = client.request("GET", "/admin/reindex")
            if after["state"] != "building" or after["done"] >= before["done"] or time.time() > deadline:
                break
            time.sleep(0.2)
        kill = {
            "at": {"state": before["state"], "done": before["done"], "total": before["total"]},
            "restarted": {"model": "new" if ready["model"] == new_model else "old",
                          "state": after["state"], "done": after["done"]},
            "acknowledged": len(acknowledged), "missing": missing[:10], "mixed": mixed[:10],
        }
        print(json.dumps(kill), flush=True)
        kills.append(kill)
        clients.url = url
        if after["state"] in ("idle", "switched") and ready["model"] == new_model:
            break  # switched before this kill
    deadline = time.time() + 1800
    while True:
        _, progress = client.request("GET", "/admin/reindex")
        _, ready = client.request("GET", "/readyz")
        if progress["state"] not in ("building", "switching") or time.time() > deadline:
            break
        time.sleep(1)
    clients.running = False
    for t in threads:
        t.join()
    ready, missing, mixed = check(client, clients.acknowledged, {new_model})
    found = 0
    for class_id, photo in clients.acknowledged:
        status, answer = client.multipart("/search", [], [("image", "p.png", photo)])
        found += status == 200 and answer["verdict"].get("class_id") == class_id
    process.terminate()
    process.wait()
    resumed = all(k["restarted"]["state"] in ("building", "switching") and k["restarted"]["done"] >= k["at"]["done"]
                  for k in kills if k["restarted"]["model"] == "old")
    print(json.dumps({
        "kills": len(kills), "final_state": progress["state"], "final_model_is_new": ready["model"] == new_model,
        "resumed_from_where_it_was": resumed,
        "acknowledged_adds": len(clients.acknowledged), "missing": missing[:10], "mixed": mixed[:10],
        "acknowledged_found_by_own_photo": found,
        "searches_ok": clients.answers["search_ok"],
        "searches_refused": [a for a in clients.answers["search_refused"]][:5],
        "adds_refused": clients.answers["add_refused"][:5],
        "transport_errors_around_kills": clients.answers["transport_errors"],
    }))


if __name__ == "__main__":
    main()
