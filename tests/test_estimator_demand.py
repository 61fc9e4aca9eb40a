"""Estimator: pedestrian and bus demand, conservative handling of faulty detectors, helpers."""

from __future__ import annotations

import pytest

from controller.estimator import (
    Estimator,
    EstimatorConfig,
    green_from_state,
    hcm_delay_s,
    turn_factor,
)
from controller.messages import (
    DetectorInfo,
    DetectorKind,
    DetectorReading,
    HardwareState,
    is_news,
)

DETS = [
    DetectorInfo("up", DetectorKind.UPSTREAM, "W", ("W_0",), ("v1",), 120.0),
    DetectorInfo("sl", DetectorKind.STOP_LINE, "W", ("W_0",), ("v1",), 2.0),
    DetectorInfo("pb", DetectorKind.PUSH_BUTTON, "W", (), ("p1",)),
    DetectorInfo("bus", DetectorKind.BUS_REQUEST, "W", ("W_0",), ("v1",), 160.0),
]


def feed_traffic(est: Estimator, t0: int, t1: int, headway: int = 4) -> None:
    """Light traffic through a green v1: one vehicle per headway on both loops."""
    for t in range(t0, t1):
        c = 1 if t % headway == 0 else 0
        est.observe(DetectorReading("up", float(t), t, c, 0.3 * c))
        est.observe(DetectorReading("sl", float(t), t, c, 0.3 * c))
        est.observe_signals(float(t), {"v1": True, "p1": False})


def test_estimator_pedestrian_press_pending_until_green() -> None:
    est = Estimator(DETS)
    est.observe_signals(0.0, {"p1": False})
    assert not est.estimate(1.0).groups["p1"].demand
    est.observe(DetectorReading("pb", 5.0, 1, pressed=True))
    est.observe(DetectorReading("pb", 9.0, 2, pressed=True))  # second press: same wait
    e = est.estimate(20.0).groups["p1"]
    assert e.demand
    assert e.ped_waiting_s == pytest.approx(15.0)
    assert e.flow_veh_h == 0.0 and e.saturation_veh_h == 0.0
    est.observe_signals(21.0, {"p1": True})
    assert not est.estimate(22.0).groups["p1"].demand
    est.observe(DetectorReading("pb", 23.0, 3, pressed=True))  # pressed during its green
    assert est.estimate(24.0).groups["p1"].ped_waiting_s == 0.0


def test_estimator_bus_eta_and_clearing() -> None:
    est = Estimator(DETS)
    est.observe_signals(0.0, {"v1": False})
    est.observe(DetectorReading("bus", 10.0, 1, count=1))  # no speed: 160 m at 8 m/s
    assert est.estimate(12.0).groups["v1"].bus_eta_s == pytest.approx(18.0)
    est.observe(DetectorReading("bus", 13.0, 2, count=1, speed_mps=16.0))
    assert est.estimate(14.0).groups["v1"].bus_eta_s == pytest.approx(9.0)
    est.observe_signals(25.0, {"v1": True})  # green after both ETAs: both served
    assert est.estimate(31.0).groups["v1"].bus_eta_s is None
    est.observe_signals(32.0, {"v1": False})
    est.observe(DetectorReading("bus", 40.0, 3, count=1))
    cfg = est.config
    est.observe_signals(40.0 + cfg.bus_request_timeout_s + 1, {"v1": False})
    assert est.estimate(40.0 + cfg.bus_request_timeout_s + 2).groups["v1"].bus_eta_s is None


def test_estimator_faulty_movement_keeps_last_good_flow_and_demand() -> None:
    est = Estimator(DETS, config=EstimatorConfig(flow_time_constant_s=60.0))
    feed_traffic(est, 0, 600, headway=4)
    good = est.estimate(600.0).groups["v1"]
    assert good.data_ok
    assert good.flow_veh_h == pytest.approx(900.0, rel=0.05)
    bad = est.estimate(601.0, {"up": "dead", "sl": "stale"}).groups["v1"]
    assert not bad.data_ok and bad.demand
    assert bad.flow_veh_h == pytest.approx(good.flow_veh_h)


