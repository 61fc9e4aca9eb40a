"""The SUMO twin: scores candidate signal programs by predicted person delay.

The twin is fed only by what detector messages and the hardware's state
carry.  ``SnapshotBuilder`` turns the message stream into a ``TwinSnapshot``
(standing queues per lane from the queue sensors, vehicles in transit from the
upstream loops, arrival flows and turning shares, pending bus and pedestrian
requests).  ``SumoTwin`` runs every candidate program from that snapshot over
the horizon in worker processes (libsumo holds one simulation per process, and
twin evaluations must never block the service's event loop) and returns one
``TwinScore`` per program.

Everything that crosses into a worker is plain picklable data defined here or
in ``controller.plans``/``controller.signals``: ``TwinConfig`` once, then
``TwinSnapshot`` and ``SignalProgram`` per task.  This module never imports
``sim/``; ``sim.twin_config`` builds the ``TwinConfig`` from a junction model.
Method, choices and measured numbers: docs/twin.md.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from controller.estimator import Estimate, PocketSpill, pocket_overflow_m
from controller.messages import DetectorReading, HardwareState
from controller.plans import SignalProgram, group_states
from controller.signals import GroupKind, JunctionSignals, SignalState

CAR = "car"
BUS = "bus"

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class TwinRoute:
    """One movement through the junction, as the edge list SUMO drives."""

    id: str
    approach: str
    #: Edges from the arm's entry edge to the exit edge.
    edges: tuple[str, ...]
    #: Signal group that releases it.
    group: str
    #: Default share of the group's flow taking this route (shares of a group sum to 1).
    share: float


@dataclass(frozen=True, slots=True)
class TwinLane:
    """A lane vehicles can be placed on in the twin."""

    id: str
    edge: str
    index: int
    length_m: float


@dataclass(frozen=True, slots=True)
class TwinApproach:
    """One arm: where vehicles enter, and its vehicle signal groups."""

    id: str
    entry_edge: str
    #: Metres from the entry to the first upstream loop: vehicles there are not yet seen.
    unseen_m: float
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TwinLoop:
    """An induction loop upstream of the stop line (arrivals, bus requests)."""

    lane: str
    pos_m: float
    #: Distance from the loop to the stop line.
    distance_m: float
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TwinQueueSensor:
    """A queue sensor (radar): lanes upstream to downstream, the last at the stop line."""

    lanes: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TwinYield:
    """Turning links of a vehicle group that yield to a pedestrian crossing.

    In the field, a right turner released together with the parallel crossing
    waits while pedestrians walk towards its path; on a shared through+right
    lane the through vehicles behind it wait too.  The twin has no persons, so
    it holds these links red for the seconds pedestrians are expected to block
    them (``yield_holds``).
    """

    pedestrian_group: str
    vehicle_group: str
    #: Junction link indices (``signals``' numbering) of the yielding movement.
    links: tuple[int, ...]
    #: Seconds one pedestrian keeps the conflict area blocked (crossing length / walking
    #: speed plus a start-up second or two): static geometry.
    clear_s: float


#: Persons one pedestrian counts for in the ranking score unless configured otherwise.
DEFAULT_PEDESTRIAN_WEIGHT = 1.0
#: The twin's drivers unless configured otherwise: SUMO's default driver's queue discharge
#: (docs/twin.md, "Drivers").
DEFAULT_STARTUP_DELAY_S = 0.7
DEFAULT_CAR_ACCEL_MPS2 = 2.3


@dataclass(frozen=True)
class TwinConfig:
    """Everything a twin worker needs, as plain picklable data (no ground truth).

    ``net_file`` is the junction's SUMO network: configuration, like the
    signal groups; the twin learns the traffic only from the snapshot.
    """

    net_file: str
    tls_id: str
    signals: JunctionSignals
    link_count: int
    approaches: tuple[TwinApproach, ...]
    routes: tuple[TwinRoute, ...]
    lanes: Mapping[str, TwinLane]
    #: Stop-line lane -> routes that leave from it (a queued vehicle cannot change lanes).
    lane_routes: Mapping[str, tuple[str, ...]]
    upstream: Mapping[str, TwinLoop]
    queues: Mapping[str, TwinQueueSensor]
    bus_requests: Mapping[str, TwinLoop]
    #: Push-button id -> the pedestrian groups it requests.
    push_buttons: Mapping[str, tuple[str, ...]]
    #: Persons per vehicle by twin vehicle kind (``car``, ``bus``).
    occupancy: Mapping[str, float] = field(default_factory=lambda: {CAR: 1.3, BUS: 20.0})
    #: Weight of one pedestrian in the person delay that ranks plans (Gewichtung des
    #: Fußverkehrs), a policy: 1 counts a pedestrian as one person, as a car counts 1.3.
    #: Above 1 the twin trades vehicle time for pedestrian time more readily; measured
    #: in docs/adaptive.md ("Session 8").  ``TwinScore.pedestrian_delay_s`` is unweighted.
    pedestrian_weight: float = DEFAULT_PEDESTRIAN_WEIGHT
    #: Flow assumed per vehicle group without data (veh/h).
    default_flow_veh_h: float = 300.0
    #: Pedestrian arrivals per hour per pedestrian group (analytic pedestrian delay).
    pedestrian_flow_per_h: Mapping[str, float] = field(default_factory=dict)
    horizon_s: int = 300
    #: At low demand one draw of the horizon's arrivals decides the ranking: a plan that
    #: suits the few drawn vehicles wins by chance.  Every program is then scored on
    #: several independent draws (the same draws for every program), until about
    #: ``replication_vehicles`` vehicles are simulated in all, at most
    #: ``max_replications`` draws (``replications``).  At peak demand one draw holds
    #: that many vehicles already, so peak latency is unchanged.
    max_replications: int = 4
    replication_vehicles: int = 150
    step_length_s: float = 1.0
    seed: int = 42
    free_speed_mps: float = 13.89
    bus_speed_mps: float = 8.0
    #: Road taken by one standing car (5 m car + 2.5 m gap, SUMO's defaults).
    jam_spacing_m: float = 7.5
    bus_length_m: float = 12.0
    #: Time constant of the fallback flow smoothing when no ``Estimate`` is given.
    flow_time_constant_s: float = 300.0
    #: A bus request is dropped after this long, or once its group was green this long
    #: after the bus's expected arrival (there is no check-out detector).
    bus_request_timeout_s: float = 180.0
    bus_served_green_s: float = 5.0
    #: Queue readings older than this are ignored (the estimate's queue is used instead).
    queue_max_age_s: float = 5.0
    #: Twin link index -> junction link index (``signals``' numbering) when the twin's
    #: network has other link indices (the vehicle-only twin network); empty: the same.
    link_map: tuple[int, ...] = ()
    #: Vehicles leave this far into their exit edge (0: at its end).  Past the acceleration
    #: after the junction a vehicle loses no more time, and every metre more costs steps.
    exit_m: float = 0.0
    #: Simulate the running program's rest of cycle, which every candidate shares, once per
    #: snapshot and start every program from the state at the cycle boundary.
    share_prefix: bool = True
    #: Seconds between time-loss samples of the vehicles in the twin.
    loss_sample_s: int = 5
    #: Cost-to-go of the queues left at the horizon's end (Restrückstau), in seconds of
    #: delay per vehicle ahead in the same queue: a lane with ``n`` vehicles standing (or
    #: waiting to enter) adds ``terminal_s_per_vehicle * n (n + 1) / 2``.  Without it a
    #: plan that lets one queue grow looks cheap: the delay its queue will still cause
    #: falls after the horizon.  Off (0) by default: 4 s, measured on three scenarios x two
    #: seeds, changed nothing in asymmetric turning and cost a few per cent at midday
    #: (docs/twin.md).
    terminal_s_per_vehicle: float = 0.0
    #: A vehicle slower than this at the horizon's end counts as queued.
    terminal_queued_mps: float = 2.0
    #: Turning links that yield to a crossing's pedestrians (held while they walk).
    yields: tuple[TwinYield, ...] = ()
    #: Pockets whose overflow the twin places on the feeding lane as the pocket's turners.
    pocket_spills: tuple[PocketSpill, ...] = ()
    #: Weight of ``pedestrian_flow_per_h`` against the push-button record, in seconds of
    #: red exposure (the arrival-rate estimate of ``SnapshotBuilder``).
    pedestrian_prior_s: float = 600.0
    #: Forgetting of the push-button record per second (time constant, seconds).
    pedestrian_time_constant_s: float = 1800.0
    #: The twin's drivers: SUMO's Krauss model without imperfection, so that runs are
    #: deterministic.  Without imperfection SUMO's default driver releases a standing
    #: queue about 30 % faster than the field's default driver (``sigma`` 0.5), and
    #: a twin with more capacity than the field prefers cycles that are too short.  A
    #: start-up delay (s) and a lower acceleration of the cars (m/s²) make the twin's
    #: discharge match the field's, second by second of green (docs/twin.md, "Drivers";
    #: ``bench/twin_discharge.py``).  The reaction time stays SUMO's 1 s, the step
    #: length: with any other the score of a program depended on the program the worker
    #: had run before it.  At a real junction: calibrate to its measured saturation flow.
    startup_delay_s: float = DEFAULT_STARTUP_DELAY_S
    car_accel_mps2: float = DEFAULT_CAR_ACCEL_MPS2

    def __post_init__(self) -> None:
        if self.horizon_s < 1 or self.step_length_s != 1.0:
            raise ValueError("the twin steps whole seconds over a positive horizon")
        if self.loss_sample_s < 1 or self.exit_m < 0:
            raise ValueError("loss_sample_s must be >= 1 and exit_m >= 0")
        if self.terminal_s_per_vehicle < 0 or self.terminal_queued_mps < 0:
            raise ValueError("terminal_s_per_vehicle and terminal_queued_mps must be >= 0")
        if self.max_replications < 1 or self.replication_vehicles < 1:
            raise ValueError("max_replications and replication_vehicles must be >= 1")
        if not (self.startup_delay_s >= 0 and self.car_accel_mps2 > 0):
            raise ValueError("startup_delay_s must be >= 0 and car_accel_mps2 above 0")
        if not (math.isfinite(self.pedestrian_weight) and self.pedestrian_weight > 0):
            raise ValueError("pedestrian_weight must be a finite number above 0")
        object.__setattr__(self, "lanes", dict(self.lanes))
        object.__setattr__(self, "lane_routes", dict(self.lane_routes))
        object.__setattr__(self, "upstream", dict(self.upstream))
        object.__setattr__(self, "queues", dict(self.queues))
        object.__setattr__(self, "bus_requests", dict(self.bus_requests))
        object.__setattr__(self, "push_buttons", dict(self.push_buttons))
        object.__setattr__(self, "occupancy", dict(self.occupancy))
        object.__setattr__(self, "pedestrian_flow_per_h", dict(self.pedestrian_flow_per_h))

    @property
    def vehicle_groups(self) -> tuple[str, ...]:
        return tuple(g for a in self.approaches for g in a.groups)

    @property
    def pedestrian_groups(self) -> tuple[str, ...]:
        return tuple(g.id for g in self.signals.groups if g.kind is GroupKind.PEDESTRIAN)


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True, slots=True)
class TwinVehicle:
    """A vehicle the twin places at the start: standing in a queue or in transit."""

    kind: str
    lane: str
    #: Front position on ``lane`` in metres from the lane start.
    pos_m: float
    #: 0 for standing vehicles; moving ones enter at the highest safe speed.
    moving: bool
    #: Groups whose routes it may take; on a stop-line lane only that lane's routes.
    groups: tuple[str, ...]
    #: Waits at the entry of a full pocket: takes only ``groups``' routes, not the
    #: other routes of the lane it stands on.
    spill: bool = False


@dataclass(frozen=True)
class TwinSnapshot:
    """What the detectors said at ``now``: the twin's whole knowledge of the traffic."""

    now: float
    running: SignalProgram
    #: The cycle second the hardware showed last; the next one shown is ``cycle_second + 1``.
    cycle_second: int
    vehicles: tuple[TwinVehicle, ...]
    #: Arrival flow per vehicle group (veh/h) over the horizon.
    flows_veh_h: Mapping[str, float]
    #: Route id -> share of its approach's arrivals (turning ratios).
    route_shares: Mapping[str, float]
    #: Pedestrian group -> seconds its oldest pending request has waited.
    pedestrian_waiting_s: Mapping[str, float]
    pedestrian_flow_per_h: Mapping[str, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "flows_veh_h", dict(self.flows_veh_h))
        object.__setattr__(self, "route_shares", dict(self.route_shares))
        object.__setattr__(self, "pedestrian_waiting_s", dict(self.pedestrian_waiting_s))
        object.__setattr__(self, "pedestrian_flow_per_h", dict(self.pedestrian_flow_per_h))


