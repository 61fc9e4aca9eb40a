"""Estimator: a full left-turn pocket's overflow belongs to the left turners (Rückstau aus dem
Abbiegestreifen), the same rule the twin applies (``controller.estimator.pocket_overflow_m``).

Layout of the north arm of the Schlosskreuzung, reduced to its queue sensors: ``pocket`` on the
left-turn pocket (group ``L``), ``feeder`` on the inner lane that feeds the pocket and runs on
beside it (group ``T``), ``reference`` on the outer through lane (group ``T``).  Behind a full
pocket the left turners wait on the feeder's lane: its sensor reports their jam as ``T``'s.
"""

from __future__ import annotations

import pytest

from controller.estimator import Estimator, EstimatorConfig, PocketSpill, pocket_overflow_m
from controller.messages import DetectorInfo, DetectorKind, DetectorReading
from sim.junction import load_junction
from sim.twin_config import pocket_spills_from_model, twin_config_from_model

JAM_M = 7.0
POCKET = PocketSpill("pocket", "feeder", "reference", 56.0)
DETS = [
    DetectorInfo("pocket", DetectorKind.QUEUE, "N", ("N_app_4",), ("L",)),
    DetectorInfo("feeder", DetectorKind.QUEUE, "N", ("N_in_3", "N_app_3"), ("T",)),
    DetectorInfo("reference", DetectorKind.QUEUE, "N", ("N_in_2", "N_app_2"), ("T",)),
]


def queues(jams: dict[str, float], *, pockets: bool, seconds: int = 60) -> dict[str, float]:
    """Queued vehicles per group after ``seconds`` of steady radar readings.

    (Without loops the count model adds the default flow each second before the radar pulls
    it back: a steady offset of about 0.2 vehicles, hence the absolute tolerances.)
    """
    est = Estimator(DETS, config=None, pockets=(POCKET,) if pockets else ())
    for t in range(seconds):
        for i, (sensor, jam) in enumerate(sorted(jams.items())):
            est.observe(DetectorReading(sensor, float(t), t + 1 + i * 10_000, queue_m=jam))
        est.observe_signals(float(t), {"L": False, "T": False})
    e = est.estimate(float(seconds - 1))
    return {g: e.groups[g].queue_veh for g in ("L", "T")}


def test_a_full_pockets_overflow_is_booked_to_the_pocket() -> None:
    jams = {"pocket": 56.0, "feeder": 84.0, "reference": 14.0}
    plain = queues(jams, pockets=False)
    booked = queues(jams, pockets=True)
    # Without the rule the feeder's 84 m count as through traffic.
    assert plain["T"] == pytest.approx((84.0 + 14.0) / JAM_M, abs=0.5)
    assert plain["L"] == pytest.approx(56.0 / JAM_M, abs=0.5)
    # With it the feeder lane queues like its neighbour, and the rest waits for the pocket.
    assert booked["T"] == pytest.approx((14.0 + 14.0) / JAM_M, abs=0.5)
    assert booked["L"] == pytest.approx((56.0 + 70.0) / JAM_M, abs=0.5)
    # Nothing is lost or counted twice.
    assert sum(booked.values()) == pytest.approx(sum(plain.values()), rel=0.01)


@pytest.mark.parametrize("jams", [
    {"pocket": 40.0, "feeder": 84.0, "reference": 14.0},   # pocket not full
    {"pocket": 56.0, "feeder": 20.0, "reference": 14.0},   # feeder within a car of its neighbour
    {"pocket": 56.0, "feeder": 84.0},                       # no reading from the reference lane
])
def test_without_a_spilling_pocket_nothing_moves(jams: dict[str, float]) -> None:
    assert queues(jams, pockets=True) == pytest.approx(queues(jams, pockets=False))


def test_the_rule_itself() -> None:
    assert pocket_overflow_m([POCKET], {"pocket": 50.0, "feeder": 84.0, "reference": 14.0},
                             JAM_M) == {"feeder": (14.0, 70.0)}
    assert pocket_overflow_m([POCKET], {"pocket": 48.0, "feeder": 84.0, "reference": 14.0},
                             JAM_M) == {}


def test_a_pocket_naming_an_unknown_sensor_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="N9_q is not a queue sensor"):
        Estimator(DETS, pockets=(PocketSpill("N9_q", "feeder", "reference", 56.0),))


ONE_LANE = PocketSpill("pocket", "feeder", "", 52.5)
ARM = [
    DetectorInfo("pocket", DetectorKind.QUEUE, "W", ("W_app_3",), ("L",)),
    DetectorInfo("feeder", DetectorKind.QUEUE, "W", ("W_in_2", "W_app_2"), ("T",)),
    # One upstream loop for both groups: the flows it gives them set the mix of the jam.
    DetectorInfo("up", DetectorKind.UPSTREAM, "W", ("W_in_2",), ("L", "T"), 100.0),
]


def one_lane_queues(feeder_m: float, *, pockets: bool) -> dict[str, float]:
    est = Estimator(ARM, pockets=(ONE_LANE,) if pockets else (),
                    config=EstimatorConfig(pool_upstream_by_departures=False))
    for t in range(120):
        est.observe(DetectorReading("pocket", float(t), t + 1, queue_m=20.0))
        est.observe(DetectorReading("feeder", float(t), t + 1, queue_m=feeder_m))
        est.observe(DetectorReading("up", float(t), t + 1, count=1 if t % 6 == 0 else 0))
        est.observe_signals(float(t), {"L": False, "T": False})
    e = est.estimate(119.0)
    return {g: e.groups[g].queue_veh for g in ("L", "T")}


def test_on_a_one_lane_arm_the_jam_past_the_pocket_entry_is_shared_by_flow() -> None:
    # 122.5 m of jam on the through lane and the lane before the split: 70 m lie past the
    # pocket's entry, where left turners wait among the through traffic (even with room in
    # the pocket: they cannot pass the through queue to reach it).
    plain = one_lane_queues(122.5, pockets=False)
    shared = one_lane_queues(122.5, pockets=True)
    # The loop counts for both groups, split evenly: half the mixed jam is the left turners'.
    moved = 0.5 * 70.0 / JAM_M
    assert shared["L"] == pytest.approx(plain["L"] + moved, abs=0.3)
    assert shared["T"] == pytest.approx(plain["T"] - moved, abs=0.3)
    # A jam that ends before the entry (plus one car) stays the through group's.
    assert one_lane_queues(58.0, pockets=True) == pytest.approx(
        one_lane_queues(58.0, pockets=False))


def test_the_estimator_and_the_twin_find_the_same_pockets() -> None:
    model = load_junction("scenarios/schlosskreuzung")
    found = pocket_spills_from_model(model)
    assert {(p.pocket, p.feeder, p.reference) for p in found} == {
        ("N3_q", "N2_q", "N1_q"), ("S3_q", "S2_q", "S1_q"),
        ("W2_q", "W1_q", ""), ("E2_q", "E1_q", "")}
    # The twin draws the one-lane arms' jam mixed by itself; the rest is the same rule.
    assert tuple(p for p in found if p.reference) == twin_config_from_model(model).pocket_spills


def test_the_one_lane_rule_itself() -> None:
    jams = {"pocket": 0.0, "feeder": 122.5}
    assert pocket_overflow_m([ONE_LANE], jams, JAM_M, {"pocket": 0.25}) == {
        "feeder": (105.0, 17.5)}
    assert pocket_overflow_m([ONE_LANE], jams, JAM_M) == {}  # no flow share, no rule
