#!/usr/bin/env bash
# Start a local coordinator cluster: an etcd (only if none answers at $ETCD_ENDPOINTS), then
# `milvus run rootcoord|querycoord|datacoord` with nohup, logs in /tmp/<role>.log. With --standby,
# active-standby is switched on for every role and a second process per role (--alias standby,
# its own gRPC and HTTP ports, log /tmp/<role>-standby.log) starts once the first one is ACTIVE.
# Waits until every role has an ACTIVE member (and a STANDBY one with --standby), then prints
# `milvus status`.
#
# Every `milvus run` holds its pid file (<run dir>/<role>[-<alias>].pid, locked while it runs), so
# re-running is harmless: a process whose pid file is held is reported and not started twice.
# Stop everything with scripts/stop_cluster.sh.
#
# Environment (defaults in brackets):
#   ETCD_ENDPOINTS   the etcd of the cluster [127.0.0.1:2379]; when nothing answers there and it is
#                    one local endpoint (127.0.0.1 or localhost), an etcd is started on it
#   ETCD_PEER_PORT   peer port of that etcd [2380]
#   ETCD_DATA_DIR    its data dir [/tmp/milvus-etcd]
#   CLUSTER_LOG_DIR  where the logs go, etcd.log included [/tmp]
#   MILVUS_RUN_DIR   pid files [/run/milvus if writable, else /tmp/milvus]; the etcd started here
#                    is recorded in etcd.pid there, for stop_cluster.sh
#   STANDBY_ROOT_COORD_PORT, STANDBY_QUERY_COORD_PORT, STANDBY_DATA_COORD_PORT
#                    gRPC ports of the standbys [53101, 19532, 13334]
#   STANDBY_ROOT_COORD_HTTP_PORT, STANDBY_QUERY_COORD_HTTP_PORT, STANDBY_DATA_COORD_HTTP_PORT
#                    HTTP (health, metrics) ports of the standbys [9111, 9112, 9113]
#   START_TIMEOUT    seconds per wait [15]
# and any milvus config override (ROOT_COORD_PORT, ROOT_COORD_HTTP_PORT, ETCD_ROOT_PATH,
# COMMON_SESSION_TTL, ...), which every process inherits.
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

say() { echo "start_cluster: $*"; }
die() { echo "start_cluster: $*" >&2; exit 1; }

ROLES=(rootcoord querycoord datacoord)
RUN_DIR="$(milvus_run_dir)" || die "no usable pid file directory (see above)"
export MILVUS_RUN_DIR="$RUN_DIR"   # the processes and milvus status agree with this script
LOG_DIR="${CLUSTER_LOG_DIR:-/tmp}"
mkdir -p "$LOG_DIR" || die "cannot create the log directory $LOG_DIR"
export ETCD_ENDPOINTS="${ETCD_ENDPOINTS:-127.0.0.1:2379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-2380}"
ETCD_DIR="${ETCD_DATA_DIR:-/tmp/milvus-etcd}"
ETCD_LOG="$LOG_DIR/etcd.log"
ETCD_PIDFILE="$RUN_DIR/etcd.pid"
TIMEOUT="${START_TIMEOUT:-15}"

declare -A PORT_ENV=([rootcoord]=ROOT_COORD_PORT [querycoord]=QUERY_COORD_PORT [datacoord]=DATA_COORD_PORT)
declare -A HTTP_ENV=([rootcoord]=ROOT_COORD_HTTP_PORT [querycoord]=QUERY_COORD_HTTP_PORT [datacoord]=DATA_COORD_HTTP_PORT)
declare -A STANDBY_PORT=(
    [rootcoord]="${STANDBY_ROOT_COORD_PORT:-53101}"
    [querycoord]="${STANDBY_QUERY_COORD_PORT:-19532}"
    [datacoord]="${STANDBY_DATA_COORD_PORT:-13334}"
)
declare -A STANDBY_HTTP=(
    [rootcoord]="${STANDBY_ROOT_COORD_HTTP_PORT:-9111}"
    [querycoord]="${STANDBY_QUERY_COORD_HTTP_PORT:-9112}"
    [datacoord]="${STANDBY_DATA_COORD_HTTP_PORT:-9113}"
)
declare -A STANDBY_ENV=([rootcoord]=ROOT_COORD_ENABLE_ACTIVE_STANDBY [querycoord]=QUERY_COORD_ENABLE_ACTIVE_STANDBY [datacoord]=DATA_COORD_ENABLE_ACTIVE_STANDBY)
if [ "$STANDBY" = 1 ]; then
    for role in "${ROLES[@]}"; do export "${STANDBY_ENV[$role]}=true"; done
fi

