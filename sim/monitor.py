"""The simulated hardware's conflict monitor (Signalsicherung, like a NEMA MMU).

It is the second, independent safety check (safety.md): it never imports
``controller.safety`` nor the helper functions of ``controller.plans``; it
uses the data classes only.  Where the validator reasons on green intervals,
the monitor watches the states shown, one second at a time, as the cabinet's
monitor watches the lamps:

- V1: two conflicting groups not red at the same time;
- V2: a green starting before the intergreen (Zwischenzeit) from the last
  green end of each conflicting group has run;
- V3: yellow (Gelb) or red-yellow (Rot-Gelb) missing, cut or of the wrong
  length, less than the all-red time of pure red before a green returns;
- V4: a green shorter than the minimum green;
- V5: a group not green for longer than its maximum red;
- V6: unknown groups, missing groups, unknown state characters.

Per second it only compares the new states with the previous ones; work is
done only where a state changes, so it is cheap enough for every second of
every run.  ``check_program`` and ``check_switch`` run programs through a
fresh monitor for the hardware's acceptance check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from controller.plans import SignalProgram
from controller.signals import CYCLE_CEILING_S, GroupKind, JunctionSignals, SignalGroup

__all__ = ["ConflictMonitor", "Fault", "check_program", "check_switch", "expand_program"]

_GREEN, _YELLOW, _REDYELLOW, _RED = "G", "y", "u", "r"
#: SUMO's minor green (conditionally compatible movement) counts as green.
_MINOR_GREEN = "g"
_KNOWN = frozenset({_GREEN, _YELLOW, _REDYELLOW, _RED, _MINOR_GREEN})

#: Yellow by approach speed (km/h -> s), programmed into the monitor separately
#: from the validator's table on purpose.
_YELLOW_TABLE = ((50, 3), (60, 4), (70, 5))
_MIN_GREEN_FLOOR = {
    GroupKind.VEHICLE: 5, GroupKind.BICYCLE: 5, GroupKind.BUS: 5, GroupKind.PEDESTRIAN: 5,
}
_RUN_CYCLES = 3


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault seen by the monitor: rule (V1-V6), groups, what, and the second it was seen."""

    rule: str
    groups: tuple[str, ...]
    message: str
    second: int

    def __str__(self) -> str:
        return f"{self.rule} at second {self.second}: {self.message}"


