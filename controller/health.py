"""Detector health (Detektorüberwachung) and the degradation policy (safety.md D1, D2).

A ``HealthMonitor`` keeps one small record per detector and judges every
reading as it arrives.  A detector is *faulty* with one ``Fault``; it returns
to healthy only after ``HealthConfig.recovery_readings`` consecutive plausible
readings (hysteresis), so a detector that alternates between good and bad
readings stays faulty instead of flapping.

``assess`` turns the set of faulty detectors into a decision for the control
loop: which signal groups must be treated as having demand (a faulty
detector's movement gets a safe green), and whether adaptive control is still
allowed or the junction goes back to the hardware's fallback program.

Everything here is pure: the caller supplies the clock (``now``) and gets
transitions back as ``HealthEvent`` values for metrics and logs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from controller.messages import DetectorInfo, DetectorKind, DetectorReading, is_news

#: Kinds that count vehicles with an induction loop (Induktionsschleife).
_LOOP_KINDS = frozenset({DetectorKind.STOP_LINE, DetectorKind.UPSTREAM})
#: Kinds whose silence can be judged against neighbours (DEAD).
_ACTIVITY_KINDS = frozenset({DetectorKind.STOP_LINE, DetectorKind.UPSTREAM, DetectorKind.QUEUE})


class Fault(StrEnum):
    """Why a detector is not trusted (Detektorstörung)."""

    #: No reading, or only readings older than ``stale_factor`` x report period (D2).
    STALE = "stale"
    #: No activity for far longer than plausible while its neighbours count (Ausfall).
    DEAD = "dead"
    #: Occupied (or pressed) continuously for longer than any plausible red (Dauerbelegung).
    STUCK_ON = "stuck_on"
    #: Counts beyond physical flow, or impossible count/occupancy combinations (Flattern).
    CHATTERING = "chattering"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Thresholds of the health checks and the degradation policy.

    Defaults are engineering judgement, not standard values; see docs/estimation.md.
    """

    #: A detector is stale when its newest reading is older than this x its report period.
    stale_factor: float = 2.0
    #: Silence (zero counts, zero occupancy) longer than this may mean DEAD ...
    dead_after_s: float = 600.0
    #: ... if the other detectors of the same approach counted at least this many vehicles
    dead_neighbour_min_veh: float = 20.0
    #: ... and this detector, at its own share of the approach's traffic, should have been
    #: active at least this often meanwhile (Poisson: silence by chance below 0.7 %).  A
    #: left-turn pocket with 10 veh/h at night is quiet for ten minutes one time in five.
    dead_expected_min: float = 5.0
    #: Weight (vehicles) of the even share 1 / (loops and sensors of the approach) in the
    #: share estimate: a detector dead from the start still gets flagged.
    dead_share_prior_veh: float = 50.0
    #: Silence limit for a detector with no neighbour to compare with; None = never
    #: (a quiet night is plausible, so silence alone proves nothing).
    dead_without_neighbours_s: float | None = None
    #: Continuous occupancy (or a held push-button) longer than this is STUCK_ON.
    #: Must exceed the longest red a queue can stand over a stop-line loop.
    stuck_on_after_s: float = 120.0
    #: Occupancy at or above this counts as "continuously occupied".
    stuck_occupancy: float = 0.98
    #: Physical ceiling of flow over one lane (3600 veh/h, about twice saturation flow).
    max_veh_per_s_per_lane: float = 1.0
    #: Window over which the flow ceiling must be exceeded to count as sustained.
    chatter_window_s: float = 60.0
    #: Impossible single readings within the window that make a detector CHATTERING.
    chatter_impossible_readings: int = 3
    #: Consecutive plausible readings before a faulty detector is healthy again.
    recovery_readings: int = 10
    #: Adaptive control stops when more than this share of one group's detectors is faulty.
    max_group_faulty_share: float = 0.5
    #: ... or more than this share of all detectors.
    max_total_faulty_share: float = 0.3

    def __post_init__(self) -> None:
        if self.stale_factor <= 1.0:
            raise ValueError("stale_factor must exceed 1 (a reading per period is normal)")
        if self.recovery_readings < 1:
            raise ValueError("recovery_readings must be at least 1")
        if not 0.0 <= self.max_group_faulty_share <= 1.0:
            raise ValueError("max_group_faulty_share must be within 0..1")
        if not 0.0 <= self.max_total_faulty_share <= 1.0:
            raise ValueError("max_total_faulty_share must be within 0..1")
        if self.chatter_window_s <= 0 or self.stuck_on_after_s <= 0 or self.dead_after_s <= 0:
            raise ValueError("health time limits must be positive")
        if self.dead_expected_min < 0 or self.dead_share_prior_veh <= 0:
            raise ValueError("dead_expected_min must be >= 0 and dead_share_prior_veh > 0")


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A change of one detector's health; ``None`` means healthy."""

    detector_id: str
    ts: float
    old: Fault | None
    new: Fault | None
    detail: str

    @property
    def fault(self) -> Fault | None:
        """The fault this event is about: the new one, or the one that cleared."""
        return self.new if self.new is not None else self.old