etcdctl_bin="$(find_etcdctl)" || die "etcdctl not found (see above)"
etcd_healthy() {
    timeout 5 env -u ETCDCTL_ENDPOINTS "$etcdctl_bin" --endpoints="$ETCD_ENDPOINTS" \
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
        say "etcd already answers on $ETCD_ENDPOINTS: using it"
        return 0
    fi
    local pid
    pid="$(head -n1 "$ETCD_PIDFILE" 2>/dev/null | tr -dc 0-9 || true)"
    if pid_alive "$pid" && [[ "$(cmdline "$pid")" == *etcd* ]]; then
        say "etcd (pid $pid) is running but not healthy yet; waiting"
    else
        local endpoint="${ETCD_ENDPOINTS#http://}" host port etcd_bin
        endpoint="${endpoint%/}"
        host="${endpoint%:*}"; port="${endpoint##*:}"
        if [[ "$endpoint" == *,* ]] || [[ ! "$host" =~ ^(127\.0\.0\.1|localhost)$ ]] || [[ ! "$port" =~ ^[0-9]+$ ]]; then
            die "no etcd answers on $ETCD_ENDPOINTS, and it is not one local endpoint (127.0.0.1:<port>) this script could start: start it first"
        fi
        local client="127.0.0.1:$port" peer="127.0.0.1:$ETCD_PEER_PORT"
        etcd_bin="$(find_etcd)" || die "etcd not found (see above)"
        local reused=0
        [ -d "$ETCD_DIR/member" ] && reused=1
        mkdir -p "$ETCD_DIR"
        # etcd reads ETCD_* variables as flags and exits on one that repeats a flag
        # given here (ETCD_DATA_DIR!): start it with none of them.
        # Compaction and quota as in Milvus's docker-compose etcd.
        local -a unset_etcd=() var
        while IFS= read -r var; do unset_etcd+=(-u "$var"); done < <(compgen -e | grep '^ETCD_' || true)
        env "${unset_etcd[@]}" setsid nohup "$etcd_bin" \
            --name=milvus-etcd \
            --data-dir="$ETCD_DIR" \
            --listen-client-urls="http://$client" \
            --advertise-client-urls="http://$client" \
            --listen-peer-urls="http://$peer" \
            --initial-advertise-peer-urls="http://$peer" \
            --initial-cluster="milvus-etcd=http://$peer" \
            --initial-cluster-state=new \
            --auto-compaction-mode=revision \
            --auto-compaction-retention=1000 \
            --quota-backend-bytes=4294967296 \
            --snapshot-count=50000 \
            --logger=zap --log-level=warn \
            >"$ETCD_LOG" 2>&1 </dev/null &
        pid=$!
        printf '%s\n%s\n' "$pid" "$ETCD_DIR" >"$ETCD_PIDFILE"   # the data dir, for stop_cluster.sh --wipe
        say "started etcd (pid $pid, client $client, data $ETCD_DIR, log $ETCD_LOG)"
        if [ "$reused" = 1 ]; then
            say "$ETCD_DIR holds an earlier run's data (kept across stop and start): its collections and sessions come back, server IDs carry on; scripts/stop_cluster.sh --wipe starts from nothing"
        fi
    fi
    if ! wait_for etcd_healthy; then
        echo "start_cluster: etcd on $ETCD_ENDPOINTS not healthy after ${TIMEOUT}s; tail of $ETCD_LOG:" >&2
        tail -n 30 "$ETCD_LOG" >&2 || true
        exit 1
    fi
    say "etcd healthy on $ETCD_ENDPOINTS"
}

# ------------------------------------------------------------------ coordinators
declare -A STARTED=()   # "role|alias" -> pid, for the processes this run started
declare -A LOGS=()
ALREADY=()              # names of the processes found running

launch() {
    local role="$1" alias="$2" log held pid
    local name="$role${alias:+-$alias}"
    log="$LOG_DIR/$name.log"
    if held="$(pid_holder "$role" "$alias")"; then
        say "$name already running (pid $held, pid file $RUN_DIR/$name.pid): not starting another"
        ALREADY+=("$name")
        return 0
    fi
    local -a envs=()
    if [ -n "$alias" ]; then
        envs+=("${PORT_ENV[$role]}=${STANDBY_PORT[$role]}" "${HTTP_ENV[$role]}=${STANDBY_HTTP[$role]}")
    fi
    env "${envs[@]}" setsid nohup milvus run "$role" ${alias:+--alias "$alias"} \
        >"$log" 2>&1 </dev/null &
    pid=$!
    STARTED["$role|$alias"]=$pid
    LOGS["$role|$alias"]=$log
    say "started $name (pid $pid, log $log)"
}

# Exit non-zero, with its log's tail, if a process this run started has died.
check_alive() {
    local key pid role alias rc
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

# Say so when a member found running uses another active-standby setting than the config (file and
# environment) gives a process started now: it keeps its own until it is restarted.
settings_differ() {
    timeout 10 milvus status --json 2>/dev/null | python -c '
import json, sys
try:
    from coordinators.config import ConfigError, load_config
    config = load_config()
    rows = json.load(sys.stdin)
except (ValueError, ConfigError):
    sys.exit(0)
word = {True: "on", False: "off"}
for r in rows:
    if r.get("state") == "INVALID" or r.get("active_standby") is None:
        continue
    role, has, want = r["role"], r["active_standby"], config.role(r["role"]).enable_active_standby
    if has != want:
        who = "{} ServerID={} ({})".format(role, r["server_id"], r["address"])
        print(f"start_cluster: {who} runs with active-standby {word[has]}, but {config.source} (with the "
              f"environment) now says {word[want]}: it keeps its setting until restarted: "
              "scripts/stop_cluster.sh, then scripts/start_cluster.sh")
'
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
if [ "${#STARTED[@]}" -eq 0 ]; then
    say "the cluster is already running (${ALREADY[*]}): nothing started"
fi
settings_differ || true
milvus status
