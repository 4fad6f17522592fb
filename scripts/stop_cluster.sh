#!/usr/bin/env bash
# Stop what scripts/start_cluster.sh started: SIGTERM every coordinator (standbys
# first, so no standby takes over from an active that is stopping anyway), wait
# up to 10 s, SIGKILL what is left, then stop the etcd that start_cluster.sh
# started (its pid file), leaving an etcd it found running alone.
#
# Which coordinators: those start_cluster.sh started (they carry
# MILVUS_CLUSTER_SCRIPT=start_cluster in their environment) and those named by
# milvus's pid files (/run/milvus, $MILVUS_RUN_DIR or /tmp/milvus). With --all,
# every `milvus run` process on the machine (what `pgrep -f "milvus run"` finds),
# including ones a test run or a person started by hand.
set -euo pipefail

usage() { echo "usage: $0 [--all] [--keep-etcd]" >&2; }
ALL=0
KEEP_ETCD=0
for arg in "$@"; do
    case "$arg" in
        --all) ALL=1 ;;
        --keep-etcd) KEEP_ETCD=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
done

RUN_DIR="${MILVUS_RUN_DIR:-/tmp/milvus}"
ETCD_PIDFILE="$RUN_DIR/etcd.pid"
STOP_TIMEOUT="${STOP_TIMEOUT:-10}"

say() { echo "stop_cluster: $*"; }
# shellcheck source=scripts/_procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/_procs.sh"
is_milvus_run() { [[ "$(cmdline "$1")" =~ (^|[ /])milvus\ run\  ]]; }
ours() { tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" | grep -qx 'MILVUS_CLUSTER_SCRIPT=start_cluster'; }

# Pids whose command line may be `milvus run ...`: pgrep where there is one, else all.
candidate_pids() {
    if command -v pgrep >/dev/null 2>&1; then
        pgrep -f -- "milvus run" || true
    else
        local f
        for f in /proc/[0-9]*; do echo "${f#/proc/}"; done
    fi
}

# The coordinator pids to stop, one per line.
targets() {
    local f pid
    {
        for f in /run/milvus/*.pid "$RUN_DIR"/*.pid; do
            [ -e "$f" ] || continue
            pid="$(head -n1 "$f" 2>/dev/null | tr -dc 0-9 || true)"
            if pid_alive "$pid" && is_milvus_run "$pid"; then echo "$pid"; fi
        done
        for pid in $(candidate_pids); do
            is_milvus_run "$pid" || continue
            if [ "$ALL" = 1 ] || ours "$pid"; then echo "$pid"; fi
        done
    } | sort -un
}

# SIGTERM PIDS..., wait until all are gone or the shared deadline passes.
term_and_wait() {
    local pid
    for pid in "$@"; do
        say "SIGTERM $(cmdline "$pid" | sed 's/.*\(milvus run\)/\1/') (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    done
    while :; do
        local left=()
        for pid in "$@"; do pid_alive "$pid" && left+=("$pid"); done
        [ "${#left[@]}" -eq 0 ] && return 0
        if [ "$SECONDS" -ge "$DEADLINE" ]; then
            say "still running after ${STOP_TIMEOUT}s, SIGKILL: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
}

mapfile -t PIDS < <(targets)
DEADLINE=$((SECONDS + STOP_TIMEOUT))
if [ "${#PIDS[@]}" -eq 0 ]; then
    say "no coordinator running"
else
    standbys=() others=()
    for pid in "${PIDS[@]}"; do
        if [[ "$(cmdline "$pid")" == *--alias* ]]; then standbys+=("$pid"); else others+=("$pid"); fi
    done
    [ "${#standbys[@]}" -gt 0 ] && term_and_wait "${standbys[@]}"
    [ "${#others[@]}" -gt 0 ] && term_and_wait "${others[@]}"
fi

if [ "$KEEP_ETCD" = 0 ] && [ -f "$ETCD_PIDFILE" ]; then
    pid="$(head -n1 "$ETCD_PIDFILE" | tr -dc 0-9 || true)"
    if pid_alive "$pid" && [[ "$(cmdline "$pid")" == *etcd* ]]; then
        say "stopping etcd (pid $pid)"
        DEADLINE=$((SECONDS + STOP_TIMEOUT))
        kill -TERM "$pid" 2>/dev/null || true
        while pid_alive "$pid"; do
            if [ "$SECONDS" -ge "$DEADLINE" ]; then
                say "etcd still running after ${STOP_TIMEOUT}s, SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
    rm -f "$ETCD_PIDFILE"
fi
say "done"
