#!/usr/bin/env bash
# Container benchmark: chain's container units against docker compose, in the same run, on the
# same machine, with the same local image (tests/images/build.sh: busybox + the demo app).
#
#   bash bench/containers.sh                # full run (about 5 minutes)
#   BENCH_QUICK=1 bash bench/containers.sh  # smoke run: 1 start run per side, 2 deploys
#
# Measures (details in bench/containers_bench.py):
#   - 20 containers from nothing until all are healthy (HTTP health check on /health at the
#     same interval on both sides): `chainctl apply` of a unit with instances = 20, against
#     `docker compose up -d` of a service with scale 20 and a healthcheck; median of 3 each;
#   - rolling deploys of 4 instances under wrk -t2 -c64 through an HTTPS proxy: chaind's proxy
#     and `chainctl deploy web --set env.VERSION=vN --wait`, against nginx in front of the 4
#     replicas' published ports and `VERSION=vN docker compose up -d` (which recreates them).
# Output ends with:
#   RESULT start_20_healthy_ms chain=<ms> compose=<ms> ratio=<chain/compose>
#   RESULT rolling_<requests|non2xx|socket_errors|deploys|flips> chain=<n> compose=<n>
#
# Needs a running Docker engine and docker compose (the v2 plugin or docker-compose 1.x);
# nothing is pulled: the image is built locally. Builds the release binaries, installs nginx,
# wrk and busybox-static (Debian packages) when missing, maps bench.local to 127.0.0.1 in
# /etc/hosts for the duration of the run (wrk takes the TLS SNI from the URL's host).
#
# Environment:
#   BENCH_QUICK=1      1 start run per side and interval, 2 deploys per side
#   BENCH_NO_BUILD=1   use the binaries already in target/release
#   BENCH_BIN=DIR      use DIR/chaind, DIR/chainctl and DIR/demo; implies no build
#   BENCH_KEEP=1       keep the temporary directory (configs, logs, events, access logs)
#   BENCH_TIMEOUT=1800 hard limit in seconds for the whole measurement
#   BENCH_START_RUNS=N  BENCH_HEALTH_INTERVALS=1s,250ms  BENCH_DEPLOYS=N
#   BENCH_MEASURES=start,rolling  BENCH_COMPOSE="docker compose"|docker-compose
#   (see bench/containers_bench.py)
#
# Every process the benchmark starts runs under the temporary directory or carries
# BENCH_CONTAINERS_RUN=<dir> in its environment; every container carries the label
# cbench.run=<id>, and compose projects and networks are named cbench<id>...: on exit, error or
# Ctrl-C exactly those are removed, with chaind's containers (label chain.store=<its store>).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

