"""Demand and queue estimation per signal group from detector messages only.

The estimator never sees ground truth: its inputs are ``DetectorReading``
messages, the static ``DetectorInfo`` of each detector and which signal groups
the hardware showed green.  Per signal group (movement) it estimates

- arrival flow q (Verkehrsstärke, veh/h), exponentially smoothed;
- queue length (Rückstaulänge) in vehicles and metres, from an input-output
  count model between the upstream and stop-line loops, pulled towards the
  queue sensor (radar) when one is healthy;
- saturation flow s (Sättigungsverkehrsstärke, veh/h of green), learned from
  stop-line discharge while a queue is present, starting from a prior;
- degree of saturation x = q / (s * g/C) (Auslastungsgrad);
- pedestrian demand (Anforderung) and waiting time, bus requests and ETA;

plus per-approach aggregates with an HCM/Webster delay per vehicle.  Methods,
parameters and limits are in docs/estimation.md.

Call ``observe`` for every reading, ``observe_signals`` about once per second
(with every hardware state), and ``estimate`` when a decision is due.  The
class holds explicit state and does no I/O; the caller supplies the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from controller.messages import (
    DetectorInfo,
    DetectorKind,
    DetectorReading,
    HardwareState,
    is_news,
)
from controller.signals import SignalState


@dataclass(frozen=True, slots=True)
class EstimatorConfig:
    """Parameters of the estimator; reasons for the defaults in docs/estimation.md."""

    #: Time constant of the exponential flow smoothing (about three to five cycles).
    flow_time_constant_s: float = 300.0
    #: Flow assumed for a movement without usable data (conservative, veh/h).
    default_flow_veh_h: float = 300.0
    #: Base saturation flow per lane, through movement (Sättigungsverkehrsstärke).
    saturation_per_lane_veh_h: float = 1800.0
    #: Factors on the base saturation flow for turning movements.
    left_factor: float = 0.9
    right_factor: float = 0.85
    #: Road length one queued vehicle takes up (Fahrzeugabstand im Stau).
    jam_spacing_m: float = 7.0
    #: Free speed between the upstream loop and the stop line (50 km/h).
    free_speed_mps: float = 13.9
    #: Time constant pulling the count model towards a healthy queue sensor.
    radar_time_constant_s: float = 3.0
    #: An empty stop-line loop for this long during green means the queue has cleared
    #: (Zeitlücke, as in vehicle-actuated control).
    clear_gap_s: float = 3.0
    #: Start lost time: discharge is measured from green start plus this.
    start_lost_s: float = 2.0
    #: A discharge sample counts only with at least this duration and vehicles.
    min_sample_s: float = 5.0
    min_sample_veh: int = 3
    #: Weight of the saturation prior, in seconds of measured saturated green.
    saturation_prior_weight_s: float = 60.0
    #: Forgetting factor per discharge sample (old samples fade, the road may change).
    saturation_forgetting: float = 0.98
    #: Learned saturation flow stays within these factors of the prior.
    saturation_min_factor: float = 0.5
    saturation_max_factor: float = 1.5
    #: Bus speed between the request point and the stop line when the reading has none.
    bus_speed_mps: float = 8.0
    #: A bus request not served within this time is dropped (no check-out detector).
    bus_request_timeout_s: float = 180.0
    #: Queue (vehicles) from which a vehicle movement counts as having demand.
    demand_queue_veh: float = 0.5
    #: Analysis period T of the HCM incremental delay term, hours.
    delay_analysis_period_h: float = 0.25
    #: Lower bound on the green share in x = q / (s g/C), so x stays finite.
    min_green_share: float = 0.02
    #: Spillback over an upstream loop (Rückstau über die Zählschleife): a queue sensor of one
    #: of the loop's groups reports a queue reaching the loop's distance minus this margin.
    spillback_margin_m: float = 10.0
    #: Spillback stays in force this long after the queue last reached the loop (a queue
    #: that reaches the loop at the end of red drains below it during green).
    spillback_release_s: float = 150.0
    #: While spillback is flagged, the held flow is kept only while the group uses its green:
    #: its balance flow (departures plus queue growth) is at least this share of its capacity
    #: at the observed green share. A movement that leaves green unused has no hidden demand
    #: behind the covered loop, so its hold fades with ``flow_time_constant_s``.
    spillback_hold_min_utilisation: float = 0.85
    #: Cycles (green starts) of queue history kept per group (arrival balance, carry-over).
    queue_history_cycles: int = 4
    #: Split an approach's upstream counts over its groups by their stop-line departures
    #: (Aufteilung nach Abflussanteilen) instead of by lane: drivers change lanes between
    #: the upstream loop and the turning pockets, so a loop's lane says little about the
    #: turn.  Needs stop-line loops on every group the pooled loops serve.
    pool_upstream_by_departures: bool = True
    #: Departures (kernel-weighted vehicles) the split needs before it replaces the lanes.
    pool_min_departures_veh: float = 10.0

    def __post_init__(self) -> None:
        positive = (
            self.flow_time_constant_s, self.saturation_per_lane_veh_h, self.jam_spacing_m,
            self.free_speed_mps, self.radar_time_constant_s, self.clear_gap_s,
            self.bus_speed_mps, self.min_green_share, self.delay_analysis_period_h,
            self.spillback_release_s,
        )
        if any(not (v > 0 and math.isfinite(v)) for v in positive):
            raise ValueError("estimator time constants, speeds and flows must be positive")
        if not 0 < self.saturation_forgetting <= 1:
            raise ValueError("saturation_forgetting must be within (0, 1]")
        if not 0 < self.saturation_min_factor <= 1 <= self.saturation_max_factor:
            raise ValueError("saturation factors must bracket 1")
        if not 0 <= self.spillback_hold_min_utilisation <= 1:
            raise ValueError("spillback_hold_min_utilisation must be within [0, 1]")
        if self.spillback_margin_m < 0 or self.queue_history_cycles < 2:
            raise ValueError("spillback margin must be >= 0 and queue history >= 2 cycles")


def turn_factor(label: str, config: EstimatorConfig | None = None) -> float:
    """Saturation factor of a movement from its label ("N left", "S through+right").

    A lane shared by several turns gets the mean of their factors: without
    turning shares nothing better is known.  No keyword means through.
    """
    cfg = config or EstimatorConfig()
    words = label.lower().replace("+", " ").replace("/", " ").split()
    factors = [
        f for key, f in (("through", 1.0), ("left", cfg.left_factor), ("right", cfg.right_factor))
        if key in words
    ]
    return sum(factors) / len(factors) if factors else 1.0


@dataclass(frozen=True, slots=True)
class PocketSpill:
    """A turning pocket whose overflow waits on the lane that feeds it.

    Rückstau aus dem Abbiegestreifen: once the pocket is full, its turners stop
    at the pocket's entry on the feeding lane.  A queue sensor that spans that
    lane and the through lane beside the pocket reports their jam as its own
    queue length, as if through traffic stood at the stop line.  The parallel
    through lane's sensor (``reference``) shows what the through queue really
    is; the rest of the feeder's jam is the pocket's.  An arm with one lane
    before the pocket has no parallel lane (``reference`` empty): there the jam
    beyond the pocket's entry is mixed, and only the pocket groups' share of the
    arm's flow is theirs.
    """

    #: Queue sensor on the pocket lane.
    pocket: str
    #: Queue sensor whose upstream lane feeds the pocket (and whose last lane runs beside it).
    feeder: str
    #: Queue sensor of a parallel lane serving the feeder's groups ("" on a one-lane arm).
    reference: str
    #: Pocket length, stop line to the split (metres).
    pocket_m: float


def pocket_overflow_m(
    spills: Sequence[PocketSpill],
    queue_m: Mapping[str, float],
    car_m: float,
    pocket_share: Mapping[str, float] | None = None,
) -> dict[str, tuple[float, float]]:
    """Feeder sensor -> (through queue, pocket overflow), metres, where a pocket spills.

    With a parallel lane: where the pocket reports full (within one car of its
    length) and the feeder's jam is more than one car longer than the parallel
    lane's, the through lane beside the pocket queues like its neighbour (both see
    the same red) and the rest of the feeder's jam is the pocket's overflow.  On a
    one-lane arm: where the feeder's jam reaches more than one car past the
    pocket's entry, ``pocket_share[pocket]`` of that part is the pocket's (without a
    share the arm is skipped).  The pocket need not be full there: turners behind
    a through queue that reaches past the entry cannot get into it either.
    """
    out: dict[str, tuple[float, float]] = {}
    for p in spills:
        needed = {p.pocket, p.feeder, p.reference} - {""}
        if not needed <= queue_m.keys():
            continue  # without every reading the jam cannot be placed
        feeder = queue_m[p.feeder]
        if p.reference:
            through = queue_m[p.reference]
            if queue_m[p.pocket] >= p.pocket_m - car_m and feeder > through + car_m:
                out[p.feeder] = (through, feeder - through)
        elif pocket_share and p.pocket in pocket_share and feeder > p.pocket_m + car_m:
            over = pocket_share[p.pocket] * (feeder - p.pocket_m)
            out[p.feeder] = (feeder - over, over)
    return out


@dataclass(frozen=True, slots=True)
class GroupEstimate:
    """Estimated state of one signal group's movement (Verkehrsstrom)."""

    flow_veh_h: float
    queue_veh: float
    #: Queue length per lane in metres (Rückstaulänge).
    queue_m: float
    saturation_veh_h: float
    degree_of_saturation: float
    #: Demand present (Anforderung): queue, presence, a pending button or bus, or no data.
    demand: bool
    #: Seconds since the first push-button press not yet served (0 if none).
    ped_waiting_s: float
    #: Seconds until the first pending bus reaches the stop line; None if none pending.
    bus_eta_s: float | None
    #: False when a detector of this group is faulty or the group has none.
    data_ok: bool
    approach: str = ""
    #: Share of time green: the given split, or the observed share.
    green_share: float = 0.0
    #: Mean delay per vehicle (HCM/Webster); None without a known cycle or green.
    delay_s: float | None = None
    #: Queue (vehicles) at the end of each of the last reds (at green start), oldest first.
    red_end_queue_veh: tuple[float, ...] = ()
    #: Part of each of those queues that the red's own arrivals do not explain (q x red):
    #: vehicles carried over from earlier cycles (Restrückstau), oldest first.
    carryover_veh: tuple[float, ...] = ()
    #: A queue covers an upstream loop of this group, so its counts are discharge, not
    #: arrivals; ``flow_veh_h`` is then held and balanced from the stop line (docs/estimation.md).
    spillback: bool = False


