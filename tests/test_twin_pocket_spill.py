"""Twin: a full left-turn pocket's overflow is placed as left turners, where it waits.

Probing the asymmetric-turning scenario showed it: with the north pocket (``N3_q``,
57.5 m) full, the lane feeding it (``N_in_3``) held on average 9 standing left turners
and no through vehicle, and the through lane beside the pocket one car; yet the feeder's
queue sensor ``N2_q`` (``N_in_3`` + ``N_app_3``, group K1) reported a 66 m jam, which
the twin placed at the through stop line as through traffic. ``pocket_spill_m`` takes
the parallel through lane (``N1_q``) as the through queue and gives the rest to the
pocket; the snapshot places it from the pocket's entry back, as the pocket's turners.

Also here: the terminal cost of the queues left at the horizon's end.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from _twin_helpers import module_worker

from controller.estimator import PocketSpill
from controller.messages import DetectorReading
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.twin import (
    SnapshotBuilder,
    SumoTwin,
    TwinConfig,
    TwinSnapshot,
    _Worker,
    pocket_spill_m,
)
from sim.junction import JunctionModel, load_junction
from sim.twin_config import twin_config_from_model

JUNCTION = Path(__file__).resolve().parent.parent / "scenarios" / "schlosskreuzung"
MODEL: JunctionModel = load_junction(JUNCTION)
CFG: TwinConfig = twin_config_from_model(MODEL)
RUNNING: SignalProgram = compile_plan(
    MODEL.signals, StagePlan(("P1", "P2", "P3", "P4"), (25, 10, 20, 8)), "running")
N_IN_3 = CFG.lanes["N_in_3"].length_m


def test_the_north_and_south_pockets_have_a_spill_rule_and_single_lane_arms_none() -> None:
    assert set(CFG.pocket_spills) == {
        PocketSpill("N3_q", "N2_q", "N1_q", 57.5),
        PocketSpill("S3_q", "S2_q", "S1_q", 55.75),
    }


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        # Full pocket, feeder jam far longer than the parallel through lane's.
        ({"N3_q": 57.5, "N2_q": 82.0, "N1_q": 7.5}, {"N2_q": (7.5, 74.5, ("K2",))}),
        # The same on the south arm.
        ({"S3_q": 55.0, "S2_q": 40.0, "S1_q": 0.0}, {"S2_q": (0.0, 40.0, ("K4",))}),
        # Pocket not full: the feeder's jam is its own (through traffic).
        ({"N3_q": 30.0, "N2_q": 82.0, "N1_q": 7.5}, {}),
        # Full pocket, but both through lanes queue alike: nothing spilled.
        ({"N3_q": 57.5, "N2_q": 80.0, "N1_q": 77.5}, {}),
    ],
)
def test_pocket_spill_splits_the_feeder_jam(
    queues: dict[str, float], expected: dict[str, tuple[float, float, tuple[str, ...]]]
) -> None:
    assert pocket_spill_m(CFG, queues) == expected


def snapshot_with(
    queues: dict[str, float], cfg: TwinConfig = CFG, cycle_second: int = 0
) -> TwinSnapshot:
    b = SnapshotBuilder(cfg)
    for did, q in queues.items():
        b.observe(DetectorReading(did, 10.0, 0, queue_m=q))
    return b.snapshot(10.0, None, RUNNING, cycle_second)


def test_snapshot_places_the_overflow_from_the_pocket_entry_as_its_turners() -> None:
    snap = snapshot_with({"N3_q": 57.5, "N2_q": 82.0, "N1_q": 7.5})
    spilled = [v for v in snap.vehicles if v.spill]
    # 74.5 m of jam: ten cars, all on the feeding lane, behind the pocket's entry.
    assert len(spilled) == 10
    assert {v.lane for v in spilled} == {"N_in_3"} and {v.groups for v in spilled} == {("K2",)}
    assert max(v.pos_m for v in spilled) == pytest.approx(N_IN_3 - 0.5)
    # The through lane beside the pocket keeps one car, like its neighbour.
    beside = [v for v in snap.vehicles if v.lane == "N_app_3"]
    assert len(beside) == 1 and beside[0].groups == ("K1",) and not beside[0].spill
    # Without the rule the same readings put the jam at the through stop line.
    plain = snapshot_with({"N3_q": 57.5, "N2_q": 82.0, "N1_q": 7.5},
                          replace(CFG, pocket_spills=()))
    assert not any(v.spill for v in plain.vehicles)
    assert len([v for v in plain.vehicles if v.lane == "N_app_3"]) >= 7


worker = module_worker(CFG, "twin-spill")


@pytest.mark.sumo
def test_overflow_cars_take_only_the_pocket_turn(worker: _Worker) -> None:
    snap = snapshot_with({"N3_q": 57.5, "N2_q": 82.0, "N1_q": 7.5})
    snap = replace(snap, flows_veh_h={}, route_shares={"NW": 0.1, "NS": 0.8, "NE": 0.1})
    deps = worker.departures(snap)
    spilled = {d.route for d in deps if d.lane == str(CFG.lanes["N_in_3"].index)
               and d.route.endswith("@N_in")}
    # Even with 80 % of the arm going straight on, the overflow is the left turn only.
    assert spilled == {"NE@N_in"}
    assert Counter(d.route.split("@")[0] for d in deps)["NE"] >= 10 + 7


# -- terminal cost ------------------------------------------------------------------------

#: All green to north and south through traffic; the west and east arms and all lefts wait.
SERVES_NS = compile_plan(MODEL.signals, StagePlan(("P1", "P2", "P3", "P4"), (60, 5, 12, 5)),
                         "serves-ns")
BALANCED = compile_plan(MODEL.signals, StagePlan(("P1", "P2", "P3", "P4"), (25, 15, 25, 12)),
                        "balanced")


@pytest.mark.sumo
def test_queues_left_at_the_horizon_end_add_a_convex_cost() -> None:
    short = replace(CFG, horizon_s=120, terminal_s_per_vehicle=4.0)
    snap = snapshot_with({"W1_q": 90.0, "W2_q": 45.0, "N3_q": 40.0, "S3_q": 40.0,
                          "N1_q": 20.0, "N2_q": 20.0, "S1_q": 20.0, "S2_q": 20.0}, short,
                         cycle_second=RUNNING.cycle_s - 1)  # the candidates start at once
    with SumoTwin(short, workers=1) as twin:
        starve, balanced = twin.evaluate(snap, [SERVES_NS, BALANCED])
    with SumoTwin(replace(short, terminal_s_per_vehicle=0.0), workers=1) as twin:
        starve0, balanced0 = twin.evaluate(snap, [SERVES_NS, BALANCED])
    # Switched off: no terminal part, and the horizon's own delays are unchanged.
    assert starve0.terminal_s == balanced0.terminal_s == 0.0
    assert starve.vehicle_delay_s == pytest.approx(starve0.vehicle_delay_s)
    assert starve.person_delay_s == pytest.approx(starve0.person_delay_s + starve.terminal_s)
    # Starving the west arm and the lefts leaves long queues: a larger cost-to-go.
    assert starve.terminal_s > balanced.terminal_s > 0.0
