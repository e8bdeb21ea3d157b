#!/usr/bin/env python3
"""Container benchmark: chain's container units against docker compose, same run, same machine,
same image (tests/images/build.sh: busybox + the demo app).

Driven by bench/containers.sh (which builds the binaries and the image, installs nginx and wrk,
maps bench.local to 127.0.0.1 and cleans up). Every process this script starts runs with its
working directory under the run directory or carries BENCH_CONTAINERS_RUN=<run dir> in its
environment; every container carries the label cbench.run=<run id>, and every engine object
(compose projects, networks) is named cbench<run id>...: cleanup finds exactly ours.

The app is the demo (examples/demo.rs) in the container: `GET /` answers its VERSION,
`/health` 200, and SIGTERM stops accepting and finishes in-flight requests.

Measures:
  1. start_20_healthy_ms: 20 instances of the image, each with an HTTP health check on /health
     at the same interval on both sides (BENCH_HEALTH_INTERVALS, first one in the RESULT line).
       chain:   the unit file (instances = 20) is written, then the clock starts and
                `chainctl apply` runs; it stops when `chainctl ls --json` shows the 20
                instances with state "running" and ready (health check passed), polled every
                50 ms. chaind was already running, with nothing else.
       compose: the clock starts and `docker compose up -d` runs (a service with scale 20 and
                a healthcheck `wget -q -O- http://127.0.0.1:8080/health`, start_period 0s); it
                stops when `docker ps --filter health=healthy` lists the 20, polled every 50 ms.
     Runs alternate chain, compose, chain, ...; median of START_RUNS each; everything is torn
     down between runs (unit removed and applied / `compose down`) and waited for.
  2. rolling deploys of 4 instances under wrk load through an HTTPS proxy:
       chain:   a unit with instances = 4, a [[route]] for bench.local on chaind's HTTPS
                listener, [deploy] strategy = "rolling"; each deploy is
                `chainctl deploy web --set env.VERSION=vN --wait`.
       compose: the service with scale 4, each replica published on one port of a 4-port range
                on 127.0.0.1, behind nginx (TLS with the same certificate, upstream = those 4
                ports, keep-alive); each deploy is `VERSION=vN docker compose up -d`, which
                recreates the 4 containers.
     wrk -t2 -c64 (keep-alive) on https://bench.local:<port>/ for the whole run with
     bench/deploy.lua (counts every status outside 2xx and the version of each body), a sampler
     (GET / every 50 ms on one keep-alive connection), DEPLOYS deploys back to back alternating
     v2, v1, ...; after each deploy, a flip check: 12 answers in a row with the new version.

Output ends with:
  RESULT start_20_healthy_ms chain=<ms> compose=<ms> ratio=<chain/compose>
  RESULT rolling_requests chain=<n> compose=<n>
  RESULT rolling_non2xx chain=<n> compose=<n>
  RESULT rolling_socket_errors chain=<n> compose=<n>
  RESULT rolling_deploys chain=<n> compose=<n>
  RESULT rolling_flips chain=<n> compose=<n>

Usage: containers_bench.py --bin DIR --run DIR --image REF --run-id ID
       (DIR holds chaind and chainctl; REF is the local image)

Environment:
  BENCH_QUICK=1               1 start run per side and interval, 2 deploys
  BENCH_START_RUNS=N          start runs per side and interval (default 3)
  BENCH_HEALTH_INTERVALS=1s,250ms  health-check intervals of the start measure
  BENCH_DEPLOYS=N             deploys per side (default 5)
  BENCH_MEASURES=start,rolling
  BENCH_COMPOSE="docker compose" or "docker-compose"  (default: whichever exists)
"""

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BenchError, info, kill_ours, log, run_main  # noqa: E402
# Shared, side-effect-free helpers of the process deploy benchmark: HTTPS client (SNI
# bench.local), sampler, flip check, wrk output parser, free-port search, logging.
from deploy_bench import (  # noqa: E402
    HOST, Sampler, answers, confirm, fmt_s, free_block, iso, log_sizes, nginx_failures, parse_iso,
    parse_wrk, short, wait_until, write_nginx_conf)

MARK_VAR = "BENCH_CONTAINERS_RUN"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
START_N = 20
START_RUNS = int(os.environ.get("BENCH_START_RUNS", "1" if QUICK else "3"))
HEALTH_INTERVALS = [x.strip() for x in os.environ.get("BENCH_HEALTH_INTERVALS", "1s,250ms").split(",")
                    if x.strip()]
DEPLOYS = int(os.environ.get("BENCH_DEPLOYS", "2" if QUICK else "5"))
MEASURES = [x for x in os.environ.get("BENCH_MEASURES", "start,rolling").split(",") if x]
INSTANCES = 4
APP_PORT = 8080  # compose: the port the demo listens on inside each container
WRK_THREADS = 2
WRK_CONNS = 64
WARMUP = 2.0
COOLDOWN = 3.0
POLL = 0.05
START_TIMEOUT = 180
DEPLOY_TIMEOUT = 300
SETTLE = 2.0  # pause after a teardown, before the next start run


