"""Two or more embedders taking turns in one run, each a process serving passes on
request (`exemplar bench --passes-from-stdin`, `ort_baseline.py ... --passes-from-stdin`).

On a shared machine whose speed drifts by tens of percent over seconds, runs of a few
seconds each, one runtime after the other, give ratios that wander by as much; passes
taken in turns of half a second see the same machine. Each round of turns gives one
ratio; the median and quartiles of those are the result.
"""
import json
import statistics
import subprocess
import time


class PassServer:
    """One embedder process, warmed up and waiting for pass requests."""

    def __init__(self, name, cmd, env=None):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"{name}: expected `ready`, got {line!r} (exit {self.proc.wait()})")
        # One mean pass time per turn.
        self.times = []

    def request(self, seconds=0.0):
        """Passes back to back for `seconds` (at least one), in the process: the mean
        pass time."""
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        _count, mean = self.proc.stdout.readline().split()
        return float(mean)

    def close(self):
        """Ends the process; returns its summary (the JSON it prints last)."""
        out, _ = self.proc.communicate()
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.name}: exit {self.proc.returncode}")
        return json.loads(out.strip().splitlines()[-1])


def take_turns(servers, seconds, turn=0.5, gap=0.1, warmup=1, min_rounds=6):
    """Rounds of one turn per server, the order rotating from round to round (none always
    runs first), until `seconds` have passed and at least `min_rounds` are done. A turn:
    `gap` seconds idle (the threads of the process that ran last stop spinning: ONNX
    Runtime's spin for ~40 ms of CPU after a run and would take cores from the next
    one), `warmup` passes not counted (the other process's run has evicted this one's
    data from the caches), then passes back to back for `turn` seconds (at least one),
    whose mean time is the turn's. `turn=0, warmup=0` times single passes from cold caches."""
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < seconds:
        shift = rounds % len(servers)
        for server in servers[shift:] + servers[:shift]:
            time.sleep(gap)
            for _ in range(warmup):
                server.request()
            server.times.append(server.request(turn))
        rounds += 1
    return rounds


COLD = ("time single passes, each after 0.3 s idle, from cold caches (a request to an idle "
        "service), instead of turns of 0.5 s of back-to-back passes (throughput)")


def turns(cold):
    """`take_turns` settings: throughput, or single passes from cold caches."""
    return {"turn": 0, "warmup": 0, "gap": 0.3} if cold else {}


def speedup(new, old):
    """Per-round ratios of mean pass times, old / new: median, quartiles, extremes, and the
    ratio of the totals."""
    ratios = sorted(o / n for o, n in zip(old.times, new.times))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2],
            "min": ratios[0], "max": ratios[-1], "rounds": len(ratios),
            "throughput": sum(old.times) / sum(new.times)}


def images_per_second(server, batch):
    """Over all turns, each weighted alike."""
    return len(server.times) * batch / sum(server.times)
