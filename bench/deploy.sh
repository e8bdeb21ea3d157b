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

NAME=deploy.sh
MARK_VAR=BENCH_DEPLOY_RUN
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

command -v python3 >/dev/null || die "python3 is required"
command -v openssl >/dev/null || die "openssl is required"

bindir=${BENCH_BIN:-target/release}
demo=$bindir/examples/demo
[[ -n "${BENCH_BIN:-}" ]] && demo=$bindir/demo
bench_build
for b in "$bindir/chaind" "$bindir/chainctl" "$demo"; do
    [[ -x $b ]] || die "$b is missing; build with: cargo build --release --bins --examples"
done

bench_need nginx:nginx supervisord:supervisor supervisorctl:supervisor wrk:wrk

run=$(mktemp -d /tmp/chain-bench-deploy.XXXXXX)
RUN=$run
py_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # chaind and its instances, supervisord and its programs, nginx, wrk.
    bench_cleanup "$py_pid" 600
    exit "$rc"
}
bench_traps cleanup

bench_hosts_add
bench_copy_bins "$bindir/chaind" "$bindir/chainctl" "$demo"
bench_describe
echo "== versions: $(nginx -v 2>&1), supervisord $(supervisord --version), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(openssl version), Python $(python3 -c 'import platform; print(platform.python_version())')"

timeout --signal=TERM --kill-after=30 "${BENCH_TIMEOUT:-1500}" \
    python3 "$here/deploy_bench.py" --bin "$run/bin" --run "$run" &
py_pid=$!
wait "$py_pid"
