"""Hand-written examples per rule: the validator names rule, groups and second.

The monitor must see the same rules and groups.
"""

from __future__ import annotations

import dataclasses

import pytest
from _safety_helpers import J, base, junction, program

from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.safety import (
    SafetyLimits,
    Violation,
    switch_window,
    validate,
    validate_program,
    validate_switch,
)
from controller.signals import GroupKind, JunctionSignals, SignalGroup
from sim.monitor import ConflictMonitor, check_program, check_switch

B = base()


def _with(**greens: tuple[tuple[int, int], ...]) -> SignalProgram:
    merged = dict(B.greens)
    merged.update(greens)
    return program(B.cycle_s, merged)


def _keys(vs: tuple[Violation, ...]) -> set[tuple[str, tuple[str, ...], int | None]]:
    return {(v.rule, v.groups, v.at_s) for v in vs}


def _monitor_keys(p: SignalProgram, j: JunctionSignals = J) -> set[tuple[str, tuple[str, ...]]]:
    return {(f.rule, f.groups) for f in check_program(j, p)}


def test_safety_base_program_is_valid_for_both_checks() -> None:
    assert B.cycle_s == 84
    assert validate_program(J, B) == ()
    assert check_program(J, B) == []
    assert validate(J, B, previous=B) == ()


def test_safety_v1_conflicting_groups_not_red_together() -> None:
    # K3 starts at 40 (red-yellow from 39) while K2 is yellow 38-40.
    p = _with(K3=((40, 62),))
    vs = validate_program(J, p)
    assert _keys(vs) == {("V1", ("K2", "K3"), 39), ("V2", ("K2", "K3"), 40)}
    v1 = next(v for v in vs if v.rule == "V1")
    assert v1.message == "V1: conflicting K2 and K3 both not red at cycle second 39"
    assert _monitor_keys(p) == {("V1", ("K2", "K3")), ("V2", ("K2", "K3"))}


def test_safety_v2_intergreen_one_second_short() -> None:
    p = _with(K3=((43, 62),))
    (v,) = validate_program(J, p)
    assert (v.rule, v.groups, v.at_s) == ("V2", ("K2", "K3"), 43)
    assert v.message == "V2: intergreen K2->K3 is 5 s, needs 6 s at cycle second 43"
    assert _monitor_keys(p) == {("V2", ("K2", "K3"))}


def test_safety_v2_across_the_cycle_wrap() -> None:
    # K4 green 71-78; K1 starting at cycle second 0 needs 6 s after 78 -> 84 is exactly 6.
    assert validate_program(J, _with(K4=((71, 78),))) == ()
    p = _with(K4=((72, 79),))
    assert ("V2", ("K4", "K1"), 0) in _keys(validate_program(J, p))
    assert ("V2", ("K4", "K1")) in _monitor_keys(p)


def test_safety_v3_green_restart_without_all_red() -> None:
    # K1 green split with a 3 s gap: yellow 3 s fills it, no all-red, no red-yellow.
    p = _with(K1=((0, 8), (11, 20)))
    vs = validate_program(J, p)
    assert {(v.rule, v.groups) for v in vs} == {("V3", ("K1",))}
    assert _monitor_keys(p) == {("V3", ("K1",))}
    # Yellow 3 + all-red 1 + red-yellow 1 = 5 s is enough.
    ok = _with(K1=((0, 8), (13, 21)))
    assert validate_program(J, ok) == ()
    assert check_program(J, ok) == []


def test_safety_v3_all_red_is_configurable() -> None:
    ok = _with(K1=((0, 8), (13, 21)))
    vs = validate_program(J, ok, SafetyLimits(all_red_s=2))
    assert {(v.rule, v.groups) for v in vs} == {("V3", ("K1",))}
    assert "all-red of K1 lasts 1 s, needs 2 s" in vs[0].message
    monitor = ConflictMonitor(J, all_red_s=2)
    faults = [f for _ in range(3) for s in _expand(ok) for f in monitor.observe(s)]
    assert {(f.rule, f.groups) for f in faults} == {("V3", ("K1",))}


