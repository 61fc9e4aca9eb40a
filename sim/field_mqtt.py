"""Hardware-in-the-loop field: a ground-truth SUMO run on a real MQTT broker (``atsc field``).

The same run ``atsc run`` assembles (junction model, demand for the seed, the
Webster fixed-time program, KPI outputs), but the signal driver is the broker:

- every detector reading goes out on ``atsc/<j>/det/<id>`` (QoS 0), paced to
  wall time (``--speed`` simulated seconds per wall second, monotonic clock);
- the simulated signal controller (``sim.hardware``) listens on ``plan``,
  answers on ``plan/ack`` (QoS 1) and publishes its ``state`` every second;
- it returns to its stored fixed-time program by itself: when a lease runs
  out, after a rejected command, and when the service's retained
  ``service/status`` says it is not online.

Threads: SUMO and the hardware run on the caller's thread (libsumo is one
simulation per process and not thread-safe); the MQTT client runs an asyncio
loop (aiomqtt) in its own thread.  They meet only in two thread-safe hand-overs
(``MqttLink.send`` and ``MqttLink.receive``), so a slow or absent broker never
blocks the simulation: the junction is safe on its own (safety.md D3).

Clocks: everything on the wire is wall-clock epoch seconds, because the
service's gate judges skew and age against its own clock.  The hardware keeps
time in simulated seconds; a command's times are rebased into that clock on
arrival, so a lease of L wall seconds lasts L x speed simulated seconds and
ends at the same wall instant either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import queue
import random
import signal
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import aiomqtt

from controller.errors import ConfigError
from controller.messages import AckStatus, DetectorReading, PlanAck, PlanCommand
from controller.wire import (
    ID_PATTERN,
    Rejected,
    ServiceState,
    TopicKind,
    decode_plan,
    decode_status,
    encode_ack,
    encode_reading,
    encode_state,
    parse_json,
    topic_for,
)
from sim.drivers import DriverContext, register_driver
from sim.hardware import SignalController

log = logging.getLogger("atsc.field")

#: Controller name of HIL runs in run folders and KPI tables: what ran is decided on the
#: other side of the broker, so the label says where, not who.
CONTROLLER: Final = "hil"
HIL_FILE: Final = "hil.json"
#: The hardware's stored fallback program as a plan.json program object.
FALLBACK_FILE: Final = "fallback.json"

#: Reconnect backoff (seconds): doubles from MIN to MAX, with jitter so a district's
#: fields do not all hit a restarted broker in the same instant (safety.md M4).
BACKOFF_MIN_S: Final = 0.2
BACKOFF_MAX_S: Final = 5.0
#: Short keepalive: a half-open connection (network split, no RST) is noticed in ~1.5x this.
KEEPALIVE_S: Final = 10
#: Queued outgoing readings beyond this are dropped: a backlog that large is older than
#: anything the service would still admit.
MAX_BACKLOG: Final = 20_000
#: Messages handed to the client at once (concurrent publishes).
MAX_BATCH: Final = 512
#: Acks kept while disconnected; the service re-sends anything unanswered anyway.
MAX_PENDING_ACKS: Final = 100
#: Behind schedule by more than this (wall seconds), the pacer re-anchors instead of
#: bursting to catch up, so the service never sees a flood of back-dated seconds.
MAX_LAG_S: Final = 1.0
#: Ack placeholders for commands too broken to name their program or sequence number.
UNKNOWN_PROGRAM: Final = "invalid"
#: Fault injection for soak runs (bench/soak.py): detectors that publish nothing during
#: simulated-second windows, ``"N1_sl,N2_sl@600-900;E1_q@1000-1100"`` (begin inclusive,
#: end exclusive).  Unset in normal runs.
SILENCE_ENV: Final = "ATSC_FIELD_SILENCE"

Kind = Literal["det", "state", "ack"]


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls_context: ssl.SSLContext | None = None
    identifier: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"hostname": self.host, "port": self.port,
                              "keepalive": KEEPALIVE_S, "clean_session": True}
        if self.username is not None:
            kw["username"] = self.username
        if self.password is not None:
            kw["password"] = self.password
        if self.tls_context is not None:
            kw["tls_context"] = self.tls_context
        if self.identifier is not None:
            kw["identifier"] = self.identifier
        return kw


def parse_broker(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too); the port defaults to 1883."""
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:
        host, port = value, "1883"
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--broker {value!r}: port is not a number") from None
    if not host or not 0 < number < 65536:
        raise ConfigError(f"--broker {value!r}: expected HOST:PORT")
    return host, number


