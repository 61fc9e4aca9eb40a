"""Property tests: the optimiser never fails and always offers a safe plan."""

from __future__ import annotations

from _toy_junction import toy_junction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.estimator import Estimate, GroupEstimate
from controller.optimiser import propose
from controller.plans import compile_plan
from controller.safety import validate, validate_switch
from controller.webster import stage_min_greens, webster_plan

SEQ = ("P1", "P2", "P3", "P4")
J = toy_junction()
FALLBACK = compile_plan(
    J, webster_plan(J, SEQ, {g.id: 0.1 for g in J.groups}, min_cycle_s=80, max_cycle_s=80).plan,
    "fallback",
)
SHORT = compile_plan(
    J, webster_plan(J, SEQ, {g.id: 0.1 for g in J.groups}, min_cycle_s=60, max_cycle_s=60).plan,
    "short",
)

group_estimates = st.builds(
    GroupEstimate,
    flow_veh_h=st.floats(0.0, 2500.0),
    queue_veh=st.floats(0.0, 80.0),
    queue_m=st.just(0.0),
    saturation_veh_h=st.one_of(st.just(0.0), st.floats(100.0, 2500.0)),
    degree_of_saturation=st.just(0.0),
    demand=st.booleans(),
    ped_waiting_s=st.one_of(st.just(0.0), st.floats(0.0, 300.0)),
    bus_eta_s=st.one_of(st.none(), st.floats(0.0, 300.0)),
    data_ok=st.booleans(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    groups=st.fixed_dictionaries({}, optional={g.id: group_estimates for g in J.groups}),
    short_running=st.booleans(),
)
def test_any_estimate_gives_safe_candidates(
    groups: dict[str, GroupEstimate], short_running: bool
) -> None:
    running = SHORT if short_running else FALLBACK
    cands = propose(J, Estimate(0.0, groups, {}), running, FALLBACK)
    assert cands
    assert len({c.program.id for c in cands}) == len(cands)
    for c in cands:
        plan = c.program.stage_plan
        assert plan is not None
        assert plan.sequence[0] == SEQ[0]
        assert c.program.cycle_s <= J.max_cycle_s
        assert all(g >= m for g, m in
                   zip(plan.greens_s, stage_min_greens(J, plan.sequence), strict=True))
        assert validate(J, c.program, previous=running) == ()
        assert validate_switch(J, c.program, FALLBACK) == ()
        assert c.analytic_delay_s >= 0.0
