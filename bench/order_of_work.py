#!/usr/bin/env python3
"""In what order a proxy worker reads requests, forwards them and answers, from the system calls
of a keep-alive benchmark sample.

Usage: bench/order_of_work.py STEM [STEM...]

Each STEM is a pair of files written by bench/order-record.sh ($ORDER_DIR/<port>-<ns>.data and
.ss, .meta). Record them with the load generator wrapped:

  BENCH_LOADGEN_WRAP=bench/order-record.sh BENCH_ROWS=https_paced BENCH_WORKERS=1 \\
    BENCH_PROXIES=chain,nginx BENCH_RUNS=1 BENCH_DURATION=5 bash bench/proxy.sh

Every system call that moved bytes on a TCP connection is one of four kinds: a read from a client
(`client_in`), a write to an upstream (`up_out`), a read from an upstream (`up_in`) and a write to
a client (`client_out`). For each worker thread, printed per sample:

- `requests: run`: for each client read, the length of the run of client reads it is part of,
  unbroken by an upstream write (mean, p90, p99 over reads): 1 when each request goes to its
  instance as soon as it is read (nginx's order), K when a burst of K requests is read before
  the first is forwarded; `wait_us`: from each client read to an upstream write, matched first
  in, first out (p50, p90, p99);
- `answers`: the same for upstream reads and client writes;
- calls per upstream write (`epoll_wait`, all calls).

The file descriptors are mapped to connections once per sample (`ss -tnp` at the start of the
recording), so the rows must keep their connections (keep-alive rows).
"""

import collections
import re
import subprocess
import sys

READS = {0: "read", 17: "pread", 19: "readv", 45: "recvfrom", 47: "recvmsg"}
WRITES = {1: "write", 18: "pwrite", 20: "writev", 44: "sendto", 46: "sendmsg", 40: "sendfile"}
EPOLL = {232, 281, 441}  # epoll_wait, epoll_pwait, epoll_pwait2


def pct(xs, p):
    if not xs:
        return 0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def sockets(stem, port, backend):
    """(pid, fd) -> 'client' or 'up' from the ss snapshot."""
    kinds = {}
    users = re.compile(r'pid=(\d+),fd=(\d+)')
    for line in open(stem + ".ss"):
        f = line.split()
        if len(f) < 6 or not f[0].startswith("ESTAB"):
            continue
        local, peer = f[3], f[4]
        lport, pport = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
        kind = "client" if lport == port else "up" if pport == backend else None
        if kind is None:
            continue
        for m in users.finditer(line):
            kinds[(int(m[1]), int(m[2]))] = kind
    return kinds


def analyse(stem):
    meta = dict(kv.split("=", 1) for kv in open(stem + ".meta").read().split())
    port, backend = int(meta["port"]), int(meta["backend"])
    kinds = sockets(stem, port, backend)
    out = subprocess.run(["perf", "script", "-i", stem + ".data", "-F", "pid,tid,time,event,trace"],
                         capture_output=True, text=True).stdout
    ent = re.compile(r"^\s*(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_enter:\s+NR (\d+) \(([0-9a-f]+)")
    ext = re.compile(r"^\s*(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_exit:\s+NR (\d+) = (-?\d+)")
    pending = {}
    per_tid = collections.defaultdict(list)  # tid -> [(time, kind)]
    calls = collections.Counter()
    epolls = collections.Counter()
    for line in out.splitlines():
        m = ent.match(line)
        if m:
            pid, tid, nr = int(m[1]), int(m[2]), int(m[4])
            calls[tid] += 1
            if nr in EPOLL:
                epolls[tid] += 1
            pending[tid] = (nr, int(m[5], 16), pid)
            continue
        m = ext.match(line)
        if not m:
            continue
        tid, t, ret = int(m[2]), float(m[3]), int(m[5])
        nr, fd, pid = pending.pop(tid, (None, None, None))
        if nr is None or ret <= 0:
            continue
        kind = kinds.get((pid, fd))
        if kind is None:
            continue
        if nr in READS:
            per_tid[tid].append((t, kind + "_in"))
        elif nr in WRITES:
            per_tid[tid].append((t, kind + "_out"))
    name = stem.rsplit("/", 1)[-1]
    for tid, seq in sorted(per_tid.items(), key=lambda kv: -len(kv[1])):
        n = collections.Counter(k for _, k in seq)
        if n["up_out"] < 100:
            continue
        # Each read in a run of reads of its side not broken by a write of the other side
        # (weighted per read), and each request's time from its read to a forward (FIFO).
        runs = {"client_in": [], "up_in": []}
        run = {"client_in": 0, "up_in": 0}
        closes = {"up_out": "client_in", "client_out": "up_in"}
        queues = {"client_in": collections.deque(), "up_in": collections.deque()}
        waits = {"client_in": [], "up_in": []}
        for t, k in seq:
            if k in run:
                run[k] += 1
                queues[k].append(t)
            else:
                side = closes[k]
                if run[side]:
                    runs[side] += [run[side]] * run[side]
                    run[side] = 0
                if queues[side]:
                    waits[side].append((t - queues[side].popleft()) * 1e6)
        print(f"{name} tid={tid} port={port} client_in={n['client_in']} up_out={n['up_out']} "
              f"up_in={n['up_in']} client_out={n['client_out']}")
        for side, label in (("client_in", "requests"), ("up_in", "answers")):
            r, w = runs[side], waits[side]
            print(f"  {label}: run mean={sum(r) / max(1, len(r)):.2f} p90={pct(r, 90)} "
                  f"p99={pct(r, 99)}  wait_us p50={pct(w, 50):.0f} p90={pct(w, 90):.0f} "
                  f"p99={pct(w, 99):.0f}")
        print(f"  per upstream write: epoll_wait={epolls[tid] / n['up_out']:.2f}"
              f" calls={calls[tid] / n['up_out']:.2f}")


if len(sys.argv) < 2:
    sys.exit(__doc__)
for stem in sys.argv[1:]:
    analyse(stem.removesuffix(".data"))
