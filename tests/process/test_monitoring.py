"""The monitoring that ships with the suite: ``deployments/prometheus/alerts.yml`` (with its promtool unit
tests, ``alerts_test.yml``) and the Grafana dashboard ``deployments/grafana/coordinators.json``.

- ``promtool check rules`` and ``promtool test rules``: each alert fires on its condition, none fires
  through a clean switchover or a crash a scrape sees as two ACTIVE members once (the ``for:`` of each
  rule outlasts them). Skipped, saying why, without promtool (Debian's ``prometheus`` package; ``.ci/run``
  installs it).
- Every metric the rules and the dashboard name is one a process exports (read from the ``# TYPE`` lines
  of a real ``/metrics`` rendering); every dashboard query parses (promtool checks each as a recording rule).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from coordinators.proto import common_pb2
from coordinators.server.metrics import CoordinatorMetrics, ProcessView

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deployments" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deployments" / "grafana" / "coordinators.json"
_NAME = re.compile(r"\bmilvus_coord_[a-z_]+\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool missing (apt-get install prometheus; .ci/run does)")
    return found


def exported() -> set[str]:
    """Every sample name a process exports: counters as ``*_total``, histograms with their suffixes."""
    view = ProcessView("rootcoord", common_pb2.Healthy, 1, 2, False, None, 1.0, None)
    names: set[str] = set()
    for line in CoordinatorMetrics("rootcoord", lambda: view).render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
    return names


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in doc["panels"] for target in panel["targets"]]


def test_the_alert_rules_and_the_dashboard_name_only_metrics_that_exist() -> None:
    have = exported()
    named = set(_NAME.findall(ALERTS.read_text())) | {n for q in dashboard_queries() for n in _NAME.findall(q)}
    assert named and named <= have, f"not exported: {sorted(named - have)}"
    # The dashboard shows every family a process exports, but the server ID.
    families = {n for n in have if not n.endswith(_HISTOGRAM_SUFFIXES)} - {"milvus_coord_server_id"}
    shown = {n for q in dashboard_queries() for n in _NAME.findall(q)}
    shown |= {n.removesuffix(s) for n in shown for s in _HISTOGRAM_SUFFIXES if n.endswith(s)}
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    tool = promtool()
    checked = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=ALERTS.parent, capture_output=True,
                            text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    tool = promtool()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q} for i, q in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