class _Record:
    """Mutable per-detector state; slots keep the per-reading path cheap."""

    __slots__ = (
        "activity_snapshot",
        "approach_at_start",
        "fault",
        "impossible_in_window",
        "info",
        "lanes",
        "last_activity_ts",
        "last_seq",
        "last_ts",
        "onsets",
        "plausible_run",
        "run_count",
        "run_start_ts",
        "stuck_since",
        "was_active",
        "window",
        "window_sum",
    )

    def __init__(self, info: DetectorInfo) -> None:
        self.info = info
        self.lanes = max(1, len(info.lanes))
        # No reading yet: stale until data arrives (safety.md D5, readiness needs data).
        self.fault: Fault | None = Fault.STALE
        self.last_ts: float | None = None
        self.last_seq: int | None = None
        self.last_activity_ts: float | None = None
        # Approach vehicle total when this detector was last active (DEAD check).
        self.activity_snapshot = 0.0
        # Its share of the approach's traffic (DEAD check): activity onsets against the
        # approach's vehicles since its first reading.
        self.approach_at_start: float | None = None
        self.onsets = 0
        self.was_active = False
        self.stuck_since: float | None = None
        self.window: deque[tuple[float, int, bool]] = deque()
        self.window_sum = 0
        self.impossible_in_window = 0
        self.plausible_run = 0
        # Vehicles counted during the current plausible run (recovery from CHATTERING).
        self.run_count = 0
        self.run_start_ts = 0.0


