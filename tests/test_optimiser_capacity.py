"""The capacity rule of the candidate gate (``OptimiserConfig.capacity_x_max``).

The twin judges a plan over a few cycles.  A plan that leaves a movement short of
capacity looks cheap over that horizon while its queue grows for good; measured in
asymmetric turning and the evening peak, the plans the twin preferred gave the west
and east left turns 11 % of the time against the fixed plan's 16 %, and their
delay doubled.  No candidate may plan a group's arrival flow above ``capacity_x_max``
or above ``capacity_slack`` times the fallback's worst group, whichever is higher.
"""

from __future__ import annotations

import math

import pytest
from _toy_junction import toy_junction
from test_optimiser_candidates import SEQ, estimate, fallback_for, group

from controller.optimiser import (
    Demand,
    OptimiserConfig,
    capacity_check,
    degrees_of_saturation,
    group_demand,
    over_capacity,
    propose,
)
from controller.plans import StagePlan, compile_plan, stage_green_times
from controller.safety import validate

#: The fallback (equal split at 80 s) carries the west left turn K4 at x = 1.01.
FLOWS = {"K1": 150.0, "K2": 40.0, "K3": 120.0, "K4": 250.0}


def test_degree_of_saturation_is_arrivals_over_green_capacity() -> None:
    j = toy_junction()
    program = compile_plan(j, StagePlan(SEQ, (30, 10, 20, 8)), "p")
    greens = stage_green_times(program)
    demand = {
        "K1": Demand(900.0, 1800.0, 450.0),   # residual queue on top: x uses arrivals only
        "K2": Demand(100.0, 1600.0),
        "K3": Demand(0.0, 1800.0),
    }
    x = degrees_of_saturation(program, demand)
    assert x["K1"] == pytest.approx(450.0 / (1800.0 * greens["K1"] / program.cycle_s))
    assert x["K2"] == pytest.approx(100.0 / (1600.0 * greens["K2"] / program.cycle_s))
    assert x["K3"] == 0.0
    unserved = {"K9": Demand(10.0, 1800.0)}
    assert degrees_of_saturation(program, unserved) == {"K9": math.inf}


def test_a_plan_that_starves_a_movement_is_over_capacity() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    demand = group_demand(j, estimate(j, FLOWS), fb)
    worst = max(degrees_of_saturation(fb, demand).values())
    assert worst == pytest.approx(1.01, abs=0.01)
    starving = compile_plan(j, StagePlan(SEQ, (30, 10, 30, 5)), "starve")
    assert over_capacity(starving, fb, demand, 0.95) == ("K4",)
    # With slack: up to 1.25 x the fallback's worst (1.01) is allowed, 3.08 is not.
    assert over_capacity(starving, fb, demand, 0.95, 1.25) == ("K4",)
    assert over_capacity(starving, fb, demand, 0.95, 3.1) == ()
    # The fallback itself is the yardstick, never over capacity.
    assert over_capacity(fb, fb, demand, 0.95) == ()
    # A group without trustworthy data has a floor flow, not measured arrivals: the rule
    # does not judge it (the bicycle groups of the Schlosskreuzung have no detectors).
    blind = group_demand(j, estimate(j, FLOWS, K4=group(250.0, data_ok=False)), fb)
    assert blind["K4"].arrivals == 0.0 and blind["K4"].flow_veh_h >= 250.0
    assert over_capacity(starving, fb, blind, 0.95) == ()
    # Where demand exceeds the fallback's capacity as well, a plan may load a group up to
    # the fallback's worst degree of saturation: moving green to the bottleneck is allowed.
    heavy = group_demand(j, estimate(j, {"K1": 500.0, "K2": 120.0, "K3": 400.0, "K4": 100.0}),
                         fb)
    assert max(degrees_of_saturation(fb, heavy).values()) > 2.0
    balanced = compile_plan(j, StagePlan(SEQ, (27, 7, 22, 6)), "balanced")
    assert max(degrees_of_saturation(balanced, heavy).values()) > 0.95
    assert over_capacity(balanced, fb, heavy, 0.95) == ()


