#!/usr/bin/env python3
"""Zero-downtime deploy benchmark: chain's rolling and blue-green deploys under load, and
supervisord `restart` behind nginx for contrast, same run, same machine.

Driven by bench/deploy.sh (which builds the binaries, installs nginx, supervisor and wrk, maps
bench.local to 127.0.0.1 and cleans up). Every process this script starts runs with its working
directory under the run directory or carries BENCH_DEPLOY_RUN=<run dir> in its environment (nginx
rewrites its environment area for its process titles, hence the cwd rule), so that cleanup finds
exactly our processes.

The app is the demo (examples/demo.rs): `GET /` answers its VERSION, `/health` 200,
`/sleep?ms=N` answers after N ms, and SIGTERM stops accepting and finishes in-flight requests.

Each run, once per target (chain rolling, chain blue-green, supervisord + nginx) and variant
(plain, slow):
  - wrk -t2 -c64 (keep-alive) on https://bench.local:<port>/ for the whole run, with
    bench/deploy.lua counting every status outside 2xx and the version in each body;
  - a sampler: one keep-alive client, GET / every 50 ms, recording the version it sees;
  - slow variant: 8 clients, each with one request to /sleep?ms=2000 in flight at all times;
  - DEPLOYS deploys back to back, alternating VERSION v2, v1, v2, ...:
      chain: `chainctl deploy web --set env.VERSION=vN --wait` (the unit's [deploy] strategy);
      supervisord: write the version file that the wrapper reads, then
      `supervisorctl restart web:*`;
    after each one, a check that 12 requests in a row answer the new version (a flip).
One line per run at the end:
  RESULT deploy_<target>[_slow] requests=<n> non2xx=<n> socket_errors=<n> deploys=<n> flips=<n>
         [slow_ok=<n> slow_failed=<n>]

Usage: deploy_bench.py --bin DIR --run DIR   (DIR holds chaind, chainctl and demo)

Environment:
  BENCH_QUICK=1        4 deploys per run instead of 20 (smoke run)
  BENCH_DEPLOYS=N      deploys per run
  BENCH_TARGETS=rolling,blue-green,supervisord
  BENCH_VARIANTS=plain,slow
"""

import calendar
import collections
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

from benchlib import BenchError, children, cli_main, comm, info, kill_ours, log

MARK_VAR = "BENCH_DEPLOY_RUN"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
DEPLOYS = int(os.environ.get("BENCH_DEPLOYS", "4" if QUICK else "20"))
TARGETS = [x for x in os.environ.get("BENCH_TARGETS", "rolling,blue-green,supervisord").split(",") if x]
VARIANTS = [x for x in os.environ.get("BENCH_VARIANTS", "plain,slow").split(",") if x]
HOST = "bench.local"
INSTANCES = 4
WRK_THREADS = 2
WRK_CONNS = 64
SLOW_CLIENTS = 8
SLOW_MS = 2000
SAMPLE_EVERY = 0.05
WARMUP = 2.0  # load before the first deploy
COOLDOWN = 3.0  # load after the last deploy (the last old instances drain meanwhile)
CONFIRM_N = 12  # consecutive answers with the new version that make a flip
CONFIRM_TIMEOUT = 10.0
DEPLOY_TIMEOUT = 180
# Parameters of each nginx upstream server. nginx's defaults (max_fails=1 fail_timeout=10s) take
# every server out for 10 s once a restart has refused a connection to each, so that the outage
# lasts 10 s whatever supervisord does; max_fails=0 keeps nginx retrying, so that the failures
# counted are those of the restart itself. BENCH_NGINX_SERVER=" " measures nginx's defaults.
NGINX_SERVER_PARAMS = " " + os.environ.get("BENCH_NGINX_SERVER", "max_fails=0").strip()
NGINX_SERVER_PARAMS = NGINX_SERVER_PARAMS.rstrip()

TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


