"""Webster's optimum cycle and green split for a fixed-time plan.

This is how a competent engineer tunes the fixed-time baseline for a demand
period (Festzeitsteuerung nach Webster, as in HBS/RiLSA practice):

    y_g = q_g / s_g                    flow ratio of signal group g (Belastungsgrad je Fahrstreifen)
    y_k = max(y_g for g in stage k)    critical flow ratio of stage k
    Y   = sum(y_k)
    L   = total lost time per cycle    (here: the sum of stage transition lengths,
                                        which the intergreen matrix fixes)
    C0  = (1.5 L + 5) / (1 - Y)        Webster's optimum cycle (Umlaufzeit)
    g_k = (C - L) * y_k / Y            green time of stage k, proportional to y_k

C is C0 rounded to whole seconds and clipped to the junction's cycle limits;
greens are raised to each stage's minimum green (the largest minimum green of
its groups) and rounded so that they add up exactly to C - L.  When Y >= 0.95
the formula breaks down (the junction is at or beyond capacity): the maximum
cycle is used and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.plans import StagePlan, lost_time_s
from controller.signals import JunctionSignals

#: Above this total critical flow ratio Webster's formula is not meaningful.
Y_SATURATED = 0.95


@dataclass(frozen=True, slots=True)
class WebsterResult:
    """A Webster-tuned stage plan and the numbers it came from."""

    plan: StagePlan
    cycle_s: int
    lost_time_s: int
    stage_flow_ratios: tuple[float, ...]
    total_flow_ratio: float
    optimum_cycle_s: float
    saturated: bool


#: Shortest green time of an overlap stage: one second, so the stage is a real step of
#: the sequence and not a transition in disguise.
OVERLAP_MIN_GREEN_S = 1


def stage_min_greens(junction: JunctionSignals, sequence: Sequence[str]) -> tuple[int, ...]:
    """Minimum green time of each stage: the largest minimum green (plus early end) of its
    groups.

    An overlap stage only counts the groups it alone serves: a group that runs on from the
    stage before or into the stage after gets its minimum green over the stages together
    (the validator checks it on the compiled program), so the overlap may be as short as
    ``OVERLAP_MIN_GREEN_S``.
    """
    overlaps = {s.id for s in junction.overlap_stages}
    n = len(sequence)
    out = []
    for k, s in enumerate(sequence):
        groups = junction.stage(s).groups
        if s in overlaps and n > 1:
            shared = junction.stage(sequence[k - 1]).groups | junction.stage(
                sequence[(k + 1) % n]).groups
            groups = groups - shared
        # A group that ends early still needs its minimum green inside the stage.
        need = max((junction.group(g).min_green_s + junction.early_end(g) for g in groups),
                   default=0)
        out.append(max(need, OVERLAP_MIN_GREEN_S) if s in overlaps else need)
    return tuple(out)


def webster_plan(
    junction: JunctionSignals,
    sequence: Sequence[str],
    flow_ratio: Mapping[str, float],
    *,
    min_cycle_s: int | None = None,
    max_cycle_s: int | None = None,
) -> WebsterResult:
    """Webster cycle and split for ``sequence`` given per-group flow ratios q/s."""
    seq = tuple(sequence)
    # Pedestrian groups have no flow ratio: their needs enter as minimum greens.
    y_stage = tuple(
        max(
            (
                max(0.0, flow_ratio.get(g, 0.0))
                for g in junction.stage(s).groups
                if junction.group(g).is_vehicular
            ),
            default=0.0,
        )
        for s in seq
    )
    y_total = sum(y_stage)
    lost = lost_time_s(junction, seq) if len(seq) > 1 else 0
    lo = junction.min_cycle_s if min_cycle_s is None else min_cycle_s
    hi = junction.max_cycle_s if max_cycle_s is None else max_cycle_s
    saturated = y_total >= Y_SATURATED
    optimum = math.inf if saturated else (1.5 * lost + 5.0) / (1.0 - y_total)
    mins = stage_min_greens(junction, seq)
    floor_cycle = lost + sum(mins)
    cycle = hi if saturated else round(optimum)
    cycle = max(lo, floor_cycle, min(hi, cycle))
    greens = split_greens(cycle - lost, y_stage, mins)
    return WebsterResult(
        plan=StagePlan(sequence=seq, greens_s=greens),
        cycle_s=lost + sum(greens),
        lost_time_s=lost,
        stage_flow_ratios=y_stage,
        total_flow_ratio=y_total,
        optimum_cycle_s=optimum,
        saturated=saturated,
    )


def split_greens(
    available_s: int, weights: Sequence[float], minimums: Sequence[int]
) -> tuple[int, ...]:
    """Split ``available_s`` whole seconds in proportion to ``weights``, respecting minimums.

    Stages whose proportional share falls below their minimum get the minimum;
    the rest is shared again among the others (iteratively), then rounded by
    largest remainder so the total is exact.
    """
    n = len(weights)
    if n == 0:
        return ()
    if available_s < sum(minimums):
        raise ValueError("available green time is below the sum of minimum greens")
    fixed: dict[int, float] = {}
    while True:
        free = [k for k in range(n) if k not in fixed]
        rest = available_s - sum(fixed.values())
        w = [max(weights[k], 0.0) for k in free]
        total_w = sum(w)
        share = {
            k: (rest * wk / total_w if total_w > 0 else rest / len(free))
            for k, wk in zip(free, w, strict=True)
        }
        below = [k for k in free if share[k] < minimums[k]]
        if not below:
            break
        for k in below:
            fixed[k] = float(minimums[k])
    exact = [fixed.get(k, share.get(k, 0.0)) for k in range(n)]
    floors = [max(minimums[k], math.floor(exact[k])) for k in range(n)]
    remainder = available_s - sum(floors)
    order = sorted(range(n), key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)
    for k in order[: max(0, remainder)]:
        floors[k] += 1
    return tuple(floors)