die() { echo "containers.sh: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is required"
command -v openssl >/dev/null || die "openssl is required"
command -v docker >/dev/null || die "docker is required"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers (docker version)"
if docker compose version >/dev/null 2>&1; then
    compose_cmd="docker compose"
elif command -v docker-compose >/dev/null && docker-compose version >/dev/null 2>&1; then
    compose_cmd="docker-compose"
else
    die "neither the docker compose plugin nor docker-compose is installed"
fi
export BENCH_COMPOSE=${BENCH_COMPOSE:-$compose_cmd}

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
command -v wrk >/dev/null || missing+=(wrk)
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]} and we are not root: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d (present in containers) keeps nginx from starting its own service.
    apt-get install -y "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; } \
        || die "cannot install ${missing[*]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

rid=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
run=/tmp/chain-bench-containers.$rid
mkdir -m 700 "$run"
hosts_tag="# chain-bench-containers $run"
image_tag="chain-bench-containers:$rid"
py_pid=

docker_cleanup() {
    # Containers: ours by label, and every container of our chaind's store.
    local ids store
    ids=$(docker ps -aq --filter "label=cbench.run=$rid" 2>/dev/null || true)
    if [[ -s $run/chain-store-id ]]; then
        store=$(cat "$run/chain-store-id")
        ids+=" $(docker ps -aq --filter "label=chain.store=$store" 2>/dev/null || true)"
    fi
    ids=$(echo $ids | tr ' ' '\n' | sort -u | tr '\n' ' ')
    if [[ -n ${ids// /} ]]; then
        echo "containers.sh: removing leftover containers: $ids" >&2
        docker rm -f $ids >/dev/null 2>&1 || true
    fi
    # Networks: chaind's (cbench<id>-chain) and compose's (cbench<id>start_default, ...).
    local nets
    nets=$(docker network ls --format '{{.Name}}' 2>/dev/null | grep "^cbench$rid" || true)
    if [[ -n $nets ]]; then
        docker network rm $nets >/dev/null 2>&1 || echo "containers.sh: could not remove networks: $nets" >&2
    fi
    # Image tags: ours, and the chain-test tags kept aside while build.sh ran (put back first).
    local t
    for t in $(docker images chain-bench-containers --format '{{.Tag}}' 2>/dev/null | grep "^$rid-keep-" || true); do
        docker image inspect "chain-test:${t#"$rid-keep-"}" >/dev/null 2>&1 \
            || docker tag "chain-bench-containers:$t" "chain-test:${t#"$rid-keep-"}" >/dev/null 2>&1 || true
        docker rmi "chain-bench-containers:$t" >/dev/null 2>&1 || true
    done
    docker rmi "$image_tag" >/dev/null 2>&1 || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq 1200); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
    # Every process the benchmark started runs with its working directory under $run (chaind,
    # nginx, wrk, compose) or carries BENCH_CONTAINERS_RUN=$run in its environment: kill
    # exactly those, and nothing else.
    local pids=() f pid cwd
    for f in /proc/[0-9]*; do
        pid=${f#/proc/}
        [[ $pid == $$ ]] && continue
        cwd=$(readlink "$f/cwd" 2>/dev/null || true)
        if [[ $cwd == "$run" || $cwd == "$run"/* ]] \
            || tr '\0' '\n' 2>/dev/null <"$f/environ" | grep -qxF "BENCH_CONTAINERS_RUN=$run"; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        echo "containers.sh: killing ${#pids[@]} leftover processes: ${pids[*]}" >&2
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    docker_cleanup
    # Remove our /etc/hosts line (in place: /etc/hosts is often a bind mount).
    if grep -qF "$hosts_tag" /etc/hosts 2>/dev/null; then
        local kept
        kept=$(grep -vF "$hosts_tag" /etc/hosts || true)
        printf '%s\n' "$kept" >/etc/hosts
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        echo "containers.sh: kept $run" >&2
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

# The image, from the release demo. tests/images/build.sh untags older chain-test images that no
# container uses; a concurrent test run may be about to use one, so put those tags back.
declare -A kept_tags=()
while read -r tag id; do
    [[ -n $tag && $tag != latest && $tag != "<none>" ]] || continue
    kept_tags[$tag]=$id
done < <(docker images chain-test --format '{{.Tag}} {{.ID}}')
for tag in "${!kept_tags[@]}"; do docker tag "chain-test:$tag" "$image_tag-keep-$tag"; done
image=$(bash tests/images/build.sh "$run/bin/demo") || die "tests/images/build.sh failed"
for tag in "${!kept_tags[@]}"; do
    docker image inspect "chain-test:$tag" >/dev/null 2>&1 || docker tag "$image_tag-keep-$tag" "chain-test:$tag"
    docker rmi "$image_tag-keep-$tag" >/dev/null
done
# Our own tag: a build.sh running elsewhere may untag chain-test:<hash> during the run.
docker tag "$image" "$image_tag"

echo "== machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== versions: Docker engine $(docker version --format '{{.Server.Version}}'), $(docker info --format 'storage driver {{.Driver}}, runtime {{.DefaultRuntime}}, cgroup v{{.CgroupVersion}}' 2>/dev/null), compose: $BENCH_COMPOSE $($BENCH_COMPOSE version 2>/dev/null | head -1), $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(openssl version), Python $(python3 -c 'import platform; print(platform.python_version())')"
echo "== image: $image ($(docker image inspect "$image" --format '{{.Size}}') bytes, demo from $demo), used as $image_tag"
[[ -n "${BENCH_BIN:-}" ]] && echo "== binaries from $BENCH_BIN (not target/release)"
echo "== chain HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src agent examples Cargo.toml Cargo.lock 2>/dev/null || echo ' (+ uncommitted changes in src/agent/examples/Cargo.*)')${BENCH_NO_BUILD:+ (not rebuilt: the binaries may predate HEAD)}"
dirty=$(git status --porcelain -- src agent examples Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
[[ -n "$dirty" ]] && echo "== uncommitted when the script started: $dirty"
echo "== chaind binary: sha256 $(sha256sum "$run/bin/chaind" | cut -c1-16), $(stat -c %s "$run/bin/chaind") bytes, built $(date -u -r "$run/bin/chaind" +%FT%TZ)"
echo "== run directory: $run, run id $rid${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}"

timeout --signal=TERM --kill-after=60 "${BENCH_TIMEOUT:-1800}" \
    python3 "$here/containers_bench.py" --bin "$run/bin" --run "$run" --image "$image_tag" --run-id "$rid" &
py_pid=$!
wait "$py_pid"
