"""Degradation policy (safety.md D1, D2): conservative demand, hand-over to the fallback."""

from __future__ import annotations

from controller.health import Degradation, Fault, HealthConfig, assess
from controller.messages import DetectorInfo, DetectorKind


def det(det_id: str, *groups: str, kind: DetectorKind = DetectorKind.STOP_LINE) -> DetectorInfo:
    return DetectorInfo(det_id, kind, "N", (det_id,), groups)


# Ten detectors: g1 has three, g2 two, g3 one shared with g4, p1 a push-button.
DETS = [
    det("a1", "g1"), det("a2", "g1"), det("a3", "g1", kind=DetectorKind.UPSTREAM),
    det("b1", "g2"), det("b2", "g2", kind=DetectorKind.UPSTREAM),
    det("c1", "g3", "g4"), det("d1", "g4"), det("d2", "g4"), det("d3", "g4"),
    det("p", "p1", kind=DetectorKind.PUSH_BUTTON),
]


def test_health_degradation_all_healthy() -> None:
    d = assess(DETS, {})
    assert d == Degradation(True, d.reason, frozenset(), frozenset())


def test_health_degradation_faulty_detector_means_demand_but_adaptive_continues() -> None:
    d = assess(DETS, {"a1": Fault.STUCK_ON})
    assert d.adaptive_allowed
    assert d.demand_assumed == {"g1"}
    assert d.groups_without_data == frozenset()


def test_health_degradation_half_of_a_group_is_not_more_than_half() -> None:
    d = assess(DETS, {"b1": Fault.DEAD})
    assert d.adaptive_allowed, d.reason
    assert d.demand_assumed == {"g2"}


def test_health_degradation_hands_over_when_most_of_a_group_is_faulty() -> None:
    d = assess(DETS, {"a1": Fault.STALE, "a2": Fault.CHATTERING})
    assert not d.adaptive_allowed
    assert "g1 (2/3)" in d.reason
    assert d.demand_assumed == {"g1"}


def test_health_degradation_shared_detector_and_groups_without_data() -> None:
    d = assess(DETS, {"c1": Fault.STALE})
    assert not d.adaptive_allowed  # g3's only detector
    assert d.groups_without_data == {"g3"}
    assert d.demand_assumed == {"g3", "g4"}


def test_health_degradation_total_share() -> None:
    # One detector per group faulty: no group over half, but 4 of 10 overall.
    faulty = {"a1": Fault.STALE, "b1": Fault.STALE, "d1": Fault.STALE, "d2": Fault.STALE}
    d = assess(DETS, faulty, HealthConfig(max_group_faulty_share=0.9))
    assert not d.adaptive_allowed
    assert "4/10" in d.reason
    three = {k: v for k, v in faulty.items() if k != "d2"}
    assert assess(DETS, three, HealthConfig(max_group_faulty_share=0.9)).adaptive_allowed


def test_health_degradation_ignores_unknown_ids() -> None:
    assert assess(DETS, {"nope": Fault.STALE}).adaptive_allowed