@dataclass(frozen=True, slots=True)
class Silence:
    """Detectors that send nothing from ``begin_s`` (inclusive) to ``end_s`` (simulated)."""

    detectors: frozenset[str]
    begin_s: float
    end_s: float


def parse_silence(spec: str) -> tuple[Silence, ...]:
    """``"D1,D2@t0-t1;D3@t2-t3"`` (simulated seconds) -> windows; ``""`` -> none."""
    out: list[Silence] = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        ids, sep, window = part.partition("@")
        begin, dash, end = window.partition("-")
        try:
            b, e = float(begin), float(end)
        except ValueError:
            b = e = math.nan
        dets = frozenset(filter(None, (d.strip() for d in ids.split(","))))
        if not sep or not dash or not dets or not b < e:
            raise ConfigError(f"{SILENCE_ENV}: expected 'DET1,DET2@BEGIN-END', got {part!r}")
        out.append(Silence(dets, b, e))
    return tuple(out)


@dataclass(frozen=True)
class FieldSettings:
    broker: BrokerConfig
    junction: str
    speed: float
    #: Injected detector outages (``ATSC_FIELD_SILENCE``); empty in normal runs.
    silence: tuple[Silence, ...] = ()

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ConfigError(f"--speed must be above 0, got {self.speed}")
        if not ID_PATTERN.fullmatch(self.junction):
            raise ConfigError(f"junction name {self.junction!r} is not topic-safe")


# -- the MQTT side (its own thread, asyncio) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    kind: Kind
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    #: Wall-clock epoch seconds when the MQTT thread took it off the socket.
    received: float


@dataclass
class LinkStats:
    published: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    received: int = 0
    connects: int = 0
    connection_events: list[dict[str, object]] = field(default_factory=list)


class Link(Protocol):
    """What the driver needs from the broker side (``MqttLink``; a fake in unit tests)."""

    stats: LinkStats

    def start(self) -> None: ...

    def send(self, messages: Sequence[Outgoing]) -> None: ...

    def receive(self) -> list[Incoming]: ...

    def stop(self, timeout: float = 5.0) -> None: ...