@dataclass
class _Bus:
    ts: float
    detector: str
    green_s: float = 0.0


class SnapshotBuilder:
    """Keeps what the twin needs from the detector stream and the hardware state.

    Pure and clock-free like the estimator: the caller feeds every reading and
    every hardware state and passes ``now`` to ``snapshot``.
    """

    def __init__(self, config: TwinConfig) -> None:
        self.config = config
        # (ts, count, speed) per upstream loop, only as long as a vehicle can be in transit.
        self._passages: dict[str, deque[tuple[float, int, float]]] = {
            d: deque() for d in config.upstream
        }
        self._queue: dict[str, tuple[float, float]] = {}
        self._rate: dict[str, tuple[float, float]] = {}
        self._buses: list[_Bus] = []
        self._ped_since: dict[str, float] = {}
        # Pedestrian arrival rate from the push-buttons: per crossing, when its red began,
        # whether this red saw a press yet, and the forgotten sums of first presses and of
        # red exposure (seconds until the first press, or the whole red without one).
        self._ped_red: dict[str, float | None] = {}
        self._ped_pressed: dict[str, bool] = {}
        self._ped_n: dict[str, float] = {}
        self._ped_t: dict[str, float] = {}
        self._ped_last: dict[str, float] = {}
        self._green: dict[str, bool] = {}
        self._last_state_ts: float | None = None
        cfg = config
        self._transit_s = {
            d: loop.distance_m / cfg.free_speed_mps + 5.0 for d, loop in cfg.upstream.items()
        }

    # -- input ------------------------------------------------------------------
    def observe(self, reading: DetectorReading) -> None:
        cfg = self.config
        did = reading.detector_id
        if did in cfg.upstream:
            if reading.count > 0:
                speed = reading.speed_mps if reading.speed_mps and reading.speed_mps > 1.0 else (
                    cfg.free_speed_mps
                )
                self._passages[did].append((reading.ts, reading.count, speed))
            self._count(did, reading.ts, max(reading.count, 0))
        elif did in cfg.queues:
            if reading.queue_m is not None and math.isfinite(reading.queue_m):
                self._queue[did] = (reading.ts, max(0.0, reading.queue_m))
        elif did in cfg.bus_requests:
            for _ in range(max(reading.count, 0)):
                self._buses.append(_Bus(reading.ts, did))
        elif did in cfg.push_buttons and reading.pressed:
            for g in cfg.push_buttons[did]:
                self._ped_since.setdefault(g, reading.ts)
                start = self._ped_red.get(g)
                if start is not None and not self._ped_pressed.get(g, False):
                    # The first press of a red: the time to the first arrival.
                    self._ped_pressed[g] = True
                    self._ped_exposure(g, reading.ts, reading.ts - start, 1.0)

    def observe_state(self, state: HardwareState) -> None:
        """Signal group states as the hardware reports them (about once per second)."""
        dt = 1.0 if self._last_state_ts is None else max(0.0, state.ts - self._last_state_ts)
        self._last_state_ts = state.ts
        green = SignalState.GREEN.value
        ped_groups = self._ped_groups
        for gid, ch in zip(self.config.signals.group_ids, state.signal_states, strict=False):
            self._green[gid] = ch == green
            if ch == green:
                self._ped_since.pop(gid, None)
            if gid in ped_groups:
                start = self._ped_red.get(gid)
                if ch == green:
                    if start is not None and not self._ped_pressed.get(gid, False):
                        # A whole red without a press: censored exposure.
                        self._ped_exposure(gid, state.ts, state.ts - start, 0.0)
                    self._ped_red[gid] = None
                elif gid not in self._ped_red or start is None:
                    self._ped_red[gid] = state.ts
                    self._ped_pressed[gid] = False
        cfg = self.config
        kept: list[_Bus] = []
        for bus in self._buses:
            loop = cfg.bus_requests[bus.detector]
            eta = bus.ts + loop.distance_m / cfg.bus_speed_mps
            if state.ts >= eta and any(self._green.get(g, False) for g in loop.groups):
                bus.green_s += dt
            if bus.green_s < cfg.bus_served_green_s and state.ts - bus.ts < (
                cfg.bus_request_timeout_s
            ):
                kept.append(bus)
        self._buses = kept

    @property
    def _ped_groups(self) -> frozenset[str]:
        return frozenset(self.config.pedestrian_groups)

    def _ped_exposure(self, group: str, ts: float, exposure_s: float, arrivals: float) -> None:
        tau = self.config.pedestrian_time_constant_s
        decay = math.exp(-max(0.0, ts - self._ped_last.get(group, ts)) / tau)
        self._ped_last[group] = ts
        self._ped_n[group] = self._ped_n.get(group, 0.0) * decay + arrivals
        self._ped_t[group] = self._ped_t.get(group, 0.0) * decay + max(0.0, exposure_s)

    def pedestrian_rates(self) -> dict[str, float]:
        """Pedestrian arrivals per hour per crossing, from the push-buttons.

        A press shows that someone waits; while one waits the button tells
        nothing more.  So each red is a censored observation of a Poisson
        process: the time to its first press, or the whole red without one.
        The maximum-likelihood rate is presses / exposure; the configured rate
        is the prior, worth ``pedestrian_prior_s`` seconds of exposure.
        """
        cfg = self.config
        out: dict[str, float] = {}
        for g, prior in cfg.pedestrian_flow_per_h.items():
            if not any(g in gs for gs in cfg.push_buttons.values()):
                out[g] = prior
                continue
            t0 = cfg.pedestrian_prior_s
            n = self._ped_n.get(g, 0.0)
            t = self._ped_t.get(g, 0.0)
            out[g] = 3600.0 * (prior / 3600.0 * t0 + n) / (t0 + t) if t0 + t > 0 else prior
        return out

    def _count(self, did: str, ts: float, count: int) -> None:
        # Exponentially smoothed count rate per loop, the fallback flow without an Estimate.
        tau = self.config.flow_time_constant_s
        rate, last = self._rate.get(did, (0.0, ts))
        decay = math.exp(-max(0.0, ts - last) / tau)
        self._rate[did] = (rate * decay + count / tau, ts)

    # -- output -----------------------------------------------------------------
    def snapshot(
        self,
        now: float,
        estimate: Estimate | None,
        running: SignalProgram,
        cycle_second: int,
    ) -> TwinSnapshot:
        cfg = self.config
        flows = self._flows(now, estimate)
        queue_back = self._queue_backs(now, estimate)
        vehicles: list[TwinVehicle] = []
        spilled = pocket_spill_m(cfg, queue_back)
        pocket_entry_m = {p.feeder: p.pocket_m for p in cfg.pocket_spills}
        for did, sensor in cfg.queues.items():
            spill = spilled.get(did)
            if spill is None:
                vehicles += self._standing(sensor, queue_back[did])
                continue
            through_m, spill_m, groups = spill
            vehicles += self._standing(sensor, through_m)
            # The overflow stands from the pocket's entry back (or behind the through
            # queue when that reaches past the entry).
            front = max(pocket_entry_m[did], _jam_cars(through_m, cfg) * cfg.jam_spacing_m)
            vehicles += self._standing(sensor, spill_m, groups=groups, front_m=front)
        for did, loop in cfg.upstream.items():
            vehicles += self._in_transit(did, loop, now, queue_back)
        for bus in self._buses:
            loop = cfg.bus_requests[bus.detector]
            lane = cfg.lanes[loop.lane]
            pos = min(loop.pos_m + cfg.bus_speed_mps * max(0.0, now - bus.ts), lane.length_m - 1)
            vehicles.append(TwinVehicle(BUS, loop.lane, pos, True, loop.groups))
        ped_wait = {g: max(0.0, now - t) for g, t in self._ped_since.items()}
        return TwinSnapshot(
            now=now,
            running=running,
            cycle_second=cycle_second,
            vehicles=tuple(_spaced(vehicles, cfg)),
            flows_veh_h=flows,
            route_shares=_route_shares(cfg, flows),
            pedestrian_waiting_s=ped_wait,
            pedestrian_flow_per_h=self.pedestrian_rates(),
        )

    def _flows(self, now: float, estimate: Estimate | None) -> dict[str, float]:
        cfg = self.config
        out: dict[str, float] = {}
        measured: dict[str, float] = {}
        for did, loop in cfg.upstream.items():
            rate, last = self._rate.get(did, (0.0, now))
            veh_s = rate * math.exp(-max(0.0, now - last) / cfg.flow_time_constant_s)
            for g in loop.groups:
                measured[g] = measured.get(g, 0.0) + veh_s * 3600.0 / len(loop.groups)
        for g in cfg.vehicle_groups:
            if estimate is not None and g in estimate.groups:
                out[g] = max(0.0, estimate.groups[g].flow_veh_h)
            elif g in measured and self._rate:
                out[g] = measured[g]
            else:
                out[g] = cfg.default_flow_veh_h
        return out

    def _queue_backs(self, now: float, estimate: Estimate | None) -> dict[str, float]:
        """Queue length in metres per queue sensor (radar, or the estimate when stale)."""
        cfg = self.config
        out: dict[str, float] = {}
        for did, sensor in cfg.queues.items():
            hit = self._queue.get(did)
            if hit is not None and now - hit[0] <= cfg.queue_max_age_s:
                out[did] = hit[1]
            elif estimate is not None and sensor.groups:
                out[did] = max(
                    (estimate.groups[g].queue_m for g in sensor.groups if g in estimate.groups),
                    default=0.0,
                )
            else:
                out[did] = 0.0
        return out

    def _standing(
        self,
        sensor: TwinQueueSensor,
        queue_m: float,
        *,
        groups: tuple[str, ...] | None = None,
        front_m: float = 0.0,
    ) -> list[TwinVehicle]:
        """Standing cars for ``queue_m`` of jam whose front is ``front_m`` before the stop line.

        With ``groups`` the cars wait for a full pocket (``TwinVehicle.spill``).
        """
        cfg = self.config
        n = _jam_cars(queue_m, cfg)
        out: list[TwinVehicle] = []
        lane_idx = len(sensor.lanes) - 1
        pos = cfg.lanes[sensor.lanes[-1]].length_m - 0.5 - front_m
        for _ in range(n):
            while pos < 5.0:
                lane_idx -= 1
                if lane_idx < 0:
                    return out
                pos += cfg.lanes[sensor.lanes[lane_idx]].length_m
            out.append(TwinVehicle(CAR, sensor.lanes[lane_idx], pos, False,
                                   groups or sensor.groups, spill=groups is not None))
            pos -= cfg.jam_spacing_m
        return out

    def _in_transit(
        self, did: str, loop: TwinLoop, now: float, queue_back: Mapping[str, float]
    ) -> list[TwinVehicle]:
        cfg = self.config
        records = self._passages[did]
        while records and now - records[0][0] > self._transit_s[did]:
            records.popleft()
        back = max(
            (q for q_id, q in queue_back.items()
             if set(cfg.queues[q_id].groups) & set(loop.groups)),
            default=0.0,
        )
        lane = cfg.lanes[loop.lane]
        out: list[TwinVehicle] = []
        for ts, count, speed in records:
            travelled = speed * max(0.0, now - ts)
            to_stop = loop.distance_m - travelled
            if to_stop <= back + cfg.jam_spacing_m:
                # Reached the queue: the radar counts it already.
                continue
            # Vehicles in the short stretch past the loop lane stay at its end (docs/twin.md).
            pos = min(loop.pos_m + travelled, lane.length_m - 1.0)
            out += [TwinVehicle(CAR, loop.lane, pos, True, loop.groups)] * count
        return out


