"""The production broker config, ACL and certificates against a real mosquitto.

Each test gets a private broker started from ops/mosquitto/ (see tests/_mqtt_broker.py).
Denied publishes are dropped silently by mosquitto under MQTT 3.1.1, so ACL tests prove
the drop by ordering: the forbidden message is sent before an allowed one over the same
path, and the allowed one must arrive without the forbidden one ahead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from _mqtt_broker import (
    MAKE_CA,
    MosquittoBroker,
    detector_identity,
    field_identity,
    render_secure_config,
    running_broker,
    service_identity,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(60)]

J = "schlosskreuzung"
DET = f"atsc/{J}/det"
PLAN = f"atsc/{J}/plan"
STATUS = f"atsc/{J}/service/status"
RECEIVE_TIMEOUT_S = 5.0


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker", mode="secure") as broker:
        yield broker


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(client.messages), RECEIVE_TIMEOUT_S)


async def _connect_error(kwargs: dict[str, Any]) -> aiomqtt.MqttError:
    try:
        async with aiomqtt.Client(**kwargs, timeout=5):
            pass
    except aiomqtt.MqttError as exc:
        return exc
    raise AssertionError(f"connection with {sorted(kwargs)} was accepted")


def test_anonymous_client_is_refused(secure: MosquittoBroker) -> None:
    kwargs = {"hostname": secure.host, "port": secure.port, "tls_context": secure.tls_context()}
    exc = asyncio.run(_connect_error(kwargs))
    assert isinstance(exc, aiomqtt.MqttCodeError)
    assert "Not authorized" in str(exc.rc)


def test_wrong_password_is_refused(secure: MosquittoBroker) -> None:
    kwargs = secure.client_kwargs(service_identity(J))
    kwargs["password"] = kwargs["password"] + "x"
    exc = asyncio.run(_connect_error(kwargs))
    assert isinstance(exc, aiomqtt.MqttCodeError)
    assert "Not authorized" in str(exc.rc)


def _tls_handshake(broker: MosquittoBroker, ctx: ssl.SSLContext) -> str:
    with (
        socket.create_connection((broker.host, broker.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=broker.host) as tls,
    ):
        return str(tls.version())


def test_tls_with_the_private_ca_works_and_without_it_fails(secure: MosquittoBroker) -> None:
    # Checked at the TLS layer: paho leaks the socket when a handshake fails, which
    # filterwarnings=error would report as an unrelated ResourceWarning.
    assert _tls_handshake(secure, secure.tls_context()) in {"TLSv1.2", "TLSv1.3"}
    with pytest.raises(ssl.SSLCertVerificationError, match=r"self.signed|unable to get local"):
        _tls_handshake(secure, secure.tls_context(trust_ca=False))


# MQTT 3.1.1 CONNECT, clean session, keepalive 60, client id "x", no credentials.
_RAW_CONNECT = bytes.fromhex("100d00044d5154540402003c000178")


def test_plaintext_mqtt_gets_no_answer_from_the_tls_listener(secure: MosquittoBroker) -> None:
    with socket.create_connection((secure.host, secure.port), timeout=5) as raw:
        raw.sendall(_RAW_CONNECT)
        try:
            reply = raw.recv(64)
        except ConnectionResetError:
            reply = b""
    # A CONNACK would start with 0x20; the TLS listener closes instead (or answers
    # with a TLS alert record, type 0x15).
    assert not reply.startswith(b"\x20"), reply


def test_detector_cannot_publish_a_plan_but_can_publish_its_own_reading(
    secure: MosquittoBroker,
) -> None:
    async def scenario() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        service = aiomqtt.Client(**secure.client_kwargs(service_identity(J)), timeout=5)
        field = aiomqtt.Client(**secure.client_kwargs(field_identity(J)), timeout=5)
        d1 = aiomqtt.Client(**secure.client_kwargs(detector_identity("D1", J)), timeout=5)
        async with service, field, d1:
            await service.subscribe(f"{DET}/#", qos=1)
            await field.subscribe(PLAN, qos=1)

            # Forbidden first, allowed second, same publisher, same subscriber path.
            await d1.publish(PLAN, b"forged-plan", qos=1)
            await d1.publish(f"{DET}/D2", b"spoofed-reading", qos=1)
            await d1.publish(f"{DET}/D1", b"own-reading", qos=1)
            await service.publish(PLAN, b"real-plan", qos=1)

            seen_by_service = []
            msg = await _next_message(service)
            seen_by_service.append((msg.topic.value, bytes(msg.payload)))  # type: ignore[arg-type]
            seen_by_field = []
            msg = await _next_message(field)
            seen_by_field.append((msg.topic.value, bytes(msg.payload)))  # type: ignore[arg-type]
            return seen_by_service, seen_by_field

    seen_by_service, seen_by_field = asyncio.run(scenario())
    assert seen_by_service == [(f"{DET}/D1", b"own-reading")]
    assert seen_by_field == [(PLAN, b"real-plan")]


def test_detector_never_receives_plans(secure: MosquittoBroker) -> None:
    async def scenario() -> tuple[bytes, list[bytes]]:
        d1 = aiomqtt.Client(**secure.client_kwargs(detector_identity("D1", J)), timeout=5)
        field = aiomqtt.Client(**secure.client_kwargs(field_identity(J)), timeout=5)
        service = aiomqtt.Client(**secure.client_kwargs(service_identity(J)), timeout=5)
        async with d1, field, service:
            # mosquitto 2.0 grants the SUBSCRIBE and filters on delivery instead.
            await d1.subscribe(PLAN, qos=1)
            await field.subscribe(PLAN, qos=1)
            await service.publish(PLAN, b"plan-1", qos=1)
            delivered = bytes((await _next_message(field)).payload)  # type: ignore[arg-type]
            # The broker has routed the plan; give the detector's copy, if any,
            # far longer than the field's took.
            leaked: list[bytes] = []
            with contextlib.suppress(TimeoutError):
                msg = await asyncio.wait_for(anext(d1.messages), 1.0)
                leaked.append(bytes(msg.payload))  # type: ignore[arg-type]
            return delivered, leaked

    assert asyncio.run(scenario()) == (b"plan-1", [])


def test_last_will_leaves_retained_offline_status_after_a_crash(
    secure: MosquittoBroker,
) -> None:
    creds = secure.credentials(service_identity(J))
    # mosquitto_sub stands in for a service process that can be SIGKILLed: the
    # broker must publish the Will because no DISCONNECT was sent.
    proc = subprocess.Popen(
        ["mosquitto_sub", "-h", secure.host, "-p", str(secure.port),
         "--cafile", str(secure.ca_file), "-u", creds.username, "-P", creds.password,
         "-i", "will-test", "-t", f"{DET}/#",
         "--will-topic", STATUS, "--will-payload", "offline", "--will-qos", "1",
         "--will-retain"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + RECEIVE_TIMEOUT_S
        while " as will-test " not in secure.log_text():
            assert proc.poll() is None, "mosquitto_sub exited"
            assert time.monotonic() < deadline, secure.log_text()
            time.sleep(0.05)
        proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    async def read_status() -> tuple[bytes, bool]:
        async with aiomqtt.Client(**secure.client_kwargs(field_identity(J)), timeout=5) as f:
            await f.subscribe(STATUS, qos=1)
            msg = await _next_message(f)
            return bytes(msg.payload), msg.retain  # type: ignore[arg-type]

    assert asyncio.run(read_status()) == (b"offline", True)


def test_client_certificate_listener_maps_the_cn_to_the_acl(secure: MosquittoBroker) -> None:
    async def scenario() -> tuple[str, bytes]:
        async with (
            aiomqtt.Client(**secure.client_kwargs(service_identity(J), use_cert=True),
                           timeout=5) as service,
            aiomqtt.Client(**secure.client_kwargs(detector_identity("D2", J), use_cert=True),
                           timeout=5) as d2,
        ):
            await service.subscribe(f"{DET}/#", qos=1)
            await d2.publish(f"{DET}/D1", b"spoofed-by-cert", qos=1)
            await d2.publish(f"{DET}/D2", b"own-by-cert", qos=1)
            msg = await _next_message(service)
            return msg.topic.value, bytes(msg.payload)  # type: ignore[arg-type]

    assert asyncio.run(scenario()) == (f"{DET}/D2", b"own-by-cert")


def _connect_over_tls(broker: MosquittoBroker, ctx: ssl.SSLContext) -> bytes:
    """Raw MQTT CONNECT on the certificate listener; returns the broker's first bytes."""
    assert broker.cert_port is not None
    with (
        socket.create_connection((broker.host, broker.cert_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=broker.host) as tls,
    ):
        # TLS 1.3 finishes the client side of the handshake before the server has
        # checked the client certificate; a refusal shows up on the first read.
        tls.sendall(_RAW_CONNECT)
        return tls.recv(64)


def test_certificate_listener_accepts_a_certificate_from_the_private_ca(
    secure: MosquittoBroker,
) -> None:
    ctx = secure.tls_context(client_cert_of=field_identity(J))
    # CONNACK, remaining length 2, no session, return code 0 (accepted).
    assert _connect_over_tls(secure, ctx) == bytes.fromhex("20020000")


def test_certificate_listener_refuses_a_client_without_certificate(
    secure: MosquittoBroker,
) -> None:
    with pytest.raises(ssl.SSLError):
        _connect_over_tls(secure, secure.tls_context())


def test_certificate_listener_refuses_a_certificate_from_another_ca(
    secure: MosquittoBroker, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca"
    subprocess.run(["bash", str(MAKE_CA), str(other), field_identity(J)], check=True,
                   capture_output=True, timeout=60)
    ctx = secure.tls_context()
    name = "client-" + field_identity(J)
    ctx.load_cert_chain(other / f"{name}.crt", other / f"{name}.key")
    with pytest.raises(ssl.SSLError):
        _connect_over_tls(secure, ctx)


def test_secure_config_rewrite_fails_loudly_on_an_unexpected_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="listener 8883"):
        render_secure_config("listener 1883\n", port=1, cert_port=2, etc_dir=tmp_path,
                             data_dir=tmp_path)


def test_plain_broker_survives_kill_and_restart_on_the_same_port(tmp_path: Path) -> None:
    async def roundtrip(broker: MosquittoBroker, payload: bytes) -> bytes:
        async with aiomqtt.Client(**broker.client_kwargs(), timeout=5) as c:
            await c.subscribe("atsc/test/roundtrip", qos=1)
            await c.publish("atsc/test/roundtrip", payload, qos=1)
            return bytes((await _next_message(c)).payload)  # type: ignore[arg-type]

    with running_broker(tmp_path / "plain") as broker:
        port, pid = broker.port, broker.pid
        assert asyncio.run(roundtrip(broker, b"before")) == b"before"
        broker.kill()
        assert not broker.running
        exc = asyncio.run(_connect_error(broker.client_kwargs()))
        assert isinstance(exc, aiomqtt.MqttError)
        broker.restart()
        assert (broker.port, broker.running) == (port, True)
        assert broker.pid != pid
        assert asyncio.run(roundtrip(broker, b"after")) == b"after"
    assert not broker.running


def test_oversized_packet_is_refused(secure: MosquittoBroker) -> None:
    async def scenario() -> tuple[str, bytes]:
        service = aiomqtt.Client(**secure.client_kwargs(service_identity(J)), timeout=5)
        async with service:
            await service.subscribe(f"{DET}/#", qos=1)
            # max_packet_size 65536: the broker drops the client that sends more.
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    **secure.client_kwargs(detector_identity("D1", J)), timeout=5
                ) as d1:
                    await d1.publish(f"{DET}/D1", b"x" * 70_000, qos=0)
            async with aiomqtt.Client(
                **secure.client_kwargs(detector_identity("D1", J)), timeout=5
            ) as d1:
                await d1.publish(f"{DET}/D1", b"small", qos=1)
            msg = await _next_message(service)
            return msg.topic.value, bytes(msg.payload)  # type: ignore[arg-type]

    assert asyncio.run(scenario()) == (f"{DET}/D1", b"small")
