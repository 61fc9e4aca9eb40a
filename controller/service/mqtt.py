"""The live service's MQTT transport (aiomqtt): ``controller.transport.Transport`` on a broker.

Inbound: subscribes ``atsc/<junction>/det/+``, ``plan/ack`` and ``state``;
every message passes ``wire.ReadingGate`` (readings) or ``wire.decode_*``
plus a timestamp check (acks, states) on the event loop as it arrives.  A
rejected message is counted under its reason and logged (rate-limited: the
sender may be hostile); it never raises and never disturbs the messages
around it.  Admitted messages wait in a buffer with their arrival time until
the service drains them (``receive``/``receive_timed``); ``wait_inbound``
wakes the service's ingest task as soon as one is there.

Outbound: ``publish`` only queues; a publisher task per connection sends plan
commands (QoS 1, never retained) and the retained ``service/status``.  The
Last Will ``offline`` is registered with every connection.

Reconnection (safety.md M4): a fresh client per attempt with exponential
backoff and jitter, subscriptions restored after every connect, the wanted
status re-published (the broker may have published the Will meanwhile).
No plan command goes out twice: a command counts as sent from the moment its
publish starts (a publish cut off by a disconnect may or may not have reached
the hardware, so it is never repeated), commands are sent in ``seq`` order and
nothing at or below the highest attempted ``seq`` is sent again.  Commands
queued while disconnected go out after the reconnect unless their lease has
already run out (the hardware would ignore them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiomqtt

from controller.errors import ConfigError
from controller.messages import HardwareState, PlanCommand
from controller.metrics import Metrics
from controller.service.config import MqttSection
from controller.transport import Inbound
from controller.wire import (
    ReadingGate,
    Rejected,
    RejectReason,
    ServiceState,
    ServiceStatus,
    TopicKind,
    decode_ack,
    decode_state,
    encode_plan,
    encode_status,
    timestamp_problem,
    topic_for,
)

log = logging.getLogger("atsc.service.mqtt")

#: Admitted messages waiting for the control loop; a stalled loop must not eat all memory.
MAX_BUFFERED: Final = 100_000
#: Publishes that do not complete within this are given up (the connection is broken).
PUBLISH_TIMEOUT_S: Final = 5.0
#: Rejection log lines per reason per window; the counter still counts every message.
_LOG_BURST: Final = 5
_LOG_WINDOW_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Arrival:
    """An admitted message and when it arrived: ``arrived`` on ``time.perf_counter``'s
    clock (latency), ``received`` on the wall clock (the core's ``now`` for it)."""

    message: Inbound
    arrived: float
    received: float


class _RejectLog:
    """At most a few log lines per reason and minute, then a count of what was left out."""

    def __init__(self) -> None:
        self._window: dict[RejectReason, tuple[float, int]] = {}

    def __call__(self, rej: Rejected, now: float) -> None:
        start, n = self._window.get(rej.reason, (now, 0))
        if now - start > _LOG_WINDOW_S:
            if n > _LOG_BURST:
                log.warning("rejected %d more message(s) as %s in the last %.0f s",
                            n - _LOG_BURST, rej.reason.value, now - start)
            start, n = now, 0
        n += 1
        self._window[rej.reason] = (start, n)
        if n <= _LOG_BURST:
            log.warning("rejected message: reason=%s topic=%s detail=%s",
                        rej.reason.value, rej.topic, rej.detail)


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: a random share (50-100 %) of min(hi, lo * 2^attempt).

    The jitter keeps many services of a district from reconnecting in lockstep
    after a broker restart.
    """
    base = min(hi, lo * (2.0 ** min(attempt, 30)))
    return base * rng.uniform(0.5, 1.0)


def tls_context(settings: MqttSection) -> ssl.SSLContext | None:
    """The TLS context for the broker; ``ConfigError`` when a file cannot be used.

    Built once, at start-up: a CA file that is no certificate, or a key that does not
    match its certificate, is the operator's to fix, not a broker fault to retry.
    """
    tls = settings.tls
    if tls is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls.cert_file is not None and tls.key_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"[mqtt.tls] cannot use ca_file / cert_file / key_file: {exc}") from exc
    return ctx


class MqttTransport:
    """Controller side of the broker; ``run`` owns the connection until cancelled."""

    def __init__(
        self,
        settings: MqttSection,
        junction: str,
        gate: ReadingGate,
        metrics: Metrics,
        *,
        version: str,
        max_age_s: float,
        max_future_s: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_published: Callable[[PlanCommand], None] | None = None,
        max_buffered: int = MAX_BUFFERED,
        signal_groups: int | None = None,
    ) -> None:
        self.settings = settings
        self._tls = tls_context(settings)
        self.max_buffered = max_buffered
        #: Signal groups of the junction: a state with another number of characters is
        #: from another junction or a broken encoder, not something to decide on.
        self.signal_groups = signal_groups
        self.junction = junction
        self.gate = gate
        self.metrics = metrics
        self.version = version
        self.max_age_s = max_age_s
        self.max_future_s = max_future_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_published = on_published
        # "+" is not a valid detector id, so build the filter from a placeholder id.
        self.topic_det = topic_for(junction, TopicKind.DETECTOR, "x")[:-1] + "+"
        self.topic_ack = topic_for(junction, TopicKind.PLAN_ACK)
        self.topic_state = topic_for(junction, TopicKind.STATE)
        self.topic_plan = topic_for(junction, TopicKind.PLAN)
        self.topic_status = topic_for(junction, TopicKind.SERVICE_STATUS)
        self._inbox: deque[Arrival] = deque()
        self._outbox: deque[PlanCommand] = deque()
        self._last_attempted_seq: int | None = None
        self._wanted_status: ServiceState | None = None
        self._status_sent = False
        self._wake = asyncio.Event()
        self._inbound = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._connections = 0
        self._closing = False
        self._overflow_logged = False
        self._log_reject = _RejectLog()

    # -- Transport protocol (called on the event loop thread) ---------------------------
    def receive(self) -> list[Inbound]:
        return [a.message for a in self.receive_timed()]

    def receive_timed(self) -> list[Arrival]:
        """Every admitted message since the last call, with its arrival time."""
        out = list(self._inbox)
        self._inbox.clear()
        self._overflow_logged = False
        self._inbound.clear()
        return out

    async def wait_inbound(self) -> None:
        """Return once an admitted message is waiting in the buffer."""
        while not self._inbox:
            self._inbound.clear()
            await self._inbound.wait()

    def publish(self, command: PlanCommand) -> None:
        """Queue a plan command; it goes out on the current or the next connection."""
        if self._closing:
            log.info("not pushing plan seq=%d: the service is stopping", command.seq)
            return
        self._outbox.append(command)
        self._wake.set()

    # -- status ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._client is not None

    def set_status(self, state: ServiceState) -> None:
        """The retained service status to hold (re-published after every reconnect)."""
        self._wanted_status = state
        self._status_sent = False
        self._wake.set()

    def _status_payload(self, state: ServiceState) -> bytes:
        return encode_status(ServiceStatus(state, self.version, self._clock()))

    # -- connection -----------------------------------------------------------------------
    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        return aiomqtt.Client(
            s.host, s.port,
            username=s.username,
            password=s.password(),
            identifier=s.client_id,
            keepalive=s.keepalive_s,
            timeout=s.connect_timeout_s,
            # A fresh session per connection: paho must not replay an unacknowledged
            # plan from an old session (that would push a plan twice).
            clean_session=True,
            will=aiomqtt.Will(self.topic_status, self._status_payload(ServiceState.OFFLINE),
                              qos=1, retain=True),
            tls_context=self._tls,
        )

    async def run(self) -> None:
        """Connect, subscribe, receive and publish; reconnect with backoff; until cancelled."""
        attempt = 0
        while True:
            try:
                client = self._new_client()
                async with client:
                    attempt = 0
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                if self._client is not None:
                    log.warning("lost the broker %s:%d: %s", self.settings.host,
                                self.settings.port, exc)
                else:
                    log.warning("cannot connect to the broker %s:%d: %s", self.settings.host,
                                self.settings.port, exc)
            except ssl.SSLError as exc:
                log.error("TLS error with the broker: %s", exc)
            except ConfigError as exc:
                # The password credential went away after start-up (it is read on every
                # connect, for rotation): say so and keep trying, the junction is safe.
                log.error("cannot connect: %s", exc)
            finally:
                self._client = None
                self.metrics.mqtt_connected.set(0)
            delay = backoff_delay(attempt, self.settings.reconnect_min_s,
                                  self.settings.reconnect_max_s, self._rng)
            attempt += 1
            await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe([(self.topic_det, 0), (self.topic_ack, 1), (self.topic_state, 0)])
        self._client = client
        self._connections += 1
        if self._connections > 1:
            self.metrics.mqtt_reconnects_total.inc()
        self.metrics.mqtt_connected.set(1)
        log.info("connected to the broker %s:%d as %s (connection %d), subscribed",
                 self.settings.host, self.settings.port, self.settings.client_id,
                 self._connections)
        # The Will may have replaced our retained status while we were away.
        self._status_sent = False
        self._wake.set()
        publisher = asyncio.create_task(self._publisher(client), name="atsc-mqtt-publisher")
        try:
            async for msg in client.messages:
                payload = msg.payload
                data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                self.handle(msg.topic.value, data)
                if publisher.done():
                    # Surface a publisher failure as a broken connection.
                    publisher.result()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await publisher

    async def _publisher(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            wanted = self._wanted_status
            if wanted is not None and not self._status_sent:
                self._status_sent = True
                await client.publish(self.topic_status, self._status_payload(wanted), qos=1,
                                     retain=True, timeout=PUBLISH_TIMEOUT_S)
                log.info("service status %s published", wanted.value)
            while self._outbox:
                await self._send(client, self._outbox.popleft())

    async def _send(self, client: aiomqtt.Client, cmd: PlanCommand) -> None:
        now = self._clock()
        last = self._last_attempted_seq
        if last is not None and cmd.seq <= last:
            log.error("plan seq=%d not sent: seq %d was already sent", cmd.seq, last)
            return
        if self._closing:
            log.info("plan seq=%d dropped: the service is stopping", cmd.seq)
            return
        if now > cmd.issued + cmd.lease_s:
            log.warning("plan seq=%d (%s) dropped: its lease ran out before a connection",
                        cmd.seq, cmd.program.id)
            return
        try:
            payload = encode_plan(cmd)
        except ValueError as exc:
            log.error("plan seq=%d (%s) not sent: %s", cmd.seq, cmd.program.id, exc)
            return
        # Counted as sent before the await: if the connection breaks mid-publish the
        # hardware may have it, and a second copy must never follow.
        self._last_attempted_seq = cmd.seq
        await client.publish(self.topic_plan, payload, qos=1, retain=False,
                             timeout=PUBLISH_TIMEOUT_S)
        self.metrics.plans_pushed_total.inc()
        self.metrics.last_plan_push_timestamp_seconds.set(now)
        log.info("plan pushed: seq=%d program=%s cycle=%d s lease=%.0f s", cmd.seq,
                 cmd.program.id, cmd.program.cycle_s, cmd.lease_s)
        if self._on_published is not None:
            self._on_published(cmd)

    async def shutdown(self, status: ServiceState, timeout: float) -> bool:
        """Stop pushing, publish the final status and wait for the broker's PUBACK.

        Returns whether the status reached the broker.  The caller then cancels
        ``run``, which disconnects cleanly (no Will: the status stays as set here).
        """
        self._closing = True
        dropped = len(self._outbox)
        self._outbox.clear()
        if dropped:
            log.info("%d queued plan command(s) dropped on shutdown", dropped)
        self._wanted_status = status
        client = self._client
        if client is None:
            log.warning("no broker connection: service status %s not published", status.value)
            return False
        try:
            await asyncio.wait_for(
                client.publish(self.topic_status, self._status_payload(status), qos=1,
                               retain=True, timeout=timeout),
                timeout,
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("service status %s not confirmed by the broker: %s", status.value, exc)
            return False
        self._status_sent = True
        log.info("service status %s published", status.value)
        return True

    # -- inbound ----------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        """Check one inbound message; admitted ones go to the buffer, the rest are counted."""
        arrived = time.perf_counter()
        now = self._clock()
        m = self.metrics
        result: Inbound | Rejected
        if topic == self.topic_state:
            m.messages_received_total.labels(kind="state").inc()
            result = self._timed(decode_state(payload, topic=topic), now, topic)
            if (isinstance(result, HardwareState) and self.signal_groups is not None
                    and len(result.signal_states) != self.signal_groups):
                result = Rejected(RejectReason.SCHEMA,
                                  f"{len(result.signal_states)} signal states for "
                                  f"{self.signal_groups} signal groups", topic)
        elif topic == self.topic_ack:
            m.messages_received_total.labels(kind="plan_ack").inc()
            result = self._timed(decode_ack(payload, topic=topic), now, topic)
        else:
            m.messages_received_total.labels(kind="detector").inc()
            result = self.gate.admit(topic, payload, now)
        if isinstance(result, Rejected):
            m.messages_rejected_total.labels(reason=result.reason.value).inc()
            self._log_reject(result, now)
            return
        if len(self._inbox) >= self.max_buffered:
            # Once per episode (re-armed by the next drain), but every drop is counted.
            if not self._overflow_logged:
                self._overflow_logged = True
                log.error("inbound buffer full (%d): the control loop is not draining; "
                          "dropping the oldest messages", self.max_buffered)
            self._inbox.popleft()
            m.messages_dropped_total.inc()
        self._inbox.append(Arrival(result, arrived, now))
        self._inbound.set()

    def _timed(self, decoded: Inbound | Rejected, now: float, topic: str) -> Inbound | Rejected:
        if isinstance(decoded, Rejected):
            return decoded
        problem = timestamp_problem(decoded.ts, now, max_age_s=self.max_age_s,
                                    max_future_s=self.max_future_s)
        if problem is not None:
            return Rejected(problem, f"ts={decoded.ts} now={now}", topic)
        return decoded