def test_estimator_group_without_detectors_uses_default_flow() -> None:
    cfg = EstimatorConfig(default_flow_veh_h=420.0)
    est = Estimator(DETS, lanes_per_group={"v9": 2}, config=cfg, turns={"v9": "left"})
    e = est.estimate(0.0).groups["v9"]
    assert not e.data_ok and e.demand
    assert e.flow_veh_h == pytest.approx(420.0)
    assert e.saturation_veh_h == pytest.approx(2 * 1800.0 * 0.9)


def test_estimator_turn_factors() -> None:
    assert turn_factor("N through") == 1.0
    assert turn_factor("S left") == 0.9
    assert turn_factor("E right") == 0.85
    assert turn_factor("W through+right") == pytest.approx(0.925)
    assert turn_factor("") == 1.0


def test_estimator_green_from_hardware_state() -> None:
    state = HardwareState(0.0, "p", False, 0, "GryG")
    assert green_from_state(state, ["a", "b", "c", "d"]) == {
        "a": True, "b": False, "c": False, "d": True,
    }


def test_estimator_hcm_delay_matches_webster_uniform_term() -> None:
    # Low flow: the incremental term vanishes; uniform delay 0.5 C (1 - λ)^2 / (1 - x λ).
    c, lam, s, q = 90.0, 0.4, 1800.0, 36.0
    x = q / (s * lam)
    expected_d1 = 0.5 * c * (1 - lam) ** 2 / (1 - x * lam)
    d = hcm_delay_s(q, s, lam, c)
    assert d is not None
    assert d == pytest.approx(expected_d1, abs=1.0)
    assert d > expected_d1
    # Oversaturated: finite, and larger than any undersaturated delay.
    over = hcm_delay_s(1000.0, s, lam, c)
    assert over is not None and over > hcm_delay_s(600.0, s, lam, c)  # type: ignore[operator]
    assert hcm_delay_s(q, s, 0.0, c) is None


def test_estimator_queue_zone_over_consecutive_lanes_is_one_lane_wide() -> None:
    """A queue sensor whose zone runs from the approach lane into its continuation (two SUMO
    lanes one behind the other) measures one lane: the same queue length gives the same
    number of queued vehicles as a zone on a single lane."""
    from controller.estimator import Estimator

    def queued(lanes: tuple[str, ...]) -> float:
        det = DetectorInfo("q", DetectorKind.QUEUE, "N", lanes, ("K1",))
        est = Estimator([det])
        for t in range(5):
            est.observe(DetectorReading("q", float(t), t, queue_m=70.0))
        est.observe_signals(4.0, {"K1": False})
        return est.estimate(5.0).groups["K1"].queue_veh

    single = queued(("N_app_2",))
    assert single > 0
    assert queued(("N_in_2", "N_app_2")) == pytest.approx(single)


def test_estimator_takes_the_readings_of_a_detector_that_restarted_its_counter() -> None:
    """The ingest gate admits a restart (seq from 1 again, newer ts); so must the estimator."""

    def run(restart_at: int | None) -> float:
        est = Estimator(DETS)
        for t in range(0, 1200):
            seq = t + 1 if restart_at is None or t < restart_at else t - restart_at + 1
            c = 1 if t % 4 == 0 else 0
            est.observe(DetectorReading("up", float(t), seq, c, 0.3 * c))
            est.observe(DetectorReading("sl", float(t), seq, c, 0.3 * c))
            est.observe_signals(float(t), {"v1": True, "p1": False})
        return est.estimate(1200.0).groups["v1"].flow_veh_h

    steady = run(None)
    assert steady > 0
    assert run(restart_at=900) == pytest.approx(steady)
    # Source time orders readings: an older one, or a copy, is still not news.
    assert not is_news(DetectorReading("up", 10.0, 7, 1), 7, 10.0)
    assert not is_news(DetectorReading("up", 9.0, 8, 1), 7, 10.0)
    assert is_news(DetectorReading("up", 11.0, 1, 1), 7, 10.0)
    assert is_news(DetectorReading("up", 10.0, 8, 1), 7, 10.0)
