"""ReadingGate: every reject reason from a realistic bad message; good messages always pass."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.messages import DetectorInfo, DetectorKind, DetectorReading
from controller.wire import ReadingGate, Rejected, RejectReason, encode_reading

JUNCTION = "schlosskreuzung"
NOW = 1_767_225_600.0
DETECTORS = {
    "N_1_stop": DetectorInfo("N_1_stop", DetectorKind.STOP_LINE, "N", ("N_in_0",), ("K1",)),
    "W_q": DetectorInfo("W_q", DetectorKind.QUEUE, "W", ("W_in_0",), ("K3",)),
    "F_E_btn": DetectorInfo("F_E_btn", DetectorKind.PUSH_BUTTON, "E", (), ("F2",)),
}


def _gate() -> ReadingGate:
    return ReadingGate(DETECTORS, JUNCTION, max_future_s=2.0, max_age_s=30.0)


def _raw(det: str, **fields: object) -> tuple[str, bytes]:
    return f"atsc/{JUNCTION}/det/{det}", json.dumps(fields).encode()


def _ok(det: str, seq: int, ts: float = NOW, **kw: object) -> tuple[str, bytes]:
    r = DetectorReading(det, ts, seq, **kw)  # type: ignore[arg-type]
    return f"atsc/{JUNCTION}/det/{det}", encode_reading(r)


@dataclass(frozen=True)
class Case:
    reason: RejectReason
    before: tuple[tuple[str, bytes], ...]
    bad: tuple[str, bytes]


T = f"atsc/{JUNCTION}/det/N_1_stop"
CASES = {
    "plan on a detector subscription": Case(
        RejectReason.BAD_TOPIC, (), (f"atsc/{JUNCTION}/plan", b"{}")),
    "other junction": Case(
        RejectReason.BAD_TOPIC, (), ("atsc/marienplatz/det/N_1_stop", _ok("N_1_stop", 1)[1])),
    "nested detector topic": Case(
        RejectReason.BAD_TOPIC, (), (T + "/extra", _ok("N_1_stop", 1)[1])),
    "wildcard in detector id": Case(
        RejectReason.BAD_TOPIC, (), (f"atsc/{JUNCTION}/det/+", _ok("N_1_stop", 1)[1])),
    "detector not in the map": Case(
        RejectReason.UNKNOWN_DETECTOR, (), _ok("S_9_stop", 1)),
    "padded payload": Case(
        RejectReason.OVERSIZED, (), (T, b'{"ts": %f, "seq": 1}' % NOW + b" " * 2000)),
    "truncated JSON": Case(
        RejectReason.MALFORMED_JSON, (), (T, b'{"ts": 1767225600.0, "seq": 1, "cou')),
    "latin-1 bytes": Case(
        RejectReason.MALFORMED_JSON, (), (T, b'{"ts": 1767225600.0, "seq": 1, "x\xe9": 1}')),
    "NaN occupancy": Case(
        RejectReason.MALFORMED_JSON, (), (T, b'{"ts": 1767225600.0, "seq": 1, "occupancy": NaN}')),
    "duplicate key": Case(
        RejectReason.MALFORMED_JSON, (), (T, b'{"ts": 1767225600.0, "seq": 1, "seq": 2}')),
    "two JSON values": Case(
        RejectReason.MALFORMED_JSON, (), (T, b'{"ts": 1767225600.0, "seq": 1} {}')),
    "array payload": Case(RejectReason.SCHEMA, (), (T, b"[1767225600.0, 1]")),
    "missing seq": Case(RejectReason.SCHEMA, (), _raw("N_1_stop", ts=NOW, count=1)),
    "detector id in payload": Case(
        RejectReason.SCHEMA, (), _raw("N_1_stop", ts=NOW, seq=1, detector_id="N_1_stop")),
    "count as string": Case(RejectReason.SCHEMA, (), _raw("N_1_stop", ts=NOW, seq=1, count="3")),
    "presence as 1": Case(RejectReason.SCHEMA, (), _raw("N_1_stop", ts=NOW, seq=1, presence=1)),
    "null speed": Case(RejectReason.SCHEMA, (), _raw("N_1_stop", ts=NOW, seq=1, speed_mps=None)),
    "occupancy in percent": Case(
        RejectReason.OUT_OF_RANGE, (), _raw("N_1_stop", ts=NOW, seq=1, occupancy=34.0)),
    "chattering count": Case(
        RejectReason.OUT_OF_RANGE, (), _raw("N_1_stop", ts=NOW, seq=1, count=5000)),
    "negative queue": Case(RejectReason.OUT_OF_RANGE, (), _raw("W_q", ts=NOW, seq=1, queue_m=-3.0)),
    "speed in km/h": Case(
        RejectReason.OUT_OF_RANGE, (), _raw("N_1_stop", ts=NOW, seq=1, speed_mps=180.0)),
    "clock unset (seconds since boot)": Case(
        RejectReason.OUT_OF_RANGE, (), _raw("N_1_stop", ts=3600.0, seq=1)),
    "detector clock 10 s fast": Case(
        RejectReason.FUTURE_TIMESTAMP, (), _ok("N_1_stop", 1, ts=NOW + 10)),
    "retained leftover from yesterday": Case(
        RejectReason.STALE_TIMESTAMP, (), _ok("N_1_stop", 1, ts=NOW - 86_400)),
    "redelivered reading": Case(
        RejectReason.DUPLICATE, (_ok("N_1_stop", 41, ts=NOW - 1),),
        _ok("N_1_stop", 41, ts=NOW - 1)),
    "old reading replayed": Case(
        RejectReason.REPLAY, (_ok("N_1_stop", 40, ts=NOW - 2), _ok("N_1_stop", 41, ts=NOW - 1)),
        _ok("N_1_stop", 40, ts=NOW - 2)),
    "low seq with an old ts is no restart": Case(
        RejectReason.REPLAY, (_ok("N_1_stop", 5, ts=NOW - 1),), _ok("N_1_stop", 2, ts=NOW - 3)),
}


def test_wire_gate_cases_cover_every_reason() -> None:
    assert {c.reason for c in CASES.values()} == set(RejectReason)


@pytest.mark.parametrize("name", list(CASES))
def test_wire_gate_rejects(name: str) -> None:
    case = CASES[name]
    gate = _gate()
    for topic, payload in case.before:
        assert isinstance(gate.admit(topic, payload, NOW), DetectorReading)
    got = gate.admit(*case.bad, NOW)
    assert isinstance(got, Rejected), got
    assert got.reason is case.reason, got
    assert got.detail
    # A good reading right after the bad one still passes: rejection leaves no damage.
    nxt = gate.admit(*_ok("W_q", 7, queue_m=12.0), NOW)
    assert isinstance(nxt, DetectorReading), nxt


def test_wire_gate_admits_and_decodes_fields() -> None:
    gate = _gate()
    got = gate.admit(*_ok("N_1_stop", 3, count=4, occupancy=0.25, presence=True, speed_mps=9.5),
                     NOW + 0.5)
    assert got == DetectorReading("N_1_stop", NOW, 3, 4, 0.25, True, 9.5, None, None)
    got = gate.admit(*_raw("F_E_btn", ts=NOW, seq=0, pressed=True), NOW)
    assert got == DetectorReading("F_E_btn", NOW, 0, pressed=True)
    # JSON Schema counts 2.0 as an integer; the gate agrees and hands out a real int.
    got = gate.admit(*_raw("W_q", ts=NOW, seq=2.0, count=1.0, queue_m=5), NOW)
    assert isinstance(got, DetectorReading)
    assert type(got.seq) is int and type(got.count) is int and type(got.queue_m) is float


def test_wire_gate_restart_rule() -> None:
    gate = _gate()
    assert isinstance(gate.admit(*_ok("N_1_stop", 1000, ts=NOW - 5), NOW - 5), DetectorReading)
    # Restarted detector: seq begins again, its first reading (seq 0) was lost.
    assert isinstance(gate.admit(*_ok("N_1_stop", 1, ts=NOW - 2), NOW - 2), DetectorReading)
    assert gate.last_seq("N_1_stop") == 1
    got = gate.admit(*_ok("N_1_stop", 1, ts=NOW - 2), NOW)
    assert isinstance(got, Rejected) and got.reason is RejectReason.DUPLICATE
    # A high seq far below the last one is not a restart, even with a newer ts.
    gate2 = _gate()
    gate2.admit(*_ok("N_1_stop", 1000, ts=NOW - 5), NOW - 5)
    got = gate2.admit(*_ok("N_1_stop", 500, ts=NOW), NOW)
    assert isinstance(got, Rejected) and got.reason is RejectReason.REPLAY
    # After a silence longer than max_age_s, any seq starts afresh.
    later = NOW + 60
    assert isinstance(gate2.admit(*_ok("N_1_stop", 500, ts=later), later), DetectorReading)


def test_wire_gate_rejection_leaves_state_alone() -> None:
    gate = _gate()
    gate.admit(*_ok("N_1_stop", 10), NOW)
    for topic, payload in (_ok("N_1_stop", 99, ts=NOW + 50), _raw("N_1_stop", ts=NOW, seq=99,
                                                                    occupancy=2.0)):
        assert isinstance(gate.admit(topic, payload, NOW), Rejected)
    assert gate.last_seq("N_1_stop") == 10
    assert isinstance(gate.admit(*_ok("N_1_stop", 11), NOW), DetectorReading)


def test_wire_gate_clips_attacker_text() -> None:
    gate = _gate()
    got = gate.admit(f"atsc/{JUNCTION}/" + "x" * 10_000, b"{}", NOW)
    assert isinstance(got, Rejected) and got.reason is RejectReason.BAD_TOPIC
    assert len(got.topic) <= 200
    got = gate.admit(T, json.dumps({"ts": NOW, "seq": 1, "y" * 500: 1}).encode(), NOW)
    assert isinstance(got, Rejected) and got.reason is RejectReason.SCHEMA
    assert len(got.detail) <= 200


def test_wire_gate_refuses_unsafe_ids() -> None:
    with pytest.raises(ValueError, match="topic-safe"):
        ReadingGate(DETECTORS, "schloss/kreuzung")
    bad = {"a#1": DETECTORS["W_q"]}
    with pytest.raises(ValueError, match="topic-safe"):
        ReadingGate(bad, JUNCTION)
    with pytest.raises(ValueError, match="differ"):
        ReadingGate({"W_queue": DETECTORS["W_q"]}, JUNCTION)


# -- a stream of good and bad messages -----------------------------------------

GARBAGE = [c.bad for c in CASES.values() if not c.before]


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(sorted(DETECTORS)), st.integers(1, 3), st.booleans(),
                  st.integers(0, len(GARBAGE) - 1)),
        min_size=1, max_size=60,
    )
)
def test_wire_gate_stream_keeps_every_valid_reading_in_order(
    plan: list[tuple[str, int, bool, int]],
) -> None:
    """Interleave valid readings with garbage, redeliveries and replays of earlier readings."""
    gate = _gate()
    seqs = dict.fromkeys(DETECTORS, 0)
    sent: list[tuple[str, bytes]] = []
    stream: list[tuple[tuple[str, bytes], bool]] = []
    now = NOW
    for det, step, resend, garbage in plan:
        now += 0.1
        seqs[det] += step
        msg = _ok(det, seqs[det], ts=now, count=step, occupancy=0.5)
        stream.append((msg, True))
        sent.append(msg)
        stream.append(((GARBAGE[garbage][0], GARBAGE[garbage][1]), False))
        if resend:
            stream.append((sent[garbage % len(sent)], False))  # duplicate or replay
    admitted: list[DetectorReading] = []
    t = NOW
    for (topic, payload), good in stream:
        t = max(t, json.loads(payload)["ts"]) if good else t
        got = gate.admit(topic, payload, t)
        if good:
            assert isinstance(got, DetectorReading), got
            admitted.append(got)
        else:
            assert isinstance(got, Rejected), (topic, payload)
    expected = [json.loads(p) for _, p in sent]
    assert [(r.ts, r.seq) for r in admitted] == [(e["ts"], e["seq"]) for e in expected]
    assert [r.detector_id for r in admitted] == [t.rsplit("/", 1)[1] for t, _ in sent]
