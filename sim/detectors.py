"""Field detectors: what the installation at the junction would report, read from SUMO.

This is the only place where the ground-truth simulation turns into detector
messages.  Each second every detector produces one ``DetectorReading``:

- induction loops (stop line, upstream, bus request): vehicles that newly
  touched the loop during the last second, occupancy, presence, mean speed;
- queue detectors (radar stand-in, SUMO lane area detectors): jam length;
- push-buttons: pressed while a person waits at the kerb for that crossing.

The readings are all the controller gets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType

from controller.messages import DetectorInfo, DetectorKind, DetectorReading

_LOOP_KINDS = (DetectorKind.STOP_LINE, DetectorKind.UPSTREAM, DetectorKind.BUS_REQUEST)


class FieldDetectors:
    """Reads every detector of the junction once per simulated second."""

    def __init__(
        self,
        sumo: ModuleType,
        detectors: Sequence[DetectorInfo],
        button_crossings: Mapping[str, tuple[str, ...]],
    ) -> None:
        """``button_crossings`` maps a push-button id to the crossing edges it serves."""
        self._sumo = sumo
        self._loops = [d for d in detectors if d.kind in _LOOP_KINDS]
        self._queues = [d for d in detectors if d.kind is DetectorKind.QUEUE]
        self._buttons = [d for d in detectors if d.kind is DetectorKind.PUSH_BUTTON]
        self._button_crossings = {k: frozenset(v) for k, v in button_crossings.items()}
        self._seen: dict[str, set[str]] = {d.id: set() for d in (*self._loops, *self._queues)}
        self._seq: dict[str, int] = {d.id: 0 for d in detectors}
        known_loops = set(sumo.inductionloop.getIDList())
        known_areas = set(sumo.lanearea.getIDList())
        missing = [d.id for d in self._loops if d.id not in known_loops]
        missing += [d.id for d in self._queues if d.id not in known_areas]
        if missing:
            raise ValueError(f"detectors missing from the simulation: {', '.join(missing[:5])}")

    def read(self, sim_time: float) -> list[DetectorReading]:
        s = self._sumo
        ts = sim_time
        out: list[DetectorReading] = []
        for d in self._loops:
            ids = set(s.inductionloop.getLastStepVehicleIDs(d.id))
            if d.kind is DetectorKind.BUS_REQUEST:
                # A bus request point (ÖPNV-Anmeldung) answers only to buses.
                ids = {v for v in ids if s.vehicle.getVehicleClass(v) == "bus"}
            new = len(ids - self._seen[d.id])
            self._seen[d.id] = ids
            speed = s.inductionloop.getLastStepMeanSpeed(d.id)
            out.append(
                DetectorReading(
                    detector_id=d.id,
                    ts=ts,
                    seq=self._next(d.id),
                    count=new,
                    occupancy=min(1.0, max(0.0, s.inductionloop.getLastStepOccupancy(d.id) / 100)),
                    presence=bool(ids),
                    speed_mps=speed if speed >= 0 else None,
                )
            )
        for d in self._queues:
            # Like a loop, a queue sensor counts vehicles that entered its zone since the
            # last reading (not those standing in it: that is what queue_m is for).
            ids = set(s.lanearea.getLastStepVehicleIDs(d.id))
            entered = len(ids - self._seen[d.id])
            self._seen[d.id] = ids
            out.append(
                DetectorReading(
                    detector_id=d.id,
                    ts=ts,
                    seq=self._next(d.id),
                    count=entered,
                    occupancy=min(1.0, max(0.0, s.lanearea.getLastStepOccupancy(d.id) / 100)),
                    queue_m=max(0.0, s.lanearea.getJamLengthMeters(d.id)),
                )
            )
        if self._buttons:
            waiting = self._waiting_crossings()
            for d in self._buttons:
                pressed = bool(self._button_crossings.get(d.id, frozenset()) & waiting)
                out.append(
                    DetectorReading(
                        detector_id=d.id,
                        ts=ts,
                        seq=self._next(d.id),
                        count=int(pressed),
                        presence=pressed,
                        pressed=pressed,
                    )
                )
        return out

    def _waiting_crossings(self) -> set[str]:
        """Crossings for which at least one person stands at the kerb."""
        s = self._sumo
        waiting: set[str] = set()
        for pid in s.person.getIDList():
            road = s.person.getRoadID(pid)
            if not road.startswith(":") or s.person.getSpeed(pid) > 0.2:
                continue
            nxt = s.person.getNextEdge(pid)
            if nxt:
                waiting.add(nxt)
        return waiting

    def _next(self, det_id: str) -> int:
        seq = self._seq[det_id]
        self._seq[det_id] = seq + 1
        return seq
