"""Scenario-run drivers for the adaptive controller: ``adaptive`` and ``oracle``.

``adaptive`` wires the product as it runs at the junction, in one process:

    field detectors --readings--> InProcessTransport --> AdaptiveCore
    simulated hardware <--plans-- InProcessTransport <-- (decisions)
    simulated hardware --state, acks--> InProcessTransport --> AdaptiveCore

Each simulated second: the readings go to the core, the hardware
(``sim.hardware.SignalController`` with the Webster fixed-time program as its
stored fallback) ticks, its state goes to the core, the core ticks and may
publish plan commands, the hardware answers each with an ack, and the acks go
to the core.  The core's evaluator is the SUMO twin (``controller.twin``), a
separate simulation in worker processes fed only by what the detectors
reported.  The driver never hands the field simulation to the core.

``oracle`` is evaluation-only: the same optimiser and twin, but health,
estimate and twin snapshot come from ground truth read out of the field
simulation (``observe_truth``).  The gap between ``oracle`` and ``adaptive``
is what detection and estimation cost.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from controller.adaptive import (
    PEDESTRIAN_SLACK_S,
    AdaptiveConfig,
    AdaptiveCore,
    Decision,
    DetectorPerception,
    Evaluator,
    Perception,
    Proposer,
    RunningCheck,
    SnapshotSource,
)
from controller.estimator import ApproachEstimate, Estimate, GroupEstimate
from controller.health import Degradation
from controller.messages import DetectorReading, HardwareState
from controller.plans import SignalProgram, stage_green_times
from controller.signals import GroupKind
from controller.transport import InProcessTransport, Journal, exchange
from controller.twin import (
    BUS,
    CAR,
    DEFAULT_PEDESTRIAN_WEIGHT,
    SnapshotBuilder,
    TwinConfig,
    TwinSnapshot,
    TwinVehicle,
)
from sim.drivers import DriverContext, register_driver
from sim.flows import saturation_flow
from sim.hardware import SignalController
from sim.junction import JunctionModel
from sim.twin_config import pocket_spills_from_model

#: Twin horizon of scenario runs (evaluation.md: >= 300 s).
TWIN_HORIZON_S = 300
TWIN_WORKERS = 2
#: The ``adaptive-ped-weight`` variant's pedestrian weight (``TwinConfig.pedestrian_weight``):
#: measured in docs/adaptive.md ("Session 8") beside 1 and 5.
VARIANT_PEDESTRIAN_WEIGHT = 3.0
DECISIONS_FILE = "decisions.jsonl"
_defaults = {"horizon_s": TWIN_HORIZON_S, "workers": TWIN_WORKERS}


def set_twin_defaults(*, horizon_s: int | None = None, workers: int | None = None) -> None:
    """Twin horizon and worker count of the registered drivers in this process.

    For batch workers (a process pool initializer): several scenario runs in
    parallel each start a twin, and the cores are shared.
    """
    if horizon_s is not None:
        if horizon_s < 60:
            raise ValueError("a twin horizon below 60 s cannot see a whole cycle")
        _defaults["horizon_s"] = horizon_s
    if workers is not None:
        if workers < 1:
            raise ValueError("the twin needs at least one worker")
        _defaults["workers"] = workers


# -- the parts a driver plugs into the core ---------------------------------------------


@dataclass
class Parts:
    """Optimiser, evaluator and snapshot source of one run, and how to release them."""

    proposer: Proposer
    evaluator: Evaluator
    snapshots: SnapshotSource
    close: Callable[[], None] = lambda: None
    label: str = ""
    #: Retires a running plan the capacity rule forbids (``optimiser.capacity_check``).
    running_check: RunningCheck | None = None


def twin_parts(model: JunctionModel, *, horizon_s: int | None = None,
               workers: int | None = None,
               pedestrian_weight: float = DEFAULT_PEDESTRIAN_WEIGHT) -> Parts:
    """The production parts: the project's optimiser and the SUMO twin in worker processes."""
    horizon_s = _defaults["horizon_s"] if horizon_s is None else horizon_s
    workers = _defaults["workers"] if workers is None else workers
    from controller.optimiser import capacity_check, propose
    from controller.twin import SnapshotBuilder, SumoTwin
    from sim.twin_config import twin_config_from_model

    config = twin_config_from_model(model, horizon_s=horizon_s,
                                    pedestrian_weight=pedestrian_weight)
    twin = SumoTwin(config, workers=workers)
    return Parts(
        proposer=propose,
        evaluator=twin,
        snapshots=SnapshotBuilder(config),
        close=twin.close,
        label=f"twin {horizon_s} s",
        running_check=capacity_check,
    )


