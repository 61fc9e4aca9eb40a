"""Property tests: whatever the detectors send, estimates stay finite and queues non-negative."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.estimator import Estimator
from controller.messages import DetectorInfo, DetectorKind, DetectorReading

DETS = [
    DetectorInfo("up", DetectorKind.UPSTREAM, "N", ("l0",), ("g1",), 100.0),
    DetectorInfo("sl", DetectorKind.STOP_LINE, "N", ("l0",), ("g1",), 2.0),
    DetectorInfo("sl2", DetectorKind.STOP_LINE, "N", ("l1",), ("g1", "g2"), 2.0),
    DetectorInfo("q", DetectorKind.QUEUE, "N", ("l0",), ("g1",)),
    DetectorInfo("pb", DetectorKind.PUSH_BUTTON, "N", (), ("p1",)),
    DetectorInfo("bus", DetectorKind.BUS_REQUEST, "N", ("l0",), ("g2",), 150.0),
]
IDS = [d.id for d in DETS]

reading = st.tuples(
    st.sampled_from(IDS),
    st.integers(-2, 40),
    st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)),
    st.booleans(),
    st.one_of(st.none(), st.floats(-10, 5000), st.sampled_from([math.nan, math.inf])),
    st.one_of(st.none(), st.floats(0, 30)),
)
step = st.tuples(
    st.lists(reading, max_size=6),
    st.fixed_dictionaries({"g1": st.booleans(), "g2": st.booleans(), "p1": st.booleans()}),
    st.sets(st.sampled_from(IDS), max_size=3),
    st.sampled_from([0.0, 0.5, 1.0, 5.0, 60.0]),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(step, min_size=1, max_size=60))
def test_estimator_estimates_finite_and_queues_never_negative(
    steps: list[tuple[list[tuple[str, int, float, bool, float | None, float | None]],
                      dict[str, bool], set[str], float]],
) -> None:
    est = Estimator(DETS, lanes_per_group={"g3": 2})
    seq = 0
    t = 0.0
    for readings, green, faulty, dt in steps:
        t += dt
        for det, count, occ, flag, queue_m, speed in readings:
            seq += 1
            est.observe(DetectorReading(det, t, seq, count, occ, flag, speed, queue_m, flag))
        est.observe_signals(t, green)
        e = est.estimate(t, dict.fromkeys(faulty, "stale"))
        assert set(e.groups) == {"g1", "g2", "p1", "g3"}
        for g in e.groups.values():
            for v in (g.flow_veh_h, g.queue_veh, g.queue_m, g.saturation_veh_h,
                      g.degree_of_saturation, g.ped_waiting_s, g.green_share):
                assert math.isfinite(v) and v >= 0.0
            assert g.bus_eta_s is None or (math.isfinite(g.bus_eta_s) and g.bus_eta_s >= 0)
            assert g.delay_s is None or (math.isfinite(g.delay_s) and g.delay_s >= 0)
            assert g.data_ok or g.demand
        assert not e.groups["g3"].data_ok  # a group without detectors never claims data
        for a in e.approaches.values():
            assert math.isfinite(a.queue_m) and a.queue_m >= 0.0
