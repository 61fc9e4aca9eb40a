"""sd_notify (Type=notify, WatchdogSec): READY only after healthy inputs (safety.md D5),
WATCHDOG from the control loop, STOPPING on SIGTERM.  The test plays systemd's end of
$NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _mqtt_broker import MosquittoBroker, running_broker
from test_service_harness import (
    Manager,
    ScriptedField,
    async_wait_for,
    field_running,
    metrics_up,
    notify_socket,
    running_service,
    scrape,
    service_config,
    unit_seconds,
    value,
)

from controller.service.notify import Notifier

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


def test_ready_only_after_healthy_inputs_watchdog_pings_and_stopping_on_sigterm(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = notify_socket(sock_path)
    manager = Manager(sock)
    cfg = service_config(tmp_path / "svc.toml")
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "15000000"}
    try:
        with running_service(cfg, broker.port, tmp_path / "svc.log", env=env) as svc:

            async def scenario() -> float:
                port = svc.metrics_port
                await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
                fld = ScriptedField(broker)
                # Field up with the hardware state but silent detectors: not ready.
                fld.send_readings = False
                async with field_running(fld):
                    await async_wait_for(lambda: len(manager.with_key("WATCHDOG")) >= 4, 15,
                                         "watchdog pings while waiting for inputs")
                    assert manager.with_key("READY") == []
                    assert value(scrape(port), "atsc_detectors_faulty") == 34
                    waiting = [m["STATUS"] for _, m in manager.with_key("STATUS")]
                    assert any(s.startswith("waiting for inputs: 0/34 detectors healthy")
                               for s in waiting), waiting
                    healthy_from = time.monotonic()
                    fld.send_readings = True
                    await fld.connected(1)
                    await fld.burst()
                    await async_wait_for(lambda: bool(manager.with_key("READY")), 15, "READY=1")
                    pings_before = len(manager.with_key("WATCHDOG"))
                    # Pings go on once ready, two within WatchdogSec (a rate is not claimed).
                    await async_wait_for(
                        lambda: len(manager.with_key("WATCHDOG")) >= pings_before + 2,
                        unit_seconds("WatchdogSec"), "watchdog pings after READY")
                return healthy_from

            healthy_from = asyncio.run(scenario())
            ready = manager.with_key("READY")
            assert len(ready) == 1
            assert ready[0][0] >= healthy_from
            assert ready[0][1]["READY"] == "1"
            assert ready[0][1]["STATUS"].startswith("ready:")
            svc.signal(signal.SIGTERM)
            assert svc.wait(10) == 0
            stopping = manager.with_key("STOPPING")
            assert len(stopping) == 1 and stopping[0][1]["STOPPING"] == "1"
            assert stopping[0][0] > ready[0][0]
    finally:
        sock.close()


def test_notifier_abstract_socket_and_silence_outside_systemd(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = Notifier()
    assert not quiet.enabled and not quiet.ready("x") and not quiet.watchdog()
    name = f"atsc-test-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        n = Notifier("@" + name)
        assert n.status("line one\nline two")
        assert server.recv(1024) == b"STATUS=line one line two"
        monkeypatch.setenv("WATCHDOG_PID", "1")
        # Pings belong to the process systemd watches, not to anyone who inherited the env.
        other = Notifier("@" + name)
        assert not other.watchdog()
        other.close()
        n.close()
    finally:
        server.close()