def iso(t):
    """Wall-clock time as the access log and chaind's events write it (UTC, milliseconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def parse_iso(s):
    """`2026-11-23T08:47:16.145Z` -> seconds since the epoch."""
    m = re.match(r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(?:\.(\d+))?Z", s)
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    return calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0)) + frac


def fmt_s(xs):
    if not xs:
        return "n/a"
    return f"{min(xs):.2f}/{statistics.median(xs):.2f}/{max(xs):.2f}"


# ---------------------------------------------------------------------------------------------
# /proc and port helpers


def port_free(port):
    for host in ("127.0.0.1", "0.0.0.0"):
        s = socket.socket()
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_block(size, lo, hi, taken=()):
    """`size` consecutive free ports in [lo, hi], none of them in `taken`."""
    base = lo
    while base + size - 1 <= hi:
        ports = range(base, base + size)
        if not any(p in taken for p in ports) and all(port_free(p) for p in ports):
            return list(ports)
        base += size
    raise BenchError(f"no block of {size} free ports in {lo}-{hi}")


# ---------------------------------------------------------------------------------------------
# HTTPS clients (to 127.0.0.1 with SNI and Host bench.local, certificate not verified)


class Conn(http.client.HTTPConnection):
    """Keep-alive HTTPS connection to 127.0.0.1:port with SNI bench.local; reconnects by itself
    (http.client calls connect() again after the server closed the connection)."""

    def __init__(self, port, timeout):
        super().__init__(HOST, port, timeout=timeout)

    def connect(self):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = TLS.wrap_socket(raw, server_hostname=HOST)

    def get(self, path):
        """Returns (status, body, headers); on any error closes the connection and raises."""
        try:
            self.request("GET", path)
            r = self.getresponse()
            body = r.read()
            return r.status, body, {k.lower(): v for k, v in r.getheaders()}
        except Exception:
            self.close()
            raise


def short(e):
    return re.sub(r"\s+", "_", f"{type(e).__name__}:{e}")[:80]


class Sampler(threading.Thread):
    """GET / every SAMPLE_EVERY seconds on one keep-alive connection; records
    (time, status or None, version or error, pid)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop_flag = threading.Event()
        self.samples = []

    def run(self):
        c = Conn(self.port, timeout=10)
        while not self.stop_flag.is_set():
            t = time.time()
            try:
                status, body, h = c.get("/")
                what = body.decode(errors="replace").strip() if status == 200 else f"status_{status}"
                self.samples.append((t, status, what, h.get("x-pid")))
            except Exception as e:  # noqa: BLE001 - every failure is a data point
                self.samples.append((t, None, short(e), None))
            self.stop_flag.wait(max(0.0, SAMPLE_EVERY - (time.time() - t)))
        c.close()


