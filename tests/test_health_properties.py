"""Property tests: health does not flap, and recovery always takes N plausible readings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.health import HealthConfig, HealthMonitor
from controller.messages import DetectorInfo, DetectorKind, DetectorReading

N = HealthConfig().recovery_readings
INFO = DetectorInfo("d", DetectorKind.STOP_LINE, "N", ("l0",), ("g1",), 2.0)

plausible = st.tuples(st.integers(0, 1), st.floats(0.0, 0.5))
impossible = st.sampled_from([(5, 0.0), (2, 0.0), (0, 1.0)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(plausible, max_size=N - 1), min_size=1, max_size=30),
       st.lists(impossible, min_size=30, max_size=30))
def test_health_alternating_readings_never_clear_a_fault(
    runs: list[list[tuple[int, float]]], bad: list[tuple[int, float]]
) -> None:
    mon = HealthMonitor([INFO])
    stream: list[tuple[int, float]] = [(5, 0.0)] * 3  # three impossible readings: CHATTERING
    for run, b in zip(runs, bad, strict=False):
        stream += [*run, b]
    events = []
    for k, (count, occ) in enumerate(stream):
        events += mon.observe(DetectorReading("d", float(k), k + 1, count, occ), float(k))
        events += mon.tick(float(k))
        if k >= 2:
            assert mon.status("d") is not None
    assert all(e.new is not None for e in events)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(plausible, impossible), min_size=1, max_size=300),
       st.lists(st.booleans(), min_size=300, max_size=300))
def test_health_every_recovery_follows_n_readings_after_the_last_fault(
    stream: list[tuple[int, float]], skip: list[bool]
) -> None:
    mon = HealthMonitor([INFO])
    last_fault_at = 0
    t = 0.0
    for k, (count, occ) in enumerate(stream):
        t += 3.0 if skip[k] and k % 7 == 0 else 1.0  # sometimes a late reading: stale
        events = mon.tick(t) + mon.observe(DetectorReading("d", t, k + 1, count, occ), t)
        for e in events:
            if e.new is None:
                assert k + 1 - last_fault_at >= N
            else:
                last_fault_at = k + 1
        assert (mon.status("d") is None) == ("d" not in mon.faulty())
