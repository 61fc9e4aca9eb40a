"""Safety validator (Sicherheitsprüfung) for signal programs and program switches.

Every signal program that leaves the service passes here first (safety.md
V1-V6 and D4).  The hardware checks again with its own, independent code
(``sim.monitor``); property tests make the two agree.

The validator works on green intervals, never on a per-second expansion: from
each group's green intervals it derives, analytically, the segments of equal
signal state (green, yellow after each green end, red-yellow before each
green start, red otherwise; the same rules as ``controller.plans.group_states``)
and checks the rules on those segments:

- V1 conflicts (feindliche Signalgruppen): conflicting groups never show a
  non-red state (green, yellow, red-yellow) at the same time;
- V2 intergreen (Zwischenzeit): from each green end of ``i`` to the following
  green start of a conflicting ``j`` at least ``Z[i][j]``;
- V3 transitions (Übergangszeiten): yellow and red-yellow of the configured,
  rule-conform lengths, never skipped or cut, and at least the all-red time
  (Alles-Rot) of pure red before a group's green starts again;
- V4 minimum green (Mindestfreigabezeit);
- V5 cycle (Umlaufzeit) and maximum red (Höchstsperrzeit) limits;
- V6 complete, well-formed program structure.

Switches (D4, Programmwechsel): the old program runs whole cycles; at an old
cycle boundary the new program starts at its own cycle second 0.  The shown
states are the old program's states up to the switch and the new program's
states from it; V1-V5 are checked on that concatenated timeline (see
docs/safety-validator.md).

Pure: no I/O, no SUMO.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from controller.plans import SignalProgram
from controller.signals import CYCLE_CEILING_S, GroupKind, JunctionSignals, SignalGroup

__all__ = [
    "DEFAULT_LIMITS",
    "SafetyLimits",
    "Violation",
    "switch_window",
    "validate",
    "validate_program",
    "validate_switch",
]

_G, _Y, _U, _R = "G", "y", "u", "r"

#: Cycles of a program the checks look at: the first has no history (like a
#: monitor that has just been switched on), the second and third show every
#: event of the cycle with its full history.
PROGRAM_CYCLES = 3


@dataclass(frozen=True)
class Violation:
    """One broken rule, naming the rule and the signal groups involved.

    ``at_s`` is the cycle second for program checks and the second relative
    to the switch point (negative: before it) for switch checks; ``None``
    when the rule is about the program as a whole.  For ``rule == "D4"``,
    ``subrule`` says which of V1-V6 the switch breaks.
    """

    rule: str
    groups: tuple[str, ...]
    message: str
    at_s: int | None
    subrule: str | None = None

    def __str__(self) -> str:
        return self.message


def _default_yellow() -> Mapping[int, int]:
    return MappingProxyType({50: 3, 60: 4, 70: 5})


def _default_floors() -> Mapping[GroupKind, int]:
    return MappingProxyType(
        {GroupKind.VEHICLE: 5, GroupKind.BICYCLE: 5, GroupKind.BUS: 5, GroupKind.PEDESTRIAN: 5}
    )


@dataclass(frozen=True)
class SafetyLimits:
    """Rule values from safety.md an engineer may override; the optimiser never does.

    ``yellow_by_speed_kmh``: Gelbzeit by approach speed; a group's yellow must
    equal the entry of the smallest listed speed at or above its own.
    ``crossing_m``: length of each pedestrian crossing (Furtlänge); a
    pedestrian green must last long enough to reach the middle of it at
    ``walking_speed_mps``.  ``all_red_s`` and ``max_cycle_s`` default to the
    junction's own values (set them to override those); no cycle may exceed
    ``CYCLE_CEILING_S``.
    """

    yellow_by_speed_kmh: Mapping[int, int] = field(default_factory=_default_yellow, hash=False)
    min_red_yellow_s: int = 1
    max_red_yellow_s: int = 2
    all_red_s: int | None = None
    min_green_floor_s: Mapping[GroupKind, int] = field(default_factory=_default_floors, hash=False)
    walking_speed_mps: float = 1.2
    crossing_m: Mapping[str, float] = field(default_factory=dict, hash=False)
    max_cycle_s: int | None = None

    def __post_init__(self) -> None:
        if not 1.0 <= self.walking_speed_mps <= 1.5:
            raise ValueError("walking speed must be 1.0-1.5 m/s (safety.md V4)")
        if not 0 <= self.min_red_yellow_s <= self.max_red_yellow_s <= 2:
            raise ValueError("red-yellow limits must satisfy 0 <= min <= max <= 2 s")
        if self.max_cycle_s is not None and not 0 < self.max_cycle_s <= CYCLE_CEILING_S:
            raise ValueError(f"max cycle must be 1..{CYCLE_CEILING_S} s")
        if self.all_red_s is not None and self.all_red_s < 0:
            raise ValueError("all-red time must not be negative")
        for name in ("yellow_by_speed_kmh", "min_green_floor_s", "crossing_m"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def yellow_for(self, speed_kmh: int) -> int | None:
        """Required yellow for an approach speed; ``None`` above the table."""
        for speed in sorted(self.yellow_by_speed_kmh):
            if speed_kmh <= speed:
                return self.yellow_by_speed_kmh[speed]
        return None

    def min_green_for(self, group: SignalGroup) -> int:
        """Effective minimum green: the largest of the group's own value and the rule floors."""
        need = max(group.min_green_s, self.min_green_floor_s.get(group.kind, 0))
        crossing = self.crossing_m.get(group.id)
        if group.kind is GroupKind.PEDESTRIAN and crossing is not None:
            need = max(need, math.ceil(crossing / 2.0 / self.walking_speed_mps))
        return need

    def all_red_for(self, junction: JunctionSignals) -> int:
        return junction.all_red_same_stage_s if self.all_red_s is None else self.all_red_s

    def cycle_limit(self, junction: JunctionSignals) -> int:
        own = junction.max_cycle_s if self.max_cycle_s is None else self.max_cycle_s
        return min(own, CYCLE_CEILING_S)


