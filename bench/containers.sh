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

NAME=containers.sh
MARK_VAR=BENCH_CONTAINERS_RUN
# shellcheck source=bench/lib.sh
source "$here/lib.sh"

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
[[ -n "${BENCH_BIN:-}" ]] && demo=$bindir/demo
bench_build
for b in "$bindir/chaind" "$bindir/chainctl" "$demo"; do
    [[ -x $b ]] || die "$b is missing; build with: cargo build --release --bins --examples"
done

bench_need nginx:nginx wrk:wrk
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 || bench_install busybox-static

rid=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
RUN=/tmp/chain-bench-containers.$rid
run=$RUN
mkdir -m 700 "$run"
image_tag="chain-bench-containers:$rid"
py_pid=

# Called by bench_cleanup once our processes are gone (chaind could start containers before).
bench_cleanup_hook() {
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
    # Processes: under $run (chaind, nginx, wrk, compose) or carrying BENCH_CONTAINERS_RUN;
    # then containers, networks and image tags (bench_cleanup_hook).
    bench_cleanup "$py_pid" 1200
    exit "$rc"
}
bench_traps cleanup

bench_hosts_add
bench_copy_bins "$bindir/chaind" "$bindir/chainctl" "$demo"

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

bench_describe
echo "== versions: Docker engine $(docker version --format '{{.Server.Version}}'), $(docker info --format 'storage driver {{.Driver}}, runtime {{.DefaultRuntime}}, cgroup v{{.CgroupVersion}}' 2>/dev/null), compose: $BENCH_COMPOSE $($BENCH_COMPOSE version 2>/dev/null | head -1), $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(openssl version), Python $(python3 -c 'import platform; print(platform.python_version())')"
echo "== image: $image ($(docker image inspect "$image" --format '{{.Size}}') bytes, demo from $demo), used as $image_tag, run id $rid"

timeout --signal=TERM --kill-after=60 "${BENCH_TIMEOUT:-1800}" \
    python3 "$here/containers_bench.py" --bin "$run/bin" --run "$run" --image "$image_tag" --run-id "$rid" &
py_pid=$!
wait "$py_pid"