def _jam_cars(queue_m: float, cfg: TwinConfig) -> int:
    """Cars in a jam of ``queue_m``: n cars measure n * spacing minus one gap (SUMO)."""
    return max(0, round((queue_m + 2.5) / cfg.jam_spacing_m))


def pocket_spill_m(
    cfg: TwinConfig, queue_m: Mapping[str, float]
) -> dict[str, tuple[float, float, tuple[str, ...]]]:
    """Feeder sensor -> (through queue, pocket overflow, pocket groups), metres.

    ``controller.estimator.pocket_overflow_m`` with the twin's car spacing (the
    estimator books the same overflow to the pocket's groups).
    """
    groups = {p.feeder: cfg.queues[p.pocket].groups for p in cfg.pocket_spills}
    found = pocket_overflow_m(cfg.pocket_spills, queue_m, cfg.jam_spacing_m)
    return {f: (through, overflow, groups[f]) for f, (through, overflow) in found.items()}


def _spaced(vehicles: Sequence[TwinVehicle], cfg: TwinConfig) -> list[TwinVehicle]:
    """Shift vehicles upstream where they would overlap, so SUMO can insert them all."""
    by_lane: dict[str, list[TwinVehicle]] = {}
    for v in vehicles:
        by_lane.setdefault(v.lane, []).append(v)
    out: list[TwinVehicle] = []
    for lane in sorted(by_lane):
        limit = math.inf
        for v in sorted(by_lane[lane], key=lambda x: -x.pos_m):
            length = cfg.bus_length_m if v.kind == BUS else cfg.jam_spacing_m - 2.5
            pos = min(v.pos_m, limit)
            if pos - length < 0:
                continue
            out.append(replace(v, pos_m=round(pos, 2)))
            limit = pos - length - 2.5
    return out