#: The limits of safety.md with the junction's own cycle and all-red values.
DEFAULT_LIMITS = SafetyLimits()


# -- structure (V6) -----------------------------------------------------------


def _structure(junction: JunctionSignals, program: SignalProgram) -> list[Violation]:
    out: list[Violation] = []
    cycle = program.cycle_s
    if isinstance(cycle, bool) or not isinstance(cycle, int) or cycle <= 0:
        return [Violation("V6", (), f"V6: cycle {cycle!r} is not a positive whole second", None)]
    if isinstance(program.offset_s, bool) or not isinstance(program.offset_s, int) or not (
        0 <= program.offset_s < cycle
    ):
        out.append(
            Violation("V6", (), f"V6: offset {program.offset_s!r} outside 0..{cycle - 1} s", None)
        )
    known = set(junction.group_ids)
    for g in sorted(set(program.greens) - known):
        out.append(Violation("V6", (g,), f"V6: unknown signal group {g}", None))
    for g in junction.group_ids:
        if g not in program.greens:
            out.append(Violation("V6", (g,), f"V6: signal group {g} has no defined states", None))
            continue
        ivs = program.greens[g]
        bad = False
        for iv in ivs:
            if len(iv) != 2 or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in iv
            ):
                out.append(
                    Violation("V6", (g,), f"V6: {g} interval {iv!r} is not two seconds", None)
                )
                bad = True
                continue
            s, e = iv
            if not (0 <= s < cycle and s < e <= s + cycle):
                out.append(
                    Violation(
                        "V6", (g,),
                        f"V6: {g} green interval ({s}, {e}) outside the cycle of {cycle} s", s,
                    )
                )
                bad = True
        if bad or len(ivs) < 2:
            continue
        ordered = sorted(ivs)
        # Neighbouring intervals, cyclically, need at least one non-green second
        # between them; touching ones would hide one green behind the other.
        for k, (_s, e) in enumerate(ordered):
            ns, _ = ordered[(k + 1) % len(ordered)]
            if k + 1 == len(ordered):
                ns += cycle
            if e >= ns:
                out.append(
                    Violation(
                        "V6", (g,),
                        f"V6: {g} green intervals overlap or touch at cycle second {ns % cycle}; "
                        "merge them",
                        ns % cycle,
                    )
                )
                break
    return out


# -- segments --------------------------------------------------------------------

#: (state, start, end) with end exclusive.
Segment = tuple[str, int, int]


