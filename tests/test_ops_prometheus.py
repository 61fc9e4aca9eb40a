"""Prometheus config and alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _dashboard_exprs import ALERTS, ALLOWED_SERIES, alert_expressions, alert_rules, metric_names

REPO = Path(__file__).resolve().parent.parent
PROM_DIR = REPO / "ops" / "prometheus"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(60)]

REQUIRED_ALERTS = {
    "AtscServiceDown", "AtscFallbackActive", "AtscDetectorFaults", "AtscStaleDetectorData",
    "AtscSlowDecisions", "AtscMqttDisconnected", "AtscPlansRejected", "AtscNoPlansPushed",
}


def promtool(*args: str | Path, cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)


def test_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_on_synthetic_series_and_stays_quiet_otherwise() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    # The promtool tests must be able to fail: a rule that no longer sees stale
    # data has to break them.
    shutil.copy(PROM_DIR / "alerts_test.yml", tmp_path)
    broken = ALERTS.read_text().replace(
        "(atsc_detector_data_age_seconds) > 10", "(atsc_detector_data_age_seconds) > 100")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "AtscStaleDetectorData" in result.stdout + result.stderr


def test_every_alert_has_a_promtool_test_and_required_metadata() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert names >= REQUIRED_ALERTS
    tested = set(re.findall(r"alertname:\s*(\w+)",
                            (PROM_DIR / "alerts_test.yml").read_text()))
    assert names == tested
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def _slug(heading: str) -> str:
    # GitHub's anchor rule: lower case, drop punctuation, spaces to dashes.
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_runbook_link_points_at_a_section_of_the_operations_guide() -> None:
    anchors = {_slug(m) for m in re.findall(r"(?m)^#+\s+(.*)$", OPERATIONS_DOC.read_text())}
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        doc, _, anchor = url.partition("#")
        assert doc == "docs/operations.md", url
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor}"


def test_alerts_use_only_metrics_the_service_exports() -> None:
    exprs = alert_expressions()
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= ALLOWED_SERIES, (expr, names - ALLOWED_SERIES)
