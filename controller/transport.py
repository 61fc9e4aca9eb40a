"""The one interface through which the controller talks to the world.

Detector readings, hardware states and plan acknowledgements come in; plan
commands go out.  The controller core (``controller.adaptive``) never holds a
transport: a thin shell drains the transport into the core and publishes
what the core returns (``exchange``).  Implementations:

- ``InProcessTransport``: scenario runs; the simulated field and hardware sit
  on the other side in the same process, with the same message types as MQTT;
- the MQTT transport of the live service (``controller/service/``);
- a future hardware adapter (OCIT, NTCIP) speaks the same interface.

Because every input of the core passes through ``exchange`` (or, in the live
service, through ``advance`` and ``complete``: the split decision), a
``Journal`` of what passed is a complete record of the core's inputs: the
messages, the ticks, and the scores each decision got (``Scored``).  ``replay``
feeds it into a fresh core and must reproduce the same plan commands: with the
recorded scores (no evaluator needed) or, ``rescore=True``, with the core's own
evaluator scoring each job's snapshot again.  Scores are computed from the
snapshot alone, and the snapshot from detector messages alone, so the test that
the controller sees nothing but detector messages replays with a fresh twin.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.adaptive import (
    Advance,
    EvaluationFailed,
    EvaluationJob,
    EvaluationResult,
    ProgramScore,
)
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
    """What ``exchange`` drives: the sans-I/O controller core (``AdaptiveCore``)."""

    def on_reading(self, reading: DetectorReading, now: float) -> None: ...

    def on_state(self, state: HardwareState) -> None: ...

    def on_ack(self, ack: PlanAck) -> None: ...

    def advance(self, now: float) -> Advance: ...

    @property
    def pending(self) -> EvaluationJob | None: ...

    def evaluate(self, job: EvaluationJob) -> EvaluationResult: ...

    def complete(
        self, job: EvaluationJob, result: EvaluationResult, now: float
    ) -> list[PlanCommand]: ...


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
    """One ``advance(now)`` of the core, the commands it returned and the epoch it started."""

    now: float
    commands: tuple[PlanCommand, ...]
    #: Epoch of the evaluation job this tick started, if any.
    started: int | None = None


@dataclass(frozen=True, slots=True)
class Scored:
    """The scores of one decision handed to ``complete(job, ..., now)``, and its commands.

    An input of the core like a message: ``scores`` (program id, its scores) or
    ``failure`` (why there are none).  The evaluator computed them from the job's
    snapshot, which the core built from detector messages only.
    """

    now: float
    epoch: int
    scores: tuple[tuple[str, ProgramScore], ...] | None
    failure: str | None
    commands: tuple[PlanCommand, ...]

    @staticmethod
    def of(now: float, epoch: int, result: EvaluationResult,
           commands: Sequence[PlanCommand]) -> Scored:
        if isinstance(result, EvaluationFailed):
            return Scored(now, epoch, None, result.reason, tuple(commands))
        return Scored(now, epoch, tuple(result.items()), None, tuple(commands))

    def result(self) -> EvaluationResult:
        if self.scores is None:
            return EvaluationFailed(self.failure or "no scores")
        return dict(self.scores)


Entry = Received | Ticked | Scored


@dataclass
class Journal:
    """Every input the core got, in order, and what it answered."""

    entries: list[Entry] = field(default_factory=list)

    @property
    def commands(self) -> list[PlanCommand]:
        return [c for e in self.entries if not isinstance(e, Received) for c in e.commands]


def dispatch(core: Core, messages: Sequence[Inbound], now: float) -> None:
    """Hand each message to the matching core entry point."""
    for msg in messages:
        if isinstance(msg, DetectorReading):
            core.on_reading(msg, now)
        elif isinstance(msg, HardwareState):
            core.on_state(msg)
        else:
            core.on_ack(msg)


def deliver(core: Core, messages: Sequence[Inbound], now: float,
            journal: Journal | None = None) -> None:
    """Hand messages to the core (and record them)."""
    if not messages:
        return
    if journal is not None:
        journal.entries.append(Received(now, tuple(messages)))
    dispatch(core, messages, now)


def advance(core: Core, now: float, journal: Journal | None = None) -> Advance:
    """``core.advance(now)`` (recorded): commands to publish now, and a job to score, if any."""
    step = core.advance(now)
    if journal is not None:
        journal.entries.append(Ticked(now, tuple(step.commands),
                                      None if step.job is None else step.job.epoch))
    return step


def complete(core: Core, job: EvaluationJob, result: EvaluationResult, now: float,
             journal: Journal | None = None) -> list[PlanCommand]:
    """``core.complete(job, result, now)`` (recorded, scores included): commands to publish."""
    commands = core.complete(job, result, now)
    if journal is not None:
        journal.entries.append(Scored.of(now, job.epoch, result, commands))
    return commands


def exchange(
    core: Core,
    transport: Transport,
    now: float,
    *,
    tick: bool = True,
    journal: Journal | None = None,
) -> list[PlanCommand]:
    """Drain the transport into the core, then (``tick``) publish what the core decides.

    The synchronous shell: a decision epoch started by the tick is scored
    inline (``core.evaluate``, blocking) and completed at the same ``now``.
    ``tick=False`` only delivers (acknowledgements that arrive after the
    commands of the same second).
    """
    deliver(core, transport.receive(), now, journal)
    if not tick:
        return []
    step = advance(core, now, journal)
    commands = list(step.commands)
    if step.job is not None:
        commands += complete(core, step.job, core.evaluate(step.job), now, journal)
    for cmd in commands:
        transport.publish(cmd)
    return commands


def replay(core: Core, journal: Journal, *, rescore: bool = False) -> list[PlanCommand]:
    """Feed a recorded journal into ``core``; returns every command it issues.

    Each ``Scored`` entry completes the job its epoch started, at the recorded
    time, with the recorded scores, or, ``rescore=True``, with scores the core's
    own evaluator computes from the job's snapshot now (a fresh twin: proof that
    the snapshot, i.e. the messages, decided).  A ``Scored`` entry for an epoch
    the replay never started means it has diverged: ``ValueError``.
    """
    out: list[PlanCommand] = []
    jobs: dict[int, EvaluationJob] = {}
    for entry in journal.entries:
        if isinstance(entry, Received):
            dispatch(core, entry.messages, entry.now)
        elif isinstance(entry, Ticked):
            step = core.advance(entry.now)
            out += step.commands
            if step.job is not None:
                jobs[step.job.epoch] = step.job
        else:
            job = jobs.pop(entry.epoch, None)
            pending = core.pending
            if job is None and pending is not None and pending.epoch == entry.epoch:
                job = pending  # a journal replayed entry by entry
            if job is None:
                raise ValueError(f"replay diverged: scores of epoch {entry.epoch} recorded, "
                                 "but the replay started no such epoch")
            # A superseded job is dropped by ``complete`` anyway: no need to score it.
            fresh = rescore and job is pending
            out += core.complete(job, core.evaluate(job) if fresh else entry.result(), entry.now)
    return out
