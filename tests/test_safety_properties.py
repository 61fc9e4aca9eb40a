"""The validator and the hardware's monitor agree on generated programs and switches.

Two independent implementations of safety.md: ``controller.safety`` reasons
on green intervals, ``sim.monitor`` watches states second by second.  Across
the tests here about 10,200 programs and 2,500 switches are generated.
"""

from __future__ import annotations

from collections import Counter

from _safety_helpers import J, any_program, arbitrary, perturbed, rule_keys, stage_plans
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.plans import SignalProgram
from controller.safety import validate_program, validate_switch
from sim.monitor import check_program, check_switch


def _fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _agree(program: SignalProgram) -> bool:
    v = validate_program(J, program)
    f = check_program(J, program)
    assert bool(v) == bool(f), (program, v, f)
    assert rule_keys([(x.rule, x.groups) for x in v]) == rule_keys(
        [(x.rule, x.groups) for x in f]
    ), (program, [str(x) for x in v], [str(x) for x in f])
    return not v


@_fast(3400)
@given(stage_plans())
def test_safety_compiled_plans_agree(program: SignalProgram) -> None:
    _agree(program)


@_fast(3400)
@given(perturbed())
def test_safety_perturbed_plans_agree(program: SignalProgram) -> None:
    _agree(program)


@_fast(3400)
@given(arbitrary())
def test_safety_arbitrary_intervals_agree(program: SignalProgram) -> None:
    _agree(program)


def _switch_pairs() -> st.SearchStrategy[tuple[SignalProgram, SignalProgram]]:
    new = st.one_of(stage_plans(), stage_plans(), perturbed(), arbitrary())
    return st.tuples(stage_plans(), new)


def _switch_agree(old: SignalProgram, new: SignalProgram) -> bool:
    v = validate_switch(J, old, new)
    f = check_switch(J, old, new)
    assert all(x.rule == "D4" and x.subrule for x in v)
    assert rule_keys([(str(x.subrule), x.groups) for x in v]) == rule_keys(
        [(x.rule, x.groups) for x in f]
    ), (old, new, [str(x) for x in v], [str(x) for x in f])
    return not v


@_fast(2500)
@given(_switch_pairs())
def test_safety_switches_agree(pair: tuple[SignalProgram, SignalProgram]) -> None:
    _switch_agree(*pair)


def test_safety_generators_cover_valid_and_invalid() -> None:
    """Both outcomes, every rule, and switches that fail only because of the switch.

    Derandomized: this checks the generators, so it must not depend on luck.
    """
    seen: Counter[str] = Counter()

    @settings(max_examples=600, deadline=None, database=None, derandomize=True)
    @given(any_program())
    def programs(program: SignalProgram) -> None:
        v = validate_program(J, program)
        seen["valid" if not v else "invalid"] += 1
        for rule in {x.rule for x in v}:
            seen[rule] += 1

    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    @given(_switch_pairs())
    def switches(pair: tuple[SignalProgram, SignalProgram]) -> None:
        old, new = pair
        bad = bool(validate_switch(J, old, new))
        both_ok = not validate_program(J, old) and not validate_program(J, new)
        seen["switch " + ("bad" if bad else "ok")] += 1
        if both_ok and bad:
            seen["switch bad, programs fine"] += 1

    programs()
    switches()
    assert seen["valid"] >= 60 and seen["invalid"] >= 60, seen
    for rule in ("V1", "V2", "V3", "V4", "V5", "V6"):
        assert seen[rule] >= 5, (rule, seen)
    assert seen["switch ok"] >= 30 and seen["switch bad"] >= 30, seen
    assert seen["switch bad, programs fine"] >= 10, seen