def test_no_candidate_breaks_the_capacity_rule_and_the_set_stays_full() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    est = estimate(j, FLOWS)
    demand = group_demand(j, est, fb)
    slack = OptimiserConfig().capacity_slack
    limit = max(0.95, slack * max(degrees_of_saturation(fb, demand).values()))

    free = propose(j, est, fb, fb, config=OptimiserConfig(capacity_x_max=None))
    ruled = propose(j, est, fb, fb)
    # Without the rule, the short-cycle variant overloads the left turn (x 1.83).
    assert any(max(degrees_of_saturation(c.program, demand).values()) > limit for c in free)
    assert all(over_capacity(c.program, fb, demand, 0.95, slack) == () for c in ruled)
    assert len(ruled) == OptimiserConfig().n_candidates
    assert [c.label for c in ruled][:2] == ["delay-optimal", "fallback"]


def test_an_over_capacity_variant_is_repaired_not_just_dropped() -> None:
    # Running a plan that starves the left turn K4 (x = 2.6): its rescaled variant breaks
    # the rule; the gate moves green to P4 from the other stages until K4 fits.
    j = toy_junction()
    fb = fallback_for(j)
    est = estimate(j, FLOWS)
    demand = group_demand(j, est, fb)
    running = compile_plan(j, StagePlan(SEQ, (22, 8, 22, 5)), "running")
    assert degrees_of_saturation(running, demand)["K4"] > 2.5
    cfg = OptimiserConfig(capacity_slack=1.0)
    labels = {c.label: c.program for c in propose(j, est, running, fb, config=cfg)}
    assert "running-rescaled" not in labels
    repaired = labels["running-rescaled+capacity"]
    free = {c.label: c.program
            for c in propose(j, est, running, fb, config=OptimiserConfig(capacity_x_max=None))}
    original = free["running-rescaled"]
    assert repaired.cycle_s == original.cycle_s
    assert repaired.stage_plan is not None and original.stage_plan is not None
    assert repaired.stage_plan.greens_s[3] > original.stage_plan.greens_s[3]
    assert over_capacity(original, fb, demand, 0.95) == ("K4",)
    assert over_capacity(repaired, fb, demand, 0.95) == ()
    assert degrees_of_saturation(repaired, demand)["K4"] == pytest.approx(0.96, abs=0.01)
    assert validate(j, repaired, previous=running) == ()


def test_a_running_plan_over_capacity_is_retired_the_fallback_never() -> None:
    j = toy_junction()
    fb = fallback_for(j)
    est = estimate(j, FLOWS)
    starving = compile_plan(j, StagePlan(SEQ, (30, 10, 30, 5)), "starve")
    reason = capacity_check(j, est, starving, fb)
    assert reason is not None and "K4 x = 3.08" in reason
    assert capacity_check(j, est, fb, fb) is None
    assert capacity_check(j, est, starving, fb, OptimiserConfig(capacity_x_max=None)) is None
    fine = propose(j, est, fb, fb)[0].program
    assert capacity_check(j, est, fine, fb) is None


def test_capacity_rule_config_is_checked() -> None:
    with pytest.raises(ValueError, match="capacity_x_max"):
        OptimiserConfig(capacity_x_max=0.0)
    with pytest.raises(ValueError, match="capacity_slack"):
        OptimiserConfig(capacity_slack=0.9)
    assert OptimiserConfig(capacity_x_max=None).capacity_x_max is None


def test_a_set_the_capacity_rule_thins_out_is_filled_with_the_fallback_split() -> None:
    # Demand above capacity and a running plan far from the optimum: the rule repairs
    # several variants onto the same plans, so the set falls short of n_candidates and
    # the fallback's split at another cycle fills it, last, within the rule.
    # (bench/decision.py, morning peak: the fewest candidates of a decision 5 -> 8.)
    j = toy_junction()
    fb = fallback_for(j)
    heavy = estimate(j, {"K1": 300.0, "K2": 40.0, "K3": 250.0, "K4": 260.0})
    demand = group_demand(j, heavy, fb)
    running = compile_plan(j, StagePlan(SEQ, (14, 6, 14, 6)), "running")
    cands = propose(j, heavy, running, fb)
    labels = [c.label for c in cands]
    fill = [lab for lab in labels if lab.startswith("fallback-")]
    assert len(cands) == OptimiserConfig().n_candidates
    assert fill and labels[-len(fill):] == fill, labels
    slack = OptimiserConfig().capacity_slack
    for c in cands:
        assert over_capacity(c.program, fb, demand, 0.95, slack) == ()
        assert validate(j, c.program, previous=running) == ()
    # A set full without them has none.
    full = [c.label for c in propose(j, estimate(j, FLOWS), fb, fb)]
    assert len(full) == OptimiserConfig().n_candidates
    assert not [lab for lab in full if lab.startswith("fallback-")], full
