"""The Grafana dashboard and provisioning: every query parses in the real promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from _dashboard_exprs import (
    ALLOWED_SERIES,
    ATSC_METRICS,
    DASHBOARD,
    HISTOGRAMS,
    dashboard_expressions,
    metric_names,
    raw_dashboard_expressions,
    recording_rules_file,
)

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "ops" / "grafana"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(60)]


def _check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    result = _check_rules(recording_rules_file(exprs, tmp_path / "dashboard.rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    # Guards the check above: a syntax error must not slip through.
    exprs = [*dashboard_expressions(), "sum by (approach (atsc_queue_length_meters)"]
    result = _check_rules(recording_rules_file(exprs, tmp_path / "bad.rules.yml"))
    assert result.returncode != 0


def _base(series: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if series.endswith(suffix) and series.removesuffix(suffix) in HISTOGRAMS:
            return series.removesuffix(suffix)
    return series


def test_dashboard_uses_only_exported_metrics_and_all_of_them() -> None:
    used: set[str] = set()
    for expr in dashboard_expressions():
        names = metric_names(expr)
        assert names, expr
        assert names <= ALLOWED_SERIES, (expr, names - ALLOWED_SERIES)
        used |= names
    assert ATSC_METRICS - {_base(n) for n in used} == set()
    assert "up" in used


def test_metric_name_extractor_sees_unknown_names() -> None:
    names = metric_names('sum by (le) (rate(node_cpu_seconds_total{mode="idle"}[5m])) '
                         "/ on (instance) atsc_cycle_seconds offset 5m")
    assert names == {"node_cpu_seconds_total", "atsc_cycle_seconds"}


def test_template_variables_are_regex_matchers() -> None:
    # Substituting ".*" is only correct for =~ matchers; "$x" after "=" would not match.
    for expr in raw_dashboard_expressions():
        assert '="$' not in expr.replace(" ", ""), expr
        assert 'job="atsc"' in expr, expr
    assert all("$" not in e for e in dashboard_expressions())


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "atsc-junction"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "junction", "instance"} <= set(variables)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_provisioning_files() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].endswith(":9090")
    dashboards = yaml.safe_load((GRAFANA / "provisioning/dashboards/atsc.yml").read_text())
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