class SlowClient(threading.Thread):
    """Keeps one /sleep?ms=SLOW_MS request in flight at all times, until told to stop; the
    request in flight when told to stop is completed and counted."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failed = []  # (start, end, what)

    def run(self):
        c = Conn(self.port, timeout=SLOW_MS / 1000 + 30)
        while not self.stop_flag.is_set():
            t0 = time.time()
            try:
                status, body, _ = c.get(f"/sleep?ms={SLOW_MS}")
                if status == 200 and body.strip() in (b"v1", b"v2"):
                    self.ok += 1
                else:
                    self.failed.append((t0, time.time(), f"status_{status}"))
            except Exception as e:  # noqa: BLE001
                self.failed.append((t0, time.time(), short(e)))
            if self.failed and self.failed[-1][0] == t0:
                # After a failure, wait until the request would have ended, so that every client
                # sends about one request per SLOW_MS whatever the proxy answers: the counts of
                # two targets stay comparable (an instant 502 would otherwise be retried in a loop).
                self.stop_flag.wait(max(0.0, t0 + SLOW_MS / 1000 - time.time()))
        c.close()


class ProcessCounter(threading.Thread):
    """Counts the demo processes among the children of the supervising daemon every 100 ms:
    how many old and new instances are alive at once during the deploys."""

    def __init__(self, parent_pid):
        super().__init__(daemon=True)
        self.parent = parent_pid
        self.stop_flag = threading.Event()
        self.counts = []

    def run(self):
        while not self.stop_flag.is_set():
            self.counts.append(sum(1 for k in children(self.parent) if comm(k) == "demo"))
            self.stop_flag.wait(0.1)


def confirm(port, new, old):
    """After a deploy returned: requests GET / until CONFIRM_N answers in a row carry `new`.
    Returns (flipped, seconds, stale answers with `old`, errors)."""
    t0 = time.monotonic()
    c = Conn(port, timeout=5)
    run = stale = errors = 0
    try:
        while time.monotonic() - t0 < CONFIRM_TIMEOUT:
            try:
                status, body, _ = c.get("/")
            except Exception:  # noqa: BLE001
                errors += 1
                run = 0
                time.sleep(0.02)
                continue
            v = body.decode(errors="replace").strip()
            if status == 200 and v == new:
                run += 1
                if run >= CONFIRM_N:
                    return stale == 0, time.monotonic() - t0, stale, errors
            else:
                run = 0
                if status == 200 and v == old:
                    stale += 1
                else:
                    errors += 1
                time.sleep(0.02)
    finally:
        c.close()
    return False, time.monotonic() - t0, stale, errors


def answers(port, version):
    try:
        c = Conn(port, timeout=2)
        status, body, _ = c.get("/")
        c.close()
        return status == 200 and body.strip() == version.encode()
    except Exception:  # noqa: BLE001
        return False


def wait_until(pred, timeout, what, check=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check:
            check()
        if pred():
            return
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout}s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# wrk


def parse_wrk(out):
    r = {}
    m = re.search(r"(\d+) requests in ([0-9.]+)(\w+)", out)
    if not m:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    r["rps"] = float(m.group(1)) if m else float("nan")
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        r[f"p{pct}"] = m.group(1) if m else "?"
    m = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    r["max"] = m.group(1) if m else "?"
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["sock"] = dict(zip(("connect", "read", "write", "timeout"), (int(x) for x in m.groups()))) if m else \
        {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    r["socket_errors"] = sum(r["sock"].values())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["wrk_non2xx_3xx"] = int(m.group(1)) if m else 0
    m = re.search(r"^LUA (.*)$", out, re.M)
    if not m:
        raise BenchError(f"wrk printed no LUA line (bench/deploy.lua):\n{out}")
    r["lua"] = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    r["non2xx"] = r["lua"]["non2xx"]
    return r


# ---------------------------------------------------------------------------------------------
# targets


class Target:
    """Something that serves the demo behind an HTTPS proxy on self.port and deploys it."""

    label = "?"

    def __init__(self, bench, port):
        self.bench = bench
        self.port = port
        self.dir = os.path.join(bench.run, self.label)
        os.makedirs(self.dir, exist_ok=True)
        self.procs = []  # (name, Popen, log path)

    def env(self):
        return dict(os.environ, **{MARK_VAR: self.bench.run})

    def spawn(self, name, argv):
        path = os.path.join(self.dir, f"{name}.out")
        out = open(path, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=self.env(), cwd=self.dir, start_new_session=True)
        out.close()
        self.procs.append((name, p, path))
        return p

    def check_alive(self):
        for name, p, path in self.procs:
            if p.poll() is not None:
                tail = open(path, errors="replace").read()[-2000:]
                raise BenchError(f"{self.label}: {name} exited with {p.returncode}; output:\n{tail}")

    def stop(self):
        for name, p, _ in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
                try:
                    p.wait(45)
                except subprocess.TimeoutExpired:
                    log(f"WARN {self.label}: {name} did not exit 45 s after SIGTERM; SIGKILL")
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except OSError:
                        pass
                    p.wait(5)
        self.procs = []

    def mark_start(self):
        """Called before a run's load starts."""

    def analyse(self, name, deploys, t_start, t_end):
        """INFO lines about the failures of one run, from the proxy's own records."""