def _route_shares(cfg: TwinConfig, flows: Mapping[str, float]) -> dict[str, float]:
    """Turning ratios per approach: group flow shares times the routes' shares in a group."""
    out: dict[str, float] = {}
    for a in cfg.approaches:
        total = sum(flows.get(g, 0.0) for g in a.groups)
        for r in cfg.routes:
            if r.approach != a.id:
                continue
            if total > 0:
                out[r.id] = flows.get(r.group, 0.0) * r.share / total
            else:
                out[r.id] = r.share / max(1, len(a.groups))
    return out


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True, slots=True)
class TwinScore:
    """Predicted delays of one program over the horizon (lower is better)."""

    program_id: str
    #: Mean delay per person: car and bus passengers and pedestrians, each pedestrian
    #: counted ``TwinConfig.pedestrian_weight`` times (once by default).
    person_delay_s: float
    vehicle_delay_s: float
    pedestrian_delay_s: float
    bus_delay_s: float
    vehicles: int
    sim_s: float
    wall_s: float
    #: Of ``person_delay_s``: the queues' cost-to-go at the horizon's end (per person).
    terminal_s: float = 0.0
    #: Arrival draws the delays are pooled over (``replications``); ``vehicles`` is per
    #: draw, ``sim_s`` over all draws.
    draws: int = 1


def link_state_table(signals: JunctionSignals, program: SignalProgram) -> tuple[str, ...]:
    """SUMO link state string for every cycle second of ``program``.

    A green vehicle group whose conditionally compatible pedestrian or bicycle
    partner is green too shows minor green ``g`` (its drivers yield), as the
    field's hardware shows it.
    """
    per_group = group_states(signals, program)
    n = signals.link_count or 1 + max((i for g in signals.groups for i in g.links), default=-1)
    partners = {
        g.id: tuple(
            p.id for p in signals.groups
            if p.kind in (GroupKind.PEDESTRIAN, GroupKind.BICYCLE)
            and signals.conditionally_compatible(g.id, p.id)
        )
        for g in signals.groups
        if g.kind in (GroupKind.VEHICLE, GroupKind.BUS)
    }
    green = SignalState.GREEN.value
    out: list[str] = []
    for sec in range(program.cycle_s):
        chars = ["r"] * n
        for g in signals.groups:
            st = per_group.get(g.id, "r" * program.cycle_s)[sec]
            minor = st == green and any(
                per_group.get(p, "")[sec : sec + 1] == green for p in partners.get(g.id, ())
            )
            for i in g.links:
                chars[i] = "g" if minor else st
        out.append("".join(chars))
    return tuple(out)


