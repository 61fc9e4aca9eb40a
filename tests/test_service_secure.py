"""The service on the production broker config (TLS, ACL, no anonymous access): password
over TLS from a systemd credential, and a client certificate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from _mqtt_broker import MosquittoBroker, detector_identity, running_broker, service_identity
from test_service_harness import (
    JUNCTION,
    async_wait_for,
    metrics_up,
    running_service,
    scrape,
    service_config,
    value,
)

from controller.messages import DetectorReading
from controller.wire import TopicKind, encode_reading, topic_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("secure"), mode="secure",
                        detectors=("N1_sl",)) as b:
        yield b


def _receives_a_detector_reading(broker: MosquittoBroker, port: int) -> None:
    async def scenario() -> None:
        await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
        await async_wait_for(lambda: value(scrape(port), "atsc_mqtt_connected") == 1, 20,
                             "a TLS connection")
        ident = detector_identity("N1_sl")
        async with aiomqtt.Client(**broker.client_kwargs(ident)) as det:
            payload = encode_reading(DetectorReading("N1_sl", ts=time.time(), seq=1))
            await det.publish(topic_for(JUNCTION, TopicKind.DETECTOR, "N1_sl"), payload, qos=1)
        await async_wait_for(
            lambda: value(scrape(port), "atsc_ingest_latency_seconds_count") == 1, 10,
            "the reading reaching the estimator through the ACL")

    asyncio.run(scenario())


def test_password_over_tls_from_a_systemd_credential(broker: MosquittoBroker,
                                                     tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    own = broker.credentials(service_identity())
    (creds / "mqtt-password").write_text(own.password + "\n")
    (creds / "mqtt-ca.crt").write_bytes(broker.ca_file.read_bytes())
    cfg = service_config(tmp_path / "svc.toml", mqtt_extra=(
        f'username = "{service_identity()}"\npassword_credential = "mqtt-password"\n'
        '[mqtt.tls]\nca_credential = "mqtt-ca.crt"'))
    with running_service(cfg, broker.port, tmp_path / "svc.log",
                         env={"CREDENTIALS_DIRECTORY": str(creds)}) as svc:
        _receives_a_detector_reading(broker, svc.metrics_port)


def test_client_certificate(broker: MosquittoBroker, tmp_path: Path) -> None:
    own = broker.credentials(service_identity())
    assert broker.cert_port is not None
    cfg = service_config(tmp_path / "svc.toml", mqtt_extra=(
        f'[mqtt.tls]\nca_file = "{broker.ca_file}"\ncert_file = "{own.certfile}"\n'
        f'key_file = "{own.keyfile}"'))
    with running_service(cfg, broker.cert_port, tmp_path / "svc.log") as svc:
        _receives_a_detector_reading(broker, svc.metrics_port)


def test_wrong_password_is_retried_not_fatal(broker: MosquittoBroker, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("wrong\n")
    cfg = service_config(tmp_path / "svc.toml", mqtt_extra=(
        f'username = "{service_identity()}"\npassword_file = "pw"\n'
        f'[mqtt.tls]\nca_file = "{broker.ca_file}"'))
    with running_service(cfg, broker.port, tmp_path / "svc.log") as svc:
        port = svc.metrics_port
        asyncio.run(async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint"))
        time.sleep(2.0)
        assert svc.alive()
        assert value(scrape(port), "atsc_mqtt_connected") == 0
    assert "cannot connect to the broker" in svc.log()
