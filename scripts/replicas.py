#!/usr/bin/env python3
"""Two `exemplar serve` replicas on one throwaway PostgreSQL: replication lag, writers on
both with a kill -9, a database restart under load, search throughput of one and two
replicas on the same cores, and memory per exemplar.

    scripts/replicas.py --binary target/release/exemplar --writes 1000

The PostgreSQL server is made with the machine's `initdb` (`--pg-bin`, default the newest
/usr/lib/postgresql/*/bin) in a temporary directory, on a Unix socket; as root it runs as
the `postgres` user. Each replica has a data directory of its own. Last line: JSON.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from loadlib import Client, distinct_photo, percentile, rss_bytes, start_server  # noqa: E402


class Postgres:
    def __init__(self, bin_dir):
        self.dir = tempfile.mkdtemp(prefix="exemplar-pg-")
        self.bin = bin_dir
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        self.tool("initdb", "-D", self.data, "-A", "trust", "-U", "exemplar", "--no-sync")
        self.start()
        self.tool("createdb", "-h", self.dir, "-U", "exemplar", "catalogue")
        self.url = f"postgres://exemplar@localhost/catalogue?host={self.dir}"

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    def tool(self, name, *args):
        command = [os.path.join(self.bin, name), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        options = f"-k {self.dir} -c listen_addresses='' -c max_connections=200"
        self.tool("pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.dir, "log"), "-w", "start")

    def stop(self):
        self.tool("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def close(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def newest_pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return found[-1] if found else ""


def create(client, label, n):
    return client.multipart("/classes", [("label", label)], [("image", f"{n}.png", distinct_photo(n))])


def found(client, label, n):
    status, answer = client.multipart("/search", [], [("image", "q.png", distinct_photo(n))])
    return status == 200 and (answer.get("verdict") or {}).get("label") == label


def labels(client):
    out, after = [], 0
    while True:
        status, page = client.request("GET", f"/classes?limit=500&after={after}")
        assert status == 200, page
        out += [c["label"] for c in page["classes"]]
        if not page.get("next_after"):
            return out
        after = page["next_after"]


def replica(binary, data_dir, url, poll_ms):
    return start_server(binary, data_dir, ["--database", url, "--follow-poll-ms", str(poll_ms)])


def applied(client):
    status, ready = client.request("GET", "/readyz")
    assert status == 200, ready
    return ready["replica"]["applied"]


def lag(a, b, writes, first):
    """Each write on A, then B's /readyz until B has applied it, then searches on B until
    B finds it: milliseconds from A's answer."""
    lags, applied_after, first_try, search_s = [], [], 0, []
    for i in range(writes):
        n = first + i
        label = f"lag-{n}"
        before = applied(b)
        status, body = create(a, label, n)
        while status == 503:  # busy: a refit elsewhere changed the projection; send again
            time.sleep(0.05)
            status, body = create(a, label, n)
        assert status == 201, body
        acked = time.perf_counter()
        while applied(b) <= before:
            if time.perf_counter() - acked > 30:
                sys.exit(f"B never applied {label}")
        applied_after.append(time.perf_counter() - acked)
        tries = 0
        while True:
            started = time.perf_counter()
            ok = found(b, label, n)
            search_s.append(time.perf_counter() - started)
            tries += 1
            if ok:
                break
            if time.perf_counter() - acked > 30:
                sys.exit(f"B never found {label}")
        lags.append(time.perf_counter() - acked)
        first_try += tries == 1
    return {
        "writes": writes,
        "found_on_first_search": first_try,
        "ack_to_applied_ms_p50": round(percentile(applied_after, 50) * 1000, 1),
        "ack_to_applied_ms_p95": round(percentile(applied_after, 95) * 1000, 1),
        "ack_to_applied_ms_max": round(max(applied_after) * 1000, 1),
        "ack_to_found_ms_p50": round(percentile(lags, 50) * 1000, 1),
        "ack_to_found_ms_p95": round(percentile(lags, 95) * 1000, 1),
        "ack_to_found_ms_max": round(max(lags) * 1000, 1),
        "one_search_ms_p50": round(percentile(search_s, 50) * 1000, 1),
    }