class ConflictMonitor:
    """Watches the signal states of one junction, one second per ``observe`` call.

    Nothing is judged whose beginning the monitor did not see: a yellow
    already running when the monitor starts has an unknown length.
    """

    def __init__(
        self,
        junction: JunctionSignals,
        *,
        start_second: int = 0,
        all_red_s: int | None = None,
        crossing_m: Mapping[str, float] | None = None,
        walking_speed_mps: float = 1.2,
    ) -> None:
        self.junction = junction
        self._ids = [g.id for g in junction.groups]
        self._index = {gid: k for k, gid in enumerate(self._ids)}
        self._yellow = [g.yellow_s for g in junction.groups]
        self._red_yellow = [g.red_yellow_s for g in junction.groups]
        self._max_red = [g.max_red_s for g in junction.groups]
        crossings = dict(crossing_m or {})
        self._min_green = [
            _min_green(g, crossings.get(g.id), walking_speed_mps) for g in junction.groups
        ]
        self._all_red = junction.all_red_same_stage_s if all_red_s is None else all_red_s
        n = len(self._ids)
        self._conflict_bits = [0] * n
        self._conflicts: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for j, gj in enumerate(self._ids):
            for i, gi in enumerate(self._ids):
                if i != j and junction.conflicting(gi, gj):
                    self._conflict_bits[j] |= 1 << i
                    self._conflicts[j].append((i, junction.z(gi, gj)))
        self._t = start_second
        self._prev: dict[str, str] | None = None
        # A caller that repeats the same mapping object skips the comparison.
        self._prev_ref: Mapping[str, str] | None = None
        self._state: list[str] = [""] * n
        self._run_start: list[int] = [0] * n
        self._run_known: list[bool] = [False] * n
        self._red_since: list[int | None] = [None] * n
        self._last_end: list[int | None] = [None] * n
        self._overlaps: set[tuple[int, int]] = set()
        # Fast path: while nothing changes, only a starvation deadline can fire.
        self._deadline = math.inf

    @property
    def second(self) -> int:
        """The second the next ``observe`` call stands for."""
        return self._t

    def config_faults(self) -> list[Fault]:
        """V3 on the groups' programmed transition times (checked once, like a programming card)."""
        out: list[Fault] = []
        for g in self.junction.groups:
            if g.kind is GroupKind.PEDESTRIAN:
                if g.yellow_s != 0 or g.red_yellow_s != 0:
                    out.append(Fault("V3", (g.id,), f"pedestrian {g.id} programmed with yellow "
                                     "or red-yellow", self._t))
                continue
            need = next((y for v, y in _YELLOW_TABLE if g.speed_kmh <= v), None)
            if need is None or g.yellow_s != need:
                out.append(Fault("V3", (g.id,), f"{g.id} yellow {g.yellow_s} s does not fit "
                                 f"{g.speed_kmh} km/h", self._t))
            if g.red_yellow_s not in (1, 2):
                out.append(Fault("V3", (g.id,), f"{g.id} red-yellow {g.red_yellow_s} s, "
                                 "allowed 1-2 s", self._t))
        return out

    def observe(self, states: Mapping[str, str]) -> list[Fault]:
        """Check the states shown in one second; return the faults first seen in it."""
        t = self._t
        self._t = t + 1
        if (states is self._prev_ref or states == self._prev) and t < self._deadline:
            return []
        faults: list[Fault] = []
        if len(states) != len(self._ids) or any(g not in self._index for g in states):
            self._structure(states, t, faults)
        ids = self._ids
        cur = self._state
        changed: list[int] = []
        nonred = 0
        for k, gid in enumerate(ids):
            st = states.get(gid, _RED)
            if st == _MINOR_GREEN:
                st = _GREEN
            elif st not in _KNOWN:
                faults.append(Fault("V6", (gid,), f"{gid} shows unknown state {st!r}", t))
                st = _GREEN  # the safe assumption for a conflict monitor: it may be lit
            if st != _RED:
                nonred |= 1 << k
            if self._prev is None:
                cur[k] = st
                self._run_start[k] = t
                self._run_known[k] = False
                self._red_since[k] = None if st == _GREEN else t
            elif st != cur[k]:
                changed.append(k)
                self._transition(k, cur[k], st, t, faults)
                cur[k] = st
        # Ends were recorded above, so a green starting in the same second sees them.
        for k in changed:
            if cur[k] == _GREEN:
                for i, z in self._conflicts[k]:
                    end = self._last_end[i]
                    if end is not None and t - end < z:
                        faults.append(Fault("V2", (ids[i], ids[k]), f"intergreen {ids[i]}->"
                                            f"{ids[k]} is {t - end} s, needs {z} s", t))
        self._check_conflicts(nonred, t, faults)
        self._check_starvation(t, faults)
        self._prev = dict(states)
        self._prev_ref = states
        return faults

    # -- internals -------------------------------------------------------------
    def _structure(self, states: Mapping[str, str], t: int, faults: list[Fault]) -> None:
        for gid in states:
            if gid not in self._index:
                faults.append(Fault("V6", (gid,), f"state for unknown group {gid}", t))
        for gid in self._ids:
            if gid not in states:
                faults.append(Fault("V6", (gid,), f"no state for group {gid}", t))

    def _transition(self, k: int, p: str, c: str, t: int, faults: list[Fault]) -> None:
        gid = self._ids[k]
        y, ry = self._yellow[k], self._red_yellow[k]
        n = t - self._run_start[k]
        known = self._run_known[k]

        def fault(rule: str, what: str, at: int = t) -> None:
            faults.append(Fault(rule, (gid,), what, at))

        if p == _GREEN:
            self._last_end[k] = t
            self._red_since[k] = t
            if known and n < self._min_green[k]:
                fault("V4", f"green of {gid} lasted {n} s, needs {self._min_green[k]} s",
                      self._run_start[k])
            want = _YELLOW if y > 0 else _RED
            if c != want:
                fault("V3", f"{gid} went from green to {c!r} instead of {want!r}")
        elif p == _YELLOW:
            if known and n != y:
                fault("V3", f"yellow of {gid} lasted {n} s, programmed {y} s", self._run_start[k])
            if c != _RED and self._all_red > 0:
                fault("V3", f"{gid} went from yellow to {c!r} without all-red")
        elif p == _REDYELLOW:
            if known and n != ry:
                fault("V3", f"red-yellow of {gid} lasted {n} s, programmed {ry} s",
                      self._run_start[k])
            if c != _GREEN:
                fault("V3", f"{gid} went from red-yellow to {c!r}")
        elif known and c in (_REDYELLOW, _GREEN) and n < self._all_red:
            fault("V3", f"all-red of {gid} lasted {n} s, needs {self._all_red} s",
                  self._run_start[k])
        if c == _GREEN:
            self._red_since[k] = None
            if ry > 0 and p != _REDYELLOW:
                fault("V3", f"{gid} went to green without red-yellow")
        elif c == _YELLOW and (y == 0 or p != _GREEN):
            fault("V3", f"{gid} shows yellow without a green end")
        elif c == _REDYELLOW and ry == 0:
            fault("V3", f"{gid} shows red-yellow, programmed without")
        self._run_start[k] = t
        self._run_known[k] = True
        since = self._red_since[k]
        if since is not None:
            self._deadline = min(self._deadline, since + self._max_red[k])

    def _check_conflicts(self, nonred: int, t: int, faults: list[Fault]) -> None:
        now: set[tuple[int, int]] = set()
        if nonred:
            bits = self._conflict_bits
            for k in range(len(self._ids)):
                if nonred >> k & 1 and bits[k] & nonred:
                    for i in range(k + 1, len(self._ids)):
                        if nonred >> i & 1 and bits[k] >> i & 1:
                            now.add((k, i))
        for k, i in sorted(now - self._overlaps):
            a, b = sorted((self._ids[k], self._ids[i]))
            faults.append(Fault("V1", (a, b), f"conflicting {a} and {b} both not red", t))
        self._overlaps = now

    def _check_starvation(self, t: int, faults: list[Fault]) -> None:
        deadline = math.inf
        for k, since in enumerate(self._red_since):
            if since is None:
                continue
            due = since + self._max_red[k]
            if due == t:
                gid = self._ids[k]
                faults.append(Fault("V5", (gid,), f"{gid} not green for more than "
                                    f"{self._max_red[k]} s", t))
            elif due > t:
                deadline = min(deadline, due)
        self._deadline = deadline


