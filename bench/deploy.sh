#!/usr/bin/env bash
# Zero-downtime deploy benchmark: chain's rolling and blue-green deploys under load, and
# supervisord `restart` behind nginx for contrast, in the same run on the same machine.
#
#   bash bench/deploy.sh                # full run: 20 deploys per run, 6 runs (about 10 minutes)
#   BENCH_QUICK=1 bash bench/deploy.sh  # smoke run: 4 deploys per run
#
# Builds the release binaries, installs nginx, supervisor and wrk (Debian packages) when
# missing, maps bench.local to 127.0.0.1 in /etc/hosts for the duration of the run (wrk takes
# the TLS SNI from the URL's host), then runs bench/deploy_bench.py, which ends with one line
# per run:
#   RESULT deploy_<rolling|blue_green|supervisord>[_slow] requests=<n> non2xx=<n>
#          socket_errors=<n> deploys=<n> flips=<n> [slow_ok=<n> slow_failed=<n>]
#
# Environment:
#   BENCH_QUICK=1      4 deploys per run instead of 20
#   BENCH_NO_BUILD=1   use the binaries already in target/release
#   BENCH_BIN=DIR      use DIR/chaind, DIR/chainctl and DIR/demo; implies no build
#   BENCH_KEEP=1       keep the temporary directory (configs, logs, events, access logs)
#   BENCH_TIMEOUT=1500 hard limit in seconds for the whole measurement
#   BENCH_DEPLOYS=N  BENCH_TARGETS=rolling,blue-green,supervisord  BENCH_VARIANTS=plain,slow
#   (see bench/deploy_bench.py)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

die() { echo "deploy.sh: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is required"
command -v openssl >/dev/null || die "openssl is required"

bindir=${BENCH_BIN:-target/release}
demo=$bindir/examples/demo
if [[ -n "${BENCH_BIN:-}" ]]; then
    BENCH_NO_BUILD=1
    demo=$bindir/demo
elif [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    echo "== building release binaries (waits for the cargo lock if another build runs)"
    nice -n 19 cargo build --release --bins --examples \
        || die "cargo build failed; fix the build, or rerun with BENCH_NO_BUILD=1 to measure the binaries already in target/release"
fi
for b in "$bindir/chaind" "$bindir/chainctl" "$demo"; do
    [[ -x $b ]] || die "$b is missing; build with: cargo build --release --bins --examples"
done

missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v supervisord >/dev/null && command -v supervisorctl >/dev/null || missing+=(supervisor)
command -v wrk >/dev/null || missing+=(wrk)
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

run=$(mktemp -d /tmp/chain-bench-deploy.XXXXXX)
hosts_tag="# chain-bench-deploy $run"
py_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq 600); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
    # Every process the benchmark started runs with its working directory under $run (chaind
    # and its instances, supervisord and its programs, nginx, wrk) or carries
    # BENCH_DEPLOY_RUN=$run in its environment: kill exactly those, and nothing else.
    local pids=() f pid cwd
    for f in /proc/[0-9]*; do
        pid=${f#/proc/}
        [[ $pid == $$ ]] && continue
        cwd=$(readlink "$f/cwd" 2>/dev/null || true)
        if [[ $cwd == "$run" || $cwd == "$run"/* ]] \
            || tr '\0' '\n' 2>/dev/null <"$f/environ" | grep -qxF "BENCH_DEPLOY_RUN=$run"; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        echo "deploy.sh: killing ${#pids[@]} leftover processes: ${pids[*]}" >&2
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    # Remove our /etc/hosts line (in place: /etc/hosts is often a bind mount).
    if grep -qF "$hosts_tag" /etc/hosts 2>/dev/null; then
        local kept
        kept=$(grep -vF "$hosts_tag" /etc/hosts || true)
        printf '%s\n' "$kept" >/etc/hosts
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        echo "deploy.sh: kept $run" >&2
    else
        rm -rf "$run"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# wrk takes the TLS SNI from the URL's host: bench.local must resolve to 127.0.0.1. Our own
# line even when another one (another benchmark's) is there: that one may go away mid-run.
[[ -w /etc/hosts ]] || [[ $(getent ahostsv4 bench.local 2>/dev/null | awk 'NR==1{print $1}') == 127.0.0.1 ]] \
    || die "bench.local does not resolve to 127.0.0.1 and /etc/hosts is not writable"
[[ -w /etc/hosts ]] && printf '127.0.0.1 bench.local %s\n' "$hosts_tag" >>/etc/hosts

# Private copies: other builds in the same target directory must not swap binaries mid-run.
mkdir -p "$run/bin"
cp -p "$bindir/chaind" "$bindir/chainctl" "$demo" "$run/bin/"

echo "== machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: $(nginx -v 2>&1), supervisord $(supervisord --version), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(openssl version), Python $(python3 -c 'import platform; print(platform.python_version())')"
[[ -n "${BENCH_BIN:-}" ]] && echo "== binaries from $BENCH_BIN (not target/release)"
echo "== chain HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src agent examples Cargo.toml Cargo.lock 2>/dev/null || echo ' (+ uncommitted changes in src/agent/examples/Cargo.*)')${BENCH_NO_BUILD:+ (not rebuilt: the binaries may predate HEAD)}"
dirty=$(git status --porcelain -- src agent examples Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
[[ -n "$dirty" ]] && echo "== uncommitted when the script started: $dirty"
echo "== chaind binary: sha256 $(sha256sum "$run/bin/chaind" | cut -c1-16), $(stat -c %s "$run/bin/chaind") bytes, built $(date -u -r "$run/bin/chaind" +%FT%TZ)"
echo "== run directory: $run${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}"

timeout --signal=TERM --kill-after=30 "${BENCH_TIMEOUT:-1500}" \
    python3 "$here/deploy_bench.py" --bin "$run/bin" --run "$run" &
py_pid=$!
wait "$py_pid"