def _expand(p: SignalProgram) -> list[dict[str, str]]:
    from sim.monitor import expand_program

    return expand_program(J, p)


def _junction_with(group: SignalGroup) -> JunctionSignals:
    groups = tuple(group if g.id == group.id else g for g in J.groups)
    return dataclasses.replace(junction(), groups=groups)


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"yellow_s": 3, "speed_kmh": 60}, "V3: yellow of K3 is 3 s, needs 4 s at 60 km/h"),
        ({"red_yellow_s": 3}, "V3: red-yellow of K3 is 3 s, needs 1-2 s"),
        ({"speed_kmh": 80, "yellow_s": 5}, "V3: no yellow time known for K3 at 80 km/h"),
    ],
)
def test_safety_v3_configured_transition_times(change: dict[str, int], text: str) -> None:
    j = _junction_with(dataclasses.replace(J.group("K3"), **change))
    p = compile_plan(j, StagePlan(("S1", "S2", "S3", "S4"), (20, 8, 18, 7)), "p")
    messages = [v.message for v in validate_program(j, p) if v.at_s is None]
    assert messages == [text]
    assert ("V3", ("K3",)) in _monitor_keys(p, j)


def test_safety_v4_minimum_green() -> None:
    p = _with(K2=((30, 34),))
    (v,) = validate_program(J, p)
    assert v.message == "V4: green of K2 lasts 4 s, needs 5 s at cycle second 30"
    assert _monitor_keys(p) == {("V4", ("K2",))}


def test_safety_v4_pedestrian_reaches_the_middle_of_the_crossing() -> None:
    # F2 is green 36 s; a 100 m crossing at 1.2 m/s needs ceil(50 / 1.2) = 42 s.
    limits = SafetyLimits(crossing_m={"F2": 100.0})
    assert limits.min_green_for(J.group("F2")) == 42
    (v,) = validate_program(J, B, limits)
    assert (v.rule, v.groups) == ("V4", ("F2",))
    monitor = ConflictMonitor(J, crossing_m={"F2": 100.0})
    faults = [f for _ in range(3) for s in _expand(B) for f in monitor.observe(s)]
    assert {(f.rule, f.groups) for f in faults} == {("V4", ("F2",))}
    assert validate_program(J, B, SafetyLimits(crossing_m={"F2": 20.0})) == ()
    with pytest.raises(ValueError, match="walking speed"):
        SafetyLimits(walking_speed_mps=2.0)


def test_safety_v5_cycle_and_maximum_red() -> None:
    long = compile_plan(J, StagePlan(("S1", "S2", "S3", "S4"), (25, 8, 25, 8)), "long")
    assert long.cycle_s > 90
    rules = {(v.rule, v.groups) for v in validate_program(J, long)}
    assert ("V5", ()) in rules
    assert ("V5", ()) in _monitor_keys(long)
    assert validate_program(J, long, SafetyLimits(max_cycle_s=120)) == ()
    strict = junction(max_red_s=60)
    vs = validate_program(strict, B)
    # K1 is green 20 s of 84: red 64 s > 60 s.
    assert ("V5", ("K1",)) in {(v.rule, v.groups) for v in vs}
    assert {(v.rule, v.groups) for v in vs} == _monitor_keys(B, strict)


def test_safety_v5_group_never_green() -> None:
    p = _with(K4=())
    vs = validate_program(J, p)
    assert {(v.rule, v.groups) for v in vs} == {("V5", ("K4",))}
    assert any(v.message == "V5: K4 never gets green" for v in vs)
    assert _monitor_keys(p) == {("V5", ("K4",))}