def ms_of(duration):
    """`1s`, `250ms` -> milliseconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", duration)
    if not m:
        raise BenchError(f"bad interval {duration!r} in BENCH_HEALTH_INTERVALS (use e.g. 1s or 250ms)")
    return float(m.group(1)) * (1 if m.group(2) == "ms" else 1000)


def parse_time(s):
    """RFC 3339 from chaind or the engine (`...Z` or `...+00:00`, any fraction) -> epoch seconds."""
    if not s:
        return None
    s = re.sub(r"\+00:00$", "Z", s.strip())
    return parse_iso(s)


def timeline(wall0, started, ready):
    """ms from the start of the clock to the first and last container start and the last ready."""
    rel = lambda xs: [(x - wall0) * 1000 for x in xs if x is not None]  # noqa: E731
    st, rd = rel(started), rel(ready)
    return {"containers_started": len(st),
            "first_started_ms": f"{min(st):.0f}" if st else "n/a",
            "last_started_ms": f"{max(st):.0f}" if st else "n/a",
            "last_ready_ms": f"{max(rd):.0f}" if rd else "n/a"}


def docker_proxies(ports):
    """How many docker-proxy processes forward one of these host ports."""
    n = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"docker-proxy") and b"-host-port" in argv:
            i = argv.index(b"-host-port")
            if i + 1 < len(argv) and argv[i + 1].decode(errors="replace").isdigit() \
                    and int(argv[i + 1]) in ports:
                n += 1
    return n


class CpuMonitor(threading.Thread):
    """CPU time of every process, once a second, split into ours (marked or under the run
    directory), the engine's (dockerd, containerd and its shims, docker-proxy, runc, and every
    process in a container's cgroup) and foreign (everything else: another engineer's build or
    benchmark), per phase of the benchmark. Processes that start and end between two samples are
    missed, so foreign CPU is a lower bound."""

    ENGINE = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy",
              "runc", "docker-init")

    def __init__(self, run):
        super().__init__(daemon=True)
        self.run_dir = run
        self.needle = f"{MARK_VAR}={run}".encode() + b"\0"
        self.hz = os.sysconf("SC_CLK_TCK")
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.last = {}  # (pid, starttime) -> ticks
        self.kind = {}  # (pid, starttime) -> (category, comm)
        self.current = None
        self.phases = {}  # name -> {"t0", "t1", "ticks": Counter((category, comm))}
        self.sample()  # baseline

    def classify(self, pid, comm):
        if comm.startswith(self.ENGINE):
            return "engine"
        try:  # dockerd and runc re-exec themselves (/proc/self/exe): comm "exe"
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")).startswith(self.ENGINE):
                return "engine"
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                if "docker" in f.read():
                    return "engine"
        except OSError:
            pass
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if cwd == self.run_dir or cwd.startswith(self.run_dir + "/"):
                return "ours"
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if self.needle in f.read() + b"\0":
                    return "ours"
        except OSError:
            pass
        if pid in (os.getpid(), os.getppid()):
            return "ours"
        return "foreign"

    def sample(self):
        seen = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            rp = st.rfind(")")
            comm = st[st.find("(") + 1:rp]
            fields = st[rp + 2:].split()
            ticks = int(fields[11]) + int(fields[12])
            key = (int(d), fields[19])
            if key not in self.kind:
                self.kind[key] = (self.classify(int(d), comm), comm)
            seen[key] = ticks
        with self.lock:
            if self.current is not None:
                bucket = self.phases[self.current]["ticks"]
                for key, ticks in seen.items():
                    delta = ticks - self.last.get(key, 0)
                    if delta > 0:
                        bucket[self.kind[key]] += delta
            self.last = seen
        for key in list(self.kind):
            if key not in seen:
                del self.kind[key]

    def run(self):
        while not self.stop_flag.wait(1.0):
            self.sample()

    def begin(self, name):
        self.sample()
        with self.lock:
            self.current = name
            self.phases[name] = {"t0": time.monotonic(), "t1": None, "ticks": collections.Counter()}

    def end(self):
        self.sample()
        with self.lock:
            name, self.current = self.current, None
            if name is None:
                return
            ph = self.phases[name]
            ph["t1"] = time.monotonic()
        wall = ph["t1"] - ph["t0"]
        cores = collections.Counter()
        for (cat, _), t in ph["ticks"].items():
            cores[cat] += t / self.hz / wall
        top = collections.Counter()
        for (cat, comm), t in ph["ticks"].items():
            if cat == "foreign":
                top[comm] += t / self.hz / wall
        info("cpu", phase=name, seconds=f"{wall:.1f}", ours_cores=f"{cores['ours']:.2f}",
             engine_cores=f"{cores['engine']:.2f}", foreign_cores=f"{cores['foreign']:.2f}",
             foreign_top=",".join(f"{c.replace(' ', '_')}:{v:.2f}" for c, v in top.most_common(4)) or "none")


# ---------------------------------------------------------------------------------------------
# the two sides


class Side:
    """Common process handling: every helper runs with cwd under the run dir and the marker."""

    label = "?"

    def __init__(self, bench):
        self.bench = bench
        self.dir = os.path.join(bench.run, self.label)
        os.makedirs(self.dir, exist_ok=True)
        self.procs = []  # (name, Popen, log path)

    def env(self, **extra):
        return dict(os.environ, **{MARK_VAR: self.bench.run}, **extra)

    def spawn(self, name, argv):
        path = os.path.join(self.dir, f"{name}.out")
        out = open(path, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=self.env(), cwd=self.dir, start_new_session=True)
        out.close()
        self.procs.append((name, p, path))
        return p

    def run_cmd(self, argv, timeout=60, env=None, log_name=None):
        r = subprocess.run(argv, capture_output=True, timeout=timeout, env=env or self.env(), cwd=self.dir)
        if log_name:
            with open(os.path.join(self.dir, log_name), "ab") as f:
                f.write(f"== {iso(time.time())} {' '.join(argv)}: exit {r.returncode}\n".encode()
                        + r.stdout + r.stderr + b"\n")
        return r

    def check_alive(self):
        for name, p, path in self.procs:
            if p.poll() is not None:
                tail = open(path, errors="replace").read()[-2000:]
                raise BenchError(f"{self.label}: {name} exited with {p.returncode}; output:\n{tail}")

    def stop_procs(self):
        for name, p, _ in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    log(f"WARN {self.label}: {name} did not exit 60 s after SIGTERM; SIGKILL")
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    p.wait(5)
        self.procs = []


class Chain(Side):
    label = "chain"

    def __init__(self, bench):
        super().__init__(bench)
        self.root = os.path.join(self.dir, "root")
        self.units = os.path.join(self.dir, "units")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.units, exist_ok=True)
        self.sock = os.path.join(self.root, "chaind.sock")
        self.access_log = os.path.join(self.root, "proxy", "access.log")
        self.network = f"cbench{bench.rid}-chain"
        self.store = None
        self.log_offset = 0

    def ctl(self, *args, timeout=30):
        return subprocess.run([self.bench.bin("chainctl"), "--socket", self.sock, *args],
                              capture_output=True, timeout=timeout, env=self.env(), cwd=self.dir)

    def start(self):
        b = self.bench
        with open(os.path.join(self.root, "chaind.toml"), "w") as f:
            f.write(
                f'port_range = "{b.chain_ports[0]}-{b.chain_ports[-1]}"\n\n'
                f"[proxy]\n"
                f'https = "127.0.0.1:{b.chain_proxy_port}"\n'
                f'access_log = "proxy/access.log"\n'
                # Never rotated during the run: the analysis reads one file.
                f'access_log_max_size = "0"\n\n'
                f"[[certificate]]\n"
                f'cert = "{b.cert}"\n'
                f'key = "{b.key}"\n\n'
                f"[docker]\n"
                f'network = "{self.network}"\n'
            )
        self.spawn("chaind", [b.bin("chaind"), "--root", self.root, "--units", self.units])
        wait_until(lambda: os.path.exists(self.sock) and self.ctl("ls", "--json").returncode == 0,
                   30, "chaind to answer on its socket", check=self.check_alive)
        v = json.loads(self.ctl("version", "--json").stdout)
        self.store = v["store_id"]
        # For the shell's cleanup: containers with this label are ours even without cbench.run.
        with open(os.path.join(b.run, "chain-store-id"), "w") as f:
            f.write(self.store + "\n")
        info("chaind", pid=self.procs[0][1].pid, store=self.store, network=self.network,
             https=f"127.0.0.1:{b.chain_proxy_port}")

    def unit_text(self, instances, health, extra=""):
        b = self.bench
        return (
            f'description = "container benchmark: the demo app"\n'
            f"instances = {instances}\n\n"
            f"[container]\n"
            f'image = "{b.image}"\n'
            f'command = ["demo"]\n'
            f'pull = "never"\n'
            f'labels = {{ "cbench.run" = "{b.rid}" }}\n\n'
            f"[env]\n"
            f'VERSION = "v1"\n'
            f'BIND = "0.0.0.0"\n\n'
            f"[health]\n"
            f'type = "http"\n'
            f'path = "/health"\n'
            f"{health}"
            f"{extra}"
        )

    def rows(self, unit):
        r = self.ctl("ls", "--json")
        try:
            return [x for x in json.loads(r.stdout) if x.get("unit") == unit] if r.returncode == 0 else []
        except ValueError:
            return []

    def containers(self, unit):
        return self.bench.docker_ids("--filter", f"label=chain.store={self.store}",
                                     "--filter", f"label=chain.unit={unit}", all_states=True)

    # -- measure 1

    def start_run(self, interval):
        unit = "start20"
        path = os.path.join(self.units, f"{unit}.toml")
        health = (f'interval = "{interval}"\n'
                  f'start_interval = "{interval}"\n'
                  f'timeout = "{interval if ms_of(interval) < 1000 else "1s"}"\n')
        with open(path, "w") as f:
            f.write(self.unit_text(START_N, health))
        wall0 = time.time()
        t0 = time.monotonic()
        r = self.ctl("apply")
        t_apply = time.monotonic() - t0
        if r.returncode != 0:
            raise BenchError(f"chainctl apply failed: {(r.stdout + r.stderr).decode(errors='replace')}")
        ready = 0
        while True:
            rows = self.rows(unit)
            ready = sum(1 for x in rows if x.get("state") == "running" and x.get("ready"))
            if ready == START_N:
                break
            if time.monotonic() - t0 > START_TIMEOUT:
                raise BenchError(f"chain: only {ready} of {START_N} instances ready after {START_TIMEOUT}s")
            self.check_alive()
            time.sleep(POLL)
        took = time.monotonic() - t0
        restarts = sum(x.get("restarts", 0) for x in rows)
        # chaind's events of this run: when each container started and became ready.
        started, ready = [], []
        ev = self.ctl("events", "--json", "-n", "1000", "--unit", unit)
        for line in ev.stdout.decode(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            t = parse_time(e.get("time"))
            if t is None or t < wall0 - 0.01:
                continue
            if e.get("kind") == "started":
                started.append(t)
            elif e.get("kind") == "ready":
                ready.append(t)
        # Teardown: remove the unit, apply, wait until its containers are gone.
        os.remove(path)
        t1 = time.monotonic()
        self.ctl("apply")
        wait_until(lambda: not self.rows(unit) and not self.containers(unit), 120,
                   "chain's start20 containers to be removed", check=self.check_alive)
        return took * 1000, {"apply_returned_ms": f"{t_apply * 1000:.0f}", "restarts": restarts,
                             **timeline(wall0, started, ready),
                             "teardown_ms": f"{(time.monotonic() - t1) * 1000:.0f}"}

    # -- measure 2

    def deploy_start(self):
        health = 'interval = "1s"\ntimeout = "1s"\n'
        extra = (f'\n[[route]]\nhost = "{HOST}"\npath = "/"\n\n'
                 f'[deploy]\nstrategy = "rolling"\n')
        with open(os.path.join(self.units, "web.toml"), "w") as f:
            f.write(self.unit_text(INSTANCES, health, extra))
        r = self.ctl("apply")
        if r.returncode != 0:
            raise BenchError(f"chainctl apply failed: {(r.stdout + r.stderr).decode(errors='replace')}")
        wait_until(lambda: sum(1 for x in self.rows("web") if x.get("ready") and x.get("routed")) == INSTANCES,
                   90, f"{INSTANCES} ready instances of web", check=self.check_alive)
        wait_until(lambda: answers(self.port, "v1"), 30, "chaind's proxy to answer v1", check=self.check_alive)

    @property
    def port(self):
        return self.bench.chain_proxy_port

    def count(self):
        return len(self.bench.docker_ids("--filter", f"label=chain.store={self.store}",
                                         "--filter", "label=chain.unit=web"))

    def deploy(self, version):
        r = self.ctl("deploy", "web", "--set", f"env.VERSION={version}", "--wait", timeout=DEPLOY_TIMEOUT)
        out = (r.stdout + r.stderr).decode(errors="replace")
        with open(os.path.join(self.dir, "deploys.log"), "a") as f:
            f.write(f"== {iso(time.time())} deploy VERSION={version}: exit {r.returncode}\n{out}\n")
        return r.returncode == 0, out

    def mark_start(self):
        try:
            self.log_offset = os.path.getsize(self.access_log)
        except OSError:
            self.log_offset = 0

    def analyse(self, name, deploys):
        ev = self.ctl("events", "--json", "-n", "100000", "--unit", "web")
        events = []
        for line in ev.stdout.decode(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        with open(os.path.join(self.dir, "events-web.ndjson"), "w") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
        hist = self.ctl("history", "web", "-n", "1000")
        with open(os.path.join(self.dir, "history-web.txt"), "wb") as f:
            f.write(hist.stdout)
        kinds_all = collections.Counter(e.get("kind") for e in events)
        info("chain_events", run=name, **{k: n for k, n in sorted(kinds_all.items())})
        for e in events:
            if e.get("kind") in ("failed", "crashed", "unhealthy", "deploy_failed", "error", "oom"):
                info("chain_event", run=name, time=e.get("time"), instance=e.get("instance"),
                     kind=e.get("kind"), message=str(e.get("message", "")).replace(" ", "_")[:160])
        time.sleep(1.0)  # the access-log writer may lag a little behind the responses
        bad, total = [], 0
        try:
            with open(self.access_log, errors="replace") as f:
                f.seek(self.log_offset)
                for line in f:
                    total += 1
                    if '"status":200,' in line and '"aborted"' not in line:
                        continue
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if not (200 <= e.get("status", 0) < 300) or e.get("aborted"):
                        bad.append(e)
        except OSError as e:
            info("access_log", run=name, error=short(e))
            return
        kinds = collections.Counter(
            (e.get("status"), e.get("error"), e.get("path"), bool(e.get("aborted"))) for e in bad)
        info("access_log", run=name, lines=total, not_2xx_or_aborted=len(bad),
             **{f"{s}_{err}_{p.strip('/') or 'root'}{'_aborted' if a else ''}": n
                for (s, err, p, a), n in sorted(kinds.items(), key=lambda kv: -kv[1])})
        # Place each failure in the deploy sequence and next to the events of its container.
        by_addr = collections.defaultdict(list)
        for e in events:
            m = re.search(r"container (\w+) .* at (\S+:\d+)", e.get("message", ""))
            if e.get("kind") == "started" and m:
                by_addr[m.group(2)].append((parse_iso(e["time"]), e.get("instance"), m.group(1)))
        for e in bad[:20]:
            t = parse_iso(e.get("time", "")) or 0
            idx = max((i for i, d in enumerate(deploys) if d["t0"] <= t), default=None)
            where = "before_first_deploy" if idx is None else \
                f"deploy{idx}+{t - deploys[idx]['t0']:.2f}s(took_{deploys[idx]['t1'] - deploys[idx]['t0']:.2f}s)"
            up = e.get("upstream") or ""
            inst = [x for x in by_addr.get(up, []) if x[0] <= t + 0.001]
            inst_s = f"web.{inst[-1][1]}_container{inst[-1][2]}" if inst else "?"
            later = [x for x in events if inst and x.get("instance") == inst[-1][1]
                     and (parse_iso(x["time"]) or 0) >= inst[-1][0]][:6]
            info("failure", run=name, time=e.get("time"), where=where, status=e.get("status"),
                 error=e.get("error"), path=e.get("path"), upstream=up, generation=e.get("generation"),
                 instance=inst_s, duration_ms=e.get("duration_ms"), aborted=bool(e.get("aborted")),
                 instance_events="|".join(f"{x['time'][11:23]}:{x['kind']}:{x['message']}".replace(" ", "_")
                                          for x in later))

    def stop(self):
        if not self.procs:
            return
        # Remove the units first, so that chaind stops and removes their containers itself.
        for name in os.listdir(self.units):
            os.remove(os.path.join(self.units, name))
        try:
            self.ctl("apply")
            wait_until(lambda: not self.bench.docker_ids("--filter", f"label=chain.store={self.store}",
                                                         all_states=True),
                       60, "chaind to remove its containers")
        except Exception as e:  # noqa: BLE001 - keep cleaning
            log(f"WARN chain: units not removed cleanly: {e}")
        gc = self.ctl("gc", "--json")
        info("chain_gc", output=gc.stdout.decode(errors="replace").replace("\n", " ").replace(" ", "")[:200])
        self.stop_procs()


class Compose(Side):
    label = "compose"

    def __init__(self, bench):
        super().__init__(bench)
        self.cmd = bench.compose
        self.start_project = f"cbench{bench.rid}start"
        self.deploy_project = f"cbench{bench.rid}deploy"
        self.ngx = os.path.join(self.dir, "nginx")
        os.makedirs(self.ngx, exist_ok=True)
        self.access_log = os.path.join(self.ngx, "access.log")
        self.error_log = os.path.join(self.ngx, "error.log")
        self.offsets = (0, 0)
        self.version = "v1"
        self.up_projects = set()

    def compose(self, project, file, *args, version="v1", timeout=DEPLOY_TIMEOUT):
        r = self.run_cmd([*self.cmd, "-p", project, "-f", file, *args], timeout=timeout,
                         env=self.env(BENCH_VERSION=version), log_name="compose.log")
        return r

    def service(self, scale, interval, ports=None):
        b = self.bench
        ms = ms_of(interval)
        timeout = interval if ms < 1000 else "1s"
        port_lines = f'    ports:\n      - "{ports}"\n' if ports else ""
        # Compose file format 2.4: understood by docker-compose 1.x (which ignores deploy:
        # without --compatibility) and by docker compose 2.x. `scale` sets the replicas.
        return (
            'version: "2.4"\n'
            "services:\n"
            "  web:\n"
            f'    image: "{b.image}"\n'
            '    command: ["demo"]\n'
            "    environment:\n"
            f'      PORT: "{APP_PORT}"\n'
            '      BIND: "0.0.0.0"\n'
            '      VERSION: "${BENCH_VERSION}"\n'
            "    labels:\n"
            f'      cbench.run: "{b.rid}"\n'
            f"    scale: {scale}\n"
            f"{port_lines}"
            "    healthcheck:\n"
            f'      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:{APP_PORT}/health"]\n'
            f"      interval: {interval}\n"
            f"      timeout: {timeout}\n"
            "      retries: 3\n"
            "      start_period: 0s\n"
        )

    def project_ids(self, project, *filters, all_states=False):
        return self.bench.docker_ids("--filter", f"label=com.docker.compose.project={project}", *filters,
                                     all_states=all_states)

    # -- measure 1

    def start_run(self, interval):
        file = os.path.join(self.dir, "start.yml")
        with open(file, "w") as f:
            f.write(self.service(START_N, interval))
        self.up_projects.add((self.start_project, file))
        wall0 = time.time()
        t0 = time.monotonic()
        r = self.compose(self.start_project, file, "up", "-d", timeout=START_TIMEOUT)
        t_up = time.monotonic() - t0
        if r.returncode != 0:
            raise BenchError(f"compose up failed:\n{(r.stdout + r.stderr).decode(errors='replace')[-2000:]}")
        healthy = 0
        while True:
            healthy = len(self.project_ids(self.start_project, "--filter", "health=healthy"))
            if healthy == START_N:
                break
            if time.monotonic() - t0 > START_TIMEOUT:
                raise BenchError(f"compose: only {healthy} of {START_N} containers healthy after {START_TIMEOUT}s")
            time.sleep(POLL)
        took = time.monotonic() - t0
        # The engine's view: when each container started, and the end of its first passing
        # health probe (the moment it turned healthy; the engine keeps the last 5 probes, enough
        # for the last container to turn healthy, which is the one that counts).
        started, ready = [], []
        ids = self.project_ids(self.start_project)
        r = subprocess.run(["docker", "inspect", *ids], capture_output=True, timeout=60, env=self.env(),
                           cwd=self.dir)
        try:
            for c in json.loads(r.stdout or b"[]"):
                started.append(parse_time(c["State"].get("StartedAt")))
                ok = [parse_time(h.get("End")) for h in (c["State"].get("Health") or {}).get("Log") or []
                      if h.get("ExitCode") == 0]
                ok = [x for x in ok if x is not None]
                if ok:
                    ready.append(min(ok))
        except (ValueError, KeyError, TypeError) as e:
            info("compose_inspect", error=short(e))
        t1 = time.monotonic()
        r = self.compose(self.start_project, file, "down", timeout=START_TIMEOUT)
        if r.returncode != 0:
            raise BenchError(f"compose down failed:\n{(r.stdout + r.stderr).decode(errors='replace')[-2000:]}")
        wait_until(lambda: not self.project_ids(self.start_project, all_states=True), 60,
                   "compose's containers to be removed")
        self.up_projects.discard((self.start_project, file))
        return took * 1000, {"up_returned_ms": f"{t_up * 1000:.0f}", **timeline(wall0, started, ready),
                             "teardown_ms": f"{(time.monotonic() - t1) * 1000:.0f}"}

    # -- measure 2

    @property
    def port(self):
        return self.bench.compose_proxy_port

    def deploy_start(self):
        b = self.bench
        self.file = os.path.join(self.dir, "deploy.yml")
        ports = b.compose_ports
        with open(self.file, "w") as f:
            # One host port per replica: a range of 4 for one container port, from which the
            # engine gives each container a free one, so that nginx has a fixed upstream list.
            f.write(self.service(INSTANCES, "1s", ports=f"127.0.0.1:{ports[0]}-{ports[-1]}:{APP_PORT}"))
        self.up_projects.add((self.deploy_project, self.file))
        r = self.compose(self.deploy_project, self.file, "up", "-d", version="v1")
        if r.returncode != 0:
            raise BenchError(f"compose up failed:\n{(r.stdout + r.stderr).decode(errors='replace')[-2000:]}")
        wait_until(lambda: len(self.project_ids(self.deploy_project, "--filter", "health=healthy")) == INSTANCES,
                   90, f"{INSTANCES} healthy compose containers")
        # As bench/deploy_bench.py configures nginx in front of supervisord.
        self.nginx_conf = write_nginx_conf(self.ngx, self.error_log, self.access_log, self.port,
                                           b.cert, b.key, ports)
        self.spawn("nginx", [b.nginx, "-e", self.error_log, "-c", self.nginx_conf, "-g", "daemon off;"])
        wait_until(lambda: answers(self.port, "v1"), 30, "nginx to answer v1", check=self.check_alive)
        # With the engine's default userland-proxy, connections to a port published on 127.0.0.1
        # go through one docker-proxy process per port: nginx -> docker-proxy -> container.
        info("nginx", pid=self.procs[0][1].pid, https=f"127.0.0.1:{self.port}",
             upstreams=",".join(map(str, ports)), docker_proxy_processes=docker_proxies(ports))

    def count(self):
        return len(self.project_ids(self.deploy_project))

    def deploy(self, version):
        r = self.compose(self.deploy_project, self.file, "up", "-d", version=version)
        out = (r.stdout + r.stderr).decode(errors="replace")
        with open(os.path.join(self.dir, "deploys.log"), "a") as f:
            f.write(f"== {iso(time.time())} up -d VERSION={version}: exit {r.returncode}\n{out}\n")
        return r.returncode == 0, out

    def mark_start(self):
        self.offsets = log_sizes(self.access_log, self.error_log)

    def analyse(self, name, deploys):
        bad = nginx_failures(name, self.access_log, self.error_log, self.offsets)
        # Outage per deploy: first to last failed response within each deploy's window.
        spans = collections.defaultdict(list)
        for p in bad:
            t = float(p[0])
            idx = max((i for i, d in enumerate(deploys) if d["t0"] <= t), default=-1)
            spans[idx].append(t)
        outages = [max(ts) - min(ts) for i, ts in spans.items() if i >= 0]
        info("failure_spans", run=name, deploys_with_failures=sum(1 for i in spans if i >= 0),
             before_first_deploy=len(spans.get(-1, [])), outage_s_min_med_max=fmt_s(outages))

    def stop(self):
        self.stop_procs()
        for project, file in list(self.up_projects):
            r = self.compose(project, file, "down", timeout=120)
            if r.returncode != 0:
                log(f"WARN compose down {project}: {(r.stdout + r.stderr).decode(errors='replace')[-500:]}")
            self.up_projects.discard((project, file))


class Counter(threading.Thread):
    """How many containers of the deployed service run, every second (docker ps)."""

    def __init__(self, side):
        super().__init__(daemon=True)
        self.side = side
        self.stop_flag = threading.Event()
        self.counts = []

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.counts.append(self.side.count())
            except Exception:  # noqa: BLE001
                pass
            self.stop_flag.wait(1.0)


# ---------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, bindir, run, image, rid):
        self.bindir = bindir
        self.run = run
        self.image = image
        self.rid = rid
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        for tool in (self.nginx, "wrk", "openssl", "docker"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found")
        self.compose = self.find_compose()
        self.lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy.lua")
        proxy_ports = free_block(2, 17000, 17999)
        self.chain_proxy_port, self.compose_proxy_port = proxy_ports
        self.compose_ports = free_block(INSTANCES, 17000, 17999, taken=set(proxy_ports))
        self.chain_ports = free_block(200, 31000, 32700)
        info("ports", chain_https=self.chain_proxy_port, nginx_https=self.compose_proxy_port,
             compose_published=f"{self.compose_ports[0]}-{self.compose_ports[-1]}",
             chain_instances=f"{self.chain_ports[0]}-{self.chain_ports[-1]}")
        self.make_cert()
        self.sides = []
        self.results = {}
        self.cpu = CpuMonitor(run)
        self.cpu.start()

    def find_compose(self):
        want = os.environ.get("BENCH_COMPOSE", "").strip()
        candidates = [shlex.split(want)] if want else [["docker", "compose"], ["docker-compose"]]
        for c in candidates:
            try:
                r = subprocess.run([*c, "version"], capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if r.returncode == 0:
                info("compose", command=" ".join(c),
                     version=r.stdout.decode(errors="replace").splitlines()[0].replace(" ", "_"))
                return c
        raise BenchError("neither `docker compose` nor `docker-compose` works")

    def bin(self, name):
        return os.path.join(self.bindir, name)

    def make_cert(self):
        d = os.path.join(self.run, "cert")
        os.makedirs(d, exist_ok=True)
        self.cert, self.key = os.path.join(d, "bench.crt"), os.path.join(d, "bench.key")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
             "-days", "30", "-keyout", self.key, "-out", self.cert],
            check=True, capture_output=True)

    def tool_env(self):
        return dict(os.environ, **{MARK_VAR: self.run})

    def docker_ids(self, *filters, all_states=False):
        r = subprocess.run(["docker", "ps", "-q", *(["-a"] if all_states else []), *filters],
                           capture_output=True, timeout=60, env=self.tool_env(), cwd=self.run)
        return r.stdout.decode().split()

    # -- measure 1

    def measure_start(self, chain, compose):
        for n, interval in enumerate(HEALTH_INTERVALS):
            log(f"start_{START_N}_healthy: health-check interval {interval}, {START_RUNS} runs per side, alternating")
            self.cpu.begin(f"start_{interval}")
            samples = {"chain": [], "compose": []}
            for i in range(START_RUNS):
                for side in (chain, compose):
                    ms, extra = side.start_run(interval)
                    samples[side.label].append(ms)
                    info("start_run", side=side.label, interval=interval, run=i, ms=f"{ms:.0f}",
                         load=open("/proc/loadavg").read().split()[0], **extra)
                    time.sleep(SETTLE)
            self.cpu.end()
            med = {k: statistics.median(v) for k, v in samples.items()}
            info("start_summary", interval=interval,
                 chain_ms=",".join(f"{x:.0f}" for x in samples["chain"]),
                 compose_ms=",".join(f"{x:.0f}" for x in samples["compose"]),
                 chain_median=f"{med['chain']:.0f}", compose_median=f"{med['compose']:.0f}",
                 ratio=f"{med['chain'] / med['compose']:.3f}")
            if n == 0:
                self.results["start"] = (interval, med)

    # -- measure 2

    def load_run(self, side):
        name = f"rolling_{side.label}"
        log(f"{name}: wrk -t{WRK_THREADS} -c{WRK_CONNS} + sampler, {DEPLOYS} deploys back to back")
        side.mark_start()
        sampler = Sampler(side.port)
        counter = Counter(side)
        wrk_out_path = os.path.join(self.run, f"wrk-{name}.out")
        wrk_out = open(wrk_out_path, "wb")
        wrk = subprocess.Popen(
            ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", "-d3600s", "--latency", "-s", self.lua,
             f"https://{HOST}:{side.port}/"],
            stdout=wrk_out, stderr=subprocess.STDOUT, cwd=self.run, env=self.tool_env())
        t_start = time.time()
        self.cpu.begin(name)
        sampler.start()
        counter.start()
        deploys = []
        try:
            time.sleep(WARMUP)
            if wrk.poll() is not None:
                raise BenchError(f"wrk exited early:\n{open(wrk_out_path, errors='replace').read()}")
            current = "v1"
            for i in range(DEPLOYS):
                new = "v2" if i % 2 == 0 else "v1"
                t0 = time.time()
                ok, out = side.deploy(new)
                t1 = time.time()
                flipped, took, stale, errors = confirm(side.port, new, current)
                deploys.append({"i": i, "version": new, "t0": t0, "t1": t1, "ok": ok, "flipped": flipped,
                                "confirm_s": took, "stale": stale, "confirm_errors": errors})
                if not ok:
                    log(f"WARN {name}: deploy {i} (VERSION={new}) failed:\n{out[-1500:]}")
                if not flipped:
                    log(f"WARN {name}: after deploy {i} (VERSION={new}) no clean flip: "
                        f"{stale} stale answers, {errors} errors in {took:.1f} s")
                else:
                    current = new
                side.check_alive()
            time.sleep(COOLDOWN)
        finally:
            if wrk.poll() is None:
                wrk.send_signal(signal.SIGINT)
            try:
                wrk.wait(30)
            except subprocess.TimeoutExpired:
                wrk.kill()
                wrk.wait(5)
            wrk_out.close()
            sampler.stop_flag.set()
            counter.stop_flag.set()
            sampler.join(15)
            counter.join(65)
        t_end = time.time()
        self.cpu.end()
        w = parse_wrk(open(wrk_out_path, errors="replace").read())

        ok_samples = [(t, v) for t, st, v, _ in sampler.samples if st == 200]
        failed_samples = [(t, st, v) for t, st, v, _ in sampler.samples if st != 200]
        changes = sum(1 for k in range(1, len(ok_samples)) if ok_samples[k][1] != ok_samples[k - 1][1])
        info("sampler", run=name, samples=len(sampler.samples), failed=len(failed_samples), changes=changes)
        for t, st, v in failed_samples[:10]:
            info("sampler_failure", run=name, time=iso(t), status=st, what=v)
        durs = [d["t1"] - d["t0"] for d in deploys]
        deploys_ok = sum(1 for d in deploys if d["ok"])
        flips = sum(1 for d in deploys if d["flipped"])
        info("deploys", run=name, attempted=len(deploys), succeeded=deploys_ok, flips=flips,
             seconds_min_med_max=fmt_s(durs), total_s=f"{sum(durs):.1f}",
             confirm_s_min_med_max=fmt_s([d["confirm_s"] for d in deploys]),
             confirm_stale=sum(d["stale"] for d in deploys),
             confirm_errors=sum(d["confirm_errors"] for d in deploys),
             containers_min_max=f"{min(counter.counts, default=0)}/{max(counter.counts, default=0)}",
             run_s=f"{t_end - t_start:.1f}")
        info("wrk", run=name, requests=w["requests"], rps=f"{w['rps']:.0f}", p50=w["p50"], p99=w["p99"],
             max=w["max"], wrk_non2xx_3xx=w["wrk_non2xx_3xx"],
             **{f"sock_{k}": v for k, v in w["sock"].items()}, **w["lua"])
        side.analyse(name, deploys)
        self.results[side.label] = {"requests": w["requests"], "non2xx": w["non2xx"],
                                    "socket_errors": w["socket_errors"], "deploys": deploys_ok, "flips": flips}
        log(f"done: {name} requests={w['requests']} non2xx={w['non2xx']} "
            f"socket_errors={w['socket_errors']} deploys={deploys_ok} flips={flips}")

    def main(self):
        t0 = time.monotonic()
        info("plan", measures=",".join(MEASURES), start_n=START_N, start_runs=START_RUNS,
             health_intervals=",".join(HEALTH_INTERVALS), instances=INSTANCES, deploys=DEPLOYS,
             wrk=f"-t{WRK_THREADS}-c{WRK_CONNS}", image=self.image, load=open("/proc/loadavg").read().split()[0])
        chain = Chain(self)
        compose = Compose(self)
        self.sides = [chain, compose]
        chain.start()
        if "start" in MEASURES:
            self.measure_start(chain, compose)
        if "rolling" in MEASURES:
            for side in (chain, compose):
                log(f"starting {side.label} with {INSTANCES} instances behind its HTTPS proxy")
                side.deploy_start()
                self.load_run(side)
                if side is compose:
                    side.stop()
        chain.stop()
        compose.stop()
        info("elapsed", seconds=f"{time.monotonic() - t0:.0f}", load=open("/proc/loadavg").read().split()[0])
        if "start" in self.results:
            interval, med = self.results["start"]
            print(f"RESULT start_{START_N}_healthy_ms chain={med['chain']:.0f} compose={med['compose']:.0f} "
                  f"ratio={med['chain'] / med['compose']:.3f}", flush=True)
        if "chain" in self.results and "compose" in self.results:
            for k in ("requests", "non2xx", "socket_errors", "deploys", "flips"):
                print(f"RESULT rolling_{k} chain={self.results['chain'][k]} compose={self.results['compose'][k]}",
                      flush=True)

    def cleanup(self):
        for s in list(self.sides):
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                log(f"WARN stopping {s.label}: {e}")
        ids = self.docker_ids("--filter", f"label=cbench.run={self.rid}", all_states=True)
        store = next((s.store for s in self.sides if isinstance(s, Chain) and s.store), None)
        if store:
            ids += self.docker_ids("--filter", f"label=chain.store={store}", all_states=True)
        if ids:
            log(f"cleanup: removing {len(set(ids))} leftover containers")
            subprocess.run(["docker", "rm", "-f", *sorted(set(ids))], capture_output=True, timeout=120)
        kill_ours(self.run, MARK_VAR)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--run-id", required=True)
    args = ap.parse_args()
    for x in HEALTH_INTERVALS:
        ms_of(x)
    return run_main(lambda: Bench(args.bin, args.run, args.image, args.run_id))


if __name__ == "__main__":
    sys.exit(main())