@dataclass(frozen=True, slots=True)
class ApproachEstimate:
    """Aggregates of one approach (Zufahrt)."""

    #: Longest per-lane queue of the approach's groups, metres.
    queue_m: float
    queue_veh: float
    flow_veh_h: float
    #: Flow-weighted mean delay per vehicle of its vehicle groups; None if unknown.
    delay_s: float | None


@dataclass(frozen=True)
class Estimate:
    """Snapshot of the estimator at ``ts``."""

    ts: float
    groups: Mapping[str, GroupEstimate]
    approaches: Mapping[str, ApproachEstimate]

    def __reduce__(self) -> tuple[Callable[..., Estimate], tuple[object, ...]]:
        # Read-only mappings do not pickle; a worker process gets them read-only again.
        return _estimate, (self.ts, dict(self.groups), dict(self.approaches))


def _estimate(ts: float, groups: dict[str, GroupEstimate],
              approaches: dict[str, ApproachEstimate]) -> Estimate:
    return Estimate(ts, MappingProxyType(groups), MappingProxyType(approaches))


def green_from_state(state: HardwareState, group_ids: Sequence[str]) -> dict[str, bool]:
    """Group -> green from a hardware state string in junction group order."""
    green = SignalState.GREEN.value
    return {g: ch == green for g, ch in zip(group_ids, state.signal_states, strict=False)}


