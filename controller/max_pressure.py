"""Max-pressure control with minimum greens, the same intergreens and a cyclic stage order.

A baseline, run inside the (simulated) signal controller like SUMO's actuated
logic: it sees only detector readings.  Stages keep their sequence (the
cyclic variant of max-pressure, so every group's wait stays bounded); after a
stage has served its minimum green, control moves on to the next stage with
demand as soon as that stage's pressure exceeds the running stage's by a
margin, the running stage has no pressure left, or the running stage reaches
its maximum green.  Stages without demand are skipped.

Pressure of a stage = sum over its vehicle groups of the queued vehicles on
the group's approach lanes (queue detectors, metres / vehicle spacing; the
downstream term of the original formulation (Varaiya 2013) is zero here
because the exits of a single junction flow freely), plus a weight per
waiting pedestrian request.  Maximum greens come from the engineer's plan
when one is given (``reference``: its greens plus the room up to the maximum
cycle, shared in proportion, as SUMO's actuated baseline gets them), else
they share that room equally; a guard that walks the cyclic order keeps every
group within its maximum red either way (safety.md V5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.messages import DetectorInfo, DetectorKind, DetectorReading
from controller.plans import (
    SignalProgram,
    lost_time_s,
    room_shares,
    stage_timing,
    transition,
)
from controller.signals import JunctionSignals
from controller.stepper import StageStepper


@dataclass(frozen=True, slots=True)
class MaxPressureConfig:
    vehicle_spacing_m: float = 7.0
    #: Pressure a waiting pedestrian request adds (in vehicle equivalents).
    pedestrian_weight: float = 4.0
    #: Switch only if the best stage beats the running one by this much.
    margin_veh: float = 4.0
    max_green_s: int = 60
    #: Buffer (s) on top of the time a stage needs to turn green before a group in it
    #: would pass its maximum red.  The guard walks the whole cyclic order at minimum
    #: greens, so the buffer only covers transitions that run a second or two longer.
    #: 15 s (until session 9) left no room at the Schlosskreuzung (maximum red 110 s,
    #: minimum cycle 94 s): every stage ended at its minimum green, every cycle alike,
    #: 1.45 x the fixed plan's delay.  5 s: 1.16 x (equal maximum greens), no
    #: maximum-red finding (docs/baselines.md, "The starvation margin").
    starvation_margin_s: int = 5
    #: Pressure a stop-line loop occupied for the whole last second adds
    #: (a movement with a presence but no queue detector).
    presence_weight: float = 1.0


class MaxPressure:
    """Stage selection by max pressure on detector data only."""

    def __init__(
        self,
        junction: JunctionSignals,
        detectors: Sequence[DetectorInfo],
        sequence: Sequence[str] | None = None,
        config: MaxPressureConfig = MaxPressureConfig(),
        reference: SignalProgram | None = None,
    ) -> None:
        self.junction = junction
        self.config = config
        self.stages = tuple(sequence) if sequence else tuple(s.id for s in junction.stages)
        self.stepper = StageStepper(junction, self.stages[0])
        self._max_green = self._max_greens()
        j = junction
        self._stage_min = {
            st.id: max((j.group(g).min_green_s + j.early_end(g) for g in st.groups), default=0)
            for st in j.stages
        }
        if reference is not None and reference.stage_plan is not None:
            self._max_green.update(self._reference_max_greens(reference))
        self._transition_s = {
            (a.id, b.id): transition(j, a.id, b.id).length_s
            for a in j.stages for b in j.stages if a.id != b.id
        }
        lanes: dict[str, set[str]] = {}
        for d in detectors:
            if d.kind is DetectorKind.QUEUE:
                for g in d.groups:
                    lanes.setdefault(g, set()).update(d.lanes[-1:])
        self._lanes = {g: len(v) for g, v in lanes.items()}
        self._detectors = {d.id: d for d in detectors}
        self._queue_m: dict[str, float] = {}
        self._presence: dict[str, bool] = {}
        self._pressed: dict[str, bool] = {}

    def _max_greens(self) -> dict[str, int]:
        j = self.junction
        mins = {
            s: max((j.group(g).min_green_s + j.early_end(g) for g in j.stage(s).groups),
                   default=0)
            for s in self.stages
        }
        lost = lost_time_s(j, self.stages)
        # Two seconds per stage of slack: transitions can run longer than the classic lost
        # time when a short stage leaves a clearance to wait for.
        room = max(0, j.max_cycle_s - lost - sum(mins.values()) - 2 * len(self.stages))
        return {
            s: min(self.config.max_green_s, mins[s] + room // len(self.stages))
            for s in self.stages
        }

    def _reference_max_greens(self, reference: SignalProgram) -> dict[str, int]:
        """Maximum greens as SUMO's actuated baseline gets them (sim/tlsprogram.py).

        The engineer's plan's green plus the room up to the maximum cycle, shared in
        proportion to the greens: a stage the plan sizes for heavy demand may run
        longer than one sized for light demand.  Without this every stage got an
        equal share of the room, and the north left turn of asymmetric turning
        (300 veh/h) at most 14 s where the Webster plan gives it more.
        """
        plan = reference.stage_plan
        assert plan is not None
        timing = stage_timing(self.junction, plan)
        shares = room_shares(self.junction, reference)
        return {
            sid: max(self._stage_min.get(sid, 0),
                     min(self.config.max_green_s, end - start + share))
            for sid, (start, end, _), share in zip(plan.sequence, timing, shares, strict=True)
            if sid in self.stages
        }

    def max_green_s(self, stage: str) -> int:
        """The longest green ``stage`` may run (its share of the room the maximum cycle leaves)."""
        return self._max_green[stage]

    def observe(self, reading: DetectorReading) -> None:
        info = self._detectors.get(reading.detector_id)
        if info is None:
            return
        if info.kind is DetectorKind.QUEUE and reading.queue_m is not None:
            self._queue_m[info.id] = reading.queue_m
        elif info.kind is DetectorKind.STOP_LINE:
            self._presence[info.id] = reading.presence or reading.occupancy > 0.5
        elif info.kind is DetectorKind.PUSH_BUTTON and reading.pressed:
            self._pressed[info.id] = True

    def group_pressure(self) -> dict[str, float]:
        """Queued vehicles times the group's discharge capacity (lanes), per Varaiya's weights.

        A two-lane through movement empties a queue twice as fast as a one-lane left turn,
        so the same queue there is worth twice the green.
        """
        cfg = self.config
        out: dict[str, float] = dict.fromkeys(self.junction.group_ids, 0.0)
        for det_id, q in self._queue_m.items():
            groups = self._detectors[det_id].groups
            for g in groups:
                queued = q / cfg.vehicle_spacing_m / max(1, len(groups))
                out[g] += queued * self._lanes.get(g, 1)
        for det_id, present in self._presence.items():
            if present:
                for g in self._detectors[det_id].groups:
                    out[g] = max(out[g], cfg.presence_weight)
        for det_id, pressed in self._pressed.items():
            if pressed:
                for g in self._detectors[det_id].groups:
                    out[g] += cfg.pedestrian_weight
        return out

    def _clear_served(self) -> None:
        """A green pedestrian group has served its button requests."""
        for det_id in list(self._pressed):
            if any(self.stepper.red_time_s(g) == 0 for g in self._detectors[det_id].groups):
                del self._pressed[det_id]

    def choose(self) -> str | None:
        """The stage to request now, or None to stay."""
        st = self.stepper
        if not st.can_switch():
            return None
        cfg = self.config
        pressure = self.group_pressure()
        stage_p = {
            s: sum(pressure[g] for g in self.junction.stage(s).groups) for s in self.stages
        }
        starving = self._starving()
        if starving is not None and starving != st.stage:
            # Safety net for skipped stages: a group near its maximum red goes next.
            return starving
        nxt = self._next_with_demand(stage_p, starving)
        if nxt is None or nxt == st.stage:
            return None
        order = self._order()
        if order and nxt != order[0] and self._would_starve(nxt):
            # Skipping the stages in between would hold one of them red too long.
            nxt = order[0]
        # The stage's green runs on through any early pedestrian end before the transition.
        if st.stage_elapsed_s + st.closing_lead(nxt) >= self._max_green[st.stage]:
            return nxt
        if stage_p[st.stage] <= 0 or stage_p[nxt] > stage_p[st.stage] + cfg.margin_veh:
            return nxt
        return None

    def _next_with_demand(
        self, stage_p: Mapping[str, float], starving: str | None
    ) -> str | None:
        k = self.stages.index(self.stepper.stage) if self.stepper.stage in self.stages else -1
        for step in range(1, len(self.stages) + 1):
            stage = self.stages[(k + step) % len(self.stages)]
            if stage_p[stage] > 0 or stage == starving:
                return stage
        return None

    def _starving(self) -> str | None:
        """The stage that must come next so that no group exceeds its maximum red.

        ``None`` while going on to the next stage in the cyclic order later is still
        safe (``_would_starve``); otherwise that next stage, now.  Every group
        counts, with or without detected demand: a missed detection must not hold a
        group red too long.
        """
        order = self._order()
        if not order:
            return None
        return order[0] if self._would_starve(order[0]) else None

    def _order(self) -> list[str]:
        """The other stages in cyclic order after the running one."""
        cur = self.stepper.stage
        if cur not in self.stages:
            return []
        k = self.stages.index(cur)
        return [self.stages[(k + i) % len(self.stages)] for i in range(1, len(self.stages))]

    def _would_starve(self, first: str) -> bool:
        """Whether going to ``first`` (skipping the stages before it) could pass a maximum red.

        Walks the cyclic order from ``first`` once round, as if every stage from
        then on were served at its minimum green (the running stage's remaining
        minimum green, an early pedestrian end, each transition): a group whose red
        would pass its maximum red (safety.md V5) less ``starvation_margin_s`` by the
        time its stage comes is at risk.
        Checking only the next stage missed two cases: several stages urgent
        together (the worst served first, the ones behind it waiting too long) and
        a jump back that skipped stages without demand, which then waited a whole
        round more.
        """
        st = self.stepper
        j = self.junction
        cur = st.stage
        k = self.stages.index(first)
        walk = [self.stages[(k + i) % len(self.stages)] for i in range(len(self.stages))]
        t = max(0, self._stage_min[cur] - st.stage_elapsed_s) + st.closing_lead(first)
        ends_at = t  # the running stage's groups turn red about now
        prev = cur
        seen: set[str] = set()
        for stage in walk:
            if stage != prev:
                t += self._transition_s[(prev, stage)]
            for gid in j.stage(stage).groups - seen:
                red = st.red_time_s(gid) if gid not in j.stage(cur).groups else -ends_at
                if j.group(gid).max_red_s - red - t <= self.config.starvation_margin_s:
                    return True
            seen |= j.stage(stage).groups
            t += self._stage_min[stage]
            prev = stage
        return False

    def step(self) -> dict[str, str]:
        """One second of signal states."""
        self._clear_served()
        return self.stepper.step(self.choose())