class MqttLink:
    """An aiomqtt client in a thread of its own that reconnects until told to stop.

    ``send`` and ``receive`` are the only calls made from other threads; both
    return at once whatever the broker is doing.
    """

    def __init__(self, config: BrokerConfig, subscriptions: Sequence[tuple[str, int]]) -> None:
        self.config = config
        self.subscriptions = tuple(subscriptions)
        self.stats = LinkStats()
        self._inbound: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="atsc-field-mqtt",
                                        daemon=True)
        # Owned by the loop thread from here on.
        self._out: asyncio.Queue[Outgoing] | None = None
        self._acks_waiting: list[Outgoing] = []
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None

    # -- any thread ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._loop is None:
            raise RuntimeError(f"MQTT thread did not start: {self._failure!r}")

    def send(self, messages: Sequence[Outgoing]) -> None:
        loop = self._loop
        if loop is None or not messages:
            return
        # One wake-up per simulated second, not one per message.
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            loop.call_soon_threadsafe(self._enqueue, list(messages))

    def receive(self) -> list[Incoming]:
        out: list[Incoming] = []
        while True:
            try:
                out.append(self._inbound.get_nowait())
            except queue.Empty:
                return out

    def stop(self, timeout: float = 5.0) -> None:
        loop = self._loop
        if loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("MQTT thread did not stop within %.1f s", timeout)

    # -- loop thread --------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # the field runs on without MQTT: the junction is safe alone
            self._failure = exc
            log.error("MQTT thread ended: %r", exc)
        finally:
            self._connected.clear()
            self._ready.set()

    async def _main(self) -> None:
        self._out = asyncio.Queue()
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                await self._session()
                backoff = BACKOFF_MIN_S
            except aiomqtt.MqttError as exc:
                self._lost(exc)
            if self._stop.is_set():
                break
            delay = backoff * random.uniform(0.5, 1.0)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self) -> None:
        assert self._stop is not None
        async with aiomqtt.Client(**self.config.client_kwargs()) as client:
            # A whole batch in flight at once is the design, not a backlog worth a warning.
            client.pending_calls_threshold = MAX_BATCH + 16
            for topic, qos in self.subscriptions:
                await client.subscribe(topic, qos=qos)
            self._connected.set()
            self.stats.connects += 1
            self.stats.connection_events.append({"event": "connected", "ts": time.time()})
            log.info("connected to %s:%d", self.config.host, self.config.port)
            for ack in self._acks_waiting:
                self._put(ack)
            self._acks_waiting.clear()
            reader = asyncio.create_task(self._read(client))
            writer = asyncio.create_task(self._write(client))
            stopper = asyncio.create_task(self._stop.wait())
            try:
                done, _ = await asyncio.wait({reader, writer, stopper},
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper:
                        task.result()  # re-raise the connection loss
                if stopper in done:
                    await self._flush(client)
            finally:
                for task in (reader, writer, stopper):
                    task.cancel()
                await asyncio.gather(reader, writer, stopper, return_exceptions=True)
        self._connected.clear()

    def _lost(self, exc: BaseException) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._drop_backlog()
        if was:
            self.stats.connection_events.append(
                {"event": "disconnected", "ts": time.time(), "error": str(exc)[:200]})
            log.warning("broker connection lost: %s", exc)
        else:
            log.info("broker not reachable: %s", exc)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = (bytes(payload) if isinstance(payload, bytes | bytearray)
                    else b"" if payload is None else str(payload).encode())
            self.stats.received += 1
            self._inbound.put(Incoming(str(message.topic), data, time.time()))

    async def _write(self, client: aiomqtt.Client) -> None:
        assert self._out is not None
        while True:
            batch = [await self._out.get()]
            while not self._out.empty() and len(batch) < MAX_BATCH:
                batch.append(self._out.get_nowait())
            await self._publish(client, batch)

    async def _publish(self, client: aiomqtt.Client, batch: Sequence[Outgoing]) -> None:
        # Concurrent: each QoS 0 publish waits for its socket write, one at a time would
        # cap the rate at one message per loop round-trip.
        results = await asyncio.gather(
            *(client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain, timeout=10)
              for m in batch),
            return_exceptions=True,
        )
        error: BaseException | None = None
        for m, r in zip(batch, results, strict=True):
            if isinstance(r, BaseException):
                self.stats.dropped[m.kind] += 1
                error = error or r
            else:
                self.stats.published[m.kind] += 1
        if error is not None:
            raise error if isinstance(error, aiomqtt.MqttError) else aiomqtt.MqttError(
                f"publish failed: {error!r}")

    async def _flush(self, client: aiomqtt.Client) -> None:
        assert self._out is not None
        batch: list[Outgoing] = []
        while not self._out.empty():
            batch.append(self._out.get_nowait())
        if batch:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(self._publish(client, batch), 3.0)

    def _enqueue(self, messages: list[Outgoing]) -> None:
        for m in messages:
            self._put(m)

    def _put(self, m: Outgoing) -> None:
        assert self._out is not None
        if not self._connected.is_set():
            # Readings and states are worthless by the time the broker is back (the
            # gate drops stale readings, states are sent every second); acks are kept.
            if m.kind == "ack" and len(self._acks_waiting) < MAX_PENDING_ACKS:
                self._acks_waiting.append(m)
            else:
                self.stats.dropped[m.kind] += 1
            return
        if m.kind == "det" and self._out.qsize() >= MAX_BACKLOG:
            self.stats.dropped[m.kind] += 1
            return
        self._out.put_nowait(m)

    def _drop_backlog(self) -> None:
        if self._out is None:
            return
        while not self._out.empty():
            m = self._out.get_nowait()
            if m.kind == "ack" and len(self._acks_waiting) < MAX_PENDING_ACKS:
                self._acks_waiting.append(m)
            else:
                self.stats.dropped[m.kind] += 1


