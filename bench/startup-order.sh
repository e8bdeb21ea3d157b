#!/usr/bin/env bash
# Regenerates src/bin/chaind.order: the functions chaind runs from exec until it has loaded
# its units, answered one API call and sat idle for a moment. build.rs hands the file to the
# linker (`--symbol-ordering-file`), which puts those functions next to each other in .text.
#
# Why: the kernel maps a binary's code in 64 KiB windows around each page fault, so the code
# that start-up touches, scattered over 9 MB of .text, kept about 7 MB of chaind resident
# although far less of it runs. Packed together, it fits in a fraction of that.
#
#   bash bench/startup-order.sh      # needs valgrind (Debian package); about 2 minutes
#
# Run it again when the idle RSS reported by bench/supervise.sh creeps up: names that no
# longer exist in the binary are skipped by the linker, and new start-up code is not packed.
# The function names carry cargo's metadata hashes, which change with the compiler version,
# dependency versions and features, not with ordinary edits.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

command -v valgrind >/dev/null || { echo "installing valgrind" >&2; apt-get install -y valgrind >/dev/null; }
# The same build as the README's and the benchmarks' (`--examples` too): building the examples
# unifies some dependencies' features differently, which changes the symbols' hashes.
cargo build --release --bins --examples

run=$(mktemp -d /tmp/chain-startup-order.XXXXXX)
vg=
cleanup() {
    [[ -n "$vg" ]] && kill -9 "$vg" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
mkdir -p "$run/root" "$run/units"

valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
    --callgrind-out-file="$run/callgrind.out" \
    target/release/chaind --root "$run/root" --units "$run/units" >"$run/chaind.log" 2>&1 &
vg=$!
for _ in $(seq 1200); do
    if [[ -S "$run/root/chaind.sock" ]] \
        && target/release/chainctl --socket "$run/root/chaind.sock" ls --json >/dev/null 2>&1; then
        break
    fi
    kill -0 "$vg" 2>/dev/null || { cat "$run/chaind.log" >&2; echo "chaind exited under valgrind" >&2; exit 1; }
    sleep 0.1
done
target/release/chainctl --socket "$run/root/chaind.sock" status >/dev/null 2>&1 || true
sleep 3
# SIGTERM: chaind shuts down normally and valgrind writes the profile at exit (the shutdown
# path is a few functions more; they do no harm).
kill -TERM "$vg"
wait "$vg" || true
vg=

python3 - "$run/callgrind.out" src/bin/chaind.order <<'PY'
import sys

src, dst = sys.argv[1], sys.argv[2]
seen, order, ob = set(), [], ""
for line in open(src, errors="replace"):
    if line.startswith("ob="):
        ob = line[3:].strip()
    elif line.startswith("fn="):
        name = line[3:].strip()
        # Only chaind's own functions (not libc's), and only symbols the linker can place.
        if ob.endswith("/chaind") and not name.startswith("0x") and name not in seen:
            seen.add(name)
            order.append(name)
with open(dst, "w") as f:
    f.write("\n".join(order) + "\n")
print(f"{dst}: {len(order)} functions")
PY