def hcm_delay_s(
    flow_veh_h: float,
    saturation_veh_h: float,
    green_share: float,
    cycle_s: float,
    analysis_period_h: float = 0.25,
) -> float | None:
    """Mean control delay per vehicle, HCM 2000 uniform + incremental terms.

    d1 = 0.5 C (1 - λ)² / (1 - min(1, x) λ)  (Webster's uniform delay)
    d2 = 900 T [(x - 1) + sqrt((x - 1)² + 4 x / (c T))]  (random and overflow)
    with λ = g/C, c = s λ, x = q / c.  None when the movement has no capacity.
    """
    cap = saturation_veh_h * green_share
    if cap <= 0 or cycle_s <= 0:
        return None
    x = flow_veh_h / cap
    lam = min(green_share, 1.0)
    d1 = 0.0 if lam >= 1.0 else 0.5 * cycle_s * (1.0 - lam) ** 2 / (1.0 - min(1.0, x) * lam)
    t = analysis_period_h
    d2 = 900.0 * t * ((x - 1.0) + math.sqrt((x - 1.0) ** 2 + 4.0 * x / (cap * t)))
    return d1 + d2


class _Det:
    """Mutable per-detector state."""

    __slots__ = (
        "empty_since",
        "info",
        "kstart",
        "ksum",
        "kts",
        "lanes",
        "last_presence",
        "last_seq",
        "last_ts",
        "prior_veh_s",
        "queue_m",
        "routes",
        "run_deps",
        "run_last",
        "run_limit",
        "run_start",
        "run_state",
        "sat_d",
        "sat_t",
        "share",
    )

    def __init__(self, info: DetectorInfo) -> None:
        self.info = info
        # A queue sensor's zone (SUMO lane area) may run over consecutive lanes of one lane
        # chain (an approach lane and its continuation): one lane wide, not several.
        self.lanes = 1 if info.kind is DetectorKind.QUEUE else max(1, len(info.lanes))
        self.share = 1.0 / len(info.groups) if info.groups else 0.0
        self.last_seq: int | None = None
        self.last_ts: float | None = None
        self.last_presence = False
        # Exponential-kernel count rate: ksum decays with exp(-dt/tau) (see _rate).
        self.ksum = 0.0
        self.kts: float | None = None
        self.kstart = 0.0
        # (group state, vehicles per count) for the input-output queue model.
        self.routes: tuple[tuple[_Group, float], ...] = ()
        self.empty_since: float | None = None
        self.queue_m: float | None = None
        # Saturated discharge run: 0 idle, 1 waiting for start, 2 measuring.
        self.run_state = 0
        self.run_start = 0.0
        self.run_last = 0.0
        self.run_deps = 0
        self.run_limit = 0.0
        self.sat_d = 0.0
        self.sat_t = 0.0
        self.prior_veh_s = 0.0

    def reset_rate(self) -> None:
        self.ksum = 0.0
        self.kts = None


class _Group:
    """Mutable per-signal-group state."""

    __slots__ = (
        "approach",
        "buses",
        "cycle_s",
        "deps",
        "factor",
        "flow",
        "fluid_in",
        "fluid_out",
        "green",
        "green_end",
        "green_share",
        "green_start",
        "history",
        "hold",
        "hold_release",
        "id",
        "lanes",
        "last_good_flow",
        "last_green_s",
        "n",
        "ped_since",
        "section_m",
        "spill_onset",
        "spill_until",
        "w_queue",
        "w_stop",
        "w_up",
    )

    def __init__(self, gid: str, lanes: int, factor: float) -> None:
        self.id = gid
        self.approach = ""
        self.lanes = lanes
        self.factor = factor
        self.n = 0.0  # vehicles between the upstream loop and the stop line
        self.flow = 0.0  # veh/s, refreshed once per tick
        self.last_good_flow: float | None = None
        self.fluid_in = True
        self.fluid_out = True
        self.green = False
        self.green_share = 0.0
        self.green_start: float | None = None
        self.cycle_s: float | None = None
        self.last_green_s: float | None = None
        self.ped_since: float | None = None
        self.buses: list[tuple[float, float]] = []  # (request ts, eta ts)
        self.section_m = 0.0
        self.w_up = 0.0
        self.w_stop = 0.0
        self.w_queue = 0.0
        # Cumulative departures over the stop line (vehicles), for the arrival balance.
        self.deps = 0.0
        self.green_end: float | None = None
        # (green start ts, queue at red end, cumulative departures, carry-over) per cycle.
        self.history: list[tuple[float, float, float, float]] = []
        # Spillback: in force until this time; the flow held at its onset (veh/s), and
        # when the hold was released (it then fades with the flow time constant).
        self.spill_until: float | None = None
        self.spill_onset = 0.0
        self.hold = 0.0
        self.hold_release: float | None = None


