#!/usr/bin/env bash
# Proxy benchmark: chaind's proxy vs nginx and haproxy, in the same run on the same machine.
#
#   bash bench/proxy.sh                # full run: medians of 3 runs of 15 s (about 30 minutes)
#   BENCH_QUICK=1 bash bench/proxy.sh  # smoke run: 1 run of 5 s per figure (about 5 minutes)
#
# Builds the release binaries, installs nginx, haproxy, wrk, h2load and hey (Debian packages nginx,
# haproxy, wrk, nghttp2-client, hey) when missing, maps bench.local to 127.0.0.1 in /etc/hosts for
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
#   BENCH_INSTR=1      instead of the load runs: user-space instructions per request of each
#                      proxy's worker under valgrind (callgrind), a figure that does not move
#                      between runs (bench/instructions.py; installs valgrind when missing)
#   BENCH_INSTR_CACHE=1  with BENCH_INSTR=1: also simulated L1 instruction-cache misses and
#                      estimated cycles per request (callgrind --cache-sim=yes)
#   BENCH_WORKERS=1,2  BENCH_ROWS=https,https_paced,http,newconn,newconn_paced,fullhs,fullhs_paced,h2
#   BENCH_PROXIES=chain,nginx,haproxy
#   BENCH_RUNS=N BENCH_DURATION=S  BENCH_NGINX_KEEPALIVE=256  BENCH_MAX_FOREIGN=0.25
#   (see bench/proxy_bench.py)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

NAME=proxy.sh
MARK_VAR=BENCH_PROXY_RUN
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

command -v python3 >/dev/null || die "python3 is required"
command -v openssl >/dev/null || die "openssl is required"

bindir=${BENCH_BIN:-target/release}
bench_build
for b in chaind chainctl; do
    [[ -x $bindir/$b ]] || die "$bindir/$b is missing; build with: cargo build --release --bins --examples"
done

bench_need nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client hey:hey

run=$(mktemp -d /tmp/chain-bench-proxy.XXXXXX)
RUN=$run
py_pid=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    # nginx, haproxy, chaind, the backend unit, wrk, h2load, perf.
    bench_cleanup "$py_pid" 300
    exit "$rc"
}
bench_traps cleanup

bench_hosts_add
bench_copy_bins "$bindir/chaind" "$bindir/chainctl"
bench_describe
echo "== versions: $(nginx -v 2>&1), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(h2load --version | head -1), $(openssl version)"

script=proxy_bench.py
if [[ ${BENCH_INSTR:-} == 1 ]]; then
    bench_need valgrind:valgrind
    script=instructions.py
fi
timeout --signal=TERM --kill-after=30 "${BENCH_TIMEOUT:-5400}" \
    python3 "$here/$script" --bin "$run/bin" --run "$run" &
py_pid=$!
wait "$py_pid"
