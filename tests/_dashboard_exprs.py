"""PromQL expressions of the Grafana dashboard and the alert rules, ready for Prometheus.

``dashboard_expressions`` replaces Grafana's template variables so the expressions can be
checked by promtool or evaluated against a real Prometheus: ``$junction``/``$instance``
(and any other user variable) become the match-all regex ``.*`` (the dashboard uses
``=~`` for them), Grafana's interval variables become fixed durations.

Also here: the metric names the service exports (controller/metrics.py) and a small
metric-name extractor, so tests can prove ops/ refers only to metrics that exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "atsc-junction.json"
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"

MATCH_ALL = ".*"
#: Grafana's built-in interval variables; 1m spans several 5 s scrapes.
BUILTIN_SUBSTITUTIONS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
}

#: Metrics of controller/metrics.py (the contract the dashboard and alerts rely on).
ATSC_METRICS: frozenset[str] = frozenset({
    "atsc_build_info",
    "atsc_messages_received_total",
    "atsc_messages_rejected_total",
    "atsc_detector_data_age_seconds",
    "atsc_detector_healthy",
    "atsc_detectors_faulty",
    "atsc_detector_faults_total",
    "atsc_queue_length_meters",
    "atsc_estimated_delay_seconds",
    "atsc_arrival_flow_vehicles_per_hour",
    "atsc_plans_proposed_total",
    "atsc_plans_validated_total",
    "atsc_plans_rejected_total",
    "atsc_plans_below_pedestrian_floor_total",
    "atsc_plans_pushed_total",
    "atsc_plan_acks_total",
    "atsc_decision_duration_seconds",
    "atsc_validation_duration_seconds",
    "atsc_twin_evaluation_duration_seconds",
    "atsc_ingest_latency_seconds",
    "atsc_lease_remaining_seconds",
    "atsc_fallback_active",
    "atsc_adaptive_active",
    "atsc_mqtt_connected",
    "atsc_mqtt_reconnects_total",
    "atsc_cycle_seconds",
    "atsc_last_plan_push_timestamp_seconds",
})
HISTOGRAMS: frozenset[str] = frozenset({
    "atsc_decision_duration_seconds",
    "atsc_validation_duration_seconds",
    "atsc_twin_evaluation_duration_seconds",
    "atsc_ingest_latency_seconds",
})
#: Series names a query may use: gauges and counters as is, histograms by their parts.
ALLOWED_SERIES: frozenset[str] = frozenset(
    {"up"}
    | (ATSC_METRICS - HISTOGRAMS)
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")}
)

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute_variables(expr: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return BUILTIN_SUBSTITUTIONS.get(name, MATCH_ALL)

    return _VARIABLE.sub(repl, expr)


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        # Collapsed rows keep their panels nested.
        yield from _panels(panel.get("panels", []))


def raw_dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every non-empty targets[].expr as written in the dashboard."""
    dashboard = json.loads(Path(path).read_text())
    return [
        target["expr"]
        for panel in _panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr", "").strip()
    ]


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    """Every targets[].expr with template variables replaced (see module docstring)."""
    return [substitute_variables(e) for e in raw_dashboard_expressions(path)]


def alert_expressions(path: Path = ALERTS) -> list[str]:
    """The expr of every rule (alerting and recording) in a Prometheus rules file."""
    doc = yaml.safe_load(Path(path).read_text())
    return [str(rule["expr"]).strip() for group in doc["groups"] for rule in group["rules"]]


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    doc = yaml.safe_load(Path(path).read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_BRACES = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects (heuristic: no PromQL parser in Python here).

    Strings, label matchers, ranges and by/without/on clauses are blanked first; what
    remains and is neither a keyword nor a function call is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _LABEL_LIST.sub(" ", text)
    text = _BRACES.sub("{}", text)
    text = _BRACKETS.sub("[]", text)
    names: set[str] = set()
    for m in _WORD.finditer(text):
        word = m.group(0)
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        # Duration/number suffixes such as 1e3 never start a word here; "e" alone could.
        if text[m.start() - 1:m.start()].isdigit():
            continue
        names.add(word)
    return names


def recording_rules_file(exprs: list[str], path: Path, group: str = "dashboard") -> Path:
    """Write ``exprs`` as recording rules (JSON is valid YAML) for ``promtool check rules``."""
    rules = [{"record": f"{group}:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path.write_text(json.dumps({"groups": [{"name": group, "rules": rules}]}, indent=1))
    return path