# -- the driver: one simulated second on the broker ---------------------------------------


@dataclass
class HilStats:
    plans_accepted: int = 0
    plans_rejected: int = 0
    lease_renewals: int = 0
    commands_ignored: int = 0
    plans_malformed: int = 0
    reject_reasons: list[str] = field(default_factory=list)
    fallback_events: list[dict[str, object]] = field(default_factory=list)
    service_status: list[dict[str, object]] = field(default_factory=list)
    status_malformed: int = 0
    max_lag_s: float = 0.0
    pacing_slips: int = 0
    #: Readings not published because of an injected outage (``ATSC_FIELD_SILENCE``).
    silenced_readings: int = 0


class HilDriver:
    """A ``SignalDriver`` whose decisions come over MQTT; it plays detectors and hardware."""

    native = False

    def __init__(self, ctx: DriverContext, settings: FieldSettings,
                 *, link: Link | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.signals = ctx.model.signals
        self.hardware = SignalController(ctx.model.signals, ctx.fixed_program)
        self.stats = HilStats()
        j = settings.junction
        self.topics = {k: topic_for(j, k) for k in TopicKind if k is not TopicKind.DETECTOR}
        try:
            self.det_topics = {d.id: topic_for(j, TopicKind.DETECTOR, d.id)
                               for d in ctx.model.detectors}
        except ValueError as exc:
            raise ConfigError(f"{exc}; map it in the junction's detector map") from None
        unknown = sorted(d for w in settings.silence for d in w.detectors
                         if d not in self.det_topics)
        if unknown:
            raise ConfigError(f"{SILENCE_ENV}: unknown detector(s) {', '.join(unknown)}")
        self.link: Link = link or MqttLink(settings.broker, [
            (self.topics[TopicKind.PLAN], 1), (self.topics[TopicKind.SERVICE_STATUS], 1)])
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._anchor: tuple[float, float] | None = None  # (monotonic, sim second)
        self._last_seq = -1
        self._service: ServiceState | None = None
        self._release_reason: str | None = None
        self._fallback_since: float | None = None
        self.sim_seconds = 0
        self.started_wall = wall()
        self.link.start()

    # -- SignalDriver ---------------------------------------------------------------------
    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str]:
        self._pace(now)
        wall = self._wall()
        silent = self._silenced(now)
        out = [Outgoing("det", self.det_topics[r.detector_id],
                        encode_reading(replace(r, ts=wall)))
               for r in readings if r.detector_id in self.det_topics
               and r.detector_id not in silent]
        self.stats.silenced_readings += sum(r.detector_id in silent for r in readings)
        for msg in self.link.receive():
            out.extend(self._on_message(msg, now, wall))
        was_fallback = self.hardware.in_fallback
        states = self.hardware.tick(now)
        self._track_fallback(was_fallback, now, wall)
        state = replace(self.hardware.state(now), ts=wall)
        out.append(Outgoing("state", self.topics[TopicKind.STATE], encode_state(state),
                            retain=True))
        self.link.send(out)
        self.sim_seconds += 1
        return states

    def close(self) -> dict[str, object]:
        self.link.stop()
        return self.summary()

    def _silenced(self, now: float) -> frozenset[str]:
        windows = [w.detectors for w in self.settings.silence if w.begin_s <= now < w.end_s]
        return frozenset().union(*windows) if windows else frozenset()

    # -- pacing -----------------------------------------------------------------------------
    def _pace(self, sim_t: float) -> None:
        speed = self.settings.speed
        if math.isinf(speed):
            return
        mono = self._clock()
        if self._anchor is None:
            self._anchor = (mono, sim_t)
            return
        due = self._anchor[0] + (sim_t - self._anchor[1]) / speed
        if due > mono:
            self._sleep(due - mono)
            return
        lag = mono - due
        self.stats.max_lag_s = max(self.stats.max_lag_s, lag)
        if lag > MAX_LAG_S:
            self._anchor = (mono, sim_t)
            self.stats.pacing_slips += 1

    # -- inbound ----------------------------------------------------------------------------
    def _on_message(self, msg: Incoming, now: float, wall: float) -> list[Outgoing]:
        if msg.topic == self.topics[TopicKind.SERVICE_STATUS]:
            self._on_status(msg, now)
            return []
        if msg.topic == self.topics[TopicKind.PLAN]:
            ack = self._on_plan(msg, now, wall)
            if ack is None:
                return []
            return [Outgoing("ack", self.topics[TopicKind.PLAN_ACK], encode_ack(ack), qos=1)]
        return []

    def _on_status(self, msg: Incoming, now: float) -> None:
        status = decode_status(msg.payload, topic=msg.topic)
        if isinstance(status, Rejected):
            # Unreadable status is no evidence either way; the lease still protects.
            self.stats.status_malformed += 1
            log.warning("service status ignored: %s %s", status.reason, status.detail)
            return
        self.stats.service_status.append(
            {"state": status.state.value, "ts": status.ts, "received": msg.received,
             "sim_s": now})
        previous, self._service = self._service, status.state
        if status.state is not ServiceState.ONLINE and previous is not status.state:
            log.info("service is %s: back to the fallback program at the next switch point",
                     status.state.value)
            self._release(f"service {status.state.value}")

    def _on_plan(self, msg: Incoming, now: float, wall: float) -> PlanAck | None:
        cmd = decode_plan(msg.payload, topic=msg.topic)
        if isinstance(cmd, Rejected):
            self.stats.plans_malformed += 1
            program_id, seq = _salvage_ids(msg.payload)
            return self._refuse(program_id, seq, f"{cmd.reason}: {cmd.detail}", wall)
        if cmd.seq <= self._last_seq:
            # Contract: a command not above the last one acted on is a redelivery
            # (reconnect, QoS 1 duplicate) and gets no answer (wire-contract.md).
            self.stats.commands_ignored += 1
            return None
        self._last_seq = cmd.seq
        if wall > cmd.issued + cmd.lease_s:
            self.stats.commands_ignored += 1
            log.info("plan %s seq %d: lease ran out before arrival, ignored",
                     cmd.program.id, cmd.seq)
            return None
        if self._service is not None and self._service is not ServiceState.ONLINE:
            return self._refuse(cmd.program.id, cmd.seq,
                                f"service status is {self._service.value}", wall)
        released = self.hardware.released_program
        if released is not None and cmd.program.id == released:
            return self._refuse(cmd.program.id, cmd.seq,
                                f"program {released} was released to the fallback "
                                f"({self._release_reason}); send a new program", wall)
        ack = self.hardware.submit(self._rebase(cmd, now, wall), now)
        ack = replace(ack, ts=wall)
        if ack.status is AckStatus.ACCEPTED:
            if ack.reason == "lease renewed":
                self.stats.lease_renewals += 1
            else:
                self.stats.plans_accepted += 1
                self.hardware.released_program = None
                self._release_reason = None
        else:
            self._count_reject(ack.reason)
            self._release(f"rejected plan {cmd.program.id}")
        return ack

    def _refuse(self, program_id: str, seq: int, reason: str, wall: float) -> PlanAck:
        self._count_reject(reason)
        self._release("rejected command")
        return PlanAck(program_id=program_id, seq=seq, status=AckStatus.REJECTED,
                       reason=reason[:256], ts=wall)

    def _count_reject(self, reason: str) -> None:
        self.stats.plans_rejected += 1
        if len(self.stats.reject_reasons) < 100:
            self.stats.reject_reasons.append(reason[:256])
        log.warning("plan rejected: %s", reason)

    def _rebase(self, cmd: PlanCommand, now: float, wall: float) -> PlanCommand:
        """The command in the hardware's clock (simulated seconds)."""
        speed = self.settings.speed
        if math.isinf(speed):
            # Unpaced: wall time means nothing to the run; a lease counts simulated seconds.
            return replace(cmd, issued=now, valid_from=now)
        return replace(cmd, issued=now + (cmd.issued - wall) * speed,
                       valid_from=now + (cmd.valid_from - wall) * speed,
                       lease_s=cmd.lease_s * speed)

    def _release(self, reason: str) -> None:
        if self.hardware.release():
            self._release_reason = reason

    def _track_fallback(self, was: bool, now: float, wall: float) -> None:
        now_fb = self.hardware.in_fallback
        if was == now_fb:
            return
        event: dict[str, object] = {"event": "entered" if now_fb else "left",
                                    "sim_s": now, "ts": wall}
        if now_fb:
            event["reason"] = self._release_reason or "lease expired"
            event["from_program"] = self.hardware.released_program
            self.hardware.released_program = None
            self._release_reason = None
        else:
            event["program_id"] = self.hardware.running.id
        self.stats.fallback_events.append(event)
        log.info("fallback %s at %.0f s (%s)", event["event"], now,
                 event.get("reason", event.get("program_id")))

    # -- report -----------------------------------------------------------------------------
    def summary(self) -> dict[str, object]:
        hw = self.hardware.stats
        s = self.stats
        entered = [e for e in s.fallback_events if e["event"] == "entered"]
        left = [e for e in s.fallback_events if e["event"] == "left"]
        link = self.link.stats
        return {
            "junction": self.settings.junction,
            "broker": f"{self.settings.broker.host}:{self.settings.broker.port}",
            "speed": self.settings.speed,
            "sim_seconds": self.sim_seconds,
            "wall_time_s": round(self._wall() - self.started_wall, 3),
            "plans": {
                "accepted": s.plans_accepted,
                "rejected": s.plans_rejected,
                "malformed": s.plans_malformed,
                "lease_renewals": s.lease_renewals,
                "ignored": s.commands_ignored,
                "switches": hw.switches,
                "reject_reasons": s.reject_reasons,
            },
            "fallback": {
                "entered": len(entered),
                "left": len(left),
                "seconds": hw.seconds_in_fallback,
                "seconds_total": hw.seconds_total,
                "in_fallback_at_end": self.hardware.in_fallback,
                "events": s.fallback_events,
            },
            "monitor_faults": len(hw.monitor_faults),
            "monitor_fault_details": [str(f) for f in hw.monitor_faults[:20]],
            "messages": {
                "published": dict(link.published),
                "published_total": sum(link.published.values()),
                "dropped": dict(link.dropped),
                "received": link.received,
            },
            "connection": {"connects": link.connects, "events": link.connection_events},
            "service_status": s.service_status,
            "service_status_malformed": s.status_malformed,
            "pacing": {"max_lag_s": round(s.max_lag_s, 4), "slips": s.pacing_slips},
            "silence": {
                "windows": [{"detectors": sorted(w.detectors), "begin_s": w.begin_s,
                             "end_s": w.end_s} for w in self.settings.silence],
                "readings_withheld": s.silenced_readings,
            },
        }


