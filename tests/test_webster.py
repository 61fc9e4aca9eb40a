"""Webster's cycle and split, against the formula computed independently here."""

from __future__ import annotations

import math

import pytest
from _toy_junction import toy_junction
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.plans import compile_plan, transition
from controller.webster import split_greens, webster_plan

SEQ = ("P1", "P2", "P3", "P4")


def _lost_time() -> int:
    j = toy_junction()
    return sum(transition(j, SEQ[k], SEQ[(k + 1) % 4]).length_s for k in range(4))


def test_cycle_and_split_follow_webster() -> None:
    j = toy_junction(max_cycle_s=120)
    ratios = {"K1": 0.14, "K2": 0.04, "K3": 0.10, "K4": 0.04, "F1": 0.9}
    result = webster_plan(j, SEQ, ratios)
    lost = _lost_time()
    y = [0.14, 0.04, 0.10, 0.04]
    c0 = (1.5 * lost + 5) / (1 - sum(y))
    assert result.lost_time_s == lost
    assert result.optimum_cycle_s == pytest.approx(c0)
    assert abs(result.cycle_s - c0) <= 1.0
    effective = result.cycle_s - lost
    for k, yk in enumerate(y):
        expected = max(effective * yk / sum(y), 0)
        mins = [10, 5, 10, 5][k]
        assert abs(result.plan.greens_s[k] - max(expected, mins)) < 1.0 + 1e-9


def test_minimum_greens_are_respected_and_cycle_is_clipped() -> None:
    j = toy_junction(max_cycle_s=90)
    result = webster_plan(j, SEQ, {"K1": 0.50, "K2": 0.01, "K3": 0.45, "K4": 0.01})
    assert result.saturated
    assert result.cycle_s == 90
    assert result.plan.greens_s[1] >= 5 and result.plan.greens_s[3] >= 5
    program = compile_plan(j, result.plan, "w")
    assert program.cycle_s == result.cycle_s


@settings(max_examples=300, deadline=None)
@given(
    available=st.integers(min_value=40, max_value=200),
    weights=st.lists(st.floats(min_value=0, max_value=1), min_size=2, max_size=6),
    data=st.data(),
)
def test_split_greens_adds_up_and_keeps_minimums(
    available: int, weights: list[float], data: st.DataObject
) -> None:
    mins = data.draw(st.lists(st.integers(0, 10), min_size=len(weights), max_size=len(weights)))
    assume(sum(mins) <= available)
    greens = split_greens(available, weights, mins)
    assert sum(greens) == available
    assert all(g >= m for g, m in zip(greens, mins, strict=True))
    total = sum(weights)
    if total > 0 and all(available * w / total >= m + 1 for w, m in zip(weights, mins,
                                                                            strict=True)):
        for g, w in zip(greens, weights, strict=True):
            assert math.isclose(g, available * w / total, abs_tol=1.0)
