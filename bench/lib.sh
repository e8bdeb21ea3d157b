# Shared shell helpers of the benchmark scripts (bench/*.sh); sourced, not run.
#
# A script sets NAME (for messages), RUN (its temporary directory, from bench_run_dir) and
# MARK_VAR (the environment variable its processes carry), then calls bench_cleanup from its
# EXIT trap.

die() { echo "$NAME: $*" >&2; exit 1; }

# Installs the Debian packages whose command is missing: bench_need CMD:PACKAGE ...
bench_need() {
    local missing=() spec cmd
    for spec in "$@"; do
        cmd=${spec%%:*}
        command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || missing+=("${spec#*:}")
    done
    bench_install "${missing[@]}"
}

# Installs Debian packages (none: nothing to do).
bench_install() {
    if (($#)); then
        echo "== installing $*"
        [[ $(id -u) == 0 ]] || die "missing $* and we are not root: apt-get install $*"
        export DEBIAN_FRONTEND=noninteractive
        # policy-rc.d (present in containers) keeps the packages from starting their own services.
        apt-get install -y "$@" >/dev/null \
            || { apt-get update >/dev/null && apt-get install -y "$@" >/dev/null; } \
            || die "cannot install $*"
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
}

# Builds the release binaries unless BENCH_NO_BUILD=1 (or BENCH_BIN is set).
bench_build() {
    if [[ -n "${BENCH_BIN:-}" ]]; then
        BENCH_NO_BUILD=1
    elif [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
        echo "== building release binaries (waits for the cargo lock if another build runs)"
        cargo build --release --bins --examples \
            || die "cargo build failed; fix the build, or rerun with BENCH_NO_BUILD=1 to measure the binaries already in target/release"
    fi
}

# Makes bench.local resolve to 127.0.0.1 (wrk and h2load take the TLS SNI from the URL's
# host) with a line of our own in /etc/hosts, even when another benchmark's line is there: that
# one may go away mid-run.
bench_hosts_add() {
    HOSTS_TAG="# chain-bench $RUN"
    if [[ -w /etc/hosts ]]; then
        printf '127.0.0.1 bench.local %s\n' "$HOSTS_TAG" >>/etc/hosts
    elif [[ $(getent ahostsv4 bench.local 2>/dev/null | awk 'NR==1{print $1}') != 127.0.0.1 ]]; then
        die "bench.local does not resolve to 127.0.0.1 and /etc/hosts is not writable"
    fi
}

# Stops the measuring process (TERM, then KILL after $2 tenths of a second), kills every
# process left that runs under $RUN or carries $MARK_VAR=$RUN (and nothing else), runs the
# script's bench_cleanup_hook if it defines one (with $RUN still there), removes our
# /etc/hosts line, and removes $RUN unless BENCH_KEEP=1.
bench_cleanup() {
    local py_pid=$1 wait_tenths=$2
    if [[ -n "$py_pid" ]] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        for _ in $(seq "$wait_tenths"); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$py_pid" 2>/dev/null || true
    fi
    # nginx rewrites its environment area for its process titles: hence the cwd rule too.
    local pids=() f pid cwd
    for f in /proc/[0-9]*; do
        pid=${f#/proc/}
        [[ $pid == "$$" ]] && continue
        cwd=$(readlink "$f/cwd" 2>/dev/null || true)
        if [[ $cwd == "$RUN" || $cwd == "$RUN"/* ]] \
            || tr '\0' '\n' 2>/dev/null <"$f/environ" | grep -qxF "$MARK_VAR=$RUN"; then
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]})); then
        echo "$NAME: killing ${#pids[@]} leftover processes: ${pids[*]}" >&2
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    if declare -F bench_cleanup_hook >/dev/null; then
        bench_cleanup_hook
    fi
    # In place: /etc/hosts is often a bind mount.
    if [[ -n "${HOSTS_TAG:-}" ]] && grep -qF "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
        local kept
        kept=$(grep -vF "$HOSTS_TAG" /etc/hosts || true)
        printf '%s\n' "$kept" >/etc/hosts
    fi
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        echo "$NAME: kept $RUN" >&2
    else
        rm -rf "$RUN"
    fi
}

# Runs the script's cleanup function on exit, and turns INT, TERM and HUP into an exit (with
# the conventional status) so that it runs then too.
bench_traps() {
    # shellcheck disable=SC2064
    trap "$1" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

# Copies binaries into $RUN/bin: other builds in the same target directory must not swap them
# mid-run.
bench_copy_bins() {
    mkdir -p "$RUN/bin"
    cp -p "$@" "$RUN/bin/"
}

# The lines every benchmark prints first: machine, chain's source and binary, run directory.
bench_describe() {
    echo "== machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
    [[ -n "${BENCH_BIN:-}" ]] && echo "== binaries from $BENCH_BIN (not target/release)"
    echo "== chain HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src agent examples Cargo.toml Cargo.lock 2>/dev/null || echo ' (+ uncommitted changes in src/agent/examples/Cargo.*)')${BENCH_NO_BUILD:+ (not rebuilt: the binaries may predate HEAD)}"
    local dirty
    dirty=$(git status --porcelain -- src agent examples Cargo.toml Cargo.lock 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    [[ -n "$dirty" ]] && echo "== uncommitted when the script started: $dirty"
    echo "== chaind binary: sha256 $(sha256sum "$RUN/bin/chaind" | cut -c1-16), $(stat -c %s "$RUN/bin/chaind") bytes, built $(date -u -r "$RUN/bin/chaind" +%FT%TZ)"
    echo "== run directory: $RUN${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}"
}