class Estimator:
    """Per-signal-group demand, queue and saturation-flow estimator.

    ``lanes_per_group`` overrides the lane count a group's detectors imply;
    ``turns`` maps a group to a movement label ("left", "through+right") for the
    saturation prior.  Groups named only in ``lanes_per_group`` have no detector
    and are always estimated conservatively (demand present, default flow).
    """

    def __init__(
        self,
        detectors: Sequence[DetectorInfo],
        lanes_per_group: Mapping[str, int] | None = None,
        config: EstimatorConfig | None = None,
        turns: Mapping[str, str] | None = None,
        *,
        pockets: Sequence[PocketSpill] = (),
    ) -> None:
        self.config = cfg = config or EstimatorConfig()
        self._dets: dict[str, _Det] = {}
        for info in detectors:
            if info.id in self._dets:
                raise ValueError(f"duplicate detector id {info.id}")
            self._dets[info.id] = _Det(info)
        for p in pockets:
            for sensor in (p.pocket, p.feeder, p.reference or p.feeder):
                det = self._dets.get(sensor)
                if det is None or det.info.kind is not DetectorKind.QUEUE:
                    raise ValueError(f"pocket {p.pocket}: {sensor} is not a queue sensor")
        self._pockets = tuple(pockets)
        self._feeder_of = {p.pocket: p.feeder for p in pockets}
        group_ids: list[str] = []
        for info in detectors:
            group_ids += [g for g in info.groups if g not in group_ids]
        group_ids += [g for g in (lanes_per_group or {}) if g not in group_ids]
        turns = turns or {}

        self._members: dict[str, dict[DetectorKind, list[_Det]]] = {
            g: {k: [] for k in DetectorKind} for g in group_ids
        }
        for det in self._dets.values():
            for g in det.info.groups:
                self._members[g][det.info.kind].append(det)

        self._groups: dict[str, _Group] = {}
        for g in group_ids:
            m = self._members[g]
            lanes_seen = {
                lane
                for kind in (DetectorKind.STOP_LINE, DetectorKind.QUEUE, DetectorKind.UPSTREAM)
                for d in m[kind]
                for lane in d.info.lanes
            }
            lanes = (lanes_per_group or {}).get(g, max(1, len(lanes_seen)))
            gs = _Group(g, lanes, turn_factor(turns.get(g, ""), cfg))
            approaches = [d.info.approach for kind in DetectorKind for d in m[kind]]
            gs.approach = approaches[0] if approaches else ""
            gs.section_m = max((d.info.distance_m for d in m[DetectorKind.UPSTREAM]), default=0.0)
            self._groups[g] = gs

        for det in self._dets.values():
            if det.info.kind is DetectorKind.STOP_LINE:
                factors = [self._groups[g].factor for g in det.info.groups] or [1.0]
                det.prior_veh_s = (
                    cfg.saturation_per_lane_veh_h * det.lanes * sum(factors) / len(factors) / 3600
                )

        # Upstream loops per approach and the groups they serve (departure-share split).
        self._approach_up: dict[str, tuple[_Det, ...]] = {}
        self._approach_served: dict[str, tuple[str, ...]] = {}
        for det in self._dets.values():
            if det.info.kind is DetectorKind.UPSTREAM and det.info.approach and det.info.groups:
                a = det.info.approach
                self._approach_up[a] = (*self._approach_up.get(a, ()), det)
                served = self._approach_served.get(a, ())
                self._approach_served[a] = served + tuple(
                    g for g in det.info.groups if g not in served)

        self._faulty: frozenset[str] = frozenset()
        self._t: float | None = None
        self._signals_seen = False
        self._rewire()

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(self._groups)

    # -- faults ------------------------------------------------------------------
    def set_faulty(self, faulty: Mapping[str, object] | frozenset[str]) -> None:
        """Exclude these detectors from the fusion (``HealthMonitor.faulty()``)."""
        new = frozenset(d for d in faulty if d in self._dets)
        if new == self._faulty:
            return
        for d in self._faulty - new:
            # Back from a fault: whatever it counted meanwhile is not evidence.
            det = self._dets[d]
            det.reset_rate()
            det.run_state = 0
            det.empty_since = None
            det.queue_m = None
        for d in new - self._faulty:
            self._dets[d].run_state = 0
        self._faulty = new
        self._rewire()

    def _rewire(self) -> None:
        """Recompute the count routes and lane weights after a change of faults."""
        is_faulty = self._faulty.__contains__
        for gs in self._groups.values():
            m = self._members[gs.id]
            up = [d for d in m[DetectorKind.UPSTREAM] if not is_faulty(d.info.id)]
            stop = [d for d in m[DetectorKind.STOP_LINE] if not is_faulty(d.info.id)]
            queue = [d for d in m[DetectorKind.QUEUE] if not is_faulty(d.info.id)]
            gs.w_up = _scale(m[DetectorKind.UPSTREAM], up)
            gs.w_stop = _scale(m[DetectorKind.STOP_LINE], stop)
            gs.w_queue = _scale(m[DetectorKind.QUEUE], queue)
            gs.fluid_in = not up
            gs.fluid_out = not stop
        for det in self._dets.values():
            kind = det.info.kind
            if det.info.id in self._faulty or kind not in (
                DetectorKind.UPSTREAM, DetectorKind.STOP_LINE
            ):
                det.routes = ()
                continue
            sign = 1.0 if kind is DetectorKind.UPSTREAM else -1.0
            det.routes = tuple(
                (
                    self._groups[g],
                    sign * det.share
                    * (self._groups[g].w_up if sign > 0 else self._groups[g].w_stop),
                )
                for g in det.info.groups
            )

    # -- input -------------------------------------------------------------------
    def observe(self, reading: DetectorReading) -> None:
        """Take one detector reading (in source-timestamp order per detector)."""
        det = self._dets.get(reading.detector_id)
        if det is None:
            return
        if not is_news(reading, det.last_seq, det.last_ts):
            return
        ts = reading.ts
        prev_ts = det.last_ts
        det.last_seq = reading.seq
        det.last_ts = ts
        kind = det.info.kind
        count = reading.count if reading.count > 0 else 0

        if kind is DetectorKind.UPSTREAM or kind is DetectorKind.STOP_LINE:
            tau = self.config.flow_time_constant_s
            if det.kts is None:
                det.kstart = ts - det.info.report_period_s
                det.ksum = float(count)
            else:
                det.ksum = det.ksum * math.exp(-(ts - det.kts) / tau) + count
            det.kts = ts
            if count:
                for gs, w in det.routes:
                    n = gs.n + w * count
                    gs.n = n if n > 0.0 else 0.0
                    if w < 0.0:
                        gs.deps -= w * count
            if kind is DetectorKind.STOP_LINE:
                self._discharge(det, reading, prev_ts)
        elif kind is DetectorKind.QUEUE:
            q = reading.queue_m
            det.queue_m = q if q is not None and math.isfinite(q) and q >= 0 else None
        elif kind is DetectorKind.PUSH_BUTTON:
            if reading.pressed or count:
                for g in det.info.groups:
                    gs = self._groups[g]
                    # A press during the crossing's own green is served by that green.
                    if not gs.green and gs.ped_since is None:
                        gs.ped_since = ts
        elif kind is DetectorKind.BUS_REQUEST:
            n_req = count or int(reading.presence and not det.last_presence)
            det.last_presence = reading.presence
            if n_req:
                speed = reading.speed_mps if reading.speed_mps and reading.speed_mps > 0.5 else (
                    self.config.bus_speed_mps
                )
                eta = ts + det.info.distance_m / speed
                for g in det.info.groups:
                    self._groups[g].buses.extend([(ts, eta)] * n_req)

    def _discharge(self, det: _Det, reading: DetectorReading, prev_ts: float | None) -> None:
        """Stop-line gap tracking and saturated-discharge measurement."""
        ts = reading.ts
        busy = reading.count > 0 or reading.occupancy > 0.0 or reading.presence
        if busy:
            det.empty_since = None
        elif det.empty_since is None:
            det.empty_since = prev_ts if prev_ts is not None else ts - det.info.report_period_s
        if det.run_state == 0 or det.info.id in self._faulty:
            return
        if det.run_state == 1:
            if ts <= det.run_start:
                return
            det.run_state = 2
            det.run_deps = 0
            det.run_last = det.run_start
        det.run_deps += max(reading.count, 0)
        if busy:
            det.run_last = ts
        if det.run_deps >= det.run_limit:
            self._finish_run(det, ts)
        elif det.empty_since is not None and ts - det.empty_since >= self.config.clear_gap_s:
            self._finish_run(det, det.run_last)

    def _finish_run(self, det: _Det, end: float) -> None:
        cfg = self.config
        # Readings end a 1 s interval: the last vehicle passed on average half
        # an interval before the reading's timestamp.
        duration = end - det.run_start - 0.5 * det.info.report_period_s
        deps = det.run_deps
        det.run_state = 0
        if duration < cfg.min_sample_s or deps < cfg.min_sample_veh:
            return
        lam = cfg.saturation_forgetting
        det.sat_d = lam * det.sat_d + deps
        det.sat_t = lam * det.sat_t + duration

    def observe_signals(self, now: float, green: Mapping[str, bool]) -> None:
        """Which signal groups are green now (from the hardware's reported state).

        Call about once per second; the fluid parts of the queue model, the
        radar correction and the green-share smoothing advance here.
        """
        self._advance(now)
        self._signals_seen = True
        for g, is_green in green.items():
            gs = self._groups.get(g)
            if gs is None or is_green == gs.green:
                continue
            gs.green = is_green
            if is_green:
                if gs.green_start is not None:
                    gs.cycle_s = now - gs.green_start
                self._record_red_end(gs, now)
                gs.green_start = now
                gs.ped_since = None
                self._start_runs(gs, now)
            else:
                gs.green_end = now
                if gs.green_start is not None:
                    gs.last_green_s = now - gs.green_start
                for det in self._members[g][DetectorKind.STOP_LINE]:
                    if det.run_state == 2:
                        self._finish_run(det, det.run_last)
                    det.run_state = 0

    def _record_red_end(self, gs: _Group, now: float) -> None:
        """Queue at the end of red, departures so far and the carried-over part."""
        queue = self._queue_veh(gs)
        red_s = now - gs.green_end if gs.green_end is not None else 0.0
        carry = max(0.0, queue - gs.flow * red_s)
        gs.history.append((now, queue, gs.deps, carry))
        del gs.history[: -self.config.queue_history_cycles]

    def _start_runs(self, gs: _Group, now: float) -> None:
        queue = self._queue_veh(gs)
        stops = self._members[gs.id][DetectorKind.STOP_LINE]
        total_lanes = sum(d.lanes * d.share for d in stops)
        if queue < self.config.min_sample_veh or total_lanes <= 0:
            return
        for det in stops:
            if det.info.id in self._faulty:
                continue
            det.run_state = 1
            det.run_start = now + self.config.start_lost_s
            det.run_limit = queue * det.lanes * det.share / total_lanes
            det.run_deps = 0

    def _advance(self, now: float) -> None:
        if self._t is None:
            self._t = now
            self._update_spillback(now, self._fresh_queue_m(now))
            for gs in self._groups.values():
                gs.flow = self._flow(gs, now)[0]
            return
        dt = now - self._t
        if dt <= 0:
            return
        self._t = now
        cfg = self.config
        k_radar = 1.0 - math.exp(-dt / cfg.radar_time_constant_s)
        k_share = 1.0 - math.exp(-dt / cfg.flow_time_constant_s)
        fresh = self._fresh_queue_m(now)
        self._update_spillback(now, fresh)
        for gs in self._groups.values():
            if gs.hold > 0.0 and self._spilled(gs, now) and self._leaves_green_unused(gs):
                gs.hold -= k_share * gs.hold
            q = self._flow(gs, now)[0]
            gs.flow = q
            n = gs.n
            if gs.fluid_in:
                n += q * dt
            if gs.fluid_out and gs.green:
                n -= self._saturation(gs) * dt
                gs.deps += self._saturation(gs) * dt
            moving = self._moving(gs)
            target = self._radar_veh(gs, fresh)
            if target is not None:
                n += k_radar * (target + moving - n)
            elif gs.green and not gs.fluid_out and self._gap(gs, now):
                n = min(n, moving)
            gs.n = n if n > 0.0 else 0.0
            gs.green_share += k_share * (float(gs.green) - gs.green_share)
            if gs.buses:
                gs.buses = [
                    (t0, eta) for t0, eta in gs.buses
                    if now - t0 <= cfg.bus_request_timeout_s and not (gs.green and eta <= now)
                ]

    # -- derived quantities ------------------------------------------------------
    def _rate(self, det: _Det, now: float) -> float | None:
        """Count rate (veh/s) with an exponential kernel, normalised for the
        observed span so the first minutes are not biased towards zero."""
        if det.kts is None:
            return None
        tau = self.config.flow_time_constant_s
        ksum = det.ksum * math.exp(-max(now - det.kts, 0.0) / tau)
        norm = tau * -math.expm1(-max(now - det.kstart, 1e-9) / tau)
        return ksum / norm

    @staticmethod
    def _spilled(gs: _Group, now: float) -> bool:
        return gs.spill_until is not None and now <= gs.spill_until

    def _leaves_green_unused(self, gs: _Group) -> bool:
        """The recorded cycles' arrivals stay clearly below what the green could discharge.

        A queue sensor can report a queue over the loop that is not this movement's (a full
        turn pocket's overflow on a shared lane): then the movement clears its queue every
        cycle and the balance, not the flow held at the onset, is its demand.
        """
        if len(gs.history) < 2:
            return False
        capacity = self._saturation(gs) * gs.green_share
        limit = self.config.spillback_hold_min_utilisation * capacity
        return capacity > 0.0 and self._balance_flow(gs) < limit

    def _flow(self, gs: _Group, now: float) -> tuple[float, bool]:
        """Arrival flow (veh/s) and whether it was measured, corrected for spillback.

        While a queue covers an upstream loop, that loop counts the queue's discharge,
        not the arrivals: the flow is then at least the flow held at the onset and at
        least the balance at the stop line (departures plus queue growth per cycle).
        After the spillback, the hold fades with the flow time constant.
        """
        q, measured = self._loop_flow(gs, now)
        if self._spilled(gs, now):
            return max(q, gs.hold, self._balance_flow(gs)), measured
        if gs.hold_release is not None:
            tau = self.config.flow_time_constant_s
            q = max(q, gs.hold * math.exp(-max(now - gs.hold_release, 0.0) / tau))
        return q, measured

    def _balance_flow(self, gs: _Group) -> float:
        """Arrivals (veh/s) over the recorded cycles: departures plus queue growth,
        from the oldest recorded red end to the newest."""
        h = gs.history
        if len(h) < 2:
            return 0.0
        t0, q0, d0, _ = h[0]
        t1, q1, d1, _ = h[-1]
        if t1 - t0 <= 0:
            return 0.0
        return max(0.0, (d1 - d0 + q1 - q0) / (t1 - t0))

    def _update_spillback(self, now: float, fresh: Mapping[str, float]) -> None:
        """Flag groups whose upstream loop is covered by a queue (radar reading only).

        ``fresh``: the jam lengths of the healthy queue sensors with a fresh reading.
        """
        cfg = self.config
        for det in self._dets.values():
            if det.info.kind is not DetectorKind.UPSTREAM or det.info.id in self._faulty:
                continue
            reach = det.info.distance_m - cfg.spillback_margin_m
            covered = any(
                fresh.get(q.info.id, -math.inf) >= reach
                for g in det.info.groups for q in self._members[g][DetectorKind.QUEUE]
            )
            if not covered:
                continue
            for g in det.info.groups:
                gs = self._groups[g]
                if gs.spill_until is None or now > gs.spill_until:
                    # Onset: hold the smoothed flow from before the queue covered the loop.
                    # (gs.flow already carries a hold still fading from an earlier spillback.)
                    gs.hold = max(gs.flow, self._loop_flow(gs, now)[0])
                    gs.hold_release = None
                    gs.spill_onset = now
                elif now - gs.spill_onset <= cfg.flow_time_constant_s:
                    # The loop's smoothed rate still catching up with a rise in demand that
                    # built the queue is a lower bound on the arrivals. Only for one time
                    # constant: afterwards the current rate enters _flow by itself, and a hold
                    # that kept rising would collect the kernel's noise peaks over an hour-long
                    # spillback (asymmetric turning, seed 3: K1 603 veh/h held, 430 true).
                    gs.hold = max(gs.hold, self._loop_flow(gs, now)[0])
                gs.spill_until = now + cfg.spillback_release_s
        for gs in self._groups.values():
            if gs.spill_until is not None and now > gs.spill_until and gs.hold_release is None:
                gs.hold_release = gs.spill_until

    def _pooled_flow(self, gs: _Group, now: float) -> float | None:
        """The group's share of its approach's upstream counts, split by departures.

        ``None`` where the split is not possible (one group only, a group of the pool
        without a healthy stop-line loop, a faulty or silent upstream loop, too few
        departures yet): the lane-based split applies then.
        """
        ups = self._approach_up.get(gs.approach, ())
        served = self._approach_served.get(gs.approach, ())
        if len(served) < 2 or gs.id not in served:
            return None
        total = 0.0
        for d in ups:
            if d.info.id in self._faulty:
                return None
            r = self._rate(d, now)
            if r is None:
                return None
            total += r
        tau = self.config.flow_time_constant_s
        dep: dict[str, float] = {}
        counted = 0.0
        for g in served:
            stops = [d for d in self._members[g][DetectorKind.STOP_LINE]
                     if d.info.id not in self._faulty]
            if not stops:
                return None
            rate = 0.0
            for d in stops:
                r = self._rate(d, now)
                # A loop back from a fault (or new) has no history yet: its zero would
                # hand its group's share to the others.
                if r is None or now - d.kstart < 0.5 * tau:
                    return None
                rate += r * d.share
                assert d.kts is not None  # a rate exists
                counted += d.ksum * math.exp(-max(now - d.kts, 0.0) / tau) * d.share
            dep[g] = rate
        dep_total = sum(dep.values())
        if counted < self.config.pool_min_departures_veh or dep_total <= 0.0:
            return None
        return total * dep[gs.id] / dep_total

    def _loop_flow(self, gs: _Group, now: float) -> tuple[float, bool]:
        """Arrival flow (veh/s) from the counting loops and whether it was measured."""
        if self.config.pool_upstream_by_departures:
            pooled = self._pooled_flow(gs, now)
            if pooled is not None:
                return pooled, True
        m = self._members[gs.id]
        for kind in (DetectorKind.UPSTREAM, DetectorKind.STOP_LINE):
            dets = m[kind]
            if not dets:
                continue
            total = 0.0
            weight = 0.0
            for d in dets:
                if d.info.id in self._faulty:
                    continue
                r = self._rate(d, now)
                if r is None:
                    continue
                total += r * d.share
                weight += d.lanes * d.share
            if weight > 0:
                full = sum(d.lanes * d.share for d in dets)
                return total * full / weight, True
        if gs.last_good_flow is not None:
            return gs.last_good_flow, False
        return self.config.default_flow_veh_h / 3600.0, False

    def _saturation(self, gs: _Group) -> float:
        """Saturation flow (veh/s of green): learned per stop-line detector, prior elsewhere."""
        cfg = self.config
        total = 0.0
        covered = 0.0
        for d in self._members[gs.id][DetectorKind.STOP_LINE]:
            prior = d.prior_veh_s
            w0 = cfg.saturation_prior_weight_s
            s = (prior * w0 + d.sat_d) / (w0 + d.sat_t)
            s = min(max(s, cfg.saturation_min_factor * prior), cfg.saturation_max_factor * prior)
            total += s * d.share
            covered += d.lanes * d.share
        rest = max(gs.lanes - covered, 0.0)
        return total + rest * cfg.saturation_per_lane_veh_h * gs.factor / 3600.0

    def _moving(self, gs: _Group) -> float:
        """Vehicles expected in motion between the upstream loop and the stop line."""
        return gs.flow * gs.section_m / self.config.free_speed_mps

    def _queue_veh(self, gs: _Group) -> float:
        q = gs.n - self._moving(gs)
        return q if q > 0.0 else 0.0

    def _fresh_queue_m(self, now: float) -> dict[str, float]:
        """Jam length of every healthy queue sensor with a fresh reading."""
        return {
            d.info.id: d.queue_m
            for d in self._dets.values()
            if d.info.kind is DetectorKind.QUEUE and d.info.id not in self._faulty
            and d.queue_m is not None and d.last_ts is not None
            and now - d.last_ts <= 2.0 * d.info.report_period_s
        }

    def _pocket_shares(self) -> dict[str, float]:
        """Per pocket sensor, its groups' share of the flow of its and its feeder's groups."""
        out: dict[str, float] = {}
        for p in self._pockets:
            if p.reference:
                continue
            turning = {g: self._groups[g].flow for g in self._dets[p.pocket].info.groups}
            arm = dict(turning)
            arm.update({g: self._groups[g].flow for g in self._dets[p.feeder].info.groups})
            total = sum(arm.values())
            if total > 0.0:
                out[p.pocket] = sum(turning.values()) / total
        return out

    def _radar_veh(self, gs: _Group, fresh: Mapping[str, float]) -> float | None:
        """Queued vehicles according to the healthy, fresh queue sensors, or None.

        A full pocket's overflow (``pockets``) counts for the pocket's groups, not for
        the groups of the sensor on the lane it stands on.
        """
        if gs.w_queue <= 0:
            return None
        spilled = pocket_overflow_m(
            self._pockets, fresh, self.config.jam_spacing_m, self._pocket_shares())
        total = 0.0
        seen = False
        for d in self._members[gs.id][DetectorKind.QUEUE]:
            queue_m = fresh.get(d.info.id)
            if queue_m is None:
                continue
            feeder = self._feeder_of.get(d.info.id, "")
            if d.info.id in spilled:
                queue_m = spilled[d.info.id][0]
            elif feeder in spilled:
                queue_m += spilled[feeder][1]
            total += queue_m * d.lanes * d.share / self.config.jam_spacing_m
            seen = True
        return total * gs.w_queue if seen else None

    def _gap(self, gs: _Group, now: float) -> bool:
        """Every healthy stop-line loop of the group has been empty for the clearing gap."""
        gap = self.config.clear_gap_s
        # Emptiness before the green says nothing about the queue's discharge.
        green_from = gs.green_start if gs.green_start is not None else now
        any_det = False
        for d in self._members[gs.id][DetectorKind.STOP_LINE]:
            if d.info.id in self._faulty:
                continue
            any_det = True
            if d.empty_since is None or now - max(d.empty_since, green_from) < gap:
                return False
        return any_det

    # -- output ------------------------------------------------------------------
    def estimate(
        self,
        now: float,
        faulty: Mapping[str, object] | frozenset[str] = frozenset(),
        green_split: Mapping[str, float] | None = None,
        cycle_s: float | None = None,
    ) -> Estimate:
        """Snapshot per signal group and approach.

        ``faulty`` (e.g. ``HealthMonitor.faulty()``) is applied before the
        snapshot and stays in force until the next call or ``set_faulty``.
        ``green_split`` maps a group to its effective green share g/C of the
        running plan and ``cycle_s`` is its cycle; without them each group's
        green share and cycle as observed over its last complete cycle are used
        (a smoothed share before the first complete cycle, 1.0 before any
        signal state was seen).
        """
        self.set_faulty(faulty)
        self._advance(now)
        cfg = self.config
        groups: dict[str, GroupEstimate] = {}
        for gs in self._groups.values():
            m = self._members[gs.id]
            has_vehicle = bool(
                m[DetectorKind.STOP_LINE] or m[DetectorKind.UPSTREAM] or m[DetectorKind.QUEUE]
            )
            all_dets = [d for kind in DetectorKind for d in m[kind]]
            data_ok = bool(all_dets) and not any(d.info.id in self._faulty for d in all_dets)
            ped_wait = now - gs.ped_since if gs.ped_since is not None else 0.0
            bus_eta = (
                max(min(eta for _, eta in gs.buses) - now, 0.0) if gs.buses else None
            )
            if green_split is not None and gs.id in green_split:
                share = green_split[gs.id]
            elif gs.cycle_s and gs.last_green_s is not None:
                # The last complete cycle: exact under fixed time, current under adaptive.
                share = min(gs.last_green_s / gs.cycle_s, 1.0)
            elif self._signals_seen:
                share = gs.green_share
            else:
                share = 1.0
            if has_vehicle or not all_dets:
                flow, measured = self._flow(gs, now)
                if measured and data_ok:
                    gs.last_good_flow = flow
                sat = self._saturation(gs) * 3600.0
                flow_h = flow * 3600.0
                queue = self._queue_veh(gs)
                x = flow_h / (sat * max(share, cfg.min_green_share)) if sat > 0 else 0.0
                cyc = cycle_s if cycle_s is not None else gs.cycle_s
                delay = (
                    hcm_delay_s(flow_h, sat, share, cyc, cfg.delay_analysis_period_h)
                    if cyc is not None and share > 0
                    else None
                )
                presence = any(
                    d.empty_since is None and d.last_ts is not None
                    for d in m[DetectorKind.STOP_LINE]
                    if d.info.id not in self._faulty
                )
            else:
                flow_h = sat = x = queue = 0.0
                delay = None
                presence = False
            demand = (
                not data_ok
                or queue >= cfg.demand_queue_veh
                or presence
                or gs.ped_since is not None
                or bool(gs.buses)
            )
            groups[gs.id] = GroupEstimate(
                flow_veh_h=flow_h,
                queue_veh=queue,
                queue_m=queue * cfg.jam_spacing_m / max(gs.lanes, 1),
                saturation_veh_h=sat,
                degree_of_saturation=x,
                demand=demand,
                ped_waiting_s=ped_wait,
                bus_eta_s=bus_eta,
                data_ok=data_ok,
                approach=gs.approach,
                green_share=share,
                delay_s=delay,
                red_end_queue_veh=tuple(h[1] for h in gs.history),
                carryover_veh=tuple(h[3] for h in gs.history),
                spillback=gs.spill_until is not None and now <= gs.spill_until,
            )
        return Estimate(ts=now, groups=MappingProxyType(groups),
                        approaches=MappingProxyType(_approaches(groups)))


