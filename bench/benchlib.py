"""Helpers shared by the benchmark drivers (bench/*_bench.py, bench/supervise.py): output lines,
/proc lookups, finding and killing exactly the processes a run started, and the common `main`.

Each driver is run by its shell script (bench/*.sh) with the bench directory as the script's
directory, so `import benchlib` finds this file.
"""

import argparse
import os
import signal
import sys
import time


class BenchError(Exception):
    pass


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def info(key, **kv):
    """Machine-greppable detail lines: `INFO key k=v ...`."""
    print("INFO " + key + " " + " ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


def children(pid):
    """The direct children of every thread of `pid`."""
    kids = set()
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/children") as f:
                    kids.update(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def our_pids(run, mark_var):
    """Every process started by a benchmark run: `mark_var=run` in its environment, or its
    working directory under `run` (nginx rewrites its environment area for process titles)."""
    me = {os.getpid(), os.getppid()}
    needle = f"{mark_var}={run}".encode() + b"\0"
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in me:
            continue
        pid = int(d)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if cwd == run or cwd.startswith(run + "/"):
            out.append(pid)
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    out.append(pid)
        except OSError:
            pass
    return out


def kill_ours(run, mark_var):
    """SIGKILL to whatever a run left behind (see `our_pids`)."""
    left = our_pids(run, mark_var)
    if left:
        log(f"cleanup: killing {len(left)} leftover processes {left[:10]}")
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def run_main(make_bench):
    """Runs `make_bench().main()`, turning SIGTERM, SIGINT and SIGHUP into an orderly exit and
    always calling the bench's `cleanup()`; returns the process exit code."""

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    bench = None
    try:
        bench = make_bench()
        bench.main()
    except BenchError as e:
        print(f"ERROR {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if bench:
            bench.cleanup()
    return 0


def cli_main(make_bench):
    """The `main` of a driver taking `--bin DIR --run DIR`: `make_bench(bin, run)` under
    [`run_main`]."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--run", required=True)
    args = ap.parse_args()
    return run_main(lambda: make_bench(args.bin, args.run))
