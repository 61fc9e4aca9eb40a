"""encode -> decode returns what went in, for every payload; topics parse back."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from controller import wire
from controller.messages import AckStatus, DetectorReading, HardwareState, PlanAck, PlanCommand
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.signals import (
    GroupKind,
    JunctionSignals,
    SignalGroup,
    SignalState,
    Stage,
    conflict_pairs,
)
from controller.wire import Rejected, RejectReason, ServiceState, ServiceStatus, TopicKind

IDS = st.from_regex(wire.ID_PATTERN, fullmatch=True)
TS = st.floats(1.0e9, 4.0e9)


def _validates(kind: TopicKind, payload: bytes) -> None:
    Draft202012Validator(wire.load_schema(kind)).validate(json.loads(payload))


@st.composite
def programs(draw: st.DrawFn) -> SignalProgram:
    cycle = draw(st.integers(1, 120))
    greens: dict[str, tuple[tuple[int, int], ...]] = {}
    for g in draw(st.lists(IDS, max_size=6, unique=True)):
        ivs = []
        for _ in range(draw(st.integers(0, 3))):
            start = draw(st.integers(0, cycle - 1))
            ivs.append((start, draw(st.integers(start + 1, start + cycle))))
        greens[g] = tuple(ivs)
    plan = None
    if draw(st.booleans()):
        stages = draw(st.lists(IDS, min_size=1, max_size=4))
        budget = cycle
        gs = []
        for _ in stages:
            gs.append(draw(st.integers(0, budget)))
            budget -= gs[-1]
        plan = StagePlan(tuple(stages), tuple(gs), 0)
    offset = draw(st.integers(0, cycle - 1))
    if plan is not None:
        plan = StagePlan(plan.sequence, plan.greens_s, offset)
    return SignalProgram(draw(IDS), cycle, offset, greens, stage_plan=plan)


@settings(max_examples=150, deadline=None)
@given(prog=programs(), issued=TS, delay=st.floats(0, 10), lease=st.floats(0.5, 600),
       seq=st.integers(0, 2**53 - 1))
def test_wire_plan_roundtrip(
    prog: SignalProgram, issued: float, delay: float, lease: float, seq: int
) -> None:
    cmd = PlanCommand(prog, issued, issued + delay, lease, seq)
    payload = wire.encode_plan(cmd)
    _validates(TopicKind.PLAN, payload)
    back = wire.decode_plan(payload)
    assert back == cmd
    assert isinstance(back, PlanCommand)
    assert back.program.stage_plan == prog.stage_plan  # not part of SignalProgram equality


def test_wire_plan_roundtrip_of_compiled_program() -> None:
    groups = (
        SignalGroup("K1", GroupKind.VEHICLE, "N", (0,), 10, 3, 1),
        SignalGroup("K2", GroupKind.VEHICLE, "W", (1,), 10, 3, 1),
    )
    junction = JunctionSignals(
        tls_id="t", groups=groups, conflicts=conflict_pairs([("K1", "K2")]),
        intergreen={("K1", "K2"): 5, ("K2", "K1"): 6},
        stages=(Stage("S1", frozenset({"K1"})), Stage("S2", frozenset({"K2"}))),
    )
    prog = compile_plan(junction, StagePlan(("S1", "S2"), (30, 20), 7), "p1")
    cmd = PlanCommand(prog, 1_767_225_600.0, 1_767_225_602.0, 140.0, 3)
    back = wire.decode_plan(wire.encode_plan(cmd))
    assert isinstance(back, PlanCommand)
    assert back == cmd
    assert back.program.stage_plan == prog.stage_plan
    assert dict(back.program.greens) == dict(prog.greens)


READINGS = st.builds(
    DetectorReading, detector_id=IDS, ts=TS, seq=st.integers(0, 2**53 - 1),
    count=st.integers(0, 200), occupancy=st.floats(0, 1), presence=st.booleans(),
    speed_mps=st.none() | st.floats(0, 70), queue_m=st.none() | st.floats(0, 2000),
    pressed=st.none() | st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(r=READINGS)
def test_wire_reading_roundtrip(r: DetectorReading) -> None:
    payload = wire.encode_reading(r)
    _validates(TopicKind.DETECTOR, payload)
    assert len(payload) <= wire.MAX_PAYLOAD_BYTES[TopicKind.DETECTOR]
    assert wire.decode_reading(r.detector_id, payload) == r


@settings(max_examples=100, deadline=None)
@given(pid=IDS, seq=st.integers(0, 2**53 - 1), status=st.sampled_from(AckStatus),
       reason=st.text(max_size=256), ts=TS)
def test_wire_ack_roundtrip(pid: str, seq: int, status: AckStatus, reason: str, ts: float) -> None:
    ack = PlanAck(pid, seq, status, reason, ts)
    payload = wire.encode_ack(ack)
    _validates(TopicKind.PLAN_ACK, payload)
    assert len(payload) <= wire.MAX_PAYLOAD_BYTES[TopicKind.PLAN_ACK]
    back = wire.decode_ack(payload)
    assert isinstance(back, PlanAck)
    assert replace(back, reason=ack.reason) == ack
    # The reason is free text: cut only where it would not fit, and marked.
    if back.reason != ack.reason:
        assert back.reason.endswith("...") and ack.reason.startswith(back.reason[:-3])


def test_an_ack_reason_that_escapes_beyond_the_payload_limit_is_cut_to_fit() -> None:
    """256 characters are within the schema, but control characters are six bytes each in
    JSON: the encoder raised ValueError (found by hypothesis in CI)."""
    reason = "\x1f" * 200 + "Zwischenzeit K1/K2" + "Ī" * 38
    payload = wire.encode_ack(PlanAck("p-1", 3, AckStatus.REJECTED, reason, 1767225600.0))
    assert len(payload) <= wire.MAX_PAYLOAD_BYTES[TopicKind.PLAN_ACK]
    back = wire.decode_ack(payload)
    assert isinstance(back, PlanAck)
    assert back.reason.endswith("...") and reason.startswith(back.reason[:-3])
    assert len(back.reason) > 100  # cut as little as needed
    long = "x" * 300  # over the schema's 256 characters
    back = wire.decode_ack(wire.encode_ack(PlanAck("p-1", 4, AckStatus.REJECTED, long, 1e9)))
    assert isinstance(back, PlanAck) and back.reason == "x" * 253 + "..."


@settings(max_examples=100, deadline=None)
@given(ts=TS, pid=IDS, fallback=st.booleans(), sec=st.integers(0, 119),
       states=st.text(alphabet="ruGy", min_size=1, max_size=64))
def test_wire_state_roundtrip(ts: float, pid: str, fallback: bool, sec: int, states: str) -> None:
    state = HardwareState(ts, pid, fallback, sec, states)
    payload = wire.encode_state(state)
    _validates(TopicKind.STATE, payload)
    assert wire.decode_state(payload) == state


def test_wire_state_alphabet_is_the_signal_state_enum() -> None:
    pattern = wire.load_schema(TopicKind.STATE)["properties"]["signal_states"]["pattern"]
    assert pattern == "^[" + "".join(s.value for s in SignalState) + "]{1,64}$"


@settings(max_examples=50, deadline=None)
@given(state=st.sampled_from(ServiceState), version=st.from_regex(r"[A-Za-z0-9_.+-]{1,64}",
       fullmatch=True), ts=TS)
def test_wire_status_roundtrip(state: ServiceState, version: str, ts: float) -> None:
    status = ServiceStatus(state, version, ts)
    payload = wire.encode_status(status)
    _validates(TopicKind.SERVICE_STATUS, payload)
    assert wire.decode_status(payload) == status


# -- plans that must not pass ----------------------------------------------------

GOOD_PLAN: dict[str, Any] = {
    "program": {"id": "p", "cycle_s": 60, "offset_s": 0, "greens": {"K1": [[0, 20]]},
                "stages": [{"stage": "S1", "green_s": 20}]},
    "issued": 1_767_225_600.0, "valid_from": 1_767_225_601.0, "lease_s": 120.0, "seq": 1,
}


def _plan_with(path: tuple[str, ...], value: object) -> bytes:
    obj = json.loads(json.dumps(GOOD_PLAN))
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize(("path", "value", "reason"), [
    (("program", "offset_s"), 60, RejectReason.OUT_OF_RANGE),
    (("program", "greens"), {"K1": [[60, 70]]}, RejectReason.OUT_OF_RANGE),
    (("program", "greens"), {"K1": [[10, 5]]}, RejectReason.OUT_OF_RANGE),
    (("program", "greens"), {"K1": [[0, 20, 30]]}, RejectReason.OUT_OF_RANGE),
    (("program", "greens"), {"K1": [[0]]}, RejectReason.SCHEMA),
    (("program", "greens"), {"K#1": [[0, 20]]}, RejectReason.SCHEMA),
    (("program", "stages"), [{"stage": "S1", "green_s": 61}], RejectReason.OUT_OF_RANGE),
    (("program", "cycle_s"), 121, RejectReason.OUT_OF_RANGE),
    (("program", "cycle_s"), 60.5, RejectReason.SCHEMA),
    (("program", "intergreen"), {}, RejectReason.SCHEMA),
    (("lease_s",), 0, RejectReason.OUT_OF_RANGE),
    (("lease_s",), 3600, RejectReason.OUT_OF_RANGE),
    (("seq",), -1, RejectReason.OUT_OF_RANGE),
    (("issued",), "now", RejectReason.SCHEMA),
])
def test_wire_decode_plan_rejects(path: tuple[str, ...], value: object,
                                  reason: RejectReason) -> None:
    assert isinstance(wire.decode_plan(json.dumps(GOOD_PLAN).encode()), PlanCommand)
    got = wire.decode_plan(_plan_with(path, value), topic="atsc/j/plan")
    assert isinstance(got, Rejected), got
    assert got.reason is reason, got
    assert got.topic == "atsc/j/plan"


def test_wire_decode_rejects_oversized_and_malformed() -> None:
    big = GOOD_PLAN | {"pad": "x" * 20_000}
    got: object = wire.decode_plan(json.dumps(big).encode())
    assert isinstance(got, Rejected) and got.reason is RejectReason.OVERSIZED
    decoders: tuple[Callable[[bytes], object], ...] = (
        wire.decode_plan, wire.decode_ack, wire.decode_state, wire.decode_status)
    for decode in decoders:
        got = decode(b"offline")
        assert isinstance(got, Rejected) and got.reason is RejectReason.MALFORMED_JSON
        got = decode(b"{}")
        assert isinstance(got, Rejected) and got.reason is RejectReason.SCHEMA


def test_wire_encode_plan_refuses_what_decode_would_reject() -> None:
    prog = SignalProgram("p", 150, 0, {"K1": ((0, 20),)})
    with pytest.raises(ValueError, match="schema"):
        wire.encode_plan(PlanCommand(prog, 1_767_225_600.0, 1_767_225_600.0, 60.0, 1))
    prog = SignalProgram("p", 60, 0, {"K1": ((70, 80),)})
    with pytest.raises(ValueError, match="does not fit"):
        wire.encode_plan(PlanCommand(prog, 1_767_225_600.0, 1_767_225_600.0, 60.0, 1))


# -- topics -----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(junction=IDS, kind=st.sampled_from(TopicKind), det=IDS)
def test_wire_topic_roundtrip(junction: str, kind: TopicKind, det: str) -> None:
    detector = det if kind is TopicKind.DETECTOR else None
    topic = wire.topic_for(junction, kind, detector)
    assert topic.startswith(f"atsc/{junction}/")
    assert wire.parse_topic(topic) == (junction, kind, detector)


@pytest.mark.parametrize("topic", [
    "atsc/j", "atsc/j/", "atsc/j/det", "atsc/j/det/", "atsc/j/det/a/b", "atsc/j/det/+",
    "atsc/#/plan", "other/j/plan", "atsc/j/plan/nack", "atsc/j/service", "/atsc/j/plan",
    "atsc/j/state/", "atsc//plan",
])
def test_wire_parse_topic_refuses(topic: str) -> None:
    assert wire.parse_topic(topic) is None


def test_wire_topic_for_refuses_unsafe_ids() -> None:
    with pytest.raises(ValueError):
        wire.topic_for("a/b", TopicKind.PLAN)
    with pytest.raises(ValueError):
        wire.topic_for("j", TopicKind.DETECTOR, "x#")
    with pytest.raises(ValueError):
        wire.topic_for("j", TopicKind.DETECTOR)
    with pytest.raises(ValueError):
        wire.topic_for("j", TopicKind.PLAN, "d1")
