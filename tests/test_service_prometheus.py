"""A real Prometheus scrapes the service: every expression of the Grafana dashboard and of
the alert rules returns data through the HTTP API (/api/v1/query).

Alert expressions end in a threshold that filters the series away while all is well;
they are asked with PromQL's ``bool`` modifier (``x > bool 10``), which keeps every
series and answers 0/1, so "returns data" proves the series the alert watches exist
with the labels it aggregates by.  The unmodified expressions must evaluate too, and
the alerts that are true at start-up (fallback running, detectors faulty, no data yet)
must return data as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _dashboard_exprs import alert_expressions, dashboard_expressions
from _mqtt_broker import MosquittoBroker, free_port, running_broker
from test_service_harness import (
    JUNCTION,
    ScriptedField,
    async_wait_for,
    field_running,
    metrics_up,
    running_service,
    scrape,
    service_config,
    value,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = [pytest.mark.mosquitto, pytest.mark.prometheus, pytest.mark.timeout(150)]

_THRESHOLD = re.compile(r"(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?)")


def with_bool(expr: str) -> str:
    """``a > 10 and b == 1`` -> ``a > bool 10 and b == bool 1``."""
    return _THRESHOLD.sub(r"\1 bool \2", expr)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, target_port: int) -> Iterator[int]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                   "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "atsc",
            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"],
                                "labels": {"junction": JUNCTION}}],
        }],
    }))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("prometheus did not start: "
                                       + (tmp_path / "prometheus.log").read_text()) from None
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


def test_prometheus_gets_data_for_every_dashboard_and_alert_expression(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = service_config(tmp_path / "svc.toml")
    with running_service(cfg, broker.port, tmp_path / "svc.log") as svc:
        port = svc.metrics_port

        async def scenario() -> None:
            await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
            with running_prometheus(tmp_path, port) as prom:
                await async_wait_for(lambda: bool(query(prom, 'up{job="atsc"} == 1')), 20,
                                     "the first scrape")
                # Before any input the service is blind: these alerts' conditions hold.
                startup = [e for e in alert_expressions() if any(
                    m in e for m in ("atsc_fallback_active", "atsc_detectors_faulty",
                                     "atsc_detector_data_age_seconds"))]
                assert len(startup) == 3
                for expr in startup:
                    await async_wait_for(lambda e=expr: bool(query(prom, e)), 10, expr)

                # Drive the service: healthy detectors, decisions every second, plans,
                # acks, a rejected message and a broker reconnect.
                fld = ScriptedField(broker)
                async with field_running(fld):
                    await fld.connected(1)
                    await fld.burst()
                    await async_wait_for(lambda: fld.service_online, 20, "service online")
                    await fld.publish_raw(f"atsc/{JUNCTION}/det/N1_sl", b"garbage")
                    await async_wait_for(lambda: len(fld.log.plans) >= 2, 30, "plans")
                    broker.kill()
                    await async_wait_for(
                        lambda: value(scrape(port), "atsc_mqtt_connected") == 0, 10, "loss")
                    broker.restart()
                    await async_wait_for(
                        lambda: value(scrape(port), "atsc_mqtt_reconnects_total") == 1, 20,
                        "reconnect")
                    await fld.connected(2)
                    await fld.burst()
                    await async_wait_for(
                        lambda: value(scrape(port), "atsc_validation_duration_seconds_count")
                        > 0, 40, "a candidate through the safety gate")

                    exprs = [*dashboard_expressions(),
                             *(with_bool(e) for e in alert_expressions())]
                    missing: dict[str, list[dict[str, Any]]] = {}
                    deadline = time.monotonic() + 45
                    pending = list(exprs)
                    while pending and time.monotonic() < deadline:
                        missing = {}
                        for expr in pending:
                            result = query(prom, expr)
                            if not has_number(result):
                                missing[expr] = result
                        pending = list(missing)
                        if pending:
                            await asyncio.sleep(1.0)
                    assert not missing, json.dumps(missing, indent=1)
                    # The unmodified alert expressions are valid PromQL for this server.
                    for expr in alert_expressions():
                        query(prom, expr)

        asyncio.run(scenario())
        assert svc.alive()


def test_with_bool_keeps_series_and_leaves_other_numbers_alone() -> None:
    assert with_bool("up{job=\"atsc\"} == 0") == "up{job=\"atsc\"} == bool 0"
    assert (with_bool("(time() - x) > 600 and y == 1")
            == "(time() - x) > bool 600 and y == bool 1")
    assert with_bool("histogram_quantile(0.99, rate(a[10m])) > 1") == (
        "histogram_quantile(0.99, rate(a[10m])) > bool 1")
