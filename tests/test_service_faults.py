"""Faults with the real broker (safety.md M3, M4, D3): broker SIGKILL and restart, service
SIGTERM and SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from _mqtt_broker import MosquittoBroker, running_broker
from test_service_harness import (
    JUNCTION,
    PUSH_ON_ANY_GAIN,
    ScriptedField,
    ServiceProcess,
    async_wait_for,
    field_running,
    metrics_up,
    running_service,
    scrape,
    service_config,
    service_online,
    spy_messages,
    unit_seconds,
    value,
)

from controller.wire import TopicKind, topic_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(300)]

PLAN = topic_for(JUNCTION, TopicKind.PLAN)
STATUS = topic_for(JUNCTION, TopicKind.SERVICE_STATUS)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


async def retained_status(broker: MosquittoBroker) -> str:
    """The retained service/status as a new subscriber sees it."""
    async with aiomqtt.Client(**broker.client_kwargs()) as client:
        await client.subscribe(STATUS, qos=1)
        async with asyncio.timeout(5):
            async for msg in client.messages:
                return str(json.loads(bytes(msg.payload))["state"])  # type: ignore[arg-type]
    raise AssertionError("no retained status")


def test_broker_killed_and_restarted_service_reconnects_resubscribes_and_never_repeats_a_plan(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = service_config(tmp_path / "svc.toml")
    with running_service(cfg, broker.port, tmp_path / "svc.log") as svc:

        async def scenario() -> None:
            port = svc.metrics_port
            plans: list[bytes] = []
            spy_ready, stop = asyncio.Event(), asyncio.Event()
            spy = asyncio.create_task(spy_messages(broker, PLAN, plans, spy_ready, stop))
            await asyncio.wait_for(spy_ready.wait(), 10)
            fld = ScriptedField(broker)
            async with field_running(fld):
                await service_online(svc, fld)
                await async_wait_for(lambda: len(plans) >= 3, 90, "plans before the kill")
                before = scrape(port)
                assert value(before, "atsc_mqtt_reconnects_total") == 0

                broker.kill()
                await async_wait_for(
                    lambda: value(scrape(port), "atsc_mqtt_connected") == 0, 10,
                    "the service noticing the dead broker")
                n_before_restart = len(plans)
                await asyncio.sleep(2.0)  # a few failed reconnect attempts with backoff
                assert svc.alive()
                broker.restart()

                def reconnected() -> bool:
                    s = scrape(port)
                    return (value(s, "atsc_mqtt_connected") == 1
                            and value(s, "atsc_mqtt_reconnects_total") >= 1)

                await async_wait_for(reconnected, 20, "reconnect")
                fed = value(scrape(port), "atsc_ingest_latency_seconds_count")
                # Detectors went stale during the outage; make them healthy again.
                await fld.connected(2)
                await fld.burst()
                # Re-subscribed: new readings reach the estimator again.
                await async_wait_for(
                    lambda: value(scrape(port), "atsc_ingest_latency_seconds_count") > fed + 34,
                    20, "readings after the reconnect")
                # Generous: the detectors' recovery (hysteresis) and the next decision epochs
                # take longer on a loaded machine; nothing here is a timing claim.
                await async_wait_for(lambda: len(plans) >= n_before_restart + 3, 120,
                                     "plans after the reconnect")
            stop.set()
            await spy
            after = scrape(port)
            assert value(after, "atsc_mqtt_reconnects_total") == 1
            seqs = [json.loads(p)["seq"] for p in plans]
            assert len(seqs) == len(set(seqs)), "a plan seq was published twice"
            assert seqs == sorted(seqs)
            # The hardware side saw no seq twice either (it rejects repeats).
            assert value(after, "atsc_plan_acks_total", status="rejected") == 0

        asyncio.run(scenario())
        assert svc.alive()
        log = svc.log()
    assert "lost the broker" in log and "connection 2" in log


def test_sigterm_publishes_stopping_and_exits_0_then_sigkill_leaves_offline(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = service_config(tmp_path / "svc.toml", controller_extra=PUSH_ON_ANY_GAIN)
    statuses: list[str] = []

    async def run_until_online_then(sig: int) -> tuple[ServiceProcess, ScriptedField]:
        with running_service(cfg, broker.port, tmp_path / f"svc-{sig}.log") as svc:
            payloads: list[bytes] = []
            ready, stop = asyncio.Event(), asyncio.Event()
            spy = asyncio.create_task(spy_messages(broker, STATUS, payloads, ready, stop))
            await asyncio.wait_for(ready.wait(), 10)
            fld = ScriptedField(broker)
            async with field_running(fld):
                await service_online(svc, fld)
                await async_wait_for(lambda: fld.program is not fld.fallback, 20,
                                     "an adaptive plan running at the junction")
                svc.signal(sig)
                # Past TimeoutStopSec systemd would SIGKILL it before the hand-back.
                code = await asyncio.to_thread(svc.wait, unit_seconds("TimeoutStopSec"))
                await asyncio.sleep(1.0)
                statuses.extend(json.loads(p)["state"] for p in payloads)
                stop.set()
                await spy
                if sig == signal.SIGTERM:
                    assert code == 0, svc.log()
                    # The field saw the status change and went back to its fallback.
                    assert fld.program is fld.fallback
                else:
                    assert code == -signal.SIGKILL
            return svc, fld

    svc, _ = asyncio.run(run_until_online_then(signal.SIGTERM))
    assert statuses[-1] == "stopping", statuses
    assert "online" in statuses
    assert asyncio.run(retained_status(broker)) == "stopping"
    assert "Traceback" not in svc.log()

    statuses.clear()
    asyncio.run(run_until_online_then(signal.SIGKILL))
    # The broker published the Last Will for the dead service, and retained it.
    assert statuses[-1] == "offline", statuses
    assert asyncio.run(retained_status(broker)) == "offline"


def test_service_starts_without_a_broker_and_connects_when_it_appears(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    broker.stop()  # the port is known now; nobody listens on it
    cfg = service_config(tmp_path / "svc.toml")
    with running_service(cfg, broker.port, tmp_path / "svc.log") as svc:
        port = svc.metrics_port

        async def scenario() -> None:
            await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
            await asyncio.sleep(1.5)
            assert value(scrape(port), "atsc_mqtt_connected") == 0
            broker.restart()
            try:
                await async_wait_for(lambda: value(scrape(port), "atsc_mqtt_connected") == 1,
                                     20, "first connection")
                # The first connection is not a reconnection.
                assert value(scrape(port), "atsc_mqtt_reconnects_total") == 0
            finally:
                broker.stop()

        asyncio.run(scenario())
        assert svc.alive()
    assert "cannot connect to the broker" in svc.log()
