#!/bin/bash
# BENCH_LOADGEN_WRAP helper: for the 5 s samples of a proxy benchmark (not the warm-ups, not the
# backend-direct runs), records every system call the proxy's processes make for 2 s in the
# middle of the sample (`perf record -e raw_syscalls:*`), with a snapshot of their TCP
# connections (`ss -tnp`) to tell client sockets from upstream ones. Three files per sample:
# $ORDER_DIR/<proxy port>-<ns>.{data,ss,meta}. Read them with bench/order_of_work.py.
# For keep-alive rows only: the snapshot maps file descriptors to connections once.
dir="${ORDER_DIR:-/tmp/order}"
backend="${BENCH_BACKEND_PORT:-18080}"
mkdir -p "$dir"
url="${*: -1}"; port="${url##*:}"; port="${port%%/*}"
if [[ " $* " != *" -d5s "* || "$port" == "$backend" ]]; then
  exec "$@"
fi
stem="$dir/$port-$(date +%s%N)"
"$@" &
gen=$!
sleep 1.5
pids=$(ss -Htlnp "sport = :$port" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | paste -sd,)
ss -Htnp > "$stem.ss"
echo "port=$port backend=$backend pids=$pids" > "$stem.meta"
perf record -q -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -p "$pids" \
  -o "$stem.data" -- sleep 2 2>/dev/null
wait "$gen"
