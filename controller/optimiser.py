"""Candidate signal plans from the demand estimate (Optimierer).

Once per decision epoch the adaptive controller calls ``propose``; it returns a
small, diverse set of signal programs that the SUMO twin then scores against
the running program.  The optimiser does not have to be right, only sensible
and varied: the twin has the last word on traffic, the safety validator on
safety.  Methods, formulas and limits are in docs/optimiser.md.

Every candidate

- uses the stage sequence of the fallback program (some stages may be skipped)
  and keeps the fallback's first stage first, so cycle second 0 is always the
  start of the same stage's green time and every program switch at a cycle
  boundary is a switch between identical signal states (safety.md D4);
- keeps each stage's green time (Freigabezeit) at or above its minimum green
  and the cycle (Umlaufzeit) within the configured limits and within
  ``max_cycle_change_s`` of the running cycle;
- passes ``controller.safety.validate`` from the running program and the
  switch back to the fallback program (the hardware checks that one too).

Pure: no I/O; numpy and scipy only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy.optimize import LinearConstraint, minimize

from controller.estimator import Estimate, GroupEstimate
from controller.plans import (
    SignalProgram,
    StagePlan,
    compile_plan,
    lost_time_s,
    stage_green_times,
    stage_timing,
)
from controller.safety import validate
from controller.signals import GroupKind, JunctionSignals
from controller.webster import split_greens, stage_min_greens, webster_plan

__all__ = [
    "Candidate",
    "Demand",
    "OptimiserConfig",
    "analytic_delay_s",
    "engineered_plan",
    "group_demand",
    "persistent_groups",
    "propose",
    "skippable_stages",
]

FloatArray = npt.NDArray[np.float64]
#: Stage green times, as a list or an array.
Greens = Sequence[float] | FloatArray
#: A candidate before the gate: a compiled program, or a stage plan still to compile.
_Entry = tuple[str, "SignalProgram | StagePlan"]


@dataclass(frozen=True)
class OptimiserConfig:
    """Parameters of the optimiser; the reasons for the defaults are in docs/optimiser.md."""

    #: Shortest and longest cycle (Umlaufzeit); None: the junction's own limits.
    #: The configured maximum can only lower the junction's maximum.
    min_cycle_s: int | None = None
    max_cycle_s: int | None = None
    #: How many candidates to return at most.
    n_candidates: int = 10
    #: Largest change of cycle from the running program in one epoch.
    max_cycle_change_s: int = 20
    #: Relative cycle change of the short/long cycle variants.
    cycle_variation: float = 0.12
    #: Extra green time (Grünzeitverlängerung) for the stage of a pending bus.
    bus_extension_s: int = 10
    #: A bus counts as pending when it arrives within this many cycles.
    bus_horizon_cycles: float = 1.0
    #: A pedestrian request waiting at least this long gets an early-service variant.
    ped_wait_threshold_s: float = 45.0
    #: Target upper bound on every group's degree of saturation (Auslastungsgrad).
    max_degree_of_saturation: float = 0.95
    #: Capacity rule of the candidate gate: no candidate plans any group's arrival flow
    #: above this degree of saturation, or above ``capacity_slack`` times the fallback's
    #: highest one where that is higher (demand beyond capacity: no group may be loaded
    #: beyond the fallback's worst bottleneck).  The twin's horizon is a few cycles; a
    #: plan that leaves a movement short of capacity looks cheap there while its queue
    #: grows for good.  None: no capacity rule.  Slack 1.0 since session 7 (1.25 before;
    #: docs/optimiser.md has both measured).
    capacity_x_max: float | None = 0.95
    capacity_slack: float = 1.0
    #: Flow assumed at least for a group without trustworthy data (veh/h).
    flow_floor_veh_h: float = 300.0
    #: Lower bound on the saturation flow an estimate may claim (veh/h of green).
    saturation_floor_veh_h: float = 600.0
    #: Saturation flow used when the estimate has none (veh/h of green).
    default_saturation_veh_h: float = 1800.0
    #: Analysis period T of the HCM incremental delay term, hours.
    analysis_period_h: float = 0.25
    #: Seconds moved towards one stage in the split-tilt variants.
    split_tilt_s: int = 5
    #: At most this many stage-skipping variants per epoch.
    max_skip_variants: int = 2
    #: A group's queue persists when it carried over at least ``persist_min_veh`` vehicles
    #: (``GroupEstimate.carryover_veh``) at the end of each of its last ``persist_cycles``
    #: reds, or when its queue covers its upstream loop (``GroupEstimate.spillback``).
    persist_cycles: int = 2
    persist_min_veh: float = 2.0
    #: Most seconds the running-cycle shift moves to the persistent stage in one epoch.
    persist_max_shift_s: int = 12

    def __post_init__(self) -> None:
        if self.n_candidates < 8:
            raise ValueError("n_candidates must be at least 8 (a diverse set for the twin)")
        if self.max_cycle_change_s < 0:
            raise ValueError("max_cycle_change_s must not be negative")
        if self.min_cycle_s is not None and self.max_cycle_s is not None and (
            self.min_cycle_s > self.max_cycle_s
        ):
            raise ValueError("min_cycle_s must not exceed max_cycle_s")
        if not 0.0 < self.cycle_variation < 1.0:
            raise ValueError("cycle_variation must be within (0, 1)")
        if not 0.0 < self.max_degree_of_saturation <= 1.0:
            raise ValueError("max_degree_of_saturation must be within (0, 1]")
        if self.capacity_x_max is not None and not self.capacity_x_max > 0.0:
            raise ValueError("capacity_x_max must be positive (or None: no capacity rule)")
        if not self.capacity_slack >= 1.0:
            raise ValueError("capacity_slack must be at least 1")
        positive = (
            self.saturation_floor_veh_h, self.default_saturation_veh_h, self.analysis_period_h,
            self.bus_horizon_cycles,
        )
        if any(not (v > 0 and math.isfinite(v)) for v in positive):
            raise ValueError("saturation flows, analysis period and bus horizon must be positive")
        if min(self.flow_floor_veh_h, self.bus_extension_s, self.max_skip_variants,
               self.split_tilt_s, self.persist_min_veh, self.persist_max_shift_s) < 0:
            raise ValueError("flow floor, bus extension, tilt, skips, shifts must be >= 0")
        if self.persist_cycles < 1:
            raise ValueError("persist_cycles must be at least 1")

    def cycle_limits(self, junction: JunctionSignals) -> tuple[int, int]:
        """(shortest, longest) cycle in whole seconds for this junction."""
        hi = junction.max_cycle_s if self.max_cycle_s is None else min(
            self.max_cycle_s, junction.max_cycle_s
        )
        lo = junction.min_cycle_s if self.min_cycle_s is None else self.min_cycle_s
        return min(lo, hi), hi


@dataclass(frozen=True)
class Candidate:
    """One proposed signal program.

    ``analytic_delay_s`` is the flow-weighted mean vehicle delay (s/veh) the
    HCM/Webster formula predicts for this program under the estimated demand;
    it lets the caller pre-rank and tests check optimality.  The twin's
    simulated person delay is the real judge.
    """

    program: SignalProgram
    label: str
    analytic_delay_s: float


@dataclass(frozen=True)
class Demand:
    """What the optimiser takes from the estimate for one vehicular signal group."""

    #: Arrival flow plus the residual queue spread over the next cycle (veh/h).
    flow_veh_h: float
    saturation_veh_h: float
    #: Arrival flow alone (veh/h), what the plan must carry in the long run; None: the
    #: same as ``flow_veh_h``.  0 for a group without trustworthy data: its floor flow
    #: is a guess that keeps it served, not a measurement the capacity rule could judge.
    arrival_veh_h: float | None = None

    @property
    def arrivals(self) -> float:
        return self.flow_veh_h if self.arrival_veh_h is None else self.arrival_veh_h


# -- demand ------------------------------------------------------------------------


def _finite(value: float, default: float = 0.0) -> float:
    return value if math.isfinite(value) else default


def group_demand(
    junction: JunctionSignals,
    estimate: Estimate,
    running: SignalProgram,
    config: OptimiserConfig = OptimiserConfig(),
) -> dict[str, Demand]:
    """Effective flow and saturation flow per vehicular signal group.

    A queue longer than the running program's red time can build from arrivals
    alone (q r / 3600) is residual (Restrückstau); it is added as the extra flow
    that clears it within one running cycle.  A group without trustworthy data
    (``data_ok=False``, or no estimate at all) gets at least the flow floor, so
    it is never starved of green on the strength of a broken detector (D1).
    """
    greens = stage_green_times(running)
    cycle = max(running.cycle_s, 1)
    out: dict[str, Demand] = {}
    for g in junction.groups:
        if not g.is_vehicular:
            continue
        ge = estimate.groups.get(g.id)
        if ge is None:
            out[g.id] = Demand(config.flow_floor_veh_h, config.default_saturation_veh_h, 0.0)
            continue
        flow = arrivals = max(0.0, _finite(ge.flow_veh_h))
        sat = _finite(ge.saturation_veh_h)
        sat = config.default_saturation_veh_h if sat <= 0 else max(
            sat, config.saturation_floor_veh_h
        )
        red_s = max(0, cycle - greens.get(g.id, 0))
        residual = max(0.0, _finite(ge.queue_veh) - flow * red_s / 3600.0)
        flow += residual * 3600.0 / cycle
        if not ge.data_ok:
            flow = max(flow, config.flow_floor_veh_h)
            arrivals = 0.0
        out[g.id] = Demand(flow, sat, arrivals)
    return out


def degrees_of_saturation(
    program: SignalProgram, demand: Mapping[str, Demand]
) -> dict[str, float]:
    """Degree of saturation x = q / (s g / C) of each group's arrival flow under ``program``.

    Auslastungsgrad.  A group the program leaves without green gets 0 without
    arrivals and infinity with them.
    """
    greens = stage_green_times(program)
    cycle = max(program.cycle_s, 1)
    out: dict[str, float] = {}
    for g, d in demand.items():
        capacity = d.saturation_veh_h * greens.get(g, 0) / cycle
        out[g] = d.arrivals / capacity if capacity > 0 else (math.inf if d.arrivals > 0 else 0.0)
    return out


def over_capacity(
    program: SignalProgram,
    fallback: SignalProgram,
    demand: Mapping[str, Demand],
    x_max: float,
    slack: float = 1.0,
) -> tuple[str, ...]:
    """Groups ``program`` plans above ``x_max`` and above ``slack`` x the fallback's worst.

    Groups a program does not serve at all are not counted: leaving a stage out
    is the stage-skipping rule's decision (only without demand), for one lease.
    """
    return tuple(_over(program, demand, capacity_limit(fallback, demand, x_max, slack)))


def _over(program: SignalProgram, demand: Mapping[str, Demand], limit: float) -> dict[str, float]:
    """Served groups above ``limit`` with their degree of saturation."""
    return {g: x for g, x in _served_x(program, demand).items() if x > limit + 1e-9}


def capacity_limit(
    fallback: SignalProgram, demand: Mapping[str, Demand], x_max: float, slack: float = 1.0
) -> float:
    """The highest degree of saturation the capacity rule lets a plan give any group."""
    return max(x_max, slack * max(_served_x(fallback, demand).values(), default=0.0))


def _served_x(program: SignalProgram, demand: Mapping[str, Demand]) -> dict[str, float]:
    greens = stage_green_times(program)
    return {g: x for g, x in degrees_of_saturation(program, demand).items() if greens.get(g, 0)}


def capacity_check(
    junction: JunctionSignals,
    estimate: Estimate,
    running: SignalProgram,
    fallback: SignalProgram,
    config: OptimiserConfig = OptimiserConfig(),
) -> str | None:
    """Why ``running`` may not be renewed under the capacity rule, or None.

    The rule that keeps over-capacity plans out of the candidates holds for the
    running plan too: demand changes under a leased plan, and the twin, judging a
    few cycles, may keep renewing a plan whose starved movement queues for good.
    The adaptive core then switches to the best candidate whatever the margin
    (``controller.adaptive.RunningCheck``).  The fallback is never retired.
    """
    if config.capacity_x_max is None or running.id == fallback.id:
        return None
    demand = group_demand(junction, estimate, running, config)
    limit = capacity_limit(fallback, demand, config.capacity_x_max, config.capacity_slack)
    over = _over(running, demand, limit)
    if not over:
        return None
    worst = ", ".join(f"{g} x = {x:.2f}" for g, x in over.items())
    return (f"over capacity ({worst}; limit {config.capacity_x_max:.2f} or "
            f"{config.capacity_slack:.2f} x the fallback's worst)")


def _idle(ge: GroupEstimate | None) -> bool:
    """No demand, no pending request and data good enough to believe it."""
    return (
        ge is not None
        and ge.data_ok
        and not ge.demand
        and not ge.ped_waiting_s > 0.0
        and ge.bus_eta_s is None
    )


def skippable_stages(
    junction: JunctionSignals, estimate: Estimate, sequence: Sequence[str]
) -> tuple[str, ...]:
    """Stages of ``sequence`` that may be left out (Phasenanforderung not present).

    Never the first stage (it anchors every switch, D4).  A stage qualifies only
    when every one of its signal groups has trustworthy data, no demand, no
    pending pedestrian request and no pending bus.
    """
    return tuple(
        s for k, s in enumerate(sequence)
        if k > 0 and all(_idle(estimate.groups.get(g)) for g in junction.stage(s).groups)
    )


# -- the delay model ------------------------------------------------------------------


def _hcm_delay(
    q: FloatArray, s: FloatArray, green: FloatArray, cycle: FloatArray, *, t_h: float,
    unserved_s: FloatArray,
) -> FloatArray:
    """HCM 2000 uniform + incremental delay per group (s/veh), broadcast over rows.

    ``green`` is (plans x groups), ``cycle`` (plans x 1).  A group with no green
    at all waits, at worst, its maximum red time ``unserved_s``: the program is
    leased for a few cycles only and the next epoch serves it again.
    """
    served = green > 0.0
    lam = np.clip(green / cycle, 0.0, 1.0)
    cap = s * lam
    safe_cap = np.where(served, cap, 1.0)
    x = q / safe_cap
    denom = 1.0 - np.minimum(x, 1.0) * lam
    d1 = np.where(lam >= 1.0, 0.0, 0.5 * cycle * (1.0 - lam) ** 2 / np.where(
        denom > 0.0, denom, 1.0))
    d2 = 900.0 * t_h * ((x - 1.0) + np.sqrt((x - 1.0) ** 2 + 4.0 * x / (safe_cap * t_h)))
    return np.where(served, d1 + d2, unserved_s)


@dataclass(frozen=True)
class _Model:
    """Linear map from stage greens to group greens and cycle for one sequence.

    group green = A @ stage greens + extra (seconds of green a group gets in
    transitions, e.g. a group that starts early or runs on); cycle = sum of
    stage greens + lost.  Both taken from one compiled reference plan.

    ``red_rows @ G <= red_rhs`` is the maximum-red rule (Höchstsperrzeit,
    safety.md V5) for every signal group the sequence serves, pedestrians too:
    each red gap within the cycle, the red across the switch from the running
    program, and the red across the switch back to the fallback (D4).
    """

    sequence: tuple[str, ...]
    mins: FloatArray
    a: FloatArray
    extra: FloatArray
    lost: float
    q: FloatArray
    s: FloatArray
    unserved: FloatArray
    t_h: float
    x_max: float
    red_rows: FloatArray
    red_rhs: FloatArray

    def red_excess(self, stage_greens: FloatArray) -> FloatArray:
        """Seconds by which red times exceed a group's maximum red, summed per row."""
        g = np.atleast_2d(stage_greens)
        excess = np.maximum(g @ self.red_rows.T - self.red_rhs, 0.0)
        return np.asarray(excess.sum(axis=1), dtype=np.float64)

    def evaluate(self, stage_greens: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(mean delay, total degree-of-saturation excess) for each row of stage greens."""
        g = np.atleast_2d(stage_greens)
        green = g @ self.a.T + self.extra
        cycle = g.sum(axis=1, keepdims=True) + self.lost
        total_q = float(self.q.sum())
        if total_q <= 0.0:
            zeros = np.zeros(g.shape[0])
            return zeros, zeros
        d = _hcm_delay(self.q, self.s, green, cycle, t_h=self.t_h, unserved_s=self.unserved)
        mean = (d * self.q).sum(axis=1) / total_q
        with np.errstate(divide="ignore"):
            x = np.where(green > 0.0, self.q * cycle / (self.s * np.maximum(green, 1e-9)), np.inf)
        excess = np.where(self.q > 0.0, np.maximum(x - self.x_max, 0.0), 0.0).sum(axis=1)
        return mean, excess


def _model(
    junction: JunctionSignals,
    sequence: tuple[str, ...],
    reference: SignalProgram,
    demand: Mapping[str, Demand],
    *,
    running: SignalProgram,
    fallback: SignalProgram,
    config: OptimiserConfig,
) -> _Model:
    ids = [g for g in demand if g in junction.group_ids]
    plan = reference.stage_plan
    assert plan is not None
    greens = stage_green_times(reference)
    a = np.array(
        [[1.0 if g in junction.stage(st).groups else 0.0 for st in sequence] for g in ids]
    ).reshape(len(ids), len(sequence))
    stage_g = np.array(plan.greens_s, dtype=float)
    extra = np.array([greens.get(g, 0) for g in ids], dtype=float) - a @ stage_g
    red_rows, red_rhs = _red_rules(junction, reference, running, fallback)
    return _Model(
        sequence=sequence,
        mins=np.array(stage_min_greens(junction, sequence), dtype=float),
        a=a,
        extra=extra,
        lost=float(reference.cycle_s - sum(plan.greens_s)),
        q=np.array([demand[g].flow_veh_h for g in ids], dtype=float),
        s=np.array([demand[g].saturation_veh_h for g in ids], dtype=float),
        unserved=np.array([float(junction.group(g).max_red_s) for g in ids]),
        t_h=config.analysis_period_h,
        x_max=config.max_degree_of_saturation,
        red_rows=red_rows,
        red_rhs=red_rhs,
    )


def _red_rules(
    junction: JunctionSignals,
    reference: SignalProgram,
    running: SignalProgram,
    fallback: SignalProgram,
) -> tuple[FloatArray, FloatArray]:
    """Maximum-red rows ``M G <= r`` from the reference program's green intervals.

    Every green start and end is a cycle second t that moves with the stage
    greens: t = sum of G_k over the stages whose green ends at or before t,
    plus a constant (transitions).  A red gap from end t1 to start t2 is then
    linear in G, and so are the red before the first green start (after the
    running program's last green end) and after the last green end (before the
    fallback's first green start).  Groups the sequence never serves (a skipped
    stage) are left to the validator.
    """
    plan = reference.stage_plan
    assert plan is not None
    n = len(plan.sequence)
    cycle = reference.cycle_s
    ends = np.array([end for _, end, _ in stage_timing(junction, plan)], dtype=float)
    g_ref = np.array(plan.greens_s, dtype=float)

    def point(t: float) -> tuple[FloatArray, float]:
        row = (ends <= t).astype(float)
        return row, t - float(row @ g_ref)

    rows: list[FloatArray] = []
    rhs: list[float] = []

    def rule(row: FloatArray, const: float, limit: float) -> None:
        rows.append(row)
        rhs.append(limit - const)

    for g in junction.groups:
        ivs = sorted(reference.greens.get(g.id, ()))
        if not ivs or ivs[0][1] - ivs[0][0] >= cycle:
            continue
        limit = float(g.max_red_s)
        for k, (_, e) in enumerate(ivs):
            s_next = ivs[(k + 1) % len(ivs)][0]
            e_row, e_c = point(e % cycle if e > cycle else e)
            s_row, s_c = point(s_next)
            if k + 1 == len(ivs) and e <= cycle:
                # The gap runs over the cycle boundary: it also spans one whole cycle.
                rule(s_row - e_row + 1.0, s_c - e_c + (cycle - float(g_ref.sum())), limit)
            else:
                rule(s_row - e_row, s_c - e_c, limit)
        if not reference.is_green(g.id, 0):
            s_row, s_c = point(ivs[0][0])
            rule(s_row, s_c + _red_at_end(running, g.id), limit)
        if not reference.is_green(g.id, cycle - 1):
            last = max(e for _, e in ivs if e <= cycle)
            e_row, e_c = point(last)
            after = float(cycle - float(g_ref.sum()))
            rule(1.0 - e_row, after - e_c + _red_at_start(fallback, g.id), limit)
    if not rows:
        return np.zeros((0, n)), np.zeros(0)
    return np.array(rows), np.array(rhs)


def _red_at_end(program: SignalProgram, group_id: str) -> float:
    """Seconds a group has been red when ``program``'s cycle ends."""
    c = program.cycle_s
    if program.is_green(group_id, c - 1):
        return 0.0
    ends = [e if e <= c else e - c for _, e in program.greens.get(group_id, ())]
    # A group the program never serves has been red for as long as anyone can tell.
    return float(c - max(ends)) if ends else float(c)


def _red_at_start(program: SignalProgram, group_id: str) -> float:
    """Seconds from ``program``'s cycle start to a group's first green."""
    if program.is_green(group_id, 0):
        return 0.0
    starts = [s for s, _ in program.greens.get(group_id, ())]
    return float(min(starts)) if starts else float(program.cycle_s)


def analytic_delay_s(
    junction: JunctionSignals,
    program: SignalProgram,
    demand: Mapping[str, Demand],
    config: OptimiserConfig = OptimiserConfig(),
) -> float:
    """Flow-weighted mean vehicle delay (s/veh) of a compiled program.

    Uses each group's actual green seconds per cycle, so transitions in which
    a group starts early or runs on count as green.
    """
    ids = [g for g in demand if g in junction.group_ids]
    q = np.array([demand[g].flow_veh_h for g in ids], dtype=float)
    total = float(q.sum())
    if total <= 0.0:
        return 0.0
    greens = stage_green_times(program)
    green = np.array([[float(greens.get(g, 0)) for g in ids]])
    s = np.array([demand[g].saturation_veh_h for g in ids], dtype=float)
    unserved = np.array([float(junction.group(g).max_red_s) for g in ids])
    cycle = np.array([[float(program.cycle_s)]])
    d = _hcm_delay(q, s, green, cycle, t_h=config.analysis_period_h, unserved_s=unserved)
    return float((d[0] * q).sum() / total)


# -- search -------------------------------------------------------------------------


def _objective(model: _Model, strict: bool) -> Callable[[FloatArray], FloatArray]:
    """Mean delay, plus a steep penalty on excess saturation when it can be avoided."""

    def f(g: FloatArray) -> FloatArray:
        mean, excess = model.evaluate(g)
        red = 1e6 * model.red_excess(g)
        return mean + red + 1e4 * excess if strict else mean + red

    return f


def _round(model: _Model, greens: Greens, lo: int, hi: int) -> FloatArray:
    """Whole-second stage greens close to ``greens`` with the cycle within [lo, hi]."""
    mins = [int(m) for m in model.mins]
    lost = round(model.lost)
    cycle = min(max(round(sum(greens) + model.lost), lo), hi)
    available = max(cycle - lost, sum(mins))
    return np.array(split_greens(available, [max(g, 0.0) for g in greens], mins), dtype=float)


def _polish(model: _Model, start: FloatArray, lo: int, hi: int, strict: bool) -> FloatArray:
    """Integer local search: move one second between stages, or add/remove one.

    The delay is convex in each group's green share, so exchange steps of one
    second reach the integer optimum of the split; single-stage steps move the
    cycle within [lo, hi].
    """
    f = _objective(model, strict)
    n = len(start)
    moves: list[FloatArray] = []
    for a_ in range(n):
        for b in range(n):
            if a_ != b:
                m = np.zeros(n)
                m[a_], m[b] = 1.0, -1.0
                moves.append(m)
    for k in range(n):
        for sign in (1.0, -1.0):
            m = np.zeros(n)
            m[k] = sign
            moves.append(m)
    steps = np.array(moves).reshape(len(moves), n)
    g = start.copy()
    best = float(f(g)[0])
    for _ in range(400):
        cand = g + steps
        cyc = cand.sum(axis=1) + model.lost
        ok = (cand >= model.mins).all(axis=1) & (cyc >= lo - 1e-9) & (cyc <= hi + 1e-9)
        if not ok.any():
            break
        vals = f(cand[ok])
        k = int(np.argmin(vals))
        if not float(vals[k]) < best - 1e-9:
            break
        g = cand[ok][k]
        best = float(vals[k])
    return g


def _slsqp(model: _Model, start: FloatArray, lo: int, hi: int) -> tuple[FloatArray, bool]:
    """Continuous delay-optimal stage greens; True when every x <= x_max could be kept.

    All constraints are linear in the stage greens G:

    - G_k >= min green of stage k (bounds);
    - lo <= sum G + L <= hi (cycle window);
    - sum G + L - (A_r G + e_r) <= max red, for every served group (V5);
    - x_max s (A G + e) - q (sum G + L) >= 0 for every loaded group, i.e. x <= x_max;
      dropped again when no plan can meet it (the junction is oversaturated).
    """
    n = len(model.mins)
    bounds = [(float(m), float(max(hi - model.lost, m))) for m in model.mins]
    cons: list[LinearConstraint] = [
        LinearConstraint(np.ones((1, n)), lo - model.lost, hi - model.lost)
    ]
    if len(model.red_rhs):
        cons.append(LinearConstraint(model.red_rows, -np.inf, model.red_rhs))
    loaded = model.q > 0.0

    def fun(g: FloatArray) -> float:
        return float(model.evaluate(np.clip(g, model.mins, None))[0][0])

    x0 = np.clip(start, model.mins, None)
    options = {"maxiter": 100, "ftol": 1e-4}
    if loaded.any():
        rows = model.x_max * model.s[loaded, None] * model.a[loaded] - model.q[loaded, None]
        rhs = model.q[loaded] * model.lost - model.x_max * model.s[loaded] * model.extra[loaded]
        x_con = LinearConstraint(rows, rhs, np.inf)
        res = minimize(fun, x0, method="SLSQP", bounds=bounds, constraints=[*cons, x_con],
                       options=options)
        if res.success and np.all(x_con.residual(res.x)[0] >= -1e-3):
            return np.asarray(res.x, dtype=float), True
    res = minimize(fun, x0, method="SLSQP", bounds=bounds, constraints=cons, options=options)
    x = np.asarray(res.x, dtype=float) if np.all(np.isfinite(res.x)) else x0
    return x, False


# -- helpers --------------------------------------------------------------------------


def _program_id(prefix: str, plan: StagePlan) -> str:
    # A digest, not hash(): ids must be the same in every process and run.
    text = f"{','.join(plan.sequence)}|{','.join(map(str, plan.greens_s))}|{plan.offset_s}"
    if plan.short_walks:
        text += f"|walks:{','.join(sorted(plan.short_walks))}"
    return f"{prefix}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def _key(program: SignalProgram) -> tuple[object, ...]:
    return (program.cycle_s, program.offset_s, tuple(sorted(program.greens.items())))


def _window(
    junction: JunctionSignals, running: SignalProgram, config: OptimiserConfig
) -> tuple[int, int, int]:
    """(lo, hi, hard max): the cycles reachable this epoch and the absolute maximum."""
    c_min, c_max = config.cycle_limits(junction)
    c0 = min(max(running.cycle_s, c_min), c_max)
    lo = max(c_min, c0 - config.max_cycle_change_s)
    hi = min(c_max, c0 + config.max_cycle_change_s)
    return lo, hi, c_max


def _with_skips(sequence: tuple[str, ...], skip: frozenset[str]) -> tuple[str, ...] | None:
    seq = tuple(s for s in sequence if s not in skip)
    # After a skip two equal stages may meet (a sequence that serves a stage twice);
    # the compiler cannot express that, so the variant is dropped.
    if len(seq) > 1 and any(seq[k] == seq[(k + 1) % len(seq)] for k in range(len(seq))):
        return None
    return seq


# -- propose --------------------------------------------------------------------------


class _Builder:
    """State of one ``propose`` call: models per sequence and the plans found so far."""

    def __init__(
        self,
        junction: JunctionSignals,
        *,
        demand: Mapping[str, Demand],
        running: SignalProgram,
        fallback: SignalProgram,
        config: OptimiserConfig,
        prefix: str,
    ) -> None:
        self.j = junction
        self.demand = demand
        self.running = running
        self.fallback = fallback
        self.cfg = config
        self.prefix = prefix
        self.offset = fallback.stage_plan.offset_s if fallback.stage_plan else fallback.offset_s
        # Short walks the running plan has carry over to every plan built here: once the
        # twin chose them, cycle and split variants are judged with them too.
        self.walks = running.stage_plan.short_walks if running.stage_plan else frozenset()
        self.lo, self.hi, self.c_max = _window(junction, running, config)
        self._models: dict[tuple[str, ...], _Model | None] = {}
        self._bounds: dict[tuple[str, ...], tuple[int, int] | None] = {}

    def flow_ratios(self) -> dict[str, float]:
        return {g: d.flow_veh_h / d.saturation_veh_h for g, d in self.demand.items()}

    def plan(self, seq: tuple[str, ...], greens: Greens) -> StagePlan:
        walks = self.walks & frozenset(g for st in seq for g in self.j.stage(st).groups)
        return StagePlan(seq, tuple(round(float(g)) for g in greens), self.offset, walks)

    def compile(self, seq: tuple[str, ...], greens: Greens) -> SignalProgram:
        return self.compile_plan(self.plan(seq, greens))

    def compile_plan(self, plan: StagePlan) -> SignalProgram:
        return compile_plan(self.j, plan, _program_id(self.prefix, plan))

    def bounds(self, seq: tuple[str, ...]) -> tuple[int, int] | None:
        """Cycle window for ``seq``; wider than the epoch window only when its floor forces it."""
        if seq not in self._bounds:
            floor = (lost_time_s(self.j, seq) if len(seq) > 1 else 0) + sum(
                stage_min_greens(self.j, seq)
            )
            lo = max(self.lo, floor)
            self._bounds[seq] = None if lo > self.c_max else (lo, max(self.hi, lo))
        return self._bounds[seq]

    def webster(self, seq: tuple[str, ...], lo: int, hi: int) -> StagePlan:
        return webster_plan(self.j, seq, self.flow_ratios(), min_cycle_s=lo, max_cycle_s=hi).plan

    def model(self, seq: tuple[str, ...]) -> _Model | None:
        if seq not in self._models:
            b = self.bounds(seq)
            if b is None:
                self._models[seq] = None
            else:
                ref = self.compile(seq, self.webster(seq, *b).greens_s)
                self._models[seq] = _model(
                    self.j, seq, ref, self.demand, running=self.running,
                    fallback=self.fallback, config=self.cfg,
                )
        return self._models[seq]

    def optimal(
        self, seq: tuple[str, ...], lo: int | None = None, hi: int | None = None
    ) -> tuple[FloatArray, bool] | None:
        """Delay-optimal whole-second greens for ``seq`` with the cycle in [lo, hi]."""
        m, b = self.model(seq), self.bounds(seq)
        if m is None or b is None:
            return None
        lo_, hi_ = b
        lo = lo_ if lo is None else min(max(lo, lo_), hi_)
        hi = hi_ if hi is None else min(max(hi, lo), hi_)
        start = np.array(self.webster(seq, lo, hi).greens_s, dtype=float)
        if lo == hi:
            # A fixed cycle leaves only the split: the exchange search finds it exactly.
            strict = bool(m.evaluate(start)[1][0] <= 0.0)
            return _polish(m, start, lo, hi, strict), strict
        cont, strict = _slsqp(m, start, lo, hi)
        return _polish(m, _round(m, cont, lo, hi), lo, hi, strict), strict


def propose(
    junction: JunctionSignals,
    estimate: Estimate,
    running: SignalProgram,
    fallback: SignalProgram,
    *,
    config: OptimiserConfig = OptimiserConfig(),
    program_prefix: str = "atsc",
) -> list[Candidate]:
    """Candidate signal programs for the next epoch, most promising first.

    The first candidate is the delay-optimal one (when it passes the gate),
    then the fallback, then event-driven variants (bus, pedestrian, stage
    skipping) and cycle and split variants.  Every returned program passes
    ``controller.safety.validate`` from ``running``; identical programs appear
    once.  The switch back to ``fallback`` (D4) is the core's gate to check: a
    few candidates fail it (0.6 % in session 14's runs) and are refused after
    scoring.  Filtering them here lets lower-priority entries fill the set
    instead, which measured no better (docs/adaptive.md, session 17).  Without a
    stage plan on the fallback only the fallback itself can be offered.
    """
    demand = group_demand(junction, estimate, running, config)
    b = _Builder(
        junction, demand=demand, running=running, fallback=fallback, config=config,
        prefix=program_prefix,
    )
    pool: list[_Entry] = []

    def add(label: str, seq: tuple[str, ...], greens: Greens) -> None:
        pool.append((label, b.plan(seq, greens)))

    seq = fallback.stage_plan.sequence if fallback.stage_plan is not None else ()
    opt: FloatArray | None = None
    if seq:
        opt, pool = _core_candidates(b, seq, pool)
        if opt is not None:
            pool += _short_walk_candidates(b, b.plan(seq, opt))
    pool.insert(1 if pool else 0, ("fallback", fallback))
    if seq:
        _persistence_candidates(b, estimate, seq, add)
    if seq and opt is not None:
        _event_candidates(b, estimate, seq, opt, add)
        _overlap_candidates(b, seq, add)
        _variant_candidates(b, seq, opt, add)
        _fill_candidates(b, seq, add)
    return _gate(b, pool)


def _core_candidates(
    b: _Builder, seq: tuple[str, ...], pool: list[_Entry]
) -> tuple[FloatArray | None, list[_Entry]]:
    """The delay-optimal and the Webster program for the full sequence.

    The delay-optimal program is the best, by its compiled analytic delay, of
    the SLSQP + exchange-search result and the obvious seeds (Webster, the
    running and the fallback split) that lie inside the cycle window.
    """
    found = b.optimal(seq)
    bounds = b.bounds(seq)
    if found is None or bounds is None:
        return None, pool
    greens, strict = found
    m = b.model(seq)
    assert m is not None
    web = b.webster(seq, *bounds)
    options: list[tuple[FloatArray, SignalProgram]] = []
    for g in (greens, np.array(web.greens_s, dtype=float), *_seed_greens(b, seq)):
        try:
            options.append((g, b.compile(seq, g)))
        except ValueError:
            continue

    def rank(opt: tuple[FloatArray, SignalProgram]) -> tuple[bool, bool, float]:
        g, prog = opt
        starves = bool(m.red_excess(g)[0] > 0.0)
        too_saturated = strict and bool(m.evaluate(g)[1][0] > 1e-9)
        return starves, too_saturated, analytic_delay_s(b.j, prog, b.demand, b.cfg)

    inside = [o for o in options if bounds[0] <= o[1].cycle_s <= bounds[1]]
    if not inside:
        return None, pool
    best_g, best = min(inside, key=rank)
    pool.append(("delay-optimal", best))
    pool.append(("webster", web))
    return best_g, pool


def short_walk_groups(junction: JunctionSignals, plan: StagePlan) -> dict[str, frozenset[str]]:
    """Per stage of ``plan``, the pedestrian groups a short walk would cut.

    Those that end early for right turners (``early_end_s``: their crossing lies in a
    turning path) and whose green in this plan is longer than their minimum.
    """
    out: dict[str, frozenset[str]] = {}
    for stage_id, green in zip(plan.sequence, plan.greens_s, strict=True):
        cut = frozenset(
            g for g in junction.stage(stage_id).groups
            if junction.group(g).kind is GroupKind.PEDESTRIAN and junction.early_end(g)
            and green - junction.early_end(g) > junction.group(g).min_green_s
        )
        if cut:
            out[stage_id] = cut
    return out


def _short_walk_candidates(b: _Builder, plan: StagePlan) -> list[_Entry]:
    """``plan`` (the delay-optimal one) with short walks: per stage, and on all at once.

    When the running plan has short walks, every plan of this epoch inherits them
    (``_Builder.plan``) and the delay-optimal plan with full walks is offered instead.

    A right turner released with the parallel crossing waits while pedestrians walk; on a
    shared lane the vehicles behind it wait too, so a long pedestrian green can cost the
    turning movement most of its green.  A walk cut to its minimum gives the turners the
    rest of the stage, and the pedestrians who arrive later wait for the next cycle.  The
    analytic model sees neither; the twin weighs both (its yield holds and its pedestrian
    delay follow the pedestrian green), so the choice is left to it.
    """
    out: list[_Entry] = []
    if plan.short_walks:
        # Carried over from the running plan: the way back is a candidate too.
        out.append(("delay-optimal+full-walks", replace(plan, short_walks=frozenset())))
    by_stage = {
        stage_id: cut | plan.short_walks
        for stage_id, cut in short_walk_groups(b.j, plan).items()
        if not cut <= plan.short_walks
    }
    out += [
        (f"delay-optimal+short-walk-{stage_id}", replace(plan, short_walks=cut))
        for stage_id, cut in by_stage.items()
    ]
    if len(by_stage) > 1:
        every = frozenset().union(*by_stage.values())
        out.append(("delay-optimal+short-walks", replace(plan, short_walks=every)))
    return out


def persistent_groups(
    estimate: Estimate, config: OptimiserConfig = OptimiserConfig()
) -> dict[str, float]:
    """Groups whose queue persisted at the end of red, with the mean carry-over (veh).

    Persistent: the carry-over (queue at the end of red that the red's own arrivals
    do not explain) was at least ``persist_min_veh`` in each of the last
    ``persist_cycles`` cycles, or the queue covers the group's upstream loop.
    """
    out: dict[str, float] = {}
    k = config.persist_cycles
    for gid, ge in estimate.groups.items():
        carry = [_finite(c) for c in ge.carryover_veh[-k:]]
        lasting = len(carry) >= k and min(carry) >= config.persist_min_veh
        if lasting or (ge.spillback and ge.red_end_queue_veh
                       and ge.red_end_queue_veh[-1] >= config.persist_min_veh):
            out[gid] = max(sum(carry) / len(carry) if carry else 0.0, config.persist_min_veh)
    return out


def _persistence_candidates(
    b: _Builder,
    estimate: Estimate,
    seq: tuple[str, ...],
    add: Callable[[str, tuple[str, ...], Greens], None],
) -> None:
    """The running cycle with green moved to the stage whose queue persists.

    Whole seconds are taken one at a time from the stage with the most slack above
    its minimum green among the stages that serve no persistent group, so the
    cycle (and every other stage's minimum) stays.  Two sizes: the seconds that
    discharge the mean carry-over at saturation flow (capped at
    ``persist_max_shift_s``) and half of them.  A shift that would break a maximum
    red the running split keeps is shortened until it does not.
    """
    run = b.running.stage_plan
    if run is None or run.sequence != seq:
        return
    persist = {g: c for g, c in persistent_groups(estimate, b.cfg).items()
               if g in b.j.group_ids and b.j.group(g).is_vehicular}
    if not persist:
        return
    greens = np.array(run.greens_s, dtype=float)
    mins = np.array(stage_min_greens(b.j, seq), dtype=float)

    def need_s(gid: str) -> float:
        d = b.demand.get(gid)
        sat = d.saturation_veh_h if d is not None else b.cfg.default_saturation_veh_h
        return persist[gid] * 3600.0 / sat

    gid = max(sorted(persist), key=need_s)
    k = _stage_of(b.j, seq, gid, greens)
    if k is None:
        return
    donors = [i for i, st in enumerate(seq)
              if i != k and not any(g in persist for g in b.j.stage(st).groups)]
    if not donors:
        return
    m = b.model(seq)
    base_excess = float(m.red_excess(greens)[0]) if m is not None else 0.0
    full = min(math.ceil(need_s(gid)), b.cfg.persist_max_shift_s)
    for size in sorted({full, max(1, full // 2)}):
        g = greens.copy()
        moved = 0
        for _ in range(size):
            slack = {i: g[i] - mins[i] for i in donors if g[i] - mins[i] >= 1.0}
            if not slack:
                break
            i = max(slack, key=lambda i: (slack[i], -i))
            trial = g.copy()
            trial[i] -= 1.0
            trial[k] += 1.0
            if m is not None and float(m.red_excess(trial)[0]) > base_excess:
                break
            g = trial
            moved += 1
        if moved:
            add(f"persist-{seq[k]}+{moved}s", seq, g)


def _seed_greens(b: _Builder, seq: tuple[str, ...]) -> list[FloatArray]:
    out: list[FloatArray] = []
    for prog in (b.running, b.fallback):
        plan = prog.stage_plan
        if plan is not None and plan.sequence == seq:
            out.append(np.array(plan.greens_s, dtype=float))
    return out


def _event_candidates(
    b: _Builder,
    estimate: Estimate,
    seq: tuple[str, ...],
    opt: FloatArray,
    add: Callable[[str, tuple[str, ...], Greens], None],
) -> None:
    """Bus priority, early pedestrian service and stage skipping."""
    bounds = b.bounds(seq)
    assert bounds is not None
    mins = np.array(stage_min_greens(b.j, seq), dtype=float)
    m = b.model(seq)
    assert m is not None
    cycle = float(opt.sum() + m.lost)
    done: set[int] = set()
    for gid in sorted(estimate.groups):
        ge = estimate.groups[gid]
        eta = ge.bus_eta_s
        if eta is None or not math.isfinite(eta) or gid not in b.j.group_ids:
            continue
        if eta > b.cfg.bus_horizon_cycles * cycle:
            continue
        k = _stage_of(b.j, seq, gid, opt)
        if k is None or k in done:
            continue
        done.add(k)
        longer = _extend(opt, mins, k, ext=b.cfg.bus_extension_s, lost=m.lost, hi=bounds[1])
        add(f"bus-{gid}", seq, longer)
    served: set[int] = set()
    waiting = sorted(
        (g for g, ge in estimate.groups.items()
         if g in b.j.group_ids and _finite(ge.ped_waiting_s) >= b.cfg.ped_wait_threshold_s),
        key=lambda g: -estimate.groups[g].ped_waiting_s,
    )
    for gid in waiting:
        k = _stage_of(b.j, seq, gid, opt, first=True)
        if k is None or k in served:
            continue
        served.add(k)
        add(f"ped-{gid}", seq, _serve_early(opt, mins, k, m.lost, bounds[0]))
    skippable = skippable_stages(b.j, estimate, seq)
    variants: list[frozenset[str]] = []
    if skippable:
        variants.append(frozenset(skippable))
        variants += [frozenset({s}) for s in skippable if len(skippable) > 1]
    for skip in variants[: b.cfg.max_skip_variants]:
        short = _with_skips(seq, skip)
        if not short:
            continue
        found = b.optimal(short)
        if found is not None:
            add("skip-" + "+".join(s for s in seq if s in skip), short, found[0])


def overlap_sequences(
    junction: JunctionSignals, seq: tuple[str, ...], flow_ratio: Mapping[str, float]
) -> list[tuple[str, tuple[str, ...]]]:
    """Sequences with an overlap stage inserted, as ``(label, sequence)``.

    At each position of ``seq`` where overlap stages fit (``overlap_position``), the one
    whose own groups (those not in every fitting overlap) carry the highest flow ratio:
    the heavier arm's left turn leads.  One sequence per position, then, where there are
    several positions, one with all of them.
    """
    fits = {o.id: junction.overlap_position(o.id, seq) for o in junction.overlap_stages}
    best: dict[int, str] = {}
    for k in range(len(seq)):
        fitting = [o for o, at in fits.items() if at[k]]
        if not fitting:
            continue
        common = frozenset.intersection(*(junction.stage(o).groups for o in fitting))

        def load(o: str, common: frozenset[str] = common) -> float:
            return sum(flow_ratio.get(g, 0.0) for g in junction.stage(o).groups - common)

        best[k] = max(sorted(fitting), key=load)

    def insert(positions: Sequence[int]) -> tuple[str, ...]:
        out: list[str] = []
        for k, st in enumerate(seq):
            out.append(st)
            if k in positions:
                out.append(best[k])
        return tuple(out)

    found = [(f"overlap-{best[k]}", insert([k])) for k in sorted(best)]
    if len(best) > 1:
        found.append(("overlap-" + "+".join(best[k] for k in sorted(best)), insert(list(best))))
    return found


def engineered_plan(
    junction: JunctionSignals,
    demand: Mapping[str, Demand],
    reference: SignalProgram,
    *,
    config: OptimiserConfig = OptimiserConfig(),
    program_prefix: str = "engineered",
) -> Candidate:
    """The fixed-time plan an engineer with a delay model would program for a known demand.

    For the reference's stage sequence and for each sequence with leading left turns
    (``overlap_sequences``), the delay-optimal plan (method 2) with the cycle anywhere in
    the junction's window; the one with the lowest analytic delay wins, the reference
    (say the Webster plan) included.  ``demand`` is a traffic count, not an estimate:
    this is a baseline (``fixed-optimised`` in the scenario runner), never a decision
    of the service.  Every option passes ``controller.safety.validate``.
    """
    plan = reference.stage_plan
    if plan is None:
        raise ValueError("the reference program needs a stage plan")
    # The whole cycle window: an engineer's plan does not creep from a running one.
    cfg = replace(config, max_cycle_change_s=junction.max_cycle_s)
    b = _Builder(junction, demand=demand, running=reference, fallback=reference, config=cfg,
                 prefix=program_prefix)
    options: list[tuple[str, SignalProgram]] = [("reference", reference)]
    for label, seq in [("delay-optimal", plan.sequence),
                       *overlap_sequences(junction, plan.sequence, b.flow_ratios())]:
        found = b.optimal(seq)
        if found is None:
            continue
        program = b.compile(seq, found[0])
        if not validate(junction, program):
            options.append((label, program))
    scored = [(analytic_delay_s(junction, p, demand, cfg), label, p) for label, p in options]
    delay, label, program = min(scored, key=lambda o: o[0])
    return Candidate(program=program, label=label, analytic_delay_s=delay)


def _overlap_candidates(
    b: _Builder, seq: tuple[str, ...], add: Callable[[str, tuple[str, ...], Greens], None]
) -> None:
    """The delay-optimal plan of each sequence with a leading left turn (overlap stage)."""
    for label, longer in overlap_sequences(b.j, seq, b.flow_ratios()):
        found = b.optimal(longer)
        if found is not None:
            add(label, longer, found[0])


def _stage_of(
    junction: JunctionSignals, seq: Sequence[str], gid: str, greens: FloatArray,
    first: bool = False,
) -> int | None:
    """Index of the stage serving ``gid``: its first one, or the one with the longest green."""
    ks = [k for k, s in enumerate(seq) if gid in junction.stage(s).groups]
    if not ks:
        return None
    return ks[0] if first else max(ks, key=lambda k: greens[k])


def _extend(
    greens: FloatArray, mins: FloatArray, k: int, *, ext: float, lost: float, hi: int
) -> FloatArray:
    """Stage ``k`` longer by ``ext``: first from the other stages' slack, then a longer cycle."""
    g = greens.copy()
    g[k] += ext
    need = ext
    slack = np.maximum(g - mins, 0.0)
    slack[k] = 0.0
    take = min(need, float(slack.sum()))
    if take > 0:
        g -= slack / slack.sum() * take
        need -= take
    # Whatever the others cannot give comes from a longer cycle, up to the window.
    room = max(0.0, hi - (g.sum() + lost))
    if need > room:
        g[k] -= need - room
    return _whole(g, mins)


def _serve_early(
    greens: FloatArray, mins: FloatArray, k: int, lost: float, lo: int
) -> FloatArray:
    """Stages before ``k`` at their minimum green, so stage ``k`` starts as early as it can.

    The saved seconds go to stage ``k`` (same cycle).  When ``k`` is the first
    stage it is served right at the switch; the variant then shortens the
    cycle so the next service comes sooner.
    """
    g = greens.copy()
    if k == 0:
        others = np.arange(len(g)) != 0
        cut = float((g[others] - mins[others]).sum())
        cut = min(cut, max(0.0, g.sum() + lost - lo))
        slack = (g - mins) * others
        if slack.sum() > 0:
            g -= slack / slack.sum() * cut
        return _whole(g, mins)
    saved = float((g[:k] - mins[:k]).sum())
    g[:k] = mins[:k]
    g[k] += saved
    return _whole(g, mins)


def _whole(g: FloatArray, mins: FloatArray) -> FloatArray:
    """Whole seconds with the same total (largest remainder), never below a minimum."""
    total = round(float(g.sum()))
    ints = [int(m) for m in mins]
    if total < sum(ints):
        return mins.copy()
    return np.array(split_greens(total, [max(x, 0.0) for x in g], ints), dtype=float)


def _variant_candidates(
    b: _Builder,
    seq: tuple[str, ...],
    opt: FloatArray,
    add: Callable[[str, tuple[str, ...], Greens], None],
) -> None:
    """Cycle and split variants around the delay-optimal program."""
    m = b.model(seq)
    bounds = b.bounds(seq)
    assert m is not None and bounds is not None
    lo, hi = bounds
    c_opt = float(opt.sum() + m.lost)
    run = b.running.stage_plan
    if run is not None and set(run.sequence) <= set(seq):
        # The running split re-scaled to the new cycle: the least disruptive change.
        by_stage = dict(zip(run.sequence, run.greens_s, strict=True))
        weights = [float(by_stage.get(s, 0)) for s in seq]
        add("running-rescaled", seq, _round(m, _scale(weights, opt.sum()), lo, hi))
    v = b.cfg.cycle_variation
    # Cycle variants (Umlaufzeit): the optimal split at other cycles, nearest the optimum
    # first, then the ends of the window; where the window clips them together, points
    # in between keep the set diverse.
    c_round = round(c_opt)
    targets = [c_opt * (1 - v), c_opt * (1 + v), lo, hi, c_opt * (1 - 2 * v),
               c_opt * (1 + 2 * v), (lo + c_opt) / 2, (c_opt + hi) / 2]
    cycles: list[int] = []
    for t in targets:
        c = min(max(round(t), lo), hi)
        if c != c_round and c not in cycles:
            cycles.append(c)
    for c in cycles:
        found = b.optimal(seq, c, c)
        if found is not None:
            add(f"cycle-{c}s", seq, found[0])
    # Equal degree of saturation at the optimal cycle (Webster's split rule).
    c = round(c_opt)
    add("equisaturation", seq, b.webster(seq, c, c).greens_s)
    # Hedges against a wrong estimate for one stage: the optimal split tilted towards
    # each stage in turn, the most loaded stage first.
    tilt = float(b.cfg.split_tilt_s)
    load = m.a.T @ (m.q / m.s)
    for k in sorted(range(len(seq)), key=lambda k: -load[k]):
        g = opt.copy()
        slack = np.maximum(g - m.mins, 0.0)
        slack[k] = 0.0
        take = min(tilt, float(slack.sum()))
        if take <= 0:
            continue
        g -= slack / slack.sum() * take
        g[k] += take
        add(f"favour-{seq[k]}", seq, _whole(g, m.mins))


def _fill_candidates(
    b: _Builder, seq: tuple[str, ...], add: Callable[[str, tuple[str, ...], Greens], None]
) -> None:
    """Last in the pool: the fallback's split at other cycles of the window.

    Used only when the entries before them leave the set short (``_gate`` stops at
    ``n_candidates``).  Under heavy demand the capacity rule repairs many variants back
    to the same plan, and the twin would choose among too few.  The fallback's split
    keeps each group's degree of saturation at or below the fallback's at a longer
    cycle (the lost time weighs less), so those pass the rule as they are; shorter
    cycles come after them.
    """
    m, bounds, fb = b.model(seq), b.bounds(seq), b.fallback.stage_plan
    if m is None or bounds is None or fb is None or fb.sequence != seq:
        return
    lo, hi = bounds
    # Every other second of the window: the repair may map neighbours onto one plan.
    cycles = list(range(lo, hi + 1, 2))
    c_fb = b.fallback.cycle_s
    ordered = [c for c in cycles if c >= c_fb] + [c for c in reversed(cycles) if c < c_fb]
    for c in ordered:
        greens = _round(m, _scale([float(g) for g in fb.greens_s], c - m.lost), c, c)
        add(f"fallback-{c}s", seq, greens)


def _scale(weights: Sequence[float], total: float) -> list[float]:
    s = sum(weights)
    if s <= 0:
        return [total / max(len(weights), 1)] * len(weights)
    return [w * total / s for w in weights]


def _gate(b: _Builder, pool: Sequence[_Entry]) -> list[Candidate]:
    """Deduplicate, compile, drop over-long cycles, keep what passes the safety validator
    and the capacity rule (``OptimiserConfig.capacity_x_max``).

    Entries are compiled and checked in priority order and the work stops once
    enough have passed: compiling and validating cost far more than proposing.
    """
    junction, running, fallback, config = b.j, b.running, b.fallback, b.cfg
    _, c_max = config.cycle_limits(junction)
    running_key = _key(running)
    plans_seen: set[StagePlan] = set()
    tried: set[tuple[object, ...]] = set()
    out: list[Candidate] = []
    # The capacity rule's yardstick, the fallback under this demand, once per call.
    limit: float | None = None
    if config.capacity_x_max is not None:
        limit = capacity_limit(fallback, b.demand, config.capacity_x_max, config.capacity_slack)
        x_fallback = degrees_of_saturation(fallback, b.demand)
    for label, entry in pool:
        if len(out) >= config.n_candidates:
            break
        if isinstance(entry, StagePlan):
            if entry in plans_seen:
                continue
            plans_seen.add(entry)
            try:
                prog = b.compile_plan(entry)
            except ValueError:
                continue  # a plan the compiler cannot express is simply not a candidate
        else:
            prog = entry
        key = _key(prog)
        # The caller scores the running program anyway; only the fallback may repeat it,
        # because switching back to the fallback is itself a decision.
        if key in tried or (key == running_key and prog is not fallback):
            continue
        tried.add(key)
        if prog.cycle_s > c_max or validate(junction, prog, previous=running):
            continue
        name = label
        over = _over(prog, b.demand, limit) if limit is not None and prog is not fallback else {}
        if over:
            assert limit is not None
            # Repaired: the same plan with the starved groups' stages given the green
            # the rule asks for, taken from the other stages (keeps the set diverse).
            repaired = _capacity_repair(b, prog, tuple(over), limit, x_fallback)
            if repaired is None or _key(repaired) in tried or _key(repaired) == running_key:
                continue
            prog, name = repaired, f"{label}+capacity"
            tried.add(_key(prog))
            if validate(junction, prog, previous=running) or _over(prog, b.demand, limit):
                continue
        out.append(Candidate(prog, name, analytic_delay_s(junction, prog, b.demand, config)))
    return out


def _capacity_repair(
    b: _Builder,
    program: SignalProgram,
    over: Sequence[str],
    limit: float,
    x_fallback: Mapping[str, float],
) -> SignalProgram | None:
    """``program`` with green moved to the stages of the ``over`` groups, or None.

    Each group gets the whole seconds that bring its degree of saturation back to
    the fallback's for that group (at least ``capacity_x_max``, at most the rule's
    limit), on its longest stage, taken one second at a time from
    the stage with the most green above its minimum among the stages that serve
    no ``over`` group; the cycle stays.  None when the plan has no stage plan,
    the donors run out, or the result cannot be compiled.
    """
    plan = program.stage_plan
    x_max = b.cfg.capacity_x_max
    if plan is None or x_max is None:
        return None
    seq = plan.sequence
    greens = np.array(plan.greens_s, dtype=float)
    mins = np.array(stage_min_greens(b.j, seq), dtype=float)
    have = stage_green_times(program)
    donors = [i for i, st in enumerate(seq) if not set(over) & set(b.j.stage(st).groups)]
    for gid in over:
        d = b.demand[gid]
        k = _stage_of(b.j, seq, gid, greens)
        if k is None:
            return None
        # Back to the fallback's degree of saturation for this group (x_max at least, the
        # limit at most): repairing only up to the limit would leave every repaired plan
        # starving the group as far as the rule allows.
        target = min(limit, max(x_max, x_fallback.get(gid, 0.0)))
        need = math.ceil(d.arrivals * program.cycle_s / (d.saturation_veh_h * target))
        for _ in range(max(0, need - have.get(gid, 0))):
            spare = {i: greens[i] - mins[i] for i in donors if greens[i] - mins[i] >= 1.0}
            if not spare:
                return None
            i = max(spare, key=lambda i: (spare[i], -i))
            greens[i] -= 1.0
            greens[k] += 1.0
    try:
        return b.compile(seq, greens)
    except ValueError:
        return None
