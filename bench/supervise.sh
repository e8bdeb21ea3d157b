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

NAME=supervise.sh
MARK_VAR=BENCH_SUPERVISE_RUN
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

command -v python3 >/dev/null || die "python3 is required"

bench_build
for b in chaind chainctl examples/demo examples/logspam; do
    [[ -x target/release/$b ]] || die "target/release/$b is missing; build with: cargo build --release --bins --examples"
done

bench_need supervisord:supervisor supervisorctl:supervisor

run=$(mktemp -d /tmp/chain-bench-supervise.XXXXXX)
RUN=$run
py_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # The daemons, their workloads and the directly started demos.
    bench_cleanup "$py_pid" 100
    exit "$rc"
}
bench_traps cleanup

bench_copy_bins target/release/chaind target/release/chainctl target/release/examples/demo \
    target/release/examples/logspam
bench_describe
echo "== versions: supervisord $(supervisord --version)"

timeout --signal=TERM --kill-after=20 "${BENCH_TIMEOUT:-900}" \
    python3 "$here/supervise.py" --bin "$run/bin" --run "$run" &
py_pid=$!
wait "$py_pid"
