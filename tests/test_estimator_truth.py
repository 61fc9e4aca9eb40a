"""Estimator against a known ground truth: a queue model generates the detector stream.

The generator is deliberately simple and independent of the estimator: vehicles
pass the upstream loop (Poisson or evenly spaced), drive to the stop line at
free speed, and leave with a fixed saturation headway during the effective
green of a fixed-time program.  Detector readings are 1 s aggregates of that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from controller.estimator import Estimate, Estimator, EstimatorConfig
from controller.messages import DetectorInfo, DetectorKind, DetectorReading

SPACING_M = 7.0
SECTION_M = 100.0
SPEED_MPS = 13.9


@dataclass
class Truth:
    """One simulated hour: readings per second, green per second, true queue per second."""

    readings: list[list[DetectorReading]]
    green: list[bool]
    queue: np.ndarray  # true queued vehicles (all lanes) at each second
    departures_per_green_s: float  # true saturation flow, veh/s, all lanes


def detectors(lanes: int = 1, radar: bool = True) -> list[DetectorInfo]:
    out: list[DetectorInfo] = []
    for k in range(lanes):
        lane = (f"N_in_{k}",)
        out.append(DetectorInfo(f"up{k}", DetectorKind.UPSTREAM, "N", lane, ("g",), SECTION_M))
        out.append(DetectorInfo(f"sl{k}", DetectorKind.STOP_LINE, "N", lane, ("g",), 2.0))
        if radar:
            out.append(DetectorInfo(f"q{k}", DetectorKind.QUEUE, "N", lane, ("g",), 0.0))
    return out


def simulate(
    q_veh_h: float,
    s_veh_h: float,
    *,
    seconds: int = 3600,
    cycle: int = 60,
    green: tuple[int, int] = (0, 30),
    lost: float = 2.0,
    lanes: int = 1,
    poisson: bool = True,
    seed: int = 1,
    upstream_miss: float = 0.0,
) -> Truth:
    """Per-lane vehicle-by-vehicle queue model; ``upstream_miss`` drops upstream counts."""
    rng = np.random.default_rng(seed)
    h = 3600.0 / s_veh_h
    travel = SECTION_M / SPEED_MPS
    up_counts = np.zeros((lanes, seconds + 1), dtype=int)
    sl_counts = np.zeros((lanes, seconds + 1), dtype=int)
    stopped = np.zeros((lanes, seconds + 1), dtype=bool)
    queue = np.zeros(seconds + 1)
    lane_rate = q_veh_h / 3600.0 / lanes

    def window_start(t: float) -> float:
        """Earliest allowed departure at or after t (effective green plus one headway)."""
        c0 = math.floor(t / cycle) * cycle
        for base in (c0, c0 + cycle):
            lo, hi = base + green[0] + lost + h, base + green[1]
            if t < lo:
                return lo
            if t < hi:
                return t
        raise AssertionError("unreachable")

    for lane in range(lanes):
        if poisson:
            gaps = rng.exponential(1.0 / lane_rate, size=int(seconds * lane_rate * 2) + 10)
            ups = np.cumsum(gaps)
        else:
            ups = np.arange(1, int(seconds * lane_rate * 2) + 10) / lane_rate
        ups = ups[ups < seconds - 1]
        prev = -1e9
        for u in ups:
            a = u + travel
            d = window_start(max(a, prev + h))
            front = max(a, prev)
            prev = d
            counted = rng.random() >= upstream_miss
            if counted:
                up_counts[lane, math.ceil(u)] += 1
            if d < seconds:
                sl_counts[lane, math.ceil(d)] += 1
            if d > a + 1e-9:
                lo, hi = math.ceil(a), min(math.ceil(d), seconds + 1)
                queue[lo:hi] += 1
                # Whole seconds the vehicle stood at the front of the queue, over the loop.
                stopped[lane, math.ceil(front) + 1 : min(math.floor(d), seconds) + 1] = True

    readings: list[list[DetectorReading]] = []
    greens: list[bool] = []
    for t in range(seconds + 1):
        batch = []
        for lane in range(lanes):
            c = int(up_counts[lane, t])
            batch.append(DetectorReading(f"up{lane}", float(t), t, c, min(1.0, 0.35 * c)))
            c = int(sl_counts[lane, t])
            occ = 1.0 if stopped[lane, t] else min(1.0, 0.4 * c)
            batch.append(DetectorReading(f"sl{lane}", float(t), t, c, occ, occ >= 1.0))
            batch.append(
                DetectorReading(
                    f"q{lane}", float(t), t, queue_m=float(queue[t]) / lanes * SPACING_M
                )
            )
        readings.append(batch)
        greens.append(green[0] <= t % cycle < green[1])
    return Truth(readings, greens, queue, lanes / h)


def run(
    truth: Truth,
    est: Estimator,
    *,
    faulty: frozenset[str] = frozenset(),
    skip: frozenset[str] = frozenset(),
    every: int = 0,
) -> tuple[Estimate, np.ndarray]:
    """Feed the stream; returns the last estimate and the queue estimate per second."""
    queue = np.zeros(len(truth.green))
    last: Estimate | None = None
    est.set_faulty(faulty)
    for t, batch in enumerate(truth.readings):
        for r in batch:
            if r.detector_id not in skip:
                est.observe(r)
        est.observe_signals(float(t), {"g": truth.green[t]})
        if every and t % every == 0:
            last = est.estimate(float(t), faulty)
            queue[t] = last.groups["g"].queue_veh
    last = est.estimate(float(len(truth.green) - 1), faulty)
    return last, queue


@pytest.mark.parametrize("q", [300.0, 600.0, 900.0])
def test_estimator_recovers_poisson_arrival_flow(q: float) -> None:
    truth = simulate(q, 1800.0, seconds=3600, seed=int(q))
    cfg = EstimatorConfig(flow_time_constant_s=900.0)
    last, _ = run(truth, Estimator(detectors(radar=False), config=cfg))
    # Kernel estimate of a Poisson rate: sd = sqrt(q / (2 tau)), about 6 % at 600 veh/h.
    assert last.groups["g"].flow_veh_h == pytest.approx(q, rel=0.15)


def test_estimator_flow_tracks_a_step_in_demand() -> None:
    low = simulate(300.0, 1800.0, seconds=1800, poisson=False)
    high = simulate(900.0, 1800.0, seconds=1800, poisson=False)
    est = Estimator(detectors(radar=False), config=EstimatorConfig(flow_time_constant_s=120.0))
    first, _ = run(low, est)
    # Continue the clock: shift the second half's readings by 1801 s.
    for t, batch in enumerate(high.readings):
        for r in batch:
            est.observe(DetectorReading(r.detector_id, r.ts + 1801, r.seq + 1801, r.count,
                                        r.occupancy, r.presence, None, r.queue_m))
        est.observe_signals(1801.0 + t, {"g": high.green[t]})
    second = est.estimate(1801.0 + 1800)
    assert first.groups["g"].flow_veh_h == pytest.approx(300.0, rel=0.05)
    assert second.groups["g"].flow_veh_h == pytest.approx(900.0, rel=0.05)


def test_estimator_count_model_follows_true_queue_without_radar() -> None:
    truth = simulate(600.0, 1800.0, seconds=1800, seed=3)
    _, est_q = run(truth, Estimator(detectors(radar=False)), every=1)
    warm = slice(300, None)
    err = np.abs(est_q[warm] - truth.queue[warm])
    assert err.mean() < 1.5
    assert np.corrcoef(est_q[warm], truth.queue[warm])[0, 1] > 0.8


def test_estimator_radar_corrects_a_biased_count_model() -> None:
    # The upstream loop misses 25 % of vehicles: counts alone drift low.
    truth = simulate(700.0, 1800.0, seconds=1800, seed=4, upstream_miss=0.25)
    _, with_radar = run(truth, Estimator(detectors(radar=True)), every=1)
    _, counts_only = run(truth, Estimator(detectors(radar=True)), every=1,
                         skip=frozenset({"q0"}))
    warm = slice(300, None)
    err_radar = np.abs(with_radar[warm] - truth.queue[warm]).mean()
    err_counts = np.abs(counts_only[warm] - truth.queue[warm]).mean()
    assert err_radar < 1.0
    assert err_radar < 0.5 * err_counts


@pytest.mark.parametrize("s_true", [1500.0, 2000.0])
def test_estimator_saturation_flow_converges_from_prior(s_true: float) -> None:
    truth = simulate(650.0, s_true, seconds=3600, seed=5)
    cfg = EstimatorConfig(saturation_per_lane_veh_h=1800.0)
    last, _ = run(truth, Estimator(detectors(radar=True), config=cfg))
    assert last.groups["g"].saturation_veh_h == pytest.approx(s_true, rel=0.06)


def test_estimator_two_lanes_and_degree_of_saturation() -> None:
    truth = simulate(1200.0, 1800.0, seconds=2400, lanes=2, seed=6)
    last, _ = run(truth, Estimator(detectors(lanes=2, radar=True)))
    g = last.groups["g"]
    assert g.saturation_veh_h == pytest.approx(3600.0, rel=0.06)
    assert g.green_share == pytest.approx(0.5, abs=0.03)
    assert g.degree_of_saturation == pytest.approx(1200.0 / (3600.0 * 0.5), rel=0.15)
    assert g.delay_s is not None and 5.0 < g.delay_s < 60.0


def test_estimator_scales_up_a_lane_whose_upstream_loop_is_faulty() -> None:
    truth = simulate(1200.0, 1800.0, seconds=2400, lanes=2, seed=7, poisson=False)
    last, _ = run(truth, Estimator(detectors(lanes=2, radar=False)),
                  faulty=frozenset({"up1"}))
    g = last.groups["g"]
    assert g.flow_veh_h == pytest.approx(1200.0, rel=0.05)
    assert not g.data_ok
    assert g.demand
