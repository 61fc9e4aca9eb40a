"""The simulated signal controller's own check of a pushed plan (sim/hardware.py).

A plan that arrives while another waits for the switch point replaces the waiting one, so
the switch the hardware will make, and must check, is from the plan running now.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from _toy_junction import toy_junction

import sim.hardware
from controller.messages import AckStatus, PlanCommand
from controller.plans import SignalProgram, StagePlan, compile_plan
from sim.hardware import SignalController
from sim.monitor import Fault

J = toy_junction()
SEQUENCE = ("P1", "P2", "P3", "P4")


def program(greens: Sequence[int], name: str) -> SignalProgram:
    return compile_plan(J, StagePlan(SEQUENCE, tuple(greens)), name)


def command(prog: SignalProgram, seq: int, now: float) -> PlanCommand:
    return PlanCommand(program=prog, issued=now, valid_from=now, lease_s=3 * prog.cycle_s,
                       seq=seq)


def test_a_plan_replacing_a_pending_one_is_checked_against_the_running_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[tuple[str, str]] = []
    real = sim.hardware.check_switch

    def spy(junction: object, old: SignalProgram, new: SignalProgram) -> list[Fault]:
        checked.append((old.id, new.id))
        return real(J, old, new)

    monkeypatch.setattr(sim.hardware, "check_switch", spy)
    fallback = program((14, 6, 14, 6), "fallback")
    hw = SignalController(J, fallback)
    a, b = program((20, 6, 10, 6), "a"), program((10, 8, 16, 6), "b")
    assert hw.submit(command(a, 1, 0.0), 0.0).status is AckStatus.ACCEPTED
    assert hw.submit(command(b, 2, 1.0), 1.0).status is AckStatus.ACCEPTED
    # b replaced a before any switch point: the junction goes from the fallback to b.
    assert ("fallback", "b") in checked and ("a", "b") not in checked
    for t in range(2, 2 + fallback.cycle_s + 1):
        hw.tick(float(t))
    assert hw.running is b
    # A renewal of the waiting plan is no switch; it needs no check.
    n = len(checked)
    c = program((12, 6, 18, 6), "c")
    assert hw.submit(command(c, 3, 60.0), 60.0).status is AckStatus.ACCEPTED
    assert hw.submit(command(c, 4, 61.0), 61.0).reason == "lease renewed"
    assert checked[n:] == [("b", "c"), ("c", "fallback")]
    assert hw.stats.monitor_faults == []
