#!/usr/bin/env bash
# Proxy benchmark: chaind's proxy vs nginx and haproxy, in the same run on the same machine.
#
#   bash bench/proxy.sh                # full run: medians of 3 runs of 15 s (about 30 minutes)
#   BENCH_QUICK=1 bash bench/proxy.sh  # smoke run: 1 run of 5 s per figure (about 5 minutes)
#
# Builds the release binaries, installs nginx, haproxy, wrk and h2load (Debian packages nginx,
# haproxy, wrk, nghttp2-client) when missing, maps bench.local to 127.0.0.1 in /etc/hosts for
# the duration of the run (wrk takes the TLS SNI from the URL's host), then runs
# bench/proxy_bench.py, which ends with one line per figure and competitor:
#   RESULT <row> chain=<value> nginx=<value> ratio=<chain/nginx>
#   RESULT <row> chain=<value> haproxy=<value> ratio=<chain/haproxy>
#
# Environment:
#   BENCH_QUICK=1      1 run of 5 s per figure instead of the median of 3 runs of 15 s
#   BENCH_NO_BUILD=1   use the binaries already in target/release
#   BENCH_BIN=DIR      use DIR/chaind and DIR/chainctl (e.g. a build of a clean `git archive`
#                      of one commit in its own CARGO_TARGET_DIR); implies no build
#   BENCH_KEEP=1       keep the temporary directory (configs, logs, perf data) for inspection
#   BENCH_TIMEOUT=5400 hard limit in seconds for the whole measurement
#   BENCH_PERF=1       also profile each proxy with perf during an HTTPS keep-alive run
#   BENCH_PERF_ROW=http  profile during that row's load instead (https, http, newconn, h2)
#   BENCH_WORKERS=1,2  BENCH_ROWS=https,http,newconn,h2  BENCH_PROXIES=chain,nginx,haproxy
#   BENCH_RUNS=N BENCH_DURATION=S  BENCH_NGINX_KEEPALIVE=256  BENCH_MAX_FOREIGN=0.25
#   (see bench/proxy_bench.py)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

die() { echo "proxy.sh: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is required"
command -v openssl >/dev/null || die "openssl is required"

bindir=${BENCH_BIN:-target/release}
if [[ -n "${BENCH_BIN:-}" ]]; then
    BENCH_NO_BUILD=1
elif [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    echo "== building release binaries (waits for the cargo lock if another build runs)"
    cargo build --release --bins --examples \
        || die "cargo build failed; fix the build, or rerun with BENCH_NO_BUILD=1 to measure the binaries already in target/release"
fi
for b in chaind chainctl; do
    [[ -x $bindir/$b ]] || die "$bindir/$b is missing; build with: cargo build --release --bins --examples"
done

missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]} and we are not root: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d (present in containers) keeps the packages from starting their own services.
    apt-get install -y "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; } \
        || die "cannot install ${missing[*]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

run=$(mktemp -d /tmp/chain-bench-proxy.XXXXXX)
hosts_tag="# chain-bench-proxy $run"
py_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
    # Every process the benchmark started runs with its working directory under $run (nginx,
    # haproxy, chaind, the backend unit, wrk, h2load, perf) or carries BENCH_PROXY_RUN=$run in
    # its environment: kill exactly those, and nothing else.
    local pids=() f pid cwd
    for f in /proc/[0-9]*; do
        pid=${f#/proc/}
        [[ $pid == $$ ]] && continue
        cwd=$(readlink "$f/cwd" 2>/dev/null || true)
        if [[ $cwd == "$run" || $cwd == "$run"/* ]] \
            || tr '\0' '\n' 2>/dev/null <"$f/environ" | grep -qxF "BENCH_PROXY_RUN=$run"; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        echo "proxy.sh: killing ${#pids[@]} leftover processes: ${pids[*]}" >&2
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    # Remove our /etc/hosts line (in place: /etc/hosts is often a bind mount).
    if grep -qF "$hosts_tag" /etc/hosts 2>/dev/null; then
        local kept
        kept=$(grep -vF "$hosts_tag" /etc/hosts || true)
        printf '%s\n' "$kept" >/etc/hosts
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        echo "proxy.sh: kept $run" >&2
    else
        rm -rf "$run"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# wrk and h2load take the TLS SNI from the URL's host: bench.local must resolve to 127.0.0.1.
if [[ $(getent ahostsv4 bench.local 2>/dev/null | awk 'NR==1{print $1}') != 127.0.0.1 ]]; then
    [[ -w /etc/hosts ]] || die "bench.local does not resolve to 127.0.0.1 and /etc/hosts is not writable"
    printf '127.0.0.1 bench.local %s\n' "$hosts_tag" >>/etc/hosts
fi

# Private copies: other builds in the same target directory must not swap binaries mid-run.
mkdir -p "$run/bin"
cp -p "$bindir/chaind" "$bindir/chainctl" "$run/bin/"

echo "== machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $(nginx -v 2>&1), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(h2load --version | head -1), $(openssl version)"
[[ -n "${BENCH_BIN:-}" ]] && echo "== binaries from $BENCH_BIN (not target/release)"
echo "== chain HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src agent Cargo.toml Cargo.lock 2>/dev/null || echo ' (+ uncommitted changes in src/agent/Cargo.*)')${BENCH_NO_BUILD:+ (not rebuilt: the binaries may predate HEAD)}"
dirty=$(git status --porcelain -- src agent Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
[[ -n "$dirty" ]] && echo "== uncommitted when the script started: $dirty"
echo "== chaind binary: sha256 $(sha256sum "$run/bin/chaind" | cut -c1-16), $(stat -c %s "$run/bin/chaind") bytes, built $(date -u -r "$run/bin/chaind" +%FT%TZ)"
echo "== run directory: $run${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}"

timeout --signal=TERM --kill-after=30 "${BENCH_TIMEOUT:-5400}" \
    python3 "$here/proxy_bench.py" --bin "$run/bin" --run "$run" &
py_pid=$!
wait "$py_pid"