@pytest.mark.parametrize(
    ("p", "groups", "fragment"),
    [
        (SignalProgram("m", 84, 0, {g: B.greens[g] for g in J.group_ids if g != "R1"}),
         ("R1",), "no defined"),
        (SignalProgram("u", 84, 0, {**B.greens, "X9": ((0, 5),)}), ("X9",), "unknown signal group"),
        (_with(K2=((30, 38), (38, 40))), ("K2",), "overlap or touch"),
        (_with(K2=((80, 86), (0, 3))), ("K2",), "overlap or touch"),
        (_with(K2=((84, 90),)), ("K2",), "outside the cycle"),
        (_with(K2=((30, 30),)), ("K2",), "outside the cycle"),
        (SignalProgram("z", 0, 0, dict(B.greens)), (), "not a positive"),
    ],
)
def test_safety_v6_structure(p: SignalProgram, groups: tuple[str, ...], fragment: str) -> None:
    vs = validate_program(J, p)
    assert vs and all(v.rule == "V6" for v in vs)
    assert any(v.groups == groups and fragment in v.message for v in vs), vs
    faults = check_program(J, p)
    assert faults and all(f.rule == "V6" for f in faults)


def _rotated(p: SignalProgram, by: int) -> SignalProgram:
    n = p.cycle_s
    greens = {
        g: tuple(((s + by) % n, (s + by) % n + e - s) for s, e in ivs)
        for g, ivs in p.greens.items()
    }
    return SignalProgram(f"{p.id}+{by}", n, 0, greens)


def test_safety_d4_switch_cuts_green_and_yellow() -> None:
    # Both programs are fine alone; at the old cycle boundary K4 is green for
    # only 3 s and the new program starts K1 and R1 at once.
    old = _rotated(B, 10)
    assert validate_program(J, old) == ()
    vs = validate_switch(J, old, B)
    got = {(v.subrule, v.groups, v.at_s) for v in vs}
    assert got == {
        ("V2", ("K4", "K1"), 0),
        ("V2", ("K4", "R1"), 0),
        ("V3", ("K1",), 0),
        ("V3", ("K4",), 0),
        ("V3", ("R1",), 0),
        ("V4", ("K4",), -3),
    }
    assert all(v.rule == "D4" for v in vs)
    assert "D4 (V2, switch base+10 -> base): intergreen K4->K1 is 0 s, needs 6 s at the switch" in [
        v.message for v in vs
    ]
    assert {(f.rule, f.groups, f.second) for f in check_switch(J, old, B)} == got
    # The gate reports the switch only when a previous program is given.
    assert validate(J, B) == ()
    assert {v.subrule for v in validate(J, B, previous=old)} == {"V2", "V3", "V4"}


def test_safety_d4_compatible_switch_passes() -> None:
    other = compile_plan(J, StagePlan(("S1", "S3", "S2", "S4"), (20, 18, 8, 7)), "other")
    assert validate_switch(J, B, other) == ()
    assert check_switch(J, B, other) == []
    assert validate(J, other, previous=B) == ()


def test_safety_d4_malformed_program_is_reported_not_checked() -> None:
    broken = _with(K2=((30, 38), (36, 40)))
    vs = validate_switch(J, B, broken)
    assert vs and all(v.rule == "D4" and v.subrule == "V6" for v in vs)
    assert all(f.rule == "V6" for f in check_switch(J, B, broken))


def test_safety_switch_window_covers_starvation() -> None:
    lo, hi = switch_window(J, 84, 60)
    assert lo == -168 and hi == 180
    assert -lo > J.group("K1").max_red_s and hi > J.group("K1").max_red_s


def test_safety_limits_defaults_follow_safety_md() -> None:
    limits = SafetyLimits()
    assert [limits.yellow_for(v) for v in (30, 50, 60, 70, 80)] == [3, 3, 4, 5, None]
    assert limits.cycle_limit(J) == 90
    assert limits.cycle_limit(dataclasses.replace(J, max_cycle_s=120)) == 120
    assert limits.all_red_for(J) == 1
    ped = SignalGroup("F9", GroupKind.PEDESTRIAN, "N", (), 3, 0, 0)
    assert limits.min_green_for(ped) == 5