def perception_for(model: JunctionModel, snapshots: SnapshotSource) -> DetectorPerception:
    """Health, estimator and snapshot source from the junction's detector configuration."""
    return DetectorPerception(
        model.signals,
        model.detectors,
        snapshots,
        lanes_per_group={
            g.id: max(1, len(model.group_in_lanes.get(g.id, ())))
            for g in model.signals.groups
            if g.is_vehicular
        },
        turns={g.id: g.label for g in model.signals.groups},
        pockets=pocket_spills_from_model(model),
    )


# -- the adaptive driver -----------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


def decision_json(d: Decision) -> dict[str, object]:
    """One decision as a JSON object (a line of ``decisions.jsonl``)."""
    return {
        "ts": d.ts, "epoch": d.epoch, "outcome": d.outcome.value, "reason": d.reason,
        "running": d.running_id, "running_delay_s": d.running_delay_s,
        "chosen": d.chosen, "renewed": d.renewed, "switch_at": d.switch_at,
        "candidates": [
            {"id": c.program_id, "label": c.label, "analytic_delay_s": c.analytic_delay_s,
             "person_delay_s": c.person_delay_s, "pedestrian_delay_s": c.pedestrian_delay_s,
             "violations": None if c.violations is None else list(c.violations),
             "refused": c.refused}
            for c in d.candidates
        ],
        "latency": {
            "estimate_s": d.latency.estimate_s, "propose_s": d.latency.propose_s,
            "snapshot_s": d.latency.snapshot_s, "evaluate_s": d.latency.evaluate_s,
            "validate_s": d.latency.validate_s, "total_s": d.latency.total_s,
        },
    }


