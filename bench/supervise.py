#!/usr/bin/env python3
"""Supervision benchmark: chaind vs supervisord, same run, same machine.

Driven by bench/supervise.sh (which builds the binaries and installs supervisord).
Every process this script starts directly or through a daemon carries the environment
variable MARK_VAR=<run dir>, so that cleanup kills exactly our processes and nobody else's.

Usage: supervise.py --bin DIR --run DIR
  DIR/bin holds chaind, chainctl, demo, logspam (copied so that concurrent rebuilds of the
  target directory cannot change the binaries under a running benchmark).

Environment:
  BENCH_QUICK=1   fewer repetitions (smoke run)
  BENCH_N=100     instances per daemon
"""

import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from benchlib import BenchError, cli_main, comm, info, log

MARK_VAR = "BENCH_SUPERVISE_RUN"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
N = int(os.environ.get("BENCH_N", "100"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

COLD_RUNS = 1 if QUICK else 3
LS_RUNS = 5 if QUICK else 30
KILL_RUNS = 3 if QUICK else 10
DIRECT_DEMOS = N  # as many as the daemons run, so that both means are equally precise
LOG_RATE = 10000
LOG_SECONDS = 10
VERSION = "v1"

random.seed(12345)


# ---------------------------------------------------------------------------------------------
# /proc helpers


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
    except OSError:
        return None
    return out


def rss_kb(pid):
    st = proc_status(pid)
    if not st or "VmRSS" not in st:
        raise BenchError(f"pid {pid} has no VmRSS (gone?)")
    return int(st["VmRSS"].split()[0])


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime is field 14, stime 15.
    return int(rest[11]) + int(rest[12])


def state_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid):
    s = state_of(pid)
    return s is not None and s != "Z"


def environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    env = {}
    for item in data.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def children(pid):
    """Children of every thread of pid (/proc/PID/task/TID/children)."""
    kids = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def marked_pids(mark):
    """Every process whose environment carries MARK_VAR=mark (ours, nobody else's)."""
    needle = f"{MARK_VAR}={mark}".encode() + b"\0"
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    pids.append(int(name))
        except OSError:
            pass
    return [p for p in pids if p != os.getpid()]


def thread_stack_pointers(pid):
    """Stack pointer of every thread blocked in a system call (/proc/PID/task/TID/syscall)."""
    sps = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                parts = f.read().split()
        except OSError:
            continue
        if len(parts) >= 3 and parts[0] not in ("running", "-1"):
            sps.append(int(parts[-2], 16))
    return sps


def smaps_summary(pid):
    """RSS of a process by kind of mapping (kB): the program's binary, shared libraries,
    [heap] (brk), anonymous mappings that hold a thread's stack, other anonymous mappings
    (malloc arenas of non-main threads, large allocations), the main stack, other files."""
    exe = os.readlink(f"/proc/{pid}/exe")
    sps = thread_stack_pointers(pid)
    cats = {}
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                path = parts[5] if len(parts) > 5 else ""
                lo, hi = (int(x, 16) for x in first.split("-"))
                if path == exe:
                    cur = "binary"
                elif ".so" in path:
                    cur = "libs"
                elif path == "[heap]":
                    cur = "heap"
                elif path == "[stack]":
                    cur = "main_stack"
                elif path == "":
                    cur = "thread_stacks" if any(lo <= sp < hi for sp in sps) else "anon"
                else:
                    cur = "other"
            elif first == "Rss:":
                cats[cur] = cats.get(cur, 0) + int(line.split()[1])
    rollup = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                rollup[parts[0].rstrip(":")] = int(parts[1])
    return cats, rollup


def page_cache(path, keep):
    """Reads `path` whole into the page cache (keep), or drops its pages from it (pages that a
    running process maps stay)."""
    with open(path, "rb") as f:
        if keep:
            while f.read(1 << 20):
                pass
        else:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def report_memory(name, pid):
    try:
        cats, rollup = smaps_summary(pid)
    except OSError as e:
        info(f"{name}_smaps", error=str(e).replace(" ", "_"))
        return
    st = proc_status(pid) or {}
    info(
        f"{name}_smaps",
        rss_kb=rollup.get("Rss"),
        anonymous_kb=rollup.get("Anonymous"),
        file_backed_kb=rollup.get("Rss", 0) - rollup.get("Anonymous", 0),
        private_kb=rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
        shared_kb=rollup.get("Shared_Clean", 0) + rollup.get("Shared_Dirty", 0),
        threads=st.get("Threads"),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        **{f"in_{k}_kb": v for k, v in sorted(cats.items())},
    )


# ---------------------------------------------------------------------------------------------
# network helpers


def port_free(port):
    for host in ("127.0.0.1", "0.0.0.0"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def find_free_blocks(sizes, lo=30000, hi=32700, step=100):
    """Disjoint blocks of free ports below the ephemeral range, one per requested size."""
    blocks = []
    base = lo
    for size in sizes:
        while True:
            if base + size - 1 > hi:
                raise BenchError(f"no free block of {size} ports in {lo}-{hi}")
            if all(port_free(p) for p in range(base, base + size)):
                blocks.append((base, base + size - 1))
                base += size
                break
            base += step
    return blocks


def http_get(port, path="/", timeout=1.0):
    """Returns (status, headers dict, body) or None if nothing answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return None
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def answers(port, pid=None):
    r = http_get(port, timeout=0.5)
    if not r:
        return False
    status, headers, body = r
    if status != 200 or body.strip() != VERSION.encode():
        return False
    return pid is None or headers.get("x-pid") == str(pid)


# ---------------------------------------------------------------------------------------------
# stats


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_list(xs, nd=1):
    return ",".join(f"{x:.{nd}f}" for x in xs)


# ---------------------------------------------------------------------------------------------
# daemons


class Daemon:
    """Common driver interface; subclasses: Chain, Supervisord."""

    name = "?"

    def __init__(self, bench, tag):
        self.bench = bench
        self.dir = os.path.join(bench.run, tag)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.out = None

    @property
    def pid(self):
        return self.proc.pid

    def env(self):
        env = dict(os.environ)
        env[MARK_VAR] = self.bench.mark
        return env

    def spawn(self, argv):
        self.out = open(os.path.join(self.dir, "daemon.out"), "ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.dir,
            start_new_session=True,
        )
        self.bench.daemons.append(self)

    def check_alive(self):
        if self.proc.poll() is not None:
            tail = open(os.path.join(self.dir, "daemon.out"), errors="replace").read()[-2000:]
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; output:\n{tail}")

    def stop(self, timeout=30):
        """SIGTERM, wait; SIGKILL after timeout; then make sure its workloads are gone."""
        if self.proc is None:
            return None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"WARN {self.name} did not exit {timeout}s after SIGTERM; SIGKILL")
                self.proc.kill()
                self.proc.wait(5)
        took = time.monotonic() - t0
        if self.out:
            self.out.close()
        self.proc = None
        if self in self.bench.daemons:
            self.bench.daemons.remove(self)
        # Its workloads must be gone too.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = marked_pids(self.bench.mark)
            if not left:
                break
            time.sleep(0.05)
        else:
            left = marked_pids(self.bench.mark)
            log(f"WARN {self.name} left {len(left)} processes behind after stopping; killing {left[:10]}")
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        return took

    def new_child(self, before, want_comm, deadline):
        """Polls every 1 ms for a child not in `before` that has exec'd `want_comm`."""
        while True:
            for kid in children(self.pid) - before:
                if comm(kid) == want_comm:
                    return kid
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)


class Chain(Daemon):
    name = "chaind"

    def __init__(self, bench, tag):
        super().__init__(bench, tag)
        self.root = os.path.join(self.dir, "root")
        self.units = os.path.join(self.dir, "units")
        os.makedirs(self.units, exist_ok=True)
        self.sock = os.path.join(self.root, "chaind.sock")

    def write_demo_unit(self, n):
        with open(os.path.join(self.units, "demo.toml"), "w") as f:
            f.write(
                f'instances = {n}\n'
                f'[process]\n'
                f'command = "{self.bench.bin("demo")}"\n'
                f'[env]\n'
                f'VERSION = "{VERSION}"\n'
                f'{MARK_VAR} = "{self.bench.mark}"\n'
                # Like supervisord's default startsecs = 1: a process that lived 1 s counts as
                # started, and its exit is restarted at once (shorter lives back off).
                f'[restart]\n'
                f'min_uptime = "1s"\n'
            )

    def write_logspam_unit(self):
        with open(os.path.join(self.units, "logspam.toml"), "w") as f:
            f.write(
                f'port = "none"\n'
                f'[process]\n'
                f'command = "{self.bench.bin("logspam")}"\n'
                f'[env]\n'
                f'LOG_RATE = "{LOG_RATE}"\n'
                f'LOG_SECONDS = "{LOG_SECONDS}"\n'
                f'LOG_THEN_SLEEP = "1"\n'
                f'{MARK_VAR} = "{self.bench.mark}"\n'
            )

    def executables(self):
        return [self.bench.bin("chaind")]

    def start(self):
        a, b = self.bench.chain_ports
        self.spawn(
            [
                self.bench.bin("chaind"),
                "--root", self.root,
                "--units", self.units,
                "--port-range", f"{a}-{b}",
            ]
        )

    def ctl(self, *args, timeout=10):
        return subprocess.run(
            [self.bench.bin("chainctl"), "--socket", self.sock, *args],
            capture_output=True,
            timeout=timeout,
            env=self.env(),
        )

    def listing(self):
        r = self.ctl("ls", "--json")
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if os.path.exists(self.sock) and self.listing() is not None:
                return
            time.sleep(0.02)
        raise BenchError(f"chaind did not answer on {self.sock} within {timeout}s")

    def ports(self):
        """instance -> port, from `chainctl ls --json` (None while not answering)."""
        rows = self.listing()
        if rows is None:
            return None
        return {r["instance"]: r["port"] for r in rows if r.get("unit") == "demo" and r.get("port")}

    def instance_pids(self):
        rows = self.listing() or []
        return {r["instance"]: r["pid"] for r in rows if r.get("unit") == "demo" and r.get("pid")}

    def wait_running(self, instance, pid, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.listing() or []:
                if r.get("unit") == "demo" and r["instance"] == instance:
                    if r.get("pid") == pid and r.get("state") == "running":
                        return
            time.sleep(0.01)
        raise BenchError(f"chain: instance {instance} (pid {pid}) not running within {timeout}s")

    def status_cmd(self):
        return [self.bench.bin("chainctl"), "--socket", self.sock, "ls", "--json"]

    def log_files(self, unit):
        d = os.path.join(self.root, "logs")
        return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.startswith(unit + ".log")]


class Supervisord(Daemon):
    name = "supervisord"

    def __init__(self, bench, tag):
        super().__init__(bench, tag)
        self.conf = os.path.join(self.dir, "supervisord.conf")
        self.sock = os.path.join(self.dir, "supervisor.sock")
        self.childlogs = os.path.join(self.dir, "childlogs")
        os.makedirs(self.childlogs, exist_ok=True)
        self.programs = ""

    def header(self):
        return (
            f"[unix_http_server]\nfile={self.sock}\nchmod=0700\n\n"
            f"[supervisord]\nlogfile={self.dir}/supervisord.log\npidfile={self.dir}/supervisord.pid\n"
            f"childlogdir={self.childlogs}\nnodaemon=true\nminfds=4096\nminprocs=400\n\n"
            f"[rpcinterface:supervisor]\n"
            f"supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{self.sock}\n\n"
        )

    def write_demo_program(self, n):
        base = self.bench.sup_ports[0]
        self.programs += (
            f"[program:demo]\n"
            f"command={self.bench.bin('demo')}\n"
            f"process_name=demo_%(process_num)d\n"
            f"numprocs={n}\nnumprocs_start={base}\n"
            f'environment=PORT="%(process_num)d",VERSION="{VERSION}",{MARK_VAR}="{self.bench.mark}"\n'
            f"autorestart=true\n\n"
        )

    def write_logspam_program(self):
        self.programs += (
            f"[program:logspam]\n"
            f"command={self.bench.bin('logspam')}\n"
            f'environment=LOG_RATE="{LOG_RATE}",LOG_SECONDS="{LOG_SECONDS}",LOG_THEN_SLEEP="1",'
            f'{MARK_VAR}="{self.bench.mark}"\n'
            f"stdout_logfile={self.dir}/logspam.out\n"
            f"stdout_logfile_maxbytes=1GB\nstdout_logfile_backups=10\n"
            f"autorestart=true\n\n"
        )

    def executables(self):
        """The interpreter of the supervisord script (its shebang) and the script."""
        with open(self.bench.supervisord, "rb") as f:
            first = f.readline().decode(errors="replace")
        exes = [self.bench.supervisord]
        if first.startswith("#!"):
            interp = first[2:].split()[0]
            if os.path.exists(interp):
                exes.append(os.path.realpath(interp))
        return exes

    def start(self):
        with open(self.conf, "w") as f:
            f.write(self.header() + self.programs)
        self.spawn([self.bench.supervisord, "-c", self.conf])

    def ctl_status(self):
        return subprocess.run(
            [self.bench.supervisorctl, "-c", self.conf, "status"],
            capture_output=True,
            timeout=20,
            env=self.env(),
        )

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if os.path.exists(self.sock):
                r = self.ctl_status()
                # 0: all running; 3: some not running; 4: no such process. Anything that is
                # not a connection error (2 / "refused") means the server answers.
                if r.returncode in (0, 3) or (r.returncode == 4 and b"refused" not in r.stdout):
                    return
            time.sleep(0.05)
        raise BenchError(f"supervisord did not answer on {self.sock} within {timeout}s")

    def port_of(self, instance):
        return self.bench.sup_ports[0] + instance

    def statuses(self):
        r = self.ctl_status()
        out = {}
        for line in r.stdout.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = (parts[1], line)
        return out

    def instance_pids(self):
        """instance -> pid of running demo processes, from the children of supervisord."""
        base = self.bench.sup_ports[0]
        out = {}
        for kid in children(self.pid):
            if comm(kid) == "demo":
                port = environ(kid).get("PORT")
                if port:
                    out[int(port) - base] = kid
        return out

    def wait_running(self, instance, pid, timeout=15):
        name = f"demo:demo_{self.port_of(instance)}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.statuses().get(name)
            if st and st[0] == "RUNNING" and f"pid {pid}," in st[1]:
                return
            time.sleep(0.05)
        raise BenchError(f"supervisord: {name} (pid {pid}) not RUNNING within {timeout}s")

    def status_cmd(self):
        return [self.bench.supervisorctl, "-c", self.conf, "status"]


# ---------------------------------------------------------------------------------------------
# measures


class Bench:
    def __init__(self, bindir, run):
        self.bindir = bindir
        self.run = run
        self.mark = run
        self.daemons = []
        self.direct = []
        self.results = {}  # measure -> {"chain": v, "supervisord": v}
        self.supervisord = shutil.which("supervisord")
        self.supervisorctl = shutil.which("supervisorctl")
        if not self.supervisord or not self.supervisorctl:
            raise BenchError("supervisord/supervisorctl not found in PATH")
        (c, s) = find_free_blocks([2 * N, N])
        self.chain_ports = c
        self.sup_ports = s
        info("ports", chain=f"{c[0]}-{c[1]}", supervisord=f"{s[0]}-{s[1]}")

    def bin(self, name):
        return os.path.join(self.bindir, name)

    def record(self, measure, daemon, value):
        self.results.setdefault(measure, {})[daemon] = value

    # -- helpers -------------------------------------------------------------------------------

    def settle_rss(self, pid, samples=3, gap=0.5):
        xs = []
        for _ in range(samples):
            xs.append(rss_kb(pid))
            time.sleep(gap)
        return int(median(xs))

    def wait_all_answer(self, d, ports_fn, deadline):
        """Polls until every instance's port answers GET / with the version.

        ports_fn() returns instance->port (or None while unknown). Returns the monotonic time
        at which the last one answered."""
        ok = set()
        ports = {}
        while True:
            d.check_alive()
            if len(ports) < N:
                got = ports_fn()
                if got:
                    ports = got
            for inst, port in ports.items():
                if inst not in ok and answers(port):
                    ok.add(inst)
            if len(ok) >= N:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{d.name}: only {len(ok)}/{N} instances answered HTTP "
                    f"({len(ports)} ports known) before the timeout"
                )
            time.sleep(0.005)

    # -- 2. direct demo baseline ---------------------------------------------------------------

    def direct_demo_rss(self):
        log(f"direct: starting {DIRECT_DEMOS} demo processes without a supervisor")
        procs = []
        # Same environment as the daemons pass on (both hand their own environment down).
        env = dict(os.environ, VERSION=VERSION, PORT="0", **{MARK_VAR: self.mark})
        for _ in range(DIRECT_DEMOS):
            p = subprocess.Popen([self.bin("demo")], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            self.direct.append(p)
            procs.append(p)
        rss = []
        for p in procs:
            ready, _, _ = select.select([p.stdout], [], [], 10)
            if not ready:
                raise BenchError("direct demo printed nothing within 10s")
            line = p.stdout.readline().decode()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if not m:
                raise BenchError(f"direct demo did not start: {line!r}")
            if not answers(int(m.group(1))):
                raise BenchError("direct demo does not answer HTTP")
        time.sleep(1.0)
        for p in procs:
            rss.append(rss_kb(p.pid))
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
            self.direct.remove(p)
        info("direct_demo_rss_kb", n=len(rss), mean=f"{statistics.mean(rss):.1f}", median=median(rss),
             min=min(rss), max=max(rss), stdev=f"{statistics.stdev(rss):.0f}")
        return statistics.mean(rss)

    # -- 1. idle RSS ---------------------------------------------------------------------------

    def idle(self, make):
        """Idle RSS, twice. The RESULT is taken with the daemon's executable dropped from the
        page cache first, as after a reboot: its code then comes in through the daemon's own
        page faults. The `_warm` INFO lines are taken right after the executable was read
        whole (as a checksum, or `cp` at install time, leaves it): the kernel then holds it in
        large folios and maps more of each around a fault, so the same code reads as more RSS.
        """
        for state in ("cold", "warm"):
            d = make(state)
            for exe in d.executables():
                page_cache(exe, keep=(state == "warm"))
            log(f"{d.name}: idle (no programs), executable {state} in the page cache")
            d.start()
            d.wait_ready()
            time.sleep(2.0)
            v = self.settle_rss(d.pid)
            suffix = "" if state == "cold" else "_warm"
            report_memory(f"{d.name}_idle{suffix}", d.pid)
            d.stop()
            if state == "cold":
                self.record("idle_rss_kb", d.name, v)
            else:
                info(f"{d.name}_idle_rss_warm_kb", value=v)
            log(f"{d.name}: idle RSS {v} kB ({state})")

    # -- 5. cold start, then 1-4 with N instances running -------------------------------------

    def cold_start(self, make, label):
        """Runs COLD_RUNS cold starts; returns the daemon of the last one, still running."""
        times = []
        d = None
        for i in range(COLD_RUNS):
            if d is not None:
                d.stop()
            d = make(i)
            log(f"{d.name}: cold start {i + 1}/{COLD_RUNS} of {N} instances")
            t0 = time.monotonic()
            d.start()
            if isinstance(d, Chain):
                ports_fn = d.ports
            else:
                ports = {k: d.port_of(k) for k in range(N)}
                ports_fn = lambda: ports  # noqa: E731
            t1 = self.wait_all_answer(d, ports_fn, t0 + 120)
            times.append((t1 - t0) * 1000)
            log(f"{d.name}: all {N} answered after {times[-1]:.0f} ms")
        info(f"{label}_cold_start_ms", samples=fmt_list(times, 0))
        self.record("cold_start_100_ms", label, median(times))
        return d

    def with_instances(self, d, direct_rss):
        # Let start-up settle (restart windows, stats sampling) before measuring.
        time.sleep(3.0)
        pids = d.instance_pids()
        if len(pids) != N:
            raise BenchError(f"{d.name}: {len(pids)} instance pids, expected {N}")
        # No wrapper: the listed pid is the demo itself and a direct child of the daemon.
        kids = children(d.pid)
        wrapped = [p for p in pids.values() if comm(p) != "demo" or p not in kids]
        info(f"{d.name}_exec_direct", instances=len(pids), not_direct_children=len(wrapped))
        v = self.settle_rss(d.pid)
        self.record("rss_100_kb", d.name, v)
        report_memory(f"{d.name}_{N}", d.pid)
        log(f"{d.name}: RSS with {N} instances {v} kB")

        if self.results.get("idle_rss_kb", {}).get(d.name) is not None:
            grow = (v - self.results["idle_rss_kb"][d.name]) / N
            info(f"{d.name}_daemon_growth_per_instance_kb", value=f"{grow:.1f}")
        info(f"{d.name}_bg_cpu_pct_{N}", value=f"{self.cpu_pct(d.pid, 5.0):.2f}")

        # Extra RSS per instance: mean RSS of the N daemon-started demos minus the mean of N
        # demos started directly (RSS of identical demos spreads over ~300 kB, so the
        # difference of two means of N has a standard error of roughly 10 kB).
        inst_rss = [rss_kb(p) for p in pids.values()]
        m = statistics.mean(inst_rss)
        info(f"{d.name}_instance_rss_kb", n=len(inst_rss), mean=f"{m:.1f}", median=median(inst_rss),
             min=min(inst_rss), max=max(inst_rss), stdev=f"{statistics.stdev(inst_rss):.0f}")
        self.record("extra_rss_per_instance_kb", d.name, round(m - direct_rss))

        # 3. listing latency
        cmd = d.status_cmd()
        for _ in range(2):  # warm-up
            subprocess.run(cmd, capture_output=True, timeout=20)
        lat = []
        for _ in range(LS_RUNS):
            t0 = time.monotonic()
            r = subprocess.run(cmd, capture_output=True, timeout=20)
            lat.append((time.monotonic() - t0) * 1000)
            if isinstance(d, Chain) and r.returncode != 0:
                raise BenchError(f"chainctl ls failed: {r.stderr!r}")
        info(f"{d.name}_ls_ms", runs=len(lat), median=f"{median(lat):.2f}",
             min=f"{min(lat):.2f}", max=f"{max(lat):.2f}")
        # Process start-up alone (no request): how much of the above is the client itself.
        noop = [self.bin("chainctl"), "--version"] if isinstance(d, Chain) else [self.supervisorctl, "-h"]
        lat0 = []
        for _ in range(max(5, LS_RUNS // 2)):
            t0 = time.monotonic()
            subprocess.run(noop, capture_output=True, timeout=20)
            lat0.append((time.monotonic() - t0) * 1000)
        info(f"{d.name}_client_noop_ms", cmd="_".join(os.path.basename(x) for x in noop),
             median=f"{median(lat0):.2f}")
        self.record("ls_latency_ms", d.name, median(lat))

        # 4. SIGKILL -> new process, -> answering HTTP
        to_pid, to_http = self.kill_runs(d, d.instance_pids, d.wait_running, random.sample(range(N), KILL_RUNS))
        info(f"{d.name}_kill_to_new_pid_ms", samples=fmt_list(to_pid))
        info(f"{d.name}_kill_to_http_ms", samples=fmt_list(to_http))
        self.record("kill_to_new_pid_ms", d.name, median(to_pid))
        self.record("kill_to_http_ms", d.name, median(to_http))
        log(f"{d.name}: kill->pid {median(to_pid):.1f} ms, kill->http {median(to_http):.1f} ms")

        if isinstance(d, Chain):
            self.chain_no_backoff(d)

        took = d.stop()
        info(f"{d.name}_stop_{N}_s", seconds=f"{took:.2f}")

    def kill_runs(self, d, pids_fn, wait_running, victims):
        to_pid, to_http = [], []
        for inst in victims:
            time.sleep(random.uniform(0.2, 1.2))  # random phase vs. any poll loop
            old = pids_fn().get(inst)
            if not old:
                raise BenchError(f"{d.name}: instance {inst} has no pid")
            before = children(d.pid)
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            new = d.new_child(before, "demo", t0 + 15)
            t1 = time.monotonic()
            if new is None:
                raise BenchError(f"{d.name}: no replacement for instance {inst} within 15s")
            deadline = t1 + 15
            # comm changes early in exec, the new environment shows up a moment later.
            while not environ(new).get("PORT"):
                if time.monotonic() > deadline or not alive(new):
                    raise BenchError(f"{d.name}: replacement pid {new} has no PORT")
                time.sleep(0.0005)
            port = int(environ(new)["PORT"])
            while not answers(port, new):
                if time.monotonic() > deadline:
                    raise BenchError(f"{d.name}: replacement pid {new} never answered on {port}")
                time.sleep(0.001)
            t2 = time.monotonic()
            to_pid.append((t1 - t0) * 1000)
            to_http.append((t2 - t0) * 1000)
            wait_running(inst, new)
        return to_pid, to_http

    def chain_no_backoff(self, d):
        """Informational: the same kill test on a unit with `restart.delay = "0s"`, to separate
        chaind's own reaction time from its default 100 ms restart backoff."""
        with open(os.path.join(d.units, "nobackoff.toml"), "w") as f:
            f.write(
                f'[process]\ncommand = "{self.bin("demo")}"\n'
                f'[restart]\ndelay = "0s"\nmax_restarts = 1000\n'
                f'[env]\nVERSION = "{VERSION}"\n{MARK_VAR} = "{self.mark}"\n'
            )

        def rows():
            return [r for r in d.listing() or [] if r.get("unit") == "nobackoff"]

        def pids():
            return {r["instance"]: r["pid"] for r in rows() if r.get("pid")}

        def wait_running(inst, pid, timeout=15):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(r["pid"] == pid and r["state"] == "running" for r in rows()):
                    return
                time.sleep(0.01)
            raise BenchError(f"chain: nobackoff pid {pid} not running within {timeout}s")

        deadline = time.monotonic() + 15
        while not any(r.get("state") == "running" for r in rows()):
            if time.monotonic() > deadline:
                r = d.ctl("status", "nobackoff")
                raise BenchError(f"chain: unit nobackoff did not start: {r.stdout!r} {r.stderr!r}")
            time.sleep(0.02)
        to_pid, to_http = self.kill_runs(d, pids, wait_running, [0] * KILL_RUNS)
        info("chaind_nobackoff_kill_to_new_pid_ms", median=f"{median(to_pid):.1f}", samples=fmt_list(to_pid))
        info("chaind_nobackoff_kill_to_http_ms", median=f"{median(to_http):.1f}", samples=fmt_list(to_http))

    def cpu_pct(self, pid, seconds):
        c0, t0 = cpu_ticks(pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_ticks(pid), time.monotonic()
        return (c1 - c0) / CLK_TCK / (t1 - t0) * 100

    # -- 6. log throughput ---------------------------------------------------------------------

    def logs(self, d, files_fn, line_re):
        log(f"{d.name}: logspam {LOG_RATE} lines/s for {LOG_SECONDS}s")
        d.start()
        deadline = time.monotonic() + 20
        spam = d.new_child(set(), "logspam", deadline)
        if spam is None:
            d.check_alive()
            raise BenchError(f"{d.name}: logspam did not start")
        c0, t0 = cpu_ticks(d.pid), time.monotonic()
        deadline = t0 + LOG_SECONDS + 30
        done = None
        while done is None:
            time.sleep(0.05)
            d.check_alive()
            for f in files_fn():
                with open(f, "rb") as fh:
                    fh.seek(max(0, os.path.getsize(f) - 4096))
                    m = re.search(rb"logspam done (\d+)", fh.read())
                    if m:
                        done = int(m.group(1))
            if time.monotonic() > deadline:
                raise BenchError(f"{d.name}: 'logspam done' never reached the log")
        c1, t1 = cpu_ticks(d.pid), time.monotonic()
        spam_cpu = cpu_ticks(spam) / CLK_TCK
        pct = (c1 - c0) / CLK_TCK / (t1 - t0) * 100
        seen = set()
        other = 0
        for f in files_fn():
            with open(f, "rb") as fh:
                for line in fh:
                    m = line_re.match(line)
                    if m:
                        seen.add(int(m.group(1)))
                    else:
                        other += 1
        lost = done - len(seen)
        bg = self.cpu_pct(d.pid, 5.0)
        info(f"{d.name}_logs_bg_cpu_pct_after", value=f"{bg:.2f}")
        info(f"{d.name}_logs", written=done, distinct_seen=len(seen), other_lines=other,
             files=len(files_fn()), cpu_s=f"{(c1 - c0) / CLK_TCK:.2f}", wall_s=f"{t1 - t0:.2f}",
             logspam_cpu_s=f"{spam_cpu:.2f}")
        self.record("log_cpu_pct", d.name, pct)
        self.record("log_lines_lost", d.name, lost)
        log(f"{d.name}: log CPU {pct:.2f}% of a core, {lost} lines lost")
        d.stop()

    # -- driver --------------------------------------------------------------------------------

    def main(self):
        info("loadavg_start", value=open("/proc/loadavg").read().split()[0])
        # What spawning any command costs from this harness (fork/exec + wait), for scale.
        lat = []
        for _ in range(10):
            t0 = time.monotonic()
            subprocess.run(["/bin/true"], capture_output=True, timeout=10)
            lat.append((time.monotonic() - t0) * 1000)
        info("spawn_true_ms", median=f"{median(lat):.2f}")
        direct = self.direct_demo_rss()

        # chaind
        self.idle(lambda state: Chain(self, f"chain-idle-{state}"))

        def make_chain(i):
            c = Chain(self, f"chain-cold{i}")
            c.write_demo_unit(N)
            return c

        self.with_instances(self.cold_start(make_chain, "chaind"), direct)
        c = Chain(self, "chain-logs")
        c.write_logspam_unit()
        self.logs(c, lambda: c.log_files("logspam"),
                  re.compile(rb"^\S+ 0 out line (\d+) x{60}\n$"))

        # supervisord
        self.idle(lambda state: Supervisord(self, f"sup-idle-{state}"))

        def make_sup(i):
            s = Supervisord(self, f"sup-cold{i}")
            s.write_demo_program(N)
            return s

        self.with_instances(self.cold_start(make_sup, "supervisord"), direct)
        s = Supervisord(self, "sup-logs")
        s.write_logspam_program()
        self.logs(s, lambda: sorted(
            os.path.join(s.dir, f) for f in os.listdir(s.dir) if f.startswith("logspam.out")),
            re.compile(rb"^line (\d+) x{60}\n$"))

        info("loadavg_end", value=open("/proc/loadavg").read().split()[0])
        self.print_results()

    def print_results(self):
        order = [
            ("idle_rss_kb", "{:.0f}"),
            ("rss_100_kb", "{:.0f}"),
            ("extra_rss_per_instance_kb", "{:.0f}"),
            ("ls_latency_ms", "{:.2f}"),
            ("kill_to_new_pid_ms", "{:.1f}"),
            ("kill_to_http_ms", "{:.1f}"),
            ("cold_start_100_ms", "{:.0f}"),
            ("log_cpu_pct", "{:.2f}"),
            ("log_lines_lost", "{:.0f}"),
        ]
        for measure, fmt in order:
            r = self.results.get(measure, {})
            c, s = r.get("chaind"), r.get("supervisord")
            if c is None or s is None:
                print(f"RESULT {measure} chain=missing supervisord=missing ratio=n/a")
                continue
            ratio = "n/a" if s == 0 else sig(c / s)
            print(f"RESULT {measure} chain={fmt.format(c)} supervisord={fmt.format(s)} ratio={ratio}")

    def cleanup(self):
        for p in list(self.direct):
            try:
                p.kill()
            except OSError:
                pass
        for d in list(self.daemons):
            try:
                d.stop(timeout=15)
            except Exception as e:  # keep cleaning
                log(f"WARN stopping {d.name}: {e}")
        left = marked_pids(self.mark)
        if left:
            log(f"cleanup: killing {len(left)} leftover processes")
            for p in left:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass


def sig(x):
    """2-3 significant digits, no exponent."""
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


if __name__ == "__main__":
    sys.exit(cli_main(Bench))