def yield_holds(
    signals: JunctionSignals,
    program: SignalProgram,
    yields: Sequence[TwinYield],
    pedestrians_per_h: Mapping[str, float],
) -> dict[int, frozenset[int]]:
    """Cycle second -> junction links held red because pedestrians are expected on the path.

    For each green window of a crossing, in the cycle of ``program``: the
    pedestrians who arrived during the red before it walk first; with
    arrival rate ``q`` and red ``R`` at least one waits with probability
    ``1 - exp(-q R)``, and they block the yielding links for ``clear_s``.
    Later in the window (and until the last walkers have cleared, ``clear_s``
    after the crossing's green ends) each second is blocked with probability
    ``1 - exp(-q clear_s)``.  The expected blocked seconds are held from the
    start of the window, where the field's blocking mostly is; the turners and,
    on a shared lane, the through vehicles behind them wait.  Deterministic, so
    candidates keep common random numbers.
    """
    if not yields:
        return {}
    states = group_states(signals, program)
    n = program.cycle_s
    green = SignalState.GREEN.value
    held: dict[int, set[int]] = {}
    for y in yields:
        rate = max(0.0, pedestrians_per_h.get(y.pedestrian_group, 0.0)) / 3600.0
        ped = states.get(y.pedestrian_group)
        veh = states.get(y.vehicle_group)
        if rate <= 0 or ped is None or veh is None or green not in ped or green not in veh:
            continue
        if all(c == green for c in ped):
            continue
        clear = max(0.0, y.clear_s)
        p_walk = 1.0 - math.exp(-rate * clear)
        for start in range(n):
            if ped[start] != green or ped[start - 1] == green:
                continue
            red = 0
            while ped[(start - 1 - red) % n] != green:
                red += 1
            ped_green = 0
            while ped[(start + ped_green) % n] == green:
                ped_green += 1
            span = [(start + k) % n for k in range(min(n, ped_green + math.ceil(clear)))]
            veh_green = [c for c in span if veh[c] == green]
            p_wait = 1.0 - math.exp(-rate * red)
            first = min(len(veh_green), p_wait * clear)
            hold = first + (len(veh_green) - first) * p_walk
            for c in veh_green[: round(hold)]:
                held.setdefault(c, set()).update(y.links)
    return {c: frozenset(v) for c, v in held.items()}


def timeline(snapshot: TwinSnapshot, program: SignalProgram, horizon_s: int) -> list[int]:
    """Per horizon second: which program runs (0 running, 1 candidate) and its cycle second.

    Encoded as ``cycle_second`` for the running program and ``-1 - cycle_second``
    for the candidate.  The hardware switches only at a cycle boundary, so the
    running program finishes its cycle first.
    """
    run = snapshot.running
    shown = snapshot.cycle_second % run.cycle_s
    remaining = run.cycle_s - 1 - shown
    out: list[int] = []
    for s in range(horizon_s):
        if s < remaining:
            out.append(shown + 1 + s)
        else:
            out.append(-1 - (s - remaining) % program.cycle_s)
    return out


def pedestrian_delay(
    signals: JunctionSignals,
    snapshot: TwinSnapshot,
    program: SignalProgram,
    horizon_s: int,
) -> tuple[float, float]:
    """Total pedestrian delay (s) and pedestrians over the horizon, computed analytically.

    Pedestrians arrive uniformly at the group's rate; one arriving during red
    waits until the next green second (censored at the horizon end); one
    arriving during green crosses at once.  A pending request counts as one
    person waiting from the start.  Simulating persons costs more than the
    whole vehicle twin (docs/twin.md).
    """
    run_states = group_states(signals, snapshot.running)
    cand_states = group_states(signals, program)
    seconds = timeline(snapshot, program, horizon_s)
    total = 0.0
    persons = 0.0
    green = SignalState.GREEN.value
    for g in signals.groups:
        if g.kind is not GroupKind.PEDESTRIAN:
            continue
        rate = snapshot.pedestrian_flow_per_h.get(g.id, 0.0) / 3600.0
        is_green = [
            (run_states[g.id][c] if c >= 0 else cand_states[g.id][-1 - c]) == green
            for c in seconds
        ]
        wait = [0.0] * horizon_s
        nxt: float = float(horizon_s)
        for s in range(horizon_s - 1, -1, -1):
            if is_green[s]:
                nxt = float(s)
            wait[s] = nxt - s
        total += rate * sum(wait)
        persons += rate * horizon_s
        if g.id in snapshot.pedestrian_waiting_s:
            total += wait[0]
            persons += 1.0
    return total, persons


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True, slots=True)
class _Departure:
    """One vehicle of an evaluation, as ``vehicle.add`` takes it."""

    vid: str
    route: str
    type_id: str
    #: Seconds after the snapshot (0 for the vehicles placed at the start).
    depart: float
    depart_text: str
    lane: str
    pos: str
    speed: str
    kind: str


@dataclass
class _Progress:
    """Running totals of one twin run; copied from the shared prefix for every program."""

    loss: dict[str, float] = field(default_factory=dict)
    departed: int = 0
    pending_s: int = 0


@dataclass
class _Draw:
    """One draw of a snapshot's vehicles, run through the shared prefix and saved."""

    #: The state file at the end of the prefix.
    state: str
    #: Vehicle id -> kind (car, bus), and -> the edge it enters on.
    kinds: dict[str, str]
    entries: dict[str, str]
    #: Vehicles scheduled to depart by the end of each horizon second (insertion delay).
    schedule: np.ndarray
    #: Vehicles departing after the prefix: added after every ``loadState``.
    later: list[_Departure]
    prefix: _Progress


def replications(config: TwinConfig, snapshot: TwinSnapshot) -> int:
    """How many arrival draws every program of ``snapshot`` is scored on (>= 1).

    Enough for about ``config.replication_vehicles`` simulated vehicles in all:
    the standing and moving vehicles placed at the start plus the arrivals the
    flows promise over the horizon, per draw.
    """
    per_draw = len(snapshot.vehicles) + (
        sum(snapshot.flows_veh_h.values()) * config.horizon_s / 3600.0
    )
    wanted = math.ceil(config.replication_vehicles / max(per_draw, 1.0))
    return max(1, min(config.max_replications, wanted))


def vtype_xml(type_id: str, attributes: Mapping[str, str | float]) -> str:
    """A SUMO ``<vType>`` element with ``attributes`` (SUMO's attribute names)."""
    attrs = "".join(f" {k}={quoteattr(str(v))}" for k, v in sorted(attributes.items()))
    return f"<vType id={quoteattr(type_id)}{attrs}/>"