def _min_green(group: SignalGroup, crossing_m: float | None, walking_mps: float) -> int:
    need = max(group.min_green_s, _MIN_GREEN_FLOOR.get(group.kind, 0))
    if group.kind is GroupKind.PEDESTRIAN and crossing_m is not None:
        # Long enough to reach the middle of the crossing (Furtmitte).
        need = max(need, math.ceil(crossing_m / 2.0 / walking_mps))
    return need


# -- programs ------------------------------------------------------------------


def _green_mask(program: SignalProgram, gid: str) -> list[bool]:
    n = program.cycle_s
    mask = [False] * n
    for start, end in program.greens.get(gid, ()):
        for sec in range(start, end):
            mask[sec % n] = True
    return mask


def _paint(green: list[bool], yellow: int, red_yellow: int) -> list[str]:
    """States on a line of seconds: yellow after green, red-yellow before it, green wins."""
    out = [_RED] * len(green)
    last = -(10**9)
    for t, on in enumerate(green):
        if on:
            out[t] = _GREEN
            last = t
        elif t - last <= yellow:
            out[t] = _YELLOW
    nxt = 10**9
    for t in range(len(green) - 1, -1, -1):
        if green[t]:
            nxt = t
        elif out[t] == _RED and nxt - t <= red_yellow:
            out[t] = _REDYELLOW
    return out


def _pad(junction: JunctionSignals) -> int:
    return max((max(g.yellow_s, g.red_yellow_s) for g in junction.groups), default=0) + 1