class AdaptiveDriver:
    """Simulated hardware plus the adaptive core, linked by an in-process transport.

    ``journal``: record every input of the core and every command it issued
    (``controller.transport.replay`` reproduces the commands from it).
    """

    native = False

    def __init__(
        self,
        ctx: DriverContext,
        *,
        parts: Parts | None = None,
        config: AdaptiveConfig | None = None,
        journal: Journal | None = None,
        perception: Perception | None = None,
    ) -> None:
        self.model = ctx.model
        self.run_dir = Path(ctx.run_dir)
        self.hardware = SignalController(ctx.model.signals, ctx.fixed_program)
        self.transport = InProcessTransport()
        self.parts = parts if parts is not None else twin_parts(ctx.model)
        self.journal = journal
        self.core = AdaptiveCore(
            ctx.model.signals,
            ctx.fixed_program,
            perception=perception or perception_for(ctx.model, self.parts.snapshots),
            proposer=self.parts.proposer,
            evaluator=self.parts.evaluator,
            config=config,
            timer=time.perf_counter,
            running_check=self.parts.running_check,
        )
        self.decisions: list[Decision] = []
        self._closed = False

    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str]:
        self.transport.deliver(readings)
        states = self.hardware.tick(now)
        self.transport.deliver([self.hardware.state(now)])
        before = self.core.stats.recorded
        exchange(self.core, self.transport, now, journal=self.journal)
        if self.core.stats.recorded != before and self.core.last_decision is not None:
            self.decisions.append(self.core.last_decision)
        commands = self.transport.take_commands()
        if commands:
            self.transport.deliver([self.hardware.submit(cmd, now) for cmd in commands])
            exchange(self.core, self.transport, now, tick=False, journal=self.journal)
        return states

    def close(self) -> dict[str, object]:
        if not self._closed:
            self._closed = True
            self.parts.close()
        s = self.core.stats
        hw = self.hardware.stats
        latencies = [d.latency.total_s for d in self.decisions if d.candidates]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / DECISIONS_FILE).open("w", encoding="utf-8") as f:
            for d in self.decisions:
                f.write(json.dumps(decision_json(d)) + "\n")
        return {
            "evaluator": self.parts.label,
            "decisions": s.decisions,
            "plans_pushed": s.plans_pushed,
            "renewals": s.renewals,
            "plans_accepted_by_hardware": hw.plans_accepted,
            "rejected_by_hardware": s.rejected_by_hardware,
            "hardware_reject_reasons": list(s.hardware_reject_reasons[:10]),
            "rejected_by_validator": dict(s.rejected_by_rule),
            "below_pedestrian_floor": s.pedestrian_floor_refusals,
            "fallback_decisions": s.fallback_decisions,
            "handovers": s.handovers,
            "hardware_fallbacks": hw.fallbacks,
            "seconds_in_fallback": hw.seconds_in_fallback,
            "decision_failures": s.failures,
            "decision_latency_p50_s": _percentile(latencies, 50),
            "decision_latency_p99_s": _percentile(latencies, 99),
            "monitor_faults": len(hw.monitor_faults),
        }


# -- the oracle (evaluation only) ----------------------------------------------------------


#: Seconds a vehicle that left the approach edges stays known (internal lanes between edges).
KNOWN_FOR_S = 30.0


