#!/usr/bin/env bash
# Supervision benchmark: chaind vs supervisord, in the same run on the same machine.
#
#   bash bench/supervise.sh              # full run (a few minutes)
#   BENCH_QUICK=1 bash bench/supervise.sh  # smoke run: fewer repetitions
#
# Builds the release binaries, installs supervisord (Debian package `supervisor`) when it is
# missing, then runs bench/supervise.py, which prints one line per measure:
#   RESULT <measure> chain=<value> supervisord=<value> ratio=<chain/supervisord>
#
# Environment:
#   BENCH_QUICK=1      fewer repetitions
#   BENCH_NO_BUILD=1   use the binaries already in target/release
#   BENCH_KEEP=1       keep the temporary directory (logs, configs) for inspection
#   BENCH_TIMEOUT=900  hard limit in seconds for the whole measurement
#   BENCH_N=100        instances per daemon (the measure names keep saying 100)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

die() { echo "supervise.sh: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is required"

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    echo "== building release binaries (waits for the cargo lock if another build runs)"
    cargo build --release --bins --examples \
        || die "cargo build failed; fix the build, or rerun with BENCH_NO_BUILD=1 to measure the binaries already in target/release"
fi
for b in chaind chainctl examples/demo examples/logspam; do
    [[ -x target/release/$b ]] || die "target/release/$b is missing; build with: cargo build --release --bins --examples"
done

if ! command -v supervisord >/dev/null || ! command -v supervisorctl >/dev/null; then
    echo "== installing supervisor"
    [[ $(id -u) == 0 ]] || die "supervisord is missing and we are not root: apt-get install supervisor"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d (present in containers) keeps the package from starting its own service.
    apt-get install -y supervisor >/dev/null || { apt-get update >/dev/null && apt-get install -y supervisor >/dev/null; } \
        || die "cannot install supervisor"
fi

run=$(mktemp -d /tmp/chain-bench-supervise.XXXXXX)
py_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
    # Every process the benchmark started (daemons, their workloads, direct demos) carries
    # BENCH_SUPERVISE_RUN=$run in its environment: kill exactly those, and nothing else.
    local pids=() f pid
    for f in /proc/[0-9]*/environ; do
        pid=${f#/proc/}; pid=${pid%/environ}
        if tr '\0' '\n' 2>/dev/null <"$f" | grep -qxF "BENCH_SUPERVISE_RUN=$run"; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        echo "supervise.sh: killing ${#pids[@]} leftover processes: ${pids[*]}" >&2
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        echo "supervise.sh: kept $run" >&2
    else
        rm -rf "$run"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Private copies: other builds in the same target directory must not swap binaries mid-run.
mkdir -p "$run/bin"
cp -p target/release/chaind target/release/chainctl target/release/examples/demo \
    target/release/examples/logspam "$run/bin/"

echo "== machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "== versions: supervisord $(supervisord --version), chain HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src agent examples 2>/dev/null || echo ' (+ uncommitted changes in src/agent/examples)')${BENCH_NO_BUILD:+ (not rebuilt: the binaries may predate HEAD)}"
echo "== chaind binary: sha256 $(sha256sum "$run/bin/chaind" | cut -c1-16), $(stat -c %s "$run/bin/chaind") bytes, built $(date -u -r "$run/bin/chaind" +%FT%TZ)"
echo "== run directory: $run${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}"

timeout --signal=TERM --kill-after=20 "${BENCH_TIMEOUT:-900}" \
    python3 "$here/supervise.py" --bin "$run/bin" --run "$run" &
py_pid=$!
wait "$py_pid"