def writers_and_kill(binary, dirs, url, poll_ms, servers, seconds):
    """A writer on each replica; A is killed half-way and started again."""
    acknowledged, errors, stop = [], [], threading.Event()
    lock = threading.Lock()

    def write(w, client):
        n = 1_000_000 * (w + 1)
        while not stop.is_set():
            label = f"w{w}-{n}"
            try:
                status, body = create(client, label, n)
            except OSError:
                status, body = None, None
            with lock:
                if status == 201:
                    acknowledged.append(label)
                elif w == 1 or status is not None:
                    errors.append((w, status, body))
            if status is None:
                time.sleep(0.1)
            n += 1

    clients = [Client(servers[0][1]), Client(servers[1][1])]
    threads = [threading.Thread(target=write, args=(w, clients[w])) for w in range(2)]
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    servers[0][0].kill()
    servers[0][0].wait()
    time.sleep(seconds / 2)
    stop.set()
    for t in threads:
        t.join()
    restarted = time.perf_counter()
    servers[0] = replica(binary, dirs[0], url, poll_ms)
    start_s = time.perf_counter() - restarted
    on_a, on_b = labels(Client(servers[0][1])), labels(Client(servers[1][1]))
    lost = set(acknowledged) - set(on_b)
    return {
        "acknowledged": len(acknowledged),
        "lost": len(lost),
        "duplicated_labels": len(on_b) - len(set(on_b)),
        "replicas_agree": sorted(on_a) == sorted(on_b),
        "survivor_errors": [e for e in errors if e[0] == 1][:5],
        "restart_and_catch_up_s": round(start_s, 2),
    }


def database_restart(pg, servers, seconds_down):
    """Writes and searches on both replicas while PostgreSQL stops and starts again."""
    outcomes, stop = {}, threading.Event()
    lock = threading.Lock()

    def load(w, client):
        n = 5_000_000 + 100_000 * w
        while not stop.is_set():
            try:
                status, body = create(client, f"pg-{n}", n)
                kind = body.get("kind") if isinstance(body, dict) and status != 201 else None
            except OSError:
                status, kind = "connection", None
            with lock:
                key = f"{status} {kind}" if kind else str(status)
                outcomes[key] = outcomes.get(key, 0) + 1
            n += 1

    threads = [threading.Thread(target=load, args=(w, Client(servers[w][1]))) for w in range(2)]
    for t in threads:
        t.start()
    time.sleep(2)
    pg.stop()
    down = time.perf_counter()
    time.sleep(seconds_down)
    pg.start()
    started = time.perf_counter()
    recovered = []
    for _, url in servers:
        client = Client(url)
        n = 9_000_000 + len(recovered)
        while create(client, f"after-{n}", n)[0] != 201:
            time.sleep(0.05)
            n += 10
        recovered.append(round(time.perf_counter() - started, 2))
    stop.set()
    for t in threads:
        t.join()
    return {
        "down_s": round(started - down, 1),
        "write_outcomes": outcomes,
        "first_write_after_restart_s": recovered,
    }


def throughput(urls, seconds, concurrency):
    """Searches/s of known photos spread over `urls` by `concurrency` clients."""
    done, stop = [0], threading.Event()
    lock = threading.Lock()

    def run(i):
        client = Client(urls[i % len(urls)])
        k = i
        while not stop.is_set():
            n = k % 200
            assert found(client, f"lag-{n}", n) is not None
            with lock:
                done[0] += 1
            k += concurrency
    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return round(done[0] / (time.perf_counter() - started), 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/release/exemplar")
    parser.add_argument("--pg-bin", default=newest_pg_bin())
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--poll-ms", type=int, default=1000)
    parser.add_argument("--kill-seconds", type=float, default=20)
    parser.add_argument("--throughput-seconds", type=float, default=20)
    args = parser.parse_args()

    pg = Postgres(args.pg_bin)
    dirs = [tempfile.mkdtemp(prefix="exemplar-replica-") for _ in range(2)]
    servers = []
    report = {"cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(":\t "),
              "cores": os.cpu_count()}
    try:
        servers = [replica(args.binary, d, pg.url, args.poll_ms) for d in dirs]
        a, b = Client(servers[0][1]), Client(servers[1][1])
        for client in (a, b):  # the model's memory, before any exemplar
            client.multipart("/search", [], [("image", "warm.png", distinct_photo(-1))])
        rss_empty = [rss_bytes(p.pid) for p, _ in servers]
        report["lag"] = lag(a, b, args.writes, 0)
        time.sleep(2)
        rss_full = [rss_bytes(p.pid) for p, _ in servers]
        report["memory"] = {
            "exemplars": args.writes,
            "rss_mib_empty": [round(r / 2**20) for r in rss_empty],
            "rss_mib_after": [round(r / 2**20) for r in rss_full],
        }
        one = throughput([servers[0][1]], args.throughput_seconds, 4)
        two = throughput([servers[0][1], servers[1][1]], args.throughput_seconds, 4)
        report["searches_per_s_concurrency_4"] = {"one_replica": one, "two_replicas": two}
        report["writers_and_kill"] = writers_and_kill(args.binary, dirs, pg.url, args.poll_ms, servers,
                                                      args.kill_seconds)
        report["database_restart"] = database_restart(pg, servers, 3)
    finally:
        for process, _ in servers:
            process.kill()
            process.wait()
        pg.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