class TruthPerception:
    """Ground truth in place of detector data: for the ``oracle`` driver only.

    ``observe_truth`` reads the field simulation each second: per signal group
    the vehicles standing in its queue, the vehicles newly arriving on its
    approach (smoothed with the estimator's kernel), and the persons waiting
    at its crossing; and, for the twin, every vehicle on the lanes the twin
    models, with its true position, speed and signal group.  Health is perfect
    by construction.
    """

    def __init__(self, model: JunctionModel, snapshots: SnapshotSource,
                 *, twin: TwinConfig | None = None, flow_time_constant_s: float = 300.0) -> None:
        self.model = model
        self.snapshots = snapshots
        self.twin = twin
        self.tau = flow_time_constant_s
        groups = [g.id for g in model.signals.groups]
        self._rate: dict[str, float] = dict.fromkeys(groups, 0.0)
        self._queue: dict[str, float] = dict.fromkeys(groups, 0.0)
        #: Vehicle id -> last second seen on an approach.  Kept for a while after a vehicle
        #: drops out: between two chained approach edges it is on an internal lane for a
        #: second or two and must not be counted again as a new arrival.
        self._known: dict[str, float] = {}
        self._waiting: dict[str, float] = {}
        self._vehicles: tuple[TwinVehicle, ...] = ()
        self._t: float | None = None
        self._t0: float | None = None
        self._crossing_group: dict[str, str] = {
            link.crossing: model.group_of_link(link.index)
            for link in model.links if link.crossing
        }
        self._twin_groups = {r.group for r in twin.routes} if twin is not None else set()
        #: Seconds of ground truth read, and vehicles placed in the last twin snapshot.
        self.seconds_observed = 0
        self.vehicles_in_snapshot = 0

    def observe_truth(self, sumo: ModuleType, now: float) -> None:
        dt = 1.0 if self._t is None else max(now - self._t, 1e-6)
        if self._t0 is None:
            self._t0 = now
        self._t = now
        self.seconds_observed += 1
        decay = math.exp(-dt / self.tau)
        arrived = dict.fromkeys(self._rate, 0)
        queue = dict.fromkeys(self._rate, 0.0)
        present: dict[str, float] = {}
        vehicles: list[TwinVehicle] = []
        tls = self.model.signals.tls_id
        lanes = self.twin.lanes if self.twin is not None else {}
        for approach in self.model.approaches:
            for edge in approach.in_edges:
                for vid in sumo.edge.getLastStepVehicleIDs(edge):
                    nxt = sumo.vehicle.getNextTLS(vid)
                    if not nxt or nxt[0][0] != tls:
                        continue
                    try:
                        g = self.model.group_of_link(int(nxt[0][1]))
                    except KeyError:
                        continue
                    present[vid] = now
                    if vid not in self._known:
                        arrived[g] += 1
                    speed = sumo.vehicle.getSpeed(vid)
                    if speed < 0.1:
                        queue[g] += 1.0
                    lane = sumo.vehicle.getLaneID(vid)
                    if lane in lanes and g in self._twin_groups:
                        vclass = sumo.vehicle.getVehicleClass(vid)
                        vehicles.append(TwinVehicle(
                            BUS if vclass == "bus" else CAR, lane,
                            sumo.vehicle.getLanePosition(vid), speed >= 0.1, (g,),
                        ))
        self._known = {v: t for v, t in self._known.items() if now - t <= KNOWN_FOR_S}
        self._known.update(present)
        self._vehicles = tuple(_placeable(vehicles, self.twin)) if self.twin is not None else ()
        for g in self._rate:
            # Same exponential kernel as the estimator, so the two are comparable.
            self._rate[g] = self._rate[g] * decay + arrived[g]
            self._queue[g] = queue[g]
        waiting = dict.fromkeys(set(self._crossing_group.values()), 0)
        for pid in sumo.person.getIDList():
            road = sumo.person.getRoadID(pid)
            if not road.startswith(":") or sumo.person.getSpeed(pid) > 0.2:
                continue
            crossing = self._crossing_group.get(sumo.person.getNextEdge(pid))
            if crossing is not None:
                waiting[crossing] += 1
        for g, n in waiting.items():
            if n:
                self._waiting.setdefault(g, now)
            else:
                self._waiting.pop(g, None)

    # -- Perception --------------------------------------------------------------
    def on_reading(self, reading: DetectorReading, now: float) -> None:
        self.snapshots.observe(reading)

    def on_state(self, state: HardwareState) -> None:
        self.snapshots.observe_state(state)

    def tick(self, now: float) -> None:
        return None

    def degradation(self) -> Degradation:
        return Degradation(True, "ground truth", frozenset(), frozenset())

    def estimate(self, now: float, running: SignalProgram) -> Estimate:
        elapsed = 0.0 if self._t0 is None else now - self._t0
        # The kernel's weight so far: early rates are not underestimated.
        norm = self.tau * (1.0 - math.exp(-max(elapsed, 1.0) / self.tau))
        greens = stage_green_times(running)
        groups: dict[str, GroupEstimate] = {}
        for g in self.model.signals.groups:
            share = greens.get(g.id, 0) / running.cycle_s
            if g.kind is GroupKind.PEDESTRIAN:
                since = self._waiting.get(g.id)
                groups[g.id] = GroupEstimate(
                    flow_veh_h=0.0, queue_veh=0.0, queue_m=0.0, saturation_veh_h=0.0,
                    degree_of_saturation=0.0, demand=since is not None,
                    ped_waiting_s=0.0 if since is None else now - since, bus_eta_s=None,
                    data_ok=True, approach=g.approach, green_share=share,
                )
                continue
            flow = 3600.0 * self._rate[g.id] / norm
            sat = saturation_flow(self.model, g.id)
            lanes = max(1, len(self.model.group_in_lanes.get(g.id, ())))
            q = self._queue[g.id]
            groups[g.id] = GroupEstimate(
                flow_veh_h=flow, queue_veh=q, queue_m=q * 7.0 / lanes, saturation_veh_h=sat,
                degree_of_saturation=flow / (sat * max(share, 0.02)) if sat > 0 else 0.0,
                demand=q >= 0.5, ped_waiting_s=0.0, bus_eta_s=None, data_ok=True,
                approach=g.approach, green_share=share,
            )
        approaches: dict[str, ApproachEstimate] = {}
        for a in {ge.approach for ge in groups.values()}:
            members = [ge for ge in groups.values() if ge.approach == a]
            approaches[a] = ApproachEstimate(
                queue_m=max((ge.queue_m for ge in members), default=0.0),
                queue_veh=sum(ge.queue_veh for ge in members),
                flow_veh_h=sum(ge.flow_veh_h for ge in members),
                delay_s=None,
            )
        return Estimate(ts=now, groups=groups, approaches=approaches)

    def snapshot(
        self, now: float, estimate: Estimate, running: SignalProgram, cycle_second: int
    ) -> Any:
        base = self.snapshots.snapshot(now, estimate, running, cycle_second)
        if not isinstance(base, TwinSnapshot):
            return base
        # Flows and turning shares already follow the true estimate; the vehicles and
        # pedestrian requests are replaced by the true ones.
        self.vehicles_in_snapshot = len(self._vehicles)
        return replace(
            base,
            vehicles=self._vehicles,
            pedestrian_waiting_s={g: now - t for g, t in self._waiting.items()},
        )