def _salvage_ids(payload: bytes) -> tuple[str, int]:
    """Program id and seq of a broken command, where readable, so its ack can be matched."""
    program_id, seq = UNKNOWN_PROGRAM, 0
    with contextlib.suppress(Exception):
        obj = parse_json(payload[:16384])
        if isinstance(obj, dict):
            prog = obj.get("program")
            if isinstance(prog, dict):
                pid = prog.get("id")
                if isinstance(pid, str) and ID_PATTERN.fullmatch(pid):
                    program_id = pid
            raw = obj.get("seq")
            if type(raw) is int and 0 <= raw <= 2**53 - 1:
                seq = raw
    return program_id, seq


# -- the command ------------------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace, junction: str) -> FieldSettings:
    host, port = parse_broker(args.broker)
    name = args.junction_name or junction
    password = None
    if args.password_file is not None:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file: {exc}",
                              args.password_file) from None
    tls = None
    if args.cafile is not None:
        try:
            tls = ssl.create_default_context(cafile=str(args.cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA certificate: {exc}", args.cafile) from None
    username = args.username or f"field-{name}"
    return FieldSettings(
        broker=BrokerConfig(host, port, username=username, password=password,
                            tls_context=tls, identifier=username),
        junction=name, speed=float(args.speed),
        silence=parse_silence(os.environ.get(SILENCE_ENV, "")),
    )


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the same clean path as Ctrl-C: SUMO closed, MQTT thread stopped.
    raise KeyboardInterrupt


def field_command(args: argparse.Namespace) -> int:
    """``atsc field SCENARIO``: run the HIL field, then print and write KPIs like ``atsc run``."""
    from sim.kpis import summary_table, write_kpis_json
    from sim.report import write_report
    from sim.runner import case_from_scenario, fixed_time_plan, junction_of, run_one

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    case = case_from_scenario(args.scenario)
    begin = case.begin_s if args.begin is None else float(args.begin)
    end = case.end_s if args.end is None else float(args.end)
    if not end > begin:
        raise ConfigError(f"--end ({end}) must be after --begin ({begin})")
    warmup = case.warmup_s if case.warmup_s < (end - begin) else (end - begin) / 4
    case = replace(case, begin_s=begin, end_s=end, warmup_s=warmup)
    model = junction_of(case)
    settings = settings_from_args(args, model.name)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # The service must know the hardware's stored program exactly (it recognises the
    # fallback in the state topic and checks every switch back to it), so it is written
    # out before the run for `atsc serve`'s [fallback] program_file.
    fallback = fixed_time_plan(case, model, case.route_files)[1]
    fallback_file = (out / FALLBACK_FILE).resolve()
    fallback_file.write_text(json.dumps(fallback.to_json(), indent=1) + "\n")

    drivers: list[HilDriver] = []

    def factory(ctx: DriverContext) -> HilDriver:
        driver = HilDriver(ctx, settings)
        drivers.append(driver)
        return driver

    register_driver(CONTROLLER, factory)
    print(f"field: {case.label} seed {args.seed}, {begin:.0f}-{end:.0f} s at speed "
          f"{settings.speed:g} on {settings.broker.host}:{settings.broker.port} as "
          f"{settings.broker.username}, topics atsc/{settings.junction}/...", file=sys.stderr)
    print(f"field: stored fallback program {fallback.id} (cycle {fallback.cycle_s} s); for "
          f"atsc serve: [fallback] program_file = \"{fallback_file}\"", file=sys.stderr)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        record = run_one(case, CONTROLLER, int(args.seed), out, progress=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    hil = drivers[-1].summary() if drivers else {}
    run_json = json.loads((Path(record.run_dir) / "run.json").read_text())
    field_faults = list(run_json.get("monitor_faults", []))
    hil.update({
        "scenario": case.label, "seed": int(args.seed),
        "fallback_program": run_json.get("fixed_program"),
        "field_monitor_faults": len(field_faults),
        "field_monitor_fault_details": field_faults[:20],
        "collisions_seen": run_json.get("collisions_seen"),
    })
    (out / HIL_FILE).write_text(json.dumps(hil, indent=2, default=str) + "\n")
    write_kpis_json([record], out / "kpis.json")
    print(summary_table([record]))
    if not getattr(args, "no_report", False):
        link_groups = {i: g.id for g in model.signals.groups for i in g.links}
        report = write_report(out, [record], title=f"{case.label}: hardware in the loop",
                              link_groups=link_groups, group_order=model.signals.group_ids)
        print(f"report: {report}")
    print(_hil_line(hil))
    print(f"kpis:   {out / 'kpis.json'}")
    print(f"hil:    {out / HIL_FILE}")
    return 0 if hil.get("monitor_faults") == 0 and not field_faults else 1


def _hil_line(hil: Mapping[str, Any]) -> str:
    plans = hil.get("plans", {})
    fb = hil.get("fallback", {})
    msgs = hil.get("messages", {})
    return (f"hil:    plans accepted {plans.get('accepted', 0)}, rejected "
            f"{plans.get('rejected', 0)}, renewals {plans.get('lease_renewals', 0)}; "
            f"fallback entered {fb.get('entered', 0)}, left {fb.get('left', 0)}, "
            f"{fb.get('seconds', 0)} s; monitor faults {hil.get('monitor_faults', 0)}; "
            f"published {msgs.get('published_total', 0)}, dropped "
            f"{sum(msgs.get('dropped', {}).values())}; connects "
            f"{hil.get('connection', {}).get('connects', 0)}")


__all__ = [
    "CONTROLLER",
    "BrokerConfig",
    "FieldSettings",
    "HilDriver",
    "Incoming",
    "Link",
    "LinkStats",
    "MqttLink",
    "Outgoing",
    "Silence",
    "field_command",
    "parse_broker",
    "parse_silence",
    "settings_from_args",
]
