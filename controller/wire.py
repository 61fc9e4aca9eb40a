"""The wire contract: topics, JSON payloads, strict validation of what comes in.

Pure: no network, no clock (callers pass ``now``).  The JSON Schemas in
``controller/schemas/`` are the contract (docs/wire-contract.md); this module
loads them once at import and compiles one validator per payload.

Detector readings arrive by the thousand per second, so ``ReadingGate`` uses a
hand-written check instead of the generic validator.  Its ranges are read from
``reading.json`` so the two cannot drift apart in numbers, and a property test
(tests/test_wire_agreement.py) proves the check accepts and rejects exactly
what the schema does.

Every rejection is a ``Rejected`` value, never an exception: ingest runs on
untrusted input and a malformed message must not take the service down.
``RejectReason`` values become Prometheus label values, so they are few and
fixed; ``Rejected.detail`` is for logs only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import Any, Final

from jsonschema import Draft202012Validator

from controller.messages import (
    AckStatus,
    DetectorInfo,
    DetectorReading,
    HardwareState,
    PlanAck,
    PlanCommand,
)
from controller.plans import SignalProgram, StagePlan

TOPIC_ROOT: Final = "atsc"

#: Ids that appear in topics (junction, detector) or as JSON ids (program,
#: signal group, stage).  No ``/``, ``+``, ``#`` or ``$``: they would change
#: the topic structure or act as MQTT wildcards.
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

#: Longest ``detail``/``topic`` kept in a ``Rejected``: both may come from an
#: attacker and end up in logs.
_DETAIL_MAX: Final = 200


class TopicKind(StrEnum):
    """The topic below ``atsc/<junction>/``; the value is the topic suffix."""

    DETECTOR = "det"
    PLAN = "plan"
    PLAN_ACK = "plan/ack"
    STATE = "state"
    SERVICE_STATUS = "service/status"


class RejectReason(StrEnum):
    """Why an incoming message was dropped (a Prometheus label value: keep it short and fixed)."""

    OVERSIZED = "oversized"
    MALFORMED_JSON = "malformed_json"
    #: Wrong type, missing field or unknown field.
    SCHEMA = "schema"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_DETECTOR = "unknown_detector"
    BAD_TOPIC = "bad_topic"
    DUPLICATE = "duplicate"
    #: Sequence number going backwards for the same detector (not a restart).
    REPLAY = "replay"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that did not pass; ``detail`` is for logs, ``reason`` for metrics."""

    reason: RejectReason
    detail: str
    topic: str


class ServiceState(StrEnum):
    ONLINE = "online"
    #: Running, but not adapting (too many detectors faulty, D2): the hardware should run
    #: its own program; it returns to the fallback at its next switch point.
    DEGRADED = "degraded"
    OFFLINE = "offline"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """Payload of ``service/status`` (retained; also the Last Will with state offline)."""

    state: ServiceState
    version: str
    ts: float


# -- schemas -------------------------------------------------------------------

SCHEMA_FILES: Final[Mapping[TopicKind, str]] = {
    TopicKind.DETECTOR: "reading.json",
    TopicKind.PLAN: "plan.json",
    TopicKind.PLAN_ACK: "plan_ack.json",
    TopicKind.STATE: "state.json",
    TopicKind.SERVICE_STATUS: "service_status.json",
}


def load_schema(kind: TopicKind) -> dict[str, Any]:
    """The JSON Schema of one payload kind, as shipped in the package."""
    text = (resources.files("controller") / "schemas" / SCHEMA_FILES[kind]).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


_SCHEMAS: Final = {kind: load_schema(kind) for kind in TopicKind}
_VALIDATORS: Final = {kind: Draft202012Validator(s) for kind, s in _SCHEMAS.items()}

#: Payload size limit per kind in bytes, from the schemas (``x-atsc-max-payload-bytes``).
MAX_PAYLOAD_BYTES: Final[Mapping[TopicKind, int]] = {
    kind: int(s["x-atsc-max-payload-bytes"]) for kind, s in _SCHEMAS.items()
}