def expand_program(junction: JunctionSignals, program: SignalProgram) -> list[dict[str, str]]:
    """One cycle of states, one ``{group: state}`` per cycle second."""
    n = program.cycle_s
    copies = 1 + -(-_pad(junction) // n)
    per_group: dict[str, list[str]] = {}
    for g in junction.groups:
        mask = _green_mask(program, g.id)
        line = _paint(mask * (2 * copies + 1), g.yellow_s, g.red_yellow_s)
        per_group[g.id] = line[copies * n:(copies + 1) * n]
    out: list[dict[str, str]] = []
    for t in range(n):
        states = {gid: line[t] for gid, line in per_group.items()}
        # Seconds without a change share one mapping, which the monitor recognises cheaply.
        out.append(out[-1] if out and out[-1] == states else states)
    return out


def _program_faults(junction: JunctionSignals, program: SignalProgram, label: str) -> list[Fault]:
    """What the hardware refuses before running anything: malformed programs (V6)."""
    out: list[Fault] = []
    n = program.cycle_s
    if type(n) is not int or n < 1:
        return [Fault("V6", (), f"{label} cycle {n!r} is not a positive whole second", 0)]
    if type(program.offset_s) is not int or not 0 <= program.offset_s < n:
        out.append(Fault("V6", (), f"{label} offset {program.offset_s!r} not within the cycle", 0))
    groups = set(junction.group_ids)
    for gid in program.greens:
        if gid not in groups:
            out.append(Fault("V6", (gid,), f"{label} names unknown group {gid}", 0))
    for gid in junction.group_ids:
        if gid not in program.greens:
            out.append(Fault("V6", (gid,), f"{label} has no states for {gid}", 0))
            continue
        covered = [0] * n
        for iv in program.greens[gid]:
            if len(iv) != 2 or any(type(x) is not int for x in iv):
                out.append(Fault("V6", (gid,), f"{label}: {gid} interval {iv!r} malformed", 0))
                break
            start, end = iv
            if start < 0 or start >= n or end <= start or end - start > n:
                out.append(Fault("V6", (gid,), f"{label}: {gid} interval {iv!r} out of cycle", 0))
                break
            # One second of margin after each green: intervals must neither
            # overlap nor touch, so every green run is one interval.
            for sec in range(start, end + (1 if end - start < n else 0)):
                covered[sec % n] += 1
        else:
            if any(c > 1 for c in covered):
                out.append(Fault("V6", (gid,), f"{label}: {gid} intervals overlap or touch", 0))
    return out


def check_program(junction: JunctionSignals, program: SignalProgram) -> list[Fault]:
    """The hardware's acceptance check of one program (empty: accepted).

    Checks structure, the cycle limit, that every group gets green, and then
    runs three cycles through a fresh monitor.  Faults are reported once per
    rule, groups and cycle second, with ``second`` as the cycle second.
    """
    faults = _program_faults(junction, program, f"program {program.id}")
    if faults:
        return faults
    n = program.cycle_s
    monitor = ConflictMonitor(junction)
    out = monitor.config_faults()
    limit = min(junction.max_cycle_s, CYCLE_CEILING_S)
    if n > limit:
        out.append(Fault("V5", (), f"cycle {n} s longer than {limit} s", 0))
    for gid in junction.group_ids:
        if not program.greens[gid]:
            out.append(Fault("V5", (gid,), f"{gid} never green", 0))
    cycle = expand_program(junction, program)
    seen: set[tuple[str, tuple[str, ...], int]] = set()
    for _ in range(_RUN_CYCLES):
        for states in cycle:
            for f in monitor.observe(states):
                key = (f.rule, f.groups, f.second % n)
                if key not in seen:
                    seen.add(key)
                    out.append(Fault(f.rule, f.groups, f.message, f.second % n))
    return out


def check_switch(junction: JunctionSignals, old: SignalProgram, new: SignalProgram) -> list[Fault]:
    """The hardware's check of a switch ``old`` -> ``new`` (empty: safe).

    The old program runs whole cycles; at an old cycle boundary (second 0
    here) the new program starts at its cycle second 0, and each shows its
    own states.  The monitor watches from at least two old cycles before to
    three new cycles after, and beyond the longest maximum red on each side.
    Faults keep the second relative to the switch; per rule and groups only
    the one nearest the switch is reported.
    """
    faults = _program_faults(junction, old, f"old program {old.id}")
    faults += _program_faults(junction, new, f"new program {new.id}")
    if faults:
        return faults
    starve = max((g.max_red_s for g in junction.groups), default=0) + 1
    n_old, n_new = old.cycle_s, new.cycle_s
    before = max(2, math.ceil(starve / n_old))
    after = max(3, math.ceil(starve / n_new))
    old_cycle = expand_program(junction, old)
    new_cycle = expand_program(junction, new)
    monitor = ConflictMonitor(junction, start_second=-before * n_old)
    best: dict[tuple[str, tuple[str, ...]], Fault] = {}
    for seq in [old_cycle] * before + [new_cycle] * after:
        for states in seq:
            for f in monitor.observe(states):
                key = (f.rule, f.groups)
                if key not in best or abs(f.second) < abs(best[key].second):
                    best[key] = f
    return sorted(best.values(), key=lambda f: (abs(f.second), f.rule, f.groups))
