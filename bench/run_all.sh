#!/usr/bin/env bash
# Run the three benches in full, then regenerate docs/performance.md and docs/img/*.png.
#
#   bench/run_all.sh                 # as is
#   bench/run_all.sh --wait-quiet    # first wait (up to 25 min) for a 1-minute load average below 0.7
#   bench/run_all.sh --quick         # the CI smoke versions (results in bench/results/*.quick.json; no page)
#
# Why wait: the figures are latencies and rates on a small machine; another test suite running at the
# same time shows up in them. If the machine never gets quiet the benches run anyway, and the page
# says so (bench/results/note.txt).
set -euo pipefail

# shellcheck source=scripts/_venv.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_venv.sh" || exit 1
cd "$REPO_ROOT"

quick=() wait_quiet=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=(--quick) ;;
        --wait-quiet) wait_quiet=1 ;;
        *) echo "usage: bench/run_all.sh [--quick] [--wait-quiet]" >&2; exit 2 ;;
    esac
done

if ! python -c 'import matplotlib, uvloop' 2>/dev/null; then
    echo "run_all.sh: installing the bench extra (matplotlib, uvloop)" >&2
    python -m pip install -q --disable-pip-version-check -e '.[bench]'
fi

load1() { cut -d' ' -f1 /proc/loadavg; }
quiet_for_a_minute() {
    local i
    for i in 1 2 3; do
        awk -v l="$(load1)" 'BEGIN { exit !(l < 0.7) }' || return 1
        [ "$i" = 3 ] || sleep 30
    done
}
rm -f bench/results/note.txt
if [ "$wait_quiet" = 1 ]; then
    deadline=$((SECONDS + 25 * 60))
    until quiet_for_a_minute; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            msg="The machine never got quiet (1-minute load average $(load1) after waiting 25 minutes for it to stay below 0.7): other work shared its 2 cores during these runs, so the figures are pessimistic."
            echo "run_all.sh: $msg" >&2
            mkdir -p bench/results && echo "$msg" > bench/results/note.txt
            break
        fi
        echo "run_all.sh: load average $(load1), waiting for the machine to be quiet..." >&2
        sleep 30
    done
fi

python bench/failover.py "${quick[@]}"
python bench/throughput.py "${quick[@]}"
python bench/scale.py "${quick[@]}"
python bench/abuse.py "${quick[@]}"
if [ "${#quick[@]}" = 0 ]; then
    python bench/report.py
fi
