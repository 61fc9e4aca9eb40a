"""Twin: at low demand every program is scored on several draws of the horizon's arrivals.

With a dozen vehicles in a 300 s horizon, one draw of their arrival times decides which
plan looks best (night, measured: adaptive 38.2 s against the fixed plan's 36.2 s).  The
twin scores every program on ``replications`` independent draws (the same draws for every
program: common random numbers) and pools the delays; at peak demand one draw is used,
exactly the draw of a twin without replications.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from _twin_helpers import module_worker

from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.twin import CAR, TwinConfig, TwinSnapshot, TwinVehicle, _Worker, replications
from sim.junction import JunctionModel, load_junction
from sim.twin_config import twin_config_from_model

JUNCTION = Path(__file__).resolve().parent.parent / "scenarios" / "schlosskreuzung"
MODEL: JunctionModel = load_junction(JUNCTION)
CFG: TwinConfig = twin_config_from_model(MODEL, horizon_s=300)
RUNNING: SignalProgram = compile_plan(
    MODEL.signals, StagePlan(("P1", "P2", "P3", "P4"), (25, 10, 20, 8)), "running")
LONG_MAIN: SignalProgram = compile_plan(
    MODEL.signals, StagePlan(("P1", "P2", "P3", "P4"), (40, 8, 12, 8)), "long-main")
SHARES = {"NW": 0.1, "NS": 0.7, "NE": 0.2, "SE": 0.1, "SN": 0.7, "SW": 0.2,
          "WS": 0.4, "WE": 0.3, "WN": 0.3, "EN": 0.4, "EW": 0.3, "ES": 0.3}


def snapshot(flow_per_group: float, vehicles: tuple[TwinVehicle, ...] = ()) -> TwinSnapshot:
    flows = dict.fromkeys(CFG.vehicle_groups, flow_per_group)
    return TwinSnapshot(0.0, RUNNING, 0, vehicles, flows, SHARES, {}, {})


# -- how many draws -------------------------------------------------------------------------


def test_draws_grow_as_demand_falls_and_stay_within_the_bounds() -> None:
    groups = len(CFG.vehicle_groups)
    assert CFG.max_replications == 4 and CFG.replication_vehicles == 150
    # Peak: 2,400 veh/h bring 200 vehicles in 300 s; one draw holds enough.
    assert replications(CFG, snapshot(2400.0 / groups)) == 1
    # 900 veh/h: 75 vehicles per draw, two draws make 150.
    assert replications(CFG, snapshot(900.0 / groups)) == 2
    # Night: 240 veh/h, 20 vehicles per draw; capped at four draws.
    assert replications(CFG, snapshot(240.0 / groups)) == 4
    # Standing vehicles count as well as arrivals (60 standing + 75 arriving -> 2).
    standing = tuple(TwinVehicle(CAR, "N_app_3", 100.0 - i, False, ("K1",)) for i in range(60))
    assert replications(CFG, snapshot(900.0 / groups, standing)) == 2
    assert replications(CFG, snapshot(0.0)) == 4
    assert replications(replace(CFG, max_replications=1), snapshot(0.0)) == 1
    with pytest.raises(ValueError, match="max_replications"):
        replace(CFG, max_replications=0)


# -- scoring on the draws -------------------------------------------------------------------


worker = module_worker(CFG, "twin-draws")


@pytest.mark.sumo
def test_night_programs_are_scored_on_pooled_draws(worker: _Worker) -> None:
    snap = snapshot(240.0 / len(CFG.vehicle_groups))
    draws = worker.build(snap)
    assert len(draws) == 4
    # Independent draws: different arrivals in each.
    arrivals = [tuple(round(d.depart, 2) for d in draw.later) for draw in draws]
    assert len(set(arrivals)) == 4

    pooled = worker.score(snap, LONG_MAIN)
    assert pooled.draws == 4 and pooled.sim_s == 4 * CFG.horizon_s
    singles = []
    for draw in draws:
        # Score the program on this draw alone (the worker's cache holds just this draw).
        worker.built, worker.draws = snap, [draw]
        singles.append(worker.score(snap, LONG_MAIN))
    worker.built = None
    assert len({round(s.vehicle_delay_s, 6) for s in singles}) > 1
    # Pooled vehicle delay: total time loss over total vehicles, a weighted mean of the draws.
    total = sum(s.vehicle_delay_s * s.vehicles for s in singles)
    n = sum(s.vehicles for s in singles)
    assert pooled.vehicle_delay_s == pytest.approx(total / n, rel=1e-6)
    assert min(s.person_delay_s for s in singles) <= pooled.person_delay_s
    assert pooled.person_delay_s <= max(s.person_delay_s for s in singles)


@pytest.mark.sumo
def test_peak_programs_keep_the_single_draw_of_a_twin_without_replications(
    worker: _Worker,
) -> None:
    snap = snapshot(2400.0 / len(CFG.vehicle_groups))
    scored = worker.score(snap, LONG_MAIN)
    assert scored.draws == 1
    # The first draw is the draw a twin with one replication makes.
    worker.config = replace(CFG, max_replications=1)
    worker.built = None
    try:
        single = worker.score(snap, LONG_MAIN)
    finally:
        worker.config = CFG
        worker.built = None
    assert replace(single, wall_s=0.0) == replace(scored, wall_s=0.0)
