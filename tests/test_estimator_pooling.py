"""Estimator: an approach's upstream counts split over its groups by stop-line departures.

One approach "N" with two upstream loops: loop A on a lane that serves only the through
group "T", loop B on a lane that serves "T" and the left group "L" (the lane that feeds
the left-turn pocket).  Drivers change lanes between the loops and the pockets, so the
turn shares are not the lane shares: 600 veh/h pass loop A and 300 veh/h loop B, but
500 veh/h leave over T's stop-line loop and 400 veh/h over L's.  Split by departures the
900 veh/h are T 500 / L 400; split by lane (each loop's count shared 1/k over its own
groups) they are T 600 + 150 = 750 / L 150.

Both groups are green together for the second half of every 60 s cycle (the first 30 s of
the stream are red, so nothing has left yet), discharging at twice their mean rate.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import pytest

from controller.estimator import Estimate, Estimator, EstimatorConfig
from controller.messages import DetectorInfo, DetectorKind, DetectorReading

CYCLE = 60
GREEN_FROM = 30  # green in cycle seconds 30..59: the stream starts with 30 s of red

UP_A = 600.0
UP_B = 300.0
DEP_T = 500.0
DEP_L = 400.0

DETS = [
    DetectorInfo("upA", DetectorKind.UPSTREAM, "N", ("N_in_0",), ("T",), 100.0),
    DetectorInfo("upB", DetectorKind.UPSTREAM, "N", ("N_in_1",), ("T", "L"), 100.0),
    DetectorInfo("T_sl", DetectorKind.STOP_LINE, "N", ("N_app_1",), ("T",), 2.0),
    DetectorInfo("L_sl", DetectorKind.STOP_LINE, "N", ("N_app_2",), ("L",), 2.0),
]

#: Counts per second at these mean rates (veh/h); departures only in green, at twice the
#: mean rate, so the stop-line totals equal the upstream totals (900 veh/h).
RATES: dict[str, tuple[float, bool]] = {
    "upA": (UP_A, False),
    "upB": (UP_B, False),
    "T_sl": (DEP_T * CYCLE / (CYCLE - GREEN_FROM), True),
    "L_sl": (DEP_L * CYCLE / (CYCLE - GREEN_FROM), True),
}


NO_L_SL = frozenset({"L_sl"})
NO_UP_B = frozenset({"upB"})


def green(t: int) -> bool:
    return t % CYCLE >= GREEN_FROM


@dataclass
class Stream:
    """Deterministic per-second counts (fractional accumulators), readings every second."""

    silent: Collection[str] = ()
    acc: dict[str, float] = field(default_factory=dict)
    seq: int = 0
    t: int = 0

    def feed(self, ests: list[Estimator], until: int) -> None:
        while self.t < until:
            t = self.t
            self.seq += 1
            readings = []
            for did, (veh_h, in_green) in RATES.items():
                rate = veh_h / 3600.0 if (green(t) or not in_green) else 0.0
                a = self.acc.get(did, 0.0) + rate
                count = int(a)
                self.acc[did] = a - count
                if did not in self.silent:
                    readings.append(DetectorReading(did, float(t), self.seq, count, 0.2 * count))
            for est in ests:
                for r in readings:
                    est.observe(r)
                est.observe_signals(float(t), {"T": green(t), "L": green(t)})
            self.t += 1


def flows(e: Estimate) -> tuple[float, float]:
    return e.groups["T"].flow_veh_h, e.groups["L"].flow_veh_h


def run(config: EstimatorConfig, until: int = 1800, silent: Collection[str] = ()) -> Estimator:
    est = Estimator(DETS, config=config)
    Stream(silent=silent).feed([est], until)
    return est


def test_pooled_split_follows_the_departures_not_the_lanes() -> None:
    pooled = run(EstimatorConfig())
    lanes = run(EstimatorConfig(pool_upstream_by_departures=False))
    t, left = flows(pooled.estimate(1800.0))
    assert t == pytest.approx(DEP_T, rel=0.1)
    assert left == pytest.approx(DEP_L, rel=0.1)
    # The whole approach's upstream count is kept, only redistributed.
    assert t + left == pytest.approx(UP_A + UP_B, rel=0.05)
    # The old per-lane split: loop A to T, loop B half to T and half to L.
    t0, left0 = flows(lanes.estimate(1800.0))
    assert t0 == pytest.approx(UP_A + UP_B / 2, rel=0.05)
    assert left0 == pytest.approx(UP_B / 2, rel=0.05)
    # ...which is far from the departure split: the two tests above tell them apart.
    assert left > 2.0 * left0
    assert t < 0.8 * t0


def test_faulty_stop_line_loop_of_a_served_group_falls_back_to_the_lane_split() -> None:
    pooled = run(EstimatorConfig())
    lanes = run(EstimatorConfig(pool_upstream_by_departures=False))
    t, left = flows(pooled.estimate(1800.0, faulty=NO_L_SL))
    t0, left0 = flows(lanes.estimate(1800.0, faulty=NO_L_SL))
    assert (t, left) == pytest.approx((t0, left0), rel=1e-9)
    assert t == pytest.approx(UP_A + UP_B / 2, rel=0.05)
    assert left == pytest.approx(UP_B / 2, rel=0.05)
    # A fault in the middle of the stream: the lane split while it lasts, the pooled
    # split again some minutes after the loop is back (its rate restarts from zero).
    est = Estimator(DETS, config=EstimatorConfig())
    s = Stream()
    s.feed([est], 1800)
    assert flows(est.estimate(1800.0))[1] == pytest.approx(DEP_L, rel=0.1)
    s.feed([est], 2100)
    assert flows(est.estimate(2100.0, faulty=NO_L_SL))[1] == pytest.approx(UP_B / 2, rel=0.05)
    s.feed([est], 2400)
    assert flows(est.estimate(2400.0, faulty=NO_L_SL))[1] == pytest.approx(UP_B / 2, rel=0.05)
    est.set_faulty(frozenset())
    # Right after the recovery the loop has no history: the lane split again, never a
    # zero share for its group.
    for until in range(2410, 2560, 10):
        s.feed([est], until)
        assert flows(est.estimate(float(until)))[1] >= 0.9 * UP_B / 2, until
    s.feed([est], 3000)
    assert flows(est.estimate(3000.0))[1] == pytest.approx(DEP_L, rel=0.1)


def test_faulty_upstream_loop_falls_back_to_the_lane_split() -> None:
    pooled = run(EstimatorConfig())
    t, left = flows(pooled.estimate(1800.0, faulty=NO_UP_B))
    # Lane split with loop B out: T scales loop A up to its 1.5 lanes' weight, L has no
    # upstream loop left and takes its stop-line departures.
    assert t == pytest.approx(UP_A * 1.5, rel=0.05)
    assert left == pytest.approx(DEP_L, rel=0.15)
    lanes = run(EstimatorConfig(pool_upstream_by_departures=False))
    assert (t, left) == pytest.approx(flows(lanes.estimate(1800.0, faulty=NO_UP_B)), rel=1e-9)


def test_upstream_loop_that_never_reported_falls_back_to_the_lane_split() -> None:
    pooled = run(EstimatorConfig(), silent={"upB"})
    lanes = run(EstimatorConfig(pool_upstream_by_departures=False), silent={"upB"})
    t, left = flows(pooled.estimate(1800.0))
    assert (t, left) == pytest.approx(flows(lanes.estimate(1800.0)), rel=1e-9)
    # Loop A alone, scaled up to T's lanes; the pooled split would have given T 600 * 5/9.
    assert t == pytest.approx(UP_A * 1.5, rel=0.05)


def test_before_any_departure_the_lane_split_is_used() -> None:
    pooled = Estimator(DETS, config=EstimatorConfig())
    lanes = Estimator(DETS, config=EstimatorConfig(pool_upstream_by_departures=False))
    s = Stream()
    s.feed([pooled, lanes], GREEN_FROM)  # red so far: the stop-line loops count zeros
    early = flows(pooled.estimate(GREEN_FROM - 1.0))
    early0 = flows(lanes.estimate(GREEN_FROM - 1.0))
    assert early == pytest.approx(early0, rel=1e-9)
    assert early[0] > 3.0 * early[1]  # the lane split: T 750 against L 150, roughly
    s.feed([pooled, lanes], 600)
    late, late0 = flows(pooled.estimate(600.0)), flows(lanes.estimate(600.0))
    assert late[1] > 2.0 * late0[1]  # departures counted: the pooled split took over


@pytest.mark.parametrize(("min_veh", "pooled"), [(40.0, True), (120.0, False)])
def test_too_few_departures_keep_the_lane_split(min_veh: float, pooled: bool) -> None:
    # 900 veh/h of departures are 75 kernel-weighted vehicles at the default 300 s
    # smoothing: below the threshold the split stays with the lanes.
    est = run(EstimatorConfig(pool_min_departures_veh=min_veh))
    t, left = flows(est.estimate(1800.0))
    if pooled:
        assert (t, left) == pytest.approx((DEP_T, DEP_L), rel=0.1)
    else:
        assert (t, left) == pytest.approx((UP_A + UP_B / 2, UP_B / 2), rel=0.05)


def test_an_approach_whose_loops_serve_one_group_is_not_pooled() -> None:
    # Loop B serves only T here; L has its stop-line loop but no upstream loop.  The pool
    # is the groups the upstream loops serve (T alone), not every group of the approach
    # with a stop-line loop: T keeps both loops (900 veh/h), not 5/9 of them, and L is
    # measured at its stop line.
    dets = [DETS[0], DetectorInfo("upB", DetectorKind.UPSTREAM, "N", ("N_in_1",), ("T",),
                                  100.0), *DETS[2:]]
    est = Estimator(dets, config=EstimatorConfig())
    Stream().feed([est], 1800)
    t, left = flows(est.estimate(1800.0))
    assert t == pytest.approx(UP_A + UP_B, rel=0.05)
    assert left == pytest.approx(DEP_L, rel=0.15)
