"""The service with its production evaluator, the SUMO twin in worker processes: decisions
take seconds, yet the event loop keeps ingesting, detectors stay healthy, the watchdog
keeps being pinged, and SIGTERM still ends the service and its workers before systemd's
TimeoutStopSec."""

from __future__ import annotations

import asyncio
import itertools
import signal
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
    total,
    unit_seconds,
    value,
    wait_for,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.sumo, pytest.mark.timeout(150)]


def _stat(path: Path) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, ...); None once
    the process is gone (Linux only, as the service)."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    stats = {int(p.parent.name): _stat(p) for p in Path("/proc").glob("[0-9]*/stat")}
    return [child for child, f in stats.items() if f is not None and int(f[1]) == pid]


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (ended, not yet reaped) counts as ended."""
    f = _stat(Path(f"/proc/{pid}/stat"))
    return f is not None and f[0] != "Z"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


def test_twin_decisions_never_stall_ingest_health_or_the_watchdog(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = notify_socket(sock_path)
    manager = Manager(sock)
    cfg = service_config(tmp_path / "svc.toml", evaluator="sumo")
    env = {"NOTIFY_SOCKET": str(sock_path)}
    try:
        with running_service(cfg, broker.port, tmp_path / "svc.log", env=env) as svc:
            port = svc.metrics_port

            async def scenario() -> None:
                await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
                fld = ScriptedField(broker)
                # Timestamps are taken when a datagram is read: read them as they come.
                drainer = asyncio.create_task(manager.drain_forever())
                async with field_running(fld):
                    await fld.connected(1)
                    await fld.burst()
                    await async_wait_for(lambda: bool(manager.with_key("READY")), 20, "READY")
                    ready_at = time.monotonic()
                    faults_at_ready = total(scrape(port), "atsc_detector_faults_total")
                    await async_wait_for(
                        lambda: value(scrape(port), "atsc_decision_duration_seconds_count") >= 4,
                        90, "four decisions with the twin")
                    s = scrape(port)
                    assert value(s, "atsc_twin_evaluation_duration_seconds_count") >= 4
                    # Readings kept arriving during the decisions and nobody went stale.
                    assert total(s, "atsc_detector_faults_total") == faults_at_ready
                    assert value(s, "atsc_detectors_faulty") == 0
                    pings = [t for t, _ in manager.with_key("WATCHDOG") if t >= ready_at]
                    gaps = [b - a for a, b in itertools.pairwise(pings)]
                    # No gap for which systemd would have killed the service mid-decision.
                    assert len(pings) >= 3 and max(gaps) < unit_seconds("WatchdogSec"), gaps
                drainer.cancel()

            asyncio.run(scenario())
            workers = children(svc.proc.pid)
            assert workers, "the SUMO twin runs in worker processes"
            svc.signal(signal.SIGTERM)
            assert svc.wait(unit_seconds("TimeoutStopSec")) == 0
            assert manager.with_key("STOPPING")
            # No twin worker outlives the service (an orphan would hold a SUMO instance).
            wait_for(lambda: not [w for w in workers if alive(w)], 5, "the workers' exit")
    finally:
        sock.close()