#: JSON Schema keywords whose failure means "right type, value outside its limits".
_RANGE_KEYWORDS: Final = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
     "maxLength", "maxItems", "maxProperties"}
)


def schema_reason(validator_keyword: str) -> RejectReason:
    """Map a failing JSON Schema keyword to the reject reason it stands for."""
    return (
        RejectReason.OUT_OF_RANGE if validator_keyword in _RANGE_KEYWORDS else RejectReason.SCHEMA
    )


# -- JSON ----------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    # Python's json accepts NaN and Infinity, JSON does not; NaN would also slip
    # through every minimum/maximum check because all comparisons with it are false.
    raise ValueError(f"{name} is not JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins; a message that means different
    # things to different readers is refused.
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return out


_DECODER: Final = json.JSONDecoder(
    parse_constant=_no_constants, object_pairs_hook=_no_duplicate_keys
)


def parse_json(payload: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys. Raises ``ValueError``."""
    text = payload.decode("utf-8")  # UnicodeDecodeError is a ValueError
    obj, end = _DECODER.raw_decode(text, _skip_ws(text, 0))
    if _skip_ws(text, end) != len(text):
        raise ValueError("extra data after the JSON value")
    return obj


_WS: Final = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, pos: int) -> int:
    m = _WS.match(text, pos)
    return m.end() if m else pos


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


# -- topics --------------------------------------------------------------------

_KIND_BY_SUFFIX: Final = {k.value: k for k in TopicKind if k is not TopicKind.DETECTOR}


def topic_for(junction: str, kind: TopicKind, detector_id: str | None = None) -> str:
    """``atsc/<junction>/<kind>`` (``.../det/<detector_id>`` for detectors).

    Raises ``ValueError`` for ids that are not topic-safe, or a detector id
    given for the wrong kind (or missing for detectors).
    """
    if not ID_PATTERN.fullmatch(junction):
        raise ValueError(f"junction id {junction!r} is not topic-safe")
    if kind is TopicKind.DETECTOR:
        if detector_id is None or not ID_PATTERN.fullmatch(detector_id):
            raise ValueError(f"detector id {detector_id!r} is not topic-safe")
        return f"{TOPIC_ROOT}/{junction}/det/{detector_id}"
    if detector_id is not None:
        raise ValueError(f"topic kind {kind} takes no detector id")
    return f"{TOPIC_ROOT}/{junction}/{kind.value}"


def parse_topic(topic: str) -> tuple[str, TopicKind, str | None] | None:
    """Inverse of ``topic_for``; ``None`` for anything that is not a contract topic."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != TOPIC_ROOT or not ID_PATTERN.fullmatch(parts[1]):
        return None
    junction, rest = parts[1], parts[2:]
    if rest[0] == "det":
        if len(rest) == 2 and ID_PATTERN.fullmatch(rest[1]):
            return junction, TopicKind.DETECTOR, rest[1]
        return None
    kind = _KIND_BY_SUFFIX.get("/".join(rest))
    return None if kind is None else (junction, kind, None)


# -- timestamps ----------------------------------------------------------------


def timestamp_problem(
    ts: float, now: float, *, max_age_s: float, max_future_s: float
) -> RejectReason | None:
    """Whether a source timestamp is too far ahead of or behind the receiver's clock.

    ``max_future_s`` is the clock skew tolerated between source and receiver
    (both NTP-synchronised); ``max_age_s`` the oldest data still worth having.
    """
    if ts > now + max_future_s:
        return RejectReason.FUTURE_TIMESTAMP
    if now - ts > max_age_s:
        return RejectReason.STALE_TIMESTAMP
    return None


# -- detector readings ---------------------------------------------------------

_READING_PROPS: Final[Mapping[str, Any]] = _SCHEMAS[TopicKind.DETECTOR]["properties"]
_READING_REQUIRED: Final = tuple(_SCHEMAS[TopicKind.DETECTOR]["required"])
#: Per field (json type, minimum, maximum) taken from reading.json.
_READING_FIELDS: Final[Mapping[str, tuple[str, float | None, float | None]]] = {
    name: (p["type"], p.get("minimum"), p.get("maximum")) for name, p in _READING_PROPS.items()
}


def reading_problem(obj: object) -> tuple[RejectReason, str] | None:
    """Fast check of a parsed reading payload against reading.json.

    Returns ``None`` when the payload is valid, else the reason (``schema`` or
    ``out_of_range``) and a detail.  Agrees with the JSON Schema validator,
    including its view that ``3.0`` is an integer and ``true`` is not a number.
    """
    if type(obj) is not dict:
        return RejectReason.SCHEMA, "payload is not a JSON object"
    fields = _READING_FIELDS
    for name in _READING_REQUIRED:
        if name not in obj:
            return RejectReason.SCHEMA, f"missing field {name!r}"
    for name, value in obj.items():
        spec = fields.get(name)
        if spec is None:
            return RejectReason.SCHEMA, _clip(f"unknown field {name!r}")
        json_type, lo, hi = spec
        t = type(value)
        if json_type == "boolean":
            if t is not bool:
                return RejectReason.SCHEMA, f"{name} must be a boolean"
            continue
        if json_type == "integer":
            if not (t is int or (t is float and value.is_integer())):
                return RejectReason.SCHEMA, f"{name} must be an integer"
        elif t is not float and t is not int:
            return RejectReason.SCHEMA, f"{name} must be a number"
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return RejectReason.OUT_OF_RANGE, f"{name}={_clip(repr(value))} outside {lo}..{hi}"
    return None


def _reading_from(detector_id: str, obj: Mapping[str, Any]) -> DetectorReading:
    speed = obj.get("speed_mps")
    queue = obj.get("queue_m")
    return DetectorReading(
        detector_id=detector_id,
        ts=float(obj["ts"]),
        seq=int(obj["seq"]),
        count=int(obj.get("count", 0)),
        occupancy=float(obj.get("occupancy", 0.0)),
        presence=obj.get("presence", False),
        speed_mps=None if speed is None else float(speed),
        queue_m=None if queue is None else float(queue),
        pressed=obj.get("pressed"),
    )


def decode_reading(
    detector_id: str, payload: bytes, *, topic: str = ""
) -> DetectorReading | Rejected:
    """Stateless decode of one reading (size, JSON, schema); no time or sequence checks."""
    limit = MAX_PAYLOAD_BYTES[TopicKind.DETECTOR]
    if len(payload) > limit:
        return Rejected(RejectReason.OVERSIZED, f"{len(payload)} bytes > {limit}", _clip(topic))
    try:
        obj = parse_json(payload)
    except ValueError as exc:
        return Rejected(RejectReason.MALFORMED_JSON, _clip(str(exc)), _clip(topic))
    problem = reading_problem(obj)
    if problem is not None:
        return Rejected(problem[0], problem[1], _clip(topic))
    return _reading_from(detector_id, obj)


def encode_reading(reading: DetectorReading) -> bytes:
    """Payload of ``det/<detector_id>``; the detector id goes into the topic, not here."""
    obj: dict[str, object] = {
        "ts": reading.ts,
        "seq": reading.seq,
        "count": reading.count,
        "occupancy": reading.occupancy,
        "presence": reading.presence,
    }
    if reading.speed_mps is not None:
        obj["speed_mps"] = reading.speed_mps
    if reading.queue_m is not None:
        obj["queue_m"] = reading.queue_m
    if reading.pressed is not None:
        obj["pressed"] = reading.pressed
    return _dumps(obj)


@dataclass(slots=True)
class _SeqState:
    seq: int
    ts: float
    received: float


class ReadingGate:
    """Admits detector readings of one junction; everything else becomes ``Rejected``.

    Checks, in order: topic (this junction, ``det/<id>``), known detector,
    size, strict JSON, schema and ranges, source timestamp (not more than
    ``max_future_s`` ahead of ``now``, not older than ``max_age_s``), then the
    sequence number per detector:

    - no earlier reading, or the last admitted one arrived more than
      ``max_age_s`` ago (by ``now``): admitted, whatever the seq;
    - seq above the last admitted seq: admitted (gaps are lost readings);
    - seq at most ``restart_max_seq`` and ts newer than the last admitted ts:
      a detector restart (its counter starts again at 0; the first readings
      after the restart may be lost), admitted;
    - seq equal to the last admitted seq: ``duplicate``;
    - seq below it: ``replay``.

    A rejected message never changes the state.  Memory is one small record
    per known detector: unknown detectors are rejected before any state is kept.
    ``max_age_s`` is a hard bound on usefulness; per-detector staleness
    (twice the report period, safety.md D2) is judged by detector health.
    """

    def __init__(
        self,
        detectors: Mapping[str, DetectorInfo],
        junction: str,
        *,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES[TopicKind.DETECTOR],
        max_future_s: float = 2.0,
        max_age_s: float = 30.0,
        restart_max_seq: int = 16,
    ) -> None:
        if not ID_PATTERN.fullmatch(junction):
            raise ValueError(f"junction id {junction!r} is not topic-safe")
        bad = [d for d in detectors if not ID_PATTERN.fullmatch(d)]
        if bad:
            raise ValueError(f"detector ids not topic-safe: {sorted(bad)}")
        mismatched = [k for k, info in detectors.items() if info.id != k]
        if mismatched:
            raise ValueError(f"detector map keys differ from their ids: {sorted(mismatched)}")
        if max_payload_bytes <= 0 or max_future_s < 0 or max_age_s <= 0 or restart_max_seq < 0:
            raise ValueError("gate limits must be positive")
        self.junction = junction
        self.detectors = detectors
        self.max_payload_bytes = max_payload_bytes
        self.max_future_s = max_future_s
        self.max_age_s = max_age_s
        self.restart_max_seq = restart_max_seq
        self._prefix = topic_for(junction, TopicKind.DETECTOR, "x")[:-1]
        self._last: dict[str, _SeqState] = {}

    def admit(self, topic: str, payload: bytes, now: float) -> DetectorReading | Rejected:
        """Check one message received at ``now`` (receiver's epoch seconds)."""
        prefix = self._prefix
        if not topic.startswith(prefix):
            return Rejected(RejectReason.BAD_TOPIC, "not a detector topic of this junction",
                            _clip(topic))
        det = topic[len(prefix):]
        if det not in self.detectors:
            if not ID_PATTERN.fullmatch(det):
                return Rejected(RejectReason.BAD_TOPIC, "malformed detector id", _clip(topic))
            return Rejected(RejectReason.UNKNOWN_DETECTOR, f"detector {det!r}", topic)
        n = len(payload)
        if n > self.max_payload_bytes:
            return Rejected(RejectReason.OVERSIZED, f"{n} bytes > {self.max_payload_bytes}",
                            topic)
        try:
            obj = parse_json(payload)
        except ValueError as exc:
            return Rejected(RejectReason.MALFORMED_JSON, _clip(str(exc)), topic)
        problem = reading_problem(obj)
        if problem is not None:
            return Rejected(problem[0], problem[1], topic)
        ts = float(obj["ts"])
        seq = int(obj["seq"])
        when = timestamp_problem(ts, now, max_age_s=self.max_age_s, max_future_s=self.max_future_s)
        if when is not None:
            return Rejected(when, f"ts={ts} now={now}", topic)
        last = self._last.get(det)
        if last is None or now - last.received > self.max_age_s or seq > last.seq:
            pass
        elif seq <= self.restart_max_seq and ts > last.ts:
            pass  # restart: the detector's counter began again
        elif seq == last.seq:
            return Rejected(RejectReason.DUPLICATE, f"seq={seq} again", topic)
        else:
            return Rejected(RejectReason.REPLAY, f"seq={seq} after {last.seq}", topic)
        if last is None:
            self._last[det] = _SeqState(seq, ts, now)
        else:
            last.seq, last.ts, last.received = seq, ts, now
        return _reading_from(det, obj)

    def last_seq(self, detector_id: str) -> int | None:
        """Sequence number of the last admitted reading of a detector."""
        last = self._last.get(detector_id)
        return None if last is None else last.seq


# -- the other payloads --------------------------------------------------------


def _decode(kind: TopicKind, payload: bytes, topic: str) -> dict[str, Any] | Rejected:
    limit = MAX_PAYLOAD_BYTES[kind]
    if len(payload) > limit:
        return Rejected(RejectReason.OVERSIZED, f"{len(payload)} bytes > {limit}", _clip(topic))
    try:
        obj = parse_json(payload)
    except ValueError as exc:
        return Rejected(RejectReason.MALFORMED_JSON, _clip(str(exc)), _clip(topic))
    # Shallowest error first: it names the field a person would fix first, and
    # stringified paths keep the order total when array indices meet object keys.
    errors = sorted(
        _VALIDATORS[kind].iter_errors(obj),
        key=lambda e: (len(e.absolute_path), [str(p) for p in e.absolute_path]),
    )
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        return Rejected(schema_reason(str(err.validator)), _clip(f"{where}: {err.message}"),
                        _clip(topic))
    assert isinstance(obj, dict)  # the schema demands an object
    return obj


def _validate_out(kind: TopicKind, obj: object) -> bytes:
    data = _dumps(obj)
    problems = [e.message for e in _VALIDATORS[kind].iter_errors(obj)]
    if problems:
        raise ValueError(f"{kind} payload breaks its schema: {problems[0]}")
    if len(data) > MAX_PAYLOAD_BYTES[kind]:
        raise ValueError(f"{kind} payload of {len(data)} bytes over the limit")
    return data


def encode_plan(cmd: PlanCommand) -> bytes:
    """Payload of ``plan``; raises ``ValueError`` if it would break the schema.

    Plans are rare and safety-relevant, so the service finds out here rather
    than from a rejecting hardware.
    """
    prog = cmd.program.to_json()
    obj = {
        "program": prog,
        "issued": cmd.issued,
        "valid_from": cmd.valid_from,
        "lease_s": cmd.lease_s,
        "seq": cmd.seq,
    }
    data = _validate_out(TopicKind.PLAN, obj)
    problem = _program_problem(prog)
    if problem:
        raise ValueError(problem)
    return data


def _program_problem(prog: Mapping[str, Any]) -> str | None:
    cycle = int(prog["cycle_s"])
    if not int(prog["offset_s"]) < cycle:
        return f"offset_s {prog['offset_s']} not below cycle_s {cycle}"
    for group, intervals in prog["greens"].items():
        for start, end in intervals:
            if not (0 <= start < cycle and start < end <= start + cycle):
                return f"green of {group} [{start}, {end}) does not fit cycle {cycle}"
    stages = prog.get("stages")
    if stages is not None and sum(int(s["green_s"]) for s in stages) > cycle:
        return "stage green times exceed the cycle"
    return None


def decode_plan(payload: bytes, *, topic: str = "") -> PlanCommand | Rejected:
    """Parse and check a plan command; rebuilds the SignalProgram and its StagePlan."""
    obj = _decode(TopicKind.PLAN, payload, topic)
    if isinstance(obj, Rejected):
        return obj
    prog = obj["program"]
    problem = _program_problem(prog)
    if problem:
        return Rejected(RejectReason.OUT_OF_RANGE, _clip(problem), _clip(topic))
    stage_plan = None
    if "stages" in prog:
        stage_plan = StagePlan(
            sequence=tuple(s["stage"] for s in prog["stages"]),
            greens_s=tuple(int(s["green_s"]) for s in prog["stages"]),
            offset_s=int(prog["offset_s"]),
        )
    program = SignalProgram(
        id=prog["id"],
        cycle_s=int(prog["cycle_s"]),
        offset_s=int(prog["offset_s"]),
        greens={g: tuple((int(a), int(b)) for a, b in ivs) for g, ivs in prog["greens"].items()},
        stage_plan=stage_plan,
    )
    return PlanCommand(
        program=program,
        issued=float(obj["issued"]),
        valid_from=float(obj["valid_from"]),
        lease_s=float(obj["lease_s"]),
        seq=int(obj["seq"]),
    )


#: Characters an ack's reason may have (``plan_ack.json``).
_ACK_REASON_MAX: Final = int(_SCHEMAS[TopicKind.PLAN_ACK]["properties"]["reason"]["maxLength"])


def encode_ack(ack: PlanAck) -> bytes:
    """The ack on the wire.  Its reason is free text for logs: one too long for the schema
    or, JSON-escaped, for the payload limit is cut and ends with "..."."""
    obj = {
        "program_id": ack.program_id, "seq": ack.seq, "status": ack.status.value,
        "reason": ack.reason, "ts": ack.ts,
    }
    limit = MAX_PAYLOAD_BYTES[TopicKind.PLAN_ACK]
    if len(ack.reason) > _ACK_REASON_MAX or len(_dumps(obj)) > limit:
        # The longest prefix that fits both: a character takes 1 to 6 bytes in JSON.
        keep, too_long = 0, min(len(ack.reason), _ACK_REASON_MAX - 2)
        while too_long - keep > 1:
            mid = (keep + too_long) // 2
            obj["reason"] = ack.reason[:mid] + "..."
            keep, too_long = (mid, too_long) if len(_dumps(obj)) <= limit else (keep, mid)
        obj["reason"] = ack.reason[:keep] + "..."
    return _validate_out(TopicKind.PLAN_ACK, obj)


def decode_ack(payload: bytes, *, topic: str = "") -> PlanAck | Rejected:
    obj = _decode(TopicKind.PLAN_ACK, payload, topic)
    if isinstance(obj, Rejected):
        return obj
    return PlanAck(
        program_id=obj["program_id"], seq=int(obj["seq"]), status=AckStatus(obj["status"]),
        reason=obj["reason"], ts=float(obj["ts"]),
    )


def encode_state(state: HardwareState) -> bytes:
    return _validate_out(TopicKind.STATE, {
        "ts": state.ts, "program_id": state.program_id, "fallback": state.fallback,
        "cycle_second": state.cycle_second, "signal_states": state.signal_states,
    })


def decode_state(payload: bytes, *, topic: str = "") -> HardwareState | Rejected:
    """Parse a hardware state; the caller age-checks ``ts`` (it may be retained)."""
    obj = _decode(TopicKind.STATE, payload, topic)
    if isinstance(obj, Rejected):
        return obj
    return HardwareState(
        ts=float(obj["ts"]), program_id=obj["program_id"], fallback=obj["fallback"],
        cycle_second=int(obj["cycle_second"]), signal_states=obj["signal_states"],
    )


def encode_status(status: ServiceStatus) -> bytes:
    return _validate_out(TopicKind.SERVICE_STATUS, {
        "state": status.state.value, "version": status.version, "ts": status.ts,
    })


def decode_status(payload: bytes, *, topic: str = "") -> ServiceStatus | Rejected:
    obj = _decode(TopicKind.SERVICE_STATUS, payload, topic)
    if isinstance(obj, Rejected):
        return obj
    return ServiceStatus(
        state=ServiceState(obj["state"]), version=obj["version"], ts=float(obj["ts"]),
    )

