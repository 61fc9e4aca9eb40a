"""docs/metrics.md, the brief other parts rely on, and the exposition all agree."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.messages import AckStatus
from controller.metrics import DETECTOR_FAULTS, MESSAGE_KINDS, SAFETY_RULES, Metrics
from controller.wire import RejectReason

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(atsc_\w+)` \| (\w+) \|([^|]*)\|", re.M)
DETECTORS = ("N_1_stop", "W_q")
APPROACHES = ("N", "S", "W", "E")

#: The names alerts and the dashboard in ops/ are written against: renaming one breaks them.
CONTRACT = {
    "atsc_build_info", "atsc_messages_received_total", "atsc_messages_rejected_total",
    "atsc_detector_data_age_seconds", "atsc_detector_healthy", "atsc_detectors_faulty",
    "atsc_detector_faults_total", "atsc_queue_length_meters", "atsc_estimated_delay_seconds",
    "atsc_arrival_flow_vehicles_per_hour", "atsc_plans_proposed_total",
    "atsc_plans_validated_total", "atsc_plans_rejected_total", "atsc_plans_pushed_total",
    "atsc_plans_below_pedestrian_floor_total",
    "atsc_plan_acks_total", "atsc_decision_duration_seconds", "atsc_validation_duration_seconds",
    "atsc_twin_evaluation_duration_seconds", "atsc_ingest_latency_seconds",
    "atsc_lease_remaining_seconds", "atsc_fallback_active", "atsc_adaptive_active",
    "atsc_mqtt_connected", "atsc_mqtt_reconnects_total", "atsc_cycle_seconds",
    "atsc_messages_dropped_total",
    "atsc_last_plan_push_timestamp_seconds",
}


def _exposition() -> str:
    m = Metrics(version="9.9.9")
    m.pre_initialise(DETECTORS, APPROACHES)
    return generate_latest(m.registry).decode()


def _families() -> dict[str, tuple[str, set[str], list[dict[str, str]]]]:
    """Metric name -> (type, label names, label sets of the samples); _created series dropped."""
    out: dict[str, tuple[str, set[str], list[dict[str, str]]]] = {}
    for fam in text_string_to_metric_families(_exposition()):
        # The parser strips _total from counter family names; the wire name keeps it.
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = (
            fam.type,
            {k for s in fam.samples for k in s.labels if k != "le"},
            [dict(s.labels) for s in fam.samples],
        )
    created = {n for n in out if n.endswith("_created")}
    for n in created:
        base = n.removesuffix("_created")
        if base + "_total" in out or base in out:
            del out[n]
    return out


def _doc_rows() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for name, mtype, labels in ROW.findall(DOC.read_text("utf-8")):
        rows[name] = (mtype, set(re.findall(r"`(\w+)`", labels)))
    return rows


def test_metrics_doc_matches_exposition_both_ways() -> None:
    doc = _doc_rows()
    exposed = _families()
    assert set(doc) == set(exposed)
    for name, (mtype, labels) in doc.items():
        assert exposed[name][0] == mtype, name
        assert exposed[name][1] == labels, name


def test_metrics_contract_names_are_all_there() -> None:
    assert set(_families()) == CONTRACT


def test_metrics_follow_naming_conventions() -> None:
    for name, (mtype, _labels, _samples) in _families().items():
        assert re.fullmatch(r"atsc_[a-z][a-z0-9_]*[a-z0-9]", name), name
        assert name.endswith("_total") == (mtype == "counter"), name
        if mtype == "histogram" or re.search(r"_(duration|latency|age|remaining|timestamp)_", name):
            assert name.endswith("_seconds"), name
        if "queue" in name:
            assert name.endswith("_meters"), name


def _values(name: str, label: str) -> set[str]:
    return {s[label] for s in _families()[name][2] if label in s}


def test_metrics_pre_initialise_creates_every_child() -> None:
    assert _values("atsc_messages_received_total", "kind") == set(MESSAGE_KINDS)
    assert _values("atsc_messages_rejected_total", "reason") == {r.value for r in RejectReason}
    assert _values("atsc_detector_faults_total", "fault") == set(DETECTOR_FAULTS)
    assert _values("atsc_plans_rejected_total", "rule") == set(SAFETY_RULES)
    assert _values("atsc_plan_acks_total", "status") == {s.value for s in AckStatus}
    for name in ("atsc_detector_data_age_seconds", "atsc_detector_healthy"):
        assert _values(name, "detector") == set(DETECTORS)
    for name in ("atsc_queue_length_meters", "atsc_estimated_delay_seconds",
                 "atsc_arrival_flow_vehicles_per_hour"):
        assert _values(name, "approach") == set(APPROACHES)
    assert _values("atsc_build_info", "version") == {"9.9.9"}


def test_metrics_instances_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.plans_pushed_total.inc(3)
    assert b.registry.get_sample_value("atsc_plans_pushed_total") == 0
    assert a.registry.get_sample_value("atsc_plans_pushed_total") == 3
    shared = CollectorRegistry()
    Metrics(shared)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(shared)


def test_metrics_values_reach_the_exposition() -> None:
    m = Metrics()
    m.pre_initialise(DETECTORS, APPROACHES)
    m.messages_rejected_total.labels(reason=RejectReason.REPLAY).inc()
    m.queue_length_meters.labels(approach="N").set(42.5)
    m.decision_duration_seconds.observe(0.3)
    r = m.registry
    assert r.get_sample_value("atsc_messages_rejected_total", {"reason": "replay"}) == 1
    assert r.get_sample_value("atsc_queue_length_meters", {"approach": "N"}) == 42.5
    assert r.get_sample_value("atsc_decision_duration_seconds_bucket", {"le": "0.5"}) == 1
    assert r.get_sample_value("atsc_decision_duration_seconds_bucket", {"le": "0.25"}) == 0


@pytest.mark.prometheus
def test_metrics_pass_promtool_lint(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool (Debian package prometheus) is required"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=_exposition(), capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout
