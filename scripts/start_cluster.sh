#!/usr/bin/env bash
# Start a local coordinator cluster: an etcd on 127.0.0.1:2379 (only if none
# answers there), then `milvus run rootcoord|querycoord|datacoord` with nohup,
# logs in /tmp/<role>.log. With --standby, active-standby is switched on for every
# role and a second process per role (--alias standby, its own port, log
# /tmp/<role>-standby.log) starts once the first one is ACTIVE.
#
# Re-running is safe: a process of the cluster that already runs is reported
# and not started twice. Stop everything with scripts/stop_cluster.sh.
#
# Environment: ETCD_DATA_DIR (default /tmp/milvus-etcd), MILVUS_RUN_DIR (pid
# files, default /tmp/milvus), START_TIMEOUT (seconds per wait, default 15), and
# any milvus config override (ETCD_ENDPOINTS, COMMON_SESSION_TTL, ...).
set -euo pipefail

usage() { echo "usage: $0 [--standby]" >&2; }
STANDBY=0
for arg in "$@"; do
    case "$arg" in
        --standby) STANDBY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage; exit 2 ;;
    esac
done

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/_venv.sh
source "$SCRIPT_DIR/_venv.sh"
# shellcheck source=scripts/find_etcd.sh
source "$SCRIPT_DIR/find_etcd.sh"
# shellcheck source=scripts/_procs.sh
source "$SCRIPT_DIR/_procs.sh"

ROLES=(rootcoord querycoord datacoord)
RUN_DIR="${MILVUS_RUN_DIR:-/tmp/milvus}"
ETCD_ADDR=127.0.0.1:2379
ETCD_PEER=127.0.0.1:2380
ETCD_DIR="${ETCD_DATA_DIR:-/tmp/milvus-etcd}"
ETCD_LOG=/tmp/etcd.log
ETCD_PIDFILE="$RUN_DIR/etcd.pid"
TIMEOUT="${START_TIMEOUT:-15}"
# Marks the processes this script starts, so stop_cluster.sh stops only those
# (and pid-file owners) unless told --all.
export MILVUS_CLUSTER_SCRIPT=start_cluster
mkdir -p "$RUN_DIR"

declare -A PORT_ENV=([rootcoord]=ROOT_COORD_PORT [querycoord]=QUERY_COORD_PORT [datacoord]=DATA_COORD_PORT)
declare -A STANDBY_PORT=([rootcoord]=53101 [querycoord]=19532 [datacoord]=13334)
declare -A STANDBY_ENV=([rootcoord]=ROOT_COORD_ENABLE_ACTIVE_STANDBY [querycoord]=QUERY_COORD_ENABLE_ACTIVE_STANDBY [datacoord]=DATA_COORD_ENABLE_ACTIVE_STANDBY)
if [ "$STANDBY" = 1 ]; then
    for role in "${ROLES[@]}"; do export "${STANDBY_ENV[$role]}=true"; done
fi

say() { echo "start_cluster: $*"; }
die() { echo "start_cluster: $*" >&2; exit 1; }


# pids of running `milvus run ROLE` processes whose --alias is ALIAS ("" = none):
# from the pid files milvus keeps (/run/milvus, then $RUN_DIR), then from every
# process's command line (what `pgrep -f "milvus run ROLE"` sees).
milvus_pids() {
    local role="$1" alias="$2" name f pid cmd a
    name="$role${alias:+-$alias}"
    {
        for f in "/run/milvus/$name.pid" "$RUN_DIR/$name.pid"; do
            pid="$(head -n1 "$f" 2>/dev/null | tr -dc 0-9 || true)"
            if pid_alive "$pid" && [[ "$(cmdline "$pid")" == *"milvus run $role"* ]]; then echo "$pid"; fi
        done
        all_cmdlines | while read -r pid cmd; do
            [[ "$cmd" =~ (^|[ /])milvus\ run\ $role( |$) ]] || continue
            a=""
            if [[ "$cmd" =~ --alias[=\ ]([^ ]+) ]]; then a="${BASH_REMATCH[1]}"; fi
            if [ "$a" = "$alias" ]; then echo "$pid"; fi
        done
    } | sort -un
}

# "pid cmdline" of every `milvus run` process: pgrep where there is one, else /proc.
all_cmdlines() {
    local f pid
    if command -v pgrep >/dev/null 2>&1; then
        pgrep -af -- "milvus run" || true
        return 0
    fi
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"; pid="${pid%/cmdline}"
        echo "$pid $(cmdline "$pid")"
    done
}

etcdctl_bin="$(find_etcdctl)" || die "etcdctl not found (see above)"
etcd_healthy() {
    timeout 5 env -u ETCDCTL_ENDPOINTS "$etcdctl_bin" --endpoints="$ETCD_ADDR" \
        --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1
}

# Poll until "$@" succeeds or TIMEOUT seconds pass; the command is run at least once.
wait_for() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

