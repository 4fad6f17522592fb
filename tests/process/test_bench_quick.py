"""The benchmarks' CI smoke run: each bench script with ``--quick``, as a subprocess.

Only checks that the numbers were produced (the result JSON has its keys and the values are
positive numbers): timings belong to ``bench/`` and ``docs/performance.md``, never to a test's
assertions. Each script starts its own etcd on free ports and cleans up after itself; a timeout
per script keeps a hung bench from hanging CI.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the three results, so the page generator can be run on them last."""
    return tmp_path_factory.mktemp("bench-results")


def run_bench(script: str, out: Path, *extra: str, timeout: float = 120.0) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out), *extra],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, (
        f"{script} --quick exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    assert "|" in proc.stdout, f"{script} printed no table:\n{proc.stdout[-2000:]}"
    return json.loads(out.read_text())


def positive(doc: Any, *path: str | int) -> float:
    value = doc
    for key in path:
        assert isinstance(value, dict | list), f"{'.'.join(map(str, path))}: {key!r} not reachable"
        value = value[key]
    assert isinstance(value, int | float) and not isinstance(value, bool), f"{'.'.join(map(str, path))} = {value!r}"
    assert math.isfinite(value) and value > 0, f"{'.'.join(map(str, path))} = {value!r}"
    return float(value)


def check_machine(doc: dict[str, Any]) -> None:
    assert doc["quick"] is True
    positive(doc, "machine", "nproc")
    assert doc["machine"]["python"] and doc["machine"]["etcd"]


def test_failover_quick(results: Path) -> None:
    doc = run_bench("failover.py", results / "failover.json")
    check_machine(doc)
    [fast60] = doc["crash"]["series"]  # the quick run: TTL 60 s, the crash fast path on
    assert (fast60["ttl"], fast60["fast"]) == (60, True)
    for key in ("key_ms", "service_ms"):
        positive(doc, "graceful", "ours", "summary", key, "p50")
        positive(fast60, "summary", key, "p50")
    positive(doc, "graceful", "etcd", "summary", "elected_ms", "p50")
    positive(doc, "graceful", "ratio_key_p50")
    positive(doc, "graceful", "ours_unloaded", "summary", "key_ms", "p50")  # the like-for-like series
    positive(doc, "graceful", "ratio_key_p50_unloaded")
    assert all(r["service_ms"] is None and not r["load"] for r in doc["graceful"]["ours_unloaded"]["rounds"])
    positive(doc, "crash", "goals", "ratio_p95_vs_graceful")
    assert fast60["causes"] == {"fast_path": 1}, fast60["causes"]
    assert len(doc["graceful"]["ours"]["breakdown"]) >= 5 and len(fast60["breakdown"]) >= 5


def test_throughput_quick(results: Path) -> None:
    doc = run_bench("throughput.py", results / "throughput.json")
    check_machine(doc)
    loop = doc["loops"]["asyncio"]
    cases = {(c["case"], c["concurrency"]): c for c in loop["cases"]}
    for name in ("echo client AllocTimestamp x1", "rootcoord client AllocTimestamp x1", "rootcoord client AllocID x1",
                 "rootcoord client AllocTimestamp x1000", "etcd txn per call"):
        for conc in (1, 50):
            positive(cases[(name, conc)], "calls_per_s")
    positive(loop, "goals", "timestamps_per_s_batched")
    positive(loop, "goals", "ratio_client_c1")


def test_scale_quick(results: Path) -> None:
    doc = run_bench("scale.py", results / "scale.json")
    check_machine(doc)
    assert [c["standbys"] for c in doc["standbys"]] == [1, 2]
    for case in doc["standbys"]:
        positive(case, "etcd_req_per_s", "all")
        positive(case, "etcd_req_per_s", "LeaseKeepAlive")
        positive(case, "standby_rss_mb", "p50")
        assert case["standby_cpu_pct"]["p50"] >= 0
        positive(case, "takeover", "summary", "service_ms", "p50")
    roles = {c["role"] for c in doc["activation"]}
    assert roles == {"rootcoord", "datacoord"}
    for case in doc["activation"]:
        positive(case, "reload_s_p50")
        positive(case, "range_requests")
    assert {(c["size"], c["standby"]) for c in doc["takeover"]} == {(0, "hot"), (0, "cold"), (1000, "hot"), (1000, "cold")}
    for case in doc["takeover"]:
        positive(case, "service_ms", "p50")
        assert case["states"] == (["hot"] if case["standby"] == "hot" else ["reloaded"]), case
    assert [row["size"] for row in doc["takeover_summary"]] == [0, 1000]


def test_abuse_quick(results: Path) -> None:
    doc = run_bench("abuse.py", results / "abuse.json", timeout=180)
    check_machine(doc)
    names = [r["abuse"] for r in doc["rounds"]]
    assert names == ["reference", "oversize_active", "oversize_standby", "rapid_reset", "slowloris"], names
    for row in doc["rounds"]:
        positive(row, "calls")
        positive(row, "call_ms", "max")
        assert isinstance(row["term_kept"], bool) and row["rss_growth_mb"] == row["rss_growth_mb"]
    assert doc["rounds"][1]["detail"]["status"] == "8"  # refused from its prefix
    assert doc["rounds"][3]["detail"]["goaways"], doc["rounds"][3]


def test_report_from_quick_results(results: Path, tmp_path: Path) -> None:
    """The page generator runs on the results above (plots only where matplotlib is installed)."""
    page, img = tmp_path / "performance.md", tmp_path / "img"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--results", str(results), "--page", str(page), "--img", str(img)],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = page.read_text()
    assert text.startswith("# ")
    for section in ("## Goals", "## 1. Failover", "## 2. RPC throughput", "## 3. Scale", "## What an unauthenticated"):
        assert section in text, f"no {section!r} section in the page"
    for bench in ("failover", "throughput", "scale"):
        if (results / f"{bench}.json").exists():  # the tests above ran: the page shows their numbers
            assert f"Not measured yet: `python bench/{bench}.py`" not in text
