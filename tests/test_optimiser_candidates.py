"""Candidate plans from the optimiser on synthetic estimates (no SUMO)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from _toy_junction import toy_junction

from controller.estimator import Estimate, GroupEstimate, hcm_delay_s
from controller.optimiser import (
    Candidate,
    Demand,
    OptimiserConfig,
    analytic_delay_s,
    group_demand,
    propose,
    skippable_stages,
)
from controller.plans import SignalProgram, StagePlan, compile_plan, stage_timing
from controller.safety import validate, validate_switch
from controller.signals import JunctionSignals
from controller.webster import stage_min_greens, webster_plan

SEQ = ("P1", "P2", "P3", "P4")
#: Moderate demand on the toy junction: through movements busier than left turns.
FLOWS = {"K1": 500.0, "K2": 120.0, "K3": 400.0, "K4": 100.0}


def group(
    flow: float = 0.0,
    *,
    sat: float = 1800.0,
    queue: float = 0.0,
    demand: bool = True,
    ped_wait: float = 0.0,
    bus_eta: float | None = None,
    data_ok: bool = True,
) -> GroupEstimate:
    return GroupEstimate(
        flow_veh_h=flow, queue_veh=queue, queue_m=queue * 7.0, saturation_veh_h=sat,
        degree_of_saturation=0.0, demand=demand, ped_waiting_s=ped_wait, bus_eta_s=bus_eta,
        data_ok=data_ok,
    )


def estimate(
    j: JunctionSignals,
    flows: Mapping[str, float],
    **overrides: GroupEstimate,
) -> Estimate:
    groups = {
        g.id: group(flows.get(g.id, 0.0), sat=1800.0 if g.is_vehicular else 0.0,
                    demand=g.is_vehicular)
        for g in j.groups
    }
    groups.update(overrides)
    return Estimate(ts=0.0, groups=groups, approaches={})


def fallback_for(j: JunctionSignals, seq: tuple[str, ...] = SEQ, cycle: int = 80) -> SignalProgram:
    """A fixed-time fallback: Webster split for equal flows at a fixed cycle."""
    plan = webster_plan(j, seq, {g.id: 0.1 for g in j.groups}, min_cycle_s=cycle,
                        max_cycle_s=cycle).plan
    return compile_plan(j, plan, "fallback")


def by_label(cands: list[Candidate]) -> dict[str, Candidate]:
    return {c.label: c for c in cands}


def greens_of(c: Candidate) -> tuple[int, ...]:
    assert c.program.stage_plan is not None
    return c.program.stage_plan.greens_s


def key(p: SignalProgram) -> tuple[object, ...]:
    return (p.cycle_s, p.offset_s, tuple(sorted(p.greens.items())))


# -- optimality ---------------------------------------------------------------------


def test_delay_optimal_is_no_worse_than_webster_and_fallback() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    est = estimate(j, FLOWS)
    cands = propose(j, est, fb, fb)
    opt = cands[0]
    assert opt.label == "delay-optimal"
    demand = group_demand(j, est, fb)
    # Webster inside the same cycle window (running cycle +- 20 s, junction limits).
    ratios = {g: d.flow_veh_h / d.saturation_veh_h for g, d in demand.items()}
    web = compile_plan(j, webster_plan(j, SEQ, ratios, min_cycle_s=60, max_cycle_s=90).plan, "w")
    assert opt.analytic_delay_s <= analytic_delay_s(j, web, demand) + 1e-9
    assert opt.analytic_delay_s <= by_label(cands)["fallback"].analytic_delay_s + 1e-9
    assert opt.analytic_delay_s < analytic_delay_s(j, fb, demand)


def test_delay_optimal_is_a_local_optimum_in_whole_seconds() -> None:
    """No one-second change of a stage green (within the limits) lowers the delay."""
    j = toy_junction()
    fb = fallback_for(j)
    est = estimate(j, FLOWS)
    opt = propose(j, est, fb, fb)[0]
    demand = group_demand(j, est, fb)
    greens = list(greens_of(opt))
    mins = stage_min_greens(j, SEQ)
    tried = 0
    for a in range(4):
        for b in [*range(4), None]:
            g = list(greens)
            g[a] += 1
            if b is not None:
                if b == a:
                    continue
                g[b] -= 1
            if any(x < m for x, m in zip(g, mins, strict=True)):
                continue
            prog = compile_plan(j, StagePlan(SEQ, tuple(g)), "n")
            if not 60 <= prog.cycle_s <= 90 or validate(j, prog, previous=fb):
                continue
            tried += 1
            assert analytic_delay_s(j, prog, demand) >= opt.analytic_delay_s - 1e-6, g
    assert tried >= 6


def test_analytic_delay_is_the_hcm_formula() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    demand = {"K1": Demand(500.0, 1700.0)}
    green = sum(e - s for s, e in fb.greens["K1"])
    expected = hcm_delay_s(500.0, 1700.0, green / fb.cycle_s, fb.cycle_s)
    assert expected is not None
    assert analytic_delay_s(j, fb, demand) == pytest.approx(expected)


# -- response to demand ---------------------------------------------------------------


def test_doubling_a_flow_lengthens_its_stage() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    base = propose(j, estimate(j, FLOWS), fb, fb)[0]
    more = propose(j, estimate(j, {**FLOWS, "K3": 2 * FLOWS["K3"]}), fb, fb)[0]
    assert base.label == more.label == "delay-optimal"
    assert greens_of(more)[2] > greens_of(base)[2]
    share = greens_of(more)[2] / more.program.cycle_s
    assert share > greens_of(base)[2] / base.program.cycle_s


def test_residual_queue_and_bad_data_raise_the_demand() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    plain = group_demand(j, estimate(j, FLOWS), fb)
    queued = group_demand(j, estimate(j, FLOWS, K2=group(120.0, queue=15.0)), fb)
    assert queued["K2"].flow_veh_h > plain["K2"].flow_veh_h
    # A short queue that arrivals during red explain is not residual.
    short = group_demand(j, estimate(j, FLOWS, K2=group(120.0, queue=1.0)), fb)
    assert short["K2"].flow_veh_h == pytest.approx(plain["K2"].flow_veh_h)
    cfg = OptimiserConfig(flow_floor_veh_h=350.0)
    broken = group_demand(j, estimate(j, FLOWS, K4=group(0.0, sat=0.0, data_ok=False)), fb, cfg)
    assert broken["K4"].flow_veh_h >= 350.0
    assert broken["K4"].saturation_veh_h > 0


# -- limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.1, 1.0, 2.0, 5.0])
def test_minimum_greens_cycle_limits_and_first_stage_always_hold(scale: float) -> None:
    j = toy_junction()
    fb = fallback_for(j)
    cfg = OptimiserConfig(max_cycle_s=85)
    cands = propose(j, estimate(j, {g: f * scale for g, f in FLOWS.items()}), fb, fb, config=cfg)
    assert cands
    for c in cands:
        plan = c.program.stage_plan
        assert plan is not None
        assert plan.sequence[0] == "P1"
        assert c.program.cycle_s <= 85
        for s, g in zip(plan.sequence, plan.greens_s, strict=True):
            assert g >= stage_min_greens(j, (s,))[0]
        # Cycle second 0 is the start of the first stage's green time.
        assert stage_timing(j, plan)[0][0] == 0
        for gid in j.stage("P1").groups:
            assert c.program.is_green(gid, 0)


def test_cycle_moves_at_most_the_configured_step_per_epoch() -> None:
    j = toy_junction()
    fb = fallback_for(j, cycle=80)
    running = fallback_for(j, cycle=66)  # the shortest cycle the minimum greens allow
    assert running.cycle_s == 66
    cfg = OptimiserConfig(max_cycle_change_s=10)
    cands = propose(j, estimate(j, {g: 2 * f for g, f in FLOWS.items()}), running, fb, config=cfg)
    assert len(cands) >= 8
    for c in cands:
        if c.label != "fallback":
            assert 66 <= c.program.cycle_s <= 76, c.label
    # The heavy demand pushes the delay-optimal cycle to the top of the step.
    assert cands[0].label == "delay-optimal"
    assert cands[0].program.cycle_s == 76


def test_config_rejects_too_few_candidates() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        OptimiserConfig(n_candidates=5)


# -- stage skipping, bus, pedestrians ------------------------------------------------------


def test_a_stage_is_skippable_only_without_demand_or_request() -> None:
    j = toy_junction()
    idle = group(0.0, demand=False)
    quiet = estimate(j, FLOWS, K2=idle, K4=idle)
    assert skippable_stages(j, quiet, SEQ) == ("P2", "P4")
    assert skippable_stages(j, estimate(j, FLOWS, K2=group(0.0, demand=True), K4=idle),
                            SEQ) == ("P4",)
    assert skippable_stages(j, estimate(j, FLOWS, K2=group(0.0, demand=False, bus_eta=30.0),
                                        K4=idle), SEQ) == ("P4",)
    assert skippable_stages(j, estimate(j, FLOWS, K2=group(0.0, demand=False, data_ok=False),
                                        K4=idle), SEQ) == ("P4",)
    # A stage with a waiting pedestrian is never skipped, however quiet its vehicles.
    ped = estimate(j, FLOWS, K3=idle, F2=group(0.0, sat=0.0, demand=False, ped_wait=5.0),
                   K2=idle, K4=idle)
    assert "P3" not in skippable_stages(j, ped, SEQ)
    both = estimate(j, FLOWS, K3=idle, F2=group(0.0, sat=0.0, demand=False), K2=idle, K4=idle)
    assert "P3" in skippable_stages(j, both, SEQ)
    # The first stage anchors every switch and is never skipped.
    all_idle = estimate(j, {}, **{g.id: idle for g in j.groups})
    assert "P1" not in skippable_stages(j, all_idle, SEQ)
    # A group without any estimate counts as demand.
    partial = Estimate(0.0, {g: ge for g, ge in quiet.groups.items() if g != "K4"}, {})
    assert skippable_stages(j, partial, SEQ) == ("P2",)


def test_candidates_keep_every_stage_that_has_demand() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    for c in propose(j, estimate(j, FLOWS, K4=group(0.0, demand=False)), fb, fb):
        plan = c.program.stage_plan
        assert plan is not None
        assert {"P1", "P2", "P3"} <= set(plan.sequence)


def test_a_pending_bus_extends_its_stage() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    cands = by_label(propose(j, estimate(j, FLOWS, K3=group(400.0, bus_eta=20.0)), fb, fb))
    assert "bus-K3" in cands
    assert greens_of(cands["bus-K3"])[2] > greens_of(cands["delay-optimal"])[2]
    # A bus further away than the next cycle does not change the plan yet.
    far = by_label(propose(j, estimate(j, FLOWS, K3=group(400.0, bus_eta=400.0)), fb, fb))
    assert not any(label.startswith("bus-") for label in far)


def test_a_long_waiting_pedestrian_is_served_earlier() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    waiting = group(0.0, sat=0.0, demand=True, ped_wait=90.0)
    # The toy fallback is over capacity on K1: any shift away from P1 breaks the
    # capacity rule (tested below), so the variant is looked at without it.
    free = OptimiserConfig(capacity_x_max=None)
    cands = by_label(propose(j, estimate(j, FLOWS, F2=waiting), fb, fb, config=free))
    assert "ped-F2" in cands
    ped, opt = cands["ped-F2"].program, cands["delay-optimal"].program
    assert ped.stage_plan is not None and opt.stage_plan is not None
    start = stage_timing(j, ped.stage_plan)[2][0]
    assert start < stage_timing(j, opt.stage_plan)[2][0]
    assert fb.stage_plan is not None
    assert start < stage_timing(j, fb.stage_plan)[2][0]
    short = by_label(propose(j, estimate(j, FLOWS, F2=group(0.0, sat=0.0, ped_wait=10.0)),
                             fb, fb, config=free))
    assert not any(label.startswith("ped-") for label in short)


# -- the set as a whole --------------------------------------------------------------------


def _real_junction() -> JunctionSignals:
    from sim.junction import load_junction

    return load_junction("schlosskreuzung").signals


@pytest.mark.parametrize("where", ["toy", "schlosskreuzung"])
def test_normal_conditions_give_at_least_eight_distinct_safe_candidates(where: str) -> None:
    j = toy_junction() if where == "toy" else _real_junction()
    seq = tuple(s.id for s in j.stages)
    fb = fallback_for(j, seq, cycle=80)
    flows = {g.id: (300.0 if g.id in ("K1", "K3", "K5", "K7") else 90.0) for g in j.groups
             if g.is_vehicular}
    cands = propose(j, estimate(j, flows), fb, fb)
    assert len(cands) >= 8
    assert len({c.program.id for c in cands}) == len(cands)
    assert len({key(c.program) for c in cands}) == len(cands)
    assert "fallback" in by_label(cands)
    for c in cands:
        assert validate(j, c.program, previous=fb) == ()
        assert validate_switch(j, c.program, fb) == ()
        assert c.program.cycle_s <= j.max_cycle_s
        assert c.analytic_delay_s >= 0.0


def test_switches_between_candidates_validate_from_a_different_running_program() -> None:
    j = toy_junction()
    fb = fallback_for(j, cycle=80)
    running = propose(j, estimate(j, FLOWS), fb, fb)[0].program
    cands = propose(j, estimate(j, {**FLOWS, "K1": 900.0}), running, fb)
    assert len(cands) >= 8
    for c in cands:
        assert validate(j, c.program, previous=running) == ()
        assert validate_switch(j, c.program, fb) == ()


def test_ids_are_stable_and_carry_the_prefix() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    est = estimate(j, FLOWS)
    a = propose(j, est, fb, fb, program_prefix="sk")
    b = propose(j, est, fb, fb, program_prefix="sk")
    assert [c.program.id for c in a] == [c.program.id for c in b]
    assert all(c.program.id.startswith("sk-") for c in a if c.label != "fallback")


def test_without_a_stage_plan_only_the_fallback_is_offered() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    bare = SignalProgram("bare", fb.cycle_s, fb.offset_s, fb.greens)
    cands = propose(j, estimate(j, FLOWS), bare, bare)
    assert [c.label for c in cands] == ["fallback"]
