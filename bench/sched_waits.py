#!/usr/bin/env python3
"""Where a proxy worker waits for a core, from a `perf sched record` of a proxy benchmark sample.

Usage: bench/sched_waits.py FILE.data WORKER

WORKER is a thread name prefix (`chain-proxy` for chaind's workers, `nginx`, `haproxy`); the
busiest thread of that name is analysed. Record the samples with the load generator wrapped:

  BENCH_LOADGEN_WRAP=bench/sched-record.sh BENCH_ROWS=newconn_paced BENCH_WORKERS=1 \
    BENCH_PROXIES=chain,nginx BENCH_RUNS=1 BENCH_DURATION=5 bash bench/proxy.sh

(bench/sched-record.sh records the 5 s samples only, system-wide, into
$SCHED_DIR/<proxy port>-<ns>.data; SCHED_DIR defaults to /tmp/sched.) Prints how often the worker
was woken and by whom, its waits for a core after a wake-up and after a preemption (p50/p90/p99,
the number over 1 ms), and, during the waits over 1 ms, what ran on the core it waited on and on
the other core (`idle` there means a core sat idle while the worker waited). Written for the
2-core machine of the benchmarks.
"""

import collections
import re
import subprocess
import sys

if len(sys.argv) != 3:
    sys.exit(__doc__)
path, worker = sys.argv[1], sys.argv[2]
out = subprocess.run(["perf", "script", "-i", path, "-F", "cpu,time,event,trace"],
                     capture_output=True, text=True).stdout
sw = re.compile(r"\[(\d+)\]\s+([\d.]+):\s+sched:sched_switch:\s+prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)")
wk = re.compile(r"\[(\d+)\]\s+([\d.]+):\s+sched:sched_waking:\s+comm=(.*?) pid=(\d+) prio=\d+ target_cpu=(\d+)")
mg = re.compile(r"\[(\d+)\]\s+([\d.]+):\s+sched:sched_migrate_task:\s+comm=(.*?) pid=(\d+) prio=\d+ orig_cpu=(\d+) dest_cpu=(\d+)")
ev = []
for line in out.splitlines():
    m = sw.search(line)
    if m:
        ev.append(("S", int(m[1]), float(m[2]), m[3], int(m[4]), m[5], m[6], int(m[7])))
        continue
    m = wk.search(line)
    if m:
        ev.append(("W", int(m[1]), float(m[2]), m[3], int(m[4]), int(m[5])))
        continue
    m = mg.search(line)
    if m:
        ev.append(("M", int(m[1]), float(m[2]), m[3], int(m[4]), int(m[6])))
# per-CPU segments and the busiest thread called `worker`
cur, segs, runtime = {}, collections.defaultdict(list), collections.Counter()
for e in ev:
    if e[0] != "S":
        continue
    _, cpu, t, pc, pp, ps, nc, np_ = e
    if cpu in cur:
        comm, pid, since = cur[cpu]
        segs[cpu].append((since, t, comm, pid))
        if comm.startswith(worker):
            runtime[pid] += t - since
    cur[cpu] = (nc if np_ else "idle", np_, t)
wpid = runtime.most_common(1)[0][0]
def who(cpu, a, b):
    c = collections.Counter()
    for s, e, comm, pid in segs[cpu]:
        if e <= a or s >= b:
            continue
        name = "worker" if pid == wpid else re.sub(r"[/\d:.]+$", "", comm)
        c[name] += min(e, b) - max(s, a)
    return c
waits = {"preempted": [], "woken": []}
long_same, long_other = collections.Counter(), collections.Counter()
resumed_elsewhere = 0
# A wait: (start, kind, [(since, cpu)]): the run queue it sits on, which a migration changes
# (sched_waking names the CPU the task last ran on; a migration right after it, the one picked).
state = None
for e in ev:
    if e[0] == "W":
        if e[4] == wpid and state is None:
            state = (e[2], "woken", [(e[2], e[5])])
        continue
    if e[0] == "M":
        if e[4] == wpid and state is not None:
            state[2].append((e[2], e[5]))
        continue
    _, cpu, t, pc, pp, ps, nc, np_ = e
    if pp == wpid:
        state = (t, "preempted", [(t, cpu)]) if ps.startswith("R") else None
    if np_ == wpid and state:
        since, kind, queues = state
        d = t - since
        waits[kind].append(d)
        if d > 0.001:
            bounds = [q[0] for q in queues[1:]] + [t]
            for (a, qcpu), b in zip(queues, bounds):
                long_same.update(who(qcpu, a, b))
                long_other.update(who(1 - qcpu, a, b))
            resumed_elsewhere += cpu != queues[0][1]
        state = None
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))] * 1e3 if v else float("nan")
span = ev[-1][2] - ev[0][2]
print(f"{worker} pid {wpid}: ran {runtime[wpid]:.2f} s of {span:.2f} s")
for k, v in waits.items():
    print(f"  {k}: n={len(v)} p50={pct(v,.5):.3f} p90={pct(v,.9):.3f} p99={pct(v,.99):.3f} ms, "
          f"over 1 ms: {sum(1 for x in v if x > .001)}, total {sum(v)*1e3:.0f} ms")
print(f"  waits over 1 ms that ended on another CPU than they began: {resumed_elsewhere}")
fmt = lambda c: ", ".join(f"{k} {v*1e3:.0f}" for k, v in c.most_common(5))
print("  during waits over 1 ms, ms on the CPU whose queue it was in:", fmt(long_same))
print("  ... and on the other CPU:", fmt(long_other))
# who wakes the worker: the task running on the CPU where sched_waking fired
cur2 = {}
wakers = collections.Counter()
for e in ev:
    if e[0] == "S":
        cur2[e[1]] = e[6] if e[7] else "idle"
    elif e[0] == "W" and e[4] == wpid:
        wakers[re.sub(r"[/\d:.]+$", "", cur2.get(e[1], "?"))] += 1
print("  woken by (task on the waking CPU):", ", ".join(f"{k} {v}" for k, v in wakers.most_common(6)))
