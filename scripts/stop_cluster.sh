#!/usr/bin/env bash
# Stop what scripts/start_cluster.sh started: `milvus stop` for every coordinator with a pid file
# in the run dir, standbys (the pid files with an alias) first, so no standby takes over from an
# active that is stopping anyway; the processes of one step stop in parallel, each SIGKILLed if
# still running after $STOP_TIMEOUT s. Stale pid files are removed. Then the etcd that
# start_cluster.sh started (etcd.pid in the run dir) is stopped; an etcd it found running is left
# alone. Leaves no pid file behind.
#
# With --all, also every other `milvus run` process on the machine (what `pgrep -f "milvus run"`
# finds), including ones a test run or a person started elsewhere: SIGTERM, SIGKILL after the timeout.
#
# With --wipe, also delete the data dir of the etcd start_cluster.sh started (its collections, server
# IDs, sessions: everything), so that the next start_cluster.sh begins from nothing. Without it the
# data dir is kept, and a restarted cluster finds its old collections and carries on its server IDs.
# Refused (nothing deleted) when an etcd still runs on that data dir.
#
# Environment: MILVUS_RUN_DIR (pid files, as start_cluster.sh and milvus run: default /run/milvus
# if writable, else /tmp/milvus), STOP_TIMEOUT (seconds, default 10).
set -euo pipefail

usage() { echo "usage: $0 [--all] [--keep-etcd | --wipe]" >&2; }
ALL=0
KEEP_ETCD=0
WIPE=0
for arg in "$@"; do
    case "$arg" in
        --all) ALL=1 ;;
        --keep-etcd) KEEP_ETCD=1 ;;
        --wipe) WIPE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
done
if [ "$WIPE" = 1 ] && [ "$KEEP_ETCD" = 1 ]; then
    echo "stop_cluster: --wipe deletes etcd's data: it cannot keep etcd running (--keep-etcd)" >&2
    exit 2
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/_venv.sh
source "$SCRIPT_DIR/_venv.sh"
# shellcheck source=scripts/_procs.sh
source "$SCRIPT_DIR/_procs.sh"

say() { echo "stop_cluster: $*"; }

RUN_DIR="$(milvus_run_dir)" || { echo "stop_cluster: no usable pid file directory (see above)" >&2; exit 1; }
export MILVUS_RUN_DIR="$RUN_DIR"
ETCD_PIDFILE="$RUN_DIR/etcd.pid"
STOP_TIMEOUT="${STOP_TIMEOUT:-10}"
RC=0

# "role alias" of each coordinator pid file in the run dir (alias "" for none), standbys first.
pid_files() {
    local f name role
    for f in "$RUN_DIR"/*.pid; do
        [ -e "$f" ] || continue
        name="$(basename "$f" .pid)"
        role="${name%%-*}"   # role names have no '-'; an alias may
        case "$role" in rootcoord|querycoord|datacoord) ;; *) continue ;; esac
        if [ "$name" = "$role" ]; then echo "1 $role"; else echo "0 $role ${name#*-}"; fi
    done | sort -k1,1n | cut -d' ' -f2-
}

# `milvus stop` each "role [alias]" given, in parallel; their lines prefixed with ours.
stop_group() {
    local line role alias
    local -a waits=()
    for line in "$@"; do
        read -r role alias <<<"$line"
        { milvus stop "$role" ${alias:+--alias "$alias"} --timeout "$STOP_TIMEOUT" --kill 2>&1 || true; } \
            | sed 's/^\(milvus stop: \)\?/stop_cluster: /' &
        waits+=("$!")
    done
    for line in "${waits[@]}"; do wait "$line" || true; done
}

# SIGTERM PIDS..., wait until all are gone or STOP_TIMEOUT passes, then SIGKILL (for --all).
term_and_wait() {
    local pid deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "$@"; do
        say "SIGTERM $(cmdline "$pid" | sed 's/.*\(milvus run\)/\1/') (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    done
    while :; do
        local left=()
        for pid in "$@"; do pid_alive "$pid" && left+=("$pid"); done
        [ "${#left[@]}" -eq 0 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "still running after ${STOP_TIMEOUT}s, SIGKILL: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
}

mapfile -t FILES < <(pid_files)
if [ "${#FILES[@]}" -eq 0 ]; then
    say "no coordinator pid file in $RUN_DIR"
else
    standbys=() actives=()
    for line in "${FILES[@]}"; do
        if [[ "$line" == *" "* ]]; then standbys+=("$line"); else actives+=("$line"); fi
    done
    [ "${#standbys[@]}" -gt 0 ] && stop_group "${standbys[@]}"
    [ "${#actives[@]}" -gt 0 ] && stop_group "${actives[@]}"
    mapfile -t LEFT < <(pid_files)
    if [ "${#LEFT[@]}" -gt 0 ]; then
        say "pid files still in $RUN_DIR: ${LEFT[*]}"
        RC=1
    fi
fi

if [ "$ALL" = 1 ]; then
    mapfile -t OTHERS < <(pgrep -f -- "milvus run" | while read -r pid; do
        [[ "$(cmdline "$pid")" =~ (^|[ /])milvus\ run\  ]] && echo "$pid"; done || true)
    if [ "${#OTHERS[@]}" -gt 0 ]; then term_and_wait "${OTHERS[@]}"; fi
fi

# The data dir of the etcd start_cluster.sh started: the pid file's second line (else the default).
ETCD_DIR="$(sed -n 2p "$ETCD_PIDFILE" 2>/dev/null || true)"
ETCD_DIR="${ETCD_DIR:-${ETCD_DATA_DIR:-/tmp/milvus-etcd}}"

if [ "$KEEP_ETCD" = 0 ] && [ -f "$ETCD_PIDFILE" ]; then
    pid="$(head -n1 "$ETCD_PIDFILE" | tr -dc 0-9 || true)"
    if pid_alive "$pid" && [[ "$(cmdline "$pid")" == *etcd* ]]; then
        say "stopping etcd (pid $pid)"
        deadline=$((SECONDS + STOP_TIMEOUT))
        kill -TERM "$pid" 2>/dev/null || true
        while pid_alive "$pid"; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                say "etcd still running after ${STOP_TIMEOUT}s, SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
    fi
    rm -f "$ETCD_PIDFILE"
fi

if [ "$WIPE" = 1 ]; then
    if [ ! -e "$ETCD_DIR" ]; then
        say "no etcd data dir at $ETCD_DIR: nothing to wipe"
    elif pgrep -f -- "--data-dir=$ETCD_DIR( |$)" >/dev/null 2>&1; then
        say "an etcd still runs on $ETCD_DIR (not one start_cluster.sh started): not wiped"
        RC=1
    elif [ ! -d "$ETCD_DIR/member" ] && [ -n "$(ls -A "$ETCD_DIR" 2>/dev/null)" ]; then
        say "$ETCD_DIR does not look like an etcd data dir (no member/): not wiped"
        RC=1
    else
        rm -rf -- "$ETCD_DIR"
        say "wiped the etcd data dir $ETCD_DIR: the next start_cluster.sh starts from nothing"
    fi
fi
say "done"
exit "$RC"
