#!/usr/bin/env bash
# Run the test suite in the project's virtualenv: scripts/test.sh [pytest args...]
# Why the exit-5 check: pytest exits 5 when it collected nothing, which must
# never pass as green (a typo in a path, an import error hidden by -k, ...).
set -uo pipefail

# shellcheck source=scripts/_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" || exit 1
cd "$REPO_ROOT" || exit 1

# Default to the whole suite, unless the caller named paths or node ids.
targets=(tests)
for arg in "$@"; do
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

python -m pytest "${targets[@]}" -q -x --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests (exit 5): treating as a failure" >&2
    exit 1
fi
exit "$rc"
