"""Pedestrians block right turners in the twin: yields from geometry, holds, rates (no SUMO)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from controller.messages import DetectorReading, HardwareState
from controller.plans import SignalProgram, StagePlan, compile_plan, group_states
from controller.signals import SignalState
from controller.twin import SnapshotBuilder, TwinConfig, yield_holds
from sim.junction import JunctionModel, load_junction
from sim.twin_config import twin_config_from_model, yields_from_model

MODEL: JunctionModel = load_junction("schlosskreuzung")
CFG: TwinConfig = twin_config_from_model(MODEL)
SEQ = ("P1", "P2", "P3", "P4")
GREEN = SignalState.GREEN.value


def program(greens: tuple[int, ...], pid: str = "p") -> SignalProgram:
    return compile_plan(MODEL.signals, StagePlan(SEQ, greens), pid)


def test_yields_are_the_right_turners_crossing_the_parallel_crossing() -> None:
    ys = {(y.vehicle_group, y.pedestrian_group): y for y in yields_from_model(MODEL)}
    # Each through+right group yields to the crossing of the arm its right turners enter.
    assert set(ys) == {("K1", "F3"), ("K3", "F4"), ("K5", "F2"), ("K7", "F1")}
    for (veh, _ped), y in ys.items():
        for i in y.links:
            assert MODEL.links[i].direction == "r"
            assert i in next(g for g in MODEL.signals.groups if g.id == veh).links
    # The clearance follows the crossing's length: N/S crossings are longer than W and E.
    assert ys[("K5", "F2")].clear_s > ys[("K1", "F3")].clear_s > ys[("K3", "F4")].clear_s
    assert CFG.yields and twin_config_from_model(MODEL, pedestrian_yield=False).yields == ()


def test_holds_grow_with_pedestrian_demand_and_only_touch_yielding_links() -> None:
    prog = program((30, 10, 30, 10))
    states = group_states(MODEL.signals, prog)
    yielding = {i for y in CFG.yields for i in y.links}
    held_by_rate = []
    for rate in (0.0, 20.0, 80.0, 400.0):
        holds = yield_holds(MODEL.signals, prog, CFG.yields, dict.fromkeys(("F1", "F2", "F3", "F4"),
                                                                           rate))
        held_by_rate.append(sum(len(v) for v in holds.values()))
        for sec, links in holds.items():
            assert links <= yielding
            for y in CFG.yields:
                if set(y.links) & links:
                    # Held only while both the turners and their crossing's walkers may be out.
                    assert states[y.vehicle_group][sec] == GREEN
    assert held_by_rate[0] == 0
    assert held_by_rate == sorted(held_by_rate) and held_by_rate[1] < held_by_rate[3]


def test_hold_matches_the_expected_blocked_seconds() -> None:
    prog = program((30, 10, 30, 10))
    states = group_states(MODEL.signals, prog)
    y = next(y for y in CFG.yields if y.vehicle_group == "K5")
    rate = 80.0
    holds = yield_holds(MODEL.signals, prog, (y,), {y.pedestrian_group: rate})
    ped = states[y.pedestrian_group]
    veh = states[y.vehicle_group]
    red = ped.count("r") + ped.count("u") + ped.count("y")
    ped_green = ped.count(GREEN)
    start = next(s for s in range(prog.cycle_s) if ped[s] == GREEN and ped[s - 1] != GREEN)
    span = [(start + k) % prog.cycle_s for k in range(ped_green + math.ceil(y.clear_s))]
    g = sum(1 for c in span if veh[c] == GREEN)
    q = rate / 3600
    first = min(g, (1 - math.exp(-q * red)) * y.clear_s)
    expected = round(first + (g - first) * (1 - math.exp(-q * y.clear_s)))
    assert len(holds) == expected
    # Held from the start of the crossing's green (where the waiting walkers are).
    first_veh_green = next(c for c in span if veh[c] == GREEN)
    assert first_veh_green in holds


def _state(ts: float, green: set[str]) -> HardwareState:
    chars = "".join("G" if g in green else "r" for g in MODEL.signals.group_ids)
    return HardwareState(ts=ts, program_id="p", fallback=False, cycle_second=0,
                         signal_states=chars)


def _press(b: SnapshotBuilder, ts: float, seq: int) -> None:
    b.observe(DetectorReading("S_pb", ts, seq, count=1, presence=True, pressed=True))


@pytest.mark.parametrize("rate_h", [20.0, 200.0])
def test_pedestrian_rate_is_learned_from_first_presses_per_red(rate_h: float) -> None:
    # Reds of 60 s, greens of 20 s; the first press of each red comes after an
    # exponential wait with the true rate (deterministic quantiles), none if it exceeds red.
    cfg = replace(CFG, pedestrian_prior_s=60.0, pedestrian_time_constant_s=1e9)
    b = SnapshotBuilder(cfg)
    q = rate_h / 3600
    t = 0.0
    seq = 0
    n = 200
    for k in range(n):
        b.observe_state(_state(t, set()))
        wait = -math.log(1 - (k + 0.5) / n) / q
        if wait < 60:
            seq += 1
            _press(b, t + wait, seq)
        b.observe_state(_state(t + 60, {"F2"}))
        t += 80
    est = b.pedestrian_rates()["F2"]
    assert est == pytest.approx(rate_h, rel=0.1)
    # The crossings without presses stay near their prior (no press seen while red: lower).
    assert b.pedestrian_rates()["F1"] == pytest.approx(CFG.pedestrian_flow_per_h["F1"])
    assert b.snapshot(t, None, program((30, 10, 30, 10)), 0).pedestrian_flow_per_h["F2"] == est


def test_pedestrian_rate_starts_at_the_prior() -> None:
    b = SnapshotBuilder(CFG)
    assert b.pedestrian_rates() == CFG.pedestrian_flow_per_h
