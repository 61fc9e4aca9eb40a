"""Validator and monitor agree on the real Schlosskreuzung signal model (sim.junction)."""

from __future__ import annotations

from functools import cache

from _safety_helpers import rule_keys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.safety import validate_program, validate_switch
from controller.signals import JunctionSignals
from sim.junction import load_junction
from sim.monitor import check_program, check_switch


@cache
def _signals() -> JunctionSignals:
    return load_junction("schlosskreuzung").signals


@st.composite
def _plans(draw: st.DrawFn) -> SignalProgram:
    j = _signals()
    seq = [s.id for s in j.stages]
    seq = list(draw(st.permutations(seq)))
    greens = tuple(draw(st.integers(4, 32)) for _ in seq)
    return compile_plan(j, StagePlan(tuple(seq), greens), "sk")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plans(), _plans())
def test_safety_schlosskreuzung_programs_and_switches_agree(
    old: SignalProgram, new: SignalProgram
) -> None:
    j = _signals()
    for p in (old, new):
        v = validate_program(j, p)
        f = check_program(j, p)
        assert rule_keys([(x.rule, x.groups) for x in v]) == rule_keys(
            [(x.rule, x.groups) for x in f]
        ), ([str(x) for x in v], [str(x) for x in f])
    vs = validate_switch(j, old, new)
    fs = check_switch(j, old, new)
    assert rule_keys([(str(x.subrule), x.groups) for x in vs]) == rule_keys(
        [(x.rule, x.groups) for x in fs]
    ), ([str(x) for x in vs], [str(x) for x in fs])