class HealthMonitor:
    """Health records of all detectors of one junction.

    Call ``observe`` for every reading and ``tick`` about once per second (it
    finds stale and dead detectors, which send nothing to observe).  Readings
    with a sequence number not above the last one are duplicates or reordered
    deliveries and are ignored.
    """

    def __init__(
        self, detectors: Sequence[DetectorInfo], config: HealthConfig | None = None
    ) -> None:
        self.config = config or HealthConfig()
        self._records: dict[str, _Record] = {}
        for info in detectors:
            if info.id in self._records:
                raise ValueError(f"duplicate detector id {info.id}")
            self._records[info.id] = _Record(info)
        # Cumulative vehicles counted per approach, for the DEAD neighbour comparison.
        self._approach_total: dict[str, float] = {}
        self._approach_members: dict[str, int] = {}
        for info in detectors:
            if info.kind in _ACTIVITY_KINDS:
                self._approach_total.setdefault(info.approach, 0.0)
                self._approach_members[info.approach] = (
                    self._approach_members.get(info.approach, 0) + 1
                )
        self._faulty: dict[str, Fault] = {d: Fault.STALE for d in self._records}

    # -- queries ---------------------------------------------------------------
    def status(self, detector_id: str) -> Fault | None:
        """The detector's fault, or None when healthy; KeyError for an unknown id."""
        return self._records[detector_id].fault

    def faulty(self) -> Mapping[str, Fault]:
        """All faulty detectors now (a snapshot, safe to keep)."""
        return MappingProxyType(dict(self._faulty))

    @property
    def detectors(self) -> tuple[DetectorInfo, ...]:
        return tuple(r.info for r in self._records.values())

    # -- input -----------------------------------------------------------------
    def observe(self, reading: DetectorReading, now: float) -> list[HealthEvent]:
        """Judge one reading; returns the health transitions it caused (usually none)."""
        rec = self._records.get(reading.detector_id)
        if rec is None:
            return []
        if not is_news(reading, rec.last_seq, rec.last_ts):
            return []
        cfg = self.config
        info = rec.info
        prev_ts = rec.last_ts
        rec.last_seq = reading.seq
        rec.last_ts = reading.ts
        dt = info.report_period_s if prev_ts is None else max(reading.ts - prev_ts, 1e-3)

        fault: Fault | None = None
        detail = ""
        plausible = True

        if now - reading.ts > cfg.stale_factor * info.report_period_s:
            fault, detail = Fault.STALE, f"reading {now - reading.ts:.1f} s old"

        impossible = _impossible(reading, info.kind, rec.lanes)
        active = reading.count > 0 or reading.occupancy > 0.0 or reading.presence
        if info.kind is DetectorKind.QUEUE:
            active = active or bool(reading.queue_m)
        if info.kind in _ACTIVITY_KINDS:
            if rec.approach_at_start is None:
                rec.approach_at_start = self._approach_total.get(info.approach, 0.0)
            now_active = active and not impossible
            rec.onsets += now_active and not rec.was_active
            rec.was_active = now_active
            if now_active or rec.last_activity_ts is None:
                # The first reading starts the silence clock even when it is empty.
                rec.last_activity_ts = reading.ts
                total = self._approach_total.get(info.approach, 0.0) + max(reading.count, 0)
                self._approach_total[info.approach] = total
                rec.activity_snapshot = total

        # Stuck on: occupancy (loops) or the button state (push-buttons) held too long.
        if info.kind is DetectorKind.PUSH_BUTTON:
            held = bool(reading.pressed)
        elif info.kind in _LOOP_KINDS:
            held = reading.occupancy >= cfg.stuck_occupancy
        else:
            held = False
        if held:
            if rec.stuck_since is None:
                rec.stuck_since = reading.ts - dt
            plausible = False
            if fault is None and reading.ts - rec.stuck_since > cfg.stuck_on_after_s:
                fault = Fault.STUCK_ON
                detail = f"occupied for {reading.ts - rec.stuck_since:.0f} s"
        else:
            rec.stuck_since = None

        if info.kind in _LOOP_KINDS or info.kind is DetectorKind.QUEUE:
            count = max(reading.count, 0)
            window = rec.window
            window.append((reading.ts, count, impossible))
            rec.window_sum += count
            rec.impossible_in_window += impossible
            horizon = reading.ts - cfg.chatter_window_s
            while window and window[0][0] <= horizon:
                _, c, imp = window.popleft()
                rec.window_sum -= c
                rec.impossible_in_window -= imp
            ceiling = cfg.max_veh_per_s_per_lane * rec.lanes
            if impossible or count > ceiling * dt + rec.lanes:
                plausible = False
            # While CHATTERING, the recovery run below judges; the window would keep
            # the old excess for a whole window and defeat the hysteresis count.
            if fault is None and rec.fault is not Fault.CHATTERING and (
                rec.window_sum > ceiling * cfg.chatter_window_s
                or rec.impossible_in_window >= cfg.chatter_impossible_readings
            ):
                fault = Fault.CHATTERING
                detail = (
                    f"{rec.window_sum} vehicles and {rec.impossible_in_window} impossible "
                    f"readings in {cfg.chatter_window_s:.0f} s"
                )
            if rec.fault is Fault.CHATTERING and plausible:
                # Recovery needs a physical mean rate over the whole run, not only
                # plausible single readings: 2 counts every second on one lane
                # look fine one at a time.
                if rec.plausible_run == 0:
                    rec.run_count = 0
                    rec.run_start_ts = reading.ts - dt
                rec.run_count += count
                if rec.run_count > ceiling * (reading.ts - rec.run_start_ts) + rec.lanes:
                    plausible = False
        elif impossible:
            plausible = False

        if fault is not None:
            plausible = False
        if rec.fault is Fault.DEAD and not active and rec.plausible_run == 0:
            # Silence is no evidence of life: the recovery run starts with activity.
            plausible = False

        return self._settle(rec, reading.ts, fault, detail, plausible)

    def tick(self, now: float) -> list[HealthEvent]:
        """Find detectors that went stale or dead without sending anything."""
        cfg = self.config
        events: list[HealthEvent] = []
        for rec in self._records.values():
            info = rec.info
            if rec.last_ts is not None:
                age = now - rec.last_ts
                if age > cfg.stale_factor * info.report_period_s:
                    if rec.fault is not Fault.STALE:
                        events += self._settle(
                            rec, now, Fault.STALE, f"no reading for {age:.1f} s", False
                        )
                    continue
            if rec.fault is not None or info.kind not in _ACTIVITY_KINDS:
                continue
            if rec.last_activity_ts is None:
                continue
            quiet = now - rec.last_activity_ts
            neighbours = self._approach_members.get(info.approach, 0) - 1
            if neighbours > 0 and quiet > cfg.dead_after_s:
                total = self._approach_total.get(info.approach, 0.0)
                others = total - rec.activity_snapshot
                span = total - (rec.approach_at_start or 0.0)
                prior = cfg.dead_share_prior_veh
                share = (rec.onsets + prior / (neighbours + 1)) / (span + prior)
                if others >= cfg.dead_neighbour_min_veh and (
                    share * others >= cfg.dead_expected_min
                ):
                    events += self._settle(
                        rec, now, Fault.DEAD,
                        f"silent {quiet:.0f} s while neighbours counted {others:.0f}", False,
                    )
            elif (
                neighbours <= 0
                and cfg.dead_without_neighbours_s is not None
                and quiet > cfg.dead_without_neighbours_s
            ):
                events += self._settle(rec, now, Fault.DEAD, f"silent {quiet:.0f} s", False)
        return events

    # -- state machine ---------------------------------------------------------
    def _settle(
        self, rec: _Record, ts: float, fault: Fault | None, detail: str, plausible: bool
    ) -> list[HealthEvent]:
        old = rec.fault
        if fault is not None:
            rec.plausible_run = 0
            if old is fault:
                return []
            if fault is Fault.CHATTERING:
                # Start the next judgement afresh, or the old excess re-faults it at once.
                rec.window.clear()
                rec.window_sum = 0
                rec.impossible_in_window = 0
            rec.fault = fault
            self._faulty[rec.info.id] = fault
            return [HealthEvent(rec.info.id, ts, old, fault, detail)]
        if old is None:
            return []
        if not plausible:
            rec.plausible_run = 0
            return []
        rec.plausible_run += 1
        if rec.plausible_run < self.config.recovery_readings:
            return []
        rec.fault = None
        rec.plausible_run = 0
        rec.window.clear()
        rec.window_sum = 0
        rec.impossible_in_window = 0
        if old is Fault.DEAD or rec.last_activity_ts is None:
            rec.last_activity_ts = ts
            rec.activity_snapshot = self._approach_total.get(rec.info.approach, 0.0)
        del self._faulty[rec.info.id]
        return [
            HealthEvent(
                rec.info.id, ts, old, None,
                f"{self.config.recovery_readings} consecutive plausible readings",
            )
        ]