def _scale(all_dets: Sequence[_Det], healthy: Sequence[_Det]) -> float:
    """Lane weight that scales the healthy detectors up to all the group's lanes."""
    h = sum(d.lanes * d.share for d in healthy)
    if h <= 0:
        return 0.0
    return sum(d.lanes * d.share for d in all_dets) / h


def _approaches(groups: Mapping[str, GroupEstimate]) -> dict[str, ApproachEstimate]:
    by: dict[str, list[GroupEstimate]] = {}
    for ge in groups.values():
        by.setdefault(ge.approach, []).append(ge)
    out: dict[str, ApproachEstimate] = {}
    for approach, ges in by.items():
        flow = sum(g.flow_veh_h for g in ges)
        weighted = [(g.flow_veh_h, g.delay_s) for g in ges if g.delay_s is not None]
        wsum = sum(f for f, _ in weighted)
        delay: float | None
        if weighted and wsum > 0:
            delay = sum(f * d for f, d in weighted if d is not None) / wsum
        elif weighted:
            delay = max(d for _, d in weighted if d is not None)
        else:
            delay = None
        out[approach] = ApproachEstimate(
            queue_m=max((g.queue_m for g in ges), default=0.0),
            queue_veh=sum(g.queue_veh for g in ges),
            flow_veh_h=flow,
            delay_s=delay,
        )
    return out
