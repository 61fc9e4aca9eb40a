"""Short walks: a pedestrian green cut to its minimum so the turners it blocks get the rest."""

from __future__ import annotations

from dataclasses import replace

from controller.estimator import Estimate, GroupEstimate
from controller.optimiser import propose, short_walk_groups
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.safety import validate
from controller.signals import JunctionSignals
from sim.junction import load_junction

J: JunctionSignals = load_junction("schlosskreuzung").signals
SEQ = ("P1", "P2", "P3", "P4")
LONG_P3 = StagePlan(SEQ, (30, 10, 35, 10))


def green_s(program: SignalProgram, group: str) -> int:
    return sum(end - start for start, end in program.greens[group])


def test_a_short_walk_ends_at_the_minimum_and_changes_nothing_else() -> None:
    full = compile_plan(J, LONG_P3, "full")
    short = compile_plan(J, replace(LONG_P3, short_walks=frozenset({"F1", "F2"})), "short")
    assert short.cycle_s == full.cycle_s
    for g in ("F1", "F2"):
        assert green_s(full, g) > J.group(g).min_green_s + 5
        # Starts where it did, runs its minimum (plus the second it may start in the
        # transition before the stage, like the full walk).
        assert short.greens[g][0][0] == full.greens[g][0][0]
        assert J.group(g).min_green_s <= green_s(short, g) <= J.group(g).min_green_s + 1
    for g in J.group_ids:
        if g not in ("F1", "F2"):
            assert short.greens[g] == full.greens[g], g
    assert validate(J, short) == ()
    assert validate(J, short, previous=full) == ()
    assert validate(J, full, previous=short) == ()


def test_a_walk_already_at_its_minimum_is_not_offered_for_cutting() -> None:
    # P3 of 26 s: the early end (17 s) leaves the crossing its minimum (9 s) already.
    tight = StagePlan(SEQ, (21, 10, 26, 10))
    assert "P3" not in short_walk_groups(J, tight)
    assert short_walk_groups(J, LONG_P3) == {
        "P1": frozenset({"F3", "F4"}), "P3": frozenset({"F1", "F2"}),
    }


def _estimate() -> Estimate:
    # Busy west and east arms: the delay-optimal plan gives P3 more than the crossings'
    # minimum plus their early end, so its walks can be cut.
    flows = {"K1": 600.0, "K2": 150.0, "K3": 550.0, "K4": 150.0, "K5": 600.0, "K6": 120.0,
             "K7": 500.0, "K8": 80.0}

    def group(g: str) -> GroupEstimate:
        vehicle = g in flows
        return GroupEstimate(
            flow_veh_h=flows.get(g, 0.0), queue_veh=0.0, queue_m=0.0,
            saturation_veh_h=1800.0 if vehicle else 0.0, degree_of_saturation=0.0,
            demand=True, ped_waiting_s=0.0, bus_eta_s=None, data_ok=vehicle,
        )

    return Estimate(ts=0.0, groups={g: group(g) for g in J.group_ids}, approaches={})


def test_the_optimiser_offers_the_delay_optimal_plan_with_short_walks() -> None:
    fallback = compile_plan(J, LONG_P3, "fallback")
    cands = {c.label: c for c in propose(J, _estimate(), fallback, fallback)}
    best = cands["delay-optimal"].program
    assert best.stage_plan is not None and not best.stage_plan.short_walks
    short = [c for label, c in cands.items() if label.startswith("delay-optimal+short-walk")]
    assert short, sorted(cands)
    for c in short:
        plan = c.program.stage_plan
        assert plan is not None and plan.short_walks
        assert (plan.sequence, plan.greens_s) == (best.stage_plan.sequence,
                                                  best.stage_plan.greens_s)
        assert c.program.id != best.id
        assert any(green_s(c.program, g) < green_s(best, g) for g in plan.short_walks)
        assert validate(J, c.program, previous=fallback) == ()


def test_short_walks_of_the_running_plan_carry_over_and_the_way_back_is_offered() -> None:
    fallback = compile_plan(J, LONG_P3, "fallback")
    running = compile_plan(J, replace(LONG_P3, short_walks=frozenset({"F1", "F2"})), "running")
    cands = propose(J, _estimate(), running, fallback)
    labels = {c.label: c for c in cands}
    best = labels["delay-optimal"].program.stage_plan
    assert best is not None and best.short_walks == {"F1", "F2"}
    # The way back: the same split with full walks ("delay-optimal+full-walks", or an
    # earlier candidate with the same program, e.g. Webster's).
    assert any(
        c.program.stage_plan is not None and not c.program.stage_plan.short_walks
        and (c.program.stage_plan.sequence, c.program.stage_plan.greens_s)
        == (best.sequence, best.greens_s)
        for c in cands
    ), sorted(labels)
    # Variants built this epoch inherit them; the fallback and Webster keep full walks.
    derived = [c for c in cands if c.label.startswith(("cycle-", "running-", "persist-"))]
    assert derived
    for c in derived:
        assert c.program.stage_plan is not None
        assert c.program.stage_plan.short_walks == {"F1", "F2"}, c.label
    assert labels["fallback"].program.stage_plan is None or not (
        labels["fallback"].program.stage_plan.short_walks)