class Chain(Target):
    def __init__(self, bench, port, strategy):
        self.label = f"chain-{strategy}"
        self.strategy = strategy
        super().__init__(bench, port)
        self.root = os.path.join(self.dir, "root")
        self.units = os.path.join(self.dir, "units")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.units, exist_ok=True)
        self.sock = os.path.join(self.root, "chaind.sock")
        self.access_log = os.path.join(self.root, "proxy", "access.log")
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
                f'https = "127.0.0.1:{self.port}"\n'
                # Every proxied request, for the failure analysis (written by its own thread),
                # in one file: the analysis reads it from an offset, which rotation would break.
                f'access_log = "proxy/access.log"\n'
                f'access_log_max_size = "0"\n\n'
                f"[[certificate]]\n"
                f'cert = "{b.cert}"\n'
                f'key = "{b.key}"\n'
            )
        with open(os.path.join(self.units, "web.toml"), "w") as f:
            f.write(
                f'description = "deploy benchmark: the demo app"\n'
                f"instances = {INSTANCES}\n\n"
                f"[process]\n"
                f'command = "{b.bin("demo")}"\n\n'
                f"[env]\n"
                f'VERSION = "v1"\n'
                f'{MARK_VAR} = "{b.run}"\n\n'
                f"[health]\n"
                f'type = "http"\n'
                f'path = "/health"\n\n'
                f"[[route]]\n"
                f'host = "{HOST}"\n'
                f'path = "/"\n\n'
                f"[deploy]\n"
                f'strategy = "{self.strategy}"\n'
            )
        self.spawn("chaind", [b.bin("chaind"), "--root", self.root, "--units", self.units])
        wait_until(lambda: os.path.exists(self.sock) and self.ctl("ls", "--json").returncode == 0,
                   30, "chaind to answer on its socket", check=self.check_alive)
        wait_until(self.all_ready, 30, f"{INSTANCES} ready instances of web", check=self.check_alive)
        wait_until(lambda: answers(self.port, "v1"), 30, "chaind's proxy to answer v1",
                   check=self.check_alive)
        info("processes", target=self.label, chaind=self.procs[0][1].pid,
             instances=",".join(str(r["pid"]) for r in self.rows()))

    def rows(self):
        r = self.ctl("ls", "--json")
        try:
            return [x for x in json.loads(r.stdout) if x.get("unit") == "web"] if r.returncode == 0 else []
        except ValueError:
            return []

    def all_ready(self):
        rows = self.rows()
        return sum(1 for x in rows if x.get("ready") and x.get("routed")) == INSTANCES

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

    def analyse(self, name, deploys, t_start, t_end):
        # chaind's events for the whole life of this daemon, kept for inspection.
        ev = self.ctl("events", "--json", "-n", "100000", "--unit", "web")
        events = []
        for line in ev.stdout.decode(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        with open(os.path.join(self.dir, f"events-{name}.ndjson"), "w") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
        hist = self.ctl("history", "web", "-n", "1000")
        with open(os.path.join(self.dir, f"history-{name}.txt"), "wb") as f:
            f.write(hist.stdout)
        # The access log lines of this run that are not 2xx (every client: wrk, sampler, slow
        # clients, confirmations). The writer may lag a little behind the responses.
        time.sleep(1.0)
        bad = []
        total = 0
        try:
            with open(self.access_log, errors="replace") as f:
                f.seek(self.log_offset)
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    total += 1
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
        # Place each failure in the deploy sequence and next to the events of its instance.
        by_port = {}
        for e in events:
            m = re.search(r"pid (\d+) on port (\d+)", e.get("message", ""))
            if e.get("kind") == "started" and m:
                by_port.setdefault(int(m.group(2)), []).append(
                    (parse_iso(e["time"]), e.get("instance"), int(m.group(1))))
        for e in bad[:20]:
            t = parse_iso(e.get("time", "")) or 0
            idx = max((i for i, d in enumerate(deploys) if d["t0"] <= t), default=None)
            where = "before_first_deploy" if idx is None else \
                f"deploy{idx}+{t - deploys[idx]['t0']:.2f}s(took_{deploys[idx]['t1'] - deploys[idx]['t0']:.2f}s)"
            up = e.get("upstream") or ""
            port = int(up.rsplit(":", 1)[1]) if ":" in up else None
            inst = [x for x in by_port.get(port, []) if x[0] <= t + 0.001]
            inst_s = f"web.{inst[-1][1]}_pid{inst[-1][2]}" if inst else "?"
            later = [x for x in events if x.get("instance") == (inst[-1][1] if inst else -1)
                     and inst and parse_iso(x["time"]) >= inst[-1][0]][:6]
            info("failure", run=name, time=e.get("time"), where=where, status=e.get("status"),
                 error=e.get("error"), path=e.get("path"), upstream=up, generation=e.get("generation"),
                 instance=inst_s, duration_ms=e.get("duration_ms"),
                 instance_events="|".join(f"{x['time'][11:23]}:{x['kind']}:{x['message']}".replace(" ", "_")
                                          for x in later))


class Supervisord(Target):
    """The same demo, 4 processes under supervisord (own config and socket), behind nginx."""

    label = "supervisord"

    def __init__(self, bench, port):
        super().__init__(bench, port)
        self.conf = os.path.join(self.dir, "supervisord.conf")
        self.sock = os.path.join(self.dir, "supervisor.sock")
        self.version_file = os.path.join(self.dir, "version")
        self.ports = bench.sup_ports
        self.ngx = os.path.join(self.dir, "nginx")
        os.makedirs(self.ngx, exist_ok=True)
        self.access_log = os.path.join(self.ngx, "access.log")
        self.error_log = os.path.join(self.ngx, "error.log")
        self.offsets = (0, 0)

    def start(self):
        b = self.bench
        with open(self.version_file, "w") as f:
            f.write("v1\n")
        wrapper = os.path.join(self.dir, "web.sh")
        with open(wrapper, "w") as f:
            # supervisord's environment= is fixed at `reread`/`update`; the wrapper reads the
            # version at each start instead, and execs, so supervisord signals the demo itself.
            f.write(f'#!/bin/sh\nVERSION=$(cat "{self.version_file}")\nexport VERSION\n'
                    f'exec "{b.bin("demo")}"\n')
        os.chmod(wrapper, 0o755)
        with open(self.conf, "w") as f:
            f.write(
                f"[unix_http_server]\nfile={self.sock}\nchmod=0700\n\n"
                f"[supervisord]\nlogfile={self.dir}/supervisord.log\npidfile={self.dir}/supervisord.pid\n"
                f"childlogdir={self.dir}\nnodaemon=true\n\n"
                f"[rpcinterface:supervisor]\n"
                f"supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
                f"[supervisorctl]\nserverurl=unix://{self.sock}\n\n"
                f"[program:web]\n"
                f"command={wrapper}\n"
                f"process_name=web_%(process_num)d\n"
                f"numprocs={INSTANCES}\nnumprocs_start={self.ports[0]}\n"
                f'environment=PORT="%(process_num)d",{MARK_VAR}="{b.run}"\n'
                f"directory={self.dir}\n"
                # Defaults spelled out: SIGTERM, 10 s before SIGKILL (more than the 2 s requests),
                # RUNNING after 1 s.
                f"stopsignal=TERM\nstopwaitsecs=10\nstartsecs=1\n"
                f"autorestart=true\nredirect_stderr=true\n"
                f"stdout_logfile={self.dir}/web_%(process_num)d.log\n\n"
            )
        self.nginx_conf = write_nginx_conf(self.ngx, self.error_log, self.access_log, self.port,
                                           b.cert, b.key, self.ports)
        self.spawn("supervisord", [b.supervisord, "-c", self.conf])
        wait_until(self.all_running, 30, f"{INSTANCES} RUNNING programs under supervisord",
                   check=self.check_alive)
        self.spawn("nginx", [b.nginx, "-e", self.error_log, "-c", self.nginx_conf, "-g", "daemon off;"])
        wait_until(lambda: answers(self.port, "v1"), 30, "nginx to answer v1", check=self.check_alive)
        info("processes", target=self.label, supervisord=self.procs[0][1].pid, nginx=self.procs[1][1].pid)

    def ctl(self, *args, timeout=60):
        return subprocess.run([self.bench.supervisorctl, "-c", self.conf, *args], capture_output=True,
                              timeout=timeout, env=self.env(), cwd=self.dir)

    def all_running(self):
        r = self.ctl("status")
        lines = [x for x in r.stdout.decode(errors="replace").splitlines() if x.startswith("web:")]
        return len(lines) == INSTANCES and all(" RUNNING " in x for x in lines)

    def deploy(self, version):
        with open(self.version_file, "w") as f:
            f.write(version + "\n")
        r = self.ctl("restart", "web:*", timeout=DEPLOY_TIMEOUT)
        out = (r.stdout + r.stderr).decode(errors="replace")
        with open(os.path.join(self.dir, "deploys.log"), "a") as f:
            f.write(f"== {iso(time.time())} restart VERSION={version}: exit {r.returncode}\n{out}\n")
        ok = r.returncode == 0 and "ERROR" not in out and out.count("started") == INSTANCES
        return ok, out

    def mark_start(self):
        self.offsets = log_sizes(self.access_log, self.error_log)

    def analyse(self, name, deploys, t_start, t_end):
        bad = nginx_failures(name, self.access_log, self.error_log, self.offsets)
        # When in the deploy sequence the failures happened, and how long each outage lasted
        # (first to last failed response within each restart's window).
        phase = collections.Counter()
        spans = collections.defaultdict(list)
        for p in bad:
            t = float(p[0])
            idx = max((i for i, d in enumerate(deploys) if d["t0"] <= t), default=None)
            if idx is None:
                phase["before"] += 1
                continue
            spans[idx].append(t)
            if t <= deploys[idx]["t1"]:
                phase["during_restart"] += 1
            else:
                phase["after_restart_returned"] += 1
        outages = [max(ts) - min(ts) for ts in spans.values()]
        info("failure_phases", run=name, restarts_with_failures=len(spans),
             outage_s_min_med_max=fmt_s(outages), **phase)


# ---------------------------------------------------------------------------------------------
# nginx in front of the incumbent (this benchmark's supervisord, and bench/containers_bench.py's
# compose service)


def write_nginx_conf(ngx, error_log, access_log, port, cert, key, upstream_ports):
    """Writes DIR/nginx.conf and returns its path. Like chaind: 2 workers (chaind's default
    worker_threads on 2 cores), keep-alive to the upstreams, Host and X-Forwarded-* passed on.
    Everything else is nginx's default, in particular proxy_next_upstream "error timeout" (a GET
    that cannot connect is retried on the next server), except the servers' max_fails
    (NGINX_SERVER_PARAMS)."""
    tmp = "\n".join(f"  {k}_temp_path {ngx}/tmp_{k};" for k in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    servers = "\n".join(f"    server 127.0.0.1:{p}{NGINX_SERVER_PARAMS};" for p in upstream_ports)
    path = os.path.join(ngx, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""worker_processes 2;
pid {ngx}/nginx.pid;
error_log {error_log} warn;
events {{ worker_connections 10240; }}
http {{
  log_format bench '$msec $status $request_uri $upstream_addr $upstream_status $request_time';
  access_log {access_log} bench;
{tmp}
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  upstream web {{
{servers}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name {HOST};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://web;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
""")
    return path


def log_sizes(*paths):
    """Current sizes of the files (0 for a missing one): where a run's lines will start."""
    def size(p):
        try:
            return os.path.getsize(p)
        except OSError:
            return 0
    return tuple(size(p) for p in paths)


def nginx_failures(name, access_log, error_log, offsets):
    """Reads nginx's access and error logs from `offsets` (see log_sizes) after a run, reports
    the non-2xx responses by status and path and the most frequent error-log messages, and
    returns the non-2xx access-log lines, split into fields (`$msec $status $request_uri ...`)."""
    time.sleep(0.5)
    bad, total = [], 0
    try:
        with open(access_log, errors="replace") as f:
            f.seek(offsets[0])
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                total += 1
                if not parts[1].startswith("2"):
                    bad.append(parts)
    except OSError as e:
        info("access_log", run=name, error=short(e))
    kinds = collections.Counter((p[1], p[2].split("?")[0].strip("/") or "root") for p in bad)
    info("access_log", run=name, lines=total, not_2xx=len(bad),
         **{f"{s}_{path}": n for (s, path), n in sorted(kinds.items(), key=lambda kv: -kv[1])})
    cats = collections.Counter()
    try:
        with open(error_log, errors="replace") as f:
            f.seek(offsets[1])
            for line in f:
                m = re.search(r"\[(\w+)\] \d+#\d+: \*?\d* ?(.*?)(?: while |, client:|$)", line)
                if m:
                    msg = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDR", m.group(2))
                    msg = re.sub(r"\(\d+: ", "(", msg)
                    cats[f"{m.group(1)}:{msg}"[:70]] += 1
    except OSError:
        pass
    for k, n in cats.most_common(8):
        info("nginx_error_log", run=name, count=n, message=k.replace(" ", "_"))
    return bad


# ---------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, bindir, run):
        self.bindir = bindir
        self.run = run
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.supervisord = shutil.which("supervisord")
        self.supervisorctl = shutil.which("supervisorctl")
        for tool in (self.nginx, self.supervisord, self.supervisorctl, "wrk", "openssl"):
            if not tool or not shutil.which(tool):
                raise BenchError(f"{tool} not found")
        self.lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy.lua")
        # Proxy listeners, one per target; instance ports from blocks below the ephemeral range
        # (the proxy benchmark uses 18080-19999).
        proxy_ports = free_block(3, 17000, 17999)
        self.proxy_port = {"rolling": proxy_ports[0], "blue-green": proxy_ports[1],
                           "supervisord": proxy_ports[2]}
        # Back-to-back deploys with slow requests leave many old instances draining, each holding
        # its port: give chaind plenty.
        self.chain_ports = free_block(200, 31000, 32700)
        self.sup_ports = free_block(INSTANCES, 31000, 32700, taken=set(self.chain_ports))
        info("ports", proxy=",".join(f"{k}:{v}" for k, v in self.proxy_port.items()),
             chain_instances=f"{self.chain_ports[0]}-{self.chain_ports[-1]}",
             supervisord_instances=f"{self.sup_ports[0]}-{self.sup_ports[-1]}")
        try:
            ip = socket.gethostbyname(HOST)
        except OSError:
            ip = None
        if ip != "127.0.0.1":
            raise BenchError(f"{HOST} must resolve to 127.0.0.1 (wrk takes SNI from the URL); it resolves to {ip}")
        self.make_cert()
        self.targets = []
        self.results = []

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

    def load_run(self, target, slow):
        name = f"deploy_{target.label.replace('chain-', '').replace('-', '_')}" + ("_slow" if slow else "")
        log(f"{name}: wrk -t{WRK_THREADS} -c{WRK_CONNS} + sampler"
            + (f" + {SLOW_CLIENTS} clients of /sleep?ms={SLOW_MS}" if slow else "")
            + f", {DEPLOYS} deploys back to back")
        target.mark_start()
        sampler = Sampler(target.port)
        counter = ProcessCounter(target.procs[0][1].pid)
        slows = [SlowClient(target.port) for _ in range(SLOW_CLIENTS)] if slow else []
        wrk_out_path = os.path.join(self.run, f"wrk-{name}.out")
        wrk_out = open(wrk_out_path, "wb")
        wrk = subprocess.Popen(
            ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", "-d3600s", "--latency", "-s", self.lua,
             f"https://{HOST}:{target.port}/"],
            stdout=wrk_out, stderr=subprocess.STDOUT, cwd=self.run, env=self.tool_env())
        t_start = time.time()
        sampler.start()
        counter.start()
        for s in slows:
            s.start()
        deploys = []
        try:
            time.sleep(WARMUP)
            if wrk.poll() is not None:
                raise BenchError(f"wrk exited early:\n{open(wrk_out_path, errors='replace').read()}")
            current = "v1"
            for i in range(DEPLOYS):
                new = "v2" if i % 2 == 0 else "v1"
                t0 = time.time()
                ok, out = target.deploy(new)
                t1 = time.time()
                flipped, took, stale, errors = confirm(target.port, new, current)
                d = {"i": i, "version": new, "t0": t0, "t1": t1, "ok": ok, "flipped": flipped,
                     "confirm_s": took, "stale": stale, "confirm_errors": errors}
                deploys.append(d)
                if not ok:
                    log(f"WARN {name}: deploy {i} (VERSION={new}) failed:\n{out[-1500:]}")
                if not flipped:
                    log(f"WARN {name}: after deploy {i} (VERSION={new}) no clean flip: "
                        f"{stale} stale answers, {errors} errors in {took:.1f} s")
                if flipped:
                    current = new
                target.check_alive()
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
            for s in slows:
                s.stop_flag.set()
            sampler.stop_flag.set()
            counter.stop_flag.set()
            for s in slows:
                s.join(SLOW_MS / 1000 + 35)
            sampler.join(15)
            counter.join(5)
        t_end = time.time()
        w = parse_wrk(open(wrk_out_path, errors="replace").read())

        # The sampler's view: version changes within each deploy's window (from its start to the
        # next one's start); blue-green should show exactly one per window (no flip-back).
        ok_samples = [(t, v) for t, st, v, _ in sampler.samples if st == 200]
        failed_samples = [(t, st, v) for t, st, v, _ in sampler.samples if st != 200]
        changes = [(ok_samples[k][0], ok_samples[k - 1][1], ok_samples[k][1])
                   for k in range(1, len(ok_samples)) if ok_samples[k][1] != ok_samples[k - 1][1]]
        per_window = []
        for i, d in enumerate(deploys):
            end = deploys[i + 1]["t0"] if i + 1 < len(deploys) else t_end
            per_window.append(sum(1 for t, _, _ in changes if d["t0"] <= t < end))
        before = sum(1 for t, _, _ in changes if deploys and t < deploys[0]["t0"])
        info("sampler", run=name, samples=len(sampler.samples), failed=len(failed_samples),
             changes=len(changes), changes_before_first_deploy=before,
             windows_one_change=sum(1 for n in per_window if n == 1),
             windows_no_change=sum(1 for n in per_window if n == 0),
             windows_several=sum(1 for n in per_window if n > 1),
             changes_per_window=",".join(map(str, per_window)))
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
             demo_processes_min_max=f"{min(counter.counts, default=0)}/{max(counter.counts, default=0)}")
        info("wrk", run=name, requests=w["requests"], rps=f"{w['rps']:.0f}", p50=w["p50"], p99=w["p99"],
             max=w["max"], wrk_non2xx_3xx=w["wrk_non2xx_3xx"],
             **{f"sock_{k}": v for k, v in w["sock"].items()}, **w["lua"])
        line = (f"RESULT {name} requests={w['requests']} non2xx={w['non2xx']} "
                f"socket_errors={w['socket_errors']} deploys={deploys_ok} flips={flips}")
        if slow:
            slow_ok = sum(s.ok for s in slows)
            slow_failed = [f for s in slows for f in s.failed]
            # A request that failed after 0.5 s or more was cut while in flight; one that failed
            # at once was refused (no instance to take it).
            info("slow", run=name, clients=SLOW_CLIENTS, ms=SLOW_MS, ok=slow_ok, failed=len(slow_failed),
                 cut=sum(1 for f in slow_failed if f[1] - f[0] >= 0.5),
                 **dict(collections.Counter(f[2] for f in slow_failed).most_common(6)))
            for t0, t1, what in slow_failed[:10]:
                idx = max((i for i, d in enumerate(deploys) if d["t0"] <= t0), default=None)
                info("slow_failure", run=name, start=iso(t0), after_s=f"{t1 - t0:.2f}", what=what,
                     deploy=idx)
            line += f" slow_ok={slow_ok} slow_failed={len(slow_failed)}"
        target.analyse(name, deploys, t_start, t_end)
        log(line.replace("RESULT ", "done: "))
        self.results.append(line)

    def main(self):
        t0 = time.monotonic()
        slow_variants = [v == "slow" for v in VARIANTS if v in ("plain", "slow")]
        info("plan", deploys=DEPLOYS, targets=",".join(TARGETS), variants=",".join(VARIANTS),
             instances=INSTANCES, wrk=f"-t{WRK_THREADS}-c{WRK_CONNS}", slow_clients=SLOW_CLIENTS,
             slow_ms=SLOW_MS, sample_every_ms=int(SAMPLE_EVERY * 1000), warmup_s=WARMUP,
             cooldown_s=COOLDOWN)
        for name in TARGETS:
            if name in ("rolling", "blue-green"):
                t = Chain(self, self.proxy_port[name], name)
            elif name == "supervisord":
                t = Supervisord(self, self.proxy_port[name])
            else:
                raise BenchError(f"unknown target {name!r} in BENCH_TARGETS")
            log(f"starting {t.label}")
            self.targets.append(t)
            t.start()
            for slow in slow_variants:
                self.load_run(t, slow)
            t.stop()
            self.targets.remove(t)
        info("elapsed", seconds=f"{time.monotonic() - t0:.0f}", load=open("/proc/loadavg").read().split()[0])
        for line in self.results:
            print(line, flush=True)

    def cleanup(self):
        for t in list(self.targets):
            try:
                t.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                log(f"WARN stopping {t.label}: {e}")
        kill_ours(self.run, MARK_VAR)


if __name__ == "__main__":
    sys.exit(cli_main(Bench))
