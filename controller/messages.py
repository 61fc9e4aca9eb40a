"""Message types of the wire contract (docs/wire-contract.md), as frozen dataclasses.

The same types travel over MQTT (JSON) in the live service and through the
in-process transport in scenario runs, so the controller core cannot tell the
two apart.  Parsing and validation of raw JSON lives in ``controller.wire``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.plans import SignalProgram


class DetectorKind(StrEnum):
    """What a detector measures, as installed at a real junction."""

    #: Induction loop at the stop line (Haltlinien-Detektor): counts, occupancy, presence.
    STOP_LINE = "stop_line"
    #: Induction loop upstream (Zuflussdetektor, typically 80-150 m): arrival counts.
    UPSTREAM = "upstream"
    #: Queue sensor per approach lane (radar stand-in): queue length in metres.
    QUEUE = "queue"
    #: Pedestrian push-button (Anforderungstaster).
    PUSH_BUTTON = "push_button"
    #: Bus request point (ÖPNV-Anmeldung), upstream of the stop line.
    BUS_REQUEST = "bus_request"


@dataclass(frozen=True, slots=True)
class DetectorInfo:
    """Where a detector sits and what it serves; its id is the id on the wire."""

    id: str
    kind: DetectorKind
    approach: str
    #: SUMO lane ids the detector covers (empty for push-buttons).
    lanes: tuple[str, ...]
    #: Signal groups whose demand this detector measures.
    groups: tuple[str, ...]
    #: Distance from the stop line in metres (0 at the stop line).
    distance_m: float = 0.0
    #: Expected seconds between readings; data older than twice this is stale (D2).
    report_period_s: float = 1.0


@dataclass(frozen=True, slots=True)
class DetectorReading:
    """One reading of one detector (topic ``atsc/<junction>/det/<detector_id>``).

    ``count`` is the number of vehicles (or persons, or bus requests) since the
    previous reading; ``occupancy`` the time share 0..1 the detector was
    occupied in that interval; ``queue_m`` only for queue sensors;
    ``pressed`` only for push-buttons.
    """

    detector_id: str
    ts: float
    seq: int
    count: int = 0
    occupancy: float = 0.0
    presence: bool = False
    speed_mps: float | None = None
    queue_m: float | None = None
    pressed: bool | None = None


def is_news(reading: DetectorReading, last_seq: int | None, last_ts: float | None) -> bool:
    """Whether ``reading`` comes after the detector's last reading taken (``None``: none yet).

    Source time orders a detector's readings; the sequence number only orders readings
    with the same timestamp and unmasks a copy (QoS 1 redelivers).  A lower ``seq`` with
    a newer ``ts`` is a detector whose counter began again after a restart: news.  Which
    restarts and gaps are believable is the ingest gate's call
    (``controller.wire.ReadingGate``); health and the estimator must not undo it, or a
    restarted detector would stay stale until its new counter passed the old one.
    """
    if last_ts is None or reading.ts != last_ts:
        return last_ts is None or reading.ts > last_ts
    return last_seq is None or reading.seq > last_seq


@dataclass(frozen=True, slots=True)
class PlanCommand:
    """A validated signal program pushed to the hardware with a lease (topic ``plan``).

    The hardware runs it from the first switch point at or after ``valid_from``
    and returns to its own fallback program when ``lease_s`` passes without a
    renewal (a new command with the same program id and a later ``issued``).
    """

    program: SignalProgram
    issued: float
    valid_from: float
    lease_s: float
    seq: int


class AckStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PlanAck:
    """The hardware's answer to a plan command (topic ``plan/ack``)."""

    program_id: str
    seq: int
    status: AckStatus
    reason: str
    ts: float


@dataclass(frozen=True, slots=True)
class HardwareState:
    """What the signal controller runs now (topic ``state``)."""

    ts: float
    program_id: str
    fallback: bool
    cycle_second: int
    #: One ``SignalState`` character per signal group, in junction order.
    signal_states: str