def _cyclic_segments(group: SignalGroup, intervals: tuple[tuple[int, int], ...], cycle: int
                     ) -> list[Segment]:
    """States of one group over one cycle, starting at its first green start.

    Yellow follows each green end, red-yellow precedes each green start; where
    a red gap is too short yellow wins over red-yellow (as in
    ``plans.group_states``).  Needs well-formed intervals (V6).
    """
    runs = sorted(intervals)
    if not runs:
        return [(_R, 0, cycle)]
    if runs[0][1] - runs[0][0] >= cycle:
        return [(_G, runs[0][0], runs[0][0] + cycle)]
    y, ry = group.yellow_s, group.red_yellow_s
    out: list[Segment] = []
    for k, (s, e) in enumerate(runs):
        ns = runs[k + 1][0] if k + 1 < len(runs) else runs[0][0] + cycle
        out.append((_G, s, e))
        y_end = min(e + y, ns)
        u_start = max(ns - ry, y_end)
        for state, a, b in ((_Y, e, y_end), (_R, y_end, u_start), (_U, u_start, ns)):
            if b > a:
                out.append((state, a, b))
    return out


def _unroll(cyc: list[Segment], cycle: int, lo: int, hi: int) -> list[Segment]:
    """Periodic copies of one cycle's segments, clipped to ``[lo, hi)``."""
    base = cyc[0][1]
    out: list[Segment] = []
    k = (lo - base) // cycle - 1
    while base + k * cycle < hi:
        shift = k * cycle
        for state, a, b in cyc:
            a2, b2 = max(a + shift, lo), min(b + shift, hi)
            if b2 > a2:
                _append(out, (state, a2, b2))
        k += 1
    return out


def _append(out: list[Segment], seg: Segment) -> None:
    if out and out[-1][0] == seg[0] and out[-1][2] == seg[1]:
        out[-1] = (seg[0], out[-1][1], seg[2])
    else:
        out.append(seg)


# -- rules on a window of segments (V1-V5) ----------------------------------------


@dataclass(frozen=True)
class _Event:
    rule: str
    groups: tuple[str, ...]
    what: str
    at: int


def _check_window(
    junction: JunctionSignals,
    lines: Mapping[str, list[Segment]],
    limits: SafetyLimits,
) -> list[tuple[str, tuple[str, ...], str, int]]:
    """V1-V5 on per-group state segments covering one observation window.

    Each line covers the same window ``[lo, hi)``.  Like a monitor switched on
    at ``lo``, nothing is judged whose start lies before the window: the first
    segment of each line has an unknown start.  Returns
    ``(rule, groups, what, second)`` tuples in time order.
    """
    events: list[_Event] = []

    def add(rule: str, groups: tuple[str, ...], what: str, at: int) -> None:
        events.append(_Event(rule, groups, what, at))

    all_red = limits.all_red_for(junction)
    ends: dict[str, list[int]] = {}
    starts: dict[str, list[int]] = {}
    for gid, segs in lines.items():
        g = junction.group(gid)
        y, ry, mg = g.yellow_s, g.red_yellow_s, limits.min_green_for(g)
        g_ends: list[int] = []
        g_starts: list[int] = []
        red_from: int | None = None if segs[0][0] == _G else segs[0][1]
        for k in range(len(segs) - 1):
            p, a, b = segs[k]
            c = segs[k + 1][0]
            t = b
            n = b - a
            known = k > 0
            if p == _G:
                g_ends.append(t)
                if known and n < mg:
                    add("V4", (gid,), f"green of {gid} lasts {n} s, needs {mg} s", a)
                want = _Y if y > 0 else _R
                if c != want:
                    add("V3", (gid,), f"green of {gid} ends into '{c}', not '{want}'", t)
            elif p == _Y:
                if known and n != y:
                    add("V3", (gid,), f"yellow of {gid} lasts {n} s, needs {y} s", a)
                if c in (_U, _G) and all_red > 0:
                    add("V3", (gid,), f"no all-red for {gid} between yellow and '{c}'", t)
            elif p == _U:
                if known and n != ry:
                    add("V3", (gid,), f"red-yellow of {gid} lasts {n} s, needs {ry} s", a)
                if c != _G:
                    add("V3", (gid,), f"red-yellow of {gid} not followed by green", t)
            elif p == _R and known and c in (_U, _G) and n < all_red:
                add("V3", (gid,), f"all-red of {gid} lasts {n} s, needs {all_red} s", a)
            if p != _G and c == _G:
                g_starts.append(t)
                if ry > 0 and p != _U:
                    add("V3", (gid,), f"green of {gid} starts without red-yellow", t)
            if c == _Y and (y == 0 or p != _G):
                add("V3", (gid,), f"yellow of {gid} without a green end", t)
            if c == _U and ry == 0:
                add("V3", (gid,), f"red-yellow shown by {gid}, which has none", t)
            # Red time (Sperrzeit) for V5: every second that is not green.
            if c == _G and red_from is not None:
                _max_red(events, g, red_from, t)
                red_from = None
            elif p == _G:
                red_from = t
        if red_from is not None:
            _max_red(events, g, red_from, segs[-1][2])
        ends[gid] = g_ends
        starts[gid] = g_starts
    # V2: at each green start of j, the latest green end of each conflicting i.
    for j, j_starts in starts.items():
        for i in junction.conflicts_of(j):
            i_ends = ends.get(i)
            if not i_ends:
                continue
            z = junction.z(i, j)
            for s in j_starts:
                idx = bisect_right(i_ends, s)
                if idx and s - i_ends[idx - 1] < z:
                    gap = s - i_ends[idx - 1]
                    add("V2", (i, j), f"intergreen {i}->{j} is {gap} s, needs {z} s", s)
    # V1: overlapping non-red segments of conflicting groups.
    nonred = {
        gid: _merge([(a, b) for st, a, b in segs if st != _R]) for gid, segs in lines.items()
    }
    ids = list(lines)
    for x, ga in enumerate(ids):
        for gb in ids[x + 1:]:
            if not junction.conflicting(ga, gb):
                continue
            pair = (ga, gb) if ga < gb else (gb, ga)
            for at in _overlap_onsets(nonred[ga], nonred[gb]):
                add("V1", pair, f"conflicting {pair[0]} and {pair[1]} both not red", at)
    events.sort(key=lambda ev: (ev.at, ev.rule, ev.groups))
    return [(ev.rule, ev.groups, ev.what, ev.at) for ev in events]