def driver_types(config: TwinConfig) -> dict[str, dict[str, str | float]]:
    """The twin's vehicle types by kind (``car``, ``bus``), as SUMO vType attributes.

    Without driver imperfection (``sigma``) and speed spread the twin is deterministic,
    and the delay difference between candidates comes from the plans alone.  The
    start-up delay and the cars' acceleration restore the field's queue discharge
    (``TwinConfig.startup_delay_s``).  ``bench/twin_discharge.py`` measures these
    same types against SUMO's default driver.
    """
    deterministic: dict[str, str | float] = {
        "sigma": 0.0, "speedDev": 0.0, "startupDelay": config.startup_delay_s,
    }
    return {
        CAR: {**deterministic, "accel": config.car_accel_mps2},
        BUS: {**deterministic, "vClass": "bus", "length": config.bus_length_m, "accel": 1.2},
    }


class _Worker:
    """One libsumo simulation of the junction, reused for every evaluation in this process."""

    def __init__(self, config: TwinConfig, scratch: str) -> None:
        import libsumo

        self.sumo: ModuleType = libsumo
        self.config = config
        self.scratch = Path(scratch)
        self.base = str(self.scratch / f"base-{os.getpid()}.xml")
        self.built: TwinSnapshot | None = None
        #: The built snapshot's draws (``replications``), each run through the prefix.
        self.draws: list[_Draw] = []
        self.boundary = 0
        self.tables: dict[tuple[object, ...], tuple[str, ...]] = {}
        # The vehicle types as an additional file: the same definitions that
        # bench/twin_discharge.py measures (sim.discharge).
        types = self.scratch / f"types-{os.getpid()}.add.xml"
        types.write_text(
            "<additional>\n"
            + "".join(f"    {vtype_xml(f'twin_{kind}', attributes)}\n"
                      for kind, attributes in driver_types(config).items())
            + "</additional>\n"
        )
        libsumo.start([
            "sumo", "-n", config.net_file, "-a", str(types),
            "--begin", "0",
            "--step-length", "1",
            "--seed", str(config.seed),
            "--no-step-log", "true",
            "--duration-log.disable", "true",
            "--no-warnings", "true",
            # A jam must stay a jam in the twin: teleports would hide the delay of a bad plan.
            "--time-to-teleport", "-1",
            # Candidate switches are not checked for intergreens here (the safety gate is);
            # a transient conflict must not stop the run.
            "--collision.action", "none",
            # The prefix state carries moving vehicles: keep their positions and speeds exact.
            "--save-state.precision", "6",
        ])
        s = libsumo
        #: Lanes a twin car may stand on: a cyclist on a bicycle lane (ground truth
        #: reports it with its next signal group) does not block cars and is not placed.
        self.car_lanes = frozenset(
            lid for lid in config.lanes
            if "passenger" not in s.lane.getDisallowed(lid)
            and (not s.lane.getAllowed(lid) or "passenger" in s.lane.getAllowed(lid))
        )
        self.route_ids: dict[tuple[str, str], str] = {}
        #: Twin route id -> the edge its vehicles enter on (where the not-yet-inserted wait).
        self.entry: dict[str, str] = {}
        self.arrival: dict[str, str] = {}
        edge_len: dict[str, float] = {}
        for ln in config.lanes.values():
            edge_len[ln.edge] = max(edge_len.get(ln.edge, 0.0), ln.length_m)
        for r in config.routes:
            exit_len = edge_len.get(r.edges[-1], 0.0)
            arrival = (
                f"{min(config.exit_m, exit_len):.2f}" if 0 < config.exit_m < exit_len else "max"
            )
            for k, edge in enumerate(r.edges[:-1]):
                rid = f"{r.id}@{edge}"
                s.route.add(rid, list(r.edges[k:]))
                self.route_ids[(r.id, edge)] = rid
                self.entry[rid] = edge
                self.arrival[rid] = arrival
        s.simulation.saveState(self.base)

    # -- building the initial state ------------------------------------------------
    def departures(self, snapshot: TwinSnapshot, draw: int = 0) -> list[_Departure]:
        """The evaluation's vehicles: the snapshot's, then the horizon's Poisson arrivals.

        ``draw`` numbers the independent draws of one snapshot (``replications``):
        the standing vehicles' routes and the arrivals differ, the rest is the same.
        """
        cfg = self.config
        key = [cfg.seed, zlib.crc32(b"twin")] + ([draw] if draw else [])
        rng = np.random.default_rng(key)
        routes_by_group: dict[str, list[str]] = {}
        for r in cfg.routes:
            routes_by_group.setdefault(r.group, []).append(r.id)
        shares = snapshot.route_shares
        route_of = {r.id: r for r in cfg.routes}
        out: list[_Departure] = []
        for v in snapshot.vehicles:
            lane = cfg.lanes.get(v.lane)
            if lane is None or v.lane not in self.car_lanes:
                continue
            options = [rid for g in v.groups for rid in routes_by_group.get(g, [])]
            lane_routes = cfg.lane_routes.get(v.lane)
            if lane_routes is not None and not v.moving and not v.spill:
                # A queue on the lane feeding a turning pocket holds that turn's vehicles
                # too (waiting for room in a full pocket), whatever group the sensor serves.
                options += [r for r in lane_routes if r not in options]
            # At the stop line a vehicle can no longer change lanes: only its lane's routes.
            at_stop = [o for o in options if o in (lane_routes or options)]
            edge = lane.edge
            options = [o for o in (at_stop or options) if (o, edge) in self.route_ids]
            if not options:
                continue
            rid = _draw(rng, options, shares)
            bus = v.kind == BUS
            out.append(_Departure(
                f"{'b' if bus else 'c'}{len(out)}", self.route_ids[(rid, edge)],
                "twin_bus" if bus else "twin_car", 0.0, "0", str(lane.index),
                f"{v.pos_m:.2f}", "max" if v.moving else "0", BUS if bus else CAR,
            ))
        h = cfg.horizon_s
        for a in cfg.approaches:
            rate = sum(snapshot.flows_veh_h.get(g, 0.0) for g in a.groups) / 3600.0
            options = [r.id for r in cfg.routes if r.approach == a.id]
            if rate <= 0 or not options:
                continue
            # Vehicles between the entry and the upstream loop are unseen: arrivals start
            # one entry-edge travel time early, the early ones already on the entry edge.
            lead = a.unseen_m / cfg.free_speed_mps
            t = -lead
            while True:
                t += float(rng.exponential(1.0 / rate))
                if t >= h:
                    break
                rid = _draw(rng, options, shares)
                route = self.route_ids[(rid, route_of[rid].edges[0])]
                if t < 0:
                    pos = min(-t * cfg.free_speed_mps, a.unseen_m - 1.0)
                    out.append(_Departure(f"c{len(out)}", route, "twin_car", 0.0, "0", "best",
                                          f"{pos:.2f}", "max", CAR))
                else:
                    out.append(_Departure(f"c{len(out)}", route, "twin_car", t, f"{t:.2f}",
                                          "best", "base", "max", CAR))
        return out

    def _add(self, departures: Sequence[_Departure]) -> None:
        add = self.sumo.vehicle.add
        arrival = self.arrival
        for d in departures:
            add(d.vid, d.route, typeID=d.type_id, depart=d.depart_text, departLane=d.lane,
                departPos=d.pos, departSpeed=d.speed, arrivalPos=arrival[d.route])

    def build(self, snapshot: TwinSnapshot) -> list[_Draw]:
        """Draw the vehicles and run the shared prefix once per snapshot and draw.

        Each draw's state at the end of the prefix is saved; every program of the
        snapshot starts from it.
        """
        if self.built == snapshot:
            return self.draws
        cfg = self.config
        s = self.sumo
        h = cfg.horizon_s
        # Until the running cycle ends every program shows the same states (timeline).
        run = snapshot.running
        remaining = run.cycle_s - 1 - snapshot.cycle_second % run.cycle_s
        self.boundary = min(remaining, h - 1) if cfg.share_prefix else 0
        self.built = None
        self.draws = []
        table = self._table(run, snapshot.pedestrian_flow_per_h)
        seconds = timeline(snapshot, run, h)
        for k in range(replications(cfg, snapshot)):
            deps = self.departures(snapshot, k)
            steps = np.array([math.ceil(d.depart) for d in deps], dtype=np.int64)
            draw = _Draw(
                state=str(self.scratch / f"state-{os.getpid()}-{k}.xml"),
                kinds={d.vid: d.kind for d in deps},
                entries={d.vid: self.entry[d.route] for d in deps},
                schedule=np.cumsum(np.bincount(steps, minlength=h + 1)[:h]),
                later=[d for d in deps if d.depart >= self.boundary],
                prefix=_Progress(),
            )
            s.simulation.loadState(self.base)
            self._add([d for d in deps if d.depart < self.boundary])
            self._advance(seconds, table, table, start=0, stop=self.boundary,
                          acc=draw.prefix, schedule=draw.schedule)
            s.simulation.saveState(draw.state)
            self.draws.append(draw)
        self.built = snapshot
        return self.draws

    def _advance(
        self,
        seconds: Sequence[int],
        run_table: Sequence[str],
        cand_table: Sequence[str],
        *,
        start: int,
        stop: int,
        acc: _Progress,
        schedule: np.ndarray,
    ) -> None:
        """Step horizon seconds ``start`` to ``stop - 1``, accumulating into ``acc``.

        ``schedule[k]``: vehicles due to have departed by the end of second ``k``.
        """
        s = self.sumo
        tls = self.config.tls_id
        set_state = s.trafficlight.setRedYellowGreenState
        step = s.simulationStep
        ids = s.vehicle.getIDList
        get_loss = s.vehicle.getTimeLoss
        departed_now = s.simulation.getDepartedNumber
        sample = self.config.loss_sample_s
        loss = acc.loss
        departed = acc.departed
        pending_s = acc.pending_s
        last = len(seconds) - 1
        shown = ""
        for k in range(start, stop):
            c = seconds[k]
            text = run_table[c] if c >= 0 else cand_table[-1 - c]
            if text != shown:
                set_state(tls, text)
                shown = text
            step()
            departed += departed_now()
            # Vehicles held at the network entry by a queue lose time too (insertion delay).
            pending_s += int(schedule[k]) - departed
            # A vehicle leaves at its exit at free speed, so sampling its time loss every
            # few seconds misses next to nothing and saves most of the calls.
            if k % sample == 0 or k == last:
                for vid in ids():
                    loss[vid] = get_loss(vid)
        acc.departed = departed
        acc.pending_s = pending_s

    # -- scoring ----------------------------------------------------------------------
    def score(self, snapshot: TwinSnapshot, program: SignalProgram) -> TwinScore:
        """Run ``program`` from every draw's prefix state; delays pooled over the draws."""
        started = time.perf_counter()
        cfg = self.config
        draws = self.build(snapshot)
        s = self.sumo
        rates = snapshot.pedestrian_flow_per_h
        run_table = self._table(snapshot.running, rates)
        cand_table = self._table(program, rates)
        seconds = timeline(snapshot, program, cfg.horizon_s)
        n_car = n_bus = 0
        car_loss = bus_loss = terminal = 0.0
        occ_car = cfg.occupancy.get(CAR, 1.0)
        occ_bus = cfg.occupancy.get(BUS, 1.0)
        for draw in draws:
            s.simulation.loadState(draw.state)
            self._add(draw.later)
            acc = _Progress(dict(draw.prefix.loss), draw.prefix.departed, draw.prefix.pending_s)
            self._advance(seconds, run_table, cand_table, start=self.boundary,
                          stop=cfg.horizon_s, acc=acc, schedule=draw.schedule)
            kinds = draw.kinds
            buses = sum(1 for k in kinds.values() if k == BUS)
            n_bus += buses
            n_car += len(kinds) - buses
            draw_bus = sum(v for vid, v in acc.loss.items() if kinds.get(vid) == BUS)
            bus_loss += draw_bus
            car_loss += sum(acc.loss.values()) - draw_bus + max(0, acc.pending_s)
            terminal += occ_car * self._terminal_loss(draw.entries)
        # Pooled: as if the draws were one horizon with their vehicles side by side; the
        # pedestrians (analytic, the same in every draw) count once per draw.
        ped_once, peds_once = pedestrian_delay(cfg.signals, snapshot, program, cfg.horizon_s)
        ped_loss, peds = ped_once * len(draws), peds_once * len(draws)
        w_ped = cfg.pedestrian_weight
        persons = occ_car * n_car + occ_bus * n_bus + w_ped * peds
        person_loss = occ_car * car_loss + occ_bus * bus_loss + w_ped * ped_loss + terminal
        n_veh = n_car + n_bus
        return TwinScore(
            program_id=program.id,
            person_delay_s=person_loss / persons if persons > 0 else 0.0,
            vehicle_delay_s=(car_loss + bus_loss) / n_veh if n_veh else 0.0,
            pedestrian_delay_s=ped_loss / peds if peds > 0 else 0.0,
            bus_delay_s=bus_loss / n_bus if n_bus else 0.0,
            vehicles=round(n_veh / len(draws)),
            sim_s=float(cfg.horizon_s * len(draws)),
            wall_s=time.perf_counter() - started,
            terminal_s=terminal / persons if persons > 0 else 0.0,
            draws=len(draws),
        )

    def _terminal_loss(self, entries: Mapping[str, str]) -> float:
        """Delay the queues left at the horizon's end will still cause (vehicle-seconds).

        The k-th vehicle of a queue waits for the k - 1 ahead of it to leave, so a queue
        of ``n`` costs about ``tau n (n + 1) / 2``: convex, so one long queue costs more
        than the same vehicles spread over several lanes.  Vehicles not yet inserted
        queue behind their entry edge's lanes.
        """
        tau = self.config.terminal_s_per_vehicle
        if tau <= 0:
            return 0.0
        s = self.sumo
        slow = self.config.terminal_queued_mps
        queues: dict[str, int] = {}
        for vid in s.vehicle.getIDList():
            if s.vehicle.getSpeed(vid) < slow:
                lane = s.vehicle.getLaneID(vid)
                queues[lane] = queues.get(lane, 0) + 1
        for vid in s.simulation.getPendingVehicles():
            key = "entry:" + entries.get(vid, "")
            queues[key] = queues.get(key, 0) + 1
        return tau * sum(n * (n + 1) / 2 for n in queues.values())

    def _table(
        self, program: SignalProgram, pedestrians_per_h: Mapping[str, float]
    ) -> tuple[str, ...]:
        cfg = self.config
        rates = tuple(
            round(pedestrians_per_h.get(y.pedestrian_group, 0.0), 1) for y in cfg.yields
        )
        key = (program.id, program.cycle_s, tuple(sorted(program.greens.items())), rates)
        hit = self.tables.get(key)
        if hit is None:
            if len(self.tables) > 256:
                self.tables.clear()
            table = link_state_table(self.config.signals, program)
            holds = yield_holds(cfg.signals, program, cfg.yields, pedestrians_per_h)
            if holds:
                red = SignalState.RED.value
                rows = [list(t) for t in table]
                for c, links in holds.items():
                    for i in links:
                        rows[c][i] = red
                table = tuple("".join(r) for r in rows)
            if self.config.link_map:
                # The twin network numbers its links differently: pick each twin link's
                # junction link (matched by from/to lane in sim.twin_config).
                table = tuple("".join(t[i] for i in self.config.link_map) for t in table)
            hit = self.tables[key] = table
        return hit