# ------------------------------------------------------------------ etcd
start_etcd() {
    if etcd_healthy; then
        say "etcd already answers on $ETCD_ADDR: using it"
        return 0
    fi
    local pid
    pid="$(head -n1 "$ETCD_PIDFILE" 2>/dev/null | tr -dc 0-9 || true)"
    if pid_alive "$pid" && [[ "$(cmdline "$pid")" == *etcd* ]]; then
        say "etcd (pid $pid) is running but not healthy yet; waiting"
    else
        local etcd_bin
        etcd_bin="$(find_etcd)" || die "etcd not found (see above)"
        mkdir -p "$ETCD_DIR"
        # etcd reads ETCD_* variables as flags and exits on one that repeats a flag
        # given here (ETCD_DATA_DIR!): start it with none of them.
        # Compaction and quota as in Milvus's docker-compose etcd.
        local -a unset_etcd=() var
        while IFS= read -r var; do unset_etcd+=(-u "$var"); done < <(compgen -e | grep '^ETCD_' || true)
        env "${unset_etcd[@]}" setsid nohup "$etcd_bin" \
            --name=milvus-etcd \
            --data-dir="$ETCD_DIR" \
            --listen-client-urls="http://$ETCD_ADDR" \
            --advertise-client-urls="http://$ETCD_ADDR" \
            --listen-peer-urls="http://$ETCD_PEER" \
            --initial-advertise-peer-urls="http://$ETCD_PEER" \
            --initial-cluster="milvus-etcd=http://$ETCD_PEER" \
            --initial-cluster-state=new \
            --auto-compaction-mode=revision \
            --auto-compaction-retention=1000 \
            --quota-backend-bytes=4294967296 \
            --snapshot-count=50000 \
            --logger=zap --log-level=warn \
            >"$ETCD_LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$ETCD_PIDFILE"
        say "started etcd (pid $pid, data $ETCD_DIR, log $ETCD_LOG)"
    fi
    if ! wait_for etcd_healthy; then
        echo "start_cluster: etcd on $ETCD_ADDR not healthy after ${TIMEOUT}s; tail of $ETCD_LOG:" >&2
        tail -n 30 "$ETCD_LOG" >&2 || true
        exit 1
    fi
    say "etcd healthy on $ETCD_ADDR"
}

# ------------------------------------------------------------------ coordinators
declare -A STARTED=()   # "role|alias" -> pid, for the processes this run started
declare -A LOGS=()

launch() {
    local role="$1" alias="$2" log pids pid
    local name="$role${alias:+-$alias}"
    log="/tmp/$name.log"
    pids="$(milvus_pids "$role" "$alias" | tr '\n' ' ')"
    if [ -n "${pids// /}" ]; then
        say "$name already running (pid ${pids% }): not starting another"
        return 0
    fi
    local -a envs=()
    if [ -n "$alias" ]; then envs+=("${PORT_ENV[$role]}=${STANDBY_PORT[$role]}"); fi
    env "${envs[@]}" setsid nohup milvus run "$role" ${alias:+--alias "$alias"} \
        >"$log" 2>&1 </dev/null &
    pid=$!
    STARTED["$role|$alias"]=$pid
    LOGS["$role|$alias"]=$log
    say "started $name (pid $pid, log $log)"
}

# Exit non-zero, with its log's tail, if a process this run started has died.
check_alive() {
    local key pid role alias
    for key in "${!STARTED[@]}"; do
        pid="${STARTED[$key]}"
        if ! pid_alive "$pid"; then
            role="${key%%|*}"; alias="${key#*|}"
            wait "$pid" 2>/dev/null && rc=0 || rc=$?
            echo "start_cluster: $role${alias:+ --alias $alias} (pid $pid) exited early (code $rc); tail of ${LOGS[$key]}:" >&2
            tail -n 30 "${LOGS[$key]}" >&2 || true
            exit 1
        fi
    done
}

# Roles in `milvus status --json` with a session in STATE, space-separated.
roles_in_state() { sessions_in_state "$1" | tr ' ' '\n' | cut -d= -f1 | tr '\n' ' '; }

# Count of sessions per role in STATE, as "role=n ...".
sessions_in_state() {
    timeout 10 milvus status --json 2>/dev/null | python -c '
import collections, json, sys
try:
    rows = json.load(sys.stdin)
except ValueError:
    rows = []
c = collections.Counter(r.get("role", "") for r in rows if r.get("state") == sys.argv[1])
print(" ".join(f"{k}={v}" for k, v in sorted(c.items())))
' "$1" || true
}

all_active() {
    check_alive
    local active role
    active=" $(roles_in_state ACTIVE) "
    for role in "${ROLES[@]}"; do [[ "$active" == *" $role "* ]] || return 1; done
}

all_standby() {
    check_alive
    local counts role
    counts=" $(sessions_in_state STANDBY) "
    for role in "${ROLES[@]}"; do [[ "$counts" == *" $role="* ]] || return 1; done
}

fail_wait() {
    echo "start_cluster: $1 after ${TIMEOUT}s" >&2
    timeout 10 milvus status >&2 || true
    local key
    for key in "${!LOGS[@]}"; do
        echo "--- tail of ${LOGS[$key]}" >&2
        tail -n 15 "${LOGS[$key]}" >&2 || true
    done
    exit 1
}

start_etcd
for role in "${ROLES[@]}"; do launch "$role" ""; done
wait_for all_active || fail_wait "not every role has an ACTIVE coordinator"
if [ "$STANDBY" = 1 ]; then
    for role in "${ROLES[@]}"; do launch "$role" standby; done
    wait_for all_standby || fail_wait "not every role has a STANDBY coordinator"
fi
check_alive
milvus status