def _placeable(vehicles: Sequence[TwinVehicle], twin: TwinConfig) -> list[TwinVehicle]:
    """The vehicles SUMO can insert where they are: whole on their lane, not overlapping.

    A vehicle whose back still lies on the upstream lane cannot be inserted with
    its front position on this one; it is left out (one vehicle at most per lane
    boundary), as the twin's own snapshot builder does.
    """
    out: list[TwinVehicle] = []
    by_lane: dict[str, list[TwinVehicle]] = {}
    for v in vehicles:
        by_lane.setdefault(v.lane, []).append(v)
    for lane, group in sorted(by_lane.items()):
        limit = twin.lanes[lane].length_m - 0.5
        for v in sorted(group, key=lambda x: -x.pos_m):
            length = twin.bus_length_m if v.kind == BUS else twin.jam_spacing_m - 2.5
            pos = min(v.pos_m, limit)
            if pos - length < 0:
                continue
            out.append(replace(v, pos_m=round(pos, 2)))
            limit = pos - length - 2.5
    return out


class OracleDriver(AdaptiveDriver):
    """EVALUATION ONLY: the adaptive optimiser and twin fed ground truth, not detector data."""

    def __init__(self, ctx: DriverContext, *, parts: Parts | None = None,
                 config: AdaptiveConfig | None = None) -> None:
        parts = parts if parts is not None else twin_parts(ctx.model)
        twin = parts.snapshots.config if isinstance(parts.snapshots, SnapshotBuilder) else None
        self.truth = TruthPerception(ctx.model, parts.snapshots, twin=twin)
        super().__init__(ctx, parts=parts, config=config, perception=self.truth)

    def observe_truth(self, sumo: ModuleType, now: float) -> None:
        self.truth.observe_truth(sumo, now)


register_driver("adaptive", AdaptiveDriver)
register_driver("oracle", OracleDriver)
# The same controller with the pedestrian floor on: what the policy costs and buys.
register_driver("adaptive-ped-floor", lambda ctx: AdaptiveDriver(
    ctx, config=AdaptiveConfig(pedestrian_slack_s=PEDESTRIAN_SLACK_S)))
# The softer policy: each pedestrian weighs VARIANT_PEDESTRIAN_WEIGHT persons in the twin's ranking.
register_driver("adaptive-ped-weight", lambda ctx: AdaptiveDriver(
    ctx, parts=twin_parts(ctx.model, pedestrian_weight=VARIANT_PEDESTRIAN_WEIGHT)))
