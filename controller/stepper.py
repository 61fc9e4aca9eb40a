"""Stage-by-stage signal operation with intergreen-derived transitions.

Logics that decide one stage at a time (max-pressure, and any actuated
logic of our own) do not produce cyclic programs.  ``StageStepper`` turns
"go to stage X when you may" into one second of signal states at a time, with
the same transition rule as ``plans.compile_plan``: each starting group waits
for every intergreen from every group that ended, however long ago, and for
its own red-yellow; the running stage keeps its minimum green.

Pure logic: no clock, no I/O.  The caller calls ``step`` once per second.
"""

from __future__ import annotations

from controller.plans import Transition, transition
from controller.signals import JunctionSignals, SignalState


class StageStepper:
    """Runs stages one second at a time (Phasenfolge mit Phasenübergängen)."""

    def __init__(self, junction: JunctionSignals, initial_stage: str) -> None:
        self.junction = junction
        self.stage = junction.stage(initial_stage).id
        self.stage_elapsed_s = 0
        self._t = 0
        self._green: set[str] = set(junction.stage(initial_stage).groups)
        # Groups outside the first stage start red, as if their yellow had just run out,
        # so red time (for max red) counts from the start.
        self._last_end: dict[str, int] = {
            g.id: -g.yellow_s for g in junction.groups if g.id not in self._green
        }
        self._green_since: dict[str, int] = dict.fromkeys(self._green, -10_000)
        self._transition: Transition | None = None
        self._closing: tuple[str, int] | None = None
        self._early_ends: dict[str, int] = {}
        self._trans_elapsed = 0

    def can_switch(self) -> bool:
        """True when no transition runs and the stage could end towards some stage now."""
        if self._transition is not None or self._closing is not None:
            return False
        return any(
            self.can_switch_to(s.id) for s in self.junction.stages if s.id != self.stage
        )

    def closing_lead(self, target: str) -> int:
        """Seconds between asking for ``target`` and the start of the transition to it."""
        j = self.junction
        ending = j.stage(self.stage).groups - j.stage(target).groups
        return max((j.early_end(g) for g in ending), default=0)

    def can_switch_to(self, target: str) -> bool:
        """Whether a change to ``target`` starting now keeps every minimum green.

        Groups that end early (``early_end_s``) leave ``lead - e`` seconds from now,
        the others when the transition starts ``lead`` seconds from now.
        """
        if self._transition is not None or self._closing is not None or target == self.stage:
            return False
        j = self.junction
        ending = j.stage(self.stage).groups - j.stage(target).groups
        lead = max((j.early_end(g) for g in ending), default=0)
        for g in ending:
            since = self._t - self._green_since.get(g, self._t - self.stage_elapsed_s)
            green_at_end = since + lead - j.early_end(g)
            if green_at_end < j.group(g).min_green_s:
                return False
        return True

    def red_time_s(self, group_id: str) -> int:
        """Seconds since ``group_id`` last showed green (0 while green)."""
        if group_id in self._green:
            return 0
        return self._t - self._last_end.get(group_id, -10_000)

    def step(self, request: str | None = None) -> dict[str, str]:
        """Advance one second; start a transition to ``request`` if allowed now."""
        if self._closing is not None:
            target, switch_at = self._closing
            for g, end in self._early_ends.items():
                if end == self._t and g in self._green:
                    self._green.discard(g)
                    self._last_end[g] = self._t
            if self._t >= switch_at:
                self._closing = None
                self._early_ends = {}
                self._begin(target)
        elif request is not None and self.can_switch_to(request):
            self._close(request)
        states = self._states()
        self._advance()
        return states

    def _close(self, target: str) -> None:
        """End early-ending groups first (early_end_s), then start the transition."""
        ending = self.junction.stage(self.stage).groups - self.junction.stage(target).groups
        early = {g: self.junction.early_end(g) for g in ending if self.junction.early_end(g)}
        if not early:
            self._begin(target)
            return
        lead = max(early.values())
        switch_at = self._t + lead
        self._early_ends = {g: switch_at - e for g, e in early.items()}
        self._closing = (target, switch_at)
        for g, end in self._early_ends.items():
            if end == self._t:
                self._green.discard(g)
                self._last_end[g] = self._t

    # -- internals -------------------------------------------------------------
    def _begin(self, to_stage: str) -> None:
        since = {
            g: self._t - end for g, end in self._last_end.items() if g not in self._green
        }
        ry_floor = {
            g: self.junction.group(g).red_yellow_s
            for g in self.junction.stage(to_stage).groups - self.junction.stage(self.stage).groups
        }
        self._transition = transition(
            self.junction, self.stage, to_stage, since_end_s=since, min_starts=ry_floor
        )
        self._trans_elapsed = 0
        for g in self._transition.ending:
            if g in self._green:
                self._green.discard(g)
                self._last_end[g] = self._t

    def _states(self) -> dict[str, str]:
        out: dict[str, str] = {}
        tr = self._transition
        u = self._trans_elapsed
        for group in self.junction.groups:
            gid = group.id
            if gid in self._green:
                out[gid] = SignalState.GREEN.value
                continue
            if tr is not None and gid in tr.starting:
                start = tr.starting[gid]
                if u >= start:
                    out[gid] = SignalState.GREEN.value
                    continue
                if u >= start - group.red_yellow_s:
                    out[gid] = SignalState.RED_YELLOW.value
                    continue
            ended = self._last_end.get(gid)
            if ended is not None and self._t - ended < group.yellow_s:
                out[gid] = SignalState.YELLOW.value
            else:
                out[gid] = SignalState.RED.value
        return out

    def _advance(self) -> None:
        tr = self._transition
        if tr is not None:
            for gid, start in tr.starting.items():
                if self._trans_elapsed == start:
                    self._green.add(gid)
                    self._green_since[gid] = self._t
            self._trans_elapsed += 1
            if self._trans_elapsed >= tr.length_s:
                # Starting groups with start == length (none normally) turn green now.
                for gid in tr.starting:
                    if gid not in self._green:
                        # Starts exactly at the transition's end: green from next second.
                        self._green.add(gid)
                        self._green_since[gid] = self._t + 1
                self.stage = tr.to_stage
                self.stage_elapsed_s = 0
                self._transition = None
        else:
            self.stage_elapsed_s += 1
        self._t += 1
