"""The one interface through which the controller talks to the world.

Detector readings, hardware states and plan acknowledgements come in; plan
commands go out.  The controller core (``controller.adaptive``) never holds a
transport: a thin shell drains the transport into the core and publishes
what the core returns (``exchange``).  Implementations:

- ``InProcessTransport``: scenario runs; the simulated field and hardware sit
  on the other side in the same process, with the same message types as MQTT;
- the MQTT transport of the live service (``controller/service/``);
- a future hardware adapter (OCIT, NTCIP) speaks the same interface.

Because every input of the core passes through ``exchange``, a ``Journal`` of
what passed is a complete record of the core's inputs: ``replay`` feeds it
into a fresh core and must reproduce the same plan commands (the test that the
controller sees nothing but detector messages relies on this).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.messages import DetectorReading, HardwareState, PlanAck, PlanCommand

#: Everything that may arrive at the controller.
Inbound = DetectorReading | HardwareState | PlanAck


class Transport(Protocol):
    """Controller side of a transport: messages in, plan commands out."""

    def receive(self) -> list[Inbound]:
        """Every message that arrived since the last call, in arrival order."""
        ...

    def publish(self, command: PlanCommand) -> None:
        """Send a plan command to the signal controller hardware."""
        ...


class Core(Protocol):
    """What ``exchange`` drives: the sans-I/O controller core."""

    def on_reading(self, reading: DetectorReading, now: float) -> None: ...

    def on_state(self, state: HardwareState) -> None: ...

    def on_ack(self, ack: PlanAck) -> None: ...

    def tick(self, now: float) -> list[PlanCommand]: ...


class InProcessTransport:
    """Both ends of an in-process link: the controller side and the field side.

    The field side (simulated detectors and hardware) calls ``deliver`` and
    ``take_commands``; the controller side is the ``Transport`` protocol.
    Nothing is copied or serialised: the message types are immutable.
    """

    def __init__(self) -> None:
        self._inbound: deque[Inbound] = deque()
        self._outbound: deque[PlanCommand] = deque()

    # -- controller side -------------------------------------------------------
    def receive(self) -> list[Inbound]:
        out = list(self._inbound)
        self._inbound.clear()
        return out

    def publish(self, command: PlanCommand) -> None:
        self._outbound.append(command)

    # -- field side ------------------------------------------------------------
    def deliver(self, messages: Iterable[Inbound]) -> None:
        """Readings, states and acks from the field towards the controller."""
        self._inbound.extend(messages)

    def take_commands(self) -> list[PlanCommand]:
        """Plan commands the controller published since the last call."""
        out = list(self._outbound)
        self._outbound.clear()
        return out


@dataclass(frozen=True, slots=True)
class Received:
    """A batch of inbound messages handed to the core at ``now``."""

    now: float
    messages: tuple[Inbound, ...]


@dataclass(frozen=True, slots=True)
class Ticked:
    """One ``tick(now)`` of the core and the commands it returned."""

    now: float
    commands: tuple[PlanCommand, ...]


@dataclass
class Journal:
    """Every input the core got through ``exchange``, in order, and what it answered."""

    entries: list[Received | Ticked] = field(default_factory=list)

    @property
    def commands(self) -> list[PlanCommand]:
        return [c for e in self.entries if isinstance(e, Ticked) for c in e.commands]


def dispatch(core: Core, messages: Sequence[Inbound], now: float) -> None:
    """Hand each message to the matching core entry point."""
    for msg in messages:
        if isinstance(msg, DetectorReading):
            core.on_reading(msg, now)
        elif isinstance(msg, HardwareState):
            core.on_state(msg)
        else:
            core.on_ack(msg)


def exchange(
    core: Core,
    transport: Transport,
    now: float,
    *,
    tick: bool = True,
    journal: Journal | None = None,
) -> list[PlanCommand]:
    """Drain the transport into the core, then (``tick``) publish what the core decides.

    ``tick=False`` only delivers (acknowledgements that arrive after the
    commands of the same second).
    """
    inbound = transport.receive()
    if inbound:
        if journal is not None:
            journal.entries.append(Received(now, tuple(inbound)))
        dispatch(core, inbound, now)
    if not tick:
        return []
    commands = core.tick(now)
    if journal is not None:
        journal.entries.append(Ticked(now, tuple(commands)))
    for cmd in commands:
        transport.publish(cmd)
    return commands


def replay(core: Core, journal: Journal) -> list[PlanCommand]:
    """Feed a recorded journal into ``core``; returns every command it issues."""
    out: list[PlanCommand] = []
    for entry in journal.entries:
        if isinstance(entry, Received):
            dispatch(core, entry.messages, entry.now)
        else:
            out += core.tick(entry.now)
    return out