def _draw(rng: np.random.Generator, options: Sequence[str], shares: Mapping[str, float]) -> str:
    weights = np.array([max(shares.get(o, 0.0), 0.0) for o in options], dtype=float)
    total = weights.sum()
    if total <= 0:
        return options[int(rng.integers(len(options)))]
    return options[int(rng.choice(len(options), p=weights / total))]


_WORKER: _Worker | None = None


#: Marker a worker leaves in the scratch directory when it could not lower its priority.
NICE_REFUSED = "nice-refused"


def _init_worker(config: TwinConfig, scratch: str, nice: int = 0) -> None:
    """Process pool initializer: one libsumo simulation per worker process."""
    if not isinstance(config, TwinConfig) or not isinstance(scratch, str):
        raise TypeError("a twin worker starts from a TwinConfig and a scratch directory only")
    if nice:
        try:
            os.nice(nice)
        except OSError:
            # A seccomp filter may refuse setpriority (@resources denied, not allowed back): the
            # worker runs at normal priority, and the service says so once.
            (Path(scratch) / NICE_REFUSED).touch()
    global _WORKER  # noqa: PLW0603  # one simulation per process is libsumo's own rule
    _WORKER = _Worker(config, scratch)
    (Path(scratch) / f"worker-{os.getpid()}").touch()


