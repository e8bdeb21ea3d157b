#!/usr/bin/env python3
"""User-space instructions per proxied request: chain, nginx and haproxy under valgrind.

Driven by bench/proxy.sh with BENCH_INSTR=1 (same setup as bench/proxy_bench.py: the same
backend, certificate, headers and worker count 1). Wall-clock CPU per request moves by +-5 %
from run to run on a shared 2-core machine; an instruction count does not, so this is the
figure to compare two builds of chaind by, and it shows where chain stands against nginx and
haproxy in user space (the kernel's share, about 70 % of a proxied request, is not counted).

For each proxy and load, the proxy runs under `valgrind --tool=callgrind` twice, once for
BENCH_INSTR_BASE requests (default 2,000) and once for BENCH_INSTR_BASE + BENCH_INSTR_N (default
+10,000); the difference of the proxy worker's instruction counts divided by BENCH_INSTR_N is
the figure, so start-up and connection set-up cancel out. The worker is chaind's thread that
ran `proxy::forward::handle`, nginx's worker process (not the master), haproxy's busiest thread.
Loads (h2load, 8 connections unless BENCH_INSTR_CONNS): `http` (HTTP/1.1 keep-alive, plain), `https` (HTTP/1.1 over TLS,
keep-alive), `h2` (HTTP/2 over TLS, 10 streams per connection).

Output: `RESULT instr_<load>_per_req_w1 chain=<v> nginx=<v> ratio=<chain/nginx>`, and the same
against haproxy. With BENCH_INSTR_CACHE=1 callgrind also simulates the caches (`--cache-sim=yes`,
the host's cache sizes), and two more rows per load: `i1miss_<load>_per_req_w1` (L1
instruction-cache misses) and `estcycles_<load>_per_req_w1` (instructions + 10 x L1 misses +
100 x last-level misses, kcachegrind's cycle estimate). A build with fewer instructions can
still cost more CPU when its code spreads over more cache lines; this shows it.

Environment: BENCH_INSTR_N=10000  BENCH_INSTR_BASE=2000  BENCH_INSTR_LOADS=http,https,h2
BENCH_INSTR_CONNS=8 (h2load connections)  BENCH_INSTR_CACHE=0  BENCH_PROXIES=chain,nginx,haproxy
"""

import glob
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402
from benchlib import BenchError, cli_main, info, log  # noqa: E402

N = int(os.environ.get("BENCH_INSTR_N", "10000"))
BASE = int(os.environ.get("BENCH_INSTR_BASE", "2000"))
LOADS = [x for x in os.environ.get("BENCH_INSTR_LOADS", "http,https,h2").split(",") if x]
CONNS = int(os.environ.get("BENCH_INSTR_CONNS", "8"))
CACHE = os.environ.get("BENCH_INSTR_CACHE", "0") == "1"

# A symbol only the proxy worker runs, to find its thread among chaind's.
MARKER = {"chain": "proxy::forward::handle"}


def callgrind_files(out_dir):
    """(pid, {event: total}, text) of each thread's callgrind file in out_dir; the events are
    Ir and, with the cache simulation, I1mr, D1mr, ILmr, ..."""
    files = []
    for path in glob.glob(os.path.join(out_dir, "cg.*")):
        text = open(path, errors="replace").read()
        pid = re.search(r"^pid:\s*(\d+)", text, re.M)
        names = re.search(r"^events:\s*(.*)$", text, re.M)
        total = re.search(r"^(?:summary|totals):\s*(.*)$", text, re.M)
        if pid and names and total:
            events = dict(zip(names.group(1).split(), map(int, total.group(1).split())))
            files.append((int(pid.group(1)), events, text))
    return files


