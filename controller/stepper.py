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
        self._last_end: dict[str, int] = {}
        self._green: set[str] = set(junction.stage(initial_stage).groups)
        self._green_since: dict[str, int] = dict.fromkeys(self._green, -10_000)
        self._transition: Transition | None = None
        self._trans_elapsed = 0
        self._min_green = {
            s.id: max((junction.group(g).min_green_s for g in s.groups), default=0)
            for s in junction.stages
        }

    @property
    def in_transition(self) -> bool:
        return self._transition is not None

    @property
    def target_stage(self) -> str:
        return self._transition.to_stage if self._transition else self.stage

    def can_switch(self) -> bool:
        """True once the running stage has served its minimum green and no transition runs."""
        return self._transition is None and self.stage_elapsed_s >= self._min_green[self.stage]

    def red_time_s(self, group_id: str) -> int:
        """Seconds since ``group_id`` last showed green (0 while green)."""
        if group_id in self._green:
            return 0
        return self._t - self._last_end.get(group_id, -10_000)

    def step(self, request: str | None = None) -> dict[str, str]:
        """Advance one second; start a transition to ``request`` if allowed now."""
        if request is not None and request != self.stage and self.can_switch():
            self._begin(request)
        states = self._states()
        self._advance()
        return states

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
                    self._green.add(gid)
                self.stage = tr.to_stage
                self.stage_elapsed_s = 0
                self._transition = None
        else:
            self.stage_elapsed_s += 1
        self._t += 1