def _impossible(reading: DetectorReading, kind: DetectorKind, lanes: int) -> bool:
    """A reading no working detector can produce."""
    occ = reading.occupancy
    if reading.count < 0 or not (0.0 <= occ <= 1.0):  # also catches NaN
        return True
    if kind is DetectorKind.QUEUE:
        q = reading.queue_m
        return q is None or not (math.isfinite(q) and q >= 0.0)
    if kind in _LOOP_KINDS:
        # One vehicle may be counted in the interval after the one it occupied
        # the loop in; several per lane without any occupancy cannot happen.
        return reading.count >= 2 * lanes and occ == 0.0 and not reading.presence
    return False


# -- degradation policy (D1, D2) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Degradation:
    """What the control loop may do given the detectors' health.

    ``demand_assumed``: signal groups with at least one faulty detector; they are
    treated as having demand so their movement gets a safe green.
    ``groups_without_data``: signal groups all of whose detectors are faulty.
    """

    adaptive_allowed: bool
    reason: str
    demand_assumed: frozenset[str]
    groups_without_data: frozenset[str]


def assess(
    detectors: Sequence[DetectorInfo],
    faulty: Mapping[str, Fault],
    config: HealthConfig | None = None,
) -> Degradation:
    """Degradation decision: adaptive control, or hand over to the fallback program.

    Shares are compared with "more than": with the default 50 %, one faulty
    detector of two on a group still allows adaptive control; two of three do not.
    Faulty ids that name no known detector are ignored.
    """
    cfg = config or HealthConfig()
    total: dict[str, int] = {}
    bad: dict[str, int] = {}
    n_faulty = 0
    for info in detectors:
        is_bad = info.id in faulty
        n_faulty += is_bad
        for g in info.groups:
            total[g] = total.get(g, 0) + 1
            bad[g] = bad.get(g, 0) + is_bad
    demand = frozenset(g for g, n in bad.items() if n > 0)
    without = frozenset(g for g, n in bad.items() if n > 0 and n == total[g])
    over = sorted(g for g, n in bad.items() if n > cfg.max_group_faulty_share * total[g])
    reasons: list[str] = []
    if over:
        reasons.append(
            "too many faulty detectors for signal group(s) "
            + ", ".join(f"{g} ({bad[g]}/{total[g]})" for g in over)
        )
    if detectors and n_faulty > cfg.max_total_faulty_share * len(detectors):
        reasons.append(f"{n_faulty}/{len(detectors)} detectors faulty")
    if reasons:
        return Degradation(False, "; ".join(reasons), demand, without)
    reason = "all detectors healthy" if n_faulty == 0 else f"{n_faulty} faulty, within limits"
    return Degradation(True, reason, demand, without)
