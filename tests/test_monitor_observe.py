"""The conflict monitor fed second by second, its own expansion, and its independence."""

from __future__ import annotations

import ast
from pathlib import Path

from _safety_helpers import J, any_program, base
from hypothesis import HealthCheck, given, settings

from controller.plans import SignalProgram, group_states
from sim.monitor import ConflictMonitor, check_program, expand_program

ROOT = Path(__file__).resolve().parents[1]


def _states(**override: str) -> dict[str, str]:
    states = dict.fromkeys(J.group_ids, "r")
    states.update(override)
    return states


Seen = list[tuple[str, tuple[str, ...], int]]


def _feed(monitor: ConflictMonitor, seq: list[dict[str, str]]) -> Seen:
    return [(f.rule, f.groups, f.second) for s in seq for f in monitor.observe(s)]


def test_monitor_clean_green_yellow_red_sequence_has_no_fault() -> None:
    k1 = ["u"] + ["G"] * 8 + ["y"] * 3 + ["r"] * 5
    seq = [_states()] * 3 + [_states(K1=c) for c in k1] + [_states()] * 3
    assert _feed(ConflictMonitor(J), seq) == []


def test_monitor_missing_yellow_and_short_green() -> None:
    seq = [_states()] * 2 + [_states(K1="u")] + [_states(K1="G")] * 4 + [_states()] * 3
    faults = _feed(ConflictMonitor(J), seq)
    # Green 3..6 lasts 4 s (< 8) and ends straight into red at second 7.
    assert ("V4", ("K1",), 3) in faults
    assert ("V3", ("K1",), 7) in faults
    assert {f[0] for f in faults} == {"V3", "V4"}


def test_monitor_conflict_reported_once_at_onset() -> None:
    seq = [_states()] + [_states(K1="G", K3="u")] * 5 + [_states()] + [_states(K2="G", K1="y")]
    faults = [f for f in _feed(ConflictMonitor(J, start_second=10), seq) if f[0] == "V1"]
    assert faults == [("V1", ("K1", "K3"), 11), ("V1", ("K1", "K2"), 17)]


def test_monitor_intergreen_measured_from_last_green_end() -> None:
    k1 = ["G"] * 10 + ["y"] * 3 + ["r"]
    seq = [_states(K1=c) for c in k1] + [_states(K3="u"), _states(K3="G")]
    faults = _feed(ConflictMonitor(J), seq)
    # K1 ended at second 10; K3 green at 15: 5 s, needs 6 s.
    assert faults == [("V2", ("K1", "K3"), 15)]


def test_monitor_unknown_missing_and_minor_green_states() -> None:
    monitor = ConflictMonitor(J)
    missing = {g: "r" for g in J.group_ids if g != "F2"}
    faults = _feed(monitor, [_states(), {**missing, "X": "r"}, _states(K1="o")])
    assert ("V6", ("F2",), 1) in faults and ("V6", ("X",), 1) in faults
    assert ("V6", ("K1",), 2) in faults
    # SUMO's minor green 'g' counts as green, so a conflict with it is seen.
    faults = _feed(ConflictMonitor(J), [_states(K1="g", K3="G")])
    assert faults == [("V1", ("K1", "K3"), 0)]


def test_monitor_starvation_fires_once_at_the_deadline() -> None:
    monitor = ConflictMonitor(J)
    same = _states()
    seconds = [f[2] for f in _feed(monitor, [same] * 250) if f[1] == ("K1",)]
    # Red since second 0, max red 100 s: fault in second 100, once.
    assert seconds == [100]
    assert monitor.second == 250


def test_monitor_check_program_reports_cycle_seconds() -> None:
    p = base()
    greens = dict(p.greens)
    greens["K2"] = ((30, 34),)
    faults = check_program(J, SignalProgram("short", p.cycle_s, 0, greens))
    assert [(f.rule, f.groups, f.second) for f in faults] == [("V4", ("K2",), 30)]
    assert str(faults[0]) == "V4 at second 30: green of K2 lasted 4 s, needs 5 s"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_program())
def test_monitor_expansion_matches_group_states(program: SignalProgram) -> None:
    """Own expansion, same state rules as plans.group_states, for every well-formed program."""
    if any(f.rule == "V6" for f in check_program(J, program)):
        return
    cycle = expand_program(J, program)
    reference = group_states(J, program)
    for g in J.group_ids:
        assert "".join(states[g] for states in cycle) == reference[g]


def test_monitor_imports_no_validator_code() -> None:
    tree = ast.parse((ROOT / "sim" / "monitor.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not any(name.startswith("controller.safety") for name in imported)
    plan_names = {n for n in imported if n.startswith("controller.plans")}
    assert plan_names <= {"controller.plans.SignalProgram"}
