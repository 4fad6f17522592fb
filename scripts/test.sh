#!/usr/bin/env bash
# Run the test suite in the project's virtualenv:
#   scripts/test.sh [--under-load] [--repeat N] [pytest args...]
#
# Every failure is reported (no -x: one flaky test must not hide the rest of the run), then the
# slowest tests. Why the exit-5 check: pytest exits 5 when it collected nothing, which must never
# pass as green (a typo in a path, an import error hidden by -k, ...).
#
# --under-load  the conditions of an ordinary developer's machine, which every test must survive:
#               one core kept busy by a CPU hog for the whole run, and the README's local cluster
#               running (scripts/start_cluster.sh; started here if no etcd answers on
#               127.0.0.1:2379, and then stopped at the end; a cluster already running is left alone).
#               Use it, with --repeat 3, before resolving an issue that adds process or fault tests.
# --repeat N    run the suite N times in a row (the checks once); the exit code is the first
#               failing run's, and a line per run says how each ended.
set -uo pipefail

# shellcheck source=scripts/_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" || exit 1
cd "$REPO_ROOT" || exit 1

UNDER_LOAD=0
REPEAT=1
args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --under-load) UNDER_LOAD=1 ;;
        --repeat)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "test.sh: --repeat takes a positive number" >&2; exit 2; }
            REPEAT="$2"; shift ;;
        --repeat=*)
            REPEAT="${1#--repeat=}"
            [[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || { echo "test.sh: --repeat takes a positive number" >&2; exit 2; } ;;
        *) args+=("$1") ;;
    esac
    shift
done

# Default to the whole suite, unless the caller named paths or node ids.
targets=(tests)
for arg in "${args[@]+"${args[@]}"}"; do
    case "$arg" in
        -*) ;;
        *::*) targets=() ;;
        *) if [ -e "$arg" ]; then targets=(); fi ;;
    esac
done

# The checks first (seconds): a lint or type error fails the run before the suite's minutes.
# MILVUS_SKIP_CHECKS=1 skips them when running a few tests by hand.
if [ "${MILVUS_SKIP_CHECKS:-0}" != 1 ]; then
    echo "test.sh: ruff check" >&2
    python -m ruff check session coordinators tests bench deployments || exit 1
    echo "test.sh: mypy --strict (session/, coordinators/)" >&2
    python -m mypy || exit 1
fi

# True when every role of the README's cluster (the etcd of $ETCD_ENDPOINTS, 127.0.0.1:2379 by
# default) has an ACTIVE member.
cluster_running() {
    timeout 20 milvus status --json 2>/dev/null | python -c '
import json, sys
try:
    rows = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
active = {r.get("role") for r in rows if r.get("state") == "ACTIVE"}
sys.exit(0 if {"rootcoord", "querycoord", "datacoord"} <= active else 1)
'
}

HOG_PID=""
STARTED_CLUSTER=0
cleanup() {
    if [ -n "$HOG_PID" ]; then kill "$HOG_PID" 2>/dev/null; wait "$HOG_PID" 2>/dev/null; fi
    if [ "$STARTED_CLUSTER" = 1 ]; then
        echo "test.sh: stopping the cluster this run started" >&2
        bash scripts/stop_cluster.sh >&2 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$UNDER_LOAD" = 1 ]; then
    if ! cluster_running; then
        echo "test.sh: --under-load: the README's cluster is not running: starting it (scripts/start_cluster.sh)" >&2
        bash scripts/start_cluster.sh >&2 || { echo "test.sh: could not start the cluster" >&2; exit 1; }
        STARTED_CLUSTER=1
    else
        echo "test.sh: --under-load: the README's cluster is running: left as it is" >&2
    fi
    python3 -c 'while True: pass' &
    HOG_PID=$!
    echo "test.sh: --under-load: one core kept busy (CPU hog pid $HOG_PID)" >&2
fi

rc=0
summary=()
for run in $(seq 1 "$REPEAT"); do
    [ "$REPEAT" -gt 1 ] && echo "test.sh: run $run of $REPEAT" >&2
    python -m pytest "${targets[@]+"${targets[@]}"}" -q --durations=15 "${args[@]+"${args[@]}"}"
    this=$?
    if [ "$this" -eq 5 ]; then
        echo "test.sh: pytest collected no tests (exit 5): treating as a failure" >&2
        this=1
    fi
    summary+=("run $run: exit $this")
    [ "$rc" -eq 0 ] && rc=$this
done
if [ "$REPEAT" -gt 1 ]; then
    printf 'test.sh: %s\n' "${summary[@]}" >&2
fi
exit "$rc"
