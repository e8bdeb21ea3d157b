#!/usr/bin/env bash
# Builds the local image that container tests and benchmarks run (no registry is needed):
# a busybox rootfs (Debian's busybox-static: sh, httpd, nc, wget, sleep, ...) plus the demo
# app (examples/demo.rs) with the shared libraries it links, imported with `docker import`.
#
#   tests/images/build.sh [DEMO_BINARY]     # default: target/debug/examples/demo
#
# Prints the image reference, `chain-test:<content hash>`; the image is also tagged
# `chain-test:latest`. An image with the same content hash is reused, so calling this again is
# cheap. Used by .ci/run, by tests/support (once per test binary) and by bench/containers.sh.
set -euo pipefail

die() { echo "tests/images/build.sh: $*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
demo=${1:-$repo/target/debug/examples/demo}
busybox=/bin/busybox

command -v docker >/dev/null || die "docker is not installed"
[[ -x $busybox ]] || die "$busybox is missing: apt-get install busybox-static"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install the static one: apt-get install busybox-static"
fi
[[ -x $demo ]] || die "$demo is missing: cargo build --examples"

hash=$(cat "$busybox" "$demo" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
ref="chain-test:$hash"
if docker image inspect "$ref" >/dev/null 2>&1; then
    echo "$ref"
    exit 0
fi

root=$(mktemp -d /tmp/chain-test-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,app,etc,tmp,www,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
cp "$demo" "$root/app/demo"
# The demo is linked against the host's glibc: bring its libraries along.
for lib in $(ldd "$demo" | grep -o '/[^ )]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
echo "chain test page" >"$root/www/index.html"

tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/app:/bin' \
    -c 'WORKDIR /' \
    -c 'CMD ["/bin/sh"]' \
    -m "chain test image: busybox + demo" - "$ref" >/dev/null
docker tag "$ref" chain-test:latest
# Older builds go (one in use by a container stays; rmi refuses it).
for old in $(docker images chain-test --format '{{.Tag}}'); do
    [[ $old == "$hash" || $old == latest ]] || docker rmi "chain-test:$old" >/dev/null 2>&1 || true
done
echo "$ref"
