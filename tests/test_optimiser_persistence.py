"""Optimiser: the running-cycle candidate that moves green to a persistent queue (no SUMO)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
from _toy_junction import toy_junction
from test_optimiser_candidates import FLOWS, SEQ, by_label, estimate, fallback_for, group

from controller.estimator import GroupEstimate
from controller.optimiser import OptimiserConfig, persistent_groups, propose
from controller.safety import validate, validate_switch
from controller.webster import stage_min_greens


def carrying(
    flow: float, carry: tuple[float, ...], *, spill: bool = False, red_end: float = 5.0
) -> GroupEstimate:
    return dataclasses.replace(
        group(flow, queue=carry[-1] if carry else 0.0),
        red_end_queue_veh=tuple(c + red_end for c in carry), carryover_veh=carry,
        spillback=spill,
    )


def persist_candidates(labels: Mapping[str, object]) -> list[str]:
    return [lab for lab in labels if lab.startswith("persist-")]


def test_persistence_needs_carry_over_in_every_recent_cycle() -> None:
    j = toy_junction()
    cfg = OptimiserConfig(persist_cycles=2, persist_min_veh=2.0)
    est = estimate(j, FLOWS, K3=carrying(400.0, (0.0, 3.0, 5.0)),
                   K1=carrying(500.0, (4.0, 0.5)), K4=carrying(100.0, (3.0,)))
    assert persistent_groups(est, cfg) == {"K3": pytest.approx(4.0)}
    spill = estimate(j, FLOWS, K4=carrying(100.0, (0.0,), spill=True, red_end=1.0))
    assert set(persistent_groups(spill, cfg)) == set()  # spillback, but no queue at red end
    spill = estimate(j, FLOWS, K4=carrying(100.0, (1.0, 3.0), spill=True))
    assert set(persistent_groups(spill, cfg)) == {"K4"}


@pytest.mark.parametrize("carry", [(4.0, 6.0), (20.0, 30.0)])
def test_shift_keeps_the_cycle_and_moves_whole_seconds_to_the_persistent_stage(
    carry: tuple[float, ...],
) -> None:
    j = toy_junction()
    fb = fallback_for(j, cycle=80)
    # Without the capacity rule: the toy fallback is over capacity on K1, and the rule
    # (tests/test_optimiser_capacity.py) would drop the larger shift away from P1.
    cfg = OptimiserConfig(capacity_x_max=None)
    est = estimate(j, FLOWS, K3=carrying(400.0, carry))
    cands = propose(j, est, fb, fb, config=cfg)
    labels = by_label(cands)
    found = persist_candidates(labels)
    assert found, list(labels)
    assert fb.stage_plan is not None
    run = fb.stage_plan.greens_s
    mins = stage_min_greens(j, SEQ)
    k = SEQ.index("P3")
    for lab in found:
        c = labels[lab]
        assert lab.startswith("persist-P3+")
        plan = c.program.stage_plan
        assert plan is not None and plan.sequence == SEQ
        assert c.program.cycle_s == fb.cycle_s
        moved = int(lab.removeprefix("persist-P3+").removesuffix("s"))
        assert 1 <= moved <= cfg.persist_max_shift_s
        assert plan.greens_s[k] == run[k] + moved
        assert sum(plan.greens_s) == sum(run)
        assert all(g >= m for g, m in zip(plan.greens_s, mins, strict=True))
        assert all(g <= r for i, (g, r) in enumerate(zip(plan.greens_s, run, strict=True))
                   if i != k)
        assert validate(j, c.program, previous=fb) == ()
        assert validate_switch(j, c.program, fb) == ()
    # 4-6 vehicles at 1800 veh/h need 10 s: 10 s and 5 s; a large carry-over is capped.
    sizes = sorted(int(lab.removeprefix("persist-P3+").removesuffix("s")) for lab in found)
    assert sizes == ([5, 10] if carry == (4.0, 6.0) else [6, 12])


def test_persistent_stages_do_not_donate() -> None:
    j = toy_junction()
    fb = fallback_for(j, cycle=80)
    assert fb.stage_plan is not None
    run = fb.stage_plan.greens_s
    est = estimate(j, FLOWS, K3=carrying(400.0, (10.0, 12.0)), K1=carrying(500.0, (3.0, 3.0)))
    labels = by_label(propose(j, est, fb, fb))
    found = persist_candidates(labels)
    assert found and all(lab.startswith("persist-P3+") for lab in found)
    for lab in found:
        plan = labels[lab].program.stage_plan
        assert plan is not None
        assert plan.greens_s[SEQ.index("P1")] == run[SEQ.index("P1")]


def test_no_persistent_queue_no_shift_and_other_sequences_are_left_alone() -> None:
    j = toy_junction()
    fb = fallback_for(j, cycle=80)
    assert not persist_candidates(by_label(propose(j, estimate(j, FLOWS), fb, fb)))
    # A running program on another sequence has no running split to shift.
    short = fallback_for(j, ("P1", "P3"), cycle=80)
    est = estimate(j, FLOWS, K3=carrying(400.0, (10.0, 12.0)))
    assert not persist_candidates(by_label(propose(j, est, short, fb)))