def _max_red(events: list[_Event], g: SignalGroup, a: int, b: int) -> None:
    if b - a > g.max_red_s:
        events.append(
            _Event("V5", (g.id,), f"{g.id} is not green for {b - a} s, at most {g.max_red_s} s",
                   a + g.max_red_s)
        )


def _merge(ivs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in ivs:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _overlap_onsets(xs: list[tuple[int, int]], ys: list[tuple[int, int]]) -> list[int]:
    """Start seconds of the maximal overlaps of two sorted, merged interval lists."""
    out: list[int] = []
    i = j = 0
    last_end: int | None = None
    while i < len(xs) and j < len(ys):
        a = max(xs[i][0], ys[j][0])
        b = min(xs[i][1], ys[j][1])
        if a < b:
            if last_end != a:
                out.append(a)
            last_end = b
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


# -- public checks -------------------------------------------------------------------


def _config(junction: JunctionSignals, limits: SafetyLimits) -> list[Violation]:
    """V3 on the configured transition times of each group."""
    out: list[Violation] = []
    for g in junction.groups:
        if g.kind is GroupKind.PEDESTRIAN:
            if g.yellow_s or g.red_yellow_s:
                out.append(
                    Violation("V3", (g.id,), f"V3: pedestrian group {g.id} has yellow or "
                              "red-yellow; pedestrian signals go green -> red", None)
                )
            continue
        need = limits.yellow_for(g.speed_kmh)
        if need is None:
            out.append(
                Violation(
                    "V3", (g.id,), f"V3: no yellow time known for {g.id} at {g.speed_kmh} km/h",
                    None,
                )
            )
        elif g.yellow_s != need:
            out.append(
                Violation("V3", (g.id,), f"V3: yellow of {g.id} is {g.yellow_s} s, needs {need} s "
                          f"at {g.speed_kmh} km/h", None)
            )
        if not limits.min_red_yellow_s <= g.red_yellow_s <= limits.max_red_yellow_s:
            out.append(
                Violation("V3", (g.id,), f"V3: red-yellow of {g.id} is {g.red_yellow_s} s, needs "
                          f"{limits.min_red_yellow_s}-{limits.max_red_yellow_s} s", None)
            )
    return out


def validate_program(
    junction: JunctionSignals, program: SignalProgram, limits: SafetyLimits = DEFAULT_LIMITS
) -> tuple[Violation, ...]:
    """All broken rules V1-V6 of one signal program (empty: valid).

    A program with broken structure (V6) reports only that: its other rules
    are not meaningful.
    """
    structure = _structure(junction, program)
    if structure:
        return tuple(structure)
    cycle = program.cycle_s
    out = _config(junction, limits)
    limit = limits.cycle_limit(junction)
    if cycle > limit:
        out.append(Violation("V5", (), f"V5: cycle {cycle} s exceeds the maximum {limit} s", None))
    for g in junction.group_ids:
        if not program.greens[g]:
            out.append(Violation("V5", (g,), f"V5: {g} never gets green", None))
    hi = PROGRAM_CYCLES * cycle
    lines = {
        g.id: _unroll(_cyclic_segments(g, program.greens[g.id], cycle), cycle, 0, hi)
        for g in junction.groups
    }
    seen: set[tuple[str, tuple[str, ...], int]] = set()
    for rule, groups, what, at in _check_window(junction, lines, limits):
        key = (rule, groups, at % cycle)
        if key in seen:
            continue
        seen.add(key)
        out.append(Violation(rule, groups, f"{rule}: {what} at cycle second {at % cycle}",
                             at % cycle))
    return tuple(out)


def switch_window(junction: JunctionSignals, old_cycle_s: int, new_cycle_s: int) -> tuple[int, int]:
    """Seconds around a switch (at 0) that the switch check covers.

    At least two old cycles before and three new cycles after, and more than
    the longest maximum red on either side, so a group starved by the switch
    shows up.
    """
    longest = max((g.max_red_s for g in junction.groups), default=0) + 1
    lo = -old_cycle_s * max(2, -(-longest // old_cycle_s))
    hi = new_cycle_s * max(3, -(-longest // new_cycle_s))
    return lo, hi


def validate_switch(
    junction: JunctionSignals,
    old: SignalProgram,
    new: SignalProgram,
    limits: SafetyLimits = DEFAULT_LIMITS,
) -> tuple[Violation, ...]:
    """D4: broken rules on the timeline of a switch from ``old`` to ``new``.

    Reports V1-V5 events anywhere in the window, including ones that belong
    to the old or new program alone; ``validate`` drops those already
    reported by ``validate_program``.  Per rule and groups the event nearest
    to the switch is kept.
    """
    bad: list[Violation] = []
    for label, prog in (("old", old), ("new", new)):
        for v in _structure(junction, prog):
            bad.append(
                Violation("D4", v.groups, f"D4 (V6, {label} program {prog.id}): {v.message}",
                          None, "V6")
            )
    if bad:
        return tuple(bad)
    lo, hi = switch_window(junction, old.cycle_s, new.cycle_s)
    lines: dict[str, list[Segment]] = {}
    for g in junction.groups:
        segs = _unroll(_cyclic_segments(g, old.greens[g.id], old.cycle_s), old.cycle_s, lo, 0)
        for seg in _unroll(_cyclic_segments(g, new.greens[g.id], new.cycle_s), new.cycle_s, 0, hi):
            _append(segs, seg)
        lines[g.id] = segs
    best: dict[tuple[str, tuple[str, ...]], tuple[str, int]] = {}
    for rule, groups, what, at in _check_window(junction, lines, limits):
        key = (rule, groups)
        if key not in best or abs(at) < abs(best[key][1]):
            best[key] = (what, at)
    out: list[Violation] = []
    for (rule, groups), (what, at) in sorted(best.items(), key=lambda kv: (abs(kv[1][1]), kv[0])):
        where = "at the switch" if at == 0 else (
            f"{at} s after the switch" if at > 0 else f"{-at} s before the switch"
        )
        out.append(
            Violation("D4", groups, f"D4 ({rule}, switch {old.id} -> {new.id}): {what} {where}",
                      at, rule)
        )
    return tuple(out)


def validate(
    junction: JunctionSignals,
    program: SignalProgram,
    previous: SignalProgram | None = None,
    limits: SafetyLimits = DEFAULT_LIMITS,
) -> tuple[Violation, ...]:
    """The safety gate: program checks, and switch checks from ``previous`` when given."""
    own = validate_program(junction, program, limits)
    if previous is None:
        return own
    reported = {(v.rule, v.groups) for v in own}
    switch = tuple(
        v for v in validate_switch(junction, previous, program, limits)
        if (v.subrule, v.groups) not in reported
    )
    return own + switch