def _await_peers() -> None:
    """Block until every worker of the pool has started (``SumoTwin.warm_up``)."""
    if _WORKER is None:
        raise RuntimeError("twin worker not initialised")
    scratch = _WORKER.scratch
    wanted = int((scratch / "workers").read_text())
    deadline = time.monotonic() + 60.0
    while len(list(scratch.glob("worker-*"))) < wanted and time.monotonic() < deadline:
        time.sleep(0.01)


def _score_task(snapshot: TwinSnapshot, program: SignalProgram) -> TwinScore:
    """Worker entry: the twin sees nothing but the snapshot and the program."""
    if not isinstance(snapshot, TwinSnapshot) or not isinstance(program, SignalProgram):
        raise TypeError(
            f"twin task got {type(snapshot).__name__}, {type(program).__name__}; "
            "only TwinSnapshot and SignalProgram may reach the twin"
        )
    if _WORKER is None:
        raise RuntimeError("twin worker not initialised")
    try:
        return _WORKER.score(snapshot, program)
    except Exception as exc:
        # libsumo's exceptions carry SWIG objects that cannot be pickled back to the
        # caller, which would then see only "cannot pickle 'SwigPyObject'".
        raise TwinError(f"{type(exc).__name__}: {exc}") from None


class TwinError(RuntimeError):
    """A twin evaluation failed inside the worker (the message names the cause)."""


# --------------------------------------------------------------------------- service side


class SumoTwin:
    """A pool of twin worker processes; ``evaluate`` scores programs from a snapshot.

    Each worker builds the snapshot's initial state once (cached while the
    snapshot is the same) and scores every program it is given from it, so
    programs spread over the workers without sharing state files; the build is
    deterministic, so every worker starts from the same state.
    """

    def __init__(self, config: TwinConfig, workers: int = 2, *, nice: int = 0) -> None:
        if workers < 1:
            raise ValueError("the twin needs at least one worker")
        if not 0 <= nice <= 19:
            raise ValueError("nice must be 0-19 (workers can only be made nicer)")
        self.config = config
        self.workers = workers
        #: Added to each worker's niceness when it starts, replacement workers included.
        self.nice = nice
        self._scratch = tempfile.mkdtemp(prefix="atsc-twin-")
        (Path(self._scratch) / "workers").write_text(str(workers))
        #: Pools started after a worker died (``submit`` replaces a broken pool).
        self.restarts = 0
        self._pool: ProcessPoolExecutor | None = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.config, self._scratch, self.nice),
        )

    def submit(
        self, snapshot: TwinSnapshot, programs: Sequence[SignalProgram]
    ) -> list[Future[TwinScore]]:
        """One future per program (``asyncio.wrap_future`` makes them awaitable).

        A worker that died (killed, out of memory, a crash in SUMO) breaks the whole pool:
        its pending futures fail, and so would every later submission.  The decision that
        was waiting fails; the next submission starts a fresh pool, so one lost worker costs
        one decision, not adaptive control until the service restarts.
        """
        if self._pool is None:
            raise RuntimeError("twin is closed")
        try:
            return [self._pool.submit(_score_task, snapshot, p) for p in programs]
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            for stale in Path(self._scratch).glob("worker-*"):
                stale.unlink(missing_ok=True)  # those pids are gone; never signal them
            self._pool = self._new_pool()
            self.restarts += 1
            return [self._pool.submit(_score_task, snapshot, p) for p in programs]

    def evaluate(
        self,
        snapshot: TwinSnapshot,
        programs: Sequence[SignalProgram],
        timeout: float | None = None,
    ) -> list[TwinScore]:
        """Scores in the order of ``programs`` (blocking: call it from an executor)."""
        futures = self.submit(snapshot, programs)
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[TwinScore] = []
        for f in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(f.result(timeout=left))
        return out

    def warm_up(self) -> None:
        """Start every worker now instead of on the first evaluation."""
        if self._pool is None:
            raise RuntimeError("twin is closed")
        # The pool spawns a worker per submission only while none is idle; tasks that wait
        # for all their peers keep every started worker busy until the last one is up.
        for f in [self._pool.submit(_await_peers) for _ in range(self.workers)]:
            f.result(timeout=120)

    def nice_refused(self) -> bool:
        """True when a worker could not lower its priority by ``nice`` (it runs unniced)."""
        return (Path(self._scratch) / NICE_REFUSED).exists()

    def worker_pids(self) -> tuple[int, ...]:
        """Process ids of the workers that have started (for tests and metrics)."""
        names = os.listdir(self._scratch) if os.path.isdir(self._scratch) else []
        return tuple(sorted(int(n.split("-")[1]) for n in names if n.startswith("worker-")))

    def close(self) -> None:
        """Stop the workers (each ends its simulation with its process) and remove scratch."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> SumoTwin:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