def worker_events(name, files, master_pid):
    """The events of `name`'s worker thread (the one with the most instructions)."""
    marker = MARKER.get(name)
    if marker:
        hits = [e for _, e, text in files if marker in text]
        if not hits:
            raise BenchError(f"{name}: no thread ran {marker}")
    else:
        # nginx forks its workers from the master; haproxy runs in one process.
        hits = [e for pid, e, _ in files if pid != master_pid] or [e for _, e, _ in files]
        if not hits:
            raise BenchError(f"{name}: no callgrind output")
    return max(hits, key=lambda e: e["Ir"])


def figures(events):
    """The reported figures of one run's events."""
    out = {"instr": events["Ir"]}
    if "I1mr" in events:
        l1 = sum(events.get(k, 0) for k in ("I1mr", "D1mr", "D1mw"))
        ll = sum(events.get(k, 0) for k in ("ILmr", "DLmr", "DLmw"))
        out["i1miss"] = events["I1mr"]
        out["estcycles"] = events["Ir"] + 10 * l1 + 100 * ll
    return out


class InstrBench(pb.Bench):
    def __init__(self, bindir, run):
        super().__init__(bindir, run)
        if not shutil.which("valgrind"):
            raise BenchError("valgrind not found")
        self.ready_timeout = 180
        # nginx's worker runs as `nobody` and writes its own file below the run directory.
        os.chmod(run, 0o711)

    def load(self, name, load, requests):
        scheme = "http" if load == "http" else "https"
        port = self.target_port(name, scheme)
        argv = ["h2load", "-n", str(requests), "-c", str(CONNS), "-t", "1"]
        argv += ["-m", "10"] if load == "h2" else ["--h1"]
        argv.append(f"{scheme}://{pb.HOST}:{port}/")
        out, _ = pb.run_tool(argv, self.run, self.tool_env())
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
        if not m or int(m.group(2)) != requests:
            raise BenchError(f"h2load against {name} did not complete {requests} requests:\n{out}")

    def measure(self, name, load, requests):
        """Figures of `name`'s worker for `requests` requests of `load` (plus start-up)."""
        out_dir = os.path.join(self.run, f"cg-{name}-{load}-{requests}")
        os.makedirs(out_dir)
        os.chmod(out_dir, 0o1777)
        # --fair-sched: sled's lazy start-up spins on a flag another thread sets, which can
        # starve that thread under valgrind's default scheduling.
        self.wrap = {name: ["valgrind", "--tool=callgrind", "--separate-threads=yes",
                            "--fair-sched=yes", f"--cache-sim={'yes' if CACHE else 'no'}",
                            f"--callgrind-out-file={out_dir}/cg.%p"]}
        # chaind runs the backend, so it runs (plain, when not measured) in every round.
        self.start_all(1, [name])
        master = self.proxies[name].proc.pid
        self.load(name, load, requests)
        self.stop_all()
        return figures(worker_events(name, callgrind_files(out_dir), master))

    def main(self):
        info("plan", mode="instructions", requests=N, base=BASE, loads=",".join(LOADS),
             proxies=",".join(pb.PROXIES), connections=CONNS)
        per_req = {}
        for load in LOADS:
            for name in pb.PROXIES:
                log(f"{name}, {load}: {BASE} and {BASE + N} requests under callgrind")
                small = self.measure(name, load, BASE)
                big = self.measure(name, load, BASE + N)
                per_req[(load, name)] = {k: (big[k] - small[k]) / N for k in big}
                info("per_request", proxy=name, load=load,
                     **{k: f"{v:.0f}" for k, v in per_req[(load, name)].items()})
        for other in ("nginx", "haproxy"):
            for load in LOADS:
                c, o = per_req.get((load, "chain")), per_req.get((load, other))
                if c is None or o is None:
                    continue
                for fig in c:
                    print(f"RESULT {fig}_{load}_per_req_w1 chain={c[fig]:.0f} "
                          f"{other}={o[fig]:.0f} ratio={pb.sig(c[fig] / o[fig])}", flush=True)


if __name__ == "__main__":
    sys.exit(cli_main(InstrBench))
