"""Max-pressure control (Varaiya 2013) with minimum greens and the same intergreens.

A baseline, run inside the (simulated) signal controller like SUMO's actuated
logic: it sees only detector readings.  Each second after the running stage
has served its minimum green, the stage with the largest pressure is chosen;
it switches when that beats the running stage's pressure by a margin.

Pressure of a stage = sum over its vehicle groups of the queued vehicles on
the group's approach lanes (queue detectors, metres / vehicle spacing; the
downstream term of the original formulation is zero here because the exits
of a single junction flow freely), plus a weight per waiting pedestrian
request.  Any group red for longer than its ``max_red_s`` minus a margin with
demand gets its stage next (no starvation, safety.md V5), and a stage is not
held beyond ``max_green_s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.messages import DetectorInfo, DetectorKind, DetectorReading
from controller.signals import GroupKind, JunctionSignals
from controller.stepper import StageStepper


@dataclass(frozen=True, slots=True)
class MaxPressureConfig:
    vehicle_spacing_m: float = 7.0
    #: Pressure a waiting pedestrian request adds (in vehicle equivalents).
    pedestrian_weight: float = 4.0
    #: Switch only if the best stage beats the running one by this much.
    margin_veh: float = 2.0
    max_green_s: int = 60
    starvation_margin_s: int = 20
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
    ) -> None:
        self.junction = junction
        self.config = config
        self.stages = tuple(sequence) if sequence else tuple(s.id for s in junction.stages)
        self.stepper = StageStepper(junction, self.stages[0])
        self._detectors = {d.id: d for d in detectors}
        self._queue_m: dict[str, float] = {}
        self._presence: dict[str, bool] = {}
        self._pressed: dict[str, bool] = {}

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
        cfg = self.config
        out: dict[str, float] = dict.fromkeys(self.junction.group_ids, 0.0)
        for det_id, q in self._queue_m.items():
            groups = self._detectors[det_id].groups
            for g in groups:
                out[g] += q / cfg.vehicle_spacing_m / max(1, len(groups))
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
        starving = self._starving(pressure)
        if starving is not None and starving != st.stage:
            return starving
        best = max(self.stages, key=lambda s: (stage_p[s], -self.stages.index(s)))
        if best == st.stage:
            return None
        if st.stage_elapsed_s >= cfg.max_green_s and stage_p[best] > 0:
            return best
        if stage_p[best] > stage_p[st.stage] + cfg.margin_veh:
            return best
        return None

    def _starving(self, pressure: Mapping[str, float]) -> str | None:
        cfg = self.config
        worst: tuple[int, str] | None = None
        for group in self.junction.groups:
            red = self.stepper.red_time_s(group.id)
            has_demand = pressure[group.id] > 0 or group.kind is GroupKind.PEDESTRIAN
            if has_demand and red >= group.max_red_s - cfg.starvation_margin_s and (
                worst is None or red > worst[0]
            ):
                worst = (red, group.id)
        if worst is None:
            return None
        for s in self.stages:
            if worst[1] in self.junction.stage(s).groups:
                return s
        return None

    def step(self) -> dict[str, str]:
        """One second of signal states."""
        self._clear_served()
        return self.stepper.step(self.choose())
