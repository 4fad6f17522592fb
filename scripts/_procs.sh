# shellcheck shell=bash
# Sourced by start_cluster.sh and stop_cluster.sh (after _venv.sh): what they need to know about
# pids and pid files.

# Alive and not a zombie (kill -0 succeeds on a zombie child not yet reaped).
pid_alive() {
    local state
    [ -n "${1:-}" ] || return 1
    state="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)"
    [ -n "$state" ] && [ "$state" != Z ]
}

# The command line of a pid, space-separated ("" when gone).
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }

# The pid files' directory, as `milvus run` chooses it ($MILVUS_RUN_DIR, /run/milvus, /tmp/milvus):
# asked of coordinators/runtime/pidfile.py rather than repeated here.
milvus_run_dir() { python -m coordinators.runtime.pidfile dir; }

# The pid of the live `milvus run ROLE [--alias ALIAS]` holding its pid file's lock; fails if none.
pid_holder() { python -m coordinators.runtime.pidfile holder "$1" ${2:+"$2"}; }
