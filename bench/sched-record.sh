#!/bin/bash
# BENCH_LOADGEN_WRAP helper: runs the load generator under `perf sched record` (system-wide) for
# the 5 s samples of a proxy benchmark only (not the warm-ups, not the backend-direct runs), one
# file per sample: $SCHED_DIR/<proxy port>-<ns>.data. Read them with bench/sched_waits.py.
dir="${SCHED_DIR:-/tmp/sched}"
mkdir -p "$dir"
url="${*: -1}"; port="${url##*:}"; port="${port%%/*}"
if [[ " $* " == *" -d5s "* && "$port" != 18080 ]]; then
  exec perf sched record -q -o "$dir/$port-$(date +%s%N).data" -- "$@" 2>/dev/null
fi
exec "$@"
