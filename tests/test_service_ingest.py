"""Ingest through a real broker: every kind of bad message is counted under its reason,
logged, and the valid readings around it still reach the estimator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from _mqtt_broker import MosquittoBroker, running_broker
from test_service_harness import (
    JUNCTION,
    async_wait_for,
    metrics_up,
    model,
    running_service,
    scrape,
    service_config,
    value,
)

from controller.messages import DetectorReading
from controller.wire import RejectReason, TopicKind, encode_reading, topic_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]

DET = "N1_sl"
GROUPS = len(model().signals.group_ids)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


def _topic(det: str) -> str:
    return topic_for(JUNCTION, TopicKind.DETECTOR, det)


def _reading(seq: int, ts: float, **kw: object) -> bytes:
    return encode_reading(DetectorReading(DET, ts=ts, seq=seq, count=1, occupancy=0.2,
                                          **kw))  # type: ignore[arg-type]


def _messages(now: float) -> tuple[list[tuple[str, bytes]], dict[RejectReason, int], int]:
    """Valid readings with one bad message of every reason between them."""
    good = _topic(DET)
    msgs: list[tuple[str, bytes]] = [
        (good, _reading(200, now)),
        (good, _reading(200, now + 0.1)),                                   # duplicate
        (good, _reading(201, now + 0.2)),
        (good, _reading(150, now + 0.3)),                                   # replay
        (good, _reading(202, now + 0.4)),
        (good, _reading(203, now + 60.0)),                                  # future
        (good, _reading(204, now - 120.0)),                                 # stale
        (_topic("ZZ_9"), _reading(1, now)),                                 # unknown detector
        (f"atsc/{JUNCTION}/det/bad$id", _reading(1, now)),                  # bad topic
        (good, b'{"ts": ' + str(now).encode() + b', "seq": 205' + b" " * 2000 + b"}"),
        (good, b"\xff{not json"),                                           # malformed
        (good, json.dumps({"ts": now, "seq": 205, "lane": 3}).encode()),    # schema
        (good, json.dumps({"ts": now, "seq": 205, "occupancy": 1.7}).encode()),
        (topic_for(JUNCTION, TopicKind.DETECTOR, "E2_sl"),
         encode_reading(DetectorReading("E2_sl", ts=now, seq=7))),
        (good, _reading(203, now + 0.5)),
    ]
    expected = {
        RejectReason.DUPLICATE: 1, RejectReason.REPLAY: 1, RejectReason.FUTURE_TIMESTAMP: 1,
        RejectReason.STALE_TIMESTAMP: 1, RejectReason.UNKNOWN_DETECTOR: 1,
        RejectReason.BAD_TOPIC: 1, RejectReason.OVERSIZED: 1, RejectReason.MALFORMED_JSON: 1,
        RejectReason.SCHEMA: 1, RejectReason.OUT_OF_RANGE: 1,
    }
    valid = len(msgs) - sum(expected.values())
    return msgs, expected, valid


def test_every_bad_message_is_counted_by_reason_and_valid_readings_get_through(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = service_config(tmp_path / "svc.toml")
    with running_service(cfg, broker.port, tmp_path / "svc.log") as svc:

        async def scenario() -> None:
            port = svc.metrics_port
            await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
            await async_wait_for(
                lambda: value(scrape(port), "atsc_mqtt_connected") == 1, 20, "broker connection")
            before = scrape(port)
            msgs, expected, valid = _messages(time.time())
            async with aiomqtt.Client(**broker.client_kwargs()) as client:
                for topic, payload in msgs:
                    # QoS 1: the broker keeps the order and loses nothing on localhost.
                    await client.publish(topic, payload, qos=1)

            def arrived() -> bool:
                s = scrape(port)
                got = (value(s, "atsc_messages_received_total", kind="detector")
                       - value(before, "atsc_messages_received_total", kind="detector"))
                fed = (value(s, "atsc_ingest_latency_seconds_count")
                       - value(before, "atsc_ingest_latency_seconds_count"))
                return got >= len(msgs) and fed >= valid

            await async_wait_for(arrived, 20, "all messages counted and fed to the estimator")
            await asyncio.sleep(1.5)  # nothing more may trickle in
            after = scrape(port)
            received = (value(after, "atsc_messages_received_total", kind="detector")
                        - value(before, "atsc_messages_received_total", kind="detector"))
            assert received == len(msgs)
            for reason in RejectReason:
                delta = (value(after, "atsc_messages_rejected_total", reason=reason.value)
                         - value(before, "atsc_messages_rejected_total", reason=reason.value))
                assert delta == expected.get(reason, 0), reason
            fed = (value(after, "atsc_ingest_latency_seconds_count")
                   - value(before, "atsc_ingest_latency_seconds_count"))
            # Exactly the valid readings reached the estimator, none lost, none extra.
            assert fed == valid
            # The detectors that sent valid readings now have fresh data.
            for det in (DET, "E2_sl"):
                age = value(after, "atsc_detector_data_age_seconds", detector=det)
                assert 0 <= age < 15, (det, age)
            assert value(after, "atsc_detector_data_age_seconds", detector="W1_sl") == float("inf")

        asyncio.run(scenario())
        assert svc.alive(), svc.log()
        log = svc.log()
    for reason in ("duplicate", "replay", "future_timestamp", "stale_timestamp",
                   "unknown_detector", "bad_topic", "oversized", "malformed_json", "schema",
                   "out_of_range"):
        assert f"reason={reason}" in log, reason
    assert "Traceback" not in log


def test_bad_state_and_ack_messages_are_rejected_and_a_valid_state_still_counts(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    from controller.messages import AckStatus, HardwareState, PlanAck
    from controller.wire import encode_ack, encode_state

    cfg = service_config(tmp_path / "svc.toml")
    with running_service(cfg, broker.port, tmp_path / "svc.log") as svc:

        async def scenario() -> None:
            port = svc.metrics_port
            await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
            await async_wait_for(
                lambda: value(scrape(port), "atsc_mqtt_connected") == 1, 20, "broker connection")
            now = time.time()
            state_topic = topic_for(JUNCTION, TopicKind.STATE)
            ack_topic = topic_for(JUNCTION, TopicKind.PLAN_ACK)
            async with aiomqtt.Client(**broker.client_kwargs()) as client:
                await client.publish(state_topic, b"[]", qos=1)
                await client.publish(ack_topic, b'{"seq": 1}', qos=1)
                old = HardwareState(ts=now - 300, program_id="x", fallback=True,
                                    cycle_second=0, signal_states="rr")
                await client.publish(state_topic, encode_state(old), qos=1)
                narrow = HardwareState(ts=now, program_id="fallback-test", fallback=True,
                                       cycle_second=3, signal_states="rrGG")
                await client.publish(state_topic, encode_state(narrow), qos=1)
                # One character per signal group; not in fallback, so it shows in the gauge.
                ok = HardwareState(ts=now, program_id="p-elsewhere", fallback=False,
                                   cycle_second=3, signal_states="r" * GROUPS)
                await client.publish(state_topic, encode_state(ok), qos=1)
                ack = PlanAck("p", 5, AckStatus.REJECTED, "nope", now)
                await client.publish(ack_topic, encode_ack(ack), qos=1)

            def counted() -> bool:
                s = scrape(port)
                return (value(s, "atsc_messages_received_total", kind="state") == 4
                        and value(s, "atsc_plan_acks_total", status="rejected") == 1)

            await async_wait_for(counted, 20, "state and ack messages counted")
            s = scrape(port)
            assert value(s, "atsc_messages_received_total", kind="plan_ack") == 2
            # "[]", the ack without program_id, the state of the wrong width.
            assert value(s, "atsc_messages_rejected_total", reason="schema") == 3
            assert value(s, "atsc_messages_rejected_total", reason="stale_timestamp") == 1
            await async_wait_for(lambda: value(scrape(port), "atsc_fallback_active") == 0, 10,
                                 "the valid state taken")

        asyncio.run(scenario())
        assert svc.alive(), svc.log()
