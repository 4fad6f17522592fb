# shellcheck shell=bash
# Sourced by start_cluster.sh and stop_cluster.sh: what they need to know about a pid.

# Alive and not a zombie (kill -0 succeeds on a zombie child not yet reaped).
pid_alive() {
    local state
    [ -n "${1:-}" ] || return 1
    state="$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)"
    [ -n "$state" ] && [ "$state" != Z ]
}

# The command line of a pid, space-separated ("" when gone).
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }
